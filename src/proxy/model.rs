//! The proxy's view of the cluster: Services and EndpointSlices reduced to the service
//! ports this node must program, each with its destinations (cluster IP, node port,
//! external and load-balancer IPs), traffic policies, session affinity and the endpoints
//! chosen by upstream's rules (ready endpoints; serving-and-terminating ones only when no
//! endpoint is ready; node-local subsets for the `Local` policies).
//!
//! Pure data, no IO: everything here is table-tested.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The EndpointSlice label naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Services with this label belong to another proxy (upstream skips them too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Services with this label are headless for proxies.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// A transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Parses a Kubernetes protocol name (`None` = TCP, the API default).
    pub fn parse(p: Option<&str>) -> Option<Protocol> {
        match p.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The nftables name (`tcp`, `udp`, `sctp`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One endpoint of a service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// The endpoint's address.
    pub ip: Ipv4Addr,
    /// The target port.
    pub port: u16,
    /// Whether it runs on this node.
    pub local: bool,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// One port of one Service, as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port's name (may be empty for single-port Services).
    pub port_name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// The cluster IP.
    pub cluster_ip: Ipv4Addr,
    /// The service port.
    pub port: u16,
    /// The node port (NodePort and LoadBalancer Services).
    pub node_port: Option<u16>,
    /// `spec.externalIPs` and `status.loadBalancer.ingress[].ip` (VIP mode).
    pub external_ips: Vec<Ipv4Addr>,
    /// `externalTrafficPolicy: Local` on an externally reachable Service.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// ClientIP session affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// Endpoints for cluster-wide traffic (ready, else serving+terminating).
    pub cluster_endpoints: Vec<Endpoint>,
    /// Endpoints on this node (ready, else serving+terminating), for the `Local` policies.
    pub local_endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// `ns/name/proto/port-name`, upstream's service port name.
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.protocol.nft(),
            self.port_name
        )
    }

    /// Whether traffic to the cluster IP has endpoints to go to.
    pub fn internal_endpoints(&self) -> &[Endpoint] {
        if self.internal_local {
            &self.local_endpoints
        } else {
            &self.cluster_endpoints
        }
    }

    /// Endpoints for node-port, external and load-balancer traffic from outside.
    pub fn external_endpoints(&self) -> &[Endpoint] {
        if self.external_local {
            &self.local_endpoints
        } else {
            &self.cluster_endpoints
        }
    }

    /// Every endpoint traffic may currently reach (for conntrack cleanup).
    pub fn reachable(&self) -> BTreeSet<&Endpoint> {
        self.cluster_endpoints
            .iter()
            .chain(self.local_endpoints.iter())
            .collect()
    }

    /// The addresses that carry this port besides node ports: the cluster IP and the
    /// external/load-balancer IPs.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        std::iter::once(self.cluster_ip).chain(self.external_ips.iter().copied())
    }
}

/// What a proxy instance needs to know about its node and cluster.
#[derive(Debug, Clone, Default)]
pub struct NodeContext {
    /// This node's name (endpoints with this `nodeName` are local).
    pub node_name: String,
    /// Cluster IPs not to program (the node-local DNS address).
    pub skip_ips: Vec<Ipv4Addr>,
}

/// Why a Service is not programmed (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// `type: ExternalName`.
    ExternalName,
    /// No cluster IP (headless, or not allocated yet).
    NoClusterIp,
    /// The cluster IP is not IPv4 (this proxy programs `table ip`).
    NotIpv4,
    /// Another proxy owns it (`service.kubernetes.io/service-proxy-name`).
    OtherProxy,
    /// Its cluster IP is handled node-locally (the DNS address).
    NodeLocal,
}

/// Whether and why a Service is left alone.
pub fn skip_reason(svc: &Service, ctx: &NodeContext) -> Option<Skip> {
    let labels = svc.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL)) {
        return Some(Skip::OtherProxy);
    }
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Some(Skip::ExternalName);
    }
    let ip = spec
        .cluster_ips
        .as_ref()
        .and_then(|ips| ips.first())
        .or(spec.cluster_ip.as_ref());
    let ip = match ip.map(String::as_str) {
        None | Some("") | Some("None") => return Some(Skip::NoClusterIp),
        Some(ip) => ip,
    };
    if labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL)) {
        return Some(Skip::NoClusterIp);
    }
    match ip.parse::<Ipv4Addr>() {
        Ok(v4) if ctx.skip_ips.contains(&v4) => Some(Skip::NodeLocal),
        Ok(_) => None,
        Err(_) => Some(Skip::NotIpv4),
    }
}

/// One endpoint with its conditions, merged over all slices of a Service.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

/// Reduces Services and EndpointSlices to the service ports to program, sorted by id.
pub fn build<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ctx: &NodeContext,
) -> Vec<ServicePort> {
    // (namespace, service) → slices.
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        if s.address_type != "IPv4" {
            continue;
        }
        let ns = s.metadata.namespace.as_deref().unwrap_or("");
        if let Some(name) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            by_service.entry((ns, name.as_str())).or_default().push(s);
        }
    }
    let mut out = Vec::new();
    for svc in services {
        if skip_reason(svc, ctx).is_some() {
            continue;
        }
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let ns = svc.metadata.namespace.as_deref().unwrap_or("");
        let Some(name) = svc.metadata.name.as_deref() else {
            continue;
        };
        let Some(cluster_ip) = spec
            .cluster_ips
            .as_ref()
            .and_then(|ips| ips.first())
            .or(spec.cluster_ip.as_ref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
        let mut external_ips: Vec<Ipv4Addr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        if svc_type == "LoadBalancer" {
            for ing in svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
            {
                // `ipMode: Proxy` means the load balancer delivers to the node itself.
                if ing.ip_mode.as_deref() == Some("Proxy") {
                    continue;
                }
                if let Some(ip) = ing.ip.as_ref().and_then(|ip| ip.parse().ok()) {
                    external_ips.push(ip);
                }
            }
        }
        external_ips.sort();
        external_ips.dedup();
        external_ips.retain(|ip| *ip != cluster_ip);
        let externally_reachable = matches!(svc_type, "NodePort" | "LoadBalancer")
            || (svc_type == "ClusterIP" && !external_ips.is_empty());
        let external_local =
            externally_reachable && spec.external_traffic_policy.as_deref() == Some("Local");
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .filter(|t| *t > 0)
                .map(|t| t as u32)
                .unwrap_or(10800)
        });
        let slices = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for sp in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(sp.protocol.as_deref()) else {
                continue;
            };
            let Ok(port) = u16::try_from(sp.port) else {
                continue;
            };
            let port_name = sp.name.clone().unwrap_or_default();
            let node_port = matches!(svc_type, "NodePort" | "LoadBalancer")
                .then_some(sp.node_port)
                .flatten()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0);
            let candidates = candidates(slices, &port_name, protocol, &ctx.node_name);
            let cluster_endpoints = choose(&candidates, |_| true);
            let local_endpoints = choose(&candidates, |c| c.local);
            out.push(ServicePort {
                namespace: ns.to_string(),
                name: name.to_string(),
                port_name,
                protocol,
                cluster_ip,
                port,
                node_port,
                external_ips: external_ips.clone(),
                external_local,
                internal_local,
                affinity_timeout,
                cluster_endpoints,
                local_endpoints,
            });
        }
    }
    out.sort_by_key(ServicePort::id);
    out
}

/// The endpoints of the slices' port matching (name, protocol), deduplicated (a ready
/// copy wins over a not-ready one while endpoints move between slices).
fn candidates(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    node_name: &str,
) -> BTreeMap<(Ipv4Addr, u16), Candidate> {
    let mut out: BTreeMap<(Ipv4Addr, u16), Candidate> = BTreeMap::new();
    for slice in slices {
        let Some(port) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
        }) else {
            continue;
        };
        let Some(port) = port.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for ep in &slice.endpoints {
            let cond = ep.conditions.clone().unwrap_or_default();
            let ready = cond.ready.unwrap_or(true);
            let c = Candidate {
                ready,
                serving: cond.serving.unwrap_or(ready),
                terminating: cond.terminating.unwrap_or(false),
                local: ep.node_name.as_deref() == Some(node_name),
            };
            // An endpoint has one address for an IPv4 slice; take the first.
            let Some(ip) = ep
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .and_then(|ip| match ip {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                })
            else {
                continue;
            };
            out.entry((ip, port))
                .and_modify(|old| {
                    if c.ready && !old.ready {
                        *old = c;
                    }
                })
                .or_insert(c);
        }
    }
    out
}

/// Upstream's endpoint choice within a subset: the ready endpoints, or if there are none,
/// those still serving while terminating.
fn choose(
    candidates: &BTreeMap<(Ipv4Addr, u16), Candidate>,
    subset: impl Fn(&Candidate) -> bool,
) -> Vec<Endpoint> {
    let pick = |pred: &dyn Fn(&Candidate) -> bool| -> Vec<Endpoint> {
        candidates
            .iter()
            .filter(|(_, c)| subset(c) && pred(c))
            .map(|((ip, port), c)| Endpoint {
                ip: *ip,
                port: *port,
                local: c.local,
            })
            .collect()
    };
    let ready = pick(&|c| c.ready);
    if !ready.is_empty() {
        return ready;
    }
    pick(&|c| c.serving && c.terminating)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }
    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }
    fn ctx() -> NodeContext {
        NodeContext {
            node_name: "n1".into(),
            skip_ips: vec!["10.43.0.10".parse().unwrap()],
        }
    }
    fn web(extra_spec: serde_json::Value) -> Service {
        let mut v = json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.5", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        });
        for (k, val) in extra_spec.as_object().unwrap() {
            v["spec"][k] = val.clone();
        }
        svc(v)
    }
    fn ep(ip: &str, node: &str, cond: serde_json::Value) -> serde_json::Value {
        json!({"addresses": [ip], "nodeName": node, "conditions": cond})
    }
    fn web_slice(endpoints: Vec<serde_json::Value>) -> EndpointSlice {
        slice(json!({
            "metadata": {"name": "web-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
    }

    #[test]
    fn skips() {
        let c = ctx();
        let cases: Vec<(serde_json::Value, Option<Skip>)> = vec![
            (json!({"spec": {"clusterIP": "10.43.0.5"}}), None),
            (
                json!({"spec": {"type": "ExternalName", "externalName": "x.example"}}),
                Some(Skip::ExternalName),
            ),
            (
                json!({"spec": {"clusterIP": "None"}}),
                Some(Skip::NoClusterIp),
            ),
            (json!({"spec": {}}), Some(Skip::NoClusterIp)),
            (
                json!({"spec": {"clusterIP": "fd00::1"}}),
                Some(Skip::NotIpv4),
            ),
            (
                json!({"spec": {"clusterIP": "10.43.0.10"}}),
                Some(Skip::NodeLocal),
            ),
            (
                json!({"metadata": {"labels": {SERVICE_PROXY_NAME_LABEL: "other"}},
                       "spec": {"clusterIP": "10.43.0.5"}}),
                Some(Skip::OtherProxy),
            ),
        ];
        for (v, want) in cases {
            assert_eq!(skip_reason(&svc(v.clone()), &c), want, "{v}");
        }
    }

    #[test]
    fn endpoint_choice() {
        let ready = json!({"ready": true});
        let not_ready = json!({"ready": false, "serving": false});
        let terminating_serving = json!({"ready": false, "serving": true, "terminating": true});
        let terminating_gone = json!({"ready": false, "serving": false, "terminating": true});
        type Case = (
            &'static str,
            Vec<serde_json::Value>,
            Vec<&'static str>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "ready only",
                vec![
                    ep("10.42.0.2", "n1", ready.clone()),
                    ep("10.42.1.2", "n2", ready.clone()),
                    ep("10.42.0.3", "n1", not_ready.clone()),
                ],
                vec!["10.42.0.2:8080", "10.42.1.2:8080"],
                vec!["10.42.0.2:8080"],
            ),
            (
                "terminating fallback when none ready",
                vec![
                    ep("10.42.0.2", "n1", terminating_serving.clone()),
                    ep("10.42.0.3", "n1", terminating_gone.clone()),
                    ep("10.42.0.4", "n1", not_ready.clone()),
                ],
                vec!["10.42.0.2:8080"],
                vec!["10.42.0.2:8080"],
            ),
            (
                "terminating ignored while one is ready",
                vec![
                    ep("10.42.1.2", "n2", ready.clone()),
                    ep("10.42.0.2", "n1", terminating_serving.clone()),
                ],
                vec!["10.42.1.2:8080"],
                // Local subset falls back on its own.
                vec!["10.42.0.2:8080"],
            ),
            (
                "no conditions means ready",
                vec![json!({"addresses": ["10.42.0.9"]})],
                vec!["10.42.0.9:8080"],
                vec![],
            ),
            ("none", vec![], vec![], vec![]),
        ];
        for (what, eps, cluster, local) in cases {
            let s = web(json!({}));
            let sl = web_slice(eps);
            let ports = build([&s], [&sl], &ctx());
            assert_eq!(ports.len(), 1, "{what}");
            let got: Vec<String> = ports[0]
                .cluster_endpoints
                .iter()
                .map(|e| e.to_string())
                .collect();
            assert_eq!(got, cluster, "{what}: cluster");
            let got: Vec<String> = ports[0]
                .local_endpoints
                .iter()
                .map(|e| e.to_string())
                .collect();
            assert_eq!(got, local, "{what}: local");
        }
    }

    #[test]
    fn ports_and_policies() {
        let s = svc(json!({
            "metadata": {"name": "lb", "namespace": "ns"},
            "spec": {
                "type": "LoadBalancer", "clusterIP": "10.43.1.1",
                "externalIPs": ["192.0.2.7"],
                "externalTrafficPolicy": "Local",
                "internalTrafficPolicy": "Local",
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                "ports": [
                    {"name": "http", "port": 80, "nodePort": 30080},
                    {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
                ]
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}, {"ip": "192.0.2.8", "ipMode": "Proxy"}, {"hostname": "x"}]}}
        }));
        let ports = build([&s], [], &ctx());
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].id(), "ns/lb/tcp/http");
        assert_eq!(ports[1].id(), "ns/lb/udp/dns");
        let p = &ports[0];
        assert_eq!(p.node_port, Some(30080));
        assert_eq!(
            p.external_ips,
            vec![
                "192.0.2.7".parse::<Ipv4Addr>().unwrap(),
                "192.0.2.9".parse().unwrap()
            ]
        );
        assert!(p.external_local && p.internal_local);
        assert_eq!(p.affinity_timeout, Some(60));

        // ClusterIP: no node port even if one is set; ETP ignored without external IPs;
        // affinity default timeout 3h.
        let s = web(json!({"externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP"}));
        let ports = build([&s], [], &ctx());
        assert_eq!(ports[0].node_port, None);
        assert!(!ports[0].external_local);
        assert_eq!(ports[0].affinity_timeout, Some(10800));
    }

    #[test]
    fn slice_port_matching() {
        let s = svc(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.5", "ports": [
                {"name": "http", "port": 80}, {"name": "metrics", "port": 9090}]}
        }));
        let mut a = web_slice(vec![ep("10.42.0.2", "n1", json!({"ready": true}))]);
        a.ports = Some(vec![
            serde_json::from_value(json!({"name": "http", "port": 8080})).unwrap(),
            serde_json::from_value(json!({"name": "metrics", "port": 9100})).unwrap(),
        ]);
        // A second slice duplicating the endpoint (not ready) and one of another service.
        let mut b = web_slice(vec![ep("10.42.0.2", "n1", json!({"ready": false}))]);
        b.metadata.name = Some("web-def".into());
        let mut other = web_slice(vec![ep("10.42.9.9", "n1", json!({"ready": true}))]);
        other.metadata.labels = Some([(SERVICE_NAME_LABEL.to_string(), "x".to_string())].into());
        let ports = build([&s], [&b, &a, &other], &ctx());
        let eps: Vec<Vec<String>> = ports
            .iter()
            .map(|p| p.cluster_endpoints.iter().map(|e| e.to_string()).collect())
            .collect();
        assert_eq!(
            eps,
            vec![
                vec!["10.42.0.2:8080".to_string()],
                vec!["10.42.0.2:9100".to_string()]
            ]
        );
    }
}
