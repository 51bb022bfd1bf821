//! The full pipeline: fixture + gmon-agent -> OpenTelemetry Collector
//! (built from Debian's collector library) -> VictoriaMetrics. The numbers
//! stored at the end must equal what the spawner itself reports creating
//! and ending, exactly, over gRPC and HTTP, across a 30 s collector outage
//! and through TLS.

use e2e::{
    Proc, fixture, free_port,
    otel::{Collector, run_spawner, scrape_value, test_certificates, victoria, vm_wait_sum},
    require_root, wait_for,
};
use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

// Each agent traces every process of the spawner binary: one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// VictoriaMetrics with its data in `dir`, and a collector feeding it:
/// (backend port, backend, collector).
fn pipeline(dir: &std::path::Path, tls: Option<&e2e::otel::ServerTls>) -> (u16, Proc, Collector) {
    let vm_port = free_port();
    let vm = victoria(vm_port, &dir.join("vm"));
    let collector = Collector::start(dir, vm_port, tls);
    (vm_port, vm, collector)
}

/// A standalone agent on the spawner exporting to `endpoint`.
fn agent(
    endpoint: &str,
    protocol: &str,
    service: &str,
    extra: &[&str],
    log: &std::path::Path,
) -> (Proc, u16) {
    let metrics_port = free_port();
    let agent = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_gmon-agent"))
            .arg("--path")
            .arg(fixture("spawner"))
            .args(["--metrics", &metrics_port.to_string()])
            .args(["--otlp-endpoint", endpoint, "--otlp-protocol", protocol])
            .args(["--otlp-interval", "300ms"])
            .args(extra)
            .env("OTEL_SERVICE_NAME", service)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap()),
    );
    wait_for(Duration::from_secs(20), || {
        (scrape_value(metrics_port, "gmon_agent_uprobes_attached")? >= 2.0).then_some(())
    })
    .expect("agent attached");
    (agent, metrics_port)
}

/// Checks every per-site total in VictoriaMetrics against the spawner's.
fn check_totals(vm_port: u16, service: &str, want: &HashMap<String, f64>, what: &str) {
    for (site, n) in want {
        let sel = |m: &str| {
            format!(
                "{{__name__=\"{m}\",go.goroutine.start=\"main.{site}\",service.name=\"{service}\"}}"
            )
        };
        let wait = Duration::from_secs(15);
        for m in [
            "go.goroutine.created",
            "go.goroutine.exited",
            "go.goroutine.lifetime_count",
        ] {
            let got = vm_wait_sum(vm_port, &sel(m), *n, wait);
            assert_eq!(got, *n, "{what}: {m} for {site}");
        }
        assert_eq!(
            vm_wait_sum(vm_port, &sel("go.goroutine.live"), 0.0, wait),
            0.0,
            "{what}: live for {site}"
        );
    }
}

#[test]
fn through_the_collector_over_grpc_then_http_protobuf_then_json() {
    if !require_root("collector test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (vm_port, _vm, collector) = pipeline(dir.path(), None);
    for (protocol, port, path) in [
        ("grpc", collector.grpc_port, ""),
        ("http/protobuf", collector.http_port, ""),
        ("http/json", collector.http_port, ""),
    ] {
        let service = format!("gmon-agent-{}", protocol.replace('/', "-"));
        let endpoint = format!("http://127.0.0.1:{port}{path}");
        let log = dir
            .path()
            .join(format!("agent-{}.log", protocol.replace('/', "-")));
        let (mut agent, _) = agent(&endpoint, protocol, &service, &["--otlp-logs"], &log);
        let want = run_spawner(10);
        assert_eq!(want.values().sum::<f64>(), 40.0);
        // SIGTERM: the last interval is exported before the agent exits.
        let st = agent
            .terminate(Duration::from_secs(15))
            .expect("agent exits");
        assert!(st.success(), "{st:?}");
        check_totals(vm_port, &service, &want, protocol);
    }
    // The collector's own debug exporter saw the instruments with their
    // units and semantic-convention attributes, and the agent's own logs.
    let log = collector.log_text();
    let attached = log.matches("Body: Str(attached)").count();
    assert_eq!(
        attached, 3,
        "the agent's \"attached\" log, once per protocol"
    );
    for s in [
        // The lifetime buckets: 1 ms to 24 h.
        "ExplicitBounds #0: 0.001000",
        "ExplicitBounds #15: 86400.000000",
        "go.goroutine.lifetime",
        "-> Unit: s",
        "-> Unit: {goroutine}",
        "process.runtime.version: Str(go1.23.5)",
        "go.goroutine.creator: Str(main.startChild)",
    ] {
        assert!(log.contains(s), "collector debug output lacks {s:?}");
    }
}

#[test]
fn series_past_the_limit_are_counted() {
    if !require_root("collector test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (vm_port, _vm, collector) = pipeline(dir.path(), None);
    let log = dir.path().join("agent.log");
    let (mut agent, metrics_port) = agent(
        &format!("http://127.0.0.1:{}", collector.grpc_port),
        "grpc",
        "gmon-agent-limit",
        &["--otlp-max-series", "2"],
        &log,
    );
    // 4 spawner sites (and the Go runtime's own), 2 series allowed.
    run_spawner(1);
    let n = wait_for(Duration::from_secs(10), || {
        scrape_value(metrics_port, "gmon_agent_otlp_series_overflowed_total").filter(|&n| n >= 2.0)
    });
    assert!(n.is_some(), "{n:?}");
    let ok = scrape_value(metrics_port, "gmon_agent_otlp_exports_total{result=\"ok\"}");
    assert!(ok.is_some_and(|n| n >= 1.0), "exports counted: {ok:?}");
    let st = agent
        .terminate(Duration::from_secs(15))
        .expect("agent exits");
    assert!(st.success(), "{st:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("series limit reached").count(), 1, "{text}");
    // The SDK's overflow series carries the other sites' goroutines, and
    // nothing is lost: all series together hold every goroutine.
    let all = "{__name__=\"go.goroutine.created\",service.name=\"gmon-agent-limit\"}";
    let series = wait_for(Duration::from_secs(15), || {
        let _ = e2e::http_get(vm_port, "/internal/force_flush");
        let s = e2e::otel::vm_series(vm_port, all);
        s.iter()
            .any(|s| s.contains_key("otel.metric.overflow"))
            .then_some(s)
    })
    .unwrap_or_default();
    eprintln!("series: {}, overflowed: {n:?}", series.len());
    assert!(
        series
            .iter()
            .any(|s| s.get("otel.metric.overflow").is_some()),
        "no overflow series: {series:#?}"
    );
    assert!(series.len() <= 3, "{series:#?}");
}

#[test]
fn totals_stay_exact_with_the_collector_late_and_then_down_30s() {
    if !require_root("collector test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (vm_port, _vm, mut collector) = pipeline(dir.path(), None);
    // Unreachable at start: the agent runs anyway.
    collector.stop();
    let service = "gmon-agent-collector-outage";
    let endpoint = format!("http://127.0.0.1:{}", collector.grpc_port);
    let (mut agent, metrics_port) = agent(
        &endpoint,
        "grpc",
        service,
        &[],
        &dir.path().join("agent.log"),
    );
    let rss = |pid: u32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let mut want = run_spawner(5);
    let failed_at_start = wait_for(Duration::from_secs(10), || {
        scrape_value(
            metrics_port,
            "gmon_agent_otlp_exports_total{result=\"failed\"}",
        )
        .filter(|&n| n >= 1.0)
    });
    assert!(
        failed_at_start.is_some(),
        "failures while unreachable at start"
    );
    collector.restart();
    check_totals(vm_port, service, &want, "collector started after the agent");

    collector.stop();
    let down = Instant::now();
    let rss_at_outage = rss(agent.pid());
    // Goroutines keep coming while the collector is away for 30 s.
    while down.elapsed() < Duration::from_secs(30) {
        for (site, n) in run_spawner(5) {
            *want.entry(site).or_default() += n;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let failed = scrape_value(
        metrics_port,
        "gmon_agent_otlp_exports_total{result=\"failed\"}",
    )
    .unwrap_or(0.0);
    // One export per 300 ms interval, each failing.
    assert!(failed >= 20.0, "export failures counted: {failed}");
    let grown_kib = rss(agent.pid()).saturating_sub(rss_at_outage);
    assert!(
        grown_kib < 8 << 10,
        "agent RSS grew {grown_kib} KiB during the outage"
    );
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    let warnings = log.matches("OTLP export failed").count();
    assert!(
        (1..=1).contains(&warnings),
        "failures logged {warnings} times in 30 s:\n{log}"
    );

    collector.restart();
    let total: f64 = want.values().sum();
    eprintln!(
        "outage: {:.0} s, {failed} failed exports, RSS +{grown_kib} KiB, {total} goroutines in all",
        down.elapsed().as_secs_f64()
    );
    // Cumulative temporality: the first export after recovery carries
    // everything, so the totals are exact without a restart of the agent.
    check_totals(vm_port, service, &want, "after the outage");
    let st = agent
        .terminate(Duration::from_secs(15))
        .expect("agent exits");
    assert!(st.success(), "{st:?}");
}

#[test]
fn mutual_tls_exponential_histograms_and_stack_attributes() {
    if !require_root("collector test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let certs = test_certificates(dir.path());
    // Mutual TLS: the collector wants a client certificate from our CA.
    let (vm_port, _vm, collector) = pipeline(dir.path(), Some(&certs.server));
    let (ca, cert, key) = (
        certs.ca.display().to_string(),
        certs.client_cert.display().to_string(),
        certs.client_key.display().to_string(),
    );
    for (protocol, port) in [
        ("grpc", collector.grpc_port),
        ("http/protobuf", collector.http_port),
    ] {
        let service = format!("gmon-agent-tls-{}", protocol.replace('/', "-"));
        let endpoint = format!("https://127.0.0.1:{port}");
        let log = dir
            .path()
            .join(format!("agent-tls-{}.log", protocol.replace('/', "-")));
        let (mut agent, metrics_port) = agent(
            &endpoint,
            protocol,
            &service,
            &[
                "--otlp-certificate",
                &ca,
                "--otlp-client-certificate",
                &cert,
                "--otlp-client-key",
                &key,
                "--otlp-histogram",
                "exponential",
                "--otlp-stack-attribute",
            ],
            &log,
        );
        let want = run_spawner(3);
        let st = agent
            .terminate(Duration::from_secs(15))
            .expect("agent exits");
        assert!(st.success(), "{st:?}");
        let sel = format!(
            "{{__name__=\"go.goroutine.created\",service.name=\"{service}\",go.goroutine.start=~\"main[.].*\"}}"
        );
        let got = vm_wait_sum(vm_port, &sel, 12.0, Duration::from_secs(15));
        assert_eq!(
            got,
            12.0,
            "{protocol} over TLS: {:?}\n{}",
            want,
            std::fs::read_to_string(&log).unwrap()
        );
        let _ = metrics_port;
    }
    let log = collector.log_text();
    assert!(
        log.contains("-> DataType: ExponentialHistogram"),
        "no exponential histogram reached the collector"
    );
    // The attribute is the stack's frames, one per line.
    let stack = log
        .split("go.goroutine.stack: Str(")
        .skip(1)
        .map(|s| s.split(")\n").next().unwrap_or(s))
        .find(|s| s.contains("\nmain.startChild /") && s.contains("\nmain.nestedParent /"));
    assert!(
        stack.is_some(),
        "no stack attribute with main.startChild reached the collector: {:?}",
        log.lines()
            .filter(|l| l.contains("go.goroutine.stack"))
            .take(3)
            .collect::<Vec<_>>()
    );
}

#[test]
fn the_example_collector_pipeline_is_valid() {
    // No root needed: the collector only parses and validates it.
    let config = e2e::repo_root().join("deploy/otel-collector.yaml");
    let out = Command::new(e2e::otel::COLLECTOR)
        .arg("validate")
        .arg(format!("--config={}", config.display()))
        .output()
        .expect("the collector runs (scripts/build-test-servers.sh builds it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
