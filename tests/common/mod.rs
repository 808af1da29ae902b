//! Shared black-box test support: the real `mcprom-sim` and `mcprom`
//! binaries in their own processes, a loopback reload receiver, and
//! helpers to read token files and ask the simulator about tokens.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const MCPROM: &str = env!("CARGO_BIN_EXE_mcprom");

/// The `mcprom-sim` binary: another package of this workspace (`sim/`), so
/// cargo does not build it for this package's tests (`CARGO_BIN_EXE_*` only
/// names a package's own binaries). It is found next to `mcprom`, in the
/// same target directory and profile, and must be at least as new as the
/// simulator's sources: `cargo build -p mcprom-sim` (ci/test builds the
/// whole workspace first). Panics with that advice otherwise.
pub fn sim_binary() -> &'static Path {
    static SIM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    SIM.get_or_init(|| {
        let sim = Path::new(MCPROM).with_file_name("mcprom-sim");
        let build = "build it with `cargo build -p mcprom-sim` (same profile as these tests)";
        let built = std::fs::metadata(&sim)
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("{}: {e}: {build}", sim.display()));
        let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("sim");
        if let Some((source, changed)) = newest_file(&sources)
            && changed > built
        {
            panic!(
                "{} is older than {}: {build}",
                sim.display(),
                source.display()
            );
        }
        sim
    })
}

/// The most recently modified file under `dir` (`Cargo.toml`, `src/`),
/// ignoring the simulator's own tests.
fn newest_file(dir: &Path) -> Option<(PathBuf, std::time::SystemTime)> {
    let mut newest: Option<(PathBuf, std::time::SystemTime)> = None;
    let mut pending = vec![dir.join("Cargo.toml"), dir.join("src")];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        } else if let Ok(modified) = meta.modified()
            && newest.as_ref().is_none_or(|(_, t)| modified > *t)
        {
            newest = Some((path, modified));
        }
    }
    newest
}

pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A running `mcprom-sim`.
pub struct Sim {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub ready: Value,
    pub control: String,
}

impl Sim {
    pub fn start(args: &[&str]) -> Sim {
        init_crypto();
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(sim_binary())
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mcprom-sim");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("sim ready line {line:?}: {e}"));
        let control = ready["control"].as_str().unwrap().to_owned();
        Sim {
            child,
            dir,
            ready,
            control,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cluster(&self, name: &str) -> &Value {
        self.ready["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
    }

    pub fn api_server(&self, name: &str) -> String {
        self.cluster(name)["api_server"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn ca_file(&self, name: &str) -> PathBuf {
        self.cluster(name)["ca_file"].as_str().unwrap().into()
    }

    pub fn kubeconfig(&self, name: &str) -> PathBuf {
        self.cluster(name)["kubeconfig"].as_str().unwrap().into()
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("{}/stats", self.control))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn token_requests(&self, cluster: &str) -> u64 {
        self.stats().await["clusters"][cluster]["token_requests"]
            .as_u64()
            .unwrap_or(0)
    }

    pub async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) {
        let client = reqwest::Client::new();
        let mut req = client.request(method, format!("{}{path}", self.control));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.status());
    }

    /// Whether the simulator accepts `token` for cluster `name` now
    /// (the node proxy path Prometheus scrapes).
    pub async fn accepts(&self, name: &str, token: &str) -> bool {
        let pem = std::fs::read(self.ca_file(name)).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
            .build()
            .unwrap();
        let res = client
            .get(format!(
                "{}/api/v1/nodes/node-1/proxy/metrics/cadvisor",
                self.api_server(name)
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            200 => true,
            401 => false,
            other => panic!("unexpected status {other} from the node proxy"),
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Options for a generated mcprom config.
#[derive(Clone)]
pub struct Conf {
    pub expiration: &'static str,
    pub refresh_at: f64,
    pub reload_url: Option<String>,
    pub delay: &'static str,
    pub extra_defaults: String,
    /// Per-cluster extra lines, by name.
    pub cluster_extra: Vec<(String, String)>,
    /// Override of the credentials table body, by name.
    pub credentials: Vec<(String, String)>,
}

impl Default for Conf {
    fn default() -> Self {
        Conf {
            expiration: "1h",
            refresh_at: 0.8,
            reload_url: None,
            delay: "1s",
            extra_defaults: String::new(),
            cluster_extra: Vec::new(),
            credentials: Vec::new(),
        }
    }
}

/// Write an mcprom config for the sim's clusters (all or `only`) into `dir/mcprom-test.toml`.
pub fn write_config(sim: &Sim, dir: &Path, conf: &Conf, only: Option<&[&str]>) -> PathBuf {
    let mut text = String::new();
    match &conf.reload_url {
        Some(url) => text.push_str(&format!(
            "[prometheus]\nurl = \"{url}\"\nreload = \"on_rotation\"\ndelay = \"{}\"\ntimeout = \"10s\"\n\n",
            conf.delay
        )),
        None => text.push_str("[prometheus]\nreload = \"never\"\n\n"),
    }
    text.push_str(&format!(
        "[defaults]\ntoken_dir = \"{}\"\nexpiration = \"{}\"\nrefresh_at = {}\n{}\n\n[metrics]\nlisten = \"\"\n\n[control]\nsocket = \"{}\"\n\n",
        dir.join("tokens").display(),
        conf.expiration,
        conf.refresh_at,
        conf.extra_defaults,
        dir.join("control.sock").display(),
    ));
    for cluster in sim.ready["clusters"].as_array().unwrap() {
        let name = cluster["name"].as_str().unwrap();
        if only.is_some_and(|o| !o.contains(&name)) {
            continue;
        }
        text.push_str(&format!(
            "[[cluster]]\nname = \"{name}\"\nservice_account = \"kube-system/prometheus-test\"\n"
        ));
        for (n, extra) in &conf.cluster_extra {
            if n == name {
                text.push_str(extra);
                text.push('\n');
            }
        }
        text.push_str("[cluster.credentials]\n");
        match conf.credentials.iter().find(|(n, _)| n == name) {
            Some((_, body)) => text.push_str(body),
            None => text.push_str(&format!(
                "kubeconfig = \"{}\"",
                cluster["kubeconfig"].as_str().unwrap()
            )),
        }
        text.push_str("\n\n");
    }
    let path = dir.join("mcprom-test.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A running `mcprom run` with its stderr collected.
pub struct Daemon {
    pub child: Child,
    pub log: Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    pub fn start(config: &Path, rust_log: &str) -> Daemon {
        Daemon::start_with(config, rust_log, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_with(config: &Path, rust_log: &str, env: &[(&str, &std::ffi::OsStr)]) -> Daemon {
        let mut command = Command::new(MCPROM);
        command.envs(env.iter().copied());
        Daemon::run_by(command, config, rust_log)
    }

    /// `COMMAND run --config CONFIG` (COMMAND is `mcprom` itself, or a
    /// wrapper whose last argument is `mcprom`), stderr collected.
    pub fn run_by(mut command: Command, config: &Path, rust_log: &str) -> Daemon {
        let mut child = command
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mcprom");
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Daemon { child, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, then the exit status and how long it took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = started + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "mcprom did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mcprom did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `f` every 50 ms until it returns `Some`, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn read_token(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Decode a JWT's claims (no verification).
pub fn claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("JWT payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A loopback stand-in for Prometheus's web endpoint: counts `POST /-/reload`
/// (taking `reload_time` each), answers `/-/ready`, and records the most
/// reloads ever in flight at once.
pub struct ReloadReceiver {
    pub url: String,
    pub reloads: Arc<AtomicUsize>,
    pub max_in_flight: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ReloadReceiver {
    pub async fn start(reload_time: Duration, status: u16) -> ReloadReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let reloads = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let (r, i, m) = (reloads.clone(), in_flight.clone(), max_in_flight.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (r, i, m) = (r.clone(), i.clone(), m.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = socket.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = find(&buf, b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            let line = head.lines().next().unwrap_or("").to_owned();
                            let (code, body) = if line.starts_with("POST /-/reload") {
                                let now = i.fetch_add(1, Ordering::SeqCst) + 1;
                                m.fetch_max(now, Ordering::SeqCst);
                                tokio::time::sleep(reload_time).await;
                                i.fetch_sub(1, Ordering::SeqCst);
                                r.fetch_add(1, Ordering::SeqCst);
                                (status, "")
                            } else if line.starts_with("GET /-/ready") {
                                (200, "Prometheus Server is Ready.\n")
                            } else {
                                (404, "not found\n")
                            };
                            let reply = format!(
                                "HTTP/1.1 {code} X\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if socket.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        ReloadReceiver {
            url,
            reloads,
            max_in_flight,
            in_flight,
            task,
        }
    }

    pub fn count(&self) -> usize {
        self.reloads.load(Ordering::SeqCst)
    }
}

impl Drop for ReloadReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Sim {
    /// The static bearer token of the sim's `mcprom-issuer` user for `cluster`
    /// (allowed to mint tokens for `kube-system/prometheus-test`).
    pub fn issuer_token_file(&self, cluster: &str) -> PathBuf {
        self.kubeconfig(cluster).with_file_name("issuer.token")
    }

    /// A token for `kube-system/prometheus-test` minted outside mcprom, with
    /// the sim's issuer credential: what a person does with `kubectl create
    /// token` before `mcprom seed`.
    pub async fn mint(&self, cluster: &str, seconds: u64) -> String {
        let pem = std::fs::read(self.ca_file(cluster)).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
            .no_proxy()
            .build()
            .unwrap();
        let issuer = std::fs::read_to_string(self.issuer_token_file(cluster)).unwrap();
        let res = client
            .post(format!(
                "{}/api/v1/namespaces/kube-system/serviceaccounts/prometheus-test/token",
                self.api_server(cluster)
            ))
            .bearer_auth(issuer.trim())
            .json(&serde_json::json!({"spec": {"expirationSeconds": seconds}}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201, "minting a token failed");
        let body: Value = res.json().await.unwrap();
        body["status"]["token"].as_str().unwrap().to_owned()
    }
}

/// Run `mcprom ARGS` to completion, with `stdin` as its standard input.
pub fn run_mcprom(args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = Command::new(MCPROM)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("MCPROM_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mcprom");
    let mut input = child.stdin.take().unwrap();
    // mcprom may exit without reading (a bad config): a broken pipe is fine.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().unwrap()
}

/// `program` on PATH, or a failure that says how to install it: a test that
/// needs an outside tool fails without it, it never silently passes.
pub fn required_tool(program: &str, install: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed; install it with: {install}"))
}

/// mcprom's `/metrics` text from `127.0.0.1:port`; empty while nothing
/// answers there.
pub async fn metrics_on(port: u16) -> String {
    match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of the sample `series` (exact name and labels) in `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}
