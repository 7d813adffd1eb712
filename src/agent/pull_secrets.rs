//! Registry credentials for image pulls from a pod's `imagePullSecrets`
//! (`kubernetes.io/dockerconfigjson` and the legacy `kubernetes.io/dockercfg`), matched
//! against the image's registry as the kubelet's credential keyring does.

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::Value;

/// The registry host an image reference pulls from (`docker.io` for short names).
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => "docker.io".to_string(),
    }
}

/// Normalises a key of a docker config (`https://index.docker.io/v1/` → `docker.io`).
fn normalize_key(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

/// Finds credentials for `registry` in one docker config `auths` map.
pub fn credentials_for(auths: &Value, registry: &str) -> Option<cri::AuthConfig> {
    let map = auths.as_object()?;
    let (_, entry) = map.iter().find(|(k, _)| normalize_key(k) == registry)?;
    let s = |f: &str| entry[f].as_str().unwrap_or_default().to_string();
    Some(cri::AuthConfig {
        username: s("username"),
        password: s("password"),
        auth: s("auth"),
        // containerd's CRI compares a server address with each endpoint host it contacts
        // (after URL-parsing it, so a bare `host:port` is an error, and docker.io's
        // endpoint is registry-1.docker.io): the credentials already belong to this one
        // pull, so name no server and let every endpoint of the image's registry use them.
        server_address: String::new(),
        identity_token: s("identitytoken"),
        registry_token: s("registrytoken"),
    })
}

/// Credentials for pulling `image` from the pod's image pull secrets, if any match.
pub async fn for_image(client: &kube::Client, pod: &Value, image: &str) -> Option<cri::AuthConfig> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let registry = registry_of(image);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for reference in pod["spec"]["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(name) = reference["name"].as_str() else {
            continue;
        };
        let Ok(Some(secret)) = secrets.get_opt(name).await else {
            tracing::warn!(secret = name, namespace = ns, "image pull secret not found");
            continue;
        };
        let data = secret.data.unwrap_or_default();
        let auths = if let Some(raw) = data.get(".dockerconfigjson") {
            serde_json::from_slice::<Value>(&raw.0)
                .ok()
                .map(|v| v["auths"].clone())
        } else {
            data.get(".dockercfg")
                .and_then(|raw| serde_json::from_slice::<Value>(&raw.0).ok())
        };
        if let Some(found) = auths.and_then(|a| credentials_for(&a, &registry)) {
            return Some(found);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn registries_of_images() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1.36"), "docker.io");
        assert_eq!(registry_of("ghcr.io/org/app:v1"), "ghcr.io");
        assert_eq!(registry_of("127.0.0.1:5000/test/app"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/app"), "localhost");
    }

    #[test]
    fn matches_docker_config_keys() {
        let auths = json!({
            "https://index.docker.io/v1/": {"username": "hub", "password": "p1"},
            "127.0.0.1:5000": {"auth": "dXNlcjpwYXNz"},
        });
        let hub = credentials_for(&auths, "docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("hub", "p1")
        );
        let local = credentials_for(&auths, "127.0.0.1:5000").unwrap();
        assert_eq!(local.auth, "dXNlcjpwYXNz");
        assert!(credentials_for(&auths, "ghcr.io").is_none());
    }
}
