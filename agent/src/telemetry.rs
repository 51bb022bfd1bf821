//! The agent's own diagnostics: tracing to stderr, so that stdout carries
//! only gmon-format goroutine lines; with `-trace FILE` a Chrome trace
//! (JSON, opens in Perfetto or chrome://tracing) of the agent's own spans;
//! with `--otlp-logs` and `--otlp-traces` its events and spans over OTLP.

use crate::export::logfmt::Level;
use std::path::Path;
use tracing_subscriber::{Layer, filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the -trace file {path}: {source}")]
    TraceFile {
        path: String,
        source: std::io::Error,
    },
}

/// Keeps the trace file open and the log export running; dropping it
/// writes the trace's closing bracket and sends the last logs.
pub struct TraceGuard {
    _chrome: Option<tracing_chrome::FlushGuard>,
    logs: Option<opentelemetry_sdk::logs::SdkLoggerProvider>,
    traces: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Some(l) = self.logs.take() {
            // Nowhere left to report a failure: stderr only.
            if let Err(e) = l.shutdown() {
                eprintln!("gmon-agent: OTLP log export at shutdown failed: {e}");
            }
        }
        if let Some(t) = self.traces.take()
            && let Err(e) = t.shutdown()
        {
            eprintln!("gmon-agent: OTLP trace export at shutdown failed: {e}");
        }
    }
}

/// `logs`: with `--otlp-logs`, the agent's own events (INFO and up) also
/// go out as OTLP log records; `traces`: with `--otlp-traces`, its spans
/// as OTLP traces (the provider's sampler decides which).
pub fn init(
    level: Level,
    trace: Option<&Path>,
    logs: Option<opentelemetry_sdk::logs::SdkLoggerProvider>,
    traces: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
) -> Result<TraceGuard, Error> {
    let filter = match level {
        Level::Debug => "warn,gmon_agent=debug",
        Level::Info => "warn,gmon_agent=info",
        Level::Warn => "warn",
        Level::Error => "error",
    };
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("GMON_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    let (chrome, guard) = match trace {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|source| Error::TraceFile {
                path: path.display().to_string(),
                source,
            })?;
            let (layer, guard) = tracing_chrome::ChromeLayerBuilder::new()
                .writer(std::io::BufWriter::new(file))
                .include_args(true)
                .build();
            // Every span and event of the agent, whatever the log level.
            let layer =
                layer.with_filter(Targets::new().with_target("gmon_agent", tracing::Level::TRACE));
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    // Only the agent's own events: the exporters' internal ones would loop.
    let otlp = logs.as_ref().map(|p| {
        opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(p)
            .with_filter(Targets::new().with_target("gmon_agent", tracing::Level::INFO))
    });
    // Every span of the agent's own, whatever the log level; the
    // exporters' internal ones would loop.
    let spans = traces.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("gmon-agent"))
            .with_filter(Targets::new().with_target("gmon_agent", tracing::Level::TRACE))
    });
    tracing_subscriber::registry()
        .with(stderr)
        .with(chrome)
        .with(otlp)
        .with(spans)
        .init();
    Ok(TraceGuard {
        _chrome: guard,
        logs,
        traces,
    })
}
