//! Tokens: a secret string that never prints itself, and a peek at its claims.
//!
//! mcprom never verifies signatures (it is not the audience of the tokens);
//! it only reads `sub`, `aud`, `iat` and `exp` to schedule refreshes and to
//! decide whether a token already on disk can be adopted.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// Upper bound on the size of a token mcprom writes or adopts.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// A bearer token. `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wrap a token value, checking that it looks like a JWT (three
    /// base64url parts, bounded size). Surrounding whitespace is trimmed.
    pub fn new(value: impl Into<String>) -> Result<Self, TokenError> {
        let mut value: String = value.into();
        let trimmed = value.trim();
        if trimmed.len() != value.len() {
            value = trimmed.to_owned();
        }
        check_shape(&value)?;
        Ok(Token(value))
    }

    /// The secret value, for writing to the token file or an HTTP header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Decode the claims mcprom cares about.
    pub fn claims(&self) -> Result<Claims, TokenError> {
        Claims::peek(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a value is not a usable token. Never contains the value itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Empty value.
    #[error("the token is empty")]
    Empty,
    /// Larger than [`MAX_TOKEN_LEN`].
    #[error("the token is {0} bytes long, more than the {MAX_TOKEN_LEN} allowed")]
    TooLong(usize),
    /// Not three non-empty base64url parts.
    #[error("the token is not a JWT (expected three base64url parts separated by dots)")]
    NotJwt,
    /// The payload is not base64url JSON with the expected claims.
    #[error("the token's claims cannot be read: {0}")]
    Claims(String),
}

fn check_shape(value: &str) -> Result<(), TokenError> {
    if value.is_empty() {
        return Err(TokenError::Empty);
    }
    if value.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong(value.len()));
    }
    let parts: Vec<&str> = value.split('.').collect();
    let base64url = |p: &&str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if parts.len() != 3 || !parts.iter().all(base64url) {
        return Err(TokenError::NotJwt);
    }
    Ok(())
}

/// The claims of a ServiceAccount token that mcprom reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `sub`, e.g. `system:serviceaccount:kube-system:prometheus-test`.
    pub subject: Option<String>,
    /// `aud`, normalised to a list.
    pub audiences: Vec<String>,
    /// `iat` (seconds since the epoch).
    pub issued_at: Option<u64>,
    /// `exp` (seconds since the epoch).
    pub expires_at: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    aud: Option<Audience>,
    iat: Option<f64>,
    exp: Option<f64>,
}

impl Claims {
    /// Decode the payload of a JWT without verifying it.
    pub fn peek(jwt: &str) -> Result<Claims, TokenError> {
        check_shape(jwt)?;
        let payload = jwt.split('.').nth(1).ok_or(TokenError::NotJwt)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Claims("payload is not base64url".into()))?;
        let raw: RawClaims = serde_json::from_slice(&bytes)
            .map_err(|e| TokenError::Claims(format!("payload is not a JSON object: {e}")))?;
        let seconds = |v: Option<f64>, name: &str| -> Result<Option<u64>, TokenError> {
            match v {
                None => Ok(None),
                Some(x) if (0.0..1e13).contains(&x) => Ok(Some(x as u64)),
                Some(_) => Err(TokenError::Claims(format!("{name} is out of range"))),
            }
        };
        let expires_at =
            seconds(raw.exp, "exp")?.ok_or_else(|| TokenError::Claims("no exp claim".into()))?;
        Ok(Claims {
            subject: raw.sub,
            audiences: match raw.aud {
                None => Vec::new(),
                Some(Audience::One(a)) => vec![a],
                Some(Audience::Many(a)) => a,
            },
            issued_at: seconds(raw.iat, "iat")?,
            expires_at,
        })
    }

    /// `exp` as a wall-clock time.
    pub fn expiry(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.expires_at)
    }

    /// `exp − iat`, when both are present and ordered.
    pub fn lifetime(&self) -> Option<Duration> {
        let iat = self.issued_at?;
        (self.expires_at > iat).then(|| Duration::from_secs(self.expires_at - iat))
    }
}

/// A token fresh from the issuer, with what the schedule needs to know.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The token.
    pub token: Token,
    /// Claims decoded from it.
    pub claims: Claims,
    /// Lifetime granted by the server: `exp − iat` (both the server's clock),
    /// or `expirationTimestamp − time the request was sent` without `iat`.
    pub lifetime: Duration,
    /// What the server said about a shortened lifetime (its `Warning` header), if anything.
    pub warning: Option<String>,
    /// When mcprom's own credential for this cluster expires, where it can
    /// be known (issuer token `exp`, client certificate `notAfter`).
    pub credential_expires_at: Option<SystemTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#),
            URL_SAFE_NO_PAD.encode(claims),
            URL_SAFE_NO_PAD.encode("sig")
        )
    }

    #[test]
    fn debug_and_display_never_show_the_value() {
        let t = Token::new(jwt(r#"{"exp":10}"#)).unwrap();
        let secret = t.expose().to_owned();
        for shown in [format!("{t:?}"), format!("{t}"), format!("{:#?}", Some(&t))] {
            assert!(!shown.contains(&secret), "{shown}");
            assert!(shown.contains("redacted"));
        }
    }

    #[test]
    fn claims_are_read_with_single_or_list_audience() {
        let c = Claims::peek(&jwt(
            r#"{"sub":"system:serviceaccount:a:b","aud":"x","iat":100,"exp":700}"#,
        ))
        .unwrap();
        assert_eq!(c.subject.as_deref(), Some("system:serviceaccount:a:b"));
        assert_eq!(c.audiences, vec!["x"]);
        assert_eq!(c.lifetime(), Some(Duration::from_secs(600)));
        let c = Claims::peek(&jwt(r#"{"aud":["x","y"],"exp":7}"#)).unwrap();
        assert_eq!(c.audiences, vec!["x", "y"]);
        assert_eq!(c.lifetime(), None);
    }

    #[test]
    fn values_that_are_not_tokens_are_refused() {
        assert_eq!(Token::new(""), Err(TokenError::Empty));
        assert_eq!(Token::new("abc"), Err(TokenError::NotJwt));
        assert_eq!(Token::new("a.b"), Err(TokenError::NotJwt));
        assert_eq!(Token::new("a..c"), Err(TokenError::NotJwt));
        assert_eq!(Token::new("a.b c.d"), Err(TokenError::NotJwt));
        assert!(matches!(
            Token::new("a".repeat(MAX_TOKEN_LEN + 1)),
            Err(TokenError::TooLong(_))
        ));
        assert!(matches!(Claims::peek("a.b.c"), Err(TokenError::Claims(_))));
        assert!(matches!(
            Claims::peek(&jwt(r#"{"sub":"x"}"#)),
            Err(TokenError::Claims(_))
        ));
        assert!(matches!(
            Claims::peek(&jwt(r#"{"exp":-1}"#)),
            Err(TokenError::Claims(_))
        ));
    }

    #[test]
    fn a_trailing_newline_is_trimmed() {
        let raw = jwt(r#"{"exp":10}"#);
        let t = Token::new(format!("{raw}\n")).unwrap();
        assert_eq!(t.expose(), raw);
    }
}
