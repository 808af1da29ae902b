//! TOML text → [`FileConfig`], reporting every syntax, unknown-key and
//! wrong-type problem rather than only the first.
//!
//! serde stops at the first error. To report them all, the document is
//! parsed once into a spanned tree and each top-level table, and each
//! `[[cluster]]`, is deserialized on its own. After a serde error the
//! offending key is located by its span, reported and removed from that
//! entry, and the entry (not the document) is deserialized again. Every
//! round removes a key, or gives the entry up, so decoding always ends, and
//! its cost is linear in the size of the file: an entry is re-read at most
//! once per key it holds.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::file::FileConfig;
use super::report::{Report, did_you_mean};

/// One step from the root of the tree to an entry.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Whether an error points at a key itself or at its value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hit {
    Key,
    Value,
}

/// The top-level tables, in the order `FileConfig` declares them.
const TOP_LEVEL: &[&str] = &[
    "include_dir",
    "prometheus",
    "defaults",
    "metrics",
    "control",
    "limits",
    "cluster",
    "consumer",
];

/// Parses and deserializes `text`. Returns `None` (with problems in
/// `report`) on a syntax error; otherwise the file with every bad entry
/// left out, each of them reported.
pub(crate) fn decode(text: &str, report: &mut Report<'_>) -> Option<FileConfig> {
    // The usual case, a good file, in one pass. Only a bad file takes the
    // slower road below, which keeps the parsed document to locate each
    // problem: for 10,000 clusters that document is tens of megabytes, and
    // a daemon's peak memory should not be set by reading a file that was
    // fine (`chunked` reads it a few hundred clusters at a time).
    if let Some(file) = super::chunked::from_str(text) {
        return Some(file);
    }
    let (root, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for error in errors {
            let span = error.span().unwrap_or(0..0);
            let found = text.get(span.clone()).unwrap_or("");
            report.add(span.start, "", syntax_message(error.message(), found));
        }
        return None;
    }
    let mut file = FileConfig::default();
    for (key, value) in root.into_inner() {
        let name = key.get_ref().to_string();
        let path = [Step::Key(name.clone())];
        let context = format!("[{name}]");
        match name.as_str() {
            "include_dir" => file.include_dir = top_level_string(value, &name, report),
            "prometheus" => file.prometheus = entry(value, &path, &context, report),
            "defaults" => file.defaults = entry(value, &path, &context, report),
            "metrics" => file.metrics = entry(value, &path, &context, report),
            "control" => file.control = entry(value, &path, &context, report),
            "limits" => file.limits = entry(value, &path, &context, report),
            "cluster" => file.cluster = clusters(value, report),
            "consumer" => file.consumer = tables(value, "consumer", report),
            _ => {
                let expected: Vec<String> = TOP_LEVEL.iter().map(|k| format!("`{k}`")).collect();
                let serde_like = format!(
                    "unknown field `{name}`, expected one of {}",
                    expected.join(", ")
                );
                let (message, _) = explain(&serde_like, &name, &path, Hit::Key);
                report.add(key.span().start, "", message);
            }
        }
    }
    Some(file)
}

/// A top-level string such as `include_dir`; anything else is reported.
fn top_level_string(
    value: Spanned<DeValue<'_>>,
    key: &str,
    report: &mut Report<'_>,
) -> Option<Spanned<String>> {
    let span = value.span();
    if let Some(text) = value.get_ref().as_str() {
        return Some(Spanned::new(span, text.to_string()));
    }
    let hint = example(key).map_or(String::new(), |e| format!(" (e.g. {e})"));
    report.add(
        span.start,
        "",
        format!("key {key:?}: expected a string{hint}"),
    );
    None
}

/// Every `[[cluster]]` that decodes; the others are reported.
fn clusters<T: DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    report: &mut Report<'_>,
) -> Vec<Spanned<T>> {
    tables(value, "cluster", report)
}

/// Every `[[section]]` entry that decodes; the others are reported.
fn tables<T: DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    section: &str,
    report: &mut Report<'_>,
) -> Vec<Spanned<T>> {
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        let path = [Step::Key(section.to_string())];
        let (message, _) = explain(
            "invalid type: expected an array of tables",
            section,
            &path,
            Hit::Value,
        );
        report.add(span.start, "", message);
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let name = item
            .get_ref()
            .get("name")
            .and_then(|n| n.get_ref().as_str())
            .map(str::to_string);
        let context = entry_label(section, name.as_deref(), index);
        let path = [Step::Key(section.to_string()), Step::Index(index)];
        out.extend(entry(item, &path, &context, report));
    }
    out
}

/// Deserializes one entry (a top-level table or one cluster) at `path`,
/// dropping and reporting each key serde refuses; `None` (reported) when
/// the entry itself is unusable, e.g. `[[defaults]]` for `[defaults]`.
fn entry<T: DeserializeOwned>(
    mut value: Spanned<DeValue<'_>>,
    path: &[Step],
    context: &str,
    report: &mut Report<'_>,
) -> Option<Spanned<T>> {
    if let (DeValue::Array(_), [Step::Key(section)]) = (value.get_ref(), path) {
        report.add(
            value.span().start,
            "",
            format!(
                "key {section:?}: expected one table, found an array of tables (write \
                 [{section}], with single brackets: the file has one [{section}] table)"
            ),
        );
        return None;
    }
    loop {
        let error = match Spanned::<T>::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(decoded) => return Some(decoded),
            Err(error) => error,
        };
        let offset = error.span().map_or(value.span().start, |s| s.start);
        let inner = locate_in_value(value.get_ref(), offset).filter(|(p, _)| !p.is_empty());
        let Some((inner, hit)) = inner else {
            // The entry as a whole is wrong (a table where a table is not
            // expected, an array of tables for a table): report, drop it.
            let (message, _) = explain(error.message(), &keys(path), path, Hit::Value);
            report.add(value.span().start, context, message);
            return None;
        };
        let full: Vec<Step> = path.iter().cloned().chain(inner.iter().cloned()).collect();
        let key = keys(&inner);
        let (message, suggestion) = explain(error.message(), &key, &full, hit);
        if let Some(suggestion) = suggestion {
            report.suggested(context, suggestion);
        }
        report.add(offset, context, message);
        if !remove_in_value(&mut value, &inner) {
            return None;
        }
    }
}

/// The dotted keys of a path, without array indexes.
fn keys(steps: &[Step]) -> String {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Key(k) => Some(k.as_str()),
            Step::Index(_) => None,
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn syntax_message(message: &str, found: &str) -> String {
    if message.contains("duplicate key") && !found.is_empty() {
        return format!(
            "TOML syntax error: duplicate key {:?} (each key may appear once per table; \
             remove or rename one of them)",
            found.trim_matches('"')
        );
    }
    format!("TOML syntax error: {message} (see https://toml.io for the syntax)")
}

fn span_contains(span: &std::ops::Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

fn locate_in_table(table: &DeTable<'_>, offset: usize) -> Option<(Vec<Step>, Hit)> {
    for (key, _) in table.iter() {
        if span_contains(&key.span(), offset) {
            return Some((vec![Step::Key(key.get_ref().to_string())], Hit::Key));
        }
    }
    for (key, value) in table.iter() {
        let step = Step::Key(key.get_ref().to_string());
        if let Some((mut path, hit)) = locate_in_value(value.get_ref(), offset) {
            path.insert(0, step);
            return Some((path, hit));
        }
        if span_contains(&value.span(), offset) {
            return Some((vec![step], Hit::Value));
        }
    }
    None
}

/// Descends into tables and arrays of tables only: an error inside an array
/// of plain values is the array key's problem.
fn locate_in_value(value: &DeValue<'_>, offset: usize) -> Option<(Vec<Step>, Hit)> {
    match value {
        DeValue::Table(table) => locate_in_table(table, offset),
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                if let DeValue::Table(table) = item.get_ref() {
                    if let Some((mut path, hit)) = locate_in_table(table, offset) {
                        path.insert(0, Step::Index(index));
                        return Some((path, hit));
                    }
                    if span_contains(&item.span(), offset) {
                        return Some((vec![Step::Index(index)], Hit::Value));
                    }
                }
            }
            None
        }
        _ => None,
    }
}

/// Removes the key at the end of `path`. An array element cannot be
/// removed on its own, so the key holding the array goes: every call that
/// returns `true` leaves one key fewer, which is what ends [`entry`]'s loop.
fn remove(table: &mut DeTable<'_>, path: &[Step]) -> bool {
    match path {
        [Step::Key(key)] | [Step::Key(key), Step::Index(_)] => table.remove(key.as_str()).is_some(),
        [Step::Key(key), rest @ ..] => {
            let Some(value) = table.get_mut(key.as_str()) else {
                return false;
            };
            remove_in_value(value, rest)
        }
        _ => false,
    }
}

fn remove_in_value(value: &mut Spanned<DeValue<'_>>, path: &[Step]) -> bool {
    match (value.get_mut(), path) {
        (DeValue::Table(table), _) => remove(table, path),
        (DeValue::Array(items), [Step::Index(index), rest @ ..]) if !rest.is_empty() => items
            .get_mut(*index)
            .is_some_and(|item| remove_in_value(item, rest)),
        _ => false,
    }
}

/// How messages name an entry of `[[section]]`: by name when it has one.
pub(crate) fn entry_label(section: &str, name: Option<&str>, index: usize) -> String {
    match name {
        Some(name) => format!("{section} {name:?}"),
        None => format!("{section} #{}", index + 1),
    }
}

/// How messages name a cluster: by name when it has one.
pub(crate) fn cluster_label(name: Option<&str>, index: usize) -> String {
    entry_label("cluster", name, index)
}

/// Keys valid in each table, for "belongs elsewhere" hints.
const SECTIONS: &[(&str, &[&str])] = &[
    (
        "[prometheus]",
        &[
            "url",
            "reload",
            "timeout",
            "delay",
            "username",
            "password_file",
            "bearer_token_file",
        ],
    ),
    (
        "the top of the file, before the first [table]",
        &["include_dir"],
    ),
    ("[defaults]", &["token_dir", "kubeconfig_dir"]),
    ("[metrics]", &["listen"]),
    ("[control]", &["socket"]),
    ("[limits]", &["concurrent_requests", "exec_timeout"]),
    (
        "[cluster.credentials]",
        &["kubeconfig", "context", "client_cert", "client_key", "self"],
    ),
    (
        "[[cluster]]",
        &[
            "name",
            "api_server",
            "service_account",
            "audiences",
            "max_chain_age",
            "kubeconfig_file",
        ],
    ),
];

/// Turns a serde error about the entry at `path` into our wording, and
/// returns the key it suggested instead, if any.
fn explain(message: &str, key: &str, path: &[Step], hit: Hit) -> (String, Option<String>) {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let expected: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
        let known: Vec<String> = key_prefix(key)
            .map(|p| expected.iter().map(|e| format!("{p}.{e}")).collect())
            .unwrap_or_else(|| expected.iter().map(|e| e.to_string()).collect());
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        let best = did_you_mean(key, &known);
        let elsewhere = SECTIONS
            .iter()
            .find(|(_, keys)| keys.contains(&leaf) && !expected.contains(&leaf))
            .map(|(section, _)| section);
        let hint = match (elsewhere, best) {
            (Some(section), Some(best)) => {
                format!("{leaf:?} belongs in {section}; or did you mean {best:?}?")
            }
            (Some(section), None) => format!("{leaf:?} belongs in {section}"),
            (None, Some(best)) => format!("did you mean {best:?}?"),
            (None, None) if known.is_empty() => "this table takes no keys".to_string(),
            (None, None) => format!("valid keys here: {}", known.join(", ")),
        };
        return (
            format!("unknown key {key:?} ({hint})"),
            best.map(str::to_string),
        );
    }
    let message = match message.find("expected struct ") {
        Some(i) => format!("{}expected a table", &message[..i]),
        None => message.to_string(),
    };
    let hint = if path.len() == 1 && (key == "cluster" || key == "consumer") {
        format!("write each {key} as a [[{key}]] table, with double brackets")
    } else if path.len() == 1 && hit == Hit::Value {
        format!("write [{key}] on a line of its own, followed by its keys")
    } else if leaf == "file_mode" {
        "write it as a quoted octal string, e.g. \"0640\"".to_string()
    } else if let Some(example) = example(leaf) {
        format!("e.g. {example}")
    } else {
        "see config/mcprom.toml for the reference".to_string()
    };
    (format!("key {key:?}: {message} ({hint})"), None)
}

/// `credentials` for `credentials.kubeconfg`.
fn key_prefix(key: &str) -> Option<&str> {
    key.rsplit_once('.').map(|(prefix, _)| prefix)
}

/// An example of a correct line for each key, shown with type errors.
fn example(key: &str) -> Option<&'static str> {
    Some(match key {
        "include_dir" => r#"include_dir = "/etc/mcprom.d""#,
        "url" => r#"url = "http://127.0.0.1:9090""#,
        "reload" => r#"reload = "on_rotation""#,
        "timeout" => r#"timeout = "60s""#,
        "delay" => r#"delay = "2s""#,
        "ca_file" => r#"ca_file = "/etc/mcprom/prod/ca.crt""#,
        "username" => r#"username = "mcprom""#,
        "password_file" => r#"password_file = "/etc/mcprom/prometheus.password""#,
        "bearer_token_file" => r#"bearer_token_file = "/etc/mcprom/prometheus.token""#,
        "token_dir" => r#"token_dir = "/var/lib/mcprom/tokens""#,
        "expiration" => r#"expiration = "1h""#,
        "refresh_at" => "refresh_at = 0.8",
        "file_group" => r#"file_group = "prometheus""#,
        "listen" => r#"listen = "127.0.0.1:9719""#,
        "socket" => r#"socket = "/run/mcprom/control.sock""#,
        "concurrent_requests" => "concurrent_requests = 32",
        "exec_timeout" => r#"exec_timeout = "30s""#,
        "name" => r#"name = "prod""#,
        "api_server" => r#"api_server = "https://192.168.0.153:6443""#,
        "insecure_skip_tls_verify" => "insecure_skip_tls_verify = false",
        "service_account" => r#"service_account = "kube-system/prometheus""#,
        "token_file" => r#"token_file = "/var/lib/mcprom/tokens/prod.token""#,
        "audiences" => r#"audiences = ["https://kubernetes.default.svc"]"#,
        "kubeconfig" => r#"kubeconfig = "/etc/mcprom/prod/kubeconfig""#,
        "context" => r#"context = "prod-admin""#,
        "client_cert" => r#"client_cert = "/etc/mcprom/prod/client.crt""#,
        "client_key" => r#"client_key = "/etc/mcprom/prod/client.key""#,
        "self" => "self = true",
        "max_chain_age" => r#"max_chain_age = "30d""#,
        "verify" => "verify = true",
        "verify_interval" => r#"verify_interval = "30m""#,
        "credentials" => "[cluster.credentials] followed by kubeconfig = \"...\"",
        "command" => r#"command = ["/usr/bin/systemctl", "start", "vmagent-reload.service"]"#,
        "clusters" => r#"clusters = ["prod", "staging"]"#,
        _ => return None,
    })
}
