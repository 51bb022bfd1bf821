//! The agent's own profiles, for `-pprof PORT`: a CPU profile (`cpu`,
//! sampled with SIGPROF) and a heap profile (jemalloc's sampling profiler),
//! both in pprof's protobuf format at the paths Go's net/http/pprof uses, so
//! `go tool pprof http://HOST:PORT/debug/pprof/profile` works as for gmon.

mod cpu;

use axum::{
    Router,
    extract::Query,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use std::{collections::HashMap, future::Future, net::SocketAddr, time::Duration};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for -pprof on {addr}: {source} (pick a free port with -pprof PORT)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Go's default and a cap, in seconds.
const DEFAULT_SECONDS: u64 = 30;
const MAX_SECONDS: u64 = 600;

/// Binds the listener early, so a busy port fails before any probe is attached.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Turns on heap sampling; false if the binary does not run on jemalloc
/// with profiling compiled in.
pub fn start_heap_sampling() -> bool {
    let Some(ctl) = jemalloc_pprof::PROF_CTL.as_ref() else {
        return false;
    };
    let mut ctl = ctl.blocking_lock();
    ctl.activated() || ctl.activate().is_ok()
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/debug/pprof/", get(index))
        .route("/debug/pprof/profile", get(cpu))
        .route("/debug/pprof/heap", get(heap));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "pprof server stopped");
    }
}

async fn index() -> &'static str {
    "gmon-agent profiles (pprof format):\n\
     /debug/pprof/profile?seconds=30  CPU profile\n\
     /debug/pprof/heap                heap profile (sampled, in use)\n"
}

fn failure(status: StatusCode, msg: String) -> Response {
    (status, msg + "\n").into_response()
}

fn pprof_body(body: Vec<u8>, name: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

async fn cpu(Query(q): Query<HashMap<String, String>>) -> Response {
    let seconds = match q.get("seconds").map(|s| s.parse::<u64>()) {
        None => DEFAULT_SECONDS,
        Some(Ok(s)) if (1..=MAX_SECONDS).contains(&s) => s,
        Some(_) => {
            return failure(
                StatusCode::BAD_REQUEST,
                format!("seconds must be a whole number from 1 to {MAX_SECONDS}"),
            );
        }
    };
    match tokio::task::spawn_blocking(move || cpu::profile(Duration::from_secs(seconds))).await {
        Ok(Ok(taken)) => {
            tracing::info!(
                seconds,
                samples = taken.samples,
                dropped = taken.dropped,
                "CPU profile taken"
            );
            pprof_body(taken.pprof, "profile.pb.gz")
        }
        Ok(Err(e @ cpu::Error::Busy)) => failure(StatusCode::CONFLICT, e.to_string()),
        Ok(Err(e)) => failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn heap() -> Response {
    let Some(ctl) = jemalloc_pprof::PROF_CTL.as_ref() else {
        return failure(
            StatusCode::NOT_IMPLEMENTED,
            "heap profiling is unavailable: this build does not run on jemalloc with profiling"
                .into(),
        );
    };
    let mut ctl = ctl.lock().await;
    if !ctl.activated() {
        return failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "heap sampling is off".into(),
        );
    }
    match ctl.dump_pprof() {
        Ok(body) => pprof_body(body, "heap.pb.gz"),
        Err(e) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not dump the heap profile: {e:#}"),
        ),
    }
}
