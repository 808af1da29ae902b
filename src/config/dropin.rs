//! Drop-in files: every `*.toml` in `/etc/mcprom.d/` beside
//! `/etc/mcprom.toml`, read in name order, each holding `[[cluster]]`
//! tables, and the [`Loader`] that reads the main file and its drop-ins and
//! re-reads only the files that changed.
//!
//! The rules (README "Drop-in files"):
//! - the directory is the main file's name with `.d` for `.toml`
//!   (`/x/y.toml` → `/x/y.d/`), or the main file's `include_dir`; `""`
//!   turns drop-ins off; a missing directory holds none;
//! - a drop-in holds `[[cluster]]` tables only: everything else
//!   (`[defaults]`, `[prometheus]`, …, `include_dir`) is the main file's,
//!   and an error in a drop-in. The main file's `[defaults]` apply to every
//!   drop-in's clusters; relative paths resolve against the drop-in's own
//!   directory;
//! - nothing overrides anything: the clusters are the main file's, then
//!   each drop-in's in name order, and a cluster name (or a token file) used
//!   in two files is an error naming both places;
//! - hidden files (`.name.toml`: editors' and Ansible's temporary files,
//!   kubelet's `..data`) and subdirectories are not read.
//!
//! A drop-in's validated clusters are kept, keyed by the file's identity
//! and times (device, inode, size, mtime, ctime: a save by rename, a copy,
//! an in-place write and a ConfigMap's symlink swap all change one of them)
//! and by the main file's `[defaults]`; a re-read validates only the files
//! whose key changed.

use std::collections::HashMap;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use super::error::ConfigError;
use super::input::{self, InputError};
use super::report::problem_at;
use super::settings::{ClusterSettings, Credentials, DropIn, Settings};
use super::validate::{self, Defaults, Fragment, Main, Origin, Position};

/// The drop-in directory of the main file at `main` when `include_dir` is
/// not set: its name with `.d` for `.toml` (`/etc/mcprom.toml` →
/// `/etc/mcprom.d`), or with `.d` appended when it does not end in `.toml`.
pub fn default_dir(main: &Path) -> PathBuf {
    let name = main.file_name().map(OsStrExt::as_bytes).unwrap_or_default();
    let stem = match name.strip_suffix(b".toml") {
        Some(stem) if !stem.is_empty() => stem,
        _ => name,
    };
    let mut dir = stem.to_vec();
    dir.extend_from_slice(b".d");
    main.with_file_name(std::ffi::OsString::from_vec(dir))
}

/// What tells one version of a file from another without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    fn of(meta: &std::fs::Metadata) -> FileKey {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// A drop-in file found in the directory: its key, or why it has none.
type Listed = (PathBuf, Result<FileKey, String>);

/// The drop-in files of `dir` in byte order of their names. A missing
/// directory holds none; one that vanished between listing and stat is
/// left out (a ConfigMap update removes its old links just after the swap).
fn list(dir: &Path) -> Result<Vec<Listed>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(unreadable_dir(dir, &e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| unreadable_dir(dir, &e))?;
        let name = entry.file_name();
        let bytes = name.as_bytes();
        if bytes.starts_with(b".") || !bytes.ends_with(b".toml") {
            continue;
        }
        names.push(name);
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut listed = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(name);
        let key = match std::fs::metadata(&path) {
            Ok(meta) => Ok(FileKey::of(&meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => Err(e.to_string()),
        };
        listed.push((path, key));
    }
    Ok(listed)
}

fn unreadable_dir(dir: &Path, error: &std::io::Error) -> ConfigError {
    let hint = match error.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "make it readable and searchable by the user mcprom runs as"
        }
        std::io::ErrorKind::NotADirectory => {
            "it must be a directory of *.toml drop-in files; set include_dir to another \
             directory, or to \"\" for none"
        }
        _ => "set include_dir to another directory, or to \"\" for none",
    };
    ConfigError::Unreadable {
        path: dir.to_path_buf(),
        message: format!(
            "cannot read the drop-in directory {}: {error} ({hint})",
            dir.display()
        ),
        kind: error.kind(),
    }
}

/// The main file, validated without problems, and its digest.
struct CachedMain {
    digest: [u8; 32],
    main: Main,
}

/// A drop-in validated without problems, and what it was validated against.
struct CachedFragment {
    key: FileKey,
    defaults: Arc<Defaults>,
    fragment: Fragment,
}

/// What one read saw: equal to the next one's means nothing changed.
#[derive(Debug, PartialEq)]
struct Seen {
    main: [u8; 32],
    dropins: Vec<(PathBuf, Option<FileKey>)>,
}

/// The outcome of [`Loader::reread`].
#[derive(Debug)]
// One value per re-read, moved once: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Reread {
    /// Asked only for changes, and no file changed (or the main file is
    /// empty, most likely half-written).
    Unchanged,
    /// The main file cannot be read (missing, permissions, not a regular
    /// file). The text says why, without the path.
    MainUnreadable(InputError),
    /// The files were read: the settings, or every problem in every file.
    Read(Result<Settings, ConfigError>),
}

/// Reads the main file and its drop-ins, keeping what it validated so
/// that the next read validates only the files that changed.
pub struct Loader {
    path: PathBuf,
    main: Option<CachedMain>,
    fragments: HashMap<PathBuf, CachedFragment>,
    seen: Option<Seen>,
    /// The digest of a main file that did not decode, last read.
    broken: Option<[u8; 32]>,
}

impl Loader {
    /// A loader for the main file at `path` (made absolute).
    pub fn new(path: &Path) -> Loader {
        Loader {
            path: validate::absolute(path),
            main: None,
            fragments: HashMap::new(),
            seen: None,
            broken: None,
        }
    }

    /// The main file (absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates every file.
    pub fn load(&mut self) -> Result<Settings, ConfigError> {
        match self.reread(false) {
            Reread::Read(result) => result,
            Reread::MainUnreadable(error) => {
                Err(ConfigError::unreadable(&self.path, &error.into()))
            }
            Reread::Unchanged => unreachable!("a full read always reads"),
        }
    }

    /// Reads the files again. With `only_if_changed` (a file event), returns
    /// [`Reread::Unchanged`] when no file changed since the last read, and
    /// when the main file has just become empty (an in-place save truncates
    /// first); a drop-in that has just become empty keeps its clusters.
    /// Blocking: file I/O and validation of the files that changed.
    pub fn reread(&mut self, only_if_changed: bool) -> Reread {
        let bytes = match input::read_bounded(&self.path, input::MAX_CONFIG_BYTES) {
            Ok(bytes) => bytes,
            Err(error) => {
                // Whatever comes back, even the same content, is validated
                // again: the failure was reported.
                self.seen = None;
                self.broken = None;
                return Reread::MainUnreadable(error);
            }
        };
        let digest = sha256(&bytes);
        let emptied = bytes.iter().all(u8::is_ascii_whitespace)
            && self.seen.as_ref().is_none_or(|seen| seen.main != digest);
        if only_if_changed && emptied {
            warn!(config = %self.path.display(), "the config file is empty: waiting for the rest of the write (use `mcprom reload` to apply an empty config on purpose)");
            return Reread::Unchanged;
        }
        if only_if_changed && self.broken == Some(digest) {
            return Reread::Unchanged;
        }
        self.broken = None;
        let mut errors = Vec::new();
        let fresh;
        let main = match &self.main {
            Some(cached) if cached.digest == digest => &cached.main,
            _ => {
                self.main = None;
                let (main, error) = match super::config_text(&self.path, bytes) {
                    Ok(text) => validate::validate_main(&text, &self.path, true),
                    Err(error) => (None, Some(error)),
                };
                let Some(main) = main else {
                    self.seen = None;
                    self.broken = Some(digest);
                    return Reread::Read(Err(error.expect("an undecodable file is reported")));
                };
                match error {
                    None => &self.main.insert(CachedMain { digest, main }).main,
                    Some(error) => {
                        errors.push(error);
                        fresh = main;
                        &fresh
                    }
                }
            }
        };
        let listed = match &main.settings.include_dir {
            None => Ok(Vec::new()),
            Some(dir) => list(dir),
        };
        let seen = Seen {
            main: digest,
            dropins: match &listed {
                Ok(listed) => listed
                    .iter()
                    .map(|(path, key)| (path.clone(), key.as_ref().ok().copied()))
                    .collect(),
                Err(_) => Vec::new(),
            },
        };
        let unchanged = self.seen.as_ref() == Some(&seen) && listed.is_ok();
        self.seen = Some(seen);
        if only_if_changed && unchanged {
            return Reread::Unchanged;
        }
        let listed = listed.unwrap_or_else(|error| {
            errors.push(error);
            Vec::new()
        });

        let mut fragments = HashMap::with_capacity(listed.len());
        let mut order = Vec::with_capacity(listed.len());
        for (path, key) in listed {
            let key = match key {
                Ok(key) => key,
                Err(error) => {
                    errors.push(unreadable_file(&path, &error));
                    continue;
                }
            };
            let cached = self.fragments.remove(&path);
            match cached {
                Some(cached) if cached.key == key && *cached.defaults == *main.defaults => {
                    fragments.insert(path.clone(), cached);
                    order.push(path);
                }
                cached => match read_fragment(&path, &self.path, &main.defaults) {
                    FragmentRead::Gone => {}
                    FragmentRead::Empty if only_if_changed && cached.is_some() => {
                        warn!(dropin = %path.display(), "the drop-in file is empty: waiting for the rest of the write (remove the file, or use `mcprom reload` to apply an empty file on purpose)");
                        fragments.insert(path.clone(), cached.expect("checked"));
                        order.push(path);
                    }
                    FragmentRead::Empty => {
                        let fragment = Fragment {
                            clusters: Vec::new(),
                            origins: Vec::new(),
                        };
                        let defaults = main.defaults.clone();
                        fragments.insert(
                            path.clone(),
                            CachedFragment {
                                key,
                                defaults,
                                fragment,
                            },
                        );
                        order.push(path);
                    }
                    FragmentRead::Invalid(error) => errors.push(error),
                    FragmentRead::Valid(fragment) => {
                        let defaults = main.defaults.clone();
                        fragments.insert(
                            path.clone(),
                            CachedFragment {
                                key,
                                defaults,
                                fragment,
                            },
                        );
                        order.push(path);
                    }
                },
            }
        }
        // Files no longer listed are forgotten.
        self.fragments = fragments;

        let mut files: Vec<FileClusters<'_>> =
            vec![(&self.path, &main.settings.clusters, &main.origins)];
        for path in &order {
            let fragment = &self.fragments[path].fragment;
            files.push((path, &fragment.clusters, &fragment.origins));
        }
        errors.extend(cross_check(&files));
        if let Some(error) = unresolved_consumer_clusters(&self.path, &main.unresolved, &files) {
            errors.push(error);
        }
        if let Some(error) = ConfigError::combine(&self.path, errors) {
            return Reread::Read(Err(error));
        }
        let mut settings = main.settings.clone();
        for path in order {
            let fragment = &self.fragments[&path].fragment;
            settings.clusters.extend(fragment.clusters.iter().cloned());
            settings.dropins.push(DropIn {
                path,
                clusters: fragment.clusters.len(),
            });
        }
        Reread::Read(Ok(settings))
    }
}

/// The names in `[[consumer]]` `clusters` lists that the main file left to
/// its drop-ins and no file defines: one problem each, at the name.
fn unresolved_consumer_clusters(
    main: &Path,
    unresolved: &[validate::Unresolved],
    files: &[FileClusters<'_>],
) -> Option<ConfigError> {
    if unresolved.is_empty() {
        return None;
    }
    let known: Vec<&str> = files
        .iter()
        .flat_map(|(_, clusters, _)| clusters.iter().map(|c| c.name.as_str()))
        .collect();
    let problems: Vec<_> = unresolved
        .iter()
        .filter(|u| !known.contains(&u.name.as_str()))
        .map(|u| {
            let hint = match super::did_you_mean(&u.name, &known) {
                Some(best) => format!("did you mean {best:?}?"),
                None if known.is_empty() => "no file defines a [[cluster]]".to_string(),
                None => "not in the main file nor in any drop-in".to_string(),
            };
            problem_at(
                main,
                u.at,
                &u.context,
                &format!(
                    "key \"clusters\": no [[cluster]] is named {:?} ({hint})",
                    u.name
                ),
            )
        })
        .collect();
    (!problems.is_empty()).then(|| ConfigError::Invalid {
        path: main.to_path_buf(),
        problems,
    })
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn unreadable_file(path: &Path, error: &str) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        problems: vec![super::Diagnostic::unplaced(
            path,
            super::Severity::Error,
            &format!("cannot read the drop-in file {}: {error}", path.display()),
        )],
    }
}

enum FragmentRead {
    /// It vanished between listing and reading.
    Gone,
    /// Nothing but white space.
    Empty,
    Invalid(ConfigError),
    Valid(Fragment),
}

fn read_fragment(path: &Path, main: &Path, defaults: &Defaults) -> FragmentRead {
    let bytes = match input::read_bounded(path, input::MAX_CONFIG_BYTES) {
        Ok(bytes) => bytes,
        Err(error) if error.kind == Some(std::io::ErrorKind::NotFound) => {
            return FragmentRead::Gone;
        }
        Err(error) => return FragmentRead::Invalid(ConfigError::unreadable(path, &error.into())),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return FragmentRead::Empty;
    }
    let text = match super::config_text(path, bytes) {
        Ok(text) => text,
        Err(error) => return FragmentRead::Invalid(error),
    };
    match validate::validate_fragment(&text, path, main, defaults) {
        Ok(fragment) => FragmentRead::Valid(fragment),
        Err(error) => FragmentRead::Invalid(error),
    }
}

/// The checks across files: a cluster name, or a token file, used in two
/// files; a token file that is another file's cluster's credential. Each
/// file was checked on its own already: only pairs in different files are
/// reported here, at the later place, naming the earlier one.
/// A file, its valid clusters, and where each was set.
type FileClusters<'a> = (&'a Path, &'a [Arc<ClusterSettings>], &'a [Origin]);

fn cross_check(files: &[FileClusters<'_>]) -> Vec<ConfigError> {
    let place = |file: usize, (line, column): Position| {
        format!("{}:{line}:{column}", files[file].0.display())
    };
    let mut paths = super::ResolvedPaths::default();
    let mut resolve = |path: &Path| paths.resolve(path);
    // (file, index in file) of the first cluster with each name, writing
    // each token file, and reading each credential file.
    let mut names: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut writers: HashMap<PathBuf, (usize, usize)> = HashMap::new();
    let mut readers: HashMap<PathBuf, (usize, usize, &'static str)> = HashMap::new();
    for (f, (_, clusters, _)) in files.iter().enumerate() {
        for (i, cluster) in clusters.iter().enumerate() {
            for (key, path) in credential_files(cluster) {
                readers.entry(resolve(path)).or_insert((f, i, key));
            }
        }
    }
    let mut problems: Vec<Vec<super::Diagnostic>> = vec![Vec::new(); files.len()];
    for (f, (_, clusters, origins)) in files.iter().enumerate() {
        for (i, (cluster, origin)) in clusters.iter().zip(origins.iter()).enumerate() {
            let context = format!("cluster {:?}", cluster.name);
            match names.get(cluster.name.as_str()) {
                Some(&(first, j)) if first != f => {
                    problems[f].push(problem_at(
                        files[f].0,
                        origin.name,
                        &context,
                        &format!(
                            "key \"name\": duplicate cluster name {:?}, first used at {} \
                             (names must be unique across the main file and its drop-ins: \
                             they label metrics and name token files)",
                            cluster.name,
                            place(first, files[first].2[j].name)
                        ),
                    ));
                    continue;
                }
                Some(_) => {}
                None => {
                    names.insert(&cluster.name, (f, i));
                }
            }
            let key = if origin.explicit_token_file {
                "key \"token_file\""
            } else {
                "key \"token_file\" (defaulted to {token_dir}/{name}.token)"
            };
            let shown = cluster.token_file.display();
            let token_file = resolve(&cluster.token_file);
            if let Some(&(first, j)) = writers.get(&token_file) {
                if first != f && files[first].1[j].name != cluster.name {
                    problems[f].push(problem_at(
                        files[f].0,
                        origin.token_file,
                        &context,
                        &format!(
                            "{key}: {shown} is also written by cluster {:?} ({}) (give each \
                             cluster its own token_file)",
                            files[first].1[j].name,
                            place(first, files[first].2[j].token_file)
                        ),
                    ));
                }
            } else {
                writers.insert(token_file.clone(), (f, i));
            }
            if let Some(&(reader, j, credential)) = readers.get(&token_file)
                && reader != f
            {
                problems[f].push(problem_at(
                    files[f].0,
                    origin.token_file,
                    &context,
                    &format!(
                        "{key}: {shown} is cluster {:?}'s {credential} ({}); mcprom would \
                         overwrite a credential with the token it issues (write the token \
                         elsewhere, e.g. /var/lib/mcprom/tokens/{}.token)",
                        files[reader].1[j].name,
                        place(reader, files[reader].2[j].name),
                        cluster.name
                    ),
                ));
            }
        }
    }
    problems
        .into_iter()
        .zip(files)
        .filter(|(problems, _)| !problems.is_empty())
        .map(|(problems, (path, _, _))| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
        .collect()
}

/// The files a cluster reads to authenticate, with the key naming each.
fn credential_files(cluster: &ClusterSettings) -> Vec<(&'static str, &Path)> {
    let mut files = Vec::new();
    if let Some(ca) = &cluster.ca_file {
        files.push(("ca_file", ca.as_path()));
    }
    match &cluster.credentials {
        Credentials::Kubeconfig { path, .. } => files.push(("credentials.kubeconfig", path)),
        Credentials::TokenFile(path) => files.push(("credentials.token_file", path)),
        Credentials::ClientCert { cert, key } => {
            files.push(("credentials.client_cert", cert));
            files.push(("credentials.client_key", key));
        }
        Credentials::SelfRenew => {}
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str) -> String {
        format!(
            "[[cluster]]\nname = \"{name}\"\napi_server = \"https://10.0.0.1:6443\"\n\
             service_account = \"kube-system/prometheus\"\n\n[cluster.credentials]\n\
             kubeconfig = \"{name}/kubeconfig\"\n"
        )
    }

    /// A main file with `main` and a drop-in directory with `dropins`.
    fn tree(main: &str, dropins: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mcprom.toml");
        std::fs::write(&path, main).unwrap();
        std::fs::create_dir(dir.path().join("mcprom.d")).unwrap();
        for (name, text) in dropins {
            std::fs::write(dir.path().join("mcprom.d").join(name), text).unwrap();
        }
        (dir, path)
    }

    fn problems(path: &Path) -> Vec<String> {
        match Loader::new(path).load() {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.problems().to_vec(),
        }
    }

    #[test]
    fn the_directory_is_named_after_the_main_file() {
        assert_eq!(
            default_dir(Path::new("/etc/mcprom.toml")),
            Path::new("/etc/mcprom.d")
        );
        assert_eq!(
            default_dir(Path::new("/x/y.conf")),
            Path::new("/x/y.conf.d")
        );
        assert_eq!(default_dir(Path::new("/x/.toml")), Path::new("/x/.toml.d"));
    }

    #[test]
    fn drop_ins_are_read_in_name_order_after_the_main_file_and_inherit_its_defaults() {
        let main = format!("[defaults]\nexpiration = \"2h\"\n\n{}", cluster("main"));
        let (dir, path) = tree(
            &main,
            &[
                ("b.toml", &cluster("b")),
                ("a.toml", &format!("{}\n{}", cluster("a1"), cluster("a2"))),
                // Not drop-ins: hidden (editors', Ansible's temporary
                // files), another extension, a backup.
                (".c.toml", &cluster("hidden")),
                ("d.toml.bak", &cluster("bak")),
                ("e.conf", &cluster("conf")),
            ],
        );
        std::fs::create_dir(dir.path().join("mcprom.d/sub.toml.d")).unwrap();
        let settings = Loader::new(&path).load().unwrap();
        let names: Vec<&str> = settings.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["main", "a1", "a2", "b"]);
        let d = dir.path().join("mcprom.d");
        assert_eq!(settings.include_dir.as_deref(), Some(d.as_path()));
        assert_eq!(
            settings.dropins,
            vec![
                DropIn {
                    path: d.join("a.toml"),
                    clusters: 2
                },
                DropIn {
                    path: d.join("b.toml"),
                    clusters: 1
                },
            ]
        );
        assert_eq!(settings.cluster_source(0), path);
        assert_eq!(settings.cluster_source(2), d.join("a.toml"));
        assert_eq!(settings.cluster_source(3), d.join("b.toml"));
        let b = &settings.clusters[3];
        assert_eq!(b.expiration, std::time::Duration::from_secs(7200));
        // Relative paths resolve against the drop-in's own directory.
        assert_eq!(b.input_files(), vec![d.join("b/kubeconfig")]);
    }

    #[test]
    fn a_missing_or_empty_directory_holds_no_drop_in() {
        let (dir, path) = tree(&cluster("main"), &[]);
        assert_eq!(Loader::new(&path).load().unwrap().clusters.len(), 1);
        std::fs::remove_dir(dir.path().join("mcprom.d")).unwrap();
        let settings = Loader::new(&path).load().unwrap();
        assert_eq!(settings.clusters.len(), 1);
        assert!(settings.dropins.is_empty());
    }

    #[test]
    fn include_dir_names_another_directory_or_turns_drop_ins_off() {
        let (dir, path) = tree("", &[("a.toml", &cluster("a"))]);
        std::fs::create_dir(dir.path().join("clusters")).unwrap();
        std::fs::write(dir.path().join("clusters/x.toml"), cluster("x")).unwrap();
        std::fs::write(&path, "include_dir = \"clusters\"\n").unwrap();
        let settings = Loader::new(&path).load().unwrap();
        assert_eq!(settings.clusters[0].name, "x");
        assert_eq!(settings.clusters.len(), 1);
        std::fs::write(&path, "include_dir = \"\"\n").unwrap();
        let settings = Loader::new(&path).load().unwrap();
        assert!(settings.clusters.is_empty());
        assert_eq!(settings.include_dir, None);
    }

    #[test]
    fn a_drop_in_holds_only_clusters() {
        let text = format!("{}\n[defaults]\nexpiration = \"2h\"\n", cluster("a"));
        let (dir, path) = tree("", &[("a.toml", &text)]);
        let file = dir.path().join("mcprom.d/a.toml");
        assert_eq!(
            problems(&path),
            [format!(
                "{}:9:1: [defaults] is not allowed in a drop-in file: a drop-in holds only \
                 [[cluster]] tables (set [defaults] in {})",
                file.display(),
                path.display()
            )]
        );
        std::fs::write(&file, format!("include_dir = \"x\"\n{}", cluster("a"))).unwrap();
        let problems = problems(&path);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(&format!(
                "{}:1:15: key \"include_dir\" is not allowed",
                file.display()
            )),
            "{problems:?}"
        );
    }

    #[test]
    fn a_name_used_in_two_files_is_an_error_naming_both_places() {
        let (dir, path) = tree(
            &cluster("prod"),
            &[("a.toml", &format!("{}\n{}", cluster("x"), cluster("prod")))],
        );
        let a = dir.path().join("mcprom.d/a.toml");
        let problems = problems(&path);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(&format!(
                "{}:10:8: cluster \"prod\": key \"name\": duplicate cluster name \"prod\", first used at {}:2:8 ",
                a.display(),
                path.display()
            )),
            "{problems:?}"
        );
    }

    #[test]
    fn a_token_file_written_from_two_files_is_an_error_naming_both_places() {
        let x = cluster("x").replace(
            "name = \"x\"",
            "name = \"x\"\ntoken_file = \"/srv/t/prod.token\"",
        );
        let main = "[defaults]\ntoken_dir = \"/srv/t\"\n";
        let (dir, path) = tree(main, &[("a.toml", &cluster("prod")), ("b.toml", &x)]);
        let problems = problems(&path);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0],
            format!(
                "{}:3:14: cluster \"x\": key \"token_file\": /srv/t/prod.token is also written by \
                 cluster \"prod\" ({}:1:1) (give each cluster its own token_file)",
                dir.path().join("mcprom.d/b.toml").display(),
                dir.path().join("mcprom.d/a.toml").display(),
            )
        );
    }

    #[test]
    fn problems_in_several_files_are_all_reported_each_with_its_file() {
        let (dir, path) = tree(
            "[prometheus]\nreload = \"sometimes\"\n",
            &[
                (
                    "a.toml",
                    "[[cluster]]\nname = \"a\"\nservce_account = \"x/y\"\n",
                ),
                ("b.toml", "[[cluster\n"),
            ],
        );
        let problems = problems(&path);
        let d = dir.path().join("mcprom.d");
        let files: Vec<String> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap().to_string())
            .collect();
        let expected = [
            path.display().to_string(),
            d.join("a.toml").display().to_string(),
            d.join("b.toml").display().to_string(),
        ];
        for file in &expected {
            assert!(files.contains(file), "{file} in {problems:#?}");
        }
        assert_eq!(files.first(), Some(&expected[0]), "{problems:#?}");
    }

    #[test]
    fn a_reread_validates_only_the_files_that_changed() {
        let (dir, path) = tree(
            &cluster("main"),
            &[("a.toml", &cluster("a")), ("b.toml", &cluster("b"))],
        );
        let d = dir.path().join("mcprom.d");
        let mut loader = Loader::new(&path);
        let first = loader.load().unwrap();
        assert!(matches!(loader.reread(true), Reread::Unchanged));
        // Same content, new file (an editor's save): validated again, and equal.
        std::fs::write(d.join("b.new"), cluster("b")).unwrap();
        std::fs::rename(d.join("b.new"), d.join("b.toml")).unwrap();
        let Reread::Read(Ok(second)) = loader.reread(true) else {
            panic!("b.toml changed")
        };
        assert_eq!(first, second);
        // a.toml and the main file were not validated again: the same Arcs.
        assert!(Arc::ptr_eq(&first.clusters[0], &second.clusters[0]));
        assert!(Arc::ptr_eq(&first.clusters[1], &second.clusters[1]));
        assert!(!Arc::ptr_eq(&first.clusters[2], &second.clusters[2]));
        // A removed drop-in takes its clusters along.
        std::fs::remove_file(d.join("a.toml")).unwrap();
        let Reread::Read(Ok(third)) = loader.reread(true) else {
            panic!("a.toml removed")
        };
        let names: Vec<&str> = third.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["main", "b"]);
        // A change of [defaults] validates every drop-in again.
        std::fs::write(
            &path,
            format!("[defaults]\nexpiration = \"2h\"\n{}", cluster("main")),
        )
        .unwrap();
        let Reread::Read(Ok(fourth)) = loader.reread(true) else {
            panic!("the main file changed")
        };
        assert_eq!(
            fourth.clusters[1].expiration,
            std::time::Duration::from_secs(7200)
        );
    }

    #[test]
    fn an_invalid_drop_in_is_reported_until_it_changes() {
        let (dir, path) = tree("", &[("a.toml", &cluster("a"))]);
        let mut loader = Loader::new(&path);
        loader.load().unwrap();
        std::fs::write(dir.path().join("mcprom.d/a.toml"), "[[cluster]\n").unwrap();
        assert!(matches!(loader.reread(true), Reread::Read(Err(_))));
        assert!(matches!(loader.reread(true), Reread::Unchanged));
        // An explicit reload reports it again.
        assert!(matches!(loader.reread(false), Reread::Read(Err(_))));
    }

    #[test]
    fn an_emptied_drop_in_waits_for_the_rest_of_the_write() {
        let (dir, path) = tree("", &[("a.toml", &cluster("a"))]);
        let mut loader = Loader::new(&path);
        loader.load().unwrap();
        std::fs::write(dir.path().join("mcprom.d/a.toml"), "").unwrap();
        let Reread::Read(Ok(settings)) = loader.reread(true) else {
            panic!("a.toml changed")
        };
        assert_eq!(settings.clusters.len(), 1, "kept while half-written");
        let settings = loader.load().unwrap();
        assert!(settings.clusters.is_empty(), "applied on purpose");
    }
}
