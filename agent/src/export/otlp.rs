//! OTLP metrics export (HTTP/protobuf), configured the standard way:
//! OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT (export
//! is off unless one is set), OTEL_EXPORTER_OTLP_HEADERS,
//! OTEL_METRIC_EXPORT_INTERVAL, OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME.
//!
//! Instruments, per creation site (the `go` statement's function and the
//! goroutine's start function, from gopc/startpc: bounded, unlike stacks):
//! `go.goroutine.created` and `go.goroutine.exited` (counters,
//! {goroutine}), `go.goroutine.lifetime` (histogram, s, recorded once per
//! goroutine at its exit, buckets from 1 ms to 24 h) and `go.goroutine.live`
//! (up-down counter, {goroutine}). Temporality is cumulative, so totals stay
//! exact across a collector outage.

use crate::model::{Goroutine, Sink};
use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram, Meter, MeterProvider as _, UpDownCounter},
};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{
        PeriodicReader, SdkMeterProvider, Temporality, data::ResourceMetrics,
        exporter::PushMetricExporter,
    },
};
use rustc_hash::FxHashMap;
use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set up OTLP export: {0}")]
    Exporter(String),
}

/// Lifetime buckets: milliseconds to a day, so leaks land in a bucket.
const LIFETIME_BUCKETS: [f64; 16] = [
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    21600.0, 86400.0,
];

/// Export outcomes, for the agent's self-metrics.
#[derive(Default)]
pub struct ExportStats {
    pub exports: AtomicU64,
    pub failures: AtomicU64,
    /// When a failure was last logged (seconds since the Unix epoch).
    last_logged: AtomicU64,
}

/// At most one export failure is logged per this many seconds; all are
/// counted.
const LOG_EVERY_SECS: u64 = 60;

/// Wraps the OTLP exporter to count failures (the SDK only logs them).
struct Counted<E> {
    inner: E,
    stats: Arc<ExportStats>,
}

impl<E: PushMetricExporter> PushMetricExporter for Counted<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let r = self.inner.export(metrics).await;
        self.stats.exports.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &r {
            let failures = self.stats.failures.fetch_add(1, Ordering::Relaxed) + 1;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let last = self.stats.last_logged.load(Ordering::Relaxed);
            if now >= last + LOG_EVERY_SECS
                && self
                    .stats
                    .last_logged
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(failures, "OTLP export failed (retried next interval): {e}");
            }
        }
        r
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// Whether the environment asks for OTLP export.
pub fn configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

/// The metrics URL for an `--otlp-endpoint` base URL, as the SDK derives
/// it from OTEL_EXPORTER_OTLP_ENDPOINT.
pub fn metrics_url(base: &str) -> String {
    format!("{}/v1/metrics", base.trim_end_matches('/'))
}

/// The meter provider; shut it down at exit to flush the last interval.
pub struct Otlp {
    provider: SdkMeterProvider,
    pub stats: Arc<ExportStats>,
}

impl Otlp {
    /// The exporter if `--otlp-endpoint` or the environment asks for one.
    pub fn if_configured(endpoint: Option<&str>) -> Result<Option<Self>, Error> {
        if endpoint.is_some() || configured() {
            Self::new(endpoint).map(Some)
        } else {
            Ok(None)
        }
    }

    /// `endpoint`: a base URL from the command line; otherwise the
    /// standard environment variables apply.
    pub fn new(endpoint: Option<&str>) -> Result<Self, Error> {
        use opentelemetry_otlp::WithExportConfig;
        let mut b = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_temporality(Temporality::Cumulative);
        if let Some(e) = endpoint {
            b = b.with_endpoint(metrics_url(e));
        }
        let exporter = b.build().map_err(|e| Error::Exporter(e.to_string()))?;
        let stats = Arc::new(ExportStats::default());
        let exporter = Counted {
            inner: exporter,
            stats: stats.clone(),
        };
        let reader = PeriodicReader::builder(exporter).build();
        let resource = Resource::builder()
            .with_service_name(
                std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "gmon-agent".into()),
            )
            .build();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource)
            .build();
        Ok(Otlp { provider, stats })
    }

    pub fn meter(&self) -> Meter {
        self.provider.meter("gmon-agent")
    }

    /// Exports what is pending and stops.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("OTLP export at shutdown failed: {e}");
        }
    }
}

/// Feeds the OTLP instruments; attributes are built once per site.
pub struct OtlpSink {
    created: Counter<u64>,
    exited: Counter<u64>,
    lifetime: Histogram<f64>,
    live: UpDownCounter<i64>,
    sites: FxHashMap<u64, Arc<[KeyValue]>>,
    /// Distinct (creator, start) pairs per process, for the guard.
    per_process: FxHashMap<u32, HashSet<(String, String)>>,
    max_sites: usize,
    /// Sites folded into `other` by the guard.
    pub overflowed: u64,
    version: String,
    /// Standalone mode's executable (node mode has it per process).
    exe: Option<String>,
}

impl OtlpSink {
    /// `max_sites`: distinct creation sites kept per process; more go into
    /// one `other` site. `go_version` labels process.runtime.version.
    pub fn new(meter: &Meter, max_sites: usize, go_version: &str, exe: Option<String>) -> Self {
        OtlpSink {
            created: meter
                .u64_counter("go.goroutine.created")
                .with_unit("{goroutine}")
                .with_description("Goroutines created")
                .build(),
            exited: meter
                .u64_counter("go.goroutine.exited")
                .with_unit("{goroutine}")
                .with_description("Goroutines that exited")
                .build(),
            lifetime: meter
                .f64_histogram("go.goroutine.lifetime")
                .with_unit("s")
                .with_description("Lifetime of goroutines, recorded once each at exit")
                .with_boundaries(LIFETIME_BUCKETS.to_vec())
                .build(),
            live: meter
                .i64_up_down_counter("go.goroutine.live")
                .with_unit("{goroutine}")
                .with_description("Goroutines alive (created since the agent attached)")
                .build(),
            sites: FxHashMap::default(),
            per_process: FxHashMap::default(),
            max_sites,
            overflowed: 0,
            version: go_version.to_owned(),
            exe,
        }
    }

    fn attrs(&mut self, g: &Goroutine) -> Arc<[KeyValue]> {
        if let Some(a) = self.sites.get(&g.site.id) {
            return a.clone();
        }
        let name = |f: &Option<crate::gobin::Frame>| {
            f.as_ref()
                .map(|f| f.function.clone())
                .unwrap_or_else(|| "unknown".into())
        };
        let (mut creator, mut start) = (name(&g.site.creator), name(&g.site.start));
        let seen = self.per_process.entry(g.pid).or_default();
        let key = (creator.clone(), start.clone());
        if !seen.contains(&key) {
            if seen.len() >= self.max_sites {
                self.overflowed += 1;
                (creator, start) = ("other".into(), "other".into());
            } else {
                seen.insert(key);
            }
        }
        let mut a = vec![
            KeyValue::new("go.goroutine.creator", creator),
            KeyValue::new("go.goroutine.start", start),
            KeyValue::new("process.pid", g.pid as i64),
            KeyValue::new("process.runtime.name", "go"),
            KeyValue::new(
                "process.runtime.version",
                g.site
                    .proc
                    .as_deref()
                    .map(|p| p.runtime_version.clone())
                    .unwrap_or_else(|| self.version.clone()),
            ),
        ];
        if let Some(exe) = &self.exe {
            a.push(KeyValue::new("process.executable.path", exe.clone()));
        }
        if let Some(p) = g.site.proc.as_deref() {
            a.push(KeyValue::new("process.executable.path", p.binary.clone()));
            if let Some(c) = &p.container_id {
                a.push(KeyValue::new("container.id", c.clone()));
            }
            if let Some(u) = &p.pod_uid {
                a.push(KeyValue::new("k8s.pod.uid", u.clone()));
            }
        }
        let a: Arc<[KeyValue]> = a.into();
        self.sites.insert(g.site.id, a.clone());
        a
    }
}

impl Sink for OtlpSink {
    fn created(&mut self, g: &Goroutine) {
        let a = self.attrs(g);
        self.created.add(1, &a);
        self.live.add(1, &a);
    }

    fn exited(&mut self, g: &Goroutine, exited_ns: u64) {
        let a = self.attrs(g);
        self.exited.add(1, &a);
        self.live.add(-1, &a);
        self.lifetime
            .record(exited_ns.saturating_sub(g.created_ns) as f64 / 1e9, &a);
    }

    fn site_gone(&mut self, site_id: u64) {
        self.sites.remove(&site_id);
    }
}
