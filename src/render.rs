//! What mcprom generates from its settings: the Kubernetes manifests a
//! cluster needs ([`rbac`], `mcprom rbac`) and the Prometheus scrape jobs
//! that use the token files ([`scrape`], `mcprom scrape-config`).
//!
//! Both start from a cluster's settings and, where the settings leave
//! something to a kubeconfig (server, CA, the identity that mints tokens),
//! from that kubeconfig. Nothing here prints a token or a key.

pub mod rbac;
pub mod scrape;

use std::path::PathBuf;

use base64::Engine as _;

use crate::config::{ClusterSettings, Settings};

/// Rendering failed. Messages name the cluster and the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The CLUSTER argument names no configured cluster.
    #[error("no cluster named {name:?} in {} (configured: {known})", config.display())]
    UnknownCluster {
        /// The name given.
        name: String,
        /// The config file.
        config: PathBuf,
        /// The configured names, comma-separated.
        known: String,
    },
    /// Something about one cluster could not be worked out or fetched.
    #[error("cluster {cluster:?}: {message}")]
    Cluster {
        /// The cluster.
        cluster: String,
        /// What went wrong, with a hint.
        message: String,
    },
}

impl RenderError {
    fn cluster(cluster: &ClusterSettings, message: impl Into<String>) -> Self {
        RenderError::Cluster {
            cluster: cluster.name.clone(),
            message: message.into(),
        }
    }
}

/// The clusters to render: the one named, or all of them in file order.
pub fn select<'a>(
    settings: &'a Settings,
    name: Option<&str>,
) -> Result<Vec<&'a ClusterSettings>, RenderError> {
    let Some(name) = name else {
        return Ok(settings.clusters.iter().map(AsRef::as_ref).collect());
    };
    match settings.clusters.iter().find(|c| c.name == name) {
        Some(cluster) => Ok(vec![cluster]),
        None => Err(RenderError::UnknownCluster {
            name: name.to_owned(),
            config: settings.path.clone(),
            known: if settings.clusters.is_empty() {
                "none".to_owned()
            } else {
                settings
                    .clusters
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        }),
    }
}

/// Decode a kubeconfig `*-data` field (base64 of PEM).
pub(crate) fn decode_data(field: &str, data: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("{field} is not valid base64: {e}"))
}

/// Turn text into YAML comment lines (`# …`), one per `\n`-separated line.
///
/// The one place where text that may come from outside (paths, names and
/// sources taken from the config and kubeconfigs) enters the generated
/// YAML outside of a serialized value. A YAML parser ends a comment at any
/// line break — `\r` alone too, and for YAML 1.1 parsers (PyYAML, libyaml)
/// also U+0085, U+2028 and U+2029 — so every control character and those
/// separators are written escaped (`\r`, `\u{2028}`): nothing in a comment
/// can start a line of its own.
pub(crate) fn comment(text: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    text.strip_suffix('\n')
        .unwrap_or(text)
        .split('\n')
        .map(|l| {
            if l.is_empty() {
                "#\n".to_owned()
            } else {
                format!("# {}\n", escape_breaks(l))
            }
        })
        .collect()
}

/// `line` with control characters and Unicode line/paragraph separators
/// escaped, the rest unchanged.
fn escape_breaks(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_line_break_in_a_comment_escapes_it() {
        let text = "from /etc/a\rinjected: true\u{85}b: 1\u{2028}c: 2\x1b[2J\n\nnext";
        let yaml = format!("{}key: value\n", comment(text));
        assert_eq!(
            yaml,
            "# from /etc/a\\rinjected: true\\u{85}b: 1\\u{2028}c: 2\\u{1b}[2J\n#\n# next\nkey: value\n"
        );
        let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(parsed.as_mapping().unwrap().len(), 1, "{parsed:?}");
    }

    #[test]
    fn an_unknown_cluster_lists_the_known_ones() {
        let settings = crate::config::parse(
            "[[cluster]]\nname = \"a\"\napi_server = \"https://h\"\nservice_account = \"x/y\"\n\
             [cluster.credentials]\nself = true\n",
            std::path::Path::new("/etc/mcprom.toml"),
        )
        .unwrap();
        assert_eq!(select(&settings, None).unwrap().len(), 1);
        assert_eq!(select(&settings, Some("a")).unwrap()[0].name, "a");
        let e = select(&settings, Some("b")).unwrap_err().to_string();
        assert_eq!(
            e,
            "no cluster named \"b\" in /etc/mcprom.toml (configured: a)"
        );
    }
}
