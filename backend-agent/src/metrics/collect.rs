//! Values read at scrape time (counters kept as atomics, gauges of queues and certificates,
//! the audit's fsync histogram), encoded through a `prometheus-client` [`Collector`].

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// One metric read at scrape time.
#[derive(Debug, Clone)]
pub(super) enum Value {
    /// A counter (the encoder appends `_total`).
    Counter(u64),
    /// A gauge.
    Gauge(f64),
}

/// `(name, help, label, [(label value, value)])`.
pub(super) type LabelledFamily = (
    &'static str,
    &'static str,
    &'static str,
    Vec<(String, Value)>,
);

/// Everything a scrape reads, copied once so encoding holds no lock.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    /// `(name, help, value)` without labels.
    pub plain: Vec<(&'static str, &'static str, Value)>,
    /// Families with one label.
    pub labelled: Vec<LabelledFamily>,
    /// The audit's fsync latency histogram.
    pub fsync: Option<agentmesh_audit::FsyncSnapshot>,
}

impl Snapshot {
    /// Adds an unlabelled counter.
    pub fn counter(&mut self, name: &'static str, help: &'static str, v: u64) {
        self.plain.push((name, help, Value::Counter(v)));
    }

    /// Adds an unlabelled gauge.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, v: f64) {
        self.plain.push((name, help, Value::Gauge(v)));
    }

    /// Adds a family with one label.
    pub fn family(
        &mut self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        series: BTreeMap<String, Value>,
    ) {
        self.labelled
            .push((name, help, label, series.into_iter().collect()));
    }
}

fn encode_value(
    v: &Value,
    encoder: prometheus_client::encoding::MetricEncoder,
) -> std::fmt::Result {
    match v {
        Value::Counter(n) => ConstCounter::new(*n).encode(encoder),
        Value::Gauge(g) => ConstGauge::new(*g).encode(encoder),
    }
}

fn metric_type(v: &Value) -> MetricType {
    match v {
        Value::Counter(_) => MetricType::Counter,
        Value::Gauge(_) => MetricType::Gauge,
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for (name, help, value) in &self.plain {
            let m = encoder.encode_descriptor(name, help, None, metric_type(value))?;
            encode_value(value, m)?;
        }
        for (name, help, label, series) in &self.labelled {
            let Some((_, first)) = series.first() else {
                continue;
            };
            let mut m = encoder.encode_descriptor(name, help, None, metric_type(first))?;
            for (label_value, value) in series {
                let labels = [(*label, label_value.as_str())];
                encode_value(value, m.encode_family(&labels)?)?;
            }
        }
        if let Some(fsync) = &self.fsync {
            let mut m = encoder.encode_descriptor(
                "agentmesh_audit_fsync_duration_seconds",
                "Seconds each audit log fsync took",
                None,
                MetricType::Histogram,
            )?;
            m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                fsync.sum_secs,
                fsync.count,
                &fsync.buckets,
                None,
            )?;
        }
        Ok(())
    }
}
