//! The sim's SelfSubjectReview, SelfSubjectAccessReview and Secrets as real
//! clients see them: kubectl's `auth whoami` and `auth can-i` (protobuf
//! bodies), a kube client with the admin kubeconfig, and raw JSON shapes.

mod sim_support;

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use sim_support::*;

const SSAR_PATH: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
const SSR_PATH: &str = "/apis/authentication.k8s.io/v1/selfsubjectreviews";
const TOKEN_SECRETS: &str = "/api/v1/namespaces/kube-system/secrets?fieldSelector=type%3Dkubernetes.io%2Fservice-account-token";

/// `kubectl.1.32` beside the dispatcher's target, else the `kubectl` on PATH.
fn kubectl() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file());
    let Some(dispatcher) = on_path else {
        panic!("kubectl is not installed (need kubectl.1.32 or kubectl on PATH)");
    };
    std::fs::canonicalize(&dispatcher)
        .ok()
        .and_then(|t| t.parent().map(|d| d.join("kubectl.1.32")))
        .filter(|p| p.is_file())
        .unwrap_or(dispatcher)
}

async fn run_kubectl(home: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(kubectl())
        .args(args)
        .env("HOME", home)
        .env("KUBECACHEDIR", home.join("cache"))
        .env_remove("KUBECONFIG")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run kubectl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ssar(namespace: &str, verb: &str, resource: &str, subresource: &str, name: &str) -> Value {
    json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "namespace": namespace, "verb": verb, "resource": resource,
            "subresource": subresource, "name": name,
        }},
    })
}

async fn post(
    client: &reqwest::Client,
    url: String,
    bearer: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut request = client.post(url).json(body);
    if let Some(b) = bearer {
        request = request.bearer_auth(b);
    }
    let resp = request.send().await.expect("request sent");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON answer"))
}

#[tokio::test]
async fn kubectl_auth_whoami_and_can_i_answer_from_the_sims_rbac() {
    let (dir, sim) = start(|_| {}).await;
    let c1 = &sim.ready().clusters[0];
    let home = dir.path();
    let admin = c1.kubeconfig.to_str().unwrap();
    let nobody = dir.path().join("c1/kubeconfig-nobody");
    let nobody = nobody.to_str().unwrap();

    let out = run_kubectl(home, &["--kubeconfig", admin, "auth", "whoami"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("kubernetes-admin"));
    assert!(text(&out.stdout).contains("system:masters"));
    let out = run_kubectl(home, &["--kubeconfig", nobody, "auth", "whoami"]).await;
    assert!(
        text(&out.stdout).contains("nobody"),
        "{}",
        text(&out.stderr)
    );

    let issuer = issuer_token(dir.path(), "c1");
    let ca = c1.ca_file.to_str().unwrap();
    let as_issuer = |args: &[&str]| {
        let mut all = vec![
            "--server",
            c1.api_server.as_str(),
            "--certificate-authority",
            ca,
            "--token",
            issuer.as_str(),
        ];
        all.extend_from_slice(args);
        all.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let can_i = |who: Vec<String>| async move {
        let args: Vec<&str> = who.iter().map(String::as_str).collect();
        let out = run_kubectl(home, &args).await;
        (out.status.code(), text(&out.stdout).trim().to_string())
    };
    let token_of = |sa: &str| {
        vec![
            "auth".to_string(),
            "can-i".into(),
            "create".into(),
            format!("serviceaccounts/{sa}"),
            "--subresource=token".into(),
            "-n".into(),
            "kube-system".into(),
        ]
    };
    let with = |prefix: Vec<String>, rest: Vec<String>| [prefix, rest].concat();
    let issuer_prefix = as_issuer(&[]);
    assert_eq!(
        can_i(with(issuer_prefix.clone(), token_of("prometheus-test"))).await,
        (Some(0), "yes".into())
    );
    assert_eq!(
        can_i(with(issuer_prefix.clone(), token_of("default"))).await,
        (Some(1), "no".into())
    );
    assert_eq!(
        can_i(with(
            issuer_prefix,
            vec![
                "auth".into(),
                "can-i".into(),
                "get".into(),
                "serviceaccounts".into(),
                "-n".into(),
                "kube-system".into()
            ]
        ))
        .await,
        (Some(1), "no".into())
    );
    let nobody_prefix = vec!["--kubeconfig".to_string(), nobody.to_string()];
    assert_eq!(
        can_i(with(nobody_prefix, token_of("prometheus-test"))).await,
        (Some(1), "no".into())
    );
}

#[tokio::test]
async fn reviews_have_the_real_servers_shape() {
    let (dir, sim) = start(|_| {}).await;
    let c1 = &sim.ready().clusters[0];
    let http = client(&c1.ca_file);
    let issuer = issuer_token(dir.path(), "c1");
    let url = |path: &str| format!("{}{path}", c1.api_server);

    let (status, v) = post(
        &http,
        url(SSAR_PATH),
        Some(&issuer),
        &ssar(
            "kube-system",
            "create",
            "serviceaccounts",
            "token",
            "prometheus-test",
        ),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["kind"], "SelfSubjectAccessReview");
    assert_eq!(v["apiVersion"], "authorization.k8s.io/v1");
    assert_eq!(v["spec"]["resourceAttributes"]["subresource"], "token");
    assert_eq!(v["status"]["allowed"], true);
    assert_eq!(
        v["status"]["reason"],
        "RBAC: allowed by RoleBinding \"mcprom-issuer/kube-system\" of Role \"mcprom-issuer\" to User \"mcprom-issuer\""
    );

    let (status, v) = post(
        &http,
        url(SSAR_PATH),
        Some(&issuer),
        &ssar(
            "kube-system",
            "get",
            "serviceaccounts",
            "",
            "prometheus-test",
        ),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["status"], json!({"allowed": false}));

    let (status, v) = post(
        &http,
        url(SSAR_PATH),
        Some(&issuer),
        &json!({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "spec": {}}),
    )
    .await;
    assert_eq!(
        (status, v["reason"].as_str()),
        (422, Some("Invalid")),
        "{v}"
    );

    let (status, v) = post(
        &http,
        url(SSAR_PATH),
        None,
        &ssar(
            "kube-system",
            "create",
            "serviceaccounts",
            "token",
            "prometheus-test",
        ),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(
        v["message"],
        "selfsubjectaccessreviews.authorization.k8s.io is forbidden: User \"system:anonymous\" \
         cannot create resource \"selfsubjectaccessreviews\" in API group \
         \"authorization.k8s.io\" at the cluster scope"
    );

    let (status, v) = post(
        &http,
        url(SSR_PATH),
        Some(&issuer),
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["status"]["userInfo"]["username"], "mcprom-issuer");
    assert_eq!(
        v["status"]["userInfo"]["groups"],
        json!(["system:authenticated"])
    );

    // The issuer identity may not list Secrets, with the real wording.
    let resp = http
        .get(url(TOKEN_SECRETS))
        .bearer_auth(&issuer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["message"],
        "secrets is forbidden: User \"mcprom-issuer\" cannot list resource \"secrets\" in API \
         group \"\" in the namespace \"kube-system\""
    );
}

/// A kube client with the admin kubeconfig's client certificate.
async fn admin_client(kubeconfig: &Path) -> kube::Client {
    init();
    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

async fn get(client: &kube::Client, path: &str, accept: &str) -> (u16, Value) {
    let request = http::Request::get(path)
        .header(http::header::ACCEPT, accept)
        .body(kube::client::Body::empty())
        .unwrap();
    let response = client.send(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect_bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn legacy_token_secrets_are_listed_filtered_and_authenticate_until_deleted() {
    let (_dir, sim) = start(|_| {}).await;
    let c1 = &sim.ready().clusters[0];
    let handle = sim.cluster("c1").unwrap();
    let http = client(&c1.ca_file);
    let admin = admin_client(&c1.kubeconfig).await;

    let (_, v) = get(&admin, TOKEN_SECRETS, "application/json").await;
    assert_eq!(v["items"], json!([]), "{v}");

    let name = handle
        .create_legacy_token_secret("kube-system", "prometheus-test")
        .unwrap()
        .unwrap();
    assert!(name.starts_with("prometheus-test-token-"), "{name}");
    assert_eq!(
        handle
            .create_legacy_token_secret("kube-system", "no-such-sa")
            .unwrap(),
        None
    );

    let (status, v) = get(&admin, TOKEN_SECRETS, "application/json").await;
    assert_eq!(status, 200);
    assert_eq!(v["kind"], "SecretList");
    let item = &v["items"][0];
    assert_eq!(item["metadata"]["name"], name.as_str());
    assert_eq!(item["type"], "kubernetes.io/service-account-token");
    assert_eq!(
        item["metadata"]["annotations"]["kubernetes.io/service-account.name"],
        "prometheus-test"
    );
    let token = base64::engine::general_purpose::STANDARD
        .decode(item["data"]["token"].as_str().unwrap())
        .unwrap();
    let token = String::from_utf8(token).unwrap();
    assert_eq!(claims(&token)["iss"], "kubernetes/serviceaccount");
    assert!(
        claims(&token).get("exp").is_none(),
        "a legacy token never expires"
    );

    // Metadata only, as `check --online` asks for it: no token on the wire.
    let (_, v) = get(
        &admin,
        TOKEN_SECRETS,
        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
    )
    .await;
    assert_eq!(v["kind"], "PartialObjectMetadataList");
    assert_eq!(v["items"][0]["metadata"]["name"], name.as_str());
    assert!(!v.to_string().contains(&token));

    let (_, v) = get(
        &admin,
        "/api/v1/namespaces/kube-system/secrets?fieldSelector=type%3DOpaque",
        "application/json",
    )
    .await;
    assert_eq!(v["items"], json!([]));
    let (status, v) = get(
        &admin,
        "/api/v1/namespaces/kube-system/secrets?fieldSelector=spec.x%3D1",
        "application/json",
    )
    .await;
    assert_eq!(
        (status, v["message"].as_str()),
        (400, Some("field label not supported: spec.x"))
    );
    let (status, v) = get(
        &admin,
        &format!("/api/v1/namespaces/kube-system/secrets/{name}"),
        "application/json",
    )
    .await;
    assert_eq!((status, v["kind"].as_str()), (200, Some("Secret")));

    // The legacy token works like the ServiceAccount's own, until its
    // Secret is deleted.
    assert_eq!(scrape(&http, &c1.api_server, &token).await, 200);
    assert!(handle.delete_secret("kube-system", &name));
    assert_eq!(scrape(&http, &c1.api_server, &token).await, 401);
    let (status, _) = get(
        &admin,
        &format!("/api/v1/namespaces/kube-system/secrets/{name}"),
        "application/json",
    )
    .await;
    assert_eq!(status, 404);

    // Deleting the ServiceAccount deletes its token Secrets too.
    let second = handle
        .create_legacy_token_secret("kube-system", "prometheus-test")
        .unwrap()
        .unwrap();
    assert!(handle.delete_service_account("kube-system", "prometheus-test"));
    let (_, v) = get(&admin, TOKEN_SECRETS, "application/json").await;
    assert_eq!(v["items"], json!([]), "{second} should be gone: {v}");
}
