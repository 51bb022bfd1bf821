//! The Linux capabilities the agent needs, checked before anything is
//! loaded, so that a missing one is named in one line together with where
//! it is granted (a pod's securityContext, or root on a host).

/// One capability and what needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub bit: u32,
    pub name: &'static str,
    /// What fails without it.
    pub needed_for: &'static str,
    /// Only node mode needs it (reading other users' and containers' files).
    pub node_only: bool,
}

/// Every capability the agent uses, in the order a pod spec lists them.
pub const NEEDED: [Capability; 5] = [
    Capability {
        bit: 39,
        name: "BPF",
        needed_for: "creating BPF maps and loading programs",
        node_only: false,
    },
    Capability {
        bit: 38,
        name: "PERFMON",
        needed_for: "loading tracing programs and opening uprobe perf events",
        node_only: false,
    },
    Capability {
        bit: 21,
        name: "SYS_ADMIN",
        needed_for: "attaching uprobes to every process of a binary",
        node_only: false,
    },
    Capability {
        bit: 19,
        name: "SYS_PTRACE",
        needed_for: "reading the goroutines a process has when it is first probed (its memory), and /proc/PID/exe and /proc/PID/root of other containers' processes",
        node_only: false,
    },
    Capability {
        bit: 2,
        name: "DAC_READ_SEARCH",
        needed_for: "opening executables that other users own",
        node_only: true,
    },
];

/// The effective set from a /proc/PID/status text.
pub fn effective(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The first needed capability that `eff` lacks. Capabilities this kernel
/// does not know (`last_cap` below their bit: CAP_BPF and CAP_PERFMON came
/// in Linux 5.8) cannot be granted and are not asked for.
pub fn first_missing(eff: u64, last_cap: u32, node_mode: bool) -> Option<&'static Capability> {
    NEEDED
        .iter()
        .filter(|c| node_mode || !c.node_only)
        .filter(|c| c.bit <= last_cap)
        .find(|c| eff & (1u64 << c.bit) == 0)
}

/// Whether this process runs in a container (its cgroup names one), where
/// capabilities come from the pod spec rather than from sudo.
fn in_container() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::fs::read_to_string("/proc/self/cgroup")
            .is_ok_and(|c| crate::discover::cgroup::parse(&c).id.is_some())
}

/// The one-line advice for a missing capability.
pub fn advice(c: &Capability, container: bool) -> String {
    if container {
        format!(
            "missing capability CAP_{} ({}): add {} to the container's securityContext.capabilities.add \
             (the gmon-agent chart's default securityContext grants it; check the securityContext value)",
            c.name, c.needed_for, c.name
        )
    } else {
        format!(
            "missing capability CAP_{} ({}): run gmon-agent as root (sudo gmon-agent ...)",
            c.name, c.needed_for
        )
    }
}

/// Ok when every capability this mode needs is effective; otherwise the
/// advice line for the first missing one.
pub fn check(node_mode: bool) -> Result<(), String> {
    let Some(eff) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(effective)
    else {
        return Ok(()); // no procfs: let the kernel answer instead
    };
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    match first_missing(eff, last_cap, node_mode) {
        None => Ok(()),
        Some(c) => Err(advice(c, in_container())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = 0x000001ffffffffff;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000280004\n";
        assert_eq!(effective(status), Some(0x000000c000280004));
        assert_eq!(effective("Name: x\n"), None);
    }

    #[test]
    fn names_the_first_missing_capability() {
        assert_eq!(first_missing(ALL, 40, true), None);
        // The chart's set: BPF, PERFMON, SYS_ADMIN, SYS_PTRACE, DAC_READ_SEARCH.
        let chart = (1 << 39) | (1 << 38) | (1 << 21) | (1 << 19) | (1 << 2);
        assert_eq!(first_missing(chart, 40, true), None);
        let no_perfmon = chart & !(1 << 38);
        assert_eq!(first_missing(no_perfmon, 40, true).unwrap().name, "PERFMON");
        // Standalone mode does not need DAC_READ_SEARCH; both need
        // SYS_PTRACE (the attach walk reads process memory).
        let basic = (1 << 39) | (1 << 38) | (1 << 21) | (1 << 19);
        assert_eq!(first_missing(basic, 40, false), None);
        assert_eq!(
            first_missing(basic, 40, true).unwrap().name,
            "DAC_READ_SEARCH"
        );
        let no_ptrace = basic & !(1 << 19);
        assert_eq!(
            first_missing(no_ptrace, 40, false).unwrap().name,
            "SYS_PTRACE"
        );
        // A kernel before 5.8 has no CAP_BPF or CAP_PERFMON to grant.
        assert_eq!(first_missing((1 << 21) | (1 << 19), 37, false), None);
    }

    #[test]
    fn advice_fits_where_the_agent_runs() {
        let c = &NEEDED[1];
        let pod = advice(c, true);
        assert!(pod.contains("CAP_PERFMON") && pod.contains("securityContext.capabilities.add"));
        assert!(!pod.contains("sudo") && !pod.contains('\n'));
        assert!(advice(c, false).contains("as root"));
    }
}
