//! `[[consumer]]` checks: a url consumer's endpoint answers (never a
//! reload); a command consumer's program can be run (never run).

use super::{REQUEST_TIMEOUT, Section};
use crate::config::{COMMAND_PATH, ConsumerAction, ConsumerSettings};
use crate::reload::{ReloadError, Reloader};

/// The title of a consumer's section.
pub fn title(consumer: &ConsumerSettings) -> String {
    let clusters = match &consumer.clusters {
        None => String::new(),
        Some(names) => format!(", clusters {}", names.join(", ")),
    };
    format!(
        "consumer {:?} ({} {}{clusters})",
        consumer.name,
        consumer.kind(),
        consumer.target()
    )
}

/// One consumer's checks. Changes nothing.
pub async fn check_consumer(consumer: ConsumerSettings) -> Section {
    let mut s = Section::new(title(&consumer));
    let name = &consumer.name;
    match &consumer.action {
        ConsumerAction::Command(argv) => match crate::config::resolve_program(&argv[0]) {
            Ok(path) => s.pass(format!(
                "command {} is executable (not run: a check changes nothing)",
                path.display()
            )),
            Err(why) => s.fail(
                format!("command: cannot run {why}"),
                format!(
                    "name the program by its absolute path in [[consumer]] {name:?} (it runs \
                     without a shell, with PATH={COMMAND_PATH})"
                ),
            ),
        },
        ConsumerAction::Url(_) => {
            let mut web = consumer.web_settings().expect("a url consumer");
            web.timeout = web.timeout.min(REQUEST_TIMEOUT);
            let reloader = match Reloader::new(web) {
                Ok(r) => r,
                Err(e) => {
                    s.fail(
                        format!("not checked: {e}"),
                        format!("fix ca_file in [[consumer]] {name:?}"),
                    );
                    return s;
                }
            };
            match reloader.get_limited("/-/ready", 1024).await {
                Err(e) => {
                    let text = match &e {
                        ReloadError::Timeout(d) => format!("no answer within {d:?}"),
                        ReloadError::Down(_, why) => format!("not reachable ({why})"),
                        other => other.to_string(),
                    };
                    s.fail(
                        format!("reachable: {text}"),
                        format!("start it, or correct the url of [[consumer]] {name:?}"),
                    );
                }
                Ok((200, _)) => {
                    s.pass("reachable");
                    s.pass("ready (GET /-/ready answered 200)");
                }
                Ok((401, _)) => {
                    s.pass("reachable");
                    s.fail(
                        "it wants credentials (401)",
                        format!(
                            "set username + password_file or bearer_token_file in [[consumer]] {name:?}"
                        ),
                    );
                }
                Ok((503, _)) => {
                    s.pass("reachable");
                    s.fail(
                        "ready: not yet (GET /-/ready answered 503)",
                        "it is still starting; check again shortly",
                    );
                }
                Ok((code, _)) => {
                    s.pass("reachable");
                    s.warn(
                        format!(
                            "GET /-/ready answered {code}: it may not be Prometheus-compatible"
                        ),
                        format!(
                            "the url of [[consumer]] {name:?} must be the base of an endpoint that \
                             takes POST /-/reload (Prometheus, vmagent, Grafana Alloy)"
                        ),
                    );
                }
            }
        }
    }
    s
}
