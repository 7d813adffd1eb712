//! Core (v1) kinds other than pods and controllers: Service, ConfigMap, Secret,
//! Namespace, Node, PersistentVolume(Claim), Event, Endpoints, LimitRange.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::pod::TAINT_EFFECTS;
use super::util::{
    absent, arr, child, default_ptr, default_str, existing, get, i, items_mut, obj, s, s_at,
    sem_eq, strip_nulls,
};
use crate::api::status::Cause;
use crate::api::validation::{
    duplicate, forbidden, go_quote, invalid, invalid_str, is_config_map_key, is_dns1123_label,
    is_dns1123_subdomain, is_qualified_name, is_valid_ip, is_valid_label_value, is_valid_port_name,
    is_valid_port_num, not_supported, required, too_long, validate_labels,
};

/// Maximum total size of a ConfigMap's or Secret's data.
pub const MAX_DATA_SIZE: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Service.

/// `SetDefaults_Service` plus the IP family fields the allocator fills.
pub fn default_service(obj: &mut Value) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    default_str(spec, "sessionAffinity", "None");
    if s(spec, "sessionAffinity") == "None"
        && let Some(m) = spec.as_object_mut()
    {
        m.remove("sessionAffinityConfig");
    }
    default_str(spec, "type", "ClusterIP");
    for p in items_mut(spec, "ports") {
        default_str(p, "protocol", "TCP");
        let unset = match p.get("targetPort") {
            None | Some(Value::Null) => true,
            Some(Value::Number(n)) => n.as_i64() == Some(0),
            Some(Value::String(t)) => t.is_empty(),
            _ => false,
        };
        if unset && let Some(port) = p.get("port").cloned() {
            p["targetPort"] = port;
        }
    }
    let ty = s(spec, "type").to_string();
    let externally_accessible = ty == "NodePort"
        || ty == "LoadBalancer"
        || (ty == "ClusterIP" && !arr(spec, "externalIPs").is_empty());
    if externally_accessible {
        default_str(spec, "externalTrafficPolicy", "Cluster");
    }
    if matches!(ty.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        default_ptr(spec, "internalTrafficPolicy", json!("Cluster"));
        default_ptr(spec, "ipFamilyPolicy", json!("SingleStack"));
        let families_unset = arr(spec, "ipFamilies").is_empty();
        if families_unset {
            let family = match s(spec, "clusterIP") {
                ip if ip.contains(':') => "IPv6",
                _ => "IPv4",
            };
            spec["ipFamilies"] = json!([family]);
        }
    }
    if ty == "LoadBalancer" {
        default_ptr(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if let Some(status) = child(obj, "status") {
        default_ptr(status, "loadBalancer", json!({}));
    }
}

const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

fn render_service_port_key(proto: &str, port: i64) -> String {
    format!(
        "core.ServicePort{{Name:\"\", Protocol:{}, AppProtocol:(*string)(nil), Port:{port}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
        go_quote(proto)
    )
}

/// `ValidateService` for the common fields.
pub fn validate_service(obj: &Value) -> Vec<Cause> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut causes = Vec::new();
    let ty = s(spec, "type");
    let cluster_ip = s(spec, "clusterIP");
    let headless = cluster_ip == "None";
    let ports = arr(spec, "ports");

    if !ty.is_empty() && !SERVICE_TYPES.contains(&ty) {
        causes.push(not_supported("spec.type", ty, SERVICE_TYPES));
    }
    if ty == "ExternalName" {
        if !cluster_ip.is_empty() {
            causes.push(forbidden(
                "spec.clusterIPs",
                "may not be set for ExternalName services",
            ));
        }
        let en = s(spec, "externalName").trim_end_matches('.');
        if en.is_empty() {
            causes.push(required("spec.externalName", ""));
        } else {
            for msg in is_dns1123_subdomain(en) {
                causes.push(invalid_str(
                    "spec.externalName",
                    s(spec, "externalName"),
                    &msg,
                ));
            }
        }
    } else if ports.is_empty() && !headless {
        causes.push(required("spec.ports", ""));
    }

    let require_name = ports.len() > 1;
    let mut names: Vec<&str> = Vec::new();
    let mut keys: Vec<(&str, i64)> = Vec::new();
    for (idx, p) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{idx}]");
        let name = s(p, "name");
        if require_name && name.is_empty() {
            causes.push(required(format!("{pp}.name"), ""));
        } else if !name.is_empty() {
            for msg in is_dns1123_label(name) {
                causes.push(invalid_str(format!("{pp}.name"), name, &msg));
            }
            if names.contains(&name) {
                causes.push(duplicate(format!("{pp}.name"), &go_quote(name)));
            } else {
                names.push(name);
            }
        }
        let port = i(p, "port").unwrap_or(0);
        for msg in is_valid_port_num(port) {
            causes.push(invalid(format!("{pp}.port"), &json!(port), &msg));
        }
        let proto = s(p, "protocol");
        if !absent(p, "protocol") {
            if proto.is_empty() {
                causes.push(required(format!("{pp}.protocol"), ""));
            } else if !PROTOCOLS.contains(&proto) {
                causes.push(not_supported(format!("{pp}.protocol"), proto, PROTOCOLS));
            }
        }
        match p.get("targetPort") {
            Some(Value::Number(n)) => {
                let tp = n.as_i64().unwrap_or(0);
                for msg in is_valid_port_num(tp) {
                    causes.push(invalid(format!("{pp}.targetPort"), &json!(tp), &msg));
                }
            }
            Some(Value::String(t)) if !t.is_empty() => {
                for msg in is_valid_port_name(t) {
                    causes.push(invalid_str(format!("{pp}.targetPort"), t, &msg));
                }
            }
            _ => {}
        }
        let node_port = i(p, "nodePort").unwrap_or(0);
        if node_port != 0 {
            if ty == "ClusterIP" || ty.is_empty() {
                causes.push(forbidden(
                    format!("{pp}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else {
                for msg in is_valid_port_num(node_port) {
                    causes.push(invalid(format!("{pp}.nodePort"), &json!(node_port), &msg));
                }
            }
        }
        let key_proto = if proto.is_empty() { "TCP" } else { proto };
        if keys.contains(&(key_proto, port)) {
            causes.push(duplicate(pp, &render_service_port_key(key_proto, port)));
        } else {
            keys.push((key_proto, port));
        }
    }

    causes.extend(validate_labels(spec.get("selector"), "spec.selector"));
    let sa = s(spec, "sessionAffinity");
    if !sa.is_empty() && sa != "ClientIP" && sa != "None" {
        causes.push(not_supported(
            "spec.sessionAffinity",
            sa,
            &["ClientIP", "None"],
        ));
    }
    if !cluster_ip.is_empty() && !headless {
        for msg in is_valid_ip(cluster_ip) {
            causes.push(invalid_str("spec.clusterIPs[0]", cluster_ip, &msg));
        }
    }
    for (idx, ip) in arr(spec, "externalIPs").iter().enumerate() {
        let ip = ip.as_str().unwrap_or("");
        for msg in is_valid_ip(ip) {
            causes.push(invalid_str(format!("spec.externalIPs[{idx}]"), ip, &msg));
        }
    }
    for (key, valid) in [
        ("externalTrafficPolicy", &["Cluster", "Local"][..]),
        ("internalTrafficPolicy", &["Cluster", "Local"][..]),
        (
            "ipFamilyPolicy",
            &["SingleStack", "PreferDualStack", "RequireDualStack"][..],
        ),
    ] {
        let v = s(spec, key);
        if !v.is_empty() && !valid.contains(&v) {
            causes.push(not_supported(format!("spec.{key}"), v, valid));
        }
    }
    let externally_accessible =
        ty == "NodePort" || ty == "LoadBalancer" || !arr(spec, "externalIPs").is_empty();
    if !s(spec, "externalTrafficPolicy").is_empty() && !externally_accessible {
        causes.push(invalid_str(
            "spec.externalTrafficPolicy",
            s(spec, "externalTrafficPolicy"),
            "may only be set for externally-accessible services",
        ));
    }
    for (idx, f) in arr(spec, "ipFamilies").iter().enumerate() {
        let f = f.as_str().unwrap_or("");
        if f != "IPv4" && f != "IPv6" {
            causes.push(not_supported(
                format!("spec.ipFamilies[{idx}]"),
                f,
                &["IPv4", "IPv6"],
            ));
        }
    }
    causes
}

/// Service updates: the primary cluster IP may not change once set (except to or from
/// ExternalName).
pub fn validate_service_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let (nt, ot) = (s_at(new, &["spec", "type"]), s_at(old, &["spec", "type"]));
    if nt == "ExternalName" || ot == "ExternalName" {
        return causes;
    }
    let old_ip = s_at(old, &["spec", "clusterIP"]);
    let new_ip = s_at(new, &["spec", "clusterIP"]);
    if !old_ip.is_empty() && new_ip != old_ip {
        let ips = get(new, &["spec", "clusterIPs"])
            .cloned()
            .unwrap_or_else(|| json!([new_ip]));
        causes.push(invalid(
            "spec.clusterIPs[0]",
            &ips,
            "may not change once set",
        ));
    }
    causes
}

/// `dropTypeDependentFields`: when an update changes the type so that a field no longer
/// applies and the update left the field as it was, the field is cleared (so
/// `kubectl patch -p '{"spec":{"type":"ClusterIP"}}'` on a NodePort Service works).
fn drop_type_dependent_fields(new: &mut Value, old: &Value) {
    let ty = |v: &Value| match s_at(v, &["spec", "type"]) {
        "" => "ClusterIP".to_string(),
        t => t.to_string(),
    };
    let (nt, ot) = (ty(new), ty(old));
    let needs_ip = |t: &str| t != "ExternalName";
    let needs_np = |t: &str| t == "NodePort" || t == "LoadBalancer";
    let externally = |t: &str, v: &Value| needs_np(t) || !arr(&v["spec"], "externalIPs").is_empty();
    let new_external = externally(&nt, new);
    let old_external = externally(&ot, old);
    let same = |new: &Value, key: &str| new["spec"].get(key) == old["spec"].get(key);
    let same_node_ports = {
        let np = |v: &Value| -> Vec<Option<i64>> {
            arr(&v["spec"], "ports")
                .iter()
                .map(|p| i(p, "nodePort"))
                .collect()
        };
        np(new) == np(old)
    };
    let mut clear: Vec<&str> = Vec::new();
    if needs_ip(&ot) && !needs_ip(&nt) {
        for key in [
            "clusterIP",
            "clusterIPs",
            "ipFamilies",
            "ipFamilyPolicy",
            "internalTrafficPolicy",
        ] {
            if same(new, key) {
                clear.push(key);
            }
        }
    }
    let old_hc = ot == "LoadBalancer" && s_at(old, &["spec", "externalTrafficPolicy"]) == "Local";
    let new_hc = nt == "LoadBalancer" && s_at(new, &["spec", "externalTrafficPolicy"]) == "Local";
    if old_hc && !new_hc && same(new, "healthCheckNodePort") {
        clear.push("healthCheckNodePort");
    }
    if old_external && !new_external && same(new, "externalTrafficPolicy") {
        clear.push("externalTrafficPolicy");
    }
    if ot == "LoadBalancer" && nt != "LoadBalancer" {
        for key in ["allocateLoadBalancerNodePorts", "loadBalancerClass"] {
            if same(new, key) {
                clear.push(key);
            }
        }
    }
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for key in clear {
        spec.remove(key);
    }
    if needs_np(&ot) && !needs_np(&nt) && same_node_ports {
        for p in spec
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(m) = p.as_object_mut() {
                m.remove("nodePort");
            }
        }
    }
}

/// `patchAllocatedValues`: an update that omits the allocated cluster IPs, node ports or
/// health-check node port keeps the old ones (so `kubectl replace` works); fields the new
/// type has no use for are dropped ([`drop_type_dependent_fields`]).
pub fn prepare_service_update(new: &mut Value, old: &Value) {
    drop_type_dependent_fields(new, old);
    let needs_cluster_ip = |v: &Value| s_at(v, &["spec", "type"]) != "ExternalName";
    let needs_node_port = |v: &Value| {
        let t = s_at(v, &["spec", "type"]);
        t == "NodePort"
            || (t == "LoadBalancer"
                && get(v, &["spec", "allocateLoadBalancerNodePorts"]).and_then(Value::as_bool)
                    != Some(false))
    };
    let new_needs_ip = needs_cluster_ip(new);
    let new_needs_np = needs_node_port(new);
    let Some(spec) = child(new, "spec") else {
        return;
    };
    let old_spec = old.get("spec").unwrap_or(&Value::Null);
    if needs_cluster_ip(old) && new_needs_ip {
        if s(spec, "clusterIP").is_empty() && !s(old_spec, "clusterIP").is_empty() {
            spec["clusterIP"] = json!(s(old_spec, "clusterIP"));
        }
        if arr(spec, "clusterIPs").is_empty() && !arr(old_spec, "clusterIPs").is_empty() {
            spec["clusterIPs"] = if s(spec, "clusterIP") == s(old_spec, "clusterIP") {
                old_spec["clusterIPs"].clone()
            } else {
                json!([s(spec, "clusterIP")])
            };
        }
    }
    if needs_node_port(old) && new_needs_np {
        let used_old: Vec<i64> = arr(old_spec, "ports")
            .iter()
            .filter_map(|p| i(p, "nodePort"))
            .collect();
        let used_new: Vec<i64> = arr(spec, "ports")
            .iter()
            .filter_map(|p| i(p, "nodePort"))
            .filter(|n| *n != 0)
            .collect();
        let by_name: Vec<(String, i64)> = arr(old_spec, "ports")
            .iter()
            .map(|p| (s(p, "name").to_string(), i(p, "nodePort").unwrap_or(0)))
            .collect();
        for p in items_mut(spec, "ports") {
            if i(p, "nodePort").unwrap_or(0) == 0
                && let Some((_, old_np)) = by_name.iter().find(|(n, _)| n == s(p, "name"))
                && *old_np != 0
                && !(used_old.contains(old_np) && used_new.contains(old_np))
            {
                p["nodePort"] = json!(old_np);
            }
        }
    }
    let hc = i(old_spec, "healthCheckNodePort").unwrap_or(0);
    if hc != 0
        && i(spec, "healthCheckNodePort").unwrap_or(0) == 0
        && s(spec, "externalTrafficPolicy") == "Local"
    {
        spec["healthCheckNodePort"] = json!(hc);
    }
    for key in ["ipFamilies", "ipFamilyPolicy"] {
        if absent(spec, key) && !absent(old_spec, key) && new_needs_ip {
            spec[key] = old_spec[key].clone();
        }
    }
}

// ---------------------------------------------------------------------------------------
// ConfigMap and Secret.

/// Upstream's v1 Secret conversion merges `stringData` into `data`; the stored object
/// never has `stringData`. Also defaults `type` to `Opaque`.
pub fn default_secret(obj: &mut Value) {
    default_str(obj, "type", "Opaque");
    let Some(string_data) = obj.as_object_mut().and_then(|m| m.remove("stringData")) else {
        return;
    };
    let Value::Object(string_data) = string_data else {
        return;
    };
    if string_data.is_empty() {
        return;
    }
    if let Some(data) = child(obj, "data").and_then(Value::as_object_mut) {
        for (k, v) in string_data {
            let plain = v.as_str().unwrap_or("").as_bytes().to_vec();
            data.insert(
                k,
                json!(base64::engine::general_purpose::STANDARD.encode(plain)),
            );
        }
    }
}

fn decoded_len(v: &Value) -> usize {
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .map_or(0, |b| b.len())
}

/// `ValidateConfigMap`.
pub fn validate_configmap(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut total = 0usize;
    let binary = super::util::obj(obj, "binaryData");
    for (k, v) in super::util::obj(obj, "data").into_iter().flatten() {
        for msg in is_config_map_key(k) {
            causes.push(invalid_str(format!("data[{k}]"), k, &msg));
        }
        if binary.is_some_and(|b| b.contains_key(k)) {
            causes.push(invalid_str(
                format!("data[{k}]"),
                k,
                "duplicate of key present in binaryData",
            ));
        }
        total += v.as_str().map_or(0, str::len);
    }
    for (k, v) in binary.into_iter().flatten() {
        for msg in is_config_map_key(k) {
            causes.push(invalid_str(format!("binaryData[{k}]"), k, &msg));
        }
        total += decoded_len(v);
    }
    if total > MAX_DATA_SIZE {
        causes.push(too_long("", MAX_DATA_SIZE));
    }
    causes
}

/// `ValidateSecret`, including the per-type required keys.
pub fn validate_secret(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let data = super::util::obj(obj, "data");
    let mut total = 0usize;
    for (k, v) in data.into_iter().flatten() {
        for msg in is_config_map_key(k) {
            causes.push(invalid_str(format!("data[{k}]"), k, &msg));
        }
        total += decoded_len(v);
    }
    if total > MAX_DATA_SIZE {
        causes.push(too_long("data", MAX_DATA_SIZE));
    }
    let has = |k: &str| data.is_some_and(|d| d.contains_key(k));
    let sa_name = s_at(
        obj,
        &[
            "metadata",
            "annotations",
            "kubernetes.io/service-account.name",
        ],
    );
    let ssh_key_len = data
        .and_then(|d| d.get("ssh-privatekey"))
        .map_or(0, decoded_len);
    match s(obj, "type") {
        "kubernetes.io/service-account-token" if sa_name.is_empty() => {
            causes.push(required(
                "metadata.annotations[kubernetes.io/service-account.name]",
                "",
            ));
        }
        "kubernetes.io/dockercfg" => check_json_key(data, ".dockercfg", &mut causes),
        "kubernetes.io/dockerconfigjson" => check_json_key(data, ".dockerconfigjson", &mut causes),
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            causes.push(required("data[username]", ""));
            causes.push(required("data[password]", ""));
        }
        "kubernetes.io/ssh-auth" if ssh_key_len == 0 => {
            causes.push(required("data[ssh-privatekey]", ""));
        }
        "kubernetes.io/tls" => {
            for key in ["tls.crt", "tls.key"] {
                if !has(key) {
                    causes.push(required(format!("data[{key}]"), ""));
                }
            }
        }
        _ => {}
    }
    causes
}

fn check_json_key(data: Option<&Map<String, Value>>, key: &str, causes: &mut Vec<Cause>) {
    let Some(v) = data.and_then(|d| d.get(key)) else {
        causes.push(required(format!("data[{key}]"), ""));
        return;
    };
    let bytes = v
        .as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .unwrap_or_default();
    if let Err(e) = serde_json::from_slice::<Map<String, Value>>(&bytes) {
        causes.push(invalid_str(
            format!("data[{key}]"),
            "<secret contents redacted>",
            &e.to_string(),
        ));
    }
}

/// ConfigMap/Secret with `immutable: true` may not change data (or become mutable);
/// a Secret's type never changes.
pub fn validate_immutable_data(
    new: &Value,
    old: &Value,
    keys: &[&str],
    is_secret: bool,
) -> Vec<Cause> {
    let mut causes = Vec::new();
    if is_secret && s(new, "type") != s(old, "type") {
        causes.push(invalid_str("type", s(new, "type"), "field is immutable"));
    }
    if old.get("immutable").and_then(Value::as_bool) == Some(true) {
        if new.get("immutable").and_then(Value::as_bool) != Some(true) {
            causes.push(forbidden(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
        for key in keys {
            if !sem_eq(new.get(*key), old.get(*key)) {
                causes.push(forbidden(
                    *key,
                    "field is immutable when `immutable` is set",
                ));
            }
        }
    }
    causes
}

// ---------------------------------------------------------------------------------------
// Namespace and Node.

/// `SetDefaults_Namespace` (the `kubernetes.io/metadata.name` label) and the status phase.
///
/// The `kubernetes` finalizer belongs to creation only (upstream adds it in
/// `PrepareForCreate`, because `/finalize` removes it and it must stay removed). Defaulting
/// runs on every write, so it adds the finalizer only when the object has no status phase
/// yet, which is the case exactly on create (status is not settable on create and is kept
/// from the stored object on updates).
pub fn default_namespace(obj: &mut Value) {
    let name = s_at(obj, &["metadata", "name"]).to_string();
    if !name.is_empty()
        && let Some(labels) = child(obj, "metadata")
            .and_then(|m| child(m, "labels"))
            .and_then(Value::as_object_mut)
    {
        labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    }
    if s_at(obj, &["status", "phase"]).is_empty() {
        add_kubernetes_finalizer(obj);
    }
    if let Some(status) = child(obj, "status") {
        default_str(status, "phase", "Active");
    }
}

fn add_kubernetes_finalizer(obj: &mut Value) {
    if let Some(spec) = child(obj, "spec")
        && let Some(m) = spec.as_object_mut()
    {
        let list = m.entry("finalizers").or_insert_with(|| json!([]));
        if !list.is_array() {
            *list = json!([]);
        }
        if let Some(a) = list.as_array_mut()
            && !a.iter().any(|f| f == "kubernetes")
        {
            a.push(json!("kubernetes"));
        }
    }
}

/// The namespace strategy's `PrepareForCreate`: phase Active and the `kubernetes`
/// finalizer in `spec.finalizers`.
pub fn prepare_namespace_create(obj: &mut Value) {
    add_kubernetes_finalizer(obj);
    obj["status"] = json!({"phase": "Active"});
}

/// The namespace strategy's `PrepareForUpdate`: finalizers change only through
/// `/finalize`, status only through `/status`.
pub fn prepare_namespace_update(new: &mut Value, old: &Value) {
    let old_finalizers = get(old, &["spec", "finalizers"]).cloned();
    if let Some(spec) = child(new, "spec")
        && let Some(m) = spec.as_object_mut()
    {
        match old_finalizers {
            Some(f) => {
                m.insert("finalizers".into(), f);
            }
            None => {
                m.remove("finalizers");
            }
        }
    }
}

/// Namespace `spec.finalizers` must be qualified names (standard or domain-prefixed).
pub fn validate_namespace(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for f in arr(obj.get("spec").unwrap_or(&Value::Null), "finalizers") {
        let f = f.as_str().unwrap_or("");
        for msg in is_qualified_name(f) {
            causes.push(invalid_str("spec.finalizers", f, &msg));
        }
        if !f.contains('/') && f != "kubernetes" {
            causes.push(invalid_str(
                "spec.finalizers",
                f,
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
    causes
}

/// `SetDefaults_NodeStatus`: allocatable defaults to capacity.
pub fn default_node(obj: &mut Value) {
    if let Some(status) = existing(obj, &["status"])
        && absent(status, "allocatable")
        && let Some(cap) = status.get("capacity").filter(|c| c.is_object()).cloned()
    {
        status["allocatable"] = cap;
    }
}

/// Node taints: keys are qualified names, effects known, no duplicates.
pub fn validate_node(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut seen: Vec<(String, String)> = Vec::new();
    for (idx, t) in arr(spec, "taints").iter().enumerate() {
        let p = format!("spec.taints[{idx}]");
        let key = s(t, "key");
        if key.is_empty() {
            causes.push(required(format!("{p}.key"), ""));
        }
        for msg in is_qualified_name(key)
            .into_iter()
            .filter(|_| !key.is_empty())
        {
            causes.push(invalid_str(format!("{p}.key"), key, &msg));
        }
        for msg in is_valid_label_value(s(t, "value")) {
            causes.push(invalid_str(format!("{p}.value"), s(t, "value"), &msg));
        }
        let effect = s(t, "effect");
        if effect.is_empty() {
            causes.push(required(format!("{p}.effect"), ""));
        } else if !TAINT_EFFECTS.contains(&effect) {
            causes.push(not_supported(format!("{p}.effect"), effect, TAINT_EFFECTS));
        }
        let k = (key.to_string(), effect.to_string());
        if seen.contains(&k) {
            causes.push(duplicate(
                p,
                &format!(
                    "core.Taint{{Key:{}, Effect:{}}}",
                    go_quote(key),
                    go_quote(effect)
                ),
            ));
        } else {
            seen.push(k);
        }
    }
    let cidr = s(spec, "podCIDR");
    if !cidr.is_empty() && !valid_cidr(cidr) {
        causes.push(invalid_str(
            "spec.podCIDR",
            cidr,
            "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        ));
    }
    causes
}

fn valid_cidr(c: &str) -> bool {
    let Some((ip, bits)) = c.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    bits.parse::<u32>().is_ok_and(|b| b <= max)
}

// ---------------------------------------------------------------------------------------
// Persistent volumes.

/// `SetDefaults_PersistentVolumeClaim(Spec)`.
pub fn default_pvc(obj: &mut Value) {
    if let Some(spec) = child(obj, "spec") {
        default_ptr(spec, "volumeMode", json!("Filesystem"));
    }
    if let Some(status) = child(obj, "status") {
        default_str(status, "phase", "Pending");
    }
}

/// `SetDefaults_PersistentVolume`.
pub fn default_pv(obj: &mut Value) {
    if let Some(spec) = child(obj, "spec") {
        default_str(spec, "persistentVolumeReclaimPolicy", "Retain");
        default_ptr(spec, "volumeMode", json!("Filesystem"));
    }
    if let Some(status) = child(obj, "status") {
        default_str(status, "phase", "Pending");
    }
}

const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

fn validate_access_modes(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let modes = arr(spec, "accessModes");
    if modes.is_empty() {
        causes.push(required(
            format!("{path}.accessModes"),
            "at least 1 access mode is required",
        ));
    }
    for m in modes {
        let m = m.as_str().unwrap_or("");
        if !ACCESS_MODES.contains(&m) {
            causes.push(not_supported(
                format!("{path}.accessModes"),
                m,
                ACCESS_MODES,
            ));
        }
    }
}

/// `ValidatePersistentVolumeClaimSpec` (access modes and a storage request).
pub fn validate_pvc(obj: &Value) -> Vec<Cause> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut causes = Vec::new();
    validate_access_modes(spec, "spec", &mut causes);
    let has_source = !absent(spec, "dataSource") || !absent(spec, "dataSourceRef");
    if get(spec, &["resources", "requests", "storage"]).is_none() && !has_source {
        causes.push(required("spec.resources[storage]", ""));
    }
    let vm = s(spec, "volumeMode");
    if !vm.is_empty() && vm != "Block" && vm != "Filesystem" {
        causes.push(not_supported(
            "spec.volumeMode",
            vm,
            &["Block", "Filesystem"],
        ));
    }
    causes
}

/// PVC updates: the spec is immutable except `resources.requests`,
/// `volumeAttributesClassName`, and binding a volume (setting an empty `volumeName`).
pub fn validate_pvc_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut n = strip_nulls(new.get("spec").unwrap_or(&Value::Null));
    let o = strip_nulls(old.get("spec").unwrap_or(&Value::Null));
    if let Some(m) = n.as_object_mut() {
        for key in ["volumeAttributesClassName", "resources"] {
            match o.get(key) {
                Some(v) => m.insert(key.into(), v.clone()),
                None => m.remove(key),
            };
        }
        for key in ["volumeName", "storageClassName"] {
            if s(&o, key).is_empty() {
                match o.get(key) {
                    Some(v) => m.insert(key.into(), v.clone()),
                    None => m.remove(key),
                };
            }
        }
    }
    if sem_eq(Some(&n), Some(&o)) {
        Vec::new()
    } else {
        vec![forbidden(
            "spec",
            &format!(
                "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims\n{}",
                super::pod::spec_diff(&o, &n)
                    .replace("core.PodSpec", "core.PersistentVolumeClaimSpec")
            ),
        )]
    }
}

const PV_SOURCES: &[&str] = &[
    "hostPath",
    "local",
    "nfs",
    "csi",
    "iscsi",
    "fc",
    "rbd",
    "cephfs",
    "glusterfs",
    "cinder",
    "flexVolume",
    "azureFile",
    "azureDisk",
    "awsElasticBlockStore",
    "gcePersistentDisk",
    "vsphereVolume",
    "quobyte",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "flocker",
];

/// `ValidatePersistentVolume` (the common fields).
pub fn validate_pv(obj: &Value) -> Vec<Cause> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let mut causes = Vec::new();
    validate_access_modes(spec, "spec", &mut causes);
    if obj_len(spec, "capacity") == 0 {
        causes.push(required("spec.capacity", ""));
    }
    let sources = PV_SOURCES.iter().filter(|k| !absent(spec, k)).count();
    if sources == 0 {
        causes.push(required("spec", "must specify a volume type"));
    } else if sources > 1 {
        causes.push(forbidden("spec", "may not specify more than 1 volume type"));
    }
    let rp = s(spec, "persistentVolumeReclaimPolicy");
    if !rp.is_empty() && !["Delete", "Recycle", "Retain"].contains(&rp) {
        causes.push(not_supported(
            "spec.persistentVolumeReclaimPolicy",
            rp,
            &["Delete", "Recycle", "Retain"],
        ));
    }
    if let Some(hp) = get(spec, &["hostPath", "path"]).and_then(Value::as_str)
        && hp.is_empty()
    {
        causes.push(required("spec.hostPath.path", ""));
    }
    causes
}

fn obj_len(v: &Value, key: &str) -> usize {
    obj(v, key).map_or(0, Map::len)
}

// ---------------------------------------------------------------------------------------
// Events, Endpoints, LimitRange.

/// Upstream's `legacyValidateEvent` for core/v1 events.
pub fn validate_event(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let ns = s_at(obj, &["metadata", "namespace"]);
    let involved_ns = s_at(obj, &["involvedObject", "namespace"]);
    let event_time_set = !absent(obj, "eventTime");
    if !event_time_set {
        let mismatch = if involved_ns.is_empty() {
            !ns.is_empty() && ns != "default"
        } else {
            ns != involved_ns
        };
        if mismatch {
            causes.push(invalid_str(
                "involvedObject.namespace",
                involved_ns,
                "does not match event.namespace",
            ));
        }
    } else {
        if involved_ns.is_empty() && ns != "default" && ns != "kube-system" {
            causes.push(invalid_str(
                "involvedObject.namespace",
                involved_ns,
                "does not match event.namespace",
            ));
        }
        let rc = s(obj, "reportingComponent");
        if rc.is_empty() {
            causes.push(required("reportingComponent", ""));
        }
        for msg in is_qualified_name(rc).into_iter().filter(|_| !rc.is_empty()) {
            causes.push(invalid_str("reportingComponent", rc, &msg));
        }
        for (key, limit) in [
            ("reportingInstance", 128usize),
            ("action", 128),
            ("reason", 128),
        ] {
            let v = s(obj, key);
            if v.is_empty() {
                causes.push(required(key, ""));
            }
            if v.len() > limit {
                causes.push(invalid_str(
                    key,
                    "",
                    &format!("can have at most {limit} characters"),
                ));
            }
        }
        if s(obj, "message").len() > 1024 {
            causes.push(invalid_str(
                "message",
                "",
                "can have at most 1024 characters",
            ));
        }
    }
    for msg in is_dns1123_subdomain(ns)
        .into_iter()
        .filter(|_| !ns.is_empty())
    {
        causes.push(invalid_str("namespace", ns, &msg));
    }
    causes
}

/// `SetDefaults_EndpointPort` for every subset.
pub fn default_endpoints(obj: &mut Value) {
    for subset in items_mut(obj, "subsets") {
        for p in items_mut(subset, "ports") {
            default_str(p, "protocol", "TCP");
        }
    }
}

/// `ValidateEndpoints` (addresses are IPs, ports valid).
pub fn validate_endpoints(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (si, subset) in arr(obj, "subsets").iter().enumerate() {
        for key in ["addresses", "notReadyAddresses"] {
            for (ai, a) in arr(subset, key).iter().enumerate() {
                let ip = s(a, "ip");
                for msg in is_valid_ip(ip) {
                    causes.push(invalid_str(
                        format!("subsets[{si}].{key}[{ai}].ip"),
                        ip,
                        &msg,
                    ));
                }
            }
        }
        for (pi, p) in arr(subset, "ports").iter().enumerate() {
            let port = i(p, "port").unwrap_or(0);
            for msg in is_valid_port_num(port) {
                causes.push(invalid(
                    format!("subsets[{si}].ports[{pi}].port"),
                    &json!(port),
                    &msg,
                ));
            }
            let proto = s(p, "protocol");
            if !proto.is_empty() && !PROTOCOLS.contains(&proto) {
                causes.push(not_supported(
                    format!("subsets[{si}].ports[{pi}].protocol"),
                    proto,
                    PROTOCOLS,
                ));
            }
        }
    }
    causes
}

/// `SetDefaults_LimitRangeItem`: container defaults from max, requests from defaults/min.
pub fn default_limitrange(obj: &mut Value) {
    let Some(spec) = existing(obj, &["spec"]) else {
        return;
    };
    for item in items_mut(spec, "limits") {
        if s(item, "type") != "Container" {
            continue;
        }
        let max = super::util::obj(item, "max").cloned().unwrap_or_default();
        let min = super::util::obj(item, "min").cloned().unwrap_or_default();
        if let Some(def) = child(item, "default").and_then(Value::as_object_mut) {
            for (k, v) in &max {
                def.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let def = super::util::obj(item, "default")
            .cloned()
            .unwrap_or_default();
        if let Some(req) = child(item, "defaultRequest").and_then(Value::as_object_mut) {
            for (k, v) in def.iter().chain(min.iter()) {
                req.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
}

/// LimitRange item types.
pub fn validate_limitrange(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    for (idx, item) in arr(spec, "limits").iter().enumerate() {
        let t = s(item, "type");
        const TYPES: &[&str] = &["Container", "Pod", "PersistentVolumeClaim"];
        if !TYPES.contains(&t) {
            causes.push(not_supported(format!("spec.limits[{idx}].type"), t, TYPES));
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
    fn service_defaults() {
        let mut svc = json!({"spec": {"selector": {"app": "web"}, "ports": [{"port": 80}, {"port": 443, "targetPort": "https", "protocol": "TCP"}]}});
        default_service(&mut svc);
        let spec = &svc["spec"];
        assert_eq!(spec["type"], "ClusterIP");
        assert_eq!(spec["sessionAffinity"], "None");
        assert_eq!(spec["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["ports"][0]["targetPort"], 80);
        assert_eq!(spec["ports"][1]["targetPort"], "https");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
        assert!(spec.get("externalTrafficPolicy").is_none());
        assert_eq!(svc["status"], json!({"loadBalancer": {}}));

        let mut lb = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}});
        default_service(&mut lb);
        assert_eq!(lb["spec"]["externalTrafficPolicy"], "Cluster");
        assert_eq!(lb["spec"]["allocateLoadBalancerNodePorts"], true);

        let mut en = json!({"spec": {"type": "ExternalName", "externalName": "example.com"}});
        default_service(&mut en);
        assert!(en["spec"].get("ipFamilies").is_none());
        assert!(validate_service(&en).is_empty());
    }

    #[test]
    fn service_validation() {
        let cases: Vec<(Value, Vec<&str>)> = vec![
            (
                json!({"spec": {"ports": [{"port": 80, "protocol": "TCP"}]}}),
                vec![],
            ),
            (
                json!({"spec": {"type": "ClusterIP"}}),
                vec!["spec.ports FieldValueRequired"],
            ),
            (json!({"spec": {"clusterIP": "None"}}), vec![]),
            (
                json!({"spec": {"type": "Bogus", "ports": [{"port": 80}]}}),
                vec!["spec.type FieldValueNotSupported"],
            ),
            (
                json!({"spec": {"type": "ExternalName"}}),
                vec!["spec.externalName FieldValueRequired"],
            ),
            (
                json!({"spec": {"ports": [{"port": 80}, {"port": 81}]}}),
                vec![
                    "spec.ports[0].name FieldValueRequired",
                    "spec.ports[1].name FieldValueRequired",
                ],
            ),
            (
                json!({"spec": {"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 80}]}}),
                vec![
                    "spec.ports[1].name FieldValueDuplicate",
                    "spec.ports[1] FieldValueDuplicate",
                ],
            ),
            (
                json!({"spec": {"ports": [{"port": 0}]}}),
                vec!["spec.ports[0].port FieldValueInvalid"],
            ),
            (
                json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30000}]}}),
                vec!["spec.ports[0].nodePort FieldValueForbidden"],
            ),
            (
                json!({"spec": {"clusterIP": "1.2.3", "ports": [{"port": 80}]}}),
                vec!["spec.clusterIPs[0] FieldValueInvalid"],
            ),
            (
                json!({"spec": {"ports": [{"port": 80, "targetPort": "bad--name"}]}}),
                vec!["spec.ports[0].targetPort FieldValueInvalid"],
            ),
        ];
        for (svc, want) in cases {
            assert_eq!(fields(&validate_service(&svc)), want, "{svc}");
        }
        let old = json!({"spec": {"clusterIP": "10.43.0.5", "clusterIPs": ["10.43.0.5"]}});
        let new = json!({"spec": {"clusterIP": "10.43.0.6", "clusterIPs": ["10.43.0.6"]}});
        let c = validate_service_update(&new, &old);
        assert_eq!(
            c[0].message,
            "Invalid value: []string{\"10.43.0.6\"}: may not change once set"
        );

        let mut replaced =
            json!({"spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80}]}});
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.5", "clusterIPs": ["10.43.0.5"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"}});
        prepare_service_update(&mut replaced, &old);
        assert_eq!(replaced["spec"]["clusterIP"], "10.43.0.5");
        assert_eq!(replaced["spec"]["clusterIPs"], json!(["10.43.0.5"]));
        assert_eq!(replaced["spec"]["ports"][0]["nodePort"], 30080);
        assert!(validate_service_update(&replaced, &old).is_empty());

        // NodePort → ClusterIP by patch: the untouched node ports and policy go.
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.5", "externalTrafficPolicy": "Cluster",
            "ports": [{"port": 80, "nodePort": 30080}]}});
        let mut patched = old.clone();
        patched["spec"]["type"] = json!("ClusterIP");
        prepare_service_update(&mut patched, &old);
        assert!(patched["spec"]["ports"][0].get("nodePort").is_none());
        assert!(patched["spec"].get("externalTrafficPolicy").is_none());
        assert_eq!(patched["spec"]["clusterIP"], "10.43.0.5");
        assert!(validate_service(&patched).is_empty());
        // ... to ExternalName: the cluster IP goes too.
        let mut en = old.clone();
        en["spec"]["type"] = json!("ExternalName");
        en["spec"]["externalName"] = json!("example.com");
        prepare_service_update(&mut en, &old);
        assert!(en["spec"].get("clusterIP").is_none());
        assert!(
            validate_service(&en).is_empty(),
            "{:?}",
            validate_service(&en)
        );
    }

    #[test]
    fn configmaps_and_secrets() {
        let cm =
            json!({"data": {"ok.yaml": "x", "bad/key": "y"}, "binaryData": {"ok.yaml": "AA=="}});
        assert_eq!(
            fields(&validate_configmap(&cm)),
            vec![
                "data[bad/key] FieldValueInvalid",
                "data[ok.yaml] FieldValueInvalid"
            ]
        );
        let big = json!({"data": {"a": "x".repeat(MAX_DATA_SIZE + 1)}});
        let c = validate_configmap(&big);
        assert_eq!(c[0].reason, "FieldValueTooLong");

        let mut secret = json!({"data": {"a": "YQ=="}, "stringData": {"b": "hello", "a": "over"}});
        default_secret(&mut secret);
        assert_eq!(secret["type"], "Opaque");
        assert_eq!(secret["data"]["b"], "aGVsbG8=");
        assert_eq!(secret["data"]["a"], "b3Zlcg==");
        assert!(secret.get("stringData").is_none());

        let tls = json!({"type": "kubernetes.io/tls", "data": {"tls.crt": ""}});
        assert_eq!(
            fields(&validate_secret(&tls)),
            vec!["data[tls.key] FieldValueRequired"]
        );
        let dcj = json!({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "bm90IGpzb24="}});
        assert_eq!(
            fields(&validate_secret(&dcj)),
            vec!["data[.dockerconfigjson] FieldValueInvalid"]
        );

        let old = json!({"immutable": true, "data": {"a": "1"}});
        assert!(validate_immutable_data(&old, &old, &["data", "binaryData"], false).is_empty());
        let new = json!({"immutable": true, "data": {"a": "2"}});
        let c = validate_immutable_data(&new, &old, &["data", "binaryData"], false);
        assert_eq!(c[0].field, "data");
        assert_eq!(
            c[0].message,
            "Forbidden: field is immutable when `immutable` is set"
        );
        let c = validate_immutable_data(
            &json!({"type": "x"}),
            &json!({"type": "Opaque"}),
            &["data"],
            true,
        );
        assert_eq!(c[0].field, "type");
    }

    #[test]
    fn namespaces_nodes_volumes_events() {
        let mut ns = json!({"metadata": {"name": "dev"}});
        default_namespace(&mut ns);
        prepare_namespace_create(&mut ns);
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "dev"
        );
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(ns["status"]["phase"], "Active");
        let mut upd = json!({"metadata": {"name": "dev"}, "spec": {"finalizers": []}});
        prepare_namespace_update(&mut upd, &ns);
        assert_eq!(upd["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(
            fields(&validate_namespace(
                &json!({"spec": {"finalizers": ["bogus"]}})
            )),
            vec!["spec.finalizers FieldValueInvalid"]
        );

        let mut node = json!({"status": {"capacity": {"cpu": "2"}}});
        default_node(&mut node);
        assert_eq!(node["status"]["allocatable"], json!({"cpu": "2"}));
        let bad = json!({"spec": {"taints": [{"key": "k", "effect": "Sometimes"}], "podCIDR": "10.42.0.0/99"}});
        assert_eq!(
            fields(&validate_node(&bad)),
            vec![
                "spec.taints[0].effect FieldValueNotSupported",
                "spec.podCIDR FieldValueInvalid"
            ]
        );

        let mut pvc = json!({"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        default_pvc(&mut pvc);
        assert_eq!(pvc["spec"]["volumeMode"], "Filesystem");
        assert_eq!(pvc["status"]["phase"], "Pending");
        assert!(validate_pvc(&pvc).is_empty());
        assert_eq!(
            fields(&validate_pvc(&json!({"spec": {}}))),
            vec![
                "spec.accessModes FieldValueRequired",
                "spec.resources[storage] FieldValueRequired"
            ]
        );
        let mut grown = pvc.clone();
        grown["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        grown["spec"]["volumeName"] = json!("pv-1");
        assert!(validate_pvc_update(&grown, &pvc).is_empty());
        let mut changed = pvc.clone();
        changed["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert_eq!(validate_pvc_update(&changed, &pvc)[0].field, "spec");

        let mut pv = json!({"spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/d"}}});
        default_pv(&mut pv);
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert!(validate_pv(&pv).is_empty(), "{:?}", validate_pv(&pv));
        assert_eq!(
            fields(&validate_pv(
                &json!({"spec": {"capacity": {"storage": "1"}, "accessModes": ["ReadWriteOnce"]}})
            )),
            vec!["spec FieldValueRequired"]
        );

        let ev = json!({"metadata": {"namespace": "default"}, "involvedObject": {"kind": "Pod", "namespace": "other"}});
        assert_eq!(
            fields(&validate_event(&ev)),
            vec!["involvedObject.namespace FieldValueInvalid"]
        );
        let ok = json!({"metadata": {"namespace": "web"}, "involvedObject": {"kind": "Pod", "namespace": "web"}});
        assert!(validate_event(&ok).is_empty());
        let new_style = json!({"metadata": {"namespace": "web"}, "eventTime": "2024-01-01T00:00:00.000000Z", "involvedObject": {"namespace": "web"}});
        assert_eq!(
            fields(&validate_event(&new_style)),
            vec![
                "reportingComponent FieldValueRequired",
                "reportingInstance FieldValueRequired",
                "action FieldValueRequired",
                "reason FieldValueRequired"
            ]
        );

        let mut lr = json!({"spec": {"limits": [{"type": "Container", "max": {"cpu": "2"}, "min": {"memory": "1Mi"}}]}});
        default_limitrange(&mut lr);
        assert_eq!(lr["spec"]["limits"][0]["default"], json!({"cpu": "2"}));
        assert_eq!(
            lr["spec"]["limits"][0]["defaultRequest"],
            json!({"cpu": "2", "memory": "1Mi"})
        );
    }
}
