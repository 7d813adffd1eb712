//! Events the workload controllers record about the objects they manage (core/v1 Events
//! with `source.component` = the controller's name, as upstream's event recorder writes
//! them), so `kubectl describe` and `kubectl get events` show `SuccessfulCreate`,
//! `ScalingReplicaSet` and friends.
//!
//! Repeats of the same event (same object, reason and message) within ten minutes bump
//! the existing Event's `count` and `lastTimestamp` instead of creating another, as
//! upstream's event correlator does. Recording never blocks the caller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

/// How long a recorded event may be bumped instead of recreated.
const AGGREGATION_WINDOW: Duration = Duration::from_secs(600);
/// Remembered events, at most (older ones are forgotten wholesale past this).
const REMEMBERED: usize = 4096;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    /// Informational.
    Normal,
    /// Something went wrong.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

#[derive(Debug)]
struct Recorded {
    name: String,
    count: i32,
    at: Instant,
}

/// Recorded events by (involved object uid, reason, message).
type Seen = HashMap<(String, String, String), Recorded>;

/// Records events as one controller component.
#[derive(Clone)]
pub(crate) struct Recorder {
    client: Client,
    component: &'static str,
    seen: Arc<Mutex<Seen>>,
}

impl Recorder {
    /// A recorder writing as `component` (`replicaset-controller`, ...).
    pub(crate) fn new(client: Client, component: &'static str) -> Recorder {
        Recorder {
            client,
            component,
            seen: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Records an event about `obj` without waiting for the API server.
    pub(crate) fn event<K>(&self, obj: &K, kind: EventType, reason: &str, message: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let ns = obj.namespace().unwrap_or_else(|| "default".into());
        let name = obj.name_any();
        let uid = obj.uid().unwrap_or_default();
        let involved = ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: Some(uid.clone()),
            resource_version: obj.resource_version(),
            field_path: None,
        };
        let now = jiff::Timestamp::now();
        let fresh_name = format!("{name}.{:x}", now.as_nanosecond());
        let key = (uid, reason.to_string(), message.clone());
        let bump = {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if seen.len() > REMEMBERED {
                seen.clear();
            }
            match seen.get_mut(&key) {
                Some(r) if r.at.elapsed() < AGGREGATION_WINDOW => {
                    r.count += 1;
                    r.at = Instant::now();
                    Some((r.name.clone(), r.count))
                }
                _ => {
                    seen.insert(
                        key,
                        Recorded {
                            name: fresh_name.clone(),
                            count: 1,
                            at: Instant::now(),
                        },
                    );
                    None
                }
            }
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let ts = Time(jiff::Timestamp::from_second(now.as_second()).unwrap_or(now));
        let event_name = match &bump {
            Some((n, _)) => n.clone(),
            None => fresh_name,
        };
        let event = Event {
            metadata: ObjectMeta {
                name: Some(event_name.clone()),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            involved_object: involved,
            reason: Some(reason.to_string()),
            message: Some(message),
            type_: Some(kind.as_str().to_string()),
            source: Some(EventSource {
                component: Some(self.component.to_string()),
                host: None,
            }),
            reporting_component: Some(self.component.to_string()),
            reporting_instance: Some(String::new()),
            first_timestamp: Some(ts.clone()),
            last_timestamp: Some(ts.clone()),
            count: Some(1),
            ..Event::default()
        };
        let seen = self.seen.clone();
        let created_name = bump.is_none().then(|| event_name.clone());
        tokio::spawn(async move {
            if let Some((name, count)) = bump {
                let patch = json!({"count": count, "lastTimestamp": ts});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => return,
                    Err(err) => tracing::debug!(%err, event = %name, "bumping event; recreating"),
                }
                let mut fresh = event;
                fresh.count = Some(count);
                if let Err(err) = api.create(&PostParams::default(), &fresh).await {
                    tracing::debug!(%err, "recording event");
                }
                return;
            }
            if let Err(err) = api.create(&PostParams::default(), &event).await {
                tracing::debug!(%err, "recording event");
                // Forget it, so a repeat creates the event afresh.
                if let Some(name) = created_name {
                    seen.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .retain(|_, r| r.name != name);
                }
            }
        });
    }
}
