//! Standalone mode: one binary, its processes, until Ctrl-C or SIGTERM.
//! Order matters: everything that can fail for a bad argument is checked
//! before any probe is attached, and probes are detached only after the
//! event reader has drained the last events.

use crate::{
    cli::Cli,
    config::Config,
    export::{
        Fanout,
        logfmt::{Clock, GmonLog},
        otlp::{Otlp, OtlpCounts, OtlpSettings, OtlpSink},
        prometheus::{self as prom, Metrics, PromSink},
    },
    gobin::{self, GoBinary},
    model::Tracker,
    probes::{self, Maps, Probes},
    process, selfprof,
};
use agent_common::EVENT_CREATE;
use std::{
    io::BufWriter,
    net::SocketAddr,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Binary(#[from] gobin::Error),
    #[error(transparent)]
    Process(#[from] process::Error),
    #[error(transparent)]
    Probes(#[from] probes::Error),
    #[error(transparent)]
    Metrics(#[from] prom::Error),
    #[error(transparent)]
    Pprof(#[from] selfprof::Error),
    #[error(transparent)]
    Selection(#[from] process::select::Error),
    #[error(transparent)]
    Otlp(#[from] crate::export::otlp::Error),
    #[error(transparent)]
    OtlpSettings(#[from] crate::export::otlp::settings::Error),
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error(transparent)]
    Kubernetes(#[from] crate::process::k8s::Error),
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// How often the reader drains the ring buffer when the kernel did not wake it.
pub(crate) const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// How often exited processes are swept and self-metrics refreshed.
pub(crate) const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// Standalone mode with --path; node mode without.
pub fn run(cli: Cli, config: Config) -> Result<(), Error> {
    match cli.path.clone() {
        Some(path) => run_one(cli, config, &path),
        None => crate::node::run(cli, config),
    }
}

/// The agent's own logs as OTLP, if `--otlp-logs` (or the config file)
/// asks for it.
pub fn log_export(
    cli: &Cli,
    config: &Config,
) -> Result<Option<opentelemetry_sdk::logs::SdkLoggerProvider>, Error> {
    match otlp_settings(cli, config)? {
        Some(s) => Ok(crate::export::otlp::log_provider(&s)?),
        None if cli.otlp.otlp_logs || config.otlp.logs == Some(true) => {
            Err(crate::export::otlp::settings::Error::LogsEndpoint.into())
        }
        None => Ok(None),
    }
}

fn run_one(cli: Cli, config: Config, path: &std::path::Path) -> Result<(), Error> {
    let clock = Clock::new();
    let binary = {
        let _span = tracing::debug_span!("analyse").entered();
        Arc::new(GoBinary::analyse(path)?)
    };
    let pid = NonZeroU32::new(cli.pid);
    if let Some(pid) = pid {
        process::check_runs(pid.get(), binary.id)?;
    }
    let metrics = Metrics::new()?;
    let otlp = Otlp::if_configured(otlp_settings(&cli, &config)?)?;

    probes::require_capabilities(false)?;
    let (rt, servers) = Servers::bind(&cli)?;
    raise_memlock_limit();
    let (mut probes, maps) = {
        let _span = tracing::debug_span!("load").entered();
        Probes::load(cli.stack_depth as usize)?
    };
    let placed = {
        let _span = tracing::debug_span!("attach").entered();
        probes.attach(&binary, pid)?.uprobes()
    };
    metrics.uprobes_attached.set(placed as i64);
    let running = match pid {
        Some(p) => vec![p.get()],
        None => process::processes_running(binary.id),
    };
    tracing::info!(
        path = %binary.path.display(),
        go = %binary.build.version_string,
        offsets = %binary.offsets_source,
        uprobes = placed,
        processes = running.len(),
        "attached"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, metrics, binary) = (stop.clone(), metrics.clone(), binary.clone());
        let level = cli.level;
        let depth = cli.stack_depth as usize;
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                let out = Outputs {
                    level,
                    clock,
                    metrics,
                    otlp,
                };
                read_events(maps, binary, depth, out, stop)
            })?
    };

    servers.run_until_signal(&rt, &metrics);
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    // Detach every uprobe and unload the programs.
    drop(probes);
    tracing::info!("detached");
    Ok(())
}

/// The HTTP endpoints (/metrics and, with -pprof, /debug/pprof/), bound
/// before anything is attached so that a busy port fails early.
pub(crate) struct Servers {
    metrics: Option<tokio::net::TcpListener>,
    pprof: Option<tokio::net::TcpListener>,
}

impl Servers {
    pub(crate) fn bind(cli: &Cli) -> Result<(tokio::runtime::Runtime, Self), Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let metrics = if cli.metrics != 0 {
            let addr = SocketAddr::new(cli.metrics_address, cli.metrics);
            Some(rt.block_on(prom::bind(addr))?)
        } else {
            None
        };
        let pprof = if cli.pprof != 0 {
            let addr = SocketAddr::new(cli.metrics_address, cli.pprof);
            let l = rt.block_on(selfprof::bind(addr))?;
            if !selfprof::start_heap_sampling() {
                tracing::warn!("heap profiles unavailable: not running on jemalloc with profiling");
            }
            tracing::info!(%addr, "serving the agent's profiles at /debug/pprof/");
            Some(l)
        } else {
            None
        };
        Ok((rt, Servers { metrics, pprof }))
    }

    /// Serves until SIGINT or SIGTERM, then shuts the servers down.
    pub(crate) fn run_until_signal(self, rt: &tokio::runtime::Runtime, metrics: &Arc<Metrics>) {
        rt.block_on(async {
            let (tx, rx) = tokio::sync::watch::channel(false);
            let shutdown = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.changed().await;
            };
            let server = self
                .metrics
                .map(|l| tokio::spawn(prom::serve(l, metrics.clone(), shutdown(rx.clone()))));
            let pprof = self
                .pprof
                .map(|l| tokio::spawn(selfprof::serve(l, shutdown(rx.clone()))));
            wait_for_signal().await;
            tracing::info!("stopping");
            let _ = tx.send(true);
            if let Some(s) = server {
                let _ = s.await;
            }
            if let Some(s) = pprof {
                let _ = s.await;
            }
        });
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// On kernels before 5.11 BPF memory counts against RLIMIT_MEMLOCK; newer
/// ones account it to the cgroup, so a refusal here is harmless.
pub(crate) fn raise_memlock_limit() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (fine on Linux 5.11+)");
    }
}

/// The event loop: drain, track, export; housekeeping once a second.
/// Where the event loop's results go.
struct Outputs {
    level: crate::export::logfmt::Level,
    clock: Clock,
    metrics: Arc<Metrics>,
    otlp: Option<Otlp>,
}

fn read_events(
    maps: Maps,
    binary: Arc<GoBinary>,
    depth: usize,
    out: Outputs,
    stop: Arc<AtomicBool>,
) {
    let Outputs {
        level,
        clock,
        metrics,
        otlp,
    } = out;
    let Maps {
        mut events,
        mut stacks,
        mut counters,
        ..
    } = maps;
    let binary_version = binary.build.version_string.clone();
    let binary_path = binary.path.display().to_string();
    let mut tracker = Tracker::new(binary, depth);
    let mut log = GmonLog::new(
        BufWriter::with_capacity(64 << 10, std::io::stdout()),
        level,
        clock,
    );
    let mut prom = PromSink::new(metrics.clone());
    let mut otlp_sink = otlp
        .as_ref()
        .map(|o| o.sink(&binary_version, Some(binary_path.clone())));
    let mut last_export = OtlpCounts::default();
    metrics.add_kernel(&counters.deltas());
    metrics.add_stats(&tracker.stats, &tracker.stats);
    let mut last_stats = tracker.stats;
    let mut last_housekeeping = Instant::now();
    let mut last_log_errors = 0;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping {
            events.wait(DRAIN_INTERVAL);
        }
        let mut malformed = 0;
        {
            let span = tracing::trace_span!("drain", events = tracing::field::Empty).entered();
            let mut sink = sinks(&mut log, &mut prom, &mut otlp_sink);
            let n = events.drain(|ev| match ev {
                Ok(ev) => {
                    metrics.received(ev.kind == EVENT_CREATE);
                    tracker.on_event(&ev, &mut stacks, &mut sink);
                }
                Err(_) => malformed += 1,
            });
            span.record("events", n);
        }
        metrics.malformed(malformed);
        log.flush();
        if stopping || last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
            last_housekeeping = Instant::now();
            let _span = tracing::trace_span!("housekeeping").entered();
            tracker.sweep(&mut stacks, &mut sinks(&mut log, &mut prom, &mut otlp_sink));
            if let (Some(o), Some(s)) = (&otlp, &otlp_sink) {
                metrics.add_otlp(&mut last_export, OtlpCounts::now(&o.stats, s));
            }
            metrics.add_kernel(&counters.deltas());
            metrics.add_stats(&last_stats, &tracker.stats);
            last_stats = tracker.stats;
            metrics.add_log_write_errors(log.write_errors - last_log_errors);
            last_log_errors = log.write_errors;
            metrics.goroutines_tracked.set(tracker.live() as i64);
            metrics.processes_tracked.set(tracker.processes() as i64);
        }
        if stopping {
            break;
        }
    }
    // The last interval: export what is pending before the probes go.
    if let Some(o) = otlp {
        o.shutdown();
    }
}

/// OTLP settings from the flags, the config file and the environment.
pub(crate) fn otlp_settings(cli: &Cli, config: &Config) -> Result<Option<OtlpSettings>, Error> {
    Ok(OtlpSettings::resolve(&cli.otlp, &config.otlp, |k| {
        std::env::var(k).ok()
    })?)
}

pub(crate) fn sinks<'a>(
    log: &'a mut GmonLog<BufWriter<std::io::Stdout>>,
    prom: &'a mut PromSink,
    otlp: &'a mut Option<OtlpSink>,
) -> Fanout<'a> {
    let mut v: Vec<&'a mut dyn crate::model::Sink> = vec![log, prom];
    if let Some(o) = otlp {
        v.push(o);
    }
    Fanout(v)
}
