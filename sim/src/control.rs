//! The plain-HTTP control endpoint (loopback only) that out-of-process tests
//! use to inject faults, take clusters down and read counters.
//!
//! Operations (JSON answers; `{"error": ...}` with 4xx on failure):
//!
//! - `POST /clusters/<name>/faults` with a [`Fault`] body; `DELETE` clears them.
//! - `POST /clusters/<name>/down`, `POST /clusters/<name>/up`.
//! - `DELETE /clusters/<name>/serviceaccounts/<ns>/<sa>` deletes a
//!   ServiceAccount (its tokens and token Secrets go with it); `POST` to the
//!   same path recreates it with a new uid.
//! - `POST /clusters/<name>/serviceaccounts/<ns>/<sa>/legacy-token-secret`
//!   creates a legacy, never-expiring token Secret for the ServiceAccount
//!   (`type: kubernetes.io/service-account-token`, annotated
//!   `kubernetes.io/service-account.name: <sa>`), as clusters set up before
//!   Kubernetes 1.24 have: `201 {"ok":true,"secret":"<sa>-token-xxxxx"}`,
//!   404 if the ServiceAccount does not exist.
//! - `DELETE /clusters/<name>/secrets/<ns>/<secret>` deletes a Secret.
//! - `POST /clusters/<name>/serviceaccounts/<ns>/<sa>/recreate` deletes and
//!   recreates a ServiceAccount in one step (new uid; its tokens stop
//!   authenticating); 404 if it does not exist.
//! - `POST /clusters/<name>/signing-key/rotate` replaces the token signing
//!   key, as an API server restarted with a new key and without the old
//!   one: every token issued before gets 401.
//! - `POST /clusters/<name>/sign` with a JSON object of claims: `{"token":
//!   "<JWT>"}` signed with the cluster's current key (tokens with chosen
//!   times for the conformance suite).
//! - `GET /stats` (all clusters) and `GET /clusters/<name>/stats`: counters
//!   (requests, tokens, and TLS connections by handshake: `tls_full_handshakes`,
//!   `tls_resumed_handshakes`).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Fault, Registry};

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Resp {
    reply(status, &json!({ "error": message }))
}

/// Serves the control endpoint until `cancel`.
pub(crate) async fn run(
    listener: TcpListener,
    registry: Arc<Registry>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (tcp, _) = tokio::select! {
            () = cancel.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "control accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let registry = registry.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let service = service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&registry, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                _ = conn => {}
                () = cancel.cancelled() => {}
            }
        });
    }
}

async fn handle(registry: &Registry, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let (&Method::GET, ["stats"]) = (&method, segs.as_slice()) {
        return reply(StatusCode::OK, &json!(registry.stats()));
    }
    let ["clusters", name, rest @ ..] = segs.as_slice() else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no such control path {path}"),
        );
    };
    let Some(cluster) = registry.cluster_handle(name) else {
        return error(StatusCode::NOT_FOUND, &format!("no cluster named {name:?}"));
    };
    match (&method, rest) {
        (&Method::GET, ["stats"]) => reply(StatusCode::OK, &json!(cluster.stats())),
        (&Method::POST, ["faults"]) => {
            let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("failed to read body: {e}"),
                    );
                }
            };
            match serde_json::from_slice::<Fault>(&body) {
                Ok(f) => {
                    cluster.inject_fault(f);
                    reply(StatusCode::OK, &json!({ "ok": true }))
                }
                Err(e) => error(StatusCode::BAD_REQUEST, &format!("invalid fault: {e}")),
            }
        }
        (&Method::DELETE, ["faults"]) => {
            cluster.clear_faults();
            reply(StatusCode::OK, &json!({ "ok": true }))
        }
        (&Method::POST, ["down"]) => {
            cluster.down().await;
            reply(StatusCode::OK, &json!({ "ok": true }))
        }
        (&Method::POST, ["up"]) => match cluster.up().await {
            Ok(()) => reply(StatusCode::OK, &json!({ "ok": true })),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
        },
        (&Method::DELETE, ["serviceaccounts", ns, sa]) => {
            if cluster.delete_service_account(ns, sa) {
                reply(StatusCode::OK, &json!({ "ok": true }))
            } else {
                error(
                    StatusCode::NOT_FOUND,
                    &format!("serviceaccount {ns}/{sa} does not exist"),
                )
            }
        }
        (&Method::POST, ["serviceaccounts", ns, sa, "legacy-token-secret"]) => {
            match cluster.create_legacy_token_secret(ns, sa) {
                Ok(Some(secret)) => reply(
                    StatusCode::CREATED,
                    &json!({ "ok": true, "secret": secret }),
                ),
                Ok(None) => error(
                    StatusCode::NOT_FOUND,
                    &format!("serviceaccount {ns}/{sa} does not exist"),
                ),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
            }
        }
        (&Method::POST, ["serviceaccounts", ns, sa, "recreate"]) => {
            if cluster.recreate_service_account(ns, sa) {
                reply(StatusCode::OK, &json!({ "ok": true }))
            } else {
                error(
                    StatusCode::NOT_FOUND,
                    &format!("serviceaccount {ns}/{sa} does not exist"),
                )
            }
        }
        (&Method::POST, ["signing-key", "rotate"]) => match cluster.rotate_signing_key() {
            Ok(()) => reply(StatusCode::OK, &json!({ "ok": true })),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
        },
        (&Method::POST, ["sign"]) => {
            let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("failed to read body: {e}"),
                    );
                }
            };
            match serde_json::from_slice::<Value>(&body) {
                Ok(claims @ Value::Object(_)) => match cluster.sign(&claims) {
                    Ok(token) => reply(StatusCode::OK, &json!({ "token": token })),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
                },
                Ok(_) => error(StatusCode::BAD_REQUEST, "the claims must be a JSON object"),
                Err(e) => error(StatusCode::BAD_REQUEST, &format!("invalid claims: {e}")),
            }
        }
        (&Method::DELETE, ["secrets", ns, secret]) => {
            if cluster.delete_secret(ns, secret) {
                reply(StatusCode::OK, &json!({ "ok": true }))
            } else {
                error(
                    StatusCode::NOT_FOUND,
                    &format!("secret {ns}/{secret} does not exist"),
                )
            }
        }
        (&Method::POST, ["serviceaccounts", ns, sa]) => {
            if cluster.create_service_account(ns, sa) {
                reply(StatusCode::CREATED, &json!({ "ok": true }))
            } else {
                error(
                    StatusCode::CONFLICT,
                    &format!("serviceaccount {ns}/{sa} already exists"),
                )
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("no such control operation {method} {path}"),
        ),
    }
}
