//! A simulated month: the real `Rotator` (its schedule, backoff and
//! expiry logic) against a fake issuer that fails 10 % of calls at random
//! and has outages of up to a quarter of the token lifetime, on tokio's
//! paused clock. A fake sink records when each token was written and when
//! it expires.
//!
//! The claim checked: the file never held an expired token while the
//! issuer was reachable in that token's refresh window. A token may expire
//! only when an outage covered its whole refresh window (up to the last
//! 30 s, which the backoff cap of a quarter of the time left cannot always
//! use); after such an outage the file is renewed within 5 minutes.
//!
//! `MCPROM_MONTHS=N` runs N months per lifetime (`MCPROM_SEED` picks the
//! outage schedule; by default a fixed one, so CI sees the same month).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use mcprom::config::{ClusterSettings, Credentials, ServiceAccountRef};
use mcprom::issuer::{IssueError, Issuer, TokenSpec};
use mcprom::reload::ReloadRequest;
use mcprom::rotator::Rotator;
use mcprom::sink::{Sink, SinkError};
use mcprom::state::{ClusterStatus, State};
use mcprom::token::{IssuedToken, Token};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const DAY: Duration = Duration::from_secs(86_400);
/// Share of calls that fail at random.
const RANDOM_FAILURES: f64 = 0.10;
/// After an outage, an expired token is replaced within this.
const RENEWED_WITHIN: Duration = Duration::from_secs(300);
/// The fake issuer answers within this.
const MAX_LATENCY: Duration = Duration::from_millis(500);

/// The virtual world: the virtual wall clock and the outage schedule.
struct World {
    start: Instant,
    /// Virtual Unix time at `start` (ahead of the real clock, so the
    /// rotator's wall-clock view of expiry is never the binding one).
    t0: u64,
    lifetime: Duration,
    outages: Vec<(Duration, Duration)>,
    rng: Mutex<StdRng>,
    calls: AtomicU64,
    random_failures: AtomicU64,
    outage_failures: AtomicU64,
    /// Virtual time and outcome of every call.
    call_times: Mutex<Vec<(Duration, Duration, &'static str)>>,
    /// (written at, exp in virtual seconds since start)
    writes: Mutex<Vec<(Duration, Duration)>>,
}

impl World {
    fn now(&self) -> Duration {
        Instant::now() - self.start
    }

    fn reachable(&self, t: Duration) -> bool {
        !self.outages.iter().any(|(a, b)| *a <= t && t < *b)
    }

    /// A stretch in `[from, exp)` where the issuer was reachable long
    /// enough for `attempts` attempts even if the rotator waited as long as
    /// its backoff contract allows (a quarter of the time left, at least
    /// 1 s, plus the request's latency) before each.
    fn usable_stretch(
        &self,
        from: Duration,
        exp: Duration,
        attempts: usize,
    ) -> Option<(Duration, Duration)> {
        let mut starts = vec![from];
        starts.extend(
            self.outages
                .iter()
                .map(|o| o.1)
                .filter(|e| *e > from && *e < exp),
        );
        for a in starts {
            if !self.reachable(a) {
                continue;
            }
            let b = self
                .outages
                .iter()
                .map(|o| o.0)
                .filter(|s| *s > a)
                .min()
                .unwrap_or(exp)
                .min(exp);
            // The worst-case attempt times from a on.
            let mut t = a;
            let mut n = 0;
            while n < attempts {
                let wait = ((exp.saturating_sub(t)) / 4).max(Duration::from_secs(1));
                t += wait + MAX_LATENCY;
                if t > b {
                    break;
                }
                n += 1;
            }
            if n >= attempts {
                return Some((a, b));
            }
        }
        None
    }

    /// End of the outage(s) covering `t`.
    fn outage_end(&self, t: Duration) -> Duration {
        let mut end = t;
        while let Some((_, b)) = self.outages.iter().find(|(a, b)| *a <= end && end < *b) {
            end = *b;
        }
        end
    }
}

fn jwt(iat: u64, exp: u64) -> Token {
    let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    Token::new(format!(
        "{}.{}.{}",
        e(r#"{"alg":"ES256"}"#),
        e(&format!(
            r#"{{"sub":"system:serviceaccount:kube-system:prometheus-test","iat":{iat},"exp":{exp}}}"#
        )),
        e("sig")
    ))
    .unwrap()
}

struct FakeIssuer(Arc<World>);

impl Issuer for FakeIssuer {
    async fn issue(&self, _spec: &TokenSpec) -> Result<IssuedToken, IssueError> {
        let w = &self.0;
        let (latency, unlucky) = {
            let mut rng = w.rng.lock().unwrap();
            (
                Duration::from_millis(rng.random_range(20..MAX_LATENCY.as_millis() as u64)),
                rng.random_bool(RANDOM_FAILURES),
            )
        };
        w.calls.fetch_add(1, Ordering::SeqCst);
        let called = w.now();
        tokio::time::sleep(latency).await;
        let outcome = if !w.reachable(w.now()) {
            "outage"
        } else if unlucky {
            "random failure"
        } else {
            "ok"
        };
        w.call_times
            .lock()
            .unwrap()
            .push((called, w.now(), outcome));
        if outcome == "outage" {
            w.outage_failures.fetch_add(1, Ordering::SeqCst);
            return Err(IssueError::Unreachable("simulated outage".into()));
        }
        if unlucky {
            w.random_failures.fetch_add(1, Ordering::SeqCst);
            return Err(IssueError::Server {
                code: 503,
                message: "simulated random failure".into(),
            });
        }
        // Stamped at the next whole virtual second: the token lives at
        // least as long as the rotator believes.
        let iat = w.t0 + w.now().as_secs() + 1;
        let token = jwt(iat, iat + w.lifetime.as_secs());
        Ok(IssuedToken {
            claims: token.claims().unwrap(),
            token,
            lifetime: w.lifetime,
            warning: None,
            credential_expires_at: None,
        })
    }
}

struct RecordingSink(Arc<World>);

impl Sink for RecordingSink {
    async fn write(&self, token: &Token) -> Result<(), SinkError> {
        let exp = token.claims().unwrap().expires_at;
        let w = &self.0;
        w.writes
            .lock()
            .unwrap()
            .push((w.now(), Duration::from_secs(exp - w.t0)));
        Ok(())
    }

    fn current(&self) -> Option<Token> {
        None
    }
}

struct Reloads;

impl ReloadRequest for Reloads {
    fn request_reload(&self) {}
}

fn cluster(name: &str, lifetime: Duration, refresh_at: f64) -> Arc<ClusterSettings> {
    Arc::new(ClusterSettings {
        name: name.into(),
        api_server: None,
        ca_file: None,
        insecure_skip_tls_verify: false,
        service_account: ServiceAccountRef {
            namespace: "kube-system".into(),
            name: "prometheus-test".into(),
        },
        token_file: format!("/nonexistent/{name}.token").into(),
        kubeconfig_file: None,
        audiences: vec![],
        expiration: lifetime,
        refresh_at,
        file_mode: 0o640,
        file_group: None,
        credentials: Credentials::TokenFile("/nonexistent".into()),
        max_chain_age: None,
        verify: Default::default(),
    })
}

/// Outages as a Poisson process (mean gap `mean_gap`), each up to a
/// quarter of the lifetime.
fn outages(
    rng: &mut StdRng,
    span: Duration,
    lifetime: Duration,
    mean_gap: Duration,
) -> Vec<(Duration, Duration)> {
    let mut out = Vec::new();
    let mut t = Duration::ZERO;
    loop {
        let gap = -mean_gap.as_secs_f64() * (1.0 - rng.random::<f64>()).ln();
        t += Duration::from_secs_f64(gap);
        if t >= span {
            return out;
        }
        let length = (lifetime / 4).mul_f64(rng.random_range(0.05..=1.0));
        out.push((t, t + length));
    }
}

struct Figures {
    rotations: usize,
    calls: u64,
    random_failures: u64,
    outage_failures: u64,
    outages: usize,
    expiries: usize,
    expired_for: Duration,
    longest_stale_after_outage: Duration,
    max_calls_per_minute: usize,
}

/// Run one rotator for `days` on the paused clock and check the claim.
async fn month(name: &str, lifetime: Duration, refresh_at: f64, days: u32, seed: u64) -> Figures {
    let span = DAY * days;
    let mut rng = StdRng::seed_from_u64(seed);
    // About one outage per three lifetimes (at least one per 4 h).
    let mean_gap = (lifetime * 3).min(Duration::from_secs(4 * 3600));
    let outages = outages(&mut rng, span, lifetime, mean_gap);
    let real_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let world = Arc::new(World {
        start: Instant::now(),
        t0: real_now + 86_400,
        lifetime,
        outages,
        rng: Mutex::new(rng),
        calls: AtomicU64::new(0),
        random_failures: AtomicU64::new(0),
        outage_failures: AtomicU64::new(0),
        call_times: Mutex::new(Vec::new()),
        writes: Mutex::new(Vec::new()),
    });
    let state = Arc::new(State::default());
    state.insert(ClusterStatus::new(
        name,
        "kube-system/prometheus-test".into(),
        "/nonexistent".into(),
    ));
    let cancel = CancellationToken::new();
    let (_jumps, clock_jumps) = watch::channel(0);
    let rotator = Rotator {
        cluster: cluster(name, lifetime, refresh_at),
        issuer: FakeIssuer(world.clone()),
        sink: RecordingSink(world.clone()),
        reload: Reloads,
        state,
        limiter: Arc::new(Semaphore::new(1)),
        clock_jumps,
        wall: mcprom::clock::system(),
        commands: mcprom::rotator::RotateRequests::new(),
        cancel: cancel.clone(),
    };
    let task = tokio::spawn(rotator.run());
    tokio::time::sleep(span).await;
    cancel.cancel();
    task.await.unwrap();

    let writes = world.writes.lock().unwrap().clone();
    assert!(!writes.is_empty(), "{name}: no token written");
    let calls = world.call_times.lock().unwrap().clone();
    let mut expiries = 0;
    let mut expired_for = Duration::ZERO;
    let mut longest_stale = Duration::ZERO;
    let mut violations = Vec::new();
    let slack = MAX_LATENCY + Duration::from_millis(1);
    for (i, &(written, exp)) in writes.iter().enumerate() {
        let replaced = writes.get(i + 1).map_or(span, |w| w.0);
        let attempts: Vec<(Duration, Duration)> = calls
            .iter()
            .filter(|c| c.0 > written && c.0 < replaced)
            .map(|c| (c.0, c.1))
            .collect();
        let Some(&(first, _)) = attempts.first() else {
            continue; // the month ended first
        };
        // The refresh starts on schedule: refresh_at × lifetime after the
        // request was sent (before `written`), minus at most the jitter.
        let planned = lifetime.mul_f64(refresh_at);
        let jitter = (lifetime - planned)
            .mul_f64(0.1)
            .min(Duration::from_secs(60));
        let after = first - written;
        if after > planned + slack || after + jitter + slack < planned {
            violations.push(format!(
                "token written at {written:?}: first refresh attempt {after:?} later (planned {planned:?} − jitter ≤ {jitter:?})"
            ));
        }
        // While the token is valid the next attempt comes within a quarter
        // of the time left (at least 1 s); once expired, within 30 s.
        // The rotator sees the token expire up to a latency and a second
        // before exp (it counts from when the request was sent).
        let seen_expired = exp.saturating_sub(MAX_LATENCY + Duration::from_secs(1));
        for pair in attempts.windows(2) {
            let ((_, failed), (next, _)) = (pair[0], pair[1]);
            let cap = if failed < seen_expired {
                ((exp - failed) / 4).max(Duration::from_secs(1))
            } else {
                Duration::from_secs(30)
            };
            if next - failed > cap + Duration::from_millis(1) {
                violations.push(format!(
                    "token expiring at {exp:?}: the attempt that failed at {failed:?} was retried {:?} later, more than {cap:?}",
                    next - failed
                ));
            }
        }
        if replaced <= exp {
            continue;
        }
        // The file held an expired token during [exp, replaced): this
        // must be explained by outages. A reachable stretch in which the
        // backoff contract guarantees at least 6 attempts (each failing
        // at random with probability 0.1) would not explain it.
        expiries += 1;
        expired_for += replaced - exp;
        if let Some((a, b)) = world.usable_stretch(first, exp, 6) {
            violations.push(format!(
                "token written at {written:?} expired at {exp:?} (replaced {replaced:?}) although the issuer was reachable during [{a:?}, {b:?}); attempts {attempts:?}"
            ));
        }
        if replaced < span {
            let back = world.outage_end(exp).max(exp);
            let stale = replaced.saturating_sub(back);
            longest_stale = longest_stale.max(stale);
            assert!(
                stale <= RENEWED_WITHIN,
                "{name}: renewed {stale:?} after the outage ended (at {back:?})"
            );
        }
    }
    assert!(
        violations.is_empty(),
        "{name}: {} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
    let times = world.call_times.lock().unwrap().clone();
    let mut max_per_minute = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi].0 - times[lo].0 >= Duration::from_secs(60) {
            lo += 1;
        }
        max_per_minute = max_per_minute.max(hi - lo + 1);
    }
    Figures {
        rotations: writes.len(),
        calls: world.calls.load(Ordering::SeqCst),
        random_failures: world.random_failures.load(Ordering::SeqCst),
        outage_failures: world.outage_failures.load(Ordering::SeqCst),
        outages: world.outages.len(),
        expiries,
        expired_for,
        longest_stale_after_outage: longest_stale,
        max_calls_per_minute: max_per_minute,
    }
}

fn months() -> u32 {
    std::env::var("MCPROM_MONTHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn seed() -> u64 {
    std::env::var("MCPROM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_251_126)
}

async fn run(name: &str, lifetime: Duration, refresh_at: f64) {
    let days = 30 * months();
    let f = month(name, lifetime, refresh_at, days, seed()).await;
    eprintln!(
        "figures: month {name}: {days} days, lifetime {lifetime:?}, refresh_at {refresh_at}: {} rotations, {} issuer calls ({} random failures, {} during {} outages), max {} calls/min; {} expiries, all during outages covering the refresh window, {:?} expired in all, renewed at most {:?} after an outage ended",
        f.rotations,
        f.calls,
        f.random_failures,
        f.outage_failures,
        f.outages,
        f.max_calls_per_minute,
        f.expiries,
        f.expired_for,
        f.longest_stale_after_outage,
    );
    let expected = (days as f64 * 86_400.0 / (lifetime.as_secs_f64() * refresh_at)) as usize;
    assert!(
        f.rotations >= expected * 8 / 10,
        "refreshes kept pace: {} of about {expected}",
        f.rotations
    );
    assert!(
        f.random_failures > 0 && f.outage_failures > 0,
        "the faults happened"
    );
}

#[tokio::test(start_paused = true)]
async fn a_month_of_ten_minute_tokens_never_expires_while_the_issuer_is_reachable() {
    run("ten-minutes", Duration::from_secs(600), 0.8).await;
}

#[tokio::test(start_paused = true)]
async fn a_month_of_one_hour_tokens_never_expires_while_the_issuer_is_reachable() {
    run("one-hour", Duration::from_secs(3600), 0.8).await;
}

#[tokio::test(start_paused = true)]
async fn a_month_of_one_day_tokens_never_expires_while_the_issuer_is_reachable() {
    run("one-day", DAY, 0.8).await;
}

#[tokio::test(start_paused = true)]
async fn a_month_of_late_refreshes_never_expires_while_the_issuer_is_reachable() {
    // refresh_at 0.95 leaves a window of 5 % of the lifetime: outages of
    // up to a quarter lifetime cover it often, so expiries do happen.
    run("late", Duration::from_secs(3600), 0.95).await;
}
