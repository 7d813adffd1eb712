//! The root CA publisher: every active namespace has a ConfigMap `kube-root-ca.crt` whose
//! `ca.crt` is the cluster CA certificate (PEM), so pods can verify the API server through
//! their projected service account volume — the upstream `root-ca-cert-publisher`.
//!
//! Watches Namespaces (primary) and ConfigMaps named `kube-root-ca.crt` (a deletion or an
//! edit requeues the namespace, and the map is recreated or put back). Depends on `kube`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

/// The published ConfigMap's name.
pub const CONFIGMAP: &str = "kube-root-ca.crt";

/// The key holding the CA bundle.
pub const CA_KEY: &str = "ca.crt";

/// The annotation describing what the map is for.
pub const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";

const DESCRIPTION: &str = "The cluster CA bundle, for verifying the API server at its in-cluster \
     addresses (kubernetes.default.svc and the service IP). Its use for anything else is not \
     guaranteed across Kubernetes distributions.";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

struct Ctx {
    client: Client,
    ca_pem: String,
}

/// Runs the publisher until `shutdown`, publishing `ca_pem`.
pub async fn run(client: Client, ca_pem: String, shutdown: CancellationToken) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let maps: Api<ConfigMap> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client, ca_pem });
    let controller = Controller::new(namespaces, watcher::Config::default()).watches(
        maps,
        watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP}")),
        |cm| cm.namespace().map(|ns| ObjectRef::new(&ns)),
    );
    super::watch::run_controller(
        "root CA publisher",
        controller,
        reconcile,
        error_policy,
        ctx,
        shutdown,
    )
    .await;
}

fn error_policy(_ns: Arc<Namespace>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(%err, "root CA publisher error; retrying");
    Action::requeue(Duration::from_secs(2))
}

fn desired_data(ca_pem: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(CA_KEY.to_string(), ca_pem.to_string())])
}

/// The map brought to the desired state, or `None` if it already is.
fn repaired(mut cm: ConfigMap, ca_pem: &str) -> Option<ConfigMap> {
    let data = desired_data(ca_pem);
    let described = cm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DESCRIPTION_ANNOTATION))
        .is_some_and(|d| !d.is_empty());
    if cm.data.as_ref() == Some(&data) && described {
        return None;
    }
    cm.data = Some(data);
    cm.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(DESCRIPTION_ANNOTATION.into(), DESCRIPTION.into());
    Some(cm)
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if crate::controllers::namespace_is_terminating(&ns) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let result = match api.get_opt(CONFIGMAP).await? {
        Some(cm) => match repaired(cm, &ctx.ca_pem) {
            None => return Ok(Action::await_change()),
            Some(cm) => api.replace(CONFIGMAP, &PostParams::default(), &cm).await,
        },
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(CONFIGMAP.into()),
                    annotations: Some(BTreeMap::from([(
                        DESCRIPTION_ANNOTATION.to_string(),
                        DESCRIPTION.to_string(),
                    )])),
                    ..Default::default()
                },
                data: Some(desired_data(&ctx.ca_pem)),
                ..Default::default()
            };
            api.create(&PostParams::default(), &cm).await
        }
    };
    match result {
        Ok(_) => {
            tracing::info!(namespace = %name, "published {CONFIGMAP}");
            Ok(Action::await_change())
        }
        // Lost a race (the next event requeues), or the namespace is going away.
        Err(kube::Error::Api(s)) if matches!(s.code, 403 | 404) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Ok(Action::requeue(Duration::from_millis(200)))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    #[test]
    fn repair_table() {
        let good = repaired(ConfigMap::default(), PEM).unwrap();
        assert_eq!(good.data.as_ref().unwrap()[CA_KEY], PEM);
        let cases = [
            ("already right", good.clone(), false),
            (
                "stale CA",
                {
                    let mut c = good.clone();
                    c.data = Some(desired_data("old"));
                    c
                },
                true,
            ),
            (
                "extra key",
                {
                    let mut c = good.clone();
                    c.data.as_mut().unwrap().insert("x".into(), "y".into());
                    c
                },
                true,
            ),
            (
                "no description",
                {
                    let mut c = good.clone();
                    c.metadata.annotations = None;
                    c
                },
                true,
            ),
        ];
        for (name, cm, changes) in cases {
            let out = repaired(cm, PEM);
            assert_eq!(out.is_some(), changes, "{name}");
            if let Some(cm) = out {
                assert_eq!(cm.data.unwrap(), desired_data(PEM), "{name}");
            }
        }
    }
}
