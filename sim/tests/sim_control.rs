//! The control endpoint of the real `mcprom-sim` binary, out of process.

mod sim_support;

use std::time::Duration;

use mcprom_sim::SimStats;
use serde_json::{Value, json};
use sim_support::*;

/// A client that opens a fresh connection per request (no pooling), so a
/// reset or a restart never poisons the next request.
fn fresh_client(ca: &std::path::Path, timeout: Duration) -> reqwest::Client {
    init();
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(0)
        .timeout(timeout)
        .build()
        .unwrap()
}

async fn control(method: reqwest::Method, url: String, body: Option<Value>) -> reqwest::Response {
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut r = c.request(method, url);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("control request");
    assert!(
        resp.status().is_success(),
        "control request failed: {}",
        resp.status()
    );
    resp
}

async fn fault(sim: &SimProcess, body: Value) {
    control(
        reqwest::Method::POST,
        format!("{}/clusters/c1/faults", sim.control()),
        Some(body),
    )
    .await;
}

#[tokio::test]
async fn faults_down_up_service_accounts_stats_and_sigterm() {
    let sim = SimProcess::spawn(&[]).await;
    let c1 = sim.ready.clusters[0].clone();
    let api = c1.api_server.clone();
    let http = fresh_client(&c1.ca_file, Duration::from_secs(30));
    let issuer = issuer_token(&sim.path(), "c1");
    let token = issue(&http, &api, &issuer, 3600).await;

    // 503, then normal again.
    fault(&sim, json!({"count": 1, "kind": "status", "code": 503})).await;
    let resp = request_token(&http, &api, &issuer, 3600).await.unwrap();
    assert_eq!(resp.status(), 503);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["reason"].as_str()),
        (Some("Status"), Some("ServiceUnavailable"))
    );
    assert_eq!(
        request_token(&http, &api, &issuer, 3600)
            .await
            .unwrap()
            .status(),
        201
    );

    // 429 with Retry-After.
    fault(
        &sim,
        json!({"count": 1, "kind": "status", "code": 429, "retry_after_seconds": 2}),
    )
    .await;
    let resp = request_token(&http, &api, &issuer, 3600).await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers().get("retry-after").unwrap(), "2");

    // Token-request faults leave other paths alone; scope all hits them.
    fault(&sim, json!({"count": 1, "kind": "status", "code": 500})).await;
    assert_eq!(scrape(&http, &api, &token).await, 200);
    assert_eq!(
        request_token(&http, &api, &issuer, 3600)
            .await
            .unwrap()
            .status(),
        500
    );
    fault(
        &sim,
        json!({"count": 1, "kind": "status", "code": 500, "scope": "all"}),
    )
    .await;
    assert_eq!(scrape(&http, &api, &token).await, 500);
    assert_eq!(scrape(&http, &api, &token).await, 200);

    // Reset: no response at all.
    fault(&sim, json!({"count": 1, "kind": "reset"})).await;
    let err = request_token(&http, &api, &issuer, 3600)
        .await
        .expect_err("reset");
    assert!(!err.is_timeout(), "a reset is not a timeout: {err}");

    // Hang: the client gives up.
    fault(&sim, json!({"count": 1, "kind": "hang"})).await;
    let impatient = fresh_client(&c1.ca_file, Duration::from_secs(1));
    let err = request_token(&impatient, &api, &issuer, 3600)
        .await
        .expect_err("hang");
    assert!(err.is_timeout(), "expected a client timeout, got {err}");

    // Clear.
    fault(&sim, json!({"count": 5, "kind": "status", "code": 503})).await;
    control(
        reqwest::Method::DELETE,
        format!("{}/clusters/c1/faults", sim.control()),
        None,
    )
    .await;
    assert_eq!(
        request_token(&http, &api, &issuer, 3600)
            .await
            .unwrap()
            .status(),
        201
    );

    // Down: connection refused; up: same port again.
    let addr = api.trim_start_matches("https://").to_string();
    control(
        reqwest::Method::POST,
        format!("{}/clusters/c1/down", sim.control()),
        None,
    )
    .await;
    let refused = tokio::net::TcpStream::connect(&addr)
        .await
        .expect_err("down cluster refuses");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    control(
        reqwest::Method::POST,
        format!("{}/clusters/c1/up", sim.control()),
        None,
    )
    .await;
    assert_eq!(scrape(&http, &api, &token).await, 200);

    // Deleting the ServiceAccount invalidates its tokens; recreating gives a new uid.
    let sa = format!(
        "{}/clusters/c1/serviceaccounts/kube-system/prometheus-test",
        sim.control()
    );
    control(reqwest::Method::DELETE, sa.clone(), None).await;
    assert_eq!(scrape(&http, &api, &token).await, 401);
    assert_eq!(
        request_token(&http, &api, &issuer, 3600)
            .await
            .unwrap()
            .status(),
        404
    );
    control(reqwest::Method::POST, sa, None).await;
    let new_token = issue(&http, &api, &issuer, 3600).await;
    assert_eq!(scrape(&http, &api, &new_token).await, 200);
    assert_eq!(
        scrape(&http, &api, &token).await,
        401,
        "old token stays invalid"
    );

    // Counters.
    let stats: SimStats = control(
        reqwest::Method::GET,
        format!("{}/stats", sim.control()),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let s = &stats.clusters["c1"];
    let key = |status: u16| format!("POST {TOKEN_PATH} {status}");
    assert_eq!(s.token_requests, 10);
    assert_eq!(s.tokens_issued, 4);
    assert_eq!(s.requests.get(&key(201)), Some(&4));
    assert_eq!(s.requests.get(&key(503)), Some(&1));
    assert_eq!(s.requests.get(&key(429)), Some(&1));
    assert_eq!(s.requests.get(&key(500)), Some(&1));
    assert_eq!(
        s.requests.get(&key(0)),
        Some(&2),
        "reset and hang count with status 0"
    );
    assert_eq!(s.requests.get(&key(404)), Some(&1));
    assert_eq!(
        s.requests.get(&format!("GET {CADVISOR_PATH} 500")),
        Some(&1)
    );
    assert_eq!(s.tokens_rejected.unknown, 2);
    let exp = claims(&new_token)["exp"].as_i64().unwrap();
    assert_eq!(s.last_exp.get("kube-system/prometheus-test"), Some(&exp));

    // SIGTERM: exit 0.
    let mut sim = sim;
    let pid = nix::unistd::Pid::from_raw(sim.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), sim.child.wait())
        .await
        .expect("mcprom-sim exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn bad_control_requests_are_refused_with_a_reason() {
    let sim = SimProcess::spawn(&["--clusters", "2"]).await;
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = c
        .post(format!("{}/clusters/c1/faults", sim.control()))
        .body(r#"{"count":1,"kind":"explode"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("unknown fault kind"));
    let resp = c
        .post(format!("{}/clusters/c9/down", sim.control()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(sim.ready.clusters.len(), 2);
    assert_ne!(
        sim.ready.clusters[0].api_server,
        sim.ready.clusters[1].api_server
    );
}

#[tokio::test]
async fn a_fixed_port_with_several_clusters_needs_shared_port() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcprom-sim"))
        .args(["--clusters", "2", "--listen", "127.0.0.1:6443", "--dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no ready line on failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shared-port"), "unexpected error: {err}");
}
