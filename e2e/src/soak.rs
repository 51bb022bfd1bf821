//! The soak: real goroutine-heavy programs under the agent in node mode,
//! for as many rounds as asked. Each round runs Go's own net/http test
//! suite (`go test -c net/http`, built once per supported Go release and
//! cached outside the checkout) for every release, while 200 short-lived
//! processes of the 10 spawner shapes come and go next to it. The agent
//! runs under the chart's default memory limit. The CI test runs two rounds;
//! `cargo bench -p agent --bench soak` runs more and prints the same
//! figures.

use crate::{SPAWNER_SHAPES, cgroup::MemCgroup, fixture, node::NodeAgent, wait_for};
use std::{
    io::{BufRead, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// The chart's default memory limit (charts/gmon-agent/values.yaml).
pub const LIMIT: u64 = 256 << 20;

/// Where the net/http test binaries are cached.
const CACHE: &str = "/var/cache/gmon-agent/soak";

/// A supported Go release's toolchain, where scripts/bootstrap.sh puts it.
fn go_tool(release: &str) -> PathBuf {
    let system = PathBuf::from(format!("/usr/lib/go-{release}/bin/go"));
    if system.exists() {
        return system;
    }
    PathBuf::from(format!(
        "/var/cache/gmon-agent/go/{release}/usr/lib/go-{release}/bin/go"
    ))
}

/// The supported releases the soak covers.
pub const RELEASES: [&str; 3] = ["1.23", "1.24", "1.26"];

/// net/http's test binary for `release` (built on first use) and the
/// directory it must run in (its testdata).
pub fn http_test(release: &str) -> (PathBuf, PathBuf) {
    let go = go_tool(release);
    assert!(
        go.exists(),
        "Go {release} is missing at {}: run scripts/bootstrap.sh --tests",
        go.display()
    );
    let goroot = go.parent().unwrap().parent().unwrap().to_path_buf();
    let out = PathBuf::from(CACHE).join(format!("http.test-go{release}"));
    if !out.exists() {
        std::fs::create_dir_all(CACHE).unwrap();
        let tmp = out.with_extension("tmp");
        let t0 = Instant::now();
        let st = Command::new(&go)
            .args(["test", "-c", "-o"])
            .arg(&tmp)
            .arg("net/http")
            .env("GOTOOLCHAIN", "local")
            .env("GOCACHE", format!("{CACHE}/gocache-{release}"))
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0")
            .status()
            .unwrap();
        assert!(st.success(), "go test -c net/http with Go {release}");
        std::fs::rename(&tmp, &out).unwrap();
        eprintln!("built {} in {:.0?}", out.display(), t0.elapsed());
    }
    (out, goroot.join("src/net/http"))
}

/// What a soak measured.
#[derive(Debug, Default)]
pub struct Figures {
    pub rounds: u32,
    pub duration: Duration,
    /// net/http suite runs, and how many passed.
    pub suite_runs: u32,
    pub suite_passed: u32,
    /// Short-lived spawner processes run (and finished cleanly).
    pub short_lived: u32,
    /// Goroutines the kernel counted (created, exited).
    pub goroutines_created: f64,
    pub goroutines_exited: f64,
    pub rss_kib_start: u64,
    pub rss_kib_end: u64,
    pub rss_kib_max: u64,
    pub cgroup_peak: u64,
    pub fds_start: usize,
    pub fds_end: usize,
    pub fds_max: usize,
    pub tracked_start: f64,
    pub tracked_end: f64,
    pub attached_end: f64,
    /// Uprobe links of the agent's programs while a suite ran, and after.
    pub links_during: usize,
    pub links_end: usize,
    pub oom_kills: u64,
    pub lost: f64,
    pub attach_failures: f64,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "soak: {} round(s) in {:.0?}: net/http suite {}/{} passed ({} releases), {} short-lived processes",
            self.rounds,
            self.duration,
            self.suite_passed,
            self.suite_runs,
            RELEASES.len(),
            self.short_lived
        )?;
        writeln!(
            f,
            "  goroutines counted: {} created, {} exited; lost {}, attach failures {}",
            self.goroutines_created, self.goroutines_exited, self.lost, self.attach_failures
        )?;
        writeln!(
            f,
            "  agent RSS: start {} KiB, end {} KiB, max {} KiB; cgroup peak {} MiB of {} MiB, OOM kills {}",
            self.rss_kib_start,
            self.rss_kib_end,
            self.rss_kib_max,
            self.cgroup_peak >> 20,
            LIMIT >> 20,
            self.oom_kills
        )?;
        writeln!(
            f,
            "  agent fds: start {}, end {}, max {}; processes tracked: start {}, end {}; binaries attached at the end {}",
            self.fds_start,
            self.fds_end,
            self.fds_max,
            self.tracked_start,
            self.tracked_end,
            self.attached_end
        )?;
        write!(
            f,
            "  uprobe links of the agent: {} while a suite ran, {} at the end",
            self.links_during, self.links_end
        )
    }
}

/// BPF program ids `pid` holds (from its fds' fdinfo).
fn prog_ids(pid: u32) -> Vec<u64> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    rd.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// Uprobe links in the kernel that run one of `pid`'s programs (bpftool;
/// its exec/exit tracepoints are raw_tracepoint links, not counted).
pub fn uprobe_links_of(pid: u32) -> usize {
    let progs = prog_ids(pid);
    let out = Command::new("bpftool")
        .args(["link", "show", "--json"])
        .output()
        .expect("bpftool (scripts/bootstrap.sh --tests installs it)");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    links
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|l| l["type"] != "raw_tracepoint")
                .filter(|l| l["prog_id"].as_u64().is_some_and(|p| progs.contains(&p)))
                .count()
        })
        .unwrap_or(0)
}

/// Runs 200 spawners of the 10 shapes, 20 at a time; returns how many
/// finished with their "done created=4" line.
fn short_lived() -> u32 {
    let mut ok = 0;
    for batch in 0..10 {
        let procs: Vec<_> = (0..20)
            .map(|i| {
                let shape = SPAWNER_SHAPES[(batch * 20 + i) % SPAWNER_SHAPES.len()];
                Command::new(fixture(shape))
                    .arg("-rounds=1")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut p in procs {
            let mut out = std::io::BufReader::new(p.stdout.take().unwrap()).lines();
            let ready = out.next().and_then(Result::ok).unwrap_or_default();
            let mut stdin = p.stdin.take().unwrap();
            let _ = writeln!(stdin);
            drop(stdin);
            let done = out.map_while(Result::ok).any(|l| l == "done created=4");
            if ready.starts_with("ready") && done && p.wait().is_ok_and(|s| s.success()) {
                ok += 1;
            }
        }
    }
    ok
}

/// One run of a release's net/http suite; true if it passed.
fn suite(bin: &Path, dir: &Path) -> bool {
    let out = Command::new(bin)
        .args(["-test.short", "-test.count=1", "-test.timeout=10m"])
        .current_dir(dir)
        .env("GOMAXPROCS", "2")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if !out.status.success() {
        let so = String::from_utf8_lossy(&out.stdout);
        let tail: Vec<&str> = so.lines().rev().take(40).collect();
        eprintln!(
            "{} failed ({}):\n{}",
            bin.display(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    out.status.success()
}

/// The soak, `rounds` times, with `agent` (the gmon-agent binary).
pub fn run(agent_bin: &Path, rounds: u32) -> Figures {
    let suites: Vec<_> = RELEASES.iter().map(|r| http_test(r)).collect();
    let cg = MemCgroup::new("gmon-agent-soak", LIMIT).expect("a memory cgroup controller");
    let include = format!("{CACHE}/*");
    let mut agent = NodeAgent::start(agent_bin, "WARN", &["--include", &include], Some(&cg));
    let mut f = Figures {
        rounds,
        fds_start: agent.fds(),
        rss_kib_start: agent.rss_kib(),
        tracked_start: agent.metric("gmon_agent_processes_tracked"),
        ..Figures::default()
    };
    let t0 = Instant::now();
    for _ in 0..rounds {
        for (bin, dir) in &suites {
            let side = std::thread::spawn(short_lived);
            // Sample links while the suite runs: the test cannot pass by
            // never attaching.
            let sampler = {
                let pid = agent.proc.pid();
                std::thread::spawn(move || {
                    let mut most = 0;
                    for _ in 0..40 {
                        most = most.max(uprobe_links_of(pid));
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    most
                })
            };
            let passed = suite(bin, dir);
            f.suite_runs += 1;
            f.suite_passed += passed as u32;
            f.short_lived += side.join().unwrap();
            f.links_during = f.links_during.max(sampler.join().unwrap());
            f.rss_kib_max = f.rss_kib_max.max(agent.rss_kib());
            f.fds_max = f.fds_max.max(agent.fds());
        }
    }
    f.duration = t0.elapsed();
    // Exits reach the pipeline within a housekeeping or two.
    wait_for(Duration::from_secs(10), || {
        (agent.metric("gmon_agent_binaries_attached") == 0.0
            && agent.metric("gmon_agent_processes_tracked") <= f.tracked_start)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    f.goroutines_created =
        agent.metric("gmon_agent_kernel_goroutines_counted_total{kind=\"create\"}");
    f.goroutines_exited = agent.metric("gmon_agent_kernel_goroutines_counted_total{kind=\"exit\"}");
    f.lost = agent.metric("gmon_agent_events_lost_total");
    f.attach_failures = agent.metric("gmon_agent_attach_failures_total");
    f.tracked_end = agent.metric("gmon_agent_processes_tracked");
    f.attached_end = agent.metric("gmon_agent_binaries_attached");
    f.links_end = uprobe_links_of(agent.proc.pid());
    // A scrape's socket can linger for a moment.
    f.fds_end = wait_for(Duration::from_secs(3), || {
        Some(agent.fds()).filter(|&n| n <= f.fds_start)
    })
    .unwrap_or_else(|| agent.fds());
    f.rss_kib_end = agent.rss_kib();
    f.cgroup_peak = cg.peak();
    f.oom_kills = cg.oom_kills();
    assert!(agent.alive(), "the agent died during the soak");
    drop(agent);
    f
}
