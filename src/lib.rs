//! mcprom keeps an externally hosted Prometheus authenticated to many
//! Kubernetes clusters with short-lived ServiceAccount tokens.
//!
//! # Layout
//!
//! - [`config`]: the file, its validation, [`config::Settings`].
//! - [`schedule`]: the refresh and retry policy as pure functions.
//! - [`token`]: the redacting [`token::Token`] and its claims.
//! - [`issuer`]: TokenRequest through kube.
//! - [`sink`]: atomic token-file writes, adoption, locks.
//! - [`reload`]: the coalescing Prometheus reloader.
//! - [`consumer`]: which Prometheus jobs read the token files, and whether their scrapes are rejected.
//! - [`rotator`]: one cluster's loop.
//! - [`state`]: per-cluster status shared with reporting.
//! - [`onboarding`]: the `rbac`, `scrape-config` and `seed` commands.
//! - [`render`]: `mcprom rbac` and `mcprom scrape-config` output from the settings.
//! - [`selfrenew`]: self-renewing credentials: `mcprom seed`, the chain and its limits.
//! - [`app`]: wiring, supervisor, signals.
//! - [`online`]: `mcprom check --online`, the checklist against the clusters and Prometheus.
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
//!                                                 │  Issuer (TokenRequest)
//!                                                 ├► Sink (atomic write)
//!                                                 └► ReloadQueue ─► Reloader (POST /-/reload)
//! State ◄── everyone
//! ```

pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod consumer;
pub mod control;
#[cfg(feature = "demo")]
pub mod demo;
pub mod exec;
pub mod issuer;
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
pub mod token;
