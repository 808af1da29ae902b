//! A kube client configured like mcprom's obtains tokens from the sim.

mod sim_support;

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use sim_support::*;

/// A kube client from a kubeconfig, retries off (mcprom does its own).
async fn kube_client(kubeconfig_yaml: &str) -> Client {
    let kc = Kubeconfig::from_yaml(kubeconfig_yaml).expect("kubeconfig parses");
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    config.default_retry = false;
    Client::try_from(config).expect("kube client")
}

/// The `nobody` kubeconfig with the issuer's static token instead.
fn issuer_kubeconfig(dir: &std::path::Path, cluster: &str) -> String {
    let nobody = std::fs::read_to_string(dir.join(cluster).join("kubeconfig-nobody")).unwrap();
    let line = nobody
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("kubeconfig-nobody has a token");
    let nobody_token: String = serde_json::from_str(line).expect("quoted token");
    nobody.replace(&nobody_token, &issuer_token(dir, cluster))
}

fn token_request(expiration: i64) -> TokenRequest {
    TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(expiration),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn kube_client_with_issuer_token_gets_a_token_with_the_right_claims() {
    let (_dir, sim) = start(|_| {}).await;
    let c1 = &sim.ready().clusters[0];
    let dir = c1.kubeconfig.parent().unwrap().parent().unwrap();
    let client = kube_client(&issuer_kubeconfig(dir, "c1")).await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "kube-system");
    let tr = sas
        .create_token_request(
            "prometheus-test",
            &PostParams::default(),
            &token_request(1800),
        )
        .await
        .expect("token issued");
    let status = tr.status.expect("status");
    let claims = claims(&status.token);
    assert_eq!(
        claims["sub"],
        "system:serviceaccount:kube-system:prometheus-test"
    );
    assert_eq!(
        claims["aud"],
        serde_json::json!(["https://kubernetes.default.svc.cluster.local"])
    );
    assert_eq!(
        claims["iss"],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(claims["kubernetes.io"]["namespace"], "kube-system");
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 1800);
    assert_eq!(claims["nbf"].as_i64(), Some(iat));
    assert_eq!(status.expiration_timestamp.0.as_second(), exp);
    assert_eq!(tr.spec.expiration_seconds, Some(1800));

    // The issuer may mint only prometheus-test, and may not list nodes.
    let err = sas
        .create_token_request("default", &PostParams::default(), &token_request(1800))
        .await
        .expect_err("issuer may not mint other tokens");
    let kube::Error::Api(s) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!(s.code, 403);
    assert_eq!(
        s.message,
        "serviceaccounts \"default\" is forbidden: User \"mcprom-issuer\" cannot create resource \
         \"serviceaccounts/token\" in API group \"\" in the namespace \"kube-system\""
    );
    let nodes: Api<Node> = Api::all(client);
    assert!(nodes.list(&Default::default()).await.is_err());

    // The issued token lists nodes.
    let mut kc = issuer_kubeconfig(dir, "c1");
    kc = kc.replace(&issuer_token(dir, "c1"), &status.token);
    let nodes: Api<Node> = Api::all(kube_client(&kc).await);
    let list = nodes
        .list(&Default::default())
        .await
        .expect("SA token lists nodes");
    assert_eq!(list.items.len(), 1);
    assert_eq!(sim.cluster("c1").unwrap().stats().tokens_issued, 1);
}

#[tokio::test]
async fn below_minimum_is_422_with_the_real_message() {
    let (_dir, sim) = start(|_| {}).await;
    let c1 = &sim.ready().clusters[0];
    let client = kube_client(&std::fs::read_to_string(&c1.kubeconfig).unwrap()).await;
    let sas: Api<ServiceAccount> = Api::namespaced(client, "kube-system");
    let err = sas
        .create_token_request(
            "prometheus-test",
            &PostParams::default(),
            &token_request(300),
        )
        .await
        .expect_err("300 s is below the minimum");
    let kube::Error::Api(s) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!(s.code, 422);
    assert_eq!(
        s.message,
        "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: Invalid \
         value: 300: may not specify a duration less than 10 minutes"
    );
}

#[tokio::test]
async fn above_maximum_is_clamped_with_a_warning_header() {
    let (_dir, sim) = start(|c| c.max_expiration = Some(Duration::from_secs(7200))).await;
    let c1 = &sim.ready().clusters[0];
    let client = kube_client(&std::fs::read_to_string(&c1.kubeconfig).unwrap()).await;
    let body = serde_json::to_vec(&serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 10800},
    }))
    .unwrap();
    let req = http::Request::post(TOKEN_PATH)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(body))
        .unwrap();
    let resp = client.send(req).await.expect("raw TokenRequest");
    assert_eq!(resp.status(), 201);
    assert_eq!(
        resp.headers().get("warning").and_then(|v| v.to_str().ok()),
        Some("299 - \"requested expiration of 10800 seconds shortened to 7200 seconds\"")
    );
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let tr: TokenRequest = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(tr.spec.expiration_seconds, Some(7200));
    let c = claims(&tr.status.unwrap().token);
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        7200
    );
}

#[tokio::test]
async fn protobuf_bodies_are_accepted_and_garbage_is_400() {
    let (dir, sim) = start(|_| {}).await;
    let c1 = &sim.ready().clusters[0];
    let http = client(&c1.ca_file);
    let token = issuer_token(&dir.path().canonicalize().unwrap(), "c1");
    // k8s\0 + Unknown{typeMeta{apiVersion, kind}, raw=TokenRequest{spec{audiences:["x"], expirationSeconds:900}}}
    fn field(n: u8, b: &[u8]) -> Vec<u8> {
        let mut v = vec![n << 3 | 2, b.len() as u8];
        v.extend_from_slice(b);
        v
    }
    let mut spec = field(1, b"https://kubernetes.default.svc.cluster.local");
    spec.extend_from_slice(&[4 << 3, 0x84, 0x07]); // 900
    let raw = field(2, &spec);
    let mut tm = field(1, b"authentication.k8s.io/v1");
    tm.extend(field(2, b"TokenRequest"));
    let mut body = b"k8s\0".to_vec();
    body.extend(field(1, &tm));
    body.extend(field(2, &raw));
    let send = |b: Vec<u8>| {
        http.post(format!("{}{TOKEN_PATH}", c1.api_server))
            .bearer_auth(&token)
            .header("content-type", "application/vnd.kubernetes.protobuf")
            .body(b)
            .send()
    };
    let resp = send(body.clone()).await.unwrap();
    assert_eq!(resp.status(), 201);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["spec"]["expirationSeconds"], 900);
    let resp = send(body[..body.len() - 5].to_vec()).await.unwrap();
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["kind"], "Status");
    assert_eq!(send(b"garbage".to_vec()).await.unwrap().status(), 400);
}

#[tokio::test]
async fn missing_service_account_is_404_and_bad_tokens_are_401() {
    let (dir, sim) = start(|_| {}).await;
    let c1 = &sim.ready().clusters[0];
    let http = client(&c1.ca_file);
    let issuer = issuer_token(&dir.path().canonicalize().unwrap(), "c1");
    let token = issue(&http, &c1.api_server, &issuer, 3600).await;
    assert!(
        sim.cluster("c1")
            .unwrap()
            .delete_service_account("kube-system", "prometheus-test")
    );
    let resp = request_token(&http, &c1.api_server, &issuer, 3600)
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        v["message"],
        "serviceaccounts \"prometheus-test\" not found"
    );
    assert_eq!(scrape(&http, &c1.api_server, &token).await, 401);
    let resp = http
        .get(format!("{}/api/v1/nodes", c1.api_server))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        (
            v["kind"].as_str(),
            v["reason"].as_str(),
            v["message"].as_str(),
            v["code"].as_u64()
        ),
        (
            Some("Status"),
            Some("Unauthorized"),
            Some("Unauthorized"),
            Some(401)
        )
    );
    assert_eq!(
        sim.cluster("c1").unwrap().stats().tokens_rejected.unknown,
        2
    );
}
