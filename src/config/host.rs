//! "The host is not ready": checks of valid settings against this machine,
//! and the advice printed at every start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::duration::format_duration;
use super::settings::{ClusterSettings, Credentials, Settings};

/// A named file that cannot be read, or a group that does not exist.
///
/// `mcprom check` reports these and exits 78; `mcprom run` starts anyway and
/// holds only the cluster concerned in an error state, retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HostProblem {
    /// The cluster concerned; `None` for `[prometheus]`.
    pub cluster: Option<String>,
    /// The key naming the file or group, e.g. `credentials.kubeconfig`.
    pub key: String,
    /// The file concerned (`None` for a group problem).
    pub path: Option<PathBuf>,
    /// The whole message: who, key, path, OS error and a hint.
    pub message: String,
}

/// The smallest lifetime real API servers accept for a TokenRequest.
const API_SERVER_MINIMUM_EXPIRATION: Duration = Duration::from_secs(600);

/// Checks every file the settings name (readable) and every `file_group`
/// (exists). See [`HostProblem`].
pub fn host_problems(settings: &Settings) -> Vec<HostProblem> {
    let mut problems = Vec::new();
    let p = &settings.prometheus;
    let prometheus_files = [
        ("ca_file", &p.ca_file),
        ("password_file", &p.password_file),
        ("bearer_token_file", &p.bearer_token_file),
    ];
    for (key, path) in prometheus_files {
        if let Some(path) = path {
            problems.extend(unreadable(&settings.path, None, key, path));
        }
    }
    problems.extend(super::consumers::host_problems(settings));
    for cluster in &settings.clusters {
        for (key, path) in input_files(cluster) {
            problems.extend(unreadable(&settings.path, Some(cluster), key, &path));
        }
        if let Some(group) = &cluster.file_group
            && let Some(why) = missing_group(group)
        {
            problems.push(HostProblem {
                cluster: Some(cluster.name.clone()),
                key: "file_group".to_string(),
                path: None,
                message: format!(
                    "cluster {:?}: key \"file_group\": group {group:?} {why} (create it, e.g. \
                     `groupadd --system {group}`, or set file_group to the group Prometheus runs as)",
                    cluster.name
                ),
            });
        }
    }
    problems
}

/// Non-fatal advice about valid settings, printed at every start.
pub fn warnings(settings: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    for cluster in &settings.clusters {
        if cluster.insecure_skip_tls_verify {
            out.push(format!(
                "TLS verification disabled for cluster {:?}: insecure_skip_tls_verify = true lets \
                 anyone on the network path impersonate the API server and capture mcprom's \
                 credential; set ca_file to the cluster's CA instead",
                cluster.name
            ));
        }
        if cluster.file_mode & 0o026 != 0 {
            out.push(format!(
                "cluster {:?}: file_mode {:04o} lets {} the token file; a token is a credential \
                 for the cluster: use 0640 with file_group, or 0600",
                cluster.name,
                cluster.file_mode,
                match (
                    cluster.file_mode & 0o004 != 0,
                    cluster.file_mode & 0o022 != 0
                ) {
                    (true, true) => "every local user read it and others than mcprom write",
                    (true, false) => "every local user read",
                    _ => "others than mcprom write",
                }
            ));
        }
        if cluster.expiration < API_SERVER_MINIMUM_EXPIRATION {
            out.push(format!(
                "cluster {:?}: expiration {} is below 10 minutes: real API servers refuse less \
                 than 10 minutes (TokenRequest fails with 422); only simulators and tests accept it",
                cluster.name,
                format_duration(cluster.expiration)
            ));
        }
    }
    out
}

/// The files a cluster reads, with the key that names each.
fn input_files(cluster: &ClusterSettings) -> Vec<(&'static str, PathBuf)> {
    let mut files = Vec::new();
    if let Some(ca) = &cluster.ca_file {
        files.push(("ca_file", ca.clone()));
    }
    match &cluster.credentials {
        Credentials::Kubeconfig { path, .. } => {
            files.push(("credentials.kubeconfig", path.clone()))
        }
        Credentials::TokenFile(path) => files.push(("credentials.token_file", path.clone())),
        Credentials::ClientCert { cert, key } => {
            files.push(("credentials.client_cert", cert.clone()));
            files.push(("credentials.client_key", key.clone()));
        }
        // The cluster's own token file is its credential.
        Credentials::SelfRenew => files.push(("credentials.self", cluster.token_file.clone())),
    }
    files
}

/// Reads and parses the file `key` names exactly as the daemon will.
fn check_input(key: &str, path: &Path) -> Result<(), super::input::InputError> {
    use super::input;
    match key {
        "ca_file" | "credentials.client_cert" => input::read_certificates(path).map(drop),
        "credentials.client_key" => input::read_private_key(path).map(drop),
        "credentials.kubeconfig" => input::read_kubeconfig(path).map(drop),
        "credentials.token_file" | "credentials.self" | "bearer_token_file" => {
            input::read_token(path).map(drop)
        }
        _ => input::read_text(path).map(drop),
    }
}

fn unreadable(
    config: &Path,
    cluster: Option<&ClusterSettings>,
    key: &str,
    path: &Path,
) -> Option<HostProblem> {
    let error = check_input(key, path).err()?;
    let who = match cluster {
        Some(c) => format!("cluster {:?}", c.name),
        None => "[prometheus]".to_string(),
    };
    let hint = match (error.kind, key, cluster) {
        (Some(std::io::ErrorKind::NotFound), "credentials.self", Some(c)) => format!(
            "bootstrap it once with `{}`, which stores a first token read from stdin",
            super::reseed_command(config, c)
        ),
        (Some(std::io::ErrorKind::NotFound), _, _) => {
            format!("put the file there, or correct {key} in the config file")
        }
        (Some(std::io::ErrorKind::PermissionDenied), _, _) => {
            "make it readable by the user mcprom runs as (chgrp mcprom, chmod g+r)".to_string()
        }
        (None, _, _) if error.message.contains("not a regular file") => {
            format!("{key} must name a readable regular file")
        }
        (None, "ca_file", _) => {
            "point ca_file at the PEM bundle of the CA that signed the API server's certificate"
                .to_string()
        }
        (None, "credentials.token_file" | "credentials.self" | "bearer_token_file", _) => {
            "the file must hold just the token, as `kubectl create token` prints it".to_string()
        }
        _ => format!("{key} must name a readable regular file"),
    };
    let cannot = if error.kind.is_some() {
        "cannot read"
    } else {
        "cannot use"
    };
    Some(HostProblem {
        cluster: cluster.map(|c| c.name.clone()),
        key: key.to_string(),
        path: Some(path.to_path_buf()),
        message: format!(
            "{who}: key {key:?}: {cannot} {}: {} ({hint})",
            path.display(),
            error.message
        ),
    })
}

/// Why `group` cannot be used, if it cannot.
fn missing_group(group: &str) -> Option<String> {
    match nix::unistd::Group::from_name(group) {
        Ok(Some(_)) => None,
        Ok(None) => Some("does not exist".to_string()),
        Err(errno) => Some(format!("cannot be looked up: {errno}")),
    }
}
