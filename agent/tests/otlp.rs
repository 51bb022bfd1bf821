//! OTLP export into a real metrics backend: gmon-agent -> OTLP/HTTP
//! protobuf -> VictoriaMetrics (Debian's, fetched by the bootstrap), whose
//! stored numbers must equal what the spawner itself reports, exactly.

use e2e::{Proc, fixture, free_port, http_get, piped, require_root, wait_for};
use std::{
    io::{BufRead, Write},
    process::{Command, Stdio},
    time::Duration,
};

const VM: &str = "/var/cache/gmon-agent/vm/usr/bin/victoria-metrics";

/// Latest value of each series matching `selector`, summed.
fn vm_sum(port: u16, selector: &str) -> f64 {
    let path = format!("/api/v1/export?match[]={}", selector.replace(' ', "%20"));
    let (_, body) = http_get(port, &path).unwrap();
    body.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["values"].as_array()?.last()?.as_f64())
        .sum()
}

#[test]
fn spawner_counts_reach_victoriametrics_exactly() {
    if !require_root("OTLP test") {
        return;
    }
    assert!(
        std::path::Path::new(VM).exists(),
        "{VM} is missing: scripts/fetch-go.sh (run by the bootstrap) fetches it"
    );
    let data = tempfile::tempdir().unwrap();
    let vm_port = free_port();
    let _vm = Proc::spawn(
        Command::new(VM)
            .arg(format!("-storageDataPath={}", data.path().display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{vm_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for(Duration::from_secs(10), || {
        http_get(vm_port, "/health").ok()
    })
    .expect("VictoriaMetrics up");

    let spawner = fixture("spawner");
    let mut agent = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_gmon-agent"))
            .arg("--path")
            .arg(&spawner)
            .args(["--metrics", "0"])
            .env(
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                format!("http://127.0.0.1:{vm_port}/opentelemetry/v1/metrics"),
            )
            .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
            .env("OTEL_SERVICE_NAME", "gmon-agent-test")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let mut err = std::io::BufReader::new(agent.child.stderr.take().unwrap()).lines();
    loop {
        let l = err.next().expect("agent attached").unwrap();
        if l.contains(" attached ") {
            break;
        }
    }
    std::thread::spawn(move || for _ in err {});

    let mut sp = Proc::spawn(piped(&spawner).arg("-rounds=10"));
    let mut out = sp.stdout_lines();
    assert!(out.next().unwrap().unwrap().starts_with("ready"));
    let mut stdin = sp.stdin();
    writeln!(stdin).unwrap();
    let mut per_site = std::collections::HashMap::<String, f64>::new();
    for l in out.by_ref() {
        let l = l.unwrap();
        if l.starts_with("done") {
            break;
        }
        let site = l
            .split_whitespace()
            .nth(1)
            .unwrap()
            .trim_start_matches("site=")
            .to_owned();
        *per_site.entry(site).or_default() += 1.0;
    }
    drop(stdin);
    let _ = sp.child.wait();
    // SIGTERM: the agent drains, exports the last interval, then exits.
    std::thread::sleep(Duration::from_millis(300));
    let st = agent
        .terminate(Duration::from_secs(15))
        .expect("agent exits");
    assert!(st.success(), "{st:?}");
    let _ = http_get(vm_port, "/internal/force_flush");

    for (site, want) in &per_site {
        let sel = |m: &str| {
            format!(
                "{{__name__=\"{m}\",go.goroutine.start=\"main.{site}\",service.name=\"gmon-agent-test\"}}"
            )
        };
        let got = wait_for(Duration::from_secs(10), || {
            let c = vm_sum(vm_port, &sel("go.goroutine.created"));
            (c == *want).then_some(c)
        });
        assert_eq!(got, Some(*want), "created for {site}");
        assert_eq!(
            vm_sum(vm_port, &sel("go.goroutine.exited")),
            *want,
            "exited for {site}"
        );
        assert_eq!(
            vm_sum(vm_port, &sel("go.goroutine.lifetime_count")),
            *want,
            "lifetimes for {site}"
        );
        assert_eq!(
            vm_sum(vm_port, &sel("go.goroutine.live")),
            0.0,
            "live for {site}"
        );
    }
    assert_eq!(per_site.values().sum::<f64>(), 40.0);
}
