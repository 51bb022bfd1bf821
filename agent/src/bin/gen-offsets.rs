//! Prints the runtime.g offsets table (goffsets.tsv) from the DWARF of Go
//! binaries, one per release: `gen-offsets BIN...`. Used by
//! scripts/gen-offsets.sh; two binaries of one minor release must agree.

use gmon_agent::gobin::{GoBinary, table};
use std::collections::BTreeMap;

fn main() -> anyhow::Result<()> {
    let mut rows: BTreeMap<(u32, u32), (String, String)> = BTreeMap::new();
    for path in std::env::args_os().skip(1) {
        let (build, offsets) = GoBinary::dwarf_offsets(path.as_ref())?;
        let v = build.version;
        let row = table::format_row(v, &build.version_string, &offsets);
        let values = row.split('\t').skip(2).collect::<Vec<_>>().join("\t");
        if let Some((other, seen)) = rows.get(&(v.major, v.minor)) {
            anyhow::ensure!(
                *seen == values,
                "{} and {other} disagree on runtime.g offsets for go{}.{}",
                build.version_string,
                v.major,
                v.minor
            );
            continue;
        }
        rows.insert((v.major, v.minor), (build.version_string.clone(), values));
    }
    anyhow::ensure!(
        !rows.is_empty(),
        "usage: gen-offsets GO-BINARY-WITH-DWARF..."
    );
    print!("{}", table::header());
    for ((major, minor), (built_with, values)) in rows {
        println!("{major}.{minor}\t{built_with}\t{values}");
    }
    Ok(())
}
