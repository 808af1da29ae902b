//! The kubeconfig mcprom writes (`[defaults] kubeconfig_dir`) against the
//! real world: a real kube-apiserver from `testbed/cluster` (set up with
//! `mcprom rbac | kubectl apply`, mcprom's own identity least-privilege),
//! the real kubectl built with it, and Prometheus 3 discovering nodes with
//! `kubernetes_sd_configs.kubeconfig_file` (`mcprom scrape-config
//! --discovery kubeconfig`), across forced rotations.
//!
//! Needs root (network namespaces), python3, openssl, iproute2 and Go 1.26
//! for the first `testbed/build`: a missing piece fails the test.

mod common;
#[path = "common/realworld.rs"]
mod realworld;

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use realworld::*;

const TOKEN_WAIT: Duration = Duration::from_secs(90);
const UP_WAIT: Duration = Duration::from_secs(180);

/// The pinned kubectl with only `kubeconfig`; its stdout, or a panic.
fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str]) -> String {
    let out = Command::new(tool("kubectl"))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--cache-dir={}", home.join("cache").display()))
        .args(args)
        .env("HOME", home)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `mcprom scrape-config --discovery kubeconfig` with a short global
/// scrape interval (the jobs exactly as printed).
fn kubeconfig_scrape_config(config: &Path, interval: &str) -> String {
    let text = stdout_of(
        &mcprom(config, &["scrape-config", "--discovery", "kubeconfig"]),
        "mcprom scrape-config --discovery kubeconfig",
    );
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut global = serde_yaml_ng::Mapping::new();
    global.insert("scrape_interval".into(), interval.into());
    global.insert("scrape_timeout".into(), interval.into());
    doc.as_mapping_mut()
        .unwrap()
        .insert("global".into(), serde_yaml_ng::Value::Mapping(global));
    serde_yaml_ng::to_string(&doc).unwrap()
}

/// One real cluster, two nodes. kubectl lists them through the written
/// kubeconfig as the ServiceAccount; Prometheus 3 discovers them with
/// `kubeconfig_file` and scrapes every node through the API server's node
/// proxy with the token file; both keep working across forced rotations
/// (the kubeconfig untouched), and a node added later is discovered.
#[tokio::test]
async fn prometheus_3_discovers_with_the_written_kubeconfig_and_kubectl_lists_nodes_with_it() {
    let world = World::start(1, 2, &[]);
    let work = world.path().join("user");
    let home = work.join("home");
    let sd_port = free_port();
    let config = world.user_config(
        &work,
        &["c1"],
        Some(&format!("http://127.0.0.1:{sd_port}")),
        &format!("kubeconfig_dir = {:?}", work.join("kube").to_string_lossy()),
        "",
    );
    let kubeconfig = work.join("kube/c1.kubeconfig");
    let mut daemon = Daemon::start(&config, "info");
    new_token(&work, "c1", None, TOKEN_WAIT).await;
    assert!(kubeconfig.is_file(), "{}", daemon.log());
    let written = std::fs::metadata(&kubeconfig).unwrap();

    let nodes = kubectl(&kubeconfig, &home, &["get", "nodes", "-o", "name"]);
    assert_eq!(nodes.trim(), "node/node-1\nnode/node-2");
    let who = kubectl(
        &kubeconfig,
        &home,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert_eq!(who, "system:serviceaccount:kube-system:prometheus-test");

    let prom_config = kubeconfig_scrape_config(&config, "2s");
    assert!(prom_config.contains("kubeconfig_file"), "{prom_config}");
    assert!(!prom_config.contains("api_server"), "{prom_config}");
    std::fs::create_dir_all(work.join("prom3")).unwrap();
    let checked = work.join("prom3/checked.yml");
    std::fs::write(&checked, &prom_config).unwrap();
    let promtool = Command::new(tool("promtool"))
        .args(["check", "config"])
        .arg(&checked)
        .output()
        .expect("run promtool");
    assert!(
        promtool.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&promtool.stdout),
        String::from_utf8_lossy(&promtool.stderr)
    );

    let prom = Prom::start_on(
        &tool("prometheus"),
        &work.join("prom3"),
        &prom_config,
        sd_port,
    );
    prom.ready().await;
    // 2 nodes × 2 jobs (cadvisor, kubelet).
    prom.all_up(4, UP_WAIT).await;
    let since = Instant::now();

    for round in 0..2 {
        let old = token_in(&work, "c1").unwrap();
        stdout_of(&mcprom(&config, &["rotate"]), "mcprom rotate");
        let new = new_token(&work, "c1", Some(&old), TOKEN_WAIT).await;
        assert_eq!(
            world.status_for_token("c1", &new).await,
            200,
            "round {round}"
        );
        let nodes = kubectl(&kubeconfig, &home, &["get", "nodes", "-o", "name"]);
        assert_eq!(nodes.trim(), "node/node-1\nnode/node-2", "round {round}");
        // Several scrapes with each new token (and a reload of Prometheus).
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let down = prom.down_in(since.elapsed() + Duration::from_secs(2)).await;
    assert!(down.is_empty(), "targets down: {down:?}\n{}", prom.log());
    prom.all_up(4, UP_WAIT).await;
    let codes = prom.discovery_requests().await;
    assert!(
        codes.iter().all(|(c, _)| c.starts_with('2')),
        "discovery requests that failed: {codes:?}\n{}",
        prom.log()
    );
    let now = std::fs::metadata(&kubeconfig).unwrap();
    assert_eq!(
        (now.ino(), now.mtime(), now.mtime_nsec()),
        (written.ino(), written.mtime(), written.mtime_nsec()),
        "the kubeconfig was rewritten on rotation"
    );

    world.add_node("c1", "node-added", 0);
    prom.all_up(6, UP_WAIT).await;
    let (status, _) = daemon.terminate();
    assert!(status.success(), "{}", daemon.log());
}
