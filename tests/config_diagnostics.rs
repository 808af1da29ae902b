//! `mcprom check` shows each config problem the way rustc shows a compile
//! error: `file:line:col: message`, the source line, a caret under the
//! spot, the hint; and `--format json` gives editors and CI the same
//! problems. The real binary on real files; the exact text is compared,
//! with the temporary directory written as `$DIR`.

use std::path::Path;
use std::process::{Command, Stdio};

const MCPROM: &str = env!("CARGO_BIN_EXE_mcprom");

/// `mcprom ARGS`: exit code, stdout, stderr (with `dir` shown as `$DIR`).
fn mcprom(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(MCPROM)
        .args(args)
        .env_remove("MCPROM_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .expect("run mcprom");
    let dir = dir.to_str().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).replace(dir, "$DIR");
    (
        out.status.code().expect("exit code"),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// Writes `text` as `$DIR/mcprom.toml` and runs `mcprom check` on it
/// (stderr is a pipe: no colours).
fn check(dir: &Path, text: &[u8], format: &str) -> (i32, String, String) {
    let config = dir.join("mcprom.toml");
    std::fs::write(&config, text).unwrap();
    mcprom(
        dir,
        &[
            "check",
            "--config",
            config.to_str().unwrap(),
            "--format",
            format,
        ],
    )
}

/// A cluster that validates, whose credential file exists.
fn cluster(dir: &Path, extra: &str) -> String {
    let token = dir.join("issuer.token");
    std::fs::write(&token, "abc.def.ghi\n").unwrap();
    format!(
        "[[cluster]]\n\
         name = \"prod\"\n\
         api_server = \"https://10.0.0.1:6443\"\n\
         service_account = \"kube-system/prometheus\"\n\
         {extra}\
         \n\
         [cluster.credentials]\n\
         token_file = {token:?}\n"
    )
}

#[test]
fn a_syntax_error_shows_its_line_and_a_caret() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = check(
        dir.path(),
        b"[prometheus]\nurl = \"http://127.0.0.1:9090\nreload = \"never\"\n",
        "text",
    );
    assert_eq!(code, 78, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "$DIR/mcprom.toml:2:29: TOML syntax error: invalid basic string, expected `\"`\n\
         \x20 |\n\
         2 | url = \"http://127.0.0.1:9090\n\
         \x20 |                             ^\n\
         \x20 |\n\
         \x20 = help: see https://toml.io for the syntax\n"
    );
}

#[test]
fn an_unknown_key_is_marked_and_the_likely_key_suggested() {
    let dir = tempfile::tempdir().unwrap();
    let text = cluster(dir.path(), "servce_account = \"x/y\"\n")
        .replace("service_account = \"kube-system/prometheus\"\n", "");
    let (code, _, stderr) = check(dir.path(), text.as_bytes(), "text");
    assert_eq!(code, 78, "{stderr}");
    assert_eq!(
        stderr,
        "$DIR/mcprom.toml:4:1: cluster \"prod\": unknown key \"servce_account\"\n\
         \x20 |\n\
         4 | servce_account = \"x/y\"\n\
         \x20 | ^^^^^^^^^^^^^^\n\
         \x20 |\n\
         \x20 = help: did you mean \"service_account\"?\n"
    );
}

#[test]
fn a_bad_value_is_underlined_whole() {
    let dir = tempfile::tempdir().unwrap();
    let text = cluster(dir.path(), "expiration = \"90 minutes\"\n");
    let (code, _, stderr) = check(dir.path(), text.as_bytes(), "text");
    assert_eq!(code, 78, "{stderr}");
    let first = stderr.lines().next().unwrap();
    assert!(
        first.starts_with("$DIR/mcprom.toml:5:14: cluster \"prod\": key \"expiration\": "),
        "{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().skip(1).take(3).collect();
    assert_eq!(
        lines,
        [
            "  |",
            "5 | expiration = \"90 minutes\"",
            "  |              ^^^^^^^^^^^^",
        ],
        "{stderr}"
    );
}

#[test]
fn a_missing_ca_file_points_at_the_key_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = cluster(dir.path(), "ca_file = \"ca.crt\"\n");
    let (code, stdout, stderr) = check(dir.path(), text.as_bytes(), "text");
    assert_eq!(code, 78, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "$DIR/mcprom.toml:5:1: cluster \"prod\": key \"ca_file\": cannot read $DIR/ca.crt: \
         No such file or directory (os error 2)\n\
         \x20 |\n\
         5 | ca_file = \"ca.crt\"\n\
         \x20 | ^^^^^^^^^^^^^^^^^^\n\
         \x20 |\n\
         \x20 = help: put the file there, or correct ca_file in the config file\n"
    );
}

#[test]
fn a_file_that_is_not_utf8_names_the_line_and_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = check(
        dir.path(),
        b"[prometheus]\n# caf\xe9 in Latin-1\nurl = \"http://127.0.0.1:9090\"\n",
        "text",
    );
    assert_eq!(code, 78, "{stderr}");
    assert_eq!(
        stderr,
        "$DIR/mcprom.toml:2:6: the file is not UTF-8: decoding failed at line 2, byte 6 \
         (0xe9, offset 18 in the file)\n\
         \x20 |\n\
         2 | # caf\u{fffd} in Latin-1\n\
         \x20 |      ^\n\
         \x20 |\n\
         \x20 = help: save the file as UTF-8\n"
    );
}

#[test]
fn json_gives_the_same_problems_with_their_places() {
    let dir = tempfile::tempdir().unwrap();
    // A file problem: the file is refused, host checks do not run.
    let text = cluster(dir.path(), "servce_account = \"x/y\"\n");
    let (code, stdout, stderr) = check(dir.path(), text.as_bytes(), "json");
    assert_eq!(code, 78, "{stderr}");
    assert_eq!(stderr, "");
    let value: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        value,
        serde_json::json!([{
            "file": "$DIR/mcprom.toml",
            "line": 5,
            "column": 1,
            "end_line": 5,
            "end_column": 15,
            "key": "servce_account",
            "severity": "error",
            "message": "cluster \"prod\": unknown key \"servce_account\"",
            "hint": "did you mean \"service_account\"?",
        }])
    );

    // A host problem and a warning, in a file that is valid.
    let text = cluster(dir.path(), "ca_file = \"ca.crt\"\nexpiration = \"5m\"\n");
    let (code, stdout, _) = check(dir.path(), text.as_bytes(), "json");
    assert_eq!(code, 78);
    let value: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let items = value.as_array().unwrap();
    assert_eq!(items.len(), 2, "{value:#}");
    assert_eq!(items[0]["severity"], "warning");
    assert_eq!(items[0]["key"], "expiration");
    assert_eq!(items[0]["line"], 6);
    assert_eq!(items[1]["severity"], "error");
    assert_eq!(items[1]["key"], "ca_file");
    assert_eq!(
        (
            &items[1]["line"],
            &items[1]["column"],
            &items[1]["end_column"]
        ),
        (&5.into(), &1.into(), &19.into())
    );
    assert_eq!(
        items[1]["hint"],
        "put the file there, or correct ca_file in the config file"
    );

    // A good file: an empty array, exit 0.
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("ca.crt"), ca.cert.pem()).unwrap();
    let text = cluster(dir.path(), "ca_file = \"ca.crt\"\n");
    let (code, stdout, stderr) = check(dir.path(), text.as_bytes(), "json");
    assert_eq!((code, stdout.as_str()), (0, "[]\n"), "{stderr}");

    // Unreadable: no place, still an object.
    let missing = dir.path().join("missing.toml");
    let (code, stdout, _) = mcprom(
        dir.path(),
        &[
            "check",
            "--format",
            "json",
            "--config",
            missing.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 78);
    let value: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(value[0]["file"], "$DIR/missing.toml");
    assert_eq!(value[0]["line"], serde_json::Value::Null);
    assert!(
        value[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("cannot read $DIR/missing.toml: No such file"),
        "{value:#}"
    );
}
