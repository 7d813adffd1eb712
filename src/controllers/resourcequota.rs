//! The resource quota controller, as upstream's: keeps every ResourceQuota's
//! `status.hard` equal to its `spec.hard` and `status.used` equal to what the objects in
//! its namespace actually charge (the same accounting the admission plugin uses,
//! [`crate::api::quota`]), so quota freed by deletions becomes usable again.
//!
//! A namespace is recalculated when one of its quotas is created or its spec changes,
//! when a pod, service, claim, config map, secret or workload object in it is deleted,
//! when a pod reaches a terminal phase, and periodically (which also catches charges the
//! admission plugin made for writes that then failed). Level-triggered: each pass lists
//! the quotas and the objects they count and writes status with compare-and-swap on the
//! quota's resourceVersion (a conflict requeues the namespace).
//!
//! Depends on `kube` and `crate::api`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota, ResourceQuotaStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind, PartialObjectMeta};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_kind};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::RESOURCES;
use crate::api::quota::{self, ResourceList};

/// How often every quota is recalculated regardless of events.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(60);

/// Kinds whose deletions free quota (besides pods and quotas, watched in full).
const REPLENISHED: &[(&str, &str)] = &[
    ("", "services"),
    ("", "configmaps"),
    ("", "secrets"),
    ("", "persistentvolumeclaims"),
    ("", "replicationcontrollers"),
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
];

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
}

/// What the watchers ask for: one namespace, or every namespace with quotas.
type Trigger = Option<String>;

/// Namespaces that have quotas, and the last spec seen per quota (`ns/name`).
#[derive(Default)]
struct Known {
    namespaces: HashMap<String, usize>,
    specs: HashMap<String, Value>,
}

type Shared = Arc<Mutex<Known>>;

fn lock(k: &Shared) -> std::sync::MutexGuard<'_, Known> {
    match k.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Trigger>();
    let known: Shared = Arc::default();
    tokio::spawn(watch_quotas(
        client.clone(),
        known.clone(),
        tx.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(watch_pods(client.clone(), tx.clone(), shutdown.clone()));
    for (group, plural) in REPLENISHED {
        if let Some(ar) = api_resource(group, plural) {
            tokio::spawn(watch_deletions(
                client.clone(),
                ar,
                tx.clone(),
                shutdown.clone(),
            ));
        }
    }
    let mut resync = tokio::time::interval(RESYNC_PERIOD);
    loop {
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let mut all = false;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = resync.tick() => all = true,
            t = rx.recv() => match t {
                Some(Some(ns)) => { dirty.insert(ns); }
                Some(None) => all = true,
                None => return,
            },
        }
        // Coalesce a burst of events.
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(t) = rx.try_recv() {
            match t {
                Some(ns) => {
                    dirty.insert(ns);
                }
                None => all = true,
            }
        }
        {
            let k = lock(&known);
            if all {
                dirty.extend(k.namespaces.keys().cloned());
            }
            dirty.retain(|ns| k.namespaces.contains_key(ns));
        }
        for ns in dirty {
            if let Err(err) = sync_namespace(&client, &ns).await {
                tracing::debug!(%err, ns, "quota recalculation failed; retrying");
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let _ = tx.send(Some(ns));
                });
            }
        }
    }
}

/// The served (preferred, stored) version of `group/plural`.
fn api_resource(group: &str, plural: &str) -> Option<ApiResource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural && r.preferred && r.is_stored())
        .map(|ri| {
            let gvk = GroupVersionKind::gvk(ri.group, ri.version, ri.kind);
            ApiResource::from_gvk_with_plural(&gvk, ri.plural)
        })
}

fn quota_key(q: &ResourceQuota) -> String {
    format!("{}/{}", q.namespace().unwrap_or_default(), q.name_any())
}

/// Whether the quota needs a pass: new, spec changed, or status.hard not matching spec.
fn quota_needs_sync(known: &mut Known, q: &ResourceQuota) -> bool {
    let spec = serde_json::to_value(&q.spec).unwrap_or(Value::Null);
    let changed = known
        .specs
        .insert(quota_key(q), spec.clone())
        .is_none_or(|old| old != spec);
    let spec_hard = q
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    let status_hard = q
        .status
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    changed || !quota::equals(&from_k8s(&spec_hard), &from_k8s(&status_hard))
}

async fn watch_quotas(
    client: Client,
    known: Shared,
    tx: mpsc::UnboundedSender<Trigger>,
    shutdown: CancellationToken,
) {
    let api: Api<ResourceQuota> = Api::all(client);
    let mut events = pin!(watch_kind(api, watcher::Config::default()).default_backoff());
    let mut listing: HashMap<String, usize> = HashMap::new();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.next() => match e { Some(e) => e, None => return },
        };
        let Ok(event) = event else { continue };
        match event {
            Event::Apply(q) => {
                let ns = q.namespace().unwrap_or_default();
                let mut k = lock(&known);
                if !k.specs.contains_key(&quota_key(&q)) {
                    *k.namespaces.entry(ns.clone()).or_default() += 1;
                }
                if quota_needs_sync(&mut k, &q) {
                    let _ = tx.send(Some(ns));
                }
            }
            Event::Delete(q) => {
                let ns = q.namespace().unwrap_or_default();
                let mut k = lock(&known);
                if k.specs.remove(&quota_key(&q)).is_some()
                    && let Some(n) = k.namespaces.get_mut(&ns)
                {
                    *n -= 1;
                    if *n == 0 {
                        k.namespaces.remove(&ns);
                    }
                }
            }
            Event::Init => listing.clear(),
            Event::InitApply(q) => {
                *listing
                    .entry(q.namespace().unwrap_or_default())
                    .or_default() += 1;
                let mut k = lock(&known);
                quota_needs_sync(&mut k, &q);
            }
            Event::InitDone => {
                let mut k = lock(&known);
                k.namespaces = std::mem::take(&mut listing);
                // Forget quotas that went away while we were not watching.
                let live: HashSet<String> = k.namespaces.keys().cloned().collect();
                k.specs
                    .retain(|key, _| key.split('/').next().is_some_and(|ns| live.contains(ns)));
                drop(k);
                let _ = tx.send(None);
            }
        }
    }
}

async fn watch_pods(
    client: Client,
    tx: mpsc::UnboundedSender<Trigger>,
    shutdown: CancellationToken,
) {
    let api: Api<Pod> = Api::all(client);
    let mut events = pin!(watch_kind(api, watcher::Config::default()).default_backoff());
    let mut inactive: HashSet<String> = HashSet::new();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.next() => match e { Some(e) => e, None => return },
        };
        let Ok(event) = event else { continue };
        match event {
            Event::Apply(p) | Event::InitApply(p) => {
                let key = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
                let terminal = p
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
                if terminal && inactive.insert(key) {
                    let _ = tx.send(p.namespace());
                }
            }
            Event::Delete(p) => {
                inactive.remove(&format!(
                    "{}/{}",
                    p.namespace().unwrap_or_default(),
                    p.name_any()
                ));
                let _ = tx.send(p.namespace());
            }
            Event::Init => inactive.clear(),
            Event::InitDone => {
                let _ = tx.send(None);
            }
        }
    }
}

async fn watch_deletions(
    client: Client,
    ar: ApiResource,
    tx: mpsc::UnboundedSender<Trigger>,
    shutdown: CancellationToken,
) {
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client, &ar);
    let mut events = pin!(watch_kind(api, watcher::Config::default()).default_backoff());
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.next() => match e { Some(e) => e, None => return },
        };
        match event {
            Ok(Event::Delete(o)) => {
                let _ = tx.send(o.namespace());
            }
            Ok(Event::InitDone) => {
                let _ = tx.send(None);
            }
            _ => {}
        }
    }
}

fn from_k8s(list: &std::collections::BTreeMap<String, K8sQuantity>) -> ResourceList {
    list.iter()
        .filter_map(|(k, v)| quota::Quantity::parse(&v.0).map(|q| (k.clone(), q)))
        .collect()
}

fn to_k8s(list: &ResourceList) -> std::collections::BTreeMap<String, K8sQuantity> {
    list.iter()
        .map(|(k, v)| (k.clone(), K8sQuantity(v.to_string())))
        .collect()
}

/// Lists the objects of `group/plural` in `ns` as JSON (None for kinds not served).
async fn list_objects(
    client: &Client,
    ns: &str,
    group: &str,
    plural: &str,
) -> Result<Option<Vec<Value>>, Error> {
    let Some(ar) = api_resource(group, plural) else {
        return Ok(None);
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let list = api.list(&ListParams::default()).await?;
    let items = list
        .items
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(items))
}

/// The new status of a quota given the objects of each kind it counts, or None if the
/// current status is already right.
fn desired_status(
    quota_obj: &Value,
    objects: &HashMap<(String, String), Option<Vec<Value>>>,
    now: i64,
) -> Option<(ResourceList, ResourceList)> {
    let hard = quota::resource_list(&quota_obj["spec"]["hard"]);
    let old_used = quota::resource_list(&quota_obj["status"]["used"]);
    let old_hard = quota::resource_list(&quota_obj["status"]["hard"]);
    let mut used = old_used.clone();
    for ((group, plural), objs) in objects {
        let Some(objs) = objs else { continue };
        let u = quota::calculate_usage(quota_obj, &hard, group, plural, objs, now);
        used.extend(u);
    }
    let used = quota::mask(&used, hard.keys());
    if quota::equals(&used, &old_used) && quota::equals(&hard, &old_hard) {
        return None;
    }
    Some((hard, used))
}

/// Recalculates every quota of `ns`.
async fn sync_namespace(client: &Client, ns: &str) -> Result<(), Error> {
    let api: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
    let quotas = api.list(&ListParams::default()).await?.items;
    let mut objects: HashMap<(String, String), Option<Vec<Value>>> = HashMap::new();
    for q in &quotas {
        let hard = q
            .spec
            .as_ref()
            .and_then(|s| s.hard.clone())
            .unwrap_or_default();
        for name in hard.keys() {
            if let Some(kind) = quota::kind_of_resource(name)
                && !objects.contains_key(&kind)
            {
                let objs = list_objects(client, ns, &kind.0, &kind.1).await?;
                objects.insert(kind, objs);
            }
        }
    }
    let now = jiff::Timestamp::now().as_second();
    for mut q in quotas {
        let qv = serde_json::to_value(&q)?;
        // Only the kinds this quota counts.
        let hard = quota::resource_list(&qv["spec"]["hard"]);
        let kinds: HashSet<(String, String)> = hard
            .keys()
            .filter_map(|k| quota::kind_of_resource(k))
            .collect();
        let mine: HashMap<(String, String), Option<Vec<Value>>> = objects
            .iter()
            .filter(|(k, _)| kinds.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let Some((hard, used)) = desired_status(&qv, &mine, now) else {
            continue;
        };
        tracing::debug!(ns, quota = q.name_any(), used = %quota::pretty(&used), "updating quota usage");
        q.status = Some(ResourceQuotaStatus {
            hard: Some(to_k8s(&hard)),
            used: Some(to_k8s(&used)),
        });
        // resourceVersion from the list: a concurrent charge makes this a conflict.
        api.replace_status(&q.name_any(), &PostParams::default(), &q)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_from_objects() {
        let q = json!({"spec": {"hard": {"pods": "2", "requests.cpu": "1", "configmaps": "5"}},
                       "status": {"hard": {"pods": "2"}, "used": {"pods": "2"}}});
        let pod = |cpu: &str, phase: &str| {
            json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": cpu}}}]},
                   "status": {"phase": phase}})
        };
        let mut objects = HashMap::new();
        objects.insert(
            (String::new(), "pods".to_string()),
            Some(vec![pod("250m", "Running"), pod("500m", "Succeeded")]),
        );
        objects.insert((String::new(), "configmaps".to_string()), Some(vec![]));
        let (hard, used) = desired_status(&q, &objects, 0).unwrap();
        assert_eq!(quota::pretty(&hard), "configmaps=5,pods=2,requests.cpu=1");
        assert_eq!(
            quota::pretty(&used),
            "configmaps=0,pods=1,requests.cpu=250m"
        );
        let settled = json!({"spec": q["spec"], "status": {"hard": quota::to_json(&hard), "used": quota::to_json(&used)}});
        assert!(desired_status(&settled, &objects, 0).is_none());
    }
}
