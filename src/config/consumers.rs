//! `[[consumer]]`: the validated settings of the things besides
//! `[prometheus]` that mcprom asks to reload, and their host checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use super::host::HostProblem;
use super::settings::{PrometheusSettings, ReloadMode, Settings};

/// The name `[prometheus]` goes by among the consumers (in logs, status
/// and `check --online`): no `[[consumer]]` may take it.
pub const PROMETHEUS_CONSUMER: &str = "prometheus";

/// Default `delay` of a `[[consumer]]`.
pub const DEFAULT_CONSUMER_DELAY: Duration = Duration::from_secs(2);
/// Default `timeout` of a `[[consumer]]`.
pub const DEFAULT_CONSUMER_TIMEOUT: Duration = Duration::from_secs(60);

/// The `PATH` a command consumer runs with (its environment is cleared).
pub const COMMAND_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One validated `[[consumer]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSettings {
    /// Unique name, `[a-z0-9][a-z0-9_-]*`, not "prometheus"; the metrics'
    /// `consumer` label.
    pub name: String,
    /// What a reload is.
    pub action: ConsumerAction,
    /// Only rotations of these clusters (`None`: every cluster).
    pub clusters: Option<Vec<String>>,
    /// Quiet period that coalesces rotations into one reload (default 2 s).
    pub delay: Duration,
    /// One reload request or command run (default 60 s).
    pub timeout: Duration,
}

/// How a consumer is reloaded.
#[derive(Debug, Clone, PartialEq)]
pub enum ConsumerAction {
    /// `POST {url}/-/reload` (Prometheus, vmagent, Grafana Alloy).
    Url(WebEndpoint),
    /// Run this argv (no shell) with a cleared environment.
    Command(Vec<String>),
}

/// A web endpoint with a Prometheus-compatible `/-/reload`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebEndpoint {
    /// Base URL.
    pub url: Url,
    /// CA of the web certificate (default: system roots).
    pub ca_file: Option<PathBuf>,
    /// Basic-auth user.
    pub username: Option<String>,
    /// File holding the basic-auth password (read on use).
    pub password_file: Option<PathBuf>,
    /// File holding a bearer token (read on use).
    pub bearer_token_file: Option<PathBuf>,
}

impl ConsumerSettings {
    /// Whether a rotation of `cluster` concerns this consumer.
    pub fn serves(&self, cluster: &str) -> bool {
        self.clusters
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == cluster))
    }

    /// `url` or `command`.
    pub fn kind(&self) -> &'static str {
        match self.action {
            ConsumerAction::Url(_) => "url",
            ConsumerAction::Command(_) => "command",
        }
    }

    /// What it reloads, for people: the URL (a password in it redacted) or
    /// the program.
    pub fn target(&self) -> String {
        match &self.action {
            ConsumerAction::Url(web) => {
                crate::outside::text(web.url.as_str().trim_end_matches('/'))
            }
            ConsumerAction::Command(argv) => {
                crate::outside::text(argv.first().map_or("", String::as_str))
            }
        }
    }

    /// The web endpoint as the settings [`crate::reload::Reloader`] takes.
    pub fn web_settings(&self) -> Option<PrometheusSettings> {
        let ConsumerAction::Url(web) = &self.action else {
            return None;
        };
        Some(PrometheusSettings {
            url: web.url.clone(),
            reload: ReloadMode::OnRotation,
            timeout: self.timeout,
            delay: self.delay,
            ca_file: web.ca_file.clone(),
            username: web.username.clone(),
            password_file: web.password_file.clone(),
            bearer_token_file: web.bearer_token_file.clone(),
        })
    }
}

/// Where a command's program is: itself when it names a path, else the
/// first executable of that name in [`COMMAND_PATH`].
pub fn resolve_program(program: &str) -> Result<PathBuf, String> {
    if program.contains('/') {
        let path = Path::new(program);
        return match executable(path) {
            Ok(()) => Ok(path.to_path_buf()),
            Err(why) => Err(format!("{program}: {why}")),
        };
    }
    COMMAND_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| executable(p).is_ok())
        .ok_or_else(|| format!("{program:?} is not an executable in {COMMAND_PATH}"))
}

fn executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("not executable".into());
    }
    Ok(())
}

/// Files a consumer names that cannot be read, and a command that cannot
/// be run. Like every host problem: `check` fails, `run` starts anyway.
pub(super) fn host_problems(settings: &Settings) -> Vec<HostProblem> {
    let mut problems = Vec::new();
    for consumer in &settings.consumers {
        let who = format!("consumer {:?}", consumer.name);
        let problem = |key: &str, path: Option<&Path>, message: String| HostProblem {
            cluster: None,
            key: format!("consumer.{key}"),
            path: path.map(Path::to_path_buf),
            message,
        };
        match &consumer.action {
            ConsumerAction::Url(web) => {
                let files = [
                    ("ca_file", &web.ca_file),
                    ("password_file", &web.password_file),
                    ("bearer_token_file", &web.bearer_token_file),
                ];
                for (key, path) in files {
                    let Some(path) = path else { continue };
                    let read = if key == "ca_file" {
                        super::input::read_certificates(path).map(drop)
                    } else {
                        super::input::read_text(path).map(drop)
                    };
                    if let Err(e) = read {
                        problems.push(problem(
                            key,
                            Some(path),
                            format!(
                                "{who}: key {key:?}: cannot read {}: {} (put the file there, \
                                 make it readable by the user mcprom runs as, or correct {key})",
                                path.display(),
                                e.message
                            ),
                        ));
                    }
                }
            }
            ConsumerAction::Command(argv) => {
                if let Err(why) = resolve_program(&argv[0]) {
                    problems.push(problem(
                        "command",
                        None,
                        format!(
                            "{who}: key \"command\": cannot run {why} (name the program by its \
                             absolute path; it runs without a shell, with PATH={COMMAND_PATH})"
                        ),
                    ));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: &str = include_str!("../../config/mcprom.toml");

    /// The reference file with its example cluster and consumers uncommented.
    fn reference_with_examples() -> String {
        let mut inside = false;
        let mut out = String::new();
        for line in REFERENCE.lines() {
            if line.contains("BEGIN EXAMPLE") {
                inside = true;
            } else if line.contains("END EXAMPLE") {
                inside = false;
            } else if inside {
                out.push_str(
                    line.strip_prefix("# ")
                        .unwrap_or(line.trim_start_matches('#')),
                );
            } else {
                out.push_str(line);
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn the_reference_consumers_are_valid_and_show_the_defaults() {
        let settings =
            super::super::parse(&reference_with_examples(), Path::new("/etc/mcprom.toml")).unwrap();
        let [vmagent, vector] = settings.consumers.as_slice() else {
            panic!("two example consumers: {:?}", settings.consumers);
        };
        assert_eq!(vmagent.name, "vmagent");
        assert_eq!(vmagent.kind(), "url");
        assert_eq!(vmagent.target(), "http://127.0.0.1:8429");
        assert_eq!(vmagent.clusters, None);
        assert!(vmagent.serves("prod"));
        for c in [vmagent, vector] {
            assert_eq!(c.delay, DEFAULT_CONSUMER_DELAY);
            assert_eq!(c.timeout, DEFAULT_CONSUMER_TIMEOUT);
        }
        assert_eq!(
            vector.action,
            ConsumerAction::Command(vec![
                "/usr/bin/touch".into(),
                "/var/lib/mcprom/reload/vector".into()
            ])
        );
    }

    #[test]
    fn a_limited_consumer_serves_only_its_clusters() {
        let text = "[[cluster]]\nname = \"a\"\napi_server = \"https://10.0.0.1\"\n\
                    service_account = \"kube-system/p\"\n[cluster.credentials]\nself = true\n\
                    [[cluster]]\nname = \"b\"\napi_server = \"https://10.0.0.2\"\n\
                    service_account = \"kube-system/p\"\n[cluster.credentials]\nself = true\n\
                    [[consumer]]\nname = \"x\"\ncommand = [\"kill\", \"-HUP\", \"1\"]\n\
                    clusters = [\"b\", \"b\"]\ndelay = \"0s\"\ntimeout = \"5s\"\n";
        let settings = super::super::parse(text, Path::new("/etc/mcprom.toml")).unwrap();
        let x = &settings.consumers[0];
        assert_eq!(x.clusters.as_deref(), Some(&["b".to_owned()][..]));
        assert!(x.serves("b") && !x.serves("a"));
        assert_eq!(x.delay, Duration::ZERO);
        assert_eq!(x.timeout, Duration::from_secs(5));
        assert_eq!(x.target(), "kill");
        assert!(resolve_program("kill").is_ok(), "kill is in {COMMAND_PATH}");
    }
}
