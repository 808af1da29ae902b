//! mcprom's own `/metrics` (prometheus-client) and `/healthz`.
//!
//! Everything is read from [`State`] at scrape time by one collector, so
//! series exist exactly for the configured clusters and vanish with them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::state::State;

/// The `reason` label values of `mcprom_token_refresh_errors_total`: a
/// fixed set, each exported (at 0) for every cluster so `rate()` works.
pub const REASONS: [&str; 12] = [
    "unreachable",
    "tls",
    "unauthorized",
    "forbidden",
    "not_found",
    "invalid",
    "throttled",
    "server_error",
    "write_failed",
    // Self-renewal (`credentials.self`): only `mcprom seed` repairs these.
    "chain_broken",
    "chain_too_old",
    // The API server does not accept the token it has just issued
    // (SelfSubjectReview with the token: 401 or another identity).
    "rejected",
];

fn seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Debug)]
struct StateCollector(Arc<State>);

pub(crate) fn gauge_family<I>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: I,
) -> Result<(), std::fmt::Error>
where
    I: IntoIterator<Item = (Vec<(&'static str, String)>, f64)>,
{
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in values {
        if labels.is_empty() {
            ConstGauge::new(value).encode(family)?;
            break;
        }
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

pub(crate) fn counter_family<I>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: I,
) -> Result<(), std::fmt::Error>
where
    I: IntoIterator<Item = (Vec<(&'static str, String)>, u64)>,
{
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        if labels.is_empty() {
            ConstCounter::new(value).encode(family)?;
            break;
        }
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let clusters = self.0.clusters();
        let now = SystemTime::now();
        let by_cluster = |f: &dyn Fn(&crate::state::ClusterStatus) -> Option<f64>| {
            clusters
                .iter()
                .filter_map(|c| f(c).map(|v| (vec![("cluster", c.name.clone())], v)))
                .collect::<Vec<_>>()
        };
        let e = &mut encoder;
        gauge_family(
            e,
            "mcprom_token_expiry_timestamp",
            "When the token in the cluster's token file expires (its exp claim).",
            Some(&Unit::Seconds),
            by_cluster(&|c| c.expires_at.map(seconds)),
        )?;
        gauge_family(
            e,
            "mcprom_token_issued_timestamp",
            "When the token in the cluster's token file was issued (its iat claim).",
            Some(&Unit::Seconds),
            by_cluster(&|c| c.issued_at.map(seconds)),
        )?;
        gauge_family(
            e,
            "mcprom_token_valid",
            "1 when the cluster's token file holds a token that is valid now.",
            None,
            by_cluster(&|c| Some(if c.valid_at(now) { 1.0 } else { 0.0 })),
        )?;
        gauge_family(
            e,
            "mcprom_token_next_refresh_timestamp",
            "When the next refresh (or retry) of the cluster's token is planned.",
            Some(&Unit::Seconds),
            by_cluster(&|c| c.next_refresh.map(seconds)),
        )?;
        gauge_family(
            e,
            "mcprom_credential_expiry_timestamp",
            "When mcprom's own credential for the cluster expires (client certificate notAfter, issuer token exp), where it can be known.",
            Some(&Unit::Seconds),
            by_cluster(&|c| c.credential_expires_at.map(seconds)),
        )?;
        counter_family(
            e,
            "mcprom_token_refreshes",
            "Token refresh attempts by result (success, failure).",
            clusters.iter().flat_map(|c| {
                let failed: u64 = c.errors.values().sum();
                [
                    (
                        vec![
                            ("cluster", c.name.clone()),
                            ("result", "success".to_owned()),
                        ],
                        c.refreshes,
                    ),
                    (
                        vec![
                            ("cluster", c.name.clone()),
                            ("result", "failure".to_owned()),
                        ],
                        failed,
                    ),
                ]
            }),
        )?;
        counter_family(
            e,
            "mcprom_token_refresh_errors",
            "Failed token refreshes by reason.",
            clusters.iter().flat_map(|c| {
                REASONS.iter().map(|reason| {
                    (
                        vec![
                            ("cluster", c.name.clone()),
                            ("reason", (*reason).to_owned()),
                        ],
                        c.errors.get(reason).copied().unwrap_or(0),
                    )
                })
            }),
        )?;
        counter_family(
            e,
            "mcprom_token_rejected",
            "Tokens in use that the API server stopped accepting before their expiry (ServiceAccount deleted or recreated, signing key rotated); each is re-minted at once.",
            clusters
                .iter()
                .map(|c| (vec![("cluster", c.name.clone())], c.rejections)),
        )?;
        gauge_family(
            e,
            "mcprom_token_verified_timestamp",
            "When the API server last confirmed (SelfSubjectReview with the token) that the cluster's token authenticates as its ServiceAccount.",
            Some(&Unit::Seconds),
            by_cluster(&|c| c.verified_at.map(seconds)),
        )?;
        gauge_family(
            e,
            "mcprom_prometheus_jobs",
            "Prometheus jobs that read the cluster's token file (from Prometheus's loaded configuration; absent while it cannot be read).",
            None,
            by_cluster(&|c| c.prometheus_jobs.as_ref().map(|j| j.len() as f64)),
        )?;
        gauge_family(
            e,
            "mcprom_prometheus_targets_rejected",
            "Targets of the jobs that read the cluster's token file whose last scrape failed with 401 or 403: Prometheus is presenting a token the cluster rejects.",
            None,
            by_cluster(&|c| c.prometheus_targets_rejected.map(|n| n as f64)),
        )?;
        let reloads = self.0.reloads();
        counter_family(
            e,
            "mcprom_prometheus_reloads",
            "Reloads of Prometheus by result (success, failure).",
            [
                (vec![("result", "success".to_owned())], reloads.ok),
                (vec![("result", "failure".to_owned())], reloads.failed),
            ],
        )?;
        gauge_family(
            e,
            "mcprom_prometheus_last_reload_success_timestamp",
            "When Prometheus last reloaded successfully at mcprom's request.",
            Some(&Unit::Seconds),
            reloads.last_success.map(|t| (vec![], seconds(t))),
        )?;
        crate::consumers::encode_metrics(e, &self.0)?;
        let config = self.0.config();
        gauge_family(
            e,
            "mcprom_config_last_reload_successful",
            "1 when the last attempt to (re)load the config file succeeded.",
            None,
            [(
                vec![],
                if config.last_reload_successful {
                    1.0
                } else {
                    0.0
                },
            )],
        )?;
        gauge_family(
            e,
            "mcprom_config_last_reload_success_timestamp",
            "When the config file was last loaded successfully.",
            Some(&Unit::Seconds),
            config.last_success.map(|t| (vec![], seconds(t))),
        )?;
        gauge_family(
            e,
            "mcprom_build_info",
            "mcprom's version.",
            None,
            [(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1.0)],
        )?;
        Ok(())
    }
}

/// The registry with mcprom's collector.
pub fn registry(state: Arc<State>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StateCollector(state)));
    registry
}

/// The text exposition of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        warn!(error = %e, "cannot encode metrics");
    }
    text
}

/// `/healthz`: 200 when every cluster holds a token valid now, else 503
/// naming the clusters that do not.
pub fn health(state: &State) -> (StatusCode, String) {
    let now = SystemTime::now();
    let clusters = state.clusters();
    let bad: Vec<&str> = clusters
        .iter()
        .filter(|c| !c.valid_at(now))
        .map(|c| c.name.as_str())
        .collect();
    if bad.is_empty() {
        (
            StatusCode::OK,
            format!("ok: {} clusters hold valid tokens\n", clusters.len()),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no valid token for: {}\n", bad.join(", ")),
        )
    }
}

async fn respond(
    request: Request<hyper::body::Incoming>,
    registry: Arc<Registry>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(&registry),
        ),
        (&http::Method::GET, "/healthz") => {
            let (status, body) = health(&state);
            (status, "text/plain; charset=utf-8", body)
        }
        (&http::Method::GET, "/") => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "mcprom: /metrics, /healthz\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    Ok(response)
}

/// Connections served at once; more are closed as soon as they are
/// accepted. Prometheus needs one, a person with curl another: 64 leaves
/// room and bounds the descriptors any local user can make mcprom hold.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection stays open, idle or not (Prometheus reconnects).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// How long to wait after the `failures`-th failed `accept()` in a row:
/// out of descriptors (EMFILE, ENFILE) an accept loop must not spin.
pub fn accept_backoff(failures: u32) -> Duration {
    Duration::from_millis(10u64 << failures.min(7)).min(Duration::from_secs(1))
}

/// Serve `/metrics` and `/healthz` on `listener` until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    cancel: CancellationToken,
) {
    let registry = Arc::new(registry(state.clone()));
    if let Ok(addr) = listener.local_addr() {
        info!(listen = %addr, "serving /metrics and /healthz");
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut failures = 0;
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    failures = 0;
                    a
                }
                Err(e) => {
                    debug!(error = %e, "metrics accept failed");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(accept_backoff(failures)) => {}
                    }
                    failures += 1;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics: too many connections, closing a new one");
            drop(stream);
            continue;
        };
        let (registry, state, cancel) = (registry.clone(), state.clone(), cancel.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                respond(req, registry.clone(), state.clone())
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                () = cancel.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_LIFETIME, connection) => {}
            }
        });
    }
}

/// Bind the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ClusterStatus;

    #[test]
    fn series_exist_for_configured_clusters_only() {
        let state = Arc::new(State::default());
        state.insert(ClusterStatus::new("c1", "ns/sa".into(), "/t".into()));
        state.update("c1", |s| {
            s.expires_at = Some(UNIX_EPOCH + std::time::Duration::from_secs(2_000_000_000));
            s.refreshes = 3;
            *s.errors.entry("tls").or_default() += 2;
        });
        let registry = registry(state.clone());
        let text = render(&registry);
        assert!(
            text.contains("mcprom_token_expiry_timestamp_seconds{cluster=\"c1\"} 2000000000"),
            "{text}"
        );
        assert!(
            text.contains("mcprom_token_refreshes_total{cluster=\"c1\",result=\"success\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("mcprom_token_refresh_errors_total{cluster=\"c1\",reason=\"tls\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "mcprom_token_refresh_errors_total{cluster=\"c1\",reason=\"forbidden\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("\nmcprom_config_last_reload_successful 1.0\n"),
            "{text}"
        );
        assert!(text.contains("mcprom_build_info{version="), "{text}");
        state.remove("c1");
        let text = render(&registry);
        assert!(!text.contains("cluster=\"c1\""), "{text}");
    }

    #[test]
    fn health_names_the_clusters_without_a_valid_token() {
        let state = State::default();
        state.insert(ClusterStatus::new("good", "ns/sa".into(), "/t".into()));
        state.insert(ClusterStatus::new("bad", "ns/sa".into(), "/t".into()));
        state.update("good", |s| {
            s.expires_at = Some(SystemTime::now() + std::time::Duration::from_secs(60))
        });
        let (status, body) = health(&state);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("bad") && !body.contains("good"), "{body}");
        state.update("bad", |s| {
            s.expires_at = Some(SystemTime::now() + std::time::Duration::from_secs(60))
        });
        assert_eq!(health(&state).0, StatusCode::OK);
    }
}
