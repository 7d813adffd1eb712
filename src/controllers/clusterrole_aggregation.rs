//! The ClusterRole aggregation controller: a ClusterRole with an `aggregationRule` gets as
//! its rules the union of the rules of every other ClusterRole its selectors match (in
//! name order, duplicates dropped), as upstream's clusterrole-aggregation controller does.
//! This is how `admin`, `edit` and `view` gain the rules of the `aggregate-to-*` roles.
//!
//! Level-triggered: one reflector over ClusterRoles; after any change (debounced) every
//! aggregated role is recomputed from the reflected set, so chains (view → edit → admin)
//! converge. Depends on: `kube` (API client), `api::selector`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::selector::LabelSelector;

/// How long to wait for more changes before recomputing.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// How long to wait before retrying after a failed update.
const RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

/// Runs the controller until `shutdown`.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let api: Api<ClusterRole> = Api::all(client);
    let (reader, writer) = reflector::store::<ClusterRole>();
    let events = reflector::reflector(writer, watcher(api.clone(), watcher::Config::default()))
        .default_backoff();
    let mut events = std::pin::pin!(events);
    let mut ready = false;
    let mut dirty = false;
    loop {
        let wait = if dirty && ready {
            DEBOUNCE
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.next() => match ev {
                Some(Ok(watcher::Event::InitDone)) => {
                    ready = true;
                    dirty = true;
                }
                Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) => dirty = true,
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                Some(Err(err)) => tracing::debug!(%err, "clusterrole watch"),
                None => return,
            },
            _ = tokio::time::sleep(wait) => {
                if dirty && ready {
                    match sync_all(&api, &reader).await {
                        Ok(()) => dirty = false,
                        Err(err) => {
                            tracing::warn!(%err, "clusterrole aggregation failed; retrying");
                            tokio::time::sleep(RETRY).await;
                        }
                    }
                }
            }
        }
    }
}

/// The rules `role` should have, from the `others` its selectors match; `None` when the
/// role does not aggregate.
fn aggregated_rules(role: &ClusterRole, others: &[&ClusterRole]) -> Option<Vec<PolicyRule>> {
    let rule = role.aggregation_rule.as_ref()?;
    let selectors: Vec<LabelSelector> = rule
        .cluster_role_selectors
        .iter()
        .flatten()
        .filter_map(|s| serde_json::to_value(s).ok())
        .filter_map(|v| LabelSelector::from_label_selector_json(&v).ok())
        .collect();
    let mut sources: BTreeMap<String, &ClusterRole> = BTreeMap::new();
    for other in others {
        if other.name_any() == role.name_any() {
            continue;
        }
        let labels: Map<String, Value> = other
            .labels()
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        if selectors.iter().any(|s| s.matches(Some(&labels))) {
            sources.insert(other.name_any(), other);
        }
    }
    let mut rules: Vec<PolicyRule> = Vec::new();
    for source in sources.values() {
        for r in source.rules.iter().flatten() {
            if !rules.contains(r) {
                rules.push(r.clone());
            }
        }
    }
    Some(rules)
}

async fn sync_all(api: &Api<ClusterRole>, reader: &Store<ClusterRole>) -> Result<(), Error> {
    let all = reader.state();
    let refs: Vec<&ClusterRole> = all.iter().map(|r| r.as_ref()).collect();
    for role in &refs {
        let Some(rules) = aggregated_rules(role, &refs) else {
            continue;
        };
        let current = role.rules.clone().unwrap_or_default();
        if rules == current {
            continue;
        }
        let name = role.name_any();
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"rules": rules})),
        )
        .await?;
        tracing::info!(clusterrole = %name, rules = rules.len(), "aggregated clusterrole rules");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(v: Value) -> ClusterRole {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn aggregation_unions_matching_roles_in_name_order() {
        let view = role(json!({"metadata": {"name": "view"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "view"}}]}}));
        let b = role(json!({"metadata": {"name": "b", "labels": {"agg": "view"}},
            "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]},
                      {"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}]}));
        let a = role(json!({"metadata": {"name": "a", "labels": {"agg": "view"}},
            "rules": [{"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}]}));
        let other = role(json!({"metadata": {"name": "c", "labels": {"agg": "edit"}},
            "rules": [{"verbs": ["delete"], "apiGroups": [""], "resources": ["pods"]}]}));
        let all = [&view, &b, &a, &other];
        let rules = aggregated_rules(&view, &all).unwrap();
        let verbs: Vec<&str> = rules.iter().map(|r| r.verbs[0].as_str()).collect();
        assert_eq!(verbs, vec!["list", "get"]);
        assert!(aggregated_rules(&a, &all).is_none());
        // Selecting nothing yields no rules.
        let empty = role(json!({"metadata": {"name": "e"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "none"}}]}}));
        assert_eq!(aggregated_rules(&empty, &all), Some(vec![]));
    }
}
