//! Container identity from /proc/PID/cgroup: the container id and, under
//! Kubernetes, the pod UID, for Docker, containerd (CRI) and CRI-O, with
//! cgroup v1 or v2, systemd or cgroupfs drivers. The Kubernetes metadata
//! joins on these two values.

/// What a process's cgroup path says about where it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    /// 64 hex digits, as `docker ps --no-trunc` and `crictl ps` show it.
    pub id: Option<String>,
    /// Pod UID in its canonical dashed form.
    pub pod_uid: Option<String>,
}

impl Container {
    pub fn is_host(&self) -> bool {
        self.id.is_none() && self.pod_uid.is_none()
    }
}

/// Reads /proc/PID/cgroup; a process that is gone gives `None`.
pub fn of_pid(pid: u32) -> Option<Container> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    Some(parse(&text))
}

/// Parses the contents of /proc/PID/cgroup. With cgroup v2 there is one
/// `0::PATH` line; with v1 one line per hierarchy, and the path that names
/// a container is used (they agree).
pub fn parse(text: &str) -> Container {
    let paths = text
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .map(str::trim);
    let mut best = Container::default();
    for path in paths {
        let c = parse_path(path);
        if c.id.is_some() {
            return c;
        }
        if best.pod_uid.is_none() {
            best = c;
        }
    }
    best
}

/// Container id and pod UID from one cgroup path, e.g.
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`
/// or `/kubepods/burstable/pod<uid>/<id>`.
pub fn parse_path(path: &str) -> Container {
    let mut c = Container::default();
    for part in path.split('/').rev() {
        if c.id.is_none()
            && let Some(id) = container_id(part)
        {
            c.id = Some(id.to_owned());
        }
        if c.pod_uid.is_none() {
            c.pod_uid = pod_uid(part);
        }
    }
    c
}

/// `<id>`, `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `crio-<id>`, `libpod-<id>.scope`...: the 64 hex digits.
fn container_id(part: &str) -> Option<&str> {
    let part = part.strip_suffix(".scope").unwrap_or(part);
    let id = part.rsplit(['-', ':']).next()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice`.
fn pod_uid(part: &str) -> Option<String> {
    let part = part.strip_suffix(".slice").unwrap_or(part);
    let at = part.rfind("pod")?;
    let uid = part[at + 3..].replace('_', "-");
    is_uuid(&uid).then_some(uid)
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4c8b1e2a9d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";
    const UID: &str = "0d1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8";

    fn both(text: &str) -> (Option<String>, Option<String>) {
        let c = parse(text);
        (c.id, c.pod_uid)
    }

    fn want() -> (Option<String>, Option<String>) {
        (Some(ID.into()), Some(UID.into()))
    }

    #[test]
    fn containerd_systemd_driver_cgroup_v2() {
        let uid = UID.replace('-', "_");
        let t = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(both(&t), want());
        // Guaranteed QoS has no QoS slice.
        let t = format!("0::/kubepods.slice/kubepods-pod{uid}.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(both(&t), want());
    }

    #[test]
    fn containerd_cgroupfs_driver_v1_and_v2() {
        let v2 = format!("0::/kubepods/burstable/pod{UID}/{ID}\n");
        assert_eq!(both(&v2), want());
        let v1 = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{ID}\n\
             11:memory:/kubepods/besteffort/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n\
             0::/\n"
        );
        assert_eq!(both(&v1), want());
    }

    #[test]
    fn crio_both_drivers() {
        let uid = UID.replace('-', "_");
        let t = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/crio-{ID}.scope\n"
        );
        assert_eq!(both(&t), want());
        let t = format!("0::/kubepods/besteffort/pod{UID}/crio-{ID}\n");
        assert_eq!(both(&t), want());
        // CRI-O's conmon sits in its own scope: a container id, same pod.
        let t = format!("0::/kubepods/pod{UID}/crio-conmon-{ID}\n");
        assert_eq!(both(&t), want());
    }

    #[test]
    fn docker_outside_kubernetes() {
        let t = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(both(&t), (Some(ID.into()), None));
        let v1 = format!("13:cpuset:/docker/{ID}\n1:name=systemd:/docker/{ID}\n");
        assert_eq!(both(&v1), (Some(ID.into()), None));
        // docker run --cgroup-parent /kubepods/burstable/pod<uid>, as the
        // tests run containers.
        let t = format!("0::/kubepods/burstable/pod{UID}/{ID}\n");
        assert_eq!(both(&t), want());
    }

    #[test]
    fn host_processes_have_neither() {
        for t in [
            "0::/user.slice/user-0.slice/session-1.scope\n",
            "0::/init.scope\n",
            "0::/\n",
            "12:pids:/user.slice\n1:name=systemd:/user.slice/user-1000.slice\n",
            "",
        ] {
            assert!(parse(t).is_host(), "{t:?}");
        }
    }

    #[test]
    fn lookalikes_are_not_ids() {
        // 63 hex digits, a non-hex digit, a pod that is not a UUID.
        let short = &ID[1..];
        assert_eq!(parse(&format!("0::/docker/{short}\n")).id, None);
        let bad = format!("{}g", &ID[..63]);
        assert_eq!(parse(&format!("0::/docker/{bad}\n")).id, None);
        assert_eq!(
            parse("0::/kubepods/burstable/podnot-a-uid/x\n").pod_uid,
            None
        );
    }
}
