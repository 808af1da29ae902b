//! Following the config file and its drop-in directory on disk.
//!
//! The watch is on the file's **parent directory** (non-recursive), not on
//! the file: editors replace the file by renaming a new one over it, which
//! silently ends a watch on the old inode, and a ConfigMap-style `..data`
//! symlink swap names only `..data`. So every event in the directory counts,
//! and the caller re-reads the file (through its symlinks) and compares its
//! content. When the config path is a symlink into another directory, that
//! directory is watched too. The drop-in directory is watched the same way,
//! with its parent (where it appears, vanishes or is renamed) and its
//! symlink target; the set follows `include_dir` after every reload.

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

/// A watch on the directories that decide the config's content: the main
/// file's and its drop-in directory.
pub struct ConfigWatcher {
    watcher: RecommendedWatcher,
    events: mpsc::Receiver<()>,
    path: PathBuf,
    /// Each watched directory, with the (device, inode) it had when the
    /// watch was set: a directory removed and made again needs a new watch.
    dirs: Vec<(PathBuf, (u64, u64))>,
}

impl ConfigWatcher {
    /// Watch the directories of `path` (and of its symlink target), and
    /// the drop-in directory `include_dir` (see [`ConfigWatcher::follow`]).
    pub fn new(path: &Path, include_dir: Option<&Path>) -> notify::Result<ConfigWatcher> {
        let (tx, events) = mpsc::channel(1);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| changes_content(&e.kind)) {
                // A full channel already holds a wake-up: nothing is lost.
                let _ = tx.try_send(());
            }
        })?;
        let mut this = ConfigWatcher {
            watcher,
            events,
            path: path.to_owned(),
            dirs: Vec::new(),
        };
        for dir in parents(path) {
            this.watch(&dir)?;
        }
        this.follow(include_dir);
        Ok(this)
    }

    /// Watch `include_dir` (and its symlink target and parent, where a
    /// missing one would appear) as well as the main file's directories,
    /// and nothing else. Returns whether a directory is newly watched: its
    /// files may have changed before the watch was set, so the caller
    /// reads them once more. A directory that cannot be watched is logged.
    pub fn follow(&mut self, include_dir: Option<&Path>) -> bool {
        let mut wanted = parents(&self.path);
        if let Some(dir) = include_dir {
            wanted.extend(dir.parent().map(Path::to_path_buf));
            wanted.push(dir.to_path_buf());
            wanted.extend(std::fs::canonicalize(dir).ok());
        }
        let mut added = false;
        let current = std::mem::take(&mut self.dirs);
        for (dir, identity) in current {
            if wanted.contains(&dir) && self::identity(&dir) == Some(identity) {
                self.dirs.push((dir, identity));
            } else {
                let _ = self.watcher.unwatch(&dir);
            }
        }
        for dir in wanted {
            if self.dirs.iter().any(|(d, _)| *d == dir) || !dir.is_dir() {
                continue;
            }
            match self.watch(&dir) {
                Ok(()) => added = true,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the drop-in directory: its edits are applied on SIGHUP or `mcprom reload` only")
                }
            }
        }
        added
    }

    fn watch(&mut self, dir: &Path) -> notify::Result<()> {
        if self.dirs.iter().any(|(d, _)| d == dir) {
            return Ok(());
        }
        self.watcher.watch(dir, RecursiveMode::NonRecursive)?;
        if let Some(identity) = identity(dir) {
            self.dirs.push((dir.to_owned(), identity));
        }
        Ok(())
    }

    /// The watched directories.
    pub fn dirs(&self) -> Vec<&Path> {
        self.dirs.iter().map(|(d, _)| d.as_path()).collect()
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

/// The directories of `path` and of its symlink target.
fn parents(path: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for file in [Some(path.to_owned()), std::fs::canonicalize(path).ok()]
        .into_iter()
        .flatten()
    {
        if let Some(dir) = file.parent()
            && !dirs.iter().any(|d| d == dir)
        {
            dirs.push(dir.to_owned());
        }
    }
    dirs
}

/// The (device, inode) of a directory, when it exists.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reading_the_file_is_not_a_change_but_writing_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mcprom.toml");
        std::fs::write(&path, "# v1\n").unwrap();
        let mut watcher = ConfigWatcher::new(&path, None).unwrap();
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
