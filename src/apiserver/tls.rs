//! One TLS client configuration per cluster, kept from one request to the
//! next, so that connections resume the cluster's TLS session (a TLS 1.3
//! session ticket, which Go's server — every kube-apiserver — issues by
//! default) instead of paying a full handshake, and one connection per
//! exchange, so that a TokenRequest and the review of its token share it
//! where they may.
//!
//! [`ClusterTls`] keeps the rustls `ClientConfig` (and its session store)
//! of each set of TLS settings a cluster uses: the credential's, and the
//! review's (the token alone, without a client certificate). A config is
//! found by a fingerprint of everything that goes into it: the server
//! (scheme, host, port, `tls-server-name`), the CA certificates,
//! `insecure_skip_tls_verify`, and the client certificate and key (file
//! contents, not names). A change of any of them — a new CA, a renewed
//! client certificate, another server — finds no config, so a new one is
//! built with an empty session store: a session made under old trust or
//! with an old certificate is never resumed. The credential files are still
//! read for every request ([`super::config`]); only the TLS objects built
//! from them are kept.
//!
//! A session resumed with a client certificate authenticates as that
//! certificate on the server (Go restores the peer certificates from the
//! ticket), so the review, which must authenticate with the token alone,
//! has its own config and session store whenever the credential carries a
//! certificate (that config is the credential's, cloned without the
//! certificate, so the CA is parsed and held once); with a bearer-token
//! credential both share one config, and the review reuses the
//! TokenRequest's connection (HTTP keep-alive).
//!
//! A cluster whose next request is more than
//! [`crate::rotator::KEEP_TLS_WITHIN`] away drops its configs and sessions
//! ([`ClusterTls::forget`]): with the default 1 h tokens, refreshed every
//! 48 minutes, each refresh starts with full handshakes, and 10,000 idle
//! clusters hold ~40 MB less.
//!
//! The kube client over it keeps kube's layers: the base URI (with a
//! Rancher-style path prefix), authentication (bearer token, token file,
//! basic auth; client certificates are in the TLS config) and the extra
//! headers (impersonation). kube's own retries stay off. Through a proxy
//! (`proxy-url`), the client is kube's own, built afresh (no resumption).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::{
    DefaultServerNameResolver, FixedServerNameResolver, HttpsConnector, MaybeHttpsStream,
    ResolveServerName,
};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use kube::client::{Body, ConfigExt as _};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt as _};

use super::Failure;

/// How many TLS configs a cluster keeps: the credential's and the review's.
const KEEP: usize = 2;

/// The session store of one config: the newest session with the one server
/// it talks to. (rustls' `ClientSessionMemoryCache` reserves room for 8
/// tickets per server: a few KB per cluster at 10,000 clusters.) Go's
/// server sends one ticket per connection, and each connection uses one.
#[derive(Default)]
struct LastSession(Mutex<Slot>);

type Name = rustls_pki_types::ServerName<'static>;

#[derive(Default)]
struct Slot {
    kx_hint: Option<(Name, rustls::NamedGroup)>,
    tls12: Option<(Name, rustls::client::Tls12ClientSessionValue)>,
    tls13: Option<(Name, rustls::client::Tls13ClientSessionValue)>,
}

impl std::fmt::Debug for LastSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LastSession").finish_non_exhaustive()
    }
}

impl LastSession {
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn take_for<T>(slot: &mut Option<(Name, T)>, name: &rustls_pki_types::ServerName<'_>) -> Option<T> {
    match slot.take() {
        Some((n, value)) if &n == name => Some(value),
        other => {
            *slot = other;
            None
        }
    }
}

impl rustls::client::ClientSessionStore for LastSession {
    fn set_kx_hint(&self, server_name: Name, group: rustls::NamedGroup) {
        self.slot().kx_hint = Some((server_name, group));
    }

    fn kx_hint(
        &self,
        server_name: &rustls_pki_types::ServerName<'_>,
    ) -> Option<rustls::NamedGroup> {
        match &self.slot().kx_hint {
            Some((n, group)) if n == server_name => Some(*group),
            _ => None,
        }
    }

    fn set_tls12_session(&self, server_name: Name, value: rustls::client::Tls12ClientSessionValue) {
        self.slot().tls12 = Some((server_name, value));
    }

    fn tls12_session(
        &self,
        server_name: &rustls_pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        match &self.slot().tls12 {
            Some((n, value)) if n == server_name => Some(value.clone()),
            _ => None,
        }
    }

    fn remove_tls12_session(&self, server_name: &Name) {
        take_for(&mut self.slot().tls12, server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: Name,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.slot().tls13 = Some((server_name, value));
    }

    fn take_tls13_ticket(
        &self,
        server_name: &Name,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        take_for(&mut self.slot().tls13, server_name)
    }
}

static FULL: AtomicU64 = AtomicU64::new(0);
static RESUMED: AtomicU64 = AtomicU64::new(0);

/// TLS connections this process opened to API servers through
/// [`ClusterTls`]: `(full handshakes, resumed sessions)`.
pub fn handshakes() -> (u64, u64) {
    (
        FULL.load(Ordering::Relaxed),
        RESUMED.load(Ordering::Relaxed),
    )
}

/// A SHA-256 over the TLS settings of a kube configuration.
pub type Fingerprint = [u8; 32];

struct Entry {
    fingerprint: Fingerprint,
    /// The fingerprint of its server and trust alone (no client identity).
    trust: Fingerprint,
    /// Whether it presents a client certificate.
    identity: bool,
    config: Arc<rustls::ClientConfig>,
}

/// No client certificate: the review's, derived from a credential's
/// config that has one.
#[derive(Debug)]
struct NoClientCert;

impl rustls::client::ResolvesClientCert for NoClientCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// The TLS client configurations of one cluster (see the module).
#[derive(Default)]
pub struct ClusterTls {
    /// Most recently used last; at most [`KEEP`].
    entries: Mutex<Vec<Entry>>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.lock().len();
        f.debug_struct("ClusterTls")
            .field("configs", &entries)
            .finish()
    }
}

impl ClusterTls {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The TLS client configuration for `config`: the kept one when its
    /// settings are unchanged, else a new one (with an empty session store)
    /// that replaces the least recently used. A config without a client
    /// certificate (the review's) is derived from a kept one with the same
    /// server and trust, minus its certificate: the parsed CA and verifier
    /// are shared, not built and held twice.
    pub fn client_config(
        &self,
        config: &kube::Config,
    ) -> Result<(Fingerprint, Arc<rustls::ClientConfig>), Failure> {
        self.config_for(config, fingerprints(config))
    }

    /// [`Self::client_config`] with the fingerprints of `config` taken
    /// already (they read the CA and credential files).
    fn config_for(
        &self,
        config: &kube::Config,
        Fingerprints {
            all: fingerprint,
            trust,
            identity,
        }: Fingerprints,
    ) -> Result<(Fingerprint, Arc<rustls::ClientConfig>), Failure> {
        let derived = {
            let mut entries = self.lock();
            if let Some(i) = entries.iter().position(|e| e.fingerprint == fingerprint) {
                let entry = entries.remove(i);
                let found = entry.config.clone();
                entries.push(entry);
                return Ok((fingerprint, found));
            }
            let source = if identity {
                None
            } else {
                entries.iter().find(|e| e.identity && e.trust == trust)
            };
            source.map(|e| {
                let mut derived = rustls::ClientConfig::clone(&e.config);
                derived.client_auth_cert_resolver = Arc::new(NoClientCert);
                derived
            })
        };
        let mut built = match derived {
            Some(derived) => derived,
            None => config
                .rustls_client_config()
                .map_err(|e| Failure::Config(crate::text::chain(&e)))?,
        };
        built.resumption = rustls::client::Resumption::store(Arc::new(LastSession::default()));
        let built = Arc::new(built);
        let mut entries = self.lock();
        entries.retain(|e| e.fingerprint != fingerprint);
        if entries.len() >= KEEP {
            entries.remove(0);
        }
        // Room for exactly KEEP (a first push would make room for 4).
        let room = KEEP - entries.len();
        entries.reserve_exact(room);
        entries.push(Entry {
            fingerprint,
            trust,
            identity,
            config: built.clone(),
        });
        Ok((fingerprint, built))
    }

    /// Drop every kept config and its sessions: the next connection makes
    /// a full handshake. For a cluster with nothing due for a long while,
    /// where holding them (~4 KB) saves too little CPU to be worth it.
    pub fn forget(&self) {
        let kept = std::mem::take(&mut *self.lock());
        drop(kept); // outside the lock
    }

    /// A kube client for `config`. It talks over `reuse` when that
    /// connection has the same TLS settings (a review right after its
    /// TokenRequest), else over a new connection with this cluster's kept
    /// TLS config. Returns the connection, to reuse; `None` through a
    /// proxy, where the client is kube's own.
    pub fn client(
        &self,
        config: kube::Config,
        reuse: Option<Connection>,
    ) -> Result<(kube::Client, Option<Connection>), Failure> {
        if config.proxy_url.is_some() {
            return Ok((super::client(config)?, None));
        }
        let prints = fingerprints(&config);
        let connection = match reuse {
            Some(c) if c.fingerprint == prints.all => c,
            _ => {
                let (fingerprint, tls) = self.config_for(&config, prints)?;
                Connection::new(&config, fingerprint, tls)?
            }
        };
        let service = ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .option_layer(
                config
                    .auth_layer()
                    .map_err(|e| Failure::Config(crate::text::chain(&e)))?,
            )
            .layer(
                config
                    .extra_headers_layer()
                    .map_err(|e| Failure::Config(crate::text::chain(&e)))?,
            )
            .service(connection.clone());
        Ok((
            kube::Client::new(service, config.default_namespace),
            Some(connection),
        ))
    }
}

/// The fingerprint of everything that goes into the TLS client config of
/// `config` (see the module). File contents are read here, as kube reads
/// them to build the config; a file that cannot be read counts as a
/// distinct value, so building the config reports the error.
pub fn fingerprint(config: &kube::Config) -> Fingerprint {
    fingerprints(config).all
}

struct Fingerprints {
    /// Everything.
    all: Fingerprint,
    /// The server and the trust in it: everything but the client identity.
    trust: Fingerprint,
    /// Whether there is a client certificate.
    identity: bool,
}

fn fingerprints(config: &kube::Config) -> Fingerprints {
    use secrecy::ExposeSecret as _;
    fn field(digest: &mut ring::digest::Context, tag: &str, bytes: &[u8]) {
        digest.update(tag.as_bytes());
        digest.update(&(bytes.len() as u64).to_le_bytes());
        digest.update(bytes);
    }
    let finish = |digest: ring::digest::Context| {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.finish().as_ref());
        out
    };
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let url = &config.cluster_url;
    field(
        &mut digest,
        "scheme",
        url.scheme_str().unwrap_or_default().as_bytes(),
    );
    field(
        &mut digest,
        "authority",
        url.authority().map_or("", |a| a.as_str()).as_bytes(),
    );
    field(
        &mut digest,
        "tls-server-name",
        config
            .tls_server_name
            .as_deref()
            .unwrap_or_default()
            .as_bytes(),
    );
    field(
        &mut digest,
        "insecure",
        &[u8::from(config.accept_invalid_certs)],
    );
    for ca in config.root_cert.iter().flatten() {
        field(&mut digest, "ca", ca);
    }
    if let Some(path) = &config.root_cert_file {
        field(&mut digest, "ca-file", path.as_os_str().as_encoded_bytes());
        field(
            &mut digest,
            "ca-file-contents",
            &read_or_marker(path.as_os_str().as_encoded_bytes()),
        );
    }
    let trust = finish(digest.clone());
    let auth = &config.auth_info;
    let identity = auth.client_key_data.is_some() || auth.client_key.is_some();
    match (&auth.client_certificate_data, &auth.client_certificate) {
        (Some(data), _) => field(&mut digest, "cert", data.as_bytes()),
        (None, Some(path)) => field(&mut digest, "cert-file", &read_or_marker(path.as_bytes())),
        (None, None) => {}
    }
    match (&auth.client_key_data, &auth.client_key) {
        (Some(data), _) => field(&mut digest, "key", data.expose_secret().as_bytes()),
        (None, Some(path)) => field(&mut digest, "key-file", &read_or_marker(path.as_bytes())),
        (None, None) => {}
    }
    Fingerprints {
        all: finish(digest),
        trust,
        identity,
    }
}

fn read_or_marker(path: &[u8]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    std::fs::read(path).unwrap_or_else(|e| format!("unreadable: {e}").into_bytes())
}

type Https = HttpsConnector<HttpConnector>;
type Stream = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// One HTTP/1.1 connection to an API server, opened on first use and kept
/// for the requests that follow while it lives (the TokenRequest and its
/// review). Requests go one at a time. Dropping every clone closes it.
#[derive(Clone)]
pub struct Connection {
    fingerprint: Fingerprint,
    connector: Https,
    connect_timeout: Duration,
    sender: Arc<tokio::sync::Mutex<Option<hyper::client::conn::http1::SendRequest<Body>>>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    fn new(
        config: &kube::Config,
        fingerprint: Fingerprint,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, Failure> {
        let connect_timeout = config.connect_timeout.unwrap_or(Duration::from_secs(30));
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let resolver: Arc<dyn ResolveServerName + Send + Sync> = match &config.tls_server_name {
            Some(name) => Arc::new(FixedServerNameResolver::new(
                rustls_pki_types::ServerName::try_from(name.clone())
                    .map_err(|e| Failure::Config(format!("tls-server-name {name:?}: {e}")))?,
            )),
            None => Arc::new(DefaultServerNameResolver::default()),
        };
        Ok(Connection {
            fingerprint,
            connector: HttpsConnector::new(http, tls, false, resolver),
            connect_timeout,
            sender: Arc::default(),
        })
    }

    /// Send `request` (an absolute URI, from kube's base-URI layer) over
    /// this connection, opening it (again) when it is not open. A request
    /// that was not sent because the connection had just closed is sent
    /// once more on a new one.
    async fn send(self, mut request: Request<Body>) -> Result<Response<Incoming>, BoxError> {
        let uri = request.uri().clone();
        if !request.headers().contains_key(http::header::HOST)
            && let Some(host) = host_header(&uri)
        {
            request.headers_mut().insert(http::header::HOST, host);
        }
        *request.uri_mut() = uri.path_and_query().map_or_else(
            || http::Uri::from_static("/"),
            |p| http::Uri::try_from(p.as_str()).unwrap_or_else(|_| http::Uri::from_static("/")),
        );
        let mut slot = self.sender.lock().await;
        let mut retried = false;
        loop {
            let open = match slot.take() {
                Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
                None => None,
            };
            let mut sender = match open {
                Some(sender) => sender,
                None => self.open(&uri).await?,
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    *slot = Some(sender);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !retried => {
                        retried = true;
                        request = unsent;
                    }
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    async fn open(
        &self,
        uri: &http::Uri,
    ) -> Result<hyper::client::conn::http1::SendRequest<Body>, BoxError> {
        let mut connector = self.connector.clone();
        let stream: Stream = tokio::time::timeout(self.connect_timeout, async {
            connector.ready().await?;
            connector.call(uri.clone()).await
        })
        .await
        .map_err(|_| -> BoxError {
            format!(
                "connecting to {uri} timed out after {:?}",
                self.connect_timeout
            )
            .into()
        })??;
        if let MaybeHttpsStream::Https(tls) = &stream {
            let kind = tls.inner().get_ref().1.handshake_kind();
            tracing::debug!(
                server = %uri.authority().map_or("", |a| a.as_str()),
                resumed = kind == Some(rustls::HandshakeKind::Resumed),
                "TLS connection"
            );
            let counter = match kind {
                Some(rustls::HandshakeKind::Resumed) => &RESUMED,
                _ => &FULL,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let (sender, connection) = hyper::client::conn::http1::handshake(stream).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "API server connection ended");
            }
        });
        Ok(sender)
    }
}

/// `Host` as hyper's pooled client sets it: the host, and the port unless
/// it is the scheme's default.
fn host_header(uri: &http::Uri) -> Option<http::HeaderValue> {
    let host = uri.host()?;
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let value = match uri.port_u16() {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    http::HeaderValue::from_str(&value).ok()
}

impl Service<Request<Body>> for Connection {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        Box::pin(self.clone().send(request))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mcprom_sim::{Sim, SimConfig};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(20);

    async fn version(client: &kube::Client) -> Result<http::StatusCode, Failure> {
        let request = super::super::get("/version", "application/json");
        Ok(super::super::send(client, request, TIMEOUT, 64 << 10)
            .await?
            .status)
    }

    /// Who the server says the client is (a SelfSubjectReview).
    async fn whoami(client: &kube::Client) -> String {
        let body = br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
        let request = super::super::post_json(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            body.to_vec(),
        );
        let answer = super::super::send(client, request, TIMEOUT, 64 << 10)
            .await
            .unwrap();
        let review: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        review["status"]["userInfo"]["username"]
            .as_str()
            .unwrap_or_else(|| panic!("no username in {review}"))
            .to_owned()
    }

    fn handshakes(sim: &Sim) -> (u64, u64) {
        let stats = sim.cluster("c1").unwrap().stats();
        (stats.tls_full_handshakes, stats.tls_resumed_handshakes)
    }

    #[tokio::test]
    async fn sessions_resume_per_settings_and_a_new_ca_or_identity_starts_afresh() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let sim = Sim::start(SimConfig {
            dir: dir.path().to_path_buf(),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let ready = sim.ready().clusters[0].clone();
        let kubeconfig = kube::config::Kubeconfig::read_from(&ready.kubeconfig).unwrap();
        // The admin: a client certificate, as in the benchmark.
        let admin = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        let tls = ClusterTls::default();

        let (client, _) = tls.client(admin.clone(), None).unwrap();
        assert_eq!(version(&client).await.unwrap(), 200);
        assert_eq!(
            handshakes(&sim),
            (1, 0),
            "the first connection is a full handshake"
        );

        // A new connection with the kept config resumes the session, and
        // keeps the certificate's identity.
        let (client, connection) = tls.client(admin.clone(), None).unwrap();
        assert_eq!(whoami(&client).await, "kubernetes-admin");
        assert_eq!(handshakes(&sim), (1, 1), "the second connection resumes");
        // Its connection carries the next request too (keep-alive).
        assert_eq!(version(&client).await.unwrap(), 200);
        assert_eq!(handshakes(&sim), (1, 1), "the connection was reused");

        // The token alone (the review) never rides on the certificate's
        // connection or session: the server must see the token's identity.
        let token_only = super::super::with_credential(
            admin.clone(),
            kube::config::AuthInfo {
                token: Some(sim.cluster("c1").unwrap().issuer_token().to_owned().into()),
                ..Default::default()
            },
        );
        let (client, _) = tls.client(token_only.clone(), connection).unwrap();
        assert_eq!(whoami(&client).await, "mcprom-issuer");
        assert_eq!(handshakes(&sim), (2, 1), "its own config: a full handshake");
        let (client, _) = tls.client(token_only.clone(), None).unwrap();
        assert_eq!(whoami(&client).await, "mcprom-issuer");
        assert_eq!(handshakes(&sim), (2, 2), "and its own session resumes");
        // Its config is the certificate's, derived (the CA parsed once),
        // minus the certificate.
        let (_, review_config) = tls.client_config(&token_only).unwrap();
        let (_, admin_config) = tls.client_config(&admin).unwrap();
        assert!(!review_config.client_auth_cert_resolver.has_certs());
        assert!(admin_config.client_auth_cert_resolver.has_certs());
        assert!(!Arc::ptr_eq(&review_config, &admin_config));

        // Another CA: a new config (empty session store) that does not trust
        // the server, although a session with it is kept.
        let other_ca = rcgen::generate_simple_self_signed(vec!["other".to_owned()]).unwrap();
        let mut distrusting = admin.clone();
        distrusting.root_cert = Some(vec![other_ca.cert.der().to_vec()]);
        let (kept, kept_config) = tls.client_config(&admin).unwrap();
        let (new, new_config) = tls.client_config(&distrusting).unwrap();
        assert_ne!(kept, new);
        assert!(!Arc::ptr_eq(&kept_config, &new_config));
        let (client, _) = tls.client(distrusting, None).unwrap();
        let failure = version(&client).await.unwrap_err();
        assert!(matches!(failure, Failure::Tls(_)), "{failure:?}");
        assert_eq!(handshakes(&sim), (2, 2), "no request went through");

        // A renewed client certificate is new settings too.
        let mut renewed = admin.clone();
        renewed.auth_info.client_certificate_data = Some(format!(
            "{}\n",
            admin.auth_info.client_certificate_data.clone().unwrap()
        ));
        assert_ne!(fingerprint(&renewed), fingerprint(&admin));
        assert_eq!(fingerprint(&admin.clone()), fingerprint(&admin));
        sim.shutdown().await;
    }
}
