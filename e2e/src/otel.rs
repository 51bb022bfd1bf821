//! The OpenTelemetry pipeline the export tests run: VictoriaMetrics (the
//! metrics backend, fetched by scripts/fetch-go.sh) and an OpenTelemetry
//! Collector built from Debian's library (scripts/build-test-servers.sh),
//! plus the spawner fixture whose own output gives the exact counts.

use crate::{Proc, fixture, free_port, http_get, piped, wait_for};
use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

pub const VM: &str = "/var/cache/gmon-agent/vm/usr/bin/victoria-metrics";
pub const COLLECTOR: &str = "/var/cache/gmon-agent/servers/otelcol-gmon";

/// Starts VictoriaMetrics on `port` with its data in `dir`.
pub fn victoria(port: u16, dir: &Path) -> Proc {
    assert!(
        Path::new(VM).exists(),
        "{VM} is missing: scripts/fetch-go.sh (run by the bootstrap) fetches it"
    );
    let vm = Proc::spawn(
        Command::new(VM)
            .arg(format!("-storageDataPath={}", dir.display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for(Duration::from_secs(10), || http_get(port, "/health").ok())
        .expect("VictoriaMetrics up");
    vm
}

/// Latest value of each series matching `selector`, summed.
pub fn vm_sum(port: u16, selector: &str) -> f64 {
    let path = format!("/api/v1/export?match[]={}", selector.replace(' ', "%20"));
    let (_, body) = http_get(port, &path).unwrap();
    body.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["values"].as_array()?.last()?.as_f64())
        .sum()
}

/// Every stored series matching `selector`: its labels.
pub fn vm_series(port: u16, selector: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let path = format!("/api/v1/export?match[]={}", selector.replace(' ', "%20"));
    let (_, body) = http_get(port, &path).unwrap();
    body.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["metric"].as_object().cloned())
        .collect()
}

/// Waits until the series matching `selector` sum to `want` (flushing the
/// backend's buffers while waiting); returns the last sum seen.
pub fn vm_wait_sum(port: u16, selector: &str, want: f64, timeout: Duration) -> f64 {
    let mut last = 0.0;
    wait_for(timeout, || {
        let _ = http_get(port, "/internal/force_flush");
        last = vm_sum(port, selector);
        (last == want).then_some(())
    });
    last
}

/// A collector listening for OTLP on gRPC and HTTP, exporting metrics to
/// VictoriaMetrics over OTLP/HTTP and everything to its debug log.
pub struct Collector {
    pub proc: Proc,
    pub grpc_port: u16,
    pub http_port: u16,
    pub log: PathBuf,
    config: PathBuf,
}

/// TLS files for the collector's receivers: (certificate, key, CA that
/// client certificates must chain to).
pub type ServerTls = (PathBuf, PathBuf, PathBuf);

impl Collector {
    /// Writes the configuration into `dir` and starts the collector.
    pub fn start(dir: &Path, vm_port: u16, tls: Option<&ServerTls>) -> Collector {
        assert!(
            Path::new(COLLECTOR).exists(),
            "{COLLECTOR} is missing: scripts/build-test-servers.sh (run by the bootstrap) builds it"
        );
        let (grpc_port, http_port) = (free_port(), free_port());
        let tls = tls
            .map(|(c, k, ca)| {
                format!(
                    "\n        tls:\n          cert_file: {}\n          key_file: {}\n          client_ca_file: {}",
                    c.display(),
                    k.display(),
                    ca.display()
                )
            })
            .unwrap_or_default();
        let config = dir.join("otelcol.yaml");
        std::fs::write(
            &config,
            format!(
                "receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc_port}{tls}
      http:
        endpoint: 127.0.0.1:{http_port}{tls}
processors:
  batch:
    timeout: 200ms
exporters:
  otlp_http/vm:
    metrics_endpoint: http://127.0.0.1:{vm_port}/opentelemetry/v1/metrics
  debug:
    verbosity: detailed
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    metrics:
      receivers: [otlp]
      processors: [batch]
      exporters: [otlp_http/vm, debug]
    logs:
      receivers: [otlp]
      exporters: [debug]
    traces:
      receivers: [otlp]
      exporters: [debug]
"
            ),
        )
        .unwrap();
        let log = dir.join("otelcol.log");
        let mut c = Collector {
            proc: Proc::spawn(&mut Command::new("true")),
            grpc_port,
            http_port,
            log,
            config,
        };
        c.restart();
        c
    }

    /// Starts it (again) on the same ports and configuration.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.proc = Proc::spawn(
            Command::new(COLLECTOR)
                .arg(format!("--config={}", self.config.display()))
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        let ready = wait_for(Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", self.grpc_port)).ok()?;
            std::net::TcpStream::connect(("127.0.0.1", self.http_port)).ok()
        });
        assert!(ready.is_some(), "collector up; log:\n{}", self.log_text());
    }

    pub fn stop(&mut self) {
        self.proc
            .terminate(Duration::from_secs(10))
            .expect("collector stops");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs one spawner to completion; returns its per-site counts.
pub fn run_spawner(rounds: u32) -> HashMap<String, f64> {
    run_spawner_after(rounds, || {})
}

/// Like `run_spawner`, calling `ready` once the spawner waits to start.
pub fn run_spawner_after(rounds: u32, ready: impl FnOnce()) -> HashMap<String, f64> {
    let mut sp = Proc::spawn(piped(fixture("spawner")).arg(format!("-rounds={rounds}")));
    let mut out = sp.stdout_lines();
    assert!(out.next().unwrap().unwrap().starts_with("ready"));
    ready();
    let mut stdin = sp.stdin();
    writeln!(stdin).unwrap();
    let mut per_site = HashMap::new();
    for l in out.by_ref() {
        let l = l.unwrap();
        if l.starts_with("done") {
            break;
        }
        let site = l
            .split_whitespace()
            .nth(1)
            .unwrap()
            .trim_start_matches("site=")
            .to_owned();
        *per_site.entry(site).or_default() += 1.0;
    }
    drop(stdin);
    let _ = sp.child.wait();
    per_site
}

/// Certificates made with openssl for the TLS tests.
pub struct TestCerts {
    pub ca: PathBuf,
    /// For the collector: a server certificate for 127.0.0.1 and its key,
    /// and the CA its clients must present certificates from.
    pub server: ServerTls,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate
/// it signed, made with openssl in `dir`.
pub fn test_certificates(dir: &Path) -> TestCerts {
    let run = |args: &[&str]| {
        let st = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(st.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=gmon-agent test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    let sh = |cmd: &str| run(&cmd.split(' ').collect::<Vec<_>>());
    sh("req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=gmon-agent");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    sh(
        "x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext",
    );
    TestCerts {
        ca: dir.join("ca.pem"),
        server: (
            dir.join("server.pem"),
            dir.join("server.key"),
            dir.join("ca.pem"),
        ),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

/// Reads an agent's /metrics counter (first sample whose line starts with
/// `prefix`).
pub fn scrape_value(metrics_port: u16, prefix: &str) -> Option<f64> {
    let (_, body) = http_get(metrics_port, "/metrics").ok()?;
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
