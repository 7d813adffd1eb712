//! The ServiceAccount admission plugin, as upstream's: on Pod creation it defaults
//! `spec.serviceAccountName` to `default`, refuses pods whose service account does not
//! exist, copies the account's `imagePullSecrets` into pods that have none, enforces
//! `kubernetes.io/enforce-mountable-secrets`, and (unless automounting is switched off on
//! the pod or the account) adds the projected `kube-api-access-xxxxx` volume (bound
//! token, cluster CA, namespace) mounted read-only at
//! `/var/run/secrets/kubernetes.io/serviceaccount` in every container.
//!
//! Mirror pods (static pods reflected by a kubelet) get none of this and may not refer to
//! service accounts. Reads the ServiceAccount through the registry; writes nothing.

use serde_json::{Value, json};

use super::{Attributes, Operation};
use crate::api::resources::lookup;
use crate::api::status::Status;
use crate::apiserver::registry::Registry;

/// The account a pod runs as when it names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Where the token, CA and namespace files appear in containers.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Prefix of the injected projected volume's name.
pub const VOLUME_PREFIX: &str = "kube-api-access-";

/// The lifetime the projected token source requests (the kubelet refreshes it).
pub const TOKEN_EXPIRATION_SECS: i64 = 3607;

/// The ConfigMap holding the cluster CA in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";
const ENFORCE_MOUNTABLE_SECRETS: &str = "kubernetes.io/enforce-mountable-secrets";

/// Mutating phase.
pub async fn mutate(
    reg: &Registry,
    attrs: &Attributes<'_>,
    obj: &mut Value,
    _old: Option<&Value>,
) -> Result<(), Status> {
    if attrs.operation != Operation::Create
        || attrs.subresource.is_some()
        || !attrs.resource.group.is_empty()
        || attrs.resource.plural != "pods"
    {
        return Ok(());
    }
    let name = attrs.name;
    let forbidden = |why: String| {
        let mut s = Status::forbidden(format!("pods \"{name}\" is forbidden: {why}"));
        s = s.with_details("", "pods", name);
        s
    };
    if is_mirror_pod(obj) {
        return check_mirror_pod(obj).map_err(forbidden);
    }
    let sa_name = default_service_account_name(obj);
    let ns = attrs
        .namespace
        .or_else(|| obj["metadata"]["namespace"].as_str())
        .unwrap_or("default")
        .to_string();
    let Some(sa_ri) = lookup("", "v1", "serviceaccounts") else {
        return Err(Status::internal(
            "the serviceaccounts resource is not registered",
        ));
    };
    let sa = match reg.get(sa_ri, Some(&ns), &sa_name).await {
        Ok(sa) => sa,
        Err(s) if s.code == 404 => {
            return Err(forbidden(format!(
                "error looking up service account {ns}/{sa_name}: serviceaccount \"{sa_name}\" not found"
            )));
        }
        Err(s) => return Err(s),
    };
    admit_pod(obj, &sa, &random_suffix()).map_err(forbidden)
}

/// Whether the pod is a mirror pod.
fn is_mirror_pod(pod: &Value) -> bool {
    pod["metadata"]["annotations"]
        .get(MIRROR_POD_ANNOTATION)
        .is_some()
}

/// Mirror pods may not use service accounts or the API credentials they imply.
fn check_mirror_pod(pod: &Value) -> Result<(), String> {
    if pod["spec"]["serviceAccountName"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
    {
        return Err("a mirror pod may not reference service accounts".into());
    }
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        if v.get("projected").is_some_and(|p| {
            p["sources"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s.get("serviceAccountToken").is_some())
        }) {
            return Err(format!(
                "a mirror pod may not use ServiceAccountToken volume projections (volume {:?})",
                v["name"].as_str().unwrap_or("")
            ));
        }
    }
    Ok(())
}

/// Sets `spec.serviceAccountName` to `default` when unset and returns it.
fn default_service_account_name(pod: &mut Value) -> String {
    let current = pod["spec"]["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    match current {
        Some(n) => n,
        None => {
            if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("serviceAccountName".into(), json!(DEFAULT_SERVICE_ACCOUNT));
            }
            DEFAULT_SERVICE_ACCOUNT.to_string()
        }
    }
}

/// Applies the plugin to a (non-mirror) pod given its service account; `suffix` names the
/// token volume when one is added.
fn admit_pod(pod: &mut Value, sa: &Value, suffix: &str) -> Result<(), String> {
    let sa_name = sa["metadata"]["name"].as_str().unwrap_or("").to_string();
    if sa["metadata"]["annotations"][ENFORCE_MOUNTABLE_SECRETS].as_str() == Some("true") {
        check_mountable_secrets(pod, sa, &sa_name)?;
    }
    if should_automount(pod, sa) {
        mount_token(pod, suffix);
    }
    copy_image_pull_secrets(pod, sa);
    Ok(())
}

/// The pod's explicit `automountServiceAccountToken` wins, then the account's; default on.
fn should_automount(pod: &Value, sa: &Value) -> bool {
    pod["spec"]["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| sa["automountServiceAccountToken"].as_bool())
        .unwrap_or(true)
}

fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECS, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{
                    "path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                }]}},
            ],
        },
    })
}

/// Mounts the token volume in every init and app container that has nothing at the
/// mount path yet, adding the volume if any container needed it. An existing
/// `kube-api-access-*` volume is reused.
fn mount_token(pod: &mut Value, suffix: &str) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .find(|n| n.starts_with(VOLUME_PREFIX))
        .map(str::to_string);
    let volume_name = existing
        .clone()
        .unwrap_or_else(|| format!("{VOLUME_PREFIX}{suffix}"));
    let mount = json!({"name": volume_name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers.iter_mut().filter_map(Value::as_object_mut) {
            let mounts = c
                .entry("volumeMounts")
                .or_insert_with(|| Value::Array(vec![]));
            let Some(mounts) = mounts.as_array_mut() else {
                continue;
            };
            if mounts
                .iter()
                .any(|m| m["mountPath"].as_str() == Some(TOKEN_MOUNT_PATH))
            {
                continue;
            }
            mounts.push(mount.clone());
            needed = true;
        }
    }
    if needed && existing.is_none() {
        let volumes = spec
            .entry("volumes")
            .or_insert_with(|| Value::Array(vec![]));
        if let Some(v) = volumes.as_array_mut() {
            v.push(token_volume(&volume_name));
        }
    }
}

/// Pods without `imagePullSecrets` get the account's.
fn copy_image_pull_secrets(pod: &mut Value, sa: &Value) {
    let has = pod["spec"]["imagePullSecrets"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    let from_sa: Vec<Value> = sa["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .map(|n| json!({"name": n}))
        .collect();
    if has || from_sa.is_empty() {
        return;
    }
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("imagePullSecrets".into(), Value::Array(from_sa));
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .collect()
}

/// With `kubernetes.io/enforce-mountable-secrets: "true"` on the account, every secret
/// the pod mounts or reads into its environment must be listed in the account's
/// `secrets`, and every pull secret in its `imagePullSecrets`.
fn check_mountable_secrets(pod: &Value, sa: &Value, sa_name: &str) -> Result<(), String> {
    let allowed = names(&sa["secrets"]);
    let not_allowed = |what: String| {
        format!(
            "{what} is not allowed because service account {sa_name} does not reference that secret"
        )
    };
    let spec = &pod["spec"];
    for v in spec["volumes"].as_array().into_iter().flatten() {
        if let Some(s) = v["secret"]["secretName"].as_str()
            && !allowed.contains(&s)
        {
            return Err(not_allowed(format!(
                "volume with secret.secretName=\"{s}\""
            )));
        }
        for src in v["projected"]["sources"].as_array().into_iter().flatten() {
            if let Some(s) = src["secret"]["name"].as_str()
                && !allowed.contains(&s)
            {
                return Err(not_allowed(format!(
                    "projected volume with secret.name=\"{s}\""
                )));
            }
        }
    }
    for (list, label) in [
        ("initContainers", "init container"),
        ("containers", "container"),
        ("ephemeralContainers", "ephemeral container"),
    ] {
        for c in spec[list].as_array().into_iter().flatten() {
            let cname = c["name"].as_str().unwrap_or("");
            for env in c["env"].as_array().into_iter().flatten() {
                if let Some(s) = env["valueFrom"]["secretKeyRef"]["name"].as_str()
                    && !allowed.contains(&s)
                {
                    return Err(not_allowed(format!(
                        "{label} {cname} with envVar {} referencing secret.secretName=\"{s}\"",
                        env["name"].as_str().unwrap_or("")
                    )));
                }
            }
            for from in c["envFrom"].as_array().into_iter().flatten() {
                if let Some(s) = from["secretRef"]["name"].as_str()
                    && !allowed.contains(&s)
                {
                    return Err(not_allowed(format!(
                        "{label} {cname} with envFrom referencing secret.secretName=\"{s}\""
                    )));
                }
            }
        }
    }
    let pull_allowed = names(&sa["imagePullSecrets"]);
    for s in names(&spec["imagePullSecrets"]) {
        if !pull_allowed.contains(&s) {
            return Err(format!(
                "pod spec has pull secret {s} that is not allowed because service account {sa_name} does not reference that imagePullSecret"
            ));
        }
    }
    Ok(())
}

/// Five characters from the alphabet upstream uses for generated names.
fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": spec})
    }

    fn sa(extra: Value) -> Value {
        let mut sa = json!({"metadata": {"name": "default", "namespace": "ns"}});
        if let (Some(m), Some(e)) = (sa.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        sa
    }

    fn mounts(p: &Value, list: &str, i: usize) -> Vec<Value> {
        p["spec"][list][i]["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn defaults_service_account_name() {
        let cases = [
            (json!({}), "default"),
            (json!({"serviceAccountName": ""}), "default"),
            (json!({"serviceAccountName": "builder"}), "builder"),
        ];
        for (spec, want) in cases {
            let mut p = pod(spec);
            assert_eq!(default_service_account_name(&mut p), want);
            assert_eq!(p["spec"]["serviceAccountName"], want);
        }
    }

    #[test]
    fn injects_projected_token_volume_and_mounts() {
        let mut p = pod(json!({
            "initContainers": [{"name": "init", "image": "busybox"}],
            "containers": [
                {"name": "a", "image": "busybox", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "b", "image": "busybox"},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }));
        admit_pod(&mut p, &sa(json!({})), "abcde").unwrap();
        let vols = p["spec"]["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 2);
        assert_eq!(vols[1], token_volume("kube-api-access-abcde"));
        assert_eq!(vols[1]["projected"]["defaultMode"], 420);
        assert_eq!(
            vols[1]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3607
        );
        let want = json!({"name": "kube-api-access-abcde", "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
        assert_eq!(mounts(&p, "initContainers", 0), vec![want.clone()]);
        assert_eq!(mounts(&p, "containers", 0)[1], want);
        assert_eq!(mounts(&p, "containers", 1), vec![want]);
    }

    #[test]
    fn automount_switches() {
        let cases = [
            (json!({}), json!({}), true),
            (
                json!({"automountServiceAccountToken": false}),
                json!({}),
                false,
            ),
            (
                json!({}),
                json!({"automountServiceAccountToken": false}),
                false,
            ),
            (
                json!({"automountServiceAccountToken": true}),
                json!({"automountServiceAccountToken": false}),
                true,
            ),
            (
                json!({"automountServiceAccountToken": false}),
                json!({"automountServiceAccountToken": true}),
                false,
            ),
        ];
        for (spec_extra, sa_extra, want) in cases {
            let mut spec = json!({"containers": [{"name": "c", "image": "i"}]});
            for (k, v) in spec_extra.as_object().unwrap() {
                spec[k] = v.clone();
            }
            let mut p = pod(spec);
            admit_pod(&mut p, &sa(sa_extra.clone()), "xxxxx").unwrap();
            let has_volume = p["spec"]["volumes"]
                .as_array()
                .is_some_and(|v| !v.is_empty());
            assert_eq!(has_volume, want, "{spec_extra} / {sa_extra}");
            assert_eq!(!mounts(&p, "containers", 0).is_empty(), want);
        }
    }

    #[test]
    fn existing_mount_path_or_volume_is_respected() {
        // Every container already mounts something at the path: no volume is added.
        let mut p = pod(json!({
            "containers": [{"name": "c", "image": "i",
                "volumeMounts": [{"name": "mine", "mountPath": TOKEN_MOUNT_PATH}]}],
            "volumes": [{"name": "mine", "secret": {"secretName": "s"}}],
        }));
        admit_pod(&mut p, &sa(json!({})), "zzzzz").unwrap();
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1);
        assert_eq!(mounts(&p, "containers", 0).len(), 1);
        // An existing kube-api-access volume is reused, not duplicated.
        let mut p = pod(json!({
            "containers": [{"name": "c", "image": "i"}],
            "volumes": [token_volume("kube-api-access-keep1")],
        }));
        admit_pod(&mut p, &sa(json!({})), "zzzzz").unwrap();
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1);
        assert_eq!(
            mounts(&p, "containers", 0)[0]["name"],
            "kube-api-access-keep1"
        );
    }

    #[test]
    fn image_pull_secrets_come_from_the_account() {
        let account = sa(json!({"imagePullSecrets": [{"name": "regcred"}]}));
        let mut p = pod(json!({"containers": []}));
        admit_pod(&mut p, &account, "aaaaa").unwrap();
        assert_eq!(p["spec"]["imagePullSecrets"], json!([{"name": "regcred"}]));
        let mut p = pod(json!({"containers": [], "imagePullSecrets": [{"name": "own"}]}));
        admit_pod(&mut p, &account, "aaaaa").unwrap();
        assert_eq!(p["spec"]["imagePullSecrets"], json!([{"name": "own"}]));
    }

    #[test]
    fn enforce_mountable_secrets() {
        let account = sa(json!({
            "metadata": {"name": "restricted", "annotations": {ENFORCE_MOUNTABLE_SECRETS: "true"}},
            "secrets": [{"name": "ok"}],
            "imagePullSecrets": [{"name": "pull"}],
        }));
        let cases = [
            (
                json!({"volumes": [{"name": "v", "secret": {"secretName": "ok"}}]}),
                true,
            ),
            (
                json!({"volumes": [{"name": "v", "secret": {"secretName": "no"}}]}),
                false,
            ),
            (
                json!({"volumes": [{"name": "v", "projected": {"sources": [{"secret": {"name": "no"}}]}}]}),
                false,
            ),
            (
                json!({"containers": [{"name": "c", "env": [{"name": "E",
                    "valueFrom": {"secretKeyRef": {"name": "no", "key": "k"}}}]}]}),
                false,
            ),
            (
                json!({"initContainers": [{"name": "c", "envFrom": [{"secretRef": {"name": "ok"}}]}]}),
                true,
            ),
            (json!({"imagePullSecrets": [{"name": "pull"}]}), true),
            (json!({"imagePullSecrets": [{"name": "other"}]}), false),
        ];
        for (spec, ok) in cases {
            let mut p = pod(spec.clone());
            let got = admit_pod(&mut p, &account, "aaaaa");
            assert_eq!(got.is_ok(), ok, "{spec}: {got:?}");
            if let Err(msg) = got {
                assert!(msg.contains("service account restricted"), "{msg}");
            }
        }
    }

    #[test]
    fn mirror_pods() {
        let mirror = |spec: Value| json!({"metadata": {"name": "m", "annotations": {MIRROR_POD_ANNOTATION: "x"}}, "spec": spec});
        assert!(is_mirror_pod(&mirror(json!({}))));
        assert!(!is_mirror_pod(&pod(json!({}))));
        assert!(check_mirror_pod(&mirror(json!({"containers": []}))).is_ok());
        assert!(check_mirror_pod(&mirror(json!({"serviceAccountName": "default"}))).is_err());
        assert!(
            check_mirror_pod(&mirror(
                json!({"volumes": [token_volume("kube-api-access-x")]})
            ))
            .is_err()
        );
    }

    #[test]
    fn suffix_alphabet() {
        let s = random_suffix();
        assert_eq!(s.len(), 5);
        assert!(s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}
