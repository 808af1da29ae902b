//! mcprom keeps an externally hosted Prometheus authenticated to many
//! Kubernetes clusters with short-lived ServiceAccount tokens.
//!
//! # Layout
//!
//! The daemon, in the order a token flows:
//!
//! - [`config`]: the file, its validation, [`config::Settings`]; what the
//!   host lacks ([`config::host_problems`]); the file's watch.
//! - [`app`]: wiring, the supervisor (one rotator task per cluster),
//!   signals, shutdown; the only module naming the real issuer, sink and
//!   reloader ([`app::ClusterIssuer`]).
//! - [`rotator`]: one cluster's loop: wait, request, write, review.
//! - [`schedule`]: **where the refresh is decided**: the refresh point,
//!   token and reload backoff, jitter, as pure functions.
//! - [`clock`]: the wall clock as an input (tokio's clock is the monotonic
//!   one).
//! - [`issuer`]: the [`issuer::Issuer`] trait and TokenRequest, the reason
//!   set of a failed refresh ([`issuer::IssueError`]).
//! - [`apiserver`]: **where mcprom talks to Kubernetes**: the client from a
//!   cluster's settings, one request with a timeout, failure reasons, the
//!   server's message. The issuer, `check --online`, `scrape-config
//!   --static` and `rbac` all use it.
//! - [`exec`]: kubeconfig exec plugins, run with a time limit.
//! - [`selfrenew`]: self-renewing credentials: the issuer wrapper, the
//!   chain and its limits, `mcprom seed`.
//! - [`token`]: the redacting [`token::Token`] and its claims.
//! - [`sink`]: atomic token-file writes, adoption, locks.
//! - [`kubeconfig`]: the kubeconfig per cluster whose user reads the token
//!   file (`kubeconfig_file`, `[defaults] kubeconfig_dir`).
//! - [`reload`]: the coalescing Prometheus reloader.
//! - [`consumers`]: `[[consumer]]`s, each reloaded on its own (a URL or a
//!   command), with its own queue, coalescing and backoff.
//! - [`consumer`]: which Prometheus jobs read the token files, and whether
//!   their scrapes are rejected.
//! - [`state`]: per-cluster status shared with reporting.
//! - [`metrics`]: `/metrics` and `/healthz`.
//! - [`control`]: the control socket (`status`, `rotate`, `reload`).
//! - [`notify`]: sd_notify (`READY=1`, `STATUS=`, the watchdog).
//! - [`logging`]: human-readable lines or journald fields.
//! - [`outside`]: caps and sanitizing for everything read from outside.
//! - [`text`]: error chains, one-line messages, RFC 3339 times, durations.
//!
//! The commands around it:
//!
//! - [`cli`]: the command line; [`exit`]: the exit codes.
//! - [`commands`]: `status`, `rotate`, `reload`, `check`.
//! - [`online`]: `mcprom check --online`, the checklist against the
//!   clusters and Prometheus.
//! - [`onboarding`]: the `rbac`, `scrape-config` and `seed` commands;
//!   [`render`]: their output from the settings.
//! - [`demo`]: `mcprom demo`, the daemon against simulated clusters (the
//!   default `demo` feature; without it the daemon has no simulator in it).
//!
//! The simulated Kubernetes API used by the tests, the demo and the
//! benchmarks is its own package in this workspace: `sim/` (`mcprom-sim`,
//! the library `mcprom_sim` and the `mcprom-sim` command).
//!
//! # Data flow
//!
//! ```text
//! /etc/mcprom.toml ─► Settings ─► Supervisor ─► Rotator (one per cluster)
//!                                                 │  Issuer (TokenRequest via apiserver)
//!                                                 ├► Sink (atomic write)
//!                                                 └► ReloadQueue ─► Reloader (POST /-/reload)
//!                                                    └► one queue per [[consumer]] ─► URL or command
//! State ◄── everyone
//! ```
//!
//! # What happens on each kind of failure
//!
//! | Failure | What mcprom does | Decided in |
//! |---|---|---|
//! | The config file is wrong | `run` refuses to start (exit 78); a live reload keeps the last good config | [`config::ConfigError`], [`app`] |
//! | A file the config names is missing or unreadable | `check` exits 78; `run` starts and holds that cluster in `error`, retrying | [`config::host_problems`], [`rotator`] |
//! | The API server is unreachable, slow, or fails TLS | the token stays; retry with backoff (cap: a quarter of the time left, 30 s once expired); reason `unreachable` or `tls` | [`apiserver::Failure`], [`schedule::backoff`] |
//! | The API server answers 401/403/404/422/5xx | the token stays; backoff; reason from the status | [`apiserver::status_reason`], [`issuer::interpret_response`] |
//! | 429 | as above, honouring `Retry-After` within the time left | [`schedule::backoff`] |
//! | The new token is rejected when reviewed | not written; the old token stays; reason `rejected` | [`issuer::Issuer::verify`], [`rotator`] |
//! | The token in use is rejected before its expiry | re-minted at once, outside the backoff | [`rotator`] |
//! | The token file cannot be written | the old file stays whole; backoff; reason `write_failed` | [`sink`], [`rotator::AttemptError`] |
//! | The token expires anyway | reported once (log, metric, status `expired`); retries go on | [`rotator`] |
//! | A self-renewal chain breaks or grows too old | reason `chain_broken`/`chain_too_old`; only `mcprom seed` repairs it | [`selfrenew::SelfRenewing`] |
//! | An exec plugin hangs | its process group is killed at `exec_timeout` | [`exec`] |
//! | Prometheus refuses or fails a reload | retried with backoff (403/401 slowly); rotation never waits | [`reload::ReloadError`], [`schedule::reload_backoff`] |
//! | The wall clock jumps (suspend, a stepped clock) | every plan is re-checked; one past due refreshes now | [`rotator::watch_clock`], [`clock`] |
//!
//! Whatever a failure quotes (servers, plugins, files) passes
//! [`outside::text`] before it reaches a log, the status or a metric.

#![warn(missing_docs)]

pub mod apiserver;
pub mod app;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod consumer;
pub mod consumers;
pub mod control;
#[cfg(feature = "demo")]
pub mod demo;
pub mod exec;
pub mod exit;
pub mod issuer;
pub mod kubeconfig;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod onboarding;
pub mod online;
pub mod outside;
pub mod reload;
pub mod render;
pub mod rotator;
pub mod schedule;
pub mod selfrenew;
pub mod sink;
pub mod state;
pub mod text;
pub mod token;
