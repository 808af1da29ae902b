//! `/metrics` and `/healthz` of the real daemon after rotations, failures
//! and config edits.

mod common;

use std::time::Duration;

use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_rotations_failures_expiry_and_config() {
    let sim = Sim::start(&[
        "--clusters",
        "2",
        "--min-expiration",
        "1s",
        "--expiry-leeway",
        "0s",
    ]);
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = Conf {
        expiration: "12s",
        refresh_at: 0.5,
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    std::fs::write(&config, &text).unwrap();
    let daemon = Daemon::start(&config, "info");
    let base = format!("http://127.0.0.1:{port}");
    let metrics = eventually(Duration::from_secs(20), "two refreshes of c1", || async {
        let (_, body) = reqwest::get(format!("{base}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()
            .map(|b| (0, b))?;
        (sample(
            &body,
            "mcprom_token_refreshes_total{cluster=\"c1\",result=\"success\"}",
        )? >= 2.0)
            .then_some(body)
    })
    .await;
    let token = read_token(&work.path().join("tokens/c1.token")).unwrap();
    let exp = claims(&token)["exp"].as_f64().unwrap();
    let exported = sample(
        &metrics,
        "mcprom_token_expiry_timestamp_seconds{cluster=\"c1\"}",
    )
    .unwrap();
    assert!(
        (exported - exp).abs() <= 12.0,
        "exported {exported}, file {exp}"
    );
    assert!(
        sample(
            &metrics,
            "mcprom_token_issued_timestamp_seconds{cluster=\"c1\"}"
        )
        .is_some()
    );
    assert_eq!(
        sample(&metrics, "mcprom_token_valid{cluster=\"c2\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "mcprom_config_last_reload_successful"),
        Some(1.0)
    );
    assert!(metrics.contains("mcprom_build_info{version=\""));
    // The admin kubeconfig's client certificate has a known notAfter.
    assert!(
        sample(
            &metrics,
            "mcprom_credential_expiry_timestamp_seconds{cluster=\"c1\"}"
        )
        .unwrap()
            > now_unix() as f64
    );
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);

    // Failures: 403s are counted by reason.
    sim.control(
        reqwest::Method::POST,
        "/clusters/c2/faults",
        Some(serde_json::json!({"count": 100, "kind": "status", "code": 403})),
    )
    .await;
    eventually(Duration::from_secs(20), "forbidden counted", || async {
        let (_, body) = get(&format!("{base}/metrics")).await;
        (sample(
            &body,
            "mcprom_token_refresh_errors_total{cluster=\"c2\",reason=\"forbidden\"}",
        )? >= 1.0)
            .then_some(())
    })
    .await;

    // c1's API goes down until its token expires: /healthz turns 503 naming it.
    sim.control(reqwest::Method::POST, "/clusters/c1/down", None)
        .await;
    let body = eventually(Duration::from_secs(30), "healthz 503", || async {
        let (code, body) = get(&format!("{base}/healthz")).await;
        (code == 503 && body.contains("c1")).then_some(body)
    })
    .await;
    assert!(body.contains("c1"), "{body}");
    let (_, m) = get(&format!("{base}/metrics")).await;
    assert_eq!(sample(&m, "mcprom_token_valid{cluster=\"c1\"}"), Some(0.0));
    assert!(
        sample(
            &m,
            "mcprom_token_refresh_errors_total{cluster=\"c1\",reason=\"unreachable\"}"
        )
        .unwrap()
            >= 1.0
    );

    // An invalid edit: config_last_reload_successful 0; a fix that drops c2: 1, and c2's series vanish.
    std::fs::write(&config, text.replacen("refresh_at", "refresh_att", 1)).unwrap();
    eventually(Duration::from_secs(10), "failed reload visible", || async {
        let (_, body) = get(&format!("{base}/metrics")).await;
        (sample(&body, "mcprom_config_last_reload_successful")? == 0.0).then_some(())
    })
    .await;
    let only_c1 = &text[..text.find("[[cluster]]\nname = \"c2\"").unwrap()];
    std::fs::write(&config, only_c1).unwrap();
    let body = eventually(Duration::from_secs(10), "fixed reload visible", || async {
        let (_, body) = get(&format!("{base}/metrics")).await;
        (sample(&body, "mcprom_config_last_reload_successful")? == 1.0).then_some(body)
    })
    .await;
    assert!(
        !body.contains("cluster=\"c2\""),
        "c2's series vanish: {body}"
    );
    assert!(body.contains("cluster=\"c1\""));
    drop(daemon);
}
