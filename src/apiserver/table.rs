//! Server-side printing: `meta.k8s.io/v1 Table` rows with the columns upstream prints for
//! each kind (what `kubectl get` shows), and `PartialObjectMetadata` conversion.

use serde_json::{Value, json};

use crate::api::ResourceInfo;

/// One column: name, type, priority (1 = only with `-o wide`), description.
type Column = (&'static str, &'static str, u8, &'static str);

const NAME: Column = (
    "Name",
    "string",
    0,
    "Name must be unique within a namespace.",
);
const AGE: Column = (
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

fn columns(ri: &ResourceInfo) -> Vec<Column> {
    let mut cols = vec![NAME];
    let extra: &[Column] = match (ri.group, ri.kind) {
        ("", "Pod") => &[
            (
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            (
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            (
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            (
                "IP",
                "string",
                1,
                "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            ),
            (
                "Node",
                "string",
                1,
                "NodeName is a request to schedule this pod onto a specific node.",
            ),
            (
                "Nominated Node",
                "string",
                1,
                "nominatedNodeName is set only when this pod preempts other pods on the node.",
            ),
            (
                "Readiness Gates",
                "string",
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        ("", "Namespace") => &[("Status", "string", 0, "The status of the namespace"), AGE],
        ("", "Node") => &[
            ("Status", "string", 0, "The status of the node"),
            ("Roles", "string", 0, "The roles of the node"),
            AGE,
            (
                "Version",
                "string",
                0,
                "Kubelet Version reported by the node.",
            ),
            (
                "Internal-IP",
                "string",
                1,
                "List of internal IPs for the node.",
            ),
            (
                "External-IP",
                "string",
                1,
                "List of external IPs for the node.",
            ),
            (
                "OS-Image",
                "string",
                1,
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            ),
            (
                "Kernel-Version",
                "string",
                1,
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ),
            (
                "Container-Runtime",
                "string",
                1,
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            ),
        ],
        ("", "Service") => &[
            (
                "Type",
                "string",
                0,
                "type determines how the Service is exposed.",
            ),
            (
                "Cluster-IP",
                "string",
                0,
                "clusterIP is the IP address of the service and is usually assigned randomly.",
            ),
            (
                "External-IP",
                "string",
                0,
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            (
                "Port(s)",
                "string",
                0,
                "The list of ports that are exposed by this service.",
            ),
            AGE,
            (
                "Selector",
                "string",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        ("", "ConfigMap") => &[
            ("Data", "string", 0, "Data contains the configuration data."),
            AGE,
        ],
        ("", "Secret") => &[
            ("Type", "string", 0, "The type of the secret"),
            ("Data", "string", 0, "The number of entries in the secret"),
            AGE,
        ],
        ("", "ServiceAccount") => &[
            (
                "Secrets",
                "string",
                0,
                "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
            ),
            AGE,
        ],
        ("", "Endpoints") => &[
            (
                "Endpoints",
                "string",
                0,
                "Endpoints is the list of endpoints for this service.",
            ),
            AGE,
        ],
        ("", "Event") => &[
            (
                "Last Seen",
                "string",
                0,
                "The last time this event was observed.",
            ),
            ("Type", "string", 0, "Type of this event."),
            ("Reason", "string", 0, "Reason is why the action was taken."),
            ("Object", "string", 0, "The object this event is about."),
            (
                "Message",
                "string",
                0,
                "A human-readable description of the status of this operation.",
            ),
        ],
        ("", "ReplicationController") | ("apps", "ReplicaSet") => &[
            ("Desired", "integer", 0, "Number of desired pods."),
            ("Current", "integer", 0, "Number of actual replicas."),
            ("Ready", "integer", 0, "The number of ready replicas."),
            AGE,
            (
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ),
            (
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ),
            ("Selector", "string", 1, "Label selector for pods."),
        ],
        ("apps", "Deployment") => &[
            ("Ready", "string", 0, "Number of the pod with ready state"),
            (
                "Up-to-date",
                "string",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            (
                "Available",
                "string",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            AGE,
            (
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ),
            (
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ),
            ("Selector", "string", 1, "Label selector for pods."),
        ],
        ("apps", "StatefulSet") => &[
            ("Ready", "string", 0, "Number of the pod with ready state"),
            AGE,
            (
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ),
            (
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ),
        ],
        ("apps", "DaemonSet") => &[
            (
                "Desired",
                "integer",
                0,
                "The total number of nodes that should be running the daemon pod.",
            ),
            (
                "Current",
                "integer",
                0,
                "The number of nodes running at least one daemon pod.",
            ),
            (
                "Ready",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod and have one or more running and ready.",
            ),
            (
                "Up-to-date",
                "integer",
                0,
                "The total number of nodes that are running updated daemon pod",
            ),
            (
                "Available",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod and have one or more available.",
            ),
            (
                "Node Selector",
                "string",
                0,
                "NodeSelector is a selector which must be true for the pod to fit on a node.",
            ),
            AGE,
            (
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ),
            (
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ),
            (
                "Selector",
                "string",
                1,
                "A label query over pods that are managed by the daemon set.",
            ),
        ],
        ("batch", "Job") => &[
            ("Status", "string", 0, "Status of the job."),
            (
                "Completions",
                "string",
                0,
                "The number of pods which reached phase Succeeded. The value increases monotonically for a given spec. However, it may decrease in reaction to scale down of elastic indexed jobs.",
            ),
            (
                "Duration",
                "string",
                0,
                "Time required to complete the job.",
            ),
            AGE,
            (
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ),
            (
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ),
            ("Selector", "string", 1, "Label selector for pods."),
        ],
        ("batch", "CronJob") => &[
            ("Schedule", "string", 0, "The schedule in Cron format."),
            (
                "Timezone",
                "string",
                0,
                "The time zone name for the given schedule.",
            ),
            (
                "Suspend",
                "boolean",
                0,
                "This flag tells the controller to suspend subsequent executions.",
            ),
            (
                "Active",
                "integer",
                0,
                "A list of pointers to currently running jobs.",
            ),
            (
                "Last Schedule",
                "string",
                0,
                "Information when was the last time the job was successfully scheduled.",
            ),
            AGE,
            (
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ),
            (
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ),
            ("Selector", "string", 1, "Label selector for pods."),
        ],
        ("autoscaling", "HorizontalPodAutoscaler") => &[
            ("Reference", "string", 0, "reference to scaled resource"),
            ("Targets", "string", 0, "current and target metric values"),
            ("MinPods", "string", 0, "lower limit for the number of pods"),
            (
                "MaxPods",
                "integer",
                0,
                "upper limit for the number of pods",
            ),
            ("Replicas", "integer", 0, "current number of replicas"),
            AGE,
        ],
        ("discovery.k8s.io", "EndpointSlice") => &[
            (
                "AddressType",
                "string",
                0,
                "The type of address carried by this EndpointSlice.",
            ),
            (
                "Ports",
                "string",
                0,
                "Ports provided by this EndpointSlice.",
            ),
            (
                "Endpoints",
                "string",
                0,
                "Endpoints included in this EndpointSlice.",
            ),
            AGE,
        ],
        ("networking.k8s.io", "Ingress") => &[
            (
                "Class",
                "string",
                0,
                "The name of the IngressClass resource.",
            ),
            (
                "Hosts",
                "string",
                0,
                "Hosts that incoming requests are matched against.",
            ),
            (
                "Address",
                "string",
                0,
                "Address is a list containing ingress points for the load-balancer",
            ),
            (
                "Ports",
                "string",
                0,
                "Ports of TLS configurations that open",
            ),
            AGE,
        ],
        ("", "PersistentVolumeClaim") => &[
            (
                "Status",
                "string",
                0,
                "phase indicates the current phase of PersistentVolumeClaim.",
            ),
            (
                "Volume",
                "string",
                0,
                "volumeName is the binding reference to the PersistentVolume backing this claim.",
            ),
            (
                "Capacity",
                "string",
                0,
                "capacity represents the actual resources of the underlying volume.",
            ),
            (
                "Access Modes",
                "string",
                0,
                "accessModes contains the desired access modes the volume should have.",
            ),
            (
                "StorageClass",
                "string",
                0,
                "storageClassName is the name of the StorageClass required by the claim.",
            ),
            (
                "VolumeAttributesClass",
                "string",
                0,
                "VolumeAttributesClass of the pvc",
            ),
            AGE,
            (
                "VolumeMode",
                "string",
                1,
                "volumeMode defines what type of volume is required by the claim.",
            ),
        ],
        ("", "PersistentVolume") => &[
            (
                "Capacity",
                "string",
                0,
                "capacity is the description of the persistent volume's resources and capacity.",
            ),
            (
                "Access Modes",
                "string",
                0,
                "accessModes contains all ways the volume can be mounted.",
            ),
            (
                "Reclaim Policy",
                "string",
                0,
                "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim.",
            ),
            (
                "Status",
                "string",
                0,
                "phase indicates if a volume is available, bound to a claim, or released by a claim.",
            ),
            (
                "Claim",
                "string",
                0,
                "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim.",
            ),
            ("StorageClass", "string", 0, "StorageClass of the pv"),
            (
                "VolumeAttributesClass",
                "string",
                0,
                "VolumeAttributesClass of the pv",
            ),
            (
                "Reason",
                "string",
                0,
                "reason is a brief CamelCase string that describes any failure and is meant for machine parsing and tidy display in the CLI.",
            ),
            AGE,
            (
                "VolumeMode",
                "string",
                1,
                "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state.",
            ),
        ],
        ("storage.k8s.io", "StorageClass") => &[
            (
                "Provisioner",
                "string",
                0,
                "provisioner indicates the type of the provisioner.",
            ),
            (
                "ReclaimPolicy",
                "string",
                0,
                "reclaimPolicy controls the reclaimPolicy for dynamically provisioned PersistentVolumes of this storage class.",
            ),
            (
                "VolumeBindingMode",
                "string",
                0,
                "volumeBindingMode indicates how PersistentVolumeClaims should be provisioned and bound.",
            ),
            (
                "AllowVolumeExpansion",
                "string",
                0,
                "allowVolumeExpansion shows whether the storage class allow volume expand.",
            ),
            AGE,
        ],
        ("apps", "ControllerRevision") => &[
            ("Controller", "string", 0, "Controller of the object"),
            (
                "Revision",
                "string",
                0,
                "Revision indicates the revision of the state represented by Data.",
            ),
            AGE,
        ],
        ("policy", "PodDisruptionBudget") => &[
            (
                "Min Available",
                "string",
                0,
                "The minimum number or percentage of available pods this budget requires.",
            ),
            (
                "Max Unavailable",
                "string",
                0,
                "The maximum number or percentage of unavailable pods this budget requires.",
            ),
            (
                "Allowed Disruptions",
                "integer",
                0,
                "Calculated number of pods that may be disrupted at this time.",
            ),
            AGE,
        ],
        ("coordination.k8s.io", "Lease") => {
            &[("Holder", "string", 0, "The holder of the lease"), AGE]
        }
        ("", "ResourceQuota") => &[
            AGE,
            (
                "Request",
                "string",
                0,
                "Request represents a minimum amount of cpu/memory that a container may consume.",
            ),
            (
                "Limit",
                "string",
                0,
                "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.",
            ),
        ],
        _ => &[AGE],
    };
    cols.extend_from_slice(extra);
    cols
}

/// The column definitions for a kind.
pub fn column_definitions(ri: &ResourceInfo) -> Value {
    Value::Array(
        columns(ri)
            .iter()
            .map(|(name, ty, priority, desc)| {
                json!({"name": name, "type": ty, "format": if *name == "Name" { "name" } else { "" },
                       "description": desc, "priority": priority})
            })
            .collect(),
    )
}

/// Converts an object to `PartialObjectMetadata`.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

/// One table row; `include` is the `includeObject` policy (`None`, `Metadata`, `Object`).
pub fn row(ri: &ResourceInfo, obj: &Value, include: &str) -> Value {
    let cells: Vec<Value> = columns(ri).iter().map(|c| cell(ri, obj, c.0)).collect();
    let mut r = json!({"cells": cells});
    match include {
        "None" => {}
        "Object" => r["object"] = obj.clone(),
        _ => r["object"] = partial_metadata(obj),
    }
    r
}

/// A whole Table.
pub fn table(
    ri: &ResourceInfo,
    items: &[Value],
    resource_version: &str,
    continue_token: Option<&str>,
    include: &str,
    with_columns: bool,
) -> Value {
    let rows: Vec<Value> = items.iter().map(|o| row(ri, o, include)).collect();
    let mut meta = json!({"resourceVersion": resource_version});
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    let mut t =
        json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "rows": rows});
    if with_columns {
        t["columnDefinitions"] = column_definitions(ri);
    } else {
        t["columnDefinitions"] = Value::Null;
    }
    t
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn count(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn or_none(x: String) -> String {
    if x.is_empty() { "<none>".into() } else { x }
}

fn join_names(list: &Value, field: &str) -> String {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|c| s(&c[field]).to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn selector_string(sel: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(m) = sel["matchLabels"].as_object() {
        for (k, v) in m {
            parts.push(format!("{k}={}", s(v)));
        }
    } else if let Some(m) = sel.as_object()
        && sel.get("matchExpressions").is_none()
    {
        for (k, v) in m {
            if let Some(v) = v.as_str() {
                parts.push(format!("{k}={v}"));
            }
        }
    }
    if let Some(exprs) = sel["matchExpressions"].as_array() {
        for e in exprs {
            let vals: Vec<&str> = e["values"]
                .as_array()
                .map(|a| a.iter().map(s).collect())
                .unwrap_or_default();
            let p = match s(&e["operator"]) {
                "In" => format!("{} in ({})", s(&e["key"]), vals.join(",")),
                "NotIn" => format!("{} notin ({})", s(&e["key"]), vals.join(",")),
                "Exists" => s(&e["key"]).to_string(),
                "DoesNotExist" => format!("!{}", s(&e["key"])),
                _ => continue,
            };
            parts.push(p);
        }
    }
    parts.join(",")
}

/// Formats a duration the way kubectl's AGE column does (`5m`, `3h2m`, `12d`).
pub fn human_duration(d: i64) -> String {
    let secs = d.max(0);
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn age_of(ts: &Value) -> String {
    match ts.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
        Some(t) => human_duration((jiff::Timestamp::now() - t).get_seconds()),
        None => "<unknown>".into(),
    }
}

fn pod_status(obj: &Value) -> (String, String, String) {
    let st = &obj["status"];
    let total = obj["spec"]["containers"].as_array().map_or(0, Vec::len);
    let statuses = st["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ready = statuses.iter().filter(|c| c["ready"] == true).count();
    let restarts: i64 = statuses.iter().map(|c| count(&c["restartCount"])).sum();
    let mut reason = s(&st["reason"]).to_string();
    if reason.is_empty() {
        reason = s(&st["phase"]).to_string();
    }
    for c in &statuses {
        if let Some(w) = c["state"]["waiting"]["reason"].as_str() {
            reason = w.to_string();
        } else if let Some(t) = c["state"]["terminated"]["reason"].as_str()
            && (reason == "Running" || reason.is_empty())
        {
            reason = t.to_string();
        }
    }
    if !obj["metadata"]["deletionTimestamp"].is_null() {
        reason = "Terminating".into();
    }
    (format!("{ready}/{total}"), reason, restarts.to_string())
}

/// The first three entries, then ` + N more...`; `<unset>` when empty (upstream's
/// EndpointSlice printing).
fn list_with_more(items: Vec<String>) -> String {
    const MAX: usize = 3;
    if items.len() > MAX {
        return format!("{} + {} more...", items[..MAX].join(","), items.len() - MAX);
    }
    if items.is_empty() {
        return "<unset>".into();
    }
    items.join(",")
}

/// `ip:port` of the ready addresses, three at most (upstream's `formatEndpoints`):
/// `<none>` without subsets, empty when none is ready.
fn endpoints_string(obj: &Value) -> String {
    const MAX: usize = 3;
    let subsets = obj["subsets"].as_array().cloned().unwrap_or_default();
    if subsets.is_empty() {
        return "<none>".into();
    }
    let mut list: Vec<String> = Vec::new();
    let mut total = 0;
    for sub in &subsets {
        let addrs = sub["addresses"].as_array().cloned().unwrap_or_default();
        let ports = sub["ports"].as_array().cloned().unwrap_or_default();
        if ports.is_empty() {
            total += addrs.len();
            list.extend(addrs.iter().map(|a| s(&a["ip"]).to_string()));
            continue;
        }
        for p in &ports {
            total += addrs.len();
            for a in &addrs {
                let ip = s(&a["ip"]);
                list.push(match ip.contains(':') {
                    true => format!("[{ip}]:{}", count(&p["port"])),
                    false => format!("{ip}:{}", count(&p["port"])),
                });
            }
        }
    }
    if total > MAX {
        list.truncate(MAX);
        return format!("{} + {} more...", list.join(","), total - MAX);
    }
    list.join(",")
}

fn service_ports(obj: &Value) -> String {
    let ports = obj["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let out: Vec<String> = ports
        .iter()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64().filter(|np| *np != 0) {
                Some(np) => format!("{}:{np}/{proto}", count(&p["port"])),
                None => format!("{}/{proto}", count(&p["port"])),
            }
        })
        .collect();
    or_none(out.join(","))
}

/// Access modes as kubectl abbreviates them, in upstream's fixed order.
fn access_modes(modes: &Value) -> String {
    let has = |m: &str| {
        modes
            .as_array()
            .is_some_and(|a| a.iter().any(|x| s(x) == m))
    };
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(m, _)| has(m))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

fn unset(v: &str) -> String {
    if v.is_empty() {
        "<unset>".to_string()
    } else {
        v.to_string()
    }
}

fn cell(ri: &ResourceInfo, obj: &Value, column: &str) -> Value {
    let spec = &obj["spec"];
    let st = &obj["status"];
    match (ri.kind, column) {
        ("StorageClass", "Name") => {
            let name = s(&obj["metadata"]["name"]);
            let ann = &obj["metadata"]["annotations"];
            let default = [
                "storageclass.kubernetes.io/is-default-class",
                "storageclass.beta.kubernetes.io/is-default-class",
            ]
            .iter()
            .any(|k| s(&ann[*k]) == "true");
            json!(if default {
                format!("{name} (default)")
            } else {
                name.to_string()
            })
        }
        (_, "Name") => json!(s(&obj["metadata"]["name"])),
        (_, "Age") => json!(age_of(&obj["metadata"]["creationTimestamp"])),
        ("Pod", "Ready") => json!(pod_status(obj).0),
        ("Pod", "Status") => json!(pod_status(obj).1),
        ("Pod", "Restarts") => json!(pod_status(obj).2),
        ("Pod", "IP") => json!(or_none(s(&st["podIP"]).to_string())),
        ("Pod", "Node") => json!(or_none(s(&spec["nodeName"]).to_string())),
        ("Pod", "Nominated Node") => json!(or_none(s(&st["nominatedNodeName"]).to_string())),
        ("Pod", "Readiness Gates") => json!("<none>"),
        ("Namespace", "Status") => json!(s(&st["phase"])),
        ("Node", "Status") => {
            let ready = st["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map(|c| s(&c["status"]).to_string());
            let mut status = match ready.as_deref() {
                Some("True") => "Ready".to_string(),
                Some(_) => "NotReady".to_string(),
                None => "Unknown".to_string(),
            };
            if spec["unschedulable"] == true {
                status.push_str(",SchedulingDisabled");
            }
            json!(status)
        }
        ("Node", "Roles") => {
            let roles: Vec<String> = obj["metadata"]["labels"]
                .as_object()
                .map(|l| {
                    l.keys()
                        .filter_map(|k| {
                            k.strip_prefix("node-role.kubernetes.io/")
                                .map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!(or_none(roles.join(",")))
        }
        ("Node", "Version") => json!(s(&st["nodeInfo"]["kubeletVersion"])),
        ("Node", "Internal-IP") | ("Node", "External-IP") => {
            let want = if column == "Internal-IP" {
                "InternalIP"
            } else {
                "ExternalIP"
            };
            let ips: Vec<&str> = st["addresses"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|x| x["type"] == want)
                        .map(|x| s(&x["address"]))
                        .collect()
                })
                .unwrap_or_default();
            json!(or_none(ips.join(",")))
        }
        ("Node", "OS-Image") => json!(s(&st["nodeInfo"]["osImage"])),
        ("Node", "Kernel-Version") => json!(s(&st["nodeInfo"]["kernelVersion"])),
        ("Node", "Container-Runtime") => json!(s(&st["nodeInfo"]["containerRuntimeVersion"])),
        ("Service", "Type") => json!(s(&spec["type"])),
        ("Service", "Cluster-IP") => json!(or_none(s(&spec["clusterIP"]).to_string())),
        ("Service", "External-IP") => {
            let mut ips: Vec<String> = spec["externalIPs"]
                .as_array()
                .map(|a| a.iter().map(|x| s(x).to_string()).collect())
                .unwrap_or_default();
            if let Some(ing) = st["loadBalancer"]["ingress"].as_array() {
                ips.extend(ing.iter().map(|i| {
                    if i["ip"].is_string() {
                        s(&i["ip"]).to_string()
                    } else {
                        s(&i["hostname"]).to_string()
                    }
                }));
            }
            if spec["type"] == "ExternalName" {
                return json!(s(&spec["externalName"]));
            }
            if ips.is_empty() && spec["type"] == "LoadBalancer" {
                return json!("<pending>");
            }
            json!(or_none(ips.join(",")))
        }
        ("Service", "Port(s)") => json!(service_ports(obj)),
        ("Service", "Selector") => json!(or_none(selector_string(&spec["selector"]))),
        ("ConfigMap", "Data") => json!(
            obj["data"].as_object().map_or(0, |m| m.len())
                + obj["binaryData"].as_object().map_or(0, |m| m.len())
        ),
        ("Secret", "Type") => json!(s(&obj["type"])),
        ("Secret", "Data") => json!(obj["data"].as_object().map_or(0, |m| m.len())),
        ("ServiceAccount", "Secrets") => json!(obj["secrets"].as_array().map_or(0, Vec::len)),
        ("Endpoints", "Endpoints") => json!(endpoints_string(obj)),
        ("EndpointSlice", "AddressType") => json!(s(&obj["addressType"])),
        ("EndpointSlice", "Ports") => {
            let ports: Vec<String> = obj["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| match (p["port"].as_i64(), p["name"].as_str()) {
                    (Some(n), _) => n.to_string(),
                    (None, Some(name)) if !name.is_empty() => name.to_string(),
                    _ => "*".to_string(),
                })
                .collect();
            json!(list_with_more(ports))
        }
        ("EndpointSlice", "Endpoints") => {
            let addrs: Vec<String> = obj["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .map(|a| s(&a).to_string())
                .collect();
            json!(list_with_more(addrs))
        }
        ("Event", "Last Seen") => {
            let ts = if obj["lastTimestamp"].is_string() {
                &obj["lastTimestamp"]
            } else if obj["eventTime"].is_string() {
                &obj["eventTime"]
            } else {
                &obj["metadata"]["creationTimestamp"]
            };
            json!(age_of(ts))
        }
        ("Event", "Type") => json!(s(&obj["type"])),
        ("Event", "Reason") => json!(s(&obj["reason"])),
        ("Event", "Object") => json!(format!(
            "{}/{}",
            s(&obj["involvedObject"]["kind"]).to_lowercase(),
            s(&obj["involvedObject"]["name"])
        )),
        ("Event", "Message") => json!(s(&obj["message"])),
        (_, "Desired") if ri.kind != "DaemonSet" => json!(count(&spec["replicas"])),
        (_, "Current") if ri.kind != "DaemonSet" => json!(count(&st["replicas"])),
        ("ReplicaSet" | "ReplicationController", "Ready") => json!(count(&st["readyReplicas"])),
        ("Deployment" | "StatefulSet", "Ready") => json!(format!(
            "{}/{}",
            count(&st["readyReplicas"]),
            count(&spec["replicas"])
        )),
        ("Deployment", "Up-to-date") => json!(count(&st["updatedReplicas"]).to_string()),
        ("Deployment", "Available") => json!(count(&st["availableReplicas"]).to_string()),
        ("CronJob", "Containers") => json!(join_names(
            &spec["jobTemplate"]["spec"]["template"]["spec"]["containers"],
            "name"
        )),
        ("CronJob", "Images") => json!(join_names(
            &spec["jobTemplate"]["spec"]["template"]["spec"]["containers"],
            "image"
        )),
        ("CronJob", "Selector") => json!(or_none(selector_string(
            &spec["jobTemplate"]["spec"]["selector"]
        ))),
        (_, "Containers") => json!(join_names(&spec["template"]["spec"]["containers"], "name")),
        (_, "Images") => json!(join_names(&spec["template"]["spec"]["containers"], "image")),
        (_, "Selector") => json!(or_none(selector_string(&spec["selector"]))),
        ("DaemonSet", "Desired") => json!(count(&st["desiredNumberScheduled"])),
        ("DaemonSet", "Current") => json!(count(&st["currentNumberScheduled"])),
        ("DaemonSet", "Ready") => json!(count(&st["numberReady"])),
        ("DaemonSet", "Up-to-date") => json!(count(&st["updatedNumberScheduled"])),
        ("DaemonSet", "Available") => json!(count(&st["numberAvailable"])),
        ("DaemonSet", "Node Selector") => {
            let ns: Vec<String> = spec["template"]["spec"]["nodeSelector"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect())
                .unwrap_or_default();
            json!(or_none(ns.join(",")))
        }
        ("Job", "Status") => {
            let conds = st["conditions"].as_array().cloned().unwrap_or_default();
            let has = |t: &str| {
                conds
                    .iter()
                    .any(|c| c["type"] == t && c["status"] == "True")
            };
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if !obj["metadata"]["deletionTimestamp"].is_null() {
                "Terminating"
            } else if has("Suspended") {
                "Suspended"
            } else if has("FailureTarget") {
                "FailureTarget"
            } else if has("SuccessCriteriaMet") {
                "SuccessCriteriaMet"
            } else {
                "Running"
            };
            json!(status)
        }
        ("Job", "Completions") => {
            let done = count(&st["succeeded"]);
            let parallelism = spec["parallelism"].as_i64().unwrap_or(0);
            json!(match spec["completions"].as_i64() {
                Some(c) => format!("{done}/{c}"),
                None if parallelism > 1 => format!("{done}/1 of {parallelism}"),
                None => format!("{done}/1"),
            })
        }
        ("Job", "Duration") => {
            let start = st["startTime"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok());
            let end = st["completionTime"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .unwrap_or_else(jiff::Timestamp::now);
            json!(start.map_or(String::new(), |s| human_duration((end - s).get_seconds())))
        }
        ("CronJob", "Schedule") => json!(s(&spec["schedule"])),
        ("CronJob", "Timezone") => json!(or_none(s(&spec["timeZone"]).to_string())),
        ("CronJob", "Suspend") => json!(spec["suspend"].as_bool().unwrap_or(false)),
        ("CronJob", "Active") => json!(st["active"].as_array().map_or(0, Vec::len)),
        ("CronJob", "Last Schedule") => json!(if st["lastScheduleTime"].is_string() {
            age_of(&st["lastScheduleTime"])
        } else {
            "<none>".into()
        }),
        ("HorizontalPodAutoscaler", "Reference") => json!(format!(
            "{}/{}",
            s(&spec["scaleTargetRef"]["kind"]),
            s(&spec["scaleTargetRef"]["name"])
        )),
        ("HorizontalPodAutoscaler", "Targets") => {
            let metrics = spec["metrics"].as_array().cloned().unwrap_or_default();
            // status.currentMetrics[i] reports spec.metrics[i] (as upstream's printer pairs them).
            let statuses = st["currentMetrics"].as_array().cloned().unwrap_or_default();
            let parts: Vec<String> = metrics
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let t = &m["resource"]["target"];
                    let cur = statuses
                        .get(i)
                        .map(|c| &c["resource"]["current"])
                        .filter(|c| c.is_object());
                    let (current, target) = if t["averageUtilization"].is_number() {
                        (
                            cur.and_then(|c| c["averageUtilization"].as_i64())
                                .map_or("<unknown>".to_string(), |u| format!("{u}%")),
                            format!("{}%", count(&t["averageUtilization"])),
                        )
                    } else {
                        (
                            cur.and_then(|c| c["averageValue"].as_str())
                                .map_or("<unknown>".to_string(), str::to_string),
                            s(&t["averageValue"]).to_string(),
                        )
                    };
                    format!("{}: {current}/{target}", s(&m["resource"]["name"]))
                })
                .collect();
            json!(or_none(parts.join(", ")))
        }
        ("HorizontalPodAutoscaler", "MinPods") => {
            json!(spec["minReplicas"].as_i64().unwrap_or(1).to_string())
        }
        ("HorizontalPodAutoscaler", "MaxPods") => json!(count(&spec["maxReplicas"])),
        ("HorizontalPodAutoscaler", "Replicas") => json!(count(&st["currentReplicas"])),
        ("Ingress", "Class") => json!(or_none(s(&spec["ingressClassName"]).to_string())),
        ("Ingress", "Hosts") => {
            let hosts: Vec<String> = spec["rules"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .map(|x| {
                            if x["host"].is_string() {
                                s(&x["host"]).to_string()
                            } else {
                                "*".into()
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!(if hosts.is_empty() {
                "*".to_string()
            } else {
                hosts.join(",")
            })
        }
        ("Ingress", "Address") => {
            let a: Vec<String> = st["loadBalancer"]["ingress"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .map(|i| {
                            if i["ip"].is_string() {
                                s(&i["ip"]).to_string()
                            } else {
                                s(&i["hostname"]).to_string()
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!(a.join(","))
        }
        ("Ingress", "Ports") => json!(if spec["tls"].as_array().is_some_and(|t| !t.is_empty()) {
            "80, 443"
        } else {
            "80"
        }),
        ("PersistentVolumeClaim" | "PersistentVolume", "Status") => {
            if obj["metadata"]["deletionTimestamp"].is_string() {
                json!("Terminating")
            } else {
                json!(s(&st["phase"]))
            }
        }
        ("PersistentVolumeClaim", "Volume") => json!(s(&spec["volumeName"])),
        ("PersistentVolumeClaim", "Capacity") => json!(s(&st["capacity"]["storage"])),
        ("PersistentVolumeClaim", "Access Modes") => json!(access_modes(&st["accessModes"])),
        ("PersistentVolumeClaim", "VolumeAttributesClass") => {
            json!(unset(s(&st["currentVolumeAttributesClassName"])))
        }
        ("PersistentVolumeClaim" | "PersistentVolume", "VolumeMode") => {
            json!(unset(s(&spec["volumeMode"])))
        }
        ("PersistentVolume", "Capacity") => json!(s(&spec["capacity"]["storage"])),
        ("PersistentVolume", "Access Modes") => json!(access_modes(&spec["accessModes"])),
        ("PersistentVolume", "Reclaim Policy") => json!(s(&spec["persistentVolumeReclaimPolicy"])),
        ("PersistentVolume", "Claim") => json!(if spec["claimRef"].is_object() {
            format!(
                "{}/{}",
                s(&spec["claimRef"]["namespace"]),
                s(&spec["claimRef"]["name"])
            )
        } else {
            String::new()
        }),
        ("PersistentVolume", "StorageClass") => json!(s(&spec["storageClassName"])),
        ("PersistentVolume", "VolumeAttributesClass") => {
            json!(unset(s(&spec["volumeAttributesClassName"])))
        }
        ("PersistentVolume", "Reason") => json!(s(&st["reason"])),
        ("StorageClass", "Provisioner") => json!(s(&obj["provisioner"])),
        ("StorageClass", "ReclaimPolicy") => json!(match s(&obj["reclaimPolicy"]) {
            "" => "Delete",
            p => p,
        }),
        ("StorageClass", "VolumeBindingMode") => json!(match s(&obj["volumeBindingMode"]) {
            "" => "Immediate",
            m => m,
        }),
        ("StorageClass", "AllowVolumeExpansion") => {
            json!(
                obj["allowVolumeExpansion"]
                    .as_bool()
                    .unwrap_or(false)
                    .to_string()
            )
        }
        ("ControllerRevision", "Controller") => {
            let owner = obj["metadata"]["ownerReferences"]
                .as_array()
                .and_then(|refs| refs.iter().find(|r| r["controller"] == true));
            json!(match owner {
                Some(r) => {
                    let group = s(&r["apiVersion"]).rsplit_once('/').map_or("", |(g, _)| g);
                    let kind = s(&r["kind"]).to_lowercase();
                    let kind = if group.is_empty() {
                        kind
                    } else {
                        format!("{kind}.{group}")
                    };
                    format!("{kind}/{}", s(&r["name"]))
                }
                None => "<none>".to_string(),
            })
        }
        ("ControllerRevision", "Revision") => json!(obj["revision"].as_i64().unwrap_or(0)),
        ("PersistentVolumeClaim", "StorageClass") => {
            json!(or_none(s(&spec["storageClassName"]).to_string()))
        }
        ("Lease", "Holder") => json!(s(&spec["holderIdentity"])),
        ("ResourceQuota", "Request" | "Limit") => json!(quota_column(obj, column == "Limit")),
        ("PodDisruptionBudget", "Min Available" | "Max Unavailable") => {
            let v = &spec[if column == "Min Available" {
                "minAvailable"
            } else {
                "maxUnavailable"
            }];
            json!(match v {
                Value::Number(n) => n.to_string(),
                Value::String(p) => p.clone(),
                _ => "N/A".to_string(),
            })
        }
        ("PodDisruptionBudget", "Allowed Disruptions") => json!(count(&st["disruptionsAllowed"])),
        _ => json!(""),
    }
}

/// `resource: used/hard, ...` over `status.hard` (sorted), `limits.*` resources in the
/// Limit column and the rest in Request, as upstream prints quotas.
fn quota_column(obj: &Value, limits: bool) -> String {
    let st = &obj["status"];
    let mut names: Vec<&String> = st["hard"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .filter(|n| {
            n.split_once('.')
                .is_some_and(|(first, _)| first == "limits")
                == limits
        })
        .map(|n| {
            let used = st["used"][n.as_str()].as_str().unwrap_or("0");
            format!("{n}: {used}/{}", s(&st["hard"][n.as_str()]))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::lookup;

    #[test]
    fn durations_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 120), "3h2m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400), "3d");
    }

    #[test]
    fn pod_and_deployment_rows() {
        let pods = lookup("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.42.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let r = row(pods, &pod, "Metadata");
        assert_eq!(r["cells"][0], "p");
        assert_eq!(r["cells"][1], "1/2");
        assert_eq!(r["cells"][2], "CrashLoopBackOff");
        assert_eq!(r["cells"][3], "3");
        assert_eq!(r["cells"][5], "10.42.0.5");
        assert_eq!(r["object"]["kind"], "PartialObjectMetadata");
        let deps = lookup("apps", "v1", "deployments").unwrap();
        let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let r = row(deps, &d, "None");
        assert_eq!(r["cells"][1], "2/3");
        assert_eq!(r["cells"][6], "nginx");
        assert_eq!(r["cells"][7], "app=web");
        assert!(r.get("object").is_none());
    }

    #[test]
    fn service_and_endpoint_rows() {
        let svcs = lookup("", "v1", "services").unwrap();
        let lb = json!({"metadata": {"name": "web"}, "spec": {"type": "LoadBalancer", "clusterIP": "10.43.9.9",
            "ports": [{"port": 80, "nodePort": 31234, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.2"}]}}});
        let r = row(svcs, &lb, "None");
        assert_eq!(r["cells"][1], "LoadBalancer");
        assert_eq!(r["cells"][2], "10.43.9.9");
        assert_eq!(r["cells"][3], "10.0.0.2");
        assert_eq!(r["cells"][4], "80:31234/TCP,53/UDP");

        let eps = lookup("", "v1", "endpoints").unwrap();
        let many = json!({"metadata": {"name": "web"}, "subsets": [{"addresses": [{"ip": "10.42.0.1"}, {"ip": "10.42.0.2"}],
            "notReadyAddresses": [{"ip": "10.42.0.9"}], "ports": [{"port": 80}, {"port": 443}]}]});
        assert_eq!(
            row(eps, &many, "None")["cells"][1],
            "10.42.0.1:80,10.42.0.2:80,10.42.0.1:443 + 1 more..."
        );
        assert_eq!(
            row(eps, &json!({"metadata": {"name": "x"}}), "None")["cells"][1],
            "<none>"
        );

        let slices = lookup("discovery.k8s.io", "v1", "endpointslices").unwrap();
        let s = json!({"metadata": {"name": "web-abcde"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.42.0.1"]}, {"addresses": ["10.42.0.2"]}]});
        let r = row(slices, &s, "None");
        assert_eq!(r["cells"][1], "IPv4");
        assert_eq!(r["cells"][2], "8080");
        assert_eq!(r["cells"][3], "10.42.0.1,10.42.0.2");
        let empty = json!({"metadata": {"name": "web-x"}, "addressType": "IPv4", "endpoints": []});
        assert_eq!(row(slices, &empty, "None")["cells"][3], "<unset>");
    }

    #[test]
    fn quota_rows() {
        let rq = lookup("", "v1", "resourcequotas").unwrap();
        let q = json!({"metadata": {"name": "q"}, "status": {
            "hard": {"pods": "2", "requests.cpu": "1", "limits.cpu": "2", "limits.memory": "1Gi"},
            "used": {"pods": "1", "requests.cpu": "500m", "limits.cpu": "1"}}});
        let r = row(rq, &q, "None");
        assert_eq!(r["cells"][2], "pods: 1/2, requests.cpu: 500m/1");
        assert_eq!(r["cells"][3], "limits.cpu: 1/2, limits.memory: 0/1Gi");
    }

    #[test]
    fn hpa_targets() {
        let hpa =
            crate::api::resources::lookup("autoscaling", "v2", "horizontalpodautoscalers").unwrap();
        let mut obj = json!({"metadata": {"name": "web"}, "spec": {
            "scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5,
            "metrics": [
                {"type": "Resource", "resource": {"name": "cpu",
                 "target": {"type": "Utilization", "averageUtilization": 50}}},
                {"type": "Resource", "resource": {"name": "memory",
                 "target": {"type": "AverageValue", "averageValue": "100Mi"}}}]},
            "status": {"currentReplicas": 2}});
        assert_eq!(
            row(hpa, &obj, "None")["cells"][2],
            "cpu: <unknown>/50%, memory: <unknown>/100Mi"
        );
        obj["status"]["currentMetrics"] = json!([
            {"type": "Resource", "resource": {"name": "cpu",
             "current": {"averageUtilization": 12, "averageValue": "6m"}}},
            {"type": "Resource", "resource": {"name": "memory",
             "current": {"averageValue": "52428800"}}}]);
        let r = row(hpa, &obj, "None");
        assert_eq!(r["cells"][1], "Deployment/web");
        assert_eq!(r["cells"][2], "cpu: 12%/50%, memory: 52428800/100Mi");
        assert_eq!(r["cells"][5], 2);
    }
}
