//! End to end with Debian's Prometheus: it scrapes each simulated
//! cluster's node proxy (`static_configs`, the simulator's CA) with
//! mcprom's token files as `bearer_token_file` / `authorization.credentials_file`,
//! while mcprom rotates 12-second tokens (leeway 0: a token past its exp is
//! refused) and asks Prometheus to reload after each batch.
//!
//! Asserted from Prometheus's own API: `up` was 1 at every sample, and the
//! reloads Prometheus recorded match mcprom's reload counter and the
//! batches of rotations. Fails if `/usr/bin/prometheus` is missing.

mod common;
#[path = "common/reliability.rs"]
mod reliability;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use reliability::*;

const CLUSTERS: [&str; 3] = ["c1", "c2", "c3"];
const DELAY: Duration = Duration::from_secs(2);
const ROTATIONS: usize = 5;

fn prometheus_yml(rig_work: &std::path::Path, sim: &Sim, prom_port: u16) -> String {
    let mut text = String::from(
        "global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\n  evaluation_interval: 2s\nscrape_configs:\n",
    );
    text.push_str(&format!(
        "  - job_name: prometheus\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    static_configs:\n      - targets: ['127.0.0.1:{prom_port}']\n"
    ));
    for (i, name) in CLUSTERS.iter().enumerate() {
        let token = rig_work.join(format!("tokens/{name}.token"));
        // Both ways of naming the token file.
        let auth = if i == 0 {
            format!("    bearer_token_file: {}\n", token.display())
        } else {
            format!(
                "    authorization:\n      type: Bearer\n      credentials_file: {}\n",
                token.display()
            )
        };
        text.push_str(&format!(
            "  - job_name: {name}\n    scheme: https\n    metrics_path: {CADVISOR_PATH}\n{auth}    tls_config:\n      ca_file: {}\n    static_configs:\n      - targets: ['{}']\n",
            sim.ca_file(name).display(),
            sim.api_server(name).trim_start_matches("https://"),
        ));
    }
    text
}

/// Raw samples of `up` per job over the last `range` at `at` (Unix s).
async fn up_samples(
    prom: &Prometheus,
    range: Duration,
    at: f64,
) -> BTreeMap<String, Vec<(f64, String)>> {
    let data = prom
        .query(&format!("up[{}s] @ {at:.3}", range.as_secs()))
        .await;
    data["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|series| {
            let job = series["metric"]["job"].as_str().unwrap().to_owned();
            let values = series["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| (v[0].as_f64().unwrap(), v[1].as_str().unwrap().to_owned()))
                .collect();
            (job, values)
        })
        .collect()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Times (seconds since the first line) of log lines containing `what`.
fn log_times(log: &str, what: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let stamp = l.split_whitespace().next()?;
            let t: jiff::Timestamp = stamp.parse().ok()?;
            Some(t.as_millisecond() as f64 / 1000.0)
        })
        .collect()
}

/// Batches of rotations: a new batch starts after a quiet gap longer
/// than `gap`.
fn batches(times: &[f64], gap: f64) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    1 + sorted.windows(2).filter(|w| w[1] - w[0] > gap).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_cluster_without_a_failure_through_rotations_and_reloads() {
    let sim = Sim::start(&[
        "--clusters",
        "3",
        "--min-expiration",
        "1s",
        "--expiry-leeway",
        "0s",
    ]);
    let work = tempfile::tempdir().unwrap();
    let prom_dir = work.path().join("prometheus");
    let prom_port = free_port();
    // Prometheus first (its scrapes fail until the token files exist), so
    // that mcprom's first reload finds it ready.
    let prom = Prometheus::start_on(
        &prom_dir,
        &prometheus_yml(work.path(), &sim, prom_port),
        true,
        prom_port,
    );
    prom.ready().await;
    let conf = Conf {
        expiration: "12s",
        refresh_at: 0.5,
        reload_url: Some(prom.url()),
        delay: "2s",
        ..Conf::default()
    };
    let rig = Rig::start_with(sim, work, &conf, None, |_| {});
    rig.first_tokens(&CLUSTERS).await;
    let first: Vec<String> = CLUSTERS.iter().map(|c| rig.token(c)).collect();

    // From the first successful scrape of every cluster on, count samples.
    let began = eventually(
        Duration::from_secs(60),
        "up == 1 for every cluster",
        || async {
            let data = prom.query("up").await;
            let ok = CLUSTERS.iter().all(|c| {
                data["result"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["metric"]["job"] == *c && s["value"][1] == "1")
            });
            ok.then(unix_now)
        },
    )
    .await;
    let started = Instant::now();

    // Watch the files until every cluster has rotated ROTATIONS times more.
    let mut seen: Vec<Vec<String>> = CLUSTERS.iter().map(|c| vec![rig.token(c)]).collect();
    while seen.iter().any(|s| s.len() <= ROTATIONS) {
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "rotations: {:?}",
            seen.iter().map(Vec::len).collect::<Vec<_>>()
        );
        for (i, c) in CLUSTERS.iter().enumerate() {
            let t = rig.token(c);
            if seen[i].last() != Some(&t) {
                seen[i].push(t);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the last batch's reload and a few more scrapes happen.
    tokio::time::sleep(DELAY * 3).await;
    let ended = unix_now();
    let span = Duration::from_secs_f64(ended - began).max(Duration::from_secs(1));

    // 1. up was 1 at every sample of every cluster.
    let samples = up_samples(&prom, span, ended).await;
    let mut counts = BTreeMap::new();
    for c in CLUSTERS {
        let values = samples
            .get(c)
            .unwrap_or_else(|| panic!("no samples for {c}"));
        let failed: Vec<&(f64, String)> = values.iter().filter(|(_, v)| v != "1").collect();
        if !failed.is_empty() {
            let targets = prom.query("up == 0").await;
            panic!(
                "{c}: {} of {} scrapes failed at {failed:?}; {targets}",
                failed.len(),
                values.len()
            );
        }
        // One sample per 2 s, allowing for a loaded machine.
        assert!(
            values.len() as f64 >= span.as_secs_f64() / 2.0 * 0.6,
            "{c}: only {} samples in {span:?}",
            values.len()
        );
        counts.insert(c, values.len());
    }
    let stats = rig.sim.stats().await;
    for c in CLUSTERS {
        let requests = &stats["clusters"][c]["requests"];
        assert!(
            requests[format!("GET {CADVISOR_PATH} 401")].is_null(),
            "{c}: the API server refused a scrape: {requests}"
        );
    }

    // 2. Old tokens expired and are refused (leeway 0).
    for (i, c) in CLUSTERS.iter().enumerate() {
        assert!(
            !rig.sim.accepts(c, &first[i]).await,
            "{c}: the first token is refused after its exp"
        );
    }

    // 3. Reloads: Prometheus saw as many as mcprom made, one per batch.
    // Read both sides once no reload has happened for 2.5 s (reloads are
    // at least `delay` apart), so Prometheus has scraped its latest value.
    let made = eventually(
        Duration::from_secs(60),
        "a quiet moment between reloads",
        || async {
            let series = "mcprom_prometheus_reloads_total{result=\"success\"}";
            let before = rig.metric(series).await?;
            tokio::time::sleep(Duration::from_millis(2500)).await;
            (rig.metric(series).await? == before).then_some(before)
        },
    )
    .await;
    let failed = rig
        .metric("mcprom_prometheus_reloads_total{result=\"failure\"}")
        .await
        .unwrap();
    let last_reload: f64 = prom
        .query("prometheus_config_last_reload_success_timestamp_seconds")
        .await["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let log = rig.daemon.log();
    // The reload times Prometheus recorded (its self-scrape every second
    // sees each: reloads are at least `delay` apart) against mcprom's.
    let recorded = prom
        .query(&format!(
            "prometheus_config_last_reload_success_timestamp_seconds[{}s]",
            (unix_now() - began + 120.0) as u64
        ))
        .await;
    let mut values: Vec<f64> = recorded["result"][0]["values"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|s| s[1].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    values.dedup();
    let reloaded = log_times(&log, "prometheus reloaded");
    let mcprom_started = log_times(&log, "mcprom started")
        .first()
        .copied()
        .unwrap_or(0.0);
    // Prometheus's own start-up load came before mcprom started.
    let by_mcprom: Vec<f64> = values
        .into_iter()
        .filter(|v| *v >= mcprom_started - 1.0)
        .collect();
    let matched = reloaded
        .iter()
        .filter(|t| by_mcprom.iter().any(|v| (*v - **t).abs() < 1.0))
        .count();
    eprintln!(
        "figures: reloads Prometheus recorded {:?}; mcprom logged {:?}",
        by_mcprom
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>(),
        reloaded
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
    );
    let seen_by_prometheus = by_mcprom.len() as f64;
    let rotations = log_times(&log, "token refreshed");
    let (tight, loose) = (
        batches(&rotations, DELAY.as_secs_f64()),
        batches(&rotations, 2.0 * DELAY.as_secs_f64() + 1.0),
    );
    let rotated: Vec<usize> = seen.iter().map(|s| s.len() - 1).collect();
    eprintln!(
        "figures: e2e: {span:.0?} of scraping, samples per cluster {counts:?}, all up == 1; rotations per cluster {rotated:?} ({} in all); batches {loose}..={tight}; reloads by mcprom {made} (failed {failed}), recorded by Prometheus {seen_by_prometheus}, {matched} of them within 1 s of one mcprom logged",
        rotations.len()
    );
    assert_eq!(failed, 0.0, "no reload failed");
    assert!(
        last_reload >= began - 1.0,
        "prometheus_config_last_reload_success_timestamp_seconds advanced"
    );
    assert!(
        (seen_by_prometheus - made).abs() <= 1.0 && matched as f64 >= made - 1.0,
        "Prometheus recorded {seen_by_prometheus} reloads ({matched} matching mcprom's log), mcprom made {made}"
    );
    assert!(
        made >= loose as f64 - 1.0 && made <= tight as f64 + 1.0,
        "one reload per batch: {made} reloads for {loose}..={tight} batches of {} rotations",
        rotations.len()
    );
    assert!(
        made < rotations.len() as f64,
        "rotations were coalesced: {made} reloads for {} rotations",
        rotations.len()
    );
}
