//! Certificates for a simulated API server: a CA, a serving certificate for
//! `127.0.0.1`/`localhost`, and client certificates (CN = user, O = groups).

use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, date_time_ymd,
};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A PEM certificate with its PEM private key.
#[derive(Clone)]
pub struct CertAndKey {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey").finish_non_exhaustive()
    }
}

/// A CA together with what a listener and an admin need.
pub struct Pki {
    /// CA certificate, PEM (what `ca.crt` contains).
    pub ca_pem: String,
    /// The admin client certificate (CN=kubernetes-admin, O=system:masters).
    pub admin: CertAndKey,
    /// TLS configuration of the listener (client certificates optional).
    pub server_config: Arc<ServerConfig>,
}

fn params(cn: &str, orgs: &[&str]) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.not_before = date_time_ymd(2000, 1, 1);
    p.not_after = date_time_ymd(2099, 12, 31);
    Ok(p)
}

fn key() -> anyhow::Result<KeyPair> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("failed to generate a P-256 key")
}

impl Pki {
    /// Generates a CA named `name`, a serving certificate and the admin
    /// client certificate. With `session_tickets` the listener issues them
    /// like Go's server ([`crate::tickets`]); without, it is like a Go
    /// server with `SessionTicketsDisabled` (every connection a full
    /// handshake).
    pub fn generate_with(name: &str, session_tickets: bool) -> anyhow::Result<Self> {
        let ca_key = key()?;
        let mut ca_params = params(&format!("mcprom-sim-ca-{name}"), &[])?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca_der = ca_cert.der().clone();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = key()?;
        let mut server_params = CertificateParams::new(vec!["localhost".to_string()])?;
        server_params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(
                std::net::Ipv4Addr::LOCALHOST.into(),
            ));
        server_params.distinguished_name = {
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "kube-apiserver");
            dn
        };
        server_params.not_before = date_time_ymd(2000, 1, 1);
        server_params.not_after = date_time_ymd(2099, 12, 31);
        server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params.signed_by(&server_key, &issuer)?;

        let admin = client_cert(&issuer, "kubernetes-admin", &["system:masters"])?;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der.clone())?;
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .allow_unauthenticated()
            .build()
            .context("failed to build the client certificate verifier")?;
        // Like the real kube-apiserver: Go's crypto/tls picks the TLS 1.3
        // suite itself (it ignores the client's order) and, on CPUs with
        // AES-GCM instructions, prefers TLS_AES_128_GCM_SHA256.
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut server_config = ServerConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![server_cert.der().clone(), ca_der],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .context("failed to build the TLS server configuration")?;
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        server_config.ignore_client_order = true;
        // Go resumes by ticket only (no server-side session cache) and
        // sends one TLS 1.3 ticket per connection.
        server_config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        if session_tickets {
            server_config.ticketer = Arc::new(crate::tickets::GoTicketer::new());
            server_config.send_tls13_tickets = 1;
        } else {
            server_config.send_tls13_tickets = 0;
        }
        Ok(Self {
            ca_pem: ca_cert.pem(),
            admin,
            server_config: Arc::new(server_config),
        })
    }
}

fn client_cert(
    issuer: &Issuer<'_, KeyPair>,
    user: &str,
    groups: &[&str],
) -> anyhow::Result<CertAndKey> {
    let k = key()?;
    let mut p = params(user, groups)?;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&k, issuer)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: k.serialize_pem(),
    })
}

/// The user (CN) and groups (O) of a verified client certificate.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<(String, Vec<String>)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    Some((cn, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_certificate_carries_user_and_group() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pki = Pki::generate_with("t", true).unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(pki.admin.cert_pem.as_bytes())
            .map(|c: CertificateDer<'static>| c)
            .unwrap();
        assert_eq!(
            identity_of(&der),
            Some(("kubernetes-admin".into(), vec!["system:masters".into()]))
        );
    }

    #[test]
    fn the_server_chooses_aes_128_gcm_like_go_whatever_the_client_prefers() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pki = Pki::generate_with("t", true).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for ca in <CertificateDer<'_> as rustls_pki_types::pem::PemObject>::pem_slice_iter(
            pki.ca_pem.as_bytes(),
        ) {
            roots.add(ca.unwrap()).unwrap();
        }
        // rustls' own default order puts TLS13_AES_256_GCM_SHA384 first.
        let client_config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert_eq!(
            client_config.crypto_provider().cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        );
        let mut client = rustls::Connection::from(
            rustls::ClientConnection::new(Arc::new(client_config), "127.0.0.1".try_into().unwrap())
                .unwrap(),
        );
        let mut server = rustls::Connection::from(
            rustls::ServerConnection::new(pki.server_config.clone()).unwrap(),
        );
        for _ in 0..10 {
            transfer(&mut client, &mut server);
            transfer(&mut server, &mut client);
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        assert!(!client.is_handshaking(), "handshake finished");
        assert_eq!(
            client.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }

    /// Move what `from` has to send into `to`, in memory.
    fn transfer(from: &mut rustls::Connection, to: &mut rustls::Connection) {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
        }
        to.process_new_packets().unwrap();
    }
}
