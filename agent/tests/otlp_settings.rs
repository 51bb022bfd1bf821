//! The OTLP settings users set, each against the real collector (or a
//! server that never answers): gzip compression on gRPC and HTTP, checked
//! on the wire and by exact totals; OTEL_SDK_DISABLED; logs over another
//! protocol than metrics; the export timeout; delta temporality, whose
//! exports stop carrying an exited process's counters.

use e2e::{
    Proc, fixture, free_port, http_get,
    otel::{Collector, run_spawner, scrape_value, victoria, vm_sum, vm_wait_sum},
    piped, require_root,
    tap::{Tap, black_hole, grpc_compressed_flags, http_gzip},
    wait_for,
};
use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

// Each agent traces every process of the spawner binary: one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The agent on the spawner with these OTEL_* variables; (agent, metrics port).
fn agent(env: &[(&str, String)], extra: &[&str], log: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gmon-agent"));
    cmd.arg("--path")
        .arg(fixture("spawner"))
        .args(["--metrics", &port.to_string()])
        .args(extra)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let a = Proc::spawn(&mut cmd);
    wait_for(Duration::from_secs(20), || {
        (scrape_value(port, "gmon_agent_uprobes_attached")? >= 2.0).then_some(())
    })
    .expect("agent attached");
    (a, port)
}

fn exact(vm: u16, service: &str, want: &std::collections::HashMap<String, f64>, what: &str) {
    for (site, n) in want {
        let sel = format!(
            "{{__name__=\"go.goroutine.created\",go.goroutine.start=\"main.{site}\",service.name=\"{service}\"}}"
        );
        assert_eq!(
            vm_wait_sum(vm, &sel, *n, Duration::from_secs(15)),
            *n,
            "{what}: {site}"
        );
    }
}

#[test]
fn gzip_on_grpc_and_http_is_on_the_wire_and_totals_stay_exact() {
    if !require_root("OTLP settings test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let vm = free_port();
    let _vm = victoria(vm, &dir.path().join("vm"));
    let collector = Collector::start(dir.path(), vm, None);
    for (protocol, port) in [
        ("grpc", collector.grpc_port),
        ("http/protobuf", collector.http_port),
    ] {
        let tap = Tap::start(port);
        let service = format!("gzip-{}", protocol.replace('/', "-"));
        let (mut a, _) = agent(
            &[
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("http://127.0.0.1:{}", tap.port),
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.into()),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()),
                ("OTEL_SERVICE_NAME", service.clone()),
            ],
            &[],
            &dir.path().join(format!("{service}.log")),
        );
        let want = run_spawner(5);
        a.terminate(Duration::from_secs(15)).expect("agent exits");
        exact(vm, &service, &want, protocol);
        let sent = tap.sent();
        assert!(!sent.is_empty(), "{protocol}: nothing went through the tap");
        match protocol {
            "grpc" => {
                let flags: Vec<u8> = sent.iter().flat_map(|c| grpc_compressed_flags(c)).collect();
                assert!(!flags.is_empty(), "no gRPC message seen");
                assert!(
                    flags.iter().all(|&f| f == 1),
                    "uncompressed gRPC messages: {flags:?}"
                );
            }
            _ => assert!(
                sent.iter().all(|c| http_gzip(c)),
                "an HTTP export without gzip"
            ),
        }
    }
}

#[test]
fn sdk_disabled_sends_nothing_and_says_so() {
    if !require_root("OTLP settings test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let vm = free_port();
    let _vm = victoria(vm, &dir.path().join("vm"));
    let log = dir.path().join("agent.log");
    let (mut a, port) = agent(
        &[
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                format!("http://127.0.0.1:{vm}/opentelemetry/v1/metrics"),
            ),
            ("OTEL_SDK_DISABLED", "true".into()),
            ("OTEL_SERVICE_NAME", "disabled".into()),
        ],
        &[],
        &log,
    );
    run_spawner(3);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        scrape_value(port, "gmon_agent_otlp_exports_total").unwrap_or(0.0),
        0.0
    );
    a.terminate(Duration::from_secs(15)).expect("agent exits");
    let _ = http_get(vm, "/internal/force_flush");
    assert_eq!(vm_sum(vm, "{service.name=\"disabled\"}"), 0.0);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("OTLP export off: OTEL_SDK_DISABLED=true"),
        "{text}"
    );
}

#[test]
fn logs_and_metrics_each_over_their_own_protocol() {
    if !require_root("OTLP settings test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let vm = free_port();
    let _vm = victoria(vm, &dir.path().join("vm"));
    let collector = Collector::start(dir.path(), vm, None);
    let (mut a, _) = agent(
        &[
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                format!("http://127.0.0.1:{}", collector.grpc_port),
            ),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc".into()),
            (
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                format!("http://127.0.0.1:{}/v1/logs", collector.http_port),
            ),
            ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf".into()),
            ("OTEL_SERVICE_NAME", "split".into()),
        ],
        &["--otlp-logs"],
        &dir.path().join("agent.log"),
    );
    let want = run_spawner(5);
    a.terminate(Duration::from_secs(15)).expect("agent exits");
    exact(vm, "split", &want, "metrics over gRPC");
    let seen = wait_for(Duration::from_secs(10), || {
        collector
            .log_text()
            .contains("Body: Str(attached)")
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "the agent's log record over HTTP:\n{}",
        collector.log_text()
    );
}

#[test]
fn the_export_timeout_bounds_a_backend_that_never_answers() {
    if !require_root("OTLP settings test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let hole = black_hole();
    let (mut a, port) = agent(
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{hole}"),
            ),
            ("OTEL_METRIC_EXPORT_TIMEOUT", "400".into()),
        ],
        &[],
        &dir.path().join("agent.log"),
    );
    // Something to export (the SDK skips empty exports); then every
    // 300 ms an export starts and gives up after 400 ms: a few failures
    // within seconds, none hanging the agent.
    run_spawner(2);
    let failed = wait_for(Duration::from_secs(5), || {
        let f = scrape_value(port, "gmon_agent_otlp_exports_total{result=\"failed\"}")?;
        (f >= 2.0).then_some(f)
    });
    assert!(failed.is_some(), "no export timed out");
    let t = std::time::Instant::now();
    a.terminate(Duration::from_secs(10))
        .expect("agent exits despite the hung backend");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn delta_temporality_stops_sending_an_exited_process() {
    if !require_root("OTLP settings test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let vm = free_port();
    let _vm = victoria(vm, &dir.path().join("vm"));
    let collector = Collector::start(dir.path(), vm, None);
    // Node mode (one series set per process), on the spawner only.
    let port = free_port();
    let mut a = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_gmon-agent"))
            .args([
                "--metrics",
                &port.to_string(),
                "--level",
                "WARN",
                "--include",
            ])
            .arg(fixture("spawner"))
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", collector.http_port),
            )
            .env("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
            .env("OTEL_SERVICE_NAME", "delta")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let mut sp = Proc::spawn(piped(fixture("spawner")).arg("-rounds=3"));
    let mut out = sp.stdout_lines();
    assert!(out.next().unwrap().unwrap().starts_with("ready"));
    let pid = sp.pid();
    let mut stdin = sp.stdin();
    std::thread::sleep(Duration::from_secs(1));
    writeln!(stdin).unwrap();
    assert!(
        out.by_ref()
            .map_while(Result::ok)
            .any(|l| l.starts_with("done"))
    );
    let pid_attr = format!("process.pid: Int({pid})");
    wait_for(Duration::from_secs(10), || {
        collector.log_text().contains(&pid_attr).then_some(())
    })
    .expect("the process's goroutines exported");
    assert!(
        collector
            .log_text()
            .contains("AggregationTemporality: Delta")
    );
    drop(stdin);
    let _ = sp.child.wait();
    // Once the process is gone (and its last counts sent), exports stop
    // carrying its counters: the count of its data points stops growing.
    std::thread::sleep(Duration::from_secs(3));
    let count = |t: &str| {
        t.split("Metric #")
            .filter(|m| m.contains("Name: go.goroutine.created") && m.contains(&pid_attr))
            .count()
    };
    let before = count(&collector.log_text());
    std::thread::sleep(Duration::from_secs(2));
    let after = count(&collector.log_text());
    assert_eq!(
        before, after,
        "created data points for pid {pid} still exported after it exited"
    );
    assert!(before > 0);
    a.terminate(Duration::from_secs(15)).expect("agent exits");
}

/// The spans of one name the collector's debug exporter printed.
fn spans(log: &str, name: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.trim_start().starts_with("Name") && l.trim_end().ends_with(&format!(": {name}"))
        })
        .count()
}

#[test]
fn the_agents_own_spans_arrive_as_traces_sampled_as_asked() {
    if !require_root("OTLP settings test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let vm = free_port();
    let _vm = victoria(vm, &dir.path().join("vm"));
    let collector = Collector::start(dir.path(), vm, None);
    let base = format!("http://127.0.0.1:{}", collector.http_port);
    // The default sampler, over HTTP: every rare span (load, attach, the
    // attach walk), with the metrics' resource attributes.
    let (mut a, _) = agent(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", base.clone()),
            ("OTEL_SERVICE_NAME", "traced".into()),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=test".into(),
            ),
        ],
        &["--otlp-traces"],
        &dir.path().join("a1.log"),
    );
    run_spawner(2);
    std::thread::sleep(Duration::from_secs(1));
    a.terminate(Duration::from_secs(15)).expect("agent exits");
    let log = wait_for(Duration::from_secs(10), || {
        let t = collector.log_text();
        (spans(&t, "attach") >= 1 && spans(&t, "load") >= 1 && spans(&t, "attach_walk") >= 1)
            .then_some(t)
    })
    .unwrap_or_else(|| {
        panic!(
            "no attach, load and attach_walk spans:\n{}",
            collector.log_text()
        )
    });
    assert!(log.contains("service.name: Str(traced)"), "{log}");
    assert!(log.contains("deployment.environment: Str(test)"), "{log}");
    // 1% of ~20 drains a second: at most a handful in a few seconds.
    let default_drains = spans(&log, "drain");
    assert!(default_drains <= 10, "{default_drains} drain spans at 1%");
    // OTEL_TRACES_EXPORTER, a traces-only endpoint and protocol (gRPC),
    // and always_on: every drain is a span too.
    let (mut a, _) = agent(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", base),
            ("OTEL_TRACES_EXPORTER", "otlp".into()),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                format!("http://127.0.0.1:{}", collector.grpc_port),
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc".into()),
            ("OTEL_TRACES_SAMPLER", "always_on".into()),
            ("OTEL_SERVICE_NAME", "traced-all".into()),
        ],
        &[],
        &dir.path().join("a2.log"),
    );
    std::thread::sleep(Duration::from_secs(2));
    a.terminate(Duration::from_secs(15)).expect("agent exits");
    let drains = wait_for(Duration::from_secs(10), || {
        let n = spans(&collector.log_text(), "drain") - default_drains;
        (n >= 20).then_some(n)
    });
    assert!(drains.is_some(), "always_on: drain spans missing");
    assert!(spans(&collector.log_text(), "housekeeping") >= 1);
}
