//! Measures a shared-port `mcprom-sim` process: start time, memory,
//! TokenRequests/s and the sim's CPU cost per request.
//!
//! ```text
//! cargo build --release --bins --example sim_load
//! ./target/release/examples/sim_load --clusters 10000 --seconds 10 --concurrency 32
//! ```
//!
//! It runs the release `mcprom-sim` binary next to it as a child process
//! (so memory and CPU are the sim's alone), waits for its ready line, then
//! sends TokenRequests over keep-alive HTTP/1.1 connections, each to a
//! random cluster with that cluster's issuer token. The load generator
//! shares the machine's cores with the sim, so "capacity" (requests per
//! CPU-second of the sim) is the figure that does not depend on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mcprom_sim::Ready;
use tokio::io::AsyncBufReadExt as _;

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

/// `VmHWM` of a process, KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU time of a process, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 / hz
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let clusters = arg("--clusters", 10_000);
    let seconds = arg("--seconds", 10);
    let concurrency = arg("--concurrency", 32);
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let sim_bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("mcprom-sim"))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "mcprom-sim not found next to {}: run `cargo build --release --bins` first",
                exe.display()
            )
        })?;

    let started = Instant::now();
    let mut child = tokio::process::Command::new(&sim_bin)
        .arg("--dir")
        .arg(dir.path())
        .args(["--shared-port", "--clusters", &clusters.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("mcprom-sim exited"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let line = tokio::io::BufReader::new(stdout)
        .lines()
        .next_line()
        .await?
        .ok_or_else(|| anyhow::anyhow!("mcprom-sim exited before its ready line"))?;
    let start_time = started.elapsed();
    let ready: Ready = serde_json::from_str(&line)?;
    println!("clusters: {clusters}");
    println!(
        "start time (spawn to ready line): {:.2} s",
        start_time.as_secs_f64()
    );
    println!(
        "sim VmHWM after start: {:.1} MiB",
        vm_hwm_kib(pid) as f64 / 1024.0
    );

    let targets: Arc<Vec<(String, String)>> = Arc::new(
        ready
            .clusters
            .iter()
            .map(|c| {
                let token = std::fs::read_to_string(c.kubeconfig.with_file_name("issuer.token"))?;
                Ok((
                    format!(
                        "{}/api/v1/namespaces/kube-system/serviceaccounts/prometheus-test/token",
                        c.api_server
                    ),
                    token,
                ))
            })
            .collect::<anyhow::Result<_>>()?,
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
    let cpu_before = cpu_seconds(pid);
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
                let (url, token) = &targets[(i >> 8) % targets.len()];
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
    let sim_cpu = cpu_seconds(pid) - cpu_before;
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "TokenRequests: {ok} in {elapsed:.1} s = {:.0}/s ({} failed, concurrency {concurrency})",
        ok as f64 / elapsed,
        failed.load(Ordering::Relaxed)
    );
    println!(
        "sim CPU: {sim_cpu:.2} s = {:.0} TokenRequests per sim CPU-second",
        ok as f64 / sim_cpu.max(0.001)
    );
    println!(
        "sim VmHWM after load: {:.1} MiB",
        vm_hwm_kib(pid) as f64 / 1024.0
    );
    if let Some(control) = &ready.control {
        let stats: serde_json::Value = reqwest::Client::builder()
            .no_proxy()
            .build()?
            .get(format!("{control}/stats"))
            .send()
            .await?
            .json()
            .await?;
        let issued: u64 = stats["clusters"]
            .as_object()
            .map(|m| m.values().filter_map(|c| c["tokens_issued"].as_u64()).sum())
            .unwrap_or(0);
        println!("sim counted tokens issued: {issued}");
    }
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    println!("sim exit after SIGTERM: {status}");
    Ok(())
}
