//! Property tests over everything mcprom parses from outside: the config
//! file, JWT claims, TokenRequest answers, Prometheus's reload answers, and
//! the simulator's protobuf decoder. None may panic, and each has a few
//! properties beyond that (round trips, error labels, bounded messages).
//!
//! Inputs are random, mutations of the seed corpus in
//! `tests/fuzz_corpus/<target>/`, or built from the format's grammar.
//! Cases per property: `MCPROM_FUZZ_CASES` (default 1,500, 21,000 inputs in
//! all; the long run
//! uses 1,000,000); the RNG seed: `MCPROM_FUZZ_SEED` (default fixed, so CI
//! is reproducible). Failures are saved to `tests/fuzz_inputs.proptest-regressions`
//! and replayed first on every run.

use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};

fn config() -> Config {
    let cases = std::env::var("MCPROM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_500);
    let seed = std::env::var("MCPROM_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6d63_7072_6f6d);
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        max_shrink_iters: 10_000,
        ..Config::default()
    }
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_corpus")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, Index),
    Duplicate(Index, Index, Index),
    Word(Index, Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(a, b, c)| Mutation::Duplicate(a, b, c)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, w)| Mutation::Word(i, w)),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply(mut data: Vec<u8>, mutations: &[Mutation], words: &[&str]) -> Vec<u8> {
    for m in mutations {
        let len = data.len();
        match m {
            Mutation::Flip(i, b) if len > 0 => data[i.index(len)] ^= b | 1,
            Mutation::Insert(i, bytes) => {
                let at = i.index(len + 1);
                data.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                let end = at + n.index(len - at).min(16) + 1;
                data.drain(at..end.min(len));
            }
            Mutation::Duplicate(a, b, c) if len > 0 => {
                let from = a.index(len);
                let to = (from + b.index(len - from) + 1).min(len).min(from + 64);
                let piece = data[from..to].to_vec();
                let at = c.index(len + 1);
                data.splice(at..at, piece);
            }
            Mutation::Word(i, w) if !words.is_empty() => {
                let at = i.index(len + 1);
                data.splice(at..at, w.get(words).bytes());
            }
            Mutation::Truncate(i) if len > 0 => data.truncate(i.index(len)),
            _ => {}
        }
    }
    data
}

/// A seed from `seeds` with a few mutations.
fn mutated(seeds: Vec<Vec<u8>>, words: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    (any::<Index>(), prop::collection::vec(mutation(), 0..6))
        .prop_map(move |(i, m)| apply(i.get(&seeds).clone(), &m, words))
}

// ---------------------------------------------------------------- config

const CONFIG_WORDS: &[&str] = &[
    "[[defaults]]\n",
    "[[prometheus]]\n",
    "[[metrics]]\n",
    "[[limits]]\n",
    "[[control]]\n",
    "[[cluster.credentials]]\n",
    "[prometheus]\n",
    "[defaults]\n",
    "[metrics]\n",
    "[control]\n",
    "[limits]\n",
    "[[cluster]]\n",
    "[cluster.credentials]\n",
    "name = \"x\"\n",
    "url = ",
    "reload = \"never\"\n",
    "timeout = ",
    "delay = ",
    "token_dir = ",
    "expiration = ",
    "refresh_at = ",
    "file_mode = ",
    "file_group = ",
    "listen = ",
    "socket = ",
    "concurrent_requests = ",
    "api_server = ",
    "ca_file = ",
    "service_account = ",
    "token_file = ",
    "audiences = ",
    "kubeconfig = ",
    "context = ",
    "client_cert = ",
    "client_key = ",
    "self = true\n",
    "insecure_skip_tls_verify = true\n",
    "\"1h\"",
    "\"0s\"",
    "\"1ms\"",
    "\"99999999999999999999h\"",
    "\"1h30m\"",
    "\"-1s\"",
    "0.8",
    "1e309",
    "-0.0",
    "nan",
    "inf",
    "0",
    "18446744073709551616",
    "\"0777\"",
    "\"9999\"",
    "\"\"",
    "\"a/b\"",
    "\"/\"",
    "\"../x\"",
    "\"https://[::1]:6443/p\"",
    "\"http://\"",
    "\"127.0.0.1:0\"",
    "[\"a\", 1]",
    "{ a = 1 }",
    "'''\n'''",
    "\"\"\"\n\"\"\"",
    "\"\\u00e9\"",
    "é",
    "\u{0}",
    "\r\n",
    "#",
    "=",
    "\"ü🦀\"",
    "\t",
    " ",
    "\n\n",
];

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<String>().prop_map(|s| format!("{s:?}")),
        (
            0u64..100_000,
            prop::sample::select(vec!["ms", "s", "m", "h", "d", "", "x"])
        )
            .prop_map(|(n, u)| format!("\"{n}{u}\"")),
        prop::sample::select(CONFIG_WORDS.to_vec()).prop_map(str::to_owned),
    ]
}

const KEYS: &[&str] = &[
    "name",
    "url",
    "reload",
    "timeout",
    "delay",
    "token_dir",
    "expiration",
    "refresh_at",
    "file_mode",
    "file_group",
    "listen",
    "socket",
    "concurrent_requests",
    "api_server",
    "ca_file",
    "service_account",
    "token_file",
    "audiences",
    "kubeconfig",
    "context",
    "client_cert",
    "client_key",
    "self",
    "insecure_skip_tls_verify",
    "username",
    "password_file",
    "bearer_token_file",
    "servce_account",
    "x",
];

/// A file built from the grammar: sections with key = value lines.
fn toml_document() -> impl Strategy<Value = String> {
    let line = (prop::sample::select(KEYS.to_vec()), toml_value())
        .prop_map(|(k, v)| format!("{k} = {v}\n"));
    let section = (
        prop::sample::select(vec![
            "[prometheus]",
            "[defaults]",
            "[metrics]",
            "[control]",
            "[limits]",
            "[[cluster]]",
            "[cluster.credentials]",
            "[[defaults]]",
            "[[limits]]",
            "[[cluster.credentials]]",
            "[other]",
            "",
        ]),
        prop::collection::vec(line, 0..8),
    )
        .prop_map(|(h, lines)| format!("{h}\n{}", lines.concat()));
    prop::collection::vec(section, 0..8).prop_map(|s| s.concat())
}

fn config_seeds() -> Vec<Vec<u8>> {
    let mut seeds = corpus("config");
    seeds.push(
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mcprom.toml")).unwrap(),
    );
    seeds
}

/// Each config input gets this long to decode and validate. A hang guard
/// far above the milliseconds it takes, not a timing claim.
const CONFIG_TIME_BUDGET: Duration = Duration::from_secs(20);

/// Memory one config input may use while it is decoded: 8 MiB plus 1 KiB
/// per byte of input (a linear bound with a wide margin).
fn config_memory_budget(text: &str) -> usize {
    (8 << 20) + 1024 * text.len()
}

fn check_config(text: &str) {
    let owned = text.to_owned();
    let budget = config_memory_budget(text);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let peak = memory::within(budget, || {
            match mcprom::config::parse(&owned, Path::new("/etc/mcprom.toml")) {
                Ok(settings) => {
                    let _ = mcprom::config::warnings(&settings);
                    for c in &settings.clusters {
                        assert!(c.token_file.is_absolute(), "{:?}", c.token_file);
                        assert!(c.refresh_at > 0.0 && c.refresh_at < 1.0, "{}", c.refresh_at);
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    assert!(!message.is_empty());
                }
            }
        });
        let _ = tx.send(peak);
    });
    match rx.recv_timeout(CONFIG_TIME_BUDGET) {
        Ok(peak) => assert!(peak <= budget, "used {peak} bytes, budget {budget}"),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("decoding took more than {CONFIG_TIME_BUDGET:?}: {text:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("decoding panicked: {text:?}")
        }
    }
}

/// Per-thread accounting of heap use, for the config decoder's memory
/// budget. An allocation that would take a budgeted thread past its budget
/// fails, which aborts the test run at once instead of eating the machine.
#[allow(unsafe_code)]
mod memory {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<usize> = const { Cell::new(0) };
        static PEAK: Cell<usize> = const { Cell::new(0) };
        static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
    }

    /// Runs `f` on this thread with `budget` bytes (and a hard stop at four
    /// times that); returns the peak it used.
    pub fn within(budget: usize, f: impl FnOnce()) -> usize {
        LIVE.set(0);
        PEAK.set(0);
        LIMIT.set(budget.saturating_mul(4));
        f();
        LIMIT.set(usize::MAX);
        PEAK.get()
    }

    fn grow(by: usize) -> bool {
        LIVE.try_with(|live| {
            let now = live.get().saturating_add(by);
            // A panic's report (its backtrace reads the binary's debug
            // information) is not the decoder's: refusing it memory would
            // turn a clear failure into a hang on the backtrace lock.
            if now > LIMIT.try_with(Cell::get).unwrap_or(usize::MAX) && !std::thread::panicking() {
                return false;
            }
            live.set(now);
            let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
            true
        })
        .unwrap_or(true)
    }

    fn shrink(by: usize) {
        let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(by)));
    }

    pub struct Counting;

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if !grow(layout.size()) {
                return std::ptr::null_mut();
            }
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            shrink(layout.size());
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if new_size > layout.size() && !grow(new_size - layout.size()) {
                return std::ptr::null_mut();
            }
            let moved = unsafe { System.realloc(ptr, layout, new_size) };
            if new_size < layout.size() {
                shrink(layout.size() - new_size);
            }
            moved
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_parser_never_panics_on_arbitrary_text(text in any::<String>()) {
        check_config(&text);
    }

    #[test]
    fn config_parser_never_panics_on_mutated_configs(bytes in mutated(config_seeds(), CONFIG_WORDS)) {
        check_config(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn config_parser_never_panics_on_grammar_built_files(text in toml_document()) {
        check_config(&text);
    }
}

#[test]
fn the_doubled_bracket_typos_decode_within_budget() {
    // The inputs that looped for ever before (issue: configs that hang).
    for section in ["defaults", "metrics", "prometheus", "limits", "control"] {
        check_config(&format!("[[{section}]]\n"));
        check_config(&format!("[[{section}]]\nx = 1\n[[{section}]]\n"));
    }
    check_config("[[cluster]]\nname = \"a\"\n[[cluster.credentials]]\nkubeconfig = \"k\"\n");
}

// ---------------------------------------------------------------- JWT

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        prop::sample::select(vec![
            0.0,
            -0.0,
            1e13,
            1e13 - 1.0,
            9.99e12,
            1e300,
            -1.0,
            0.5,
            4_102_444_800.0
        ])
        .prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A claims object with the keys mcprom reads, each maybe present, with
/// values of any JSON type.
fn claims_object() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec!["sub", "aud", "iat", "exp", "nbf", "iss", "x"]);
    prop::collection::btree_map(key, json_value(), 0..6).prop_map(|m| {
        serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            .to_string()
    })
}

fn jwt_like() -> impl Strategy<Value = String> {
    let part = prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| URL_SAFE_NO_PAD.encode(b));
    prop_oneof![
        (part.clone(), claims_object(), part.clone())
            .prop_map(|(h, c, s)| format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(c))),
        (
            part.clone(),
            prop::collection::vec(any::<u8>(), 0..200),
            part
        )
            .prop_map(|(h, p, s)| format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(p))),
    ]
}

const JWT_WORDS: &[&str] = &[
    ".", "..", "=", "+", "/", "-", "_", " ", "\n", "\u{0}", "é", "eyJ", "e30",
];

fn check_jwt(text: &str) {
    match mcprom::token::Token::new(text) {
        Ok(token) => {
            let value = token.expose();
            assert_eq!(value, value.trim());
            assert!(value.len() <= mcprom::token::MAX_TOKEN_LEN);
            assert_eq!(value.split('.').count(), 3);
            assert!(!format!("{token:?} {token}").contains(value));
            if let Ok(c) = token.claims() {
                let _ = c.expiry();
                if let Some(l) = c.lifetime() {
                    assert_eq!(l.as_secs(), c.expires_at - c.issued_at.unwrap());
                }
            }
        }
        // Error messages are fixed texts: a value long enough to be a
        // secret never appears in them (short inputs can match by chance:
        // "d t" is in "expected three").
        Err(e) => assert!(text.trim().len() < 16 || !e.to_string().contains(text.trim())),
    }
    let _ = mcprom::token::Claims::peek(text);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn jwt_peek_never_panics_on_arbitrary_text(text in any::<String>()) {
        check_jwt(&text);
    }

    #[test]
    fn jwt_peek_never_panics_on_tokens_with_arbitrary_claims(text in jwt_like()) {
        check_jwt(&text);
    }

    #[test]
    fn jwt_peek_never_panics_on_mutated_tokens(bytes in mutated(corpus("jwt"), JWT_WORDS)) {
        check_jwt(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn claims_within_range_are_read_back_exactly(iat in 0u64..10_000_000_000_000, exp in 0u64..10_000_000_000_000, sub in any::<String>()) {
        let payload = serde_json::json!({"sub": sub, "iat": iat, "exp": exp}).to_string();
        let jwt = format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(payload));
        let c = mcprom::token::Claims::peek(&jwt).unwrap();
        prop_assert_eq!(c.expires_at, exp);
        prop_assert_eq!(c.issued_at, Some(iat));
        prop_assert_eq!(c.subject.as_deref(), Some(sub.as_str()));
    }
}

// ---------------------------------------------------------------- TokenRequest answers

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string().into_bytes()),
        (0u64..1000).prop_map(|n| n.to_string().into_bytes()),
        prop::sample::select(vec![
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Fri, 01 Jan 2100 00:00:00 GMT",
            "Mon, 32 Foo 2024 99:99:99 GMT",
            "-1",
            "1.5",
            "",
            " 3 ",
            "18446744073709551616",
            "299 - \"requested expiration of 86400 seconds shortened to 3600 seconds\"",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

fn token_body() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![jwt_like(), any::<String>()];
    let timestamp = prop_oneof![
        Just("2100-01-01T00:00:00Z".to_owned()),
        Just("1970-01-01T00:00:00Z".to_owned()),
        any::<String>(),
    ];
    prop_oneof![
        (token, timestamp).prop_map(|(t, ts)| serde_json::json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "spec": {"expirationSeconds": 3600},
            "status": {"token": t, "expirationTimestamp": ts}
        })
        .to_string()
        .into_bytes()),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        mutated(
            corpus("token_response"),
            &["{", "}", "\"", ":", ",", "null", "[]", "\\u0000"]
        ),
        prop::collection::vec(any::<u8>(), 0..300),
    ]
}

fn status_code() -> impl Strategy<Value = u16> {
    prop_oneof![
        prop::sample::select(vec![
            200u16, 201, 204, 400, 401, 403, 404, 409, 422, 429, 500, 502, 503, 504
        ]),
        100u16..1000,
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn token_request_answers_never_panic_and_map_to_known_reasons(
        code in status_code(),
        retry_after in prop::option::of(header_value()),
        warning in prop::option::of(header_value()),
        body in token_body(),
    ) {
        let status = http::StatusCode::from_u16(code).unwrap();
        let mut headers = http::HeaderMap::new();
        if let Some(v) = retry_after.and_then(|v| http::HeaderValue::from_bytes(&v).ok()) {
            headers.insert(http::header::RETRY_AFTER, v);
        }
        if let Some(v) = warning.and_then(|v| http::HeaderValue::from_bytes(&v).ok()) {
            headers.insert(http::header::WARNING, v);
        }
        let sent = SystemTime::now();
        match mcprom::issuer::interpret_response(status, &headers, &body, sent) {
            Ok(issued) => {
                prop_assert!(status.is_success());
                prop_assert!(!issued.lifetime.is_zero());
                prop_assert_eq!(issued.claims.clone(), issued.token.claims().unwrap());
            }
            Err(e) => {
                prop_assert!(mcprom::metrics::REASONS.contains(&e.metric_label()), "{}", e.metric_label());
                let message = e.to_string();
                prop_assert!(!message.is_empty());
                prop_assert!(!message.contains('\n'), "one log line: {:?}", message);
                if let Some(after) = e.retry_after() {
                    prop_assert_eq!(code, 429);
                    let _ = mcprom::schedule::backoff(0, None, Some(after), 0.5);
                }
                if code == 401 { prop_assert_eq!(e.metric_label(), "unauthorized"); }
                if code == 403 { prop_assert_eq!(e.metric_label(), "forbidden"); }
            }
        }
    }

    #[test]
    fn reload_answers_never_panic_and_keep_messages_bounded(
        code in status_code(),
        body in prop_oneof![any::<String>(), ".{0,3000}"],
    ) {
        let outcome = mcprom::reload::reload_outcome(code, &body, "http://127.0.0.1:9090");
        prop_assert_eq!(outcome.is_ok(), (200..300).contains(&code));
        if let Err(e) = outcome {
            let message = e.to_string();
            prop_assert!(!message.contains('\n'), "one log line: {:?}", message);
            // The body is quoted at most 1,000 characters long.
            prop_assert!(message.chars().count() <= 1400, "{}", message.len());
            prop_assert_eq!(e.needs_operator(), matches!(code, 401 | 403 | 405));
            let _ = mcprom::reload::reload_backoff(&e, 3);
        }
    }
}

// ---------------------------------------------------------------- protobuf (the simulator)

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(field: u64, b: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// An unknown field of any wire type, to be skipped by the decoder.
fn noise_field() -> impl Strategy<Value = Vec<u8>> {
    (
        5u64..1000,
        0u8..6,
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..12),
    )
        .prop_map(|(n, wire, v, b)| {
            let mut out = Vec::new();
            match wire {
                0 => {
                    varint(n << 3, &mut out);
                    varint(v, &mut out);
                }
                1 => {
                    varint(n << 3 | 1, &mut out);
                    out.extend_from_slice(&v.to_le_bytes());
                }
                5 => {
                    varint(n << 3 | 5, &mut out);
                    out.extend_from_slice(&(v as u32).to_le_bytes());
                }
                _ => bytes_field(n, &b, &mut out),
            }
            out
        })
}

/// A well-formed envelope carrying a TokenRequest, with unknown fields mixed in.
fn token_request_body() -> impl Strategy<Value = (Vec<u8>, Vec<String>, Option<i64>)> {
    (
        prop::collection::vec(any::<String>(), 0..4),
        prop::option::of(any::<i64>()),
        prop::collection::vec(noise_field(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(audiences, expiration, noise, bound)| {
            let mut spec = Vec::new();
            for a in &audiences {
                bytes_field(1, a.as_bytes(), &mut spec);
            }
            if bound {
                bytes_field(3, b"\x0a\x03Pod", &mut spec);
            }
            if let Some(e) = expiration {
                varint(4 << 3, &mut spec);
                varint(e as u64, &mut spec);
            }
            for n in &noise {
                spec.extend_from_slice(n);
            }
            let mut request = Vec::new();
            bytes_field(1, b"", &mut request);
            bytes_field(2, &spec, &mut request);
            let mut type_meta = Vec::new();
            bytes_field(1, b"authentication.k8s.io/v1", &mut type_meta);
            bytes_field(2, b"TokenRequest", &mut type_meta);
            let mut body = mcprom_sim::proto::K8S_MAGIC.to_vec();
            bytes_field(1, &type_meta, &mut body);
            bytes_field(2, &request, &mut body);
            for n in &noise {
                body.extend_from_slice(n);
            }
            (body, audiences, expiration)
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn protobuf_decoder_never_panics_on_arbitrary_bytes(
        magic in any::<bool>(),
        bytes in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut body = if magic { mcprom_sim::proto::K8S_MAGIC.to_vec() } else { Vec::new() };
        body.extend_from_slice(&bytes);
        let _ = mcprom_sim::proto::decode_token_request(&body);
        let _ = mcprom_sim::proto::decode_token_request_message(&bytes);
        let _ = mcprom_sim::proto::decode_envelope(&body);
        let _ = mcprom_sim::proto::decode_access_review_message(&bytes);
    }

    #[test]
    fn protobuf_decoder_never_panics_on_mutated_requests(bytes in mutated(corpus("proto"), &["\u{0}", "\u{80}", "\u{ff}", "k8s\u{0}"])) {
        let _ = mcprom_sim::proto::decode_token_request(&bytes);
        if let Ok((_, _, raw)) = mcprom_sim::proto::decode_envelope(&bytes) {
            let _ = mcprom_sim::proto::decode_access_review_message(raw);
        }
    }

    #[test]
    fn protobuf_requests_decode_to_what_was_encoded((body, audiences, expiration) in token_request_body()) {
        let spec = mcprom_sim::proto::decode_token_request(&body).unwrap();
        prop_assert_eq!(spec.audiences, audiences);
        prop_assert_eq!(spec.expiration_seconds, expiration);
    }

    #[test]
    fn protobuf_decoder_never_panics_on_mutated_generated_requests(
        (body, _, _) in token_request_body(),
        edits in prop::collection::vec(mutation(), 1..6),
    ) {
        let _ = mcprom_sim::proto::decode_token_request(&apply(body, &edits, &[]));
    }
}

#[test]
fn the_seed_corpus_is_handled() {
    for seed in config_seeds() {
        check_config(&String::from_utf8_lossy(&seed));
    }
    for seed in corpus("jwt") {
        check_jwt(&String::from_utf8_lossy(&seed));
    }
    for seed in corpus("proto") {
        mcprom_sim::proto::decode_token_request(&seed).expect("the proto seeds are valid");
    }
    let created = corpus("token_response")
        .into_iter()
        .find(|s| s.starts_with(b"{\"kind\":\"TokenRequest\""))
        .unwrap();
    let issued = mcprom::issuer::interpret_response(
        http::StatusCode::CREATED,
        &http::HeaderMap::new(),
        &created,
        SystemTime::now(),
    )
    .expect("the seed answer is a usable token");
    assert_eq!(issued.lifetime, Duration::from_secs(3600));
}
