//! Aggregate mode: the kernel counts per site, and the pipeline reads the
//! totals at housekeeping (and before a process's state goes), resolves
//! each new slot to its process's site once, and hands the deltas to the
//! sinks. Nothing per goroutine reaches user space.

use super::{Pipeline, Placed};
use crate::{
    discover::ProcessKey,
    model::{
        Sink, Site, SiteLive,
        aggregate::{Slot, lifetime_bounds},
    },
    probes::{KernelSites, KernelStacks},
};
use agent_common::{Bucket, LifetimeBounds, MAX_SITES, OVERFLOW_SITE, SiteKey};
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

/// The kernel's bucket bounds for these exporters' buckets (seconds).
pub fn bounds(sets: &[&[f64]]) -> Result<LifetimeBounds, String> {
    lifetime_bounds(sets).map_err(|n| {
        format!(
            "{n} distinct lifetime bucket bounds, the kernel holds at most {}",
            agent_common::LIFETIME_BUCKETS - 1
        )
    })
}

pub(super) struct Aggregates {
    pub(super) kernel: KernelSites,
    slots: Vec<Option<Slot>>,
    /// The slots of each process, to read and free them when it goes.
    by_pid: HashMap<u32, Vec<u32>>,
    overflow: Slot,
    buf: Vec<(usize, Bucket)>,
    /// Reused by every read: (slot, key) of the slots in use.
    scan: Vec<(u32, SiteKey)>,
    /// The kernel may have taken slots since the last read (set after each
    /// drain): a process's release needs a read first, once per drain.
    pub stale: bool,
    /// Goroutines live, over the sites of admitted processes.
    pub live: i64,
    /// Processes gone whose live goroutines are still in the kernel's
    /// table: removed together at housekeeping.
    dead: Vec<u32>,
    /// `live_in_slots` at the last live view, and whether processes were
    /// forgotten since: `live_sites` reads the table only when either says
    /// it may have changed (copying it was a fifth of an idle agent's CPU).
    last_live_in_slots: u64,
    forgot: bool,
}

impl Aggregates {
    pub(super) fn new(kernel: KernelSites) -> Self {
        Aggregates {
            kernel,
            slots: (0..MAX_SITES).map(|_| None).collect(),
            by_pid: HashMap::default(),
            overflow: Slot::new(SiteKey::default(), Some(Arc::new(Site::overflow()))),
            buf: Vec::new(),
            scan: Vec::new(),
            stale: true,
            live: 0,
            dead: Vec::new(),
            last_live_in_slots: u64::MAX,
            forgot: false,
        }
    }

    /// Hands one slot's delta to the sink.
    fn report(&mut self, slot: u32, sink: &mut dyn Sink) {
        let now = self.kernel.totals(slot);
        let s = match slot {
            OVERFLOW_SITE => &mut self.overflow,
            _ => match &mut self.slots[slot as usize] {
                Some(s) => s,
                None => return,
            },
        };
        let Some(site) = s.site.clone() else {
            return;
        };
        let pid = s.key.pid;
        let kernel = &self.kernel;
        s.take_delta(
            now,
            || kernel.lifetimes(slot),
            kernel.bounds(),
            &mut self.buf,
            |d| sink.counted(&site, pid, d),
        );
    }

    /// Frees the slots of `pid`, after a last read; its live goroutines
    /// go at the next housekeeping.
    fn release(&mut self, pid: u32, sink: &mut dyn Sink) {
        for slot in self.by_pid.remove(&pid).unwrap_or_default() {
            self.report(slot, sink);
            self.kernel.free(slot);
            self.slots[slot as usize] = None;
        }
        self.dead.push(pid);
    }

    /// Removes the live goroutines of the processes gone since the last
    /// call; returns how many there were.
    pub(super) fn forget_dead(&mut self) -> u64 {
        if self.dead.is_empty() {
            return 0;
        }
        let n = self.kernel.forget_live(&self.dead);
        self.dead.clear();
        self.forgot = true;
        n
    }

    /// Sites of `pid` are to be resolved again (its labels changed).
    pub(super) fn relabel(&mut self, pid: u32) {
        for &slot in self.by_pid.get(&pid).into_iter().flatten() {
            if let Some(s) = &mut self.slots[slot as usize] {
                s.site = None;
            }
        }
    }
}

impl Aggregates {
    /// Every admitted site with its live goroutines (as last read) and the
    /// creation time of its oldest, from one batched walk of the kernel's
    /// live table. Returns how many entries the table held, `None` if it
    /// was not read: it could not be, or nothing can have changed it since
    /// the last read found it empty of live goroutines (no slot has any, none
    /// had at the last view, no process was forgotten since and user space
    /// put nothing in the spill table).
    pub(super) fn live_sites(&mut self, out: &mut Vec<SiteLive>) -> Option<u64> {
        let mut oldest: HashMap<u32, u64> = HashMap::default();
        // The slots in use as this housekeeping's `collect` read them.
        let in_slots = self
            .kernel
            .live_in_slots(self.scan.iter().map(|&(slot, _)| slot));
        let unchanged = in_slots == 0
            && self.last_live_in_slots == 0
            && self.dead.is_empty()
            && !self.forgot
            && !self.kernel.spill_used();
        self.last_live_in_slots = in_slots;
        let mut entries = None;
        if !unchanged {
            self.forgot = false;
            let mut n = 0;
            match self.kernel.scan_live(|_, g| {
                n += 1;
                let e = oldest.entry(g.site).or_insert(u64::MAX);
                *e = (*e).min(g.created_ns);
            }) {
                Ok(()) => entries = Some(n),
                Err(e) => {
                    tracing::debug!(error = %e, "live table not read: oldest ages not updated")
                }
            }
        }
        // Through the processes' slot lists: walking all 4096 slots was
        // most of an idle agent's own time in this loop.
        let slots = self
            .by_pid
            .values()
            .flatten()
            .filter_map(|&slot| Some((slot, self.slots[slot as usize].as_ref()?)))
            .chain(std::iter::once((OVERFLOW_SITE, &self.overflow)));
        for (slot, s) in slots {
            let Some(site) = &s.site else { continue };
            let live = s.live().max(0) as u64;
            out.push(SiteLive {
                site: site.clone(),
                pid: s.key.pid,
                live,
                oldest_ns: oldest.get(&slot).copied().filter(|_| live > 0),
            });
        }
        entries
    }
}

impl Pipeline {
    /// Reads every site's totals and hands what grew to the sinks.
    pub(super) fn collect(&mut self, stacks: &mut KernelStacks) {
        let Some(mut agg) = self.agg.take() else {
            return;
        };
        let mut in_use = std::mem::take(&mut agg.scan);
        in_use.clear();
        in_use.extend(agg.kernel.in_use());
        let mut live = 0;
        let mut gone = Vec::new();
        for &(slot, key) in &in_use {
            let fresh = agg.slots[slot as usize]
                .as_ref()
                .is_none_or(|s| s.key != key);
            if fresh {
                agg.slots[slot as usize] = Some(Slot::new(key, None));
                agg.by_pid.entry(key.pid).or_default().push(slot);
            }
            if agg.slots[slot as usize]
                .as_ref()
                .is_some_and(|s| s.site.is_none())
            {
                match self.place(key.pid, stacks) {
                    Placed::Tracked(id) => {
                        let site = self.bins.get_mut(&id).map(|b| {
                            b.tracker
                                .site(key.pid, (key.stack, key.gopc, key.startpc), stacks)
                        });
                        agg.slots[slot as usize].as_mut().expect("set").site = site;
                    }
                    // Left alone on purpose: what it counted is dropped,
                    // and counted as its events would be.
                    Placed::Ignored => {
                        let now = agg.kernel.totals(slot);
                        let n = agg.slots[slot as usize].as_mut().expect("set").skip(now);
                        self.metrics.discovery.ignored_process_events.inc_by(n);
                    }
                    // Gone before it was placed: its slots go now.
                    Placed::Unknown if ProcessKey::of(key.pid).is_none() => gone.push(key.pid),
                    Placed::Unknown => {}
                }
            }
            // Only admitted processes' sites are reported and counted live.
            if agg.slots[slot as usize]
                .as_ref()
                .is_some_and(|s| s.site.is_some())
            {
                agg.report(slot, &mut self.sinks);
                live += agg.slots[slot as usize].as_ref().map_or(0, Slot::live);
            }
        }
        agg.report(OVERFLOW_SITE, &mut self.sinks);
        agg.live = live + agg.overflow.live();
        agg.scan = in_use;
        agg.stale = false;
        gone.sort_unstable();
        gone.dedup();
        for pid in gone {
            agg.release(pid, &mut self.sinks);
        }
        self.agg = Some(agg);
    }

    /// Aggregate mode: process `pid` (still tracked) is going; read its
    /// sites one last time and free them.
    pub(super) fn release_process(&mut self, pid: u32, stacks: &mut KernelStacks) {
        match &self.agg {
            None => return,
            // Slots it took since the last read are found by a full read.
            Some(a) if a.stale => self.collect(stacks),
            Some(_) => {}
        }
        let agg = self.agg.as_mut().expect("checked");
        agg.release(pid, &mut self.sinks);
    }
}
