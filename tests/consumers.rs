//! `[[consumer]]`s: the real `mcprom` against the simulator, each consumer
//! a loopback web endpoint or a real command.
//!
//! Timing: waits poll with generous deadlines; "no more reloads" is checked
//! after a positive event that comes later than the one that must not
//! happen (never by a bare sleep alone).

mod common;
#[path = "common/reliability.rs"]
mod reliability;

use std::path::Path;
use std::time::Duration;

use common::*;
use reliability::*;
use serde_json::Value;

/// A `[[consumer]]` that runs `/bin/sh -c SCRIPT`.
fn shell_consumer(name: &str, script: &str, extra: &str) -> String {
    format!(
        "\n[[consumer]]\nname = \"{name}\"\ncommand = [\"/bin/sh\", \"-c\", {}]\n{extra}\n",
        toml_string(script)
    )
}

fn url_consumer(name: &str, url: &str, extra: &str) -> String {
    format!("\n[[consumer]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n")
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Lines in `file` (0 when it does not exist yet).
fn lines(file: &Path) -> usize {
    std::fs::read_to_string(file).map_or(0, |t| t.lines().count())
}

/// A command consumer that appends a line to `file` on each run.
fn counting_consumer(name: &str, file: &Path, extra: &str) -> String {
    shell_consumer(name, &format!("echo run >> '{}'", file.display()), extra)
}

fn consumer_status(rig: &Rig, name: &str) -> Value {
    let out = mcprom_cli(&rig.config, &["status", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    report["consumers"]
        .as_array()
        .expect("a consumers array")
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("consumer {name} not in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_consumer_down_the_other_reloads_and_rotations_go_on() {
    let good = ReloadReceiver::start(Duration::ZERO, 200).await;
    // A port nothing listens on: connection refused.
    let down = format!("http://127.0.0.1:{}", free_port());
    let conf = Conf {
        expiration: "12s",
        refresh_at: 0.5,
        ..Conf::default()
    };
    let consumers = url_consumer("good", &good.url, "delay = \"500ms\"")
        + &url_consumer("down", &down, "delay = \"500ms\"\ntimeout = \"5s\"");
    let sim = Sim::start(&["--clusters", "3", "--min-expiration", "1s"]);
    let rig = Rig::start_with(sim, tempfile::tempdir().unwrap(), &conf, None, |text| {
        text.push_str(&consumers)
    });
    // Three rounds of rotations (every ~6 s per cluster) with reloads of
    // "good" after them, while "down" keeps failing.
    eventually(Duration::from_secs(90), "rotations and reloads", || async {
        (rig.daemon.count("token refreshed") >= 9 && good.count() >= 3).then_some(())
    })
    .await;
    let log = rig.daemon.log();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reload failed"))
        .collect();
    assert!(!failures.is_empty(), "{log}");
    for line in &failures {
        assert!(
            line.contains("consumer \"down\": reload failed"),
            "every failure names its consumer: {line}"
        );
        assert!(line.contains("is not reachable"), "{line}");
    }
    assert!(log.contains("consumer \"good\" reloaded"), "{log}");
    // Metrics and status, per consumer.
    let metrics = rig.metrics().await;
    let series = |name: &str, result: &str| {
        sample(
            &metrics,
            &format!("mcprom_consumer_reloads_total{{consumer=\"{name}\",result=\"{result}\"}}"),
        )
        .unwrap_or_else(|| panic!("no {name}/{result} series in {metrics}"))
    };
    assert!(series("good", "success") >= 3.0);
    assert!(series("down", "failure") >= 1.0);
    assert_eq!(series("down", "success"), 0.0);
    assert_eq!(
        sample(
            &metrics,
            "mcprom_consumer_reload_failing{consumer=\"down\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "mcprom_consumer_reload_failing{consumer=\"good\"}"
        ),
        Some(0.0)
    );
    // [prometheus]'s own reload metrics are untouched (reload = "never").
    assert_eq!(
        sample(
            &metrics,
            "mcprom_prometheus_reloads_total{result=\"success\"}"
        ),
        Some(0.0)
    );
    let status = consumer_status(&rig, "down");
    assert_eq!(status["kind"], "url");
    assert_eq!(status["state"], "backoff", "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("is not reachable")
    );
    assert!(status["clusters"].is_null());
    let status = consumer_status(&rig, "good");
    assert!(status["reloads"].as_u64().unwrap() >= 3, "{status}");
    assert!(status["last_error"].is_null(), "{status}");

    // `check --online` has a section per consumer, and fails for "down".
    let out = mcprom_cli(&rig.config, &["check", "--online"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "consumer \"good\" (url {})\n  ✔ reachable\n  ✔ ready",
            good.url
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "consumer \"down\" (url {down})\n  ✘ reachable: not reachable"
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_consumers_that_time_out_or_fail_are_logged_and_the_others_run() {
    let work = tempfile::tempdir().unwrap();
    let pidfile = work.path().join("sleeper.pid");
    let env_file = work.path().join("env");
    let consumers = shell_consumer(
        "hangs",
        &format!("sleep 300 & echo $! > '{}'; wait", pidfile.display()),
        "timeout = \"2s\"\ndelay = \"0s\"",
    ) + &shell_consumer(
        "fails",
        "echo 'Failed to reload vector.service: Access denied' >&2; exit 4",
        "delay = \"0s\"",
    ) + &shell_consumer(
        "works",
        &format!("env > '{}'", env_file.display()),
        "delay = \"0s\"",
    );
    let sim = Sim::start(&["--clusters", "1"]);
    let rig = Rig::start_with(sim, work, &Conf::default(), None, |text| {
        text.push_str(&consumers)
    });
    rig.first_tokens(&["c1"]).await;
    eventually(Duration::from_secs(60), "both failures logged", || async {
        let log = rig.daemon.log();
        (log.contains("consumer \"hangs\": reload failed")
            && log.contains("consumer \"fails\": reload failed"))
        .then_some(())
    })
    .await;
    let log = rig.daemon.log();
    assert!(
        log.contains(
            "command /bin/sh did not finish within 2s (its timeout); killed its process group"
        ),
        "{log}"
    );
    assert!(
        log.contains(
            "command /bin/sh exited with status 4; stderr: Failed to reload vector.service: Access denied"
        ),
        "{log}"
    );
    // The whole process group of the timed-out command is gone.
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually(Duration::from_secs(20), "the group killed", || async {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        (stat.is_empty() || stat.split(' ').nth(2) == Some("Z")).then_some(())
    })
    .await;
    // The working one ran, with the minimal environment and no token.
    let env = eventually(Duration::from_secs(20), "the env file", || async {
        std::fs::read_to_string(&env_file)
            .ok()
            .filter(|t| t.contains("MCPROM_CONSUMER"))
    })
    .await;
    let token = rig.token("c1");
    assert!(!env.contains(&token), "no token in the environment");
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    for name in &names {
        assert!(
            ["PATH", "LANG", "MCPROM_CONSUMER", "PWD", "SHLVL", "_"].contains(name),
            "unexpected {name} in the command's environment:\n{env}"
        );
    }
    assert!(env.contains("MCPROM_CONSUMER=works\n"), "{env}");
    assert!(!log.contains(&token), "no token in the log");
    let hangs = consumer_status(&rig, "hangs");
    assert_eq!(hangs["kind"], "command");
    assert_eq!(hangs["target"], "/bin/sh");
    assert!(hangs["failures"].as_u64().unwrap() >= 1, "{hangs}");
    assert!(consumer_status(&rig, "works")["reloads"].as_u64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_consumer_coalesces_a_batch_of_rotations_into_one_reload() {
    let work = tempfile::tempdir().unwrap();
    let runs = work.path().join("runs");
    let a = ReloadReceiver::start(Duration::ZERO, 200).await;
    let b = ReloadReceiver::start(Duration::from_secs(1), 200).await;
    let consumers = url_consumer("a", &a.url, "delay = \"3s\"")
        + &url_consumer("b", &b.url, "delay = \"4s\"")
        + &counting_consumer("c", &runs, "delay = \"3s\"");
    let sim = Sim::start(&["--clusters", "10"]);
    let rig = Rig::start_with(sim, work, &Conf::default(), None, |text| {
        text.push_str(&consumers)
    });
    // Ten first tokens, one batch: one reload each.
    eventually(
        Duration::from_secs(60),
        "ten tokens, a reload each",
        || async {
            (rig.daemon.count("token refreshed") == 10
                && a.count() >= 1
                && b.count() >= 1
                && lines(&runs) >= 1)
                .then_some(())
        },
    )
    .await;
    // `mcprom rotate` (all ten at once): the second batch.
    let out = tokio::task::spawn_blocking({
        let config = rig.config.clone();
        move || mcprom_cli(&config, &["rotate"])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    eventually(Duration::from_secs(60), "a second reload each", || async {
        (a.count() >= 2 && b.count() >= 2 && lines(&runs) >= 2).then_some(())
    })
    .await;
    // Nothing else is due for most of an hour: wait past every delay and
    // check nothing more came.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(rig.daemon.count("token refreshed"), 20);
    assert_eq!(a.count(), 2, "{}", rig.daemon.log());
    assert_eq!(b.count(), 2, "{}", rig.daemon.log());
    assert_eq!(lines(&runs), 2, "{}", rig.daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_limited_to_clusters_hears_only_of_their_rotations() {
    let work = tempfile::tempdir().unwrap();
    let only_c2 = work.path().join("only-c2");
    let every = work.path().join("every");
    let consumers = counting_consumer("only-c2", &only_c2, "delay = \"1s\"\nclusters = [\"c2\"]")
        + &counting_consumer("every", &every, "delay = \"1s\"");
    let sim = Sim::start(&["--clusters", "2"]);
    let rig = Rig::start_with(sim, work, &Conf::default(), None, |text| {
        text.push_str(&consumers)
    });
    eventually(Duration::from_secs(60), "first reloads", || async {
        (lines(&only_c2) == 1 && lines(&every) == 1).then_some(())
    })
    .await;
    assert_eq!(
        consumer_status(&rig, "only-c2")["clusters"],
        serde_json::json!(["c2"])
    );
    // c1 rotates: "every" runs again; "only-c2" (same delay) does not.
    assert!(rig.rotate("c1").await.status.success());
    eventually(Duration::from_secs(30), "every's second run", || async {
        (lines(&every) == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(lines(&only_c2), 1, "{}", rig.daemon.log());
    // c2 rotates: both run.
    assert!(rig.rotate("c2").await.status.success());
    eventually(Duration::from_secs(30), "both run for c2", || async {
        (lines(&only_c2) == 2 && lines(&every) == 3).then_some(())
    })
    .await;
}

#[test]
fn check_reports_each_bad_consumer_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mcprom.toml");
    let text = r#"[prometheus]
reload = "never"

[[cluster]]
name = "prod"
api_server = "https://127.0.0.1:6443"
service_account = "kube-system/prometheus"
[cluster.credentials]
self = true

[[consumer]]
name = "prometheus"
url = "http://127.0.0.1:9091"

[[consumer]]
name = "vm"
url = "http://127.0.0.1:8429"
command = ["/bin/true"]

[[consumer]]
name = "nothing"

[[consumer]]
name = "vm"
command = []

[[consumer]]
name = "limited"
command = ["/usr/bin/kill", "-HUP", "1"]
clusters = ["prod", "prdo"]
username = "x"

[[consumer]]
name = "typo"
url = "http://127.0.0.1:8429"
delya = "1s"

[[consumer]]
name = "relative"
command = ["bin/reload"]
timeout = "soon"
"#;
    std::fs::write(&path, text).unwrap();
    let out = run_mcprom(&["check", "--config", path.to_str().unwrap()], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let p = path.display();
    for expected in [
        format!(
            "{p}:12:8: consumer \"prometheus\": key \"name\": \"prometheus\" is the name of [prometheus]"
        ),
        format!("{p}:18:11: consumer \"vm\": keys \"url\" and \"command\": both are set"),
        format!("{p}:20:1: consumer \"nothing\": missing key \"url\" or \"command\""),
        format!(
            "{p}:24:8: consumer \"vm\": key \"name\": duplicate consumer name \"vm\", first used on line 16"
        ),
        format!("{p}:25:11: consumer \"vm\": key \"command\": the list is empty"),
        format!(
            "{p}:30:21: consumer \"limited\": key \"clusters\": no [[cluster]] is named \"prdo\" (did you mean \"prod\"?)"
        ),
        format!(
            "{p}:31:12: consumer \"limited\": key \"username\": it only applies to a url consumer"
        ),
        format!("{p}:36:1: consumer \"typo\": unknown key \"delya\" (did you mean \"delay\"?)"),
        format!(
            "{p}:40:12: consumer \"relative\": key \"command\": \"bin/reload\" is a relative path"
        ),
        format!("{p}:41:11: consumer \"relative\": key \"timeout\""),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn check_names_a_command_consumer_whose_program_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mcprom.toml");
    std::fs::write(
        &path,
        "[prometheus]\nreload = \"never\"\n\n[[consumer]]\nname = \"gone\"\ncommand = [\"/nonexistent/reload-agent\"]\n",
    )
    .unwrap();
    let out = run_mcprom(&["check", "--config", path.to_str().unwrap()], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(78), "{stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains(
            "consumer \"gone\": key \"command\": cannot run /nonexistent/reload-agent: No such file or directory"
        ),
        "{stdout}{stderr}"
    );
}
