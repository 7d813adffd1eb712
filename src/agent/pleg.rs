//! The pod lifecycle event generator (PLEG): one relister that lists every sandbox and
//! container of the runtime in one `ListPodSandbox` + one `ListContainers` call per
//! period, diffs the listing against the previous one, and wakes the pod workers whose
//! pods' runtime state changed (a sandbox or container appeared, disappeared or changed
//! state). Pod workers then sync only when woken (by this, by a pod change, a probe
//! result, a back-off timer or the long resync), instead of polling the runtime.
//!
//! Owns: the per-pod wake-up handles and the last listing. Depends on: `super::cri`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_cri::v1 as cri;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::cri::{Cri, LABEL_POD_UID};

/// The relist period (upstream's generic PLEG relists every second).
pub const RELIST: Duration = Duration::from_secs(1);

/// What the runtime holds of one pod: (kind, id, state) per sandbox and container.
type Fingerprint = Vec<(u8, String, i32)>;

/// The event generator: hand out per-pod wake-ups with [`Pleg::changes`], run
/// [`Pleg::run`] once.
#[derive(Default)]
pub struct Pleg {
    pods: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Pleg {
    pub fn new() -> Arc<Pleg> {
        Arc::default()
    }

    /// The wake-up of pod `uid`: notified (with a stored permit) whenever a relist sees
    /// its runtime state change.
    pub fn changes(&self, uid: &str) -> Arc<Notify> {
        self.pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(uid.to_string())
            .or_default()
            .clone()
    }

    /// Drops the wake-up of a pod whose worker ended.
    pub fn forget(&self, uid: &str) {
        self.pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(uid);
    }

    /// Relists every [`RELIST`] until `shutdown`, waking the pods that changed.
    pub async fn run(self: Arc<Self>, cri: Cri, shutdown: CancellationToken) {
        let mut previous: BTreeMap<String, Fingerprint> = BTreeMap::new();
        let mut tick = tokio::time::interval(RELIST);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut c = cri.clone();
            let listing = match (c.sandboxes(None).await, c.containers(None).await) {
                (Ok(s), Ok(ctrs)) => fingerprints(&s, &ctrs),
                (Err(err), _) | (_, Err(err)) => {
                    tracing::debug!(%err, "PLEG relist failed");
                    continue;
                }
            };
            let changed = diff(&previous, &listing);
            previous = listing;
            if changed.is_empty() {
                continue;
            }
            let pods = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
            for uid in changed {
                if let Some(n) = pods.get(uid.as_str()) {
                    n.notify_one();
                }
            }
        }
    }
}

/// The runtime state per pod uid, sorted so that equal states compare equal.
fn fingerprints(
    sandboxes: &[cri::PodSandbox],
    containers: &[cri::Container],
) -> BTreeMap<String, Fingerprint> {
    let mut out: BTreeMap<String, Fingerprint> = BTreeMap::new();
    for s in sandboxes {
        if let Some(uid) = s.labels.get(LABEL_POD_UID) {
            out.entry(uid.clone())
                .or_default()
                .push((0, s.id.clone(), s.state));
        }
    }
    for c in containers {
        if let Some(uid) = c.labels.get(LABEL_POD_UID) {
            out.entry(uid.clone())
                .or_default()
                .push((1, c.id.clone(), c.state));
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// The pod uids whose fingerprint differs between two listings (appeared, changed or
/// disappeared).
fn diff(old: &BTreeMap<String, Fingerprint>, new: &BTreeMap<String, Fingerprint>) -> Vec<String> {
    let mut out: Vec<String> = new
        .iter()
        .filter(|(uid, fp)| old.get(*uid) != Some(fp))
        .map(|(uid, _)| uid.clone())
        .collect();
    out.extend(old.keys().filter(|u| !new.contains_key(*u)).cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(uid: &str, id: &str, state: i32) -> cri::PodSandbox {
        cri::PodSandbox {
            id: id.into(),
            state,
            labels: [(LABEL_POD_UID.to_string(), uid.to_string())].into(),
            ..Default::default()
        }
    }

    fn container(uid: &str, id: &str, state: i32) -> cri::Container {
        cri::Container {
            id: id.into(),
            state,
            labels: [(LABEL_POD_UID.to_string(), uid.to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn diff_wakes_only_changed_pods() {
        let base_s = vec![sandbox("a", "sa", 0), sandbox("b", "sb", 0)];
        let base_c = vec![container("a", "ca", 1), container("b", "cb", 1)];
        let base = fingerprints(&base_s, &base_c);
        type Case = (
            &'static str,
            Vec<cri::PodSandbox>,
            Vec<cri::Container>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            ("nothing changed", base_s.clone(), base_c.clone(), vec![]),
            (
                "container exited",
                base_s.clone(),
                vec![container("a", "ca", 1), container("b", "cb", 2)],
                vec!["b"],
            ),
            (
                "new container",
                base_s.clone(),
                vec![
                    container("a", "ca", 1),
                    container("a", "ca2", 0),
                    container("b", "cb", 1),
                ],
                vec!["a"],
            ),
            (
                "pod gone",
                vec![sandbox("a", "sa", 0)],
                vec![container("a", "ca", 1)],
                vec!["b"],
            ),
            (
                "new pod, order irrelevant",
                vec![
                    sandbox("c", "sc", 0),
                    sandbox("b", "sb", 0),
                    sandbox("a", "sa", 0),
                ],
                vec![container("b", "cb", 1), container("a", "ca", 1)],
                vec!["c"],
            ),
            (
                "sandbox not ready",
                vec![sandbox("a", "sa", 1), sandbox("b", "sb", 0)],
                base_c.clone(),
                vec!["a"],
            ),
        ];
        for (name, s, c, want) in cases {
            let mut got = diff(&base, &fingerprints(&s, &c));
            got.sort();
            assert_eq!(got, want, "{name}");
        }
    }

    #[tokio::test]
    async fn notify_keeps_a_permit_for_a_busy_worker() {
        let pleg = Pleg::new();
        let n = pleg.changes("u");
        pleg.changes("u").notify_one();
        tokio::time::timeout(Duration::from_millis(100), n.notified())
            .await
            .expect("woken");
        pleg.forget("u");
        assert!(pleg.pods.lock().unwrap().is_empty());
    }
}
