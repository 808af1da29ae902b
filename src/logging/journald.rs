//! A tracing layer that speaks journald's native protocol
//! (<https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>).
//!
//! Our own rather than `tracing-journald` because that crate sends to a
//! fixed socket path (tests could only reach it as root in a private mount
//! namespace) and names fields `F_CLUSTER` and `SPAN_…`; here span and event
//! fields become plain `CLUSTER=`, `ERROR=`, …, and `MESSAGE=` carries the
//! fields too, so the default `journalctl` view still says which cluster
//! failed and why.

use std::fmt::{self, Write as _};
use std::io::{self, Write as _};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Sent as `SYSLOG_IDENTIFIER=`, what `journalctl -t mcprom` selects. Fixed
/// rather than taken from argv[0], which may be a full path.
const IDENTIFIER: &str = "mcprom";

/// Names the layer writes itself, and well-known journal fields with a
/// meaning of their own: a tracing field with one of these names is sent
/// as `F_NAME` instead so it cannot pose as them.
const RESERVED: &[&str] = &[
    "MESSAGE",
    "MESSAGE_ID",
    "PRIORITY",
    "CODE_FILE",
    "CODE_LINE",
    "CODE_FUNC",
    "ERRNO",
    "INVOCATION_ID",
    "SYSLOG_FACILITY",
    "SYSLOG_IDENTIFIER",
    "SYSLOG_PID",
    "SYSLOG_TIMESTAMP",
    "SYSLOG_RAW",
    "TARGET",
    "TID",
    "DOCUMENTATION",
];

/// journald's limit on field names.
const MAX_NAME_LEN: usize = 64;

/// Sends every event as one datagram to journald's socket.
pub struct JournaldLayer {
    socket: UnixDatagram,
    path: PathBuf,
}

impl JournaldLayer {
    /// Open a socket for `path` and check that something listens there
    /// (journald discards the empty probe datagram).
    pub fn connect(path: PathBuf) -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        // Sent to the path every time rather than `connect`ed once: a
        // restarted journald may have a new socket at the same path.
        socket.send_to(&[], &path)?;
        Ok(JournaldLayer { socket, path })
    }

    fn send(&self, payload: &[u8]) -> io::Result<()> {
        self.socket.send_to(payload, &self.path).map(drop)
    }
}

/// Syslog priorities, as `journalctl -p` filters them: info is
/// "informational" (6), not "notice" (5), so `-p notice` hides routine
/// rotations; debug and trace are both "debug" (7).
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The fields of one span, kept in the span's extensions.
struct SpanFields(Vec<(&'static str, String)>);

/// Collects a message and `name = value` pairs, rendering values the way
/// tracing's own formatter does (`%` with Display, `?` with Debug), without
/// quoting strings.
#[derive(Default)]
struct Collect {
    message: Option<String>,
    fields: Vec<(&'static str, String)>,
}

impl Collect {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = Some(value);
        } else if let Some(slot) = self.fields.iter_mut().find(|(n, _)| *n == field.name()) {
            // A span field recorded again (`Span::record`): the new value.
            slot.1 = value;
        } else {
            self.fields.push((field.name(), value));
        }
    }
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The whole chain, as `{:#}` would print an anyhow error.
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            let _ = write!(text, ": {cause}");
            source = cause.source();
        }
        self.put(field, text);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

/// One event, ready to be encoded or printed.
struct Entry<'a> {
    level: Level,
    target: &'a str,
    file: Option<&'a str>,
    line: Option<u32>,
    message: String,
    /// Span fields from the outermost span inwards, then the event's own.
    fields: Vec<(&'static str, String)>,
}

impl Entry<'_> {
    /// `token refresh failed cluster=prod error="connection refused"`: the
    /// line `journalctl` shows by default, and the stderr fallback.
    fn line(&self) -> String {
        let mut line = self.message.clone();
        for (name, value) in &self.fields {
            let _ = write!(line, " {name}=");
            if value.is_empty()
                || value.contains(|c: char| c.is_whitespace() || c == '"' || c == '=')
            {
                let _ = write!(line, "{value:?}");
            } else {
                line.push_str(value);
            }
        }
        line
    }

    /// The native protocol: `NAME=value\n`, or for values with a newline
    /// `NAME\n`, the length as 64-bit little endian, the value, `\n`.
    fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(512);
        put(&mut buf, "PRIORITY", &priority(self.level).to_string());
        put(&mut buf, "SYSLOG_IDENTIFIER", IDENTIFIER);
        put(&mut buf, "MESSAGE", &self.line());
        put(&mut buf, "TARGET", self.target);
        if let Some(file) = self.file {
            put(&mut buf, "CODE_FILE", file);
        }
        if let Some(line) = self.line {
            put(&mut buf, "CODE_LINE", &line.to_string());
        }
        // The innermost value wins when a span and the event (or two
        // nested spans) use the same name.
        for (i, (name, value)) in self.fields.iter().enumerate() {
            if self.fields[i + 1..].iter().any(|(later, _)| later == name) {
                continue;
            }
            if let Some(name) = journal_name(name) {
                put(&mut buf, &name, value);
            }
        }
        buf
    }
}

fn put(buf: &mut Vec<u8>, name: &str, value: &str) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'\n');
}

/// journald accepts names of `A-Z`, `0-9` and `_` that start with a letter
/// (a leading `_` marks the fields only journald itself may set), at most
/// 64 bytes long; it drops fields with other names. `service_account`
/// becomes `SERVICE_ACCOUNT`, `http.status` `HTTP_STATUS`.
fn journal_name(name: &str) -> Option<String> {
    let mut out: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' => c,
            _ => '_',
        })
        .skip_while(|c| !c.is_ascii_uppercase())
        .collect();
    if out.is_empty() {
        return None;
    }
    if RESERVED.contains(&out.as_str()) {
        out.insert_str(0, "F_");
    }
    out.truncate(MAX_NAME_LEN);
    Some(out)
}

impl<S> tracing_subscriber::Layer<S> for JournaldLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Collect::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(SpanFields(fields.fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        let Some(SpanFields(stored)) = extensions.get_mut::<SpanFields>() else {
            return;
        };
        let mut fields = Collect {
            message: None,
            fields: std::mem::take(stored),
        };
        values.record(&mut fields);
        *stored = fields.fields;
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(span_fields)) = span.extensions().get::<SpanFields>() {
                    fields.extend(span_fields.iter().cloned());
                }
            }
        }
        let mut own = Collect::default();
        event.record(&mut own);
        fields.append(&mut own.fields);
        let meta = event.metadata();
        let entry = Entry {
            level: *meta.level(),
            target: meta.target(),
            file: meta.file(),
            line: meta.line(),
            message: own.message.unwrap_or_default(),
            fields,
        };
        if self.send(&entry.encode()).is_err() {
            // journald gone, or an entry beyond the datagram size limit:
            // stderr is the journal stream too, so the message still lands,
            // without its fields.
            let _ = writeln!(io::stderr(), "{} {}", entry.level, entry.line());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeMap;
    use std::time::Duration;

    use tracing_subscriber::layer::SubscriberExt;

    /// Parse one datagram of the native protocol.
    fn parse(mut data: &[u8]) -> BTreeMap<String, Vec<String>> {
        let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
        while !data.is_empty() {
            let end = data.iter().position(|&b| b == b'\n').unwrap();
            let line = &data[..end];
            let (name, value, rest) = match line.iter().position(|&b| b == b'=') {
                Some(eq) => (&line[..eq], line[eq + 1..].to_vec(), &data[end + 1..]),
                None => {
                    let after = &data[end + 1..];
                    let len = u64::from_le_bytes(after[..8].try_into().unwrap()) as usize;
                    assert_eq!(after[8 + len], b'\n');
                    (line, after[8..8 + len].to_vec(), &after[8 + len + 1..])
                }
            };
            fields
                .entry(String::from_utf8(name.to_vec()).unwrap())
                .or_default()
                .push(String::from_utf8(value).unwrap());
            data = rest;
        }
        fields
    }

    fn capture(f: impl FnOnce()) -> Vec<BTreeMap<String, Vec<String>>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let server = UnixDatagram::bind(&path).unwrap();
        let layer = JournaldLayer::connect(path).unwrap();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, f);
        server.set_nonblocking(true).unwrap();
        let mut entries = Vec::new();
        let mut buf = vec![0; 65536];
        while let Ok(n) = server.recv(&mut buf) {
            if n > 0 {
                entries.push(parse(&buf[..n]));
            }
        }
        entries
    }

    fn one(fields: &BTreeMap<String, Vec<String>>, name: &str) -> String {
        match fields.get(name).map(Vec::as_slice) {
            Some([value]) => value.clone(),
            other => panic!("{name}: expected one value, got {other:?} in {fields:?}"),
        }
    }

    #[test]
    fn span_and_event_fields_become_plain_upper_case_journal_fields() {
        let entries = capture(|| {
            let span = tracing::info_span!("cluster", cluster = %"prod");
            let _guard = span.enter();
            tracing::warn!(
                service_account = %"kube-system/prometheus",
                reason = "unreachable",
                retry_in = ?Duration::from_secs(4),
                error = %"connection refused",
                "token refresh failed; keeping the current token"
            );
        });
        let [entry] = entries.as_slice() else {
            panic!("{entries:?}")
        };
        assert_eq!(one(entry, "PRIORITY"), "4");
        assert_eq!(one(entry, "SYSLOG_IDENTIFIER"), "mcprom");
        assert_eq!(one(entry, "CLUSTER"), "prod");
        assert_eq!(one(entry, "SERVICE_ACCOUNT"), "kube-system/prometheus");
        assert_eq!(one(entry, "REASON"), "unreachable");
        assert_eq!(one(entry, "RETRY_IN"), "4s");
        assert_eq!(one(entry, "ERROR"), "connection refused");
        assert_eq!(
            one(entry, "MESSAGE"),
            "token refresh failed; keeping the current token cluster=prod \
             service_account=kube-system/prometheus reason=unreachable retry_in=4s \
             error=\"connection refused\""
        );
        assert!(one(entry, "CODE_FILE").ends_with("journald.rs"));
        assert!(one(entry, "CODE_LINE").parse::<u32>().is_ok());
        assert_eq!(one(entry, "TARGET"), module_path!());
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        let entries = capture(|| {
            tracing::error!("e");
            tracing::warn!("w");
            tracing::info!("i");
            tracing::debug!("d");
            tracing::trace!("t");
        });
        let priorities: Vec<String> = entries.iter().map(|e| one(e, "PRIORITY")).collect();
        assert_eq!(priorities, ["3", "4", "6", "7", "7"]);
    }

    #[test]
    fn multi_line_values_use_the_length_prefixed_form() {
        let entries =
            capture(|| tracing::error!("invalid configuration:\n/etc/mcprom.toml:3:1: bad"));
        assert_eq!(
            one(&entries[0], "MESSAGE"),
            "invalid configuration:\n/etc/mcprom.toml:3:1: bad"
        );
    }

    #[test]
    fn the_innermost_value_of_a_repeated_name_wins_and_recorded_values_replace() {
        let entries = capture(|| {
            let outer =
                tracing::info_span!("outer", cluster = "a", attempt = tracing::field::Empty);
            let _o = outer.enter();
            outer.record("attempt", 2);
            let inner = tracing::info_span!("inner", cluster = "b");
            let _i = inner.enter();
            tracing::info!("x");
        });
        assert_eq!(one(&entries[0], "CLUSTER"), "b");
        assert_eq!(one(&entries[0], "ATTEMPT"), "2");
    }

    #[test]
    fn field_names_are_sanitized_and_reserved_names_prefixed() {
        assert_eq!(
            journal_name("service_account").as_deref(),
            Some("SERVICE_ACCOUNT")
        );
        assert_eq!(journal_name("http.status").as_deref(), Some("HTTP_STATUS"));
        assert_eq!(journal_name("_private").as_deref(), Some("PRIVATE"));
        assert_eq!(journal_name("1st").as_deref(), Some("ST"));
        assert_eq!(journal_name("priority").as_deref(), Some("F_PRIORITY"));
        assert_eq!(journal_name("__"), None);
        assert_eq!(journal_name(&"a".repeat(100)).unwrap().len(), MAX_NAME_LEN);
    }

    #[test]
    fn connecting_fails_when_nothing_listens() {
        let dir = tempfile::tempdir().unwrap();
        assert!(JournaldLayer::connect(dir.path().join("absent")).is_err());
    }
}
