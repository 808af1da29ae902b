//! Configuration: the file, its validation, and the settings the daemon uses.
//! (Stub: the validator lands in its own change.)
mod settings;
pub use settings::*;

use std::path::Path;
use std::time::Duration;

/// Default config path.
pub const DEFAULT_PATH: &str = "/etc/mcprom.toml";

/// A configuration file that is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// A host problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HostProblem(pub String);

/// Read and validate.
pub fn load(_path: &Path) -> Result<Settings, ConfigError> {
    unimplemented!()
}
/// Validate text.
pub fn parse(_text: &str, _path: &Path) -> Result<Settings, ConfigError> {
    unimplemented!()
}
/// Host problems.
pub fn host_problems(_settings: &Settings) -> Vec<HostProblem> {
    unimplemented!()
}
/// Warnings.
pub fn warnings(_settings: &Settings) -> Vec<String> {
    unimplemented!()
}
/// Parse a duration.
pub fn parse_duration(_s: &str) -> Result<Duration, String> {
    unimplemented!()
}
