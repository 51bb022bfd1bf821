//! Processes found and lost: which ones the target admits, analysing and
//! probing a binary the first time one of its processes is admitted, and
//! detaching it when its last process exits.

use super::{Bin, Pipeline, ProcEntry, Target};
use crate::{
    discover::{
        self, ProcessKey,
        cgroup::{self, Container},
        realfile,
        select::Rejection,
    },
    gobin::{self, BinaryId},
    model::ProcLabels,
    probes::{Attachment, KernelStacks, SiteClass},
};
use std::{sync::Arc, time::Instant};

/// How many non-probed binaries to remember before starting afresh.
const SKIPPED_MAX: usize = 16_384;

/// Why a process is not probed.
#[derive(Clone, Debug)]
pub(super) enum Skip {
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

impl Skip {
    /// The `reason` label of gmon_agent_processes_skipped_total.
    pub(super) fn label(&self) -> &'static str {
        match self {
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
}

impl Pipeline {
    /// A process appeared (scan or exec): track it if the target admits
    /// it, probing its binary first if needed. `exec_ns` is the exec's
    /// kernel time.
    pub(super) fn start(&mut self, pid: u32, exec_ns: Option<u64>, stacks: &mut KernelStacks) {
        // An exec gives an ignored process a new chance.
        self.ignored.remove(&pid);
        if let Some(known) = self.procs.get(&pid) {
            match self.binary_id(pid) {
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
                self.track(pid, id, exe, container.id, container.pod_uid, k8s);
                if let Some(t) = exec_ns {
                    let now = monotonic_ns();
                    self.metrics
                        .discovery
                        .latency
                        .observe(now.saturating_sub(t) as f64 / 1e9);
                }
                let exe = &self.bins[&id].exe;
                match &self.procs[&pid].labels.k8s {
                    Some(k) => tracing::debug!(
                        pid,
                        exe = %exe,
                        namespace = %k.pod.namespace,
                        pod = %k.pod.name,
                        container = %k.container_name.as_deref().unwrap_or(""),
                        "process probed"
                    ),
                    None => tracing::debug!(pid, exe = %exe, "process probed"),
                }
            }
            Err(skip) => {
                self.metrics
                    .discovery
                    .processes_skipped
                    .with_label_values(&[skip.label()])
                    .inc();
                // A decision about the process, not its binary: remember
                // it, or each of its events would ask again. Standalone's
                // probes fire only in its binary's processes, all admitted:
                // nothing to remember (and nothing to re-check each second).
                let node = matches!(self.target, Target::Node(_));
                if node && matches!(skip, Skip::Rejected(_) | Skip::Pod(_)) {
                    let by_pod = matches!(skip, Skip::Pod(_));
                    self.ignored.insert(pid, (ProcessKey::of(pid), by_pod));
                }
            }
        }
    }

    /// Standalone mode: `pid` hit the binary's probes, so it runs the
    /// binary; track it without asking /proc (it may have exited already).
    pub(super) fn admit(&mut self, pid: u32, id: BinaryId) {
        let Some(exe) = self.bins.get(&id).map(|b| b.exe.clone()) else {
            return;
        };
        self.metrics.discovery.processes_seen.inc();
        self.track(pid, id, exe, None, None, None);
        self.refresh_gauges();
    }

    /// Tracks `pid` as a process of the attached binary `id`; in node mode
    /// its tracker labels its series and log lines with what is known of it
    /// (standalone output is gmon's: no per-process labels).
    fn track(
        &mut self,
        pid: u32,
        id: BinaryId,
        exe: String,
        container_id: Option<String>,
        pod_uid: Option<String>,
        k8s: Option<crate::k8s::PodLabels>,
    ) {
        let node = matches!(self.target, Target::Node(_));
        let b = self
            .bins
            .get_mut(&id)
            .expect("tracked processes run attached binaries");
        b.pids.insert(pid);
        let labels = Arc::new(ProcLabels {
            pid,
            runtime_version: b.bin.build.version_string.clone(),
            binary: exe,
            container_id,
            pod_uid,
            k8s,
        });
        if node {
            b.tracker.set_labels(labels.clone());
        }
        let key = ProcessKey::of(pid);
        self.procs.insert(
            pid,
            ProcEntry {
                bin: id,
                key,
                labels,
            },
        );
        self.walk_process(pid, id);
    }

    /// The identity a process's binary is tracked under: in node mode the
    /// layer file's (one image's containers share one attachment), in
    /// standalone mode the file --path names.
    fn binary_id(&self, pid: u32) -> Result<BinaryId, ()> {
        match self.target {
            Target::Node(_) => realfile::real_binary_id(pid).map_err(|_| ()),
            Target::Binary { .. } => discover::exe_id(pid).ok_or(()),
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
        let id = self.binary_id(pid).map_err(|_| Skip::Gone)?;
        tracing::trace!(pid, dev = id.dev, ino = id.ino, "binary identity");
        if Some(id) == self.own_exe {
            return Err(Skip::Own);
        }
        let exe = std::fs::read_link(&exe_link)
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|_| Skip::Gone)?;
        let container = cgroup::of_pid(pid).ok_or(Skip::Gone)?;
        match &self.target {
            Target::Binary { bin, pid: only } => {
                let wanted = id == bin.id && only.is_none_or(|p| p.get() == pid);
                return if wanted {
                    Ok((id, exe, container))
                } else {
                    Err(Skip::Rejected(Rejection::NotIncluded))
                };
            }
            Target::Node(selection) => selection.check(&exe, &container).map_err(Skip::Rejected)?,
        }
        if let Some(reason) = self.pod_rejection(&container) {
            return Err(Skip::Pod(reason));
        }
        if self.bins.contains_key(&id) {
            return Ok((id, exe, container));
        }
        if let Some(s) = self.skipped.get(&id) {
            return Err(s.clone());
        }
        match self.probe_binary(pid, id, &exe_link, &exe) {
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
        let analysed = {
            let _span = tracing::debug_span!("analyse", exe).entered();
            self.cache.get(exe_link.as_ref())
        };
        let bin = match analysed {
            Ok(b) => b,
            Err(gobin::Error::Open(..)) => return Err(Skip::Gone),
            // Every C program on the node: counted, not logged. A damaged
            // .go.buildinfo is a Go binary the agent cannot read: below.
            Err(
                gobin::Error::NotGo(_, gobin::buildinfo::Error::Missing)
                | gobin::Error::NotAmd64(_),
            ) => return Err(Skip::NotGo),
            Err(e @ gobin::Error::TooOld { .. }) => {
                tracing::info!(pid, exe, "not probed: {e}");
                return Err(Skip::TooOld);
            }
            // The kernel ran it, so an unreadable ELF is a damaged file:
            // logged and counted like any other analysis failure.
            Err(e) => return Err(self.failed(pid, exe, e.reason(), &e)),
        };
        self.metrics.discovery.go_binaries_found.inc();
        let started = Instant::now();
        let attached = {
            let _span = tracing::debug_span!("attach", exe).entered();
            self.probes.attach_via(&bin, exe_link.as_ref())
        };
        let att = match attached {
            Ok(a) => a,
            Err(e) => {
                // The process may have exited while we analysed.
                if std::fs::metadata(exe_link).is_err() {
                    drop(bin);
                    self.cache.release_unused();
                    return Err(Skip::Gone);
                }
                return Err(self.failed(pid, exe, "attach", &e));
            }
        };
        tracing::info!(
            pid,
            exe,
            go = %bin.build.version_string,
            offsets = %bin.offsets_source,
            uprobes = att.uprobes(),
            sites = att.class.label(),
            attach_ms = started.elapsed().as_millis() as u64,
            "attached"
        );
        self.sites_attached(exe, &bin, &att);
        self.bins
            .insert(id, Bin::new(exe.to_owned(), bin, att, self.depth, false));
        self.refresh_gauges();
        Ok(())
    }

    /// Logs and counts a binary that could not be probed, for `reason`.
    fn failed(&self, pid: u32, exe: &str, reason: &str, e: &dyn std::fmt::Display) -> Skip {
        tracing::warn!(pid, exe, "cannot probe: {e}");
        self.metrics
            .discovery
            .attach_failures
            .with_label_values(&[reason])
            .inc();
        Skip::Failed
    }

    /// A process exited: drop its state; detach its binary if it was the
    /// last one running it (standalone's binary stays).
    pub(super) fn exited(&mut self, pid: u32, stacks: &mut KernelStacks) {
        if !self.procs.contains_key(&pid) {
            return;
        }
        // Aggregate mode: its last counts, read while it is still tracked.
        self.release_process(pid, stacks);
        let Some(entry) = self.procs.remove(&pid) else {
            return;
        };
        let Some(b) = self.bins.get_mut(&entry.bin) else {
            return;
        };
        b.pids.remove(&pid);
        b.tracker.remove_process(pid, stacks, &mut self.sinks);
        if b.pids.is_empty() && !b.pinned {
            let b = self.bins.remove(&entry.bin).expect("present");
            tracing::info!(exe = %b.exe, "last process exited: detaching");
            // Its tracker goes with it: report what it counted since the
            // last housekeeping.
            self.metrics.add_stats(&b.reported, &b.tracker.stats);
            let _ = self
                .metrics
                .probe_sites
                .remove_label_values(&[&b.exe, b.att.class.label()]);
            self.probes.detach(b.att);
            drop(b.bin);
            self.cache.release_unused();
        }
        self.refresh_gauges();
    }
}

impl Pipeline {
    /// Exports the class of a newly probed binary's sites, and says why
    /// when the cheap ones could not be used.
    pub(super) fn sites_attached(&self, exe: &str, bin: &crate::gobin::GoBinary, att: &Attachment) {
        self.metrics
            .probe_sites
            .with_label_values(&[exe, att.class.label()])
            .inc();
        if let (SiteClass::SingleStepped, Err(why)) = (att.class, &bin.emulated) {
            tracing::info!(
                exe,
                reason = why,
                "probing newproc1's RETs and goexit1's entry (single-stepped, about 20x the cost per goroutine)"
            );
        }
    }
}

pub(super) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC is bpf_ktime_get_ns's clock.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
