//! Checking the consumer with Debian's real Prometheus (2.42): mcprom reads
//! its loaded configuration and targets, reports a job whose
//! `credentials_file` has a typo by name, and counts the targets of a job
//! that presents a token the API server rejects
//! (`mcprom_prometheus_targets_rejected`, `status --json`). Fails if
//! `/usr/bin/prometheus` is missing.

mod common;
#[path = "common/reliability.rs"]
mod reliability;

use std::time::Duration;

use common::*;
use reliability::*;
use serde_json::Value;

const WITHIN: Duration = Duration::from_secs(120);

/// c1's job reads c1's token file; c2's job has a typo in its path.
fn prometheus_yml(work: &std::path::Path, sim: &Sim) -> String {
    let mut text = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    for (job, cluster, file) in [
        ("c1-cadvisor", "c1", "c1.token"),
        ("c2-cadvisor", "c2", "c2.tokn"),
    ] {
        text.push_str(&format!(
            "  - job_name: {job}\n    scheme: https\n    metrics_path: {CADVISOR_PATH}\n    authorization:\n      type: Bearer\n      credentials_file: {}\n    tls_config:\n      ca_file: {}\n    static_configs:\n      - targets: ['{}']\n",
            work.join("tokens").join(file).display(),
            sim.ca_file(cluster).display(),
            sim.api_server(cluster).trim_start_matches("https://"),
        ));
    }
    text
}

/// Prometheus's own view of a job's target: `(health, lastError)`.
async fn target(prom: &Prometheus, job: &str) -> Option<(String, String)> {
    let v: Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/api/v1/targets?state=active", prom.url()))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let t = v["data"]["activeTargets"]
        .as_array()?
        .iter()
        .find(|t| t["scrapePool"] == job)?
        .clone();
    Some((
        t["health"].as_str()?.to_owned(),
        t["lastError"].as_str().unwrap_or_default().to_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typo_in_a_credentials_file_is_named_and_a_rejected_token_is_counted() {
    let sim = Sim::start(&["--clusters", "2"]);
    let work = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(
        &work.path().join("prometheus"),
        &prometheus_yml(work.path(), &sim),
        true,
    );
    prom.ready().await;
    let conf = Conf {
        reload_url: Some(prom.url()),
        // c1 keeps a token the API server rejects (no review, no re-mint),
        // the way a cluster without SelfSubjectReview would.
        cluster_extra: vec![("c1".into(), "verify = false".into())],
        ..Conf::default()
    };
    let rig = Rig::start_with(sim, work, &conf, None, |_| {});
    rig.first_tokens(&["c1", "c2"]).await;

    // The typo, by job name and path, with the file that was meant.
    let typo = format!(
        "Prometheus job \"c2-cadvisor\" reads {}, in mcprom's token directory, but no cluster writes that file (did you mean {}?)",
        rig.work.path().join("tokens/c2.tokn").display(),
        rig.token_path("c2").display(),
    );
    eventually(WITHIN, "the typo reported", || async {
        rig.daemon.log().contains(&typo).then_some(())
    })
    .await;
    assert!(
        rig.daemon
            .log()
            .contains("no Prometheus job reads the token file of cluster \"c2\""),
        "{}",
        rig.daemon.log()
    );
    assert_eq!(rig.daemon.count(&typo), 1, "reported once");
    let c1 = rig.status("c1");
    assert_eq!(
        c1["prometheus_jobs"],
        serde_json::json!(["c1-cadvisor"]),
        "{c1}"
    );
    assert_eq!(rig.status("c2")["prometheus_jobs"], serde_json::json!([]));
    assert_eq!(
        rig.metric("mcprom_prometheus_jobs{cluster=\"c2\"}").await,
        Some(0.0)
    );

    // c1's signing key rotates: Prometheus now presents a rejected token.
    eventually(WITHIN, "c1 scraped with the token", || async {
        (target(&prom, "c1-cadvisor").await?.0 == "up").then_some(())
    })
    .await;
    rig.sim
        .control(
            reqwest::Method::POST,
            "/clusters/c1/signing-key/rotate",
            None,
        )
        .await;
    let (_, error) = eventually(WITHIN, "Prometheus sees 401 for c1", || async {
        let t = target(&prom, "c1-cadvisor").await?;
        (t.0 == "down" && t.1.contains("401")).then_some(t)
    })
    .await;
    eprintln!("figures: Prometheus's lastError for c1: {error}");
    // A reload (after c2's rotation) makes mcprom read Prometheus again.
    let out = rig.rotate("c2").await;
    assert!(out.status.success(), "{out:?}");
    eventually(WITHIN, "mcprom counts c1's rejected target", || async {
        (rig.metric("mcprom_prometheus_targets_rejected{cluster=\"c1\"}")
            .await
            == Some(1.0))
        .then_some(())
    })
    .await;
    assert_eq!(rig.status("c1")["prometheus_targets_rejected"], 1);
    assert_eq!(
        rig.metric("mcprom_prometheus_targets_rejected{cluster=\"c2\"}")
            .await,
        Some(0.0),
        "the typo'd job fails, but not with 401/403, and reads no managed file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_seen_by_prometheus_makes_mcprom_review_and_re_mint_at_once() {
    let sim = Sim::start(&["--clusters", "2"]);
    let work = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(
        &work.path().join("prometheus"),
        &prometheus_yml(work.path(), &sim),
        true,
    );
    prom.ready().await;
    let conf = Conf {
        reload_url: Some(prom.url()),
        // The periodic review alone would notice only after an hour.
        extra_defaults: "verify_interval = \"1h\"".into(),
        ..Conf::default()
    };
    let rig = Rig::start_with(sim, work, &conf, None, |_| {});
    rig.first_tokens(&["c1", "c2"]).await;
    let old = rig.token("c1");
    eventually(WITHIN, "c1 scraped with the token", || async {
        (target(&prom, "c1-cadvisor").await?.0 == "up").then_some(())
    })
    .await;
    rig.sim
        .control(
            reqwest::Method::POST,
            "/clusters/c1/signing-key/rotate",
            None,
        )
        .await;
    eventually(WITHIN, "Prometheus sees 401 for c1", || async {
        let t = target(&prom, "c1-cadvisor").await?;
        (t.0 == "down" && t.1.contains("401")).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    // A reload (after c2's rotation) makes mcprom read Prometheus again.
    assert!(rig.rotate("c2").await.status.success());
    let new = eventually(WITHIN, "c1 re-minted", || async {
        let t = read_token(&rig.token_path("c1"))?;
        (t != old).then_some(t)
    })
    .await;
    assert!(rig.sim.accepts("c1", &new).await);
    assert!(
        rig.daemon
            .log()
            .contains("no longer accepts the current token"),
        "{}",
        rig.daemon.log()
    );
    eventually(WITHIN, "Prometheus scrapes c1 again", || async {
        (target(&prom, "c1-cadvisor").await?.0 == "up").then_some(())
    })
    .await;
    eprintln!(
        "figures: Prometheus 401 → (reload, consumer read, review) → new token and up again in {:.1?}",
        started.elapsed()
    );
}
