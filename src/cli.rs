//! Command line: clap definitions and the dispatch to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config;

pub use crate::exit;

/// mcprom keeps an external Prometheus authenticated to many Kubernetes
/// clusters with short-lived ServiceAccount tokens.
#[derive(Debug, Parser)]
#[command(name = "mcprom", version, about, long_about = None)]
pub struct Cli {
    /// Config file (default /etc/mcprom.toml; MCPROM_CONFIG overrides the default).
    #[arg(long, global = true, env = "MCPROM_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Log verbosity: error, warn, info, debug, trace, or a RUST_LOG-style filter.
    /// RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (systemd's ExecStart).
    Run,
    /// Validate the config file and the files it names; exit 78 on problems.
    /// With --online, also probe every cluster and Prometheus; exit 1 if a check fails.
    Check {
        /// Also check every cluster's API server (reachable, TLS, credential,
        /// permission, ServiceAccount, legacy token Secrets), the token
        /// directories and Prometheus (ready, lifecycle API), changing nothing.
        #[arg(long)]
        online: bool,
        /// With --online: also mint one 10-minute token per cluster and
        /// check that the API server accepts it as the ServiceAccount, with
        /// its audiences (written nowhere).
        #[arg(long, requires = "online")]
        mint: bool,
    },
    /// Per-cluster table: state, expiry, last and next refresh, last error.
    /// Exit 1 if a cluster is unhealthy, 69 if the daemon is not running
    /// (the table then shows what the token files say).
    Status {
        /// Print the JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Refresh now (all clusters, or those named) and wait for the outcome.
    Rotate {
        /// Cluster names (default: all).
        clusters: Vec<String>,
    },
    /// Ask the running daemon to re-read its config; exit 78 if the file is invalid
    /// (the daemon keeps the last good config). systemd's ExecReload.
    Reload,
    /// Print the Kubernetes manifests a cluster needs, for `kubectl apply -f -`.
    ///
    /// Its ServiceAccount, read access for Prometheus, and the least-privilege
    /// rule for minting its tokens, bound to the identity of
    /// [cluster.credentials] (or to the ServiceAccount itself for self = true).
    Rbac {
        /// Only this cluster (default: every cluster, one after another).
        cluster: Option<String>,
    },
    /// Print Prometheus scrape jobs that read mcprom's token files.
    ///
    /// cAdvisor and kubelet metrics through each API server's node proxy,
    /// with the token file as credentials_file, the cluster's CA and a
    /// `cluster` label. The output is a complete Prometheus config.
    ScrapeConfig {
        /// Only this cluster (default: every cluster).
        cluster: Option<String>,
        /// List the nodes now, with each cluster's token, in static_configs
        /// instead of kubernetes_sd_configs (for Prometheus builds without
        /// Kubernetes discovery, such as Debian's).
        #[arg(long = "static")]
        static_nodes: bool,
        /// Also write CAs that kubeconfigs embed (certificate-authority-data)
        /// to the files the jobs read.
        #[arg(long)]
        write_ca: bool,
        /// How Prometheus discovers the nodes: `api-server` (api_server plus the
        /// job's token file and CA) or `kubeconfig` (kubeconfig_file: the
        /// kubeconfig mcprom writes for each cluster; needs kubeconfig_file or
        /// [defaults] kubeconfig_dir). The scrapes use the token file either way.
        #[arg(
            long,
            value_enum,
            default_value = "api-server",
            conflicts_with = "static_nodes"
        )]
        discovery: crate::render::scrape::Discovery,
    },
    /// Store a first token, read from stdin, for a self-renewing cluster.
    ///
    /// For a cluster with `self = true` in [cluster.credentials], e.g.
    /// `kubectl create token prometheus -n kube-system --duration 24h | mcprom seed prod`.
    /// Also repairs a broken chain. The token must belong to the cluster's
    /// service_account and must not have expired.
    Seed {
        /// The cluster.
        cluster: String,
    },
    /// Run the daemon against simulated clusters on loopback, with a real
    /// `prometheus` when one is on PATH.
    Demo {
        /// Stop after this long (e.g. 90s, 5m); default: until Ctrl-C.
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<Duration>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

/// Parse the command line, run, and map the outcome to an exit code.
pub fn main() -> ExitCode {
    one_malloc_arena();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let level = match (&cli.command, cli.log_level.as_str()) {
        // The checklist reports every failure itself; kube's own events
        // ("failed with error ...") would only repeat them out of order.
        (Command::Check { online: true, .. }, "info") => "info,kube_client=off",
        (_, level) => level,
    };
    crate::logging::init(level);
    let code = match cli.command {
        Command::Rbac { cluster } => crate::onboarding::rbac(&cli.config, cluster.as_deref()),
        Command::ScrapeConfig {
            cluster,
            static_nodes,
            write_ca,
            discovery,
        } => runtime().and_then(|rt| {
            rt.block_on(crate::onboarding::scrape_config(
                &cli.config,
                cluster.as_deref(),
                static_nodes,
                write_ca,
                discovery,
            ))
        }),
        Command::Seed { cluster } => {
            runtime().and_then(|rt| rt.block_on(crate::onboarding::seed(&cli.config, &cluster)))
        }
        Command::Run => run(&cli.config),
        Command::Check { online, mint } => check(&cli.config, online, mint),
        Command::Status { json } => with_settings(&cli.config, |rt, s| {
            rt.block_on(crate::commands::status(&s, json))
        }),
        Command::Rotate { clusters } => with_settings(&cli.config, |rt, s| {
            rt.block_on(crate::commands::rotate(&s, clusters))
        }),
        Command::Reload => reload(&cli.config),
        #[cfg(feature = "demo")]
        Command::Demo { duration } => runtime().and_then(|rt| {
            rt.block_on(crate::demo::run(duration)).map_err(|e| {
                eprintln!("mcprom demo: {e:#}");
                exit::FAILED
            })
        }),
        // The command line stays the same; this build has no simulator in it.
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } => {
            eprintln!(
                "mcprom demo: this mcprom was built without the simulator (cargo feature `demo`)"
            );
            Err(exit::FAILED)
        }
    };
    ExitCode::from(code.err().unwrap_or(exit::OK))
}

/// glibc gives each thread that allocates under contention its own malloc
/// arena, up to eight per core, and memory freed in one arena is not
/// reused by another. mcprom allocates little and not in any hot loop, so
/// one arena costs no measurable CPU and keeps about 1 MiB (of ~20) off the
/// daemon's resident size at 1,000 clusters (docs/benchmarks.md).
/// The only `unsafe` in mcprom.
#[allow(unsafe_code)]
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called first
    // thing in main, before any other thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Token writes (fsync) run on blocking threads; 16 overlap plenty of
        // fsyncs, while tokio's default of 512 lets a cold start of thousands
        // of clusters spawn hundreds of threads, each with its own stack and
        // malloc arena (peak RSS).
        .max_blocking_threads(16)
        .build()
        .map_err(|e| {
            eprintln!("mcprom: cannot start the async runtime: {e}");
            exit::FAILED
        })
}

fn load(path: &std::path::Path) -> Result<config::Settings, u8> {
    config::load(path).map_err(|e| {
        tracing::error!("invalid configuration, not starting:\n{e}");
        exit::CONFIG
    })
}

fn with_settings(
    path: &std::path::Path,
    f: impl FnOnce(&tokio::runtime::Runtime, config::Settings) -> u8,
) -> Result<(), u8> {
    let settings = config::load(path).map_err(|e| {
        eprintln!("{e}");
        exit::CONFIG
    })?;
    let rt = runtime()?;
    match f(&rt, settings) {
        exit::OK => Ok(()),
        code => Err(code),
    }
}

/// `mcprom reload` needs only the socket path; an invalid file must not stop
/// it from asking the daemon (which reports the error with positions).
fn reload(path: &std::path::Path) -> Result<(), u8> {
    let socket = config::load(path)
        .map(|s| s.control.socket)
        .unwrap_or_else(|_| socket_from_text(path));
    let rt = runtime()?;
    match rt.block_on(crate::commands::reload(&socket)) {
        exit::OK => Ok(()),
        code => Err(code),
    }
}

/// The `[control] socket` of a file that may not validate as a whole.
fn socket_from_text(path: &std::path::Path) -> PathBuf {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| {
            t.get("control")?.get("socket")?.as_str().map(|s| {
                let p = PathBuf::from(s);
                match path.parent() {
                    Some(dir) if p.is_relative() => dir.join(p),
                    _ => p,
                }
            })
        })
        .unwrap_or_else(|| PathBuf::from("/run/mcprom/control.sock"))
}

fn run(path: &std::path::Path) -> Result<(), u8> {
    // The daemon holds every cluster's token and credential: no core dump,
    // and no ptrace or /proc/PID/mem by other processes of the same user
    // (exec plugins included).
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot turn off core dumps (PR_SET_DUMPABLE)");
    }
    let settings = load(path)?;
    let rt = runtime()?;
    rt.block_on(crate::app::run(settings, crate::app::termination()))
        .map_err(|e| {
            tracing::error!("{e}");
            exit::FAILED
        })
}

/// `mcprom check [--online]`: 78 for file or host problems (the online
/// checks still run, to show everything at once), else 1 if an online check
/// failed.
fn check(path: &std::path::Path, online: bool, mint: bool) -> Result<(), u8> {
    let settings = match config::load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Err(exit::CONFIG);
        }
    };
    for warning in config::warnings(&settings) {
        eprintln!("warning: {warning}");
    }
    let problems = config::host_problems(&settings);
    for problem in &problems {
        eprintln!("{problem}");
    }
    if problems.is_empty() {
        println!(
            "{}: OK ({} cluster{})",
            settings.path.display(),
            settings.clusters.len(),
            if settings.clusters.len() == 1 {
                ""
            } else {
                "s"
            }
        );
    }
    let failed = online
        && runtime()?
            .block_on(crate::online::run(&settings, mint))
            .failed
            > 0;
    if !problems.is_empty() {
        Err(exit::CONFIG)
    } else if failed {
        Err(exit::FAILED)
    } else {
        Ok(())
    }
}
