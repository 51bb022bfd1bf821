//! .go.buildinfo: the Go release and main module.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gmon_agent::gobin::fuzz::buildinfo(data);
});
