//! Binary analysis against real Go binaries built by the bootstrap (no root).

use e2e::fixture;
use gmon_agent::gobin::{Error, GoBinary};
use std::io::Write;

#[test]
fn reads_release_offsets_and_probe_sites_from_go_1_23() {
    let bin = GoBinary::analyse(&fixture("spawner")).unwrap();
    assert_eq!((bin.build.version.major, bin.build.version.minor), (1, 23));
    assert_eq!(
        bin.build.main_path.as_deref(),
        Some("gmon-agent/fixture/spawner")
    );
    // runtime.g layout of Go 1.23 (goid moved to 160 when syscallbp was added).
    let o = bin.offsets;
    assert_eq!(
        (o.goid, o.parent_goid, o.gopc, o.startpc),
        (160, 280, 288, 304)
    );

    // Every probe site in runtime.newproc1 is a RET byte in the file.
    let data = std::fs::read(&bin.path).unwrap();
    assert!(!bin.newproc1_rets.is_empty());
    for &off in &bin.newproc1_rets {
        assert_eq!(data[off as usize], 0xc3, "offset {off:#x} is not a RET");
    }
    // goexit1's entry is a function start: symbolizing it names goexit1.
    let entry = bin.function_entry("runtime.goexit1").unwrap();
    assert_eq!(bin.file_offset(entry).unwrap(), bin.goexit1);
    assert!(!bin.pie);
}

#[test]
fn symbolizes_functions_with_file_and_line() {
    let bin = GoBinary::analyse(&fixture("spawner")).unwrap();
    for name in [
        "main.shortWorker",
        "main.nestedChild",
        "runtime.goexit1",
        "main.main",
    ] {
        let entry = bin.function_entry(name).unwrap();
        let f = bin.symbolize(entry + 1).unwrap();
        assert_eq!(f.function, name);
        assert!(f.line.unwrap() > 0);
    }
    let f = bin
        .symbolize(bin.function_entry("main.shortWorker").unwrap())
        .unwrap();
    assert!(f.file.unwrap().ends_with("fixture/spawner/main.go"));
    // An address outside the text symbolizes to nothing.
    assert_eq!(bin.symbolize(0x10), None);
}

#[test]
fn refuses_a_missing_path() {
    let err = GoBinary::analyse("/nonexistent/app".as_ref()).unwrap_err();
    assert!(matches!(err, Error::Open(..)), "{err}");
    assert!(err.to_string().contains("/nonexistent/app"));
}

#[test]
fn refuses_a_file_that_is_not_elf() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "#!/bin/sh\necho hello").unwrap();
    let err = GoBinary::analyse(f.path()).unwrap_err();
    assert!(matches!(err, Error::NotElf(_)), "{err}");
    assert!(err.to_string().contains("not an ELF executable"));
}

#[test]
fn refuses_an_elf_that_is_not_go() {
    let err = GoBinary::analyse("/bin/true".as_ref()).unwrap_err();
    assert!(matches!(err, Error::NotGo(..)), "{err}");
    assert!(err.to_string().contains("not a Go program"));
}

#[test]
fn refuses_go_older_than_1_23_naming_the_version() {
    let err = GoBinary::analyse(&fixture("spawner-go1.19")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::TooOld { .. }), "{msg}");
    assert!(
        msg.contains("go1.19") && msg.contains("Go 1.23 or newer"),
        "{msg}"
    );
}

#[test]
fn refuses_a_go_binary_without_runtime_functions() {
    // A copy of a Go binary whose runtime.newproc1 name is defaced in the
    // function name table: analysis must say which function is missing.
    let mut data = std::fs::read(fixture("spawner")).unwrap();
    let needle = b"runtime.newproc1\0";
    let at = data
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("name in pclntab");
    data[at + 8] = b'X';
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&data).unwrap();
    let err = GoBinary::analyse(f.path()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingRuntime {
                symbol: "runtime.newproc1",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_binaries_fail_cleanly() {
    let data = std::fs::read(fixture("spawner")).unwrap();
    for len in [0, 16, 64, 4096, data.len() / 3, data.len() / 2] {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data[..len]).unwrap();
        assert!(GoBinary::analyse(f.path()).is_err(), "truncated to {len}");
    }
}

#[test]
fn analyses_stripped_pie_cgo_and_newer_releases_alike() {
    use gmon_agent::gobin::{OffsetsSource, table};
    for name in e2e::SPAWNER_SHAPES {
        let bin = GoBinary::analyse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let stripped = name.contains("stripped");
        assert_eq!(bin.pie, name.contains("pie"), "{name}");
        assert_eq!(
            matches!(bin.offsets_source, OffsetsSource::Table { .. }),
            stripped,
            "{name}: {}",
            bin.offsets_source
        );
        // Whatever the source, the offsets are the release's.
        let row = table::lookup(bin.build.version).expect("release in the table");
        assert_eq!(bin.offsets, row.layout.probes, "{name}");
        // Every shape can be walked: the allgs addresses come from the
        // symbol table or, stripped, from runtime.allgadd's code; where
        // both exist they agree.
        let walk = bin.walk.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(walk.layout, row.layout, "{name}");
        let from_code = bin
            .allgs_from_code()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(walk.allgs, from_code, "{name}");
        assert!(
            bin.build_id.as_deref().is_some_and(|id| !id.is_empty()),
            "{name}"
        );
        let data = std::fs::read(&bin.path).unwrap();
        assert!(!bin.newproc1_rets.is_empty(), "{name}");
        for &off in &bin.newproc1_rets {
            assert_eq!(data[off as usize], 0xc3, "{name}: {off:#x} is not a RET");
        }
        // Symbols come from .gopclntab, so stripped binaries name functions
        // and lines exactly like the others.
        for func in ["main.shortWorker", "main.nestedParent", "runtime.goexit1"] {
            let entry = bin
                .function_entry(func)
                .unwrap_or_else(|| panic!("{name}: no {func}"));
            let f = bin.symbolize(entry + 1).unwrap();
            assert_eq!(f.function, func, "{name}");
            assert!(f.line.unwrap_or(0) > 0, "{name}: {func} has no line");
            if func.starts_with("main.") {
                assert!(f.file.unwrap().ends_with("spawner/main.go"), "{name}");
            }
        }
        assert_eq!(
            bin.file_offset(bin.function_entry("runtime.goexit1").unwrap())
                .unwrap(),
            bin.goexit1
        );
    }
}

#[test]
fn offsets_table_matches_the_dwarf_of_every_release_built_here() {
    use gmon_agent::gobin::table;
    for name in ["spawner", "spawner-go1.24", "spawner-go1.26"] {
        let (build, offsets) = GoBinary::dwarf_offsets(&fixture(name)).unwrap();
        let row = table::lookup(build.version).unwrap_or_else(|| {
            panic!(
                "{} missing: run scripts/gen-offsets.sh",
                build.version_string
            )
        });
        assert_eq!(
            row.layout, offsets,
            "stale table row for {}",
            build.version_string
        );
    }
}

#[test]
fn refuses_a_stripped_binary_of_a_release_the_table_lacks() {
    // The stripped spawner relabelled as go1.25.5 (same length) in a copy.
    let mut data = std::fs::read(fixture("spawner-stripped")).unwrap();
    let mut found = 0;
    while let Some(at) = data.windows(8).position(|w| w == b"go1.23.5") {
        data[at..at + 8].copy_from_slice(b"go1.25.5");
        found += 1;
    }
    assert!(found > 0, "no version string to relabel");
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&data).unwrap();
    let err = GoBinary::analyse(f.path()).unwrap_err();
    assert!(matches!(err, Error::UnknownRelease { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("go1.25.5") && msg.contains("1.23, 1.24, 1.26"),
        "{msg}"
    );
    assert!(msg.contains("scripts/gen-offsets.sh"), "{msg}");
}

#[test]
fn analysis_is_cached_per_device_inode_and_build_id() {
    use gmon_agent::gobin::Cache;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app");
    std::fs::copy(fixture("spawner"), &path).unwrap();
    let mut cache = Cache::default();
    let a = cache.get(&path).unwrap();
    let b = cache.get(&path).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b), "same file analysed twice");
    assert_eq!((cache.hits, cache.misses), (1, 1));
    // A redeploy: another binary at the same path (new inode, new build id).
    std::fs::remove_file(&path).unwrap();
    std::fs::copy(fixture("spawner-go1.24"), &path).unwrap();
    let c = cache.get(&path).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&a, &c));
    assert_eq!(c.build.version.minor, 24);
    assert_eq!((cache.len(), cache.misses), (2, 2));
    // Entries go once nobody holds them.
    drop((a, b));
    assert_eq!(cache.release_unused(), 1);
    assert_eq!(cache.len(), 1);
    drop(c);
    assert_eq!(cache.release_unused(), 1);
    assert!(cache.is_empty());
}

/// The emulated probe sites are found, and verified, in every fixture shape
/// (Go 1.23, 1.24, 1.26; stripped, PIE, cgo) and in the real binaries on
/// this machine; the instruction at each is a direct call or jump, which
/// the kernel emulates in the uprobe trap.
#[test]
fn finds_emulated_probe_sites_in_every_shape_and_real_binary() {
    use iced_x86::{Decoder, DecoderOptions, FlowControl};
    let mut paths: Vec<std::path::PathBuf> = e2e::SPAWNER_SHAPES
        .iter()
        .map(|n| fixture(n))
        .chain([fixture("httpserver"), fixture("churn")])
        .collect();
    for real in ["/usr/bin/kubectl", "/usr/local/bin/docker"] {
        if std::path::Path::new(real).exists() {
            paths.push(real.into());
        }
    }
    for path in paths {
        let bin = GoBinary::analyse(&path).unwrap();
        // Goroutines alive at attach can be read from every one of them.
        bin.walk
            .unwrap_or_else(|why| panic!("{}: {why}", path.display()));
        let sites = bin
            .emulated
            .unwrap_or_else(|why| panic!("{}: {why}", path.display()));
        let bytes = std::fs::read(&path).unwrap();
        for (what, off) in [("create", sites.create), ("exit", sites.exit)] {
            let insn = Decoder::new(64, &bytes[off as usize..], DecoderOptions::NONE).decode();
            assert!(
                matches!(
                    insn.flow_control(),
                    FlowControl::Call
                        | FlowControl::ConditionalBranch
                        | FlowControl::UnconditionalBranch
                ),
                "{}: {what} site at {off:#x} is {:?}",
                path.display(),
                insn.mnemonic()
            );
        }
        // The exit site is goexit1's second instruction.
        assert!(sites.exit > bin.goexit1 && sites.exit - bin.goexit1 <= 8);
        eprintln!(
            "{}: create {:#x} (RETs {:x?}), exit {:#x}",
            path.display(),
            sites.create,
            bin.newproc1_rets,
            sites.exit
        );
    }
}
