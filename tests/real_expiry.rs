//! The long real-world test (about 13 minutes), in its own binary so it
//! runs beside the rest of the suite: real servers refuse lifetimes under
//! 10 minutes, so mcprom asks for `expiration = "10m"` with a low
//! `refresh_at` and the test runs past the first token's `exp` plus the
//! server's 60 s leeway. Prometheus 3 runs `mcprom scrape-config`'s
//! discovery jobs and the `--static` jobs; no scrape and no discovery
//! request fails in all that time, across forced rotations too, and the
//! first token is refused by the server at the end.

mod common;
#[path = "common/realworld.rs"]
mod realworld;

use std::time::{Duration, Instant};

use common::*;
use realworld::*;

#[tokio::test]
async fn every_node_stays_up_past_the_first_tokens_expiry() {
    let world = World::start(2, 1, &[]);
    let work = world.path().join("user");
    let sd_port = free_port();
    let config = world.user_config(
        &work,
        &["c1", "c2"],
        Some(&format!("http://127.0.0.1:{sd_port}")),
        "expiration = \"10m\"\nrefresh_at = 0.1",
        "",
    );
    let mut daemon = Daemon::start(&config, "info");
    let mut first = Vec::new();
    for c in ["c1", "c2"] {
        first.push(new_token(&work, c, None, Duration::from_secs(90)).await);
    }
    let first_exp = first
        .iter()
        .map(|t| claims(t)["exp"].as_u64().unwrap())
        .max()
        .unwrap();
    let iat = claims(&first[0])["iat"].as_u64().unwrap();
    assert!(
        first_exp - iat >= 590,
        "the server granted {} s",
        first_exp - iat
    );

    let prom3 = tool("prometheus");
    let sd = scrape_config(&config, false, "5s");
    let fixed = scrape_config(&config, true, "5s");
    let p_sd = Prom::start_on(&prom3, &work.join("prom3-sd"), &sd, sd_port);
    let p_static = Prom::start(&prom3, &work.join("prom3-static"), &fixed);
    for p in [&p_sd, &p_static] {
        p.ready().await;
        p.all_up(4, Duration::from_secs(180)).await;
    }
    let since = Instant::now();

    // Run past the first token's exp + the server's 60 s leeway (+ 20 s),
    // forcing a rotation every 3 minutes besides mcprom's own refreshes.
    let end = first_exp + 60 + 20;
    let mut next_forced = Instant::now() + Duration::from_secs(180);
    let mut forced = 0;
    while now_unix() < end {
        tokio::time::sleep(Duration::from_secs(15)).await;
        if Instant::now() >= next_forced {
            stdout_of(&mcprom(&config, &["rotate"]), "mcprom rotate");
            forced += 1;
            next_forced += Duration::from_secs(180);
        }
        let window = since.elapsed() + Duration::from_secs(5);
        for p in [&p_sd, &p_static] {
            let down = p.down_in(window).await;
            assert!(down.is_empty(), "targets down: {down:?}\n{}", p.log());
        }
    }
    assert!(forced >= 3, "{forced} forced rotations");

    // The first tokens are dead on the server; the current ones work.
    for (c, t) in ["c1", "c2"].iter().zip(&first) {
        assert_eq!(world.status_for_token(c, t).await, 401, "{c}'s first token");
        let now = token_in(&work, c).unwrap();
        assert_ne!(&now, t);
        assert_eq!(world.status_for_token(c, &now).await, 200);
    }
    for p in [&p_sd, &p_static] {
        p.all_up(4, Duration::from_secs(60)).await;
        let down = p.down_in(since.elapsed()).await;
        assert!(down.is_empty(), "targets down: {down:?}\n{}", p.log());
    }
    // Discovery's list and watch requests: none failed (a 401 would show).
    let codes = p_sd.discovery_requests().await;
    assert!(
        codes.iter().all(|(c, _)| c.starts_with('2')),
        "discovery requests that failed: {codes:?}\n{}",
        p_sd.log()
    );
    let (exit, _) = daemon.terminate();
    assert!(exit.success(), "{}", daemon.log());
}
