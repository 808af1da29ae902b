//! `[[consumer]]` tables → [`ConsumerSettings`], with file:line errors.

use std::collections::HashMap;
use std::time::Duration;

use serde_spanned::Spanned;

use super::super::consumers::{
    ConsumerAction, ConsumerSettings, DEFAULT_CONSUMER_DELAY, DEFAULT_CONSUMER_TIMEOUT,
    PROMETHEUS_CONSUMER, WebEndpoint,
};
use super::super::decode::entry_label;
use super::super::file::ConsumerFile;
use super::{MAX_PROMETHEUS_WAIT, Validator, valid_cluster_name};

/// Most bytes of one `command` argument, and most arguments.
const MAX_ARG_LEN: usize = 4096;
const MAX_ARGS: usize = 256;

impl Validator<'_> {
    /// Every `[[consumer]]`; `cluster_names` are the names the file's
    /// `[[cluster]]` tables give (a `clusters` entry must be one of them).
    pub(super) fn consumers(
        &mut self,
        consumers: Vec<Spanned<ConsumerFile>>,
        cluster_names: &[String],
    ) -> Vec<ConsumerSettings> {
        let mut out = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (index, consumer) in consumers.into_iter().enumerate() {
            let offset = consumer.span().start;
            let consumer = consumer.into_inner();
            let cx = entry_label(
                "consumer",
                consumer.name.as_ref().map(|n| n.get_ref().as_str()),
                index,
            );
            if let Some(name) = &consumer.name {
                if let Some(first) = names.get(name.get_ref()) {
                    let line = self.report.line(*first);
                    self.error(
                        name.span().start,
                        &cx,
                        format!(
                            "key \"name\": duplicate consumer name {:?}, first used on line {line} \
                             (names must be unique: they label metrics and log lines)",
                            name.get_ref()
                        ),
                    );
                } else {
                    names.insert(name.get_ref().clone(), name.span().start);
                }
            }
            if let Some(settings) = self.consumer(&consumer, offset, &cx, cluster_names) {
                out.push(settings);
            }
        }
        out
    }

    fn consumer(
        &mut self,
        c: &ConsumerFile,
        offset: usize,
        cx: &str,
        cluster_names: &[String],
    ) -> Option<ConsumerSettings> {
        let name = match &c.name {
            None => {
                self.missing(
                    offset,
                    cx,
                    "name",
                    "missing key \"name\" (every [[consumer]] needs a unique name, e.g. name = \"vmagent\")",
                );
                None
            }
            Some(n) if n.get_ref() == PROMETHEUS_CONSUMER => {
                self.error(
                    n.span().start,
                    cx,
                    format!(
                        "key \"name\": {PROMETHEUS_CONSUMER:?} is the name of [prometheus] \
                         (choose another name for this consumer)"
                    ),
                );
                None
            }
            Some(n) if valid_cluster_name(n.get_ref()) => Some(n.get_ref().clone()),
            Some(n) => {
                self.error(
                    n.span().start,
                    cx,
                    format!(
                        "key \"name\": {:?} is not a valid consumer name (use lowercase letters, \
                         digits, '-' and '_', starting with a letter or digit: it becomes a label)",
                        n.get_ref()
                    ),
                );
                None
            }
        };
        let action = self.consumer_action(c, offset, cx);
        let clusters = match &c.clusters {
            None => Some(None),
            Some(list) => self.consumer_clusters(list, cx, cluster_names).map(Some),
        };
        let delay = match &c.delay {
            None => Some(DEFAULT_CONSUMER_DELAY),
            Some(d) => self.duration_value(d, cx, "delay", Duration::ZERO..=MAX_PROMETHEUS_WAIT),
        };
        let timeout = match &c.timeout {
            None => Some(DEFAULT_CONSUMER_TIMEOUT),
            Some(t) => self.duration_value(
                t,
                cx,
                "timeout",
                Duration::from_millis(1)..=MAX_PROMETHEUS_WAIT,
            ),
        };
        Some(ConsumerSettings {
            name: name?,
            action: action?,
            clusters: clusters?,
            delay: delay?,
            timeout: timeout?,
        })
    }

    fn consumer_action(
        &mut self,
        c: &ConsumerFile,
        offset: usize,
        cx: &str,
    ) -> Option<ConsumerAction> {
        let web_keys = [
            ("ca_file", c.ca_file.as_ref()),
            ("username", c.username.as_ref()),
            ("password_file", c.password_file.as_ref()),
            ("bearer_token_file", c.bearer_token_file.as_ref()),
        ];
        match (&c.url, &c.command) {
            (Some(url), Some(command)) => {
                let at = url.span().start.max(command.span().start);
                self.error(
                    at,
                    cx,
                    "keys \"url\" and \"command\": both are set (a consumer is reloaded either \
                     with POST {url}/-/reload or by running a command: keep one)",
                );
                None
            }
            (None, None) => {
                if !self
                    .report
                    .was_suggested(cx, |k| k == "url" || k == "command")
                {
                    self.error(
                        offset,
                        cx,
                        "missing key \"url\" or \"command\" (url = \"http://127.0.0.1:8429\" for \
                         POST {url}/-/reload, or command = [\"/usr/bin/program\", \"arg\"] to run)",
                    );
                }
                None
            }
            (None, Some(command)) => {
                for (key, value) in web_keys {
                    if let Some(value) = value {
                        self.error(
                            value.span().start,
                            cx,
                            format!(
                                "key {key:?}: it only applies to a url consumer (remove it: a \
                                 command gets no credentials)"
                            ),
                        );
                    }
                }
                self.command_value(command, cx).map(ConsumerAction::Command)
            }
            (Some(url), None) => {
                let url = self.url_value(url, cx, "url", "http://127.0.0.1:8429");
                let path = |v: &mut Self, key: &str| {
                    let value = web_keys.iter().find(|(k, _)| *k == key)?.1?;
                    v.path_value(value, cx, key)
                };
                let ca_file = path(self, "ca_file");
                let password_file = path(self, "password_file");
                let bearer_token_file = path(self, "bearer_token_file");
                self.web_auth_pairs(
                    &c.username,
                    &c.password_file,
                    &c.bearer_token_file,
                    cx,
                    "the endpoint",
                );
                Some(ConsumerAction::Url(WebEndpoint {
                    url: url?,
                    ca_file,
                    username: c.username.as_ref().map(|u| u.get_ref().clone()),
                    password_file,
                    bearer_token_file,
                }))
            }
        }
    }

    fn command_value(
        &mut self,
        command: &Spanned<Vec<Spanned<String>>>,
        cx: &str,
    ) -> Option<Vec<String>> {
        let argv = command.get_ref();
        let Some(program) = argv.first() else {
            self.error(
                command.span().start,
                cx,
                "key \"command\": the list is empty (name the program and its arguments, \
                 e.g. command = [\"/usr/bin/kill\", \"-HUP\", \"1234\"])",
            );
            return None;
        };
        let mut ok = true;
        if program.get_ref().is_empty() {
            self.error(
                program.span().start,
                cx,
                "key \"command\": the program is empty (name it, preferably by its absolute path)",
            );
            ok = false;
        } else if program.get_ref().contains('/') && !program.get_ref().starts_with('/') {
            self.error(
                program.span().start,
                cx,
                format!(
                    "key \"command\": {:?} is a relative path (name the program by its absolute \
                     path, or by a bare name looked up in the PATH commands run with)",
                    program.get_ref()
                ),
            );
            ok = false;
        }
        if argv.len() > MAX_ARGS {
            self.error(
                command.span().start,
                cx,
                format!("key \"command\": more than {MAX_ARGS} arguments"),
            );
            ok = false;
        }
        for arg in argv {
            if arg.get_ref().contains('\0') || arg.get_ref().len() > MAX_ARG_LEN {
                self.error(
                    arg.span().start,
                    cx,
                    format!(
                        "key \"command\": an argument holds a NUL byte or is longer than {MAX_ARG_LEN} bytes"
                    ),
                );
                ok = false;
            }
        }
        ok.then(|| argv.iter().map(|a| a.get_ref().clone()).collect())
    }

    fn consumer_clusters(
        &mut self,
        list: &Spanned<Vec<Spanned<String>>>,
        cx: &str,
        cluster_names: &[String],
    ) -> Option<Vec<String>> {
        let mut ok = true;
        let mut out: Vec<String> = Vec::new();
        if list.get_ref().is_empty() {
            self.error(
                list.span().start,
                cx,
                "key \"clusters\": the list is empty, so this consumer would never be reloaded \
                 (name clusters, or remove the key for every cluster)",
            );
            return None;
        }
        for name in list.get_ref() {
            let n = name.get_ref();
            if !cluster_names.iter().any(|c| c == n) && self.defer_clusters {
                // Perhaps a drop-in's: the loader checks once all are read.
                let (line, column) = self.report.position(name.span().start);
                let narrow = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                self.unresolved.push(super::Unresolved {
                    name: n.clone(),
                    at: (narrow(line), narrow(column)),
                    context: cx.to_string(),
                });
                if !out.contains(n) {
                    out.push(n.clone());
                }
            } else if !cluster_names.iter().any(|c| c == n) {
                let known: Vec<&str> = cluster_names.iter().map(String::as_str).collect();
                let hint = match super::did_you_mean(n, &known) {
                    Some(best) => format!("did you mean {best:?}?"),
                    None if known.is_empty() => "the file has no [[cluster]]".to_string(),
                    None => format!("clusters in this file: {}", known.join(", ")),
                };
                self.error(
                    name.span().start,
                    cx,
                    format!("key \"clusters\": no [[cluster]] is named {n:?} ({hint})"),
                );
                ok = false;
            } else if !out.contains(n) {
                out.push(n.clone());
            }
        }
        ok.then_some(out)
    }
}
