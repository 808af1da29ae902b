//! Authentication (client certificate, bearer token: the fixed issuer and
//! nobody tokens, legacy token Secrets, signed ServiceAccount JWTs) and the
//! RBAC check that turns a refusal into a 403.

use crate::cluster::{Cluster, Rejection};
use crate::jwt::{ISSUER, VerifyError};
use crate::rbac::{self, Attributes, Identity, Policy};

use super::response::forbidden;
use super::{ConnInfo, Resp, Settings, now};

/// `Some(403 response)` if `who` may not do it.
pub(super) fn authorized(
    policy: &Policy,
    who: &Identity,
    verb: &str,
    resource: &str,
    name: Option<&str>,
    namespace: Option<&str>,
) -> Option<Resp> {
    let a = Attributes {
        verb,
        resource,
        name,
        namespace,
    };
    (!policy.allows(who, &a)).then(|| forbidden(who, &a))
}

pub(super) fn authenticate(
    settings: &Settings,
    cluster: &Cluster,
    conn: &ConnInfo,
    headers: &http::HeaderMap,
) -> Result<Identity, Rejection> {
    if let Some(id) = &conn.cert {
        return Ok(id.clone());
    }
    let Some(auth) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(Identity::anonymous());
    };
    let auth = auth.to_str().map_err(|_| Rejection::Unknown)?;
    let Some((scheme, token)) = auth.split_once(' ') else {
        return Ok(Identity::anonymous());
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Identity::anonymous());
    }
    authenticate_token(settings, cluster, token.trim(), now())
}

/// Checks a bearer token as of `now` (Unix seconds).
pub(crate) fn authenticate_token(
    settings: &Settings,
    cluster: &Cluster,
    token: &str,
    now: f64,
) -> Result<Identity, Rejection> {
    if token == cluster.issuer_token {
        return Ok(Identity::user(rbac::ISSUER_USER));
    }
    if token == cluster.nobody_token {
        return Ok(Identity::user(rbac::NOBODY_USER));
    }
    // A legacy token Secret's token: valid while the Secret and its
    // ServiceAccount (same uid) exist, never expiring.
    if let Some((ns, sa, uid)) = cluster.secrets.token_owner(token) {
        return match cluster.service_account_uid(&ns, &sa) {
            Some(current) if current == uid => Ok(Identity::service_account(&ns, &sa)),
            _ => Err(Rejection::Unknown),
        };
    }
    let signer = cluster.signer().map_err(|_| Rejection::Unknown)?;
    let claims = signer.verify(token).map_err(|e| match e {
        VerifyError::Malformed => Rejection::Unknown,
        VerifyError::BadSignature => Rejection::BadSignature,
    })?;
    if claims.iss != ISSUER || !claims.aud.iter().any(|a| settings.audiences.contains(a)) {
        return Err(Rejection::Unknown);
    }
    let leeway = settings.leeway.as_secs_f64();
    if claims.nbf as f64 > now + leeway || claims.iat as f64 > now + leeway {
        return Err(Rejection::NotYetValid);
    }
    if now - leeway > claims.exp as f64 {
        return Err(Rejection::Expired);
    }
    let k = &claims.kubernetes_io;
    match cluster.service_account_uid(&k.namespace, &k.serviceaccount.name) {
        Some(uid) if uid == k.serviceaccount.uid => Ok(Identity {
            credential_id: Some(format!("JTI={}", claims.jti)),
            uid: Some(uid),
            ..Identity::service_account(&k.namespace, &k.serviceaccount.name)
        }),
        _ => Err(Rejection::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::jwt::{Claims, KubernetesClaim, ServiceAccountRef};

    fn settings() -> Settings {
        Settings {
            min_expiration: Duration::from_secs(600),
            max_expiration: None,
            leeway: Duration::ZERO,
            audiences: vec![ISSUER.to_string()],
            policy: Policy {
                allow_self_renew: false,
            },
            nodes: vec!["node-1".into()],
        }
    }

    fn token_for(c: &Cluster, iat: i64, exp: i64) -> String {
        let uid = c
            .service_account_uid("kube-system", "prometheus-test")
            .unwrap();
        c.signer()
            .unwrap()
            .sign(&Claims {
                aud: vec![ISSUER.into()],
                exp,
                iat,
                iss: ISSUER.into(),
                jti: "x".into(),
                kubernetes_io: KubernetesClaim {
                    namespace: "kube-system".into(),
                    serviceaccount: ServiceAccountRef {
                        name: "prometheus-test".into(),
                        uid,
                    },
                },
                nbf: iat,
                sub: "system:serviceaccount:kube-system:prometheus-test".into(),
            })
            .unwrap()
    }

    #[test]
    fn token_validity_follows_exp_nbf_and_leeway() {
        let c = Cluster::new("c1".into());
        let mut s = settings();
        let t = token_for(&c, 1000, 2000);
        assert!(authenticate_token(&s, &c, &t, 1500.0).is_ok());
        assert_eq!(
            authenticate_token(&s, &c, &t, 2000.5),
            Err(Rejection::Expired)
        );
        assert_eq!(
            authenticate_token(&s, &c, &t, 999.0),
            Err(Rejection::NotYetValid)
        );
        s.leeway = Duration::from_secs(60);
        assert!(authenticate_token(&s, &c, &t, 2059.0).is_ok());
        assert_eq!(
            authenticate_token(&s, &c, &t, 2061.0),
            Err(Rejection::Expired)
        );
    }

    #[test]
    fn foreign_deleted_and_garbage_tokens_are_rejected() {
        let c1 = Cluster::new("c1".into());
        let c2 = Cluster::new("c2".into());
        let s = settings();
        let t = token_for(&c1, 1000, 2000);
        assert_eq!(
            authenticate_token(&s, &c2, &t, 1500.0),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            authenticate_token(&s, &c1, "garbage", 1500.0),
            Err(Rejection::Unknown)
        );
        assert_eq!(
            authenticate_token(&s, &c1, &c2.issuer_token, 1500.0),
            Err(Rejection::Unknown)
        );
        c1.delete_service_account("kube-system", "prometheus-test");
        c1.create_service_account("kube-system", "prometheus-test");
        assert_eq!(
            authenticate_token(&s, &c1, &t, 1500.0),
            Err(Rejection::Unknown)
        );
    }

    #[test]
    fn a_rotated_signing_key_rejects_every_earlier_token_and_signs_new_ones() {
        let c = Cluster::new("c1".into());
        let s = settings();
        let old = token_for(&c, 1000, 2000);
        assert!(authenticate_token(&s, &c, &old, 1500.0).is_ok());
        c.rotate_signing_key().unwrap();
        assert_eq!(
            authenticate_token(&s, &c, &old, 1500.0),
            Err(Rejection::BadSignature)
        );
        let new = token_for(&c, 1000, 2000);
        assert!(authenticate_token(&s, &c, &new, 1500.0).is_ok());
    }
}
