//! Where and how OTLP export goes, resolved from the command line, the
//! config file's `otlp:` section and the standard OTEL_* variables, in that
//! order of precedence. Export is off unless one of them names an endpoint.
//!
//! Over 400 lines on purpose: every OTLP setting's three sources and their
//! precedence are resolved here, one function per setting, so that the
//! table of honoured OTEL_* variables in the README has one place to check.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: bad duration {1:?} (use e.g. 500ms, 10s, 2m; a bare number is milliseconds)")]
    Duration(&'static str, String),
    #[error("{0}: unknown OTLP protocol {1:?} (use grpc, http/protobuf or http/json)")]
    Protocol(&'static str, String),
    #[error("{0}: expected KEY=VALUE, got {1:?}")]
    KeyValue(&'static str, String),
    #[error("{0}: unknown compression {1:?} (use gzip or none)")]
    Compression(&'static str, String),
    #[error("{0}: unknown temporality preference {1:?} (use cumulative, delta or lowmemory)")]
    Temporality(&'static str, String),
    #[error(
        "--otlp-{0}: no endpoint for {0} (set --otlp-endpoint, OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_{1}_ENDPOINT)"
    )]
    SignalEndpoint(&'static str, &'static str),
    #[error(
        "OTEL_TRACES_SAMPLER: unknown sampler {0:?} (use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio)"
    )]
    Sampler(String),
    #[error("OTEL_TRACES_SAMPLER_ARG: {0:?} is not a ratio between 0 and 1")]
    SamplerArg(String),
}

/// The wire protocol, as OTEL_EXPORTER_OTLP_PROTOCOL names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub enum Protocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => Ok(Protocol::HttpJson),
            _ => Err(format!(
                "unknown OTLP protocol {s:?} (use grpc, http/protobuf or http/json)"
            )),
        }
    }
}

/// How `go.goroutine.lifetime` is aggregated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HistogramKind {
    /// Fixed buckets from 1 ms to 24 h.
    #[default]
    Explicit,
    /// Base-2 exponential buckets (160 of them, scale adapting to the data).
    Exponential,
}

/// Payload compression, as OTEL_EXPORTER_OTLP_COMPRESSION names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

impl std::str::FromStr for Compression {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "gzip" => Ok(Compression::Gzip),
            "none" => Ok(Compression::None),
            _ => Err(()),
        }
    }
}

/// OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: cumulative keeps
/// every series until exit (totals survive a collector outage); delta
/// sends only what changed in each interval, so the counters and
/// histograms of exited processes stop being sent (the live up-down
/// counter stays cumulative, as the specification has it); lowmemory is
/// delta for counters and histograms only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TemporalityPreference {
    #[default]
    Cumulative,
    Delta,
    Lowmemory,
}

impl std::str::FromStr for TemporalityPreference {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "cumulative" => Ok(Self::Cumulative),
            "delta" => Ok(Self::Delta),
            "lowmemory" => Ok(Self::Lowmemory),
            _ => Err(()),
        }
    }
}

/// The config file's `otlp:` section.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpFile {
    pub endpoint: Option<String>,
    pub protocol: Option<Protocol>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub certificate: Option<PathBuf>,
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, String>,
    pub max_sites: Option<usize>,
    pub max_series: Option<usize>,
    pub histogram: Option<HistogramKind>,
    pub stack_attribute: Option<bool>,
    pub logs: Option<bool>,
    pub compression: Option<Compression>,
    pub temporality: Option<TemporalityPreference>,
    pub traces: Option<bool>,
}

/// The command line's `--otlp-*` flags.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct OtlpFlags {
    /// Push metrics over OTLP to this URL (e.g. http://collector:4318, or :4317 with --otlp-protocol grpc); OTEL_EXPORTER_OTLP_ENDPOINT works too
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// OTLP protocol: grpc, http/protobuf (default) or http/json; OTEL_EXPORTER_OTLP_PROTOCOL works too
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<Protocol>,

    /// Header sent with every export, e.g. authorization=Bearer%20x (repeatable); OTEL_EXPORTER_OTLP_HEADERS works too
    #[arg(long, value_name = "KEY=VALUE")]
    pub otlp_header: Vec<String>,

    /// Export interval (default 60s); OTEL_METRIC_EXPORT_INTERVAL works too
    #[arg(long, value_name = "DURATION")]
    pub otlp_interval: Option<String>,

    /// Export timeout (default 10s); OTEL_EXPORTER_OTLP_TIMEOUT works too
    #[arg(long, value_name = "DURATION")]
    pub otlp_timeout: Option<String>,

    /// PEM file of the CA that signed an https endpoint's certificate (added to the system roots); OTEL_EXPORTER_OTLP_CERTIFICATE works too
    #[arg(long, value_name = "FILE")]
    pub otlp_certificate: Option<PathBuf>,

    /// PEM client certificate for mutual TLS; OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE works too
    #[arg(long, value_name = "FILE")]
    pub otlp_client_certificate: Option<PathBuf>,

    /// PEM private key of the client certificate; OTEL_EXPORTER_OTLP_CLIENT_KEY works too
    #[arg(long, value_name = "FILE")]
    pub otlp_client_key: Option<PathBuf>,

    /// Resource attribute added to every export (repeatable); OTEL_RESOURCE_ATTRIBUTES works too
    #[arg(long, value_name = "KEY=VALUE")]
    pub otlp_resource_attribute: Vec<String>,

    /// Distinct creation sites exported per process; the rest go into one `other` site (counted)
    #[arg(long, value_name = "N")]
    pub otlp_max_sites: Option<usize>,

    /// Series kept per instrument (the SDK keeps each until exit; more go into one overflow series, counted)
    #[arg(long, value_name = "N")]
    pub otlp_max_series: Option<usize>,

    /// Aggregation of go.goroutine.lifetime: explicit (buckets 1ms..24h) or exponential
    #[arg(long, value_enum, value_name = "KIND")]
    pub otlp_histogram: Option<HistogramKind>,

    /// Add the full creation stack as the go.goroutine.stack attribute (one series per distinct stack: high cardinality)
    #[arg(long)]
    pub otlp_stack_attribute: bool,

    /// Also send the agent's own diagnostics (INFO and up) as OTLP logs, to the same collector
    #[arg(long)]
    pub otlp_logs: bool,

    /// Also send the agent's own spans (analyse, load, attach, attach walk, drain, housekeeping, k8s sync, export) as OTLP traces; OTEL_TRACES_EXPORTER=otlp works too
    #[arg(long)]
    pub otlp_traces: bool,

    /// Compress exports: gzip or none (default); OTEL_EXPORTER_OTLP_COMPRESSION works too
    #[arg(long, value_enum, value_name = "ALGORITHM")]
    pub otlp_compression: Option<Compression>,

    /// Metrics temporality: cumulative (default), delta (exited processes' counters stop being sent) or lowmemory; OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE works too
    #[arg(long, value_enum, value_name = "PREFERENCE")]
    pub otlp_temporality: Option<TemporalityPreference>,
}

/// Resolved settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// Where metrics go: the full URL for HTTP, the server for gRPC.
    pub endpoint: String,
    pub protocol: Protocol,
    pub headers: Vec<(String, String)>,
    pub interval: Duration,
    pub timeout: Duration,
    pub certificate: Option<PathBuf>,
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub resource_attributes: Vec<(String, String)>,
    pub max_sites: usize,
    pub max_series: usize,
    pub histogram: HistogramKind,
    pub stack_attribute: bool,
    pub compression: Compression,
    pub temporality: TemporalityPreference,
    /// The agent's own logs, if they are exported.
    pub logs: Option<Signal>,
    /// The agent's own spans, if they are exported, and how they are sampled.
    pub traces: Option<Signal>,
    pub sampler: SamplerSpec,
}

/// Where and how one of the agent's own signals (logs, traces) goes: each
/// may have its own endpoint, protocol and compression.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub endpoint: String,
    pub protocol: Protocol,
    pub compression: Compression,
}

/// OTEL_TRACES_SAMPLER and _ARG, or gmon-agent's default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerSpec {
    /// Follow the parent span's decision (every span the agent makes is a
    /// root or a child of its own, so this keeps whole traces together).
    pub parent_based: bool,
    pub kind: SampleKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SampleKind {
    AlwaysOn,
    AlwaysOff,
    /// This fraction of traces, by trace id.
    Ratio(f64),
    /// The default: every trace except the frequent ones (a drain every
    /// 50 ms, a housekeeping every second), of which this fraction.
    Frequent(f64),
}

/// The default sampler: all the rare spans, 1% of the per-drain ones.
pub const DEFAULT_SAMPLER: SamplerSpec = SamplerSpec {
    parent_based: true,
    kind: SampleKind::Frequent(0.01),
};

impl SamplerSpec {
    /// From OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG.
    pub fn parse(name: Option<&str>, arg: Option<&str>) -> Result<Self, Error> {
        let Some(name) = name else {
            return Ok(DEFAULT_SAMPLER);
        };
        let ratio = || -> Result<f64, Error> {
            match arg {
                None => Ok(1.0),
                Some(a) => a
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| Error::SamplerArg(a.to_owned())),
            }
        };
        let (parent_based, kind) = match name.trim() {
            "always_on" => (false, SampleKind::AlwaysOn),
            "always_off" => (false, SampleKind::AlwaysOff),
            "traceidratio" => (false, SampleKind::Ratio(ratio()?)),
            "parentbased_always_on" => (true, SampleKind::AlwaysOn),
            "parentbased_always_off" => (true, SampleKind::AlwaysOff),
            "parentbased_traceidratio" => (true, SampleKind::Ratio(ratio()?)),
            other => return Err(Error::Sampler(other.to_owned())),
        };
        Ok(SamplerSpec { parent_based, kind })
    }
}

/// Default distinct creation sites per process.
pub const DEFAULT_MAX_SITES: usize = 500;
/// Default series per instrument: the SDK's own default.
pub const DEFAULT_MAX_SERIES: usize = 2000;

impl OtlpSettings {
    /// `None` when no endpoint is configured anywhere (export off).
    pub fn resolve(
        flags: &OtlpFlags,
        file: &OtlpFile,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, Error> {
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        // The specification's switch for the whole SDK: no export at all,
        // whatever else is configured.
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        // The metrics-specific variable wins over the generic one.
        let signal = |k: &str| {
            env(&format!("OTEL_EXPORTER_OTLP_METRICS_{k}"))
                .or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{k}")))
        };

        let protocol = match (flags.otlp_protocol, file.protocol) {
            (Some(p), _) | (None, Some(p)) => p,
            _ => match signal("PROTOCOL") {
                Some(p) => p
                    .parse()
                    .map_err(|_| Error::Protocol("OTEL_EXPORTER_OTLP_PROTOCOL", p))?,
                None => Protocol::HttpProtobuf,
            },
        };
        // A base URL gets the signal path on HTTP; a metrics-specific URL
        // is used as it is (the OTLP exporter specification's rule).
        let base = flags
            .otlp_endpoint
            .clone()
            .or_else(|| file.endpoint.clone());
        let endpoint = match (&base, env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")) {
            (Some(b), _) => with_signal_path(b, protocol, "metrics"),
            (None, Some(full)) => full,
            (None, None) => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(b) => with_signal_path(&b, protocol, "metrics"),
                None => return Ok(None),
            },
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut set = |k: String, v: String| {
            headers.retain(|(h, _)| !h.eq_ignore_ascii_case(&k));
            headers.push((k, v));
        };
        if let Some(h) = signal("HEADERS") {
            for kv in h.split(',').filter(|s| !s.trim().is_empty()) {
                let (k, v) = key_value("OTEL_EXPORTER_OTLP_HEADERS", kv)?;
                set(k, percent_decode(&v));
            }
        }
        for (k, v) in &file.headers {
            set(k.clone(), v.clone());
        }
        for kv in &flags.otlp_header {
            let (k, v) = key_value("--otlp-header", kv)?;
            set(k, percent_decode(&v));
        }

        let interval = match (&flags.otlp_interval, &file.interval) {
            (Some(d), _) => duration("--otlp-interval", d)?,
            (None, Some(d)) => duration("otlp.interval", d)?,
            _ => match env("OTEL_METRIC_EXPORT_INTERVAL") {
                Some(d) => duration("OTEL_METRIC_EXPORT_INTERVAL", &d)?,
                None => Duration::from_secs(60),
            },
        };
        let timeout = match (&flags.otlp_timeout, &file.timeout) {
            (Some(d), _) => duration("--otlp-timeout", d)?,
            (None, Some(d)) => duration("otlp.timeout", d)?,
            _ => match (signal("TIMEOUT"), env("OTEL_METRIC_EXPORT_TIMEOUT")) {
                (Some(d), _) => duration("OTEL_EXPORTER_OTLP_TIMEOUT", &d)?,
                // The reader's bound on one export: here, the exporter's.
                (None, Some(d)) => duration("OTEL_METRIC_EXPORT_TIMEOUT", &d)?,
                (None, None) => Duration::from_secs(10),
            },
        };
        // A signal's own variable, then the generic one (the metrics'
        // are OTEL_EXPORTER_OTLP_METRICS_*).
        let compression = |name: &'static str| -> Result<Compression, Error> {
            if let Some(c) = flags.otlp_compression.or(file.compression) {
                return Ok(c);
            }
            let specific = format!("OTEL_EXPORTER_OTLP_{name}_COMPRESSION");
            match (env(&specific), env("OTEL_EXPORTER_OTLP_COMPRESSION")) {
                (Some(v), _) => v
                    .parse()
                    .map_err(|_| Error::Compression(var_name(name, "COMPRESSION"), v)),
                (None, Some(v)) => v
                    .parse()
                    .map_err(|_| Error::Compression("OTEL_EXPORTER_OTLP_COMPRESSION", v)),
                (None, None) => Ok(Compression::None),
            }
        };
        // The agent's own logs and traces: each with its endpoint (the
        // base one with the signal's path, or the signal's own URL as
        // given), protocol and compression.
        let side_signal = |flag: &'static str, name: &'static str, on: bool| {
            if !on {
                return Ok(None);
            }
            let protocol = match (flags.otlp_protocol, file.protocol) {
                (Some(p), _) | (None, Some(p)) => p,
                _ => match env(&format!("OTEL_EXPORTER_OTLP_{name}_PROTOCOL"))
                    .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
                {
                    Some(p) => p
                        .parse()
                        .map_err(|_| Error::Protocol(var_name(name, "PROTOCOL"), p))?,
                    None => Protocol::HttpProtobuf,
                },
            };
            let path = flag;
            let endpoint = match (&base, env(&format!("OTEL_EXPORTER_OTLP_{name}_ENDPOINT"))) {
                (Some(b), _) => with_signal_path(b, protocol, path),
                (None, Some(full)) => full,
                (None, None) => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                    Some(b) => with_signal_path(&b, protocol, path),
                    None => return Err(Error::SignalEndpoint(flag, name)),
                },
            };
            Ok(Some(Signal {
                endpoint,
                protocol,
                compression: compression(name)?,
            }))
        };
        let logs = side_signal(
            "logs",
            "LOGS",
            flags.otlp_logs || file.logs.unwrap_or(false),
        )?;
        let traces_on = flags.otlp_traces
            || file.traces.unwrap_or(false)
            || env("OTEL_TRACES_EXPORTER")
                .is_some_and(|e| e.split(',').any(|x| x.trim() == "otlp"));
        let traces = side_signal("traces", "TRACES", traces_on)?;
        let sampler = SamplerSpec::parse(
            env("OTEL_TRACES_SAMPLER").as_deref(),
            env("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        )?;
        let temporality = match flags.otlp_temporality.or(file.temporality) {
            Some(t) => t,
            None => match env("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE") {
                Some(v) => v.parse().map_err(|_| {
                    Error::Temporality("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", v)
                })?,
                None => TemporalityPreference::Cumulative,
            },
        };
        let path = |flag: &Option<PathBuf>, file: &Option<PathBuf>, var: &str| {
            flag.clone()
                .or_else(|| file.clone())
                .or_else(|| signal(var).map(PathBuf::from))
        };
        let mut resource_attributes: Vec<(String, String)> = file
            .resource_attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for kv in &flags.otlp_resource_attribute {
            resource_attributes.push(key_value("--otlp-resource-attribute", kv)?);
        }
        Ok(Some(OtlpSettings {
            endpoint,
            protocol,
            headers,
            interval,
            timeout,
            certificate: path(&flags.otlp_certificate, &file.certificate, "CERTIFICATE"),
            client_certificate: path(
                &flags.otlp_client_certificate,
                &file.client_certificate,
                "CLIENT_CERTIFICATE",
            ),
            client_key: path(&flags.otlp_client_key, &file.client_key, "CLIENT_KEY"),
            resource_attributes,
            max_sites: flags
                .otlp_max_sites
                .or(file.max_sites)
                .unwrap_or(DEFAULT_MAX_SITES),
            max_series: flags
                .otlp_max_series
                .or(file.max_series)
                .unwrap_or(DEFAULT_MAX_SERIES),
            histogram: flags.otlp_histogram.or(file.histogram).unwrap_or_default(),
            stack_attribute: flags.otlp_stack_attribute || file.stack_attribute.unwrap_or(false),
            compression: compression("METRICS")?,
            temporality,
            logs,
            traces,
            sampler,
        }))
    }
}

/// "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL" and the like, as a static name.
fn var_name(signal: &'static str, what: &'static str) -> &'static str {
    match (signal, what) {
        ("LOGS", "PROTOCOL") => "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
        ("TRACES", "PROTOCOL") => "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ("LOGS", _) => "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION",
        ("TRACES", _) => "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        _ => "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
    }
}

fn with_signal_path(base: &str, protocol: Protocol, signal: &str) -> String {
    match protocol {
        Protocol::Grpc => base.to_owned(),
        _ => format!("{}/v1/{signal}", base.trim_end_matches('/')),
    }
}

fn key_value(what: &'static str, s: &str) -> Result<(String, String), Error> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(Error::KeyValue(what, s.to_owned())),
    }
}

/// OTEL_EXPORTER_OTLP_HEADERS values are percent-encoded (W3C baggage).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// "500ms", "10s", "2m", "1h", or a bare number of milliseconds (the
/// OTEL_* variables' unit).
pub fn duration(what: &'static str, s: &str) -> Result<Duration, Error> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let bad = || Error::Duration(what, s.to_owned());
    let n: u64 = n.parse().map_err(|_| bad())?;
    let d = match unit {
        "" | "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(bad());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(flags: &OtlpFlags, file: &OtlpFile, env: &[(&str, &str)]) -> Option<OtlpSettings> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        OtlpSettings::resolve(flags, file, |k| env.get(k).cloned()).unwrap()
    }

    #[test]
    fn off_without_an_endpoint() {
        assert!(resolve(&OtlpFlags::default(), &OtlpFile::default(), &[]).is_none());
        let empty = [("OTEL_EXPORTER_OTLP_ENDPOINT", "")];
        assert!(resolve(&OtlpFlags::default(), &OtlpFile::default(), &empty).is_none());
    }

    #[test]
    fn endpoint_rules_follow_the_specification() {
        let none = (OtlpFlags::default(), OtlpFile::default());
        let s = resolve(
            &none.0,
            &none.1,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")],
        )
        .unwrap();
        assert_eq!(s.endpoint, "http://c:4318/v1/metrics");
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        let s = resolve(
            &none.0,
            &none.1,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
        )
        .unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.protocol),
            ("http://c:4317", Protocol::Grpc)
        );
        let s = resolve(
            &none.0,
            &none.1,
            &[
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m/custom"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ],
        )
        .unwrap();
        assert_eq!(s.endpoint, "http://m/custom");
        // The command line beats the file, which beats the environment.
        let flags = OtlpFlags {
            otlp_endpoint: Some("http://flag:4318".into()),
            ..Default::default()
        };
        let file = OtlpFile {
            endpoint: Some("http://file:4318".into()),
            protocol: Some(Protocol::HttpJson),
            ..Default::default()
        };
        let s = resolve(
            &flags,
            &file,
            &[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://env")],
        )
        .unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.protocol),
            ("http://flag:4318/v1/metrics", Protocol::HttpJson)
        );
    }

    #[test]
    fn headers_interval_and_limits_merge() {
        let flags = OtlpFlags {
            otlp_endpoint: Some("http://c".into()),
            otlp_header: vec!["X-B=flag".into()],
            otlp_interval: Some("2s".into()),
            otlp_max_sites: Some(7),
            ..Default::default()
        };
        let mut file = OtlpFile::default();
        file.headers.insert("x-c".into(), "file".into());
        let s = resolve(
            &flags,
            &file,
            &[
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-a=1,x-b=env%20value"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
            ],
        )
        .unwrap();
        assert_eq!(
            s.headers,
            [
                ("x-a".into(), "1".into()),
                ("x-c".into(), "file".into()),
                ("X-B".into(), "flag".into())
            ]
        );
        assert_eq!(s.interval, Duration::from_secs(2));
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert_eq!(s.max_sites, 7);
        let s = resolve(
            &OtlpFlags {
                otlp_endpoint: Some("http://c".into()),
                ..Default::default()
            },
            &OtlpFile::default(),
            &[
                ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "k=a%2Cb"),
            ],
        )
        .unwrap();
        assert_eq!(s.interval, Duration::from_secs(5));
        assert_eq!(s.headers, [("k".into(), "a,b".into())]);
    }

    #[test]
    fn logs_go_to_the_logs_path() {
        let flags = OtlpFlags {
            otlp_endpoint: Some("http://c:4318".into()),
            otlp_logs: true,
            ..Default::default()
        };
        let s = resolve(&flags, &OtlpFile::default(), &[]).unwrap();
        assert_eq!(
            s.logs.as_ref().map(|l| l.endpoint.as_str()),
            Some("http://c:4318/v1/logs")
        );
        let off = OtlpFlags {
            otlp_logs: false,
            ..flags.clone()
        };
        assert_eq!(resolve(&off, &OtlpFile::default(), &[]).unwrap().logs, None);
        // Only a metrics URL: logs have nowhere to go.
        let only_metrics = OtlpFlags {
            otlp_logs: true,
            ..Default::default()
        };
        let env: HashMap<String, String> = [(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT".to_string(),
            "http://m".to_string(),
        )]
        .into();
        let e = OtlpSettings::resolve(&only_metrics, &OtlpFile::default(), |k| env.get(k).cloned());
        assert!(e.unwrap_err().to_string().contains("--otlp-logs"));
    }

    #[test]
    fn bad_values_name_their_source() {
        let flags = OtlpFlags {
            otlp_endpoint: Some("http://c".into()),
            ..Default::default()
        };
        let err = |env: &[(&str, &str)], flags: &OtlpFlags| {
            let env: HashMap<String, String> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            OtlpSettings::resolve(flags, &OtlpFile::default(), |k| env.get(k).cloned())
                .unwrap_err()
                .to_string()
        };
        assert!(
            err(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "udp")], &flags)
                .contains("OTEL_EXPORTER_OTLP_PROTOCOL")
        );
        assert!(
            err(&[("OTEL_METRIC_EXPORT_INTERVAL", "soon")], &flags)
                .contains("OTEL_METRIC_EXPORT_INTERVAL")
        );
        let bad = OtlpFlags {
            otlp_header: vec!["novalue".into()],
            ..flags.clone()
        };
        assert!(err(&[], &bad).contains("--otlp-header"));
        assert!(duration("x", "0s").is_err());
        assert_eq!(duration("x", "3m").unwrap(), Duration::from_secs(180));
    }

    #[test]
    fn sdk_disabled_turns_every_export_off() {
        let flags = OtlpFlags {
            otlp_endpoint: Some("http://c:4318".into()),
            otlp_logs: true,
            ..Default::default()
        };
        let file = OtlpFile::default();
        assert!(resolve(&flags, &file, &[("OTEL_SDK_DISABLED", "true")]).is_none());
        assert!(resolve(&flags, &file, &[("OTEL_SDK_DISABLED", " TRUE ")]).is_none());
        // Anything but true leaves it on (the specification's rule).
        assert!(resolve(&flags, &file, &[("OTEL_SDK_DISABLED", "false")]).is_some());
        assert!(resolve(&flags, &file, &[("OTEL_SDK_DISABLED", "1")]).is_some());
    }

    #[test]
    fn tls_files_come_from_the_flags_or_the_variables() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/env/ca.pem"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
                "/env/metrics-client.pem",
            ),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/env/client.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/env/client.key"),
        ];
        let s = resolve(&OtlpFlags::default(), &OtlpFile::default(), &env).unwrap();
        assert_eq!(s.certificate, Some(PathBuf::from("/env/ca.pem")));
        // The metrics' own variable wins over the generic one.
        assert_eq!(
            s.client_certificate,
            Some(PathBuf::from("/env/metrics-client.pem"))
        );
        assert_eq!(s.client_key, Some(PathBuf::from("/env/client.key")));
        let flags = OtlpFlags {
            otlp_certificate: Some(PathBuf::from("/flag/ca.pem")),
            ..Default::default()
        };
        let s = resolve(&flags, &OtlpFile::default(), &env).unwrap();
        assert_eq!(s.certificate, Some(PathBuf::from("/flag/ca.pem")));
    }

    #[test]
    fn compression_temporality_timeout_and_logs_protocol_per_signal() {
        let file = OtlpFile::default();
        let flags = OtlpFlags {
            otlp_logs: true,
            ..Default::default()
        };
        let s = resolve(
            &flags,
            &file,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "none"),
                ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta"),
                ("OTEL_METRIC_EXPORT_TIMEOUT", "2500"),
            ],
        )
        .unwrap();
        assert_eq!(
            (s.protocol, s.logs.as_ref().unwrap().protocol),
            (Protocol::Grpc, Protocol::HttpProtobuf)
        );
        assert_eq!(s.endpoint, "http://c:4317");
        // Logs over HTTP get the signal path.
        assert_eq!(
            s.logs.as_ref().map(|l| l.endpoint.as_str()),
            Some("http://c:4317/v1/logs")
        );
        assert_eq!(
            (s.compression, s.logs.as_ref().unwrap().compression),
            (Compression::Gzip, Compression::None)
        );
        assert_eq!(s.temporality, TemporalityPreference::Delta);
        assert_eq!(s.timeout, Duration::from_millis(2500));
        // The exporter's own timeout wins over the reader's.
        let s = resolve(
            &flags,
            &file,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "700"),
                ("OTEL_METRIC_EXPORT_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ],
        )
        .unwrap();
        assert_eq!(s.timeout, Duration::from_millis(700));
        assert_eq!(
            (s.compression, s.logs.as_ref().unwrap().compression),
            (Compression::None, Compression::Gzip)
        );
        assert_eq!(s.temporality, TemporalityPreference::Cumulative);
        // Flags win over the variables.
        let f = OtlpFlags {
            otlp_endpoint: Some("http://c:4318".into()),
            otlp_compression: Some(Compression::None),
            otlp_temporality: Some(TemporalityPreference::Lowmemory),
            ..Default::default()
        };
        let s = resolve(
            &f,
            &file,
            &[
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta"),
            ],
        )
        .unwrap();
        assert_eq!(s.compression, Compression::None);
        assert_eq!(s.temporality, TemporalityPreference::Lowmemory);
        // Bad values say where they came from.
        let g = OtlpFlags {
            otlp_compression: None,
            otlp_temporality: None,
            ..f.clone()
        };
        let err_g = |env: &[(&str, &str)]| {
            let env: HashMap<String, String> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            OtlpSettings::resolve(&g, &file, |k| env.get(k).cloned())
                .unwrap_err()
                .to_string()
        };
        assert!(
            err_g(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")])
                .contains("OTEL_EXPORTER_OTLP_COMPRESSION: unknown compression")
        );
        assert!(
            err_g(&[(
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                "sometimes"
            )])
            .contains("use cumulative, delta or lowmemory")
        );
        assert!(
            err_g(&[("OTEL_METRIC_EXPORT_TIMEOUT", "later")])
                .contains("OTEL_METRIC_EXPORT_TIMEOUT")
        );
    }
}
