//! Pod re-creation back-off of a Job after failures (upstream's `backoffRecord`): each
//! failure since the last success doubles the delay from 10 s up to 6 min, counted from
//! the finish time of the last failed pod. Kept in memory, as upstream does.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

/// The first delay after a failure.
pub(crate) const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
/// The longest delay.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(360);

/// Failures since the last success and when the last one happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) failures: u32,
    pub(crate) last_failure: Option<Timestamp>,
}

/// When a finished pod finished: the last container's finish time if all finished, else
/// when `Ready` turned false, else its deletion time less the grace period, else its
/// creation time.
pub(crate) fn finish_time(p: &Pod) -> Timestamp {
    let status = p.status.as_ref();
    let from_containers = status
        .and_then(|s| s.container_statuses.as_ref())
        .filter(|cs| !cs.is_empty())
        .and_then(|cs| {
            cs.iter().try_fold(None::<Timestamp>, |acc, c| {
                let t = c
                    .state
                    .as_ref()?
                    .terminated
                    .as_ref()?
                    .finished_at
                    .as_ref()?
                    .0;
                Some(Some(acc.map_or(t, |a| a.max(t))))
            })
        })
        .flatten();
    if let Some(t) = from_containers {
        return t;
    }
    let ready_false = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "Ready" && c.status == "False")
        })
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    if let Some(t) = ready_false {
        return t;
    }
    if let Some(d) = &p.metadata.deletion_timestamp {
        let grace = p.metadata.deletion_grace_period_seconds.unwrap_or(0);
        return d.0 - jiff::SignedDuration::from_secs(grace);
    }
    p.metadata
        .creation_timestamp
        .as_ref()
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
}

/// The record after newly finished pods were seen.
pub(crate) fn update(prev: Record, succeeded: &[&Pod], failed: &[&Pod]) -> Record {
    let mut failed_times: Vec<Timestamp> = failed.iter().map(|p| finish_time(p)).collect();
    failed_times.sort();
    let last_success = succeeded.iter().map(|p| finish_time(p)).max();
    match last_success {
        None if failed_times.is_empty() => prev,
        None => Record {
            failures: prev.failures + u32::try_from(failed_times.len()).unwrap_or(u32::MAX),
            last_failure: failed_times.last().copied(),
        },
        Some(success) => {
            let after: Vec<Timestamp> = failed_times.into_iter().filter(|t| *t > success).collect();
            Record {
                failures: u32::try_from(after.len()).unwrap_or(u32::MAX),
                last_failure: after.last().copied(),
            }
        }
    }
}

/// How long pod creation must still wait.
pub(crate) fn remaining(r: &Record, now: Timestamp) -> Duration {
    let Some(last) = r.last_failure.filter(|_| r.failures > 0) else {
        return Duration::ZERO;
    };
    let mut delay = DEFAULT_BACKOFF;
    for _ in 1..r.failures {
        delay = delay.saturating_mul(2);
        if delay >= MAX_BACKOFF {
            delay = MAX_BACKOFF;
            break;
        }
    }
    let elapsed = now.duration_since(last);
    if elapsed.is_negative() {
        return delay;
    }
    delay.saturating_sub(elapsed.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(finished: &str) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p"}, "status": {"containerStatuses": [
            {"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 1, "finishedAt": finished}}}]}}),
        )
        .unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn exponential_backoff() {
        let now = ts("2025-01-01T00:01:00Z");
        // (failures, last failure, expected remaining seconds)
        let cases = [
            (0, None, 0),
            (1, Some("2025-01-01T00:01:00Z"), 10),
            (1, Some("2025-01-01T00:00:55Z"), 5),
            (1, Some("2025-01-01T00:00:00Z"), 0),
            (2, Some("2025-01-01T00:01:00Z"), 20),
            (3, Some("2025-01-01T00:01:00Z"), 40),
            (6, Some("2025-01-01T00:01:00Z"), 320),
            (7, Some("2025-01-01T00:01:00Z"), 360),
            (30, Some("2025-01-01T00:01:00Z"), 360),
        ];
        for (failures, last, want) in cases {
            let r = Record {
                failures,
                last_failure: last.map(ts),
            };
            assert_eq!(
                remaining(&r, now),
                Duration::from_secs(want),
                "{failures} {last:?}"
            );
        }
    }

    #[test]
    fn records_follow_successes_and_failures() {
        let f1 = pod("2025-01-01T00:00:10Z");
        let f2 = pod("2025-01-01T00:00:30Z");
        let s1 = pod("2025-01-01T00:00:20Z");
        let r = update(Record::default(), &[], &[&f2, &f1]);
        assert_eq!(
            r,
            Record {
                failures: 2,
                last_failure: Some(ts("2025-01-01T00:00:30Z"))
            }
        );
        let r = update(r, &[&s1], &[&f1, &f2]);
        assert_eq!(
            r,
            Record {
                failures: 1,
                last_failure: Some(ts("2025-01-01T00:00:30Z"))
            },
            "a success resets the count"
        );
        assert_eq!(update(r, &[&s1], &[]), Record::default());
        assert_eq!(update(r, &[], &[]), r);
    }
}
