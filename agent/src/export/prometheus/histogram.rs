//! A histogram that also takes whole buckets at once: in aggregate mode the
//! kernel has already bucketed the lifetimes, and observing each goroutine
//! again would cost user space a call per goroutine. The prometheus crate's
//! Histogram has no such call, so this one plugs into its `MetricVec`.

use prometheus::{
    HistogramOpts,
    core::{Describer, Metric, MetricVec, MetricVecBuilder},
    proto,
};
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

/// gmon_goroutine_uptime's series by label values.
pub type BulkHistogramVec = MetricVec<Builder>;

/// One series: cumulative counts per bucket and the exact sum in ns.
#[derive(Clone, Debug)]
pub struct BulkHistogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    labels: Vec<proto::LabelPair>,
    bounds: Arc<[f64]>,
    /// Per bucket (not cumulative); the last one is +Inf.
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl BulkHistogram {
    /// The bucket a value in seconds falls in (bounds are inclusive).
    pub fn bucket_of(&self, secs: f64) -> usize {
        self.0.bounds.partition_point(|&b| b < secs)
    }

    /// `counts[i]` observations in each bucket `i`, summing to `sum_ns`.
    pub fn add_all(&self, counts: &[u64], sum_ns: u64) {
        for (c, &n) in self.0.counts.iter().zip(counts) {
            if n > 0 {
                c.fetch_add(n, Ordering::Relaxed);
            }
        }
        if sum_ns > 0 {
            self.0.sum_ns.fetch_add(sum_ns, Ordering::Relaxed);
        }
    }

    /// `count` observations summing to `sum_ns`, all in bucket `i`.
    pub fn add(&self, i: usize, count: u64, sum_ns: u64) {
        let i = i.min(self.0.counts.len() - 1);
        self.0.counts[i].fetch_add(count, Ordering::Relaxed);
        self.0.sum_ns.fetch_add(sum_ns, Ordering::Relaxed);
    }
}

impl Metric for BulkHistogram {
    fn metric(&self) -> proto::Metric {
        let mut h = proto::Histogram::default();
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.0.bounds.len());
        for (i, &upper) in self.0.bounds.iter().enumerate() {
            cumulative += self.0.counts[i].load(Ordering::Relaxed);
            let mut b = proto::Bucket::default();
            b.set_cumulative_count(cumulative);
            b.set_upper_bound(upper);
            buckets.push(b);
        }
        cumulative += self.0.counts[self.0.bounds.len()].load(Ordering::Relaxed);
        h.set_bucket(buckets);
        h.set_sample_count(cumulative);
        h.set_sample_sum(self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        let mut m = proto::Metric::from_label(self.0.labels.clone());
        m.set_histogram(h);
        m
    }
}

#[derive(Clone, Debug)]
pub struct Builder;

impl MetricVecBuilder for Builder {
    type M = BulkHistogram;
    type P = HistogramOpts;

    fn build<V: AsRef<str>>(
        &self,
        opts: &HistogramOpts,
        vals: &[V],
    ) -> prometheus::Result<BulkHistogram> {
        let desc = opts.describe()?;
        let mut labels: Vec<proto::LabelPair> = desc
            .const_label_pairs
            .iter()
            .cloned()
            .chain(desc.variable_labels.iter().zip(vals).map(|(n, v)| {
                let mut p = proto::LabelPair::default();
                p.set_name(n.clone());
                p.set_value(v.as_ref().to_owned());
                p
            }))
            .collect();
        labels.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(BulkHistogram(Arc::new(Inner {
            labels,
            bounds: opts.buckets.clone().into(),
            counts: (0..=opts.buckets.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_ns: AtomicU64::new(0),
        })))
    }
}

/// A new vector of series with `opts`' buckets and these label names.
pub fn new_vec(opts: HistogramOpts, labels: &[&str]) -> prometheus::Result<BulkHistogramVec> {
    MetricVec::create(
        proto::MetricType::HISTOGRAM,
        Builder,
        opts.variable_labels(labels.iter().map(|s| s.to_string()).collect()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, Registry, TextEncoder};

    #[test]
    fn bulk_adds_render_like_observations() {
        let opts = HistogramOpts::new("h", "help").buckets(vec![1.0, 3.0]);
        let ours = new_vec(opts.clone(), &["site"]).unwrap();
        let theirs = prometheus::HistogramVec::new(opts, &["site"]).unwrap();
        let h = ours.with_label_values(&["a"]);
        h.add_all(&[1], 500_000_000);
        h.add(h.bucket_of(3.0), 2, 5_000_000_000);
        h.add(2, 1, 10_000_000_000);
        let t = theirs.with_label_values(&["a"]);
        for v in [0.5, 2.5, 2.5, 10.0] {
            t.observe(v);
        }
        let text = |c: Box<dyn prometheus::core::Collector>| {
            let r = Registry::new();
            r.register(c).unwrap();
            let mut out = Vec::new();
            TextEncoder::new().encode(&r.gather(), &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(Box::new(ours)), text(Box::new(theirs)));
    }
}
