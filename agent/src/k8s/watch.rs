//! The pod watch: list+watch of this node's pods (field selector
//! spec.nodeName), through kube's watcher, which re-lists after an expired
//! resourceVersion and backs off while the API server is unreachable.

use super::{Error, KubeSettings, PodMeta, SharedIndex};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// The watch's health, for the agent's self-metrics.
#[derive(Default)]
pub struct WatchStats {
    /// Watch or list requests that failed (each retried with backoff).
    pub errors: AtomicU64,
    /// Full lists received (the first, and one after each expiry).
    pub relists: AtomicU64,
}

/// Starts the watch on the current tokio runtime. Fails only when there is
/// no cluster configuration at all; an unreachable API server is retried.
pub async fn spawn(
    settings: KubeSettings,
    index: Arc<SharedIndex>,
    stats: Arc<WatchStats>,
) -> Result<(), Error> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    tracing::info!(
        cluster = %config.cluster_url,
        node = %settings.node_name,
        "Kubernetes: watching this node's pods"
    );
    let client = Client::try_from(config).map_err(|e| Error::Config(e.to_string()))?;
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", settings.node_name));
    tokio::spawn(async move {
        let mut stream = watcher(api, cfg).default_backoff().boxed();
        // A full list is collected aside and swapped in whole, so pods
        // deleted while the watch was down disappear.
        let mut relist: Option<HashMap<String, Arc<PodMeta>>> = None;
        // From the start of a full list to its end (traces).
        let mut relist_span = tracing::Span::none();
        let mut last_error_log = None::<std::time::Instant>;
        let meta = |p: &Pod| {
            PodMeta::from_pod(p, &settings.pod_labels, &settings.pod_annotations).map(Arc::new)
        };
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init) => {
                    relist = Some(HashMap::new());
                    relist_span = tracing::debug_span!("k8s_relist", pods = tracing::field::Empty);
                }
                Ok(watcher::Event::InitApply(p)) => {
                    if let (Some(r), Some(m)) = (relist.as_mut(), meta(&p)) {
                        r.insert(m.uid.clone(), m);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    let pods = relist.take().unwrap_or_default();
                    let n = pods.len();
                    index.update(|ix| {
                        *ix = Default::default();
                        for m in pods.into_values() {
                            ix.insert(m);
                        }
                    });
                    index.synced.store(true, Ordering::Release);
                    stats.relists.fetch_add(1, Ordering::Relaxed);
                    relist_span.record("pods", n);
                    let _synced = relist_span.enter();
                    tracing::info!(pods = n, "Kubernetes: pod index synced");
                    drop(_synced);
                    relist_span = tracing::Span::none();
                }
                Ok(watcher::Event::Apply(p)) => {
                    let _span = tracing::trace_span!("k8s_pod_update").entered();
                    if let Some(m) = meta(&p) {
                        tracing::debug!(namespace = %m.namespace, pod = %m.name, containers = m.containers.len(), "pod updated");
                        index.update(|ix| ix.insert(m));
                    }
                }
                Ok(watcher::Event::Delete(p)) => {
                    if let Some(uid) = p.metadata.uid.as_deref() {
                        tracing::debug!(uid, "pod deleted");
                        index.update(|ix| ix.remove(uid));
                    }
                }
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    // Counted always, logged at most once a minute.
                    if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        last_error_log = Some(std::time::Instant::now());
                        tracing::warn!("Kubernetes pod watch failed (retrying): {e}");
                    }
                }
            }
        }
    });
    Ok(())
}
