//! HTTP helpers of the simulated API: the response types, plain and JSON
//! responses, kube-apiserver's `Status` failure bodies (401, 403, 404, 400)
//! and the bodies and `Retry-After` header of injected status faults.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::rbac::{self, Attributes, Identity};

/// Response body type of every simulated endpoint.
pub(crate) type Body = Full<Bytes>;
/// A complete response.
pub(crate) type Resp = Response<Body>;

pub(super) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Resp {
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

pub(super) fn unauthorized() -> Resp {
    status_resp(401, "Unauthorized", "Unauthorized", None)
}

pub(super) fn not_found_path() -> Resp {
    status_resp(
        404,
        "NotFound",
        "the server could not find the requested resource",
        Some(json!({})),
    )
}

pub(super) fn not_found(kind: &str, name: &str) -> Resp {
    status_resp(
        404,
        "NotFound",
        &format!("{kind} \"{name}\" not found"),
        Some(json!({"name": name, "kind": kind})),
    )
}

pub(super) fn forbidden(who: &Identity, a: &Attributes<'_>) -> Resp {
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

pub(super) fn bad_request(message: &str) -> Resp {
    status_resp(400, "BadRequest", message, None)
}

/// The body of an injected status fault.
pub(super) fn fault_resp(code: u16, retry_after: Option<u64>) -> Resp {
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

/// A request's media type: its `Content-Type` without parameters, in lower
/// case; empty when it has none.
pub(crate) fn media_type<B>(req: &http::Request<B>) -> String {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}
