//! The agent's HTTP endpoints, in one place: /metrics, /goroutines and
//! /healthz on the metrics port, the agent's own profiles with -pprof. They are bound
//! before anything is attached (a busy port fails early) and served until
//! SIGTERM or SIGINT, which is what starts the agent's shutdown.

use crate::{
    cli::Cli,
    export::prometheus::{self as prom, Metrics},
    selfprof,
};
use std::{net::SocketAddr, sync::Arc};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Metrics(#[from] prom::Error),
    #[error(transparent)]
    Pprof(#[from] selfprof::Error),
    #[error("cannot start the HTTP runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// The HTTP endpoints (/metrics and, with -pprof, /debug/pprof/), bound
/// before anything is attached so that a busy port fails early.
pub struct Servers {
    metrics: Option<tokio::net::TcpListener>,
    pprof: Option<tokio::net::TcpListener>,
}

impl Servers {
    pub fn bind(cli: &Cli) -> Result<(tokio::runtime::Runtime, Self), Error> {
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
    pub fn run_until_signal(
        self,
        rt: &tokio::runtime::Runtime,
        metrics: &Arc<Metrics>,
        view: crate::export::view::SitesView,
    ) {
        rt.block_on(async {
            let (tx, rx) = tokio::sync::watch::channel(false);
            let shutdown = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.changed().await;
            };
            let server = self
                .metrics
                .map(|l| tokio::spawn(prom::serve(l, metrics.clone(), view, shutdown(rx.clone()))));
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
