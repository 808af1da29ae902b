//! Following the config file on disk.
//!
//! The watch is on the file's **parent directory** (non-recursive), not on
//! the file: editors replace the file by renaming a new one over it, which
//! silently ends a watch on the old inode, and a ConfigMap-style `..data`
//! symlink swap names only `..data`. So every event in the directory counts,
//! and the caller re-reads the file (through its symlinks) and compares its
//! content. When the config path is a symlink into another directory, that
//! directory is watched too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet period after the last event before the file is re-read.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// A watch on the directories that decide the config file's content.
pub struct ConfigWatcher {
    _watcher: RecommendedWatcher,
    events: mpsc::Receiver<()>,
    dirs: Vec<PathBuf>,
}

impl ConfigWatcher {
    /// Watch the directories of `path` (and of its symlink target).
    pub fn new(path: &Path) -> notify::Result<ConfigWatcher> {
        let (tx, events) = mpsc::channel(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    // A full channel already holds a wake-up: nothing is lost.
                    let _ = tx.try_send(());
                }
            })?;
        let mut dirs = Vec::new();
        for file in [Some(path.to_owned()), std::fs::canonicalize(path).ok()]
            .into_iter()
            .flatten()
        {
            if let Some(dir) = file.parent()
                && !dirs.iter().any(|d: &PathBuf| d == dir)
            {
                watcher.watch(dir, RecursiveMode::NonRecursive)?;
                dirs.push(dir.to_owned());
            }
        }
        Ok(ConfigWatcher {
            _watcher: watcher,
            events,
            dirs,
        })
    }

    /// The watched directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Wait for the next event in a watched directory. Cancellation-safe:
    /// the caller debounces (see [`DEBOUNCE`]) in its own loop, so that a
    /// select! on other events never loses one.
    pub async fn event(&mut self) {
        if self.events.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}
