//! The control-socket clients: `mcprom status`, `mcprom rotate`, `mcprom reload`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{self, Settings};
use crate::control::{self, ClientError, ClusterReport, Request, Response, StatusReport};
use crate::exit;

const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

fn unreachable_hint(e: &ClientError) -> String {
    format!(
        "{e}\n(is mcprom running? `systemctl status mcprom`; the socket is [control] socket in the config)"
    )
}

/// What the token files on disk say, for when the daemon is not running.
pub fn status_from_disk(settings: &Settings) -> StatusReport {
    let now = SystemTime::now();
    StatusReport {
        clusters: settings
            .clusters
            .iter()
            .map(|c| {
                let claims = crate::sink::read_token(&c.token_file)
                    .ok()
                    .and_then(|t| t.claims().ok());
                let (state, expires_at, issued_at, error) = match &claims {
                    None => (
                        "unknown",
                        None,
                        None,
                        Some("no readable token file".to_owned()),
                    ),
                    Some(claims) => (
                        if claims.expiry() > now {
                            "fresh"
                        } else {
                            "expired"
                        },
                        Some(claims.expiry()),
                        claims
                            .issued_at
                            .map(|s| UNIX_EPOCH + Duration::from_secs(s)),
                        None,
                    ),
                };
                ClusterReport {
                    name: c.name.clone(),
                    service_account: c.service_account.to_string(),
                    token_file: c.token_file.clone(),
                    state: state.to_owned(),
                    expires_at: expires_at.map(control::rfc3339),
                    issued_at: issued_at.map(control::rfc3339),
                    last_refresh: None,
                    next_refresh: None,
                    last_error: error,
                    verified_at: None,
                    rejected_since: None,
                    rejections: 0,
                    prometheus_jobs: None,
                    prometheus_targets_rejected: None,
                    kubeconfig_file: c.kubeconfig_file.clone(),
                }
            })
            .collect(),
        consumers: Vec::new(),
    }
}

fn parse_time(text: &Option<String>) -> Option<SystemTime> {
    let t: jiff::Timestamp = text.as_deref()?.parse().ok()?;
    Some(SystemTime::from(t))
}

fn relative(text: &Option<String>, now: SystemTime) -> String {
    match parse_time(text) {
        None => "-".to_owned(),
        Some(t) => match t.duration_since(now) {
            Ok(ahead) => format!(
                "in {}",
                config::format_duration(Duration::from_secs(ahead.as_secs()))
            ),
            Err(e) => format!(
                "{} ago",
                config::format_duration(Duration::from_secs(e.duration().as_secs()))
            ),
        },
    }
}

/// Render the table.
pub fn table(report: &StatusReport) -> String {
    let now = SystemTime::now();
    let header = [
        "CLUSTER",
        "SERVICE ACCOUNT",
        "TOKEN FILE",
        "STATE",
        "EXPIRES",
        "LAST REFRESH",
        "NEXT REFRESH",
        "LAST ERROR",
    ];
    let rows: Vec<[String; 8]> = report
        .clusters
        .iter()
        .map(|c| {
            [
                c.name.clone(),
                c.service_account.clone(),
                c.token_file.display().to_string(),
                c.state.clone(),
                relative(&c.expires_at, now),
                relative(&c.last_refresh, now),
                relative(&c.next_refresh, now),
                // The table goes to a terminal: what the daemon quotes
                // from outside is shown safely here too.
                c.last_error
                    .as_deref()
                    .map_or_else(|| "-".into(), crate::outside::text),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()).take(7) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i < 7 {
                text.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                text.push_str(cell);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    for c in &report.consumers {
        out.push_str(&crate::consumers::status_line(c));
        out.push('\n');
    }
    out
}

fn healthy(report: &StatusReport) -> bool {
    report
        .clusters
        .iter()
        .all(|c| matches!(c.state.as_str(), "fresh" | "refreshing") && c.rejected_since.is_none())
}

/// `mcprom status [--json]`.
pub async fn status(settings: &Settings, json: bool) -> u8 {
    let socket = &settings.control.socket;
    let (report, reachable) = match control::call(socket, &Request::Status, STATUS_TIMEOUT).await {
        Ok(Response::Status(report)) => (report, true),
        Ok(other) => {
            eprintln!("mcprom status: unexpected answer from the daemon: {other:?}");
            return exit::FAILED;
        }
        Err(e) => {
            eprintln!("{}", unreachable_hint(&e));
            eprintln!("mcprom is not running; what the token files on disk say:");
            (status_from_disk(settings), false)
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", table(&report));
    }
    if !reachable {
        exit::UNAVAILABLE
    } else if healthy(&report) {
        exit::OK
    } else {
        exit::FAILED
    }
}

/// `mcprom rotate [CLUSTER...]`.
pub async fn rotate(settings: &Settings, clusters: Vec<String>) -> u8 {
    let request = Request::Rotate { clusters };
    match control::call(
        &settings.control.socket,
        &request,
        crate::app::ROTATE_TIMEOUT + STATUS_TIMEOUT,
    )
    .await
    {
        Ok(Response::Rotate { results }) => {
            let mut code = exit::OK;
            for r in results {
                match r.error {
                    None => println!("{}: rotated", r.cluster),
                    Some(e) => {
                        code = exit::FAILED;
                        println!("{}: FAILED: {e}", r.cluster);
                    }
                }
            }
            code
        }
        Ok(other) => {
            eprintln!("mcprom rotate: unexpected answer from the daemon: {other:?}");
            exit::FAILED
        }
        Err(e) => {
            eprintln!("{}", unreachable_hint(&e));
            exit::UNAVAILABLE
        }
    }
}

/// `mcprom reload`: the daemon re-reads its config; non-zero when invalid.
pub async fn reload(socket: &std::path::Path) -> u8 {
    match control::call(socket, &Request::Reload, RELOAD_TIMEOUT).await {
        Ok(Response::Reload {
            ok: true, changed, ..
        }) => {
            println!(
                "{}",
                if changed {
                    "configuration reloaded"
                } else {
                    "configuration re-read: nothing changed"
                }
            );
            exit::OK
        }
        Ok(Response::Reload { error, .. }) => {
            eprintln!(
                "the new configuration is invalid; mcprom keeps running with the last good one:\n{}",
                error.unwrap_or_default()
            );
            exit::CONFIG
        }
        Ok(other) => {
            eprintln!("mcprom reload: unexpected answer from the daemon: {other:?}");
            exit::FAILED
        }
        Err(e) => {
            eprintln!("{}", unreachable_hint(&e));
            exit::UNAVAILABLE
        }
    }
}
