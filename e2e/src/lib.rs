//! Support for gmon-agent's end-to-end tests and benchmarks: locating the
//! fixtures, running processes that are killed when dropped, plain HTTP.

pub mod cgroup;
pub mod docker;
pub mod gmon;
pub mod kube;
pub mod node;
pub mod otel;
pub mod soak;
pub mod tap;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

/// The workspace root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A Go fixture built by scripts/build-fixtures.sh.
pub fn fixture(name: &str) -> PathBuf {
    let p = repo_root().join("target/fixtures").join(name);
    assert!(
        p.exists(),
        "fixture {} is missing: run scripts/build-fixtures.sh",
        p.display()
    );
    p.canonicalize().unwrap()
}

/// Every shape the bootstrap builds the spawner fixture in.
pub const SPAWNER_SHAPES: [&str; 10] = [
    "spawner",
    "spawner-stripped",
    "spawner-pie",
    "spawner-pie-stripped",
    "spawner-cgo",
    "spawner-cgo-pie-stripped",
    "spawner-go1.24",
    "spawner-go1.24-pie-stripped",
    "spawner-go1.26",
    "spawner-go1.26-pie-stripped",
];

/// True when running as root. Outside CI a non-root run skips root tests
/// with a note; in CI (CI=true) a non-root run is a failure, never a skip.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root and CI must run it as root");
    }
    eprintln!("skipping {test}: needs root (run the test command with sudo)");
    false
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe. If the test thread dies
        // without unwinding (a timeout's SIGKILL), the child dies with it
        // rather than keeping probes loaded for the next run.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Proc { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdin(&mut self) -> ChildStdin {
        self.child.stdin.take().expect("stdin was piped")
    }

    pub fn stdout_lines(&mut self) -> std::io::Lines<BufReader<ChildStdout>> {
        BufReader::new(self.child.stdout.take().expect("stdout was piped")).lines()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command with piped stdin/stdout and inherited stderr.
pub fn piped(path: impl Into<PathBuf>) -> Command {
    let mut c = Command::new(path.into());
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    c
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET http://127.0.0.1:PORT/PATH; returns (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(port, "GET", path, None)
}

/// METHOD http://127.0.0.1:PORT/PATH with an optional (content type,
/// body); returns (status, body).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    )?;
    match body {
        Some((ty, b)) => write!(
            s,
            "Content-Type: {ty}\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )?,
        None => write!(s, "\r\n")?,
    }
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    // Undo chunked transfer encoding if present.
    let body = if resp
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Names of the BPF programs loaded in the kernel right now (by anyone).
pub fn loaded_bpf_programs() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .collect()
}
