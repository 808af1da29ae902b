//! Hostile peers and local users (issue 22, docs/security.md): the real
//! binary against small hostile servers on 127.0.0.1 and against other
//! local users, played by unprivileged uids through `setpriv`.

mod common;
#[path = "common/reliability.rs"]
mod reliability;

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
    let mut command = Command::new(prlimit);
    command
        .arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .arg(MCPROM);
    Daemon::run_by(command, config, rust_log)
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
    let metrics = metrics_on(port).await;
    assert!(!metrics.is_empty(), "no /metrics on port {port}");
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

/// `mcprom demo` under `unshare --pid --fork` (its pid is 1 there, so the
/// directory it used to take, `$TMPDIR/mcprom-demo-<pid>`, is known in
/// advance) with `TMPDIR` a shared, sticky directory like `/tmp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_in_a_fresh_private_directory_never_one_planted_before() {
    use std::io::BufRead as _;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let unshare = required_tool("unshare", "apt-get install util-linux");
    let setpriv = required_tool("setpriv", "apt-get install util-linux");
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let victim = work.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Another local user prepares the directory: a link where the demo
    // writes its config (and anything else it would then have read).
    let planted = shared.path().join("mcprom-demo-1");
    let prepared = Command::new(setpriv)
        .arg(format!("--reuid={OTHER_USER}"))
        .arg(format!("--regid={OTHER_USER}"))
        .args(["--clear-groups", "--", "sh", "-c"])
        .arg(r#"mkdir -m 0777 "$1" && ln -s "$2" "$1/mcprom.toml""#)
        .arg("plant")
        .arg(&planted)
        .arg(&victim)
        .status()
        .unwrap();
    assert!(prepared.success());

    let mut demo = Command::new(unshare)
        .args(["--pid", "--fork", "--"])
        .arg(MCPROM)
        .args(["demo", "--for", "8s"])
        .env("TMPDIR", shared.path())
        // No `prometheus` on PATH: the built-in receiver, nothing to wait for.
        .env("PATH", "/nonexistent")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(demo.stdout.take().unwrap());
    let mut printed = String::new();
    let dir = loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            let out = demo.wait_with_output().unwrap();
            panic!(
                "the demo ended early: {printed}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        printed.push_str(&line);
        if let Some(tokens) = line.trim().split("token files in ").nth(1) {
            break Path::new(tokens).parent().unwrap().to_owned();
        }
    };
    // While it runs: a new directory, only root's.
    let meta = std::fs::symlink_metadata(&dir).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = demo.wait_with_output().unwrap();
    printed.push_str(&rest);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("the demo ran in {}", dir.display());
    assert!(out.status.success(), "{printed}\n{stderr}");
    assert_ne!(dir, planted, "the demo used the planted directory");
    assert_eq!(dir.parent(), Some(shared.path()));
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("mcprom-demo-") && name.len() > "mcprom-demo-".len() + 4,
        "{name}"
    );
    assert!(meta.is_dir());
    assert_eq!(meta.uid(), 0);
    assert_eq!(meta.mode() & 0o7777, 0o700, "{:o}", meta.mode());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let left: Vec<_> = std::fs::read_dir(&planted)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["mcprom.toml"],
        "the demo wrote into the planted directory"
    );
    assert!(!dir.exists(), "the demo left {} behind", dir.display());
    // And it still is a demo: tokens were issued and written.
    assert!(
        printed.contains("c1: ") && printed.contains("tokens issued and written"),
        "{printed}"
    );
}

/// The postinst's `regroup_tokens` function, cut out of the script as it
/// is shipped (it takes every path and name as an argument).
fn postinst_function(name: &str) -> String {
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/debian/postinst")).unwrap();
    let start = script
        .find(&format!("\n{name}() {{\n"))
        .unwrap_or_else(|| panic!("no {name}() in debian/postinst"));
    let end = start + script[start..].find("\n}\n").expect("the function's end") + 3;
    script[start..end].to_owned()
}

#[test]
fn postinst_never_regroups_through_a_link_planted_by_the_mcprom_user() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let setpriv = required_tool("setpriv", "apt-get install util-linux");
    // The roles: uid 65534 plays the mcprom user, group "daemon" (gid 1)
    // the mcprom group, group "nogroup" (65534) the prometheus group.
    const MCPROM_GID: u32 = 1;
    let (from, to) = ("daemon", "nogroup");
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let chown = |path: &Path, uid: u32, gid: u32| {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    };
    // /var/lib/mcprom, the mcprom user's: once with a real token directory,
    // once with that directory replaced by a link to a file only root may
    // read (what a compromised mcprom account can do).
    let honest = root.path().join("honest");
    let hostile = root.path().join("hostile");
    for state in [&honest, &hostile] {
        std::fs::create_dir(state).unwrap();
        chown(state, OTHER_USER, MCPROM_GID);
    }
    let tokens = honest.join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o750)).unwrap();
    chown(&tokens, OTHER_USER, MCPROM_GID);
    let token = tokens.join("c1.token");
    std::fs::write(&token, "a.b.c").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).unwrap();
    chown(&token, OTHER_USER, MCPROM_GID);
    let secret = root.path().join("shadow");
    std::fs::write(&secret, "root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let planted = Command::new(setpriv)
        .arg(format!("--reuid={OTHER_USER}"))
        .arg(format!("--regid={MCPROM_GID}"))
        .args(["--clear-groups", "--", "ln", "-s"])
        .arg(&secret)
        .arg(hostile.join("tokens"))
        .status()
        .unwrap();
    assert!(planted.success());

    let function = postinst_function("regroup_tokens");
    let out = Command::new("/bin/sh")
        .arg("-ec")
        .arg(format!(
            "{function}\nregroup_tokens \"$1\" {OTHER_USER} {from} {to}\nregroup_tokens \"$2\" {OTHER_USER} {from} {to}\n"
        ))
        .arg("postinst")
        .arg(&tokens)
        .arg(hostile.join("tokens"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The root-only file is untouched.
    let meta = std::fs::metadata(&secret).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, 0, 0o600),
        "the postinst re-grouped a root-only file through a link: {:o}",
        meta.mode()
    );
    assert!(
        stderr.contains("is not a directory (a symbolic link?): left alone"),
        "{stderr}"
    );
    // And the real token directory is handed over as before.
    let nogroup = 65534;
    let dir = std::fs::metadata(&tokens).unwrap();
    assert_eq!((dir.gid(), dir.mode() & 0o7777), (nogroup, 0o2750));
    assert_eq!(std::fs::metadata(&token).unwrap().gid(), nogroup);
}

/// Answers every request with 401 and a Kubernetes `Status`, over plain
/// HTTP; counts the connections.
async fn plain_api_server() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        for _ in 0..100 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;
                let answer = format!(
                    "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, connections)
}

/// A config with one cluster per `(name, api_server)` and an issuer token.
fn plain_config(work: &Path, clusters: &[(&str, &str)]) -> std::path::PathBuf {
    let credential = work.join("issuer.token");
    std::fs::write(&credential, "not-a-secret-credential").unwrap();
    // A TOML string (JSON's escapes are TOML's): paths may hold anything.
    let q = |path: &Path| serde_json::to_string(path.to_str().unwrap()).unwrap();
    let mut text = format!(
        "[prometheus]\nreload = \"never\"\n\n[defaults]\ntoken_dir = {}\n\n[metrics]\nlisten = \"\"\n\n[control]\nsocket = {}\n",
        q(&work.join("tokens")),
        q(&work.join("control.sock"))
    );
    for (name, server) in clusters {
        text.push_str(&format!(
            "\n[[cluster]]\nname = \"{name}\"\napi_server = \"{server}\"\nservice_account = \"kube-system/prometheus-test\"\n[cluster.credentials]\ntoken_file = {}\n",
            q(&credential)
        ));
    }
    let config = work.join("mcprom.toml");
    std::fs::write(&config, text).unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_api_servers_only_on_loopback_and_never_called_tls_verified() {
    let work = tempfile::tempdir().unwrap();
    // Off loopback (a documentation address, never contacted): the file
    // is refused, naming file:line:col and the key.
    let config = plain_config(
        work.path(),
        &[
            ("local", "http://127.0.0.1:8001"),
            ("remote", "http://192.0.2.10:8080"),
        ],
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let line = text.lines().position(|l| l.contains("192.0.2.10")).unwrap() + 1;
    for command in [&["check"][..], &["run"]] {
        let out = mcprom_cli(&config, command);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{command:?}: {stderr}");
        let at = format!("{}:{line}:14", config.display());
        assert!(
            stderr.contains(&at)
                && stderr.contains("key \"api_server\"")
                && stderr.contains("allowed only to a loopback address"),
            "{command:?}: not at {at}: {stderr}"
        );
    }
    // The same from a kubeconfig's server: that cluster is held in error,
    // and nothing is sent.
    let kubeconfig = work.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": "http://192.0.2.10:8080"}}],
            "users": [{"name": "u", "user": {"token": "not-a-secret-credential"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "c",
        })
        .to_string(),
    )
    .unwrap();
    let (addr, connections) = plain_api_server().await;
    let config = plain_config(work.path(), &[("local", &format!("http://{addr}"))]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[cluster]]\nname = \"remote\"\nservice_account = \"kube-system/prometheus-test\"\n[cluster.credentials]\nkubeconfig = \"{}\"\n",
        kubeconfig.display()
    ));
    std::fs::write(&config, text).unwrap();
    let out = mcprom_cli(&config, &["check", "--online"]);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{report}");
    // On loopback: allowed, said plainly, never "TLS verified".
    assert!(connections.load(Ordering::Relaxed) > 0, "{report}");
    assert!(!report.contains("TLS verified"), "{report}");
    assert!(
        report.contains(&format!(
            "no TLS: http://{addr}/ is plain http, to a loopback address"
        )),
        "{report}"
    );
    assert!(
        report.contains(
            "API server http://192.0.2.10:8080/: plain http would send mcprom's credential"
        ),
        "{report}"
    );
}

#[test]
fn a_carriage_return_in_a_configured_path_stays_inside_its_yaml_comment() {
    let python = Path::new("/usr/bin/python3");
    let has_yaml = Command::new(python)
        .args(["-c", "import yaml"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_yaml,
        "python3 with PyYAML is required (apt-get install python3-yaml, or pip install kubernetes-validate as ci/test does)"
    );
    let work = tempfile::tempdir().unwrap();
    // A directory name a YAML parser would read as a line break and a key.
    let dir = work.path().join("x\rinjected: true\r#");
    std::fs::create_dir(&dir).unwrap();
    let config = plain_config(&dir, &[("c1", "https://127.0.0.1:6443")]);
    let out = mcprom_cli(&config, &["rbac"]);
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{yaml}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(yaml.contains("x\\rinjected: true\\r#"), "{yaml:?}");
    // What a YAML parser makes of it: every document's top-level keys.
    let mut parse = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml\nfor d in yaml.safe_load_all(sys.stdin):\n    print(json.dumps(sorted(d) if isinstance(d, dict) else repr(d)))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut parse.stdin.take().unwrap(), yaml.as_bytes()).unwrap();
    let parsed = parse.wait_with_output().unwrap();
    let keys = String::from_utf8_lossy(&parsed.stdout);
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    assert!(keys.lines().count() >= 4, "{keys}");
    for document in keys.lines() {
        let keys: Vec<String> = serde_json::from_str(document).unwrap();
        assert!(keys.contains(&"kind".to_owned()), "{document}");
        assert!(
            !keys.contains(&"injected".to_owned()),
            "a key escaped its comment: {document}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_waits_out_the_servers_retry_after_window() {
    let sim = Sim::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(&sim, work.path(), &Conf::default(), Some(&["c1"]));
    let mut daemon = Daemon::start(&config, "info");
    let token_path = work.path().join("tokens/c1.token");
    let first = next_token(&token_path, "", Duration::from_secs(60), "c1's first token").await;
    // The API server sheds load: 429, come back in 20 s.
    sim.control(
        reqwest::Method::POST,
        "/clusters/c1/faults",
        Some(json!({"count": 1, "kind": "status", "code": 429, "retry_after_seconds": 20})),
    )
    .await;
    let throttled = mcprom_cli(&config, &["rotate", "c1"]);
    let said = String::from_utf8_lossy(&throttled.stdout).into_owned();
    assert!(
        !throttled.status.success() && said.contains("429"),
        "{said}"
    );
    let sent = sim.token_requests("c1").await;
    // Inside the window, `rotate` says so and sends nothing.
    for _ in 0..3 {
        let out = mcprom_cli(&config, &["rotate", "c1"]);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            !out.status.success(),
            "rotate succeeded inside Retry-After: {said}"
        );
        assert!(
            said.contains(
                "no TokenRequest sent: the API server asked mcprom to wait (429 with Retry-After)"
            ),
            "{said}"
        );
    }
    assert_eq!(
        sim.token_requests("c1").await,
        sent,
        "TokenRequests were sent inside the Retry-After window"
    );
    // After it, mcprom's own retry gets the token.
    next_token(
        &token_path,
        &first,
        Duration::from_secs(90),
        "the retry after the window",
    )
    .await;
    let (status, _) = daemon.terminate();
    assert!(status.success());
}

/// A TCP relay to `upstream` that holds what clients send while closed.
struct Gate {
    addr: SocketAddr,
    open: tokio::sync::watch::Sender<bool>,
    held: Arc<AtomicU64>,
}

impl Gate {
    async fn start(upstream: SocketAddr) -> Gate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, gate) = tokio::sync::watch::channel(true);
        let held = Arc::new(AtomicU64::new(0));
        let counter = held.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mut from_client, mut to_server) = (client, server);
                let mut gate = gate.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = from_client.split();
                    let (mut server_read, mut server_write) = to_server.split();
                    let upstream = async {
                        let mut buf = vec![0u8; 16384];
                        loop {
                            let n = match client_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if !*gate.borrow() {
                                counter.fetch_add(n as u64, Ordering::SeqCst);
                                if gate.wait_for(|open| *open).await.is_err() {
                                    break;
                                }
                            }
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_write.shutdown().await;
                    };
                    let downstream = async {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                        let _ = client_write.shutdown().await;
                    };
                    tokio::join!(upstream, downstream);
                });
            }
        });
        Gate { addr, open, held }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_requests_while_one_is_in_flight_make_one_token_request() {
    let sim = Sim::start(&[]);
    let upstream: SocketAddr = sim
        .api_server("c1")
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let gate = Gate::start(upstream).await;
    let work = tempfile::tempdir().unwrap();
    let conf = Conf {
        cluster_extra: vec![(
            "c1".into(),
            format!(
                "api_server = \"https://{}\"\nca_file = \"{}\"",
                gate.addr,
                sim.ca_file("c1").display()
            ),
        )],
        ..Conf::default()
    };
    let config = write_config(&sim, work.path(), &conf, Some(&["c1"]));
    let mut daemon = Daemon::start(&config, "info,mcprom::app=debug");
    let token_path = work.path().join("tokens/c1.token");
    next_token(&token_path, "", Duration::from_secs(60), "c1's first token").await;

    // One `rotate` whose TokenRequest is held on the way, then four more.
    gate.open.send_replace(false);
    let rotate = || {
        Command::new(MCPROM)
            .args(["rotate", "c1", "--config"])
            .arg(&config)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut calls = vec![rotate()];
    eventually(
        Duration::from_secs(60),
        "the first request held",
        || async { (gate.held.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;
    let before = sim.token_requests("c1").await;
    calls.extend((0..4).map(|_| rotate()));
    eventually(
        Duration::from_secs(60),
        "five rotate requests at the daemon",
        || async { (daemon.count("rotate requested") >= 5).then_some(()) },
    )
    .await;
    gate.open.send_replace(true);
    for call in calls {
        let out = call.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let after = sim.token_requests("c1").await;
    eprintln!("five rotate calls, {} TokenRequest(s)", after - before);
    assert_eq!(
        after,
        before + 1,
        "five rotate calls made {} TokenRequests",
        after - before
    );
    let (status, _) = daemon.terminate();
    assert!(status.success());
}

/// Start mcprom on `conf`; c2 gets its token at `c2_token` while c1's
/// status names `expected` as its last error. The daemon is still running.
async fn c2_fine_c1_refused(
    sim: &Sim,
    work: &Path,
    conf: &Conf,
    c2_token: &Path,
    expected: &str,
) -> Daemon {
    let config = write_config(sim, work, conf, None);
    let daemon = Daemon::start(&config, "info");
    let socket = work.join("control.sock");
    next_token(c2_token, "", Duration::from_secs(60), "c2's token").await;
    let c1 = eventually(Duration::from_secs(60), "c1's error", || async {
        status_of(&socket, "c1")
            .await
            .filter(|s| s["last_error"].is_string())
    })
    .await;
    let error = c1["last_error"].as_str().unwrap();
    assert!(error.contains(expected), "{error}");
    daemon
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_path_mcprom_refuses_to_replace_gets_no_lock_file_beside_it() {
    use std::os::unix::fs::FileTypeExt as _;
    let sim = Sim::start(&["--clusters", "2"]);
    let work = tempfile::tempdir().unwrap();
    // `token_file = "/dev/null"`, in a directory of its own: a copy of
    // /dev/null (char 1:3), so that a regression cannot break this machine.
    let dev = work.path().join("dev");
    std::fs::create_dir(&dev).unwrap();
    let null = dev.join("null");
    let mknod = required_tool("mknod", "apt-get install coreutils");
    assert!(
        Command::new(mknod)
            .arg(&null)
            .args(["c", "1", "3"])
            .status()
            .unwrap()
            .success()
    );
    let conf = Conf {
        cluster_extra: vec![("c1".into(), format!("token_file = \"{}\"", null.display()))],
        ..Conf::default()
    };
    let mut daemon = c2_fine_c1_refused(
        &sim,
        work.path(),
        &conf,
        &work.path().join("tokens/c2.token"),
        &format!(
            "{} is a character device, not a regular file",
            null.display()
        ),
    )
    .await;
    let (status, _) = daemon.terminate();
    assert!(status.success());
    assert!(file_type_of(&null).is_char_device());
    let left: Vec<_> = std::fs::read_dir(&dev)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["null"], "mcprom left files beside the device");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_at_the_lock_files_name_stops_writes_in_that_directory_only() {
    let sim = Sim::start(&["--clusters", "2"]);
    let work = tempfile::tempdir().unwrap();
    let tokens = work.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let victim = work.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let lock = tokens.join(".mcprom.lock");
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    // c2 writes elsewhere: it must not notice.
    let conf = Conf {
        cluster_extra: vec![(
            "c2".into(),
            format!(
                "token_file = \"{}\"",
                work.path().join("other/c2.token").display()
            ),
        )],
        ..Conf::default()
    };
    let mut daemon = c2_fine_c1_refused(
        &sim,
        work.path(),
        &conf,
        &work.path().join("other/c2.token"),
        &format!("{} is a symbolic link, not a regular file", lock.display()),
    )
    .await;
    assert!(
        !tokens.join("c1.token").exists(),
        "c1's token was written without the directory's lock"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(file_type_of(&lock).is_symlink());
    // Once the link is gone, c1 takes the lock and catches up by itself.
    std::fs::remove_file(&lock).unwrap();
    next_token(
        &tokens.join("c1.token"),
        "",
        Duration::from_secs(90),
        "c1's token once the link is gone",
    )
    .await;
    assert!(file_type_of(&lock).is_file());
    let (status, _) = daemon.terminate();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}

#[test]
fn the_simulator_never_writes_its_files_through_a_planted_link() {
    use std::io::BufRead as _;
    use std::os::unix::fs::PermissionsExt as _;
    let work = tempfile::tempdir().unwrap();
    let victim = work.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    // Links at every name the simulator's writer used to open (its fixed
    // temp names), pointing at a file it must not touch.
    let dir = work.path().join("sim");
    let c1 = dir.join("c1");
    std::fs::create_dir_all(&c1).unwrap();
    for name in [
        "ca.tmp-sim",
        "kubeconfig.tmp-sim",
        "kubeconfig-nobody.tmp-sim",
        "issuer.tmp-sim",
    ] {
        std::os::unix::fs::symlink(&victim, c1.join(name)).unwrap();
    }
    std::os::unix::fs::symlink(&victim, dir.join("mcprom.tmp-sim")).unwrap();
    let mut sim = Command::new(sim_binary())
        .arg("--dir")
        .arg(&dir)
        .args(["--clusters", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(sim.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let _ = sim.kill();
    let _ = sim.wait();
    assert!(
        ready.starts_with('{'),
        "the simulator did not start: {ready:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "the simulator wrote through a link"
    );
    let kubeconfig = c1.join("kubeconfig");
    let meta = std::fs::symlink_metadata(&kubeconfig).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(
        std::fs::read_to_string(&kubeconfig)
            .unwrap()
            .contains("client-key-data")
    );
}
