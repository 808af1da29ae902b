//! The API server's checks: reachable, TLS, mcprom's credential and
//! permission, the ServiceAccount, the token on disk, legacy token Secrets,
//! and `--mint`; all through [`apiserver`].

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::tls::{Trust, tls_failure};
use super::{Check, Mark, REQUEST_TIMEOUT, Section};
use crate::apiserver::{self, Failure};
use crate::config::{ClusterSettings, ServiceAccountRef};
use crate::issuer;

/// The API server's side, in order; returns the legacy-Secret line, which
/// is printed last.
pub(super) async fn check_api_server(
    cluster: &ClusterSettings,
    config_file: &Path,
    mint: bool,
    s: &mut Section,
) -> Option<Check> {
    let config = apiserver::config(cluster, REQUEST_TIMEOUT, crate::exec::DEFAULT_EXEC_TIMEOUT);
    let config = match config.await {
        Ok(config) => config,
        Err(e) => {
            s.fail_because(
                e.reason(),
                format!("API server not checked: mcprom's credentials cannot be loaded: {e}"),
                "fix the files named in the cluster's [cluster.credentials] and ca_file (`mcprom check` lists them)",
            );
            return None;
        }
    };
    let server = config.cluster_url.to_string();
    let server = server.trim_end_matches('/').to_owned();
    let trust = Trust::of(cluster, &config);
    let api = match apiserver::client(config) {
        Ok(client) => Api { client },
        Err(e) => {
            s.fail_because(
                e.reason(),
                format!("API server {server} not checked: cannot build a client: {e}"),
                "check the kubeconfig's TLS and proxy settings",
            );
            return None;
        }
    };

    // Reachable, and TLS.
    let (status, body) = match api.get("/version", "application/json").await {
        Err(Transport(e @ Failure::Tls(_))) => {
            let Failure::Tls(text) = &e else {
                unreachable!("matched above")
            };
            s.pass(format!(
                "API server {server} reachable (a TLS handshake was attempted)"
            ));
            let (why, hint) = tls_failure(text, &trust);
            s.fail_because(
                e.reason(),
                format!("TLS verified with {}: {why} ({text})", trust.describe()),
                hint,
            );
            return None;
        }
        Err(e) => {
            s.fail_because(
                e.0.reason(),
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
        code => s.fail_because(
            apiserver::status_reason(code),
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
            s.fail_because(
                e.0.reason(),
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
        mint_and_verify(cluster, config_file, s).await;
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
/// written nowhere. Self-renewing clusters renew through the daemon's
/// wrapper (`config` names the file in its re-seed instructions).
async fn mint_and_verify(cluster: &ClusterSettings, config: &Path, s: &mut Section) {
    use crate::issuer::Issuer as _;
    let issuer = crate::app::ClusterIssuer::new(
        Arc::new(cluster.clone()),
        config,
        REQUEST_TIMEOUT,
        crate::exec::DEFAULT_EXEC_TIMEOUT,
    );
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
    s.fail_because(
        apiserver::status_reason(401),
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
        // The real server says `"items": null` for an empty
        // PartialObjectMetadataList (found by testbed/conformance).
        #[serde(default)]
        items: Option<Vec<Item>>,
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
    let check = |mark, text: String, hint: Option<String>| Check {
        mark,
        text,
        hint,
        reason: None,
    };
    Some(match api.get(&path, accept).await {
        Ok((200, body)) => match serde_json::from_slice::<List>(&body) {
            Ok(list) => {
                let names: Vec<String> = list
                    .items
                    .unwrap_or_default()
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

/// A failure to talk to the API server ([`apiserver::Failure`]), in the
/// checklist's words.
#[derive(Debug)]
struct Transport(Failure);

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Failure::Tls(text) => write!(f, "TLS failed: {text}"),
            Failure::Unreachable(text) | Failure::Config(text) => f.write_str(text),
            Failure::TimedOut(_) | Failure::Timeout(_) => {
                write!(f, "no answer within {REQUEST_TIMEOUT:?}")
            }
        }
    }
}

/// The server's `Status.message`, or the start of the body.
fn message(body: &[u8]) -> String {
    apiserver::message(body).unwrap_or_else(|| "no message".into())
}

/// Requests through the cluster's kube client ([`apiserver::send`]).
struct Api {
    client: kube::Client,
}

impl Api {
    async fn send(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<(u16, bytes::Bytes), Transport> {
        let answer = apiserver::send(
            &self.client,
            request,
            REQUEST_TIMEOUT,
            crate::outside::MAX_TOKEN_ANSWER,
        )
        .await
        .map_err(Transport)?;
        Ok((answer.status.as_u16(), answer.body))
    }

    async fn get(&self, path: &str, accept: &str) -> Result<(u16, bytes::Bytes), Transport> {
        self.send(apiserver::get(path, accept)).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(u16, bytes::Bytes), Transport> {
        self.send(apiserver::post_json(path, body.to_string().into_bytes()))
            .await
    }
}
