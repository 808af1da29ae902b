//! No config can hang or crash the daemon, and no schedule can let a token
//! lapse: one black-box test per way a probe of the release build broke
//! that promise (the real binary, real files, the simulator over TLS).
//!
//! Every `mcprom` run here has an address-space limit (`prlimit --as`) and
//! a deadline: a decoder that loops or a reader that never ends fails the
//! test instead of eating the machine.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Address space allowed to each `mcprom` here: far above what it needs
/// (tens of MB), far below what a runaway loop reaches.
const MEMORY_LIMIT: &str = "--as=2147483648";
/// How long a command may take before it counts as hung. Generous: a debug
/// build on a loaded 2-core machine; the looping decoder never ended.
const DEADLINE: Duration = Duration::from_secs(90);

/// `mcprom ARGS` under the memory limit; its exit code and stderr. Panics
/// if it does not end before [`DEADLINE`].
fn mcprom(args: &[&str]) -> (i32, String) {
    let prlimit = required_tool("prlimit", "apt-get install util-linux");
    let mut child = Command::new(prlimit)
        .arg(MEMORY_LIMIT)
        .arg("--")
        .arg(MCPROM)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("MCPROM_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mcprom");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mcprom {args:?} did not finish within {DEADLINE:?} (hung)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.join().unwrap();
    let code = status.code().unwrap_or_else(|| {
        panic!("mcprom {args:?} was killed by a signal ({status}); stderr:\n{stderr}")
    });
    (code, stderr)
}

/// Kills the child when the test ends, also when it panics.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A cluster that validates offline (its files need not exist for these
/// file-level problems).
fn cluster(name: &str, extra: &str) -> String {
    format!(
        "[[cluster]]\nname = \"{name}\"\napi_server = \"https://127.0.0.1:6443\"\n\
         service_account = \"kube-system/prometheus\"\n{extra}\
         [cluster.credentials]\ntoken_file = \"/etc/hostname\"\n"
    )
}

#[test]
fn a_doubled_bracket_is_reported_with_its_line_not_looped_on() {
    let dir = tempfile::tempdir().unwrap();
    for section in ["defaults", "metrics", "prometheus", "limits", "control"] {
        let config = write(dir.path(), "c.toml", &format!("[[{section}]]\n"));
        let (code, stderr) = mcprom(&["check", "--config", config.to_str().unwrap()]);
        assert_eq!(code, 78, "[[{section}]]: {stderr}");
        assert!(
            stderr.contains(&format!(
                "c.toml:1:1: key \"{section}\": expected one table"
            )),
            "[[{section}]]: {stderr}"
        );
        assert!(stderr.contains(&format!("write [{section}]")), "{stderr}");
    }
    // Inside a cluster, the other clusters are still checked.
    let text = format!(
        "{}{}",
        cluster("a", "").replace("[cluster.credentials]", "[[cluster.credentials]]"),
        cluster("b", "servce_account = \"x/y\"\n")
    );
    let config = write(dir.path(), "c.toml", &text);
    let (code, stderr) = mcprom(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("cluster \"a\": key \"credentials\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("cluster \"b\": unknown key \"servce_account\""),
        "{stderr}"
    );
    // `run` refuses to start on it (78), instead of hanging.
    let config = write(dir.path(), "c.toml", "[[defaults]]\n");
    let (code, stderr) = mcprom(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 78, "{stderr}");
}

#[test]
fn thousands_of_mistakes_are_all_reported_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..4000)
        .map(|i| {
            cluster(&format!("c{i}"), "")
                .replace("service_account =", "servce_account =")
                .replace("name = ", "refresh_att = 0.5\nname = ")
        })
        .collect();
    let config = write(dir.path(), "big.toml", &text);
    let (code, stderr) = mcprom(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 78);
    assert_eq!(
        stderr.matches("unknown key \"servce_account\"").count(),
        4000
    );
    assert_eq!(stderr.matches("unknown key \"refresh_att\"").count(), 4000);
    // The last cluster's problem names its own line.
    let line = text[..text.rfind("servce_account").unwrap()]
        .matches('\n')
        .count()
        + 1;
    assert!(
        stderr.contains(&format!("big.toml:{line}:1: cluster \"c3999\"")),
        "{}",
        stderr.lines().rev().take(3).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn numbers_out_of_range_are_refused_by_check_and_run_alike() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[limits]\nconcurrent_requests = 2305843009213693952\n",
            "key \"concurrent_requests\": must be at most 1024",
        ),
        (
            "[defaults]\nrefresh_at = 1e-9\n",
            "key \"refresh_at\": refresh_at × expiration",
        ),
        (
            "[prometheus]\ndelay = \"99999999d\"\n",
            "key \"delay\": \"99999999d\" is too long",
        ),
        (
            "[defaults]\nexpiration = \"200000d\"\n",
            "key \"expiration\": \"200000d\" is too long",
        ),
    ];
    for (head, expect) in cases {
        let text = format!("{head}{}", cluster("a", ""));
        let config = write(dir.path(), "c.toml", &text);
        for command in ["check", "run"] {
            let (code, stderr) = mcprom(&[command, "--config", config.to_str().unwrap()]);
            assert_eq!(code, 78, "{command} {head}: {stderr}");
            assert!(stderr.contains(expect), "{command} {head}: {stderr}");
        }
    }
}

#[test]
fn special_files_named_by_the_config_neither_hang_nor_balloon() {
    let sim = Sim::start(&["--clusters", "3"]);
    let work = tempfile::tempdir().unwrap();
    let fifo = work.path().join("ca.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let conf = Conf {
        cluster_extra: vec![("c1".into(), format!("ca_file = {:?}", fifo))],
        credentials: vec![("c2".into(), "kubeconfig = \"/dev/zero\"".into())],
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let (code, stderr) = mcprom(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("a FIFO (named pipe), not a regular file"),
        "{stderr}"
    );
    assert!(
        stderr.contains("it is a device, not a regular file"),
        "{stderr}"
    );
    // `run` serves c3 and holds c1 and c2 in error, under the memory limit.
    let prlimit = required_tool("prlimit", "apt-get install util-linux");
    let mut guard = KillOnDrop(
        Command::new(prlimit)
            .arg(MEMORY_LIMIT)
            .arg("--")
            .arg(MCPROM)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let child = &mut guard.0;
    let token = work.path().join("tokens/c3.token");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !token.exists() {
        assert!(child.try_wait().unwrap().is_none(), "mcprom exited");
        assert!(Instant::now() < deadline, "no token for c3");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = status_json(&config);
    for name in ["c1", "c2"] {
        let c = status["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        assert_eq!(c["state"], "error", "{c}");
        assert!(
            c["last_error"]
                .as_str()
                .unwrap()
                .contains("not a regular file"),
            "{c}"
        );
    }
    assert!(child.try_wait().unwrap().is_none(), "mcprom exited");
}

/// `mcprom status --json` against the daemon for `config`.
fn status_json(config: &Path) -> serde_json::Value {
    let (stdout, code) = status_output(config, &["--json"]);
    assert!(code == 0 || code == 1, "status exit {code}");
    serde_json::from_str(&stdout).unwrap()
}

/// `mcprom status ARGS`: stdout and exit code, with a deadline.
fn status_output(config: &Path, args: &[&str]) -> (String, i32) {
    let mut child = Command::new(MCPROM)
        .arg("status")
        .args(args)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "`mcprom status` hung");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    (stdout, status.code().unwrap_or(-1))
}

#[test]
fn a_token_file_ending_with_a_newline_is_a_working_credential() {
    // `kubectl create token … > issuer.token` ends the file with a newline.
    let sim = Sim::start(&["--clusters", "1"]);
    let work = tempfile::tempdir().unwrap();
    let token = std::fs::read_to_string(sim.issuer_token_file("c1")).unwrap();
    let issuer = write(work.path(), "issuer.token", &format!("{}\n", token.trim()));
    let conf = Conf {
        cluster_extra: vec![(
            "c1".into(),
            format!(
                "api_server = {:?}\nca_file = {:?}",
                sim.api_server("c1"),
                sim.ca_file("c1")
            ),
        )],
        credentials: vec![("c1".into(), format!("token_file = {issuer:?}"))],
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let (code, stderr) = mcprom(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let daemon = Daemon::start(&config, "mcprom=info");
    let file = work.path().join("tokens/c1.token");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !file.exists() {
        assert!(
            Instant::now() < deadline,
            "no token; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !daemon.log().contains("invalid bearer token"),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_token_directory_behind_a_symlink_is_one_directory() {
    let sim = Sim::start(&["--clusters", "2"]);
    let work = tempfile::tempdir().unwrap();
    let real = work.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = work.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let conf = Conf {
        cluster_extra: vec![
            (
                "c1".into(),
                format!("token_file = {:?}", real.join("c1.token")),
            ),
            (
                "c2".into(),
                format!("token_file = {:?}", link.join("c2.token")),
            ),
        ],
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let daemon = Daemon::start(&config, "mcprom=info");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(real.join("c1.token").exists() && real.join("c2.token").exists()) {
        assert!(
            !daemon.log().contains("locked by"),
            "refused its own lock: {}",
            daemon.log()
        );
        assert!(
            Instant::now() < deadline,
            "tokens missing; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(daemon);
    // Two clusters writing one file through two spellings of its directory.
    let conf = Conf {
        cluster_extra: vec![
            (
                "c1".into(),
                format!("token_file = {:?}", real.join("x.token")),
            ),
            (
                "c2".into(),
                format!("token_file = {:?}", link.join("x.token")),
            ),
        ],
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let (code, stderr) = mcprom(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("is also written by cluster \"c1\""),
        "{stderr}"
    );
}

/// Reads sd_notify datagrams on a background thread.
struct Notifications {
    seen: Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
}

impl Notifications {
    fn bind(path: &Path) -> Notifications {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !st.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    s.lock().unwrap().push((Instant::now(), msg));
                }
            }
        });
        Notifications { seen, stop }
    }

    fn watchdogs_since(&self, since: Instant) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, m)| *at >= since && m.contains("WATCHDOG=1"))
            .count()
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn bad_live_edits_leave_the_daemon_rotating_answering_and_feeding_the_watchdog() {
    let sim = Sim::start(&["--clusters", "1", "--min-expiration", "1s"]);
    let work = tempfile::tempdir().unwrap();
    let conf = Conf {
        expiration: "12s",
        refresh_at: 0.5,
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let good = std::fs::read_to_string(&config).unwrap();
    let good_copy = write(work.path(), "good-copy.toml.bak", &good);
    let notify = Notifications::bind(&work.path().join("notify.sock"));
    let mut guard = KillOnDrop(
        Command::new(MCPROM)
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", work.path().join("notify.sock"))
            .env("WATCHDOG_USEC", "2000000")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut guard.0;
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    {
        let mut stderr = child.stderr.take().unwrap();
        let log = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let token = work.path().join("tokens/c1.token");
    let wait_for = |what: &str, timeout: Duration, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + timeout;
        while !f() {
            assert!(
                Instant::now() < deadline,
                "{what}; log:\n{}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("first token", Duration::from_secs(60), &|| token.exists());

    let typos: String = (0..4000)
        .map(|i| cluster(&format!("t{i}"), "servce_account = \"a/b\"\n"))
        .collect();
    let edits = [
        good.replacen("[defaults]", "[[defaults]]", 1),
        format!("{good}\n{typos}"),
        good.replace(
            "[control]",
            "[limits]\nconcurrent_requests = 2305843009213693952\n\n[control]",
        ),
    ];
    for (n, edit) in edits.iter().enumerate() {
        let failures = log
            .lock()
            .unwrap()
            .matches("configuration reload failed")
            .count();
        let before = std::fs::read_to_string(&token).unwrap();
        let edited_at = Instant::now();
        std::fs::write(&config, edit).unwrap();
        wait_for(
            &format!("edit {n}: the error is reported"),
            Duration::from_secs(60),
            &|| {
                log.lock()
                    .unwrap()
                    .matches("configuration reload failed")
                    .count()
                    > failures
            },
        );
        // It keeps answering, rotating, and pinging the watchdog. (`status`
        // finds the control socket through a config: the edited one is
        // invalid, so it is given a copy of the good one.)
        let (table, code) = status_output(&good_copy, &[]);
        assert!(code == 0 || code == 1, "status exit {code}");
        assert!(table.contains("c1"), "{table}");
        wait_for(
            &format!("edit {n}: a new token after the edit"),
            Duration::from_secs(60),
            &|| std::fs::read_to_string(&token).is_ok_and(|t| t != before),
        );
        assert!(
            notify.watchdogs_since(edited_at) >= 2,
            "edit {n}: no watchdog pings since the edit"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "edit {n}: mcprom exited"
        );
    }
    std::fs::write(&config, &good).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_config_directory_written_to_all_the_time_is_still_reloaded() {
    let sim = Sim::start(&["--clusters", "2"]);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(&sim, work.path(), &Conf::default(), Some(&["c1"]));
    let daemon = Daemon::start(&config, "mcprom=info");
    let first = work.path().join("tokens/c1.token");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !first.exists() {
        assert!(
            Instant::now() < deadline,
            "no first token; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A generator that rewrites the config every 100 ms (the same text
    // each time, with c2 added): the directory is never quiet for the
    // 500 ms debounce.
    let both = {
        let scratch = tempfile::tempdir().unwrap();
        std::fs::read_to_string(write_config(&sim, scratch.path(), &Conf::default(), None))
            .unwrap()
            .replace(
                &scratch.path().display().to_string(),
                &work.path().display().to_string(),
            )
    };
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (stop, path) = (stop.clone(), config.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut f = std::fs::File::create(&path).unwrap();
                f.write_all(both.as_bytes()).unwrap();
                drop(f);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let second = work.path().join("tokens/c2.token");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !second.exists() {
        assert!(
            Instant::now() < deadline,
            "the added cluster never got a token; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    busy.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_retry_after_never_outlives_the_token() {
    init_crypto();
    let sim = Sim::start(&["--clusters", "1", "--min-expiration", "1s"]);
    let work = tempfile::tempdir().unwrap();
    let conf = Conf {
        expiration: "40s",
        refresh_at: 0.5,
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let daemon = Daemon::start(&config, "mcprom=info");
    let file = work.path().join("tokens/c1.token");
    let first = eventually(Duration::from_secs(60), "first token", || async {
        read_token(&file)
    })
    .await;
    let first_exp = claims(&first)["exp"].as_u64().unwrap();
    // Every TokenRequest from now on: 429, come back in 5 minutes.
    sim.control(
        reqwest::Method::POST,
        "/clusters/c1/faults",
        Some(serde_json::json!({"count": 1000, "kind": "status", "code": 429, "retry_after_seconds": 300})),
    )
    .await;
    eventually(Duration::from_secs(60), "a throttled refresh", || async {
        daemon.log().contains("throttled").then_some(())
    })
    .await;
    // The next attempt is planned before the token expires, not 300 s out.
    let status = status_json(&config);
    let c1 = &status["clusters"][0];
    let next: jiff::Timestamp = c1["next_refresh"].as_str().unwrap().parse().unwrap();
    assert!(
        (next.as_second() as u64) < first_exp,
        "next attempt {next} is after the token's exp {first_exp}: {c1}"
    );
    // Once the server relents, a new token arrives before the old one expires.
    sim.control(reqwest::Method::DELETE, "/clusters/c1/faults", None)
        .await;
    let second = eventually(Duration::from_secs(60), "a new token", || async {
        read_token(&file).filter(|t| *t != first)
    })
    .await;
    assert!(claims(&second)["iat"].as_u64().unwrap() < first_exp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_answer_that_cannot_be_read_is_not_called_a_rejected_config() {
    init_crypto();
    // A Prometheus that is ready, then answers the reload with a 500 whose
    // body never comes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(50) {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                if request.starts_with("GET") {
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                    );
                } else {
                    let _ = stream.write_all(
                        b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\nContent-Length: 100\r\n\r\nerr",
                    );
                    std::thread::sleep(Duration::from_secs(30));
                }
            });
        }
    });
    let sim = Sim::start(&["--clusters", "1"]);
    let work = tempfile::tempdir().unwrap();
    let conf = Conf {
        reload_url: Some(url),
        delay: "0s",
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("timeout = \"10s\"", "timeout = \"2s\"");
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config, "mcprom=info");
    eventually(Duration::from_secs(60), "a failed reload", || async {
        daemon.log().contains("could not be read").then_some(())
    })
    .await;
    let log = daemon.log();
    assert!(!log.contains("rejected its own configuration"), "{log}");
}
