//! The kubeconfig mcprom writes for a cluster (`kubeconfig_file`, or
//! `[defaults] kubeconfig_dir` = `{dir}/{name}.kubeconfig`), for the tools
//! that want a kubeconfig rather than a bare token: Prometheus's
//! `kubernetes_sd_configs.kubeconfig_file`, kubectl, k9s, vmagent, Alloy.
//!
//! Its user authenticates with `tokenFile:` = the cluster's managed token
//! file. client-go re-reads that file (at most a minute late), so the
//! kubeconfig never changes on rotation: it is written when a cluster
//! starts (before its first token, so before any reload it causes) and
//! checked before every token write, and replaced only when its text, mode
//! or group would differ: an unchanged kubeconfig keeps its mtime.
//!
//! What it holds, from the cluster's settings and, where they leave
//! something out, from the kubeconfig mcprom itself authenticates with
//! (the same [`Endpoint`] `mcprom scrape-config` uses):
//!
//! - `server`: `api_server` with its path prefix (Rancher's
//!   `/k8s/clusters/c-xxxxx`);
//! - the CA **by path** (`certificate-authority:`) when it is a file
//!   (`ca_file`, or the credential kubeconfig's `certificate-authority`),
//!   so a CA replaced on disk needs no rewrite; **embedded**
//!   (`certificate-authority-data:`) when the credential kubeconfig embeds
//!   it, because there is no file to point at (a CA changed there is picked
//!   up at the next check); nothing for the system roots;
//!   `insecure-skip-tls-verify: true` only when the cluster turned
//!   verification off;
//! - `tls-server-name` and `proxy-url` when the credential kubeconfig sets
//!   them;
//! - one user, one context, `current-context`, all named after the cluster.
//!
//! Written atomically like the token ([`crate::sink::write_atomically`]),
//! with the cluster's `file_mode` and `file_group`. A failure is logged and
//! retried at the next token write; it never holds up the token.

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tracing::{info, warn};

use crate::config::ClusterSettings;
use crate::render::scrape::{Ca, Endpoint};
use crate::sink::{self, Sink, SinkError};
use crate::token::Token;

/// Largest existing kubeconfig read for the comparison; anything larger is
/// not mcprom's and is replaced.
const MAX_COMPARED: u64 = 1 << 20;

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The cluster has no `kubeconfig_file`.
    NotConfigured,
    /// The file already said exactly this, with the right mode and group.
    Unchanged(PathBuf),
    /// The file was (re)written.
    Written(PathBuf),
}

/// Why the kubeconfig could not be written. The previous file, if any, is
/// untouched.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// The server or CA could not be worked out (e.g. the credential
    /// kubeconfig is missing).
    #[error("cannot work out the kubeconfig {}: {message}", path.display())]
    Endpoint {
        /// The kubeconfig to write.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Writing failed.
    #[error("cannot write the kubeconfig: {0}")]
    Write(#[from] SinkError),
}

#[derive(Serialize)]
struct File<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: [Named<ClusterEntry>; 1],
    users: [Named<UserEntry>; 1],
    contexts: [Named<ContextEntry<'a>>; 1],
    #[serde(rename = "current-context")]
    current_context: &'a str,
}

#[derive(Serialize)]
struct Named<T> {
    name: String,
    #[serde(flatten)]
    value: T,
}

#[derive(Serialize)]
struct ClusterEntry {
    cluster: ClusterFields,
}

#[derive(Serialize)]
struct ClusterFields {
    server: String,
    #[serde(
        rename = "certificate-authority",
        skip_serializing_if = "Option::is_none"
    )]
    certificate_authority: Option<String>,
    #[serde(
        rename = "certificate-authority-data",
        skip_serializing_if = "Option::is_none"
    )]
    certificate_authority_data: Option<String>,
    #[serde(
        rename = "insecure-skip-tls-verify",
        skip_serializing_if = "Option::is_none"
    )]
    insecure_skip_tls_verify: Option<bool>,
    #[serde(rename = "tls-server-name", skip_serializing_if = "Option::is_none")]
    tls_server_name: Option<String>,
    #[serde(rename = "proxy-url", skip_serializing_if = "Option::is_none")]
    proxy_url: Option<String>,
}

#[derive(Serialize)]
struct UserEntry {
    user: UserFields,
}

#[derive(Serialize)]
struct UserFields {
    #[serde(rename = "tokenFile")]
    token_file: String,
}

#[derive(Serialize)]
struct ContextEntry<'a> {
    context: ContextFields<'a>,
}

#[derive(Serialize)]
struct ContextFields<'a> {
    cluster: &'a str,
    user: &'a str,
}

/// The kubeconfig text for `cluster` reached at `endpoint`.
pub fn render(cluster: &ClusterSettings, endpoint: &Endpoint) -> String {
    use base64::Engine as _;
    let name = cluster.name.as_str();
    let (certificate_authority, certificate_authority_data, insecure) = match &endpoint.ca {
        Ca::File(file) => (Some(file.to_string_lossy().into_owned()), None, None),
        Ca::Embedded { pem, .. } => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(pem)),
            None,
        ),
        Ca::SystemRoots => (None, None, None),
        Ca::Insecure => (None, None, Some(true)),
    };
    let file = File {
        api_version: "v1",
        kind: "Config",
        clusters: [Named {
            name: name.to_owned(),
            value: ClusterEntry {
                cluster: ClusterFields {
                    server: endpoint.api_server(),
                    certificate_authority,
                    certificate_authority_data,
                    insecure_skip_tls_verify: insecure,
                    tls_server_name: endpoint.server_name.clone(),
                    proxy_url: endpoint.proxy_url.clone(),
                },
            },
        }],
        users: [Named {
            name: name.to_owned(),
            value: UserEntry {
                user: UserFields {
                    token_file: cluster.token_file.to_string_lossy().into_owned(),
                },
            },
        }],
        contexts: [Named {
            name: name.to_owned(),
            value: ContextEntry {
                context: ContextFields {
                    cluster: name,
                    user: name,
                },
            },
        }],
        current_context: name,
    };
    let header = format!(
        "Written by mcprom for cluster {name:?} (ServiceAccount {}).\n\
         The user's tokenFile is the token file mcprom keeps fresh: this file does not\n\
         change on rotation. mcprom replaces it when the cluster's settings change:\n\
         edit mcprom's config, not this file.\n",
        cluster.service_account
    );
    let body = serde_yaml_ng::to_string(&file).expect("a kubeconfig always serializes");
    format!("{}{body}", crate::render::comment(&header))
}

/// Write `cluster`'s kubeconfig unless it already says exactly that with
/// the cluster's mode and group (blocking: file I/O).
pub fn ensure(cluster: &ClusterSettings) -> Result<Outcome, KubeconfigError> {
    let Some(path) = &cluster.kubeconfig_file else {
        return Ok(Outcome::NotConfigured);
    };
    let endpoint = Endpoint::of(cluster).map_err(|e| KubeconfigError::Endpoint {
        path: path.clone(),
        message: match e {
            crate::render::RenderError::Cluster { message, .. } => message,
            other => other.to_string(),
        },
    })?;
    let text = render(cluster, &endpoint);
    let gid = match &cluster.file_group {
        None => None,
        Some(group) => Some(sink::lookup_group(group)?),
    };
    if is_current(path, text.as_bytes(), cluster.file_mode, gid) {
        return Ok(Outcome::Unchanged(path.clone()));
    }
    sink::check_target(path)?;
    sink::write_atomically(path, text.as_bytes(), cluster.file_mode, gid)?;
    Ok(Outcome::Written(path.clone()))
}

/// Whether `path` is a regular file holding exactly `text` with `mode`
/// (and group `gid`, when one is wanted). Never follows a link, never
/// blocks on a FIFO.
fn is_current(path: &Path, text: &[u8], mode: u32, gid: Option<u32>) -> bool {
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if !meta.file_type().is_file()
        || meta.mode() & 0o7777 != mode
        || gid.is_some_and(|gid| meta.gid() != gid)
        || meta.len() != text.len() as u64
    {
        return false;
    }
    let mut current = Vec::with_capacity(text.len());
    file.take(MAX_COMPARED).read_to_end(&mut current).is_ok() && current == text
}

/// [`ensure`], with the outcome logged: `info` when written, `warn` when it
/// failed. Returns whether the kubeconfig is now as it should be.
pub fn ensure_logged(cluster: &ClusterSettings) -> bool {
    match ensure(cluster) {
        Ok(Outcome::Written(path)) => {
            info!(cluster = %cluster.name, kubeconfig_file = %path.display(), "kubeconfig written");
            true
        }
        Ok(_) => true,
        Err(e) => {
            warn!(
                cluster = %cluster.name,
                error = %crate::text::chain(&e),
                "kubeconfig not written (the token is written all the same; retried before the next token)"
            );
            false
        }
    }
}

/// A token sink that makes sure the cluster's kubeconfig is in place
/// before each token write (a kubeconfig deleted, or a CA changed in the
/// credential kubeconfig, is repaired then). Without `kubeconfig_file` it
/// is the inner sink.
#[derive(Debug, Clone)]
pub struct WithKubeconfig<S> {
    inner: S,
    cluster: Arc<ClusterSettings>,
}

impl<S> WithKubeconfig<S> {
    /// `inner`, with `cluster`'s kubeconfig checked before each write.
    pub fn new(inner: S, cluster: Arc<ClusterSettings>) -> Self {
        WithKubeconfig { inner, cluster }
    }
}

impl<S: Sink> Sink for WithKubeconfig<S> {
    async fn write(&self, token: &Token) -> Result<(), SinkError> {
        if self.cluster.kubeconfig_file.is_some() {
            let cluster = self.cluster.clone();
            // Its outcome is logged; the token is written either way.
            let _ = tokio::task::spawn_blocking(move || ensure_logged(&cluster)).await;
        }
        self.inner.write(token).await
    }

    fn current(&self) -> Option<Token> {
        self.inner.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Credentials;
    use std::os::unix::fs::PermissionsExt as _;

    fn cluster(dir: &Path) -> ClusterSettings {
        ClusterSettings {
            api_server: Some(
                "https://rancher.example.com/k8s/clusters/c-m-abc12"
                    .parse()
                    .unwrap(),
            ),
            ca_file: Some("/etc/mcprom/prod/ca.crt".into()),
            token_file: dir.join("tokens/prod.token"),
            kubeconfig_file: Some(dir.join("kube/prod.kubeconfig")),
            ..ClusterSettings::example()
        }
    }

    fn parsed(path: &Path) -> kube::config::Kubeconfig {
        kube::config::Kubeconfig::read_from(path).unwrap()
    }

    #[test]
    fn the_kubeconfig_names_the_server_with_its_prefix_the_ca_by_path_and_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path());
        let path = c.kubeconfig_file.clone().unwrap();
        assert_eq!(ensure(&c).unwrap(), Outcome::Written(path.clone()));
        let k = parsed(&path);
        assert_eq!(k.current_context.as_deref(), Some("prod"));
        let cluster = k.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(
            cluster.server.as_deref(),
            Some("https://rancher.example.com/k8s/clusters/c-m-abc12")
        );
        assert_eq!(
            cluster.certificate_authority.as_deref(),
            Some("/etc/mcprom/prod/ca.crt")
        );
        assert_eq!(cluster.insecure_skip_tls_verify, None);
        let user = k.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(
            user.token_file.as_deref(),
            Some(c.token_file.to_str().unwrap())
        );
        assert!(user.token.is_none());
        let context = k.contexts[0].context.as_ref().unwrap();
        assert_eq!(
            (context.cluster.as_str(), context.user.as_deref()),
            ("prod", Some("prod"))
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn an_unchanged_kubeconfig_is_not_rewritten_and_a_changed_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cluster(dir.path());
        let path = c.kubeconfig_file.clone().unwrap();
        ensure(&c).unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        assert_eq!(ensure(&c).unwrap(), Outcome::Unchanged(path.clone()));
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
        c.file_mode = 0o600;
        assert_eq!(ensure(&c).unwrap(), Outcome::Written(path.clone()));
        c.api_server = Some("https://10.0.0.2:6443".parse().unwrap());
        assert_eq!(ensure(&c).unwrap(), Outcome::Written(path.clone()));
        let k = parsed(&path);
        assert_eq!(
            k.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some("https://10.0.0.2:6443")
        );
        std::fs::write(&path, "edited by hand").unwrap();
        assert_eq!(ensure(&c).unwrap(), Outcome::Written(path.clone()));
    }

    #[test]
    fn a_ca_embedded_in_the_credential_kubeconfig_is_embedded_with_its_tls_server_name() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        let data = base64::engine::general_purpose::STANDARD.encode(&ca);
        let credential = dir.path().join("admin.kubeconfig");
        std::fs::write(
            &credential,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: x\nclusters:\n- name: x\n  cluster:\n    \
                 server: https://10.1.2.3:6443/prefix\n    certificate-authority-data: {data}\n    \
                 tls-server-name: api.internal\ncontexts:\n- name: x\n  context:\n    cluster: x\n"
            ),
        )
        .unwrap();
        let mut c = cluster(dir.path());
        c.api_server = None;
        c.ca_file = None;
        c.credentials = Credentials::Kubeconfig {
            path: credential,
            context: None,
        };
        ensure(&c).unwrap();
        let k = parsed(c.kubeconfig_file.as_ref().unwrap());
        let cluster = k.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(
            cluster.server.as_deref(),
            Some("https://10.1.2.3:6443/prefix")
        );
        assert_eq!(
            cluster.certificate_authority_data.as_deref(),
            Some(data.as_str())
        );
        assert_eq!(cluster.tls_server_name.as_deref(), Some("api.internal"));
    }

    #[test]
    fn an_insecure_cluster_says_so_and_a_missing_credential_kubeconfig_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cluster(dir.path());
        c.insecure_skip_tls_verify = true;
        ensure(&c).unwrap();
        let k = parsed(c.kubeconfig_file.as_ref().unwrap());
        let cluster = k.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.insecure_skip_tls_verify, Some(true));
        assert!(cluster.certificate_authority.is_none());

        let mut c = cluster_without_server(dir.path());
        c.kubeconfig_file = Some(dir.path().join("other.kubeconfig"));
        let e = ensure(&c).unwrap_err().to_string();
        assert!(e.contains("missing.kubeconfig"), "{e}");
        assert!(!dir.path().join("other.kubeconfig").exists());
    }

    fn cluster_without_server(dir: &Path) -> ClusterSettings {
        ClusterSettings {
            api_server: None,
            credentials: Credentials::Kubeconfig {
                path: dir.join("missing.kubeconfig"),
                context: None,
            },
            ..cluster(dir)
        }
    }

    #[test]
    fn without_kubeconfig_file_nothing_is_written() {
        let c = ClusterSettings::example();
        assert_eq!(ensure(&c).unwrap(), Outcome::NotConfigured);
    }
}
