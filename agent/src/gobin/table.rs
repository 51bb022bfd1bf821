//! runtime.g offsets for binaries without DWARF, from the table that
//! scripts/gen-offsets.sh generates (goffsets.tsv, embedded at build time).
//! A release missing from the table is never probed with guessed offsets.

use super::{GLayout, GoVersion};
use agent_common::GOffsets;

const TABLE: &str = include_str!("goffsets.tsv");

/// One row: the offsets of a minor release and the toolchain they came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub major: u32,
    pub minor: u32,
    pub built_with: String,
    pub layout: GLayout,
}

/// Parses the table text; `Err` names the first bad line.
pub fn parse(text: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let bad = || format!("line {}: {line:?}", i + 1);
        let f: Vec<&str> = line.split('\t').collect();
        let [
            release,
            built_with,
            goid,
            parent,
            gopc,
            startpc,
            status,
            waitsince,
        ] = f[..]
        else {
            return Err(bad());
        };
        let v = GoVersion::parse(&format!("go{release}")).ok_or_else(bad)?;
        let n = |s: &str| s.parse::<u64>().map_err(|_| bad());
        let probes = GOffsets::new(n(goid)?, n(parent)?, n(gopc)?, n(startpc)?).ok_or_else(bad)?;
        rows.push(Row {
            major: v.major,
            minor: v.minor,
            built_with: built_with.to_owned(),
            layout: GLayout {
                probes,
                atomicstatus: n(status)?,
                waitsince: n(waitsince)?,
            },
        });
    }
    Ok(rows)
}

/// The embedded table.
pub fn rows() -> Vec<Row> {
    // A test checks the embedded table parses.
    parse(TABLE).unwrap_or_default()
}

/// The row for `v`'s minor release.
pub fn lookup(v: GoVersion) -> Option<Row> {
    rows()
        .into_iter()
        .find(|r| (r.major, r.minor) == (v.major, v.minor))
}

/// Releases the table covers, e.g. "1.23, 1.24".
pub fn releases() -> String {
    let r: Vec<String> = rows()
        .iter()
        .map(|r| format!("{}.{}", r.major, r.minor))
        .collect();
    r.join(", ")
}

/// The comment block that opens the table file.
pub fn header() -> String {
    TABLE
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A table row for a binary with DWARF (what the generator prints).
pub fn format_row(v: GoVersion, built_with: &str, l: &GLayout) -> String {
    let o = &l.probes;
    format!(
        "{}.{}\t{built_with}\t{}\t{}\t{}\t{}\t{}\t{}",
        v.major, v.minor, o.goid, o.parent_goid, o.gopc, o.startpc, l.atomicstatus, l.waitsince
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_table_parses_and_covers_1_23() {
        let rows = parse(TABLE).unwrap();
        assert!(
            rows.iter().any(|r| (r.major, r.minor) == (1, 23)),
            "{rows:?}"
        );
    }

    #[test]
    fn bad_rows_are_reported_with_their_line() {
        assert!(
            parse("1.23\tgo1.23.5\t160\t280\t288\t304\t144\n")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(
            parse("# c\n1.x\tgo\t8\t16\t24\t32\t40\t48\n")
                .unwrap_err()
                .contains("line 2")
        );
        // Offsets that are not 8-aligned are refused like DWARF ones.
        assert!(parse("1.23\tgo1.23.5\t161\t280\t288\t304\t144\t176\n").is_err());
    }
}
