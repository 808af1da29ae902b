//! Self-renewing credentials (`credentials.self = true`) against the real
//! simulator: no credential but the cluster's own token, seeded once with
//! `mcprom seed`.
//!
//! Timing: 10 s lifetimes and generous deadlines, so the assertions hold on
//! a loaded 2-core machine.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A sim whose ServiceAccount may renew itself, with exact expiry.
fn self_renewing_sim() -> Sim {
    Sim::start(&[
        "--allow-self-renew",
        "--min-expiration",
        "1s",
        "--expiry-leeway",
        "0s",
    ])
}

/// A config where c1's only credential is its own token. `[defaults]`
/// says refresh_at 0.8, which must not apply to a self-renewing cluster.
fn self_config(sim: &Sim, dir: &Path, extra: &str) -> PathBuf {
    let conf = Conf {
        expiration: "10s",
        refresh_at: 0.8,
        cluster_extra: vec![(
            "c1".into(),
            format!(
                "api_server = \"{}\"\nca_file = \"{}\"\n{extra}",
                sim.api_server("c1"),
                sim.ca_file("c1").display()
            ),
        )],
        credentials: vec![("c1".into(), "self = true".into())],
        ..Conf::default()
    };
    write_config(sim, dir, &conf, Some(&["c1"]))
}

fn seed(config: &Path, token: &str) -> std::process::Output {
    run_mcprom(
        &["--config", config.to_str().unwrap(), "seed", "c1"],
        &format!("{token}\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_renewal_keeps_a_cluster_fresh_across_five_rotations_with_no_other_credential() {
    let sim = self_renewing_sim();
    let work = tempfile::tempdir().unwrap();
    let config = self_config(&sim, work.path(), "");
    let text_config = std::fs::read_to_string(&config).unwrap();
    assert!(
        !text_config.contains("kubeconfig") && !text_config.contains("issuer"),
        "{text_config}"
    );

    let first = sim.mint("c1", 10).await;
    let out = seed(&config, &first);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("stored a token for kube-system/prometheus-test"));
    assert!(
        text(&out.stdout).contains("mcprom is not running: it adopts the token when it starts")
    );
    let file = work.path().join("tokens/c1.token");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first);
    assert!(work.path().join("tokens/c1.token.chain").exists());

    let mut daemon = Daemon::start(&config, "info");
    let mut tokens = vec![first.clone()];
    let started = Instant::now();
    while tokens.len() < 7 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} tokens after 60 s:\n{}",
            tokens.len(),
            daemon.log()
        );
        let current = std::fs::read_to_string(&file).unwrap();
        if tokens.last() != Some(&current) {
            // Every renewal succeeded before the previous token expired:
            // the simulator still accepts the newest one, and each was
            // issued while its predecessor was valid.
            assert!(sim.accepts("c1", &current).await, "renewed token accepted");
            let (prev, next) = (claims(tokens.last().unwrap()), claims(&current));
            assert!(next["iat"].as_u64() < prev["exp"].as_u64(), "{prev} {next}");
            assert_eq!(
                next["sub"],
                "system:serviceaccount:kube-system:prometheus-test"
            );
            tokens.push(current);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Refreshing at half the lifetime (not [defaults]' 0.8): about every 5 s.
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(45),
        "6 renewals took {elapsed:?}"
    );
    // The log line follows the write: give it a moment.
    eventually(Duration::from_secs(5), "six renewals logged", || async {
        (daemon.count("token refreshed") >= 6).then_some(())
    })
    .await;
    assert_eq!(daemon.count("token refresh failed"), 0, "{}", daemon.log());
    let (status, _) = daemon.terminate();
    assert!(status.success());
    for token in &tokens {
        assert!(
            !daemon.log().contains(token.as_str()),
            "a token leaked into the log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_broken_by_an_outage_says_how_to_reseed_and_seed_repairs_it() {
    let sim = self_renewing_sim();
    let work = tempfile::tempdir().unwrap();
    let config = self_config(&sim, work.path(), "");
    let file = work.path().join("tokens/c1.token");
    assert!(seed(&config, &sim.mint("c1", 10).await).status.success());
    let daemon = Daemon::start(&config, "info");
    eventually(Duration::from_secs(30), "a first renewal", || async {
        (daemon.count("token refreshed") >= 1).then_some(())
    })
    .await;

    // The API server is down for longer than a token lives.
    sim.control(reqwest::Method::POST, "/clusters/c1/down", None)
        .await;
    // Re-read the file each time: a renewal in flight when the API server
    // went down may still land.
    eventually(
        Duration::from_secs(30),
        "the token in the file to expire",
        || async {
            let token = std::fs::read_to_string(&file).ok()?;
            (now_unix() > claims(&token)["exp"].as_u64()? + 1).then_some(())
        },
    )
    .await;
    sim.control(reqwest::Method::POST, "/clusters/c1/up", None)
        .await;

    let reseed = format!(
        "kubectl create token prometheus-test -n kube-system --duration 24h | mcprom --config {} seed c1",
        config.display()
    );
    eventually(
        Duration::from_secs(60),
        "the broken chain to be reported",
        || async {
            let log = daemon.log();
            (log.contains("the self-renewal chain is broken") && log.contains(&reseed))
                .then_some(())
        },
    )
    .await;
    assert!(
        daemon.log().contains("reason=\"chain_broken\""),
        "{}",
        daemon.log()
    );
    assert!(
        !sim.accepts("c1", &std::fs::read_to_string(&file).unwrap())
            .await
    );

    // The repair: a fresh seed; `mcprom seed` asks the running daemon to
    // renew with it at once, and it renews on its own from then on.
    let fresh = sim.mint("c1", 10).await;
    let out = seed(&config, &fresh);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("the running mcprom renewed the token with it"),
        "{}",
        text(&out.stdout)
    );
    let seeded_iat = claims(&fresh)["iat"].as_u64().unwrap();
    let refreshed_before = daemon.count("token refreshed");
    eventually(
        Duration::from_secs(50),
        "a renewal after the seed",
        || async {
            let current = std::fs::read_to_string(&file).ok()?;
            let renewed = current != fresh && claims(&current)["iat"].as_u64()? >= seeded_iat;
            (renewed && daemon.count("token refreshed") > refreshed_before).then_some(current)
        },
    )
    .await;
    let current = std::fs::read_to_string(&file).unwrap();
    assert!(
        sim.accepts("c1", &current).await,
        "the renewed chain works:\n{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_stops_at_max_chain_age_and_asks_for_a_fresh_seed() {
    let sim = self_renewing_sim();
    let work = tempfile::tempdir().unwrap();
    let config = self_config(&sim, work.path(), "max_chain_age = \"12s\"");
    assert!(seed(&config, &sim.mint("c1", 10).await).status.success());
    let daemon = Daemon::start(&config, "info");
    eventually(
        Duration::from_secs(40),
        "renewal to stop at max_chain_age",
        || async {
            daemon
                .log()
                .contains("reached max_chain_age (12s): mcprom stopped renewing")
                .then_some(())
        },
    )
    .await;
    assert!(daemon.count("token refreshed") >= 1, "{}", daemon.log());
    assert!(
        daemon.log().contains("| mcprom --config"),
        "{}",
        daemon.log()
    );
}

#[tokio::test]
async fn seed_refuses_tokens_it_cannot_use_and_never_prints_them() {
    let sim = self_renewing_sim();
    let work = tempfile::tempdir().unwrap();
    let config = self_config(&sim, work.path(), "");
    let c = config.to_str().unwrap();
    let file = work.path().join("tokens/c1.token");

    // Another ServiceAccount's token: the sim's admin could mint one, but a
    // forged payload is enough to exercise the check.
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let other = format!(
        "{}.{}.c2ln",
        b64(r#"{"alg":"ES256"}"#),
        b64(r#"{"sub":"system:serviceaccount:default:default","exp":4000000000}"#)
    );
    let expired = format!(
        "{}.{}.c2ln",
        b64(r#"{"alg":"ES256"}"#),
        b64(r#"{"sub":"system:serviceaccount:kube-system:prometheus-test","exp":1000}"#)
    );
    for (input, why) in [
        (other.as_str(), "not for kube-system/prometheus-test"),
        (
            expired.as_str(),
            "the token expired at 1970-01-01T00:16:40Z",
        ),
        ("", "standard input held no token"),
        ("error: you must be logged in", "not a JWT"),
    ] {
        let out = run_mcprom(&["--config", c, "seed", "c1"], input);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{input:?}: {stderr}");
        assert!(stderr.contains(why), "{input:?}: {stderr}");
        if input.len() > 40 {
            assert!(!stderr.contains(input) && !text(&out.stdout).contains(input));
        }
        assert!(!file.exists(), "nothing is written for a refused token");
    }

    // A cluster with another credential is not seeded.
    let plain = write_config(&sim, work.path(), &Conf::default(), Some(&["c1"]));
    let good = sim.mint("c1", 600).await;
    let out = run_mcprom(&["--config", plain.to_str().unwrap(), "seed", "c1"], &good);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("does not use self-renewal"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stderr).contains(&good));

    // The tokens mcprom writes and the seed's chain file get the cluster's mode.
    let config = self_config(&sim, work.path(), "file_mode = \"0600\"");
    let out = seed(&config, &good);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains(&good));
    use std::os::unix::fs::MetadataExt as _;
    let modes: BTreeSet<u32> = [file.clone(), work.path().join("tokens/c1.token.chain")]
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().mode() & 0o777)
        .collect();
    assert_eq!(modes, BTreeSet::from([0o600]));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), good);
}
