//! Cheaper rotations (issue 20 item 4), against the real binaries: mcprom
//! keeps each cluster's TLS configuration, so rotations resume the TLS
//! session the simulator issued a ticket for (as Go's server, every
//! kube-apiserver, does) instead of a full handshake; the review of a new
//! token never resumes the session of a client certificate (the server
//! would see the certificate's identity); a bearer-token credential lets the
//! review ride on the TokenRequest's connection; and a new CA starts afresh:
//! no session made under the old trust is resumed. A cluster with nothing
//! due for a long while (1 h tokens) keeps no session at all.
//!
//! The simulator counts TLS connections per cluster by handshake
//! (`tls_full_handshakes`, `tls_resumed_handshakes` in `/stats`); mcprom
//! exports `mcprom_apiserver_tls_connections_total{handshake}`.

mod common;
#[path = "common/reliability.rs"]
mod reliability;

use common::*;
use reliability::*;

/// `(full, resumed)` TLS connections the simulator counted for `cluster`.
async fn handshakes(sim: &Sim, cluster: &str) -> (u64, u64) {
    let stats = sim.stats().await;
    let c = &stats["clusters"][cluster];
    (
        c["tls_full_handshakes"].as_u64().unwrap(),
        c["tls_resumed_handshakes"].as_u64().unwrap(),
    )
}

/// `(full, resumed)` as mcprom counts them.
async fn mcprom_handshakes(rig: &Rig) -> (f64, f64) {
    let metrics = rig.metrics().await;
    let full = sample(
        &metrics,
        "mcprom_apiserver_tls_connections_total{handshake=\"full\"}",
    );
    let resumed = sample(
        &metrics,
        "mcprom_apiserver_tls_connections_total{handshake=\"resumed\"}",
    );
    (
        full.unwrap_or_else(|| panic!("no full count in {metrics}")),
        resumed.unwrap_or_else(|| panic!("no resumed count in {metrics}")),
    )
}

/// The shortest tokens a real API server issues (10 min): each refresh
/// is due within `KEEP_TLS_WITHIN`, so the cluster keeps its sessions.
fn hot() -> Conf {
    Conf {
        expiration: "10m",
        ..Conf::default()
    }
}

/// c1's first token is written and its review done.
async fn first_token_reviewed(rig: &Rig) {
    rig.first_tokens(&["c1"]).await;
    eventually(
        std::time::Duration::from_secs(60),
        "the first token reviewed",
        || async { rig.status("c1")["verified_at"].as_str().map(|_| ()) },
    )
    .await;
}

/// `mcprom rotate c1` succeeds and writes a new token.
async fn rotated(rig: &Rig) {
    let before = rig.token("c1");
    let out = rig.rotate("c1").await;
    assert!(
        out.status.success(),
        "rotation: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(before, rig.token("c1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_resume_the_session_and_a_new_ca_starts_afresh() {
    // The sim's kubeconfig: a client certificate (the admin's), so the
    // TokenRequest and the review each have their own TLS configuration.
    let rig = Rig::start(&[], &hot(), Some(&["c1"]));
    first_token_reviewed(&rig).await;
    assert_eq!(
        handshakes(&rig.sim, "c1").await,
        (2, 0),
        "first token: the TokenRequest and the review, both full"
    );
    for _ in 0..3 {
        rotated(&rig).await;
    }
    // Each rotation verified its token (the review authenticated as the
    // ServiceAccount, not as the admin's certificate) over resumed sessions.
    assert_eq!(handshakes(&rig.sim, "c1").await, (2, 6));
    assert_eq!(mcprom_handshakes(&rig).await, (2.0, 6.0));

    // A CA that does not sign the server's certificate: the kept sessions
    // must not carry the connection past verification.
    let ca = rig.sim.ca_file("c1");
    let good = std::fs::read(&ca).unwrap();
    let stranger = rcgen::generate_simple_self_signed(vec!["stranger".to_owned()]).unwrap();
    std::fs::write(&ca, stranger.cert.pem()).unwrap();
    let before = rig.token("c1");
    let out = rig.rotate("c1").await;
    assert!(!out.status.success(), "a rotation with a foreign CA fails");
    assert_eq!(rig.token("c1"), before, "the token stays");
    assert!(rig.refresh_errors("c1", "tls").await >= 1.0);
    assert_eq!(handshakes(&rig.sim, "c1").await, (2, 6), "nothing resumed");

    // The right CA again: new configurations, so full handshakes.
    std::fs::write(&ca, good).unwrap();
    rotated(&rig).await;
    assert_eq!(handshakes(&rig.sim, "c1").await, (4, 6));
    rotated(&rig).await;
    assert_eq!(handshakes(&rig.sim, "c1").await, (4, 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_bearer_token_the_review_rides_on_the_token_requests_connection() {
    let sim = Sim::start(&[]);
    let issuer = sim.issuer_token_file("c1");
    let conf = Conf {
        credentials: vec![(
            "c1".to_owned(),
            format!("token_file = \"{}\"", issuer.display()),
        )],
        cluster_extra: vec![(
            "c1".to_owned(),
            format!(
                "api_server = \"{}\"\nca_file = \"{}\"",
                sim.api_server("c1"),
                sim.ca_file("c1").display()
            ),
        )],
        ..hot()
    };
    let work = tempfile::tempdir().unwrap();
    let rig = Rig::start_with(sim, work, &conf, Some(&["c1"]), |_| {});
    first_token_reviewed(&rig).await;
    assert_eq!(
        handshakes(&rig.sim, "c1").await,
        (1, 0),
        "one connection for the TokenRequest and its review"
    );
    for _ in 0..3 {
        rotated(&rig).await;
    }
    assert_eq!(handshakes(&rig.sim, "c1").await, (1, 3));
    let stats = rig.sim.stats().await;
    let reviews = &stats["clusters"]["c1"]["requests"]["POST /apis/authentication.k8s.io/v1/selfsubjectreviews 201"];
    assert_eq!(reviews.as_u64(), Some(4), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_nothing_due_for_long_keeps_no_session() {
    // 1 h tokens refreshed at 80 %: the next request is 48 min away, so
    // the cluster lets go of its TLS configurations and sessions, and each
    // rotation starts with full handshakes.
    let rig = Rig::start(&[], &Conf::default(), Some(&["c1"]));
    first_token_reviewed(&rig).await;
    assert_eq!(handshakes(&rig.sim, "c1").await, (2, 0));
    for _ in 0..2 {
        rotated(&rig).await;
    }
    assert_eq!(
        handshakes(&rig.sim, "c1").await,
        (6, 0),
        "nothing kept between rotations 48 minutes apart"
    );
    assert_eq!(mcprom_handshakes(&rig).await, (6.0, 0.0));
}
