//! gmon-agent installed under gmon's name: gmon's exact invocation and
//! checks, Go-flag-style help and errors, and the -pprof and -trace outputs
//! read by the standard tools.

use e2e::{
    fixture, free_port,
    gmon::{check_creation_lines, check_gmon_metrics, http_fixture, start_agent},
    http_get, require_root,
};
use std::{path::PathBuf, process::Command, time::Duration};

/// A directory holding `gmon`, a symlink to the gmon-agent binary.
fn gmon() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("gmon");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_gmon-agent"), &link).unwrap();
    (dir, link)
}

const GO: &str = "/usr/lib/go-1.23/bin/go";

#[test]
fn gmons_own_e2e_invocation_and_checks() {
    if !require_root("gmon e2e test") {
        return;
    }
    let (_dir, gmon) = gmon();
    let (_app, app_port) = http_fixture();
    // Exactly what gmon's end-to-end test runs.
    let mut agent = start_agent(
        Command::new(&gmon)
            .arg("-path")
            .arg(fixture("httpserver"))
            .args(["-metrics", "5500", "-level", "DEBUG"]),
    );
    for _ in 0..3 {
        let (status, _) = http_get(app_port, "/get/200").unwrap();
        assert_eq!(status, 200);
    }
    let lines = agent.stdout_until_quiet(Duration::from_secs(2));
    let created = check_creation_lines(&lines);
    assert!(created >= 4, "{created} creation lines in {lines:#?}");
    // At DEBUG, gmon also logs exits.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("level=DEBUG msg=\"goroutine is exited\"")),
        "{lines:#?}"
    );
    for l in &lines {
        assert!(l.starts_with("time=") && l.contains(" level="), "{l}");
    }
    let (status, body) = http_get(5500, "/metrics").unwrap();
    assert_eq!(status, 200);
    check_gmon_metrics(&body);
    let status = agent.proc.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn help_and_flag_errors_look_like_gmons() {
    let (_dir, gmon) = gmon();
    for h in ["-h", "-help", "--help"] {
        let out = Command::new(&gmon).arg(h).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{h}");
        let usage = String::from_utf8(out.stderr).unwrap();
        assert!(
            usage.starts_with(&format!("Usage of {}:\n", gmon.display())),
            "{usage}"
        );
        for flag in ["path", "pid", "metrics", "pprof", "trace", "level"] {
            assert!(
                usage.contains(&format!("\n  -{flag} ")),
                "-{flag} missing:\n{usage}"
            );
        }
    }
    let out = Command::new(&gmon)
        .args(["-path", "x", "-bogus", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("flag provided but not defined: -bogus\nUsage of "),
        "{err}"
    );
    // gmon needs -path: without it, an error, never node mode.
    for args in [&[][..], &["-metrics", "0"][..]] {
        let out = Command::new(&gmon).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.starts_with("missing required flag: -path\nUsage of "),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
    // Under its own name the agent keeps its GNU-style help.
    let out = Command::new(env!("CARGO_BIN_EXE_gmon-agent"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("--stack-depth")
    );
}

#[test]
fn pprof_profiles_and_chrome_trace_open_in_standard_tools() {
    if !require_root("pprof/trace test") {
        return;
    }
    let (_dir, gmon) = gmon();
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("trace.json");
    let (_app, app_port) = http_fixture();
    let pprof_port = free_port();
    let mut agent = start_agent(
        Command::new(&gmon)
            .arg("-path")
            .arg(fixture("httpserver"))
            .args(["-metrics", "0", "-pprof", &pprof_port.to_string(), "-trace"])
            .arg(&trace),
    );
    // Work for the agent while the CPU profile runs.
    let load = std::thread::spawn(move || {
        for _ in 0..200 {
            let _ = http_get(app_port, "/get/200");
        }
    });
    let (status, index) = http_get(pprof_port, "/debug/pprof/").unwrap();
    assert_eq!(status, 200, "{index}");
    let mut files = Vec::new();
    for (path, want) in [
        ("/debug/pprof/profile?seconds=2", "Type: cpu"),
        ("/debug/pprof/heap", "Type: inuse_space"),
    ] {
        let body = http_get_bytes(pprof_port, path);
        let file = tmp.path().join(format!("p{}.pb.gz", files.len()));
        std::fs::write(&file, &body).unwrap();
        let out = Command::new(GO)
            .args(["tool", "pprof", "-top"])
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(want),
            "go tool pprof -top {path}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        files.push(file);
    }
    load.join().unwrap();
    let status = agent.proc.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status:?}");
    let events: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&trace).unwrap()).expect("trace is JSON");
    let events = events.as_array().expect("a JSON array of trace events");
    let named = |n: &str| events.iter().any(|e| e["name"] == n && e["ph"] == "B");
    for span in ["analyse", "load", "attach", "drain"] {
        assert!(named(span), "no {span} span in the trace");
    }
    // Bad ports and files are one-line errors.
    let out = Command::new(&gmon)
        .arg("-path")
        .arg(fixture("httpserver"))
        .args(["-metrics", "0", "-trace", "/nonexistent/dir/t.json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("cannot create the -trace file /nonexistent/dir/t.json"),
        "{err}"
    );
}

/// GET returning the raw body (profiles are binary).
fn http_get_bytes(port: u16, path: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP response");
    let head = String::from_utf8_lossy(&buf[..split]);
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {path}: {head}\n{}",
        String::from_utf8_lossy(&buf[split..])
    );
    buf[split + 4..].to_vec()
}
