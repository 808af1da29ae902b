//! "Who am I" and "may I": `SelfSubjectReview`
//! (`POST /apis/authentication.k8s.io/v1/selfsubjectreviews`, what
//! `kubectl auth whoami` sends) and `SelfSubjectAccessReview`
//! (`POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`, what
//! `kubectl auth can-i` sends), answered from the sim's RBAC rules.
//!
//! As on a real cluster (`system:basic-user`), every authenticated user may
//! create both; anonymous requests are forbidden.

use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::api::{DropConnection, Resp, json_resp, status_resp};
use super::proto;
use super::rbac::{Attributes, Identity, Policy};

/// Largest review body accepted.
const MAX_BODY: usize = 64 * 1024;

/// `spec.resourceAttributes` (empty strings are omitted, as by the real server).
#[derive(Deserialize, Serialize, Default, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct ResourceAttributes {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    verb: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    resource: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    subresource: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
}

/// `spec.nonResourceAttributes`.
#[derive(Deserialize, Serialize, Default, Debug, Clone, PartialEq, Eq)]
struct NonResourceAttributes {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    verb: String,
}

#[derive(Deserialize, Serialize, Default, Debug, Clone)]
#[serde(rename_all = "camelCase")]
struct AccessReviewSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resource_attributes: Option<ResourceAttributes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    non_resource_attributes: Option<NonResourceAttributes>,
}

impl From<proto::AccessReviewSpec> for AccessReviewSpec {
    fn from(p: proto::AccessReviewSpec) -> Self {
        AccessReviewSpec {
            resource_attributes: p.resource.map(
                |[namespace, verb, group, version, resource, subresource, name]| {
                    ResourceAttributes {
                        namespace,
                        verb,
                        group,
                        version,
                        resource,
                        subresource,
                        name,
                    }
                },
            ),
            non_resource_attributes: p
                .non_resource
                .map(|(path, verb)| NonResourceAttributes { path, verb }),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<S> {
    kind: Option<String>,
    api_version: Option<String>,
    #[serde(default = "none")]
    spec: Option<S>,
}

fn none<S>() -> Option<S> {
    None
}

/// The real server's 403 for a review an anonymous user may not create.
fn forbidden_review(who: &Identity, resource: &str, group: &str) -> Resp {
    status_resp(
        403,
        "Forbidden",
        &format!(
            "{resource}.{group} is forbidden: User \"{}\" cannot create resource \"{resource}\" in API group \"{group}\" at the cluster scope",
            who.user
        ),
        Some(json!({ "group": group, "kind": resource })),
    )
}

/// A review body: JSON, or protobuf as kubectl sends it.
enum Body {
    Json(bytes::Bytes),
    Protobuf(bytes::Bytes),
}

async fn read_body(req: Request<Incoming>) -> Result<Result<Body, Resp>, DropConnection> {
    let content_type = crate::api::media_type(&req);
    let protobuf = content_type == "application/vnd.kubernetes.protobuf";
    if !protobuf && !matches!(content_type.as_str(), "" | "application/json") {
        return Ok(Err(status_resp(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format ({content_type}) - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf"
            ),
            None,
        )));
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) if protobuf => Ok(Ok(Body::Protobuf(b.to_bytes()))),
        Ok(b) => Ok(Ok(Body::Json(b.to_bytes()))),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Ok(Err(status_resp(
            413,
            "RequestEntityTooLarge",
            &format!("Request entity too large: limit is {MAX_BODY}"),
            None,
        ))),
        Err(_) => Err(DropConnection),
    }
}

/// The envelope of a protobuf body, checked to carry `api_version` `kind`.
fn protobuf_raw<'a>(body: &'a [u8], kind: &str, api_version: &str) -> Result<&'a [u8], Box<Resp>> {
    let bad = |message: String| Box::new(status_resp(400, "BadRequest", &message, None));
    let (found_version, found_kind, raw) = proto::decode_envelope(body)
        .map_err(|e| bad(format!("failed to decode protobuf {kind}: {e}")))?;
    if found_version != api_version || found_kind != kind {
        return Err(bad(format!(
            "expected {api_version} {kind}, got {found_version} {found_kind}"
        )));
    }
    Ok(raw)
}

fn decode<S: serde::de::DeserializeOwned>(
    body: &[u8],
    kind: &str,
    api_version: &str,
) -> Result<Option<S>, Box<Resp>> {
    let envelope: Envelope<S> = serde_json::from_slice(body).map_err(|e| {
        Box::new(status_resp(
            400,
            "BadRequest",
            &format!("couldn't decode {kind}: json parse error: {e}"),
            None,
        ))
    })?;
    if envelope.kind.as_deref().is_some_and(|k| k != kind)
        || envelope
            .api_version
            .as_deref()
            .is_some_and(|v| v != api_version)
    {
        return Err(Box::new(status_resp(
            400,
            "BadRequest",
            &format!(
                "expected {api_version} {kind}, got {} {}",
                envelope.api_version.unwrap_or_default(),
                envelope.kind.unwrap_or_default()
            ),
            None,
        )));
    }
    Ok(envelope.spec)
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews`.
fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// `status.userInfo` as the real server fills it in.
fn user_info(who: &Identity) -> Value {
    let mut info = json!({ "username": who.user, "groups": who.groups });
    if let Some(uid) = &who.uid {
        info["uid"] = json!(uid);
    }
    if let Some(id) = &who.credential_id {
        info["extra"] = json!({ "authentication.kubernetes.io/credential-id": [id] });
    }
    info
}

pub(crate) async fn self_subject_review(
    who: &Identity,
    req: Request<Incoming>,
) -> Result<Resp, DropConnection> {
    if !who.is_authenticated() {
        return Ok(forbidden_review(
            who,
            "selfsubjectreviews",
            "authentication.k8s.io",
        ));
    }
    let body = match read_body(req).await? {
        Ok(b) => b,
        Err(resp) => return Ok(resp),
    };
    let checked = match &body {
        Body::Json(b) => {
            decode::<Value>(b, "SelfSubjectReview", "authentication.k8s.io/v1").map(drop)
        }
        Body::Protobuf(b) => {
            protobuf_raw(b, "SelfSubjectReview", "authentication.k8s.io/v1").map(drop)
        }
    };
    if let Err(resp) = checked {
        return Ok(*resp);
    }
    Ok(json_resp(
        StatusCode::CREATED,
        &json!({
            "kind": "SelfSubjectReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": { "creationTimestamp": now_rfc3339() },
            "status": { "userInfo": user_info(who) },
        }),
    ))
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`.
pub(crate) async fn self_subject_access_review(
    policy: &Policy,
    who: &Identity,
    req: Request<Incoming>,
) -> Result<Resp, DropConnection> {
    if !who.is_authenticated() {
        return Ok(forbidden_review(
            who,
            "selfsubjectaccessreviews",
            "authorization.k8s.io",
        ));
    }
    let body = match read_body(req).await? {
        Ok(b) => b,
        Err(resp) => return Ok(resp),
    };
    let (kind, api_version) = ("SelfSubjectAccessReview", "authorization.k8s.io/v1");
    let decoded = match &body {
        Body::Json(b) => decode(b, kind, api_version).map(Option::unwrap_or_default),
        Body::Protobuf(b) => protobuf_raw(b, kind, api_version).and_then(|raw| {
            proto::decode_access_review_message(raw)
                .map(AccessReviewSpec::from)
                .map_err(|e| {
                    Box::new(status_resp(
                        400,
                        "BadRequest",
                        &format!("failed to decode protobuf {kind}: {e}"),
                        None,
                    ))
                })
        }),
    };
    let spec = match decoded {
        Ok(spec) => spec,
        Err(resp) => return Ok(*resp),
    };
    let reason = match (&spec.resource_attributes, &spec.non_resource_attributes) {
        (Some(r), None) => {
            let resource = if r.subresource.is_empty() {
                r.resource.clone()
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            let a = Attributes {
                verb: &r.verb,
                resource: &resource,
                name: (!r.name.is_empty()).then_some(r.name.as_str()),
                namespace: (!r.namespace.is_empty()).then_some(r.namespace.as_str()),
            };
            policy.allowed_because(who, &r.group, &a)
        }
        (None, Some(n)) => {
            let (ns, name) = (
                super::cluster::MANAGED_NAMESPACE,
                super::cluster::MANAGED_NAME,
            );
            if who.groups.iter().any(|g| g == "system:masters") {
                Some("RBAC: allowed by ClusterRoleBinding \"cluster-admin\" of ClusterRole \"cluster-admin\" to Group \"system:masters\"".to_string())
            } else if n.path == "/metrics" {
                // Granted by `mcprom rbac`'s scrape ClusterRole (nonResourceURLs).
                (n.verb == "get" && who.user == format!("system:serviceaccount:{ns}:{name}")).then(|| {
                    format!(
                        "RBAC: allowed by ClusterRoleBinding \"mcprom:scrape:{ns}:{name}\" of ClusterRole \"mcprom:scrape:{ns}:{name}\" to ServiceAccount \"{name}/{ns}\""
                    )
                })
            } else {
                (n.verb == "get" && policy.allows_path(who, &n.path)).then(|| {
                    "RBAC: allowed by ClusterRoleBinding \"system:discovery\" of ClusterRole \"system:discovery\" to Group \"system:authenticated\"".to_string()
                })
            }
        }
        (r, n) => {
            // Word for word the real server's answer (its kind is empty
            // here): the value shown is the non-resource attributes as Go
            // prints them, or null.
            let value = match (r, n) {
                (Some(_), Some(n)) => {
                    format!("{{\"Path\":{},\"Verb\":{}}}", json!(n.path), json!(n.verb))
                }
                _ => "null".to_string(),
            };
            let cause = format!(
                "Invalid value: {value}: exactly one of nonResourceAttributes or \
                 resourceAttributes must be specified"
            );
            return Ok(status_resp(
                422,
                "Invalid",
                &format!(".authorization.k8s.io \"\" is invalid: spec: {cause}"),
                Some(json!({
                    "group": "authorization.k8s.io",
                    "causes": [{ "reason": "FieldValueInvalid", "message": cause, "field": "spec" }],
                })),
            ));
        }
    };
    let mut status = json!({ "allowed": reason.is_some() });
    if let Some(reason) = reason {
        status["reason"] = json!(reason);
    }
    Ok(json_resp(
        StatusCode::CREATED,
        &json!({
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {},
            "spec": spec,
            "status": status,
        }),
    ))
}
