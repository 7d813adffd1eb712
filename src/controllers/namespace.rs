//! The namespace controller: empties a namespace that is being deleted (every namespaced
//! resource, through deletecollection), then removes the `kubernetes` finalizer through
//! the `finalize` subresource so the API server can delete the namespace — the upstream
//! namespace lifecycle.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::api::RESOURCES;

/// The finalizer the namespace controller owns.
pub const FINALIZER: &str = "kubernetes";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

struct Ctx {
    client: Client,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client });
    let controller = Controller::new(api, watcher::Config::default());
    super::watch::run_controller(
        "namespace",
        controller,
        reconcile,
        error_policy,
        ctx,
        shutdown,
    )
    .await;
}

fn error_policy(_ns: Arc<Namespace>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(%err, "namespace controller error; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    // Give clients deleting a manifest (namespace first, then its contents) a moment to
    // delete their own objects before the sweep, as the upstream controller's discovery
    // pass does in practice.
    if let Some(ts) = &ns.metadata.deletion_timestamp {
        let age = jiff::Timestamp::now().duration_since(ts.0);
        if age < jiff::SignedDuration::from_secs(2) {
            let wait = (jiff::SignedDuration::from_secs(2) - age).unsigned_abs();
            return Ok(Action::requeue(wait.min(Duration::from_secs(2))));
        }
    }
    let mut remaining = 0usize;
    for ri in RESOURCES
        .iter()
        .filter(|r| r.namespaced && r.is_stored() && r.is_storage_version())
    {
        let gvk = GroupVersionKind::gvk(ri.group, ri.version, ri.kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, ri.plural);
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &name, &ar);
        let left = api.list_metadata(&ListParams::default()).await?;
        if left.items.is_empty() {
            continue;
        }
        let _ = api
            .delete_collection(&DeleteParams::background(), &ListParams::default())
            .await?;
        let after = api.list_metadata(&ListParams::default()).await?;
        remaining += after.items.len();
    }
    if remaining > 0 {
        tracing::info!(namespace = %name, remaining, "waiting for namespace contents to be deleted");
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let mut finalized = (*ns).clone();
    if let Some(spec) = finalized.spec.as_mut() {
        spec.finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
    }
    finalized.metadata.managed_fields = None;
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    api.replace_subresource("finalize", &name, &PostParams::default(), &finalized)
        .await?;
    tracing::info!(namespace = %name, "namespace emptied and finalized");
    Ok(Action::await_change())
}
