//! runtime.g offsets from an ELF's DWARF.
#![no_main]

#[global_allocator]
static ALLOC: gmon_agent::gobin::fuzz::CappedAlloc = gmon_agent::gobin::fuzz::CappedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gmon_agent::gobin::fuzz::dwarf(data);
});
