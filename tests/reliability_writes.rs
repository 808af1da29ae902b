//! Token files under stress: no torn reads by another process during
//! ≥ 1,000 rotations, ≥ 200 SIGKILLs in the middle of rotations, and the
//! system-call order of one atomic write (strace).
//!
//! Sizes scale with `MCPROM_LONG=1` (10× the rotations and kills).

mod common;
#[path = "common/reliability.rs"]
mod reliability;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use reliability::*;
use serde_json::{Value, json};

fn scale() -> usize {
    if std::env::var_os("MCPROM_LONG").is_some_and(|v| v == "1") {
        10
    } else {
        1
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let name = e.ok()?.file_name().to_string_lossy().into_owned();
                    name.starts_with(".mcprom-tmp.").then_some(name)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What one read of a token file found.
enum Read {
    Missing,
    Empty,
    /// Not a whole JWT with readable claims (a torn or partial write).
    Partial,
    Token(String),
}

fn classify(bytes: std::io::Result<Vec<u8>>) -> Read {
    let bytes = match bytes {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Read::Missing,
        Err(e) => panic!("reading a token file: {e}"),
    };
    if bytes.is_empty() {
        return Read::Empty;
    }
    let Ok(text) = String::from_utf8(bytes) else {
        return Read::Partial;
    };
    match mcprom::token::Token::new(text.clone()).and_then(|t| t.claims()) {
        Ok(_) if !text.ends_with('\n') => Read::Token(text),
        _ => Read::Partial,
    }
}

/// The reader process: started by `no_reader_ever_sees_a_missing_empty_or_partial_token`
/// as a second run of this test binary; reads every file in a tight loop
/// until the stop file appears, then writes its findings as JSON.
#[test]
#[ignore = "the separate reader process of the torn-read test; it starts this itself"]
fn token_reader_process() {
    let Ok(files) = std::env::var("MCPROM_READER_FILES") else {
        return;
    };
    let files: Vec<PathBuf> = files.split('\n').map(PathBuf::from).collect();
    let stop = PathBuf::from(std::env::var("MCPROM_READER_STOP").unwrap());
    let out = PathBuf::from(std::env::var("MCPROM_READER_OUT").unwrap());
    let (mut reads, mut missing, mut empty, mut partial) = (0u64, 0u64, 0u64, 0u64);
    // token → (file index, first seen ms, last seen ms, reads)
    let mut tokens: std::collections::HashMap<String, (usize, u64, u64, u64)> =
        std::collections::HashMap::new();
    let mut round = 0u64;
    loop {
        if round.is_multiple_of(64) && stop.exists() {
            break;
        }
        round += 1;
        for (i, file) in files.iter().enumerate() {
            reads += 1;
            match classify(std::fs::read(file)) {
                Read::Missing => missing += 1,
                Read::Empty => empty += 1,
                Read::Partial => partial += 1,
                Read::Token(t) => {
                    let now = now_ms();
                    let e = tokens.entry(t).or_insert((i, now, now, 0));
                    e.2 = now;
                    e.3 += 1;
                }
            }
        }
    }
    let tokens: Vec<Value> = tokens
        .into_iter()
        .map(|(t, (i, first, last, n))| json!({"token": t, "file": i, "first_ms": first, "last_ms": last, "reads": n}))
        .collect();
    std::fs::write(
        out,
        json!({"reads": reads, "missing": missing, "empty": empty, "partial": partial, "tokens": tokens})
            .to_string(),
    )
    .unwrap();
}

/// Ask the daemon to rotate every cluster and wait for the outcome.
async fn rotate_all(socket: &Path) -> Vec<Value> {
    let answer = control_call(socket, &json!({"command": "rotate"}))
        .await
        .expect("rotate over the control socket");
    answer["results"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reader_ever_sees_a_missing_empty_or_partial_token() {
    const CLUSTERS: usize = 10;
    let rounds = 110 * scale();
    let rig = Rig::start(
        &["--clusters", &CLUSTERS.to_string(), "--expiry-leeway", "0s"],
        &Conf {
            expiration: "10m",
            ..Conf::default()
        },
        None,
    );
    let names: Vec<String> = (1..=CLUSTERS).map(|i| format!("c{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    rig.first_tokens(&name_refs).await;
    let files: Vec<PathBuf> = names.iter().map(|n| rig.token_path(n)).collect();
    let stop = rig.work.path().join("reader.stop");
    let out = rig.work.path().join("reader.json");
    let mut reader = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "token_reader_process",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(
            "MCPROM_READER_FILES",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .env("MCPROM_READER_STOP", &stop)
        .env("MCPROM_READER_OUT", &out)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the reader process");
    let started = Instant::now();
    let mut rotations = 0usize;
    for _ in 0..rounds {
        let results = rotate_all(&rig.socket()).await;
        rotations += results.iter().filter(|r| r["ok"] == true).count();
    }
    let rotating = started.elapsed();
    std::fs::write(&stop, "").unwrap();
    let status = reader.wait().unwrap();
    assert!(status.success(), "the reader process failed: {status:?}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let tokens = report["tokens"].as_array().unwrap();
    eprintln!(
        "figures: torn reads: {rotations} rotations in {rotating:.1?}, {} reads by a separate process, {} distinct tokens seen; missing {} empty {} partial {}",
        report["reads"],
        tokens.len(),
        report["missing"],
        report["empty"],
        report["partial"]
    );
    assert!(rotations >= 1000, "at least 1,000 rotations: {rotations}");
    assert_eq!(report["missing"], 0, "a token file was missing");
    assert_eq!(report["empty"], 0, "a token file was empty");
    assert_eq!(report["partial"], 0, "a token file was partial");
    assert!(
        tokens.len() >= rotations / 2,
        "the reader kept up: {}",
        tokens.len()
    );
    // Every distinct content the reader saw is a token the simulator issued
    // for that cluster (it still accepts it: 10-minute lifetimes, leeway 0),
    // and none was read after its exp.
    let clients: Vec<reqwest::Client> = names.iter().map(|n| api_client(&rig.sim, n)).collect();
    let mut not_accepted = 0;
    for t in tokens {
        let i = t["file"].as_u64().unwrap() as usize;
        let token = t["token"].as_str().unwrap();
        let exp_ms = claims(token)["exp"].as_u64().unwrap() * 1000;
        assert!(
            t["last_ms"].as_u64().unwrap() < exp_ms,
            "read after its exp"
        );
        let code = scrape_status(&clients[i], &rig.sim.api_server(&names[i]), token).await;
        if code != 200 {
            not_accepted += 1;
        }
    }
    assert_eq!(not_accepted, 0, "tokens the simulator does not accept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_rotations_leaves_complete_tokens_and_restarts_clean() {
    use rand::Rng as _;
    const CLUSTERS: usize = 5;
    let kills = 200 * scale();
    let sim = Sim::start(&["--clusters", &CLUSTERS.to_string(), "--expiry-leeway", "0s"]);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(
        &sim,
        work.path(),
        &Conf {
            expiration: "10m",
            ..Conf::default()
        },
        None,
    );
    let socket = work.path().join("control.sock");
    let dir = work.path().join("tokens");
    let names: Vec<String> = (1..=CLUSTERS).map(|i| format!("c{i}")).collect();
    let files: Vec<PathBuf> = names
        .iter()
        .map(|n| dir.join(format!("{n}.token")))
        .collect();

    let start = || Daemon::start(&config, "info");
    let socket_up = |daemon: &mut Daemon| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return;
            }
            assert!(
                daemon.child.try_wait().unwrap().is_none(),
                "mcprom exited: {}",
                daemon.log()
            );
            assert!(Instant::now() < deadline, "control socket did not come up");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let mut daemon = start();
    eventually(Duration::from_secs(60), "first tokens", || async {
        files.iter().all(|f| f.exists()).then_some(())
    })
    .await;

    let mut rng = rand::rng();
    let mut seen: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let mut previous: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let (mut with_temps, mut changed) = (0, 0);
    let started = Instant::now();
    for kill in 0..kills {
        if kill > 0 {
            daemon = start();
        }
        socket_up(&mut daemon);
        // The new process removed whatever the killed one left behind
        // before serving the socket (and adopted the valid tokens).
        let stale = temp_files(&dir);
        assert!(
            stale.is_empty(),
            "kill {kill}: temp files after restart: {stale:?}"
        );
        let rotate = tokio::spawn({
            let socket = socket.clone();
            async move { control_call(&socket, &json!({"command": "rotate"})).await }
        });
        let delay = Duration::from_micros(rng.random_range(0..150_000));
        tokio::time::sleep(delay).await;
        daemon.child.kill().unwrap();
        daemon.child.wait().unwrap();
        rotate.abort();
        if !temp_files(&dir).is_empty() {
            with_temps += 1; // killed between creating the temp file and the rename
        }
        for (i, file) in files.iter().enumerate() {
            let content = match classify(std::fs::read(file)) {
                Read::Token(t) => t,
                Read::Missing => panic!("kill {kill}: {} missing", names[i]),
                Read::Empty => panic!("kill {kill}: {} empty", names[i]),
                Read::Partial => panic!("kill {kill}: {} partial", names[i]),
            };
            if content != previous[i] {
                changed += 1;
            }
            seen.entry(i).or_default().insert(content.clone());
            previous[i] = content;
        }
    }
    let elapsed = started.elapsed();
    // After the last kill: restart, no temp file, and rotation resumes.
    let mut daemon = start();
    socket_up(&mut daemon);
    assert!(temp_files(&dir).is_empty());
    let results = rotate_all(&socket).await;
    assert_eq!(results.len(), CLUSTERS);
    assert!(results.iter().all(|r| r["ok"] == true), "{results:?}");
    let distinct: usize = seen.values().map(BTreeSet::len).sum();
    eprintln!(
        "figures: crash safety: {kills} SIGKILLs in {elapsed:.1?}; {changed} token files replaced between kills, {with_temps} kills left a temp file behind (mid-write), each removed by the next start; {distinct} distinct tokens, all complete"
    );
    // Every token any kill left behind is one the simulator issued.
    for (i, tokens) in &seen {
        let client = api_client(&sim, &names[*i]);
        for t in tokens {
            assert_eq!(
                scrape_status(&client, &sim.api_server(&names[*i]), t).await,
                200,
                "a token left by a kill is one the simulator issued"
            );
        }
    }
    assert!(
        changed >= kills / 4,
        "the kills landed during rotations: {changed} changes"
    );
    let (status, _) = daemon.terminate();
    assert!(status.success());
}

/// One strace line with the thread that made the call.
struct Call {
    tid: String,
    text: String,
}

/// Parse `strace -f -o` output, joining `<unfinished ...>` with `<... resumed>`.
fn strace_calls(output: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut pending: BTreeMap<String, usize> = BTreeMap::new();
    for line in output.lines() {
        let Some((tid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(tid.to_owned(), calls.len());
            calls.push(Call {
                tid: tid.to_owned(),
                text: head.to_owned(),
            });
        } else if rest.starts_with("<... ") {
            let tail = rest.split_once("resumed>").map_or("", |(_, t)| t);
            if let Some(i) = pending.remove(tid) {
                calls[i].text.push_str(tail);
            }
        } else {
            calls.push(Call {
                tid: tid.to_owned(),
                text: rest.to_owned(),
            });
        }
    }
    calls
}

fn result_fd(text: &str) -> Option<String> {
    text.rsplit_once(" = ")
        .map(|(_, r)| r.split(' ').next().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strace_shows_write_fsync_rename_then_directory_fsync() {
    assert!(
        Path::new("/usr/bin/strace").is_file(),
        "strace is missing: apt-get install strace"
    );
    let sim = Sim::start(&["--clusters", "1"]);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(&sim, work.path(), &Conf::default(), None);
    let trace = work.path().join("strace.out");
    let dir = work.path().join("tokens");
    let target = dir.join("c1.token");
    let mut child = {
        use std::os::unix::process::CommandExt as _;
        Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=%file,fsync,fdatasync,write", "-o"])
            .arg(&trace)
            .arg(MCPROM)
            .args(["run", "--config"])
            .arg(&config)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start strace")
    };
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let dir_text = dir.display().to_string();
    // Everything happens relative to the token directory, opened once
    // (openat/renameat on its descriptor: no path component is followed
    // between the checks and the rename).
    let renameat_dir = |c: &Call| -> Option<String> {
        let rest = c.text.strip_prefix("renameat")?;
        let rest = rest.strip_prefix('2').unwrap_or(rest).strip_prefix('(')?;
        Some(rest.split(',').next()?.to_owned())
    };
    // Wait until the directory fsync after the rename has been recorded.
    let calls = eventually(Duration::from_secs(90), "one traced rotation", || async {
        let output = std::fs::read_to_string(&trace).ok()?;
        let calls = strace_calls(&output);
        let renamed = calls
            .iter()
            .position(|c| renameat_dir(c).is_some() && c.text.contains("\"c1.token\""))?;
        let dir_fd = renameat_dir(&calls[renamed])?;
        calls[renamed..]
            .iter()
            .any(|c| c.text.starts_with(&format!("fsync({dir_fd})")))
            .then_some(calls)
    })
    .await;
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();

    let index = |from: usize, what: &str, f: &dyn Fn(&Call) -> bool| -> usize {
        calls[from..]
            .iter()
            .position(f)
            .map(|i| i + from)
            .unwrap_or_else(|| panic!("no {what} after call {from}"))
    };
    let open = index(0, "temp file creation", &|c| {
        c.text.starts_with("openat(") && c.text.contains(", \".mcprom-tmp.c1.token.")
    });
    let dir_fd = calls[open].text["openat(".len()..]
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    let tid = calls[open].tid.clone();
    let dir_open = (0..open)
        .rev()
        .find(|&i| {
            let c = &calls[i];
            c.tid == tid
                && c.text.starts_with("openat(")
                && c.text.contains(&format!("\"{dir_text}\""))
                && c.text.contains("O_DIRECTORY")
                && result_fd(&c.text).as_deref() == Some(dir_fd.as_str())
        })
        .expect("the token directory opened before the temp file");
    let open_text = &calls[open].text;
    assert!(
        open_text.contains("O_CREAT")
            && open_text.contains("O_EXCL")
            && open_text.contains("O_NOFOLLOW"),
        "{open_text}"
    );
    assert!(open_text.contains("0600"), "{open_text}");
    let fd = result_fd(open_text).unwrap();
    let temp_name = open_text.split('"').nth(1).unwrap().to_owned();
    let write = index(open, "write of the token", &|c| {
        c.tid == tid && c.text.starts_with(&format!("write({fd},"))
    });
    let fsync = index(write, "fsync of the temp file", &|c| {
        c.tid == tid
            && (c.text.starts_with(&format!("fsync({fd})"))
                || c.text.starts_with(&format!("fdatasync({fd})")))
    });
    let rename = index(fsync, "rename onto the token file", &|c| {
        renameat_dir(c).as_deref() == Some(dir_fd.as_str())
            && c.text
                .contains(&format!("\"{temp_name}\", {dir_fd}, \"c1.token\""))
    });
    let dir_fsync = index(rename, "fsync of the directory", &|c| {
        c.tid == tid && c.text.starts_with(&format!("fsync({dir_fd})"))
    });
    // Nothing touches the token file itself between the temp file's
    // creation and the rename (no truncate-and-write).
    assert!(
        !calls[open..rename]
            .iter()
            .any(|c| c.text.starts_with("openat(")
                && (c.text.contains(&format!("\"{}\"", target.display()))
                    || c.text.contains("\"c1.token\""))),
        "the token file is never opened for writing"
    );
    eprintln!(
        "figures: strace: {}\n  {}\n  {}\n  {}\n  {}\n  {}",
        calls[dir_open].text,
        calls[open].text,
        calls[write].text.chars().take(60).collect::<String>(),
        calls[fsync].text,
        calls[rename].text,
        calls[dir_fsync].text
    );
    assert!(
        dir_open < open && open < write && write < fsync && fsync < rename && rename < dir_fsync
    );
}
