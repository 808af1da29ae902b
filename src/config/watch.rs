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

/// Longest wait after the first event of a burst: a directory written to
/// more often than [`DEBOUNCE`] is still re-read this often.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(3);

/// Whether an event can change what the config path reads as. Reads and
/// opens cannot — and must be ignored: re-reading the file after an event
/// causes an access event of its own, which would loop forever.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

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
                if event.is_ok_and(|e| changes_content(&e.kind)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reading_the_file_is_not_a_change_but_writing_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mcprom.toml");
        std::fs::write(&path, "# v1\n").unwrap();
        let mut watcher = ConfigWatcher::new(&path).unwrap();
        // Reads (what mcprom itself does after every event) must stay quiet.
        for _ in 0..3 {
            std::fs::read(&path).unwrap();
        }
        let quiet = tokio::time::timeout(Duration::from_millis(500), watcher.event()).await;
        assert!(quiet.is_err(), "a read was taken for a change");
        std::fs::write(&path, "# v2\n").unwrap();
        tokio::time::timeout(Duration::from_secs(10), watcher.event())
            .await
            .expect("a write is a change");
    }
}
