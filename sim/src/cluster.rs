//! The state of one simulated cluster: signing key, ServiceAccounts, static
//! tokens, injected faults and counters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::jwt::Signer;
use super::secrets::{Secret, SecretStore};

/// The ServiceAccount mcprom manages in every simulated cluster.
pub const MANAGED_NAMESPACE: &str = "kube-system";
/// Name of the managed ServiceAccount.
pub const MANAGED_NAME: &str = "prometheus-test";

/// Which requests a fault applies to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FaultScope {
    /// Only `POST .../serviceaccounts/<name>/token` (the default).
    #[default]
    TokenRequests,
    /// Every request to the cluster.
    All,
}

/// What an injected fault does to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer with this HTTP status and a `Status` body like the real server's.
    Status {
        /// HTTP status code (400..=599).
        code: u16,
        /// Adds `Retry-After: N` (and `details.retryAfterSeconds`).
        retry_after_seconds: Option<u64>,
    },
    /// Hold the request for 120 s (or until the connection goes away), then
    /// close the connection.
    Hang,
    /// Close the connection without answering.
    Reset,
}

/// A fault that hits the next `count` matching requests.
///
/// JSON form (control endpoint): `{"count":N,"kind":"status","code":503}`,
/// `{"count":N,"kind":"status","code":429,"retry_after_seconds":2}`,
/// `{"count":N,"kind":"hang"}`, `{"count":N,"kind":"reset"}`, each with an
/// optional `"scope":"all"` (default `"token_requests"`).
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(try_from = "FaultSpec")]
pub struct Fault {
    /// How many requests it hits (default 1).
    pub count: u32,
    /// What it does.
    pub kind: FaultKind,
    /// Which requests it hits.
    pub scope: FaultScope,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultSpec {
    #[serde(default = "one")]
    count: u32,
    kind: String,
    code: Option<u16>,
    retry_after_seconds: Option<u64>,
    #[serde(default)]
    scope: FaultScope,
}

fn one() -> u32 {
    1
}

impl TryFrom<FaultSpec> for Fault {
    type Error = String;

    fn try_from(s: FaultSpec) -> Result<Self, String> {
        let kind = match s.kind.as_str() {
            "status" => {
                let code = s.code.ok_or("a status fault needs \"code\"")?;
                if !(400..=599).contains(&code) {
                    return Err(format!(
                        "fault code {code} is not an HTTP error status (400..=599)"
                    ));
                }
                FaultKind::Status {
                    code,
                    retry_after_seconds: s.retry_after_seconds,
                }
            }
            "hang" | "reset" if s.code.is_some() || s.retry_after_seconds.is_some() => {
                return Err(format!(
                    "a {} fault takes no code or retry_after_seconds",
                    s.kind
                ));
            }
            "hang" => FaultKind::Hang,
            "reset" => FaultKind::Reset,
            other => {
                return Err(format!(
                    "unknown fault kind {other:?} (expected \"status\", \"hang\" or \"reset\")"
                ));
            }
        };
        Ok(Fault {
            count: s.count,
            kind,
            scope: s.scope,
        })
    }
}

/// Tokens rejected with 401, by reason.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct TokensRejected {
    /// Past `exp` + leeway.
    pub expired: u64,
    /// A JWT not signed by this cluster (e.g. another cluster's token).
    pub bad_signature: u64,
    /// Not a token of this cluster at all, for a deleted ServiceAccount, or
    /// for a foreign audience.
    pub unknown: u64,
    /// Before `nbf`/`iat` (minus leeway).
    pub not_yet_valid: u64,
}

/// Counters of one cluster (`GET /stats` on the control endpoint).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// TokenRequest POSTs received, whatever their outcome.
    pub token_requests: u64,
    /// Tokens issued.
    pub tokens_issued: u64,
    /// `"<METHOD> <path> <status>"` → count; the path is relative to the
    /// cluster (no `/clusters/<name>` prefix, no query); status 0 means the
    /// connection was reset or hung without an answer.
    pub requests: BTreeMap<String, u64>,
    /// Tokens rejected with 401, by reason.
    pub tokens_rejected: TokensRejected,
    /// `"<ns>/<name>"` → `exp` of the last token issued for that ServiceAccount.
    pub last_exp: BTreeMap<String, i64>,
    /// TLS connections that began with a full handshake, counted for the
    /// cluster of their first request.
    #[serde(default)]
    pub tls_full_handshakes: u64,
    /// TLS connections that resumed a session (a session ticket the sim
    /// issued), counted like `tls_full_handshakes`.
    #[serde(default)]
    pub tls_resumed_handshakes: u64,
}

/// Counters of all clusters of a sim (`GET /stats`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Cluster name → counters.
    pub clusters: BTreeMap<String, ClusterStats>,
}

/// Why a bearer token was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    Expired,
    BadSignature,
    Unknown,
    NotYetValid,
}

/// Distinct request keys kept per cluster; beyond this, new keys are folded
/// into one so that a client probing random paths cannot grow memory.
const MAX_REQUEST_KEYS: usize = 1000;

/// One simulated cluster.
pub(crate) struct Cluster {
    pub name: String,
    /// Generated on first use; replaced by [`Cluster::rotate_signing_key`].
    signer: Mutex<Option<Arc<Signer>>>,
    service_accounts: Mutex<HashMap<(String, String), String>>,
    /// Static bearer token of `mcprom-issuer`.
    pub issuer_token: String,
    /// Static bearer token of `nobody`.
    pub nobody_token: String,
    faults: Mutex<VecDeque<Fault>>,
    stats: Mutex<ClusterStats>,
    down: AtomicBool,
    /// Secrets (legacy ServiceAccount token Secrets, on request).
    pub secrets: SecretStore,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data
    // inconsistent in a way that matters to a simulator.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A random RFC 4122 version-4 UUID string.
pub(crate) fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]]),
    )
}

fn random_token() -> String {
    let b: [u8; 24] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Cluster {
    pub fn new(name: String) -> Self {
        let sas = [
            (MANAGED_NAMESPACE, MANAGED_NAME),
            ("kube-system", "default"),
            ("default", "default"),
        ]
        .into_iter()
        .map(|(ns, n)| ((ns.to_string(), n.to_string()), new_uid()))
        .collect();
        Self {
            issuer_token: format!("sim-issuer-{name}-{}", random_token()),
            nobody_token: format!("sim-nobody-{name}-{}", random_token()),
            name,
            signer: Mutex::new(None),
            service_accounts: Mutex::new(sas),
            faults: Mutex::new(VecDeque::new()),
            stats: Mutex::new(ClusterStats::default()),
            down: AtomicBool::new(false),
            secrets: SecretStore::default(),
        }
    }

    /// The signing key, generated on first use so that 10,000 idle clusters
    /// cost nothing.
    pub fn signer(&self) -> anyhow::Result<Arc<Signer>> {
        let mut signer = lock(&self.signer);
        if let Some(s) = signer.as_ref() {
            return Ok(s.clone());
        }
        let s = Arc::new(Signer::generate()?);
        *signer = Some(s.clone());
        Ok(s)
    }

    /// Replaces the signing key, as an API server restarted with a new
    /// `--service-account-signing-key-file` and without the old public key:
    /// every token signed before stops authenticating at once.
    pub fn rotate_signing_key(&self) -> anyhow::Result<()> {
        let s = Arc::new(Signer::generate()?);
        *lock(&self.signer) = Some(s);
        Ok(())
    }

    pub fn service_account_uid(&self, ns: &str, name: &str) -> Option<String> {
        lock(&self.service_accounts)
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Deletes a ServiceAccount and, as the token controller does, its
    /// legacy token Secrets.
    pub fn delete_service_account(&self, ns: &str, name: &str) -> bool {
        let removed = lock(&self.service_accounts)
            .remove(&(ns.to_string(), name.to_string()))
            .is_some();
        if removed {
            self.secrets.remove_service_account_tokens(ns, name);
        }
        removed
    }

    /// Creates a legacy, never-expiring token Secret for ServiceAccount
    /// `ns/sa` the way the token controller fills one in; returns its name,
    /// or `None` when the ServiceAccount does not exist.
    pub fn create_legacy_token_secret(&self, ns: &str, sa: &str) -> anyhow::Result<Option<String>> {
        let Some(sa_uid) = self.service_account_uid(ns, sa) else {
            return Ok(None);
        };
        loop {
            let name = super::secrets::generate_name(&format!("{sa}-token-"));
            let claims = super::secrets::legacy_claims(ns, &name, sa, &sa_uid);
            let token = self.signer()?.sign(&claims)?;
            if self.secrets.insert(Secret::service_account_token(
                ns, &name, sa, &sa_uid, &token,
            )) {
                return Ok(Some(name));
            }
        }
    }

    /// Whether namespace `ns` exists: the four every cluster has, and any
    /// that holds a ServiceAccount (the control endpoint may create one anywhere).
    pub fn namespace_exists(&self, ns: &str) -> bool {
        matches!(
            ns,
            "default" | "kube-system" | "kube-public" | "kube-node-lease"
        ) || lock(&self.service_accounts).keys().any(|(n, _)| n == ns)
    }

    pub fn create_service_account(&self, ns: &str, name: &str) -> bool {
        let mut sas = lock(&self.service_accounts);
        let key = (ns.to_string(), name.to_string());
        if sas.contains_key(&key) {
            return false;
        }
        sas.insert(key, new_uid());
        true
    }

    pub fn inject_fault(&self, fault: Fault) {
        if fault.count > 0 {
            lock(&self.faults).push_back(fault);
        }
    }

    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    /// Takes one use of the first fault that applies to this request.
    pub fn take_fault(&self, is_token_request: bool) -> Option<FaultKind> {
        let mut faults = lock(&self.faults);
        let i = faults
            .iter()
            .position(|f| is_token_request || f.scope == FaultScope::All)?;
        let f = &mut faults[i];
        let kind = f.kind;
        f.count -= 1;
        if f.count == 0 {
            faults.remove(i);
        }
        Some(kind)
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn stats(&self) -> ClusterStats {
        lock(&self.stats).clone()
    }

    pub fn record_request(&self, method: &str, path: &str, status: u16, token_request: bool) {
        let mut s = lock(&self.stats);
        if token_request {
            s.token_requests += 1;
        }
        let key = format!("{method} {path} {status}");
        if let Some(n) = s.requests.get_mut(&key) {
            *n += 1;
        } else if s.requests.len() < MAX_REQUEST_KEYS {
            s.requests.insert(key, 1);
        } else {
            *s.requests.entry("OTHER".to_string()).or_default() += 1;
        }
    }

    pub fn record_handshake(&self, resumed: bool) {
        let mut s = lock(&self.stats);
        if resumed {
            s.tls_resumed_handshakes += 1;
        } else {
            s.tls_full_handshakes += 1;
        }
    }

    pub fn record_issued(&self, ns: &str, name: &str, exp: i64) {
        let mut s = lock(&self.stats);
        s.tokens_issued += 1;
        s.last_exp.insert(format!("{ns}/{name}"), exp);
    }

    pub fn record_rejected(&self, why: Rejection) {
        let mut s = lock(&self.stats);
        let r = &mut s.tokens_rejected;
        match why {
            Rejection::Expired => r.expired += 1,
            Rejection::BadSignature => r.bad_signature += 1,
            Rejection::Unknown => r.unknown += 1,
            Rejection::NotYetValid => r.not_yet_valid += 1,
        }
    }
}

/// Shared pointer to a cluster, as stored in routing tables.
pub(crate) type ClusterRef = Arc<Cluster>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_the_documented_json() {
        let f: Fault = serde_json::from_str(
            r#"{"count":2,"kind":"status","code":429,"retry_after_seconds":2}"#,
        )
        .unwrap();
        assert_eq!(
            f.kind,
            FaultKind::Status {
                code: 429,
                retry_after_seconds: Some(2)
            }
        );
        let f: Fault = serde_json::from_str(r#"{"count":1,"kind":"reset","scope":"all"}"#).unwrap();
        assert_eq!((f.kind, f.scope), (FaultKind::Reset, FaultScope::All));
        for bad in [
            r#"{"kind":"status"}"#,
            r#"{"kind":"status","code":200}"#,
            r#"{"kind":"explode"}"#,
            r#"{"kind":"hang","cnt":1}"#,
            r#"{"kind":"reset","code":500}"#,
        ] {
            assert!(serde_json::from_str::<Fault>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn faults_are_consumed_in_order_and_respect_scope() {
        let c = Cluster::new("c".into());
        c.inject_fault(Fault {
            count: 2,
            kind: FaultKind::Reset,
            scope: FaultScope::TokenRequests,
        });
        assert_eq!(c.take_fault(false), None);
        assert_eq!(c.take_fault(true), Some(FaultKind::Reset));
        assert_eq!(c.take_fault(true), Some(FaultKind::Reset));
        assert_eq!(c.take_fault(true), None);
    }

    #[test]
    fn recreated_service_accounts_get_a_new_uid() {
        let c = Cluster::new("c".into());
        let before = c
            .service_account_uid(MANAGED_NAMESPACE, MANAGED_NAME)
            .unwrap();
        assert!(c.delete_service_account(MANAGED_NAMESPACE, MANAGED_NAME));
        assert!(
            c.service_account_uid(MANAGED_NAMESPACE, MANAGED_NAME)
                .is_none()
        );
        assert!(c.create_service_account(MANAGED_NAMESPACE, MANAGED_NAME));
        assert_ne!(
            c.service_account_uid(MANAGED_NAMESPACE, MANAGED_NAME)
                .unwrap(),
            before
        );
    }
}
