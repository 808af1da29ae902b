//! `mcprom status`, `status --json` and `mcprom rotate` against a running
//! daemon and without one.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn mcprom(args: &[&str], config: &std::path::Path) -> std::process::Output {
    Command::new(MCPROM)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_rotate_talk_to_the_running_daemon() {
    let sim = Sim::start(&["--clusters", "2"]);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(&sim, work.path(), &Conf::default(), None);
    let mut daemon = Daemon::start(&config, "info");
    let c1 = work.path().join("tokens/c1.token");
    let c2 = work.path().join("tokens/c2.token");
    eventually(Duration::from_secs(20), "tokens", || async {
        (c1.exists() && c2.exists()).then_some(())
    })
    .await;
    let out = eventually(Duration::from_secs(10), "status --json", || async {
        let out = mcprom(&["status", "--json"], &config);
        (out.status.code() == Some(0)).then_some(out)
    })
    .await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let clusters = json["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 2);
    for c in clusters {
        assert_eq!(c["state"], "fresh");
        assert_eq!(c["service_account"], "kube-system/prometheus-test");
        assert!(c["last_error"].is_null());
        for key in ["expires_at", "issued_at", "last_refresh", "next_refresh"] {
            let t = c[key].as_str().unwrap_or_else(|| panic!("{key}: {c}"));
            assert!(
                t.parse::<jiff::Timestamp>().is_ok(),
                "{key} is RFC 3339: {t}"
            );
        }
    }
    let table = String::from_utf8(mcprom(&["status"], &config).stdout).unwrap();
    assert!(table.starts_with("CLUSTER"), "{table}");
    assert!(table.contains("c1") && table.contains("fresh"), "{table}");

    // rotate c1: a new token, c2 untouched.
    let before = read_token(&c1).unwrap();
    let out = mcprom(&["rotate", "c1"], &config);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_ne!(read_token(&c1).unwrap(), before);
    assert_eq!(sim.token_requests("c2").await, 1);

    // rotate a failing cluster: non-zero with the reason.
    sim.control(
        reqwest::Method::POST,
        "/clusters/c2/faults",
        Some(serde_json::json!({"count": 1, "kind": "status", "code": 403})),
    )
    .await;
    let out = mcprom(&["rotate", "c2"], &config);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("c2: FAILED") && stdout.contains("403"),
        "{stdout}"
    );
    let out = mcprom(&["rotate", "nope"], &config);
    assert_eq!(out.status.code(), Some(1));
    // A cluster in backoff makes status exit 1.
    let out = mcprom(&["status", "--json"], &config);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c2_state = json["clusters"][1]["state"].as_str().unwrap().to_owned();
    assert!(c2_state == "backoff" || c2_state == "fresh", "{c2_state}");
    if c2_state == "backoff" {
        assert_eq!(out.status.code(), Some(1));
        assert!(
            json["clusters"][1]["last_error"]
                .as_str()
                .unwrap()
                .contains("403")
        );
    }

    // Daemon stopped: exit 69, and the table still says what the files say.
    assert!(daemon.terminate().0.success());
    assert!(
        !work.path().join("control.sock").exists(),
        "socket removed on exit"
    );
    let out = mcprom(&["status", "--json"], &config);
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["clusters"][0]["state"], "fresh");
    assert!(json["clusters"][0]["expires_at"].is_string());
    let out = mcprom(&["rotate"], &config);
    assert_eq!(out.status.code(), Some(69));
}
