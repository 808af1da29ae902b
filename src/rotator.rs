//! One cluster's rotation loop: adopt or request a token, write it, ask for
//! a reload, sleep until the refresh is due, and on failure keep the
//! current token and retry with backoff.
//!
//! Generic over its [`Issuer`], [`Sink`] and [`ReloadRequest`]: only the
//! wiring in `app` names the real ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use rand::Rng;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::clock::Wall;
use crate::config::{ClusterSettings, Credentials};
use crate::issuer::{IssueError, Issuer, Review, TokenSpec};
use crate::reload::ReloadRequest;
use crate::schedule;
use crate::sink::{Sink, SinkError};
use crate::state::{Phase, State};
use crate::token::{Claims, IssuedToken};

/// The outcome of a refresh asked for from outside the loop.
pub type RotateReply = oneshot::Sender<Result<(), String>>;

/// "Refresh now" requests for one cluster, from the control socket.
///
/// A mutex-guarded list and a `Notify` rather than a channel: every
/// configured cluster has one, and a channel's buffers cost several hundred
/// bytes per cluster at 10,000 clusters for something that is used by hand.
/// Requests that arrive together are answered by the same refresh.
#[derive(Debug)]
pub struct RotateRequests {
    /// `None` once the rotator has stopped.
    pending: std::sync::Mutex<Option<Vec<RotateReply>>>,
    /// Wakes the rotator: a refresh request, or a review request.
    wake: Notify,
    /// "Review the token in use now" (Prometheus saw a 401/403). A flag
    /// beside `wake` rather than a second `Notify`: every idle rotator
    /// waits on each of its `Notify`s, and each wait is ~70 bytes in its
    /// task, at 10,000 clusters.
    review: AtomicBool,
}

impl RotateRequests {
    /// An open request list.
    pub fn new() -> Arc<Self> {
        Arc::new(RotateRequests {
            pending: std::sync::Mutex::new(Some(Vec::new())),
            wake: Notify::new(),
            review: AtomicBool::new(false),
        })
    }

    /// Ask for a review of the token in use now (when `verify` is on).
    pub fn request_review(&self) {
        self.review.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Ask for a refresh. `None` when the cluster's rotation has stopped.
    pub fn request(&self) -> Option<oneshot::Receiver<Result<(), String>>> {
        let (tx, rx) = oneshot::channel();
        self.lock().as_mut()?.push(tx);
        self.wake.notify_one();
        Some(rx)
    }

    fn take(&self) -> Vec<RotateReply> {
        self.lock().as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Refuse further requests and drop the waiting ones (their receivers
    /// see the rotation stopped).
    fn close(&self) {
        self.lock().take();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<RotateReply>>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Closes the request list when the rotator stops, however it stops.
struct CloseOnDrop(Arc<RotateRequests>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The issuer failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The token could not be written.
    #[error("writing the token file failed: {0}")]
    Write(#[from] SinkError),
}

impl AttemptError {
    /// The `reason` label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            AttemptError::Issue(e) => e.metric_label(),
            AttemptError::Write(_) => "write_failed",
        }
    }
}

/// What the loop knows about the token in the file.
#[derive(Debug, Clone, Copy)]
struct Held {
    expires_at: SystemTime,
    /// `request sent + granted lifetime` on the monotonic clock, for tokens
    /// this loop obtained (not for adopted ones).
    valid_until: Option<Instant>,
}

impl Held {
    /// Time left before the token expires, `None` once it has: the earlier
    /// of the wall-clock view (`exp − now`) and the monotonic one (`sent +
    /// lifetime − now`). The monotonic view is immune to a skewed local
    /// clock and is what paused-clock tests control.
    fn time_left(&self, wall_now: SystemTime) -> Option<Duration> {
        let wall = self.expires_at.duration_since(wall_now).ok();
        let mono = match self.valid_until {
            Some(until) => until.checked_duration_since(Instant::now()),
            None => return wall,
        };
        wall.zip(mono)
            .map(|(w, m)| w.min(m))
            .filter(|d| !d.is_zero())
    }
}

/// A planned attempt, on both clocks: the monotonic one decides, the wall
/// clock catches suspend/resume (the monotonic clock stops during suspend).
#[derive(Debug, Clone, Copy)]
struct Plan {
    at: Instant,
    at_wall: SystemTime,
}

impl Plan {
    fn in_(delay: Duration, wall_now: SystemTime) -> Plan {
        Plan {
            at: Instant::now() + delay,
            at_wall: wall_now + delay,
        }
    }

    fn from(sent: Instant, sent_wall: SystemTime, delay: Duration) -> Plan {
        Plan {
            at: sent + delay,
            at_wall: sent_wall + delay,
        }
    }
}

/// What one rotation loop carries from one round to the next.
struct Progress {
    /// The token in the file, as far as the loop knows it.
    held: Option<Held>,
    /// When the token in use is next reviewed (a SelfSubjectReview made
    /// with it); `None`: not planned.
    check: Option<Instant>,
    /// The next attempt.
    plan: Plan,
    /// Failed attempts in a row.
    attempt: u32,
    unsupported_logged: bool,
    shortened_logged: bool,
    expired_reported: bool,
    /// Until when the API server asked not to be asked (429 with
    /// Retry-After): `rotate` from outside waits for it too.
    server_wait: Option<Instant>,
}

/// A cluster whose next request (refresh or review) is further away than
/// this lets go of its TLS configurations and sessions, ~4 KB (see
/// `apiserver::tls`): resuming saves under 1 ms of CPU per request, not
/// worth the memory of 10,000 clusters between refreshes 48 minutes apart
/// (1 h tokens, the default). Nearer than this they are kept: the shortest
/// token a real API server issues (10 min) is refreshed within it.
pub const KEEP_TLS_WITHIN: Duration = Duration::from_secs(10 * 60);

/// One cluster's rotation loop and what it needs.
pub struct Rotator<I, S, R> {
    /// The cluster.
    pub cluster: Arc<ClusterSettings>,
    /// Mints tokens.
    pub issuer: I,
    /// Stores tokens.
    pub sink: S,
    /// Told after each new token is stored.
    pub reload: R,
    /// Shared status.
    pub state: Arc<State>,
    /// Global limit on TokenRequests in flight.
    pub limiter: Arc<Semaphore>,
    /// Bumped when the wall clock jumped relative to the monotonic clock.
    pub clock_jumps: watch::Receiver<u64>,
    /// Requests from the control socket.
    pub commands: Arc<RotateRequests>,
    /// Stops the loop (in-flight writes still finish).
    pub cancel: CancellationToken,
    /// The wall clock ([`crate::clock::system`] but in tests).
    pub wall: Wall,
}

impl<I: Issuer, S: Sink, R: ReloadRequest> Rotator<I, S, R> {
    /// Run until cancelled. Not an `async fn`: its future would hold a
    /// second copy of the rotator beside the inner loop's, in every idle
    /// cluster's task.
    pub fn run(self) -> impl Future<Output = ()> {
        let span = info_span!("cluster", cluster = %self.cluster.name);
        self.run_inner().instrument(span)
    }

    async fn run_inner(mut self) {
        let _close = CloseOnDrop(self.commands.clone());
        // Jitter draws come from the thread's generator: a generator per
        // cluster would add ~320 bytes to every idle rotator.
        let mut held = None;
        // An adopted token's first review is spread over one interval, so
        // 10,000 clusters do not ask at once.
        let mut check: Option<Instant> = None;
        let plan = match self.adopt(rand::rng().random()) {
            Some((h, plan)) => {
                held = Some(h);
                if self.cluster.verify.enabled {
                    check = Some(
                        Instant::now()
                            + self
                                .cluster
                                .verify
                                .interval
                                .mul_f64(rand::rng().random::<f64>()),
                    );
                }
                plan
            }
            None => Plan::in_(Duration::ZERO, self.wall.now()),
        };
        let mut p = Progress {
            held,
            check,
            plan,
            attempt: 0,
            unsupported_logged: false,
            shortened_logged: false,
            expired_reported: false,
            server_wait: None,
        };
        let name = self.cluster.name.clone();

        loop {
            self.state
                .update(&name, |s| s.next_refresh = Some(p.plan.at_wall));
            let mut reply = Vec::new();
            // One timer for the review and the refresh, whichever is first:
            // each timer is ~100 bytes in every idle rotator's task.
            let wake_at = p.check.map_or(p.plan.at, |at| at.min(p.plan.at));
            let check_first = wake_at < p.plan.at;
            if wake_at.saturating_duration_since(Instant::now()) > KEEP_TLS_WITHIN {
                self.issuer.rest();
            }
            tokio::select! {
                () = self.cancel.cancelled() => break,
                () = tokio::time::sleep_until(wake_at) => {
                    if check_first {
                        p.check = None;
                        // Boxed: an idle rotator carries no review's state.
                        if !Box::pin(self.review_in_use(&mut p)).await {
                            break;
                        }
                        continue;
                    }
                }
                Ok(()) = self.clock_jumps.changed() => {
                    if self.wall.now() < p.plan.at_wall {
                        continue;
                    }
                    info!("the wall clock passed the planned refresh (suspend or clock jump): refreshing now");
                }
                () = self.commands.wake.notified() => {
                    // A consumer saw its scrapes refused: review now (at
                    // most once per consumer read, every few minutes).
                    if self.commands.review.swap(false, Ordering::SeqCst)
                        && self.cluster.verify.enabled
                    {
                        p.check = Some(Instant::now());
                    }
                    reply = self.commands.take();
                    if reply.is_empty() {
                        continue; // a review, or a wake-up left over from requests already answered
                    }
                    if let Some(until) = p.server_wait.filter(|u| *u > Instant::now()) {
                        refuse_inside_retry_after(reply, until);
                        continue;
                    }
                }
            }

            // Wait for a request slot before building the request: at start-up
            // thousands of rotators queue here, and each should cost only
            // its own small state while it waits.
            let permit = tokio::select! {
                () = self.cancel.cancelled() => break,
                permit = self.limiter.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break, // the limiter was closed: shutting down
                },
            };
            // Boxed: the request future is large (kube client, TLS); an idle
            // rotator, which is most of them most of the time, should not
            // carry its space in its own state.
            let Some(outcome) = Box::pin(self.attempt(permit)).await else {
                break; // cancelled while waiting or requesting
            };
            // Requests that arrived while this one was in flight share its
            // outcome: any number of `rotate`s make one TokenRequest.
            reply.extend(self.commands.take());
            match outcome {
                Ok((issued, sent, sent_wall, review)) => {
                    self.succeeded(&mut p, issued, (sent, sent_wall), review, reply);
                }
                Err(error) => self.failed(&mut p, &error, reply),
            }
        }
        debug!("rotator stopped");
    }

    /// The scheduled (or requested) review of the token in use, and what
    /// follows from it. `false`: cancelled.
    async fn review_in_use(&mut self, p: &mut Progress) -> bool {
        match self.check_token().await {
            None => return false,
            Some(CheckOutcome::Keep(next)) => {
                p.check = next.map(|d| Instant::now() + d);
                if next.is_none() && !p.unsupported_logged {
                    p.unsupported_logged = true;
                    info!(
                        "the API server has no SelfSubjectReview (Kubernetes before 1.28): tokens are not verified"
                    );
                }
            }
            Some(CheckOutcome::Rejected) => {
                // Re-mint now, outside the backoff meant for an
                // unreachable server. Bounded: a review runs at most once
                // per verify_interval (≥ 10 s), and a re-mint the server
                // rejects again goes through the ordinary backoff.
                if p.plan.at > Instant::now() {
                    p.plan = Plan::in_(Duration::ZERO, self.wall.now());
                }
                p.attempt = 0;
            }
        }
        true
    }

    /// After a new token was written: plan its refresh and its next
    /// review, update the status, ask for a reload, answer `reply`.
    fn succeeded(
        &self,
        p: &mut Progress,
        issued: IssuedToken,
        (sent, sent_wall): (Instant, SystemTime),
        review: Option<Review>,
        reply: Vec<RotateReply>,
    ) {
        p.attempt = 0;
        p.server_wait = None;
        let verified = review == Some(Review::Confirmed);
        p.check = match review {
            Some(Review::Unsupported) | None => None,
            Some(_) => Some(Instant::now() + jittered(self.cluster.verify.interval)),
        };
        if review == Some(Review::Unsupported) && !p.unsupported_logged {
            p.unsupported_logged = true;
            info!(
                "the API server has no SelfSubjectReview (Kubernetes before 1.28): new tokens are written unverified"
            );
        }
        p.expired_reported = false;
        let requested = self.cluster.expiration;
        if schedule::is_shortened(requested, issued.lifetime) && !p.shortened_logged {
            p.shortened_logged = true;
            warn!(
                requested = ?requested,
                granted = ?issued.lifetime,
                server_warning = issued.warning.as_deref().unwrap_or(""),
                "the API server granted a shorter lifetime than requested (its --service-account-max-token-expiration); refreshing on the granted lifetime"
            );
        }
        let delay = schedule::refresh_after(
            issued.lifetime,
            self.cluster.refresh_at,
            rand::rng().random(),
        );
        p.plan = Plan::from(sent, sent_wall, delay);
        let expires_at = issued.claims.expiry();
        p.held = Some(Held {
            expires_at,
            valid_until: Some(sent + issued.lifetime),
        });
        let now = self.wall.now();
        self.state.update(&self.cluster.name, |s| {
            s.state = Phase::Fresh;
            s.expires_at = Some(expires_at);
            s.issued_at = issued.claims.issued_at.map(unix);
            s.last_refresh = Some(now);
            s.next_refresh = Some(p.plan.at_wall);
            s.last_error = None;
            s.settled = true;
            s.refreshes += 1;
            s.credential_expires_at = issued.credential_expires_at;
            s.rejected_since = None;
            s.verified_at = verified.then_some(now);
        });
        info!(
            service_account = %self.cluster.service_account,
            expires_in = ?Duration::from_secs(expires_at.duration_since(now).unwrap_or_default().as_secs()),
            next_refresh_in = ?Duration::from_secs(delay.as_secs()),
            "token refreshed"
        );
        self.reload.request_reload();
        for tx in reply {
            let _ = tx.send(Ok(()));
        }
    }

    /// After a failed attempt: keep the token, back off, report (the status,
    /// the metric's reason, one log line), answer `reply` with the reason.
    fn failed(&self, p: &mut Progress, error: &AttemptError, reply: Vec<RotateReply>) {
        let time_left = p.held.and_then(|h| h.time_left(self.wall.now()));
        let delay = schedule::backoff(
            p.attempt,
            time_left,
            retry_after(error),
            rand::rng().random(),
        );
        p.attempt = p.attempt.saturating_add(1);
        p.plan = Plan::in_(delay, self.wall.now());
        // The planned retry is the first moment the server allowed.
        p.server_wait = retry_after(error).map(|_| p.plan.at);
        let phase = match (error, time_left) {
            (_, Some(_)) => Phase::Backoff,
            (AttemptError::Issue(IssueError::Config(_)), None) => Phase::Error,
            (_, None) => Phase::Expired,
        };
        let label = error.metric_label();
        // The one choke point before the log, status and the
        // control socket: whatever the error quotes is shown safely.
        let message = crate::outside::text(&error.to_string());
        self.state.update(&self.cluster.name, |s| {
            s.state = phase;
            s.last_error = Some(message.clone());
            s.next_refresh = Some(p.plan.at_wall);
            s.settled = true;
            *s.errors.entry(label).or_default() += 1;
        });
        match (p.held, time_left) {
            (Some(h), None) if !p.expired_reported => {
                p.expired_reported = true;
                error!(
                    service_account = %self.cluster.service_account,
                    expired_at = %crate::text::rfc3339(h.expires_at),
                    error = %message,
                    "the token expired before a refresh succeeded: Prometheus cannot scrape this cluster until one does; retrying"
                );
            }
            _ => warn!(
                service_account = %self.cluster.service_account,
                reason = label,
                error = %message,
                expires_in = %time_left.map_or_else(|| "expired".to_owned(), |d| format!("{:?}", Duration::from_secs(d.as_secs()))),
                retry_in = ?Duration::from_millis(delay.as_millis() as u64),
                "token refresh failed; keeping the current token"
            ),
        }
        for tx in reply {
            let _ = tx.send(Err(message.clone()));
        }
    }

    /// Adopt the token on disk if it is for this ServiceAccount and audiences
    /// and has more than `(1 − refresh_at)` of its lifetime left.
    fn adopt(&self, draw: f64) -> Option<(Held, Plan)> {
        let token = self.sink.current()?;
        let claims = token.claims().ok()?;
        let cluster = &self.cluster;
        if !matches!(cluster.credentials, Credentials::SelfRenew) {
            if claims.subject.as_deref() != Some(cluster.service_account.subject().as_str()) {
                info!("the token on disk is for another ServiceAccount: replacing it");
                return None;
            }
            if !audiences_match(&cluster.audiences, &claims) {
                info!("the token on disk has other audiences: replacing it");
                return None;
            }
        }
        let lifetime = claims.lifetime()?;
        let now = self.wall.now();
        let issued = unix(claims.issued_at?);
        let age = now.duration_since(issued).unwrap_or_default();
        let delay = schedule::adopt(lifetime, age, cluster.refresh_at, draw)?;
        let expires_at = claims.expiry();
        self.state.update(&cluster.name, |s| {
            s.state = Phase::Fresh;
            s.expires_at = Some(expires_at);
            s.issued_at = Some(issued);
            s.settled = true;
        });
        info!(
            service_account = %cluster.service_account,
            expires_in = ?Duration::from_secs(expires_at.duration_since(now).unwrap_or_default().as_secs()),
            next_refresh_in = ?Duration::from_secs(delay.as_secs()),
            "adopted the valid token already on disk"
        );
        Some((
            Held {
                expires_at,
                valid_until: None,
            },
            Plan::in_(delay, now),
        ))
    }

    /// One TokenRequest and write. `None` when cancelled before the write
    /// started; a write that has started always finishes.
    async fn attempt(
        &mut self,
        permit: OwnedSemaphorePermit,
    ) -> Option<Result<(IssuedToken, Instant, SystemTime, Option<Review>), AttemptError>> {
        let spec = TokenSpec {
            expiration: self.cluster.expiration,
            audiences: self.cluster.audiences.clone(),
        };
        self.state
            .update(&self.cluster.name, |s| s.state = Phase::Refreshing);
        let sent = Instant::now();
        let sent_wall = self.wall.now();
        let issued = tokio::select! {
            () = self.cancel.cancelled() => return None,
            issued = self.issuer.issue(&spec) => issued,
        };
        let issued = match issued {
            Ok(issued) => issued,
            Err(e) => return Some(Err(e.into())),
        };
        if let Some(refused) = refuse(&self.cluster, &issued, self.wall.now()) {
            return Some(Err(refused.into()));
        }
        let review = if self.cluster.verify.enabled {
            let verdict = tokio::select! {
                () = self.cancel.cancelled() => return None,
                verdict = self.issuer.verify(&issued) => verdict,
            };
            match verdict {
                Ok(review) => Some(review),
                // Not written: the old token stays.
                Err(e @ IssueError::Rejected(_)) => return Some(Err(e.into())),
                // The token was issued a moment ago; a review that could not
                // be made (network, 5xx) is no reason to keep an older one.
                Err(e) => {
                    warn!(error = %e, "could not verify the new token with the API server; writing it anyway");
                    Some(Review::Authenticated)
                }
            }
        } else {
            None
        };
        drop(permit);
        if let Err(e) = self.sink.write(&issued.token).await {
            return Some(Err(e.into()));
        }
        Some(Ok((issued, sent, sent_wall, review)))
    }

    /// Review the token in the file with the API server. `None` when
    /// cancelled; otherwise whether to keep it (and when to check next:
    /// `None` when the server cannot be asked) or to re-mint now.
    async fn check_token(&mut self) -> Option<CheckOutcome> {
        let next = Some(jittered(self.cluster.verify.interval));
        // An expired token is the refresh schedule's business, not an
        // early death: only a token still within its lifetime is reviewed.
        let Some(token) = self
            .sink
            .current()
            .filter(|t| t.claims().is_ok_and(|c| c.expiry() > self.wall.now()))
        else {
            return Some(CheckOutcome::Keep(next));
        };
        let permit = tokio::select! {
            () = self.cancel.cancelled() => return None,
            permit = self.limiter.clone().acquire_owned() => permit.ok()?,
        };
        let verdict = tokio::select! {
            () = self.cancel.cancelled() => return None,
            verdict = self.issuer.review(&token) => verdict,
        };
        drop(permit);
        let name = &self.cluster.name;
        match verdict {
            Ok(Review::Confirmed) => {
                let now = self.wall.now();
                self.state.update(name, |s| s.verified_at = Some(now));
                Some(CheckOutcome::Keep(next))
            }
            Ok(Review::Authenticated) => Some(CheckOutcome::Keep(next)),
            Ok(Review::Unsupported) => Some(CheckOutcome::Keep(None)),
            Err(IssueError::Rejected(why)) => {
                let now = self.wall.now();
                let expires_in = token
                    .claims()
                    .ok()
                    .and_then(|c| c.expiry().duration_since(now).ok())
                    .map(|d| Duration::from_secs(d.as_secs()));
                warn!(
                    service_account = %self.cluster.service_account,
                    expires_in = ?expires_in,
                    error = %why,
                    "the API server no longer accepts the current token before its expiry (ServiceAccount deleted or recreated, signing key rotated?): re-minting now"
                );
                let message = format!("the current token was rejected before its expiry: {why}");
                self.state.update(name, |s| {
                    s.rejections += 1;
                    s.rejected_since.get_or_insert(now);
                    s.last_error = Some(message);
                });
                Some(CheckOutcome::Rejected)
            }
            Err(e) => {
                debug!(error = %e, "could not review the current token; trying again later");
                Some(CheckOutcome::Keep(next))
            }
        }
    }
}

/// What a review of the token in use decided.
enum CheckOutcome {
    /// Keep it; review again after this long (`None`: not again).
    Keep(Option<Duration>),
    /// The API server rejects it: re-mint now.
    Rejected,
}

/// `interval` ± 10 %, so reviews that started together drift apart.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + 0.2 * rand::rng().random::<f64>())
}

/// Why a token the server issued must not be written, if it must not: it
/// is for another ServiceAccount than the configured one (a misrouted or
/// hostile answer), or it has already expired by this host's clock.
fn refuse(cluster: &ClusterSettings, issued: &IssuedToken, now: SystemTime) -> Option<IssueError> {
    let claims = &issued.claims;
    if !matches!(cluster.credentials, Credentials::SelfRenew) {
        let want = cluster.service_account.subject();
        if claims.subject.as_deref() != Some(want.as_str()) {
            return Some(IssueError::Server {
                code: 0,
                message: format!(
                    "the API server issued a token for {:?}, not for the configured {want:?}: \
                     not written (is api_server the right cluster?)",
                    claims.subject.as_deref().unwrap_or("no subject")
                ),
            });
        }
    }
    if claims.expiry() <= now {
        return Some(IssueError::Server {
            code: 0,
            message: format!(
                "the API server issued a token that expired at {} by this host's clock: not \
                 written (compare the clocks of this host and the API server: timedatectl)",
                crate::text::rfc3339(claims.expiry())
            ),
        });
    }
    None
}

/// Answer `rotate` requests that came inside the server's Retry-After
/// window: no TokenRequest is sent before it ends.
fn refuse_inside_retry_after(reply: Vec<RotateReply>, until: Instant) {
    let left = until.saturating_duration_since(Instant::now());
    let message = format!(
        "no TokenRequest sent: the API server asked mcprom to wait (429 with Retry-After); \
         the next attempt is in {}s, on its own",
        left.as_secs().max(1)
    );
    debug!(retry_in = ?left, "rotate request inside the server's Retry-After window: not sent");
    for tx in reply {
        let _ = tx.send(Err(message.clone()));
    }
}

fn retry_after(error: &AttemptError) -> Option<Duration> {
    match error {
        AttemptError::Issue(e) => e.retry_after(),
        AttemptError::Write(_) => None,
    }
}

fn audiences_match(configured: &[String], claims: &Claims) -> bool {
    if configured.is_empty() {
        return true; // the server's default audiences, whatever they are
    }
    let mut want: Vec<&str> = configured.iter().map(String::as_str).collect();
    let mut have: Vec<&str> = claims.audiences.iter().map(String::as_str).collect();
    want.sort_unstable();
    have.sort_unstable();
    want.dedup();
    have.dedup();
    want == have
}

fn unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Watch for wall-clock jumps against the monotonic clock once a minute and
/// bump `jumps` when one happens (suspend/resume, a stepped clock). One task
/// for all clusters: idle rotators are not woken otherwise.
pub async fn watch_clock(
    jumps: watch::Sender<u64>,
    period: Duration,
    clock: Wall,
    cancel: CancellationToken,
) {
    let tolerance = Duration::from_secs(5);
    let mut mono = Instant::now();
    let mut wall = clock.now();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let (mono_now, wall_now) = (Instant::now(), clock.now());
        let mono_elapsed = mono_now - mono;
        let jumped = match wall_now.duration_since(wall) {
            Ok(wall_elapsed) => {
                wall_elapsed > mono_elapsed + tolerance || mono_elapsed > wall_elapsed + tolerance
            }
            Err(_) => true,
        };
        if jumped {
            info!(
                "the wall clock jumped relative to the monotonic clock: re-checking every schedule"
            );
            jumps.send_modify(|n| *n = n.wrapping_add(1));
        }
        (mono, wall) = (mono_now, wall_now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Credentials, ServiceAccountRef};
    use crate::reload::ReloadQueue;
    use crate::state::ClusterStatus;
    use crate::token::Token;
    use base64::Engine as _;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn jwt(iat: u64, exp: u64) -> Token {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        Token::new(format!(
            "{}.{}.{}",
            e("{}"),
            e(&format!(
                r#"{{"sub":"system:serviceaccount:kube-system:prom","iat":{iat},"exp":{exp}}}"#
            )),
            e("sig")
        ))
        .unwrap()
    }

    fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// Issues tokens stamped with the real clock (paused tokio time does not
    /// move it), failing the calls listed in `fail`.
    struct FakeIssuer {
        calls: Arc<AtomicUsize>,
        lifetime: u64,
        fail: Vec<usize>,
        /// While set, the "API server" rejects every token it is shown.
        rejecting: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Issuer for FakeIssuer {
        async fn review(&self, _token: &Token) -> Result<Review, IssueError> {
            if self.rejecting.load(Ordering::SeqCst) {
                Err(IssueError::Rejected("401 Unauthorized".into()))
            } else {
                Ok(Review::Confirmed)
            }
        }

        async fn issue(&self, _spec: &TokenSpec) -> Result<IssuedToken, IssueError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail.contains(&n) {
                return Err(IssueError::Server {
                    code: 503,
                    message: "injected".into(),
                });
            }
            let now = now_secs();
            let token = jwt(now, now + self.lifetime);
            Ok(IssuedToken {
                claims: token.claims().unwrap(),
                token,
                lifetime: Duration::from_secs(self.lifetime),
                warning: None,
                credential_expires_at: None,
            })
        }
    }

    #[derive(Clone, Default)]
    struct MemorySink(Arc<Mutex<Vec<Token>>>);

    impl Sink for MemorySink {
        async fn write(&self, token: &Token) -> Result<(), SinkError> {
            self.0.lock().unwrap().push(token.clone());
            Ok(())
        }
        fn current(&self) -> Option<Token> {
            self.0.lock().unwrap().last().cloned()
        }
    }

    fn cluster() -> Arc<ClusterSettings> {
        Arc::new(ClusterSettings {
            name: "c1".into(),
            api_server: None,
            ca_file: None,
            insecure_skip_tls_verify: false,
            service_account: ServiceAccountRef {
                namespace: "kube-system".into(),
                name: "prom".into(),
            },
            token_file: "/nonexistent/c1.token".into(),
            kubeconfig_file: None,
            audiences: vec![],
            expiration: Duration::from_secs(3600),
            refresh_at: 0.8,
            file_mode: 0o640,
            file_group: None,
            credentials: Credentials::TokenFile("/nonexistent".into()),
            max_chain_age: None,
            verify: crate::config::Verify {
                enabled: true,
                interval: Duration::from_secs(600),
            },
        })
    }

    struct Harness {
        calls: Arc<AtomicUsize>,
        rejecting: Arc<std::sync::atomic::AtomicBool>,
        sink: MemorySink,
        queue: ReloadQueue,
        cancel: CancellationToken,
        handle: tokio::task::JoinHandle<()>,
        state: Arc<State>,
        commands: Arc<RotateRequests>,
        jumps: Option<watch::Sender<u64>>,
    }

    fn start(fail: Vec<usize>, sink: MemorySink) -> Harness {
        start_with(fail, sink, crate::clock::system())
    }

    fn start_with(fail: Vec<usize>, sink: MemorySink, wall: Wall) -> Harness {
        start_as(fail, sink, wall, |rotator| tokio::spawn(rotator.run()))
    }

    type TestRotator = Rotator<FakeIssuer, MemorySink, ReloadQueue>;

    fn start_as(
        fail: Vec<usize>,
        sink: MemorySink,
        wall: Wall,
        spawn: impl FnOnce(TestRotator) -> tokio::task::JoinHandle<()>,
    ) -> Harness {
        let calls = Arc::new(AtomicUsize::new(0));
        let rejecting = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let state = Arc::new(State::default());
        state.insert(ClusterStatus::new(
            "c1",
            "kube-system/prom".into(),
            "/x".into(),
        ));
        let queue = ReloadQueue::new();
        let cancel = CancellationToken::new();
        let (jumps, clock_jumps) = watch::channel(0);
        let commands = RotateRequests::new();
        let rotator = Rotator {
            cluster: cluster(),
            issuer: FakeIssuer {
                calls: calls.clone(),
                lifetime: 3600,
                fail,
                rejecting: rejecting.clone(),
            },
            sink: sink.clone(),
            reload: queue.clone(),
            state: state.clone(),
            limiter: Arc::new(Semaphore::new(1)),
            clock_jumps,
            commands: commands.clone(),
            cancel: cancel.clone(),
            wall,
        };
        Harness {
            calls,
            rejecting,
            sink,
            queue,
            cancel,
            handle: spawn(rotator),
            state,
            commands,
            jumps: Some(jumps),
        }
    }

    /// A wall clock that runs with tokio's (paused) clock from the real time
    /// at its creation, and that a test steps forward as a suspend would.
    struct SteppedClock {
        base: SystemTime,
        start: Instant,
        steps: Mutex<Duration>,
    }

    impl SteppedClock {
        fn new() -> Arc<Self> {
            Arc::new(SteppedClock {
                base: SystemTime::now(),
                start: Instant::now(),
                steps: Mutex::new(Duration::ZERO),
            })
        }

        fn step(&self, by: Duration) {
            *self.steps.lock().unwrap() += by;
        }
    }

    impl crate::clock::WallClock for SteppedClock {
        fn now(&self) -> SystemTime {
            self.base + self.start.elapsed() + *self.steps.lock().unwrap()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_jump_past_the_planned_refresh_refreshes_at_once() {
        let clock = SteppedClock::new();
        let mut h = start_with(vec![], MemorySink::default(), clock.clone());
        tokio::spawn(watch_clock(
            h.jumps.take().unwrap(),
            Duration::from_secs(60),
            clock.clone(),
            h.cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(h.calls.load(Ordering::SeqCst), 1);
        // Suspended for 10 minutes: the wall clock moved, tokio's did not.
        // The refresh (46 to 48 minutes after the request) is still ahead.
        clock.step(Duration::from_secs(10 * 60));
        tokio::time::sleep(Duration::from_secs(2 * 60)).await;
        assert_eq!(h.calls.load(Ordering::SeqCst), 1, "the refresh is ahead");
        // 40 more minutes: on the wall clock the refresh is past (about 53
        // minutes after the request), on tokio's clock 3 minutes have gone.
        clock.step(Duration::from_secs(40 * 60));
        tokio::time::sleep(Duration::from_secs(2 * 60)).await;
        assert_eq!(
            h.calls.load(Ordering::SeqCst),
            2,
            "refreshed once the jump was seen"
        );
        h.cancel.cancel();
        h.handle.await.unwrap();
    }

    /// Every configured cluster has a rotator task, idle most of the time:
    /// its size is most of the daemon's memory per cluster at 10,000
    /// clusters (docs/benchmarks.md). One timer and one `Notify` for all it
    /// waits for took it from 1,064 to 880 bytes with these test types; a
    /// second timer, `Notify` or a copy of the rotator would cross the bound.
    #[tokio::test]
    async fn an_idle_rotator_stays_small() {
        let mut size = 0;
        let h = start_as(
            vec![],
            MemorySink::default(),
            crate::clock::system(),
            |rotator| {
                let run = rotator.run();
                size = std::mem::size_of_val(&run);
                tokio::spawn(run)
            },
        );
        h.cancel.cancel();
        assert!(size <= 900, "an idle rotator's future is {size} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn rotate_now_refreshes_once_for_requests_that_arrive_together() {
        let h = start(vec![2], MemorySink::default());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(h.calls.load(Ordering::SeqCst), 1);
        let first = h.commands.request().expect("running");
        let second = h.commands.request().expect("running");
        assert_eq!(first.await.unwrap(), Ok(()));
        assert_eq!(second.await.unwrap(), Ok(()));
        assert_eq!(h.calls.load(Ordering::SeqCst), 2, "one refresh for both");
        // The next one fails (call index 2), and says why.
        let failed = h.commands.request().expect("running").await.unwrap();
        assert!(failed.unwrap_err().contains("503"));
        h.cancel.cancel();
        h.handle.await.unwrap();
        assert!(
            h.commands.request().is_none(),
            "a stopped rotator takes no requests"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_at_about_eighty_percent_of_the_lifetime() {
        let h = start(vec![], MemorySink::default());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(h.calls.load(Ordering::SeqCst), 1);
        assert_eq!(h.queue.generation(), 1);
        // 48 min minus at most 60 s of jitter: not yet at 46 min, done by 48.
        tokio::time::sleep(Duration::from_secs(46 * 60)).await;
        assert_eq!(h.calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(2 * 60 + 1)).await;
        assert_eq!(h.calls.load(Ordering::SeqCst), 2);
        assert_eq!(h.sink.0.lock().unwrap().len(), 2);
        h.cancel.cancel();
        h.handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn failures_keep_the_token_and_retry_with_backoff() {
        let h = start(vec![1, 2, 3], MemorySink::default());
        tokio::time::sleep(Duration::from_secs(49 * 60)).await;
        // Call 0 succeeded, call 1 (the refresh) failed; retries follow within seconds.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(
            h.calls.load(Ordering::SeqCst) >= 5,
            "{}",
            h.calls.load(Ordering::SeqCst)
        );
        let written = h.sink.0.lock().unwrap().len();
        assert_eq!(written, 2, "one write per success, none per failure");
        let status = h.state.clusters().remove(0);
        assert_eq!(status.state, Phase::Fresh);
        assert_eq!(status.errors.get("server_error"), Some(&3));
        h.cancel.cancel();
        h.handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_rejected_before_its_expiry_is_re_minted_without_waiting_for_the_schedule() {
        let h = start(vec![], MemorySink::default());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(h.calls.load(Ordering::SeqCst), 1);
        h.rejecting.store(true, Ordering::SeqCst);
        // Reviewed every 10 min ± 10 %: not yet at 8 min...
        tokio::time::sleep(Duration::from_secs(8 * 60)).await;
        assert_eq!(h.calls.load(Ordering::SeqCst), 1);
        // ...noticed by 11 min and re-minted, not at the refresh (48 min);
        // the new tokens are rejected too and retried with backoff.
        tokio::time::sleep(Duration::from_secs(3 * 60)).await;
        let calls = h.calls.load(Ordering::SeqCst);
        assert!((2..=12).contains(&calls), "re-minted, boundedly: {calls}");
        let status = h.state.clusters().remove(0);
        assert_eq!(status.rejections, 1);
        assert!(status.rejected_since.is_some());
        assert!(!status.valid_at(SystemTime::now()));
        // The new token is rejected at birth too: not written, backoff.
        assert_eq!(h.sink.0.lock().unwrap().len(), 1, "nothing written");
        assert!(status.errors.get("rejected").is_some_and(|n| *n >= 1));
        h.rejecting.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5 * 60)).await;
        assert_eq!(h.sink.0.lock().unwrap().len(), 2, "written once accepted");
        let status = h.state.clusters().remove(0);
        assert_eq!(status.rejected_since, None);
        assert!(status.verified_at.is_some());
        h.cancel.cancel();
        h.handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_valid_token_on_disk_is_adopted_without_a_request() {
        let sink = MemorySink::default();
        let now = now_secs();
        sink.0.lock().unwrap().push(jwt(now - 60, now + 3540));
        let h = start(vec![], sink);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(h.calls.load(Ordering::SeqCst), 0);
        assert_eq!(h.queue.generation(), 0, "adoption asks for no reload");
        h.cancel.cancel();
        h.handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_past_its_refresh_point_is_replaced_at_once() {
        let sink = MemorySink::default();
        let now = now_secs();
        sink.0.lock().unwrap().push(jwt(now - 3000, now + 600));
        let h = start(vec![], sink);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(h.calls.load(Ordering::SeqCst), 1);
        h.cancel.cancel();
        h.handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn time_left_is_the_earlier_of_the_wall_and_monotonic_views() {
        let now = SystemTime::now();
        let held = Held {
            expires_at: now + Duration::from_secs(3600),
            valid_until: Some(Instant::now() + Duration::from_secs(600)),
        };
        let left = held.time_left(SystemTime::now()).unwrap();
        assert!(left <= Duration::from_secs(600), "{left:?}");
        // Paused time moves the monotonic clock only: the token runs out on it.
        tokio::time::advance(Duration::from_secs(601)).await;
        assert_eq!(held.time_left(SystemTime::now()), None);
        let adopted = Held {
            expires_at: now + Duration::from_secs(60),
            valid_until: None,
        };
        assert!(adopted.time_left(SystemTime::now()).unwrap() <= Duration::from_secs(60));
        let expired = Held {
            expires_at: now - Duration::from_secs(1),
            valid_until: Some(Instant::now() + Duration::from_secs(60)),
        };
        assert_eq!(expired.time_left(SystemTime::now()), None);
    }

    #[test]
    fn a_token_for_another_account_or_already_expired_is_refused() {
        let c = cluster();
        let now = now_secs();
        let issued = |token: Token| IssuedToken {
            claims: token.claims().unwrap(),
            token,
            lifetime: Duration::from_secs(3600),
            warning: None,
            credential_expires_at: None,
        };
        let wall = SystemTime::now();
        assert!(refuse(&c, &issued(jwt(now, now + 3600)), wall).is_none());
        let expired = refuse(&c, &issued(jwt(now - 7200, now - 3600)), wall).unwrap();
        assert!(
            expired.to_string().contains("already") || expired.to_string().contains("expired at"),
            "{expired}"
        );
        let mut other = (*c).clone();
        other.service_account.name = "someone-else".into();
        let wrong = refuse(&other, &issued(jwt(now, now + 3600)), wall).unwrap();
        assert!(
            wrong.to_string().contains("not for the configured"),
            "{wrong}"
        );
    }

    #[test]
    fn audiences_compare_as_sets_and_empty_means_any() {
        let claims = |aud: &[&str]| Claims {
            subject: None,
            audiences: aud.iter().map(|s| s.to_string()).collect(),
            issued_at: None,
            expires_at: 1,
        };
        assert!(audiences_match(&[], &claims(&["x"])));
        assert!(audiences_match(
            &["a".into(), "b".into()],
            &claims(&["b", "a"])
        ));
        assert!(!audiences_match(&["a".into()], &claims(&["b"])));
    }
}
