//! The garbage collector: deletes objects whose owners are gone and carries out the
//! `Foreground` and `Orphan` deletion policies, with the semantics of upstream's
//! `pkg/controller/garbagecollector`.
//!
//! - **Graph.** A metadata-only watch per stored resource kind (events excepted, as
//!   upstream ignores them) feeds an in-memory graph: uid → node (kind, namespace, name,
//!   owner references, deletion state) plus an index owner uid → dependent uids. Owners
//!   are identified by uid: an object with the owner's name but another uid is a
//!   different object, and the reference dangles.
//! - **Background.** An object all of whose owners are absent — verified with a live GET,
//!   never from the graph alone — is deleted (uid precondition; its own `orphan` or
//!   `foregroundDeletion` finalizer picks the policy, else `Background`). References to
//!   absent owners of an object that still has a live owner are removed instead.
//! - **Foreground.** An owner being deleted with the `foregroundDeletion` finalizer has
//!   its dependents deleted (dependents that have dependents of their own are deleted in
//!   the foreground too); once no dependent with `blockOwnerDeletion: true` remains, the
//!   finalizer is removed and the API server deletes the owner.
//! - **Orphan.** An owner being deleted with the `orphan` finalizer has its reference
//!   removed from every dependent, then the finalizer is removed.
//! - A namespaced dependent's namespaced owners live in its namespace; a cluster-scoped
//!   dependent cannot have namespaced owners (such references are ignored).
//!
//! Work is level-triggered: graph changes enqueue uids on a deduplicating, delaying work
//! queue (kube-runtime's scheduler, at most one worker per uid), and a periodic resync
//! re-enqueues every object that still needs attention. Work starts once every watch has
//! listed (bounded), so a dependent is not mistaken for missing at startup.
//!
//! Depends on: `api` (the resource table), kube-rs. Never the store or the API server's
//! internals.

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::FuturesUnordered;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Client;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::core::{ApiResource, GroupVersionKind, PartialObjectMeta};
use kube::runtime::scheduler::{ScheduleRequest, scheduler};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_kind};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::resources::split_api_version;
use crate::api::{RESOURCES, ResourceInfo};

/// The finalizer of an owner deleted with `propagationPolicy: Foreground`.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of an owner deleted with `propagationPolicy: Orphan`.
pub const ORPHAN: &str = "orphan";

/// Objects processed at once.
const WORKERS: usize = 8;
/// How often every object needing attention is re-enqueued.
const RESYNC: Duration = Duration::from_secs(30);
/// How long work waits for every watch's first list.
const SYNC_WAIT: Duration = Duration::from_secs(30);
/// Delay before retrying after a conflicting write.
const CONFLICT_RETRY: Duration = Duration::from_millis(100);
/// Bound of the cache of uids known to be deleted.
const ABSENT_CACHE: usize = 10_000;
/// Resources the collector does not watch (upstream's default ignored resources).
const IGNORED: &[(&str, &str)] = &[("", "events"), ("events.k8s.io", "events")];

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

/// One owner reference, as the graph keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    uid: String,
    block: bool,
    /// Whether the owner's kind is served (and so can be checked at all).
    served: bool,
}

/// One observed object.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    /// Index into the watched kinds.
    kind: usize,
    namespace: Option<String>,
    name: String,
    owners: Vec<Owner>,
    deleting: bool,
    foreground: bool,
    orphan: bool,
}

impl Node {
    fn from_meta(kind: usize, meta: &ObjectMeta) -> Option<(String, Node)> {
        let uid = meta.uid.clone()?;
        let finalizers = meta.finalizers.as_deref().unwrap_or_default();
        let node = Node {
            kind,
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
            owners: meta
                .owner_references
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|r| Owner {
                    uid: r.uid.clone(),
                    block: r.block_owner_deletion == Some(true),
                    served: resolve_kind(&r.api_version, &r.kind).is_some(),
                })
                .collect(),
            deleting: meta.deletion_timestamp.is_some(),
            foreground: finalizers.iter().any(|f| f == FOREGROUND),
            orphan: finalizers.iter().any(|f| f == ORPHAN),
        };
        Some((uid, node))
    }

    /// Being deleted in the foreground: waiting for its blocking dependents.
    fn deleting_dependents(&self) -> bool {
        self.deleting && self.foreground
    }
}

/// The dependency graph.
#[derive(Debug, Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    /// Owner uid → uids of observed objects referring to it (the owner may be unobserved).
    dependents: HashMap<String, HashSet<String>>,
    /// Uids seen deleted; uids are never reused, so this never goes stale.
    absent: HashSet<String>,
}

impl Graph {
    /// Records an added or updated object; returns the uids that need processing.
    fn observe(&mut self, uid: String, node: Node) -> Vec<String> {
        let mut wake = Vec::new();
        if let Some(old) = self.nodes.insert(uid.clone(), node.clone()) {
            for o in &old.owners {
                let kept = node.owners.iter().find(|n| n.uid == o.uid);
                if kept.is_none() {
                    self.unlink(&o.uid, &uid);
                }
                // An owner waiting for its blocking dependents may be free now.
                let still_blocks = kept.is_some_and(|k| k.block);
                if o.block
                    && !still_blocks
                    && self
                        .nodes
                        .get(&o.uid)
                        .is_some_and(Node::deleting_dependents)
                {
                    wake.push(o.uid.clone());
                }
            }
        }
        for o in &node.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        if self.needs_attention(&node) {
            wake.push(uid);
        }
        wake
    }

    /// Records a deleted object; returns the uids that need processing.
    fn forget(&mut self, uid: &str) -> Vec<String> {
        let Some(node) = self.nodes.remove(uid) else {
            return Vec::new();
        };
        self.remember_absent(uid);
        let mut wake = Vec::new();
        for o in &node.owners {
            self.unlink(&o.uid, uid);
            if self
                .nodes
                .get(&o.uid)
                .is_some_and(Node::deleting_dependents)
            {
                wake.push(o.uid.clone());
            }
        }
        wake.extend(self.dependents_of(uid));
        wake
    }

    /// After a (re)list of `kind`: forgets the objects of that kind the list did not
    /// contain (deleted while the watch was down).
    fn forget_missing(&mut self, kind: usize, listed: &HashSet<String>) -> Vec<String> {
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|(uid, n)| n.kind == kind && !listed.contains(*uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        gone.iter().flat_map(|uid| self.forget(uid)).collect()
    }

    fn unlink(&mut self, owner: &str, dependent: &str) {
        if let Some(set) = self.dependents.get_mut(owner) {
            set.remove(dependent);
            if set.is_empty() {
                self.dependents.remove(owner);
            }
        }
    }

    fn remember_absent(&mut self, uid: &str) {
        if self.absent.len() >= ABSENT_CACHE {
            self.absent.clear();
        }
        self.absent.insert(uid.to_string());
    }

    /// Whether an object has work: a GC finalizer to honour, or an owner (of a served
    /// kind) that is not known to exist or is deleting its dependents.
    fn needs_attention(&self, node: &Node) -> bool {
        if node.deleting {
            return node.foreground || node.orphan;
        }
        node.owners.iter().any(|o| {
            o.served
                && (self.absent.contains(&o.uid)
                    || self.nodes.get(&o.uid).is_none_or(Node::deleting_dependents))
        })
    }

    /// Observed dependents of `uid`.
    fn dependents_of(&self, uid: &str) -> Vec<String> {
        self.dependents
            .get(uid)
            .map(|set| {
                set.iter()
                    .filter(|d| self.nodes.contains_key(*d))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Observed dependents of `uid` whose reference to it has `blockOwnerDeletion`.
    fn blocking_dependents(&self, uid: &str) -> Vec<String> {
        self.dependents_of(uid)
            .into_iter()
            .filter(|d| {
                self.nodes
                    .get(d)
                    .is_some_and(|n| n.owners.iter().any(|o| o.uid == uid && o.block))
            })
            .collect()
    }

    /// Every object that still needs attention (the periodic resync).
    fn needing_attention(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| self.needs_attention(n))
            .map(|(uid, _)| uid.clone())
            .collect()
    }
}

struct Ctx {
    client: Client,
    kinds: Vec<&'static ResourceInfo>,
    graph: Mutex<Graph>,
    queue: mpsc::UnboundedSender<ScheduleRequest<String>>,
}

impl Ctx {
    fn graph(&self) -> MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enqueue(&self, uids: impl IntoIterator<Item = String>) {
        for uid in uids {
            self.enqueue_after(uid, Duration::ZERO);
        }
    }

    fn enqueue_after(&self, uid: String, after: Duration) {
        // Fails only once the worker loop is gone (shutdown).
        let _ = self.queue.unbounded_send(ScheduleRequest {
            message: uid,
            run_at: Instant::now() + after,
        });
    }

    fn api(&self, ri: &ResourceInfo, namespace: Option<&str>) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk(ri.group, ri.version, ri.kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, ri.plural);
        match namespace {
            Some(ns) if ri.namespaced => Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => Api::all_with(self.client.clone(), &ar),
        }
    }
}

/// The kinds the collector watches: every stored resource, once (its storage version).
fn watched_kinds() -> Vec<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .filter(|r| r.is_stored() && r.is_storage_version() && r.verbs.contains(&"delete"))
        .filter(|r| !IGNORED.contains(&(r.group, r.plural)))
        .collect()
}

/// The served resource of an owner reference's `apiVersion` and `kind`: that version if
/// served, else the group's preferred one.
fn resolve_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    let (group, version) = split_api_version(api_version);
    RESOURCES
        .iter()
        .filter(|r| r.is_stored() && r.group == group && r.kind == kind)
        .max_by_key(|r| (r.version == version, r.preferred))
}

/// Runs the collector until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let kinds = watched_kinds();
    let (tx, rx) = mpsc::unbounded();
    let (synced_tx, mut synced_rx) = tokio::sync::watch::channel(0usize);
    let ctx = Arc::new(Ctx {
        client,
        kinds,
        graph: Mutex::new(Graph::default()),
        queue: tx,
    });
    let mut tasks = Vec::new();
    for kind in 0..ctx.kinds.len() {
        tasks.push(tokio::spawn(monitor(
            ctx.clone(),
            kind,
            synced_tx.clone(),
            shutdown.clone(),
        )));
    }
    drop(synced_tx);
    tasks.push(tokio::spawn(resync(ctx.clone(), shutdown.clone())));
    let all = ctx.kinds.len();
    let listed = async {
        tokio::time::timeout(SYNC_WAIT, synced_rx.wait_for(|n| *n >= all))
            .await
            .is_ok_and(|r| r.is_ok())
    };
    let start = tokio::select! {
        _ = shutdown.cancelled() => false,
        listed = listed => {
            if !listed {
                tracing::warn!("garbage collector: not every resource listed in time; starting anyway");
            }
            true
        }
    };
    if start {
        work(ctx.clone(), rx, shutdown.clone()).await;
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Follows one kind's objects (metadata only) into the graph.
async fn monitor(
    ctx: Arc<Ctx>,
    kind: usize,
    synced: tokio::sync::watch::Sender<usize>,
    shutdown: CancellationToken,
) {
    let ri = ctx.kinds[kind];
    let gvk = GroupVersionKind::gvk(ri.group, ri.version, ri.kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, ri.plural);
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(ctx.client.clone(), &ar);
    let mut events = pin!(watch_kind(api, watcher::Config::default()).default_backoff());
    let mut listing: Option<HashSet<String>> = None;
    let mut listed_once = false;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.next() => e,
        };
        let Some(event) = event else { return };
        match event {
            Ok(Event::Init) => listing = Some(HashSet::new()),
            Ok(Event::InitApply(obj)) => {
                if let Some((uid, node)) = Node::from_meta(kind, &obj.metadata) {
                    if let Some(l) = listing.as_mut() {
                        l.insert(uid.clone());
                    }
                    let wake = ctx.graph().observe(uid, node);
                    ctx.enqueue(wake);
                }
            }
            Ok(Event::InitDone) => {
                if let Some(listed) = listing.take() {
                    let wake = ctx.graph().forget_missing(kind, &listed);
                    ctx.enqueue(wake);
                }
                if !listed_once {
                    listed_once = true;
                    synced.send_modify(|n| *n += 1);
                }
            }
            Ok(Event::Apply(obj)) => {
                if let Some((uid, node)) = Node::from_meta(kind, &obj.metadata) {
                    let wake = ctx.graph().observe(uid, node);
                    ctx.enqueue(wake);
                }
            }
            Ok(Event::Delete(obj)) => {
                if let Some(uid) = obj.metadata.uid.as_deref() {
                    let wake = ctx.graph().forget(uid);
                    ctx.enqueue(wake);
                }
            }
            Err(err) => {
                tracing::debug!(%err, kind = ri.kind, group = ri.group, "garbage collector watch failed; retrying");
            }
        }
    }
}

/// Re-enqueues everything that still needs attention, periodically.
async fn resync(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(RESYNC);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let uids = ctx.graph().needing_attention();
                ctx.enqueue(uids);
            }
        }
    }
}

/// The worker loop: takes due uids off the queue, at most [`WORKERS`] at once and never
/// the same uid twice at once, and requeues with backoff on errors.
async fn work(
    ctx: Arc<Ctx>,
    rx: mpsc::UnboundedReceiver<ScheduleRequest<String>>,
    shutdown: CancellationToken,
) {
    let mut queue = pin!(scheduler(rx));
    let mut busy: HashSet<String> = HashSet::new();
    let mut failures: HashMap<String, u32> = HashMap::new();
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some((uid, result)) = running.next(), if !running.is_empty() => {
                busy.remove(&uid);
                match result {
                    Ok(next) => {
                        failures.remove(&uid);
                        if let Some(after) = next {
                            ctx.enqueue_after(uid, after);
                        }
                    }
                    Err(err) => {
                        let n = failures.entry(uid.clone()).or_insert(0);
                        *n += 1;
                        let delay = backoff(*n);
                        tracing::warn!(%err, uid = %uid, retry_in = ?delay, "garbage collector failed to process an object");
                        ctx.enqueue_after(uid, delay);
                    }
                }
            }
            next = async {
                queue
                    .as_mut()
                    .hold_unless(|uid: &String| busy.len() < WORKERS && !busy.contains(uid))
                    .next()
                    .await
            } => {
                let Some(uid) = next else { return };
                busy.insert(uid.clone());
                let ctx = ctx.clone();
                running.push(async move {
                    let result = process(&ctx, &uid).await;
                    (uid, result)
                });
            }
        }
    }
}

/// Exponential backoff from 500 ms to a minute.
fn backoff(failures: u32) -> Duration {
    let ms = 500u64.saturating_mul(1u64 << failures.saturating_sub(1).min(10));
    Duration::from_millis(ms).min(Duration::from_secs(60))
}

/// What an owner reference points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnerState {
    /// Exists and is not deleting its dependents.
    Solid,
    /// Absent (or replaced by an object with another uid).
    Dangling,
    /// Being deleted in the foreground: waiting for its dependents.
    Waiting,
    /// A namespaced owner of a cluster-scoped object: not a valid reference.
    Invalid,
}

/// Processes one object; returns when to look at it again, if ever.
async fn process(ctx: &Ctx, uid: &str) -> Result<Option<Duration>, Error> {
    let Some(node) = ctx.graph().nodes.get(uid).cloned() else {
        return Ok(None);
    };
    let ri = ctx.kinds[node.kind];
    let api = ctx.api(ri, node.namespace.as_deref());
    let Some(live) = api.get_metadata_opt(&node.name).await? else {
        return Ok(None);
    };
    let meta = &live.metadata;
    if meta.uid.as_deref() != Some(uid) {
        return Ok(None);
    }
    if meta.deletion_timestamp.is_some() {
        if has_finalizer(meta, FOREGROUND) {
            return delete_dependents(ctx, uid, &node, &api, meta).await;
        }
        if has_finalizer(meta, ORPHAN) {
            return orphan_dependents(ctx, uid, &node, &api, meta).await;
        }
        return Ok(None);
    }
    let refs = meta.owner_references.clone().unwrap_or_default();
    if refs.is_empty() {
        return Ok(None);
    }
    let mut solid = Vec::new();
    let mut gone = HashSet::new();
    let mut waiting = HashSet::new();
    for r in &refs {
        match owner_state(ctx, node.namespace.as_deref(), r).await? {
            OwnerState::Solid => solid.push(r.uid.clone()),
            OwnerState::Dangling => {
                gone.insert(r.uid.clone());
            }
            OwnerState::Waiting => {
                waiting.insert(r.uid.clone());
            }
            OwnerState::Invalid => {
                tracing::debug!(kind = ri.kind, name = %node.name, owner_kind = %r.kind, owner = %r.name,
                    "cluster-scoped object refers to a namespaced owner, which is not valid; ignoring it");
                return Ok(None);
            }
        }
    }
    if !solid.is_empty() {
        if gone.is_empty() && waiting.is_empty() {
            return Ok(None);
        }
        // A live owner keeps the object; references to the others are dropped.
        let kept: Vec<OwnerReference> = refs
            .iter()
            .filter(|r| !gone.contains(&r.uid) && !waiting.contains(&r.uid))
            .cloned()
            .collect();
        tracing::info!(kind = ri.kind, ns = ?node.namespace, name = %node.name,
            "removing references to deleted owners");
        return patch_owner_references(&api, &node.name, meta, kept).await;
    }
    let has_dependents = !ctx.graph().dependents_of(uid).is_empty();
    if !waiting.is_empty() && has_dependents {
        // An owner waits for this object, which has dependents of its own: delete it in
        // the foreground too. If one of those dependents also waits (a cycle), stop
        // blocking the owners first so neither waits forever.
        let cycle = {
            let g = ctx.graph();
            g.dependents_of(uid)
                .iter()
                .any(|d| g.nodes.get(d).is_some_and(Node::deleting_dependents))
        };
        if cycle {
            let unblocked: Vec<OwnerReference> = refs
                .iter()
                .cloned()
                .map(|mut r| {
                    if waiting.contains(&r.uid) {
                        r.block_owner_deletion = Some(false);
                    }
                    r
                })
                .collect();
            if unblocked != refs
                && let Some(retry) =
                    patch_owner_references(&api, &node.name, meta, unblocked).await?
            {
                return Ok(Some(retry));
            }
        }
        delete(&api, ri, &node, uid, PropagationPolicy::Foreground).await?;
        return Ok(None);
    }
    let policy = if has_finalizer(meta, ORPHAN) {
        PropagationPolicy::Orphan
    } else if has_finalizer(meta, FOREGROUND) {
        PropagationPolicy::Foreground
    } else {
        PropagationPolicy::Background
    };
    delete(&api, ri, &node, uid, policy).await?;
    Ok(None)
}

/// Classifies one owner reference of an object in `namespace`, with a live GET.
async fn owner_state(
    ctx: &Ctx,
    namespace: Option<&str>,
    r: &OwnerReference,
) -> Result<OwnerState, Error> {
    if ctx.graph().absent.contains(&r.uid) {
        return Ok(OwnerState::Dangling);
    }
    let Some(ori) = resolve_kind(&r.api_version, &r.kind) else {
        // A kind this server does not serve: never collect anything because of it.
        tracing::debug!(api_version = %r.api_version, kind = %r.kind, "owner kind not served; treating the owner as present");
        return Ok(OwnerState::Solid);
    };
    let ns = match (ori.namespaced, namespace) {
        (true, Some(ns)) => Some(ns),
        (true, None) => return Ok(OwnerState::Invalid),
        (false, _) => None,
    };
    let owner = ctx.api(ori, ns).get_metadata_opt(&r.name).await?;
    Ok(match owner {
        Some(o) if o.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
            if o.metadata.deletion_timestamp.is_some() && has_finalizer(&o.metadata, FOREGROUND) {
                OwnerState::Waiting
            } else {
                OwnerState::Solid
            }
        }
        _ => {
            ctx.graph().remember_absent(&r.uid);
            OwnerState::Dangling
        }
    })
}

/// Foreground deletion of an owner: deletes its dependents, and removes the finalizer
/// once no dependent blocks it — per the graph, then confirmed by live lists (a
/// dependent created just before the owner's deletion may not have reached the graph).
async fn delete_dependents(
    ctx: &Ctx,
    uid: &str,
    node: &Node,
    api: &Api<DynamicObject>,
    meta: &ObjectMeta,
) -> Result<Option<Duration>, Error> {
    let (blocking, pending) = {
        let g = ctx.graph();
        let pending: Vec<String> = g
            .dependents_of(uid)
            .into_iter()
            .filter(|d| g.nodes.get(d).is_some_and(|n| !n.deleting))
            .collect();
        (g.blocking_dependents(uid), pending)
    };
    if !blocking.is_empty() {
        ctx.enqueue(pending);
        // Each dependent's deletion wakes the owner; the requeue is a safety net.
        return Ok(Some(RESYNC));
    }
    let live = live_dependents(ctx, node, uid).await?;
    let still_blocking = live.iter().any(|(_, m)| {
        m.owner_references
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
    });
    if still_blocking {
        // The graph has not caught up yet; its watches will enqueue the dependents.
        ctx.enqueue(live.into_iter().filter_map(|(_, m)| m.uid));
        return Ok(Some(Duration::from_secs(1)));
    }
    tracing::info!(ns = ?node.namespace, name = %node.name, "dependents deleted; finishing foreground deletion");
    remove_finalizer(api, &node.name, meta, FOREGROUND).await
}

/// Orphan deletion of an owner: removes its reference from every dependent (found by
/// live lists, so none is missed while the graph catches up), then the finalizer.
async fn orphan_dependents(
    ctx: &Ctx,
    uid: &str,
    node: &Node,
    api: &Api<DynamicObject>,
    meta: &ObjectMeta,
) -> Result<Option<Duration>, Error> {
    for (kind, dep) in live_dependents(ctx, node, uid).await? {
        let dapi = ctx.api(ctx.kinds[kind], dep.namespace.as_deref());
        let name = dep.name.clone().unwrap_or_default();
        let kept = dep
            .owner_references
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.uid != uid)
            .collect();
        if let Some(retry) = patch_owner_references(&dapi, &name, &dep, kept).await? {
            return Ok(Some(retry));
        }
    }
    tracing::info!(ns = ?node.namespace, name = %node.name, "dependents orphaned; finishing orphan deletion");
    remove_finalizer(api, &node.name, meta, ORPHAN).await
}

/// Every object currently referring to the owner `uid` (metadata lists of each watched
/// kind: in the owner's namespace for a namespaced owner, everywhere otherwise).
async fn live_dependents(
    ctx: &Ctx,
    owner: &Node,
    uid: &str,
) -> Result<Vec<(usize, ObjectMeta)>, Error> {
    let owner_ri = ctx.kinds[owner.kind];
    let mut found = Vec::new();
    for (kind, ri) in ctx.kinds.iter().enumerate() {
        // Cluster-scoped objects cannot depend on namespaced owners.
        if owner_ri.namespaced && !ri.namespaced {
            continue;
        }
        let ns = if owner_ri.namespaced {
            owner.namespace.as_deref()
        } else {
            None
        };
        let list = ctx
            .api(ri, ns)
            .list_metadata(&ListParams::default())
            .await?;
        found.extend(
            list.items
                .into_iter()
                .map(|o| o.metadata)
                .filter(|m| {
                    m.owner_references
                        .as_deref()
                        .unwrap_or_default()
                        .iter()
                        .any(|r| r.uid == uid)
                })
                .map(|m| (kind, m)),
        );
    }
    Ok(found)
}

/// Deletes a collected object, guarded by its uid.
async fn delete(
    api: &Api<DynamicObject>,
    ri: &ResourceInfo,
    node: &Node,
    uid: &str,
    policy: PropagationPolicy,
) -> Result<(), Error> {
    tracing::info!(kind = ri.kind, ns = ?node.namespace, name = %node.name, ?policy, "deleting object whose owners are gone");
    let dp = DeleteParams {
        propagation_policy: Some(policy),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&node.name, &dp).await {
        Ok(_) => Ok(()),
        // Already gone, or replaced by another object of that name.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Replaces an object's owner references, guarded by the resourceVersion read. Returns a
/// retry delay on conflicts.
async fn patch_owner_references(
    api: &Api<DynamicObject>,
    name: &str,
    meta: &ObjectMeta,
    refs: Vec<OwnerReference>,
) -> Result<Option<Duration>, Error> {
    let refs = if refs.is_empty() {
        serde_json::Value::Null
    } else {
        json!(refs)
    };
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "resourceVersion": meta.resource_version,
    }});
    guarded_patch(api, name, patch).await
}

/// Removes one finalizer, guarded by the resourceVersion read.
async fn remove_finalizer(
    api: &Api<DynamicObject>,
    name: &str,
    meta: &ObjectMeta,
    finalizer: &str,
) -> Result<Option<Duration>, Error> {
    let kept: Vec<&String> = meta
        .finalizers
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|f| *f != finalizer)
        .collect();
    let patch = json!({"metadata": {
        "finalizers": kept,
        "resourceVersion": meta.resource_version,
    }});
    guarded_patch(api, name, patch).await
}

async fn guarded_patch(
    api: &Api<DynamicObject>,
    name: &str,
    patch: serde_json::Value,
) -> Result<Option<Duration>, Error> {
    match api
        .patch_metadata(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Some(CONFLICT_RETRY)),
        Err(e) => Err(e.into()),
    }
}

fn has_finalizer(meta: &ObjectMeta, finalizer: &str) -> bool {
    meta.finalizers
        .as_deref()
        .is_some_and(|f| f.iter().any(|x| x == finalizer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(owners: &[(&str, bool)]) -> Node {
        Node {
            kind: 0,
            namespace: Some("default".into()),
            name: "x".into(),
            owners: owners
                .iter()
                .map(|(uid, block)| Owner {
                    uid: uid.to_string(),
                    block: *block,
                    served: *uid != "unserved",
                })
                .collect(),
            deleting: false,
            foreground: false,
            orphan: false,
        }
    }

    fn deleting(mut n: Node, foreground: bool, orphan: bool) -> Node {
        n.deleting = true;
        n.foreground = foreground;
        n.orphan = orphan;
        n
    }

    #[test]
    fn observing_wakes_what_needs_work() {
        struct Case {
            name: &'static str,
            before: Vec<(&'static str, Node)>,
            observe: (&'static str, Node),
            wake: Vec<&'static str>,
        }
        let cases = vec![
            Case {
                name: "owner present: nothing to do",
                before: vec![("o", node(&[]))],
                observe: ("d", node(&[("o", true)])),
                wake: vec![],
            },
            Case {
                name: "owner unknown: verify",
                before: vec![],
                observe: ("d", node(&[("ghost", false)])),
                wake: vec!["d"],
            },
            Case {
                name: "owner deleting in the foreground: delete the dependent",
                before: vec![("o", deleting(node(&[]), true, false))],
                observe: ("d", node(&[("o", true)])),
                wake: vec!["d"],
            },
            Case {
                name: "owner of a kind not served: nothing can be checked",
                before: vec![],
                observe: ("d", node(&[("unserved", false)])),
                wake: vec![],
            },
            Case {
                name: "orphan finalizer",
                before: vec![],
                observe: ("o", deleting(node(&[]), false, true)),
                wake: vec!["o"],
            },
            Case {
                name: "plain deletion: nothing to do",
                before: vec![],
                observe: ("o", deleting(node(&[("ghost", true)]), false, false)),
                wake: vec![],
            },
            Case {
                name: "dependent stops blocking a waiting owner",
                before: vec![
                    ("o", deleting(node(&[]), true, false)),
                    ("d", node(&[("o", true)])),
                ],
                observe: ("d", node(&[])),
                wake: vec!["o"],
            },
        ];
        for c in cases {
            let mut g = Graph::default();
            for (uid, n) in c.before {
                g.observe(uid.to_string(), n);
            }
            let mut got = g.observe(c.observe.0.to_string(), c.observe.1);
            got.sort();
            assert_eq!(got, c.wake, "{}", c.name);
        }
    }

    #[test]
    fn forgetting_wakes_dependents_and_waiting_owners() {
        let mut g = Graph::default();
        g.observe("o".into(), deleting(node(&[]), true, false));
        g.observe("d1".into(), node(&[("o", true)]));
        g.observe("d2".into(), node(&[("o", false)]));
        assert_eq!(g.blocking_dependents("o"), vec!["d1".to_string()]);
        let mut deps = g.dependents_of("o");
        deps.sort();
        assert_eq!(deps, vec!["d1", "d2"]);
        // d1 is deleted: the owner re-checks its blocking dependents.
        assert_eq!(g.forget("d1"), vec!["o".to_string()]);
        assert!(g.blocking_dependents("o").is_empty());
        // The owner is deleted: its remaining dependent is checked and its uid is absent.
        assert_eq!(g.forget("o"), vec!["d2".to_string()]);
        assert!(g.absent.contains("o"));
        assert_eq!(g.needing_attention(), vec!["d2".to_string()]);
        assert!(g.forget("o").is_empty(), "forgetting twice is a no-op");
    }

    #[test]
    fn relist_forgets_missing_objects() {
        let mut g = Graph::default();
        g.observe("o".into(), node(&[]));
        g.observe("d".into(), node(&[("o", false)]));
        let mut other_kind = node(&[]);
        other_kind.kind = 1;
        g.observe("k1".into(), other_kind);
        let listed: HashSet<String> = ["d".to_string()].into();
        assert_eq!(g.forget_missing(0, &listed), vec!["d".to_string()]);
        assert!(g.nodes.contains_key("k1"), "other kinds are untouched");
        assert!(!g.nodes.contains_key("o"));
    }

    #[test]
    fn kinds_and_references() {
        let kinds = watched_kinds();
        assert!(kinds.iter().any(|r| r.kind == "Pod"));
        assert!(kinds.iter().any(|r| r.kind == "ReplicaSet"));
        assert!(
            !kinds.iter().any(|r| r.plural == "events"),
            "events are ignored"
        );
        assert!(
            !kinds.iter().any(|r| r.plural == "tokenreviews"),
            "reviews are not stored"
        );
        let hpa_count = kinds
            .iter()
            .filter(|r| r.kind == "HorizontalPodAutoscaler")
            .count();
        assert_eq!(hpa_count, 1, "one watch per storage location");
        assert_eq!(
            resolve_kind("apps/v1", "ReplicaSet").unwrap().plural,
            "replicasets"
        );
        assert_eq!(
            resolve_kind("apps/v1beta2", "Deployment").unwrap().version,
            "v1"
        );
        assert_eq!(
            resolve_kind("autoscaling/v1", "HorizontalPodAutoscaler")
                .unwrap()
                .version,
            "v1"
        );
        assert!(resolve_kind("example.com/v1", "Widget").is_none());
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(40), Duration::from_secs(60));
    }
}
