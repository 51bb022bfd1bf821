//! Command line. gmon's flags are accepted as they are (`-path BIN`,
//! `-metrics=5500`) as well as GNU style (`--path BIN`).

use crate::export::logfmt::Level;
use clap::{CommandFactory, Parser};
use std::{
    ffi::{OsStr, OsString},
    net::IpAddr,
    path::{Path, PathBuf},
};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "gmon-agent",
    version,
    about = "eBPF goroutine monitor for Go programs"
)]
pub struct Cli {
    /// Path to executable file to be monitored; without it, node mode: every Go program on the host and in its containers
    #[arg(long, value_name = "BIN")]
    pub path: Option<PathBuf>,

    /// Trace only this process (0: every process running the binary)
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

    /// Probe sites: auto (instructions the kernel emulates, where the binary has them; else RETs) or ret (always newproc1's RETs and goexit1's entry)
    #[arg(long, value_enum, default_value = "auto", value_name = "SITES")]
    pub probe_sites: crate::probes::SitePolicy,

    /// Port serving the agent's own CPU and heap profiles at /debug/pprof/ (0 turns it off)
    #[arg(long, default_value_t = 0, value_name = "PORT")]
    pub pprof: u16,

    /// Write a Chrome trace (JSON) of the agent's own work to this file
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,

    #[command(flatten)]
    pub otlp: crate::export::otlp::settings::OtlpFlags,

    #[command(flatten)]
    pub k8s: crate::k8s::KubeFlags,

    /// Node mode: probe only executables whose path (inside their container) matches this glob (repeatable)
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,

    /// Node mode: never probe executables whose path matches this glob (repeatable)
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,

    /// Node mode: probe processes in containers, on the host, or both (containers, host, all; default all)
    #[arg(long, value_enum, value_name = "SCOPE")]
    pub scope: Option<crate::discover::select::Scope>,

    /// Node mode: YAML file with include, exclude and scope (flags add to it)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Every long flag and whether it takes a value. All of them are also
/// accepted with a single dash, as gmon (Go's flag package) accepts its own.
fn long_flags() -> Vec<(String, bool)> {
    Cli::command()
        .get_arguments()
        .filter_map(|a| Some((a.get_long()?.to_owned(), a.get_action().takes_values())))
        .collect()
}

/// Value names whose flags Go's flag package would show as `int`.
const INT_VALUES: [&str; 3] = ["PORT", "PID", "N"];

/// Rewrites Go-style `-flag` arguments to `--flag` so clap accepts them.
/// Under gmon's name every single-dash flag is rewritten, as Go has no short
/// flags, so an unknown one is reported whole. An argument right after a
/// flag given without `=` is its value even if it starts with a dash, as in
/// Go: the two are joined as `--flag=value` for clap.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>, gmon: bool) -> Vec<OsString> {
    let flags = long_flags();
    let mut out: Vec<OsString> = Vec::new();
    let mut literal = false;
    let mut value_next = false;
    for (i, a) in args.into_iter().enumerate() {
        if std::mem::take(&mut value_next)
            && let Some(mut flag) = out.pop()
        {
            flag.push("=");
            flag.push(&a);
            out.push(flag);
            continue;
        }
        let rewritten = match a.to_str() {
            _ if i == 0 || literal => None,
            Some("--") => {
                literal = true;
                None
            }
            Some(s) if s.starts_with('-') && s.len() > 1 => {
                let dashes = if s.starts_with("--") { 2 } else { 1 };
                let (name, inline) = match s[dashes..].split_once('=') {
                    Some((n, _)) => (n, true),
                    None => (&s[dashes..], false),
                };
                let known = flags.iter().find(|(f, _)| f == name);
                value_next = known.is_some_and(|(_, takes)| *takes) && !inline;
                let known = known.is_some();
                (dashes == 1 && (known || gmon)).then(|| OsString::from(format!("-{s}")))
            }
            _ => None,
        };
        out.push(rewritten.unwrap_or(a));
    }
    out
}

/// True when the binary runs under gmon's name (a symlink or copy called
/// `gmon`): help and flag errors then look like gmon's (Go's flag package).
pub fn invoked_as_gmon(argv0: &OsStr) -> bool {
    Path::new(argv0).file_name() == Some(OsStr::new("gmon"))
}

/// Usage as Go's flag.PrintDefaults prints it: flags sorted by name, the
/// type after the name, the help on the next line, non-zero defaults.
pub fn gmon_usage(argv0: &str) -> String {
    let cmd = Cli::command();
    let mut flags: Vec<_> = cmd
        .get_arguments()
        .filter_map(|a| Some((a.get_long()?, a)))
        .filter(|(name, _)| *name != "help" && *name != "version")
        .collect();
    flags.sort_by_key(|(name, _)| *name);
    let mut out = format!("Usage of {argv0}:\n");
    for (name, arg) in flags {
        let value = arg
            .get_value_names()
            .and_then(|v| v.first())
            .map(|v| v.as_str())
            .unwrap_or("");
        let int = INT_VALUES.contains(&value);
        let ty = match (arg.get_action().takes_values(), int) {
            (false, _) => "",
            (true, true) => " int",
            (true, false) => " string",
        };
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        out += &format!("  -{name}{ty}\n    \t{help}");
        if let Some(d) = arg.get_default_values().first().and_then(|d| d.to_str()) {
            match (int, d) {
                (true, "0") => {}
                (true, d) => out += &format!(" (default {d})"),
                (false, d) => out += &format!(" (default {d:?})"),
            }
        }
        out.push('\n');
    }
    out
}

impl Cli {
    /// Parses the process's arguments; on bad input prints one clear error
    /// (gmon-style when run as `gmon`) and exits with status 2.
    pub fn parse_from_env() -> Self {
        let args: Vec<OsString> = std::env::args_os().collect();
        let argv0 = args.first().cloned().unwrap_or_else(|| "gmon-agent".into());
        if invoked_as_gmon(&argv0) {
            let name = argv0.to_string_lossy();
            // Go's flag package: -h, -help, --h and --help print the usage
            // to stderr and exit 0.
            if args[1..]
                .iter()
                .any(|a| matches!(a.to_str(), Some("-h" | "-help" | "--h" | "--help")))
            {
                eprint!("{}", gmon_usage(&name));
                std::process::exit(0);
            }
            match Cli::try_parse_from(normalize_args(args.clone(), true)) {
                // gmon watches one binary: without -path it is an error, not
                // node mode (only the name gmon-agent has that).
                Ok(cli) if cli.path.is_none() => {
                    eprint!("missing required flag: -path\n{}", gmon_usage(&name));
                    std::process::exit(2);
                }
                Ok(cli) => return cli,
                Err(e) if e.kind() == clap::error::ErrorKind::UnknownArgument => {
                    let flag = e
                        .get(clap::error::ContextKind::InvalidArg)
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    let flag = flag.split('=').next().unwrap_or_default();
                    let flag = flag.strip_prefix('-').unwrap_or(flag);
                    eprint!(
                        "flag provided but not defined: {flag}\n{}",
                        gmon_usage(&name)
                    );
                    std::process::exit(2);
                }
                Err(e) => e.exit(),
            }
        }
        Cli::parse_from(normalize_args(args, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let gmon = invoked_as_gmon(OsStr::new(args[0]));
        Cli::try_parse_from(normalize_args(args.iter().map(OsString::from), gmon))
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
        assert_eq!(c.path, Some(PathBuf::from("/bin/x")));
        assert_eq!(c.metrics, 6000);
        assert_eq!(c.level, Level::Debug);
        assert_eq!(c.pid, 9);
    }

    #[test]
    fn switches_take_no_value_and_single_dash_works_for_every_flag() {
        // A switch must not swallow the next argument as its value.
        let c = parse(&[
            "gmon-agent",
            "-otlp-stack-attribute",
            "-path",
            "/bin/x",
            "-otlp-protocol",
            "grpc",
            "-k8s-pod-label=app",
        ])
        .unwrap();
        assert!(c.otlp.otlp_stack_attribute);
        assert_eq!(c.path, Some(PathBuf::from("/bin/x")));
        assert_eq!(
            c.otlp.otlp_protocol,
            Some(crate::export::otlp::Protocol::Grpc)
        );
        assert_eq!(c.k8s.k8s_pod_label, ["app"]);
        assert!(parse(&["gmon-agent", "--otlp-protocol", "udp"]).is_err());
    }

    #[test]
    fn defaults_match_gmon() {
        let c = parse(&["gmon-agent", "--path", "/bin/x"]).unwrap();
        assert_eq!((c.metrics, c.level, c.pid), (5500, Level::Info, 0));
    }

    #[test]
    fn gmon_flags_take_both_value_forms() {
        let c = parse(&[
            "gmon",
            "-path=/bin/x",
            "-pprof",
            "6060",
            "-trace=/tmp/t.json",
        ])
        .unwrap();
        assert_eq!(c.pprof, 6060);
        assert_eq!(c.trace, Some(PathBuf::from("/tmp/t.json")));
        let c = parse(&["gmon", "--path", "/bin/x", "--trace", "t.json"]).unwrap();
        assert_eq!((c.pprof, c.trace), (0, Some(PathBuf::from("t.json"))));
    }

    #[test]
    fn gmon_usage_follows_go_flag_format() {
        let u = gmon_usage("gmon");
        assert!(u.starts_with("Usage of gmon:\n  -"), "{u}");
        assert!(u.contains("\n  -level string\n    \t"), "{u}");
        assert!(u.contains("(default \"INFO\")\n"), "{u}");
        assert!(u.contains("  -metrics int\n    \t"), "{u}");
        assert!(u.contains("(default 5500)\n"), "{u}");
        // Zero defaults are not shown, as in Go.
        let pid = u.split("  -pid int\n").nth(1).unwrap();
        assert!(!pid.lines().next().unwrap().contains("(default"), "{u}");
        // Sorted by name.
        let names: Vec<&str> = u
            .lines()
            .filter_map(|l| l.strip_prefix("  -"))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(names.contains(&"pprof") && names.contains(&"trace") && names.contains(&"path"));
    }

    #[test]
    fn values_that_look_like_flags_stay_values() {
        let c = parse(&["gmon", "-path", "-odd-name", "-level", "WARN"]).unwrap();
        assert_eq!(c.path, Some(PathBuf::from("-odd-name")));
        assert_eq!(c.level, Level::Warn);
        let e = parse(&["gmon", "-path", "x", "-foo"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        let bad = e
            .get(clap::error::ContextKind::InvalidArg)
            .unwrap()
            .to_string();
        assert_eq!(bad, "--foo");
    }

    #[test]
    fn only_the_name_gmon_is_gmon() {
        assert!(invoked_as_gmon(OsStr::new("/usr/local/bin/gmon")));
        assert!(invoked_as_gmon(OsStr::new("gmon")));
        assert!(!invoked_as_gmon(OsStr::new("gmon-agent")));
        assert!(!invoked_as_gmon(OsStr::new("/opt/gmon/agent")));
    }

    #[test]
    fn rejects_missing_path_and_bad_level() {
        // No --path is node mode.
        assert_eq!(parse(&["gmon-agent"]).unwrap().path, None);
        assert!(parse(&["gmon-agent", "--path", "x", "--level", "LOUD"]).is_err());
        assert!(parse(&["gmon-agent", "--path", "x", "--stack-depth", "500"]).is_err());
    }
}
