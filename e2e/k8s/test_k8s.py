#!/usr/bin/env python3
"""gmon-agent installed with its Helm chart on a real Kubernetes node.

The assertions are shared by the two ways this runs, so they cannot drift:
  scripts/test-k8s.sh   the offline one-node cluster (scripts/cluster.sh)
  e2e/kind/run.sh       a kind cluster, for machines with a registry
The driver sets:
  KUBECONFIG            the cluster (kubectl and helm on PATH)
  GMON_K8S_LOAD         command that loads an image archive into the node
                        (the archive's path is appended)
  GMON_K8S_HOST_ADDR    an address of this machine that pods can reach; the
                        test's collector listens there
  GMON_K8S_AGENT_IMAGE  the agent's image archive (scripts/image.sh)
  GMON_K8S_AGENT_REF    its name:tag
It starts an OpenTelemetry Collector and VictoriaMetrics (built and fetched
by the bootstrap), builds workload images FROM scratch from the Go
fixtures, installs the chart, and checks what the agent reports against
what the workloads say they did. Prints "N passed, N failed".
"""
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/gmon-agent")
COLLECTOR = CACHE / "servers/otelcol-gmon"
VM = CACHE / "vm/usr/bin/victoria-metrics"
FIXTURES = Path(os.environ.get("GMON_FIXTURES", ROOT / "target/fixtures"))
CHART = ROOT / "charts/gmon-agent"
AGENT_NS = "gmon-system"
RELEASE = "gmon-agent"
CAPS = ["BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"]
CAP_BITS = {"BPF": 39, "PERFMON": 38, "SYS_ADMIN": 21, "SYS_PTRACE": 19, "DAC_READ_SEARCH": 2}
AGENT_PROGS = {"newproc1_ret", "goexit1", "proc_exec", "proc_exit"}
SITES = ["shortWorker", "longWorker", "nestedParent", "nestedChild"]
TIMEOUT = 120


# --- a small runner ---------------------------------------------------------

class Failed(Exception):
    pass


results = []


def case(name):
    """Runs the decorated function now as one test; records pass or fail."""
    def run(fn):
        start = time.time()
        try:
            fn()
            results.append((name, True))
            print(f"ok   {name} ({time.time() - start:.1f} s)", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            results.append((name, False))
            print(f"FAIL {name} ({time.time() - start:.1f} s): {e}", flush=True)
            if not isinstance(e, Failed):
                traceback.print_exc()
        return fn
    return run


def need(cond, msg):
    if not cond:
        raise Failed(msg)


def wait(what, fn, timeout=TIMEOUT, every=1.0):
    """Polls fn until it returns a truthy value; returns it."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            v = fn()
            if v:
                return v
            last = v
        except (subprocess.CalledProcessError, OSError, ValueError, KeyError) as e:
            last = e
        time.sleep(every)
    raise Failed(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


# --- the cluster ----------------------------------------------------------------

def sh(*args, input=None, check=True, timeout=300):
    p = subprocess.run([str(a) for a in args], input=input, capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise Failed(f"{shlex.join(map(str, args))} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    return p


def kubectl(*args, **kw):
    return sh("kubectl", *args, **kw).stdout


def kjson(*args):
    return json.loads(kubectl(*args, "-o", "json"))


def raw(path):
    return kubectl("get", "--raw", path)


def pod_get(ns, pod, port, path):
    """GET through the API server's pod proxy: works wherever kubectl does."""
    return raw(f"/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy{path}")


def apply(manifest):
    kubectl("apply", "-f", "-", input=json.dumps(manifest))


def pods(ns, selector=None):
    args = ["get", "pods", "-n", ns] + (["-l", selector] if selector else [])
    return kjson(*args)["items"]


def pod_diagnosis(ns):
    """What the pods of ns are doing, and what the kubelet and the
    controller manager last said about them: for a failure message."""
    out = []
    names = []
    for p in pods(ns):
        md, st = p["metadata"], p.get("status", {})
        names.append(md["name"])
        states = {c["name"]: c.get("state") for c in st.get("containerStatuses", [])}
        out.append(f"pod {md['name']}: phase {st.get('phase')}, deletionTimestamp "
                   f"{md.get('deletionTimestamp')}, finalizers {md.get('finalizers')}, "
                   f"owners {[o['kind'] for o in md.get('ownerReferences', [])]}, containers {states}")
    logs = os.environ.get("GMON_K8S_LOGS", "/var/cache/gmon-agent/cluster/run/logs")
    for log in ("kubelet.log", "kube-controller-manager.log"):
        try:
            lines = Path(logs, log).read_text(errors="replace").splitlines()
        except OSError:
            continue
        hits = [l for l in lines if any(n in l for n in names) or "garbage" in l.lower()]
        out.append(f"{log} (last {min(12, len(hits))} of {len(hits)} lines about them):")
        out += ["  " + l[:300] for l in hits[-12:]]
    return "\n     ".join(out)


def ready(pod):
    st = pod.get("status", {})
    return st.get("phase") == "Running" and all(
        c.get("ready") for c in st.get("containerStatuses", [{"ready": False}]))


def wait_pod(ns, selector=None, name=None, exclude_uid=None):
    def one():
        for p in pods(ns, selector):
            if name and p["metadata"]["name"] != name:
                continue
            if p["metadata"]["uid"] == exclude_uid or p["metadata"].get("deletionTimestamp"):
                continue
            if ready(p):
                return p
        return None
    return wait(f"pod {ns}/{name or selector} ready", one)


def helm(*args):
    return sh("helm", *args, timeout=400).stdout


def load_image(archive):
    cmd = shlex.split(os.environ["GMON_K8S_LOAD"]) + [str(archive)]
    sh(*cmd)


# --- the test's own servers -----------------------------------------------------

def free_port(addr):
    s = socket.socket()
    s.bind((addr, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Servers:
    """VictoriaMetrics on loopback, and a collector on the host address
    pods can reach, exporting to it."""

    def __init__(self, work, host):
        self.procs = []
        self.vm_port = free_port("127.0.0.1")
        self.grpc_port = free_port(host)
        (work / "vm").mkdir()
        self.spawn([VM, f"-storageDataPath={work / 'vm'}", f"-httpListenAddr=127.0.0.1:{self.vm_port}"],
                   work / "vm.log")
        wait("VictoriaMetrics", lambda: self.vm("/health"), timeout=20, every=0.2)
        cfg = work / "otelcol.yaml"
        cfg.write_text(f"""receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {host}:{self.grpc_port}
processors:
  batch:
    timeout: 200ms
exporters:
  otlp_http/vm:
    metrics_endpoint: http://127.0.0.1:{self.vm_port}/opentelemetry/v1/metrics
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    metrics:
      receivers: [otlp]
      processors: [batch]
      exporters: [otlp_http/vm]
""")
        self.collector_log = work / "otelcol.log"
        self.spawn([COLLECTOR, f"--config={cfg}"], self.collector_log)

        def listening():
            with socket.create_connection((host, self.grpc_port), timeout=1):
                return True
        wait("collector", listening, timeout=20, every=0.2)
        self.endpoint = f"http://{host}:{self.grpc_port}"

    def spawn(self, argv, log):
        f = open(log, "w")
        self.procs.append(subprocess.Popen([str(a) for a in argv], stdout=f, stderr=f))

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

    def vm(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.vm_port}{path}", timeout=10) as r:
            return r.read().decode()

    def series(self, selector):
        """[(labels, last value)] of every series matching a selector."""
        self.vm("/internal/force_flush")
        body = self.vm("/api/v1/export?" + urllib.parse.urlencode({"match[]": selector}))
        out = []
        for line in body.splitlines():
            v = json.loads(line)
            out.append((v["metric"], v["values"][-1]))
        return out

    def total(self, selector):
        return sum(v for _, v in self.series(selector))


# --- workloads ------------------------------------------------------------------

def mkimage(work, ref, fixture):
    """A FROM scratch image of one fixture; a dynamically linked one (PIE,
    cgo) gets its loader and libraries, as real images carry them."""
    out = work / (re.sub(r"[^a-z0-9.]+", "-", ref) + ".tar")
    binary = FIXTURES / fixture
    files = [f"{binary}=/app"]
    if "program interpreter" in sh("readelf", "-l", binary).stdout:
        files.append(f"{os.path.realpath('/lib64/ld-linux-x86-64.so.2')}=/lib64/ld-linux-x86-64.so.2")
        for m in re.finditer(r"=> (/\S+)", sh("ldd", binary, check=False).stdout):
            files.append(f"{os.path.realpath(m.group(1))}={m.group(1)}")
    sh(sys.executable, ROOT / "e2e/k8s/mkimage.py", "--ref", ref, "--out", out,
       "--entrypoint", '["/app"]', *files)
    return out


def container(name, image, port):
    return {
        "name": name, "image": image, "imagePullPolicy": "Never",
        "args": ["-http", f":{port}"],
        "ports": [{"containerPort": port, "name": f"http-{port}"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 1},
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
    }


def pod_spec(*containers):
    return {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": False,
            "containers": list(containers)}


def spawn(ns, pod, port, rounds):
    """Runs rounds in a workload; the per-site counts it reports itself."""
    out = pod_get(ns, pod, port, f"/spawn?rounds={rounds}")
    counts = {}
    for line in out.splitlines():
        m = re.match(r"goroutine site=(\w+) goid=(\d+)", line)
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    need(f"done created={4 * rounds}" in out, f"{ns}/{pod}: {out[-300:]}")
    return counts


# --- the agent ------------------------------------------------------------------

PROM_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
PROM_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def prom(text):
    """[(name, labels, value)] from the Prometheus text format."""
    out = []
    for line in text.splitlines():
        m = PROM_LINE.match(line)
        if m:
            out.append((m.group(1), dict(PROM_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def agent_pod(exclude_uid=None):
    return wait_pod(AGENT_NS, selector=f"app.kubernetes.io/instance={RELEASE}", exclude_uid=exclude_uid)


def agent_metrics(pod):
    return prom(pod_get(AGENT_NS, pod["metadata"]["name"], 5500, "/metrics"))


def agent_log(pod):
    return kubectl("logs", "-n", AGENT_NS, pod["metadata"]["name"], check=False)


def metric_sum(samples, name, **labels):
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in labels.items()))


def host_pid_of(pod, container_name):
    """The host pid of a container's main process, found through /proc
    (this machine's kernel runs the node)."""
    cid = next(c["containerID"].split("://", 1)[1] for c in pod["status"]["containerStatuses"]
               if c["name"] == container_name)
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if cid in (p / "cgroup").read_text() and (p / "stat").read_text().split()[3] != p.name:
                # The container's first process: its parent is the shim, outside the cgroup.
                ppid = (p / "stat").read_text().rsplit(")", 1)[1].split()[1]
                if cid not in Path(f"/proc/{ppid}/cgroup").read_text():
                    return int(p.name)
        except OSError:
            continue
    raise Failed(f"no process of container {cid[:12]} on this machine")


def bpf_progs():
    """{id: name} of every loaded BPF program with one of the agent's names."""
    out = json.loads(sh("bpftool", "prog", "show", "--json").stdout or "[]")
    return {p["id"]: p.get("name") for p in out if p.get("name") in AGENT_PROGS}


def prog_ids_held_by(pid):
    """BPF program ids a process holds, from its fds (program and link fds
    both name a prog_id in fdinfo)."""
    ids = set()
    for f in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            for line in f.read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def bpf_links_to(prog_ids):
    out = json.loads(sh("bpftool", "link", "show", "--json").stdout or "[]")
    return [link for link in out if link.get("prog_id") in prog_ids]


def proc_status(pid):
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ":\t" in line)


# --- the test ---------------------------------------------------------------------

def main():
    for var in ("KUBECONFIG", "GMON_K8S_LOAD", "GMON_K8S_HOST_ADDR", "GMON_K8S_AGENT_IMAGE",
                "GMON_K8S_AGENT_REF"):
        if not os.environ.get(var):
            sys.exit(f"test_k8s: {var} is not set; run scripts/test-k8s.sh or e2e/kind/run.sh")
    host = os.environ["GMON_K8S_HOST_ADDR"]
    agent_ref = os.environ["GMON_K8S_AGENT_REF"]
    repo, tag = agent_ref.rsplit(":", 1)
    work = Path(tempfile.mkdtemp(prefix="gmon-k8s-"))
    servers = Servers(work, host)
    namespaces = ["gmon-a", "gmon-b", "gmon-nocap", AGENT_NS]
    progs_before = set(bpf_progs())
    state = {}
    try:
        run(work, servers, repo, tag, state, progs_before)
    finally:
        if state.get("installed"):
            sh("helm", "uninstall", RELEASE, "-n", AGENT_NS, check=False)
        for ns in namespaces:
            kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False)
        for ns in namespaces:
            kubectl("wait", "--for=delete", f"namespace/{ns}", "--timeout=90s", check=False)
        servers.stop()
    passed = sum(1 for _, ok in results if ok)
    print(f"k8s: {passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


def run(work, servers, repo, tag, state, progs_before):
    images = {}

    @case("images load into the node (agent from the Dockerfile, workloads FROM scratch)")
    def _():
        load_image(os.environ["GMON_K8S_AGENT_IMAGE"])
        for ref, fixture in [("localhost/gmon-test/spawner:go1.23", "spawner-http"),
                             ("localhost/gmon-test/spawner:go1.23-pie", "spawner-http-pie"),
                             ("localhost/gmon-test/spawner:go1.24-pie-stripped", "spawner-http-go1.24-pie-stripped"),
                             ("localhost/gmon-test/spawner:go1.26-pie-stripped", "spawner-http-go1.26-pie-stripped")]:
            load_image(mkimage(work, ref, fixture))
            images[fixture.replace("-http", "")] = ref

    for ns in ("gmon-a", "gmon-b", "gmon-nocap", AGENT_NS):
        kubectl("create", "namespace", ns, check=False)

    @case("agent without CAP_PERFMON exits with one line naming it and the securityContext field")
    def _():
        caps = [c for c in CAPS if c != "PERFMON"]
        helm("install", "nocap", CHART, "-n", "gmon-nocap", "--set", f"image.repository={repo}",
             "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
             "--set", "securityContext.capabilities.add={" + ",".join(caps) + "}")
        try:
            def crashed():
                for p in pods("gmon-nocap"):
                    for c in p["status"].get("containerStatuses", []):
                        t = c.get("state", {}).get("terminated") or c.get("lastState", {}).get("terminated")
                        if t:
                            return p, t
                return None
            p, term = wait("the capability-less agent to exit", crashed)
            logs = kubectl("logs", "-n", "gmon-nocap", p["metadata"]["name"], check=False) or \
                kubectl("logs", "-n", "gmon-nocap", p["metadata"]["name"], "--previous", check=False)
            lines = [line for line in logs.splitlines() if line.strip()]
            need(term.get("exitCode") == 1, f"exit code {term.get('exitCode')}")
            need(len(lines) == 1, f"expected one line, got: {logs!r}")
            need("CAP_PERFMON" in lines[0] and "securityContext.capabilities.add" in lines[0]
                 and "sudo" not in lines[0], lines[0])
            print(f"     {lines[0]}")
        finally:
            helm("uninstall", "nocap", "-n", "gmon-nocap")

    values = work / "values.yaml"
    values.write_text(json.dumps({
        "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
        "otlp": {"endpoint": servers.endpoint, "protocol": "grpc", "interval": "1s",
                 "resourceAttributes": {"k8s.cluster.name": "gmon-test"}},
        "kubernetes": {"podLabels": ["app"]},
        "extraEnv": [{"name": "GMON_AGENT_LOG", "value": "gmon_agent=debug"}],
    }))

    @case("helm install gmon-agent ./charts/gmon-agent: the DaemonSet becomes Ready")
    def _():
        helm("install", RELEASE, CHART, "-n", AGENT_NS, "-f", values, "--wait", "--timeout", "180s")
        state["installed"] = True
        # helm's --wait accepts a DaemonSet with maxUnavailable pods not ready.
        kubectl("rollout", "status", "-n", AGENT_NS, f"daemonset/{RELEASE}", "--timeout=180s")
        ds = kjson("get", "daemonset", "-n", AGENT_NS, RELEASE)
        st = ds["status"]
        need(st.get("numberReady") == st.get("desiredNumberScheduled") == 1, f"status {st}")
        state["agent"] = agent_pod()

    @case("the agent runs with exactly the chart's capabilities, not privileged")
    def _():
        pod = state["agent"]
        for c in pod["spec"]["containers"]:
            sc = c.get("securityContext", {})
            need(not sc.get("privileged"), f"{c['name']} is privileged")
            need(sc["capabilities"] == {"drop": ["ALL"], "add": CAPS}, f"capabilities {sc.get('capabilities')}")
            need(sc.get("readOnlyRootFilesystem") is True, "root filesystem is writable")
        need(pod["spec"].get("hostPID") is True, "hostPID is not set")
        pid = host_pid_of(pod, "gmon-agent")
        state["agent_pid"] = pid
        eff = int(proc_status(pid)["CapEff"].strip(), 16)
        want = sum(1 << b for b in CAP_BITS.values())
        need(eff == want, f"effective capabilities {eff:#x}, want {want:#x} ({' '.join(CAPS)})")

    # Workloads: a Deployment in one namespace; a two-container pod, a
    # StatefulSet and an opted-out pod in another.
    @case("workload pods run: Deployment, two-container pod, StatefulSet, opted-out pod")
    def _():
        apply({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "gmon-a"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": pod_spec(container("app", images["spawner"], 8080))}}})
        apply({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "multi", "namespace": "gmon-b", "labels": {"app": "multi"}},
               "spec": pod_spec(container("main", images["spawner-go1.24-pie-stripped"], 8080),
                                container("side", images["spawner-go1.26-pie-stripped"], 8081))})
        apply({"apiVersion": "apps/v1", "kind": "StatefulSet",
               "metadata": {"name": "db", "namespace": "gmon-b"},
               "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                        "template": {"metadata": {"labels": {"app": "db"}},
                                     "spec": pod_spec(container("db", images["spawner-pie"], 8080))}}})
        apply({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "optout", "namespace": "gmon-b", "labels": {"app": "optout"},
                            "annotations": {"gmon-agent.io/exclude": "true"}},
               "spec": pod_spec(container("app", images["spawner"], 8080))})
        state["web"] = wait_pod("gmon-a", selector="app=web")
        for name in ("multi", "db-0", "optout"):
            state[name] = wait_pod("gmon-b", name=name)

    def wait_labelled(pod_name, containers):
        """Until the agent logged each container's process as probed or
        labelled with its pod."""
        def seen():
            log = agent_log(state["agent"])
            return all(re.search(rf'(process probed|process labelled).*pod={re.escape(pod_name)}\b.*'
                                 rf'container={re.escape(c)}\b', log) for c in containers)
        wait(f"the agent to label {pod_name}", seen, timeout=60)

    want = {}  # (namespace, pod, container) -> per-site counts reported by the workload

    def prom_sites(samples, pod, c):
        """gmon's /metrics sites for the spawner's goroutines: the three go
        statements of spawnRound share their five outermost frames (the
        HTTP handler's), nestedChild's start in nestedParent."""
        sel = [(n, lb, v) for n, lb, v in samples if n == "gmon_goroutine_creation"
               and lb.get("k8s_pod_name") == pod and lb.get("k8s_container_name") == c]
        handler = sum(v for _, lb, v in sel if lb.get("stack_4") == "net/http.(*ServeMux).ServeHTTP")
        nested = sum(v for _, lb, v in sel if lb.get("stack_1") == "main.nestedParent")
        return handler, nested, sel

    def check_prom(pod_name, c, sites, agent=None):
        want_handler = sites["shortWorker"] + sites["longWorker"] + sites["nestedParent"]
        seen = []

        def exact():
            h, n, sel = prom_sites(agent_metrics(agent or state["agent"]), pod_name, c)
            seen[:] = sel
            return (h, n) == (want_handler, sites["nestedChild"])
        try:
            wait(f"{pod_name}/{c}: exact counts on /metrics", exact, timeout=30)
        except Failed:
            raise Failed(f"{pod_name}/{c}: want {want_handler} + {sites['nestedChild']}; series: "
                         f"{[(lb.get('stack_1'), lb.get('stack_4'), v) for _, lb, v in seen]}")

    @case("each workload's goroutines are counted exactly per site on the agent's /metrics")
    def _():
        plan = [("gmon-a", state["web"]["metadata"]["name"], "app", 8080, 3),
                ("gmon-b", "multi", "main", 8080, 4),
                ("gmon-b", "multi", "side", 8081, 5),
                ("gmon-b", "db-0", "db", 8080, 6),
                ("gmon-b", "optout", "app", 8080, 2)]
        for ns, pod, c, port, rounds in plan:
            if pod != "optout":
                wait_labelled(pod, [c])
            want[(ns, pod, c)] = spawn(ns, pod, port, rounds)
        for (ns, pod, c), sites in want.items():
            if pod != "optout":
                check_prom(pod, c, sites)

    def vm_sel(pod, c, start=None, **extra):
        lb = {"__name__": "go.goroutine.created", "k8s.pod.name": pod, "k8s.container.name": c,
              "k8s.cluster.name": "gmon-test", **extra}
        if start:
            lb["go.goroutine.start"] = f"main.{start}"
        return "{" + ",".join(f'{k}="{v}"' for k, v in lb.items()) + "}"

    def check_vm(ns, pod, c, sites, owner):
        for site, n in sites.items():
            creator = "main.startChild" if site == "nestedChild" else "main.spawnRound"
            sel = vm_sel(pod, c, site, **{"k8s.namespace.name": ns, "k8s.node.name": state["agent"]["spec"]["nodeName"],
                                          "go.goroutine.creator": creator, **owner})
            try:
                wait(f"{pod}/{c}/{site} = {n} at the collector", lambda: servers.total(sel) == n, timeout=30)
            except Failed:
                raise Failed(f"{sel}: want {n}, got {servers.series(vm_sel(pod, c, site))}")

    @case("the collector receives the same counts per site with pod, namespace, container, node and owner")
    def _():
        owners = {"web": {"k8s.deployment.name": "web", "k8s.pod.label.app": "web"},
                  "multi": {"k8s.pod.label.app": "multi"},
                  "db-0": {"k8s.statefulset.name": "db", "k8s.pod.label.app": "db"}}
        for (ns, pod, c), sites in want.items():
            if pod != "optout":
                check_vm(ns, pod, c, sites, owners[pod.split("-")[0] if pod.startswith("web") else pod])
        # The bare pod has no workload attributes.
        for labels, _ in servers.series(vm_sel("multi", "main")):
            need("k8s.deployment.name" not in labels and "k8s.statefulset.name" not in labels, labels)

    @case("the opted-out pod has no series, on /metrics or at the collector")
    def _():
        need(sum(want[("gmon-b", "optout", "app")].values()) == 8, "the opted-out pod did not run")
        s = agent_metrics(state["agent"])
        need(not [x for x in s if x[1].get("k8s_pod_name") == "optout"], "optout on /metrics")
        need(not servers.series('{k8s.pod.name="optout"}'), "optout at the collector")

    @case("a recreated workload pod gets its own series")
    def _():
        old = state["web"]
        kubectl("delete", "pod", "-n", "gmon-a", old["metadata"]["name"], "--wait=false")
        new = wait_pod("gmon-a", selector="app=web", exclude_uid=old["metadata"]["uid"])
        name = new["metadata"]["name"]
        need(name != old["metadata"]["name"], "same pod name")
        wait_labelled(name, ["app"])
        sites = spawn("gmon-a", name, 8080, 7)
        check_prom(name, "app", sites)
        check_vm("gmon-a", name, "app", sites, {"k8s.deployment.name": "web"})
        # The old pod's totals stay as they were at the collector.
        old_total = servers.total(vm_sel(old["metadata"]["name"], "app"))
        need(old_total >= sum(want[("gmon-a", old["metadata"]["name"], "app")].values()), old_total)
        state["web"] = new

    @case("agent resources on the node: RSS and CPU, busy and idle, within the chart's limit")
    def _():
        pid = state["agent_pid"]

        def cpu_s():
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        st = proc_status(pid)
        rss_kib, hwm_kib = int(st["VmRSS"].split()[0]), int(st["VmHWM"].split()[0])
        busy = cpu_s()
        idle_from, t0 = busy, time.time()
        time.sleep(10)
        idle = (cpu_s() - idle_from) / (time.time() - t0)
        print(f"     agent pid {pid}: RSS {rss_kib / 1024:.1f} MiB (peak {hwm_kib / 1024:.1f} MiB); "
              f"CPU {busy:.2f} s so far (start-up, 5 containers, {sum(sum(v.values()) for v in want.values())} "
              f"goroutines); idle {100 * idle:.2f} % of a core over 10 s")
        need(hwm_kib < 256 * 1024, "peak RSS above the chart's 256 MiB limit")

    def agent_prog_ids(pid):
        return prog_ids_held_by(pid) & set(bpf_progs())

    @case("helm upgrade with a changed value rolls the agent pod, and counting goes on")
    def _():
        old = state["agent"]
        state["old_agent_progs"] = agent_prog_ids(state["agent_pid"])
        need(state["old_agent_progs"], "no BPF programs owned by the agent process")
        helm("upgrade", RELEASE, CHART, "-n", AGENT_NS, "-f", values,
             "--set", "otlp.resourceAttributes.deployment\\.environment=upgraded", "--wait", "--timeout", "180s")
        kubectl("rollout", "status", "-n", AGENT_NS, f"daemonset/{RELEASE}", "--timeout=180s")
        new = agent_pod(exclude_uid=old["metadata"]["uid"])
        need(new["metadata"]["annotations"]["checksum/config"] != old["metadata"]["annotations"]["checksum/config"],
             "config checksum unchanged")
        state["agent"] = new
        state["agent_pid"] = host_pid_of(new, "gmon-agent")
        wait_labelled("db-0", ["db"])
        sites = spawn("gmon-b", "db-0", 8080, 2)
        check_prom("db-0", "db", sites)
        sel = vm_sel("db-0", "db", "shortWorker", **{"deployment.environment": "upgraded"})
        wait("the upgraded agent's export", lambda: servers.total(sel) == 2, timeout=30)

    @case("the replaced agent left no BPF programs or uprobe links behind")
    def _():
        old = state["old_agent_progs"]
        left = old & set(bpf_progs())
        need(not left, f"programs of the old agent still loaded: {left}")
        need(not bpf_links_to(old), f"links of the old agent: {bpf_links_to(old)}")

    @case("deleting the agent pod: the DaemonSet recreates it, no uprobes left behind")
    def _():
        old = state["agent"]
        old_progs = agent_prog_ids(state["agent_pid"])
        need(old_progs, "no BPF programs owned by the agent process")
        t0 = time.time()
        kubectl("delete", "pod", "-n", AGENT_NS, old["metadata"]["name"], "--wait=true", "--timeout=90s")
        t1 = time.time()
        new = agent_pod(exclude_uid=old["metadata"]["uid"])
        print(f"     old agent pod gone in {t1 - t0:.1f} s, new one ready {time.time() - t1:.1f} s later")
        state["agent"], state["agent_pid"] = new, host_pid_of(new, "gmon-agent")
        need(not (old_progs & set(bpf_progs())), "old programs still loaded")
        need(not bpf_links_to(old_progs), "old links still attached")
        wait_labelled("multi", ["main", "side"])
        sites = spawn("gmon-b", "multi", 8081, 3)
        check_prom("multi", "side", sites)

    @case("helm uninstall leaves no uprobe links and no BPF programs of the agent")
    def _():
        progs = agent_prog_ids(state["agent_pid"])
        helm("uninstall", RELEASE, "-n", AGENT_NS, "--wait", "--timeout", "120s")
        state["installed"] = False
        try:
            # The pod's grace period is 30 s; the rest is the kubelet's.
            wait("the agent pod to go", lambda: not pods(AGENT_NS), timeout=90)
        except Failed as e:
            raise Failed(f"{e}\n     {pod_diagnosis(AGENT_NS)}") from None
        wait("the agent's programs to be unloaded", lambda: not (progs & set(bpf_progs())), timeout=20)
        need(not bpf_links_to(progs), "links left")
        new = set(bpf_progs()) - progs_before
        need(not new, f"programs of the agent's names left on the node: {new}")


if __name__ == "__main__":
    main()
