//! The benchmark: the real release binaries of `mcprom` and `mcprom-sim`
//! in their own processes, side by side with the kubectl + curl script
//! people run today, against the same simulator.
//!
//! ```sh
//! cargo build --release --bins --examples
//! target/release/examples/bench                           # N = 1, 100, 1000, 10000
//! target/release/examples/bench --clusters 1,100 --idle 20 --steady 20
//! ```
//!
//! For each N it reports cold start (until all N token files exist, with
//! the CPU seconds mcprom and the simulator spent on it: they share the
//! machine's cores), reloads for the N simultaneous first rotations, idle
//! CPU and wake-ups with 1 h tokens, steady-state rotations/s and CPU per
//! rotation with 10 s tokens, peak RSS (VmHWM, the higher of the two
//! daemons), and config edit → new cluster's token on disk. The N clusters
//! live in drop-in files, one per cluster (`mcprom.d/NAME.toml`, as a fleet
//! tool writes them); the edits alternate between adding a drop-in file and
//! adding a cluster to the main file, and each kind has its median. The baseline
//! runs `kubectl create token … > F.tmp && mv F.tmp F && curl -X POST
//! …/-/reload` for a sample of rotations and reports CPU (its whole process
//! tree, from getrusage), wall time and peak RSS per rotation.
//! Results go to stdout as Markdown (docs/benchmarks.md holds a run).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Args {
    clusters: Vec<usize>,
    idle: u64,
    steady: u64,
    baseline: usize,
    edits: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        clusters: vec![1, 100, 1000, 10_000],
        idle: 60,
        steady: 30,
        baseline: 10,
        edits: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--clusters" => {
                args.clusters = value().split(',').map(|n| n.parse().expect("N")).collect()
            }
            "--idle" => args.idle = value().parse().expect("seconds"),
            "--steady" => args.steady = value().parse().expect("seconds"),
            "--baseline" => args.baseline = value().parse().expect("count"),
            "--edits" => args.edits = value().parse().expect("count"),
            other => {
                panic!("unknown flag {other}; see the doc comment at the top of examples/bench.rs")
            }
        }
    }
    args
}

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ticks_per_second() -> f64 {
    // SAFETY-free: sysconf is a plain libc query.
    let t = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    t as f64
}

/// utime + stime of a process (all threads), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (utime + stime) / ticks_per_second()
}

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Context switches of all threads: the wake-ups.
fn wakeups(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .map(|t| {
            let text = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            text.lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches")
                        || l.starts_with("nonvoluntary_ctxt_switches")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// A loopback stand-in for Prometheus that counts `POST /-/reload`.
fn reload_receiver() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                loop {
                    let Ok(n) = stream.read(&mut chunk) else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        if buf.starts_with(b"POST /-/reload") {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        buf.drain(..end + 4);
                        if stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, count)
}

struct SimRun {
    process: Proc,
    ready: serde_json::Value,
    control: String,
}

fn start_sim(dir: &Path, clusters: usize) -> SimRun {
    let mut child = Command::new(bin_dir().join("mcprom-sim"))
        .arg("--dir")
        .arg(dir)
        .args([
            "--shared-port",
            "--clusters",
            &clusters.to_string(),
            "--min-expiration",
            "1s",
        ])
        // Extra simulator flags, e.g. `--no-session-tickets` to measure
        // rotations without TLS session resumption.
        .args(
            std::env::var("BENCH_SIM_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("start mcprom-sim (cargo build --release --bins)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    let ready: serde_json::Value = serde_json::from_str(&line).expect("ready JSON");
    let control = ready["control"].as_str().expect("control").to_owned();
    SimRun {
        process: Proc(child),
        ready,
        control,
    }
}

fn tokens_issued(control: &str) -> u64 {
    let out = Command::new("curl")
        .args(["-s", &format!("{control}/stats")])
        .output()
        .expect("curl");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    stats["clusters"]
        .as_object()
        .map(|m| m.values().filter_map(|c| c["tokens_issued"].as_u64()).sum())
        .unwrap_or(0)
}

/// The main file: every table but the clusters, plus the clusters named
/// in `extra` (those the benchmark's main-file edits add).
fn main_config(
    dir: &Path,
    tokens: &Path,
    sim: &SimRun,
    expiration: &str,
    reload_url: &str,
    extra: &[usize],
) -> String {
    let mut text = format!(
        "[prometheus]\nurl = \"{reload_url}\"\nreload = \"on_rotation\"\ndelay = \"2s\"\n[defaults]\ntoken_dir = \"{}\"\nexpiration = \"{expiration}\"\nrefresh_at = 0.5\n[metrics]\nlisten = \"\"\n[control]\nsocket = \"{}\"\n",
        tokens.display(),
        dir.join("control.sock").display()
    );
    for &i in extra {
        text.push_str(&cluster_table(sim, i));
    }
    text
}

/// The `[[cluster]]` table of the simulator's cluster number `i` (0-based).
fn cluster_table(sim: &SimRun, i: usize) -> String {
    let c = &sim.ready["clusters"][i];
    format!(
        "[[cluster]]\nname = \"{}\"\nservice_account = \"kube-system/prometheus-test\"\n[cluster.credentials]\nkubeconfig = \"{}\"\n",
        c["name"].as_str().expect("name"),
        c["kubeconfig"].as_str().expect("kubeconfig")
    )
}

/// The drop-in file of the simulator's cluster number `i`: one file per
/// cluster, as a fleet tool (Ansible, Puppet, Salt, a script) lays them out
/// from its inventory, named after the cluster.
fn fragment_path(dropins: &Path, sim: &SimRun, i: usize) -> PathBuf {
    dropins.join(format!(
        "{}.toml",
        sim.ready["clusters"][i]["name"].as_str().expect("name")
    ))
}

fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

fn count_tokens(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".token"))
                .count()
        })
        .unwrap_or(0)
}

fn start_mcprom(config: &Path) -> Proc {
    Proc(
        Command::new(bin_dir().join("mcprom"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .expect("start mcprom"),
    )
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < timeout, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
    started.elapsed()
}

/// Wait until `dir` holds `n` token files. Listing 10,000 files costs a few
/// milliseconds of CPU, and this machine has two cores that mcprom and the
/// simulator need: poll every 1 % of the time waited so far (2–50 ms), so
/// the watcher costs little and the figure is late by at most 1 %.
fn wait_for_tokens(what: &str, dir: &Path, n: usize) -> Duration {
    let started = Instant::now();
    while count_tokens(dir) < n {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "timed out: {what}"
        );
        let pause =
            (started.elapsed() / 100).clamp(Duration::from_millis(2), Duration::from_millis(50));
        std::thread::sleep(pause);
    }
    started.elapsed()
}

#[derive(Default)]
struct Row {
    n: usize,
    cold_start: f64,
    reloads_first_batch: u64,
    idle_cpu_pct: f64,
    idle_wakeups_per_s: f64,
    steady_rotations_per_s: f64,
    cpu_per_rotation_ms: f64,
    peak_rss_mib: f64,
    edit_dropin_ms: f64,
    edit_main_ms: f64,
    /// VmHWM of each daemon: 1 h tokens (cold start, idle, edits) and
    /// 10 s tokens (cold start, steady state).
    peak_rss_edits_mib: f64,
    peak_rss_steady_mib: f64,
    cold_cpu_mcprom: f64,
    cold_cpu_sim: f64,
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(0.0)
}

/// Files of every run stay until the whole benchmark ends: on ext4,
/// creating files shortly after deleting thousands costs far more (the
/// inode allocator skips recently freed inodes), which would charge one
/// run's clean-up to the next run's cold start.
fn measure(n: usize, args: &Args, dir: &Path) -> Row {
    std::fs::create_dir_all(dir).expect("dir");
    let sim = start_sim(&dir.join("sim"), n + args.edits);
    let (reload_url, reloads) = reload_receiver();
    let path = dir.join("mcprom.toml");
    let tokens = dir.join("tokens");
    let sim_pid = sim.process.0.id();
    let mut row = Row {
        n,
        ..Row::default()
    };

    // The clusters live in drop-in files, one per cluster; the main file
    // holds the rest.
    let dropins = dir.join("mcprom.d");
    std::fs::create_dir_all(&dropins).expect("drop-in dir");
    for i in 0..n {
        save(&fragment_path(&dropins, &sim, i), &cluster_table(&sim, i));
    }

    // Cold start with 1 h tokens, then idle.
    save(
        &path,
        &main_config(dir, &tokens, &sim, "1h", &reload_url, &[]),
    );
    let sim_cpu0 = cpu_seconds(sim_pid);
    let started = Instant::now();
    let daemon = start_mcprom(&path);
    wait_for_tokens("cold start", &tokens, n);
    row.cold_start = started.elapsed().as_secs_f64();
    row.cold_cpu_mcprom = cpu_seconds(daemon.0.id());
    row.cold_cpu_sim = cpu_seconds(sim_pid) - sim_cpu0;
    std::thread::sleep(Duration::from_secs(5));
    row.reloads_first_batch = reloads.load(Ordering::SeqCst);
    // Let the blocking-pool threads of the cold start retire (10 s keep-alive),
    // so the idle window sees only what idles.
    std::thread::sleep(Duration::from_secs(8));
    let pid = daemon.0.id();
    let (cpu0, wake0) = (cpu_seconds(pid), wakeups(pid));
    std::thread::sleep(Duration::from_secs(args.idle));
    let (cpu1, wake1) = (cpu_seconds(pid), wakeups(pid));
    row.idle_cpu_pct = (cpu1 - cpu0) / args.idle as f64 * 100.0;
    row.idle_wakeups_per_s = wake1.saturating_sub(wake0) as f64 / args.idle as f64;

    // Config edit → new cluster's token on disk: odd edits add a drop-in
    // file (written aside, renamed in), even ones add the cluster to the
    // main file (rewritten the same way).
    let (mut by_dropin, mut by_main) = (Vec::new(), Vec::new());
    let mut in_main = Vec::new();
    let mut added_dropins = Vec::new();
    for k in 1..=args.edits {
        let i = n + k - 1;
        let edit = if k % 2 == 1 {
            let fragment = fragment_path(&dropins, &sim, i);
            save(&fragment, &cluster_table(&sim, i));
            added_dropins.push(fragment);
            &mut by_dropin
        } else {
            in_main.push(i);
            save(
                &path,
                &main_config(dir, &tokens, &sim, "1h", &reload_url, &in_main),
            );
            &mut by_main
        };
        let started = Instant::now();
        let name = sim.ready["clusters"][i]["name"].as_str().expect("name");
        let file = tokens.join(format!("{name}.token"));
        wait_until("edit to token", Duration::from_secs(60), || file.exists());
        edit.push(started.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(600));
    }
    row.edit_dropin_ms = median(&mut by_dropin);
    row.edit_main_ms = median(&mut by_main);
    let first_peak = status_field(daemon.0.id(), "VmHWM:") as f64 / 1024.0;
    drop(daemon);

    // Steady state: 10 s tokens refreshed at half-life, fresh start.
    let tokens = dir.join("tokens-10s");
    for fragment in added_dropins {
        std::fs::remove_file(fragment).expect("remove an added drop-in");
    }
    save(
        &path,
        &main_config(dir, &tokens, &sim, "10s", &reload_url, &[]),
    );
    let daemon = start_mcprom(&path);
    wait_for_tokens("steady cold start", &tokens, n);
    std::thread::sleep(Duration::from_secs(6));
    let pid = daemon.0.id();
    let (cpu0, issued0, t0) = (
        cpu_seconds(pid),
        tokens_issued(&sim.control),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(args.steady));
    let (cpu1, issued1) = (cpu_seconds(pid), tokens_issued(&sim.control));
    let rotations = issued1.saturating_sub(issued0).max(1) as f64;
    row.steady_rotations_per_s = rotations / t0.elapsed().as_secs_f64();
    row.cpu_per_rotation_ms = (cpu1 - cpu0) / rotations * 1000.0;
    // The higher of the two daemons' peaks: 1 h tokens (cold start, idle,
    // edits) and 10 s tokens (cold start, steady state).
    row.peak_rss_edits_mib = first_peak;
    row.peak_rss_steady_mib = status_field(pid, "VmHWM:") as f64 / 1024.0;
    row.peak_rss_mib = first_peak.max(row.peak_rss_steady_mib);
    drop(daemon);
    row
}

struct Baseline {
    cpu_ms: f64,
    wall_ms: f64,
    peak_rss_mib: f64,
    reloads_per_rotation: f64,
}

fn kubectl() -> PathBuf {
    let dispatcher = std::fs::canonicalize(
        String::from_utf8(
            Command::new("sh")
                .args(["-c", "command -v kubectl"])
                .output()
                .expect("sh")
                .stdout,
        )
        .expect("utf8")
        .trim(),
    )
    .expect("kubectl on PATH");
    let versioned = dispatcher.with_file_name("kubectl.1.32");
    if versioned.exists() {
        versioned
    } else {
        dispatcher
    }
}

fn children_rusage() -> (f64, f64) {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage");
    let cpu = usage.user_time().tv_sec() as f64
        + usage.user_time().tv_usec() as f64 / 1e6
        + usage.system_time().tv_sec() as f64
        + usage.system_time().tv_usec() as f64 / 1e6;
    (cpu, usage.max_rss() as f64 / 1024.0)
}

fn baseline(samples: usize) -> Baseline {
    let dir = std::env::temp_dir().join(format!("mcprom-bench-baseline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let sim = start_sim(&dir.join("sim"), 1);
    let (reload_url, reloads) = reload_receiver();
    let kubeconfig = sim.ready["clusters"][0]["kubeconfig"]
        .as_str()
        .expect("kubeconfig")
        .to_owned();
    let file = dir.join("c1.token");
    let script = format!(
        "{} --kubeconfig {kubeconfig} create token prometheus-test -n kube-system --duration 1h > {f}.tmp && mv {f}.tmp {f} && curl -s -X POST {reload_url}/-/reload",
        kubectl().display(),
        f = file.display()
    );
    let mut cpu = Vec::new();
    let mut wall = Vec::new();
    let mut peak: f64 = 0.0;
    for _ in 0..samples {
        let (before, _) = children_rusage();
        let started = Instant::now();
        let status = Command::new("sh")
            .args(["-c", &script])
            .status()
            .expect("sh");
        assert!(status.success(), "baseline rotation failed: {script}");
        wall.push(started.elapsed().as_secs_f64() * 1000.0);
        let (after, rss) = children_rusage();
        cpu.push((after - before) * 1000.0);
        peak = peak.max(rss);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let _ = std::fs::remove_dir_all(&dir);
    Baseline {
        cpu_ms: median(&mut cpu),
        wall_ms: median(&mut wall),
        peak_rss_mib: peak,
        reloads_per_rotation: reloads.load(Ordering::SeqCst) as f64 / samples as f64,
    }
}

fn main() {
    let args = parse_args();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = status_field_meminfo();
    println!("# mcprom benchmark\n");
    println!(
        "machine: {cores} cores, {mem:.1} GiB; mcprom and mcprom-sim release builds from {}\n",
        bin_dir().display()
    );
    let base = baseline(args.baseline);
    println!(
        "baseline (kubectl.1.32 create token > F.tmp && mv && curl -X POST /-/reload), median of {}: {:.1} ms CPU, {:.1} ms wall, {:.1} MiB peak RSS, {:.2} reloads per rotation\n",
        args.baseline, base.cpu_ms, base.wall_ms, base.peak_rss_mib, base.reloads_per_rotation
    );
    println!(
        "| N | cold start (s) | cold start CPU, mcprom + sim (s) | reloads, first batch | idle CPU (% core) | idle wake-ups/s | rotations/s | CPU/rotation (ms) | baseline ÷ mcprom CPU | peak RSS (MiB) | edit → token median, drop-in / main file (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut thousand = None;
    let mut dirs = Vec::new();
    let mut peaks = Vec::new();
    for &n in &args.clusters {
        let dir = std::env::temp_dir().join(format!("mcprom-bench-{}-{n}", std::process::id()));
        let row = measure(n, &args, &dir);
        dirs.push(dir);
        println!(
            "| {} | {:.2} | {:.1} + {:.1} | {} | {:.3} | {:.2} | {:.1} | {:.3} | {:.0}× | {:.1} | {:.0} / {:.0} |",
            row.n,
            row.cold_start,
            row.cold_cpu_mcprom,
            row.cold_cpu_sim,
            row.reloads_first_batch,
            row.idle_cpu_pct,
            row.idle_wakeups_per_s,
            row.steady_rotations_per_s,
            row.cpu_per_rotation_ms,
            base.cpu_ms / row.cpu_per_rotation_ms.max(1e-9),
            row.peak_rss_mib,
            row.edit_dropin_ms,
            row.edit_main_ms
        );
        peaks.push((n, row.peak_rss_edits_mib, row.peak_rss_steady_mib));
        if n == 1000 {
            thousand = Some(row);
        }
    }
    println!();
    for (n, edits, steady) in peaks {
        println!(
            "peak RSS at N = {n}: {edits:.1} MiB with 1 h tokens (cold start, idle, edits), {steady:.1} MiB with 10 s tokens (cold start, steady state)"
        );
    }
    if let Some(row) = thousand {
        // 1,000 clusters with 1 h tokens refreshed at 80 %: 1,250 rotations
        // an hour. A cluster whose next request is 48 minutes away keeps no
        // TLS session (rotator::KEEP_TLS_WITHIN), so such a rotation costs
        // about what a first token does: the cold start's CPU per cluster
        // (an upper bound: it also counts start-up), not the steady state's
        // resumed rotations.
        let rotations = 1000.0 / 0.8;
        let first_token_ms = row.cold_cpu_mcprom * 1000.0 / 1000.0; // s → ms, per cluster of 1,000
        let mcprom = rotations * first_token_ms / 1000.0 + row.idle_cpu_pct / 100.0 * 3600.0;
        let script = rotations * base.cpu_ms / 1000.0;
        println!(
            "\nCPU per hour at 1,000 clusters with 1 h tokens: mcprom {mcprom:.1} s (rotations + idle), baseline {script:.0} s; ratio {:.0}×",
            script / mcprom.max(1e-9)
        );
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn status_field_meminfo() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .split(' ')
                .next()?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
        / 1024.0
        / 1024.0
}
