//! Pod volumes, materialised on the host under `<data-dir>/agent/pods/<uid>/volumes/` and
//! bind-mounted into containers by the runtime: emptyDir (disk, or tmpfs for medium
//! Memory), hostPath, configMap, secret, downwardAPI, projected (including service
//! account tokens requested through the TokenRequest API) and persistentVolumeClaim (the
//! bound volume's hostPath/local directory; the pod waits in ContainerCreating until the
//! claim is Bound; directories of deleted local-path volumes are swept). Content volumes are rewritten
//! atomically on every sync, so updated ConfigMaps and Secrets reach running pods.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::Api;
use serde_json::{Value, json};

use super::Error;

/// The host directory of a pod.
pub fn pod_dir(data_dir: &Path, uid: &str) -> PathBuf {
    data_dir.join("agent/pods").join(uid)
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source: e,
    }
}

/// A prepared volume: where it is on the host and whether it is read-only.
#[derive(Debug, Clone)]
pub struct HostVolume {
    /// Host path to bind-mount.
    pub path: PathBuf,
    /// Whether containers must see it read-only.
    pub read_only: bool,
}

/// Files of a content volume: relative path → (bytes, mode).
type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// Prepares every volume of `pod`; returns them by name.
pub async fn prepare(
    client: &kube::Client,
    data_dir: &Path,
    pod: &Value,
) -> Result<BTreeMap<String, HostVolume>, Error> {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let base = pod_dir(data_dir, uid).join("volumes");
    let mut out = BTreeMap::new();
    for vol in pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let name = vol["name"].as_str().unwrap_or_default().to_string();
        if let Some(host) = vol.get("hostPath").filter(|v| v.is_object()) {
            let path = PathBuf::from(host["path"].as_str().unwrap_or("/"));
            match host["type"].as_str().unwrap_or("") {
                "DirectoryOrCreate" => std::fs::create_dir_all(&path).map_err(|e| io(&path, e))?,
                "FileOrCreate" if !path.exists() => {
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
                    }
                    std::fs::write(&path, b"").map_err(|e| io(&path, e))?;
                }
                "Directory" if !path.is_dir() => {
                    return Err(Error::Config(format!(
                        "hostPath {} is not a directory",
                        path.display()
                    )));
                }
                "File" if !path.is_file() => {
                    return Err(Error::Config(format!(
                        "hostPath {} is not a file",
                        path.display()
                    )));
                }
                _ => {}
            }
            out.insert(
                name,
                HostVolume {
                    path,
                    read_only: false,
                },
            );
            continue;
        }
        if let Some(src) = vol.get("persistentVolumeClaim").filter(|v| v.is_object()) {
            let path = claim_path(client, data_dir, ns, src).await?;
            out.insert(
                name,
                HostVolume {
                    path,
                    read_only: src["readOnly"] == true,
                },
            );
            continue;
        }
        if vol.get("emptyDir").is_some_and(|v| v.is_object()) {
            let path = base.join("kubernetes.io~empty-dir").join(&name);
            std::fs::create_dir_all(&path).map_err(|e| io(&path, e))?;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
            if vol["emptyDir"]["medium"] == "Memory" && !is_mountpoint(&path) {
                let mut args = vec![
                    "-t".to_string(),
                    "tmpfs".into(),
                    "tmpfs".into(),
                    path.display().to_string(),
                ];
                if let Some(limit) = vol["emptyDir"]["sizeLimit"].as_str() {
                    args.insert(2, "-o".into());
                    args.insert(
                        3,
                        format!("size={}", limit.trim_end_matches('i').to_lowercase()),
                    );
                }
                let status = tokio::process::Command::new("mount")
                    .args(&args)
                    .status()
                    .await
                    .map_err(|e| io(&path, e))?;
                if !status.success() {
                    return Err(Error::Runtime(format!(
                        "mounting tmpfs for emptyDir {name}"
                    )));
                }
            }
            out.insert(
                name,
                HostVolume {
                    path,
                    read_only: false,
                },
            );
            continue;
        }
        let files = if let Some(cm) = vol.get("configMap").filter(|v| v.is_object()) {
            Some((config_map_files(client, ns, cm).await?, "configmap"))
        } else if let Some(sec) = vol.get("secret").filter(|v| v.is_object()) {
            Some((secret_files(client, ns, sec).await?, "secret"))
        } else if let Some(d) = vol.get("downwardAPI").filter(|v| v.is_object()) {
            Some((downward_files(pod, d), "downward-api"))
        } else if let Some(p) = vol.get("projected").filter(|v| v.is_object()) {
            Some((projected_files(client, ns, pod, p).await?, "projected"))
        } else {
            None
        };
        match files {
            Some((files, kind)) => {
                let path = base.join(format!("kubernetes.io~{kind}")).join(&name);
                write_atomic_dir(&path, &files)?;
                out.insert(
                    name,
                    HostVolume {
                        path,
                        read_only: true,
                    },
                );
            }
            None => tracing::warn!(volume = %name, "unsupported volume type; skipping"),
        }
    }
    Ok(out)
}

/// Resolves a `persistentVolumeClaim` volume: the claim must be Bound; its volume must be
/// a `hostPath` or `local` volume (what the local-path provisioner and administrators of
/// a small cluster make), whose directory is created for `DirectoryOrCreate`.
async fn claim_path(
    client: &kube::Client,
    data_dir: &Path,
    ns: &str,
    src: &Value,
) -> Result<PathBuf, Error> {
    let claim = src["claimName"].as_str().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvc = match pvcs.get_opt(claim).await? {
        Some(p) => p,
        None => {
            return Err(Error::Volume(format!(
                "persistentvolumeclaim \"{claim}\" not found"
            )));
        }
    };
    let phase = pvc
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let volume = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    if phase != "Bound" || volume.is_empty() {
        return Err(Error::Volume(format!(
            "PVC {ns}/{claim} has non-bound phase ({phase:?}) or empty pvc.Spec.VolumeName ({volume:?})"
        )));
    }
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = pvs.get(&volume).await?;
    let spec = pv.spec.unwrap_or_default();
    ensure_storage_sweeper(client, data_dir);
    if let Some(hp) = spec.host_path {
        let path = PathBuf::from(&hp.path);
        match hp.type_.as_deref().unwrap_or("") {
            "DirectoryOrCreate" if !path.is_dir() => {
                std::fs::create_dir_all(&path).map_err(|e| io(&path, e))?;
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
            }
            "Directory" | "DirectoryOrCreate" if !path.is_dir() => {
                return Err(Error::Volume(format!(
                    "hostPath type check failed: {} is not a directory",
                    path.display()
                )));
            }
            _ if !path.exists() => {
                return Err(Error::Volume(format!(
                    "hostPath {} of volume {volume} does not exist",
                    path.display()
                )));
            }
            _ => {}
        }
        return Ok(path);
    }
    if let Some(local) = spec.local {
        let path = PathBuf::from(&local.path);
        if !path.exists() {
            return Err(Error::Volume(format!(
                "path \"{}\" does not exist",
                path.display()
            )));
        }
        return Ok(path);
    }
    Err(Error::Volume(format!(
        "volume {volume} of claim {ns}/{claim} is of a type this node cannot mount (only hostPath and local)"
    )))
}

/// The uid in a local-path volume directory name (`pvc-<uid>_<ns>_<claim>`).
fn local_path_uid(dir_name: &str) -> Option<&str> {
    let rest = dir_name.strip_prefix("pvc-")?;
    let (uid, _) = rest.split_once('_')?;
    (!uid.is_empty()).then_some(uid)
}

/// Removes the directories under `<data-dir>/storage` of local-path volumes that no
/// longer exist (their PV `pvc-<uid>` is gone): the filesystem half of the provisioner's
/// `Delete` reclaim policy, done on the node that holds the data.
pub async fn sweep_local_storage(client: &kube::Client, data_dir: &Path) {
    let base = data_dir.join("storage");
    let Ok(entries) = std::fs::read_dir(&base) else {
        return;
    };
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(uid) = local_path_uid(&name) else {
            continue;
        };
        match pvs.get_opt(&format!("pvc-{uid}")).await {
            Ok(None) => {
                let path = entry.path();
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {
                        tracing::info!(dir = %path.display(), "removed the directory of a deleted local-path volume")
                    }
                    Err(err) => {
                        tracing::warn!(%err, dir = %path.display(), "removing a local-path volume directory")
                    }
                }
            }
            Ok(Some(_)) => {}
            Err(err) => tracing::debug!(%err, "checking a local-path volume"),
        }
    }
}

/// Starts (once per process) the periodic [`sweep_local_storage`].
fn ensure_storage_sweeper(client: &kube::Client, data_dir: &Path) {
    static STARTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if STARTED.set(()).is_err() {
        return;
    }
    let (client, data_dir) = (client.clone(), data_dir.to_path_buf());
    tokio::spawn(async move {
        loop {
            sweep_local_storage(&client, &data_dir).await;
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        }
    });
}

fn is_mountpoint(path: &Path) -> bool {
    let p = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.as_str()))
}

/// Unmounts tmpfs volumes and removes the pod's directory.
pub async fn cleanup(data_dir: &Path, uid: &str) {
    forget_tokens(uid);
    let dir = pod_dir(data_dir, uid);
    let prefix = dir.display().to_string();
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    for m in mounts.iter().rev() {
        let _ = tokio::process::Command::new("umount").arg(m).status().await;
    }
    if let Err(err) = std::fs::remove_dir_all(&dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(%err, dir = %dir.display(), "removing pod directory");
        }
    }
}

fn mode_of(v: &Value, default: u32) -> u32 {
    v.as_u64().map(|m| m as u32).unwrap_or(default)
}

fn select_items(
    data: BTreeMap<String, Vec<u8>>,
    items: &Value,
    default_mode: u32,
) -> Result<Files, String> {
    let mut files = Files::new();
    match items.as_array() {
        Some(items) if !items.is_empty() => {
            for it in items {
                let key = it["key"].as_str().unwrap_or_default();
                let Some(bytes) = data.get(key) else {
                    return Err(format!("key {key} not found"));
                };
                let path = it["path"].as_str().unwrap_or(key).to_string();
                files.insert(path, (bytes.clone(), mode_of(&it["mode"], default_mode)));
            }
        }
        _ => {
            for (k, v) in data {
                files.insert(k, (v, default_mode));
            }
        }
    }
    Ok(files)
}

async fn config_map_files(client: &kube::Client, ns: &str, src: &Value) -> Result<Files, Error> {
    let name = src["name"].as_str().unwrap_or_default();
    let optional = src["optional"].as_bool().unwrap_or(false);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = match api.get_opt(name).await? {
        Some(cm) => cm,
        None if optional => return Ok(Files::new()),
        None => return Err(Error::Config(format!("configmap \"{name}\" not found"))),
    };
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.unwrap_or_default() {
        data.insert(k, v.0);
    }
    select_items(data, &src["items"], mode_of(&src["defaultMode"], 0o644))
        .map_err(|e| Error::Config(format!("configmap {name}: {e}")))
}

async fn secret_files(client: &kube::Client, ns: &str, src: &Value) -> Result<Files, Error> {
    let name = src["secretName"]
        .as_str()
        .or_else(|| src["name"].as_str())
        .unwrap_or_default();
    let optional = src["optional"].as_bool().unwrap_or(false);
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = match api.get_opt(name).await? {
        Some(s) => s,
        None if optional => return Ok(Files::new()),
        None => return Err(Error::Config(format!("secret \"{name}\" not found"))),
    };
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    select_items(data, &src["items"], mode_of(&src["defaultMode"], 0o644))
        .map_err(|e| Error::Config(format!("secret {name}: {e}")))
}

/// The value of a downward-API field path of a pod.
pub fn field_path_value(pod: &Value, path: &str) -> Option<String> {
    let meta = &pod["metadata"];
    let map_entry = |field: &str, rest: &str| -> Option<String> {
        let key = rest.trim_start_matches("['").trim_end_matches("']");
        meta[field][key].as_str().map(str::to_string)
    };
    let map_all = |field: &str| -> String {
        meta[field]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    };
    match path {
        "metadata.name" => meta["name"].as_str().map(str::to_string),
        "metadata.namespace" => meta["namespace"].as_str().map(str::to_string),
        "metadata.uid" => meta["uid"].as_str().map(str::to_string),
        "metadata.labels" => Some(map_all("labels")),
        "metadata.annotations" => Some(map_all("annotations")),
        "spec.nodeName" => pod["spec"]["nodeName"].as_str().map(str::to_string),
        "spec.serviceAccountName" => pod["spec"]["serviceAccountName"]
            .as_str()
            .map(str::to_string),
        "status.podIP" => Some(pod["status"]["podIP"].as_str().unwrap_or("").to_string()),
        "status.hostIP" => Some(pod["status"]["hostIP"].as_str().unwrap_or("").to_string()),
        "status.podIPs" => Some(
            pod["status"]["podIPs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i["ip"].as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
        ),
        "status.hostIPs" => Some(
            pod["status"]["hostIPs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i["ip"].as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
        ),
        p => {
            if let Some(rest) = p.strip_prefix("metadata.labels") {
                map_entry("labels", rest)
            } else if let Some(rest) = p.strip_prefix("metadata.annotations") {
                map_entry("annotations", rest)
            } else {
                None
            }
        }
    }
}

/// The value of a resourceFieldRef (`limits.cpu`, `requests.memory`, ...) of a container.
pub fn resource_field_value(
    pod: &Value,
    container: &str,
    resource: &str,
    divisor: Option<&str>,
) -> Option<String> {
    let c = pod["spec"]["containers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == container)?;
    let (kind, res) = resource.split_once('.')?;
    let q = c["resources"][kind][res]
        .as_str()
        .map(str::to_string)
        .or_else(|| {
            if kind == "limits" {
                // Without a limit, upstream reports the node's allocatable; approximate with the machine.
                match res {
                    "cpu" => Some(
                        std::thread::available_parallelism()
                            .map(|n| n.get())
                            .unwrap_or(1)
                            .to_string(),
                    ),
                    "memory" => Some(format!("{}", 1u64 << 40)),
                    _ => None,
                }
            } else {
                Some("0".into())
            }
        })?;
    let value = super::resources::parse_quantity(&q)?;
    let div = divisor
        .and_then(super::resources::parse_quantity)
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    Some(format!("{}", (value / div).ceil() as i64))
}

fn downward_files(pod: &Value, src: &Value) -> Files {
    let mode = mode_of(&src["defaultMode"], 0o644);
    let mut files = Files::new();
    for item in src["items"].as_array().cloned().unwrap_or_default() {
        let path = item["path"].as_str().unwrap_or_default().to_string();
        let value = if let Some(fp) = item["fieldRef"]["fieldPath"].as_str() {
            field_path_value(pod, fp).unwrap_or_default()
        } else if let Some(r) = item["resourceFieldRef"]["resource"].as_str() {
            let c = item["resourceFieldRef"]["containerName"]
                .as_str()
                .unwrap_or_default();
            resource_field_value(pod, c, r, item["resourceFieldRef"]["divisor"].as_str())
                .unwrap_or_default()
        } else {
            continue;
        };
        files.insert(path, (value.into_bytes(), mode_of(&item["mode"], mode)));
    }
    files
}

async fn projected_files(
    client: &kube::Client,
    ns: &str,
    pod: &Value,
    src: &Value,
) -> Result<Files, Error> {
    let mode = mode_of(&src["defaultMode"], 0o644);
    let mut files = Files::new();
    for source in src["sources"].as_array().cloned().unwrap_or_default() {
        let mut part = if let Some(cm) = source.get("configMap").filter(|v| v.is_object()) {
            let mut cm = cm.clone();
            cm["defaultMode"] = json!(mode);
            config_map_files(client, ns, &cm).await?
        } else if let Some(s) = source.get("secret").filter(|v| v.is_object()) {
            let mut s = s.clone();
            s["defaultMode"] = json!(mode);
            secret_files(client, ns, &s).await?
        } else if let Some(d) = source.get("downwardAPI").filter(|v| v.is_object()) {
            let mut d = d.clone();
            d["defaultMode"] = json!(mode);
            downward_files(pod, &d)
        } else if let Some(t) = source.get("serviceAccountToken").filter(|v| v.is_object()) {
            let token = service_account_token(client, ns, pod, t).await?;
            let mut f = Files::new();
            f.insert(
                t["path"].as_str().unwrap_or("token").to_string(),
                (token.into_bytes(), if mode == 0o644 { 0o600 } else { mode }),
            );
            f
        } else {
            Files::new()
        };
        files.append(&mut part);
    }
    Ok(files)
}

/// Service account tokens already issued, by (pod uid, service account, audience,
/// requested lifetime): the token and when it must be renewed.
type TokenCache = std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>;

fn tokens() -> &'static TokenCache {
    static TOKENS: std::sync::OnceLock<TokenCache> = std::sync::OnceLock::new();
    TOKENS.get_or_init(Default::default)
}

/// When a token issued now that lives `ttl` must be renewed: after 80 % of its life or
/// 24 h, whichever comes first (as the kubelet's token manager does).
fn renew_after(ttl: std::time::Duration) -> std::time::Duration {
    (ttl * 4 / 5).min(std::time::Duration::from_secs(24 * 3600))
}

/// A token for the pod's service account, bound to the pod: the cached one while it is
/// fresh, else a new one from the TokenRequest API. Without the cache every sync of every
/// pod asked the API server to sign a new token and rewrote the volume.
async fn service_account_token(
    client: &kube::Client,
    ns: &str,
    pod: &Value,
    src: &Value,
) -> Result<String, Error> {
    let sa = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    let key = format!(
        "{}/{sa}/{}/{}",
        pod["metadata"]["uid"].as_str().unwrap_or_default(),
        src["audience"].as_str().unwrap_or_default(),
        src["expirationSeconds"].as_i64().unwrap_or(3607)
    );
    let now = std::time::Instant::now();
    if let Some((token, _)) = tokens()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
        .filter(|(_, renew)| now < *renew)
    {
        return Ok(token.clone());
    }
    let mut spec = json!({
        "expirationSeconds": src["expirationSeconds"].as_i64().unwrap_or(3607),
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
    });
    if let Some(aud) = src["audience"].as_str() {
        spec["audiences"] = json!([aud]);
    }
    let body =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let req = http::Request::post(format!(
        "/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"
    ))
    .header("Content-Type", "application/json")
    .body(serde_json::to_vec(&body).unwrap_or_default())
    .map_err(|e| Error::Runtime(e.to_string()))?;
    let resp: Value = client.request(req).await?;
    let token = resp["status"]["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Runtime("TokenRequest returned no token".into()))?;
    // The lifetime the server granted (it may shorten the request).
    let ttl = resp["status"]["expirationTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|exp| exp.duration_since(jiff::Timestamp::now()))
        .and_then(|d| std::time::Duration::try_from(d).ok())
        .unwrap_or_else(|| {
            std::time::Duration::from_secs(src["expirationSeconds"].as_u64().unwrap_or(3607))
        });
    tokens()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key, (token.clone(), now + renew_after(ttl)));
    Ok(token)
}

/// Forgets the cached tokens of pod `uid`.
fn forget_tokens(uid: &str) {
    let prefix = format!("{uid}/");
    tokens()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|k, _| !k.starts_with(&prefix));
}

/// Writes a content volume the way the kubelet's atomic writer does: files go into a new
/// timestamped directory, `..data` is switched to it with a rename, and the user-visible
/// names are symlinks through `..data`, so readers never see a half-written update.
fn write_atomic_dir(dir: &Path, files: &Files) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let data_link = dir.join("..data");
    // Unchanged content: nothing to do.
    if let Ok(current) = std::fs::read_link(&data_link) {
        let cur = dir.join(current);
        let same = files.iter().all(|(p, (bytes, _))| {
            std::fs::read(cur.join(p)).ok().as_deref() == Some(bytes.as_slice())
        }) && count_files(&cur) == files.len();
        if same {
            return Ok(());
        }
    }
    let stamp = format!("..{}", jiff::Timestamp::now().as_nanosecond());
    let new_dir = dir.join(&stamp);
    for (rel, (bytes, mode)) in files {
        let target = new_dir.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        std::fs::write(&target, bytes).map_err(|e| io(&target, e))?;
        let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode));
    }
    std::fs::create_dir_all(&new_dir).map_err(|e| io(&new_dir, e))?;
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link).map_err(|e| io(&tmp_link, e))?;
    let old = std::fs::read_link(&data_link).ok();
    std::fs::rename(&tmp_link, &data_link).map_err(|e| io(&data_link, e))?;
    for rel in files.keys() {
        let top = rel.split('/').next().unwrap_or(rel);
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            let _ = std::os::unix::fs::symlink(Path::new("..data").join(top), &link);
        }
    }
    // Remove names that are gone and the previous generation.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("..") {
                continue;
            }
            if !files
                .keys()
                .any(|k| k.split('/').next() == Some(name.as_str()))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Some(old) = old {
        if old != Path::new(&stamp) {
            let _ = std::fs::remove_dir_all(dir.join(old));
        }
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                n += count_files(&p);
            } else {
                n += 1;
            }
        }
    }
    n
}

/// Decodes base64 (used for Secret env values given as strings).
pub fn b64(bytes: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(bytes).ok()
}

/// Unused-import guard for the typed Pod (kept for callers that hold typed pods).
pub fn pod_value(pod: &Pod) -> Value {
    serde_json::to_value(pod).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_path_dir_names() {
        let cases = [
            ("pvc-abc_ns_data-web-0", Some("abc")),
            ("pvc-_ns_x", None),
            ("pvc-abc", None),
            ("other", None),
        ];
        for (name, want) in cases {
            assert_eq!(local_path_uid(name), want, "{name}");
        }
    }

    #[test]
    fn tokens_renew_at_80_percent_or_a_day() {
        use std::time::Duration;
        let h = |n: u64| Duration::from_secs(n * 3600);
        for (ttl, want) in [
            (Duration::from_secs(3607), Duration::from_millis(2_885_600)),
            (Duration::from_secs(600), Duration::from_secs(480)),
            (h(48), h(24)),
        ] {
            assert_eq!(renew_after(ttl), want, "{ttl:?}");
        }
        forget_tokens("none");
    }

    #[test]
    fn atomic_writer_updates_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        let mut files = Files::new();
        files.insert("a.txt".into(), (b"one".to_vec(), 0o644));
        files.insert("b.txt".into(), (b"two".to_vec(), 0o644));
        write_atomic_dir(&vol, &files).unwrap();
        assert_eq!(std::fs::read_to_string(vol.join("a.txt")).unwrap(), "one");
        files.insert("a.txt".into(), (b"uno".to_vec(), 0o644));
        files.remove("b.txt");
        write_atomic_dir(&vol, &files).unwrap();
        assert_eq!(std::fs::read_to_string(vol.join("a.txt")).unwrap(), "uno");
        assert!(!vol.join("b.txt").exists());
        let gens = std::fs::read_dir(&vol)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..1"))
            .count();
        assert_eq!(gens, 1, "old generations are removed");
    }

    #[test]
    fn downward_fields() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"}},
                         "spec": {"nodeName": "n1", "containers": [{"name": "c", "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}}]},
                         "status": {"podIP": "10.42.0.9"}});
        assert_eq!(
            field_path_value(&pod, "metadata.labels['app']").as_deref(),
            Some("web")
        );
        assert_eq!(
            field_path_value(&pod, "metadata.labels").as_deref(),
            Some("app=\"web\"")
        );
        assert_eq!(
            field_path_value(&pod, "status.podIP").as_deref(),
            Some("10.42.0.9")
        );
        assert_eq!(
            resource_field_value(&pod, "c", "limits.memory", Some("1Mi")).as_deref(),
            Some("64")
        );
        assert_eq!(
            resource_field_value(&pod, "c", "limits.cpu", Some("1m")).as_deref(),
            Some("500")
        );
        assert_eq!(
            resource_field_value(&pod, "c", "limits.cpu", None).as_deref(),
            Some("1")
        );
    }
}
