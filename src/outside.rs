//! Everything that comes from outside mcprom — answers of API servers and
//! Prometheus, exec plugin output and errors, URLs — passes through here
//! before it is kept or shown: bodies are read up to a size cap, and text
//! is made safe to show ([`text`]) before it reaches a log line, `status`,
//! a metric or a terminal.
//!
//! The caps, and why they are what they are:
//! - [`MAX_TOKEN_ANSWER`] (1 MiB): a TokenRequest answer is the request
//!   echoed back plus a JWT of 1–3 KB (a few KB more with many audiences);
//!   1 MiB is a margin of several hundred. At most
//!   `limits.concurrent_requests` answers are read at once, so the worst
//!   case is 32 MiB with the default of 32.
//! - [`MAX_PROMETHEUS_ANSWER`] (64 KiB): mcprom only needs the status of
//!   `/-/reload` and `/-/ready` and the start of an error (Prometheus's
//!   config errors are a few lines); one reload at a time.
//! - [`MAX_PLUGIN_OUTPUT`] (1 MiB, stdout) and [`MAX_PLUGIN_STDERR`]
//!   (64 KiB): an ExecCredential is a token or a client certificate and
//!   key, a few KB.
//! - [`MAX_TEXT`] (1,000 characters): what one log line or `last_error`
//!   quotes of anything from outside.

use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};

/// Largest TokenRequest answer read (see the module docs).
pub const MAX_TOKEN_ANSWER: usize = 1 << 20;
/// Largest Prometheus answer read.
pub const MAX_PROMETHEUS_ANSWER: usize = 64 << 10;
/// Largest exec plugin standard output read.
pub const MAX_PLUGIN_OUTPUT: usize = 1 << 20;
/// Largest exec plugin standard error read.
pub const MAX_PLUGIN_STDERR: usize = 64 << 10;
/// Most characters of outside text quoted in one message.
pub const MAX_TEXT: usize = 1000;

const REDACTED: &str = "<redacted>";

/// A body read up to a cap.
#[derive(Debug, Clone, PartialEq)]
pub struct Capped {
    /// The first bytes, at most the cap.
    pub bytes: Bytes,
    /// Whether the body went on beyond the cap (the rest was not read).
    pub truncated: bool,
}

/// Read `body` until its end or `cap` bytes, whichever comes first. Past
/// the cap nothing more is read: the caller drops the body, which closes
/// the connection, so an endless body costs `cap` bytes and no more.
pub async fn read_body<B>(body: B, cap: usize) -> Result<Capped, B::Error>
where
    B: hyper::body::Body<Data = Bytes>,
{
    use http_body_util::BodyExt as _;
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if !append_capped(&mut buf, &data, cap) {
            return Ok(Capped::of(buf, true));
        }
    }
    Ok(Capped::of(buf, false))
}

impl Capped {
    fn of(buf: BytesMut, truncated: bool) -> Capped {
        Capped {
            bytes: buf.freeze(),
            truncated,
        }
    }
}

/// Appends `data` to `buf` up to `cap` bytes in all; `false` when some of
/// it did not fit (the body goes on beyond the cap).
fn append_capped(buf: &mut BytesMut, data: &[u8], cap: usize) -> bool {
    let room = cap - buf.len();
    buf.extend_from_slice(&data[..data.len().min(room)]);
    data.len() <= room
}

/// Read a reqwest answer's body like [`read_body`].
pub async fn read_response(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Capped, reqwest::Error> {
    let mut buf = BytesMut::new();
    while let Some(data) = response.chunk().await? {
        if !append_capped(&mut buf, &data, cap) {
            return Ok(Capped::of(buf, true));
        }
    }
    Ok(Capped::of(buf, false))
}

/// Outside text made safe to log or show: secrets redacted ([`redact`]),
/// control characters (ANSI escapes, CR, line breaks) gone, whitespace
/// runs one space, at most [`MAX_TEXT`] characters.
pub fn text(raw: &str) -> String {
    text_without(raw, &[])
}

/// [`text`], also redacting each of `secrets` (exec plugin arguments and
/// environment values) wherever it appears.
pub fn text_without(raw: &str, secrets: &[&str]) -> String {
    // Cap first (with room for what redaction and stripping remove), so a
    // 5 MB message costs no more than a short one.
    let head: String = raw.chars().take(MAX_TEXT * 4).collect();
    let mut out = strip_controls(&redact(&head, secrets));
    let shown = out.chars().count();
    let more = raw.chars().count().saturating_sub(head.chars().count());
    if shown > MAX_TEXT || more > 0 {
        out = out.chars().take(MAX_TEXT).collect();
        out.push_str(" …(truncated)");
    }
    out
}

/// Bytes from outside as [`text`].
pub fn bytes_text(raw: &[u8]) -> String {
    let head = &raw[..raw.len().min(MAX_TEXT * 4)];
    let mut t = text(&String::from_utf8_lossy(head));
    if raw.len() > head.len() && !t.ends_with("(truncated)") {
        t.push_str(" …(truncated)");
    }
    t
}

/// Drop control characters and the escape sequences they start, and
/// bidirectional overrides; every run of whitespace becomes one space.
fn strip_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI (ESC [ … final byte) and OSC (ESC ] … BEL or ST): drop
            // the whole sequence, not just the ESC.
            match chars.peek() {
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    chars.next();
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            }
            out.push(' ');
        } else if c.is_control()
            || c.is_whitespace()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_b64url(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Key names whose values are secrets, in `"key": "value"`, `key: value`
/// and `key=value` forms (compared lowercase, `-`/`_` ignored).
const SECRET_KEYS: [&str; 8] = [
    "token",
    "accesstoken",
    "idtoken",
    "refreshtoken",
    "password",
    "secret",
    "clientsecret",
    "clientkeydata",
];

fn is_secret_key(key: &str) -> bool {
    let k: String = key
        .chars()
        .filter(|c| !matches!(c, '-' | '_'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    SECRET_KEYS.contains(&k.as_str()) || k.ends_with("secret") || k.ends_with("password")
}

/// Redact secrets in `s`: JWT-shaped strings, the credential after
/// `Bearer`/`Basic`, values of secret-named fields (`"token": "…"`,
/// `password=…`), the password in `scheme://user:password@`, and every
/// string in `secrets` at least 4 characters long.
pub fn redact(s: &str, secrets: &[&str]) -> String {
    let mut s = s.to_owned();
    for secret in secrets {
        if secret.len() >= 4 {
            s = s.replace(secret, REDACTED);
        }
    }
    let s = redact_url_passwords(&s);
    let s = redact_after_schemes(&s);
    let s = redact_fields(&s);
    redact_jwts(&s)
}

fn redact_jwts(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("eyJ") {
        let starts_word = rest[..at].chars().next_back().is_none_or(|c| !is_b64url(c));
        let len = rest[at..]
            .find(|c: char| !is_b64url(c) && c != '.')
            .unwrap_or(rest.len() - at);
        let word = &rest[at..at + len];
        out.push_str(&rest[..at]);
        if starts_word && word.matches('.').count() >= 1 && len >= 16 {
            out.push_str(REDACTED);
        } else {
            out.push_str(word);
        }
        rest = &rest[at + len..];
    }
    out.push_str(rest);
    out
}

fn redact_after_schemes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let lower = rest.to_ascii_lowercase();
        let hit = ["bearer ", "basic "]
            .iter()
            .filter_map(|w| lower.find(w).map(|i| (i, w.len())))
            .min();
        let Some((at, len)) = hit else {
            out.push_str(rest);
            return out;
        };
        let value_start = at + len;
        let after = &rest[value_start..];
        let skip = after.len() - after.trim_start().len();
        let value = &after[skip..];
        let end = value
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ']' | '}'))
            .unwrap_or(value.len());
        out.push_str(&rest[..value_start + skip]);
        if end > 0 {
            out.push_str(REDACTED);
        }
        rest = &value[end..];
    }
}

fn redact_url_passwords(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("://") {
        let host_start = at + 3;
        out.push_str(&rest[..host_start]);
        let after = &rest[host_start..];
        let authority_end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '"' | '\''))
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at_sign), Some(colon)) if colon < at_sign => {
                out.push_str(&authority[..=colon]);
                out.push_str(REDACTED);
                out.push_str(&authority[at_sign..]);
            }
            _ => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

fn redact_fields(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c != b':' && c != b'=' {
            i += 1;
            continue;
        }
        // The key just before the separator, quoted or not.
        let before = s[..i].trim_end();
        let before = before.strip_suffix('"').unwrap_or(before);
        // After the last character that cannot be part of a key (which may
        // be several bytes long: start after all of it).
        let key_start = before
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(0, |(p, c)| p + c.len_utf8());
        let key = &before[key_start..];
        // `c1.token: Permission denied` names a file, not a field.
        let in_a_path = before[..key_start].ends_with(['.', '/']);
        if key.is_empty() || in_a_path || !is_secret_key(key) {
            i += 1;
            continue;
        }
        // The value: a quoted string or a bare word.
        let mut j = i + 1;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        let (start, end) = if j < bytes.len() && bytes[j] == b'"' {
            let mut k = j + 1;
            while k < bytes.len() && bytes[k] != b'"' {
                if bytes[k] == b'\\' {
                    k += 1;
                }
                k += 1;
            }
            (j + 1, k.min(bytes.len()))
        } else {
            let end = s[j..]
                .find(|c: char| c.is_whitespace() || matches!(c, ',' | '}' | ']' | ';' | '&'))
                .map_or(bytes.len(), |e| j + e);
            (j, end)
        };
        if end > start {
            out.push_str(&s[copied..start]);
            out.push_str(REDACTED);
            copied = end;
        }
        i = end.max(i + 1);
    }
    out.push_str(&s[copied..]);
    out
}

/// An error and its sources on one line, made safe to show ([`text`]).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut raw = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !raw.contains(&s) {
            let _ = write!(raw, ": {s}");
        }
        source = e.source();
    }
    text(&raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_after_a_multibyte_character_is_found_without_panicking() {
        // Found by the fuzzer: the key starts after a 4-byte character.
        assert_eq!(text("êC*ટF`𖵍𐖑token: abc"), "êC*ટF`𖵍𐖑token: <redacted>");
        let _ = text("*ટF`𖵍𐖑:");
    }

    const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ";

    #[test]
    fn a_file_name_ending_in_token_is_not_a_field() {
        assert_eq!(
            text("cannot inspect /var/lib/mcprom/tokens/c1.token: Permission denied"),
            "cannot inspect /var/lib/mcprom/tokens/c1.token: Permission denied"
        );
        assert_eq!(text("x/token: abc"), "x/token: abc");
        assert_eq!(text("a token: abc"), "a token: <redacted>");
    }

    #[test]
    fn tokens_in_any_shape_are_redacted() {
        for raw in [
            format!("echo: Authorization: Bearer {JWT}"),
            "authorization: bearer opaque-secret-123".to_owned(),
            format!("{{\"status\":{{\"token\":\"{JWT}\"}}}}"),
            "status:\n  token: opaque-secret-123\n".to_owned(),
            format!("a token {JWT} inside text"),
            "Basic dXNlcjpvcGFxdWUtc2VjcmV0LTEyMw==".to_owned(),
            "client_secret=opaque-secret-123&x=1".to_owned(),
            "\"clientKeyData\": \"opaque-secret-123\"".to_owned(),
        ] {
            let shown = text(&raw);
            assert!(!shown.contains("opaque-secret-123"), "{raw:?} -> {shown}");
            assert!(!shown.contains("c2lnbmF0dXJl"), "{raw:?} -> {shown}");
            assert!(shown.contains(REDACTED), "{raw:?} -> {shown}");
        }
    }

    #[test]
    fn url_passwords_and_named_secrets_are_redacted() {
        assert_eq!(
            text("reload at https://admin:hunter2x@prom.example:9090/-/reload failed"),
            "reload at https://admin:<redacted>@prom.example:9090/-/reload failed"
        );
        assert_eq!(
            text_without("aws --client-secret S3CRET-VALUE", &["S3CRET-VALUE"]),
            "aws --client-secret <redacted>"
        );
        // Ordinary text stays as it was.
        let plain = "serviceaccounts \"x\" is forbidden: User \"y\" cannot create resource";
        assert_eq!(text(plain), plain);
    }

    #[test]
    fn control_characters_cannot_rewrite_the_terminal() {
        let shown = text("ok\u{1b}[2K\u{1b}[1A\rfake line\u{1b}]0;title\u{7}\n\u{202e}x\u{0}");
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert_eq!(shown, "ok fake line x");
    }

    #[test]
    fn long_text_is_cut() {
        let shown = text(&"a".repeat(5_000_000));
        assert!(shown.len() < MAX_TEXT + 20, "{}", shown.len());
        assert!(shown.ends_with("(truncated)"));
    }

    #[tokio::test]
    async fn an_endless_body_ends_at_the_cap() {
        let chunks = futures_stream(1 << 16, 1000);
        let capped = read_body(chunks, 100_000).await.unwrap();
        assert_eq!(capped.bytes.len(), 100_000);
        assert!(capped.truncated);
        let short = read_body(futures_stream(10, 2), 100).await.unwrap();
        assert_eq!((short.bytes.len(), short.truncated), (20, false));
    }

    /// `count` chunks of `chunk` bytes.
    fn futures_stream(chunk: usize, count: usize) -> Chunks {
        Chunks { chunk, left: count }
    }

    struct Chunks {
        chunk: usize,
        left: usize,
    }

    impl hyper::body::Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            self.left -= 1;
            let data = Bytes::from(vec![b'x'; self.chunk]);
            std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
        }
    }
}
