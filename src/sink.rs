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
use std::sync::Arc;

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
    /// Something other than a regular file is where a token file (or the
    /// lock file) goes: mcprom never replaces or writes through it.
    #[error(
        "{} is {kind}, not a regular file: mcprom does not replace or write through it; remove it or point token_file elsewhere",
        path.display()
    )]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What is there ("a symbolic link", "a character device", …).
        kind: &'static str,
    },
    /// `file_group` names a group that does not exist.
    #[error("group {0:?} (file_group) does not exist on this host; create it or change file_group")]
    NoSuchGroup(String),
    /// The token directory's lock could not be taken: nothing is written
    /// in a directory mcprom has not locked.
    #[error(transparent)]
    Lock(#[from] LockError),
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
    locks: Option<Arc<DirLocks>>,
}

impl FileSink {
    /// A sink for `path`.
    pub fn new(path: PathBuf, mode: u32, group: Option<String>) -> Self {
        FileSink {
            path,
            mode,
            group,
            locks: None,
        }
    }

    /// Write only while this daemon holds the lock of the token file's
    /// directory in `locks`, taking it first if nobody has (the directory
    /// may have appeared, or a planted link at the lock's name gone, since
    /// the start).
    pub fn locked_by(mut self, locks: Arc<DirLocks>) -> Self {
        self.locks = Some(locks);
        self
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
        if let Some(locks) = &self.locks {
            // A path mcprom refuses to replace gets no lock file beside it
            // (`token_file = "/dev/null"` leaves nothing in /dev).
            check_target(&self.path)?;
            locks.ensure(&parent_dir(&self.path))?;
        }
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

/// Read a token file (bounded) and check that it holds a token. Only a
/// regular file is read: the open does not block (a FIFO planted at the
/// path cannot hold a worker) and anything else is refused.
pub fn read_token(path: &Path) -> io::Result<Token> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let mut buf = String::new();
    file.take(MAX_TOKEN_LEN as u64 + 2)
        .read_to_string(&mut buf)?;
    Token::new(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// What a file type is called in messages.
fn kind_of(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "a regular file",
        libc::S_IFLNK => "a symbolic link",
        libc::S_IFDIR => "a directory",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        _ => "of an unknown type",
    }
}

/// Open `dir` for the *at() calls below.
fn open_dir(dir: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{OFlag, open};
    open(
        dir,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// Refuse to replace `name` in `dir` unless it is missing or a regular
/// file (not following a link at `name`).
fn check_replaceable(
    dir: &std::os::fd::OwnedFd,
    name: &str,
    target: &Path,
) -> Result<(), SinkError> {
    use nix::fcntl::AtFlags;
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => Ok(()),
        Ok(st) => Err(SinkError::NotRegular {
            path: target.to_owned(),
            kind: kind_of(st.st_mode),
        }),
        Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(SinkError::Io {
            op: "inspect",
            path: target.to_owned(),
            source: e.into(),
        }),
    }
}

/// Refuse a token file path where something other than a regular file is
/// (not following a link there); a missing file is fine.
pub fn check_target(target: &Path) -> Result<(), SinkError> {
    use std::os::unix::fs::MetadataExt as _;
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.file_type().is_file() => Ok(()),
        Ok(meta) => Err(SinkError::NotRegular {
            path: target.to_owned(),
            kind: kind_of(meta.mode() as libc::mode_t),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SinkError::Io {
            op: "inspect",
            path: target.to_owned(),
            source,
        }),
    }
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
    // Everything below is relative to this one directory descriptor, and
    // nothing follows a link at a name in it.
    let dirfd = open_dir(&dir).map_err(|source| SinkError::Io {
        op: "open directory",
        path: dir.clone(),
        source,
    })?;
    check_replaceable(&dirfd, &name, target)?;
    let (temp_name, mut file) = create_temp(&dirfd, &dir, &name)?;
    let temp_path = dir.join(&temp_name);
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
        // Checked again right before the rename: what is there may have
        // changed while the file was written.
        check_replaceable(&dirfd, &name, target)?;
        nix::fcntl::renameat(&dirfd, temp_name.as_str(), &dirfd, name.as_str())
            .map_err(|e| io("rename temp file onto", target)(e.into()))?;
        nix::unistd::fsync(&dirfd).map_err(|e| io("fsync directory", &dir)(e.into()))
    })();
    if result.is_err() {
        let _ = nix::unistd::unlinkat(
            &dirfd,
            temp_name.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    result
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn create_temp(
    dirfd: &std::os::fd::OwnedFd,
    dir: &Path,
    name: &str,
) -> Result<(String, File), SinkError> {
    use nix::fcntl::OFlag;
    let mut last_err = None;
    for _ in 0..8 {
        let temp = format!("{TEMP_PREFIX}{name}.{:016x}", rand::random::<u64>());
        // O_EXCL: never an existing file, never through a link.
        match nix::fcntl::openat(
            dirfd,
            temp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .map_err(io::Error::from)
        {
            Ok(fd) => return Ok((temp, File::from(fd))),
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

/// The token-directory locks a daemon holds, shared by the supervisor
/// (which takes them at start and on reload, so a second mcprom is refused
/// at once) and every [`FileSink`] (which takes its directory's lock before
/// a write when nobody has yet). A directory whose lock cannot be taken
/// gets no token file written; other directories are not concerned.
#[derive(Debug, Default)]
pub struct DirLocks {
    held: std::sync::Mutex<std::collections::BTreeMap<PathBuf, DirLock>>,
}

impl DirLocks {
    /// No lock held yet.
    pub fn new() -> Arc<Self> {
        Arc::new(DirLocks::default())
    }

    /// Hold the lock of `dir`, taking it (and cleaning up stale temp files
    /// there) if it is not held yet.
    pub fn ensure(&self, dir: &Path) -> Result<(), LockError> {
        fs::create_dir_all(dir).map_err(|source| LockError::Io {
            dir: dir.to_owned(),
            source,
        })?;
        // One lock per directory, however it is reached: two token files
        // whose paths differ by a symlinked directory share it (a second
        // flock from this process would fail as "held").
        let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
        // Every write passes here: the file-system calls above run outside
        // the mutex, so writes to different clusters do not queue on them.
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.contains_key(&dir) {
            return Ok(());
        }
        let lock = lock_dir(&dir)?;
        match remove_stale_temp_files(&dir) {
            Ok(0) => {}
            Ok(n) => tracing::info!(dir = %dir.display(), removed = n, "removed stale temp files"),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot clean stale temp files")
            }
        }
        held.insert(dir, lock);
        Ok(())
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
    /// Something other than a regular file is at the lock file's path.
    #[error(
        "{} is {kind}, not a regular file: mcprom does not lock or write through it, nor write token files beside it; remove it",
        path.display()
    )]
    NotRegular {
        /// The lock file's path.
        path: PathBuf,
        /// What is there.
        kind: &'static str,
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

/// Warn when anyone but the owner of `dir` may write in it: whoever can
/// replace names there can replace the token files Prometheus reads.
fn warn_if_others_may_write(dir: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    if let Ok(meta) = fs::metadata(dir)
        && meta.mode() & 0o022 != 0
    {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{:04o}", meta.mode() & 0o7777),
            "the token directory is writable by others than its owner: they can replace the token files Prometheus reads; chmod go-w it"
        );
    }
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
    let dirfd = open_dir(dir).map_err(io_err)?;
    // No link is followed and nothing blocks (a FIFO): only a regular file
    // is taken as the lock.
    let fd = nix::fcntl::openat(
        &dirfd,
        LOCK_FILE,
        nix::fcntl::OFlag::O_RDWR
            | nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_NONBLOCK
            | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| match e {
        nix::errno::Errno::ELOOP => LockError::NotRegular {
            path: path.clone(),
            kind: "a symbolic link",
        },
        e => io_err(e.into()),
    })?;
    let file = File::from(fd);
    let st = nix::sys::stat::fstat(&file).map_err(|e| io_err(e.into()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(LockError::NotRegular {
            path,
            kind: kind_of(st.st_mode),
        });
    }
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0).map_err(io_err)?;
            writeln!(lock, "{}", std::process::id()).map_err(io_err)?;
            warn_if_others_may_write(dir);
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
