//! Probes attached: loads the eBPF object, attaches the two uprobes to a
//! binary, and hands out the maps the event reader needs. Dropping `Probes`
//! detaches everything and unloads the programs.

mod batch;
pub mod caps;
mod maps;
mod mmap;
mod ringbuf;
mod sites;

pub use maps::{KernelCounters, KernelStacks, ProcEvents};
pub use ringbuf::EventReader;
pub use sites::{Inserted, KernelSites};

use crate::gobin::GoBinary;
use agent_common::{
    EVENT_RINGS, GOffsets, LifetimeBounds, MAX_BINARIES, MAX_STACK_DEPTH, SITE_CREATE_IN_BODY,
    counter,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        RawTracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use std::num::NonZeroU32;

/// The compiled eBPF object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    MissingCapability(String),
    #[error(
        "loading eBPF programs was refused although CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN are effective: \
         a seccomp profile or LSM blocks bpf(); allow it (in a pod: securityContext.seccompProfile.type: Unconfined)"
    )]
    Permission,
    #[error("this kernel lacks BPF ring buffers (Linux 5.8 or newer is needed): {0}")]
    NoRingBuf(String),
    #[error("cannot load the eBPF programs: {0}")]
    Load(String),
    #[error("cannot attach {program} to {path} at offset {offset:#x}: {reason}")]
    Attach {
        program: &'static str,
        path: String,
        offset: u64,
        reason: String,
    },
    #[error("too many binaries: at most {MAX_BINARIES} can be probed at once")]
    TooManyBinaries,
    #[error("eBPF map {0}: {1}")]
    Map(&'static str, String),
    #[error("cannot watch process starts and exits (raw tracepoint {0}): {1}")]
    Watch(&'static str, String),
}

/// The event rings: CPU n writes to `RING_NAMES[n % EVENT_RINGS]`.
const RING_NAMES: [&str; EVENT_RINGS as usize] = [
    "EVENTS_0", "EVENTS_1", "EVENTS_2", "EVENTS_3", "EVENTS_4", "EVENTS_5", "EVENTS_6", "EVENTS_7",
];

fn is_eperm(e: &dyn std::error::Error) -> bool {
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if s.contains("Operation not permitted") || s.contains("Permission denied") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Programs loaded in the kernel plus the attachments made so far.
pub struct Probes {
    ebpf: Ebpf,
    binaries: Array<MapData, GOffsets>,
    next_cookie: u32,
    /// Cookies of detached binaries, reused before new ones.
    free_cookies: Vec<u32>,
    policy: SitePolicy,
}

/// Which probe sites to use where a binary offers a choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SitePolicy {
    /// Emulated sites where the binary's code has the expected shape,
    /// else newproc1's RETs and goexit1's entry.
    #[default]
    Auto,
    /// Always newproc1's RETs and goexit1's entry (single-stepped).
    Ret,
}

/// How the kernel executes the instructions a binary's probes sit on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteClass {
    /// call/jmp/jcc: emulated inside the uprobe trap (~0.2-0.4 us a hit here).
    Emulated,
    /// ret, cmp: single-stepped with a second trap (~8 us a hit here).
    SingleStepped,
}

impl SiteClass {
    /// The `class` label of gmon_agent_probe_sites.
    pub fn label(self) -> &'static str {
        match self {
            SiteClass::Emulated => "emulated",
            SiteClass::SingleStepped => "single_stepped",
        }
    }
}

/// The uprobes placed on one binary; give it back to `Probes::detach`.
#[derive(Debug)]
pub struct Attachment {
    cookie: u32,
    links: Vec<(&'static str, UProbeLinkId)>,
    /// The kind of sites they sit on.
    pub class: SiteClass,
}

impl Attachment {
    /// Uprobes placed.
    pub fn uprobes(&self) -> usize {
        self.links.len()
    }
}

/// Handles that let the event reader and the counters live elsewhere.
pub struct Maps {
    pub events: EventReader,
    pub procs: ProcEvents,
    pub stacks: KernelStacks,
    pub counters: KernelCounters,
    /// Aggregate mode's per-site totals (`None` when events flow).
    pub sites: Option<KernelSites>,
}

/// Fails with one line naming the first capability this mode lacks.
pub fn require_capabilities(node_mode: bool) -> Result<(), Error> {
    caps::check(node_mode).map_err(Error::MissingCapability)
}

/// Changes to what the programs do, for tests and the overhead
/// benchmark only; the default (the agent's) changes nothing, and the
/// verifier removes the checks (they are load-time constants).
#[doc(hidden)]
#[derive(Debug, Default, Clone, Copy)]
pub struct TestHooks {
    /// Aggregate mode's creation (exit) program returns at its step
    /// numbered this or more (0: runs every step): the cost ladder.
    pub create_stop_after: u32,
    pub exit_stop_after: u32,
    /// Every claim of the per-CPU scratch space fails, as while a
    /// preempted probe on the same CPU holds it (fully preemptible
    /// kernels only), so that path can be tested on any kernel.
    pub scratch_busy: bool,
    /// What the `calib` program repeats (`agent_common::calib`): the
    /// benchmark's helper costs.
    pub calib_op: u32,
}

impl Probes {
    /// Loads the programs. The kernel collects up to `stack_depth` frames
    /// of each creating user stack (0: none; capped at `MAX_STACK_DEPTH`).
    /// With `aggregate` (lifetime bucket bounds), the programs count per
    /// site instead of sending an event per goroutine.
    pub fn load(
        stack_depth: usize,
        aggregate: Option<&LifetimeBounds>,
    ) -> Result<(Self, Maps), Error> {
        Self::load_with(stack_depth, aggregate, false, TestHooks::default())
    }

    /// `load`; in aggregate mode with `creation_events`, each creation is
    /// also sent as an event (for gmon's creation log lines) while exits
    /// stay in the kernel. `hooks` change the programs for tests and the
    /// overhead benchmark's cost ladder only.
    pub fn load_with(
        stack_depth: usize,
        aggregate: Option<&LifetimeBounds>,
        creation_events: bool,
        hooks: TestHooks,
    ) -> Result<(Self, Maps), Error> {
        let depth = stack_depth.min(MAX_STACK_DEPTH) as u32;
        let agg = aggregate.is_some() as u32;
        let creations = (aggregate.is_some() && creation_events) as u32;
        let mut loader = EbpfLoader::new();
        // A ring per CPU up to EVENT_RINGS; the others (and, in aggregate
        // mode without creation events, all) get one page instead of
        // RINGBUF_BYTES, which user space would map (twice) and carry in
        // its resident memory.
        // Possible CPUs are numbered 0..n (what per-CPU maps assume too).
        let cpus = aya::util::nr_cpus()
            .map_err(|(path, e)| Error::Load(format!("number of CPUs ({path}): {e}")))?;
        let used_rings = if aggregate.is_some() && creations == 0 {
            0
        } else {
            cpus.min(EVENT_RINGS as usize)
        };
        for name in &RING_NAMES[used_rings..] {
            loader.map_max_entries(name, 4096);
        }
        let mut ebpf = loader
            .override_global("STACK_DEPTH", &depth, true)
            .override_global("AGGREGATE", &agg, true)
            .override_global("CREATION_EVENTS", &creations, true)
            .override_global("CREATE_STOP_AFTER", &hooks.create_stop_after, true)
            .override_global("EXIT_STOP_AFTER", &hooks.exit_stop_after, true)
            .override_global("SCRATCH_ALWAYS_BUSY", &(hooks.scratch_busy as u32), true)
            .override_global("CALIB_OP", &hooks.calib_op, true)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                if is_eperm(&e) {
                    Error::Permission
                } else {
                    let s = e.to_string();
                    if s.contains("EVENTS_") {
                        Error::NoRingBuf(s)
                    } else {
                        Error::Load(format!("{e:#}"))
                    }
                }
            })?;
        // Load every program (the kernel verifies them now, so a bad
        // kernel fails here); they are attached later, as needed.
        macro_rules! load {
            ($ty:ty, $($name:literal),+) => {$(
                let prog: &mut $ty = ebpf
                    .program_mut($name)
                    .ok_or_else(|| Error::Load(format!("program {} missing", $name)))?
                    .try_into()
                    .map_err(|e| Error::Load(format!("{e}")))?;
                prog.load().map_err(|e| match e {
                    // EACCES from a program load is the verifier's refusal,
                    // not a missing capability (that is EPERM).
                    aya::programs::ProgramError::LoadError { io_error, verifier_log }
                        if io_error.raw_os_error() == Some(libc::EACCES) =>
                    {
                        Error::Load(format!("{}: the verifier refused it: {verifier_log}", $name))
                    }
                    e if is_eperm(&e) => Error::Permission,
                    e => Error::Load(format!("{}: {e}", $name)),
                })?;
            )+};
        }
        load!(RawTracePoint, "proc_exec", "proc_exit");
        load!(
            UProbe,
            "newproc1_ret",
            "goexit1",
            "goexit1_entry",
            "noop",
            "calib"
        );
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name)
                .ok_or_else(|| Error::Map(name, "missing".into()))
        };
        let mut rings = Vec::new();
        for (i, name) in RING_NAMES.iter().enumerate() {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| Error::Map("EVENTS_*", format!("{name} missing")))?;
            // Rings no CPU writes to are left unread.
            if i < used_rings.max(1) {
                rings.push(ringbuf::Ring::new("EVENTS_*", map)?);
            }
        }
        let events = EventReader::new(rings);
        let procs = ringbuf::Ring::new("PROC_EVENTS", take(&mut ebpf, "PROC_EVENTS")?)?;
        let stacks = HashMap::try_from(take(&mut ebpf, "STACKS")?)
            .map_err(|e| Error::Map("STACKS", e.to_string()))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?)
            .map_err(|e| Error::Map("COUNTERS", e.to_string()))?;
        let binaries = Array::try_from(take(&mut ebpf, "BINARIES")?)
            .map_err(|e| Error::Map("BINARIES", e.to_string()))?;
        let sites = aggregate
            .map(|b| KernelSites::new(&mut ebpf, b))
            .transpose()?;
        Ok((
            Probes {
                ebpf,
                binaries,
                next_cookie: 0,
                free_cookies: Vec::new(),
                policy: SitePolicy::Auto,
            },
            Maps {
                events,
                procs: ProcEvents(procs),
                stacks: KernelStacks(stacks),
                counters: KernelCounters {
                    map: counters,
                    last: [0; counter::COUNT as usize],
                },
                sites,
            },
        ))
    }

    /// Starts the process exec/exit tracepoints (node mode's discovery).
    pub fn watch_processes(&mut self) -> Result<(), Error> {
        for (name, tp) in [
            ("proc_exec", "sched_process_exec"),
            ("proc_exit", "sched_process_exit"),
        ] {
            let prog: &mut RawTracePoint = self
                .ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| Error::Load(format!("program {name} missing")))?;
            prog.attach(tp)
                .map_err(|e| Error::Watch(tp, format!("{e:#}")))?;
        }
        Ok(())
    }

    /// Which sites later attachments use.
    pub fn set_site_policy(&mut self, policy: SitePolicy) {
        self.policy = policy;
    }

    /// Attaches both probes to `bin`, for every process running it or only
    /// for `pid`. On failure nothing stays attached.
    pub fn attach(&mut self, bin: &GoBinary, pid: Option<NonZeroU32>) -> Result<Attachment, Error> {
        self.attach_programs(bin, &bin.path, pid, None)
    }

    /// Like `attach`, for every process, naming the file by `path` (e.g.
    /// /proc/PID/exe of a live process) rather than the path it was
    /// analysed under, which may be gone.
    pub fn attach_via(
        &mut self,
        bin: &GoBinary,
        path: &std::path::Path,
    ) -> Result<Attachment, Error> {
        self.attach_programs(bin, path, None, None)
    }

    /// Attaches an empty program at the sites the policy picks: the bare
    /// trap cost, which the overhead benchmark compares the probes against.
    pub fn attach_noop(&mut self, bin: &GoBinary) -> Result<Attachment, Error> {
        self.attach_programs(bin, &bin.path, None, Some("noop"))
    }

    /// Attaches the `calib` program (what it repeats is `TestHooks::calib_op`)
    /// at the same sites, for the benchmark's helper costs.
    #[doc(hidden)]
    pub fn attach_calib(&mut self, bin: &GoBinary) -> Result<Attachment, Error> {
        self.attach_programs(bin, &bin.path, None, Some("calib"))
    }

    /// Removes a binary's uprobes and frees its slot.
    pub fn detach(&mut self, att: Attachment) {
        for (program, link) in att.links {
            if let Some(prog) = self
                .ebpf
                .program_mut(program)
                .and_then(|p| <&mut UProbe>::try_from(p).ok())
            {
                // Only fails for an unknown link id, which cannot happen.
                let _ = prog.detach(link);
            }
        }
        self.free_cookies.push(att.cookie);
    }

    fn attach_programs(
        &mut self,
        bin: &GoBinary,
        path: &std::path::Path,
        pid: Option<NonZeroU32>,
        // A benchmark program for both sites instead of the agent's.
        bench: Option<&'static str>,
    ) -> Result<Attachment, Error> {
        let cookie = match self.free_cookies.pop() {
            Some(c) => c,
            None if self.next_cookie < MAX_BINARIES => {
                self.next_cookie += 1;
                self.next_cookie - 1
            }
            None => return Err(Error::TooManyBinaries),
        };
        // Emulated sites where the binary has them (and the policy allows);
        // the program learns which from the binary's flags.
        let (class, create_sites, exit_site, flags) = match (self.policy, &bin.emulated) {
            (SitePolicy::Auto, Ok(s)) => (
                SiteClass::Emulated,
                vec![s.create],
                s.exit,
                SITE_CREATE_IN_BODY,
            ),
            _ => (
                SiteClass::SingleStepped,
                bin.newproc1_rets.clone(),
                bin.goexit1,
                0,
            ),
        };
        // goexit1's prologue site and its entry each have their own way of
        // telling the hit that goes on from the one morestack repeats.
        let (create, exit) = match (bench, class) {
            (Some(p), _) => (p, p),
            (None, SiteClass::Emulated) => ("newproc1_ret", "goexit1"),
            (None, SiteClass::SingleStepped) => ("newproc1_ret", "goexit1_entry"),
        };
        let mut att = Attachment {
            cookie,
            links: Vec::new(),
            class,
        };
        let offsets = GOffsets {
            flags,
            ..bin.offsets
        };
        if let Err(e) = self.binaries.set(cookie, offsets, 0) {
            self.free_cookies.push(cookie);
            return Err(Error::Map("BINARIES", e.to_string()));
        }
        let scope = match pid {
            Some(pid) => UProbeScope::OneProcess(pid),
            None => UProbeScope::AllProcesses,
        };
        let sites = create_sites
            .into_iter()
            .map(|o| (create, o))
            .chain(std::iter::once((exit, exit_site)));
        for (program, offset) in sites {
            let placed = self
                .ebpf
                .program_mut(program)
                .and_then(|p| <&mut UProbe>::try_from(p).ok())
                .ok_or_else(|| Error::Load(format!("program {program} missing")))
                .and_then(|prog| {
                    let point = UProbeAttachPoint {
                        location: UProbeAttachLocation::AbsoluteOffset(offset),
                        cookie: Some(cookie.into()),
                    };
                    prog.attach(point, path, scope).map_err(|e| Error::Attach {
                        program,
                        path: path.display().to_string(),
                        offset,
                        reason: if is_eperm(&e) {
                            "permission denied: attaching uprobes needs CAP_SYS_ADMIN \
                             (root on a host; securityContext.capabilities.add in a pod)"
                                .into()
                        } else {
                            format!("{e:#}")
                        },
                    })
                });
            match placed {
                Ok(link) => att.links.push((program, link)),
                Err(e) => {
                    self.detach(att);
                    return Err(e);
                }
            }
        }
        Ok(att)
    }
}
