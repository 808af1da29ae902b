//! config/alerts.yml: valid for the real promtool, unit-tested with
//! `promtool test rules`, and written against metric names mcprom exports.

use std::process::Command;
use std::sync::Arc;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("promtool is required (Debian: apt-get install prometheus)")
}

#[test]
fn promtool_accepts_the_rules() {
    let out = promtool(&["check", "rules", "config/alerts.yml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn promtool_rule_tests_pass_firing_and_not_firing() {
    let out = promtool(&["test", "rules", "tests/alerts.test.yml"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_metric_in_the_rules_is_exported() {
    let state = Arc::new(mcprom::state::State::default());
    state.insert(mcprom::state::ClusterStatus::new(
        "c1",
        "ns/sa".into(),
        "/t".into(),
    ));
    let exposition = mcprom::metrics::render(&mcprom::metrics::registry(state));
    let exported: Vec<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let rules = std::fs::read_to_string(format!("{ROOT}/config/alerts.yml")).unwrap();
    let mut used = Vec::new();
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("mcprom_") && !used.contains(&word) {
            used.push(word);
        }
    }
    assert!(used.len() >= 6, "{used:?}");
    for name in used {
        // Counters are declared without `_total` in TYPE lines.
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            exported.contains(&family),
            "alerts.yml uses {name}, which mcprom does not export ({exported:?})"
        );
    }
}
