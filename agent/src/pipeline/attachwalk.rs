//! Goroutines alive when a process is first probed: read from its memory
//! right after it is tracked (its binary's probes are attached by then, so
//! every creation and exit from that moment on is seen too), and counted
//! once each, as created at their site's `go` statement, flagged
//! `seen_at_attach`.
//!
//! Goroutines created or exiting during the walk are reconciled:
//! - with per-goroutine events, the walk's goroutines are held until a
//!   drain that started after it has completed (`Tracker::settle`): any
//!   creation the probes reported meanwhile wins, and exits of unknown
//!   goroutines meanwhile close the walk's ones;
//! - in aggregate mode, each goes into the kernel's live table only if the
//!   probes did not put it there (NOEXIST), and a second walk takes out
//!   the ones that exited before their entry went in (their exit found no
//!   entry, and the entry would stay forever). The table is keyed by the
//!   g's address, which the runtime reuses once a goroutine exits: a
//!   goroutine is alive at the second walk if its g still holds its goid.

use super::{Pipeline, procs::monotonic_ns};
use crate::probes::Inserted;
use crate::{
    discover,
    gobin::BinaryId,
    walk::{self, LiveG},
};
use agent_common::{LiveGoroutine, LiveKey, OVERFLOW_SITE, SEEN_AT_ATTACH, SiteKey};
use rustc_hash::FxHashMap as HashMap;

impl Pipeline {
    /// Counts the goroutines `pid` (just tracked, running `id`) already has.
    pub(super) fn walk_process(&mut self, pid: u32, id: BinaryId) {
        let Some(b) = self.bins.get_mut(&id) else {
            return;
        };
        let result = |r: &str| self.metrics.attach_walks.with_label_values(&[r]).inc();
        let w = match b.bin.walk {
            Ok(w) => w,
            Err(why) => {
                if !b.walk_failed {
                    b.walk_failed = true;
                    tracing::warn!(exe = %b.exe, reason = why, "goroutines alive before attach cannot be read from this binary's processes; they are not counted");
                }
                result("unsupported");
                return;
            }
        };
        let bias = match discover::load_bias(pid, &b.bin) {
            Ok(bias) => bias,
            Err(_) if !b.bin.pie => 0,
            Err(_) => {
                result("exited");
                return;
            }
        };
        let walked_ns = monotonic_ns();
        let span = tracing::debug_span!("attach_walk", pid).entered();
        // With events the walk's goroutines wait for the drain; in
        // aggregate mode each batch goes into the kernel's table as it is
        // read (memory bounded by that table, not by the process).
        let mut gs: Vec<LiveG> = Vec::new();
        let mut acc = Walked::default();
        let stats = match &mut self.agg {
            None => walk::walk(pid, bias, &w, |batch| gs.extend_from_slice(batch)),
            Some(agg) => walk::walk(pid, bias, &w, |batch| {
                agg.insert_walked(pid, batch, walked_ns, &mut acc)
            }),
        };
        drop(span);
        if let Some(agg) = &mut self.agg {
            // Even after a failed walk, what went in is settled and counted.
            let again = |f: &mut dyn FnMut(&[LiveG])| walk::walk(pid, bias, &w, f).is_ok();
            let (n, full) = agg.settle_walked(acc, again);
            self.metrics.add_seen_at_attach(n);
            self.metrics.live_full(full);
        }
        let stats = match stats {
            Ok(s) => s,
            Err(e) => {
                result(e.reason());
                if !b.walk_failed {
                    b.walk_failed = true;
                    tracing::warn!(exe = %b.exe, error = %e, "goroutines alive before attach not counted");
                }
                return;
            }
        };
        result(if stats.starting { "starting" } else { "ok" });
        tracing::debug!(
            pid,
            entries = stats.entries,
            live = stats.live,
            unreadable = stats.unreadable,
            took_us = stats.took.as_micros() as u64,
            "goroutines alive at attach read"
        );
        if self.agg.is_none() {
            b.tracker.seen_at_attach(pid, gs, walked_ns, self.drains);
        }
    }
}

/// Aggregate mode: what one walk put in the kernel's live table.
#[derive(Default)]
pub(super) struct Walked {
    /// Seen-at-attach slot per (gopc, startpc).
    slots: HashMap<(u64, u64), u32>,
    /// Entries put in: key, the goroutine's goid, its slot.
    inserted: Vec<(LiveKey, u64, u32)>,
    /// Did not fit the table.
    full: u64,
}

impl super::aggregate::Aggregates {
    /// Puts a batch of `pid`'s goroutines found alive in the kernel's live
    /// table under their sites' seen-at-attach slots, unless the probes
    /// did (they saw them created).
    pub(super) fn insert_walked(
        &mut self,
        pid: u32,
        gs: &[LiveG],
        walked_ns: u64,
        acc: &mut Walked,
    ) {
        for g in gs {
            let slot = *acc.slots.entry((g.gopc, g.startpc)).or_insert_with(|| {
                self.kernel
                    .take_slot(SiteKey {
                        pid,
                        _pad: 0,
                        gopc: g.gopc,
                        startpc: g.startpc,
                        stack: SEEN_AT_ATTACH,
                    })
                    .unwrap_or(OVERFLOW_SITE)
            });
            let key = LiveKey {
                pid,
                _pad: 0,
                g: g.g,
            };
            let live = LiveGoroutine {
                created_ns: crate::model::attach_created(walked_ns, g.waitsince),
                site: slot,
                _pad: 0,
            };
            match self.kernel.insert_live(key, live) {
                Inserted::Yes => acc.inserted.push((key, g.goid, slot)),
                // The probes saw it created: counted already.
                Inserted::AlreadyThere => {}
                Inserted::Full => acc.full += 1,
            }
        }
    }

    /// Counts what `insert_walked` put in as created at its slot, after
    /// taking out the goroutines that exited before their entry went in
    /// (their exit found no entry: it would stay forever). `again` walks
    /// the process once more (false if it could not). Returns how many
    /// were counted and how many did not fit.
    pub(super) fn settle_walked(
        &mut self,
        mut acc: Walked,
        again: impl FnOnce(&mut dyn FnMut(&[LiveG])) -> bool,
    ) -> (u64, u64) {
        acc.inserted.sort_unstable_by_key(|(k, ..)| k.g);
        let mut alive = vec![false; acc.inserted.len()];
        let walked = again(&mut |gs: &[LiveG]| {
            for g in gs {
                if let Ok(i) = acc.inserted.binary_search_by_key(&g.g, |(k, ..)| k.g)
                    && acc.inserted[i].1 == g.goid
                {
                    alive[i] = true;
                }
            }
        });
        let mut counts: HashMap<u32, u64> = HashMap::default();
        for (i, &(key, _, slot)) in acc.inserted.iter().enumerate() {
            if walked && !alive[i] && self.kernel.remove_live(&key, slot) {
                continue;
            }
            *counts.entry(slot).or_default() += 1;
        }
        let mut n = 0;
        for (slot, c) in counts {
            self.kernel.add_created(slot, c);
            n += c;
        }
        self.stale = true;
        (n, acc.full)
    }
}
