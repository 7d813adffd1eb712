//! API discovery: the legacy documents (`/api`, `/apis`, `/api/v1`, `/apis/G`,
//! `/apis/G/V`), the aggregated `apidiscovery.k8s.io` v2 and v2beta1 documents that
//! kubectl 1.27+ ask for, and `/version`.

use serde_json::{Value, json};

use crate::api::resources::{self, ResourceInfo};

/// The Kubernetes API level kaji implements.
pub const KUBE_MAJOR: &str = "1";
/// Minor version; kubectl's dispatcher picks its client by this.
pub const KUBE_MINOR: &str = "33";

/// `gitVersion`: the API level plus kaji's own version as build metadata.
pub fn git_version() -> String {
    format!(
        "v{KUBE_MAJOR}.{KUBE_MINOR}.0+kaji.{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The `/version` document.
pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": git_version(),
        "gitCommit": option_env!("KAJI_GIT_COMMIT").unwrap_or("unknown"),
        "gitTreeState": "clean",
        "buildDate": option_env!("KAJI_BUILD_DATE").unwrap_or("1970-01-01T00:00:00Z"),
        "goVersion": "n/a (rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// Which aggregated discovery version a client asked for, from its Accept header.
pub fn aggregated_version(accept: &str) -> Option<&'static str> {
    // The client lists acceptable types in preference order; pick the first aggregated one.
    for part in accept.split(',') {
        let p = part.replace(' ', "");
        if p.contains("as=APIGroupDiscoveryList") && p.contains("g=apidiscovery.k8s.io") {
            if p.contains("v=v2beta1") {
                return Some("v2beta1");
            }
            if p.contains("v=v2") {
                return Some("v2");
            }
        }
    }
    None
}

/// The content type of an aggregated discovery response.
pub fn aggregated_content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

fn verbs_of(ri: &ResourceInfo) -> Vec<&'static str> {
    ri.verbs.to_vec()
}

fn aggregated_resource(ri: &ResourceInfo) -> Value {
    let subs: Vec<Value> = ri
        .subresources
        .iter()
        .map(|s| {
            json!({"subresource": s.name,
                   "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
                   "verbs": s.verbs})
        })
        .collect();
    let mut r = json!({
        "resource": ri.plural,
        "responseKind": {"group": ri.group, "version": ri.version, "kind": ri.kind},
        "scope": if ri.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": ri.singular,
        "verbs": verbs_of(ri),
    });
    if !ri.short_names.is_empty() {
        r["shortNames"] = json!(ri.short_names);
    }
    if !ri.categories.is_empty() {
        r["categories"] = json!(ri.categories);
    }
    if !subs.is_empty() {
        r["subresources"] = Value::Array(subs);
    }
    r
}

fn aggregated_group(group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> = resources::in_group_version(group, v)
                .map(aggregated_resource)
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    let mut meta = json!({"creationTimestamp": null});
    if !group.is_empty() {
        meta["name"] = json!(group);
    }
    json!({"metadata": meta, "versions": versions})
}

/// The aggregated document for `/api` (`core = true`) or `/apis`.
pub fn aggregated(core: bool, version: &str) -> Value {
    let items: Vec<Value> = resources::groups()
        .iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, vs)| aggregated_group(g, vs))
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"),
           "metadata": {}, "items": items})
}

/// Legacy `/api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]})
}

fn group_doc(group: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": vs,
           "preferredVersion": {"groupVersion": format!("{group}/{}", versions[0]), "version": versions[0]}})
}

/// Legacy `/apis`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = resources::groups()
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| group_doc(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// Legacy `/apis/{group}`.
pub fn api_group(group: &str) -> Option<Value> {
    let groups = resources::groups();
    let (_, vs) = groups.iter().find(|(g, _)| *g == group && !g.is_empty())?;
    let mut doc = group_doc(group, vs);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// Legacy `/api/v1` or `/apis/{group}/{version}`.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources_out = Vec::new();
    for ri in resources::in_group_version(group, version) {
        let mut r = json!({"name": ri.plural, "singularName": ri.singular, "namespaced": ri.namespaced,
                           "kind": ri.kind, "verbs": verbs_of(ri)});
        if !ri.short_names.is_empty() {
            r["shortNames"] = json!(ri.short_names);
        }
        if !ri.categories.is_empty() {
            r["categories"] = json!(ri.categories);
        }
        if !ri.is_storage_version() || ri.group != ri.storage.group {
            r["storageVersionHash"] = Value::Null;
        }
        resources_out.push(r);
        for s in ri.subresources {
            let mut sr = json!({"name": format!("{}/{}", ri.plural, s.name), "singularName": "",
                                "namespaced": ri.namespaced, "kind": s.kind, "verbs": s.verbs});
            if s.group != ri.group || s.version != ri.version {
                sr["group"] = json!(s.group);
                sr["version"] = json!(s.version);
            }
            resources_out.push(sr);
        }
    }
    if resources_out.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources_out}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let v132 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(v132), Some("v2"));
        let v127 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(v127), Some("v2beta1"));
        assert_eq!(aggregated_version("application/json, */*"), None);
    }

    #[test]
    fn aggregated_documents() {
        let core = aggregated(true, "v2");
        assert_eq!(core["items"].as_array().unwrap().len(), 1);
        let pods = &core["items"][0]["versions"][0]["resources"][0];
        assert_eq!(pods["resource"], "pods");
        assert_eq!(pods["shortNames"][0], "po");
        assert_eq!(pods["categories"][0], "all");
        let apis = aggregated(false, "v2beta1");
        let autoscaling = apis["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["metadata"]["name"] == "autoscaling")
            .unwrap();
        assert_eq!(autoscaling["versions"][0]["version"], "v2");
        let apps = api_resource_list("apps", "v1").unwrap();
        assert!(
            apps["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == "deployments/scale" && r["group"] == "autoscaling")
        );
        assert!(api_group("apps").is_some());
        assert!(api_group("nope").is_none());
    }
}
