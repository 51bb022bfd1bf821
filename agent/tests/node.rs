//! Node mode (no --path), as root against real processes on this host:
//! discovery latency, one attachment per binary, cleanup after churn, a
//! binary replaced in place, and selection.

use e2e::{
    Proc,
    docker::{Container, container, image, require_docker},
    fixture, http_get,
    node::NodeAgent,
    piped, require_root, wait_for,
};
use std::{
    io::Write,
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

// One node-mode agent at a time: each sees every process on the host.
static SERIAL: Mutex<()> = Mutex::new(());

/// Starts the agent in node mode, limited to the fixtures.
fn node_agent(extra: &[&str]) -> NodeAgent {
    node_agent_at("WARN", extra)
}

/// `node_agent` at a log level: above DEBUG the kernel counts per site (at
/// INFO it also sends each creation, for its log line); at DEBUG every
/// creation and exit is an event.
fn node_agent_at(level: &str, extra: &[&str]) -> NodeAgent {
    NodeAgent::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_gmon-agent")),
        level,
        extra,
        None,
    )
}

/// A spawner waiting for its start line.
fn waiting_spawner(name: &str) -> Proc {
    let mut p = Proc::spawn(piped(fixture(name)).arg("-rounds=1"));
    let mut lines = p.stdout_lines();
    assert!(lines.next().unwrap().unwrap().starts_with("ready"));
    std::mem::forget(lines); // keep the pipe open
    p
}

#[test]
fn go_programs_started_later_are_probed_within_a_second() {
    if !require_root("node test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let agent = node_agent(&[]);
    let shapes = [
        "spawner",
        "spawner-pie-stripped",
        "spawner-go1.24",
        "spawner-go1.26-pie-stripped",
    ];
    let mut latencies = Vec::new();
    let mut procs = Vec::new();
    for i in 0..20 {
        let t0 = Instant::now();
        let mut child = Command::new(fixture(shapes[i % shapes.len()]))
            .arg("-rounds=1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        agent.wait_line(Duration::from_secs(5), |l| {
            l.contains("process probed") && l.contains(&format!("pid={pid} "))
        });
        latencies.push(t0.elapsed());
        // Start it, and keep it alive (stdin open) so its binary stays
        // attached for the next process of the same binary.
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin).unwrap();
        procs.push((child, stdin));
    }
    let agent_side = agent.metric("gmon_agent_discovery_latency_seconds_sum")
        / agent.metric("gmon_agent_discovery_latency_seconds_count");
    latencies.sort();
    let p95 = latencies[latencies.len() * 95 / 100 - 1];
    eprintln!(
        "discovery latency seen by the test: median {:?}, p95 {p95:?}, max {:?}; exec to probed in the agent: mean {:.1} ms",
        latencies[10],
        latencies[19],
        agent_side * 1e3
    );
    assert!(p95 < Duration::from_secs(1), "p95 {p95:?}");
    // One attachment per distinct binary, not per process.
    assert_eq!(
        agent.metric("gmon_agent_go_binaries_found_total"),
        shapes.len() as f64
    );
    assert_eq!(
        agent.metric("gmon_agent_binaries_attached"),
        shapes.len() as f64
    );
    // The gauge is refreshed once a second.
    wait_for(Duration::from_secs(3), || {
        (agent.metric("gmon_agent_processes_tracked") == 20.0).then_some(())
    })
    .expect("20 processes tracked");
    // Their goroutines were seen, labelled with pid and binary.
    wait_for(Duration::from_secs(5), || {
        (agent.metric("gmon_goroutine_creation{") >= 20.0 * 4.0).then_some(())
    })
    .expect("creations of 20 spawners counted");
    let (_, body) = http_get(agent.port, "/metrics").unwrap();
    let line = body
        .lines()
        .find(|l| l.starts_with("gmon_goroutine_creation{"))
        .unwrap();
    assert!(
        line.contains("pid=\"") && line.contains("binary=\"/"),
        "{line}"
    );
}

#[test]
fn churn_of_200_processes_leaves_nothing_behind() {
    if !require_root("node test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Every way goroutines reach user space: one event per creation and
    // exit (DEBUG), counted in the kernel with an event per creation for
    // its log line (INFO), and only counted in the kernel (WARN).
    churn("DEBUG", "gmon_agent_events_received_total{kind=\"create\"}");
    churn("INFO", "gmon_agent_events_received_total{kind=\"create\"}");
    churn(
        "WARN",
        "gmon_agent_kernel_goroutines_counted_total{kind=\"create\"}",
    );
}

fn churn(level: &str, created: &str) {
    eprintln!("--level {level}");
    let agent = node_agent_at(level, &[]);
    // Warm up once (first attach allocates maps and caches), then measure.
    let mut w = waiting_spawner("spawner");
    writeln!(w.stdin()).unwrap();
    wait_for(Duration::from_secs(5), || {
        (agent.metric("gmon_agent_binaries_attached") == 0.0).then_some(())
    });
    let (fds0, rss0) = (agent.fds(), agent.rss_kib());
    let mut done = 0;
    while done < 200 {
        let batch: Vec<_> = (0..20).map(|_| waiting_spawner("spawner")).collect();
        agent.wait_probed(&batch.iter().map(|p| p.pid()).collect::<Vec<_>>());
        for mut p in batch {
            writeln!(p.stdin()).unwrap();
            drop(p.child.stdin.take());
            let _ = p.child.wait();
            done += 1;
        }
    }
    let settled = wait_for(Duration::from_secs(10), || {
        let idle = agent.metric("gmon_agent_binaries_attached") == 0.0
            && agent.metric("gmon_agent_processes_tracked") == 0.0
            && agent.metric("gmon_agent_goroutines_tracked") == 0.0;
        idle.then_some(())
    });
    assert!(settled.is_some(), "state left after churn");
    if level != "DEBUG" {
        // The kernel's live table lost the goroutines of every process
        // gone (read at housekeeping, once a second).
        let emptied = wait_for(Duration::from_secs(5), || {
            (agent.metric("gmon_agent_live_table_entries") == 0.0).then_some(())
        });
        assert!(
            emptied.is_some(),
            "kernel live table holds {} entries after churn",
            agent.metric("gmon_agent_live_table_entries")
        );
    }
    // Every goroutine of every process was seen (their series went with
    // their processes), none dropped for want of a process. The runtime's
    // own goroutines (GC workers and the like) die with each process.
    // The kernel's counters reach /metrics at housekeeping, once a second.
    let seen = wait_for(Duration::from_secs(5), || {
        Some(agent.metric(created)).filter(|&n| n >= 200.0 * 4.0)
    });
    assert!(seen.is_some(), "{created} = {}", agent.metric(created));
    let unknown = agent.metric("gmon_agent_unknown_process_events_total");
    if unknown > 0.0 {
        let log = agent.log.lock().unwrap();
        let first = log.iter().find(|l| l.contains("unknown process")).unwrap();
        let pid = first
            .split_whitespace()
            .find(|kv| kv.starts_with("pid="))
            .unwrap()
            .to_owned();
        let lines: Vec<&String> = log
            .iter()
            .filter(|l| {
                l.contains(&format!("{pid} ")) || l.contains("attached") || l.contains("detaching")
            })
            .take(40)
            .collect();
        panic!("{unknown} events from unknown processes, first {first}:\n{lines:#?}");
    }
    assert!(
        !http_get(agent.port, "/metrics")
            .unwrap()
            .1
            .contains("gmon_goroutine_creation{")
    );
    // A scrape's socket can linger for a moment: allow it to close.
    let fds1 = wait_for(Duration::from_secs(3), || {
        Some(agent.fds()).filter(|&n| n <= fds0)
    })
    .unwrap_or_else(|| agent.fds());
    // jemalloc returns freed pages after its 1 s decay (main.rs): allow it
    // a few decay periods before reading RSS.
    let rss_bound = rss0 + 8 * 1024;
    let rss1 = wait_for(Duration::from_secs(5), || {
        Some(agent.rss_kib()).filter(|&r| r < rss_bound)
    })
    .unwrap_or_else(|| agent.rss_kib());
    eprintln!("after 200 processes: fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB");
    assert!(fds1 <= fds0, "file descriptors leaked: {fds0} -> {fds1}");
    assert!(rss1 < rss_bound, "RSS grew from {rss0} to {rss1} KiB");
}

#[test]
fn a_binary_replaced_in_place_is_analysed_afresh_and_selection_applies() {
    if !require_root("node test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::copy(fixture("spawner"), &app).unwrap();
    let agent = node_agent(&[
        "--include",
        &format!("{}/*", dir.path().display()),
        "--exclude",
        "**/spawner-stripped",
    ]);
    let mut first = Proc::spawn(piped(&app).arg("-rounds=1"));
    agent.wait_line(Duration::from_secs(5), |l| {
        l.contains("attached") && l.contains("go=go1.23.5")
    });
    // Redeploy: a new file (new inode) renamed over the old path.
    let new = dir.path().join("app.new");
    std::fs::copy(fixture("spawner-go1.24"), &new).unwrap();
    std::fs::rename(&new, &app).unwrap();
    let mut second = Proc::spawn(piped(&app).arg("-rounds=1"));
    agent.wait_line(Duration::from_secs(5), |l| {
        l.contains("attached") && l.contains("go=go1.24.4")
    });
    assert_eq!(agent.metric("gmon_agent_binaries_attached"), 2.0);
    // Excluded: never probed, counted.
    let mut excluded = Proc::spawn(piped(fixture("spawner-stripped")).arg("-rounds=1"));
    wait_for(Duration::from_secs(5), || {
        (agent.metric("gmon_agent_processes_skipped_total{reason=\"excluded\"}") >= 1.0)
            .then_some(())
    })
    .expect("excluded process counted");
    for p in [&mut first, &mut second, &mut excluded] {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    wait_for(Duration::from_secs(5), || {
        (agent.metric("gmon_agent_binaries_attached") == 0.0).then_some(())
    })
    .expect("both detached");
}

#[test]
fn containers_of_one_image_share_one_attachment_and_carry_their_ids() {
    if !require_root("container test") || !require_docker() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (spawner, newer, not_go) = (image("spawner"), image("spawner-go1.24"), image("c-waiter"));
    let agent = node_agent(&["--include", "/app"]);
    let tmp = tempfile::tempdir().unwrap();
    let uids = [
        "0d1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f1",
        "0d1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f2",
        "0d1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f3",
    ];
    let mut cs: Vec<Container> = uids
        .iter()
        .enumerate()
        .map(|(i, uid)| {
            container(
                &spawner,
                uid,
                &tmp.path().join(format!("c{i}")),
                &["-rounds=1"],
            )
        })
        .collect();
    // A different Go binary in a container is probed too; a non-Go one and
    // a Go 1.19 program on the host are skipped with a reason.
    let mut other = container(&newer, uids[0], &tmp.path().join("other"), &["-rounds=1"]);
    let mut c_prog = container(&not_go, uids[1], &tmp.path().join("c"), &[]);
    wait_for(Duration::from_secs(10), || {
        (agent.metric("gmon_agent_processes_tracked") == 4.0).then_some(())
    })
    .expect("4 Go containers tracked");
    assert_eq!(
        agent.metric("gmon_agent_binaries_attached"),
        2.0,
        "one attachment per image"
    );
    wait_for(Duration::from_secs(5), || {
        (agent.metric("gmon_agent_processes_skipped_total{reason=\"not_go\"}") >= 1.0).then_some(())
    })
    .expect("the non-Go container skipped");
    // Start them, keeping stdin open: a spawner exits at EOF, and node
    // mode deletes an exited process's series.
    let mut stdins = Vec::new();
    for c in cs.iter_mut().chain([&mut other]) {
        let mut s = c.proc.stdin();
        writeln!(s).unwrap();
        stdins.push(s);
    }
    wait_for(Duration::from_secs(10), || {
        let (_, body) = http_get(agent.port, "/metrics").unwrap();
        let all = cs.iter().zip(uids).all(|(c, uid)| {
            body.lines().any(|l| {
                l.starts_with("gmon_goroutine_creation{")
                    && l.contains(&format!("container_id=\"{}\"", c.id))
                    && l.contains(&format!("pod_uid=\"{uid}\""))
                    && l.contains("binary=\"/app\"")
            })
        });
        all.then_some(())
    })
    .expect("every container's goroutines labelled with its container id and pod UID");
    assert_eq!(agent.metric("gmon_agent_unknown_process_events_total"), 0.0);
    drop(stdins);
    for p in cs
        .iter_mut()
        .map(|c| &mut c.proc)
        .chain([&mut other.proc, &mut c_prog.proc])
    {
        drop(p.child.stdin.take());
        let _ = p.child.wait();
    }
    wait_for(Duration::from_secs(10), || {
        (agent.metric("gmon_agent_binaries_attached") == 0.0).then_some(())
    })
    .expect("detached once the containers exited");
}

#[test]
fn goroutines_alive_in_a_container_before_the_agent_are_counted() {
    if !require_root("container walk test") || !require_docker() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    // Stripped (static, FROM scratch): allgs found from runtime.allgadd's
    // code.
    let img = image("spawner-stripped");
    let mut c = container(
        &img,
        "0d1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f9",
        &tmp.path().join("c"),
        &["-rounds=1", "-before=20"],
    );
    let mut out = c.proc.stdout_lines();
    assert!(out.next().unwrap().unwrap().starts_with("ready"));
    let pid = e2e::docker::host_pid(&c.id);
    // Counted in the kernel (WARN), then one event each (DEBUG), which
    // releases them.
    for level in ["WARN", "DEBUG"] {
        let agent = node_agent_at(level, &["--include", "/app"]);
        let row = |start: &str| -> Option<serde_json::Value> {
            let (_, body) =
                http_get(agent.port, &format!("/goroutines?format=json&pid={pid}")).ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            v["sites"]
                .as_array()?
                .iter()
                .find(|r| r["start"] == start)
                .cloned()
        };
        let parked = wait_for(Duration::from_secs(10), || row("main.parkedWorker"))
            .unwrap_or_else(|| panic!("{level}: the container's parked goroutines not seen"));
        assert_eq!(parked["live"], 20, "{level}: {parked}");
        assert_eq!(parked["seen_at_attach"], 20, "{level}: {parked}");
        assert_eq!(parked["creator"], "main.parkAll", "{level}: {parked}");
        assert_eq!(
            agent.metric("gmon_agent_attach_walks_total{result=\"ok\"}"),
            1.0
        );
        assert_eq!(agent.metric("gmon_agent_untracked_exits_total"), 0.0);
        if level == "DEBUG" {
            // Released: every exit matches a goroutine found at attach.
            let mut stdin = c.proc.stdin();
            writeln!(stdin).unwrap();
            assert!(
                out.by_ref()
                    .map_while(Result::ok)
                    .any(|l| l.starts_with("done"))
            );
            let gone = wait_for(Duration::from_secs(10), || {
                row("main.parkedWorker").filter(|r| r["exited"] == 20)
            })
            .expect("the parked goroutines' exits counted");
            assert_eq!(gone["live"], 0, "{gone}");
            assert_eq!(agent.metric("gmon_agent_untracked_exits_total"), 0.0);
            drop(stdin);
        }
    }
    let _ = c.proc.child.wait();
}

#[test]
fn go_older_than_1_23_is_skipped_with_a_logged_reason() {
    if !require_root("node test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let agent = node_agent(&[]);
    let mut old = Proc::spawn(piped(fixture("spawner-go1.19")).arg("-rounds=1"));
    let line = agent.wait_line(Duration::from_secs(5), |l| l.contains("not probed"));
    assert!(
        line.contains("go1.19") && line.contains("Go 1.23 or newer"),
        "{line}"
    );
    // Counted just after the line is logged: wait for it.
    let skipped = wait_for(Duration::from_secs(5), || {
        let n = agent.metric("gmon_agent_processes_skipped_total{reason=\"too_old\"}");
        (n == 1.0).then_some(n)
    });
    assert_eq!(skipped, Some(1.0));
    assert_eq!(agent.metric("gmon_agent_binaries_attached"), 0.0);
    drop(old.child.stdin.take());
    let _ = old.child.wait();
}
