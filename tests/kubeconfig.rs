//! The kubeconfig mcprom writes per cluster (`kubeconfig_file`,
//! `[defaults] kubeconfig_dir`), used by the real kubectl against
//! `mcprom-sim` (TLS, a Rancher-like path prefix, short tokens and no expiry
//! leeway, so a stale token would be refused), and its validation and
//! `scrape-config --discovery kubeconfig` form. The same file used by
//! Prometheus 3 and the real kube-apiserver is in `real_kubeconfig.rs`.
//!
//! Needs the real kubectl (`kubectl` on PATH, ≥ 1.28 for `auth whoami`, else
//! the one `testbed/build` builds): fails without one.

mod common;
#[path = "common/realworld.rs"]
mod realworld;

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// Token lifetime in the simulator: short, but not below 10 s.
const LIFETIME: &str = "12s";

/// The system's kubectl (Debian's google-cloud-sdk dispatcher here), else
/// the one `testbed/build` builds (which `ci/test` runs); a failure saying
/// how to get one otherwise.
fn kubectl() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| realworld::tool("kubectl"))
}

/// `kubectl --kubeconfig KUBECONFIG ARGS`: its stdout, or a panic with its
/// stderr. kubectl's cache goes to `home`, never to the real home.
fn kubectl_with(kubeconfig: &Path, home: &Path, args: &[&str]) -> String {
    let out = Command::new(kubectl())
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--cache-dir={}", home.join("cache").display()))
        .args(args)
        .env("HOME", home)
        .env_remove("KUBECONFIG")
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?} with {} failed ({}): {}",
        kubeconfig.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The simulator's clusters behind one port with path prefixes
/// (`/clusters/cN`), 10 s minimum lifetime, no expiry leeway.
fn sim() -> Sim {
    Sim::start(&[
        "--clusters",
        "2",
        "--shared-port",
        "--min-expiration",
        "10s",
        "--expiry-leeway",
        "0s",
    ])
}

fn config_with_kubeconfigs(sim: &Sim, work: &Path) -> PathBuf {
    let conf = Conf {
        expiration: LIFETIME,
        refresh_at: 0.5,
        extra_defaults: format!(
            "kubeconfig_dir = \"{}\"\nfile_mode = \"0600\"",
            work.join("kube").display()
        ),
        ..Conf::default()
    };
    write_config(sim, work, &conf, None)
}

fn inode_and_mtime(path: &Path) -> (u64, i64, i64) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.ino(), meta.mtime(), meta.mtime_nsec())
}

/// kubectl, with nothing but the kubeconfig mcprom wrote, lists the nodes
/// as the ServiceAccount through the path prefix, and keeps doing so across
/// rotations and past the expiry of the first token (which the simulator
/// then refuses): it reads the token file, and the kubeconfig itself is
/// never rewritten.
#[tokio::test]
async fn kubectl_lists_nodes_with_the_written_kubeconfig_across_rotations() {
    let sim = sim();
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    let config = config_with_kubeconfigs(&sim, work.path());
    let check = run_mcprom(&["check", "--config", config.to_str().unwrap()], "");
    assert!(
        check.status.success(),
        "mcprom check: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _daemon = Daemon::start(&config, "info");
    let kubeconfig = work.path().join("kube/c1.kubeconfig");
    let token_file = work.path().join("tokens/c1.token");
    let first = eventually(Duration::from_secs(60), "c1's first token", || async {
        read_token(&token_file)
    })
    .await;
    assert!(kubeconfig.is_file(), "no {}", kubeconfig.display());
    assert!(work.path().join("kube/c2.kubeconfig").is_file());
    let mode = std::fs::metadata(&kubeconfig).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "the kubeconfig has the cluster's file_mode");
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(
        text.contains(&format!(
            "{}/clusters/c1",
            sim.api_server("c1").split("/clusters/").next().unwrap()
        )),
        "{text}"
    );
    assert!(!text.contains(&first), "the kubeconfig holds no token");
    let written = inode_and_mtime(&kubeconfig);

    let mut seen = vec![first.clone()];
    while seen.len() < 3 {
        let last = seen.last().unwrap().clone();
        let next = eventually(Duration::from_secs(60), "a rotation of c1", || async {
            read_token(&token_file).filter(|t| *t != last)
        })
        .await;
        seen.push(next);
        let nodes = kubectl_with(&kubeconfig, &home, &["get", "nodes", "-o", "name"]);
        assert_eq!(nodes.trim(), "node/node-1");
        let who = kubectl_with(
            &kubeconfig,
            &home,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
        );
        assert_eq!(who, "system:serviceaccount:kube-system:prometheus-test");
    }

    let exp = claims(&first)["exp"].as_u64().unwrap();
    eventually(
        Duration::from_secs(60),
        "the first token's expiry",
        || async { (now_unix() > exp + 1).then_some(()) },
    )
    .await;
    assert!(
        !sim.accepts("c1", &first).await,
        "the simulator still accepts the expired first token: the test would prove nothing"
    );
    let nodes = kubectl_with(&kubeconfig, &home, &["get", "nodes", "-o", "name"]);
    assert_eq!(nodes.trim(), "node/node-1");
    assert_eq!(
        inode_and_mtime(&kubeconfig),
        written,
        "the kubeconfig was rewritten on rotation"
    );
    let other = kubectl_with(
        &work.path().join("kube/c2.kubeconfig"),
        &home,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert_eq!(other, "system:serviceaccount:kube-system:prometheus-test");
}

/// `status --json` names the kubeconfig; one that was deleted is back
/// before the next token; one edited by hand is put right at the next start.
#[tokio::test]
async fn a_deleted_kubeconfig_is_written_again_before_the_next_token() {
    let sim = sim();
    let work = tempfile::tempdir().unwrap();
    let config = config_with_kubeconfigs(&sim, work.path());
    let kubeconfig = work.path().join("kube/c1.kubeconfig");
    let token_file = work.path().join("tokens/c1.token");
    let mut daemon = Daemon::start(&config, "info");
    let first = eventually(Duration::from_secs(60), "c1's first token", || async {
        read_token(&token_file)
    })
    .await;
    let original = std::fs::read_to_string(&kubeconfig).unwrap();
    let status = run_mcprom(
        &["status", "--json", "--config", config.to_str().unwrap()],
        "",
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let c1 = status["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "c1")
        .unwrap();
    assert_eq!(
        c1["kubeconfig_file"].as_str(),
        kubeconfig.to_str(),
        "{status}"
    );
    std::fs::remove_file(&kubeconfig).unwrap();
    eventually(Duration::from_secs(60), "a rotation of c1", || async {
        read_token(&token_file).filter(|t| *t != first)
    })
    .await;
    assert_eq!(std::fs::read_to_string(&kubeconfig).unwrap(), original);
    daemon.terminate();

    std::fs::write(&kubeconfig, "edited by hand\n").unwrap();
    let _daemon = Daemon::start(&config, "info");
    eventually(
        Duration::from_secs(60),
        "the kubeconfig put right",
        || async { (std::fs::read_to_string(&kubeconfig).ok()? == original).then_some(()) },
    )
    .await;
}

/// `mcprom check` refuses a kubeconfig written twice, or over a token file,
/// a credential, or the config file, naming the line of each.
#[test]
fn check_refuses_a_kubeconfig_written_twice_or_over_another_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mcprom.toml");
    let cluster = |name: &str, extra: &str| {
        format!(
            "\n[[cluster]]\nname = \"{name}\"\napi_server = \"https://10.0.0.1:6443\"\n\
             service_account = \"kube-system/prometheus\"\n{extra}\n\
             [cluster.credentials]\ntoken_file = \"issuer-{name}.token\"\n"
        )
    };
    let text = [
        "[defaults]\ntoken_dir = \"tokens\"\n".to_string(),
        cluster("a", "kubeconfig_file = \"shared.kubeconfig\""), // line 4
        cluster("b", "kubeconfig_file = \"shared.kubeconfig\""), // line 12
        cluster("c", "kubeconfig_file = \"tokens/a.token\""),    // line 20
        cluster("d", "kubeconfig_file = \"issuer-d.token\""),    // line 28
        cluster("e", "kubeconfig_file = \"mcprom.toml\""),       // line 36
        cluster("f", "kubeconfig_file = \"f.kubeconfig\""),      // fine
    ]
    .concat();
    std::fs::write(&config, &text).unwrap();
    let line_of = |needle: &str| {
        1 + text
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle}"))
    };
    let out = run_mcprom(&["check", "--config", config.to_str().unwrap()], "");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let shown = config.display().to_string();
    let lines_b = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("shared.kubeconfig"));
    let line_b = lines_b.map(|(i, _)| i + 1).nth(1).unwrap();
    for (line, says) in [
        (line_b, "is also the kubeconfig_file of cluster \"a\""),
        (
            line_of("\"tokens/a.token\""),
            "is the token_file of cluster \"a\"",
        ),
        (
            line_of("kubeconfig_file = \"issuer-d.token\""),
            "is the credentials.token_file of cluster \"d\"",
        ),
        (line_of("\"mcprom.toml\""), "is the config file itself"),
    ] {
        let prefix = format!("{shown}:{line}:");
        assert!(
            stderr.lines().any(|l| l.starts_with(&prefix)
                && l.contains(says)
                && l.contains("kubeconfig_file")),
            "no error at {prefix} saying {says:?}:\n{stderr}"
        );
    }
    assert!(!stderr.contains("f.kubeconfig"), "{stderr}");
}

/// Two clusters in one `kubeconfig_dir` write two files; a cluster's own
/// `kubeconfig_file` overrides the directory.
#[test]
fn kubeconfig_dir_names_one_file_per_cluster_and_kubeconfig_file_overrides_it() {
    let sim = sim();
    let work = tempfile::tempdir().unwrap();
    let mut conf = Conf {
        extra_defaults: format!(
            "kubeconfig_dir = \"{}\"",
            work.path().join("kube").display()
        ),
        ..Conf::default()
    };
    conf.cluster_extra = vec![(
        "c2".into(),
        format!(
            "kubeconfig_file = \"{}\"",
            work.path().join("own/c2.yaml").display()
        ),
    )];
    let config = write_config(&sim, work.path(), &conf, None);
    let out = run_mcprom(
        &[
            "scrape-config",
            "--discovery",
            "kubeconfig",
            "--config",
            config.to_str().unwrap(),
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    let jobs = yaml["scrape_configs"].as_sequence().unwrap();
    assert_eq!(jobs.len(), 4);
    for job in jobs {
        let name = job["job_name"].as_str().unwrap();
        let sd = &job["kubernetes_sd_configs"][0];
        let expected = if name.starts_with("c1-") {
            work.path().join("kube/c1.kubeconfig")
        } else {
            work.path().join("own/c2.yaml")
        };
        assert_eq!(
            sd["kubeconfig_file"].as_str(),
            Some(expected.to_str().unwrap()),
            "{name}"
        );
        assert_eq!(sd["role"].as_str(), Some("node"));
        for refused in ["api_server", "authorization", "tls_config", "proxy_url"] {
            assert!(
                sd.get(refused).is_none(),
                "{name}: Prometheus refuses {refused} with kubeconfig_file"
            );
        }
        // The scrape through the node proxy still needs the token itself.
        let token = work.path().join(format!("tokens/{}.token", &name[..2]));
        assert_eq!(
            job["authorization"]["credentials_file"].as_str(),
            Some(token.to_str().unwrap())
        );
        assert!(job["tls_config"]["ca_file"].as_str().is_some(), "{name}");
    }
}

/// `--discovery kubeconfig` for a cluster without a kubeconfig says what to
/// set and prints nothing; the default form is unchanged.
#[test]
fn discovery_by_kubeconfig_needs_a_kubeconfig_and_the_default_form_is_unchanged() {
    let sim = sim();
    let work = tempfile::tempdir().unwrap();
    let config = write_config(&sim, work.path(), &Conf::default(), None);
    let out = run_mcprom(
        &[
            "scrape-config",
            "--discovery",
            "kubeconfig",
            "--config",
            config.to_str().unwrap(),
        ],
        "",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.contains("kubeconfig_dir"), "{stderr}");
    let out = run_mcprom(&["scrape-config", "--config", config.to_str().unwrap()], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    let sd = &yaml["scrape_configs"][0]["kubernetes_sd_configs"][0];
    assert!(sd["api_server"].as_str().unwrap().ends_with("/clusters/c1"));
    assert!(sd.get("kubeconfig_file").is_none());
}
