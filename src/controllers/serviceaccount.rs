//! The service account controller: every active namespace has a ServiceAccount named
//! `default`; it is created right after the namespace and recreated if deleted, as the
//! upstream `serviceaccount-controller`.
//!
//! Watches Namespaces (primary) and ServiceAccounts named `default` (a deletion requeues
//! the namespace). Depends on `kube` only.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

/// The account every namespace gets.
pub const DEFAULT_ACCOUNT: &str = "default";

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
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client });
    let controller = Controller::new(namespaces, watcher::Config::default()).watches(
        accounts,
        watcher::Config::default().fields(&format!("metadata.name={DEFAULT_ACCOUNT}")),
        |sa| sa.namespace().map(|ns| ObjectRef::new(&ns)),
    );
    super::watch::run_controller(
        "serviceaccount",
        controller,
        reconcile,
        error_policy,
        ctx,
        shutdown,
    )
    .await;
}

fn error_policy(_ns: Arc<Namespace>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(%err, "serviceaccount controller error; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if crate::controllers::namespace_is_terminating(&ns) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    if api.get_opt(DEFAULT_ACCOUNT).await?.is_some() {
        return Ok(Action::await_change());
    }
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT_ACCOUNT.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => {
            tracing::info!(namespace = %name, "created default service account");
            Ok(Action::await_change())
        }
        // Someone else created it, or the namespace started terminating or vanished.
        Err(kube::Error::Api(s)) if matches!(s.code, 409 | 403 | 404) => {
            tracing::debug!(namespace = %name, reason = %s.reason, "default service account not created");
            Ok(Action::await_change())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminating_namespaces_are_skipped() {
        let mut ns = Namespace::default();
        assert!(!crate::controllers::namespace_is_terminating(&ns));
        ns.status = Some(k8s_openapi::api::core::v1::NamespaceStatus {
            phase: Some("Terminating".into()),
            ..Default::default()
        });
        assert!(crate::controllers::namespace_is_terminating(&ns));
        let mut ns = Namespace::default();
        ns.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        assert!(crate::controllers::namespace_is_terminating(&ns));
    }
}
