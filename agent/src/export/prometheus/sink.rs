//! Feeds gmon's families from the trackers, one cached set of series
//! handles per creation site.

use super::{Metrics, histogram::BulkHistogram};
use crate::model::{Goroutine, Sink, Site, SiteDelta, stack_labels};
use prometheus::IntCounter;
use rustc_hash::FxHashMap;
use std::sync::Arc;

struct SiteSeries {
    creation: IntCounter,
    exit: IntCounter,
    uptime: BulkHistogram,
    /// Node mode: the label values, to delete the series with the process.
    labels: Option<Vec<String>>,
}

/// Feeds the gmon families, caching each site's series handles so the hot
/// path does no label hashing.
pub struct PromSink {
    metrics: Arc<Metrics>,
    sites: FxHashMap<u64, SiteSeries>,
}

impl PromSink {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        PromSink {
            metrics,
            sites: FxHashMap::default(),
        }
    }

    fn series(&mut self, site: &Site) -> &SiteSeries {
        let m = &self.metrics;
        self.sites.entry(site.id).or_insert_with(|| {
            let mut labels: Vec<&str> = stack_labels(&site.stack).to_vec();
            let pid;
            let k8s;
            if m.node {
                let p = site.proc.as_deref();
                pid = p.map(|p| p.pid.to_string()).unwrap_or_default();
                labels.push(&pid);
                labels.push(p.map(|p| p.binary.as_str()).unwrap_or(""));
                labels.push(p.and_then(|p| p.container_id.as_deref()).unwrap_or(""));
                labels.push(p.and_then(|p| p.pod_uid.as_deref()).unwrap_or(""));
                k8s = p
                    .and_then(|p| p.k8s.as_ref())
                    .map(|k| k.attributes())
                    .unwrap_or_default();
                for key in &m.k8s_keys {
                    let v = k8s.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
                    labels.push(v.unwrap_or(""));
                }
            }
            SiteSeries {
                creation: m.creation.with_label_values(&labels),
                exit: m.exit.with_label_values(&labels),
                uptime: m.uptime.with_label_values(&labels),
                labels: m
                    .node
                    .then(|| labels.iter().map(|l| l.to_string()).collect()),
            }
        })
    }
}

impl Sink for PromSink {
    fn created(&mut self, g: &Goroutine) {
        self.series(&g.site).creation.inc();
    }

    fn exited(&mut self, g: &Goroutine, exited_ns: u64) {
        let s = self.series(&g.site);
        s.exit.inc();
        s.uptime.observe_ns(exited_ns.saturating_sub(g.created_ns));
    }

    fn counted(&mut self, site: &Site, _pid: u32, d: &SiteDelta) {
        let s = self.series(site);
        s.creation.inc_by(d.created);
        s.exit.inc_by(d.exited);
        // The kernel's bounds include gmon's: each kernel bucket lies
        // inside one of ours, the one its upper bound falls in.
        for &(i, b) in d.buckets {
            s.uptime
                .add(s.uptime.bucket_of(d.upper_secs(i)), b.count, b.sum_ns);
        }
    }

    fn site_gone(&mut self, site_id: u64) {
        // Standalone mode: the series stay (gmon's families aggregate every
        // process of the binary); only the cached handles go. Node mode:
        // the series name the exited process, so they go with it, or they
        // would pile up with every process ever seen.
        if let Some(SiteSeries {
            labels: Some(labels),
            ..
        }) = self.sites.remove(&site_id)
        {
            let l: Vec<&str> = labels.iter().map(String::as_str).collect();
            let m = &self.metrics;
            let _ = m.creation.remove_label_values(&l);
            let _ = m.exit.remove_label_values(&l);
            let _ = m.uptime.remove_label_values(&l);
        }
    }
}
