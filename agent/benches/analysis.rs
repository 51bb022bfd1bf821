//! Analysis benchmark (no root): time and memory to analyse a large Go
//! binary, by default the machine's kubectl (~60 MB, stripped, so runtime.g
//! offsets come from the table and every name from .gopclntab).
//!
//! Run: cargo bench -p agent --bench analysis   (BIN=/path to change, REPS=N)

use gmon_agent::gobin::GoBinary;
use std::time::Instant;

/// (RSS, anonymous RSS) of this process in KiB.
fn rss_kib() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

fn main() {
    let bin = std::env::var("BIN").unwrap_or_else(|_| "/usr/bin/kubectl".into());
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let path = std::fs::canonicalize(&bin).unwrap_or_else(|e| panic!("{bin}: {e}"));
    let size = std::fs::metadata(&path).unwrap().len();
    let mut times = Vec::new();
    let (rss0, anon0) = rss_kib();
    let mut peak = (0, 0);
    for _ in 0..reps {
        let t = Instant::now();
        let b = GoBinary::analyse(&path).unwrap_or_else(|e| panic!("{e}"));
        // Symbolize something, as the agent does right after analysis.
        let main = b.function_entry("main.main").expect("main.main");
        assert!(b.symbolize(main + 1).is_some());
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let (rss, anon) = rss_kib();
        peak = (peak.0.max(rss - rss0), peak.1.max(anon - anon0));
        if times.len() == 1 {
            println!(
                "{}: {:.1} MB, {}, offsets from {}, {} newproc1 RETs, inline trees {}",
                path.display(),
                size as f64 / 1e6,
                b.build.version_string,
                b.offsets_source,
                b.newproc1_rets.len(),
                if b.has_inline_info() {
                    "found"
                } else {
                    "not found"
                }
            );
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "  analyse + first symbolization: median {:.1} ms, min {:.1} ms, max {:.1} ms ({reps} runs)",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    println!(
        "  extra memory while analysed: RSS {:.1} MiB (of which anonymous {:.1} MiB; the rest is the file's mapped pages)",
        peak.0 as f64 / 1024.0,
        peak.1 as f64 / 1024.0
    );
}
