//! gmon's own end-to-end checks, shared by the tests that run gmon-agent
//! under its own name and under gmon's, and a way to run an agent with its
//! output captured.

use crate::{Proc, fixture, free_port, http_get, wait_for};
use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    sync::mpsc::{self, Receiver},
    time::Duration,
};

/// An agent process with its stdout and stderr lines delivered by channel.
pub struct RunningAgent {
    pub proc: Proc,
    pub stdout: Receiver<String>,
    pub stderr: Receiver<String>,
}

fn lines(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    rx
}

/// Starts `cmd` and waits until it logs that it attached its probes.
pub fn start_agent(cmd: &mut Command) -> RunningAgent {
    let mut proc = Proc::spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()));
    let stdout = lines(proc.child.stdout.take().unwrap());
    let stderr = lines(proc.child.stderr.take().unwrap());
    loop {
        let l = stderr
            .recv_timeout(Duration::from_secs(20))
            .expect("agent logs that it attached");
        if l.contains(" attached ") {
            break;
        }
    }
    RunningAgent {
        proc,
        stdout,
        stderr,
    }
}

impl RunningAgent {
    /// Stdout lines until none arrives for `quiet`.
    pub fn stdout_until_quiet(&self, quiet: Duration) -> Vec<String> {
        std::iter::from_fn(|| self.stdout.recv_timeout(quiet).ok()).collect()
    }
}

/// The HTTP fixture on a free port, answering.
pub fn http_fixture() -> (Proc, u16) {
    let port = free_port();
    let app = Proc::spawn(
        Command::new(fixture("httpserver"))
            .arg(format!("-addr=127.0.0.1:{port}"))
            .stdout(Stdio::null()),
    );
    wait_for(Duration::from_secs(5), || http_get(port, "/").ok()).expect("fixture up");
    (app, port)
}

/// gmon's check of its log: every "goroutine is created" line has a
/// positive integer goroutine_id and non-empty stack.N values. Returns how
/// many there are.
pub fn check_creation_lines(lines: &[String]) -> usize {
    let mut valid = 0;
    for text in lines {
        if !text.contains("msg=\"goroutine is created\"") {
            continue;
        }
        let id: i64 = text
            .split(' ')
            .find_map(|kv| kv.strip_prefix("goroutine_id="))
            .unwrap_or_else(|| panic!("no goroutine_id in {text}"))
            .parse()
            .unwrap_or_else(|_| panic!("goroutine_id is not an integer in {text}"));
        assert!(id > 0, "{text}");
        let frames: Vec<&str> = text
            .split(' ')
            .filter(|kv| kv.starts_with("stack."))
            .map(|kv| kv.split_once('=').unwrap().1)
            .collect();
        assert!(!frames.is_empty(), "no stack in {text}");
        assert!(frames.iter().all(|f| !f.is_empty()), "{text}");
        valid += 1;
    }
    valid
}

/// gmon's check of /metrics for the HTTP fixture: the three families exist,
/// every series has exactly the labels stack_0..stack_4, none empty or
/// "none", and the HTTP serving stack appears. Returns the parsed scrape.
pub fn check_gmon_metrics(body: &str) -> prometheus_parse::Scrape {
    let scrape =
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("parse");
    let stack_labels = ["stack_0", "stack_1", "stack_2", "stack_3", "stack_4"];
    let mut serving_stack = false;
    for family in [
        "gmon_goroutine_creation",
        "gmon_goroutine_exit",
        "gmon_goroutine_uptime",
    ] {
        let samples: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == family)
            .collect();
        assert!(!samples.is_empty(), "{family} missing from\n{body}");
        for s in samples {
            let mut names: Vec<&str> = s.labels.keys().map(String::as_str).collect();
            names.sort();
            assert_eq!(names, stack_labels, "{family} labels");
            for (k, v) in s.labels.iter() {
                assert!(!v.is_empty() && v != "none", "{family} {k}={v:?}\n{body}");
                serving_stack |= v == "net/http.(*conn).serve";
            }
        }
    }
    assert!(
        serving_stack,
        "no series with the HTTP serving stack:\n{body}"
    );
    scrape
}
