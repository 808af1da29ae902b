//! The real kubectl talks to the sim.

mod sim_support;

use std::path::{Path, PathBuf};
use std::process::Output;

use sim_support::*;

/// `kubectl.1.32` beside the dispatcher's target, else the `kubectl` on PATH.
fn kubectl() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file());
    let Some(dispatcher) = on_path else {
        panic!(
            "kubectl is not installed (need kubectl.1.32 or kubectl on PATH); these tests cannot run without it"
        );
    };
    let versioned = std::fs::canonicalize(&dispatcher)
        .ok()
        .and_then(|t| t.parent().map(|d| d.join("kubectl.1.32")))
        .filter(|p| p.is_file());
    versioned.unwrap_or(dispatcher)
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

#[tokio::test]
async fn kubectl_create_token_gives_a_token_the_sim_accepts() {
    let (dir, sim) = start(|_| {}).await;
    let c1 = &sim.ready().clusters[0];
    let kubeconfig = c1.kubeconfig.to_str().unwrap();
    let out = run_kubectl(
        dir.path(),
        &[
            "--kubeconfig",
            kubeconfig,
            "create",
            "token",
            "prometheus-test",
            "-n",
            "kube-system",
            "--duration",
            "10m",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "kubectl failed: {}",
        text(&out.stderr)
    );
    let token = text(&out.stdout).trim().to_string();
    let c = claims(&token);
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 600);
    let http = client(&c1.ca_file);
    assert_eq!(scrape(&http, &c1.api_server, &token).await, 200);
    let stats = sim.cluster("c1").unwrap().stats();
    assert_eq!(
        stats.requests.get(&format!("POST {TOKEN_PATH} 201")),
        Some(&1),
        "kubectl's protobuf TokenRequest was served: {stats:?}"
    );
}

#[tokio::test]
async fn kubectl_with_the_wrong_ca_fails_with_an_x509_error() {
    let (dir, sim) = start(|_| {}).await;
    let (_other_dir, other) = start(|_| {}).await;
    let c1 = &sim.ready().clusters[0];
    let out = run_kubectl(
        dir.path(),
        &[
            "--kubeconfig",
            c1.kubeconfig.to_str().unwrap(),
            "--certificate-authority",
            other.ready().clusters[0].ca_file.to_str().unwrap(),
            "create",
            "token",
            "prometheus-test",
            "-n",
            "kube-system",
            "--duration",
            "10m",
        ],
    )
    .await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("x509"), "expected an x509 error, got: {err}");
}

#[tokio::test]
async fn kubectl_prints_the_sims_403_and_422_messages() {
    let (dir, sim) = start(|_| {}).await;
    let c1 = &sim.ready().clusters[0];
    let nobody = c1.kubeconfig.with_file_name("kubeconfig-nobody");
    let out = run_kubectl(
        dir.path(),
        &[
            "--kubeconfig",
            nobody.to_str().unwrap(),
            "create",
            "token",
            "prometheus-test",
            "-n",
            "kube-system",
            "--duration",
            "10m",
        ],
    )
    .await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "serviceaccounts \"prometheus-test\" is forbidden: User \"nobody\" cannot create resource \
             \"serviceaccounts/token\" in API group \"\" in the namespace \"kube-system\""
        ),
        "unexpected kubectl output: {err}"
    );
    let out = run_kubectl(
        dir.path(),
        &[
            "--kubeconfig",
            c1.kubeconfig.to_str().unwrap(),
            "create",
            "token",
            "prometheus-test",
            "-n",
            "kube-system",
            "--duration",
            "5m",
        ],
    )
    .await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 10 minutes"),
        "unexpected kubectl output: {err}"
    );
}
