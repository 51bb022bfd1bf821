//! Kubernetes pod metadata for node mode: a node-local index of the pods
//! scheduled here (a watch with spec.nodeName=NODE), joined to processes
//! by container id (from their cgroup) or, failing that, pod UID.
//!
//! The watch runs on the agent's tokio runtime and swaps pruned `PodMeta`
//! into a shared `PodIndex`; the node thread reads it and re-labels its
//! processes whenever the index's generation moves. The API server being
//! unreachable only delays the labels: tracing never waits for it.

mod meta;
mod watch;

pub use meta::PodMeta;
pub use watch::{WatchStats, spawn};

use globset::{Glob, GlobSet, GlobSetBuilder};
use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "Kubernetes: no cluster configuration ({0}); run in a pod with a service account, or set KUBECONFIG"
    )]
    Config(String),
    #[error("Kubernetes: bad namespace glob {0:?}: {1}")]
    Glob(String, globset::Error),
}

/// The pod annotation that makes gmon-agent leave a pod's processes alone.
pub const OPT_OUT_ANNOTATION: &str = "gmon-agent.io/exclude";

/// The command line's `--k8s-*` flags.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct KubeFlags {
    /// Node mode: this node's name, to label series with their pods (downward API: spec.nodeName); NODE_NAME works too
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub k8s_node_name: Option<String>,

    /// Pod label copied onto series as k8s.pod.label.KEY (repeatable; none by default)
    #[arg(long, value_name = "KEY")]
    pub k8s_pod_label: Vec<String>,

    /// Pod annotation copied onto series as k8s.pod.annotation.KEY (repeatable; none by default)
    #[arg(long, value_name = "KEY")]
    pub k8s_pod_annotation: Vec<String>,

    /// Probe only pods in namespaces matching this glob (repeatable)
    #[arg(long, value_name = "GLOB")]
    pub k8s_include_namespace: Vec<String>,

    /// Never probe pods in namespaces matching this glob (repeatable)
    #[arg(long, value_name = "GLOB")]
    pub k8s_exclude_namespace: Vec<String>,
}

/// The config file's `kubernetes:` section.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeFile {
    pub node_name: Option<String>,
    #[serde(default)]
    pub pod_labels: Vec<String>,
    #[serde(default)]
    pub pod_annotations: Vec<String>,
    #[serde(default)]
    pub include_namespaces: Vec<String>,
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
}

/// Resolved settings; `None` from `resolve` when no node name is known.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    pub node_name: String,
    pub pod_labels: Vec<String>,
    pub pod_annotations: Vec<String>,
    include: Option<GlobSet>,
    exclude: GlobSet,
}

fn globs(patterns: &[String]) -> Result<GlobSet, Error> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| Error::Glob(p.clone(), e))?);
    }
    b.build().map_err(|e| Error::Glob(patterns.join(","), e))
}

impl KubeSettings {
    pub fn resolve(flags: &KubeFlags, file: &KubeFile) -> Result<Option<Self>, Error> {
        let Some(node_name) = flags
            .k8s_node_name
            .clone()
            .or_else(|| file.node_name.clone())
            .filter(|n| !n.is_empty())
        else {
            return Ok(None);
        };
        let join =
            |a: &[String], b: &[String]| -> Vec<String> { a.iter().chain(b).cloned().collect() };
        let include = join(&file.include_namespaces, &flags.k8s_include_namespace);
        Ok(Some(KubeSettings {
            node_name,
            pod_labels: join(&file.pod_labels, &flags.k8s_pod_label),
            pod_annotations: join(&file.pod_annotations, &flags.k8s_pod_annotation),
            include: if include.is_empty() {
                None
            } else {
                Some(globs(&include)?)
            },
            exclude: globs(&join(
                &file.exclude_namespaces,
                &flags.k8s_exclude_namespace,
            ))?,
        }))
    }

    /// Why a pod's processes are not probed, if they are not.
    pub fn rejects(&self, pod: &PodMeta) -> Option<&'static str> {
        if pod.opted_out {
            Some("pod_opted_out")
        } else if self
            .include
            .as_ref()
            .is_some_and(|i| !i.is_match(&pod.namespace))
            || self.exclude.is_match(&pod.namespace)
        {
            Some("namespace_excluded")
        } else {
            None
        }
    }
}

/// What a process learns from the index: its pod and, when its container
/// id is listed in the pod's status, its container's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLabels {
    pub pod: Arc<PodMeta>,
    pub container_name: Option<String>,
}

/// Workload and identity attributes every labelled series can carry, in
/// the order /metrics lists them.
const FIXED_KEYS: [&str; 10] = [
    "k8s.node.name",
    "k8s.namespace.name",
    "k8s.pod.name",
    "k8s.container.name",
    "k8s.replicaset.name",
    "k8s.deployment.name",
    "k8s.statefulset.name",
    "k8s.daemonset.name",
    "k8s.job.name",
    "k8s.cronjob.name",
];

impl KubeSettings {
    /// Every attribute key a series may carry, fixed at start (a /metrics
    /// family's label names cannot change): the identity and workload
    /// keys, then the allowlisted labels and annotations.
    pub fn attribute_keys(&self) -> Vec<String> {
        FIXED_KEYS
            .iter()
            .map(|k| k.to_string())
            .chain(self.pod_labels.iter().map(|k| format!("k8s.pod.label.{k}")))
            .chain(
                self.pod_annotations
                    .iter()
                    .map(|k| format!("k8s.pod.annotation.{k}")),
            )
            .collect()
    }
}

impl PodLabels {
    /// The attributes this pod gives a series (semantic-convention keys;
    /// k8s.pod.uid and container.id come from the cgroup already).
    pub fn attributes(&self) -> Vec<(String, String)> {
        let p = &self.pod;
        let mut a = vec![
            ("k8s.node.name".to_owned(), p.node_name.clone()),
            ("k8s.namespace.name".to_owned(), p.namespace.clone()),
            ("k8s.pod.name".to_owned(), p.name.clone()),
        ];
        if let Some(c) = &self.container_name {
            a.push(("k8s.container.name".to_owned(), c.clone()));
        }
        a.extend(p.workload.iter().map(|(k, v)| (k.to_string(), v.clone())));
        a.extend(p.extra.iter().cloned());
        a
    }
}

/// A Prometheus label name for an attribute key: k8s.pod.name ->
/// k8s_pod_name.
pub fn prometheus_label(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The pods on this node, by UID and by container id.
#[derive(Default)]
pub struct PodIndex {
    by_uid: HashMap<String, Arc<PodMeta>>,
    by_container: HashMap<String, (Arc<PodMeta>, String)>,
}

impl PodIndex {
    fn insert(&mut self, pod: Arc<PodMeta>) {
        self.remove(&pod.uid);
        for (id, name) in &pod.containers {
            self.by_container
                .insert(id.clone(), (pod.clone(), name.clone()));
        }
        self.by_uid.insert(pod.uid.clone(), pod);
    }

    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.by_uid.remove(uid) {
            for (id, _) in &old.containers {
                if self.by_container.get(id).is_some_and(|(p, _)| p.uid == uid) {
                    self.by_container.remove(id);
                }
            }
        }
    }

    pub fn pods(&self) -> usize {
        self.by_uid.len()
    }

    /// The pod of a process in container `container_id` of pod `pod_uid`
    /// (either may be unknown).
    pub fn lookup(&self, container_id: Option<&str>, pod_uid: Option<&str>) -> Option<PodLabels> {
        if let Some((pod, name)) = container_id.and_then(|c| self.by_container.get(c)) {
            return Some(PodLabels {
                pod: pod.clone(),
                container_name: Some(name.clone()),
            });
        }
        let pod = self.by_uid.get(pod_uid?)?;
        Some(PodLabels {
            pod: pod.clone(),
            container_name: None,
        })
    }
}

/// The index shared between the watch and the node thread.
#[derive(Default)]
pub struct SharedIndex {
    index: RwLock<PodIndex>,
    /// Bumped on every change, so readers re-resolve only when needed.
    generation: AtomicU64,
    /// Whether a full list has been received since start.
    synced: std::sync::atomic::AtomicBool,
}

impl SharedIndex {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, PodIndex> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut PodIndex)) {
        f(&mut self.index.write().unwrap_or_else(|e| e.into_inner()));
        self.generation.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, ns: &str, containers: &[(&str, &str)]) -> Arc<PodMeta> {
        Arc::new(PodMeta {
            uid: uid.into(),
            namespace: ns.into(),
            name: format!("{uid}-pod"),
            containers: containers
                .iter()
                .map(|(i, n)| (i.to_string(), n.to_string()))
                .collect(),
            ..Default::default()
        })
    }

    #[test]
    fn index_joins_on_container_id_then_pod_uid() {
        let mut ix = PodIndex::default();
        ix.insert(pod("u1", "a", &[("c1", "web"), ("c2", "sidecar")]));
        let l = ix.lookup(Some("c2"), Some("u1")).unwrap();
        assert_eq!(
            (l.pod.uid.as_str(), l.container_name.as_deref()),
            ("u1", Some("sidecar"))
        );
        // A container not yet in the pod's status: the pod, no name.
        let l = ix.lookup(Some("c9"), Some("u1")).unwrap();
        assert_eq!(l.container_name, None);
        assert!(ix.lookup(Some("c9"), Some("u2")).is_none());
        // A restarted container: the new id replaces the old one.
        ix.insert(pod("u1", "a", &[("c3", "web"), ("c2", "sidecar")]));
        assert!(ix.lookup(Some("c1"), None).is_none());
        assert_eq!(
            ix.lookup(Some("c3"), None)
                .unwrap()
                .container_name
                .as_deref(),
            Some("web")
        );
        ix.remove("u1");
        assert_eq!(ix.pods(), 0);
        assert!(ix.lookup(Some("c3"), Some("u1")).is_none());
    }

    #[test]
    fn namespace_selection_and_opt_out() {
        let flags = KubeFlags {
            k8s_node_name: Some("n1".into()),
            k8s_exclude_namespace: vec!["kube-*".into()],
            ..Default::default()
        };
        let s = KubeSettings::resolve(&flags, &KubeFile::default())
            .unwrap()
            .unwrap();
        assert_eq!(s.rejects(&pod("u", "default", &[])), None);
        assert_eq!(
            s.rejects(&pod("u", "kube-system", &[])),
            Some("namespace_excluded")
        );
        let mut p = (*pod("u", "default", &[])).clone();
        p.opted_out = true;
        assert_eq!(s.rejects(&p), Some("pod_opted_out"));
        let file = KubeFile {
            include_namespaces: vec!["team-*".into()],
            ..Default::default()
        };
        let s = KubeSettings::resolve(&flags, &file).unwrap().unwrap();
        assert_eq!(
            s.rejects(&pod("u", "default", &[])),
            Some("namespace_excluded")
        );
        assert_eq!(s.rejects(&pod("u", "team-a", &[])), None);
        assert!(
            KubeSettings::resolve(&KubeFlags::default(), &KubeFile::default())
                .unwrap()
                .is_none()
        );
    }
}
