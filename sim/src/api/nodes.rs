//! The simulated nodes (`GET /api/v1/nodes`, `/api/v1/nodes/{node}`) and
//! the kubelet behind the node proxy (`/metrics`, `/metrics/cadvisor`,
//! `/healthz`).

use http::StatusCode;
use serde_json::{Value, json};

use super::response::respond;
use super::{Resp, now};

/// The uid of simulated node `name`.
pub(super) fn node_uid(name: &str, all: &[String]) -> String {
    let index = all.iter().position(|n| n == name).unwrap_or(0) + 1;
    format!("00000000-0000-4000-8000-{index:012}")
}

pub(super) fn node_json(name: &str, all: &[String]) -> Value {
    let index = all.iter().position(|n| n == name).unwrap_or(0) + 1;
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": node_uid(name, all),
            "resourceVersion": "1",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
        },
        "spec": {},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": format!("10.0.{}.{}", index / 250, index % 250 + 1)},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://2.1.0", "kubeletVersion": "v1.37.2",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
        },
    })
}

pub(super) fn node_list(nodes: &[String]) -> Value {
    json!({
        "kind": "NodeList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "1"},
        "items": nodes.iter().map(|n| {
            let mut v = node_json(n, nodes);
            if let Some(m) = v.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            v
        }).collect::<Vec<_>>(),
    })
}

/// What the kubelet behind `/api/v1/nodes/<node>/proxy/<rest>` answers.
pub(super) fn kubelet(cluster: &str, node: &str, rest: &[&str]) -> Resp {
    match rest {
        ["metrics", "cadvisor"] => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            cadvisor_text(cluster, node),
        ),
        ["metrics"] => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            "# HELP kubelet_running_pods Number of pods that have a running pod sandbox\n\
             # TYPE kubelet_running_pods gauge\nkubelet_running_pods 3\n",
        ),
        ["healthz"] => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok"),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "404 page not found\n",
        ),
    }
}

fn cadvisor_text(cluster: &str, node: &str) -> String {
    let secs = now();
    format!(
        "# HELP cadvisor_version_info A metric with a constant '1' value labeled by kernel version, OS version, docker version, cadvisor version & cadvisor revision.\n\
         # TYPE cadvisor_version_info gauge\n\
         cadvisor_version_info{{cadvisorRevision=\"\",cadvisorVersion=\"\",dockerVersion=\"\",kernelVersion=\"6.1.0\",osVersion=\"mcprom-sim {cluster}/{node}\"}} 1\n\
         # HELP container_cpu_usage_seconds_total Cumulative cpu time consumed in seconds.\n\
         # TYPE container_cpu_usage_seconds_total counter\n\
         container_cpu_usage_seconds_total{{container=\"\",cpu=\"total\",id=\"/\",image=\"\",name=\"\",namespace=\"\",pod=\"\"}} {cpu:.3}\n\
         # HELP container_memory_working_set_bytes Current working set in bytes.\n\
         # TYPE container_memory_working_set_bytes gauge\n\
         container_memory_working_set_bytes{{container=\"\",id=\"/\",image=\"\",name=\"\",namespace=\"\",pod=\"\"}} 1.073741824e+09\n\
         # HELP machine_cpu_cores Number of logical CPU cores.\n\
         # TYPE machine_cpu_cores gauge\n\
         machine_cpu_cores{{boot_id=\"\",machine_id=\"\",system_uuid=\"\"}} 4\n",
        cpu = (secs % 1_000_000.0) / 10.0,
    )
}
