//! gmon-agent: an eBPF goroutine monitor for Go programs.
//!
//! The data path, one module per stage:
//! process found (`process`) -> binary analysed (`gobin`) -> probes attached
//! (`probes`) -> events and aggregates (`model`) -> exporters (`export`).

pub mod cli;
pub mod config;
pub mod export;
pub mod gobin;
pub mod model;
pub mod node;
pub mod probes;
pub mod process;
pub mod run;
pub mod selfprof;
pub mod telemetry;
