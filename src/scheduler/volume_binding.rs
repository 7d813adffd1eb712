//! The VolumeBinding plugin: pods that use PersistentVolumeClaims.
//!
//! - PreFilter ([`resolve`]): every claim must exist; an unbound claim is fine only if its
//!   StorageClass binds `WaitForFirstConsumer` (otherwise "pod has unbound immediate
//!   PersistentVolumeClaims", as upstream reports).
//! - Filter ([`fits`]): a node must satisfy the node affinity of every bound volume
//!   ("node(s) had volume node affinity conflict").
//! - PreBind ([`select_node`]): the delayed claims get `volume.kubernetes.io/selected-node`,
//!   which tells the provisioner where to make the volume. Unlike upstream the pod is bound
//!   at once; the node agent waits for the claims to be bound before it starts the pod.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

/// The annotation that names the node the scheduler picked for a delayed claim.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// What the pod's claims require.
#[derive(Debug, Clone, Default)]
pub struct PodVolumes {
    /// The `nodeSelectorTerms` of each bound volume's required node affinity.
    pub node_terms: Vec<Value>,
    /// Unbound claims waiting for their first consumer (names).
    pub delayed: Vec<String>,
}

/// Looks up the pod's claims; `Err` is the reason no node can take the pod.
pub async fn resolve(client: &kube::Client, pod: &Value) -> Result<PodVolumes, String> {
    let mut out = PodVolumes::default();
    let claims: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
        .collect();
    if claims.is_empty() {
        return Ok(out);
    }
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let classes: Api<StorageClass> = Api::all(client.clone());
    let mut unbound_immediate = false;
    for name in claims {
        let pvc = match pvcs.get_opt(name).await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(format!("persistentvolumeclaim \"{name}\" not found")),
            Err(err) => return Err(format!("error getting PVC \"{ns}/{name}\": {err}")),
        };
        if pvc.metadata.deletion_timestamp.is_some() {
            return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
        }
        let spec = pvc.spec.clone().unwrap_or_default();
        match spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
            Some(volume) => {
                let pv = match pvs.get_opt(volume).await {
                    Ok(Some(pv)) => pv,
                    Ok(None) => {
                        return Err(format!(
                            "pvc(s) bound to non-existent pv(s): persistentvolume \"{volume}\" not found"
                        ));
                    }
                    Err(err) => return Err(format!("error getting PV \"{volume}\": {err}")),
                };
                let pv = serde_json::to_value(&pv).unwrap_or(Value::Null);
                let terms = &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"];
                if terms.is_array() {
                    out.node_terms.push(terms.clone());
                }
            }
            None => {
                let class = spec.storage_class_name.unwrap_or_default();
                let delayed = !class.is_empty()
                    && classes
                        .get_opt(&class)
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|c| {
                            c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
                        });
                if delayed {
                    out.delayed.push(name.to_string());
                } else {
                    unbound_immediate = true;
                }
            }
        }
    }
    if unbound_immediate {
        return Err("pod has unbound immediate PersistentVolumeClaims".into());
    }
    Ok(out)
}

/// Whether `node` satisfies every bound volume's node affinity.
pub fn fits(volumes: &PodVolumes, node: &Value) -> Result<(), super::plugins::Reason> {
    let ok = volumes.node_terms.iter().all(|terms| {
        terms.as_array().is_some_and(|ts| {
            ts.iter()
                .any(|t| super::plugins::node_selector_term_matches(t, node))
        })
    });
    if ok {
        Ok(())
    } else {
        Err("node(s) had volume node affinity conflict".into())
    }
}

/// Records the chosen node on the pod's delayed claims.
pub async fn select_node(client: &kube::Client, pod: &Value, volumes: &PodVolumes, node: &str) {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    for claim in &volumes.delayed {
        let patch = json!({"metadata": {"annotations": {SELECTED_NODE: node}}});
        if let Err(err) = pvcs
            .patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(%err, pvc = %claim, ns = %ns, "recording the selected node");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_affinity_of_bound_volumes() {
        let vols = PodVolumes {
            node_terms: vec![json!([{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}])],
            delayed: vec![],
        };
        let n1 = json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}}});
        let n2 = json!({"metadata": {"name": "n2", "labels": {"kubernetes.io/hostname": "n2"}}});
        assert!(fits(&vols, &n1).is_ok());
        assert_eq!(
            fits(&vols, &n2).unwrap_err(),
            "node(s) had volume node affinity conflict"
        );
        assert!(fits(&PodVolumes::default(), &n2).is_ok());
    }
}
