//! Aggregates: the table of live goroutines keyed by (pid, goid), and the
//! creation sites they share. Kernel events go in; created/exited goroutines
//! with symbolized sites come out to a `Sink`.
//!
//! Over 400 lines on purpose: the tracker's creation, exit, attach-walk
//! settling and sweep paths all update the same live table and site cache,
//! and their invariants (each goroutine counted once) read best together.

pub mod aggregate;
mod labels;
mod live;

pub use labels::{STACK_LABELS, stack_labels};
use live::LiveTable;

use crate::{
    discover::{self, ProcessKey},
    gobin::{Frame, GoBinary},
};
use agent_common::{Bucket, EVENT_CREATE, EVENT_EXIT, GoroutineEvent, NO_STACK, SEEN_AT_ATTACH};
use rustc_hash::FxHashMap as HashMap;
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

/// Who a site belongs to, in node mode: the process, its executable and,
/// in a container, the container id and pod UID that Kubernetes metadata
/// joins on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcLabels {
    pub pid: u32,
    /// Go release of its binary, e.g. go1.23.5.
    pub runtime_version: String,
    /// Executable path as the process sees it (inside its container).
    pub binary: String,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    /// The pod from the Kubernetes index, once it knows the process's.
    pub k8s: Option<crate::k8s::PodLabels>,
}

/// Where goroutines come from: the `go` statement and what it started.
#[derive(Debug)]
pub struct Site {
    /// Unique per site, for exporters that cache per-site state.
    pub id: u64,
    /// Creating user stack, innermost frame first (empty if not collected).
    pub stack: Vec<Frame>,
    /// Function containing the `go` statement (from g.gopc).
    pub creator: Option<Frame>,
    /// The goroutine's own function (from g.startpc).
    pub start: Option<Frame>,
    /// The process it was seen in (node mode only).
    pub proc: Option<Arc<ProcLabels>>,
    /// Its goroutines were found alive when the process was first probed
    /// (not seen created): the stack is the `go` statement's only.
    pub seen_at_attach: bool,
    /// What the sinks were handed for it, for views that need totals.
    pub counts: SiteCounts,
}

/// A site's totals. Only the pipeline thread writes them (a load and a
/// store, no locked add); views read them from anywhere.
#[derive(Debug, Default)]
pub struct SiteCounts {
    created: AtomicU64,
    exited: AtomicU64,
}

impl SiteCounts {
    pub fn add(&self, created: u64, exited: u64) {
        if created > 0 {
            self.created
                .store(self.created.load(Relaxed) + created, Relaxed);
        }
        if exited > 0 {
            self.exited
                .store(self.exited.load(Relaxed) + exited, Relaxed);
        }
    }
    pub fn created(&self) -> u64 {
        self.created.load(Relaxed)
    }
    pub fn exited(&self) -> u64 {
        self.exited.load(Relaxed)
    }
}

/// A site with live goroutines, as housekeeping sees it (for the live and
/// oldest-age gauges and the /goroutines view).
#[derive(Debug, Clone)]
pub struct SiteLive {
    pub site: Arc<Site>,
    pub pid: u32,
    pub live: u64,
    /// Creation time (kernel monotonic ns) of its oldest live goroutine:
    /// for goroutines seen at attach, an upper bound (see `attach_created`).
    pub oldest_ns: Option<u64>,
}

/// When a goroutine found alive at attach was created, as well as the
/// agent can tell: no later than the walk, and, when the GC has seen it
/// blocked, no later than its `waitsince` (CLOCK_MONOTONIC, the kernel's
/// clock). That is the runtime's own estimate, the one a goroutine dump
/// prints as "[chan receive, 5 minutes]": the GC stamps a blocked
/// goroutine with the start of the previous cycle's mark termination, so
/// it can be early by up to one GC cycle.
pub fn attach_created(walked_ns: u64, waitsince: u64) -> u64 {
    if waitsince > 0 && waitsince < walked_ns {
        waitsince
    } else {
        walked_ns
    }
}

/// A goroutine being tracked, as the sinks see it.
#[derive(Debug, Clone, Copy)]
pub struct Goroutine<'a> {
    pub pid: u32,
    pub goid: u64,
    pub parent_goid: u64,
    /// Kernel monotonic time of creation, in ns.
    pub created_ns: u64,
    pub site: &'a Site,
}

/// A goroutine in the live table. Its site is an index into its process's
/// sites: no reference count to touch per goroutine (a locked add and a
/// locked subtract were a tenth of the event path).
#[derive(Debug, Clone, Copy, Default)]
struct Live {
    parent_goid: u64,
    created_ns: u64,
    site: u32,
}

/// What the kernel tells sites apart by: stack key, gopc, startpc.
type SiteKey = (u64, u64, u64);

/// What a site's kernel totals grew by since they were last read
/// (aggregate mode, where no event per goroutine reaches user space).
#[derive(Debug, Clone, Copy)]
pub struct SiteDelta<'a> {
    pub created: u64,
    pub exited: u64,
    /// Lifetimes of the exited ones: (kernel bucket, count and sum) for
    /// each bucket that grew.
    pub buckets: &'a [(usize, Bucket)],
    /// The kernel buckets' upper bounds in ns (the last bucket has none).
    pub bounds: &'a [u64],
}

impl SiteDelta<'_> {
    /// Upper bound of kernel bucket `i` in seconds (infinite for the last).
    pub fn upper_secs(&self, i: usize) -> f64 {
        self.bounds
            .get(i)
            .map(|&ns| ns as f64 / 1e9)
            .unwrap_or(f64::INFINITY)
    }
}

/// Receives what the tracker learns.
pub trait Sink {
    fn created(&mut self, g: &Goroutine);
    fn exited(&mut self, g: &Goroutine, exited_ns: u64);
    /// Aggregate mode: `site` (in process `pid`) counted `d` more.
    fn counted(&mut self, _site: &Site, _pid: u32, _d: &SiteDelta) {}
    /// Housekeeping: every site with live goroutines (sites missing from
    /// `sites` have none), `now_ns` on the kernel's clock.
    fn live(&mut self, _sites: &[SiteLive], _now_ns: u64) {}
    /// The site's process has exited: drop anything cached for it.
    fn site_gone(&mut self, _site_id: u64) {}
    /// Process `pid` is gone (after its sites): drop per-process state.
    fn process_gone(&mut self, _pid: u32) {}
}

/// Where user stacks collected by the kernel are read from.
pub trait StackSource {
    /// The PCs of stack `key`, innermost first.
    fn user_stack(&mut self, key: u64) -> Option<Vec<u64>>;
    /// Called once the stack's process has exited: the key is unused.
    fn forget(&mut self, key: u64);
}

/// Counts of anomalies, all exported as self-metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Exits of goroutines created before the agent attached.
    pub untracked_exits: u64,
    /// A creation for a (pid, goid) already live (the old entry is replaced).
    pub duplicate_creates: u64,
    /// PCs that could not be resolved to a function.
    pub unresolved_pcs: u64,
    /// Stacks whose id was given but could not be read from the stack map.
    pub stack_reads_failed: u64,
    /// Goroutines still live when their process exited.
    pub dropped_with_process: u64,
    /// Processes whose load bias could not be read (PCs left unresolved).
    pub bias_failures: u64,
    /// Goroutines found alive when their process was first probed.
    pub seen_at_attach: u64,
}

/// A process's goroutines found alive at attach, waiting until the events
/// sent before the walk are drained (creations the walk also saw are then
/// known, and are not counted twice).
struct Pending {
    gs: Vec<crate::walk::LiveG>,
    walked_ns: u64,
    /// The drain during (or after) which the walk ran: it settles once a
    /// later drain has completed.
    drain: u64,
    /// Exits of unknown goroutines since the walk: alive at attach, gone
    /// before settling.
    exited: HashMap<u64, u64>,
    /// Goroutines whose creation the probes reported since the walk (the
    /// walk may have seen them too, and they may be gone already).
    created: rustc_hash::FxHashSet<u64>,
}

struct Proc {
    labels: Option<Arc<ProcLabels>>,
    /// The previous sweep found the process gone.
    found_dead: bool,
    key: Option<ProcessKey>,
    bias: Option<u64>,
    live: LiveTable<Live>,
    /// Every site made for the process, by index. Those made under earlier
    /// labels stay: their goroutines still exit through them, so they are
    /// released only with the process.
    sites: Vec<(SiteKey, Arc<Site>)>,
    /// The sites of the current labels.
    by_key: HashMap<SiteKey, u32>,
    /// The last site looked up (most creations repeat it).
    last: Option<(SiteKey, u32)>,
    pending: Option<Pending>,
}

impl Proc {
    fn goroutine(&self, pid: u32, goid: u64, g: Live) -> Goroutine<'_> {
        Goroutine {
            pid,
            goid,
            parent_goid: g.parent_goid,
            created_ns: g.created_ns,
            site: &self.sites[g.site as usize].1,
        }
    }
}

static NEXT_SITE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The goroutine table for the processes of one binary.
pub struct Tracker {
    binary: Arc<GoBinary>,
    depth: usize,
    procs: HashMap<u32, Proc>,
    /// Processes with a walk not yet settled.
    unsettled: usize,
    /// The last creation's process, site key and site: most creations
    /// repeat it, and then need one process lookup, not two. Cleared
    /// whenever a process's sites could change meaning (new labels, the
    /// process gone and its pid reused).
    last: Option<(u32, SiteKey, u32)>,
    pub stats: Stats,
}

impl Tracker {
    /// `depth` caps the frames kept per creation stack.
    pub fn new(binary: Arc<GoBinary>, depth: usize) -> Self {
        Tracker {
            binary,
            depth,
            procs: HashMap::default(),
            unsettled: 0,
            last: None,
            stats: Stats::default(),
        }
    }

    /// Goroutines currently tracked, over all processes.
    pub fn live(&self) -> usize {
        self.procs.values().map(|p| p.live.len()).sum()
    }

    /// Processes currently tracked.
    pub fn processes(&self) -> usize {
        self.procs.len()
    }

    /// Labels the sites of process `pid` from now on (node mode). New
    /// labels (its pod became known) start new sites; goroutines already
    /// live keep theirs, so each series stays consistent.
    pub fn set_labels(&mut self, labels: Arc<ProcLabels>) {
        let p = self.proc(labels.pid);
        if p.labels.as_ref().is_some_and(|l| **l == *labels) {
            return;
        }
        p.by_key.clear();
        p.last = None;
        p.labels = Some(labels);
        self.last = None;
    }

    /// Forgets process `pid` now (it exited): its goroutines are dropped
    /// and counted, its kernel stacks and cached series released.
    pub fn remove_process(&mut self, pid: u32, stacks: &mut dyn StackSource, sink: &mut dyn Sink) {
        self.last = None;
        if let Some(p) = self.procs.remove(&pid) {
            self.unsettled -= p.pending.is_some() as usize;
            self.stats.dropped_with_process += p.live.len() as u64;
            release_sites(&p, stacks, sink);
            sink.process_gone(pid);
        }
    }

    pub fn on_event(
        &mut self,
        ev: &GoroutineEvent,
        stacks: &mut dyn StackSource,
        sink: &mut dyn Sink,
    ) {
        match ev.kind {
            EVENT_CREATE => self.on_create(ev, stacks, sink),
            EVENT_EXIT => self.on_exit(ev, sink),
            _ => {}
        }
    }

    fn proc(&mut self, pid: u32) -> &mut Proc {
        let binary = &self.binary;
        let stats = &mut self.stats;
        self.procs.entry(pid).or_insert_with(|| {
            let bias = match discover::load_bias(pid, binary) {
                Ok(b) => Some(b),
                // A non-PIE binary is never relocated.
                Err(_) if !binary.pie => Some(0),
                Err(_) => {
                    stats.bias_failures += 1;
                    None
                }
            };
            Proc {
                labels: None,
                found_dead: false,
                key: ProcessKey::of(pid),
                bias,
                live: LiveTable::default(),
                sites: Vec::new(),
                by_key: HashMap::default(),
                last: None,
                pending: None,
            }
        })
    }

    /// Goroutines of `pid` found alive by a walk of its memory at
    /// `walked_ns`, during drain number `drain`: counted once that drain's
    /// events are in (`settle`).
    pub fn seen_at_attach(
        &mut self,
        pid: u32,
        gs: Vec<crate::walk::LiveG>,
        walked_ns: u64,
        drain: u64,
    ) {
        self.unsettled += 1;
        self.proc(pid).pending = Some(Pending {
            gs,
            walked_ns,
            drain,
            exited: HashMap::default(),
            created: Default::default(),
        });
    }

    /// Counts the goroutines of walks made before drain `done` completed:
    /// those whose creation the probes did not report are created (seen at
    /// attach) now, and those that exited meanwhile exit with them.
    pub fn settle(&mut self, done: u64, stacks: &mut dyn StackSource, sink: &mut dyn Sink) {
        if self.unsettled == 0 {
            return;
        }
        let due: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| p.pending.as_ref().is_some_and(|w| w.drain < done))
            .map(|(&pid, _)| pid)
            .collect();
        for pid in due {
            let mut w = self.proc(pid).pending.take().expect("due");
            self.unsettled -= 1;
            for g in &w.gs {
                if w.created.contains(&g.goid) || self.procs[&pid].live.contains_key(g.goid) {
                    continue;
                }
                let site = self.site_index(pid, (SEEN_AT_ATTACH, g.gopc, g.startpc), stacks);
                let live = Live {
                    parent_goid: 0,
                    created_ns: attach_created(w.walked_ns, g.waitsince),
                    site,
                };
                let p = self.procs.get_mut(&pid).expect("walked");
                sink.created(&p.goroutine(pid, g.goid, live));
                self.stats.seen_at_attach += 1;
                match w.exited.remove(&g.goid) {
                    // Alive at attach, exited since.
                    Some(exited_ns) => sink.exited(&p.goroutine(pid, g.goid, live), exited_ns),
                    None => {
                        p.live.insert(g.goid, live);
                    }
                }
            }
            // Exits of goroutines neither seen created nor found alive.
            self.stats.untracked_exits += w.exited.len() as u64;
        }
    }

    /// Every site of every process, with its live goroutines and the
    /// creation time of its oldest (one pass over the live table).
    pub fn live_sites(&self, out: &mut Vec<SiteLive>) {
        let mut by_site: Vec<(u64, u64)> = Vec::new();
        for (&pid, p) in &self.procs {
            by_site.clear();
            by_site.resize(p.sites.len(), (0, u64::MAX));
            for g in p.live.values() {
                let e = &mut by_site[g.site as usize];
                e.0 += 1;
                e.1 = e.1.min(g.created_ns);
            }
            out.extend(
                p.sites
                    .iter()
                    .zip(&by_site)
                    .map(|((_, site), &(live, oldest))| SiteLive {
                        site: site.clone(),
                        pid,
                        live,
                        oldest_ns: (live > 0).then_some(oldest),
                    }),
            );
        }
    }

    /// The site of goroutines created in `pid` with this stack key, gopc
    /// and startpc: symbolized the first time, then cached.
    pub fn site(&mut self, pid: u32, key: SiteKey, stacks: &mut dyn StackSource) -> Arc<Site> {
        let i = self.site_index(pid, key, stacks);
        self.proc(pid).sites[i as usize].1.clone()
    }

    /// `site`, as its index in the process's sites.
    fn site_index(&mut self, pid: u32, key: SiteKey, stacks: &mut dyn StackSource) -> u32 {
        // Common case: a known site, one process lookup. A new site is
        // resolved first (that needs &mut self), then cached.
        let p = self.proc(pid);
        if let Some((k, i)) = p.last
            && k == key
        {
            return i;
        }
        if let Some(&i) = p.by_key.get(&key) {
            p.last = Some((key, i));
            return i;
        }
        let s = Arc::new(self.resolve_site(pid, key, stacks));
        let p = self.proc(pid);
        let i = p.sites.len() as u32;
        p.sites.push((key, s));
        p.by_key.insert(key, i);
        p.last = Some((key, i));
        i
    }

    /// Aggregate mode with creation log lines: the kernel counts every
    /// goroutine and keeps exits to itself; a creation is only shown to
    /// `sink` (the log), not entered in the live table or counted here.
    pub fn on_creation_line(
        &mut self,
        ev: &GoroutineEvent,
        stacks: &mut dyn StackSource,
        sink: &mut dyn Sink,
    ) {
        if ev.kind == EVENT_CREATE {
            self.show_created(ev, stacks, sink);
        }
    }

    /// Finds a creation's site (most creations repeat the last one) and
    /// hands the goroutine to `sink`; returns it and its process, for the
    /// live table.
    fn show_created(
        &mut self,
        ev: &GoroutineEvent,
        stacks: &mut dyn StackSource,
        sink: &mut dyn Sink,
    ) -> (Live, &mut Proc) {
        let key = (ev.stack, ev.gopc, ev.startpc);
        let site = match self.last {
            Some((pid, k, i)) if pid == ev.pid && k == key => i,
            _ => {
                let i = self.site_index(ev.pid, key, stacks);
                self.last = Some((ev.pid, key, i));
                i
            }
        };
        let g = Live {
            parent_goid: ev.parent_goid,
            created_ns: ev.ktime_ns,
            site,
        };
        let p = self.procs.get_mut(&ev.pid).expect("inserted by site_index");
        sink.created(&p.goroutine(ev.pid, ev.goid, g));
        (g, p)
    }

    fn on_create(
        &mut self,
        ev: &GoroutineEvent,
        stacks: &mut dyn StackSource,
        sink: &mut dyn Sink,
    ) {
        let (g, p) = self.show_created(ev, stacks, sink);
        if let Some(w) = &mut p.pending {
            w.created.insert(ev.goid);
        }
        let duplicate = p.live.insert(ev.goid, g).is_some();
        if duplicate {
            self.stats.duplicate_creates += 1;
        }
    }

    fn on_exit(&mut self, ev: &GoroutineEvent, sink: &mut dyn Sink) {
        let Some(p) = self.procs.get_mut(&ev.pid) else {
            self.stats.untracked_exits += 1;
            return;
        };
        match p.live.remove(ev.goid) {
            Some(g) => sink.exited(&p.goroutine(ev.pid, ev.goid, g), ev.ktime_ns),
            // Until its process's walk settles, it may be one the walk
            // found: decided then.
            None => match &mut p.pending {
                Some(w) => {
                    w.exited.insert(ev.goid, ev.ktime_ns);
                }
                None => self.stats.untracked_exits += 1,
            },
        }
    }

    fn resolve_site(
        &mut self,
        pid: u32,
        (stack_key, gopc, startpc): (u64, u64, u64),
        stacks: &mut dyn StackSource,
    ) -> Site {
        let bias = self.proc(pid).bias;
        let proc_labels = self.proc(pid).labels.clone();
        // Every source frame of a PC (inlined calls first), or its address
        // when it cannot be resolved.
        let frames = |pc: u64, stats: &mut Stats| -> Vec<Frame> {
            let f = bias
                .map(|b| self.binary.symbolize_inline(pc.wrapping_sub(b)))
                .unwrap_or_default();
            if f.is_empty() {
                stats.unresolved_pcs += 1;
                return vec![Frame {
                    function: format!("{pc:#x}"),
                    file: None,
                    line: None,
                }];
            }
            f
        };
        let frame = |pc: u64, stats: &mut Stats| frames(pc, stats).swap_remove(0);
        let mut stats = self.stats;
        let mut stack = Vec::new();
        let seen_at_attach = stack_key == SEEN_AT_ATTACH;
        if seen_at_attach {
            // Only the `go` statement is known: its frames are the stack.
            if self.depth > 0 && gopc != 0 {
                stack = frames(gopc.saturating_sub(1), &mut stats);
                stack.truncate(self.depth);
            }
        } else if stack_key != NO_STACK {
            match stacks.user_stack(stack_key) {
                Some(pcs) => {
                    for (i, &pc) in pcs.iter().enumerate() {
                        // Frames past the first are return addresses: look up
                        // the call instruction before them.
                        let pc = if i == 0 { pc } else { pc.saturating_sub(1) };
                        stack.extend(frames(pc, &mut stats));
                    }
                    stack.truncate(self.depth);
                }
                None => stats.stack_reads_failed += 1,
            }
        }
        // gopc is a return address too (the call to newproc).
        let creator = (gopc != 0).then(|| frame(gopc.saturating_sub(1), &mut stats));
        let start = (startpc != 0).then(|| frame(startpc, &mut stats));
        self.stats = stats;
        Site {
            // Unique across trackers: node mode has one per binary, and
            // the sinks they share cache per site id.
            id: NEXT_SITE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            stack,
            creator,
            start,
            proc: proc_labels,
            seen_at_attach,
            counts: SiteCounts::default(),
        }
    }

    /// Forgets processes that have exited (on the second sweep that finds
    /// them gone), their kernel-side stacks and what sinks cached for their
    /// sites; returns the goroutines dropped.
    pub fn sweep(&mut self, stacks: &mut dyn StackSource, sink: &mut dyn Sink) -> u64 {
        let mut dropped = 0;
        let mut unsettled = 0;
        self.last = None;
        self.procs.retain(|&pid, p| {
            if p.key.is_some_and(|k| k.alive()) {
                return true;
            }
            // Found dead: keep it until the next sweep, so the events it
            // sent just before dying (still in the ring buffer) are matched.
            if !p.found_dead {
                p.found_dead = true;
                return true;
            }
            dropped += p.live.len() as u64;
            unsettled += p.pending.is_some() as usize;
            release_sites(p, stacks, sink);
            sink.process_gone(pid);
            false
        });
        self.stats.dropped_with_process += dropped;
        self.unsettled -= unsettled;
        dropped
    }
}

impl Site {
    /// Aggregate mode's overflow site: what the kernel counted when every
    /// site slot was taken (exact totals, no site).
    pub fn overflow() -> Site {
        let other = || Frame {
            function: "overflow".into(),
            file: None,
            line: None,
        };
        Site {
            id: NEXT_SITE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            stack: Vec::new(),
            creator: Some(other()),
            start: Some(other()),
            proc: None,
            seen_at_attach: false,
            counts: SiteCounts::default(),
        }
    }
}

/// Releases what a departed process's sites hold outside the tracker.
fn release_sites(p: &Proc, stacks: &mut dyn StackSource, sink: &mut dyn Sink) {
    let mut forgotten = std::collections::HashSet::new();
    for ((stack, _, _), site) in &p.sites {
        if *stack != NO_STACK && *stack != SEEN_AT_ATTACH && forgotten.insert(*stack) {
            stacks.forget(*stack);
        }
        sink.site_gone(site.id);
    }
}
