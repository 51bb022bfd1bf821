//! Feeds gmon's families from the trackers, one cached set of series
//! handles per creation site.
//!
//! Goroutines seen one by one (gmon's log lines on) are counted in the
//! site's own batch first and published once per drain: the series are
//! atomics shared with the scrape, four locked adds per goroutine.

use super::{GMON_BUCKETS, Metrics, histogram::BulkHistogram};
use crate::model::{Goroutine, Sink, Site, SiteDelta, SiteLive, aggregate::bound_ns, stack_labels};
use prometheus::{Gauge, IntCounter, IntGauge};
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// gmon's three families for one site.
struct Gmon {
    creation: IntCounter,
    exit: IntCounter,
    uptime: BulkHistogram,
}

struct SiteSeries {
    /// `Site::id`.
    id: u64,
    /// Absent for goroutines found alive at attach in standalone mode.
    gmon: Option<Gmon>,
    /// Sites of goroutines found alive at attach only.
    seen_at_attach: Option<IntCounter>,
    live: IntGauge,
    oldest_age: Gauge,
    /// Node mode: the label values, to delete the series with the process.
    labels: Option<Vec<String>>,
    /// Counted since the last `publish`.
    batch: Batch,
}

/// A site's goroutines seen since the last `publish`.
#[derive(Default)]
struct Batch {
    created: u64,
    exited: u64,
    /// Lifetimes per gmon bucket (the last is +Inf), and their sum.
    uptime: [u64; GMON_BUCKETS.len() + 1],
    sum_ns: u64,
}

impl SiteSeries {
    /// Moves the batch into the shared series.
    fn publish(&mut self) {
        let b = std::mem::take(&mut self.batch);
        if let Some(gm) = &self.gmon {
            gm.creation.inc_by(b.created);
            gm.exit.inc_by(b.exited);
            gm.uptime.add_all(&b.uptime, b.sum_ns);
        }
    }
}

/// Feeds the gmon families, caching each site's series handles so the hot
/// path does no label hashing.
pub struct PromSink {
    metrics: Arc<Metrics>,
    sites: Vec<SiteSeries>,
    /// Where each site's series are in `sites`.
    index: FxHashMap<u64, usize>,
    /// The last site looked up and where (goroutines come in runs per
    /// site: most lookups are this one).
    last: Option<(u64, usize)>,
    /// Sites with a batch to publish.
    batched: Vec<u64>,
    /// gmon's bucket bounds in whole ns ("<= floor(b)" is "<= b").
    bounds_ns: [u64; GMON_BUCKETS.len()],
}

impl PromSink {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        PromSink {
            metrics,
            sites: Vec::new(),
            index: FxHashMap::default(),
            last: None,
            batched: Vec::new(),
            bounds_ns: GMON_BUCKETS.map(bound_ns),
        }
    }

    /// Publishes what the sites counted one goroutine at a time since the
    /// last call (the pipeline calls it after each drain).
    pub fn publish(&mut self) {
        for id in self.batched.drain(..) {
            if let Some(&i) = self.index.get(&id) {
                self.sites[i].publish();
            }
        }
    }

    /// The site's series, noted for `publish`: its batch is to grow.
    fn batching(&mut self, site: &Site) -> &mut SiteSeries {
        let i = self.series_at(site);
        let s = &mut self.sites[i];
        if s.batch.created == 0 && s.batch.exited == 0 {
            self.batched.push(site.id);
        }
        s
    }

    fn series(&mut self, site: &Site) -> &mut SiteSeries {
        let i = self.series_at(site);
        &mut self.sites[i]
    }

    /// Where the site's series are, made the first time.
    fn series_at(&mut self, site: &Site) -> usize {
        if let Some((id, i)) = self.last
            && id == site.id
        {
            return i;
        }
        let i = match self.index.get(&site.id) {
            Some(&i) => i,
            None => {
                self.sites.push(new_series(&self.metrics, site));
                self.index.insert(site.id, self.sites.len() - 1);
                self.sites.len() - 1
            }
        };
        self.last = Some((site.id, i));
        i
    }

    /// Takes a site's series out (the last one moves to its place).
    fn take(&mut self, site_id: u64) -> Option<SiteSeries> {
        let i = self.index.remove(&site_id)?;
        self.last = None;
        let s = self.sites.swap_remove(i);
        if let Some(moved) = self.sites.get(i) {
            self.index.insert(moved.id, i);
        }
        Some(s)
    }
}

/// A site's series, made when first needed.
fn new_series(m: &Metrics, site: &Site) -> SiteSeries {
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
        id: site.id,
        gmon: in_gmon_families(m, site).then(|| Gmon {
            creation: m.creation.with_label_values(&labels),
            exit: m.exit.with_label_values(&labels),
            uptime: m.uptime.with_label_values(&labels),
        }),
        seen_at_attach: site
            .seen_at_attach
            .then(|| m.seen_at_attach.with_label_values(&labels)),
        live: m.live.with_label_values(&labels),
        oldest_age: m.oldest_age.with_label_values(&labels),
        labels: m
            .node
            .then(|| labels.iter().map(|l| l.to_string()).collect()),
        batch: Batch::default(),
    }
}

/// Standalone mode (the gmon drop-in) keeps gmon's three families exactly
/// gmon's: goroutines seen created. Those found alive at attach (whose
/// stack is only the `go` statement) count in the live, oldest-age and
/// seen-at-attach families there; node mode counts them in every family,
/// so creation - exit = live.
fn in_gmon_families(m: &Metrics, site: &Site) -> bool {
    m.node || !site.seen_at_attach
}

impl Sink for PromSink {
    fn created(&mut self, g: &Goroutine) {
        let s = self.batching(g.site);
        s.batch.created += 1;
        if let Some(c) = &s.seen_at_attach {
            c.inc();
        }
    }

    fn exited(&mut self, g: &Goroutine, exited_ns: u64) {
        let ns = exited_ns.saturating_sub(g.created_ns);
        // Most goroutines live under gmon's first bound (1 s): a scan from
        // it is a well-predicted compare or two, the binary search was not.
        let i = self.bounds_ns.iter().take_while(|&&b| b < ns).count();
        let b = &mut self.batching(g.site).batch;
        b.exited += 1;
        b.uptime[i] += 1;
        b.sum_ns += ns;
    }

    fn counted(&mut self, site: &Site, _pid: u32, d: &SiteDelta) {
        let s = self.series(site);
        if let Some(c) = &s.seen_at_attach {
            c.inc_by(d.created);
        }
        let Some(gm) = &s.gmon else {
            return;
        };
        gm.creation.inc_by(d.created);
        gm.exit.inc_by(d.exited);
        // The kernel's bounds include gmon's: each kernel bucket lies
        // inside one of ours, the one its upper bound falls in.
        for &(i, b) in d.buckets {
            gm.uptime
                .add(gm.uptime.bucket_of(d.upper_secs(i)), b.count, b.sum_ns);
        }
    }

    fn live(&mut self, sites: &[SiteLive], now_ns: u64) {
        // Sites sharing a label set share its gauges: zero every one, then
        // add each site's live count and keep the greatest age.
        for s in &self.sites {
            s.live.set(0);
            s.oldest_age.set(0.0);
        }
        for l in sites {
            // A site without live goroutines gets no series of its own
            // here (its counts make them, as they always did).
            if l.live == 0 && !self.index.contains_key(&l.site.id) {
                continue;
            }
            let s = self.series(&l.site);
            s.live.add(l.live as i64);
            if let Some(created) = l.oldest_ns {
                let age = now_ns.saturating_sub(created) as f64 / 1e9;
                if age > s.oldest_age.get() {
                    s.oldest_age.set(age);
                }
            }
        }
    }

    fn site_gone(&mut self, site_id: u64) {
        // Standalone mode: the series stay (gmon's families aggregate every
        // process of the binary); only the cached handles go, and the
        // gauges drop to 0 until the next housekeeping sets them again
        // from the sites left. Node mode: the series name the exited
        // process, so they go with it, or they would pile up with every
        // process ever seen.
        let Some(mut s) = self.take(site_id) else {
            return;
        };
        s.publish();
        let Some(labels) = s.labels else {
            s.live.set(0);
            s.oldest_age.set(0.0);
            return;
        };
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        let m = &self.metrics;
        let _ = m.creation.remove_label_values(&l);
        let _ = m.exit.remove_label_values(&l);
        let _ = m.uptime.remove_label_values(&l);
        let _ = m.seen_at_attach.remove_label_values(&l);
        let _ = m.live.remove_label_values(&l);
        let _ = m.oldest_age.remove_label_values(&l);
    }
}
