//! Batch workloads against a real `kaji server`: Jobs run real pods to completion
//! through the node agent and containerd (bounded parallelism, back-off limits, Indexed
//! completion, suspension), CronJobs create Jobs on schedule (and `kubectl create job
//! --from=cronjob/...` works), finished Jobs with `ttlSecondsAfterFinished` go away with
//! their pods, and the pod garbage collector keeps terminated pods under its threshold.
//!
//! The end-to-end test needs root, containerd, runc and the CNI plugins, as the other
//! pod tests do.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::{Server, ok, stdout};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, Pod, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const BUSYBOX: &str = "docker.io/library/busybox:1.36";

/// Polls `check` every 200 ms for up to `secs`; panics with `what` (and the last value
/// seen) on timeout.
async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Runs kubectl without blocking the other tasks of the test.
fn kubectl(server: &Server, args: &[&str]) -> std::process::Output {
    tokio::task::block_in_place(|| server.kubectl(args))
}

fn job_manifest(name: &str, spec: Value, script: &str) -> Job {
    let mut spec = spec;
    spec["template"] = json!({"spec": {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", script]}],
    }});
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn condition(job: &Job, type_: &str) -> Option<(String, String)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

fn is_active(p: &Pod) -> bool {
    let phase = p
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    phase != "Succeeded" && phase != "Failed" && p.metadata.deletion_timestamp.is_none()
}

async fn job_pods(pods: &Api<Pod>, job: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .unwrap()
        .items
}

async fn events_for(events: &Api<Event>, name: &str) -> Vec<(String, String)> {
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// completions=5, parallelism=2: never more than two pods at once, then Complete.
async fn parallel_job(server: &Server, client: &kube::Client) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job_manifest(
            "par",
            json!({"completions": 5, "parallelism": 2}),
            "sleep 1",
        ),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut max_active = 0;
    loop {
        let active = job_pods(&pods, "par")
            .await
            .iter()
            .filter(|p| is_active(p))
            .count();
        max_active = max_active.max(active);
        assert!(
            active <= 2,
            "{active} pods active at once for parallelism 2"
        );
        let job = jobs.get("par").await.unwrap();
        if condition(&job, "Complete").is_some_and(|(s, _)| s == "True") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "job par did not complete: {:?}\n{}",
            job.status,
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(max_active, 2, "the job ran two pods at a time");
    let out = kubectl(
        server,
        &[
            "wait",
            "--for=condition=complete",
            "job/par",
            "--timeout=10s",
        ],
    );
    assert!(
        stdout(&out).contains("job.batch/par condition met"),
        "{out:?}"
    );
    let job = jobs.get("par").await.unwrap();
    let st = job.status.clone().unwrap();
    assert_eq!(st.succeeded, Some(5));
    assert_eq!(st.active, None);
    assert!(st.failed.is_none());
    assert!(st.start_time.is_some() && st.completion_time.is_some());
    assert_eq!(
        condition(&job, "SuccessCriteriaMet"),
        Some(("True".into(), "CompletionsReached".into()))
    );
    let u = st.uncounted_terminated_pods.unwrap_or_default();
    assert!(u.succeeded.is_none() && u.failed.is_none(), "{u:?}");
    // Every pod was counted and released from the tracking finalizer.
    let all = job_pods(&pods, "par").await;
    assert_eq!(all.len(), 5);
    for p in &all {
        assert!(
            !p.finalizers()
                .iter()
                .any(|f| f == "batch.kubernetes.io/job-tracking"),
            "{} keeps the tracking finalizer",
            p.name_any()
        );
        assert!(p.name_any().starts_with("par-"));
    }
    let table = stdout(&kubectl(server, &["get", "job", "par"]));
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], ["par", "Complete", "5/5"], "{table}");
    assert!(table.starts_with("NAME"), "{table}");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    wait_for("the Completed event", 10, || async {
        let ev = events_for(&events, "par").await;
        let created = ev.iter().filter(|(r, _)| r == "SuccessfulCreate").count();
        if ev
            .iter()
            .any(|(r, m)| r == "Completed" && m == "Job completed")
            && created >= 1
        {
            Ok(())
        } else {
            Err(format!("{ev:?}"))
        }
    })
    .await;
}

/// A job whose pods fail: backoffLimit 1 allows one retry (after the back-off), then
/// Failed / BackoffLimitExceeded.
async fn failing_job(server: &Server, client: &kube::Client) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job_manifest("fail", json!({"backoffLimit": 1}), "exit 3"),
    )
    .await
    .unwrap();
    let job = wait_for("job fail to fail", 120, || async {
        let job = jobs.get("fail").await.map_err(|e| e.to_string())?;
        match condition(&job, "Failed") {
            Some((s, _)) if s == "True" => Ok(job),
            _ => Err(format!("{:?}", job.status)),
        }
    })
    .await;
    assert_eq!(
        condition(&job, "Failed"),
        Some(("True".into(), "BackoffLimitExceeded".into()))
    );
    assert_eq!(
        condition(&job, "FailureTarget").map(|c| c.1),
        Some("BackoffLimitExceeded".into())
    );
    let st = job.status.unwrap();
    assert_eq!(st.failed, Some(2), "the first pod and its one retry");
    assert!(st.completion_time.is_none());
    assert!(condition_reason_event(client, "fail", "BackoffLimitExceeded").await);
    let table = stdout(&kubectl(server, &["get", "job", "fail"]));
    assert!(table.lines().nth(1).unwrap().contains("Failed"), "{table}");
}

async fn condition_reason_event(client: &kube::Client, job: &str, reason: &str) -> bool {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    for _ in 0..50 {
        if events_for(&events, job)
            .await
            .iter()
            .any(|(r, _)| r == reason)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// An Indexed job: each pod sees its index in the environment and its hostname.
async fn indexed_job(server: &Server, client: &kube::Client) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job_manifest(
            "idx",
            json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"}),
            "echo index=$JOB_COMPLETION_INDEX host=$(hostname)",
        ),
    )
    .await
    .unwrap();
    let job = wait_for("indexed job to complete", 120, || async {
        let job = jobs.get("idx").await.map_err(|e| e.to_string())?;
        match condition(&job, "Complete") {
            Some((s, _)) if s == "True" => Ok(job),
            _ => Err(format!("{:?}", job.status)),
        }
    })
    .await;
    let st = job.status.unwrap();
    assert_eq!(st.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!(st.succeeded, Some(3));
    let all = job_pods(&pods, "idx").await;
    assert_eq!(all.len(), 3);
    let mut seen = Vec::new();
    for p in all {
        let ix = p.annotations()["batch.kubernetes.io/job-completion-index"].clone();
        assert_eq!(p.labels()["batch.kubernetes.io/job-completion-index"], ix);
        assert!(
            p.name_any().starts_with(&format!("idx-{ix}-")),
            "{}",
            p.name_any()
        );
        let logs = ok(kubectl(server, &["logs", &p.name_any()]));
        assert_eq!(
            logs.trim(),
            format!("index={ix} host=idx-{ix}"),
            "pod {}",
            p.name_any()
        );
        seen.push(ix);
    }
    seen.sort();
    assert_eq!(seen, ["0", "1", "2"]);
}

/// A suspended Job starts no pods until resumed; ttlSecondsAfterFinished 0 then deletes
/// it and its pods once it completes.
async fn suspended_then_ttl(client: &kube::Client) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job_manifest(
            "ttl",
            json!({"suspend": true, "ttlSecondsAfterFinished": 0}),
            "true",
        ),
    )
    .await
    .unwrap();
    wait_for("the Suspended condition", 30, || async {
        let job = jobs.get("ttl").await.map_err(|e| e.to_string())?;
        match condition(&job, "Suspended") {
            Some((s, r)) if s == "True" && r == "JobSuspended" => Ok(()),
            _ => Err(format!("{:?}", job.status)),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        job_pods(&pods, "ttl").await.is_empty(),
        "a suspended job runs no pods"
    );
    let job = jobs.get("ttl").await.unwrap();
    assert!(job.status.unwrap().start_time.is_none());
    jobs.patch(
        "ttl",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    // The pod runs `true` and the TTL of 0 removes the job and its pod moments later, so
    // the job controller's events are the lasting record that the resumed job ran.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    wait_for(
        "the resumed job to create a pod and complete",
        60,
        || async {
            let seen = events_for(&events, "ttl").await;
            let has = |reason: &str| seen.iter().any(|(r, _)| r == reason);
            if has("Resumed") && has("SuccessfulCreate") && has("Completed") {
                Ok(())
            } else {
                Err(format!("events {seen:?}"))
            }
        },
    )
    .await;
    wait_for(
        "the finished job and its pods to be deleted",
        120,
        || async {
            let job = jobs.get_opt("ttl").await.map_err(|e| e.to_string())?;
            let left = job_pods(&pods, "ttl").await.len();
            if job.is_none() && left == 0 {
                Ok(())
            } else {
                Err(format!("job {:?}, {left} pods", job.map(|j| j.status)))
            }
        },
    )
    .await;
}

/// A CronJob running every minute creates a Job named after its schedule time, which
/// runs; `kubectl create job --from=cronjob/...` instantiates it by hand.
async fn cronjob(server: &Server, client: &kube::Client) {
    let cjs: Api<CronJob> = Api::namespaced(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let cj: CronJob = serde_json::from_value(json!({
        "metadata": {"name": "tick"},
        "spec": {"schedule": "* * * * *", "successfulJobsHistoryLimit": 1,
            "jobTemplate": {"metadata": {"labels": {"from": "tick"}}, "spec": {"template": {"spec": {
                "restartPolicy": "OnFailure", "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                                "command": ["sh", "-c", "echo tick"]}]}}}}},
    }))
    .unwrap();
    cjs.create(&PostParams::default(), &cj).await.unwrap();
    let table = stdout(&kubectl(server, &["get", "cronjob", "tick"]));
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"
        ]
    );
    assert!(
        table.contains("* * * * *") && table.contains("<none>"),
        "{table}"
    );

    // Manual instantiation (client-side in kubectl).
    ok(kubectl(
        server,
        &["create", "job", "--from=cronjob/tick", "tick-manual"],
    ));
    let manual = jobs.get("tick-manual").await.unwrap();
    assert_eq!(
        manual.labels().get("from").map(String::as_str),
        Some("tick")
    );
    assert_eq!(
        manual
            .annotations()
            .get("cronjob.kubernetes.io/instantiate")
            .map(String::as_str),
        Some("manual")
    );

    let scheduled = wait_for("a scheduled job", 75, || async {
        let list = jobs
            .list(&ListParams::default().labels("from=tick"))
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .find(|j| {
                j.annotations()
                    .contains_key("batch.kubernetes.io/cronjob-scheduled-timestamp")
            })
            .ok_or_else(|| "none yet".to_string())
    })
    .await;
    let at: jiff::Timestamp =
        scheduled.annotations()["batch.kubernetes.io/cronjob-scheduled-timestamp"]
            .parse()
            .unwrap();
    assert_eq!(at.as_second() % 60, 0, "scheduled on the minute");
    assert_eq!(
        scheduled.name_any(),
        format!("tick-{}", at.as_second() / 60)
    );
    let owner = scheduled.owner_references()[0].clone();
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("CronJob", Some(true))
    );
    let name = scheduled.name_any();
    wait_for(
        "the scheduled job to complete and the status to follow",
        90,
        || async {
            let cj = cjs.get("tick").await.map_err(|e| e.to_string())?;
            let st = cj.status.clone().unwrap_or_default();
            let succeeded_since = st.last_successful_time.as_ref().is_some_and(|t| t.0 >= at);
            // On a loaded machine the next minute's run may already have succeeded and
            // pruned this one (successfulJobsHistoryLimit: 1): that also proves it ran.
            let (done, pruned) = match jobs.get_opt(&name).await.map_err(|e| e.to_string())? {
                Some(job) => (
                    condition(&job, "Complete").is_some_and(|(s, _)| s == "True"),
                    false,
                ),
                None => (succeeded_since, true),
            };
            if done
                && st.last_schedule_time.as_ref().is_some_and(|t| t.0 >= at)
                && succeeded_since
                && (pruned || st.active.as_ref().is_none_or(Vec::is_empty))
            {
                Ok(())
            } else {
                Err(format!("{st:?} job done={done}"))
            }
        },
    )
    .await;
    let table = stdout(&kubectl(server, &["get", "cronjob", "tick"]));
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_ne!(
        row[row.len() - 2],
        "<none>",
        "LAST SCHEDULE is set: {table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_and_cronjobs_run_real_pods() {
    let server = tokio::task::block_in_place(|| {
        let s = Server::start_with_agent(&[]);
        common::import_busybox(&s);
        s
    });
    let client = server.client().await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    wait_for("the default service account", 30, || async {
        match sas.get_opt("default").await {
            Ok(Some(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    tokio::join!(
        parallel_job(&server, &client),
        failing_job(&server, &client),
        indexed_job(&server, &client),
        suspended_then_ttl(&client),
        cronjob(&server, &client),
    );
}

/// Terminated pods beyond `--terminated-pod-gc-threshold` are deleted, oldest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_gc_keeps_terminated_pods_under_the_threshold() {
    let server =
        tokio::task::block_in_place(|| Server::start(&["--terminated-pod-gc-threshold=2"]));
    let client = server.client().await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    wait_for("the default service account", 30, || async {
        match sas.get_opt("default").await {
            Ok(Some(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..4 {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": format!("done-{i}")},
            "spec": {"containers": [{"name": "c", "image": BUSYBOX}]}}))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        pods.patch_status(
            &format!("done-{i}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await
        .unwrap();
        // Distinct creation times (second precision), so "oldest" is well defined.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let left = wait_for("the pod GC", 45, || async {
        let mut names: Vec<String> = pods
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .iter()
            .map(|p| p.name_any())
            .collect();
        names.sort();
        if names.len() == 2 {
            Ok(names)
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
    assert_eq!(left, ["done-2", "done-3"], "the two oldest went");
}
