//! The horizontal pod autoscaler controller (upstream's `pkg/controller/podautoscaler`):
//! every sync period (15 s, `--horizontal-pod-autoscaler-sync-period` upstream) each
//! `autoscaling/v2` HorizontalPodAutoscaler is reconciled:
//!
//! 1. The target's `scale` subresource gives the current replicas and the pod selector.
//! 2. Each `Resource` metric (cpu, memory) is read from the resource metrics API
//!    (`metrics.k8s.io/v1beta1` PodMetrics with the target's selector) and turned into a
//!    replica proposal by the upstream replica calculator ([`resource_replicas`]):
//!    `Utilization` targets compare usage with the pods' container requests,
//!    `AverageValue` targets the average usage per pod; a ratio within the 0.1 tolerance
//!    keeps the count; failed and deleted pods are ignored; pending pods, and for CPU pods
//!    not yet ready (or whose sample predates readiness within the initialization
//!    period), count as 0 % when scaling up; pods without metrics count as 100 % of the
//!    target when scaling down and 0 % when scaling up; a result that would flip the
//!    direction keeps the count. The largest proposal wins.
//! 3. The behavior ([`normalize`]): stabilization windows (the highest recommendation of
//!    the scale-down window and the lowest of the scale-up window bound the result;
//!    defaults 300 s down, 0 s up), then the scaling policies (Pods/Percent per period,
//!    selectPolicy Max/Min/Disabled; default up: 4 pods or 100 % per 15 s, down: 100 %
//!    per 15 s) against the scale events of each period, then min/max replicas.
//! 4. A changed count is written to the scale subresource (event `SuccessfulRescale`,
//!    "New size: 3; reason: cpu resource utilization (percentage of request) above
//!    target"), and the status is written: current/desired replicas, current metrics,
//!    `lastScaleTime`, and the `AbleToScale`, `ScalingActive` and `ScalingLimited`
//!    conditions with upstream's reasons and messages.
//!
//! The recommendation history and scale events live in memory, as upstream's.
//!
//! Depends on: `api` (the resource table, quantities, selectors), kube-rs. Never the
//! store or the API server's internals.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscaler};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use super::replicaset::events::{EventType, Recorder};
use crate::api::quantity::parse_quantity;
use crate::api::resources::{lookup_kind, split_api_version};

/// How often every autoscaler is reconciled.
pub const SYNC_PERIOD: Duration = Duration::from_secs(15);
/// Usage ratios this close to 1 keep the replica count.
pub const TOLERANCE: f64 = 0.1;
/// CPU samples of pods younger than this are trusted only once the pod is ready.
const CPU_INITIALIZATION_PERIOD: i64 = 300;
/// A pod that turned unready this soon after starting has never been ready.
const INITIAL_READINESS_DELAY: i64 = 30;
/// The default scale-down stabilization window.
const DEFAULT_SCALE_DOWN_WINDOW: i32 = 300;

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

// ---------------------------------------------------------------------------------------
// The replica calculator.

/// What the calculator needs to know about one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    /// Name.
    pub name: String,
    /// `status.phase`.
    pub phase: String,
    /// Whether it is being deleted.
    pub deleting: bool,
    /// The Ready condition: status and last transition time.
    pub ready: Option<(bool, jiff::Timestamp)>,
    /// `status.startTime`.
    pub start_time: Option<jiff::Timestamp>,
    /// The sum of the containers' requests of the resource (milli-units), or the error
    /// naming the container without one.
    pub request: Result<i64, String>,
}

/// One pod's usage sample (milli-units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodMetric {
    /// Summed container usage.
    pub value: i64,
    /// When it was sampled.
    pub timestamp: jiff::Timestamp,
    /// The window it averages over.
    pub window: jiff::SignedDuration,
}

/// A resource metric's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Percent of the pods' requests.
    Utilization(i32),
    /// Average usage per pod (milli-units).
    AverageValue(i64),
}

/// The calculator's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposal {
    /// Proposed replicas.
    pub replicas: i32,
    /// Current utilization (percent of requests), for Utilization targets.
    pub utilization: Option<i32>,
    /// Current average usage per pod (milli-units).
    pub average: i64,
}

#[derive(Debug, Default)]
struct Groups {
    ready: usize,
    unready: HashSet<String>,
    missing: HashSet<String>,
    ignored: HashSet<String>,
}

fn group_pods(
    pods: &[PodInfo],
    metrics: &HashMap<String, PodMetric>,
    cpu: bool,
    now: jiff::Timestamp,
) -> Groups {
    let mut g = Groups::default();
    for pod in pods {
        if pod.deleting || pod.phase == "Failed" {
            g.ignored.insert(pod.name.clone());
            continue;
        }
        if pod.phase == "Pending" {
            g.unready.insert(pod.name.clone());
            continue;
        }
        let Some(metric) = metrics.get(&pod.name) else {
            g.missing.insert(pod.name.clone());
            continue;
        };
        if cpu {
            let unready = match (pod.ready, pod.start_time) {
                (Some((ready, transition)), Some(start)) => {
                    if start + jiff::SignedDuration::from_secs(CPU_INITIALIZATION_PERIOD) > now {
                        // Young pods: trust a sample only if taken after the pod turned ready.
                        !ready || metric.timestamp < transition + metric.window
                    } else {
                        // Older pods: unready only if they never became ready.
                        !ready
                            && start + jiff::SignedDuration::from_secs(INITIAL_READINESS_DELAY)
                                > transition
                    }
                }
                _ => true,
            };
            if unready {
                g.unready.insert(pod.name.clone());
                continue;
            }
        }
        g.ready += 1;
    }
    g
}

/// `(usage ratio, utilization %, average raw usage)` of the sampled pods.
fn ratio(
    metrics: &HashMap<String, PodMetric>,
    requests: &HashMap<String, i64>,
    target: Target,
) -> Result<(f64, Option<i32>, i64), String> {
    let n = metrics.len().max(1) as i64;
    let total: i64 = metrics.values().map(|m| m.value).sum();
    match target {
        Target::Utilization(t) => {
            let mut requested = 0i64;
            for name in metrics.keys() {
                match requests.get(name) {
                    Some(r) => requested += r,
                    None => return Err(format!("missing request for pod {name}")),
                }
            }
            if requested == 0 {
                return Err("no metrics returned matched known pods".into());
            }
            let utilization = (total * 100 / requested) as i32;
            Ok((
                utilization as f64 / t.max(1) as f64,
                Some(utilization),
                total / n,
            ))
        }
        Target::AverageValue(t) => {
            let average = total / n;
            Ok((average as f64 / t.max(1) as f64, None, average))
        }
    }
}

/// Upstream's replica calculation for one resource metric of `current` replicas.
pub fn resource_replicas(
    current: i32,
    target: Target,
    pods: &[PodInfo],
    metrics: &HashMap<String, PodMetric>,
    cpu: bool,
    now: jiff::Timestamp,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let groups = group_pods(pods, metrics, cpu, now);
    let mut metrics: HashMap<String, PodMetric> = metrics
        .iter()
        .filter(|(n, _)| {
            pods.iter().any(|p| &p.name == *n)
                && !groups.ignored.contains(*n)
                && !groups.unready.contains(*n)
        })
        .map(|(n, m)| (n.clone(), *m))
        .collect();
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let mut requests = HashMap::new();
    if let Target::Utilization(_) = target {
        for p in pods {
            requests.insert(p.name.clone(), p.request.clone()?);
        }
    }
    let (usage_ratio, utilization, average) = ratio(&metrics, &requests, target)?;
    let scale_up_with_unready = !groups.unready.is_empty() && usage_ratio > 1.0;
    if !scale_up_with_unready && groups.missing.is_empty() {
        if (1.0 - usage_ratio).abs() <= TOLERANCE {
            return Ok(Proposal {
                replicas: current,
                utilization,
                average,
            });
        }
        return Ok(Proposal {
            replicas: (usage_ratio * groups.ready as f64).ceil() as i32,
            utilization,
            average,
        });
    }
    let fill = |m: &mut HashMap<String, PodMetric>, name: &str, value: i64| {
        m.insert(
            name.to_string(),
            PodMetric {
                value,
                timestamp: now,
                window: jiff::SignedDuration::ZERO,
            },
        );
    };
    for name in &groups.missing {
        // Scaling down: missing pods use all they asked for (the target, for averages);
        // scaling up: nothing.
        let value = if usage_ratio < 1.0 {
            match target {
                Target::Utilization(_) => requests.get(name).copied().unwrap_or(0),
                Target::AverageValue(t) => t,
            }
        } else {
            0
        };
        fill(&mut metrics, name, value);
    }
    if scale_up_with_unready {
        for name in &groups.unready {
            fill(&mut metrics, name, 0);
        }
    }
    let (new_ratio, _, _) = ratio(&metrics, &requests, target)?;
    let keep = Proposal {
        replicas: current,
        utilization,
        average,
    };
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (usage_ratio < 1.0 && new_ratio > 1.0)
        || (usage_ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(keep);
    }
    let replicas = (new_ratio * metrics.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(keep);
    }
    Ok(Proposal {
        replicas,
        utilization,
        average,
    })
}

// ---------------------------------------------------------------------------------------
// Behavior: stabilization and scaling policies.

/// How a direction picks among its policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// The policy allowing the largest change.
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// One scaling policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `Pods` (false) or `Percent` (true).
    pub percent: bool,
    /// Pods or percent.
    pub value: i32,
    /// The period it applies to.
    pub period_seconds: i32,
}

/// The rules of one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Stabilization window.
    pub window_seconds: i32,
    /// Policy selection.
    pub select: Select,
    /// Policies.
    pub policies: Vec<Policy>,
}

/// Scale-up and scale-down rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behavior {
    /// Scaling up.
    pub up: Rules,
    /// Scaling down.
    pub down: Rules,
}

fn rules_from(r: Option<&HPAScalingRules>, up: bool) -> Rules {
    let default_policies = if up {
        vec![
            Policy {
                percent: false,
                value: 4,
                period_seconds: 15,
            },
            Policy {
                percent: true,
                value: 100,
                period_seconds: 15,
            },
        ]
    } else {
        vec![Policy {
            percent: true,
            value: 100,
            period_seconds: 15,
        }]
    };
    let policies = r
        .and_then(|r| r.policies.as_ref())
        .filter(|p| !p.is_empty())
        .map(|ps| {
            ps.iter()
                .map(|p| Policy {
                    percent: p.type_ == "Percent",
                    value: p.value,
                    period_seconds: p.period_seconds,
                })
                .collect()
        })
        .unwrap_or(default_policies);
    Rules {
        window_seconds: r
            .and_then(|r| r.stabilization_window_seconds)
            .unwrap_or(if up { 0 } else { DEFAULT_SCALE_DOWN_WINDOW }),
        select: match r.and_then(|r| r.select_policy.as_deref()) {
            Some("Min") => Select::Min,
            Some("Disabled") => Select::Disabled,
            _ => Select::Max,
        },
        policies,
    }
}

/// The behavior of an autoscaler, upstream's defaults filled in.
pub fn behavior_of(hpa: &HorizontalPodAutoscaler) -> Behavior {
    let b = hpa.spec.as_ref().and_then(|s| s.behavior.as_ref());
    Behavior {
        up: rules_from(b.and_then(|b| b.scale_up.as_ref()), true),
        down: rules_from(b.and_then(|b| b.scale_down.as_ref()), false),
    }
}

/// A change of the replica count made by the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScaleEvent {
    change: i32,
    at: jiff::Timestamp,
}

/// What the controller remembers about one autoscaler between syncs.
#[derive(Debug, Clone, Default)]
pub struct History {
    recommendations: Vec<(jiff::Timestamp, i32)>,
    up_events: Vec<ScaleEvent>,
    down_events: Vec<ScaleEvent>,
}

/// The result of [`normalize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The replicas to scale to.
    pub replicas: i32,
    /// `AbleToScale` reason and message.
    pub able: (&'static str, &'static str),
    /// Whether `ScalingLimited` is true, with its reason and message.
    pub limited: (bool, &'static str, &'static str),
}

fn changed_within(events: &[ScaleEvent], period: i32, now: jiff::Timestamp) -> i32 {
    let cutoff = now - jiff::SignedDuration::from_secs(period as i64);
    events
        .iter()
        .filter(|e| e.at > cutoff)
        .map(|e| e.change)
        .sum()
}

impl History {
    /// Starts the history of a new autoscaler with the current count.
    pub fn init(&mut self, current: i32, now: jiff::Timestamp) {
        if self.recommendations.is_empty() {
            self.recommendations.push((now, current));
        }
    }

    /// Bounds `desired` by the recommendations in the stabilization windows and records
    /// it.
    fn stabilize(
        &mut self,
        b: &Behavior,
        current: i32,
        desired: i32,
        now: jiff::Timestamp,
    ) -> (i32, &'static str, &'static str) {
        let up_cutoff = now - jiff::SignedDuration::from_secs(b.up.window_seconds as i64);
        let down_cutoff = now - jiff::SignedDuration::from_secs(b.down.window_seconds as i64);
        let (mut up, mut down) = (desired, desired);
        for (at, r) in &self.recommendations {
            if *at > up_cutoff {
                up = up.min(*r);
            }
            if *at > down_cutoff {
                down = down.max(*r);
            }
        }
        self.recommendations
            .retain(|(at, _)| *at >= up_cutoff || *at >= down_cutoff);
        self.recommendations.push((now, desired));
        let recommendation = current.max(up).min(down);
        if desired >= current {
            (
                recommendation,
                "ScaleUpStabilized",
                "recent recommendations were lower than current one, applying the lowest recent recommendation",
            )
        } else {
            (
                recommendation,
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            )
        }
    }

    fn up_limit(&self, rules: &Rules, current: i32, now: jiff::Timestamp) -> i32 {
        if rules.select == Select::Disabled {
            return current;
        }
        let mut result: Option<i32> = None;
        for p in &rules.policies {
            let start = current - changed_within(&self.up_events, p.period_seconds, now)
                + changed_within(&self.down_events, p.period_seconds, now);
            let proposed = if p.percent {
                (start as f64 * (1.0 + p.value as f64 / 100.0)).ceil() as i32
            } else {
                start + p.value
            };
            result = Some(match (result, rules.select) {
                (None, _) => proposed,
                (Some(r), Select::Min) => r.min(proposed),
                (Some(r), _) => r.max(proposed),
            });
        }
        result.unwrap_or(current)
    }

    fn down_limit(&self, rules: &Rules, current: i32, now: jiff::Timestamp) -> i32 {
        if rules.select == Select::Disabled {
            return current;
        }
        let mut result: Option<i32> = None;
        for p in &rules.policies {
            let start = current - changed_within(&self.up_events, p.period_seconds, now)
                + changed_within(&self.down_events, p.period_seconds, now);
            let proposed = if p.percent {
                (start as f64 * (1.0 - p.value as f64 / 100.0)) as i32
            } else {
                start - p.value
            };
            // Max lets the count fall furthest: the lowest limit.
            result = Some(match (result, rules.select) {
                (None, _) => proposed,
                (Some(r), Select::Min) => r.max(proposed),
                (Some(r), _) => r.min(proposed),
            });
        }
        result.unwrap_or(current)
    }

    /// Remembers a rescale for the rate policies.
    pub fn record_scale(&mut self, b: &Behavior, from: i32, to: i32, now: jiff::Timestamp) {
        let longest =
            b.up.policies
                .iter()
                .chain(&b.down.policies)
                .map(|p| p.period_seconds)
                .max()
                .unwrap_or(0);
        let cutoff = now - jiff::SignedDuration::from_secs(longest as i64);
        self.up_events.retain(|e| e.at > cutoff);
        self.down_events.retain(|e| e.at > cutoff);
        if to > from {
            self.up_events.push(ScaleEvent {
                change: to - from,
                at: now,
            });
        } else if to < from {
            self.down_events.push(ScaleEvent {
                change: from - to,
                at: now,
            });
        }
    }
}

/// Upstream's `normalizeDesiredReplicasWithBehaviors`: stabilization, then the rate
/// policies and min/max replicas.
pub fn normalize(
    history: &mut History,
    b: &Behavior,
    current: i32,
    desired: i32,
    min: i32,
    max: i32,
    now: jiff::Timestamp,
) -> Normalized {
    let (stabilized, reason, message) = history.stabilize(b, current, desired, now);
    let able = if stabilized != desired {
        (reason, message)
    } else {
        ("ReadyForNewScale", "recommended size matches current size")
    };
    let (replicas, limit_reason, limit_message) = if stabilized > current {
        let limit = history.up_limit(&b.up, current, now).max(current);
        let (allowed, r, m) = if max > limit {
            (
                limit,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            )
        } else {
            (
                max,
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            )
        };
        if stabilized > allowed {
            (allowed, r, m)
        } else {
            (
                stabilized,
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
            )
        }
    } else if stabilized < current {
        let limit = history.down_limit(&b.down, current, now).min(current);
        let (allowed, r, m) = if min < limit {
            (
                limit,
                "ScaleDownLimit",
                "the desired replica count is decreasing faster than the maximum scale rate",
            )
        } else {
            (
                min,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            )
        };
        if stabilized < allowed {
            (allowed, r, m)
        } else {
            (
                stabilized,
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
            )
        }
    } else {
        (
            stabilized,
            "DesiredWithinRange",
            "the desired count is within the acceptable range",
        )
    };
    Normalized {
        replicas,
        able,
        limited: (replicas != stabilized, limit_reason, limit_message),
    }
}

// ---------------------------------------------------------------------------------------
// The controller.

/// A quantity in milli-units as Kubernetes prints it canonically (`50m`, `2`, `3k`).
pub fn milli_quantity(milli: i64) -> String {
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let mut n = milli / 1000;
    for suffix in ["", "k", "M", "G", "T", "P"] {
        if n % 1000 != 0 || n == 0 {
            return format!("{n}{suffix}");
        }
        n /= 1000;
    }
    format!("{n}E")
}

/// A quantity in milli-units, rounded up (upstream's `MilliValue`).
fn milli(v: &Value) -> Option<i64> {
    let q = match v {
        Value::String(s) => parse_quantity(s)?,
        Value::Number(n) => n.as_f64()?,
        _ => return None,
    };
    Some((q * 1000.0 - 1e-6).ceil() as i64)
}

fn pod_info(pod: &Pod, resource: &str) -> PodInfo {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| {
            (
                c.status == "True",
                c.last_transition_time
                    .as_ref()
                    .map(|t| t.0)
                    .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            )
        });
    let mut request = Ok(0i64);
    for c in pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or(&[])
    {
        let r = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .and_then(|q| milli(&Value::String(q.0.clone())));
        match (r, &mut request) {
            (Some(v), Ok(sum)) => *sum += v,
            (None, Ok(_)) => {
                request = Err(format!(
                    "missing request for {resource} in container {} of Pod {}",
                    c.name,
                    pod.name_any()
                ))
            }
            _ => {}
        }
    }
    PodInfo {
        name: pod.name_any(),
        phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        ready,
        start_time: status.and_then(|s| s.start_time.as_ref()).map(|t| t.0),
        request,
    }
}

struct Ctx {
    client: Client,
    recorder: Recorder,
    histories: Mutex<HashMap<String, History>>,
    wake: Notify,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "horizontal-pod-autoscaler"),
        client: client.clone(),
        histories: Mutex::new(HashMap::new()),
        wake: Notify::new(),
    });
    // New or changed autoscalers are looked at right away, not at the next period.
    let watch_ctx = ctx.clone();
    let watch_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut seen: HashMap<String, Option<i64>> = HashMap::new();
        let stream = watcher(
            Api::<HorizontalPodAutoscaler>::all(watch_ctx.client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .applied_objects()
        .take_until(watch_shutdown.cancelled_owned());
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            if let Ok(hpa) = ev {
                let key = hpa.uid().unwrap_or_default();
                let generation = hpa.metadata.generation;
                if seen.insert(key, generation) != Some(generation) {
                    watch_ctx.wake.notify_one();
                }
            }
        }
    });
    let mut tick = tokio::time::interval(SYNC_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = ctx.wake.notified() => {}
        }
        let api: Api<HorizontalPodAutoscaler> = Api::all(ctx.client.clone());
        let hpas = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(err) => {
                tracing::debug!(%err, "listing autoscalers");
                continue;
            }
        };
        let keys: HashSet<String> = hpas.iter().map(key_of).collect();
        ctx.histories.lock().await.retain(|k, _| keys.contains(k));
        for hpa in hpas {
            if hpa.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Err(err) = reconcile(&ctx, &hpa).await {
                tracing::debug!(hpa = %key_of(&hpa), %err, "reconciling autoscaler");
            }
        }
    }
}

fn key_of(hpa: &HorizontalPodAutoscaler) -> String {
    format!("{}/{}", hpa.namespace().unwrap_or_default(), hpa.name_any())
}

/// The conditions being built for the status, keeping transition times of unchanged ones.
struct Conditions {
    list: Vec<Value>,
    now: String,
}

impl Conditions {
    fn new(existing: Option<&Vec<Value>>, now: &str) -> Conditions {
        Conditions {
            list: existing.cloned().unwrap_or_default(),
            now: now.to_string(),
        }
    }

    fn set(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        let status = if status { "True" } else { "False" };
        match self.list.iter_mut().find(|c| c["type"] == type_) {
            Some(c) => {
                if c["status"] != status {
                    c["lastTransitionTime"] = json!(self.now);
                }
                c["status"] = json!(status);
                c["reason"] = json!(reason);
                c["message"] = json!(message);
            }
            None => self.list.push(json!({"type": type_, "status": status,
                "lastTransitionTime": self.now, "reason": reason, "message": message})),
        }
    }
}

/// The target's scale: (spec replicas, selector string).
async fn get_scale(client: &Client, ns: &str, path: &str) -> Result<(i32, String), String> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let scale: Value = client.request(req).await.map_err(|e| api_message(&e))?;
    let _ = ns;
    Ok((
        scale["spec"]["replicas"].as_i64().unwrap_or(0) as i32,
        scale["status"]["selector"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ))
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// PodMetrics of the selected pods: pod name → summed usage of `resource`.
async fn pod_metrics(
    client: &Client,
    ns: &str,
    selector: &str,
    resource: &str,
) -> Result<HashMap<String, PodMetric>, String> {
    let mut url = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods");
    if !selector.is_empty() {
        url.push_str("?labelSelector=");
        url.push_str(&form_urlencoded::byte_serialize(selector.as_bytes()).collect::<String>());
    }
    let req = http::Request::get(url)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let list: Value = client.request(req).await.map_err(|e| {
        format!(
            "unable to get metrics for resource {resource}: unable to fetch metrics from resource metrics API: {}",
            api_message(&e)
        )
    })?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return Err(format!(
            "unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
        ));
    }
    let mut out = HashMap::new();
    for m in items {
        let Some(name) = m["metadata"]["name"].as_str() else {
            continue;
        };
        let containers = m["containers"].as_array().cloned().unwrap_or_default();
        let values: Option<Vec<i64>> = containers
            .iter()
            .map(|c| milli(&c["usage"][resource]))
            .collect();
        let Some(values) = values.filter(|v| !v.is_empty()) else {
            continue;
        };
        let timestamp = m["timestamp"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(jiff::Timestamp::now);
        let window = m["window"]
            .as_str()
            .and_then(|w| w.trim_end_matches('s').parse::<f64>().ok())
            .map(jiff::SignedDuration::from_secs_f64)
            .unwrap_or(jiff::SignedDuration::ZERO);
        out.insert(
            name.to_string(),
            PodMetric {
                value: values.iter().sum(),
                timestamp,
                window,
            },
        );
    }
    Ok(out)
}

/// One metric's proposal: (replicas, metric name for messages, its status).
type MetricResult = Result<(i32, String, Value), (String, String)>;

async fn compute_metric(
    ctx: &Ctx,
    ns: &str,
    selector: &str,
    current: i32,
    spec: &Value,
    now: jiff::Timestamp,
) -> MetricResult {
    let kind = spec["type"].as_str().unwrap_or_default();
    if kind != "Resource" {
        return Err((
            "InvalidMetricSourceType".into(),
            format!("unsupported metric source type {kind:?} (kaji serves Resource metrics)"),
        ));
    }
    let resource = spec["resource"]["name"].as_str().unwrap_or_default();
    let t = &spec["resource"]["target"];
    let fail = |e: String| {
        (
            "FailedGetResourceMetric".to_string(),
            format!("failed to get {resource} resource metric value: {e}"),
        )
    };
    let target = match (
        t["type"].as_str(),
        t["averageUtilization"].as_i64(),
        milli(&t["averageValue"]),
    ) {
        (Some("Utilization"), Some(u), _) => Target::Utilization(u as i32),
        (Some("AverageValue"), _, Some(v)) => Target::AverageValue(v),
        _ => {
            return Err(fail(
                "invalid resource metric source: neither a utilization target nor a value target was set"
                    .into(),
            ));
        }
    };
    let what = match target {
        Target::Utilization(_) => format!("failed to get {resource} utilization"),
        Target::AverageValue(_) => format!("failed to get {resource} usage"),
    };
    let metrics = pod_metrics(&ctx.client, ns, selector, resource)
        .await
        .map_err(|e| fail(format!("{what}: {e}")))?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let pods = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| {
            fail(format!(
                "{what}: unable to get pods while calculating replica count: {}",
                api_message(&e)
            ))
        })?
        .items;
    let infos: Vec<PodInfo> = pods.iter().map(|p| pod_info(p, resource)).collect();
    let proposal = resource_replicas(current, target, &infos, &metrics, resource == "cpu", now)
        .map_err(|e| fail(format!("{what}: {e}")))?;
    let (name, current_status) = match target {
        Target::Utilization(_) => (
            format!("{resource} resource utilization (percentage of request)"),
            json!({"averageUtilization": proposal.utilization.unwrap_or(0),
                   "averageValue": milli_quantity(proposal.average)}),
        ),
        Target::AverageValue(_) => (
            format!("{resource} resource"),
            json!({"averageValue": milli_quantity(proposal.average)}),
        ),
    };
    Ok((
        proposal.replicas,
        name,
        json!({"type": "Resource", "resource": {"name": resource, "current": current_status}}),
    ))
}

async fn reconcile(ctx: &Ctx, hpa: &HorizontalPodAutoscaler) -> Result<(), Error> {
    let now = jiff::Timestamp::now();
    let now_s = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let key = key_of(hpa);
    let ns = hpa.namespace().unwrap_or_default();
    let raw = serde_json::to_value(hpa).unwrap_or_default();
    let spec = &raw["spec"];
    let old_status = &raw["status"];
    let mut conditions = Conditions::new(old_status["conditions"].as_array(), &now_s);
    let mut status = json!({
        "currentReplicas": old_status["currentReplicas"].as_i64().unwrap_or(0),
        "desiredReplicas": old_status["desiredReplicas"].as_i64().unwrap_or(0),
        "observedGeneration": hpa.metadata.generation,
    });
    if let Some(t) = old_status.get("lastScaleTime").filter(|t| !t.is_null()) {
        status["lastScaleTime"] = t.clone();
    }
    if let Some(m) = old_status.get("currentMetrics").filter(|m| !m.is_null()) {
        status["currentMetrics"] = m.clone();
    }
    let target_ref = &spec["scaleTargetRef"];
    let (group, version) = split_api_version(target_ref["apiVersion"].as_str().unwrap_or(""));
    let kind = target_ref["kind"].as_str().unwrap_or_default();
    let target_name = target_ref["name"].as_str().unwrap_or_default();
    let scale = match lookup_kind(group, version, kind).filter(|r| r.subresource("scale").is_some())
    {
        None => Err(format!("no matches for kind {kind:?} in group {group:?}")),
        Some(ri) => {
            let prefix = if group.is_empty() {
                format!("/api/{version}")
            } else {
                format!("/apis/{group}/{version}")
            };
            get_scale(
                &ctx.client,
                &ns,
                &format!("{prefix}/namespaces/{ns}/{}/{target_name}/scale", ri.plural),
            )
            .await
            .map(|s| {
                (
                    s,
                    format!("{prefix}/namespaces/{ns}/{}/{target_name}/scale", ri.plural),
                )
            })
        }
    };
    let ((current, selector), scale_path) = match scale {
        Ok(s) => s,
        Err(e) => {
            let message =
                format!("the HPA controller was unable to get the target's current scale: {e}");
            ctx.recorder
                .event(hpa, EventType::Warning, "FailedGetScale", e);
            conditions.set("AbleToScale", false, "FailedGetScale", &message);
            status["conditions"] = json!(conditions.list);
            return write_status(ctx, hpa, status).await;
        }
    };
    conditions.set(
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale",
    );
    let min = spec["minReplicas"].as_i64().unwrap_or(1) as i32;
    let max = spec["maxReplicas"].as_i64().unwrap_or(1) as i32;
    let behavior = behavior_of(hpa);
    let mut histories = ctx.histories.lock().await;
    let history = histories.entry(key.clone()).or_default();
    history.init(current, now);
    let desired;
    let mut reason = String::new();
    if current == 0 && min != 0 {
        desired = 0;
        conditions.set(
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero",
        );
    } else if current > max {
        desired = max;
        reason = "Current number of replicas above Spec.MaxReplicas".into();
    } else if current < min {
        desired = min;
        reason = "Current number of replicas below Spec.MinReplicas".into();
    } else {
        let metric_specs = spec["metrics"].as_array().cloned().unwrap_or_default();
        let mut proposal = 0;
        let mut metric_name = String::new();
        let mut statuses = Vec::new();
        let mut first_error: Option<(String, String)> = None;
        let mut invalid = 0;
        for m in &metric_specs {
            match compute_metric(ctx, &ns, &selector, current, m, now).await {
                Ok((replicas, name, st)) => {
                    statuses.push(st);
                    if replicas > proposal {
                        proposal = replicas;
                        metric_name = name;
                    }
                }
                Err((r, message)) => {
                    invalid += 1;
                    ctx.recorder
                        .event(hpa, EventType::Warning, &r, message.clone());
                    statuses.push(json!({"type": ""}));
                    first_error.get_or_insert((r, message));
                }
            }
        }
        statuses.retain(|s| s["type"] != "");
        status["currentMetrics"] = json!(statuses);
        if invalid >= metric_specs.len().max(1) || (invalid > 0 && proposal < current) {
            let (r, message) = first_error.unwrap_or_else(|| {
                (
                    "InvalidMetricSourceType".into(),
                    "no metrics specified".into(),
                )
            });
            conditions.set(
                "ScalingActive",
                false,
                &r,
                &format!("the HPA was unable to compute the replica count: {message}"),
            );
            ctx.recorder.event(
                hpa,
                EventType::Warning,
                "FailedComputeMetricsReplicas",
                format!(
                    "invalid metrics ({invalid} invalid out of {}), first error is: {message}",
                    metric_specs.len()
                ),
            );
            status["currentReplicas"] = json!(current);
            status["conditions"] = json!(conditions.list);
            drop(histories);
            return write_status(ctx, hpa, status).await;
        }
        conditions.set(
            "ScalingActive",
            true,
            "ValidMetricFound",
            &format!(
                "the HPA was able to successfully calculate a replica count from {metric_name}"
            ),
        );
        if proposal > current {
            reason = format!("{metric_name} above target");
        } else if proposal < current {
            reason = "All metrics below target".into();
        }
        let n = normalize(history, &behavior, current, proposal, min, max, now);
        conditions.set("AbleToScale", true, n.able.0, n.able.1);
        conditions.set("ScalingLimited", n.limited.0, n.limited.1, n.limited.2);
        desired = n.replicas;
    }
    if desired != current {
        let patch = json!({"spec": {"replicas": desired}});
        let req = http::Request::patch(&scale_path)
            .header(http::header::CONTENT_TYPE, "application/merge-patch+json")
            .body(serde_json::to_vec(&patch).unwrap_or_default());
        let result = match req {
            Ok(req) => ctx
                .client
                .request::<Value>(req)
                .await
                .map_err(|e| api_message(&e)),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(_) => {
                history.record_scale(&behavior, current, desired, now);
                conditions.set(
                    "AbleToScale",
                    true,
                    "SucceededRescale",
                    &format!("the HPA controller was able to update the target scale to {desired}"),
                );
                ctx.recorder.event(
                    hpa,
                    EventType::Normal,
                    "SuccessfulRescale",
                    format!("New size: {desired}; reason: {reason}"),
                );
                tracing::info!(hpa = %key, from = current, to = desired, %reason, "rescaled");
                status["lastScaleTime"] = json!(now_s);
            }
            Err(e) => {
                conditions.set(
                    "AbleToScale",
                    false,
                    "FailedUpdateScale",
                    &format!("the HPA controller was unable to update the target scale: {e}"),
                );
                ctx.recorder.event(
                    hpa,
                    EventType::Warning,
                    "FailedRescale",
                    format!("New size: {desired}; reason: {reason}; error: {e}"),
                );
            }
        }
    }
    drop(histories);
    status["currentReplicas"] = json!(current);
    status["desiredReplicas"] = json!(desired);
    status["conditions"] = json!(conditions.list);
    write_status(ctx, hpa, status).await
}

async fn write_status(
    ctx: &Ctx,
    hpa: &HorizontalPodAutoscaler,
    status: Value,
) -> Result<(), Error> {
    let old = serde_json::to_value(&hpa.status).unwrap_or_default();
    if old == status {
        return Ok(());
    }
    let api: Api<HorizontalPodAutoscaler> =
        Api::namespaced(ctx.client.clone(), &hpa.namespace().unwrap_or_default());
    api.patch_status(
        &hpa.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn pod(name: &str, request: i64) -> PodInfo {
        PodInfo {
            name: name.into(),
            phase: "Running".into(),
            deleting: false,
            ready: Some((true, t(0))),
            start_time: Some(t(0)),
            request: Ok(request),
        }
    }

    fn metric(value: i64) -> PodMetric {
        PodMetric {
            value,
            timestamp: t(1000),
            window: jiff::SignedDuration::from_secs(10),
        }
    }

    #[test]
    fn replica_calculation() {
        // The HPA docs' algorithm: desired = ceil(current * currentMetric / target).
        // https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/#algorithm-details
        // "if the current metric value is 200m, and the desired value is 100m, the number
        // of replicas will be doubled"; "if the current value is instead 50m, you'll halve
        // the number of replicas"; a ratio within the 0.1 tolerance skips scaling.
        let now = t(1000);
        struct Case {
            name: &'static str,
            current: i32,
            target: Target,
            pods: Vec<PodInfo>,
            metrics: Vec<(&'static str, i64)>,
            want: Result<i32, &'static str>,
        }
        let two = || vec![pod("a", 100), pod("b", 100)];
        let mut unready = pod("c", 100);
        unready.ready = Some((false, t(990)));
        unready.start_time = Some(t(980));
        let mut pending = pod("c", 100);
        pending.phase = "Pending".into();
        let mut failed = pod("d", 100);
        failed.phase = "Failed".into();
        let mut no_request = pod("b", 0);
        no_request.request = Err("missing request for cpu in container x of Pod b".into());
        let cases = vec![
            Case {
                name: "docs: 200m against 100m doubles",
                current: 2,
                target: Target::AverageValue(100),
                pods: two(),
                metrics: vec![("a", 200), ("b", 200)],
                want: Ok(4),
            },
            Case {
                name: "docs: 50m against 100m halves",
                current: 2,
                target: Target::AverageValue(100),
                pods: two(),
                metrics: vec![("a", 50), ("b", 50)],
                want: Ok(1),
            },
            Case {
                name: "within tolerance keeps the count",
                current: 2,
                target: Target::Utilization(50),
                pods: two(),
                metrics: vec![("a", 54), ("b", 53)],
                want: Ok(2),
            },
            Case {
                name: "utilization 150% of a 50% target triples",
                current: 2,
                target: Target::Utilization(50),
                pods: two(),
                metrics: vec![("a", 150), ("b", 150)],
                want: Ok(6),
            },
            Case {
                name: "missing pod counts 0% when scaling up",
                current: 3,
                target: Target::Utilization(50),
                pods: vec![pod("a", 100), pod("b", 100), pod("c", 100)],
                metrics: vec![("a", 100), ("b", 100)],
                // 200 / 300 = 66% → ratio 1.33 → ceil(1.33 * 3) = 4.
                want: Ok(4),
            },
            Case {
                name: "missing pod counts 100% when scaling down",
                current: 3,
                target: Target::Utilization(50),
                pods: vec![pod("a", 100), pod("b", 100), pod("c", 100)],
                metrics: vec![("a", 10), ("b", 10)],
                // (10 + 10 + 100) / 300 = 40% → ratio 0.8 → ceil(2.4) = 3.
                want: Ok(3),
            },
            Case {
                name: "unready pod counts 0% when scaling up",
                current: 3,
                target: Target::Utilization(50),
                pods: vec![pod("a", 100), pod("b", 100), unready.clone()],
                metrics: vec![("a", 100), ("b", 100), ("c", 500)],
                // a, b at 100% (ratio 2); with c at 0: 200/300 → 1.33 → 4.
                want: Ok(4),
            },
            Case {
                name: "unready pod ignored when scaling down",
                current: 3,
                target: Target::Utilization(50),
                pods: vec![pod("a", 100), pod("b", 100), unready],
                metrics: vec![("a", 10), ("b", 10), ("c", 500)],
                want: Ok(1),
            },
            Case {
                name: "pending pod is unready, failed pod ignored",
                current: 2,
                target: Target::Utilization(50),
                pods: vec![pod("a", 100), pending, failed],
                metrics: vec![("a", 100)],
                // a at 200% of target; the pending pod at 0: 100/200 = 50% → keep 2.
                want: Ok(2),
            },
            Case {
                name: "a direction flip keeps the count",
                current: 2,
                target: Target::Utilization(50),
                pods: vec![pod("a", 100), pod("b", 100), pod("c", 100)],
                metrics: vec![("a", 40), ("b", 40)],
                want: Ok(2),
            },
            Case {
                name: "no pods",
                current: 1,
                target: Target::Utilization(50),
                pods: vec![],
                metrics: vec![],
                want: Err("no pods returned by selector while calculating replica count"),
            },
            Case {
                name: "no metrics for ready pods",
                current: 1,
                target: Target::Utilization(50),
                pods: vec![pod("a", 100)],
                metrics: vec![("zzz", 10)],
                want: Err("did not receive metrics for targeted pods (pods might be unready)"),
            },
            Case {
                name: "missing request",
                current: 2,
                target: Target::Utilization(50),
                pods: vec![pod("a", 100), no_request],
                metrics: vec![("a", 100), ("b", 100)],
                want: Err("missing request for cpu in container x of Pod b"),
            },
        ];
        for c in cases {
            let metrics: HashMap<String, PodMetric> = c
                .metrics
                .iter()
                .map(|(n, v)| (n.to_string(), metric(*v)))
                .collect();
            let got = resource_replicas(c.current, c.target, &c.pods, &metrics, true, now);
            match (&got, c.want) {
                (Ok(p), Ok(w)) => assert_eq!(p.replicas, w, "{}", c.name),
                (Err(e), Err(w)) => assert_eq!(e, w, "{}", c.name),
                _ => panic!("{}: got {got:?}", c.name),
            }
        }
        // The utilization and average reported in the status.
        let metrics: HashMap<String, PodMetric> =
            [("a".to_string(), metric(30)), ("b".to_string(), metric(10))].into();
        let p = resource_replicas(2, Target::Utilization(50), &two(), &metrics, true, now).unwrap();
        assert_eq!((p.utilization, p.average, p.replicas), (Some(20), 20, 1));
    }

    fn default_behavior() -> Behavior {
        behavior_of(&HorizontalPodAutoscaler::default())
    }

    #[test]
    fn behavior_defaults() {
        let b = default_behavior();
        assert_eq!(b.up.window_seconds, 0);
        assert_eq!(b.down.window_seconds, 300);
        assert_eq!(b.up.policies.len(), 2);
        assert_eq!(b.down.select, Select::Max);
    }

    #[test]
    fn stabilization_and_policies() {
        let b = default_behavior();
        // Scale up from 1 to 20 with max 10: 4 pods or 100% per 15 s → 5.
        let mut h = History::default();
        h.init(1, t(0));
        let n = normalize(&mut h, &b, 1, 20, 1, 10, t(0));
        assert_eq!(n.replicas, 5);
        assert_eq!(
            n.limited,
            (
                true,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate"
            )
        );
        h.record_scale(&b, 1, 5, t(0));
        // Ten seconds later the period still counts the +4: start of period is 1.
        let n = normalize(&mut h, &b, 5, 20, 1, 10, t(10));
        assert_eq!(n.replicas, 5);
        // After the period: 100% of 5 → 10 (= max).
        let n = normalize(&mut h, &b, 5, 20, 1, 10, t(20));
        assert_eq!(n.replicas, 10);
        assert_eq!(n.limited.1, "TooManyReplicas");
        h.record_scale(&b, 5, 10, t(20));
        // Scale down is held by the 300 s window: recent recommendations of 20.
        let n = normalize(&mut h, &b, 10, 2, 1, 10, t(60));
        assert_eq!(n.replicas, 10);
        assert_eq!(n.able.0, "ScaleDownStabilized");
        // Later, the window holds only the recommendation of 2 made at 60 s.
        let n = normalize(&mut h, &b, 10, 0, 2, 10, t(321));
        assert_eq!(n.replicas, 2);
        assert_eq!(n.able.0, "ScaleDownStabilized");
        assert_eq!(n.limited.1, "DesiredWithinRange");
        // After the window: straight down (100% per 15 s), but not below min.
        let n = normalize(&mut h, &b, 10, 0, 2, 10, t(700));
        assert_eq!(n.replicas, 2);
        assert_eq!(n.able.0, "ReadyForNewScale");
        assert_eq!(
            n.limited,
            (
                true,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count"
            )
        );

        // A short window and a Pods policy of 1 per 60 s, selectPolicy Min.
        let mut fast = b.clone();
        fast.down = Rules {
            window_seconds: 0,
            select: Select::Min,
            policies: vec![
                Policy {
                    percent: false,
                    value: 1,
                    period_seconds: 60,
                },
                Policy {
                    percent: true,
                    value: 50,
                    period_seconds: 60,
                },
            ],
        };
        let mut h = History::default();
        h.init(4, t(0));
        let n = normalize(&mut h, &fast, 4, 1, 1, 10, t(0));
        assert_eq!(n.replicas, 3);
        assert_eq!(n.limited.1, "ScaleDownLimit");
        h.record_scale(&fast, 4, 3, t(0));
        let n = normalize(&mut h, &fast, 3, 1, 1, 10, t(30));
        assert_eq!(n.replicas, 3);
        let n = normalize(&mut h, &fast, 3, 1, 1, 10, t(61));
        assert_eq!(n.replicas, 2);
        // Disabled: no scaling down at all.
        fast.down.select = Select::Disabled;
        let n = normalize(&mut h, &fast, 3, 1, 1, 10, t(200));
        assert_eq!(n.replicas, 3);
        // Within range.
        let mut h = History::default();
        let n = normalize(&mut h, &b, 3, 3, 1, 10, t(0));
        assert_eq!(n.replicas, 3);
        assert_eq!(n.able.0, "ReadyForNewScale");
        assert_eq!(
            n.limited,
            (
                false,
                "DesiredWithinRange",
                "the desired count is within the acceptable range"
            )
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(milli_quantity(50), "50m");
        assert_eq!(milli_quantity(2000), "2");
        assert_eq!(milli_quantity(0), "0");
        assert_eq!(milli_quantity(3_000_000), "3k");
        assert_eq!(milli(&json!("990000000n")), Some(990));
        assert_eq!(milli(&json!("1500Ki")), Some(1_536_000_000));
        assert_eq!(milli(&json!("50m")), Some(50));
    }
}
