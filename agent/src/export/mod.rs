//! Exporters: gmon-compatible stdout log lines, the Prometheus endpoint
//! and OTLP. Each is a `model::Sink`; the pipeline feeds them all. `view`
//! is what /goroutines serves (and `top` reads).

pub mod logfmt;
pub mod otlp;
pub mod prometheus;
pub mod view;
