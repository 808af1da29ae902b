//! `mcprom-sim`: a simulated Kubernetes API server (one or many clusters)
//! over TLS, for tests, demos and benchmarks.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mcprom_sim::{Sim, SimConfig, parse_duration};

/// Simulated Kubernetes API server for mcprom's tests, demo and benchmarks.
///
/// Writes DIR/<cluster>/{ca.crt,kubeconfig,kubeconfig-nobody,issuer.token} and
/// DIR/mcprom.toml, prints one JSON ready line on stdout, then serves until
/// SIGTERM or SIGINT (exit status 0).
///
/// Control endpoint (plain HTTP on --control):
///   POST   /clusters/<name>/faults        {"count":N,"kind":"status","code":503}
///          ({"kind":"status","code":429,"retry_after_seconds":2}, {"kind":"hang"},
///          {"kind":"reset"}; add "scope":"all" to hit every request); DELETE clears
///   POST   /clusters/<name>/down | /up
///   DELETE /clusters/<name>/serviceaccounts/<ns>/<sa>   (POST recreates it)
///   POST   /clusters/<name>/serviceaccounts/<ns>/<sa>/legacy-token-secret
///          a legacy, never-expiring token Secret for the ServiceAccount
///          (answers {"ok":true,"secret":"<sa>-token-xxxxx"})
///   DELETE /clusters/<name>/secrets/<ns>/<secret>
///   POST   /clusters/<name>/serviceaccounts/<ns>/<sa>/recreate   (new uid at once)
///   POST   /clusters/<name>/signing-key/rotate   (tokens issued before get 401)
///   POST   /clusters/<name>/sign   {claims}  -> {"token":"<JWT>"} signed with its key
///   GET    /stats, /clusters/<name>/stats
///
/// What it copies from kube-apiserver (v1.37.2, measured case by case by
/// testbed/conformance; docs/real-world.md lists every difference):
///   status codes, Status reason/message/details and the Warning header of
///   TokenRequest (JSON, YAML, kubectl's protobuf; defaults, minimum, 2^32,
///   clamping to --max-expiration, unknown fields, the order of its checks:
///   forbidden, namespace, ServiceAccount, spec, boundObjectRef), 401/403/404
///   texts, token claims and the 60 s leeway on exp/nbf/iat, nodes, the node
///   proxy, /version, SelfSubjectReview, SelfSubjectAccessReview (reasons name
///   `mcprom rbac`'s objects), Secrets as a list or as metadata.
/// What it deliberately does not:
///   metadata.managedFields; protobuf answers (always JSON); Go's decoder error
///   texts for malformed bodies; RS256 keys (it signs ES256); headers no client
///   acts on (Audit-Id, X-Kubernetes-Pf-*, Cache-Control); the ~10 s cache of
///   successful token authentications (a deleted ServiceAccount's token is
///   refused at once); Pods (a Pod boundObjectRef is always 404); other APIs.
#[derive(Parser, Debug)]
#[command(name = "mcprom-sim", version, verbatim_doc_comment)]
struct Args {
    /// Directory for the generated files (created if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Number of clusters, named c1..cN.
    #[arg(long, value_name = "N", default_value_t = 1)]
    clusters: usize,
    /// Number of nodes per cluster, named node-1..node-K.
    #[arg(long, value_name = "K", default_value_t = 1)]
    nodes: usize,
    /// Listen address; port 0 picks a free port per cluster. A fixed port is
    /// allowed with one cluster or with --shared-port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Serve all clusters on one listener under https://ADDR/clusters/<name>,
    /// sharing one certificate (for thousands of clusters).
    #[arg(long)]
    shared_port: bool,
    /// Smallest expirationSeconds a TokenRequest may ask for (shorter: 422).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    min_expiration: Duration,
    /// Longest token lifetime granted; longer requests are shortened with a
    /// Warning header (default: no maximum).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    max_expiration: Option<Duration>,
    /// How long after exp a token is still accepted, as on the real server.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    expiry_leeway: Duration,
    /// Let kube-system/prometheus-test create tokens for itself.
    #[arg(long)]
    allow_self_renew: bool,
    /// Address of the plain-HTTP control endpoint (faults, down/up,
    /// ServiceAccounts, /stats); loopback only.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    control: SocketAddr,
    /// Issue no TLS session tickets (like a Go server with
    /// SessionTicketsDisabled): every connection is a full handshake. By
    /// default the sim issues them as Go's server does: one per connection,
    /// valid 7 days.
    #[arg(long)]
    no_session_tickets: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mcprom-sim: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcprom-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if !args.control.ip().is_loopback() {
        anyhow::bail!("--control must be a loopback address, got {}", args.control);
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let sim = Sim::start(SimConfig {
        dir: args.dir,
        clusters: args.clusters,
        nodes: args.nodes,
        listen: args.listen,
        shared_port: args.shared_port,
        min_expiration: args.min_expiration,
        max_expiration: args.max_expiration,
        expiry_leeway: args.expiry_leeway,
        allow_self_renew: args.allow_self_renew,
        control: Some(args.control),
        session_tickets: !args.no_session_tickets,
    })
    .await?;
    let line = serde_json::to_string(sim.ready())?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    sim.shutdown().await;
    Ok(())
}
