//! The supervisor: one rotator task per cluster, the reloader, the
//! consumer reader, the clock watch, the token-directory locks, and
//! shutdown; and the choice of each cluster's issuer.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{self, ClusterSettings, PrometheusSettings, ReloadMode, Settings};
use crate::issuer::{IssueError, Issuer, KubeIssuer, REQUEST_TIMEOUT, Review, TokenSpec};
use crate::reload::{self, ReloadQueue, Reloader};
use crate::rotator::{self, RotateRequests, Rotator};
use crate::selfrenew::SelfRenewing;
use crate::sink::{self, DirLocks, FileSink, LockError};
use crate::state::{ClusterStatus, State};
use crate::token::{IssuedToken, Token};

/// The issuer of one cluster: TokenRequest through kube, wrapped for
/// self-renewal when the cluster renews itself (`credentials.self`).
#[derive(Debug, Clone)]
pub enum ClusterIssuer {
    /// mcprom's own credential for the cluster.
    Kube(KubeIssuer),
    /// The cluster's own token renews itself.
    SelfRenewing(SelfRenewing<KubeIssuer>),
}

impl ClusterIssuer {
    /// The issuer for `cluster`, configured in the file `config`: one
    /// request may take `timeout`, an exec plugin `exec_timeout`.
    pub fn new(
        cluster: Arc<ClusterSettings>,
        config: &Path,
        timeout: Duration,
        exec_timeout: Duration,
    ) -> Self {
        let kube = KubeIssuer::new(cluster.clone(), timeout).with_exec_timeout(exec_timeout);
        match cluster.credentials {
            config::Credentials::SelfRenew => {
                ClusterIssuer::SelfRenewing(SelfRenewing::new(kube, cluster, config.into()))
            }
            _ => ClusterIssuer::Kube(kube),
        }
    }
}

impl Issuer for ClusterIssuer {
    async fn issue(&self, spec: &TokenSpec) -> Result<IssuedToken, IssueError> {
        match self {
            ClusterIssuer::Kube(i) => i.issue(spec).await,
            ClusterIssuer::SelfRenewing(i) => i.issue(spec).await,
        }
    }

    async fn review(&self, token: &Token) -> Result<Review, IssueError> {
        match self {
            ClusterIssuer::Kube(i) => i.review(token).await,
            ClusterIssuer::SelfRenewing(i) => i.review(token).await,
        }
    }

    async fn verify(&self, issued: &IssuedToken) -> Result<Review, IssueError> {
        match self {
            ClusterIssuer::Kube(i) => i.verify(issued).await,
            ClusterIssuer::SelfRenewing(i) => i.verify(issued).await,
        }
    }

    fn rest(&self) {
        match self {
            ClusterIssuer::Kube(i) => i.rest(),
            ClusterIssuer::SelfRenewing(i) => i.rest(),
        }
    }
}

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
    commands: Arc<RotateRequests>,
    task: tokio::task::JoinHandle<()>,
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
    /// The wall clock every rotator and the clock watch read.
    wall: crate::clock::Wall,
    tracker: TaskTracker,
    cancel: CancellationToken,
    clusters: BTreeMap<String, RunningCluster>,
    locks: Arc<DirLocks>,
    reloader: Option<RunningReloader>,
    /// Reads Prometheus's configuration and targets (`consumer`).
    consumer: Option<RunningReloader>,
    review_hooks: crate::consumer::ReviewHooks,
    /// The `[[consumer]]`s, each with its own task and queue.
    consumers: crate::consumers::ConsumerSet,
    settings: Settings,
}

impl Supervisor {
    /// Lock the token directories, clean stale temp files, and start every
    /// task. Fails only when another mcprom holds a token directory.
    pub fn start(
        mut settings: Settings,
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
        let wall = crate::clock::system();
        tracker.spawn(rotator::watch_clock(
            jumps_tx,
            CLOCK_CHECK_PERIOD,
            wall.clone(),
            cancel.clone(),
        ));
        let mut supervisor = Supervisor {
            state,
            queue: ReloadQueue::new(),
            limiter: Arc::new(Semaphore::new(settings.limits.concurrent_requests.get())),
            clock_jumps,
            wall,
            tracker,
            cancel,
            clusters: BTreeMap::new(),
            locks: DirLocks::new(),
            reloader: None,
            consumer: None,
            review_hooks: Default::default(),
            consumers: Default::default(),
            settings: settings.clone(),
        };
        supervisor.lock_token_dirs(&settings)?;
        supervisor.sync_reloader(&settings.prometheus);
        supervisor.sync_consumer(&settings.prometheus);
        supervisor.sync_consumers(&settings);
        supervisor.sync_clusters(&mut settings);
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
    pub fn command(&self, cluster: &str) -> Option<Arc<RotateRequests>> {
        self.clusters.get(cluster).map(|c| c.commands.clone())
    }

    fn lock_token_dirs(&mut self, settings: &Settings) -> Result<(), StartError> {
        for cluster in &settings.clusters {
            // No lock file beside a path mcprom refuses to replace (a
            // device, a FIFO, a link): that cluster's writes fail, naming it.
            if sink::check_target(&cluster.token_file).is_err() {
                continue;
            }
            match self
                .locks
                .ensure(&config::resolved_dir(&cluster.token_file))
            {
                Ok(()) => {}
                Err(held @ LockError::Held { .. }) => return Err(held.into()),
                Err(other) => {
                    // The directory may appear, or the thing at the lock's
                    // name go, later (a host problem, not a reason to blind
                    // every other cluster): its clusters' writes take the
                    // lock first, fail until they can, and retry.
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

    /// (Re)start reading Prometheus's configuration and targets when its
    /// settings change. Read-only, slow, and independent of rotation.
    fn sync_consumer(&mut self, prometheus: &PrometheusSettings) {
        if self
            .consumer
            .as_ref()
            .is_some_and(|c| &c.settings == prometheus)
        {
            return;
        }
        if let Some(old) = self.consumer.take() {
            old.cancel.cancel();
        }
        match Reloader::new(prometheus.clone()) {
            Ok(reader) => {
                let cancel = self.cancel.child_token();
                self.tracker.spawn(crate::consumer::watch(
                    reader,
                    self.state.clone(),
                    self.review_hooks.clone(),
                    cancel.clone(),
                ));
                self.consumer = Some(RunningReloader {
                    settings: prometheus.clone(),
                    cancel,
                });
            }
            Err(e) => {
                warn!(error = %e, "cannot read Prometheus's configuration: which jobs use the token files is not checked")
            }
        }
    }

    /// Start, stop and restart `[[consumer]]`s as the settings say.
    fn sync_consumers(&mut self, settings: &Settings) {
        self.consumers.sync(
            &settings.consumers,
            &self.state,
            &self.tracker,
            &self.cancel,
        );
    }

    /// Start added clusters, stop removed ones, restart changed ones. An
    /// unchanged cluster keeps its rotator, and `settings` takes the
    /// rotator's `Arc` in place of its freshly parsed copy, so a reload of
    /// 10,000 clusters leaves one copy of their settings, not two.
    fn sync_clusters(&mut self, settings: &mut Settings) {
        let wanted: std::collections::HashSet<&str> =
            settings.clusters.iter().map(|c| c.name.as_str()).collect();
        let gone: Vec<String> = self
            .clusters
            .keys()
            .filter(|name| !wanted.contains(name.as_str()))
            .cloned()
            .collect();
        drop(wanted);
        for name in gone {
            if let Some(running) = self.clusters.remove(&name) {
                running.cancel.cancel();
                self.state.remove(&name);
                self.review_hooks.remove(&name);
                info!(
                    cluster = %name,
                    token_file = %running.settings.token_file.display(),
                    "cluster removed from the config: rotation stopped, its token file is left in place"
                );
            }
        }
        for cluster in &mut settings.clusters {
            match self.clusters.get(&cluster.name) {
                Some(running) if running.settings == *cluster => {
                    *cluster = running.settings.clone();
                    continue;
                }
                Some(running) => {
                    running.cancel.cancel();
                    info!(cluster = %cluster.name, "cluster settings changed: restarting its rotation");
                }
                None => {}
            }
            self.spawn_cluster(cluster.clone());
        }
    }

    /// The rotator shares the settings' `Arc`: 10,000 clusters are not
    /// held twice.
    fn spawn_cluster(&mut self, cluster: Arc<ClusterSettings>) {
        // Before the cluster's first token, so before any reload: a
        // consumer configured with the kubeconfig finds it in place.
        if cluster.kubeconfig_file.is_some() {
            crate::kubeconfig::ensure_logged(&cluster);
        }
        let cancel = self.cancel.child_token();
        let commands = RotateRequests::new();
        let mut status = ClusterStatus::new(
            &cluster.name,
            cluster.service_account.to_string(),
            cluster.token_file.clone(),
        );
        status.kubeconfig_file = cluster.kubeconfig_file.clone();
        self.state.insert(status);
        let rotator = Rotator {
            issuer: ClusterIssuer::new(
                cluster.clone(),
                &self.settings.path,
                REQUEST_TIMEOUT,
                self.settings.limits.exec_timeout,
            ),
            sink: crate::kubeconfig::WithKubeconfig::new(
                FileSink::new(
                    cluster.token_file.clone(),
                    cluster.file_mode,
                    cluster.file_group.clone(),
                )
                .locked_by(self.locks.clone()),
                cluster.clone(),
            ),
            reload: self.consumers.handle(&cluster.name, self.queue.clone()),
            state: self.state.clone(),
            limiter: self.limiter.clone(),
            clock_jumps: self.clock_jumps.clone(),
            wall: self.wall.clone(),
            commands: commands.clone(),
            cancel: cancel.clone(),
            cluster: cluster.clone(),
        };
        let task = self.tracker.spawn(rotator.run());
        self.review_hooks.insert(&cluster.name, commands.clone());
        self.clusters.insert(
            cluster.name.clone(),
            RunningCluster {
                settings: cluster,
                cancel,
                commands,
                task,
            },
        );
    }

    /// Apply new settings: start added clusters, stop removed ones, restart
    /// changed ones, leave the rest alone.
    pub fn apply(&mut self, mut settings: Settings) -> Result<(), StartError> {
        for warning in config::warnings(&settings) {
            warn!("{warning}");
        }
        for problem in config::host_problems(&settings) {
            warn!("{problem}");
        }
        self.lock_token_dirs(&settings)?;
        self.sync_reloader(&settings.prometheus);
        self.sync_consumer(&settings.prometheus);
        self.sync_consumers(&settings);
        if settings.limits != self.settings.limits {
            // One semaphore bounds every rotator: a new limit means new
            // rotators. They adopt the tokens on disk, so this costs no
            // TokenRequest.
            self.limiter = Arc::new(Semaphore::new(settings.limits.concurrent_requests.get()));
            for running in std::mem::take(&mut self.clusters).into_values() {
                running.cancel.cancel();
            }
        }
        self.sync_clusters(&mut settings);
        self.settings = settings;
        Ok(())
    }

    /// Whether every rotator task is still running (none panicked or
    /// returned on its own): the condition for feeding systemd's watchdog.
    pub fn all_alive(&self) -> bool {
        self.clusters
            .values()
            .all(|c| !c.task.is_finished() || c.cancel.is_cancelled())
    }

    /// The names of the clusters being served.
    pub fn cluster_names(&self) -> Vec<String> {
        self.clusters.keys().cloned().collect()
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
