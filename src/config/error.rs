//! [`ConfigError`]: why a configuration could not be used. Its own module
//! so that decoding, reporting and validating all use it without
//! importing one another.

use std::path::{Path, PathBuf};

use super::diagnostic::{Diagnostic, Severity};

/// The configuration could not be used: the file is unreadable or wrong.
///
/// `mcprom run` refuses to start on it (exit 78); a live reload keeps the
/// last good configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, permissions, not UTF-8).
    #[error("{message}")]
    Unreadable {
        /// The file (absolute).
        path: PathBuf,
        /// `cannot read /etc/mcprom.toml: No such file or directory (os error 2) (hint)`.
        message: String,
        /// What the OS said, for callers that treat "missing" specially.
        kind: std::io::ErrorKind,
    },
    /// The file was read, and has one or more problems.
    #[error("{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file (absolute).
        path: PathBuf,
        /// The problems in file order, each with its own file (a drop-in
        /// fragment or the main file); each displays as one line:
        /// `/etc/mcprom.toml:14:1: cluster "prod": unknown key "servce_account" (did you mean "service_account"?)`.
        problems: Vec<Diagnostic>,
    },
}

impl ConfigError {
    /// Every problem, one line each (a single line for an unreadable file).
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Unreadable { message, .. } => vec![message.clone()],
            ConfigError::Invalid { problems, .. } => {
                problems.iter().map(ToString::to_string).collect()
            }
        }
    }

    /// Every problem with its place, for `mcprom check` to draw or print
    /// as JSON.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        match self {
            ConfigError::Unreadable { path, message, .. } => {
                vec![Diagnostic::unplaced(path, Severity::Error, message)]
            }
            ConfigError::Invalid { problems, .. } => problems.clone(),
        }
    }

    /// The config file concerned (absolute).
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Unreadable { path, .. } | ConfigError::Invalid { path, .. } => path,
        }
    }

    /// One error for the problems of several files (`None` for none): the
    /// main file's, then each drop-in's. Each problem names its own file.
    pub(crate) fn combine(main: &Path, errors: Vec<ConfigError>) -> Option<ConfigError> {
        if errors.len() <= 1 {
            return errors.into_iter().next();
        }
        Some(ConfigError::Invalid {
            path: main.to_path_buf(),
            problems: errors.iter().flat_map(ConfigError::diagnostics).collect(),
        })
    }

    pub(crate) fn unreadable(path: &Path, error: &std::io::Error) -> Self {
        let hint = match error.kind() {
            std::io::ErrorKind::NotFound => {
                "create it (config/mcprom.toml is the documented reference) or pass --config PATH"
            }
            std::io::ErrorKind::PermissionDenied => "make it readable by the user mcprom runs as",
            std::io::ErrorKind::InvalidData => "the file must be UTF-8 text",
            _ => "check the path given with --config or MCPROM_CONFIG",
        };
        ConfigError::Unreadable {
            path: path.to_path_buf(),
            message: format!("cannot read {}: {error} ({hint})", path.display()),
            kind: error.kind(),
        }
    }

    /// A file that is not UTF-8: the problem names the line, the byte in
    /// that line (1-based) and its value, and shows the line.
    pub(crate) fn not_utf8(path: &Path, bytes: &[u8], error: std::str::Utf8Error) -> Self {
        let bad = error.valid_up_to();
        let valid = std::str::from_utf8(&bytes[..bad]).unwrap_or_default();
        let line_start = valid.rfind('\n').map_or(0, |i| i + 1);
        let line_end = bytes[bad..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| bad + i);
        let line = valid.matches('\n').count() + 1;
        let byte = bad - line_start + 1;
        let text = String::from_utf8_lossy(&bytes[line_start..line_end]);
        let source = format!(
            "{}{text}",
            &valid[..line_start].replace(|c: char| c != '\n', "")
        );
        let message = format!(
            "the file is not UTF-8: decoding failed at line {line}, byte {byte} (0x{:02x}, \
             offset {bad} in the file) (save the file as UTF-8)",
            bytes[bad]
        );
        ConfigError::Invalid {
            path: path.to_path_buf(),
            problems: vec![Diagnostic::at(
                path,
                &source,
                line - 1 + valid[line_start..].len(),
                Severity::Error,
                &message,
            )],
        }
    }
}
