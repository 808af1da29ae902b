//! Short-lived tokens: accepted until `exp` (+ leeway), rejected after.
//! Decisions are made against the token's own `exp` and the time measured
//! around each request, so a slow machine only makes the test poll longer.

mod sim_support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sim_support::*;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Issues 2-second tokens until one is observed both accepted inside
/// `[accepted_from, exp + leeway)` and rejected after `exp + leeway`.
async fn check_lifetime(leeway: u64, accepted_after_exp: bool) {
    let (dir, sim) = start(|c| {
        c.min_expiration = Duration::from_secs(1);
        c.expiry_leeway = Duration::from_secs(leeway);
    })
    .await;
    let c1 = &sim.ready().clusters[0];
    let http = client(&c1.ca_file);
    let issuer = issuer_token(&dir.path().canonicalize().unwrap(), "c1");
    for _attempt in 0..5 {
        let token = issue(&http, &c1.api_server, &issuer, 2).await;
        let exp = claims(&token)["exp"].as_i64().unwrap() as f64;
        let end = exp + leeway as f64;
        // The window in which an answer must be 200: before exp, or (with
        // leeway) after exp but before exp + leeway.
        let (window_start, window_end) = if accepted_after_exp {
            (exp + 0.05, end)
        } else {
            (0.0, exp)
        };
        let mut accepted_in_window = false;
        loop {
            if accepted_after_exp && now() < window_start {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let before = now();
            let status = scrape(&http, &c1.api_server, &token).await;
            let after = now();
            if before >= window_start && after < window_end {
                assert_eq!(
                    status, 200,
                    "token rejected while valid (exp {exp}, leeway {leeway})"
                );
                accepted_in_window = true;
            }
            if before > end + 0.01 {
                assert_eq!(status, 401, "token accepted after exp + leeway");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if accepted_in_window {
            assert!(sim.cluster("c1").unwrap().stats().tokens_rejected.expired >= 1);
            return;
        }
    }
    panic!("never managed to observe the token inside its validity window (machine too slow?)");
}

#[tokio::test]
async fn a_short_token_is_accepted_until_exp_and_rejected_after_without_leeway() {
    check_lifetime(0, false).await;
}

#[tokio::test]
async fn with_leeway_a_token_is_still_accepted_shortly_after_exp() {
    check_lifetime(3, true).await;
}
