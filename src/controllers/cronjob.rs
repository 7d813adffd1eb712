//! The CronJob controller, with the semantics of upstream's `pkg/controller/cronjob`
//! (controller v2): for each CronJob it
//!
//! - **tracks its Jobs** (those whose controller reference is the CronJob): finished
//!   ones leave `status.active` (`SawCompletedJob`), vanished ones too (`MissingJob`),
//!   unfinished ones it did not list are reported (`UnexpectedJob`, e.g. `kubectl create
//!   job --from=cronjob/x`), and `status.lastSuccessfulTime` follows the newest
//!   completion;
//! - **schedules**: unless suspended, it finds the most recent unmet schedule time since
//!   `status.lastScheduleTime` (or creation), bounded by `startingDeadlineSeconds`
//!   (`MissSchedule` when that is past, `TooManyMissedTimes` beyond 100 misses), honours
//!   `concurrencyPolicy` (`Forbid`: `JobAlreadyActive`; `Replace`: deletes the running
//!   Jobs) and creates the Job `<cronjob>-<minutes since the epoch>` from the job
//!   template with the `batch.kubernetes.io/cronjob-scheduled-timestamp` annotation;
//! - **prunes history**: finished Jobs beyond `successfulJobsHistoryLimit` /
//!   `failedJobsHistoryLimit`, oldest start time first;
//! - **requeues** itself 100 ms after the next schedule time.
//!
//! Schedules ([`schedule`]) are evaluated in `spec.timeZone` (`UnknownTimeZone` when the
//! zone is not in the system's tz database), in a `CRON_TZ=` prefix, or in the server's
//! local time zone, as upstream's controller-manager does.
//!
//! Depends on kube-rs and the shared controller helpers (events, ownership). Never the
//! store or the API server.

pub(crate) mod schedule;

use std::sync::Arc;
use std::time::Duration;

use futures::stream;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{self, Action, trigger_self, trigger_with};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use self::schedule::{Schedule, load_time_zone};
use super::replicaset::events::{EventType, Recorder};
use super::replicaset::ownership::controller_ref;
use super::replicaset::pods::controller_of;
use super::replicaset::{error_message, is_not_found, namespace_terminating};
use super::watch::{self, Failures};

/// Annotation with the scheduled time of a Job the controller created.
pub(crate) const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Slack after a schedule time before the controller looks again.
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);
/// More missed start times than this are reported as `TooManyMissedTimes`.
const MANY_MISSED: i64 = 100;
const COMPONENT: &str = "cronjob-controller";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the job cache is not available")]
    CacheGone,
    #[error("could not replace job {0}")]
    Replace(String),
}

struct Ctx {
    client: Client,
    jobs: Store<Job>,
    recorder: Recorder,
    failures: Failures,
}

/// Runs the CronJob controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let (cj_store, cj_events) = watch::reflect_all::<CronJob>(&client, watcher::Config::default());
    let (job_store, job_events) = watch::reflect_all::<Job>(&client, watcher::Config::default());
    let queue = stream::select(
        trigger_self(cj_events.applied_objects(), ()),
        trigger_with(job_events.touched_objects(), |job: Job| {
            owning_cronjob(&job)
        }),
    );
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), COMPONENT),
        client,
        jobs: job_store,
        failures: Failures::default(),
    });
    watch::run_applier(
        "cronjob",
        reconcile,
        error_policy,
        ctx,
        cj_store,
        queue,
        controller::Config::default(),
        shutdown,
    )
    .await;
}

/// The CronJob controlling a Job, if any.
fn owning_cronjob(job: &Job) -> Option<ObjectRef<CronJob>> {
    let r = controller_of(&job.metadata)?;
    (r.kind == "CronJob" && r.api_version == "batch/v1")
        .then(|| ObjectRef::new(&r.name).within(&job.namespace().unwrap_or_default()))
}

fn error_policy(cj: Arc<CronJob>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let key = format!("{}/{}", cj.namespace().unwrap_or_default(), cj.name_any());
    let n = ctx.failures.record(&key);
    let delay = watch::backoff(Duration::from_millis(250), n, 8);
    tracing::warn!(%err, cronjob = %key, retry_in = ?delay, "cronjob sync failed");
    Action::requeue(delay)
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.jobs
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheGone)?;
    let action = sync(&cj, &ctx, Timestamp::now()).await?;
    let key = format!("{}/{}", cj.namespace().unwrap_or_default(), cj.name_any());
    ctx.failures.clear(&key);
    Ok(action)
}

// ---------------------------------------------------------------------------------------
// Job facts.

/// The finished condition of a Job (`Complete` or `Failed` with status True).
pub(crate) fn finished_condition(job: &Job) -> Option<&str> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

fn seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

// ---------------------------------------------------------------------------------------
// Scheduling decisions (pure, with an injected clock).

/// Upstream's `mostRecentScheduleTime`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MostRecent {
    earliest: Timestamp,
    most_recent: Option<Timestamp>,
    missed: i64,
}

fn most_recent_schedule_time(
    cj: &CronJob,
    now: Timestamp,
    sched: &Schedule,
    with_deadline: bool,
) -> Result<MostRecent, String> {
    let spec = cj.spec.as_ref();
    let mut earliest = cj
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .or(cj.metadata.creation_timestamp.as_ref())
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
    if with_deadline && let Some(d) = spec.and_then(|s| s.starting_deadline_seconds) {
        let deadline = now - SignedDuration::from_secs(d);
        if deadline > earliest {
            earliest = deadline;
        }
    }
    let none = |missed| MostRecent {
        earliest,
        most_recent: None,
        missed,
    };
    let Some(t1) = sched.next(earliest) else {
        return Ok(none(0));
    };
    if now < t1 {
        return Ok(none(0));
    }
    let Some(t2) = sched.next(t1) else {
        return Ok(MostRecent {
            earliest,
            most_recent: Some(t1),
            missed: 1,
        });
    };
    if now < t2 {
        return Ok(MostRecent {
            earliest,
            most_recent: Some(t1),
            missed: 1,
        });
    }
    let between = (t2 - t1).get_seconds();
    if between < 1 {
        return Err("time difference between two schedules is less than 1 second".into());
    }
    let elapsed = (now - t1).get_seconds();
    let missed = elapsed / between + 1;
    // Step back one interval past the estimate and let the schedule find the exact times
    // (schedules need not be regular).
    let potential = t1 + SignedDuration::from_secs((missed - 2).saturating_mul(between));
    let mut most_recent = None;
    let mut t = sched.next(potential);
    while let Some(at) = t.filter(|at| *at <= now) {
        most_recent = Some(at);
        t = sched.next(at);
    }
    Ok(MostRecent {
        earliest,
        most_recent,
        missed,
    })
}

/// How long until the next schedule time (plus a little slack), as upstream's
/// `nextScheduleTimeDuration`.
fn next_schedule_delay(cj: &CronJob, now: Timestamp, sched: &Schedule) -> Option<Duration> {
    let mr = most_recent_schedule_time(cj, now, sched, false).ok()?;
    let base = mr.most_recent.unwrap_or(mr.earliest);
    let next = sched.next(base)?;
    let wait = next.duration_since(now);
    Some(wait.unsigned_abs().saturating_add(NEXT_SCHEDULE_DELTA))
}

/// What the schedule asks for now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    /// No unmet schedule time.
    Wait,
    /// The most recent unmet time is past `startingDeadlineSeconds`.
    MissedDeadline(Timestamp),
    /// This time was already handled (its Job is active or it is the last schedule).
    AlreadyHandled,
    /// `Forbid` and a Job is still running.
    Forbidden,
    /// Start a Job for this time (after deleting the running ones if `replace`).
    Start {
        scheduled: Timestamp,
        replace: bool,
        too_many_missed: bool,
    },
}

/// The Job name for a schedule time: `<cronjob>-<minutes since the epoch>`.
pub(crate) fn job_name(cj_name: &str, scheduled: Timestamp) -> String {
    format!("{cj_name}-{}", scheduled.as_second().div_euclid(60))
}

fn decide(cj: &CronJob, now: Timestamp, sched: &Schedule) -> Result<Decision, String> {
    let mr = most_recent_schedule_time(cj, now, sched, true)?;
    let Some(scheduled) = mr.most_recent.filter(|t| *t <= now) else {
        return Ok(Decision::Wait);
    };
    let spec = cj.spec.as_ref();
    let status = cj.status.as_ref();
    if let Some(d) = spec.and_then(|s| s.starting_deadline_seconds)
        && scheduled + SignedDuration::from_secs(d) < now
    {
        return Ok(Decision::MissedDeadline(scheduled));
    }
    let name = job_name(&cj.name_any(), scheduled);
    let active = status.and_then(|s| s.active.as_ref());
    let in_active = active.is_some_and(|a| a.iter().any(|r| r.name.as_deref() == Some(&name)));
    let last = status
        .and_then(|s| s.last_schedule_time.as_ref())
        .map(|t| t.0);
    if in_active || last == Some(seconds(scheduled)) {
        return Ok(Decision::AlreadyHandled);
    }
    let policy = spec
        .and_then(|s| s.concurrency_policy.as_deref())
        .unwrap_or("Allow");
    let running = active.is_some_and(|a| !a.is_empty());
    if policy == "Forbid" && running {
        return Ok(Decision::Forbidden);
    }
    Ok(Decision::Start {
        scheduled,
        replace: policy == "Replace" && running,
        too_many_missed: mr.missed > MANY_MISSED,
    })
}

/// The Job the template stamps out for `scheduled`.
fn job_from_template(cj: &CronJob, scheduled: Timestamp, tz: &TimeZone) -> Job {
    let template = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    let at = scheduled.to_zoned(tz.clone());
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        at.strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
            .replace("+00:00", "Z"),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&cj.name_any(), scheduled)),
            namespace: cj.namespace(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(cj)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Finished Jobs beyond the history limits, oldest start first (upstream's
/// `byJobStartTime`: Jobs without a start time go last, ties by name).
fn jobs_to_prune<'a>(cj: &CronJob, jobs: &[&'a Job]) -> Vec<&'a Job> {
    let spec = cj.spec.as_ref();
    let limits = [
        (
            "Complete",
            spec.and_then(|s| s.successful_jobs_history_limit),
        ),
        ("Failed", spec.and_then(|s| s.failed_jobs_history_limit)),
    ];
    let mut out = Vec::new();
    for (kind, limit) in limits {
        let Some(limit) = limit else { continue };
        let mut finished: Vec<&Job> = jobs
            .iter()
            .copied()
            .filter(|j| finished_condition(j) == Some(kind))
            .collect();
        let excess = finished
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        if excess == 0 {
            continue;
        }
        let start = |j: &Job| {
            j.status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0)
        };
        finished.sort_by(|a, b| match (start(a), start(b)) {
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(_), None) => std::cmp::Ordering::Less,
            (x, y) if x == y => a.name_any().cmp(&b.name_any()),
            (x, y) => x.cmp(&y),
        });
        out.extend(finished.into_iter().take(excess));
    }
    out
}

// ---------------------------------------------------------------------------------------
// The sync.

async fn sync(cj: &CronJob, ctx: &Ctx, now: Timestamp) -> Result<Action, Error> {
    let ns = cj.namespace().unwrap_or_default();
    let uid = cj.uid().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let all_jobs = ctx.jobs.state();
    let children: Vec<&Job> = all_jobs
        .iter()
        .map(|j| &**j)
        .filter(|j| j.namespace().as_deref() == Some(ns.as_str()))
        .filter(|j| controller_of(&j.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let mut status = cj.status.clone().unwrap_or_default();

    // 1. Reconcile the active list with the Jobs.
    let mut active = status.active.take().unwrap_or_default();
    for job in &children {
        let juid = job.uid();
        let listed = active.iter().any(|r| r.uid == juid);
        match finished_condition(job) {
            None if !listed => ctx.recorder.event(
                cj,
                EventType::Warning,
                "UnexpectedJob",
                format!(
                    "Saw a job that the controller did not create or forgot: {}",
                    job.name_any()
                ),
            ),
            Some(cond) if listed => {
                active.retain(|r| r.uid != juid);
                ctx.recorder.event(
                    cj,
                    EventType::Normal,
                    "SawCompletedJob",
                    format!("Saw completed job: {}, condition: {cond}", job.name_any()),
                );
            }
            _ => {}
        }
        if finished_condition(job) == Some("Complete")
            && let Some(done) = job.status.as_ref().and_then(|s| s.completion_time.as_ref())
            && status
                .last_successful_time
                .as_ref()
                .is_none_or(|t| t.0 < done.0)
        {
            status.last_successful_time = Some(done.clone());
        }
    }
    // Listed Jobs the cache does not show: confirm with the API server.
    let mut kept = Vec::with_capacity(active.len());
    for r in active {
        if children.iter().any(|j| j.uid() == r.uid) {
            kept.push(r);
            continue;
        }
        let name = r.name.clone().unwrap_or_default();
        match jobs_api.get_opt(&name).await? {
            Some(j) if j.uid() == r.uid && finished_condition(&j).is_none() => kept.push(r),
            Some(j) if j.uid() == r.uid => {}
            _ => ctx.recorder.event(
                cj,
                EventType::Normal,
                "MissingJob",
                format!("Active job went missing: {name}"),
            ),
        }
    }
    status.active = Some(kept);

    let mut working = cj.clone();
    working.status = Some(status);
    let (requeue, result) = if cj.metadata.deletion_timestamp.is_some() {
        (None, Ok(()))
    } else {
        schedule_sync(&mut working, ctx, &jobs_api, now).await
    };

    // 3. History limits.
    if cj.metadata.deletion_timestamp.is_none() {
        let doomed: Vec<Job> = jobs_to_prune(&working, &children)
            .into_iter()
            .cloned()
            .collect();
        for job in doomed {
            delete_job(&working, &job, &jobs_api, ctx).await;
            if let Some(a) = working.status.as_mut().and_then(|s| s.active.as_mut()) {
                a.retain(|r| r.uid != job.uid());
            }
        }
    }

    update_status(cj, &working, ctx).await?;
    result?;
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Deletes a Job of the CronJob in the background, recording the outcome.
async fn delete_job(cj: &CronJob, job: &Job, api: &Api<Job>, ctx: &Ctx) -> bool {
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match api.delete(&job.name_any(), &dp).await {
        Ok(_) => {
            ctx.recorder.event(
                cj,
                EventType::Normal,
                "SuccessfulDelete",
                format!("Deleted job {}", job.name_any()),
            );
            true
        }
        Err(e) if is_not_found(&e) => true,
        Err(e) => {
            ctx.recorder.event(
                cj,
                EventType::Warning,
                "FailedDelete",
                format!("Deleted job: {}", error_message(&e)),
            );
            false
        }
    }
}

/// The scheduling half of the sync: may create (and, for `Replace`, delete) Jobs and
/// update `working.status`. Returns when to look again.
async fn schedule_sync(
    working: &mut CronJob,
    ctx: &Ctx,
    jobs_api: &Api<Job>,
    now: Timestamp,
) -> (Option<Duration>, Result<(), Error>) {
    let spec = working.spec.clone().unwrap_or_default();
    let tz = match spec.time_zone.as_deref() {
        Some(name) => match load_time_zone(name) {
            Ok(tz) => tz,
            Err(e) => {
                ctx.recorder.event(
                    &*working,
                    EventType::Warning,
                    "UnknownTimeZone",
                    format!("invalid timeZone: {name:?}: {e}"),
                );
                return (None, Ok(()));
            }
        },
        None => TimeZone::system(),
    };
    if spec.suspend == Some(true) {
        return (None, Ok(()));
    }
    if spec.schedule.contains("TZ") {
        ctx.recorder.event(
            &*working,
            EventType::Warning,
            "UnsupportedSchedule",
            format!(
                "CRON_TZ or TZ used in schedule {:?} is not officially supported, see https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/ for more details",
                spec.schedule
            ),
        );
    }
    let sched = match Schedule::parse(&spec.schedule, tz.clone()) {
        Ok(s) => s,
        Err(e) => {
            ctx.recorder.event(
                &*working,
                EventType::Warning,
                "UnparseableSchedule",
                format!("unparseable schedule: {:?} : {e}", spec.schedule),
            );
            return (None, Ok(()));
        }
    };
    let decision = match decide(working, now, &sched) {
        Ok(d) => d,
        Err(e) => {
            tracing::info!(cronjob = %working.name_any(), err = %e, "invalid schedule");
            return (None, Ok(()));
        }
    };
    let (scheduled, replace) = match decision {
        Decision::Wait | Decision::AlreadyHandled => {
            return (next_schedule_delay(working, now, &sched), Ok(()));
        }
        Decision::MissedDeadline(at) => {
            ctx.recorder.event(
                &*working,
                EventType::Warning,
                "MissSchedule",
                format!(
                    "Missed scheduled time to start a job: {}",
                    at.strftime("%a, %d %b %Y %H:%M:%S +0000")
                ),
            );
            return (next_schedule_delay(working, now, &sched), Ok(()));
        }
        Decision::Forbidden => {
            ctx.recorder.event(
                &*working,
                EventType::Normal,
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
            );
            return (next_schedule_delay(working, now, &sched), Ok(()));
        }
        Decision::Start {
            scheduled,
            replace,
            too_many_missed,
        } => {
            if too_many_missed {
                ctx.recorder.event(
                    &*working,
                    EventType::Warning,
                    "TooManyMissedTimes",
                    "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
                );
            }
            (scheduled, replace)
        }
    };
    if replace {
        let running: Vec<ObjectReference> = working
            .status
            .as_ref()
            .and_then(|s| s.active.clone())
            .unwrap_or_default();
        for r in running {
            let name = r.name.clone().unwrap_or_default();
            let job = match jobs_api.get_opt(&name).await {
                Ok(Some(j)) => j,
                Ok(None) => {
                    remove_active(working, r.uid.as_deref());
                    continue;
                }
                Err(e) => return (None, Err(e.into())),
            };
            if !delete_job(working, &job, jobs_api, ctx).await {
                return (
                    None,
                    Err(Error::Replace(format!(
                        "{}/{name}",
                        job.namespace().unwrap_or_default()
                    ))),
                );
            }
            remove_active(working, r.uid.as_deref());
        }
    }
    let job = job_from_template(working, scheduled, &tz);
    match jobs_api.create(&PostParams::default(), &job).await {
        Ok(created) => {
            ctx.recorder.event(
                &*working,
                EventType::Normal,
                "SuccessfulCreate",
                format!("Created job {}", created.name_any()),
            );
            let status = working.status.get_or_insert_with(CronJobStatus::default);
            status
                .active
                .get_or_insert_with(Vec::new)
                .push(job_ref(&created));
            status.last_schedule_time = Some(Time(seconds(scheduled)));
            tracing::info!(cronjob = %working.name_any(), job = %created.name_any(), "created job");
            (next_schedule_delay(working, now, &sched), Ok(()))
        }
        Err(e) if namespace_terminating(&e) => (None, Ok(())),
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            tracing::info!(cronjob = %working.name_any(), job = %job.name_any(), "job already exists");
            (next_schedule_delay(working, now, &sched), Ok(()))
        }
        Err(e) => {
            ctx.recorder.event(
                &*working,
                EventType::Warning,
                "FailedCreate",
                format!("Error creating job: {}", error_message(&e)),
            );
            (None, Err(e.into()))
        }
    }
}

fn remove_active(cj: &mut CronJob, uid: Option<&str>) {
    if let Some(a) = cj.status.as_mut().and_then(|s| s.active.as_mut()) {
        a.retain(|r| r.uid.as_deref() != uid);
    }
}

/// Writes `working`'s status if it differs from `original`'s.
async fn update_status(original: &CronJob, working: &CronJob, ctx: &Ctx) -> Result<(), Error> {
    let normalize = |s: Option<CronJobStatus>| {
        let mut s = s.unwrap_or_default();
        if s.active.as_ref().is_some_and(Vec::is_empty) {
            s.active = None;
        }
        s
    };
    let new = normalize(working.status.clone());
    if normalize(original.status.clone()) == new {
        return Ok(());
    }
    let api: Api<CronJob> = Api::namespaced(
        ctx.client.clone(),
        &original.namespace().unwrap_or_default(),
    );
    let mut obj = original.clone();
    obj.status = Some(new);
    obj.meta_mut().managed_fields = None;
    match api
        .replace_status(&obj.name_any(), &PostParams::default(), &obj)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cronjob(spec: serde_json::Value, status: serde_json::Value) -> CronJob {
        let mut spec = spec;
        spec["jobTemplate"] = json!({"metadata": {"labels": {"app": "x"}},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}});
        serde_json::from_value(json!({
            "metadata": {"name": "cj", "namespace": "ns", "uid": "cj-uid",
                         "creationTimestamp": "2025-01-01T00:00:30Z"},
            "spec": spec,
            "status": status,
        }))
        .unwrap()
    }

    fn utc(spec: &str) -> Schedule {
        Schedule::parse(spec, TimeZone::UTC).unwrap()
    }

    #[test]
    fn scheduling_decisions() {
        let every_minute = utc("* * * * *");
        let start = |at: &str, replace: bool| Decision::Start {
            scheduled: ts(at),
            replace,
            too_many_missed: false,
        };
        // (what, spec, status, now, expected)
        let cases = [
            (
                "before the first time",
                json!({"schedule": "* * * * *"}),
                json!({}),
                "2025-01-01T00:00:59Z",
                Decision::Wait,
            ),
            (
                "first time due",
                json!({"schedule": "* * * * *"}),
                json!({}),
                "2025-01-01T00:01:05Z",
                start("2025-01-01T00:01:00Z", false),
            ),
            (
                "several missed: the most recent one",
                json!({"schedule": "* * * * *"}),
                json!({"lastScheduleTime": "2025-01-01T00:01:00Z"}),
                "2025-01-01T00:05:30Z",
                start("2025-01-01T00:05:00Z", false),
            ),
            (
                "already scheduled",
                json!({"schedule": "* * * * *"}),
                json!({"lastScheduleTime": "2025-01-01T00:05:00Z"}),
                "2025-01-01T00:05:30Z",
                Decision::Wait,
            ),
            (
                "its job is active",
                json!({"schedule": "* * * * *"}),
                json!({"active": [{"name": format!("cj-{}", ts("2025-01-01T00:01:00Z").as_second() / 60)}]}),
                "2025-01-01T00:01:10Z",
                Decision::AlreadyHandled,
            ),
            (
                "starting deadline passed",
                json!({"schedule": "0 * * * *", "startingDeadlineSeconds": 10}),
                json!({"lastScheduleTime": "2025-01-01T00:00:00Z"}),
                "2025-01-01T01:00:30Z",
                Decision::Wait,
            ),
            (
                "starting deadline not yet passed",
                json!({"schedule": "0 * * * *", "startingDeadlineSeconds": 60}),
                json!({"lastScheduleTime": "2025-01-01T00:00:00Z"}),
                "2025-01-01T01:00:30Z",
                start("2025-01-01T01:00:00Z", false),
            ),
            (
                "forbid with a running job",
                json!({"schedule": "* * * * *", "concurrencyPolicy": "Forbid"}),
                json!({"active": [{"name": "cj-1"}]}),
                "2025-01-01T00:01:10Z",
                Decision::Forbidden,
            ),
            (
                "replace a running job",
                json!({"schedule": "* * * * *", "concurrencyPolicy": "Replace"}),
                json!({"active": [{"name": "cj-1"}]}),
                "2025-01-01T00:01:10Z",
                start("2025-01-01T00:01:00Z", true),
            ),
            (
                "allow runs alongside",
                json!({"schedule": "* * * * *", "concurrencyPolicy": "Allow"}),
                json!({"active": [{"name": "cj-1"}]}),
                "2025-01-01T00:01:10Z",
                start("2025-01-01T00:01:00Z", false),
            ),
        ];
        for (what, spec, status, now, want) in cases {
            let sched = utc(spec["schedule"].as_str().unwrap());
            let cj = cronjob(spec, status);
            assert_eq!(decide(&cj, ts(now), &sched), Ok(want), "{what}");
        }
        // Over a hundred missed start times are reported, and the latest still runs.
        let cj = cronjob(json!({"schedule": "* * * * *"}), json!({}));
        let d = decide(&cj, ts("2025-01-01T03:00:10Z"), &every_minute).unwrap();
        assert_eq!(
            d,
            Decision::Start {
                scheduled: ts("2025-01-01T03:00:00Z"),
                replace: false,
                too_many_missed: true
            }
        );
        // A deadline that only just missed the most recent time.
        let cj = cronjob(
            json!({"schedule": "0 * * * *", "startingDeadlineSeconds": 100}),
            json!({"lastScheduleTime": "2025-01-01T00:00:00Z"}),
        );
        let d = decide(&cj, ts("2025-01-01T02:01:00Z"), &utc("0 * * * *")).unwrap();
        assert_eq!(d, start("2025-01-01T02:00:00Z", false));
    }

    #[test]
    fn requeue_at_next_schedule() {
        let cj = cronjob(
            json!({"schedule": "*/5 * * * *"}),
            json!({"lastScheduleTime": "2025-01-01T00:05:00Z"}),
        );
        let d = next_schedule_delay(&cj, ts("2025-01-01T00:07:30Z"), &utc("*/5 * * * *"));
        assert_eq!(d, Some(Duration::from_millis(150_100)));
        let tz = load_time_zone("Asia/Tokyo").unwrap();
        let sched = Schedule::parse("0 9 * * *", tz).unwrap();
        let cj = cronjob(json!({"schedule": "0 9 * * *"}), json!({}));
        let d = next_schedule_delay(&cj, ts("2025-01-01T00:00:31Z"), &sched);
        assert_eq!(
            d,
            Some(Duration::from_secs(24 * 3600 - 31) + NEXT_SCHEDULE_DELTA)
        );
    }

    #[test]
    fn jobs_from_the_template() {
        let cj = cronjob(json!({"schedule": "* * * * *"}), json!({}));
        let at = ts("2025-01-01T10:30:00Z");
        let job = job_from_template(&cj, at, &TimeZone::UTC);
        assert_eq!(job.name_any(), format!("cj-{}", at.as_second() / 60));
        assert_eq!(job.name_any(), "cj-28928790");
        assert_eq!(job.labels().get("app").map(String::as_str), Some("x"));
        assert_eq!(
            job.annotations()
                .get(SCHEDULED_TIMESTAMP)
                .map(String::as_str),
            Some("2025-01-01T10:30:00Z")
        );
        let owner = controller_of(&job.metadata).unwrap();
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("CronJob", "cj-uid")
        );
        let tokyo = load_time_zone("Asia/Tokyo").unwrap();
        let job = job_from_template(&cj, at, &tokyo);
        assert_eq!(
            job.annotations()
                .get(SCHEDULED_TIMESTAMP)
                .map(String::as_str),
            Some("2025-01-01T19:30:00+09:00")
        );
    }

    #[test]
    fn history_pruning() {
        let job = |name: &str, cond: Option<&str>, start: Option<&str>| -> Job {
            let conditions: Vec<_> = cond
                .map(|c| json!({"type": c, "status": "True"}))
                .into_iter()
                .collect();
            serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"conditions": conditions, "startTime": start}}))
            .unwrap()
        };
        let jobs = [
            job("s3", Some("Complete"), Some("2025-01-01T03:00:00Z")),
            job("s1", Some("Complete"), Some("2025-01-01T01:00:00Z")),
            job("s2", Some("Complete"), Some("2025-01-01T02:00:00Z")),
            job("f1", Some("Failed"), Some("2025-01-01T01:00:00Z")),
            job("f2", Some("Failed"), None),
            job("running", None, Some("2025-01-01T00:00:00Z")),
        ];
        let refs: Vec<&Job> = jobs.iter().collect();
        let names = |cj: &CronJob| -> Vec<String> {
            jobs_to_prune(cj, &refs)
                .iter()
                .map(|j| j.name_any())
                .collect()
        };
        let cj = cronjob(
            json!({"schedule": "* * * * *", "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1}),
            json!({}),
        );
        assert_eq!(names(&cj), ["s1", "s2", "f1"]);
        let cj = cronjob(
            json!({"schedule": "* * * * *", "successfulJobsHistoryLimit": 0, "failedJobsHistoryLimit": 0}),
            json!({}),
        );
        assert_eq!(names(&cj), ["s1", "s2", "s3", "f1", "f2"]);
        let cj = cronjob(
            json!({"schedule": "* * * * *", "successfulJobsHistoryLimit": 3}),
            json!({}),
        );
        assert!(
            names(&cj).is_empty(),
            "limits not exceeded, failed unlimited"
        );
    }
}
