//! A simulated Kubernetes API server (one or many clusters) over real TLS.
//!
//! It stands in for kube-apiserver in every test, `mcprom demo` and the
//! benchmarks: it issues ES256 ServiceAccount tokens through the
//! TokenRequest API, authenticates bearer tokens and client certificates,
//! authorizes with a few RBAC rules, lists nodes and proxies a cAdvisor
//! endpoint, and can inject faults. `mcprom-sim` is its command-line front
//! end; [`Sim::start`] runs it in-process.
//!
//! Layout: `api` (the Kubernetes surface), `server` (listeners),
//! `cluster` (per-cluster state and counters), `jwt`, `pki`, `rbac`,
//! `review` (SelfSubjectReview, SelfSubjectAccessReview), `secrets` (legacy
//! ServiceAccount token Secrets), `proto` (protobuf TokenRequest bodies),
//! `control` (the control endpoint), `files` (kubeconfigs and `mcprom.toml`).

mod api;
mod cluster;
mod control;
mod files;
mod jwt;
mod pki;
pub mod proto;
mod rbac;
mod review;
mod secrets;
mod server;
pub mod tickets;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cluster::{
    ClusterStats, Fault, FaultKind, FaultScope, MANAGED_NAME, MANAGED_NAMESPACE, SimStats,
    TokensRejected,
};
pub use jwt::{Claims, ISSUER};

use api::Settings;
use cluster::{Cluster, ClusterRef};
use files::KubeUser;
use pki::Pki;
use rbac::Policy;
use server::{Listener, OwnPort, Routes};

/// How to run a sim.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Directory for CA files, kubeconfigs and `mcprom.toml` (created if
    /// missing; made absolute).
    pub dir: PathBuf,
    /// Number of clusters, named `c1..cN` (default 1).
    pub clusters: usize,
    /// Number of nodes per cluster, named `node-1..node-K` (default 1).
    pub nodes: usize,
    /// Listen address (default `127.0.0.1:0`); a fixed port is allowed with
    /// one cluster or `shared_port`.
    pub listen: SocketAddr,
    /// Serve every cluster under `/clusters/<name>` on one listener.
    pub shared_port: bool,
    /// Smallest `expirationSeconds` accepted (default 10 min).
    pub min_expiration: Duration,
    /// Largest lifetime granted; longer requests are clamped (default none).
    pub max_expiration: Option<Duration>,
    /// How long after `exp` a token is still accepted (default 60 s).
    pub expiry_leeway: Duration,
    /// Let `kube-system/prometheus-test` create its own tokens (default false).
    pub allow_self_renew: bool,
    /// Control endpoint address (default `127.0.0.1:0`); `None` disables it.
    pub control: Option<SocketAddr>,
    /// Issue TLS session tickets like Go's server (default true;
    /// [`tickets`]); false: every connection is a full handshake.
    pub session_tickets: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        let lo = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        Self {
            dir: PathBuf::new(),
            clusters: 1,
            nodes: 1,
            listen: lo,
            shared_port: false,
            min_expiration: Duration::from_secs(600),
            max_expiration: None,
            expiry_leeway: Duration::from_secs(60),
            allow_self_renew: false,
            control: Some(lo),
            session_tickets: true,
        }
    }
}

/// What the sim prints as its ready line (one JSON object).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Ready {
    /// Absolute path of the generated `mcprom.toml`.
    pub config: PathBuf,
    /// `http://127.0.0.1:PORT` of the control endpoint, if enabled.
    pub control: Option<String>,
    /// The clusters, in order `c1..cN`.
    pub clusters: Vec<ReadyCluster>,
}

/// One cluster in the ready line.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ReadyCluster {
    /// `c1`, `c2`, ...
    pub name: String,
    /// `https://127.0.0.1:PORT` or, shared-port, `https://127.0.0.1:PORT/clusters/<name>`.
    pub api_server: String,
    /// Absolute path of the CA certificate (PEM).
    pub ca_file: PathBuf,
    /// Absolute path of the admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Always `kube-system/prometheus-test`.
    pub service_account: String,
    /// `node-1..node-K`.
    pub nodes: Vec<String>,
}

/// Clusters by name, with their own-port listeners.
pub(crate) struct Registry {
    names: Vec<String>,
    clusters: Arc<HashMap<String, ClusterRef>>,
    ports: HashMap<String, Arc<OwnPort>>,
}

impl Registry {
    fn cluster_handle(&self, name: &str) -> Option<ClusterHandle> {
        Some(ClusterHandle {
            cluster: self.clusters.get(name)?.clone(),
            port: self.ports.get(name).cloned(),
        })
    }

    fn stats(&self) -> SimStats {
        SimStats {
            clusters: self
                .names
                .iter()
                .filter_map(|n| Some((n.clone(), self.clusters.get(n)?.stats())))
                .collect(),
        }
    }
}

/// In-process control of one cluster: the operations of the control endpoint.
#[derive(Clone)]
pub struct ClusterHandle {
    cluster: ClusterRef,
    port: Option<Arc<OwnPort>>,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle")
            .field("name", &self.cluster.name)
            .finish_non_exhaustive()
    }
}

impl ClusterHandle {
    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.cluster.name
    }

    /// Queues a fault for the next `fault.count` matching requests.
    pub fn inject_fault(&self, fault: Fault) {
        self.cluster.inject_fault(fault);
    }

    /// Removes all queued faults.
    pub fn clear_faults(&self) {
        self.cluster.clear_faults();
    }

    /// Takes the cluster down: an own-port cluster closes its listener and
    /// connections (connection refused once this returns); a shared-port
    /// cluster resets the connection of each request.
    pub async fn down(&self) {
        self.cluster.set_down(true);
        if let Some(p) = &self.port {
            p.down().await;
        }
    }

    /// Brings the cluster back on the same address.
    pub async fn up(&self) -> anyhow::Result<()> {
        if let Some(p) = &self.port {
            p.up().await?;
        }
        self.cluster.set_down(false);
        Ok(())
    }

    /// Deletes a ServiceAccount; its tokens stop authenticating. False if absent.
    pub fn delete_service_account(&self, namespace: &str, name: &str) -> bool {
        self.cluster.delete_service_account(namespace, name)
    }

    /// Replaces the cluster's token signing key (the API server restarted
    /// with a new key and without the old one): tokens issued before stop
    /// authenticating.
    pub fn rotate_signing_key(&self) -> anyhow::Result<()> {
        self.cluster.rotate_signing_key()
    }

    /// Deletes and recreates a ServiceAccount in one step: it gets a new
    /// uid, and tokens issued for the old one stop authenticating. False if
    /// it does not exist.
    pub fn recreate_service_account(&self, namespace: &str, name: &str) -> bool {
        self.cluster.delete_service_account(namespace, name)
            && self.cluster.create_service_account(namespace, name)
    }

    /// Creates a ServiceAccount with a fresh uid. False if it already exists.
    pub fn create_service_account(&self, namespace: &str, name: &str) -> bool {
        self.cluster.create_service_account(namespace, name)
    }

    /// Creates a legacy, never-expiring token Secret for ServiceAccount
    /// `namespace/name` (as clusters set up before Kubernetes 1.24 have);
    /// returns the Secret's generated name, or `None` when the
    /// ServiceAccount does not exist.
    pub fn create_legacy_token_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Option<String>> {
        self.cluster.create_legacy_token_secret(namespace, name)
    }

    /// Deletes a Secret. False if absent.
    pub fn delete_secret(&self, namespace: &str, name: &str) -> bool {
        self.cluster.secrets.remove(namespace, name)
    }

    /// A snapshot of the cluster's counters.
    pub fn stats(&self) -> ClusterStats {
        self.cluster.stats()
    }

    /// Signs `claims` (any JSON object) with the cluster's current token
    /// key: a token with chosen times or claims (expired, not yet valid) for
    /// the conformance suite, as `testbed/conformance` signs with the real
    /// server's key.
    pub fn sign(&self, claims: &serde_json::Value) -> anyhow::Result<String> {
        self.cluster.signer()?.sign(claims)
    }

    /// The static bearer token of `mcprom-issuer` (also in `DIR/<name>/issuer.token`).
    pub fn issuer_token(&self) -> &str {
        &self.cluster.issuer_token
    }
}

/// A running sim. Dropping it stops serving; [`Sim::shutdown`] also waits
/// for connections to close.
pub struct Sim {
    ready: Ready,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

/// Parses `500ms`, `90s`, `10m`, `1h`, `1d` or combinations like `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration {s:?}: expected a number"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            u => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {u:?} (use ms, s, m, h or d)"
                ));
            }
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Per-cluster outputs of the file-writing step.
struct ClusterFiles<'a> {
    name: &'a str,
    server: String,
    ca_pem: &'a str,
    admin: &'a pki::CertAndKey,
    issuer_token: &'a str,
    nobody_token: &'a str,
}

fn write_cluster_files(
    dir: &Path,
    f: &ClusterFiles<'_>,
    nodes: &[String],
) -> anyhow::Result<ReadyCluster> {
    let cdir = dir.join(f.name);
    std::fs::create_dir_all(&cdir)
        .with_context(|| format!("failed to create '{}'", cdir.display()))?;
    let ca_file = cdir.join("ca.crt");
    files::write_atomic(&ca_file, f.ca_pem.as_bytes(), 0o644)?;
    let kubeconfig = cdir.join("kubeconfig");
    files::write_atomic(
        &kubeconfig,
        files::kubeconfig(f.name, &f.server, &ca_file, KubeUser::ClientCert(f.admin)).as_bytes(),
        0o600,
    )?;
    files::write_atomic(
        &cdir.join("kubeconfig-nobody"),
        files::kubeconfig(f.name, &f.server, &ca_file, KubeUser::Token(f.nobody_token)).as_bytes(),
        0o600,
    )?;
    files::write_atomic(&cdir.join("issuer.token"), f.issuer_token.as_bytes(), 0o600)?;
    Ok(ReadyCluster {
        name: f.name.to_string(),
        api_server: f.server.clone(),
        ca_file,
        kubeconfig,
        service_account: format!("{MANAGED_NAMESPACE}/{MANAGED_NAME}"),
        nodes: nodes.to_vec(),
    })
}

/// `127.0.0.1:PORT` as clients should dial it (an unspecified bind address
/// becomes loopback, which the certificate covers).
fn dial_addr(bound: SocketAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), bound.port())
    } else {
        bound
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("blocking task failed")?
}

impl Sim {
    /// Binds the listeners, writes the files and returns once serving.
    pub async fn start(config: SimConfig) -> anyhow::Result<Sim> {
        if config.clusters == 0 {
            bail!("--clusters must be at least 1");
        }
        if config.listen.port() != 0 && config.clusters > 1 && !config.shared_port {
            bail!(
                "a fixed --listen port ({}) needs --shared-port when serving {} clusters",
                config.listen,
                config.clusters
            );
        }
        std::fs::create_dir_all(&config.dir)
            .with_context(|| format!("failed to create '{}'", config.dir.display()))?;
        let dir = std::fs::canonicalize(&config.dir)
            .with_context(|| format!("failed to resolve '{}'", config.dir.display()))?;
        let nodes: Vec<String> = (1..=config.nodes).map(|i| format!("node-{i}")).collect();
        let settings = Arc::new(Settings {
            min_expiration: config.min_expiration,
            max_expiration: config.max_expiration,
            leeway: config.expiry_leeway,
            audiences: vec![ISSUER.to_string()],
            policy: Policy {
                allow_self_renew: config.allow_self_renew,
            },
            nodes: nodes.clone(),
        });
        let names: Vec<String> = (1..=config.clusters).map(|i| format!("c{i}")).collect();
        let clusters: Arc<HashMap<String, ClusterRef>> = Arc::new(
            names
                .iter()
                .map(|n| (n.clone(), Arc::new(Cluster::new(n.clone()))))
                .collect(),
        );
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut ports = HashMap::new();
        let tickets = config.session_tickets;
        let ready_clusters = if config.shared_port {
            let pki = blocking(move || Pki::generate_with("shared", tickets)).await?;
            let tcp = TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("failed to listen on {}", config.listen))?;
            let addr = dial_addr(tcp.local_addr()?);
            let listener = Listener {
                settings: settings.clone(),
                tls: TlsAcceptor::from(pki.server_config.clone()),
                routes: Routes::Shared(clusters.clone()),
                tracker: tracker.clone(),
            };
            let work: Vec<(String, String, String)> = names
                .iter()
                .map(|n| {
                    let c = &clusters[n];
                    (n.clone(), c.issuer_token.clone(), c.nobody_token.clone())
                })
                .collect();
            let (dir2, nodes2) = (dir.clone(), nodes.clone());
            let ready = blocking(move || {
                work.iter()
                    .map(|(name, issuer, nobody)| {
                        let f = ClusterFiles {
                            name,
                            server: format!("https://{addr}/clusters/{name}"),
                            ca_pem: &pki.ca_pem,
                            admin: &pki.admin,
                            issuer_token: issuer,
                            nobody_token: nobody,
                        };
                        write_cluster_files(&dir2, &f, &nodes2)
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .await?;
            tokio::spawn(listener.run(tcp, shutdown.child_token()));
            ready
        } else {
            let mut ready = Vec::with_capacity(names.len());
            for name in &names {
                let cluster = clusters[name].clone();
                let n = name.clone();
                let pki = blocking(move || Pki::generate_with(&n, tickets)).await?;
                let tcp = TcpListener::bind(config.listen)
                    .await
                    .with_context(|| format!("failed to listen on {}", config.listen))?;
                let addr = dial_addr(tcp.local_addr()?);
                let f = ClusterFiles {
                    name,
                    server: format!("https://{addr}"),
                    ca_pem: &pki.ca_pem,
                    admin: &pki.admin,
                    issuer_token: &cluster.issuer_token,
                    nobody_token: &cluster.nobody_token,
                };
                ready.push(write_cluster_files(&dir, &f, &nodes)?);
                let listener = Listener {
                    settings: settings.clone(),
                    tls: TlsAcceptor::from(pki.server_config.clone()),
                    routes: Routes::Single(cluster),
                    tracker: tracker.clone(),
                };
                let port = OwnPort::start(listener, tcp, shutdown.clone())?;
                ports.insert(name.clone(), Arc::new(port));
            }
            ready
        };
        let config_path = dir.join("mcprom.toml");
        let toml = files::mcprom_toml(
            &dir,
            &ready_clusters
                .iter()
                .map(|c| (c.name.clone(), c.kubeconfig.clone()))
                .collect::<Vec<_>>(),
        );
        files::write_atomic(&config_path, toml.as_bytes(), 0o644)?;
        let registry = Arc::new(Registry {
            names,
            clusters,
            ports,
        });
        let control = match config.control {
            Some(addr) => {
                let tcp = TcpListener::bind(addr).await.with_context(|| {
                    format!("failed to listen on {addr} for the control endpoint")
                })?;
                let bound = dial_addr(tcp.local_addr()?);
                tokio::spawn(control::run(
                    tcp,
                    registry.clone(),
                    shutdown.child_token(),
                    tracker.clone(),
                ));
                Some(format!("http://{bound}"))
            }
            None => None,
        };
        Ok(Sim {
            ready: Ready {
                config: config_path,
                control,
                clusters: ready_clusters,
            },
            registry,
            shutdown,
            tracker,
        })
    }

    /// The ready-line data.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// In-process control of cluster `name`.
    pub fn cluster(&self, name: &str) -> Option<ClusterHandle> {
        self.registry.cluster_handle(name)
    }

    /// Counters of every cluster (what `GET /stats` returns).
    pub fn stats(&self) -> SimStats {
        self.registry.stats()
    }

    /// Stops serving and waits (up to 5 s) for connections to close.
    pub async fn shutdown(self) {
        let tracker = self.tracker.clone();
        drop(self);
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_the_command_line_documents() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
    }
}
