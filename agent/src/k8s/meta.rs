//! A pod pruned to what labels need: identity, containers, owning
//! workload and the allowlisted labels and annotations.

use k8s_openapi::api::core::v1::Pod;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub node_name: String,
    /// (container id without the runtime prefix, container name), from
    /// containerStatuses and initContainerStatuses.
    pub containers: Vec<(String, String)>,
    /// Owning workload attributes, e.g. ("k8s.deployment.name", "web").
    pub workload: Vec<(&'static str, String)>,
    /// Allowlisted labels and annotations as attributes
    /// (k8s.pod.label.KEY, k8s.pod.annotation.KEY).
    pub extra: Vec<(String, String)>,
    /// The pod carries the opt-out annotation.
    pub opted_out: bool,
}

impl PodMeta {
    pub fn from_pod(pod: &Pod, labels: &[String], annotations: &[String]) -> Option<Self> {
        let m = &pod.metadata;
        let uid = m.uid.clone()?;
        let status = pod.status.as_ref();
        let containers = status
            .into_iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
                    .chain(s.ephemeral_container_statuses.iter().flatten())
            })
            .filter_map(|c| Some((strip_runtime(c.container_id.as_deref()?)?, c.name.clone())))
            .collect();
        let pod_labels = m.labels.as_ref();
        let pod_annotations = m.annotations.as_ref();
        let mut extra = Vec::new();
        for k in labels {
            if let Some(v) = pod_labels.and_then(|l| l.get(k)) {
                extra.push((format!("k8s.pod.label.{k}"), v.clone()));
            }
        }
        for k in annotations {
            if let Some(v) = pod_annotations.and_then(|a| a.get(k)) {
                extra.push((format!("k8s.pod.annotation.{k}"), v.clone()));
            }
        }
        let opted_out = pod_annotations
            .and_then(|a| a.get(super::OPT_OUT_ANNOTATION))
            .is_some_and(|v| v == "true");
        let hash = pod_labels
            .and_then(|l| l.get("pod-template-hash"))
            .map(String::as_str);
        let workload = m
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| workload(&o.kind, &o.name, hash))
            .unwrap_or_default();
        Some(PodMeta {
            uid,
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            containers,
            workload,
            extra,
            opted_out,
        })
    }
}

/// "containerd://<id>", "cri-o://<id>", "docker://<id>" -> "<id>".
fn strip_runtime(id: &str) -> Option<String> {
    let (_, id) = id.split_once("://")?;
    (!id.is_empty()).then(|| id.to_owned())
}

/// The workload attributes for a pod's controlling owner. A ReplicaSet's
/// Deployment is its name without the pod-template-hash suffix; a Job's
/// CronJob is its name without the scheduled-time suffix (digits), as the
/// OpenTelemetry Collector's k8sattributes processor derives them.
fn workload(kind: &str, name: &str, template_hash: Option<&str>) -> Vec<(&'static str, String)> {
    let strip = |suffix_ok: &dyn Fn(&str) -> bool| {
        name.rsplit_once('-')
            .filter(|(base, suffix)| !base.is_empty() && suffix_ok(suffix))
            .map(|(base, _)| base.to_owned())
    };
    match kind {
        "ReplicaSet" => {
            let mut w = vec![("k8s.replicaset.name", name.to_owned())];
            let deployment = match template_hash {
                Some(h) => strip(&|s| s == h),
                None => strip(&|s| s.len() >= 5 && s.chars().all(|c| c.is_ascii_alphanumeric())),
            };
            if let Some(d) = deployment {
                w.push(("k8s.deployment.name", d));
            }
            w
        }
        "StatefulSet" => vec![("k8s.statefulset.name", name.to_owned())],
        "DaemonSet" => vec![("k8s.daemonset.name", name.to_owned())],
        "Job" => {
            let mut w = vec![("k8s.job.name", name.to_owned())];
            if let Some(c) = strip(&|s| s.len() >= 8 && s.chars().all(|c| c.is_ascii_digit())) {
                w.push(("k8s.cronjob.name", c));
            }
            w
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_from_owners() {
        assert_eq!(
            workload("ReplicaSet", "web-5d8f9c7b6", Some("5d8f9c7b6")),
            [
                ("k8s.replicaset.name", "web-5d8f9c7b6".into()),
                ("k8s.deployment.name", "web".into())
            ]
        );
        assert_eq!(
            workload("ReplicaSet", "my-app-7c9d8", None)[1],
            ("k8s.deployment.name", "my-app".into())
        );
        // A bare ReplicaSet whose hash label does not match: no deployment.
        assert_eq!(workload("ReplicaSet", "cache", Some("abc")).len(), 1);
        assert_eq!(
            workload("Job", "backup-28930560", None),
            [
                ("k8s.job.name", "backup-28930560".into()),
                ("k8s.cronjob.name", "backup".into())
            ]
        );
        assert_eq!(workload("Job", "migrate", None).len(), 1);
        assert_eq!(
            workload("StatefulSet", "db", None),
            [("k8s.statefulset.name", "db".into())]
        );
        assert_eq!(
            workload("DaemonSet", "agent", None),
            [("k8s.daemonset.name", "agent".into())]
        );
        assert!(workload("Node", "n1", None).is_empty());
    }

    #[test]
    fn pod_is_pruned_with_runtime_prefixes_stripped() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-5d8f9c7b6-abcde", "namespace": "shop", "uid": "u-1",
                "labels": {"app": "web", "pod-template-hash": "5d8f9c7b6", "secret": "x"},
                "annotations": {"team": "a", "gmon-agent.io/exclude": "true"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-5d8f9c7b6", "uid": "rs", "controller": true}]
            },
            "spec": {"nodeName": "n1", "containers": [{"name": "app"}]},
            "status": {
                "containerStatuses": [
                    {"name": "app", "containerID": "containerd://aaa", "image": "", "imageID": "", "ready": true, "restartCount": 0},
                    {"name": "side", "containerID": "cri-o://bbb", "image": "", "imageID": "", "ready": true, "restartCount": 0},
                    {"name": "waiting", "image": "", "imageID": "", "ready": false, "restartCount": 0}
                ],
                "initContainerStatuses": [
                    {"name": "init", "containerID": "docker://ccc", "image": "", "imageID": "", "ready": false, "restartCount": 0}
                ]
            }
        }))
        .unwrap();
        let m =
            PodMeta::from_pod(&pod, &["app".into(), "absent".into()], &["team".into()]).unwrap();
        assert_eq!(
            m.containers,
            [
                ("aaa".into(), "app".into()),
                ("bbb".into(), "side".into()),
                ("ccc".into(), "init".into())
            ]
        );
        assert_eq!(m.workload[1], ("k8s.deployment.name", "web".into()));
        assert_eq!(
            m.extra,
            [
                ("k8s.pod.label.app".into(), "web".into()),
                ("k8s.pod.annotation.team".into(), "a".into())
            ]
        );
        assert!(m.opted_out);
        assert_eq!((m.node_name.as_str(), m.namespace.as_str()), ("n1", "shop"));
    }
}
