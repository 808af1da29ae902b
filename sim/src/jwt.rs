//! ES256 ServiceAccount tokens, signed and verified the way kube-apiserver
//! does it (compact JWS, `kid` derived from the public key).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};

/// The issuer every simulated cluster puts in its tokens.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The `kubernetes.io` private claim.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KubernetesClaim {
    /// Namespace of the ServiceAccount.
    pub namespace: String,
    /// The ServiceAccount the token was issued for.
    pub serviceaccount: ServiceAccountRef,
}

/// Name and uid of a ServiceAccount.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountRef {
    /// ServiceAccount name.
    pub name: String,
    /// ServiceAccount uid; a recreated ServiceAccount gets a new one.
    pub uid: String,
}

/// The claims of a simulated ServiceAccount token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Issuer.
    pub iss: String,
    /// Unique token id.
    pub jti: String,
    /// `kubernetes.io` claim.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes_io: KubernetesClaim,
    /// Not before, Unix seconds.
    pub nbf: i64,
    /// `system:serviceaccount:<ns>:<name>`.
    pub sub: String,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    kid: String,
}

/// Why a presented token was not accepted (before time checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// Not a JWT of ours at all (wrong shape, wrong algorithm, bad JSON).
    Malformed,
    /// Well-formed but not signed by this cluster's key.
    BadSignature,
}

/// A cluster's token signing key.
pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Generates a fresh P-256 signing key.
    pub fn generate() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("failed to generate an ECDSA P-256 signing key"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow::anyhow!("failed to load the generated signing key"))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = B64.encode(digest.as_ref());
        Ok(Self { key, kid, rng })
    }

    /// Key id put in the JWT header.
    #[cfg(test)]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `claims` (a [`Claims`], or the claim set of a legacy token)
    /// into a compact JWS.
    pub fn sign(&self, claims: &impl Serialize) -> anyhow::Result<String> {
        let header = Header {
            alg: "ES256".into(),
            kid: self.kid.clone(),
        };
        let mut out = B64.encode(serde_json::to_vec(&header)?);
        out.push('.');
        out.push_str(&B64.encode(serde_json::to_vec(claims)?));
        let sig = self
            .key
            .sign(&self.rng, out.as_bytes())
            .map_err(|_| anyhow::anyhow!("ECDSA signing failed"))?;
        out.push('.');
        out.push_str(&B64.encode(sig.as_ref()));
        Ok(out)
    }

    /// Checks the signature of `token` and returns its claims (no time checks).
    pub fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        let (claims, _) = decode_unverified(token)?;
        let Some((signed, sig)) = token.rsplit_once('.') else {
            return Err(VerifyError::Malformed);
        };
        let sig = B64.decode(sig).map_err(|_| VerifyError::Malformed)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(signed.as_bytes(), &sig)
            .map_err(|_| VerifyError::BadSignature)?;
        Ok(claims)
    }
}

/// Decodes header and claims without checking the signature; `Malformed` if
/// the token is not an ES256 JWT with our claim set.
pub fn decode_unverified(token: &str) -> Result<(Claims, String), VerifyError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed);
    };
    let header: Header = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(VerifyError::Malformed)?;
    if header.alg != "ES256" {
        return Err(VerifyError::Malformed);
    }
    let claims: Claims = B64
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(VerifyError::Malformed)?;
    Ok((claims, header.kid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            aud: vec![ISSUER.into()],
            exp: 2000,
            iat: 1000,
            iss: ISSUER.into(),
            jti: "j".into(),
            kubernetes_io: KubernetesClaim {
                namespace: "ns".into(),
                serviceaccount: ServiceAccountRef {
                    name: "sa".into(),
                    uid: "u".into(),
                },
            },
            nbf: 1000,
            sub: "system:serviceaccount:ns:sa".into(),
        }
    }

    #[test]
    fn signed_tokens_verify_with_their_own_key_only() {
        let a = Signer::generate().unwrap();
        let b = Signer::generate().unwrap();
        let token = a.sign(&claims()).unwrap();
        assert_eq!(a.verify(&token).unwrap(), claims());
        assert_eq!(b.verify(&token), Err(VerifyError::BadSignature));
        assert_eq!(a.verify("not.a.jwt"), Err(VerifyError::Malformed));
        assert_eq!(a.verify(""), Err(VerifyError::Malformed));
        let (_, kid) = decode_unverified(&token).unwrap();
        assert_eq!(kid, a.kid());
    }
}
