//! Wiring: the supervisor that owns one rotator task per cluster, the
//! reloader, the clock watch, the token-directory locks, and shutdown.
//!
//! This is the only module that names the real [`KubeIssuer`], [`FileSink`]
//! and [`Reloader`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{self, ClusterSettings, PrometheusSettings, ReloadMode, Settings};
use crate::issuer::{KubeIssuer, REQUEST_TIMEOUT};
use crate::reload::{self, ReloadQueue, Reloader};
use crate::rotator::{self, Command, Rotator};
use crate::sink::{self, DirLock, FileSink, LockError};
use crate::state::{ClusterStatus, State};

/// How long shutdown waits for tasks (in-flight writes) before giving up.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);
/// How often the wall clock is compared with the monotonic clock.
pub const CLOCK_CHECK_PERIOD: Duration = Duration::from_secs(60);

/// Start-up failed in a way that must stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another mcprom holds a token directory.
    #[error(transparent)]
    Locked(#[from] LockError),
}

struct RunningCluster {
    settings: Arc<ClusterSettings>,
    cancel: CancellationToken,
    commands: mpsc::Sender<Command>,
}

struct RunningReloader {
    settings: PrometheusSettings,
    cancel: CancellationToken,
}

/// Owns every task of a running daemon.
pub struct Supervisor {
    state: Arc<State>,
    queue: ReloadQueue,
    limiter: Arc<Semaphore>,
    clock_jumps: watch::Receiver<u64>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    clusters: BTreeMap<String, RunningCluster>,
    locks: BTreeMap<PathBuf, DirLock>,
    reloader: Option<RunningReloader>,
    settings: Settings,
}

impl Supervisor {
    /// Lock the token directories, clean stale temp files, and start every
    /// task. Fails only when another mcprom holds a token directory.
    pub fn start(
        settings: Settings,
        state: Arc<State>,
        cancel: CancellationToken,
    ) -> Result<Self, StartError> {
        for warning in config::warnings(&settings) {
            warn!("{warning}");
        }
        for problem in config::host_problems(&settings) {
            warn!("{problem}");
        }
        let tracker = TaskTracker::new();
        let (jumps_tx, clock_jumps) = watch::channel(0);
        tracker.spawn(rotator::watch_clock(
            jumps_tx,
            CLOCK_CHECK_PERIOD,
            cancel.clone(),
        ));
        let mut supervisor = Supervisor {
            state,
            queue: ReloadQueue::new(),
            limiter: Arc::new(Semaphore::new(settings.limits.concurrent_requests.max(1))),
            clock_jumps,
            tracker,
            cancel,
            clusters: BTreeMap::new(),
            locks: BTreeMap::new(),
            reloader: None,
            settings: settings.clone(),
        };
        supervisor.lock_token_dirs(&settings)?;
        supervisor.sync_reloader(&settings.prometheus);
        supervisor.sync_clusters(&settings);
        if settings.clusters.is_empty() {
            warn!(
                config = %settings.path.display(),
                "no [[cluster]] is configured: mcprom is idle; add one to the config file"
            );
        } else {
            info!(
                clusters = settings.clusters.len(),
                config = %settings.path.display(),
                "mcprom started"
            );
        }
        Ok(supervisor)
    }

    /// Shared status.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Ask one cluster's rotator to refresh now.
    pub fn command(&self, cluster: &str) -> Option<mpsc::Sender<Command>> {
        self.clusters.get(cluster).map(|c| c.commands.clone())
    }

    fn lock_token_dirs(&mut self, settings: &Settings) -> Result<(), StartError> {
        for cluster in &settings.clusters {
            let dir = cluster
                .token_file
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            if self.locks.contains_key(&dir) {
                continue;
            }
            match sink::lock_dir(&dir) {
                Ok(lock) => {
                    match sink::remove_stale_temp_files(&dir) {
                        Ok(0) => {}
                        Ok(n) => {
                            info!(dir = %dir.display(), removed = n, "removed stale temp files")
                        }
                        Err(e) => {
                            warn!(dir = %dir.display(), error = %e, "cannot clean stale temp files")
                        }
                    }
                    self.locks.insert(dir, lock);
                }
                Err(held @ LockError::Held { .. }) => return Err(held.into()),
                Err(other) => {
                    // The directory may appear later (a host problem, not a
                    // reason to blind every other cluster): its clusters
                    // fail their writes and retry.
                    warn!("{other}");
                }
            }
        }
        Ok(())
    }

    fn sync_reloader(&mut self, prometheus: &PrometheusSettings) {
        if self
            .reloader
            .as_ref()
            .is_some_and(|r| &r.settings == prometheus)
        {
            return;
        }
        if let Some(old) = self.reloader.take() {
            old.cancel.cancel();
        }
        if prometheus.reload == ReloadMode::Never {
            info!(
                "reload = \"never\": Prometheus is not asked to reload (it re-reads token files on every scrape)"
            );
            return;
        }
        match Reloader::new(prometheus.clone()) {
            Ok(reloader) => {
                let cancel = self.cancel.child_token();
                self.tracker.spawn(reload::run(
                    reloader,
                    self.queue.clone(),
                    prometheus.delay,
                    self.state.clone(),
                    cancel.clone(),
                ));
                self.reloader = Some(RunningReloader {
                    settings: prometheus.clone(),
                    cancel,
                });
            }
            Err(e) => {
                error!(error = %e, "cannot set up reloading Prometheus; token files are still written")
            }
        }
    }

    fn sync_clusters(&mut self, settings: &Settings) {
        let wanted: BTreeMap<&str, &ClusterSettings> = settings
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c))
            .collect();
        let gone: Vec<String> = self
            .clusters
            .keys()
            .filter(|name| !wanted.contains_key(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(running) = self.clusters.remove(&name) {
                running.cancel.cancel();
                self.state.remove(&name);
                info!(
                    cluster = %name,
                    token_file = %running.settings.token_file.display(),
                    "cluster removed from the config: rotation stopped, its token file is left in place"
                );
            }
        }
        for (name, cluster) in wanted {
            match self.clusters.get(name) {
                Some(running) if running.settings.as_ref() == cluster => continue,
                Some(running) => {
                    running.cancel.cancel();
                    info!(cluster = %name, "cluster settings changed: restarting its rotation");
                }
                None => {}
            }
            self.spawn_cluster(cluster.clone());
        }
    }

    fn spawn_cluster(&mut self, cluster: ClusterSettings) {
        let cluster = Arc::new(cluster);
        let cancel = self.cancel.child_token();
        let (commands_tx, commands) = mpsc::channel(4);
        self.state.insert(ClusterStatus::new(
            &cluster.name,
            cluster.service_account.to_string(),
            cluster.token_file.clone(),
        ));
        let rotator = Rotator {
            issuer: KubeIssuer::new(cluster.clone(), REQUEST_TIMEOUT),
            sink: FileSink::new(
                cluster.token_file.clone(),
                cluster.file_mode,
                cluster.file_group.clone(),
            ),
            reload: self.queue.clone(),
            state: self.state.clone(),
            limiter: self.limiter.clone(),
            clock_jumps: self.clock_jumps.clone(),
            commands,
            cancel: cancel.clone(),
            cluster: cluster.clone(),
        };
        self.tracker.spawn(rotator.run());
        self.clusters.insert(
            cluster.name.clone(),
            RunningCluster {
                settings: cluster,
                cancel,
                commands: commands_tx,
            },
        );
    }

    /// Apply new settings: start added clusters, stop removed ones, restart
    /// changed ones, leave the rest alone.
    pub fn apply(&mut self, settings: Settings) -> Result<(), StartError> {
        for warning in config::warnings(&settings) {
            warn!("{warning}");
        }
        for problem in config::host_problems(&settings) {
            warn!("{problem}");
        }
        self.lock_token_dirs(&settings)?;
        self.sync_reloader(&settings.prometheus);
        self.sync_clusters(&settings);
        self.settings = settings;
        Ok(())
    }

    /// Stop every task; wait for in-flight writes (bounded).
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("some tasks did not stop within {SHUTDOWN_GRACE:?}; exiting anyway");
        }
        drop(self.locks);
    }
}

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

/// The daemon: start, run until `shutdown` resolves, stop.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let state = Arc::new(State::default());
    let cancel = CancellationToken::new();
    let supervisor = Supervisor::start(settings, state, cancel)?;
    shutdown.await;
    supervisor.shutdown().await;
    info!("stopped");
    Ok(())
}
