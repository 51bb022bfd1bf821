//! Overhead benchmark (needs root): a Go program that creates goroutines as
//! fast as it can, timed per goroutine (create + run + exit) in three modes,
//! interleaved in one run so the ratios compare like with like:
//!
//! * untraced
//! * old floor: an empty program on newproc1's RETs and goexit1's entry
//!   (single-stepped sites: the bare trap cost every peer pays)
//! * new floor: an empty program on the emulated sites the agent uses
//! * gmon-agent: the real agent binary, stacks on, logging to /dev/null
//! * gmon-agent --level WARN --stack-depth 0: no per-goroutine output
//! * a bpftrace one-liner with the same counts (if bpftrace is installed)
//! * with BASELINE_AGENT=path, another agent build the same way (before/after)
//!
//! Prints per-mode medians, the ratio gmon-agent / floor, the agent's CPU
//! time per million events, and events lost.
//!
//! Run: sudo cargo bench -p agent --bench overhead  (ROUNDS, N to change size)

use e2e::{Proc, fixture, free_port, http_get, wait_for};
use gmon_agent::{
    gobin::GoBinary,
    probes::{Probes, SiteClass, SitePolicy},
};
use std::{
    process::{Command, Stdio},
    time::Duration,
};

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs the churn fixture once; returns ns per goroutine.
fn churn(n: u32, rounds: u32) -> f64 {
    let out = Command::new(fixture("churn"))
        .args([format!("-n={n}"), format!("-rounds={rounds}")])
        .env("GOMAXPROCS", "2")
        .output()
        .unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    s.split_whitespace()
        .find_map(|kv| kv.strip_prefix("ns_per_goroutine="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unexpected churn output {s:?}"))
}

/// What one agent run measured.
struct AgentRun {
    ns: f64,
    cpu_ns: f64,
    events: f64,
    lost: f64,
    create_hits: (f64, f64),
    exit_hits: (f64, f64),
    rss_kib: f64,
}

/// Starts an agent binary on the churn fixture, times a churn run under it,
/// and reads its CPU time, event counts and in-kernel statistics.
fn run_agent(exe: &str, bin: &GoBinary, args: &str, n: u32, rounds: u32) -> AgentRun {
    let tick_ns = 1e9 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let port = free_port();
    let mut a = Proc::spawn(
        Command::new(exe)
            .arg("--path")
            .arg(&bin.path)
            .args([
                "--metrics",
                &port.to_string(),
                "--metrics-address",
                "127.0.0.1",
            ])
            .args(args.split_whitespace())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    // Attached once the agent reports its uprobes (works at any --level).
    wait_for(Duration::from_secs(30), || {
        let (_, body) = http_get(port, "/metrics").ok()?;
        (metric(&body, "gmon_agent_uprobes_attached") > 0.0).then_some(())
    })
    .expect("agent attached");
    let cpu0 = cpu_ticks(a.pid());
    let ns = churn(n, rounds);
    // Let the agent drain what is still in the ring buffer.
    std::thread::sleep(Duration::from_millis(1500));
    let cpu1 = cpu_ticks(a.pid());
    let (_, body) = http_get(port, "/metrics").unwrap();
    let r = AgentRun {
        ns,
        cpu_ns: (cpu1 - cpu0) as f64 * tick_ns,
        events: metric(&body, "gmon_agent_events_received_total"),
        lost: metric(&body, "gmon_agent_events_lost_total"),
        create_hits: prog_runs("newproc1_ret"),
        exit_hits: prog_runs("goexit1"),
        rss_kib: std::fs::read_to_string(format!("/proc/{}/status", a.pid()))
            .ok()
            .and_then(|st| {
                st.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(f64::NAN),
    };
    a.terminate(Duration::from_secs(10));
    r
}

/// The alternative users have: a bpftrace one-liner with the same counts,
/// as a user would type it (function-entry uprobes). `None` without bpftrace.
fn bpftrace_run(bin: &GoBinary, n: u32, rounds: u32) -> Option<f64> {
    let path = bin.path.display();
    let script = format!(
        "uprobe:{path}:runtime.newproc1 {{ @created[ustack(5)] = count(); }} \
         uprobe:{path}:runtime.goexit1 {{ @exited = count(); }}"
    );
    let mut bt = Command::new("bpftrace")
        .args(["-e", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // It prints "Attaching 2 probes..." once they are in place.
    let mut out = std::io::BufReader::new(bt.stdout.take()?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).ok()?;
    if !line.starts_with("Attaching") {
        let _ = bt.kill();
        return None;
    }
    std::thread::sleep(Duration::from_millis(500));
    let ns = churn(n, rounds);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(bt.id() as i32, libc::SIGINT) };
    let _ = bt.wait();
    Some(ns)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// (run count, run time in ns) summed over loaded programs named `name`;
/// counted while kernel BPF run-time statistics are enabled.
fn prog_runs(name: &str) -> (f64, f64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(name))
        .fold((0.0, 0.0), |(c, t), p| {
            (c + p.run_count() as f64, t + p.run_time().as_nanos() as f64)
        })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// What the runs of one agent mode add up to.
#[derive(Default)]
struct Totals {
    ns: Vec<f64>,
    rss_kib: Vec<f64>,
    cpu_ns: f64,
    events: f64,
    lost: f64,
}

impl Totals {
    fn add(&mut self, r: &AgentRun) {
        self.ns.push(r.ns);
        self.rss_kib.push(r.rss_kib);
        self.cpu_ns += r.cpu_ns;
        self.events += r.events;
        self.lost += r.lost;
    }

    /// Agent CPU seconds per million goroutines (a creation and an exit each).
    fn cpu_per_million(&self) -> f64 {
        self.cpu_ns / 1e9 / (self.events / 2e6)
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("overhead benchmark needs root (sudo cargo bench -p agent --bench overhead)");
        std::process::exit(1);
    }
    let n = env_or("N", 100_000);
    let rounds = env_or("ROUNDS", 3);
    let reps = env_or("REPS", 5);
    // Extra agent flags, e.g. AGENT_ARGS="--stack-depth 0" to see what stacks cost.
    let agent_args = std::env::var("AGENT_ARGS").unwrap_or_default();
    // No per-goroutine output: no log lines, no stacks.
    let quiet_args = "--level WARN --stack-depth 0";
    // BASELINE_AGENT=path: another gmon-agent build (e.g. before a change),
    // run interleaved with the same flags, for a before/after in one run.
    let baseline_bin = std::env::var("BASELINE_AGENT").ok();
    let bin = GoBinary::analyse(&fixture("churn")).unwrap();
    let exe = env!("CARGO_BIN_EXE_gmon-agent");

    let (mut untraced, mut floor, mut new_floor, mut bpftrace) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut agent, mut quiet, mut baseline) =
        (Totals::default(), Totals::default(), Totals::default());
    // In-kernel time per probe hit, from the kernel's BPF run-time statistics
    // (enabled while this fd is open; they add ~20 ns per hit to all modes).
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
    let (mut noop_hits, mut create_hits, mut exit_hits) = ((0.0, 0.0), (0.0, 0.0), (0.0, 0.0));
    let add = |acc: &mut (f64, f64), (c, t): (f64, f64)| {
        acc.0 += c;
        acc.1 += t;
    };
    churn(n / 10, 1); // warm up page cache and CPU frequency
    for _ in 0..reps {
        untraced.push(churn(n, rounds));
        {
            let (mut probes, _maps) = Probes::load(0, None).unwrap();
            probes.set_site_policy(SitePolicy::Ret);
            probes.attach_noop(&bin).unwrap();
            floor.push(churn(n, rounds));
            add(&mut noop_hits, prog_runs("noop"));
        }
        {
            let (mut probes, _maps) = Probes::load(0, None).unwrap();
            let att = probes.attach_noop(&bin).unwrap();
            assert_eq!(att.class, SiteClass::Emulated, "churn has emulated sites");
            new_floor.push(churn(n, rounds));
        }
        let r = run_agent(exe, &bin, &agent_args, n, rounds);
        add(&mut create_hits, r.create_hits);
        add(&mut exit_hits, r.exit_hits);
        agent.add(&r);
        quiet.add(&run_agent(exe, &bin, quiet_args, n, rounds));
        if let Some(ns) = bpftrace_run(&bin, n, rounds) {
            bpftrace.push(ns);
        }
        if let Some(b) = &baseline_bin {
            baseline.add(&run_agent(b, &bin, &agent_args, n, rounds));
        }
    }

    let us = |v: &mut Vec<f64>| median(v) / 1e3;
    let (u, f, nf) = (us(&mut untraced), us(&mut floor), us(&mut new_floor));
    let (g, q) = (us(&mut agent.ns), us(&mut quiet.ns));
    let goroutines = n as u64 * rounds as u64;
    println!(
        "overhead benchmark: {goroutines} goroutines x {reps} repetitions, GOMAXPROCS=2, medians, us per goroutine"
    );
    println!("  untraced                               {u:8.2}");
    println!("  old floor (empty, RET + entry)         {f:8.2}");
    println!("  new floor (empty, emulated sites)      {nf:8.2}");
    println!("  gmon-agent {agent_args:27} {g:8.2}");
    println!("  gmon-agent {quiet_args:27} {q:8.2}");
    if bpftrace.is_empty() {
        println!("  bpftrace one-liner                     (not installed or could not attach)");
    } else {
        println!(
            "  bpftrace one-liner                     {:8.2} (uprobes on newproc1 and goexit1, count by 5-frame ustack)",
            us(&mut bpftrace)
        );
    }
    let bl = baseline_bin.as_ref().map(|_| us(&mut baseline.ns));
    if let (Some(b), Some(bl)) = (&baseline_bin, bl) {
        println!("  baseline agent {agent_args:23} {bl:8.2} ({b})");
    }
    println!("ratios");
    println!(
        "  gmon-agent / old floor {:8.3}, / new floor {:8.3}",
        g / f,
        g / nf
    );
    println!(
        "  quiet agent / old floor {:8.3}, / new floor {:8.3}",
        q / f,
        q / nf
    );
    if let Some(bl) = bl {
        println!(
            "  gmon-agent / baseline  {:8.3}, baseline / old floor {:8.3}",
            g / bl,
            bl / f
        );
    }
    println!("agent CPU per 1M goroutines, events lost, RSS at the end (median)");
    let modes = [("gmon-agent", &mut agent), ("quiet agent", &mut quiet)];
    for (name, t) in modes.into_iter().chain(
        baseline_bin
            .as_ref()
            .map(|_| ("baseline agent", &mut baseline)),
    ) {
        println!(
            "  {name:15} {:8.3} s, {} lost ({} events), {:6.1} MiB",
            t.cpu_per_million(),
            t.lost,
            t.events,
            median(&mut t.rss_kib) / 1024.0
        );
    }
    let per_hit = |(c, t): (f64, f64)| if c > 0.0 { t / c } else { f64::NAN };
    println!(
        "in-kernel ns per probe hit: empty {:.0}, creation {:.0}, exit {:.0}",
        per_hit(noop_hits),
        per_hit(create_hits),
        per_hit(exit_hits)
    );
}
