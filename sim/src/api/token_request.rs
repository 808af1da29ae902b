//! `POST .../serviceaccounts/{name}/token`: decoding a JSON, YAML or
//! protobuf TokenRequest, the real server's validation order and messages,
//! `spec.boundObjectRef`, unknown-field warnings, and signing the token.

use http::header::HeaderValue;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cluster::{self, Cluster};
use crate::jwt::{Claims, ISSUER, KubernetesClaim, ServiceAccountRef};
use crate::proto;

use super::nodes::node_uid;
use super::response::{bad_request, media_type, not_found};
use super::{DropConnection, Resp, Settings, json_resp, now, status_resp};

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;
/// Default `spec.expirationSeconds`, as on the real server.
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The real server refuses anything above 2^32 seconds.
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

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

pub(super) async fn token_request(
    settings: &Settings,
    cluster: &Cluster,
    req: Request<Incoming>,
    ns: &str,
    name: &str,
) -> Result<Resp, DropConnection> {
    let content_type = media_type(&req);
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
        jti: cluster::new_uid(),
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
                "uid": cluster::new_uid(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
