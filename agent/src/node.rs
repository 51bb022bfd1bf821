//! Node mode (no --path): every Go program on the host and in its
//! containers. Processes are found by a /proc scan at start and then by the
//! kernel's exec/exit tracepoints; each distinct binary (device, inode,
//! build id) is analysed and probed once, whatever the number of its
//! processes, and detached when the last one exits.

use crate::{
    cli::Cli,
    export::{
        logfmt::{Clock, GmonLog},
        otlp::{Otlp, OtlpCounts, OtlpSink},
        prometheus::{Metrics, PromSink},
    },
    gobin::{self, BinaryId, Cache, GoBinary},
    model::{ProcLabels, Tracker},
    probes::{Attachment, KernelStacks, Maps, Probes},
    process::{
        ProcessKey,
        cgroup::{self, Container},
        k8s::{self, KubeSettings, PodLabels, SharedIndex, WatchStats},
        realfile,
        select::{Rejection, Selection},
    },
    run::{
        DRAIN_INTERVAL, Error, HOUSEKEEPING_INTERVAL, Servers, otlp_settings, raise_memlock_limit,
        sinks,
    },
};
use agent_common::{EVENT_CREATE, GoroutineEvent, PROC_EXEC, PROC_EXIT};
use std::{
    collections::{HashMap, HashSet},
    io::BufWriter,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

pub fn run(cli: Cli, config: crate::config::Config) -> Result<(), Error> {
    let clock = Clock::new();
    let include: Vec<String> = config.include.iter().chain(&cli.include).cloned().collect();
    let exclude: Vec<String> = config.exclude.iter().chain(&cli.exclude).cloned().collect();
    let scope = cli.scope.or(config.scope).unwrap_or_default();
    let selection = Selection::new(&include, &exclude, scope)?;
    let kube = KubeSettings::resolve(&cli.k8s, &config.kubernetes)?;
    let metrics = Metrics::new_node(
        kube.as_ref()
            .map(KubeSettings::attribute_keys)
            .unwrap_or_default(),
    )?;
    let otlp = Otlp::if_configured(otlp_settings(&cli, &config)?)?;
    crate::probes::require_capabilities(true)?;
    let (rt, servers) = Servers::bind(&cli)?;
    let kube = match kube {
        Some(settings) => {
            let (index, stats) = (Arc::<SharedIndex>::default(), Arc::<WatchStats>::default());
            rt.block_on(k8s::spawn(settings.clone(), index.clone(), stats.clone()))?;
            Some(Kube {
                settings,
                index,
                stats,
                generation: u64::MAX,
            })
        }
        None => {
            tracing::info!("Kubernetes metadata off (no --k8s-node-name or NODE_NAME)");
            None
        }
    };

    raise_memlock_limit();
    let (mut probes, maps) = Probes::load(cli.stack_depth as usize)?;
    probes.watch_processes()?;
    tracing::info!(?scope, include = ?include, exclude = ?exclude, "node mode: watching processes");

    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (stop, metrics) = (stop.clone(), metrics.clone());
        let (level, depth) = (cli.level, cli.stack_depth as usize);
        std::thread::Builder::new()
            .name("node".into())
            .spawn(move || {
                let log = GmonLog::new(
                    BufWriter::with_capacity(64 << 10, std::io::stdout()),
                    level,
                    clock,
                );
                let mut node = Node::new(
                    probes,
                    selection,
                    depth,
                    metrics.clone(),
                    log,
                    otlp.as_ref(),
                );
                node.kube = kube;
                node.run(maps, &stop);
                // The last interval, before the probes go.
                if let Some(o) = otlp {
                    o.shutdown();
                }
            })?
    };
    servers.run_until_signal(&rt, &metrics);
    stop.store(true, Ordering::Relaxed);
    let _ = worker.join();
    tracing::info!("detached");
    Ok(())
}

/// Why a process is not probed (the metric label).
fn skip_label(r: &Skip) -> &'static str {
    match r {
        Skip::Own => "self",
        Skip::Gone => "gone",
        Skip::Rejected(Rejection::NotIncluded) => "not_included",
        Skip::Rejected(Rejection::Excluded) => "excluded",
        Skip::Rejected(Rejection::OutOfScope) => "out_of_scope",
        Skip::Pod(reason) => reason,
        Skip::NotGo => "not_go",
        Skip::TooOld => "too_old",
        Skip::Failed => "failed",
    }
}

#[derive(Clone, Debug)]
enum Skip {
    Own,
    Gone,
    Rejected(Rejection),
    /// Its pod opted out or is in an excluded namespace.
    Pod(&'static str),
    NotGo,
    TooOld,
    /// Analysis or attach failed (counted in attach_failures, logged).
    Failed,
}

/// One probed binary and the processes running it.
struct Bin {
    /// Executable path as its first process saw it (for logs).
    exe: String,
    bin: Arc<GoBinary>,
    att: Attachment,
    pids: HashSet<u32>,
    tracker: Tracker,
    /// The tracker's stats as last added to the metrics.
    reported: crate::model::Stats,
}

struct ProcEntry {
    bin: BinaryId,
    key: Option<ProcessKey>,
    /// Its labels as the tracker has them.
    labels: Arc<ProcLabels>,
}

/// The Kubernetes side: settings, the pod index the watch fills, and the
/// index generation the processes were last labelled at.
struct Kube {
    settings: KubeSettings,
    index: Arc<SharedIndex>,
    stats: Arc<WatchStats>,
    generation: u64,
}

struct Node {
    probes: Probes,
    cache: Cache,
    selection: Selection,
    depth: usize,
    metrics: Arc<Metrics>,
    log: GmonLog<BufWriter<std::io::Stdout>>,
    prom: PromSink,
    otlp_sink: Option<OtlpSink>,
    /// The exporter's outcome counters, and what was last reported.
    otlp_stats: Option<(Arc<crate::export::otlp::ExportStats>, OtlpCounts)>,
    own_pid: u32,
    own_exe: Option<BinaryId>,
    bins: HashMap<BinaryId, Bin>,
    procs: HashMap<u32, ProcEntry>,
    /// Processes decided against (selection, pod): their binary's probes
    /// may still fire for them, and their events are dropped (counted).
    /// The flag marks decisions made on pod metadata, which can change.
    ignored: HashMap<u32, (Option<ProcessKey>, bool)>,
    kube: Option<Kube>,
    /// Binaries not to look at again (not Go, too old, failed), by file.
    skipped: HashMap<BinaryId, Skip>,
    /// Processes found dead by housekeeping, removed after the next drain
    /// (which holds the last events they sent).
    dead: Vec<u32>,
}

/// How many non-probed binaries to remember before starting afresh.
const SKIPPED_MAX: usize = 16_384;

impl Node {
    fn new(
        probes: Probes,
        selection: Selection,
        depth: usize,
        metrics: Arc<Metrics>,
        log: GmonLog<BufWriter<std::io::Stdout>>,
        otlp: Option<&Otlp>,
    ) -> Self {
        Node {
            probes,
            cache: Cache::default(),
            selection,
            depth,
            prom: PromSink::new(metrics.clone()),
            otlp_sink: otlp.map(|o| o.sink("unknown", None)),
            otlp_stats: otlp.map(|o| (o.stats.clone(), OtlpCounts::default())),
            metrics,
            log,
            own_pid: std::process::id(),
            own_exe: BinaryId::of("/proc/self/exe".as_ref()).ok(),
            bins: HashMap::new(),
            procs: HashMap::new(),
            ignored: HashMap::new(),
            kube: None,
            skipped: HashMap::new(),
            dead: Vec::new(),
        }
    }

    fn run(&mut self, maps: Maps, stop: &AtomicBool) {
        let Maps {
            mut events,
            mut procs,
            mut stacks,
            mut counters,
        } = maps;
        // Processes already running; from here on the tracepoints report
        // new ones (those that exec during the scan are seen twice, which
        // `start` tolerates).
        let scan_start = Instant::now();
        let pids: Vec<u32> = procfs::process::all_processes()
            .map(|it| it.filter_map(|p| p.ok()).map(|p| p.pid as u32).collect())
            .unwrap_or_default();
        for pid in pids {
            self.start(pid, None, &mut stacks);
        }
        tracing::info!(
            processes = self.procs.len(),
            binaries = self.bins.len(),
            took_ms = scan_start.elapsed().as_millis() as u64,
            "initial scan done"
        );
        let mut last_housekeeping = Instant::now();
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            if !stopping {
                wait_either(events.fd(), procs.as_raw_fd(), DRAIN_INTERVAL);
            }
            // Order matters: execs first, so goroutine events find their
            // process; exits last, after the goroutine events that process
            // sent before exiting (all in the buffer by the time we read it).
            let mut proc_events = Vec::new();
            procs.drain(|ev| proc_events.push(ev));
            for ev in proc_events.iter().filter(|e| e.kind == PROC_EXEC) {
                self.start(ev.pid, Some(ev.ktime_ns), &mut stacks);
            }
            let mut batch = Vec::new();
            let mut malformed = 0;
            events.drain(|ev| match ev {
                Ok(ev) => batch.push(ev),
                Err(_) => malformed += 1,
            });
            self.metrics.malformed(malformed);
            for ev in &batch {
                self.on_event(ev, &mut stacks);
            }
            for ev in proc_events.iter().filter(|e| e.kind == PROC_EXIT) {
                self.exited(ev.pid, &mut stacks);
            }
            for pid in std::mem::take(&mut self.dead) {
                self.exited(pid, &mut stacks);
            }
            self.log.flush();
            if stopping || last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
                last_housekeeping = Instant::now();
                self.housekeeping(&mut stacks);
                self.metrics.add_kernel(&counters.deltas());
            }
            if stopping {
                break;
            }
        }
        // Detach everything before the programs are unloaded.
        for (_, b) in self.bins.drain() {
            self.probes.detach(b.att);
        }
    }

    fn on_event(&mut self, ev: &GoroutineEvent, stacks: &mut KernelStacks) {
        self.metrics.received(ev.kind == EVENT_CREATE);
        if self.ignored.contains_key(&ev.pid) {
            self.metrics.discovery.ignored_process_events.inc();
            return;
        }
        if !self.procs.contains_key(&ev.pid) {
            // A process of an attached binary can hit its probes before
            // its exec event is read.
            self.start(ev.pid, None, stacks);
        }
        let Some(bin) = self
            .procs
            .get(&ev.pid)
            .and_then(|p| self.bins.get_mut(&p.bin))
        else {
            self.metrics.discovery.unknown_process_events.inc();
            return;
        };
        let mut sink = sinks(&mut self.log, &mut self.prom, &mut self.otlp_sink);
        bin.tracker.on_event(ev, stacks, &mut sink);
    }

    /// A process appeared (scan or exec): probe its binary if it is a Go
    /// program we should watch. `exec_ns` is the exec's kernel time.
    fn start(&mut self, pid: u32, exec_ns: Option<u64>, stacks: &mut KernelStacks) {
        // An exec gives an ignored process a new chance.
        self.ignored.remove(&pid);
        if let Some(known) = self.procs.get(&pid) {
            match realfile::real_binary_id(pid) {
                // The same program: an exec seen by both the scan and the
                // tracepoint (or a program re-executing itself).
                Ok(id) if id == known.bin => return,
                // Gone: its exit event follows.
                Err(_) => return,
                // exec replaced the image: the old program is gone.
                Ok(_) => self.exited(pid, stacks),
            }
        }
        self.metrics.discovery.processes_seen.inc();
        match self.classify(pid) {
            Ok((id, exe, container)) => {
                let k8s = self.pod_of(&container);
                let b = self.bins.get_mut(&id).expect("classify attached it");
                b.pids.insert(pid);
                let labels = Arc::new(ProcLabels {
                    pid,
                    runtime_version: b.bin.build.version_string.clone(),
                    binary: exe,
                    container_id: container.id,
                    pod_uid: container.pod_uid,
                    k8s,
                });
                b.tracker.set_labels(labels.clone());
                let entry = ProcEntry {
                    bin: id,
                    key: ProcessKey::of(pid),
                    labels,
                };
                self.procs.insert(pid, entry);
                if let Some(t) = exec_ns {
                    let now = monotonic_ns();
                    self.metrics
                        .discovery
                        .latency
                        .observe(now.saturating_sub(t) as f64 / 1e9);
                }
                match &self.procs[&pid].labels.k8s {
                    Some(k) => tracing::debug!(
                        pid,
                        exe = %b.exe,
                        namespace = %k.pod.namespace,
                        pod = %k.pod.name,
                        container = %k.container_name.as_deref().unwrap_or(""),
                        "process probed"
                    ),
                    None => tracing::debug!(pid, exe = %b.exe, "process probed"),
                }
            }
            Err(skip) => {
                self.metrics
                    .discovery
                    .processes_skipped
                    .with_label_values(&[skip_label(&skip)])
                    .inc();
                // A decision about the process, not its binary: remember
                // it, or each of its events would ask again.
                if matches!(skip, Skip::Rejected(_) | Skip::Pod(_)) {
                    let by_pod = matches!(skip, Skip::Pod(_));
                    self.ignored.insert(pid, (ProcessKey::of(pid), by_pod));
                }
            }
        }
    }

    /// Decides about `pid`, analysing and attaching its binary if needed.
    fn classify(&mut self, pid: u32) -> Result<(BinaryId, String, Container), Skip> {
        if pid == self.own_pid {
            return Err(Skip::Own);
        }
        // /proc/PID/exe opens the file in the process's own mount
        // namespace, so containers need nothing special.
        let exe_link = format!("/proc/{pid}/exe");
        // The layer file's identity, not the per-container overlay one: one
        // image's containers share one attachment.
        let id = realfile::real_binary_id(pid).map_err(|_| Skip::Gone)?;
        tracing::trace!(pid, dev = id.dev, ino = id.ino, "binary identity");
        if Some(id) == self.own_exe {
            return Err(Skip::Own);
        }
        let exe = std::fs::read_link(&exe_link)
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|_| Skip::Gone)?;
        let container = cgroup::of_pid(pid).ok_or(Skip::Gone)?;
        self.selection
            .check(&exe, &container)
            .map_err(Skip::Rejected)?;
        if let Some(reason) = self.pod_rejection(&container) {
            return Err(Skip::Pod(reason));
        }
        if self.bins.contains_key(&id) {
            return Ok((id, exe, container));
        }
        if let Some(s) = self.skipped.get(&id) {
            return Err(s.clone());
        }
        let verdict = self.probe_binary(pid, id, &exe_link, &exe);
        match verdict {
            Ok(()) => Ok((id, exe, container)),
            Err(s) => {
                if !matches!(s, Skip::Gone) {
                    if self.skipped.len() >= SKIPPED_MAX {
                        self.skipped.clear();
                    }
                    self.skipped.insert(id, s.clone());
                }
                Err(s)
            }
        }
    }

    fn probe_binary(
        &mut self,
        pid: u32,
        id: BinaryId,
        exe_link: &str,
        exe: &str,
    ) -> Result<(), Skip> {
        let bin = match self.cache.get(exe_link.as_ref()) {
            Ok(b) => b,
            Err(gobin::Error::Open(..)) => return Err(Skip::Gone),
            Err(gobin::Error::NotElf(_) | gobin::Error::NotGo(..) | gobin::Error::NotAmd64(_)) => {
                return Err(Skip::NotGo);
            }
            Err(e @ gobin::Error::TooOld { .. }) => {
                tracing::info!(pid, exe, "not probed: {e}");
                return Err(Skip::TooOld);
            }
            Err(e) => {
                tracing::warn!(pid, exe, "cannot probe: {e}");
                self.metrics
                    .discovery
                    .attach_failures
                    .with_label_values(&["analysis"])
                    .inc();
                return Err(Skip::Failed);
            }
        };
        self.metrics.discovery.go_binaries_found.inc();
        let started = Instant::now();
        let att = match self.probes.attach_via(&bin, exe_link.as_ref()) {
            Ok(a) => a,
            Err(e) => {
                // The process may have exited while we analysed.
                if std::fs::metadata(exe_link).is_err() {
                    drop(bin);
                    self.cache.release_unused();
                    return Err(Skip::Gone);
                }
                tracing::warn!(pid, exe, "cannot probe: {e}");
                self.metrics
                    .discovery
                    .attach_failures
                    .with_label_values(&["attach"])
                    .inc();
                return Err(Skip::Failed);
            }
        };
        tracing::info!(
            pid,
            exe,
            go = %bin.build.version_string,
            offsets = %bin.offsets_source,
            uprobes = att.uprobes(),
            attach_ms = started.elapsed().as_millis() as u64,
            "attached"
        );
        let tracker = Tracker::new(bin.clone(), self.depth);
        self.bins.insert(
            id,
            Bin {
                exe: exe.to_owned(),
                bin,
                att,
                pids: HashSet::new(),
                tracker,
                reported: Default::default(),
            },
        );
        self.metrics
            .discovery
            .binaries_attached
            .set(self.bins.len() as i64);
        Ok(())
    }

    /// A process exited: drop its state; detach its binary if it was the
    /// last one running it.
    fn exited(&mut self, pid: u32, stacks: &mut KernelStacks) {
        let Some(entry) = self.procs.remove(&pid) else {
            return;
        };
        let Some(b) = self.bins.get_mut(&entry.bin) else {
            return;
        };
        b.pids.remove(&pid);
        let mut sink = sinks(&mut self.log, &mut self.prom, &mut self.otlp_sink);
        b.tracker.remove_process(pid, stacks, &mut sink);
        if b.pids.is_empty() {
            let b = self.bins.remove(&entry.bin).expect("present");
            tracing::info!(exe = %b.exe, "last process exited: detaching");
            // Its tracker goes with it: report what it counted since the
            // last housekeeping.
            self.metrics.add_stats(&b.reported, &b.tracker.stats);
            self.probes.detach(b.att);
            drop(b.bin);
            self.cache.release_unused();
            self.metrics
                .discovery
                .binaries_attached
                .set(self.bins.len() as i64);
        }
    }

    /// The pod of a process in `container`, if the index knows it.
    fn pod_of(&self, container: &Container) -> Option<PodLabels> {
        let k = self.kube.as_ref()?;
        k.index
            .read()
            .lookup(container.id.as_deref(), container.pod_uid.as_deref())
    }

    /// Why a process in `container` must not be probed, per its pod.
    fn pod_rejection(&self, container: &Container) -> Option<&'static str> {
        let k = self.kube.as_ref()?;
        k.settings.rejects(&self.pod_of(container)?.pod)
    }

    /// The pod index changed: label processes whose pod is now known (or
    /// different), and let go of those whose pod is excluded.
    fn relabel(&mut self, stacks: &mut KernelStacks) {
        let Some(k) = self.kube.as_mut() else {
            return;
        };
        let generation = k.index.generation();
        self.metrics.k8s.pods.set(k.index.read().pods() as i64);
        self.metrics.k8s.synced.set(k.index.synced() as i64);
        self.metrics
            .k8s
            .watch_errors
            .inc_by(k.stats.errors.swap(0, Ordering::Relaxed));
        self.metrics
            .k8s
            .relists
            .inc_by(k.stats.relists.swap(0, Ordering::Relaxed));
        if generation == k.generation {
            return;
        }
        k.generation = generation;
        let mut excluded = Vec::new();
        let mut changed = Vec::new();
        {
            let k = self.kube.as_ref().expect("checked above");
            let index = k.index.read();
            for (&pid, p) in &self.procs {
                let l = &p.labels;
                let pod = index.lookup(l.container_id.as_deref(), l.pod_uid.as_deref());
                if let Some(reason) = pod.as_ref().and_then(|pod| k.settings.rejects(&pod.pod)) {
                    excluded.push((pid, reason));
                } else if pod != l.k8s {
                    changed.push((pid, pod));
                }
            }
        }
        for (pid, pod) in changed {
            let p = self.procs.get_mut(&pid).expect("listed above");
            if let Some(k) = &pod {
                tracing::debug!(
                    pid,
                    namespace = %k.pod.namespace,
                    pod = %k.pod.name,
                    container = %k.container_name.as_deref().unwrap_or(""),
                    "process labelled"
                );
            }
            let labels = Arc::new(ProcLabels {
                k8s: pod,
                ..(*p.labels).clone()
            });
            p.labels = labels.clone();
            if let Some(b) = self.bins.get_mut(&p.bin) {
                b.tracker.set_labels(labels);
            }
        }
        // Processes left alone for their pod get a new look: the pod may
        // have dropped its opt-out, or be gone.
        let reconsider: Vec<u32> = self
            .ignored
            .iter()
            .filter(|(_, (_, by_pod))| *by_pod)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in reconsider {
            let Some(container) = cgroup::of_pid(pid) else {
                continue;
            };
            if self.pod_rejection(&container).is_none() {
                tracing::info!(pid, "process no longer excluded by its pod: probing it");
                self.start(pid, None, stacks);
            }
        }
        for (pid, reason) in excluded {
            tracing::info!(pid, reason, "process left alone: its pod is excluded");
            let key = self.procs.get(&pid).and_then(|p| p.key);
            self.exited(pid, stacks);
            self.ignored.insert(pid, (key, true));
            self.metrics
                .discovery
                .processes_skipped
                .with_label_values(&[reason])
                .inc();
        }
    }

    fn housekeeping(&mut self, stacks: &mut KernelStacks) {
        self.relabel(stacks);
        // Exit events can be lost (ring buffer full): also check liveness.
        // The dead go after the next drain, which holds their last events.
        self.dead = self
            .procs
            .iter()
            .filter(|(_, p)| !p.key.is_some_and(|k| k.alive()))
            .map(|(&pid, _)| pid)
            .collect();
        self.ignored
            .retain(|_, (key, _)| key.is_some_and(|k| k.alive()));
        let (mut live, mut procs) = (0, 0);
        for b in self.bins.values_mut() {
            let mut sink = sinks(&mut self.log, &mut self.prom, &mut self.otlp_sink);
            b.tracker.sweep(stacks, &mut sink);
            self.metrics.add_stats(&b.reported, &b.tracker.stats);
            b.reported = b.tracker.stats;
            live += b.tracker.live();
            procs += b.pids.len();
        }
        if let (Some((stats, last)), Some(sink)) = (&mut self.otlp_stats, &self.otlp_sink) {
            self.metrics.add_otlp(last, OtlpCounts::now(stats, sink));
        }
        self.metrics.goroutines_tracked.set(live as i64);
        self.metrics.processes_tracked.set(procs as i64);
        self.metrics
            .uprobes_attached
            .set(self.bins.values().map(|b| b.att.uprobes() as i64).sum());
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC is bpf_ktime_get_ns's clock.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Waits until either ring buffer has data or `timeout` passes.
fn wait_either(a: i32, b: i32, timeout: Duration) {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: two valid pollfds; errors just end the wait early.
    unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout.as_millis() as libc::c_int) };
}
