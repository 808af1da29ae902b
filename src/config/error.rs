//! [`ConfigError`]: why a configuration could not be used. Its own module
//! so that decoding, reporting and validating all use it without
//! importing one another.

use std::path::{Path, PathBuf};

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
    #[error("{}", problems.join("\n"))]
    Invalid {
        /// The file (absolute).
        path: PathBuf,
        /// One line per problem, in file order:
        /// `/etc/mcprom.toml:14:1: cluster "prod": unknown key "servce_account" (did you mean "service_account"?)`.
        problems: Vec<String>,
    },
}

impl ConfigError {
    /// Every problem, one line each (a single line for an unreadable file).
    pub fn problems(&self) -> &[String] {
        match self {
            ConfigError::Unreadable { message, .. } => std::slice::from_ref(message),
            ConfigError::Invalid { problems, .. } => problems,
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
            problems: errors.iter().flat_map(|e| e.problems().to_vec()).collect(),
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
}
