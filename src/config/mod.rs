//! Configuration: the command line (clap), `KAJI_*` environment variables and the YAML
//! config file (`/etc/kaji/config.yaml` or `--config FILE`, keys = flag names), merged
//! with the precedence k3s users expect: command line, then environment, then file.
//!
//! Depends on: nothing else in the crate. Must not depend on: any runtime component.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, Parser, Subcommand};

/// The version the node agent reports (the Kubernetes API level plus kaji's version).
pub const KUBELET_VERSION: &str = concat!("v1.33.0+kaji.", env!("CARGO_PKG_VERSION"));

/// Default config file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/kaji/config.yaml";

/// The default `--data-dir` of every command that keeps node or cluster state.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/kaji";

/// Errors reading configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The config file is not a YAML mapping of flag names to values.
    #[error("config file {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// kaji: a lightweight Kubernetes distribution in one executable.
#[derive(Debug, Parser)]
#[command(name = "kaji", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
// Parsed once per process; boxing the server's flags would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the control plane (API server, store, controllers) and, unless disabled, a node agent.
    Server(ServerArgs),
    /// Run a node agent that joins an existing server.
    Agent(AgentCommandArgs),
    /// Manage the container images of this node's containerd.
    Image(ImageArgs),
}

/// Flags of `kaji image`.
#[derive(Debug, Clone, Args)]
pub struct ImageArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// Subcommands of `kaji image`.
#[derive(Debug, Clone, Subcommand)]
pub enum ImageCommand {
    /// Import image tarballs (OCI image layouts or `docker save` archives, plain or
    /// gzip-compressed) into the node's containerd, unpacked and ready for pods.
    Import(ImageImportArgs),
}

/// Flags of `kaji image import`.
#[derive(Debug, Clone, Args)]
pub struct ImageImportArgs {
    /// Image tarballs to import.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The agent's data dir (locates its containerd socket).
    #[arg(
        short = 'd',
        long,
        env = "KAJI_DATA_DIR",
        default_value = DEFAULT_DATA_DIR,
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// containerd socket to import into instead of the agent's embedded one.
    #[arg(long, env = "KAJI_CONTAINER_RUNTIME_ENDPOINT", value_name = "SOCKET")]
    pub container_runtime_endpoint: Option<String>,
}

/// Node agent flags, shared by `kaji server` and `kaji agent`.
#[derive(Debug, Clone, Args, Default)]
pub struct AgentArgs {
    /// Node name (default: the hostname).
    #[arg(long, env = "KAJI_NODE_NAME")]
    pub node_name: Option<String>,
    /// IP address to advertise for the node (default: the address of the default route).
    #[arg(long, env = "KAJI_NODE_IP")]
    pub node_ip: Option<std::net::IpAddr>,
    /// Labels to register the node with (`key=value`, repeatable).
    #[arg(long, env = "KAJI_NODE_LABEL", value_delimiter = ',')]
    pub node_label: Vec<String>,
    /// Taints to register the node with (`key=value:Effect`, repeatable).
    #[arg(long, env = "KAJI_NODE_TAINT", value_delimiter = ',')]
    pub node_taint: Vec<String>,
    /// Use this CRI socket instead of starting an embedded containerd.
    #[arg(long, env = "KAJI_CONTAINER_RUNTIME_ENDPOINT", value_name = "SOCKET")]
    pub container_runtime_endpoint: Option<String>,
    /// The sandbox ("pause") image (default: the one kaji provides offline).
    #[arg(long, env = "KAJI_PAUSE_IMAGE")]
    pub pause_image: Option<String>,
    /// Kubelet-style overrides (`key=value`, repeatable), e.g. `max-pods=50`.
    #[arg(long, env = "KAJI_KUBELET_ARG", value_delimiter = ',')]
    pub kubelet_arg: Vec<String>,
    /// HTTPS port of the node's kubelet API (logs, exec, attach, port-forward); 0 picks a free one.
    #[arg(long, env = "KAJI_KUBELET_PORT", default_value_t = 10250)]
    pub kubelet_port: u16,
    /// Private registry configuration, k3s format (default: /etc/kaji/registries.yaml if it exists).
    #[arg(long, env = "KAJI_PRIVATE_REGISTRY", value_name = "FILE")]
    pub private_registry: Option<PathBuf>,
    /// Built-in components not to run (repeatable, comma-separated): dns (alias coredns),
    /// servicelb, ingress (alias traefik), local-storage, metrics-server.
    #[arg(long, env = "KAJI_DISABLE", value_delimiter = ',', value_parser = parse_component)]
    pub disable: Vec<String>,
    /// Do not run the service proxy (Service virtual IPs, NodePorts, load balancers).
    #[arg(long, env = "KAJI_DISABLE_KUBE_PROXY")]
    pub disable_kube_proxy: bool,
    /// Do not enforce NetworkPolicies.
    #[arg(long, env = "KAJI_DISABLE_NETWORK_POLICY")]
    pub disable_network_policy: bool,
    /// The resolv.conf naming the node's upstream resolvers, for cluster DNS forwarding
    /// and pods with `dnsPolicy: Default` (default: /etc/resolv.conf, or systemd-resolved's
    /// /run/systemd/resolve/resolv.conf when the former names only loopback resolvers).
    #[arg(long, env = "KAJI_RESOLV_CONF", value_name = "FILE")]
    pub resolv_conf: Option<PathBuf>,
    /// Remove the service proxy's nftables rules (table `ip kaji`) from this node and exit.
    #[arg(long)]
    pub cleanup_proxy: bool,
}

/// Flags of `kaji agent`.
#[derive(Debug, Clone, Args)]
#[command(args_override_self = true)]
pub struct AgentCommandArgs {
    /// Load flags from this YAML file (keys are flag names without dashes).
    #[arg(short = 'c', long, env = "KAJI_CONFIG_FILE", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The server to join, e.g. `https://10.0.0.1:6443`.
    #[arg(short = 's', long, env = "KAJI_URL", value_name = "URL")]
    pub server: Option<String>,
    /// The cluster's join token (`<data-dir>/server/token` on the server).
    #[arg(short = 't', long, env = "KAJI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the join token from this file.
    #[arg(long, env = "KAJI_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Folder to hold state.
    #[arg(
        short = 'd',
        long,
        env = "KAJI_DATA_DIR",
        default_value = DEFAULT_DATA_DIR,
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// Turn on debug logs.
    #[arg(long, env = "KAJI_DEBUG")]
    pub debug: bool,
    /// Node agent settings.
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// The built-in components `--disable` may name, with their k3s aliases.
pub const COMPONENTS: &[(&str, &[&str])] = &[
    ("dns", &["coredns"]),
    ("servicelb", &[]),
    ("ingress", &["traefik"]),
    ("local-storage", &[]),
    ("metrics-server", &[]),
];

fn parse_component(s: &str) -> Result<String, String> {
    COMPONENTS
        .iter()
        .find(|(name, aliases)| *name == s || aliases.contains(&s))
        .map(|(name, _)| name.to_string())
        .ok_or_else(|| {
            let names: Vec<&str> = COMPONENTS.iter().map(|(n, _)| *n).collect();
            format!("unknown component {s:?} (known: {})", names.join(", "))
        })
}

impl AgentArgs {
    /// Whether `--disable` names this component (its canonical name, see [`COMPONENTS`]).
    pub fn disabled(&self, component: &str) -> bool {
        self.disable.iter().any(|c| c == component)
    }
}

/// Flags of `kaji server`.
#[derive(Debug, Clone, Args)]
#[command(args_override_self = true)]
pub struct ServerArgs {
    /// Load flags from this YAML file (keys are flag names without dashes).
    #[arg(short = 'c', long, env = "KAJI_CONFIG_FILE", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Folder to hold state.
    #[arg(
        short = 'd',
        long,
        env = "KAJI_DATA_DIR",
        default_value = DEFAULT_DATA_DIR,
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// IP address the API server listens on.
    #[arg(long, env = "KAJI_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// HTTPS listen port of the API server.
    #[arg(long, env = "KAJI_HTTPS_LISTEN_PORT", default_value_t = 6443)]
    pub https_listen_port: u16,
    /// IP address the API server advertises to cluster members (default: the node's address).
    #[arg(long, env = "KAJI_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<IpAddr>,
    /// Additional hostnames or IPv4/IPv6 addresses as Subject Alternative Names on the serving certificate.
    #[arg(long, env = "KAJI_TLS_SAN", value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// Write the admin kubeconfig to this file.
    #[arg(
        short = 'o',
        long,
        env = "KAJI_KUBECONFIG_OUTPUT",
        default_value = "/etc/kaji/kaji.yaml",
        value_name = "FILE"
    )]
    pub write_kubeconfig: PathBuf,
    /// Write the kubeconfig with this mode (octal).
    #[arg(long, env = "KAJI_KUBECONFIG_MODE", default_value = "0600", value_parser = parse_mode)]
    pub write_kubeconfig_mode: u32,
    /// Shared secret used to join agents and servers to the cluster.
    #[arg(short = 't', long, env = "KAJI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Static bearer tokens for API authentication (`token,user,uid,"group1,group2"` per line).
    #[arg(long, env = "KAJI_TOKEN_AUTH_FILE", value_name = "FILE")]
    pub token_auth_file: Option<PathBuf>,
    /// IPv4 network CIDR for pod IPs.
    #[arg(long, env = "KAJI_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// IPv4 network CIDR for service IPs.
    #[arg(long, env = "KAJI_SERVICE_CIDR", default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// Port range reserved for NodePort Services.
    #[arg(
        long,
        env = "KAJI_SERVICE_NODE_PORT_RANGE",
        default_value = "30000-32767"
    )]
    pub service_node_port_range: String,
    /// Cluster IP of the DNS service (must be within the service CIDR).
    #[arg(long, env = "KAJI_CLUSTER_DNS", default_value = "10.43.0.10")]
    pub cluster_dns: IpAddr,
    /// Cluster domain.
    #[arg(long, env = "KAJI_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Run only the control plane, without a node agent on this machine.
    #[arg(long, env = "KAJI_DISABLE_AGENT")]
    pub disable_agent: bool,
    /// Turn on debug logs.
    #[arg(long, env = "KAJI_DEBUG")]
    pub debug: bool,
    /// How long a node may go without renewing its lease or posting status before it is
    /// marked NotReady (Unknown) and tainted unreachable (e.g. `40s`, `1m`).
    #[arg(long, env = "KAJI_NODE_MONITOR_GRACE_PERIOD", default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: std::time::Duration,
    /// Number of terminated pods that can exist before the pod garbage collector starts
    /// deleting them (0 or less: never).
    #[arg(
        long,
        env = "KAJI_TERMINATED_POD_GC_THRESHOLD",
        default_value_t = 12500
    )]
    pub terminated_pod_gc_threshold: i32,
    /// Seconds pods tolerate the node.kubernetes.io/not-ready:NoExecute taint unless they say otherwise.
    #[arg(
        long,
        env = "KAJI_DEFAULT_NOT_READY_TOLERATION_SECONDS",
        default_value_t = 300
    )]
    pub default_not_ready_toleration_seconds: i64,
    /// Seconds pods tolerate the node.kubernetes.io/unreachable:NoExecute taint unless they say otherwise.
    #[arg(
        long,
        env = "KAJI_DEFAULT_UNREACHABLE_TOLERATION_SECONDS",
        default_value_t = 300
    )]
    pub default_unreachable_toleration_seconds: i64,
    /// Node agent settings (used unless --disable-agent).
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Seconds between compactions of the store's history.
    #[arg(
        long,
        env = "KAJI_STORE_COMPACTION_INTERVAL",
        default_value_t = 300,
        hide = true
    )]
    pub store_compaction_interval: u64,
    /// Revisions of history kept by each compaction.
    #[arg(
        long,
        env = "KAJI_STORE_COMPACTION_RETAIN",
        default_value_t = 10_000,
        hide = true
    )]
    pub store_compaction_retain: u64,
}

/// Parses a Go-style duration: `40s`, `1m30s`, `500ms`, `2h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let err = || format!("invalid duration {s:?} (e.g. 40s, 1m30s, 500ms)");
    let mut total = std::time::Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => std::time::Duration::from_millis(n),
            "s" => std::time::Duration::from_secs(n),
            "m" => std::time::Duration::from_secs(n * 60),
            "h" => std::time::Duration::from_secs(n * 3600),
            _ => return Err(err()),
        };
        total += unit;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|e| format!("invalid octal mode {s:?}: {e}"))
}

impl ServerArgs {
    /// The first service IP (the `kubernetes` Service), e.g. 10.43.0.1.
    pub fn first_service_ip(&self) -> Option<IpAddr> {
        let (net, _) = self.service_cidr.split_once('/')?;
        let ip: std::net::Ipv4Addr = net.parse().ok()?;
        Some(IpAddr::V4(std::net::Ipv4Addr::from(u32::from(ip) + 1)))
    }
}

/// Parses the command line, merging in the config file and environment.
pub fn parse() -> Result<Cli, Error> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let args = with_config_file(args)?;
    Ok(Cli::parse_from(args))
}

/// Inserts flags from the config file right after the subcommand, so that flags on the
/// command line (later, so they win) and set environment variables take precedence.
pub fn with_config_file(args: Vec<OsString>) -> Result<Vec<OsString>, Error> {
    let Some(sub_pos) = args.iter().position(|a| a == "server" || a == "agent") else {
        return Ok(args);
    };
    let agent = args[sub_pos] == "agent";
    let explicit = find_flag(&args[sub_pos + 1..], "--config", "-c")
        .or_else(|| std::env::var_os("KAJI_CONFIG_FILE").map(PathBuf::from));
    let path = match explicit {
        Some(p) => p,
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG_FILE);
            if !p.exists() {
                return Ok(args);
            }
            p
        }
    };
    let injected = if agent {
        config_file_args_for(
            &path,
            AgentCommandArgs::augment_args(clap::Command::new("agent")),
        )?
    } else {
        config_file_args(&path)?
    };
    let mut out: Vec<OsString> = args[..=sub_pos].to_vec();
    out.extend(injected.into_iter().map(OsString::from));
    out.extend(args[sub_pos + 1..].iter().cloned());
    Ok(out)
}

fn find_flag(args: &[OsString], long: &str, short: &str) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == long || s == short {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix(&format!("{long}=")) {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// Turns a config file into `kaji server` command-line flags.
pub fn config_file_args(path: &Path) -> Result<Vec<String>, Error> {
    config_file_args_for(path, ServerArgs::augment_args(clap::Command::new("server")))
}

/// Turns a config file into command-line flags of the subcommand `cmd`.
pub fn config_file_args_for(path: &Path, cmd: clap::Command) -> Result<Vec<String>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })?;
    let invalid = |reason: String| Error::Invalid {
        path: path.display().to_string(),
        reason,
    };
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let doc: serde_json::Value =
        serde_saphyr::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let map = match doc {
        serde_json::Value::Object(m) => m,
        serde_json::Value::Null => return Ok(Vec::new()),
        _ => return Err(invalid("expected a mapping of flag names to values".into())),
    };
    let mut out = Vec::new();
    for (key, value) in map {
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
        else {
            return Err(invalid(format!(
                "unknown key {key:?} (keys are `kaji {}` flag names)",
                cmd.get_name()
            )));
        };
        if key == "config" {
            continue;
        }
        // An environment variable that is set beats the file.
        if arg.get_env().is_some_and(|e| std::env::var_os(e).is_some()) {
            continue;
        }
        let flag = format!("--{key}");
        let scalar = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            serde_json::Value::Bool(b) => Ok(b.to_string()),
            other => Err(invalid(format!("{key}: unsupported value {other}"))),
        };
        match &value {
            serde_json::Value::Bool(b) => {
                if arg.get_action().takes_values() {
                    out.push(format!("{flag}={b}"));
                } else if *b {
                    out.push(flag);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    out.push(format!("{flag}={}", scalar(item)?));
                }
            }
            v => out.push(format!("{flag}={}", scalar(v)?)),
        }
    }
    Ok(out)
}

/// Verifies the clap definition (used by tests).
pub fn debug_assert_cli() {
    Cli::command().debug_assert();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_valid() {
        debug_assert_cli();
    }

    #[test]
    fn defaults() {
        let cli = Cli::parse_from(["kaji", "server"]);
        let Command::Server(s) = cli.command else {
            panic!("server")
        };
        assert_eq!(s.https_listen_port, 6443);
        assert_eq!(s.write_kubeconfig_mode, 0o600);
        assert_eq!(s.cluster_cidr, "10.42.0.0/16");
        assert_eq!(s.first_service_ip().unwrap().to_string(), "10.43.0.1");
        assert_eq!(s.write_kubeconfig, PathBuf::from("/etc/kaji/kaji.yaml"));
    }

    #[test]
    fn config_file_is_lower_precedence_than_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.yaml");
        std::fs::write(&f, "https-listen-port: 7443\ntls-san:\n  - a.example\n  - b.example\ndisable-agent: true\ncluster-domain: corp.local\n").unwrap();
        let args: Vec<OsString> = [
            "kaji",
            "server",
            "--config",
            f.to_str().unwrap(),
            "--cluster-domain",
            "x.local",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let merged = with_config_file(args).unwrap();
        let Command::Server(s) = Cli::parse_from(merged).command else {
            panic!("server")
        };
        assert_eq!(s.https_listen_port, 7443);
        assert_eq!(s.tls_san, vec!["a.example", "b.example"]);
        assert!(s.disable_agent);
        assert_eq!(s.cluster_domain, "x.local");
    }

    #[test]
    fn durations() {
        let cases = [
            ("40s", Some(40_000)),
            ("1m30s", Some(90_000)),
            ("500ms", Some(500)),
            ("2h", Some(7_200_000)),
            ("", None),
            ("10", None),
            ("5d", None),
        ];
        for (s, want) in cases {
            let got = parse_duration(s).ok().map(|d| d.as_millis() as u64);
            assert_eq!(got, want, "{s:?}");
        }
    }

    #[test]
    fn agent_flags_env_and_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.yaml");
        std::fs::write(&f, "server: https://10.0.0.1:6443\nnode-name: edge1\n").unwrap();
        let args: Vec<OsString> = ["kaji", "agent", "--config", f.to_str().unwrap()]
            .iter()
            .map(OsString::from)
            .collect();
        let merged = with_config_file(args).unwrap();
        let Command::Agent(a) = Cli::parse_from(merged).command else {
            panic!("agent")
        };
        assert_eq!(a.server.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(a.agent.node_name.as_deref(), Some("edge1"));
        assert_eq!(a.data_dir, PathBuf::from("/var/lib/kaji"));
        let Command::Server(s) = Cli::parse_from(["kaji", "server"]).command else {
            panic!("server")
        };
        assert_eq!(
            s.node_monitor_grace_period,
            std::time::Duration::from_secs(40)
        );
    }

    #[test]
    fn unknown_config_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.yaml");
        std::fs::write(&f, "no-such-flag: 1\n").unwrap();
        let err = config_file_args(&f).unwrap_err().to_string();
        assert!(err.contains("no-such-flag"), "{err}");
    }
}
