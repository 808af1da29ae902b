//! TLS listeners: one per cluster (own port) or one shared listener that
//! routes `/clusters/<name>/...` to its cluster.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::api::{self, ConnInfo, DropConnection, Resp, Settings};
use super::cluster::ClusterRef;
use super::pki;
use super::rbac::Identity;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where requests on a listener go.
#[derive(Clone)]
pub(crate) enum Routes {
    /// Every request belongs to this cluster.
    Single(ClusterRef),
    /// `/clusters/<name>/<api path>`.
    Shared(Arc<HashMap<String, ClusterRef>>),
}

/// Everything a listener task needs.
#[derive(Clone)]
pub(crate) struct Listener {
    pub settings: Arc<Settings>,
    pub tls: TlsAcceptor,
    pub routes: Routes,
    pub tracker: TaskTracker,
}

impl Listener {
    /// Accepts connections until `cancel`; each connection is cancelled with it.
    pub async fn run(self, listener: TcpListener, cancel: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((tcp, _peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let this = self.clone();
                    let conn_cancel = cancel.child_token();
                    self.tracker.spawn(async move {
                        tokio::select! {
                            () = this.connection(tcp, conn_cancel.clone()) => {}
                            () = conn_cancel.cancelled() => {}
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn connection(&self, tcp: tokio::net::TcpStream, cancel: CancellationToken) {
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.tls.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => return,
        };
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| Some((pki::identity_of(c)?, c)))
            .map(|((user, mut groups), der)| {
                groups.push("system:authenticated".into());
                let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
                let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
                Identity {
                    user,
                    groups,
                    credential_id: Some(format!("X509SHA256={hex}")),
                    uid: None,
                }
            });
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let info = Arc::new(ConnInfo { cert, cancel });
        // The connection's handshake is counted for the cluster of its
        // first request (a shared listener learns the cluster from the path).
        let first = Arc::new(AtomicBool::new(true));
        let this = self.clone();
        let service = service_fn(move |req| {
            let this = this.clone();
            let info = info.clone();
            let handshake = first.swap(false, Ordering::Relaxed).then_some(resumed);
            async move { this.dispatch(&info, req, handshake).await }
        });
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }

    async fn dispatch(
        &self,
        info: &ConnInfo,
        req: http::Request<Incoming>,
        handshake: Option<bool>,
    ) -> Result<Resp, DropConnection> {
        match &self.routes {
            Routes::Single(cluster) => {
                if let Some(resumed) = handshake {
                    cluster.record_handshake(resumed);
                }
                let path = req.uri().path().to_string();
                api::serve(&self.settings, cluster, info, req, &path).await
            }
            Routes::Shared(clusters) => {
                let full = req.uri().path();
                let Some((name, rest)) = split_cluster_prefix(full) else {
                    return Ok(api::status_resp(
                        404,
                        "NotFound",
                        "the server could not find the requested resource (expected /clusters/<name>/...)",
                        Some(serde_json::json!({})),
                    ));
                };
                let Some(cluster) = clusters.get(name) else {
                    return Ok(api::status_resp(
                        404,
                        "NotFound",
                        &format!("cluster \"{name}\" not found"),
                        Some(serde_json::json!({})),
                    ));
                };
                if cluster.is_down() {
                    return Err(DropConnection);
                }
                if let Some(resumed) = handshake {
                    cluster.record_handshake(resumed);
                }
                let rest = rest.to_string();
                api::serve(&self.settings, cluster, info, req, &rest).await
            }
        }
    }
}

/// `/clusters/c1/api/v1` → `("c1", "/api/v1")`.
fn split_cluster_prefix(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/clusters/")?;
    match rest.find('/') {
        Some(i) => Some((&rest[..i], &rest[i..])),
        None => Some((rest, "/")),
    }
}

/// An own-port cluster's listener that can be closed (`down`) and rebound
/// on the same address (`up`).
pub(crate) struct OwnPort {
    pub addr: SocketAddr,
    listener: Listener,
    parent: CancellationToken,
    running: tokio::sync::Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

impl OwnPort {
    /// Starts serving on an already bound listener.
    pub fn start(
        listener: Listener,
        tcp: TcpListener,
        parent: CancellationToken,
    ) -> anyhow::Result<Self> {
        let addr = tcp.local_addr()?;
        let this = Self {
            addr,
            listener,
            parent,
            running: tokio::sync::Mutex::new(None),
        };
        let running = this.spawn(tcp);
        this.running
            .try_lock()
            .map(|mut r| *r = Some(running))
            .map_err(|_| anyhow::anyhow!("listener state busy at start"))?;
        Ok(this)
    }

    fn spawn(&self, tcp: TcpListener) -> (CancellationToken, JoinHandle<()>) {
        let cancel = self.parent.child_token();
        let task = tokio::spawn(self.listener.clone().run(tcp, cancel.clone()));
        (cancel, task)
    }

    /// Closes the listener and every connection; returns once the port refuses connections.
    pub async fn down(&self) {
        if let Some((cancel, task)) = self.running.lock().await.take() {
            cancel.cancel();
            let _ = task.await;
        }
    }

    /// Rebinds the same address and serves again (no-op when already up).
    pub async fn up(&self) -> anyhow::Result<()> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Ok(());
        }
        let mut attempt = 0;
        let tcp = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if attempt < 50 && e.kind() == std::io::ErrorKind::AddrInUse => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("failed to rebind {}", self.addr));
                }
            }
        };
        *running = Some(self.spawn(tcp));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_prefixes_split_into_name_and_api_path() {
        assert_eq!(
            split_cluster_prefix("/clusters/c1/api/v1"),
            Some(("c1", "/api/v1"))
        );
        assert_eq!(split_cluster_prefix("/clusters/c1"), Some(("c1", "/")));
        assert_eq!(split_cluster_prefix("/api/v1"), None);
    }
}
