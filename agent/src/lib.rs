//! gmon-agent: an eBPF goroutine monitor for Go programs.
//!
//! The data path, one module per stage (see ARCHITECTURE.md):
//! process found (`discover`) -> binary analysed (`gobin`) -> probes
//! attached (`probes`) -> events and aggregates (`pipeline`, `model`) ->
//! exporters (`export`), with pod metadata (`k8s`) as its own stage.
//! `agent` wires them for both modes; `serve` owns the HTTP endpoints.

pub mod agent;
pub mod cli;
pub mod config;
pub mod discover;
pub mod export;
pub mod gobin;
pub mod k8s;
pub mod model;
pub mod pipeline;
pub mod probes;
pub mod selfprof;
pub mod serve;
pub mod telemetry;
pub mod top;
pub mod walk;
