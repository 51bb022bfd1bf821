//! OTLP export into a real metrics backend: gmon-agent -> OTLP/HTTP
//! protobuf -> VictoriaMetrics (Debian's, fetched by the bootstrap), whose
//! stored numbers must equal what the spawner itself reports, exactly.

use e2e::{
    Proc, fixture, free_port, http_get,
    otel::{run_spawner, run_spawner_after, victoria, vm_sum},
    piped, require_root, wait_for,
};
use std::{
    io::BufRead,
    process::{Command, Stdio},
    time::Duration,
};

// Each agent traces every process of the spawner binary: one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn spawner_counts_reach_victoriametrics_exactly() {
    if !require_root("OTLP test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // One event per creation and exit (DEBUG), and counted in the kernel
    // (WARN; INFO counts alike and adds creation events for its lines).
    for level in ["DEBUG", "WARN"] {
        eprintln!("--level {level}");
        spawner_counts_exact(level);
    }
}

fn spawner_counts_exact(level: &str) {
    let data = tempfile::tempdir().unwrap();
    let vm_port = free_port();
    let _vm = victoria(vm_port, data.path());
    let mut agent = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_gmon-agent"))
            .arg("--path")
            .arg(fixture("spawner"))
            .args(["--metrics", "0", "--level", level])
            // The "attached" line, whatever --level hides.
            .env("GMON_AGENT_LOG", "gmon_agent=info")
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
    let per_site = run_spawner(10);
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

#[test]
fn totals_stay_exact_across_a_backend_outage() {
    if !require_root("OTLP test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let data = tempfile::tempdir().unwrap();
    let vm_port = free_port();
    let mut vm = victoria(vm_port, data.path());
    let metrics_port = free_port();
    let mut agent = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_gmon-agent"))
            .arg("--path")
            .arg(fixture("spawner"))
            .args(["--metrics", &metrics_port.to_string()])
            .arg("--otlp-endpoint")
            .arg(format!("http://127.0.0.1:{vm_port}/opentelemetry"))
            .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
            .env("OTEL_SERVICE_NAME", "gmon-agent-outage")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for(Duration::from_secs(20), || {
        let (_, body) = http_get(metrics_port, "/metrics").ok()?;
        body.contains("gmon_agent_uprobes_attached 2").then_some(())
    })
    .expect("agent attached");
    let mut want = run_spawner(5);
    // The backend goes away; goroutines keep being created meanwhile.
    vm.terminate(Duration::from_secs(10))
        .expect("VictoriaMetrics stops");
    for (site, n) in run_spawner(5) {
        *want.entry(site).or_default() += n;
    }
    let failed = wait_for(Duration::from_secs(10), || {
        let (_, body) = http_get(metrics_port, "/metrics").ok()?;
        body.lines()
            .find(|l| l.starts_with("gmon_agent_otlp_exports_total{result=\"failed\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .filter(|&n| n >= 1.0)
    });
    assert!(failed.is_some(), "export failures not counted");
    // Back up on the same data: cumulative totals include the outage.
    let _vm = victoria(vm_port, data.path());
    for (site, n) in &want {
        let sel = format!(
            "{{__name__=\"go.goroutine.created\",go.goroutine.start=\"main.{site}\",service.name=\"gmon-agent-outage\"}}"
        );
        let got = wait_for(Duration::from_secs(15), || {
            let _ = http_get(vm_port, "/internal/force_flush");
            let c = vm_sum(vm_port, &sel);
            (c == *n).then_some(c)
        });
        assert_eq!(got, Some(*n), "created for {site} after the outage");
    }
    let st = agent
        .terminate(Duration::from_secs(15))
        .expect("agent exits");
    assert!(st.success(), "{st:?}");
}

#[test]
fn node_mode_exports_per_process_with_its_release() {
    if !require_root("OTLP test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let data = tempfile::tempdir().unwrap();
    let vm_port = free_port();
    let _vm = victoria(vm_port, data.path());
    let metrics_port = free_port();
    let fixtures = format!("{}/*", fixture("spawner").parent().unwrap().display());
    let mut agent = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_gmon-agent"))
            .args([
                "--metrics",
                &metrics_port.to_string(),
                "--include",
                &fixtures,
            ])
            .arg("--otlp-endpoint")
            .arg(format!("http://127.0.0.1:{vm_port}/opentelemetry"))
            .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
            .env("OTEL_SERVICE_NAME", "gmon-agent-node")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(data.path().join("agent.log")).unwrap()),
    );
    wait_for(Duration::from_secs(20), || {
        let (_, body) = http_get(metrics_port, "/metrics").ok()?;
        body.contains("gmon_agent_binaries_attached").then_some(())
    })
    .expect("agent up");
    // Start its goroutines once node mode has found the process.
    let want = run_spawner_after(5, || {
        wait_for(Duration::from_secs(5), || {
            let (_, body) = http_get(metrics_port, "/metrics").ok()?;
            body.contains("gmon_agent_binaries_attached 1")
                .then_some(())
        })
        .expect("spawner probed");
    });
    // Node mode counts its exports too.
    let ok = wait_for(Duration::from_secs(10), || {
        e2e::otel::scrape_value(metrics_port, "gmon_agent_otlp_exports_total{result=\"ok\"}")
            .filter(|&n| n >= 1.0)
    });
    assert!(ok.is_some(), "node mode's OTLP exports not counted");
    let st = agent
        .terminate(Duration::from_secs(15))
        .expect("agent exits");
    assert!(st.success(), "{st:?}");
    let _ = http_get(vm_port, "/internal/force_flush");
    let exe = fixture("spawner").display().to_string();
    for (site, n) in &want {
        let sel = format!(
            "{{__name__=\"go.goroutine.created\",go.goroutine.start=\"main.{site}\",service.name=\"gmon-agent-node\",process.runtime.version=\"go1.23.5\",process.executable.path=\"{exe}\"}}"
        );
        let got = wait_for(Duration::from_secs(10), || {
            let _ = http_get(vm_port, "/internal/force_flush");
            let c = vm_sum(vm_port, &sel);
            (c == *n).then_some(c)
        });
        if got != Some(*n) {
            let (_, all) = http_get(
                vm_port,
                "/api/v1/export?match[]={__name__=\"go.goroutine.created\"}",
            )
            .unwrap();
            let log = std::fs::read_to_string(data.path().join("agent.log")).unwrap_or_default();
            panic!("created for {site} in node mode: want {n}; stored:\n{all}\nagent:\n{log}");
        }
    }
}

#[test]
fn goroutines_alive_at_attach_and_their_age_reach_victoriametrics() {
    if !require_root("OTLP test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for level in ["DEBUG", "WARN"] {
        let data = tempfile::tempdir().unwrap();
        let vm_port = free_port();
        let _vm = victoria(vm_port, data.path());
        // 30 leaked before the agent starts, none after.
        let mut leaky =
            Proc::spawn(piped(fixture("leaky")).args(["-prefill=30", "-leak=0", "-healthy=0"]));
        assert!(
            leaky
                .stdout_lines()
                .next()
                .unwrap()
                .unwrap()
                .starts_with("ready")
        );
        let mut agent = Proc::spawn(
            Command::new(env!("CARGO_BIN_EXE_gmon-agent"))
                .arg("--path")
                .arg(fixture("leaky"))
                .args(["--metrics", "0", "--level", level])
                .env(
                    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                    format!("http://127.0.0.1:{vm_port}/opentelemetry/v1/metrics"),
                )
                .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
                .env("OTEL_SERVICE_NAME", "gmon-agent-attach")
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let sel = |m: &str| {
            format!(
                "{{__name__=\"{m}\",go.goroutine.start=\"main.waitForReply\",service.name=\"gmon-agent-attach\"}}"
            )
        };
        // New series become searchable in VictoriaMetrics within a second
        // or so: every value is waited for.
        let value = |m: &str, want: f64| {
            wait_for(Duration::from_secs(15), || {
                let _ = http_get(vm_port, "/internal/force_flush");
                let n = vm_sum(vm_port, &sel(m));
                (n == want).then_some(n)
            })
        };
        assert_eq!(
            value("go.goroutine.seen_at_attach", 30.0),
            Some(30.0),
            "{level}"
        );
        // Counted as created too, and live, with an age.
        assert_eq!(value("go.goroutine.created", 30.0), Some(30.0), "{level}");
        assert_eq!(value("go.goroutine.live", 30.0), Some(30.0), "{level}");
        let age = wait_for(Duration::from_secs(10), || {
            let _ = http_get(vm_port, "/internal/force_flush");
            let a = vm_sum(vm_port, &sel("go.goroutine.oldest_age"));
            (a >= 1.0).then_some(a)
        });
        assert!(age.is_some(), "{level}: oldest_age never reached 1 s");
        agent
            .terminate(Duration::from_secs(15))
            .expect("agent exits");
    }
}
