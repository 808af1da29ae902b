//! `mcprom demo`: the real daemon against two simulated clusters on
//! loopback, reloading a real `prometheus` when one is on `PATH` (or a
//! built-in receiver that counts reloads), with 20-second tokens so that
//! rotations are visible within a minute.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::state::State;
use mcprom_sim::{Sim, SimConfig};

const CLUSTERS: usize = 2;
const NODES: usize = 2;
const LIFETIME: &str = "20s";

/// Where reloads go during the demo.
enum Target {
    Prometheus {
        child: tokio::process::Child,
        url: String,
    },
    Receiver {
        url: String,
        reloads: Arc<AtomicU64>,
        stop: CancellationToken,
    },
}

impl Target {
    fn url(&self) -> &str {
        match self {
            Target::Prometheus { url, .. } | Target::Receiver { url, .. } => url,
        }
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A scrape job per cluster and node through the API server's node proxy,
/// exactly like the manual procedure, but with the managed token file and
/// the cluster's CA instead of `insecure_skip_verify`.
fn prometheus_yml(sim: &Sim, token_dir: &Path) -> String {
    let mut yml =
        String::from("global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\nscrape_configs:\n");
    for c in &sim.ready().clusters {
        let address = c.api_server.trim_start_matches("https://");
        yml.push_str(&format!(
            "  - job_name: {name}-cadvisor\n    scheme: https\n    authorization:\n      credentials_file: {token}\n    tls_config:\n      ca_file: {ca}\n    static_configs:\n",
            name = c.name,
            token = token_dir.join(format!("{}.token", c.name)).display(),
            ca = c.ca_file.display(),
        ));
        for node in &c.nodes {
            yml.push_str(&format!(
                "      - targets: ['{address}']\n        labels:\n          cluster: {name}\n          node: {node}\n          __metrics_path__: /api/v1/nodes/{node}/proxy/metrics/cadvisor\n",
                name = c.name,
            ));
        }
    }
    yml
}

async fn start_prometheus(
    binary: &Path,
    dir: &Path,
    sim: &Sim,
    token_dir: &Path,
) -> anyhow::Result<Target> {
    let port = free_port()?;
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, prometheus_yml(sim, token_dir))?;
    let log = std::fs::File::create(dir.join("prometheus.log"))?;
    let child = tokio::process::Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-lifecycle")
        .stdout(Stdio::null())
        .stderr(log)
        // Its own process group: Ctrl-C in the terminal reaches the whole
        // foreground group, and Prometheus must outlive it long enough for
        // the summary to ask it for `up`. It is stopped right after that
        // (or when the demo exits early: kill_on_drop).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    Ok(Target::Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    })
}

/// A stand-in for Prometheus's web endpoint: `POST /-/reload` is counted,
/// `GET /-/ready` answers 200.
async fn start_receiver() -> anyhow::Result<Target> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let reloads = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let (counter, stopped) = (reloads.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            let mut socket = tokio::select! {
                () = stopped.cancelled() => return,
                accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut used = 0;
                loop {
                    let Ok(n) = socket.read(&mut buf[used..]).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    used += n;
                    let Some(end) = buf[..used].windows(4).position(|w| w == b"\r\n\r\n") else {
                        if used == buf.len() {
                            return;
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.copy_within(end + 4..used, 0);
                    used -= end + 4;
                    let status = if head.starts_with("POST /-/reload") {
                        counter.fetch_add(1, Ordering::SeqCst);
                        "200 OK"
                    } else if head.starts_with("GET /-/ready") {
                        "200 OK"
                    } else {
                        "404 Not Found"
                    };
                    let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    if socket.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(Target::Receiver { url, reloads, stop })
}

fn daemon_config(sim: &Sim, dir: &Path, target: &Target) -> String {
    let mut text = format!(
        "# mcprom demo: generated, temporary.\n[prometheus]\nurl = \"{url}\"\nreload = \"on_rotation\"\ndelay = \"1s\"\ntimeout = \"10s\"\n\n[defaults]\ntoken_dir = \"{tokens}\"\nexpiration = \"{LIFETIME}\"\nrefresh_at = 0.5\n\n[metrics]\nlisten = \"\"\n\n[control]\nsocket = \"{socket}\"\n\n",
        url = target.url(),
        tokens = dir.join("tokens").display(),
        socket = dir.join("control.sock").display(),
    );
    for c in &sim.ready().clusters {
        text.push_str(&format!(
            "[[cluster]]\nname = \"{}\"\nservice_account = \"{}\"\n[cluster.credentials]\nkubeconfig = \"{}\"\n\n",
            c.name,
            c.service_account,
            c.kubeconfig.display()
        ));
    }
    text
}

/// `up` per target from Prometheus's query API: `(cluster/node, value)`.
async fn query_up(url: &str) -> anyhow::Result<Vec<(String, String)>> {
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!("{url}/api/v1/query?query=up"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .json()
        .await?;
    let mut out = Vec::new();
    for r in body["data"]["result"].as_array().into_iter().flatten() {
        let metric = &r["metric"];
        out.push((
            format!(
                "{}/{}",
                metric["cluster"].as_str().unwrap_or("?"),
                metric["node"].as_str().unwrap_or("?")
            ),
            r["value"][1].as_str().unwrap_or("?").to_owned(),
        ));
    }
    out.sort();
    Ok(out)
}

/// Run the demo until Ctrl-C/SIGTERM or for `duration`.
pub async fn run(duration: Option<Duration>) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("mcprom-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&dir, duration).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &Path, duration: Option<Duration>) -> anyhow::Result<()> {
    let sim = Sim::start(SimConfig {
        dir: dir.join("sim"),
        clusters: CLUSTERS,
        nodes: NODES,
        min_expiration: Duration::from_secs(1),
        expiry_leeway: Duration::ZERO,
        ..SimConfig::default()
    })
    .await
    .context("cannot start the simulated clusters")?;
    let token_dir = dir.join("tokens");
    let mut target = match find_on_path("prometheus") {
        Some(binary) => start_prometheus(&binary, dir, &sim, &token_dir).await?,
        None => start_receiver().await?,
    };
    let config_path = dir.join("mcprom.toml");
    std::fs::write(&config_path, daemon_config(&sim, dir, &target))?;
    let settings = config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;

    println!("mcprom demo");
    for c in &sim.ready().clusters {
        println!(
            "  simulated cluster {} at {} ({} nodes), ServiceAccount {}",
            c.name,
            c.api_server,
            c.nodes.len(),
            c.service_account
        );
    }
    match &target {
        Target::Prometheus { url, .. } => println!(
            "  real Prometheus at {url} scrapes each node through the API server with the token files"
        ),
        Target::Receiver { url, .. } => println!(
            "  no `prometheus` on PATH: a built-in receiver at {url} counts reloads (apt install prometheus for the real thing)"
        ),
    }
    println!(
        "  tokens live {LIFETIME} and are refreshed at about half their lifetime; token files in {}",
        token_dir.display()
    );
    match duration {
        Some(d) => println!("  running for {}...\n", config::format_duration(d)),
        None => println!("  Ctrl-C to stop\n"),
    }

    let state = Arc::new(State::default());
    let stop = async {
        match duration {
            Some(d) => tokio::select! {
                () = tokio::time::sleep(d) => {}
                () = crate::app::termination() => {}
            },
            None => crate::app::termination().await,
        }
    };
    crate::app::run_with_state(settings, state.clone(), stop).await?;

    println!("\nsummary");
    let stats = sim.stats();
    for c in &sim.ready().clusters {
        let issued = stats.clusters.get(&c.name).map_or(0, |s| s.tokens_issued);
        println!("  {}: {issued} tokens issued and written", c.name);
    }
    let reloads = state.reloads();
    println!(
        "  Prometheus reloads: {} ok, {} failed",
        reloads.ok, reloads.failed
    );
    match &mut target {
        Target::Prometheus { child, url } => {
            match query_up(url).await {
                Ok(up) if !up.is_empty() => {
                    for (target, value) in up {
                        println!("  up{{{target}}} = {value}");
                    }
                }
                Ok(_) => println!("  Prometheus has no samples yet (run the demo longer)"),
                Err(e) => println!("  cannot query Prometheus: {e}"),
            }
            let _ = child.kill().await;
        }
        Target::Receiver { reloads, stop, .. } => {
            println!(
                "  reload requests received: {}",
                reloads.load(Ordering::SeqCst)
            );
            stop.cancel();
        }
    }
    sim.shutdown().await;
    Ok(())
}
