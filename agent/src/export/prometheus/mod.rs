//! The Prometheus endpoint: gmon's three families with gmon's names, types,
//! help texts, labels and buckets, plus the agent's own health metrics
//! (this file: the registry and the endpoint; `sink.rs` feeds the families).
//! Over 400 lines on purpose: every self-metric is declared here, with its
//! help text, so that what the agent exports can be read in one place.
//!
//! Unlike gmon, gmon_goroutine_uptime is observed exactly once per
//! goroutine, when it exits (gmon re-observed every live goroutine every
//! 500 ms, counting long-lived ones many times).

mod histogram;
mod sink;

pub use sink::PromSink;

use crate::model::{STACK_LABELS, Stats};
use agent_common::counter;
use prometheus::{
    Encoder, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::{net::SocketAddr, sync::Arc};

/// gmon's uptime buckets, in seconds.
pub const GMON_BUCKETS: [f64; 8] = [1.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 180.0];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot listen on {0} for /metrics: {1}; pick another port with --metrics, or 0 to turn the endpoint off"
    )]
    Bind(SocketAddr, std::io::Error),
    #[error("metrics registry: {0}")]
    Registry(#[from] prometheus::Error),
}

/// Every metric the agent exports.
pub struct Metrics {
    pub registry: Registry,
    creation: IntCounterVec,
    exit: IntCounterVec,
    uptime: histogram::BulkHistogramVec,
    seen_at_attach: IntCounterVec,
    live: IntGaugeVec,
    oldest_age: prometheus::GaugeVec,
    /// Walks of a process's goroutines at attach, by result.
    pub attach_walks: IntCounterVec,
    goroutines_seen_at_attach: IntCounter,
    /// events_received_total{kind="create"} and {kind="exit"}, resolved
    /// once: the hot path must not hash labels.
    received: [IntCounter; 2],
    kernel_events: IntCounterVec,
    kernel_counted: IntCounterVec,
    sites_overflowed: IntCounter,
    events_lost: IntCounterVec,
    stack_failures: IntCounterVec,
    untracked_exits: IntCounter,
    live_spilled: IntCounter,
    duplicate_creates: IntCounter,
    unresolved_pcs: IntCounter,
    dropped_with_process: IntCounter,
    bias_failures: IntCounter,
    log_write_errors: IntCounter,
    pub goroutines_tracked: IntGauge,
    /// Aggregate mode: entries in the kernel's live array and spill table.
    pub live_table_entries: IntGauge,
    pub processes_tracked: IntGauge,
    pub uprobes_attached: IntGauge,
    /// 1 per probed binary, labelled with the class of its probe sites.
    pub probe_sites: IntGaugeVec,
    /// Node mode: the gmon families also carry NODE_LABELS.
    node: bool,
    /// Node mode with Kubernetes metadata: attribute keys whose values
    /// follow NODE_LABELS (as labels named by `k8s::prometheus_label`).
    k8s_keys: Vec<String>,
    /// OTLP exports by result (ok, failed).
    pub otlp_exports: IntCounterVec,
    /// Creation sites folded into `other` by the OTLP cardinality guard.
    pub otlp_sites_overflowed: IntCounter,
    /// New OTLP series past the per-instrument limit (the SDK's overflow).
    pub otlp_series_overflowed: IntCounter,
    pub discovery: Discovery,
    pub k8s: KubeMetrics,
}

/// Labels node mode adds to the gmon families, after stack_0..stack_4.
pub const NODE_LABELS: [&str; 4] = ["pid", "binary", "container_id", "pod_uid"];

/// Node mode's discovery self-metrics.
pub struct Discovery {
    pub processes_seen: IntCounter,
    pub go_binaries_found: IntCounter,
    pub binaries_attached: IntGauge,
    pub attach_failures: IntCounterVec,
    pub processes_skipped: IntCounterVec,
    pub unknown_process_events: IntCounter,
    /// Events from processes not probed (selection or pod) whose binary
    /// is probed for other processes: dropped on purpose.
    pub ignored_process_events: IntCounter,
    pub latency: prometheus::Histogram,
}

/// Node mode's Kubernetes self-metrics.
pub struct KubeMetrics {
    pub pods: IntGauge,
    pub synced: IntGauge,
    pub watch_errors: IntCounter,
    pub relists: IntCounter,
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    /// Adds what OTLP export counted since `last`, which becomes `now`.
    pub fn add_otlp(
        &self,
        last: &mut crate::export::otlp::OtlpCounts,
        now: crate::export::otlp::OtlpCounts,
    ) {
        let failed = now.failures - last.failures;
        let ok = (now.exports - last.exports).saturating_sub(failed);
        self.otlp_exports.with_label_values(&["ok"]).inc_by(ok);
        self.otlp_exports
            .with_label_values(&["failed"])
            .inc_by(failed);
        self.otlp_sites_overflowed
            .inc_by(now.sites_overflowed - last.sites_overflowed);
        self.otlp_series_overflowed
            .inc_by(now.series_overflowed - last.series_overflowed);
        *last = now;
    }

    /// Standalone mode (`node` false): gmon's families exactly. Node mode:
    /// gmon's families with NODE_LABELS added, and with a pod index
    /// (`k8s_keys` some) its Kubernetes attributes and the gmon_agent_k8s_*
    /// families, which are left out without one.
    pub fn new(node: bool, k8s_keys: Option<Vec<String>>) -> Result<Arc<Self>, Error> {
        let r = Registry::new();
        // Families that do not apply are created unregistered.
        let unexported = Registry::new();
        let kr = if k8s_keys.is_some() { &r } else { &unexported };
        let k8s_keys = k8s_keys.unwrap_or_default();
        let k8s_labels: Vec<String> = k8s_keys
            .iter()
            .map(|k| crate::k8s::prometheus_label(k))
            .collect();
        let family_labels: Vec<&str> = if node {
            STACK_LABELS
                .iter()
                .copied()
                .chain(NODE_LABELS.iter().copied())
                .chain(k8s_labels.iter().map(String::as_str))
                .collect()
        } else {
            STACK_LABELS.to_vec()
        };
        // Help texts are gmon's, typo included, so diffs of /metrics stay quiet.
        let creation = counter_vec(
            &r,
            "gmon_goroutine_creation",
            "The number of goroutines that have been creaated",
            &family_labels,
        )?;
        let exit = counter_vec(
            &r,
            "gmon_goroutine_exit",
            "The number of goroutines that have been exited",
            &family_labels,
        )?;
        let uptime = histogram::new_vec(
            HistogramOpts::new("gmon_goroutine_uptime", "Uptime of goroutines in seconds")
                .buckets(GMON_BUCKETS.to_vec()),
            &family_labels,
        )?;
        r.register(Box::new(uptime.clone()))?;
        // Beyond gmon: what leak detection reads.
        let seen_at_attach = counter_vec(
            &r,
            "gmon_goroutine_seen_at_attach",
            "Goroutines found alive when their process was first probed (also counted in gmon_goroutine_creation, so creation - exit = live)",
            &family_labels,
        )?;
        let live = IntGaugeVec::new(
            Opts::new(
                "gmon_goroutine_live",
                "Goroutines alive, including those found alive at attach",
            ),
            &family_labels,
        )?;
        r.register(Box::new(live.clone()))?;
        let oldest_age = prometheus::GaugeVec::new(
            Opts::new(
                "gmon_goroutine_oldest_age_seconds",
                "Age of the oldest live goroutine (0 when none is live); for goroutines found alive at attach: since the attach, or since the runtime's waitsince when the GC has seen it blocked",
            ),
            &family_labels,
        )?;
        r.register(Box::new(oldest_age.clone()))?;
        let events_received = counter_vec(
            &r,
            "gmon_agent_events_received_total",
            "Goroutine events read from the kernel ring buffer, by kind",
            &["kind"],
        )?;
        let m = Metrics {
            creation,
            exit,
            uptime,
            seen_at_attach,
            live,
            oldest_age,
            attach_walks: counter_vec(
                &r,
                "gmon_agent_attach_walks_total",
                "Reads of a process's goroutines from its memory when it was first probed, by result (ok; exited, permission, read, layout: failed; unsupported: its binary's goroutine list was not found)",
                &["result"],
            )?,
            goroutines_seen_at_attach: counter(
                &r,
                "gmon_agent_goroutines_seen_at_attach_total",
                "Goroutines found alive when their process was first probed",
            )?,
            received: ["create", "exit"].map(|k| events_received.with_label_values(&[k])),
            kernel_events: counter_vec(
                &r,
                "gmon_agent_kernel_events_sent_total",
                "Goroutine events the kernel probes wrote to the ring buffer, by kind",
                &["kind"],
            )?,
            kernel_counted: counter_vec(
                &r,
                "gmon_agent_kernel_goroutines_counted_total",
                "Aggregate mode: goroutine creations and exits the kernel probes counted per site, by kind",
                &["kind"],
            )?,
            sites_overflowed: counter(
                &r,
                "gmon_agent_sites_overflowed_total",
                "Aggregate mode: creations counted in the overflow site (creator=\"overflow\") because every kernel site slot was taken",
            )?,
            events_lost: counter_vec(
                &r,
                "gmon_agent_events_lost_total",
                "Goroutine events lost, by reason (ringbuf_full, read_g_failed, scratch_busy, proc_ringbuf_full, live_full: kernel; malformed: user space)",
                &["reason"],
            )?,
            stack_failures: counter_vec(
                &r,
                "gmon_agent_stack_failures_total",
                "Creation stacks missing, by reason (kernel: stack map full; read: stack map lookup failed)",
                &["reason"],
            )?,
            untracked_exits: counter(
                &r,
                "gmon_agent_untracked_exits_total",
                "Exits of goroutines created before the agent attached",
            )?,
            live_spilled: counter(
                &r,
                "gmon_agent_live_spilled_total",
                "Aggregate mode: goroutines the kernel kept in its spill table because their set of the live array was full (slower, still exact)",
            )?,
            duplicate_creates: counter(
                &r,
                "gmon_agent_duplicate_creates_total",
                "Creations of a goroutine id that was already live in the same process",
            )?,
            unresolved_pcs: counter(
                &r,
                "gmon_agent_unresolved_pcs_total",
                "Program counters that could not be symbolized",
            )?,
            dropped_with_process: counter(
                &r,
                "gmon_agent_goroutines_dropped_with_process_total",
                "Tracked goroutines forgotten because their process exited",
            )?,
            bias_failures: counter(
                &r,
                "gmon_agent_load_bias_failures_total",
                "Processes whose load address could not be read (their PCs stay unresolved)",
            )?,
            log_write_errors: counter(
                &r,
                "gmon_agent_log_write_errors_total",
                "Log lines that could not be written to stdout",
            )?,
            goroutines_tracked: gauge(
                &r,
                "gmon_agent_goroutines_tracked",
                "Goroutines currently tracked",
            )?,
            live_table_entries: gauge(
                &r,
                "gmon_agent_live_table_entries",
                &format!(
                    "Aggregate mode: goroutines in the kernel's live table as last read (array and spill table, {} at most)",
                    agent_common::LIVE_ENTRIES
                ),
            )?,
            processes_tracked: gauge(
                &r,
                "gmon_agent_processes_tracked",
                "Processes currently tracked",
            )?,
            uprobes_attached: gauge(
                &r,
                "gmon_agent_uprobes_attached",
                "Uprobes currently attached",
            )?,
            probe_sites: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "gmon_agent_probe_sites",
                        "Probed binaries by the class of their probe sites (emulated: cheap traps; single_stepped: about 20x the cost)",
                    ),
                    &["binary", "class"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            node,
            k8s_keys,
            otlp_exports: counter_vec(
                &r,
                "gmon_agent_otlp_exports_total",
                "OTLP metric exports, by result (ok, failed)",
                &["result"],
            )?,
            otlp_sites_overflowed: counter(
                &r,
                "gmon_agent_otlp_sites_overflowed_total",
                "Creation sites exported as `other` because a process had too many",
            )?,
            otlp_series_overflowed: counter(
                &r,
                "gmon_agent_otlp_series_overflowed_total",
                "OTLP series past --otlp-max-series, folded into the SDK's overflow series",
            )?,
            k8s: KubeMetrics {
                pods: gauge(
                    kr,
                    "gmon_agent_k8s_pods",
                    "Pods on this node in the Kubernetes index",
                )?,
                synced: gauge(
                    kr,
                    "gmon_agent_k8s_synced",
                    "1 once the pod watch has listed this node's pods",
                )?,
                watch_errors: counter(
                    kr,
                    "gmon_agent_k8s_watch_errors_total",
                    "Failed pod list or watch requests (each retried with backoff)",
                )?,
                relists: counter(
                    kr,
                    "gmon_agent_k8s_relists_total",
                    "Full lists of this node's pods (at start and after each expired watch)",
                )?,
            },
            discovery: Discovery {
                processes_seen: counter(
                    &r,
                    "gmon_agent_processes_seen_total",
                    "Processes discovered (node mode): at start and at each exec",
                )?,
                go_binaries_found: counter(
                    &r,
                    "gmon_agent_go_binaries_found_total",
                    "Distinct Go executables (Go 1.23+) analysed",
                )?,
                binaries_attached: gauge(
                    &r,
                    "gmon_agent_binaries_attached",
                    "Go executables currently probed",
                )?,
                attach_failures: counter_vec(
                    &r,
                    "gmon_agent_attach_failures_total",
                    "Executables that could not be probed, by reason (attach, or why the analysis refused the file: bad_elf, bad_buildinfo, bad_pclntab, missing_runtime, no_ret, unmapped, bad_dwarf, unknown_release)",
                    &["reason"],
                )?,
                processes_skipped: counter_vec(
                    &r,
                    "gmon_agent_processes_skipped_total",
                    "Processes not probed, by reason (not_go, too_old, not_included, excluded, out_of_scope, self, gone, failed)",
                    &["reason"],
                )?,
                unknown_process_events: counter(
                    &r,
                    "gmon_agent_unknown_process_events_total",
                    "Goroutine events from processes discovery could not place (dropped)",
                )?,
                ignored_process_events: counter(
                    &r,
                    "gmon_agent_ignored_process_events_total",
                    "Goroutine events (in aggregate mode, creations and exits the kernel counted) from processes deliberately not probed whose binary is probed for others (dropped)",
                )?,
                latency: {
                    let h = prometheus::Histogram::with_opts(
                        HistogramOpts::new(
                            "gmon_agent_discovery_latency_seconds",
                            "From a process's exec to its probes being in place",
                        )
                        .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
                    )?;
                    r.register(Box::new(h.clone()))?;
                    h
                },
            },
            registry: r,
        };
        Ok(Arc::new(m))
    }

    pub fn received(&self, created: u64, exited: u64) {
        self.received[0].inc_by(created);
        self.received[1].inc_by(exited);
    }

    /// Goroutines found alive at attach that did not fit the kernel's
    /// live table.
    pub fn live_full(&self, n: u64) {
        self.events_lost.with_label_values(&["live_full"]).inc_by(n);
    }

    pub fn malformed(&self, n: u64) {
        self.events_lost.with_label_values(&["malformed"]).inc_by(n);
    }

    /// Adds the kernel counters' increase since the last call.
    pub fn add_kernel(&self, d: &[u64; counter::COUNT as usize]) {
        self.kernel_events
            .with_label_values(&["create"])
            .inc_by(d[counter::CREATE_SENT as usize]);
        self.kernel_events
            .with_label_values(&["exit"])
            .inc_by(d[counter::EXIT_SENT as usize]);
        self.events_lost
            .with_label_values(&["ringbuf_full"])
            .inc_by(d[counter::RINGBUF_FULL as usize]);
        self.events_lost
            .with_label_values(&["read_g_failed"])
            .inc_by(d[counter::READ_G_FAILED as usize]);
        self.events_lost
            .with_label_values(&["scratch_busy"])
            .inc_by(d[counter::SCRATCH_BUSY as usize]);
        self.events_lost
            .with_label_values(&["proc_ringbuf_full"])
            .inc_by(d[counter::PROC_RINGBUF_FULL as usize]);
        self.stack_failures
            .with_label_values(&["kernel"])
            .inc_by(d[counter::STACK_FAILED as usize]);
        self.kernel_counted
            .with_label_values(&["create"])
            .inc_by(d[counter::CREATE_COUNTED as usize]);
        self.kernel_counted
            .with_label_values(&["exit"])
            .inc_by(d[counter::EXIT_COUNTED as usize]);
        self.sites_overflowed
            .inc_by(d[counter::SITE_OVERFLOW as usize]);
        // A goroutine left out of the live table: its exit cannot be
        // matched, so it is an exit lost.
        self.events_lost
            .with_label_values(&["live_full"])
            .inc_by(d[counter::LIVE_FULL as usize]);
        self.untracked_exits
            .inc_by(d[counter::EXIT_UNTRACKED as usize]);
        self.live_spilled.inc_by(d[counter::LIVE_SPILLED as usize]);
    }

    /// Aggregate mode: goroutines still live in the kernel's table when
    /// their process went.
    pub fn add_dropped_with_process(&self, n: u64) {
        self.dropped_with_process.inc_by(n);
    }

    /// Adds the tracker's anomaly counts' increase from `before` to `now`.
    pub fn add_stats(&self, before: &Stats, now: &Stats) {
        self.untracked_exits
            .inc_by(now.untracked_exits.saturating_sub(before.untracked_exits));
        self.duplicate_creates.inc_by(
            now.duplicate_creates
                .saturating_sub(before.duplicate_creates),
        );
        self.unresolved_pcs
            .inc_by(now.unresolved_pcs.saturating_sub(before.unresolved_pcs));
        self.dropped_with_process.inc_by(
            now.dropped_with_process
                .saturating_sub(before.dropped_with_process),
        );
        self.bias_failures
            .inc_by(now.bias_failures.saturating_sub(before.bias_failures));
        self.stack_failures.with_label_values(&["read"]).inc_by(
            now.stack_reads_failed
                .saturating_sub(before.stack_reads_failed),
        );
        self.goroutines_seen_at_attach
            .inc_by(now.seen_at_attach.saturating_sub(before.seen_at_attach));
    }

    /// Aggregate mode: goroutines the walk put in the kernel's table.
    pub fn add_seen_at_attach(&self, n: u64) {
        self.goroutines_seen_at_attach.inc_by(n);
    }

    pub fn add_log_write_errors(&self, n: u64) {
        self.log_write_errors.inc_by(n);
    }

    /// The text exposition format (what /metrics serves).
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Binds the /metrics listener (early, so a busy port fails before probing).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Bind(addr, e))
}

/// Serves /metrics, and /healthz for liveness and readiness probes, until
/// `shutdown` resolves. The server starts only once the probes are loaded,
/// so an answer from /healthz means the agent is tracing.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    view: crate::export::view::SitesView,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use crate::export::view::{Query, render_text};
    use axum::{
        Router,
        extract::Query as Q,
        http::{StatusCode, header},
        response::IntoResponse,
        routing::get,
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/goroutines",
            get(move |q: Result<Q<Query>, axum::extract::rejection::QueryRejection>| {
                let view = view.clone();
                async move {
                    let Ok(Q(q)) = q else {
                        return (
                            StatusCode::BAD_REQUEST,
                            "bad query: use format=text|json, sort=live|age|rate, limit=N, pod=NAMESPACE/NAME, pid=N\n",
                        )
                            .into_response();
                    };
                    let v = view.query(&q);
                    match q.format.as_deref() {
                        Some("json") => (
                            [(header::CONTENT_TYPE, "application/json")],
                            serde_json::to_string(&v).unwrap_or_default(),
                        )
                            .into_response(),
                        None | Some("text") => (
                            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                            render_text(&v),
                        )
                            .into_response(),
                        Some(_) => (StatusCode::BAD_REQUEST, "format is text or json\n").into_response(),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Goroutine, Sink};
    use crate::{gobin::Frame, model::Site};

    /// Leaked: a test's sites live as long as it does.
    fn site_with(id: u64, stack: &[&str]) -> &'static Site {
        Box::leak(Box::new(Site {
            id,
            stack: stack
                .iter()
                .map(|f| Frame {
                    function: f.to_string(),
                    file: None,
                    line: None,
                })
                .collect(),
            creator: None,
            start: None,
            proc: None,
            seen_at_attach: false,
            counts: Default::default(),
        }))
    }

    fn goroutine(stack: &[&str], created_ns: u64) -> Goroutine<'static> {
        Goroutine {
            pid: 1,
            goid: 5,
            parent_goid: 1,
            created_ns,
            site: site_with(3, stack),
        }
    }

    #[test]
    fn counts_each_site_apart_across_interleaving_and_a_site_gone() {
        let m = Metrics::new(false, None).unwrap();
        let mut sink = PromSink::new(m.clone());
        let (a, b, c) = (
            site_with(1, &["main.a"]),
            site_with(2, &["main.b"]),
            site_with(3, &["main.c"]),
        );
        let g = |site: &'static Site| Goroutine {
            pid: 1,
            goid: 7,
            parent_goid: 1,
            created_ns: 0,
            site,
        };
        // Runs and switches; lifetimes under 1 s, between 1 and 3 s, past 180 s.
        for (s, n, life) in [
            (a, 2, 500_000_000),
            (b, 1, 2_000_000_000),
            (a, 1, 1_000_000_000),
            (c, 3, 200_000_000_000),
            (b, 2, 1),
        ] {
            for _ in 0..n {
                sink.created(&g(s));
                sink.exited(&g(s), life);
            }
        }
        // The first site's cached handles go; the others move but count on.
        sink.site_gone(1);
        sink.created(&g(c));
        sink.created(&g(b));
        sink.publish();
        let text = m.render();
        // The value of the one sample line holding every part.
        let sample = |parts: &[&str]| {
            text.lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or_else(|| panic!("no {parts:?} in {text}"))
                .to_string()
        };
        let count = |family: &str, f: &str| sample(&[&format!("{family}{{stack_0=\"{f}\",")]);
        assert_eq!(count("gmon_goroutine_creation", "main.a"), "3");
        assert_eq!(count("gmon_goroutine_creation", "main.b"), "4");
        assert_eq!(count("gmon_goroutine_creation", "main.c"), "4");
        assert_eq!(count("gmon_goroutine_exit", "main.b"), "3");
        assert_eq!(count("gmon_goroutine_exit", "main.c"), "3");
        let bucket = |f: &str, le: &str| {
            sample(&[
                "gmon_goroutine_uptime_bucket{",
                &format!("stack_0=\"{f}\""),
                &format!("le=\"{le}\"}}"),
            ])
        };
        // 1 s is inclusive: a's 1 s goroutine is in le=1.
        assert_eq!(bucket("main.a", "1"), "3");
        assert_eq!(bucket("main.b", "1"), "2");
        assert_eq!(bucket("main.b", "3"), "3");
        assert_eq!(bucket("main.c", "180"), "0");
        assert_eq!(bucket("main.c", "+Inf"), "3");
    }

    #[test]
    fn renders_gmon_families_with_stack_labels() {
        let m = Metrics::new(false, None).unwrap();
        let mut sink = PromSink::new(m.clone());
        let g = goroutine(
            &[
                "runtime.newproc1",
                "main.main",
                "runtime.main",
                "runtime.goexit",
            ],
            0,
        );
        sink.created(&g);
        sink.exited(&g, 2_500_000_000);
        let labels = r#"stack_0="runtime.goexit",stack_1="runtime.main",stack_2="main.main",stack_3="runtime.newproc1",stack_4="none""#;
        // Counted in the site's batch until published.
        let text = m.render();
        assert!(
            text.contains(&format!("gmon_goroutine_creation{{{labels}}} 0")),
            "{text}"
        );
        sink.publish();
        let text = m.render();
        assert!(
            text.contains("# TYPE gmon_goroutine_creation counter"),
            "{text}"
        );
        assert!(
            text.contains(&format!("gmon_goroutine_creation{{{labels}}} 1")),
            "{text}"
        );
        assert!(
            text.contains(&format!("gmon_goroutine_exit{{{labels}}} 1")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "gmon_goroutine_uptime_bucket{{{labels},le=\"1\"}} 0"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "gmon_goroutine_uptime_bucket{{{labels},le=\"3\"}} 1"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("gmon_goroutine_uptime_sum{{{labels}}} 2.5")),
            "{text}"
        );

        let parsed =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let uptime: Vec<_> = parsed
            .samples
            .iter()
            .filter(|s| s.metric == "gmon_goroutine_uptime")
            .collect();
        assert_eq!(uptime.len(), 1);
        assert!(matches!(
            &uptime[0].value,
            prometheus_parse::Value::Histogram(b) if b.len() == GMON_BUCKETS.len() + 1
        ));
    }

    #[test]
    fn kernel_and_tracker_counters_are_exported() {
        let m = Metrics::new(false, None).unwrap();
        let mut d = [0u64; counter::COUNT as usize];
        d[counter::RINGBUF_FULL as usize] = 4;
        d[counter::LIVE_SPILLED as usize] = 3;
        m.add_kernel(&d);
        let now = Stats {
            untracked_exits: 2,
            ..Default::default()
        };
        m.add_stats(&Stats::default(), &now);
        let text = m.render();
        assert!(
            text.contains("gmon_agent_events_lost_total{reason=\"ringbuf_full\"} 4"),
            "{text}"
        );
        assert!(text.contains("gmon_agent_live_spilled_total 3"), "{text}");
        assert!(
            text.contains("gmon_agent_untracked_exits_total 2"),
            "{text}"
        );
    }
}
