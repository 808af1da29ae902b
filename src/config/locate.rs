//! Where a valid setting was written: host problems and warnings concern
//! settings, which keep no positions (10,000 clusters' worth of spans would
//! sit in the daemon's memory for nothing). `mcprom check` finds the key
//! again by reading the files once more, only when it has something to
//! report.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_spanned::Spanned;

use super::diagnostic::{Diagnostic, LineIndex, Severity};
use super::file::{ClusterFile, FileConfig};
use super::settings::Settings;

/// The config files, read and parsed again.
pub(crate) struct Locator {
    files: Vec<(PathBuf, String, Option<FileConfig>)>,
}

impl Locator {
    /// Reads and parses each of `paths` (files that no longer parse are
    /// kept, and only their name is used).
    pub(crate) fn new(paths: &[PathBuf]) -> Self {
        let files = paths
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let file = toml::from_str::<FileConfig>(&text).ok();
                (path.clone(), text, file)
            })
            .collect();
        Locator { files }
    }

    /// A diagnostic about `key` of `cluster` (`None`: `[prometheus]`),
    /// marking the `key = value` that set it; at no place in the first
    /// file when it cannot be found.
    pub(crate) fn diagnostic(
        &self,
        cluster: Option<&str>,
        key: &str,
        severity: Severity,
        text: &str,
    ) -> Diagnostic {
        for (path, source, file) in &self.files {
            let Some(file) = file else { continue };
            if let Some(span) = find(file, cluster, key) {
                let span = with_key(source, span, key);
                let mut d = LineIndex::new(source).diagnostic_span(
                    path,
                    span.start,
                    Some(span.end),
                    severity,
                    text,
                );
                d.key = Some(key.to_string());
                return d;
            }
        }
        let path = self.files.first().map_or(Path::new(""), |f| f.0.as_path());
        let mut d = Diagnostic::unplaced(path, severity, text);
        d.key = Some(key.to_string());
        d
    }
}

/// The span of the value that set `key` for `cluster` in `file`: the
/// cluster's own key, else the `[defaults]` it inherited.
fn find(file: &FileConfig, cluster: Option<&str>, key: &str) -> Option<Range<usize>> {
    fn span<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
        v.as_ref().map(Spanned::span)
    }
    let Some(name) = cluster else {
        let p = file.prometheus.as_ref()?.get_ref();
        return match key {
            "ca_file" => span(&p.ca_file),
            "password_file" => span(&p.password_file),
            "bearer_token_file" => span(&p.bearer_token_file),
            "username" => span(&p.username),
            _ => None,
        };
    };
    let c: &ClusterFile = file
        .cluster
        .iter()
        .map(Spanned::get_ref)
        .find(|c| c.name.as_ref().is_some_and(|n| n.get_ref() == name))?;
    let creds = c.credentials.as_ref().map(Spanned::get_ref);
    let defaults = file.defaults.as_ref().map(Spanned::get_ref);
    match key {
        "ca_file" => span(&c.ca_file),
        "insecure_skip_tls_verify" => span(&c.insecure_skip_tls_verify),
        "token_file" => span(&c.token_file),
        "file_group" => span(&c.file_group).or_else(|| span(&defaults?.file_group)),
        "file_mode" => span(&c.file_mode).or_else(|| span(&defaults?.file_mode)),
        "expiration" => span(&c.expiration).or_else(|| span(&defaults?.expiration)),
        "credentials.kubeconfig" => span(&creds?.kubeconfig),
        "credentials.token_file" => span(&creds?.token_file),
        "credentials.client_cert" => span(&creds?.client_cert),
        "credentials.client_key" => span(&creds?.client_key),
        "credentials.self" => span(&creds?.self_renew),
        _ => None,
    }
    // A key the cluster does not set (a default applies): its name.
    .or_else(|| span(&c.name))
}

/// `span` widened to start at the key written before it on its line
/// (`ca_file = "/x"`), when that key is there.
fn with_key(source: &str, span: Range<usize>, key: &str) -> Range<usize> {
    let last = key.rsplit('.').next().unwrap_or(key);
    let line_start = source[..span.start].rfind('\n').map_or(0, |i| i + 1);
    match source[line_start..span.start].rfind(last) {
        Some(i) => line_start + i..span.end,
        None => span,
    }
}

/// The warnings and host problems of valid `settings` (see
/// [`super::warnings`], [`super::host_problems`]), each pointing at the key
/// that causes it, warnings first. Reads the config files again only when
/// there is something to report.
pub fn host_diagnostics(settings: &Settings) -> Vec<Diagnostic> {
    let warnings = super::host::keyed_warnings(settings);
    let problems = super::host_problems(settings);
    if warnings.is_empty() && problems.is_empty() {
        return Vec::new();
    }
    let locator = Locator::new(&config_files(settings));
    let warnings = warnings.iter().map(|(cluster, key, text)| {
        locator.diagnostic(Some(cluster), key, Severity::Warning, text)
    });
    let problems = problems
        .iter()
        .map(|p| locator.diagnostic(p.cluster.as_deref(), &p.key, Severity::Error, &p.message));
    warnings.chain(problems).collect()
}

/// Every file the settings were read from: the main file and its drop-ins.
fn config_files(settings: &Settings) -> Vec<PathBuf> {
    std::iter::once(settings.path.clone())
        .chain(settings.dropins.iter().map(|d| d.path.clone()))
        .collect()
}
