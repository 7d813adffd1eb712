//! The local-path provisioner (what k3s ships as `rancher/local-path-provisioner`): node-
//! local directories as PersistentVolumes, for the `local-path` StorageClass.
//!
//! - **The class** `local-path` (provisioner `rancher.io/local-path`, kept for
//!   compatibility with charts written for k3s; default class; `WaitForFirstConsumer`;
//!   reclaim policy `Delete`) is created at start unless it exists.
//! - **Provisioning.** A claim of a class with this provisioner that the binder handed over
//!   (`volume.kubernetes.io/storage-provisioner`) and the scheduler placed
//!   (`volume.kubernetes.io/selected-node`) gets PV `pvc-<claim uid>`: a `hostPath`
//!   (`DirectoryOrCreate`) at `<base>/pvc-<uid>_<namespace>_<claim>`, node affinity
//!   `kubernetes.io/hostname In [node]`, the class's reclaim policy, and a `claimRef`
//!   pre-bound to the claim, which the binder then completes. Events `Provisioning` and
//!   `ProvisioningSucceeded` on the claim. Immediate-binding claims have no node to
//!   provision on (`ProvisioningFailed`), as upstream's provisioner reports.
//! - **Deletion.** A Released volume it provisioned with policy `Delete` is deleted. The
//!   directory lives on the node: the node agent creates it on first mount and removes the
//!   directories of volumes that no longer exist (see `agent::volumes`).
//!
//! Depends on: [`super::pv_binder`] (annotation names), kube-rs. Never the store or the
//! API server.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, future, stream};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::pv_binder::{
    BETA_STORAGE_PROVISIONER, DEFAULT_CLASS, PROVISIONED_BY, SELECTED_NODE, STORAGE_PROVISIONER,
};
use super::replicaset::events::{EventType, Recorder};
use super::replicaset::is_not_found;
use super::watch;

/// The provisioner name (rancher's, as k3s uses it).
pub const PROVISIONER: &str = "rancher.io/local-path";
/// The StorageClass created at start.
pub const CLASS_NAME: &str = "local-path";
/// The node a volume was provisioned on (rancher's annotation).
const SELECTED_NODE_ANNOTATION: &str = "local.path.provisioner/selected-node";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the caches are not available")]
    CacheGone,
}

struct Ctx {
    client: Client,
    base: PathBuf,
    classes: Store<StorageClass>,
    volumes: Store<PersistentVolume>,
    recorder: Recorder,
}

/// The `local-path` StorageClass.
pub fn storage_class() -> StorageClass {
    serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": CLASS_NAME, "annotations": {DEFAULT_CLASS: "true"}},
        "provisioner": PROVISIONER,
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Delete",
    }))
    .unwrap_or_default()
}

/// The directory of a claim's volume under `base`.
pub fn volume_dir(base: &std::path::Path, uid: &str, ns: &str, claim: &str) -> PathBuf {
    base.join(format!("pvc-{uid}_{ns}_{claim}"))
}

/// Creates the StorageClass (if missing), then provisions and deletes volumes until
/// `shutdown`. `base` is the directory volumes are made in (`<data-dir>/storage`).
pub async fn run(client: Client, base: PathBuf, shutdown: CancellationToken) {
    let classes: Api<StorageClass> = Api::all(client.clone());
    for attempt in 0..30 {
        match classes
            .create(&PostParams::default(), &storage_class())
            .await
        {
            Ok(_) => {
                tracing::info!(class = CLASS_NAME, "created the local-path StorageClass");
                break;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => break,
            Err(err) => {
                tracing::debug!(%err, attempt, "creating the local-path StorageClass");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    let cfg = watcher::Config::default;
    let (pvc_store, pvc_events) = watch::reflect_all::<PersistentVolumeClaim>(&client, cfg());
    let (pv_store, pv_events) = watch::reflect_all::<PersistentVolume>(&client, cfg());
    let (sc_store, sc_events) = watch::reflect_all::<StorageClass>(&client, cfg());
    let (pvc_events, pv_events, sc_events) = (
        pvc_events.touched_objects(),
        pv_events.touched_objects(),
        sc_events.touched_objects(),
    );
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), PROVISIONER),
        client: client.clone(),
        base,
        classes: sc_store,
        volumes: pv_store.clone(),
    });
    // Claims are reconciled on their own events; released volumes on theirs.
    let claims = pvc_events.filter_map(|e| future::ready(e.ok().map(|c| ObjectRef::from_obj(&c))));
    let claim_loop = watch::run_applier(
        "local-path claim",
        reconcile_claim,
        |_c, err: &Error, _ctx| {
            tracing::debug!(%err, "local-path provisioning failed; retrying");
            Action::requeue(Duration::from_secs(2))
        },
        ctx.clone(),
        pvc_store,
        claims.map(Ok::<_, Infallible>),
        controller::Config::default(),
        shutdown.clone(),
    );
    let volumes = stream::select(
        pv_events.filter_map(|e| future::ready(e.ok().map(|v| ObjectRef::from_obj(&v)))),
        sc_events.filter_map(|_| future::ready(None)),
    );
    let volume_loop = watch::run_applier(
        "local-path volume",
        reconcile_volume,
        |_v, err: &Error, _ctx| {
            tracing::debug!(%err, "local-path volume deletion failed; retrying");
            Action::requeue(Duration::from_secs(5))
        },
        ctx,
        pv_store,
        volumes.map(Ok::<_, Infallible>),
        controller::Config::default(),
        shutdown,
    );
    futures::join!(claim_loop, volume_loop);
}

/// The PV for `claim` on `node` (upstream provisioner's volume, hostPath flavour).
fn volume_for(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &str,
    base: &std::path::Path,
) -> PersistentVolume {
    let ns = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let uid = claim.uid().unwrap_or_default();
    let spec = claim.spec.clone().unwrap_or_default();
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned());
    let path = volume_dir(base, &uid, &ns, &name);
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("pvc-{uid}"),
            "annotations": {PROVISIONED_BY: PROVISIONER, SELECTED_NODE_ANNOTATION: node},
        },
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.access_modes.unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "persistentVolumeReclaimPolicy": class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
            "storageClassName": class.name_any(),
            "volumeMode": spec.volume_mode.unwrap_or_else(|| "Filesystem".into()),
            "hostPath": {"path": path.display().to_string(), "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name,
                         "uid": uid, "resourceVersion": claim.resource_version()},
        },
    }))
    .unwrap_or_default()
}

async fn reconcile_claim(c: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.classes
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheGone)?;
    ctx.volumes
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheGone)?;
    let ann = c.annotations();
    let asked = ann
        .get(STORAGE_PROVISIONER)
        .or_else(|| ann.get(BETA_STORAGE_PROVISIONER));
    let unbound = c
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_none_or(str::is_empty);
    if asked.map(String::as_str) != Some(PROVISIONER)
        || !unbound
        || c.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    let class_name = c
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default();
    let Some(class) = ctx.classes.get(&ObjectRef::new(&class_name)) else {
        return Ok(Action::await_change());
    };
    if class.provisioner != PROVISIONER {
        return Ok(Action::await_change());
    }
    let pv_name = format!("pvc-{}", c.uid().unwrap_or_default());
    if ctx.volumes.get(&ObjectRef::new(&pv_name)).is_some() {
        return Ok(Action::await_change());
    }
    let Some(node) = ann.get(SELECTED_NODE).cloned() else {
        ctx.recorder.event(
            &*c,
            EventType::Warning,
            "ProvisioningFailed",
            "failed to provision volume with StorageClass \"".to_string()
                + &class_name
                + "\": configuration error, no node was specified",
        );
        return Ok(Action::await_change());
    };
    let key = format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any());
    ctx.recorder.event(
        &*c,
        EventType::Normal,
        "Provisioning",
        format!("External provisioner is provisioning volume for claim \"{key}\""),
    );
    let pv = volume_for(&c, &class, &node, &ctx.base);
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    match api.create(&PostParams::default(), &pv).await {
        Ok(_) => {
            tracing::info!(pvc = %key, pv = %pv_name, node = %node, "provisioned local-path volume");
            ctx.recorder.event(
                &*c,
                EventType::Normal,
                "ProvisioningSucceeded",
                format!("Successfully provisioned volume {pv_name}"),
            );
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(err) => {
            ctx.recorder.event(
                &*c,
                EventType::Warning,
                "ProvisioningFailed",
                format!("failed to provision volume with StorageClass \"{class_name}\": {err}"),
            );
            return Err(err.into());
        }
    }
    Ok(Action::await_change())
}

async fn reconcile_volume(v: Arc<PersistentVolume>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ours = v.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER);
    let spec = v.spec.clone().unwrap_or_default();
    let released = v.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let delete = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
    if !ours || !released || !delete || v.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    match api.delete(&v.name_any(), &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!(pv = %v.name_any(), "deleted released local-path volume");
            Ok(Action::await_change())
        }
        Err(e) if is_not_found(&e) => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioned_volume() {
        let claim: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data-web-0", "namespace": "ns", "uid": "abc", "resourceVersion": "7"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "local-path"},
        }))
        .unwrap();
        let class = storage_class();
        assert_eq!(
            class.volume_binding_mode.as_deref(),
            Some("WaitForFirstConsumer")
        );
        assert_eq!(class.annotations()[DEFAULT_CLASS], "true");
        let pv = volume_for(
            &claim,
            &class,
            "node1",
            std::path::Path::new("/var/lib/kaji/storage"),
        );
        assert_eq!(pv.name_any(), "pvc-abc");
        let spec = pv.spec.unwrap();
        let hp = spec.host_path.unwrap();
        assert_eq!(hp.path, "/var/lib/kaji/storage/pvc-abc_ns_data-web-0");
        assert_eq!(hp.type_.as_deref(), Some("DirectoryOrCreate"));
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        assert_eq!(spec.capacity.unwrap()["storage"].0, "1Gi");
        let r = spec.claim_ref.unwrap();
        assert_eq!(
            (r.name.as_deref(), r.uid.as_deref()),
            (Some("data-web-0"), Some("abc"))
        );
        let terms = spec
            .node_affinity
            .unwrap()
            .required
            .unwrap()
            .node_selector_terms;
        assert_eq!(
            terms[0].match_expressions.as_ref().unwrap()[0]
                .values
                .as_ref()
                .unwrap(),
            &["node1"]
        );
    }
}
