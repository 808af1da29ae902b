//! Support for the reliability tests (`tests/reliability_*.rs`,
//! `tests/e2e_prometheus.rs`): a daemon with its metrics and control socket
//! wired up, a switchable stand-in for Prometheus's web endpoint, the sim's
//! fault controls, mounts that undo themselves, and the real Prometheus.
//!
//! Included with `#[path = "common/reliability.rs"] mod reliability;`
//! next to `mod common;`, so other test binaries do not compile it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

/// Debian's Prometheus (CI installs it; tests that need it fail without it).
pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// The node proxy path Prometheus scrapes through the simulated API server.
pub const CADVISOR_PATH: &str = "/api/v1/nodes/node-1/proxy/metrics/cadvisor";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Run the `mcprom` CLI with `--config`.
pub fn mcprom_cli(config: &Path, args: &[&str]) -> Output {
    Command::new(MCPROM)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run mcprom")
}

/// One JSON line to the control socket and its answer (what `mcprom
/// status --json`, `rotate` and `reload` send).
pub async fn control_call(socket: &Path, request: &Value) -> std::io::Result<Value> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{request}\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// A daemon against a sim, with `/metrics` on a free port and the control
/// socket in the work directory.
pub struct Rig {
    pub sim: Sim,
    pub work: tempfile::TempDir,
    pub config: PathBuf,
    pub daemon: Daemon,
    pub metrics_port: u16,
}

impl Rig {
    /// Start a sim with `sim_args`, write a config for it (`only` its
    /// clusters) with `/metrics` enabled, and start the daemon.
    pub fn start(sim_args: &[&str], conf: &Conf, only: Option<&[&str]>) -> Rig {
        let sim = Sim::start(sim_args);
        let work = tempfile::tempdir().unwrap();
        Rig::start_with(sim, work, conf, only, |_| {})
    }

    /// Like [`Rig::start`], with a chance to edit the config text first.
    pub fn start_with(
        sim: Sim,
        work: tempfile::TempDir,
        conf: &Conf,
        only: Option<&[&str]>,
        edit: impl FnOnce(&mut String),
    ) -> Rig {
        let config = write_config(&sim, work.path(), conf, only);
        let metrics_port = free_port();
        let mut text = std::fs::read_to_string(&config).unwrap().replace(
            "listen = \"\"",
            &format!("listen = \"127.0.0.1:{metrics_port}\""),
        );
        edit(&mut text);
        std::fs::write(&config, &text).unwrap();
        let daemon = Daemon::start(&config, "info");
        Rig {
            sim,
            work,
            config,
            daemon,
            metrics_port,
        }
    }

    pub fn token_path(&self, cluster: &str) -> PathBuf {
        self.work.path().join(format!("tokens/{cluster}.token"))
    }

    pub fn socket(&self) -> PathBuf {
        self.work.path().join("control.sock")
    }

    /// The token in `cluster`'s file (panics if it is missing).
    pub fn token(&self, cluster: &str) -> String {
        std::fs::read_to_string(self.token_path(cluster))
            .unwrap_or_else(|e| panic!("{cluster}'s token file: {e}"))
    }

    /// Wait for a first token in each of `clusters`.
    pub async fn first_tokens(&self, clusters: &[&str]) {
        eventually(Duration::from_secs(60), "first tokens", || async {
            clusters
                .iter()
                .all(|c| self.token_path(c).exists())
                .then_some(())
        })
        .await;
    }

    pub async fn metrics(&self) -> String {
        metrics_on(self.metrics_port).await
    }

    pub async fn metric(&self, series: &str) -> Option<f64> {
        sample(&self.metrics().await, series)
    }

    /// `mcprom_token_refresh_errors_total{cluster, reason}`.
    pub async fn refresh_errors(&self, cluster: &str, reason: &str) -> f64 {
        self.metric(&format!(
            "mcprom_token_refresh_errors_total{{cluster=\"{cluster}\",reason=\"{reason}\"}}"
        ))
        .await
        .unwrap_or(0.0)
    }

    /// `cluster`'s entry of `mcprom status --json` (the real CLI).
    pub fn status(&self, cluster: &str) -> Value {
        let out = mcprom_cli(&self.config, &["status", "--json"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "mcprom status --json: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        report["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == cluster)
            .cloned()
            .unwrap_or_else(|| panic!("{cluster} not in {report}"))
    }

    /// `mcprom rotate CLUSTER` (the real CLI), run off the async threads.
    pub async fn rotate(&self, cluster: &str) -> Output {
        let config = self.config.clone();
        let cluster = cluster.to_owned();
        tokio::task::spawn_blocking(move || mcprom_cli(&config, &["rotate", &cluster]))
            .await
            .unwrap()
    }

    pub async fn fault(&self, cluster: &str, fault: Value) {
        self.sim
            .control(
                reqwest::Method::POST,
                &format!("/clusters/{cluster}/faults"),
                Some(fault),
            )
            .await;
    }

    pub async fn clear_faults(&self, cluster: &str) {
        self.sim
            .control(
                reqwest::Method::DELETE,
                &format!("/clusters/{cluster}/faults"),
                None,
            )
            .await;
    }

    /// TokenRequests `cluster` has received so far.
    pub async fn token_requests(&self, cluster: &str) -> u64 {
        self.sim.token_requests(cluster).await
    }

    /// Poll every 100 ms for `window`, asserting each time that `cluster`'s
    /// file still holds exactly `token`.
    pub async fn token_stays(&self, cluster: &str, token: &str, window: Duration) {
        let until = Instant::now() + window;
        while Instant::now() < until {
            let now = std::fs::read_to_string(self.token_path(cluster))
                .expect("the token file is never missing");
            assert_eq!(now, token, "the old token stays in place during the fault");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until `cluster`'s file holds a token other than `old` that the
    /// simulator accepts, and its status is fresh with no error.
    pub async fn recovers(&self, cluster: &str, old: &str, within: Duration) -> String {
        let token = eventually(within, "automatic recovery (a new token)", || async {
            let t = read_token(&self.token_path(cluster))?;
            (t != old).then_some(t)
        })
        .await;
        assert!(
            self.sim.accepts(cluster, &token).await,
            "the new token is accepted"
        );
        eventually(Duration::from_secs(10), "status fresh again", || async {
            let s = self.status(cluster);
            (s["state"] == "fresh" && s["last_error"].is_null()).then_some(())
        })
        .await;
        token
    }
}

/// Requests per minute, for the report.
pub fn per_minute(requests: u64, window: Duration) -> f64 {
    requests as f64 * 60.0 / window.as_secs_f64()
}

/// A stand-in for Prometheus's web endpoint whose answer to `POST
/// /-/reload` (status, body, delay) can be switched while it runs; it
/// records when each reload request arrived.
pub struct PromStub {
    pub url: String,
    pub addr: SocketAddr,
    pub status: Arc<AtomicU16>,
    pub delay_ms: Arc<AtomicU64>,
    pub body: Arc<Mutex<String>>,
    pub arrivals: Arc<Mutex<Vec<Instant>>>,
    pub ok: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl PromStub {
    pub async fn start(status: u16, delay: Duration) -> PromStub {
        PromStub::start_on("127.0.0.1:0".parse().unwrap(), status, delay).await
    }

    pub async fn start_on(addr: SocketAddr, status: u16, delay: Duration) -> PromStub {
        use http_body_util::Full;
        use hyper::body::Bytes;
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let delay_ms = Arc::new(AtomicU64::new(delay.as_millis() as u64));
        let body = Arc::new(Mutex::new(String::new()));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let ok = Arc::new(AtomicUsize::new(0));
        let (s, d, b, a, k) = (
            status.clone(),
            delay_ms.clone(),
            body.clone(),
            arrivals.clone(),
            ok.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (s, d, b, a, k) = (s.clone(), d.clone(), b.clone(), a.clone(), k.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let (s, d, b, a, k) =
                            (s.clone(), d.clone(), b.clone(), a.clone(), k.clone());
                        async move {
                            let (code, text) = match (req.method().as_str(), req.uri().path()) {
                                ("POST", "/-/reload") => {
                                    a.lock().unwrap().push(Instant::now());
                                    let delay = Duration::from_millis(d.load(Ordering::SeqCst));
                                    tokio::time::sleep(delay).await;
                                    let code = s.load(Ordering::SeqCst);
                                    if (200..300).contains(&code) {
                                        k.fetch_add(1, Ordering::SeqCst);
                                    }
                                    (code, b.lock().unwrap().clone())
                                }
                                ("GET", "/-/ready") => {
                                    (200, "Prometheus Server is Ready.\n".into())
                                }
                                _ => (404, "404 page not found\n".into()),
                            };
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(text)));
                            *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        PromStub {
            url: format!("http://{addr}"),
            addr,
            status,
            delay_ms,
            body,
            arrivals,
            ok,
            task,
        }
    }

    pub fn set(&self, status: u16, body: &str) {
        *self.body.lock().unwrap() = body.to_owned();
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// `POST /-/reload` requests received so far.
    pub fn attempts(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    /// Reloads answered with success.
    pub fn successes(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }
}

impl Drop for PromStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A mount that is undone when dropped (tests run as root in CI).
pub struct Mount {
    pub target: PathBuf,
}

pub fn require_root(what: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{what} needs root (mount); CI runs as root: run this test as root"
    );
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Mount {
    /// A tmpfs of `size` (e.g. "64k") on `target`.
    pub fn tmpfs(target: &Path, size: &str) -> Mount {
        require_root("mounting a small tmpfs");
        std::fs::create_dir_all(target).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
                target.to_str().unwrap(),
            ],
        );
        Mount {
            target: target.to_owned(),
        }
    }

    /// `target` bind-mounted onto itself read-only: even root cannot create
    /// files in it (EROFS), which `chmod 0555` would not achieve for root.
    pub fn read_only(target: &Path) -> Mount {
        require_root("a read-only bind mount");
        let t = target.to_str().unwrap();
        run("mount", &["--bind", t, t]);
        let mount = Mount {
            target: target.to_owned(),
        };
        run("mount", &["-o", "remount,bind,ro", t, t]);
        mount
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.target).status();
    }
}

/// A client for the simulated API server of `cluster` that trusts its CA.
pub fn api_client(sim: &Sim, cluster: &str) -> reqwest::Client {
    init_crypto();
    let pem = std::fs::read(sim.ca_file(cluster)).unwrap();
    reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The status the node proxy (what Prometheus scrapes) answers to `token`.
pub async fn scrape_status(client: &reqwest::Client, api_server: &str, token: &str) -> u16 {
    client
        .get(format!("{api_server}{CADVISOR_PATH}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A token for `kube-system/prometheus-test` issued with the cluster's
/// static issuer credential.
pub async fn issue_token(sim: &Sim, cluster: &str, seconds: u64) -> String {
    let client = api_client(sim, cluster);
    let issuer = std::fs::read_to_string(sim.path().join(cluster).join("issuer.token")).unwrap();
    let resp = client
        .post(format!(
            "{}/api/v1/namespaces/kube-system/serviceaccounts/prometheus-test/token",
            sim.api_server(cluster)
        ))
        .bearer_auth(issuer.trim())
        .json(&json!({"spec": {"expirationSeconds": seconds}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "TokenRequest for a credential");
    let v: Value = resp.json().await.unwrap();
    v["status"]["token"].as_str().unwrap().to_owned()
}

/// A real Prometheus on a free port, killed on drop.
pub struct Prometheus {
    pub child: std::process::Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Prometheus {
    /// Start `prometheus` with `config` (YAML text) in `dir` on a free
    /// port; `lifecycle` adds `--web.enable-lifecycle`. Fails the test if
    /// it is not installed.
    pub fn start(dir: &Path, config: &str, lifecycle: bool) -> Prometheus {
        Prometheus::start_on(dir, config, lifecycle, free_port())
    }

    /// Like [`Prometheus::start`] on a given port (a restart, or a config
    /// that names its own address).
    pub fn start_on(dir: &Path, config: &str, lifecycle: bool, port: u16) -> Prometheus {
        init_crypto();
        assert!(
            Path::new(PROMETHEUS).is_file(),
            "{PROMETHEUS} is missing: install Debian's prometheus package (apt-get install prometheus)"
        );
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let mut cmd = Command::new(PROMETHEUS);
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if lifecycle {
            cmd.arg("--web.enable-lifecycle");
        }
        let child = cmd.spawn().expect("start prometheus");
        Prometheus {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn ready(&self) {
        let url = format!("{}/-/ready", self.url());
        eventually(Duration::from_secs(90), "prometheus ready", || async {
            let r = reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .get(&url)
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }

    /// `GET /api/v1/query?query=...` → `data`.
    pub async fn query(&self, query: &str) -> Value {
        let v: Value = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!(
                "{}/api/v1/query?query={}",
                self.url(),
                url::form_urlencoded::byte_serialize(query.as_bytes()).collect::<String>()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "success", "{query}: {v}");
        v["data"].clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
