//! Node-pressure eviction, as the kubelet's eviction manager does it: every
//! [`MONITORING_INTERVAL`] the manager observes the eviction signals, compares them with
//! the configured thresholds, publishes the node's pressure conditions (MemoryPressure,
//! DiskPressure, PIDPressure; held for the pressure-transition period after the last
//! observation) and, while a threshold (hard at once, soft after its grace period) is
//! met, fails one pod per interval: the worst-ranked, never a critical one.
//!
//! Signals (all measured here, in the agent's own process):
//! - `memory.available`: `MemTotal` − working set, the working set being `MemTotal −
//!   MemFree − Inactive(file)` from `/proc/meminfo` (the root cgroup's usage minus its
//!   inactive file pages, the same quantity the kubelet reads from the root cgroup on
//!   both cgroup v1 and v2; *not* the kernel's `MemAvailable`);
//! - `nodefs.available`, `nodefs.inodesFree`: `statvfs` of the data dir;
//! - `imagefs.available`, `imagefs.inodesFree`: `statvfs` of containerd's root;
//! - `pid.available`: min(`kernel.pid_max`, `kernel.threads-max`) minus the tasks the
//!   kernel schedules (`/proc/loadavg`'s total, the count the kubelet takes from sysinfo).
//!
//! Thresholds use the kubelet's flag syntax (`memory.available<100Mi,nodefs.available<10%`)
//! through `--kubelet-arg` (`eviction-hard`, `eviction-soft`, `eviction-soft-grace-period`,
//! `eviction-pressure-transition-period`, `eviction-max-pod-grace-period`); setting
//! `eviction-hard` replaces the defaults, as in the kubelet.
//!
//! An evicted pod gets phase `Failed`, reason `Evicted`, the kubelet's message and a
//! `DisruptionTarget` condition (`TerminationByKubelet`) in one status patch, plus an
//! `Evicted` Warning event; its pod worker (`super::pod_workers`) sees the terminal phase
//! and kills the containers at once. On its next pass the manager re-asserts that status
//! should a racing worker write have overwritten it, and reports the killed containers
//! as terminated (exit code 137). Ranking and messages are pure functions, unit-tested below.
//!
//! Depends on: `agent::stats` (per-pod usage), `api::quantity`. Must not depend on:
//! `apiserver`, `store`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::events;
use super::stats::{self, Stats, Summary};

/// How often signals are observed and at most one pod is evicted.
pub const MONITORING_INTERVAL: Duration = Duration::from_secs(10);
/// The kubelet's default `evictionPressureTransitionPeriod`.
pub const DEFAULT_PRESSURE_TRANSITION_PERIOD: Duration = Duration::from_secs(300);
/// The default hard thresholds: k3s's disk thresholds (5 % free on the node and image
/// filesystems, where the kubelet's own defaults of 10 % and 15 % would evict on a
/// well-used edge device's disk) plus the kubelet's memory threshold.
pub const DEFAULT_EVICTION_HARD: &str =
    "memory.available<100Mi,nodefs.available<5%,imagefs.available<5%";
/// Pods at or above this priority (`system-cluster-critical`, `system-node-critical`)
/// are never evicted.
pub const SYSTEM_CRITICAL_PRIORITY: i64 = 2_000_000_000;
/// The pod status reason of an evicted pod (and the event reason).
pub const REASON_EVICTED: &str = "Evicted";

/// Errors of the eviction settings.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    /// The signal is not one the kubelet knows.
    #[error("unsupported eviction signal {0:?}")]
    UnsupportedSignal(String),
    /// The statement is not `<signal><operator><value>` with operator `<`.
    #[error("invalid eviction threshold {0:?}: expected <signal><<quantity or percentage>")]
    Syntax(String),
    /// The value is not a positive percentage up to 100% or a non-negative quantity.
    #[error("invalid eviction threshold {0:?}: {1}")]
    Value(String, String),
    /// A signal appears twice in one flag.
    #[error("found duplicate eviction threshold for signal {0}")]
    Duplicate(String),
    /// A soft threshold lacks `eviction-soft-grace-period`.
    #[error("no grace period specified for soft eviction threshold {0}")]
    NoGracePeriod(String),
    /// A duration or number cannot be parsed.
    #[error("invalid {0} {1:?}")]
    Setting(&'static str, String),
}

/// An eviction signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// `memory.available`.
    MemoryAvailable,
    /// `nodefs.available`.
    NodeFsAvailable,
    /// `nodefs.inodesFree`.
    NodeFsInodesFree,
    /// `imagefs.available`.
    ImageFsAvailable,
    /// `imagefs.inodesFree`.
    ImageFsInodesFree,
    /// `pid.available`.
    PidAvailable,
}

impl Signal {
    /// Every signal.
    pub const ALL: [Signal; 6] = [
        Signal::MemoryAvailable,
        Signal::NodeFsAvailable,
        Signal::NodeFsInodesFree,
        Signal::ImageFsAvailable,
        Signal::ImageFsInodesFree,
        Signal::PidAvailable,
    ];

    /// The flag name (`memory.available`).
    pub fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodeFsAvailable => "nodefs.available",
            Signal::NodeFsInodesFree => "nodefs.inodesFree",
            Signal::ImageFsAvailable => "imagefs.available",
            Signal::ImageFsInodesFree => "imagefs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    /// The signal of a flag name.
    pub fn from_name(name: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The node condition a met threshold of this signal reports.
    pub fn condition(self) -> Condition {
        match self {
            Signal::MemoryAvailable => Condition::MemoryPressure,
            Signal::PidAvailable => Condition::PidPressure,
            _ => Condition::DiskPressure,
        }
    }

    /// The starved resource named in eviction messages.
    pub fn resource(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory",
            Signal::NodeFsAvailable | Signal::ImageFsAvailable => "ephemeral-storage",
            Signal::NodeFsInodesFree | Signal::ImageFsInodesFree => "inodes",
            Signal::PidAvailable => "pids",
        }
    }
}

/// A node pressure condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Condition {
    /// `MemoryPressure`.
    MemoryPressure,
    /// `DiskPressure`.
    DiskPressure,
    /// `PIDPressure`.
    PidPressure,
}

impl Condition {
    /// The condition type.
    pub fn type_name(self) -> &'static str {
        match self {
            Condition::MemoryPressure => "MemoryPressure",
            Condition::DiskPressure => "DiskPressure",
            Condition::PidPressure => "PIDPressure",
        }
    }
}

/// The pressure conditions currently reported True.
pub type Pressure = BTreeSet<Condition>;

/// A threshold's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdValue {
    /// An absolute quantity (bytes, inodes, PIDs).
    Quantity(u64),
    /// A fraction (0, 1] of the capacity.
    Percentage(f64),
}

/// One eviction threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// The signal.
    pub signal: Signal,
    /// Met when the available amount is below this.
    pub value: ThresholdValue,
    /// How long it must be met before pods are evicted (zero for hard thresholds).
    pub grace_period: Duration,
    /// Whether it is an `eviction-hard` threshold.
    pub hard: bool,
}

impl Threshold {
    /// The threshold in units of the signal, for a resource of `capacity`.
    pub fn quantity(&self, capacity: u64) -> u64 {
        match self.value {
            ThresholdValue::Quantity(q) => q,
            ThresholdValue::Percentage(p) => (capacity as f64 * p) as u64,
        }
    }

    /// Whether the observation meets (is below) the threshold.
    pub fn met(&self, obs: &Observation) -> bool {
        obs.available < self.quantity(obs.capacity)
    }
}

/// Parses a threshold list (`memory.available<100Mi,nodefs.available<10%`). Thresholds
/// of zero (`<0`, `<0%`) are dropped: they can never be met.
pub fn parse_thresholds(spec: &str, hard: bool) -> Result<Vec<Threshold>, ParseError> {
    let mut out: Vec<Threshold> = Vec::new();
    for stmt in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) = stmt
            .split_once('<')
            .ok_or_else(|| ParseError::Syntax(stmt.to_string()))?;
        let signal = Signal::from_name(name.trim())
            .ok_or_else(|| ParseError::UnsupportedSignal(name.trim().to_string()))?;
        if out.iter().any(|t| t.signal == signal) {
            return Err(ParseError::Duplicate(signal.name().to_string()));
        }
        let value = value.trim();
        let bad = |why: &str| ParseError::Value(stmt.to_string(), why.to_string());
        let value = if let Some(pct) = value.strip_suffix('%') {
            let p: f64 = pct.parse().map_err(|_| bad("not a percentage"))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(bad("percentage must be between 0% and 100%"));
            }
            if p == 0.0 {
                continue;
            }
            ThresholdValue::Percentage(p / 100.0)
        } else {
            let q =
                crate::api::quantity::parse_quantity(value).ok_or_else(|| bad("not a quantity"))?;
            if q < 0.0 {
                return Err(bad("must be non-negative"));
            }
            if q == 0.0 {
                continue;
            }
            ThresholdValue::Quantity(q.ceil() as u64)
        };
        out.push(Threshold {
            signal,
            value,
            grace_period: Duration::ZERO,
            hard,
        });
    }
    Ok(out)
}

/// Parses `eviction-soft-grace-period` (`memory.available=1m30s,nodefs.available=2m`).
pub fn parse_grace_periods(spec: &str) -> Result<HashMap<Signal, Duration>, ParseError> {
    let mut out = HashMap::new();
    for stmt in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) = stmt
            .split_once('=')
            .ok_or_else(|| ParseError::Setting("eviction-soft-grace-period", stmt.into()))?;
        let signal = Signal::from_name(name.trim())
            .ok_or_else(|| ParseError::UnsupportedSignal(name.trim().to_string()))?;
        let d = crate::config::parse_duration(value.trim())
            .map_err(|_| ParseError::Setting("eviction-soft-grace-period", stmt.into()))?;
        out.insert(signal, d);
    }
    Ok(out)
}

/// The raw `--kubelet-arg` eviction settings.
#[derive(Debug, Clone, Default)]
pub struct EvictionArgs {
    hard: Option<String>,
    soft: Option<String>,
    soft_grace_period: Option<String>,
    pressure_transition_period: Option<String>,
    max_pod_grace_period: Option<String>,
}

impl EvictionArgs {
    /// Takes a `--kubelet-arg` key=value if it is an eviction setting (returns false
    /// for other keys).
    pub fn accept(&mut self, key: &str, value: &str) -> bool {
        let slot = match key {
            "eviction-hard" => &mut self.hard,
            "eviction-soft" => &mut self.soft,
            "eviction-soft-grace-period" => &mut self.soft_grace_period,
            "eviction-pressure-transition-period" => &mut self.pressure_transition_period,
            "eviction-max-pod-grace-period" => &mut self.max_pod_grace_period,
            _ => return false,
        };
        *slot = Some(value.to_string());
        true
    }
}

/// The eviction manager's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EvictionConfig {
    /// Hard and soft thresholds.
    pub thresholds: Vec<Threshold>,
    /// How long a pressure condition stays True after its threshold was last met.
    pub pressure_transition_period: Duration,
    /// The longest grace period given to pods evicted for a soft threshold (0: the pod's
    /// own `terminationGracePeriodSeconds`).
    pub max_pod_grace_period: i64,
}

impl Default for EvictionConfig {
    fn default() -> Self {
        EvictionConfig {
            thresholds: parse_thresholds(DEFAULT_EVICTION_HARD, true).unwrap_or_default(),
            pressure_transition_period: DEFAULT_PRESSURE_TRANSITION_PERIOD,
            max_pod_grace_period: 0,
        }
    }
}

impl EvictionConfig {
    /// Builds the settings from the `--kubelet-arg` values.
    pub fn from_args(args: &EvictionArgs) -> Result<EvictionConfig, ParseError> {
        let mut cfg = EvictionConfig::default();
        if let Some(hard) = &args.hard {
            cfg.thresholds = parse_thresholds(hard, true)?;
        }
        let graces = match &args.soft_grace_period {
            Some(g) => parse_grace_periods(g)?,
            None => HashMap::new(),
        };
        if let Some(soft) = &args.soft {
            for mut t in parse_thresholds(soft, false)? {
                t.grace_period = *graces
                    .get(&t.signal)
                    .ok_or_else(|| ParseError::NoGracePeriod(t.signal.name().to_string()))?;
                cfg.thresholds.push(t);
            }
        }
        if let Some(p) = &args.pressure_transition_period {
            cfg.pressure_transition_period = crate::config::parse_duration(p).map_err(|_| {
                ParseError::Setting("eviction-pressure-transition-period", p.clone())
            })?;
        }
        if let Some(m) = &args.max_pod_grace_period {
            cfg.max_pod_grace_period = m
                .parse()
                .map_err(|_| ParseError::Setting("eviction-max-pod-grace-period", m.clone()))?;
        }
        Ok(cfg)
    }
}

/// One signal's observed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// What is available.
    pub available: u64,
    /// The total.
    pub capacity: u64,
}

/// The observed signals.
pub type Observations = BTreeMap<Signal, Observation>;

/// Where the signals are read.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The data dir (nodefs).
    pub node_fs: PathBuf,
    /// containerd's root (imagefs).
    pub image_fs: PathBuf,
}

/// Observes every signal the machine can report now.
pub fn observe(src: &Sources) -> Observations {
    let mut obs = Observations::new();
    if let Some((total, mem)) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| stats::parse_meminfo(&t))
    {
        obs.insert(
            Signal::MemoryAvailable,
            Observation {
                available: total.saturating_sub(mem.working_set_bytes),
                capacity: total,
            },
        );
    }
    let mut fs_signals = |path: &std::path::Path, bytes: Signal, inodes: Signal| {
        if let Some(fs) = stats::fs_stats(path) {
            obs.insert(
                bytes,
                Observation {
                    available: fs.available_bytes,
                    capacity: fs.capacity_bytes,
                },
            );
            if fs.inodes > 0 {
                obs.insert(
                    inodes,
                    Observation {
                        available: fs.inodes_free,
                        capacity: fs.inodes,
                    },
                );
            }
        }
    };
    fs_signals(
        &src.node_fs,
        Signal::NodeFsAvailable,
        Signal::NodeFsInodesFree,
    );
    let image_fs = if src.image_fs.is_dir() {
        &src.image_fs
    } else {
        &src.node_fs
    };
    fs_signals(
        image_fs,
        Signal::ImageFsAvailable,
        Signal::ImageFsInodesFree,
    );
    let read_u64 = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let max = [
        read_u64("/proc/sys/kernel/pid_max"),
        read_u64("/proc/sys/kernel/threads-max"),
    ]
    .into_iter()
    .flatten()
    .min();
    let running = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| parse_loadavg_tasks(&s));
    if let (Some(max), Some(running)) = (max, running) {
        obs.insert(
            Signal::PidAvailable,
            Observation {
                available: max.saturating_sub(running),
                capacity: max,
            },
        );
    }
    obs
}

/// The total of `/proc/loadavg`'s `running/total` field.
fn parse_loadavg_tasks(text: &str) -> Option<u64> {
    text.split_whitespace()
        .nth(3)?
        .split_once('/')?
        .1
        .parse()
        .ok()
}

/// What one monitoring pass decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The pressure conditions to report True.
    pub pressure: Pressure,
    /// The threshold to reclaim for (its grace period has passed) and its observation.
    pub reclaim: Option<(Threshold, Observation)>,
}

/// The manager's memory between passes: when thresholds were first met and when each
/// condition was last observed.
#[derive(Debug, Default)]
pub struct State {
    first_met: HashMap<(Signal, bool), Instant>,
    last_observed: BTreeMap<Condition, Instant>,
}

impl State {
    /// One pass of the kubelet's synchronize: thresholds met → conditions (held for the
    /// transition period) → thresholds whose grace period passed → what to reclaim.
    pub fn update(&mut self, cfg: &EvictionConfig, obs: &Observations, now: Instant) -> Decision {
        let met: Vec<&Threshold> = cfg
            .thresholds
            .iter()
            .filter(|t| obs.get(&t.signal).is_some_and(|o| t.met(o)))
            .collect();
        self.first_met
            .retain(|k, _| met.iter().any(|t| (t.signal, t.hard) == *k));
        for t in &met {
            self.first_met.entry((t.signal, t.hard)).or_insert(now);
            self.last_observed.insert(t.signal.condition(), now);
        }
        let period = cfg.pressure_transition_period;
        self.last_observed
            .retain(|_, at| now.saturating_duration_since(*at) < period || *at == now);
        let pressure: Pressure = self.last_observed.keys().copied().collect();
        let mut ready: Vec<&Threshold> = met
            .into_iter()
            .filter(|t| {
                self.first_met
                    .get(&(t.signal, t.hard))
                    .is_some_and(|at| now.saturating_duration_since(*at) >= t.grace_period)
            })
            .collect();
        // Memory first (the kubelet's byEvictionPriority), then hard before soft.
        ready.sort_by_key(|t| (t.signal != Signal::MemoryAvailable, !t.hard, t.signal));
        let reclaim = ready
            .first()
            .and_then(|t| obs.get(&t.signal).map(|o| ((*t).clone(), *o)));
        Decision { pressure, reclaim }
    }
}

/// One pod's measured usage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodUsage {
    /// The pod's memory working set.
    pub memory: u64,
    /// Per container: name and memory working set.
    pub containers: Vec<(String, u64)>,
}

/// The usage of every pod in a stats summary, by uid.
pub fn usage_by_uid(summary: &Summary) -> HashMap<String, PodUsage> {
    summary
        .pods
        .iter()
        .map(|p| {
            (
                p.pod_ref.uid.clone(),
                PodUsage {
                    memory: p.memory.working_set_bytes,
                    containers: p
                        .containers
                        .iter()
                        .map(|c| (c.name.clone(), c.memory.working_set_bytes))
                        .collect(),
                },
            )
        })
        .collect()
}

fn quantity_of(v: &Value) -> u64 {
    v.as_str()
        .and_then(crate::api::quantity::parse_quantity)
        .or_else(|| v.as_f64())
        .map(|q| q.max(0.0).ceil() as u64)
        .unwrap_or(0)
}

/// The pod's request of `resource`: the larger of its app containers' sum and its
/// largest init container, plus the pod overhead.
pub fn pod_request(pod: &Value, resource: &str) -> u64 {
    let of = |key: &str| -> Vec<u64> {
        pod["spec"][key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| quantity_of(&c["resources"]["requests"][resource]))
            .collect()
    };
    let app: u64 = of("containers").iter().sum();
    let init = of("initContainers").into_iter().max().unwrap_or(0);
    app.max(init) + quantity_of(&pod["spec"]["overhead"][resource])
}

/// The pod's priority (`spec.priority`, 0 when unset).
pub fn priority(pod: &Value) -> i64 {
    pod["spec"]["priority"].as_i64().unwrap_or(0)
}

/// Whether the kubelet never evicts this pod: static and mirror pods, and pods at a
/// system-critical priority.
pub fn is_critical(pod: &Value) -> bool {
    let ann = &pod["metadata"]["annotations"];
    let static_pod = ann["kubernetes.io/config.source"]
        .as_str()
        .is_some_and(|s| s != "api");
    static_pod
        || ann.get("kubernetes.io/config.mirror").is_some()
        || priority(pod) >= SYSTEM_CRITICAL_PRIORITY
}

/// A pod considered for eviction.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The pod.
    pub pod: Value,
    /// Its usage, when the stats have it.
    pub usage: Option<PodUsage>,
}

/// Sorts candidates worst first for `signal`. Memory: pods whose usage exceeds their
/// requests, then lower priority, then larger usage above requests (pods without stats
/// last). Other signals (kaji measures no per-pod disk or PID usage): lower priority
/// first, then larger memory usage.
pub fn rank(signal: Signal, pods: &mut [Candidate]) {
    let request = |c: &Candidate| pod_request(&c.pod, "memory");
    pods.sort_by(|a, b| {
        let by_priority = priority(&a.pod).cmp(&priority(&b.pod));
        if signal != Signal::MemoryAvailable {
            let usage = |c: &Candidate| c.usage.as_ref().map(|u| u.memory).unwrap_or(0);
            return by_priority.then(usage(b).cmp(&usage(a)));
        }
        let exceeds = |c: &Candidate| c.usage.as_ref().map(|u| u.memory > request(c));
        let by_exceeding = match (exceeds(a), exceeds(b)) {
            (Some(x), Some(y)) => y.cmp(&x),
            _ => std::cmp::Ordering::Equal,
        };
        let above = |c: &Candidate| {
            c.usage
                .as_ref()
                .map(|u| u.memory as i128 - request(c) as i128)
        };
        let by_usage = match (above(a), above(b)) {
            (Some(x), Some(y)) => y.cmp(&x),
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, None) => std::cmp::Ordering::Equal,
        };
        by_exceeding.then(by_priority).then(by_usage)
    });
}

/// A quantity as the API's binary-SI canonical form prints it (`100Mi`, `20460Ki`, `7`).
pub fn format_binary(n: u64) -> String {
    const SUFFIXES: [&str; 6] = ["Ei", "Pi", "Ti", "Gi", "Mi", "Ki"];
    if n == 0 {
        return "0".into();
    }
    for (i, s) in SUFFIXES.iter().enumerate() {
        let unit = 1u64 << (10 * (6 - i));
        if n.is_multiple_of(unit) {
            return format!("{}{s}", n / unit);
        }
    }
    n.to_string()
}

/// The kubelet's eviction message for `pod`, and the event annotations
/// (`offending_containers`, `offending_containers_usage`, `starved_resource`).
pub fn eviction_message(
    threshold: &Threshold,
    obs: &Observation,
    pod: &Value,
    usage: Option<&PodUsage>,
) -> (String, BTreeMap<String, String>) {
    let resource = threshold.signal.resource();
    let mut msg = format!(
        "The node was low on resource: {resource}. Threshold quantity: {}, available: {}. ",
        format_binary(threshold.quantity(obs.capacity)),
        format_binary(obs.available)
    );
    let mut offending = Vec::new();
    let mut offending_usage = Vec::new();
    if threshold.signal == Signal::MemoryAvailable {
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or_default();
            let Some(used) = usage
                .and_then(|u| u.containers.iter().find(|(n, _)| n == name))
                .map(|(_, m)| *m)
            else {
                continue;
            };
            let req = &c["resources"]["requests"]["memory"];
            if used > quantity_of(req) {
                let req = req
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| "0".into());
                let used = format_binary(used);
                msg.push_str(&format!(
                    "Container {name} was using {used}, request is {req}, has larger consumption of {resource}. "
                ));
                offending.push(name.to_string());
                offending_usage.push(used);
            }
        }
    }
    let mut ann = BTreeMap::new();
    ann.insert("offending_containers".into(), offending.join(","));
    ann.insert(
        "offending_containers_usage".into(),
        offending_usage.join(","),
    );
    ann.insert("starved_resource".into(), resource.to_string());
    (msg, ann)
}

/// The grace period an evicted pod gets: 0 for a hard threshold; for a soft one the
/// pod's own, capped by `eviction-max-pod-grace-period` when that is positive.
pub fn grace_period(cfg: &EvictionConfig, threshold: &Threshold, pod: &Value) -> i64 {
    if threshold.hard {
        return 0;
    }
    let own = pod["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(30);
    if cfg.max_pod_grace_period > 0 {
        own.min(cfg.max_pod_grace_period)
    } else {
        own
    }
}

/// The eviction manager of one node.
pub struct Manager {
    client: kube::Client,
    node_name: String,
    cfg: EvictionConfig,
    sources: Sources,
    stats: Stats,
    pressure: watch::Sender<Pressure>,
    state: State,
    /// Pods this manager failed, with the status patch (re-applied if overwritten).
    evicted: HashMap<String, (String, String, Value)>,
}

impl Manager {
    /// A manager that publishes the node's pressure on the returned receiver.
    pub fn new(
        client: kube::Client,
        node_name: &str,
        cfg: EvictionConfig,
        sources: Sources,
        stats: Stats,
    ) -> (Manager, watch::Receiver<Pressure>) {
        let (tx, rx) = watch::channel(Pressure::new());
        let mut m = Manager {
            client,
            node_name: node_name.to_string(),
            cfg,
            sources,
            stats,
            pressure: tx,
            state: State::default(),
            evicted: HashMap::new(),
        };
        // The first observation, so that the node registers with its real conditions.
        let decision = m.state.update(&m.cfg, &observe(&m.sources), Instant::now());
        m.pressure.send_replace(decision.pressure);
        (m, rx)
    }

    /// Monitors every [`MONITORING_INTERVAL`] until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(MONITORING_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(err) = self.synchronize().await {
                tracing::warn!(%err, "eviction manager pass failed");
            }
        }
    }

    async fn synchronize(&mut self) -> Result<(), kube::Error> {
        let obs = observe(&self.sources);
        let decision = self.state.update(&self.cfg, &obs, Instant::now());
        let pressure = decision.pressure.clone();
        self.pressure.send_if_modified(|cur| {
            let changed = *cur != pressure;
            *cur = pressure;
            changed
        });
        self.reassert().await;
        let Some((threshold, observation)) = decision.reclaim else {
            return Ok(());
        };
        let resource = threshold.signal.resource();
        tracing::warn!(
            signal = threshold.signal.name(),
            available = observation.available,
            threshold = threshold.quantity(observation.capacity),
            "eviction threshold met; attempting to reclaim {resource}"
        );
        self.node_event(
            "EvictionThresholdMet",
            format!("Attempting to reclaim {resource}"),
        );
        let pods: Api<Pod> = Api::all(self.client.clone());
        let lp = ListParams::default().fields(&format!("spec.nodeName={}", self.node_name));
        let usage = self
            .stats
            .latest()
            .map(|s| usage_by_uid(&s))
            .unwrap_or_default();
        let mut candidates: Vec<Candidate> = pods
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter_map(|p| serde_json::to_value(p).ok())
            .filter(|p| {
                !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
                    && p["metadata"]["deletionTimestamp"].is_null()
                    && !self
                        .evicted
                        .contains_key(p["metadata"]["uid"].as_str().unwrap_or_default())
            })
            .map(|pod| {
                let usage = usage
                    .get(pod["metadata"]["uid"].as_str().unwrap_or_default())
                    .cloned();
                Candidate { pod, usage }
            })
            .collect();
        rank(threshold.signal, &mut candidates);
        for c in candidates {
            if is_critical(&c.pod) {
                tracing::debug!(pod = %pod_name(&c.pod), "cannot evict a critical pod");
                continue;
            }
            self.evict(&threshold, &observation, &c).await;
            // One pod per monitoring interval.
            return Ok(());
        }
        tracing::info!("eviction manager: no pod to evict");
        Ok(())
    }

    async fn evict(&mut self, threshold: &Threshold, obs: &Observation, c: &Candidate) {
        let (message, annotations) = eviction_message(threshold, obs, &c.pod, c.usage.as_ref());
        let grace = grace_period(&self.cfg, threshold, &c.pod);
        let now = super::now();
        let patch = json!({"status": {
            "phase": "Failed",
            "reason": REASON_EVICTED,
            "message": message,
            "conditions": [
                {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
                 "message": message, "lastTransitionTime": now},
                {"type": "Ready", "status": "False", "reason": "PodFailed", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "reason": "PodFailed", "lastTransitionTime": now},
            ],
        }});
        let ns = c.pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = c.pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        tracing::warn!(pod = %format!("{ns}/{name}"), grace, %message, "evicting pod");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(%err, pod = %format!("{ns}/{name}"), "evicting pod");
                return;
            }
        }
        self.pod_event(&c.pod, &message, annotations);
        let uid = c.pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.evicted.insert(uid, (ns, name, patch));
    }

    /// Re-applies the eviction status of pods a racing status write made non-terminal,
    /// reports their killed containers as terminated, and forgets pods that are gone or
    /// settled (Failed with no container reported running).
    async fn reassert(&mut self) {
        let mut gone = Vec::new();
        for (uid, (ns, name, patch)) in &self.evicted {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            match api.get_opt(name).await {
                Ok(Some(p)) if p.metadata.uid.as_deref() == Some(uid.as_str()) => {
                    let Ok(pod) = serde_json::to_value(&p) else {
                        continue;
                    };
                    let patch = if pod["status"]["phase"] != "Failed" {
                        Some(patch.clone())
                    } else {
                        let killed = killed_statuses(&pod, &super::now());
                        if killed.is_none() {
                            gone.push(uid.clone());
                        }
                        killed
                    };
                    if let Some(patch) = patch {
                        let _ = api
                            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
                            .await;
                    }
                }
                Ok(_) => gone.push(uid.clone()),
                Err(_) => {}
            }
        }
        for uid in gone {
            self.evicted.remove(&uid);
        }
    }

    fn pod_event(&self, pod: &Value, message: &str, annotations: BTreeMap<String, String>) {
        events::record_about(
            &self.client,
            &self.node_name,
            events::pod_reference(pod, None),
            events::Kind::Warning,
            REASON_EVICTED,
            message.to_string(),
            annotations,
        );
    }

    fn node_event(&self, reason: &str, message: String) {
        events::record_about(
            &self.client,
            &self.node_name,
            events::node_reference(&self.node_name),
            events::Kind::Warning,
            reason,
            message,
            BTreeMap::new(),
        );
    }
}

/// The status patch that reports an evicted pod's still-running containers as killed
/// (SIGKILL: exit code 137), since its worker stops reporting once the pod is Failed;
/// `None` when no container is reported running.
pub fn killed_statuses(pod: &Value, now: &str) -> Option<Value> {
    let mut changed = false;
    let mut status = serde_json::Map::new();
    for key in ["initContainerStatuses", "containerStatuses"] {
        let Some(list) = pod["status"][key].as_array() else {
            continue;
        };
        let list: Vec<Value> = list
            .iter()
            .map(|c| {
                let Some(running) = c["state"]["running"].as_object() else {
                    return c.clone();
                };
                changed = true;
                let mut c = c.clone();
                c["ready"] = json!(false);
                c["started"] = json!(false);
                c["state"] = json!({"terminated": {
                    "exitCode": 137, "reason": "Error",
                    "startedAt": running.get("startedAt").cloned().unwrap_or(Value::Null),
                    "finishedAt": now, "containerID": c["containerID"],
                }});
                c
            })
            .collect();
        status.insert(key.to_string(), Value::Array(list));
    }
    changed.then(|| json!({ "status": status }))
}

fn pod_name(pod: &Value) -> String {
    format!(
        "{}/{}",
        pod["metadata"]["namespace"].as_str().unwrap_or_default(),
        pod["metadata"]["name"].as_str().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    #[test]
    fn parses_thresholds() {
        type Parsed = Result<Vec<(Signal, ThresholdValue)>, ParseError>;
        let cases: &[(&str, Parsed)] = &[
            (
                "memory.available<500Mi,nodefs.available<10%",
                Ok(vec![
                    (Signal::MemoryAvailable, ThresholdValue::Quantity(500 * MI)),
                    (Signal::NodeFsAvailable, ThresholdValue::Percentage(0.1)),
                ]),
            ),
            (
                "memory.available<100Ti",
                Ok(vec![(
                    Signal::MemoryAvailable,
                    ThresholdValue::Quantity(100 << 40),
                )]),
            ),
            (
                "nodefs.inodesFree<100%, pid.available<1k",
                Ok(vec![
                    (Signal::NodeFsInodesFree, ThresholdValue::Percentage(1.0)),
                    (Signal::PidAvailable, ThresholdValue::Quantity(1000)),
                ]),
            ),
            ("imagefs.available<0%", Ok(vec![])),
            ("", Ok(vec![])),
            (
                "memory.free<1Gi",
                Err(ParseError::UnsupportedSignal("memory.free".into())),
            ),
            (
                "memory.available>1Gi",
                Err(ParseError::Syntax("memory.available>1Gi".into())),
            ),
            (
                "nodefs.available<110%",
                Err(ParseError::Value(
                    "nodefs.available<110%".into(),
                    "percentage must be between 0% and 100%".into(),
                )),
            ),
            (
                "memory.available<-1Mi",
                Err(ParseError::Value(
                    "memory.available<-1Mi".into(),
                    "must be non-negative".into(),
                )),
            ),
            (
                "memory.available<lots",
                Err(ParseError::Value(
                    "memory.available<lots".into(),
                    "not a quantity".into(),
                )),
            ),
            (
                "memory.available<1Mi,memory.available<2Mi",
                Err(ParseError::Duplicate("memory.available".into())),
            ),
        ];
        for (spec, want) in cases {
            let got = parse_thresholds(spec, true).map(|v| {
                v.into_iter()
                    .map(|t| (t.signal, t.value))
                    .collect::<Vec<_>>()
            });
            assert_eq!(&got, want, "{spec}");
        }
    }

    #[test]
    fn config_from_args() {
        let cfg = EvictionConfig::default();
        assert_eq!(cfg.thresholds.len(), 3);
        assert_eq!(cfg.pressure_transition_period, Duration::from_secs(300));

        let mut args = EvictionArgs::default();
        assert!(args.accept("eviction-hard", "memory.available<1Gi"));
        assert!(args.accept("eviction-soft", "nodefs.available<20%"));
        assert!(args.accept("eviction-soft-grace-period", "nodefs.available=1m30s"));
        assert!(args.accept("eviction-pressure-transition-period", "5s"));
        assert!(args.accept("eviction-max-pod-grace-period", "20"));
        assert!(!args.accept("max-pods", "10"));
        let cfg = EvictionConfig::from_args(&args).unwrap();
        assert_eq!(cfg.thresholds.len(), 2);
        assert!(cfg.thresholds[0].hard);
        assert_eq!(cfg.thresholds[1].grace_period, Duration::from_secs(90));
        assert!(!cfg.thresholds[1].hard);
        assert_eq!(cfg.pressure_transition_period, Duration::from_secs(5));
        assert_eq!(cfg.max_pod_grace_period, 20);

        let mut args = EvictionArgs::default();
        args.accept("eviction-soft", "memory.available<1Gi");
        assert_eq!(
            EvictionConfig::from_args(&args),
            Err(ParseError::NoGracePeriod("memory.available".into()))
        );
    }

    fn obs(available: u64, capacity: u64) -> Observation {
        Observation {
            available,
            capacity,
        }
    }

    #[test]
    fn conditions_and_grace_periods() {
        let mut args = EvictionArgs::default();
        args.accept("eviction-hard", "memory.available<100Mi");
        args.accept("eviction-soft", "nodefs.available<50%");
        args.accept("eviction-soft-grace-period", "nodefs.available=30s");
        args.accept("eviction-pressure-transition-period", "60s");
        let cfg = EvictionConfig::from_args(&args).unwrap();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut st = State::default();
        // (time, memory available, disk available of 100) → (pressure, reclaim signal)
        type Step<'a> = (u64, u64, u64, &'a [Condition], Option<Signal>);
        let steps: &[Step] = &[
            (0, 200 * MI, 90, &[], None),
            // Memory below the hard threshold: pressure and eviction at once.
            (
                10,
                50 * MI,
                90,
                &[Condition::MemoryPressure],
                Some(Signal::MemoryAvailable),
            ),
            // Disk below the soft threshold: pressure at once, eviction after 30 s.
            (
                20,
                50 * MI,
                40,
                &[Condition::MemoryPressure, Condition::DiskPressure],
                Some(Signal::MemoryAvailable),
            ),
            // Memory recovered: the condition is held for the transition period.
            (
                30,
                200 * MI,
                40,
                &[Condition::MemoryPressure, Condition::DiskPressure],
                None,
            ),
            (
                50,
                200 * MI,
                40,
                &[Condition::MemoryPressure, Condition::DiskPressure],
                Some(Signal::NodeFsAvailable),
            ),
            (
                71,
                200 * MI,
                90,
                &[Condition::MemoryPressure, Condition::DiskPressure],
                None,
            ),
            (85, 200 * MI, 90, &[Condition::DiskPressure], None),
            (111, 200 * MI, 90, &[], None),
        ];
        for (t, mem, disk, want, reclaim) in steps {
            let mut o = Observations::new();
            o.insert(Signal::MemoryAvailable, obs(*mem, 1024 * MI));
            o.insert(Signal::NodeFsAvailable, obs(*disk, 100));
            let d = st.update(&cfg, &o, at(*t));
            assert_eq!(
                d.pressure,
                want.iter().copied().collect::<Pressure>(),
                "t={t}"
            );
            assert_eq!(d.reclaim.map(|(t, _)| t.signal), *reclaim, "t={t}");
        }
    }

    fn pod(name: &str, priority: i64, mem_request: Option<&str>) -> Value {
        let mut c = json!({"name": "c", "image": "busybox"});
        if let Some(r) = mem_request {
            c["resources"] = json!({"requests": {"memory": r}, "limits": {"memory": r}});
        }
        json!({"metadata": {"name": name, "namespace": "default", "uid": name},
               "spec": {"priority": priority, "containers": [c]}})
    }

    fn cand(pod: Value, usage: Option<u64>) -> Candidate {
        Candidate {
            pod,
            usage: usage.map(|m| PodUsage {
                memory: m,
                containers: vec![("c".into(), m)],
            }),
        }
    }

    #[test]
    fn ranks_for_memory() {
        let cases: &[(&str, Vec<Candidate>, &[&str])] = &[
            (
                "exceeding requests beats priority",
                vec![
                    cand(pod("guaranteed-low", 0, Some("100Mi")), Some(10 * MI)),
                    cand(pod("besteffort-high", 1000, None), Some(5 * MI)),
                ],
                &["besteffort-high", "guaranteed-low"],
            ),
            (
                "then lower priority",
                vec![
                    cand(pod("high", 1000, None), Some(50 * MI)),
                    cand(pod("low", 0, None), Some(5 * MI)),
                ],
                &["low", "high"],
            ),
            (
                "then more usage above requests",
                vec![
                    cand(pod("small", 0, None), Some(5 * MI)),
                    cand(pod("big", 0, Some("10Mi")), Some(50 * MI)),
                ],
                &["big", "small"],
            ),
            (
                "no stats: priority decides, unknown usage last",
                vec![
                    cand(pod("guaranteed", 1000, Some("64Mi")), None),
                    cand(pod("besteffort", 0, None), None),
                    cand(pod("measured", 0, None), Some(MI)),
                ],
                &["measured", "besteffort", "guaranteed"],
            ),
        ];
        for (name, pods, want) in cases {
            let mut pods = pods.clone();
            rank(Signal::MemoryAvailable, &mut pods);
            let got: Vec<&str> = pods
                .iter()
                .map(|c| c.pod["metadata"]["name"].as_str().unwrap())
                .collect();
            assert_eq!(&got, want, "{name}");
        }
        let mut pods = vec![
            cand(pod("high", 1000, None), Some(50 * MI)),
            cand(pod("low", 0, Some("1Gi")), Some(MI)),
        ];
        rank(Signal::NodeFsAvailable, &mut pods);
        assert_eq!(pods[0].pod["metadata"]["name"], "low");
    }

    #[test]
    fn critical_pods() {
        assert!(is_critical(&pod("x", 2_000_001_000, None)));
        assert!(is_critical(&pod("x", 2_000_000_000, None)));
        assert!(!is_critical(&pod("x", 1_000_000_000, None)));
        let mut p = pod("x", 0, None);
        p["metadata"]["annotations"] = json!({"kubernetes.io/config.source": "file"});
        assert!(is_critical(&p));
    }

    #[test]
    fn messages() {
        let t = &parse_thresholds("memory.available<100Mi", true).unwrap()[0];
        let p = pod("x", 0, None);
        let usage = PodUsage {
            memory: 30 * MI,
            containers: vec![("c".into(), 30 * MI)],
        };
        let (msg, ann) = eviction_message(t, &obs(20 * MI, 1 << 30), &p, Some(&usage));
        assert_eq!(
            msg,
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 20Mi. \
             Container c was using 30Mi, request is 0, has larger consumption of memory. "
        );
        assert_eq!(ann["offending_containers"], "c");
        assert_eq!(ann["offending_containers_usage"], "30Mi");
        assert_eq!(ann["starved_resource"], "memory");
        // Within its request: not named.
        let p = pod("x", 0, Some("64Mi"));
        let (msg, _) = eviction_message(t, &obs(20 * MI, 1 << 30), &p, Some(&usage));
        assert!(!msg.contains("Container"), "{msg}");
        // Percentages are reported as the quantity they come to.
        let t = &parse_thresholds("nodefs.available<10%", true).unwrap()[0];
        let (msg, _) = eviction_message(t, &obs(1000, 100 * 1024), &p, None);
        assert_eq!(
            msg,
            "The node was low on resource: ephemeral-storage. Threshold quantity: 10Ki, available: 1000. "
        );
    }

    #[test]
    fn killed_container_statuses() {
        let pod = json!({"status": {"containerStatuses": [
            {"name": "a", "containerID": "containerd://1", "ready": true,
             "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}},
            {"name": "b", "state": {"terminated": {"exitCode": 0}}},
        ]}});
        let patch = killed_statuses(&pod, "2026-01-02T00:00:00Z").unwrap();
        let a = &patch["status"]["containerStatuses"][0];
        assert_eq!(a["ready"], false);
        assert_eq!(a["state"]["terminated"]["exitCode"], 137);
        assert_eq!(
            a["state"]["terminated"]["startedAt"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(a["state"]["terminated"]["containerID"], "containerd://1");
        assert_eq!(
            patch["status"]["containerStatuses"][1],
            pod["status"]["containerStatuses"][1]
        );
        assert_eq!(killed_statuses(&patch, "x"), None);
    }

    #[test]
    fn formats_and_requests() {
        for (n, want) in [
            (0, "0"),
            (1024, "1Ki"),
            (100 * MI, "100Mi"),
            (20460 * 1024, "20460Ki"),
            (7, "7"),
        ] {
            assert_eq!(format_binary(n), want);
        }
        let p = json!({"spec": {
            "containers": [{"resources": {"requests": {"memory": "64Mi"}}}, {"resources": {"requests": {"memory": "64Mi"}}}],
            "initContainers": [{"resources": {"requests": {"memory": "256Mi"}}}],
        }});
        assert_eq!(pod_request(&p, "memory"), 256 * MI);
        assert_eq!(
            parse_loadavg_tasks("0.10 0.20 0.30 2/345 6789\n"),
            Some(345)
        );
        let cfg = EvictionConfig::default();
        let soft = Threshold {
            signal: Signal::MemoryAvailable,
            value: ThresholdValue::Quantity(1),
            grace_period: Duration::ZERO,
            hard: false,
        };
        let p = json!({"spec": {"terminationGracePeriodSeconds": 45}});
        assert_eq!(grace_period(&cfg, &cfg.thresholds[0], &p), 0);
        assert_eq!(grace_period(&cfg, &soft, &p), 45);
        let capped = EvictionConfig {
            max_pod_grace_period: 10,
            ..cfg
        };
        assert_eq!(grace_period(&capped, &soft, &p), 10);
    }
}
