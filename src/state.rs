//! What mcprom knows about each cluster and about Prometheus, shared by the
//! rotators (writers) and everything that reports (logs, metrics, status,
//! sd_notify).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::watch;

/// Where a cluster's rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Nothing known yet.
    Unknown,
    /// Holds a valid token; next refresh scheduled.
    Fresh,
    /// A TokenRequest is in flight.
    Refreshing,
    /// The last attempt failed; retrying; the current token is still valid.
    Backoff,
    /// The current token has expired (or there is none) and attempts fail.
    Expired,
    /// The cluster cannot be served as configured (e.g. a credential file is missing).
    Error,
}

/// One cluster's status.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterStatus {
    /// Cluster name.
    pub name: String,
    /// `namespace/name`.
    pub service_account: String,
    /// The token file.
    pub token_file: PathBuf,
    /// Where rotation stands.
    pub state: Phase,
    /// `exp` of the token in the file.
    pub expires_at: Option<SystemTime>,
    /// `iat` of the token in the file.
    pub issued_at: Option<SystemTime>,
    /// When the last successful refresh finished.
    pub last_refresh: Option<SystemTime>,
    /// When the next attempt is planned.
    pub next_refresh: Option<SystemTime>,
    /// The last error, cleared by a success.
    pub last_error: Option<String>,
    /// The first attempt (or adoption) has had an outcome.
    pub settled: bool,
    /// When mcprom's own credential for the cluster expires, if known.
    pub credential_expires_at: Option<SystemTime>,
    /// Successful refreshes.
    pub refreshes: u64,
    /// Failed attempts by reason label.
    pub errors: BTreeMap<&'static str, u64>,
    /// When the API server last confirmed (SelfSubjectReview) that the
    /// token in the file authenticates as the ServiceAccount.
    pub verified_at: Option<SystemTime>,
    /// Since when the API server rejects the token in the file before its
    /// expiry; cleared when a new token is written.
    pub rejected_since: Option<SystemTime>,
    /// Tokens in use that the API server stopped accepting before their expiry.
    pub rejections: u64,
    /// Prometheus jobs that read the token file (`None`: Prometheus not read yet or unreadable).
    pub prometheus_jobs: Option<Vec<String>>,
    /// Targets of those jobs failing with 401/403 now (`None`: unknown).
    pub prometheus_targets_rejected: Option<u64>,
    /// The kubeconfig written for the cluster (`None`: none configured).
    pub kubeconfig_file: Option<PathBuf>,
}

impl ClusterStatus {
    /// A status for a cluster that has not started yet.
    pub fn new(name: &str, service_account: String, token_file: PathBuf) -> Self {
        ClusterStatus {
            name: name.to_owned(),
            service_account,
            token_file,
            state: Phase::Unknown,
            expires_at: None,
            issued_at: None,
            last_refresh: None,
            next_refresh: None,
            last_error: None,
            settled: false,
            credential_expires_at: None,
            refreshes: 0,
            errors: BTreeMap::new(),
            verified_at: None,
            rejected_since: None,
            rejections: 0,
            prometheus_jobs: None,
            prometheus_targets_rejected: None,
            kubeconfig_file: None,
        }
    }

    /// Whether the token in the file is valid at `now`: not expired, and
    /// not known to be rejected by the API server.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|exp| exp > now) && self.rejected_since.is_none()
    }
}

/// Outcomes of reloads of Prometheus.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    /// Successful reloads.
    pub ok: u64,
    /// Failed reloads.
    pub failed: u64,
    /// When the last reload succeeded.
    pub last_success: Option<SystemTime>,
    /// The last error, cleared by a success.
    pub last_error: Option<String>,
}

/// Outcome of configuration (re)loads.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConfigStatus {
    /// Whether the last attempt to load the config file succeeded.
    pub last_reload_successful: bool,
    /// When the config was last loaded successfully.
    pub last_success: Option<SystemTime>,
    /// The last error, cleared by a success.
    pub last_error: Option<String>,
}

impl Default for ConfigStatus {
    fn default() -> Self {
        ConfigStatus {
            last_reload_successful: true,
            last_success: Some(SystemTime::now()),
            last_error: None,
        }
    }
}

/// Shared state. Cheap to lock: every critical section is a few field updates.
#[derive(Debug)]
pub struct State {
    /// Boxed: a B-tree node holds 11 entries and is on average two thirds
    /// full, so unboxed statuses (~330 bytes) left ~1.5 MB of empty slots
    /// at 10,000 clusters.
    clusters: Mutex<BTreeMap<String, Box<ClusterStatus>>>,
    /// How many clusters have not `settled` yet, kept in step by
    /// insert/remove/update so readiness is O(1) (start-up with 10,000
    /// clusters changes the state tens of thousands of times).
    unsettled: std::sync::atomic::AtomicUsize,
    reloads: Mutex<ReloadStatus>,
    config: Mutex<ConfigStatus>,
    changed: watch::Sender<u64>,
    /// Bumped by [`State::update_reloads`] only: the consumer waits on it
    /// instead of polling the reload counter.
    reloads_changed: watch::Sender<u64>,
    /// Every `[[consumer]]`'s status.
    consumers: crate::consumers::ConsumerStates,
}

impl Default for State {
    fn default() -> Self {
        State {
            clusters: Mutex::default(),
            unsettled: std::sync::atomic::AtomicUsize::new(0),
            reloads: Mutex::default(),
            config: Mutex::default(),
            changed: watch::Sender::new(0),
            reloads_changed: watch::Sender::new(0),
            consumers: Default::default(),
        }
    }
}

impl State {
    /// Register a cluster (replacing any previous status of that name).
    pub fn insert(&self, status: ClusterStatus) {
        {
            let mut clusters = self.lock();
            let arriving = status.settled;
            let old = clusters.insert(status.name.clone(), Box::new(status));
            self.count_settled(old.map(|o| o.settled), Some(arriving));
        }
        self.bump();
    }

    /// Forget a cluster.
    pub fn remove(&self, name: &str) {
        {
            let mut clusters = self.lock();
            let old = clusters.remove(name);
            self.count_settled(old.map(|o| o.settled), None);
        }
        self.bump();
    }

    /// Change one cluster's status.
    pub fn update(&self, name: &str, f: impl FnOnce(&mut ClusterStatus)) {
        {
            let mut clusters = self.lock();
            if let Some(status) = clusters.get_mut(name) {
                let before = status.settled;
                f(status);
                let after = status.settled;
                self.count_settled(Some(before), Some(after));
            }
        }
        self.bump();
    }

    /// Change one cluster's status when `f` reports that it changed
    /// something; only then are subscribers told. For writers that repeat
    /// the same values for every cluster (the consumer, every few minutes):
    /// 10,000 unchanged statuses must not wake anything.
    pub fn update_if(&self, name: &str, f: impl FnOnce(&mut ClusterStatus) -> bool) {
        let changed = {
            let mut clusters = self.lock();
            match clusters.get_mut(name) {
                Some(status) => {
                    let before = status.settled;
                    let changed = f(status);
                    self.count_settled(Some(before), Some(status.settled));
                    changed
                }
                None => false,
            }
        };
        if changed {
            self.bump();
        }
    }

    /// Whether every cluster has settled (a token, or a first error).
    pub fn all_settled(&self) -> bool {
        self.unsettled.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    /// Move the unsettled count from `before` (a status leaving) to `after`
    /// (a status arriving). Called with the map locked.
    fn count_settled(&self, before: Option<bool>, after: Option<bool>) {
        use std::sync::atomic::Ordering::SeqCst;
        if before == Some(false) {
            self.unsettled.fetch_sub(1, SeqCst);
        }
        if after == Some(false) {
            self.unsettled.fetch_add(1, SeqCst);
        }
    }

    /// Look at every cluster's status, by name, without copying them (a
    /// copy of 10,000 is ~4 MB). The state is locked meanwhile: `f` must
    /// not call back into it.
    pub fn for_each(&self, mut f: impl FnMut(&ClusterStatus)) {
        for status in self.lock().values() {
            f(status);
        }
    }

    /// A copy of every cluster's status, by name.
    pub fn clusters(&self) -> Vec<ClusterStatus> {
        self.lock()
            .values()
            .map(|s| ClusterStatus::clone(s))
            .collect()
    }

    /// Every `[[consumer]]`'s status.
    pub fn consumers(&self) -> &crate::consumers::ConsumerStates {
        &self.consumers
    }

    /// Change the reload status.
    pub fn update_reloads(&self, f: impl FnOnce(&mut ReloadStatus)) {
        f(&mut self.reloads.lock().unwrap_or_else(|e| e.into_inner()));
        self.bump();
        self.reloads_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees a new value after every change of the reload
    /// status (and of nothing else).
    pub fn subscribe_reloads(&self) -> watch::Receiver<u64> {
        self.reloads_changed.subscribe()
    }

    /// A copy of the reload status.
    pub fn reloads(&self) -> ReloadStatus {
        self.reloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Record the outcome of a config load.
    pub fn config_loaded(&self, outcome: Result<(), String>) {
        {
            let mut config = self.config.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                Ok(()) => {
                    config.last_reload_successful = true;
                    config.last_success = Some(SystemTime::now());
                    config.last_error = None;
                }
                Err(e) => {
                    config.last_reload_successful = false;
                    config.last_error = Some(e);
                }
            }
        }
        self.bump();
    }

    /// A copy of the config status.
    pub fn config(&self) -> ConfigStatus {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A receiver that sees a new value after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Box<ClusterStatus>>> {
        self.clusters.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_counts_unsettled_clusters_through_every_change() {
        let state = State::default();
        assert!(state.all_settled());
        state.insert(ClusterStatus::new("a", "ns/sa".into(), "/a".into()));
        state.insert(ClusterStatus::new("b", "ns/sa".into(), "/b".into()));
        assert!(!state.all_settled());
        state.update("a", |s| s.settled = true);
        state.update("a", |s| s.settled = true);
        assert!(!state.all_settled());
        state.insert(ClusterStatus::new("b", "ns/sa".into(), "/b".into()));
        assert!(!state.all_settled(), "replacing b keeps one unsettled");
        state.remove("b");
        assert!(state.all_settled());
        state.insert(ClusterStatus::new("a", "ns/sa".into(), "/a".into()));
        assert!(
            !state.all_settled(),
            "a restarted cluster is unsettled again"
        );
        state.update("missing", |s| s.settled = true);
        state.update("a", |s| s.settled = true);
        assert!(state.all_settled());
    }

    #[test]
    fn update_if_announces_only_changes() {
        let state = State::default();
        state.insert(ClusterStatus::new("a", "ns/sa".into(), "/a".into()));
        let mut changes = state.subscribe();
        changes.mark_unchanged();
        state.update_if("a", |s| {
            let changed = s.prometheus_targets_rejected != Some(0);
            s.prometheus_targets_rejected = Some(0);
            changed
        });
        assert!(changes.has_changed().unwrap(), "a change is announced");
        assert_eq!(state.clusters()[0].prometheus_targets_rejected, Some(0));
        changes.mark_unchanged();
        state.update_if("a", |_| false);
        state.update_if("missing", |_| true);
        assert!(!changes.has_changed().unwrap(), "no change, no wake-up");
        state.update_if("a", |s| {
            s.settled = true;
            true
        });
        assert!(state.all_settled(), "update_if keeps readiness in step");

        let reloads = state.subscribe_reloads();
        state.update("a", |s| s.refreshes += 1);
        assert!(
            !reloads.has_changed().unwrap(),
            "cluster changes are not reload events"
        );
        state.update_reloads(|r| r.ok += 1);
        assert!(reloads.has_changed().unwrap());
    }
}
