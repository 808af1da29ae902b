//! Many clusters behind one shared listener under `/clusters/<name>`.

mod sim_support;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use sim_support::*;

async fn kube_token(kubeconfig: &std::path::Path) -> String {
    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.default_retry = false;
    let sas: Api<ServiceAccount> =
        Api::namespaced(Client::try_from(config).unwrap(), "kube-system");
    let tr = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    sas.create_token_request("prometheus-test", &PostParams::default(), &tr)
        .await
        .expect("token through a path-prefixed API server URL")
        .status
        .unwrap()
        .token
}

#[tokio::test]
async fn two_hundred_clusters_share_a_port_but_not_their_keys() {
    let (dir, sim) = start(|c| {
        c.clusters = 200;
        c.shared_port = true;
    })
    .await;
    let dir = dir.path().canonicalize().unwrap();
    let ready = sim.ready();
    assert_eq!(ready.clusters.len(), 200);
    let port = ready.clusters[0]
        .api_server
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    for c in &ready.clusters {
        assert_eq!(
            c.api_server,
            format!("https://127.0.0.1:{port}/clusters/{}", c.name)
        );
    }
    let toml = std::fs::read_to_string(&ready.config).unwrap();
    assert_eq!(toml.matches("[[cluster]]").count(), 200);

    let (c1, c2, c200) = (&ready.clusters[0], &ready.clusters[1], &ready.clusters[199]);
    let t1 = kube_token(&c1.kubeconfig).await;
    let t200 = kube_token(&c200.kubeconfig).await;
    let http = client(&c1.ca_file);
    assert_eq!(scrape(&http, &c1.api_server, &t1).await, 200);
    assert_eq!(scrape(&http, &c200.api_server, &t200).await, 200);
    // c1's token and static issuer token mean nothing to c2.
    assert_eq!(scrape(&http, &c2.api_server, &t1).await, 401);
    assert_eq!(
        sim.cluster("c2")
            .unwrap()
            .stats()
            .tokens_rejected
            .bad_signature,
        1
    );
    let resp = request_token(&http, &c2.api_server, &issuer_token(&dir, "c1"), 3600)
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let issued_by_c2 = issue(&http, &c2.api_server, &issuer_token(&dir, "c2"), 3600).await;
    assert_eq!(scrape(&http, &c2.api_server, &issued_by_c2).await, 200);

    // A down cluster resets its requests; the others keep working.
    let c3 = sim.cluster("c3").unwrap();
    c3.down().await;
    let t3_err = request_token(
        &http,
        &ready.clusters[2].api_server,
        &issuer_token(&dir, "c3"),
        3600,
    )
    .await
    .expect_err("down shared-port cluster resets");
    assert!(!t3_err.is_timeout());
    assert_eq!(scrape(&http, &c1.api_server, &t1).await, 200);
    c3.up().await.unwrap();
    issue(
        &http,
        &ready.clusters[2].api_server,
        &issuer_token(&dir, "c3"),
        3600,
    )
    .await;

    let resp = http
        .get(format!("https://127.0.0.1:{port}/clusters/nope/version"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let stats = sim.stats();
    assert_eq!(stats.clusters.len(), 200);
    assert_eq!(
        stats.clusters["c1"]
            .requests
            .get(&format!("GET {CADVISOR_PATH} 200")),
        Some(&2)
    );
}
