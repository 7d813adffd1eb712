//! Container environment: `env` (value with `$(VAR)` expansion, fieldRef,
//! resourceFieldRef, configMapKeyRef, secretKeyRef) and `envFrom` (configMapRef,
//! secretRef, with prefix), resolved through the API as the kubelet does, plus the
//! Service environment variables (`<SVC>_SERVICE_HOST`, `<SVC>_PORT_<n>_TCP`, ...) of
//! the Services in the pod's namespace (`enableServiceLinks`, default true) and, always,
//! of the `kubernetes` Service in `default`. The container's own variables win.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::Value;

use super::Error;
use super::volumes::{field_path_value, resource_field_value};

/// Expands `$(NAME)` references from `vars`; `$$(NAME)` escapes to a literal `$(NAME)`;
/// unknown references stay as written (upstream semantics).
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            if bytes[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if bytes[i + 1] == b'(' {
                if let Some(end) = input[i + 2..].find(')') {
                    let name = &input[i + 2..i + 2 + end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&input[i..i + 3 + end]),
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = input[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// `makeEnvVariableName`: upper case, `-` → `_`.
fn env_name(s: &str) -> String {
    s.replace('-', "_").to_uppercase()
}

/// The environment variables of `services` (upstream's `envvars.FromServices`); Services
/// without a cluster IP (headless, ExternalName) or ports give none.
pub fn from_services(services: &[Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let ip = spec.cluster_ip.as_deref().unwrap_or("");
        let ports = spec.ports.as_deref().unwrap_or(&[]);
        if ip.is_empty() || ip == "None" || ports.is_empty() {
            continue;
        }
        let prefix = env_name(&svc.name_any());
        out.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{prefix}_SERVICE_PORT"), ports[0].port.to_string()));
        for p in ports {
            if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!("{prefix}_SERVICE_PORT_{}", env_name(name)),
                    p.port.to_string(),
                ));
            }
        }
        let host = |port: i32| match ip.contains(':') {
            true => format!("[{ip}]:{port}"),
            false => format!("{ip}:{port}"),
        };
        for (i, p) in ports.iter().enumerate() {
            let proto = p
                .protocol
                .as_deref()
                .filter(|p| !p.is_empty())
                .unwrap_or("TCP");
            let url = format!("{}://{}", proto.to_lowercase(), host(p.port));
            if i == 0 {
                out.push((format!("{prefix}_PORT"), url.clone()));
            }
            let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.push((pp.clone(), url));
            out.push((format!("{pp}_PROTO"), proto.to_lowercase()));
            out.push((format!("{pp}_PORT"), p.port.to_string()));
            out.push((format!("{pp}_ADDR"), ip.to_string()));
        }
    }
    out
}

/// The Service environment of a pod in `ns` (upstream's `getServiceEnvVarMap`): the
/// `default/kubernetes` Service always, the namespace's Services with `enable_links`.
pub async fn service_env(
    client: &kube::Client,
    ns: &str,
    enable_links: bool,
) -> Result<Vec<(String, String)>, Error> {
    let mut by_name: BTreeMap<String, Service> = BTreeMap::new();
    let default: Api<Service> = Api::namespaced(client.clone(), "default");
    if let Some(k) = default.get_opt("kubernetes").await? {
        by_name.insert("kubernetes".into(), k);
    }
    if enable_links {
        let api: Api<Service> = Api::namespaced(client.clone(), ns);
        for svc in api.list(&ListParams::default()).await?.items {
            let name = svc.name_any();
            // The master service from `default` is not replaced by its namesake there.
            if ns == "default" && name == "kubernetes" {
                continue;
            }
            by_name.insert(name, svc);
        }
    }
    let services: Vec<Service> = by_name.into_values().collect();
    Ok(from_services(&services))
}

/// The ordered environment of `container` in `pod`: the Service variables first (see
/// [`service_env`]), then `extra`, `envFrom` and `env`; later entries override earlier.
pub async fn resolve(
    client: &kube::Client,
    pod: &Value,
    container: &Value,
    extra: &[(String, String)],
) -> Result<Vec<(String, String)>, Error> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let enable_links = pod["spec"]["enableServiceLinks"].as_bool().unwrap_or(true);
    let services = service_env(client, ns, enable_links).await?;
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |k: String, v: String, vars: &mut BTreeMap<String, String>| {
        if !vars.contains_key(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    };
    for (k, v) in services.iter().chain(extra) {
        set(k.clone(), v.clone(), &mut vars);
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for from in container["envFrom"].as_array().cloned().unwrap_or_default() {
        let prefix = from["prefix"].as_str().unwrap_or_default();
        if let Some(r) = from.get("configMapRef").filter(|v| v.is_object()) {
            let name = r["name"].as_str().unwrap_or_default();
            match cms.get_opt(name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        set(format!("{prefix}{k}"), v, &mut vars);
                    }
                }
                None if r["optional"] == true => {}
                None => return Err(Error::Config(format!("configmap \"{name}\" not found"))),
            }
        }
        if let Some(r) = from.get("secretRef").filter(|v| v.is_object()) {
            let name = r["name"].as_str().unwrap_or_default();
            match secrets.get_opt(name).await? {
                Some(s) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        set(
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                            &mut vars,
                        );
                    }
                }
                None if r["optional"] == true => {}
                None => return Err(Error::Config(format!("secret \"{name}\" not found"))),
            }
        }
    }
    let cname = container["name"].as_str().unwrap_or_default();
    for e in container["env"].as_array().cloned().unwrap_or_default() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            Some(expand(v, &vars))
        } else if let Some(from) = e.get("valueFrom").filter(|v| v.is_object()) {
            if let Some(fp) = from["fieldRef"]["fieldPath"].as_str() {
                field_path_value(pod, fp)
            } else if let Some(r) = from["resourceFieldRef"]["resource"].as_str() {
                let c = from["resourceFieldRef"]["containerName"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or(cname);
                resource_field_value(pod, c, r, from["resourceFieldRef"]["divisor"].as_str())
            } else if let Some(r) = from.get("configMapKeyRef").filter(|v| v.is_object()) {
                let (n, k) = (
                    r["name"].as_str().unwrap_or_default(),
                    r["key"].as_str().unwrap_or_default(),
                );
                match cms
                    .get_opt(n)
                    .await?
                    .and_then(|cm| cm.data.and_then(|d| d.get(k).cloned()))
                {
                    Some(v) => Some(v),
                    None if r["optional"] == true => None,
                    None => {
                        return Err(Error::Config(format!(
                            "couldn't find key {k} in ConfigMap {ns}/{n}"
                        )));
                    }
                }
            } else if let Some(r) = from.get("secretKeyRef").filter(|v| v.is_object()) {
                let (n, k) = (
                    r["name"].as_str().unwrap_or_default(),
                    r["key"].as_str().unwrap_or_default(),
                );
                match secrets.get_opt(n).await?.and_then(|s| {
                    s.data
                        .and_then(|d| d.get(k).map(|b| String::from_utf8_lossy(&b.0).into_owned()))
                }) {
                    Some(v) => Some(v),
                    None if r["optional"] == true => None,
                    None => {
                        return Err(Error::Config(format!(
                            "couldn't find key {k} in Secret {ns}/{n}"
                        )));
                    }
                }
            } else {
                None
            }
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            set(name, v, &mut vars);
        }
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = vars.get(&k).cloned().unwrap_or_default();
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn service_variables_match_the_documented_example() {
        // The Service documentation's example: redis-primary on 10.0.0.11:6379/TCP.
        let redis = service(serde_json::json!({"metadata": {"name": "redis-primary"},
            "spec": {"clusterIP": "10.0.0.11", "ports": [{"port": 6379, "protocol": "TCP"}]}}));
        let got = from_services(&[redis]);
        let want: Vec<(String, String)> = [
            ("REDIS_PRIMARY_SERVICE_HOST", "10.0.0.11"),
            ("REDIS_PRIMARY_SERVICE_PORT", "6379"),
            ("REDIS_PRIMARY_PORT", "tcp://10.0.0.11:6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP", "tcp://10.0.0.11:6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP_PROTO", "tcp"),
            ("REDIS_PRIMARY_PORT_6379_TCP_PORT", "6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP_ADDR", "10.0.0.11"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn service_variables_named_ports_and_skips() {
        let k = service(serde_json::json!({"metadata": {"name": "kubernetes"},
            "spec": {"clusterIP": "10.43.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}));
        let dns = service(serde_json::json!({"metadata": {"name": "kube-dns"},
            "spec": {"clusterIP": "10.43.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}}));
        let headless = service(serde_json::json!({"metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}));
        let external = service(serde_json::json!({"metadata": {"name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}}));
        let got: BTreeMap<String, String> = from_services(&[k, dns, headless, external])
            .into_iter()
            .collect();
        for (key, val) in [
            ("KUBERNETES_SERVICE_HOST", "10.43.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.43.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.43.0.1"),
            ("KUBE_DNS_SERVICE_PORT_DNS_TCP", "53"),
            ("KUBE_DNS_PORT", "udp://10.43.0.10:53"),
            ("KUBE_DNS_PORT_53_UDP_PROTO", "udp"),
            ("KUBE_DNS_PORT_53_TCP", "tcp://10.43.0.10:53"),
        ] {
            assert_eq!(got.get(key).map(String::as_str), Some(val), "{key}");
        }
        assert!(
            !got.keys()
                .any(|k| k.starts_with("DB_") || k.starts_with("EXT_"))
        );
    }

    #[test]
    fn expansion() {
        let vars: BTreeMap<String, String> = [
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "two".to_string()),
        ]
        .into();
        assert_eq!(expand("x-$(A)-$(B)", &vars), "x-1-two");
        assert_eq!(expand("$(C) stays", &vars), "$(C) stays");
        assert_eq!(expand("$$(A) escaped", &vars), "$(A) escaped");
        assert_eq!(expand("cost $5", &vars), "cost $5");
        assert_eq!(expand("ünïcode $(A)", &vars), "ünïcode 1");
    }
}
