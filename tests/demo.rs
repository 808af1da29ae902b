//! `mcprom demo`, the README's "run it" command, end to end: simulated
//! clusters, the real daemon, and the real Prometheus (CI installs it).

use std::process::Command;

/// The demo's tests need the real Prometheus (CI installs it).
fn require_prometheus() {
    let prometheus = Command::new("sh")
        .args(["-c", "command -v prometheus"])
        .output()
        .unwrap();
    assert!(
        prometheus.status.success(),
        "prometheus is required (Debian: apt-get install prometheus)"
    );
}

/// The summary's `up` lines: 2 clusters × 2 nodes, every one scraped.
fn assert_every_node_up(stdout: &str) {
    let up: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim().starts_with("up{"))
        .collect();
    assert_eq!(up.len(), 4, "2 clusters × 2 nodes: {stdout}");
    assert!(up.iter().all(|l| l.trim().ends_with("= 1")), "{stdout}");
}

#[test]
fn the_demo_rotates_reloads_and_prometheus_scrapes_every_node() {
    require_prometheus();
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
    assert_every_node_up(&stdout);
    assert!(stdout.contains("0 failed"), "{stdout}");
}

/// Ctrl-C in a terminal sends SIGINT to the whole foreground process group.
/// The demo's summary still asks its Prometheus for `up` (Prometheus runs in
/// its own group), and then stops it.
#[test]
fn ctrl_c_keeps_the_summary_and_then_stops_prometheus() {
    use std::io::{BufRead as _, BufReader, Read as _};
    use std::os::unix::process::CommandExt as _;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    require_prometheus();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcprom"))
        .arg("demo")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Like a shell's job: its own group, which the "terminal" signals.
        .process_group(0)
        .spawn()
        .unwrap();
    let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
    let mut stdout = child.stdout.take().unwrap();
    let stdout_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    // Wait (bounded) until both clusters' tokens were refreshed twice and
    // Prometheus was reloaded: by then it has scraped every node.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (lines, seen) = std::sync::mpsc::channel();
    let stderr_reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = lines.send(line);
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut refreshed, mut reloaded) = (0, false);
    while refreshed < 4 || !reloaded {
        let left = deadline.saturating_duration_since(Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) => {
                refreshed += usize::from(line.contains("token refreshed"));
                reloaded |= line.contains("prometheus reloaded");
            }
            Err(_) => break,
        }
    }
    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGINT);
    let status = child.wait().unwrap();
    let stdout = stdout_reader.join().unwrap();
    let stderr = stderr_reader.join().unwrap();
    assert!(
        refreshed >= 4 && reloaded,
        "the demo did not get going in 120 s:\n{stdout}\n{stderr}"
    );
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert!(!stdout.contains("cannot query"), "{stdout}");
    assert_every_node_up(&stdout);
    // And its Prometheus is gone.
    let url = stdout
        .split("real Prometheus at ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no Prometheus URL: {stdout}"));
    let listen = format!("--web.listen-address={}", url.trim_start_matches("http://"));
    let still_running = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|cmdline| {
            cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == listen.as_bytes())
        });
    assert!(!still_running, "Prometheus {listen} outlived the demo");
}
