//! `[[consumer]]`: more things to reload after token files change, each on
//! its own.
//!
//! Every consumer has its own [`ReloadQueue`] and its own task ([`run`]):
//! its own quiet period (`delay`), its own coalescing (any number of
//! rotations in one batch → one reload), its own backoff. A rotator only
//! bumps counters ([`ClusterReload`]), so a consumer that is down, slow or
//! hanging delays neither another consumer nor any rotation. A consumer
//! with `clusters` hears only of those clusters' rotations.
//!
//! A consumer is reloaded either with `POST {url}/-/reload` (the
//! [`Reloader`] `[prometheus]` uses: Prometheus, vmagent, Grafana Alloy) or
//! by running a command ([`run_command`]): an argv without a shell, with a
//! cleared environment, stdin and stdout on /dev/null, in its own process
//! group that is killed at `timeout` and when it exits; its exit status and
//! the start of its stderr go to the log.

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{COMMAND_PATH, ConsumerAction, ConsumerSettings};
use crate::reload::{ReloadError, ReloadQueue, ReloadRequest, Reloader};

/// Most bytes of a command's stderr kept for the log.
pub const MAX_COMMAND_STDERR: usize = 4096;
/// How long stderr is still read after the command exited (a background
/// process may hold it open).
const STDERR_GRACE: Duration = Duration::from_secs(1);

/// The environment a command consumer runs with, besides
/// `MCPROM_CONSUMER` (its name): nothing of mcprom's own environment.
pub const COMMAND_ENV: [(&str, &str); 2] = [("PATH", COMMAND_PATH), ("LANG", "C.UTF-8")];

/// Where a consumer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerPhase {
    /// Nothing to do.
    Idle,
    /// Rotations are waiting for the quiet period to end.
    Pending,
    /// A reload is in flight.
    Reloading,
    /// The last reload failed; retrying.
    Backoff,
}

/// One consumer's status (counters survive a change of its settings).
#[derive(Debug, Clone)]
pub struct ConsumerStatus {
    /// The consumer's name.
    pub name: String,
    /// `url` or `command`.
    pub kind: &'static str,
    /// The URL or the program.
    pub target: String,
    /// Its `clusters` (`None`: every cluster).
    pub clusters: Option<Vec<String>>,
    /// Where it stands.
    pub phase: ConsumerPhase,
    /// Successful reloads.
    pub reloads: u64,
    /// Failed reloads.
    pub failures: u64,
    /// When the last reload succeeded.
    pub last_success: Option<SystemTime>,
    /// The last error, cleared by a success.
    pub last_error: Option<String>,
    /// When the next retry is due (in backoff).
    pub next_retry: Option<SystemTime>,
}

/// Every consumer's status; part of [`crate::state::State`].
#[derive(Debug, Default)]
pub struct ConsumerStates(Mutex<BTreeMap<String, ConsumerStatus>>);

impl ConsumerStates {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ConsumerStatus>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register `settings` (keeping the counters of a consumer of that name).
    fn register(&self, settings: &ConsumerSettings) {
        let mut all = self.lock();
        let status = all
            .entry(settings.name.clone())
            .or_insert_with(|| ConsumerStatus {
                name: settings.name.clone(),
                kind: settings.kind(),
                target: String::new(),
                clusters: None,
                phase: ConsumerPhase::Idle,
                reloads: 0,
                failures: 0,
                last_success: None,
                last_error: None,
                next_retry: None,
            });
        status.kind = settings.kind();
        status.target = settings.target();
        status.clusters = settings.clusters.clone();
    }

    fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut ConsumerStatus)) {
        if let Some(status) = self.lock().get_mut(name) {
            f(status);
        }
    }

    /// A copy of every consumer's status, by name.
    pub fn all(&self) -> Vec<ConsumerStatus> {
        self.lock().values().cloned().collect()
    }
}

/// One consumer in `status --json` (`consumers`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConsumerReport {
    /// The consumer's name.
    pub name: String,
    /// `url` or `command`.
    pub kind: String,
    /// The URL, or the program of the command.
    pub target: String,
    /// The clusters it is limited to; null: every cluster.
    pub clusters: Option<Vec<String>>,
    /// idle | pending | reloading | backoff.
    pub state: String,
    /// Successful reloads.
    pub reloads: u64,
    /// Failed reloads.
    pub failures: u64,
    /// RFC 3339 or null.
    pub last_success: Option<String>,
    /// The last error or null.
    pub last_error: Option<String>,
    /// RFC 3339 or null: the next retry after a failure.
    pub next_retry: Option<String>,
}

impl ConsumerReport {
    /// From the daemon's state.
    pub fn from_status(s: &ConsumerStatus) -> Self {
        let rfc3339 = crate::text::rfc3339;
        ConsumerReport {
            name: s.name.clone(),
            kind: s.kind.to_owned(),
            target: s.target.clone(),
            clusters: s.clusters.clone(),
            state: serde_json::to_value(s.phase)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            reloads: s.reloads,
            failures: s.failures,
            last_success: s.last_success.map(rfc3339),
            last_error: s.last_error.clone(),
            next_retry: s.next_retry.map(rfc3339),
        }
    }
}

/// One line of `mcprom status` for a consumer.
pub fn status_line(c: &ConsumerReport) -> String {
    let clusters = match &c.clusters {
        None => "every cluster".to_owned(),
        Some(names) => format!("clusters {}", names.join(", ")),
    };
    let mut line = format!(
        "consumer {:?} ({} {}, {clusters}): {}, {} reloads, {} failures",
        c.name, c.kind, c.target, c.state, c.reloads, c.failures
    );
    if let Some(error) = &c.last_error {
        line.push_str(&format!(", last error: {}", crate::outside::text(error)));
    }
    line
}

/// One consumer as the rotators see it: which clusters, which queue.
#[derive(Debug)]
struct Route {
    clusters: Option<HashSet<String>>,
    queue: ReloadQueue,
}

/// The rotators' view of every consumer; replaced as a whole when the
/// consumers change.
#[derive(Debug, Clone, Default)]
struct Routes(Arc<RwLock<Arc<Vec<Route>>>>);

impl Routes {
    fn current(&self) -> Arc<Vec<Route>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a rotator tells after writing a token: `[prometheus]`'s queue, and
/// the queue of every consumer that serves its cluster. Never blocks.
#[derive(Debug, Clone)]
pub struct ClusterReload {
    prometheus: ReloadQueue,
    routes: Routes,
    cluster: Arc<str>,
}

impl ReloadRequest for ClusterReload {
    fn request_reload(&self) {
        self.prometheus.request_reload();
        for route in self.routes.current().iter() {
            if route
                .clusters
                .as_ref()
                .is_none_or(|c| c.contains(&*self.cluster))
            {
                route.queue.request_reload();
            }
        }
    }
}

struct Running {
    settings: ConsumerSettings,
    queue: ReloadQueue,
    cancel: CancellationToken,
}

/// The running consumers, owned by the supervisor.
#[derive(Default)]
pub struct ConsumerSet {
    running: BTreeMap<String, Running>,
    routes: Routes,
}

impl ConsumerSet {
    /// The handle a rotator of `cluster` gets: `prometheus` plus the
    /// consumers serving `cluster`, as they are at each rotation.
    pub fn handle(&self, cluster: &str, prometheus: ReloadQueue) -> ClusterReload {
        ClusterReload {
            prometheus,
            routes: self.routes.clone(),
            cluster: cluster.into(),
        }
    }

    /// Start added consumers, stop removed ones, restart changed ones (a
    /// changed one keeps its queue, so rotations waiting for it are not
    /// lost).
    pub fn sync(
        &mut self,
        wanted: &[ConsumerSettings],
        state: &Arc<crate::state::State>,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) {
        let names: HashSet<&str> = wanted.iter().map(|c| c.name.as_str()).collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !names.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(old) = self.running.remove(&name) {
                old.cancel.cancel();
                state.consumers().remove(&name);
                info!(consumer = %name, "consumer removed from the config: it is no longer reloaded");
            }
        }
        for settings in wanted {
            let queue = match self.running.get(&settings.name) {
                Some(r) if r.settings == *settings => continue,
                Some(r) => {
                    r.cancel.cancel();
                    info!(consumer = %settings.name, "consumer settings changed: restarting it");
                    r.queue.clone()
                }
                None => ReloadQueue::new(),
            };
            state.consumers().register(settings);
            let cancel = cancel.child_token();
            tracker.spawn(run(
                settings.clone(),
                queue.clone(),
                state.clone(),
                cancel.clone(),
            ));
            self.running.insert(
                settings.name.clone(),
                Running {
                    settings: settings.clone(),
                    queue,
                    cancel,
                },
            );
        }
        let routes: Vec<Route> = self
            .running
            .values()
            .map(|r| Route {
                clusters: r
                    .settings
                    .clusters
                    .as_ref()
                    .map(|c| c.iter().cloned().collect()),
                queue: r.queue.clone(),
            })
            .collect();
        *self.routes.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(routes);
    }
}

/// How a consumer is reloaded, ready to use.
enum Action {
    Url(Box<Reloader>),
    Command(Vec<String>),
    /// The URL consumer's client could not be built (its `ca_file`): every
    /// reload fails with this, and the settings are re-read on a change.
    Broken(String),
}

impl Action {
    fn new(settings: &ConsumerSettings) -> Action {
        match (&settings.action, settings.web_settings()) {
            (ConsumerAction::Url(_), Some(web)) => match Reloader::new(web) {
                Ok(r) => Action::Url(Box::new(r)),
                Err(e) => Action::Broken(url_error(settings, &e)),
            },
            (ConsumerAction::Command(argv), _) => Action::Command(argv.clone()),
            (ConsumerAction::Url(_), None) => unreachable!("a url consumer has web settings"),
        }
    }
}

/// One consumer's loop: wait for a rotation, wait `delay` of quiet, reload
/// once for all of them; on failure back off and retry. Runs until `cancel`.
pub async fn run(
    settings: ConsumerSettings,
    queue: ReloadQueue,
    state: Arc<crate::state::State>,
    cancel: CancellationToken,
) {
    let name = settings.name.clone();
    let action = Action::new(&settings);
    let delay = settings.delay;
    let max_wait = crate::reload::max_wait(delay);
    let mut handled = queue.generation();
    let mut ready = false;
    let mut failures: u32 = 0;
    let states = || state.consumers();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = queue.wait_beyond(handled) => {}
        }
        states().update(&name, |s| {
            if s.phase == ConsumerPhase::Idle {
                s.phase = ConsumerPhase::Pending;
            }
        });
        let Some(target) = queue.quiet(delay, max_wait, &cancel).await else {
            return;
        };
        states().update(&name, |s| s.phase = ConsumerPhase::Reloading);
        let outcome = tokio::select! {
            () = cancel.cancelled() => return,
            outcome = reload(&settings, &action, &mut ready, &cancel) => outcome,
        };
        match outcome {
            Ok(how) => {
                let changes = target - handled;
                handled = target;
                failures = 0;
                info!(consumer = %name, changes, "consumer {name:?} reloaded ({how})");
                states().update(&name, |s| {
                    s.reloads += 1;
                    s.last_success = Some(SystemTime::now());
                    s.last_error = None;
                    s.next_retry = None;
                    s.phase = if queue.generation() == handled {
                        ConsumerPhase::Idle
                    } else {
                        ConsumerPhase::Pending
                    };
                });
            }
            Err(failure) => {
                let retry_in = crate::schedule::reload_backoff(failures, failure.needs_operator);
                failures = failures.saturating_add(1);
                let error = failure.message;
                warn!(
                    consumer = %name,
                    error = %error,
                    retry_in = ?retry_in,
                    "consumer {name:?}: reload failed: {error}"
                );
                states().update(&name, |s| {
                    s.failures += 1;
                    s.last_error = Some(error.clone());
                    s.next_retry = Some(SystemTime::now() + retry_in);
                    s.phase = ConsumerPhase::Backoff;
                });
                debug!(consumer = %name, "token files are in place; other consumers and rotations go on");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(retry_in) => {}
                }
            }
        }
    }
}

/// Why a reload did not happen, and whether retrying soon is pointless.
struct Failure {
    message: String,
    needs_operator: bool,
}

async fn reload(
    settings: &ConsumerSettings,
    action: &Action,
    ready: &mut bool,
    cancel: &CancellationToken,
) -> Result<String, Failure> {
    match action {
        Action::Broken(message) => Err(Failure {
            message: message.clone(),
            needs_operator: true,
        }),
        Action::Url(reloader) => {
            let outcome = async {
                if !*ready {
                    reloader.wait_ready(cancel).await?;
                    *ready = true;
                }
                reloader.reload_once().await
            }
            .await;
            outcome
                .map(|()| format!("POST {}/-/reload", settings.target()))
                .map_err(|e| Failure {
                    needs_operator: e.needs_operator(),
                    message: url_error(settings, &e),
                })
        }
        Action::Command(argv) => run_command(argv, &settings.name, settings.timeout)
            .await
            .map_err(|message| Failure {
                message,
                needs_operator: false,
            }),
    }
}

/// A [`ReloadError`] worded for this consumer rather than for `[prometheus]`.
fn url_error(settings: &ConsumerSettings, error: &ReloadError) -> String {
    let base = settings.target();
    let name = &settings.name;
    match error {
        ReloadError::Down(_, why) => format!("{base} is not reachable ({why}): is it running?"),
        ReloadError::LifecycleDisabled(body) => format!(
            "{base} refused the reload (403: {body}): enable its reload endpoint (Prometheus: \
             --web.enable-lifecycle) or remove [[consumer]] {name:?}"
        ),
        ReloadError::Unauthorized => format!(
            "{base} wants credentials for /-/reload (401): set username + password_file or \
             bearer_token_file in [[consumer]] {name:?}"
        ),
        ReloadError::MethodNotAllowed(_) => format!(
            "{base}/-/reload answered 405 Method Not Allowed: the url of [[consumer]] {name:?} \
             does not point at a Prometheus-compatible web endpoint"
        ),
        ReloadError::PrometheusConfig(body) => {
            format!("{base} rejected its own configuration (500): {body}")
        }
        ReloadError::Timeout(d) => format!(
            "{base} did not finish the reload within {}; raise the timeout of [[consumer]] {name:?}",
            crate::config::format_duration(*d)
        ),
        ReloadError::Other(text) => text.replace("[prometheus]", &format!("[[consumer]] {name:?}")),
    }
}

/// Run `argv` once as consumer `name`: no shell, the environment cleared
/// to [`COMMAND_ENV`] plus `MCPROM_CONSUMER`, stdin and stdout on
/// /dev/null, working directory `/`, its own process group. The group is
/// killed at `timeout` and when the command exits. `Ok` with what happened
/// on exit status 0; otherwise the status (or the timeout) and the start of
/// its stderr.
pub async fn run_command(argv: &[String], name: &str, timeout: Duration) -> Result<String, String> {
    let shown = crate::outside::text(&argv[0]);
    let program = crate::config::resolve_program(&argv[0])
        .map_err(|why| format!("command {shown}: cannot run it: {why}"))?;
    let mut command = tokio::process::Command::new(&program);
    command
        .args(&argv[1..])
        .env_clear()
        .envs(COMMAND_ENV)
        .env("MCPROM_CONSUMER", name)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("command {shown}: cannot start it: {e}"))?;
    let _group = child.id().map(crate::exec::GroupKiller);
    let mut stderr = child.stderr.take().expect("piped");
    // Read (and keep the start of) stderr while the command runs, so a
    // chatty command never blocks on a full pipe.
    let reader = tokio::spawn(async move {
        let mut kept = Vec::new();
        let _ = (&mut stderr)
            .take(MAX_COMMAND_STDERR as u64)
            .read_to_end(&mut kept)
            .await;
        let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        kept
    });
    let status = tokio::time::timeout(timeout, child.wait()).await;
    let stderr_text = |kept: Vec<u8>| {
        let text = crate::outside::bytes_text(&kept);
        if text.is_empty() {
            String::new()
        } else {
            format!("; stderr: {text}")
        }
    };
    let status = match status {
        Err(_) => {
            drop(_group);
            let kept = tokio::time::timeout(STDERR_GRACE, reader)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            return Err(format!(
                "command {shown} did not finish within {} (its timeout); killed its process group{}",
                crate::config::format_duration(timeout),
                stderr_text(kept)
            ));
        }
        Ok(Err(e)) => return Err(format!("command {shown}: cannot wait for it: {e}")),
        Ok(Ok(status)) => status,
    };
    let kept = tokio::time::timeout(STDERR_GRACE, reader)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    if status.success() {
        if !kept.is_empty() {
            debug!(consumer = %name, "command {shown} wrote to stderr{}", stderr_text(kept));
        }
        return Ok(format!("command {shown} exited 0"));
    }
    use std::os::unix::process::ExitStatusExt as _;
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    };
    Err(format!("command {shown} {how}{}", stderr_text(kept)))
}

/// The consumers' metric families (new names; `[prometheus]`'s own reload
/// metrics are unchanged).
pub(crate) fn encode_metrics(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    state: &crate::state::State,
) -> Result<(), std::fmt::Error> {
    let consumers = state.consumers().all();
    let label = |c: &ConsumerStatus| vec![("consumer", c.name.clone())];
    crate::metrics::counter_family(
        encoder,
        "mcprom_consumer_reloads",
        "Reloads of each [[consumer]] by result (success, failure).",
        consumers.iter().flat_map(|c| {
            [
                (
                    vec![
                        ("consumer", c.name.clone()),
                        ("result", "success".to_owned()),
                    ],
                    c.reloads,
                ),
                (
                    vec![
                        ("consumer", c.name.clone()),
                        ("result", "failure".to_owned()),
                    ],
                    c.failures,
                ),
            ]
        }),
    )?;
    crate::metrics::gauge_family(
        encoder,
        "mcprom_consumer_last_reload_success_timestamp",
        "When each [[consumer]] last reloaded successfully.",
        Some(&prometheus_client::registry::Unit::Seconds),
        consumers.iter().filter_map(|c| {
            c.last_success.map(|t| {
                (
                    label(c),
                    t.duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64()),
                )
            })
        }),
    )?;
    crate::metrics::gauge_family(
        encoder,
        "mcprom_consumer_reload_failing",
        "1 while each [[consumer]]'s last reload failed (retrying with backoff), else 0.",
        None,
        consumers
            .iter()
            .map(|c| (label(c), if c.last_error.is_some() { 1.0 } else { 0.0 })),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn a_command_sees_only_the_minimal_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        // The test's own environment (HOME, cargo's CARGO_*, …) is not
        // passed on: only the names below arrive.
        assert!(std::env::vars().count() > 3);
        let script = format!("env > {}", out.display());
        run_command(
            &argv(&["/bin/sh", "-c", &script]),
            "probe",
            Duration::from_secs(20),
        )
        .await
        .unwrap();
        let env = std::fs::read_to_string(&out).unwrap();
        let names: std::collections::BTreeSet<&str> = env
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        // sh itself adds PWD (and may add SHLVL, _).
        for name in &names {
            assert!(
                ["PATH", "LANG", "MCPROM_CONSUMER", "PWD", "SHLVL", "_"].contains(name),
                "unexpected {name} in {env}"
            );
        }
        assert!(env.contains("MCPROM_CONSUMER=probe"), "{env}");
        assert!(env.contains(&format!("PATH={COMMAND_PATH}")), "{env}");
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_status_and_capped_stderr() {
        let e = run_command(
            &argv(&[
                "/bin/sh",
                "-c",
                "printf 'reload refused: %s\\n' \"$(head -c 20000 /dev/zero | tr '\\0' x)\" >&2; exit 7",
            ]),
            "failing",
            Duration::from_secs(20),
        )
        .await
        .unwrap_err();
        assert!(e.contains("exited with status 7"), "{e}");
        assert!(e.contains("stderr: reload refused: xxx"), "{e}");
        assert!(e.len() < 2 * crate::outside::MAX_TEXT, "{}", e.len());
    }

    #[tokio::test]
    async fn a_missing_program_is_named() {
        let e = run_command(
            &argv(&["no-such-program-mcprom"]),
            "missing",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(e.contains("no-such-program-mcprom"), "{e}");
        assert!(e.contains("is not an executable in"), "{e}");
    }
}
