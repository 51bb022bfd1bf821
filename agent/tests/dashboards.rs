//! The Grafana dashboard and the Prometheus rules are product: every
//! panel query and rule expression is valid PromQL (promtool) and returns
//! data from VictoriaMetrics scraping a real agent that watches the leaky
//! fixture, and GoroutineLeak is true for its leak and false for its
//! healthy sites. The rules' windows are minutes; here they are shrunk to
//! seconds (the same expressions otherwise), so the test takes ~40 s.

use e2e::{Proc, fixture, free_port, http_get, piped, require_root, wait_for};
use serde_json::Value;
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

const PROMTOOL: &str = "/var/cache/gmon-agent/prom/usr/bin/promtool";

fn repo(p: &str) -> PathBuf {
    e2e::repo_root().join(p)
}

/// The rules file's expressions, by rule name.
fn rules() -> Vec<(String, String)> {
    let y: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("deploy/prometheus/gmon-agent-rules.yaml")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for g in y["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let name = r["record"].as_str().or(r["alert"].as_str()).unwrap();
            out.push((
                name.to_owned(),
                r["expr"].as_str().unwrap().trim().to_owned(),
            ));
        }
    }
    out
}

/// Every panel's queries: (panel title, expr).
fn panel_queries() -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/gmon-agent.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            out.push((
                p["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

/// Grafana's variables as the dashboard's "All" sets them.
fn grafana(expr: &str, rate_interval: &str) -> String {
    expr.replace("$namespace", ".*")
        .replace("$pod", ".*")
        .replace("$__rate_interval", rate_interval)
}

/// The rules' windows and thresholds, minutes made seconds.
fn shrink(expr: &str) -> String {
    expr.replace("[15m:1m]", "[20s:2s]")
        .replace("offset 15m", "offset 20s")
        .replace("offset 1m", "offset 2s")
        .replace("> 900", "> 20")
        .replace("[5m]", "[30s]")
}

fn promtool_check(path: &Path) {
    let out = Command::new(PROMTOOL)
        .args(["check", "rules"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("{PROMTOOL}: {e} (scripts/fetch-go.sh fetches it)"));
    assert!(
        out.status.success(),
        "promtool refuses {}:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rules_and_every_panel_query_are_valid_promql() {
    promtool_check(&repo("deploy/prometheus/gmon-agent-rules.yaml"));
    // promtool parses expressions only inside rules: one recording rule
    // per panel query.
    let dir = tempfile::tempdir().unwrap();
    let mut y = String::from("groups:\n  - name: panels\n    rules:\n");
    for (i, (_, expr)) in panel_queries().iter().enumerate() {
        let e = grafana(expr, "1m");
        y.push_str(&format!(
            "      - record: panel:{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let f = dir.path().join("panels.yaml");
    std::fs::write(&f, y).unwrap();
    promtool_check(&f);
}

fn query(vm: u16, expr: &str) -> Vec<Value> {
    let q: String = url_encode(expr);
    let (status, body) = http_get(vm, &format!("/api/v1/query?query={q}")).unwrap();
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!(status, 200, "{expr}: {body}");
    assert_eq!(v["status"], "success", "{expr}: {body}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The creation frames of a series (stack_0..stack_4).
fn frames(series: &Value) -> Vec<String> {
    (0..5)
        .filter_map(|i| {
            series["metric"][format!("stack_{i}")]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[test]
fn dashboard_and_rules_return_data_and_the_leak_alert_tells_leak_from_healthy() {
    if !require_root("dashboard_and_rules") {
        return;
    }
    let bin = fixture("leaky");
    let mut leaky =
        Proc::spawn(piped(&bin).args(["-prefill=100", "-leak=10", "-healthy=50", "-life=50ms"]));
    assert!(
        leaky
            .stdout_lines()
            .next()
            .unwrap()
            .unwrap()
            .starts_with("ready")
    );
    // Node mode, as the chart runs it (per-process labels), on the fixture
    // only.
    let port = free_port();
    let _agent = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_gmon-agent"))
            .args([
                "--metrics",
                &port.to_string(),
                "--level",
                "WARN",
                "--include",
            ])
            .arg(&bin)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for(Duration::from_secs(15), || {
        let (_, m) = http_get(port, "/metrics").ok()?;
        m.contains("main.leakRequest").then_some(())
    })
    .expect("agent up and probing the fixture");
    // VictoriaMetrics scrapes it every second; the latest samples are
    // queryable at once.
    let dir = tempfile::tempdir().unwrap();
    let scrape = dir.path().join("scrape.yaml");
    std::fs::write(
        &scrape,
        format!(
            "scrape_configs:\n  - job_name: gmon-agent\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let vm_port = free_port();
    let _vm = victoria_scraping(vm_port, &dir.path().join("vm"), &scrape);
    // Long enough for the shrunk windows (20 s) and the leak's oldest
    // goroutine to pass the shrunk threshold (20 s).
    std::thread::sleep(Duration::from_secs(30));

    for (title, expr) in panel_queries() {
        // The leak table is the alert's condition: its windows shrink too.
        let e = shrink(&grafana(&expr, "10s"));
        let r = query(vm_port, &e);
        // The agent loses nothing here: the loss rates are 0, not absent.
        assert!(!r.is_empty(), "panel {title:?} returns no data: {e}");
    }
    for (name, expr) in rules() {
        let e = shrink(&expr);
        let r = query(vm_port, &e);
        match name.as_str() {
            // Nothing is lost: the condition is false (no series).
            "GmonAgentLosingEvents" => assert!(r.is_empty(), "{name}: {r:?}"),
            "GoroutineLeak" => {
                assert!(
                    r.iter()
                        .any(|s| frames(s).iter().any(|f| f == "main.leakRequest")),
                    "the leak does not fire: {r:?}"
                );
                for s in &r {
                    let f = frames(s);
                    assert!(
                        !f.iter()
                            .any(|f| f == "main.serveRequest" || f == "main.main"),
                        "a healthy site fires: {s}"
                    );
                    assert!(
                        f.iter().any(|f| f == "main.leakRequest"),
                        "not the leak: {s}"
                    );
                }
            }
            _ => assert!(!r.is_empty(), "rule {name} returns no data: {e}"),
        }
    }
}

/// VictoriaMetrics (the binary the OTLP tests use) with a scrape
/// configuration and no query latency offset (by default it hides the
/// last 30 s).
fn victoria_scraping(port: u16, dir: &Path, scrape: &Path) -> Proc {
    let vm = Proc::spawn(
        Command::new(e2e::otel::VM)
            .arg(format!("-storageDataPath={}", dir.display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-promscrape.config={}", scrape.display()))
            .arg("-search.latencyOffset=0s")
            .arg("-search.disableCache")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for(Duration::from_secs(10), || http_get(port, "/health").ok())
        .expect("VictoriaMetrics up");
    vm
}
