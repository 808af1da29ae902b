//! The fault matrix, API-server side: every way a TokenRequest can fail.
//!
//! Each test: the old token stays in the file (byte for byte) while the
//! fault lasts; the failure shows in the log, in
//! `mcprom_token_refresh_errors_total{reason}` and in `mcprom status --json`
//! `last_error`; retries are bounded (TokenRequests counted by the
//! simulator); and once the fault goes away a new token arrives without
//! anyone acting on mcprom. Figures are printed with `--nocapture`.
//!
//! `mcprom rotate` starts the failing refresh, so nothing waits for a
//! natural one. Tokens live 40 s and are due at 90 %: the backoff (1 s,
//! 2 s, 4 s … with full jitter) is then capped by a quarter of the time
//! left, under 10 s, so the retry after a fault clears comes within
//! seconds, not after an exponential delay of minutes.

mod common;
#[path = "common/reliability.rs"]
mod reliability;

use std::time::{Duration, Instant};

use common::*;
use reliability::*;
use serde_json::json;

const SIM_ARGS: &[&str] = &["--min-expiration", "1s", "--expiry-leeway", "0s"];
/// How long each fault is held.
const WINDOW: Duration = Duration::from_secs(10);
/// Retries in WINDOW: about 5 expected (1 s, 2 s, 4 s … with full jitter);
/// more than 12 has a probability below 1e-8.
const MAX_REQUESTS: u64 = 12;
const RECOVERY: Duration = Duration::from_secs(90);

/// 40-second tokens refreshed at 90 % (see the module docs).
fn short_tokens() -> Conf {
    Conf {
        expiration: "40s",
        refresh_at: 0.9,
        ..Conf::default()
    }
}

/// What a failure must look like.
struct Seen {
    /// `reason` label.
    reason: &'static str,
    /// Text in the log line, the rotate output and status `last_error`.
    says: &'static [&'static str],
}

fn says_any(text: &str, says: &[&str]) -> bool {
    says.iter().any(|s| text.contains(s))
}

/// Failed refresh attempts of c1 so far (`mcprom_token_refreshes_total`).
async fn failures(rig: &Rig) -> u64 {
    rig.metric("mcprom_token_refreshes_total{cluster=\"c1\",result=\"failure\"}")
        .await
        .unwrap_or(0.0) as u64
}

/// Start the daemon for c1 and wait for its first token.
async fn rig_with_a_token(sim_args: &[&str], conf: &Conf) -> (Rig, String) {
    let rig = Rig::start(sim_args, conf, Some(&["c1"]));
    rig.first_tokens(&["c1"]).await;
    let token = rig.token("c1");
    assert!(rig.sim.accepts("c1", &token).await);
    (rig, token)
}

/// With the fault in place: `mcprom rotate` fails saying why, the token
/// stays for WINDOW, retries are bounded, and log, metric and status show
/// the failure.
async fn fails_visibly_and_boundedly(rig: &Rig, old: &str, seen: &Seen) {
    let before = rig.token_requests("c1").await;
    let failed_before = failures(rig).await;
    let started = Instant::now();
    let (rotate, ()) = tokio::join!(rig.rotate("c1"), rig.token_stays("c1", old, WINDOW));
    let elapsed = started.elapsed();
    let out = String::from_utf8_lossy(&rotate.stdout).into_owned();
    assert_eq!(rotate.status.code(), Some(1), "mcprom rotate fails: {out}");
    assert!(says_any(&out, seen.says), "rotate says why: {out}");
    // Attempts as mcprom counts them; requests as the simulator saw them
    // (none when TLS or the connection fails first).
    let attempts = failures(rig).await - failed_before;
    let requests = rig.token_requests("c1").await - before;
    eprintln!(
        "figures: reason={} attempts={attempts} ({:.0}/min), TokenRequests seen by the API server={requests}, in {elapsed:.1?}",
        seen.reason,
        per_minute(attempts, elapsed)
    );
    assert!(attempts >= 2, "retried by itself: {attempts}");
    assert!(
        attempts <= MAX_REQUESTS && requests <= MAX_REQUESTS,
        "bounded retries: {attempts} attempts, {requests} TokenRequests in {elapsed:?}"
    );
    let log = rig.daemon.log();
    let line = log
        .lines()
        .find(|l| {
            l.contains("token refresh failed; keeping the current token")
                && l.contains(seen.reason)
                && says_any(l, seen.says)
        })
        .unwrap_or_else(|| panic!("a log line names the reason: {log}"));
    eprintln!("figures: log: {line}");
    let counted = rig.refresh_errors("c1", seen.reason).await;
    assert!(counted >= 2.0, "metric reason={}: {counted}", seen.reason);
    let status = rig.status("c1");
    assert!(
        status["state"] == "backoff" || status["state"] == "refreshing",
        "{status}"
    );
    let last_error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        says_any(last_error, seen.says),
        "status last_error: {status}"
    );
}

async fn a_persistent_fault(fault: serde_json::Value, seen: Seen) {
    let (rig, old) = rig_with_a_token(SIM_ARGS, &short_tokens()).await;
    let mut fault = fault;
    fault["count"] = json!(1000);
    rig.fault("c1", fault).await;
    fails_visibly_and_boundedly(&rig, &old, &seen).await;
    rig.clear_faults("c1").await;
    rig.recovers("c1", &old, RECOVERY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_500_keeps_the_token_retries_boundedly_and_recovers() {
    a_persistent_fault(
        json!({"kind": "status", "code": 500}),
        Seen {
            reason: "server_error",
            says: &["API server error (500)"],
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_503_keeps_the_token_retries_boundedly_and_recovers() {
    a_persistent_fault(
        json!({"kind": "status", "code": 503}),
        Seen {
            reason: "server_error",
            says: &["API server error (503)"],
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_403_keeps_the_token_says_which_rbac_rule_is_missing_and_recovers() {
    a_persistent_fault(
        json!({"kind": "status", "code": 403}),
        Seen {
            reason: "forbidden",
            says: &["grant create on serviceaccounts/token"],
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_keep_the_token_retry_boundedly_and_recover() {
    a_persistent_fault(
        json!({"kind": "reset"}),
        Seen {
            reason: "unreachable",
            says: &["API server unreachable"],
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_gone_keeps_the_token_retries_boundedly_and_recovers_when_it_returns() {
    let (rig, old) = rig_with_a_token(SIM_ARGS, &short_tokens()).await;
    rig.sim
        .control(reqwest::Method::POST, "/clusters/c1/down", None)
        .await;
    let seen = Seen {
        reason: "unreachable",
        says: &["API server unreachable"],
    };
    fails_visibly_and_boundedly(&rig, &old, &seen).await;
    assert!(
        rig.daemon.log().contains("Connection refused")
            || rig.daemon.log().contains("connection refused"),
        "the log says the connection was refused"
    );
    rig.sim
        .control(reqwest::Method::POST, "/clusters/c1/up", None)
        .await;
    rig.recovers("c1", &old, RECOVERY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_429_is_retried_no_sooner_than_retry_after() {
    let (rig, old) = rig_with_a_token(SIM_ARGS, &Conf::default()).await;
    const RETRY_AFTER: u64 = 3;
    rig.fault(
        "c1",
        json!({"count": 3, "kind": "status", "code": 429, "retry_after_seconds": RETRY_AFTER}),
    )
    .await;
    // Record when each TokenRequest arrives (stats polled every 50 ms).
    let before = rig.token_requests("c1").await;
    let watch = async {
        let mut arrivals = Vec::new();
        let mut seen = before;
        let deadline = Instant::now() + RECOVERY;
        while arrivals.len() < 4 && Instant::now() < deadline {
            let n = rig.token_requests("c1").await;
            for _ in seen..n {
                arrivals.push(Instant::now());
            }
            seen = n;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        arrivals
    };
    let check_while_throttled = async {
        let rotate = rig.rotate("c1").await;
        let out = String::from_utf8_lossy(&rotate.stdout).into_owned();
        assert_eq!(rotate.status.code(), Some(1), "{out}");
        assert!(out.contains("throttled by the API server (429)"), "{out}");
        // The next attempt is at least 3 s away: the status shows the 429.
        let status = rig.status("c1");
        assert_eq!(status["state"], "backoff", "{status}");
        assert!(
            status["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains("429"),
            "{status}"
        );
        assert_eq!(rig.token("c1"), old, "the old token stays during the 429s");
    };
    let (arrivals, ()) = tokio::join!(watch, check_while_throttled);
    assert_eq!(arrivals.len(), 4, "three 429s, then the success");
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!(
        "figures: gaps between TokenRequests after 429 (Retry-After {RETRY_AFTER}s): {gaps:?}"
    );
    for gap in &gaps {
        // Arrival times seen by polling the simulator's counters are late
        // by up to a poll and a round trip: a loose check here, the exact
        // one from the daemon's own timestamps below.
        assert!(
            *gap >= Duration::from_millis(RETRY_AFTER * 1000 - 1000),
            "retried before Retry-After: {gaps:?}"
        );
    }
    assert!(rig.refresh_errors("c1", "throttled").await >= 3.0);
    rig.recovers("c1", &old, RECOVERY).await;
    // Each 429 is logged when it arrives; the next request is sent no
    // sooner than Retry-After later, so its outcome is logged later still.
    let log = rig.daemon.log();
    let stamp = |l: &str| -> f64 {
        let t: jiff::Timestamp = l.split_whitespace().next().unwrap().parse().unwrap();
        t.as_millisecond() as f64 / 1000.0
    };
    let outcomes: Vec<f64> = log
        .lines()
        .filter(|l| {
            (l.contains("token refresh failed") && l.contains("throttled"))
                || l.contains("token refreshed")
        })
        .map(stamp)
        .skip(1) // the first token, before the fault
        .collect();
    assert_eq!(outcomes.len(), 4, "three 429s, then the new token: {log}");
    let logged: Vec<f64> = outcomes.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("figures: gaps between outcomes in mcprom's log: {logged:?}");
    assert!(
        logged.iter().all(|g| *g >= RETRY_AFTER as f64 - 0.001),
        "retried before Retry-After: {logged:?}"
    );
    rig.recovers("c1", &old, RECOVERY).await;
}

/// The issuer's request timeout is `REQUEST_TIMEOUT` (30 s): this test takes
/// about a minute (two hung requests), most of it waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_api_server_times_out_keeps_the_token_and_recovers() {
    let (rig, old) = rig_with_a_token(SIM_ARGS, &Conf::default()).await;
    rig.fault("c1", json!({"count": 2, "kind": "hang"})).await;
    let says: &[&str] = &["no answer from the API server within 30s", "timed out"];
    let started = Instant::now();
    let (rotate, ()) = tokio::join!(
        rig.rotate("c1"),
        rig.token_stays("c1", &old, Duration::from_secs(29))
    );
    let first = started.elapsed();
    let out = String::from_utf8_lossy(&rotate.stdout).into_owned();
    assert_eq!(rotate.status.code(), Some(1), "{out}");
    assert!(says_any(&out, says), "{out}");
    assert!(
        first >= Duration::from_secs(29) && first < Duration::from_secs(45),
        "the request was given up after the 30 s timeout: {first:?}"
    );
    // The retry hangs too: meanwhile the status shows the timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = rig.status("c1");
    assert!(
        says_any(status["last_error"].as_str().unwrap_or_default(), says),
        "{status}"
    );
    assert_eq!(rig.token("c1"), old);
    assert!(rig.refresh_errors("c1", "unreachable").await >= 1.0);
    assert!(
        rig.daemon
            .log()
            .lines()
            .any(|l| l.contains("token refresh failed") && says_any(l, says)),
        "{}",
        rig.daemon.log()
    );
    rig.recovers("c1", &old, RECOVERY).await;
    let requests = rig.token_requests("c1").await;
    eprintln!(
        "figures: hang: first attempt gave up after {first:.1?}; {requests} TokenRequests in {:.1?}",
        started.elapsed()
    );
    // Start, two hung attempts, the success: nothing piles up behind a hang.
    assert_eq!(requests, 4, "one request at a time while hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_issuer_credential_is_reported_and_a_renewed_one_is_picked_up() {
    let sim = Sim::start(&[
        "--min-expiration",
        "1s",
        "--expiry-leeway",
        "0s",
        "--allow-self-renew",
    ]);
    let work = tempfile::tempdir().unwrap();
    // mcprom's credential: a 10-second token of a ServiceAccount allowed to
    // mint tokens (here the managed one itself, --allow-self-renew).
    let credential = work.path().join("issuer-credential.token");
    let short = issue_token(&sim, "c1", 10).await;
    let short_exp = claims(&short)["exp"].as_u64().unwrap();
    std::fs::write(&credential, &short).unwrap();
    let conf = Conf {
        cluster_extra: vec![(
            "c1".into(),
            format!(
                "api_server = \"{}\"\nca_file = \"{}\"",
                sim.api_server("c1"),
                sim.ca_file("c1").display()
            ),
        )],
        credentials: vec![(
            "c1".into(),
            format!("token_file = \"{}\"", credential.display()),
        )],
        ..short_tokens()
    };
    let rig = Rig::start_with(sim, work, &conf, Some(&["c1"]), |_| {});
    rig.first_tokens(&["c1"]).await;
    let old = rig.token("c1");
    // The credential's expiry is exported before it bites.
    let exported = rig
        .metric("mcprom_credential_expiry_timestamp_seconds{cluster=\"c1\"}")
        .await;
    assert_eq!(exported, Some(short_exp as f64));
    eventually(
        Duration::from_secs(30),
        "the credential to expire",
        || async { (now_unix() > short_exp).then_some(()) },
    )
    .await;
    let seen = Seen {
        reason: "unauthorized",
        says: &["rejected mcprom's credential (401"],
    };
    fails_visibly_and_boundedly(&rig, &old, &seen).await;
    assert!(rig.daemon.log().contains("renew the credential"));
    // Renewing the credential file is enough: it is re-read on every request.
    std::fs::write(&credential, issue_token(&rig.sim, "c1", 3600).await).unwrap();
    rig.recovers("c1", &old, RECOVERY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_does_not_match_fails_tls_keeps_the_token_and_recovers_when_fixed() {
    let sim = Sim::start(&[
        "--clusters",
        "2",
        "--min-expiration",
        "1s",
        "--expiry-leeway",
        "0s",
    ]);
    let work = tempfile::tempdir().unwrap();
    let ca = work.path().join("c1-ca.crt");
    std::fs::copy(sim.ca_file("c1"), &ca).unwrap();
    let conf = Conf {
        cluster_extra: vec![("c1".into(), format!("ca_file = \"{}\"", ca.display()))],
        ..short_tokens()
    };
    let rig = Rig::start_with(sim, work, &conf, Some(&["c1"]), |_| {});
    rig.first_tokens(&["c1"]).await;
    let old = rig.token("c1");
    // The CA file now holds another cluster's CA (a re-installed cluster,
    // a wrong copy): the API server's certificate no longer verifies.
    std::fs::copy(rig.sim.ca_file("c2"), &ca).unwrap();
    let seen = Seen {
        reason: "tls",
        says: &["TLS verification of the API server failed"],
    };
    fails_visibly_and_boundedly(&rig, &old, &seen).await;
    std::fs::copy(rig.sim.ca_file("c1"), &ca).unwrap();
    rig.recovers("c1", &old, RECOVERY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_shortened_lifetime_is_logged_once_and_followed() {
    // Asked for 1 h; the server grants 12 s (--service-account-max-token-expiration).
    let rig = Rig::start(
        &[
            "--min-expiration",
            "1s",
            "--expiry-leeway",
            "0s",
            "--max-expiration",
            "12s",
        ],
        &Conf {
            refresh_at: 0.5,
            ..Conf::default()
        },
        Some(&["c1"]),
    );
    rig.first_tokens(&["c1"]).await;
    let first = rig.token("c1");
    let mut tokens = vec![first.clone()];
    let deadline = Instant::now() + Duration::from_secs(90);
    while tokens.len() < 4 {
        assert!(Instant::now() < deadline, "four tokens within 90 s");
        let t = rig.token("c1");
        if tokens.last() != Some(&t) {
            tokens.push(t);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in &tokens {
        let c = claims(t);
        let lifetime = c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap();
        assert_eq!(lifetime, 12, "each token has the granted lifetime");
    }
    // Refreshed on the granted lifetime, so the file never held a dead
    // token, while the first one is dead by now (leeway 0).
    assert!(!rig.sim.accepts("c1", &first).await, "old tokens expire");
    assert!(rig.sim.accepts("c1", &rig.token("c1")).await);
    let log = rig.daemon.log();
    assert_eq!(
        log.matches("granted a shorter lifetime than requested")
            .count(),
        1,
        "logged once: {log}"
    );
    assert!(log.contains("requested expiration of 3600 seconds shortened to 12 seconds"));
    let failures = rig
        .metric("mcprom_token_refreshes_total{cluster=\"c1\",result=\"failure\"}")
        .await;
    assert_eq!(failures, Some(0.0));
    assert_eq!(rig.status("c1")["state"], "fresh");
    eprintln!(
        "figures: shortened lifetime: {} tokens of 12 s",
        tokens.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_service_account_kills_its_tokens_is_reported_plainly_and_recovers_when_recreated()
 {
    let (rig, old) = rig_with_a_token(SIM_ARGS, &short_tokens()).await;
    rig.sim
        .control(
            reqwest::Method::DELETE,
            "/clusters/c1/serviceaccounts/kube-system/prometheus-test",
            None,
        )
        .await;
    // On a real API server too, a ServiceAccount's tokens die with it.
    assert!(
        !rig.sim.accepts("c1", &old).await,
        "the token in the file stopped working when its ServiceAccount was deleted"
    );
    let seen = Seen {
        reason: "not_found",
        says: &["every token issued for it stopped working too"],
    };
    fails_visibly_and_boundedly(&rig, &old, &seen).await;
    assert!(
        rig.status("c1")["last_error"]
            .as_str()
            .unwrap()
            .contains("recreate it and its RBAC")
    );
    rig.sim
        .control(
            reqwest::Method::POST,
            "/clusters/c1/serviceaccounts/kube-system/prometheus-test",
            None,
        )
        .await;
    rig.recovers("c1", &old, RECOVERY).await;
}
