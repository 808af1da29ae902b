//! The fault matrix, host side: Prometheus's reload endpoint, the token
//! directory and the config file.
//!
//! Reload failures never hold up rotation (token files keep being
//! replaced: Prometheus reads them on every scrape), show in the log and in
//! `mcprom_prometheus_reloads_total{result="failure"}`, are retried with a
//! bounded backoff (counted at the endpoint or in the log) and stop by
//! themselves once Prometheus answers. Token-directory failures keep the
//! old token in place and recover automatically. Config failures keep the
//! last good config rotating.
//!
//! The read-only directory and the full filesystem need root (mount); CI
//! runs as root and these tests fail, not skip, without it.
//!
//! 403 and 401 from Prometheus wait 5 minutes before the next try (someone
//! has to act first): their recovery is checked only with `MCPROM_LONG=1`.

mod common;
#[path = "common/reliability.rs"]
mod reliability;

use std::time::{Duration, Instant};

use common::*;
use reliability::*;

const SIM_ARGS: &[&str] = &["--min-expiration", "1s", "--expiry-leeway", "0s"];
const RECOVERY: Duration = Duration::from_secs(90);

fn long() -> bool {
    std::env::var_os("MCPROM_LONG").is_some_and(|v| v == "1")
}

fn reload_conf(url: &str) -> Conf {
    Conf {
        reload_url: Some(url.to_owned()),
        delay: "1s",
        ..Conf::default()
    }
}

async fn reloads(rig: &Rig, result: &str) -> f64 {
    rig.metric(&format!(
        "mcprom_prometheus_reloads_total{{result=\"{result}\"}}"
    ))
    .await
    .unwrap_or(0.0)
}

/// Rotation goes on while reloads fail: `mcprom rotate` succeeds and the
/// new token is accepted.
async fn rotation_goes_on(rig: &Rig) {
    let before = rig.token("c1");
    let out = rig.rotate("c1").await;
    assert!(
        out.status.success(),
        "rotation is never held up by reloads: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let after = rig.token("c1");
    assert_ne!(before, after);
    assert!(rig.sim.accepts("c1", &after).await);
}

/// Wait for the first failed reload, then watch `window`: failures are
/// logged with `says` and counted; returns the number of failed attempts
/// logged in the window.
async fn reload_fails_visibly(rig: &Rig, says: &str, window: Duration) -> usize {
    eventually(Duration::from_secs(60), "a failed reload", || async {
        (reloads(rig, "failure").await >= 1.0).then_some(())
    })
    .await;
    let at_start = rig.daemon.count("prometheus reload failed");
    rotation_goes_on(rig).await;
    tokio::time::sleep(window).await;
    let failed = rig.daemon.count("prometheus reload failed") - at_start;
    let log = rig.daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("prometheus reload failed") && l.contains(says))
        .unwrap_or_else(|| panic!("the log says {says:?}: {log}"));
    eprintln!("figures: log: {line}");
    assert_eq!(reloads(rig, "success").await, 0.0);
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_down_never_holds_up_rotation_and_reloads_resume_when_it_is_back() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let rig = Rig::start(SIM_ARGS, &reload_conf(&url), Some(&["c1"]));
    rig.first_tokens(&["c1"]).await;
    let window = Duration::from_secs(12);
    let failed = reload_fails_visibly(&rig, "is not reachable", window).await;
    eprintln!(
        "figures: prometheus down: {failed} reload attempts in {window:?} ({:.0}/min)",
        per_minute(failed as u64, window)
    );
    // Backoff 1, 2, 4, 8 s…: at most 4 tries in 12 s, at least one.
    assert!((1..=5).contains(&failed), "bounded: {failed}");
    assert!(rig.daemon.log().contains("is it running?"));
    let stub = PromStub::start_on(
        format!("127.0.0.1:{port}").parse().unwrap(),
        200,
        Duration::ZERO,
    )
    .await;
    eventually(RECOVERY, "a reload once Prometheus is back", || async {
        (stub.successes() >= 1 && reloads(&rig, "success").await >= 1.0).then_some(())
    })
    .await;
    assert!(rig.daemon.log().contains("prometheus reloaded"));
}

fn minimal_prometheus_yml() -> String {
    "global:\n  scrape_interval: 15s\nscrape_configs: []\n".to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_disabled_403_says_how_to_enable_it_and_retries_slowly() {
    let work = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(&work.path().join("prom"), &minimal_prometheus_yml(), false);
    prom.ready().await;
    let rig = Rig::start(SIM_ARGS, &reload_conf(&prom.url()), Some(&["c1"]));
    rig.first_tokens(&["c1"]).await;
    let window = Duration::from_secs(10);
    let failed = reload_fails_visibly(&rig, "--web.enable-lifecycle", window).await;
    // The real Prometheus's answer is quoted.
    assert!(rig.daemon.log().contains("Lifecycle API is not enabled"));
    eprintln!(
        "figures: 403: {failed} further reload attempts in {window:?} with a rotation pending"
    );
    assert_eq!(
        failed, 0,
        "nothing changes until someone acts: next try in 5 min"
    );
    assert_eq!(reloads(&rig, "failure").await, 1.0);
    if long() {
        // The operator enables the lifecycle API (a restart of Prometheus
        // on the same port: the config names it).
        let port = prom.port;
        drop(prom);
        let prom = Prometheus::start_on(
            &work.path().join("prom"),
            &minimal_prometheus_yml(),
            true,
            port,
        );
        prom.ready().await;
        the_slow_retry_succeeds(&rig).await;
    } else {
        eprintln!("{LONG_ONLY}");
    }
}

const LONG_ONLY: &str = "note: recovery after the 5-minute retry is checked with MCPROM_LONG=1";

/// After a 401/403 mcprom waits 5 minutes before the next reload: wait for it.
async fn the_slow_retry_succeeds(rig: &Rig) {
    eventually(
        Duration::from_secs(360),
        "the slow retry succeeds",
        || async { (reloads(rig, "success").await >= 1.0).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_asks_for_web_credentials_and_retries_slowly() {
    let stub = PromStub::start(401, Duration::ZERO).await;
    let rig = Rig::start(SIM_ARGS, &reload_conf(&stub.url), Some(&["c1"]));
    rig.first_tokens(&["c1"]).await;
    let window = Duration::from_secs(10);
    let failed = reload_fails_visibly(&rig, "wants credentials", window).await;
    eprintln!(
        "figures: 401: {failed} further reload attempts in {window:?}; endpoint saw {}",
        stub.attempts()
    );
    assert_eq!(failed, 0, "next try in 5 min");
    assert_eq!(stub.attempts(), 1);
    if long() {
        stub.set(200, "");
        the_slow_retry_succeeds(&rig).await;
    } else {
        eprintln!("{LONG_ONLY}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_rejecting_its_own_config_500_is_quoted_retried_and_recovers_when_fixed() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("prom");
    let prom = Prometheus::start(&dir, &minimal_prometheus_yml(), true);
    prom.ready().await;
    // Someone breaks prometheus.yml; the next reload will fail.
    std::fs::write(
        dir.join("prometheus.yml"),
        "scrape_configs:\n  - job_name: x\n    no_such_field: 1\n",
    )
    .unwrap();
    let rig = Rig::start(SIM_ARGS, &reload_conf(&prom.url()), Some(&["c1"]));
    rig.first_tokens(&["c1"]).await;
    let window = Duration::from_secs(12);
    let failed = reload_fails_visibly(&rig, "rejected its own configuration (500)", window).await;
    // Prometheus's own words are quoted, on the failure's one log line.
    assert!(
        rig.daemon
            .log()
            .lines()
            .any(|l| l.contains("rejected its own configuration") && l.contains("no_such_field")),
        "{}",
        rig.daemon.log()
    );
    eprintln!(
        "figures: 500: {failed} reload attempts in {window:?} ({:.0}/min)",
        per_minute(failed as u64, window)
    );
    assert!((1..=5).contains(&failed), "bounded: {failed}");
    std::fs::write(dir.join("prometheus.yml"), minimal_prometheus_yml()).unwrap();
    eventually(RECOVERY, "a successful reload after the fix", || async {
        (reloads(&rig, "success").await >= 1.0).then_some(())
    })
    .await;
    let own = reqwest::get(format!("{}/metrics", prom.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(&own, "prometheus_config_last_reload_successful"),
        Some(1.0),
        "Prometheus loaded the fixed config at mcprom's request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_slower_than_the_timeout_is_reported_retried_boundedly_and_recovers() {
    let stub = PromStub::start(200, Duration::from_secs(4)).await;
    let sim = Sim::start(SIM_ARGS);
    let work = tempfile::tempdir().unwrap();
    let rig = Rig::start_with(sim, work, &reload_conf(&stub.url), Some(&["c1"]), |t| {
        *t = t.replace("timeout = \"10s\"", "timeout = \"2s\"");
    });
    rig.first_tokens(&["c1"]).await;
    let window = Duration::from_secs(12);
    let failed = reload_fails_visibly(&rig, "did not finish the reload within 2s", window).await;
    eprintln!(
        "figures: slow reload: {failed} failed attempts in {window:?}, endpoint saw {} in all",
        stub.attempts()
    );
    assert!((1..=5).contains(&failed), "bounded: {failed}");
    stub.set_delay(Duration::ZERO);
    eventually(RECOVERY, "a reload in time", || async {
        (reloads(&rig, "success").await >= 1.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_token_directory_is_created_even_when_removed_while_running() {
    let sim = Sim::start(SIM_ARGS);
    let work = tempfile::tempdir().unwrap();
    let deep = work.path().join("not/yet/there");
    let configured = format!("token_dir = \"{}\"", work.path().join("tokens").display());
    let rig = Rig::start_with(sim, work, &Conf::default(), Some(&["c1"]), |t| {
        *t = t.replace(&configured, &format!("token_dir = \"{}\"", deep.display()));
    });
    let file = deep.join("c1.token");
    eventually(
        Duration::from_secs(60),
        "the token in the created directory",
        || async { file.exists().then_some(()) },
    )
    .await;
    std::fs::remove_dir_all(&deep).unwrap();
    let out = rig.rotate("c1").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let token = std::fs::read_to_string(&file).expect("recreated with the token");
    assert!(rig.sim.accepts("c1", &token).await);
}

/// 40-second tokens refreshed at 90 %: the backoff cap (a quarter of the
/// time left) stays under 10 s, so the retry after the cause is cleared
/// comes within seconds.
fn short_tokens() -> Conf {
    Conf {
        expiration: "40s",
        refresh_at: 0.9,
        ..Conf::default()
    }
}

/// After a first token: the write fails, the token stays, it is visible
/// (`write_failed`), retries are bounded, and clearing the cause recovers.
async fn write_fails_then_recovers(rig: &Rig, says: &str, clear: impl FnOnce()) {
    let old = rig.token("c1");
    let before = rig.token_requests("c1").await;
    let started = Instant::now();
    let window = Duration::from_secs(10);
    let (out, ()) = tokio::join!(rig.rotate("c1"), rig.token_stays("c1", &old, window));
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("writing the token file failed") && text.contains(says),
        "{text}"
    );
    let requests = rig.token_requests("c1").await - before;
    eprintln!(
        "figures: write failure ({says}): {requests} attempts in {elapsed:.1?} ({:.0}/min)",
        per_minute(requests, elapsed)
    );
    assert!((2..=12).contains(&requests), "bounded retries: {requests}");
    assert!(rig.refresh_errors("c1", "write_failed").await >= 2.0);
    let status = rig.status("c1");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains(says),
        "{status}"
    );
    let log = rig.daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("keeping the current token") && l.contains(says))
        .unwrap_or_else(|| panic!("{log}"));
    eprintln!("figures: log: {line}");
    let dir = rig.token_path("c1").parent().unwrap().to_owned();
    let temps: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.starts_with(".mcprom-tmp.").then_some(name)
        })
        .collect();
    assert!(
        temps.is_empty(),
        "failed writes leave no temp file: {temps:?}"
    );
    clear();
    rig.recovers("c1", &old, RECOVERY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_directory_keeps_the_token_and_recovers_when_writable() {
    // As root, chmod 0555 does not stop writes; a read-only bind mount does.
    require_root("a read-only token directory");
    let rig = Rig::start(SIM_ARGS, &short_tokens(), Some(&["c1"]));
    rig.first_tokens(&["c1"]).await;
    let dir = rig.token_path("c1").parent().unwrap().to_owned();
    let mount = Mount::read_only(&dir);
    write_fails_then_recovers(&rig, "Read-only file system", move || drop(mount)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_keeps_the_complete_old_token_and_recovers_when_space_returns() {
    require_root("a full filesystem (a 64 KiB tmpfs)");
    let sim = Sim::start(SIM_ARGS);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("tokens");
    let _mount = Mount::tmpfs(&dir, "64k");
    let rig = Rig::start_with(sim, work, &short_tokens(), Some(&["c1"]), |_| {});
    rig.first_tokens(&["c1"]).await;
    // Fill what is left.
    let filler = dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1024];
        while f.write_all(&chunk).and_then(|()| f.sync_all()).is_ok() {}
    }
    write_fails_then_recovers(&rig, "No space left on device", || {
        std::fs::remove_file(&filler).unwrap();
    })
    .await;
}

/// A daemon whose tokens live 12 s (refreshed every ~6 s), to show that
/// rotation goes on while the config file is gone or broken.
fn short_lived_rig() -> Rig {
    Rig::start(
        SIM_ARGS,
        &Conf {
            expiration: "12s",
            refresh_at: 0.5,
            ..Conf::default()
        },
        Some(&["c1"]),
    )
}

/// Over `window`, the token changes by itself and every token is accepted.
async fn keeps_rotating(rig: &Rig, window: Duration) -> usize {
    let mut seen = vec![rig.token("c1")];
    let until = Instant::now() + window;
    while Instant::now() < until {
        let t = std::fs::read_to_string(rig.token_path("c1")).expect("never missing");
        if seen.last() != Some(&t) {
            assert!(rig.sim.accepts("c1", &t).await);
            seen.push(t);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.len() >= 2, "rotation went on: {} tokens", seen.len());
    seen.len() - 1
}

async fn status_over_socket(rig: &Rig) -> serde_json::Value {
    control_call(&rig.socket(), &serde_json::json!({"command": "status"}))
        .await
        .expect("the control socket answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_deleted_while_running_keeps_the_last_good_config_rotating() {
    let rig = short_lived_rig();
    rig.first_tokens(&["c1"]).await;
    let text = std::fs::read_to_string(&rig.config).unwrap();
    std::fs::remove_file(&rig.config).unwrap();
    let before = rig.token_requests("c1").await;
    let window = Duration::from_secs(14);
    let rotations = keeps_rotating(&rig, window).await;
    let requests = rig.token_requests("c1").await - before;
    eprintln!(
        "figures: config deleted: {rotations} rotations, {requests} TokenRequests in {window:?}"
    );
    assert!(
        requests <= rotations as u64 + 1,
        "no extra requests: {requests}"
    );
    let log = rig.daemon.log();
    assert!(
        log.contains("cannot read the config file") && log.contains("keeping the last good config"),
        "{log}"
    );
    assert_eq!(
        rig.metric("mcprom_config_last_reload_successful").await,
        Some(0.0),
        "a deleted config file is visible in the metric (the next start would fail)"
    );
    let status = status_over_socket(&rig).await;
    assert_eq!(status["clusters"][0]["state"], "fresh", "{status}");
    // Put back (with an edit, as a restore from backup might differ).
    std::fs::write(&rig.config, format!("{text}\n# restored\n")).unwrap();
    eventually(
        Duration::from_secs(30),
        "the restored config to be read",
        || async {
            (rig.metric("mcprom_config_last_reload_successful").await == Some(1.0)).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_edit_is_refused_visibly_and_the_last_good_config_keeps_rotating() {
    let rig = short_lived_rig();
    rig.first_tokens(&["c1"]).await;
    let text = std::fs::read_to_string(&rig.config).unwrap();
    std::fs::write(
        &rig.config,
        text.replace("refresh_at = 0.5", "refresh_at = 5"),
    )
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "the invalid edit to be refused",
        || async {
            (rig.metric("mcprom_config_last_reload_successful").await == Some(0.0)).then_some(())
        },
    )
    .await;
    let before = rig.token_requests("c1").await;
    let window = Duration::from_secs(14);
    let rotations = keeps_rotating(&rig, window).await;
    let requests = rig.token_requests("c1").await - before;
    eprintln!(
        "figures: invalid config: {rotations} rotations, {requests} TokenRequests in {window:?}"
    );
    assert!(
        requests <= rotations as u64 + 1,
        "no extra requests: {requests}"
    );
    let log = rig.daemon.log();
    assert!(
        log.contains("configuration reload failed, keeping the last good config")
            && log.contains("refresh_at"),
        "{log}"
    );
    // `mcprom reload` reports the error and exits 78.
    let out = mcprom_cli(&rig.config, &["reload"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refresh_at")
            || String::from_utf8_lossy(&out.stdout).contains("refresh_at")
    );
    let status = status_over_socket(&rig).await;
    assert_eq!(status["clusters"][0]["state"], "fresh", "{status}");
    std::fs::write(&rig.config, &text).unwrap();
    eventually(Duration::from_secs(30), "the fix to be applied", || async {
        (rig.metric("mcprom_config_last_reload_successful").await == Some(1.0)).then_some(())
    })
    .await;
}
