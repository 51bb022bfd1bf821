//! runtime.g offsets from an ELF's DWARF.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gmon_agent::gobin::fuzz::dwarf(data);
});
