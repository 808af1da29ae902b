//! Knowing that the token works (issue 18), against the real binaries:
//! every new token is reviewed with the API server (a SelfSubjectReview
//! made with the token itself) before it is written, and the token in use
//! is reviewed every `verify_interval`; one the server stops accepting
//! before its `exp` is re-minted at once, without waiting for the refresh
//! schedule (tokens here live 1 h; the schedule would refresh after ~48 min).
//!
//! Figures (event → working token on disk) are printed with `--nocapture`.

mod common;
#[path = "common/reliability.rs"]
mod reliability;

use std::time::{Duration, Instant};

use common::*;
use reliability::*;

/// Reviews every 10 s (the shortest allowed): detection within ~11 s.
fn reviewed_every_10s() -> Conf {
    Conf {
        extra_defaults: "verify_interval = \"10s\"".into(),
        ..Conf::default()
    }
}

const WITHIN: Duration = Duration::from_secs(90);

async fn rejected_total(rig: &Rig) -> f64 {
    rig.metric("mcprom_token_rejected_total{cluster=\"c1\"}")
        .await
        .unwrap_or(0.0)
}

/// Start c1 with a first token the simulator accepts.
async fn rig_with_a_token() -> (Rig, String) {
    let rig = Rig::start(&[], &reviewed_every_10s(), Some(&["c1"]));
    rig.first_tokens(&["c1"]).await;
    let token = rig.token("c1");
    assert!(rig.sim.accepts("c1", &token).await);
    let verified = eventually(WITHIN, "verified_at in status", || async {
        let s = rig.status("c1");
        s["verified_at"].as_str().map(str::to_owned)
    })
    .await;
    eprintln!("figures: first token verified at {verified}");
    (rig, token)
}

/// After `event`, the early death is noticed (log, metric, status) and a
/// new token the simulator accepts is on disk long before the schedule
/// would have refreshed; returns the time from the event to that token.
async fn re_minted_after(rig: &Rig, old: &str, started: Instant) -> Duration {
    let new = eventually(WITHIN, "a new token after the early death", || async {
        let t = read_token(&rig.token_path("c1"))?;
        (t != old).then_some(t)
    })
    .await;
    let took = started.elapsed();
    assert!(rig.sim.accepts("c1", &new).await, "the new token works");
    assert!(!rig.sim.accepts("c1", old).await, "the old one is dead");
    assert!(rejected_total(rig).await >= 1.0, "{}", rig.metrics().await);
    let log = rig.daemon.log();
    assert_eq!(
        log.matches("no longer accepts the current token").count(),
        1,
        "one line says why: {log}"
    );
    let status = eventually(WITHIN, "status fresh and accepted again", || async {
        let s = rig.status("c1");
        (s["state"] == "fresh" && s["rejected_since"].is_null() && s["rejections"] == 1)
            .then_some(s)
    })
    .await;
    assert!(status["verified_at"].is_string(), "{status}");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_signing_key_is_noticed_and_the_token_re_minted_at_once() {
    let (rig, old) = rig_with_a_token().await;
    let minted = rig.token_requests("c1").await;
    let started = Instant::now();
    rig.sim
        .control(
            reqwest::Method::POST,
            "/clusters/c1/signing-key/rotate",
            None,
        )
        .await;
    let took = re_minted_after(&rig, &old, started).await;
    assert_eq!(rig.token_requests("c1").await, minted + 1, "one re-mint");
    eprintln!("figures: signing key rotated → working token on disk in {took:.1?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_recreated_with_a_new_uid_is_noticed_and_re_minted() {
    let (rig, old) = rig_with_a_token().await;
    let started = Instant::now();
    rig.sim
        .control(
            reqwest::Method::POST,
            "/clusters/c1/serviceaccounts/kube-system/prometheus-test/recreate",
            None,
        )
        .await;
    let took = re_minted_after(&rig, &old, started).await;
    eprintln!("figures: ServiceAccount recreated (new uid) → working token on disk in {took:.1?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_service_account_keeps_the_file_says_not_found_and_recovers_once_recreated() {
    let (rig, old) = rig_with_a_token().await;
    let sa = "/clusters/c1/serviceaccounts/kube-system/prometheus-test";
    rig.sim.control(reqwest::Method::DELETE, sa, None).await;
    eventually(WITHIN, "the rejection noticed", || async {
        (rejected_total(&rig).await >= 1.0 && rig.refresh_errors("c1", "not_found").await >= 1.0)
            .then_some(())
    })
    .await;
    // The file keeps the (dead) token: never missing, never an error text.
    rig.token_stays("c1", &old, Duration::from_secs(3)).await;
    let status = rig.status("c1");
    assert!(status["rejected_since"].is_string(), "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("ServiceAccount not found"),
        "{status}"
    );
    assert!(
        sample(&rig.metrics().await, "mcprom_token_valid{cluster=\"c1\"}") == Some(0.0),
        "a rejected token is not valid"
    );
    let out = mcprom_cli(&rig.config, &["status"]);
    assert_eq!(out.status.code(), Some(1), "status is unhealthy");
    let started = Instant::now();
    rig.sim.control(reqwest::Method::POST, sa, None).await;
    let took = re_minted_after(&rig, &old, started).await;
    eprintln!(
        "figures: ServiceAccount recreated after deletion → working token on disk in {took:.1?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_an_audience_the_server_does_not_accept_is_never_written() {
    let (rig, old) = rig_with_a_token().await;
    // Edit the live config: the same cluster, now asking for an audience the
    // simulated server (like a real one without --api-audiences) does not accept.
    let text = std::fs::read_to_string(&rig.config).unwrap().replace(
        "service_account = \"kube-system/prometheus-test\"\n",
        "service_account = \"kube-system/prometheus-test\"\naudiences = [\"https://kubernetes.default.svc\"]\n",
    );
    let minted = rig.token_requests("c1").await;
    std::fs::write(&rig.config, text).unwrap();
    eventually(WITHIN, "a rejected new token", || async {
        (rig.refresh_errors("c1", "rejected").await >= 1.0).then_some(())
    })
    .await;
    assert!(
        rig.token_requests("c1").await > minted,
        "a token was minted"
    );
    rig.token_stays("c1", &old, Duration::from_secs(3)).await;
    let says = "the API server does not accept audience \"https://kubernetes.default.svc\"; \
                its audiences are \"https://kubernetes.default.svc.cluster.local\"";
    let log = rig.daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains(says) && l.contains("rejected")),
        "{log}"
    );
    let status = rig.status("c1");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains(says),
        "{status}"
    );
    assert!(!log.contains(&old), "no token value in the log");
}
