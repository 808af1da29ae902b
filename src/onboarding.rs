//! From config to a monitored cluster: the commands `mcprom rbac`,
//! `mcprom scrape-config` and `mcprom seed`. Each returns its exit code
//! (see [`crate::exit`]): 0 done, 1 failed, 2 no such cluster, 78 the
//! config file is unusable. Output goes to stdout, advice to stderr.

use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::config::{self, Settings};
use crate::control::{self, ClientError, Request, Response, RotateResult};
use crate::exit;
use crate::render::{self, RenderError, rbac, scrape};
use crate::selfrenew;

/// How long `scrape-config --static` waits for one cluster's node list.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `seed` waits for the running daemon's renewal (its own limit,
/// plus the conversation).
const RENEW_TIMEOUT: Duration = Duration::from_secs(crate::app::ROTATE_TIMEOUT.as_secs() + 10);

fn load(path: &Path) -> Result<Settings, u8> {
    config::load(path).map_err(|e| {
        eprintln!("{e}");
        exit::CONFIG
    })
}

fn failed(error: &RenderError) -> u8 {
    eprintln!("mcprom: {error}");
    match error {
        RenderError::UnknownCluster { .. } => exit::USAGE,
        RenderError::Cluster { .. } => exit::FAILED,
    }
}

fn print(text: &str) -> Result<(), u8> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| {
            eprintln!("mcprom: cannot write to stdout: {e}");
            exit::FAILED
        })
}

/// The clusters a command prints: the one named, or all; `None` (said on
/// stderr) when the file has none.
fn to_render<'a>(
    settings: &'a Settings,
    cluster: Option<&str>,
) -> Result<Option<Vec<&'a crate::config::ClusterSettings>>, u8> {
    let clusters = render::select(settings, cluster).map_err(|e| failed(&e))?;
    if clusters.is_empty() {
        eprintln!(
            "mcprom: {} has no [[cluster]]: nothing to print",
            settings.path.display()
        );
        return Ok(None);
    }
    Ok(Some(clusters))
}

/// `mcprom rbac [CLUSTER]`.
pub fn rbac(config_path: &Path, cluster: Option<&str>) -> Result<(), u8> {
    let settings = load(config_path)?;
    let Some(clusters) = to_render(&settings, cluster)? else {
        return Ok(());
    };
    if clusters.len() > 1 {
        eprintln!(
            "note: these are the manifests of {} clusters, each for its own cluster: apply them \
             one cluster at a time (`mcprom rbac NAME | kubectl --context ... apply -f -`)",
            clusters.len()
        );
    }
    let (yaml, warnings) = rbac::render(&clusters, &settings.path).map_err(|e| {
        eprintln!("mcprom: cannot render the manifests as YAML: {e}");
        exit::FAILED
    })?;
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    print(&yaml)
}

/// `mcprom scrape-config [CLUSTER] [--static] [--write-ca] [--discovery FORM]`.
pub async fn scrape_config(
    config_path: &Path,
    cluster: Option<&str>,
    static_form: bool,
    write_ca: bool,
    discovery: scrape::Discovery,
) -> Result<(), u8> {
    let settings = load(config_path)?;
    let Some(clusters) = to_render(&settings, cluster)? else {
        return Ok(());
    };
    // Everything is worked out before anything is printed: a partial list
    // of jobs would silently leave clusters unmonitored.
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for cluster in &clusters {
        let nodes = if static_form {
            match scrape::list_nodes(cluster, LIST_TIMEOUT).await {
                Ok(nodes) => Some(nodes),
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            }
        } else {
            None
        };
        let jobs = scrape::cluster_jobs(cluster, nodes.as_deref()).and_then(|mut jobs| {
            if discovery == scrape::Discovery::Kubeconfig {
                jobs.discover_with_kubeconfig(cluster)?;
            }
            Ok(jobs)
        });
        match jobs {
            Ok(jobs) => all.push(jobs),
            Err(e) => errors.push(e),
        }
        if write_ca {
            match scrape::write_embedded_ca(cluster) {
                Ok(Some(file)) => eprintln!(
                    "cluster {:?}: wrote the CA from its kubeconfig to {}",
                    cluster.name,
                    file.display()
                ),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
    }
    if let Some(code) = errors.iter().map(failed).max() {
        return Err(code);
    }
    for note in all.iter().flat_map(scrape::ClusterJobs::notes) {
        if !(write_ca && note.contains("--write-ca")) {
            eprintln!("note: {note}");
        }
    }
    let yaml = scrape::to_yaml(&all, &settings.path, static_form).map_err(|e| {
        eprintln!("mcprom: cannot render the scrape jobs as YAML: {e}");
        exit::FAILED
    })?;
    print(&yaml)
}

/// `mcprom seed CLUSTER`: a first token from stdin, then (when mcprom is
/// running) an immediate renewal with it, which proves the chain works.
pub async fn seed(config_path: &Path, name: &str) -> Result<(), u8> {
    let settings = load(config_path)?;
    let cluster = render::select(&settings, Some(name)).map_err(|e| failed(&e))?[0];
    let mut stdin = std::io::stdin().lock();
    if stdin.is_terminal() {
        eprintln!(
            "paste the token for {} and end with Ctrl-D (or pipe it: {})",
            cluster.service_account,
            selfrenew::reseed_command(&settings.path, cluster)
        );
    }
    let now = SystemTime::now();
    let seeded = selfrenew::seed(cluster, &mut stdin, now).map_err(|e| {
        eprintln!("mcprom seed {name}: {e}");
        exit::FAILED
    })?;
    let left = seeded.expires_at.duration_since(now).unwrap_or_default();
    let mut message = format!(
        "cluster {name:?}: stored a token for {} in {} (expires {}, in {}); a new \
         self-renewal chain starts now",
        cluster.service_account,
        cluster.token_file.display(),
        crate::text::rfc3339(seeded.expires_at),
        config::format_duration(Duration::from_secs(left.as_secs())),
    );
    if let Some(max) = cluster.max_chain_age {
        message.push_str(&format!(
            " and ends at {} (max_chain_age {})",
            crate::text::rfc3339(seeded.chain_started + max),
            config::format_duration(max)
        ));
    }
    println!("{message}");
    let lifetime_left_is_short = left < cluster.expiration.min(Duration::from_secs(600));
    if lifetime_left_is_short {
        eprintln!(
            "warning: the token expires in {}: mcprom must renew it before then, or the chain \
             breaks (a running mcprom is asked to at once; seed with a longer --duration to leave \
             more time to start it)",
            config::format_duration(Duration::from_secs(left.as_secs()))
        );
    }
    renew_now(&settings.control.socket, name).await
}

/// Ask a running mcprom to renew `cluster` now with the new seed, so that a
/// broken chain is repaired at once and the daemon's schedule follows the
/// new token. A daemon that is not running adopts the seed when it starts.
async fn renew_now(socket: &Path, cluster: &str) -> Result<(), u8> {
    let request = Request::Rotate {
        clusters: vec![cluster.to_owned()],
    };
    match control::call(socket, &request, RENEW_TIMEOUT).await {
        Ok(Response::Rotate { results }) => match results.into_iter().next() {
            Some(RotateResult { ok: true, .. }) => {
                println!(
                    "the running mcprom renewed the token with it: the self-renewal chain works"
                );
                Ok(())
            }
            Some(RotateResult { error, .. }) => {
                eprintln!(
                    "mcprom seed {cluster}: the token was stored, but the running mcprom could not \
                     renew it: {}",
                    error.as_deref().unwrap_or("no reason given")
                );
                Err(exit::FAILED)
            }
            None => Ok(()),
        },
        Ok(other) => {
            eprintln!("note: unexpected answer from the running mcprom: {other:?}");
            Ok(())
        }
        Err(ClientError::Unreachable { .. }) => {
            println!("mcprom is not running: it adopts the token when it starts");
            Ok(())
        }
        Err(e) => {
            eprintln!("note: {e}; the running mcprom picks the token up at its next attempt");
            Ok(())
        }
    }
}
