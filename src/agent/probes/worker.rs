//! One probe worker per (container, probe kind): the upstream prober's state machine.
//!
//! A worker waits for the startup probe (liveness and readiness are gated on it), skips
//! ticks inside `initialDelaySeconds` (measured from the container's start), probes every
//! `periodSeconds`, and publishes a result only after it held `successThreshold` /
//! `failureThreshold` times in a row. Readiness starts false; a failed liveness or startup
//! probe marks the container for restart and puts the worker on hold for good (a restarted
//! container gets new workers). Probe errors (the probe could not run) are reported and
//! thrown away, as upstream does.
//!
//! The handlers (exec, httpGet, tcpSocket, grpc) and event recording sit behind
//! [`Target`], so the state machine is tested with a fake.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Attempts of a probe that errors before its result is thrown away (upstream's
/// `maxProbeRetries`).
const MAX_ATTEMPTS: usize = 3;

/// The kind of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// `livenessProbe`: restart the container when it fails.
    Liveness,
    /// `readinessProbe`: whether the container receives traffic.
    Readiness,
    /// `startupProbe`: gates the other two until it succeeds.
    Startup,
}

impl ProbeKind {
    /// Every kind, startup first.
    pub const ALL: [ProbeKind; 3] = [
        ProbeKind::Startup,
        ProbeKind::Liveness,
        ProbeKind::Readiness,
    ];

    /// The container field holding this probe.
    pub fn field(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "livenessProbe",
            ProbeKind::Readiness => "readinessProbe",
            ProbeKind::Startup => "startupProbe",
        }
    }

    /// Capitalised, as event messages start ("Liveness probe failed: ...").
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        }
    }
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
            ProbeKind::Startup => "startup",
        })
    }
}

/// What one probe attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The probe passed.
    Success,
    /// The probe passed with a remark (an HTTP redirect to another host was not followed).
    Warning(String),
    /// The probe failed; the message says why.
    Failure(String),
    /// The probe could not run; its result is thrown away.
    Error(String),
    /// The container no longer runs: the worker stops.
    Gone,
}

/// A probe of a container spec, with upstream defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSpec {
    /// Which probe.
    pub kind: ProbeKind,
    /// `initialDelaySeconds` (default 0).
    pub initial_delay: Duration,
    /// `periodSeconds` (default 10).
    pub period: Duration,
    /// `timeoutSeconds` (default 1).
    pub timeout: Duration,
    /// `successThreshold` (default 1; always 1 for liveness and startup).
    pub success_threshold: u32,
    /// `failureThreshold` (default 3).
    pub failure_threshold: u32,
    /// The probe-level `terminationGracePeriodSeconds` (liveness and startup only).
    pub grace: Option<i64>,
    /// The probe object (its handler: exec, httpGet, tcpSocket or grpc).
    pub handler: Value,
}

impl ProbeSpec {
    /// The `kind` probe of a container spec, if it has one.
    pub fn of(container: &Value, kind: ProbeKind) -> Option<ProbeSpec> {
        let p = &container[kind.field()];
        if !p.is_object() {
            return None;
        }
        let int = |field: &str, default: i64, min: i64| {
            p[field].as_i64().filter(|v| *v >= min).unwrap_or(default)
        };
        let secs = |field: &str, default: i64, min: i64| {
            Duration::from_secs(int(field, default, min) as u64)
        };
        let count =
            |field: &str, default: i64| u32::try_from(int(field, default, 1)).unwrap_or(u32::MAX);
        Some(ProbeSpec {
            kind,
            initial_delay: secs("initialDelaySeconds", 0, 0),
            period: secs("periodSeconds", 10, 1),
            timeout: secs("timeoutSeconds", 1, 1),
            success_threshold: if kind == ProbeKind::Readiness {
                count("successThreshold", 1)
            } else {
                1
            },
            failure_threshold: count("failureThreshold", 3),
            grace: if kind == ProbeKind::Readiness {
                None
            } else {
                p["terminationGracePeriodSeconds"]
                    .as_i64()
                    .filter(|g| *g >= 0)
            },
            handler: p.clone(),
        })
    }

    /// Every probe of a container spec, startup first.
    pub fn all(container: &Value) -> Vec<ProbeSpec> {
        ProbeKind::ALL
            .iter()
            .filter_map(|k| ProbeSpec::of(container, *k))
            .collect()
    }
}

/// Counts consecutive results against a probe's thresholds.
#[derive(Debug, Clone)]
pub struct Tracker {
    success_threshold: u32,
    failure_threshold: u32,
    last: Option<bool>,
    run: u32,
}

impl Tracker {
    /// A tracker for `spec`.
    pub fn new(spec: &ProbeSpec) -> Tracker {
        Tracker {
            success_threshold: spec.success_threshold.max(1),
            failure_threshold: spec.failure_threshold.max(1),
            last: None,
            run: 0,
        }
    }

    /// Feeds one result (true = success); returns the result to publish once it has
    /// held for its threshold.
    pub fn observe(&mut self, success: bool) -> Option<bool> {
        if self.last == Some(success) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        let threshold = if success {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        (self.run >= threshold).then_some(success)
    }
}

/// A failed liveness or startup probe: the container must be restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    /// The probe that failed (liveness or startup).
    pub probe: ProbeKind,
    /// The probe's own termination grace period, overriding the pod's.
    pub grace: Option<i64>,
}

/// What the pod worker reads about one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Results {
    /// Readiness; None without a readiness probe.
    pub ready: Option<bool>,
    /// Whether the startup probe succeeded; None without one.
    pub started: Option<bool>,
    /// Set once liveness or startup failed.
    pub failed: Option<Failed>,
}

/// State shared by a container's probe workers and the pod worker.
pub struct Shared {
    results: Mutex<Results>,
    started: watch::Sender<bool>,
    changed: Arc<Notify>,
}

impl Shared {
    /// Initial results for a container with `specs`: not ready and not started until the
    /// probes say so. `changed` is notified on every change.
    pub fn new(specs: &[ProbeSpec], changed: Arc<Notify>) -> Shared {
        let has = |k: ProbeKind| specs.iter().any(|s| s.kind == k);
        let results = Results {
            ready: has(ProbeKind::Readiness).then_some(false),
            started: has(ProbeKind::Startup).then_some(false),
            failed: None,
        };
        let (started, _) = watch::channel(!has(ProbeKind::Startup));
        Shared {
            results: Mutex::new(results),
            started,
            changed,
        }
    }

    /// The current results.
    pub fn results(&self) -> Results {
        *self.results.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut Results)) {
        let changed = {
            let mut r = self.results.lock().unwrap_or_else(PoisonError::into_inner);
            let before = *r;
            f(&mut r);
            *r != before
        };
        if changed {
            self.changed.notify_one();
        }
    }
}

/// What a worker probes through and reports to.
#[async_trait]
pub trait Target: Send + Sync {
    /// Runs the probe's handler once (within `spec.timeout`).
    async fn probe(&self, spec: &ProbeSpec) -> Outcome;
    /// Records a Warning event about the container.
    fn event(&self, reason: &'static str, message: String);
}

/// Runs one probe worker until the container is gone, a liveness/startup probe failed,
/// the startup probe succeeded, or `cancel`.
pub async fn run(
    spec: ProbeSpec,
    container_started: Instant,
    target: Arc<dyn Target>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    if spec.kind != ProbeKind::Startup {
        // Liveness and readiness wait for the startup probe.
        let mut started = shared.started.subscribe();
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = started.wait_for(|s| *s) => if r.is_err() { return },
        }
    }
    let mut tracker = Tracker::new(&spec);
    let mut ticker = tokio::time::interval(spec.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if container_started.elapsed() < spec.initial_delay {
            continue;
        }
        let mut outcome = Outcome::Error(String::new());
        for _ in 0..MAX_ATTEMPTS {
            outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                o = target.probe(&spec) => o,
            };
            if !matches!(outcome, Outcome::Error(_)) {
                break;
            }
        }
        let title = spec.kind.title();
        let success = match outcome {
            Outcome::Success => true,
            Outcome::Warning(msg) => {
                target.event("ProbeWarning", format!("{title} probe warning: {msg}"));
                true
            }
            Outcome::Failure(msg) => {
                target.event("Unhealthy", format!("{title} probe failed: {msg}"));
                false
            }
            Outcome::Error(msg) => {
                target.event(
                    "Unhealthy",
                    format!("{title} probe errored and resulted in unknown state: {msg}"),
                );
                continue;
            }
            Outcome::Gone => {
                if spec.kind == ProbeKind::Readiness {
                    shared.update(|r| r.ready = Some(false));
                }
                return;
            }
        };
        tracing::trace!(probe = %spec.kind, success, "probe result");
        let Some(result) = tracker.observe(success) else {
            continue;
        };
        match (spec.kind, result) {
            (ProbeKind::Readiness, ready) => shared.update(|r| r.ready = Some(ready)),
            (ProbeKind::Startup, true) => {
                shared.update(|r| r.started = Some(true));
                shared.started.send_replace(true);
                return;
            }
            (ProbeKind::Liveness, true) => {}
            (kind, false) => {
                // On hold for good: the container is restarted with new workers.
                shared.update(|r| {
                    r.failed = Some(Failed {
                        probe: kind,
                        grace: spec.grace,
                    })
                });
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use serde_json::json;

    use super::*;

    #[test]
    fn specs_take_upstream_defaults() {
        let c = json!({
            "livenessProbe": {"exec": {"command": ["true"]}, "successThreshold": 5, "terminationGracePeriodSeconds": 3},
            "readinessProbe": {"tcpSocket": {"port": 80}, "initialDelaySeconds": 4, "periodSeconds": 2, "timeoutSeconds": 7, "successThreshold": 2, "failureThreshold": 6, "terminationGracePeriodSeconds": 9},
        });
        let all = ProbeSpec::all(&c);
        assert_eq!(
            all.iter().map(|s| s.kind).collect::<Vec<_>>(),
            [ProbeKind::Liveness, ProbeKind::Readiness]
        );
        let cases = [
            // kind, initial delay, period, timeout, success, failure, grace
            (ProbeKind::Liveness, 0, 10, 1, 1, 3, Some(3)),
            (ProbeKind::Readiness, 4, 2, 7, 2, 6, None),
        ];
        for (spec, (kind, delay, period, timeout, succ, fail, grace)) in all.iter().zip(cases) {
            assert_eq!(spec.kind, kind);
            assert_eq!(spec.initial_delay, Duration::from_secs(delay), "{kind}");
            assert_eq!(spec.period, Duration::from_secs(period), "{kind}");
            assert_eq!(spec.timeout, Duration::from_secs(timeout), "{kind}");
            assert_eq!(
                (spec.success_threshold, spec.failure_threshold),
                (succ, fail),
                "{kind}"
            );
            assert_eq!(spec.grace, grace, "{kind}");
        }
        assert!(ProbeSpec::of(&json!({"startupProbe": null}), ProbeKind::Startup).is_none());
        // Nonsense values fall back to the defaults.
        let odd = ProbeSpec::of(
            &json!({"startupProbe": {"periodSeconds": 0, "failureThreshold": -1}}),
            ProbeKind::Startup,
        )
        .unwrap();
        assert_eq!(
            (odd.period, odd.failure_threshold),
            (Duration::from_secs(10), 3)
        );
    }

    #[test]
    fn thresholds() {
        // (success threshold, failure threshold, results fed, published after each)
        type Case<'a> = (u32, u32, &'a [bool], &'a [Option<bool>]);
        let cases: &[Case] = &[
            (
                1,
                3,
                &[true, false, false, false, false],
                &[Some(true), None, None, Some(false), Some(false)],
            ),
            (
                2,
                1,
                &[true, true, false, true, true, true],
                &[None, Some(true), Some(false), None, Some(true), Some(true)],
            ),
            (
                1,
                2,
                &[false, true, false, true, false, false],
                &[None, Some(true), None, Some(true), None, Some(false)],
            ),
            (
                3,
                3,
                &[true, true, false, false, true],
                &[None, None, None, None, None],
            ),
        ];
        for (succ, fail, fed, want) in cases {
            let spec = ProbeSpec {
                success_threshold: *succ,
                failure_threshold: *fail,
                ..spec(ProbeKind::Readiness, 10, 0)
            };
            let mut t = Tracker::new(&spec);
            let got: Vec<Option<bool>> = fed.iter().map(|r| t.observe(*r)).collect();
            assert_eq!(&got, want, "success {succ} failure {fail} fed {fed:?}");
        }
    }

    fn spec(kind: ProbeKind, period_ms: u64, delay_ms: u64) -> ProbeSpec {
        ProbeSpec {
            kind,
            initial_delay: Duration::from_millis(delay_ms),
            period: Duration::from_millis(period_ms),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 1,
            grace: None,
            handler: Value::Null,
        }
    }

    /// A scripted target: per kind, the outcomes to return (the last one repeats), and a
    /// log of when each kind was probed and which events were recorded.
    #[derive(Default)]
    struct Fake {
        script: Mutex<std::collections::HashMap<ProbeKind, VecDeque<Outcome>>>,
        calls: Mutex<Vec<(ProbeKind, Instant)>>,
        events: Mutex<Vec<(String, String)>>,
    }

    impl Fake {
        fn with(script: &[(ProbeKind, &[Outcome])]) -> Arc<Fake> {
            let f = Fake::default();
            for (k, outcomes) in script {
                f.script
                    .lock()
                    .unwrap()
                    .insert(*k, outcomes.iter().cloned().collect());
            }
            Arc::new(f)
        }
        fn calls(&self, kind: ProbeKind) -> Vec<Instant> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, t)| *t)
                .collect()
        }
        fn events(&self) -> Vec<(String, String)> {
            self.events.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Target for Fake {
        async fn probe(&self, spec: &ProbeSpec) -> Outcome {
            self.calls.lock().unwrap().push((spec.kind, Instant::now()));
            let mut script = self.script.lock().unwrap();
            let q = script.entry(spec.kind).or_default();
            if q.len() > 1 {
                q.pop_front().unwrap()
            } else {
                q.front().cloned().unwrap_or(Outcome::Success)
            }
        }
        fn event(&self, reason: &'static str, message: String) {
            self.events
                .lock()
                .unwrap()
                .push((reason.to_string(), message));
        }
    }

    /// Starts workers for `specs` against `fake`; returns the shared state, the change
    /// notification and the cancel token.
    fn start(
        specs: Vec<ProbeSpec>,
        fake: &Arc<Fake>,
        started: Instant,
    ) -> (Arc<Shared>, Arc<Notify>, CancellationToken) {
        let changed = Arc::new(Notify::new());
        let shared = Arc::new(Shared::new(&specs, changed.clone()));
        let cancel = CancellationToken::new();
        for s in specs {
            let target: Arc<dyn Target> = fake.clone();
            tokio::spawn(run(s, started, target, shared.clone(), cancel.clone()));
        }
        (shared, changed, cancel)
    }

    async fn until(what: &str, shared: &Shared, f: impl Fn(&Results) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f(&shared.results()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                shared.results()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn readiness_starts_false_and_follows_thresholds() {
        use Outcome::*;
        let fake = Fake::with(&[(
            ProbeKind::Readiness,
            &[
                Success,
                Success,
                Failure("boom".into()),
                Failure("boom".into()),
                Success,
            ],
        )]);
        let s = ProbeSpec {
            success_threshold: 2,
            failure_threshold: 2,
            ..spec(ProbeKind::Readiness, 20, 0)
        };
        let (shared, changed, cancel) = start(vec![s], &fake, Instant::now());
        assert_eq!(
            shared.results(),
            Results {
                ready: Some(false),
                started: None,
                failed: None
            }
        );
        until("ready", &shared, |r| r.ready == Some(true)).await;
        // The pod worker is woken for the change.
        tokio::time::timeout(Duration::from_secs(5), changed.notified())
            .await
            .expect("notified");
        until("not ready after two failures", &shared, |r| {
            r.ready == Some(false)
        })
        .await;
        until("ready again", &shared, |r| r.ready == Some(true)).await;
        cancel.cancel();
        let events = fake.events();
        assert_eq!(
            events,
            vec![
                (
                    "Unhealthy".to_string(),
                    "Readiness probe failed: boom".to_string()
                );
                2
            ]
        );
    }

    #[tokio::test]
    async fn initial_delay_counts_from_container_start() {
        let fake = Fake::with(&[(ProbeKind::Readiness, &[Outcome::Success])]);
        let t0 = Instant::now();
        let (shared, _, cancel) = start(vec![spec(ProbeKind::Readiness, 20, 300)], &fake, t0);
        until("ready", &shared, |r| r.ready == Some(true)).await;
        let first = fake.calls(ProbeKind::Readiness)[0];
        assert!(
            first.duration_since(t0) >= Duration::from_millis(300),
            "probed after {:?}",
            first.duration_since(t0)
        );
        cancel.cancel();

        // A container that started long ago is probed at once.
        let fake = Fake::with(&[(ProbeKind::Readiness, &[Outcome::Success])]);
        let long_ago = Instant::now()
            .checked_sub(Duration::from_secs(5))
            .unwrap_or(t0);
        let t1 = Instant::now();
        let (shared, _, cancel) = start(vec![spec(ProbeKind::Readiness, 20, 300)], &fake, long_ago);
        until("ready", &shared, |r| r.ready == Some(true)).await;
        assert!(
            fake.calls(ProbeKind::Readiness)[0].duration_since(t1) < Duration::from_millis(250)
        );
        cancel.cancel();
    }

    #[tokio::test]
    async fn startup_gates_liveness_and_readiness() {
        use Outcome::*;
        let fake = Fake::with(&[
            (
                ProbeKind::Startup,
                &[
                    Failure("not yet".into()),
                    Failure("not yet".into()),
                    Success,
                ],
            ),
            (ProbeKind::Liveness, &[Success]),
            (ProbeKind::Readiness, &[Success]),
        ]);
        let specs = vec![
            ProbeSpec {
                failure_threshold: 5,
                ..spec(ProbeKind::Startup, 30, 0)
            },
            spec(ProbeKind::Liveness, 30, 0),
            // A long period: readiness is probed right when startup succeeds, not a period later.
            spec(ProbeKind::Readiness, 60_000, 0),
        ];
        let (shared, _, cancel) = start(specs, &fake, Instant::now());
        assert_eq!(
            shared.results(),
            Results {
                ready: Some(false),
                started: Some(false),
                failed: None
            }
        );
        until("started and ready", &shared, |r| {
            r.started == Some(true) && r.ready == Some(true)
        })
        .await;
        let started_at = *fake.calls(ProbeKind::Startup).last().unwrap();
        assert_eq!(fake.calls(ProbeKind::Startup).len(), 3);
        for kind in [ProbeKind::Liveness, ProbeKind::Readiness] {
            let calls = fake.calls(kind);
            assert!(!calls.is_empty(), "{kind} probed after startup");
            assert!(
                calls.iter().all(|t| *t >= started_at),
                "{kind} probed before the startup probe succeeded"
            );
        }
        // The startup worker is done once it succeeded.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fake.calls(ProbeKind::Startup).len(), 3);
        assert_eq!(shared.results().failed, None);
        cancel.cancel();
    }

    #[tokio::test]
    async fn failed_startup_is_a_restart_and_keeps_the_rest_gated() {
        let fake = Fake::with(&[(
            ProbeKind::Startup,
            &[Outcome::Failure(
                "HTTP probe failed with statuscode: 503".into(),
            )],
        )]);
        let specs = vec![
            ProbeSpec {
                failure_threshold: 3,
                grace: Some(4),
                ..spec(ProbeKind::Startup, 10, 0)
            },
            spec(ProbeKind::Liveness, 10, 0),
            spec(ProbeKind::Readiness, 10, 0),
        ];
        let (shared, _, cancel) = start(specs, &fake, Instant::now());
        until("failed", &shared, |r| r.failed.is_some()).await;
        assert_eq!(
            shared.results().failed,
            Some(Failed {
                probe: ProbeKind::Startup,
                grace: Some(4)
            })
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(
            fake.calls(ProbeKind::Startup).len(),
            3,
            "on hold after the failure"
        );
        assert!(
            fake.calls(ProbeKind::Liveness).is_empty()
                && fake.calls(ProbeKind::Readiness).is_empty()
        );
        assert_eq!(shared.results().ready, Some(false));
        assert_eq!(fake.events().len(), 3);
        assert_eq!(
            fake.events()[0].1,
            "Startup probe failed: HTTP probe failed with statuscode: 503"
        );
        cancel.cancel();
    }

    #[tokio::test]
    async fn liveness_failure_holds_and_errors_do_not_count() {
        use Outcome::*;
        let fake = Fake::with(&[(
            ProbeKind::Liveness,
            &[
                Error("rpc failed".into()),
                Error("rpc failed".into()),
                Error("rpc failed".into()),
                Failure("cat: can't open '/tmp/healthy'".into()),
                Success,
                Failure("x".into()),
            ],
        )]);
        let specs = vec![ProbeSpec {
            failure_threshold: 1,
            ..spec(ProbeKind::Liveness, 20, 0)
        }];
        let (shared, _, cancel) = start(specs, &fake, Instant::now());
        until("liveness failed", &shared, |r| r.failed.is_some()).await;
        assert_eq!(
            shared.results().failed,
            Some(Failed {
                probe: ProbeKind::Liveness,
                grace: None
            })
        );
        // Three attempts erred (one event, no result), then the failure counted.
        assert_eq!(
            fake.events(),
            vec![
                (
                    "Unhealthy".to_string(),
                    "Liveness probe errored and resulted in unknown state: rpc failed".to_string()
                ),
                (
                    "Unhealthy".to_string(),
                    "Liveness probe failed: cat: can't open '/tmp/healthy'".to_string()
                ),
            ]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            fake.calls(ProbeKind::Liveness).len(),
            4,
            "no probing after the failure"
        );
        cancel.cancel();
    }

    #[tokio::test]
    async fn warnings_count_as_success_and_gone_stops() {
        use Outcome::*;
        let fake = Fake::with(&[(
            ProbeKind::Readiness,
            &[
                Warning("Probe terminated redirects, Response body: ".into()),
                Gone,
            ],
        )]);
        let (shared, _, _cancel) = start(
            vec![spec(ProbeKind::Readiness, 20, 0)],
            &fake,
            Instant::now(),
        );
        until("ready", &shared, |r| r.ready == Some(true)).await;
        until("not ready once gone", &shared, |r| r.ready == Some(false)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fake.calls(ProbeKind::Readiness).len(), 2);
        assert_eq!(
            fake.events(),
            vec![(
                "ProbeWarning".to_string(),
                "Readiness probe warning: Probe terminated redirects, Response body: ".to_string()
            )]
        );
    }
}
