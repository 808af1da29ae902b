//! The Kubernetes API surface of one simulated cluster: the shared types,
//! fault injection and routing live here; the endpoints in the submodules:
//! `response` (HTTP helpers, `Status` bodies), `auth` (authentication and
//! authorization), `token_request` (TokenRequest), `nodes` (nodes and the
//! node proxy), `discovery` (version, health and discovery documents).
//! Reviews are in the crate's `review` module.

mod auth;
mod discovery;
mod nodes;
mod response;
mod token_request;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::cluster::{Cluster, FaultKind};
use super::rbac::{self, Identity, Policy};
use super::{review, secrets};

use auth::{authenticate, authorized};
use discovery::non_resource;
use nodes::{kubelet, node_json, node_list};
pub(crate) use response::{Resp, json_resp, media_type, status_resp};
use response::{bad_request, fault_resp, not_found, not_found_path, unauthorized};
use token_request::token_request;

/// Returned to hyper to make it close the connection without an answer
/// (the `reset` fault, a `down` shared-port cluster, an aborted upload).
#[derive(Debug)]
pub(crate) struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for DropConnection {}

/// How long a `hang` fault holds a request.
const HANG: Duration = Duration::from_secs(120);

/// Behaviour shared by every cluster of a sim.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub min_expiration: Duration,
    pub max_expiration: Option<Duration>,
    pub leeway: Duration,
    pub audiences: Vec<String>,
    pub policy: Policy,
    pub nodes: Vec<String>,
}

/// What the connection knows about its client.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// Identity from a verified client certificate.
    pub cert: Option<Identity>,
    /// Cancelled when the connection is torn down (down, shutdown).
    pub cancel: CancellationToken,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn is_token_request(method: &Method, segs: &[&str]) -> bool {
    method == Method::POST
        && matches!(
            segs,
            ["api", "v1", "namespaces", _, "serviceaccounts", _, "token"]
        )
}

/// Serves one request for `cluster`; `path` is relative to the cluster's
/// API root (no `/clusters/<name>` prefix).
pub(crate) async fn serve(
    settings: &Settings,
    cluster: &Cluster,
    conn: &ConnInfo,
    req: Request<Incoming>,
    path: &str,
) -> Result<Resp, DropConnection> {
    let method = req.method().clone();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let token_request = is_token_request(&method, &segs);
    if let Some(kind) = cluster.take_fault(token_request) {
        return match kind {
            FaultKind::Status {
                code,
                retry_after_seconds,
            } => {
                cluster.record_request(method.as_str(), path, code, token_request);
                Ok(fault_resp(code, retry_after_seconds))
            }
            FaultKind::Reset => {
                cluster.record_request(method.as_str(), path, 0, token_request);
                Err(DropConnection)
            }
            FaultKind::Hang => {
                cluster.record_request(method.as_str(), path, 0, token_request);
                tokio::select! {
                    () = tokio::time::sleep(HANG) => {}
                    () = conn.cancel.cancelled() => {}
                }
                Err(DropConnection)
            }
        };
    }
    let resp = route(settings, cluster, conn, req, &method, &segs).await?;
    cluster.record_request(method.as_str(), path, resp.status().as_u16(), token_request);
    Ok(resp)
}

async fn route(
    settings: &Settings,
    cluster: &Cluster,
    conn: &ConnInfo,
    req: Request<Incoming>,
    method: &Method,
    segs: &[&str],
) -> Result<Resp, DropConnection> {
    let who = match authenticate(settings, cluster, conn, req.headers()) {
        Ok(who) => who,
        Err(why) => {
            cluster.record_rejected(why);
            return Ok(unauthorized());
        }
    };
    let policy = &settings.policy;
    let get = method == Method::GET;
    let resp = match segs {
        ["version" | "healthz" | "livez" | "readyz" | "api" | "apis"]
        | ["api", "v1"]
        | ["apis", "authentication.k8s.io", "v1"]
        | ["apis", "authorization.k8s.io", "v1"]
            if get =>
        {
            let path = format!("/{}", segs.join("/"));
            if !policy.allows_path(&who, &path) {
                return Ok(status_resp(
                    403,
                    "Forbidden",
                    &rbac::forbidden_path_message(&who, "get", &path),
                    Some(json!({})),
                ));
            }
            non_resource(&path)
        }
        ["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"] if method == Method::POST => {
            review::self_subject_review(&who, req).await?
        }
        [
            "apis",
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
        ] if method == Method::POST => {
            review::self_subject_access_review(policy, &who, req).await?
        }
        ["api", "v1", "namespaces", ns, "secrets"] if get => {
            authorized(policy, &who, "list", "secrets", None, Some(ns))
                .unwrap_or_else(|| list_secrets(cluster, ns, &req))
        }
        ["api", "v1", "namespaces", ns, "secrets", name] if get => {
            authorized(policy, &who, "get", "secrets", Some(name), Some(ns)).unwrap_or_else(|| {
                match cluster.secrets.get(ns, name) {
                    Some(s) => json_resp(StatusCode::OK, &s.object()),
                    None => not_found("secrets", name),
                }
            })
        }
        ["api", "v1", "nodes"] if get => authorized(policy, &who, "list", "nodes", None, None)
            .unwrap_or_else(|| json_resp(StatusCode::OK, &node_list(&settings.nodes))),
        ["api", "v1", "nodes", node] if get => {
            authorized(policy, &who, "get", "nodes", Some(node), None).unwrap_or_else(|| {
                match settings.nodes.iter().find(|n| n == node) {
                    Some(n) => json_resp(StatusCode::OK, &node_json(n, &settings.nodes)),
                    None => not_found("nodes", node),
                }
            })
        }
        ["api", "v1", "nodes", node, "proxy", rest @ ..] if get => {
            authorized(policy, &who, "get", "nodes/proxy", Some(node), None).unwrap_or_else(|| {
                if settings.nodes.iter().any(|n| n == node) {
                    kubelet(&cluster.name, node, rest)
                } else {
                    not_found("nodes", node)
                }
            })
        }
        ["api", "v1", "namespaces", ns, "serviceaccounts", name] if get => {
            authorized(policy, &who, "get", "serviceaccounts", Some(name), Some(ns)).unwrap_or_else(
                || match cluster.service_account_uid(ns, name) {
                    Some(uid) => json_resp(
                        StatusCode::OK,
                        &json!({
                            "kind": "ServiceAccount",
                            "apiVersion": "v1",
                            "metadata": {"name": name, "namespace": ns, "uid": uid},
                        }),
                    ),
                    None => not_found("serviceaccounts", name),
                },
            )
        }
        [
            "api",
            "v1",
            "namespaces",
            ns,
            "serviceaccounts",
            name,
            "token",
        ] if method == Method::POST => {
            let (ns, name) = (ns.to_string(), name.to_string());
            if let Some(denied) = authorized(
                policy,
                &who,
                "create",
                "serviceaccounts/token",
                Some(&name),
                Some(&ns),
            ) {
                return Ok(denied);
            }
            token_request(settings, cluster, req, &ns, &name).await?
        }
        _ if known_path(segs) => status_resp(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            Some(json!({})),
        ),
        _ => {
            tracing::info!(cluster = %cluster.name, %method, path = %segs.join("/"), "unknown path");
            not_found_path()
        }
    };
    Ok(resp)
}

fn known_path(segs: &[&str]) -> bool {
    matches!(
        segs,
        ["version" | "healthz" | "livez" | "readyz" | "api" | "apis"]
            | ["api", "v1"]
            | ["api", "v1", "nodes", ..]
            | ["api", "v1", "namespaces", _, "serviceaccounts", _]
            | ["api", "v1", "namespaces", _, "serviceaccounts", _, "token"]
            | ["api", "v1", "namespaces", _, "secrets", ..]
            | ["apis", "authentication.k8s.io", "v1", ..]
            | ["apis", "authorization.k8s.io", "v1", ..]
    )
}

/// `GET /api/v1/namespaces/{ns}/secrets`, with `fieldSelector` and the
/// metadata-only list form.
fn list_secrets(cluster: &Cluster, ns: &str, req: &Request<Incoming>) -> Resp {
    let selector = req
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| url::form_urlencoded::parse(q.as_bytes()))
        .find(|(k, _)| k == "fieldSelector")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let selector = match secrets::FieldSelector::parse(&selector) {
        Ok(s) => s,
        Err(message) => return bad_request(&message),
    };
    let accept = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (items, version) = cluster.secrets.list(ns);
    let items: Vec<_> = items.into_iter().filter(|s| selector.matches(s)).collect();
    json_resp(
        StatusCode::OK,
        &secrets::list_json(&items, version, secrets::wants_partial_metadata(accept)),
    )
}
