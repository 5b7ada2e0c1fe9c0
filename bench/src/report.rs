//! The result: `raw`, `mesh`, `ratios` and `meta`, as a table on stdout and as JSON.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

/// Every figure of one run; a figure is absent when its phase did not run.
#[derive(Debug, Default)]
pub struct Report {
    /// `raw.*`: the floor.
    pub raw: Map<String, Value>,
    /// `mesh.*`: the real backend and agents.
    pub mesh: Map<String, Value>,
    /// `meta`: machine, N, date, command line.
    pub meta: Value,
    /// `cluster.*`: `bench --replicas K` (empty otherwise, and then absent from the JSON).
    pub cluster: Map<String, Value>,
}

fn get(m: &Map<String, Value>, k: &str) -> Option<f64> {
    m.get(k).and_then(Value::as_f64)
}

impl Report {
    /// Records `raw.<key>`.
    pub fn raw(&mut self, key: &str, v: f64) {
        self.raw.insert(key.to_owned(), json!(v));
    }

    /// Records `mesh.<key>`.
    pub fn mesh(&mut self, key: &str, v: f64) {
        self.mesh.insert(key.to_owned(), json!(v));
    }

    /// Records `cluster.<key>`.
    pub fn cluster(&mut self, key: &str, v: f64) {
        self.cluster.insert(key.to_owned(), json!(v));
    }

    /// The ratios whose inputs were measured (section 8 of the issue).
    pub fn ratios(&self, agents: usize) -> Map<String, Value> {
        let (r, m) = (&self.raw, &self.mesh);
        let n = agents as f64;
        let hs = get(r, "handshakes_per_sec");
        let floor = || Some(get(r, "e2e_p50_us")? + 2.0 * get(r, "fsync_p50_us")?);
        let all = [
            (
                "connect_vs_raw",
                get(m, "connect_per_sec").zip(hs).map(|(a, b)| a / b),
            ),
            (
                "idle_vs_raw",
                get(m, "idle_bytes_per_agent")
                    .zip(get(r, "idle_bytes_per_conn"))
                    .map(|(a, b)| a / b),
            ),
            (
                "rtt_vs_floor",
                get(m, "rtt_p50_us").zip(floor()).map(|(a, b)| a / b),
            ),
            (
                "throughput_vs_raw",
                get(m, "commands_per_sec")
                    .zip(get(r, "e2e_commands_per_sec"))
                    .map(|(a, b)| a / b),
            ),
            (
                "fanout_vs_throughput",
                get(m, "fanout_ms")
                    .zip(get(m, "commands_per_sec"))
                    .map(|(f, c)| f / (1000.0 * n / c)),
            ),
            (
                "reconnect_vs_raw",
                get(m, "reconnect_all_ms")
                    .zip(hs)
                    .map(|(a, h)| a / (1000.0 * n / h)),
            ),
        ];
        all.into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), json!(v.filter(|v| v.is_finite())?))))
            .collect()
    }

    /// The whole report as JSON.
    pub fn to_json(&self, agents: usize) -> Value {
        let mut v = json!({
            "meta": self.meta,
            "raw": self.raw,
            "mesh": self.mesh,
            "ratios": self.ratios(agents),
        });
        if !self.cluster.is_empty() {
            v["cluster"] = Value::Object(self.cluster.clone());
        }
        v
    }

    /// Writes the JSON to `path`.
    pub fn write(&self, path: &Path, agents: usize) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json(agents))?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// A readable table of every figure, in the issue's order, ratios with their targets.
    pub fn table(&self, agents: usize) -> String {
        let meta = &self.meta;
        let mut out = format!(
            "agentmesh bench: {} agents, {} cores, kernel {}, {} build, {}\n",
            agents,
            meta["machine"]["cores"],
            meta["machine"]["kernel"].as_str().unwrap_or("?"),
            meta["build"].as_str().unwrap_or("?"),
            meta["date"].as_str().unwrap_or("?"),
        );
        out.push_str(&format!(
            "{:<7} {:<26} {:>12}  {}\n",
            "section", "figure", "value", "target"
        ));
        let ratios = self.ratios(agents);
        for (section, map) in [
            ("raw", &self.raw),
            ("mesh", &self.mesh),
            ("ratios", &ratios),
            ("cluster", &self.cluster),
        ] {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by_key(|k| ORDER.iter().position(|(o, _)| o == k).unwrap_or(usize::MAX));
            for k in keys {
                let v = map[k].as_f64().unwrap_or(f64::NAN);
                let shown = if v.abs() >= 100.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.3}")
                };
                let target = ORDER.iter().find(|(o, _)| o == k).map_or("", |(_, t)| *t);
                out.push_str(&format!("{section:<7} {k:<26} {shown:>12}  {target}\n"));
            }
        }
        out
    }
}

/// Display order, and the issue's target where there is one.
const ORDER: &[(&str, &str)] = &[
    ("handshakes_per_sec", ""),
    ("idle_bytes_per_conn", ""),
    ("echo_p50_us", ""),
    ("echo_p99_us", ""),
    ("pipelined_msgs_per_sec", ""),
    ("fsync_p50_us", ""),
    ("e2e_p50_us", ""),
    ("e2e_commands_per_sec", ""),
    ("connect_per_sec", ""),
    ("idle_bytes_per_agent", ""),
    ("gateway_idle_rss_kib", "<= 8192"),
    ("rtt_p50_us", ""),
    ("rtt_p99_us", ""),
    ("rtt_loaded_idle_p99_us", "<= 2 x p99 at 100 agents"),
    ("commands_per_sec", ""),
    ("rtt_loaded_p99_us", ""),
    ("fanout_ms", ""),
    ("backend_restart_ms", ""),
    ("reconnect_all_ms", ""),
    ("reconnect_p99_ms", ""),
    ("reconnect_max_over_mean", "<= 3"),
    ("connect_vs_raw", ">= 0.9"),
    ("idle_vs_raw", "<= 1.2"),
    ("rtt_vs_floor", "<= 1.5"),
    ("throughput_vs_raw", ">= 0.25"),
    ("fanout_vs_throughput", "<= 1.5"),
    ("reconnect_vs_raw", "<= 1.5"),
    ("replicas", ""),
    ("agents_per_replica_max", ""),
    ("cpu_us_per_connect", ""),
    ("pg_write_xacts_per_connect", ""),
    ("same_replica_rtt_p50_us", ""),
    ("cross_replica_rtt_p50_us", ""),
    ("cpu_us_per_command", ""),
    ("pg_write_xacts_per_command", ""),
    ("pg_wal_bytes_per_command", ""),
    ("failover_agents", ""),
    ("failover_ms", ""),
    ("failover_listed_ms", ""),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_follow_the_issue_and_skip_what_was_not_measured() {
        let mut r = Report::default();
        r.raw("handshakes_per_sec", 4000.0);
        r.raw("e2e_p50_us", 400.0);
        r.raw("fsync_p50_us", 50.0);
        r.raw("e2e_commands_per_sec", 30000.0);
        r.mesh("connect_per_sec", 3600.0);
        r.mesh("rtt_p50_us", 750.0);
        r.mesh("commands_per_sec", 7500.0);
        r.mesh("fanout_ms", 400.0);
        r.mesh("reconnect_all_ms", 1000.0);
        let ratios = r.ratios(2000);
        let get = |k: &str| ratios[k].as_f64().unwrap();
        assert!((get("connect_vs_raw") - 0.9).abs() < 1e-9);
        assert!((get("rtt_vs_floor") - 1.5).abs() < 1e-9);
        assert!((get("throughput_vs_raw") - 0.25).abs() < 1e-9);
        // 2000 commands at 7500/s take 266.7 ms.
        assert!((get("fanout_vs_throughput") - 1.5).abs() < 1e-9);
        // 2000 handshakes at 4000/s take 500 ms.
        assert!((get("reconnect_vs_raw") - 2.0).abs() < 1e-9);
        assert!(
            !ratios.contains_key("idle_vs_raw"),
            "no idle figures: no ratio"
        );
        let table = r.table(2000);
        assert!(table.contains("connect_vs_raw"), "{table}");
        assert!(table.contains(">= 0.9"), "{table}");
    }
}
