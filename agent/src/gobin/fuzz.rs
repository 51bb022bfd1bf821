//! Entry points for fuzzing the analysis (agent/fuzz, cargo fuzz) and for
//! replaying its corpus in the tests: each takes arbitrary bytes and must
//! return, never panic, hang or allocate beyond what the input justifies.

use super::{GoBinary, allgs, buildinfo, dwarf, pclntab::Pclntab, ret, sites};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

/// The largest single allocation an input may cause: the inputs are at most
/// a few MiB, so anything near this comes from a size field that was not
/// checked against the file.
pub const ALLOC_CAP: usize = 128 << 20;

/// The system allocator, failing any allocation over `ALLOC_CAP` (the
/// process then aborts with "memory allocation of N bytes failed", which
/// libFuzzer records as a finding). The fuzz targets and the corpus replay
/// test install it as their global allocator.
pub struct CappedAlloc;

// SAFETY: forwards to System, or returns null, which GlobalAlloc allows.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_CAP {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_CAP {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_CAP {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The whole analysis of `data` as an executable file, then the
/// symbolization of a few PCs, as the agent does for every binary.
pub fn analyse(data: &[u8]) {
    // The analysis maps a file: one per thread, on tmpfs where there is one.
    let dir = ["/dev/shm", "/tmp"]
        .into_iter()
        .find(|d| std::path::Path::new(d).is_dir())
        .unwrap_or(".");
    let path = std::path::PathBuf::from(format!(
        "{dir}/gmon-agent-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let written = std::fs::File::create(&path).and_then(|mut f| f.write_all(data));
    if written.is_ok()
        && let Ok(bin) = GoBinary::analyse(&path)
    {
        for name in ["runtime.newproc1", "runtime.goexit1", "main.main"] {
            if let Some(entry) = bin.function_entry(name) {
                let _ = bin.symbolize(entry);
                let _ = bin.symbolize_inline(entry + 1);
            }
        }
        let _ = bin.allgs_from_code();
    }
    let _ = std::fs::remove_file(&path);
}

/// A .gopclntab: parsed, then every function (at most 4096) named and
/// resolved at its entry, inline frames included.
pub fn pclntab(data: &[u8]) {
    let Ok(mut t) = Pclntab::parse(data, 0..data.len(), 0x40_1000) else {
        return;
    };
    // Inline trees are read relative to a funcdata base: the table itself.
    t.set_gofunc(0);
    let funcs: Vec<_> = t.funcs().take(4096).collect();
    for f in &funcs {
        let _ = t.name(f);
        let _ = t.line(f, f.entry);
        let _ = t.frames(f, f.entry);
        let _ = t.func_for_pc(f.entry);
    }
    let _ = t.find("runtime.newproc1");
}

/// A .go.buildinfo section.
pub fn buildinfo(data: &[u8]) {
    let _ = buildinfo::parse(data);
}

/// An ELF whose DWARF gives runtime.g's layout.
pub fn dwarf(data: &[u8]) {
    if let Ok(file) = object::File::parse(data) {
        let _ = dwarf::g_offsets(&file);
    }
}

/// Machine code as the site finders see it: the first 8 bytes are the
/// goid offset to look for, the rest is code at a fixed entry address.
pub fn code(data: &[u8]) {
    let Some((head, code)) = data.split_first_chunk::<8>() else {
        return;
    };
    let goid_off = u64::from_le_bytes(*head) & 0xfff;
    let entry = 0x40_1000;
    let _ = ret::ret_addresses(code, entry);
    let _ = sites::creation_site(code, entry, goid_off);
    let _ = sites::exit_site(code, entry);
    let _ = allgs::from_allgadd(code, entry);
}
