//! The non-resource documents: `/version`, the health endpoints and the
//! discovery documents (`/api`, `/apis`, `/api/v1` and the two API groups).

use http::StatusCode;
use serde_json::{Value, json};

use super::response::respond;
use super::{Resp, json_resp};

/// Version, discovery and health documents (`path` as requested, e.g. `/api/v1`).
pub(super) fn non_resource(path: &str) -> Resp {
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
