//! The PersistentVolume binder (upstream's `pkg/controller/volume/persistentvolume`):
//! binds claims to volumes and keeps both phases current.
//!
//! - **Default class.** A claim without `storageClassName` gets the default
//!   StorageClass (`storageclass.kubernetes.io/is-default-class: "true"`, the newest if
//!   several) — upstream's DefaultStorageClass admission plus its retroactive assignment.
//! - **Claims.** An unbound claim is bound to a volume pre-bound to it (`claimRef`, as a
//!   provisioner leaves it) or to the smallest Available volume of its class that fits
//!   (capacity, access modes, volume mode, selector; for `WaitForFirstConsumer` classes
//!   only once the scheduler picked a node — `volume.kubernetes.io/selected-node` — and
//!   only volumes whose node affinity allows it). Otherwise it waits: event
//!   `WaitForFirstConsumer`, or the `volume.kubernetes.io/storage-provisioner`
//!   annotations that ask the class's provisioner for a volume (`ExternalProvisioning`),
//!   or `FailedBinding`. Binding writes the volume's `claimRef` (annotation
//!   `pv.kubernetes.io/bound-by-controller`), its phase `Bound`, the claim's `volumeName`
//!   with `pv.kubernetes.io/bind-completed`, and the claim's phase, capacity and access
//!   modes. A bound claim whose volume is gone is `Lost` (event `ClaimLost`).
//! - **Volumes.** Without a claim reference a volume is `Available`; when its claim is
//!   deleted (or replaced by a namesake) it is `Released` — provisioners delete Released
//!   volumes with reclaim policy `Delete`; `Retain` keeps them until an administrator
//!   clears the reference. A reference the controller itself made to a claim that bound
//!   elsewhere is cleared.
//!
//! Events as `persistentvolume-controller`. Depends on: `api` (quantities, selectors),
//! [`super::daemonset`] (node affinity terms), kube-rs. Never the store or the API server.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, future, stream};
use k8s_openapi::api::core::v1::{Node, ObjectReference, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::daemonset::term_matches;
use super::replicaset::events::{EventType, Recorder};
use super::replicaset::{is_not_found, labels_json};
use super::watch;
use crate::api::selector::LabelSelector;

const COMPONENT: &str = "persistentvolume-controller";
/// Marks the default StorageClass.
pub(crate) const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// Set on a claim once binding completed.
pub(crate) const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// Set on objects whose binding the controller (not a user) made.
pub(crate) const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// The node the scheduler picked for a `WaitForFirstConsumer` claim.
pub(crate) const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The provisioner asked to provision a claim.
pub(crate) const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// The same, under its deprecated beta name (still read by external provisioners).
pub(crate) const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// The provisioner that made a volume.
pub(crate) const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the caches are not available")]
    CacheGone,
}

struct Ctx {
    client: Client,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
    recorder: Recorder,
}

/// Runs the binder until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let cfg = watcher::Config::default;
    let (pvc_store, pvc_events) = watch::reflect_all::<PersistentVolumeClaim>(&client, cfg());
    let (pv_store, pv_events) = watch::reflect_all::<PersistentVolume>(&client, cfg());
    let (sc_store, sc_events) = watch::reflect_all::<StorageClass>(&client, cfg());
    let (node_store, node_events) = watch::reflect_all::<Node>(&client, cfg());
    let (pvc_events, pv_events, sc_events) = (
        pvc_events.touched_objects(),
        pv_events.touched_objects(),
        sc_events.touched_objects(),
    );
    let node_events = node_events
        .touched_objects()
        .filter(|_| future::ready(false));
    // Claim events sync the claim and its volume; volume events the volume and its claim.
    let (pvc_tx, pvc_rx) = futures::channel::mpsc::unbounded::<ObjectRef<PersistentVolumeClaim>>();
    let (pv_tx, pv_rx) = futures::channel::mpsc::unbounded::<ObjectRef<PersistentVolume>>();
    let all_claims = pvc_store.clone();
    let feed = {
        let (pvc_tx, pv_tx) = (pvc_tx.clone(), pv_tx.clone());
        let events = stream::select(
            stream::select(
                pvc_events.map(|e| e.map(|c| Touched::Claim(Box::new(c)))),
                pv_events.map(|e| e.map(|v| Touched::Volume(Box::new(v)))),
            ),
            stream::select(
                sc_events.map(|e| e.map(|_| Touched::Class)),
                node_events.map(|e| e.map(|_| Touched::Class)),
            ),
        );
        events.for_each(move |e| {
            match e {
                Ok(Touched::Claim(c)) => {
                    let _ = pvc_tx.unbounded_send(ObjectRef::from_obj(&*c));
                    if let Some(v) = c.spec.as_ref().and_then(|s| s.volume_name.clone()) {
                        let _ = pv_tx.unbounded_send(ObjectRef::new(&v));
                    }
                }
                Ok(Touched::Volume(v)) => {
                    let _ = pv_tx.unbounded_send(ObjectRef::from_obj(&*v));
                    if let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
                        let name = r.name.clone().unwrap_or_default();
                        let ns = r.namespace.clone().unwrap_or_default();
                        let _ = pvc_tx.unbounded_send(ObjectRef::new(&name).within(&ns));
                    }
                }
                // A new default class or binding mode: every unbound claim may move.
                Ok(Touched::Class) => {
                    for c in all_claims.state() {
                        if c.spec
                            .as_ref()
                            .and_then(|s| s.volume_name.as_ref())
                            .is_none()
                        {
                            let _ = pvc_tx.unbounded_send(ObjectRef::from_obj(&*c));
                        }
                    }
                }
                Err(err) => tracing::debug!(%err, "pv binder watch"),
            }
            future::ready(())
        })
    };
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), COMPONENT),
        client,
        claims: pvc_store.clone(),
        volumes: pv_store.clone(),
        classes: sc_store,
        nodes: node_store,
    });
    let claims = watch::run_applier(
        "pv binder claim",
        reconcile_claim,
        |_c, err: &Error, _ctx| {
            tracing::debug!(%err, "claim sync failed; retrying");
            Action::requeue(Duration::from_secs(2))
        },
        ctx.clone(),
        pvc_store,
        pvc_rx.map(Ok::<_, Infallible>),
        controller::Config::default(),
        shutdown.clone(),
    );
    let volumes = watch::run_applier(
        "pv binder volume",
        reconcile_volume,
        |_v, err: &Error, _ctx| {
            tracing::debug!(%err, "volume sync failed; retrying");
            Action::requeue(Duration::from_secs(2))
        },
        ctx,
        pv_store,
        pv_rx.map(Ok::<_, Infallible>),
        controller::Config::default(),
        shutdown.clone(),
    );
    let feed = feed.take_until_cancelled(shutdown);
    futures::join!(feed, claims, volumes);
    drop((pvc_tx, pv_tx));
}

enum Touched {
    Claim(Box<PersistentVolumeClaim>),
    Volume(Box<PersistentVolume>),
    Class,
}

trait TakeUntilCancelled: Sized {
    fn take_until_cancelled(self, token: CancellationToken) -> impl Future<Output = ()>;
}

impl<F: Future<Output = ()>> TakeUntilCancelled for F {
    async fn take_until_cancelled(self, token: CancellationToken) {
        tokio::select! {
            _ = self => {}
            _ = token.cancelled() => {}
        }
    }
}

async fn caches_ready(ctx: &Ctx) -> Result<(), Error> {
    for r in [
        ctx.claims.wait_until_ready().await,
        ctx.volumes.wait_until_ready().await,
    ] {
        r.map_err(|_| Error::CacheGone)?;
    }
    for r in [
        ctx.classes.wait_until_ready().await,
        ctx.nodes.wait_until_ready().await,
    ] {
        r.map_err(|_| Error::CacheGone)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Matching.

fn phase_of_claim(c: &PersistentVolumeClaim) -> &str {
    c.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn phase_of_volume(v: &PersistentVolume) -> &str {
    v.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn storage(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> f64 {
    q.and_then(|q| crate::api::quantity::parse_quantity(&q.0))
        .unwrap_or(0.0)
}

fn claim_class(c: &PersistentVolumeClaim) -> &str {
    c.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

fn volume_class(v: &PersistentVolume) -> &str {
    v.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

/// Whether the volume is reserved for the claim (`claimRef` names it, uid unset or equal).
fn prebound_to(v: &PersistentVolume, c: &PersistentVolumeClaim) -> bool {
    v.spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| {
            r.name.as_deref() == c.metadata.name.as_deref()
                && r.namespace.as_deref() == c.metadata.namespace.as_deref()
                && r.uid
                    .as_deref()
                    .is_none_or(|u| u.is_empty() || Some(u) == c.metadata.uid.as_deref())
        })
}

/// Whether the volume's node affinity admits `node` (no affinity admits every node).
fn admits_node(v: &PersistentVolume, node: Option<&Node>) -> bool {
    let Some(required) = v
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    node.is_some_and(|n| {
        required
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, n))
    })
}

/// Whether an unclaimed volume satisfies the claim (upstream's `findMatchingVolume`
/// checks, without the node: see [`admits_node`]).
fn fits(v: &PersistentVolume, c: &PersistentVolumeClaim) -> bool {
    let (Some(vs), Some(cs)) = (v.spec.as_ref(), c.spec.as_ref()) else {
        return false;
    };
    if v.metadata.deletion_timestamp.is_some() || volume_class(v) != claim_class(c) {
        return false;
    }
    let wanted = storage(
        cs.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage")),
    );
    let has = storage(vs.capacity.as_ref().and_then(|c| c.get("storage")));
    if has < wanted {
        return false;
    }
    let modes = vs.access_modes.clone().unwrap_or_default();
    if !cs.access_modes.iter().flatten().all(|m| modes.contains(m)) {
        return false;
    }
    let mode = |m: Option<&String>| m.map_or("Filesystem", String::as_str).to_string();
    if mode(vs.volume_mode.as_ref()) != mode(cs.volume_mode.as_ref()) {
        return false;
    }
    if let Some(sel) = &cs.selector {
        let matches = serde_json::to_value(sel)
            .ok()
            .and_then(|v| LabelSelector::from_label_selector_json(&v).ok())
            .is_some_and(|s| s.matches(Some(&labels_json(v.labels()))));
        if !matches {
            return false;
        }
    }
    true
}

/// The volume to bind an unbound claim to: one pre-bound to it, else the smallest fitting
/// Available one (on `node`, when given).
fn find_volume(
    c: &PersistentVolumeClaim,
    volumes: &[Arc<PersistentVolume>],
    node: Option<Option<&Node>>,
) -> Option<Arc<PersistentVolume>> {
    if let Some(v) = volumes.iter().find(|v| prebound_to(v, c)) {
        return Some(v.clone());
    }
    volumes
        .iter()
        .filter(|v| v.spec.as_ref().is_some_and(|s| s.claim_ref.is_none()))
        .filter(|v| phase_of_volume(v) != "Released" && phase_of_volume(v) != "Failed")
        .filter(|v| fits(v, c))
        .filter(|v| node.is_none_or(|n| admits_node(v, n)))
        .min_by(|a, b| {
            let size = |v: &PersistentVolume| {
                storage(
                    v.spec
                        .as_ref()
                        .and_then(|s| s.capacity.as_ref())
                        .and_then(|c| c.get("storage")),
                )
            };
            size(a).total_cmp(&size(b))
        })
        .cloned()
}

/// The default StorageClass: the newest of those marked default.
fn default_class(classes: &[Arc<StorageClass>]) -> Option<Arc<StorageClass>> {
    classes
        .iter()
        .filter(|c| c.annotations().get(DEFAULT_CLASS).map(String::as_str) == Some("true"))
        .max_by(|a, b| {
            a.creation_timestamp()
                .cmp(&b.creation_timestamp())
                .then_with(|| a.name_any().cmp(&b.name_any()))
        })
        .cloned()
}

// ---------------------------------------------------------------------------------------
// Claims.

async fn reconcile_claim(c: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    caches_ready(&ctx).await?;
    sync_claim(&c, &ctx).await
}

async fn sync_claim(c: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Action, Error> {
    if c.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = c.namespace().unwrap_or_default();
    let name = c.name_any();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let spec = c.spec.clone().unwrap_or_default();
    if spec.storage_class_name.is_none() {
        if let Some(class) = default_class(&ctx.classes.state()) {
            tracing::info!(pvc = %name, ns = %ns, class = %class.name_any(), "assigning the default storage class");
            let patch = json!({"spec": {"storageClassName": class.name_any()}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            return Ok(Action::await_change());
        }
    }
    let volumes = ctx.volumes.state();
    let class = ctx
        .classes
        .get(&ObjectRef::new(claim_class(c)))
        .filter(|_| !claim_class(c).is_empty());
    match spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
        None => {
            let wait_for_consumer = class
                .as_ref()
                .is_some_and(|s| s.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
            let selected = c.annotations().get(SELECTED_NODE).cloned();
            let node = selected.as_ref().map(|n| ctx.nodes.get(&ObjectRef::new(n)));
            let candidate = if wait_for_consumer && selected.is_none() {
                volumes.iter().find(|v| prebound_to(v, c)).cloned()
            } else {
                find_volume(c, &volumes, node.as_ref().map(|n| n.as_deref()))
            };
            if let Some(v) = candidate {
                bind(c, &v, ctx).await?;
                return Ok(Action::await_change());
            }
            set_claim_phase(c, "Pending", ctx).await?;
            if wait_for_consumer && selected.is_none() {
                ctx.recorder.event(
                    c,
                    EventType::Normal,
                    "WaitForFirstConsumer",
                    "waiting for first consumer to be created before binding".into(),
                );
                return Ok(Action::await_change());
            }
            match class.as_ref().map(|s| s.provisioner.clone()) {
                Some(p) if !p.is_empty() && p != "kubernetes.io/no-provisioner" => {
                    if c.annotations().get(STORAGE_PROVISIONER) != Some(&p) {
                        let patch = json!({"metadata": {"annotations": {
                            STORAGE_PROVISIONER: p, BETA_STORAGE_PROVISIONER: p}}});
                        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await?;
                    }
                    ctx.recorder.event(
                        c,
                        EventType::Normal,
                        "ExternalProvisioning",
                        format!("Waiting for a volume to be created either by the external provisioner '{p}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."),
                    );
                }
                _ => {
                    let msg = if claim_class(c).is_empty() {
                        "no persistent volumes available for this claim and no storage class is set"
                            .to_string()
                    } else if class.is_none() {
                        format!(
                            "storageclass.storage.k8s.io \"{}\" not found",
                            claim_class(c)
                        )
                    } else {
                        "no persistent volumes available for this claim".to_string()
                    };
                    ctx.recorder
                        .event(c, EventType::Normal, "FailedBinding", msg);
                }
            }
            // Volumes may appear without an event that names this claim.
            Ok(Action::requeue(Duration::from_secs(15)))
        }
        Some(vname) => {
            let Some(v) = ctx.volumes.get(&ObjectRef::new(vname)) else {
                // Confirm with a live read before declaring the claim lost.
                let pv_api: Api<PersistentVolume> = Api::all(ctx.client.clone());
                if pv_api.get_opt(vname).await?.is_some() {
                    return Ok(Action::requeue(Duration::from_secs(1)));
                }
                if c.annotations().contains_key(BIND_COMPLETED) && phase_of_claim(c) != "Lost" {
                    set_claim_phase(c, "Lost", ctx).await?;
                    ctx.recorder.event(
                        c,
                        EventType::Warning,
                        "ClaimLost",
                        "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!".into(),
                    );
                }
                return Ok(Action::await_change());
            };
            let claim_ref = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
            match claim_ref {
                None => bind(c, &v, ctx).await?,
                Some(_) if prebound_to(&v, c) => bind(c, &v, ctx).await?,
                Some(_) => {
                    if c.annotations().contains_key(BIND_COMPLETED) {
                        if phase_of_claim(c) != "Lost" {
                            set_claim_phase(c, "Lost", ctx).await?;
                            ctx.recorder.event(
                                c,
                                EventType::Warning,
                                "ClaimMisbound",
                                "Two claims are bound to the same volume, this one is bound incorrectly".into(),
                            );
                        }
                    } else {
                        set_claim_phase(c, "Pending", ctx).await?;
                    }
                }
            }
            Ok(Action::await_change())
        }
    }
}

async fn set_claim_phase(c: &PersistentVolumeClaim, phase: &str, ctx: &Ctx) -> Result<(), Error> {
    if phase_of_claim(c) == phase {
        return Ok(());
    }
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
    let patch = json!({"status": {"phase": phase}});
    match api
        .patch_status(
            &c.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Binds `c` and `v` to each other (volume side first, as upstream does).
async fn bind(c: &PersistentVolumeClaim, v: &PersistentVolume, ctx: &Ctx) -> Result<(), Error> {
    let ns = c.namespace().unwrap_or_default();
    let name = c.name_any();
    let vname = v.name_any();
    let pv_api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let vspec = v.spec.clone().unwrap_or_default();
    let complete_ref = vspec.claim_ref.as_ref().is_some_and(|r| {
        r.uid.as_deref() == c.metadata.uid.as_deref() && r.name.as_deref() == Some(name.as_str())
    });
    if !complete_ref {
        let by_controller = vspec.claim_ref.is_none();
        let claim_ref = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("PersistentVolumeClaim".into()),
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: c.metadata.uid.clone(),
            resource_version: c.metadata.resource_version.clone(),
            field_path: None,
        };
        let mut patch = json!({"spec": {"claimRef": claim_ref}});
        if by_controller {
            patch["metadata"] = json!({"annotations": {BOUND_BY_CONTROLLER: "yes"}});
        }
        pv_api
            .patch(&vname, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    if phase_of_volume(v) != "Bound" {
        let patch = json!({"status": {"phase": "Bound"}});
        pv_api
            .patch_status(&vname, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let cspec = c.spec.clone().unwrap_or_default();
    let annotations = c.annotations();
    if cspec.volume_name.as_deref() != Some(vname.as_str())
        || !annotations.contains_key(BIND_COMPLETED)
    {
        let mut ann = json!({BIND_COMPLETED: "yes"});
        if cspec.volume_name.as_deref().is_none_or(str::is_empty) {
            ann[BOUND_BY_CONTROLLER] = json!("yes");
        }
        let patch = json!({"metadata": {"annotations": ann}, "spec": {"volumeName": vname}});
        pvc_api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let status = c.status.clone().unwrap_or_default();
    let capacity = vspec.capacity.clone().unwrap_or_default();
    let modes = vspec.access_modes.clone().unwrap_or_default();
    if phase_of_claim(c) != "Bound"
        || status.capacity.as_ref() != Some(&capacity)
        || status.access_modes.as_ref() != Some(&modes)
    {
        let patch =
            json!({"status": {"phase": "Bound", "capacity": capacity, "accessModes": modes}});
        pvc_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::info!(pvc = %name, ns = %ns, pv = %vname, "bound claim");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Volumes.

async fn reconcile_volume(v: Arc<PersistentVolume>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    caches_ready(&ctx).await?;
    sync_volume(&v, &ctx).await
}

async fn set_volume_phase(v: &PersistentVolume, phase: &str, ctx: &Ctx) -> Result<(), Error> {
    if phase_of_volume(v) == phase {
        return Ok(());
    }
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let patch = json!({"status": {"phase": phase}});
    match api
        .patch_status(
            &v.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What the volume's phase should be, given its claim as found (`None`: gone).
fn volume_phase(v: &PersistentVolume, claim: Option<&PersistentVolumeClaim>) -> &'static str {
    let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return "Available";
    };
    let uid = r.uid.as_deref().unwrap_or("");
    if uid.is_empty() {
        // Reserved for a claim that has not bound yet.
        return "Available";
    }
    match claim {
        Some(c) if c.metadata.uid.as_deref() == Some(uid) => {
            let bound_here = c
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .is_some_and(|n| Some(n) == v.metadata.name.as_deref());
            if bound_here { "Bound" } else { "Pending" }
        }
        _ => "Released",
    }
}

async fn sync_volume(v: &PersistentVolume, ctx: &Ctx) -> Result<Action, Error> {
    if v.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let claim_ref = v.spec.as_ref().and_then(|s| s.claim_ref.clone());
    let claim = match &claim_ref {
        Some(r) => {
            let ns = r.namespace.clone().unwrap_or_default();
            let name = r.name.clone().unwrap_or_default();
            match ctx.claims.get(&ObjectRef::new(&name).within(&ns)) {
                Some(c) => Some((*c).clone()),
                // The cache may lag: a live read before releasing the volume.
                None => {
                    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
                    api.get_opt(&name).await?
                }
            }
        }
        None => None,
    };
    let mut phase = volume_phase(v, claim.as_ref());
    if phase == "Pending" {
        // The claim bound elsewhere (or not yet here).
        let c = claim.as_ref();
        let elsewhere = c
            .and_then(|c| c.spec.as_ref())
            .and_then(|s| s.volume_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        if elsewhere && v.annotations().contains_key(BOUND_BY_CONTROLLER) {
            let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
            let patch = json!({"spec": {"claimRef": null}, "metadata": {"annotations": {BOUND_BY_CONTROLLER: null}}});
            api.patch(
                &v.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
            phase = "Available";
        } else {
            // The claim side finishes the binding.
            return Ok(Action::await_change());
        }
    }
    if phase == "Released" && phase_of_volume(v) != "Released" {
        tracing::info!(pv = %v.name_any(), "volume released");
    }
    // A Released volume stays Released until its reference is cleared.
    if phase == "Available" && phase_of_volume(v) == "Released" && claim_ref.is_some() {
        return Ok(Action::await_change());
    }
    set_volume_phase(v, phase, ctx).await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(
        name: &str,
        size: &str,
        class: &str,
        claim: Option<(&str, &str)>,
    ) -> Arc<PersistentVolume> {
        let mut v = json!({"metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "hostPath": {"path": "/x"}},
            "status": {"phase": "Available"}});
        if let Some((n, uid)) = claim {
            v["spec"]["claimRef"] = json!({"name": n, "namespace": "ns", "uid": uid});
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn pvc(name: &str, size: &str, class: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns", "uid": format!("u-{name}")},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}, "storageClassName": class}}))
        .unwrap()
    }

    #[test]
    fn matching_volumes() {
        let vols = vec![
            pv("big", "10Gi", "fast", None),
            pv("small", "2Gi", "fast", None),
            pv("tiny", "1Mi", "fast", None),
            pv("other", "5Gi", "slow", None),
            pv("taken", "3Gi", "fast", Some(("x", "u-x"))),
        ];
        // (claim, expected volume)
        let cases = [
            (pvc("a", "1Gi", "fast"), Some("small")),
            (pvc("b", "5Gi", "fast"), Some("big")),
            (pvc("c", "20Gi", "fast"), None),
            (pvc("d", "1Gi", "slow"), Some("other")),
            (pvc("e", "1Gi", ""), None),
            (pvc("x", "100Gi", "fast"), Some("taken")),
        ];
        for (c, want) in cases {
            let got = find_volume(&c, &vols, None).map(|v| v.name_any());
            assert_eq!(got.as_deref(), want, "{}", c.name_any());
        }
        let mut rox = pvc("f", "1Gi", "fast");
        rox.spec.as_mut().unwrap().access_modes = Some(vec!["ReadOnlyMany".into()]);
        assert!(find_volume(&rox, &vols, None).is_none());
    }

    #[test]
    fn volume_phases() {
        let c = pvc("a", "1Gi", "fast");
        let mut bound = c.clone();
        bound.spec.as_mut().unwrap().volume_name = Some("v".into());
        let cases = [
            (pv("v", "1Gi", "fast", None), None, "Available"),
            (pv("v", "1Gi", "fast", Some(("a", ""))), None, "Available"),
            (
                pv("v", "1Gi", "fast", Some(("a", "u-a"))),
                Some(&bound),
                "Bound",
            ),
            (
                pv("v", "1Gi", "fast", Some(("a", "u-a"))),
                Some(&c),
                "Pending",
            ),
            (pv("v", "1Gi", "fast", Some(("a", "u-a"))), None, "Released"),
            (
                pv("v", "1Gi", "fast", Some(("a", "old-uid"))),
                Some(&bound),
                "Released",
            ),
        ];
        for (i, (v, claim, want)) in cases.into_iter().enumerate() {
            assert_eq!(volume_phase(&v, claim), want, "case {i}");
        }
    }

    #[test]
    fn default_class_is_newest_marked() {
        let sc = |name: &str, default: bool, created: &str| {
            Arc::new(
                serde_json::from_value::<StorageClass>(json!({"metadata": {"name": name, "creationTimestamp": created,
                "annotations": {DEFAULT_CLASS: if default {"true"} else {"false"}}}, "provisioner": "p"}))
                .unwrap(),
            )
        };
        let classes = vec![
            sc("a", true, "2025-01-01T00:00:00Z"),
            sc("b", true, "2025-01-02T00:00:00Z"),
            sc("c", false, "2025-01-03T00:00:00Z"),
        ];
        assert_eq!(default_class(&classes).unwrap().name_any(), "b");
        assert!(default_class(&classes[2..]).is_none());
    }
}
