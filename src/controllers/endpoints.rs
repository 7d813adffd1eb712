//! The Endpoints controller (upstream's `endpoint-controller`): keeps the legacy
//! `v1/Endpoints` object of every Service with a selector in step with its pods — ready
//! pods under `addresses`, the others under `notReadyAddresses` (all under `addresses`
//! with `publishNotReadyAddresses`; terminating pods only then), grouped into subsets by
//! the ports they resolve (upstream's `RepackSubsets`). The object carries the Service's
//! labels (plus `service.kubernetes.io/headless` for headless Services) and is deleted
//! when the Service is. It is written only when its content changes.
//!
//! Shares selection, readiness and port resolution with [`super::endpointslice`].
//! Depends on `kube` and `k8s-openapi` only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, future, stream};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::runtime::controller::{self, Action, trigger_self, trigger_with};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::endpointslice::{
    Error, LABEL_HEADLESS, PodIndex, find_port, headless, hostname_for, managed, pod_ipv4,
    pod_ready, publish_not_ready, selects, should_be_in_endpoints,
};
use super::watch;

/// Every Service is reconciled at least this often.
const RESYNC: Duration = Duration::from_secs(300);

/// The subsets of `svc`'s Endpoints for `pods` (sorted, so equal inputs give equal output).
pub(crate) fn subsets(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let tolerate = publish_not_ready(svc);
    let svc_ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    // (ports key) → (ports, ready addresses, not-ready addresses)
    type Group = (
        Vec<EndpointPort>,
        Vec<EndpointAddress>,
        Vec<EndpointAddress>,
    );
    // First: each address → the ports it serves (upstream maps port → addresses, then
    // groups addresses serving the same port set).
    let mut per_address: Vec<(EndpointAddress, bool, Vec<EndpointPort>)> = Vec::new();
    for pod in pods.iter().filter(|p| selects(svc, p)) {
        if !should_be_in_endpoints(pod, tolerate) {
            continue;
        }
        let Some(ip) = pod_ipv4(pod) else { continue };
        let address = EndpointAddress {
            ip,
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
        };
        let ready = tolerate || pod_ready(pod);
        let mut ports: Vec<EndpointPort> = Vec::new();
        if svc_ports.is_empty() {
            // Headless Services may have no ports.
            if !headless(svc) {
                continue;
            }
        } else {
            for sp in &svc_ports {
                if let Some(port) = find_port(pod, sp) {
                    ports.push(EndpointPort {
                        name: sp.name.clone().filter(|n| !n.is_empty()),
                        port,
                        protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                        app_protocol: sp.app_protocol.clone(),
                    });
                }
            }
            if ports.is_empty() {
                continue;
            }
        }
        ports.sort_by(|a, b| {
            (a.name.as_deref(), a.port, a.protocol.as_deref()).cmp(&(
                b.name.as_deref(),
                b.port,
                b.protocol.as_deref(),
            ))
        });
        per_address.push((address, ready, ports));
    }
    let key = |ports: &[EndpointPort]| -> String {
        ports
            .iter()
            .map(|p| {
                format!(
                    "{}/{}/{}",
                    p.name.as_deref().unwrap_or(""),
                    p.port,
                    p.protocol.as_deref().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for (address, ready, ports) in per_address {
        let g = groups
            .entry(key(&ports))
            .or_insert_with(|| (ports, Vec::new(), Vec::new()));
        if ready {
            g.1.push(address);
        } else {
            g.2.push(address);
        }
    }
    let by_ip = |a: &EndpointAddress, b: &EndpointAddress| {
        let uid = |x: &EndpointAddress| x.target_ref.as_ref().and_then(|r| r.uid.clone());
        (a.ip.parse::<std::net::Ipv4Addr>().ok(), uid(a))
            .cmp(&(b.ip.parse::<std::net::Ipv4Addr>().ok(), uid(b)))
    };
    let mut out: Vec<EndpointSubset> = groups
        .into_values()
        .map(|(ports, mut ready, mut not_ready)| {
            ready.sort_by(by_ip);
            not_ready.sort_by(by_ip);
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect();
    let first_ip = |s: &EndpointSubset| {
        s.addresses
            .iter()
            .chain(s.not_ready_addresses.iter())
            .flatten()
            .next()
            .and_then(|a| a.ip.parse::<std::net::Ipv4Addr>().ok())
    };
    out.sort_by_key(first_ip);
    out
}

/// The labels of `svc`'s Endpoints.
fn labels(svc: &Service) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = svc.labels().clone();
    l.remove(LABEL_HEADLESS);
    if headless(svc) {
        l.insert(LABEL_HEADLESS.into(), String::new());
    }
    l
}

struct Ctx {
    client: Client,
    pods: Store<Pod>,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let (svc_store, svc_events) =
        watch::reflect_all::<Service>(&client, watcher::Config::default());
    let (pod_store, pod_events) = watch::reflect_all::<Pod>(&client, watcher::Config::default());
    let deleter = client.clone();
    // Deleted Services take their Endpoints with them; everything else is reconciled.
    let svc_events = svc_events.filter_map(move |ev| {
        let out = match ev {
            Ok(watcher::Event::Delete(svc)) => {
                let api: Api<Endpoints> =
                    Api::namespaced(deleter.clone(), &svc.namespace().unwrap_or_default());
                let name = svc.name_any();
                tokio::spawn(async move {
                    match api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => tracing::debug!(service = %name, "deleted endpoints of a deleted service"),
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(err) => tracing::warn!(service = %name, %err, "deleting endpoints"),
                    }
                });
                None
            }
            Ok(watcher::Event::Apply(svc) | watcher::Event::InitApply(svc)) => Some(Ok(svc)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        };
        future::ready(out)
    });
    let endpoints_events = watcher(
        Api::<Endpoints>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();
    let services = svc_store.clone();
    let index = Arc::new(PodIndex::default());
    let queue = stream::select(
        stream::select(
            trigger_self(svc_events, ()),
            trigger_with(pod_events.touched_objects(), move |pod: Pod| {
                index.services_for(&services, &pod)
            }),
        ),
        trigger_with(endpoints_events, |ep: Endpoints| {
            let ns = ep.namespace().unwrap_or_default();
            Some(ObjectRef::<Service>::new(&ep.name_any()).within(&ns))
        }),
    );
    let ctx = Arc::new(Ctx {
        client,
        pods: pod_store,
    });
    watch::run_applier(
        "endpoints",
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
    tracing::warn!(service = %svc.name_any(), ns = ?svc.namespace(), %err, "endpoints controller error; retrying");
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
    let want_subsets = subsets(&svc, &pods);
    let want_labels = labels(&svc);
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let subsets_opt = (!want_subsets.is_empty()).then_some(want_subsets);
    match api.get_opt(&name).await? {
        None => {
            let ep = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(want_labels),
                    ..ObjectMeta::default()
                },
                subsets: subsets_opt,
            };
            match api.create(&PostParams::default(), &ep).await {
                Ok(_) => tracing::debug!(service = %name, ns = %ns, "created endpoints"),
                Err(kube::Error::Api(e)) if matches!(e.code, 403 | 404 | 409) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Some(cur) => {
            let cur_labels = cur.metadata.labels.clone().unwrap_or_default();
            let cur_subsets = cur.subsets.clone().filter(|s| !s.is_empty());
            if cur_labels == want_labels && cur_subsets == subsets_opt {
                return Ok(Action::requeue(RESYNC));
            }
            let mut next = cur.clone();
            next.metadata.labels = Some(want_labels);
            next.metadata.managed_fields = None;
            next.subsets = subsets_opt;
            api.replace(&name, &PostParams::default(), &next).await?;
            tracing::debug!(service = %name, ns = %ns, "updated endpoints");
        }
    }
    Ok(Action::requeue(RESYNC))
}

#[cfg(test)]
mod tests {
    use super::super::endpointslice::tests::{pod, svc};
    use super::*;
    use serde_json::json;

    fn ips(a: &Option<Vec<EndpointAddress>>) -> Vec<String> {
        a.iter().flatten().map(|a| a.ip.clone()).collect()
    }

    #[test]
    fn ready_and_not_ready_addresses() {
        let s = svc(json!({}));
        let pods = vec![
            pod("b", 2, false, json!({})),
            pod("a", 1, true, json!({})),
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
                json!({"spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 9000}]}]}}),
            ),
        ];
        let subs = subsets(&s, &pods);
        assert_eq!(subs.len(), 2);
        assert_eq!(ips(&subs[0].addresses), vec!["10.42.0.1"]);
        assert_eq!(ips(&subs[0].not_ready_addresses), vec!["10.42.0.2"]);
        let p = &subs[0].ports.as_ref().unwrap()[0];
        assert_eq!(
            (p.name.as_deref(), p.port, p.protocol.as_deref()),
            (Some("http"), 8080, Some("TCP"))
        );
        assert_eq!(ips(&subs[1].addresses), vec!["10.42.0.4"]);
        assert_eq!(subs[1].ports.as_ref().unwrap()[0].port, 9000);

        // publishNotReadyAddresses: all ready, terminating included.
        let s = svc(json!({"spec": {"publishNotReadyAddresses": true}}));
        let subs = subsets(&s, &pods);
        assert_eq!(
            ips(&subs[0].addresses),
            vec!["10.42.0.1", "10.42.0.2", "10.42.0.3"]
        );
        assert!(subs[0].not_ready_addresses.is_none());
    }

    #[test]
    fn headless_without_ports() {
        let s = svc(json!({"spec": {"clusterIP": "None", "ports": null}}));
        let pods = vec![pod(
            "a",
            1,
            true,
            json!({"spec": {"hostname": "a", "subdomain": "web"}}),
        )];
        let subs = subsets(&s, &pods);
        assert_eq!(ips(&subs[0].addresses), vec!["10.42.0.1"]);
        assert!(subs[0].ports.is_none());
        assert_eq!(
            subs[0].addresses.as_ref().unwrap()[0].hostname.as_deref(),
            Some("a")
        );
        assert_eq!(labels(&s)[LABEL_HEADLESS], "");
        assert!(subsets(&s, &[]).is_empty());
    }
}
