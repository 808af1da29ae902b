//! Drop-in files (`mcprom.d/*.toml` beside `mcprom.toml`) under the real
//! daemon against the simulator: added, edited, removed and renamed files,
//! a ConfigMap-style symlink swap, a directory made after the start, a name
//! used in two files, an invalid drop-in, and `mcprom check` over them all.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

/// A simulator, a main file without clusters, and its drop-in directory.
struct World {
    sim: Sim,
    work: tempfile::TempDir,
    /// `work/mcprom.toml`.
    main: PathBuf,
    /// `work/mcprom.d`, not made yet.
    dropins: PathBuf,
    /// Each simulated cluster's `[[cluster]]` table, by name.
    tables: HashMap<String, String>,
}

impl World {
    fn new(conf: &Conf, clusters: usize) -> World {
        let sim = Sim::start(&[
            "--clusters",
            &clusters.to_string(),
            "--min-expiration",
            "1s",
        ]);
        let work = tempfile::tempdir().unwrap();
        let generated =
            std::fs::read_to_string(write_config(&sim, work.path(), conf, None)).unwrap();
        let first = generated.find("[[cluster]]").expect("clusters");
        let main = work.path().join("mcprom.toml");
        std::fs::write(&main, &generated[..first]).unwrap();
        let tables = generated[first..]
            .split_inclusive("\n\n")
            .map(|table| {
                let name = table
                    .lines()
                    .find_map(|l| l.strip_prefix("name = \""))
                    .and_then(|l| l.strip_suffix('"'))
                    .expect("a name")
                    .to_owned();
                (name, table.to_owned())
            })
            .collect();
        World {
            sim,
            dropins: work.path().join("mcprom.d"),
            work,
            main,
            tables,
        }
    }

    /// The `[[cluster]]` tables of `names`, one after the other.
    fn tables(&self, names: &[&str]) -> String {
        names.iter().map(|n| self.tables[*n].as_str()).collect()
    }

    /// Writes the drop-in `file` holding `names` the way configuration
    /// management does: a hidden temporary file renamed over it.
    fn put(&self, file: &str, names: &[&str]) {
        std::fs::create_dir_all(&self.dropins).unwrap();
        let temp = self.dropins.join(format!(".{file}.tmp"));
        std::fs::write(&temp, self.tables(names)).unwrap();
        std::fs::rename(&temp, self.dropins.join(file)).unwrap();
    }

    fn token(&self, cluster: &str) -> PathBuf {
        self.work.path().join(format!("tokens/{cluster}.token"))
    }

    fn start(&self) -> Daemon {
        Daemon::start(&self.main, "info")
    }

    async fn token_appears(&self, cluster: &str) {
        let token = self.token(cluster);
        eventually(
            Duration::from_secs(20),
            &format!("{cluster}'s token"),
            || async { token.exists().then_some(()) },
        )
        .await;
    }
}

fn mcprom(args: &[&str], config: &Path) -> Output {
    Command::new(MCPROM)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Ten-second tokens refreshed at half-life: a cluster that rotates
/// requests a token about every 5 s.
fn rotating() -> Conf {
    Conf {
        expiration: "10s",
        refresh_at: 0.5,
        ..Conf::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_drop_in_is_applied_and_other_clusters_see_no_request() {
    let w = World::new(&Conf::default(), 3);
    w.put("c1.toml", &["c1"]);
    let daemon = w.start();
    w.token_appears("c1").await;
    w.put("c2.toml", &["c2"]);
    w.token_appears("c2").await;
    assert_eq!(w.sim.token_requests("c1").await, 1, "c1 untouched");
    assert_eq!(w.sim.token_requests("c3").await, 0);
    assert_eq!(
        daemon.count("configuration reloaded"),
        1,
        "{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_in_edited_in_place_is_applied() {
    let w = World::new(&Conf::default(), 3);
    w.put("fleet.toml", &["c1"]);
    let _daemon = w.start();
    w.token_appears("c1").await;
    // Truncate and write the same inode, as `>` in a shell does.
    std::fs::write(w.dropins.join("fleet.toml"), w.tables(&["c1", "c2"])).unwrap();
    w.token_appears("c2").await;
    assert_eq!(w.sim.token_requests("c1").await, 1, "c1 untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_drop_in_stops_its_clusters_and_leaves_their_token_files() {
    let w = World::new(&rotating(), 2);
    w.put("c1.toml", &["c1"]);
    w.put("c2.toml", &["c2"]);
    let daemon = w.start();
    w.token_appears("c2").await;
    std::fs::remove_file(w.dropins.join("c2.toml")).unwrap();
    eventually(Duration::from_secs(15), "c2's removal", || async {
        daemon
            .log()
            .contains("rotation stopped, its token file is left in place")
            .then_some(())
    })
    .await;
    let requests = w.sim.token_requests("c2").await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(w.sim.token_requests("c2").await, requests, "no more for c2");
    assert!(w.token("c2").exists(), "its token file is left in place");
    assert!(w.sim.token_requests("c1").await > 1, "c1 kept rotating");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_drop_in_keeps_its_clusters_and_one_renamed_away_drops_them() {
    let w = World::new(&Conf::default(), 2);
    w.put("c1.toml", &["c1"]);
    let daemon = w.start();
    w.token_appears("c1").await;
    std::fs::rename(w.dropins.join("c1.toml"), w.dropins.join("10-c1.toml")).unwrap();
    // The file list changed (a reload), its cluster did not (no request).
    eventually(Duration::from_secs(15), "the rename applied", || async {
        (daemon.count("configuration reloaded") == 1).then_some(())
    })
    .await;
    assert_eq!(w.sim.token_requests("c1").await, 1, "{}", daemon.log());
    assert_eq!(daemon.count("rotation stopped"), 0, "{}", daemon.log());
    // Renamed to a name that is not read: its cluster goes.
    std::fs::rename(
        w.dropins.join("10-c1.toml"),
        w.dropins.join("10-c1.toml.disabled"),
    )
    .unwrap();
    eventually(Duration::from_secs(15), "c1's removal", || async {
        daemon
            .log()
            .contains("rotation stopped, its token file is left in place")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_symlink_swap_of_the_directory_is_applied() {
    // mcprom.d/c1.toml -> ..data/c1.toml, ..data -> ..v1, as kubelet lays
    // out a mounted ConfigMap.
    let w = World::new(&Conf::default(), 3);
    let d = &w.dropins;
    std::fs::create_dir_all(d.join("..v1")).unwrap();
    std::fs::write(d.join("..v1/c1.toml"), w.tables(&["c1"])).unwrap();
    symlink("..v1", d.join("..data")).unwrap();
    symlink("..data/c1.toml", d.join("c1.toml")).unwrap();
    let _daemon = w.start();
    w.token_appears("c1").await;
    // The update: a new version of the same key, swapped in atomically.
    // No link of the directory itself changes but `..data`.
    std::fs::create_dir_all(d.join("..v2")).unwrap();
    std::fs::write(d.join("..v2/c1.toml"), w.tables(&["c1", "c2"])).unwrap();
    symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..v1")).unwrap();
    w.token_appears("c2").await;
    assert_eq!(w.sim.token_requests("c1").await, 1, "c1 untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_in_directory_made_after_the_start_is_read_and_watched() {
    let w = World::new(&Conf::default(), 3);
    std::fs::write(
        &w.main,
        format!(
            "{}{}",
            std::fs::read_to_string(&w.main).unwrap(),
            w.tables(&["c1"])
        ),
    )
    .unwrap();
    let _daemon = w.start();
    w.token_appears("c1").await;
    w.put("c2.toml", &["c2"]);
    w.token_appears("c2").await;
    // Now watched: a later file is seen too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.put("c3.toml", &["c3"]);
    w.token_appears("c3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_used_in_two_files_is_refused_naming_both_places() {
    let w = World::new(&Conf::default(), 2);
    w.put("a.toml", &["c1"]);
    let daemon = w.start();
    w.token_appears("c1").await;
    // b.toml defines c1 again (with c2's credentials).
    let twin = w
        .tables(&["c2"])
        .replacen("name = \"c2\"", "name = \"c1\"", 1);
    std::fs::write(w.dropins.join("b.toml"), twin).unwrap();
    let a = w.dropins.join("a.toml");
    let b = w.dropins.join("b.toml");
    let both = format!(
        "{}:2:8: cluster \"c1\": key \"name\": duplicate cluster name \"c1\", first used at {}:2:8",
        b.display(),
        a.display()
    );
    let out = mcprom(&["reload"], &w.main);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(stderr(&out).contains(&both), "{}", stderr(&out));
    let out = mcprom(&["check"], &w.main);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(stderr(&out).contains(&both), "{}", stderr(&out));
    assert!(daemon.log().contains(&both), "{}", daemon.log());
    assert_eq!(
        w.sim.token_requests("c2").await,
        0,
        "nothing of b.toml applied"
    );
    assert_eq!(w.sim.token_requests("c1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_drop_in_keeps_the_last_good_set_rotating_and_its_fix_is_applied() {
    let w = World::new(&rotating(), 2);
    w.put("c1.toml", &["c1"]);
    let daemon = w.start();
    w.token_appears("c1").await;
    let before = read_token(&w.token("c1")).unwrap();
    let typo = w
        .tables(&["c2"])
        .replace("service_account", "servce_account");
    std::fs::write(w.dropins.join("c2.toml"), typo).unwrap();
    let at = format!(
        "{}:3:1: cluster \"c2\": unknown key \"servce_account\" (did you mean \"service_account\"?)",
        w.dropins.join("c2.toml").display()
    );
    eventually(Duration::from_secs(15), "the error in the log", || async {
        daemon.log().contains(&at).then_some(())
    })
    .await;
    assert!(
        daemon
            .log()
            .contains("configuration reload failed, keeping the last good config"),
        "{}",
        daemon.log()
    );
    // The last good set keeps rotating.
    eventually(Duration::from_secs(20), "c1 rotating", || async {
        read_token(&w.token("c1")).filter(|t| *t != before)
    })
    .await;
    assert!(!w.token("c2").exists());
    assert_eq!(w.sim.token_requests("c2").await, 0);
    // The fix, saved like the mistake: picked up without a reload.
    w.put("c2.toml", &["c2"]);
    w.token_appears("c2").await;
}

#[test]
fn mcprom_check_covers_the_main_file_and_every_drop_in() {
    let w = World::new(&Conf::default(), 3);
    // --config /x/other.toml reads /x/other.d.
    let main = w.work.path().join("other.toml");
    std::fs::rename(&w.main, &main).unwrap();
    let dir = w.work.path().join("other.d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.toml"), w.tables(&["c1"])).unwrap();
    std::fs::write(
        dir.join("b.toml"),
        w.tables(&["c2"])
            .replace("kube-system/prometheus-test", "no-slash"),
    )
    .unwrap();
    std::fs::write(
        dir.join("c.toml"),
        format!("[limits]\nconcurrent_requests = 4\n{}", w.tables(&["c3"])),
    )
    .unwrap();
    // Not read: hidden, and not *.toml.
    std::fs::write(dir.join(".d.toml"), "not toml at all [").unwrap();
    std::fs::write(dir.join("README"), "not toml at all [").unwrap();
    let out = mcprom(&["check"], &main);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    // Each problem's first line (`mcprom check` draws the source line and a
    // caret below it).
    let problems: Vec<String> = stderr(&out)
        .lines()
        .filter(|l| l.starts_with('/'))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        problems,
        [
            format!(
                "{}:3:19: cluster \"c2\": key \"service_account\": \"no-slash\" has no '/'",
                dir.join("b.toml").display()
            ),
            format!(
                "{}:1:1: [limits] is not allowed in a drop-in file: a drop-in holds only [[cluster]] tables",
                dir.join("c.toml").display(),
            ),
        ],
        "{}",
        stderr(&out)
    );
    std::fs::write(dir.join("b.toml"), w.tables(&["c2"])).unwrap();
    std::fs::write(dir.join("c.toml"), w.tables(&["c3"])).unwrap();
    let out = mcprom(&["check"], &main);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "{} + 3 files in {}: OK (3 clusters)",
            main.display(),
            dir.display()
        )
    );
}

#[test]
fn a_consumer_may_name_a_cluster_of_a_drop_in_but_not_one_no_file_has() {
    let w = World::new(&Conf::default(), 2);
    w.put("c2.toml", &["c2"]);
    let main = std::fs::read_to_string(&w.main).unwrap();
    let consumer = |clusters: &str| {
        format!(
            "{main}\n[[consumer]]\nname = \"agent\"\ncommand = [\"/bin/true\"]\nclusters = [{clusters}]\n{}",
            w.tables(&["c1"])
        )
    };
    // c1 lives in the main file, c2 in the drop-in.
    std::fs::write(&w.main, consumer("\"c1\", \"c2\"")).unwrap();
    let out = mcprom(&["check"], &w.main);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // c3 is in no file: refused at the name, in the main file.
    std::fs::write(&w.main, consumer("\"c2\", \"c3\"")).unwrap();
    let out = mcprom(&["check"], &w.main);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    let text = std::fs::read_to_string(&w.main).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("clusters = [\"c2\""))
        .expect("the clusters line")
        + 1;
    let first = stderr(&out).lines().next().unwrap_or_default().to_owned();
    assert_eq!(
        first,
        format!(
            "{}:{line}:19: consumer \"agent\": key \"clusters\": no [[cluster]] is named \"c3\"",
            w.main.display()
        ),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("help: did you mean"),
        "{}",
        stderr(&out)
    );
}
