//! Edit-to-token latency: how long after a cluster is added to the config
//! file its token is on disk, with the real binaries.
//!
//! ```sh
//! cargo build --release --bins --examples
//! target/release/examples/edit_latency [ROUNDS]     # default 20
//! ```
//!
//! Starts `mcprom-sim` with ROUNDS + 1 clusters and `mcprom run` serving
//! only c1, then adds one cluster per round by rewriting the config file
//! (write to a temp file, rename over: how editors save) and times until the
//! new cluster's token file exists. Prints every sample and the median.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    // target/<profile>/examples/edit_latency → target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned()
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(dir: &Path, ready: &serde_json::Value, clusters: usize) -> String {
    let mut text = format!(
        "[prometheus]\nreload = \"never\"\n[defaults]\ntoken_dir = \"{}\"\n[metrics]\nlisten = \"\"\n[control]\nsocket = \"{}\"\n",
        dir.join("tokens").display(),
        dir.join("control.sock").display()
    );
    for c in ready["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .take(clusters)
    {
        text.push_str(&format!(
            "[[cluster]]\nname = \"{}\"\nservice_account = \"kube-system/prometheus-test\"\n[cluster.credentials]\nkubeconfig = \"{}\"\n",
            c["name"].as_str().expect("name"),
            c["kubeconfig"].as_str().expect("kubeconfig"),
        ));
    }
    text
}

fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ROUNDS is a number"))
        .unwrap_or(20);
    let dir = std::env::temp_dir().join(format!("mcprom-edit-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bins = bin_dir();
    let mut sim = Command::new(bins.join("mcprom-sim"))
        .arg("--dir")
        .arg(dir.join("sim"))
        .args(["--clusters", &(rounds + 1).to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start mcprom-sim (build it first: cargo build --release --bins)");
    let mut line = String::new();
    BufReader::new(sim.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    let _sim = Kill(sim);
    let ready: serde_json::Value = serde_json::from_str(&line).expect("ready JSON");
    let path = dir.join("mcprom.toml");
    save(&path, &config(&dir, &ready, 1));
    let _daemon = Kill(
        Command::new(bins.join("mcprom"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start mcprom"),
    );
    let wait_for = |file: &Path| {
        let started = Instant::now();
        while !file.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no token for {}",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        started.elapsed()
    };
    wait_for(&dir.join("tokens/c1.token"));
    let mut samples = Vec::new();
    for n in 2..=rounds + 1 {
        std::thread::sleep(Duration::from_millis(700));
        let started = Instant::now();
        save(&path, &config(&dir, &ready, n));
        let file = dir.join(format!("tokens/c{n}.token"));
        while !file.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no token for c{n}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let took = started.elapsed();
        println!("c{n}: {:.0} ms", took.as_secs_f64() * 1000.0);
        samples.push(took);
    }
    samples.sort();
    let median = samples[samples.len() / 2];
    println!(
        "edit-to-token latency over {rounds} edits: median {:.0} ms, min {:.0} ms, max {:.0} ms (debounce 500 ms included)",
        median.as_secs_f64() * 1000.0,
        samples[0].as_secs_f64() * 1000.0,
        samples[samples.len() - 1].as_secs_f64() * 1000.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
