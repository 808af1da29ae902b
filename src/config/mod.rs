//! Configuration: the file, its validation, and the settings the daemon uses.
//!
//! - `file.rs` mirrors the TOML file in serde structs (unknown keys denied);
//! - `decode.rs` parses text into them, reporting every syntax, unknown-key
//!   and type problem with `file:line:col`;
//! - `validate.rs` turns them into [`Settings`]: defaults, absolute paths,
//!   domain types, and the checks that need only the file;
//! - `host.rs` checks settings against this machine ([`host_problems`]) and
//!   gives advice ([`warnings`]);
//! - `error.rs` holds [`ConfigError`], `report.rs` collects problems with
//!   their positions as [`Diagnostic`]s (`diagnostic.rs`: one line for the
//!   log, drawn with the source line for `mcprom check`, JSON for editors),
//!   `locate.rs` finds the key behind a host problem or warning again
//!   ([`host_diagnostics`]), `duration.rs` parses and prints durations,
//!   `settings.rs` the validated types, [`input`] reads the files settings
//!   name, [`watch`] follows the file's directory, [`dropin`] reads the
//!   drop-in directory and holds the [`Loader`] that re-reads only what
//!   changed.
//!
//! Two kinds of problems, two behaviours (see DESIGN.md): a [`ConfigError`]
//! means the file is wrong and mcprom refuses it; a [`HostProblem`] means the
//! host is not ready for one cluster, which `mcprom run` tolerates.

mod chunked;
mod consumers;
mod decode;
mod diagnostic;
pub mod dropin;
mod duration;
mod error;
pub mod file;
mod host;
pub mod input;
mod locate;
mod report;
mod settings;
pub mod validate;
pub mod watch;

pub use consumers::{
    COMMAND_PATH, ConsumerAction, ConsumerSettings, DEFAULT_CONSUMER_DELAY,
    DEFAULT_CONSUMER_TIMEOUT, PROMETHEUS_CONSUMER, WebEndpoint, resolve_program,
};
pub use diagnostic::{Diagnostic, Severity, render, stderr_wants_color};
pub use dropin::{Loader, Reread};
pub use duration::{format_duration, parse_duration};
pub use error::ConfigError;
pub use host::{HostProblem, host_problems, warnings};
pub use locate::host_diagnostics;
pub use settings::*;

/// The closest of `candidates` to a misspelled `word`, if one is close
/// enough to be what was meant (the config's "did you mean").
pub fn did_you_mean<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    report::did_you_mean(word, candidates)
}

use std::path::Path;

/// Default config path (`MCPROM_CONFIG` or `--config` override it).
pub const DEFAULT_PATH: &str = "/etc/mcprom.toml";

/// Reads and validates the file at `path` and its drop-ins (see [`dropin`]).
///
/// A missing or unreadable file is a [`ConfigError`] too; its message names
/// the path and the OS error.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    Loader::new(path).load()
}

/// Paths with their directories' symlinks resolved ([`resolved_dir`]), each
/// directory once: what tells that two spellings name one file.
#[derive(Debug, Default)]
pub(crate) struct ResolvedPaths {
    dirs: std::collections::HashMap<std::path::PathBuf, std::path::PathBuf>,
}

impl ResolvedPaths {
    /// `path` with its directory resolved.
    pub(crate) fn resolve(&mut self, path: &Path) -> std::path::PathBuf {
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let resolved = self
            .dirs
            .entry(dir)
            .or_insert_with_key(|dir| resolved_dir(&dir.join("x")));
        match path.file_name() {
            Some(name) => resolved.join(name),
            None => path.to_path_buf(),
        }
    }
}

/// The directory of `file` with symlinks resolved, when it exists (else as
/// written): what decides whether two token files are one, and which lock
/// guards them.
pub fn resolved_dir(file: &Path) -> std::path::PathBuf {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// The text of the config file at `absolute`: a regular file, at most
/// [`input::MAX_CONFIG_BYTES`], UTF-8.
pub fn read_config(absolute: &Path) -> Result<String, ConfigError> {
    let bytes = input::read_bounded(absolute, input::MAX_CONFIG_BYTES)
        .map_err(|e| ConfigError::unreadable(absolute, &e.into()))?;
    config_text(absolute, bytes)
}

/// The bytes of the config file (or drop-in) at `absolute` as text, or an
/// error naming the line and the byte in it where UTF-8 decoding failed.
pub(crate) fn config_text(absolute: &Path, bytes: Vec<u8>) -> Result<String, ConfigError> {
    String::from_utf8(bytes)
        .map_err(|e| ConfigError::not_utf8(absolute, e.as_bytes(), e.utf8_error()))
}

/// Validates `text` as if read from `path`: `path` is made absolute, and
/// relative paths in the file resolve against its directory.
pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
    validate::validate(text, &validate::absolute(path))
}

#[cfg(test)]
mod tests;
