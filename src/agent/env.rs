//! Container environment: `env` (value with `$(VAR)` expansion, fieldRef,
//! resourceFieldRef, configMapKeyRef, secretKeyRef) and `envFrom` (configMapRef,
//! secretRef, with prefix), resolved through the API as the kubelet does.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
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

/// The ordered environment of `container` in `pod`; `extra` (service links) come first.
pub async fn resolve(
    client: &kube::Client,
    pod: &Value,
    container: &Value,
    extra: &[(String, String)],
) -> Result<Vec<(String, String)>, Error> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |k: String, v: String, vars: &mut BTreeMap<String, String>| {
        if !vars.contains_key(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    };
    for (k, v) in extra {
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
