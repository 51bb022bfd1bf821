//! The disassembly of runtime code: newproc1's RETs and creation site,
//! goexit1's exit site, runtime.allgadd's stores.
#![no_main]

#[global_allocator]
static ALLOC: gmon_agent::gobin::fuzz::CappedAlloc = gmon_agent::gobin::fuzz::CappedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gmon_agent::gobin::fuzz::code(data);
});
