//! The controller manager: level-triggered controllers, each an API client with its own
//! identity, built on kube-runtime (watch, reflect, reconcile, requeue).
//!
//! Depends on: `client`, `api`. Must not depend on: `store`, `apiserver`.

mod namespace;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::{self, ClientConfig};

/// Running controllers.
pub struct Controllers {
    tasks: Vec<JoinHandle<()>>,
}

impl Controllers {
    /// Waits (briefly) for every controller to stop after shutdown was signalled.
    pub async fn stop(self) {
        for t in self.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
    }
}

/// Starts every controller; they run until `shutdown`.
pub async fn start(
    cfg: ClientConfig,
    shutdown: CancellationToken,
) -> Result<Controllers, client::Error> {
    let client = cfg.client_for("system:kube-controller-manager", &[])?;
    let tasks = vec![tokio::spawn(namespace::run(client, shutdown))];
    Ok(Controllers { tasks })
}
