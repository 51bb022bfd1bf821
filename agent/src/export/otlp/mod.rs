//! OTLP metrics export over gRPC or HTTP (protobuf or JSON), configured the
//! standard way (see `settings`): export is off unless an endpoint is set.
//!
//! Instruments, per creation site (the `go` statement's function and the
//! goroutine's start function, from gopc/startpc: bounded, unlike stacks):
//! `go.goroutine.created` and `go.goroutine.exited` (counters,
//! {goroutine}), `go.goroutine.lifetime` (histogram, s, recorded once per
//! goroutine at its exit; explicit buckets from 1 ms to 24 h, or base-2
//! exponential) and `go.goroutine.live` (up-down counter, {goroutine}).
//! Temporality is cumulative by default, so totals stay exact across a
//! collector outage; delta (or lowmemory) is the user's choice, and then
//! the series of exited processes stop being sent.
//!
//! Over 400 lines on purpose: the SDK's meter and logger providers, their
//! three transports and TLS are set up together, so that both signals
//! share one runtime and one set of endpoint rules.

pub mod settings;
mod sink;
pub mod traces;

pub use settings::{Compression, HistogramKind, OtlpSettings, Protocol, TemporalityPreference};
pub use sink::OtlpSink;

use opentelemetry::{KeyValue, metrics::Meter, metrics::MeterProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{
        Aggregation, Instrument, PeriodicReader, SdkMeterProvider, Stream, Temporality,
        data::ResourceMetrics, exporter::PushMetricExporter,
    },
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set up OTLP export to {0}: {1}")]
    Exporter(String, String),
    #[error("OTLP TLS: cannot read {0}: {1} (give a PEM file)")]
    Pem(String, std::io::Error),
    #[error("OTLP TLS: {0} and {1} go together: give both or neither")]
    HalfIdentity(&'static str, &'static str),
    #[error("OTLP: cannot start the gRPC runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Settings(#[from] settings::Error),
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

/// Running totals for the self-metrics, taken from the exporter and the
/// sink.
#[derive(Default, Clone, Copy)]
pub struct OtlpCounts {
    pub exports: u64,
    pub failures: u64,
    pub sites_overflowed: u64,
    pub series_overflowed: u64,
}

impl OtlpCounts {
    pub fn now(stats: &ExportStats, sink: &OtlpSink) -> Self {
        OtlpCounts {
            exports: stats.exports.load(Ordering::Relaxed),
            failures: stats.failures.load(Ordering::Relaxed),
            sites_overflowed: sink.overflowed,
            series_overflowed: sink.series_overflowed,
        }
    }
}

/// At most one export failure is logged per this many seconds; all are
/// counted.
const LOG_EVERY_SECS: u64 = 60;

/// Wraps the OTLP exporter to count failures (the SDK only logs them) and,
/// for gRPC, to run each export on the agent's small tokio runtime (the
/// SDK's reader thread has none).
struct Counted<E> {
    inner: E,
    stats: Arc<ExportStats>,
    rt: Option<tokio::runtime::Handle>,
}

impl<E: PushMetricExporter> PushMetricExporter for Counted<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        // A span per metrics export (traces), not held across an await:
        // the gRPC path blocks on its own runtime.
        let span = tracing::debug_span!("otlp_export", ok = tracing::field::Empty);
        let r = match &self.rt {
            Some(rt) => rt.block_on(self.inner.export(metrics)),
            None => self.inner.export(metrics).await,
        };
        span.record("ok", r.is_ok());
        drop(span);
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
        let _guard = self.rt.as_ref().map(|rt| rt.enter());
        self.inner.shutdown_with_timeout(timeout)
    }
    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// The meter provider; shut it down at exit to flush the last interval.
pub struct Otlp {
    provider: SdkMeterProvider,
    pub stats: Arc<ExportStats>,
    pub settings: OtlpSettings,
}

/// The small runtime tonic runs on (gRPC only; metrics and logs share it).
/// The SDK's exporter threads have none of their own.
fn grpc_runtime() -> Result<&'static tokio::runtime::Runtime, Error> {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-grpc")
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    Ok(RT.get_or_init(|| rt))
}

fn read_pem(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Pem(path.display().to_string(), e))
}

/// TLS material beyond the system roots: an extra CA, a client identity.
struct Tls {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Tls {
    fn load(s: &OtlpSettings) -> Result<Self, Error> {
        let ca = s.certificate.as_deref().map(read_pem).transpose()?;
        let identity = match (&s.client_certificate, &s.client_key) {
            (Some(c), Some(k)) => Some((read_pem(c)?, read_pem(k)?)),
            (None, None) => None,
            _ => {
                return Err(Error::HalfIdentity(
                    "--otlp-client-certificate",
                    "--otlp-client-key",
                ));
            }
        };
        Ok(Tls { ca, identity })
    }
}

impl Otlp {
    /// The exporter if the settings name an endpoint.
    pub fn if_configured(settings: Option<OtlpSettings>) -> Result<Option<Self>, Error> {
        settings.map(Self::new).transpose()
    }

    pub fn new(settings: OtlpSettings) -> Result<Self, Error> {
        let tls = Tls::load(&settings)?;
        let fail =
            |e: &dyn std::fmt::Display| Error::Exporter(settings.endpoint.clone(), e.to_string());
        let stats = Arc::new(ExportStats::default());
        // gRPC exports run on the shared runtime (tonic needs one); HTTP
        // uses a blocking client on the SDK's own thread.
        let (exporter, rt) = match settings.protocol {
            Protocol::Grpc => {
                let rt = grpc_runtime()?;
                let _guard = rt.enter();
                let e = grpc_exporter(&settings, &tls).map_err(|e| fail(&e))?;
                (e, Some(rt.handle().clone()))
            }
            Protocol::HttpProtobuf | Protocol::HttpJson => {
                (http_exporter(&settings, &tls).map_err(|e| fail(&e))?, None)
            }
        };
        let counted = Counted {
            inner: exporter,
            stats: stats.clone(),
            rt,
        };
        let reader = PeriodicReader::builder(counted)
            .with_interval(settings.interval)
            .build();
        let mut provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource(&settings));
        // Every instrument keeps up to max_series series; the lifetime
        // histogram may be exponential.
        let (limit, exponential) = (
            settings.max_series,
            settings.histogram == HistogramKind::Exponential,
        );
        provider = provider.with_view(move |i: &Instrument| {
            if !i.name().starts_with("go.goroutine.") {
                return None;
            }
            let mut b = Stream::builder().with_cardinality_limit(limit);
            // A matching view replaces the instrument's own bucket advice,
            // so the aggregation is spelled out here either way.
            if i.name() == "go.goroutine.lifetime" {
                b = b.with_aggregation(if exponential {
                    Aggregation::Base2ExponentialHistogram {
                        max_size: 160,
                        max_scale: 20,
                        record_min_max: true,
                    }
                } else {
                    Aggregation::ExplicitBucketHistogram {
                        boundaries: LIFETIME_BUCKETS.to_vec(),
                        record_min_max: true,
                    }
                });
            }
            b.build().ok()
        });
        Ok(Otlp {
            provider: provider.build(),
            stats,
            settings,
        })
    }

    /// Bounds (s) the kernel must bucket lifetimes by when it aggregates,
    /// so this exporter's histogram gets exact counts: the explicit
    /// buckets, or every power of two from 1 ms to a day and a half (the
    /// exponential histogram's buckets at scale 0).
    pub fn lifetime_bounds(&self) -> Vec<f64> {
        match self.settings.histogram {
            HistogramKind::Exponential => (-10..=17).map(|k| 2f64.powi(k)).collect(),
            _ => LIFETIME_BUCKETS.to_vec(),
        }
    }

    pub fn meter(&self) -> Meter {
        self.provider.meter("gmon-agent")
    }

    /// The sink feeding this exporter's instruments.
    pub fn sink(&self, go_version: &str, exe: Option<String>) -> OtlpSink {
        OtlpSink::new(&self.meter(), &self.settings, go_version, exe)
    }

    /// Exports what is pending and stops.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("OTLP export at shutdown failed: {e}");
        }
    }
}

/// The resource every export carries: service.name from OTEL_SERVICE_NAME
/// or OTEL_RESOURCE_ATTRIBUTES if they set it (the SDK reads both), else
/// gmon-agent; plus the configured attributes.
fn resource(settings: &OtlpSettings) -> Resource {
    let mut resource = Resource::builder();
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| {
            a.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    if !named {
        resource = resource.with_service_name("gmon-agent");
    }
    resource
        .with_attributes(
            settings
                .resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build()
}

/// Runs a log exporter's exports on the gRPC runtime.
#[derive(Debug)]
struct OnRuntime<E>(E);

impl<E: opentelemetry_sdk::logs::LogExporter> opentelemetry_sdk::logs::LogExporter
    for OnRuntime<E>
{
    async fn export(&self, batch: opentelemetry_sdk::logs::LogBatch<'_>) -> OTelSdkResult {
        match grpc_runtime() {
            Ok(rt) => rt.block_on(self.0.export(batch)),
            Err(e) => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                e.to_string(),
            )),
        }
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let _guard = grpc_runtime().ok().map(|rt| rt.enter());
        self.0.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// The agent's own diagnostics as OTLP logs (`--otlp-logs`), batched on
/// the SDK's thread; `None` unless configured. Shut it down at exit.
pub fn log_provider(
    settings: &OtlpSettings,
) -> Result<Option<opentelemetry_sdk::logs::SdkLoggerProvider>, Error> {
    let Some(sig) = &settings.logs else {
        return Ok(None);
    };
    let endpoint = &sig.endpoint;
    let fail = |e: &dyn std::fmt::Display| Error::Exporter(endpoint.clone(), e.to_string());
    let tls = Tls::load(settings)?;
    let b = opentelemetry_sdk::logs::SdkLoggerProvider::builder().with_resource(resource(settings));
    let b = match sig.protocol {
        Protocol::Grpc => {
            let _guard = grpc_runtime()?.enter();
            let e = opentelemetry_otlp::LogExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(settings.timeout)
                .with_metadata(grpc_metadata(settings).map_err(|e| fail(&e))?);
            let e = e.with_compression_of(sig.compression);
            let e = match grpc_tls(endpoint, &tls) {
                Some(t) => e.with_tls_config(t),
                None => e,
            };
            b.with_batch_exporter(OnRuntime(e.build().map_err(|e| fail(&e))?))
        }
        Protocol::HttpProtobuf | Protocol::HttpJson => {
            let e = opentelemetry_otlp::LogExporter::builder()
                .with_http()
                .with_protocol(http_protocol(sig.protocol))
                .with_endpoint(endpoint)
                .with_timeout(settings.timeout)
                .with_headers(settings.headers.iter().cloned().collect())
                .with_http_client(http_client(settings, &tls).map_err(|e| fail(&*e))?);
            let e = e
                .with_http_compression_of(sig.compression)
                .build()
                .map_err(|e| fail(&e))?;
            b.with_batch_exporter(e)
        }
    };
    Ok(Some(b.build()))
}

fn grpc_metadata(
    s: &OtlpSettings,
) -> Result<opentelemetry_otlp::tonic_types::metadata::MetadataMap, Box<dyn std::error::Error>> {
    let mut metadata = opentelemetry_otlp::tonic_types::metadata::MetadataMap::new();
    for (k, v) in &s.headers {
        let key: tonic::metadata::MetadataKey<tonic::metadata::Ascii> =
            k.to_ascii_lowercase().parse()?;
        metadata.insert(key, v.parse()?);
    }
    Ok(metadata)
}

/// TLS for an https gRPC endpoint: system roots, the extra CA, the client
/// identity.
fn grpc_tls(
    endpoint: &str,
    tls: &Tls,
) -> Option<opentelemetry_otlp::tonic_types::transport::ClientTlsConfig> {
    use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
    if !endpoint.starts_with("https://") {
        return None;
    }
    let mut t = ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = &tls.ca {
        t = t.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = &tls.identity {
        t = t.identity(Identity::from_pem(cert, key));
    }
    Some(t)
}

fn http_protocol(p: Protocol) -> opentelemetry_otlp::Protocol {
    match p {
        Protocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
        _ => opentelemetry_otlp::Protocol::HttpBinary,
    }
}

fn grpc_exporter(
    s: &OtlpSettings,
    tls: &Tls,
) -> Result<opentelemetry_otlp::MetricExporter, Box<dyn std::error::Error>> {
    let b = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(&s.endpoint)
        .with_timeout(s.timeout)
        .with_metadata(grpc_metadata(s)?)
        .with_temporality(temporality(s));
    let b = b.with_compression_of(s.compression);
    Ok(match grpc_tls(&s.endpoint, tls) {
        Some(t) => b.with_tls_config(t),
        None => b,
    }
    .build()?)
}

/// A blocking HTTP client with the configured timeout and TLS material.
fn http_client(
    s: &OtlpSettings,
    tls: &Tls,
) -> Result<reqwest::blocking::Client, Box<dyn std::error::Error>> {
    // The blocking client must be built off any async runtime.
    let (timeout, ca, identity) = (s.timeout, tls.ca.clone(), tls.identity.clone());
    Ok(
        std::thread::spawn(move || -> reqwest::Result<reqwest::blocking::Client> {
            let mut c = reqwest::blocking::Client::builder().timeout(timeout);
            if let Some(ca) = ca {
                for cert in reqwest::Certificate::from_pem_bundle(&ca)? {
                    c = c.add_root_certificate(cert);
                }
            }
            if let Some((cert, key)) = identity {
                c = c.identity(reqwest::Identity::from_pem(&[cert, key].concat())?);
            }
            c.build()
        })
        .join()
        .map_err(|_| "HTTP client setup panicked")??,
    )
}

fn http_exporter(
    s: &OtlpSettings,
    tls: &Tls,
) -> Result<opentelemetry_otlp::MetricExporter, Box<dyn std::error::Error>> {
    let b = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(http_protocol(s.protocol))
        .with_endpoint(&s.endpoint)
        .with_timeout(s.timeout)
        .with_headers(s.headers.iter().cloned().collect())
        .with_http_client(http_client(s, tls)?)
        .with_temporality(temporality(s));
    Ok(b.with_http_compression_of(s.compression).build()?)
}

/// `with_compression` when the user asked for gzip, for every exporter
/// builder (gRPC and HTTP; metrics, logs and traces).
trait CompressionOf: Sized {
    fn with_compression_of(self, c: Compression) -> Self;
}

impl<B: WithTonicConfig> CompressionOf for B {
    fn with_compression_of(self, c: Compression) -> Self {
        match c {
            Compression::Gzip => self.with_compression(opentelemetry_otlp::Compression::Gzip),
            Compression::None => self,
        }
    }
}

/// The HTTP builders' twin of `CompressionOf` (a type implements only one
/// of the two config traits).
trait HttpCompressionOf: Sized {
    fn with_http_compression_of(self, c: Compression) -> Self;
}

impl<B: WithHttpConfig> HttpCompressionOf for B {
    fn with_http_compression_of(self, c: Compression) -> Self {
        match c {
            Compression::Gzip => self.with_compression(opentelemetry_otlp::Compression::Gzip),
            Compression::None => self,
        }
    }
}

/// The SDK's temporality for the user's preference (the SDK maps it per
/// instrument kind as the specification says).
fn temporality(s: &OtlpSettings) -> Temporality {
    match s.temporality {
        TemporalityPreference::Cumulative => Temporality::Cumulative,
        TemporalityPreference::Delta => Temporality::Delta,
        TemporalityPreference::Lowmemory => Temporality::LowMemory,
    }
}
