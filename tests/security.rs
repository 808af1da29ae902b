//! Hostile peers and local users (issue 22, docs/security.md): the real
//! binary against small hostile servers on 127.0.0.1 and against other
//! local users, played by unprivileged uids through `setpriv`.

mod common;
#[path = "common/reliability.rs"]
mod reliability;

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;
use reliability::*;

/// The uid and gid that play "another local user".
const OTHER_USER: u32 = 65534;

/// `mcprom run` under `prlimit --nofile=N:N`, stderr collected.
fn start_daemon_limited(config: &Path, nofile: u32, rust_log: &str) -> Daemon {
    let prlimit = required_tool("prlimit", "apt-get install util-linux");
    let mut child = Command::new(prlimit)
        .arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .arg(MCPROM)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", rust_log)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mcprom under prlimit");
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    Daemon { child, log }
}

/// A Python program run as [`OTHER_USER`] (`setpriv`, no groups).
fn as_other_user(script: &str, args: &[String]) -> std::process::Child {
    let setpriv = required_tool("setpriv", "apt-get install util-linux");
    let python = Path::new("/usr/bin/python3");
    assert!(
        python.is_file(),
        "/usr/bin/python3 is missing; install it with: apt-get install python3"
    );
    Command::new(setpriv)
        .arg(format!("--reuid={OTHER_USER}"))
        .arg(format!("--regid={OTHER_USER}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run python3 as another user")
}

/// Peak resident set size of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}

/// Open descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `cluster`'s entry of `status --json` through the control socket.
async fn status_of(socket: &Path, cluster: &str) -> Option<Value> {
    let answer = control_call(socket, &json!({"command": "status"}))
        .await
        .ok()?;
    answer["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == cluster)
        .cloned()
}

/// Wait until the token in `path` differs from `old`; the new one.
async fn next_token(path: &Path, old: &str, within: Duration, what: &str) -> String {
    eventually(within, what, || async {
        read_token(path).filter(|t| !t.is_empty() && t != old)
    })
    .await
}

/// Holds `count` TCP connections to `addr` open, idle, until its stdin
/// closes; prints how many it opened.
const HOLD_CONNECTIONS: &str = r#"
import socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
deadline = time.monotonic() + 60
for _ in range(count):
    if time.monotonic() > deadline:
        break
    try:
        s = socket.create_connection((host, port), timeout=2)
        held.append(s)
    except OSError:
        pass
print(len(held), flush=True)
sys.stdin.read()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_another_user_do_not_stop_rotation() {
    let sim = Sim::start(&["--min-expiration", "1s"]);
    let work = tempfile::tempdir().unwrap();
    let conf = Conf {
        expiration: "12s",
        refresh_at: 0.5,
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let port = free_port();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    std::fs::write(&config, text).unwrap();
    // 256 descriptors, as in the report: enough for the daemon, not for
    // the daemon plus every connection a local user cares to open.
    let mut daemon = start_daemon_limited(&config, 256, "info");
    let token_path = work.path().join("tokens/c1.token");
    let socket = work.path().join("control.sock");
    let first = next_token(&token_path, "", Duration::from_secs(60), "a first token").await;

    let mut attacker = as_other_user(
        HOLD_CONNECTIONS,
        &["127.0.0.1".into(), port.to_string(), "1000".into()],
    );
    let mut opened = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(attacker.stdout.as_mut().unwrap()),
        &mut opened,
    )
    .unwrap();
    let opened: usize = opened.trim().parse().expect("attacker's count");
    let held_fds = open_fds(daemon.child.id());
    eprintln!("attacker opened {opened} connections; mcprom holds {held_fds} descriptors");

    // While they are held: two rotations, and status answers.
    let second = next_token(
        &token_path,
        &first,
        Duration::from_secs(60),
        "a rotation while 1,000 connections are held",
    )
    .await;
    next_token(
        &token_path,
        &second,
        Duration::from_secs(60),
        "a second rotation while 1,000 connections are held",
    )
    .await;
    let c1 = status_of(&socket, "c1").await.expect("status answers");
    assert!(
        (c1["state"] == "fresh" || c1["state"] == "refreshing") && c1["last_error"].is_null(),
        "{c1}"
    );
    assert!(
        held_fds < 200,
        "mcprom holds {held_fds} descriptors for idle connections"
    );
    let log = daemon.log();
    assert!(
        !log.contains("Too many open files"),
        "descriptors ran out:\n{log}"
    );

    // Released: /healthz answers.
    drop(attacker.stdin.take());
    attacker.wait().unwrap();
    let released = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "/healthz after the release",
        || {
            let client = client.clone();
            async move {
                let r = client
                    .get(format!("http://127.0.0.1:{port}/healthz"))
                    .send()
                    .await
                    .ok()?;
                (r.status() == 200).then_some(())
            }
        },
    )
    .await;
    eprintln!(
        "/healthz answered {:?} after the release",
        released.elapsed()
    );
    let (status, _) = daemon.terminate();
    assert!(status.success());
}

/// A hostile HTTP server: every answer has the status of its kind and a
/// body of up to `limit` bytes (close-delimited, so it looks endless).
struct Flood {
    addr: SocketAddr,
    sent: Arc<AtomicU64>,
}

impl Flood {
    async fn start(limit: u64) -> Flood {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let total = sent.clone();
        tokio::spawn(async move {
            // Bounded: mcprom retries with backoff; a test run makes a few dozen.
            for _ in 0..200 {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let total = total.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let prometheus = head.windows(3).any(|w| w == b"/-/");
                    let (status, start) = if prometheus {
                        ("500 Internal Server Error", &b"error loading config: "[..])
                    } else {
                        (
                            "201 Created",
                            &b"{\"kind\":\"TokenRequest\",\"status\":{\"token\":\""[..],
                        )
                    };
                    let header = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
                    );
                    if stream.write_all(header.as_bytes()).await.is_err()
                        || stream.write_all(start).await.is_err()
                    {
                        return;
                    }
                    let chunk = vec![b'A'; 1 << 20];
                    let mut written = 0u64;
                    while written < limit {
                        if stream.write_all(&chunk).await.is_err() {
                            break;
                        }
                        written += chunk.len() as u64;
                        total.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        Flood { addr, sent }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_gib_answer_is_cut_at_the_cap_and_others_keep_rotating() {
    const GIB: u64 = 1 << 30;
    let flood = Flood::start(2 * GIB).await;
    let sim = Sim::start(&["--min-expiration", "1s"]);
    let work = tempfile::tempdir().unwrap();
    let conf = Conf {
        expiration: "12s",
        refresh_at: 0.5,
        reload_url: Some(format!("http://{}", flood.addr)),
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let credential = work.path().join("issuer.token");
    std::fs::write(&credential, "not-a-secret-credential").unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[[cluster]]\nname = \"flood\"\napi_server = \"http://{}\"\nservice_account = \"kube-system/prometheus-test\"\n[cluster.credentials]\ntoken_file = \"{}\"\n",
        flood.addr,
        credential.display()
    ));
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&config, "info");
    let pid = daemon.child.id();
    let socket = work.path().join("control.sock");
    let token_path = work.path().join("tokens/c1.token");

    let first = next_token(&token_path, "", Duration::from_secs(60), "c1's first token").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let flood_status = loop {
        let s = status_of(&socket, "flood").await;
        // Retrying: "backoff", or "expired" as it never had a token.
        let retrying = |s: &Value| {
            (s["state"] == "backoff" || s["state"] == "expired")
                && s["last_error"].is_string()
                && s["next_refresh"].is_string()
        };
        if let Some(s) = s.clone().filter(retrying) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "flood not retrying: {s:?}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let error = flood_status["last_error"].as_str().unwrap();
    assert!(error.contains("larger than"), "{error}");
    assert!(error.len() < 2000, "{} bytes of last_error", error.len());
    // The other cluster keeps rotating, and the reloads (answered with an
    // endless 500) keep failing plainly.
    let second = next_token(&token_path, &first, Duration::from_secs(60), "c1 rotates").await;
    next_token(
        &token_path,
        &second,
        Duration::from_secs(60),
        "c1 rotates again",
    )
    .await;
    eventually(Duration::from_secs(60), "a failed reload", || async {
        daemon
            .log()
            .contains("Prometheus rejected its own configuration")
            .then_some(())
    })
    .await;
    let peak = peak_rss(pid);
    let sent = flood.sent.load(Ordering::Relaxed);
    eprintln!(
        "peak RSS {} MiB; the hostile server got {} MiB out before mcprom hung up",
        peak >> 20,
        sent >> 20
    );
    assert!(peak < 256 << 20, "peak RSS {} MiB", peak >> 20);
    let log = daemon.log();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 4000, "a log line of {longest} bytes");
    let (status, _) = daemon.terminate();
    assert!(status.success());
}

/// A kubeconfig for `sim`'s cluster c1 whose user is an exec plugin:
/// `/bin/sh -c SCRIPT plugin ARGS…` with `env`.
fn exec_kubeconfig(
    sim: &Sim,
    dir: &Path,
    name: &str,
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::path::PathBuf {
    let mut all = vec!["-c", script, "plugin"];
    all.extend_from_slice(args);
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {
            "server": sim.api_server("c1"),
            "certificate-authority": sim.ca_file("c1"),
        }}],
        "users": [{"name": "u", "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "/bin/sh",
            "args": all,
            "env": env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
            "interactiveMode": "Never",
        }}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    });
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, kubeconfig.to_string()).unwrap();
    path
}

/// A hostile API server (and Prometheus): every answer is an error whose
/// message echoes the request it got, headers and all, with a terminal
/// escape sequence in front.
async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..500 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&head).into_owned();
                let prometheus = request.contains("/-/");
                let message = format!("\u{1b}[2J\u{1b}[31mfake OK\r{request}");
                let (status, body) = if prometheus {
                    ("500 Internal Server Error", message)
                } else {
                    (
                        "401 Unauthorized",
                        json!({"kind": "Status", "status": "Failure", "message": message, "code": 401})
                            .to_string(),
                    )
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_failures_echoed_requests_and_url_passwords_leak_no_secret() {
    use base64::Engine as _;
    const ARG_SECRET: &str = "ARG-SECRET-4f1c9a";
    const ENV_SECRET: &str = "ENV-SECRET-77be02";
    const CREDENTIAL: &str = "opaque-credential-5d2e8c";
    const PROM_PASSWORD: &str = "PROM-PASSWORD-a91f3";
    // A token in the plugin's output: its signature must never be shown.
    const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.U0lHTkFUVVJFLXNlY3JldC1wYXJ0";
    const SIGNATURE: &str = "U0lHTkFUVVJFLXNlY3JldC1wYXJ0";
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("promuser:{PROM_PASSWORD}"));

    let sim = Sim::start(&["--min-expiration", "1s"]);
    let work = tempfile::tempdir().unwrap();
    let echo = echo_server().await;
    let conf = Conf {
        expiration: "12s",
        refresh_at: 0.5,
        reload_url: Some(format!("http://promuser:{PROM_PASSWORD}@{echo}")),
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let failing = exec_kubeconfig(
        &sim,
        work.path(),
        "failing",
        &format!(
            r#"echo "{{\"status\":{{\"token\":\"{JWT}\"}}}} $2 $AWS_SECRET_ACCESS_KEY"; echo "plugin: bad secret $2 / $AWS_SECRET_ACCESS_KEY, token {JWT}" >&2; exit 1"#
        ),
        &["--client-secret", ARG_SECRET],
        &[("AWS_SECRET_ACCESS_KEY", ENV_SECRET)],
    );
    let garbage = exec_kubeconfig(
        &sim,
        work.path(),
        "garbage",
        &format!("printf 'status:\\n  token: {JWT}\\n  ]] $2 $AWS_SECRET_ACCESS_KEY\\n'"),
        &["--client-secret", ARG_SECRET],
        &[("AWS_SECRET_ACCESS_KEY", ENV_SECRET)],
    );
    let credential = work.path().join("issuer.token");
    std::fs::write(&credential, CREDENTIAL).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    for (name, credentials) in [
        ("failing", format!("kubeconfig = \"{}\"", failing.display())),
        ("garbage", format!("kubeconfig = \"{}\"", garbage.display())),
        ("echo", format!("token_file = \"{}\"", credential.display())),
    ] {
        let server = if name == "echo" {
            format!("api_server = \"http://{echo}\"\n")
        } else {
            String::new()
        };
        text.push_str(&format!(
            "[[cluster]]\nname = \"{name}\"\n{server}service_account = \"kube-system/prometheus-test\"\n[cluster.credentials]\n{credentials}\n\n"
        ));
    }
    let port = free_port();
    let text = text.replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&config, "trace");
    let socket = work.path().join("control.sock");

    for name in ["failing", "garbage", "echo"] {
        eventually(Duration::from_secs(60), name, || async {
            status_of(&socket, name)
                .await
                .filter(|s| s["last_error"].is_string())
        })
        .await;
    }
    eventually(Duration::from_secs(60), "a failed reload", || async {
        daemon
            .log()
            .contains("prometheus reload failed")
            .then_some(())
    })
    .await;

    let table = mcprom_cli(&config, &["status"]);
    let json_status = mcprom_cli(&config, &["status", "--json"]);
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (status, _) = daemon.terminate();
    assert!(status.success());
    let table_text = String::from_utf8_lossy(&table.stdout).into_owned();
    let outputs = [
        ("log", daemon.log()),
        ("status", table_text.clone()),
        (
            "status stderr",
            String::from_utf8_lossy(&table.stderr).into_owned(),
        ),
        (
            "status --json",
            String::from_utf8_lossy(&json_status.stdout).into_owned(),
        ),
        ("/metrics", metrics),
    ];
    for (what, output) in &outputs {
        for secret in [
            ARG_SECRET,
            ENV_SECRET,
            CREDENTIAL,
            PROM_PASSWORD,
            SIGNATURE,
            basic.as_str(),
        ] {
            assert!(
                !output.contains(secret),
                "{secret} in {what}:\n{}",
                output
                    .lines()
                    .filter(|l| l.contains(secret))
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    // What the operator sees is not rewritten by the server's escapes.
    assert!(
        !table_text.contains('\u{1b}') && !table_text.contains('\r'),
        "{table_text:?}"
    );
    // And the errors still say what happened.
    let json: Value = serde_json::from_slice(&json_status.stdout).unwrap();
    let error_of = |name: &str| {
        json["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["last_error"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(
        error_of("failing").contains("exec plugin /bin/sh failed"),
        "{}",
        error_of("failing")
    );
    assert!(
        error_of("garbage").contains("not an ExecCredential"),
        "{}",
        error_of("garbage")
    );
    assert!(error_of("echo").contains("401"), "{}", error_of("echo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_exec_plugins_do_not_freeze_status_or_sigterm() {
    let sim = Sim::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(&sim, work.path(), &Conf::default(), None);
    let mut text = std::fs::read_to_string(&config).unwrap();
    let mut pidfiles = Vec::new();
    for name in ["hang1", "hang2"] {
        let pidfile = work.path().join(format!("{name}.pid"));
        // The plugin's child hangs too: the whole group must go.
        let kubeconfig = exec_kubeconfig(
            &sim,
            work.path(),
            name,
            r#"sleep 600 & echo $! > "$1"; wait"#,
            &[pidfile.to_str().unwrap()],
            &[],
        );
        text.push_str(&format!(
            "[[cluster]]\nname = \"{name}\"\nservice_account = \"kube-system/prometheus-test\"\n[cluster.credentials]\nkubeconfig = \"{}\"\n\n",
            kubeconfig.display()
        ));
        pidfiles.push(pidfile);
    }
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&config, "info");
    let socket = work.path().join("control.sock");
    let pids: Vec<i32> = {
        let mut pids = Vec::new();
        for pidfile in &pidfiles {
            let pid = eventually(Duration::from_secs(60), "the plugins run", || async {
                std::fs::read_to_string(pidfile)
                    .ok()?
                    .trim()
                    .parse::<i32>()
                    .ok()
            })
            .await;
            pids.push(pid);
        }
        pids
    };
    // Both plugins hang; status answers and c1 has its token.
    for _ in 0..3 {
        let out = mcprom_cli(&config, &["status", "--json"]);
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status while plugins hang: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(json["clusters"].as_array().unwrap().len(), 3, "{json}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let c1 = status_of(&socket, "c1").await.unwrap();
    assert!(c1["last_refresh"].is_string(), "{c1}");
    let (status, took) = daemon.terminate();
    eprintln!("exited {status} {took:?} after SIGTERM with two plugins hanging");
    assert!(status.success(), "{status}");
    for pid in pids {
        eventually(
            Duration::from_secs(20),
            "the plugin's child is killed",
            || async {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                (stat.is_empty() || stat.split(' ').nth(2) == Some("Z")).then_some(())
            },
        )
        .await;
    }
}

fn file_type_of(path: &Path) -> std::fs::FileType {
    std::fs::symlink_metadata(path).unwrap().file_type()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_regular_files_are_replaced_and_a_fifo_blocks_nothing() {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let sim = Sim::start(&["--clusters", "3"]);
    let work = tempfile::tempdir().unwrap();
    let tokens = work.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    // Writable by anyone: warned about.
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o777)).unwrap();
    let device = tokens.join("c1.token");
    let fifo = tokens.join("c2.token");
    let mknod = required_tool("mknod", "apt-get install coreutils");
    // A copy of /dev/null (char 1:3): what `token_file = "/dev/null"` meets.
    assert!(
        Command::new(mknod)
            .arg(&device)
            .args(["c", "1", "3"])
            .status()
            .unwrap()
            .success()
    );
    let mkfifo = required_tool("mkfifo", "apt-get install coreutils");
    assert!(Command::new(mkfifo).arg(&fifo).status().unwrap().success());
    let config = write_config(&sim, work.path(), &Conf::default(), None);
    let mut daemon = Daemon::start(&config, "info");
    let socket = work.path().join("control.sock");
    next_token(
        &tokens.join("c3.token"),
        "",
        Duration::from_secs(60),
        "c3's token",
    )
    .await;
    for (name, kind) in [
        ("c1", "is a character device, not a regular file"),
        ("c2", "is a FIFO, not a regular file"),
    ] {
        let s = eventually(Duration::from_secs(60), name, || async {
            status_of(&socket, name)
                .await
                .filter(|s| s["last_error"].is_string())
        })
        .await;
        let error = s["last_error"].as_str().unwrap();
        assert!(error.contains(kind), "{name}: {error}");
        assert!(error.contains(&format!("{name}.token")), "{name}: {error}");
    }
    assert!(
        file_type_of(&device).is_char_device(),
        "the device was replaced"
    );
    assert!(file_type_of(&fifo).is_fifo(), "the FIFO was replaced");
    assert!(
        daemon
            .log()
            .contains("the token directory is writable by others than its owner"),
        "{}",
        daemon.log()
    );
    let (status, _) = daemon.terminate();
    assert!(status.success());

    // A link planted at the lock file's name is not written through.
    let victim = work.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::fs::remove_file(&device).unwrap();
    std::fs::remove_file(&fifo).unwrap();
    let lock = tokens.join(".mcprom.lock");
    let _ = std::fs::remove_file(&lock);
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let mut daemon = Daemon::start(&config, "info");
    next_token(
        &tokens.join("c1.token"),
        "",
        Duration::from_secs(60),
        "c1's token",
    )
    .await;
    let log = daemon.log();
    assert!(
        log.contains(".mcprom.lock is a symbolic link, not a regular file"),
        "{log}"
    );
    let (status, _) = daemon.terminate();
    assert!(status.success());
    assert!(file_type_of(&lock).is_symlink());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_cannot_be_dumped_or_read_by_its_own_user() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    // The daemon as an unprivileged user: with PR_SET_DUMPABLE 0 the kernel
    // hands its /proc/PID files to root, so neither that user's other
    // processes (exec plugins included) nor a core dump can read its memory.
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = work.path().join("mcprom.toml");
    std::fs::write(
        &config,
        format!(
            "[prometheus]\nreload = \"never\"\n[metrics]\nlisten = \"\"\n[control]\nsocket = \"{}\"\n",
            work.path().join("control.sock").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut child = Command::new(required_tool("setpriv", "apt-get install util-linux"))
        .arg(format!("--reuid={OTHER_USER}"))
        .arg(format!("--regid={OTHER_USER}"))
        .args(["--clear-groups", "--"])
        .arg(MCPROM)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let socket = work.path().join("control.sock");
    eventually(
        Duration::from_secs(60),
        "the daemon's control socket",
        || async { socket.exists().then_some(()) },
    )
    .await;
    let owner = std::fs::metadata(format!("/proc/{pid}/mem")).unwrap().uid();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = child.wait().unwrap();
    assert_eq!(
        owner, 0,
        "/proc/{pid}/mem belongs to uid {owner}: the daemon is dumpable"
    );
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_prometheus_is_not_followed_nor_counted_as_a_reload() {
    let target = PromStub::start(200, Duration::ZERO).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirector = listener.local_addr().unwrap();
    let location = format!("http://{}/-/reload", target.addr);
    tokio::spawn(async move {
        for _ in 0..200 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let location = location.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    let conf = Conf {
        reload_url: Some(format!("http://{redirector}")),
        ..Conf::default()
    };
    let rig = Rig::start(&[], &conf, None);
    rig.first_tokens(&["c1"]).await;
    eventually(
        Duration::from_secs(60),
        "the refused redirect in the log",
        || async {
            rig.daemon
                .log()
                .contains("Prometheus answered 307 (a redirect; not followed")
                .then_some(())
        },
    )
    .await;
    assert_eq!(target.attempts(), 0, "the redirect was followed");
    assert_eq!(
        rig.metric("mcprom_prometheus_reloads_total{result=\"success\"}")
            .await,
        Some(0.0)
    );
}

#[test]
fn check_warns_about_a_token_file_mode_others_may_read_or_write() {
    let sim = Sim::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let conf = Conf {
        extra_defaults: "file_mode = \"0666\"".into(),
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, None);
    let out = mcprom_cli(&config, &["check"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("file_mode 0666 lets every local user read it and others than mcprom write"),
        "{text}"
    );
}
