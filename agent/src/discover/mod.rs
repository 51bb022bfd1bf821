//! Process found: which processes run a given binary, where each one
//! mapped it (the load bias that PIE and ASLR add to every address), what
//! container it runs in, and node mode's selection.

pub mod cgroup;
pub mod realfile;
pub mod select;

use crate::gobin::{BinaryId, GoBinary};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("process {0} does not exist; check the --pid value")]
    NoSuchProcess(u32),
    #[error("process {pid} runs {exe}, not the binary given with --path")]
    OtherBinary { pid: u32, exe: PathBuf },
    #[error("cannot read /proc/{0}: {1}")]
    Proc(u32, String),
    #[error("process {0} has not mapped the binary")]
    NotMapped(u32),
}

/// Identity of a process across pid reuse: pid plus start time (clock ticks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessKey {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcessKey {
    pub fn of(pid: u32) -> Option<Self> {
        let stat = procfs::process::Process::new(pid as i32)
            .ok()?
            .stat()
            .ok()?;
        Some(ProcessKey {
            pid,
            start_time: stat.starttime,
        })
    }

    /// False once the process has exited (or its pid was reused).
    pub fn alive(&self) -> bool {
        ProcessKey::of(self.pid) == Some(*self)
    }
}

/// The identity of the file `pid` executes, as `--path` names it.
pub fn exe_id(pid: u32) -> Option<BinaryId> {
    BinaryId::of(&PathBuf::from(format!("/proc/{pid}/exe"))).ok()
}

/// Pids of every running process whose executable is `id`.
pub fn processes_running(id: BinaryId) -> Vec<u32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(|p| p.ok())
        .map(|p| p.pid as u32)
        .filter(|&pid| exe_id(pid) == Some(id))
        .collect()
}

/// Checks that `pid` runs the binary `id`.
pub fn check_runs(pid: u32, id: BinaryId) -> Result<(), Error> {
    let p = procfs::process::Process::new(pid as i32).map_err(|_| Error::NoSuchProcess(pid))?;
    if exe_id(pid) == Some(id) {
        return Ok(());
    }
    let exe = p.exe().unwrap_or_else(|_| PathBuf::from("?"));
    Err(Error::OtherBinary { pid, exe })
}

/// Load bias of `bin` in process `pid`, from /proc/PID/maps.
pub fn load_bias(pid: u32, bin: &GoBinary) -> Result<u64, Error> {
    let p = procfs::process::Process::new(pid as i32).map_err(|_| Error::NoSuchProcess(pid))?;
    let maps = p.maps().map_err(|e| Error::Proc(pid, e.to_string()))?;
    maps.iter()
        .filter(|m| m.inode == bin.id.ino)
        .min_by_key(|m| m.offset)
        .and_then(|m| bin.load_bias(m.address.0, m.offset))
        .ok_or(Error::NotMapped(pid))
}
