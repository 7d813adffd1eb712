//! Pod networking: the CNI configuration containerd's CRI plugin executes for every
//! sandbox — a `cni0` bridge with host-local IPAM over the node's podCIDR, IP masquerade
//! for traffic leaving the cluster, portmap for hostPort, and loopback. The host-local
//! allocations are kept under the node's data dir (`<data-dir>/agent/cni/networks`), not
//! in the machine-wide /var/lib/cni/networks, so each node's (and each data dir's)
//! addresses are its own and go with it.
//!
//! CNI binaries needed (Debian `containernetworking-plugins`): bridge, host-local,
//! loopback, portmap; they are looked up in /opt/cni/bin, /usr/lib/cni, /usr/libexec/cni.

use std::path::Path;

use serde_json::json;

use super::Error;

/// The name of the network and of the conflist file.
pub const NETWORK: &str = "kaji";
/// The bridge pods attach to.
pub const BRIDGE: &str = "cni0";

/// Where host-local keeps a node's IP allocations.
pub fn ipam_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("agent").join("cni").join("networks")
}

/// The CNI configuration list for a node with `pod_cidr`, its allocations in `ipam_dir`.
pub fn conflist(pod_cidr: &str, ipam_dir: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam_dir,
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        ],
    })
}

/// Writes the conflist into `conf_dir` (atomically) if it changed.
pub fn write_conflist(conf_dir: &Path, pod_cidr: &str, ipam_dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(conf_dir).map_err(|e| Error::Io {
        path: conf_dir.display().to_string(),
        source: e,
    })?;
    let path = conf_dir.join(format!("10-{NETWORK}.conflist"));
    let text = serde_json::to_string_pretty(&conflist(pod_cidr, ipam_dir)).unwrap_or_default();
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &text).map_err(|e| Error::Io {
        path: tmp.display().to_string(),
        source: e,
    })?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    tracing::info!(path = %path.display(), %pod_cidr, "wrote CNI configuration");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_shape() {
        let c = conflist("10.42.0.0/24", Path::new("/data/agent/cni/networks"));
        assert_eq!(c["plugins"][0]["type"], "bridge");
        assert_eq!(
            c["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.42.0.0/24"
        );
        assert_eq!(
            c["plugins"][0]["ipam"]["dataDir"],
            "/data/agent/cni/networks"
        );
        assert_eq!(
            ipam_dir(Path::new("/data")),
            Path::new("/data/agent/cni/networks")
        );
        assert_eq!(c["plugins"][1]["type"], "portmap");
        let dir = tempfile::tempdir().unwrap();
        write_conflist(dir.path(), "10.42.1.0/24", &dir.path().join("ipam")).unwrap();
        let text = std::fs::read_to_string(dir.path().join("10-kaji.conflist")).unwrap();
        assert!(text.contains("10.42.1.0/24"));
    }
}
