//! Authorization: the few RBAC rules the simulated clusters carry, and the
//! real server's wording for denials.

/// An authenticated (or anonymous) requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    pub fn anonymous() -> Self {
        Self {
            user: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }

    pub fn service_account(ns: &str, name: &str) -> Self {
        Self {
            user: format!("system:serviceaccount:{ns}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
        }
    }

    pub fn user(name: &str) -> Self {
        Self {
            user: name.into(),
            groups: vec!["system:authenticated".into()],
        }
    }

    pub fn is_authenticated(&self) -> bool {
        self.user != "system:anonymous"
    }
}

/// What a request wants to do on a core-group resource.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attributes<'a> {
    pub verb: &'a str,
    /// `resource` or `resource/subresource`.
    pub resource: &'a str,
    pub name: Option<&'a str>,
    pub namespace: Option<&'a str>,
}

struct Rule {
    verbs: &'static [&'static str],
    resources: &'static [&'static str],
    /// Empty: any name.
    resource_names: &'static [&'static str],
    /// `None`: cluster-wide (ClusterRoleBinding).
    namespace: Option<&'static str>,
}

impl Rule {
    fn allows(&self, a: &Attributes<'_>) -> bool {
        self.verbs.contains(&a.verb)
            && self.resources.contains(&a.resource)
            && (self.resource_names.is_empty()
                || a.name.is_some_and(|n| self.resource_names.contains(&n)))
            && (self.namespace.is_none() || self.namespace == a.namespace)
    }
}

/// The seed's ClusterRole `prometheus-test`, bound to `kube-system/prometheus-test`.
const PROMETHEUS_CLUSTER_ROLE: &[Rule] = &[
    Rule {
        verbs: &["get", "list", "watch"],
        resources: &["nodes", "services", "endpoints", "pods", "nodes/proxy"],
        resource_names: &[],
        namespace: None,
    },
    Rule {
        verbs: &["get"],
        resources: &["configmaps", "nodes/metrics"],
        resource_names: &[],
        namespace: None,
    },
];

/// Least privilege for minting the managed ServiceAccount's tokens.
const ISSUE_MANAGED_TOKEN: &[Rule] = &[Rule {
    verbs: &["create"],
    resources: &["serviceaccounts/token"],
    resource_names: &[super::cluster::MANAGED_NAME],
    namespace: Some(super::cluster::MANAGED_NAMESPACE),
}];

/// The authorizer of every simulated cluster.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub allow_self_renew: bool,
}

/// User name of the static issuer token.
pub(crate) const ISSUER_USER: &str = "mcprom-issuer";
/// User name of the static no-permission token.
pub(crate) const NOBODY_USER: &str = "nobody";

impl Policy {
    pub fn allows(&self, who: &Identity, a: &Attributes<'_>) -> bool {
        if who.groups.iter().any(|g| g == "system:masters") {
            return true;
        }
        let managed = format!(
            "system:serviceaccount:{}:{}",
            super::cluster::MANAGED_NAMESPACE,
            super::cluster::MANAGED_NAME
        );
        let rules: &[&[Rule]] = if who.user == managed {
            if self.allow_self_renew {
                &[PROMETHEUS_CLUSTER_ROLE, ISSUE_MANAGED_TOKEN]
            } else {
                &[PROMETHEUS_CLUSTER_ROLE]
            }
        } else if who.user == ISSUER_USER {
            &[ISSUE_MANAGED_TOKEN]
        } else {
            &[]
        };
        rules.iter().flat_map(|r| r.iter()).any(|r| r.allows(a))
    }

    /// Why `who` may do `a` in API group `group`, worded like the RBAC
    /// authorizer's reason in a `SelfSubjectAccessReview`; `None` when the
    /// request would be denied. The simulated rules cover the core group
    /// only, so other groups are for `system:masters` alone.
    pub fn allowed_because(
        &self,
        who: &Identity,
        group: &str,
        a: &Attributes<'_>,
    ) -> Option<String> {
        if who.groups.iter().any(|g| g == "system:masters") {
            return Some(
                "RBAC: allowed by ClusterRoleBinding \"cluster-admin\" of ClusterRole \"cluster-admin\" to Group \"system:masters\""
                    .into(),
            );
        }
        if !group.is_empty() || !self.allows(who, a) {
            return None;
        }
        let (ns, name) = (
            super::cluster::MANAGED_NAMESPACE,
            super::cluster::MANAGED_NAME,
        );
        Some(if who.user == ISSUER_USER {
            format!(
                "RBAC: allowed by RoleBinding \"{ISSUER_USER}/{ns}\" of Role \"{ISSUER_USER}\" to User \"{ISSUER_USER}\""
            )
        } else if PROMETHEUS_CLUSTER_ROLE.iter().any(|r| r.allows(a)) {
            format!(
                "RBAC: allowed by ClusterRoleBinding \"{name}\" of ClusterRole \"{name}\" to ServiceAccount \"{name}/{ns}\""
            )
        } else {
            format!(
                "RBAC: allowed by RoleBinding \"{name}-self-renew/{ns}\" of Role \"{name}-self-renew\" to ServiceAccount \"{name}/{ns}\""
            )
        })
    }

    /// Non-resource paths: discovery for authenticated users, version and
    /// health for everyone (`system:public-info-viewer`).
    pub fn allows_path(&self, who: &Identity, path: &str) -> bool {
        matches!(path, "/version" | "/healthz" | "/livez" | "/readyz") || who.is_authenticated()
    }
}

/// The real server's 403 message for a resource request.
pub(crate) fn forbidden_message(who: &Identity, a: &Attributes<'_>) -> String {
    let resource = a.resource.split('/').next().unwrap_or(a.resource);
    let object = match a.name {
        Some(n) => format!("{resource} \"{n}\""),
        None => resource.to_string(),
    };
    let scope = match a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    format!(
        "{object} is forbidden: User \"{}\" cannot {} resource \"{}\" in API group \"\" {scope}",
        who.user, a.verb, a.resource
    )
}

/// The real server's 403 message for a non-resource path.
pub(crate) fn forbidden_path_message(who: &Identity, verb: &str, path: &str) -> String {
    format!(
        "forbidden: User \"{}\" cannot {verb} path \"{path}\"",
        who.user
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create_token(name: &str) -> Attributes<'_> {
        Attributes {
            verb: "create",
            resource: "serviceaccounts/token",
            name: Some(name),
            namespace: Some("kube-system"),
        }
    }

    #[test]
    fn issuer_may_only_mint_the_managed_token() {
        let p = Policy {
            allow_self_renew: false,
        };
        let issuer = Identity::user(ISSUER_USER);
        assert!(p.allows(&issuer, &create_token("prometheus-test")));
        assert!(!p.allows(&issuer, &create_token("default")));
        let sa = Identity::service_account("kube-system", "prometheus-test");
        assert!(!p.allows(&sa, &create_token("prometheus-test")));
        let p = Policy {
            allow_self_renew: true,
        };
        assert!(p.allows(&sa, &create_token("prometheus-test")));
    }

    #[test]
    fn denial_messages_match_the_real_server() {
        assert_eq!(
            forbidden_message(&Identity::user("nobody"), &create_token("prometheus-test")),
            "serviceaccounts \"prometheus-test\" is forbidden: User \"nobody\" cannot create \
             resource \"serviceaccounts/token\" in API group \"\" in the namespace \"kube-system\""
        );
        let a = Attributes {
            verb: "get",
            resource: "nodes/proxy",
            name: Some("node-1"),
            namespace: None,
        };
        assert_eq!(
            forbidden_message(&Identity::user("x"), &a),
            "nodes \"node-1\" is forbidden: User \"x\" cannot get resource \"nodes/proxy\" in \
             API group \"\" at the cluster scope"
        );
    }
}
