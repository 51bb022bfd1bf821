//! gmon's own end-to-end test, applied to gmon-agent: start the HTTP
//! fixture, attach, send 3 requests, then check the log lines and /metrics
//! (parsed with a Prometheus text-format parser).

use e2e::{
    fixture, free_port,
    gmon::{check_creation_lines, check_gmon_metrics, http_fixture, start_agent},
    http_get, loaded_bpf_programs, require_root,
};
use std::{process::Command, time::Duration};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gmon-agent"))
}

#[test]
fn http_fixture_like_gmons_e2e() {
    if !require_root("e2e test") {
        return;
    }
    let (_app, app_port) = http_fixture();
    let metrics_port = free_port();
    let mut agent = start_agent(agent().args(["-path"]).arg(fixture("httpserver")).args([
        "-metrics",
        &metrics_port.to_string(),
        "-level",
        "DEBUG",
    ]));
    for _ in 0..3 {
        let (status, body) = http_get(app_port, "/get/200").unwrap();
        assert_eq!((status, body.trim()), (200, "ok"));
    }
    // gmon's check: more than 3 valid "goroutine is created" lines.
    let lines = agent.stdout_until_quiet(Duration::from_secs(2));
    let valid = check_creation_lines(&lines);
    assert!(valid > 3, "only {valid} valid lines in {lines:#?}");

    let (status, body) = http_get(metrics_port, "/metrics").unwrap();
    assert_eq!(status, 200);
    let scrape = check_gmon_metrics(&body);
    // Self-metrics: nothing lost.
    for s in scrape
        .samples
        .iter()
        .filter(|s| s.metric == "gmon_agent_events_lost_total")
    {
        assert!(
            matches!(s.value, prometheus_parse::Value::Counter(v) if v == 0.0),
            "{s:?}"
        );
    }
    // Self-metrics mean what they say in standalone mode too: its one
    // binary, its one process; no pod index, so no k8s families.
    let value = |name: &str| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Counter(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(value("gmon_agent_binaries_attached"), 1.0);
    assert_eq!(value("gmon_agent_processes_tracked"), 1.0);
    assert_eq!(value("gmon_agent_uprobes_attached"), 2.0);
    // The binary's probes sit on instructions the kernel emulates.
    let sites: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "gmon_agent_probe_sites")
        .map(|s| {
            (
                s.labels.get("class").unwrap_or_default().to_owned(),
                s.value.clone(),
            )
        })
        .collect();
    assert!(
        matches!(&sites[..], [(c, prometheus_parse::Value::Gauge(v))] if c == "emulated" && *v == 1.0),
        "{sites:?}"
    );
    assert!(value("gmon_agent_processes_seen_total") >= 1.0);
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.metric.starts_with("gmon_agent_k8s_")),
        "k8s families in standalone mode"
    );

    // SIGTERM: clean exit, programs unloaded.
    let status = agent
        .proc
        .terminate(Duration::from_secs(10))
        .expect("agent exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    let names = loaded_bpf_programs();
    assert!(
        !names
            .iter()
            .any(|n| n == "newproc1_ret" || n.starts_with("goexit1")),
        "{names:?}"
    );
}

/// Runs the agent expecting a one-line error; returns that line.
fn one_line_error(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "expected failure: {cmd:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("gmon-agent: "))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{err}");
    assert!(out.stdout.is_empty());
    lines[0].to_owned()
}

#[test]
fn bad_inputs_give_one_clear_line_and_leave_nothing_attached() {
    let port = free_port().to_string();
    let run = |path: &std::path::Path| {
        one_line_error(agent().arg("--path").arg(path).args(["--metrics", &port]))
    };
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), "#!/bin/sh\n").unwrap();
    let cases = [
        (
            run("/nonexistent/app".as_ref()),
            "cannot open /nonexistent/app",
        ),
        (run(script.path()), "not an ELF executable"),
        (run("/bin/true".as_ref()), "not a Go program"),
        (run(&fixture("spawner-go1.19")), "built with go1.19"),
    ];
    for (line, want) in cases {
        assert!(line.contains(want), "{line:?} lacks {want:?}");
    }
    // A --pid that runs some other program.
    let line = one_line_error(agent().arg("--path").arg(fixture("spawner")).args([
        "--pid",
        &std::process::id().to_string(),
        "--metrics",
        &port,
    ]));
    assert!(line.contains("not the binary given with --path"), "{line}");
    // Node mode's config file: missing, or with a misspelt key.
    let line =
        one_line_error(agent().args(["--config", "/nonexistent/gmon.yaml", "--metrics", &port]));
    assert!(
        line.contains("cannot read the config file /nonexistent/gmon.yaml"),
        "{line}"
    );
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "inclde: ['/app']\n").unwrap();
    let line = one_line_error(
        agent()
            .arg("--config")
            .arg(bad.path())
            .args(["--metrics", &port]),
    );
    assert!(
        line.contains("unknown field") && line.contains("include, exclude, scope"),
        "{line}"
    );
    let line = one_line_error(agent().args(["--include", "[", "--metrics", &port]));
    assert!(line.contains("bad glob"), "{line}");
    if require_root("privilege test") {
        // Without privileges: the same valid binary, run as nobody.
        let line = one_line_error(
            Command::new("setpriv")
                .args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "--inh-caps=-all",
                ])
                .arg(env!("CARGO_BIN_EXE_gmon-agent"))
                .arg("--path")
                .arg(fixture("spawner"))
                .args(["--metrics", &port]),
        );
        assert!(
            line.contains("missing capability CAP_BPF") && line.contains("as root"),
            "{line}"
        );
        let names = loaded_bpf_programs();
        assert!(
            !names
                .iter()
                .any(|n| n == "newproc1_ret" || n.starts_with("goexit1")),
            "{names:?}"
        );
    }
}

#[test]
fn busy_metrics_port_fails_before_attaching() {
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let line = one_line_error(
        agent()
            .arg("--path")
            .arg(fixture("spawner"))
            .args(["--metrics", &port]),
    );
    assert!(
        line.contains("cannot listen") && line.contains("--metrics"),
        "{line}"
    );
}
