//! Resource usage of the node, its pods and their containers, as the kubelet's summary
//! API reports it: CPU (cumulative `usageCoreNanoSeconds` and the rate `usageNanoCores`
//! between two samples), memory (`usageBytes`, `workingSetBytes` = usage − inactive file
//! pages, `rssBytes`, page faults) and the filesystem of the node's data dir.
//!
//! A background task ([`run_sampler`]) samples every [`SAMPLE_INTERVAL`]: the node from
//! `/proc/stat` and `/proc/meminfo`, pods and containers straight from their cgroups
//! (v1: the `cpuacct` and `memory` hierarchies; v2: the unified one), found by the cgroup
//! parent kaji gives each pod (see [`super::resources::cgroup_parent`]; both cgroupfs
//! and systemd layouts are probed) and the container id below it. Which pods and
//! containers exist comes from CRI (`ListPodSandbox`, `ListContainers`); only the latest
//! [`Summary`] is kept, and the kubelet API serves it as `/stats/summary` (JSON) and
//! `/metrics/resource` (Prometheus text, [`Summary::prometheus`]).
//!
//! Depends on: `agent::cri` (listing sandboxes and containers). Must not depend on:
//! `apiserver`, `store`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_cri::v1 as cri;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::cri::{Cri, LABEL_CONTAINER_NAME};

/// How often usage is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// CPU usage at one sample (the summary API's `CPUStats`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// When sampled (RFC 3339).
    pub time: String,
    /// Average usage since the previous sample, in billionths of a core (absent on the
    /// first sample).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    /// Cumulative usage in core-nanoseconds.
    pub usage_core_nano_seconds: u64,
}

/// Memory usage at one sample (the summary API's `MemoryStats`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// When sampled (RFC 3339).
    pub time: String,
    /// Memory left before the limit (node: capacity − working set), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    /// Total usage, page cache included.
    pub usage_bytes: u64,
    /// Usage minus inactive file pages: what the kubelet evicts on and `kubectl top` shows.
    pub working_set_bytes: u64,
    /// Anonymous memory and swap cache.
    pub rss_bytes: u64,
    /// Page faults.
    pub page_faults: u64,
    /// Major page faults.
    pub major_page_faults: u64,
}

/// A filesystem's size and usage (the summary API's `FsStats`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FsStats {
    /// When sampled (RFC 3339).
    pub time: String,
    /// Bytes available to unprivileged users.
    pub available_bytes: u64,
    /// Size of the filesystem.
    pub capacity_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Free inodes.
    pub inodes_free: u64,
    /// All inodes.
    pub inodes: u64,
    /// Inodes in use.
    pub inodes_used: u64,
}

/// The container runtime's filesystems.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStats {
    /// Where images are stored.
    pub image_fs: FsStats,
    /// Where container writable layers are stored.
    pub container_fs: FsStats,
}

/// The node's usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// The node's name.
    pub node_name: String,
    /// When the node booted.
    pub start_time: String,
    /// CPU.
    pub cpu: CpuStats,
    /// Memory.
    pub memory: MemoryStats,
    /// The filesystem of the data dir.
    pub fs: FsStats,
    /// The runtime's filesystems.
    pub runtime: RuntimeStats,
}

/// Identifies a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PodReference {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// UID.
    pub uid: String,
}

/// One running container's usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    /// The container's name in the pod spec.
    pub name: String,
    /// When the container started (RFC 3339).
    pub start_time: String,
    /// CPU.
    pub cpu: CpuStats,
    /// Memory.
    pub memory: MemoryStats,
}

/// One pod's usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    /// Which pod.
    pub pod_ref: PodReference,
    /// When its sandbox was created (RFC 3339).
    pub start_time: String,
    /// Its running containers.
    pub containers: Vec<ContainerStats>,
    /// The pod cgroup's CPU (all containers and the sandbox).
    pub cpu: CpuStats,
    /// The pod cgroup's memory.
    pub memory: MemoryStats,
}

/// The summary API's document (`GET /stats/summary`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// The node.
    pub node: NodeStats,
    /// Every pod with a ready sandbox.
    pub pods: Vec<PodStats>,
    /// Whether part of the sample failed (reported as `scrape_error`).
    #[serde(skip)]
    pub scrape_error: bool,
    /// The sample time in milliseconds since the epoch (Prometheus sample timestamps).
    #[serde(skip)]
    pub time_ms: i64,
}

/// The latest sample, shared between the sampler and the kubelet API.
#[derive(Clone, Default)]
pub struct Stats(Arc<RwLock<Option<Arc<Summary>>>>);

impl Stats {
    /// The latest summary, once the first sample is done.
    pub fn latest(&self) -> Option<Arc<Summary>> {
        self.0.read().ok().and_then(|g| g.clone())
    }

    fn set(&self, s: Summary) {
        if let Ok(mut g) = self.0.write() {
            *g = Some(Arc::new(s));
        }
    }
}

/// Counters of one key at the previous sample, for rates.
#[derive(Debug, Clone, Copy)]
struct Previous {
    at_ns: i128,
    usage_ns: u64,
}

/// Turns cumulative CPU counters into rates between samples.
#[derive(Debug, Default)]
pub struct RateTracker {
    previous: HashMap<String, Previous>,
    seen: Vec<String>,
}

impl RateTracker {
    /// The usage in nanocores of `key` since its previous sample (None on the first one or
    /// after the counter went backwards, i.e. a new cgroup with the same key).
    pub fn rate(&mut self, key: &str, at_ns: i128, usage_ns: u64) -> Option<u64> {
        self.seen.push(key.to_string());
        let prev = self
            .previous
            .insert(key.to_string(), Previous { at_ns, usage_ns });
        let prev = prev?;
        let dt = at_ns - prev.at_ns;
        if dt <= 0 || usage_ns < prev.usage_ns {
            return None;
        }
        Some(((usage_ns - prev.usage_ns) as u128 * 1_000_000_000 / dt as u128) as u64)
    }

    /// Forgets keys not seen since the previous call.
    pub fn sweep(&mut self) {
        let seen: std::collections::HashSet<String> =
            std::mem::take(&mut self.seen).into_iter().collect();
        self.previous.retain(|k, _| seen.contains(k));
    }
}

/// `key value` lines (`memory.stat`, `cpu.stat`) as a map.
pub fn parse_flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k, v))
        })
        .collect()
}

/// Cumulative non-idle CPU time of the node in nanoseconds, from `/proc/stat`'s `cpu`
/// line (user, nice, system, irq, softirq, steal; in USER_HZ = 1/100 s ticks).
pub fn parse_proc_stat(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| *x)
        .sum();
    Some(busy * 10_000_000)
}

/// Node memory from `/proc/meminfo`: usage = total − free, working set = usage − inactive
/// file pages, available = total − working set.
pub fn parse_meminfo(text: &str) -> Option<(u64, MemoryStats)> {
    let kib: HashMap<&str, u64> = text
        .lines()
        .filter_map(|l| {
            let (k, rest) = l.split_once(':')?;
            Some((
                k.trim(),
                rest.split_whitespace().next()?.parse::<u64>().ok()? * 1024,
            ))
        })
        .collect();
    let total = *kib.get("MemTotal")?;
    let free = kib.get("MemFree").copied().unwrap_or(0);
    let usage = total.saturating_sub(free);
    let working_set = usage.saturating_sub(kib.get("Inactive(file)").copied().unwrap_or(0));
    Some((
        total,
        MemoryStats {
            available_bytes: Some(total.saturating_sub(working_set)),
            usage_bytes: usage,
            working_set_bytes: working_set,
            rss_bytes: kib.get("AnonPages").copied().unwrap_or(0),
            ..Default::default()
        },
    ))
}

/// Which cgroup hierarchy the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Separate controller hierarchies (`cpuacct`, `memory`).
    V1,
    /// The unified hierarchy.
    V2,
}

/// Reads usage from cgroup files below a mount root (`/sys/fs/cgroup`).
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
    version: CgroupVersion,
}

impl Cgroups {
    /// The host's cgroups.
    pub fn host() -> Cgroups {
        Cgroups::at(Path::new("/sys/fs/cgroup"))
    }

    /// Cgroups mounted at `root` (v2 when `cgroup.controllers` is there).
    pub fn at(root: &Path) -> Cgroups {
        let version = if root.join("cgroup.controllers").exists() {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        };
        Cgroups {
            root: root.to_path_buf(),
            version,
        }
    }

    fn cpu_dir(&self) -> PathBuf {
        match self.version {
            CgroupVersion::V2 => self.root.clone(),
            CgroupVersion::V1 => ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
                .iter()
                .map(|d| self.root.join(d))
                .find(|p| p.is_dir())
                .unwrap_or_else(|| self.root.join("cpuacct")),
        }
    }

    fn memory_dir(&self) -> PathBuf {
        match self.version {
            CgroupVersion::V2 => self.root.clone(),
            CgroupVersion::V1 => self.root.join("memory"),
        }
    }

    /// Whether the cgroup `rel` (relative to the hierarchy roots) exists.
    pub fn exists(&self, rel: &str) -> bool {
        self.memory_dir().join(rel).is_dir()
    }

    /// Cumulative CPU usage of `rel` in nanoseconds.
    pub fn cpu_usage_ns(&self, rel: &str) -> Option<u64> {
        let dir = self.cpu_dir().join(rel);
        match self.version {
            CgroupVersion::V1 => std::fs::read_to_string(dir.join("cpuacct.usage"))
                .ok()?
                .trim()
                .parse()
                .ok(),
            CgroupVersion::V2 => {
                let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
                parse_flat_keyed(&text).get("usage_usec").map(|u| u * 1000)
            }
        }
    }

    /// Memory usage of `rel`.
    pub fn memory(&self, rel: &str) -> Option<MemoryStats> {
        let dir = self.memory_dir().join(rel);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        let (usage_file, limit_file) = match self.version {
            CgroupVersion::V1 => ("memory.usage_in_bytes", "memory.limit_in_bytes"),
            CgroupVersion::V2 => ("memory.current", "memory.max"),
        };
        let usage: u64 = read(usage_file)?.trim().parse().ok()?;
        let stat = read("memory.stat").unwrap_or_default();
        let limit = read(limit_file).and_then(|l| l.trim().parse::<u64>().ok());
        Some(memory_from(self.version, usage, &stat, limit))
    }
}

/// Memory stats from a cgroup's usage, `memory.stat` and limit (v1 reports an enormous
/// number, v2 `max`, for "no limit").
pub fn memory_from(
    version: CgroupVersion,
    usage: u64,
    stat: &str,
    limit: Option<u64>,
) -> MemoryStats {
    let s = parse_flat_keyed(stat);
    let get = |k: &str| s.get(k).copied().unwrap_or(0);
    let (inactive_file, rss, faults, major) = match version {
        CgroupVersion::V1 => (
            s.get("total_inactive_file")
                .copied()
                .unwrap_or(get("inactive_file")),
            s.get("total_rss").copied().unwrap_or(get("rss")),
            s.get("total_pgfault").copied().unwrap_or(get("pgfault")),
            s.get("total_pgmajfault")
                .copied()
                .unwrap_or(get("pgmajfault")),
        ),
        CgroupVersion::V2 => (
            get("inactive_file"),
            get("anon"),
            get("pgfault"),
            get("pgmajfault"),
        ),
    };
    let working_set = usage.saturating_sub(inactive_file);
    MemoryStats {
        time: String::new(),
        available_bytes: limit
            .filter(|l| *l < (1 << 62))
            .map(|l| l.saturating_sub(working_set)),
        usage_bytes: usage,
        working_set_bytes: working_set,
        rss_bytes: rss,
        page_faults: faults,
        major_page_faults: major,
    }
}

/// The cgroups (relative paths) a pod with this uid may live in, for the cgroupfs and
/// systemd drivers and every QoS class.
pub fn pod_cgroup_candidates(uid: &str) -> Vec<String> {
    let u = uid.replace('-', "_");
    vec![
        format!("kubepods/pod{uid}"),
        format!("kubepods/burstable/pod{uid}"),
        format!("kubepods/besteffort/pod{uid}"),
        format!("kubepods.slice/kubepods-pod{u}.slice"),
        format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
        format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"),
    ]
}

/// Size and usage of the filesystem holding `path`.
pub fn fs_stats(path: &Path) -> Option<FsStats> {
    let s = rustix::fs::statvfs(path).ok()?;
    let frsize = s.f_frsize;
    Some(FsStats {
        time: String::new(),
        available_bytes: s.f_bavail * frsize,
        capacity_bytes: s.f_blocks * frsize,
        used_bytes: s.f_blocks.saturating_sub(s.f_bfree) * frsize,
        inodes_free: s.f_ffree,
        inodes: s.f_files,
        inodes_used: s.f_files.saturating_sub(s.f_ffree),
    })
}

fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn rfc3339_ns(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(ns as i128)
        .map(rfc3339)
        .unwrap_or_default()
}

/// When the machine booted (from `/proc/stat`'s `btime`).
fn boot_time() -> String {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("btime ").map(|v| v.trim().parse::<i64>()))
        })
        .and_then(Result::ok)
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map(rfc3339)
        .unwrap_or_default()
}

/// Takes samples; keeps the counters needed for rates.
pub struct Sampler {
    node_name: String,
    data_dir: PathBuf,
    cgroups: Cgroups,
    rates: RateTracker,
}

impl Sampler {
    /// A sampler for this node.
    pub fn new(node_name: &str, data_dir: &Path, cgroups: Cgroups) -> Sampler {
        Sampler {
            node_name: node_name.to_string(),
            data_dir: data_dir.to_path_buf(),
            cgroups,
            rates: RateTracker::default(),
        }
    }

    /// One sample of the node and of every pod with a ready sandbox.
    pub async fn sample(&mut self, cri: &mut Cri) -> Summary {
        let now = jiff::Timestamp::now();
        let at = now.as_nanosecond();
        let time = rfc3339(now);
        let mut error = false;
        let mut node = NodeStats {
            node_name: self.node_name.clone(),
            start_time: boot_time(),
            ..Default::default()
        };
        match std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_proc_stat(&t))
        {
            Some(usage) => {
                node.cpu = CpuStats {
                    time: time.clone(),
                    usage_nano_cores: self.rates.rate("node", at, usage),
                    usage_core_nano_seconds: usage,
                }
            }
            None => error = true,
        }
        match std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| parse_meminfo(&t))
        {
            Some((_, m)) => {
                node.memory = MemoryStats {
                    time: time.clone(),
                    ..m
                }
            }
            None => error = true,
        }
        if let Some(fs) = fs_stats(&self.data_dir) {
            node.fs = FsStats {
                time: time.clone(),
                ..fs
            };
        }
        let image_dir = self.data_dir.join("agent");
        if let Some(fs) = fs_stats(if image_dir.is_dir() {
            &image_dir
        } else {
            &self.data_dir
        }) {
            let fs = FsStats {
                time: time.clone(),
                ..fs
            };
            node.runtime = RuntimeStats {
                image_fs: fs.clone(),
                container_fs: fs,
            };
        }
        let pods = match self.pods(cri, at, &time).await {
            Ok(p) => p,
            Err(err) => {
                tracing::debug!(%err, "sampling pod stats");
                error = true;
                Vec::new()
            }
        };
        self.rates.sweep();
        Summary {
            node,
            pods,
            scrape_error: error,
            time_ms: (at / 1_000_000) as i64,
        }
    }

    async fn pods(
        &mut self,
        cri: &mut Cri,
        at: i128,
        time: &str,
    ) -> Result<Vec<PodStats>, super::Error> {
        let sandboxes = cri.sandboxes(None).await?;
        let containers = cri.containers(None).await?;
        let mut out = Vec::new();
        for sb in sandboxes
            .iter()
            .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
        {
            let Some(meta) = &sb.metadata else { continue };
            let Some(pod_cg) = pod_cgroup_candidates(&meta.uid)
                .into_iter()
                .find(|c| self.cgroups.exists(c))
            else {
                continue;
            };
            let mut pod = PodStats {
                pod_ref: PodReference {
                    name: meta.name.clone(),
                    namespace: meta.namespace.clone(),
                    uid: meta.uid.clone(),
                },
                start_time: rfc3339_ns(sb.created_at),
                ..Default::default()
            };
            if let Some(usage) = self.cgroups.cpu_usage_ns(&pod_cg) {
                pod.cpu = CpuStats {
                    time: time.to_string(),
                    usage_nano_cores: self.rates.rate(&format!("pod/{}", meta.uid), at, usage),
                    usage_core_nano_seconds: usage,
                };
            }
            if let Some(m) = self.cgroups.memory(&pod_cg) {
                pod.memory = MemoryStats {
                    time: time.to_string(),
                    ..m
                };
            }
            for c in containers.iter().filter(|c| {
                c.pod_sandbox_id == sb.id && c.state == cri::ContainerState::ContainerRunning as i32
            }) {
                let name = c
                    .labels
                    .get(LABEL_CONTAINER_NAME)
                    .cloned()
                    .or_else(|| c.metadata.as_ref().map(|m| m.name.clone()))
                    .unwrap_or_default();
                let Some(cg) = [
                    format!("{pod_cg}/{}", c.id),
                    format!("{pod_cg}/cri-containerd-{}.scope", c.id),
                ]
                .into_iter()
                .find(|p| self.cgroups.exists(p)) else {
                    continue;
                };
                let mut cs = ContainerStats {
                    name,
                    start_time: rfc3339_ns(c.created_at),
                    ..Default::default()
                };
                if let Some(usage) = self.cgroups.cpu_usage_ns(&cg) {
                    cs.cpu = CpuStats {
                        time: time.to_string(),
                        usage_nano_cores: self.rates.rate(
                            &format!("container/{}", c.id),
                            at,
                            usage,
                        ),
                        usage_core_nano_seconds: usage,
                    };
                }
                if let Some(m) = self.cgroups.memory(&cg) {
                    cs.memory = MemoryStats {
                        time: time.to_string(),
                        ..m
                    };
                }
                pod.containers.push(cs);
            }
            pod.containers.sort_by(|a, b| a.name.cmp(&b.name));
            out.push(pod);
        }
        out.sort_by(|a, b| {
            (&a.pod_ref.namespace, &a.pod_ref.name).cmp(&(&b.pod_ref.namespace, &b.pod_ref.name))
        });
        Ok(out)
    }
}

/// Samples every [`SAMPLE_INTERVAL`] into `stats` until `shutdown`.
pub async fn run_sampler(
    mut sampler: Sampler,
    mut cri: Cri,
    stats: Stats,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let summary = sampler.sample(&mut cri).await;
        stats.set(summary);
    }
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Summary {
    /// The `/metrics/resource` document: the kubelet's resource metrics in the
    /// Prometheus text format, each sample stamped with the sampling time.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let ts = self.time_ms;
        let secs = |ns: u64| ns as f64 / 1e9;
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v} {ts}");
            }
        };
        let container_labels = |p: &PodStats, c: &ContainerStats| {
            format!(
                "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
                label(&c.name),
                label(&p.pod_ref.namespace),
                label(&p.pod_ref.name)
            )
        };
        let pod_labels = |p: &PodStats| {
            format!(
                "{{namespace=\"{}\",pod=\"{}\"}}",
                label(&p.pod_ref.namespace),
                label(&p.pod_ref.name)
            )
        };
        let containers = || {
            self.pods
                .iter()
                .flat_map(|p| p.containers.iter().map(move |c| (p, c)))
        };
        family(
            "container_cpu_usage_seconds_total",
            "counter",
            "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
            containers()
                .map(|(p, c)| (container_labels(p, c), secs(c.cpu.usage_core_nano_seconds)))
                .collect(),
        );
        family(
            "container_memory_working_set_bytes",
            "gauge",
            "[STABLE] Current working set of the container in bytes",
            containers()
                .map(|(p, c)| (container_labels(p, c), c.memory.working_set_bytes as f64))
                .collect(),
        );
        family(
            "container_start_time_seconds",
            "gauge",
            "[STABLE] Start time of the container since unix epoch in seconds",
            containers()
                .filter_map(|(p, c)| {
                    let t = c.start_time.parse::<jiff::Timestamp>().ok()?;
                    Some((container_labels(p, c), t.as_second() as f64))
                })
                .collect(),
        );
        family(
            "node_cpu_usage_seconds_total",
            "counter",
            "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
            vec![(String::new(), secs(self.node.cpu.usage_core_nano_seconds))],
        );
        family(
            "node_memory_working_set_bytes",
            "gauge",
            "[STABLE] Current working set of the node in bytes",
            vec![(String::new(), self.node.memory.working_set_bytes as f64)],
        );
        family(
            "pod_cpu_usage_seconds_total",
            "counter",
            "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
            self.pods
                .iter()
                .map(|p| (pod_labels(p), secs(p.cpu.usage_core_nano_seconds)))
                .collect(),
        );
        family(
            "pod_memory_working_set_bytes",
            "gauge",
            "[STABLE] Current working set of the pod in bytes",
            self.pods
                .iter()
                .map(|p| (pod_labels(p), p.memory.working_set_bytes as f64))
                .collect(),
        );
        let _ = writeln!(
            out,
            "# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise"
        );
        let _ = writeln!(out, "# TYPE scrape_error gauge");
        let _ = writeln!(out, "scrape_error {}", u8::from(self.scrape_error));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_and_memory() {
        let v1 = "cache 100\nrss 50\ntotal_rss 4096\ntotal_inactive_file 1000\ntotal_pgfault 7\ntotal_pgmajfault 1\ninactive_file 3\n";
        let v2 = "anon 2048\nfile 500\ninactive_file 300\npgfault 9\npgmajfault 2\n";
        let cases = [
            (
                CgroupVersion::V1,
                5000,
                v1,
                Some(u64::MAX >> 1),
                4000,
                4096,
                7,
                None,
            ),
            (
                CgroupVersion::V1,
                500,
                v1,
                Some(10_000),
                0,
                4096,
                7,
                Some(10_000),
            ),
            (
                CgroupVersion::V2,
                1000,
                v2,
                Some(1500),
                700,
                2048,
                9,
                Some(800),
            ),
            (CgroupVersion::V2, 1000, "", None, 1000, 0, 0, None),
        ];
        for (version, usage, stat, limit, ws, rss, faults, avail) in cases {
            let m = memory_from(version, usage, stat, limit);
            assert_eq!(m.working_set_bytes, ws, "{version:?} {usage}");
            assert_eq!(m.rss_bytes, rss);
            assert_eq!(m.page_faults, faults);
            assert_eq!(m.available_bytes, avail);
            assert_eq!(m.usage_bytes, usage);
        }
    }

    #[test]
    fn proc_files() {
        let stat =
            "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\nbtime 1700000000\n";
        // user+nice+system+irq+softirq+steal = 161 ticks of 10 ms.
        assert_eq!(parse_proc_stat(stat), Some(1_610_000_000));
        assert_eq!(parse_proc_stat("intr 1 2"), None);
        let meminfo = "MemTotal:        1000 kB\nMemFree:          200 kB\nMemAvailable:     600 kB\nInactive(file):   300 kB\nAnonPages:        100 kB\n";
        let (total, m) = parse_meminfo(meminfo).unwrap();
        assert_eq!(total, 1000 * 1024);
        assert_eq!(m.usage_bytes, 800 * 1024);
        assert_eq!(m.working_set_bytes, 500 * 1024);
        assert_eq!(m.available_bytes, Some(500 * 1024));
        assert_eq!(m.rss_bytes, 100 * 1024);
    }

    #[test]
    fn cgroup_fixtures() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // A cgroup v1 layout: separate cpuacct and memory hierarchies.
        let pod = "kubepods/burstable/podu-1";
        std::fs::create_dir_all(root.join("cpuacct").join(pod)).unwrap();
        std::fs::create_dir_all(root.join("memory").join(pod)).unwrap();
        std::fs::write(
            root.join("cpuacct").join(pod).join("cpuacct.usage"),
            "123456789\n",
        )
        .unwrap();
        std::fs::write(
            root.join("memory").join(pod).join("memory.usage_in_bytes"),
            "8192\n",
        )
        .unwrap();
        std::fs::write(
            root.join("memory").join(pod).join("memory.stat"),
            "total_inactive_file 4096\ntotal_rss 2048\n",
        )
        .unwrap();
        let cg = Cgroups::at(root);
        assert_eq!(cg.version, CgroupVersion::V1);
        let found = pod_cgroup_candidates("u-1")
            .into_iter()
            .find(|c| cg.exists(c));
        assert_eq!(found.as_deref(), Some(pod));
        assert_eq!(cg.cpu_usage_ns(pod), Some(123_456_789));
        assert_eq!(cg.memory(pod).unwrap().working_set_bytes, 4096);
        // cgroup v2: one hierarchy, usage in microseconds.
        let dir2 = tempfile::tempdir().unwrap();
        let root2 = dir2.path();
        std::fs::write(root2.join("cgroup.controllers"), "cpu memory\n").unwrap();
        let pod2 = "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podu_2.slice";
        std::fs::create_dir_all(root2.join(pod2)).unwrap();
        std::fs::write(
            root2.join(pod2).join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\n",
        )
        .unwrap();
        std::fs::write(root2.join(pod2).join("memory.current"), "10000\n").unwrap();
        std::fs::write(
            root2.join(pod2).join("memory.stat"),
            "anon 5000\ninactive_file 1000\n",
        )
        .unwrap();
        std::fs::write(root2.join(pod2).join("memory.max"), "max\n").unwrap();
        let cg2 = Cgroups::at(root2);
        assert_eq!(cg2.version, CgroupVersion::V2);
        let found = pod_cgroup_candidates("u-2")
            .into_iter()
            .find(|c| cg2.exists(c));
        assert_eq!(found.as_deref(), Some(pod2));
        assert_eq!(cg2.cpu_usage_ns(pod2), Some(1_500_000));
        let m = cg2.memory(pod2).unwrap();
        assert_eq!(
            (m.working_set_bytes, m.rss_bytes, m.available_bytes),
            (9000, 5000, None)
        );
    }

    #[test]
    fn rates() {
        let mut r = RateTracker::default();
        assert_eq!(r.rate("c", 0, 0), None);
        // Half a core over 10 s.
        assert_eq!(
            r.rate("c", 10_000_000_000, 5_000_000_000),
            Some(500_000_000)
        );
        // A restarted counter has no rate.
        assert_eq!(r.rate("c", 20_000_000_000, 1), None);
        r.sweep();
        r.sweep();
        assert_eq!(r.rate("c", 30_000_000_000, 2), None);
    }

    #[test]
    fn prometheus_text() {
        let s = Summary {
            node: NodeStats {
                cpu: CpuStats {
                    usage_core_nano_seconds: 2_500_000_000,
                    ..Default::default()
                },
                memory: MemoryStats {
                    working_set_bytes: 1024,
                    ..Default::default()
                },
                ..Default::default()
            },
            pods: vec![PodStats {
                pod_ref: PodReference {
                    name: "web".into(),
                    namespace: "default".into(),
                    uid: "u".into(),
                },
                containers: vec![ContainerStats {
                    name: "c\"1".into(),
                    start_time: "2024-05-01T10:00:00Z".into(),
                    cpu: CpuStats {
                        usage_core_nano_seconds: 1_000_000_000,
                        ..Default::default()
                    },
                    ..Default::default()
                }],
                ..Default::default()
            }],
            scrape_error: false,
            time_ms: 1000,
        };
        let text = s.prometheus();
        assert!(
            text.contains("node_cpu_usage_seconds_total 2.5 1000\n"),
            "{text}"
        );
        assert!(text.contains("node_memory_working_set_bytes 1024 1000\n"));
        assert!(text.contains(
            "container_cpu_usage_seconds_total{container=\"c\\\"1\",namespace=\"default\",pod=\"web\"} 1 1000\n"
        ));
        assert!(text.contains("container_start_time_seconds{container=\"c\\\"1\",namespace=\"default\",pod=\"web\"} 1714557600 1000\n"));
        assert!(
            text.contains(
                "pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"} 0 1000\n"
            )
        );
        assert!(text.ends_with("scrape_error 0\n"));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["pods"][0]["podRef"]["name"], "web");
        assert_eq!(
            json["node"]["cpu"]["usageCoreNanoSeconds"],
            2_500_000_000u64
        );
        assert!(json["node"]["cpu"].get("usageNanoCores").is_none());
    }
}
