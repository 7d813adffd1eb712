//! Resource accounting shared by the ResourceQuota admission plugin (apiserver) and the
//! quota controller (controllers): exact resource [`Quantity`] arithmetic with upstream's
//! canonical printing, resource lists, and the usage an object charges against a quota
//! (upstream's quota evaluators for pods, services, persistent volume claims and generic
//! object counts), including quota scopes.
//!
//! Pure functions over `serde_json::Value` objects; no IO. Depends on nothing above `api`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

/// How a quantity prints (upstream's `resource.Format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Decimal SI suffixes (`m`, `k`, `M`, ...).
    #[default]
    DecimalSI,
    /// Binary SI suffixes (`Ki`, `Mi`, ...).
    BinarySI,
    /// Decimal exponents (`1e3`).
    DecimalExponent,
}

/// An exact resource quantity in nano-units (so CPU `1` is 10^9, `100m` is 10^8).
#[derive(Debug, Clone, Copy, Default)]
pub struct Quantity {
    /// The value in nano-units.
    pub nanos: i128,
    /// How it prints.
    pub format: Format,
}

const NANO: i128 = 1_000_000_000;

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl Quantity {
    /// A whole count (`pods: 1`).
    pub fn count(n: i64) -> Quantity {
        Quantity {
            nanos: i128::from(n) * NANO,
            format: Format::DecimalSI,
        }
    }

    /// Zero, printed as `0`.
    pub fn zero() -> Quantity {
        Quantity::default()
    }

    /// Parses `500m`, `1.5`, `64Mi`, `1e3`, ... (None when malformed).
    pub fn parse(q: &str) -> Option<Quantity> {
        let q = q.trim();
        let bytes = q.as_bytes();
        let mut pos = 0;
        let mut negative = false;
        if let Some(&c) = bytes.first()
            && (c == b'+' || c == b'-')
        {
            negative = c == b'-';
            pos = 1;
        }
        let start = pos;
        while pos < bytes.len() && (bytes[pos].is_ascii_digit() || bytes[pos] == b'.') {
            pos += 1;
        }
        let number = &q[start..pos];
        let suffix = &q[pos..];
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return None;
        }
        let (binary, exp10, format): (u32, i32, Format) = match suffix {
            "" => (0, 0, Format::DecimalSI),
            "Ki" => (10, 0, Format::BinarySI),
            "Mi" => (20, 0, Format::BinarySI),
            "Gi" => (30, 0, Format::BinarySI),
            "Ti" => (40, 0, Format::BinarySI),
            "Pi" => (50, 0, Format::BinarySI),
            "Ei" => (60, 0, Format::BinarySI),
            "n" => (0, -9, Format::DecimalSI),
            "u" => (0, -6, Format::DecimalSI),
            "m" => (0, -3, Format::DecimalSI),
            "k" => (0, 3, Format::DecimalSI),
            "M" => (0, 6, Format::DecimalSI),
            "G" => (0, 9, Format::DecimalSI),
            "T" => (0, 12, Format::DecimalSI),
            "P" => (0, 15, Format::DecimalSI),
            "E" => (0, 18, Format::DecimalSI),
            other => {
                let exp = other.strip_prefix(['e', 'E'])?.parse::<i32>().ok()?;
                (0, exp, Format::DecimalExponent)
            }
        };
        let mut mantissa: i128 = 0;
        for c in int_part.bytes().chain(frac_part.bytes()) {
            mantissa = mantissa
                .checked_mul(10)?
                .checked_add(i128::from(c - b'0'))?;
        }
        let frac_len = i32::try_from(frac_part.len()).ok()?;
        let mut value = mantissa.checked_mul(1i128 << binary)?;
        let scale = exp10 + 9 - frac_len;
        if scale >= 0 {
            value = value.checked_mul(10i128.checked_pow(u32::try_from(scale).ok()?)?)?;
        } else {
            let div = 10i128.checked_pow(u32::try_from(-scale).ok()?)?;
            // Sub-nano precision rounds up, as upstream.
            value = (value + div - 1) / div;
        }
        Some(Quantity {
            nanos: if negative { -value } else { value },
            format,
        })
    }

    /// Parses a JSON quantity (string or number).
    pub fn from_json(v: &Value) -> Option<Quantity> {
        match v {
            Value::String(s) => Quantity::parse(s),
            Value::Number(n) => Quantity::parse(&n.to_string()),
            _ => None,
        }
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// The sum, printed in this quantity's format (upstream's `Add` keeps the receiver's;
    /// adding to zero takes the other's).
    pub fn plus(self, other: Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_add(other.nanos),
            format: if self.is_zero() {
                other.format
            } else {
                self.format
            },
        }
    }

    /// The difference, in this quantity's format.
    pub fn minus(self, other: Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_sub(other.nanos),
            format: self.format,
        }
    }

    /// The value in whole base units, rounded up (upstream's `Value()`).
    pub fn value(&self) -> i128 {
        let v = self.nanos / NANO;
        if self.nanos % NANO > 0 { v + 1 } else { v }
    }

    /// The value in milli-units, rounded up (upstream's `MilliValue()`).
    pub fn milli_value(&self) -> i128 {
        let v = self.nanos / 1_000_000;
        if self.nanos % 1_000_000 > 0 { v + 1 } else { v }
    }

    /// The same value in another format.
    pub fn with_format(self, format: Format) -> Quantity {
        Quantity { format, ..self }
    }
}

impl fmt::Display for Quantity {
    /// Upstream's canonical form: the largest suffix that keeps the number whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let sign = if self.nanos < 0 { "-" } else { "" };
        let abs = self.nanos.unsigned_abs();
        let whole = abs.is_multiple_of(NANO as u128);
        if self.format == Format::BinarySI && whole && abs / (NANO as u128) >= 1024 {
            let mut n = abs / (NANO as u128);
            let mut i = 0;
            const SUFFIX: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
            while i < 6 && n.is_multiple_of(1024) {
                n /= 1024;
                i += 1;
            }
            return write!(f, "{sign}{n}{}", SUFFIX[i]);
        }
        // Decimal: exponent (of 10, relative to nano) a multiple of 3.
        let mut n = abs;
        let mut exp: i32 = -9;
        while exp < 18 && n.is_multiple_of(1000) {
            n /= 1000;
            exp += 3;
        }
        if self.format == Format::DecimalExponent {
            return if exp == 0 {
                write!(f, "{sign}{n}")
            } else {
                write!(f, "{sign}{n}e{exp}")
            };
        }
        let suffix = match exp {
            -9 => "n",
            -6 => "u",
            -3 => "m",
            0 => "",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            _ => "E",
        };
        write!(f, "{sign}{n}{suffix}")
    }
}

/// Resource name → quantity, sorted by name.
pub type ResourceList = BTreeMap<String, Quantity>;

/// Parses a JSON map of quantities (unparsable entries are skipped).
pub fn resource_list(v: &Value) -> ResourceList {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, q)| Quantity::from_json(q).map(|q| (k.clone(), q)))
        .collect()
}

/// A resource list as a JSON map of canonical quantity strings.
pub fn to_json(list: &ResourceList) -> Value {
    Value::Object(
        list.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
            .collect::<Map<String, Value>>(),
    )
}

/// `a + b` (keys of either; the format of the first seen).
pub fn add(a: &ResourceList, b: &ResourceList) -> ResourceList {
    let mut out = a.clone();
    for (k, v) in b {
        out.entry(k.clone())
            .and_modify(|q| *q = q.plus(*v))
            .or_insert(*v);
    }
    out
}

/// `a - b` for the keys of `a`, never below zero.
pub fn subtract_non_negative(a: &ResourceList, b: &ResourceList) -> ResourceList {
    a.iter()
        .map(|(k, v)| {
            let d = match b.get(k) {
                Some(o) => v.minus(*o),
                None => *v,
            };
            let d = if d.nanos < 0 {
                Quantity::zero().with_format(v.format)
            } else {
                d
            };
            (k.clone(), d)
        })
        .collect()
}

/// Only the entries whose names are in `names`.
pub fn mask<'a>(list: &ResourceList, names: impl IntoIterator<Item = &'a String>) -> ResourceList {
    let keep: BTreeSet<&String> = names.into_iter().collect();
    list.iter()
        .filter(|(k, _)| keep.contains(k))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// Whether two lists have the same keys and values.
pub fn equals(a: &ResourceList, b: &ResourceList) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k) == Some(v))
}

/// `k=v,k2=v2` (sorted), as upstream prints quota amounts in errors.
pub fn pretty(list: &ResourceList) -> String {
    list.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

// ---------------------------------------------------------------------------------------
// Pods.

/// The resources whose quota requires every container to state a value.
pub const POD_VALIDATION_RESOURCES: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

fn container_lists(pod: &Value, list: &str) -> Vec<(String, ResourceList, ResourceList)> {
    pod["spec"][list]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_string(),
                resource_list(&c["resources"]["requests"]),
                resource_list(&c["resources"]["limits"]),
            )
        })
        .collect()
}

fn max_into(acc: &mut ResourceList, other: &ResourceList) {
    for (k, v) in other {
        match acc.get_mut(k) {
            Some(q) if *q >= *v => {}
            Some(q) => *q = *v,
            None => {
                acc.insert(k.clone(), *v);
            }
        }
    }
}

/// The pod's effective requests (`requests == true`) or limits: the sum over app
/// containers (and restartable init containers), at least each regular init container's
/// value plus the sidecars started before it, plus `spec.overhead`.
fn pod_aggregate(pod: &Value, requests: bool) -> ResourceList {
    let pick = |(_, r, l): &(String, ResourceList, ResourceList)| {
        if requests { r.clone() } else { l.clone() }
    };
    let mut sum = ResourceList::new();
    for c in container_lists(pod, "containers") {
        sum = add(&sum, &pick(&c));
    }
    let mut sidecars = ResourceList::new();
    let mut init_max = ResourceList::new();
    let inits = pod["spec"]["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (c, raw) in container_lists(pod, "initContainers")
        .iter()
        .zip(inits.iter())
    {
        let own = pick(c);
        if raw["restartPolicy"].as_str() == Some("Always") {
            sidecars = add(&sidecars, &own);
            max_into(&mut init_max, &sidecars);
        } else {
            max_into(&mut init_max, &add(&own, &sidecars));
        }
    }
    let mut out = add(&sum, &sidecars);
    max_into(&mut out, &init_max);
    if requests || !out.is_empty() {
        let overhead = resource_list(&pod["spec"]["overhead"]);
        if !overhead.is_empty() {
            // Limits only gain overhead for resources that have a limit.
            let overhead = if requests {
                overhead
            } else {
                mask(&overhead, out.keys().cloned().collect::<Vec<_>>().iter())
            };
            out = add(&out, &overhead);
        }
    }
    out
}

/// The pod's aggregate requests (upstream's `PodRequests`).
pub fn pod_requests(pod: &Value) -> ResourceList {
    pod_aggregate(pod, true)
}

/// The pod's aggregate limits (upstream's `PodLimits`).
pub fn pod_limits(pod: &Value) -> ResourceList {
    pod_aggregate(pod, false)
}

fn is_extended_resource(name: &str) -> bool {
    // Fully qualified, not in the kubernetes.io namespace, no requests. prefix.
    name.contains('/')
        && !name.starts_with("requests.")
        && !name.contains("kubernetes.io/")
        && !name.starts_with("kubernetes.io")
}

/// Compute usage of requests/limits (upstream's `podComputeUsageHelper`): `pods`, `cpu`
/// and `requests.cpu`, `limits.cpu`, the same for memory and ephemeral-storage,
/// hugepages and extended resources.
pub fn compute_usage(requests: &ResourceList, limits: &ResourceList) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert("pods".into(), Quantity::count(1));
    for r in ["cpu", "memory", "ephemeral-storage"] {
        if let Some(q) = requests.get(r) {
            out.insert(r.into(), *q);
            out.insert(format!("requests.{r}"), *q);
        }
        if let Some(q) = limits.get(r) {
            out.insert(format!("limits.{r}"), *q);
        }
    }
    for (k, q) in requests {
        if k.starts_with("hugepages-") {
            out.insert(k.clone(), *q);
            out.insert(format!("requests.{k}"), *q);
        } else if is_extended_resource(k) {
            out.insert(format!("requests.{k}"), *q);
        }
    }
    out
}

/// Whether the pod still counts against compute quota (upstream's `QuotaV1Pod`): not in
/// a terminal phase, and not past its deletion grace period. `now` is Unix seconds.
pub fn pod_is_active(pod: &Value, now: i64) -> bool {
    if matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    ) {
        return false;
    }
    if let (Some(ts), Some(grace)) = (
        pod["metadata"]["deletionTimestamp"].as_str(),
        pod["metadata"]["deletionGracePeriodSeconds"].as_i64(),
    ) && let Ok(t) = ts.parse::<jiff::Timestamp>()
        && now > t.as_second() + grace
    {
        return false;
    }
    true
}

/// What a pod charges: `count/pods` always, compute resources while it is active.
pub fn pod_usage(pod: &Value, now: i64) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert("count/pods".into(), Quantity::count(1));
    if !pod_is_active(pod, now) {
        return out;
    }
    add(&out, &compute_usage(&pod_requests(pod), &pod_limits(pod)))
}

/// Checks that every container states the compute resources `required` names (the
/// intersection with [`POD_VALIDATION_RESOURCES`] matters): `Err("must specify
/// limits.cpu for: a,b; ...")` as upstream otherwise.
pub fn pod_constraints(pod: &Value, required: &BTreeSet<String>) -> Result<(), String> {
    let required: BTreeSet<&str> = required
        .iter()
        .map(String::as_str)
        .filter(|r| POD_VALIDATION_RESOURCES.contains(r))
        .collect();
    if required.is_empty() {
        return Ok(());
    }
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for list in ["containers", "initContainers"] {
        for (name, req, lim) in container_lists(pod, list) {
            let have = compute_usage(&req, &lim);
            for r in &required {
                if !have.contains_key(*r) {
                    missing.entry(r).or_default().insert(name.clone());
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| {
            format!(
                "{r} for: {}",
                names.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    Err(format!("must specify {}", parts.join("; ")))
}

/// Whether the pod's QoS class is BestEffort (no cpu/memory request or limit anywhere).
pub fn pod_is_best_effort(pod: &Value) -> bool {
    ["containers", "initContainers"].iter().all(|list| {
        container_lists(pod, list).iter().all(|(_, r, l)| {
            ["cpu", "memory"].iter().all(|k| {
                r.get(*k).is_none_or(Quantity::is_zero) && l.get(*k).is_none_or(Quantity::is_zero)
            })
        })
    })
}

/// The pod's QoS class (`Guaranteed`, `Burstable`, `BestEffort`) from the cpu/memory
/// requests and limits of all its containers, as upstream computes `status.qosClass`.
pub fn pod_qos_class(pod: &Value) -> &'static str {
    let mut requests = ResourceList::new();
    let mut limits = ResourceList::new();
    let mut guaranteed = true;
    for list in ["initContainers", "containers"] {
        for (_, req, lim) in container_lists(pod, list) {
            let compute = |l: &ResourceList| -> ResourceList {
                l.iter()
                    .filter(|(k, v)| matches!(k.as_str(), "cpu" | "memory") && !v.is_zero())
                    .map(|(k, v)| (k.clone(), *v))
                    .collect()
            };
            let (req, lim) = (compute(&req), compute(&lim));
            if !(lim.contains_key("cpu") && lim.contains_key("memory")) {
                guaranteed = false;
            }
            requests = add(&requests, &req);
            limits = add(&limits, &lim);
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed
        && requests.len() == limits.len()
        && requests.iter().all(|(k, v)| limits.get(k) == Some(v))
    {
        return "Guaranteed";
    }
    "Burstable"
}

/// One scope selector requirement of a quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRequirement {
    /// `Terminating`, `NotTerminating`, `BestEffort`, `NotBestEffort`, `PriorityClass`,
    /// `CrossNamespacePodAffinity`.
    pub scope: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: String,
    /// Values for `In`/`NotIn`.
    pub values: Vec<String>,
}

/// A quota's scopes: `spec.scopes` (as `Exists`) and `spec.scopeSelector`.
pub fn quota_scopes(quota: &Value) -> Vec<ScopeRequirement> {
    let mut out: Vec<ScopeRequirement> = quota["spec"]["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| ScopeRequirement {
            scope: s.to_string(),
            operator: "Exists".into(),
            values: vec![],
        })
        .collect();
    for e in quota["spec"]["scopeSelector"]["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push(ScopeRequirement {
            scope: e["scopeName"].as_str().unwrap_or("").to_string(),
            operator: e["operator"].as_str().unwrap_or("").to_string(),
            values: e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        });
    }
    out
}

fn pod_has_cross_namespace_affinity(pod: &Value) -> bool {
    let aff = &pod["spec"]["affinity"];
    ["podAffinity", "podAntiAffinity"].iter().any(|kind| {
        let a = &aff[*kind];
        let req = a["requiredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .into_iter()
            .flatten();
        let pref = a["preferredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| &w["podAffinityTerm"]);
        req.chain(pref).any(|t| {
            t["namespaces"].as_array().is_some_and(|n| !n.is_empty())
                || t.get("namespaceSelector").is_some_and(|s| !s.is_null())
        })
    })
}

/// Whether a pod matches one scope requirement.
pub fn pod_matches_scope(pod: &Value, req: &ScopeRequirement) -> bool {
    let terminating = pod["spec"]["activeDeadlineSeconds"]
        .as_i64()
        .is_some_and(|d| d >= 0);
    match req.scope.as_str() {
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        "BestEffort" => pod_is_best_effort(pod),
        "NotBestEffort" => !pod_is_best_effort(pod),
        "CrossNamespacePodAffinity" => pod_has_cross_namespace_affinity(pod),
        "PriorityClass" => {
            let pc = pod["spec"]["priorityClassName"].as_str().unwrap_or("");
            match req.operator.as_str() {
                "In" => req.values.iter().any(|v| v == pc),
                "NotIn" => !req.values.iter().any(|v| v == pc),
                "Exists" => !pc.is_empty(),
                "DoesNotExist" => pc.is_empty(),
                _ => false,
            }
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Other kinds.

/// `count/<plural>` for the core group, `count/<plural>.<group>` otherwise.
pub fn object_count_name(group: &str, plural: &str) -> String {
    if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    }
}

/// The pre-`count/` names for core object counts.
fn legacy_count_name(group: &str, plural: &str) -> Option<&'static str> {
    if !group.is_empty() {
        return None;
    }
    match plural {
        "services" => Some("services"),
        "configmaps" => Some("configmaps"),
        "secrets" => Some("secrets"),
        "replicationcontrollers" => Some("replicationcontrollers"),
        "resourcequotas" => Some("resourcequotas"),
        "persistentvolumeclaims" => Some("persistentvolumeclaims"),
        _ => None,
    }
}

/// What a Service charges: counts, node ports (NodePort and LoadBalancer types) and
/// load balancers.
pub fn service_usage(svc: &Value) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert("count/services".into(), Quantity::count(1));
    out.insert("services".into(), Quantity::count(1));
    let ports = svc["spec"]["ports"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let (node_ports, lbs) = match svc["spec"]["type"].as_str() {
        Some("NodePort") => (ports.len(), 0),
        Some("LoadBalancer") => {
            let n = if svc["spec"]["allocateLoadBalancerNodePorts"].as_bool() == Some(false) {
                ports
                    .iter()
                    .filter(|p| p["nodePort"].as_i64().is_some_and(|n| n != 0))
                    .count()
            } else {
                ports.len()
            };
            (n, 1)
        }
        _ => (0, 0),
    };
    out.insert(
        "services.nodeports".into(),
        Quantity::count(i64::try_from(node_ports).unwrap_or(i64::MAX)),
    );
    out.insert("services.loadbalancers".into(), Quantity::count(lbs));
    out
}

/// The suffix of per-storage-class quota names.
pub const STORAGE_CLASS_SUFFIX: &str = ".storageclass.storage.k8s.io/";

/// What a PersistentVolumeClaim charges: counts and requested storage, also per class.
pub fn pvc_usage(pvc: &Value) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert("persistentvolumeclaims".into(), Quantity::count(1));
    out.insert("count/persistentvolumeclaims".into(), Quantity::count(1));
    let class = pvc["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-class"]
        .as_str()
        .or_else(|| pvc["spec"]["storageClassName"].as_str())
        .unwrap_or("");
    if !class.is_empty() {
        out.insert(
            format!("{class}{STORAGE_CLASS_SUFFIX}persistentvolumeclaims"),
            Quantity::count(1),
        );
    }
    let requested = Quantity::from_json(&pvc["spec"]["resources"]["requests"]["storage"]);
    let allocated = Quantity::from_json(&pvc["status"]["allocatedResources"]["storage"]);
    let storage = match (requested, allocated) {
        (Some(r), Some(a)) => Some(if a > r { a } else { r }),
        (r, a) => r.or(a),
    };
    if let Some(s) = storage {
        out.insert("requests.storage".into(), s);
        if !class.is_empty() {
            out.insert(format!("{class}{STORAGE_CLASS_SUFFIX}requests.storage"), s);
        }
    }
    out
}

/// What any object charges against quota. `now` is Unix seconds.
pub fn usage(group: &str, plural: &str, obj: &Value, now: i64) -> ResourceList {
    match (group, plural) {
        ("", "pods") => pod_usage(obj, now),
        ("", "services") => service_usage(obj),
        ("", "persistentvolumeclaims") => pvc_usage(obj),
        _ => {
            let mut out = ResourceList::new();
            out.insert(object_count_name(group, plural), Quantity::count(1));
            if let Some(l) = legacy_count_name(group, plural) {
                out.insert(l.to_string(), Quantity::count(1));
            }
            out
        }
    }
}

/// Whether a quota resource name can be charged by objects of `group/plural` (upstream's
/// `MatchingResources` of the kind's evaluator).
pub fn resource_matches_kind(name: &str, group: &str, plural: &str) -> bool {
    if name == object_count_name(group, plural) {
        return true;
    }
    match (group, plural) {
        ("", "pods") => {
            matches!(
                name,
                "pods"
                    | "cpu"
                    | "memory"
                    | "ephemeral-storage"
                    | "requests.cpu"
                    | "requests.memory"
                    | "requests.ephemeral-storage"
                    | "limits.cpu"
                    | "limits.memory"
                    | "limits.ephemeral-storage"
            ) || name.starts_with("hugepages-")
                || name.starts_with("requests.hugepages-")
                || name
                    .strip_prefix("requests.")
                    .is_some_and(is_extended_resource)
        }
        ("", "services") => matches!(
            name,
            "services" | "services.nodeports" | "services.loadbalancers"
        ),
        ("", "persistentvolumeclaims") => {
            matches!(name, "persistentvolumeclaims" | "requests.storage")
                || name.ends_with(&format!("{STORAGE_CLASS_SUFFIX}persistentvolumeclaims"))
                || name.ends_with(&format!("{STORAGE_CLASS_SUFFIX}requests.storage"))
        }
        _ => legacy_count_name(group, plural) == Some(name),
    }
}

/// The kinds (group, plural) whose objects a quota resource name counts.
pub fn kind_of_resource(name: &str) -> Option<(String, String)> {
    for (g, p) in [
        ("", "pods"),
        ("", "services"),
        ("", "persistentvolumeclaims"),
    ] {
        if resource_matches_kind(name, g, p) {
            return Some((g.into(), p.into()));
        }
    }
    if let Some(rest) = name.strip_prefix("count/") {
        return Some(match rest.split_once('.') {
            Some((plural, group)) => (group.to_string(), plural.to_string()),
            None => (String::new(), rest.to_string()),
        });
    }
    match name {
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => {
            Some((String::new(), name.to_string()))
        }
        _ => None,
    }
}

/// The resource names of `status.hard` (what admission enforces) that objects of
/// `group/plural` can charge.
pub fn matching_resources(hard: &ResourceList, group: &str, plural: &str) -> BTreeSet<String> {
    hard.keys()
        .filter(|k| resource_matches_kind(k, group, plural))
        .cloned()
        .collect()
}

/// Whether `quota` applies to `obj` at all: it limits something the kind charges and its
/// scopes (which only pods can match) all match.
pub fn quota_matches(
    quota: &Value,
    hard: &ResourceList,
    group: &str,
    plural: &str,
    obj: &Value,
) -> bool {
    if matching_resources(hard, group, plural).is_empty() {
        return false;
    }
    let scopes = quota_scopes(quota);
    if scopes.is_empty() {
        return true;
    }
    (group, plural) == ("", "pods") && scopes.iter().all(|s| pod_matches_scope(obj, s))
}

/// The usage of the given objects (of `group/plural`) against `quota`'s `hard` names:
/// zero for every matching name, plus what each in-scope object charges.
pub fn calculate_usage(
    quota: &Value,
    hard: &ResourceList,
    group: &str,
    plural: &str,
    objects: &[Value],
    now: i64,
) -> ResourceList {
    let names = matching_resources(hard, group, plural);
    let mut used: ResourceList = names
        .iter()
        .map(|n| (n.clone(), Quantity::zero()))
        .collect();
    let scopes = quota_scopes(quota);
    for obj in objects {
        let in_scope = scopes.is_empty()
            || ((group, plural) == ("", "pods")
                && scopes.iter().all(|s| pod_matches_scope(obj, s)));
        if !in_scope {
            continue;
        }
        used = add(&used, &mask(&usage(group, plural, obj, now), names.iter()));
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_quantities() {
        let cases = [
            ("1", "1"),
            ("1000m", "1"),
            ("0.5", "500m"),
            ("500m", "500m"),
            ("128Mi", "128Mi"),
            ("1024Mi", "1Gi"),
            ("1.5Gi", "1536Mi"),
            ("2000", "2k"),
            ("1500", "1500"),
            ("1e3", "1e3"),
            ("100", "100"),
            ("0", "0"),
            ("1k", "1k"),
            ("1000Ki", "1000Ki"),
        ];
        for (input, want) in cases {
            let q = Quantity::parse(input).unwrap();
            assert_eq!(q.to_string(), want, "{input}");
        }
        assert!(Quantity::parse("abc").is_none());
        assert!(Quantity::parse("1x").is_none());
        let sum = Quantity::parse("500m")
            .unwrap()
            .plus(Quantity::parse("1500m").unwrap());
        assert_eq!(sum.to_string(), "2");
        assert_eq!(Quantity::parse("1.5").unwrap().value(), 2);
        assert_eq!(Quantity::parse("1.5").unwrap().milli_value(), 1500);
    }

    #[test]
    fn pod_usage_and_constraints() {
        let pod = json!({"spec": {
        "initContainers": [{"name": "init", "resources": {"requests": {"cpu": "2"}}}],
        "containers": [
            {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
        ]}});
        let u = pod_usage(&pod, 0);
        assert_eq!(u["pods"].to_string(), "1");
        assert_eq!(u["count/pods"].to_string(), "1");
        assert_eq!(
            u["requests.cpu"].to_string(),
            "2",
            "init container dominates"
        );
        assert_eq!(u["requests.memory"].to_string(), "128Mi");
        assert_eq!(u["limits.cpu"].to_string(), "1");
        let required: BTreeSet<String> = ["limits.cpu".to_string(), "pods".to_string()].into();
        assert_eq!(
            pod_constraints(&pod, &required).unwrap_err(),
            "must specify limits.cpu for: b,init"
        );
        let done =
            json!({"status": {"phase": "Succeeded"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(
            pod_usage(&done, 0).keys().collect::<Vec<_>>(),
            vec!["count/pods"]
        );
    }

    #[test]
    fn qos_classes() {
        let pod = |res: Value| json!({"spec": {"containers": [{"name": "a", "resources": res}]}});
        let cases = [
            (json!({}), "BestEffort"),
            (json!({"requests": {"cpu": "1"}}), "Burstable"),
            (
                json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}),
                "Guaranteed",
            ),
            (
                json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}),
                "Burstable",
            ),
        ];
        for (res, want) in cases {
            assert_eq!(pod_qos_class(&pod(res.clone())), want, "{res}");
        }
    }

    #[test]
    fn scopes() {
        let be = json!({"spec": {"containers": [{"name": "a"}], "priorityClassName": "high"}});
        let burst = json!({"spec": {"activeDeadlineSeconds": 10,
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}});
        let req = |scope: &str, op: &str, vals: &[&str]| ScopeRequirement {
            scope: scope.into(),
            operator: op.into(),
            values: vals.iter().map(|s| s.to_string()).collect(),
        };
        let cases = [
            (&be, req("BestEffort", "Exists", &[]), true),
            (&burst, req("BestEffort", "Exists", &[]), false),
            (&burst, req("NotBestEffort", "Exists", &[]), true),
            (&burst, req("Terminating", "Exists", &[]), true),
            (&be, req("NotTerminating", "Exists", &[]), true),
            (&be, req("PriorityClass", "In", &["high"]), true),
            (&burst, req("PriorityClass", "In", &["high"]), false),
            (&burst, req("PriorityClass", "DoesNotExist", &[]), true),
        ];
        for (pod, r, want) in cases {
            assert_eq!(pod_matches_scope(pod, &r), want, "{r:?}");
        }
    }

    #[test]
    fn services_pvcs_and_counts() {
        let svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}});
        let u = service_usage(&svc);
        assert_eq!(u["services.nodeports"].to_string(), "2");
        assert_eq!(u["services.loadbalancers"].to_string(), "0");
        let pvc = json!({"spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}}});
        let u = pvc_usage(&pvc);
        assert_eq!(u["requests.storage"].to_string(), "1Gi");
        assert_eq!(
            u["fast.storageclass.storage.k8s.io/requests.storage"].to_string(),
            "1Gi"
        );
        let u = usage("apps", "deployments", &json!({}), 0);
        assert_eq!(u["count/deployments.apps"].to_string(), "1");
        assert_eq!(
            kind_of_resource("count/deployments.apps"),
            Some(("apps".into(), "deployments".into()))
        );
        assert_eq!(
            kind_of_resource("requests.cpu"),
            Some((String::new(), "pods".into()))
        );
        assert_eq!(
            kind_of_resource("secrets"),
            Some((String::new(), "secrets".into()))
        );
        let hard = resource_list(&json!({"pods": "2", "configmaps": "1"}));
        assert!(quota_matches(&json!({}), &hard, "", "pods", &json!({})));
        assert!(!quota_matches(
            &json!({}),
            &hard,
            "",
            "services",
            &json!({})
        ));
        let used = calculate_usage(
            &json!({}),
            &hard,
            "",
            "configmaps",
            &[json!({}), json!({})],
            0,
        );
        assert_eq!(pretty(&used), "configmaps=2");
    }
}
