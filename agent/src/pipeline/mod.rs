//! The data path, once for both modes: processes found (a /proc scan at
//! start, then the kernel's exec/exit tracepoints) -> binaries analysed and
//! probed (once per distinct binary, whatever the number of its processes)
//! -> goroutine events drained -> trackers (aggregates) -> the sinks (gmon
//! log lines, /metrics, OTLP). What differs between the modes is only the
//! [`Target`]: node mode admits what its selection and the pod index admit;
//! standalone mode (`--path`) admits exactly one binary, attached up front
//! and kept attached when its processes come and go.
//!
//! Over 400 lines on purpose: the event loop and housekeeping share the
//! pipeline's state (binaries, processes, sinks); process discovery, the
//! attach walk, aggregate mode and pod metadata live in the submodules.

mod aggregate;
mod attachwalk;
mod pods;
mod procs;
mod stop;

pub use stop::Stop;

pub use aggregate::bounds as lifetime_bounds;
pub use pods::Kube;

use crate::{
    discover::{ProcessKey, select::Selection},
    export::{
        logfmt::GmonLog,
        otlp::{Otlp, OtlpCounts, OtlpSink},
        prometheus::{Metrics, PromSink},
    },
    gobin::{BinaryId, Cache, GoBinary},
    model::{Goroutine, ProcLabels, Sink, Tracker},
    probes::{self, Attachment, Maps, Probes},
};
use agent_common::{EVENT_CREATE, GoroutineEvent, PROC_EXEC, PROC_EXIT};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::{
    io::BufWriter,
    num::NonZeroU32,
    os::fd::AsRawFd,
    sync::Arc,
    time::{Duration, Instant},
};

/// How often the loop drains the ring buffers when the kernel did not wake it.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// How often exited processes are swept and self-metrics refreshed.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// Which processes the pipeline watches.
pub enum Target {
    /// Node mode: every process the selection (and the pod index) admits;
    /// series and log lines carry each process's labels.
    Node(Selection),
    /// Standalone mode: the processes of exactly this binary (or only the
    /// one given), with gmon's output unchanged (no per-process labels).
    Binary {
        bin: Arc<GoBinary>,
        pid: Option<NonZeroU32>,
    },
}

/// Where a process seen in the probes stands (`Pipeline::place`).
enum Placed {
    /// Tracked, running this attached binary.
    Tracked(BinaryId),
    /// Left alone on purpose (selection, pod).
    Ignored,
    /// Not placed: gone before it could be looked at, or not admitted.
    Unknown,
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
    /// Standalone's binary: stays attached with no process running it.
    pinned: bool,
    /// Its processes' goroutines could not be read at attach (logged once).
    walk_failed: bool,
}

impl Bin {
    fn new(exe: String, bin: Arc<GoBinary>, att: Attachment, depth: usize, pinned: bool) -> Self {
        Bin {
            exe,
            tracker: Tracker::new(bin.clone(), depth),
            bin,
            att,
            pids: HashSet::default(),
            reported: Default::default(),
            pinned,
            walk_failed: false,
        }
    }
}

struct ProcEntry {
    bin: BinaryId,
    key: Option<ProcessKey>,
    /// Its labels as the tracker has them.
    labels: Arc<ProcLabels>,
}

/// Hands a goroutine event to its binary's tracker: all of it, or with
/// `lines_only` (aggregate mode, where the kernel counts and sends only
/// creations) just to the log.
fn deliver(
    tracker: &mut Tracker,
    ev: &GoroutineEvent,
    stacks: &mut probes::KernelStacks,
    sinks: &mut Sinks,
    lines_only: bool,
) {
    if lines_only {
        tracker.on_creation_line(ev, stacks, &mut sinks.log);
    } else {
        tracker.on_event(ev, stacks, sinks);
    }
}

/// Where the trackers' results go: every update to each sink in turn
/// (no allocation per event: the hot path goes through here).
struct Sinks {
    log: GmonLog<BufWriter<std::io::Stdout>>,
    prom: PromSink,
    otlp: Option<OtlpSink>,
}

impl Sink for Sinks {
    fn created(&mut self, g: &Goroutine) {
        g.site.counts.add(1, 0);
        self.log.created(g);
        self.prom.created(g);
        if let Some(o) = &mut self.otlp {
            o.created(g);
        }
    }
    fn exited(&mut self, g: &Goroutine, exited_ns: u64) {
        g.site.counts.add(0, 1);
        self.log.exited(g, exited_ns);
        self.prom.exited(g, exited_ns);
        if let Some(o) = &mut self.otlp {
            o.exited(g, exited_ns);
        }
    }
    fn counted(&mut self, site: &crate::model::Site, pid: u32, d: &crate::model::SiteDelta) {
        site.counts.add(d.created, d.exited);
        self.prom.counted(site, pid, d);
        if let Some(o) = &mut self.otlp {
            o.counted(site, pid, d);
        }
    }
    fn live(&mut self, sites: &[crate::model::SiteLive], now_ns: u64) {
        self.prom.live(sites, now_ns);
        if let Some(o) = &mut self.otlp {
            o.live(sites, now_ns);
        }
    }
    fn site_gone(&mut self, site_id: u64) {
        self.log.site_gone(site_id);
        self.prom.site_gone(site_id);
        if let Some(o) = &mut self.otlp {
            o.site_gone(site_id);
        }
    }
    fn process_gone(&mut self, pid: u32) {
        self.log.process_gone(pid);
        self.prom.process_gone(pid);
        if let Some(o) = &mut self.otlp {
            o.process_gone(pid);
        }
    }
}

pub struct Pipeline {
    probes: Probes,
    cache: Cache,
    target: Target,
    depth: usize,
    metrics: Arc<Metrics>,
    sinks: Sinks,
    /// The exporter's outcome counters, and what was last reported.
    otlp_stats: Option<(Arc<crate::export::otlp::ExportStats>, OtlpCounts)>,
    own_pid: u32,
    own_exe: Option<BinaryId>,
    bins: HashMap<BinaryId, Bin>,
    /// During a drain, the binary of the last events, out of `bins`: the
    /// next events are most often its too, and reach its tracker without
    /// a lookup (one lookup per event was 6 % of the agent's CPU). Only
    /// `on_event`'s fast path uses it; `cool` puts it back before
    /// anything else can look at `bins`, and after every drain.
    hot: Option<(BinaryId, Bin)>,
    procs: HashMap<u32, ProcEntry>,
    /// Processes decided against (selection, pod): their binary's probes
    /// may still fire for them, and their events are dropped (counted).
    /// The flag marks decisions made on pod metadata, which can change.
    ignored: HashMap<u32, (Option<ProcessKey>, bool)>,
    kube: Option<Kube>,
    /// Binaries not to look at again (not Go, too old, failed), by file.
    skipped: HashMap<BinaryId, procs::Skip>,
    /// Processes found dead by housekeeping, removed after the next drain
    /// (which holds the last events they sent).
    dead: Vec<u32>,
    /// Aggregate mode's per-site totals (set by `run`).
    agg: Option<aggregate::Aggregates>,
    /// Reused by every housekeeping's `live_view`.
    live_buf: Vec<crate::model::SiteLive>,
    /// What /goroutines serves (absent without an HTTP endpoint).
    view: Option<crate::export::view::SitesView>,
    /// Drains started so far: goroutines found alive at attach are
    /// counted once a drain that started after their walk has completed.
    drains: u64,
}

impl Pipeline {
    /// A standalone target's binary is attached here, so that a bad binary
    /// or a refused attach fails before anything runs.
    pub fn new(
        mut probes: Probes,
        target: Target,
        depth: usize,
        metrics: Arc<Metrics>,
        log: GmonLog<BufWriter<std::io::Stdout>>,
        otlp: Option<&Otlp>,
        kube: Option<Kube>,
    ) -> Result<Self, probes::Error> {
        let otlp_sink = match &target {
            Target::Node(_) => otlp.map(|o| o.sink("unknown", None)),
            Target::Binary { bin, .. } => otlp.map(|o| {
                o.sink(
                    &bin.build.version_string,
                    Some(bin.path.display().to_string()),
                )
            }),
        };
        let mut bins = HashMap::default();
        if let Target::Binary { bin, pid } = &target {
            let att = {
                let _span = tracing::debug_span!("attach").entered();
                probes.attach(bin, *pid)?
            };
            metrics.discovery.go_binaries_found.inc();
            let exe = bin.path.display().to_string();
            bins.insert(bin.id, Bin::new(exe, bin.clone(), att, depth, true));
        }
        // The gauges are published by `run`, once the initial scan is done:
        // a reader that sees uprobes attached also sees the processes.
        let p = Pipeline {
            probes,
            cache: Cache::default(),
            target,
            depth,
            sinks: Sinks {
                log,
                prom: PromSink::new(metrics.clone()),
                otlp: otlp_sink,
            },
            otlp_stats: otlp.map(|o| (o.stats.clone(), OtlpCounts::default())),
            metrics,
            own_pid: std::process::id(),
            own_exe: BinaryId::of("/proc/self/exe".as_ref()).ok(),
            bins,
            hot: None,
            procs: HashMap::default(),
            ignored: HashMap::default(),
            kube,
            skipped: HashMap::default(),
            dead: Vec::new(),
            agg: None,
            live_buf: Vec::new(),
            view: None,
            drains: 0,
        };
        if let Target::Binary { bin, .. } = &p.target {
            let b = &p.bins[&bin.id];
            p.sites_attached(&b.exe, &b.bin, &b.att);
        }
        Ok(p)
    }

    /// Publishes the sites to `view` at every housekeeping (/goroutines).
    pub fn serve_view(&mut self, view: crate::export::view::SitesView) {
        self.view = Some(view);
    }

    /// Runs until `stop`, then drains what is left and detaches everything.
    pub fn run(&mut self, maps: Maps, stop: &Stop) {
        let Maps {
            mut events,
            procs: mut proc_events,
            mut stacks,
            mut counters,
            sites,
        } = maps;
        self.agg = sites.map(aggregate::Aggregates::new);
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
        match &self.target {
            Target::Binary { bin, .. } => {
                let b = &self.bins[&bin.id];
                tracing::info!(
                    path = %bin.path.display(),
                    go = %bin.build.version_string,
                    offsets = %bin.offsets_source,
                    uprobes = b.att.uprobes(),
                    sites = b.att.class.label(),
                    processes = b.pids.len(),
                    "attached"
                );
            }
            Target::Node(_) => tracing::info!(
                processes = self.procs.len(),
                binaries = self.bins.len(),
                took_ms = scan_start.elapsed().as_millis() as u64,
                "initial scan done"
            ),
        }
        self.refresh_gauges();
        let mut last_housekeeping = Instant::now();
        let wake_fds: Vec<i32> = events
            .fds()
            .chain([proc_events.as_raw_fd(), stop.fd()])
            .collect();
        loop {
            let stopping = stop.requested();
            if !stopping {
                // With per-goroutine events, the kernel wakes this loop only
                // once a lot is pending: drain on a timer. Aggregate mode
                // has none, so sleep until housekeeping (20 wakeups a second
                // fewer) unless a process starts or exits, or a stop comes.
                // (At INFO the kernel sends creations for their lines.)
                let timeout = match self.agg {
                    Some(_) if !self.sinks.log.logs_creations() => {
                        HOUSEKEEPING_INTERVAL.saturating_sub(last_housekeeping.elapsed())
                    }
                    _ => DRAIN_INTERVAL,
                };
                wait_any(&wake_fds, timeout);
            }
            // Order matters: execs first, so goroutine events find their
            // process; exits last, after the goroutine events that process
            // sent before exiting (all in the buffer by the time we read it).
            let mut batch_procs = Vec::new();
            proc_events.drain(|ev| batch_procs.push(ev));
            for ev in batch_procs.iter().filter(|e| e.kind == PROC_EXEC) {
                self.start(ev.pid, Some(ev.ktime_ns), &mut stacks);
            }
            {
                // Events reach the trackers in kernel time order across
                // the per-CPU rings (probes/ringbuf.rs).
                let span = tracing::trace_span!("drain", events = tracing::field::Empty).entered();
                self.drains += 1;
                let mut created = 0;
                // Processes are only added while draining: where a pid was
                // placed holds for the rest of the drain.
                let mut last = None;
                let (n, malformed) = events.drain(stopping, |ev| {
                    created += usize::from(ev.kind == EVENT_CREATE);
                    self.on_event(ev, &mut last, &mut stacks)
                });
                self.cool();
                span.record("events", n);
                self.metrics.received(created as u64, (n - created) as u64);
                self.metrics.malformed(malformed as u64);
                for b in self.bins.values_mut() {
                    b.tracker.settle(self.drains, &mut stacks, &mut self.sinks);
                }
            }
            if let Some(a) = &mut self.agg {
                a.stale = true;
            }
            for ev in batch_procs.iter().filter(|e| e.kind == PROC_EXIT) {
                self.exited(ev.pid, &mut stacks);
            }
            for pid in std::mem::take(&mut self.dead) {
                self.exited(pid, &mut stacks);
            }
            self.sinks.log.flush();
            if stopping || last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
                last_housekeeping = Instant::now();
                let _span = tracing::trace_span!("housekeeping").entered();
                self.housekeeping(&mut stacks);
                let d = counters.deltas();
                if d[agent_common::counter::LIVE_SPILLED as usize] > 0
                    && let Some(a) = &mut self.agg
                {
                    a.kernel.note_spilled();
                }
                self.metrics.add_kernel(&d);
            }
            self.sinks.prom.publish();
            if stopping {
                break;
            }
        }
        // Detach everything before the programs are unloaded.
        for (_, b) in self.bins.drain() {
            self.probes.detach(b.att);
        }
    }

    /// The hot path: a lookup for the process unless it is `last`'s, and
    /// one for its binary unless that is `hot`.
    fn on_event(
        &mut self,
        ev: &GoroutineEvent,
        last: &mut Option<(u32, BinaryId)>,
        stacks: &mut probes::KernelStacks,
    ) {
        let prev = last.map(|(_, id)| id);
        // A tracked process's binary, from `last` or one lookup; anything
        // else (`place` may admit the process, and attach) with the hot
        // binary back in `bins`.
        let known = match *last {
            Some((pid, id)) if pid == ev.pid => Some(id),
            _ => self.procs.get(&ev.pid).map(|p| p.bin),
        };
        let placed = match known {
            Some(id) => Placed::Tracked(id),
            None => {
                self.cool();
                self.place(ev.pid, stacks)
            }
        };
        let id = match placed {
            Placed::Tracked(id) => {
                *last = Some((ev.pid, id));
                id
            }
            // In aggregate mode the kernel's counts of these processes are
            // dropped (and counted) by `collect`; their creation lines only
            // go with them.
            Placed::Ignored => {
                if self.agg.is_none() {
                    self.metrics.discovery.ignored_process_events.inc();
                }
                return;
            }
            Placed::Unknown => {
                self.metrics.discovery.unknown_process_events.inc();
                return;
            }
        };
        let lines_only = self.agg.is_some();
        if let Some((hot, b)) = &mut self.hot
            && *hot == id
        {
            deliver(&mut b.tracker, ev, stacks, &mut self.sinks, lines_only);
            return;
        }
        self.cool();
        // Taken out on the second event in a row of a binary: where events
        // of several binaries alternate, moving one out and back each time
        // would cost more than the lookup it saves.
        if prev == Some(id)
            && let Some(mut b) = self.bins.remove(&id)
        {
            deliver(&mut b.tracker, ev, stacks, &mut self.sinks, lines_only);
            self.hot = Some((id, b));
            return;
        }
        match self.bins.get_mut(&id) {
            Some(b) => deliver(&mut b.tracker, ev, stacks, &mut self.sinks, lines_only),
            None => self.metrics.discovery.unknown_process_events.inc(),
        }
    }

    /// Puts the hot binary back in `bins`.
    fn cool(&mut self) {
        if let Some((id, b)) = self.hot.take() {
            self.bins.insert(id, b);
        }
    }

    /// Where process `pid`, seen in its binary's probes (an event, or a
    /// kernel site slot), stands. A pid is either tracked or ignored, never
    /// both, so the ignored set and the admission of new processes are
    /// only consulted for unknown pids.
    fn place(&mut self, pid: u32, stacks: &mut probes::KernelStacks) -> Placed {
        if let Some(p) = self.procs.get(&pid) {
            return Placed::Tracked(p.bin);
        }
        if self.ignored.contains_key(&pid) {
            return Placed::Ignored;
        }
        // A process of an attached binary can hit its probes before its
        // exec event is read.
        match &self.target {
            // Only processes running the binary hit its probes: no need to
            // ask /proc, where a short-lived one may be gone.
            Target::Binary { bin, .. } => {
                let id = bin.id;
                self.admit(pid, id);
            }
            Target::Node(_) => self.start(pid, None, stacks),
        }
        match self.procs.get(&pid) {
            Some(p) => Placed::Tracked(p.bin),
            None => Placed::Unknown,
        }
    }

    fn housekeeping(&mut self, stacks: &mut probes::KernelStacks) {
        // Counts first, under the labels they were made with.
        self.collect(stacks);
        self.live_view();
        if let Some(a) = &mut self.agg {
            self.metrics.add_dropped_with_process(a.forget_dead());
        }
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
        for b in self.bins.values_mut() {
            b.tracker.sweep(stacks, &mut self.sinks);
            self.metrics.add_stats(&b.reported, &b.tracker.stats);
            b.reported = b.tracker.stats;
        }
        if let (Some((stats, last)), Some(sink)) = (&mut self.otlp_stats, &self.sinks.otlp) {
            self.metrics.add_otlp(last, OtlpCounts::now(stats, sink));
        }
        self.metrics
            .add_log_write_errors(self.sinks.log.take_write_errors());
        self.refresh_gauges();
    }

    /// Live goroutines and the oldest one's age per site, to the sinks'
    /// gauges and the /goroutines view.
    fn live_view(&mut self) {
        let mut sites = std::mem::take(&mut self.live_buf);
        sites.clear();
        match &mut self.agg {
            None => {
                for b in self.bins.values() {
                    b.tracker.live_sites(&mut sites);
                }
            }
            Some(a) => {
                if let Some(n) = a.live_sites(&mut sites) {
                    self.metrics.live_table_entries.set(n as i64);
                }
            }
        }
        let now = procs::monotonic_ns();
        self.sinks.live(&sites, now);
        if let Some(v) = &self.view {
            v.publish(&sites, now);
        }
        self.live_buf = sites;
    }

    fn refresh_gauges(&self) {
        let m = &self.metrics;
        m.goroutines_tracked.set(match &self.agg {
            Some(a) => a.live,
            None => self.bins.values().map(|b| b.tracker.live() as i64).sum(),
        });
        m.processes_tracked.set(self.procs.len() as i64);
        m.discovery.binaries_attached.set(self.bins.len() as i64);
        m.uprobes_attached
            .set(self.bins.values().map(|b| b.att.uprobes() as i64).sum());
    }
}

/// Waits until any of `fds` is readable or `timeout` passes.
fn wait_any(fds: &[i32], timeout: Duration) {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: valid pollfds; errors just end the wait early.
    unsafe {
        libc::poll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            timeout.as_millis() as libc::c_int,
        )
    };
}
