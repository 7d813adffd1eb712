//! The remaining groups: autoscaling (HPA), networking (Ingress, IngressClass,
//! NetworkPolicy), coordination (Lease), discovery (EndpointSlice), RBAC, policy (PDB),
//! storage (StorageClass), scheduling (PriorityClass) and apiextensions (CRD).

use serde_json::{Value, json};

use super::util::{
    absent, arr, child, default_ptr, default_str, existing, get, i, items_mut, s, s_at, sem_eq,
};
use crate::api::status::Cause;
use crate::api::validation::{
    forbidden, go_quote, invalid, invalid_raw, invalid_str, is_dns1035_label, is_dns1123_label,
    is_dns1123_subdomain, is_path_segment_name, is_valid_ip, is_valid_port_name, is_valid_port_num,
    is_wildcard_dns1123_subdomain, not_supported, required, validate_label_selector,
    validate_nonnegative,
};

// ---------------------------------------------------------------------------------------
// autoscaling/v2 HorizontalPodAutoscaler.

/// `SetDefaults_HorizontalPodAutoscaler` (v2): minReplicas 1, the default CPU metric,
/// and behavior defaults when a behavior is given.
pub fn default_hpa(obj: &mut Value) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    default_ptr(spec, "minReplicas", json!(1));
    if arr(spec, "metrics").is_empty() {
        spec["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 80}}}]);
    }
    if let Some(behavior) = existing(spec, &["behavior"]) {
        if let Some(up) = child(behavior, "scaleUp") {
            default_ptr(up, "stabilizationWindowSeconds", json!(0));
            default_ptr(up, "selectPolicy", json!("Max"));
            default_ptr(
                up,
                "policies",
                json!([{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]),
            );
        }
        if let Some(down) = child(behavior, "scaleDown") {
            default_ptr(down, "selectPolicy", json!("Max"));
            default_ptr(
                down,
                "policies",
                json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]),
            );
        }
    }
}

/// `ValidateHorizontalPodAutoscalerSpec` (v2).
pub fn validate_hpa(obj: &Value) -> Vec<Cause> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut causes = Vec::new();
    let min = i(spec, "minReplicas");
    let max = i(spec, "maxReplicas").unwrap_or(0);
    if let Some(min) = min
        && min < 1
    {
        causes.push(invalid(
            "spec.minReplicas",
            &json!(min),
            "must be greater than or equal to 1",
        ));
    }
    if max < 1 {
        causes.push(invalid(
            "spec.maxReplicas",
            &json!(max),
            "must be greater than 0",
        ));
    }
    if let Some(min) = min
        && max < min
    {
        causes.push(invalid(
            "spec.maxReplicas",
            &json!(max),
            "must be greater than or equal to `minReplicas`",
        ));
    }
    let target = spec.get("scaleTargetRef").unwrap_or(&Value::Null);
    for key in ["kind", "name"] {
        let v = s(target, key);
        if v.is_empty() {
            causes.push(required(format!("spec.scaleTargetRef.{key}"), ""));
        } else {
            for msg in is_path_segment_name(v) {
                causes.push(invalid_str(format!("spec.scaleTargetRef.{key}"), v, &msg));
            }
        }
    }
    const METRIC_TYPES: &[&str] = &[
        "ContainerResource",
        "External",
        "Object",
        "Pods",
        "Resource",
    ];
    for (idx, m) in arr(spec, "metrics").iter().enumerate() {
        let t = s(m, "type");
        if t.is_empty() {
            causes.push(required(
                format!("spec.metrics[{idx}].type"),
                "must specify a metric source type",
            ));
        } else if !METRIC_TYPES.contains(&t) {
            causes.push(not_supported(
                format!("spec.metrics[{idx}].type"),
                t,
                METRIC_TYPES,
            ));
        }
    }
    causes
}

// ---------------------------------------------------------------------------------------
// networking.k8s.io/v1.

/// `SetDefaults_NetworkPolicy` (policyTypes) and port protocols.
pub fn default_networkpolicy(obj: &mut Value) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    if arr(spec, "policyTypes").is_empty() {
        let mut types = vec![json!("Ingress")];
        if !arr(spec, "egress").is_empty() {
            types.push(json!("Egress"));
        }
        spec["policyTypes"] = Value::Array(types);
    }
    for dir in ["ingress", "egress"] {
        for rule in items_mut(spec, dir) {
            for p in items_mut(rule, "ports") {
                default_ptr(p, "protocol", json!("TCP"));
            }
        }
    }
}

/// `ValidateNetworkPolicySpec` (selectors, policy types, ports).
pub fn validate_networkpolicy(obj: &Value) -> Vec<Cause> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut causes = validate_label_selector(spec.get("podSelector"), "spec.podSelector");
    for (idx, t) in arr(spec, "policyTypes").iter().enumerate() {
        let t = t.as_str().unwrap_or("");
        if t != "Ingress" && t != "Egress" {
            causes.push(not_supported(
                format!("spec.policyTypes[{idx}]"),
                t,
                &["Ingress", "Egress"],
            ));
        }
    }
    for (dir, peers) in [("ingress", "from"), ("egress", "to")] {
        for (ri, rule) in arr(spec, dir).iter().enumerate() {
            for (pi, p) in arr(rule, "ports").iter().enumerate() {
                let path = format!("spec.{dir}[{ri}].ports[{pi}]");
                let proto = s(p, "protocol");
                if !proto.is_empty() && !["SCTP", "TCP", "UDP"].contains(&proto) {
                    causes.push(not_supported(
                        format!("{path}.protocol"),
                        proto,
                        &["SCTP", "TCP", "UDP"],
                    ));
                }
                match p.get("port") {
                    Some(Value::Number(n)) => {
                        for msg in is_valid_port_num(n.as_i64().unwrap_or(0)) {
                            causes.push(invalid(
                                format!("{path}.port"),
                                &Value::Number(n.clone()),
                                &msg,
                            ));
                        }
                    }
                    Some(Value::String(name)) => {
                        for msg in is_valid_port_name(name) {
                            causes.push(invalid_str(format!("{path}.port"), name, &msg));
                        }
                    }
                    _ => {}
                }
            }
            for (pi, peer) in arr(rule, peers).iter().enumerate() {
                let path = format!("spec.{dir}[{ri}].{peers}[{pi}]");
                causes.extend(validate_label_selector(
                    peer.get("podSelector"),
                    &format!("{path}.podSelector"),
                ));
                causes.extend(validate_label_selector(
                    peer.get("namespaceSelector"),
                    &format!("{path}.namespaceSelector"),
                ));
                let set = ["podSelector", "namespaceSelector", "ipBlock"]
                    .iter()
                    .filter(|k| !absent(peer, k))
                    .count();
                if set == 0 {
                    causes.push(required(path.clone(), "must specify a peer"));
                }
                if !absent(peer, "ipBlock") && set > 1 {
                    causes.push(forbidden(path, "may not specify more than 1 peer type"));
                }
            }
        }
    }
    causes
}

fn validate_ingress_backend(backend: &Value, path: &str, causes: &mut Vec<Cause>) {
    let has_resource = !absent(backend, "resource");
    let has_service = !absent(backend, "service");
    match (has_resource, has_service) {
        (true, true) => causes.push(invalid_str(
            path,
            "",
            "cannot set both resource and service backends",
        )),
        (true, false) => {
            let r = backend.get("resource").unwrap_or(&Value::Null);
            for key in ["kind", "name"] {
                if s(r, key).is_empty() {
                    causes.push(required(format!("{path}.resource.{key}"), ""));
                }
            }
        }
        (false, true) => {
            let svc = backend.get("service").unwrap_or(&Value::Null);
            let name = s(svc, "name");
            if name.is_empty() {
                causes.push(required(format!("{path}.service.name"), ""));
            } else {
                for msg in is_dns1035_label(name) {
                    causes.push(invalid_str(format!("{path}.service.name"), name, &msg));
                }
            }
            let port = svc.get("port").unwrap_or(&Value::Null);
            let port_name = s(port, "name");
            let number = i(port, "number").unwrap_or(0);
            match (port_name.is_empty(), number == 0) {
                (false, false) => causes.push(invalid_str(
                    path,
                    "",
                    "cannot set both port name & port number",
                )),
                (false, true) => {
                    for msg in is_valid_port_name(port_name) {
                        causes.push(invalid_str(
                            format!("{path}.service.port.name"),
                            port_name,
                            &msg,
                        ));
                    }
                }
                (true, false) => {
                    for msg in is_valid_port_num(number) {
                        causes.push(invalid(
                            format!("{path}.service.port.number"),
                            &json!(number),
                            &msg,
                        ));
                    }
                }
                (true, true) => causes.push(required(path, "port name or number is required")),
            }
        }
        (false, false) => causes.push(invalid_str(
            path,
            "",
            "resource or service backend is required",
        )),
    }
}

/// `ValidateIngressSpec`.
pub fn validate_ingress(obj: &Value) -> Vec<Cause> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut causes = Vec::new();
    let rules = arr(spec, "rules");
    let default_backend = spec.get("defaultBackend").filter(|v| !v.is_null());
    if rules.is_empty() && default_backend.is_none() {
        causes.push(invalid_raw(
            "spec",
            "[]networking.IngressRule(nil)",
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    if let Some(b) = default_backend {
        validate_ingress_backend(b, "spec.defaultBackend", &mut causes);
    }
    for (ri, rule) in rules.iter().enumerate() {
        let host = s(rule, "host");
        if !host.is_empty() {
            let hp = format!("spec.rules[{ri}].host");
            if is_valid_ip(host).is_empty() {
                causes.push(invalid_str(
                    &hp,
                    host,
                    "must be a DNS name, not an IP address",
                ));
            }
            let errs = if host.contains('*') {
                is_wildcard_dns1123_subdomain(host)
            } else {
                is_dns1123_subdomain(host)
            };
            for msg in errs {
                causes.push(invalid_str(&hp, host, &msg));
            }
        }
        let Some(http) = rule.get("http").filter(|v| !v.is_null()) else {
            continue;
        };
        let paths = arr(http, "paths");
        if paths.is_empty() {
            causes.push(required(format!("spec.rules[{ri}].http.paths"), ""));
        }
        for (pi, p) in paths.iter().enumerate() {
            let pp = format!("spec.rules[{ri}].http.paths[{pi}]");
            let pt = s(p, "pathType");
            const PATH_TYPES: &[&str] = &["Exact", "ImplementationSpecific", "Prefix"];
            if pt.is_empty() {
                causes.push(required(
                    format!("{pp}.pathType"),
                    "pathType must be specified",
                ));
                continue;
            }
            if !PATH_TYPES.contains(&pt) {
                causes.push(not_supported(format!("{pp}.pathType"), pt, PATH_TYPES));
            }
            let path = s(p, "path");
            if (pt == "Exact" || pt == "Prefix") && !path.starts_with('/') {
                causes.push(invalid_str(
                    format!("{pp}.path"),
                    path,
                    "must be an absolute path",
                ));
            }
            validate_ingress_backend(
                p.get("backend").unwrap_or(&Value::Null),
                &format!("{pp}.backend"),
                &mut causes,
            );
        }
    }
    causes
}

/// IngressClass: `spec.controller` is required.
pub fn validate_ingressclass(obj: &Value) -> Vec<Cause> {
    let controller = s_at(obj, &["spec", "controller"]);
    if controller.is_empty() {
        return vec![required("spec.controller", "")];
    }
    if controller.len() > 250 {
        return vec![crate::api::validation::too_long("spec.controller", 250)];
    }
    Vec::new()
}

/// IngressClass: `spec.controller` is immutable.
pub fn validate_ingressclass_update(new: &Value, old: &Value) -> Vec<Cause> {
    let (n, o) = (
        s_at(new, &["spec", "controller"]),
        s_at(old, &["spec", "controller"]),
    );
    if n != o {
        return vec![invalid_str("spec.controller", n, "field is immutable")];
    }
    Vec::new()
}

// ---------------------------------------------------------------------------------------
// coordination, discovery, policy.

/// `ValidateLeaseSpec`.
pub fn validate_lease(obj: &Value) -> Vec<Cause> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut causes = Vec::new();
    if let Some(d) = i(spec, "leaseDurationSeconds")
        && d <= 0
    {
        causes.push(invalid(
            "spec.leaseDurationSeconds",
            &json!(d),
            "must be greater than 0",
        ));
    }
    causes.extend(validate_nonnegative(
        spec.get("leaseTransitions"),
        "spec.leaseTransitions",
    ));
    causes
}

/// `SetDefaults_EndpointPort` (discovery/v1): name `""` and protocol TCP.
pub fn default_endpointslice(obj: &mut Value) {
    for p in items_mut(obj, "ports") {
        default_ptr(p, "name", json!(""));
        default_ptr(p, "protocol", json!("TCP"));
    }
}

/// `ValidateEndpointSlice` (address type, addresses, ports).
pub fn validate_endpointslice(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    const TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];
    let at = s(obj, "addressType");
    if at.is_empty() {
        causes.push(required("addressType", ""));
    } else if !TYPES.contains(&at) {
        causes.push(not_supported("addressType", at, TYPES));
    }
    for (ei, e) in arr(obj, "endpoints").iter().enumerate() {
        let addrs = arr(e, "addresses");
        if addrs.is_empty() || addrs.len() > 100 {
            causes.push(required(
                format!("endpoints[{ei}].addresses"),
                "must contain at least 1 address but no more than 100",
            ));
        }
        for (ai, a) in addrs.iter().enumerate() {
            let a = a.as_str().unwrap_or("");
            let errs = match at {
                "IPv4" if !a.contains('.') || a.contains(':') => {
                    vec!["must be an IPv4 address".to_string()]
                }
                "IPv6" if !a.contains(':') => vec!["must be an IPv6 address".to_string()],
                "IPv4" | "IPv6" => is_valid_ip(a),
                _ => is_dns1123_subdomain(a),
            };
            for msg in errs {
                causes.push(invalid_str(
                    format!("endpoints[{ei}].addresses[{ai}]"),
                    a,
                    &msg,
                ));
            }
        }
    }
    for (pi, p) in arr(obj, "ports").iter().enumerate() {
        let name = s(p, "name");
        if !name.is_empty() {
            for msg in is_dns1123_label(name) {
                causes.push(invalid_str(format!("ports[{pi}].name"), name, &msg));
            }
        }
        if let Some(port) = i(p, "port") {
            for msg in is_valid_port_num(port) {
                causes.push(invalid(format!("ports[{pi}].port"), &json!(port), &msg));
            }
        }
    }
    causes
}

/// EndpointSlice `addressType` is immutable.
pub fn validate_endpointslice_update(new: &Value, old: &Value) -> Vec<Cause> {
    if s(new, "addressType") != s(old, "addressType") {
        return vec![invalid_str(
            "addressType",
            s(new, "addressType"),
            "field is immutable",
        )];
    }
    Vec::new()
}

/// `ValidatePodDisruptionBudgetSpec`.
pub fn validate_pdb(obj: &Value) -> Vec<Cause> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut causes = Vec::new();
    if !absent(spec, "minAvailable") && !absent(spec, "maxUnavailable") {
        causes.push(invalid(
            "spec.minAvailable",
            spec.get("minAvailable").unwrap_or(&Value::Null),
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    for key in ["minAvailable", "maxUnavailable"] {
        match spec.get(key) {
            Some(Value::String(p)) => {
                for msg in crate::api::validation::is_valid_percent(p) {
                    causes.push(invalid_str(format!("spec.{key}"), p, &msg));
                }
            }
            Some(n @ Value::Number(_)) => {
                causes.extend(validate_nonnegative(Some(n), &format!("spec.{key}")))
            }
            _ => {}
        }
    }
    causes.extend(validate_label_selector(
        spec.get("selector"),
        "spec.selector",
    ));
    let policy = s(spec, "unhealthyPodEvictionPolicy");
    if !policy.is_empty() && policy != "IfHealthyBudget" && policy != "AlwaysAllow" {
        causes.push(not_supported(
            "spec.unhealthyPodEvictionPolicy",
            policy,
            &["AlwaysAllow", "IfHealthyBudget"],
        ));
    }
    causes
}

// ---------------------------------------------------------------------------------------
// RBAC.

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// `SetDefaults_Subject`: users and groups are in the RBAC group.
pub fn default_rbac_subjects(obj: &mut Value) {
    for subj in items_mut(obj, "subjects") {
        if matches!(s(subj, "kind"), "User" | "Group") {
            default_str(subj, "apiGroup", RBAC_GROUP);
        }
    }
}

/// `ValidateRole` / `ValidateClusterRole`: every rule needs verbs, and resources or
/// non-resource URLs.
pub fn validate_role(obj: &Value, namespaced: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (idx, rule) in arr(obj, "rules").iter().enumerate() {
        let p = format!("rules[{idx}]");
        if arr(rule, "verbs").is_empty() {
            causes.push(required(
                format!("{p}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = arr(rule, "nonResourceURLs");
        if !urls.is_empty() {
            if namespaced {
                causes.push(invalid(
                    format!("{p}.nonResourceURLs"),
                    &Value::Array(urls.to_vec()),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !arr(rule, "apiGroups").is_empty()
                || !arr(rule, "resources").is_empty()
                || !arr(rule, "resourceNames").is_empty()
            {
                causes.push(invalid(
                    format!("{p}.nonResourceURLs"),
                    &Value::Array(urls.to_vec()),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if arr(rule, "apiGroups").is_empty() {
            causes.push(required(
                format!("{p}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if arr(rule, "resources").is_empty() {
            causes.push(required(
                format!("{p}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
    causes
}

/// `ValidateRoleBinding` / `ValidateClusterRoleBinding`.
pub fn validate_binding(obj: &Value, namespaced: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    let role_ref = obj.get("roleRef").unwrap_or(&Value::Null);
    let group = s(role_ref, "apiGroup");
    if group != RBAC_GROUP {
        causes.push(not_supported("roleRef.apiGroup", group, &[RBAC_GROUP]));
    }
    let kind = s(role_ref, "kind");
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&kind) {
        causes.push(not_supported("roleRef.kind", kind, kinds));
    }
    let name = s(role_ref, "name");
    if name.is_empty() {
        causes.push(required("roleRef.name", ""));
    } else {
        for msg in is_path_segment_name(name) {
            causes.push(invalid_str("roleRef.name", name, &msg));
        }
    }
    for (idx, subj) in arr(obj, "subjects").iter().enumerate() {
        let p = format!("subjects[{idx}]");
        let sname = s(subj, "name");
        if sname.is_empty() {
            causes.push(required(format!("{p}.name"), ""));
        }
        let group = s(subj, "apiGroup");
        match s(subj, "kind") {
            "ServiceAccount" => {
                if !sname.is_empty() {
                    for msg in is_dns1123_subdomain(sname) {
                        causes.push(invalid_str(format!("{p}.name"), sname, &msg));
                    }
                }
                if !group.is_empty() {
                    causes.push(not_supported(format!("{p}.apiGroup"), group, &[""]));
                }
                if !namespaced && s(subj, "namespace").is_empty() {
                    causes.push(required(format!("{p}.namespace"), ""));
                }
            }
            "User" | "Group" => {
                if group != RBAC_GROUP {
                    causes.push(not_supported(format!("{p}.apiGroup"), group, &[RBAC_GROUP]));
                }
            }
            other => causes.push(not_supported(
                format!("{p}.kind"),
                other,
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
    causes
}

/// A binding's `roleRef` cannot change.
pub fn validate_binding_update(new: &Value, old: &Value) -> Vec<Cause> {
    let (n, o) = (new.get("roleRef"), old.get("roleRef"));
    if sem_eq(n, o) {
        return Vec::new();
    }
    let r = n.unwrap_or(&Value::Null);
    let rendered = format!(
        "rbac.RoleRef{{APIGroup:{}, Kind:{}, Name:{}}}",
        go_quote(s(r, "apiGroup")),
        go_quote(s(r, "kind")),
        go_quote(s(r, "name"))
    );
    vec![invalid_raw("roleRef", &rendered, "cannot change roleRef")]
}

// ---------------------------------------------------------------------------------------
// storage, scheduling.

/// `SetDefaults_StorageClass`.
pub fn default_storageclass(obj: &mut Value) {
    default_ptr(obj, "reclaimPolicy", json!("Delete"));
    default_ptr(obj, "volumeBindingMode", json!("Immediate"));
}

/// `ValidateStorageClass`.
pub fn validate_storageclass(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let prov = s(obj, "provisioner");
    if prov.is_empty() {
        causes.push(required("provisioner", ""));
    } else if prov.len() > 63 {
        causes.push(crate::api::validation::too_long("provisioner", 63));
    }
    let rp = s(obj, "reclaimPolicy");
    if !rp.is_empty() && rp != "Delete" && rp != "Retain" {
        causes.push(not_supported("reclaimPolicy", rp, &["Delete", "Retain"]));
    }
    let vbm = s(obj, "volumeBindingMode");
    if !vbm.is_empty() && vbm != "Immediate" && vbm != "WaitForFirstConsumer" {
        causes.push(not_supported(
            "volumeBindingMode",
            vbm,
            &["Immediate", "WaitForFirstConsumer"],
        ));
    }
    causes
}

/// StorageClass updates: parameters, provisioner, reclaim policy and binding mode are fixed.
pub fn validate_storageclass_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for key in ["parameters", "provisioner", "reclaimPolicy"] {
        if !sem_eq(new.get(key), old.get(key)) {
            causes.push(forbidden(key, &format!("updates to {key} are forbidden.")));
        }
    }
    if !sem_eq(new.get("volumeBindingMode"), old.get("volumeBindingMode")) {
        causes.push(invalid_str(
            "volumeBindingMode",
            s(new, "volumeBindingMode"),
            "field is immutable",
        ));
    }
    causes
}

/// `SetDefaults_PriorityClass`.
pub fn default_priorityclass(obj: &mut Value) {
    default_ptr(obj, "preemptionPolicy", json!("PreemptLowerPriority"));
}

/// `ValidatePriorityClass`.
pub fn validate_priorityclass(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = s_at(obj, &["metadata", "name"]);
    let value = i(obj, "value").unwrap_or(0);
    let system = matches!(name, "system-cluster-critical" | "system-node-critical");
    if name.starts_with("system-") && !system {
        causes.push(forbidden(
            "metadata.name",
            "priority class names with 'system-' prefix are reserved",
        ));
    }
    if value > 1_000_000_000 && !system {
        causes.push(forbidden(
            "value",
            "maximum allowed value of a user defined priority is 1000000000",
        ));
    }
    let pp = s(obj, "preemptionPolicy");
    if !pp.is_empty() && pp != "Never" && pp != "PreemptLowerPriority" {
        causes.push(not_supported(
            "preemptionPolicy",
            pp,
            &["Never", "PreemptLowerPriority"],
        ));
    }
    causes
}

/// PriorityClass value and preemption policy are immutable.
pub fn validate_priorityclass_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if new.get("value") != old.get("value") {
        causes.push(forbidden("value", "may not be changed in an update."));
    }
    if !sem_eq(new.get("preemptionPolicy"), old.get("preemptionPolicy")) {
        causes.push(invalid_str(
            "preemptionPolicy",
            s(new, "preemptionPolicy"),
            "field is immutable",
        ));
    }
    causes
}

// ---------------------------------------------------------------------------------------
// apiextensions.k8s.io/v1 CustomResourceDefinition.

/// `SetDefaults_CustomResourceDefinition(Spec)`.
pub fn default_crd(obj: &mut Value) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    if let Some(names) = child(spec, "names") {
        let kind = s(names, "kind").to_string();
        default_str(names, "singular", &kind.to_lowercase());
        if !kind.is_empty() {
            default_str(names, "listKind", &format!("{kind}List"));
        }
    }
    default_ptr(spec, "conversion", json!({"strategy": "None"}));
    if let Some(svc) = existing(spec, &["conversion", "webhook", "clientConfig", "service"]) {
        default_ptr(svc, "port", json!(443));
    }
}

/// The CRD strategy's `PrepareForCreate`: `status.storedVersions` starts with the
/// storage version.
pub fn prepare_crd_create(obj: &mut Value) {
    let storage = get(obj, &["spec", "versions"])
        .and_then(Value::as_array)
        .and_then(|vs| {
            vs.iter()
                .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        })
        .map(|v| s(v, "name").to_string());
    let mut status = json!({"acceptedNames": {"kind": "", "plural": ""}, "conditions": [], "storedVersions": []});
    if let Some(v) = storage {
        status["storedVersions"] = json!([v]);
    }
    obj["status"] = status;
}

/// `ValidateCustomResourceDefinition` for the structural fields.
pub fn validate_crd(obj: &Value) -> Vec<Cause> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut causes = Vec::new();
    let group = s(spec, "group");
    let names = spec.get("names").unwrap_or(&Value::Null);
    let plural = s(names, "plural");
    let name = s_at(obj, &["metadata", "name"]);
    if !name.is_empty() && name != format!("{plural}.{group}") {
        causes.push(invalid_str(
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if group.is_empty() {
        causes.push(required("spec.group", ""));
    } else {
        let errs = is_dns1123_subdomain(group);
        if !errs.is_empty() {
            causes.push(invalid_str("spec.group", group, &errs.join(",")));
        } else if !group.contains('.') {
            causes.push(invalid_str(
                "spec.group",
                group,
                "should be a domain with at least one dot",
            ));
        }
    }
    let scope = s(spec, "scope");
    if scope.is_empty() {
        causes.push(required("spec.scope", ""));
    } else if scope != "Cluster" && scope != "Namespaced" {
        causes.push(not_supported(
            "spec.scope",
            scope,
            &["Cluster", "Namespaced"],
        ));
    }
    for (key, what) in [("plural", plural), ("singular", s(names, "singular"))] {
        if what.is_empty() {
            causes.push(required(format!("spec.names.{key}"), ""));
        } else {
            let errs = is_dns1035_label(what);
            if !errs.is_empty() {
                causes.push(invalid_str(
                    format!("spec.names.{key}"),
                    what,
                    &errs.join(","),
                ));
            }
        }
    }
    for key in ["kind", "listKind"] {
        let v = s(names, key);
        if v.is_empty() {
            causes.push(required(format!("spec.names.{key}"), ""));
        } else {
            let errs = is_dns1035_label(&v.to_lowercase());
            if !errs.is_empty() {
                causes.push(invalid_str(
                    format!("spec.names.{key}"),
                    v,
                    &format!(
                        "may have mixed case, but should otherwise match: {}",
                        errs.join(",")
                    ),
                ));
            }
        }
    }
    if !s(names, "kind").is_empty() && s(names, "kind") == s(names, "listKind") {
        causes.push(invalid_str(
            "spec.names.listKind",
            s(names, "listKind"),
            "kind and listKind may not be the same",
        ));
    }
    for (idx, short) in arr(names, "shortNames").iter().enumerate() {
        let sn = short.as_str().unwrap_or("");
        let errs = is_dns1035_label(sn);
        if !errs.is_empty() {
            causes.push(invalid_str(
                format!("spec.names.shortNames[{idx}]"),
                sn,
                &errs.join(","),
            ));
        }
    }
    let versions = arr(spec, "versions");
    if versions.is_empty() {
        causes.push(required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
        return causes;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut unique = true;
    let mut storage = 0;
    for (idx, v) in versions.iter().enumerate() {
        let vn = s(v, "name");
        if seen.contains(&vn) {
            unique = false;
        }
        seen.push(vn);
        if v.get("storage").and_then(Value::as_bool) == Some(true) {
            storage += 1;
        }
        let errs = is_dns1035_label(vn);
        if !errs.is_empty() {
            causes.push(invalid_str(
                format!("spec.versions[{idx}].name"),
                vn,
                &errs.join(","),
            ));
        }
        if get(v, &["schema", "openAPIV3Schema"]).is_none() {
            causes.push(required(
                format!("spec.versions[{idx}].schema.openAPIV3Schema"),
                "schemas are required",
            ));
        }
    }
    let rendered = format!(
        "[]apiextensions.CustomResourceDefinitionVersion{{{}}}",
        seen.iter()
            .map(|n| go_quote(n))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !unique {
        causes.push(invalid_raw(
            "spec.versions",
            &rendered,
            "must contain unique version names",
        ));
    }
    if storage != 1 {
        causes.push(invalid_raw(
            "spec.versions",
            &rendered,
            "must have exactly one version marked as storage version",
        ));
    }
    if !arr(spec, "versions")
        .iter()
        .any(|v| v.get("served").and_then(Value::as_bool) == Some(true))
    {
        causes.push(invalid_raw(
            "spec.versions",
            &rendered,
            "must have at least one version marked as served",
        ));
    }
    causes
}

/// CRD updates: group, names' plural and scope are immutable (once established).
pub fn validate_crd_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (path, field) in [
        (&["spec", "group"][..], "spec.group"),
        (&["spec", "scope"][..], "spec.scope"),
    ] {
        if s_at(new, path) != s_at(old, path) {
            causes.push(invalid_str(field, s_at(new, path), "field is immutable"));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(c: &[Cause]) -> Vec<String> {
        c.iter()
            .map(|c| format!("{} {}", c.field, c.reason))
            .collect()
    }

    #[test]
    fn hpa() {
        let mut h = json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"}, "maxReplicas": 5, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}}});
        default_hpa(&mut h);
        assert_eq!(h["spec"]["minReplicas"], 1);
        assert_eq!(
            h["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        assert_eq!(
            h["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            60
        );
        assert_eq!(h["spec"]["behavior"]["scaleDown"]["selectPolicy"], "Max");
        assert_eq!(h["spec"]["behavior"]["scaleUp"]["policies"][0]["value"], 4);
        assert!(validate_hpa(&h).is_empty());
        let bad = json!({"spec": {"minReplicas": 3, "maxReplicas": 2, "scaleTargetRef": {"kind": "Deployment"}}});
        assert_eq!(
            fields(&validate_hpa(&bad)),
            vec![
                "spec.maxReplicas FieldValueInvalid",
                "spec.scaleTargetRef.name FieldValueRequired"
            ]
        );
    }

    #[test]
    fn networking() {
        let mut np = json!({"spec": {"podSelector": {}, "egress": [{"ports": [{"port": 53}]}]}});
        default_networkpolicy(&mut np);
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(np["spec"]["egress"][0]["ports"][0]["protocol"], "TCP");
        assert!(validate_networkpolicy(&np).is_empty());

        let ok = json!({"spec": {"rules": [{"host": "a.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}});
        assert!(
            validate_ingress(&ok).is_empty(),
            "{:?}",
            validate_ingress(&ok)
        );
        let bad = json!({"spec": {"rules": [{"host": "1.2.3.4", "http": {"paths": [
            {"path": "x", "pathType": "Exact", "backend": {"service": {"name": "web", "port": {}}}},
            {"path": "/", "backend": {}}]}}]}});
        assert_eq!(
            fields(&validate_ingress(&bad)),
            vec![
                "spec.rules[0].host FieldValueInvalid",
                "spec.rules[0].http.paths[0].path FieldValueInvalid",
                "spec.rules[0].http.paths[0].backend FieldValueRequired",
                "spec.rules[0].http.paths[1].pathType FieldValueRequired",
            ]
        );
        assert_eq!(
            fields(&validate_ingress(&json!({"spec": {}}))),
            vec!["spec FieldValueInvalid"]
        );
        assert_eq!(
            fields(&validate_ingressclass(&json!({"spec": {}}))),
            vec!["spec.controller FieldValueRequired"]
        );
    }

    #[test]
    fn rbac() {
        let role = json!({"rules": [{"apiGroups": [""], "resources": ["pods"]}, {"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]});
        assert_eq!(
            fields(&validate_role(&role, true)),
            vec![
                "rules[0].verbs FieldValueRequired",
                "rules[1].nonResourceURLs FieldValueInvalid"
            ]
        );
        assert!(
            validate_role(
                &json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]}),
                false
            )
            .is_empty()
        );
        let mut rb = json!({"roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "default"}]});
        default_rbac_subjects(&mut rb);
        assert_eq!(rb["subjects"][0]["apiGroup"], RBAC_GROUP);
        assert!(validate_binding(&rb, true).is_empty());
        assert_eq!(
            fields(&validate_binding(&rb, false)),
            vec!["subjects[1].namespace FieldValueRequired"]
        );
        let mut changed = rb.clone();
        changed["roleRef"]["name"] = json!("edit");
        let c = validate_binding_update(&changed, &rb);
        assert_eq!(
            c[0].message,
            "Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"edit\"}: cannot change roleRef"
        );
    }

    #[test]
    fn storage_scheduling_misc() {
        let mut sc = json!({"provisioner": "rancher.io/local-path"});
        default_storageclass(&mut sc);
        assert_eq!(sc["reclaimPolicy"], "Delete");
        assert_eq!(sc["volumeBindingMode"], "Immediate");
        assert!(validate_storageclass(&sc).is_empty());
        let mut sc2 = sc.clone();
        sc2["parameters"] = json!({"a": "b"});
        assert_eq!(
            fields(&validate_storageclass_update(&sc2, &sc)),
            vec!["parameters FieldValueForbidden"]
        );

        let mut pc = json!({"metadata": {"name": "high"}, "value": 1000});
        default_priorityclass(&mut pc);
        assert_eq!(pc["preemptionPolicy"], "PreemptLowerPriority");
        assert!(validate_priorityclass(&pc).is_empty());
        let bad = json!({"metadata": {"name": "system-mine"}, "value": 2_000_000_000});
        assert_eq!(
            fields(&validate_priorityclass(&bad)),
            vec![
                "metadata.name FieldValueForbidden",
                "value FieldValueForbidden"
            ]
        );

        assert_eq!(
            fields(&validate_lease(
                &json!({"spec": {"leaseDurationSeconds": 0}})
            )),
            vec!["spec.leaseDurationSeconds FieldValueInvalid"]
        );
        let mut es = json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.42.0.5"]}], "ports": [{"port": 80}]});
        default_endpointslice(&mut es);
        assert_eq!(
            es["ports"][0],
            json!({"name": "", "port": 80, "protocol": "TCP"})
        );
        assert!(validate_endpointslice(&es).is_empty());
        assert_eq!(
            fields(&validate_endpointslice(
                &json!({"addressType": "IPv4", "endpoints": [{"addresses": ["::1"]}]})
            )),
            vec!["endpoints[0].addresses[0] FieldValueInvalid"]
        );
        assert_eq!(
            fields(&validate_pdb(
                &json!({"spec": {"minAvailable": 1, "maxUnavailable": "10%"}})
            )),
            vec!["spec.minAvailable FieldValueInvalid"]
        );
    }

    #[test]
    fn crd() {
        let mut crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}}]}});
        default_crd(&mut crd);
        assert_eq!(crd["spec"]["names"]["singular"], "widget");
        assert_eq!(crd["spec"]["names"]["listKind"], "WidgetList");
        assert_eq!(crd["spec"]["conversion"], json!({"strategy": "None"}));
        assert!(validate_crd(&crd).is_empty(), "{:?}", validate_crd(&crd));
        prepare_crd_create(&mut crd);
        assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));

        let bad = json!({"metadata": {"name": "widgets.example.org"}, "spec": {"group": "example", "scope": "Global",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{"name": "v1", "served": true, "storage": false}]}});
        assert_eq!(
            fields(&validate_crd(&bad)),
            vec![
                "metadata.name FieldValueInvalid",
                "spec.group FieldValueInvalid",
                "spec.scope FieldValueNotSupported",
                "spec.versions[0].schema.openAPIV3Schema FieldValueRequired",
                "spec.versions FieldValueInvalid",
            ]
        );
    }
}
