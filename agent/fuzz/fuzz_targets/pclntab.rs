//! .gopclntab: function table, names, lines and inline trees.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gmon_agent::gobin::fuzz::pclntab(data);
});
