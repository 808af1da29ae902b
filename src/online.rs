//! `mcprom check --online`: probe every cluster and Prometheus the way the
//! daemon talks to them, and print a checklist, changing nothing.
//!
//! Per cluster, with the credentials and TLS settings the daemon uses
//! ([`issuer::kube_config`]): the API server is reachable (`GET /version`),
//! its TLS certificate verifies (and against which CA), mcprom's credential
//! is accepted (a `SelfSubjectReview`, which also says who mcprom is), it may
//! create tokens for the ServiceAccount (a `SelfSubjectAccessReview`), the
//! ServiceAccount exists, the token directory is writable and the file group
//! exists; and a warning when a legacy, never-expiring token Secret still
//! exists for the ServiceAccount. For Prometheus, unless `reload = "never"`:
//! reachable, ready, and its lifecycle API enabled (`/api/v1/status/flags`).
//!
//! Where mcprom's identity may not read what a check needs (least
//! privilege: it needs nothing but `create serviceaccounts/token`), the line
//! says "not checked: no permission" and does not fail.
//!
//! Nothing is changed: no TokenRequest, no reload. The requests are GETs
//! and the two review objects, which the API server evaluates and does not
//! store; the token directory sees only a temp file with mcprom's own
//! prefix, created and removed at once.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::config::{
    ClusterSettings, Credentials, PrometheusSettings, ReloadMode, ServiceAccountRef, Settings,
};
use crate::issuer::{self, chain};
use crate::reload::{ReloadError, Reloader};

/// How long one request to an API server or Prometheus may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Passed (`✔`).
    Pass,
    /// Failed (`✘`): `check --online` exits 1.
    Fail,
    /// Works, but someone should act (`!`).
    Warn,
    /// Not checked: mcprom's identity may not read what it needs (`-`).
    NotChecked,
}

impl Mark {
    /// The symbol at the start of the line.
    pub fn symbol(self) -> char {
        match self {
            Mark::Pass => '✔',
            Mark::Fail => '✘',
            Mark::Warn => '!',
            Mark::NotChecked => '-',
        }
    }
}

/// One line of the checklist, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The outcome.
    pub mark: Mark,
    /// What was checked and what was found.
    pub text: String,
    /// What to do (failures, warnings, not checked).
    pub hint: Option<String>,
}

/// The checklist of one cluster, or of Prometheus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Section {
    /// `cluster "prod" (kube-system/prometheus-test)`, `Prometheus (URL)`.
    pub title: String,
    /// The lines, in checking order.
    pub checks: Vec<Check>,
}

impl Section {
    fn new(title: String) -> Self {
        Section {
            title,
            checks: Vec::new(),
        }
    }

    fn push(&mut self, mark: Mark, text: impl Into<String>, hint: Option<String>) {
        self.checks.push(Check {
            mark,
            text: text.into(),
            hint,
        });
    }

    fn pass(&mut self, text: impl Into<String>) {
        self.push(Mark::Pass, text, None);
    }

    fn fail(&mut self, text: impl Into<String>, hint: impl Into<String>) {
        self.push(Mark::Fail, text, Some(hint.into()));
    }

    fn warn(&mut self, text: impl Into<String>, hint: impl Into<String>) {
        self.push(Mark::Warn, text, Some(hint.into()));
    }

    fn not_checked(&mut self, what: &str, why: impl Into<String>) {
        self.push(
            Mark::NotChecked,
            format!("{what}: not checked: no permission"),
            Some(why.into()),
        );
    }

    /// How many lines carry `mark`.
    pub fn count(&self, mark: Mark) -> usize {
        self.checks.iter().filter(|c| c.mark == mark).count()
    }

    /// The section as printed: the title, then one indented line per check,
    /// each hint on its own line below it.
    pub fn render(&self) -> String {
        let mut out = format!("{}\n", self.title);
        for check in &self.checks {
            let _ = writeln!(out, "  {} {}", check.mark.symbol(), check.text);
            if let Some(hint) = &check.hint {
                let _ = writeln!(out, "      hint: {hint}");
            }
        }
        out
    }
}

/// Totals over every section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// `✔` lines.
    pub passed: usize,
    /// `✘` lines: any makes `check --online` exit 1.
    pub failed: usize,
    /// `!` lines.
    pub warnings: usize,
    /// `-` lines.
    pub not_checked: usize,
}

impl Summary {
    fn add(&mut self, section: &Section) {
        self.passed += section.count(Mark::Pass);
        self.failed += section.count(Mark::Fail);
        self.warnings += section.count(Mark::Warn);
        self.not_checked += section.count(Mark::NotChecked);
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        write!(
            f,
            "online checks: {} passed, {} failed, {} warning{}, {} not checked",
            self.passed,
            self.failed,
            self.warnings,
            plural(self.warnings),
            self.not_checked
        )
    }
}

/// Check every cluster (at most `limits.concurrent_requests` at once) and
/// Prometheus, print each section to stdout in config order as soon as it
/// and those before it are done, then the totals.
pub async fn run(settings: &Settings, mint: bool) -> Summary {
    let limit = Arc::new(Semaphore::new(settings.limits.concurrent_requests.max(1)));
    let mut sections: Vec<_> = settings
        .clusters
        .iter()
        .map(|cluster| {
            let cluster = cluster.clone();
            let limit = limit.clone();
            let title = cluster_title(&cluster);
            let task = tokio::spawn(async move {
                let _permit = limit.acquire_owned().await;
                check_cluster(&cluster, mint).await
            });
            (title, task)
        })
        .collect();
    let prometheus = tokio::spawn(check_prometheus(settings.prometheus.clone()));
    sections.push(("Prometheus".to_owned(), prometheus));
    let clusters: Vec<(String, PathBuf)> = settings
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.token_file.clone()))
        .collect();
    let jobs = tokio::spawn(check_prometheus_jobs(settings.prometheus.clone(), clusters));
    sections.push(("Prometheus jobs".to_owned(), jobs));
    let mut summary = Summary::default();
    for (title, task) in sections {
        let section = task.await.unwrap_or_else(|e| {
            let mut s = Section::new(title);
            s.fail(
                format!("the check itself failed: {e}"),
                "this is a bug in mcprom; please report it",
            );
            s
        });
        summary.add(&section);
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(section.render().as_bytes());
        let _ = out.flush();
    }
    println!("{summary}");
    summary
}

fn cluster_title(cluster: &ClusterSettings) -> String {
    format!("cluster {:?} ({})", cluster.name, cluster.service_account)
}

/// Every check of one cluster.
pub async fn check_cluster(cluster: &ClusterSettings, mint: bool) -> Section {
    let mut section = Section::new(cluster_title(cluster));
    let legacy = check_api_server(cluster, mint, &mut section).await;
    let local = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || local_checks(&cluster)).await
    };
    match local {
        Ok(checks) => section.checks.extend(checks),
        Err(e) => section.fail(
            format!("token directory: the check itself failed: {e}"),
            "this is a bug in mcprom; please report it",
        ),
    }
    section.checks.extend(legacy);
    section
}

/// The API server's side, in order; returns the legacy-Secret line, which
/// is printed last.
async fn check_api_server(cluster: &ClusterSettings, mint: bool, s: &mut Section) -> Option<Check> {
    let config = match issuer::kube_config(cluster, REQUEST_TIMEOUT).await {
        Ok(config) => config,
        Err(e) => {
            s.fail(
                format!("API server not checked: mcprom's credentials cannot be loaded: {e}"),
                "fix the files named in the cluster's [cluster.credentials] and ca_file (`mcprom check` lists them)",
            );
            return None;
        }
    };
    let server = config.cluster_url.to_string();
    let server = server.trim_end_matches('/').to_owned();
    let trust = Trust::of(cluster, &config);
    let api = match kube::Client::try_from(config) {
        Ok(client) => Api { client },
        Err(e) => {
            s.fail(
                format!(
                    "API server {server} not checked: cannot build a client: {}",
                    chain(&e)
                ),
                "check the kubeconfig's TLS and proxy settings",
            );
            return None;
        }
    };

    // Reachable, and TLS.
    let (status, body) = match api.get("/version", "application/json").await {
        Err(Transport::Tls(text)) => {
            s.pass(format!(
                "API server {server} reachable (a TLS handshake was attempted)"
            ));
            let (why, hint) = tls_failure(&text, &trust);
            s.fail(
                format!("TLS verified with {}: {why} ({text})", trust.describe()),
                hint,
            );
            return None;
        }
        Err(e) => {
            s.fail(
                format!("API server {server} reachable: {e}"),
                "is the API server up, and is api_server (or the kubeconfig's server) right? \
                 A firewall, VPN or a missing Rancher path prefix (/k8s/clusters/c-xxxxx) also \
                 show up here",
            );
            return None;
        }
        Ok(answer) => answer,
    };
    match status {
        200 => {
            let version = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["gitVersion"].as_str().map(str::to_owned));
            match version {
                Some(v) => s.pass(format!("API server {server} reachable (Kubernetes {v})")),
                None => s.pass(format!("API server {server} reachable")),
            }
        }
        401 => s.pass(format!("API server {server} reachable")),
        code => s.fail(
            format!(
                "API server {server} reachable, but GET /version answered {code}: {}",
                message(&body)
            ),
            "api_server must be the Kubernetes API server's URL, including a path prefix such \
             as Rancher's /k8s/clusters/c-xxxxx",
        ),
    }
    match &trust {
        Trust::Skipped(why) => s.warn(
            format!("TLS NOT verified: {why}"),
            "anyone on the network path could impersonate the API server and capture mcprom's \
             credential; set ca_file to the cluster's CA instead",
        ),
        Trust::Verified(_) => s.pass(format!("TLS verified with {}", trust.describe())),
        Trust::Plain(what) => s.warn(
            format!("no TLS: {what}, to a loopback address"),
            "nothing crosses the network, but any local user who can listen on that port \
             before its server does receives mcprom's credential; use https:// where you can",
        ),
    }
    if status == 401 {
        credential_rejected(s, &body);
        return None;
    }

    // Who mcprom is.
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    let mut groups: Vec<String> = Vec::new();
    let user = match api
        .post("/apis/authentication.k8s.io/v1/selfsubjectreviews", &review)
        .await
    {
        Ok((200 | 201, body)) => {
            let answer = serde_json::from_slice::<Value>(&body).unwrap_or_default();
            let user = answer["status"]["userInfo"]["username"]
                .as_str()
                .map(str::to_owned);
            groups = answer["status"]["userInfo"]["groups"]
                .as_array()
                .map(|g| {
                    g.iter()
                        .filter_map(|g| g.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            match user.as_deref() {
                Some("system:anonymous") => {
                    anonymous(s);
                    return None;
                }
                Some(user) => s.pass(format!(
                    "mcprom's credential accepted (authenticated as {user:?})"
                )),
                None => s.pass("mcprom's credential accepted"),
            }
            user
        }
        Ok((401, body)) => {
            credential_rejected(s, &body);
            return None;
        }
        Ok((403, body)) if message(&body).contains("system:anonymous") => {
            anonymous(s);
            return None;
        }
        // 404: no SelfSubjectReview before Kubernetes 1.28; 403: not allowed
        // to ask. Either way the server authenticated the request.
        Ok((code, _)) => {
            s.pass(format!(
                "mcprom's credential accepted (the server did not say who mcprom is: \
                 SelfSubjectReview answered {code})"
            ));
            None
        }
        Err(e) => {
            s.fail(
                format!("mcprom's credential: {e}"),
                "the API server stopped answering; run the check again",
            );
            return None;
        }
    };
    let who = user.map_or_else(|| "mcprom".to_owned(), |u| format!("{u:?}"));

    too_powerful(&api, cluster, &groups, &who, s).await;
    let may_mint = may_create_tokens(&api, cluster, &who, s).await;
    service_account_exists(&api, cluster, may_mint, s).await;
    review_token_file(cluster, s).await;
    let legacy = legacy_secrets(&api, &cluster.service_account).await;
    if mint {
        mint_and_verify(cluster, s).await;
    }
    legacy
}

/// A warning when mcprom's own identity could do anything in the cluster:
/// a copy of its credential is then a copy of the cluster.
async fn too_powerful(
    api: &Api,
    cluster: &ClusterSettings,
    groups: &[String],
    who: &str,
    s: &mut Section,
) {
    let hint = format!(
        "mcprom needs only create on serviceaccounts/token for {}: use the least-privilege \
         identity `mcprom rbac {}` sets up (its issuer ServiceAccount and Role) in \
         [cluster.credentials]",
        cluster.service_account, cluster.name
    );
    if groups.iter().any(|g| g == "system:masters") {
        s.warn(
            format!(
                "mcprom's credential is far more powerful than it needs: {who} is a member of \
                 system:masters (a cluster admin)"
            ),
            hint,
        );
        return;
    }
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": "*", "group": "*", "resource": "*"}},
    });
    if let Ok((200 | 201, body)) = api
        .post(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            &review,
        )
        .await
    {
        let answer = serde_json::from_slice::<Value>(&body).unwrap_or_default();
        if answer["status"]["allowed"] == true {
            s.warn(
                format!(
                    "mcprom's credential is far more powerful than it needs: {who} is allowed * on * \
                     ({})",
                    answer["status"]["reason"].as_str().unwrap_or("cluster-admin or equivalent")
                ),
                hint,
            );
        }
    }
}

/// The token file on disk, shown to the API server (a SelfSubjectReview
/// made with it): what Prometheus presents now.
async fn review_token_file(cluster: &ClusterSettings, s: &mut Section) {
    let path = cluster.token_file.display();
    let text = match std::fs::read_to_string(&cluster.token_file) {
        Ok(text) => text,
        // Not written yet (mcprom has not run): nothing to review. A
        // missing directory is the token directory line's business.
        Err(_) if !cluster.token_file.exists() => return,
        Err(e) => {
            s.fail(
                format!("token file {path}: cannot read it: {e}"),
                "mcprom (and Prometheus) must be able to read it",
            );
            return;
        }
    };
    let token = match crate::token::Token::new(text.trim()) {
        Ok(t) if t.claims().is_ok() => t,
        _ => {
            s.warn(
                format!("token file {path}: does not hold a ServiceAccount token"),
                format!(
                    "mcprom replaces it at its next start or `mcprom rotate {}`",
                    cluster.name
                ),
            );
            return;
        }
    };
    let issuer = issuer::KubeIssuer::new(Arc::new(cluster.clone()), REQUEST_TIMEOUT);
    let what = format!("token file {path} accepted by the API server");
    match issuer.review_token(&token).await {
        Ok(issuer::Review::Confirmed) => {
            s.pass(format!("{what} as {}", cluster.service_account.subject()))
        }
        Ok(issuer::Review::Authenticated) => s.pass(what),
        Ok(issuer::Review::Unsupported) => s.not_checked(
            &what,
            "the API server has no SelfSubjectReview (Kubernetes before 1.28)",
        ),
        Err(issuer::IssueError::Rejected(why)) => s.fail(
            format!("token file {path}: {why}"),
            format!(
                "Prometheus is presenting a token the cluster rejects: `mcprom rotate {}` \
                 replaces it (and `mcprom status` says why the daemon has not)",
                cluster.name
            ),
        ),
        Err(e) => s.fail(format!("{what}: {e}"), "run the check again"),
    }
}

/// `--mint`: one 10-minute token, reviewed for identity and audience,
/// written nowhere.
async fn mint_and_verify(cluster: &ClusterSettings, s: &mut Section) {
    use crate::issuer::Issuer as _;
    let issuer = issuer::KubeIssuer::new(Arc::new(cluster.clone()), REQUEST_TIMEOUT);
    let spec = issuer::TokenSpec {
        expiration: MINT_EXPIRATION,
        audiences: cluster.audiences.clone(),
    };
    let what = format!(
        "a 10-minute token for {} minted and accepted",
        cluster.service_account
    );
    let issued = match issuer.issue(&spec).await {
        Ok(issued) => issued,
        Err(e) => {
            s.fail(
                format!("{what}: {e}"),
                "mcprom's rotations fail the same way",
            );
            return;
        }
    };
    match issuer.verify(&issued).await {
        Ok(issuer::Review::Confirmed) => s.pass(format!(
            "{what} (audiences {:?}; written nowhere)",
            issued.claims.audiences
        )),
        Ok(issuer::Review::Unsupported) => s.not_checked(
            &format!("{what} (minted; not reviewed)"),
            "the API server has no SelfSubjectReview (Kubernetes before 1.28)",
        ),
        Ok(issuer::Review::Authenticated) => s.pass(format!("{what} (identity not shown)")),
        Err(e) => s.fail(
            format!("{what}: {e}"),
            "mcprom would not write such a token (reason rejected)",
        ),
    }
}

/// Lifetime of the token `check --online --mint` asks for: the shortest
/// a real API server grants.
const MINT_EXPIRATION: Duration = Duration::from_secs(600);

fn credential_rejected(s: &mut Section, body: &[u8]) {
    s.fail(
        format!("mcprom's credential rejected (401 {})", message(body)),
        "renew the credential in [cluster.credentials]: an expired or revoked token, a \
         ServiceAccount that was deleted, or a client certificate from another cluster's CA",
    );
}

fn anonymous(s: &mut Section) {
    s.fail(
        "mcprom's credential: the API server treats mcprom as anonymous (system:anonymous)",
        "the credentials send nothing the API server recognizes: give the kubeconfig user a \
         token or client certificate, or use credentials.token_file",
    );
}

/// `true` when the server said mcprom may create the tokens.
async fn may_create_tokens(
    api: &Api,
    cluster: &ClusterSettings,
    who: &str,
    s: &mut Section,
) -> bool {
    let sa = &cluster.service_account;
    let what = format!("allowed to create tokens for {sa}");
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "namespace": sa.namespace,
            "verb": "create",
            "group": "",
            "resource": "serviceaccounts",
            "subresource": "token",
            "name": sa.name,
        }},
    });
    let rbac_hint = format!(
        "grant {who} create on serviceaccounts/token with resourceNames [{}] in namespace {} \
         (`mcprom rbac {}` prints the Role and RoleBinding)",
        sa.name, sa.namespace, cluster.name
    );
    match api
        .post(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            &review,
        )
        .await
    {
        Ok((200 | 201, body)) => {
            #[derive(Deserialize, Default)]
            #[serde(rename_all = "camelCase")]
            struct Status {
                #[serde(default)]
                allowed: bool,
                #[serde(default)]
                reason: String,
                #[serde(default)]
                evaluation_error: String,
            }
            #[derive(Deserialize)]
            struct Review {
                #[serde(default)]
                status: Status,
            }
            match serde_json::from_slice::<Review>(&body) {
                Ok(Review { status }) if status.allowed => {
                    if status.reason.is_empty() {
                        s.pass(what);
                    } else {
                        s.pass(format!("{what} ({})", status.reason));
                    }
                    return true;
                }
                Ok(Review { status }) => {
                    let mut text =
                        format!("{what}: no, {who} may not create serviceaccounts/token for {sa}");
                    for extra in [&status.reason, &status.evaluation_error] {
                        if !extra.is_empty() {
                            let _ = write!(text, " ({extra})");
                        }
                    }
                    s.fail(text, rbac_hint);
                }
                Err(e) => s.fail(
                    format!("{what}: the SelfSubjectAccessReview answer is not one ({e})"),
                    "is api_server a Kubernetes API server?",
                ),
            }
        }
        Ok((401, body)) => credential_rejected(s, &body),
        Ok((403, body)) => s.not_checked(
            &what,
            format!(
                "{} (mcprom may not create SelfSubjectAccessReviews; a TokenRequest will tell)",
                message(&body)
            ),
        ),
        Ok((code, body)) => s.fail(
            format!(
                "{what}: SelfSubjectAccessReview answered {code}: {}",
                message(&body)
            ),
            rbac_hint,
        ),
        Err(e) => s.fail(format!("{what}: {e}"), "run the check again"),
    }
    false
}

async fn service_account_exists(
    api: &Api,
    cluster: &ClusterSettings,
    may_mint: bool,
    s: &mut Section,
) {
    let sa = &cluster.service_account;
    let what = format!("ServiceAccount {sa} exists");
    let path = format!(
        "/api/v1/namespaces/{}/serviceaccounts/{}",
        sa.namespace, sa.name
    );
    let missing_hint = format!(
        "create it (`mcprom rbac {}` prints it with its RBAC); every TokenRequest fails \
         with 404 until it exists, and tokens issued before it was deleted no longer work",
        cluster.name
    );
    match api.get(&path, "application/json").await {
        Ok((200, _)) => s.pass(what),
        Ok((404, _)) => s.fail(format!("ServiceAccount {sa} does not exist"), missing_hint),
        // Least privilege may not read ServiceAccounts, but it may mint for
        // this one: the API server looks the ServiceAccount up before it
        // validates the request, so an invalid lifetime tells without
        // minting anything (404 missing, 422 present).
        Ok((403, body)) => match exists_by_token_request(api, sa, may_mint).await {
            Some(true) => s.pass(format!(
                "{what} (a TokenRequest that mints nothing found it)"
            )),
            Some(false) => s.fail(format!("ServiceAccount {sa} does not exist"), missing_hint),
            None => s.not_checked(
                &what,
                format!(
                    "{}; optional: minting tokens does not need it (grant get on serviceaccounts \
                     to have it checked)",
                    message(&body)
                ),
            ),
        },
        Ok((401, body)) => credential_rejected(s, &body),
        Ok((code, body)) => s.fail(
            format!("{what}: GET answered {code}: {}", message(&body)),
            "run the check again; if it persists, look at the API server's logs",
        ),
        Err(e) => s.fail(format!("{what}: {e}"), "run the check again"),
    }
}

/// Whether `sa` exists, asked with a TokenRequest for a 1-second lifetime,
/// which every API server refuses (422) after finding the ServiceAccount
/// (404 when it does not): nothing is minted. `None` when the answer says
/// neither.
async fn exists_by_token_request(
    api: &Api,
    sa: &ServiceAccountRef,
    may_mint: bool,
) -> Option<bool> {
    if !may_mint {
        return None; // the answer would be 403
    }
    let path = format!(
        "/api/v1/namespaces/{}/serviceaccounts/{}/token",
        sa.namespace, sa.name
    );
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 1},
    });
    match api.post(&path, &request).await {
        Ok((422, _)) => Some(true),
        Ok((404, body)) => {
            let status: Value = serde_json::from_slice(&body).ok()?;
            (status["details"]["kind"] == "serviceaccounts").then_some(false)
        }
        _ => None,
    }
}

/// The `!` line when a legacy token Secret of the ServiceAccount exists.
async fn legacy_secrets(api: &Api, sa: &ServiceAccountRef) -> Option<Check> {
    #[derive(Deserialize, Default)]
    struct Metadata {
        #[serde(default)]
        name: String,
        #[serde(default)]
        annotations: std::collections::BTreeMap<String, String>,
    }
    #[derive(Deserialize)]
    struct Item {
        #[serde(default)]
        metadata: Metadata,
    }
    #[derive(Deserialize)]
    struct List {
        #[serde(default)]
        items: Vec<Item>,
    }
    const ANNOTATION: &str = "kubernetes.io/service-account.name";
    // Server-side filtering on the type and metadata only: the tokens in
    // these Secrets never cross the wire, and nothing here could print one.
    let path = format!(
        "/api/v1/namespaces/{}/secrets?fieldSelector=type%3Dkubernetes.io%2Fservice-account-token",
        sa.namespace
    );
    let accept =
        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
    let what = format!("legacy token Secrets for {sa}");
    let check = |mark, text: String, hint: Option<String>| Check { mark, text, hint };
    Some(match api.get(&path, accept).await {
        Ok((200, body)) => match serde_json::from_slice::<List>(&body) {
            Ok(list) => {
                let names: Vec<String> = list
                    .items
                    .into_iter()
                    .filter(|i| i.metadata.annotations.get(ANNOTATION) == Some(&sa.name))
                    .map(|i| i.metadata.name)
                    .collect();
                if names.is_empty() {
                    check(
                        Mark::Pass,
                        format!("no legacy token Secret for {sa}"),
                        None,
                    )
                } else {
                    let (s, exist) = if names.len() == 1 {
                        ("", "exists")
                    } else {
                        ("s", "exist")
                    };
                    check(
                        Mark::Warn,
                        format!(
                            "WARNING: legacy permanent token Secret{s} for {sa} still {exist}: {}",
                            names.join(", ")
                        ),
                        Some(format!(
                            "a legacy token never expires and works for anyone holding a copy; \
                             once mcprom runs, delete it: kubectl -n {} delete secret {}",
                            sa.namespace,
                            names.join(" ")
                        )),
                    )
                }
            }
            Err(e) => check(
                Mark::Warn,
                format!("{what}: the answer is not a list ({e})"),
                Some("check by hand: kubectl get secrets --field-selector type=kubernetes.io/service-account-token".into()),
            ),
        },
        Ok((403, body)) => check(
            Mark::NotChecked,
            format!("{what}: not checked: no permission"),
            Some(format!(
                "{}; optional: grant list on secrets in {} to have it checked, or look with an \
                 admin's kubectl",
                message(&body),
                sa.namespace
            )),
        ),
        Ok((code, body)) => check(
            Mark::Warn,
            format!("{what}: could not list them: {code} {}", message(&body)),
            Some("check by hand: kubectl get secrets --field-selector type=kubernetes.io/service-account-token".into()),
        ),
        Err(e) => check(
            Mark::Warn,
            format!("{what}: could not list them: {e}"),
            Some("run the check again".into()),
        ),
    })
}

/// Token directory and file group: local, blocking.
fn local_checks(cluster: &ClusterSettings) -> Vec<Check> {
    let mut s = Section::default();
    let dir = match cluster.token_file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    check_token_dir(&dir, &cluster.token_file, &mut s);
    if let Some(group) = &cluster.file_group {
        match crate::sink::lookup_group(group) {
            Ok(gid) => s.pass(format!("file group {group:?} exists (gid {gid})")),
            Err(_) => s.fail(
                format!("file group {group:?} does not exist"),
                format!(
                    "create it (`groupadd --system {group}`) or set file_group to the group \
                     Prometheus runs as"
                ),
            ),
        }
    }
    s.checks
}

fn check_token_dir(dir: &Path, token_file: &Path, s: &mut Section) {
    let hint = format!(
        "mcprom replaces {} by renaming a temp file from the same directory over it: make {} a \
         directory the user mcprom runs as can write (systemd: StateDirectory= or \
         ReadWritePaths=), or change token_dir/token_file",
        token_file.display(),
        dir.display()
    );
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => match probe_writable(dir) {
            Ok(()) => s.pass(format!("token directory {} writable", dir.display())),
            Err(e) => s.fail(
                format!(
                    "token directory {} not writable: cannot create a file in it: {e}",
                    dir.display()
                ),
                hint,
            ),
        },
        Ok(_) => s.fail(
            format!("token directory {} is not a directory", dir.display()),
            hint,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(ancestor) = dir.ancestors().skip(1).find(|a| a.exists()) else {
                s.fail(format!("token directory {}: {e}", dir.display()), hint);
                return;
            };
            match std::fs::metadata(ancestor) {
                Ok(m) if m.is_dir() => match probe_writable(ancestor) {
                    Ok(()) => s.pass(format!(
                        "token directory {} writable (it does not exist yet; mcprom will create it in {})",
                        dir.display(),
                        ancestor.display()
                    )),
                    Err(e) => s.fail(
                        format!(
                            "token directory {} does not exist and cannot be created in {}: {e}",
                            dir.display(),
                            ancestor.display()
                        ),
                        hint,
                    ),
                },
                _ => s.fail(
                    format!(
                        "token directory {} cannot be created: {} is not a directory",
                        dir.display(),
                        ancestor.display()
                    ),
                    hint,
                ),
            }
        }
        Err(e) => s.fail(format!("token directory {}: {e}", dir.display()), hint),
    }
}

/// Create and remove a temp file with mcprom's prefix (which the daemon
/// cleans up should this ever be interrupted), leaving the token alone.
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(
        "{}check.{:016x}",
        crate::sink::TEMP_PREFIX,
        rand::random::<u64>()
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    drop(file);
    std::fs::remove_file(&path)
}

/// What verifies the API server's certificate.
enum Trust {
    /// Verified against this (described) set of CAs.
    Verified(String),
    /// Not verified, and why.
    Skipped(String),
    /// No TLS at all: plain `http` (allowed only to loopback).
    Plain(String),
}

impl Trust {
    fn of(cluster: &ClusterSettings, config: &kube::Config) -> Trust {
        if config.cluster_url.scheme_str() == Some("http") {
            return Trust::Plain(format!("{} is plain http", config.cluster_url));
        }
        if cluster.insecure_skip_tls_verify {
            return Trust::Skipped("insecure_skip_tls_verify = true in the config".into());
        }
        if config.accept_invalid_certs {
            return Trust::Skipped("the kubeconfig sets insecure-skip-tls-verify".into());
        }
        if let Some(ca) = &cluster.ca_file {
            return Trust::Verified(format!("ca_file {}", ca.display()));
        }
        if let Credentials::Kubeconfig { path, context } = &cluster.credentials
            && let Some(source) = kubeconfig_ca(path, context.as_deref())
        {
            return Trust::Verified(source);
        }
        if config.root_cert.is_some() {
            return Trust::Verified("the CA configured for this cluster".into());
        }
        Trust::Verified("the system's root CAs".into())
    }

    fn describe(&self) -> &str {
        match self {
            Trust::Verified(source) | Trust::Skipped(source) | Trust::Plain(source) => source,
        }
    }
}

/// Where the kubeconfig's CA for the selected context comes from.
fn kubeconfig_ca(path: &Path, context: Option<&str>) -> Option<String> {
    let kubeconfig = crate::config::input::parse_kubeconfig(path).ok()?;
    let name = context
        .map(str::to_owned)
        .or_else(|| kubeconfig.current_context.clone())?;
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == name)?
        .context
        .as_ref()?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)?
        .cluster
        .as_ref()?;
    if let Some(file) = &cluster.certificate_authority {
        Some(format!("the kubeconfig's certificate-authority {file}"))
    } else if cluster.certificate_authority_data.is_some() {
        Some(format!(
            "the kubeconfig's certificate-authority-data ({})",
            path.display()
        ))
    } else {
        None
    }
}

/// Why a TLS handshake failed, in words, and what to do.
fn tls_failure(text: &str, trust: &Trust) -> (String, String) {
    let lower = text.to_ascii_lowercase();
    let has = |needle: &str| lower.contains(&needle.to_ascii_lowercase());
    if has("UnknownIssuer") || has("unknown issuer") {
        (
            "the API server's certificate is not signed by that CA".into(),
            match trust {
                Trust::Verified(s) if s.starts_with("the system") => "set ca_file to the \
                    cluster's CA (a kubeadm control plane has it in /etc/kubernetes/pki/ca.crt; \
                    a cluster's kubeconfig carries it as certificate-authority-data)"
                    .into(),
                _ => "point ca_file at the CA that signed the API server's certificate (a \
                    kubeadm control plane has it in /etc/kubernetes/pki/ca.crt; a cluster's \
                    kubeconfig carries it as certificate-authority-data)"
                    .into(),
            },
        )
    } else if has("NotValidForName") || has("not valid for name") {
        (
            "the API server's certificate does not name the host in the URL".into(),
            "use a host name or IP address the certificate lists in its subjectAltName (the \
             one in the cluster's own kubeconfig usually is)"
                .into(),
        )
    } else if has("Expired") {
        (
            "the API server's certificate has expired, or this host's clock is wrong".into(),
            "renew the API server's certificate; check this host's time (`timedatectl`)".into(),
        )
    } else if has("NotValidYet") {
        (
            "the API server's certificate is not valid yet: this host's clock is behind".into(),
            "check this host's time (`timedatectl`)".into(),
        )
    } else if has("alert") {
        (
            "the API server refused the TLS handshake".into(),
            "a client certificate in the credentials may be expired or signed by another \
             cluster's CA"
                .into(),
        )
    } else {
        (
            "the TLS handshake failed".into(),
            "check ca_file and the API server's certificate (`openssl s_client -connect \
             HOST:PORT -showcerts`)"
                .into(),
        )
    }
}

/// A transport failure, classified for the checklist.
#[derive(Debug)]
enum Transport {
    Tls(String),
    Unreachable(String),
    Timeout,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tls(text) => write!(f, "TLS failed: {text}"),
            Transport::Unreachable(text) => f.write_str(text),
            Transport::Timeout => write!(f, "no answer within {REQUEST_TIMEOUT:?}"),
        }
    }
}

fn classify(error: &kube::Error) -> Transport {
    let text = chain(error);
    let lower = text.to_ascii_lowercase();
    if ["certificate", "tls", "handshake", "unknownissuer", "alert"]
        .iter()
        .any(|n| lower.contains(n))
    {
        Transport::Tls(text)
    } else if lower.contains("timed out") || lower.contains("elapsed") {
        Transport::Timeout
    } else {
        Transport::Unreachable(text)
    }
}

/// The server's `Status.message`, or the start of the body.
fn message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)])
                .trim()
                .to_owned();
            if text.is_empty() {
                "no message".into()
            } else {
                text
            }
        })
}

/// Raw requests through the cluster's kube client.
struct Api {
    client: kube::Client,
}

impl Api {
    async fn send(&self, request: Request<Vec<u8>>) -> Result<(u16, bytes::Bytes), Transport> {
        let exchange = async {
            let response = self
                .client
                .send(request.map(kube::client::Body::from))
                .await
                .map_err(|e| classify(&e))?;
            let (parts, body) = response.into_parts();
            let answer = crate::outside::read_body(body, crate::outside::MAX_TOKEN_ANSWER)
                .await
                .map_err(|e| classify(&e))?;
            Ok((parts.status.as_u16(), answer.bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or(Err(Transport::Timeout))
    }

    async fn get(&self, path: &str, accept: &str) -> Result<(u16, bytes::Bytes), Transport> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(http::header::ACCEPT, accept)
            .body(Vec::new())
            .map_err(|e| Transport::Unreachable(e.to_string()))?;
        self.send(request).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(u16, bytes::Bytes), Transport> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(body.to_string().into_bytes())
            .map_err(|e| Transport::Unreachable(e.to_string()))?;
        self.send(request).await
    }
}

/// Prometheus's loaded configuration against the managed token files:
/// which jobs read each, a file no job reads, a job reading a file in the
/// token directory that no cluster writes (a typo), and targets failing
/// with 401/403 now.
pub async fn check_prometheus_jobs(
    settings: PrometheusSettings,
    clusters: Vec<(String, PathBuf)>,
) -> Section {
    let url = settings.url.as_str().trim_end_matches('/').to_owned();
    let mut s = Section::new(format!("Prometheus jobs ({url})"));
    let settings = PrometheusSettings {
        timeout: settings.timeout.min(REQUEST_TIMEOUT),
        ..settings
    };
    let findings = match Reloader::new(settings) {
        Ok(reader) => crate::consumer::check(&reader, &clusters).await,
        Err(e) => Err(e.to_string()),
    };
    let findings = match findings {
        Ok(f) => f,
        Err(e) => {
            s.not_checked("which jobs read the token files", e);
            return s;
        }
    };
    for (cluster, usage) in &findings.usage {
        if usage.jobs.is_empty() {
            continue; // a warning below
        }
        let what = format!(
            "cluster {cluster:?}: token file read by {}",
            usage.jobs.join(", ")
        );
        if usage.rejected > 0 {
            s.fail(
                format!("{what}: {} targets fail with 401/403", usage.rejected),
                format!(
                    "Prometheus is presenting a rejected token for cluster {cluster:?}: see \
                     `mcprom status` and the token file line of cluster {cluster:?} above"
                ),
            );
        } else {
            s.pass(what);
        }
    }
    for warning in findings.warnings {
        s.warn(
            warning,
            "point the job's authorization.credentials_file (or bearer_token_file) at the \
             cluster's token file: `mcprom scrape-config` prints the jobs",
        );
    }
    s
}

/// Prometheus: reachable, ready, lifecycle API enabled. Never reloads.
pub async fn check_prometheus(settings: PrometheusSettings) -> Section {
    let url = crate::outside::text(settings.url.as_str().trim_end_matches('/'));
    if settings.reload == ReloadMode::Never {
        return Section::new(format!(
            "Prometheus ({url}): not checked: reload = \"never\", mcprom does not call it"
        ));
    }
    let mut s = Section::new(format!("Prometheus ({url})"));
    let settings = PrometheusSettings {
        timeout: settings.timeout.min(REQUEST_TIMEOUT),
        ..settings
    };
    let reloader = match Reloader::new(settings) {
        Ok(r) => r,
        Err(e) => {
            s.fail(
                format!("Prometheus not checked: {e}"),
                "fix [prometheus] ca_file",
            );
            return s;
        }
    };
    let (status, _) = match reloader.get("/-/ready").await {
        Ok(answer) => answer,
        Err(e) => {
            let text = match &e {
                ReloadError::Timeout(d) => format!("no answer from {url} within {d:?}"),
                other => other.to_string(),
            };
            s.fail(
                format!("reachable: {text}"),
                "start Prometheus, or correct [prometheus] url",
            );
            return s;
        }
    };
    s.pass("reachable");
    match status {
        200 => s.pass("ready"),
        503 => s.fail(
            "ready: not yet (503: Prometheus is still starting)",
            "after a restart Prometheus replays its write-ahead log first, which can take \
             minutes; check again shortly",
        ),
        401 => s.fail(
            "ready: Prometheus wants credentials (401)",
            "set username + password_file or bearer_token_file in [prometheus]",
        ),
        code => s.fail(
            format!("ready: GET /-/ready answered {code}"),
            "[prometheus] url must point at Prometheus's web endpoint (with its \
             --web.route-prefix, if any)",
        ),
    }
    let lifecycle_hint = "start Prometheus with --web.enable-lifecycle (Debian: ARGS in \
                          /etc/default/prometheus) or set reload = \"never\" in [prometheus] \
                          (token files are re-read on every scrape anyway)";
    match reloader.get("/api/v1/status/flags").await {
        Ok((200, body)) => {
            let flag = serde_json::from_str::<Value>(&body).ok().and_then(|v| {
                v["data"]["web.enable-lifecycle"]
                    .as_str()
                    .map(str::to_owned)
            });
            match flag.as_deref() {
                Some("true") => s.pass("lifecycle API enabled (--web.enable-lifecycle)"),
                Some(_) => s.fail(
                    "lifecycle API disabled: POST /-/reload would be refused (403)",
                    lifecycle_hint,
                ),
                None => s.fail(
                    "lifecycle API: cannot tell, /api/v1/status/flags does not list \
                     web.enable-lifecycle",
                    lifecycle_hint,
                ),
            }
        }
        Ok((code @ (401 | 403), _)) => s.not_checked(
            "lifecycle API enabled",
            format!("GET /api/v1/status/flags answered {code}"),
        ),
        Ok((code, _)) => s.fail(
            format!("lifecycle API: cannot tell, GET /api/v1/status/flags answered {code}"),
            lifecycle_hint,
        ),
        Err(e) => s.fail(format!("lifecycle API: {e}"), "run the check again"),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_render_marks_and_hints_and_count() {
        let mut s = Section::new("cluster \"c1\" (kube-system/prometheus-test)".into());
        s.pass("reachable");
        s.fail(
            "TLS verified with ca_file /x",
            "point ca_file at the right CA",
        );
        s.warn("legacy Secret", "delete it");
        s.not_checked("ServiceAccount exists", "403");
        assert_eq!(
            s.render(),
            "cluster \"c1\" (kube-system/prometheus-test)\n  ✔ reachable\n  \
             ✘ TLS verified with ca_file /x\n      hint: point ca_file at the right CA\n  \
             ! legacy Secret\n      hint: delete it\n  \
             - ServiceAccount exists: not checked: no permission\n      hint: 403\n"
        );
        let mut total = Summary::default();
        total.add(&s);
        assert_eq!(
            total,
            Summary {
                passed: 1,
                failed: 1,
                warnings: 1,
                not_checked: 1
            }
        );
        assert_eq!(
            total.to_string(),
            "online checks: 1 passed, 1 failed, 1 warning, 1 not checked"
        );
    }

    #[test]
    fn tls_failures_are_explained() {
        let ca = Trust::Verified("ca_file /x".into());
        let (why, _) = tls_failure("invalid peer certificate: UnknownIssuer", &ca);
        assert!(why.contains("not signed by that CA"), "{why}");
        let (why, _) = tls_failure(
            "invalid peer certificate: certificate not valid for name \"10.0.0.1\"",
            &ca,
        );
        assert!(why.contains("does not name the host"), "{why}");
        let (why, _) = tls_failure("invalid peer certificate: Expired", &ca);
        assert!(why.contains("expired"), "{why}");
        let (why, _) = tls_failure("something else", &ca);
        assert_eq!(why, "the TLS handshake failed");
    }

    #[test]
    fn the_probe_leaves_the_directory_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c1.token"), "a.b.c").unwrap();
        probe_writable(dir.path()).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("c1.token")]);
    }

    #[test]
    fn missing_and_blocked_token_directories() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Section::default();
        let missing = dir.path().join("a/b");
        check_token_dir(&missing, &missing.join("c1.token"), &mut s);
        assert_eq!(s.checks[0].mark, Mark::Pass, "{:?}", s.checks[0]);
        assert!(s.checks[0].text.contains("does not exist yet"));
        assert!(
            !dir.path().join("a").exists(),
            "the check must not create it"
        );

        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let mut s = Section::default();
        check_token_dir(&file, &file.join("c1.token"), &mut s);
        assert_eq!(s.checks[0].mark, Mark::Fail);
        assert!(s.checks[0].text.contains("is not a directory"));
    }
}
