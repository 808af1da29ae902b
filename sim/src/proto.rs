//! A tiny protobuf reader for the one protobuf body the simulator accepts:
//! a `TokenRequest` wrapped in the Kubernetes `runtime.Unknown` envelope, as
//! `kubectl create token` sends it (`application/vnd.kubernetes.protobuf`).
//!
//! Only varint and length-delimited fields are interpreted; other wire types
//! are skipped. Malformed input is an error, never a panic.

use thiserror::Error;

/// The four magic bytes that start every Kubernetes protobuf body.
pub const K8S_MAGIC: &[u8; 4] = b"k8s\0";

/// Why a protobuf body could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtoError {
    /// The body does not start with `k8s\0`.
    #[error("protobuf body does not start with the k8s magic prefix")]
    MissingMagic,
    /// The input ended in the middle of a field.
    #[error("protobuf input is truncated")]
    Truncated,
    /// A varint longer than 10 bytes.
    #[error("protobuf varint is too long")]
    VarintTooLong,
    /// A wire type protobuf does not define (or a deprecated group).
    #[error("unsupported protobuf wire type {0}")]
    BadWireType(u64),
    /// Field number zero is reserved.
    #[error("protobuf field number 0 is invalid")]
    FieldZero,
    /// A string field that is not UTF-8.
    #[error("protobuf string field is not valid UTF-8")]
    BadUtf8,
    /// The envelope carries another kind than `authentication.k8s.io/v1 TokenRequest`.
    #[error("expected authentication.k8s.io/v1 TokenRequest, got {api_version} {kind}")]
    WrongKind {
        /// `apiVersion` found in the envelope.
        api_version: String,
        /// `kind` found in the envelope.
        kind: String,
    },
}

/// The fields of a `TokenRequest` the simulator cares about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TokenRequestSpec {
    /// `spec.audiences` (empty means "the API server's audiences").
    pub audiences: Vec<String>,
    /// `spec.expirationSeconds` (absent means the 1 h default).
    pub expiration_seconds: Option<i64>,
    /// `spec.boundObjectRef` was present.
    pub bound_object_ref: bool,
}

/// One decoded field: number and value.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let (&byte, rest) = self.buf.split_first().ok_or(ProtoError::Truncated)?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtoError::VarintTooLong)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], ProtoError> {
        let n = usize::try_from(n).map_err(|_| ProtoError::Truncated)?;
        if n > self.buf.len() {
            return Err(ProtoError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next field, or `None` at the end of the input.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, ProtoError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 {
            return Err(ProtoError::FieldZero);
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Other
            }
            2 => {
                let len = self.varint()?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Other
            }
            other => return Err(ProtoError::BadWireType(other)),
        };
        Ok(Some((number, value)))
    }
}

fn string(bytes: &[u8]) -> Result<String, ProtoError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| ProtoError::BadUtf8)
}

/// Decodes `k8s\0` + `runtime.Unknown{typeMeta, raw}` whose raw payload is a
/// `TokenRequest`.
pub fn decode_token_request(body: &[u8]) -> Result<TokenRequestSpec, ProtoError> {
    let envelope = body
        .strip_prefix(K8S_MAGIC)
        .ok_or(ProtoError::MissingMagic)?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    let mut reader = Reader::new(envelope);
    while let Some((number, value)) = reader.field()? {
        match (number, value) {
            (1, Value::Bytes(type_meta)) => {
                let mut tm = Reader::new(type_meta);
                while let Some((n, v)) = tm.field()? {
                    match (n, v) {
                        (1, Value::Bytes(b)) => api_version = string(b)?,
                        (2, Value::Bytes(b)) => kind = string(b)?,
                        _ => {}
                    }
                }
            }
            (2, Value::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    if api_version != "authentication.k8s.io/v1" || kind != "TokenRequest" {
        return Err(ProtoError::WrongKind { api_version, kind });
    }
    decode_token_request_message(raw)
}

/// Decodes a bare `authentication.k8s.io/v1 TokenRequest` message.
pub fn decode_token_request_message(raw: &[u8]) -> Result<TokenRequestSpec, ProtoError> {
    let mut spec = TokenRequestSpec::default();
    let mut reader = Reader::new(raw);
    while let Some((number, value)) = reader.field()? {
        if let (2, Value::Bytes(spec_bytes)) = (number, value) {
            let mut sr = Reader::new(spec_bytes);
            while let Some((n, v)) = sr.field()? {
                match (n, v) {
                    (1, Value::Bytes(b)) => spec.audiences.push(string(b)?),
                    (3, Value::Bytes(_)) => spec.bound_object_ref = true,
                    // int64 is two's complement in a varint: reinterpret the bits.
                    (4, Value::Varint(x)) => spec.expiration_seconds = Some(x as i64),
                    _ => {}
                }
            }
        }
    }
    Ok(spec)
}

/// Splits `k8s\0` + `runtime.Unknown{typeMeta, raw}` into
/// `(apiVersion, kind, raw)`.
pub fn decode_envelope(body: &[u8]) -> Result<(String, String, &[u8]), ProtoError> {
    let envelope = body
        .strip_prefix(K8S_MAGIC)
        .ok_or(ProtoError::MissingMagic)?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    let mut reader = Reader::new(envelope);
    while let Some((number, value)) = reader.field()? {
        match (number, value) {
            (1, Value::Bytes(type_meta)) => {
                let mut tm = Reader::new(type_meta);
                while let Some((n, v)) = tm.field()? {
                    match (n, v) {
                        (1, Value::Bytes(b)) => api_version = string(b)?,
                        (2, Value::Bytes(b)) => kind = string(b)?,
                        _ => {}
                    }
                }
            }
            (2, Value::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    Ok((api_version, kind, raw))
}

/// The spec of an `authorization.k8s.io/v1 SelfSubjectAccessReview`, as
/// `kubectl auth can-i` sends it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AccessReviewSpec {
    /// `resourceAttributes`: namespace, verb, group, version, resource,
    /// subresource, name (fields 1..=7), when present.
    pub resource: Option<[String; 7]>,
    /// `nonResourceAttributes`: path, verb, when present.
    pub non_resource: Option<(String, String)>,
}

/// Decodes a bare `SelfSubjectAccessReview` message (the envelope's raw).
pub fn decode_access_review_message(raw: &[u8]) -> Result<AccessReviewSpec, ProtoError> {
    let mut spec = AccessReviewSpec::default();
    let mut reader = Reader::new(raw);
    while let Some((number, value)) = reader.field()? {
        let (2, Value::Bytes(spec_bytes)) = (number, value) else {
            continue;
        };
        let mut sr = Reader::new(spec_bytes);
        while let Some((n, v)) = sr.field()? {
            match (n, v) {
                (1, Value::Bytes(attrs)) => {
                    let fields = spec.resource.get_or_insert_with(Default::default);
                    let mut ar = Reader::new(attrs);
                    while let Some((f, v)) = ar.field()? {
                        if let (1..=7, Value::Bytes(b)) = (f, v) {
                            fields[(f - 1) as usize] = string(b)?;
                        }
                    }
                }
                (2, Value::Bytes(attrs)) => {
                    let (path, verb) = spec.non_resource.get_or_insert_with(Default::default);
                    let mut ar = Reader::new(attrs);
                    while let Some((f, v)) = ar.field()? {
                        match (f, v) {
                            (1, Value::Bytes(b)) => *path = string(b)?,
                            (2, Value::Bytes(b)) => *verb = string(b)?,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(spec)
}

#[cfg(test)]
pub(crate) mod encode {
    //! A matching encoder, for tests.

    pub fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub fn bytes(field: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    pub fn token_request(audiences: &[&str], expiration: Option<i64>) -> Vec<u8> {
        let mut spec = Vec::new();
        for a in audiences {
            bytes(1, a.as_bytes(), &mut spec);
        }
        if let Some(e) = expiration {
            varint(4 << 3, &mut spec);
            varint(e as u64, &mut spec);
        }
        let mut tr = Vec::new();
        bytes(1, b"", &mut tr); // empty ObjectMeta
        bytes(2, &spec, &mut tr);
        bytes(3, b"", &mut tr);
        let mut tm = Vec::new();
        bytes(1, b"authentication.k8s.io/v1", &mut tm);
        bytes(2, b"TokenRequest", &mut tm);
        let mut out = b"k8s\0".to_vec();
        bytes(1, &tm, &mut out);
        bytes(2, &tr, &mut out);
        bytes(3, b"", &mut out);
        bytes(4, b"", &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_audiences_and_expiration() {
        let body = encode::token_request(&["a", "b"], Some(600));
        let spec = decode_token_request(&body).unwrap();
        assert_eq!(spec.audiences, vec!["a", "b"]);
        assert_eq!(spec.expiration_seconds, Some(600));
        assert!(!spec.bound_object_ref);
    }

    #[test]
    fn absent_expiration_stays_absent() {
        let spec = decode_token_request(&encode::token_request(&[], None)).unwrap();
        assert_eq!(spec.expiration_seconds, None);
        assert!(spec.audiences.is_empty());
    }

    #[test]
    fn negative_expiration_round_trips() {
        let spec = decode_token_request(&encode::token_request(&[], Some(-5))).unwrap();
        assert_eq!(spec.expiration_seconds, Some(-5));
    }

    #[test]
    fn unknown_fields_of_every_wire_type_are_skipped() {
        let mut spec = Vec::new();
        encode::varint(9 << 3, &mut spec); // field 9 varint
        encode::varint(300, &mut spec);
        encode::varint(10 << 3 | 1, &mut spec); // fixed64
        spec.extend_from_slice(&[0; 8]);
        encode::varint(11 << 3 | 5, &mut spec); // fixed32
        spec.extend_from_slice(&[0; 4]);
        encode::bytes(4, b"ignored: wrong wire type", &mut spec);
        encode::varint(4 << 3, &mut spec);
        encode::varint(1200, &mut spec);
        let mut tr = Vec::new();
        encode::bytes(2, &spec, &mut tr);
        assert_eq!(
            decode_token_request_message(&tr)
                .unwrap()
                .expiration_seconds,
            Some(1200)
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let body = encode::token_request(&["aud"], Some(3600));
        for len in 4..body.len() {
            // Some prefixes end exactly on a field boundary and decode; none may panic.
            let _ = decode_token_request(&body[..len]);
        }
        assert_eq!(
            decode_token_request(&body[..body.len() - 3]),
            Err(ProtoError::Truncated)
        );
    }

    #[test]
    fn access_reviews_decode_resource_and_non_resource_attributes() {
        let mut attrs = Vec::new();
        for (field, value) in [(1, "kube-system"), (2, "create"), (5, "serviceaccounts")] {
            encode::bytes(field, value.as_bytes(), &mut attrs);
        }
        encode::bytes(6, b"token", &mut attrs);
        encode::bytes(7, b"prometheus-test", &mut attrs);
        let mut spec = Vec::new();
        encode::bytes(1, &attrs, &mut spec);
        let mut review = Vec::new();
        encode::bytes(1, b"", &mut review);
        encode::bytes(2, &spec, &mut review);
        let mut tm = Vec::new();
        encode::bytes(1, b"authorization.k8s.io/v1", &mut tm);
        encode::bytes(2, b"SelfSubjectAccessReview", &mut tm);
        let mut body = b"k8s\0".to_vec();
        encode::bytes(1, &tm, &mut body);
        encode::bytes(2, &review, &mut body);
        let (api_version, kind, raw) = decode_envelope(&body).unwrap();
        assert_eq!(
            (api_version.as_str(), kind.as_str()),
            ("authorization.k8s.io/v1", "SelfSubjectAccessReview")
        );
        let decoded = decode_access_review_message(raw).unwrap();
        let r = decoded.resource.unwrap();
        assert_eq!(
            r.each_ref().map(String::as_str),
            [
                "kube-system",
                "create",
                "",
                "",
                "serviceaccounts",
                "token",
                "prometheus-test"
            ]
        );
        assert_eq!(decoded.non_resource, None);

        let mut nr = Vec::new();
        encode::bytes(1, b"/version", &mut nr);
        encode::bytes(2, b"get", &mut nr);
        let mut spec = Vec::new();
        encode::bytes(2, &nr, &mut spec);
        let mut review = Vec::new();
        encode::bytes(2, &spec, &mut review);
        let decoded = decode_access_review_message(&review).unwrap();
        assert_eq!(
            decoded.non_resource,
            Some(("/version".into(), "get".into()))
        );
        assert_eq!(decoded.resource, None);
        assert_eq!(
            decode_access_review_message(&review[..review.len() - 1]),
            Err(ProtoError::Truncated)
        );
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(decode_token_request(b"{}"), Err(ProtoError::MissingMagic));
        assert_eq!(
            decode_token_request(b"k8s\0\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
            Err(ProtoError::VarintTooLong)
        );
        assert_eq!(
            decode_token_request(b"k8s\0\x0b"),
            Err(ProtoError::BadWireType(3))
        );
        assert_eq!(
            decode_token_request(b"k8s\0\x00"),
            Err(ProtoError::FieldZero)
        );
        assert!(matches!(
            decode_token_request(b"k8s\0"),
            Err(ProtoError::WrongKind { .. })
        ));
        let mut huge = b"k8s\0".to_vec();
        encode::varint(2 << 3 | 2, &mut huge);
        encode::varint(u64::MAX >> 1, &mut huge);
        assert_eq!(decode_token_request(&huge), Err(ProtoError::Truncated));
        let mut pseudo_random = b"k8s\0".to_vec();
        let mut x: u32 = 12345;
        for _ in 0..4096 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            pseudo_random.push((x >> 16) as u8);
        }
        let _ = decode_token_request(&pseudo_random);
    }
}
