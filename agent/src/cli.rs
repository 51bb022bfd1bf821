//! Command line. gmon's flags are accepted as they are (`-path BIN`,
//! `-metrics=5500`) as well as GNU style (`--path BIN`).

use crate::export::logfmt::Level;
use clap::Parser;
use std::{ffi::OsString, net::IpAddr, path::PathBuf};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "gmon-agent",
    version,
    about = "eBPF goroutine monitor for Go programs"
)]
pub struct Cli {
    /// Path to executable file to be monitored (required)
    #[arg(long, value_name = "BIN")]
    pub path: PathBuf,

    /// Trace only this process (default: every process running the binary)
    #[arg(long, default_value_t = 0, value_name = "PID")]
    pub pid: u32,

    /// Port for the /metrics endpoint (0 turns it off)
    #[arg(long, default_value_t = 5500, value_name = "PORT")]
    pub metrics: u16,

    /// Address the /metrics endpoint listens on
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    pub metrics_address: IpAddr,

    /// Log level: DEBUG, INFO, WARN or ERROR (exits are logged at DEBUG)
    #[arg(long, default_value = "INFO", value_name = "LEVEL")]
    pub level: Level,

    /// Frames kept per creation stack (0 disables stack collection)
    #[arg(long, default_value_t = 127, value_name = "N",
          value_parser = clap::value_parser!(u16).range(0..=127))]
    pub stack_depth: u16,
}

/// Flags that gmon (Go's flag package) also accepts with a single dash.
const LONG_FLAGS: [&str; 6] = [
    "path",
    "pid",
    "metrics",
    "level",
    "stack-depth",
    "metrics-address",
];

/// Rewrites Go-style `-flag` arguments to `--flag` so clap accepts them.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut literal = false;
    for a in args {
        let rewritten = match a.to_str() {
            Some("--") => {
                literal = true;
                None
            }
            Some(s) if !literal && s.starts_with('-') && !s.starts_with("--") => {
                let name = s[1..].split('=').next().unwrap_or("");
                LONG_FLAGS
                    .contains(&name)
                    .then(|| OsString::from(format!("-{s}")))
            }
            _ => None,
        };
        out.push(rewritten.unwrap_or(a));
    }
    out
}

impl Cli {
    pub fn parse_from_env() -> Self {
        Cli::parse_from(normalize_args(std::env::args_os()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(normalize_args(args.iter().map(OsString::from)))
    }

    #[test]
    fn accepts_gmon_single_dash_flags() {
        let c = parse(&[
            "gmon",
            "-path",
            "/bin/x",
            "-metrics=6000",
            "-level",
            "DEBUG",
            "-pid",
            "9",
        ])
        .unwrap();
        assert_eq!(c.path, PathBuf::from("/bin/x"));
        assert_eq!(c.metrics, 6000);
        assert_eq!(c.level, Level::Debug);
        assert_eq!(c.pid, 9);
    }

    #[test]
    fn defaults_match_gmon() {
        let c = parse(&["gmon-agent", "--path", "/bin/x"]).unwrap();
        assert_eq!((c.metrics, c.level, c.pid), (5500, Level::Info, 0));
    }

    #[test]
    fn rejects_missing_path_and_bad_level() {
        assert!(parse(&["gmon-agent"]).is_err());
        assert!(parse(&["gmon-agent", "--path", "x", "--level", "LOUD"]).is_err());
        assert!(parse(&["gmon-agent", "--path", "x", "--stack-depth", "500"]).is_err());
    }
}
