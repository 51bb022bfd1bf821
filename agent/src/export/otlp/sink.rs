//! The OTLP instruments, fed per goroutine; attributes are built once per
//! creation site.

use crate::model::{Goroutine, Sink, Site, SiteDelta, SiteLive};
use opentelemetry::{
    KeyValue,
    metrics::{Counter, Gauge, Histogram, Meter, UpDownCounter},
};
use rustc_hash::FxHashMap;
use std::{collections::HashSet, sync::Arc};

/// Feeds the OTLP instruments; attributes are built once per site.
pub struct OtlpSink {
    created: Counter<u64>,
    exited: Counter<u64>,
    lifetime: Histogram<f64>,
    live: UpDownCounter<i64>,
    seen_at_attach: Counter<u64>,
    oldest_age: Gauge<f64>,
    /// Sites whose oldest age was last recorded above 0: recorded 0 once
    /// they have no live goroutine left.
    aged: rustc_hash::FxHashSet<u64>,
    sites: FxHashMap<u64, Arc<[KeyValue]>>,
    /// Distinct (creator, start) pairs per process, for the guard.
    per_process: FxHashMap<u32, HashSet<(String, String, String)>>,
    max_sites: usize,
    /// Adds `go.goroutine.stack` (opt-in: a series per distinct stack).
    stack_attribute: bool,
    /// Sites folded into `other` by the guard.
    pub overflowed: u64,
    /// Hashes of the attribute sets exported so far, up to `max_series`:
    /// the SDK keeps every series of a cumulative instrument until exit
    /// and folds those past its limit into one overflow series.
    series: rustc_hash::FxHashSet<u64>,
    max_series: usize,
    /// New attribute sets past `max_series` (the SDK's overflow series).
    pub series_overflowed: u64,
    version: String,
    /// Standalone mode's executable (node mode has it per process).
    exe: Option<String>,
}

impl OtlpSink {
    /// `go_version` labels process.runtime.version where the process's own
    /// is unknown; `exe` is standalone mode's executable.
    pub fn new(
        meter: &Meter,
        settings: &super::OtlpSettings,
        go_version: &str,
        exe: Option<String>,
    ) -> Self {
        let lifetime = meter
            .f64_histogram("go.goroutine.lifetime")
            .with_unit("s")
            .with_description("Lifetime of goroutines, recorded once each at exit");
        // The aggregation (buckets or exponential) comes from the view in
        // `Otlp::new`.
        OtlpSink {
            created: meter
                .u64_counter("go.goroutine.created")
                .with_unit("{goroutine}")
                .with_description("Goroutines created")
                .build(),
            exited: meter
                .u64_counter("go.goroutine.exited")
                .with_unit("{goroutine}")
                .with_description("Goroutines that exited")
                .build(),
            lifetime: lifetime.build(),
            live: meter
                .i64_up_down_counter("go.goroutine.live")
                .with_unit("{goroutine}")
                .with_description(
                    "Goroutines alive: created since the agent attached, or found alive when it did",
                )
                .build(),
            seen_at_attach: meter
                .u64_counter("go.goroutine.seen_at_attach")
                .with_unit("{goroutine}")
                .with_description(
                    "Goroutines found alive when their process was first probed (also counted in go.goroutine.created)",
                )
                .build(),
            oldest_age: meter
                .f64_gauge("go.goroutine.oldest_age")
                .with_unit("s")
                .with_description(
                    "Age of the oldest live goroutine (0 when none is live); a lower bound for goroutines found alive at attach",
                )
                .build(),
            aged: Default::default(),
            sites: FxHashMap::default(),
            per_process: FxHashMap::default(),
            max_sites: settings.max_sites,
            stack_attribute: settings.stack_attribute,
            overflowed: 0,
            series: Default::default(),
            max_series: settings.max_series,
            series_overflowed: 0,
            version: go_version.to_owned(),
            exe,
        }
    }

    fn attrs(&mut self, site: &Site, pid: u32) -> Arc<[KeyValue]> {
        if let Some(a) = self.sites.get(&site.id) {
            return a.clone();
        }
        let name = |f: &Option<crate::gobin::Frame>| {
            f.as_ref()
                .map(|f| f.function.clone())
                .unwrap_or_else(|| "unknown".into())
        };
        let (mut creator, mut start) = (name(&site.creator), name(&site.start));
        let mut stack = self.stack_attribute.then(|| stack_text(&site.stack));
        let seen = self.per_process.entry(pid).or_default();
        let key = (
            creator.clone(),
            start.clone(),
            stack.clone().unwrap_or_default(),
        );
        if !seen.contains(&key) {
            if seen.len() >= self.max_sites {
                self.overflowed += 1;
                (creator, start) = ("other".into(), "other".into());
                stack = stack.map(|_| "other".into());
            } else {
                seen.insert(key);
            }
        }
        let mut a = vec![
            KeyValue::new("go.goroutine.creator", creator),
            KeyValue::new("go.goroutine.start", start),
        ];
        if let Some(stack) = stack {
            a.push(KeyValue::new("go.goroutine.stack", stack));
        }
        a.extend([
            KeyValue::new("process.pid", pid as i64),
            KeyValue::new("process.runtime.name", "go"),
            KeyValue::new(
                "process.runtime.version",
                site.proc
                    .as_deref()
                    .map(|p| p.runtime_version.clone())
                    .unwrap_or_else(|| self.version.clone()),
            ),
        ]);
        if let Some(exe) = &self.exe {
            a.push(KeyValue::new("process.executable.path", exe.clone()));
        }
        if let Some(p) = site.proc.as_deref() {
            a.push(KeyValue::new("process.executable.path", p.binary.clone()));
            if let Some(c) = &p.container_id {
                a.push(KeyValue::new("container.id", c.clone()));
            }
            if let Some(u) = &p.pod_uid {
                a.push(KeyValue::new("k8s.pod.uid", u.clone()));
            }
            if let Some(k) = &p.k8s {
                a.extend(k.attributes().into_iter().map(|(k, v)| KeyValue::new(k, v)));
            }
        }
        self.count_series(&a);
        let a: Arc<[KeyValue]> = a.into();
        self.sites.insert(site.id, a.clone());
        a
    }

    /// Notes a new attribute set; past the limit, counts (and logs once)
    /// what the SDK folds into its overflow series.
    fn count_series(&mut self, attrs: &[KeyValue]) {
        use std::hash::{Hash, Hasher};
        let mut h = rustc_hash::FxHasher::default();
        for kv in attrs {
            kv.key.as_str().hash(&mut h);
            kv.value.as_str().hash(&mut h);
        }
        let h = h.finish();
        if self.series.contains(&h) {
            return;
        }
        if self.series.len() < self.max_series {
            self.series.insert(h);
            return;
        }
        if self.series_overflowed == 0 {
            tracing::warn!(
                limit = self.max_series,
                "OTLP: series limit reached; new series go into the SDK's overflow series (raise --otlp-max-series)"
            );
        }
        self.series_overflowed += 1;
    }
}

/// The creation stack as text: one `function file:line` per frame,
/// innermost first, as the log lines print it.
fn stack_text(stack: &[crate::gobin::Frame]) -> String {
    let mut s = String::new();
    for (i, f) in stack.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(&f.function);
        if let (Some(file), Some(line)) = (&f.file, f.line) {
            s.push_str(&format!(" {file}:{line}"));
        }
    }
    s
}

impl Sink for OtlpSink {
    fn created(&mut self, g: &Goroutine) {
        let a = self.attrs(g.site, g.pid);
        self.created.add(1, &a);
        self.live.add(1, &a);
        if g.site.seen_at_attach {
            self.seen_at_attach.add(1, &a);
        }
    }

    fn counted(&mut self, site: &Site, pid: u32, d: &SiteDelta) {
        let a = self.attrs(site, pid);
        self.created.add(d.created, &a);
        if site.seen_at_attach && d.created > 0 {
            self.seen_at_attach.add(d.created, &a);
        }
        self.exited.add(d.exited, &a);
        self.live.add(d.created as i64 - d.exited as i64, &a);
        // The SDK takes one value at a time. Each kernel bucket's mean lies
        // inside it, and the kernel's bounds include the explicit buckets'
        // (and, for the exponential histogram, every power of two in
        // range), so counts land in the right buckets and sums are exact.
        for &(_, b) in d.buckets {
            let mean = b.sum_ns as f64 / b.count.max(1) as f64 / 1e9;
            for _ in 0..b.count {
                self.lifetime.record(mean, &a);
            }
        }
    }

    fn exited(&mut self, g: &Goroutine, exited_ns: u64) {
        let a = self.attrs(g.site, g.pid);
        self.exited.add(1, &a);
        self.live.add(-1, &a);
        self.lifetime
            .record(exited_ns.saturating_sub(g.created_ns) as f64 / 1e9, &a);
    }

    fn live(&mut self, sites: &[SiteLive], now_ns: u64) {
        let mut aged = rustc_hash::FxHashSet::default();
        for l in sites {
            let Some(created) = l.oldest_ns else { continue };
            let a = self.attrs(&l.site, l.pid);
            self.oldest_age
                .record(now_ns.saturating_sub(created) as f64 / 1e9, &a);
            aged.insert(l.site.id);
        }
        for id in self.aged.difference(&aged) {
            if let Some(a) = self.sites.get(id) {
                self.oldest_age.record(0.0, a);
            }
        }
        self.aged = aged;
    }

    fn site_gone(&mut self, site_id: u64) {
        if self.aged.remove(&site_id)
            && let Some(a) = self.sites.get(&site_id)
        {
            self.oldest_age.record(0.0, a);
        }
        self.sites.remove(&site_id);
    }

    fn process_gone(&mut self, pid: u32) {
        self.per_process.remove(&pid);
    }
}
