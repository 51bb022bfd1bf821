//! The agent's own spans as OTLP traces (`--otlp-traces`, or
//! OTEL_TRACES_EXPORTER=otlp), through tracing-opentelemetry: analyse,
//! load, attach, attach walk, drain, housekeeping, k8s sync and relist,
//! and each metrics export, with the resource attributes the metrics
//! carry. Sampled by OTEL_TRACES_SAMPLER/_ARG; by default every rare span
//! and 1% of the frequent ones (a drain every 50 ms, a housekeeping every
//! second), whole traces kept together.

use super::{
    CompressionOf, Error, HttpCompressionOf, OtlpSettings, Protocol, Tls, grpc_metadata,
    grpc_runtime, grpc_tls, http_client, http_protocol, resource,
    settings::{SampleKind, SamplerSpec},
};
use opentelemetry::{
    Context, KeyValue,
    trace::{Link, SamplingResult, SpanKind, TraceId},
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{Sampler, SdkTracerProvider, ShouldSample, SpanData},
};
use std::time::Duration;

/// Spans made many times a second: sampled at the default ratio.
const FREQUENT: [&str; 2] = ["drain", "housekeeping"];

/// The default sampler's root decision: frequent spans by trace id ratio,
/// the rest always.
#[derive(Clone, Debug)]
struct ByName {
    frequent: Sampler,
}

impl ShouldSample for ByName {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let s = match FREQUENT.contains(&name) {
            true => &self.frequent,
            false => &Sampler::AlwaysOn,
        };
        s.should_sample(parent, trace_id, name, kind, attributes, links)
    }
}

/// The SDK sampler for a spec. The default one is always parent-based.
pub fn sampler(spec: SamplerSpec) -> Sampler {
    let root = match spec.kind {
        SampleKind::AlwaysOn => Sampler::AlwaysOn,
        SampleKind::AlwaysOff => Sampler::AlwaysOff,
        SampleKind::Ratio(r) => Sampler::TraceIdRatioBased(r),
        SampleKind::Frequent(r) => {
            return Sampler::ParentBased(Box::new(ByName {
                frequent: Sampler::TraceIdRatioBased(r),
            }));
        }
    };
    match spec.parent_based {
        true => Sampler::ParentBased(Box::new(root)),
        false => root,
    }
}

/// The tracer provider, if traces are configured. Shut it down at exit.
pub fn tracer_provider(settings: &OtlpSettings) -> Result<Option<SdkTracerProvider>, Error> {
    let Some(sig) = &settings.traces else {
        return Ok(None);
    };
    let endpoint = &sig.endpoint;
    let fail = |e: &dyn std::fmt::Display| Error::Exporter(endpoint.clone(), e.to_string());
    let tls = Tls::load(settings)?;
    let b = SdkTracerProvider::builder()
        .with_resource(resource(settings))
        .with_sampler(sampler(settings.sampler));
    let b = match sig.protocol {
        Protocol::Grpc => {
            let _guard = grpc_runtime()?.enter();
            let e = opentelemetry_otlp::SpanExporter::builder()
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
            let e = opentelemetry_otlp::SpanExporter::builder()
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

/// Runs a span exporter's exports on the gRPC runtime (the SDK's batch
/// thread has none).
#[derive(Debug)]
struct OnRuntime<E>(E);

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for OnRuntime<E>
{
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        match grpc_runtime() {
            Ok(rt) => rt.block_on(self.0.export(batch)),
            Err(e) => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                e.to_string(),
            )),
        }
    }
    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        let _guard = grpc_runtime().ok().map(|rt| rt.enter());
        self.0.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}
