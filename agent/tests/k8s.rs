//! Kubernetes pod metadata end to end: a real API server (the k8s.io
//! apiserver library on etcd) started after the agent, pods whose
//! containers run under Docker in kubepods cgroups, and the series in
//! VictoriaMetrics (through the collector) carrying exactly the right k8s
//! attributes, with exact counts. Then the faults: the API server
//! restarted, a container restarted with a new id.

use e2e::{
    Proc,
    docker::{Container, container, host_pid, image, require_docker},
    free_port, http_get,
    kube::Cluster,
    otel::{Collector, scrape_value, victoria, vm_series, vm_wait_sum},
    require_root, wait_for,
};
use serde_json::json;
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    process::{ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

const NODE: &str = "node-a";

/// The agent in node mode on NODE, its debug log collected.
struct Agent {
    _proc: Proc,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    fn start(cluster: &Cluster, collector: &Collector) -> Agent {
        let port = free_port();
        let mut proc = Proc::spawn(
            Command::new(env!("CARGO_BIN_EXE_gmon-agent"))
                .args(["--metrics", &port.to_string(), "--level", "WARN"])
                .args(["--include", "/app", "--scope", "containers"])
                .args([
                    "--otlp-endpoint",
                    &format!("http://127.0.0.1:{}", collector.http_port),
                ])
                .args(["--otlp-interval", "300ms"])
                .args(["--k8s-pod-label", "app", "--k8s-pod-annotation", "team"])
                .args(["--k8s-exclude-namespace", "kube-*"])
                .env("NODE_NAME", NODE)
                .env("KUBECONFIG", &cluster.kubeconfig)
                .env("OTEL_SERVICE_NAME", "gmon-agent-k8s")
                .env("GMON_AGENT_LOG", "gmon_agent=debug")
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        let log = Arc::new(Mutex::new(Vec::new()));
        let (all, err) = (log.clone(), proc.child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                all.lock().unwrap().push(l);
            }
        });
        let agent = Agent {
            _proc: proc,
            port,
            log,
        };
        agent.wait_log(|l| l.contains("initial scan done"), "initial scan");
        agent
    }

    fn wait_log(&self, f: impl Fn(&str) -> bool, what: &str) {
        let ok = wait_for(Duration::from_secs(20), || {
            self.log.lock().unwrap().iter().any(|l| f(l)).then_some(())
        });
        assert!(
            ok.is_some(),
            "agent never logged {what}:\n{}",
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        let l = self.log.lock().unwrap();
        l[l.len().saturating_sub(60)..].join("\n")
    }

    fn metric(&self, prefix: &str) -> f64 {
        scrape_value(self.port, prefix).unwrap_or(0.0)
    }

    fn wait_metric(&self, prefix: &str, ok: impl Fn(f64) -> bool) {
        let r = wait_for(Duration::from_secs(30), || {
            ok(self.metric(prefix)).then_some(())
        });
        assert!(
            r.is_some(),
            "{prefix} = {}:\n{}",
            self.metric(prefix),
            self.log_text()
        );
    }

    /// Waits until the process in container `id` is labelled with its
    /// pod's container `name` (when found, or later).
    fn wait_labelled(&self, id: &str, name: &str) {
        let pid = host_pid(id);
        self.wait_log(
            |l| {
                (l.contains("process labelled") || l.contains("process probed"))
                    && l.contains(&format!("pid={pid} "))
                    && l.contains(&format!("container={name}"))
            },
            &format!("pid {pid} labelled as {name}"),
        );
    }
}

/// Starts a waiting spawner's goroutines: 4 sites x `rounds`, counted from
/// its own output. Returns its stdin, to keep it alive.
fn run(c: &mut Container, rounds: usize) -> (ChildStdin, f64) {
    let mut stdin = c.proc.stdin();
    writeln!(stdin).unwrap();
    let mut n = 0.0;
    for l in c.proc.stdout_lines() {
        let l = l.unwrap();
        if l.starts_with("done") {
            break;
        }
        if l.contains("site=") {
            n += 1.0;
        }
    }
    assert_eq!(n, 4.0 * rounds as f64);
    (stdin, n)
}

#[test]
fn series_carry_their_pods_attributes_through_api_restarts_and_container_restarts() {
    if !require_root("Kubernetes test") || !require_docker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (spawner, newer) = (image("spawner"), image("spawner-go1.24"));
    let vm_port = free_port();
    let _vm = victoria(vm_port, &dir.path().join("vm"));
    let collector = Collector::start(dir.path(), vm_port, None);
    let mut cluster = Cluster::new(dir.path());

    // The API server is not up yet: the agent runs anyway.
    let agent = Agent::start(&cluster, &collector);
    // Through the kubeconfig, over HTTPS with the cluster's CA.
    agent.wait_log(
        |l| l.contains("watching this node's pods") && l.contains("cluster=https://127.0.0.1"),
        "the watch over HTTPS",
    );
    agent.wait_metric("gmon_agent_k8s_watch_errors_total", |n| n >= 1.0);
    assert_eq!(agent.metric("gmon_agent_k8s_synced"), 0.0);

    cluster.start_api();
    for ns in ["shop", "batch", "kube-system"] {
        cluster.namespace(ns);
    }
    for n in [NODE, "node-b"] {
        cluster.node(n);
    }
    let web_uid = cluster.pod(
        "shop",
        json!({"name": "web-5d8f9c7b6-q2x4z", "labels": {"app": "web", "pod-template-hash": "5d8f9c7b6"},
               "annotations": {"team": "checkout"},
               "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f9c7b6",
                                    "uid": "7e0c5a52-0000-4000-8000-000000000001", "controller": true}]}),
        NODE,
        &["app", "helper"],
    );
    let worker_uid = cluster.pod(
        "batch",
        json!({"name": "worker", "labels": {"app": "worker"}}),
        NODE,
        &["work"],
    );
    let private_uid = cluster.pod(
        "batch",
        json!({"name": "private", "annotations": {"gmon-agent.io/exclude": "true"}}),
        NODE,
        &["work"],
    );
    // A pod in an excluded namespace.
    let dns_uid = cluster.pod("kube-system", json!({"name": "dns"}), NODE, &["dns"]);
    // Another node's pod: never in this agent's index.
    cluster.pod(
        "shop",
        json!({"name": "elsewhere", "labels": {"app": "web"}}),
        "node-b",
        &["app"],
    );
    agent.wait_metric("gmon_agent_k8s_synced", |n| n == 1.0);
    agent.wait_metric("gmon_agent_k8s_pods", |n| n == 4.0);

    // A spawner container in a pod's cgroup, its id file named after it.
    let pod_container = |image: &str, uid: &str, name: &str, rounds: &str| {
        container(
            image,
            uid,
            &dir.path().join(format!("{name}.cid")),
            &[rounds],
        )
    };
    // Play kubelet: containers in the pods' cgroups, then their ids in
    // the pods' status. The helper's id is written after its process is
    // found, so it is labelled by pod first and re-resolved later.
    let mut app = pod_container(&spawner, &web_uid, "app", "-rounds=10");
    let mut helper = pod_container(&newer, &web_uid, "helper", "-rounds=10");
    let mut work = pod_container(&spawner, &worker_uid, "work", "-rounds=10");
    let mut private = pod_container(&spawner, &private_uid, "private", "-rounds=10");
    cluster.set_running("shop", "web-5d8f9c7b6-q2x4z", &[("app", &app.id, 0)]);
    agent.wait_labelled(&app.id, "app");
    let helper_pid = host_pid(&helper.id);
    agent.wait_log(
        |l| l.contains("process probed") && l.contains(&format!("pid={helper_pid} ")),
        "the helper probed before its id is known",
    );
    cluster.set_running(
        "shop",
        "web-5d8f9c7b6-q2x4z",
        &[("app", &app.id, 0), ("helper", &helper.id, 0)],
    );
    cluster.set_running("batch", "worker", &[("work", &work.id, 0)]);
    cluster.set_running("batch", "private", &[("work", &private.id, 0)]);
    agent.wait_labelled(&helper.id, "helper");
    agent.wait_labelled(&work.id, "work");
    agent.wait_metric(
        "gmon_agent_processes_skipped_total{reason=\"pod_opted_out\"}",
        |n| n >= 1.0,
    );
    let _dns = pod_container(&spawner, &dns_uid, "dns", "-rounds=1");
    agent.wait_metric(
        "gmon_agent_processes_skipped_total{reason=\"namespace_excluded\"}",
        |n| n >= 1.0,
    );

    let mut keep = Vec::new();
    let mut want: HashMap<&str, f64> = HashMap::new();
    for (name, c) in [
        ("app", &mut app),
        ("helper", &mut helper),
        ("work", &mut work),
        ("private", &mut private),
    ] {
        let (stdin, n) = run(c, 10);
        keep.push(stdin);
        want.insert(name, n);
    }
    // The opted-out pod's goroutines fired its binary's probes (shared
    // with the others) and were dropped on purpose.
    agent.wait_metric("gmon_agent_ignored_process_events_total", |n| n >= 40.0);

    let sel = |extra: &str| {
        format!(
            "{{__name__=\"go.goroutine.created\",service.name=\"gmon-agent-k8s\",go.goroutine.start=~\"main[.].*\",{extra}}}"
        )
    };
    let web = format!(
        "k8s.node.name=\"{NODE}\",k8s.namespace.name=\"shop\",k8s.pod.name=\"web-5d8f9c7b6-q2x4z\",k8s.pod.uid=\"{web_uid}\",\
         k8s.replicaset.name=\"web-5d8f9c7b6\",k8s.deployment.name=\"web\",k8s.pod.label.app=\"web\",k8s.pod.annotation.team=\"checkout\""
    );
    for (name, c) in [("app", &app), ("helper", &helper)] {
        let s = sel(&format!(
            "{web},k8s.container.name=\"{name}\",container.id=\"{}\"",
            c.id
        ));
        let got = vm_wait_sum(vm_port, &s, want[name], Duration::from_secs(15));
        assert_eq!(
            got,
            want[name],
            "{name}: {s}\n{:#?}",
            vm_series(
                vm_port,
                "{__name__=\"go.goroutine.created\",k8s.pod.name=\"web-5d8f9c7b6-q2x4z\"}"
            )
        );
    }
    let worker = format!(
        "k8s.node.name=\"{NODE}\",k8s.namespace.name=\"batch\",k8s.pod.name=\"worker\",k8s.pod.uid=\"{worker_uid}\",\
         k8s.container.name=\"work\",k8s.pod.label.app=\"worker\",container.id=\"{}\"",
        work.id
    );
    assert_eq!(
        vm_wait_sum(
            vm_port,
            &sel(&worker),
            want["work"],
            Duration::from_secs(15)
        ),
        want["work"]
    );
    // Exactly those attributes: no workload on the bare pod, nothing from
    // the opted-out pod or the other node's.
    for s in vm_series(vm_port, &sel("k8s.pod.name=\"worker\"")) {
        assert!(
            !s.contains_key("k8s.deployment.name") && !s.contains_key("k8s.replicaset.name"),
            "{s:?}"
        );
    }
    assert!(vm_series(vm_port, &sel("k8s.pod.name=~\"private|elsewhere|dns\"")).is_empty());
    assert!(vm_series(vm_port, &sel(&format!("k8s.pod.uid=\"{private_uid}\""))).is_empty());
    // /metrics carries the same labels.
    let (_, body) = http_get(agent.port, "/metrics").unwrap();
    assert!(
        body.lines()
            .any(|l| l.starts_with("gmon_goroutine_creation{")
                && l.contains("k8s_pod_name=\"web-5d8f9c7b6-q2x4z\"")
                && l.contains("k8s_container_name=\"helper\"")
                && l.contains("k8s_deployment_name=\"web\"")
                && l.contains("k8s_pod_annotation_team=\"checkout\"")),
        "no k8s labels on /metrics"
    );

    // The opted-out pod drops its annotation: its process is probed now.
    cluster.patch_pod(
        "batch",
        "private",
        json!({"metadata": {"annotations": {"gmon-agent.io/exclude": null}}}),
    );
    agent.wait_labelled(&private.id, "work");

    // Faults: the API server restarts, with every resourceVersion the
    // agent held expired meanwhile (etcd compacted); the worker's container
    // restarts with a new id, which only the recovered watch can tell.
    let errors = agent.metric("gmon_agent_k8s_watch_errors_total");
    let relists = agent.metric("gmon_agent_k8s_relists_total");
    cluster.stop_api();
    drop(keep);
    let _ = work.proc.child.wait();
    let mut work2 = pod_container(&spawner, &worker_uid, "work2", "-rounds=5");
    agent.wait_metric("gmon_agent_k8s_watch_errors_total", |n| n > errors);
    cluster.expire_resource_versions();
    cluster.start_api();
    agent.wait_metric("gmon_agent_k8s_relists_total", |n| n > relists);
    cluster.set_running("batch", "worker", &[("work", &work2.id, 1)]);
    agent.wait_labelled(&work2.id, "work");
    let (_stdin, n) = run(&mut work2, 5);
    let worker2 = worker.replace(&work.id, &work2.id);
    assert_eq!(
        vm_wait_sum(vm_port, &sel(&worker2), n, Duration::from_secs(15)),
        n,
        "after the restarts\n{}",
        agent.log_text()
    );
    eprintln!(
        "k8s: pods indexed {}, watch errors {}, relists {}",
        agent.metric("gmon_agent_k8s_pods"),
        agent.metric("gmon_agent_k8s_watch_errors_total"),
        agent.metric("gmon_agent_k8s_relists_total"),
    );
}

#[test]
fn in_cluster_service_account_configuration_is_used() {
    if !require_root("Kubernetes test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(dir.path());
    cluster.start_api();
    cluster.namespace("shop");
    cluster.pod("shop", json!({"name": "web"}), NODE, &["app"]);
    cluster.pod("shop", json!({"name": "far"}), "node-b", &["app"]);
    // What the kubelet gives a pod: the service account's files under
    // /var/run/secrets and KUBERNETES_SERVICE_HOST/PORT. A private mount
    // namespace with a tmpfs on /run stands in for the pod's filesystem.
    let ca = cluster.ca().display().to_string();
    let port = free_port();
    let script = format!(
        "mount -t tmpfs tmpfs /run && d=/run/secrets/kubernetes.io/serviceaccount && mkdir -p $d && \
         cp {ca} $d/ca.crt && printf test-token > $d/token && printf shop > $d/namespace && \
         exec {} --metrics {port} --include /nonexistent",
        env!("CARGO_BIN_EXE_gmon-agent")
    );
    let log = dir.path().join("agent.log");
    let _agent = Proc::spawn(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env_remove("KUBECONFIG")
            .env("HOME", dir.path())
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", cluster.tls_port.to_string())
            .env("NODE_NAME", NODE)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let synced = wait_for(Duration::from_secs(20), || {
        (scrape_value(port, "gmon_agent_k8s_pods")? == 1.0
            && scrape_value(port, "gmon_agent_k8s_synced")? == 1.0)
            .then_some(())
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(synced.is_some(), "no in-cluster sync:\n{text}");
    assert!(
        text.contains(&format!("cluster=https://127.0.0.1:{}/", cluster.tls_port)),
        "{text}"
    );
}
