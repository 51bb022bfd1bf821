//! runtime.g field offsets from the binary's DWARF. They move between Go
//! releases (goid moved in 1.23), so we read them rather than assume them.

use super::GLayout;
use agent_common::GOffsets;
use gimli::{EndianSlice, LittleEndian};
use object::{Object, ObjectSection};
use std::borrow::Cow;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the binary has no DWARF debug information (built with -w or stripped)")]
    NoDwarf,
    #[error("DWARF is unreadable: {0}")]
    Gimli(#[from] gimli::Error),
    #[error("DWARF section {0} cannot be decompressed: {1}")]
    Section(String, object::Error),
    #[error("DWARF has no runtime.g type")]
    NoRuntimeG,
    #[error("runtime.g in DWARF has no field {0}")]
    MissingField(&'static str),
    #[error(
        "runtime.g's goid, parentGoid, gopc and startpc span more than {} bytes or are not 8-aligned",
        agent_common::G_WINDOW
    )]
    Spread,
}

/// Fields of runtime.g the probes read, in `GOffsets` order, then those
/// only the attach walk reads.
const FIELDS: [&str; 6] = [
    "goid",
    "parentGoid",
    "gopc",
    "startpc",
    "atomicstatus",
    "waitsince",
];

/// Reads the offsets of the runtime.g fields the probes and the attach
/// walk need.
pub fn g_offsets(file: &object::File<'_>) -> Result<GLayout, Error> {
    if file.section_by_name(".debug_info").is_none() {
        return Err(Error::NoDwarf);
    }
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, Error> {
        match file.section_by_name(id.name()) {
            Some(s) => s
                .uncompressed_data()
                .map_err(|e| Error::Section(id.name().to_owned(), e)),
            None => Ok(Cow::Borrowed(&[][..])),
        }
    };
    let sections = gimli::DwarfSections::load(load)?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, LittleEndian));

    let mut found = [None; 6];
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut tree = unit.entries_tree(None)?;
        let root = tree.root()?;
        let mut children = root.children();
        while let Some(node) = children.next()? {
            let e = node.entry();
            if e.tag() != gimli::DW_TAG_structure_type || !name_is(&dwarf, &unit, e, "runtime.g")? {
                continue;
            }
            let mut members = node.children();
            while let Some(m) = members.next()? {
                let m = m.entry();
                if m.tag() != gimli::DW_TAG_member {
                    continue;
                }
                for (i, field) in FIELDS.iter().enumerate() {
                    if found[i].is_none()
                        && name_is(&dwarf, &unit, m, field)?
                        && let Some(gimli::AttributeValue::Udata(off)) =
                            m.attr_value(gimli::DW_AT_data_member_location)?
                    {
                        found[i] = Some(off);
                    }
                }
            }
            let mut v = [0; 6];
            for (i, f) in found.iter().enumerate() {
                v[i] = f.ok_or(Error::MissingField(FIELDS[i]))?;
            }
            let [goid, parent_goid, gopc, startpc, atomicstatus, waitsince] = v;
            return Ok(GLayout {
                probes: GOffsets::new(goid, parent_goid, gopc, startpc).ok_or(Error::Spread)?,
                atomicstatus,
                waitsince,
            });
        }
    }
    Err(Error::NoRuntimeG)
}

type Reader<'a> = EndianSlice<'a, LittleEndian>;

fn name_is(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    unit: &gimli::Unit<Reader<'_>>,
    e: &gimli::DebuggingInformationEntry<Reader<'_>>,
    want: &str,
) -> Result<bool, Error> {
    Ok(match e.attr_value(gimli::DW_AT_name)? {
        Some(v) => dwarf.attr_string(unit, v)?.slice() == want.as_bytes(),
        None => false,
    })
}
