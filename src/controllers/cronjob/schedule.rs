//! Standard cron schedules as the CronJob controller reads them (the semantics of
//! robfig/cron v3's `ParseStandard`, which upstream uses): five fields (minute, hour,
//! day of month, month, day of week) with `*`/`?`, ranges, steps, lists and names
//! (`JAN`..`DEC`, `SUN`..`SAT`, any case), the `@yearly`, `@annually`, `@monthly`,
//! `@weekly`, `@daily`, `@midnight`, `@hourly` and `@every <duration>` descriptors, and a
//! `TZ=`/`CRON_TZ=` prefix naming the time zone.
//!
//! [`Schedule::next`] finds the first activation strictly after an instant, walking the
//! fields in the schedule's time zone the way robfig's `SpecSchedule.Next` does: calendar
//! steps for months and days, absolute one-hour and one-minute steps below that, so a
//! daily time that falls in a spring-forward gap is skipped that day and one in a
//! fall-back overlap runs twice. Day of month and day of week combine with OR when both
//! are restricted, AND when either is `*`.
//!
//! Depends on jiff only (its time zone database: the system's zoneinfo).

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan, Zoned};

/// Set in a field parsed from `*` or `?` (without a step above 1).
const STAR: u64 = 1 << 63;

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Why a schedule does not parse (messages as robfig/cron words them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ScheduleError(String);

/// The five fields of a standard schedule, one bit per allowed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Fields(Fields),
    /// `@every <duration>`: fixed delay, whole seconds, at least one.
    Every(SignedDuration),
}

/// A parsed schedule with its time zone.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    kind: Kind,
    tz: TimeZone,
}

/// Loads a time zone by IANA name (`UTC` and `Local` as Go's `LoadLocation` has them).
pub(crate) fn load_time_zone(name: &str) -> Result<TimeZone, String> {
    match name {
        "" | "UTC" => Ok(TimeZone::UTC),
        "Local" => Ok(TimeZone::system()),
        _ => TimeZone::get(name).map_err(|_| format!("unknown time zone {name}")),
    }
}

impl Schedule {
    /// Parses `spec`; without a `TZ=`/`CRON_TZ=` prefix the schedule is in `tz`.
    pub(crate) fn parse(spec: &str, tz: TimeZone) -> Result<Schedule, ScheduleError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(ScheduleError("empty spec string".into()));
        }
        let (tz, rest) = if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            let (prefix, rest) = spec.split_once(' ').unwrap_or((spec, ""));
            let name = prefix.split_once('=').map_or("", |(_, n)| n);
            let tz = load_time_zone(name)
                .map_err(|e| ScheduleError(format!("provided bad location {name}: {e}")))?;
            (tz, rest.trim())
        } else {
            (tz, spec)
        };
        let kind = if let Some(desc) = rest.strip_prefix('@') {
            descriptor(desc, rest)?
        } else {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.len() != 5 {
                return Err(ScheduleError(format!(
                    "expected exactly 5 fields, found {}: [{}]",
                    fields.len(),
                    fields.join(" ")
                )));
            }
            Kind::Fields(Fields {
                minute: field(fields[0], 0, 59, &[], 0)?,
                hour: field(fields[1], 0, 23, &[], 0)?,
                dom: field(fields[2], 1, 31, &[], 0)?,
                month: field(fields[3], 1, 12, MONTHS, 1)?,
                dow: field(fields[4], 0, 6, DAYS, 0)?,
            })
        };
        Ok(Schedule { kind, tz })
    }

    /// The first activation strictly after `after` (`None` if there is none within five
    /// years, e.g. `0 0 30 2 *`).
    pub(crate) fn next(&self, after: Timestamp) -> Option<Timestamp> {
        match &self.kind {
            Kind::Every(delay) => {
                let sub = SignedDuration::from_nanos(i64::from(after.subsec_nanosecond()));
                after.checked_add(*delay - sub).ok()
            }
            Kind::Fields(f) => next_fields(f, &self.tz, after),
        }
    }
}

fn descriptor(desc: &str, whole: &str) -> Result<Kind, ScheduleError> {
    let all = |lo: u32, hi: u32| bits(lo, hi, 1) | STAR;
    let fixed = |minute: u64, hour: u64, dom: u64, month: u64, dow: u64| {
        Kind::Fields(Fields {
            minute,
            hour,
            dom,
            month,
            dow,
        })
    };
    Ok(match desc {
        "yearly" | "annually" => fixed(1, 1, 1 << 1, 1 << 1, all(0, 6)),
        "monthly" => fixed(1, 1, 1 << 1, all(1, 12), all(0, 6)),
        "weekly" => fixed(1, 1, all(1, 31), all(1, 12), 1),
        "daily" | "midnight" => fixed(1, 1, all(1, 31), all(1, 12), all(0, 6)),
        "hourly" => fixed(1, all(0, 23), all(1, 31), all(1, 12), all(0, 6)),
        d if d.starts_with("every ") => {
            let raw = d["every ".len()..].trim();
            let nanos = parse_go_duration(raw)
                .map_err(|e| ScheduleError(format!("failed to parse duration {whole}: {e}")))?;
            let secs = (nanos / 1_000_000_000).max(1);
            Kind::Every(SignedDuration::from_secs(
                i64::try_from(secs).unwrap_or(i64::MAX),
            ))
        }
        _ => return Err(ScheduleError(format!("unrecognized descriptor: {whole}"))),
    })
}

/// Go's `time.ParseDuration` for non-negative durations, in nanoseconds.
fn parse_go_duration(s: &str) -> Result<u128, String> {
    let invalid = || format!("time: invalid duration \"{s}\"");
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(invalid());
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(invalid());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| invalid())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("time: missing unit in duration \"{s}\"")),
            u => return Err(format!("time: unknown unit \"{u}\" in duration \"{s}\"")),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 9.2e18 {
        return Err(invalid());
    }
    // Truncation towards zero is intended: the value is a non-negative count of ns.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(total as u128)
}

fn bits(lo: u32, hi: u32, step: u32) -> u64 {
    (lo..=hi)
        .step_by(step.max(1) as usize)
        .fold(0, |acc, v| acc | (1u64 << v))
}

fn int_or_name(s: &str, names: &[&str], base: u32) -> Result<u32, ScheduleError> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        return Ok(u32::try_from(i).unwrap_or(0) + base);
    }
    int(s)
}

fn int(s: &str) -> Result<u32, ScheduleError> {
    let n: i64 = s
        .parse()
        .map_err(|e| ScheduleError(format!("failed to parse int from {s}: {e}")))?;
    if n < 0 {
        return Err(ScheduleError(format!(
            "negative number ({n}) not allowed: {s}"
        )));
    }
    u32::try_from(n).map_err(|e| ScheduleError(format!("failed to parse int from {s}: {e}")))
}

/// One field: comma-separated ranges.
fn field(expr: &str, lo: u32, hi: u32, names: &[&str], base: u32) -> Result<u64, ScheduleError> {
    expr.split(',').try_fold(
        0u64,
        |acc, part| Ok(acc | range(part, lo, hi, names, base)?),
    )
}

/// `*`, `?`, `n`, `a-b`, each optionally `/step` (`n/step` means `n-max/step`).
fn range(expr: &str, lo: u32, hi: u32, names: &[&str], base: u32) -> Result<u64, ScheduleError> {
    let (range_part, step_part) = match expr.split('/').collect::<Vec<_>>()[..] {
        [r] => (r, None),
        [r, s] => (r, Some(s)),
        _ => return Err(ScheduleError(format!("too many slashes: {expr}"))),
    };
    let bounds: Vec<&str> = range_part.split('-').collect();
    let mut extra = 0;
    let (start, mut end) = if bounds[0] == "*" || bounds[0] == "?" {
        extra = STAR;
        (lo, hi)
    } else {
        let start = int_or_name(bounds[0], names, base)?;
        match bounds[..] {
            [_] => (start, start),
            [_, e] => (start, int_or_name(e, names, base)?),
            _ => return Err(ScheduleError(format!("too many hyphens: {expr}"))),
        }
    };
    let step = match step_part {
        None => 1,
        Some(s) => {
            let step = int(s)?;
            if bounds.len() == 1 {
                end = hi;
            }
            if step > 1 {
                extra = 0;
            }
            step
        }
    };
    if start < lo {
        return Err(ScheduleError(format!(
            "beginning of range ({start}) below minimum ({lo}): {expr}"
        )));
    }
    if end > hi {
        return Err(ScheduleError(format!(
            "end of range ({end}) above maximum ({hi}): {expr}"
        )));
    }
    if start > end {
        return Err(ScheduleError(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        )));
    }
    if step == 0 {
        return Err(ScheduleError(format!(
            "step of range should be a positive number: {expr}"
        )));
    }
    Ok(bits(start, end, step) | extra)
}

fn has(set: u64, v: i8) -> bool {
    u32::try_from(v).is_ok_and(|v| v < 63 && set & (1u64 << v) != 0)
}

fn day_matches(f: &Fields, t: &Zoned) -> bool {
    let dom = has(f.dom, t.day());
    let dow = has(f.dow, t.weekday().to_sunday_zero_offset());
    if f.dom & STAR != 0 || f.dow & STAR != 0 {
        dom && dow
    } else {
        dom || dow
    }
}

fn midnight(d: Date, tz: &TimeZone) -> Option<Zoned> {
    d.to_zoned(tz.clone()).ok()
}

fn next_fields(f: &Fields, tz: &TimeZone, after: Timestamp) -> Option<Timestamp> {
    // Start at the next whole second.
    let sub = SignedDuration::from_nanos(i64::from(after.subsec_nanosecond()));
    let start = after.checked_add(SignedDuration::from_secs(1) - sub).ok()?;
    let mut t = start.to_zoned(tz.clone());
    let year_limit = t.year() + 5;
    let mut added = false;
    let hour = SignedDuration::from_hours(1);
    let minute = SignedDuration::from_mins(1);
    let second = SignedDuration::from_secs(1);
    'wrap: loop {
        if t.year() > year_limit {
            return None;
        }
        while !has(f.month, t.month()) {
            // From the first of this month (at midnight) to the first of the next.
            let first = t.date().first_of_month();
            added = true;
            t = midnight(first.checked_add(1.month()).ok()?, tz)?;
            if t.month() == 1 {
                continue 'wrap;
            }
        }
        while !day_matches(f, &t) {
            if !added {
                added = true;
                t = midnight(t.date(), tz)?;
            }
            t = midnight(t.date().checked_add(1.day()).ok()?, tz)?;
            if t.day() == 1 {
                continue 'wrap;
            }
        }
        while !has(f.hour, t.hour()) {
            if !added {
                added = true;
                let into_hour = i64::from(t.minute()) * 60 + i64::from(t.second());
                t = t.checked_sub(SignedDuration::from_secs(into_hour)).ok()?;
            }
            t = t.checked_add(hour).ok()?;
            if t.hour() == 0 {
                continue 'wrap;
            }
        }
        while !has(f.minute, t.minute()) {
            if !added {
                added = true;
                t = t
                    .checked_sub(SignedDuration::from_secs(i64::from(t.second())))
                    .ok()?;
            }
            t = t.checked_add(minute).ok()?;
            if t.minute() == 0 {
                continue 'wrap;
            }
        }
        // Standard schedules fire at second 0.
        while t.second() != 0 {
            added = true;
            t = t.checked_add(second).ok()?;
            if t.second() == 0 {
                continue 'wrap;
            }
        }
        return Some(t.timestamp());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn next_activation() {
        // (schedule, after, expected next), UTC unless the schedule names a zone.
        let cases = [
            ("* * * * *", "2025-01-01T12:00:00Z", "2025-01-01T12:01:00Z"),
            (
                "* * * * *",
                "2025-01-01T12:00:30.5Z",
                "2025-01-01T12:01:00Z",
            ),
            (
                "*/15 * * * *",
                "2025-01-01T12:07:00Z",
                "2025-01-01T12:15:00Z",
            ),
            (
                "5/20 * * * *",
                "2025-01-01T12:46:00Z",
                "2025-01-01T13:05:00Z",
            ),
            (
                "0 9-17/4 * * *",
                "2025-01-01T13:00:00Z",
                "2025-01-01T17:00:00Z",
            ),
            (
                "0,30 * * * *",
                "2025-01-01T12:10:00Z",
                "2025-01-01T12:30:00Z",
            ),
            (
                "0 0 * * MON",
                "2025-01-01T00:00:00Z",
                "2025-01-06T00:00:00Z",
            ),
            (
                "0 0 * * mon-fri",
                "2025-01-03T01:00:00Z",
                "2025-01-06T00:00:00Z",
            ),
            (
                "0 0 1 JAN *",
                "2025-01-01T00:00:00Z",
                "2026-01-01T00:00:00Z",
            ),
            ("0 0 29 2 *", "2025-01-01T00:00:00Z", "2028-02-29T00:00:00Z"),
            ("@hourly", "2025-01-01T12:59:59Z", "2025-01-01T13:00:00Z"),
            ("@daily", "2025-01-01T12:00:00Z", "2025-01-02T00:00:00Z"),
            ("@midnight", "2025-01-31T23:59:00Z", "2025-02-01T00:00:00Z"),
            ("@weekly", "2025-01-01T00:00:00Z", "2025-01-05T00:00:00Z"),
            ("@monthly", "2025-12-15T00:00:00Z", "2026-01-01T00:00:00Z"),
            ("@yearly", "2025-06-01T00:00:00Z", "2026-01-01T00:00:00Z"),
            ("@annually", "2025-06-01T00:00:00Z", "2026-01-01T00:00:00Z"),
            (
                "@every 90s",
                "2025-01-01T12:00:00.7Z",
                "2025-01-01T12:01:30Z",
            ),
            (
                "@every 1h30m",
                "2025-01-01T12:00:00Z",
                "2025-01-01T13:30:00Z",
            ),
            // Both day fields restricted: either matches (the 15th, or a Monday).
            ("0 0 15 * 1", "2025-01-01T00:00:00Z", "2025-01-06T00:00:00Z"),
            ("0 0 15 * 1", "2025-01-13T00:00:00Z", "2025-01-15T00:00:00Z"),
            // One restricted, one star: both must match.
            ("0 0 15 * *", "2025-01-01T00:00:00Z", "2025-01-15T00:00:00Z"),
            ("0 0 ? * 3", "2025-01-01T00:00:00Z", "2025-01-08T00:00:00Z"),
            // Time zones.
            (
                "CRON_TZ=Asia/Tokyo 0 9 * * *",
                "2025-01-01T00:00:00Z",
                "2025-01-02T00:00:00Z",
            ),
            (
                "TZ=America/New_York 0 0 * * *",
                "2025-01-01T00:00:00Z",
                "2025-01-01T05:00:00Z",
            ),
            // DST spring forward (New York, 2025-03-09 02:00 -> 03:00): 02:30 does not
            // exist that day, so it is skipped.
            (
                "CRON_TZ=America/New_York 30 2 * * *",
                "2025-03-08T08:00:00Z",
                "2025-03-10T06:30:00Z",
            ),
            (
                "CRON_TZ=America/New_York 0 * * * *",
                "2025-03-09T06:30:00Z",
                "2025-03-09T07:00:00Z",
            ),
            // DST fall back (2025-11-02 02:00 -> 01:00): 01:30 happens twice.
            (
                "CRON_TZ=America/New_York 30 1 * * *",
                "2025-11-02T04:00:00Z",
                "2025-11-02T05:30:00Z",
            ),
            (
                "CRON_TZ=America/New_York 30 1 * * *",
                "2025-11-02T05:30:00Z",
                "2025-11-02T06:30:00Z",
            ),
            (
                "CRON_TZ=America/New_York 30 1 * * *",
                "2025-11-02T06:30:00Z",
                "2025-11-03T06:30:00Z",
            ),
            // Europe/Berlin spring forward 2025-03-30 02:00 -> 03:00.
            (
                "CRON_TZ=Europe/Berlin 0 3 * * *",
                "2025-03-29T03:00:00Z",
                "2025-03-30T01:00:00Z",
            ),
            ("0 0 30 2 *", "2025-01-01T00:00:00Z", ""),
        ];
        for (spec, after, want) in cases {
            let s = Schedule::parse(spec, TimeZone::UTC).unwrap_or_else(|e| panic!("{spec}: {e}"));
            let got = s.next(ts(after));
            let want = (!want.is_empty()).then(|| ts(want));
            assert_eq!(got, want, "{spec} after {after}");
        }
    }

    #[test]
    fn default_time_zone_applies_without_prefix() {
        let tz = TimeZone::get("Asia/Kolkata").unwrap();
        let s = Schedule::parse("0 0 * * *", tz).unwrap();
        assert_eq!(
            s.next(ts("2025-01-01T00:00:00Z")),
            Some(ts("2025-01-01T18:30:00Z"))
        );
    }

    #[test]
    fn parse_errors() {
        let cases = [
            ("", "empty spec string"),
            ("* * * *", "expected exactly 5 fields, found 4: [* * * *]"),
            ("60 * * * *", "end of range (60) above maximum (59): 60"),
            ("* * 0 * *", "beginning of range (0) below minimum (1): 0"),
            (
                "5-1 * * * *",
                "beginning of range (5) beyond end of range (1): 5-1",
            ),
            (
                "*/0 * * * *",
                "step of range should be a positive number: */0",
            ),
            ("1-2-3 * * * *", "too many hyphens: 1-2-3"),
            ("*/2/3 * * * *", "too many slashes: */2/3"),
            ("* * * FOO *", "failed to parse int from FOO"),
            ("* * * * 7", "end of range (7) above maximum (6): 7"),
            ("@fortnightly", "unrecognized descriptor: @fortnightly"),
            ("@every x", "failed to parse duration @every x"),
            (
                "CRON_TZ=Mars/Olympus * * * * *",
                "provided bad location Mars/Olympus",
            ),
        ];
        for (spec, want) in cases {
            let err = Schedule::parse(spec, TimeZone::UTC)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{spec:?}: {err:?} lacks {want:?}");
        }
        assert!(Schedule::parse("0 0 * jan-MAR SUN,sat", TimeZone::UTC).is_ok());
    }

    #[test]
    fn go_durations() {
        for (s, ns) in [
            ("0", 0u128),
            ("1s", 1_000_000_000),
            ("1.5m", 90_000_000_000),
            ("1h2m3s", 3_723_000_000_000),
            ("250ms", 250_000_000),
        ] {
            assert_eq!(parse_go_duration(s), Ok(ns), "{s}");
        }
        for bad in ["", "5", "1d", "-1s", "s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }
}
