//! Where tokens go: atomic writes of token files, adoption of what is
//! already there, stale temp-file cleanup and the token-directory lock.
//!
//! Prometheus re-reads its token file on every scrape, and a missing or
//! partial file fails that scrape. So a token file is only ever replaced by
//! `rename(2)` of a complete, fsynced temp file from the same directory, and
//! the directory is fsynced after the rename so the new name survives a
//! power cut.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::token::{MAX_TOKEN_LEN, Token};

/// Prefix of mcprom's temp files; only files with it are ever cleaned up.
pub const TEMP_PREFIX: &str = ".mcprom-tmp.";
/// Name of the lock file in each token directory.
pub const LOCK_FILE: &str = ".mcprom.lock";

/// Writing a token failed. The previous token file is untouched.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file-system operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("create temp file in", "rename onto", …).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `file_group` names a group that does not exist.
    #[error("group {0:?} (file_group) does not exist on this host; create it or change file_group")]
    NoSuchGroup(String),
}

/// Where a rotator puts tokens.
pub trait Sink: Send + Sync + 'static {
    /// Replace the stored token atomically.
    fn write(&self, token: &Token) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// The token stored now, if there is a readable one.
    fn current(&self) -> Option<Token>;
}

/// A token file written atomically with a mode and an optional group.
#[derive(Debug, Clone)]
pub struct FileSink {
    path: PathBuf,
    mode: u32,
    group: Option<String>,
}

impl FileSink {
    /// A sink for `path`.
    pub fn new(path: PathBuf, mode: u32, group: Option<String>) -> Self {
        FileSink { path, mode, group }
    }

    /// The token file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_blocking(&self, token: &Token) -> Result<(), SinkError> {
        let gid = match &self.group {
            None => None,
            Some(name) => Some(lookup_group(name)?),
        };
        write_atomically(&self.path, token.expose().as_bytes(), self.mode, gid)
    }
}

impl Sink for FileSink {
    async fn write(&self, token: &Token) -> Result<(), SinkError> {
        let this = self.clone();
        let token = token.clone();
        // A blocking task is not cancelled when its caller is: a write that
        // has started always finishes (fsync and all) even during shutdown.
        tokio::task::spawn_blocking(move || this.write_blocking(&token))
            .await
            .unwrap_or_else(|e| {
                Err(SinkError::Io {
                    op: "write",
                    path: self.path.clone(),
                    source: io::Error::other(e.to_string()),
                })
            })
    }

    fn current(&self) -> Option<Token> {
        read_token(&self.path).ok()
    }
}

/// Resolve a group name to its gid.
pub fn lookup_group(name: &str) -> Result<u32, SinkError> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        _ => Err(SinkError::NoSuchGroup(name.to_owned())),
    }
}

/// Read a token file (bounded) and check that it holds a token.
pub fn read_token(path: &Path) -> io::Result<Token> {
    let mut buf = String::new();
    File::open(path)?
        .take(MAX_TOKEN_LEN as u64 + 2)
        .read_to_string(&mut buf)?;
    Token::new(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Temp file, group and mode, write, fsync, rename over the target, fsync
/// the directory. The target is never missing, empty or partial.
pub fn write_atomically(
    target: &Path,
    contents: &[u8],
    mode: u32,
    gid: Option<u32>,
) -> Result<(), SinkError> {
    let dir = parent_dir(target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    fs::create_dir_all(&dir).map_err(|source| SinkError::Io {
        op: "create directory",
        path: dir.clone(),
        source,
    })?;
    let (temp_path, mut file) = create_temp(&dir, &name)?;
    let result = (|| {
        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| SinkError::Io { op, path, source }
        };
        if let Some(gid) = gid {
            std::os::unix::fs::fchown(&file, None, Some(gid))
                .map_err(io("set the group of", &temp_path))?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io("set the mode of", &temp_path))?;
        file.write_all(contents).map_err(io("write", &temp_path))?;
        file.sync_all().map_err(io("fsync", &temp_path))?;
        fs::rename(&temp_path, target).map_err(io("rename temp file onto", target))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory", &dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp_path);
    }
    result
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn create_temp(dir: &Path, name: &str) -> Result<(PathBuf, File), SinkError> {
    let mut last_err = None;
    for _ in 0..8 {
        let path = dir.join(format!(
            "{TEMP_PREFIX}{name}.{:016x}",
            rand::random::<u64>()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(source) => {
                return Err(SinkError::Io {
                    op: "create a temp file in",
                    path: dir.to_owned(),
                    source,
                });
            }
        }
    }
    Err(SinkError::Io {
        op: "create a temp file in",
        path: dir.to_owned(),
        source: last_err.unwrap_or_else(|| io::Error::other("no unique name")),
    })
}

/// Remove temp files mcprom left behind in `dir` (its own prefix only).
/// Returns how many were removed.
pub fn remove_stale_temp_files(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// An exclusive lock on a token directory, held for the life of the daemon.
#[derive(Debug)]
pub struct DirLock {
    _lock: nix::fcntl::Flock<File>,
    dir: PathBuf,
}

impl DirLock {
    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Taking the token-directory lock failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "token directory {} is locked by another mcprom ({holder}); two instances writing the same token files would fight, stop the other one first",
        dir.display()
    )]
    Held {
        /// The directory.
        dir: PathBuf,
        /// Who holds it, as far as the lock file says.
        holder: String,
    },
    /// The lock file could not be opened or written.
    #[error("cannot lock token directory {}: {source}", dir.display())]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Take the exclusive lock of `dir` (creating it if needed) and record our pid in it.
pub fn lock_dir(dir: &Path) -> Result<DirLock, LockError> {
    use nix::fcntl::{Flock, FlockArg};
    let io_err = |source| LockError::Io {
        dir: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(io_err)?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_err)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0).map_err(io_err)?;
            writeln!(lock, "{}", std::process::id()).map_err(io_err)?;
            Ok(DirLock {
                _lock: lock,
                dir: dir.to_owned(),
            })
        }
        Err((_, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
            let pid = fs::read_to_string(&path).unwrap_or_default();
            let pid = pid.trim();
            Err(LockError::Held {
                dir: dir.to_owned(),
                holder: if pid.is_empty() {
                    "pid unknown".to_owned()
                } else {
                    format!("pid {pid}")
                },
            })
        }
        Err((_, errno)) => Err(io_err(io::Error::from(errno))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const TOKEN: &str = "aaaa.bbbb.cccc";

    #[test]
    fn write_replaces_the_file_with_mode_and_no_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub/c1.token");
        write_atomically(&target, b"old.old.old", 0o640, None).unwrap();
        write_atomically(&target, TOKEN.as_bytes(), 0o640, None).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), TOKEN);
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o640);
        let leftovers: Vec<_> = fs::read_dir(target.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    #[test]
    fn group_is_applied_when_given() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("c1.token");
        let gid = nix::unistd::getegid().as_raw();
        write_atomically(&target, TOKEN.as_bytes(), 0o600, Some(gid)).unwrap();
        assert_eq!(fs::metadata(&target).unwrap().gid(), gid);
        assert!(matches!(
            lookup_group("mcprom-no-such-group-xyz"),
            Err(SinkError::NoSuchGroup(_))
        ));
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("c1.token");
        write_atomically(&target, TOKEN.as_bytes(), 0o640, None).unwrap();
        // A directory in the way of the rename makes the last step fail.
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("x"), "x").unwrap();
        assert!(write_atomically(&blocked, TOKEN.as_bytes(), 0o640, None).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), TOKEN);
        assert_eq!(remove_stale_temp_files(dir.path()).unwrap(), 0);
    }

    #[test]
    fn stale_cleanup_removes_only_our_own_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(format!("{TEMP_PREFIX}c1.token.1234")), "x").unwrap();
        fs::write(dir.path().join(".other-tool.tmp"), "x").unwrap();
        fs::write(dir.path().join("c1.token"), TOKEN).unwrap();
        assert_eq!(remove_stale_temp_files(dir.path()).unwrap(), 1);
        assert!(dir.path().join(".other-tool.tmp").exists());
        assert!(dir.path().join("c1.token").exists());
    }

    #[test]
    fn a_second_lock_on_the_same_directory_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_dir(dir.path()).unwrap();
        let err = lock_dir(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        lock_dir(dir.path()).unwrap();
    }

    #[test]
    fn read_token_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        fs::write(&path, "").unwrap();
        assert!(read_token(&path).is_err());
        fs::write(&path, "not a token").unwrap();
        assert!(read_token(&path).is_err());
        fs::write(&path, format!("{TOKEN}\n")).unwrap();
        assert_eq!(read_token(&path).unwrap().expose(), TOKEN);
    }
}
