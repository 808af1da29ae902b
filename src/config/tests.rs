//! Tests of the whole loader: text in, `Settings` or positioned errors out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const PATH: &str = "/etc/mcprom.toml";
const REFERENCE: &str = include_str!("../../config/mcprom.toml");

/// A valid cluster; line 1 of this text is the `[[cluster]]` header.
const PROD: &str = r#"[[cluster]]
name = "prod"
api_server = "https://10.0.0.1:6443"
service_account = "kube-system/prometheus"

[cluster.credentials]
kubeconfig = "/etc/mcprom/prod/kubeconfig"
"#;

fn ok(text: &str) -> Settings {
    parse(text, Path::new(PATH)).unwrap_or_else(|e| panic!("expected valid config, got:\n{e}"))
}

fn problems(text: &str) -> Vec<String> {
    match parse(text, Path::new(PATH)) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.problems().to_vec(),
    }
}

/// Asserts that `text` has exactly one problem, and that it is `expected`.
fn rejects(text: &str, expected: &str) {
    assert_eq!(
        problems(text),
        vec![expected.to_string()],
        "config:\n{text}"
    );
}

/// Asserts that `text` has exactly one problem, starting with `prefix`
/// (`file:line:col: context: key`) and containing each of `parts`.
fn rejects_with(text: &str, prefix: &str, parts: &[&str]) {
    let problems = problems(text);
    assert_eq!(problems.len(), 1, "expected one problem, got {problems:#?}");
    let problem = &problems[0];
    assert!(
        problem.starts_with(prefix),
        "{problem:?} should start with {prefix:?}"
    );
    for part in parts {
        assert!(
            problem.contains(part),
            "{problem:?} should contain {part:?}"
        );
    }
}

/// The reference file with the example cluster block uncommented.
fn reference_with_example() -> String {
    let mut inside = false;
    let mut out = String::new();
    for line in REFERENCE.lines() {
        if line.contains("BEGIN EXAMPLE CLUSTER") {
            inside = true;
        } else if line.contains("END EXAMPLE CLUSTER") {
            inside = false;
        } else if inside {
            out.push_str(
                line.strip_prefix("# ")
                    .unwrap_or(line.trim_start_matches('#')),
            );
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Uncomments the commented-out assignments of `key` (`# key = ...`).
fn uncomment(text: &str, key: &str) -> String {
    let mut found = false;
    let out = text
        .lines()
        .map(|line| {
            let trimmed = line.trim_start_matches('#').trim_start();
            if line.starts_with('#') && trimmed.starts_with(&format!("{key} = ")) {
                found = true;
                trimmed.to_string()
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(found, "no commented-out {key:?} in the text");
    out
}

// ---------------------------------------------------------------- the reference file

#[test]
fn the_reference_config_is_valid_and_has_no_clusters() {
    let settings = ok(REFERENCE);
    assert!(settings.clusters.is_empty());
    assert_eq!(settings, ok(""), "the reference shows exactly the defaults");
}

#[test]
fn the_reference_example_cluster_is_valid_when_uncommented() {
    let settings = ok(&reference_with_example());
    assert_eq!(settings.clusters.len(), 1);
    let prod = &settings.clusters[0];
    assert_eq!(prod.name, "prod");
    assert_eq!(prod.ca_file, Some(PathBuf::from("/etc/prod/ca.crt")));
    assert_eq!(prod.audiences, vec!["https://kubernetes.default.svc"]);
    assert_eq!(
        prod.credentials,
        Credentials::Kubeconfig {
            path: PathBuf::from("/etc/prod/kubeconfig"),
            context: Some("prod-admin".to_string()),
        }
    );
}

#[test]
fn every_key_of_the_reference_is_accepted_when_uncommented() {
    let base = uncomment(&reference_with_example(), "file_group");
    // Basic auth and a bearer token are exclusive: one variant each.
    let basic = ["ca_file", "username", "password_file"]
        .iter()
        .fold(base.clone(), |text, key| uncomment(&text, key));
    let settings = ok(&basic);
    assert_eq!(settings.prometheus.username.as_deref(), Some("mcprom"));
    assert!(settings.prometheus.ca_file.is_some());
    assert_eq!(
        settings.clusters[0].file_group.as_deref(),
        Some("prometheus")
    );
    let bearer = uncomment(&base, "bearer_token_file");
    assert!(ok(&bearer).prometheus.bearer_token_file.is_some());

    // Each alternative credential of the example, instead of the kubeconfig.
    let without_kubeconfig = base
        .lines()
        .filter(|l| !l.starts_with("kubeconfig = ") && !l.starts_with("context = "))
        .collect::<Vec<_>>()
        .join("\n");
    let token = uncomment(&without_kubeconfig, "token_file");
    assert!(matches!(
        ok(&token).clusters[0].credentials,
        Credentials::TokenFile(_)
    ));
    let cert = uncomment(&uncomment(&without_kubeconfig, "client_cert"), "client_key");
    assert!(matches!(
        ok(&cert).clusters[0].credentials,
        Credentials::ClientCert { .. }
    ));
    let renew = uncomment(&without_kubeconfig, "self");
    assert_eq!(ok(&renew).clusters[0].credentials, Credentials::SelfRenew);
    let limited = uncomment(&renew, "max_chain_age");
    assert_eq!(
        ok(&limited).clusters[0].max_chain_age,
        Some(Duration::from_secs(30 * 86_400))
    );
}

#[test]
fn an_unknown_key_is_rejected_in_every_table() {
    let example = reference_with_example();
    let tables = [
        ("[prometheus]", "[prometheus]: "),
        ("[defaults]", "[defaults]: "),
        ("[metrics]", "[metrics]: "),
        ("[control]", "[control]: "),
        ("[limits]", "[limits]: "),
        ("[[cluster]]", "cluster \"prod\": "),
        ("[cluster.credentials]", "cluster \"prod\": "),
    ];
    for (header, context) in tables {
        let text = example.replace(
            &format!("{header}\n"),
            &format!("{header}\nbogus_key = 1\n"),
        );
        assert_ne!(text, example, "{header} not found");
        let problems = problems(&text);
        assert_eq!(problems.len(), 1, "{header}: {problems:#?}");
        assert!(problems[0].contains(context), "{header}: {}", problems[0]);
        assert!(problems[0].contains("unknown key \""), "{}", problems[0]);
        assert!(problems[0].contains("bogus_key"), "{}", problems[0]);
    }
    rejects(
        &format!("bogus = 1\n{example}"),
        "/etc/mcprom.toml:1:1: unknown key \"bogus\" (valid keys here: include_dir, prometheus, defaults, metrics, control, limits, cluster, consumer)",
    );
}

// ---------------------------------------------------------------- file errors

#[test]
fn a_misspelled_key_is_reported_like_the_design_example() {
    // 13 lines of padding put the typo on line 14, as in DESIGN.md.
    let text = format!(
        "{}[[cluster]]\nservce_account = \"kube-system/prometheus\"\nname = \"prod\"\napi_server = \"https://a\"\n[cluster.credentials]\nself = true\n",
        "\n".repeat(12)
    );
    rejects(
        &text,
        "/etc/mcprom.toml:14:1: cluster \"prod\": unknown key \"servce_account\" (did you mean \"service_account\"?)",
    );
}

#[test]
fn all_unknown_keys_are_reported_not_just_the_first() {
    let text = format!(
        "[prometheus]\nurll = \"http://x\"\n\n{}",
        PROD.replace("name = \"prod\"", "name = \"prod\"\ntoken_dir = \"/x\"")
            .replace("kubeconfig = ", "kubeconfg = ")
    );
    let problems = problems(&text);
    assert_eq!(
        problems,
        vec![
            "/etc/mcprom.toml:2:1: [prometheus]: unknown key \"urll\" (did you mean \"url\"?)",
            "/etc/mcprom.toml:6:1: cluster \"prod\": unknown key \"token_dir\" (\"token_dir\" belongs in [defaults]; or did you mean \"token_file\"?)",
            "/etc/mcprom.toml:11:1: cluster \"prod\": unknown key \"credentials.kubeconfg\" (did you mean \"credentials.kubeconfig\"?)",
        ]
    );
}

#[test]
fn a_toml_syntax_error_has_a_position() {
    let problems = problems("[prometheus]\nurl = \n");
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with("/etc/mcprom.toml:2:"),
        "{}",
        problems[0]
    );
    assert!(problems[0].contains("TOML syntax error"), "{}", problems[0]);
}

#[test]
fn a_duplicate_toml_key_is_named() {
    rejects(
        "[limits]\nconcurrent_requests = 1\nconcurrent_requests = 2\n",
        "/etc/mcprom.toml:3:1: TOML syntax error: duplicate key \"concurrent_requests\" (each key may appear once per table; remove or rename one of them)",
    );
}

#[test]
fn a_wrong_type_names_the_key_and_shows_an_example() {
    rejects(
        "[limits]\nconcurrent_requests = \"32\"\n",
        "/etc/mcprom.toml:2:23: [limits]: key \"concurrent_requests\": invalid type: string \"32\", expected i64 (e.g. concurrent_requests = 32)",
    );
    rejects_with(
        &PROD.replace(
            "name = \"prod\"",
            "name = \"prod\"\ninsecure_skip_tls_verify = \"yes\"",
        ),
        "/etc/mcprom.toml:3:28: cluster \"prod\": key \"insecure_skip_tls_verify\": invalid type",
        &["e.g. insecure_skip_tls_verify = false"],
    );
}

#[test]
fn every_wrong_type_is_reported() {
    let text = "[prometheus]\ntimeout = 5\ndelay = 1\n[limits]\nconcurrent_requests = true\n";
    let problems = problems(text);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].starts_with("/etc/mcprom.toml:2:11: [prometheus]: key \"timeout\""));
    assert!(problems[1].starts_with("/etc/mcprom.toml:3:9: [prometheus]: key \"delay\""));
    assert!(
        problems[2].starts_with("/etc/mcprom.toml:5:23: [limits]: key \"concurrent_requests\"")
    );
}

#[test]
fn a_single_bracket_cluster_table_gets_a_hint() {
    rejects_with(
        "[cluster]\nname = \"prod\"\n",
        "/etc/mcprom.toml:1:1: key \"cluster\": invalid type",
        &["[[cluster]]", "double brackets"],
    );
}

#[test]
fn a_bad_duration_is_rejected_with_examples() {
    rejects_with(
        &PROD.replace(
            "name = \"prod\"",
            "name = \"prod\"\nexpiration = \"1 hour\"",
        ),
        "/etc/mcprom.toml:3:14: cluster \"prod\": key \"expiration\": invalid duration \"1 hour\"",
        &["\"1h30m\""],
    );
    rejects_with(
        "[prometheus]\ndelay = \"2\"\n",
        "/etc/mcprom.toml:2:9: [prometheus]: key \"delay\": invalid duration \"2\": a unit is missing",
        &["\"90s\""],
    );
}

#[test]
fn an_expiration_below_one_second_is_rejected() {
    rejects_with(
        "[defaults]\nexpiration = \"500ms\"\n",
        "/etc/mcprom.toml:2:14: [defaults]: key \"expiration\": \"500ms\" is too short",
        &["minimum is 1s"],
    );
}

#[test]
fn a_bad_url_is_rejected() {
    rejects(
        "[prometheus]\nurl = \"ftp://prometheus:9090\"\n",
        "/etc/mcprom.toml:2:7: [prometheus]: key \"url\": invalid URL \"ftp://prometheus:9090\": scheme \"ftp\" is not http or https (e.g. url = \"http://127.0.0.1:9090\")",
    );
    rejects_with(
        &PROD.replace("https://10.0.0.1:6443", "10.0.0.1:6443"),
        "/etc/mcprom.toml:3:14: cluster \"prod\": key \"api_server\": invalid URL \"10.0.0.1:6443\"",
        &["e.g. api_server = \"https://"],
    );
}

#[test]
fn a_bad_listen_address_is_rejected() {
    rejects_with(
        "[metrics]\nlisten = \"localhost\"\n",
        "/etc/mcprom.toml:2:10: [metrics]: key \"listen\": \"localhost\" is not an IP address and port",
        &["\"\" disables"],
    );
}

#[test]
fn concurrent_requests_must_be_at_least_one() {
    rejects_with(
        "[limits]\nconcurrent_requests = 0\n",
        "/etc/mcprom.toml:2:23: [limits]: key \"concurrent_requests\": must be at least 1",
        &["32"],
    );
}

#[test]
fn a_duplicate_cluster_name_points_at_the_second_and_names_the_first_line() {
    let text = format!("{PROD}\n{}", PROD.replace("kubeconfig\"", "kubeconfig2\""));
    // Not also reported as writing the first one's (default) token file.
    rejects(
        &text,
        "/etc/mcprom.toml:10:8: cluster \"prod\": key \"name\": duplicate cluster name \"prod\", first used on line 2 (names must be unique: they label metrics and name token files)",
    );
}

#[test]
fn two_clusters_writing_one_token_file_are_rejected() {
    let a = PROD.replace(
        "name = \"prod\"",
        "name = \"a\"\ntoken_file = \"/t/x.token\"",
    );
    let b = PROD
        .replace(
            "name = \"prod\"",
            "name = \"b\"\ntoken_file = \"/t/./x.token\"",
        )
        .replace("kubeconfig\"", "kubeconfig-b\"");
    rejects(
        &format!("{a}\n{b}"),
        "/etc/mcprom.toml:12:14: cluster \"b\": key \"token_file\": /t/x.token is also written by cluster \"a\" (line 3) (give each cluster its own token_file)",
    );
}

#[test]
fn a_token_file_equal_to_the_clusters_own_credential_is_rejected() {
    let text = PROD.replace(
        "name = \"prod\"",
        "name = \"prod\"\ntoken_file = \"/etc/mcprom/prod/kubeconfig\"",
    );
    rejects(
        &text,
        "/etc/mcprom.toml:3:14: cluster \"prod\": key \"token_file\": /etc/mcprom/prod/kubeconfig is this cluster's own credentials.kubeconfig; mcprom would overwrite a credential with the token it issues (write the token elsewhere, e.g. /var/lib/mcprom/tokens/prod.token)",
    );
    let ca = PROD.replace(
        "name = \"prod\"",
        "name = \"prod\"\nca_file = \"ca.crt\"\ntoken_file = \"/etc/ca.crt\"",
    );
    rejects_with(
        &ca,
        "/etc/mcprom.toml:4:14: cluster \"prod\": key \"token_file\": /etc/ca.crt is this cluster's own ca_file",
        &["overwrite a credential"],
    );
}

#[test]
fn a_file_mode_that_is_not_a_quoted_octal_string_is_rejected() {
    let hint = "(write it as a quoted octal string, e.g. \"0640\")";
    rejects(
        "[defaults]\nfile_mode = 640\n",
        &format!(
            "/etc/mcprom.toml:2:13: [defaults]: key \"file_mode\": 640 is a number, not an octal string {hint}"
        ),
    );
    rejects(
        "[defaults]\nfile_mode = \"0986\"\n",
        &format!(
            "/etc/mcprom.toml:2:13: [defaults]: key \"file_mode\": \"0986\" is not an octal mode {hint}"
        ),
    );
    rejects(
        "[defaults]\nfile_mode = \"4755\"\n",
        &format!(
            "/etc/mcprom.toml:2:13: [defaults]: key \"file_mode\": \"4755\" is above 0777 (setuid, setgid and sticky bits are not allowed) {hint}"
        ),
    );
    rejects_with(
        &PROD.replace(
            "name = \"prod\"",
            "name = \"prod\"\nfile_mode = \"rw-r-----\"",
        ),
        "/etc/mcprom.toml:3:13: cluster \"prod\": key \"file_mode\"",
        &[hint],
    );
}

#[test]
fn refresh_at_outside_zero_one_is_rejected() {
    for value in ["0", "1", "1.5", "-0.2", "0.0"] {
        rejects_with(
            &format!("[defaults]\nrefresh_at = {value}\n"),
            "/etc/mcprom.toml:2:14: [defaults]: key \"refresh_at\":",
            &["outside (0, 1)", "0.8 is a good value"],
        );
    }
    rejects_with(
        &PROD.replace("name = \"prod\"", "name = \"prod\"\nrefresh_at = 1.0"),
        "/etc/mcprom.toml:3:14: cluster \"prod\": key \"refresh_at\": 1 is outside (0, 1)",
        &[],
    );
}

#[test]
fn a_cluster_without_credentials_is_rejected() {
    let no_table = PROD.replace(
        "[cluster.credentials]\nkubeconfig = \"/etc/mcprom/prod/kubeconfig\"\n",
        "",
    );
    rejects_with(
        &no_table,
        "/etc/mcprom.toml:1:1: cluster \"prod\": missing table [cluster.credentials]",
        &["exactly one of kubeconfig, token_file, client_cert + client_key, self = true"],
    );
    let self_false = PROD.replace(
        "kubeconfig = \"/etc/mcprom/prod/kubeconfig\"",
        "self = false",
    );
    rejects_with(
        &self_false,
        "/etc/mcprom.toml:6:1: cluster \"prod\": [cluster.credentials] names no credential",
        &["self = false is not a credential"],
    );
}

#[test]
fn a_cluster_with_two_credentials_is_rejected() {
    let text = PROD.replace(
        "kubeconfig = \"/etc/mcprom/prod/kubeconfig\"",
        "kubeconfig = \"/etc/mcprom/prod/kubeconfig\"\ntoken_file = \"/etc/mcprom/prod/issuer.token\"",
    );
    rejects(
        &text,
        "/etc/mcprom.toml:8:14: cluster \"prod\": key \"credentials\": both kubeconfig and token_file are set (choose exactly one of kubeconfig, token_file, client_cert + client_key, self = true)",
    );
    let renew = PROD.replace("kubeconfig = ", "self = true\nclient_cert = ");
    let problems = problems(&renew);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].contains("both self = true and client_cert + client_key are set"),
        "{}",
        problems[0]
    );
}

#[test]
fn half_a_client_certificate_is_rejected() {
    rejects_with(
        &PROD.replace("kubeconfig = ", "client_cert = "),
        "/etc/mcprom.toml:7:15: cluster \"prod\": key \"credentials.client_cert\": a client certificate needs its key",
        &["client_key"],
    );
}

#[test]
fn a_context_without_a_kubeconfig_is_rejected() {
    rejects_with(
        &PROD.replace("kubeconfig = ", "context = \"admin\"\ntoken_file = "),
        "/etc/mcprom.toml:7:11: cluster \"prod\": key \"credentials.context\": context only applies to a kubeconfig",
        &[],
    );
}

#[test]
fn api_server_is_required_unless_the_credential_is_a_kubeconfig() {
    let without = PROD.replace("api_server = \"https://10.0.0.1:6443\"\n", "");
    assert_eq!(ok(&without).clusters[0].api_server, None);
    rejects_with(
        &without.replace("kubeconfig = ", "token_file = "),
        "/etc/mcprom.toml:1:1: cluster \"prod\": missing key \"api_server\"",
        &["unless the credential is a kubeconfig"],
    );
}

#[test]
fn name_and_service_account_are_required_and_checked() {
    rejects_with(
        &PROD.replace("name = \"prod\"\n", ""),
        "/etc/mcprom.toml:1:1: cluster #1: missing key \"name\"",
        &["name = \"prod\""],
    );
    rejects_with(
        &PROD.replace("name = \"prod\"", "name = \"Prod\""),
        "/etc/mcprom.toml:2:8: cluster \"Prod\": key \"name\": \"Prod\" is not a valid cluster name",
        &[],
    );
    rejects_with(
        &PROD.replace("service_account = \"kube-system/prometheus\"\n", ""),
        "/etc/mcprom.toml:1:1: cluster \"prod\": missing key \"service_account\"",
        &["namespace/name"],
    );
    for bad in ["prometheus", "Kube/x", "kube-system/", "a/b/c", "-a/b"] {
        rejects_with(
            &PROD.replace("kube-system/prometheus", bad),
            "/etc/mcprom.toml:4:19: cluster \"prod\": key \"service_account\"",
            &["write namespace/name"],
        );
    }
}

#[test]
fn prometheus_auth_must_be_complete_and_unambiguous() {
    rejects_with(
        "[prometheus]\nusername = \"mcprom\"\n",
        "/etc/mcprom.toml:2:12: [prometheus]: key \"username\": basic auth needs a password too",
        &[],
    );
    rejects_with(
        "[prometheus]\npassword_file = \"pw\"\n",
        "/etc/mcprom.toml:2:17: [prometheus]: key \"password_file\": basic auth needs a user too",
        &[],
    );
    rejects_with(
        "[prometheus]\nusername = \"u\"\npassword_file = \"pw\"\nbearer_token_file = \"t\"\n",
        "/etc/mcprom.toml:4:21: [prometheus]: key \"bearer_token_file\"",
        &["exclusive", "keep the one Prometheus's web config expects"],
    );
    // A url consumer's credentials follow the same rules.
    let consumer = "[[consumer]]\nname = \"vm\"\nurl = \"http://127.0.0.1:8429\"\n";
    rejects_with(
        &format!("{consumer}username = \"u\"\n"),
        "/etc/mcprom.toml:4:12: ",
        &["key \"username\": basic auth needs a password too"],
    );
    rejects_with(
        &format!("{consumer}username = \"u\"\npassword_file = \"pw\"\nbearer_token_file = \"t\"\n"),
        "/etc/mcprom.toml:6:21: ",
        &[
            "key \"bearer_token_file\"",
            "exclusive",
            "keep the one the endpoint expects",
        ],
    );
    rejects_with(
        "[prometheus]\nreload = \"on_rotate\"\n",
        "/etc/mcprom.toml:2:10: [prometheus]: key \"reload\": unknown mode \"on_rotate\"",
        &["did you mean \"on_rotation\"?"],
    );
}

// ---------------------------------------------------------------- accepted files

#[test]
fn defaults_are_applied() {
    let settings = ok(PROD);
    assert_eq!(settings.path, PathBuf::from(PATH));
    let p = &settings.prometheus;
    assert_eq!(p.url.as_str(), "http://127.0.0.1:9090/");
    assert_eq!(p.reload, ReloadMode::OnRotation);
    assert_eq!(p.timeout, Duration::from_secs(60));
    assert_eq!(p.delay, Duration::from_secs(2));
    assert_eq!(
        (
            &p.ca_file,
            &p.username,
            &p.password_file,
            &p.bearer_token_file
        ),
        (&None, &None, &None, &None)
    );
    assert_eq!(
        settings.metrics.listen,
        Some("127.0.0.1:9719".parse().unwrap())
    );
    assert_eq!(
        settings.control.socket,
        PathBuf::from("/run/mcprom/control.sock")
    );
    assert_eq!(settings.limits.concurrent_requests.get(), 32);
    let c = &settings.clusters[0];
    assert_eq!(
        **c,
        ClusterSettings {
            name: "prod".to_string(),
            api_server: Some("https://10.0.0.1:6443".parse().unwrap()),
            ca_file: None,
            insecure_skip_tls_verify: false,
            service_account: ServiceAccountRef {
                namespace: "kube-system".to_string(),
                name: "prometheus".to_string(),
            },
            token_file: PathBuf::from("/var/lib/mcprom/tokens/prod.token"),
            kubeconfig_file: None,
            audiences: vec![],
            expiration: Duration::from_secs(3600),
            refresh_at: 0.8,
            file_mode: 0o640,
            file_group: None,
            credentials: Credentials::Kubeconfig {
                path: PathBuf::from("/etc/mcprom/prod/kubeconfig"),
                context: None,
            },
            max_chain_age: None,
            verify: Default::default(),
        }
    );
}

#[test]
fn defaults_section_applies_to_clusters_and_cluster_keys_override_it() {
    let text = format!(
        "[defaults]\ntoken_dir = \"/srv/tokens\"\nexpiration = \"2h\"\nrefresh_at = 0.5\nfile_mode = \"0600\"\nfile_group = \"prom\"\n\n{PROD}\n{}",
        PROD.replace("name = \"prod\"", "name = \"dev\"\nexpiration = \"30m\"\nrefresh_at = 0.9\nfile_mode = \"0644\"\nfile_group = \"other\"\ntoken_file = \"/x/dev.token\"")
            .replace("prod/kubeconfig", "dev/kubeconfig")
    );
    let settings = ok(&text);
    let (prod, dev) = (&settings.clusters[0], &settings.clusters[1]);
    assert_eq!(prod.token_file, PathBuf::from("/srv/tokens/prod.token"));
    assert_eq!(prod.expiration, Duration::from_secs(7200));
    assert_eq!(prod.refresh_at, 0.5);
    assert_eq!(prod.file_mode, 0o600);
    assert_eq!(prod.file_group.as_deref(), Some("prom"));
    assert_eq!(dev.token_file, PathBuf::from("/x/dev.token"));
    assert_eq!(dev.expiration, Duration::from_secs(1800));
    assert_eq!(dev.refresh_at, 0.9);
    assert_eq!(dev.file_mode, 0o644);
    assert_eq!(dev.file_group.as_deref(), Some("other"));
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let text = "[prometheus]\nca_file = \"web/ca.crt\"\n[defaults]\ntoken_dir = \"tokens\"\n[control]\nsocket = \"../run/c.sock\"\n\n[[cluster]]\nname = \"prod\"\nca_file = \"./prod/ca.crt\"\nservice_account = \"a/b\"\n[cluster.credentials]\nkubeconfig = \"prod/kubeconfig\"\n";
    let settings = parse(text, Path::new("/etc/mcprom/mcprom.toml")).unwrap();
    assert_eq!(
        settings.prometheus.ca_file,
        Some(PathBuf::from("/etc/mcprom/web/ca.crt"))
    );
    assert_eq!(settings.control.socket, PathBuf::from("/etc/run/c.sock"));
    let c = &settings.clusters[0];
    assert_eq!(c.ca_file, Some(PathBuf::from("/etc/mcprom/prod/ca.crt")));
    assert_eq!(c.token_file, PathBuf::from("/etc/mcprom/tokens/prod.token"));
    assert_eq!(
        c.input_files()[1],
        PathBuf::from("/etc/mcprom/prod/kubeconfig")
    );
}

#[test]
fn a_relative_config_path_is_made_absolute() {
    let settings = parse("", Path::new("mcprom.toml")).unwrap();
    assert!(settings.path.is_absolute());
    assert_eq!(
        settings.path,
        std::env::current_dir().unwrap().join("mcprom.toml")
    );
}

#[test]
fn zero_clusters_and_an_empty_listen_address_are_valid() {
    let settings = ok("[metrics]\nlisten = \"\"\n");
    assert!(settings.clusters.is_empty());
    assert_eq!(settings.metrics.listen, None);
}

#[test]
fn self_renewal_and_path_prefixed_api_servers_are_accepted() {
    let text = PROD
        .replace(
            "https://10.0.0.1:6443",
            "https://rancher.example.com/k8s/clusters/c-abc12",
        )
        .replace(
            "kubeconfig = \"/etc/mcprom/prod/kubeconfig\"",
            "self = true",
        );
    let c = &ok(&text).clusters[0];
    assert_eq!(c.credentials, Credentials::SelfRenew);
    assert_eq!(
        c.api_server.as_ref().unwrap().path(),
        "/k8s/clusters/c-abc12"
    );
}

#[test]
fn load_reads_the_file_and_names_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mcprom.toml");
    let err = load(&path).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("cannot read {}: ", path.display())),
        "{message}"
    );
    assert!(message.contains("No such file or directory"), "{message}");
    assert!(matches!(
        err,
        ConfigError::Unreadable {
            kind: std::io::ErrorKind::NotFound,
            ..
        }
    ));

    std::fs::write(&path, PROD.replace("/etc/mcprom/prod/kubeconfig", "kc")).unwrap();
    let settings = load(&path).unwrap();
    assert_eq!(settings.path, path);
    assert_eq!(
        settings.clusters[0].input_files(),
        vec![dir.path().join("kc")]
    );
}

// ---------------------------------------------------------------- host problems and warnings

fn cluster_with(dir: &Path, extra: &str) -> Settings {
    let text = PROD.replace("name = \"prod\"", &format!("name = \"prod\"\n{extra}"));
    parse(&text, &dir.join("mcprom.toml")).unwrap()
}

#[test]
fn host_problems_are_empty_when_every_file_and_group_exists() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("ca.crt"), ca.cert.pem()).unwrap();
    let mut settings = cluster_with(dir.path(), "ca_file = \"ca.crt\"\nfile_group = \"root\"");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []\n",
    )
    .unwrap();
    std::sync::Arc::make_mut(&mut settings.clusters[0]).credentials = Credentials::Kubeconfig {
        path: kubeconfig,
        context: None,
    };
    assert_eq!(host_problems(&settings), vec![]);
}

#[test]
fn host_problems_name_a_missing_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let settings = cluster_with(dir.path(), "ca_file = \"ca.crt\"");
    let problems = host_problems(&settings);
    let ca = dir.path().join("ca.crt");
    let problem = problems
        .iter()
        .find(|p| p.key == "ca_file")
        .expect("ca_file problem");
    assert_eq!(problem.cluster.as_deref(), Some("prod"));
    assert_eq!(problem.path.as_deref(), Some(ca.as_path()));
    assert_eq!(
        problem.to_string(),
        format!(
            "cluster \"prod\": key \"ca_file\": cannot read {}: No such file or directory (os error 2) (put the file there, or correct ca_file in the config file)",
            ca.display()
        )
    );
    // The kubeconfig in /etc/mcprom/prod does not exist here either.
    assert!(problems.iter().any(|p| p.key == "credentials.kubeconfig"));
}

#[test]
fn host_problems_name_an_unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    // A directory cannot be read as a file, even by root.
    std::fs::create_dir(dir.path().join("ca.crt")).unwrap();
    let settings = cluster_with(dir.path(), "ca_file = \"ca.crt\"");
    let problem = host_problems(&settings)
        .into_iter()
        .find(|p| p.key == "ca_file")
        .expect("ca_file problem");
    assert!(problem.message.contains("is a directory"), "{problem}");
    assert!(
        problem
            .message
            .contains("must name a readable regular file"),
        "{problem}"
    );
}

#[test]
fn host_problems_read_each_file_as_the_daemon_will() {
    // Each of these passed `check` before and failed (or hung) in `run`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.crt"), "").unwrap();
    std::fs::write(dir.path().join("text.crt"), "not a certificate").unwrap();
    nix::unistd::mkfifo(
        &dir.path().join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    for (ca, expect) in [
        ("empty.crt", "no PEM certificate"),
        ("text.crt", "no PEM certificate"),
        ("fifo", "FIFO"),
        ("/dev/zero", "a device"),
    ] {
        let settings = cluster_with(dir.path(), &format!("ca_file = {ca:?}"));
        let problem = host_problems(&settings)
            .into_iter()
            .find(|p| p.key == "ca_file")
            .unwrap_or_else(|| panic!("{ca}: no ca_file problem"));
        assert!(problem.message.contains(expect), "{ca}: {problem}");
    }
}

#[test]
fn host_problems_name_a_group_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let settings = cluster_with(dir.path(), "file_group = \"mcprom-no-such-group-xyz\"");
    let problem = host_problems(&settings)
        .into_iter()
        .find(|p| p.key == "file_group")
        .expect("file_group problem");
    assert_eq!(problem.cluster.as_deref(), Some("prod"));
    assert!(
        problem.message.starts_with(
            "cluster \"prod\": key \"file_group\": group \"mcprom-no-such-group-xyz\" does not exist ("
        ),
        "{problem}"
    );
}

#[test]
fn host_problems_check_prometheus_files_and_self_renewal_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[prometheus]\nbearer_token_file = \"web.token\"\n{}",
        PROD.replace(
            "kubeconfig = \"/etc/mcprom/prod/kubeconfig\"",
            "self = true"
        )
        .replace(
            "name = \"prod\"",
            "name = \"prod\"\ntoken_file = \"prod.token\""
        )
    );
    let settings = parse(&text, &dir.path().join("mcprom.toml")).unwrap();
    let problems = host_problems(&settings);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0]
            .message
            .starts_with("[prometheus]: key \"bearer_token_file\": cannot read")
    );
    assert_eq!(problems[0].cluster, None);
    // The hint names the config file it was given (not the default one).
    assert!(
        problems[1].message.contains(&format!(
            "mcprom --config {} seed prod",
            dir.path().join("mcprom.toml").display()
        )),
        "{}",
        problems[1]
    );
}

#[test]
fn warnings_cover_insecure_tls_and_short_expirations() {
    assert_eq!(warnings(&ok(PROD)), Vec::<String>::new());
    let text = PROD.replace(
        "name = \"prod\"",
        "name = \"prod\"\ninsecure_skip_tls_verify = true\nexpiration = \"5m\"",
    );
    let warnings = warnings(&ok(&text));
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].starts_with("TLS verification disabled for cluster \"prod\": "),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].contains("real API servers refuse less than 10 minutes"),
        "{}",
        warnings[1]
    );
    assert!(warnings[1].contains("5m"), "{}", warnings[1]);
}

// ---------------------------------------------------------------- self-renewal

/// PROD renewing itself, with `extra` lines in its [[cluster]] table.
fn self_renewing(extra: &str) -> String {
    PROD.replace(
        "service_account = \"kube-system/prometheus\"\n",
        &format!("service_account = \"kube-system/prometheus\"\n{extra}"),
    )
    .replace(
        "kubeconfig = \"/etc/mcprom/prod/kubeconfig\"",
        "self = true",
    )
}

#[test]
fn a_self_renewing_cluster_refreshes_at_half_unless_it_sets_refresh_at_itself() {
    let defaults = "[defaults]\nrefresh_at = 0.9\n\n";
    let settings = ok(&format!("{defaults}{}", self_renewing("")));
    assert_eq!(settings.clusters[0].refresh_at, 0.5);
    let settings = ok(&format!(
        "{defaults}{}",
        self_renewing("refresh_at = 0.7\n")
    ));
    assert_eq!(settings.clusters[0].refresh_at, 0.7);
    // Other clusters keep inheriting [defaults].
    assert_eq!(ok(&format!("{defaults}{PROD}")).clusters[0].refresh_at, 0.9);
}

#[test]
fn max_chain_age_is_a_duration_for_self_renewing_clusters_only() {
    let settings = ok(&self_renewing("max_chain_age = \"7d\"\n"));
    assert_eq!(
        settings.clusters[0].max_chain_age,
        Some(Duration::from_secs(7 * 86_400))
    );
    assert_eq!(ok(&self_renewing("")).clusters[0].max_chain_age, None);
    rejects_with(
        &PROD.replace(
            "name = \"prod\"\n",
            "name = \"prod\"\nmax_chain_age = \"7d\"\n",
        ),
        "/etc/mcprom.toml:3:17: cluster \"prod\": key \"max_chain_age\"",
        &["only applies to a self-renewing cluster"],
    );
    rejects_with(
        &self_renewing("max_chain_age = \"0s\"\n"),
        "/etc/mcprom.toml:5:17: cluster \"prod\": key \"max_chain_age\"",
        &["too short"],
    );
    rejects_with(
        &format!("[defaults]\nmax_chain_age = \"7d\"\n\n{PROD}"),
        "/etc/mcprom.toml:2:1: [defaults]: unknown key \"max_chain_age\"",
        &["belongs in [[cluster]]"],
    );
}

#[test]
fn verify_is_on_by_default_and_set_in_defaults_or_per_cluster() {
    let c = &ok(PROD).clusters[0];
    assert_eq!(c.verify, crate::config::Verify::default());
    assert!(c.verify.enabled);
    assert_eq!(c.verify.interval, Duration::from_secs(3600));
    let text = format!(
        "[defaults]\nverify = false\nverify_interval = \"5m\"\n\n{PROD}\n{}",
        PROD.replace(
            "name = \"prod\"",
            "name = \"dev\"\nverify = true\nverify_interval = \"1m\""
        )
        .replace("prod/kubeconfig", "dev/kubeconfig")
    );
    let settings = ok(&text);
    let (prod, dev) = (&settings.clusters[0], &settings.clusters[1]);
    assert!(!prod.verify.enabled);
    assert_eq!(prod.verify.interval, Duration::from_secs(300));
    assert!(dev.verify.enabled);
    assert_eq!(dev.verify.interval, Duration::from_secs(60));
    let too_short = PROD.replace(
        "name = \"prod\"",
        "name = \"prod\"\nverify_interval = \"1s\"",
    );
    rejects_with(
        &too_short,
        "/etc/mcprom.toml:3:19: cluster \"prod\": key \"verify_interval\"",
        &["\"1s\" is too short (the minimum is 10s)"],
    );
}
