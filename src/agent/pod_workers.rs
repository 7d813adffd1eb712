//! Pod workers: one task per pod bound to this node, each running a level-triggered
//! `sync_pod` — compare the desired spec with what the runtime reports, act, report
//! status, and sleep until woken: by a change to the pod's spec or metadata (API watch;
//! the echo of our own status patches does not wake), by the PLEG (`super::pleg`) when
//! the pod's sandbox or containers changed in the runtime, by a probe result, by a
//! back-off timer running out, or by the long jittered resync (the safety net).
//!
//! `sync_pod` ensures the sandbox (with its network namespace), runs init containers in
//! order, then the app containers; restarts exited containers per `restartPolicy` with
//! the upstream exponential back-off (CrashLoopBackOff); reports phase, conditions and
//! container statuses; and on deletion runs preStop hooks, stops containers within the
//! grace period, removes everything and finally deletes the Pod object.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use super::cri::{self as crilib, Cri};
use super::events::{self, Kind};
use super::pleg::Pleg;
use super::probes::Probes;
use super::{AgentConfig, Error, env, now, resources, volumes};

/// The safety-net resync of a pod nobody woke: 60 s plus up to 30 s of jitter (so that
/// pods created together do not resync together). Runtime changes arrive through the PLEG.
fn resync() -> Duration {
    Duration::from_millis(60_000 + rand::random_range(0..30_000u64))
}
/// Retry period of a pod whose last sync failed or that waits for something outside the
/// runtime (a missing ConfigMap, an image pull back-off).
const RETRY: Duration = Duration::from_secs(2);
/// Initial and maximum restart back-off.
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The running workers, by pod uid: each is fed the newest pod (None: the pod is gone).
type Workers = Arc<Mutex<HashMap<String, watch::Sender<Option<Value>>>>>;

/// Shared state of the workers.
struct Ctx {
    client: kube::Client,
    cfg: Arc<AgentConfig>,
    cri: Cri,
    probes: Arc<Probes>,
    pleg: Arc<Pleg>,
}

/// Runs one step of a sync and logs how long it took at debug level, so that
/// `KAJI_LOG=kaji::agent::pod_workers=debug` shows where a pod's start waits.
async fn timed<T>(pod: &str, step: &'static str, f: impl std::future::Future<Output = T>) -> T {
    let t = Instant::now();
    let out = f.await;
    tracing::debug!(pod, step, ms = t.elapsed().as_secs_f64() * 1e3, "sync step");
    out
}

/// Per-pod memory of a worker.
#[derive(Default)]
struct PodState {
    /// Restart back-off per container name: (current delay, not before).
    backoff: HashMap<String, (Duration, Instant)>,
    /// Image pull back-off per image.
    pull_backoff: HashMap<String, (Duration, Instant, String)>,
    /// The last status posted.
    last_status: Option<Value>,
    /// When the pod was first seen running here.
    start_time: Option<String>,
    /// Containers whose postStart hook ran.
    post_started: std::collections::HashSet<String>,
    /// Waiting reasons per container name (ErrImagePull, CreateContainerConfigError ...).
    overrides: HashMap<String, (String, String)>,
}

/// Runs the pod workers until `shutdown`.
pub async fn run(
    client: kube::Client,
    cfg: Arc<AgentConfig>,
    cri: Cri,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        cfg: cfg.clone(),
        cri,
        probes: Probes::new(client.clone(), &cfg.node_name, cfg.node_ip),
        pleg: Pleg::new(),
    });
    tokio::spawn(ctx.pleg.clone().run(ctx.cri.clone(), shutdown.clone()));
    let pods: Api<Pod> = Api::all(client);
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node_name));
    let mut stream = watcher(pods, wc).boxed();
    let workers: Workers = Arc::default();
    let mut listed: Vec<String> = Vec::new();
    // Orphans are only judged after the first full list of this node's pods.
    let mut synced = false;
    let mut housekeeping = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(30),
        Duration::from_secs(30),
    );
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = housekeeping.tick() => {
                if synced {
                    remove_orphans(&ctx, &workers).await;
                }
                continue;
            }
            e = stream.next() => e,
        };
        let Some(event) = event else { return };
        match event {
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(pod)) | Ok(watcher::Event::Apply(pod)) => {
                let Ok(v) = serde_json::to_value(&pod) else {
                    continue;
                };
                let uid = v["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                listed.push(uid.clone());
                dispatch(&ctx, &workers, &uid, Some(v), &shutdown).await;
            }
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                dispatch(&ctx, &workers, &uid, None, &shutdown).await;
            }
            Ok(watcher::Event::InitDone) => {
                synced = true;
                let gone: Vec<String> = workers
                    .lock()
                    .await
                    .keys()
                    .filter(|u| !listed.contains(u))
                    .cloned()
                    .collect();
                for uid in gone {
                    dispatch(&ctx, &workers, &uid, None, &shutdown).await;
                }
            }
            Err(err) => {
                tracing::warn!(%err, "pod watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Hands the newest pod (or its disappearance) to its worker, starting one if needed.
async fn dispatch(
    ctx: &Arc<Ctx>,
    workers: &Workers,
    uid: &str,
    pod: Option<Value>,
    shutdown: &CancellationToken,
) {
    let mut map = workers.lock().await;
    if let Some(tx) = map.get(uid) {
        // Always keep the newest pod, but only wake the worker when something it acts on
        // changed (not for the echo of its own status patch).
        tx.send_if_modified(|cur| {
            let wake = match (cur.as_ref(), pod.as_ref()) {
                (Some(old), Some(new)) => significant_change(old, new),
                _ => true,
            };
            *cur = pod;
            wake
        });
        return;
    }
    if pod.is_none() {
        // Not ours (yet): still make sure nothing of it is left in the runtime.
        let ctx = ctx.clone();
        let uid = uid.to_string();
        tokio::spawn(async move { teardown(&ctx, &uid, None, 0).await });
        return;
    }
    let (tx, rx) = watch::channel(pod);
    map.insert(uid.to_string(), tx);
    let ctx = ctx.clone();
    let uid = uid.to_string();
    let workers = workers.clone();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        worker(ctx, uid.clone(), rx, shutdown).await;
        workers.lock().await.remove(&uid);
    });
}

async fn worker(
    ctx: Arc<Ctx>,
    uid: String,
    mut rx: watch::Receiver<Option<Value>>,
    shutdown: CancellationToken,
) {
    let mut state = PodState::default();
    let spawned = Instant::now();
    let mut first = true;
    let probed = ctx.probes.changes(&uid);
    let relisted = ctx.pleg.changes(&uid);
    // The pod as of the last sync.
    let mut synced: Option<Value> = None;
    loop {
        let pod = rx.borrow_and_update().clone();
        synced.clone_from(&pod);
        let next = match pod {
            None => {
                teardown(&ctx, &uid, None, 0).await;
                ctx.probes.forget_pod(&uid);
                ctx.pleg.forget(&uid);
                return;
            }
            Some(pod) => {
                let name = pod_name(&pod);
                if first {
                    first = false;
                    let waited = spawned.elapsed().as_secs_f64() * 1e3;
                    tracing::debug!(pod = %name, step = "worker_start", ms = waited, "sync step");
                }
                let synced_result = timed(&name, "sync", sync_pod(&ctx, &pod, &mut state)).await;
                match synced_result {
                    Ok(Some(d)) => d,
                    Ok(None) => {
                        ctx.probes.forget_pod(&uid);
                        ctx.pleg.forget(&uid);
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(pod = %name, %err, "sync_pod failed");
                        RETRY
                    }
                }
            }
        };
        let deadline = tokio::time::Instant::now() + next;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // The echo of our own status patch (only the phase we posted differs
                    // from the pod we synced) needs no sync.
                    if let (Some(old), Some(new)) = (synced.as_ref(), rx.borrow().as_ref()) {
                        if own_echo(old, new, &state) {
                            continue;
                        }
                    }
                }
                _ = probed.notified() => {}
                _ = relisted.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
            break;
        }
    }
}

/// Whether `new` differs from `old` (the pod of the last sync) only by what the worker
/// posted itself: the phase of its last status (pods with readiness gates always sync).
fn own_echo(old: &Value, new: &Value, st: &PodState) -> bool {
    let Some(posted) = st.last_status.as_ref().and_then(|s| s["phase"].as_str()) else {
        return false;
    };
    let gated = old["spec"]["readinessGates"]
        .as_array()
        .is_some_and(|g| !g.is_empty());
    if gated || new["status"]["phase"] != posted {
        return false;
    }
    let mut old = old.clone();
    old["status"]["phase"] = json!(posted);
    !significant_change(&old, new)
}

/// Whether a newer copy of a pod differs from the old one in anything a sync acts on:
/// everything but the resourceVersion, the managed fields and the status the worker
/// writes itself (the phase and, with readiness gates, the conditions still count).
fn significant_change(old: &Value, new: &Value) -> bool {
    fn relevant(pod: &Value) -> Value {
        let mut p = pod.clone();
        if let Some(m) = p["metadata"].as_object_mut() {
            m.remove("resourceVersion");
            m.remove("managedFields");
        }
        let gated = pod["spec"]["readinessGates"]
            .as_array()
            .is_some_and(|g| !g.is_empty());
        p["status"] = if gated {
            json!({"phase": pod["status"]["phase"], "conditions": pod["status"]["conditions"]})
        } else {
            json!({"phase": pod["status"]["phase"]})
        };
        p
    }
    relevant(old) != relevant(new)
}

fn pod_name(pod: &Value) -> String {
    format!(
        "{}/{}",
        pod["metadata"]["namespace"].as_str().unwrap_or(""),
        pod["metadata"]["name"].as_str().unwrap_or("")
    )
}

fn ns_to_rfc3339(ns: i64) -> Option<String> {
    if ns <= 0 {
        return None;
    }
    jiff::Timestamp::from_nanosecond(ns as i128)
        .ok()
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// The latest runtime container per container name, plus the previous one.
struct Observed {
    latest: HashMap<String, (cri::Container, cri::ContainerStatus)>,
    previous: HashMap<String, cri::ContainerStatus>,
}

async fn observe(ctx: &Ctx, uid: &str, sandbox_id: Option<&str>) -> Result<Observed, Error> {
    let mut c = ctx.cri.clone();
    let mut all = c.containers(Some(uid)).await?;
    if let Some(sid) = sandbox_id {
        all.retain(|x| x.pod_sandbox_id == sid);
    }
    all.sort_by_key(|x| std::cmp::Reverse(x.created_at));
    let mut latest = HashMap::new();
    let mut previous = HashMap::new();
    for ctr in all {
        let name = ctr
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let status = match c.container_status(&ctr.id).await {
            Ok(s) => s,
            Err(_) => continue,
        };
        if let std::collections::hash_map::Entry::Vacant(e) = latest.entry(name.clone()) {
            e.insert((ctr, status));
        } else {
            previous.entry(name).or_insert(status);
        }
    }
    Ok(Observed { latest, previous })
}

fn state_of(s: &cri::ContainerStatus) -> cri::ContainerState {
    cri::ContainerState::try_from(s.state).unwrap_or(cri::ContainerState::ContainerUnknown)
}

fn restart_count(s: &cri::ContainerStatus) -> i64 {
    s.annotations
        .get(crilib::ANNOTATION_RESTART_COUNT)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One level-triggered sync. Returns when to come back, or None when the pod is gone.
async fn sync_pod(ctx: &Ctx, pod: &Value, st: &mut PodState) -> Result<Option<Duration>, Error> {
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        let grace = pod["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(30);
        teardown(ctx, &uid, Some(pod), grace).await;
        let pods: Api<Pod> = Api::namespaced(
            ctx.client.clone(),
            pod["metadata"]["namespace"].as_str().unwrap_or("default"),
        );
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match pods
            .delete(pod["metadata"]["name"].as_str().unwrap_or_default(), &dp)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(None);
    }
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    let restart_policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
    if phase == "Succeeded" || phase == "Failed" {
        // Terminal pods keep their status; their runtime resources are released.
        stop_everything(ctx, &uid, Some(pod), 0).await;
        return Ok(Some(Duration::from_secs(60)));
    }

    // The sandbox.
    let pname = pod_name(pod);
    let mut c = ctx.cri.clone();
    let sandboxes = timed(&pname, "list_sandboxes", c.sandboxes(Some(&uid))).await?;
    let ready = sandboxes
        .iter()
        .find(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
        .cloned();
    let vols = match timed(
        &pname,
        "volumes",
        volumes::prepare(&ctx.client, &ctx.cfg.data_dir, pod),
    )
    .await
    {
        Ok(v) => v,
        Err(err) => {
            events::record(
                &ctx.client,
                &ctx.cfg.node_name,
                pod,
                Kind::Warning,
                "FailedMount",
                format!("MountVolume.SetUp failed: {err}"),
                None,
            );
            post_status(
                ctx,
                pod,
                st,
                None,
                None,
                Some(("ContainerCreating", &err.to_string())),
            )
            .await?;
            return Ok(Some(Duration::from_secs(5)));
        }
    };
    let sandbox_config = sandbox_config(ctx, pod, sandboxes.len() as u32);
    let sandbox_id = match ready {
        Some(s) => s.id,
        None => {
            if !sandboxes.is_empty()
                && restart_policy == "Never"
                && !pod["status"]["containerStatuses"].is_null()
            {
                // The sandbox died under containers that may not restart: the pod failed.
                post_status(
                    ctx,
                    pod,
                    st,
                    None,
                    None,
                    Some(("Failed", "the pod sandbox was lost")),
                )
                .await?;
            }
            for old in &sandboxes {
                let _ = c.stop_sandbox(&old.id).await;
            }
            match timed(&pname, "run_sandbox", c.run_sandbox(sandbox_config.clone())).await {
                Ok(id) => id,
                Err(err) => {
                    events::record(
                        &ctx.client,
                        &ctx.cfg.node_name,
                        pod,
                        Kind::Warning,
                        "FailedCreatePodSandBox",
                        format!("Failed to create pod sandbox: {err}"),
                        None,
                    );
                    post_status(
                        ctx,
                        pod,
                        st,
                        None,
                        None,
                        Some(("ContainerCreating", &err.to_string())),
                    )
                    .await?;
                    return Ok(Some(Duration::from_secs(5)));
                }
            }
        }
    };
    let sandbox = timed(&pname, "sandbox_status", c.sandbox_status(&sandbox_id)).await?;
    let pod_ip = sandbox
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .filter(|ip| !ip.is_empty());
    if st.start_time.is_none() {
        st.start_time = Some(
            pod["status"]["startTime"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(now),
        );
    }

    let mut observed = timed(&pname, "observe", observe(ctx, &uid, Some(&sandbox_id))).await?;
    // Runtime changes wake the worker through the PLEG; this is only the safety net.
    let mut next = resync();
    let mut pod_failed = false;
    // Whether this sync started or stopped anything (then the runtime is observed again).
    let mut acted = false;

    // Init containers, in order; each must succeed before the next starts.
    let mut initialized = true;
    for ic in pod["spec"]["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let name = ic["name"].as_str().unwrap_or_default().to_string();
        let restartable = ic["restartPolicy"] == "Always";
        match observed
            .latest
            .get(&name)
            .map(|(_, s)| (state_of(s), s.exit_code, s.clone()))
        {
            Some((cri::ContainerState::ContainerExited, 0, _)) if !restartable => continue,
            Some((cri::ContainerState::ContainerRunning, _, s)) if restartable => {
                ctx.probes
                    .ensure(&ctx.cri, pod, &ic, &s.id, pod_ip.as_deref());
                continue;
            }
            Some((cri::ContainerState::ContainerRunning, _, _))
            | Some((cri::ContainerState::ContainerCreated, _, _)) => {
                initialized = false;
                break;
            }
            Some((cri::ContainerState::ContainerExited, _, s)) => {
                if restart_policy == "Never" && !restartable {
                    pod_failed = true;
                    initialized = false;
                    break;
                }
                initialized = false;
                acted = true;
                if let Some(wait) = restart_after_backoff(
                    ctx,
                    pod,
                    st,
                    &sandbox_id,
                    &sandbox_config,
                    &ic,
                    &vols,
                    &s,
                    pod_ip.as_deref(),
                )
                .await?
                {
                    next = next.min(wait);
                }
                break;
            }
            _ => {
                initialized = false;
                acted = true;
                start_container(
                    ctx,
                    pod,
                    st,
                    &sandbox_id,
                    &sandbox_config,
                    &ic,
                    &vols,
                    0,
                    pod_ip.as_deref(),
                )
                .await?;
                break;
            }
        }
    }

    // App containers.
    if initialized && !pod_failed {
        for ctr in pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let name = ctr["name"].as_str().unwrap_or_default().to_string();
            match observed.latest.get(&name).map(|(_, s)| s.clone()) {
                None => {
                    acted = true;
                    start_container(
                        ctx,
                        pod,
                        st,
                        &sandbox_id,
                        &sandbox_config,
                        &ctr,
                        &vols,
                        0,
                        pod_ip.as_deref(),
                    )
                    .await?;
                }
                Some(s) => match state_of(&s) {
                    cri::ContainerState::ContainerRunning => {
                        ctx.probes
                            .ensure(&ctx.cri, pod, &ctr, &s.id, pod_ip.as_deref());
                        if !st.post_started.contains(&s.id) {
                            st.post_started.insert(s.id.clone());
                        }
                        if let Some(failed) = ctx.probes.failed_probe(&s.id) {
                            events::record(
                                &ctx.client,
                                &ctx.cfg.node_name,
                                pod,
                                Kind::Normal,
                                "Killing",
                                format!(
                                    "Container {name} failed {} probe, will be restarted",
                                    failed.probe
                                ),
                                Some(&name),
                            );
                            acted = true;
                            kill_container(
                                ctx,
                                pod,
                                &ctr,
                                &s.id,
                                failed.grace.unwrap_or_else(|| grace_of(pod)),
                            )
                            .await;
                            next = Duration::from_millis(200);
                        }
                    }
                    cri::ContainerState::ContainerCreated => {
                        acted = true;
                        let mut c = ctx.cri.clone();
                        let _ = c.start_container(&s.id).await;
                    }
                    cri::ContainerState::ContainerExited => {
                        let restart = restarts_after_exit(restart_policy, s.exit_code);
                        if restart {
                            acted = true;
                            if let Some(wait) = restart_after_backoff(
                                ctx,
                                pod,
                                st,
                                &sandbox_id,
                                &sandbox_config,
                                &ctr,
                                &vols,
                                &s,
                                pod_ip.as_deref(),
                            )
                            .await?
                            {
                                next = next.min(wait);
                            }
                        }
                    }
                    cri::ContainerState::ContainerUnknown => {}
                },
            }
        }
    }
    // A container that could not be created (missing config, image pull back-off ...)
    // is retried on the short period: what it waits for is no runtime change.
    if !st.overrides.is_empty() {
        next = next.min(RETRY);
    }
    if acted {
        observed = timed(&pname, "observe", observe(ctx, &uid, Some(&sandbox_id)))
            .await
            .unwrap_or(observed);
    }
    let failed = if pod_failed {
        Some(("Failed", "an init container failed"))
    } else {
        None
    };
    timed(
        &pname,
        "post_status",
        post_status_observed(
            ctx,
            pod,
            st,
            &observed,
            pod_ip.as_deref(),
            initialized,
            failed,
        ),
    )
    .await?;
    Ok(Some(next))
}

/// Whether a container that exited with `exit_code` is restarted under `policy`.
fn restarts_after_exit(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Always" => true,
        "OnFailure" => exit_code != 0,
        _ => false,
    }
}

fn grace_of(pod: &Value) -> i64 {
    pod["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(30)
}

/// Restarts an exited container unless it is still in back-off; returns the remaining
/// back-off when it is.
#[allow(clippy::too_many_arguments)]
async fn restart_after_backoff(
    ctx: &Ctx,
    pod: &Value,
    st: &mut PodState,
    sandbox_id: &str,
    sandbox_config: &cri::PodSandboxConfig,
    ctr: &Value,
    vols: &BTreeMap<String, volumes::HostVolume>,
    last: &cri::ContainerStatus,
    pod_ip: Option<&str>,
) -> Result<Option<Duration>, Error> {
    let name = ctr["name"].as_str().unwrap_or_default().to_string();
    let ran_for = Duration::from_nanos((last.finished_at - last.started_at).max(0) as u64);
    let finished = Instant::now()
        .checked_sub(Duration::from_nanos(
            (jiff::Timestamp::now().as_nanosecond() as i64 - last.finished_at).max(0) as u64,
        ))
        .unwrap_or_else(Instant::now);
    let entry = st.backoff.get(&name).cloned();
    if ran_for > Duration::from_secs(600) {
        st.backoff.remove(&name);
    } else if let Some((delay, _)) = entry {
        let ready_at = finished + delay;
        if Instant::now() < ready_at {
            return Ok(Some(ready_at - Instant::now()));
        }
        st.backoff
            .insert(name.clone(), ((delay * 2).min(BACKOFF_MAX), Instant::now()));
    }
    if !st.backoff.contains_key(&name) {
        st.backoff
            .insert(name.clone(), (BACKOFF_START, Instant::now()));
    }
    let attempt = restart_count(last) + 1;
    start_container(
        ctx,
        pod,
        st,
        sandbox_id,
        sandbox_config,
        ctr,
        vols,
        attempt as u32,
        pod_ip,
    )
    .await?;
    Ok(None)
}

/// DNS settings of the sandbox per dnsPolicy.
fn dns_config(cfg: &AgentConfig, pod: &Value) -> cri::DnsConfig {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let host_network = pod["spec"]["hostNetwork"] == true;
    let policy = pod["spec"]["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    let host = || {
        let text = std::fs::read_to_string(&cfg.resolv_conf).unwrap_or_default();
        let mut d = cri::DnsConfig::default();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            match parts.next() {
                Some("nameserver") => d.servers.extend(parts.next().map(str::to_string)),
                Some("search") => d.searches.extend(parts.map(str::to_string)),
                Some("options") => d.options.extend(parts.map(str::to_string)),
                _ => {}
            }
        }
        d
    };
    let cluster = || {
        let dom = &cfg.cluster_domain;
        let mut d = cri::DnsConfig {
            servers: vec![cfg.cluster_dns.to_string()],
            searches: vec![format!("{ns}.svc.{dom}"), format!("svc.{dom}"), dom.clone()],
            options: vec!["ndots:5".into()],
        };
        d.searches.extend(host().searches);
        d
    };
    let mut d = match policy {
        "None" => cri::DnsConfig::default(),
        "Default" => host(),
        "ClusterFirstWithHostNet" => cluster(),
        _ if host_network => host(),
        _ => cluster(),
    };
    let extra = &pod["spec"]["dnsConfig"];
    d.servers.extend(
        extra["nameservers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string)),
    );
    d.searches.extend(
        extra["searches"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string)),
    );
    for o in extra["options"].as_array().into_iter().flatten() {
        let name = o["name"].as_str().unwrap_or_default();
        d.options.retain(|x| x.split(':').next() != Some(name));
        d.options.push(match o["value"].as_str() {
            Some(v) => format!("{name}:{v}"),
            None => name.to_string(),
        });
    }
    // Repeated servers and search domains are dropped, the first kept (as upstream).
    let mut seen = std::collections::HashSet::new();
    d.servers.retain(|x| seen.insert(x.clone()));
    seen.clear();
    d.searches.retain(|x| seen.insert(x.clone()));
    d
}

fn log_dir(cfg: &AgentConfig, pod: &Value) -> std::path::PathBuf {
    let m = &pod["metadata"];
    cfg.data_dir.join("agent/logs").join(format!(
        "{}_{}_{}",
        m["namespace"].as_str().unwrap_or("default"),
        m["name"].as_str().unwrap_or_default(),
        m["uid"].as_str().unwrap_or_default()
    ))
}

fn sandbox_config(ctx: &Ctx, pod: &Value, attempt: u32) -> cri::PodSandboxConfig {
    let m = &pod["metadata"];
    let (name, ns, uid) = (
        m["name"].as_str().unwrap_or_default(),
        m["namespace"].as_str().unwrap_or("default"),
        m["uid"].as_str().unwrap_or_default(),
    );
    let mut labels: HashMap<String, String> = m["labels"]
        .as_object()
        .map(|l| {
            l.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    labels.insert(crilib::LABEL_POD_NAME.into(), name.into());
    labels.insert(crilib::LABEL_POD_NAMESPACE.into(), ns.into());
    labels.insert(crilib::LABEL_POD_UID.into(), uid.into());
    let annotations: HashMap<String, String> = m["annotations"]
        .as_object()
        .map(|l| {
            l.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    let mut port_mappings = Vec::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for p in c["ports"].as_array().into_iter().flatten() {
            if let Some(hp) = p["hostPort"].as_i64().filter(|h| *h > 0) {
                port_mappings.push(cri::PortMapping {
                    protocol: match p["protocol"].as_str().unwrap_or("TCP") {
                        "UDP" => cri::Protocol::Udp as i32,
                        "SCTP" => cri::Protocol::Sctp as i32,
                        _ => cri::Protocol::Tcp as i32,
                    },
                    container_port: p["containerPort"].as_i64().unwrap_or(0) as i32,
                    host_port: hp as i32,
                    host_ip: p["hostIP"].as_str().unwrap_or("").to_string(),
                });
            }
        }
    }
    let host_network = pod["spec"]["hostNetwork"] == true;
    let ns_opts = cri::NamespaceOption {
        network: if host_network {
            cri::NamespaceMode::Node as i32
        } else {
            cri::NamespaceMode::Pod as i32
        },
        pid: if pod["spec"]["hostPID"] == true {
            cri::NamespaceMode::Node as i32
        } else if pod["spec"]["shareProcessNamespace"] == true {
            cri::NamespaceMode::Pod as i32
        } else {
            cri::NamespaceMode::Container as i32
        },
        ipc: if pod["spec"]["hostIPC"] == true {
            cri::NamespaceMode::Node as i32
        } else {
            cri::NamespaceMode::Pod as i32
        },
        ..Default::default()
    };
    let mut hostname = pod["spec"]["hostname"].as_str().unwrap_or(name).to_string();
    if host_network {
        // As the kubelet: no hostname for the node's UTS namespace (runc refuses one).
        hostname.clear();
    }
    hostname.truncate(63);
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: ns.into(),
            attempt,
        }),
        hostname,
        log_directory: log_dir(&ctx.cfg, pod).display().to_string(),
        dns_config: Some(dns_config(&ctx.cfg, pod)),
        port_mappings,
        labels,
        annotations,
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: resources::cgroup_parent(pod, false),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(ns_opts),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Image pull per `imagePullPolicy`; Err carries the waiting reason and message.
async fn ensure_image(
    ctx: &Ctx,
    pod: &Value,
    st: &mut PodState,
    ctr: &Value,
) -> Result<(), (String, String)> {
    let image = ctr["image"].as_str().unwrap_or_default().to_string();
    let name = ctr["name"].as_str().unwrap_or_default();
    let policy = ctr["imagePullPolicy"].as_str().unwrap_or("IfNotPresent");
    let mut c = ctx.cri.clone();
    let present = c
        .image_present(&image)
        .await
        .map_err(|e| ("ErrImagePull".to_string(), e.to_string()))?
        .is_some();
    if policy == "Never" {
        return if present {
            Ok(())
        } else {
            let msg =
                format!("Container image \"{image}\" is not present with pull policy of Never");
            events::record(
                &ctx.client,
                &ctx.cfg.node_name,
                pod,
                Kind::Warning,
                "ErrImageNeverPull",
                msg.clone(),
                Some(name),
            );
            Err(("ErrImageNeverPull".into(), msg))
        };
    }
    if present && policy != "Always" {
        return Ok(());
    }
    if let Some((_, until, msg)) = st.pull_backoff.get(&image) {
        if Instant::now() < *until {
            return Err((
                "ImagePullBackOff".into(),
                format!("Back-off pulling image \"{image}\": {msg}"),
            ));
        }
    }
    events::record(
        &ctx.client,
        &ctx.cfg.node_name,
        pod,
        Kind::Normal,
        "Pulling",
        format!("Pulling image \"{image}\""),
        Some(name),
    );
    let started = Instant::now();
    let auth = super::pull_secrets::for_image(&ctx.client, pod, &image).await;
    match c.pull_image(&image, auth).await {
        Ok(_) => {
            st.pull_backoff.remove(&image);
            events::record(
                &ctx.client,
                &ctx.cfg.node_name,
                pod,
                Kind::Normal,
                "Pulled",
                format!(
                    "Successfully pulled image \"{image}\" in {:.3}s",
                    started.elapsed().as_secs_f64()
                ),
                Some(name),
            );
            Ok(())
        }
        Err(err) => {
            let delay = st
                .pull_backoff
                .get(&image)
                .map(|(d, _, _)| (*d * 2).min(BACKOFF_MAX))
                .unwrap_or(BACKOFF_START);
            st.pull_backoff.insert(
                image.clone(),
                (delay, Instant::now() + delay, err.to_string()),
            );
            if present {
                return Ok(());
            }
            events::record(
                &ctx.client,
                &ctx.cfg.node_name,
                pod,
                Kind::Warning,
                "Failed",
                format!("Failed to pull image \"{image}\": {err}"),
                Some(name),
            );
            Err(("ErrImagePull".into(), err.to_string()))
        }
    }
}

/// Creates and starts one container (attempt = its restart count).
#[allow(clippy::too_many_arguments)]
async fn start_container(
    ctx: &Ctx,
    pod: &Value,
    st: &mut PodState,
    sandbox_id: &str,
    sandbox_config: &cri::PodSandboxConfig,
    ctr: &Value,
    vols: &BTreeMap<String, volumes::HostVolume>,
    attempt: u32,
    pod_ip: Option<&str>,
) -> Result<(), Error> {
    let name = ctr["name"].as_str().unwrap_or_default().to_string();
    let pname = pod_name(pod);
    if let Err((reason, msg)) = timed(&pname, "image", ensure_image(ctx, pod, st, ctr)).await {
        st.last_status = None;
        waiting_override(st, &name, &reason, &msg);
        return Ok(());
    }
    let mut pod_with_ip = pod.clone();
    if let Some(ip) = pod_ip {
        pod_with_ip["status"]["podIP"] = json!(ip);
        pod_with_ip["status"]["podIPs"] = json!([{"ip": ip}]);
    }
    pod_with_ip["status"]["hostIP"] = json!(ctx.cfg.node_ip.to_string());
    let envs = match timed(
        &pname,
        "env",
        env::resolve(&ctx.client, &pod_with_ip, ctr, &[]),
    )
    .await
    {
        Ok(e) => e,
        Err(err) => {
            let msg = err.to_string();
            events::record(
                &ctx.client,
                &ctx.cfg.node_name,
                pod,
                Kind::Warning,
                "Failed",
                format!("Error: {msg}"),
                Some(&name),
            );
            waiting_override(st, &name, "CreateContainerConfigError", &msg);
            return Ok(());
        }
    };
    let vars: BTreeMap<String, String> = envs.iter().cloned().collect();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str())
            .map(|s| env::expand(s, &vars))
            .collect()
    };
    let mut mounts = Vec::new();
    for vm in ctr["volumeMounts"].as_array().into_iter().flatten() {
        let vname = vm["name"].as_str().unwrap_or_default();
        let Some(hv) = vols.get(vname) else { continue };
        let mut host = hv.path.clone();
        if let Some(sub) = vm["subPath"].as_str().filter(|s| !s.is_empty()) {
            host = host.join(sub);
            if !host.exists() {
                let _ = std::fs::create_dir_all(&host);
            }
        }
        mounts.push(cri::Mount {
            container_path: vm["mountPath"].as_str().unwrap_or_default().to_string(),
            host_path: host.display().to_string(),
            readonly: vm["readOnly"] == true || hv.read_only,
            ..Default::default()
        });
    }
    let sc = &ctr["securityContext"];
    let psc = &pod["spec"]["securityContext"];
    let run_as_user = sc["runAsUser"]
        .as_i64()
        .or_else(|| psc["runAsUser"].as_i64());
    let run_as_group = sc["runAsGroup"]
        .as_i64()
        .or_else(|| psc["runAsGroup"].as_i64());
    let caps = cri::Capability {
        add_capabilities: strings(&sc["capabilities"]["add"]),
        drop_capabilities: strings(&sc["capabilities"]["drop"]),
        add_ambient_capabilities: vec![],
    };
    let qos = resources::qos_class(pod);
    let mut labels = HashMap::new();
    labels.insert(
        crilib::LABEL_POD_NAME.to_string(),
        pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    );
    labels.insert(
        crilib::LABEL_POD_NAMESPACE.to_string(),
        pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    );
    labels.insert(
        crilib::LABEL_POD_UID.to_string(),
        pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    );
    labels.insert(crilib::LABEL_CONTAINER_NAME.to_string(), name.clone());
    let mut annotations = HashMap::new();
    annotations.insert(
        crilib::ANNOTATION_RESTART_COUNT.to_string(),
        attempt.to_string(),
    );
    annotations.insert(
        crilib::ANNOTATION_GRACE.to_string(),
        grace_of(pod).to_string(),
    );
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.clone(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image: ctr["image"].as_str().unwrap_or_default().to_string(),
            ..Default::default()
        }),
        command: strings(&ctr["command"]),
        args: strings(&ctr["args"]),
        working_dir: ctr["workingDir"].as_str().unwrap_or_default().to_string(),
        envs: envs
            .into_iter()
            .map(|(key, value)| cri::KeyValue { key, value })
            .collect(),
        mounts,
        labels,
        annotations,
        log_path: format!("{name}/{attempt}.log"),
        stdin: ctr["stdin"] == true,
        stdin_once: ctr["stdinOnce"] == true,
        tty: ctr["tty"] == true,
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(resources::container_resources(ctr, qos)),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(caps),
                privileged: sc["privileged"] == true,
                namespace_options: sandbox_config
                    .linux
                    .as_ref()
                    .and_then(|l| l.security_context.as_ref())
                    .and_then(|s| s.namespace_options.clone()),
                run_as_user: run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: run_as_group.map(|value| cri::Int64Value { value }),
                readonly_rootfs: sc["readOnlyRootFilesystem"] == true,
                no_new_privs: sc["allowPrivilegeEscalation"] == false,
                supplemental_groups: psc["supplementalGroups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_i64)
                    .collect(),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let _ = std::fs::create_dir_all(log_dir(&ctx.cfg, pod).join(&name));
    let mut c = ctx.cri.clone();
    let id = match timed(
        &pname,
        "create_container",
        c.create_container(sandbox_id, config, sandbox_config.clone()),
    )
    .await
    {
        Ok(id) => id,
        Err(err) => {
            events::record(
                &ctx.client,
                &ctx.cfg.node_name,
                pod,
                Kind::Warning,
                "Failed",
                format!("Error: {err}"),
                Some(&name),
            );
            waiting_override(st, &name, "CreateContainerError", &err.to_string());
            return Ok(());
        }
    };
    events::record(
        &ctx.client,
        &ctx.cfg.node_name,
        pod,
        Kind::Normal,
        "Created",
        format!("Created container {name}"),
        Some(&name),
    );
    if let Err(err) = timed(&pname, "start_container", c.start_container(&id)).await {
        events::record(
            &ctx.client,
            &ctx.cfg.node_name,
            pod,
            Kind::Warning,
            "Failed",
            format!("Error: {err}"),
            Some(&name),
        );
        return Ok(());
    }
    events::record(
        &ctx.client,
        &ctx.cfg.node_name,
        pod,
        Kind::Normal,
        "Started",
        format!("Started container {name}"),
        Some(&name),
    );
    st.overrides_remove(&name);
    if let Some(hook) = ctr["lifecycle"]["postStart"].as_object() {
        let hook = Value::Object(hook.clone());
        if let Err(msg) = ctx
            .probes
            .run_hook(&ctx.cri, &hook, &id, pod_ip, Duration::from_secs(30))
            .await
        {
            events::record(
                &ctx.client,
                &ctx.cfg.node_name,
                pod,
                Kind::Warning,
                "FailedPostStartHook",
                format!("PostStartHook failed: {msg}"),
                Some(&name),
            );
            kill_container(ctx, pod, ctr, &id, 0).await;
        }
    }
    Ok(())
}

impl PodState {
    fn overrides_remove(&mut self, name: &str) {
        self.overrides.remove(name);
    }
    fn override_of(&self, name: &str) -> Option<(String, String)> {
        self.overrides.get(name).cloned()
    }
}

/// Records a waiting reason that overrides what the runtime shows (image pull errors,
/// configuration errors) until the container starts.
fn waiting_override(st: &mut PodState, name: &str, reason: &str, message: &str) {
    st.overrides
        .insert(name.to_string(), (reason.to_string(), message.to_string()));
}

/// Stops one container: preStop hook, then its stop signal, then SIGKILL after `grace`.
async fn kill_container(ctx: &Ctx, pod: &Value, ctr: &Value, id: &str, grace: i64) {
    let started = Instant::now();
    if let Some(hook) = ctr["lifecycle"]["preStop"].as_object() {
        let hook = Value::Object(hook.clone());
        if let Err(msg) = ctx
            .probes
            .run_hook(
                &ctx.cri,
                &hook,
                id,
                pod["status"]["podIP"].as_str(),
                Duration::from_secs(grace.max(1) as u64),
            )
            .await
        {
            let name = ctr["name"].as_str().unwrap_or_default();
            events::record(
                &ctx.client,
                &ctx.cfg.node_name,
                pod,
                Kind::Warning,
                "FailedPreStopHook",
                format!("PreStopHook failed: {msg}"),
                Some(name),
            );
        }
    }
    let left = (grace - started.elapsed().as_secs() as i64).max(if grace > 0 { 2 } else { 0 });
    let mut c = ctx.cri.clone();
    if let Err(err) = c.stop_container(id, left).await {
        tracing::debug!(%err, container = id, "stopping container");
    }
}

/// Kills every container of the pod (with hooks and grace) and stops the sandbox.
async fn stop_everything(ctx: &Ctx, uid: &str, pod: Option<&Value>, grace: i64) {
    let mut c = ctx.cri.clone();
    let Ok(containers) = c.containers(Some(uid)).await else {
        return;
    };
    let running: Vec<_> = containers
        .into_iter()
        .filter(|x| x.state == cri::ContainerState::ContainerRunning as i32)
        .collect();
    let mut tasks = Vec::new();
    for ctr in running {
        let name = ctr
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let spec = pod.and_then(|p| {
            p["spec"]["containers"]
                .as_array()
                .into_iter()
                .chain(p["spec"]["initContainers"].as_array())
                .flatten()
                .find(|x| x["name"] == name.as_str())
                .cloned()
        });
        let pod_v = pod.cloned().unwrap_or(Value::Null);
        if let Some(p) = pod {
            events::record(
                &ctx.client,
                &ctx.cfg.node_name,
                p,
                Kind::Normal,
                "Killing",
                format!("Stopping container {name}"),
                Some(&name),
            );
        }
        let id = ctr.id.clone();
        tasks.push(async move {
            match spec {
                Some(spec) => kill_container(ctx, &pod_v, &spec, &id, grace).await,
                None => {
                    let mut c = ctx.cri.clone();
                    let _ = c.stop_container(&id, grace).await;
                }
            }
        });
    }
    futures::future::join_all(tasks).await;
    if let Ok(sandboxes) = c.sandboxes(Some(uid)).await {
        for s in sandboxes {
            if s.state == cri::PodSandboxState::SandboxReady as i32 {
                let _ = c.stop_sandbox(&s.id).await;
            }
        }
    }
}

/// Removes everything the runtime has for the pod `uid`: containers, sandboxes (and with
/// them the network namespace and IP), volumes and the pod directory.
async fn teardown(ctx: &Ctx, uid: &str, pod: Option<&Value>, grace: i64) {
    stop_everything(ctx, uid, pod, grace).await;
    let mut c = ctx.cri.clone();
    if let Ok(containers) = c.containers(Some(uid)).await {
        for ctr in containers {
            let _ = c.remove_container(&ctr.id).await;
        }
    }
    if let Ok(sandboxes) = c.sandboxes(Some(uid)).await {
        for s in sandboxes {
            let _ = c.stop_sandbox(&s.id).await;
            if let Err(err) = c.remove_sandbox(&s.id).await {
                tracing::warn!(%err, sandbox = %s.id, "removing sandbox");
            }
        }
    }
    volumes::cleanup(&ctx.cfg.data_dir, uid).await;
    if let Some(p) = pod {
        let _ = std::fs::remove_dir_all(log_dir(&ctx.cfg, p));
    }
}

/// Removes runtime sandboxes of pods that no longer exist here.
async fn remove_orphans(ctx: &Arc<Ctx>, workers: &Workers) {
    let mut c = ctx.cri.clone();
    let Ok(sandboxes) = c.sandboxes(None).await else {
        return;
    };
    let known: Vec<String> = workers.lock().await.keys().cloned().collect();
    for s in sandboxes {
        let Some(uid) = s.labels.get(crilib::LABEL_POD_UID) else {
            continue;
        };
        if !known.contains(uid) {
            tracing::info!(pod_uid = %uid, "removing orphaned pod sandbox");
            teardown(ctx, uid, None, 0).await;
        }
    }
}

async fn post_status(
    ctx: &Ctx,
    pod: &Value,
    st: &mut PodState,
    _obs: Option<&Observed>,
    _ip: Option<&str>,
    waiting: Option<(&str, &str)>,
) -> Result<(), Error> {
    let mut status = json!({"phase": "Pending", "hostIP": ctx.cfg.node_ip.to_string(), "hostIPs": [{"ip": ctx.cfg.node_ip.to_string()}]});
    if let Some((reason, message)) = waiting {
        if reason == "Failed" {
            status["phase"] = json!("Failed");
            status["message"] = json!(message);
        } else {
            let statuses: Vec<Value> = pod["spec"]["containers"].as_array().into_iter().flatten().map(|c| json!({
                "name": c["name"], "image": c["image"], "imageID": "", "ready": false, "started": false, "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": message}},
            })).collect();
            status["containerStatuses"] = Value::Array(statuses);
        }
    }
    patch_status(ctx, pod, st, status).await
}

fn container_status(
    spec: &Value,
    latest: Option<&cri::ContainerStatus>,
    previous: Option<&cri::ContainerStatus>,
    st: &PodState,
    probes: &Probes,
    default_waiting: &str,
) -> Value {
    let name = spec["name"].as_str().unwrap_or_default();
    let terminated = |s: &cri::ContainerStatus| {
        let reason = if s.reason == "OOMKilled" {
            "OOMKilled".to_string()
        } else if s.exit_code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        };
        let mut t = json!({"exitCode": s.exit_code, "reason": reason, "containerID": format!("containerd://{}", s.id)});
        if let Some(x) = ns_to_rfc3339(s.started_at) {
            t["startedAt"] = json!(x);
        }
        if let Some(x) = ns_to_rfc3339(s.finished_at) {
            t["finishedAt"] = json!(x);
        }
        if !s.message.is_empty() {
            t["message"] = json!(s.message);
        }
        t
    };
    let mut out = json!({"name": name, "image": spec["image"], "imageID": "", "ready": false, "started": false, "restartCount": 0});
    if let Some(s) = latest {
        out["restartCount"] = json!(restart_count(s));
        out["containerID"] = json!(format!("containerd://{}", s.id));
        out["imageID"] = json!(s.image_ref);
        match state_of(s) {
            cri::ContainerState::ContainerRunning => {
                let started = probes.started(&s.id, spec).unwrap_or(true);
                out["started"] = json!(started);
                out["ready"] = json!(started && probes.ready(&s.id, spec).unwrap_or(true));
                out["state"] = json!({"running": {"startedAt": ns_to_rfc3339(s.started_at).unwrap_or_else(now)}});
            }
            cri::ContainerState::ContainerExited => {
                out["state"] = json!({"terminated": terminated(s)});
                if let Some(&(delay, _)) = st.backoff.get(name) {
                    let restarting = spec["__restartable"] == true;
                    if restarting {
                        let _ = delay;
                    }
                }
            }
            _ => out["state"] = json!({"waiting": {"reason": "ContainerCreating"}}),
        }
    } else {
        out["state"] = json!({"waiting": {"reason": default_waiting}});
    }
    if let Some(p) = previous {
        out["lastState"] = json!({"terminated": terminated(p)});
    } else if latest.is_some_and(|s| {
        restart_count(s) > 0 && state_of(s) != cri::ContainerState::ContainerExited
    }) {
        out["lastState"] = json!({});
    }
    if let Some((reason, message)) = st.override_of(name) {
        if latest.is_none_or(|s| state_of(s) != cri::ContainerState::ContainerRunning) {
            out["state"] = json!({"waiting": {"reason": reason, "message": message}});
        }
    }
    out
}

async fn post_status_observed(
    ctx: &Ctx,
    pod: &Value,
    st: &mut PodState,
    obs: &Observed,
    pod_ip: Option<&str>,
    initialized: bool,
    failed: Option<(&str, &str)>,
) -> Result<(), Error> {
    let restart_policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
    let specs: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let init_specs: Vec<Value> = pod["spec"]["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let waiting_reason = if initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let mut statuses = Vec::new();
    for spec in &specs {
        let name = spec["name"].as_str().unwrap_or_default();
        let latest = obs.latest.get(name).map(|(_, s)| s);
        let mut cs = container_status(
            spec,
            latest,
            obs.previous.get(name),
            st,
            &ctx.probes,
            waiting_reason,
        );
        // An exited container that will be restarted but is backing off.
        if let Some(s) = latest {
            let will_restart = restarts_after_exit(restart_policy, s.exit_code);
            if state_of(s) == cri::ContainerState::ContainerExited && will_restart {
                if let Some(&(delay, _)) = st.backoff.get(name) {
                    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
                    let pname = pod["metadata"]["name"].as_str().unwrap_or("");
                    let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
                    cs["lastState"] = cs["state"].clone();
                    cs["state"] = json!({"waiting": {"reason": "CrashLoopBackOff",
                        "message": format!("back-off {}s restarting failed container={name} pod={pname}_{ns}({uid})", delay.as_secs())}});
                    events::record(
                        &ctx.client,
                        &ctx.cfg.node_name,
                        pod,
                        Kind::Warning,
                        "BackOff",
                        "Back-off restarting failed container".into(),
                        Some(name),
                    );
                }
            }
        }
        statuses.push(cs);
    }
    let init_statuses: Vec<Value> = init_specs
        .iter()
        .map(|spec| {
            let name = spec["name"].as_str().unwrap_or_default();
            container_status(
                spec,
                obs.latest.get(name).map(|(_, s)| s),
                obs.previous.get(name),
                st,
                &ctx.probes,
                "PodInitializing",
            )
        })
        .collect();

    let running = statuses
        .iter()
        .filter(|c| c["state"]["running"].is_object())
        .count();
    let terminated: Vec<&Value> = statuses
        .iter()
        .filter(|c| c["state"]["terminated"].is_object())
        .collect();
    let all_ready = !statuses.is_empty() && statuses.iter().all(|c| c["ready"] == true);
    let phase = if let Some(("Failed", _)) = failed {
        "Failed"
    } else if !initialized {
        "Pending"
    } else if terminated.len() == statuses.len()
        && !statuses.is_empty()
        && restart_policy != "Always"
    {
        let failures = terminated
            .iter()
            .filter(|c| c["state"]["terminated"]["exitCode"] != 0)
            .count();
        if failures == 0 {
            "Succeeded"
        } else if restart_policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    } else if running > 0
        || statuses.iter().any(|c| {
            c["lastState"]["terminated"].is_object() || c["state"]["terminated"].is_object()
        })
    {
        "Running"
    } else {
        "Pending"
    };
    let ts = now();
    let cond = |t: &str, ok: bool, reason: Option<&str>| {
        let mut c = json!({"type": t, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": ts});
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        c
    };
    let not_ready: Vec<&str> = statuses
        .iter()
        .filter(|c| c["ready"] != true)
        .filter_map(|c| c["name"].as_str())
        .collect();
    let mut conditions = vec![
        cond(
            "PodReadyToStartContainers",
            pod_ip.is_some() || pod["spec"]["hostNetwork"] == true,
            None,
        ),
        cond(
            "Initialized",
            initialized,
            if initialized {
                None
            } else {
                Some("ContainersNotInitialized")
            },
        ),
        cond(
            "Ready",
            all_ready && phase == "Running",
            if all_ready {
                None
            } else {
                Some("ContainersNotReady")
            },
        ),
        cond(
            "ContainersReady",
            all_ready,
            if all_ready {
                None
            } else {
                Some("ContainersNotReady")
            },
        ),
    ];
    if !all_ready {
        for c in conditions
            .iter_mut()
            .filter(|c| c["type"] == "Ready" || c["type"] == "ContainersReady")
        {
            c["message"] = json!(format!(
                "containers with unready status: [{}]",
                not_ready.join(" ")
            ));
        }
    }
    if phase == "Succeeded" || phase == "Failed" {
        for c in conditions
            .iter_mut()
            .filter(|c| c["type"] == "Ready" || c["type"] == "ContainersReady")
        {
            c["status"] = json!("False");
            c["reason"] = json!("PodCompleted");
        }
    }
    let scheduled = pod["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled").cloned())
        .unwrap_or_else(|| json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": ts}));
    conditions.push(scheduled);
    // Keep transition times stable while a condition's status does not change.
    if let Some(old) = pod["status"]["conditions"].as_array() {
        for c in conditions.iter_mut() {
            if let Some(o) = old.iter().find(|o| o["type"] == c["type"]) {
                if o["status"] == c["status"] {
                    c["lastTransitionTime"] = o["lastTransitionTime"].clone();
                }
            }
        }
    }
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": ctx.cfg.node_ip.to_string(),
        "hostIPs": [{"ip": ctx.cfg.node_ip.to_string()}],
        "startTime": st.start_time.clone().unwrap_or_else(now),
        "containerStatuses": statuses,
        "qosClass": resources::qos_class(pod),
    });
    if !init_statuses.is_empty() {
        status["initContainerStatuses"] = Value::Array(init_statuses);
    }
    let ip = pod_ip
        .map(str::to_string)
        .or_else(|| (pod["spec"]["hostNetwork"] == true).then(|| ctx.cfg.node_ip.to_string()));
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    if let Some((_, msg)) = failed {
        status["message"] = json!(msg);
    }
    patch_status(ctx, pod, st, status).await
}

async fn patch_status(
    ctx: &Ctx,
    pod: &Value,
    st: &mut PodState,
    status: Value,
) -> Result<(), Error> {
    let mut cmp = status.clone();
    for c in cmp["conditions"].as_array_mut().into_iter().flatten() {
        c["lastTransitionTime"] = Value::Null;
    }
    if st.last_status.as_ref() == Some(&cmp) {
        return Ok(());
    }
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    match pods
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
    {
        Ok(_) => {
            st.last_status = Some(cmp);
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_status_echo_does_not_resync() {
        let pod = |phase: &str, image: &str, gated: bool| {
            let mut p = json!({
                "metadata": {"name": "p", "uid": "u", "resourceVersion": "1"},
                "spec": {"containers": [{"name": "c", "image": image}]},
                "status": {"phase": phase},
            });
            if gated {
                p["spec"]["readinessGates"] = json!([{"conditionType": "x"}]);
            }
            p
        };
        let posted = |phase: Option<&str>| PodState {
            last_status: phase.map(|p| json!({"phase": p})),
            ..Default::default()
        };
        let cases = [
            (
                "echo of the phase we posted",
                pod("Pending", "a", false),
                pod("Running", "a", false),
                Some("Running"),
                true,
            ),
            (
                "nothing posted yet",
                pod("Pending", "a", false),
                pod("Running", "a", false),
                None,
                false,
            ),
            (
                "phase set by someone else",
                pod("Running", "a", false),
                pod("Failed", "a", false),
                Some("Running"),
                false,
            ),
            (
                "spec changed too",
                pod("Pending", "a", false),
                pod("Running", "b", false),
                Some("Running"),
                false,
            ),
            (
                "readiness gates always sync",
                pod("Pending", "a", true),
                pod("Running", "a", true),
                Some("Running"),
                false,
            ),
        ];
        for (name, old, mut new, phase, want) in cases {
            new["metadata"]["resourceVersion"] = json!("2");
            assert_eq!(own_echo(&old, &new, &posted(phase)), want, "{name}");
        }
    }
}
