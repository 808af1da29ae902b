//! Issuers mint tokens. The real one calls the cluster's TokenRequest API
//! through a kube client built from the cluster's credentials.
//!
//! The kube client is built afresh for each request and dropped after it:
//! credential files (kubeconfig, CA, client certificate, issuer token) are
//! therefore re-read on every rotation, so replacing them on disk needs no
//! restart, and 10,000 idle clusters pin no connections or TLS state.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, StatusCode};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use kube::config::KubeConfigOptions;
use rustls_pki_types::{CertificateDer, pem::PemObject};
use serde::Deserialize;

use crate::config::{ClusterSettings, Credentials, input};
use crate::token::{IssuedToken, Token};

/// What to ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSpec {
    /// Requested lifetime.
    pub expiration: Duration,
    /// Requested audiences (empty: the server's default).
    pub audiences: Vec<String>,
}

/// Mints tokens for one cluster's ServiceAccount.
pub trait Issuer: Send + Sync + 'static {
    /// Request a new token.
    fn issue(
        &self,
        spec: &TokenSpec,
    ) -> impl Future<Output = Result<IssuedToken, IssueError>> + Send;

    /// Ask the API server who `token` is (a SelfSubjectReview made with the
    /// token itself). `Err(IssueError::Rejected)` when the server does not
    /// accept it or says it is someone else; other errors when the question
    /// could not be asked. Issuers that cannot ask say
    /// [`Review::Unsupported`].
    fn review(&self, token: &Token) -> impl Future<Output = Result<Review, IssueError>> + Send {
        let _ = token;
        std::future::ready(Ok(Review::Unsupported))
    }

    /// Review a token just issued; a rejection is explained (e.g. which
    /// audiences the server accepts). Defaults to [`Issuer::review`].
    fn verify(
        &self,
        issued: &IssuedToken,
    ) -> impl Future<Output = Result<Review, IssueError>> + Send {
        self.review(&issued.token)
    }
}

/// What the API server said about a token it was shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Review {
    /// It authenticates as the configured ServiceAccount.
    Confirmed,
    /// The server has no SelfSubjectReview (404: Kubernetes before 1.28):
    /// the token cannot be checked this way.
    Unsupported,
    /// The token authenticated, but the server would not say as whom (403).
    Authenticated,
}

/// Why a TokenRequest failed. Messages quote the server, never a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IssueError {
    /// A credential or CA file could not be read or understood.
    #[error("{0}")]
    Config(String),
    /// Connection refused, reset, DNS failure, …
    #[error("API server unreachable: {0}")]
    Unreachable(String),
    /// No answer within the request timeout.
    #[error("no answer from the API server within {0:?}")]
    Timeout(Duration),
    /// The TLS handshake failed (wrong CA, wrong name, expired certificate).
    #[error("TLS verification of the API server failed: {0}")]
    Tls(String),
    /// 401: mcprom's own credential was not accepted.
    #[error(
        "the API server rejected mcprom's credential (401 {0}); renew the credential in [cluster.credentials]"
    )]
    Unauthorized(String),
    /// 403: authenticated, but not allowed to create tokens for the ServiceAccount.
    #[error(
        "forbidden (403): {0}; grant create on serviceaccounts/token for this ServiceAccount (`mcprom rbac` prints the rule)"
    )]
    Forbidden(String),
    /// 404: the ServiceAccount does not exist.
    #[error(
        "ServiceAccount not found (404: {0}); if it was deleted, every token issued for it stopped working too: recreate it and its RBAC"
    )]
    NotFound(String),
    /// 400/422: the request was refused as invalid.
    #[error("the API server refused the request ({code}): {message}")]
    Invalid {
        /// HTTP status.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// 429: too many requests.
    #[error("throttled by the API server (429): {message}")]
    Throttled {
        /// `Retry-After`, when sent.
        retry_after: Option<Duration>,
        /// The server's message.
        message: String,
    },
    /// Self-renewal: the API server no longer accepts the cluster's own
    /// token (it expired unrenewed, or the ServiceAccount was recreated);
    /// only `mcprom seed` repairs it. The message says how.
    #[error("{0}")]
    ChainBroken(String),
    /// Self-renewal: the chain reached `max_chain_age`, so mcprom no longer
    /// renews it. The message says how to re-seed.
    #[error("{0}")]
    ChainTooOld(String),
    /// The API server does not accept a token it issued (401 on a
    /// SelfSubjectReview made with it), or says it belongs to someone else.
    #[error("{0}")]
    Rejected(String),
    /// 5xx or an answer that is not a TokenRequest.
    #[error("API server error ({code}): {message}")]
    Server {
        /// HTTP status (0 when the body, not the status, was wrong).
        code: u16,
        /// The server's message.
        message: String,
    },
}

impl IssueError {
    /// The `reason` label of `mcprom_token_refresh_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            // A local problem (missing CA or credential file) shares the
            // label of a request the server refused as invalid: the
            // reason set is fixed; logs and status say which it was.
            IssueError::Config(_) => "invalid",
            IssueError::Unreachable(_) | IssueError::Timeout(_) => "unreachable",
            IssueError::Tls(_) => "tls",
            IssueError::Unauthorized(_) => "unauthorized",
            IssueError::Forbidden(_) => "forbidden",
            IssueError::NotFound(_) => "not_found",
            IssueError::Invalid { .. } => "invalid",
            IssueError::Throttled { .. } => "throttled",
            IssueError::Server { .. } => "server_error",
            IssueError::ChainBroken(_) => "chain_broken",
            IssueError::ChainTooOld(_) => "chain_too_old",
            IssueError::Rejected(_) => "rejected",
        }
    }

    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IssueError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The real issuer: TokenRequest through kube, one fresh client per request.
#[derive(Debug, Clone)]
pub struct KubeIssuer {
    cluster: Arc<ClusterSettings>,
    timeout: Duration,
    /// The configuration of the last TokenRequest, kept from `issue` to
    /// `verify` (only then: idle clusters pin nothing) so the review does
    /// not read and parse the credential files again.
    last_config: Arc<std::sync::Mutex<Option<kube::Config>>>,
    exec_timeout: Duration,
}

/// How long one TokenRequest may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl KubeIssuer {
    /// An issuer for `cluster`.
    pub fn new(cluster: Arc<ClusterSettings>, timeout: Duration) -> Self {
        KubeIssuer {
            cluster,
            timeout,
            last_config: Arc::default(),
            exec_timeout: crate::exec::DEFAULT_EXEC_TIMEOUT,
        }
    }

    /// How long a kubeconfig exec plugin may run (`[limits] exec_timeout`).
    pub fn with_exec_timeout(mut self, exec_timeout: Duration) -> Self {
        self.exec_timeout = exec_timeout;
        self
    }
}

/// Build the kube configuration for a cluster: credentials, `api_server`
/// and `ca_file` overrides, TLS, timeouts, kube's own retries off. An exec
/// plugin runs here ([`crate::exec`], at most the default exec timeout),
/// never inside the kube client.
pub async fn kube_config(
    cluster: &ClusterSettings,
    timeout: Duration,
) -> Result<kube::Config, IssueError> {
    kube_config_with(cluster, timeout, crate::exec::DEFAULT_EXEC_TIMEOUT).await
}

/// [`kube_config`] with an exec plugin time limit.
pub async fn kube_config_with(
    cluster: &ClusterSettings,
    timeout: Duration,
    exec_timeout: Duration,
) -> Result<kube::Config, IssueError> {
    let mut config = match &cluster.credentials {
        Credentials::Kubeconfig { path, context } => {
            let kubeconfig = input::read_kubeconfig(path)
                .map_err(|e| IssueError::Config(format!("kubeconfig {}: {e}", path.display())))?;
            let options = KubeConfigOptions {
                context: context.clone(),
                ..KubeConfigOptions::default()
            };
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| {
                    IssueError::Config(format!("kubeconfig {}: {}", path.display(), chain(&e)))
                })?
        }
        other => {
            let url = cluster.api_server.as_ref().ok_or_else(|| {
                IssueError::Config("api_server is required without a kubeconfig".into())
            })?;
            let mut config = kube::Config::new(parse_uri(url)?);
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
                    let token = input::read_token(&cluster.token_file)
                        .map_err(|e| crate::selfrenew::unreadable_token(cluster, &e.into()))?;
                    config.auth_info.token = Some(token.into());
                }
                Credentials::Kubeconfig { .. } => unreachable!("handled above"),
            }
            config
        }
    };
    crate::exec::resolve(&mut config, exec_timeout).await?;
    if let Some(url) = &cluster.api_server {
        config.cluster_url = parse_uri(url)?;
    }
    let server = &config.cluster_url;
    if let Some(why) = crate::config::validate::plain_http_refused(
        server.scheme_str().unwrap_or_default(),
        server.host().unwrap_or_default(),
    ) {
        return Err(IssueError::Config(format!("API server {server}: {why}")));
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

/// When the credential in `config` expires, where that can be known: the
/// `exp` of a bearer token (inline or file) or the `notAfter` of a client
/// certificate (inline or file). Exec plugins and OIDC: unknown.
pub fn credential_expiry(config: &kube::Config) -> Option<SystemTime> {
    use secrecy::ExposeSecret as _;
    let auth = &config.auth_info;
    let token = auth
        .token
        .as_ref()
        .map(|t| t.expose_secret().to_owned())
        .or_else(|| input::read_token(std::path::Path::new(auth.token_file.as_ref()?)).ok());
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
        (None, Some(path)) => input::read(std::path::Path::new(path)).ok()?,
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

fn parse_uri(url: &url::Url) -> Result<http::Uri, IssueError> {
    url.as_str()
        .trim_end_matches('/')
        .parse()
        .map_err(|e| IssueError::Config(format!("api_server {url}: {e}")))
}

fn input_error(key: &str, path: &std::path::Path, error: input::InputError) -> IssueError {
    IssueError::Config(format!("{key} {}: {error}", path.display()))
}

/// Read a PEM bundle of CA certificates.
pub fn read_ca(path: &std::path::Path) -> Result<Vec<Vec<u8>>, IssueError> {
    input::read_certificates(path).map_err(|e| input_error("ca_file", path, e))
}

/// The error and all its sources on one line, made safe to show
/// ([`crate::outside::text`]: errors quote servers, URLs and plugins).
pub fn chain(error: &dyn std::error::Error) -> String {
    crate::outside::error_chain(error)
}

fn classify_transport(error: &kube::Error) -> IssueError {
    classify_transport_text(chain(error))
}

/// A transport failure by its text. Only certificate problems and TLS
/// alerts are TLS failures: a connection the server drops mid-request
/// ("peer closed connection without sending TLS close_notify") is the
/// server going away, not a verification failure.
fn classify_transport_text(text: String) -> IssueError {
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("unknownca")
        || lower.contains("fatal alert")
    {
        IssueError::Tls(text)
    } else if lower.contains("timed out") || lower.contains("timeout") {
        IssueError::Unreachable(format!("timed out: {text}"))
    } else {
        IssueError::Unreachable(text)
    }
}

#[derive(Deserialize)]
struct StatusBody {
    message: Option<String>,
}

fn status_message(body: &[u8], code: StatusCode) -> String {
    let message = serde_json::from_slice::<StatusBody>(body)
        .ok()
        .and_then(|s| s.message)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
    // Room for the hint that follows it within one message.
    let message: String = crate::outside::text(&message).chars().take(600).collect();
    if message.is_empty() {
        code.canonical_reason().unwrap_or("no message").to_owned()
    } else {
        message
    }
}

/// A server's text on one line, capped, without control characters or
/// secrets ([`crate::outside::text`]): a failure is one log line, whatever
/// the server said.
pub fn one_line(text: &str) -> String {
    crate::outside::text(text)
}

fn parse_retry_after(value: Option<&http::HeaderValue>) -> Option<Duration> {
    let text = value?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate_to_unix(text)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(when.saturating_sub(now)))
}

fn httpdate_to_unix(text: &str) -> Option<u64> {
    // IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
    let parsed = jiff::fmt::rfc2822::parse(text).ok()?;
    u64::try_from(parsed.timestamp().as_second()).ok()
}

/// Turn a TokenRequest HTTP answer into a token or a classified error.
pub fn interpret_response(
    status: StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
    sent: SystemTime,
) -> Result<IssuedToken, IssueError> {
    if !status.is_success() {
        let message = status_message(body, status);
        return Err(match status.as_u16() {
            401 => IssueError::Unauthorized(message),
            403 => IssueError::Forbidden(message),
            404 => IssueError::NotFound(message),
            400 | 422 => IssueError::Invalid {
                code: status.as_u16(),
                message,
            },
            429 => IssueError::Throttled {
                retry_after: parse_retry_after(headers.get(http::header::RETRY_AFTER)),
                message,
            },
            code => IssueError::Server { code, message },
        });
    }
    let bad = |why: &str| IssueError::Server {
        code: 0,
        message: format!("the answer is not a usable TokenRequest: {why}"),
    };
    let answer: TokenRequest =
        serde_json::from_slice(body).map_err(|e| bad(&format!("invalid JSON ({e})")))?;
    let status = answer.status.ok_or_else(|| bad("no status"))?;
    let token = Token::new(status.token).map_err(|e| bad(&e.to_string()))?;
    let claims = token.claims().map_err(|e| bad(&e.to_string()))?;
    let lifetime = claims.lifetime().unwrap_or_else(|| {
        let exp = UNIX_EPOCH + Duration::from_secs(claims.expires_at);
        exp.duration_since(sent).unwrap_or_default()
    });
    if lifetime.is_zero() {
        return Err(bad("the token has already expired"));
    }
    let warning = headers
        .get_all(http::header::WARNING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect::<Vec<_>>();
    Ok(IssuedToken {
        token,
        claims,
        lifetime,
        warning: (!warning.is_empty()).then(|| warning.join("; ")),
        credential_expires_at: None,
    })
}

fn quoted(list: &[String]) -> String {
    list.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Deserialize)]
struct ReviewBody {
    status: Option<ReviewStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewStatus {
    user_info: Option<ReviewUser>,
}

#[derive(Deserialize)]
struct ReviewUser {
    username: Option<String>,
}

/// Turn a SelfSubjectReview answer into a [`Review`] or an error: the
/// token must authenticate as `subject`.
pub fn interpret_review(
    status: StatusCode,
    body: &[u8],
    subject: &str,
) -> Result<Review, IssueError> {
    if status.is_success() {
        let user = serde_json::from_slice::<ReviewBody>(body)
            .ok()
            .and_then(|b| b.status?.user_info?.username);
        return match user {
            Some(user) if user == subject => Ok(Review::Confirmed),
            Some(user) => Err(IssueError::Rejected(format!(
                "the API server says the token belongs to {user:?}, not {subject:?}"
            ))),
            None => Err(IssueError::Server {
                code: 0,
                message: "the answer is not a usable SelfSubjectReview".into(),
            }),
        };
    }
    let message = status_message(body, status);
    Err(match status.as_u16() {
        401 => IssueError::Rejected(format!(
            "the API server does not accept the token (401 {message})"
        )),
        403 => return Ok(Review::Authenticated),
        404 => return Ok(Review::Unsupported),
        429 => IssueError::Throttled {
            retry_after: None,
            message,
        },
        code => IssueError::Server { code, message },
    })
}

impl Issuer for KubeIssuer {
    async fn review(&self, token: &Token) -> Result<Review, IssueError> {
        self.review_token(token).await
    }

    async fn verify(&self, issued: &IssuedToken) -> Result<Review, IssueError> {
        let cached = self
            .last_config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let review = match cached {
            Some(config) => self.review_with(config, &issued.token).await,
            None => self.review_token(&issued.token).await,
        };
        match review {
            Err(IssueError::Rejected(message)) => Err(IssueError::Rejected(
                self.explain_rejection(issued, message).await,
            )),
            other => other,
        }
    }

    async fn issue(&self, spec: &TokenSpec) -> Result<IssuedToken, IssueError> {
        if !matches!(self.cluster.credentials, Credentials::SelfRenew) {
            return self.request(spec).await;
        }
        // Self-renewal: the chain may have reached its age limit, and a 401
        // means the chain is broken, which only a new seed repairs.
        crate::selfrenew::check_chain(&self.cluster, SystemTime::now())?;
        match self.request(spec).await {
            Err(IssueError::Unauthorized(message)) => Err(crate::selfrenew::broken_chain(
                &self.cluster,
                &message,
                SystemTime::now(),
            )),
            other => other,
        }
    }
}

impl KubeIssuer {
    /// A SelfSubjectReview made with `token` against the cluster's API
    /// server: the same URL, CA, proxy and timeouts as the TokenRequest, but
    /// the token as the only credential (a client certificate would win
    /// over it: the API server tries certificates first).
    pub async fn review_token(&self, token: &Token) -> Result<Review, IssueError> {
        let config = kube_config(&self.cluster, self.timeout).await?;
        self.review_with(config, token).await
    }

    async fn review_with(
        &self,
        mut config: kube::Config,
        token: &Token,
    ) -> Result<Review, IssueError> {
        config.auth_info = kube::config::AuthInfo {
            token: Some(secrecy::SecretString::from(token.expose().to_owned())),
            ..kube::config::AuthInfo::default()
        };
        let client = kube::Client::try_from(config).map_err(|e| IssueError::Config(chain(&e)))?;
        let body = br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
        let request = Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(kube::client::Body::from(body.to_vec()))
            .map_err(|e| IssueError::Config(e.to_string()))?;
        let exchange = async {
            let response = client
                .send(request)
                .await
                .map_err(|e| classify_transport(&e))?;
            let (parts, body) = response.into_parts();
            let bytes = body
                .collect_bytes()
                .await
                .map_err(|e| classify_transport(&e))?;
            interpret_review(
                parts.status,
                &bytes,
                &self.cluster.service_account.subject(),
            )
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(IssueError::Timeout(self.timeout)),
        }
    }

    /// Why the API server rejected a token it has just issued. With
    /// configured audiences, the usual cause is an audience it does not
    /// accept: a token minted without audiences carries the server's own
    /// (its `aud` claim), which names them at the cost of one more
    /// TokenRequest, made only on this failure path.
    async fn explain_rejection(&self, issued: &IssuedToken, message: String) -> String {
        let wanted = &self.cluster.audiences;
        if !wanted.is_empty() {
            let probe = TokenSpec {
                expiration: self.cluster.expiration.min(Duration::from_secs(600)),
                audiences: Vec::new(),
            };
            let probed = self.request(&probe).await;
            self.last_config
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Ok(default) = probed {
                let accepted = &default.claims.audiences;
                if !accepted.is_empty() && !wanted.iter().any(|a| accepted.contains(a)) {
                    return format!(
                        "the API server does not accept audience {}; its audiences are {} \
                         (set audiences to one of them, or remove audiences to get the server's \
                         default); the new token was not written",
                        quoted(wanted),
                        quoted(accepted)
                    );
                }
            }
        }
        format!(
            "the API server rejected the token it had just issued for {} (aud {}): {message}; \
             the new token was not written. If several API servers share the address, \
             check that they all verify with the same service-account keys",
            self.cluster.service_account,
            quoted(&issued.claims.audiences)
        )
    }

    /// One TokenRequest with the cluster's credentials.
    async fn request(&self, spec: &TokenSpec) -> Result<IssuedToken, IssueError> {
        let config = kube_config_with(&self.cluster, self.timeout, self.exec_timeout).await?;
        let credential_expires_at = credential_expiry(&config);
        if self.cluster.verify.enabled {
            *self
                .last_config
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(config.clone());
        }
        let client = kube::Client::try_from(config).map_err(|e| IssueError::Config(chain(&e)))?;
        let sa = &self.cluster.service_account;
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: spec.audiences.clone(),
                expiration_seconds: Some(
                    i64::try_from(spec.expiration.as_secs()).unwrap_or(i64::MAX),
                ),
                bound_object_ref: None,
            },
            ..TokenRequest::default()
        };
        let body = serde_json::to_vec(&request).map_err(|e| IssueError::Config(e.to_string()))?;
        let uri = format!(
            "/api/v1/namespaces/{}/serviceaccounts/{}/token",
            sa.namespace, sa.name
        );
        let http_request = Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(kube::client::Body::from(body))
            .map_err(|e| IssueError::Config(e.to_string()))?;
        let sent = SystemTime::now();
        let exchange = async {
            let response = client
                .send(http_request)
                .await
                .map_err(|e| classify_transport(&e))?;
            let (parts, body) = response.into_parts();
            let answer = crate::outside::read_body(body, crate::outside::MAX_TOKEN_ANSWER)
                .await
                .map_err(|e| classify_transport(&e))?;
            if answer.truncated && parts.status.is_success() {
                return Err(IssueError::Server {
                    code: parts.status.as_u16(),
                    message: format!(
                        "the answer is larger than {} KiB, far more than any TokenRequest; not read further",
                        crate::outside::MAX_TOKEN_ANSWER >> 10
                    ),
                });
            }
            interpret_response(parts.status, &parts.headers, &answer.bytes, sent)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result.map(|mut issued| {
                issued.credential_expires_at = match self.cluster.credentials {
                    // The credential is the token just issued.
                    Credentials::SelfRenew => Some(issued.claims.expiry()),
                    _ => credential_expires_at,
                };
                issued
            }),
            Err(_) => Err(IssueError::Timeout(self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kinds_with_the_servers_message() {
        let body =
            br#"{"kind":"Status","message":"serviceaccounts \"x\" is forbidden: nope","code":403}"#;
        let e = interpret_response(
            StatusCode::FORBIDDEN,
            &http::HeaderMap::new(),
            body,
            SystemTime::now(),
        )
        .unwrap_err();
        assert_eq!(e.metric_label(), "forbidden");
        assert!(e.to_string().contains("is forbidden: nope"), "{e}");

        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        let e = interpret_response(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            b"",
            SystemTime::now(),
        )
        .unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        for (code, label) in [
            (401, "unauthorized"),
            (404, "not_found"),
            (422, "invalid"),
            (500, "server_error"),
            (503, "server_error"),
        ] {
            let e = interpret_response(
                StatusCode::from_u16(code).unwrap(),
                &http::HeaderMap::new(),
                b"{}",
                SystemTime::now(),
            )
            .unwrap_err();
            assert_eq!(e.metric_label(), label, "{code}");
        }
    }

    #[test]
    fn a_review_must_name_the_service_account_and_a_401_is_a_rejection() {
        let sub = "system:serviceaccount:kube-system:prom";
        let ok =
            br#"{"status":{"userInfo":{"username":"system:serviceaccount:kube-system:prom"}}}"#;
        assert_eq!(
            interpret_review(StatusCode::CREATED, ok, sub).unwrap(),
            Review::Confirmed
        );
        let other = br#"{"status":{"userInfo":{"username":"kubernetes-admin"}}}"#;
        let e = interpret_review(StatusCode::CREATED, other, sub).unwrap_err();
        assert_eq!(e.metric_label(), "rejected");
        assert!(e.to_string().contains("\"kubernetes-admin\""), "{e}");
        let e = interpret_review(
            StatusCode::UNAUTHORIZED,
            br#"{"message":"Unauthorized"}"#,
            sub,
        )
        .unwrap_err();
        assert_eq!(e.metric_label(), "rejected");
        assert_eq!(
            interpret_review(StatusCode::NOT_FOUND, b"", sub).unwrap(),
            Review::Unsupported
        );
        assert_eq!(
            interpret_review(StatusCode::FORBIDDEN, b"", sub).unwrap(),
            Review::Authenticated
        );
        let e = interpret_review(StatusCode::SERVICE_UNAVAILABLE, b"", sub).unwrap_err();
        assert_eq!(e.metric_label(), "server_error");
        let e = interpret_review(StatusCode::CREATED, b"{}", sub).unwrap_err();
        assert_eq!(e.metric_label(), "server_error");
    }

    #[test]
    fn a_dropped_connection_is_unreachable_and_a_bad_certificate_is_tls() {
        let reset = "ServiceError: client error (SendRequest): connection error: peer closed connection without sending TLS close_notify: https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof";
        assert_eq!(
            classify_transport_text(reset.into()).metric_label(),
            "unreachable"
        );
        let ca = "ServiceError: client error (Connect): invalid peer certificate: UnknownIssuer";
        assert_eq!(classify_transport_text(ca.into()).metric_label(), "tls");
        let alert = "client error (Connect): received fatal alert: BadCertificate";
        assert_eq!(classify_transport_text(alert.into()).metric_label(), "tls");
    }

    #[test]
    fn garbage_bodies_are_server_errors_not_panics() {
        for body in [
            &b""[..],
            b"{",
            b"{\"status\":{\"token\":\"x\",\"expirationTimestamp\":\"2020-01-01T00:00:00Z\"}}",
            b"\xff\xfe",
        ] {
            let e = interpret_response(
                StatusCode::CREATED,
                &http::HeaderMap::new(),
                body,
                SystemTime::now(),
            )
            .unwrap_err();
            assert_eq!(e.metric_label(), "server_error");
        }
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let v = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert_eq!(
            parse_retry_after(Some(&v("3"))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            parse_retry_after(Some(&v("Sun, 06 Nov 1994 08:49:37 GMT"))),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(Some(&v("soon"))), None);
        assert_eq!(parse_retry_after(None), None);
    }
}
