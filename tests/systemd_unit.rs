//! The shipped systemd files: the unit says what the service contract needs
//! and is hardened (`systemd-analyze security` ≤ 1.5), and the sysusers and
//! tmpfiles snippets, applied by the real systemd tools to a scratch root,
//! create the user and directories the unit relies on.
//!
//! Needs `systemd-analyze`, `systemd-sysusers` and `systemd-tmpfiles`
//! (Debian: `systemd`) and root, for the ownership the tmpfiles snippet sets.
//! `systemd-analyze verify` needs the binary at `/usr/bin/mcprom`, so it runs
//! on the installed package in `ci/package.sh` instead.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn source(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `(section, key, value)` for every assignment, in order; comments and
/// blank lines dropped.
fn directives(path: &str) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(source(path)).unwrap();
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{path}: not an assignment: {line}"));
        out.push((section.clone(), key.to_owned(), value.to_owned()));
    }
    out
}

/// Every value of `key` in `[Service]`.
fn service<'a>(unit: &'a [(String, String, String)], key: &str) -> Vec<&'a str> {
    unit.iter()
        .filter(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (Debian: apt-get install systemd)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{text}",
        out.status
    );
    text
}

#[test]
fn systemd_analyze_rates_the_unit_at_most_1_5() {
    let text = run(Command::new("systemd-analyze").args([
        "security",
        "--offline=true",
        "--threshold=15",
        source("systemd/mcprom.service").to_str().unwrap(),
    ]));
    let overall = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for mcprom.service: "))
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    let score: f64 = overall.split_whitespace().next().unwrap().parse().unwrap();
    assert!(score <= 1.5, "exposure {overall}:\n{text}");
}

#[test]
fn the_unit_runs_the_daemon_as_mcprom_with_notify_watchdog_and_no_restart_on_bad_config() {
    let unit = directives("systemd/mcprom.service");
    let one = |key: &str| -> String {
        match service(&unit, key).as_slice() {
            [value] => (*value).to_owned(),
            other => panic!("{key}: expected one value, got {other:?}"),
        }
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(
        one("ExecStart"),
        "/usr/bin/mcprom run --config /etc/mcprom.toml"
    );
    assert_eq!(one("ExecReload"), "/usr/bin/mcprom reload");
    assert_eq!(one("Restart"), "on-failure");
    // 78: the config file is wrong; restarting cannot fix it.
    assert_eq!(one("RestartPreventExitStatus"), "78");
    assert_eq!(one("WatchdogSec"), "30s");
    assert_eq!(one("User"), "mcprom");
    assert_eq!(one("StateDirectory"), "mcprom");
    assert_eq!(one("RuntimeDirectory"), "mcprom");
    assert_eq!(one("UMask"), "0027");
    assert_eq!(one("Environment"), "HOME=/var/lib/mcprom");
    // A missing prometheus group must not keep the service from starting,
    // and PrivateUsers= would map that group to nobody.
    assert!(service(&unit, "SupplementaryGroups").is_empty());
    assert!(service(&unit, "PrivateUsers").is_empty());
    assert!(service(&unit, "DynamicUser").is_empty());
    // `~@privileged` filters @chown; the sink fchown()s token files to
    // file_group, so fchown must be allowed again after it.
    let filters = service(&unit, "SystemCallFilter");
    let deny = filters.iter().position(|f| f.contains("~@privileged"));
    let allow = filters
        .iter()
        .rposition(|f| f.split_whitespace().any(|s| s == "fchown"));
    assert!(
        matches!((deny, allow), (Some(d), Some(a)) if a > d),
        "fchown allowed after ~@privileged: {filters:?}"
    );
    assert!(
        unit.iter()
            .any(|(s, k, v)| s == "Install" && k == "WantedBy" && v == "multi-user.target"),
        "enabled by `systemctl enable`"
    );
}

#[test]
fn the_drop_in_example_is_a_service_section_with_read_write_paths() {
    let drop_in = directives("systemd/mcprom.service.d/paths.conf.example");
    assert!(
        drop_in
            .iter()
            .any(|(s, k, v)| s == "Service" && k == "ReadWritePaths" && v.starts_with('/')),
        "{drop_in:?}"
    );
    assert!(drop_in.iter().all(|(s, _, _)| s == "Service"));
}

#[test]
fn sysusers_and_tmpfiles_create_the_user_home_and_token_directory_the_unit_expects() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // With --root the tools read their snippets below the root, and resolve
    // user names from its /etc/passwd, not the host's.
    for (src, dir) in [
        ("systemd/mcprom.sysusers", "usr/lib/sysusers.d"),
        ("systemd/mcprom.tmpfiles", "usr/lib/tmpfiles.d"),
    ] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
        std::fs::copy(source(src), r.join(dir).join("mcprom.conf")).unwrap();
    }
    // sysusers creates /etc/passwd and friends, but not /etc itself.
    std::fs::create_dir(r.join("etc")).unwrap();
    let root_arg = format!("--root={}", r.display());
    run(Command::new("systemd-sysusers").args([&root_arg, "mcprom.conf"]));
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    let user: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("mcprom:"))
        .unwrap_or_else(|| panic!("no mcprom user in:\n{passwd}"))
        .split(':')
        .collect();
    let (uid, gid): (u32, u32) = (user[2].parse().unwrap(), user[3].parse().unwrap());
    assert!(uid > 0 && uid < 1000, "a system user: {uid}");
    assert_eq!(user[5], "/var/lib/mcprom", "HOME is the state directory");
    assert_eq!(user[6], "/usr/sbin/nologin");

    let tmpfiles =
        || run(Command::new("systemd-tmpfiles").args([&root_arg, "--create", "mcprom.conf"]));
    tmpfiles();
    let mode_owner = |p: &str| {
        let m = std::fs::metadata(r.join(p)).unwrap();
        (m.mode() & 0o7777, m.uid(), m.gid())
    };
    assert_eq!(mode_owner("var/lib/mcprom"), (0o751, uid, gid));
    assert_eq!(mode_owner("var/lib/mcprom/tokens"), (0o2750, uid, gid));

    // systemd sets StateDirectoryMode= on every start and tmpfiles its mode
    // at every boot: they must agree, or they fight.
    let unit = directives("systemd/mcprom.service");
    assert_eq!(service(&unit, "StateDirectoryMode"), ["0751"]);

    // The postinst (or the admin) hands tokens/ to the prometheus group; the
    // next `systemd-tmpfiles --create` must leave that alone, but still
    // repair the state directory.
    let prometheus_gid = 4242;
    std::os::unix::fs::chown(r.join("var/lib/mcprom/tokens"), None, Some(prometheus_gid)).unwrap();
    std::fs::set_permissions(
        r.join("var/lib/mcprom/tokens"),
        std::fs::Permissions::from_mode(0o2750),
    )
    .unwrap();
    std::fs::set_permissions(
        r.join("var/lib/mcprom"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    tmpfiles();
    assert_eq!(
        mode_owner("var/lib/mcprom/tokens"),
        (0o2750, uid, prometheus_gid)
    );
    assert_eq!(mode_owner("var/lib/mcprom"), (0o751, uid, gid));
}
