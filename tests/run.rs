//! `mcprom run` against the real simulator over real TLS, as black boxes.
//!
//! Timing: lifetimes of 10 s or more and waits with generous deadlines, so
//! the assertions hold on a loaded 2-core machine.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clusters_rotate_and_the_files_always_hold_complete_accepted_tokens() {
    let sim = Sim::start(&[
        "--clusters",
        "3",
        "--min-expiration",
        "1s",
        "--expiry-leeway",
        "0s",
    ]);
    let work = tempfile::tempdir().unwrap();
    let conf = Conf {
        expiration: "10s",
        refresh_at: 0.5,
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let mut daemon = Daemon::start(&config, "info");
    let names = ["c1", "c2", "c3"];
    let files: Vec<_> = names
        .iter()
        .map(|n| work.path().join(format!("tokens/{n}.token")))
        .collect();
    eventually(Duration::from_secs(20), "first tokens", || async {
        files.iter().all(|f| f.exists()).then_some(())
    })
    .await;

    // A polling reader, like Prometheus reading on every scrape.
    let mut seen: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(22) {
        for (i, file) in files.iter().enumerate() {
            let content = std::fs::read_to_string(file).expect("token file never missing");
            assert!(!content.is_empty(), "token file never empty");
            assert_eq!(
                content.split('.').count(),
                3,
                "a complete JWT: {}",
                content.len()
            );
            assert!(!content.ends_with('\n'));
            let list = seen.entry(i).or_default();
            if list.last() != Some(&content) {
                let c = claims(&content);
                assert_eq!(
                    c["sub"],
                    "system:serviceaccount:kube-system:prometheus-test"
                );
                list.push(content);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, tokens) in &seen {
        assert!(
            tokens.len() >= 3,
            "{}: only {} tokens seen",
            names[*i],
            tokens.len()
        );
        // Every token the reader saw was accepted by the simulator until its
        // exp: the newest ones are still accepted now.
        let newest = tokens.last().unwrap();
        assert!(
            sim.accepts(names[*i], newest).await,
            "newest token accepted"
        );
        // Each was issued after the previous one.
        let iats: Vec<u64> = tokens
            .iter()
            .map(|t| claims(t)["iat"].as_u64().unwrap())
            .collect();
        assert!(iats.windows(2).all(|w| w[0] <= w[1]), "{iats:?}");
    }
    // The file holds the newest token the simulator issued.
    let stats = sim.stats().await;
    for (i, name) in names.iter().enumerate() {
        let last_exp = stats["clusters"][name]["last_exp"]["kube-system/prometheus-test"]
            .as_u64()
            .unwrap();
        let in_file = claims(&std::fs::read_to_string(&files[i]).unwrap())["exp"]
            .as_u64()
            .unwrap();
        assert_eq!(in_file, last_exp, "{name}: file holds the newest token");
    }
    let (status, took) = daemon.terminate();
    assert!(status.success(), "exit 0 on SIGTERM: {status:?}");
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");
    assert!(daemon.count("token refreshed") >= 9, "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_files_get_the_configured_mode_and_group() {
    let sim = Sim::start(&["--clusters", "1"]);
    let work = tempfile::tempdir().unwrap();
    let group = nix::unistd::Group::from_name("daemon")
        .unwrap()
        .expect("the daemon group exists on Debian");
    let conf = Conf {
        extra_defaults: "file_mode = \"0604\"\nfile_group = \"daemon\"".into(),
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let _daemon = Daemon::start(&config, "info");
    let file = work.path().join("tokens/c1.token");
    eventually(Duration::from_secs(20), "token file", || async {
        file.exists().then_some(())
    })
    .await;
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o604);
    assert_eq!(meta.gid(), group.gid.as_raw());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_clusters_rotating_together_cause_one_reload() {
    let sim = Sim::start(&["--clusters", "10"]);
    let work = tempfile::tempdir().unwrap();
    let receiver = ReloadReceiver::start(Duration::ZERO, 200).await;
    let conf = Conf {
        reload_url: Some(receiver.url.clone()),
        delay: "1s",
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let daemon = Daemon::start(&config, "info");
    eventually(
        Duration::from_secs(30),
        "ten tokens and a reload",
        || async { (daemon.count("token refreshed") == 10 && receiver.count() >= 1).then_some(()) },
    )
    .await;
    // Nothing else is due for most of an hour: the count must stay at one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.count(), 1, "{}", daemon.log());
    assert_eq!(daemon.count("prometheus reloaded"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reload_is_never_doubled() {
    let sim = Sim::start(&["--clusters", "4", "--min-expiration", "1s"]);
    let work = tempfile::tempdir().unwrap();
    let receiver = ReloadReceiver::start(Duration::from_secs(2), 200).await;
    let conf = Conf {
        expiration: "10s",
        refresh_at: 0.3,
        reload_url: Some(receiver.url.clone()),
        delay: "100ms",
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let daemon = Daemon::start(&config, "info");
    // Rotations every ~3 s per cluster, reloads taking 2 s: plenty of
    // changes arrive while a reload is in flight.
    eventually(Duration::from_secs(40), "several reloads", || async {
        (receiver.count() >= 4).then_some(())
    })
    .await;
    assert_eq!(
        receiver
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "{}",
        daemon.log()
    );
    // Coalesced: fewer reloads than rotations.
    assert!(receiver.count() < daemon.count("token refreshed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_and_a_forbidden_credential_back_off_while_others_rotate() {
    let sim = Sim::start(&["--clusters", "3", "--min-expiration", "1s"]);
    let work = tempfile::tempdir().unwrap();
    let nobody = sim.path().join("c2/kubeconfig-nobody");
    let conf = Conf {
        expiration: "10s",
        refresh_at: 0.5,
        // c1 is verified against c3's CA: the handshake must fail.
        cluster_extra: vec![(
            "c1".into(),
            format!("ca_file = \"{}\"", sim.ca_file("c3").display()),
        )],
        credentials: vec![(
            "c2".into(),
            format!("kubeconfig = \"{}\"", nobody.display()),
        )],
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let daemon = Daemon::start(&config, "info");
    let started = Instant::now();
    let c3 = work.path().join("tokens/c3.token");
    eventually(Duration::from_secs(20), "c3's first token", || async {
        c3.exists().then_some(())
    })
    .await;
    let first = std::fs::read_to_string(&c3).unwrap();
    eventually(Duration::from_secs(20), "c3 rotating on time", || async {
        (std::fs::read_to_string(&c3).unwrap() != first).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(started.elapsed())).await;
    let elapsed = started.elapsed().as_secs_f64();
    let log = daemon.log();
    assert!(!work.path().join("tokens/c1.token").exists());
    assert!(!work.path().join("tokens/c2.token").exists());
    // Clear errors, named by cluster.
    let c1_failures = log
        .lines()
        .filter(|l| l.contains("cluster=c1") && l.contains("token refresh failed"))
        .count();
    assert!(c1_failures >= 1, "{log}");
    assert!(
        log.contains("TLS verification of the API server failed"),
        "{log}"
    );
    assert!(log.contains("forbidden (403)"), "{log}");
    assert!(
        log.contains(r#"cannot create resource \"serviceaccounts/token\""#)
            || log.contains(r#"cannot create resource "serviceaccounts/token""#),
        "{log}"
    );
    // Backoff: from 1 s doubling, so at most ~log2(elapsed)+2 attempts.
    let bound = (elapsed.log2().ceil() as usize) + 3;
    assert!(
        c1_failures <= bound,
        "c1 tried {c1_failures} times in {elapsed:.0}s"
    );
    let c2_requests = sim.token_requests("c2").await as usize;
    assert!(
        (1..=bound).contains(&c2_requests),
        "c2 sent {c2_requests} TokenRequests in {elapsed:.0}s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_longer_than_half_a_lifetime_keeps_the_old_token_until_recovery() {
    let sim = Sim::start(&[
        "--clusters",
        "1",
        "--min-expiration",
        "1s",
        "--expiry-leeway",
        "0s",
    ]);
    let work = tempfile::tempdir().unwrap();
    let conf = Conf {
        expiration: "30s",
        refresh_at: 0.5,
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let daemon = Daemon::start(&config, "info");
    let file = work.path().join("tokens/c1.token");
    let first = eventually(Duration::from_secs(20), "first token", || async {
        read_token(&file)
    })
    .await;
    let exp = claims(&first)["exp"].as_u64().unwrap();
    sim.control(reqwest::Method::POST, "/clusters/c1/down", None)
        .await;
    // Stay down past the refresh point (half of 30 s) and a bit.
    tokio::time::sleep(Duration::from_secs(17)).await;
    assert_eq!(
        read_token(&file).as_deref(),
        Some(first.as_str()),
        "old token kept"
    );
    assert!(
        daemon.count("token refresh failed") >= 1,
        "{}",
        daemon.log()
    );
    sim.control(reqwest::Method::POST, "/clusters/c1/up", None)
        .await;
    let fresh = eventually(Duration::from_secs(12), "a fresh token", || async {
        read_token(&file).filter(|t| *t != first)
    })
    .await;
    assert!(now_unix() < exp, "replaced before the old token expired");
    assert!(sim.accepts("c1", &fresh).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_adopts_valid_tokens_and_a_changed_service_account_gets_a_new_one() {
    let sim = Sim::start(&["--clusters", "2"]);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(&sim, work.path(), &Conf::default(), None);
    let mut daemon = Daemon::start(&config, "info");
    let files = [
        work.path().join("tokens/c1.token"),
        work.path().join("tokens/c2.token"),
    ];
    eventually(Duration::from_secs(20), "tokens", || async {
        files.iter().all(|f| f.exists()).then_some(())
    })
    .await;
    assert!(daemon.terminate().0.success());
    let before = (
        sim.token_requests("c1").await,
        sim.token_requests("c2").await,
    );
    assert_eq!(before, (1, 1));

    let mut daemon = Daemon::start(&config, "info");
    eventually(Duration::from_secs(20), "adoption", || async {
        (daemon.count("adopted the valid token already on disk") == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = (
        sim.token_requests("c1").await,
        sim.token_requests("c2").await,
    );
    assert_eq!(after, before, "no TokenRequest at start-up");
    assert!(daemon.terminate().0.success());

    // Another ServiceAccount for c1: the token on disk no longer matches.
    sim.control(
        reqwest::Method::POST,
        "/clusters/c1/serviceaccounts/kube-system/other",
        None,
    )
    .await;
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "service_account = \"kube-system/prometheus-test\"",
        "service_account = \"kube-system/other\"",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let _daemon = Daemon::start(&config, "info");
    let token = eventually(
        Duration::from_secs(20),
        "a token for the other account",
        || async {
            read_token(&files[0])
                .filter(|t| claims(t)["sub"] == "system:serviceaccount:kube-system:other")
        },
    )
    .await;
    assert!(!token.is_empty());
    assert_eq!(sim.token_requests("c1").await, 2);
    assert_eq!(sim.token_requests("c2").await, 1, "c2 still adopted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_token_directory_refuses_to_start() {
    let sim = Sim::start(&["--clusters", "1"]);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(&sim, work.path(), &Conf::default(), None);
    let first = Daemon::start(&config, "info");
    let file = work.path().join("tokens/c1.token");
    eventually(Duration::from_secs(20), "token", || async {
        file.exists().then_some(())
    })
    .await;
    let mut second = Daemon::start(&config, "info");
    let status = second.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let log = second.log();
    assert!(log.contains("locked by another mcprom"), "{log}");
    assert!(log.contains(&format!("pid {}", first.child.id())), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ca_file_fails_check_but_run_serves_the_others_and_recovers() {
    let sim = Sim::start(&["--clusters", "2"]);
    let work = tempfile::tempdir().unwrap();
    let missing = work.path().join("later/ca.crt");
    let conf = Conf {
        cluster_extra: vec![("c1".into(), format!("ca_file = \"{}\"", missing.display()))],
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let check = std::process::Command::new(MCPROM)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains("c1") && stderr.contains("ca_file"),
        "{stderr}"
    );
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");

    let daemon = Daemon::start(&config, "info");
    let c2 = work.path().join("tokens/c2.token");
    let c1 = work.path().join("tokens/c1.token");
    eventually(Duration::from_secs(20), "c2's token", || async {
        c2.exists().then_some(())
    })
    .await;
    assert!(!c1.exists());
    std::fs::create_dir_all(missing.parent().unwrap()).unwrap();
    std::fs::copy(sim.ca_file("c1"), &missing).unwrap();
    // Backoff without a token is capped at 30 s.
    eventually(Duration::from_secs(45), "c1 recovering", || async {
        c1.exists().then_some(())
    })
    .await;
    assert!(daemon.log().contains("ca_file"), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_value_appears_in_the_output_even_at_trace_level() {
    let sim = Sim::start(&["--clusters", "2", "--min-expiration", "1s"]);
    let work = tempfile::tempdir().unwrap();
    let receiver = ReloadReceiver::start(Duration::ZERO, 200).await;
    let conf = Conf {
        expiration: "10s",
        refresh_at: 0.3,
        reload_url: Some(receiver.url.clone()),
        credentials: vec![(
            "c2".into(),
            format!(
                "token_file = \"{}\"",
                sim.path().join("c2/issuer.token").display()
            ),
        )],
        cluster_extra: vec![(
            "c2".into(),
            format!(
                "api_server = \"{}\"\nca_file = \"{}\"",
                sim.api_server("c2"),
                sim.ca_file("c2").display()
            ),
        )],
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let mut daemon = Daemon::start(&config, "trace");
    let mut tokens = BTreeSet::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(12) {
        for name in ["c1", "c2"] {
            if let Some(t) = read_token(&work.path().join(format!("tokens/{name}.token"))) {
                tokens.insert(t);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.terminate();
    let log = daemon.log();
    assert!(tokens.len() >= 4, "rotations happened: {}", tokens.len());
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "trace logging was on"
    );
    let issuer_token = std::fs::read_to_string(sim.path().join("c2/issuer.token")).unwrap();
    for secret in tokens.iter().chain(std::iter::once(&issuer_token)) {
        let secret = secret.trim();
        assert!(!log.contains(secret), "a token leaked into the log");
        // Nor its signature part alone.
        let signature = secret.rsplit('.').next().unwrap();
        assert!(
            !log.contains(signature),
            "a token signature leaked into the log"
        );
    }
}

#[test]
fn the_shipped_reference_config_passes_check() {
    let out = std::process::Command::new(MCPROM)
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/mcprom.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_config_exits_78_naming_file_line_column_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[cluster]]\nname = \"prod\"\nservce_account = \"kube-system/x\"\n[cluster.credentials]\ntoken_file = \"/x\"\n",
    )
    .unwrap();
    for command in ["run", "check"] {
        let out = std::process::Command::new(MCPROM)
            .args([command, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{}:3:1", path.display())),
            "{command}: {stderr}"
        );
        assert!(stderr.contains("servce_account"), "{stderr}");
        assert!(
            stderr.contains("did you mean \"service_account\""),
            "{stderr}"
        );
    }
    let out = std::process::Command::new(MCPROM)
        .args(["run", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
}
