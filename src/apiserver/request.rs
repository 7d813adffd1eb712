//! Parsing a request path into a `RequestInfo`, as kube-apiserver's request-info resolver
//! does: API prefix, group, version, namespace, resource, name, subresource and verb.

use http::Method;

/// What a request addresses and which verb it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestInfo {
    /// Whether the path is a resource path (`/api/...` or `/apis/...` below a version).
    pub is_resource: bool,
    /// The request path.
    pub path: String,
    /// Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection,
    /// or the lowercase HTTP method for non-resource requests.
    pub verb: String,
    /// API group (`""` for core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Namespace, if the path is namespaced.
    pub namespace: Option<String>,
    /// Resource (plural).
    pub resource: String,
    /// Object name, if any.
    pub name: Option<String>,
    /// Subresource, if any.
    pub subresource: Option<String>,
}

/// Resolves `path` and `method` (and whether `?watch=true` was given) into a RequestInfo.
pub fn resolve(method: &Method, path: &str, watch_param: bool) -> RequestInfo {
    let mut info = RequestInfo {
        path: path.to_string(),
        verb: method.as_str().to_ascii_lowercase(),
        ..Default::default()
    };
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let rest: &[&str] = match parts.first() {
        Some(&"api") if parts.len() >= 2 => {
            info.version = parts[1].to_string();
            &parts[2..]
        }
        Some(&"apis") if parts.len() >= 3 => {
            info.group = parts[1].to_string();
            info.version = parts[2].to_string();
            &parts[3..]
        }
        _ => return info,
    };
    if rest.is_empty() {
        return info;
    }
    info.is_resource = true;
    let mut rest = rest;
    // "namespaces/{ns}/{resource}..." addresses a namespaced resource, except that
    // "namespaces/{name}" and "namespaces/{name}/{subresource}" address the namespace itself.
    if rest[0] == "namespaces" && rest.len() >= 3 && !matches!(rest[2], "status" | "finalize") {
        info.namespace = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    info.resource = rest[0].to_string();
    if let Some(name) = rest.get(1) {
        info.name = Some((*name).to_string());
    }
    if let Some(sub) = rest.get(2) {
        info.subresource = Some(rest[2..].join("/"));
        let _ = sub;
    }
    if info.resource == "namespaces" && info.namespace.is_none() {
        // /api/v1/namespaces/{name}[/status|/finalize]: namespace is the name itself.
        info.namespace = info.name.clone();
    }
    info.verb = match *method {
        Method::GET | Method::HEAD => {
            if watch_param {
                "watch"
            } else if info.name.is_some() {
                "get"
            } else {
                "list"
            }
        }
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => {
            if info.name.is_some() {
                "delete"
            } else {
                "deletecollection"
            }
        }
        _ => "unknown",
    }
    .to_string();
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_paths() {
        let r = resolve(&Method::GET, "/api/v1/namespaces/default/pods", false);
        assert_eq!(
            (r.verb.as_str(), r.namespace.as_deref(), r.resource.as_str()),
            ("list", Some("default"), "pods")
        );
        let r = resolve(
            &Method::GET,
            "/apis/apps/v1/namespaces/ns1/deployments/web/scale",
            false,
        );
        assert_eq!(r.group, "apps");
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(r.subresource.as_deref(), Some("scale"));
        let r = resolve(&Method::GET, "/api/v1/pods", true);
        assert_eq!((r.verb.as_str(), r.namespace.as_deref()), ("watch", None));
        let r = resolve(&Method::DELETE, "/api/v1/namespaces/kube-system", false);
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref(), r.verb.as_str()),
            ("namespaces", Some("kube-system"), "delete")
        );
        let r = resolve(&Method::PUT, "/api/v1/namespaces/x/finalize", false);
        assert_eq!(
            (
                r.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            ("namespaces", Some("x"), Some("finalize"))
        );
        let r = resolve(&Method::GET, "/apis/apps/v1", false);
        assert!(!r.is_resource);
        let r = resolve(&Method::GET, "/healthz", false);
        assert!(!r.is_resource);
        assert_eq!(r.verb, "get");
    }
}
