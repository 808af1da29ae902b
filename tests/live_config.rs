//! Editing the config file of a running daemon: every way people and tools
//! save, invalid edits, removal, bursts, SIGHUP and `mcprom reload`.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A sim with three clusters and a daemon serving only c1.
struct Setup {
    sim: Sim,
    work: tempfile::TempDir,
    /// The config path the daemon was started with.
    config: PathBuf,
    /// Config text serving c1 and c2.
    with_c2: String,
    daemon: Daemon,
}

fn texts(sim: &Sim, work: &Path, conf: &Conf) -> (String, String) {
    let scratch = work.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let render = |only: &[&str]| {
        let path = write_config(sim, &scratch, conf, Some(only));
        // Keep tokens and the socket in `work`, wherever the config lives.
        std::fs::read_to_string(path)
            .unwrap()
            .replace(&scratch.display().to_string(), &work.display().to_string())
    };
    (render(&["c1"]), render(&["c1", "c2"]))
}

async fn setup(conf: Conf, place: impl FnOnce(&Path, &str) -> PathBuf) -> Setup {
    let sim = Sim::start(&["--clusters", "3", "--min-expiration", "1s"]);
    let work = tempfile::tempdir().unwrap();
    let (only_c1, with_c2) = texts(&sim, work.path(), &conf);
    let config = place(work.path(), &only_c1);
    let daemon = Daemon::start(&config, "info");
    let c1 = work.path().join("tokens/c1.token");
    eventually(Duration::from_secs(20), "c1's token", || async {
        c1.exists().then_some(())
    })
    .await;
    Setup {
        sim,
        work,
        config,
        with_c2,
        daemon,
    }
}

fn plain_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("mcprom.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// After an edit that adds c2: its token appears and c1 saw no extra request.
async fn assert_c2_added(s: &Setup) {
    let c2 = s.work.path().join("tokens/c2.token");
    eventually(
        Duration::from_secs(15),
        "c2's token after the edit",
        || async { c2.exists().then_some(()) },
    )
    .await;
    assert_eq!(s.sim.token_requests("c1").await, 1, "c1 untouched");
    assert_eq!(s.sim.token_requests("c3").await, 0);
    assert_eq!(
        s.daemon.count("configuration reloaded"),
        1,
        "{}",
        s.daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_write_is_applied() {
    let s = setup(Conf::default(), plain_file).await;
    // Truncate and write the same inode, as `>` in a shell does.
    std::fs::write(&s.config, &s.with_c2).unwrap();
    assert_c2_added(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_rename_over_is_applied() {
    let s = setup(Conf::default(), plain_file).await;
    let tmp = s.config.with_extension("toml.swp");
    std::fs::write(&tmp, &s.with_c2).unwrap();
    std::fs::rename(&tmp, &s.config).unwrap();
    assert_c2_added(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sed_in_place_is_applied() {
    let s = setup(Conf::default(), plain_file).await;
    // Append c2's table with the real sed -i (which renames a temp file over).
    let addition = s.with_c2[s.with_c2.find("[[cluster]]\nname = \"c2\"").unwrap()..].to_owned();
    let script = format!("$a\\\n{}", addition.trim_end().replace('\n', "\\\n"));
    let status = Command::new("sed")
        .arg("-i")
        .arg(&script)
        .arg(&s.config)
        .status()
        .unwrap();
    assert!(status.success());
    assert_c2_added(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_then_mv_is_applied() {
    let s = setup(Conf::default(), plain_file).await;
    let elsewhere = s.work.path().join("scratch/new.toml");
    std::fs::write(&elsewhere, &s.with_c2).unwrap();
    let staged = s.work.path().join("mcprom.toml.new");
    assert!(
        Command::new("cp")
            .arg(&elsewhere)
            .arg(&staged)
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("mv")
            .arg(&staged)
            .arg(&s.config)
            .status()
            .unwrap()
            .success()
    );
    assert_c2_added(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_then_create_is_applied() {
    let s = setup(Conf::default(), plain_file).await;
    std::fs::remove_file(&s.config).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        s.daemon.log().contains("cannot read the config file"),
        "{}",
        s.daemon.log()
    );
    std::fs::write(&s.config, &s.with_c2).unwrap();
    assert_c2_added(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_symlink_swap_is_applied() {
    // conf/mcprom.toml -> ..data/mcprom.toml, ..data -> ..v1 (as kubelet lays out ConfigMaps).
    let s = setup(Conf::default(), |work, text| {
        let conf = work.join("conf");
        std::fs::create_dir_all(conf.join("..v1")).unwrap();
        std::fs::write(conf.join("..v1/mcprom.toml"), text).unwrap();
        symlink("..v1", conf.join("..data")).unwrap();
        symlink("..data/mcprom.toml", conf.join("mcprom.toml")).unwrap();
        conf.join("mcprom.toml")
    })
    .await;
    let conf = s.work.path().join("conf");
    std::fs::create_dir_all(conf.join("..v2")).unwrap();
    std::fs::write(conf.join("..v2/mcprom.toml"), &s.with_c2).unwrap();
    symlink("..v2", conf.join("..data_tmp")).unwrap();
    std::fs::rename(conf.join("..data_tmp"), conf.join("..data")).unwrap();
    std::fs::remove_dir_all(conf.join("..v1")).unwrap();
    assert_c2_added(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_edits_is_applied_once() {
    let s = setup(Conf::default(), plain_file).await;
    for i in 0..10 {
        let text = if i == 9 {
            s.with_c2.clone()
        } else {
            format!("{}\n# edit {i}\n", s.with_c2)
        };
        std::fs::write(&s.config, text).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_c2_added(&s).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.daemon.count("configuration reloaded"),
        1,
        "{}",
        s.daemon.log()
    );
}

fn mcprom_reload(config: &Path) -> std::process::Output {
    Command::new(MCPROM)
        .args(["reload", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_keeps_the_last_good_config_rotating_and_the_fix_is_applied() {
    let conf = Conf {
        expiration: "10s",
        refresh_at: 0.5,
        ..Conf::default()
    };
    let s = setup(conf, plain_file).await;
    let c1 = s.work.path().join("tokens/c1.token");
    let before = read_token(&c1).unwrap();
    let invalid = s.with_c2.replacen("service_account", "servce_account", 2);
    std::fs::write(&s.config, &invalid).unwrap();
    let out = mcprom_reload(&s.config);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:", s.config.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("did you mean \"service_account\""),
        "{stderr}"
    );
    // Still rotating c1 on the last good config.
    eventually(
        Duration::from_secs(20),
        "c1 rotating after the bad edit",
        || async { read_token(&c1).filter(|t| *t != before) },
    )
    .await;
    assert!(!s.work.path().join("tokens/c2.token").exists());
    assert!(s.daemon.log().contains("configuration reload failed"));
    // The fix: `mcprom reload` reports success and c2 appears.
    std::fs::write(&s.config, &s.with_c2).unwrap();
    let out = mcprom_reload(&s.config);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c2 = s.work.path().join("tokens/c2.token");
    eventually(Duration::from_secs(15), "c2 after the fix", || async {
        c2.exists().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_cluster_stops_rotating_and_its_file_stays() {
    let sim = Sim::start(&["--clusters", "2", "--min-expiration", "1s"]);
    let work = tempfile::tempdir().unwrap();
    let conf = Conf {
        expiration: "10s",
        refresh_at: 0.5,
        ..Conf::default()
    };
    let (only_c1, with_c2) = texts(&sim, work.path(), &conf);
    let config = plain_file(work.path(), &with_c2);
    let daemon = Daemon::start(&config, "info");
    let c2 = work.path().join("tokens/c2.token");
    eventually(Duration::from_secs(20), "c2's token", || async {
        c2.exists().then_some(())
    })
    .await;
    std::fs::write(&config, &only_c1).unwrap();
    eventually(Duration::from_secs(10), "the removal", || async {
        daemon
            .log()
            .contains("rotation stopped, its token file is left in place")
            .then_some(())
    })
    .await;
    let requests = sim.token_requests("c2").await;
    // c2 would have refreshed about every 5 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        sim.token_requests("c2").await,
        requests,
        "no more requests for c2"
    );
    assert!(c2.exists(), "its token file is left in place");
    assert!(sim.token_requests("c1").await > 1, "c1 kept rotating");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_mcprom_reload_with_an_unchanged_file_change_nothing() {
    let s = setup(Conf::default(), plain_file).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.daemon.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    eventually(Duration::from_secs(10), "SIGHUP handled", || async {
        s.daemon.log().contains("nothing changed").then_some(())
    })
    .await;
    let out = mcprom_reload(&s.config);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing changed"));
    assert_eq!(s.sim.token_requests("c1").await, 1);
    assert_eq!(s.daemon.count("configuration reloaded"), 0);
}

#[test]
fn mcprom_reload_without_a_daemon_exits_69() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mcprom.toml");
    std::fs::write(
        &config,
        format!(
            "[control]\nsocket = \"{}\"\n",
            dir.path().join("none.sock").display()
        ),
    )
    .unwrap();
    let out = mcprom_reload(&config);
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the mcprom daemon"));
}
