//! Measures a shared-port sim: start time, memory, TokenRequests/s.
//!
//! `cargo run --release --example sim_load -- --clusters 10000 --seconds 10 --concurrency 32`
//!
//! Start time and VmHWM are measured right after `Sim::start` (sim only);
//! the load generator then runs in the same process, over keep-alive
//! HTTP/1.1 connections, each request to a random cluster with that
//! cluster's issuer token.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mcprom::sim::{Sim, SimConfig};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let clusters = arg("--clusters", 10_000) as usize;
    let seconds = arg("--seconds", 10);
    let concurrency = arg("--concurrency", 32);
    let dir = tempfile::tempdir()?;

    let started = Instant::now();
    let sim = Sim::start(SimConfig {
        dir: dir.path().to_path_buf(),
        clusters,
        shared_port: true,
        ..SimConfig::default()
    })
    .await?;
    let start_time = started.elapsed();
    let hwm_after_start = vm_hwm_kib();
    println!("clusters: {clusters}");
    println!("start time: {:.2} s", start_time.as_secs_f64());
    println!(
        "VmHWM after start: {:.1} MiB",
        hwm_after_start as f64 / 1024.0
    );

    let ready = sim.ready().clone();
    let targets: Arc<Vec<(String, String)>> = Arc::new(
        ready
            .clusters
            .iter()
            .map(|c| {
                let token = sim
                    .cluster(&c.name)
                    .expect("cluster")
                    .issuer_token()
                    .to_string();
                (
                    format!(
                        "{}/api/v1/namespaces/kube-system/serviceaccounts/prometheus-test/token",
                        c.api_server
                    ),
                    token,
                )
            })
            .collect(),
    );
    let pem = std::fs::read(&ready.clusters[0].ca_file)?;
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem)?])
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(concurrency as usize)
        .build()?;
    let body = serde_json::to_vec(&serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    }))?;
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let load_started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (client, targets, body, ok, failed) = (
            client.clone(),
            targets.clone(),
            body.clone(),
            ok.clone(),
            failed.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = (w as usize).wrapping_mul(7919);
            while Instant::now() < deadline {
                i = i.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let (url, token) = &targets[i % targets.len()];
                let resp = client
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 201 => {
                        let _ = r.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let elapsed = load_started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "TokenRequests: {ok} in {elapsed:.1} s = {:.0}/s ({} failed, concurrency {concurrency}, load generator in the same process)",
        ok as f64 / elapsed,
        failed.load(Ordering::Relaxed)
    );
    println!(
        "VmHWM after load (sim + load generator): {:.1} MiB",
        vm_hwm_kib() as f64 / 1024.0
    );
    let stats = sim.stats();
    let issued: u64 = stats.clusters.values().map(|c| c.tokens_issued).sum();
    println!("sim counted tokens issued: {issued}");
    sim.shutdown().await;
    Ok(())
}
