//! Least privilege, checked: the agent started as root with exactly the
//! chart's capability set (BPF, PERFMON, SYS_ADMIN, SYS_PTRACE,
//! DAC_READ_SEARCH: setpriv's bounding set, so nothing else is effective)
//! works in both modes, counts a fixture's goroutines exactly and reads the
//! goroutines alive at attach; with each of them missing in turn it exits
//! with one line naming the capability (or, for DAC_READ_SEARCH, which
//! only node mode needs, still works in standalone mode).

use e2e::{Proc, fixture, free_port, http_get, otel::scrape_value, piped, require_root, wait_for};
use std::{
    io::Write,
    process::{Command, Stdio},
    sync::Mutex,
    time::Duration,
};

static SERIAL: Mutex<()> = Mutex::new(());

/// The chart's securityContext.capabilities.add, as setpriv names them.
const CHART: [&str; 5] = [
    "bpf",
    "perfmon",
    "sys_admin",
    "sys_ptrace",
    "dac_read_search",
];
/// The one only node mode needs (opening other users' executables).
const NODE_ONLY: [&str; 1] = ["dac_read_search"];

/// The agent under `setpriv` with only `caps` in its bounding set (root's
/// capabilities after exec are the bounding set).
fn agent(caps: &[&str], mode: &[&str], port: u16) -> Command {
    let set = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut c = Command::new("setpriv");
    c.arg(format!("--bounding-set={set}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_gmon-agent"))
        .args(mode)
        .args(["--metrics", &port.to_string(), "--level", "WARN"]);
    c
}

fn modes() -> [(&'static str, Vec<String>); 2] {
    let spawner = fixture("spawner").display().to_string();
    [
        ("node", vec!["--include".into(), spawner.clone()]),
        ("standalone", vec!["--path".into(), spawner]),
    ]
}

/// Starts the agent with `caps` and checks that it works: a spawner with
/// goroutines parked before the agent is read at attach, and its rounds
/// are counted exactly.
fn works(caps: &[&str], mode: &[String], what: &str) {
    let mut sp = Proc::spawn(piped(fixture("spawner")).args(["-rounds=5", "-before=7"]));
    let mut out = sp.stdout_lines();
    assert!(out.next().unwrap().unwrap().starts_with("ready"));
    let port = free_port();
    let mode: Vec<&str> = mode.iter().map(String::as_str).collect();
    let mut a = Proc::spawn(
        agent(caps, &mode, port)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for(Duration::from_secs(20), || {
        (scrape_value(port, "gmon_agent_goroutines_seen_at_attach_total")? >= 8.0).then_some(())
    })
    .unwrap_or_else(|| panic!("{what}: goroutines alive at attach not read"));
    let mut stdin = sp.stdin();
    writeln!(stdin).unwrap();
    assert!(
        out.by_ref()
            .map_while(Result::ok)
            .any(|l| l.starts_with("done"))
    );
    let counted = wait_for(Duration::from_secs(10), || {
        let (_, v) = http_get(port, "/goroutines?format=json").ok()?;
        let v: serde_json::Value = serde_json::from_str(&v).ok()?;
        let short = v["sites"]
            .as_array()?
            .iter()
            .find(|r| r["start"] == "main.shortWorker")?;
        (short["created"] == 5 && short["exited"] == 5).then_some(())
    });
    assert!(counted.is_some(), "{what}: rounds not counted exactly");
    assert_eq!(
        scrape_value(port, "gmon_agent_attach_walks_total{result=\"ok\"}"),
        Some(1.0),
        "{what}"
    );
    drop(stdin);
    a.terminate(Duration::from_secs(10)).expect("agent exits");
}

#[test]
fn the_charts_capabilities_are_enough_and_each_is_needed() {
    if !require_root("privileges test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for (name, mode) in modes() {
        works(
            &CHART,
            &mode,
            &format!("{name} mode with the chart's capabilities"),
        );
        for missing in CHART {
            let caps: Vec<&str> = CHART.iter().copied().filter(|c| *c != missing).collect();
            let what = format!("{name} mode without CAP_{}", missing.to_uppercase());
            if name == "standalone" && NODE_ONLY.contains(&missing) {
                works(&caps, &mode, &what);
                continue;
            }
            let mode: Vec<&str> = mode.iter().map(String::as_str).collect();
            let out = agent(&caps, &mode, free_port()).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{what}: started");
            let lines: Vec<&str> = err.lines().collect();
            assert_eq!(lines.len(), 1, "{what}: {err}");
            assert!(
                lines[0].contains(&format!(
                    "missing capability CAP_{}",
                    missing.to_uppercase()
                )),
                "{what}: {err}"
            );
        }
    }
}
