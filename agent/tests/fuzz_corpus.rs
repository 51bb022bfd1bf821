//! The fuzzers' inputs, replayed through the same entry points in bounded
//! time (the coverage-guided runs themselves need nightly and cargo fuzz:
//! agent/fuzz, README's Tests): every committed corpus file of each
//! target, and seeds made from every fixture shape. Any input must give a
//! value or an error, never a panic. With FUZZ_SEEDS_OUT=DIR the seeds are
//! written to DIR/<target>/ for `cargo fuzz run`.

use e2e::fixture;
use gmon_agent::gobin::{GoBinary, fuzz};
use object::{Object, ObjectSection};
use std::path::PathBuf;

// Any single allocation over fuzz::ALLOC_CAP aborts the test, as it does
// the fuzzers.
#[global_allocator]
static ALLOC: fuzz::CappedAlloc = fuzz::CappedAlloc;

type Target = (&'static str, fn(&[u8]));
const TARGETS: [Target; 5] = [
    ("analyse", fuzz::analyse),
    ("pclntab", fuzz::pclntab),
    ("buildinfo", fuzz::buildinfo),
    ("dwarf", fuzz::dwarf),
    ("code", fuzz::code),
];

/// Seeds per target from the fixtures (and the real binaries, if here).
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = e2e::SPAWNER_SHAPES.iter().map(|s| fixture(s)).collect();
    paths.push(fixture("httpserver"));
    for path in paths {
        let data = std::fs::read(&path).unwrap();
        let file = object::File::parse(&*data).unwrap();
        for (target, section) in [
            ("pclntab", ".gopclntab"),
            ("pclntab", ".data.rel.ro.gopclntab"),
            ("buildinfo", ".go.buildinfo"),
        ] {
            if let Some(d) = file.section_by_name(section).and_then(|s| s.data().ok()) {
                out.push((target, d.to_vec()));
            }
        }
        let bin = GoBinary::analyse(&path).unwrap();
        for name in ["runtime.newproc1", "runtime.goexit1", "runtime.allgadd"] {
            if let Some((_, code)) = bin.function_code(name) {
                let mut seed = bin.offsets.goid.to_le_bytes().to_vec();
                seed.extend_from_slice(code);
                out.push(("code", seed));
            }
        }
        out.push(("analyse", data.clone()));
        out.push(("dwarf", data));
    }
    out
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = e2e::repo_root().join("agent/fuzz/corpus").join(target);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .collect()
}

#[test]
fn every_corpus_input_and_seed_is_handled() {
    let seeds = seeds();
    if let Some(out) = std::env::var_os("FUZZ_SEEDS_OUT") {
        for (i, (target, data)) in seeds.iter().enumerate() {
            let dir = PathBuf::from(&out).join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{i}")), data).unwrap();
        }
    }
    let mut replayed = 0;
    for (name, f) in TARGETS {
        for input in corpus(name) {
            f(&input);
            replayed += 1;
        }
        for (_, s) in seeds.iter().filter(|(t, _)| *t == name) {
            f(s);
            // Truncated at a few points: most malformed files are that.
            for cut in [s.len() / 2, s.len() / 7, 64] {
                f(&s[..cut.min(s.len())]);
            }
        }
    }
    eprintln!("{replayed} corpus inputs replayed, {} seeds", seeds.len());
}
