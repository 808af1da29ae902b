//! `mcprom check --online`: probe every cluster and Prometheus the way the
//! daemon talks to them, and print a checklist, changing nothing.
//!
//! Per cluster, with the credentials and TLS settings the daemon uses
//! ([`crate::apiserver::config`]): the API server is reachable (`GET /version`),
//! its TLS certificate verifies (and against which CA), mcprom's credential
//! is accepted (a `SelfSubjectReview`, which also says who mcprom is), it may
//! create tokens for the ServiceAccount (a `SelfSubjectAccessReview`), the
//! ServiceAccount exists, the token directory is writable and the file group
//! exists; and a warning when a legacy, never-expiring token Secret still
//! exists for the ServiceAccount. For Prometheus, unless `reload = "never"`:
//! reachable, ready, and its lifecycle API enabled (`/api/v1/status/flags`).
//! Per `[[consumer]]`: a url answers `GET /-/ready`; a command's program is
//! an executable (it is not run).
//!
//! Where mcprom's identity may not read what a check needs (least
//! privilege: it needs nothing but `create serviceaccounts/token`), the line
//! says "not checked: no permission" and does not fail.
//!
//! Nothing is changed: no TokenRequest, no reload. The requests are GETs
//! and the two review objects, which the API server evaluates and does not
//! store; the token directory sees only a temp file with mcprom's own
//! prefix, created and removed at once.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::{ClusterSettings, Settings};

mod cluster;
mod consumers;
mod local;
mod prometheus;
mod tls;

pub use prometheus::{check_prometheus, check_prometheus_jobs};

/// How long one request to an API server or Prometheus may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Passed (`✔`).
    Pass,
    /// Failed (`✘`): `check --online` exits 1.
    Fail,
    /// Works, but someone should act (`!`).
    Warn,
    /// Not checked: mcprom's identity may not read what it needs (`-`).
    NotChecked,
}

impl Mark {
    /// The symbol at the start of the line.
    pub fn symbol(self) -> char {
        match self {
            Mark::Pass => '✔',
            Mark::Fail => '✘',
            Mark::Warn => '!',
            Mark::NotChecked => '-',
        }
    }
}

/// One line of the checklist, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The outcome.
    pub mark: Mark,
    /// What was checked and what was found.
    pub text: String,
    /// What to do (failures, warnings, not checked).
    pub hint: Option<String>,
    /// For a failure in talking to the API server: its reason in the set
    /// of `mcprom_token_refresh_errors_total`, the reason the daemon gives
    /// the same failure ([`crate::apiserver::Failure::reason`],
    /// [`crate::apiserver::status_reason`]).
    pub reason: Option<&'static str>,
}

/// The checklist of one cluster, or of Prometheus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Section {
    /// `cluster "prod" (kube-system/prometheus-test)`, `Prometheus (URL)`.
    pub title: String,
    /// The lines, in checking order.
    pub checks: Vec<Check>,
}

impl Section {
    fn new(title: String) -> Self {
        Section {
            title,
            checks: Vec::new(),
        }
    }

    fn push(&mut self, mark: Mark, text: impl Into<String>, hint: Option<String>) {
        self.checks.push(Check {
            mark,
            text: text.into(),
            hint,
            reason: None,
        });
    }

    /// A failure with its reason ([`Check::reason`]).
    fn fail_because(
        &mut self,
        reason: &'static str,
        text: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.fail(text, hint);
        if let Some(check) = self.checks.last_mut() {
            check.reason = Some(reason);
        }
    }

    fn pass(&mut self, text: impl Into<String>) {
        self.push(Mark::Pass, text, None);
    }

    fn fail(&mut self, text: impl Into<String>, hint: impl Into<String>) {
        self.push(Mark::Fail, text, Some(hint.into()));
    }

    fn warn(&mut self, text: impl Into<String>, hint: impl Into<String>) {
        self.push(Mark::Warn, text, Some(hint.into()));
    }

    fn not_checked(&mut self, what: &str, why: impl Into<String>) {
        self.push(
            Mark::NotChecked,
            format!("{what}: not checked: no permission"),
            Some(why.into()),
        );
    }

    /// How many lines carry `mark`.
    pub fn count(&self, mark: Mark) -> usize {
        self.checks.iter().filter(|c| c.mark == mark).count()
    }

    /// The section as printed: the title, then one indented line per check,
    /// each hint on its own line below it.
    pub fn render(&self) -> String {
        let mut out = format!("{}\n", self.title);
        for check in &self.checks {
            let _ = writeln!(out, "  {} {}", check.mark.symbol(), check.text);
            if let Some(hint) = &check.hint {
                let _ = writeln!(out, "      hint: {hint}");
            }
        }
        out
    }
}

/// Totals over every section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// `✔` lines.
    pub passed: usize,
    /// `✘` lines: any makes `check --online` exit 1.
    pub failed: usize,
    /// `!` lines.
    pub warnings: usize,
    /// `-` lines.
    pub not_checked: usize,
}

impl Summary {
    fn add(&mut self, section: &Section) {
        self.passed += section.count(Mark::Pass);
        self.failed += section.count(Mark::Fail);
        self.warnings += section.count(Mark::Warn);
        self.not_checked += section.count(Mark::NotChecked);
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        write!(
            f,
            "online checks: {} passed, {} failed, {} warning{}, {} not checked",
            self.passed,
            self.failed,
            self.warnings,
            plural(self.warnings),
            self.not_checked
        )
    }
}

/// Check every cluster (at most `limits.concurrent_requests` at once) and
/// Prometheus, print each section to stdout in config order as soon as it
/// and those before it are done, then the totals.
pub async fn run(settings: &Settings, mint: bool) -> Summary {
    let limit = Arc::new(Semaphore::new(settings.limits.concurrent_requests.get()));
    let config_file: Arc<Path> = settings.path.as_path().into();
    let mut sections: Vec<_> = settings
        .clusters
        .iter()
        .map(|cluster| {
            let cluster = cluster.clone();
            let limit = limit.clone();
            let config = config_file.clone();
            let title = cluster_title(&cluster);
            let task = tokio::spawn(async move {
                let _permit = limit.acquire_owned().await;
                check_cluster(&cluster, &config, mint).await
            });
            (title, task)
        })
        .collect();
    let prometheus = tokio::spawn(check_prometheus(settings.prometheus.clone()));
    sections.push(("Prometheus".to_owned(), prometheus));
    let clusters: Vec<(String, PathBuf)> = settings
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.token_file.clone()))
        .collect();
    let jobs = tokio::spawn(check_prometheus_jobs(settings.prometheus.clone(), clusters));
    sections.push(("Prometheus jobs".to_owned(), jobs));
    for consumer in &settings.consumers {
        let title = consumers::title(consumer);
        let task = tokio::spawn(consumers::check_consumer(consumer.clone()));
        sections.push((title, task));
    }
    let mut summary = Summary::default();
    for (title, task) in sections {
        let section = task.await.unwrap_or_else(|e| {
            let mut s = Section::new(title);
            s.fail(
                format!("the check itself failed: {e}"),
                "this is a bug in mcprom; please report it",
            );
            s
        });
        summary.add(&section);
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(section.render().as_bytes());
        let _ = out.flush();
    }
    println!("{summary}");
    summary
}

fn cluster_title(cluster: &ClusterSettings) -> String {
    format!("cluster {:?} ({})", cluster.name, cluster.service_account)
}

/// Every check of one cluster.
///
/// `config` is the file the cluster comes from (named in the re-seed
/// instruction of a self-renewing cluster).
pub async fn check_cluster(cluster: &ClusterSettings, config: &Path, mint: bool) -> Section {
    let mut section = Section::new(cluster_title(cluster));
    let legacy = cluster::check_api_server(cluster, config, mint, &mut section).await;
    let local = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || local::local_checks(&cluster)).await
    };
    match local {
        Ok(checks) => section.checks.extend(checks),
        Err(e) => section.fail(
            format!("token directory: the check itself failed: {e}"),
            "this is a bug in mcprom; please report it",
        ),
    }
    section.checks.extend(legacy);
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_render_marks_and_hints_and_count() {
        let mut s = Section::new("cluster \"c1\" (kube-system/prometheus-test)".into());
        s.pass("reachable");
        s.fail(
            "TLS verified with ca_file /x",
            "point ca_file at the right CA",
        );
        s.warn("legacy Secret", "delete it");
        s.not_checked("ServiceAccount exists", "403");
        assert_eq!(
            s.render(),
            "cluster \"c1\" (kube-system/prometheus-test)\n  ✔ reachable\n  \
             ✘ TLS verified with ca_file /x\n      hint: point ca_file at the right CA\n  \
             ! legacy Secret\n      hint: delete it\n  \
             - ServiceAccount exists: not checked: no permission\n      hint: 403\n"
        );
        let mut total = Summary::default();
        total.add(&s);
        assert_eq!(
            total,
            Summary {
                passed: 1,
                failed: 1,
                warnings: 1,
                not_checked: 1
            }
        );
        assert_eq!(
            total.to_string(),
            "online checks: 1 passed, 1 failed, 1 warning, 1 not checked"
        );
    }
}
