//! The control socket: a Unix stream socket speaking one JSON line per
//! request and per answer. `mcprom status`, `mcprom rotate` and
//! `mcprom reload` are its clients.
//!
//! The socket is created with mode 0660 (the directory, `/run/mcprom`
//! under systemd, limits who reaches it further).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::state::{ClusterStatus, Phase};

/// A request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    /// Per-cluster status.
    Status,
    /// Refresh now (all clusters when the list is empty) and report.
    Rotate {
        /// Cluster names.
        #[serde(default)]
        clusters: Vec<String>,
    },
    /// Re-read the config file and report.
    Reload,
}

/// One cluster in `status --json` (a contract: field names and meanings stay).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterReport {
    /// Cluster name.
    pub name: String,
    /// `namespace/name`.
    pub service_account: String,
    /// Token file path.
    pub token_file: PathBuf,
    /// fresh | refreshing | backoff | expired | error | unknown.
    pub state: String,
    /// RFC 3339 or null.
    pub expires_at: Option<String>,
    /// RFC 3339 or null.
    pub issued_at: Option<String>,
    /// RFC 3339 or null.
    pub last_refresh: Option<String>,
    /// RFC 3339 or null.
    pub next_refresh: Option<String>,
    /// The last error or null.
    pub last_error: Option<String>,
    /// RFC 3339 or null: when the API server last confirmed the token
    /// authenticates as the ServiceAccount (SelfSubjectReview).
    #[serde(default)]
    pub verified_at: Option<String>,
    /// RFC 3339 or null: since when the API server rejects the token in the
    /// file before its expiry (null while it is accepted).
    #[serde(default)]
    pub rejected_since: Option<String>,
    /// How many tokens in use the API server stopped accepting before
    /// their expiry.
    #[serde(default)]
    pub rejections: u64,
    /// Prometheus jobs that read this cluster's token file; null while
    /// Prometheus has not been read (or cannot be).
    #[serde(default)]
    pub prometheus_jobs: Option<Vec<String>>,
    /// Targets of those jobs whose last scrape failed with 401/403; null
    /// when unknown.
    #[serde(default)]
    pub prometheus_targets_rejected: Option<u64>,
    /// The kubeconfig mcprom writes for the cluster (`kubeconfig_file`);
    /// null when none is configured.
    #[serde(default)]
    pub kubeconfig_file: Option<PathBuf>,
}

/// The `status --json` document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct StatusReport {
    /// Every configured cluster.
    pub clusters: Vec<ClusterReport>,
    /// Every `[[consumer]]` (`[prometheus]` is not among them).
    #[serde(default)]
    pub consumers: Vec<crate::consumers::ConsumerReport>,
}

/// Outcome of one cluster's rotation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RotateResult {
    /// Cluster name.
    pub cluster: String,
    /// Whether a new token was written.
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
}

/// An answer on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "answer", rename_all = "lowercase")]
pub enum Response {
    /// For [`Request::Status`].
    Status(StatusReport),
    /// For [`Request::Rotate`].
    Rotate {
        /// One per cluster asked for.
        results: Vec<RotateResult>,
    },
    /// For [`Request::Reload`].
    Reload {
        /// Whether the file was valid (and applied, if it changed).
        ok: bool,
        /// Whether anything changed.
        changed: bool,
        /// The validation error, when not ok.
        error: Option<String>,
    },
    /// The request could not be understood.
    Error {
        /// Why.
        message: String,
    },
}

pub use crate::text::rfc3339;

impl ClusterReport {
    /// From the daemon's state.
    pub fn from_status(s: &ClusterStatus) -> Self {
        ClusterReport {
            name: s.name.clone(),
            service_account: s.service_account.clone(),
            token_file: s.token_file.clone(),
            state: match s.state {
                Phase::Unknown => "unknown",
                Phase::Fresh => "fresh",
                Phase::Refreshing => "refreshing",
                Phase::Backoff => "backoff",
                Phase::Expired => "expired",
                Phase::Error => "error",
            }
            .to_owned(),
            expires_at: s.expires_at.map(rfc3339),
            issued_at: s.issued_at.map(rfc3339),
            last_refresh: s.last_refresh.map(rfc3339),
            next_refresh: s.next_refresh.map(rfc3339),
            last_error: s.last_error.clone(),
            verified_at: s.verified_at.map(rfc3339),
            rejected_since: s.rejected_since.map(rfc3339),
            rejections: s.rejections,
            prometheus_jobs: s.prometheus_jobs.clone(),
            prometheus_targets_rejected: s.prometheus_targets_rejected,
            kubeconfig_file: s.kubeconfig_file.clone(),
        }
    }
}

/// A request with the channel its answer goes back on.
pub type Incoming = (Request, oneshot::Sender<Response>);

/// Bind the control socket (replacing a stale one) with mode 0660.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a connection may stay silent before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve connections until `cancel`, handing each request to `requests`.
pub async fn serve(
    listener: UnixListener,
    requests: mpsc::Sender<Incoming>,
    cancel: CancellationToken,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut failures = 0;
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    failures = 0;
                    stream
                }
                Err(e) => {
                    if failures == 0 {
                        warn!(error = %e, "control socket accept failed");
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(crate::metrics::accept_backoff(failures)) => {}
                    }
                    failures += 1;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!("control socket: too many connections, closing a new one");
            drop(stream);
            continue;
        };
        let requests = requests.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                () = cancel.cancelled() => {}
                result = handle(stream, requests) => if let Err(e) = result {
                    debug!(error = %e, "control connection ended");
                },
            }
        });
    }
}

async fn handle(stream: UnixStream, requests: mpsc::Sender<Incoming>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(64 * 1024)).lines();
    loop {
        let Ok(line) = tokio::time::timeout(IDLE_TIMEOUT, lines.next_line()).await else {
            return Ok(());
        };
        let Some(line) = line? else {
            return Ok(());
        };
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if requests.send((request, tx)).await.is_err() {
                    return Ok(());
                }
                rx.await.unwrap_or(Response::Error {
                    message: "the daemon is shutting down".into(),
                })
            }
            Err(e) => Response::Error {
                message: format!("cannot understand the request: {e}"),
            },
        };
        let mut text = serde_json::to_string(&response).map_err(std::io::Error::other)?;
        text.push('\n');
        write.write_all(text.as_bytes()).await?;
    }
}

use tokio::io::AsyncReadExt as _;

/// Reaching the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens (the daemon is not running, or another socket path).
    #[error("cannot reach the mcprom daemon at {}: {source}", path.display())]
    Unreachable {
        /// Socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The conversation broke off.
    #[error("the mcprom daemon at {} did not answer: {reason}", path.display())]
    Broken {
        /// Socket path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Send one request and wait for its answer (at most `timeout`).
pub async fn call(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ClientError::Unreachable {
            path: path.to_owned(),
            source,
        })?;
    let broken = |reason: String| ClientError::Broken {
        path: path.to_owned(),
        reason,
    };
    let exchange = async {
        let (read, mut write) = stream.into_split();
        let mut text = serde_json::to_string(request).map_err(|e| broken(e.to_string()))?;
        text.push('\n');
        write
            .write_all(text.as_bytes())
            .await
            .map_err(|e| broken(e.to_string()))?;
        let mut line = String::new();
        BufReader::new(read)
            .read_line(&mut line)
            .await
            .map_err(|e| broken(e.to_string()))?;
        if line.is_empty() {
            return Err(broken("connection closed".into()));
        }
        serde_json::from_str(&line).map_err(|e| broken(e.to_string()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| broken(format!("no answer within {timeout:?}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_have_a_stable_wire_form() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"command":"status"}"#
        );
        let r: Request = serde_json::from_str(r#"{"command":"rotate"}"#).unwrap();
        assert_eq!(r, Request::Rotate { clusters: vec![] });
        let report = StatusReport {
            clusters: vec![ClusterReport {
                name: "c1".into(),
                service_account: "kube-system/p".into(),
                token_file: "/t".into(),
                state: "fresh".into(),
                expires_at: None,
                issued_at: None,
                last_refresh: None,
                next_refresh: None,
                last_error: None,
                verified_at: None,
                rejected_since: None,
                rejections: 0,
                prometheus_jobs: None,
                prometheus_targets_rejected: None,
                kubeconfig_file: None,
            }],
            consumers: vec![],
        };
        let json = serde_json::to_value(&report).unwrap();
        for key in [
            "name",
            "service_account",
            "token_file",
            "state",
            "expires_at",
            "issued_at",
            "last_refresh",
            "next_refresh",
            "last_error",
        ] {
            assert!(json["clusters"][0].get(key).is_some(), "{key}");
        }
        assert!(json["clusters"][0]["expires_at"].is_null());
    }

    #[tokio::test]
    async fn a_request_round_trips_over_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/control.sock");
        let listener = bind(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o660
        );
        let (tx, mut rx) = mpsc::channel::<Incoming>(1);
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, tx, cancel.clone()));
        tokio::spawn(async move {
            while let Some((request, reply)) = rx.recv().await {
                assert_eq!(request, Request::Reload);
                let _ = reply.send(Response::Reload {
                    ok: false,
                    changed: false,
                    error: Some("bad".into()),
                });
            }
        });
        let answer = call(&path, &Request::Reload, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            answer,
            Response::Reload {
                ok: false,
                changed: false,
                error: Some("bad".into())
            }
        );
        cancel.cancel();
        let missing = call(
            &dir.path().join("nope.sock"),
            &Request::Status,
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(missing, Err(ClientError::Unreachable { .. })));
    }
}
