//! Filter and score plugins, named after their upstream counterparts: NodeUnschedulable,
//! NodeName, NodeAffinity (nodeSelector, required and preferred terms), TaintToleration,
//! NodeResourcesFit, NodePorts and InterPodAffinity; scoring by LeastAllocated resources,
//! preferred node affinity and PreferNoSchedule taints.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::api::selector::LabelSelector;

/// A node as the scheduler sees it: the object plus what is already placed on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The Node.
    pub node: Value,
    /// Pods bound to it (not terminated).
    pub pods: Vec<Value>,
}

/// Resource amounts in base units (cpu in millicores, the rest in bytes or counts).
pub type Resources = BTreeMap<String, i64>;

/// Parses a quantity into an integer amount (cpu → millicores).
pub fn amount(resource: &str, q: &Value) -> i64 {
    let Some(s) = q
        .as_str()
        .map(str::to_string)
        .or_else(|| q.as_i64().map(|n| n.to_string()))
    else {
        return 0;
    };
    let v = crate::api::quantity::parse_quantity(&s).unwrap_or(0.0);
    if resource == "cpu" {
        (v * 1000.0).round() as i64
    } else {
        v.round() as i64
    }
}

/// The effective requests of a pod (max of init containers and sum of app containers,
/// plus overhead), as upstream computes them.
pub fn pod_requests(pod: &Value) -> Resources {
    let mut sum = Resources::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for (r, q) in c["resources"]["requests"].as_object().into_iter().flatten() {
            *sum.entry(r.clone()).or_default() += amount(r, q);
        }
    }
    for c in pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for (r, q) in c["resources"]["requests"].as_object().into_iter().flatten() {
            let e = sum.entry(r.clone()).or_default();
            *e = (*e).max(amount(r, q));
        }
    }
    for (r, q) in pod["spec"]["overhead"].as_object().into_iter().flatten() {
        *sum.entry(r.clone()).or_default() += amount(r, q);
    }
    sum
}

fn allocatable(node: &Value) -> Resources {
    node["status"]["allocatable"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(r, q)| (r.clone(), amount(r, q)))
        .collect()
}

fn requested(info: &NodeInfo) -> Resources {
    let mut total = Resources::new();
    for p in &info.pods {
        for (r, v) in pod_requests(p) {
            *total.entry(r).or_default() += v;
        }
    }
    total
}

fn labels(obj: &Value) -> Option<&serde_json::Map<String, Value>> {
    obj["metadata"]["labels"].as_object()
}

pub(crate) fn node_selector_term_matches(term: &Value, node: &Value) -> bool {
    let node_labels = labels(node);
    let exprs = term["matchExpressions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let fields = term["matchFields"].as_array().cloned().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let ok_expr = |e: &Value, value: Option<&str>| {
        let vals: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match e["operator"].as_str().unwrap_or("") {
            "In" => value.is_some_and(|v| vals.contains(&v)),
            "NotIn" => value.is_none_or(|v| !vals.contains(&v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            "Gt" => value
                .and_then(|v| v.parse::<i64>().ok())
                .zip(vals.first().and_then(|x| x.parse::<i64>().ok()))
                .is_some_and(|(a, b)| a > b),
            "Lt" => value
                .and_then(|v| v.parse::<i64>().ok())
                .zip(vals.first().and_then(|x| x.parse::<i64>().ok()))
                .is_some_and(|(a, b)| a < b),
            _ => false,
        }
    };
    exprs.iter().all(|e| {
        ok_expr(
            e,
            node_labels
                .and_then(|l| l.get(e["key"].as_str().unwrap_or("")))
                .and_then(Value::as_str),
        )
    }) && fields.iter().all(|e| {
        let v = if e["key"] == "metadata.name" {
            node["metadata"]["name"].as_str()
        } else {
            None
        };
        ok_expr(e, v)
    })
}

/// Why a node was rejected, in upstream's wording (aggregated into "0/N nodes are
/// available: ...").
pub type Reason = String;

/// Runs every filter; Err carries the reasons the node does not fit.
pub fn filter(pod: &Value, info: &NodeInfo, all: &[NodeInfo]) -> Result<(), Vec<Reason>> {
    let node = &info.node;
    let spec = &pod["spec"];
    let mut reasons = Vec::new();
    // NodeName
    if let Some(n) = spec["nodeName"].as_str().filter(|n| !n.is_empty()) {
        if node["metadata"]["name"].as_str() != Some(n) {
            return Err(vec!["node(s) didn't match the requested node name".into()]);
        }
    }
    // NodeUnschedulable
    let tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
    let tolerates = |key: &str, value: &str, effect: &str| {
        tolerations.iter().any(|t| {
            let op = t["operator"].as_str().unwrap_or("Equal");
            let key_ok = t["key"]
                .as_str()
                .is_none_or(|k| k.is_empty() && op == "Exists" || k == key);
            let value_ok = op == "Exists" || t["value"].as_str().unwrap_or("") == value;
            let effect_ok = t["effect"]
                .as_str()
                .is_none_or(|e| e.is_empty() || e == effect);
            key_ok && value_ok && effect_ok
        })
    };
    if node["spec"]["unschedulable"] == true
        && !tolerates("node.kubernetes.io/unschedulable", "", "NoSchedule")
    {
        reasons.push("node(s) were unschedulable".into());
    }
    // NodeAffinity: nodeSelector and required terms.
    let node_labels = labels(node);
    let selector_ok = spec["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| node_labels.and_then(|l| l.get(k)) == Some(v));
    let required = &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    let affinity_ok = required
        .as_array()
        .is_none_or(|terms| terms.iter().any(|t| node_selector_term_matches(t, node)));
    if !selector_ok || !affinity_ok {
        reasons.push("node(s) didn't match Pod's node affinity/selector".into());
    }
    // TaintToleration
    for t in node["spec"]["taints"].as_array().into_iter().flatten() {
        let effect = t["effect"].as_str().unwrap_or("");
        if (effect == "NoSchedule" || effect == "NoExecute")
            && !tolerates(
                t["key"].as_str().unwrap_or(""),
                t["value"].as_str().unwrap_or(""),
                effect,
            )
        {
            // Upstream prints `{key: value}`, also with an empty value.
            reasons.push(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t["key"].as_str().unwrap_or(""),
                t["value"].as_str().unwrap_or("")
            ));
            break;
        }
    }
    // NodeResourcesFit
    let alloc = allocatable(node);
    let used = requested(info);
    let want = pod_requests(pod);
    let pods_allowed = alloc.get("pods").copied().unwrap_or(110);
    if info.pods.len() as i64 + 1 > pods_allowed {
        reasons.push("Too many pods".into());
    }
    for (r, v) in &want {
        if *v <= 0 {
            continue;
        }
        let cap = alloc.get(r).copied().unwrap_or(0);
        if used.get(r).copied().unwrap_or(0) + v > cap {
            reasons.push(format!("Insufficient {r}"));
        }
    }
    // NodePorts
    let host_ports = |p: &Value| -> Vec<(i64, String)> {
        p["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|port| {
                port["hostPort"]
                    .as_i64()
                    .filter(|h| *h > 0)
                    .map(|h| (h, port["protocol"].as_str().unwrap_or("TCP").to_string()))
            })
            .collect()
    };
    let wanted = host_ports(pod);
    if !wanted.is_empty()
        && info
            .pods
            .iter()
            .any(|p| host_ports(p).iter().any(|hp| wanted.contains(hp)))
    {
        reasons.push("node(s) didn't have free ports for the requested pod ports".into());
    }
    // InterPodAffinity (required terms).
    if let Err(r) = inter_pod_affinity(pod, info, all) {
        reasons.push(r);
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

fn term_matches_pod(term: &Value, pod_ns: &str, candidate: &Value) -> bool {
    let namespaces: Vec<&str> = term["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let cns = candidate["metadata"]["namespace"].as_str().unwrap_or("");
    let ns_ok = if namespaces.is_empty() && term["namespaceSelector"].is_null() {
        cns == pod_ns
    } else {
        namespaces.contains(&cns)
            || term["namespaceSelector"]
                .as_object()
                .is_some_and(|m| m.is_empty())
    };
    if !ns_ok {
        return false;
    }
    match LabelSelector::from_label_selector_json(&term["labelSelector"]) {
        Ok(sel) => sel.matches(labels(candidate)),
        Err(_) => false,
    }
}

fn topology_value<'a>(node: &'a Value, key: &str) -> Option<&'a str> {
    labels(node)
        .and_then(|l| l.get(key))
        .and_then(Value::as_str)
}

fn inter_pod_affinity(pod: &Value, info: &NodeInfo, all: &[NodeInfo]) -> Result<(), Reason> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let aff = &pod["spec"]["affinity"];
    for term in aff["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = term["topologyKey"].as_str().unwrap_or("");
        let Some(value) = topology_value(&info.node, key) else {
            return Err("node(s) didn't match pod affinity rules".into());
        };
        let found = all
            .iter()
            .filter(|n| topology_value(&n.node, key) == Some(value))
            .any(|n| n.pods.iter().any(|p| term_matches_pod(term, ns, p)));
        // Upstream: the first pod of a self-affine group may go anywhere.
        let self_match = term_matches_pod(term, ns, pod)
            && !all
                .iter()
                .any(|n| n.pods.iter().any(|p| term_matches_pod(term, ns, p)));
        if !found && !self_match {
            return Err("node(s) didn't match pod affinity rules".into());
        }
    }
    for term in aff["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = term["topologyKey"].as_str().unwrap_or("");
        let Some(value) = topology_value(&info.node, key) else {
            continue;
        };
        let clash = all
            .iter()
            .filter(|n| topology_value(&n.node, key) == Some(value))
            .any(|n| n.pods.iter().any(|p| term_matches_pod(term, ns, p)));
        if clash {
            return Err("node(s) didn't match pod anti-affinity rules".into());
        }
    }
    // Existing pods' anti-affinity against this pod.
    for other in all.iter().flat_map(|n| n.pods.iter().map(move |p| (n, p))) {
        let (onode, opod) = other;
        for term in opod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"].as_array().into_iter().flatten() {
            let key = term["topologyKey"].as_str().unwrap_or("");
            let ons = opod["metadata"]["namespace"].as_str().unwrap_or("default");
            if topology_value(&onode.node, key).is_some() && topology_value(&onode.node, key) == topology_value(&info.node, key) && term_matches_pod(term, ons, pod) {
                return Err("node(s) didn't satisfy existing pods anti-affinity rules".into());
            }
        }
    }
    Ok(())
}

/// Scores a feasible node (higher is better, 0..=300).
pub fn score(pod: &Value, info: &NodeInfo) -> i64 {
    let alloc = allocatable(&info.node);
    let mut used = requested(info);
    for (r, v) in pod_requests(pod) {
        *used.entry(r).or_default() += v;
    }
    // LeastAllocated over cpu and memory (0..100).
    let free = |r: &str| {
        let cap = alloc.get(r).copied().unwrap_or(0).max(1);
        ((cap - used.get(r).copied().unwrap_or(0)).max(0) * 100 / cap).clamp(0, 100)
    };
    let mut s = (free("cpu") + free("memory")) / 2;
    // Preferred node affinity (weights sum, normalised to 0..100).
    let mut total = 0;
    let mut got = 0;
    for p in
        pod["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .into_iter()
            .flatten()
    {
        let w = p["weight"].as_i64().unwrap_or(0);
        total += w;
        if node_selector_term_matches(&p["preference"], &info.node) {
            got += w;
        }
    }
    if total > 0 {
        s += got * 100 / total;
    }
    // PreferNoSchedule taints that are not tolerated cost points.
    let tolerations = pod["spec"]["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let intolerable = info.node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["effect"] == "PreferNoSchedule")
        .filter(|t| {
            !tolerations
                .iter()
                .any(|x| x["key"] == t["key"] || x["operator"] == "Exists")
        })
        .count() as i64;
    s += 100 - (intolerable * 50).min(100);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cpu: &str, labels: Value, taints: Value) -> NodeInfo {
        NodeInfo {
            node: json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints},
                         "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"}}}),
            pods: vec![],
        }
    }

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}}, "spec": spec})
    }

    #[test]
    fn resources_fit() {
        let n = node("n1", "1", json!({}), json!([]));
        let p = pod(
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1500m"}}}]}),
        );
        assert_eq!(
            filter(&p, &n, std::slice::from_ref(&n)).unwrap_err(),
            vec!["Insufficient cpu"]
        );
        let small =
            pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}]}));
        assert!(filter(&small, &n, std::slice::from_ref(&n)).is_ok());
        let mut busy = n.clone();
        busy.pods.push(small.clone());
        busy.pods.push(small.clone());
        assert!(filter(&small, &busy, std::slice::from_ref(&busy)).is_err());
    }

    #[test]
    fn selectors_taints_affinity() {
        let n = node(
            "n1",
            "2",
            json!({"disk": "ssd", "kubernetes.io/hostname": "n1"}),
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        );
        let p = pod(json!({"containers": [{"name": "c"}], "nodeSelector": {"disk": "ssd"}}));
        let err = filter(&p, &n, std::slice::from_ref(&n)).unwrap_err();
        assert_eq!(err, vec!["node(s) had untolerated taint {dedicated: gpu}"]);
        let pressured = node(
            "n2",
            "2",
            json!({"disk": "ssd"}),
            json!([{"key": "node.kubernetes.io/memory-pressure", "effect": "NoSchedule"}]),
        );
        let err = filter(&p, &pressured, std::slice::from_ref(&pressured)).unwrap_err();
        assert_eq!(
            err,
            vec!["node(s) had untolerated taint {node.kubernetes.io/memory-pressure: }"]
        );
        let tolerated = pod(
            json!({"containers": [{"name": "c"}], "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
        );
        assert!(filter(&tolerated, &n, std::slice::from_ref(&n)).is_ok());
        let wrong = pod(
            json!({"containers": [{"name": "c"}], "nodeSelector": {"disk": "hdd"}, "tolerations": [{"operator": "Exists"}]}),
        );
        assert_eq!(
            filter(&wrong, &n, std::slice::from_ref(&n)).unwrap_err(),
            vec!["node(s) didn't match Pod's node affinity/selector"]
        );
        let mut occupied = n.clone();
        occupied
            .pods
            .push(pod(json!({"containers": [{"name": "c"}]})));
        let anti = pod(
            json!({"containers": [{"name": "c"}], "tolerations": [{"operator": "Exists"}],
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
        );
        assert_eq!(
            filter(&anti, &occupied, std::slice::from_ref(&occupied)).unwrap_err(),
            vec!["node(s) didn't match pod anti-affinity rules"]
        );
    }

    #[test]
    fn scores_prefer_emptier_nodes() {
        let a = node("a", "4", json!({}), json!([]));
        let mut b = node("b", "4", json!({}), json!([]));
        b.pods.push(pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "3", "memory": "3Gi"}}}]})));
        let p =
            pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}]}));
        assert!(score(&p, &a) > score(&p, &b));
    }
}
