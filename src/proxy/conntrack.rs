//! Conntrack cleanup for UDP services, as upstream kube-proxy does it: UDP has no
//! connection close, so a flow NATed to an endpoint that went away (or cached before the
//! service had endpoints) would keep black-holing a client that reuses its source port —
//! DNS clients do. After each sync the flows of removed endpoints, and of UDP services
//! that just got their first endpoint, are deleted with `conntrack -D`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Stdio;

use super::model::{Protocol, ServicePort};

/// A set of conntrack entries to delete (UDP only).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flow {
    /// Flows to a service address NATed to an endpoint.
    ServiceIp {
        /// The cluster/external/load-balancer IP.
        ip: Ipv4Addr,
        /// The endpoint.
        endpoint: Ipv4Addr,
    },
    /// Flows to a node port NATed to an endpoint.
    NodePort {
        /// The node port.
        port: u16,
        /// The endpoint.
        endpoint: Ipv4Addr,
    },
    /// Every flow to a service address.
    AllToIp(Ipv4Addr),
    /// Every flow to a node port.
    AllToNodePort(u16),
}

impl Flow {
    /// The `conntrack` arguments deleting these flows.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["-D", "-p", "udp"].iter().map(|s| s.to_string()).collect();
        match self {
            Flow::ServiceIp { ip, endpoint } => {
                a.extend(["--orig-dst".into(), ip.to_string()]);
                a.extend(["--dst-nat".into(), endpoint.to_string()]);
            }
            Flow::NodePort { port, endpoint } => {
                a.extend(["--orig-port-dst".into(), port.to_string()]);
                a.extend(["--dst-nat".into(), endpoint.to_string()]);
            }
            Flow::AllToIp(ip) => a.extend(["--orig-dst".into(), ip.to_string()]),
            Flow::AllToNodePort(port) => a.extend(["--orig-port-dst".into(), port.to_string()]),
        }
        a
    }
}

/// The UDP flows made stale by going from `old` to `new`.
pub fn stale_flows(old: &[ServicePort], new: &[ServicePort]) -> BTreeSet<Flow> {
    let udp = |ports: &[ServicePort]| -> BTreeMap<String, ServicePort> {
        ports
            .iter()
            .filter(|p| p.protocol == Protocol::Udp)
            .map(|p| (p.id(), p.clone()))
            .collect()
    };
    let (old, new) = (udp(old), udp(new));
    let mut out = BTreeSet::new();
    for (id, p) in &old {
        let still: BTreeSet<Ipv4Addr> = new
            .get(id)
            .map(|q| q.reachable().into_iter().map(|e| e.ip).collect())
            .unwrap_or_default();
        for ep in p.reachable() {
            if still.contains(&ep.ip) {
                continue;
            }
            for ip in p.addresses() {
                out.insert(Flow::ServiceIp {
                    ip,
                    endpoint: ep.ip,
                });
            }
            if let Some(port) = p.node_port {
                out.insert(Flow::NodePort {
                    port,
                    endpoint: ep.ip,
                });
            }
        }
    }
    for (id, q) in &new {
        let had = old.get(id).is_some_and(|p| !p.reachable().is_empty());
        if had || q.reachable().is_empty() {
            continue;
        }
        for ip in q.addresses() {
            out.insert(Flow::AllToIp(ip));
        }
        if let Some(port) = q.node_port {
            out.insert(Flow::AllToNodePort(port));
        }
    }
    out
}

/// Deletes the flows; failures are logged (the next change retries nothing: stale UDP
/// flows also expire by themselves).
pub async fn delete(flows: &BTreeSet<Flow>) {
    for f in flows {
        let out = tokio::process::Command::new("conntrack")
            .args(f.args())
            .stdin(Stdio::null())
            .output()
            .await;
        match out {
            Ok(o) if o.status.success() => {
                tracing::debug!(flow = ?f, "deleted stale conntrack entries")
            }
            // conntrack exits 1 when nothing matched.
            Ok(o) if String::from_utf8_lossy(&o.stderr).contains(" 0 flow entries") => {}
            Ok(o) => tracing::warn!(
                flow = ?f,
                err = %String::from_utf8_lossy(&o.stderr).trim(),
                "conntrack -D failed"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(
                    "conntrack not found on PATH (Debian package conntrack): stale UDP flows stay until they expire"
                );
                return;
            }
            Err(e) => tracing::warn!(flow = ?f, "conntrack: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::Endpoint;
    use super::*;

    fn dns(eps: &[&str], node_port: Option<u16>) -> ServicePort {
        let eps: Vec<Endpoint> = eps
            .iter()
            .map(|ip| Endpoint {
                ip: ip.parse().unwrap(),
                port: 53,
                local: true,
            })
            .collect();
        ServicePort {
            namespace: "kube-system".into(),
            name: "dns".into(),
            port_name: "dns".into(),
            protocol: Protocol::Udp,
            cluster_ip: "10.43.0.20".parse().unwrap(),
            port: 53,
            node_port,
            external_ips: vec![],
            external_local: false,
            internal_local: false,
            affinity_timeout: None,
            cluster_endpoints: eps.clone(),
            local_endpoints: eps,
        }
    }

    #[test]
    fn stale() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        type Case = (&'static str, Vec<ServicePort>, Vec<ServicePort>, Vec<Flow>);
        let cases: Vec<Case> = vec![
            (
                "endpoint removed",
                vec![dns(&["10.42.0.2", "10.42.0.3"], Some(30053))],
                vec![dns(&["10.42.0.2"], Some(30053))],
                vec![
                    Flow::ServiceIp {
                        ip: ip("10.43.0.20"),
                        endpoint: ip("10.42.0.3"),
                    },
                    Flow::NodePort {
                        port: 30053,
                        endpoint: ip("10.42.0.3"),
                    },
                ],
            ),
            (
                "service deleted",
                vec![dns(&["10.42.0.2"], None)],
                vec![],
                vec![Flow::ServiceIp {
                    ip: ip("10.43.0.20"),
                    endpoint: ip("10.42.0.2"),
                }],
            ),
            (
                "first endpoint",
                vec![dns(&[], None)],
                vec![dns(&["10.42.0.2"], None)],
                vec![Flow::AllToIp(ip("10.43.0.20"))],
            ),
            (
                "unchanged",
                vec![dns(&["10.42.0.2"], None)],
                vec![dns(&["10.42.0.2"], None)],
                vec![],
            ),
            (
                "tcp ignored",
                vec![{
                    let mut p = dns(&["10.42.0.2"], None);
                    p.protocol = Protocol::Tcp;
                    p
                }],
                vec![],
                vec![],
            ),
        ];
        for (what, old, new, want) in cases {
            let got: Vec<Flow> = stale_flows(&old, &new).into_iter().collect();
            assert_eq!(got, want, "{what}");
        }
        assert_eq!(
            Flow::ServiceIp {
                ip: ip("10.43.0.20"),
                endpoint: ip("10.42.0.3")
            }
            .args()
            .join(" "),
            "-D -p udp --orig-dst 10.43.0.20 --dst-nat 10.42.0.3"
        );
    }
}
