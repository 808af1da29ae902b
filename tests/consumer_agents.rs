//! The "second agent" recipe with real agents: a vmagent (v1.151.0, built
//! by `testbed/build` from github.com/VictoriaMetrics/VictoriaMetrics) and
//! a Prometheus 3 (built by `testbed/build`) as two `[[consumer]] url`s,
//! each scraping every simulated cluster's node proxy with mcprom's token
//! files (`authorization.credentials_file`), while mcprom rotates 12-second
//! tokens (leeway 0: a token past its exp is refused).
//!
//! Asserted from the agents' own metrics and APIs: each took mcprom's
//! `POST /-/reload` (vmagent: `vmagent_http_requests_total{path="/-/reload"}`;
//! Prometheus: `prometheus_http_requests_total{handler="/-/reload",code="200"}`),
//! and each scrapes every cluster successfully after tokens rotated. Fails
//! when `testbed/build` cannot provide the agents.

mod common;
#[path = "common/realworld.rs"]
mod realworld;
#[path = "common/reliability.rs"]
mod reliability;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use reliability::{CADVISOR_PATH, Rig, free_port};
use serde_json::Value;

const CLUSTERS: [&str; 2] = ["c1", "c2"];

/// The vmagent `testbed/build` provides.
fn vmagent_binary() -> PathBuf {
    let out = Command::new(format!("{}/testbed/build", realworld::REPO))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .expect("run testbed/build");
    assert!(
        out.status.success(),
        "testbed/build failed: vmagent is needed"
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("testbed/build's JSON line");
    let path = PathBuf::from(v["vmagent"].as_str().expect("testbed/build names vmagent"));
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// Scrape jobs reading mcprom's token files, in the syntax both agents take.
fn scrape_yml(rig: &Rig) -> String {
    let mut text = String::from("scrape_configs:\n");
    for name in CLUSTERS {
        text.push_str(&format!(
            "  - job_name: {name}\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    scheme: https\n    metrics_path: {CADVISOR_PATH}\n    authorization:\n      type: Bearer\n      credentials_file: {}\n    tls_config:\n      ca_file: {}\n    static_configs:\n      - targets: ['{}']\n",
            rig.token_path(name).display(),
            rig.sim.ca_file(name).display(),
            rig.sim.api_server(name).trim_start_matches("https://"),
        ));
    }
    text
}

struct Agent {
    child: Child,
    url: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_vmagent(dir: &Path, scrape: &str, port: u16) -> Agent {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("scrape.yml"), scrape).unwrap();
    let child = Command::new(vmagent_binary())
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg(format!(
            "-promscrape.config={}",
            dir.join("scrape.yml").display()
        ))
        // Nothing listens there: samples queue on disk; the test reads
        // vmagent's own API, not a remote store.
        .arg(format!(
            "-remoteWrite.url=http://127.0.0.1:{}/api/v1/write",
            free_port()
        ))
        .arg(format!(
            "-remoteWrite.tmpDataPath={}",
            dir.join("data").display()
        ))
        .arg("-loggerLevel=ERROR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vmagent");
    Agent {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

fn start_prometheus3(dir: &Path, scrape: &str, port: u16) -> Agent {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("prometheus.yml"), scrape).unwrap();
    let child = Command::new(realworld::tool("prometheus"))
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-lifecycle")
        .arg("--log.level=error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus 3");
    Agent {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn get(url: &str) -> Option<String> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    client.get(url).send().await.ok()?.text().await.ok()
}

/// Every target of `/api/v1/targets` by job: (health, last error, last scrape).
async fn targets(agent: &Agent) -> Vec<(String, String, String, String)> {
    let Some(body) = get(&format!("{}/api/v1/targets", agent.url)).await else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
            (
                t["labels"]["job"].as_str().unwrap_or_default().to_owned(),
                s("health"),
                s("lastError"),
                s("lastScrape"),
            )
        })
        .collect()
}

/// Wait until every job of `agent` has a successful scrape that started
/// after `after` (RFC 3339).
async fn all_up_after(agent: &Agent, what: &str, after: &str) {
    let after: jiff::Timestamp = after.parse().unwrap();
    eventually(Duration::from_secs(60), what, || async {
        let t = targets(agent).await;
        let ok = t.len() == CLUSTERS.len()
            && t.iter().all(|(_, health, error, last)| {
                health == "up"
                    && error.is_empty()
                    && last.parse::<jiff::Timestamp>().is_ok_and(|l| l > after)
            });
        ok.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmagent_and_prometheus_3_are_reloaded_as_two_url_consumers_and_scrape_with_the_tokens() {
    let sim = Sim::start(&[
        "--clusters",
        "2",
        "--min-expiration",
        "1s",
        "--expiry-leeway",
        "0s",
    ]);
    let work = tempfile::tempdir().unwrap();
    let vm_dir = work.path().join("vmagent");
    let prom_dir = work.path().join("prometheus3");
    // The agents' ports are chosen before mcprom starts (its config names
    // them); the agents start once the first tokens are there. mcprom waits
    // for each one's /-/ready before its first reload.
    let conf = Conf {
        expiration: "12s",
        refresh_at: 0.5,
        ..Conf::default()
    };
    let (vm_port, prom_port) = (free_port(), free_port());
    let consumers = format!(
        "\n[[consumer]]\nname = \"vmagent\"\nurl = \"http://127.0.0.1:{vm_port}\"\ndelay = \"1s\"\n\n[[consumer]]\nname = \"prometheus3\"\nurl = \"http://127.0.0.1:{prom_port}\"\ndelay = \"1s\"\n"
    );
    let rig = Rig::start_with(sim, work, &conf, None, |text| text.push_str(&consumers));
    rig.first_tokens(&CLUSTERS).await;
    let first_tokens: Vec<String> = CLUSTERS.iter().map(|c| rig.token(c)).collect();
    let scrape = scrape_yml(&rig);
    let vmagent = start_vmagent(&vm_dir, &scrape, vm_port);
    let prometheus = start_prometheus3(&prom_dir, &scrape, prom_port);
    // Both agents scrape every cluster with the token files.
    let start = jiff::Timestamp::now().to_string();
    all_up_after(&vmagent, "vmagent scrapes every cluster", &start).await;
    all_up_after(&prometheus, "Prometheus 3 scrapes every cluster", &start).await;
    // Rotations go on (every ~6 s per cluster); each agent takes reloads.
    let reloads = |agent: &Agent, series: &'static str| {
        let url = format!("{}/metrics", agent.url);
        async move { get(&url).await.and_then(|m| sample(&m, series)) }
    };
    const VM_RELOADS: &str = "vmagent_http_requests_total{path=\"/-/reload\"}";
    const PROM_RELOADS: &str = "prometheus_http_requests_total{code=\"200\",handler=\"/-/reload\"}";
    eventually(
        Duration::from_secs(90),
        "two reloads of each agent",
        || async {
            let vm = reloads(&vmagent, VM_RELOADS).await.unwrap_or(0.0);
            let prom = reloads(&prometheus, PROM_RELOADS).await.unwrap_or(0.0);
            (vm >= 2.0 && prom >= 2.0).then_some(())
        },
    )
    .await;
    // Every token the agents started with has expired (leeway 0: the
    // simulator refuses it now), and both still scrape every cluster
    // successfully: with the tokens mcprom wrote since.
    let first_expiry = first_tokens
        .iter()
        .map(|t| claims(t)["exp"].as_u64().unwrap())
        .max()
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the first tokens expired",
        || async { (now_unix() > first_expiry + 1).then_some(()) },
    )
    .await;
    for (name, first) in CLUSTERS.iter().zip(&first_tokens) {
        assert_ne!(&rig.token(name), first, "{name} rotated");
    }
    let after = jiff::Timestamp::now().to_string();
    all_up_after(&vmagent, "vmagent scrapes after rotations", &after).await;
    all_up_after(&prometheus, "Prometheus 3 scrapes after rotations", &after).await;
    // mcprom counts them per consumer.
    let metrics = rig.metrics().await;
    for name in ["vmagent", "prometheus3"] {
        let ok = sample(
            &metrics,
            &format!("mcprom_consumer_reloads_total{{consumer=\"{name}\",result=\"success\"}}"),
        )
        .unwrap_or(0.0);
        assert!(ok >= 2.0, "{name}: {ok} reloads\n{}", rig.daemon.log());
    }
}
