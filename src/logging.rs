//! Logging: structured tracing events, to journald under systemd and as
//! human-readable lines on stderr otherwise.
//!
//! systemd sets `JOURNAL_STREAM=DEV:INODE` for a service whose stdout or
//! stderr is connected to the journal. When stderr is that stream, events go
//! to journald's native socket instead, with their fields (`CLUSTER=`,
//! `SERVICE_ACCOUNT=`, `ERROR=`, …) and a syslog `PRIORITY=`, so that
//! `journalctl -u mcprom -p warning CLUSTER=prod` works. A `JOURNAL_STREAM`
//! inherited by a child whose stderr goes elsewhere (someone running
//! `mcprom check` from a shell spawned by a unit) does not match, and that
//! child keeps printing lines.

mod journald;

use std::io::IsTerminal;
use std::path::PathBuf;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use journald::JournaldLayer;

/// Where journald listens for native-protocol datagrams.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Overrides [`JOURNAL_SOCKET`]. Tests point it at a socket they read;
/// nothing else needs it (a unit with `LogNamespace=` gets its namespace's
/// socket mounted at the standard path).
pub const JOURNAL_SOCKET_ENV: &str = "MCPROM_JOURNAL_SOCKET";

/// Install the global subscriber. `RUST_LOG` wins over `level`.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_directives(level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    if stderr_is_journal() {
        match JournaldLayer::connect(journal_socket()) {
            Ok(layer) => {
                let _ = tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .try_init();
                return;
            }
            Err(e) => {
                // stderr still reaches the journal: lose the fields, not the
                // messages.
                init_stderr(filter);
                tracing::warn!(
                    socket = %journal_socket().display(),
                    error = %e,
                    "cannot log to journald's socket; logging plain lines to stderr"
                );
                return;
            }
        }
    }
    init_stderr(filter);
}

/// kube's HTTP tracing logs every failed request at error level ("failed
/// with error client error (Connect)"), a second, less precise line next to
/// the warning each rotator logs for the same failure; it would make every
/// retry an error-priority journal entry. At debug and trace it stays, as
/// the request trace it belongs to.
const KUBE_HTTP_TRACE: &str = "kube_client::client::builder";

fn default_directives(level: &str) -> String {
    let quiet = matches!(
        level.trim().to_ascii_lowercase().as_str(),
        "off" | "error" | "warn" | "info"
    );
    if quiet {
        format!("{level},{KUBE_HTTP_TRACE}=off")
    } else {
        level.to_owned()
    }
}

fn init_stderr(filter: EnvFilter) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .try_init();
}

fn journal_socket() -> PathBuf {
    std::env::var_os(JOURNAL_SOCKET_ENV)
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(JOURNAL_SOCKET), PathBuf::from)
}

/// Whether `JOURNAL_STREAM` names the file stderr is (same device and
/// inode), the check systemd documents in systemd.exec(5).
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(parse_journal_stream) else {
        return false;
    };
    nix::sys::stat::fstat(std::io::stderr()).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

/// `"DEV:INODE"`, both decimal.
fn parse_journal_stream(value: &str) -> Option<(libc::dev_t, libc::ino_t)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_request_errors_are_muted_up_to_info_only() {
        assert_eq!(
            default_directives("info"),
            "info,kube_client::client::builder=off"
        );
        assert_eq!(
            default_directives("WARN"),
            "WARN,kube_client::client::builder=off"
        );
        assert_eq!(default_directives("debug"), "debug");
        assert_eq!(default_directives("mcprom=trace"), "mcprom=trace");
    }

    #[test]
    fn journal_stream_is_two_decimal_numbers() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8:"), None);
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
        assert_eq!(parse_journal_stream(""), None);
    }
}
