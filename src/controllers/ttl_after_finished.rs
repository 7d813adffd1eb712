//! The TTL-after-finished controller (upstream's `pkg/controller/ttlafterfinished`):
//! a Job with `spec.ttlSecondsAfterFinished` is deleted that many seconds after it
//! finished (the transition time of its `Complete` or `Failed` condition). The deletion
//! is foreground, with the Job's uid as a precondition, after a fresh read confirms the
//! Job is still finished and expired, so its pods go first and a Job recreated under the
//! same name is never hit. Jobs not yet expired are requeued for the moment they are.
//!
//! Depends on kube-rs. Never the store or the API server.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::{self, Action, trigger_self};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::replicaset::is_not_found;
use super::watch::{self, Failures};

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

struct Ctx {
    client: Client,
    failures: Failures,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let (store, events) = watch::reflect_all::<Job>(&client, watcher::Config::default());
    let ctx = Arc::new(Ctx {
        client,
        failures: Failures::default(),
    });
    watch::run_applier(
        "ttl-after-finished",
        reconcile,
        |job: Arc<Job>, err: &Error, ctx: Arc<Ctx>| {
            let key = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
            let delay = watch::backoff(Duration::from_millis(500), ctx.failures.record(&key), 7);
            tracing::warn!(%err, job = %key, retry_in = ?delay, "ttl-after-finished");
            Action::requeue(delay)
        },
        ctx,
        store,
        trigger_self(events.applied_objects(), ()),
        controller::Config::default(),
        shutdown,
    )
    .await;
}

/// When the Job finished (its `Complete`/`Failed` condition's transition time).
fn finish_time(job: &Job) -> Option<Timestamp> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
        })
}

/// How long until the Job expires: `None` if it never does (no TTL, not finished, being
/// deleted), zero once it has.
fn time_left(job: &Job, now: Timestamp) -> Option<Duration> {
    if job.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let finished = finish_time(job)?;
    let expire_at = finished + SignedDuration::from_secs(i64::from(ttl));
    if expire_at <= now {
        return Some(Duration::ZERO);
    }
    Some(expire_at.duration_since(now).unsigned_abs())
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
    let action = process(&job, &ctx).await?;
    ctx.failures.clear(&key);
    Ok(action)
}

async fn process(job: &Job, ctx: &Ctx) -> Result<Action, Error> {
    match time_left(job, Timestamp::now()) {
        None => return Ok(Action::await_change()),
        Some(left) if !left.is_zero() => return Ok(Action::requeue(left)),
        Some(_) => {}
    }
    // The cache may be stale (a TTL just raised, a Job recreated): check a fresh copy.
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let Some(fresh) = api.get_opt(&job.name_any()).await? else {
        return Ok(Action::await_change());
    };
    match time_left(&fresh, Timestamp::now()) {
        None => return Ok(Action::await_change()),
        Some(left) if !left.is_zero() => return Ok(Action::requeue(left)),
        Some(_) => {}
    }
    tracing::info!(job = %fresh.name_any(), ns = %fresh.namespace().unwrap_or_default(), "deleting a finished job past its TTL");
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        preconditions: Some(Preconditions {
            uid: fresh.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&fresh.name_any(), &dp).await {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if is_not_found(&e) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.is_conflict() => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expiry() {
        let now: Timestamp = "2025-01-01T00:01:00Z".parse().unwrap();
        let job = |ttl: Option<i32>, cond: Option<(&str, &str)>, deleting: bool| -> Job {
            let conditions: Vec<_> = cond
                .map(|(t, at)| json!({"type": t, "status": "True", "lastTransitionTime": at}))
                .into_iter()
                .collect();
            let mut meta = json!({"name": "j", "namespace": "ns"});
            if deleting {
                meta["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
            }
            serde_json::from_value(json!({"metadata": meta,
                "spec": {"ttlSecondsAfterFinished": ttl, "template": {}},
                "status": {"conditions": conditions}}))
            .unwrap()
        };
        let cases = [
            (
                None,
                Some(("Complete", "2025-01-01T00:00:00Z")),
                false,
                None,
            ),
            (Some(100), None, false, None),
            (
                Some(100),
                Some(("Complete", "2025-01-01T00:00:30Z")),
                false,
                Some(70),
            ),
            (
                Some(0),
                Some(("Failed", "2025-01-01T00:00:59Z")),
                false,
                Some(0),
            ),
            (
                Some(30),
                Some(("Complete", "2025-01-01T00:00:00Z")),
                false,
                Some(0),
            ),
            (
                Some(30),
                Some(("Complete", "2025-01-01T00:00:00Z")),
                true,
                None,
            ),
            (
                Some(30),
                Some(("Suspended", "2025-01-01T00:00:00Z")),
                false,
                None,
            ),
        ];
        for (ttl, cond, deleting, want) in cases {
            assert_eq!(
                time_left(&job(ttl, cond, deleting), now),
                want.map(Duration::from_secs),
                "{ttl:?} {cond:?} {deleting}"
            );
        }
    }
}
