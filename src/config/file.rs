//! The raw configuration file: serde structs that mirror `/etc/mcprom.toml`.
//!
//! Nothing here is validated beyond TOML types; `validate.rs` turns these
//! into [`Settings`](super::Settings). Every key is optional here (required
//! keys are checked by the validator, which can then point at the table that
//! lacks them), and every value the validator checks is [`Spanned`] so its
//! errors can name the line and column. Every struct denies unknown keys.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Visitor};
use serde_spanned::Spanned;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[prometheus]`.
    pub prometheus: Option<Spanned<PrometheusFile>>,
    /// `[defaults]`.
    pub defaults: Option<Spanned<DefaultsFile>>,
    /// `[metrics]`.
    pub metrics: Option<Spanned<MetricsFile>>,
    /// `[control]`.
    pub control: Option<Spanned<ControlFile>>,
    /// `[limits]`.
    pub limits: Option<Spanned<LimitsFile>>,
    /// `[[cluster]]` entries in file order.
    #[serde(default)]
    pub cluster: Vec<Spanned<ClusterFile>>,
    /// `[[consumer]]` entries in file order.
    #[serde(default)]
    pub consumer: Vec<Spanned<ConsumerFile>>,
}

/// `[prometheus]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusFile {
    /// Base URL (default `http://127.0.0.1:9090`).
    pub url: Option<Spanned<String>>,
    /// `on_rotation` (default) or `never`.
    pub reload: Option<Spanned<String>>,
    /// Duration of one reload request (default `60s`).
    pub timeout: Option<Spanned<String>>,
    /// Quiet period that coalesces rotations (default `2s`).
    pub delay: Option<Spanned<String>>,
    /// CA of Prometheus's web certificate (default: system roots).
    pub ca_file: Option<Spanned<String>>,
    /// Basic-auth user (requires `password_file`).
    pub username: Option<Spanned<String>>,
    /// Basic-auth password file (requires `username`).
    pub password_file: Option<Spanned<String>>,
    /// Bearer token file (exclusive with basic auth).
    pub bearer_token_file: Option<Spanned<String>>,
}

/// `[defaults]`: inherited by every `[[cluster]]` unless it overrides.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsFile {
    /// Directory of default token files (default `/var/lib/mcprom/tokens`).
    pub token_dir: Option<Spanned<String>>,
    /// Requested token lifetime (default `1h`).
    pub expiration: Option<Spanned<String>>,
    /// Refresh after this fraction of the lifetime (default 0.8).
    pub refresh_at: Option<Spanned<f64>>,
    /// Token file mode, a quoted octal string (default `"0640"`).
    pub file_mode: Option<Spanned<ModeValue>>,
    /// Group of the token files (default: unset, no chgrp).
    pub file_group: Option<Spanned<String>>,
    /// Review tokens with the API server (default true).
    pub verify: Option<Spanned<bool>>,
    /// How often the token in use is reviewed (default `1h`).
    pub verify_interval: Option<Spanned<String>>,
    /// Write `{kubeconfig_dir}/{name}.kubeconfig` for every cluster (default: unset, none).
    pub kubeconfig_dir: Option<Spanned<String>>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    /// Listen address (default `127.0.0.1:9719`; `""` disables).
    pub listen: Option<Spanned<String>>,
}

/// `[control]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlFile {
    /// Control socket path (default `/run/mcprom/control.sock`).
    pub socket: Option<Spanned<String>>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// TokenRequests in flight at once (default 32, at least 1).
    pub concurrent_requests: Option<Spanned<i64>>,
    /// How long one kubeconfig exec plugin run may take (default "30s").
    pub exec_timeout: Option<Spanned<String>>,
}

/// One `[[cluster]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Unique name (required).
    pub name: Option<Spanned<String>>,
    /// API server URL (required unless the credential is a kubeconfig).
    pub api_server: Option<Spanned<String>>,
    /// CA bundle of the API server.
    pub ca_file: Option<Spanned<String>>,
    /// Skip TLS verification (default false).
    pub insecure_skip_tls_verify: Option<Spanned<bool>>,
    /// `namespace/name` (required).
    pub service_account: Option<Spanned<String>>,
    /// Output token file (default `{token_dir}/{name}.token`).
    pub token_file: Option<Spanned<String>>,
    /// Output kubeconfig using the token file (default `{kubeconfig_dir}/{name}.kubeconfig`, or none).
    pub kubeconfig_file: Option<Spanned<String>>,
    /// Requested audiences (default: none, the API server's default).
    pub audiences: Option<Spanned<Vec<Spanned<String>>>>,
    /// Overrides `[defaults] expiration`.
    pub expiration: Option<Spanned<String>>,
    /// Overrides `[defaults] refresh_at`.
    pub refresh_at: Option<Spanned<f64>>,
    /// Overrides `[defaults] file_mode`.
    pub file_mode: Option<Spanned<ModeValue>>,
    /// Overrides `[defaults] file_group`.
    pub file_group: Option<Spanned<String>>,
    /// Self-renewal only: maximum age of the token chain (default: unset, no limit).
    pub max_chain_age: Option<Spanned<String>>,
    /// Overrides `[defaults] verify`.
    pub verify: Option<Spanned<bool>>,
    /// Overrides `[defaults] verify_interval`.
    pub verify_interval: Option<Spanned<String>>,
    /// `[cluster.credentials]` (required).
    pub credentials: Option<Spanned<CredentialsFile>>,
}

/// `[cluster.credentials]`: exactly one way for mcprom to authenticate.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsFile {
    /// Kubeconfig path.
    pub kubeconfig: Option<Spanned<String>>,
    /// Kubeconfig context (only with `kubeconfig`).
    pub context: Option<Spanned<String>>,
    /// Bearer token file, re-read on every use.
    pub token_file: Option<Spanned<String>>,
    /// Client certificate (PEM), with `client_key`.
    pub client_cert: Option<Spanned<String>>,
    /// Client key (PEM), with `client_cert`.
    pub client_key: Option<Spanned<String>>,
    /// `self = true`: renew with the cluster's own current token.
    #[serde(rename = "self")]
    pub self_renew: Option<Spanned<bool>>,
}

/// A `file_mode` as written: the right form is a string, but an integer is
/// accepted by the parser so the validator can explain what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeValue {
    /// `file_mode = "0640"`.
    Text(String),
    /// `file_mode = 640` (always rejected, with a hint).
    Integer(i64),
}

impl<'de> Deserialize<'de> for ModeValue {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ModeVisitor;
        impl Visitor<'_> for ModeVisitor {
            type Value = ModeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quoted octal string such as \"0640\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ModeValue, E> {
                Ok(ModeValue::Text(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ModeValue, E> {
                Ok(ModeValue::Integer(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ModeValue, E> {
                Ok(ModeValue::Integer(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        deserializer.deserialize_any(ModeVisitor)
    }
}

/// One `[[consumer]]`: something besides `[prometheus]` to reload after
/// token files change.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerFile {
    /// Unique name (required; not "prometheus").
    pub name: Option<Spanned<String>>,
    /// Base URL: `POST {url}/-/reload` (exclusive with `command`).
    pub url: Option<Spanned<String>>,
    /// Argv to run, no shell (exclusive with `url`).
    pub command: Option<Spanned<Vec<Spanned<String>>>>,
    /// Only rotations of these clusters (default: every cluster).
    pub clusters: Option<Spanned<Vec<Spanned<String>>>>,
    /// Quiet period that coalesces rotations (default `2s`).
    pub delay: Option<Spanned<String>>,
    /// One reload request, or one command run (default `60s`).
    pub timeout: Option<Spanned<String>>,
    /// `url` only: CA of the web certificate (default: system roots).
    pub ca_file: Option<Spanned<String>>,
    /// `url` only: basic-auth user (requires `password_file`).
    pub username: Option<Spanned<String>>,
    /// `url` only: basic-auth password file (requires `username`).
    pub password_file: Option<Spanned<String>>,
    /// `url` only: bearer token file (exclusive with basic auth).
    pub bearer_token_file: Option<Spanned<String>>,
}
