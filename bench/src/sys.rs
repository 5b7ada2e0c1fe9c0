//! The machine: file-descriptor limits, resident memory from /proc, quantiles, `meta`.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use serde_json::{json, Value};

/// Raises the soft fd limit to the hard one; returns (soft before, soft now, hard).
pub fn raise_fd_limit() -> Result<(u64, u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(NOFILE)")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(NOFILE)")?;
    }
    let (now, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(NOFILE)")?;
    Ok((soft, now, hard))
}

/// Resident set size of process `pid` in KiB (None once it is gone).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The `q` quantile (0..=1) of `samples` (sorted here); 0 for none.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i.min(samples.len() - 1)]
}

/// Wall-clock milliseconds since the epoch (comparable across processes on one machine).
pub fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim().to_owned();
    (out.status.success() && !line.is_empty()).then_some(line)
}

/// The `meta` object: machine, fleet size, date, command line, git revision.
pub fn meta(agents: usize, duration_secs: f64, fd_limit: u64) -> Value {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let command_line: Vec<String> = std::env::args().collect();
    json!({
        "machine": {"cores": cores, "cpu": cpu, "kernel": kernel, "fd_limit": fd_limit},
        "agents": agents,
        "duration_secs": duration_secs,
        "date": date,
        "command_line": command_line.join(" "),
        "git_rev": first_line("git", &["rev-parse", "--short", "HEAD"]),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// Prints a progress line to stderr, stamped with the seconds since the first one.
pub fn progress(message: &str) {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    eprintln!("[{:7.2}s] {message}", start.elapsed().as_secs_f64());
}
