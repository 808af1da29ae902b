//! Wiring: the daemon's main loop ([`run`]): signals, the config watch and
//! live reloads, the control socket, `/metrics`, sd_notify; and the
//! [`Supervisor`] (in `supervisor.rs`) that owns one rotator task per
//! cluster, the reloader, the clock watch, the token-directory locks, and
//! shutdown.
//!
//! This is the only module that names the real issuers ([`ClusterIssuer`]:
//! [`KubeIssuer`](crate::issuer::KubeIssuer), wrapped in
//! [`SelfRenewing`](crate::selfrenew::SelfRenewing) for `credentials.self`),
//! [`FileSink`](crate::sink::FileSink) and [`Reloader`](crate::reload::Reloader).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::watch::{ConfigWatcher, DEBOUNCE, MAX_DEBOUNCE};
use crate::config::{self, Settings};
use crate::control;
use crate::metrics;
use crate::notify;
use crate::rotator::RotateRequests;
use crate::state::State;

mod supervisor;

pub use supervisor::{CLOCK_CHECK_PERIOD, ClusterIssuer, SHUTDOWN_GRACE, StartError, Supervisor};

/// Resolve when SIGTERM or SIGINT arrives.
pub async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still dies by the default action.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
}

/// One line for systemd's `STATUS=`: "3/3 clusters fresh, next refresh in 41m".
pub fn summary(state: &State) -> String {
    let now = SystemTime::now();
    let (mut total, mut fresh, mut failing) = (0usize, 0usize, 0usize);
    let mut next: Option<SystemTime> = None;
    state.for_each(|c| {
        total += 1;
        fresh += usize::from(c.valid_at(now));
        failing += usize::from(c.last_error.is_some());
        if let Some(at) = c.next_refresh {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    });
    if total == 0 {
        return "no clusters configured".to_owned();
    }
    let mut line = format!("{fresh}/{total} clusters fresh");
    if let Some(next) = next {
        let wait = next.duration_since(now).unwrap_or_default();
        line.push_str(&format!(
            ", next refresh in {}",
            config::format_duration(Duration::from_secs(wait.as_secs()))
        ));
    }
    if failing > 0 {
        line.push_str(&format!(", {failing} failing"));
    }
    line
}

/// A config re-read, done off the main loop: what [`Daemon::finish_reload`]
/// applies.
#[derive(Debug)]
enum Prepared {
    /// A file event, and no file changed (or the main file is a
    /// half-written empty file): nothing to do.
    Unchanged,
    /// The main file could not be read: the message says why.
    Unreadable(String),
    /// Read and validated.
    Parsed(Result<Box<Settings>, String>),
}

/// Reads and validates the config: the files that changed since the last
/// read (see [`config::Loader`]). Blocking: runs on a blocking thread,
/// never on the daemon's main loop. Linear in the size of what changed
/// (see `config::decode`), each file bounded by `input::MAX_CONFIG_BYTES`.
fn prepare(loader: &std::sync::Mutex<config::Loader>, trigger: Trigger) -> Prepared {
    let mut loader = loader
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match loader.reread(trigger == Trigger::FileEvent) {
        config::Reread::Unchanged => Prepared::Unchanged,
        config::Reread::MainUnreadable(e) => Prepared::Unreadable(format!(
            "cannot read the config file {}: {e}; keeping the last good config",
            loader.path().display()
        )),
        config::Reread::Read(settings) => {
            Prepared::Parsed(settings.map(Box::new).map_err(|e| e.to_string()))
        }
    }
}

/// A reload running off the main loop, and who waits for its outcome.
struct PendingReload {
    handle: tokio::task::JoinHandle<Prepared>,
    replies: Vec<oneshot::Sender<control::Response>>,
}

/// A reload asked for while another ran: started when that one ends, so it
/// reads the file as it is then.
#[derive(Default)]
struct QueuedReload {
    trigger: Option<Trigger>,
    replies: Vec<oneshot::Sender<control::Response>>,
}

impl QueuedReload {
    fn add(&mut self, trigger: Trigger, reply: Option<oneshot::Sender<control::Response>>) {
        // An explicit request wins: it is re-validated even if unchanged.
        if self.trigger != Some(Trigger::Explicit) {
            self.trigger = Some(trigger);
        }
        self.replies.extend(reply);
    }
}

/// What triggered a config reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The file changed on disk: skipped when its content did not change.
    FileEvent,
    /// SIGHUP or `mcprom reload`: always re-validated and reported.
    Explicit,
}

/// The running daemon's event loop and its config-reload path.
struct Daemon {
    path: PathBuf,
    /// Reads the config files, keeping what it validated (shared with the
    /// blocking thread a reload runs on; one reload runs at a time).
    loader: Arc<std::sync::Mutex<config::Loader>>,
    supervisor: Supervisor,
    ready: bool,
    last_status: String,
    metrics: Option<(std::net::SocketAddr, CancellationToken)>,
    cancel: CancellationToken,
}

impl Daemon {
    /// Start, move or stop the `/metrics` listener to match `listen`.
    async fn sync_metrics(&mut self, listen: Option<std::net::SocketAddr>) {
        if self.metrics.as_ref().map(|(addr, _)| *addr) == listen {
            return;
        }
        if let Some((_, cancel)) = self.metrics.take() {
            cancel.cancel();
        }
        let Some(addr) = listen else { return };
        match metrics::bind(addr).await {
            Ok(listener) => {
                let cancel = self.cancel.child_token();
                tokio::spawn(metrics::serve(
                    listener,
                    self.supervisor.state().clone(),
                    cancel.clone(),
                ));
                self.metrics = Some((addr, cancel));
            }
            Err(e) => {
                error!(listen = %addr, error = %e, "cannot serve /metrics ([metrics] listen)")
            }
        }
    }

    /// Re-read the config; apply it when valid and different. `Ok(changed)`.
    /// Starts re-reading the config on a blocking thread; the main loop
    /// keeps answering `status` and feeding the watchdog meanwhile, and
    /// calls [`Daemon::finish_reload`] with the outcome.
    fn start_reload(&self, trigger: Trigger) -> tokio::task::JoinHandle<Prepared> {
        let loader = self.loader.clone();
        tokio::task::spawn_blocking(move || prepare(&loader, trigger))
    }

    /// Applies a prepared reload: quick, on the main loop.
    async fn finish_reload(&mut self, prepared: Prepared) -> Result<bool, String> {
        let outcome = match prepared {
            Prepared::Unchanged => Ok(false),
            Prepared::Unreadable(message) => {
                warn!("{message}");
                // Visible in mcprom_config_last_reload_successful: the next
                // start would fail. Whatever content comes back (even the
                // same) is validated again and clears it.
                self.supervisor.state().config_loaded(Err(message.clone()));
                Err(message)
            }
            Prepared::Parsed(settings) => {
                notify::reloading();
                let outcome = settings.and_then(|settings| {
                    let settings = *settings;
                    if &settings == self.supervisor.settings() {
                        return Ok(false);
                    }
                    self.supervisor.apply(settings).map_err(|e| e.to_string())?;
                    Ok(true)
                });
                let state = self.supervisor.state().clone();
                match &outcome {
                    Ok(changed) => {
                        state.config_loaded(Ok(()));
                        if *changed {
                            info!(config = %self.path.display(), "configuration reloaded");
                        } else {
                            info!(config = %self.path.display(), "configuration re-read: nothing changed");
                        }
                    }
                    Err(e) => {
                        state.config_loaded(Err(e.clone()));
                        error!("configuration reload failed, keeping the last good config:\n{e}");
                    }
                }
                notify::ready(&summary(&state));
                outcome
            }
        };
        let listen = self.supervisor.settings().metrics.listen;
        self.sync_metrics(listen).await;
        outcome
    }

    fn status(&self) -> control::StatusReport {
        control::StatusReport {
            clusters: self
                .supervisor
                .state()
                .clusters()
                .iter()
                .map(control::ClusterReport::from_status)
                .collect(),
            consumers: (self.supervisor.state().consumers().all().iter())
                .map(crate::consumers::ConsumerReport::from_status)
                .collect(),
        }
    }

    fn rotate(&self, names: Vec<String>, reply: oneshot::Sender<control::Response>) {
        let names = if names.is_empty() {
            self.supervisor.cluster_names()
        } else {
            names
        };
        let targets: Vec<(String, Option<Arc<RotateRequests>>)> = names
            .into_iter()
            .map(|n| {
                let tx = self.supervisor.command(&n);
                (n, tx)
            })
            .collect();
        tokio::spawn(async move {
            let mut results = Vec::new();
            let mut waiting = Vec::new();
            for (cluster, tx) in targets {
                let Some(tx) = tx else {
                    results.push(control::RotateResult {
                        error: Some(format!("no cluster named {cluster:?} is configured")),
                        cluster,
                        ok: false,
                    });
                    continue;
                };
                debug!(cluster = %cluster, "rotate requested");
                waiting.push((cluster, tx.request()));
            }
            for (cluster, done_rx) in waiting {
                let outcome = if let Some(done_rx) = done_rx {
                    match tokio::time::timeout(ROTATE_TIMEOUT, done_rx).await {
                        Ok(Ok(outcome)) => outcome,
                        Ok(Err(_)) => Err("the cluster's rotation stopped".to_owned()),
                        Err(_) => Err(format!("no outcome within {ROTATE_TIMEOUT:?}")),
                    }
                } else {
                    Err("the cluster's rotation stopped".to_owned())
                };
                results.push(control::RotateResult {
                    cluster,
                    ok: outcome.is_ok(),
                    error: outcome.err(),
                });
            }
            let _ = reply.send(control::Response::Rotate { results });
        });
    }

    fn report_health(&mut self) {
        let state = self.supervisor.state();
        if !self.ready && state.all_settled() {
            self.ready = true;
            let line = summary(state);
            info!(status = %line, "ready");
            notify::ready(&line);
            self.last_status = line;
            return;
        }
        if self.ready {
            let line = summary(state);
            if line != self.last_status {
                notify::status(&line);
                self.last_status = line;
            }
        }
    }
}

/// How long `mcprom rotate` waits for each cluster.
pub const ROTATE_TIMEOUT: Duration = Duration::from_secs(90);

/// The daemon: start, follow the config file, serve the control socket,
/// talk to systemd, run until `shutdown` resolves, stop.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    run_with_state(settings, Arc::new(State::default()), shutdown).await
}

/// [`run`] with a state the caller can read afterwards (the demo's summary).
pub async fn run_with_state(
    settings: Settings,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let loader = config::Loader::new(&settings.path);
    run_loaded(loader, settings, state, shutdown).await
}

/// [`run_with_state`] with the loader that read `settings`: its first
/// re-read then validates only the files that changed since.
pub async fn run_loaded(
    loader: config::Loader,
    settings: Settings,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};

    let path = settings.path.clone();
    let socket = settings.control.socket.clone();
    let include_dir = settings.include_dir.clone();
    let cancel = CancellationToken::new();
    let supervisor = Supervisor::start(settings, state.clone(), cancel.clone())?;
    let mut daemon = Daemon {
        path: path.clone(),
        loader: Arc::new(std::sync::Mutex::new(loader)),
        supervisor,
        ready: false,
        last_status: String::new(),
        metrics: None,
        cancel: cancel.clone(),
    };
    let listen = daemon.supervisor.settings().metrics.listen;
    daemon.sync_metrics(listen).await;

    let (control_tx, mut control_rx) = mpsc::channel::<control::Incoming>(16);
    match control::bind(&socket) {
        Ok(listener) => {
            tokio::spawn(control::serve(listener, control_tx, cancel.child_token()));
        }
        Err(e) => warn!(
            socket = %socket.display(),
            error = %e,
            "cannot open the control socket: `mcprom status|rotate|reload` will not reach this daemon"
        ),
    }
    let mut watcher = match ConfigWatcher::new(&path, include_dir.as_deref()) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, "cannot watch the config file's directory: edits are applied on SIGHUP or `mcprom reload` only");
            None
        }
    };
    let mut hangup = signal(SignalKind::hangup()).ok();
    let mut changes = state.subscribe();
    let watchdog_period = notify::watchdog_interval().map(|d| d / 2);
    let mut watchdog = tokio::time::interval(watchdog_period.unwrap_or(Duration::from_secs(3600)));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let notify_enabled = notify::enabled();
    let mut status_tick = tokio::time::interval(Duration::from_secs(10));
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    daemon.report_health();
    let mut reread_at: Option<tokio::time::Instant> = None;
    let mut first_event: Option<tokio::time::Instant> = None;
    let mut pending: Option<PendingReload> = None;
    let mut queued = QueuedReload::default();

    tokio::pin!(shutdown);
    loop {
        if pending.is_none()
            && let Some(trigger) = queued.trigger.take()
        {
            pending = Some(PendingReload {
                handle: daemon.start_reload(trigger),
                replies: std::mem::take(&mut queued.replies),
            });
        }
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                info!("SIGHUP: re-reading the configuration");
                queued.add(Trigger::Explicit, None);
            }
            () = async { match watcher.as_mut() { Some(w) => w.event().await, None => std::future::pending().await } } => {
                // Debounce: re-read once the directory has been quiet for a
                // while, but no later than MAX_DEBOUNCE after the first
                // event, so a file written to all the time is still read.
                let now = tokio::time::Instant::now();
                let first = *first_event.get_or_insert(now);
                reread_at = Some((now + DEBOUNCE).min(first + MAX_DEBOUNCE));
            }
            () = async { match reread_at { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                reread_at = None;
                first_event = None;
                queued.add(Trigger::FileEvent, None);
            }
            prepared = async { match pending.as_mut() { Some(p) => (&mut p.handle).await, None => std::future::pending().await } } => {
                let replies = pending.take().map(|p| p.replies).unwrap_or_default();
                let outcome = match prepared {
                    Ok(prepared) => daemon.finish_reload(prepared).await,
                    Err(e) => Err(format!("reading the configuration failed: {e}; keeping the last good config")),
                };
                // The drop-in directory may have appeared, moved or been
                // made again: watch it, and read it once more in case a file
                // changed before the watch was set.
                if let Some(w) = watcher.as_mut()
                    && w.follow(daemon.supervisor.settings().include_dir.as_deref())
                {
                    queued.add(Trigger::FileEvent, None);
                }
                for reply in replies {
                    let _ = reply.send(control::Response::Reload {
                        ok: outcome.is_ok(),
                        changed: outcome.as_ref().is_ok_and(|c| *c),
                        error: outcome.clone().err(),
                    });
                }
            }
            Some((request, reply)) = control_rx.recv() => match request {
                control::Request::Status => {
                    let _ = reply.send(control::Response::Status(daemon.status()));
                }
                control::Request::Rotate { clusters } => daemon.rotate(clusters, reply),
                control::Request::Reload => queued.add(Trigger::Explicit, Some(reply)),
            },
            // Only until ready: afterwards every state change (four per
            // rotation, one per cluster on each consumer read) would wake
            // this loop for nothing.
            Ok(()) = changes.changed(), if !daemon.ready => daemon.report_health(),
            // The STATUS= line is for systemd; outside it, an idle daemon
            // has no reason to wake every 10 s.
            _ = status_tick.tick(), if !daemon.ready || notify_enabled => daemon.report_health(),
            _ = watchdog.tick(), if watchdog_period.is_some() => {
                if daemon.supervisor.all_alive() {
                    notify::watchdog();
                } else {
                    error!("a rotator task ended unexpectedly: no longer feeding the systemd watchdog, so systemd restarts mcprom");
                }
            }
        }
    }
    notify::stopping();
    let _ = std::fs::remove_file(&socket);
    daemon.supervisor.shutdown().await;
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use crate::state::{ClusterStatus, Phase, State};

    #[test]
    fn the_summary_counts_fresh_and_failing_clusters_and_names_the_next_refresh() {
        let state = State::default();
        assert_eq!(super::summary(&state), "no clusters configured");
        let now = SystemTime::now();
        for (name, fresh, next_in, failing) in [
            ("a", true, 3600, false),
            ("b", true, 125, false),
            ("c", false, 10_000, true),
        ] {
            state.insert(ClusterStatus::new(name, "ns/sa".into(), name.into()));
            state.update(name, |s| {
                if fresh {
                    s.state = Phase::Fresh;
                    s.expires_at = Some(now + Duration::from_secs(7200));
                }
                s.next_refresh = Some(now + Duration::from_secs(next_in));
                if failing {
                    s.last_error = Some("unreachable".into());
                }
            });
        }
        let line = super::summary(&state);
        assert!(
            line.starts_with("2/3 clusters fresh, next refresh in 2m"),
            "{line}"
        );
        assert!(line.ends_with(", 1 failing"), "{line}");
    }
}
