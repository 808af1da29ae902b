//! Secrets, as far as mcprom needs them: the legacy, never-expiring
//! ServiceAccount token Secrets (`type: kubernetes.io/service-account-token`)
//! that clusters set up before Kubernetes 1.24 still carry, and that should
//! be deleted once mcprom hands out short-lived tokens.
//!
//! The sim holds no Secret until asked for one through the control endpoint
//! (`POST /clusters/<name>/serviceaccounts/<ns>/<sa>/legacy-token-secret`).
//! Like the real token controller it fills in `data.token` — a token that
//! authenticates as the ServiceAccount for as long as the Secret and the
//! ServiceAccount exist — and `data.namespace`, and it deletes the Secret
//! together with its ServiceAccount.
//!
//! Served (each behind `list`/`get` on `secrets` in the namespace):
//! `GET /api/v1/namespaces/{ns}/secrets`, with `fieldSelector` on
//! `metadata.name`, `metadata.namespace` and `type`, and the metadata-only
//! `PartialObjectMetadataList` form a client asks for with
//! `Accept: application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`;
//! and `GET /api/v1/namespaces/{ns}/secrets/{name}`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

/// `type` of a legacy ServiceAccount token Secret.
pub const SERVICE_ACCOUNT_TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
/// Annotation naming the ServiceAccount a token Secret belongs to.
pub const SERVICE_ACCOUNT_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
/// Annotation holding that ServiceAccount's uid.
pub const SERVICE_ACCOUNT_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";
/// `iss` of legacy ServiceAccount tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// One Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Secret {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The `type` field.
    pub kind: String,
    pub annotations: BTreeMap<String, String>,
    pub data: BTreeMap<String, Vec<u8>>,
    /// RFC 3339, whole seconds.
    pub created: String,
    /// Set by the store on insert.
    pub resource_version: u64,
}

impl Secret {
    /// A legacy token Secret for ServiceAccount `sa` (uid `sa_uid`) holding `token`.
    pub fn service_account_token(
        namespace: &str,
        name: &str,
        sa: &str,
        sa_uid: &str,
        token: &str,
    ) -> Self {
        let created = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
            .map(|t| t.to_string())
            .unwrap_or_default();
        Secret {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: super::cluster::new_uid(),
            kind: SERVICE_ACCOUNT_TOKEN_TYPE.to_string(),
            annotations: BTreeMap::from([
                (SERVICE_ACCOUNT_NAME_ANNOTATION.to_string(), sa.to_string()),
                (
                    SERVICE_ACCOUNT_UID_ANNOTATION.to_string(),
                    sa_uid.to_string(),
                ),
            ]),
            data: BTreeMap::from([
                ("namespace".to_string(), namespace.as_bytes().to_vec()),
                ("token".to_string(), token.as_bytes().to_vec()),
            ]),
            created,
            resource_version: 0,
        }
    }

    fn metadata(&self) -> Value {
        json!({
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "resourceVersion": self.resource_version.to_string(),
            "creationTimestamp": self.created,
            "annotations": self.annotations,
        })
    }

    /// The object as `GET .../secrets/{name}` returns it.
    pub fn object(&self) -> Value {
        let mut v = self.list_item();
        if let Some(m) = v.as_object_mut() {
            m.insert("kind".into(), json!("Secret"));
            m.insert("apiVersion".into(), json!("v1"));
        }
        v
    }

    /// The object as an item of a `SecretList` (no `kind`/`apiVersion`).
    fn list_item(&self) -> Value {
        let data: BTreeMap<&str, String> = self
            .data
            .iter()
            .map(|(k, v)| (k.as_str(), B64.encode(v)))
            .collect();
        json!({ "metadata": self.metadata(), "data": data, "type": self.kind })
    }

    /// The object as an item of a `PartialObjectMetadataList`.
    fn partial(&self) -> Value {
        json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": self.metadata(),
        })
    }

    /// `(namespace, ServiceAccount name, ServiceAccount uid)` when this is a
    /// token Secret holding `token`.
    fn owner_of(&self, token: &str) -> Option<(String, String, String)> {
        if self.kind != SERVICE_ACCOUNT_TOKEN_TYPE
            || self.data.get("token").map(Vec::as_slice) != Some(token.as_bytes())
        {
            return None;
        }
        Some((
            self.namespace.clone(),
            self.annotations
                .get(SERVICE_ACCOUNT_NAME_ANNOTATION)?
                .clone(),
            self.annotations
                .get(SERVICE_ACCOUNT_UID_ANNOTATION)?
                .clone(),
        ))
    }
}

/// The claims of a legacy ServiceAccount token, as the token controller
/// signed them (no `exp`: it never expires).
pub(crate) fn legacy_claims(namespace: &str, secret: &str, sa: &str, sa_uid: &str) -> Value {
    json!({
        "iss": LEGACY_ISSUER,
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/secret.name": secret,
        "kubernetes.io/serviceaccount/service-account.name": sa,
        "kubernetes.io/serviceaccount/service-account.uid": sa_uid,
        "sub": format!("system:serviceaccount:{namespace}:{sa}"),
    })
}

/// A name like the API server's `generateName` gives: `prefix` + 5 characters.
pub(crate) fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect();
    format!("{prefix}{suffix}")
}

/// The Secrets of one cluster.
#[derive(Debug, Default)]
pub(crate) struct SecretStore {
    items: Mutex<BTreeMap<(String, String), Secret>>,
    version: AtomicU64,
}

impl SecretStore {
    fn items(&self) -> MutexGuard<'_, BTreeMap<(String, String), Secret>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `secret` with a new resourceVersion; false if the name is taken.
    pub fn insert(&self, mut secret: Secret) -> bool {
        let mut items = self.items();
        let key = (secret.namespace.clone(), secret.name.clone());
        if items.contains_key(&key) {
            return false;
        }
        secret.resource_version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        items.insert(key, secret);
        true
    }

    /// Deletes a Secret; false if absent.
    pub fn remove(&self, namespace: &str, name: &str) -> bool {
        self.items()
            .remove(&(namespace.to_string(), name.to_string()))
            .is_some()
    }

    /// Deletes the token Secrets of ServiceAccount `namespace/sa` (what the
    /// token controller does when the ServiceAccount goes).
    pub fn remove_service_account_tokens(&self, namespace: &str, sa: &str) {
        self.items().retain(|_, s| {
            !(s.namespace == namespace
                && s.kind == SERVICE_ACCOUNT_TOKEN_TYPE
                && s.annotations
                    .get(SERVICE_ACCOUNT_NAME_ANNOTATION)
                    .map(String::as_str)
                    == Some(sa))
        });
    }

    /// One Secret.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Secret> {
        self.items()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The Secrets of `namespace` in name order, and the list's resourceVersion.
    pub fn list(&self, namespace: &str) -> (Vec<Secret>, u64) {
        let items = self.items();
        let list = items
            .values()
            .filter(|s| s.namespace == namespace)
            .cloned()
            .collect();
        (list, self.version.load(Ordering::SeqCst))
    }

    /// `(namespace, name, uid)` of the ServiceAccount whose legacy token
    /// `token` is, if it is one.
    pub fn token_owner(&self, token: &str) -> Option<(String, String, String)> {
        self.items().values().find_map(|s| s.owner_of(token))
    }
}

/// A parsed `fieldSelector` for Secrets (`a=b`, `a==b`, `a!=b`, comma-separated).
#[derive(Debug, Default)]
pub(crate) struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses a selector; the error is the real server's message.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in text.split(',').filter(|t| !t.trim().is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                ));
            };
            let field = field.trim();
            if !matches!(field, "metadata.name" | "metadata.namespace" | "type") {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector { terms })
    }

    /// Whether `secret` is selected.
    pub fn matches(&self, secret: &Secret) -> bool {
        self.terms.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => &secret.name,
                "metadata.namespace" => &secret.namespace,
                _ => &secret.kind,
            };
            (actual == value) == *equal
        })
    }
}

/// Whether an `Accept` header asks for metadata only
/// (`as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`, among alternatives).
pub(crate) fn wants_partial_metadata(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept.split(',').any(|media| {
            let params: Vec<(String, String)> = media
                .split(';')
                .skip(1)
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let has = |k: &str, v: &str| params.iter().any(|(pk, pv)| pk == k && pv == v);
            has("as", "PartialObjectMetadataList")
                && has("g", "meta.k8s.io")
                && (has("v", "v1") || has("v", "v1beta1"))
        })
    })
}

/// A `SecretList`, or with `partial` a `PartialObjectMetadataList`.
pub(crate) fn list_json(items: &[Secret], resource_version: u64, partial: bool) -> Value {
    let metadata = json!({ "resourceVersion": resource_version.to_string() });
    if partial {
        json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": metadata,
            "items": items.iter().map(Secret::partial).collect::<Vec<_>>(),
        })
    } else {
        json!({
            "kind": "SecretList",
            "apiVersion": "v1",
            "metadata": metadata,
            "items": items.iter().map(Secret::list_item).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opaque(ns: &str, name: &str) -> Secret {
        Secret {
            kind: "Opaque".into(),
            annotations: BTreeMap::new(),
            ..Secret::service_account_token(ns, name, "x", "u", "t")
        }
    }

    #[test]
    fn field_selectors_filter_on_type_and_name_and_reject_other_fields() {
        let token = Secret::service_account_token("ns", "sa-token-abcde", "sa", "u1", "a.b.c");
        let other = opaque("ns", "config");
        let s = FieldSelector::parse("type=kubernetes.io/service-account-token").unwrap();
        assert!(s.matches(&token) && !s.matches(&other));
        let s = FieldSelector::parse("type!=kubernetes.io/service-account-token").unwrap();
        assert!(!s.matches(&token) && s.matches(&other));
        let s = FieldSelector::parse("metadata.name==config,type=Opaque").unwrap();
        assert!(!s.matches(&token) && s.matches(&other));
        assert!(FieldSelector::parse("").unwrap().matches(&token));
        assert_eq!(
            FieldSelector::parse("spec.x=1").unwrap_err(),
            "field label not supported: spec.x"
        );
        assert!(
            FieldSelector::parse("type")
                .unwrap_err()
                .contains("can't understand")
        );
    }

    #[test]
    fn partial_metadata_is_recognized_among_alternatives() {
        assert!(wants_partial_metadata(Some(
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
        )));
        assert!(wants_partial_metadata(Some(
            "application/json;as=Table;v=v1;g=meta.k8s.io, application/json; as=PartialObjectMetadataList; v=v1; g=meta.k8s.io"
        )));
        assert!(!wants_partial_metadata(Some("application/json")));
        assert!(!wants_partial_metadata(Some(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        )));
        assert!(!wants_partial_metadata(None));
    }

    #[test]
    fn lists_carry_data_only_in_the_full_form() {
        let store = SecretStore::default();
        assert!(store.insert(Secret::service_account_token(
            "ns",
            "sa-token-abcde",
            "sa",
            "u1",
            "a.b.c"
        )));
        assert!(!store.insert(opaque("ns", "sa-token-abcde")));
        assert!(store.insert(opaque("other", "x")));
        let (items, rv) = store.list("ns");
        let full = list_json(&items, rv, false);
        assert_eq!(full["kind"], "SecretList");
        assert_eq!(full["items"][0]["type"], SERVICE_ACCOUNT_TOKEN_TYPE);
        assert_eq!(full["items"][0]["data"]["token"], B64.encode("a.b.c"));
        assert_eq!(
            full["items"][0]["metadata"]["annotations"][SERVICE_ACCOUNT_NAME_ANNOTATION],
            "sa"
        );
        let partial = list_json(&items, rv, true);
        assert_eq!(partial["kind"], "PartialObjectMetadataList");
        assert_eq!(partial["items"][0]["kind"], "PartialObjectMetadata");
        assert!(partial["items"][0].get("data").is_none());
        assert_eq!(partial["items"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn token_owners_are_found_until_the_service_account_goes() {
        let store = SecretStore::default();
        store.insert(Secret::service_account_token(
            "ns",
            "sa-token-abcde",
            "sa",
            "u1",
            "a.b.c",
        ));
        assert_eq!(
            store.token_owner("a.b.c"),
            Some(("ns".into(), "sa".into(), "u1".into()))
        );
        assert_eq!(store.token_owner("x.y.z"), None);
        store.remove_service_account_tokens("ns", "sa");
        assert_eq!(store.token_owner("a.b.c"), None);
        assert!(store.list("ns").0.is_empty());
    }

    #[test]
    fn generated_names_look_like_the_api_servers() {
        let n = generate_name("sa-token-");
        assert_eq!(n.len(), "sa-token-".len() + 5);
        assert!(n.starts_with("sa-token-"));
    }
}
