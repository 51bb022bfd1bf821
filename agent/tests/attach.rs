//! Root tests: load the eBPF programs, attach them to the spawner fixture and
//! compare what the probes see with the goroutine ids the fixture reports.

use e2e::{Proc, fixture, loaded_bpf_programs, piped, require_root, wait_for};
use gmon_agent::{
    gobin::Frame,
    gobin::GoBinary,
    model::{Goroutine, Sink, Tracker},
    probes::{Maps, Probes, SiteClass, SitePolicy},
};
use std::{
    collections::HashMap,
    io::Write,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

// Tests in this file share the kernel's probe state: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A goroutine as the tracker handed it on, with the parts of its site
/// the tests check.
struct Seen {
    pid: u32,
    goid: u64,
    parent_goid: u64,
    created_ns: u64,
    site: SeenSite,
}

struct SeenSite {
    stack: Vec<Frame>,
    creator: Option<Frame>,
    start: Option<Frame>,
}

impl Seen {
    fn of(g: &Goroutine) -> Self {
        Seen {
            pid: g.pid,
            goid: g.goid,
            parent_goid: g.parent_goid,
            created_ns: g.created_ns,
            site: SeenSite {
                stack: g.site.stack.clone(),
                creator: g.site.creator.clone(),
                start: g.site.start.clone(),
            },
        }
    }
}

#[derive(Default)]
struct Recorder {
    created: Vec<Seen>,
    exited: Vec<(Seen, u64)>,
}

impl Sink for Recorder {
    fn created(&mut self, g: &Goroutine) {
        self.created.push(Seen::of(g));
    }
    fn exited(&mut self, g: &Goroutine, at: u64) {
        self.exited.push((Seen::of(g), at));
    }
}

/// Runs the spawner for `rounds` under the probes; returns the fixture's
/// own (site, goid) lines, what the tracker saw, and its stats.
fn trace_spawner(
    name: &str,
    rounds: u32,
    only_pid: bool,
) -> (Vec<(String, u64)>, Recorder, Tracker) {
    trace_spawner_at(name, rounds, only_pid, SitePolicy::Auto)
}

/// Like `trace_spawner`, with the probes on the sites `policy` picks.
fn trace_spawner_at(
    name: &str,
    rounds: u32,
    only_pid: bool,
    policy: SitePolicy,
) -> (Vec<(String, u64)>, Recorder, Tracker) {
    let bin = Arc::new(GoBinary::analyse(&fixture(name)).unwrap());
    let mut sp = Proc::spawn(piped(&bin.path).arg(format!("-rounds={rounds}")));
    let mut lines = sp.stdout_lines();
    assert!(lines.next().unwrap().unwrap().starts_with("ready"));

    let (mut probes, maps) = Probes::load(127, None).unwrap();
    probes.set_site_policy(policy);
    let pid = only_pid.then(|| NonZeroU32::new(sp.pid()).unwrap());
    let att = probes.attach(&bin, pid).unwrap();
    // Every fixture has the emulated sites: one creation and one exit probe.
    match policy {
        SitePolicy::Auto => assert_eq!(
            (att.class, att.uprobes()),
            (SiteClass::Emulated, 2),
            "{name}"
        ),
        SitePolicy::Ret => assert_eq!(
            (att.class, att.uprobes()),
            (SiteClass::SingleStepped, bin.newproc1_rets.len() + 1)
        ),
    }
    let Maps {
        mut events,
        mut stacks,
        counters,
        ..
    } = maps;

    let mut stdin = sp.stdin();
    writeln!(stdin).unwrap();
    let mut reported = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("done") {
            break;
        }
        let rest = line.strip_prefix("goroutine site=").unwrap();
        let (site, goid) = rest.split_once(" goid=").unwrap();
        reported.push((site.to_owned(), goid.parse().unwrap()));
    }
    let mut tracker = Tracker::new(bin.clone(), 127);
    let mut rec = Recorder::default();
    let want = reported.len();
    wait_for(Duration::from_secs(5), || {
        let (_, malformed) = events.drain(false, |ev| tracker.on_event(ev, &mut stacks, &mut rec));
        assert_eq!(malformed, 0);
        let done = rec.exited.iter().filter(|(g, _)| g.pid == sp.pid()).count() >= want;
        done.then_some(())
    });
    let k = counters.read();
    assert_eq!(k[agent_common::counter::RINGBUF_FULL as usize], 0);
    assert_eq!(k[agent_common::counter::READ_G_FAILED as usize], 0);
    assert_eq!(k[agent_common::counter::STACK_FAILED as usize], 0);
    assert_eq!(k[agent_common::counter::SCRATCH_BUSY as usize], 0);
    // Each distinct creation stack is stored once in the kernel, and
    // forgotten with its process.
    let sites: std::collections::HashSet<&str> = reported.iter().map(|(s, _)| s.as_str()).collect();
    let stored = stacks.stored();
    assert_eq!(stored, sites.len(), "one stack per go statement");
    drop(stdin);
    sp.terminate(Duration::from_secs(5)).expect("spawner exits");
    // Two sweeps: the first only marks the process gone.
    tracker.sweep(&mut stacks, &mut rec);
    assert_eq!(tracker.processes(), 1);
    tracker.sweep(&mut stacks, &mut rec);
    assert_eq!(stacks.stored(), 0, "stacks left after their process exited");
    assert_eq!(tracker.processes(), 0);
    drop(probes);
    (reported, rec, tracker)
}

#[test]
fn every_goroutine_is_seen_once_created_and_once_exited_with_its_site() {
    if !require_root("attach test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (reported, rec, tracker) = trace_spawner("spawner", 25, false);
    assert_eq!(reported.len(), 100);
    check_seen(&reported, &rec, &tracker);
}

/// Every goroutine the spawner reported was created and exited exactly once,
/// with the right start function, creator and a symbolized stack.
fn check_seen(reported: &[(String, u64)], rec: &Recorder, tracker: &Tracker) {
    let mut created: HashMap<u64, &Seen> = HashMap::new();
    for g in &rec.created {
        assert!(
            created.insert(g.goid, g).is_none(),
            "goid {} created twice",
            g.goid
        );
    }
    let mut exited: HashMap<u64, u64> = HashMap::new();
    for (g, at) in &rec.exited {
        assert!(
            exited.insert(g.goid, *at).is_none(),
            "goid {} exited twice",
            g.goid
        );
        assert!(*at >= g.created_ns);
    }
    for (site, goid) in reported {
        let g = created
            .get(goid)
            .unwrap_or_else(|| panic!("goroutine {goid} ({site}) not seen at creation"));
        assert!(
            exited.contains_key(goid),
            "goroutine {goid} ({site}) not seen at exit"
        );
        let start = &g.site.start.as_ref().unwrap().function;
        let creator = &g.site.creator.as_ref().unwrap().function;
        assert_eq!(start, &format!("main.{site}"));
        let want_creator = if site == "nestedChild" {
            "main.startChild"
        } else {
            "main.spawnRound"
        };
        assert_eq!(creator, want_creator, "creator of {site}");
        // file:line come from .gopclntab, stripped or not.
        let cf = g.site.creator.as_ref().unwrap();
        assert!(
            cf.file
                .as_deref()
                .is_some_and(|f| f.ends_with("spawner/main.go"))
                && cf.line.is_some_and(|l| l > 0),
            "{cf:?}"
        );
        // The creating stack runs from newproc1 out to goexit via the creator.
        let names: Vec<&str> = g.site.stack.iter().map(|f| f.function.as_str()).collect();
        assert_eq!(names.first(), Some(&"runtime.newproc1"), "{names:?}");
        // At newproc1's RET its caller's return address is at [RSP], below
        // the frame-pointer chain: the walk must not skip that frame.
        assert_eq!(names.get(1), Some(&"runtime.newproc.func1"), "{names:?}");
        assert_eq!(names.last(), Some(&"runtime.goexit"), "{names:?}");
        assert!(names.contains(&want_creator), "{names:?}");
        if site == "nestedChild" {
            // startChild <- spawnChild (inlined into nestedParent) <- nestedParent.
            let at = names.iter().position(|n| *n == "main.startChild").unwrap();
            assert_eq!(
                names[at..at + 3],
                ["main.startChild", "main.spawnChild", "main.nestedParent"],
                "inlined frame missing: {names:?}"
            );
        }
        assert_ne!(g.parent_goid, 0);
    }
    assert_eq!(tracker.stats.unresolved_pcs, 0);
    assert_eq!(tracker.stats.duplicate_creates, 0);
}

#[test]
fn stripped_pie_cgo_and_newer_go_binaries_are_traced_alike() {
    if !require_root("attach test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The default shape is the test above.
    for name in e2e::SPAWNER_SHAPES.into_iter().filter(|&n| n != "spawner") {
        let (reported, rec, tracker) = trace_spawner(name, 3, false);
        assert_eq!(reported.len(), 12, "{name}");
        eprintln!("{name}: {} goroutines seen", rec.created.len());
        check_seen(&reported, &rec, &tracker);
    }
}

/// The fallback sites (newproc1's RETs, goexit1's entry), used where a
/// binary's code does not have the expected shape, still trace exactly.
#[test]
fn the_ret_sites_trace_alike() {
    if !require_root("attach test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for name in ["spawner", "spawner-go1.26-pie-stripped"] {
        let (reported, rec, tracker) = trace_spawner_at(name, 3, false, SitePolicy::Ret);
        assert_eq!(reported.len(), 12, "{name}");
        check_seen(&reported, &rec, &tracker);
    }
}

#[test]
fn pid_scope_ignores_other_processes_of_the_same_binary() {
    if !require_root("attach test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A second spawner running the same binary, not selected.
    let mut other = Proc::spawn(piped(fixture("spawner")).arg("-rounds=5"));
    let mut other_in = other.stdin();
    let mut other_lines = other.stdout_lines();
    other_lines.next();
    writeln!(other_in).unwrap();
    let (reported, rec, _) = trace_spawner("spawner", 3, true);
    assert_eq!(reported.len(), 12);
    let pids: std::collections::HashSet<u32> = rec.created.iter().map(|g| g.pid).collect();
    assert_eq!(pids.len(), 1, "events from more than one process: {pids:?}");
    assert!(!pids.contains(&other.pid()));
}

#[test]
fn dropping_the_probes_leaves_nothing_loaded() {
    if !require_root("attach test") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _ = trace_spawner("spawner", 1, false);
    let names = loaded_bpf_programs();
    assert!(
        !names
            .iter()
            .any(|n| n == "newproc1_ret" || n.starts_with("goexit1")),
        "programs still loaded: {names:?}"
    );
}
