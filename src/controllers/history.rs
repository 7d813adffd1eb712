//! ControllerRevisions: the template history of DaemonSets and StatefulSets (upstream's
//! `pkg/controller/history`), which `kubectl rollout history` lists and `kubectl rollout
//! undo` restores.
//!
//! A revision's `data` is a strategic merge patch that puts the owner's pod template back
//! (`{"spec":{"template":{..., "$patch":"replace"}}}`, as upstream records it). Its name
//! is `<owner>-<hash>`, where the hash (also the `controller-revision-hash` label of the
//! revision and of the pods stamped from it) is FNV-1a over the canonical JSON of the data
//! plus the owner's `collisionCount`, spelled with upstream's safe alphabet. Revisions are
//! numbered from 1; restoring an older template renumbers the matching revision to the
//! newest number instead of creating a duplicate. Revisions beyond `revisionHistoryLimit`
//! that no live pod uses are pruned, oldest first.
//!
//! Depends on: kube-rs, k8s-openapi. Never the store or the API server.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::hash;

/// The label carrying a revision's hash, on the revision and on the pods made from it.
pub(crate) const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";

/// The canonical JSON of revision data (nulls and empty maps/lists dropped: the API
/// treats them as absent), so equal data always hashes alike.
fn canonical(v: &Value) -> String {
    hash::canonical_json(v, true)
}

/// The hash of revision data with the owner's collision count (upstream's
/// `HashControllerRevision`).
pub(crate) fn hash_data(data: &Value, collision_count: Option<i32>) -> String {
    let text = canonical(data);
    let probe = collision_count.map(|c| c.to_string()).unwrap_or_default();
    hash::safe_encode(hash::fnv32a(&[text.as_bytes(), probe.as_bytes()]))
}

/// `<owner>-<hash>`, the owner's name cut to fit (upstream's `ControllerRevisionName`).
pub(crate) fn revision_name(owner: &str, hash: &str) -> String {
    let owner = if owner.len() > 223 {
        &owner[..223]
    } else {
        owner
    };
    format!("{owner}-{hash}")
}

/// The data of a revision: the patch that restores `template`.
pub(crate) fn template_patch(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The template recorded in a revision (`None` if the data is not a template patch).
pub(crate) fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.get("spec")?.get("template")?.clone();
    t.as_object_mut()?.remove("$patch");
    serde_json::from_value(t).ok()
}

/// Whether two revisions hold the same data.
pub(crate) fn same_data(a: &Value, b: &Value) -> bool {
    canonical(a) == canonical(b)
}

/// A revision of `owner` (not yet named: see [`create`]).
pub(crate) fn new_revision(
    owner: &ObjectMeta,
    owner_ref: OwnerReference,
    template_labels: &BTreeMap<String, String>,
    data: Value,
    revision: i64,
) -> ControllerRevision {
    ControllerRevision {
        metadata: ObjectMeta {
            namespace: owner.namespace.clone(),
            labels: Some(template_labels.clone()),
            annotations: owner.annotations.clone(),
            owner_references: Some(vec![owner_ref]),
            ..ObjectMeta::default()
        },
        data: Some(RawExtension(data)),
        revision,
    }
}

/// The hash label of a revision.
pub(crate) fn hash_of(rev: &ControllerRevision) -> String {
    rev.labels()
        .get(CONTROLLER_REVISION_HASH)
        .cloned()
        .unwrap_or_default()
}

/// The next revision number after `revisions`.
pub(crate) fn next_revision(revisions: &[Arc<ControllerRevision>]) -> i64 {
    revisions.iter().map(|r| r.revision).max().unwrap_or(0) + 1
}

/// The revisions (of a namespace) controlled by the object with `owner_uid`, oldest
/// revision first.
pub(crate) fn owned(
    all: &[Arc<ControllerRevision>],
    ns: &str,
    owner_uid: &str,
) -> Vec<Arc<ControllerRevision>> {
    let mut revs: Vec<Arc<ControllerRevision>> = all
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(ns))
        .filter(|r| {
            r.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == owner_uid)
        })
        .cloned()
        .collect();
    revs.sort_by(|a, b| {
        a.revision
            .cmp(&b.revision)
            .then_with(|| a.creation_timestamp().cmp(&b.creation_timestamp()))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    revs
}

/// Creates `rev`, named from its hash; a name taken by different data bumps
/// `collision_count` and tries again (upstream's `CreateControllerRevision`). Returns the
/// revision (an existing identical one is returned as is).
pub(crate) async fn create(
    api: &Api<ControllerRevision>,
    owner_name: &str,
    mut rev: ControllerRevision,
    collision_count: &mut i32,
) -> Result<ControllerRevision, kube::Error> {
    let data = rev
        .data
        .as_ref()
        .map(|d| d.0.clone())
        .unwrap_or(Value::Null);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let hash = hash_data(&data, Some(*collision_count));
        rev.metadata.name = Some(revision_name(owner_name, &hash));
        rev.labels_mut()
            .insert(CONTROLLER_REVISION_HASH.into(), hash.clone());
        match api.create(&PostParams::default(), &rev).await {
            Ok(created) => return Ok(created),
            // A name taken: the same revision (return it) or a hash collision (probe on).
            Err(kube::Error::Api(s)) if s.code == 409 && attempts < 100 => {
                let existing = api.get(&rev.name_any()).await?;
                let owner_uid = rev
                    .owner_references()
                    .first()
                    .map(|o| o.uid.clone())
                    .unwrap_or_default();
                let same_owner = existing
                    .owner_references()
                    .iter()
                    .any(|o| o.uid == owner_uid);
                let existing_data = existing.data.as_ref().map(|d| d.0.clone());
                if same_owner && existing_data.is_some_and(|d| same_data(&d, &data)) {
                    return Ok(existing);
                }
                *collision_count = collision_count.saturating_add(1);
            }
            Err(err) => return Err(err),
        }
    }
}

/// Renumbers a revision (a rollback to it makes it the newest).
pub(crate) async fn set_revision_number(
    api: &Api<ControllerRevision>,
    rev: &ControllerRevision,
    revision: i64,
) -> Result<ControllerRevision, kube::Error> {
    let patch = json!({"revision": revision});
    api.patch(
        &rev.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
}

/// The names of the revisions to delete so that at most `limit` old ones remain, sparing
/// those in `live` (the current/update revisions and those pods still use); oldest first.
pub(crate) fn to_prune(
    revisions: &[Arc<ControllerRevision>],
    live: &HashSet<String>,
    limit: i32,
) -> Vec<String> {
    let prunable: Vec<&Arc<ControllerRevision>> = revisions
        .iter()
        .filter(|r| !live.contains(&r.name_any()) && !live.contains(&hash_of(r)))
        .collect();
    let limit = usize::try_from(limit.max(0)).unwrap_or(0);
    let excess = prunable.len().saturating_sub(limit);
    prunable
        .into_iter()
        .take(excess)
        .map(|r| r.name_any())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": image}]},
        }))
        .unwrap()
    }

    fn rev(name: &str, hash: &str, n: i64) -> Arc<ControllerRevision> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "labels": {CONTROLLER_REVISION_HASH: hash},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "uid": "u", "controller": true}]},
                "revision": n,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn hashing() {
        let a = template_patch(&template("busybox:1"));
        let b = template_patch(&template("busybox:2"));
        // (data, collision count, other data, other count, equal?)
        let cases = [
            (&a, None, &a, None, true),
            (&a, Some(0), &a, Some(0), true),
            (&a, None, &b, None, false),
            (&a, Some(0), &a, Some(1), false),
            (&a, None, &a, Some(0), false),
        ];
        for (i, (x, cx, y, cy, eq)) in cases.into_iter().enumerate() {
            assert_eq!(hash_data(x, cx) == hash_data(y, cy), eq, "case {i}");
        }
        let h = hash_data(&a, Some(0));
        assert!(
            !h.is_empty() && h.bytes().all(|c| hash::SAFE_ALPHABET.contains(&c)),
            "{h}"
        );
        // Key order, nulls and empty maps do not change the hash.
        let reordered = json!({"spec": {"template": {"spec": {"containers": [{"image": "busybox:1", "name": "c"}]},
            "metadata": {"labels": {"app": "web"}, "annotations": {}}, "$patch": "replace"}}});
        assert_eq!(hash_data(&reordered, None), hash_data(&a, None));
        assert!(same_data(&reordered, &a));
    }

    #[test]
    fn patch_round_trip_and_names() {
        let t = template("busybox:1");
        let patch = template_patch(&t);
        assert_eq!(patch["spec"]["template"]["$patch"], "replace");
        let mut r = (*rev("d-x", "x", 1)).clone();
        r.data = Some(RawExtension(patch));
        assert_eq!(template_of(&r), Some(t));
        assert_eq!(revision_name("web", "abc"), "web-abc");
        assert_eq!(revision_name(&"a".repeat(300), "h").len(), 225);
    }

    #[test]
    fn ordering_and_pruning() {
        let revs = owned(
            &[rev("d-c", "c", 3), rev("d-a", "a", 1), rev("d-b", "b", 2)],
            "ns",
            "u",
        );
        let names: Vec<String> = revs.iter().map(|r| r.name_any()).collect();
        assert_eq!(names, ["d-a", "d-b", "d-c"]);
        assert_eq!(next_revision(&revs), 4);
        assert!(owned(&revs, "ns", "other").is_empty());
        // (live, limit, pruned)
        let cases: [(&[&str], i32, &[&str]); 4] = [
            (&["c"], 10, &[]),
            (&["c"], 1, &["d-a"]),
            (&["c"], 0, &["d-a", "d-b"]),
            (&["d-a", "c"], 0, &["d-b"]),
        ];
        for (live, limit, want) in cases {
            let live: HashSet<String> = live.iter().map(|s| s.to_string()).collect();
            assert_eq!(to_prune(&revs, &live, limit), want, "{live:?} {limit}");
        }
    }
}
