//! journald output of the real `mcprom` binary: with `JOURNAL_STREAM`
//! naming its stderr (what systemd sets up), every event arrives at the
//! journal socket as one native-protocol datagram with its fields and a
//! syslog priority; otherwise the lines go to stderr.
//!
//! The "journal" is a datagram socket in a temp dir that the test reads,
//! handed to mcprom through `MCPROM_JOURNAL_SOCKET`; the "journal stream"
//! is a plain file as stderr, whose device and inode go into
//! `JOURNAL_STREAM` exactly as systemd would put its stream socket's.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MCPROM: &str = env!("CARGO_BIN_EXE_mcprom");

/// One journal entry: field name to its values.
type Entry = BTreeMap<String, Vec<String>>;

/// A socket standing in for journald's, drained by a thread so that mcprom
/// never blocks on a full queue (the kernel queues only a few datagrams).
struct Journal {
    path: PathBuf,
    entries: Arc<Mutex<Vec<Entry>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Journal {
    fn bind(dir: &Path) -> Journal {
        let path = dir.join("journal.socket");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let entries = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (entries, stop) = (entries.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0; 1 << 20];
                loop {
                    match socket.recv(&mut buf) {
                        // The empty datagram is mcprom probing the socket.
                        Ok(0) => {}
                        Ok(n) => entries.lock().unwrap().push(parse(&buf[..n])),
                        Err(_) if stop.load(Ordering::SeqCst) => return,
                        Err(_) => {}
                    }
                }
            })
        };
        Journal {
            path,
            entries,
            stop,
            reader: Some(reader),
        }
    }

    fn entries(&self) -> Vec<Entry> {
        self.entries.lock().unwrap().clone()
    }

    /// Wait until an entry satisfies `pred`; fail with everything seen.
    fn wait_for(&self, what: &str, pred: impl Fn(&Entry) -> bool) -> Entry {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = self.entries().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within 30 s; journal: {:#?}",
                self.entries()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop reading after the queue is drained, and return every entry.
    fn finish(mut self) -> Vec<Entry> {
        // The writer has exited: whatever it sent is queued. One read
        // timeout with the flag set ends the loop after the queue is empty.
        self.stop.store(true, Ordering::SeqCst);
        self.reader.take().unwrap().join().unwrap();
        self.entries()
    }
}

/// The native protocol: `NAME=value\n`, or `NAME\n` + u64 LE length +
/// value + `\n` for values that contain a newline.
fn parse(mut data: &[u8]) -> Entry {
    let mut entry = Entry::new();
    while !data.is_empty() {
        let end = data
            .iter()
            .position(|&b| b == b'\n')
            .expect("every field ends with a newline");
        let line = &data[..end];
        let (name, value, rest) = match line.iter().position(|&b| b == b'=') {
            Some(eq) => (&line[..eq], &line[eq + 1..], &data[end + 1..]),
            None => {
                let after = &data[end + 1..];
                let len = u64::from_le_bytes(after[..8].try_into().unwrap()) as usize;
                assert_eq!(after[8 + len], b'\n', "binary field ends with a newline");
                (line, &after[8..8 + len], &after[8 + len + 1..])
            }
        };
        let name = String::from_utf8(name.to_vec()).unwrap();
        assert!(
            name.starts_with(|c: char| c.is_ascii_uppercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
            "journald would drop the field {name:?}"
        );
        entry
            .entry(name)
            .or_default()
            .push(String::from_utf8(value.to_vec()).unwrap());
        data = rest;
    }
    entry
}

fn field<'a>(entry: &'a Entry, name: &str) -> Option<&'a str> {
    match entry.get(name).map(Vec::as_slice) {
        None => None,
        Some([value]) => Some(value),
        Some(values) => panic!("{name} has {} values in {entry:#?}", values.len()),
    }
}

fn message_starts(entry: &Entry, prefix: &str) -> bool {
    field(entry, "MESSAGE").is_some_and(|m| m.starts_with(prefix))
}

/// A file to use as mcprom's stderr and the `JOURNAL_STREAM` value that
/// names it.
fn journal_stream(dir: &Path) -> (File, PathBuf, String) {
    let path = dir.join("stderr");
    let file = File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    (file, path, format!("{}:{}", meta.dev(), meta.ino()))
}

/// A config with one cluster whose API server refuses connections, so the
/// rotator logs a warning with `cluster`, `service_account` and `error`.
fn unreachable_cluster_config(dir: &Path) -> PathBuf {
    // A port that was just free: connecting is refused. Should anything
    // grab it meanwhile, the TLS handshake fails instead, which is logged
    // the same way.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(dir.join("issuer.token"), "not.a.token").unwrap();
    let config = dir.join("mcprom.toml");
    std::fs::write(
        &config,
        format!(
            r#"[prometheus]
reload = "never"

[defaults]
token_dir = "tokens"

[metrics]
listen = ""

[control]
socket = "control.sock"

[[cluster]]
name = "prod"
api_server = "https://127.0.0.1:{port}"
service_account = "kube-system/prometheus"

[cluster.credentials]
token_file = "issuer.token"
"#
        ),
    )
    .unwrap();
    config
}

fn mcprom(args: &[&str], stderr: File, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(MCPROM);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    cmd
}

fn wait_with_deadline(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("mcprom did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn under_systemd_a_failing_cluster_is_logged_to_journald_with_its_fields_and_priority() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::bind(dir.path());
    let (stderr, stderr_path, stream) = journal_stream(dir.path());
    let config = unreachable_cluster_config(dir.path());
    let mut child = mcprom(
        &["run", "--config", config.to_str().unwrap()],
        stderr,
        &[
            ("JOURNAL_STREAM", &stream),
            ("MCPROM_JOURNAL_SOCKET", journal.path.to_str().unwrap()),
        ],
    )
    .spawn()
    .unwrap();

    let failure = journal.wait_for("refresh failure", |e| {
        message_starts(e, "token refresh failed")
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_with_deadline(&mut child, Duration::from_secs(10));
    assert!(status.success(), "exit 0 on SIGTERM: {status:?}");
    let entries = journal.finish();

    // The warning: fields from the `cluster` span and from the event.
    assert_eq!(field(&failure, "PRIORITY"), Some("4"), "{failure:#?}");
    assert_eq!(field(&failure, "CLUSTER"), Some("prod"));
    assert_eq!(
        field(&failure, "SERVICE_ACCOUNT"),
        Some("kube-system/prometheus")
    );
    assert_eq!(field(&failure, "SYSLOG_IDENTIFIER"), Some("mcprom"));
    let error = field(&failure, "ERROR").expect("ERROR field");
    assert!(!error.is_empty());
    assert!(field(&failure, "REASON").is_some_and(|r| !r.is_empty()));
    assert!(field(&failure, "RETRY_IN").is_some());
    // The default journalctl view shows MESSAGE only: it names the cluster
    // and the error too.
    let message = field(&failure, "MESSAGE").unwrap();
    assert!(message.contains("cluster=prod"), "{message}");
    assert!(message.contains("error="), "{message}");

    // Start and stop are informational.
    let started = entries
        .iter()
        .find(|e| message_starts(e, "mcprom started"))
        .expect("a start entry");
    assert_eq!(field(started, "PRIORITY"), Some("6"));
    assert_eq!(field(started, "CLUSTERS"), Some("1"));
    assert!(
        entries
            .iter()
            .any(|e| message_starts(e, "stopped") && field(e, "PRIORITY") == Some("6"))
    );
    // Every entry has a priority and a message; no error-priority noise from
    // libraries for a failure mcprom already reports as a warning.
    for entry in &entries {
        let priority = field(entry, "PRIORITY").expect("PRIORITY");
        assert!(priority != "3", "unexpected error entry: {entry:#?}");
        assert!(field(entry, "MESSAGE").is_some());
    }
    // Nothing was printed: stderr is the journal stream, and the same
    // lines there would be duplicates without fields.
    let printed = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(printed, "", "stderr must stay empty under journald");
}

#[test]
fn a_config_mcprom_refuses_is_an_error_priority_entry_with_the_whole_message() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::bind(dir.path());
    let (stderr, stderr_path, stream) = journal_stream(dir.path());
    let config = dir.path().join("mcprom.toml");
    std::fs::write(&config, "[prometheus]\nurl = 5\n").unwrap();
    let status = mcprom(
        &["run", "--config", config.to_str().unwrap()],
        stderr,
        &[
            ("JOURNAL_STREAM", &stream),
            ("MCPROM_JOURNAL_SOCKET", journal.path.to_str().unwrap()),
        ],
    )
    .status()
    .unwrap();
    assert_eq!(status.code(), Some(78));
    let entries = journal.finish();
    let [entry] = entries.as_slice() else {
        panic!("one entry expected: {entries:#?}")
    };
    assert_eq!(field(entry, "PRIORITY"), Some("3"));
    // A multi-line message arrives whole (the length-prefixed form).
    let message = field(entry, "MESSAGE").unwrap();
    assert!(
        message.starts_with("invalid configuration, not starting:\n"),
        "{message}"
    );
    assert!(message.contains("mcprom.toml:2:"), "{message}");
    assert_eq!(std::fs::read_to_string(&stderr_path).unwrap(), "");
}

#[test]
fn a_journal_stream_that_is_not_stderr_keeps_human_readable_lines() {
    // As for a command started from a shell that a unit spawned: the
    // variable is inherited, but stderr is something else.
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::bind(dir.path());
    let (stderr, stderr_path, stream) = journal_stream(dir.path());
    let (dev, ino) = stream.split_once(':').unwrap();
    let elsewhere = format!("{dev}:{}", ino.parse::<u64>().unwrap() + 1);
    let config = dir.path().join("mcprom.toml");
    std::fs::write(&config, "[prometheus]\nurl = 5\n").unwrap();
    let status = mcprom(
        &["run", "--config", config.to_str().unwrap()],
        stderr,
        &[
            ("JOURNAL_STREAM", &elsewhere),
            ("MCPROM_JOURNAL_SOCKET", journal.path.to_str().unwrap()),
        ],
    )
    .status()
    .unwrap();
    assert_eq!(status.code(), Some(78));
    assert_eq!(journal.finish(), Vec::<Entry>::new());
    let printed = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(printed.contains("ERROR"), "{printed}");
    assert!(
        printed.contains("invalid configuration, not starting"),
        "{printed}"
    );
}

#[test]
fn without_journald_listening_the_lines_still_reach_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let (stderr, stderr_path, stream) = journal_stream(dir.path());
    let config = dir.path().join("mcprom.toml");
    std::fs::write(&config, "[prometheus]\nurl = 5\n").unwrap();
    let absent = dir.path().join("no-journal.socket");
    let status = mcprom(
        &["run", "--config", config.to_str().unwrap()],
        stderr,
        &[
            ("JOURNAL_STREAM", &stream),
            ("MCPROM_JOURNAL_SOCKET", absent.to_str().unwrap()),
        ],
    )
    .status()
    .unwrap();
    assert_eq!(status.code(), Some(78));
    let printed = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        printed.contains("cannot log to journald's socket"),
        "{printed}"
    );
    assert!(
        printed.contains("invalid configuration, not starting"),
        "{printed}"
    );
}
