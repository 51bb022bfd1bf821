//! Wires the stages into one agent, for both modes: settings resolved and
//! checked (bad input fails here, before anything is attached), the HTTP
//! servers bound, the pod index started, the probes loaded, the pipeline
//! run on its own thread until SIGTERM or SIGINT, then one shutdown path:
//! stop, drain the last events, flush OTLP, detach.

use crate::{
    cli::Cli,
    config::Config,
    discover::{self, select::Selection},
    export::{
        logfmt::{Clock, GmonLog, Level},
        otlp::{Otlp, OtlpSettings},
        prometheus::{self as prom, Metrics},
    },
    gobin::{self, GoBinary},
    k8s::{self, KubeSettings, SharedIndex, WatchStats},
    pipeline::{Kube, Pipeline, Target, lifetime_bounds},
    probes::{self, Probes, TestHooks},
    serve::Servers,
};
use std::{io::BufWriter, num::NonZeroU32, sync::Arc};

/// Set (to anything) only by tests: the probes act as if a preempted probe
/// always held their scratch space, a path only fully preemptible kernels
/// take on their own.
pub const SCRATCH_BUSY_ENV: &str = "GMON_AGENT_TEST_SCRATCH_BUSY";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Binary(#[from] gobin::Error),
    #[error(transparent)]
    Process(#[from] discover::Error),
    #[error(transparent)]
    Probes(#[from] probes::Error),
    #[error(transparent)]
    Metrics(#[from] prom::Error),
    #[error(transparent)]
    Serve(#[from] crate::serve::Error),
    #[error(transparent)]
    Selection(#[from] discover::select::Error),
    #[error(transparent)]
    Otlp(#[from] crate::export::otlp::Error),
    #[error(transparent)]
    OtlpSettings(#[from] crate::export::otlp::settings::Error),
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error(transparent)]
    Kubernetes(#[from] k8s::Error),
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("lifetime histograms: {0}")]
    Bounds(String),
}

/// Runs the agent: standalone with --path (one binary, gmon's output),
/// node mode without (every Go program the selection admits).
pub fn run(cli: Cli, config: Config) -> Result<(), Error> {
    let clock = Clock::new();
    let depth = cli.stack_depth as usize;
    let target = match cli.path.as_deref() {
        Some(path) => {
            let bin = {
                let _span = tracing::debug_span!("analyse").entered();
                Arc::new(GoBinary::analyse(path)?)
            };
            let pid = NonZeroU32::new(cli.pid);
            if let Some(pid) = pid {
                discover::check_runs(pid.get(), bin.id)?;
            }
            Target::Binary { bin, pid }
        }
        None => {
            let include: Vec<String> = config.include.iter().chain(&cli.include).cloned().collect();
            let exclude: Vec<String> = config.exclude.iter().chain(&cli.exclude).cloned().collect();
            let scope = cli.scope.or(config.scope).unwrap_or_default();
            let selection = Selection::new(&include, &exclude, scope)?;
            tracing::info!(?scope, include = ?include, exclude = ?exclude, "node mode: watching processes");
            Target::Node(selection)
        }
    };
    let node = matches!(target, Target::Node(_));
    // Pod metadata labels node mode's processes; standalone has none.
    let kube = match node {
        true => KubeSettings::resolve(&cli.k8s, &config.kubernetes)?,
        false => None,
    };
    let metrics = Metrics::new(node, kube.as_ref().map(KubeSettings::attribute_keys))?;
    let otlp = Otlp::if_configured(otlp_settings(&cli, &config)?)?;
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        tracing::info!("OTLP export off: OTEL_SDK_DISABLED=true");
    }
    probes::require_capabilities(node)?;
    let (rt, servers) = Servers::bind(&cli)?;
    let kube = match kube {
        Some(settings) => {
            let (index, stats) = (Arc::<SharedIndex>::default(), Arc::<WatchStats>::default());
            rt.block_on(k8s::spawn(settings.clone(), index.clone(), stats.clone()))?;
            Some(Kube {
                settings,
                index,
                stats,
                generation: u64::MAX,
            })
        }
        None => {
            if node {
                tracing::info!("Kubernetes metadata off (no --k8s-node-name or NODE_NAME)");
            }
            None
        }
    };

    // Without exit log lines (DEBUG), the kernel counts per site and
    // exits never cross over; creations do only for their log lines (INFO).
    let creation_events = cli.level == Level::Info;
    let aggregate = match cli.level > Level::Debug {
        true => {
            let otlp_bounds = otlp.as_ref().map(Otlp::lifetime_bounds).unwrap_or_default();
            Some(lifetime_bounds(&[&prom::GMON_BUCKETS, &otlp_bounds]).map_err(Error::Bounds)?)
        }
        false => None,
    };
    raise_memlock_limit();
    let hooks = TestHooks {
        scratch_busy: std::env::var_os(SCRATCH_BUSY_ENV).is_some(),
        ..TestHooks::default()
    };
    if hooks.scratch_busy {
        tracing::warn!(
            "{SCRATCH_BUSY_ENV} is set: the probes act as if their scratch space were always busy (for tests; creations lose their stacks or events)"
        );
    }
    let (mut probes, maps) = {
        let _span = tracing::debug_span!("load").entered();
        Probes::load_with(depth, aggregate.as_ref(), creation_events, hooks)?
    };
    probes.watch_processes()?;
    probes.set_site_policy(cli.probe_sites);
    let log = GmonLog::new(
        BufWriter::with_capacity(64 << 10, std::io::stdout()),
        cli.level,
        clock,
    );
    let mut pipeline = Pipeline::new(
        probes,
        target,
        depth,
        metrics.clone(),
        log,
        otlp.as_ref(),
        kube,
    )?;
    let view = crate::export::view::SitesView::default();
    pipeline.serve_view(view.clone());

    let stop = Arc::new(crate::pipeline::Stop::new()?);
    let worker = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("pipeline".into())
            .spawn(move || {
                pipeline.run(maps, &stop);
                // The last interval, before the probes go.
                if let Some(o) = otlp {
                    o.shutdown();
                }
            })?
    };
    servers.run_until_signal(&rt, &metrics, view);
    stop.request();
    let _ = worker.join();
    tracing::info!("detached");
    Ok(())
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
            Err(crate::export::otlp::settings::Error::SignalEndpoint("logs", "LOGS").into())
        }
        None => Ok(None),
    }
}

/// The agent's own spans as OTLP traces, if `--otlp-traces` (or
/// OTEL_TRACES_EXPORTER=otlp) asks for them.
pub fn trace_export(
    cli: &Cli,
    config: &Config,
) -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, Error> {
    match otlp_settings(cli, config)? {
        Some(s) => Ok(crate::export::otlp::traces::tracer_provider(&s)?),
        None if cli.otlp.otlp_traces || config.otlp.traces == Some(true) => {
            Err(crate::export::otlp::settings::Error::SignalEndpoint("traces", "TRACES").into())
        }
        None => Ok(None),
    }
}

/// OTLP settings from the flags, the config file and the environment.
fn otlp_settings(cli: &Cli, config: &Config) -> Result<Option<OtlpSettings>, Error> {
    Ok(OtlpSettings::resolve(&cli.otlp, &config.otlp, |k| {
        std::env::var(k).ok()
    })?)
}

/// On kernels before 5.11 BPF memory counts against RLIMIT_MEMLOCK; newer
/// ones account it to the cgroup, so a refusal here is harmless.
fn raise_memlock_limit() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (fine on Linux 5.11+)");
    }
}
