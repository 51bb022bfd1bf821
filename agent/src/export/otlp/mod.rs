//! OTLP metrics export over gRPC or HTTP (protobuf or JSON), configured the
//! standard way (see `settings`): export is off unless an endpoint is set.
//!
//! Instruments, per creation site (the `go` statement's function and the
//! goroutine's start function, from gopc/startpc: bounded, unlike stacks):
//! `go.goroutine.created` and `go.goroutine.exited` (counters,
//! {goroutine}), `go.goroutine.lifetime` (histogram, s, recorded once per
//! goroutine at its exit; explicit buckets from 1 ms to 24 h, or base-2
//! exponential) and `go.goroutine.live` (up-down counter, {goroutine}).
//! Temporality is cumulative, so totals stay exact across a collector
//! outage.

pub mod settings;
mod sink;

pub use settings::{HistogramKind, OtlpSettings, Protocol};
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
        let r = match &self.rt {
            Some(rt) => rt.block_on(self.inner.export(metrics)),
            None => self.inner.export(metrics).await,
        };
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
        Temporality::Cumulative
    }
}

/// The meter provider; shut it down at exit to flush the last interval.
pub struct Otlp {
    provider: SdkMeterProvider,
    pub stats: Arc<ExportStats>,
    pub settings: OtlpSettings,
    /// gRPC only: the runtime tonic runs on; dropped after the provider.
    _rt: Option<tokio::runtime::Runtime>,
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
        let (reader, rt) = match settings.protocol {
            Protocol::Grpc => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("otlp-grpc")
                    .enable_all()
                    .build()
                    .map_err(Error::Runtime)?;
                let exporter = {
                    let _guard = rt.enter();
                    grpc_exporter(&settings, &tls).map_err(|e| fail(&e))?
                };
                let counted = Counted {
                    inner: exporter,
                    stats: stats.clone(),
                    rt: Some(rt.handle().clone()),
                };
                let reader = PeriodicReader::builder(counted)
                    .with_interval(settings.interval)
                    .build();
                (reader, Some(rt))
            }
            Protocol::HttpProtobuf | Protocol::HttpJson => {
                let exporter = http_exporter(&settings, &tls).map_err(|e| fail(&e))?;
                let counted = Counted {
                    inner: exporter,
                    stats: stats.clone(),
                    rt: None,
                };
                let reader = PeriodicReader::builder(counted)
                    .with_interval(settings.interval)
                    .build();
                (reader, None)
            }
        };
        let mut resource = Resource::builder();
        // service.name: OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES if
        // they set it (the SDK reads both), else gmon-agent.
        let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
            || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| {
                a.split(',')
                    .any(|kv| kv.trim().starts_with("service.name="))
            });
        if !named {
            resource = resource.with_service_name("gmon-agent");
        }
        let resource = resource
            .with_attributes(
                settings
                    .resource_attributes
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .build();
        let mut provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource);
        if settings.histogram == HistogramKind::Exponential {
            provider = provider.with_view(|i: &Instrument| {
                (i.name() == "go.goroutine.lifetime").then(|| {
                    Stream::builder()
                        .with_aggregation(Aggregation::Base2ExponentialHistogram {
                            max_size: 160,
                            max_scale: 20,
                            record_min_max: true,
                        })
                        .build()
                        .ok()
                })?
            });
        }
        Ok(Otlp {
            provider: provider.build(),
            stats,
            settings,
            _rt: rt,
        })
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

fn grpc_exporter(
    s: &OtlpSettings,
    tls: &Tls,
) -> Result<opentelemetry_otlp::MetricExporter, Box<dyn std::error::Error>> {
    use opentelemetry_otlp::tonic_types::{
        metadata::MetadataMap,
        transport::{Certificate, ClientTlsConfig, Identity},
    };
    let mut metadata = MetadataMap::new();
    for (k, v) in &s.headers {
        let key: tonic::metadata::MetadataKey<tonic::metadata::Ascii> =
            k.to_ascii_lowercase().parse()?;
        metadata.insert(key, v.parse()?);
    }
    let mut b = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(&s.endpoint)
        .with_timeout(s.timeout)
        .with_metadata(metadata)
        .with_temporality(Temporality::Cumulative);
    if s.endpoint.starts_with("https://") {
        let mut t = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &tls.ca {
            t = t.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(cert, key));
        }
        b = b.with_tls_config(t);
    }
    Ok(b.build()?)
}

fn http_exporter(
    s: &OtlpSettings,
    tls: &Tls,
) -> Result<opentelemetry_otlp::MetricExporter, Box<dyn std::error::Error>> {
    // The blocking client must be built off any async runtime.
    let (timeout, ca, identity) = (s.timeout, tls.ca.clone(), tls.identity.clone());
    let client = std::thread::spawn(move || -> reqwest::Result<reqwest::blocking::Client> {
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
    .map_err(|_| "HTTP client setup panicked")??;
    let protocol = match s.protocol {
        Protocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
        _ => opentelemetry_otlp::Protocol::HttpBinary,
    };
    Ok(opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(&s.endpoint)
        .with_timeout(s.timeout)
        .with_headers(s.headers.iter().cloned().collect())
        .with_http_client(client)
        .with_temporality(Temporality::Cumulative)
        .build()?)
}
