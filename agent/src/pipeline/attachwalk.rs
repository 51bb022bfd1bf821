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
//!   entry, and the entry would stay forever).

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
        let mut gs: Vec<LiveG> = Vec::new();
        let stats = walk::walk(pid, bias, &w, |batch| gs.extend_from_slice(batch));
        drop(span);
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
        result("ok");
        tracing::debug!(
            pid,
            entries = stats.entries,
            live = stats.live,
            unreadable = stats.unreadable,
            took_us = stats.took.as_micros() as u64,
            "goroutines alive at attach read"
        );
        match &mut self.agg {
            None => b.tracker.seen_at_attach(pid, gs, walked_ns, self.drains),
            Some(agg) => {
                let again = || walk::live_goids(pid, bias, &w).ok();
                let (n, full) = agg.seen_at_attach(pid, &gs, walked_ns, again);
                self.metrics.add_seen_at_attach(n);
                self.metrics.live_full(full);
            }
        }
    }
}

impl super::aggregate::Aggregates {
    /// Aggregate mode: puts `pid`'s goroutines found alive in the kernel's
    /// live table under their sites' seen-at-attach slots and counts them
    /// created there. `again` walks the process again (the goids alive
    /// now). Returns how many were counted and how many did not fit.
    pub(super) fn seen_at_attach(
        &mut self,
        pid: u32,
        gs: &[LiveG],
        walked_ns: u64,
        again: impl FnOnce() -> Option<rustc_hash::FxHashSet<u64>>,
    ) -> (u64, u64) {
        let mut slots: HashMap<(u64, u64), u32> = HashMap::default();
        let mut inserted: Vec<(LiveKey, u32)> = Vec::new();
        let mut full = 0;
        for g in gs {
            let slot = *slots.entry((g.gopc, g.startpc)).or_insert_with(|| {
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
                goid: g.goid,
            };
            let live = LiveGoroutine {
                created_ns: crate::model::attach_created(walked_ns, g.waitsince),
                site: slot,
                _pad: 0,
            };
            match self.kernel.insert_live(key, live) {
                Inserted::Yes => inserted.push((key, slot)),
                // The probes saw it created: counted already.
                Inserted::AlreadyThere => {}
                Inserted::Full => full += 1,
            }
        }
        // Exited between the walk and its entry: no exit will take the
        // entry out, so it goes now (if it is still there).
        let alive = again();
        let mut counts: HashMap<u32, u64> = HashMap::default();
        for (key, slot) in inserted {
            let gone = alive.as_ref().is_some_and(|a| !a.contains(&key.goid));
            if gone && self.kernel.remove_live(&key) {
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
        (n, full)
    }
}
