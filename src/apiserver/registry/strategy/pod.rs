//! Pods and pod templates: upstream defaulting (`SetDefaults_Pod`, `SetDefaults_PodSpec`,
//! containers, probes, volumes), QoS class, and `ValidatePodSpec` /
//! `ValidatePodUpdate` for the common fields. Workload kinds reuse the template parts.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::util::{
    absent, arr, b, child, default_ptr, default_str, existing, get, i, items_mut, obj,
    parse_quantity, s, sem_eq, strip_nulls, unset_str,
};
use crate::api::status::Cause;
use crate::api::validation::{
    duplicate, forbidden, go_quote, inclusive_range_error, invalid, invalid_str, is_dns1123_label,
    is_dns1123_subdomain, is_env_var_name, is_qualified_name, is_valid_label_value,
    is_valid_port_name, is_valid_port_num, not_found, not_supported, required,
    validate_annotations, validate_labels,
};

// ---------------------------------------------------------------------------------------
// Defaulting.

/// Defaults a whole Pod (`SetDefaults_Pod` plus the default service account name) and
/// fills `status.phase` / `status.qosClass`. Priority, preemptionPolicy and the
/// not-ready/unreachable tolerations come from the admission plugins (`admission::priority`,
/// `admission::default_tolerations`), which run after defaulting, as upstream.
pub fn default_pod(pod: &mut Value) {
    let Some(spec) = child(pod, "spec") else {
        return;
    };
    default_pod_spec(spec);
    for key in ["containers", "initContainers"] {
        for c in items_mut(spec, key) {
            requests_from_limits(c);
        }
    }
    default_ptr(spec, "enableServiceLinks", json!(true));
    if b(spec, "hostNetwork") {
        for key in ["containers", "initContainers"] {
            for c in items_mut(spec, key) {
                for p in items_mut(c, "ports") {
                    if i(p, "hostPort").unwrap_or(0) == 0
                        && let Some(cp) = i(p, "containerPort")
                    {
                        p["hostPort"] = json!(cp);
                    }
                }
            }
        }
    }
    default_str(spec, "serviceAccountName", "default");
    default_str(spec, "serviceAccount", "default");
    let qos = qos_class(spec);
    if let Some(status) = child(pod, "status") {
        default_str(status, "phase", "Pending");
        default_str(status, "qosClass", qos);
    }
}

/// Requests default to limits for resources that have a limit but no request (pods only).
fn requests_from_limits(container: &mut Value) {
    let Some(resources) = child(container, "resources") else {
        return;
    };
    let Some(limits) = obj(resources, "limits").cloned() else {
        return;
    };
    let Some(requests) = child(resources, "requests").and_then(Value::as_object_mut) else {
        return;
    };
    for (k, v) in limits {
        requests.entry(k).or_insert(v);
    }
}

/// `SetDefaults_PodSpec` plus the container, probe and volume defaults (applies to pods
/// and to every pod template).
pub fn default_pod_spec(spec: &mut Value) {
    default_str(spec, "dnsPolicy", "ClusterFirst");
    default_str(spec, "restartPolicy", "Always");
    default_ptr(spec, "securityContext", json!({}));
    default_ptr(spec, "terminationGracePeriodSeconds", json!(30));
    default_str(spec, "schedulerName", "default-scheduler");
    // The v1 conversion mirrors the deprecated serviceAccount field.
    let sa = s(spec, "serviceAccountName").to_string();
    let deprecated = s(spec, "serviceAccount").to_string();
    if sa.is_empty() && !deprecated.is_empty() {
        spec["serviceAccountName"] = json!(deprecated);
    } else if !sa.is_empty() {
        spec["serviceAccount"] = json!(sa);
    }
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        for c in items_mut(spec, key) {
            default_container(c);
        }
    }
    for v in items_mut(spec, "volumes") {
        default_volume(v);
    }
}

fn default_container(c: &mut Value) {
    if unset_str(c, "imagePullPolicy") {
        let policy = if image_tag(s(c, "image")) == "latest" {
            "Always"
        } else {
            "IfNotPresent"
        };
        default_str(c, "imagePullPolicy", policy);
    }
    default_str(c, "terminationMessagePath", "/dev/termination-log");
    default_str(c, "terminationMessagePolicy", "File");
    default_ptr(c, "resources", json!({}));
    for p in items_mut(c, "ports") {
        default_str(p, "protocol", "TCP");
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = existing(c, &[probe]) {
            default_ptr(p, "timeoutSeconds", json!(1));
            default_ptr(p, "periodSeconds", json!(10));
            default_ptr(p, "successThreshold", json!(1));
            default_ptr(p, "failureThreshold", json!(3));
            default_handler(p);
        }
    }
    for hook in ["postStart", "preStop"] {
        if let Some(h) = existing(c, &["lifecycle", hook]) {
            default_handler(h);
        }
    }
    for e in items_mut(c, "env") {
        if let Some(f) = existing(e, &["valueFrom", "fieldRef"]) {
            default_str(f, "apiVersion", "v1");
        }
    }
}

fn default_handler(h: &mut Value) {
    if let Some(g) = existing(h, &["httpGet"]) {
        default_str(g, "path", "/");
        default_str(g, "scheme", "HTTP");
    }
}

/// The effective tag of an image reference: `latest` when there is neither tag nor digest.
fn image_tag(image: &str) -> &str {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let after_slash = name.rfind('/').map_or(0, |p| p + 1);
    match name[after_slash..].rfind(':') {
        Some(p) => &name[after_slash + p + 1..],
        None if digest.is_some() => "",
        None => "latest",
    }
}

const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "emptyDir",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "persistentVolumeClaim",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "downwardAPI",
    "fc",
    "azureFile",
    "configMap",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "projected",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "csi",
    "ephemeral",
    "image",
];

fn default_volume(v: &mut Value) {
    if !VOLUME_SOURCES.iter().any(|k| !absent(v, k)) {
        v["emptyDir"] = json!({});
    }
    for key in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(src) = existing(v, &[key]) {
            default_ptr(src, "defaultMode", json!(420));
        }
    }
    if let Some(hp) = existing(v, &["hostPath"]) {
        default_ptr(hp, "type", json!(""));
    }
    if let Some(d) = existing(v, &["downwardAPI"]) {
        default_downward_items(d);
    }
    if let Some(p) = existing(v, &["projected"]) {
        for src in items_mut(p, "sources") {
            if let Some(t) = existing(src, &["serviceAccountToken"]) {
                default_ptr(t, "expirationSeconds", json!(3600));
            }
            if let Some(d) = existing(src, &["downwardAPI"]) {
                default_downward_items(d);
            }
        }
    }
}

fn default_downward_items(d: &mut Value) {
    for item in items_mut(d, "items") {
        if let Some(f) = existing(item, &["fieldRef"]) {
            default_str(f, "apiVersion", "v1");
        }
    }
}

/// The pod's QoS class (`BestEffort`, `Burstable` or `Guaranteed`), as upstream computes it.
pub fn qos_class(spec: &Value) -> &'static str {
    let mut requests: Map<String, Value> = Map::new();
    let mut limits: Map<String, Value> = Map::new();
    let sum = |into: &mut Map<String, Value>, name: &str, q: i128| {
        let cur = into
            .get(name)
            .and_then(Value::as_str)
            .and_then(|v| v.parse::<i128>().ok())
            .unwrap_or(0);
        into.insert(
            name.to_string(),
            Value::String(cur.saturating_add(q).to_string()),
        );
    };
    let mut guaranteed = true;
    let containers = arr(spec, "containers")
        .iter()
        .chain(arr(spec, "initContainers"));
    for c in containers {
        let res = c.get("resources").unwrap_or(&Value::Null);
        for (name, q) in obj(res, "requests").into_iter().flatten() {
            if name != "cpu" && name != "memory" {
                continue;
            }
            let q = quantity_of(q);
            if q > 0 {
                sum(&mut requests, name, q);
            }
        }
        let mut found = BTreeSet::new();
        for (name, q) in obj(res, "limits").into_iter().flatten() {
            if name != "cpu" && name != "memory" {
                continue;
            }
            let q = quantity_of(q);
            if q > 0 {
                found.insert(name.as_str());
                sum(&mut limits, name, q);
            }
        }
        if !(found.contains("cpu") && found.contains("memory")) {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed && requests.iter().any(|(k, v)| limits.get(k) != Some(v)) {
        guaranteed = false;
    }
    if guaranteed && requests.len() == limits.len() {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// A quantity value (string or number) in nano-units; 0 when unparsable.
pub fn quantity_of(v: &Value) -> i128 {
    match v {
        Value::String(q) => parse_quantity(q).unwrap_or(0),
        Value::Number(n) => parse_quantity(&n.to_string()).unwrap_or(0),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------------------
// Validation.

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

/// Validates a Pod's spec (`spec.*` paths) plus pod-only rules.
pub fn validate_pod(pod: &Value) -> Vec<Cause> {
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let mut causes = validate_pod_spec(spec, "spec");
    for key in ["containers", "initContainers"] {
        for (idx, c) in arr(spec, key).iter().enumerate() {
            let image = s(c, "image");
            if !image.is_empty() && image.trim() != image {
                causes.push(invalid_str(
                    format!("spec.{key}[{idx}].image"),
                    image,
                    "must not have leading or trailing whitespace",
                ));
            }
        }
    }
    causes
}

/// Validates a pod template (`metadata` labels/annotations and `spec`) at `path`
/// (e.g. `spec.template`).
pub fn validate_pod_template(template: Option<&Value>, path: &str) -> Vec<Cause> {
    let Some(t) = template.filter(|t| !t.is_null()) else {
        return vec![required(path, "")];
    };
    let mut causes = Vec::new();
    let meta = t.get("metadata").unwrap_or(&Value::Null);
    // Upstream reports template label errors at `<path>.labels` (no `metadata`).
    causes.extend(validate_labels(
        meta.get("labels"),
        &format!("{path}.labels"),
    ));
    causes.extend(validate_annotations(
        meta.get("annotations"),
        &format!("{path}.annotations"),
    ));
    causes.extend(validate_pod_spec(
        t.get("spec").unwrap_or(&Value::Null),
        &format!("{path}.spec"),
    ));
    causes
}

/// `ValidatePodSpec` for the common fields, at `path` (`spec` or `spec.template.spec`).
pub fn validate_pod_spec(spec: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();

    // Volumes first: mounts refer to them.
    let mut volumes: BTreeSet<&str> = BTreeSet::new();
    for (idx, v) in arr(spec, "volumes").iter().enumerate() {
        let p = format!("{path}.volumes[{idx}].name");
        let name = s(v, "name");
        if name.is_empty() {
            causes.push(required(p, ""));
            continue;
        }
        for msg in is_dns1123_label(name) {
            causes.push(invalid_str(&p, name, &msg));
        }
        if !volumes.insert(name) {
            causes.push(duplicate(p, &go_quote(name)));
        }
    }

    let containers = arr(spec, "containers");
    if containers.is_empty() {
        causes.push(required(format!("{path}.containers"), ""));
    }
    let mut names: BTreeSet<&str> = BTreeSet::new();
    for (idx, c) in containers.iter().enumerate() {
        causes.extend(validate_container(
            c,
            &format!("{path}.containers[{idx}]"),
            &volumes,
            &mut names,
        ));
    }
    for (idx, c) in arr(spec, "initContainers").iter().enumerate() {
        causes.extend(validate_container(
            c,
            &format!("{path}.initContainers[{idx}]"),
            &volumes,
            &mut names,
        ));
    }

    let restart = s(spec, "restartPolicy");
    if !absent(spec, "restartPolicy") && !["Always", "OnFailure", "Never"].contains(&restart) {
        if restart.is_empty() {
            causes.push(required(format!("{path}.restartPolicy"), ""));
        } else {
            causes.push(not_supported(
                format!("{path}.restartPolicy"),
                restart,
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
    let dns = s(spec, "dnsPolicy");
    const DNS: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
    if !dns.is_empty() && !DNS.contains(&dns) {
        causes.push(not_supported(format!("{path}.dnsPolicy"), dns, DNS));
    }
    if let Some(ads) = i(spec, "activeDeadlineSeconds")
        && !(1..=i64::from(u32::MAX)).contains(&ads)
    {
        causes.push(invalid(
            format!("{path}.activeDeadlineSeconds"),
            &json!(ads),
            &inclusive_range_error(1, i64::from(u32::MAX)),
        ));
    }
    for (key, what) in [
        ("nodeName", "nodeName"),
        ("serviceAccountName", "serviceAccountName"),
    ] {
        let v = s(spec, key);
        if !v.is_empty() {
            for msg in is_dns1123_subdomain(v) {
                causes.push(invalid_str(format!("{path}.{what}"), v, &msg));
            }
        }
    }
    causes.extend(validate_labels(
        spec.get("nodeSelector"),
        &format!("{path}.nodeSelector"),
    ));
    causes.extend(validate_tolerations(
        arr(spec, "tolerations"),
        &format!("{path}.tolerations"),
    ));
    causes
}

fn validate_container<'a>(
    c: &'a Value,
    path: &str,
    volumes: &BTreeSet<&str>,
    names: &mut BTreeSet<&'a str>,
) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = s(c, "name");
    if name.is_empty() {
        causes.push(required(format!("{path}.name"), ""));
    } else {
        for msg in is_dns1123_label(name) {
            causes.push(invalid_str(format!("{path}.name"), name, &msg));
        }
        if !names.insert(name) {
            causes.push(duplicate(format!("{path}.name"), &go_quote(name)));
        }
    }
    if s(c, "image").is_empty() {
        causes.push(required(format!("{path}.image"), ""));
    }

    let mut port_names: BTreeSet<&str> = BTreeSet::new();
    for (idx, p) in arr(c, "ports").iter().enumerate() {
        let pp = format!("{path}.ports[{idx}]");
        let pname = s(p, "name");
        if !pname.is_empty() {
            for msg in is_valid_port_name(pname) {
                causes.push(invalid_str(format!("{pp}.name"), pname, &msg));
            }
            if !port_names.insert(pname) {
                causes.push(duplicate(format!("{pp}.name"), &go_quote(pname)));
            }
        }
        let cp = i(p, "containerPort").unwrap_or(0);
        if cp == 0 {
            causes.push(required(format!("{pp}.containerPort"), ""));
        } else {
            for msg in is_valid_port_num(cp) {
                causes.push(invalid(format!("{pp}.containerPort"), &json!(cp), &msg));
            }
        }
        let hp = i(p, "hostPort").unwrap_or(0);
        if hp != 0 {
            for msg in is_valid_port_num(hp) {
                causes.push(invalid(format!("{pp}.hostPort"), &json!(hp), &msg));
            }
        }
        let proto = s(p, "protocol");
        if !absent(p, "protocol") && !PROTOCOLS.contains(&proto) {
            if proto.is_empty() {
                causes.push(required(format!("{pp}.protocol"), ""));
            } else {
                causes.push(not_supported(format!("{pp}.protocol"), proto, PROTOCOLS));
            }
        }
    }

    for (idx, e) in arr(c, "env").iter().enumerate() {
        let ep = format!("{path}.env[{idx}].name");
        let en = s(e, "name");
        if en.is_empty() {
            causes.push(required(ep, ""));
        } else {
            for msg in is_env_var_name(en) {
                causes.push(invalid_str(&ep, en, &msg));
            }
        }
    }

    for (idx, m) in arr(c, "volumeMounts").iter().enumerate() {
        let mp = format!("{path}.volumeMounts[{idx}]");
        let mn = s(m, "name");
        if mn.is_empty() {
            causes.push(required(format!("{mp}.name"), ""));
        } else if !volumes.contains(mn) {
            causes.push(not_found(format!("{mp}.name"), &go_quote(mn)));
        }
        if s(m, "mountPath").is_empty() {
            causes.push(required(format!("{mp}.mountPath"), ""));
        }
    }

    let pull = s(c, "imagePullPolicy");
    const PULL: &[&str] = &["Always", "IfNotPresent", "Never"];
    if !pull.is_empty() && !PULL.contains(&pull) {
        causes.push(not_supported(format!("{path}.imagePullPolicy"), pull, PULL));
    }
    let tmp = s(c, "terminationMessagePolicy");
    if !tmp.is_empty() && tmp != "File" && tmp != "FallbackToLogsOnError" {
        causes.push(not_supported(
            format!("{path}.terminationMessagePolicy"),
            tmp,
            &["File", "FallbackToLogsOnError"],
        ));
    }
    causes.extend(validate_resources(
        c.get("resources"),
        &format!("{path}.resources"),
    ));
    causes
}

fn validate_resources(res: Option<&Value>, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(res) = res else {
        return causes;
    };
    let limits = obj(res, "limits");
    for (kind, list) in [("limits", limits), ("requests", obj(res, "requests"))] {
        for (name, q) in list.into_iter().flatten() {
            if quantity_of(q) < 0 {
                causes.push(invalid(
                    format!("{path}.{kind}[{name}]"),
                    q,
                    "must be greater than or equal to 0",
                ));
            }
        }
    }
    for (name, req) in obj(res, "requests").into_iter().flatten() {
        if let Some(lim) = limits.and_then(|l| l.get(name))
            && quantity_of(req) > quantity_of(lim)
        {
            let show = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
            causes.push(invalid(
                format!("{path}.requests[{name}]"),
                &Value::String(show(req)),
                &format!(
                    "must be less than or equal to {name} limit of {}",
                    show(lim)
                ),
            ));
        }
    }
    causes
}

fn validate_tolerations(list: &[Value], path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (idx, t) in list.iter().enumerate() {
        let p = format!("{path}[{idx}]");
        let key = s(t, "key");
        if !key.is_empty() {
            for msg in is_qualified_name(key) {
                causes.push(invalid_str(format!("{p}.key"), key, &msg));
            }
        }
        let op = s(t, "operator");
        if key.is_empty() && op != "Exists" {
            causes.push(invalid_str(
                format!("{p}.operator"),
                op,
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            ));
        }
        let effect = s(t, "effect");
        if !absent(t, "tolerationSeconds") && effect != "NoExecute" {
            causes.push(invalid_str(
                format!("{p}.effect"),
                effect,
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ));
        }
        match op {
            "Equal" | "" => {
                let errs = is_valid_label_value(s(t, "value"));
                if !errs.is_empty() {
                    causes.push(invalid_str(
                        format!("{p}.operator"),
                        s(t, "value"),
                        &errs.join(";"),
                    ));
                }
            }
            "Exists" => {
                if !s(t, "value").is_empty() {
                    causes.push(invalid(
                        format!("{p}.operator"),
                        t,
                        "value must be empty when `operator` is 'Exists'",
                    ));
                }
            }
            other => causes.push(not_supported(
                format!("{p}.operator"),
                other,
                &["Equal", "Exists"],
            )),
        }
        if !effect.is_empty() && !TAINT_EFFECTS.contains(&effect) {
            causes.push(not_supported(format!("{p}.effect"), effect, TAINT_EFFECTS));
        }
    }
    causes
}

/// Valid taint effects, in upstream's order.
pub const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

const POD_UPDATE_MSG: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// `ValidatePodUpdate`: the spec is immutable except images, activeDeadlineSeconds
/// (may only shrink), added tolerations and removed scheduling gates.
pub fn validate_pod_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = validate_pod(new);
    let new_spec = strip_nulls(new.get("spec").unwrap_or(&Value::Null));
    let old_spec = strip_nulls(old.get("spec").unwrap_or(&Value::Null));

    match (
        i(&new_spec, "activeDeadlineSeconds"),
        i(&old_spec, "activeDeadlineSeconds"),
    ) {
        (None, Some(_)) => causes.push(invalid(
            "spec.activeDeadlineSeconds",
            &Value::Null,
            "must not update from a positive integer to nil value",
        )),
        (Some(n), Some(o)) if n > o => causes.push(invalid(
            "spec.activeDeadlineSeconds",
            &json!(n),
            "must be less than or equal to previous value",
        )),
        _ => {}
    }

    let mut munged = new_spec.clone();
    for key in ["containers", "initContainers"] {
        let old_list = arr(&old_spec, key);
        if let Some(list) = munged.get_mut(key).and_then(Value::as_array_mut)
            && list.len() == old_list.len()
        {
            for (n, o) in list.iter_mut().zip(old_list) {
                if let (Some(m), Some(img)) = (n.as_object_mut(), o.get("image")) {
                    m.insert("image".into(), img.clone());
                }
            }
        }
    }
    copy_field(&mut munged, &old_spec, "activeDeadlineSeconds");
    let old_tol = arr(&old_spec, "tolerations");
    if old_tol
        .iter()
        .all(|t| arr(&new_spec, "tolerations").contains(t))
    {
        copy_field(&mut munged, &old_spec, "tolerations");
    }
    let old_gates = arr(&old_spec, "schedulingGates");
    if arr(&new_spec, "schedulingGates")
        .iter()
        .all(|g| old_gates.contains(g))
    {
        copy_field(&mut munged, &old_spec, "schedulingGates");
    }
    if i(&old_spec, "terminationGracePeriodSeconds").is_some_and(|t| t < 0)
        && i(&new_spec, "terminationGracePeriodSeconds") == Some(1)
    {
        copy_field(&mut munged, &old_spec, "terminationGracePeriodSeconds");
    }
    if !sem_eq(Some(&munged), Some(&old_spec)) {
        causes.push(forbidden(
            "spec",
            &format!("{POD_UPDATE_MSG}\n{}", spec_diff(&old_spec, &munged)),
        ));
    }
    causes
}

fn copy_field(into: &mut Value, from: &Value, key: &str) {
    if let Some(m) = into.as_object_mut() {
        match from.get(key) {
            Some(v) => {
                m.insert(key.to_string(), v.clone());
            }
            None => {
                m.remove(key);
            }
        }
    }
}

/// A compact, line-per-field diff of two specs (upstream prints a `cmp.Diff`).
pub fn spec_diff(old: &Value, new: &Value) -> String {
    let mut keys: BTreeSet<&String> = BTreeSet::new();
    keys.extend(old.as_object().into_iter().flat_map(|m| m.keys()));
    keys.extend(new.as_object().into_iter().flat_map(|m| m.keys()));
    let mut out = String::from("  core.PodSpec{\n");
    for k in keys {
        let (o, n) = (old.get(k.as_str()), new.get(k.as_str()));
        if !sem_eq(o, n) {
            if let Some(o) = o {
                out.push_str(&format!("- \t{k}: {o},\n"));
            }
            if let Some(n) = n {
                out.push_str(&format!("+ \t{k}: {n},\n"));
            }
        }
    }
    out.push_str("  }\n");
    out
}

/// Template-level rule for controllers whose pods must always restart (Deployment,
/// ReplicaSet, StatefulSet, DaemonSet, ReplicationController).
pub fn validate_template_restart_always(template: Option<&Value>, path: &str) -> Vec<Cause> {
    let policy = template.map_or("", |t| s_at_spec(t, "restartPolicy"));
    if !policy.is_empty() && policy != "Always" {
        return vec![not_supported(
            format!("{path}.spec.restartPolicy"),
            policy,
            &["Always"],
        )];
    }
    Vec::new()
}

fn s_at_spec<'a>(t: &'a Value, key: &str) -> &'a str {
    get(t, &["spec", key]).and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(c: &[Cause]) -> Vec<(String, String)> {
        c.iter()
            .map(|c| (c.field.clone(), c.reason.clone()))
            .collect()
    }

    #[test]
    fn pod_defaults() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}],
             "livenessProbe": {"httpGet": {"port": 80}}, "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
            {"name": "b", "image": "nginx:1.25", "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
            {"name": "c", "image": "registry:5000/app@sha256:abc"},
            {"name": "d", "image": "registry:5000/app:latest", "imagePullPolicy": "Never"}],
            "volumes": [{"name": "v"}, {"name": "s", "secret": {"secretName": "x"}}, {"name": "h", "hostPath": {"path": "/x"}}]}});
        default_pod(&mut pod);
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["securityContext"], json!({}));
        assert_eq!(spec["enableServiceLinks"], true);
        // Set by admission (Priority, DefaultTolerationSeconds), not by defaulting.
        assert!(spec.get("priority").is_none());
        assert!(spec.get("preemptionPolicy").is_none());
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(spec["serviceAccount"], "default");
        assert!(spec.get("tolerations").is_none());
        let c = &spec["containers"];
        assert_eq!(c[0]["imagePullPolicy"], "Always");
        assert_eq!(c[1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c[2]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c[3]["imagePullPolicy"], "Never");
        assert_eq!(c[0]["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c[0]["terminationMessagePolicy"], "File");
        assert_eq!(c[0]["ports"][0]["protocol"], "TCP");
        assert_eq!(
            c[0]["resources"]["requests"],
            json!({"cpu": "1", "memory": "1Gi"})
        );
        assert_eq!(c[1]["resources"], json!({}));
        assert_eq!(c[0]["livenessProbe"]["timeoutSeconds"], 1);
        assert_eq!(c[0]["livenessProbe"]["httpGet"]["path"], "/");
        assert_eq!(c[0]["livenessProbe"]["httpGet"]["scheme"], "HTTP");
        assert_eq!(c[1]["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
        assert_eq!(spec["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(spec["volumes"][1]["secret"]["defaultMode"], 420);
        assert_eq!(spec["volumes"][2]["hostPath"]["type"], "");
        assert_eq!(pod["status"]["phase"], "Pending");
        assert_eq!(pod["status"]["qosClass"], "Burstable");

        // Idempotent.
        let again = {
            let mut p = pod.clone();
            default_pod(&mut p);
            p
        };
        assert_eq!(again, pod);
    }

    #[test]
    fn qos() {
        let cases: &[(Value, &str)] = &[
            (json!({"containers": [{"name": "a"}]}), "BestEffort"),
            (
                json!({"containers": [{"resources": {"requests": {"cpu": "100m"}}}]}),
                "Burstable",
            ),
            (
                json!({"containers": [{"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1000m", "memory": "1Gi"}}}]}),
                "Guaranteed",
            ),
            (
                json!({"containers": [{"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}}}]}),
                "Burstable",
            ),
            (
                json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}},
                                      {"resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1"}}}]}),
                "Burstable",
            ),
            (
                json!({"containers": [{"resources": {"requests": {"nvidia.com/gpu": "1"}}}]}),
                "BestEffort",
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(qos_class(spec), *want, "{spec}");
        }
    }

    #[test]
    fn pod_validation() {
        let cases: &[(Value, &[(&str, &str)])] = &[
            (
                json!({"spec": {"containers": [{"name": "a", "image": "x"}]}}),
                &[],
            ),
            (
                json!({"spec": {}}),
                &[("spec.containers", "FieldValueRequired")],
            ),
            (
                json!({"spec": {"containers": [{"name": "Bad_Name", "image": ""}]}}),
                &[
                    ("spec.containers[0].name", "FieldValueInvalid"),
                    ("spec.containers[0].image", "FieldValueRequired"),
                ],
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "a", "image": "y"}]}}),
                &[("spec.containers[1].name", "FieldValueDuplicate")],
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 70000, "protocol": "ICMP"}]}]}}),
                &[
                    (
                        "spec.containers[0].ports[0].containerPort",
                        "FieldValueInvalid",
                    ),
                    (
                        "spec.containers[0].ports[0].protocol",
                        "FieldValueNotSupported",
                    ),
                ],
            ),
            (
                json!({"spec": {"restartPolicy": "Sometimes", "containers": [{"name": "a", "image": "x"}]}}),
                &[("spec.restartPolicy", "FieldValueNotSupported")],
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "image": "x", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}]}}),
                &[(
                    "spec.containers[0].volumeMounts[0].name",
                    "FieldValueNotFound",
                )],
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "image": " x"}]}}),
                &[("spec.containers[0].image", "FieldValueInvalid")],
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "image": "x", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}]}}),
                &[(
                    "spec.containers[0].resources.requests[cpu]",
                    "FieldValueInvalid",
                )],
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "image": "x"}], "tolerations": [{"operator": "Equal", "value": "x"}]}}),
                &[("spec.tolerations[0].operator", "FieldValueInvalid")],
            ),
        ];
        for (pod, want) in cases {
            let got = reasons(&validate_pod(pod));
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            assert_eq!(got, want, "{pod}");
        }
        let c = validate_pod(
            &json!({"spec": {"restartPolicy": "Sometimes", "containers": [{"name": "a", "image": "x"}]}}),
        );
        assert_eq!(
            c[0].message,
            "Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""
        );
        let c = validate_pod(
            &json!({"spec": {"containers": [{"name": "a", "image": "x", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}]}}),
        );
        assert_eq!(
            c[0].message,
            "Invalid value: \"2\": must be less than or equal to cpu limit of 1"
        );
    }

    #[test]
    fn pod_update() {
        let mut old = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}], "activeDeadlineSeconds": 100,
            "tolerations": [{"key": "k", "operator": "Exists"}]}});
        default_pod(&mut old);
        let mut ok = old.clone();
        ok["spec"]["containers"][0]["image"] = json!("x:2");
        ok["spec"]["activeDeadlineSeconds"] = json!(50);
        ok["spec"]["tolerations"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": "j", "operator": "Exists"}));
        assert!(
            validate_pod_update(&ok, &old).is_empty(),
            "{:?}",
            validate_pod_update(&ok, &old)
        );

        let mut bad = old.clone();
        bad["spec"]["containers"][0]["name"] = json!("b");
        let c = validate_pod_update(&bad, &old);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, "spec");
        assert!(
            c[0].message
                .starts_with("Forbidden: pod updates may not change fields other than")
        );

        let mut longer = old.clone();
        longer["spec"]["activeDeadlineSeconds"] = json!(200);
        assert_eq!(
            validate_pod_update(&longer, &old)[0].field,
            "spec.activeDeadlineSeconds"
        );

        let mut removed = old.clone();
        removed["spec"]["tolerations"] = json!([]);
        assert_eq!(validate_pod_update(&removed, &old)[0].field, "spec");
    }

    #[test]
    fn templates() {
        let t = json!({"metadata": {"labels": {"app": "-bad"}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "x"}]}});
        let c = validate_pod_template(Some(&t), "spec.template");
        assert_eq!(
            reasons(&c),
            vec![(
                "spec.template.labels".to_string(),
                "FieldValueInvalid".to_string()
            )]
        );
        let c = validate_template_restart_always(Some(&t), "spec.template");
        assert_eq!(c[0].field, "spec.template.spec.restartPolicy");
        assert_eq!(
            c[0].message,
            "Unsupported value: \"Never\": supported values: \"Always\""
        );
        assert_eq!(
            validate_pod_template(None, "spec.template")[0].reason,
            "FieldValueRequired"
        );
        let mut spec = json!({"containers": [{"name": "a", "image": "x"}]});
        default_pod_spec(&mut spec);
        assert!(spec.get("enableServiceLinks").is_none());
        assert!(spec.get("priority").is_none());
    }
}
