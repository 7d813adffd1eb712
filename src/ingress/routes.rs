//! The routing table: Ingress rules compiled into host → path lookups, and the lookup of a
//! backend's ready endpoints. Pure data, no IO, so every rule of the Ingress spec is unit
//! tested here.
//!
//! Semantics (networking.k8s.io/v1): a request's host picks the rules with that exact host,
//! then a matching wildcard host (`*.example.com` covers exactly one extra leading label),
//! then the rules without a host; within them the longest matching path wins, `Exact`
//! before `Prefix` at the same length. `Prefix` matches whole path elements (`/foo` matches
//! `/foo` and `/foo/bar`, not `/foobar`); `ImplementationSpecific` is treated as `Prefix`.
//! Nothing matching falls back to the oldest Ingress's `defaultBackend`.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};

/// The port of a backend Service, as an Ingress names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    /// `port.number`.
    Number(i32),
    /// `port.name`.
    Name(String),
}

/// A Service port an Ingress routes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The Ingress's namespace (backends are always in the Ingress's namespace).
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// Its port.
    pub port: PortRef,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Exact,
    Prefix,
}

#[derive(Debug, Clone)]
struct Route {
    path: String,
    kind: PathKind,
    backend: Backend,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        match self.kind {
            PathKind::Exact => path == self.path,
            PathKind::Prefix => prefix_matches(&self.path, path),
        }
    }
}

/// Element-wise prefix match: `/a/b` matches `/a/b` and `/a/b/c`, not `/a/bc`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// A TLS certificate reference: the Secret (in the Ingress's namespace) for some hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRef {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub secret: String,
}

/// The compiled routes of every Ingress this controller serves.
#[derive(Debug, Default)]
pub struct Table {
    exact: HashMap<String, Vec<Route>>,
    /// `example.com` for `*.example.com`.
    wildcard: HashMap<String, Vec<Route>>,
    any_host: Vec<Route>,
    default: Option<Backend>,
    /// Host (or `*.suffix`) → certificate Secret.
    pub tls: BTreeMap<String, TlsRef>,
}

fn backend_of(namespace: &str, b: &IngressBackend) -> Option<Backend> {
    let svc = b.service.as_ref()?;
    let port = svc.port.as_ref()?;
    let port = match (&port.number, &port.name) {
        (Some(n), _) => PortRef::Number(*n),
        (None, Some(name)) => PortRef::Name(name.clone()),
        _ => return None,
    };
    Some(Backend {
        namespace: namespace.to_string(),
        service: svc.name.clone(),
        port,
    })
}

impl Table {
    /// Compiles the Ingresses (already filtered to this controller's class). Older
    /// Ingresses win conflicts (the same host+path in two of them), as in most controllers.
    pub fn build(ingresses: &[&Ingress]) -> Table {
        let mut sorted: Vec<&Ingress> = ingresses.to_vec();
        sorted.sort_by(|a, b| {
            let key = |i: &Ingress| {
                (
                    i.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    i.metadata.namespace.clone(),
                    i.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        let mut t = Table::default();
        for ing in sorted {
            let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
            let Some(spec) = &ing.spec else { continue };
            if t.default.is_none() {
                t.default = spec
                    .default_backend
                    .as_ref()
                    .and_then(|b| backend_of(ns, b));
            }
            for tls in spec.tls.iter().flatten() {
                let Some(secret) = &tls.secret_name else {
                    continue;
                };
                for host in tls.hosts.iter().flatten() {
                    t.tls.entry(host.to_lowercase()).or_insert(TlsRef {
                        namespace: ns.to_string(),
                        secret: secret.clone(),
                    });
                }
            }
            for rule in spec.rules.iter().flatten() {
                let host = rule.host.as_deref().unwrap_or("").to_lowercase();
                let list = if host.is_empty() {
                    &mut t.any_host
                } else if let Some(suffix) = host.strip_prefix("*.") {
                    t.wildcard.entry(suffix.to_string()).or_default()
                } else {
                    t.exact.entry(host).or_default()
                };
                for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                    let Some(backend) = backend_of(ns, &p.backend) else {
                        continue;
                    };
                    let kind = match p.path_type.as_str() {
                        "Exact" => PathKind::Exact,
                        _ => PathKind::Prefix,
                    };
                    let path = p.path.clone().unwrap_or_else(|| "/".into());
                    if list.iter().any(|r| r.path == path && r.kind == kind) {
                        continue;
                    }
                    list.push(Route {
                        path,
                        kind,
                        backend,
                    });
                }
            }
        }
        let order = |routes: &mut Vec<Route>| {
            routes.sort_by(|a, b| {
                let len = |r: &Route| r.path.trim_end_matches('/').len();
                len(b)
                    .cmp(&len(a))
                    .then((a.kind == PathKind::Prefix).cmp(&(b.kind == PathKind::Prefix)))
            })
        };
        t.exact.values_mut().for_each(order);
        t.wildcard.values_mut().for_each(order);
        order(&mut t.any_host);
        t
    }

    /// The backend for a request, or `None` (404).
    pub fn route(&self, host: &str, path: &str) -> Option<&Backend> {
        let host = strip_port(host).to_lowercase();
        fn pick<'a>(routes: &'a [Route], path: &str) -> Option<&'a Route> {
            routes.iter().find(|r| r.matches(path))
        }
        let wildcard = host
            .split_once('.')
            .and_then(|(_, suffix)| self.wildcard.get(suffix));
        self.exact
            .get(&host)
            .and_then(|r| pick(r, path))
            .or_else(|| wildcard.and_then(|r| pick(r, path)))
            .or_else(|| pick(&self.any_host, path))
            .map(|r| &r.backend)
            .or(self.default.as_ref())
    }

    /// The certificate Secret for a TLS server name (exact host, then wildcard entry).
    pub fn tls_for(&self, server_name: &str) -> Option<&TlsRef> {
        let name = server_name.to_lowercase();
        self.tls.get(&name).or_else(|| {
            let (_, suffix) = name.split_once('.')?;
            self.tls.get(&format!("*.{suffix}"))
        })
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map(|i| &host[..=i]).unwrap_or(host);
    }
    host.rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map(|(h, _)| h)
        .unwrap_or(host)
}

/// Why a backend has nowhere to send a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// The Service does not exist.
    NoService,
    /// The Service has no port with that number or name.
    NoPort,
    /// No ready endpoint.
    NoEndpoints,
}

/// The ready `ip:port` addresses of a backend, from its Service and EndpointSlices.
pub fn endpoints(
    backend: &Backend,
    services: &[std::sync::Arc<Service>],
    slices: &[std::sync::Arc<EndpointSlice>],
) -> Result<Vec<std::net::SocketAddr>, Unavailable> {
    let svc = services
        .iter()
        .find(|s| {
            s.metadata.namespace.as_deref() == Some(backend.namespace.as_str())
                && s.metadata.name.as_deref() == Some(backend.service.as_str())
        })
        .ok_or(Unavailable::NoService)?;
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .ok_or(Unavailable::NoPort)?;
    let port = ports
        .iter()
        .find(|p| match &backend.port {
            PortRef::Number(n) => p.port == *n,
            PortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
        })
        .ok_or(Unavailable::NoPort)?;
    let port_name = port.name.clone().unwrap_or_default();
    let mut out = Vec::new();
    for slice in slices {
        let labels = slice.metadata.labels.as_ref();
        let owner = labels.and_then(|l| l.get("kubernetes.io/service-name"));
        if slice.metadata.namespace.as_deref() != Some(backend.namespace.as_str())
            || owner.map(String::as_str) != Some(backend.service.as_str())
            || slice.address_type != "IPv4"
        {
            continue;
        }
        let Some(target) = slice.ports.iter().flatten().find_map(|p| {
            (p.name.clone().unwrap_or_default() == port_name)
                .then_some(p.port)
                .flatten()
        }) else {
            continue;
        };
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for addr in &ep.addresses {
                if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
                    out.push(std::net::SocketAddr::new(ip, target as u16));
                }
            }
        }
    }
    if out.is_empty() {
        return Err(Unavailable::NoEndpoints);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(name: &str, created: &str, spec: serde_json::Value) -> Ingress {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
            "spec": spec,
        }))
        .unwrap()
    }

    fn path(p: &str, ty: &str, svc: &str) -> serde_json::Value {
        json!({"path": p, "pathType": ty, "backend": {"service": {"name": svc, "port": {"number": 80}}}})
    }

    fn svc_of(t: &Table, host: &str, p: &str) -> Option<String> {
        t.route(host, p).map(|b| b.service.clone())
    }

    // Cases from the Ingress concept page's "Examples" table of path matching
    // (kubernetes.io/docs/concepts/services-networking/ingress/#examples).
    #[test]
    fn path_matching_follows_the_spec_examples() {
        let cases: &[(&str, &str, &str, bool)] = &[
            ("Prefix", "/", "/ (all paths)", true),
            ("Exact", "/foo", "/foo", true),
            ("Exact", "/foo", "/bar", false),
            ("Exact", "/foo", "/foo/", false),
            ("Exact", "/foo/", "/foo", false),
            ("Prefix", "/foo", "/foo", true),
            ("Prefix", "/foo", "/foo/", true),
            ("Prefix", "/foo/", "/foo", true),
            ("Prefix", "/foo/", "/foo/", true),
            ("Prefix", "/aaa/bb", "/aaa/bbb", false),
            ("Prefix", "/aaa/bbb", "/aaa/bbb", true),
            ("Prefix", "/aaa/bbb/", "/aaa/bbb", true),
            ("Prefix", "/aaa/bbb", "/aaa/bbb/", true),
            ("Prefix", "/aaa/bbb", "/aaa/bbb/ccc", true),
            ("Prefix", "/aaa/bbb", "/aaa/bbbxyz", false),
        ];
        for (ty, rule, req, want) in cases {
            let req = req.split(' ').next().unwrap();
            let ing = ingress(
                "a",
                "2026-01-01T00:00:00Z",
                json!({"rules": [{"http": {"paths": [path(rule, ty, "s")]}}]}),
            );
            let t = Table::build(&[&ing]);
            assert_eq!(t.route("x", req).is_some(), *want, "{ty} {rule} vs {req}");
        }
    }

    #[test]
    fn longest_path_and_exact_win() {
        // From the same docs page: /aaa (Prefix) and /aaa/bbb (Prefix) — /aaa/bbb wins for
        // /aaa/bbb; and Exact beats Prefix for the same path.
        let ing = ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"rules": [{"http": {"paths": [
                path("/", "Prefix", "root"),
                path("/aaa", "Prefix", "short"),
                path("/aaa/bbb", "Prefix", "long"),
                path("/foo", "Prefix", "prefix"),
                path("/foo", "Exact", "exact"),
            ]}}]}),
        );
        let t = Table::build(&[&ing]);
        assert_eq!(svc_of(&t, "x", "/aaa/bbb").as_deref(), Some("long"));
        assert_eq!(svc_of(&t, "x", "/aaa/ccc").as_deref(), Some("short"));
        assert_eq!(svc_of(&t, "x", "/ccc").as_deref(), Some("root"));
        assert_eq!(svc_of(&t, "x", "/foo").as_deref(), Some("exact"));
        assert_eq!(svc_of(&t, "x", "/foo/x").as_deref(), Some("prefix"));
    }

    #[test]
    fn hosts_wildcards_and_default_backend() {
        let a = ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({
                "defaultBackend": {"service": {"name": "fallback", "port": {"number": 80}}},
                "rules": [
                    {"host": "foo.bar.com", "http": {"paths": [path("/", "Prefix", "foo")]}},
                    {"host": "*.bar.com", "http": {"paths": [path("/", "Prefix", "wild")]}},
                    {"http": {"paths": [path("/any", "Prefix", "anyhost")]}},
                ]
            }),
        );
        let b = ingress(
            "b",
            "2026-02-01T00:00:00Z",
            json!({
                "defaultBackend": {"service": {"name": "younger", "port": {"number": 80}}},
                "rules": [{"host": "foo.bar.com", "http": {"paths": [path("/", "Prefix", "shadowed")]}}]
            }),
        );
        let t = Table::build(&[&b, &a]);
        assert_eq!(svc_of(&t, "foo.bar.com", "/").as_deref(), Some("foo"));
        assert_eq!(svc_of(&t, "FOO.bar.com:80", "/x").as_deref(), Some("foo"));
        assert_eq!(svc_of(&t, "baz.bar.com", "/").as_deref(), Some("wild"));
        // A wildcard covers exactly one label.
        assert_eq!(
            svc_of(&t, "a.baz.bar.com", "/").as_deref(),
            Some("fallback")
        );
        assert_eq!(svc_of(&t, "bar.com", "/").as_deref(), Some("fallback"));
        assert_eq!(svc_of(&t, "other", "/any/x").as_deref(), Some("anyhost"));
        assert_eq!(svc_of(&t, "other", "/nothing").as_deref(), Some("fallback"));
    }

    #[test]
    fn tls_hosts() {
        let a = ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"tls": [{"hosts": ["a.example.com", "*.wild.com"], "secretName": "cert"}]}),
        );
        let t = Table::build(&[&a]);
        assert_eq!(t.tls_for("A.example.com").unwrap().secret, "cert");
        assert_eq!(t.tls_for("x.wild.com").unwrap().secret, "cert");
        assert!(t.tls_for("b.example.com").is_none());
    }

    #[test]
    fn endpoints_resolve_named_ports_and_skip_unready() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "web"}]}
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.5"], "conditions": {"ready": true}},
                {"addresses": ["10.42.0.6"], "conditions": {"ready": false}},
                {"addresses": ["10.42.0.7"]},
            ]
        }))
        .unwrap();
        let services = vec![std::sync::Arc::new(svc)];
        let slices = vec![std::sync::Arc::new(slice)];
        let by_number = Backend {
            namespace: "default".into(),
            service: "web".into(),
            port: PortRef::Number(80),
        };
        let got = endpoints(&by_number, &services, &slices).unwrap();
        assert_eq!(
            got,
            vec![
                "10.42.0.5:8080".parse().unwrap(),
                "10.42.0.7:8080".parse().unwrap()
            ]
        );
        let by_name = Backend {
            port: PortRef::Name("http".into()),
            ..by_number.clone()
        };
        assert_eq!(endpoints(&by_name, &services, &slices).unwrap().len(), 2);
        let wrong_port = Backend {
            port: PortRef::Number(81),
            ..by_number.clone()
        };
        assert_eq!(
            endpoints(&wrong_port, &services, &slices),
            Err(Unavailable::NoPort)
        );
        let missing = Backend {
            service: "nope".into(),
            ..by_number
        };
        assert_eq!(
            endpoints(&missing, &services, &slices),
            Err(Unavailable::NoService)
        );
    }
}
