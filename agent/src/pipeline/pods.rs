//! Pod metadata joined onto processes: each process's pod from the node's
//! pod index (the k8s stage fills it), re-labelling when the index changes,
//! and letting go of processes whose pod opted out.

use super::Pipeline;
use crate::{
    discover::cgroup::{self, Container},
    k8s::{KubeSettings, PodLabels, SharedIndex, WatchStats},
    model::ProcLabels,
    probes::KernelStacks,
};
use std::sync::{Arc, atomic::Ordering};

/// The Kubernetes side: settings, the pod index the watch fills, and the
/// index generation the processes were last labelled at.
pub struct Kube {
    pub settings: KubeSettings,
    pub index: Arc<SharedIndex>,
    pub stats: Arc<WatchStats>,
    pub generation: u64,
}

impl Pipeline {
    /// The pod of a process in `container`, if the index knows it.
    pub(super) fn pod_of(&self, container: &Container) -> Option<PodLabels> {
        let k = self.kube.as_ref()?;
        k.index
            .read()
            .lookup(container.id.as_deref(), container.pod_uid.as_deref())
    }

    /// Why a process in `container` must not be probed, per its pod.
    pub(super) fn pod_rejection(&self, container: &Container) -> Option<&'static str> {
        let k = self.kube.as_ref()?;
        k.settings.rejects(&self.pod_of(container)?.pod)
    }

    /// The pod index changed: label processes whose pod is now known (or
    /// different), and let go of those whose pod is excluded.
    pub(super) fn relabel(&mut self, stacks: &mut KernelStacks) {
        let Some(k) = self.kube.as_mut() else {
            return;
        };
        let generation = k.index.generation();
        let m = &self.metrics.k8s;
        m.pods.set(k.index.read().pods() as i64);
        m.synced.set(k.index.synced() as i64);
        m.watch_errors
            .inc_by(k.stats.errors.swap(0, Ordering::Relaxed));
        m.relists.inc_by(k.stats.relists.swap(0, Ordering::Relaxed));
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
            if let Some(a) = &mut self.agg {
                a.relabel(pid);
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
}
