//! The agent's own diagnostics: tracing to stderr, so that stdout carries
//! only gmon-format goroutine lines.

use crate::export::logfmt::Level;

pub fn init(level: Level) {
    let filter = match level {
        Level::Debug => "warn,gmon_agent=debug",
        Level::Info => "warn,gmon_agent=info",
        Level::Warn => "warn",
        Level::Error => "error",
    };
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("GMON_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
