//! Helpers shared by the `sim_*` integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use mcprom_sim::{Ready, Sim, SimConfig};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// The TokenRequest path of the managed ServiceAccount.
pub const TOKEN_PATH: &str = "/api/v1/namespaces/kube-system/serviceaccounts/prometheus-test/token";
/// The cAdvisor path through the node proxy.
pub const CADVISOR_PATH: &str = "/api/v1/nodes/node-1/proxy/metrics/cadvisor";

/// Installs the ring crypto provider (idempotent).
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Starts an in-process sim in a fresh temporary directory.
pub async fn start(tune: impl FnOnce(&mut SimConfig)) -> (tempfile::TempDir, Sim) {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = SimConfig {
        dir: dir.path().to_path_buf(),
        ..SimConfig::default()
    };
    tune(&mut config);
    let sim = Sim::start(config).await.expect("sim starts");
    (dir, sim)
}

/// An HTTPS client that trusts only `ca_file`, HTTP/1.1, no proxy.
pub fn client(ca_file: &Path) -> reqwest::Client {
    init();
    let pem = std::fs::read(ca_file).expect("read CA");
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("CA PEM")])
        .no_proxy()
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// `POST` a JSON TokenRequest for the managed ServiceAccount.
pub async fn request_token(
    client: &reqwest::Client,
    api_server: &str,
    bearer: &str,
    expiration_seconds: i64,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{api_server}{TOKEN_PATH}"))
        .bearer_auth(bearer)
        .json(&serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": { "expirationSeconds": expiration_seconds },
        }))
        .send()
        .await
}

/// Issues a token and returns it, panicking on anything but 201.
pub async fn issue(client: &reqwest::Client, api_server: &str, bearer: &str, secs: i64) -> String {
    let resp = request_token(client, api_server, bearer, secs)
        .await
        .expect("TokenRequest sent");
    assert_eq!(resp.status(), 201, "TokenRequest failed");
    let v: Value = resp.json().await.expect("TokenRequest JSON");
    v["status"]["token"]
        .as_str()
        .expect("status.token")
        .to_string()
}

/// `GET` the cAdvisor endpoint with `bearer`; returns the HTTP status.
pub async fn scrape(client: &reqwest::Client, api_server: &str, bearer: &str) -> u16 {
    client
        .get(format!("{api_server}{CADVISOR_PATH}"))
        .bearer_auth(bearer)
        .send()
        .await
        .expect("scrape sent")
        .status()
        .as_u16()
}

/// The (unverified) claims of a JWT.
pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("JWT payload is base64url");
    serde_json::from_slice(&bytes).expect("JWT payload is JSON")
}

/// Reads a cluster's static issuer token.
pub fn issuer_token(dir: &Path, cluster: &str) -> String {
    std::fs::read_to_string(dir.join(cluster).join("issuer.token")).expect("issuer.token")
}

/// A `mcprom-sim` child process; killed on drop.
pub struct SimProcess {
    pub child: tokio::process::Child,
    pub ready: Ready,
    pub dir: tempfile::TempDir,
}

impl SimProcess {
    /// Runs the real binary with `args` (plus `--dir`) and waits for its ready line.
    pub async fn spawn(args: &[&str]) -> SimProcess {
        init();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcprom-sim"))
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mcprom-sim");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .expect("mcprom-sim printed its ready line in time")
            .expect("read stdout")
            .expect("mcprom-sim exited before its ready line");
        let ready: Ready = serde_json::from_str(&line).expect("ready line is JSON");
        SimProcess { child, ready, dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().canonicalize().expect("canonical dir")
    }

    pub fn control(&self) -> String {
        self.ready.control.clone().expect("control endpoint")
    }
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
