//! Containers for the node-mode tests: FROM-scratch images of the static
//! fixtures, run by the Docker daemon scripts/docker-up.sh starts, in
//! Kubernetes-shaped cgroups.

use crate::{Proc, fixture, wait_for};
use std::{
    process::{Command, Stdio},
    time::Duration,
};

pub const DOCKER: &str = "/usr/bin/docker";

/// True when a Docker daemon answers (scripts/docker-up.sh starts one); in
/// CI its absence is a failure, elsewhere the test is skipped.
pub fn require_docker() -> bool {
    let ok = Command::new(DOCKER)
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("no Docker daemon: scripts/test.sh starts one with scripts/docker-up.sh");
    }
    if !ok {
        eprintln!("skipping container test: no Docker daemon (run scripts/docker-up.sh)");
    }
    ok
}

/// A FROM-scratch image holding one static fixture as /app.
pub fn image(fixture_name: &str) -> String {
    image_of(
        &fixture(fixture_name),
        &format!("gmon-agent-test/{fixture_name}:latest"),
    )
}

/// A FROM-scratch image holding the file at `path` as /app, tagged `tag`.
pub fn image_of(path: &std::path::Path, tag: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(path, dir.path().join("app")).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY app /app\nENTRYPOINT [\"/app\"]\n",
    )
    .unwrap();
    let st = Command::new(DOCKER)
        .args(["build", "-q", "-t", tag])
        .arg(dir.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "docker build {tag}");
    tag.to_owned()
}

/// A container in a Kubernetes-shaped cgroup, its stdin and stdout piped.
pub struct Container {
    pub proc: Proc,
    pub id: String,
}

pub fn container(
    image: &str,
    pod_uid: &str,
    cidfile: &std::path::Path,
    args: &[&str],
) -> Container {
    let proc = Proc::spawn(
        Command::new(DOCKER)
            .args(["run", "-i", "--rm", "--cgroup-parent"])
            .arg(format!("/kubepods/burstable/pod{pod_uid}"))
            .arg("--cidfile")
            .arg(cidfile)
            .arg(image)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let id = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(cidfile)
            .ok()
            .filter(|s| s.len() == 64)
    })
    .expect("container started");
    Container { proc, id }
}

/// The host pid of a running container's main process.
pub fn host_pid(id: &str) -> u32 {
    let out = Command::new(DOCKER)
        .args(["inspect", "-f", "{{.State.Pid}}", id])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a pid")
}
