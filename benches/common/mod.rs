//! Helpers the `make bench` programs share (`mod common;`, or `#[path]` where a bench
//! already names the test harness `common`): percentiles of latencies, a free local port,
//! and a process's resident memory and CPU time read from `/proc`.
//!
//! Depends on: std only.

// Each bench uses only some of these.
#![allow(dead_code)]

use std::time::Duration;

/// The `q` quantile (0.0..=1.0) of `v`, by nearest rank; sorts `v`. Zero when empty.
pub fn pct(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// Resident memory of process `pid` in KiB (`VmRSS`); 0 if unknown.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resident memory of process `pid` in MiB; 0 if unknown.
pub fn rss_mib(pid: u32) -> f64 {
    rss_kib(pid) as f64 / 1024.0
}

/// User + system CPU time of process `pid` in clock ticks (1/100 s); 0 if unknown.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// User + system CPU time of process `pid` in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    cpu_ticks(pid) as f64 / 100.0
}
