//! The in-memory view cluster DNS answers from: Services with their ports, the ready
//! endpoints of their EndpointSlices, the existing Namespaces, and a reverse map from IPs
//! to names. Built from API objects (or by hand in tests); every name is lowercase, so
//! lookups are case-insensitive as the Kubernetes DNS specification requires.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A port of a Service or of an endpoint (for SRV records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The port's name (lowercase; empty for an unnamed port).
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The port number.
    pub port: u16,
}

/// What a Service's own name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A virtual IP per family (empty until one is allocated).
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: the endpoints' addresses.
    Headless,
    /// `type: ExternalName`: a CNAME to this name (lowercase, no trailing dot).
    ExternalName(String),
}

/// An endpoint DNS publishes (ready, or any if the Service publishes not-ready addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint's (first) address.
    pub ip: IpAddr,
    /// `hostname` of the endpoint (lowercase), e.g. a StatefulSet pod's name.
    pub hostname: Option<String>,
    /// The ports of the EndpointSlice the endpoint came from.
    pub ports: Vec<Port>,
}

impl Endpoint {
    /// The endpoint's label under its Service: its hostname, else its dashed address.
    pub fn label(&self) -> String {
        match &self.hostname {
            Some(h) => h.clone(),
            None => dashed(self.ip),
        }
    }
}

/// One Service as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// What the Service's name resolves to.
    pub kind: Kind,
    /// The Service's ports.
    pub ports: Vec<Port>,
    /// The published endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// Where a reverse (PTR) lookup of an IP points.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reverse {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The endpoint label, for endpoint addresses (`None` for a cluster IP).
    pub endpoint: Option<String>,
}

/// Everything cluster DNS knows.
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// Whether every watch has listed once (until then cluster names get SERVFAIL).
    pub synced: bool,
    /// Existing namespaces.
    pub namespaces: HashSet<String>,
    /// Services by (namespace, name).
    pub services: HashMap<(String, String), Service>,
    /// Names of IPs, for PTR records.
    pub reverse: HashMap<IpAddr, Vec<Reverse>>,
}

impl Index {
    /// The Service `name` in `namespace` (lowercase).
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Adds a service (and its reverse entries); for tests and [`Index::build`].
    pub fn insert(&mut self, namespace: &str, name: &str, svc: Service) {
        let (namespace, name) = (namespace.to_lowercase(), name.to_lowercase());
        if let Kind::ClusterIp(ips) = &svc.kind {
            for ip in ips {
                self.reverse.entry(*ip).or_default().push(Reverse {
                    namespace: namespace.clone(),
                    service: name.clone(),
                    endpoint: None,
                });
            }
        }
        for ep in &svc.endpoints {
            self.reverse.entry(ep.ip).or_default().push(Reverse {
                namespace: namespace.clone(),
                service: name.clone(),
                endpoint: Some(ep.label()),
            });
        }
        self.namespaces.insert(namespace.clone());
        self.services.insert((namespace, name), svc);
    }

    /// Builds the index from the watched objects.
    pub fn build(
        services: &[impl AsRef<KubeService>],
        slices: &[impl AsRef<EndpointSlice>],
        namespaces: &[impl AsRef<Namespace>],
    ) -> Index {
        // (ns, service) → endpoints by IP (an IP may appear in several slices while they
        // change; the first one wins).
        let mut endpoints: HashMap<(String, String), BTreeMap<IpAddr, Endpoint>> = HashMap::new();
        let mut not_ready: HashMap<(String, String), BTreeMap<IpAddr, Endpoint>> = HashMap::new();
        for slice in slices {
            let slice = slice.as_ref();
            if slice.address_type == "FQDN" {
                continue;
            }
            let Some(svc) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            let key = (
                slice
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_default()
                    .to_lowercase(),
                svc.to_lowercase(),
            );
            let ports: Vec<Port> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(Port {
                        name: p.name.clone().unwrap_or_default().to_lowercase(),
                        protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                        port: u16::try_from(p.port?).ok()?,
                    })
                })
                .collect();
            for ep in &slice.endpoints {
                let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                    continue;
                };
                // A nil `ready` means ready (API documentation of EndpointConditions).
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                let target = if ready {
                    &mut endpoints
                } else {
                    &mut not_ready
                };
                target
                    .entry(key.clone())
                    .or_default()
                    .entry(ip)
                    .or_insert_with(|| Endpoint {
                        ip,
                        hostname: ep.hostname.as_ref().map(|h| h.to_lowercase()),
                        ports: ports.clone(),
                    });
            }
        }
        let mut index = Index::default();
        for ns in namespaces {
            if let Some(n) = &ns.as_ref().metadata.name {
                index.namespaces.insert(n.to_lowercase());
            }
        }
        for svc in services {
            let svc = svc.as_ref();
            let (Some(name), Some(ns)) = (&svc.metadata.name, &svc.metadata.namespace) else {
                continue;
            };
            let key = (ns.to_lowercase(), name.to_lowercase());
            let Some(spec) = &svc.spec else { continue };
            let kind = if spec.type_.as_deref() == Some("ExternalName") {
                let target = spec.external_name.clone().unwrap_or_default();
                Kind::ExternalName(target.trim_end_matches('.').to_lowercase())
            } else if spec.cluster_ip.as_deref() == Some("None") {
                Kind::Headless
            } else {
                let mut ips: Vec<IpAddr> = spec
                    .cluster_ips
                    .iter()
                    .flatten()
                    .chain(spec.cluster_ip.iter())
                    .filter_map(|ip| ip.parse().ok())
                    .collect();
                ips.dedup();
                Kind::ClusterIp(ips)
            };
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(Port {
                        name: p.name.clone().unwrap_or_default().to_lowercase(),
                        protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                        port: u16::try_from(p.port).ok()?,
                    })
                })
                .collect();
            let mut eps: Vec<Endpoint> = endpoints
                .remove(&key)
                .unwrap_or_default()
                .into_values()
                .collect();
            if spec.publish_not_ready_addresses == Some(true) {
                let have: HashSet<IpAddr> = eps.iter().map(|e| e.ip).collect();
                eps.extend(
                    not_ready
                        .remove(&key)
                        .unwrap_or_default()
                        .into_values()
                        .filter(|e| !have.contains(&e.ip)),
                );
            }
            if matches!(kind, Kind::ExternalName(_)) {
                eps.clear();
            }
            index.insert(
                &key.0,
                &key.1,
                Service {
                    kind,
                    ports,
                    endpoints: eps,
                },
            );
        }
        // Reverse names come out in a stable order.
        for names in index.reverse.values_mut() {
            names.sort();
            names.dedup();
        }
        index
    }
}

/// An address with its separators replaced by dashes: `10-42-0-5`, `fd00--1`.
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The address a dashed label names, if it is one.
pub fn undashed(label: &str) -> Option<IpAddr> {
    if let Ok(ip) = label.replace('-', ".").parse::<std::net::Ipv4Addr>() {
        return Some(IpAddr::V4(ip));
    }
    label
        .replace('-', ":")
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn build_from_objects() {
        let services: Vec<KubeService> = vec![
            obj(json!({"metadata": {"name": "Web", "namespace": "default"},
                "spec": {"clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"],
                         "ports": [{"name": "http", "port": 80}, {"port": 81, "protocol": "UDP"}]}})),
            obj(json!({"metadata": {"name": "db", "namespace": "default"},
                "spec": {"clusterIP": "None", "publishNotReadyAddresses": true}})),
            obj(json!({"metadata": {"name": "hl", "namespace": "default"},
                "spec": {"clusterIP": "None"}})),
            obj(json!({"metadata": {"name": "ext", "namespace": "default"},
                "spec": {"type": "ExternalName", "externalName": "Example.COM."}})),
        ];
        let slices: Vec<EndpointSlice> = vec![
            obj(json!({"metadata": {"name": "db-1", "namespace": "default",
                    "labels": {SERVICE_NAME_LABEL: "db"}},
                "addressType": "IPv4",
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
                    {"addresses": ["10.42.0.6"], "conditions": {"ready": false}}]})),
            obj(json!({"metadata": {"name": "hl-1", "namespace": "default",
                    "labels": {SERVICE_NAME_LABEL: "hl"}},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["10.42.0.7"]},
                    {"addresses": ["10.42.0.8"], "conditions": {"ready": false}}]})),
        ];
        let namespaces: Vec<Namespace> = vec![obj(json!({"metadata": {"name": "default"}}))];
        fn arcs<T>(v: Vec<T>) -> Vec<std::sync::Arc<T>> {
            v.into_iter().map(std::sync::Arc::new).collect()
        }
        let index = Index::build(&arcs(services), &arcs(slices), &arcs(namespaces));
        let web = index.service("default", "web").unwrap();
        assert_eq!(
            web.kind,
            Kind::ClusterIp(vec!["10.43.0.20".parse().unwrap()])
        );
        assert_eq!(web.ports[1].protocol, "udp");
        assert_eq!(web.ports[1].name, "");
        let db = index.service("default", "db").unwrap();
        assert_eq!(db.endpoints.len(), 2, "publishNotReadyAddresses");
        assert_eq!(db.endpoints[0].hostname.as_deref(), Some("db-0"));
        assert_eq!(db.endpoints[0].ports[0].port, 5432);
        let hl = index.service("default", "hl").unwrap();
        assert_eq!(hl.endpoints.len(), 1, "not-ready endpoint left out");
        assert_eq!(hl.endpoints[0].label(), "10-42-0-7");
        assert_eq!(
            index.service("default", "ext").unwrap().kind,
            Kind::ExternalName("example.com".into())
        );
        let ip: IpAddr = "10.43.0.20".parse().unwrap();
        assert_eq!(index.reverse[&ip][0].service, "web");
        let ep: IpAddr = "10.42.0.5".parse().unwrap();
        assert_eq!(index.reverse[&ep][0].endpoint.as_deref(), Some("db-0"));
        assert!(index.namespaces.contains("default"));
    }

    #[test]
    fn dashes() {
        for (ip, label) in [("10.42.0.5", "10-42-0-5"), ("fd00::1", "fd00--1")] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(dashed(ip), label);
            assert_eq!(undashed(label), Some(ip));
        }
        assert_eq!(undashed("web"), None);
        assert_eq!(undashed("1-2-3"), None);
    }
}
