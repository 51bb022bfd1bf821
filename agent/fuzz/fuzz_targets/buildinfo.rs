//! .go.buildinfo: the Go release and main module.
#![no_main]

#[global_allocator]
static ALLOC: gmon_agent::gobin::fuzz::CappedAlloc = gmon_agent::gobin::fuzz::CappedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gmon_agent::gobin::fuzz::buildinfo(data);
});
