//! ServiceLB, the built-in load balancer (k3s's klipper-lb controller, without its
//! per-node pods): every `type: LoadBalancer` Service (without a `loadBalancerClass`, or
//! with [`LOAD_BALANCER_CLASS`]) is published on the nodes themselves —
//! `status.loadBalancer.ingress` lists the ExternalIP (else InternalIP) of every Ready
//! node, with `ipMode: VIP`, and follows nodes as they come, go or change readiness. The
//! service proxy then accepts traffic for those IPs on the Service's ports.
//!
//! A node port can serve one Service only: when two LoadBalancer Services claim the same
//! port and protocol, the older one keeps it, the newer gets no ingress and a Warning
//! event `PortConflict` naming the Service holding the port (80/TCP and 443/TCP belong to
//! the built-in ingress controller unless it is disabled). The newer one is published as
//! soon as the clash is gone.
//!
//! Depends on `kube` and `k8s-openapi`; events through the workload controllers' recorder.

use std::sync::Arc;
use std::time::Duration;

use futures::stream;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, trigger_with};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::replicaset::events::{EventType, Recorder};
use super::watch;

/// The `loadBalancerClass` ServiceLB answers to besides none.
pub const LOAD_BALANCER_CLASS: &str = "kaji.io/servicelb";
/// The event reason for a Service whose port is taken.
pub const REASON_PORT_CONFLICT: &str = "PortConflict";
/// Every Service is reconciled at least this often.
const RESYNC: Duration = Duration::from_secs(120);

/// ServiceLB settings.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Ports (number, protocol) held by other node-level listeners, with who holds them.
    pub reserved: Vec<(i32, String, String)>,
}

impl Settings {
    /// The ports the built-in ingress controller listens on.
    pub fn with_ingress() -> Settings {
        let who = "the built-in ingress controller (disable it with --disable=ingress)";
        Settings {
            reserved: vec![
                (80, "TCP".into(), who.into()),
                (443, "TCP".into(), who.into()),
            ],
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the node cache is not available")]
    CacheGone,
}

/// Whether ServiceLB publishes this Service.
fn handled(svc: &Service) -> bool {
    let Some(spec) = svc.spec.as_ref() else {
        return false;
    };
    spec.type_.as_deref() == Some("LoadBalancer")
        && spec
            .load_balancer_class
            .as_deref()
            .is_none_or(|c| c == LOAD_BALANCER_CLASS)
        && svc.metadata.deletion_timestamp.is_none()
}

/// The (port, protocol) pairs a Service needs on every node.
fn claims(svc: &Service) -> Vec<(i32, String)> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| (p.port, p.protocol.clone().unwrap_or_else(|| "TCP".into())))
        .collect()
}

fn svc_key(svc: &Service) -> String {
    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
}

/// Who holds the first port `svc` needs, if another Service (older, or equally old and
/// first by name) or a reserved listener does.
fn conflict(
    svc: &Service,
    all: &[Arc<Service>],
    settings: &Settings,
) -> Option<(i32, String, String)> {
    let mine = claims(svc);
    for (port, proto, who) in &settings.reserved {
        if mine.iter().any(|(p, pr)| p == port && pr == proto) {
            return Some((*port, proto.clone(), who.clone()));
        }
    }
    let order = |s: &Service| {
        (
            s.metadata.creation_timestamp.clone().map(|t| t.0),
            svc_key(s),
        )
    };
    let mut others: Vec<&Arc<Service>> = all
        .iter()
        .filter(|o| handled(o) && svc_key(o) != svc_key(svc))
        .filter(|o| order(o) < order(svc))
        .collect();
    others.sort_by_key(|o| order(o));
    // Only Services that themselves hold their ports count (a blocked one holds none).
    let mut held: Vec<(i32, String, String)> = Vec::new();
    for o in others {
        let theirs = claims(o);
        let blocked = theirs.iter().any(|(p, pr)| {
            held.iter().any(|(hp, hpr, _)| hp == p && hpr == pr)
                || settings
                    .reserved
                    .iter()
                    .any(|(rp, rpr, _)| rp == p && rpr == pr)
        });
        if blocked {
            continue;
        }
        for (p, pr) in theirs {
            held.push((p, pr, format!("LoadBalancer service {}", svc_key(o))));
        }
    }
    mine.iter().find_map(|(p, pr)| {
        held.iter()
            .find(|(hp, hpr, _)| hp == p && hpr == pr)
            .cloned()
    })
}

/// The ingress IPs: one per Ready node (ExternalIP, else InternalIP; IPv4), sorted.
fn ingress(nodes: &[Arc<Node>]) -> Vec<LoadBalancerIngress> {
    let mut ips: Vec<std::net::Ipv4Addr> = Vec::new();
    for n in nodes {
        let Some(st) = n.status.as_ref() else {
            continue;
        };
        let ready = st
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if !ready || n.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let addrs = st.addresses.clone().unwrap_or_default();
        let pick = |ty: &str| {
            addrs
                .iter()
                .filter(|a| a.type_ == ty)
                .find_map(|a| a.address.parse::<std::net::Ipv4Addr>().ok())
        };
        if let Some(ip) = pick("ExternalIP").or_else(|| pick("InternalIP"))
            && !ips.contains(&ip)
        {
            ips.push(ip);
        }
    }
    ips.sort();
    ips.into_iter()
        .map(|ip| LoadBalancerIngress {
            ip: Some(ip.to_string()),
            ip_mode: Some("VIP".into()),
            ..LoadBalancerIngress::default()
        })
        .collect()
}

struct Ctx {
    client: Client,
    nodes: Store<Node>,
    services: Store<Service>,
    settings: Settings,
    recorder: Recorder,
}

/// Runs ServiceLB until `shutdown`.
pub async fn run(client: Client, settings: Settings, shutdown: CancellationToken) {
    let (svc_store, svc_events) =
        watch::reflect_all::<Service>(&client, watcher::Config::default());
    let (node_store, node_events) = watch::reflect_all::<Node>(&client, watcher::Config::default());
    let all_lbs = {
        let services = svc_store.clone();
        move || -> Vec<ObjectRef<Service>> {
            services
                .state()
                .iter()
                .filter(|s| {
                    s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
                })
                .map(|s| ObjectRef::from_obj(&**s))
                .collect()
        }
    };
    let for_nodes = all_lbs.clone();
    // A Service change may free or take a port another LoadBalancer waits for: requeue
    // every LoadBalancer Service (and the changed one) when one changes.
    let queue = stream::select(
        trigger_with(svc_events.touched_objects(), move |s: Service| {
            let mut refs = all_lbs();
            let me = ObjectRef::from_obj(&s);
            if !refs.contains(&me) {
                refs.push(me);
            }
            refs
        }),
        trigger_with(node_events.touched_objects(), move |_n: Node| for_nodes()),
    );
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "service-lb-controller"),
        client,
        nodes: node_store,
        services: svc_store.clone(),
        settings,
    });
    watch::run_applier(
        "servicelb",
        reconcile,
        error_policy,
        ctx,
        svc_store,
        queue,
        controller::Config::default().debounce(Duration::from_millis(200)),
        shutdown,
    )
    .await;
}

fn error_policy(svc: Arc<Service>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(service = %svc_key(&svc), %err, "servicelb error; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.nodes
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheGone)?;
    let current: Vec<LoadBalancerIngress> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.clone())
        .unwrap_or_default();
    let is_lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
    let foreign_class = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_class.as_deref())
        .is_some_and(|c| c != LOAD_BALANCER_CLASS);
    if foreign_class || (!is_lb && current.is_empty()) {
        return Ok(Action::await_change());
    }
    let want = if handled(&svc) {
        match conflict(&svc, &ctx.services.state(), &ctx.settings) {
            Some((port, proto, who)) => {
                ctx.recorder.event(
                    &*svc,
                    EventType::Warning,
                    REASON_PORT_CONFLICT,
                    format!("port {port}/{proto} is already used by {who}; the service gets no load balancer address until that is resolved"),
                );
                Vec::new()
            }
            None => ingress(&ctx.nodes.state()),
        }
    } else {
        Vec::new()
    };
    if want == current {
        return Ok(Action::requeue(RESYNC));
    }
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    let patch = json!({"status": {"loadBalancer": {"ingress": if want.is_empty() { serde_json::Value::Null } else { serde_json::to_value(&want).unwrap_or_default() }}}});
    api.patch_status(
        &svc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    let ips: Vec<String> = want.iter().filter_map(|i| i.ip.clone()).collect();
    tracing::info!(service = %svc_key(&svc), ingress = ?ips, "updated load balancer status");
    Ok(Action::requeue(RESYNC))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(name: &str, created: &str, ports: &[(i32, &str)]) -> Arc<Service> {
        let ports: Vec<serde_json::Value> = ports
            .iter()
            .enumerate()
            .map(|(i, (p, pr))| json!({"name": format!("p{i}"), "port": p, "protocol": pr}))
            .collect();
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
                "spec": {"type": "LoadBalancer", "ports": ports}}))
            .unwrap(),
        )
    }

    fn node(name: &str, ready: bool, addrs: &[(&str, &str)]) -> Arc<Node> {
        let addrs: Vec<serde_json::Value> = addrs
            .iter()
            .map(|(t, a)| json!({"type": t, "address": a}))
            .collect();
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"addresses": addrs, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}))
            .unwrap(),
        )
    }

    #[test]
    fn ingress_from_ready_nodes() {
        let nodes = vec![
            node("b", true, &[("InternalIP", "10.0.0.2"), ("Hostname", "b")]),
            node(
                "a",
                true,
                &[("InternalIP", "10.0.0.9"), ("ExternalIP", "203.0.113.5")],
            ),
            node("c", false, &[("InternalIP", "10.0.0.3")]),
        ];
        let ips: Vec<String> = ingress(&nodes).into_iter().map(|i| i.ip.unwrap()).collect();
        assert_eq!(ips, vec!["10.0.0.2", "203.0.113.5"]);
        assert_eq!(ingress(&nodes)[0].ip_mode.as_deref(), Some("VIP"));
    }

    #[test]
    fn port_conflicts() {
        let first = lb("first", "2024-01-01T00:00:00Z", &[(8080, "TCP")]);
        let second = lb(
            "second",
            "2024-01-01T00:01:00Z",
            &[(8080, "TCP"), (9090, "TCP")],
        );
        let third = lb("third", "2024-01-01T00:02:00Z", &[(9090, "TCP")]);
        let udp = lb("udp", "2024-01-01T00:03:00Z", &[(8080, "UDP")]);
        let all = vec![first.clone(), second.clone(), third.clone(), udp.clone()];
        let none = Settings::default();
        assert_eq!(conflict(&first, &all, &none), None);
        let (port, proto, who) = conflict(&second, &all, &none).unwrap();
        assert_eq!(
            (port, proto.as_str(), who.as_str()),
            (8080, "TCP", "LoadBalancer service default/first")
        );
        // The blocked Service holds nothing, so the third gets 9090.
        assert_eq!(conflict(&third, &all, &none), None);
        assert_eq!(conflict(&udp, &all, &none), None);
        // 80/443 belong to the ingress controller.
        let web = lb("web", "2024-01-01T00:00:00Z", &[(80, "TCP")]);
        assert!(
            conflict(&web, std::slice::from_ref(&web), &Settings::with_ingress())
                .unwrap()
                .2
                .contains("ingress")
        );
        assert_eq!(conflict(&web, std::slice::from_ref(&web), &none), None);
    }

    #[test]
    fn classes() {
        let mut s = (*lb("x", "2024-01-01T00:00:00Z", &[(1, "TCP")])).clone();
        assert!(handled(&s));
        s.spec.as_mut().unwrap().load_balancer_class = Some("example.com/other".into());
        assert!(!handled(&s));
        s.spec.as_mut().unwrap().load_balancer_class = Some(LOAD_BALANCER_CLASS.into());
        assert!(handled(&s));
    }
}
