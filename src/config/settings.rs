//! Validated settings: what the rest of mcprom works with.
//!
//! Built from the raw file (`file.rs`) by `validate.rs`. Every path here is
//! absolute (relative paths in the file are resolved against the config
//! file's directory), every duration a [`Duration`], every URL a [`Url`].

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The config file these settings were read from (absolute).
    pub path: PathBuf,
    /// `[prometheus]`: where and how to ask Prometheus to reload.
    pub prometheus: PrometheusSettings,
    /// `[metrics]`: mcprom's own `/metrics` and `/healthz`.
    pub metrics: MetricsSettings,
    /// `[control]`: the control socket.
    pub control: ControlSettings,
    /// `[limits]`.
    pub limits: Limits,
    /// `[[cluster]]` entries, in file order, with `[defaults]` applied.
    pub clusters: Vec<std::sync::Arc<ClusterSettings>>,
    /// `[[consumer]]` entries, in file order: reloaded besides `[prometheus]`.
    pub consumers: Vec<super::ConsumerSettings>,
}

/// Whether mcprom asks Prometheus to reload after token files change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadMode {
    /// `POST {url}/-/reload` after a batch of rotations (default).
    OnRotation,
    /// Never reload: Prometheus re-reads token files on every scrape anyway.
    Never,
}

/// `[prometheus]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusSettings {
    /// Base URL; reload target is `{url}/-/reload` (default `http://127.0.0.1:9090`).
    pub url: Url,
    /// `reload` (default `on_rotation`).
    pub reload: ReloadMode,
    /// Timeout of one reload request (default 60 s).
    pub timeout: Duration,
    /// Quiet period that coalesces rotations into one reload (default 2 s).
    pub delay: Duration,
    /// CA that signs Prometheus's web certificate (default: system roots).
    pub ca_file: Option<PathBuf>,
    /// Basic-auth user for a protected web endpoint.
    pub username: Option<String>,
    /// File holding the basic-auth password (read on use).
    pub password_file: Option<PathBuf>,
    /// File holding a bearer token for the web endpoint (read on use).
    pub bearer_token_file: Option<PathBuf>,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSettings {
    /// Listen address; `None` when the file says `""` (default `127.0.0.1:9719`).
    pub listen: Option<std::net::SocketAddr>,
}

/// `[control]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlSettings {
    /// Unix socket path (default `/run/mcprom/control.sock`).
    pub socket: PathBuf,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// TokenRequests in flight at once across all clusters (default 32, ≥ 1).
    pub concurrent_requests: NonZeroUsize,
    /// How long one kubeconfig exec plugin run may take before its process
    /// group is killed (default 30 s).
    pub exec_timeout: std::time::Duration,
}

/// `namespace/name` of a ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccountRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ServiceAccountRef {
    /// The JWT `sub` of tokens issued for this ServiceAccount.
    pub fn subject(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl std::fmt::Display for ServiceAccountRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How mcprom itself authenticates to call TokenRequest.
#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    /// A kubeconfig file, optionally a named context.
    Kubeconfig {
        /// Path of the kubeconfig.
        path: PathBuf,
        /// Context to use (default: the file's current-context).
        context: Option<String>,
    },
    /// A bearer token file, re-read on every use.
    TokenFile(PathBuf),
    /// A client certificate and key (PEM).
    ClientCert {
        /// Certificate (PEM).
        cert: PathBuf,
        /// Private key (PEM).
        key: PathBuf,
    },
    /// Renew with the cluster's own current token (`self = true`).
    SelfRenew,
}

/// One `[[cluster]]` with `[defaults]` applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    /// Unique name, `[a-z0-9][a-z0-9_-]*`.
    pub name: String,
    /// API server URL, overriding the kubeconfig's (may carry a path prefix).
    pub api_server: Option<Url>,
    /// CA bundle that verifies the API server, overriding the kubeconfig's.
    pub ca_file: Option<PathBuf>,
    /// Skip TLS verification (warned about at every start).
    pub insecure_skip_tls_verify: bool,
    /// The ServiceAccount whose tokens are requested.
    pub service_account: ServiceAccountRef,
    /// Where the token is written (default `{token_dir}/{name}.token`).
    pub token_file: PathBuf,
    /// Where a kubeconfig using `token_file` is written (`kubeconfig_file`,
    /// default `{kubeconfig_dir}/{name}.kubeconfig`; `None`: not written).
    pub kubeconfig_file: Option<PathBuf>,
    /// Requested audiences (empty: the API server's default).
    pub audiences: Vec<String>,
    /// Requested lifetime (default 1 h).
    pub expiration: Duration,
    /// Fraction of the lifetime after which to refresh, in (0, 1) (default
    /// 0.8; 0.5 for a self-renewing cluster that does not set its own).
    pub refresh_at: f64,
    /// Mode of the token file (default 0o640).
    pub file_mode: u32,
    /// Group that owns the token file (default: none, no chgrp).
    pub file_group: Option<String>,
    /// How mcprom authenticates.
    pub credentials: Credentials,
    /// Self-renewal only: stop renewing once the chain started by
    /// `mcprom seed` is older than this (default: `None`, no limit).
    pub max_chain_age: Option<Duration>,
    /// Whether and how often the API server is asked whether the token works.
    pub verify: Verify,
}

/// `verify` and `verify_interval`: asking the API server, with the token
/// itself (a SelfSubjectReview), whether it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verify {
    /// Review every new token before it is written, and the current one
    /// every `interval` (default true).
    pub enabled: bool,
    /// How often the token in use is reviewed (default 1 h; jittered).
    pub interval: Duration,
}

impl Default for Verify {
    fn default() -> Self {
        Verify {
            enabled: true,
            interval: DEFAULT_VERIFY_INTERVAL,
        }
    }
}

/// Default `verify_interval`: at 10,000 clusters one review every 0.36 s
/// (2.8 per second, fewer than the 3.5 TokenRequests per second of 1 h
/// tokens); at 1,000 clusters 0.28 per second, ~0.04 % of a core. A token
/// Prometheus sees refused is reviewed sooner anyway (the consumer check).
pub const DEFAULT_VERIFY_INTERVAL: Duration = Duration::from_secs(3600);

impl ClusterSettings {
    /// Files this cluster reads to authenticate (CA, kubeconfig, token, cert, key).
    pub fn input_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.ca_file.iter().cloned().collect();
        match &self.credentials {
            Credentials::Kubeconfig { path, .. } => files.push(path.clone()),
            Credentials::TokenFile(path) => files.push(path.clone()),
            Credentials::ClientCert { cert, key } => {
                files.push(cert.clone());
                files.push(key.clone());
            }
            Credentials::SelfRenew => {}
        }
        files
    }
}

/// How to invoke mcprom with the config file `config`: `mcprom`, or
/// `mcprom --config PATH` when it is not the default.
pub fn mcprom_command(config: &Path) -> String {
    if config == Path::new(super::DEFAULT_PATH) {
        "mcprom".to_owned()
    } else {
        format!("mcprom --config {}", shell_word(&config.to_string_lossy()))
    }
}

/// The exact command that re-seeds `cluster`, e.g.
/// `kubectl create token prometheus -n kube-system --duration 24h | mcprom seed prod`.
pub fn reseed_command(config: &Path, cluster: &ClusterSettings) -> String {
    format!(
        "kubectl create token {} -n {} --duration 24h | {} seed {}",
        cluster.service_account.name,
        cluster.service_account.namespace,
        mcprom_command(config),
        cluster.name
    )
}

/// Quote `word` for a POSIX shell when it needs it.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@,".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
impl ClusterSettings {
    /// A cluster for unit tests: "prod" at https://10.0.0.1:6443, minting
    /// 1-hour tokens for kube-system/prometheus into
    /// /var/lib/mcprom/tokens/prod.token, refreshed at 0.8, self-renewing;
    /// each test changes what it is about.
    pub(crate) fn example() -> ClusterSettings {
        ClusterSettings {
            name: "prod".into(),
            api_server: Some("https://10.0.0.1:6443".parse().unwrap()),
            ca_file: None,
            insecure_skip_tls_verify: false,
            service_account: ServiceAccountRef {
                namespace: "kube-system".into(),
                name: "prometheus".into(),
            },
            token_file: "/var/lib/mcprom/tokens/prod.token".into(),
            kubeconfig_file: None,
            audiences: vec![],
            expiration: Duration::from_secs(3600),
            refresh_at: 0.8,
            file_mode: 0o640,
            file_group: None,
            credentials: Credentials::SelfRenew,
            max_chain_age: None,
            verify: Verify::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reseed_command_quotes_what_a_shell_would_split() {
        assert_eq!(shell_word("/etc/mcprom.toml"), "/etc/mcprom.toml");
        assert_eq!(shell_word("/tmp/a b/it's.toml"), r"'/tmp/a b/it'\''s.toml'");
    }
}
