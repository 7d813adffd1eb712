//! The node IPAM controller: gives every Node a podCIDR (a /24 by default) out of the
//! cluster CIDR, never the same one twice, as upstream's range allocator does.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Errors of the controller.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("no free pod CIDR left in {0}")]
    Exhausted(String),
}

/// An IPv4 CIDR split into per-node subnets.
#[derive(Debug, Clone)]
pub struct Allocator {
    base: u32,
    prefix: u8,
    node_prefix: u8,
}

impl Allocator {
    /// Parses `10.42.0.0/16` with per-node subnets of `/node_prefix`.
    pub fn new(cidr: &str, node_prefix: u8) -> Option<Allocator> {
        let (ip, len) = cidr.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let prefix: u8 = len.parse().ok()?;
        if prefix > node_prefix || node_prefix > 30 {
            return None;
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Some(Allocator {
            base: u32::from(ip) & mask,
            prefix,
            node_prefix,
        })
    }

    /// The `n`th node subnet, if it exists.
    pub fn subnet(&self, n: u32) -> Option<String> {
        let count = 1u64 << (self.node_prefix - self.prefix);
        if u64::from(n) >= count {
            return None;
        }
        let ip = self.base + (n << (32 - self.node_prefix));
        Some(format!("{}/{}", Ipv4Addr::from(ip), self.node_prefix))
    }

    /// The first subnet not in `used`.
    pub fn first_free(&self, used: &BTreeSet<String>) -> Option<String> {
        (0..)
            .map_while(|n| self.subnet(n))
            .find(|s| !used.contains(s))
    }
}

struct Ctx {
    client: Client,
    alloc: Allocator,
    cidr: String,
    lock: Mutex<()>,
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, cluster_cidr: String, shutdown: CancellationToken) {
    let Some(alloc) = Allocator::new(&cluster_cidr, 24) else {
        tracing::error!(%cluster_cidr, "invalid cluster CIDR; node IPAM disabled");
        return;
    };
    let api: Api<Node> = Api::all(client.clone());
    let ctx = Arc::new(Ctx {
        client,
        alloc,
        cidr: cluster_cidr,
        lock: Mutex::new(()),
    });
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(
            reconcile,
            |_n, err, _c| {
                tracing::warn!(%err, "node IPAM");
                Action::requeue(Duration::from_secs(5))
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_ref())
        .is_some_and(|c| !c.is_empty())
    {
        return Ok(Action::await_change());
    }
    // One allocation at a time, against a fresh list, so two nodes never share a range.
    let _guard = ctx.lock.lock().await;
    let api: Api<Node> = Api::all(ctx.client.clone());
    let used: BTreeSet<String> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.spec.and_then(|s| s.pod_cidr))
        .collect();
    let cidr = ctx
        .alloc
        .first_free(&used)
        .ok_or_else(|| Error::Exhausted(ctx.cidr.clone()))?;
    let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
    api.patch(
        &node.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    tracing::info!(node = %node.name_any(), %cidr, "assigned pod CIDR");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_distinct_subnets() {
        let a = Allocator::new("10.42.0.0/16", 24).unwrap();
        assert_eq!(a.subnet(0).as_deref(), Some("10.42.0.0/24"));
        assert_eq!(a.subnet(255).as_deref(), Some("10.42.255.0/24"));
        assert_eq!(a.subnet(256), None);
        let used: BTreeSet<String> =
            ["10.42.0.0/24".to_string(), "10.42.1.0/24".to_string()].into();
        assert_eq!(a.first_free(&used).as_deref(), Some("10.42.2.0/24"));
        let tiny = Allocator::new("10.0.0.0/24", 24).unwrap();
        assert_eq!(tiny.first_free(&["10.0.0.0/24".to_string()].into()), None);
        assert!(Allocator::new("bogus", 24).is_none());
    }
}
