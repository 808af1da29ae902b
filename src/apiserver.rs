//! The one way mcprom talks to a Kubernetes API server.
//!
//! Everything that calls an API server goes through here: the issuer
//! (TokenRequest and the SelfSubjectReview of a token), `check --online`,
//! `scrape-config --static` (listing nodes) and `rbac` (reading the
//! kubeconfig's cluster and user). This module owns:
//!
//! - building the client configuration from a cluster's settings
//!   ([`config`]): kubeconfig and context, token file, client certificate,
//!   `ca_file`, `api_server` (with its path prefix), proxy, exec plugins,
//!   timeouts, kube's own retries off;
//! - sending one request with a time limit and a cap on the answer
//!   ([`send`]);
//! - classifying a failure into the reason set of
//!   `mcprom_token_refresh_errors_total` ([`Failure::reason`],
//!   [`status_reason`]), the same for the daemon and the checklist;
//! - reading the server's `Status` message ([`status_message`]).
//!
//! The configuration is built afresh for each use: credential files are
//! re-read every time, so replacing them on disk needs no restart. The
//! daemon's issuer keeps, per cluster, only the TLS client configuration
//! built from them ([`tls::ClusterTls`]), rebuilt when the CA, the client
//! certificate or the server change, so that rotations resume the
//! cluster's TLS session; connections live for one exchange (a TokenRequest
//! and its review), so idle clusters pin no connections. One-shot commands
//! build a kube client afresh ([`client`]).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::kube::config::{AuthInfo, Cluster, KubeConfigOptions};
use bytes::Bytes;
use http::{Request, StatusCode};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use serde::Deserialize;

use crate::config::{ClusterSettings, Credentials, input};

pub mod tls;

/// Why a request to an API server got no HTTP answer, or could not be
/// made. Each kind maps to one reason of the metrics ([`Failure::reason`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// A credential, CA or kubeconfig could not be read or understood, or
    /// no client could be built from them.
    #[error("{0}")]
    Config(String),
    /// Connection refused, reset or dropped, DNS failure, …
    #[error("API server unreachable: {0}")]
    Unreachable(String),
    /// The connection or an answer timed out inside the client (its
    /// connect or read timeout).
    #[error("API server unreachable: timed out: {0}")]
    TimedOut(String),
    /// No answer within the request's time limit.
    #[error("no answer from the API server within {0:?}")]
    Timeout(Duration),
    /// The TLS handshake failed on a certificate problem or a TLS alert.
    #[error("TLS verification of the API server failed: {0}")]
    Tls(String),
}

impl Failure {
    /// The `reason` label of `mcprom_token_refresh_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            // A local problem shares the label of a request the server
            // refused as invalid: the reason set is fixed.
            Failure::Config(_) => "invalid",
            Failure::Unreachable(_) | Failure::TimedOut(_) | Failure::Timeout(_) => "unreachable",
            Failure::Tls(_) => "tls",
        }
    }
}

/// The `reason` label for an HTTP error status from an API server.
pub fn status_reason(code: u16) -> &'static str {
    match code {
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        400 | 422 => "invalid",
        429 => "throttled",
        _ => "server_error",
    }
}

/// Classify a failure of the kube client by its text. Only certificate
/// problems and TLS alerts are TLS failures: a connection the server drops
/// mid-request ("peer closed connection without sending TLS close_notify",
/// "tls handshake eof") is the server going away, not a verification
/// failure.
pub fn classify(error: &::kube::Error) -> Failure {
    classify_text(crate::text::chain(error))
}

fn classify_text(text: String) -> Failure {
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("unknownca")
        || lower.contains("fatal alert")
    {
        Failure::Tls(text)
    } else if lower.contains("timed out") || lower.contains("timeout") || lower.contains("elapsed")
    {
        Failure::TimedOut(text)
    } else {
        Failure::Unreachable(text)
    }
}

/// The kube configuration for a cluster: credentials, `api_server` and
/// `ca_file` overrides, TLS, timeouts, kube's own retries off. An exec
/// plugin runs here ([`crate::exec`], at most `exec_timeout`), never inside
/// the kube client.
pub async fn config(
    cluster: &ClusterSettings,
    timeout: Duration,
    exec_timeout: Duration,
) -> Result<::kube::Config, Failure> {
    let mut config = match &cluster.credentials {
        Credentials::Kubeconfig { path, context } => {
            let kubeconfig = input::read_kubeconfig(path)
                .map_err(|e| Failure::Config(format!("kubeconfig {}: {e}", path.display())))?;
            let options = KubeConfigOptions {
                context: context.clone(),
                ..KubeConfigOptions::default()
            };
            ::kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| {
                    Failure::Config(format!(
                        "kubeconfig {}: {}",
                        path.display(),
                        crate::text::chain(&e)
                    ))
                })?
        }
        other => {
            let url = cluster.api_server.as_ref().ok_or_else(|| {
                Failure::Config("api_server is required without a kubeconfig".into())
            })?;
            let mut config = ::kube::Config::new(parse_uri(url)?);
            let b64 = |pem: &[u8]| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(pem)
            };
            match other {
                Credentials::TokenFile(path) => {
                    let token = input::read_token(path)
                        .map_err(|e| input_error("credentials.token_file", path, e))?;
                    config.auth_info.token = Some(token.into());
                }
                Credentials::ClientCert { cert, key } => {
                    let cert_pem = input::read(cert)
                        .and_then(|pem| input::parse_certificates(&pem).map(|_| pem))
                        .map_err(|e| input_error("credentials.client_cert", cert, e))?;
                    let key_pem = input::read_private_key(key)
                        .map_err(|e| input_error("credentials.client_key", key, e))?;
                    config.auth_info.client_certificate_data = Some(b64(&cert_pem));
                    config.auth_info.client_key_data = Some(b64(&key_pem).into());
                }
                Credentials::SelfRenew => {
                    // The self-renewing issuer reads it first and says how
                    // to seed it (`selfrenew::SelfRenewing`).
                    let token = input::read_token(&cluster.token_file).map_err(|e| {
                        Failure::Config(format!(
                            "token_file {} (the self-renewal credential): {}; seed it with \
                             `mcprom seed {}`",
                            cluster.token_file.display(),
                            std::io::Error::from(e),
                            cluster.name
                        ))
                    })?;
                    config.auth_info.token = Some(token.into());
                }
                Credentials::Kubeconfig { .. } => unreachable!("handled above"),
            }
            config
        }
    };
    crate::exec::resolve(&mut config, exec_timeout)
        .await
        .map_err(|e| Failure::Config(e.to_string()))?;
    if let Some(url) = &cluster.api_server {
        config.cluster_url = parse_uri(url)?;
    }
    let server = &config.cluster_url;
    if let Some(why) = crate::config::validate::plain_http_refused(
        server.scheme_str().unwrap_or_default(),
        server.host().unwrap_or_default(),
    ) {
        return Err(Failure::Config(format!("API server {server}: {why}")));
    }
    if let Some(ca) = &cluster.ca_file {
        config.root_cert = Some(read_ca(ca)?);
        config.root_cert_file = None;
    }
    if cluster.insecure_skip_tls_verify {
        config.accept_invalid_certs = true;
    }
    config.default_retry = false;
    config.connect_timeout = Some(timeout.min(Duration::from_secs(10)));
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    Ok(config)
}

/// `config` with `auth` as its only credential: a token shown to the
/// server (a SelfSubjectReview made with it, nodes listed with the managed
/// token) must not be outranked by a client certificate, which the API
/// server tries first.
pub fn with_credential(mut config: ::kube::Config, auth: AuthInfo) -> ::kube::Config {
    config.auth_info = auth;
    config
}

/// A kube client for `config`.
pub fn client(config: ::kube::Config) -> Result<::kube::Client, Failure> {
    ::kube::Client::try_from(config).map_err(|e| Failure::Config(crate::text::chain(&e)))
}

/// An API server's answer: status, headers, and the body up to the cap.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// The body, at most the cap given to [`send`].
    pub body: Bytes,
    /// Whether the body went on beyond the cap (the rest was not read).
    pub truncated: bool,
}

/// A `GET path` accepting `accept`.
pub fn get(path: &str, accept: &str) -> Request<Vec<u8>> {
    let mut request = Request::new(Vec::new());
    *request.method_mut() = http::Method::GET;
    *request.uri_mut() = uri(path);
    request
        .headers_mut()
        .insert(http::header::ACCEPT, header(accept));
    request
}

/// A `POST path` of a JSON body, accepting JSON.
pub fn post_json(path: &str, body: Vec<u8>) -> Request<Vec<u8>> {
    let mut request = Request::new(body);
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri(path);
    let headers = request.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, header("application/json"));
    headers.insert(http::header::ACCEPT, header("application/json"));
    request
}

/// Paths and media types are mcprom's own, built from validated names.
fn uri(path: &str) -> http::Uri {
    path.parse()
        .unwrap_or_else(|e| panic!("mcprom built an invalid request path {path:?}: {e}"))
}

fn header(value: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(value)
        .unwrap_or_else(|e| panic!("mcprom built an invalid header {value:?}: {e}"))
}

/// Send one request and read the answer (at most `cap` bytes of body),
/// all within `timeout`.
pub async fn send(
    client: &::kube::Client,
    request: Request<Vec<u8>>,
    timeout: Duration,
    cap: usize,
) -> Result<Answer, Failure> {
    let exchange = async {
        let response = client
            .send(request.map(::kube::client::Body::from))
            .await
            .map_err(|e| classify(&e))?;
        let (parts, body) = response.into_parts();
        let answer = crate::outside::read_body(body, cap)
            .await
            .map_err(|e| classify(&e))?;
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: answer.bytes,
            truncated: answer.truncated,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(Failure::Timeout(timeout)))
}

#[derive(Deserialize)]
struct StatusBody {
    message: Option<String>,
}

/// The server's message in an error answer: the `Status` object's
/// `message`, else the start of the body, else the status's reason phrase;
/// one line, capped, safe to show ([`crate::outside::text`]).
pub fn status_message(body: &[u8], code: StatusCode) -> String {
    message(body).unwrap_or_else(|| code.canonical_reason().unwrap_or("no message").to_owned())
}

/// The server's message in a body: the `Status` object's `message`, else
/// the start of the body; one line, capped, safe to show. `None` when the
/// body says nothing.
pub fn message(body: &[u8]) -> Option<String> {
    let message = serde_json::from_slice::<StatusBody>(body)
        .ok()
        .and_then(|s| s.message)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
    // Room for the hint that follows it within one message.
    let message: String = crate::outside::text(&message).chars().take(600).collect();
    (!message.trim().is_empty()).then_some(message)
}

/// The entry of a kubeconfig that one context selects. Paths in it are
/// absolute (kube resolves them against the kubeconfig's directory).
#[derive(Debug, Clone)]
pub struct KubeconfigEntry {
    /// The context's cluster.
    pub cluster: Cluster,
    /// The context's user (empty when the context names none).
    pub user: AuthInfo,
}

/// Read the kubeconfig at `path` and select `context` (default: its
/// current-context).
pub fn kubeconfig_entry(path: &Path, context: Option<&str>) -> Result<KubeconfigEntry, String> {
    let shown = path.display();
    let config = input::parse_kubeconfig(path).map_err(|e| format!("kubeconfig {shown}: {e}"))?;
    let name = match context.or(config.current_context.as_deref()) {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => {
            return Err(format!(
                "kubeconfig {shown} has no current-context (set credentials.context)"
            ));
        }
    };
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| format!("kubeconfig {shown} has no context {name:?}"))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| {
            format!(
                "kubeconfig {shown}: context {name:?} names cluster {:?}, which is not in the file",
                context.cluster
            )
        })?;
    let user = context
        .user
        .as_ref()
        .and_then(|u| config.auth_infos.iter().find(|a| &a.name == u))
        .and_then(|a| a.auth_info.clone())
        .unwrap_or_default();
    Ok(KubeconfigEntry { cluster, user })
}

/// When the credential in `config` expires, where that can be known: the
/// `exp` of a bearer token (inline or file) or the `notAfter` of a client
/// certificate (inline or file). Exec plugins and OIDC: unknown.
pub fn credential_expiry(config: &::kube::Config) -> Option<SystemTime> {
    use secrecy::ExposeSecret as _;
    let auth = &config.auth_info;
    let token = auth
        .token
        .as_ref()
        .map(|t| t.expose_secret().to_owned())
        .or_else(|| input::read_token(Path::new(auth.token_file.as_ref()?)).ok());
    if let Some(token) = token {
        return crate::token::Claims::peek(token.trim())
            .ok()
            .map(|c| c.expiry());
    }
    let pem = match (&auth.client_certificate_data, &auth.client_certificate) {
        (Some(data), _) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .ok()?
        }
        (None, Some(path)) => input::read(Path::new(path)).ok()?,
        (None, None) => return None,
    };
    certificate_not_after(&pem)
}

/// `notAfter` of the first certificate in a PEM bundle.
pub fn certificate_not_after(pem: &[u8]) -> Option<SystemTime> {
    let der = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

fn parse_uri(url: &url::Url) -> Result<http::Uri, Failure> {
    url.as_str()
        .trim_end_matches('/')
        .parse()
        .map_err(|e| Failure::Config(format!("api_server {url}: {e}")))
}

fn input_error(key: &str, path: &Path, error: input::InputError) -> Failure {
    Failure::Config(format!("{key} {}: {error}", path.display()))
}

/// Read a PEM bundle of CA certificates.
pub fn read_ca(path: &Path) -> Result<Vec<Vec<u8>>, Failure> {
    input::read_certificates(path).map_err(|e| input_error("ca_file", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_connection_is_unreachable_and_a_bad_certificate_is_tls() {
        for dropped in [
            "ServiceError: client error (SendRequest): connection error: peer closed connection without sending TLS close_notify: https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof",
            "ServiceError: client error (Connect): tls handshake eof",
            "ServiceError: client error (Connect): Connection reset by peer (os error 104)",
        ] {
            assert_eq!(
                classify_text(dropped.into()).reason(),
                "unreachable",
                "{dropped}"
            );
        }
        let ca = "ServiceError: client error (Connect): invalid peer certificate: UnknownIssuer";
        assert_eq!(classify_text(ca.into()).reason(), "tls");
        let alert = "client error (Connect): received fatal alert: BadCertificate";
        assert_eq!(classify_text(alert.into()).reason(), "tls");
        let slow = "ServiceError: client error (Connect): operation timed out";
        assert_eq!(classify_text(slow.into()), Failure::TimedOut(slow.into()));
    }

    #[test]
    fn status_messages_come_from_the_status_object_or_the_body() {
        let status = br#"{"kind":"Status","message":"nodes is forbidden: nope","code":403}"#;
        assert_eq!(
            status_message(status, StatusCode::FORBIDDEN),
            "nodes is forbidden: nope"
        );
        assert_eq!(
            status_message(b"upstream connect error", StatusCode::BAD_GATEWAY),
            "upstream connect error"
        );
        assert_eq!(
            status_message(b"", StatusCode::SERVICE_UNAVAILABLE),
            "Service Unavailable"
        );
    }

    #[test]
    fn a_kubeconfig_context_selects_its_cluster_and_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n\
             - name: ca\n  cluster:\n    server: https://a:6443\n    certificate-authority: a.crt\n\
             - name: cb\n  cluster:\n    server: https://b:6443\n\
             users:\n- name: ua\n  user:\n    tokenFile: t\n\
             contexts:\n- name: a\n  context:\n    cluster: ca\n    user: ua\n\
             - name: b\n  context:\n    cluster: cb\n",
        )
        .unwrap();
        let a = kubeconfig_entry(&path, None).unwrap();
        assert_eq!(a.cluster.server.as_deref(), Some("https://a:6443"));
        assert_eq!(
            a.cluster.certificate_authority.as_deref(),
            Some(dir.path().join("a.crt").to_str().unwrap())
        );
        assert!(a.user.token_file.is_some());
        let b = kubeconfig_entry(&path, Some("b")).unwrap();
        assert_eq!(b.cluster.server.as_deref(), Some("https://b:6443"));
        assert!(b.user.token_file.is_none());
        let e = kubeconfig_entry(&path, Some("c")).unwrap_err();
        assert!(e.contains("has no context \"c\""), "{e}");
        let e = kubeconfig_entry(&dir.path().join("missing"), None).unwrap_err();
        assert!(e.contains("missing"), "{e}");
    }
}
