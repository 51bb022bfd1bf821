//! The whole analysis of an executable, as the agent runs it on every
//! binary it finds: ELF, buildinfo, pclntab, DWARF or table offsets, probe
//! sites, the allgs addresses; then symbolization of a few PCs.
#![no_main]

#[global_allocator]
static ALLOC: gmon_agent::gobin::fuzz::CappedAlloc = gmon_agent::gobin::fuzz::CappedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gmon_agent::gobin::fuzz::analyse(data);
});
