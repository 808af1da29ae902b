//! Asking Prometheus to reload: coalesced, single-flight, never blocking
//! rotation.
//!
//! Rotators only bump a generation counter ([`ReloadQueue`]); one task
//! ([`run`]) waits for a quiet period of `delay`, then reloads once for
//! everything that changed. Requests that arrive during a reload cause
//! exactly one more.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::PrometheusSettings;
use crate::state::State;

/// Something that can be asked for a reload. Cheap and non-blocking.
pub trait ReloadRequest: Send + Sync + 'static {
    /// Note that token files changed.
    fn request_reload(&self);
}

/// The queue between rotators and the reloader: a generation counter.
#[derive(Debug, Clone, Default)]
pub struct ReloadQueue {
    inner: Arc<QueueInner>,
}

#[derive(Debug, Default)]
struct QueueInner {
    generation: AtomicU64,
    notify: Notify,
}

impl ReloadQueue {
    /// A new queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many requests have been made so far.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// Returns once a request beyond `generation` has been made.
    pub(crate) async fn wait_beyond(&self, generation: u64) {
        while self.generation() == generation {
            self.inner.notify.notified().await;
        }
    }

    /// Wait for `delay` without a new request (so that one reload serves a
    /// whole batch of rotations), but no longer than `max_wait` from now:
    /// under constant churn a quiet period might never come. Returns the
    /// generation then, or `None` when cancelled.
    pub(crate) async fn quiet(
        &self,
        delay: Duration,
        max_wait: Duration,
        cancel: &CancellationToken,
    ) -> Option<u64> {
        let first = Instant::now();
        loop {
            let seen = self.generation();
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            if self.generation() == seen || first.elapsed() >= max_wait {
                return Some(self.generation());
            }
        }
    }
}

/// How long [`ReloadQueue::quiet`] may wait at most for a `delay`: ten
/// quiet periods, at least 1 s.
pub(crate) fn max_wait(delay: Duration) -> Duration {
    (delay * 10).max(Duration::from_secs(1))
}

impl ReloadRequest for ReloadQueue {
    fn request_reload(&self) {
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        self.inner.notify.notify_one();
    }
}

/// A reload that did not happen, each with the message that tells the
/// reader what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    /// Nothing listens.
    #[error("Prometheus at {0} is not reachable ({1}): is it running?")]
    Down(String, String),
    /// 403: the lifecycle API is off.
    #[error(
        "Prometheus refused the reload (403: {0}): start Prometheus with --web.enable-lifecycle (Debian: ARGS in /etc/default/prometheus) or set reload = \"never\" in [prometheus]"
    )]
    LifecycleDisabled(String),
    /// 401: the web endpoint wants credentials.
    #[error(
        "Prometheus wants credentials for /-/reload (401): set username + password_file or bearer_token_file in [prometheus]"
    )]
    Unauthorized,
    /// 405: not a POST endpoint (not Prometheus, or a proxy in the way).
    #[error(
        "{0}/-/reload answered 405 Method Not Allowed: [prometheus] url does not point at a Prometheus web endpoint"
    )]
    MethodNotAllowed(String),
    /// 500: Prometheus could not load its own configuration.
    #[error(
        "Prometheus rejected its own configuration (500): {0}; fix prometheus.yml (the token files are in place and are read on every scrape anyway)"
    )]
    PrometheusConfig(String),
    /// No answer in time.
    #[error(
        "Prometheus did not finish the reload within {0:?}; it may still be applying it; raise [prometheus] timeout for big servers"
    )]
    Timeout(Duration),
    /// Anything else.
    #[error("reload failed: {0}")]
    Other(String),
}

impl ReloadError {
    /// Whether retrying soon is pointless (someone has to act first).
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            ReloadError::LifecycleDisabled(_)
                | ReloadError::Unauthorized
                | ReloadError::MethodNotAllowed(_)
        )
    }
}

/// Talks to one Prometheus web endpoint.
#[derive(Debug, Clone)]
pub struct Reloader {
    settings: PrometheusSettings,
    client: reqwest::Client,
}

const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

impl Reloader {
    /// A reloader for `settings` (reads `ca_file` now).
    pub fn new(settings: PrometheusSettings) -> Result<Self, ReloadError> {
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .no_proxy()
            // A redirect is an answer, not a reload: following one would
            // send the web credentials to wherever it points and count
            // someone else's 200 as success.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(1);
        if settings.url.scheme() == "https" {
            let bundle = settings
                .ca_file
                .clone()
                .unwrap_or_else(|| SYSTEM_CA_BUNDLE.into());
            let pem = crate::config::input::read(&bundle).map_err(|e| {
                ReloadError::Other(format!("[prometheus] ca_file {}: {e}", bundle.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                ReloadError::Other(format!("[prometheus] ca_file {}: {e}", bundle.display()))
            })?;
            builder = builder.tls_certs_only(certs);
        }
        let client = builder
            .build()
            .map_err(|e| ReloadError::Other(crate::text::chain(&e)))?;
        Ok(Reloader { settings, client })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.url.as_str().trim_end_matches('/'))
    }

    /// The URL for messages: a password in it is redacted.
    fn base(&self) -> String {
        crate::outside::text(self.settings.url.as_str().trim_end_matches('/'))
    }

    fn authorize(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, ReloadError> {
        let read = |path: &std::path::Path, key: &str| {
            crate::config::input::read_text(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| {
                    ReloadError::Other(format!("[prometheus] {key} {}: {e}", path.display()))
                })
        };
        Ok(if let Some(path) = &self.settings.bearer_token_file {
            request.bearer_auth(read(path, "bearer_token_file")?)
        } else if let Some(user) = &self.settings.username {
            let password = match &self.settings.password_file {
                Some(path) => Some(read(path, "password_file")?),
                None => None,
            };
            request.basic_auth(user, password)
        } else {
            request
        })
    }

    fn transport_error(&self, error: reqwest::Error) -> ReloadError {
        if error.is_timeout() {
            ReloadError::Timeout(self.settings.timeout)
        } else if error.is_connect() {
            ReloadError::Down(self.base(), crate::text::chain(&error))
        } else {
            ReloadError::Other(crate::text::chain(&error))
        }
    }

    /// Wait until `GET /-/ready` answers 200 (Prometheus replays its WAL
    /// before it is ready; a reload before that is refused).
    pub async fn wait_ready(&self, cancel: &CancellationToken) -> Result<(), ReloadError> {
        let started = Instant::now();
        loop {
            let request = self.authorize(self.client.get(self.url("/-/ready")))?;
            let outcome = request.send().await;
            match outcome {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {}
                // Anything else is for the reload itself to explain.
                Ok(_) => return Ok(()),
                Err(e) => return Err(self.transport_error(e)),
            }
            if started.elapsed() > self.settings.timeout {
                return Err(ReloadError::Other(format!(
                    "Prometheus at {} is still not ready after {:?}",
                    self.base(),
                    self.settings.timeout
                )));
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// One authorized `GET {url}{path}`: the status and the start of the
    /// body (for `mcprom check --online`, which must not reload).
    pub async fn get(&self, path: &str) -> Result<(u16, String), ReloadError> {
        self.get_limited(path, 64 * 1024).await
    }

    /// Like [`Reloader::get`], keeping at most `limit` characters of the body.
    pub async fn get_limited(
        &self,
        path: &str,
        limit: usize,
    ) -> Result<(u16, String), ReloadError> {
        let request = self.authorize(self.client.get(self.url(path)))?;
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status().as_u16();
        // Read no more than the caller keeps: a peer's endless body ends
        // at the cap.
        let body = crate::outside::read_response(response, limit)
            .await
            .map(|b| String::from_utf8_lossy(&b.bytes).into_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// One `POST /-/reload`.
    pub async fn reload_once(&self) -> Result<(), ReloadError> {
        let request = self.authorize(self.client.post(self.url("/-/reload")))?;
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = match crate::outside::read_response(
            response,
            crate::outside::MAX_PROMETHEUS_ANSWER,
        )
        .await
        {
            Ok(body) => String::from_utf8_lossy(&body.bytes).into_owned(),
            // Not "rejected its own configuration (500): ": the answer said
            // nothing we could read.
            Err(e) => {
                return Err(ReloadError::Other(format!(
                    "Prometheus at {} answered {status} to the reload, but its answer could not be read: {}",
                    self.base(),
                    self.transport_error(e)
                )));
            }
        };
        reload_outcome(status.as_u16(), &body, &self.base())
    }
}

/// What an answer to `POST /-/reload` from the Prometheus at `base` means:
/// 2xx is success; every failure gets the error that says what to do.
pub fn reload_outcome(status: u16, body: &str, base: &str) -> Result<(), ReloadError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let body = crate::outside::text(body);
    Err(match status {
        401 => ReloadError::Unauthorized,
        403 => ReloadError::LifecycleDisabled(if body.is_empty() {
            "Forbidden".into()
        } else {
            body
        }),
        405 => ReloadError::MethodNotAllowed(base.to_owned()),
        300..=399 => ReloadError::Other(format!(
            "Prometheus answered {status} (a redirect; not followed, the reload did not happen): \
             point [prometheus] url at the Prometheus web endpoint itself{}",
            if body.is_empty() {
                String::new()
            } else {
                format!(": {body}")
            }
        )),
        500 => ReloadError::PrometheusConfig(body),
        code => ReloadError::Other(format!("Prometheus answered {code}: {body}")),
    })
}

/// Delay after the `failures`-th failed reload in a row
/// ([`crate::schedule::reload_backoff`]).
pub fn reload_backoff(error: &ReloadError, failures: u32) -> Duration {
    crate::schedule::reload_backoff(failures, error.needs_operator())
}

/// The reloader loop. Runs until `cancel`.
pub async fn run(
    reloader: Reloader,
    queue: ReloadQueue,
    delay: Duration,
    state: Arc<State>,
    cancel: CancellationToken,
) {
    let max_wait = max_wait(delay);
    let mut handled = queue.generation();
    let mut ready = false;
    let mut failures: u32 = 0;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = queue.wait_beyond(handled) => {}
        }
        let Some(target) = queue.quiet(delay, max_wait, &cancel).await else {
            return;
        };
        let outcome = async {
            if !ready {
                reloader.wait_ready(&cancel).await?;
                ready = true;
            }
            reloader.reload_once().await
        }
        .await;
        match outcome {
            Ok(()) => {
                let changes = target - handled;
                handled = target;
                failures = 0;
                info!(changes, "prometheus reloaded");
                state.update_reloads(|r| {
                    r.ok += 1;
                    r.last_success = Some(SystemTime::now());
                    r.last_error = None;
                });
            }
            Err(error) => {
                let retry_in = reload_backoff(&error, failures);
                failures = failures.saturating_add(1);
                warn!(error = %error, retry_in = ?retry_in, "prometheus reload failed");
                state.update_reloads(|r| {
                    r.failed += 1;
                    r.last_error = Some(error.to_string());
                });
                debug!("token files are in place; Prometheus reads them on every scrape");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(retry_in) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_line_answer_is_quoted_on_one_line() {
        let body = "failed to reload config: couldn't load configuration: parsing YAML file p.yml: yaml: unmarshal errors:\n  line 3: field no_such_field not found in type config.ScrapeConfig\n";
        let e = reload_outcome(500, body, "http://127.0.0.1:9090").unwrap_err();
        let text = e.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(
            text.contains("unmarshal errors: line 3: field no_such_field not found"),
            "{text}"
        );
        assert!(reload_outcome(204, "", "x").is_ok());
    }
}
