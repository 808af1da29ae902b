//! `mcprom rbac` and `mcprom scrape-config` as black boxes: their output is
//! checked by outside tools (k8s-openapi types, `kubernetes-validate`,
//! `promtool`) and used by the real Prometheus against the simulator.
//!
//! Outside tools are required, never skipped: `pip install
//! kubernetes-validate` and `apt-get install prometheus`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::Deserialize as _;
use serde_json::Value;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every YAML document of `yaml`, skipping empty ones.
fn documents(yaml: &str) -> Vec<serde_yaml_ng::Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| serde_yaml_ng::Value::deserialize(d).expect("valid YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Parse `doc` as `T` and check that nothing was lost or renamed: the typed
/// value serializes back to exactly the document.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &serde_yaml_ng::Value) -> T {
    let typed: T =
        serde_yaml_ng::from_value(doc.clone()).expect("parses into the k8s-openapi type");
    let original: Value = serde_json::to_value(doc).unwrap();
    assert_eq!(
        serde_json::to_value(&typed).unwrap(),
        original,
        "round trip"
    );
    typed
}

/// A config with one cluster per way of naming the issuing identity.
fn rbac_config(sim: &Sim, dir: &Path) -> std::path::PathBuf {
    let api = sim.api_server("c1");
    let ca = sim.ca_file("c1");
    let sa_token = dir.join("sa-issuer.token");
    // A ServiceAccount token names its account in `sub` (never printed).
    std::fs::write(
        &sa_token,
        format!(
            "eyJhbGciOiJFUzI1NiJ9.{}.c2ln",
            base64_url(r#"{"sub":"system:serviceaccount:ops:minter","exp":4000000000}"#)
        ),
    )
    .unwrap();
    let config = format!(
        "[defaults]\ntoken_dir = \"{tokens}\"\n\n\
         [[cluster]]\nname = \"kc\"\nservice_account = \"kube-system/prometheus-test\"\n\
         [cluster.credentials]\nkubeconfig = \"{kubeconfig}\"\n\n\
         [[cluster]]\nname = \"selfc\"\napi_server = \"{api}\"\nca_file = \"{ca}\"\n\
         service_account = \"monitoring/prometheus\"\n[cluster.credentials]\nself = true\n\n\
         [[cluster]]\nname = \"statictoken\"\napi_server = \"{api}\"\nca_file = \"{ca}\"\n\
         service_account = \"kube-system/prometheus-test\"\n\
         [cluster.credentials]\ntoken_file = \"{issuer}\"\n\n\
         [[cluster]]\nname = \"satoken\"\napi_server = \"{api}\"\nca_file = \"{ca}\"\n\
         service_account = \"kube-system/prometheus-test\"\n\
         [cluster.credentials]\ntoken_file = \"{sa_token}\"\n",
        tokens = dir.join("tokens").display(),
        kubeconfig = sim.kubeconfig("c1").display(),
        ca = ca.display(),
        issuer = sim.issuer_token_file("c1").display(),
        sa_token = sa_token.display(),
    );
    let path = dir.join("rbac.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn base64_url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn rbac_output_parses_into_k8s_openapi_types_and_passes_kubernetes_validate() {
    let validator = required_tool("kubernetes-validate", "pip install kubernetes-validate");
    let sim = Sim::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let config = rbac_config(&sim, work.path());
    let out = run_mcprom(&["--config", config.to_str().unwrap(), "rbac"], "");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");

    let docs = documents(&stdout);
    assert_eq!(docs.len(), 4 * 5, "five documents per cluster:\n{stdout}");
    let mut bindings: BTreeMap<String, RoleBinding> = BTreeMap::new();
    let mut kinds = Vec::new();
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap().to_owned();
        match kind.as_str() {
            "ServiceAccount" => drop(round_trip::<ServiceAccount>(doc)),
            "ClusterRole" => {
                let role: ClusterRole = round_trip(doc);
                let rules = role.rules.unwrap();
                let ingresses = rules
                    .iter()
                    .find(|r| r.resources.iter().flatten().any(|r| r == "ingresses"))
                    .unwrap();
                assert_eq!(ingresses.api_groups, Some(vec!["networking.k8s.io".into()]));
                assert!(
                    rules
                        .iter()
                        .any(|r| r.non_resource_urls == Some(vec!["/metrics".into()]))
                );
            }
            "ClusterRoleBinding" => drop(round_trip::<ClusterRoleBinding>(doc)),
            "Role" => drop(round_trip::<Role>(doc)),
            "RoleBinding" => {
                let binding: RoleBinding = round_trip(doc);
                let name = binding.metadata.namespace.clone().unwrap()
                    + "/"
                    + &binding.subjects.as_ref().unwrap()[0].name;
                bindings.insert(name, binding);
            }
            other => panic!("unexpected kind {other}"),
        }
        kinds.push(kind);
    }
    assert_eq!(
        kinds[..5],
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding"
        ]
    );

    // The issuing identity of each credential.
    let subject = |key: &str| {
        let b = &bindings[key];
        let s = &b.subjects.as_ref().unwrap()[0];
        (s.kind.clone(), s.namespace.clone())
    };
    // The sim's admin kubeconfig: its client certificate's CN.
    assert_eq!(subject("kube-system/kubernetes-admin").0, "User");
    // Self-renewal: the ServiceAccount itself.
    assert_eq!(
        subject("monitoring/prometheus"),
        ("ServiceAccount".into(), Some("monitoring".into()))
    );
    // A ServiceAccount token as the credential: its account.
    assert_eq!(
        subject("kube-system/minter"),
        ("ServiceAccount".into(), Some("ops".into()))
    );
    // A static token: the placeholder, explained in a comment and on stderr.
    assert_eq!(
        subject("kube-system/REPLACE-WITH-ISSUER-IDENTITY").0,
        "User"
    );
    assert!(
        stdout.contains("# PLACEHOLDER: replace REPLACE-WITH-ISSUER-IDENTITY"),
        "{stdout}"
    );
    assert!(
        stderr.contains("cluster \"statictoken\": the RoleBinding names the placeholder"),
        "{stderr}"
    );
    let issuer_token = std::fs::read_to_string(sim.issuer_token_file("c1")).unwrap();
    assert!(!stdout.contains(issuer_token.trim()) && !stderr.contains(issuer_token.trim()));

    // The real Kubernetes schemas, strictly (unknown fields are errors).
    let file = work.path().join("rbac.yaml");
    std::fs::write(&file, &stdout).unwrap();
    let check = std::process::Command::new(validator)
        .arg("--strict")
        .arg(&file)
        .output()
        .expect("run kubernetes-validate");
    let report = text(&check.stdout) + &text(&check.stderr);
    assert!(
        check.status.success(),
        "kubernetes-validate rejected the output:\n{report}"
    );
    assert_eq!(
        report.matches(" passed for resource ").count(),
        20,
        "{report}"
    );
}

/// The self-renewal rule, read like an RBAC authorizer reads it: the
/// ServiceAccount may create its own token and nothing else.
#[test]
fn the_self_renewal_role_grants_exactly_the_accounts_own_token() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("self.toml");
    std::fs::write(
        &config,
        "[[cluster]]\nname = \"c1\"\napi_server = \"https://127.0.0.1:6443\"\n\
         service_account = \"kube-system/prometheus-test\"\n[cluster.credentials]\nself = true\n",
    )
    .unwrap();
    let out = run_mcprom(&["--config", config.to_str().unwrap(), "rbac", "c1"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let docs = documents(&text(&out.stdout));
    let role: Role = round_trip(docs.iter().find(|d| d["kind"] == "Role").unwrap());
    let binding: RoleBinding =
        round_trip(docs.iter().find(|d| d["kind"] == "RoleBinding").unwrap());
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
    assert_eq!(binding.role_ref.kind, "Role");
    let rules = role.rules.unwrap();
    let allows = |user_ns: &str, user: &str, verb: &str, resource: &str, name: &str, ns: &str| {
        let bound = binding.subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount" && s.name == user && s.namespace.as_deref() == Some(user_ns)
        });
        bound
            && role.metadata.namespace.as_deref() == Some(ns)
            && rules.iter().any(|r| {
                r.verbs.iter().any(|v| v == verb)
                    && r.api_groups.iter().flatten().any(|g| g.is_empty())
                    && r.resources.iter().flatten().any(|x| x == resource)
                    && r.resource_names.iter().flatten().any(|n| n == name)
            })
    };
    let sa = ("kube-system", "prometheus-test");
    assert!(allows(
        sa.0,
        sa.1,
        "create",
        "serviceaccounts/token",
        "prometheus-test",
        "kube-system"
    ));
    assert!(!allows(
        sa.0,
        sa.1,
        "create",
        "serviceaccounts/token",
        "default",
        "kube-system"
    ));
    assert!(!allows(
        sa.0,
        sa.1,
        "get",
        "serviceaccounts/token",
        "prometheus-test",
        "kube-system"
    ));
    assert!(!allows(
        sa.0,
        sa.1,
        "create",
        "serviceaccounts",
        "prometheus-test",
        "kube-system"
    ));
    assert!(!allows(
        sa.0,
        sa.1,
        "create",
        "serviceaccounts/token",
        "prometheus-test",
        "default"
    ));
    assert!(!allows(
        "default",
        "default",
        "create",
        "serviceaccounts/token",
        "prometheus-test",
        "kube-system"
    ));
}

#[test]
fn render_commands_exit_2_for_an_unknown_cluster_and_78_for_a_bad_config() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("m.toml");
    std::fs::write(
        &config,
        "[[cluster]]\nname = \"c1\"\napi_server = \"https://127.0.0.1:6443\"\n\
         service_account = \"kube-system/prometheus-test\"\n[cluster.credentials]\nself = true\n",
    )
    .unwrap();
    let c = config.to_str().unwrap();
    for args in [
        vec!["--config", c, "rbac", "nope"],
        vec!["--config", c, "scrape-config", "nope"],
        vec!["--config", c, "seed", "nope"],
    ] {
        let out = run_mcprom(&args, "");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("no cluster named \"nope\""),
            "{}",
            text(&out.stderr)
        );
    }
    std::fs::write(&config, "[[cluster]]\nnam = \"c1\"\n").unwrap();
    for command in ["rbac", "scrape-config", "seed"] {
        let mut args = vec!["--config", c, command];
        if command == "seed" {
            args.push("c1");
        }
        let out = run_mcprom(&args, "");
        assert_eq!(
            out.status.code(),
            Some(78),
            "{command}: {}",
            text(&out.stderr)
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus process, killed when dropped.
struct Prometheus {
    child: std::process::Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// The result vector of an instant query: (labels, value) per series.
    async fn query(&self, query: &str) -> Option<Vec<(BTreeMap<String, String>, String)>> {
        let encoded: String = url::form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let v: Value = client
            .get(format!(
                "http://127.0.0.1:{}/api/v1/query?query={encoded}",
                self.port
            ))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let series = v["data"]["result"].as_array()?;
        Some(
            series
                .iter()
                .map(|s| {
                    let labels = s["metric"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect();
                    (
                        labels,
                        s["value"][1].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_scrape_config_passes_promtool_and_prometheus_scrapes_through_rotations() {
    let install = "apt-get install -y --no-install-recommends prometheus";
    let promtool = required_tool("promtool", install);
    let prometheus = required_tool("prometheus", install);
    // Shared port: every API server URL carries a path prefix (/clusters/cN),
    // as behind Rancher.
    let sim = Sim::start(&[
        "--shared-port",
        "--clusters",
        "2",
        "--nodes",
        "2",
        "--min-expiration",
        "1s",
        "--expiry-leeway",
        "0s",
    ]);
    assert!(sim.api_server("c1").ends_with("/clusters/c1"));
    let work = tempfile::tempdir().unwrap();
    let conf = Conf {
        expiration: "10s",
        refresh_at: 0.5,
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let _daemon = Daemon::start(&config, "info");
    let files: Vec<_> = ["c1", "c2"]
        .iter()
        .map(|n| work.path().join(format!("tokens/{n}.token")))
        .collect();
    eventually(Duration::from_secs(30), "first tokens", || async {
        files.iter().all(|f| f.exists()).then_some(())
    })
    .await;

    let out = run_mcprom(
        &[
            "--config",
            config.to_str().unwrap(),
            "scrape-config",
            "--static",
        ],
        "",
    );
    let jobs = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        jobs.contains("/clusters/c1/api/v1/nodes/${1}/proxy/metrics/cadvisor"),
        "{jobs}"
    );
    assert!(!jobs.contains("insecure_skip_verify"), "{jobs}");
    let jobs_file = work.path().join("jobs.yml");
    std::fs::write(&jobs_file, &jobs).unwrap();
    let check = std::process::Command::new(&promtool)
        .args(["check", "config"])
        .arg(&jobs_file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check config:\n{}{}",
        text(&check.stdout),
        text(&check.stderr)
    );

    let prometheus_yml = work.path().join("prometheus.yml");
    std::fs::write(
        &prometheus_yml,
        format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n{jobs}"),
    )
    .unwrap();
    let port = free_port();
    let prom = Prometheus {
        child: std::process::Command::new(prometheus)
            .arg(format!("--config.file={}", prometheus_yml.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start prometheus"),
        port,
    };
    // Two clusters × two jobs × two nodes, all up.
    let expected: BTreeSet<(String, String, String)> = ["c1", "c2"]
        .iter()
        .flat_map(|c| {
            ["cadvisor", "kubelet"].iter().flat_map(move |j| {
                ["node-1", "node-2"]
                    .iter()
                    .map(move |n| (c.to_string(), j.to_string(), n.to_string()))
            })
        })
        .collect();
    let key = |labels: &BTreeMap<String, String>| {
        (
            labels["cluster"].clone(),
            labels["job"].clone(),
            labels["instance"].clone(),
        )
    };
    eventually(Duration::from_secs(90), "every target up", || async {
        let series = prom.query("up").await?;
        let up: BTreeSet<_> = series
            .iter()
            .filter(|(_, v)| v == "1")
            .map(|(l, _)| key(l))
            .collect();
        (up == expected).then_some(())
    })
    .await;

    // Keep scraping across several rotations of both token files.
    let mut seen: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(24) {
        for (i, f) in files.iter().enumerate() {
            seen.entry(i)
                .or_default()
                .insert(std::fs::read_to_string(f).unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, tokens) in &seen {
        assert!(
            tokens.len() >= 4,
            "cluster {i}: only {} tokens during the window",
            tokens.len()
        );
    }
    let min = prom.query("min_over_time(up[22s])").await.expect("query");
    let count = prom.query("count_over_time(up[22s])").await.expect("query");
    assert_eq!(min.len(), expected.len(), "{min:?}");
    for (labels, value) in &min {
        assert_eq!(value, "1", "{:?} was down during rotations", key(labels));
    }
    for (labels, value) in &count {
        let n: f64 = value.parse().unwrap();
        assert!(n >= 12.0, "{:?}: only {n} scrapes in 22 s", key(labels));
    }
}
