//! `mcprom rbac`: the Kubernetes objects one cluster needs, as
//! multi-document YAML for `kubectl apply -f -`.
//!
//! - the ServiceAccount whose tokens Prometheus scrapes with;
//! - a ClusterRole and ClusterRoleBinding that let it read what Prometheus
//!   scrapes (the seed procedure's rules, with ingresses from
//!   `networking.k8s.io`, where they live since Kubernetes 1.22);
//! - a Role in the ServiceAccount's namespace allowing `create` on
//!   `serviceaccounts/token` for that ServiceAccount only (`resourceNames`),
//!   and a RoleBinding granting it to whoever mints the tokens: the identity
//!   of `[cluster.credentials]` where mcprom can tell it, the ServiceAccount
//!   itself for self-renewal, or a clearly marked placeholder.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::config::AuthInfo;
use rustls_pki_types::{CertificateDer, pem::PemObject};
use secrecy::ExposeSecret;

use super::{comment, decode_data};
use crate::apiserver::kubeconfig_entry;
use crate::config::{ClusterSettings, Credentials, ServiceAccountRef};
use crate::token::Claims;

/// The user name bound when mcprom cannot tell who mints the tokens.
pub const PLACEHOLDER_USER: &str = "REPLACE-WITH-ISSUER-IDENTITY";

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "mcprom");

/// Who calls TokenRequest for a cluster, as far as its credentials tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerIdentity {
    /// A ServiceAccount: the managed one itself (self-renewal), or the
    /// owner of a ServiceAccount token used as the credential.
    ServiceAccount {
        /// The ServiceAccount.
        account: ServiceAccountRef,
        /// Where it was found, for the comment.
        source: String,
    },
    /// A user: a client certificate's CN, or a kubeconfig's `as` user.
    User {
        /// The user name.
        name: String,
        /// Where it was found, for the comment.
        source: String,
        /// Groups (client certificate O) that already grant everything.
        privileged_groups: Vec<String>,
    },
    /// Not derivable (a bearer token that is not a ServiceAccount token, an
    /// exec plugin, an unreadable file): the binding gets a placeholder.
    Unknown {
        /// Why, for the comment and the warning.
        why: String,
    },
}

impl IssuerIdentity {
    /// Work out who authenticates with `cluster`'s credentials. Reads the
    /// credential files, never fails: what cannot be told is `Unknown`.
    pub fn of(cluster: &ClusterSettings) -> IssuerIdentity {
        match &cluster.credentials {
            Credentials::SelfRenew => IssuerIdentity::ServiceAccount {
                account: cluster.service_account.clone(),
                source: "credentials.self = true: the ServiceAccount renews its own token".into(),
            },
            Credentials::ClientCert { cert, .. } => from_cert_file(cert, "credentials.client_cert"),
            Credentials::TokenFile(path) => from_token_file(path, "credentials.token_file"),
            Credentials::Kubeconfig { path, context } => {
                match kubeconfig_entry(path, context.as_deref()) {
                    Ok(entry) => {
                        from_auth_info(&entry.user, &format!("kubeconfig {}", path.display()))
                    }
                    Err(why) => IssuerIdentity::Unknown { why },
                }
            }
        }
    }

    fn subject(&self) -> Subject {
        match self {
            IssuerIdentity::ServiceAccount { account, .. } => Subject {
                kind: "ServiceAccount".into(),
                name: account.name.clone(),
                namespace: Some(account.namespace.clone()),
                api_group: None,
            },
            IssuerIdentity::User { name, .. } => user_subject(name),
            IssuerIdentity::Unknown { .. } => user_subject(PLACEHOLDER_USER),
        }
    }
}

fn user_subject(name: &str) -> Subject {
    Subject {
        kind: "User".into(),
        name: name.into(),
        api_group: Some(RBAC_GROUP.into()),
        namespace: None,
    }
}

fn from_auth_info(user: &AuthInfo, source: &str) -> IssuerIdentity {
    if let Some(name) = &user.impersonate {
        return IssuerIdentity::User {
            name: name.clone(),
            source: format!("{source} (impersonated user, `as`)"),
            privileged_groups: vec![],
        };
    }
    if let Some(data) = &user.client_certificate_data {
        return match decode_data("client-certificate-data", data) {
            Ok(pem) => from_cert_pem(&pem, &format!("{source}, client-certificate-data")),
            Err(why) => IssuerIdentity::Unknown {
                why: format!("{source}: {why}"),
            },
        };
    }
    if let Some(path) = &user.client_certificate {
        return from_cert_file(Path::new(path), &format!("{source}, client-certificate"));
    }
    if let Some(token) = &user.token {
        return from_token(token.expose_secret(), &format!("{source}, token"));
    }
    if let Some(path) = &user.token_file {
        return from_token_file(Path::new(path), &format!("{source}, tokenFile"));
    }
    let why = if let Some(exec) = &user.exec {
        format!(
            "{source} authenticates with an exec plugin ({}), whose user name only the cluster knows",
            exec.command.as_deref().unwrap_or("no command")
        )
    } else if let Some(provider) = &user.auth_provider {
        format!(
            "{source} authenticates with the {:?} auth provider, whose user name only the cluster knows",
            provider.name
        )
    } else {
        format!("{source} names no client certificate and no token for its user")
    };
    IssuerIdentity::Unknown { why }
}

fn from_cert_file(path: &Path, source: &str) -> IssuerIdentity {
    match crate::config::input::read(path) {
        Ok(pem) => from_cert_pem(&pem, &format!("{source} {}", path.display())),
        Err(e) => IssuerIdentity::Unknown {
            why: format!("cannot read {source} {}: {e}", path.display()),
        },
    }
}

/// The user a client certificate authenticates as: its subject CN (and
/// its O are its groups).
fn from_cert_pem(pem: &[u8], source: &str) -> IssuerIdentity {
    let unknown = |why: String| IssuerIdentity::Unknown {
        why: format!("{source}: {why}"),
    };
    let der = match CertificateDer::pem_slice_iter(pem).next() {
        Some(Ok(der)) => der,
        Some(Err(e)) => return unknown(format!("not a PEM certificate ({e})")),
        None => return unknown("no PEM certificate in it".into()),
    };
    let cert = match x509_parser::parse_x509_certificate(&der) {
        Ok((_, cert)) => cert,
        Err(e) => return unknown(format!("not an X.509 certificate ({e})")),
    };
    let subject = cert.subject();
    let Some(name) = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    else {
        return unknown("the certificate has no subject CN".into());
    };
    let privileged_groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .filter(|o| *o == "system:masters")
        .map(str::to_owned)
        .collect();
    IssuerIdentity::User {
        name: name.to_owned(),
        source: format!("{source} (certificate CN)"),
        privileged_groups,
    }
}

fn from_token_file(path: &Path, source: &str) -> IssuerIdentity {
    match crate::sink::read_token(path) {
        Ok(token) => from_token(token.expose(), &format!("{source} {}", path.display())),
        Err(e) => IssuerIdentity::Unknown {
            why: format!("cannot read a token from {source} {}: {e}", path.display()),
        },
    }
}

/// A ServiceAccount token names its account in `sub`; any other bearer
/// token's user name is known only to the cluster's authenticator.
fn from_token(token: &str, source: &str) -> IssuerIdentity {
    let subject = Claims::peek(token).ok().and_then(|c| c.subject);
    let account = subject.as_deref().and_then(|sub| {
        let rest = sub.strip_prefix("system:serviceaccount:")?;
        let (namespace, name) = rest.split_once(':')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then(|| {
            ServiceAccountRef {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }
        })
    });
    match account {
        Some(account) => IssuerIdentity::ServiceAccount {
            account,
            source: format!("{source} (a ServiceAccount token: its sub claim)"),
        },
        None => IssuerIdentity::Unknown {
            why: format!(
                "{source} is a bearer token that is not a ServiceAccount token; its user name is known only to the cluster"
            ),
        },
    }
}

/// The objects one cluster needs, typed.
#[derive(Debug, Clone)]
pub struct Manifests {
    /// The cluster they are for.
    pub cluster: String,
    /// The ServiceAccount whose tokens Prometheus uses.
    pub service_account: ServiceAccount,
    /// Read access to what Prometheus scrapes.
    pub cluster_role: ClusterRole,
    /// Grants `cluster_role` to the ServiceAccount.
    pub cluster_role_binding: ClusterRoleBinding,
    /// `create` on `serviceaccounts/token` for the ServiceAccount only.
    pub role: Role,
    /// Grants `role` to the issuing identity.
    pub role_binding: RoleBinding,
    /// Who the role binding names.
    pub issuer: IssuerIdentity,
}

fn metadata(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(BTreeMap::from([(PART_OF.0.into(), PART_OF.1.into())])),
        ..ObjectMeta::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..PolicyRule::default()
    }
}

/// Read access for Prometheus: the seed procedure's rules, with ingresses in
/// `networking.k8s.io` (the `extensions` group lost them in 1.22) and
/// EndpointSlices, which Prometheus's `endpointslice` discovery reads.
pub fn scrape_rules() -> Vec<PolicyRule> {
    let read = ["get", "list", "watch"];
    vec![
        rule(
            &[""],
            &["nodes", "nodes/proxy", "services", "endpoints", "pods"],
            &read,
        ),
        rule(&["networking.k8s.io"], &["ingresses"], &read),
        rule(&["discovery.k8s.io"], &["endpointslices"], &read),
        rule(&[""], &["configmaps", "nodes/metrics"], &["get"]),
        PolicyRule {
            non_resource_urls: Some(strings(&["/metrics"])),
            verbs: strings(&["get"]),
            ..PolicyRule::default()
        },
    ]
}

impl Manifests {
    /// The manifests for `cluster` (reads its credential files to name the
    /// issuing identity).
    pub fn for_cluster(cluster: &ClusterSettings) -> Manifests {
        Self::with_issuer(cluster, IssuerIdentity::of(cluster))
    }

    /// The manifests for `cluster`, binding the token rule to `issuer`.
    pub fn with_issuer(cluster: &ClusterSettings, issuer: IssuerIdentity) -> Manifests {
        let sa = &cluster.service_account;
        let ns = Some(sa.namespace.as_str());
        let scrape_name = format!("mcprom:scrape:{}:{}", sa.namespace, sa.name);
        let token_name = format!("mcprom:issue-token:{}", sa.name);
        let sa_subject = Subject {
            kind: "ServiceAccount".into(),
            name: sa.name.clone(),
            namespace: Some(sa.namespace.clone()),
            api_group: None,
        };
        Manifests {
            cluster: cluster.name.clone(),
            service_account: ServiceAccount {
                metadata: metadata(&sa.name, ns),
                ..ServiceAccount::default()
            },
            cluster_role: ClusterRole {
                metadata: metadata(&scrape_name, None),
                rules: Some(scrape_rules()),
                ..ClusterRole::default()
            },
            cluster_role_binding: ClusterRoleBinding {
                metadata: metadata(&scrape_name, None),
                role_ref: RoleRef {
                    api_group: RBAC_GROUP.into(),
                    kind: "ClusterRole".into(),
                    name: scrape_name.clone(),
                },
                subjects: Some(vec![sa_subject]),
            },
            role: Role {
                metadata: metadata(&token_name, ns),
                rules: Some(vec![PolicyRule {
                    resource_names: Some(vec![sa.name.clone()]),
                    ..rule(&[""], &["serviceaccounts/token"], &["create"])
                }]),
            },
            role_binding: RoleBinding {
                metadata: metadata(&token_name, ns),
                role_ref: RoleRef {
                    api_group: RBAC_GROUP.into(),
                    kind: "Role".into(),
                    name: token_name.clone(),
                },
                subjects: Some(vec![issuer.subject()]),
            },
            issuer,
        }
    }

    /// What the user must know before applying (shown on stderr too).
    pub fn warnings(&self) -> Vec<String> {
        match &self.issuer {
            IssuerIdentity::Unknown { why } => vec![format!(
                "cluster {:?}: the RoleBinding names the placeholder user {PLACEHOLDER_USER}: {why}; \
                 replace it with the user that mints the tokens (`kubectl auth whoami` with that \
                 credential prints it) before applying",
                self.cluster
            )],
            _ => vec![],
        }
    }

    /// Multi-document YAML, each document preceded by comments saying what
    /// it is for.
    pub fn to_yaml(&self, config: &Path) -> Result<String, serde_yaml_ng::Error> {
        let sa = self
            .service_account
            .metadata
            .name
            .as_deref()
            .unwrap_or_default();
        let ns = self
            .service_account
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default();
        let mut out = String::new();
        let mut document = |notes: &str, body: String| {
            out.push_str("---\n");
            out.push_str(&comment(notes));
            out.push_str(&body);
        };
        document(
            &format!(
                "mcprom rbac {cluster}: what cluster {cluster:?} needs (from {config}).\n\
                 Apply it to that cluster: {mcprom} rbac {cluster} | kubectl apply -f -\n\
                 \n\
                 The ServiceAccount whose short-lived tokens Prometheus scrapes with.",
                cluster = self.cluster,
                config = config.display(),
                mcprom = crate::selfrenew::mcprom_command(config),
            ),
            to_yaml(&self.service_account)?,
        );
        document(
            "Read access for Prometheus: nodes and their kubelet (proxy, metrics), services,\n\
             endpoints and EndpointSlices, pods, ingresses, configmaps and /metrics.\n\
             Read only: nothing can be changed with it.",
            to_yaml(&self.cluster_role)?,
        );
        document(
            &format!("Grants the read access to {ns}/{sa}."),
            to_yaml(&self.cluster_role_binding)?,
        );
        document(
            &format!(
                "Least privilege for minting tokens: create on serviceaccounts/token for {ns}/{sa}\n\
                 only (resourceNames). It lets the holder obtain {sa}'s tokens, nothing else."
            ),
            to_yaml(&self.role)?,
        );
        let binding_note = match &self.issuer {
            IssuerIdentity::ServiceAccount { account, source }
                if account.name == sa && account.namespace == ns =>
            {
                format!(
                    "Self-renewal ({source}).\n\
                 A stolen token can renew itself too: set max_chain_age to bound the chain."
                )
            }
            IssuerIdentity::ServiceAccount { account, source } => format!(
                "Grants token minting to ServiceAccount {account}, which mcprom authenticates as\n\
                 ({source})."
            ),
            IssuerIdentity::User {
                name,
                source,
                privileged_groups,
            } => {
                let mut note = format!(
                    "Grants token minting to user {name:?}, which mcprom authenticates as\n({source})."
                );
                if !privileged_groups.is_empty() {
                    note.push_str(&format!(
                        "\nThat identity is in {}, which may already do everything: this binding is\n\
                         then redundant. Prefer a dedicated identity that holds only this Role.",
                        privileged_groups.join(", ")
                    ));
                }
                note
            }
            IssuerIdentity::Unknown { why } => format!(
                "PLACEHOLDER: replace {PLACEHOLDER_USER} below with the user that mints the tokens.\n\
                 mcprom cannot tell it: {why}.\n\
                 `kubectl auth whoami` run with that credential prints the name (or bind a Group)."
            ),
        };
        document(&binding_note, to_yaml(&self.role_binding)?);
        Ok(out)
    }
}

fn to_yaml(object: &impl serde::Serialize) -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(object)
}

/// Manifests for `clusters` as one YAML stream, and the warnings to show.
pub fn render(
    clusters: &[&ClusterSettings],
    config: &Path,
) -> Result<(String, Vec<String>), serde_yaml_ng::Error> {
    let mut yaml = String::new();
    let mut warnings = Vec::new();
    for cluster in clusters {
        let manifests = Manifests::for_cluster(cluster);
        yaml.push_str(&manifests.to_yaml(config)?);
        warnings.extend(manifests.warnings());
    }
    Ok((yaml, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(credentials: Credentials) -> ClusterSettings {
        ClusterSettings {
            service_account: ServiceAccountRef {
                namespace: "monitoring".into(),
                name: "prometheus".into(),
            },
            credentials,
            ..ClusterSettings::example()
        }
    }

    fn jwt(claims: &str) -> String {
        use base64::Engine as _;
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.{}", e("{}"), e(claims), e("sig"))
    }

    fn cert_pem(cn: &str, orgs: &[&str]) -> String {
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *o);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn self_renewal_binds_the_token_rule_to_the_service_account_itself() {
        let m = Manifests::for_cluster(&cluster(Credentials::SelfRenew));
        let subjects = m.role_binding.subjects.clone().unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, "prometheus");
        assert_eq!(subjects[0].namespace.as_deref(), Some("monitoring"));
        let rules = m.role.rules.clone().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].verbs, vec!["create"]);
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["serviceaccounts/token".to_string()][..])
        );
        assert_eq!(
            rules[0].resource_names.as_deref(),
            Some(&["prometheus".to_string()][..])
        );
        assert_eq!(m.role.metadata.namespace.as_deref(), Some("monitoring"));
        assert!(m.warnings().is_empty());
    }

    #[test]
    fn ingresses_come_from_networking_not_extensions() {
        let rules = scrape_rules();
        let ingress = rules
            .iter()
            .find(|r| {
                r.resources
                    .as_ref()
                    .is_some_and(|r| r.contains(&"ingresses".to_string()))
            })
            .unwrap();
        assert_eq!(
            ingress.api_groups.as_deref(),
            Some(&["networking.k8s.io".to_string()][..])
        );
        assert!(
            !rules
                .iter()
                .flat_map(|r| r.api_groups.iter().flatten())
                .any(|g| g == "extensions")
        );
    }

    #[test]
    fn a_client_certificate_names_its_cn_as_the_user() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("client.crt");
        std::fs::write(&cert, cert_pem("mcprom-issuer", &["ops"])).unwrap();
        let c = cluster(Credentials::ClientCert {
            cert: cert.clone(),
            key: dir.path().join("client.key"),
        });
        match IssuerIdentity::of(&c) {
            IssuerIdentity::User {
                name,
                privileged_groups,
                ..
            } => {
                assert_eq!(name, "mcprom-issuer");
                assert!(privileged_groups.is_empty());
            }
            other => panic!("{other:?}"),
        }
        // An admin certificate is named, with a note that it is redundant.
        std::fs::write(&cert, cert_pem("admin", &["system:masters"])).unwrap();
        let m = Manifests::for_cluster(&c);
        let yaml = m.to_yaml(Path::new("/etc/mcprom.toml")).unwrap();
        assert!(
            yaml.contains("system:masters, which may already do everything"),
            "{yaml}"
        );
        assert_eq!(m.role_binding.subjects.unwrap()[0].name, "admin");
    }

    #[test]
    fn a_kubeconfig_user_is_derived_from_its_embedded_certificate() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        let data = base64::engine::general_purpose::STANDARD.encode(cert_pem("issuer-cn", &[]));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: x\nclusters:\n- name: x\n  cluster:\n    server: https://h\n\
                 users:\n- name: x\n  user:\n    client-certificate-data: {data}\n    client-key-data: eA==\n\
                 contexts:\n- name: x\n  context:\n    cluster: x\n    user: x\n"
            ),
        )
        .unwrap();
        let c = cluster(Credentials::Kubeconfig {
            path,
            context: None,
        });
        assert!(matches!(
            IssuerIdentity::of(&c),
            IssuerIdentity::User { name, .. } if name == "issuer-cn"
        ));
    }

    #[test]
    fn a_service_account_token_names_its_account_and_other_tokens_get_the_placeholder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issuer.token");
        let sa_token = jwt(r#"{"sub":"system:serviceaccount:ops:minter","exp":1}"#);
        std::fs::write(&path, &sa_token).unwrap();
        let c = cluster(Credentials::TokenFile(path.clone()));
        let m = Manifests::for_cluster(&c);
        let subject = &m.role_binding.subjects.as_ref().unwrap()[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", "minter", Some("ops"))
        );

        let oidc = jwt(r#"{"sub":"8f2c1e","exp":1}"#);
        std::fs::write(&path, &oidc).unwrap();
        let m = Manifests::for_cluster(&c);
        assert_eq!(
            m.role_binding.subjects.as_ref().unwrap()[0].name,
            PLACEHOLDER_USER
        );
        let yaml = m.to_yaml(Path::new("/etc/mcprom.toml")).unwrap();
        assert!(
            yaml.contains("# PLACEHOLDER: replace REPLACE-WITH-ISSUER-IDENTITY"),
            "{yaml}"
        );
        assert!(!yaml.contains(&oidc), "the token leaked");
        assert_eq!(m.warnings().len(), 1);
        assert!(!m.warnings()[0].contains(&oidc));
    }

    #[test]
    fn an_exec_plugin_or_a_missing_file_gets_the_placeholder_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: x\nclusters:\n- name: x\n  cluster:\n    server: https://h\n\
             users:\n- name: x\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: aws\n\
             contexts:\n- name: x\n  context:\n    cluster: x\n    user: x\n",
        )
        .unwrap();
        let c = cluster(Credentials::Kubeconfig {
            path,
            context: None,
        });
        assert!(matches!(
            IssuerIdentity::of(&c),
            IssuerIdentity::Unknown { why } if why.contains("exec plugin (aws)")
        ));
        let c = cluster(Credentials::ClientCert {
            cert: dir.path().join("nope.crt"),
            key: dir.path().join("nope.key"),
        });
        assert!(matches!(
            IssuerIdentity::of(&c),
            IssuerIdentity::Unknown { why } if why.contains("nope.crt")
        ));
    }
}
