//! Controller references (upstream's `ControllerRefManager`): a controller claims the
//! objects its selector matches — adopting orphans by adding a controller reference,
//! releasing objects it owns that stopped matching by removing it — and ignores what
//! another controller owns.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::pods::controller_of;

/// What a controller does with an object it looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// It is ours and matches: manage it.
    Owned,
    /// An orphan that matches: take it.
    Adopt,
    /// Ours but no longer matching: let go of it.
    Release,
    /// Someone else's, or not for us.
    Ignore,
}

/// Decides about one object, given the controller's uid, whether the controller is being
/// deleted, and whether its selector matches the object's labels.
pub(crate) fn decide(
    owner_uid: &str,
    owner_deleting: bool,
    matches: bool,
    obj: &ObjectMeta,
) -> Claim {
    match controller_of(obj) {
        Some(r) if r.uid != owner_uid => Claim::Ignore,
        Some(_) if matches => Claim::Owned,
        Some(_) if owner_deleting => Claim::Ignore,
        Some(_) => Claim::Release,
        None if owner_deleting || !matches || obj.deletion_timestamp.is_some() => Claim::Ignore,
        None => Claim::Adopt,
    }
}

/// The controller reference a controller puts on what it owns.
pub(crate) fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    let meta = owner.meta();
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Adds `owner` as the controller of `name` (a strategic merge on the owner references,
/// naming the object's uid as upstream does).
pub(crate) async fn adopt<T>(
    api: &Api<T>,
    name: &str,
    uid: &str,
    owner: &OwnerReference,
) -> Result<T, kube::Error>
where
    T: Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"metadata": {"ownerReferences": [owner], "uid": uid}});
    api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
}

/// Removes the reference to `owner_uid` from `name`.
pub(crate) async fn release<T>(
    api: &Api<T>,
    name: &str,
    uid: &str,
    owner_uid: &str,
) -> Result<T, kube::Error>
where
    T: Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": owner_uid}], "uid": uid}});
    api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(owner: Option<(&str, bool)>, deleting: bool) -> ObjectMeta {
        let mut m = ObjectMeta::default();
        if let Some((uid, controller)) = owner {
            m.owner_references = Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "x".into(),
                uid: uid.into(),
                controller: Some(controller),
                block_owner_deletion: None,
            }]);
        }
        if deleting {
            m.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::now(),
            ));
        }
        m
    }

    #[test]
    fn claims() {
        use Claim::*;
        // (object meta, owner deleting, selector matches) → decision
        let cases = [
            (meta(Some(("me", true)), false), false, true, Owned),
            (meta(Some(("me", true)), false), false, false, Release),
            (meta(Some(("me", true)), false), true, false, Ignore),
            (meta(Some(("me", true)), false), true, true, Owned),
            (meta(Some(("other", true)), false), false, true, Ignore),
            (meta(None, false), false, true, Adopt),
            (meta(Some(("other", false)), false), false, true, Adopt),
            (meta(None, false), false, false, Ignore),
            (meta(None, false), true, true, Ignore),
            (meta(None, true), false, true, Ignore),
        ];
        for (i, (m, deleting, matches, want)) in cases.into_iter().enumerate() {
            assert_eq!(decide("me", deleting, matches, &m), want, "case {i}");
        }
    }
}
