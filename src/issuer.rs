//! Issuers mint tokens. The real one calls the cluster's TokenRequest API
//! through [`crate::apiserver`], which reads the cluster's credentials for
//! each request (so credential files are re-read on every rotation) and
//! classifies its failures; the TLS configuration built from them is kept
//! per cluster ([`apiserver::tls::ClusterTls`]) so that rotations resume
//! the TLS session.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use serde::Deserialize;

use crate::apiserver::{self, Failure, status_message};
use crate::config::ClusterSettings;
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

    /// Nothing is due for a long while: let go of what only makes the next
    /// request cheaper (TLS configurations and resumable sessions).
    fn rest(&self) {}
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

impl From<Failure> for IssueError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Config(message) => IssueError::Config(message),
            Failure::Unreachable(text) => IssueError::Unreachable(text),
            Failure::TimedOut(text) => IssueError::Unreachable(format!("timed out: {text}")),
            Failure::Timeout(after) => IssueError::Timeout(after),
            Failure::Tls(text) => IssueError::Tls(text),
        }
    }
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

/// The real issuer: TokenRequest through kube, with the cluster's TLS
/// configuration kept from one request to the next.
#[derive(Debug, Clone)]
pub struct KubeIssuer {
    cluster: Arc<ClusterSettings>,
    timeout: Duration,
    /// The configuration and connection of the last TokenRequest, kept from
    /// `issue` to `verify` (only then: idle clusters pin no connection) so
    /// the review does not read and parse the credential files again, and
    /// goes over the same connection where it may.
    /// Boxed: a `kube::Config` is ~1 KB, and an idle cluster holds none.
    last_config: Arc<std::sync::Mutex<Option<Box<LastRequest>>>>,
    /// The cluster's TLS client configurations (sessions resume).
    tls: Arc<apiserver::tls::ClusterTls>,
    exec_timeout: Duration,
}

#[derive(Debug)]
struct LastRequest {
    config: kube::Config,
    connection: Option<apiserver::tls::Connection>,
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
            tls: Arc::default(),
            exec_timeout: crate::exec::DEFAULT_EXEC_TIMEOUT,
        }
    }

    /// How long a kubeconfig exec plugin may run (`[limits] exec_timeout`).
    pub fn with_exec_timeout(mut self, exec_timeout: Duration) -> Self {
        self.exec_timeout = exec_timeout;
        self
    }
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
            Some(last) => {
                self.review_with(last.config, last.connection, &issued.token)
                    .await
            }
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
        self.request(spec).await
    }

    fn rest(&self) {
        self.tls.forget();
    }
}

impl KubeIssuer {
    /// A SelfSubjectReview made with `token` against the cluster's API
    /// server: the same URL, CA, proxy and timeouts as the TokenRequest, but
    /// the token as the only credential (a client certificate would win
    /// over it: the API server tries certificates first).
    pub async fn review_token(&self, token: &Token) -> Result<Review, IssueError> {
        let config = apiserver::config(&self.cluster, self.timeout, self.exec_timeout).await?;
        self.review_with(config, None, token).await
    }

    /// The review over `connection` (the TokenRequest's) when it has the
    /// same TLS settings, i.e. no client certificate; else over a new one.
    async fn review_with(
        &self,
        config: kube::Config,
        connection: Option<apiserver::tls::Connection>,
        token: &Token,
    ) -> Result<Review, IssueError> {
        let only_the_token = kube::config::AuthInfo {
            token: Some(secrecy::SecretString::from(token.expose().to_owned())),
            ..kube::config::AuthInfo::default()
        };
        let (client, _) = self.tls.client(
            apiserver::with_credential(config, only_the_token),
            connection,
        )?;
        let body = br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
        let request = apiserver::post_json(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            body.to_vec(),
        );
        let answer = apiserver::send(
            &client,
            request,
            self.timeout,
            crate::outside::MAX_TOKEN_ANSWER,
        )
        .await?;
        interpret_review(
            answer.status,
            &answer.body,
            &self.cluster.service_account.subject(),
        )
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
        let config = apiserver::config(&self.cluster, self.timeout, self.exec_timeout).await?;
        let credential_expires_at = apiserver::credential_expiry(&config);
        let keep = self.cluster.verify.enabled.then(|| config.clone());
        let (client, connection) = self.tls.client(config, None)?;
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
        let path = format!(
            "/api/v1/namespaces/{}/serviceaccounts/{}/token",
            sa.namespace, sa.name
        );
        let sent = SystemTime::now();
        let answer = apiserver::send(
            &client,
            apiserver::post_json(&path, body),
            self.timeout,
            crate::outside::MAX_TOKEN_ANSWER,
        )
        .await?;
        if answer.truncated && answer.status.is_success() {
            return Err(IssueError::Server {
                code: answer.status.as_u16(),
                message: format!(
                    "the answer is larger than {} KiB, far more than any TokenRequest; not read further",
                    crate::outside::MAX_TOKEN_ANSWER >> 10
                ),
            });
        }
        let mut issued = interpret_response(answer.status, &answer.headers, &answer.body, sent)?;
        issued.credential_expires_at = credential_expires_at;
        if let Some(config) = keep {
            *self
                .last_config
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(Box::new(LastRequest { config, connection }));
        }
        Ok(issued)
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
    fn every_error_status_gets_the_reason_the_checklist_gives_it() {
        for code in 400..600 {
            let status = StatusCode::from_u16(code).unwrap();
            let e = interpret_response(status, &http::HeaderMap::new(), b"{}", SystemTime::now())
                .unwrap_err();
            assert_eq!(e.metric_label(), apiserver::status_reason(code), "{code}");
        }
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
