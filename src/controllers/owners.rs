//! Which workload controller an object belongs to, for the controllers that select what
//! they manage by label (Deployment, DaemonSet, StatefulSet, Job, ...):
//!
//! - [`label_selector`]: a `spec.selector` as the matcher takes it;
//! - [`owners_of`]: the objects to requeue when a dependent changes — its controller, or
//!   for an orphan every controller that would adopt it;
//! - [`claim_pods`]: adopting matching orphan pods and releasing owned pods that stopped
//!   matching, on top of [`super::replicaset::ownership`].
//!
//! Depends on: `api` (label selectors), the ReplicaSet controller's ownership helpers,
//! kube-rs. Never the store or the API server.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as MetaSelector;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};

use super::replicaset::ownership::{Claim, adopt, controller_ref, decide, release};
use super::replicaset::pods::controller_of;
use super::replicaset::{is_not_found, labels_json};
use crate::api::selector::LabelSelector;

/// A `spec.selector` as the matcher takes it; an absent one is `null` (selects nothing).
pub(crate) fn label_selector(selector: Option<&MetaSelector>) -> Result<LabelSelector, String> {
    let raw = serde_json::to_value(selector).map_err(|e| e.to_string())?;
    LabelSelector::from_label_selector_json(&raw)
}

/// What to requeue when `obj` changes: the `K` controlling it (by kind and API group), or,
/// when nothing controls it, every `K` in its namespace whose non-empty `selector` matches
/// its labels. An object controlled by anything else requeues nothing.
pub(crate) fn owners_of<K, O>(
    store: &Store<K>,
    obj: &O,
    selector: impl Fn(&K) -> Result<LabelSelector, String>,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone,
    O: Resource,
{
    let meta = obj.meta();
    let ns = meta.namespace.clone().unwrap_or_default();
    if let Some(r) = controller_of(meta) {
        let group = K::group(&());
        if r.kind == K::kind(&())
            && r.api_version
                .strip_prefix(group.as_ref())
                .is_some_and(|v| v.starts_with('/'))
        {
            return vec![ObjectRef::new(&r.name).within(&ns)];
        }
        return Vec::new();
    }
    let labels = labels_json(obj.labels());
    store
        .state()
        .iter()
        .filter(|o| o.namespace().as_deref() == Some(ns.as_str()))
        .filter(|o| selector(o).is_ok_and(|s| !s.is_empty() && s.matches(Some(&labels))))
        .map(|o| ObjectRef::from_obj(&**o))
        .collect()
}

/// Claims `owner`'s pods among the cached `pods` of its namespace (any phase): adopts
/// orphans that are `member`s (unless the owner is being deleted), releases owned pods
/// that no longer are, and returns the pods it owns. A pod gone meanwhile is skipped; a
/// failed release is only logged (the pod stays owned until the next sync retries it).
pub(crate) async fn claim_pods<K>(
    client: &Client,
    owner: &K,
    pods: &Store<Pod>,
    member: impl Fn(&Pod) -> bool,
) -> Result<Vec<Arc<Pod>>, kube::Error>
where
    K: Resource<DynamicType = ()>,
{
    let ns = owner.meta().namespace.clone().unwrap_or_default();
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let being_deleted = owner.meta().deletion_timestamp.is_some();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut out = Vec::new();
    let in_namespace = pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()));
    for pod in in_namespace {
        let pod_uid = pod.uid().unwrap_or_default();
        match decide(&uid, being_deleted, member(&pod), &pod.metadata) {
            Claim::Owned => out.push(pod),
            Claim::Ignore => {}
            Claim::Adopt => {
                match adopt(&api, &pod.name_any(), &pod_uid, &controller_ref(owner)).await {
                    Ok(p) => out.push(Arc::new(p)),
                    Err(err) if is_not_found(&err) => {}
                    Err(err) => return Err(err),
                }
            }
            Claim::Release => {
                if let Err(err) = release(&api, &pod.name_any(), &pod_uid, &uid).await
                    && !is_not_found(&err)
                {
                    tracing::debug!(%err, pod = %pod.name_any(), "releasing pod");
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, ReplicaSet};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use kube::runtime::reflector;
    use kube::runtime::watcher;
    use std::collections::BTreeMap;

    fn ds(ns: &str, name: &str, select: Option<(&str, &str)>) -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            },
            spec: Some(DaemonSetSpec {
                selector: MetaSelector {
                    match_labels: select.map(|(k, v)| BTreeMap::from([(k.into(), v.into())])),
                    ..MetaSelector::default()
                },
                ..DaemonSetSpec::default()
            }),
            status: None,
        }
    }

    fn selector(d: &DaemonSet) -> Result<LabelSelector, String> {
        label_selector(d.spec.as_ref().map(|s| &s.selector))
    }

    fn dependent(ns: &str, labels: &[(&str, &str)], owner: Option<(&str, &str)>) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("dep".into()),
                namespace: Some(ns.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                owner_references: owner.map(|(api_version, kind)| {
                    vec![OwnerReference {
                        api_version: api_version.into(),
                        kind: kind.into(),
                        name: "boss".into(),
                        uid: "u".into(),
                        controller: Some(true),
                        block_owner_deletion: None,
                    }]
                }),
                ..ObjectMeta::default()
            },
            ..ReplicaSet::default()
        }
    }

    #[test]
    fn owners_are_the_controller_or_the_selecting_objects() {
        let (store, mut writer) = reflector::store::<DaemonSet>();
        for d in [
            ds("a", "web", Some(("app", "web"))),
            ds("a", "all", None),
            ds("b", "web", Some(("app", "web"))),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(d));
        }
        let names = |refs: Vec<ObjectRef<DaemonSet>>| -> Vec<String> {
            refs.into_iter()
                .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
                .collect()
        };
        let cases: [(&str, ReplicaSet, Vec<&str>); 5] = [
            (
                "controlled by a DaemonSet",
                dependent("a", &[("app", "web")], Some(("apps/v1", "DaemonSet"))),
                vec!["a/boss"],
            ),
            (
                "controlled by something else",
                dependent("a", &[("app", "web")], Some(("apps/v1", "StatefulSet"))),
                vec![],
            ),
            (
                "a DaemonSet of another group",
                dependent(
                    "a",
                    &[("app", "web")],
                    Some(("apps.example/v1", "DaemonSet")),
                ),
                vec![],
            ),
            (
                "orphan: the selecting ones in its namespace",
                dependent("a", &[("app", "web")], None),
                vec!["a/web"],
            ),
            (
                "orphan nobody selects",
                dependent("a", &[("app", "db")], None),
                vec![],
            ),
        ];
        for (what, obj, want) in cases {
            let mut got = names(owners_of(&store, &obj, selector));
            got.sort();
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn absent_selectors_select_nothing() {
        let s = label_selector(None).unwrap();
        assert!(!s.matches(Some(&labels_json(&BTreeMap::new()))));
        let s = label_selector(Some(&MetaSelector::default())).unwrap();
        assert!(s.is_empty());
    }
}
