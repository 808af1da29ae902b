//! Prometheus's checks: reachable, ready, lifecycle API enabled, and which
//! of its jobs read the token files. Never reloads.

use std::path::PathBuf;

use serde_json::Value;

use super::{REQUEST_TIMEOUT, Section};
use crate::config::{PrometheusSettings, ReloadMode};
use crate::reload::{ReloadError, Reloader};

/// Prometheus's loaded configuration against the managed token files:
/// which jobs read each, a file no job reads, a job reading a file in the
/// token directory that no cluster writes (a typo), and targets failing
/// with 401/403 now.
pub async fn check_prometheus_jobs(
    settings: PrometheusSettings,
    clusters: Vec<(String, PathBuf)>,
) -> Section {
    let url = settings.url.as_str().trim_end_matches('/').to_owned();
    let mut s = Section::new(format!("Prometheus jobs ({url})"));
    let settings = PrometheusSettings {
        timeout: settings.timeout.min(REQUEST_TIMEOUT),
        ..settings
    };
    let findings = match Reloader::new(settings) {
        Ok(reader) => crate::consumer::check(&reader, &clusters).await,
        Err(e) => Err(e.to_string()),
    };
    let findings = match findings {
        Ok(f) => f,
        Err(e) => {
            s.not_checked("which jobs read the token files", e);
            return s;
        }
    };
    for (cluster, usage) in &findings.usage {
        if usage.jobs.is_empty() {
            continue; // a warning below
        }
        let what = format!(
            "cluster {cluster:?}: token file read by {}",
            usage.jobs.join(", ")
        );
        if usage.rejected > 0 {
            s.fail(
                format!("{what}: {} targets fail with 401/403", usage.rejected),
                format!(
                    "Prometheus is presenting a rejected token for cluster {cluster:?}: see \
                     `mcprom status` and the token file line of cluster {cluster:?} above"
                ),
            );
        } else {
            s.pass(what);
        }
    }
    for warning in findings.warnings {
        s.warn(
            warning,
            "point the job's authorization.credentials_file (or bearer_token_file) at the \
             cluster's token file: `mcprom scrape-config` prints the jobs",
        );
    }
    s
}

/// Prometheus: reachable, ready, lifecycle API enabled. Never reloads.
pub async fn check_prometheus(settings: PrometheusSettings) -> Section {
    let url = crate::outside::text(settings.url.as_str().trim_end_matches('/'));
    if settings.reload == ReloadMode::Never {
        return Section::new(format!(
            "Prometheus ({url}): not checked: reload = \"never\", mcprom does not call it"
        ));
    }
    let mut s = Section::new(format!("Prometheus ({url})"));
    let settings = PrometheusSettings {
        timeout: settings.timeout.min(REQUEST_TIMEOUT),
        ..settings
    };
    let reloader = match Reloader::new(settings) {
        Ok(r) => r,
        Err(e) => {
            s.fail(
                format!("Prometheus not checked: {e}"),
                "fix [prometheus] ca_file",
            );
            return s;
        }
    };
    let (status, _) = match reloader.get("/-/ready").await {
        Ok(answer) => answer,
        Err(e) => {
            let text = match &e {
                ReloadError::Timeout(d) => format!("no answer from {url} within {d:?}"),
                other => other.to_string(),
            };
            s.fail(
                format!("reachable: {text}"),
                "start Prometheus, or correct [prometheus] url",
            );
            return s;
        }
    };
    s.pass("reachable");
    match status {
        200 => s.pass("ready"),
        503 => s.fail(
            "ready: not yet (503: Prometheus is still starting)",
            "after a restart Prometheus replays its write-ahead log first, which can take \
             minutes; check again shortly",
        ),
        401 => s.fail(
            "ready: Prometheus wants credentials (401)",
            "set username + password_file or bearer_token_file in [prometheus]",
        ),
        code => s.fail(
            format!("ready: GET /-/ready answered {code}"),
            "[prometheus] url must point at Prometheus's web endpoint (with its \
             --web.route-prefix, if any)",
        ),
    }
    let lifecycle_hint = "start Prometheus with --web.enable-lifecycle (Debian: ARGS in \
                          /etc/default/prometheus) or set reload = \"never\" in [prometheus] \
                          (token files are re-read on every scrape anyway)";
    match reloader.get("/api/v1/status/flags").await {
        Ok((200, body)) => {
            let flag = serde_json::from_str::<Value>(&body).ok().and_then(|v| {
                v["data"]["web.enable-lifecycle"]
                    .as_str()
                    .map(str::to_owned)
            });
            match flag.as_deref() {
                Some("true") => s.pass("lifecycle API enabled (--web.enable-lifecycle)"),
                Some(_) => s.fail(
                    "lifecycle API disabled: POST /-/reload would be refused (403)",
                    lifecycle_hint,
                ),
                None => s.fail(
                    "lifecycle API: cannot tell, /api/v1/status/flags does not list \
                     web.enable-lifecycle",
                    lifecycle_hint,
                ),
            }
        }
        Ok((code @ (401 | 403), _)) => s.not_checked(
            "lifecycle API enabled",
            format!("GET /api/v1/status/flags answered {code}"),
        ),
        Ok((code, _)) => s.fail(
            format!("lifecycle API: cannot tell, GET /api/v1/status/flags answered {code}"),
            lifecycle_hint,
        ),
        Err(e) => s.fail(format!("lifecycle API: {e}"), "run the check again"),
    }
    s
}
