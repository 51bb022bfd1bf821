//! The agent in node mode (no --path) as the node tests, the hostile-binary
//! test and the soak run it: limited to the fixtures and to what they name
//! (other Go programs on the machine are none of the tests' business), its
//! log lines read as they come, its /metrics read by name.

use crate::{Proc, cgroup::MemCgroup, fixture, free_port, http_get};
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

pub struct NodeAgent {
    pub proc: Proc,
    stderr: mpsc::Receiver<String>,
    /// Everything the agent logged, for failure messages.
    pub log: Arc<Mutex<Vec<String>>>,
    pub port: u16,
}

impl NodeAgent {
    /// Starts `bin` (the agent) at `level` with `--include <fixtures>/*` and
    /// `extra`, in `cgroup` if given, and waits for its initial scan.
    pub fn start(bin: &Path, level: &str, extra: &[&str], cgroup: Option<&MemCgroup>) -> NodeAgent {
        let port = free_port();
        let fixtures = format!("{}/*", fixture("spawner").parent().unwrap().display());
        let mut cmd = Command::new(bin);
        cmd.args([
            "--metrics",
            &port.to_string(),
            "--level",
            level,
            "--include",
        ])
        .arg(&fixtures)
        .args(extra)
        .env("GMON_AGENT_LOG", "gmon_agent=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(cg) = cgroup {
            cg.join_on_spawn(&mut cmd);
        }
        let mut proc = Proc::spawn(&mut cmd);
        let (tx, stderr) = mpsc::channel();
        let err = proc.child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let all = log.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                all.lock().unwrap().push(l.clone());
                let _ = tx.send(l);
            }
        });
        let agent = NodeAgent {
            proc,
            stderr,
            log,
            port,
        };
        agent.wait_line(Duration::from_secs(20), |l| l.contains("initial scan done"));
        agent
    }

    /// The next log line that satisfies `f`, within `timeout`; panics with
    /// the last lines seen otherwise.
    pub fn wait_line(&self, timeout: Duration, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(l) = self.stderr.recv_timeout(left) else {
                let tail = &seen[seen.len().saturating_sub(30)..];
                panic!(
                    "agent did not log what was expected in {timeout:?}; it logged:\n{}",
                    tail.join("\n")
                );
            };
            if f(&l) {
                return l;
            }
            seen.push(l);
        }
    }

    /// Waits until every pid in `pids` has been reported probed.
    pub fn wait_probed(&self, pids: &[u32]) {
        let mut left: std::collections::HashSet<u32> = pids.iter().copied().collect();
        while !left.is_empty() {
            let l = self.wait_line(Duration::from_secs(5), |l| l.contains("process probed"));
            if let Some(pid) = l
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("pid="))
                .and_then(|v| v.parse().ok())
            {
                left.remove(&pid);
            }
        }
    }

    /// The sum of every sample whose line starts with `name` (a family, or
    /// a family with the start of its labels).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_get(self.port, "/metrics").unwrap();
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
            + 0.0 // an empty sum is -0.0
    }

    /// Its open file descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.proc.pid()))
            .unwrap()
            .count()
    }

    /// Its resident set, KiB.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.proc.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    /// True while the agent process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.proc.child.try_wait(), Ok(None))
    }
}
