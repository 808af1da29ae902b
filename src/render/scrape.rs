//! `mcprom scrape-config`: Prometheus scrape jobs for each cluster, reading
//! mcprom's token files.
//!
//! Two jobs per cluster, both through the API server's node proxy as in the
//! seed procedure: cAdvisor (`/api/v1/nodes/<node>/proxy/metrics/cadvisor`)
//! and the kubelet's own metrics (`/api/v1/nodes/<node>/proxy/metrics`).
//! Each authenticates with `authorization.credentials_file` = the cluster's
//! token file (Prometheus re-reads it on every scrape, so rotation needs no
//! reload), verifies the API server with `tls_config.ca_file`, and carries a
//! `cluster` label. Any path prefix of the API server (Rancher's
//! `/k8s/clusters/c-xxxxx`) is kept in front of the proxy path.
//!
//! Two forms: nodes discovered by `kubernetes_sd_configs` (upstream
//! Prometheus), or `static_configs` listing the nodes found now with the
//! cluster's managed token (Prometheus builds without Kubernetes discovery,
//! such as Debian's).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::ObjectList;
use kube::config::AuthInfo;
use rustls_pki_types::{CertificateDer, pem::PemObject};
use serde::Serialize;
use url::Url;

use super::{RenderError, comment, decode_data};
use crate::apiserver::{self, Failure, kubeconfig_entry};
use crate::config::{ClusterSettings, Credentials};

/// Largest node list read for `--static`: a node's object is a few KiB,
/// so this holds thousands of nodes.
const MAX_NODE_LIST: usize = 64 << 20;

/// How the jobs discover nodes (`mcprom scrape-config --discovery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Discovery {
    /// `api_server` with the job's token file and CA (the default).
    #[default]
    ApiServer,
    /// `kubeconfig_file`: the kubeconfig mcprom writes for the cluster.
    Kubeconfig,
}

/// How Prometheus should verify a cluster's API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ca {
    /// A CA bundle file (`ca_file`, or the kubeconfig's `certificate-authority`).
    File(PathBuf),
    /// The kubeconfig embeds the CA (`certificate-authority-data`):
    /// Prometheus needs it in a file; `--write-ca` writes it to `file`.
    Embedded {
        /// The CA bundle (PEM).
        pem: Vec<u8>,
        /// Where the job expects it.
        file: PathBuf,
    },
    /// Neither names a CA: the system roots verify the server.
    SystemRoots,
    /// Verification is off for this cluster (`insecure_skip_tls_verify`).
    Insecure,
}

/// Where and how Prometheus reaches one cluster's API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The API server URL, path prefix included.
    pub url: Url,
    /// How to verify it.
    pub ca: Ca,
    /// TLS server name to verify, when the kubeconfig sets one.
    pub server_name: Option<String>,
    /// HTTP proxy, when the kubeconfig sets one.
    pub proxy_url: Option<String>,
}

impl Endpoint {
    /// Work out the endpoint of `cluster` from its settings, falling back to
    /// its kubeconfig for what they leave out.
    pub fn of(cluster: &ClusterSettings) -> Result<Endpoint, RenderError> {
        let fail = |m: String| RenderError::cluster(cluster, m);
        let entry = match &cluster.credentials {
            Credentials::Kubeconfig { path, context } => {
                Some(kubeconfig_entry(path, context.as_deref()).map_err(fail)?)
            }
            _ => None,
        };
        let kube_cluster = entry.as_ref().map(|e| &e.cluster);
        let url = match (
            &cluster.api_server,
            kube_cluster.and_then(|c| c.server.as_ref()),
        ) {
            (Some(url), _) => url.clone(),
            (None, Some(server)) => Url::parse(server)
                .map_err(|e| fail(format!("the kubeconfig's server {server:?}: {e}")))?,
            (None, None) => {
                return Err(fail(
                    "no API server: set api_server, or use a kubeconfig that names one".into(),
                ));
            }
        };
        if url.host_str().is_none() {
            return Err(fail(format!("API server {url} has no host")));
        }
        let kube_insecure = kube_cluster.is_some_and(|c| c.insecure_skip_tls_verify == Some(true));
        let ca = if cluster.insecure_skip_tls_verify || (cluster.ca_file.is_none() && kube_insecure)
        {
            Ca::Insecure
        } else if let Some(file) = &cluster.ca_file {
            Ca::File(file.clone())
        } else if let Some(file) = kube_cluster.and_then(|c| c.certificate_authority.as_ref()) {
            Ca::File(PathBuf::from(file))
        } else if let Some(data) = kube_cluster.and_then(|c| c.certificate_authority_data.as_ref())
        {
            let pem = decode_data("certificate-authority-data", data)
                .map_err(|e| fail(format!("the kubeconfig's {e}")))?;
            if CertificateDer::pem_slice_iter(&pem).next().is_none() {
                return Err(fail(
                    "the kubeconfig's certificate-authority-data holds no PEM certificate".into(),
                ));
            }
            Ca::Embedded {
                pem,
                file: embedded_ca_file(cluster),
            }
        } else {
            Ca::SystemRoots
        };
        Ok(Endpoint {
            url,
            ca,
            server_name: kube_cluster.and_then(|c| c.tls_server_name.clone()),
            proxy_url: kube_cluster.and_then(|c| c.proxy_url.clone()),
        })
    }

    /// `host:port` for `__address__` (the port made explicit).
    pub fn address(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        match self.url.port_or_known_default() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    /// The URL's path prefix without a trailing slash (`""` for none).
    pub fn path_prefix(&self) -> String {
        self.url.path().trim_end_matches('/').to_owned()
    }

    /// The URL as Prometheus's `api_server` (no trailing slash).
    pub fn api_server(&self) -> String {
        self.url.as_str().trim_end_matches('/').to_owned()
    }
}

/// Where `--write-ca` puts a CA embedded in the kubeconfig: beside the
/// token file, `<token dir>/<cluster>.ca.crt`.
pub fn embedded_ca_file(cluster: &ClusterSettings) -> PathBuf {
    cluster
        .token_file
        .with_file_name(format!("{}.ca.crt", cluster.name))
}

/// `scrape_configs` as Prometheus reads it.
#[derive(Debug, Clone, Serialize)]
pub struct PrometheusConfig {
    /// The jobs.
    pub scrape_configs: Vec<ScrapeConfig>,
}

/// One Prometheus scrape job (the subset mcprom writes).
#[derive(Debug, Clone, Serialize)]
pub struct ScrapeConfig {
    /// Unique across the Prometheus config: `<cluster>-cadvisor`, `<cluster>-kubelet`.
    pub job_name: String,
    /// `https`, or the API server's scheme.
    pub scheme: String,
    /// Bearer token read from mcprom's token file on every scrape.
    pub authorization: Authorization,
    /// How the API server is verified.
    pub tls_config: TlsConfig,
    /// The kubeconfig's proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    /// Node discovery (the default form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes_sd_configs: Option<Vec<KubernetesSdConfig>>,
    /// Nodes listed at generation time (`--static`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_configs: Option<Vec<StaticConfig>>,
    /// Address, path and labels.
    pub relabel_configs: Vec<RelabelConfig>,
}

/// `authorization`.
#[derive(Debug, Clone, Serialize)]
pub struct Authorization {
    /// mcprom's token file.
    pub credentials_file: PathBuf,
}

/// `tls_config`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TlsConfig {
    /// CA bundle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Name to verify instead of the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Only when the cluster turned verification off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// `kubernetes_sd_configs` entry: nodes through the cluster's API server,
/// reached either by `api_server` and the job's own credential and TLS
/// settings, or by mcprom's `kubeconfig_file` alone (Prometheus refuses
/// `kubeconfig_file` together with `api_server`, `authorization`,
/// `tls_config` or `proxy_url`).
#[derive(Debug, Clone, Serialize)]
pub struct KubernetesSdConfig {
    /// Always `node`.
    pub role: String,
    /// The API server, prefix included (not with `kubeconfig_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_server: Option<String>,
    /// The kubeconfig mcprom writes (`--discovery kubeconfig`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig_file: Option<PathBuf>,
    /// Same token file (not with `kubeconfig_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// Same verification (not with `kubeconfig_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<TlsConfig>,
    /// The kubeconfig's proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
}

/// `static_configs` entry: one node.
#[derive(Debug, Clone, Serialize)]
pub struct StaticConfig {
    /// The API server's `host:port`.
    pub targets: Vec<String>,
    /// `node: <name>`.
    pub labels: BTreeMap<String, String>,
}

/// `relabel_configs` entry.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelabelConfig {
    /// Labels whose values are joined and matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_labels: Option<Vec<String>>,
    /// Regex the joined value must match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// The label written.
    pub target_label: String,
    /// The value written (`${1}` = first group).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
}

/// Which metrics a job scrapes through the node proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/metrics/cadvisor`: container metrics (the seed's job).
    Cadvisor,
    /// `/metrics`: the kubelet's own metrics.
    Kubelet,
}

impl Kind {
    /// Both kinds, in output order.
    pub const ALL: [Kind; 2] = [Kind::Cadvisor, Kind::Kubelet];

    /// The `job` label, as the kubernetes-mixin dashboards expect it.
    pub fn job(self) -> &'static str {
        match self {
            Kind::Cadvisor => "cadvisor",
            Kind::Kubelet => "kubelet",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Kind::Cadvisor => "/metrics/cadvisor",
            Kind::Kubelet => "/metrics",
        }
    }
}

/// The label that names the node in the static form.
const NODE_LABEL: &str = "node";
/// The label that names the node in the discovery form.
const SD_NODE_LABEL: &str = "__meta_kubernetes_node_name";

/// The scrape job of `kind` for one cluster: discovered nodes when `nodes`
/// is `None`, else exactly those nodes.
pub fn job(
    cluster: &ClusterSettings,
    endpoint: &Endpoint,
    kind: Kind,
    nodes: Option<&[String]>,
) -> ScrapeConfig {
    let authorization = Authorization {
        credentials_file: cluster.token_file.clone(),
    };
    let tls_config = TlsConfig {
        ca_file: match &endpoint.ca {
            Ca::File(file) | Ca::Embedded { file, .. } => Some(file.clone()),
            Ca::SystemRoots | Ca::Insecure => None,
        },
        server_name: endpoint.server_name.clone(),
        insecure_skip_verify: (endpoint.ca == Ca::Insecure).then_some(true),
    };
    let node_label = if nodes.is_some() {
        NODE_LABEL
    } else {
        SD_NODE_LABEL
    };
    let from_node = |target: &str, replacement: String| RelabelConfig {
        source_labels: Some(vec![node_label.to_owned()]),
        regex: Some("(.+)".into()),
        target_label: target.into(),
        replacement: Some(replacement),
    };
    let set = |target: &str, value: String| RelabelConfig {
        target_label: target.into(),
        replacement: Some(value),
        ..RelabelConfig::default()
    };
    let mut relabel_configs = Vec::new();
    if nodes.is_none() {
        // Discovered nodes carry the kubelet's address; scrape through the
        // API server instead.
        relabel_configs.push(set("__address__", endpoint.address()));
    }
    relabel_configs.extend([
        from_node(
            "__metrics_path__",
            format!(
                "{}/api/v1/nodes/${{1}}/proxy{}",
                endpoint.path_prefix(),
                kind.path()
            ),
        ),
        // Every node shares the API server's address: name the instance
        // after the node, or series of different nodes would collide.
        from_node("instance", "${1}".into()),
        from_node("node", "${1}".into()),
        set("cluster", cluster.name.clone()),
        set("job", kind.job().into()),
    ]);
    let (kubernetes_sd_configs, static_configs) = match nodes {
        None => (
            Some(vec![KubernetesSdConfig {
                role: "node".into(),
                api_server: Some(endpoint.api_server()),
                kubeconfig_file: None,
                authorization: Some(authorization.clone()),
                tls_config: Some(tls_config.clone()),
                proxy_url: endpoint.proxy_url.clone(),
            }]),
            None,
        ),
        Some(nodes) => (
            None,
            Some(
                nodes
                    .iter()
                    .map(|node| StaticConfig {
                        targets: vec![endpoint.address()],
                        labels: BTreeMap::from([(NODE_LABEL.to_owned(), node.clone())]),
                    })
                    .collect(),
            ),
        ),
    };
    ScrapeConfig {
        job_name: format!("{}-{}", cluster.name, kind.job()),
        scheme: endpoint.url.scheme().to_owned(),
        authorization,
        tls_config,
        proxy_url: endpoint.proxy_url.clone(),
        kubernetes_sd_configs,
        static_configs,
        relabel_configs,
    }
}

/// One cluster's part of the output: its jobs and what to tell the user.
#[derive(Debug, Clone)]
pub struct ClusterJobs {
    /// The cluster's name.
    pub cluster: String,
    /// Where it is reached.
    pub endpoint: Endpoint,
    /// Its jobs.
    pub jobs: Vec<ScrapeConfig>,
}

impl ClusterJobs {
    /// Notes for the YAML comments and stderr.
    pub fn notes(&self) -> Vec<String> {
        let name = &self.cluster;
        match &self.endpoint.ca {
            Ca::Embedded { file, .. } => vec![format!(
                "cluster {name:?}: its kubeconfig embeds the API server's CA \
                 (certificate-authority-data); the jobs read it from {}: write it there with \
                 `mcprom scrape-config {name} --write-ca` (or set ca_file in the cluster's config)",
                file.display()
            )],
            Ca::Insecure => vec![format!(
                "cluster {name:?}: TLS verification is off (insecure_skip_tls_verify): anyone on \
                 the network path can capture the token; set ca_file instead"
            )],
            Ca::File(_) | Ca::SystemRoots => vec![],
        }
    }
}

/// The jobs for `cluster`: discovered nodes, or `nodes` when given.
pub fn cluster_jobs(
    cluster: &ClusterSettings,
    nodes: Option<&[String]>,
) -> Result<ClusterJobs, RenderError> {
    let endpoint = Endpoint::of(cluster)?;
    let jobs = Kind::ALL
        .iter()
        .map(|kind| job(cluster, &endpoint, *kind, nodes))
        .collect();
    Ok(ClusterJobs {
        cluster: cluster.name.clone(),
        endpoint,
        jobs,
    })
}

impl ClusterJobs {
    /// Discover nodes through the kubeconfig mcprom writes for the cluster
    /// (`--discovery kubeconfig`) instead of `api_server` and the job's own
    /// settings. The scrapes themselves still go through the API server's
    /// node proxy with the token file and CA of the job.
    pub fn discover_with_kubeconfig(
        &mut self,
        cluster: &ClusterSettings,
    ) -> Result<(), RenderError> {
        let Some(kubeconfig) = &cluster.kubeconfig_file else {
            return Err(RenderError::cluster(
                cluster,
                "--discovery kubeconfig needs the kubeconfig mcprom writes for the cluster: set \
                 kubeconfig_file in its [[cluster]] or kubeconfig_dir in [defaults]",
            ));
        };
        for job in &mut self.jobs {
            for sd in job.kubernetes_sd_configs.iter_mut().flatten() {
                *sd = KubernetesSdConfig {
                    role: sd.role.clone(),
                    api_server: None,
                    kubeconfig_file: Some(kubeconfig.clone()),
                    authorization: None,
                    tls_config: None,
                    proxy_url: None,
                };
            }
        }
        Ok(())
    }
}

/// A complete Prometheus configuration holding only the jobs, with a
/// comment header: `promtool check config` accepts it as it is, its
/// `scrape_configs` list can be pasted into `prometheus.yml`, and newer
/// Prometheus can include the file with `scrape_config_files`.
pub fn to_yaml(
    clusters: &[ClusterJobs],
    config: &std::path::Path,
    static_form: bool,
) -> Result<String, serde_yaml_ng::Error> {
    let form = if static_form {
        "static_configs: the nodes found when this was generated (run it again when nodes change)"
    } else {
        "kubernetes_sd_configs: nodes discovered through each API server"
    };
    let mut header = format!(
        "Prometheus scrape jobs generated by `mcprom scrape-config` from {}.\n\
         Nodes: {form}.\n\
         Each job reads mcprom's token file on every scrape: rotation needs no reload.\n\
         Prometheus must be able to read the token files (file_group in mcprom's config).\n\
         Paste the scrape_configs entries into prometheus.yml (or include this file with\n\
         scrape_config_files, Prometheus 2.43 and later).\n",
        config.display()
    );
    for note in clusters.iter().flat_map(ClusterJobs::notes) {
        header.push_str(&format!("\nNOTE {note}\n"));
    }
    let body = serde_yaml_ng::to_string(&PrometheusConfig {
        scrape_configs: clusters.iter().flat_map(|c| c.jobs.clone()).collect(),
    })?;
    Ok(format!("{}{body}", comment(&header)))
}

/// List the cluster's nodes with its managed token (the token file mcprom
/// writes), as Prometheus will: this also proves the token may list nodes.
pub async fn list_nodes(
    cluster: &ClusterSettings,
    timeout: Duration,
) -> Result<Vec<String>, RenderError> {
    let fail = |m: String| RenderError::cluster(cluster, m);
    if let Err(e) = crate::sink::read_token(&cluster.token_file) {
        return Err(fail(format!(
            "--static lists the nodes with the cluster's token, and {} holds none ({e}): start \
             mcprom first (it writes the token), or leave out --static to use node discovery",
            cluster.token_file.display()
        )));
    }
    let config = apiserver::config(cluster, timeout, crate::exec::DEFAULT_EXEC_TIMEOUT)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let managed_token = AuthInfo {
        token_file: Some(cluster.token_file.to_string_lossy().into_owned()),
        ..AuthInfo::default()
    };
    let client = apiserver::client(apiserver::with_credential(config, managed_token))
        .map_err(|e| fail(e.to_string()))?;
    let answer = apiserver::send(
        &client,
        apiserver::get("/api/v1/nodes", "application/json"),
        timeout,
        MAX_NODE_LIST,
    )
    .await
    .map_err(|e| match e {
        Failure::Timeout(_) => fail(format!("listing nodes took longer than {timeout:?}")),
        other => fail(format!("listing nodes failed: {other}")),
    })?;
    if !answer.status.is_success() {
        let hint = match answer.status.as_u16() {
            401 => ": the token in the token file is not accepted (expired? is mcprom running?)",
            403 => ": the ServiceAccount may not list nodes; apply `mcprom rbac` to the cluster",
            _ => "",
        };
        return Err(fail(format!(
            "listing nodes failed: {} {}{hint}",
            answer.status.as_u16(),
            apiserver::status_message(&answer.body, answer.status)
        )));
    }
    if answer.truncated {
        return Err(fail(format!(
            "listing nodes failed: the answer is larger than {} MiB; use node discovery instead \
             (leave out --static)",
            MAX_NODE_LIST >> 20
        )));
    }
    let list: ObjectList<Node> = serde_json::from_slice(&answer.body).map_err(|e| {
        fail(format!(
            "listing nodes failed: the answer is not a node list ({e})"
        ))
    })?;
    let mut names: Vec<String> = list
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(fail("the cluster has no nodes to scrape".into()));
    }
    Ok(names)
}

/// Write the CA that `cluster`'s kubeconfig embeds to the file its jobs
/// read (atomically, mode 0644: a CA is public). `Ok(None)` when the CA is
/// not embedded.
pub fn write_embedded_ca(cluster: &ClusterSettings) -> Result<Option<PathBuf>, RenderError> {
    match Endpoint::of(cluster)?.ca {
        Ca::Embedded { pem, file } => {
            crate::sink::write_atomically(&file, &pem, 0o644, None)
                .map_err(|e| RenderError::cluster(cluster, e.to_string()))?;
            Ok(Some(file))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(api_server: &str) -> ClusterSettings {
        ClusterSettings {
            api_server: Some(api_server.parse().unwrap()),
            ca_file: Some("/etc/mcprom/prod/ca.crt".into()),
            ..ClusterSettings::example()
        }
    }

    fn relabel<'a>(job: &'a ScrapeConfig, target: &str) -> &'a RelabelConfig {
        job.relabel_configs
            .iter()
            .find(|r| r.target_label == target)
            .unwrap_or_else(|| panic!("no relabeling of {target}"))
    }

    #[test]
    fn a_rancher_path_prefix_is_kept_in_the_metrics_path_and_api_server() {
        let c = cluster("https://rancher.example.com/k8s/clusters/c-m-abc12/");
        let jobs = cluster_jobs(&c, None).unwrap();
        let cadvisor = &jobs.jobs[0];
        assert_eq!(cadvisor.job_name, "prod-cadvisor");
        assert_eq!(
            relabel(cadvisor, "__address__").replacement.as_deref(),
            Some("rancher.example.com:443")
        );
        assert_eq!(
            relabel(cadvisor, "__metrics_path__").replacement.as_deref(),
            Some("/k8s/clusters/c-m-abc12/api/v1/nodes/${1}/proxy/metrics/cadvisor")
        );
        let sd = &cadvisor.kubernetes_sd_configs.as_ref().unwrap()[0];
        assert_eq!(
            sd.api_server.as_deref().unwrap(),
            "https://rancher.example.com/k8s/clusters/c-m-abc12"
        );
        assert_eq!(
            relabel(&jobs.jobs[1], "__metrics_path__")
                .replacement
                .as_deref(),
            Some("/k8s/clusters/c-m-abc12/api/v1/nodes/${1}/proxy/metrics")
        );
    }

    #[test]
    fn the_static_form_lists_each_node_at_the_api_servers_address() {
        let c = cluster("https://[fd00::1]:6443");
        let nodes = vec!["node-a".to_string(), "node-b".to_string()];
        let jobs = cluster_jobs(&c, Some(&nodes)).unwrap();
        let job = &jobs.jobs[0];
        assert!(job.kubernetes_sd_configs.is_none());
        let targets = job.static_configs.as_ref().unwrap();
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[1].targets, vec!["[fd00::1]:6443"]);
        assert_eq!(targets[1].labels["node"], "node-b");
        assert!(
            !job.relabel_configs
                .iter()
                .any(|r| r.target_label == "__address__")
        );
        assert_eq!(
            relabel(job, "__metrics_path__").source_labels,
            Some(vec!["node".to_string()])
        );
        assert_eq!(
            job.authorization.credentials_file,
            PathBuf::from("/var/lib/mcprom/tokens/prod.token")
        );
        assert_eq!(
            job.tls_config.ca_file,
            Some(PathBuf::from("/etc/mcprom/prod/ca.crt"))
        );
        assert_eq!(relabel(job, "cluster").replacement.as_deref(), Some("prod"));
        assert_eq!(relabel(job, "job").replacement.as_deref(), Some("cadvisor"));
    }

    #[test]
    fn the_yaml_is_a_prometheus_config_without_insecure_skip_verify() {
        let c = cluster("https://10.0.0.1:6443");
        let jobs = cluster_jobs(&c, None).unwrap();
        let yaml = to_yaml(&[jobs], std::path::Path::new("/etc/mcprom.toml"), false).unwrap();
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
        let list = value["scrape_configs"].as_sequence().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(
            list[0]["kubernetes_sd_configs"][0]["role"].as_str(),
            Some("node")
        );
        assert!(!yaml.contains("insecure_skip_verify"), "{yaml}");
    }

    #[test]
    fn a_ca_embedded_in_the_kubeconfig_is_referenced_by_file_and_written_on_request() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: x\nclusters:\n- name: x\n  cluster:\n    \
                 server: https://10.1.2.3:6443/prefix\n    certificate-authority-data: {}\n\
                 contexts:\n- name: x\n  context:\n    cluster: x\n",
                base64::engine::general_purpose::STANDARD.encode(&ca)
            ),
        )
        .unwrap();
        let mut c = cluster("https://unused");
        c.api_server = None;
        c.ca_file = None;
        c.token_file = dir.path().join("tokens/prod.token");
        c.credentials = Credentials::Kubeconfig {
            path: kubeconfig,
            context: None,
        };
        let jobs = cluster_jobs(&c, None).unwrap();
        let expected = dir.path().join("tokens/prod.ca.crt");
        assert_eq!(jobs.jobs[0].tls_config.ca_file.as_ref(), Some(&expected));
        assert_eq!(jobs.endpoint.path_prefix(), "/prefix");
        assert!(jobs.notes()[0].contains("--write-ca"), "{:?}", jobs.notes());
        assert_eq!(write_embedded_ca(&c).unwrap(), Some(expected.clone()));
        assert_eq!(std::fs::read_to_string(&expected).unwrap(), ca);
    }

    #[test]
    fn insecure_clusters_say_so_in_the_job_and_the_notes() {
        let mut c = cluster("https://10.0.0.1:6443");
        c.insecure_skip_tls_verify = true;
        let jobs = cluster_jobs(&c, None).unwrap();
        assert_eq!(jobs.jobs[0].tls_config.insecure_skip_verify, Some(true));
        assert!(jobs.notes()[0].contains("TLS verification is off"));
    }
}
