//! mcprom against the real world: kube-apiserver + etcd built from their Go
//! modules (`testbed/build`), clusters started by `testbed/cluster` and set
//! up with `mcprom rbac | kubectl apply`, mcprom's own credential a client
//! certificate that holds only what `mcprom rbac` grants, Prometheus 3
//! running exactly `mcprom scrape-config`'s jobs, and Debian's Prometheus
//! 2.42 with the `--static` jobs.
//!
//! Each test starts its own clusters, so they run in parallel. The test
//! that runs past a token's expiry (12 minutes) is in `real_expiry.rs`.
//! Needs root (network namespaces), python3, openssl, iproute2, Go 1.26
//! (first build) and Debian's prometheus: a missing piece fails the test.

mod common;
#[path = "common/realworld.rs"]
mod realworld;

use std::time::{Duration, Instant};

use common::*;
use realworld::*;

const TOKEN_WAIT: Duration = Duration::from_secs(90);
const UP_WAIT: Duration = Duration::from_secs(180);

/// The lines of `mcprom check --online` output.
struct Checked {
    ok: bool,
    text: String,
}

impl Checked {
    fn run(config: &std::path::Path) -> Checked {
        let out = mcprom(config, &["check", "--online"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("--- mcprom check --online ({}):\n{text}", out.status);
        Checked {
            ok: out.status.success(),
            text,
        }
    }

    /// The first line containing `needle`.
    fn line(&self, needle: &str) -> &str {
        self.text
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{}", self.text))
    }

    /// The hint under the first line containing `needle`.
    fn hint(&self, needle: &str) -> &str {
        let mut lines = self.text.lines().skip_while(|l| !l.contains(needle));
        lines.next();
        lines
            .next()
            .and_then(|l| l.trim_start().strip_prefix("hint: "))
            .unwrap_or_else(|| panic!("no hint under {needle:?}:\n{}", self.text))
    }

    fn fails(&self) -> usize {
        self.text.matches('✘').count()
    }
}

/// Two clusters, two nodes each. Prometheus 3 runs `mcprom scrape-config`
/// (Kubernetes discovery, the cluster CA) and `--static`; Debian's 2.42
/// runs `--static`. Every target is up, stays up across three forced
/// rotations, and a node added with kubectl is discovered.
#[tokio::test]
async fn prometheus_3_and_2_scrape_every_node_across_rotations_and_find_a_new_node() {
    let world = World::start(2, 2, &[]);
    let work = world.path().join("user");
    let sd_port = free_port();
    let config = world.user_config(
        &work,
        &["c1", "c2"],
        Some(&format!("http://127.0.0.1:{sd_port}")),
        "",
        "",
    );
    let mut daemon = Daemon::start(&config, "info");
    for c in ["c1", "c2"] {
        new_token(&work, c, None, TOKEN_WAIT).await;
    }

    let sd = scrape_config(&config, false, "2s");
    assert!(sd.contains("kubernetes_sd_configs"), "{sd}");
    assert!(sd.contains("ca_file"), "{sd}");
    assert!(!sd.contains("insecure_skip_verify"), "{sd}");
    let fixed = scrape_config(&config, true, "2s");
    assert!(fixed.contains("static_configs"), "{fixed}");

    let prom3 = tool("prometheus");
    let p_sd = Prom::start_on(&prom3, &work.join("prom3-sd"), &sd, sd_port);
    let p_static = Prom::start(&prom3, &work.join("prom3-static"), &fixed);
    let p_debian = Prom::start(
        std::path::Path::new(DEBIAN_PROMETHEUS),
        &work.join("prom2-static"),
        &fixed,
    );
    // 2 clusters × 2 nodes × 2 jobs (cadvisor, kubelet).
    for p in [&p_sd, &p_static, &p_debian] {
        p.ready().await;
        p.all_up(8, UP_WAIT).await;
    }
    let since = Instant::now();

    for round in 0..3 {
        let old: Vec<String> = ["c1", "c2"]
            .iter()
            .map(|c| token_in(&work, c).unwrap())
            .collect();
        let out = mcprom(&config, &["rotate"]);
        stdout_of(&out, "mcprom rotate");
        for (c, old) in ["c1", "c2"].iter().zip(&old) {
            let new = new_token(&work, c, Some(old), TOKEN_WAIT).await;
            assert_eq!(world.status_for_token(c, &new).await, 200, "round {round}");
        }
        // Several scrapes with each new token.
        tokio::time::sleep(Duration::from_secs(10)).await;
    }

    let window = since.elapsed() + Duration::from_secs(2);
    for (name, p) in [
        ("prometheus 3 (discovery)", &p_sd),
        ("prometheus 3 (static)", &p_static),
        ("prometheus 2.42 (static)", &p_debian),
    ] {
        let down = p.down_in(window).await;
        assert!(
            down.is_empty(),
            "{name}: targets down: {down:?}\n{}",
            p.log()
        );
        p.all_up(8, UP_WAIT).await;
    }
    // Discovery's list and watch requests: none failed (a 401 would show).
    let codes = p_sd.discovery_requests().await;
    assert!(
        codes.iter().all(|(c, _)| c.starts_with('2')),
        "discovery requests that failed: {codes:?}\n{}",
        p_sd.log()
    );

    // A node added with kubectl is discovered and scraped.
    world.add_node("c1", "node-added", 0);
    p_sd.all_up(10, UP_WAIT).await;
    let targets = p_sd.targets().await;
    assert!(
        targets.iter().any(|t| t
            .1
            .contains("/api/v1/nodes/node-added/proxy/metrics/cadvisor")),
        "{targets:#?}"
    );

    for c in ["c1", "c2"] {
        let status = status_of(&config, c);
        assert_eq!(status["state"], "fresh", "{status}\n{}", daemon.log());
    }
    let (status, _) = daemon.terminate();
    assert!(status.success(), "{}", daemon.log());
}

/// `check --online`: all ✔ when set up right; the matching ✘ line and hint
/// with a wrong CA, with the RBAC not applied and with the ServiceAccount
/// missing.
#[tokio::test]
async fn check_online_against_real_clusters() {
    let world = World::start(2, 1, &[]);
    let work = world.path().join("user");
    let config = world.user_config(&work, &["c1", "c2"], None, "", "");

    let good = Checked::run(&config);
    assert!(good.ok, "{}", good.text);
    assert_eq!(good.fails(), 0, "{}", good.text);
    assert!(
        good.line("authenticated as \"mcprom-issuer\"")
            .contains('✔'),
        "{}",
        good.text
    );
    assert!(good.line("allowed to create tokens").contains('✔'));
    assert!(good.line("reachable (Kubernetes v1.").contains('✔'));

    // A wrong CA: c2's CA for c1.
    let wrong = world.path().join("wrong-ca");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replacen(
        &world.field("c1", "ca_file"),
        &world.field("c2", "ca_file"),
        1,
    );
    std::fs::create_dir_all(&wrong).unwrap();
    std::fs::write(wrong.join("mcprom.toml"), &text).unwrap();
    let out = Checked::run(&wrong.join("mcprom.toml"));
    assert!(!out.ok);
    assert!(out.line("TLS verified").contains('✘'), "{}", out.text);
    assert!(out.hint("TLS verified").contains("ca_file"), "{}", out.text);
    assert_eq!(out.fails(), 1, "{}", out.text);

    // The RBAC not applied: the RoleBinding that lets mcprom mint is gone.
    world.kubectl(
        "c1",
        &[
            "-n",
            "kube-system",
            "delete",
            "rolebinding",
            "mcprom:issue-token:prometheus-test",
        ],
        "",
    );
    let out = Checked::run(&config);
    assert!(!out.ok);
    let line = out.line("allowed to create tokens");
    assert!(
        line.contains('✘') && line.contains("mcprom-issuer"),
        "{}",
        out.text
    );
    assert!(
        out.hint("allowed to create tokens")
            .contains("mcprom rbac c1"),
        "{}",
        out.text
    );
    assert_eq!(out.fails(), 1, "{}", out.text);

    // The ServiceAccount missing (c2).
    world.kubectl(
        "c2",
        &[
            "-n",
            "kube-system",
            "delete",
            "serviceaccount",
            "prometheus-test",
        ],
        "",
    );
    let out = Checked::run(&config);
    let line = out.line("ServiceAccount kube-system/prometheus-test");
    let c2 = out
        .text
        .split("cluster \"c2\"")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert!(
        c2.contains("ServiceAccount kube-system/prometheus-test does not exist"),
        "{}",
        out.text
    );
    assert!(
        out.hint("prometheus-test does not exist")
            .contains("mcprom rbac c2"),
        "{line}\n{}",
        out.text
    );
    assert_eq!(out.fails(), 2, "{}", out.text);
}

/// `credentials.self = true`: bootstrapped with the real `kubectl create
/// token … | mcprom seed`, the ServiceAccount renews its own token.
#[tokio::test]
async fn a_self_renewing_cluster_seeded_with_kubectl_create_token_renews_itself() {
    let world = World::start(1, 1, &[]);
    let work = world.path().join("self");
    let config = world.user_config(
        &work,
        &["c1"],
        None,
        "expiration = \"10m\"",
        // A self-renewing cluster does not take [defaults] refresh_at.
        "refresh_at = 0.03",
    );
    // A self-renewing cluster: no [cluster.credentials] file, `self = true`.
    let text = std::fs::read_to_string(&config).unwrap();
    let start = text.find("[cluster.credentials]").unwrap();
    let text = format!("{}[cluster.credentials]\nself = true\n", &text[..start]);
    std::fs::write(&config, text).unwrap();

    // The way the README says: apply mcprom's RBAC (the RoleBinding now
    // names the ServiceAccount itself), then seed with kubectl's token.
    let rbac = stdout_of(&mcprom(&config, &["rbac", "c1"]), "mcprom rbac");
    assert!(rbac.contains("kind: ServiceAccount"), "{rbac}");
    world.kubectl("c1", &["apply", "-f", "-"], &rbac);
    let seed_token = world.kubectl(
        "c1",
        &[
            "-n",
            "kube-system",
            "create",
            "token",
            "prometheus-test",
            "--duration",
            "10m",
        ],
        "",
    );
    let out = run_mcprom(
        &["seed", "c1", "--config", &config.to_string_lossy()],
        &seed_token,
    );
    stdout_of(&out, "mcprom seed");
    let seeded = token_in(&work, "c1").expect("seed wrote the token file");
    assert_eq!(seeded, seed_token.trim());

    // refresh_at 0.03 of 10 minutes: a renewal every ~18 s.
    let mut daemon = Daemon::start(&config, "info");
    let mut last = seeded.clone();
    let mut iats = vec![claims(&seeded)["iat"].as_u64().unwrap()];
    for _ in 0..2 {
        last = new_token(&work, "c1", Some(&last), Duration::from_secs(120)).await;
        let c = claims(&last);
        assert_eq!(
            c["sub"],
            "system:serviceaccount:kube-system:prometheus-test"
        );
        assert_eq!(world.status_for_token("c1", &last).await, 200);
        iats.push(c["iat"].as_u64().unwrap());
    }
    assert!(iats.windows(2).all(|w| w[0] <= w[1]), "{iats:?}");
    let status = status_of(&config, "c1");
    assert_eq!(status["state"], "fresh", "{status}\n{}", daemon.log());
    let (exit, _) = daemon.terminate();
    assert!(exit.success(), "{}", daemon.log());
}

/// Audiences the server does not accept: the TokenRequest succeeds (201)
/// but the token would be refused on use (401). mcprom's review of each new
/// token catches it: nothing is written, the status names the audiences,
/// and `check --online --mint` fails with the same words. Once the server
/// accepts the audience, mcprom writes a token that works.
#[tokio::test]
async fn a_token_for_an_audience_the_server_does_not_accept_is_never_written() {
    let world = World::start(1, 1, &[]);
    let work = world.path().join("aud");
    let config = world.user_config(
        &work,
        &["c1"],
        None,
        "",
        "audiences = [\"https://kubernetes.default.svc\"]",
    );
    let said = "does not accept audience \"https://kubernetes.default.svc\"";
    // Without --mint nothing is minted, so nothing can tell (recorded).
    let plain = Checked::run(&config);
    eprintln!(
        "wrong audience: check --online exit ok = {}, ✘ lines = {}",
        plain.ok,
        plain.fails()
    );
    let out = mcprom(&config, &["check", "--online", "--mint"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.lines().any(|l| l.contains('✘') && l.contains(said)),
        "{text}"
    );

    let mut daemon = Daemon::start(&config, "info");
    let status = eventually(Duration::from_secs(90), "the audience error", || async {
        let s = status_of(&config, "c1");
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(said))
            .then_some(s)
    })
    .await;
    assert!(token_in(&work, "c1").is_none(), "{status}");

    // The same audience accepted once the server lists it.
    world.ctl(&[
        "restart-apiserver",
        "c1",
        "--api-audiences",
        "https://kubernetes.default.svc.cluster.local,https://kubernetes.default.svc",
    ]);
    let token = new_token(&work, "c1", None, Duration::from_secs(120)).await;
    assert_eq!(claims(&token)["aud"][0], "https://kubernetes.default.svc");
    assert_eq!(world.status_for_token("c1", &token).await, 200);
    let (exit, _) = daemon.terminate();
    assert!(exit.success(), "{}", daemon.log());
}

/// The ServiceAccount deleted and recreated: the old token dies on the
/// real server (after its ~10 s authentication cache) and what mcprom does
/// about it is recorded; `mcprom rotate` brings a working token.
#[tokio::test]
async fn a_service_account_deleted_and_recreated_kills_the_old_token() {
    let world = World::start(1, 1, &[]);
    let work = world.path().join("sa");
    let config = world.user_config(&work, &["c1"], None, "", "");
    let mut daemon = Daemon::start(&config, "info");
    let old = new_token(&work, "c1", None, TOKEN_WAIT).await;
    assert_eq!(world.status_for_token("c1", &old).await, 200);

    world.kubectl(
        "c1",
        &[
            "-n",
            "kube-system",
            "delete",
            "serviceaccount",
            "prometheus-test",
        ],
        "",
    );
    let rbac = stdout_of(&mcprom(&config, &["rbac", "c1"]), "mcprom rbac");
    world.kubectl("c1", &["apply", "-f", "-"], &rbac);
    let deadline = Instant::now() + Duration::from_secs(60);
    let died_after = loop {
        let code = world.status_for_token("c1", &old).await;
        if code == 401 {
            break Instant::now();
        }
        assert_eq!(code, 200);
        assert!(
            Instant::now() < deadline,
            "the old token still works after 60 s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let _ = died_after;
    // What mcprom does on its own within 30 s: recorded, not asserted
    // (detecting it is issue 18's token verification).
    tokio::time::sleep(Duration::from_secs(30)).await;
    let status = status_of(&config, "c1");
    let same = token_in(&work, "c1").as_deref() == Some(old.as_str());
    eprintln!(
        "SA recreated: after 30 s mcprom's state is {} and the file holds the {} token",
        status["state"],
        if same { "old (dead)" } else { "new" }
    );
    // A forced rotation brings a token the server accepts.
    stdout_of(&mcprom(&config, &["rotate", "c1"]), "mcprom rotate");
    let new = new_token(&work, "c1", Some(&old), TOKEN_WAIT).await;
    assert_eq!(world.status_for_token("c1", &new).await, 200);
    let (exit, _) = daemon.terminate();
    assert!(exit.success(), "{}", daemon.log());
}

/// `testbed/cluster-ctl restart-apiserver --new-signing-key`: every token
/// issued before is refused at once; mcprom gets a working one after a
/// rotation.
#[tokio::test]
async fn a_new_signing_key_kills_old_tokens() {
    let world = World::start(1, 1, &[]);
    let work = world.path().join("key");
    let config = world.user_config(&work, &["c1"], None, "", "");
    let mut daemon = Daemon::start(&config, "info");
    let old = new_token(&work, "c1", None, TOKEN_WAIT).await;
    assert_eq!(world.status_for_token("c1", &old).await, 200);
    world.ctl(&["restart-apiserver", "c1", "--new-signing-key"]);
    assert_eq!(world.status_for_token("c1", &old).await, 401);
    stdout_of(&mcprom(&config, &["rotate", "c1"]), "mcprom rotate");
    let new = new_token(&work, "c1", Some(&old), TOKEN_WAIT).await;
    assert_eq!(world.status_for_token("c1", &new).await, 200);
    let (exit, _) = daemon.terminate();
    assert!(exit.success(), "{}", daemon.log());
}

/// TLS session resumption against the real server (Go's `crypto/tls`
/// issues the tickets): with 10-minute tokens, the shortest a real API
/// server issues, the next refresh is within `KEEP_TLS_WITHIN`, so the
/// cluster keeps its sessions and each rotation's TokenRequest (client
/// certificate) and review (the token alone) resume; the reviews confirm
/// that a resumed certificate session never carries the review. (With 1 h
/// tokens nothing is kept between rotations: `tests/tls_resumption.rs`.)
#[tokio::test]
async fn rotations_resume_the_real_servers_tls_sessions() {
    let world = World::start(1, 1, &[]);
    let work = world.path().join("resume");
    let config = world.user_config(&work, &["c1"], None, "expiration = \"10m\"", "");
    let port = free_port();
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        "[metrics]\nlisten = \"\"",
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\""),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let handshakes = || async move {
        let metrics = metrics_on(port).await;
        let count = |kind: &str| {
            sample(
                &metrics,
                &format!("mcprom_apiserver_tls_connections_total{{handshake=\"{kind}\"}}"),
            )
            .unwrap_or_else(|| panic!("no {kind} count in {metrics}"))
        };
        (count("full"), count("resumed"))
    };

    // A token is written only after its review confirmed it: once the
    // file holds it, both of its connections are counted.
    let mut daemon = Daemon::start(&config, "info");
    let mut token = new_token(&work, "c1", None, TOKEN_WAIT).await;
    assert_eq!(
        handshakes().await,
        (2.0, 0.0),
        "first token: the TokenRequest and the review, both full"
    );
    for _ in 0..2 {
        stdout_of(&mcprom(&config, &["rotate", "c1"]), "mcprom rotate");
        token = new_token(&work, "c1", Some(&token), TOKEN_WAIT).await;
        assert_eq!(world.status_for_token("c1", &token).await, 200);
    }
    assert_eq!(
        handshakes().await,
        (2.0, 4.0),
        "each rotation: the TokenRequest and the review resumed"
    );
    let (exit, _) = daemon.terminate();
    assert!(exit.success(), "{}", daemon.log());
}
