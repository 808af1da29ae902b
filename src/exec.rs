//! kubeconfig exec credential plugins (aws, gke-gcloud-auth-plugin,
//! kubelogin, …), run by mcprom itself instead of by the kube client.
//!
//! kube runs a plugin synchronously on a runtime worker, with no time
//! limit and no bound on its output, and puts the plugin's command line,
//! `env` values, stdout and stderr into its error text. Here a plugin runs
//! as a child process in its own process group, asynchronously, with a
//! time limit (`[limits] exec_timeout`) after which the whole group is
//! killed; its output is read up to a cap; and errors name the command
//! only, quoting its stderr through [`crate::outside::text_without`] with
//! every argument and `env` value redacted. Its stdout is never quoted.
//!
//! The credential it returns replaces the `exec` entry of the kube
//! configuration (a bearer token, or client certificate data), so the kube
//! client never starts the plugin itself.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use kube::config::ExecConfig;
use serde::Deserialize;
use tokio::io::AsyncReadExt as _;

use crate::outside::{MAX_PLUGIN_OUTPUT, MAX_PLUGIN_STDERR};

/// Default of `[limits] exec_timeout`: how long one plugin run may take.
/// Cloud plugins answer in a second or two (a cold `aws eks get-token`
/// in about three); 30 s leaves room for a slow identity provider.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
struct ExecCredential {
    status: Option<ExecStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecStatus {
    token: Option<String>,
    client_certificate_data: Option<String>,
    client_key_data: Option<String>,
}

/// Why an exec plugin gave no credential: the message names the command,
/// never its arguments, `env` values or output.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ExecError(pub String);

/// Run the plugin of `config` (if it has one) and put its credential in
/// place of the `exec` entry.
pub async fn resolve(config: &mut kube::Config, timeout: Duration) -> Result<(), ExecError> {
    let Some(exec) = config.auth_info.exec.take() else {
        return Ok(());
    };
    let status = run(&exec, timeout).await?;
    let auth = &mut config.auth_info;
    match status {
        ExecStatus {
            client_certificate_data: Some(cert),
            client_key_data: Some(key),
            ..
        } => {
            let b64 = base64::engine::general_purpose::STANDARD;
            auth.client_certificate_data = Some(b64.encode(cert));
            auth.client_key_data = Some(b64.encode(key).into());
        }
        ExecStatus {
            token: Some(token), ..
        } => auth.token = Some(token.into()),
        _ => {
            return Err(ExecError(format!(
                "exec plugin {}: its ExecCredential holds neither a token nor a client certificate and key",
                command_name(&exec)
            )));
        }
    }
    Ok(())
}

fn command_name(exec: &ExecConfig) -> String {
    crate::outside::text(exec.command.as_deref().unwrap_or("(no command)"))
}

/// The strings that must never be shown: the plugin's arguments and the
/// values of its `env`.
fn secrets(exec: &ExecConfig) -> Vec<&str> {
    let mut secrets: Vec<&str> = exec.args.iter().flatten().map(String::as_str).collect();
    for entry in exec.env.iter().flatten() {
        if let Some(value) = entry.get("value") {
            secrets.push(value);
        }
    }
    secrets
}

async fn run(exec: &ExecConfig, timeout: Duration) -> Result<ExecStatus, ExecError> {
    let name = command_name(exec);
    let program = exec
        .command
        .as_deref()
        .ok_or_else(|| ExecError("exec plugin: the kubeconfig names no command".into()))?;
    let mut command = tokio::process::Command::new(program);
    command.args(exec.args.iter().flatten());
    for entry in exec.env.iter().flatten() {
        if let (Some(k), Some(v)) = (entry.get("name"), entry.get("value")) {
            command.env(k, v);
        }
    }
    let mut spec = serde_json::json!({"interactive": false});
    if exec.provide_cluster_info {
        spec["cluster"] = serde_json::to_value(&exec.cluster).unwrap_or_default();
    }
    let info = serde_json::json!({
        "apiVersion": exec.api_version.as_deref().unwrap_or("client.authentication.k8s.io/v1"),
        "kind": "ExecCredential",
        "spec": spec,
    });
    command.env("KUBERNETES_EXEC_INFO", info.to_string());
    for name in exec.drop_env.iter().flatten() {
        command.env_remove(name);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| ExecError(format!("exec plugin {name}: cannot start it: {e}")))?;
    // The whole group dies with this guard: on timeout, and when the
    // rotation is cancelled (SIGTERM) while the plugin runs.
    let _group = child.id().map(GroupKiller);
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let exchange = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut capped_out = (&mut stdout).take(MAX_PLUGIN_OUTPUT as u64 + 1);
        let mut capped_err = (&mut stderr).take(MAX_PLUGIN_STDERR as u64);
        let (o, e) = tokio::join!(
            capped_out.read_to_end(&mut out),
            capped_err.read_to_end(&mut err),
        );
        o?;
        e?;
        if out.len() > MAX_PLUGIN_OUTPUT {
            return Ok((None, out, err));
        }
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((Some(status), out, err))
    };
    let (status, out, err) = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => {
            return Err(ExecError(format!(
                "exec plugin {name}: no answer within {timeout:?} ([limits] exec_timeout); killed it"
            )));
        }
        Ok(Err(e)) => {
            return Err(ExecError(format!(
                "exec plugin {name}: cannot read its output: {e}"
            )));
        }
        Ok(Ok(done)) => done,
    };
    let secrets = secrets(exec);
    let Some(status) = status else {
        return Err(ExecError(format!(
            "exec plugin {name}: its output is larger than {} KiB, far more than any ExecCredential; killed it",
            MAX_PLUGIN_OUTPUT >> 10
        )));
    };
    if !status.success() {
        let stderr = crate::outside::text_without(&String::from_utf8_lossy(&err), &secrets);
        return Err(ExecError(format!(
            "exec plugin {name} failed ({status}){}",
            if stderr.is_empty() {
                String::new()
            } else {
                format!(": {stderr}")
            }
        )));
    }
    // JSON, or YAML as client-go also accepts. The parse error says where
    // and what was wrong, never what the output said.
    let parsed: Result<ExecCredential, String> = serde_json::from_slice(&out)
        .or_else(|json| serde_yaml_ng::from_slice(&out).map_err(|_| json.classify_text()));
    match parsed {
        Ok(ExecCredential {
            status: Some(status),
        }) => Ok(status),
        Ok(ExecCredential { status: None }) => Err(ExecError(format!(
            "exec plugin {name}: its ExecCredential has no status"
        ))),
        Err(why) => Err(ExecError(format!(
            "exec plugin {name}: its output ({} bytes) is not an ExecCredential ({why})",
            out.len()
        ))),
    }
}

trait ClassifyText {
    fn classify_text(&self) -> String;
}

impl ClassifyText for serde_json::Error {
    /// Where the JSON went wrong, without serde's quote of the input.
    fn classify_text(&self) -> String {
        let kind = match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "not JSON or YAML",
            serde_json::error::Category::Data => "unexpected fields or types",
            serde_json::error::Category::Eof => "ends early",
        };
        format!("{kind} at line {} column {}", self.line(), self.column())
    }
}

/// Kills a process group when dropped (SIGKILL; an exited group is fine).
pub(crate) struct GroupKiller(pub(crate) u32);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(script: &str, args: &[&str], env: &[(&str, &str)]) -> ExecConfig {
        let mut all = vec!["-c".to_owned(), script.to_owned(), "plugin".to_owned()];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        ExecConfig {
            api_version: Some("client.authentication.k8s.io/v1".into()),
            command: Some("/bin/sh".into()),
            args: Some(all),
            env: Some(
                env.iter()
                    .map(|(k, v)| {
                        [
                            ("name".to_owned(), (*k).to_owned()),
                            ("value".to_owned(), (*v).to_owned()),
                        ]
                        .into_iter()
                        .collect()
                    })
                    .collect(),
            ),
            drop_env: None,
            install_hint: None,
            interactive_mode: None,
            provide_cluster_info: false,
            cluster: None,
            other: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_token_comes_back() {
        let exec = plugin(
            r#"echo '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"abc.def.ghi"}}'"#,
            &[],
            &[],
        );
        let status = run(&exec, Duration::from_secs(20)).await.unwrap();
        assert_eq!(status.token.as_deref(), Some("abc.def.ghi"));
    }

    #[tokio::test]
    async fn a_failure_names_the_command_and_hides_arguments_env_and_output() {
        let exec = plugin(
            r#"echo "token eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln $AWS_SECRET_ACCESS_KEY $2"; echo "$2 and $AWS_SECRET_ACCESS_KEY failed" >&2; exit 3"#,
            &["--client-secret", "ARG-SECRET-1234"],
            &[("AWS_SECRET_ACCESS_KEY", "ENV-SECRET-5678")],
        );
        let e = run(&exec, Duration::from_secs(20))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("exec plugin /bin/sh failed"), "{e}");
        for secret in ["ARG-SECRET-1234", "ENV-SECRET-5678", "c2ln", "eyJ"] {
            assert!(!e.contains(secret), "{secret} in {e}");
        }
    }

    #[tokio::test]
    async fn garbage_output_is_described_not_quoted() {
        let exec = plugin(
            "echo 'token: [eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln'",
            &[],
            &[],
        );
        let e = run(&exec, Duration::from_secs(20))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is not an ExecCredential"), "{e}");
        assert!(!e.contains("c2ln"), "{e}");
    }

    #[tokio::test]
    async fn a_hanging_plugin_and_its_children_are_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let exec = plugin(
            r#"sleep 300 & echo $! > "$1"; wait"#,
            &[pidfile.to_str().unwrap()],
            &[],
        );
        let e = run(&exec, Duration::from_secs(1))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no answer within"), "{e}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild (sleep) is gone too: killed with the group.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for its reaper.
            if stat.is_empty() || stat.split(' ').nth(2) == Some("Z") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sleep {pid} still runs"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
