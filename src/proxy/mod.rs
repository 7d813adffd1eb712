//! The service proxy (kaji's kube-proxy): programs Service virtual IPs, NodePorts,
//! load-balancer and external IPs into the node's netfilter (nftables) from Services and
//! EndpointSlices. Runs in the node agent (see [`start`]).
//!
//! Semantics follow upstream kube-proxy's nftables mode: a random ready endpoint per new
//! connection (serving-and-terminating ones only when none is ready), reject when a
//! service has no endpoints, NodePorts on every local address except loopback,
//! `externalTrafficPolicy`/`internalTrafficPolicy: Local`, ClientIP session affinity,
//! masquerade of hairpin traffic, of traffic from outside the cluster CIDR and of
//! external traffic under the `Cluster` policy, and conntrack cleanup for UDP.
//!
//! Watches (kube-runtime reflectors, identity `system:kube-proxy`) feed a sync loop that
//! coalesces changes (at most one sync per [`Config::min_sync_interval`]) and writes
//! each sync as one atomic `nft -f -` transaction on `table ip kaji` ([`nft`]). The table
//! is reconciled in place on restart and left in place on exit, so established and new
//! connections keep flowing while kaji restarts; [`cleanup`] (`kaji server
//! --cleanup-proxy`) removes it.
//!
//! Skipped, as upstream: ExternalName and headless Services, Services labelled
//! `service.kubernetes.io/service-proxy-name`, and the cluster DNS address when kaji's DNS
//! serves it node-locally.
//!
//! Depends on: `client` (through `kube`), `api`, `config`, `reflect` (watches),
//! `netfilter` (running `nft`), and the node agent's `AgentConfig` (plain data). Must not
//! depend on: `store`, `apiserver`.

pub mod conntrack;
pub mod model;
pub mod nft;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{reflector, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::reflect;

/// Errors of the service proxy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required program is not installed.
    #[error(
        "{0} not found on PATH: the service proxy needs it (Debian package nftables), or run with --disable-kube-proxy"
    )]
    MissingBinary(&'static str),
    /// `nft` rejected a transaction.
    #[error("nft: {0}")]
    Nft(String),
    /// Running a command failed.
    #[error("{0}")]
    Command(String),
    /// A setting is invalid.
    #[error("invalid setting: {0}")]
    Config(String),
}

impl From<crate::netfilter::Error> for Error {
    fn from(e: crate::netfilter::Error) -> Self {
        use crate::netfilter::Error as E;
        match e {
            E::NotFound => Error::MissingBinary("nft"),
            E::Rejected(msg) => Error::Nft(msg),
            E::Io(e) => Error::Command(format!("nft: {e}")),
        }
    }
}

/// Settings of the proxy on one node.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node's name (endpoints with this `nodeName` are local).
    pub node_name: String,
    /// The pod network (`--cluster-cidr`).
    pub cluster_cidr: String,
    /// The service network (`--service-cidr`).
    pub service_cidr: String,
    /// Cluster IPs served node-locally, never DNATed (the cluster DNS address).
    pub skip_ips: Vec<Ipv4Addr>,
    /// The shortest time between two syncs (upstream's `minSyncPeriod`).
    pub min_sync_interval: Duration,
    /// How often the whole table is re-listed and rewritten even without changes.
    pub full_sync_interval: Duration,
}

impl Config {
    /// The settings for the node agent `cfg`.
    pub fn from_agent(cfg: &crate::agent::AgentConfig) -> Config {
        let skip_ips = match cfg.cluster_dns {
            IpAddr::V4(ip) if cfg.enabled("dns") => vec![ip],
            _ => vec![],
        };
        Config {
            node_name: cfg.node_name.clone(),
            cluster_cidr: cfg.cluster_cidr.clone(),
            service_cidr: cfg.service_cidr.clone(),
            skip_ips,
            min_sync_interval: Duration::from_millis(150),
            full_sync_interval: Duration::from_secs(300),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        for (flag, cidr) in [
            ("--cluster-cidr", &self.cluster_cidr),
            ("--service-cidr", &self.service_cidr),
        ] {
            parse_cidr(cidr).ok_or_else(|| {
                Error::Config(format!(
                    "{flag} {cidr:?}: the service proxy needs an IPv4 CIDR"
                ))
            })?;
        }
        Ok(())
    }
}

fn parse_cidr(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = cidr.split_once('/')?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((ip.parse().ok()?, len))
}

/// Figures of the sync loop.
#[derive(Debug, Clone, Default)]
pub struct SyncStats {
    /// Successful syncs.
    pub syncs: u64,
    /// Failed syncs.
    pub failures: u64,
    /// Wall time of the last successful sync (rendering, `nft`, conntrack).
    pub last_sync_duration: Option<Duration>,
    /// Service ports programmed by the last sync.
    pub service_ports: usize,
    /// Rules in the table after the last sync.
    pub rules: usize,
}

/// A handle on a running proxy.
#[derive(Debug, Clone, Default)]
pub struct Proxy {
    stats: Arc<Mutex<SyncStats>>,
}

impl Proxy {
    /// The current figures.
    pub fn stats(&self) -> SyncStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The duration of the last successful sync.
    pub fn last_sync_duration(&self) -> Option<Duration> {
        self.stats().last_sync_duration
    }
}

/// Checks prerequisites, prepares the node (sysctls, a route for the service network),
/// and spawns the watches and the sync loop until `shutdown`. Rules stay installed when
/// it ends.
pub async fn start(
    client: kube::Client,
    cfg: Config,
    shutdown: CancellationToken,
) -> Result<(Proxy, tokio::task::JoinHandle<()>), Error> {
    cfg.validate()?;
    nft::check_binary().await?;
    prepare_node(&cfg).await;
    let proxy = Proxy::default();
    let handle = tokio::spawn(run(client, cfg, proxy.clone(), shutdown));
    Ok((proxy, handle))
}

/// Removes everything the proxy installed: the `ip kaji` table and the service-network
/// route device, if it made one.
pub async fn cleanup() -> Result<(), Error> {
    nft::check_binary().await?;
    nft::delete_table().await?;
    tracing::info!("removed nftables table ip {}", nft::TABLE);
    let removed = tokio::process::Command::new("ip")
        .args(["link", "del", SERVICE_LINK])
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if removed {
        tracing::info!(
            dev = SERVICE_LINK,
            "removed the service network route device"
        );
    }
    Ok(())
}

fn write_sysctl(path: &str, value: &str) {
    let full = format!("/proc/sys/{path}");
    if std::fs::read_to_string(&full).is_ok_and(|v| v.trim() == value) {
        return;
    }
    match std::fs::write(&full, value) {
        Ok(()) => tracing::info!(sysctl = %path.replace('/', "."), %value, "set"),
        Err(e) => tracing::warn!(
            sysctl = %path.replace('/', "."),
            %value,
            "cannot set: {e}; services may not work"
        ),
    }
}

/// Sysctls services need, and a route for the service network if the node has none (a
/// node without a default route could not even send to a cluster IP: the route goes to a
/// dummy device, or an empty bridge where the kernel has no dummy driver, so packets that
/// no rule translates are discarded, as kube-proxy's IPVS mode does with kube-ipvs0).
async fn prepare_node(cfg: &Config) {
    write_sysctl("net/ipv4/ip_forward", "1");
    if !std::path::Path::new("/proc/sys/net/bridge").exists() {
        let _ = tokio::process::Command::new("modprobe")
            .arg("br_netfilter")
            .output()
            .await;
    }
    if std::path::Path::new("/proc/sys/net/bridge").exists() {
        write_sysctl("net/bridge/bridge-nf-call-iptables", "1");
    } else {
        tracing::warn!(
            "br_netfilter is not loaded: replies between pods on the same bridge bypass service NAT"
        );
    }
    let Some((net, _)) = parse_cidr(&cfg.service_cidr) else {
        return;
    };
    let probe = Ipv4Addr::from(u32::from(net).wrapping_add(1));
    let routed = tokio::process::Command::new("ip")
        .args(["-4", "route", "get", &probe.to_string()])
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if routed {
        return;
    }
    let ip = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            match tokio::process::Command::new("ip")
                .args(&args)
                .output()
                .await
            {
                Ok(o) if o.status.success() => true,
                Ok(o) => {
                    tracing::debug!(cmd = %args.join(" "), err = %String::from_utf8_lossy(&o.stderr).trim(), "ip failed");
                    false
                }
                Err(e) => {
                    tracing::warn!("ip: {e}");
                    false
                }
            }
        }
    };
    // A dummy device where the kernel has one, else a bridge without ports: either way
    // nothing that leaves through it goes anywhere.
    if !ip(&["link", "add", SERVICE_LINK, "type", "dummy"]).await {
        ip(&["link", "add", SERVICE_LINK, "type", "bridge"]).await;
    }
    ip(&["link", "set", SERVICE_LINK, "up"]).await;
    if ip(&["route", "replace", &cfg.service_cidr, "dev", SERVICE_LINK]).await {
        tracing::info!(cidr = %cfg.service_cidr, dev = SERVICE_LINK, "no route to the service network: added one");
    } else {
        tracing::warn!(cidr = %cfg.service_cidr, "no route to the service network and none could be added: the node itself cannot reach cluster IPs");
    }
}

/// The device routing the service network on nodes without a default route.
pub const SERVICE_LINK: &str = "kaji-svc";

async fn run(client: kube::Client, cfg: Config, proxy: Proxy, shutdown: CancellationToken) {
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let wake = Arc::new(Notify::new());
    let w1 = reflect::spawn(
        "service proxy",
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        svc_writer,
        wake.clone(),
        shutdown.clone(),
    );
    let w2 = reflect::spawn(
        "service proxy",
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
        slice_writer,
        wake.clone(),
        shutdown.clone(),
    );
    // The first sync must see complete lists, or it would remove live services' rules.
    tokio::select! {
        _ = shutdown.cancelled() => return,
        r = async { tokio::try_join!(services.wait_until_ready(), slices.wait_until_ready()) } => {
            if r.is_err() { return; }
        }
    }
    let ctx = model::NodeContext {
        node_name: cfg.node_name.clone(),
        skip_ips: cfg.skip_ips.clone(),
    };
    let settings = nft::Settings {
        cluster_cidr: cfg.cluster_cidr.clone(),
        service_cidr: cfg.service_cidr.clone(),
        local_ips: cfg.skip_ips.clone(),
    };
    let mut installed: Option<nft::Installed> = None;
    let mut last_ports: Vec<model::ServicePort> = Vec::new();
    let mut last_start = Instant::now() - cfg.min_sync_interval;
    let mut last_full = Instant::now();
    let mut retry = Duration::from_secs(1);
    let mut first = true;
    loop {
        // Coalesce: at most one sync per interval; events meanwhile leave one permit.
        let since = last_start.elapsed();
        if since < cfg.min_sync_interval {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(cfg.min_sync_interval - since) => {}
            }
        }
        if last_full.elapsed() >= cfg.full_sync_interval {
            installed = None;
            last_full = Instant::now();
        }
        last_start = Instant::now();
        let svcs = services.state();
        let sls = slices.state();
        let ports = model::build(
            svcs.iter().map(|s| s.as_ref()),
            sls.iter().map(|s| s.as_ref()),
            &ctx,
        );
        let rs = nft::render(&ports, &settings);
        let result = sync(&rs, installed.as_ref()).await;
        match result {
            Ok(next) => {
                installed = Some(next);
                conntrack::delete(&conntrack::stale_flows(&last_ports, &ports)).await;
                let took = last_start.elapsed();
                {
                    let mut st = proxy.stats.lock().unwrap_or_else(|e| e.into_inner());
                    st.syncs += 1;
                    st.last_sync_duration = Some(took);
                    st.service_ports = ports.len();
                    st.rules = rs.rule_count();
                }
                if first {
                    tracing::info!(
                        service_ports = ports.len(),
                        rules = rs.rule_count(),
                        duration_ms = took.as_secs_f64() * 1e3,
                        "service proxy rules programmed"
                    );
                    first = false;
                } else {
                    tracing::debug!(
                        service_ports = ports.len(),
                        rules = rs.rule_count(),
                        duration_ms = took.as_secs_f64() * 1e3,
                        "service proxy synced"
                    );
                }
                last_ports = ports;
                retry = Duration::from_secs(1);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(cfg.full_sync_interval) => {}
                }
            }
            Err(e) => {
                proxy
                    .stats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .failures += 1;
                tracing::error!(retry_in = ?retry, "service proxy sync failed: {e}");
                // Re-list the table next time: our picture of it may be wrong.
                installed = None;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(Duration::from_secs(30));
            }
        }
    }
    let _ = w1.await;
    let _ = w2.await;
    tracing::debug!("service proxy stopped (rules left in place)");
}

/// One transaction; lists the table first when its content is unknown.
async fn sync(
    rs: &nft::Ruleset,
    installed: Option<&nft::Installed>,
) -> Result<nft::Installed, Error> {
    let listed;
    let installed = match installed {
        Some(i) => i,
        None => {
            listed = nft::list_objects().await?;
            &listed
        }
    };
    let (script, next) = nft::script(rs, installed);
    nft::apply(&script).await?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.42.0.0/16"),
            Some(("10.42.0.0".parse().unwrap(), 16))
        );
        assert_eq!(parse_cidr("10.42.0.0"), None);
        assert_eq!(parse_cidr("fd00::/64"), None);
        assert_eq!(parse_cidr("10.42.0.0/33"), None);
        let mut cfg = Config {
            node_name: "n".into(),
            cluster_cidr: "10.42.0.0/16".into(),
            service_cidr: "10.43.0.0/16".into(),
            skip_ips: vec![],
            min_sync_interval: Duration::from_millis(100),
            full_sync_interval: Duration::from_secs(60),
        };
        assert!(cfg.validate().is_ok());
        cfg.service_cidr = "nonsense".into();
        assert!(matches!(cfg.validate(), Err(Error::Config(_))));
    }
}
