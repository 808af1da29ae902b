//! `mcprom check --online`, black-box: the real binary against `mcprom-sim`
//! and Debian's real `prometheus`. One scenario per test; each failure must
//! show up on its own line with a non-zero exit, and nothing may be rotated
//! or reloaded.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const SA: &str = "kube-system/prometheus-test";

/// What one `mcprom check --online` run printed.
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Outcome {
    /// The first checklist line containing `needle`.
    fn line(&self, needle: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{self}"))
    }

    /// The mark (✔ ✘ ! -) of the first checklist line containing `needle`.
    fn mark(&self, needle: &str) -> char {
        let line = self.line(needle);
        line.trim_start()
            .chars()
            .next()
            .unwrap_or_else(|| panic!("empty line:\n{self}"))
    }

    /// The hint printed under the first line containing `needle`.
    fn hint(&self, needle: &str) -> &str {
        let mut lines = self.stdout.lines().skip_while(|l| !l.contains(needle));
        lines.next();
        lines
            .next()
            .and_then(|l| l.trim_start().strip_prefix("hint: "))
            .unwrap_or_else(|| panic!("no hint under {needle:?}:\n{self}"))
    }

    /// How many checklist lines carry `mark`.
    fn count(&self, mark: char) -> usize {
        self.stdout
            .lines()
            .filter(|l| l.starts_with("  ") && l.trim_start().starts_with(mark))
            .count()
    }
}

async fn check_online(config: &Path) -> Outcome {
    check_online_with(config, &[]).await
}

async fn check_online_with(config: &Path, extra: &[&str]) -> Outcome {
    let run = tokio::process::Command::new(MCPROM)
        .args(["check", "--online"])
        .args(extra)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("mcprom check --online finishes within 2 minutes")
        .expect("run mcprom");
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The check must never mint a token (it would be a rotation).
async fn assert_no_token_requests(sim: &Sim) {
    let stats = sim.stats().await;
    for (name, cluster) in stats["clusters"].as_object().unwrap() {
        assert_eq!(
            cluster["token_requests"].as_u64(),
            Some(0),
            "cluster {name} saw a TokenRequest: {cluster}"
        );
    }
}

/// How often the sim answered `key` ("METHOD path status") for `cluster`.
async fn requests(sim: &Sim, cluster: &str, key: &str) -> u64 {
    sim.stats().await["clusters"][cluster]["requests"][key]
        .as_u64()
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real Prometheus on a free loopback port with its own TSDB directory.
struct Prometheus {
    child: tokio::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(lifecycle: bool) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).is_file(),
            "{PROMETHEUS} is missing: install Debian's prometheus package (apt-get install prometheus)"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 1m\n").unwrap();
        let port = free_port();
        let mut command = tokio::process::Command::new(PROMETHEUS);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if lifecycle {
            command.arg("--web.enable-lifecycle");
        }
        let child = command.spawn().expect("start prometheus");
        let prometheus = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let ready = prometheus.url() + "/-/ready";
        eventually(Duration::from_secs(90), "prometheus to be ready", || {
            let request = http.get(&ready).send();
            async move { request.await.ok().filter(|r| r.status() == 200) }
        })
        .await;
        prometheus
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `prometheus_http_requests_total` summed over codes, for `handler`.
    async fn handled(&self, handler: &str) -> f64 {
        let text = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(self.url() + "/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let label = format!("handler=\"{handler}\"");
        text.lines()
            .filter(|l| l.starts_with("prometheus_http_requests_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_healthy_setup_passes_every_check_and_changes_nothing() {
    let sim = Sim::start(&["--clusters", "2"]);
    let prometheus = Prometheus::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let token_file = tokens.join("c1.token");
    std::fs::write(&token_file, "aaa.bbb.ccc").unwrap();
    let before = modified(&token_file);
    let config = write_config(
        &sim,
        dir.path(),
        &Conf {
            reload_url: Some(prometheus.url()),
            extra_defaults: "file_group = \"root\"".into(),
            ..Conf::default()
        },
        None,
    );
    let started = Instant::now();
    let out = check_online(&config).await;

    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.count('✘'), 0, "{out}");
    assert_eq!(out.count('-'), 0, "{out}");
    // Warnings only: the admin credential (twice), the token file that
    // holds no token, and the token files no Prometheus job reads.
    assert_eq!(out.count('!'), 5, "{out}");
    assert_eq!(
        out.stdout
            .matches("mcprom's credential is far more powerful than it needs: \"kubernetes-admin\" is a member of system:masters")
            .count(),
        2,
        "{out}"
    );
    assert!(
        out.hint("far more powerful")
            .contains("least-privilege identity `mcprom rbac c1` sets up"),
        "{out}"
    );
    assert_eq!(
        out.mark(&format!(
            "token file {}: does not hold",
            token_file.display()
        )),
        '!',
        "{out}"
    );
    for cluster in ["c1", "c2"] {
        assert_eq!(
            out.mark(&format!(
                "no Prometheus job reads the token file of cluster \"{cluster}\""
            )),
            '!',
            "{out}"
        );
    }
    for cluster in ["c1", "c2"] {
        let section: String = out
            .stdout
            .lines()
            .skip_while(|l| !l.starts_with(&format!("cluster \"{cluster}\"")))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .collect::<Vec<_>>()
            .join("\n");
        let api = sim.api_server(cluster);
        let ca = sim.ca_file(cluster);
        for expected in [
            format!("✔ API server {api} reachable (Kubernetes v1.37.2)"),
            format!(
                "✔ TLS verified with the kubeconfig's certificate-authority {}",
                ca.display()
            ),
            "✔ mcprom's credential accepted (authenticated as \"kubernetes-admin\")".into(),
            format!("✔ allowed to create tokens for {SA}"),
            format!("✔ ServiceAccount {SA} exists"),
            format!("✔ token directory {} writable", tokens.display()),
            "✔ file group \"root\" exists".into(),
            format!("✔ no legacy token Secret for {SA}"),
        ] {
            assert!(
                section.contains(&expected),
                "cluster {cluster}: no {expected:?}:\n{out}"
            );
        }
    }
    for line in [
        "✔ reachable",
        "✔ ready",
        "✔ lifecycle API enabled (--web.enable-lifecycle)",
    ] {
        assert!(out.stdout.contains(line), "no {line:?}:\n{out}");
    }
    assert!(out.stdout.contains(" 0 failed"), "{out}");
    // The sections are printed in config order, then the totals.
    let c1 = out.stdout.find("cluster \"c1\"").unwrap();
    let c2 = out.stdout.find("cluster \"c2\"").unwrap();
    let prom = out.stdout.find("Prometheus (").unwrap();
    let totals = out.stdout.find("online checks:").unwrap();
    assert!(c1 < c2 && c2 < prom && prom < totals, "{out}");

    // It asked the API servers and Prometheus...
    for cluster in ["c1", "c2"] {
        assert_eq!(
            requests(
                &sim,
                cluster,
                "POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews 201"
            )
            .await,
            1,
            "{cluster}: {}",
            sim.stats().await
        );
    }
    assert!(prometheus.handled("/api/v1/status/flags").await >= 1.0);
    // ...and changed nothing: no token minted, no reload, the token file
    // and its directory as they were.
    assert_no_token_requests(&sim).await;
    assert_eq!(prometheus.handled("/-/reload").await, 0.0);
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), "aaa.bbb.ccc");
    assert_eq!(modified(&token_file), before);
    assert_eq!(names_in(&tokens), vec!["c1.token".to_string()]);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_wrong_ca_fails_the_tls_line_and_names_the_ca() {
    let sim = Sim::start(&["--clusters", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let wrong_ca = sim.ca_file("c2");
    let config = write_config(
        &sim,
        dir.path(),
        &Conf {
            cluster_extra: vec![("c1".into(), format!("ca_file = \"{}\"", wrong_ca.display()))],
            ..Conf::default()
        },
        Some(&["c1"]),
    );
    let out = check_online(&config).await;

    assert_eq!(out.code, 1, "{out}");
    assert_eq!(out.mark("API server"), '✔', "{out}");
    let tls = out.line("TLS verified with");
    assert!(tls.contains('✘'), "{out}");
    assert!(
        tls.contains(&format!("ca_file {}", wrong_ca.display())),
        "{out}"
    );
    assert!(tls.contains("not signed by that CA"), "{out}");
    assert!(out.hint("TLS verified with").contains("ca_file"), "{out}");
    assert_eq!(out.count('✘'), 1, "{out}");
    assert_no_token_requests(&sim).await;
}

#[tokio::test]
async fn an_identity_without_the_token_permission_fails_its_own_line() {
    let sim = Sim::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let nobody = sim.path().join("c1/kubeconfig-nobody");
    let config = write_config(
        &sim,
        dir.path(),
        &Conf {
            credentials: vec![(
                "c1".into(),
                format!("kubeconfig = \"{}\"", nobody.display()),
            )],
            ..Conf::default()
        },
        None,
    );
    let out = check_online(&config).await;

    assert_eq!(out.code, 1, "{out}");
    assert_eq!(
        out.mark("mcprom's credential accepted (authenticated as \"nobody\")"),
        '✔',
        "{out}"
    );
    let line = out.line("allowed to create tokens");
    assert!(line.contains('✘') && line.contains("\"nobody\""), "{out}");
    assert!(
        out.hint("allowed to create tokens")
            .contains("mcprom rbac c1"),
        "{out}"
    );
    assert_eq!(out.count('✘'), 1, "{out}");
    assert_no_token_requests(&sim).await;
}

#[tokio::test]
async fn a_deleted_service_account_fails_its_own_line() {
    let sim = Sim::start(&[]);
    sim.control(
        reqwest::Method::DELETE,
        "/clusters/c1/serviceaccounts/kube-system/prometheus-test",
        None,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), &Conf::default(), None);
    let out = check_online(&config).await;

    assert_eq!(out.code, 1, "{out}");
    assert_eq!(out.mark("allowed to create tokens"), '✔', "{out}");
    assert_eq!(
        out.mark(&format!("ServiceAccount {SA} does not exist")),
        '✘',
        "{out}"
    );
    assert_eq!(out.count('✘'), 1, "{out}");
    assert_no_token_requests(&sim).await;
}

/// The tests run as root, and permission bits do not stop root; so the
/// unwritable directories are ones no one can write: a regular file where
/// the directory should be (`ENOTDIR`), and a path under `/proc`, where not
/// even root can create a file.
#[tokio::test]
async fn unwritable_token_directories_fail_their_own_lines() {
    let sim = Sim::start(&["--clusters", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "not a directory").unwrap();
    let config = write_config(
        &sim,
        dir.path(),
        &Conf {
            cluster_extra: vec![
                (
                    "c1".into(),
                    format!("token_file = \"{}\"", blocker.join("c1.token").display()),
                ),
                (
                    "c2".into(),
                    "token_file = \"/proc/mcprom-check-test/c2.token\"".into(),
                ),
            ],
            ..Conf::default()
        },
        None,
    );
    let out = check_online(&config).await;

    assert_eq!(out.code, 1, "{out}");
    let c1 = out.line(&format!("token directory {}", blocker.display()));
    assert!(
        c1.contains('✘') && c1.contains("is not a directory"),
        "{out}"
    );
    let c2 = out.line("token directory /proc/mcprom-check-test");
    assert!(
        c2.contains('✘') && c2.contains("cannot be created in /proc"),
        "{out}"
    );
    assert!(
        out.hint("token directory /proc").contains("can write"),
        "{out}"
    );
    assert_eq!(out.count('✘'), 2, "{out}");
    assert_eq!(
        std::fs::read_to_string(&blocker).unwrap(),
        "not a directory"
    );
    assert!(!Path::new("/proc/mcprom-check-test").exists());
    assert_no_token_requests(&sim).await;
}

#[tokio::test]
async fn prometheus_without_the_lifecycle_api_fails_its_own_line() {
    let sim = Sim::start(&[]);
    let prometheus = Prometheus::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &sim,
        dir.path(),
        &Conf {
            reload_url: Some(prometheus.url()),
            ..Conf::default()
        },
        None,
    );
    let out = check_online(&config).await;

    assert_eq!(out.code, 1, "{out}");
    assert!(out.stdout.contains("  ✔ reachable\n  ✔ ready\n"), "{out}");
    assert_eq!(out.mark("lifecycle API"), '✘', "{out}");
    assert!(
        out.hint("lifecycle API").contains("--web.enable-lifecycle"),
        "{out}"
    );
    assert_eq!(out.count('✘'), 1, "{out}");
    assert_eq!(prometheus.handled("/-/reload").await, 0.0);
    assert_no_token_requests(&sim).await;
}

#[tokio::test]
async fn a_least_privileged_identity_is_not_checked_where_it_may_not_read() {
    let sim = Sim::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let issuer = sim.path().join("c1/issuer.token");
    let config = write_config(
        &sim,
        dir.path(),
        &Conf {
            cluster_extra: vec![(
                "c1".into(),
                format!(
                    "api_server = \"{}\"\nca_file = \"{}\"",
                    sim.api_server("c1"),
                    sim.ca_file("c1").display()
                ),
            )],
            credentials: vec![(
                "c1".into(),
                format!("token_file = \"{}\"", issuer.display()),
            )],
            ..Conf::default()
        },
        None,
    );
    let out = check_online(&config).await;

    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.mark("authenticated as \"mcprom-issuer\""), '✔', "{out}");
    assert_eq!(out.mark("allowed to create tokens"), '✔', "{out}");
    // It may not read the ServiceAccount, but it may mint for it: a
    // TokenRequest for 1 s, which the server refuses after finding the
    // ServiceAccount, tells without minting anything.
    assert_eq!(
        out.mark(&format!(
            "ServiceAccount {SA} exists (a TokenRequest that mints nothing found it)"
        )),
        '✔',
        "{out}"
    );
    assert_eq!(
        out.mark(&format!(
            "legacy token Secrets for {SA}: not checked: no permission"
        )),
        '-',
        "{out}"
    );
    assert_eq!(out.count('✘'), 0, "{out}");
    let stats = &sim.stats().await["clusters"]["c1"];
    assert_eq!(stats["tokens_issued"].as_u64(), Some(0), "{stats}");
    let probe = "POST /api/v1/namespaces/kube-system/serviceaccounts/prometheus-test/token 422";
    assert_eq!(stats["requests"][probe].as_u64(), Some(1), "{stats}");

    // The ServiceAccount deleted: the same probe answers 404.
    sim.control(
        reqwest::Method::DELETE,
        "/clusters/c1/serviceaccounts/kube-system/prometheus-test",
        None,
    )
    .await;
    let out = check_online(&config).await;
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(
        out.mark(&format!("ServiceAccount {SA} does not exist")),
        '✘',
        "{out}"
    );
    assert!(
        out.hint(&format!("ServiceAccount {SA} does not exist"))
            .contains("mcprom rbac c1"),
        "{out}"
    );
    assert_eq!(out.count('✘'), 1, "{out}");
    assert_eq!(
        sim.stats().await["clusters"]["c1"]["tokens_issued"].as_u64(),
        Some(0)
    );
}

/// Creates a legacy token Secret through the sim's control endpoint.
async fn legacy_secret(sim: &Sim, service_account: &str) -> String {
    let answer: Value = reqwest::Client::new()
        .post(format!(
            "{}/clusters/c1/serviceaccounts/kube-system/{service_account}/legacy-token-secret",
            sim.control
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["secret"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_legacy_token_secret_is_a_warning_until_deleted() {
    let sim = Sim::start(&[]);
    let legacy = legacy_secret(&sim, "prometheus-test").await;
    let unrelated = legacy_secret(&sim, "default").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), &Conf::default(), None);
    let out = check_online(&config).await;

    assert_eq!(out.code, 0, "a warning does not fail the check:\n{out}");
    let line = out.line("legacy permanent token Secret");
    assert!(line.starts_with("  ! WARNING"), "{out}");
    assert!(line.contains(&legacy), "{out}");
    assert!(!line.contains(&unrelated), "{out}");
    assert!(
        out.hint("legacy permanent token Secret")
            .contains(&format!("kubectl -n kube-system delete secret {legacy}")),
        "{out}"
    );
    // The legacy Secret and the admin credential.
    assert_eq!(out.count('!'), 2, "{out}");

    sim.control(
        reqwest::Method::DELETE,
        &format!("/clusters/c1/secrets/kube-system/{legacy}"),
        None,
    )
    .await;
    let out = check_online(&config).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.mark(&format!("no legacy token Secret for {SA}")),
        '✔',
        "{out}"
    );
    assert_eq!(out.count('!'), 1, "only the admin credential: {out}");
    assert_no_token_requests(&sim).await;
}

#[tokio::test]
async fn unreachable_api_servers_and_prometheus_fail_their_own_lines() {
    let sim = Sim::start(&["--clusters", "3"]);
    // c1 refuses connections; c2 accepts them and never answers.
    sim.control(reqwest::Method::POST, "/clusters/c1/down", None)
        .await;
    sim.control(
        reqwest::Method::POST,
        "/clusters/c2/faults",
        Some(serde_json::json!({"count": 10, "kind": "hang", "scope": "all"})),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &sim,
        dir.path(),
        &Conf {
            reload_url: Some(format!("http://127.0.0.1:{}", free_port())),
            ..Conf::default()
        },
        None,
    );
    let out = check_online(&config).await;

    assert_eq!(out.code, 1, "{out}");
    let refused = out.line(&format!("API server {}", sim.api_server("c1")));
    assert!(
        refused.contains('✘') && refused.contains("Connection refused"),
        "{out}"
    );
    let hung = out.line(&format!("API server {}", sim.api_server("c2")));
    assert!(
        hung.contains('✘') && hung.contains("no answer within 10s"),
        "{out}"
    );
    let up = out.line(&format!("API server {}", sim.api_server("c3")));
    assert!(
        up.contains('✔'),
        "one cluster's failure must not affect another:\n{out}"
    );
    let prometheus = out.line("reachable: Prometheus");
    assert!(
        prometheus.contains('✘') && prometheus.contains("is it running?"),
        "{out}"
    );
    assert_eq!(out.count('✘'), 3, "{out}");
    // The local checks still ran for the unreachable clusters.
    assert_eq!(out.stdout.matches("✔ token directory").count(), 3, "{out}");
}

#[tokio::test]
async fn host_problems_found_offline_still_exit_78() {
    let sim = Sim::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let missing: PathBuf = dir.path().join("missing-ca.crt");
    let config = write_config(
        &sim,
        dir.path(),
        &Conf {
            cluster_extra: vec![("c1".into(), format!("ca_file = \"{}\"", missing.display()))],
            ..Conf::default()
        },
        None,
    );
    let out = check_online(&config).await;

    assert_eq!(out.code, 78, "{out}");
    assert!(out.stderr.contains("missing-ca.crt"), "{out}");
    assert!(
        out.line("API server not checked").contains('✘'),
        "the online checklist still runs:\n{out}"
    );
    assert_no_token_requests(&sim).await;
}

#[tokio::test]
async fn mint_checks_identity_and_audience_and_the_token_on_disk_is_reviewed() {
    let sim = Sim::start(&["--clusters", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    // c2's file holds a token that worked until its signing key rotated.
    let dead = sim.mint("c2", 3600).await;
    std::fs::write(tokens.join("c2.token"), &dead).unwrap();
    sim.control(
        reqwest::Method::POST,
        "/clusters/c2/signing-key/rotate",
        None,
    )
    .await;
    let config = write_config(
        &sim,
        dir.path(),
        &Conf {
            cluster_extra: vec![(
                "c1".into(),
                "audiences = [\"https://kubernetes.default.svc\"]".into(),
            )],
            ..Conf::default()
        },
        None,
    );
    let minted_before = sim.token_requests("c2").await;

    // Without --mint: the file is reviewed, nothing is minted.
    let out = check_online(&config).await;
    assert_eq!(out.code, 1, "{out}");
    let line = out.line(&format!("token file {}", tokens.join("c2.token").display()));
    assert!(
        line.contains('✘') && line.contains("does not accept the token (401"),
        "{out}"
    );
    assert!(
        out.hint(&format!("token file {}", tokens.join("c2.token").display()))
            .contains("mcprom rotate c2"),
        "{out}"
    );
    assert_eq!(
        sim.token_requests("c2").await,
        minted_before,
        "no TokenRequest"
    );

    // --mint: c1's audience is refused, with the server's own named; c2's
    // new token works. Nothing is written.
    let out = check_online_with(&config, &["--mint"]).await;
    assert_eq!(out.code, 1, "{out}");
    let c1 = out.line("a 10-minute token for kube-system/prometheus-test minted and accepted: the API server does not accept audience");
    assert!(c1.contains('✘'), "{out}");
    assert!(
        c1.contains("its audiences are \"https://kubernetes.default.svc.cluster.local\""),
        "{out}"
    );
    assert!(
        out.stdout.contains(
            "✔ a 10-minute token for kube-system/prometheus-test minted and accepted (audiences"
        ),
        "{out}"
    );
    assert!(!tokens.join("c1.token").exists(), "nothing written");
    assert_eq!(
        std::fs::read_to_string(tokens.join("c2.token")).unwrap(),
        dead
    );
    let claims_seen = sim.stats().await["clusters"]["c1"]["last_exp"].clone();
    assert!(claims_seen.is_object(), "c1 minted: {claims_seen}");
}

/// The daemon (the issuer's TokenRequest, whose reason labels
/// `mcprom_token_refresh_errors_total`) and the checklist classify the same
/// failure the same way: a connection dropped mid-handshake or
/// mid-request is `unreachable` in both (the checklist used to call
/// anything mentioning TLS a TLS failure), a certificate from another CA
/// `tls`, a rejected credential `unauthorized`, a 503 `server_error`.
#[tokio::test]
async fn the_daemon_and_the_checklist_give_each_failure_the_same_reason() {
    use mcprom::issuer::Issuer as _;

    let sim = Sim::start(&["--clusters", "5"]);
    for (cluster, fault) in [
        (
            "c2",
            serde_json::json!({"count": 100, "kind": "reset", "scope": "all"}),
        ),
        (
            "c4",
            serde_json::json!({"count": 100, "kind": "status", "code": 503, "scope": "all"}),
        ),
    ] {
        sim.control(
            reqwest::Method::POST,
            &format!("/clusters/{cluster}/faults"),
            Some(fault),
        )
        .await;
    }
    // A loopback server that accepts connections and drops them unanswered,
    // before the TLS handshake completes. It lives as long as the test.
    let dropper = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dropper_port = dropper.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((connection, _)) = dropper.accept().await {
            drop(connection);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.token");
    std::fs::write(&bogus, "eyJhbGciOiJFUzI1NiJ9.e30.c2lnbmF0dXJl").unwrap();
    // c1 trusts another cluster's CA; c3 presents a token no one issued;
    // c5's address drops every connection.
    let extra = [
        (
            "c1",
            format!("ca_file = \"{}\"", sim.ca_file("c2").display()),
        ),
        (
            "c3",
            format!(
                "api_server = \"{}\"\nca_file = \"{}\"",
                sim.api_server("c3"),
                sim.ca_file("c3").display()
            ),
        ),
        (
            "c5",
            format!("api_server = \"https://127.0.0.1:{dropper_port}\""),
        ),
    ];
    let conf = Conf {
        cluster_extra: extra.map(|(name, lines)| (name.to_owned(), lines)).into(),
        credentials: vec![("c3".into(), format!("token_file = \"{}\"", bogus.display()))],
        ..Conf::default()
    };
    let config = write_config(&sim, dir.path(), &conf, None);
    let settings = mcprom::config::load(&config).expect("the test's config loads");
    let expected = [
        ("c1", "tls"),
        ("c2", "unreachable"),
        ("c3", "unauthorized"),
        ("c4", "server_error"),
        ("c5", "unreachable"),
    ];
    for (name, reason) in expected {
        let cluster = settings
            .clusters
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .clone();
        let issuer = mcprom::issuer::KubeIssuer::new(cluster.clone(), Duration::from_secs(10));
        let spec = mcprom::issuer::TokenSpec {
            expiration: Duration::from_secs(3600),
            audiences: Vec::new(),
        };
        let daemon = issuer
            .issue(&spec)
            .await
            .expect_err("the TokenRequest must fail");
        let section = mcprom::online::check_cluster(&cluster, &config, false).await;
        let failed = section
            .checks
            .iter()
            .find(|c| c.mark == mcprom::online::Mark::Fail)
            .unwrap_or_else(|| panic!("cluster {name}: no failed line:\n{}", section.render()));
        assert_eq!(
            (daemon.metric_label(), failed.reason),
            (reason, Some(reason)),
            "cluster {name}: the daemon said {daemon}; the checklist:\n{}",
            section.render()
        );
    }
}
