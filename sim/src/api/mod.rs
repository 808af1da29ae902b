//! The Kubernetes API surface of one simulated cluster: authentication,
//! authorization, TokenRequest, nodes, the node proxy, discovery.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::cluster::{Cluster, FaultKind, Rejection};
use super::jwt::{Claims, ISSUER, KubernetesClaim, ServiceAccountRef, VerifyError};
use super::proto;
use super::rbac::{self, Attributes, Identity, Policy};
use super::{review, secrets};

/// Response body type of every simulated endpoint.
pub(crate) type Body = Full<Bytes>;
/// A complete response.
pub(crate) type Resp = Response<Body>;

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

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;
/// How long a `hang` fault holds a request.
const HANG: Duration = Duration::from_secs(120);
/// Default `spec.expirationSeconds`, as on the real server.
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The real server refuses anything above 2^32 seconds.
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

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

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A JSON response.
pub(crate) fn json_resp(status: StatusCode, v: &Value) -> Resp {
    respond(status, "application/json", v.to_string())
}

/// A `Status` failure body like kube-apiserver's.
pub(crate) fn status_resp(code: u16, reason: &str, message: &str, details: Option<Value>) -> Resp {
    let mut v = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "code": code,
    });
    if !reason.is_empty() {
        v["reason"] = json!(reason);
    }
    if let Some(d) = details {
        v["details"] = d;
    }
    json_resp(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &v,
    )
}

fn unauthorized() -> Resp {
    status_resp(401, "Unauthorized", "Unauthorized", None)
}

fn not_found_path() -> Resp {
    status_resp(
        404,
        "NotFound",
        "the server could not find the requested resource",
        Some(json!({})),
    )
}

fn not_found(kind: &str, name: &str) -> Resp {
    status_resp(
        404,
        "NotFound",
        &format!("{kind} \"{name}\" not found"),
        Some(json!({"name": name, "kind": kind})),
    )
}

fn forbidden(who: &Identity, a: &Attributes<'_>) -> Resp {
    let kind = a.resource.split('/').next().unwrap_or(a.resource);
    let mut details = json!({ "kind": kind });
    if let Some(n) = a.name {
        details["name"] = json!(n);
    }
    status_resp(
        403,
        "Forbidden",
        &rbac::forbidden_message(who, a),
        Some(details),
    )
}

fn bad_request(message: &str) -> Resp {
    status_resp(400, "BadRequest", message, None)
}

/// The body of an injected status fault.
fn fault_resp(code: u16, retry_after: Option<u64>) -> Resp {
    let (reason, message) = match code {
        429 => (
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later",
        ),
        500 => ("InternalError", "Internal error occurred: injected fault"),
        503 => (
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        ),
        504 => (
            "Timeout",
            "the server was unable to return a response in the time allotted, but may still be processing the request",
        ),
        401 => ("Unauthorized", "Unauthorized"),
        403 => ("Forbidden", "forbidden: injected fault"),
        404 => (
            "NotFound",
            "the server could not find the requested resource",
        ),
        409 => ("Conflict", "Operation cannot be fulfilled: injected fault"),
        _ => ("", "injected fault"),
    };
    let details = retry_after.map(|s| json!({ "retryAfterSeconds": s }));
    let mut r = status_resp(code, reason, message, details);
    if let Some(s) = retry_after {
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
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

/// `Some(403 response)` if `who` may not do it.
fn authorized(
    policy: &Policy,
    who: &Identity,
    verb: &str,
    resource: &str,
    name: Option<&str>,
    namespace: Option<&str>,
) -> Option<Resp> {
    let a = Attributes {
        verb,
        resource,
        name,
        namespace,
    };
    (!policy.allows(who, &a)).then(|| forbidden(who, &a))
}

fn authenticate(
    settings: &Settings,
    cluster: &Cluster,
    conn: &ConnInfo,
    headers: &http::HeaderMap,
) -> Result<Identity, Rejection> {
    if let Some(id) = &conn.cert {
        return Ok(id.clone());
    }
    let Some(auth) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(Identity::anonymous());
    };
    let auth = auth.to_str().map_err(|_| Rejection::Unknown)?;
    let Some((scheme, token)) = auth.split_once(' ') else {
        return Ok(Identity::anonymous());
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Identity::anonymous());
    }
    authenticate_token(settings, cluster, token.trim(), now())
}

/// Checks a bearer token as of `now` (Unix seconds).
pub(crate) fn authenticate_token(
    settings: &Settings,
    cluster: &Cluster,
    token: &str,
    now: f64,
) -> Result<Identity, Rejection> {
    if token == cluster.issuer_token {
        return Ok(Identity::user(rbac::ISSUER_USER));
    }
    if token == cluster.nobody_token {
        return Ok(Identity::user(rbac::NOBODY_USER));
    }
    // A legacy token Secret's token: valid while the Secret and its
    // ServiceAccount (same uid) exist, never expiring.
    if let Some((ns, sa, uid)) = cluster.secrets.token_owner(token) {
        return match cluster.service_account_uid(&ns, &sa) {
            Some(current) if current == uid => Ok(Identity::service_account(&ns, &sa)),
            _ => Err(Rejection::Unknown),
        };
    }
    let signer = cluster.signer().map_err(|_| Rejection::Unknown)?;
    let claims = signer.verify(token).map_err(|e| match e {
        VerifyError::Malformed => Rejection::Unknown,
        VerifyError::BadSignature => Rejection::BadSignature,
    })?;
    if claims.iss != ISSUER || !claims.aud.iter().any(|a| settings.audiences.contains(a)) {
        return Err(Rejection::Unknown);
    }
    let leeway = settings.leeway.as_secs_f64();
    if claims.nbf as f64 > now + leeway || claims.iat as f64 > now + leeway {
        return Err(Rejection::NotYetValid);
    }
    if now - leeway > claims.exp as f64 {
        return Err(Rejection::Expired);
    }
    let k = &claims.kubernetes_io;
    match cluster.service_account_uid(&k.namespace, &k.serviceaccount.name) {
        Some(uid) if uid == k.serviceaccount.uid => Ok(Identity {
            credential_id: Some(format!("JTI={}", claims.jti)),
            uid: Some(uid),
            ..Identity::service_account(&k.namespace, &k.serviceaccount.name)
        }),
        _ => Err(Rejection::Unknown),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRequestJson {
    kind: Option<String>,
    api_version: Option<String>,
    #[serde(default)]
    spec: TokenRequestSpecJson,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TokenRequestSpecJson {
    #[serde(default)]
    audiences: Option<Vec<String>>,
    expiration_seconds: Option<i64>,
    bound_object_ref: Option<Value>,
}

/// Human form of a duration as in the real validation message ("10 minutes").
fn human(secs: u64) -> String {
    let (n, unit) = if secs.is_multiple_of(3600) && secs > 0 {
        (secs / 3600, "hour")
    } else if secs.is_multiple_of(60) && secs > 0 {
        (secs / 60, "minute")
    } else {
        (secs, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

fn invalid_expiration(value: i64, what: &str) -> Resp {
    let cause = format!("Invalid value: {value}: {what}");
    status_resp(
        422,
        "Invalid",
        &format!(
            "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: {cause}"
        ),
        Some(json!({
            "group": "authentication.k8s.io",
            "kind": "TokenRequest",
            "causes": [{
                "reason": "FieldValueInvalid",
                "message": cause,
                "field": "spec.expirationSeconds",
            }],
        })),
    )
}

/// Parses a JSON or YAML TokenRequest; also returns the paths of the fields
/// the real server does not know (it answers them with a `Warning`).
fn parse_token_request(
    content_type: &str,
    body: &[u8],
) -> Result<(TokenRequestJson, Vec<String>), String> {
    let value: Value = if content_type == "application/yaml" {
        serde_yaml_ng::from_slice(body).map_err(|e| e.to_string())?
    } else {
        serde_json::from_slice(body).map_err(|e| e.to_string())?
    };
    let mut unknown = Vec::new();
    unknown_fields(&value, TOKEN_REQUEST_FIELDS, &mut unknown);
    let t = serde_json::from_value(value).map_err(|e| e.to_string())?;
    Ok((t, unknown))
}

/// The top-level fields of a TokenRequest, the fields each knows (`None`:
/// not checked, like `metadata`'s), and those of `spec.boundObjectRef`.
type KnownFields = &'static [(
    &'static str,
    Option<&'static [&'static str]>,
    Option<&'static [&'static str]>,
)];

const TOKEN_REQUEST_FIELDS: KnownFields = &[
    ("apiVersion", None, None),
    ("kind", None, None),
    ("metadata", None, None),
    (
        "spec",
        Some(&["audiences", "expirationSeconds", "boundObjectRef"]),
        Some(&["kind", "apiVersion", "name", "uid"]),
    ),
    ("status", Some(&["token", "expirationTimestamp"]), None),
];

/// Collects `spec.x`-style paths of unknown fields of a TokenRequest body.
fn unknown_fields(value: &Value, fields: KnownFields, out: &mut Vec<String>) {
    let Some(top) = value.as_object() else {
        return;
    };
    for (key, v) in top {
        let Some((_, children, bound)) = fields.iter().find(|(k, _, _)| k == key) else {
            out.push(key.clone());
            continue;
        };
        let (Some(children), Some(obj)) = (children, v.as_object()) else {
            continue;
        };
        for (k, v) in obj {
            if !children.contains(&k.as_str()) {
                out.push(format!("{key}.{k}"));
            } else if let (Some(bound), "boundObjectRef", Some(b)) =
                (bound, k.as_str(), v.as_object())
            {
                out.extend(
                    b.keys()
                        .filter(|f| !bound.contains(&f.as_str()))
                        .map(|f| format!("{key}.{k}.{f}")),
                );
            }
        }
    }
}

/// Checks `spec.boundObjectRef` as the real server does (Pod, Secret and
/// Node in the core group; the object must exist and its uid match) and
/// returns the claim the token carries for it (`node`, `secret`).
fn bound_object(
    settings: &Settings,
    cluster: &Cluster,
    ns: &str,
    b: &Value,
) -> Result<(&'static str, Value), Box<Resp>> {
    let field = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or_default();
    let (kind, api_version, name, uid) = (
        field("kind"),
        field("apiVersion"),
        field("name"),
        field("uid"),
    );
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let found = match (group, kind) {
        ("", "Pod") => None, // the simulator has no Pods
        ("", "Node") => settings
            .nodes
            .iter()
            .any(|n| n == name)
            .then(|| node_uid(name, &settings.nodes)),
        ("", "Secret") => cluster.secrets.get(ns, name).map(|s| s.uid),
        _ => {
            return Err(Box::new(bad_request(&format!(
                "cannot bind token to object of type {group}/{version}, Kind={kind}"
            ))));
        }
    };
    let resource = match kind {
        "Pod" => "pods",
        "Node" => "nodes",
        _ => "secrets",
    };
    let Some(actual) = found else {
        return Err(Box::new(not_found(resource, name)));
    };
    if !uid.is_empty() && uid != actual {
        return Err(Box::new(status_resp(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {kind} \"{name}\": the UID in the bound object \
                 reference ({uid}) does not match the UID in record. The object might have been \
                 deleted and then recreated"
            ),
            Some(json!({"name": name, "kind": kind})),
        )));
    }
    let key = if kind == "Node" { "node" } else { "secret" };
    Ok((key, json!({"name": name, "uid": actual})))
}

async fn token_request(
    settings: &Settings,
    cluster: &Cluster,
    req: Request<Incoming>,
    ns: &str,
    name: &str,
) -> Result<Resp, DropConnection> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Ok(status_resp(
                413,
                "RequestEntityTooLarge",
                "Request entity too large: limit is 1048576",
                None,
            ));
        }
        Err(_) => return Err(DropConnection),
    };
    let mut warnings = Vec::new();
    let (audiences, expiration, bound) = match content_type.as_str() {
        "application/vnd.kubernetes.protobuf" => match proto::decode_token_request(&body) {
            Ok(s) => (
                s.audiences,
                s.expiration_seconds,
                s.bound_object.map(|[kind, api_version, name, uid]| {
                    let mut b = json!({"kind": kind, "apiVersion": api_version, "name": name});
                    if !uid.is_empty() {
                        b["uid"] = json!(uid);
                    }
                    b
                }),
            ),
            Err(e) => {
                return Ok(bad_request(&format!(
                    "failed to decode protobuf TokenRequest: {e}"
                )));
            }
        },
        "" | "application/json" | "application/yaml" => {
            match parse_token_request(&content_type, &body) {
                Ok((t, unknown)) if t.kind.as_deref().is_none_or(|k| k == "TokenRequest") => {
                    // Like the real server: a Warning per field it does not know.
                    warnings = unknown
                        .iter()
                        .map(|f| format!("299 - \"unknown field \\\"{f}\\\"\""))
                        .collect();
                    (
                        t.spec.audiences.unwrap_or_default(),
                        t.spec.expiration_seconds,
                        t.spec.bound_object_ref,
                    )
                }
                Ok((t, _)) => {
                    // The real server's decoder tries to convert the other kind.
                    let kind = t.kind.unwrap_or_default();
                    let version = t.api_version.unwrap_or_default();
                    let package = version.rsplit('/').next().unwrap_or_default();
                    return Ok(bad_request(&format!(
                        "{kind} in version \"{version}\" cannot be handled as a TokenRequest: \
                     converting ({package}.{kind}) to (authentication.TokenRequest): unknown conversion"
                    )));
                }
                Err(e) => {
                    return Ok(bad_request(&format!(
                        "couldn't decode TokenRequest: json parse error: {e}"
                    )));
                }
            }
        }
        _ => {
            return Ok(status_resp(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf",
                None,
            ));
        }
    };
    // The real server's admission refuses a create in a namespace that does
    // not exist, before anything else is looked at.
    if !cluster.namespace_exists(ns) {
        return Ok(not_found("namespaces", ns));
    }
    // The real server looks the ServiceAccount up before it validates the
    // spec: a missing one is 404 even with an invalid expirationSeconds.
    let Some(uid) = cluster.service_account_uid(ns, name) else {
        return Ok(not_found("serviceaccounts", name));
    };
    let requested = expiration.unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    let min = settings.min_expiration.as_secs();
    if requested < i64::try_from(min).unwrap_or(i64::MAX) {
        return Ok(invalid_expiration(
            requested,
            &format!("may not specify a duration less than {}", human(min)),
        ));
    }
    if requested > MAX_EXPIRATION_SECONDS {
        return Ok(invalid_expiration(
            requested,
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let mut granted = requested;
    let mut warning = None;
    if let Some(max) = settings.max_expiration {
        let max = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
        if granted > max {
            warning = Some(format!(
                "299 - \"requested expiration of {granted} seconds shortened to {max} seconds\""
            ));
            granted = max;
        }
    }
    let bound_claim = match &bound {
        Some(b) => match bound_object(settings, cluster, ns, b) {
            Ok(claim) => Some(claim),
            Err(resp) => return Ok(*resp),
        },
        None => None,
    };
    let audiences = if audiences.is_empty() {
        settings.audiences.clone()
    } else {
        audiences
    };
    let iat = now() as i64;
    let exp = iat + granted;
    let claims = Claims {
        aud: audiences.clone(),
        exp,
        iat,
        iss: ISSUER.to_string(),
        jti: super::cluster::new_uid(),
        kubernetes_io: KubernetesClaim {
            namespace: ns.to_string(),
            serviceaccount: ServiceAccountRef {
                name: name.to_string(),
                uid,
            },
        },
        nbf: iat,
        sub: format!("system:serviceaccount:{ns}:{name}"),
    };
    let mut claims = serde_json::to_value(&claims).unwrap_or_default();
    if let Some((key, claim)) = bound_claim {
        claims["kubernetes.io"][key] = claim;
    }
    let token = match cluster.signer().and_then(|s| s.sign(&claims)) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(cluster = %cluster.name, error = %e, "signing failed");
            return Ok(status_resp(
                500,
                "InternalError",
                "Internal error occurred: failed to sign token",
                None,
            ));
        }
    };
    cluster.record_issued(ns, name, exp);
    let expiration_timestamp = jiff::Timestamp::from_second(exp)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let spec = json!({
        "audiences": audiences,
        "expirationSeconds": granted,
        "boundObjectRef": bound,
    });
    let created = jiff::Timestamp::from_second(iat)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut resp = json_resp(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {
                "name": name,
                "namespace": ns,
                "uid": super::cluster::new_uid(),
                "creationTimestamp": created,
            },
            "spec": spec,
            "status": { "token": token, "expirationTimestamp": expiration_timestamp },
        }),
    );
    for w in warnings.into_iter().chain(warning) {
        if let Ok(w) = HeaderValue::from_str(&w) {
            resp.headers_mut().append(http::header::WARNING, w);
        }
    }
    Ok(resp)
}

/// Version, discovery and health documents (`path` as requested, e.g. `/api/v1`).
fn non_resource(path: &str) -> Resp {
    match path {
        "/version" => json_resp(
            StatusCode::OK,
            &json!({
                // The version the conformance suite measures it against
                // (testbed/versions).
                "major": "1",
                "minor": "37",
                "emulationMajor": "1",
                "emulationMinor": "37",
                "minCompatibilityMajor": "1",
                "minCompatibilityMinor": "36",
                "gitVersion": "v1.37.2",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2026-11-12T00:00:00Z",
                "goVersion": "go1.26.8",
                "compiler": "gc",
                "platform": "linux/amd64",
            }),
        ),
        "/api" => json_resp(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}],
            }),
        ),
        "/apis" => json_resp(
            StatusCode::OK,
            &json!({
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [{
                    "name": "authentication.k8s.io",
                    "versions": [{"groupVersion": "authentication.k8s.io/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": "authentication.k8s.io/v1", "version": "v1"},
                }, {
                    "name": "authorization.k8s.io",
                    "versions": [{"groupVersion": "authorization.k8s.io/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": "authorization.k8s.io/v1", "version": "v1"},
                }],
            }),
        ),
        "/api/v1" => json_resp(StatusCode::OK, &core_resources()),
        "/apis/authentication.k8s.io/v1" => json_resp(
            StatusCode::OK,
            &json!({"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": "authentication.k8s.io/v1", "resources": [
                {"name": "selfsubjectreviews", "singularName": "selfsubjectreview",
                 "namespaced": false, "kind": "SelfSubjectReview", "verbs": ["create"]},
            ]}),
        ),
        "/apis/authorization.k8s.io/v1" => json_resp(StatusCode::OK, &authorization_resources()),
        _ => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok"),
    }
}

fn core_resources() -> Value {
    let r = |name: &str, kind: &str, namespaced: bool, verbs: &[&str]| json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": verbs});
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            r("nodes", "Node", false, &["get", "list"]),
            r("nodes/proxy", "NodeProxyOptions", false, &["get"]),
            r("serviceaccounts", "ServiceAccount", true, &["get"]),
            r("secrets", "Secret", true, &["get", "list"]),
            {"name": "serviceaccounts/token", "singularName": "", "namespaced": true,
             "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]},
        ],
    })
}

fn authorization_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "authorization.k8s.io/v1",
        "resources": [
            {"name": "selfsubjectaccessreviews", "singularName": "selfsubjectaccessreview",
             "namespaced": false, "kind": "SelfSubjectAccessReview", "verbs": ["create"]},
        ],
    })
}

/// The uid of simulated node `name`.
fn node_uid(name: &str, all: &[String]) -> String {
    let index = all.iter().position(|n| n == name).unwrap_or(0) + 1;
    format!("00000000-0000-4000-8000-{index:012}")
}

fn node_json(name: &str, all: &[String]) -> Value {
    let index = all.iter().position(|n| n == name).unwrap_or(0) + 1;
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": node_uid(name, all),
            "resourceVersion": "1",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
        },
        "spec": {},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": format!("10.0.{}.{}", index / 250, index % 250 + 1)},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://2.1.0", "kubeletVersion": "v1.37.2",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
        },
    })
}

fn node_list(nodes: &[String]) -> Value {
    json!({
        "kind": "NodeList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "1"},
        "items": nodes.iter().map(|n| {
            let mut v = node_json(n, nodes);
            if let Some(m) = v.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            v
        }).collect::<Vec<_>>(),
    })
}

/// What the kubelet behind `/api/v1/nodes/<node>/proxy/<rest>` answers.
fn kubelet(cluster: &str, node: &str, rest: &[&str]) -> Resp {
    match rest {
        ["metrics", "cadvisor"] => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            cadvisor_text(cluster, node),
        ),
        ["metrics"] => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            "# HELP kubelet_running_pods Number of pods that have a running pod sandbox\n\
             # TYPE kubelet_running_pods gauge\nkubelet_running_pods 3\n",
        ),
        ["healthz"] => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok"),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "404 page not found\n",
        ),
    }
}

fn cadvisor_text(cluster: &str, node: &str) -> String {
    let secs = now();
    format!(
        "# HELP cadvisor_version_info A metric with a constant '1' value labeled by kernel version, OS version, docker version, cadvisor version & cadvisor revision.\n\
         # TYPE cadvisor_version_info gauge\n\
         cadvisor_version_info{{cadvisorRevision=\"\",cadvisorVersion=\"\",dockerVersion=\"\",kernelVersion=\"6.1.0\",osVersion=\"mcprom-sim {cluster}/{node}\"}} 1\n\
         # HELP container_cpu_usage_seconds_total Cumulative cpu time consumed in seconds.\n\
         # TYPE container_cpu_usage_seconds_total counter\n\
         container_cpu_usage_seconds_total{{container=\"\",cpu=\"total\",id=\"/\",image=\"\",name=\"\",namespace=\"\",pod=\"\"}} {cpu:.3}\n\
         # HELP container_memory_working_set_bytes Current working set in bytes.\n\
         # TYPE container_memory_working_set_bytes gauge\n\
         container_memory_working_set_bytes{{container=\"\",id=\"/\",image=\"\",name=\"\",namespace=\"\",pod=\"\"}} 1.073741824e+09\n\
         # HELP machine_cpu_cores Number of logical CPU cores.\n\
         # TYPE machine_cpu_cores gauge\n\
         machine_cpu_cores{{boot_id=\"\",machine_id=\"\",system_uuid=\"\"}} 4\n",
        cpu = (secs % 1_000_000.0) / 10.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            min_expiration: Duration::from_secs(600),
            max_expiration: None,
            leeway: Duration::ZERO,
            audiences: vec![ISSUER.to_string()],
            policy: Policy {
                allow_self_renew: false,
            },
            nodes: vec!["node-1".into()],
        }
    }

    fn token_for(c: &Cluster, iat: i64, exp: i64) -> String {
        let uid = c
            .service_account_uid("kube-system", "prometheus-test")
            .unwrap();
        c.signer()
            .unwrap()
            .sign(&Claims {
                aud: vec![ISSUER.into()],
                exp,
                iat,
                iss: ISSUER.into(),
                jti: "x".into(),
                kubernetes_io: KubernetesClaim {
                    namespace: "kube-system".into(),
                    serviceaccount: ServiceAccountRef {
                        name: "prometheus-test".into(),
                        uid,
                    },
                },
                nbf: iat,
                sub: "system:serviceaccount:kube-system:prometheus-test".into(),
            })
            .unwrap()
    }

    #[test]
    fn token_validity_follows_exp_nbf_and_leeway() {
        let c = Cluster::new("c1".into());
        let mut s = settings();
        let t = token_for(&c, 1000, 2000);
        assert!(authenticate_token(&s, &c, &t, 1500.0).is_ok());
        assert_eq!(
            authenticate_token(&s, &c, &t, 2000.5),
            Err(Rejection::Expired)
        );
        assert_eq!(
            authenticate_token(&s, &c, &t, 999.0),
            Err(Rejection::NotYetValid)
        );
        s.leeway = Duration::from_secs(60);
        assert!(authenticate_token(&s, &c, &t, 2059.0).is_ok());
        assert_eq!(
            authenticate_token(&s, &c, &t, 2061.0),
            Err(Rejection::Expired)
        );
    }

    #[test]
    fn foreign_deleted_and_garbage_tokens_are_rejected() {
        let c1 = Cluster::new("c1".into());
        let c2 = Cluster::new("c2".into());
        let s = settings();
        let t = token_for(&c1, 1000, 2000);
        assert_eq!(
            authenticate_token(&s, &c2, &t, 1500.0),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            authenticate_token(&s, &c1, "garbage", 1500.0),
            Err(Rejection::Unknown)
        );
        assert_eq!(
            authenticate_token(&s, &c1, &c2.issuer_token, 1500.0),
            Err(Rejection::Unknown)
        );
        c1.delete_service_account("kube-system", "prometheus-test");
        c1.create_service_account("kube-system", "prometheus-test");
        assert_eq!(
            authenticate_token(&s, &c1, &t, 1500.0),
            Err(Rejection::Unknown)
        );
    }

    #[test]
    fn a_rotated_signing_key_rejects_every_earlier_token_and_signs_new_ones() {
        let c = Cluster::new("c1".into());
        let s = settings();
        let old = token_for(&c, 1000, 2000);
        assert!(authenticate_token(&s, &c, &old, 1500.0).is_ok());
        c.rotate_signing_key().unwrap();
        assert_eq!(
            authenticate_token(&s, &c, &old, 1500.0),
            Err(Rejection::BadSignature)
        );
        let new = token_for(&c, 1000, 2000);
        assert!(authenticate_token(&s, &c, &new, 1500.0).is_ok());
    }

    #[test]
    fn unknown_token_request_fields_are_named_like_the_real_warnings() {
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": {"name": "x", "whatever": 1},
            "extra": 1,
            "spec": {"expirationSecs": 600, "boundObjectRef": {"kind": "Node", "colour": "red"}},
            "status": {"token": ""},
        });
        let mut found = Vec::new();
        unknown_fields(&body, TOKEN_REQUEST_FIELDS, &mut found);
        found.sort();
        assert_eq!(
            found,
            ["extra", "spec.boundObjectRef.colour", "spec.expirationSecs"]
        );
    }

    #[test]
    fn durations_read_like_the_real_validation_message() {
        assert_eq!(human(600), "10 minutes");
        assert_eq!(human(1), "1 second");
        assert_eq!(human(3600), "1 hour");
        assert_eq!(human(90), "90 seconds");
    }
}
