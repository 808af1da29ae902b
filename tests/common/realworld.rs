//! The real test world: clusters of `testbed/cluster` (etcd + the real
//! kube-apiserver, set up with `mcprom rbac | kubectl apply`), the real
//! kubectl, Prometheus 3 built by `testbed/build`, and Debian's Prometheus.
//!
//! Included with `#[path = "common/realworld.rs"] mod realworld;` next to
//! `mod common;`. A missing piece fails the test with what to run; nothing
//! here skips.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Debian's Prometheus 2.42 (built without Kubernetes discovery).
pub const DEBIAN_PROMETHEUS: &str = "/usr/bin/prometheus";

/// `testbed/build`'s `bin_dir`: the pinned kube-apiserver, kubectl, etcd,
/// prometheus and promtool. Builds them on first use (minutes, once per
/// version); fails the test if that fails.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(format!("{REPO}/testbed/build"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {REPO}/testbed/build: {e}"));
        assert!(
            out.status.success(),
            "testbed/build failed ({}): the real-world tests need the pinned kube-apiserver, \
             kubectl, etcd and Prometheus 3 (Go 1.26 and the Go module proxy); its messages are above",
            out.status
        );
        let line = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("testbed/build printed {line:?}: {e}"));
        PathBuf::from(v["bin_dir"].as_str().expect("bin_dir"))
    })
}

pub fn tool(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A running `testbed/cluster`; dropping it tears the clusters down.
///
/// Start it from the test's own thread (a `#[tokio::test]` body or plain
/// test code), not from a short-lived helper thread: the harness dies with
/// the thread that started it.
pub struct World {
    child: Child,
    /// Kept (not deleted) when the test fails, for the logs in it.
    dir: Option<tempfile::TempDir>,
    pub ready: Value,
}

impl World {
    pub fn start(clusters: usize, nodes: usize, extra: &[&str]) -> World {
        init_crypto();
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("mcprom-real-")
            .tempdir()
            .unwrap();
        let mut child = Command::new(format!("{REPO}/testbed/cluster"))
            .arg("--dir")
            .arg(dir.path())
            .args(["--clusters", &clusters.to_string()])
            .args(["--nodes", &nodes.to_string()])
            .args(["--mcprom", MCPROM])
            .arg("--bin-dir")
            .arg(bin)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start testbed/cluster (needs python3)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(line) if !line.is_empty() => line,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "testbed/cluster did not become ready (its messages are above; logs in {})",
                    dir.path().display()
                );
            }
        };
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("testbed/cluster ready line {line:?}: {e}"));
        World {
            child,
            dir: Some(dir),
            ready,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    pub fn cluster(&self, name: &str) -> &Value {
        self.ready["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no cluster {name} in {}", self.ready))
    }

    pub fn field(&self, cluster: &str, key: &str) -> String {
        self.cluster(cluster)[key]
            .as_str()
            .unwrap_or_else(|| panic!("{cluster}.{key}"))
            .to_owned()
    }

    /// `kubectl` with the cluster's admin kubeconfig; panics on failure.
    pub fn kubectl(&self, cluster: &str, args: &[&str], stdin: &str) -> String {
        let out = self.kubectl_output(cluster, args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} on {cluster}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn kubectl_output(&self, cluster: &str, args: &[&str], stdin: &str) -> Output {
        use std::io::Write as _;
        let mut child = Command::new(tool("kubectl"))
            .arg(format!(
                "--kubeconfig={}",
                self.field(cluster, "kubeconfig")
            ))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        let mut input = child.stdin.take().unwrap();
        let _ = input.write_all(stdin.as_bytes());
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// `testbed/cluster-ctl --dir DIR ARGS`; the cluster's new entry.
    pub fn ctl(&self, args: &[&str]) -> Value {
        let out = Command::new(format!("{REPO}/testbed/cluster-ctl"))
            .arg("--dir")
            .arg(self.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster-ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A reqwest client that trusts the cluster's CA.
    pub fn client(&self, cluster: &str) -> reqwest::Client {
        let ca = std::fs::read(self.field(cluster, "ca_file")).unwrap();
        reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    /// The status code the real server answers a bearer `token` with on
    /// `GET /api/v1/nodes` (200 authorised, 401 not authenticated).
    pub async fn status_for_token(&self, cluster: &str, token: &str) -> u16 {
        self.client(cluster)
            .get(format!(
                "{}/api/v1/nodes",
                self.field(cluster, "api_server")
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The admin's view of `GET path` (kubectl get --raw).
    pub fn raw(&self, cluster: &str, path: &str) -> String {
        self.kubectl(cluster, &["get", "--raw", path], "")
    }

    /// Add a Node named `name` whose kubelet is one of the harness's spare
    /// fake kubelets.
    pub fn add_node(&self, cluster: &str, name: &str, spare: usize) {
        let addr = self.ready["spare_kubelets"][spare].as_str().unwrap();
        let (ip, port) = addr.split_once(':').unwrap();
        let node = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name},
            "status": {
                "addresses": [{"type": "InternalIP", "address": ip}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port.parse::<u16>().unwrap()}},
            },
        });
        self.kubectl(cluster, &["create", "-f", "-"], &node.to_string());
    }

    /// A config as a user would write it for `clusters`, with mcprom's own
    /// least-privilege client certificate; `extra_defaults` and
    /// `extra_cluster` are appended to `[defaults]` and each `[[cluster]]`.
    pub fn user_config(
        &self,
        work: &Path,
        clusters: &[&str],
        prometheus: Option<&str>,
        extra_defaults: &str,
        extra_cluster: &str,
    ) -> PathBuf {
        let q = |p: &dyn AsRef<str>| serde_json::to_string(p.as_ref()).unwrap();
        let prom = match prometheus {
            Some(url) => format!(
                "[prometheus]\nurl = {}\nreload = \"on_rotation\"\ndelay = \"1s\"\n",
                q(&url)
            ),
            None => "[prometheus]\nreload = \"never\"\n".to_owned(),
        };
        let mut s = format!(
            "{prom}\n[defaults]\ntoken_dir = {}\n{extra_defaults}\n\n[metrics]\nlisten = \"\"\n\n\
             [control]\nsocket = {}\n",
            q(&work.join("tokens").to_string_lossy()),
            q(&work.join("control.sock").to_string_lossy()),
        );
        for c in clusters {
            s.push_str(&format!(
                "\n[[cluster]]\nname = {}\napi_server = {}\nca_file = {}\n\
                 service_account = \"kube-system/prometheus-test\"\n{extra_cluster}\n\
                 [cluster.credentials]\nclient_cert = {}\nclient_key = {}\n",
                q(c),
                q(&self.field(c, "api_server")),
                q(&self.field(c, "ca_file")),
                q(&self.field(c, "client_cert")),
                q(&self.field(c, "client_key")),
            ));
        }
        std::fs::create_dir_all(work).unwrap();
        let path = work.join("mcprom.toml");
        std::fs::write(&path, s).unwrap();
        path
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.keep_on_failure();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.keep_on_failure();
    }
}

impl World {
    fn keep_on_failure(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!(
                "the real clusters' files and logs are kept in {}",
                dir.keep().display()
            );
        }
    }
}

/// `mcprom ARGS --config CONFIG`, to completion.
pub fn mcprom(config: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    let config = config.to_string_lossy().into_owned();
    all.extend(["--config", &config]);
    run_mcprom(&all, "")
}

pub fn stdout_of(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// `mcprom scrape-config [--static]` with the global scrape interval set to
/// `interval` (the jobs are kept exactly as printed).
pub fn scrape_config(config: &Path, static_form: bool, interval: &str) -> String {
    let mut args = vec!["scrape-config"];
    if static_form {
        args.push("--static");
    }
    let text = stdout_of(&mcprom(config, &args), "mcprom scrape-config");
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let map = doc.as_mapping_mut().unwrap();
    let mut global = serde_yaml_ng::Mapping::new();
    global.insert("scrape_interval".into(), interval.into());
    global.insert("scrape_timeout".into(), interval.into());
    map.insert("global".into(), serde_yaml_ng::Value::Mapping(global));
    serde_yaml_ng::to_string(&doc).unwrap()
}

/// A Prometheus (3 from the testbed, or Debian's 2.42) on a free port.
pub struct Prom {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Prom {
    pub fn start(binary: &Path, dir: &Path, config: &str) -> Prom {
        Prom::start_on(binary, dir, config, free_port())
    }

    pub fn start_on(binary: &Path, dir: &Path, config: &str, port: u16) -> Prom {
        assert!(
            binary.is_file(),
            "{} is missing (Prometheus 3: testbed/build; Debian's 2.42: apt-get install prometheus)",
            binary.display()
        );
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(binary)
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
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prom {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    pub async fn ready(&self) {
        let url = format!("{}/-/ready", self.url());
        eventually(Duration::from_secs(90), "prometheus ready", || async {
            let r = http().get(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }

    pub async fn query(&self, query: &str) -> Value {
        let mut url = url::Url::parse(&format!("{}/api/v1/query", self.url())).unwrap();
        url.query_pairs_mut().append_pair("query", query);
        let body: Value = http().get(url).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["status"], "success", "{query}: {body}");
        body["data"]["result"].clone()
    }

    /// The active targets: (job, scrapeUrl, health, lastError).
    pub async fn targets(&self) -> Vec<(String, String, String, String)> {
        let body: Value = http()
            .get(format!("{}/api/v1/targets?state=active", self.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["data"]["activeTargets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let s = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
                (
                    t["labels"]["job"].as_str().unwrap_or_default().to_owned(),
                    s("scrapeUrl"),
                    s("health"),
                    s("lastError"),
                )
            })
            .collect()
    }

    /// Wait until exactly `count` targets are all up.
    pub async fn all_up(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let targets = self.targets().await;
            if targets.len() == count && targets.iter().all(|t| t.2 == "up") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not {count} targets up after {timeout:?}: {targets:#?}\nprometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Prometheus's own `/metrics` text.
    pub async fn own_metrics(&self) -> String {
        http()
            .get(format!("{}/metrics", self.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Kubernetes discovery's requests to the API servers by status code
    /// (`prometheus_sd_kubernetes_http_request_total`); panics if there
    /// are none.
    pub async fn discovery_requests(&self) -> Vec<(String, f64)> {
        let text = self.own_metrics().await;
        let codes: Vec<(String, f64)> = text
            .lines()
            .filter_map(|l| {
                let rest =
                    l.strip_prefix("prometheus_sd_kubernetes_http_request_total{status_code=\"")?;
                let (code, value) = rest.split_once("\"} ")?;
                Some((code.to_owned(), value.parse().ok()?))
            })
            .collect();
        assert!(
            codes.iter().any(|(c, v)| c.starts_with('2') && *v > 0.0),
            "Kubernetes discovery made no successful request: {codes:?}"
        );
        codes
    }

    /// The series of `up` that were 0 at any sample in the last `window`,
    /// as `{job, instance}` pairs (empty: every scrape succeeded).
    pub async fn down_in(&self, window: Duration) -> Vec<String> {
        self.query(&format!("min_over_time(up[{}s]) < 1", window.as_secs()))
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["metric"].to_string())
            .collect()
    }
}

impl Drop for Prom {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The token in `work/tokens/CLUSTER.token` (None while missing).
pub fn token_in(work: &Path, cluster: &str) -> Option<String> {
    std::fs::read_to_string(work.join(format!("tokens/{cluster}.token"))).ok()
}

/// Wait until `cluster`'s token file holds a token other than `old`.
pub async fn new_token(work: &Path, cluster: &str, old: Option<&str>, timeout: Duration) -> String {
    eventually(timeout, &format!("a new token for {cluster}"), || async {
        token_in(work, cluster).filter(|t| Some(t.as_str()) != old)
    })
    .await
}

/// `cluster`'s entry of `mcprom status --json`.
pub fn status_of(config: &Path, cluster: &str) -> Value {
    let out = mcprom(config, &["status", "--json"]);
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
        .unwrap_or_else(|| panic!("no {cluster} in {report}"))
}
