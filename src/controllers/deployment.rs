//! The Deployment controller, with the semantics of upstream's `pkg/controller/deployment`:
//! a Deployment owns one ReplicaSet per pod template and moves replicas from the old ones
//! to the one matching its current template.
//!
//! - **ReplicaSets.** The one whose template equals the Deployment's (ignoring the
//!   `pod-template-hash` label) is the new ReplicaSet; if there is none it is created as
//!   `<deployment>-<hash>`, with the hash label added to its selector, labels and
//!   template (a name taken by a different template bumps `status.collisionCount`, which
//!   changes the hash). ReplicaSets the selector matches are adopted, owned ones that stop
//!   matching are released.
//! - **Revisions.** The new ReplicaSet gets revision max(old)+1 in
//!   `deployment.kubernetes.io/revision` (rolling back — the client restores an old
//!   template — renumbers the old ReplicaSet and remembers its former revision in
//!   `revision-history`); the Deployment carries its new ReplicaSet's revision. Each
//!   ReplicaSet also records the Deployment's `desired-replicas` and `max-replicas` when
//!   last scaled, which proportional scaling relies on.
//! - **Strategies.** `RollingUpdate` scales the new ReplicaSet up within `maxSurge`
//!   (rounded up) and old ones down while keeping `replicas - maxUnavailable` (rounded
//!   down) available, unhealthy old pods first. `Recreate` scales every old ReplicaSet to
//!   zero, waits for their pods to be gone, then scales the new one up.
//! - **Scaling and pausing.** A changed `spec.replicas` mid-rollout is spread over the
//!   active ReplicaSets in proportion to their sizes; a paused Deployment is scaled that
//!   way but not rolled out.
//! - **Cleanup.** Old ReplicaSets beyond `revisionHistoryLimit` that have no pods are
//!   deleted, lowest revision first.
//! - **Status** through `/status`: replica counts from the ReplicaSets, `observedGeneration`,
//!   `collisionCount`, conditions `Available` (`MinimumReplicasAvailable`/`...Unavailable`),
//!   `Progressing` (`NewReplicaSetCreated`, `FoundNewReplicaSet`, `ReplicaSetUpdated`,
//!   `NewReplicaSetAvailable`, `ProgressDeadlineExceeded`, `DeploymentPaused`/`Resumed`,
//!   `FailedRSCreate`) with `progressDeadlineSeconds`, and `ReplicaFailure` copied from
//!   the ReplicaSets. Events `ScalingReplicaSet` as `deployment-controller`.
//!
//! Built on kube-runtime's `applier` over Deployment and ReplicaSet reflectors; ReplicaSet
//! events requeue their Deployment (orphans: every Deployment selecting them). Writes go
//! through the API with the cached object's resourceVersion, so a stale cache only costs
//! a conflict and a retry.
//!
//! Depends on: `api` (label selectors), the ReplicaSet controller's shared helpers
//! (`replicaset::{events, ownership, pods}`), kube-rs. Never the store or the API server.

mod util;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector as MetaSelector, ObjectMeta, Time,
};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, trigger_self, trigger_with};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use self::util::*;
use super::owners::{label_selector, owners_of};
use super::replicaset::events::{EventType, Recorder};
use super::replicaset::ownership::{Claim, adopt, controller_ref, decide, release};
use super::replicaset::pods::controller_of;
use super::replicaset::{
    error_message, is_not_found, labels_json, namespace_terminating, now_seconds,
};
use super::watch::{self, Failures};
use crate::api::selector::LabelSelector;

/// How often a Recreate rollout checks whether the old pods are gone.
const RECREATE_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the replica set cache is not available")]
    CacheGone,
    #[error("{0}")]
    Invalid(String),
    #[error("replica set {0:?} exists with another template; collision count raised")]
    Collision(String),
}

impl Error {
    fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists())
            || matches!(self, Error::Collision(_))
    }
}

struct Ctx {
    client: Client,
    replicasets: Store<ReplicaSet>,
    recorder: Recorder,
    failures: Failures,
}

/// Runs the Deployment controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let (d_store, d_events) = watch::reflect_all::<Deployment>(&client, watcher::Config::default());
    let (rs_store, rs_events) =
        watch::reflect_all::<ReplicaSet>(&client, watcher::Config::default());
    // A ReplicaSet requeues its Deployment, or for an orphan every Deployment selecting it.
    let deployments = d_store.clone();
    let queue = stream::select(
        trigger_self(d_events.applied_objects(), ()),
        trigger_with(rs_events.touched_objects(), move |rs: ReplicaSet| {
            owners_of(&deployments, &rs, selector)
        }),
    );
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "deployment-controller"),
        client,
        replicasets: rs_store,
        failures: Failures::default(),
    });
    watch::run_applier(
        "deployment",
        reconcile,
        error_policy,
        ctx,
        d_store,
        queue,
        controller::Config::default(),
        shutdown,
    )
    .await;
}

fn selector(d: &Deployment) -> Result<LabelSelector, String> {
    label_selector(d.spec.as_ref().map(|s| &s.selector))
}

fn key_of(d: &Deployment) -> String {
    format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any())
}

fn error_policy(d: Arc<Deployment>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let key = key_of(&d);
    let n = ctx.failures.record(&key);
    if err.is_conflict() && n < 10 {
        tracing::debug!(%err, deployment = %key, "stale cache; retrying");
        return Action::requeue(Duration::from_millis(100));
    }
    let delay = watch::backoff(Duration::from_millis(250), n, 8);
    tracing::warn!(%err, deployment = %key, retry_in = ?delay, "deployment sync failed");
    Action::requeue(delay)
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.replicasets
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheGone)?;
    let mut s = Sync::new(&ctx, (*d).clone());
    s.sync_deployment().await?;
    ctx.failures.clear(&key_of(&d));
    Ok(s.requeue.map_or_else(Action::await_change, Action::requeue))
}

/// The Deployment's ReplicaSets, with the new one (if any) marked.
struct RsSet {
    all: Vec<ReplicaSet>,
    new: Option<usize>,
}

impl RsSet {
    fn new_rs(&self) -> Option<&ReplicaSet> {
        self.new.map(|i| &self.all[i])
    }

    fn old_idx(&self) -> Vec<usize> {
        (0..self.all.len())
            .filter(|i| Some(*i) != self.new)
            .collect()
    }

    fn old(&self) -> Vec<&ReplicaSet> {
        self.old_idx().into_iter().map(|i| &self.all[i]).collect()
    }

    fn refs(&self) -> Vec<&ReplicaSet> {
        self.all.iter().collect()
    }

    /// Old ReplicaSets with replicas, in creation order.
    fn active_old_by_creation(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = self
            .old_idx()
            .into_iter()
            .filter(|i| rs_replicas(&self.all[*i]) > 0)
            .collect();
        idx.sort_by(|a, b| by_creation(&self.all[*a], &self.all[*b]));
        idx
    }
}

/// One sync of one Deployment: the working copy and what it found out.
struct Sync<'a> {
    ctx: &'a Ctx,
    d: Deployment,
    ns: String,
    name: String,
    requeue: Option<Duration>,
}

impl<'a> Sync<'a> {
    fn new(ctx: &'a Ctx, d: Deployment) -> Sync<'a> {
        let ns = d.namespace().unwrap_or_default();
        let name = d.name_any();
        Sync {
            ctx,
            d,
            ns,
            name,
            requeue: None,
        }
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    fn replicasets(&self) -> Api<ReplicaSet> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    fn requeue_after(&mut self, d: Duration) {
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }

    fn event(&self, kind: EventType, reason: &str, message: String) {
        self.ctx.recorder.event(&self.d, kind, reason, message);
    }

    /// Writes the working copy's status.
    async fn update_status(&mut self) -> Result<(), Error> {
        let mut d = self.d.clone();
        d.metadata.managed_fields = None;
        self.d = self
            .deployments()
            .replace_status(&self.name, &PostParams::default(), &d)
            .await?;
        Ok(())
    }

    /// Writes the working copy's revision annotation (guarded by its resourceVersion).
    async fn update_revision(&mut self) -> Result<(), Error> {
        let revision = self.d.annotations().get(REVISION).cloned();
        let patch = json!({"metadata": {
            "resourceVersion": self.d.resource_version(),
            "annotations": {REVISION: revision},
        }});
        let updated = self
            .deployments()
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        self.d.metadata = updated.metadata;
        Ok(())
    }

    async fn update_rs(&self, rs: &ReplicaSet) -> Result<ReplicaSet, Error> {
        let mut rs = rs.clone();
        rs.metadata.managed_fields = None;
        Ok(self
            .replicasets()
            .replace(&rs.name_any(), &PostParams::default(), &rs)
            .await?)
    }

    async fn sync_deployment(&mut self) -> Result<(), Error> {
        let sel = match selector(&self.d) {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(%err, deployment = %self.name, ns = %self.ns, "invalid selector");
                return Ok(());
            }
        };
        if sel.is_empty() {
            self.event(
                EventType::Warning,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.".into(),
            );
            let observed = self.d.status.as_ref().and_then(|s| s.observed_generation);
            if observed < self.d.metadata.generation {
                self.d
                    .status
                    .get_or_insert_with(Default::default)
                    .observed_generation = self.d.metadata.generation;
                self.update_status().await?;
            }
            return Ok(());
        }
        let rss = self.claim_replicasets(&sel).await?;
        if self.d.metadata.deletion_timestamp.is_some() {
            let set = self.all_replicasets(rss, false).await?;
            return self.sync_status(&set).await;
        }
        self.check_paused_conditions().await?;
        if paused(&self.d) {
            return self.scale_and_status(rss).await;
        }
        let set = self.all_replicasets(rss, false).await?;
        if self.is_scaling_event(&set) {
            return self.scale_and_status(set.all).await;
        }
        if is_recreate(&self.d) {
            self.rollout_recreate(set.all).await
        } else {
            self.rollout_rolling(set.all).await
        }
    }

    /// The ReplicaSets of the namespace the Deployment controls, after adopting matching
    /// orphans and releasing owned ones that stopped matching.
    async fn claim_replicasets(&mut self, sel: &LabelSelector) -> Result<Vec<ReplicaSet>, Error> {
        let uid = self.d.uid().unwrap_or_default();
        let deleting = self.d.metadata.deletion_timestamp.is_some();
        let candidates: Vec<Arc<ReplicaSet>> = self
            .ctx
            .replicasets
            .state()
            .into_iter()
            .filter(|rs| rs.namespace().as_deref() == Some(self.ns.as_str()))
            .collect();
        let api = self.replicasets();
        let mut owned = Vec::new();
        let mut can_adopt = None;
        for rs in candidates {
            let matches = sel.matches(Some(&labels_json(rs.labels())));
            let rs_uid = rs.uid().unwrap_or_default();
            match decide(&uid, deleting, matches, &rs.metadata) {
                Claim::Owned => owned.push((*rs).clone()),
                Claim::Ignore => {}
                Claim::Adopt => {
                    if can_adopt.is_none() {
                        let fresh = self.deployments().get_opt(&self.name).await?;
                        can_adopt = Some(fresh.is_some_and(|f| {
                            f.uid() == self.d.uid() && f.metadata.deletion_timestamp.is_none()
                        }));
                    }
                    if can_adopt != Some(true) {
                        continue;
                    }
                    match adopt(&api, &rs.name_any(), &rs_uid, &controller_ref(&self.d)).await {
                        Ok(rs) => {
                            tracing::info!(replicaset = %rs.name_any(), deployment = %self.name, ns = %self.ns, "adopted replica set");
                            owned.push(rs);
                        }
                        Err(err) if is_not_found(&err) => {}
                        Err(err) => return Err(err.into()),
                    }
                }
                Claim::Release => match release(&api, &rs.name_any(), &rs_uid, &uid).await {
                    Ok(_) => {
                        tracing::info!(replicaset = %rs.name_any(), deployment = %self.name, "released replica set")
                    }
                    Err(err) if is_not_found(&err) => {}
                    Err(err) => return Err(err.into()),
                },
            }
        }
        Ok(owned)
    }

    async fn check_paused_conditions(&mut self) -> Result<(), Error> {
        if !has_progress_deadline(&self.d) {
            return Ok(());
        }
        let status = self.d.status.clone().unwrap_or_default();
        let reason = condition(&status, PROGRESSING).and_then(|c| c.reason.clone());
        if reason.as_deref() == Some(TIMED_OUT) {
            return Ok(());
        }
        let paused_cond = reason.as_deref() == Some(PAUSED);
        let now = now_seconds(jiff::Timestamp::now());
        let cond = match (paused(&self.d), paused_cond) {
            (true, false) => new_condition(
                PROGRESSING,
                "Unknown",
                PAUSED,
                "Deployment is paused".into(),
                &now,
            ),
            (false, true) => new_condition(
                PROGRESSING,
                "Unknown",
                RESUMED,
                "Deployment is resumed".into(),
                &now,
            ),
            _ => return Ok(()),
        };
        set_condition(self.d.status.get_or_insert_with(Default::default), cond);
        self.update_status().await
    }

    /// Splits the ReplicaSets into the new one and the old ones, bringing the new one's
    /// revision and annotations (and the Deployment's revision) up to date, and creates
    /// the new one when `create` is set and there is none.
    async fn all_replicasets(
        &mut self,
        mut all: Vec<ReplicaSet>,
        create: bool,
    ) -> Result<RsSet, Error> {
        let new = find_new(&self.d, &all);
        let max_old = {
            let old: Vec<&ReplicaSet> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != new)
                .map(|(_, rs)| rs)
                .collect();
            max_revision(&old)
        };
        let new_revision = max_old + 1;
        if let Some(i) = new {
            let mut rs = all[i].clone();
            let annotations_changed = set_new_rs_annotations(&self.d, &mut rs, new_revision, true);
            let min_ready = min_ready_seconds(&self.d);
            let rs_min_ready = rs
                .spec
                .as_ref()
                .and_then(|s| s.min_ready_seconds)
                .unwrap_or(0);
            if annotations_changed || rs_min_ready != min_ready {
                if let Some(spec) = rs.spec.as_mut() {
                    spec.min_ready_seconds = Some(min_ready);
                }
                rs = self.update_rs(&rs).await?;
            }
            let revision = rs.annotations().get(REVISION).cloned().unwrap_or_default();
            all[i] = rs;
            let revision_changed = set_deployment_revision(&mut self.d, &revision);
            let mut status_changed = false;
            let deadline = has_progress_deadline(&self.d);
            let status = self.d.status.get_or_insert_with(Default::default);
            if deadline && condition(status, PROGRESSING).is_none() {
                let now = now_seconds(jiff::Timestamp::now());
                let msg = format!("Found new replica set {:?}", all[i].name_any());
                set_condition(
                    status,
                    new_condition(PROGRESSING, "True", FOUND_NEW_RS, msg, &now),
                );
                status_changed = true;
            }
            if revision_changed {
                self.update_revision().await?;
            }
            if status_changed {
                self.update_status().await?;
            }
            return Ok(RsSet { all, new: Some(i) });
        }
        if !create {
            return Ok(RsSet { all, new: None });
        }
        let created = self.create_new_replicaset(&all, new_revision).await?;
        all.push(created);
        let new = Some(all.len() - 1);
        Ok(RsSet { all, new })
    }

    async fn create_new_replicaset(
        &mut self,
        old: &[ReplicaSet],
        new_revision: i64,
    ) -> Result<ReplicaSet, Error> {
        let collision = self.d.status.as_ref().and_then(|s| s.collision_count);
        let mut tpl = template(&self.d);
        let hash = pod_template_hash(&tpl, collision);
        tpl.metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut sel: MetaSelector = self
            .d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        sel.match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let rs_name = format!("{}-{hash}", self.name);
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(rs_name.clone()),
                namespace: Some(self.ns.clone()),
                owner_references: Some(vec![controller_ref(&self.d)]),
                labels: tpl.metadata.as_ref().and_then(|m| m.labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: Some(min_ready_seconds(&self.d)),
                selector: sel,
                template: Some(tpl),
            }),
            status: None,
        };
        let all: Vec<&ReplicaSet> = old.iter().chain(std::iter::once(&rs)).collect();
        let new_replicas = new_rs_new_replicas(&self.d, &all, &rs).map_err(Error::Invalid)?;
        if let Some(spec) = rs.spec.as_mut() {
            spec.replicas = Some(new_replicas);
        }
        set_new_rs_annotations(&self.d, &mut rs, new_revision, false);
        let (created, already_exists) = match self
            .replicasets()
            .create(&PostParams::default(), &rs)
            .await
        {
            Ok(created) => (created, false),
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                // The cache may just lag behind our own creation; otherwise another
                // template took the name: raise the collision count and try again.
                let existing = self.replicasets().get_opt(&rs_name).await?;
                let ours = existing.as_ref().is_some_and(|e| {
                    controller_of(&e.metadata)
                        .is_some_and(|r| Some(&r.uid) == self.d.metadata.uid.as_ref())
                        && e.spec
                            .as_ref()
                            .and_then(|s| s.template.as_ref())
                            .is_some_and(|t| equal_ignore_hash(t, &template(&self.d)))
                });
                match existing {
                    Some(existing) if ours => (existing, true),
                    _ => {
                        let status = self.d.status.get_or_insert_with(Default::default);
                        status.collision_count =
                            Some(status.collision_count.unwrap_or(0).saturating_add(1));
                        self.update_status().await?;
                        return Err(Error::Collision(rs_name));
                    }
                }
            }
            Err(err) if namespace_terminating(&err) => return Err(err.into()),
            Err(err) => {
                let msg = format!(
                    "Failed to create new replica set {rs_name:?}: {}",
                    error_message(&err)
                );
                if has_progress_deadline(&self.d) {
                    let now = now_seconds(jiff::Timestamp::now());
                    set_condition(
                        self.d.status.get_or_insert_with(Default::default),
                        new_condition(PROGRESSING, "False", FAILED_RS_CREATE, msg.clone(), &now),
                    );
                    if let Err(e) = self.update_status().await {
                        tracing::debug!(err = %e, "recording the failed replica set creation");
                    }
                }
                self.event(EventType::Warning, FAILED_RS_CREATE, msg);
                return Err(err.into());
            }
        };
        if !already_exists {
            tracing::info!(replicaset = %rs_name, deployment = %self.name, ns = %self.ns, replicas = new_replicas, "created new replica set");
            if new_replicas > 0 {
                self.event(
                    EventType::Normal,
                    "ScalingReplicaSet",
                    format!("Scaled up replica set {rs_name} from 0 to {new_replicas}"),
                );
            }
        }
        let revision_changed = set_deployment_revision(&mut self.d, &new_revision.to_string());
        if revision_changed {
            self.update_revision().await?;
        }
        if !already_exists && has_progress_deadline(&self.d) {
            let now = now_seconds(jiff::Timestamp::now());
            let msg = format!("Created new replica set {rs_name:?}");
            set_condition(
                self.d.status.get_or_insert_with(Default::default),
                new_condition(PROGRESSING, "True", NEW_RS_CREATED, msg, &now),
            );
            self.update_status().await?;
        }
        Ok(created)
    }

    /// A resize of the Deployment that its active ReplicaSets have not seen yet.
    fn is_scaling_event(&self, set: &RsSet) -> bool {
        let desired = replicas(&self.d);
        set.all
            .iter()
            .filter(|rs| rs_replicas(rs) > 0)
            .filter_map(desired_replicas_annotation)
            .any(|a| a != desired)
    }

    /// Scales `rs` to `n`, recording the event; false when it already has that size.
    async fn scale_and_record(&self, rs: &mut ReplicaSet, n: i32) -> Result<bool, Error> {
        if rs_replicas(rs) == n {
            return Ok(false);
        }
        self.scale_replicaset(rs, n).await
    }

    /// Sets the size and replica annotations of `rs`; true when the size changed.
    async fn scale_replicaset(&self, rs: &mut ReplicaSet, n: i32) -> Result<bool, Error> {
        let desired = replicas(&self.d);
        let max = desired + max_surge(&self.d);
        let old = rs_replicas(rs);
        let resize = old != n;
        if !resize && !replicas_annotations_need_update(rs, desired, max) {
            return Ok(false);
        }
        let mut copy = rs.clone();
        if let Some(spec) = copy.spec.as_mut() {
            spec.replicas = Some(n);
        }
        set_replicas_annotations(&mut copy, desired, max);
        *rs = self.update_rs(&copy).await?;
        if resize {
            let op = if old < n { "up" } else { "down" };
            tracing::info!(replicaset = %rs.name_any(), deployment = %self.name, ns = %self.ns, from = old, to = n, "scaled replica set");
            self.event(
                EventType::Normal,
                "ScalingReplicaSet",
                format!(
                    "Scaled {op} replica set {} from {old} to {n}",
                    rs.name_any()
                ),
            );
        }
        Ok(resize)
    }

    /// Scaling without a rollout (a resize, or a paused Deployment), then status.
    async fn scale_and_status(&mut self, rss: Vec<ReplicaSet>) -> Result<(), Error> {
        let mut set = self.all_replicasets(rss, false).await?;
        self.scale(&mut set).await?;
        if paused(&self.d) {
            self.cleanup(&set).await?;
        }
        self.sync_status(&set).await
    }

    async fn scale(&self, set: &mut RsSet) -> Result<(), Error> {
        let desired = replicas(&self.d);
        if let Some(i) = find_active_or_latest(set) {
            self.scale_and_record(&mut set.all[i], desired).await?;
            return Ok(());
        }
        if set.new_rs().is_some_and(|rs| is_saturated(&self.d, rs)) {
            for i in set.active_old_by_creation() {
                self.scale_and_record(&mut set.all[i], 0).await?;
            }
            return Ok(());
        }
        if is_recreate(&self.d) {
            return Ok(());
        }
        let active: Vec<usize> = (0..set.all.len())
            .filter(|i| rs_replicas(&set.all[*i]) > 0)
            .collect();
        for (i, size) in proportional_sizes(&self.d, &set.all, &active) {
            self.scale_replicaset(&mut set.all[i], size).await?;
        }
        Ok(())
    }

    /// Deletes the oldest ReplicaSets without pods beyond `revisionHistoryLimit`.
    async fn cleanup(&self, set: &RsSet) -> Result<(), Error> {
        let Some(limit) = self.d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return Ok(());
        };
        let mut cleanable: Vec<&ReplicaSet> = set
            .old()
            .into_iter()
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        let excess = i64::try_from(cleanable.len()).unwrap_or(i64::MAX) - i64::from(limit);
        if excess <= 0 {
            return Ok(());
        }
        cleanable.sort_by(|a, b| by_revision(a, b));
        for rs in cleanable
            .into_iter()
            .take(usize::try_from(excess).unwrap_or(0))
        {
            let status = rs.status.clone().unwrap_or_default();
            if status.replicas != 0
                || rs_replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > status.observed_generation.unwrap_or(0)
            {
                continue;
            }
            tracing::info!(replicaset = %rs.name_any(), deployment = %self.name, ns = %self.ns, "deleting old replica set");
            match self
                .replicasets()
                .delete(&rs.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(err) if is_not_found(&err) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    async fn rollout_rolling(&mut self, rss: Vec<ReplicaSet>) -> Result<(), Error> {
        let mut set = self.all_replicasets(rss, true).await?;
        if self.reconcile_new_replicaset(&mut set).await?
            || self.reconcile_old_replicasets(&mut set).await?
        {
            return self.sync_rollout_status(&set).await;
        }
        let status = self.d.status.clone().unwrap_or_default();
        if deployment_complete(&self.d, &status) {
            self.cleanup(&set).await?;
        }
        self.sync_rollout_status(&set).await
    }

    async fn reconcile_new_replicaset(&self, set: &mut RsSet) -> Result<bool, Error> {
        let Some(i) = set.new else { return Ok(false) };
        let desired = replicas(&self.d);
        let current = rs_replicas(&set.all[i]);
        if current == desired {
            return Ok(false);
        }
        if current > desired {
            return self.scale_and_record(&mut set.all[i], desired).await;
        }
        let n = new_rs_new_replicas(&self.d, &set.refs(), &set.all[i]).map_err(Error::Invalid)?;
        self.scale_and_record(&mut set.all[i], n).await
    }

    async fn reconcile_old_replicasets(&self, set: &mut RsSet) -> Result<bool, Error> {
        let old_pods = replica_count(&set.old());
        if old_pods == 0 {
            return Ok(false);
        }
        let all_pods = replica_count(&set.refs());
        let min_available = replicas(&self.d) - max_unavailable(&self.d);
        let new_unavailable = set
            .new_rs()
            .map_or(0, |rs| rs_replicas(rs) - rs_available(rs));
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        // First the old pods that are not available anyway, then available ones as far as
        // availability allows.
        let cleaned = self
            .cleanup_unhealthy_replicas(set, max_scaled_down)
            .await?;
        let scaled = self.scale_down_old_replicasets(set).await?;
        Ok(cleaned + scaled > 0)
    }

    async fn cleanup_unhealthy_replicas(
        &self,
        set: &mut RsSet,
        max_cleanup: i32,
    ) -> Result<i32, Error> {
        let mut total = 0;
        for i in set.active_old_by_creation() {
            if total >= max_cleanup {
                break;
            }
            let rs = &mut set.all[i];
            let unhealthy = rs_replicas(rs) - rs_available(rs);
            if unhealthy <= 0 {
                continue;
            }
            let down = (max_cleanup - total).min(unhealthy);
            let n = rs_replicas(rs) - down;
            self.scale_and_record(rs, n).await?;
            total += down;
        }
        Ok(total)
    }

    async fn scale_down_old_replicasets(&self, set: &mut RsSet) -> Result<i32, Error> {
        let min_available = replicas(&self.d) - max_unavailable(&self.d);
        let available = available_count(&set.refs());
        if available <= min_available {
            return Ok(0);
        }
        let budget = available - min_available;
        let mut total = 0;
        for i in set.active_old_by_creation() {
            if total >= budget {
                break;
            }
            let rs = &mut set.all[i];
            let down = rs_replicas(rs).min(budget - total);
            let n = rs_replicas(rs) - down;
            self.scale_and_record(rs, n).await?;
            total += down;
        }
        Ok(total)
    }

    async fn rollout_recreate(&mut self, rss: Vec<ReplicaSet>) -> Result<(), Error> {
        let mut set = self.all_replicasets(rss, false).await?;
        let mut scaled_down = false;
        for i in set.active_old_by_creation() {
            scaled_down |= self.scale_and_record(&mut set.all[i], 0).await?;
        }
        if scaled_down {
            return self.sync_rollout_status(&set).await;
        }
        if self.old_pods_running(&set).await? {
            self.requeue_after(RECREATE_POLL);
            return self.sync_rollout_status(&set).await;
        }
        if set.new.is_none() {
            set = self.all_replicasets(set.all, true).await?;
        }
        if let Some(i) = set.new {
            let desired = replicas(&self.d);
            self.scale_and_record(&mut set.all[i], desired).await?;
        }
        let status = self.d.status.clone().unwrap_or_default();
        if deployment_complete(&self.d, &status) {
            self.cleanup(&set).await?;
        }
        self.sync_rollout_status(&set).await
    }

    /// Whether pods of old ReplicaSets still exist (even terminating) and have not
    /// finished.
    async fn old_pods_running(&self, set: &RsSet) -> Result<bool, Error> {
        let old = set.old();
        if actual_count(&old) > 0 {
            return Ok(true);
        }
        let old_uids: HashSet<String> = old.iter().filter_map(|rs| rs.uid()).collect();
        if old_uids.is_empty() {
            return Ok(false);
        }
        let sel = selector(&self.d).map_err(Error::Invalid)?;
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let list = pods
            .list(&ListParams::default().labels(&sel.to_string()))
            .await?;
        Ok(list.items.iter().any(|p| {
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("");
            controller_of(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid))
                && phase != "Succeeded"
                && phase != "Failed"
        }))
    }

    /// Writes the status the ReplicaSets imply, if it changed.
    async fn sync_status(&mut self, set: &RsSet) -> Result<(), Error> {
        let now = now_seconds(jiff::Timestamp::now());
        let status = calculate_status(&self.d, &set.refs(), set.new_rs(), &now);
        if same_status(self.d.status.as_ref(), &status) {
            return Ok(());
        }
        self.d.status = Some(status);
        self.update_status().await
    }

    /// Status plus the Progressing condition (progress, completion, deadline) and
    /// ReplicaFailure; requeues for the deadline of a rollout that stopped moving.
    async fn sync_rollout_status(&mut self, set: &RsSet) -> Result<(), Error> {
        let now_ts = jiff::Timestamp::now();
        let now = now_seconds(now_ts);
        let new_rs = set.new_rs();
        let mut status = calculate_status(&self.d, &set.refs(), new_rs, &now);
        if !has_progress_deadline(&self.d) {
            remove_condition(&mut status, PROGRESSING);
        }
        let current = condition(&status, PROGRESSING).cloned();
        let complete = status.replicas == status.updated_replicas
            && current
                .as_ref()
                .is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
        if has_progress_deadline(&self.d) && !complete {
            let subject = match new_rs {
                Some(rs) => format!("ReplicaSet {:?}", rs.name_any()),
                None => format!("Deployment {:?}", self.name),
            };
            if deployment_complete(&self.d, &status) {
                let msg = format!("{subject} has successfully progressed.");
                set_condition(
                    &mut status,
                    new_condition(PROGRESSING, "True", NEW_RS_AVAILABLE, msg, &now),
                );
            } else if deployment_progressing(&self.d, &status) {
                let msg = format!("{subject} is progressing.");
                let mut cond = new_condition(PROGRESSING, "True", RS_UPDATED, msg, &now);
                // Progress refreshes the update time (the deadline counts from it).
                if let Some(cur) = &current
                    && cur.status == "True"
                {
                    cond.last_transition_time = cur.last_transition_time.clone();
                }
                remove_condition(&mut status, PROGRESSING);
                set_condition(&mut status, cond);
            } else if deployment_timed_out(&self.d, &status, now_ts) {
                let msg = format!("{subject} has timed out progressing.");
                set_condition(
                    &mut status,
                    new_condition(PROGRESSING, "False", TIMED_OUT, msg, &now),
                );
            }
        }
        let old = set.old();
        match replica_failure(new_rs, &old) {
            Some(cond) => set_condition(&mut status, cond),
            None => remove_condition(&mut status, "ReplicaFailure"),
        }
        if same_status(self.d.status.as_ref(), &status) {
            if let Some(after) = self.stuck_requeue(&status, now_ts) {
                self.requeue_after(after);
            }
            return Ok(());
        }
        self.d.status = Some(status);
        self.update_status().await
    }

    /// When to look again at a rollout that is not progressing, to notice its deadline.
    fn stuck_requeue(
        &self,
        status: &k8s_openapi::api::apps::v1::DeploymentStatus,
        now: jiff::Timestamp,
    ) -> Option<Duration> {
        let cond = condition(status, PROGRESSING)?;
        if !has_progress_deadline(&self.d)
            || deployment_complete(&self.d, status)
            || cond.reason.as_deref() == Some(TIMED_OUT)
        {
            return None;
        }
        let deadline = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds)
            .unwrap_or(0);
        let from: &Time = cond.last_update_time.as_ref()?;
        let due = from
            .0
            .checked_add(jiff::SignedDuration::from_secs(i64::from(deadline)))
            .ok()?;
        let after = due.duration_since(now);
        if after < jiff::SignedDuration::from_secs(1) {
            return Some(Duration::from_secs(1));
        }
        Some(after.unsigned_abs() + Duration::from_millis(100))
    }
}

/// The only active ReplicaSet, or with none active the new one (else the newest old
/// one); `None` when several are active.
fn find_active_or_latest(set: &RsSet) -> Option<usize> {
    if set.all.is_empty() {
        return None;
    }
    let active: Vec<usize> = (0..set.all.len())
        .filter(|i| rs_replicas(&set.all[*i]) > 0)
        .collect();
    match active.len() {
        0 => set.new.or_else(|| {
            let mut old = set.old_idx();
            old.sort_by(|a, b| by_creation(&set.all[*b], &set.all[*a]));
            old.first().copied()
        }),
        1 => Some(active[0]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(name: &str, replicas: i32, created: &str) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"replicas": replicas, "selector": {}},
        }))
        .unwrap()
    }

    #[test]
    fn active_or_latest() {
        let set = |all: Vec<ReplicaSet>, new: Option<usize>| RsSet { all, new };
        // (replica sets, new index) → chosen index
        let cases = [
            (set(vec![], None), None),
            (
                set(
                    vec![
                        rs("a", 0, "2025-01-01T00:00:00Z"),
                        rs("b", 0, "2025-01-02T00:00:00Z"),
                    ],
                    None,
                ),
                Some(1),
            ),
            (
                set(
                    vec![
                        rs("a", 0, "2025-01-01T00:00:00Z"),
                        rs("b", 0, "2025-01-02T00:00:00Z"),
                    ],
                    Some(0),
                ),
                Some(0),
            ),
            (
                set(
                    vec![
                        rs("a", 2, "2025-01-01T00:00:00Z"),
                        rs("b", 0, "2025-01-02T00:00:00Z"),
                    ],
                    Some(1),
                ),
                Some(0),
            ),
            (
                set(
                    vec![
                        rs("a", 2, "2025-01-01T00:00:00Z"),
                        rs("b", 1, "2025-01-02T00:00:00Z"),
                    ],
                    Some(1),
                ),
                None,
            ),
        ];
        for (i, (s, want)) in cases.into_iter().enumerate() {
            assert_eq!(find_active_or_latest(&s), want, "case {i}");
        }
    }
}
