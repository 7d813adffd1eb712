//! The EndpointSlice controller (upstream's `endpointslice-controller`): for every Service
//! with a selector, EndpointSlices (`addressType: IPv4`) list the IPs of the selected pods
//! with their readiness (`ready`, `serving`, `terminating`), node, pod reference and, for
//! pods whose `subdomain` names the Service, their hostname. Ports are resolved per pod
//! (a named `targetPort` is looked up in the pod's container ports), so pods that resolve
//! the ports differently land in different slices. Slices hold at most 100 endpoints,
//! carry `kubernetes.io/service-name`, `endpointslice.kubernetes.io/managed-by` and an
//! owner reference to the Service (the garbage collector removes them with it). A
//! Service whose pods have no endpoints keeps one empty slice, as upstream.
//!
//! Slices are updated in place and only when their content changes, so the service proxy
//! and cluster DNS watching them see no churn. Services without a selector are left to
//! whoever writes their slices; ExternalName Services get none.
//!
//! Also home of the pod/Service helpers the Endpoints controller shares (selection,
//! readiness, port resolution). Depends on `kube` and `k8s-openapi` only.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::stream;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{self, Action, trigger_self, trigger_with};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::watch;

/// `kubernetes.io/service-name`.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// `endpointslice.kubernetes.io/managed-by`.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's `managed-by` value.
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// `service.kubernetes.io/headless`, set on the slices and Endpoints of headless Services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Endpoints per slice.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// Every Service is reconciled at least this often.
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the pod cache is not available")]
    CacheGone,
}

// ---------------------------------------------------------------------------------------
// Helpers shared with the Endpoints controller.

/// The Service's selector, if it has a non-empty one.
pub(crate) fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

/// Whether the Service selects `pod` (same namespace, every selector label matches).
pub(crate) fn selects(svc: &Service, pod: &Pod) -> bool {
    let Some(sel) = selector(svc) else {
        return false;
    };
    if svc.namespace() != pod.namespace() {
        return false;
    }
    let labels = pod.metadata.labels.as_ref();
    sel.iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// Whether the Service gets endpoints from the controllers (a selector, not ExternalName).
pub(crate) fn managed(svc: &Service) -> bool {
    selector(svc).is_some() && svc_type(svc) != "ExternalName"
}

fn svc_type(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("ClusterIP")
}

/// Whether the Service is headless (`clusterIP: None`).
pub(crate) fn headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// `publishNotReadyAddresses`.
pub(crate) fn publish_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

/// The pod's `Ready` condition is `True`.
pub(crate) fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod's IPv4 address, if it has one.
pub(crate) fn pod_ipv4(pod: &Pod) -> Option<String> {
    let st = pod.status.as_ref()?;
    let mut ips: Vec<&str> = st.pod_ips.iter().flatten().map(|p| p.ip.as_str()).collect();
    if let Some(ip) = st.pod_ip.as_deref() {
        ips.insert(0, ip);
    }
    ips.into_iter()
        .find(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string)
}

/// `ShouldPodBeInEndpoints`: not terminal, has an IP, and (unless `include_terminating`)
/// not being deleted.
pub(crate) fn should_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    if pod_ipv4(pod).is_none() {
        return false;
    }
    include_terminating || pod.metadata.deletion_timestamp.is_none()
}

/// `ShouldSetHostname`: the pod has a hostname and its subdomain is the Service.
pub(crate) fn hostname_for(pod: &Pod, svc: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let hostname = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == Some(svc.name_any().as_str())
        && pod.namespace() == svc.namespace())
    .then(|| hostname.to_string())
}

/// `FindPort`: the port number a Service port targets on this pod; a named target is
/// looked up among the containers' (and sidecars') ports of the same protocol.
pub(crate) fn find_port(pod: &Pod, sp: &ServicePort) -> Option<i32> {
    let proto = sp.protocol.as_deref().unwrap_or("TCP");
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) if *n == 0 => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == proto
                })
                .map(|p| p.container_port)
        }
    }
}

/// Maps pod events to the Services that select the pod now or selected it before (so a
/// pod relabelled out of a Service still requeues it).
#[derive(Default)]
pub(crate) struct PodIndex {
    last: Mutex<HashMap<PodKey, Vec<ObjectRef<Service>>>>,
}

/// (namespace, name) of a pod.
type PodKey = (String, String);

impl PodIndex {
    pub(crate) fn services_for(
        &self,
        services: &Store<Service>,
        pod: &Pod,
    ) -> Vec<ObjectRef<Service>> {
        let now: Vec<ObjectRef<Service>> = services
            .state()
            .iter()
            .filter(|s| selects(s, pod))
            .map(|s| ObjectRef::from_obj(&**s))
            .collect();
        let key = (pod.namespace().unwrap_or_default(), pod.name_any());
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = now.clone();
        if let Some(before) = last.get(&key) {
            for r in before {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
        }
        if now.is_empty() {
            last.remove(&key);
        } else {
            last.insert(key, now);
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Desired state.

/// The endpoint of `pod` for `svc` (upstream's `podToEndpoint`).
fn endpoint_for(pod: &Pod, svc: &Service, ip: String) -> Endpoint {
    let serving = pod_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = publish_not_ready(svc) || (serving && !terminating);
    Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname: hostname_for(pod, svc),
        node_name: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.namespace(),
            name: Some(pod.name_any()),
            uid: pod.uid(),
            ..ObjectReference::default()
        }),
        ..Endpoint::default()
    }
}

/// The slice ports of `pod` for `svc` (ports that do not resolve are left out).
fn ports_for(pod: &Pod, svc: &Service) -> Vec<EndpointPort> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|sp| {
            find_port(pod, sp).map(|port| EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(port),
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

/// A stable key for a port set.
fn ports_key(ports: &[EndpointPort]) -> String {
    let mut parts: Vec<String> = ports
        .iter()
        .map(|p| {
            format!(
                "{}/{}/{}/{}",
                p.name.as_deref().unwrap_or(""),
                p.port.unwrap_or(0),
                p.protocol.as_deref().unwrap_or("TCP"),
                p.app_protocol.as_deref().unwrap_or("")
            )
        })
        .collect();
    parts.sort();
    parts.join(",")
}

/// Desired endpoints grouped by port set: key → (ports, endpoints ordered by pod name).
pub(crate) fn desired(
    svc: &Service,
    pods: &[Arc<Pod>],
) -> BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> {
    let mut pods: Vec<&Arc<Pod>> = pods.iter().filter(|p| selects(svc, p)).collect();
    pods.sort_by_key(|p| p.name_any());
    let mut groups: BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    for pod in pods {
        if !should_be_in_endpoints(pod, true) {
            continue;
        }
        let Some(ip) = pod_ipv4(pod) else { continue };
        let ports = ports_for(pod, svc);
        let key = ports_key(&ports);
        let entry = groups.entry(key).or_insert_with(|| (ports, Vec::new()));
        entry.1.push(endpoint_for(pod, svc, ip));
    }
    groups
}

/// The identity of an endpoint within a slice (its pod, else its first address).
fn endpoint_key(e: &Endpoint) -> String {
    e.target_ref
        .as_ref()
        .and_then(|r| r.uid.clone())
        .unwrap_or_else(|| e.addresses.first().cloned().unwrap_or_default())
}

/// The labels of every slice of `svc`.
fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = svc
        .labels()
        .iter()
        .filter(|(k, _)| {
            k.as_str() != LABEL_SERVICE_NAME
                && k.as_str() != LABEL_MANAGED_BY
                && k.as_str() != LABEL_HEADLESS
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_SERVICE_NAME.into(), svc.name_any());
    labels.insert(LABEL_MANAGED_BY.into(), CONTROLLER_NAME.into());
    if headless(svc) {
        labels.insert(LABEL_HEADLESS.into(), String::new());
    }
    labels
}

fn owner_ref(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.name_any(),
        uid: svc.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// What to write: slices to create, slices to replace (existing, changed) and names to
/// delete.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) create: Vec<EndpointSlice>,
    pub(crate) update: Vec<EndpointSlice>,
    pub(crate) delete: Vec<String>,
}

fn slice_ports_key(s: &EndpointSlice) -> String {
    ports_key(s.ports.as_deref().unwrap_or(&[]))
}

/// Plans the writes that turn `existing` (this controller's slices of `svc`) into the
/// desired state with as few changes as possible: endpoints stay in the slice they are
/// in, new ones fill existing slices with room before new slices are made.
pub(crate) fn plan(svc: &Service, pods: &[Arc<Pod>], existing: &[EndpointSlice]) -> Plan {
    let mut plan = Plan::default();
    let labels = slice_labels(svc);
    let owner = owner_ref(svc);
    let groups = desired(svc, pods);
    // A Service without endpoints keeps one empty slice (no ports): the first existing
    // one if there is one.
    if groups.is_empty() {
        let mut existing: Vec<&EndpointSlice> = existing.iter().collect();
        existing.sort_by_key(|s| s.name_any());
        let keep = existing.iter().position(|s| s.address_type == "IPv4");
        for (i, s) in existing.iter().enumerate() {
            if Some(i) != keep {
                plan.delete.push(s.name_any());
            }
        }
        match keep {
            Some(i) => {
                let s = existing[i];
                let mut next = s.clone();
                next.endpoints = Vec::new();
                next.ports = None;
                next.metadata.labels = Some(labels);
                next.metadata.owner_references = Some(vec![owner]);
                next.metadata.managed_fields = None;
                let mut cur = s.clone();
                cur.metadata.managed_fields = None;
                if next != cur {
                    plan.update.push(next);
                }
            }
            None => plan.create.push(EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{}-", svc.name_any())),
                    namespace: svc.namespace(),
                    labels: Some(labels),
                    owner_references: Some(vec![owner]),
                    ..ObjectMeta::default()
                },
                address_type: "IPv4".into(),
                endpoints: Vec::new(),
                ports: None,
            }),
        }
        return plan;
    }
    let mut existing: Vec<EndpointSlice> = existing.to_vec();
    existing.sort_by_key(|s| s.name_any());
    let mut used = vec![false; existing.len()];
    for (key, (ports, endpoints)) in &groups {
        let wanted: HashMap<String, &Endpoint> =
            endpoints.iter().map(|e| (endpoint_key(e), e)).collect();
        let mut placed: Vec<String> = Vec::new();
        // Existing slices with the same port set keep the endpoints they have.
        let mut mine: Vec<(usize, Vec<Endpoint>)> = Vec::new();
        for (i, s) in existing.iter().enumerate() {
            if used[i] || s.address_type != "IPv4" || slice_ports_key(s) != *key {
                continue;
            }
            used[i] = true;
            let kept: Vec<Endpoint> = s
                .endpoints
                .iter()
                .filter_map(|e| {
                    let k = endpoint_key(e);
                    if placed.contains(&k) {
                        return None;
                    }
                    wanted.get(&k).map(|w| {
                        placed.push(k);
                        (*w).clone()
                    })
                })
                .collect();
            mine.push((i, kept));
        }
        let mut rest: Vec<Endpoint> = endpoints
            .iter()
            .filter(|e| !placed.contains(&endpoint_key(e)))
            .cloned()
            .collect();
        for (_, eps) in mine.iter_mut() {
            while eps.len() < MAX_ENDPOINTS_PER_SLICE && !rest.is_empty() {
                eps.push(rest.remove(0));
            }
        }
        // Slices left empty go.
        for (i, eps) in mine {
            let s = &existing[i];
            if eps.is_empty() {
                plan.delete.push(s.name_any());
                continue;
            }
            let mut next = s.clone();
            next.endpoints = eps;
            next.ports = (!ports.is_empty()).then(|| ports.clone());
            next.metadata.labels = Some(labels.clone());
            next.metadata.owner_references = Some(vec![owner.clone()]);
            next.metadata.managed_fields = None;
            let mut cur = s.clone();
            cur.metadata.managed_fields = None;
            if next != cur {
                plan.update.push(next);
            }
        }
        // The rest go into new slices.
        for eps in rest.chunks(MAX_ENDPOINTS_PER_SLICE) {
            plan.create.push(EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{}-", svc.name_any())),
                    namespace: svc.namespace(),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![owner.clone()]),
                    ..ObjectMeta::default()
                },
                address_type: "IPv4".into(),
                endpoints: eps.to_vec(),
                ports: (!ports.is_empty()).then(|| ports.clone()),
            });
        }
    }
    for (i, s) in existing.iter().enumerate() {
        if !used[i] {
            plan.delete.push(s.name_any());
        }
    }
    plan
}

// ---------------------------------------------------------------------------------------
// The controller.

struct Ctx {
    client: Client,
    pods: Store<Pod>,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let (svc_store, svc_events) =
        watch::reflect_all::<Service>(&client, watcher::Config::default());
    let (pod_store, pod_events) = watch::reflect_all::<Pod>(&client, watcher::Config::default());
    let slice_events = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={CONTROLLER_NAME}")),
    )
    .default_backoff()
    .touched_objects();
    let services = svc_store.clone();
    let index = Arc::new(PodIndex::default());
    let queue = stream::select(
        stream::select(
            trigger_self(svc_events.applied_objects(), ()),
            trigger_with(pod_events.touched_objects(), move |pod: Pod| {
                index.services_for(&services, &pod)
            }),
        ),
        trigger_with(slice_events, |slice: EndpointSlice| {
            let ns = slice.namespace().unwrap_or_default();
            slice
                .labels()
                .get(LABEL_SERVICE_NAME)
                .map(|n| ObjectRef::<Service>::new(n).within(&ns))
        }),
    );
    let ctx = Arc::new(Ctx {
        client,
        pods: pod_store,
    });
    watch::run_applier(
        "endpointslice",
        reconcile,
        error_policy,
        ctx,
        svc_store,
        queue,
        controller::Config::default().debounce(Duration::from_millis(100)),
        shutdown,
    )
    .await;
}

fn error_policy(svc: Arc<Service>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(service = %svc.name_any(), ns = ?svc.namespace(), %err, "endpointslice controller error; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if !managed(&svc) || svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    ctx.pods
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheGone)?;
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .collect();
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = api
        .list(&ListParams::default().labels(&format!(
            "{LABEL_SERVICE_NAME}={name},{LABEL_MANAGED_BY}={CONTROLLER_NAME}"
        )))
        .await?
        .items;
    let plan = plan(&svc, &pods, &existing);
    for s in &plan.update {
        api.replace(&s.name_any(), &PostParams::default(), s)
            .await?;
        tracing::debug!(service = %name, ns = %ns, slice = %s.name_any(), endpoints = s.endpoints.len(), "updated endpoint slice");
    }
    for s in &plan.create {
        match api.create(&PostParams::default(), s).await {
            Ok(created) => {
                tracing::debug!(service = %name, ns = %ns, slice = %created.name_any(), endpoints = s.endpoints.len(), "created endpoint slice");
            }
            // The namespace is going away.
            Err(kube::Error::Api(e)) if e.code == 403 || e.code == 404 => {
                return Ok(Action::await_change());
            }
            Err(e) => return Err(e.into()),
        }
    }
    for n in &plan.delete {
        match api.delete(n, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::debug!(service = %name, ns = %ns, slice = %n, "deleted endpoint slice")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::requeue(RESYNC))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn svc(v: serde_json::Value) -> Service {
        let mut base = json!({"metadata": {"name": "web", "namespace": "default", "uid": "svc-uid"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}});
        merge(&mut base, v);
        serde_json::from_value(base).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    /// A pod named `name` with IP 10.42.0.<n>, labels app=web, a named port `http`=8080
    /// unless `port_name` says otherwise, Ready when `ready`.
    pub(crate) fn pod(name: &str, n: u8, ready: bool, extra: serde_json::Value) -> Arc<Pod> {
        let mut base = json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "node1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": format!("10.42.0.{n}"),
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
        merge(&mut base, extra);
        Arc::new(serde_json::from_value(base).unwrap())
    }

    #[test]
    fn endpoints_and_conditions() {
        let s = svc(json!({}));
        let pods = vec![
            pod("a", 1, true, json!({})),
            pod("b", 2, false, json!({})),
            pod(
                "c",
                3,
                true,
                json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}}),
            ),
            pod(
                "d",
                4,
                true,
                json!({"metadata": {"labels": {"app": "other"}}}),
            ),
            pod("e", 5, true, json!({"status": {"phase": "Succeeded"}})),
            pod("f", 0, true, json!({"status": {"podIP": null}})),
        ];
        let p = plan(&s, &pods, &[]);
        assert_eq!(p.create.len(), 1);
        let slice = &p.create[0];
        assert_eq!(slice.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(slice.address_type, "IPv4");
        let labels = slice.metadata.labels.clone().unwrap();
        assert_eq!(labels[LABEL_SERVICE_NAME], "web");
        assert_eq!(labels[LABEL_MANAGED_BY], CONTROLLER_NAME);
        assert_eq!(
            slice.metadata.owner_references.as_ref().unwrap()[0].name,
            "web"
        );
        let ports = slice.ports.clone().unwrap();
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].port),
            (Some("http"), Some(8080))
        );
        let got: Vec<(String, bool, bool, bool)> = slice
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap();
                (
                    e.addresses[0].clone(),
                    c.ready.unwrap(),
                    c.serving.unwrap(),
                    c.terminating.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.42.0.1".into(), true, true, false),
                ("10.42.0.2".into(), false, false, false),
                ("10.42.0.3".into(), false, true, true),
            ]
        );
        let e = &slice.endpoints[0];
        assert_eq!(e.node_name.as_deref(), Some("node1"));
        assert_eq!(e.target_ref.as_ref().unwrap().name.as_deref(), Some("a"));
        assert!(e.hostname.is_none());

        // publishNotReadyAddresses: everything is ready.
        let s = svc(json!({"spec": {"publishNotReadyAddresses": true}}));
        let p = plan(&s, &pods, &[]);
        assert!(
            p.create[0]
                .endpoints
                .iter()
                .all(|e| e.conditions.as_ref().unwrap().ready == Some(true))
        );
    }

    #[test]
    fn named_ports_split_slices_and_hostnames() {
        let s = svc(json!({"spec": {"clusterIP": "None"}, "metadata": {"labels": {"team": "x"}}}));
        let pods = vec![
            pod(
                "a",
                1,
                true,
                json!({"spec": {"hostname": "a", "subdomain": "web"}}),
            ),
            pod(
                "b",
                2,
                true,
                json!({"spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 9090}]}]}}),
            ),
            pod(
                "c",
                3,
                true,
                json!({"spec": {"containers": [{"name": "c"}]}}),
            ),
        ];
        let p = plan(&s, &pods, &[]);
        assert_eq!(p.create.len(), 3, "{:?}", p.create);
        let by_port: Vec<(Option<i32>, Vec<String>)> = p
            .create
            .iter()
            .map(|s| {
                (
                    s.ports.as_ref().map(|p| p[0].port.unwrap()),
                    s.endpoints.iter().map(|e| e.addresses[0].clone()).collect(),
                )
            })
            .collect();
        assert!(by_port.contains(&(None, vec!["10.42.0.3".to_string()])));
        assert!(by_port.contains(&(Some(8080), vec!["10.42.0.1".to_string()])));
        assert!(by_port.contains(&(Some(9090), vec!["10.42.0.2".to_string()])));
        let with_host = p
            .create
            .iter()
            .flat_map(|s| &s.endpoints)
            .find(|e| e.addresses[0] == "10.42.0.1")
            .unwrap();
        assert_eq!(with_host.hostname.as_deref(), Some("a"));
        let labels = p.create[0].metadata.labels.clone().unwrap();
        assert_eq!(labels[LABEL_HEADLESS], "");
        assert_eq!(labels["team"], "x");
    }

    #[test]
    fn minimal_updates() {
        let s = svc(json!({}));
        let pods = vec![pod("a", 1, true, json!({})), pod("b", 2, true, json!({}))];
        let mut existing = plan(&s, &pods, &[]).create;
        existing[0].metadata.name = Some("web-abcde".into());
        // Nothing changed: nothing to write.
        let p = plan(&s, &pods, &existing);
        assert!(
            p.create.is_empty() && p.update.is_empty() && p.delete.is_empty(),
            "{p:?}"
        );
        // One pod turns unready: one in-place update.
        let pods2 = vec![pod("a", 1, true, json!({})), pod("b", 2, false, json!({}))];
        let p = plan(&s, &pods2, &existing);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
        // All pods gone: the slice stays, empty, without ports.
        let p = plan(&s, &[], &existing);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
        assert!(p.update[0].endpoints.is_empty());
        assert!(p.update[0].ports.is_none());
        // No pods and no slices: one empty placeholder slice is created.
        let p = plan(&s, &[], &[]);
        assert_eq!(p.create.len(), 1);
        assert!(p.create[0].endpoints.is_empty());
    }

    #[test]
    fn at_most_100_per_slice() {
        let s = svc(json!({}));
        let pods: Vec<Arc<Pod>> = (0..250u32)
            .map(|i| {
                let mut p = (*pod(&format!("p{i:03}"), 0, true, json!({}))).clone();
                p.status.as_mut().unwrap().pod_ip =
                    Some(format!("10.42.{}.{}", i / 250, i % 250 + 1));
                Arc::new(p)
            })
            .collect();
        let p = plan(&s, &pods, &[]);
        let sizes: Vec<usize> = p.create.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
    }

    #[test]
    fn selectorless_and_external_name_are_not_managed() {
        assert!(managed(&svc(json!({}))));
        let mut s = svc(json!({}));
        s.spec.as_mut().unwrap().selector = None;
        assert!(!managed(&s));
        assert!(!managed(&svc(
            json!({"spec": {"type": "ExternalName", "externalName": "x.example"}})
        )));
    }
}
