//! Bounded-time fuzzing of the two binary parsers that read untrusted bytes
//! (.gopclntab and .go.buildinfo), seeded with the real sections of every
//! fixture shape and mutated at random: any input must give a value or an
//! error, never a panic or a hang. FUZZ_SECS (default 2) per target.

use e2e::fixture;
use gmon_agent::gobin::{buildinfo, pclntab::Pclntab};
use object::{Object, ObjectSection};
use std::time::{Duration, Instant};

/// xorshift64*: deterministic per seed, so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn budget() -> Duration {
    let secs = std::env::var("FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

/// The named section of each fixture shape.
fn seeds(section: &str) -> Vec<Vec<u8>> {
    [
        "spawner",
        "spawner-pie-stripped",
        "spawner-go1.24",
        "spawner-go1.26",
        "httpserver",
    ]
    .iter()
    .filter_map(|name| {
        let data = std::fs::read(fixture(name)).unwrap();
        let file = object::File::parse(&*data).unwrap();
        Some(file.section_by_name(section)?.data().ok()?.to_vec())
    })
    .collect()
}

/// One random mutation: flip bytes, overwrite a word with an extreme
/// value, truncate, or splice a chunk elsewhere.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    if input.is_empty() {
        input.push(rng.next() as u8);
        return;
    }
    match rng.below(5) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            // Header fields and table offsets live near the start.
            let i = rng.below(input.len().min(256)) & !3;
            let v: u32 = [0, u32::MAX, 0x7fff_ffff, rng.next() as u32][rng.below(4)];
            for (k, b) in v.to_le_bytes().iter().enumerate() {
                if let Some(x) = input.get_mut(i + k) {
                    *x = *b;
                }
            }
        }
        2 => input.truncate(rng.below(input.len())),
        3 => {
            let i = rng.below(input.len());
            input[i] = rng.next() as u8;
        }
        _ => {
            let (a, b) = (rng.below(input.len()), rng.below(input.len()));
            let n = rng.below(64).min(input.len() - a.max(b));
            input.copy_within(a..a + n, b);
        }
    }
}

fn fuzz(name: &str, seeds: Vec<Vec<u8>>, mut target: impl FnMut(&[u8])) {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (start, mut runs) = (Instant::now(), 0u64);
    while start.elapsed() < budget() {
        let mut input = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut input);
        }
        target(&input);
        runs += 1;
    }
    eprintln!("{name}: {runs} inputs in {:?}", start.elapsed());
    assert!(runs > 100, "{name}: only {runs} runs");
}

#[test]
fn pclntab_reader_never_panics() {
    fuzz("pclntab", seeds(".gopclntab"), |b| {
        let Ok(mut t) = Pclntab::parse(b, 0..b.len(), 0x401000) else {
            return;
        };
        // Inline trees are read relative to a base outside the table; any
        // base must be safe.
        t.set_gofunc(b.len() / 2);
        // Walk what a corrupt table claims; every accessor is checked.
        for f in t.funcs().take(300) {
            let _ = t.name(&f);
            let _ = t.line(&f, f.entry);
            let _ = t.frames(&f, f.entry + 1);
            let _ = t.line(&f, f.entry + (f.end.saturating_sub(f.entry)) / 2);
            let _ = t.func_for_pc(f.entry);
        }
        let _ = t.find("runtime.newproc1");
    });
}

#[test]
fn buildinfo_parser_never_panics() {
    fuzz("buildinfo", seeds(".go.buildinfo"), |b| {
        let _ = buildinfo::parse(b);
    });
}
