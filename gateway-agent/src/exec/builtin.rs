//! The built-in verbs, answered without starting a process. Their stdout is one JSON object.
//!
//! - `ping`: `{"agent_id", "agent_time" (RFC 3339), "version"}`.
//! - `sysinfo`: `{hostname, os, kernel, arch, uptime_secs, load: [1, 5, 15],
//!   memory: {total_kib, available_kib}, disk: {path, total_bytes, free_bytes}}`, read from
//!   `/proc`, `/etc/os-release`, `uname(2)` and `statvfs(3)` of the state directory. A value
//!   that cannot be read is `null` rather than failing the whole answer. `free_bytes` is the
//!   space available to unprivileged users (`df`'s "Avail").

use std::path::Path;

use serde_json::{json, Value};

/// `ping`'s stdout.
pub fn ping(agent_id: &str) -> String {
    json!({
        "agent_id": agent_id,
        "agent_time": crate::exec::outcome::now_rfc3339(),
        "version": env!("CARGO_PKG_VERSION"),
    })
    .to_string()
}

/// `sysinfo`'s stdout; `state_dir` is the disk reported.
pub fn sysinfo(state_dir: &Path) -> String {
    let uts = nix::sys::utsname::uname().ok();
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let os = read("/etc/os-release")
        .or_else(|| read("/usr/lib/os-release"))
        .and_then(|t| pretty_name(&t));
    let (total_kib, available_kib) = read("/proc/meminfo")
        .map(|t| meminfo(&t))
        .unwrap_or((None, None));
    let disk = nix::sys::statvfs::statvfs(state_dir).ok();
    json!({
        "hostname": hostname::get().ok().map(|h| h.to_string_lossy().into_owned()),
        "os": os,
        "kernel": uts.as_ref().map(|u| u.release().to_string_lossy().into_owned()),
        "arch": uts
            .as_ref()
            .map(|u| u.machine().to_string_lossy().into_owned())
            .unwrap_or_else(|| std::env::consts::ARCH.to_owned()),
        "uptime_secs": read("/proc/uptime").and_then(|t| uptime_secs(&t)),
        "load": read("/proc/loadavg").and_then(|t| loadavg(&t)).map_or(Value::Null, |l| json!(l)),
        "memory": {"total_kib": total_kib, "available_kib": available_kib},
        "disk": {
            "path": state_dir.display().to_string(),
            "total_bytes": disk.as_ref().map(|d| bytes(d.blocks(), d.fragment_size())),
            "free_bytes": disk.as_ref().map(|d| bytes(d.blocks_available(), d.fragment_size())),
        },
    })
    .to_string()
}

/// `blocks × size`; the statvfs field types differ between targets, hence the generics.
fn bytes(blocks: impl Into<u64>, size: impl Into<u64>) -> u64 {
    blocks.into().saturating_mul(size.into())
}

/// `PRETTY_NAME` from an os-release file.
fn pretty_name(text: &str) -> Option<String> {
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("PRETTY_NAME="))?
        .trim();
    let unquoted = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value);
    let name = unquoted
        .replace("\\\"", "\"")
        .replace("\\$", "$")
        .replace("\\`", "`")
        .replace("\\\\", "\\");
    (!name.is_empty()).then_some(name)
}

/// Whole seconds from `/proc/uptime`.
fn uptime_secs(text: &str) -> Option<u64> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some(secs as u64)
}

/// The 1, 5 and 15 minute load averages from `/proc/loadavg`.
fn loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// `MemTotal` and `MemAvailable` (KiB) from `/proc/meminfo`.
fn meminfo(text: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    };
    (field("MemTotal"), field("MemAvailable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        assert_eq!(uptime_secs("12345.67 99999.00\n"), Some(12345));
        assert_eq!(uptime_secs("garbage"), None);
        assert_eq!(
            loadavg("0.52 0.58 0.59 2/1187 12345\n"),
            Some([0.52, 0.58, 0.59])
        );
        assert_eq!(loadavg("0.5"), None);
        let mem = "MemTotal:       16303208 kB\nMemFree:  1 kB\nMemAvailable:   9876543 kB\n";
        assert_eq!(meminfo(mem), (Some(16_303_208), Some(9_876_543)));
        assert_eq!(meminfo(""), (None, None));
    }

    #[test]
    fn os_release_pretty_name() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            pretty_name(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(pretty_name("PRETTY_NAME=Alpine").as_deref(), Some("Alpine"));
        assert_eq!(
            pretty_name("PRETTY_NAME='A \\\"b\\\"'").as_deref(),
            Some("A \"b\"")
        );
        assert_eq!(pretty_name("NAME=x"), None);
    }

    #[test]
    fn sysinfo_is_json_with_the_contract_fields() {
        let dir = tempfile::tempdir().unwrap();
        let v: Value = serde_json::from_str(&sysinfo(dir.path())).unwrap();
        for key in ["hostname", "kernel", "arch"] {
            assert!(v[key].is_string(), "{key}: {v}");
        }
        assert!(v["uptime_secs"].is_u64(), "{v}");
        assert_eq!(v["load"].as_array().map(Vec::len), Some(3), "{v}");
        assert!(v["memory"]["total_kib"].is_u64(), "{v}");
        assert!(v["disk"]["total_bytes"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(v["disk"]["path"], dir.path().display().to_string());
    }

    #[test]
    fn ping_has_the_version() {
        let v: Value = serde_json::from_str(&ping("edge-01")).unwrap();
        assert_eq!(v["agent_id"], "edge-01");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert!(v["agent_time"].as_str().unwrap().ends_with('Z'), "{v}");
    }
}
