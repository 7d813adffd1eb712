//! Service ClusterIP and NodePort allocation (upstream's service REST allocators,
//! `pkg/registry/core/service/{ipallocator,portallocator}` and `storage/alloc.go`).
//!
//! [`Allocator`] owns the in-memory bitmaps of the `--service-cidr` range and the
//! `--service-node-port-range`. Every IP or port is recorded with the uid of the Service
//! holding it. The registry calls [`allocate`] on Service creates and updates, just before
//! the store write, and gets a [`Txn`]: committing it releases what the update gave up;
//! dropping it without commit (validation failed, the store write lost a race) gives back
//! what it reserved. Deletes call [`Allocator::release_service`]. Picking and reserving
//! happen under one mutex, so concurrent creates never get the same IP or port; the state
//! is rebuilt from the stored Services at start ([`Allocator::rebuild`]).
//!
//! The first IP of the range belongs to the `kubernetes` Service and the cluster DNS IP
//! to `kube-dns`: neither is handed out dynamically, but both can be requested.
//!
//! Depends on `crate::api` (Status) and the watch cache only.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};

use super::super::cache::Cache;
use crate::api::ResourceInfo;
use crate::api::status::{Cause, Status};
use crate::api::validation::invalid;

/// Invalid `--service-cidr` or `--service-node-port-range`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The service CIDR is not an IPv4 CIDR with room for services.
    #[error("invalid service CIDR {0:?}: expected an IPv4 CIDR between /8 and /30")]
    Cidr(String),
    /// The node port range is not `low-high`.
    #[error("invalid service node port range {0:?}: expected LOW-HIGH, e.g. 30000-32767")]
    PortRange(String),
}

/// The ranges the allocator hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranges {
    /// `--service-cidr`, e.g. `10.43.0.0/16`.
    pub service_cidr: String,
    /// `--service-node-port-range`, e.g. `30000-32767`.
    pub node_port_range: String,
    /// IPs never handed out dynamically (the cluster DNS IP); requests for them succeed.
    pub reserved: Vec<IpAddr>,
}

impl Default for Ranges {
    fn default() -> Ranges {
        Ranges {
            service_cidr: "10.43.0.0/16".into(),
            node_port_range: "30000-32767".into(),
            reserved: vec![IpAddr::V4(Ipv4Addr::new(10, 43, 0, 10))],
        }
    }
}

/// Why an allocation failed (upstream's allocator error texts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum AllocError {
    #[error("range is full")]
    Full,
    #[error("provided IP is already allocated")]
    IpAllocated,
    #[error("provided port is already allocated")]
    PortAllocated,
    #[error("the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}")]
    IpNotInRange { ip: String, range: String },
    #[error("provided port is not in the valid range. The range of valid ports is {0}")]
    PortNotInRange(String),
}

#[derive(Debug, Default)]
struct State {
    /// Allocated IPs (offsets into the range) → owner uid.
    ips: HashMap<u32, String>,
    /// Allocated node ports → owner uid.
    ports: HashMap<u16, String>,
}

impl State {
    /// Frees the IPs (offsets) and ports among `ips` and `ports` that `owner` holds;
    /// those held by others stay.
    fn release_owned<'a>(
        &mut self,
        ips: impl IntoIterator<Item = &'a u32>,
        ports: impl IntoIterator<Item = &'a u16>,
        owner: &str,
    ) {
        release_owned(&mut self.ips, ips, owner);
        release_owned(&mut self.ports, ports, owner);
    }
}

fn release_owned<'a, K: std::hash::Hash + Eq + 'a>(
    held: &mut HashMap<K, String>,
    keys: impl IntoIterator<Item = &'a K>,
    owner: &str,
) {
    for k in keys {
        if held.get(k).is_some_and(|o| o == owner) {
            held.remove(k);
        }
    }
}

/// A free offset, at random, from the first of `bands` (inclusive `lo..=hi`; empty when
/// `lo > hi`) that has one.
fn pick_free(bands: &[(u32, u32)], free: impl Fn(u32) -> bool) -> Option<u32> {
    for &(lo, hi) in bands {
        if lo > hi {
            continue;
        }
        let n = hi - lo + 1;
        let start = random_below(n);
        if let Some(off) = (0..n).map(|k| lo + (start + k) % n).find(|off| free(*off)) {
            return Some(off);
        }
    }
    None
}

/// The ClusterIP and NodePort allocator of one API server.
#[derive(Debug)]
pub struct Allocator {
    base: u32,
    size: u32,
    cidr: String,
    port_low: u16,
    port_high: u16,
    port_range: String,
    reserved: Vec<u32>,
    state: Mutex<State>,
}

fn parse_cidr(cidr: &str) -> Option<(u32, u32)> {
    let (net, bits) = cidr.trim().split_once('/')?;
    let ip: Ipv4Addr = net.parse().ok()?;
    let bits: u32 = bits.parse().ok()?;
    if !(8..=30).contains(&bits) {
        return None;
    }
    let size = 1u32 << (32 - bits);
    Some((u32::from(ip) & !(size - 1), size))
}

fn parse_port_range(r: &str) -> Option<(u16, u16)> {
    let (lo, hi) = r.trim().split_once('-')?;
    let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
    (lo > 0 && lo <= hi).then_some((lo, hi))
}

/// A random number below `n` (n > 0).
fn random_below(n: u32) -> u32 {
    use rand::Rng;
    rand::rng().random_range(0..n)
}

impl Allocator {
    /// An empty allocator over `ranges`.
    pub fn new(ranges: &Ranges) -> Result<Allocator, ConfigError> {
        let (base, size) = parse_cidr(&ranges.service_cidr)
            .ok_or_else(|| ConfigError::Cidr(ranges.service_cidr.clone()))?;
        let (port_low, port_high) = parse_port_range(&ranges.node_port_range)
            .ok_or_else(|| ConfigError::PortRange(ranges.node_port_range.clone()))?;
        let mut reserved = vec![1];
        for ip in &ranges.reserved {
            if let IpAddr::V4(v4) = ip {
                let n = u32::from(*v4);
                if n > base && n - base < size - 1 {
                    reserved.push(n - base);
                }
            }
        }
        Ok(Allocator {
            base,
            size,
            cidr: format!("{}/{}", Ipv4Addr::from(base), 32 - size.trailing_zeros()),
            port_low,
            port_high,
            port_range: format!("{port_low}-{port_high}"),
            reserved,
            state: Mutex::new(State::default()),
        })
    }

    /// The first IP of the range: the `kubernetes` Service's.
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets everything and re-records the IPs and ports of every stored Service.
    pub async fn rebuild(&self, cache: &Cache) {
        let Some(sri) = crate::api::resources::lookup("", "v1", "services") else {
            return;
        };
        let (entries, _, _) = cache.list(&sri.storage_prefix(), None, 0, |_| true).await;
        let mut st = State::default();
        for e in &entries {
            let uid = e.object["metadata"]["uid"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let name = e.object["metadata"]["name"].as_str().unwrap_or("");
            for ip in service_ips(&e.object) {
                match self.offset(&ip) {
                    Ok(off) => {
                        if let Some(prev) = st.ips.insert(off, uid.clone())
                            && prev != uid
                        {
                            tracing::warn!(service = name, %ip, "cluster IP held by two services");
                        }
                    }
                    Err(_) => {
                        tracing::warn!(service = name, %ip, range = %self.cidr, "cluster IP outside the service CIDR");
                    }
                }
            }
            for p in service_node_ports(&e.object) {
                if let Ok(p) = u16::try_from(p) {
                    st.ports.insert(p, uid.clone());
                }
            }
        }
        tracing::info!(
            services = entries.len(),
            ips = st.ips.len(),
            node_ports = st.ports.len(),
            "service allocations restored"
        );
        *self.lock() = st;
    }

    /// The offset of `ip` in the range, if allocatable (not the network or broadcast).
    fn offset(&self, ip: &str) -> Result<u32, AllocError> {
        let not_in_range = || AllocError::IpNotInRange {
            ip: ip.to_string(),
            range: self.cidr.clone(),
        };
        let v4: Ipv4Addr = ip.parse().map_err(|_| not_in_range())?;
        let n = u32::from(v4);
        if n <= self.base || n - self.base >= self.size - 1 {
            return Err(not_in_range());
        }
        Ok(n - self.base)
    }

    fn allocate_ip(
        &self,
        st: &mut State,
        requested: Option<&str>,
        owner: &str,
        dry_run: bool,
    ) -> Result<u32, AllocError> {
        let off = match requested {
            Some(ip) => {
                let off = self.offset(ip)?;
                if st.ips.contains_key(&off) {
                    return Err(AllocError::IpAllocated);
                }
                off
            }
            None => self.pick_ip(st)?,
        };
        if !dry_run {
            st.ips.insert(off, owner.to_string());
        }
        Ok(off)
    }

    /// A free dynamic IP: random in the upper band first (the lower band is left for
    /// static requests, as upstream), then anywhere.
    fn pick_ip(&self, st: &State) -> Result<u32, AllocError> {
        let usable = self.size - 2; // offsets 1..=size-2
        let static_band = (usable / 16).clamp(16, 256).min(usable);
        let free = |off: u32| !st.ips.contains_key(&off) && !self.reserved.contains(&off);
        pick_free(&[(static_band + 1, usable), (1, usable)], free).ok_or(AllocError::Full)
    }

    fn allocate_port(
        &self,
        st: &mut State,
        requested: Option<i64>,
        owner: &str,
        dry_run: bool,
    ) -> Result<u16, AllocError> {
        let port = match requested {
            Some(p) => {
                let p = u16::try_from(p)
                    .ok()
                    .filter(|p| (self.port_low..=self.port_high).contains(p))
                    .ok_or_else(|| AllocError::PortNotInRange(self.port_range.clone()))?;
                if st.ports.contains_key(&p) {
                    return Err(AllocError::PortAllocated);
                }
                p
            }
            None => self.pick_port(st)?,
        };
        if !dry_run {
            st.ports.insert(port, owner.to_string());
        }
        Ok(port)
    }

    fn pick_port(&self, st: &State) -> Result<u16, AllocError> {
        let size = u32::from(self.port_high - self.port_low) + 1;
        let static_band = (size / 32).clamp(16, 128).min(size);
        // Offsets are below `size`, so the ports fit in the range.
        let port = |off: u32| self.port_low + off as u16;
        pick_free(&[(static_band, size - 1), (0, size - 1)], |off| {
            !st.ports.contains_key(&port(off))
        })
        .map(port)
        .ok_or(AllocError::Full)
    }

    /// Releases everything a deleted Service held.
    pub fn release_service(&self, svc: &Value) {
        let uid = svc["metadata"]["uid"].as_str().unwrap_or("");
        let ips: Vec<u32> = service_ips(svc)
            .iter()
            .filter_map(|ip| self.offset(ip).ok())
            .collect();
        let ports: Vec<u16> = service_node_ports(svc)
            .into_iter()
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        self.lock().release_owned(&ips, &ports, uid);
    }

    /// Whether `ip` is currently allocated (for tests and diagnostics).
    pub fn ip_allocated(&self, ip: &str) -> bool {
        self.offset(ip)
            .is_ok_and(|off| self.lock().ips.contains_key(&off))
    }
}

/// A pending allocation: reverted on drop unless committed.
#[must_use = "commit the allocation once the object is stored"]
pub struct Txn {
    alloc: Option<Arc<Allocator>>,
    owner: String,
    new_ips: Vec<u32>,
    new_ports: Vec<u16>,
    release_ips: Vec<u32>,
    release_ports: Vec<u16>,
    done: bool,
}

impl Txn {
    fn empty(alloc: Option<Arc<Allocator>>, owner: &str) -> Txn {
        Txn {
            alloc,
            owner: owner.to_string(),
            new_ips: Vec::new(),
            new_ports: Vec::new(),
            release_ips: Vec::new(),
            release_ports: Vec::new(),
            done: false,
        }
    }

    /// The object was stored: keep what was reserved, release what it gave up.
    pub fn commit(mut self) {
        self.done = true;
        let Some(a) = &self.alloc else { return };
        a.lock()
            .release_owned(&self.release_ips, &self.release_ports, &self.owner);
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Some(a) = &self.alloc else { return };
        a.lock()
            .release_owned(&self.new_ips, &self.new_ports, &self.owner);
    }
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn ty(svc: &Value) -> &str {
    match s(&svc["spec"], "type") {
        "" => "ClusterIP",
        t => t,
    }
}

fn needs_cluster_ip(svc: &Value) -> bool {
    ty(svc) != "ExternalName"
}

fn is_headless(svc: &Value) -> bool {
    s(&svc["spec"], "clusterIP") == "None"
        || svc["spec"]["clusterIPs"].get(0).and_then(Value::as_str) == Some("None")
}

fn has_node_ports(svc: &Value) -> bool {
    matches!(ty(svc), "NodePort" | "LoadBalancer")
}

fn should_allocate_node_ports(svc: &Value) -> bool {
    ty(svc) == "NodePort"
        || (ty(svc) == "LoadBalancer"
            && svc["spec"]["allocateLoadBalancerNodePorts"] != json!(false))
}

/// `NeedsHealthCheck`: a LoadBalancer with `externalTrafficPolicy: Local`.
fn needs_health_check(svc: &Value) -> bool {
    ty(svc) == "LoadBalancer" && s(&svc["spec"], "externalTrafficPolicy") == "Local"
}

/// The cluster IPs a stored Service holds.
fn service_ips(svc: &Value) -> Vec<String> {
    if !needs_cluster_ip(svc) || is_headless(svc) {
        return Vec::new();
    }
    let spec = &svc["spec"];
    let mut out: Vec<String> = spec["clusterIPs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let primary = s(spec, "clusterIP");
    if !primary.is_empty() && !out.iter().any(|x| x == primary) {
        out.push(primary.to_string());
    }
    out.retain(|x| !x.is_empty() && x != "None");
    out
}

/// The node ports (including the health check port) a stored Service holds.
fn service_node_ports(svc: &Value) -> Vec<i64> {
    let mut out: Vec<i64> = Vec::new();
    for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
        if let Some(np) = p["nodePort"].as_i64().filter(|n| *n != 0)
            && !out.contains(&np)
        {
            out.push(np);
        }
    }
    if let Some(hc) = svc["spec"]["healthCheckNodePort"]
        .as_i64()
        .filter(|n| *n != 0)
        && !out.contains(&hc)
    {
        out.push(hc);
    }
    out
}

fn invalid_status(svc: &Value, cause: Cause) -> Status {
    let name = svc["metadata"]["name"].as_str().unwrap_or("");
    Status::invalid("", "Service", name, vec![cause])
}

/// Checks and completes the IP family fields for this single-stack IPv4 cluster (the
/// part of upstream's `initIPFamilyFields` that can fail here).
fn check_families(svc: &mut Value) -> Result<(), Status> {
    if !needs_cluster_ip(svc) {
        return Ok(());
    }
    let selectorless_headless = is_headless(svc)
        && svc["spec"]["selector"]
            .as_object()
            .is_none_or(|m| m.is_empty());
    let mut causes = Vec::new();
    if s(&svc["spec"], "ipFamilyPolicy") == "RequireDualStack" && !selectorless_headless {
        causes.push(invalid(
            "spec.ipFamilyPolicy",
            &json!("RequireDualStack"),
            "this cluster is not configured for dual-stack services",
        ));
    }
    if !selectorless_headless {
        for (i, f) in svc["spec"]["ipFamilies"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if f != "IPv4" {
                causes.push(invalid(
                    format!("spec.ipFamilies[{i}]"),
                    f,
                    "not configured on this cluster",
                ));
            }
        }
        for (i, ip) in svc["spec"]["clusterIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if ip.as_str().is_some_and(|x| x.contains(':')) {
                causes.push(invalid(
                    format!("spec.clusterIPs[{i}]"),
                    &svc["spec"]["clusterIPs"],
                    "IPv6 is not configured on this cluster",
                ));
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        let name = svc["metadata"]["name"].as_str().unwrap_or("");
        Err(Status::invalid("", "Service", name, causes))
    }
}

/// Reserves the cluster IPs and node ports of a Service being created (`old` = None) or
/// updated, filling in `spec.clusterIP(s)`, `nodePort`s and `healthCheckNodePort` in
/// `svc`. A no-op transaction for other kinds or without an allocator.
pub fn allocate(
    alloc: Option<&Arc<Allocator>>,
    sri: &ResourceInfo,
    svc: &mut Value,
    old: Option<&Value>,
    dry_run: bool,
) -> Result<Txn, Status> {
    let owner = svc["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let Some(a) = alloc.filter(|_| sri.group.is_empty() && sri.kind == "Service") else {
        return Ok(Txn::empty(None, &owner));
    };
    let mut txn = Txn::empty(Some(a.clone()), &owner);
    check_families(svc)?;
    let mut st = a.lock();
    // Cluster IPs.
    let had_ip = old.is_some_and(|o| !service_ips(o).is_empty());
    if needs_cluster_ip(svc) {
        if is_headless(svc) {
            svc["spec"]["clusterIP"] = json!("None");
            svc["spec"]["clusterIPs"] = json!(["None"]);
        } else if !had_ip || old.is_some_and(|o| !needs_cluster_ip(o)) {
            let spec = &svc["spec"];
            let requested = spec["clusterIPs"]
                .get(0)
                .and_then(Value::as_str)
                .filter(|x| !x.is_empty())
                .or_else(|| spec["clusterIP"].as_str().filter(|x| !x.is_empty()))
                .map(str::to_string);
            match a.allocate_ip(&mut st, requested.as_deref(), &owner, dry_run) {
                Ok(off) => {
                    if !dry_run {
                        txn.new_ips.push(off);
                    }
                    let ip = Ipv4Addr::from(a.base + off).to_string();
                    svc["spec"]["clusterIP"] = json!(ip);
                    svc["spec"]["clusterIPs"] = json!([ip]);
                }
                Err(AllocError::Full) => {
                    return Err(Status::internal(format!(
                        "failed to allocate a serviceIP: {}",
                        AllocError::Full
                    )));
                }
                Err(e) => {
                    let ips = match &svc["spec"]["clusterIPs"] {
                        Value::Array(a) if !a.is_empty() => json!(a),
                        _ => json!([requested.clone().unwrap_or_default()]),
                    };
                    return Err(invalid_status(
                        svc,
                        invalid(
                            "spec.clusterIPs",
                            &ips,
                            &format!(
                                "failed to allocate IP {}: {e}",
                                requested.unwrap_or_default()
                            ),
                        ),
                    ));
                }
            }
        }
    }
    if let Some(o) = old
        && !needs_cluster_ip(svc)
    {
        txn.release_ips
            .extend(service_ips(o).iter().filter_map(|ip| a.offset(ip).ok()));
    }
    // Node ports.
    let old_ports: Vec<i64> = old
        .map(|o| {
            let mut v: Vec<i64> = o["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["nodePort"].as_i64())
                .filter(|n| *n != 0)
                .collect();
            v.dedup();
            v
        })
        .unwrap_or_default();
    let mut kept: Vec<i64> = Vec::new();
    if has_node_ports(svc) {
        let allocate_new = should_allocate_node_ports(svc);
        let mut by_port: HashMap<i64, i64> = HashMap::new();
        let n = svc["spec"]["ports"].as_array().map_or(0, Vec::len);
        // Requested ports are reserved before any is picked at random, so a random pick
        // never takes a port the same Service asks for further down its list.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| {
            svc["spec"]["ports"][i]["nodePort"]
                .as_i64()
                .is_none_or(|n| n == 0)
        });
        for i in order {
            let p = &svc["spec"]["ports"][i];
            let requested = p["nodePort"].as_i64().filter(|n| *n != 0);
            let port = p["port"].as_i64().unwrap_or(0);
            if requested.is_none() && !allocate_new {
                continue;
            }
            let np = match requested {
                Some(np) if old_ports.contains(&np) || kept.contains(&np) => np,
                Some(np) => {
                    match a.allocate_port(&mut st, Some(np), &owner, dry_run) {
                        Ok(_) => {}
                        Err(e) => {
                            return Err(invalid_status(
                                svc,
                                invalid(
                                    format!("spec.ports[{i}].nodePort"),
                                    &json!(np),
                                    &e.to_string(),
                                ),
                            ));
                        }
                    }
                    if !dry_run {
                        txn.new_ports.push(np as u16);
                    }
                    np
                }
                None => match by_port.get(&port) {
                    // The same service port over another protocol shares its node port.
                    Some(np) => *np,
                    None => {
                        let np = a
                            .allocate_port(&mut st, None, &owner, dry_run)
                            .map_err(|e| {
                                Status::internal(format!("failed to allocate a nodePort: {e}"))
                            })?;
                        if !dry_run {
                            txn.new_ports.push(np);
                        }
                        i64::from(np)
                    }
                },
            };
            svc["spec"]["ports"][i]["nodePort"] = json!(np);
            by_port.entry(port).or_insert(np);
            kept.push(np);
        }
    }
    // Health check node port.
    let old_hc = old
        .filter(|o| needs_health_check(o))
        .and_then(|o| o["spec"]["healthCheckNodePort"].as_i64())
        .filter(|n| *n != 0);
    if needs_health_check(svc) {
        let requested = svc["spec"]["healthCheckNodePort"]
            .as_i64()
            .filter(|n| *n != 0);
        let hc = match (requested, old_hc) {
            (Some(r), Some(o)) if r == o => r,
            (None, Some(o)) => o,
            (req, _) => {
                let np = a
                    .allocate_port(&mut st, req, &owner, dry_run)
                    .map_err(|e| match req {
                        Some(r) => Status::internal(format!(
                            "failed to allocate requested HealthCheck NodePort {r}: {e}"
                        )),
                        None => Status::internal(format!(
                            "failed to allocate a HealthCheck NodePort 0: {e}"
                        )),
                    })?;
                if !dry_run {
                    txn.new_ports.push(np);
                }
                i64::from(np)
            }
        };
        svc["spec"]["healthCheckNodePort"] = json!(hc);
        kept.push(hc);
    } else if let Some(spec) = svc["spec"].as_object_mut()
        && old.is_some()
        && old_hc.is_some()
        && spec.get("healthCheckNodePort").and_then(Value::as_i64) == old_hc
    {
        spec.remove("healthCheckNodePort");
    }
    let mut given_up = old_ports;
    given_up.extend(old_hc);
    txn.release_ports.extend(
        given_up
            .into_iter()
            .filter(|p| !kept.contains(p))
            .filter_map(|p| u16::try_from(p).ok()),
    );
    Ok(txn)
}

/// Releases what a deleted object held, if it is a Service.
pub fn release(alloc: Option<&Arc<Allocator>>, sri: &ResourceInfo, obj: &Value) {
    if let Some(a) = alloc
        && sri.group.is_empty()
        && sri.kind == "Service"
    {
        a.release_service(obj);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> &'static ResourceInfo {
        crate::api::resources::lookup("", "v1", "services").unwrap()
    }

    fn alloc(cidr: &str, ports: &str) -> Arc<Allocator> {
        Arc::new(
            Allocator::new(&Ranges {
                service_cidr: cidr.into(),
                node_port_range: ports.into(),
                reserved: vec!["10.43.0.10".parse().unwrap()],
            })
            .unwrap(),
        )
    }

    fn svc(uid: &str, spec: Value) -> Value {
        json!({"metadata": {"name": format!("s-{uid}"), "uid": uid}, "spec": spec})
    }

    #[test]
    fn config_parsing() {
        assert!(Allocator::new(&Ranges::default()).is_ok());
        for (cidr, ports) in [
            ("10.43.0.0", "30000-32767"),
            ("10.43.0.0/31", "30000-32767"),
            ("fd00::/64", "30000-32767"),
            ("10.43.0.0/16", "32767-30000"),
            ("10.43.0.0/16", "x"),
        ] {
            assert!(
                Allocator::new(&Ranges {
                    service_cidr: cidr.into(),
                    node_port_range: ports.into(),
                    reserved: vec![]
                })
                .is_err(),
                "{cidr} {ports}"
            );
        }
        let a = alloc("10.43.7.9/16", "30000-32767");
        assert_eq!(a.first_ip().to_string(), "10.43.0.1");
        assert_eq!(a.cidr, "10.43.0.0/16");
    }

    #[test]
    fn cluster_ips() {
        let a = alloc("10.43.0.0/16", "30000-32767");
        let mut s1 = svc("u1", json!({"type": "ClusterIP", "ports": [{"port": 80}]}));
        allocate(Some(&a), services(), &mut s1, None, false)
            .unwrap()
            .commit();
        let ip = s1["spec"]["clusterIP"].as_str().unwrap().to_string();
        assert_eq!(s1["spec"]["clusterIPs"], json!([ip]));
        assert!(ip.starts_with("10.43.") && ip != "10.43.0.1" && ip != "10.43.0.10");
        assert!(a.ip_allocated(&ip));

        // Requested: honoured; a second request for it is refused with upstream's text.
        let mut s2 = svc(
            "u2",
            json!({"clusterIP": "10.43.0.10", "ports": [{"port": 53}]}),
        );
        allocate(Some(&a), services(), &mut s2, None, false)
            .unwrap()
            .commit();
        assert_eq!(s2["spec"]["clusterIPs"], json!(["10.43.0.10"]));
        let mut s3 = svc(
            "u3",
            json!({"clusterIP": "10.43.0.10", "ports": [{"port": 53}]}),
        );
        let err = allocate(Some(&a), services(), &mut s3, None, false)
            .err()
            .unwrap();
        assert_eq!(err.code, 422);
        assert_eq!(
            err.message,
            "Service \"s-u3\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.43.0.10\"}: failed to allocate IP 10.43.0.10: provided IP is already allocated"
        );
        let mut s4 = svc(
            "u4",
            json!({"clusterIPs": ["10.44.0.1"], "ports": [{"port": 53}]}),
        );
        let err = allocate(Some(&a), services(), &mut s4, None, false)
            .err()
            .unwrap();
        assert!(
            err.message.ends_with("failed to allocate IP 10.44.0.1: the provided IP (10.44.0.1) is not in the valid range. The range of valid IPs is 10.43.0.0/16"),
            "{}",
            err.message
        );
        // Headless and ExternalName get none.
        let mut h = svc("u5", json!({"clusterIP": "None", "selector": {"a": "b"}}));
        allocate(Some(&a), services(), &mut h, None, false)
            .unwrap()
            .commit();
        assert_eq!(h["spec"]["clusterIPs"], json!(["None"]));
        let mut en = svc(
            "u6",
            json!({"type": "ExternalName", "externalName": "x.example"}),
        );
        allocate(Some(&a), services(), &mut en, None, false)
            .unwrap()
            .commit();
        assert!(en["spec"].get("clusterIP").is_none());

        // Released on delete; an uncommitted transaction gives its IP back.
        a.release_service(&s2);
        assert!(!a.ip_allocated("10.43.0.10"));
        let mut s7 = svc(
            "u7",
            json!({"clusterIP": "10.43.0.10", "ports": [{"port": 53}]}),
        );
        drop(allocate(Some(&a), services(), &mut s7, None, false).unwrap());
        assert!(!a.ip_allocated("10.43.0.10"));
        // Dry run reserves nothing.
        let mut s8 = svc(
            "u8",
            json!({"clusterIP": "10.43.0.10", "ports": [{"port": 53}]}),
        );
        allocate(Some(&a), services(), &mut s8, None, true)
            .unwrap()
            .commit();
        assert!(!a.ip_allocated("10.43.0.10"));
    }

    #[test]
    fn full_range() {
        // A /29 has 6 usable addresses; the first is the kubernetes service's.
        let a = alloc("10.50.0.0/29", "30000-30001");
        for n in 0..5 {
            let mut s = svc(&format!("u{n}"), json!({"ports": [{"port": 80}]}));
            allocate(Some(&a), services(), &mut s, None, false)
                .unwrap()
                .commit();
        }
        let mut s = svc("last", json!({"ports": [{"port": 80}]}));
        let err = allocate(Some(&a), services(), &mut s, None, false)
            .err()
            .unwrap();
        assert_eq!(err.code, 500);
        assert_eq!(
            err.message,
            "Internal error occurred: failed to allocate a serviceIP: range is full"
        );
        // The reserved first IP can still be requested.
        let mut k = svc(
            "k",
            json!({"clusterIP": "10.50.0.1", "ports": [{"port": 443}]}),
        );
        allocate(Some(&a), services(), &mut k, None, false)
            .unwrap()
            .commit();
    }

    #[test]
    fn node_ports() {
        let a = alloc("10.43.0.0/16", "30000-30100");
        let mut np = svc(
            "u1",
            json!({"type": "NodePort", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}, {"name": "web", "port": 80, "nodePort": 30004}]}),
        );
        allocate(Some(&a), services(), &mut np, None, false)
            .unwrap()
            .commit();
        let p = &np["spec"]["ports"];
        assert_eq!(
            p[0]["nodePort"], p[1]["nodePort"],
            "same port, two protocols"
        );
        assert_eq!(p[2]["nodePort"], 30004);
        let auto = p[0]["nodePort"].as_i64().unwrap();
        assert!((30000..=30100).contains(&auto));

        let mut clash = svc(
            "u2",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30004}]}),
        );
        let err = allocate(Some(&a), services(), &mut clash, None, false)
            .err()
            .unwrap();
        assert_eq!(
            err.message,
            "Service \"s-u2\" is invalid: spec.ports[0].nodePort: Invalid value: 30004: provided port is already allocated"
        );
        let mut out = svc(
            "u3",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 31000}]}),
        );
        let err = allocate(Some(&a), services(), &mut out, None, false)
            .err()
            .unwrap();
        assert!(err.message.ends_with("Invalid value: 31000: provided port is not in the valid range. The range of valid ports is 30000-30100"), "{}", err.message);

        // LoadBalancer without node ports, then Local traffic policy gets a health check port.
        let mut lb = svc(
            "u4",
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "externalTrafficPolicy": "Local", "ports": [{"port": 81}]}),
        );
        allocate(Some(&a), services(), &mut lb, None, false)
            .unwrap()
            .commit();
        assert!(lb["spec"]["ports"][0].get("nodePort").is_none());
        let hc = lb["spec"]["healthCheckNodePort"].as_i64().unwrap();
        assert!((30000..=30100).contains(&hc));

        // Update to ClusterIP: the node ports are released at commit.
        let old = np.clone();
        let mut new = svc(
            "u1",
            json!({"type": "ClusterIP", "clusterIP": old["spec"]["clusterIP"], "ports": [{"name": "web", "port": 80}]}),
        );
        let txn = allocate(Some(&a), services(), &mut new, Some(&old), false).unwrap();
        let mut again = svc(
            "u5",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30004}]}),
        );
        assert!(
            allocate(Some(&a), services(), &mut again, None, true).is_err(),
            "not yet released"
        );
        txn.commit();
        allocate(Some(&a), services(), &mut again, None, false)
            .unwrap()
            .commit();

        // Update changing one node port: new reserved, old released.
        let old = again.clone();
        let mut new = old.clone();
        new["spec"]["ports"][0]["nodePort"] = json!(30009);
        allocate(Some(&a), services(), &mut new, Some(&old), false)
            .unwrap()
            .commit();
        let mut reuse = svc(
            "u6",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30004}]}),
        );
        allocate(Some(&a), services(), &mut reuse, None, false)
            .unwrap()
            .commit();
    }

    #[test]
    fn requested_node_ports_are_reserved_before_random_ones() {
        // 17 ports: the dynamic band is the single port 30016, which the second
        // port asks for; the first must fall back to the static band.
        let a = alloc("10.43.0.0/16", "30000-30016");
        let mut s = svc(
            "u1",
            json!({"type": "NodePort", "ports": [{"name": "a", "port": 53}, {"name": "b", "port": 80, "nodePort": 30016}]}),
        );
        allocate(Some(&a), services(), &mut s, None, false)
            .unwrap()
            .commit();
        assert_eq!(s["spec"]["ports"][1]["nodePort"], 30016);
        let first = s["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!((30000..30016).contains(&first), "{first}");
    }

    #[test]
    fn families() {
        let a = alloc("10.43.0.0/16", "30000-32767");
        let mut v6 = svc(
            "u1",
            json!({"ipFamilies": ["IPv6"], "ports": [{"port": 80}]}),
        );
        let err = allocate(Some(&a), services(), &mut v6, None, false)
            .err()
            .unwrap();
        assert_eq!(err.causes[0].field, "spec.ipFamilies[0]");
        let mut dual = svc(
            "u2",
            json!({"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}),
        );
        assert!(allocate(Some(&a), services(), &mut dual, None, false).is_err());
        let mut headless = svc(
            "u3",
            json!({"clusterIP": "None", "ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}),
        );
        assert!(allocate(Some(&a), services(), &mut headless, None, false).is_ok());
    }
}
