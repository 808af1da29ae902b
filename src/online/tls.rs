//! TLS diagnosis: what verifies the API server's certificate, and why a
//! handshake failed, in words, with what to do.

use std::path::Path;

use crate::config::{ClusterSettings, Credentials};

/// What verifies the API server's certificate.
pub(super) enum Trust {
    /// Verified against this (described) set of CAs.
    Verified(String),
    /// Not verified, and why.
    Skipped(String),
    /// No TLS at all: plain `http` (allowed only to loopback).
    Plain(String),
}

impl Trust {
    pub(super) fn of(cluster: &ClusterSettings, config: &kube::Config) -> Trust {
        if config.cluster_url.scheme_str() == Some("http") {
            return Trust::Plain(format!("{} is plain http", config.cluster_url));
        }
        if cluster.insecure_skip_tls_verify {
            return Trust::Skipped("insecure_skip_tls_verify = true in the config".into());
        }
        if config.accept_invalid_certs {
            return Trust::Skipped("the kubeconfig sets insecure-skip-tls-verify".into());
        }
        if let Some(ca) = &cluster.ca_file {
            return Trust::Verified(format!("ca_file {}", ca.display()));
        }
        if let Credentials::Kubeconfig { path, context } = &cluster.credentials
            && let Some(source) = kubeconfig_ca(path, context.as_deref())
        {
            return Trust::Verified(source);
        }
        if config.root_cert.is_some() {
            return Trust::Verified("the CA configured for this cluster".into());
        }
        Trust::Verified("the system's root CAs".into())
    }

    pub(super) fn describe(&self) -> &str {
        match self {
            Trust::Verified(source) | Trust::Skipped(source) | Trust::Plain(source) => source,
        }
    }
}

/// Where the kubeconfig's CA for the selected context comes from.
fn kubeconfig_ca(path: &Path, context: Option<&str>) -> Option<String> {
    let kubeconfig = crate::config::input::parse_kubeconfig(path).ok()?;
    let name = context
        .map(str::to_owned)
        .or_else(|| kubeconfig.current_context.clone())?;
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == name)?
        .context
        .as_ref()?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)?
        .cluster
        .as_ref()?;
    if let Some(file) = &cluster.certificate_authority {
        Some(format!("the kubeconfig's certificate-authority {file}"))
    } else if cluster.certificate_authority_data.is_some() {
        Some(format!(
            "the kubeconfig's certificate-authority-data ({})",
            path.display()
        ))
    } else {
        None
    }
}

/// Why a TLS handshake failed, in words, and what to do.
pub(super) fn tls_failure(text: &str, trust: &Trust) -> (String, String) {
    let lower = text.to_ascii_lowercase();
    let has = |needle: &str| lower.contains(&needle.to_ascii_lowercase());
    if has("UnknownIssuer") || has("unknown issuer") {
        (
            "the API server's certificate is not signed by that CA".into(),
            match trust {
                Trust::Verified(s) if s.starts_with("the system") => "set ca_file to the \
                    cluster's CA (a kubeadm control plane has it in /etc/kubernetes/pki/ca.crt; \
                    a cluster's kubeconfig carries it as certificate-authority-data)"
                    .into(),
                _ => "point ca_file at the CA that signed the API server's certificate (a \
                    kubeadm control plane has it in /etc/kubernetes/pki/ca.crt; a cluster's \
                    kubeconfig carries it as certificate-authority-data)"
                    .into(),
            },
        )
    } else if has("NotValidForName") || has("not valid for name") {
        (
            "the API server's certificate does not name the host in the URL".into(),
            "use a host name or IP address the certificate lists in its subjectAltName (the \
             one in the cluster's own kubeconfig usually is)"
                .into(),
        )
    } else if has("Expired") {
        (
            "the API server's certificate has expired, or this host's clock is wrong".into(),
            "renew the API server's certificate; check this host's time (`timedatectl`)".into(),
        )
    } else if has("NotValidYet") {
        (
            "the API server's certificate is not valid yet: this host's clock is behind".into(),
            "check this host's time (`timedatectl`)".into(),
        )
    } else if has("alert") {
        (
            "the API server refused the TLS handshake".into(),
            "a client certificate in the credentials may be expired or signed by another \
             cluster's CA"
                .into(),
        )
    } else {
        (
            "the TLS handshake failed".into(),
            "check ca_file and the API server's certificate (`openssl s_client -connect \
             HOST:PORT -showcerts`)"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_are_explained() {
        let ca = Trust::Verified("ca_file /x".into());
        let (why, _) = tls_failure("invalid peer certificate: UnknownIssuer", &ca);
        assert!(why.contains("not signed by that CA"), "{why}");
        let (why, _) = tls_failure(
            "invalid peer certificate: certificate not valid for name \"10.0.0.1\"",
            &ca,
        );
        assert!(why.contains("does not name the host"), "{why}");
        let (why, _) = tls_failure("invalid peer certificate: Expired", &ca);
        assert!(why.contains("expired"), "{why}");
        let (why, _) = tls_failure("something else", &ca);
        assert_eq!(why, "the TLS handshake failed");
    }
}
