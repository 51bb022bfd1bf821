//! A Kubernetes control plane for the tests: etcd and kube-testapi (the
//! real k8s.io/apiserver library, built by scripts/build-test-servers.sh)
//! serving core/v1 pods, nodes and namespaces: over HTTPS to clients (the
//! kubeconfig names a test CA), and over plain HTTP to the tests, which
//! play kubelet: they create pods and write pods/status themselves.

use crate::{Proc, free_port, http_get, http_request, wait_for};
use serde_json::{Value, json};
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

pub const ETCD: &str = "/var/cache/gmon-agent/servers/etcd";
pub const APISERVER: &str = "/var/cache/gmon-agent/servers/kube-testapi";

pub struct Cluster {
    etcd: Proc,
    api: Option<Proc>,
    /// Plain HTTP, for the tests themselves.
    pub port: u16,
    /// HTTPS, for clients through the kubeconfig.
    pub tls_port: u16,
    tls: crate::otel::TestCerts,
    etcd_port: u16,
    etcd_url: String,
    /// A kubeconfig for clients (gmon-agent reads it through KUBECONFIG).
    pub kubeconfig: PathBuf,
    log: PathBuf,
}

impl Cluster {
    /// Starts etcd with its data in `dir` and writes the kubeconfig; the
    /// API server itself starts with `start_api` (tests start it late).
    pub fn new(dir: &Path) -> Cluster {
        for bin in [ETCD, APISERVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: scripts/build-test-servers.sh (run by the bootstrap) builds it"
            );
        }
        let (client, peer, port, tls_port) = (free_port(), free_port(), free_port(), free_port());
        let certs_dir = dir.join("tls");
        std::fs::create_dir_all(&certs_dir).unwrap();
        let tls = crate::otel::test_certificates(&certs_dir);
        let etcd_url = format!("http://127.0.0.1:{client}");
        let log = dir.join("control-plane.log");
        let out = std::fs::File::create(&log).unwrap();
        let etcd = Proc::spawn(
            Command::new(ETCD)
                .arg(format!("--data-dir={}", dir.join("etcd").display()))
                .arg(format!("--listen-client-urls={etcd_url}"))
                .arg(format!("--advertise-client-urls={etcd_url}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
                .stdout(Stdio::null())
                .stderr(out),
        );
        wait_for(Duration::from_secs(10), || http_get(client, "/health").ok()).expect("etcd up");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters: [{{name: test, cluster: {{server: \"https://127.0.0.1:{tls_port}\", \
                 certificate-authority: \"{}\"}}}}]\n\
                 users: [{{name: test, user: {{}}}}]\n\
                 contexts: [{{name: test, context: {{cluster: test, user: test}}}}]\n\
                 current-context: test\n",
                tls.ca.display()
            ),
        )
        .unwrap();
        Cluster {
            etcd,
            api: None,
            port,
            tls_port,
            tls,
            etcd_port: client,
            etcd_url,
            kubeconfig,
            log,
        }
    }

    pub fn start_api(&mut self) {
        let out = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .unwrap();
        self.api = Some(Proc::spawn(
            Command::new(APISERVER)
                .arg(format!("-listen=127.0.0.1:{}", self.tls_port))
                .arg(format!("-listen-http=127.0.0.1:{}", self.port))
                .arg(format!("-tls-cert-file={}", self.tls.server.0.display()))
                .arg(format!("-tls-key-file={}", self.tls.server.1.display()))
                .arg(format!("-etcd={}", self.etcd_url))
                .stdout(Stdio::null())
                .stderr(out),
        ));
        let ready = wait_for(Duration::from_secs(20), || {
            let (s, _) = http_get(self.port, "/api/v1/namespaces").ok()?;
            (s == 200).then_some(())
        });
        assert!(ready.is_some(), "API server up; log:\n{}", self.log_text());
    }

    pub fn stop_api(&mut self) {
        if let Some(mut api) = self.api.take() {
            api.terminate(Duration::from_secs(10))
                .expect("API server stops");
        }
    }

    /// Writes a key and compacts etcd's history up to it (through etcd's
    /// JSON gateway), so every resourceVersion a client held before is
    /// expired: a watch resumed from one gets 410 Gone.
    pub fn expire_resource_versions(&self) {
        let put = r#"{"key": "Z21vbi10ZXN0L2J1bXA=", "value": "MQ=="}"#;
        let (status, resp) = http_request(
            self.etcd_port,
            "POST",
            "/v3/kv/put",
            Some(("application/json", put)),
        )
        .unwrap();
        assert_eq!(status, 200, "{resp}");
        let v: Value = serde_json::from_str(&resp).unwrap();
        let rev = v["header"]["revision"].as_str().unwrap().to_owned();
        let compact = format!(r#"{{"revision": "{rev}", "physical": true}}"#);
        let (status, resp) = http_request(
            self.etcd_port,
            "POST",
            "/v3/kv/compaction",
            Some(("application/json", &compact)),
        )
        .unwrap();
        assert_eq!(status, 200, "{resp}");
    }

    /// The CA that signed the API server's certificate.
    pub fn ca(&self) -> &Path {
        &self.tls.ca
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn call(&self, method: &str, path: &str, ty: &str, body: &Value) -> Value {
        let (status, resp) =
            http_request(self.port, method, path, Some((ty, &body.to_string()))).unwrap();
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {resp}"
        );
        serde_json::from_str(&resp).unwrap()
    }

    /// Creates an object under `path` (e.g. /api/v1/namespaces); returns it.
    pub fn create(&self, path: &str, object: Value) -> Value {
        self.call("POST", path, "application/json", &object)
    }

    pub fn namespace(&self, name: &str) {
        self.create(
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        );
    }

    pub fn node(&self, name: &str) {
        self.create(
            "/api/v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}),
        );
    }

    /// Creates a pod with `metadata` (name, labels, ...) on `node` with
    /// containers named `containers`; returns its UID.
    pub fn pod(&self, ns: &str, metadata: Value, node: &str, containers: &[&str]) -> String {
        let containers: Vec<Value> = containers
            .iter()
            .map(|c| json!({"name": c, "image": "scratch"}))
            .collect();
        let pod = self.create(
            &format!("/api/v1/namespaces/{ns}/pods"),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
                   "spec": {"nodeName": node, "containers": containers}}),
        );
        pod["metadata"]["uid"].as_str().unwrap().to_owned()
    }

    /// Merge-patches a pod (labels, annotations, ...).
    pub fn patch_pod(&self, ns: &str, pod: &str, patch: Value) {
        self.call(
            "PATCH",
            &format!("/api/v1/namespaces/{ns}/pods/{pod}"),
            "application/merge-patch+json",
            &patch,
        );
    }

    /// Plays kubelet: the pod is Running with these (name, Docker
    /// container id, restart count) statuses.
    pub fn set_running(&self, ns: &str, pod: &str, containers: &[(&str, &str, u32)]) {
        let statuses: Vec<Value> = containers
            .iter()
            .map(|(name, id, restarts)| {
                json!({"name": name, "containerID": format!("docker://{id}"), "image": "scratch",
                       "imageID": "", "ready": true, "restartCount": restarts,
                       "state": {"running": {}}})
            })
            .collect();
        self.call(
            "PATCH",
            &format!("/api/v1/namespaces/{ns}/pods/{pod}/status"),
            "application/merge-patch+json",
            &json!({"status": {"phase": "Running", "containerStatuses": statuses}}),
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut api) = self.api.take() {
            let _ = api.terminate(Duration::from_secs(10));
        }
        let _ = self.etcd.terminate(Duration::from_secs(10));
    }
}
