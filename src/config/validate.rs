//! [`FileConfig`] → [`Settings`]: defaults, path resolution and every check
//! that can be made from the file alone. Host checks live in `host.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_spanned::Spanned;
use url::Url;

use super::decode::{cluster_label, decode};
use super::duration::parse_duration;
pub use super::error::ConfigError;
use super::file::{ClusterFile, CredentialsFile, DefaultsFile, FileConfig, ModeValue};
use super::report::{Report, did_you_mean};
use super::settings::*;

mod consumers;

const DEFAULT_PROMETHEUS_URL: &str = "http://127.0.0.1:9090";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_DELAY: Duration = Duration::from_secs(2);
const DEFAULT_TOKEN_DIR: &str = "/var/lib/mcprom/tokens";
const DEFAULT_EXPIRATION: Duration = Duration::from_secs(3600);
const DEFAULT_REFRESH_AT: f64 = 0.8;
/// Shortest `verify_interval`: the real API server caches a successful
/// token authentication for about 10 s, so checking more often sees nothing new.
const MIN_VERIFY_INTERVAL: Duration = Duration::from_secs(10);
/// Longest `verify_interval`: a week.
const MAX_VERIFY_INTERVAL: Duration = Duration::from_secs(7 * 86_400);
/// `refresh_at` of a self-renewing cluster that does not set its own: the
/// chain breaks if a token expires unrenewed, so leave half the lifetime to
/// retry. `[defaults] refresh_at` does not apply to such clusters.
const SELF_RENEW_REFRESH_AT: f64 = 0.5;
const DEFAULT_FILE_MODE: u32 = 0o640;
const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9719";
const DEFAULT_CONTROL_SOCKET: &str = "/run/mcprom/control.sock";
const DEFAULT_CONCURRENT_REQUESTS: NonZeroUsize = NonZeroUsize::new(32).unwrap();
/// Most TokenRequests in flight at once: each costs ~72 KB of client state,
/// and no API server front end wants more from one host.
const MAX_CONCURRENT_REQUESTS: usize = 1024;
/// Longest `[prometheus] timeout` and `delay`.
const MAX_PROMETHEUS_WAIT: Duration = Duration::from_secs(600);
/// Longest token lifetime a TokenRequest may ask for: the API's own limit
/// (`expirationSeconds` below 2^32).
const MAX_EXPIRATION: Duration = Duration::from_secs((1 << 32) - 1);
/// Longest `max_chain_age`: ten years.
const MAX_CHAIN_AGE: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Makes `path` absolute against the current directory, without touching
/// the file system beyond that.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    normalize(&path)
}

/// Removes `.` and resolves `..` lexically, so two spellings of one path
/// compare equal.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(component);
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Validates `text` as the file at `path` (absolute), on its own: the
/// settings hold its clusters only, no drop-in's.
pub(crate) fn validate(text: &str, path: &Path) -> Result<Settings, ConfigError> {
    match validate_main(text, path, false) {
        (_, Some(error)) => Err(error),
        (Some(main), None) => Ok(main.settings),
        (None, None) => unreachable!("a file that does not decode is reported"),
    }
}

/// A line and column (1-based), for messages that name a second place.
pub(crate) type Position = (u32, u32);

/// Where a valid cluster was set, for the checks across files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    /// Its `name` value.
    pub(crate) name: Position,
    /// Its `token_file` value, or its `[[cluster]]` header when defaulted.
    pub(crate) token_file: Position,
    /// Whether `token_file` was written out.
    pub(crate) explicit_token_file: bool,
}

/// The main file, validated: its settings (its own clusters only), and
/// what its drop-ins inherit.
#[derive(Debug)]
pub(crate) struct Main {
    pub(crate) settings: Settings,
    pub(crate) defaults: Arc<Defaults>,
    /// One per cluster of `settings`.
    pub(crate) origins: Vec<Origin>,
    /// Names in a `[[consumer]]`'s `clusters` that no cluster of this file
    /// has: left for the drop-ins (see [`Unresolved`]).
    pub(crate) unresolved: Vec<Unresolved>,
}

/// A name in a `[[consumer]]`'s `clusters` that the main file does not
/// define: a drop-in may. Checked once every file is read.
#[derive(Debug, Clone)]
pub(crate) struct Unresolved {
    /// The name as written.
    pub(crate) name: String,
    /// Where, in the main file.
    pub(crate) at: Position,
    /// The consumer (`consumer "vmagent"`).
    pub(crate) context: String,
}

/// Validates the main file at `path` (absolute). Returns what is valid
/// even when there are problems (so the drop-ins can be checked too), and
/// `None` only when the file does not decode at all. With `dropins`, a
/// consumer's `clusters` may name clusters the drop-ins define: the names
/// this file lacks come back in [`Main::unresolved`] instead of as errors.
pub(crate) fn validate_main(
    text: &str,
    path: &Path,
    dropins: bool,
) -> (Option<Main>, Option<ConfigError>) {
    let mut report = Report::new(path, text);
    let Some(file) = decode(text, &mut report) else {
        return (None, report.into_error());
    };
    let base = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut v = Validator {
        report,
        base,
        path: path.to_path_buf(),
        defer_clusters: dropins,
        unresolved: Vec::new(),
    };
    let (settings, defaults, origins) = v.settings(file);
    let main = Main {
        settings,
        defaults: Arc::new(defaults),
        origins,
        unresolved: std::mem::take(&mut v.unresolved),
    };
    (Some(main), v.report.into_error())
}

/// The clusters of one drop-in file, validated.
#[derive(Debug)]
pub(crate) struct Fragment {
    pub(crate) clusters: Vec<Arc<ClusterSettings>>,
    /// One per cluster.
    pub(crate) origins: Vec<Origin>,
}

/// Validates the drop-in file at `path` (absolute): `[[cluster]]` tables
/// only, with the main file's (`main`) `[defaults]` applied, relative paths
/// resolved against the drop-in's own directory.
pub(crate) fn validate_fragment(
    text: &str,
    path: &Path,
    main: &Path,
    defaults: &Defaults,
) -> Result<Fragment, ConfigError> {
    let mut report = Report::new(path, text);
    let Some(file) = decode(text, &mut report) else {
        return Err(report.into_error().expect("decode reports why it failed"));
    };
    let base = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut v = Validator {
        report,
        base,
        path: path.to_path_buf(),
        defer_clusters: false,
        unresolved: Vec::new(),
    };
    v.clusters_only(&file, main);
    let (clusters, mut origins) = v.clusters(file.cluster, defaults);
    origins.shrink_to_fit();
    match v.report.into_error() {
        Some(error) => Err(error),
        None => Ok(Fragment {
            clusters: shared(clusters),
            origins,
        }),
    }
}

/// The clusters, each behind an `Arc`, in a vector of their number. Not
/// collected in place: that would keep the buffer of `ClusterSettings`
/// (grown to 4 for a one-cluster drop-in) to hold the pointers, ~1.6 KB
/// per drop-in file for as long as its clusters run.
fn shared(clusters: Vec<ClusterSettings>) -> Vec<Arc<ClusterSettings>> {
    let mut shared = Vec::with_capacity(clusters.len());
    shared.extend(clusters.into_iter().map(Arc::new));
    shared
}

struct Validator<'a> {
    report: Report<'a>,
    base: PathBuf,
    path: PathBuf,
    /// Leave a consumer's unknown cluster names to the drop-ins (set while
    /// the main file names a drop-in directory).
    defer_clusters: bool,
    unresolved: Vec<Unresolved>,
}

/// `[defaults]` after validation, with the built-in defaults applied.
#[derive(Debug, PartialEq)]
pub(crate) struct Defaults {
    token_dir: PathBuf,
    expiration: Duration,
    refresh_at: f64,
    file_mode: u32,
    file_group: Option<String>,
    verify: Verify,
    kubeconfig_dir: Option<PathBuf>,
}

/// A file a cluster reads: the key naming it, the resolved path, and the
/// byte offset of its value.
type InputFile = (&'static str, PathBuf, usize);

/// Where a cluster's output and input files were set, for cross-checks.
struct ClusterFiles {
    label: String,
    offset: usize,
    token_file_offset: Option<usize>,
    kubeconfig_file_offset: Option<usize>,
    inputs: Vec<InputFile>,
    self_renew: bool,
}

impl Validator<'_> {
    /// A web endpoint's credentials: `username` and `password_file` come
    /// together and exclude `bearer_token_file`; `expecting` is who decides
    /// which (`[prometheus]`, a `[[consumer]]`).
    fn web_auth_pairs(
        &mut self,
        username: &Option<Spanned<String>>,
        password_file: &Option<Spanned<String>>,
        bearer_token_file: &Option<Spanned<String>>,
        cx: &str,
        expecting: &str,
    ) {
        match (username, password_file) {
            (Some(u), None) => self.error(
                u.span().start,
                cx,
                "key \"username\": basic auth needs a password too (add password_file = \"...\", or remove username)",
            ),
            (None, Some(p)) => self.error(
                p.span().start,
                cx,
                "key \"password_file\": basic auth needs a user too (add username = \"...\", or remove password_file)",
            ),
            _ => {}
        }
        if let Some(b) = bearer_token_file
            && (username.is_some() || password_file.is_some())
        {
            self.error(
                b.span().start,
                cx,
                format!(
                    "key \"bearer_token_file\": a bearer token and basic auth \
                     (username/password_file) are exclusive (keep the one {expecting} expects)"
                ),
            );
        }
    }

    fn error(&mut self, offset: usize, context: &str, message: impl AsRef<str>) {
        self.report.add(offset, context, message);
    }

    /// Reports a missing key, unless a misspelling of it was already reported.
    fn missing(&mut self, offset: usize, context: &str, key: &str, message: impl AsRef<str>) {
        if !self.report.was_suggested(context, |k| k == key) {
            self.report.add(offset, context, message);
        }
    }

    /// A drop-in holds `[[cluster]]` tables only: the rest is the main
    /// file's.
    fn clusters_only(&mut self, file: &FileConfig, main: &Path) {
        let main = main.display();
        if let Some(dir) = &file.include_dir {
            self.error(
                dir.span().start,
                "",
                format!("key \"include_dir\" is not allowed in a drop-in file (set it in {main})"),
            );
        }
        let tables = [
            ("prometheus", file.prometheus.as_ref().map(|t| t.span())),
            ("defaults", file.defaults.as_ref().map(|t| t.span())),
            ("metrics", file.metrics.as_ref().map(|t| t.span())),
            ("control", file.control.as_ref().map(|t| t.span())),
            ("limits", file.limits.as_ref().map(|t| t.span())),
        ];
        let consumers = file.consumer.iter().map(|c| ("[consumer]", Some(c.span())));
        for (table, span) in tables.into_iter().chain(consumers) {
            if let Some(span) = span {
                self.error(
                    span.start,
                    "",
                    format!(
                        "[{table}] is not allowed in a drop-in file: a drop-in holds only \
                         [[cluster]] tables (set [{table}] in {main})"
                    ),
                );
            }
        }
    }

    fn settings(&mut self, file: FileConfig) -> (Settings, Defaults, Vec<Origin>) {
        let include_dir = match &file.include_dir {
            None => Some(super::dropin::default_dir(&self.path)),
            Some(dir) if dir.get_ref().is_empty() => None,
            Some(dir) => self.path_value(dir, "", "include_dir"),
        };
        let prometheus = self.prometheus(file.prometheus.map(Spanned::into_inner));
        let defaults = self.defaults(file.defaults.map(Spanned::into_inner));
        let listen = match file.metrics.and_then(|m| m.into_inner().listen) {
            None => Some(DEFAULT_METRICS_LISTEN.parse().expect("valid default")),
            Some(listen) if listen.get_ref().is_empty() => None,
            Some(listen) => match listen.get_ref().parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.error(
                        listen.span().start,
                        "[metrics]",
                        format!(
                            "key \"listen\": {:?} is not an IP address and port \
                             (e.g. \"127.0.0.1:9719\" or \"[::1]:9719\"; \"\" disables the endpoint)",
                            listen.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        let socket = match file.control.and_then(|c| c.into_inner().socket) {
            None => PathBuf::from(DEFAULT_CONTROL_SOCKET),
            Some(socket) => self
                .path_value(&socket, "[control]", "socket")
                .unwrap_or_default(),
        };
        let limits = file.limits.map(|l| l.into_inner()).unwrap_or_default();
        let exec_timeout = limits
            .exec_timeout
            .as_ref()
            .and_then(|t| {
                self.duration_value(
                    t,
                    "[limits]",
                    "exec_timeout",
                    Duration::from_secs(1)..=Duration::from_secs(600),
                )
            })
            .unwrap_or(crate::exec::DEFAULT_EXEC_TIMEOUT);
        let concurrent_requests = match limits.concurrent_requests {
            None => DEFAULT_CONCURRENT_REQUESTS,
            Some(n) => match usize::try_from(*n.get_ref()).map(NonZeroUsize::new) {
                Ok(Some(n)) if n.get() <= MAX_CONCURRENT_REQUESTS => n,
                _ => {
                    self.error(
                        n.span().start,
                        "[limits]",
                        format!(
                            "key \"concurrent_requests\": must be {}, got {} \
                             (it bounds TokenRequests in flight across all clusters; 32 suits most hosts)",
                            if *n.get_ref() < 1 {
                                "at least 1".to_string()
                            } else {
                                format!("at most {MAX_CONCURRENT_REQUESTS}")
                            },
                            n.get_ref()
                        ),
                    );
                    DEFAULT_CONCURRENT_REQUESTS
                }
            },
        };
        let cluster_names: Vec<String> = file
            .cluster
            .iter()
            .filter_map(|c| c.get_ref().name.as_ref().map(|n| n.get_ref().clone()))
            .collect();
        self.defer_clusters &= include_dir.is_some();
        let consumers = self.consumers(file.consumer, &cluster_names);
        let (clusters, origins) = self.clusters(file.cluster, &defaults);
        let settings = Settings {
            path: self.path.clone(),
            prometheus,
            metrics: MetricsSettings { listen },
            control: ControlSettings { socket },
            limits: Limits {
                concurrent_requests,
                exec_timeout,
            },
            clusters: shared(clusters),
            consumers,
            include_dir,
            dropins: Vec::new(),
        };
        (settings, defaults, origins)
    }

    /// A path value: non-empty, resolved against the config file's directory.
    fn path_value(&mut self, value: &Spanned<String>, context: &str, key: &str) -> Option<PathBuf> {
        if value.get_ref().is_empty() {
            self.error(
                value.span().start,
                context,
                format!("key {key:?}: the path is empty (remove the key to use the default, or name a file)"),
            );
            return None;
        }
        Some(normalize(&self.base.join(value.get_ref())))
    }

    fn duration_value(
        &mut self,
        value: &Spanned<String>,
        context: &str,
        key: &str,
        range: std::ops::RangeInclusive<Duration>,
    ) -> Option<Duration> {
        let (minimum, maximum) = (*range.start(), *range.end());
        match parse_duration(value.get_ref()) {
            Ok(d) if range.contains(&d) => Some(d),
            Ok(d) if d > maximum => {
                self.error(
                    value.span().start,
                    context,
                    format!(
                        "key {key:?}: {:?} is too long (the maximum is {})",
                        value.get_ref(),
                        super::duration::format_duration(maximum)
                    ),
                );
                None
            }
            Ok(_) => {
                self.error(
                    value.span().start,
                    context,
                    format!(
                        "key {key:?}: {:?} is too short (the minimum is {})",
                        value.get_ref(),
                        super::duration::format_duration(minimum)
                    ),
                );
                None
            }
            Err(message) => {
                self.error(
                    value.span().start,
                    context,
                    format!("key {key:?}: {message}"),
                );
                None
            }
        }
    }

    fn url_value(
        &mut self,
        value: &Spanned<String>,
        context: &str,
        key: &str,
        example: &str,
    ) -> Option<Url> {
        let problem = match Url::parse(value.get_ref()) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                format!("scheme {:?} is not http or https", url.scheme())
            }
            Ok(url) if url.host().is_none() => "it has no host".to_string(),
            Ok(url) if url.query().is_some() || url.fragment().is_some() => {
                "it must not carry a query or fragment".to_string()
            }
            Ok(url) => return Some(url),
            Err(e) => e.to_string(),
        };
        self.error(
            value.span().start,
            context,
            format!(
                "key {key:?}: invalid URL {:?}: {problem} (e.g. {key} = {example:?})",
                value.get_ref()
            ),
        );
        None
    }

    fn refresh_at_value(&mut self, value: &Spanned<f64>, context: &str) -> Option<f64> {
        let x = *value.get_ref();
        if x > 0.0 && x < 1.0 {
            return Some(x);
        }
        self.error(
            value.span().start,
            context,
            format!(
                "key \"refresh_at\": {x} is outside (0, 1) (it is the fraction of the token \
                 lifetime after which mcprom refreshes, strictly between 0 and 1; 0.8 is a good value)"
            ),
        );
        None
    }

    fn file_mode_value(&mut self, value: &Spanned<ModeValue>, context: &str) -> Option<u32> {
        const HINT: &str = "write it as a quoted octal string, e.g. \"0640\"";
        let problem = match value.get_ref() {
            ModeValue::Integer(n) => format!("{n} is a number, not an octal string"),
            ModeValue::Text(text) => {
                let digits = text.strip_prefix("0o").unwrap_or(text);
                match u32::from_str_radix(digits, 8) {
                    Ok(mode) if !digits.is_empty() && !digits.starts_with('+') && mode <= 0o777 => {
                        return Some(mode);
                    }
                    Ok(_) if !digits.starts_with('+') && !digits.is_empty() => {
                        format!(
                            "{text:?} is above 0777 (setuid, setgid and sticky bits are not allowed)"
                        )
                    }
                    _ => format!("{text:?} is not an octal mode"),
                }
            }
        };
        self.error(
            value.span().start,
            context,
            format!("key \"file_mode\": {problem} ({HINT})"),
        );
        None
    }

    fn group_value(&mut self, value: &Spanned<String>, context: &str) -> Option<String> {
        let group = value.get_ref();
        let valid = !group.is_empty()
            && group.len() <= 32
            && !group.starts_with('-')
            && group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
        if valid {
            return Some(group.clone());
        }
        self.error(
            value.span().start,
            context,
            format!(
                "key \"file_group\": {group:?} is not a group name (name the group that may \
                 read the token files, e.g. \"prometheus\", or remove the key for no chgrp)"
            ),
        );
        None
    }

    fn prometheus(&mut self, file: Option<super::file::PrometheusFile>) -> PrometheusSettings {
        const CX: &str = "[prometheus]";
        let file = file.unwrap_or_default();
        let url = file
            .url
            .as_ref()
            .and_then(|u| self.url_value(u, CX, "url", DEFAULT_PROMETHEUS_URL))
            .unwrap_or_else(|| Url::parse(DEFAULT_PROMETHEUS_URL).expect("valid default"));
        let reload = match &file.reload {
            None => ReloadMode::OnRotation,
            Some(r) => match r.get_ref().as_str() {
                "on_rotation" => ReloadMode::OnRotation,
                "never" => ReloadMode::Never,
                other => {
                    let hint = match did_you_mean(other, &["on_rotation", "never"]) {
                        Some(best) => format!("did you mean {best:?}?"),
                        None => "use \"on_rotation\" or \"never\"".to_string(),
                    };
                    self.error(
                        r.span().start,
                        CX,
                        format!("key \"reload\": unknown mode {other:?} ({hint})"),
                    );
                    ReloadMode::OnRotation
                }
            },
        };
        let timeout = file
            .timeout
            .as_ref()
            .and_then(|t| {
                self.duration_value(
                    t,
                    CX,
                    "timeout",
                    Duration::from_millis(1)..=MAX_PROMETHEUS_WAIT,
                )
            })
            .unwrap_or(DEFAULT_TIMEOUT);
        let delay = file
            .delay
            .as_ref()
            .and_then(|d| self.duration_value(d, CX, "delay", Duration::ZERO..=MAX_PROMETHEUS_WAIT))
            .unwrap_or(DEFAULT_DELAY);
        let ca_file = file
            .ca_file
            .as_ref()
            .and_then(|p| self.path_value(p, CX, "ca_file"));
        let password_file = file
            .password_file
            .as_ref()
            .and_then(|p| self.path_value(p, CX, "password_file"));
        let bearer_token_file = file
            .bearer_token_file
            .as_ref()
            .and_then(|p| self.path_value(p, CX, "bearer_token_file"));
        let username = file.username.as_ref().map(|u| u.get_ref().clone());
        self.web_auth_pairs(
            &file.username,
            &file.password_file,
            &file.bearer_token_file,
            CX,
            "Prometheus's web config",
        );
        PrometheusSettings {
            url,
            reload,
            timeout,
            delay,
            ca_file,
            username,
            password_file,
            bearer_token_file,
        }
    }

    fn defaults(&mut self, file: Option<DefaultsFile>) -> Defaults {
        const CX: &str = "[defaults]";
        let file = file.unwrap_or_default();
        Defaults {
            token_dir: file
                .token_dir
                .as_ref()
                .and_then(|d| self.path_value(d, CX, "token_dir"))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_DIR)),
            expiration: file
                .expiration
                .as_ref()
                .and_then(|e| {
                    self.duration_value(
                        e,
                        CX,
                        "expiration",
                        Duration::from_secs(1)..=MAX_EXPIRATION,
                    )
                })
                .unwrap_or(DEFAULT_EXPIRATION),
            refresh_at: file
                .refresh_at
                .as_ref()
                .and_then(|r| self.refresh_at_value(r, CX))
                .unwrap_or(DEFAULT_REFRESH_AT),
            file_mode: file
                .file_mode
                .as_ref()
                .and_then(|m| self.file_mode_value(m, CX))
                .unwrap_or(DEFAULT_FILE_MODE),
            file_group: file
                .file_group
                .as_ref()
                .and_then(|g| self.group_value(g, CX)),
            verify: Verify {
                enabled: file.verify.as_ref().is_none_or(|v| *v.get_ref()),
                interval: file
                    .verify_interval
                    .as_ref()
                    .and_then(|i| {
                        self.duration_value(
                            i,
                            CX,
                            "verify_interval",
                            MIN_VERIFY_INTERVAL..=MAX_VERIFY_INTERVAL,
                        )
                    })
                    .unwrap_or(DEFAULT_VERIFY_INTERVAL),
            },
            kubeconfig_dir: file
                .kubeconfig_dir
                .as_ref()
                .and_then(|d| self.path_value(d, CX, "kubeconfig_dir")),
        }
    }

    fn clusters(
        &mut self,
        clusters: Vec<Spanned<ClusterFile>>,
        defaults: &Defaults,
    ) -> (Vec<ClusterSettings>, Vec<Origin>) {
        let mut out = Vec::new();
        let mut files = Vec::new();
        let mut origins = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (index, cluster) in clusters.into_iter().enumerate() {
            let offset = cluster.span().start;
            let cluster = cluster.into_inner();
            let label = cluster_label(cluster.name.as_ref().map(|n| n.get_ref().as_str()), index);
            if let Some(name) = &cluster.name {
                if let Some(first) = names.get(name.get_ref()) {
                    let line = self.report.line(*first);
                    self.error(
                        name.span().start,
                        &label,
                        format!(
                            "key \"name\": duplicate cluster name {:?}, first used on line {line} \
                             (names must be unique: they label metrics and name token files)",
                            name.get_ref()
                        ),
                    );
                } else {
                    names.insert(name.get_ref().clone(), name.span().start);
                }
            }
            if let Some((settings, cluster_files)) =
                self.cluster(&cluster, offset, &label, defaults)
            {
                let name_offset = cluster.name.as_ref().map_or(offset, |n| n.span().start);
                let token_offset = cluster_files.token_file_offset;
                origins.push(Origin {
                    name: self.position(name_offset),
                    token_file: self.position(token_offset.unwrap_or(offset)),
                    explicit_token_file: token_offset.is_some(),
                });
                out.push(settings);
                files.push(cluster_files);
            }
        }
        self.cross_check_files(&out, &files);
        self.cross_check_kubeconfigs(&out, &files);
        (out, origins)
    }

    fn position(&self, offset: usize) -> Position {
        let (line, column) = self.report.position(offset);
        let narrow = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        (narrow(line), narrow(column))
    }

    fn cluster(
        &mut self,
        c: &ClusterFile,
        offset: usize,
        cx: &str,
        defaults: &Defaults,
    ) -> Option<(ClusterSettings, ClusterFiles)> {
        let name = match &c.name {
            None => {
                self.missing(
                    offset,
                    cx,
                    "name",
                    "missing key \"name\" (every [[cluster]] needs a unique name, e.g. name = \"prod\")",
                );
                None
            }
            Some(n) if valid_cluster_name(n.get_ref()) => Some(n.get_ref().clone()),
            Some(n) => {
                self.error(
                    n.span().start,
                    cx,
                    format!(
                        "key \"name\": {:?} is not a valid cluster name (use lowercase letters, digits, \
                         '-' and '_', starting with a letter or digit: it becomes a file name and a label)",
                        n.get_ref()
                    ),
                );
                None
            }
        };
        let api_server = c
            .api_server
            .as_ref()
            .and_then(|u| self.url_value(u, cx, "api_server", "https://192.168.0.153:6443"))
            .filter(|url| {
                let why = plain_http_refused(url.scheme(), url.host_str().unwrap_or_default());
                if let (Some(why), Some(spanned)) = (&why, &c.api_server) {
                    let shown = spanned.get_ref();
                    self.error(
                        spanned.span().start,
                        cx,
                        format!("key \"api_server\": {shown:?}: {why}"),
                    );
                }
                why.is_none()
            });
        let ca_file = c
            .ca_file
            .as_ref()
            .and_then(|p| self.path_value(p, cx, "ca_file"));
        let insecure_skip_tls_verify = c
            .insecure_skip_tls_verify
            .as_ref()
            .is_some_and(|b| *b.get_ref());
        let service_account = match &c.service_account {
            None => {
                self.missing(
                    offset,
                    cx,
                    "service_account",
                    "missing key \"service_account\" (the ServiceAccount whose tokens Prometheus \
                     uses, as namespace/name, e.g. service_account = \"kube-system/prometheus\")",
                );
                None
            }
            Some(sa) => match parse_service_account(sa.get_ref()) {
                Ok(sa) => Some(sa),
                Err(why) => {
                    self.error(
                        sa.span().start,
                        cx,
                        format!(
                            "key \"service_account\": {:?} {why} (write namespace/name, e.g. \"kube-system/prometheus\")",
                            sa.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        let token_file = match (&c.token_file, &name) {
            (Some(p), _) => self.path_value(p, cx, "token_file"),
            (None, Some(name)) => Some(defaults.token_dir.join(format!("{name}.token"))),
            (None, None) => None,
        };
        let kubeconfig_file = match (&c.kubeconfig_file, &name, &defaults.kubeconfig_dir) {
            (Some(p), _, _) => self.path_value(p, cx, "kubeconfig_file"),
            (None, Some(name), Some(dir)) => Some(dir.join(format!("{name}.kubeconfig"))),
            _ => None,
        };
        let mut audiences = Vec::new();
        for audience in c.audiences.iter().flat_map(|a| a.get_ref()) {
            if audience.get_ref().is_empty() {
                self.error(
                    audience.span().start,
                    cx,
                    "key \"audiences\": an audience is empty (remove it; an empty list means the API server's default)",
                );
            } else {
                audiences.push(audience.get_ref().clone());
            }
        }
        let expiration = match &c.expiration {
            None => Some(defaults.expiration),
            Some(e) => {
                self.duration_value(e, cx, "expiration", Duration::from_secs(1)..=MAX_EXPIRATION)
            }
        };
        let refresh_at = match &c.refresh_at {
            None => Some(defaults.refresh_at),
            Some(r) => self.refresh_at_value(r, cx),
        };
        let file_mode = match &c.file_mode {
            None => Some(defaults.file_mode),
            Some(m) => self.file_mode_value(m, cx),
        };
        let file_group = match &c.file_group {
            None => defaults.file_group.clone(),
            Some(g) => self.group_value(g, cx),
        };
        let max_chain_age = c.max_chain_age.as_ref().map(|a| {
            self.duration_value(
                a,
                cx,
                "max_chain_age",
                Duration::from_secs(1)..=MAX_CHAIN_AGE,
            )
        });
        let verify_interval = match &c.verify_interval {
            None => Some(defaults.verify.interval),
            Some(i) => self.duration_value(
                i,
                cx,
                "verify_interval",
                MIN_VERIFY_INTERVAL..=MAX_VERIFY_INTERVAL,
            ),
        };
        let (credentials, inputs) = self.credentials(c.credentials.as_ref(), offset, cx)?;
        let self_renew = matches!(credentials, Credentials::SelfRenew);
        let refresh_at = match &c.refresh_at {
            None if self_renew => Some(SELF_RENEW_REFRESH_AT),
            _ => refresh_at,
        };
        if let (Some(expiration), Some(refresh_at)) = (expiration, refresh_at) {
            let interval = expiration.mul_f64(refresh_at);
            if interval < crate::schedule::MIN_REFRESH_INTERVAL {
                let at = c
                    .refresh_at
                    .as_ref()
                    .map(|r| r.span().start)
                    .or(c.expiration.as_ref().map(|e| e.span().start))
                    .unwrap_or(offset);
                self.error(
                    at,
                    cx,
                    format!(
                        "key \"refresh_at\": refresh_at × expiration = {:.3}s, so a token would be \
                         requested every {:.3}s (at most one refresh every {} per cluster: raise \
                         refresh_at or expiration)",
                        interval.as_secs_f64(),
                        interval.as_secs_f64(),
                        super::duration::format_duration(crate::schedule::MIN_REFRESH_INTERVAL),
                    ),
                );
            }
        }
        if let Some(age) = c.max_chain_age.as_ref().filter(|_| !self_renew) {
            self.error(
                age.span().start,
                cx,
                "key \"max_chain_age\": it only applies to a self-renewing cluster \
                 ([cluster.credentials] self = true); remove it",
            );
        }
        if api_server.is_none()
            && c.api_server.is_none()
            && !matches!(credentials, Credentials::Kubeconfig { .. })
        {
            self.missing(
                offset,
                cx,
                "api_server",
                "missing key \"api_server\" (required unless the credential is a kubeconfig, \
                 e.g. api_server = \"https://192.168.0.153:6443\")",
            );
        }
        let mut inputs = inputs;
        if let (Some(ca), Some(spanned)) = (&ca_file, &c.ca_file) {
            inputs.insert(0, ("ca_file", ca.clone(), spanned.span().start));
        }
        let files = ClusterFiles {
            label: cx.to_string(),
            offset,
            token_file_offset: c.token_file.as_ref().map(|t| t.span().start),
            kubeconfig_file_offset: c.kubeconfig_file.as_ref().map(|k| k.span().start),
            inputs,
            self_renew,
        };
        let settings = ClusterSettings {
            name: name?,
            api_server,
            ca_file,
            insecure_skip_tls_verify,
            service_account: service_account?,
            token_file: token_file?,
            kubeconfig_file,
            audiences,
            expiration: expiration?,
            refresh_at: refresh_at?,
            file_mode: file_mode?,
            file_group,
            credentials,
            max_chain_age: match max_chain_age {
                None => None,
                Some(age) => Some(age?),
            },
            verify: Verify {
                enabled: c
                    .verify
                    .as_ref()
                    .map_or(defaults.verify.enabled, |v| *v.get_ref()),
                interval: verify_interval?,
            },
        };
        Some((settings, files))
    }

    fn credentials(
        &mut self,
        creds: Option<&Spanned<CredentialsFile>>,
        cluster_offset: usize,
        cx: &str,
    ) -> Option<(Credentials, Vec<InputFile>)> {
        const CHOICES: &str =
            "exactly one of kubeconfig, token_file, client_cert + client_key, self = true";
        let Some(creds) = creds else {
            self.missing(
                cluster_offset,
                cx,
                "credentials",
                format!(
                    "missing table [cluster.credentials] (how mcprom authenticates to call TokenRequest: \
                     add it below this cluster with {CHOICES})"
                ),
            );
            return None;
        };
        let offset = creds.span().start;
        let creds = creds.get_ref();
        // Each present way, with the offset of its first key.
        let mut ways: Vec<(&str, usize)> = Vec::new();
        if let Some(k) = &creds.kubeconfig {
            ways.push(("kubeconfig", k.span().start));
        }
        if let Some(t) = &creds.token_file {
            ways.push(("token_file", t.span().start));
        }
        let cert = creds.client_cert.as_ref().or(creds.client_key.as_ref());
        if let Some(c) = cert {
            ways.push(("client_cert + client_key", c.span().start));
        }
        if let Some(s) = creds.self_renew.as_ref().filter(|s| *s.get_ref()) {
            ways.push(("self = true", s.span().start));
        }
        ways.sort_by_key(|(_, offset)| *offset);
        match ways.as_slice() {
            [] => {
                let hint = if creds.self_renew.is_some() {
                    "self = false is not a credential; "
                } else {
                    ""
                };
                if self
                    .report
                    .was_suggested(cx, |k| k.starts_with("credentials."))
                {
                    return None;
                }
                self.error(
                    offset,
                    cx,
                    format!("[cluster.credentials] names no credential ({hint}set {CHOICES})"),
                );
                return None;
            }
            [_] => {}
            [(first, _), (second, at), ..] => {
                self.error(
                    *at,
                    cx,
                    format!(
                        "key \"credentials\": both {first} and {second} are set (choose {CHOICES})"
                    ),
                );
                return None;
            }
        }
        if let Some(context) = &creds.context
            && creds.kubeconfig.is_none()
        {
            self.error(
                context.span().start,
                cx,
                "key \"credentials.context\": context only applies to a kubeconfig (remove it, or use kubeconfig = \"...\")",
            );
        }
        let mut inputs = Vec::new();
        let mut path = |v: &mut Self, value: &Spanned<String>, key: &'static str| {
            let p = v.path_value(value, cx, key)?;
            inputs.push((key, p.clone(), value.span().start));
            Some(p)
        };
        let credentials = if let Some(k) = &creds.kubeconfig {
            Credentials::Kubeconfig {
                path: path(self, k, "credentials.kubeconfig")?,
                context: creds.context.as_ref().map(|c| c.get_ref().clone()),
            }
        } else if let Some(t) = &creds.token_file {
            Credentials::TokenFile(path(self, t, "credentials.token_file")?)
        } else if creds.self_renew.as_ref().is_some_and(|s| *s.get_ref()) {
            Credentials::SelfRenew
        } else {
            match (&creds.client_cert, &creds.client_key) {
                (Some(cert), Some(key)) => {
                    let cert = path(self, cert, "credentials.client_cert");
                    let key = path(self, key, "credentials.client_key");
                    Credentials::ClientCert {
                        cert: cert?,
                        key: key?,
                    }
                }
                (Some(cert), None) => {
                    self.error(
                        cert.span().start,
                        cx,
                        "key \"credentials.client_cert\": a client certificate needs its key (add client_key = \"...\")",
                    );
                    return None;
                }
                (None, Some(key)) => {
                    self.error(
                        key.span().start,
                        cx,
                        "key \"credentials.client_key\": a client key needs its certificate (add client_cert = \"...\")",
                    );
                    return None;
                }
                (None, None) => unreachable!("one way is present"),
            }
        };
        Some((credentials, inputs))
    }

    /// Token files written twice, or written over a credential.
    fn cross_check_files(&mut self, clusters: &[ClusterSettings], files: &[ClusterFiles]) {
        // Paths compare with their directories' symlinks resolved (once per
        // directory), so two spellings of one file are one file.
        let mut paths = super::ResolvedPaths::default();
        let mut resolve = |path: &Path| paths.resolve(path);
        let mut writers: HashMap<PathBuf, usize> = HashMap::new();
        let mut readers: HashMap<PathBuf, (usize, &'static str)> = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for (key, path, _) in &f.inputs {
                readers.entry(resolve(path)).or_insert((i, key));
            }
        }
        for (i, (cluster, f)) in clusters.iter().zip(files).enumerate() {
            let token_file = resolve(&cluster.token_file);
            let at = f.token_file_offset.unwrap_or(f.offset);
            let shown = cluster.token_file.display();
            let key = if f.token_file_offset.is_some() {
                "key \"token_file\""
            } else {
                "key \"token_file\" (defaulted to {token_dir}/{name}.token)"
            };
            if let Some(&first) = writers.get(&token_file) {
                if clusters[first].name == cluster.name {
                    // Already reported as a duplicate name.
                    continue;
                }
                let message = format!(
                    "{key}: {shown} is also written by {} (line {}) (give each cluster its own token_file)",
                    files[first].label,
                    self.report.line(
                        files[first]
                            .token_file_offset
                            .unwrap_or(files[first].offset)
                    ),
                );
                self.error(at, &f.label, message);
            } else {
                writers.insert(token_file.clone(), i);
            }
            if let Some(&(reader, credential)) = readers.get(&token_file) {
                let whose = if reader == i {
                    "this cluster's own".to_string()
                } else {
                    format!("{}'s", files[reader].label)
                };
                if !(reader == i && f.self_renew) {
                    let message = format!(
                        "{key}: {shown} is {whose} {credential}; mcprom would overwrite a credential \
                         with the token it issues (write the token elsewhere, e.g. /var/lib/mcprom/tokens/{}.token)",
                        cluster.name
                    );
                    self.error(at, &f.label, message);
                }
            }
        }
    }
}

impl Validator<'_> {
    /// Kubeconfig files written twice, or written over a token file, a
    /// file some cluster reads, or the config file itself.
    fn cross_check_kubeconfigs(&mut self, clusters: &[ClusterSettings], files: &[ClusterFiles]) {
        if clusters.iter().all(|c| c.kubeconfig_file.is_none()) {
            return;
        }
        // As in `cross_check_files`: each directory resolved once.
        let mut paths = super::ResolvedPaths::default();
        let mut resolve = |path: &Path| paths.resolve(path);
        // What each path already is: the config file, or a file of cluster
        // `i` (its key and where it is set). Described only on a clash.
        enum Owner {
            Config,
            Of(usize, &'static str, usize),
        }
        let mut taken: HashMap<PathBuf, Owner> = HashMap::new();
        taken.insert(resolve(&self.path), Owner::Config);
        for (i, (cluster, f)) in clusters.iter().zip(files).enumerate() {
            let at = f.token_file_offset.unwrap_or(f.offset);
            taken
                .entry(resolve(&cluster.token_file))
                .or_insert(Owner::Of(i, "token_file", at));
            for (key, path, at) in &f.inputs {
                taken.entry(resolve(path)).or_insert(Owner::Of(i, key, *at));
            }
        }
        for (i, (cluster, f)) in clusters.iter().zip(files).enumerate() {
            let Some(kubeconfig) = &cluster.kubeconfig_file else {
                continue;
            };
            let at = f.kubeconfig_file_offset.unwrap_or(f.offset);
            let key = if f.kubeconfig_file_offset.is_some() {
                "key \"kubeconfig_file\""
            } else {
                "key \"kubeconfig_file\" (defaulted to {kubeconfig_dir}/{name}.kubeconfig)"
            };
            let resolved = resolve(kubeconfig);
            let owner = match taken.get(&resolved) {
                None => {
                    taken.insert(resolved, Owner::Of(i, "kubeconfig_file", at));
                    continue;
                }
                // Already reported as a duplicate name.
                Some(Owner::Of(j, "kubeconfig_file", _)) if clusters[*j].name == cluster.name => {
                    continue;
                }
                Some(Owner::Config) => "the config file itself".to_owned(),
                Some(Owner::Of(j, other, where_)) => format!(
                    "{}the {other} of {} (line {})",
                    if *other == "kubeconfig_file" {
                        "also "
                    } else {
                        ""
                    },
                    files[*j].label,
                    self.report.line(*where_)
                ),
            };
            let message = format!(
                "{key}: {} is {owner}; mcprom would overwrite it with the kubeconfig it \
                 writes (give each cluster its own kubeconfig_file)",
                kubeconfig.display()
            );
            self.error(at, &f.label, message);
        }
    }
}

/// Why an API server at `scheme://host` must not be used, if it must not:
/// plain `http` carries mcprom's credential and the tokens it gets back in
/// clear, so it is allowed only to a loopback address (`kubectl proxy`,
/// which speaks TLS to the real API server itself). Checked on the config
/// (`api_server`) and on the server a kubeconfig names.
pub fn plain_http_refused(scheme: &str, host: &str) -> Option<String> {
    if !scheme.eq_ignore_ascii_case("http") {
        return None;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| {
        "plain http would send mcprom's credential and the tokens in clear: it is allowed \
         only to a loopback address (e.g. kubectl proxy on http://127.0.0.1:8001); use https://"
            .to_owned()
    })
}

/// `[a-z0-9][a-z0-9_-]*`.
fn valid_cluster_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// `namespace/name`: a DNS-1123 label and a DNS-1123 subdomain.
fn parse_service_account(text: &str) -> Result<ServiceAccountRef, &'static str> {
    let Some((namespace, name)) = text.split_once('/') else {
        return Err("has no '/'");
    };
    if !is_dns_label(namespace) {
        return Err("has an invalid namespace (lowercase letters, digits and '-', at most 63)");
    }
    if name.len() > 253 || !name.split('.').all(is_dns_label) {
        return Err("has an invalid name (lowercase letters, digits, '-' and '.')");
    }
    Ok(ServiceAccountRef {
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
