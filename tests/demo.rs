//! `mcprom demo`, the README's "run it" command, end to end: simulated
//! clusters, the real daemon, and the real Prometheus (CI installs it).

use std::process::Command;

#[test]
fn the_demo_rotates_reloads_and_prometheus_scrapes_every_node() {
    let prometheus = Command::new("sh")
        .args(["-c", "command -v prometheus"])
        .output()
        .unwrap();
    assert!(
        prometheus.status.success(),
        "prometheus is required (Debian: apt-get install prometheus)"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_mcprom"))
        .args(["demo", "--for", "30s"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("real Prometheus at"), "{stdout}");
    // 20 s tokens refreshed at half-life: at least 3 per cluster in 30 s.
    for cluster in ["c1", "c2"] {
        let issued: u64 = stdout
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("{cluster}: "))?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no summary line for {cluster}: {stdout}"));
        assert!(issued >= 3, "{cluster}: {issued} tokens: {stdout}");
    }
    assert!(stderr.matches("token refreshed").count() >= 6, "{stderr}");
    assert!(stderr.contains("prometheus reloaded"), "{stderr}");
    let up: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim().starts_with("up{"))
        .collect();
    assert_eq!(up.len(), 4, "2 clusters × 2 nodes: {stdout}");
    assert!(up.iter().all(|l| l.trim().ends_with("= 1")), "{stdout}");
    assert!(stdout.contains("0 failed"), "{stdout}");
}
