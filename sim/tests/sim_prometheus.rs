//! The real Prometheus scrapes the node proxy through the sim.

mod sim_support;

use std::path::Path;
use std::time::Duration;

use sim_support::*;

const PROMETHEUS: &str = "/usr/bin/prometheus";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn job(name: &str, target: &str, token_file: &Path, ca: &Path) -> String {
    format!(
        "  - job_name: {name}\n    scheme: https\n    metrics_path: {CADVISOR_PATH}\n    \
         bearer_token_file: {}\n    tls_config:\n      ca_file: {}\n    static_configs:\n      \
         - targets: ['{target}']\n",
        token_file.display(),
        ca.display()
    )
}

async fn up_values(http: &reqwest::Client, port: u16) -> Option<(String, String)> {
    let v: serde_json::Value = http
        .get(format!("http://127.0.0.1:{port}/api/v1/query?query=up"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let results = v["data"]["result"].as_array()?;
    let value = |job: &str| {
        results
            .iter()
            .find(|r| r["metric"]["job"] == job)
            .and_then(|r| r["value"][1].as_str())
            .map(str::to_string)
    };
    Some((value("good")?, value("bad")?))
}

#[tokio::test]
async fn prometheus_scrapes_cadvisor_through_the_api_server_with_a_bearer_token() {
    assert!(
        Path::new(PROMETHEUS).is_file(),
        "{PROMETHEUS} is missing: install Debian's prometheus package (apt-get install prometheus)"
    );
    let (dir, sim) = start(|_| {}).await;
    let dir = dir.path().canonicalize().unwrap();
    let c1 = &sim.ready().clusters[0];
    let http = client(&c1.ca_file);
    let token = issue(&http, &c1.api_server, &issuer_token(&dir, "c1"), 3600).await;
    std::fs::write(dir.join("good.token"), &token).unwrap();
    std::fs::write(dir.join("bad.token"), "not-a-valid-token").unwrap();
    let target = c1.api_server.trim_start_matches("https://");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{}{}",
        job("good", target, &dir.join("good.token"), &c1.ca_file),
        job("bad", target, &dir.join("bad.token"), &c1.ca_file),
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let mut prom = tokio::process::Command::new(PROMETHEUS)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let (good, bad) = eventually(
        Duration::from_secs(90),
        "prometheus to report up for both jobs",
        || up_values(&plain, port),
    )
    .await;
    let _ = prom.kill().await;
    assert_eq!(good, "1", "scrape with the issued token must succeed");
    assert_eq!(bad, "0", "scrape with a wrong token must fail");
    let stats = sim.cluster("c1").unwrap().stats();
    assert!(
        stats
            .requests
            .get(&format!("GET {CADVISOR_PATH} 200"))
            .is_some_and(|n| *n >= 1)
    );
    assert!(
        stats
            .requests
            .get(&format!("GET {CADVISOR_PATH} 401"))
            .is_some_and(|n| *n >= 1)
    );
}
