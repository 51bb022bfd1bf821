//! Attach-walk benchmark (needs root): how long reading a process's live
//! goroutines takes, and what it costs in memory, for 1k, 100k and 1M live
//! goroutines (the leaky fixture's prefill), measured two ways:
//!
//! * the walk alone (`walk::walk`, one process_vm_readv per 1024
//!   goroutines), in this process: median of 5, and the bytes of what it
//!   hands over (32 per goroutine);
//! * the agent end to end, in each mode: from its log, the walk's time;
//!   from /proc, its peak RSS (VmHWM) next to an idle agent's, and whether
//!   the walked goroutines were all counted (`goroutines_seen_at_attach`).
//!
//! Run: sudo cargo bench -p agent --bench attach_walk  (SIZES=1000,100000)

use e2e::{Proc, fixture, free_port, http_get, piped, wait_for};
use gmon_agent::{discover, gobin::GoBinary, walk};
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The sum of a family's series (with or without labels).
fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics").ok()?;
    Some(
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// The agent on `bin` at `level`: (walk ms from its log, peak RSS MiB,
/// goroutines it counted as seen at attach).
fn agent_run(bin: &std::path::Path, level: &str, live: u64) -> (f64, f64, f64) {
    let port = free_port();
    let mut a = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_gmon-agent"))
            .arg("--path")
            .arg(bin)
            .args(["--level", level, "--metrics", &port.to_string()])
            .env("GMON_AGENT_LOG", "gmon_agent=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let err = BufReader::new(a.child.stderr.take().unwrap());
    let mut took_ms = f64::NAN;
    for l in err.lines().map_while(Result::ok) {
        if l.contains("goroutines alive at attach read") {
            took_ms = l
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("took_us="))
                .and_then(|v| v.parse::<f64>().ok())
                .map_or(f64::NAN, |us| us / 1000.0);
            break;
        }
    }
    // Counted once the next drain (events) or at once (aggregate).
    let seen = wait_for(Duration::from_secs(60), || {
        let n = metric(port, "gmon_agent_goroutines_seen_at_attach_total")?;
        let lost = metric(port, "gmon_agent_events_lost_total").unwrap_or(0.0);
        (n + lost >= live as f64 * 0.99).then_some(n)
    })
    .unwrap_or(f64::NAN);
    let hwm = status_kib(a.pid(), "VmHWM:") as f64 / 1024.0;
    a.terminate(Duration::from_secs(20));
    (took_ms, hwm, seen)
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("attach_walk: needs root (sudo cargo bench -p agent --bench attach_walk)");
        return;
    }
    let sizes: Vec<u64> = std::env::var("SIZES")
        .unwrap_or_else(|_| "1000,100000,1000000".into())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let bin = fixture("leaky");
    let g = GoBinary::analyse(&bin).unwrap();
    let w = g.walk.expect("leaky can be walked");
    println!(
        "{:>9} {:>9} {:>10} {:>10} {:>13} {:>12} {:>13} {:>12}",
        "live",
        "walk_ms",
        "handed_MiB",
        "per_g_ns",
        "agent_INFO_ms",
        "INFO_peakMiB",
        "agent_WARN_ms",
        "WARN_peakMiB"
    );
    for &n in &sizes {
        let mut p = Proc::spawn(piped(&bin).args([
            format!("-prefill={n}"),
            "-leak=0".into(),
            "-healthy=0".into(),
            "-pool=0".into(),
        ]));
        let ready = p.stdout_lines().next().unwrap().unwrap();
        let live: u64 = ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("goroutines="))
            .and_then(|v| v.parse().ok())
            .unwrap();
        let bias = discover::load_bias(p.pid(), &g).unwrap_or(0);
        let mut times = Vec::new();
        let mut handed = 0usize;
        let mut found = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let stats = walk::walk(p.pid(), bias, &w, |gs| {
                std::hint::black_box(gs);
            })
            .unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
            handed = stats.live as usize * std::mem::size_of::<walk::LiveG>();
            found = stats.live;
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let ms = times[2];
        assert!(found >= live, "walk found {found} of {live}");
        let (info_ms, info_mib, info_seen) = agent_run(&bin, "INFO", live);
        let (warn_ms, warn_mib, warn_seen) = agent_run(&bin, "WARN", live);
        println!(
            "{:>9} {:>9.1} {:>10.1} {:>10.0} {:>13.1} {:>12.1} {:>13.1} {:>12.1}",
            live,
            ms,
            handed as f64 / (1 << 20) as f64,
            ms * 1e6 / live as f64,
            info_ms,
            info_mib,
            warn_ms,
            warn_mib
        );
        println!(
            "          counted seen_at_attach: INFO {info_seen}, WARN {warn_seen} (WARN holds at most {} live goroutines node-wide, the kernel's table; the rest is counted in events_lost_total{{reason=\"live_full\"}})",
            agent_common::LIVE_ENTRIES
        );
        drop(p);
    }
}
