//! Self-renewing credentials (`[cluster.credentials] self = true`).
//!
//! mcprom renews such a cluster's token with that token itself, so the
//! Prometheus host holds no other credential for the cluster. The chain
//! starts with a token a person creates once and hands over with
//! `mcprom seed`. It breaks when a token expires unrenewed (only a new seed
//! repairs it), and it may be limited in age (`max_chain_age`) so that a
//! stolen token cannot renew itself forever.
//!
//! The start of the chain is kept in a small sidecar file beside the token
//! file, `<token_file>.chain`, holding `{"started_at":"<RFC 3339>"}`. `mcprom
//! seed` writes it atomically; renewals never move it.
//!
//! The daemon renews through [`SelfRenewing`], an issuer wrapping the
//! cluster's kube issuer: [`check_chain`] runs before each renewal and
//! [`broken_chain`] explains a 401. Messages name the config file they were
//! given (`mcprom --config PATH seed …`). Nothing here prints a token.

use std::ffi::OsString;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::config::{self, ClusterSettings, Credentials};
use crate::issuer::{IssueError, Issuer, Review, TokenSpec};
use crate::sink::{self, SinkError};
use crate::text::rfc3339;
use crate::token::{IssuedToken, MAX_TOKEN_LEN, Token, TokenError};

/// Suffix of the sidecar file that records when the chain was seeded.
pub const CHAIN_SUFFIX: &str = ".chain";

pub use crate::config::{mcprom_command, reseed_command};

/// The sidecar file of `token_file`: `<token_file>.chain`.
pub fn chain_file(token_file: &Path) -> PathBuf {
    let mut name = OsString::from(token_file.as_os_str());
    name.push(CHAIN_SUFFIX);
    PathBuf::from(name)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainFile {
    started_at: jiff::Timestamp,
}

/// When the chain of `token_file` was seeded: `Ok(None)` when the sidecar
/// file does not exist, an error when it cannot be read or understood.
pub fn read_chain_start(token_file: &Path) -> io::Result<Option<SystemTime>> {
    let path = chain_file(token_file);
    let mut text = String::new();
    match std::fs::File::open(&path) {
        Ok(file) => file.take(4096).read_to_string(&mut text)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let chain: ChainFile = serde_json::from_str(&text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(Some(SystemTime::from(chain.started_at)))
}

/// Record (atomically) that the chain of `cluster` started at `started`.
pub fn write_chain_start(cluster: &ClusterSettings, started: SystemTime) -> Result<(), SinkError> {
    let started_at = jiff::Timestamp::try_from(started).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let text = serde_json::to_string(&ChainFile { started_at }).unwrap_or_default();
    let gid = cluster
        .file_group
        .as_deref()
        .map(sink::lookup_group)
        .transpose()?;
    sink::write_atomically(
        &chain_file(&cluster.token_file),
        text.as_bytes(),
        cluster.file_mode,
        gid,
    )
}

/// Before a renewal: refuse once the chain is older than `max_chain_age`,
/// and warn when the end is near (the last quarter of the allowed age).
///
/// A chain whose start was never recorded (seeded by hand, or before
/// `max_chain_age` was set) is counted from the `iat` of the token on disk,
/// which is then recorded, so renewals cannot keep it young.
pub fn check_chain(
    cluster: &ClusterSettings,
    config: &Path,
    now: SystemTime,
) -> Result<(), IssueError> {
    let Some(max) = cluster.max_chain_age else {
        return Ok(());
    };
    let chain = chain_file(&cluster.token_file);
    let started = match read_chain_start(&cluster.token_file) {
        Ok(Some(started)) => started,
        Ok(None) => {
            let started = sink::read_token(&cluster.token_file)
                .ok()
                .and_then(|t| t.claims().ok())
                .and_then(|c| c.issued_at)
                .map(|iat| UNIX_EPOCH + Duration::from_secs(iat))
                .unwrap_or(now)
                .min(now);
            write_chain_start(cluster, started).map_err(|e| {
                IssueError::Config(format!(
                    "cannot record the start of the self-renewal chain (max_chain_age needs it): {e}"
                ))
            })?;
            warn!(
                chain_file = %chain.display(),
                started_at = %rfc3339(started),
                "the start of the self-renewal chain was not recorded: counting it from the current token's issue time"
            );
            started
        }
        Err(e) => {
            return Err(IssueError::Config(format!(
                "cannot read {} (the start of the self-renewal chain, needed by max_chain_age): {e}; \
                 re-seed to start a new chain: {}",
                chain.display(),
                reseed_command(config, cluster)
            )));
        }
    };
    let age = now.duration_since(started).unwrap_or_default();
    if age >= max {
        return Err(IssueError::ChainTooOld(format!(
            "the self-renewal chain was seeded at {} and reached max_chain_age ({}): mcprom stopped \
             renewing it, and the current token stops working when it expires; re-seed it: {}",
            rfc3339(started),
            config::format_duration(max),
            reseed_command(config, cluster)
        )));
    }
    let left = max - age;
    if left < max / 4 {
        warn!(
            chain_ends_in = %config::format_duration(Duration::from_secs(left.as_secs())),
            reseed = %reseed_command(config, cluster),
            "the self-renewal chain nears max_chain_age: mcprom stops renewing then; re-seed before"
        );
    }
    Ok(())
}

/// The error for a 401 in self-renewal: the cluster's own token is no longer
/// accepted, so mcprom cannot renew it; say why as far as can be told, and
/// exactly how to re-seed.
pub fn broken_chain(
    cluster: &ClusterSettings,
    config: &Path,
    server_message: &str,
    now: SystemTime,
) -> IssueError {
    let claims = sink::read_token(&cluster.token_file)
        .ok()
        .and_then(|t| t.claims().ok());
    let why = match claims {
        Some(c) if c.expiry() <= now => format!(
            "its token expired at {} before it could be renewed",
            rfc3339(c.expiry())
        ),
        Some(_) => "its token has not expired, so the ServiceAccount was probably deleted and \
                    recreated, or the cluster's signing keys changed"
            .to_owned(),
        None => format!("{} holds no readable token", cluster.token_file.display()),
    };
    IssueError::ChainBroken(format!(
        "the self-renewal chain is broken: the API server rejected the cluster's own token \
         (401 {server_message}); {why}. mcprom cannot renew it by itself: re-seed it: {}",
        reseed_command(config, cluster)
    ))
}

/// Self-renewal around another issuer (the cluster's kube issuer, whose
/// credential is the cluster's own token file): before each renewal the
/// chain's age is checked, a 401 becomes a broken chain that only a new
/// seed repairs, and the credential's expiry is the new token's.
#[derive(Debug, Clone)]
pub struct SelfRenewing<I> {
    inner: I,
    cluster: Arc<ClusterSettings>,
    config: Arc<Path>,
}

impl<I> SelfRenewing<I> {
    /// Renew `cluster` through `inner`; messages name the config file
    /// `config` in the re-seed command.
    pub fn new(inner: I, cluster: Arc<ClusterSettings>, config: Arc<Path>) -> Self {
        SelfRenewing {
            inner,
            cluster,
            config,
        }
    }
}

impl<I: Issuer> Issuer for SelfRenewing<I> {
    async fn issue(&self, spec: &TokenSpec) -> Result<IssuedToken, IssueError> {
        let cluster = &self.cluster;
        check_chain(cluster, &self.config, SystemTime::now())?;
        if let Err(e) = config::input::read_token(&cluster.token_file) {
            return Err(IssueError::Config(format!(
                "token_file {} (the self-renewal credential): {}; seed it: {}",
                cluster.token_file.display(),
                io::Error::from(e),
                reseed_command(&self.config, cluster)
            )));
        }
        match self.inner.issue(spec).await {
            Ok(mut issued) => {
                // The credential is the token just issued.
                issued.credential_expires_at = Some(issued.claims.expiry());
                Ok(issued)
            }
            Err(IssueError::Unauthorized(message)) => Err(broken_chain(
                cluster,
                &self.config,
                &message,
                SystemTime::now(),
            )),
            Err(other) => Err(other),
        }
    }

    async fn review(&self, token: &Token) -> Result<Review, IssueError> {
        self.inner.review(token).await
    }

    async fn verify(&self, issued: &IssuedToken) -> Result<Review, IssueError> {
        self.inner.verify(issued).await
    }

    fn rest(&self) {
        self.inner.rest();
    }
}

/// Why `mcprom seed` refused a token. Never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The cluster does not renew itself.
    #[error(
        "cluster {0:?} does not use self-renewal: mcprom obtains its tokens with [cluster.credentials]; \
         only a cluster with `self = true` is seeded"
    )]
    NotSelfRenewing(String),
    /// Standard input could not be read.
    #[error("cannot read the token from standard input: {0}")]
    Read(#[from] io::Error),
    /// Nothing was given (typically: the command before the pipe failed).
    #[error("standard input held no token (did the command before the pipe fail?)")]
    Empty,
    /// Not a JWT, or its claims are unreadable.
    #[error("{0}")]
    Token(TokenError),
    /// The token belongs to another ServiceAccount (or to no ServiceAccount).
    #[error(
        "the token is for {found}, not for {expected} (the cluster's service_account): create it with \
         `kubectl create token {name} -n {namespace}`"
    )]
    WrongServiceAccount {
        /// `sub` of the token, or a description of its absence.
        found: String,
        /// `namespace/name` configured.
        expected: String,
        /// Configured name.
        name: String,
        /// Configured namespace.
        namespace: String,
    },
    /// The token has already expired.
    #[error("the token expired at {0}: create a fresh one")]
    Expired(String),
    /// Writing the token or the chain file failed.
    #[error("{0}")]
    Write(#[from] SinkError),
}

/// What `mcprom seed` stored.
#[derive(Debug, Clone, Copy)]
pub struct Seeded {
    /// `exp` of the stored token.
    pub expires_at: SystemTime,
    /// When the new chain started (now).
    pub chain_started: SystemTime,
}

/// Validate a first token read from `input` and store it for `cluster`:
/// a JWT, for the configured ServiceAccount, not expired at `now`; written
/// atomically with the cluster's mode and group, then the chain file.
pub fn seed(
    cluster: &ClusterSettings,
    input: &mut impl Read,
    now: SystemTime,
) -> Result<Seeded, SeedError> {
    if !matches!(cluster.credentials, Credentials::SelfRenew) {
        return Err(SeedError::NotSelfRenewing(cluster.name.clone()));
    }
    let mut bytes = Vec::new();
    input
        .take(MAX_TOKEN_LEN as u64 + 4096)
        .read_to_end(&mut bytes)?;
    let text = String::from_utf8(bytes).map_err(|_| SeedError::Token(TokenError::NotJwt))?;
    let token = match Token::new(text) {
        Ok(token) => token,
        Err(TokenError::Empty) => return Err(SeedError::Empty),
        Err(e) => return Err(SeedError::Token(e)),
    };
    let claims = token.claims().map_err(SeedError::Token)?;
    let sa = &cluster.service_account;
    if claims.subject.as_deref() != Some(sa.subject().as_str()) {
        return Err(SeedError::WrongServiceAccount {
            found: match &claims.subject {
                Some(sub) => format!("{sub:?}"),
                None => "no subject (it has no sub claim)".to_owned(),
            },
            expected: sa.to_string(),
            name: sa.name.clone(),
            namespace: sa.namespace.clone(),
        });
    }
    if claims.expiry() <= now {
        return Err(SeedError::Expired(rfc3339(claims.expiry())));
    }
    let gid = cluster
        .file_group
        .as_deref()
        .map(sink::lookup_group)
        .transpose()?;
    sink::write_atomically(
        &cluster.token_file,
        token.expose().as_bytes(),
        cluster.file_mode,
        gid,
    )?;
    write_chain_start(cluster, now)?;
    Ok(Seeded {
        expires_at: claims.expiry(),
        chain_started: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    /// The chain check, with the default config file in its messages.
    fn check(c: &ClusterSettings, now: SystemTime) -> Result<(), IssueError> {
        check_chain(c, Path::new(config::DEFAULT_PATH), now)
    }

    /// The broken-chain error, with the default config file in its message.
    fn broken(c: &ClusterSettings, server_message: &str, now: SystemTime) -> IssueError {
        broken_chain(c, Path::new(config::DEFAULT_PATH), server_message, now)
    }

    fn jwt(claims: &str) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.{}", e(r#"{"alg":"ES256"}"#), e(claims), e("sig"))
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn cluster(dir: &Path, credentials: Credentials) -> ClusterSettings {
        ClusterSettings {
            token_file: dir.join("prod.token"),
            refresh_at: 0.5,
            credentials,
            ..ClusterSettings::example()
        }
    }

    fn valid_seed() -> String {
        jwt(
            r#"{"sub":"system:serviceaccount:kube-system:prometheus","iat":1799999990,"exp":1800086400}"#,
        )
    }

    #[test]
    fn a_valid_seed_is_written_with_its_chain_start_and_no_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path(), Credentials::SelfRenew);
        let token = valid_seed();
        let seeded = seed(&c, &mut format!("{token}\n").as_bytes(), now()).unwrap();
        assert_eq!(std::fs::read_to_string(&c.token_file).unwrap(), token);
        assert_eq!(
            seeded.expires_at,
            UNIX_EPOCH + Duration::from_secs(1_800_086_400)
        );
        assert_eq!(read_chain_start(&c.token_file).unwrap(), Some(now()));
        assert!(
            chain_file(&c.token_file)
                .to_string_lossy()
                .ends_with("prod.token.chain")
        );
    }

    #[test]
    fn bad_seeds_are_refused_with_a_reason_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path(), Credentials::SelfRenew);
        let other = jwt(r#"{"sub":"system:serviceaccount:default:default","exp":1800086400}"#);
        let expired =
            jwt(r#"{"sub":"system:serviceaccount:kube-system:prometheus","exp":1700000000}"#);
        let cases: [(&str, &str); 5] = [
            ("", "held no token"),
            ("not a token", "not a JWT"),
            (
                &other,
                "\"system:serviceaccount:default:default\", not for kube-system/prometheus",
            ),
            (&expired, "expired at 2023-11-14T22:13:20Z"),
            ("a.b.c", "claims cannot be read"),
        ];
        for (input, expected) in cases {
            let e = seed(&c, &mut input.as_bytes(), now()).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(expected), "{input:?}: {text}");
            if input.len() > 20 {
                assert!(!text.contains(input), "the token leaked into {text}");
            }
        }
        assert!(!c.token_file.exists());
        assert!(!chain_file(&c.token_file).exists());
        let huge = "a".repeat(MAX_TOKEN_LEN * 2);
        assert!(matches!(
            seed(&c, &mut huge.as_bytes(), now()),
            Err(SeedError::Token(TokenError::TooLong(_)))
        ));
        assert!(matches!(
            seed(&c, &mut &b"\xff\xfe.a.b"[..], now()),
            Err(SeedError::Token(TokenError::NotJwt))
        ));
    }

    #[test]
    fn only_self_renewing_clusters_are_seeded() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(
            dir.path(),
            Credentials::TokenFile(dir.path().join("issuer")),
        );
        let e = seed(&c, &mut valid_seed().as_bytes(), now()).unwrap_err();
        assert!(matches!(e, SeedError::NotSelfRenewing(_)), "{e}");
    }

    #[test]
    fn the_chain_is_refused_past_max_chain_age_with_the_reseed_command() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cluster(dir.path(), Credentials::SelfRenew);
        c.max_chain_age = Some(Duration::from_secs(86_400));
        seed(&c, &mut valid_seed().as_bytes(), now()).unwrap();
        assert!(check(&c, now() + Duration::from_secs(86_399)).is_ok());
        let e = check(&c, now() + Duration::from_secs(86_400)).unwrap_err();
        assert_eq!(e.metric_label(), "chain_too_old");
        let text = e.to_string();
        assert!(text.contains("max_chain_age (1d)"), "{text}");
        assert!(
            text.contains(
                "kubectl create token prometheus -n kube-system --duration 24h | mcprom seed prod"
            ),
            "{text}"
        );
        // Without a limit, age does not matter.
        c.max_chain_age = None;
        assert!(check(&c, now() + Duration::from_secs(10 * 86_400)).is_ok());
    }

    #[test]
    fn an_unrecorded_chain_counts_from_the_current_tokens_issue_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cluster(dir.path(), Credentials::SelfRenew);
        c.max_chain_age = Some(Duration::from_secs(100));
        std::fs::write(&c.token_file, valid_seed()).unwrap();
        // iat is 10 s before now().
        assert!(check(&c, now()).is_ok());
        assert_eq!(
            read_chain_start(&c.token_file).unwrap(),
            Some(now() - Duration::from_secs(10))
        );
        assert!(check(&c, now() + Duration::from_secs(90)).is_err());
        // A garbled chain file is an error, not a fresh start.
        std::fs::write(chain_file(&c.token_file), "{").unwrap();
        let e = check(&c, now()).unwrap_err();
        assert!(e.to_string().contains("re-seed"), "{e}");
    }

    #[test]
    fn a_broken_chain_says_why_and_how_to_reseed() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(dir.path(), Credentials::SelfRenew);
        std::fs::write(&c.token_file, valid_seed()).unwrap();
        let after = UNIX_EPOCH + Duration::from_secs(1_800_086_401);
        let e = broken(&c, "Unauthorized", after);
        assert_eq!(e.metric_label(), "chain_broken");
        let text = e.to_string();
        assert!(text.contains("expired at 2027-01-16T08:00:00Z"), "{text}");
        assert!(text.contains("| mcprom seed prod"), "{text}");
        let text = broken(&c, "Unauthorized", now()).to_string();
        assert!(text.contains("recreated"), "{text}");
    }
}
