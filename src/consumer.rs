//! Checking the consumer: is Prometheus really using the token files
//! mcprom writes, and does the API server accept what it presents?
//!
//! Read-only: `GET /api/v1/status/config` (the configuration Prometheus has
//! loaded) and `GET /api/v1/targets` (the health of every scrape), on a
//! slow schedule and after each reload. Per cluster: the jobs that read its
//! token file (`bearer_token_file` or `authorization.credentials_file`,
//! anywhere in the job, `kubernetes_sd_configs` included) and how many of
//! their targets fail with 401/403 now. Warned about: a managed token file
//! no job reads, and a job reading a file in mcprom's token directory that
//! no cluster writes (a typo). Never affects rotation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_yaml_ng::Value as Yaml;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::reload::Reloader;
use crate::rotator::RotateRequests;
use crate::state::State;

/// How often Prometheus is read when nothing happens.
pub const PERIOD: Duration = Duration::from_secs(300);
/// Up to this many clusters whose token file no job reads get a line each.
const UNUSED_ONE_BY_ONE: usize = 3;
/// Largest configuration or target list read.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// A scrape job and the credential files it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// `job_name`.
    pub name: String,
    /// `bearer_token_file` / `credentials_file` values anywhere in the job.
    pub files: Vec<PathBuf>,
}

/// The jobs of a Prometheus configuration (YAML, as `/api/v1/status/config`
/// returns it: paths already absolute).
pub fn jobs(yaml: &str) -> Result<Vec<Job>, String> {
    let doc: Yaml = serde_yaml_ng::from_str(yaml)
        .map_err(|e| format!("cannot parse its configuration: {e}"))?;
    let mut out = Vec::new();
    let Some(configs) = doc.get("scrape_configs").and_then(Yaml::as_sequence) else {
        return Ok(out);
    };
    for config in configs {
        let Some(name) = config.get("job_name").and_then(Yaml::as_str) else {
            continue;
        };
        let mut files = Vec::new();
        collect_files(config, &mut files);
        out.push(Job {
            name: name.to_owned(),
            files,
        });
    }
    Ok(out)
}

fn collect_files(value: &Yaml, files: &mut Vec<PathBuf>) {
    match value {
        Yaml::Mapping(map) => {
            for (key, value) in map {
                match (key.as_str(), value.as_str()) {
                    (Some("bearer_token_file" | "credentials_file"), Some(path)) => {
                        files.push(PathBuf::from(path));
                    }
                    _ => collect_files(value, files),
                }
            }
        }
        Yaml::Sequence(items) => items.iter().for_each(|v| collect_files(v, files)),
        _ => {}
    }
}

/// Per job (scrape pool), the active targets whose last scrape failed with
/// 401 or 403, from the JSON of `/api/v1/targets`.
pub fn rejected_targets(json: &str) -> Result<HashMap<String, u64>, String> {
    let doc: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("cannot parse its target list: {e}"))?;
    let targets = doc["data"]["activeTargets"]
        .as_array()
        .ok_or("its target list has no data.activeTargets")?;
    let mut out = HashMap::new();
    for target in targets {
        let job = target["scrapePool"]
            .as_str()
            .or_else(|| target["labels"]["job"].as_str())
            .unwrap_or_default();
        let error = target["lastError"].as_str().unwrap_or_default();
        let rejected = target["health"] == "down"
            && (error.contains("401 Unauthorized")
                || error.contains("403 Forbidden")
                || error.contains("status 401")
                || error.contains("status 403"));
        let count = out.entry(job.to_owned()).or_insert(0);
        if rejected {
            *count += 1;
        }
    }
    Ok(out)
}

/// One cluster's use by Prometheus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Jobs that read the cluster's token file.
    pub jobs: Vec<String>,
    /// Their targets failing with 401/403 now.
    pub rejected: u64,
}

/// What the cross-check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// Per cluster name.
    pub usage: BTreeMap<String, Usage>,
    /// Problems worth a warning, one sentence each.
    pub warnings: Vec<String>,
}

/// Cross-check the jobs with the managed token files (`(cluster, file)`).
pub fn cross_check(
    jobs: &[Job],
    rejected: &HashMap<String, u64>,
    clusters: &[(String, PathBuf)],
) -> Findings {
    let mut findings = Findings::default();
    let managed: BTreeSet<&Path> = clusters.iter().map(|(_, f)| f.as_path()).collect();
    let dirs: BTreeSet<&Path> = managed.iter().filter_map(|f| f.parent()).collect();
    let mut unused = Vec::new();
    for (cluster, file) in clusters {
        let using: Vec<String> = jobs
            .iter()
            .filter(|j| j.files.iter().any(|f| f == file))
            .map(|j| j.name.clone())
            .collect();
        if using.is_empty() {
            unused.push((cluster, file));
        }
        let count = using
            .iter()
            .map(|j| rejected.get(j).copied().unwrap_or(0))
            .sum();
        findings.usage.insert(
            cluster.clone(),
            Usage {
                jobs: using,
                rejected: count,
            },
        );
    }
    // One line per cluster for a few; one line for many (a Prometheus that
    // is not the one scraping 10,000 clusters should not log 10,000 lines).
    if unused.len() <= UNUSED_ONE_BY_ONE {
        for (cluster, file) in &unused {
            findings.warnings.push(format!(
                "no Prometheus job reads the token file of cluster {cluster:?} ({}): Prometheus \
                 does not use this token (`mcprom scrape-config {cluster}` prints a job that does)",
                file.display()
            ));
        }
    } else {
        let names: Vec<&str> = unused.iter().map(|(c, _)| c.as_str()).take(5).collect();
        findings.warnings.push(format!(
            "no Prometheus job reads the token files of {} clusters ({}, …): is [prometheus] url \
             the Prometheus that scrapes them? (`mcprom scrape-config` prints the jobs)",
            unused.len(),
            names.join(", ")
        ));
    }
    for job in jobs {
        for file in &job.files {
            let Some(dir) = file.parent().filter(|d| dirs.contains(d)) else {
                continue;
            };
            if !managed.contains(file.as_path()) {
                let text = file.display().to_string();
                let siblings: Vec<String> = managed
                    .iter()
                    .filter(|f| f.parent() == Some(dir))
                    .filter_map(|f| Some(f.file_name()?.to_string_lossy().into_owned()))
                    .collect();
                let siblings: Vec<&str> = siblings.iter().map(String::as_str).collect();
                let typed = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let hint = crate::config::did_you_mean(&typed, &siblings)
                    .map(|m| format!(" (did you mean {}?)", dir.join(m).display()))
                    .unwrap_or_default();
                findings.warnings.push(format!(
                    "Prometheus job {:?} reads {text}, in mcprom's token directory, but no cluster \
                     writes that file{hint}: its scrapes fail",
                    job.name
                ));
            }
        }
    }
    findings
}

/// Read Prometheus and cross-check it with the clusters in `state`.
pub async fn check(
    reloader: &Reloader,
    clusters: &[(String, PathBuf)],
) -> Result<Findings, String> {
    let config = read(reloader, "/api/v1/status/config").await?;
    let config: serde_json::Value = serde_json::from_str(&config)
        .map_err(|e| format!("cannot parse /api/v1/status/config: {e}"))?;
    let yaml = config["data"]["yaml"]
        .as_str()
        .ok_or("/api/v1/status/config has no data.yaml")?;
    let jobs = jobs(yaml)?;
    let targets = read(reloader, "/api/v1/targets?state=active").await?;
    let rejected = rejected_targets(&targets)?;
    Ok(cross_check(&jobs, &rejected, clusters))
}

async fn read(reloader: &Reloader, path: &str) -> Result<String, String> {
    match reloader.get_limited(path, MAX_BODY).await {
        Ok((200, body)) => Ok(body),
        Ok((401, _)) => Err(format!(
            "GET {path}: 401: set username + password_file or bearer_token_file in [prometheus]"
        )),
        Ok((404, _)) => Err(format!(
            "GET {path}: 404: this Prometheus (or what answers at [prometheus] url) has no such API"
        )),
        Ok((code, body)) => Err(format!(
            "GET {path}: {code}: {}",
            crate::text::one_line(&body.chars().take(200).collect::<String>())
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The running clusters' request lists, so that a 401/403 seen by
/// Prometheus makes the cluster's rotator review its token at once.
#[derive(Debug, Clone, Default)]
pub struct ReviewHooks(Arc<std::sync::Mutex<HashMap<String, Arc<RotateRequests>>>>);

impl ReviewHooks {
    /// Register (or replace) a running cluster's request list.
    pub fn insert(&self, name: &str, requests: Arc<RotateRequests>) {
        self.lock().insert(name.to_owned(), requests);
    }

    /// Forget a cluster.
    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    fn request(&self, name: &str) {
        if let Some(r) = self.lock().get(name) {
            r.request_review();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<RotateRequests>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Read Prometheus every [`PERIOD`] and right after each reload until
/// `cancel`; report findings once each (again after they went away and
/// came back) and keep the per-cluster figures in `state`.
pub async fn watch(
    reloader: Reloader,
    state: Arc<State>,
    review: ReviewHooks,
    cancel: CancellationToken,
) {
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut failing: Option<String> = None;
    let mut last_reloads = u64::MAX;
    // No polling: wake for the next slow read or for a reload, nothing else.
    let mut reload_events = state.subscribe_reloads();
    let mut next_read = tokio::time::Instant::now();
    loop {
        let reloads = state.reloads().ok;
        if tokio::time::Instant::now() >= next_read || reloads != last_reloads {
            last_reloads = reloads;
            let clusters: Vec<(String, PathBuf)> = state
                .clusters()
                .into_iter()
                .map(|c| (c.name, c.token_file))
                .collect();
            match check(&reloader, &clusters).await {
                Ok(findings) => {
                    if failing.take().is_some() {
                        info!("Prometheus's configuration and targets can be read again");
                    }
                    let now: BTreeSet<String> = findings.warnings.iter().cloned().collect();
                    for warning in now.difference(&reported) {
                        warn!("{warning}");
                    }
                    reported = now;
                    for (name, usage) in findings.usage {
                        if usage.rejected > 0 {
                            review.request(&name);
                        }
                        record(&state, &name, Some(usage.jobs), Some(usage.rejected));
                    }
                }
                Err(e) => {
                    if failing.as_deref() != Some(e.as_str()) {
                        warn!(error = %e, "cannot read Prometheus's configuration or targets: which jobs use the token files is unknown; retrying every {}s", PERIOD.as_secs());
                        failing = Some(e);
                    }
                    for (name, _) in &clusters {
                        record(&state, name, None, None);
                    }
                }
            }
            next_read = tokio::time::Instant::now() + PERIOD;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep_until(next_read) => {}
            Ok(()) = reload_events.changed() => {}
        }
    }
}

/// Store one cluster's consumer figures, announcing only a change: every
/// read repeats them for every cluster, and an unchanged status must not
/// wake the daemon (10,000 clusters every few minutes).
fn record(state: &State, name: &str, jobs: Option<Vec<String>>, rejected: Option<u64>) {
    state.update_if(name, |s| {
        if s.prometheus_jobs == jobs && s.prometheus_targets_rejected == rejected {
            return false;
        }
        s.prometheus_jobs = jobs;
        s.prometheus_targets_rejected = rejected;
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
global:
  scrape_interval: 15s
scrape_configs:
- job_name: prod-cadvisor
  authorization:
    type: Bearer
    credentials_file: /var/lib/mcprom/tokens/prod.token
- job_name: staging-nodes
  kubernetes_sd_configs:
  - role: node
    api_server: https://10.0.0.1:6443
    authorization:
      credentials_file: /var/lib/mcprom/tokens/staging.token
  bearer_token_file: /var/lib/mcprom/tokens/staging.token
- job_name: typo
  authorization:
    credentials_file: /var/lib/mcprom/tokens/prdo.token
- job_name: self
  static_configs:
  - targets: [localhost:9090]
"#;

    fn clusters() -> Vec<(String, PathBuf)> {
        ["prod", "staging", "dev"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    format!("/var/lib/mcprom/tokens/{n}.token").into(),
                )
            })
            .collect()
    }

    #[test]
    fn jobs_name_their_token_files_wherever_they_are() {
        let jobs = jobs(CONFIG).unwrap();
        assert_eq!(jobs.len(), 4);
        assert_eq!(jobs[1].name, "staging-nodes");
        assert_eq!(jobs[1].files.len(), 2, "{jobs:?}");
        assert!(jobs[3].files.is_empty());
    }

    #[test]
    fn unused_files_and_typos_are_found_and_rejections_counted_per_cluster() {
        let targets = r#"{"status":"success","data":{"activeTargets":[
          {"scrapePool":"prod-cadvisor","health":"down","lastError":"server returned HTTP status 401 Unauthorized"},
          {"scrapePool":"prod-cadvisor","health":"up","lastError":""},
          {"scrapePool":"staging-nodes","health":"down","lastError":"context deadline exceeded"}]}}"#;
        let rejected = rejected_targets(targets).unwrap();
        let f = cross_check(&jobs(CONFIG).unwrap(), &rejected, &clusters());
        assert_eq!(f.usage["prod"].jobs, ["prod-cadvisor"]);
        assert_eq!(f.usage["prod"].rejected, 1);
        assert_eq!(f.usage["staging"].rejected, 0);
        assert!(f.usage["dev"].jobs.is_empty());
        assert_eq!(f.warnings.len(), 2, "{:?}", f.warnings);
        assert!(
            f.warnings[0].contains("cluster \"dev\""),
            "{:?}",
            f.warnings
        );
        assert!(
            f.warnings[1].contains("job \"typo\" reads /var/lib/mcprom/tokens/prdo.token")
                && f.warnings[1].contains("did you mean /var/lib/mcprom/tokens/prod.token?"),
            "{:?}",
            f.warnings
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(jobs("scrape_configs: [").is_err());
        assert!(rejected_targets("{}").is_err());
        assert!(rejected_targets("nope").is_err());
        assert!(jobs("global: {}").unwrap().is_empty());
    }

    #[test]
    fn a_read_that_repeats_the_figures_wakes_nobody() {
        let state = State::default();
        for name in ["a", "b"] {
            state.insert(crate::state::ClusterStatus::new(
                name,
                "ns/sa".into(),
                format!("/t/{name}").into(),
            ));
        }
        let mut changes = state.subscribe();
        let jobs = || Some(vec!["a-cadvisor".to_owned()]);
        record(&state, "a", jobs(), Some(0));
        assert!(changes.has_changed().unwrap(), "new figures are announced");
        changes.mark_unchanged();
        // The next reads: the same figures, and Prometheus unreadable for
        // a cluster whose figures were already unknown.
        record(&state, "a", jobs(), Some(0));
        record(&state, "b", None, None);
        assert!(
            !changes.has_changed().unwrap(),
            "an unchanged status woke the daemon"
        );
        record(&state, "a", jobs(), Some(1));
        assert!(changes.has_changed().unwrap());
        let a = &state.clusters()[0];
        assert_eq!(a.prometheus_targets_rejected, Some(1));
        assert_eq!(a.prometheus_jobs, jobs());
    }
}
