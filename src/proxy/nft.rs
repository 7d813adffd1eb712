//! The nftables data plane: renders the service ports into the chains, maps and sets of
//! `table ip kaji` (structured like upstream kube-proxy's nftables mode) and turns the
//! difference to what is installed into one `nft -f -` transaction.
//!
//! Layout of the table:
//!
//! - base chains `nat-prerouting`/`nat-output` jump to `services`, which dispatches on
//!   `daddr . proto . dport` (cluster, external and load-balancer IPs) through the verdict
//!   map `service-ips`, and on `proto . dport` for local destination addresses (node
//!   ports; loopback excluded) through `service-nodeports`;
//! - per service port: `service-…` (cluster IP: masquerade sources outside the cluster
//!   CIDR, then the internal policy's endpoints), `cluster-…`/`local-…` (random choice of
//!   an endpoint, `numgen random`, after the ClientIP affinity lookups), `external-…`
//!   (node port / external traffic: masquerade unless `externalTrafficPolicy: Local`), and
//!   one `endpoint-…` chain per endpoint (hairpin masquerade, affinity update, DNAT);
//! - per endpoint of a ClientIP-affinity service a dynamic set `affinity-…` of client
//!   addresses with the affinity timeout;
//! - filter chains reject new connections to service ports without endpoints
//!   (`no-endpoint-services`, `no-endpoint-nodeports`), drop external traffic when a
//!   `Local` policy has no local endpoint, and reject traffic to cluster IPs on unknown
//!   ports or to unallocated service addresses;
//! - `nat-postrouting` masquerades packets marked by `mark-for-masquerade`.
//!
//! Chains whose rules did not change since the last successful transaction are not
//! rewritten; maps are refilled every time. Rendering is pure and table-tested; only
//! [`apply`] and [`list_objects`] run `nft`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use sha2::Digest;

use super::Error;
use super::model::{Endpoint, ServicePort};

/// The table kaji owns.
pub const TABLE: &str = "kaji";
/// The packet mark bit that asks `nat-postrouting` to masquerade.
pub const MASQUERADE_MARK: u32 = 0x4000;

/// Cluster-wide settings the rules need.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The pod network (`--cluster-cidr`): sources inside it are not masqueraded.
    pub cluster_cidr: String,
    /// The service network (`--service-cidr`): unallocated addresses in it are dropped.
    pub service_cidr: String,
    /// Service addresses answered on the node itself (the node-local cluster DNS), never
    /// dropped as unallocated.
    pub local_ips: Vec<std::net::Ipv4Addr>,
}

/// One chain: an optional base-chain spec and its rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chain {
    /// `type nat hook prerouting priority -100 ;` for base chains.
    pub hook: Option<&'static str>,
    /// The rules, in order.
    pub rules: Vec<String>,
}

/// The complete desired content of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
    /// Affinity sets by name → timeout in seconds.
    pub affinity_sets: BTreeMap<String, u32>,
    /// Elements of the fixed maps and sets, by map name.
    pub elements: BTreeMap<&'static str, Vec<String>>,
}

impl Ruleset {
    /// The number of rules (what `nft list table` shows inside chains).
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }
}

/// The fixed maps and sets with their definitions.
const MAPS: &[(&str, &str)] = &[
    (
        "service-ips",
        "map ip kaji service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }",
    ),
    (
        "service-nodeports",
        "map ip kaji service-nodeports { type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }",
    ),
    (
        "no-endpoint-services",
        "map ip kaji no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }",
    ),
    (
        "no-endpoint-nodeports",
        "map ip kaji no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }",
    ),
    (
        "cluster-ips",
        "set ip kaji cluster-ips { type ipv4_addr ; comment \"Active ClusterIPs\" ; }",
    ),
];

/// Base chains and their hooks. Filter chains run at -110 (before DNAT on output, after
/// it on input/forward), as upstream's; `filter-output-post-dnat` after DNAT on output.
const BASE_CHAINS: &[(&str, &str)] = &[
    (
        "filter-input",
        "type filter hook input priority -110 ; policy accept ;",
    ),
    (
        "filter-forward",
        "type filter hook forward priority -110 ; policy accept ;",
    ),
    (
        "filter-output",
        "type filter hook output priority -110 ; policy accept ;",
    ),
    (
        "filter-output-post-dnat",
        "type filter hook output priority -90 ; policy accept ;",
    ),
    (
        "nat-prerouting",
        "type nat hook prerouting priority -100 ; policy accept ;",
    ),
    (
        "nat-output",
        "type nat hook output priority -100 ; policy accept ;",
    ),
    (
        "nat-postrouting",
        "type nat hook postrouting priority 100 ; policy accept ;",
    ),
];

fn hash8(parts: &[&str]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    d[..4].iter().map(|b| format!("{b:02X}")).collect()
}

/// Chain and set names of one service port (upstream style: a hash, then the readable id).
struct Names {
    id: String,
    hash: String,
}

impl Names {
    fn new(sp: &ServicePort) -> Names {
        let id = sp.id();
        Names {
            hash: hash8(&[&id]),
            id,
        }
    }
    fn chain(&self, kind: &str) -> String {
        format!("{kind}-{}-{}", self.hash, self.id)
    }
    fn endpoint(&self, ep: &Endpoint) -> String {
        let e = format!("{}/{}", ep.ip, ep.port);
        format!("endpoint-{}-{}__{e}", hash8(&[&self.id, &e]), self.id)
    }
    fn affinity(&self, ep: &Endpoint, timeout: u32) -> String {
        let e = format!("{}/{}", ep.ip, ep.port);
        format!(
            "affinity-{}-{}__{e}",
            hash8(&[&self.id, &e, &timeout.to_string()]),
            self.id
        )
    }
}

/// What a destination of a service port does with new connections.
enum Verdict {
    /// DNAT through this chain.
    Chain(String),
    /// No endpoints at all: reject.
    Reject,
    /// Endpoints exist, but none for this policy: drop.
    Drop,
}

/// Renders the desired table for `ports`.
pub fn render(ports: &[ServicePort], settings: &Settings) -> Ruleset {
    let mut rs = Ruleset::default();
    let add = |rs: &mut Ruleset, name: &str, rules: Vec<String>| {
        rs.chains
            .insert(name.to_string(), Chain { hook: None, rules });
    };
    for (name, hook) in BASE_CHAINS {
        let rules: Vec<String> = match *name {
            "filter-input" => vec![
                "ct state new jump nodeport-endpoints-check".into(),
                "ct state new jump service-endpoints-check".into(),
            ],
            "filter-forward" => vec![
                "ct state new jump service-endpoints-check".into(),
                "ct state new jump cluster-ips-check".into(),
            ],
            "filter-output" => vec!["ct state new jump service-endpoints-check".into()],
            "filter-output-post-dnat" => vec!["ct state new jump cluster-ips-check".into()],
            "nat-prerouting" | "nat-output" => vec!["jump services".into()],
            _ => vec!["jump masquerading".into()],
        };
        rs.chains.insert(
            name.to_string(),
            Chain {
                hook: Some(hook),
                rules,
            },
        );
    }
    add(
        &mut rs,
        "services",
        vec![
            "ip daddr . meta l4proto . th dport vmap @service-ips".into(),
            "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports".into(),
        ],
    );
    add(
        &mut rs,
        "mark-for-masquerade",
        vec![format!("meta mark set meta mark | {MASQUERADE_MARK:#x}")],
    );
    add(
        &mut rs,
        "masquerading",
        vec![
            format!("meta mark & {MASQUERADE_MARK:#x} == 0 return"),
            format!("meta mark set meta mark ^ {MASQUERADE_MARK:#x}"),
            "masquerade fully-random".into(),
        ],
    );
    add(
        &mut rs,
        "service-endpoints-check",
        vec!["ip daddr . meta l4proto . th dport vmap @no-endpoint-services".into()],
    );
    add(
        &mut rs,
        "nodeport-endpoints-check",
        vec![
            "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"
                .into(),
        ],
    );
    add(
        &mut rs,
        "cluster-ips-check",
        vec![
            "ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
                .into(),
            if settings.local_ips.is_empty() {
                format!(
                    "ip daddr {} drop comment \"Drop traffic to unallocated ClusterIPs\"",
                    settings.service_cidr
                )
            } else {
                let local: Vec<String> = settings.local_ips.iter().map(|ip| ip.to_string()).collect();
                format!(
                    "ip daddr != {{ {} }} ip daddr {} drop comment \"Drop traffic to unallocated ClusterIPs\"",
                    local.join(", "),
                    settings.service_cidr
                )
            },
        ],
    );
    add(&mut rs, "reject-chain", vec!["reject".into()]);
    for (name, _) in MAPS {
        rs.elements.insert(name, Vec::new());
    }

    for sp in ports {
        render_port(&mut rs, sp, settings);
    }
    for v in rs.elements.values_mut() {
        v.sort();
        v.dedup();
    }
    rs
}

fn render_port(rs: &mut Ruleset, sp: &ServicePort, settings: &Settings) {
    let n = Names::new(sp);
    let proto = sp.protocol.nft();
    let push = |rs: &mut Ruleset, map: &'static str, el: String| {
        rs.elements.entry(map).or_default().push(el);
    };
    push(rs, "cluster-ips", sp.cluster_ip.to_string());

    let any_endpoints = !sp.cluster_endpoints.is_empty() || !sp.local_endpoints.is_empty();
    let cluster_chain = n.chain("cluster");
    let local_chain = n.chain("local");
    if !sp.cluster_endpoints.is_empty() {
        let rules = balance(rs, &n, sp, &sp.cluster_endpoints);
        rs.chains
            .insert(cluster_chain.clone(), Chain { hook: None, rules });
    }
    let needs_local = sp.internal_local || sp.external_local;
    if needs_local && !sp.local_endpoints.is_empty() {
        let rules = balance(rs, &n, sp, &sp.local_endpoints);
        rs.chains
            .insert(local_chain.clone(), Chain { hook: None, rules });
    }

    // Cluster IP.
    let internal = if !any_endpoints {
        Verdict::Reject
    } else if sp.internal_endpoints().is_empty() {
        Verdict::Drop
    } else {
        let chain = n.chain("service");
        let target = if sp.internal_local {
            &local_chain
        } else {
            &cluster_chain
        };
        let rules = vec![
            format!(
                "ip saddr != {} jump mark-for-masquerade",
                settings.cluster_cidr
            ),
            format!("goto {target}"),
        ];
        rs.chains.insert(chain.clone(), Chain { hook: None, rules });
        Verdict::Chain(chain)
    };
    let key = format!("{} . {proto} . {}", sp.cluster_ip, sp.port);
    match internal {
        Verdict::Chain(c) => push(rs, "service-ips", format!("{key} : goto {c}")),
        Verdict::Reject => push(
            rs,
            "no-endpoint-services",
            format!("{key} : goto reject-chain"),
        ),
        Verdict::Drop => push(rs, "no-endpoint-services", format!("{key} : drop")),
    }

    // Node port, external and load-balancer IPs.
    if sp.node_port.is_none() && sp.external_ips.is_empty() {
        return;
    }
    let external = if !any_endpoints {
        Verdict::Reject
    } else if sp.external_endpoints().is_empty() {
        Verdict::Drop
    } else {
        let chain = n.chain("external");
        let rules = if sp.external_local {
            // Pods and the node itself reach external addresses cluster-wide (masqueraded
            // when from the node); everyone else only local endpoints, source preserved.
            vec![
                format!(
                    "ip saddr {} goto {cluster_chain} comment \"short-circuit pod traffic\"",
                    settings.cluster_cidr
                ),
                "fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\""
                    .into(),
                format!("fib saddr type local goto {cluster_chain} comment \"short-circuit local traffic\""),
                format!("goto {local_chain}"),
            ]
        } else {
            vec![
                "jump mark-for-masquerade".into(),
                format!("goto {cluster_chain}"),
            ]
        };
        rs.chains.insert(chain.clone(), Chain { hook: None, rules });
        Verdict::Chain(chain)
    };
    let verdict = match &external {
        Verdict::Chain(c) => format!("goto {c}"),
        Verdict::Reject => "goto reject-chain".into(),
        Verdict::Drop => "drop".into(),
    };
    let (ips_map, ports_map) = match external {
        Verdict::Chain(_) => ("service-ips", "service-nodeports"),
        _ => ("no-endpoint-services", "no-endpoint-nodeports"),
    };
    for ip in &sp.external_ips {
        push(
            rs,
            ips_map,
            format!("{ip} . {proto} . {} : {verdict}", sp.port),
        );
    }
    if let Some(np) = sp.node_port {
        push(rs, ports_map, format!("{proto} . {np} : {verdict}"));
    }
}

/// The rules of a load-balancing chain over `eps` (affinity lookups, then a random
/// choice), creating the endpoint chains and affinity sets they jump to.
fn balance(rs: &mut Ruleset, n: &Names, sp: &ServicePort, eps: &[Endpoint]) -> Vec<String> {
    let mut rules = Vec::new();
    let mut targets = Vec::new();
    for ep in eps {
        let chain = n.endpoint(ep);
        let mut ep_rules = vec![format!(
            "ip saddr {} jump mark-for-masquerade comment \"hairpin\"",
            ep.ip
        )];
        if let Some(timeout) = sp.affinity_timeout {
            let set = n.affinity(ep, timeout);
            rules.push(format!("ip saddr @{set} goto {chain}"));
            ep_rules.push(format!("update @{set} {{ ip saddr }}"));
            rs.affinity_sets.insert(set, timeout);
        }
        ep_rules.push(format!(
            "meta l4proto {} dnat to {}:{}",
            sp.protocol.nft(),
            ep.ip,
            ep.port
        ));
        rs.chains.insert(
            chain.clone(),
            Chain {
                hook: None,
                rules: ep_rules,
            },
        );
        targets.push(chain);
    }
    if targets.len() == 1 {
        rules.push(format!("goto {}", targets[0]));
    } else {
        let arms: Vec<String> = targets
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{i} : goto {c}"))
            .collect();
        rules.push(format!(
            "numgen random mod {} vmap {{ {} }}",
            targets.len(),
            arms.join(", ")
        ));
    }
    rules
}

/// What the last successful transaction left in the table.
#[derive(Debug, Clone, Default)]
pub struct Installed {
    /// Chains and a hash of their content.
    pub chains: HashMap<String, u64>,
    /// Affinity sets.
    pub sets: BTreeSet<String>,
    /// Elements of the fixed maps and sets; `None` when unknown (they are then refilled).
    pub elements: Option<BTreeMap<&'static str, BTreeSet<String>>>,
}

fn chain_hash(c: &Chain) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    c.hash(&mut h);
    h.finish()
}

/// The transaction that turns `installed` into `rs`, and what will be installed after it.
/// Chains in `installed` with a hash of 0 are rewritten unconditionally.
pub fn script(rs: &Ruleset, installed: &Installed) -> (String, Installed) {
    use std::fmt::Write;
    let mut s = String::with_capacity(4096 + rs.chains.len() * 256);
    let _ = writeln!(
        s,
        "add table ip {TABLE} {{ comment \"rules for kaji's service proxy\" ; }}"
    );
    for (_, def) in MAPS {
        let _ = writeln!(s, "add {def}");
    }
    for (name, timeout) in &rs.affinity_sets {
        if installed.sets.contains(name) {
            continue;
        }
        let _ = writeln!(
            s,
            "add set ip {TABLE} {name} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}"
        );
    }
    let mut next = Installed::default();
    let mut changed = Vec::new();
    for (name, chain) in &rs.chains {
        let h = chain_hash(chain);
        next.chains.insert(name.clone(), h);
        if installed.chains.get(name) == Some(&h) {
            continue;
        }
        match chain.hook {
            Some(hook) => {
                let _ = writeln!(s, "add chain ip {TABLE} {name} {{ {hook} }}");
            }
            None => {
                let _ = writeln!(s, "add chain ip {TABLE} {name}");
            }
        }
        changed.push((name, chain));
    }
    for (name, chain) in &changed {
        let _ = writeln!(s, "flush chain ip {TABLE} {name}");
        for r in &chain.rules {
            let _ = writeln!(s, "add rule ip {TABLE} {name} {r}");
        }
    }
    let mut elements = BTreeMap::new();
    for (name, _) in MAPS {
        let want: BTreeSet<String> = rs
            .elements
            .get(name)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let have = installed.elements.as_ref().and_then(|e| e.get(name));
        let added: Vec<&str> = match have {
            Some(have) => {
                // Delete by key; a changed verdict is a delete and an add.
                let removed: Vec<&str> = have
                    .difference(&want)
                    .map(|e| e.split(" : ").next().unwrap_or(e))
                    .collect();
                if !removed.is_empty() {
                    let _ = writeln!(
                        s,
                        "delete element ip {TABLE} {name} {{ {} }}",
                        removed.join(", ")
                    );
                }
                want.difference(have).map(String::as_str).collect()
            }
            None => {
                let kind = if *name == "cluster-ips" { "set" } else { "map" };
                let _ = writeln!(s, "flush {kind} ip {TABLE} {name}");
                want.iter().map(String::as_str).collect()
            }
        };
        if !added.is_empty() {
            let _ = writeln!(
                s,
                "add element ip {TABLE} {name} {{ {} }}",
                added.join(", ")
            );
        }
        elements.insert(*name, want);
    }
    next.elements = Some(elements);
    // Stale objects go last: everything referencing them was rewritten above.
    let mut stale: Vec<&String> = installed
        .chains
        .keys()
        .filter(|c| !rs.chains.contains_key(*c))
        .collect();
    stale.sort();
    for c in &stale {
        let _ = writeln!(s, "flush chain ip {TABLE} {c}");
    }
    for c in &stale {
        let _ = writeln!(s, "delete chain ip {TABLE} {c}");
    }
    for set in installed
        .sets
        .iter()
        .filter(|x| !rs.affinity_sets.contains_key(*x))
    {
        let _ = writeln!(s, "delete set ip {TABLE} {set}");
    }
    next.sets = rs.affinity_sets.keys().cloned().collect();
    (s, next)
}

/// Fails with [`Error::MissingBinary`] unless `nft` runs.
pub async fn check_binary() -> Result<(), Error> {
    if crate::netfilter::available().await {
        Ok(())
    } else {
        Err(Error::MissingBinary("nft"))
    }
}

/// Runs one transaction.
pub async fn apply(script: &str) -> Result<(), Error> {
    Ok(crate::netfilter::apply(script).await?)
}

/// The chains (with hash 0: unknown content) and affinity sets currently in the table;
/// empty if there is no table.
pub async fn list_objects() -> Result<Installed, Error> {
    match crate::netfilter::list_table("ip", TABLE).await? {
        Some(json) => parse_objects(&json),
        None => Ok(Installed::default()),
    }
}

fn parse_objects(json: &[u8]) -> Result<Installed, Error> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| Error::Nft(format!("parsing nft -j: {e}")))?;
    let mut inst = Installed::default();
    for obj in v["nftables"].as_array().into_iter().flatten() {
        if let Some(name) = obj["chain"]["name"].as_str() {
            inst.chains.insert(name.to_string(), 0);
        }
        if let Some(name) = obj["set"]["name"].as_str()
            && name.starts_with("affinity-")
        {
            inst.sets.insert(name.to_string());
        }
    }
    Ok(inst)
}

/// Deletes the table (`kaji server --cleanup-proxy`); no error if it does not exist.
pub async fn delete_table() -> Result<(), Error> {
    apply(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n")).await
}

#[cfg(test)]
mod tests {
    use super::super::model::Protocol;
    use super::*;

    fn settings() -> Settings {
        Settings {
            local_ips: vec![],
            cluster_cidr: "10.42.0.0/16".into(),
            service_cidr: "10.43.0.0/16".into(),
        }
    }

    fn ep(ip: &str, local: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 8080,
            local,
        }
    }

    fn port() -> ServicePort {
        ServicePort {
            namespace: "default".into(),
            name: "web".into(),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            cluster_ip: "10.43.0.5".parse().unwrap(),
            port: 80,
            node_port: None,
            external_ips: vec![],
            external_local: false,
            internal_local: false,
            affinity_timeout: None,
            cluster_endpoints: vec![],
            local_endpoints: vec![],
        }
    }

    fn chain<'a>(rs: &'a Ruleset, prefix: &str) -> &'a Chain {
        rs.chains
            .iter()
            .find(|(n, _)| n.starts_with(prefix))
            .map(|(_, c)| c)
            .unwrap_or_else(|| panic!("no chain {prefix}*: {:?}", rs.chains.keys()))
    }

    #[test]
    fn cluster_ip_balances_over_ready_endpoints() {
        let mut p = port();
        p.cluster_endpoints = vec![ep("10.42.0.2", true), ep("10.42.0.3", false)];
        p.local_endpoints = vec![ep("10.42.0.2", true)];
        let rs = render(&[p], &settings());
        let svc = chain(&rs, "service-");
        assert_eq!(
            svc.rules[0],
            "ip saddr != 10.42.0.0/16 jump mark-for-masquerade"
        );
        assert!(svc.rules[1].starts_with("goto cluster-"));
        let cl = chain(&rs, "cluster-");
        assert_eq!(cl.rules.len(), 1);
        assert!(cl.rules[0].starts_with("numgen random mod 2 vmap { 0 : goto endpoint-"));
        let e = &rs.chains[&rs
            .chains
            .keys()
            .find(|k| k.ends_with("__10.42.0.3/8080"))
            .unwrap()
            .clone()];
        assert_eq!(
            e.rules,
            vec![
                "ip saddr 10.42.0.3 jump mark-for-masquerade comment \"hairpin\"".to_string(),
                "meta l4proto tcp dnat to 10.42.0.3:8080".to_string()
            ]
        );
        // No local chain without a Local policy.
        assert!(!rs.chains.keys().any(|k| k.starts_with("local-")));
        assert_eq!(rs.elements["service-ips"].len(), 1);
        assert!(rs.elements["service-ips"][0].starts_with("10.43.0.5 . tcp . 80 : goto service-"));
        assert_eq!(rs.elements["cluster-ips"], vec!["10.43.0.5".to_string()]);
        assert!(rs.elements["no-endpoint-services"].is_empty());
    }

    #[test]
    fn verdicts_without_endpoints() {
        // (what, port tweak, service-ips, no-endpoint-services, no-endpoint-nodeports)
        type Tweak = fn(&mut ServicePort);
        type Case = (
            &'static str,
            Tweak,
            usize,
            Vec<&'static str>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "no endpoints: reject everywhere",
                |p| {
                    p.node_port = Some(30080);
                    p.external_ips = vec!["192.0.2.1".parse().unwrap()];
                },
                0,
                vec![
                    "10.43.0.5 . tcp . 80 : goto reject-chain",
                    "192.0.2.1 . tcp . 80 : goto reject-chain",
                ],
                vec!["tcp . 30080 : goto reject-chain"],
            ),
            (
                "ETP Local without local endpoints: drop external only",
                |p| {
                    p.node_port = Some(30080);
                    p.external_local = true;
                    p.cluster_endpoints = vec![ep("10.42.1.2", false)];
                },
                1,
                vec![],
                vec!["tcp . 30080 : drop"],
            ),
            (
                "ITP Local without local endpoints: drop cluster IP",
                |p| {
                    p.internal_local = true;
                    p.cluster_endpoints = vec![ep("10.42.1.2", false)];
                },
                0,
                vec!["10.43.0.5 . tcp . 80 : drop"],
                vec![],
            ),
        ];
        for (what, tweak, svc_ips, no_ep, no_np) in cases {
            let mut p = port();
            tweak(&mut p);
            let rs = render(&[p], &settings());
            assert_eq!(rs.elements["service-ips"].len(), svc_ips, "{what}");
            assert_eq!(rs.elements["no-endpoint-services"], no_ep, "{what}");
            assert_eq!(rs.elements["no-endpoint-nodeports"], no_np, "{what}");
        }
    }

    #[test]
    fn external_traffic_policies() {
        let mut p = port();
        p.node_port = Some(30080);
        p.cluster_endpoints = vec![ep("10.42.0.2", true), ep("10.42.1.2", false)];
        p.local_endpoints = vec![ep("10.42.0.2", true)];
        let rs = render(std::slice::from_ref(&p), &settings());
        let ext = chain(&rs, "external-");
        assert_eq!(ext.rules[0], "jump mark-for-masquerade");
        assert!(ext.rules[1].starts_with("goto cluster-"));
        assert_eq!(rs.elements["service-nodeports"].len(), 1);
        assert!(rs.elements["service-nodeports"][0].starts_with("tcp . 30080 : goto external-"));

        p.external_local = true;
        let rs = render(&[p], &settings());
        let ext = chain(&rs, "external-");
        assert!(ext.rules[0].starts_with("ip saddr 10.42.0.0/16 goto cluster-"));
        assert!(ext.rules[1].starts_with("fib saddr type local jump mark-for-masquerade"));
        assert!(ext.rules[3].starts_with("goto local-"));
        let local = chain(&rs, "local-");
        assert!(local.rules[0].starts_with("goto endpoint-"));
        assert!(local.rules[0].ends_with("__10.42.0.2/8080"));
    }

    #[test]
    fn session_affinity_sets() {
        let mut p = port();
        p.affinity_timeout = Some(60);
        p.cluster_endpoints = vec![ep("10.42.0.2", true), ep("10.42.0.3", true)];
        let rs = render(&[p], &settings());
        assert_eq!(rs.affinity_sets.len(), 2);
        assert!(rs.affinity_sets.values().all(|t| *t == 60));
        let cl = chain(&rs, "cluster-");
        assert_eq!(cl.rules.len(), 3);
        assert!(cl.rules[0].starts_with("ip saddr @affinity-"));
        assert!(cl.rules[2].starts_with("numgen random mod 2"));
        let (s, _) = script(&rs, &Installed::default());
        assert!(s.contains("flags dynamic,timeout ; timeout 60s ;"));
        assert!(s.contains("{ ip saddr }"));
    }

    #[test]
    fn script_rewrites_only_changed_chains_and_deletes_stale_ones() {
        let mut p = port();
        p.cluster_endpoints = vec![ep("10.42.0.2", true), ep("10.42.0.3", true)];
        let first = render(std::slice::from_ref(&p), &settings());
        let (s1, inst) = script(&first, &Installed::default());
        assert!(s1.starts_with("add table ip kaji"));
        let rules_in_s1 = s1.lines().filter(|l| l.starts_with("add rule")).count();
        assert_eq!(rules_in_s1, first.rule_count());

        assert!(s1.contains("flush map ip kaji service-ips"));
        assert!(s1.contains("add element ip kaji service-ips { 10.43.0.5 . tcp . 80"));

        // Same state again: nothing but the table.
        let (s2, inst2) = script(&first, &inst);
        assert_eq!(
            s2.lines()
                .filter(|l| !l.starts_with("add table")
                    && !l.starts_with("add map")
                    && !l.starts_with("add set"))
                .count(),
            0,
            "{s2}"
        );

        // A verdict change: the element is replaced by key.
        let mut gone = p.clone();
        gone.cluster_endpoints.clear();
        let (s5, _) = script(&render(&[gone], &settings()), &inst2);
        assert!(
            s5.contains("delete element ip kaji service-ips { 10.43.0.5 . tcp . 80 }"),
            "{s5}"
        );
        assert!(s5.contains("add element ip kaji no-endpoint-services { 10.43.0.5 . tcp . 80 : goto reject-chain }"), "{s5}");

        // One endpoint gone: its chain is deleted after the balancing chain is rewritten.
        p.cluster_endpoints.pop();
        let second = render(&[p], &settings());
        let (s3, _) = script(&second, &inst2);
        let stale = s3
            .lines()
            .position(|l| l.starts_with("delete chain") && l.ends_with("__10.42.0.3/8080"))
            .expect("stale endpoint chain deleted");
        let rewrite = s3
            .lines()
            .position(|l| l.starts_with("flush chain ip kaji cluster-"))
            .expect("cluster chain rewritten");
        assert!(rewrite < stale);
        assert!(
            s3.lines()
                .any(|l| l.starts_with("add rule ip kaji cluster-")
                    && l.contains("goto endpoint-")
                    && l.ends_with("__10.42.0.2/8080"))
        );

        // Unknown content (after a restart): everything rewritten, leftovers deleted.
        let mut unknown = Installed::default();
        unknown.chains.insert("endpoint-OLD-x".into(), 0);
        unknown.sets.insert("affinity-OLD-x".into());
        let (s4, _) = script(&second, &unknown);
        assert_eq!(
            s4.lines().filter(|l| l.starts_with("add rule")).count(),
            second.rule_count()
        );
        assert!(s4.contains("delete chain ip kaji endpoint-OLD-x"));
        assert!(s4.contains("delete set ip kaji affinity-OLD-x"));
    }

    /// The kernel accepts a script with every feature (`nft -c`: checked, not committed).
    #[tokio::test]
    async fn script_is_valid_nft() {
        if check_binary().await.is_err() {
            eprintln!("nft not installed: skipped");
            return;
        }
        let mut a = port();
        a.node_port = Some(30080);
        a.external_ips = vec!["192.0.2.1".parse().unwrap()];
        a.external_local = true;
        a.affinity_timeout = Some(30);
        a.cluster_endpoints = vec![ep("10.42.0.2", true), ep("10.42.1.2", false)];
        a.local_endpoints = vec![ep("10.42.0.2", true)];
        let mut b = port();
        b.name = "dns".into();
        b.port_name = String::new();
        b.protocol = Protocol::Udp;
        b.port = 53;
        b.cluster_ip = "10.43.0.53".parse().unwrap();
        b.internal_local = true;
        b.cluster_endpoints = vec![ep("10.42.1.3", false)];
        let mut c = port();
        c.name = "empty".into();
        c.cluster_ip = "10.43.0.6".parse().unwrap();
        c.node_port = Some(30081);
        let rs = render(&[a, b, c], &settings());
        let (s, _) = script(&rs, &Installed::default());
        if let Err(e) = crate::netfilter::check(&s).await {
            panic!("{e}\n{s}");
        }
    }

    #[test]
    fn parses_listing() {
        let json = br#"{"nftables": [{"metainfo": {}}, {"table": {"name": "kaji"}},
            {"map": {"name": "service-ips"}}, {"set": {"name": "affinity-AB-x"}},
            {"set": {"name": "cluster-ips"}},
            {"chain": {"name": "services"}}, {"rule": {"chain": "services"}}]}"#;
        let inst = parse_objects(json).unwrap();
        assert_eq!(inst.chains.keys().collect::<Vec<_>>(), vec!["services"]);
        assert_eq!(inst.sets.iter().collect::<Vec<_>>(), vec!["affinity-AB-x"]);
    }
}
