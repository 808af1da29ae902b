//! The checks on this host: the token directory is writable, the file
//! group exists.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::{Check, Section};
use crate::config::ClusterSettings;

/// Token directory and file group: local, blocking.
pub(super) fn local_checks(cluster: &ClusterSettings) -> Vec<Check> {
    let mut s = Section::default();
    let dir = match cluster.token_file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    check_token_dir(&dir, &cluster.token_file, &mut s);
    if let Some(group) = &cluster.file_group {
        match crate::sink::lookup_group(group) {
            Ok(gid) => s.pass(format!("file group {group:?} exists (gid {gid})")),
            Err(_) => s.fail(
                format!("file group {group:?} does not exist"),
                format!(
                    "create it (`groupadd --system {group}`) or set file_group to the group \
                     Prometheus runs as"
                ),
            ),
        }
    }
    s.checks
}

fn check_token_dir(dir: &Path, token_file: &Path, s: &mut Section) {
    let hint = format!(
        "mcprom replaces {} by renaming a temp file from the same directory over it: make {} a \
         directory the user mcprom runs as can write (systemd: StateDirectory= or \
         ReadWritePaths=), or change token_dir/token_file",
        token_file.display(),
        dir.display()
    );
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => match probe_writable(dir) {
            Ok(()) => s.pass(format!("token directory {} writable", dir.display())),
            Err(e) => s.fail(
                format!(
                    "token directory {} not writable: cannot create a file in it: {e}",
                    dir.display()
                ),
                hint,
            ),
        },
        Ok(_) => s.fail(
            format!("token directory {} is not a directory", dir.display()),
            hint,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(ancestor) = dir.ancestors().skip(1).find(|a| a.exists()) else {
                s.fail(format!("token directory {}: {e}", dir.display()), hint);
                return;
            };
            match std::fs::metadata(ancestor) {
                Ok(m) if m.is_dir() => match probe_writable(ancestor) {
                    Ok(()) => s.pass(format!(
                        "token directory {} writable (it does not exist yet; mcprom will create it in {})",
                        dir.display(),
                        ancestor.display()
                    )),
                    Err(e) => s.fail(
                        format!(
                            "token directory {} does not exist and cannot be created in {}: {e}",
                            dir.display(),
                            ancestor.display()
                        ),
                        hint,
                    ),
                },
                _ => s.fail(
                    format!(
                        "token directory {} cannot be created: {} is not a directory",
                        dir.display(),
                        ancestor.display()
                    ),
                    hint,
                ),
            }
        }
        Err(e) => s.fail(format!("token directory {}: {e}", dir.display()), hint),
    }
}

/// Create and remove a temp file with mcprom's prefix (which the daemon
/// cleans up should this ever be interrupted), leaving the token alone.
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(
        "{}check.{:016x}",
        crate::sink::TEMP_PREFIX,
        rand::random::<u64>()
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    drop(file);
    std::fs::remove_file(&path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::online::Mark;

    #[test]
    fn the_probe_leaves_the_directory_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c1.token"), "a.b.c").unwrap();
        probe_writable(dir.path()).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("c1.token")]);
    }

    #[test]
    fn missing_and_blocked_token_directories() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Section::default();
        let missing = dir.path().join("a/b");
        check_token_dir(&missing, &missing.join("c1.token"), &mut s);
        assert_eq!(s.checks[0].mark, Mark::Pass, "{:?}", s.checks[0]);
        assert!(s.checks[0].text.contains("does not exist yet"));
        assert!(
            !dir.path().join("a").exists(),
            "the check must not create it"
        );

        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let mut s = Section::default();
        check_token_dir(&file, &file.join("c1.token"), &mut s);
        assert_eq!(s.checks[0].mark, Mark::Fail);
        assert!(s.checks[0].text.contains("is not a directory"));
    }
}
