//! Configuration: the file, its validation, and the settings the daemon uses.
//!
//! - `file.rs` mirrors the TOML file in serde structs (unknown keys denied);
//! - `decode.rs` parses text into them, reporting every syntax, unknown-key
//!   and type problem with `file:line:col`;
//! - `validate.rs` turns them into [`Settings`]: defaults, absolute paths,
//!   domain types, and the checks that need only the file;
//! - `host.rs` checks settings against this machine ([`host_problems`]) and
//!   gives advice ([`warnings`]).
//!
//! Two kinds of problems, two behaviours (see DESIGN.md): a [`ConfigError`]
//! means the file is wrong and mcprom refuses it; a [`HostProblem`] means the
//! host is not ready for one cluster, which `mcprom run` tolerates.

mod decode;
mod duration;
pub mod file;
mod host;
mod report;
mod settings;
pub mod validate;
pub mod watch;

pub use duration::{format_duration, parse_duration};
pub use host::{HostProblem, host_problems, warnings};
pub use settings::*;
pub use validate::ConfigError;

/// The closest of `candidates` to a misspelled `word`, if one is close
/// enough to be what was meant (the config's "did you mean").
pub fn did_you_mean<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    report::did_you_mean(word, candidates)
}

use std::path::Path;

/// Default config path (`MCPROM_CONFIG` or `--config` override it).
pub const DEFAULT_PATH: &str = "/etc/mcprom.toml";

/// Reads and validates the file at `path`.
///
/// A missing or unreadable file is a [`ConfigError`] too; its message names
/// the path and the OS error.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let absolute = validate::absolute(path);
    let text =
        std::fs::read_to_string(&absolute).map_err(|e| ConfigError::unreadable(&absolute, &e))?;
    parse(&text, &absolute)
}

/// Validates `text` as if read from `path`: `path` is made absolute, and
/// relative paths in the file resolve against its directory.
pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
    validate::validate(text, &validate::absolute(path))
}

#[cfg(test)]
mod tests;
