//! Binary analysed: everything gmon-agent needs to know about one Go
//! executable before it can probe it — release, runtime.g layout, probe
//! sites (as file offsets) and a symbolizer for its PCs.
//!
//! Over 400 lines on purpose: this is the one place that orders the
//! analysis of a binary (ELF, buildinfo, pclntab, offsets, sites) and its
//! refusals; each format's parser lives in a submodule.

pub mod allgs;
pub mod buildinfo;
pub mod cache;
pub mod dwarf;
pub mod fuzz;
pub mod pclntab;
pub mod ret;
pub mod sites;
pub mod table;

use agent_common::GOffsets;
use memmap2::Mmap;
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

pub use buildinfo::{BuildInfo, GoVersion};
pub use cache::Cache;

/// Oldest Go release whose runtime layout gmon-agent supports.
pub const MIN_GO: GoVersion = GoVersion {
    major: 1,
    minor: 23,
    patch: 0,
};

const NEWPROC1: &str = "runtime.newproc1";
const GOEXIT1: &str = "runtime.goexit1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {0}: {1}; check that the path exists and is readable")]
    Open(PathBuf, std::io::Error),
    #[error(
        "{0} is not an ELF executable, or a truncated or corrupt one; pass the path of a compiled Go program"
    )]
    NotElf(PathBuf),
    #[error("{0} is not an x86-64 executable; gmon-agent supports amd64 only")]
    NotAmd64(PathBuf),
    #[error("{0} is not a Go program: {1}")]
    NotGo(PathBuf, buildinfo::Error),
    #[error(
        "{path} was built with {found}; gmon-agent needs Go 1.23 or newer: rebuild it with a newer Go toolchain"
    )]
    TooOld { path: PathBuf, found: String },
    #[error("{0} has no Go function table (.gopclntab): {1}")]
    Pclntab(PathBuf, String),
    #[error(
        "{path} has no {symbol} function; it is not a complete Go executable (a plugin or a corrupt file?)"
    )]
    MissingRuntime { path: PathBuf, symbol: &'static str },
    #[error("{path}: {symbol} has no RET instruction to probe")]
    NoRet { path: PathBuf, symbol: &'static str },
    #[error("{0}: address {1:#x} is not in any loadable segment")]
    Unmapped(PathBuf, u64),
    #[error("{0}: cannot read runtime.g field offsets from DWARF: {1}")]
    Offsets(PathBuf, dwarf::Error),
    #[error(
        "{path} has no DWARF and was built with {found}, which gmon-agent's offsets table does not cover (it has {known}); rebuild without -w, or add the release with scripts/gen-offsets.sh"
    )]
    UnknownRelease {
        path: PathBuf,
        found: String,
        known: String,
    },
}

impl Error {
    /// A short label for why, as `gmon_agent_attach_failures_total{reason}`
    /// counts it.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Open(..) => "open",
            Error::NotElf(_) => "bad_elf",
            Error::NotAmd64(_) => "not_amd64",
            Error::NotGo(_, buildinfo::Error::Missing) => "not_go",
            Error::NotGo(..) => "bad_buildinfo",
            Error::TooOld { .. } => "too_old",
            Error::Pclntab(..) => "bad_pclntab",
            Error::MissingRuntime { .. } => "missing_runtime",
            Error::NoRet { .. } => "no_ret",
            Error::Unmapped(..) => "unmapped",
            Error::Offsets(..) => "bad_dwarf",
            Error::UnknownRelease { .. } => "unknown_release",
        }
    }
}

/// The runtime.g fields gmon-agent reads: the probes' (`GOffsets`, shared
/// with the kernel) and those only the attach walk reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GLayout {
    pub probes: GOffsets,
    /// runtime.g.atomicstatus (uint32): _Gdead goroutines are not live.
    pub atomicstatus: u64,
    /// runtime.g.waitsince (int64, nanotime): set by the GC on a blocked g.
    pub waitsince: u64,
}

/// What reading a process's live goroutines from its memory needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    pub allgs: allgs::AllGs,
    pub layout: GLayout,
}

/// Where a binary's runtime.g offsets came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffsetsSource {
    /// The binary's own DWARF.
    Dwarf,
    /// The offsets table row generated from this toolchain's DWARF.
    Table { built_with: String },
}

impl std::fmt::Display for OffsetsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OffsetsSource::Dwarf => f.write_str("dwarf"),
            OffsetsSource::Table { built_with } => write!(f, "table({built_with})"),
        }
    }
}

/// The binary's `.go.buildinfo`. A section whose header points outside
/// the file is corrupt, not missing: a damaged Go binary is reported, not
/// passed over as a C program.
fn read_buildinfo(file: &object::File<'_>) -> Result<BuildInfo, buildinfo::Error> {
    let section = file
        .section_by_name(".go.buildinfo")
        .ok_or(buildinfo::Error::Missing)?;
    buildinfo::parse(section.data().map_err(|_| buildinfo::Error::Corrupt)?)
}

/// Link-time address of the start of Go's text, for a `.gopclntab` whose
/// header leaves it to a dynamic relocation (PIE). Stripped binaries have no
/// runtime.text symbol, and with cgo `.text` starts with C code, so the
/// relocation of the header field itself is the reliable source.
fn text_start(file: &object::File<'_>, pclntab_vaddr: u64) -> u64 {
    let field = pclntab_vaddr + 8 + 2 * 8;
    if let Some(mut relocs) = file.dynamic_relocations()
        && let Some((_, r)) = relocs.find(|(off, _)| *off == field)
    {
        return r.addend() as u64;
    }
    file.symbols()
        .find(|s| s.name() == Ok("runtime.text"))
        .map(|s| s.address())
        .or_else(|| file.section_by_name(".text").map(|s| s.address()))
        .unwrap_or(0)
}

/// The `.gopclntab` as (file range, link-time address). Internally linked
/// binaries keep it in its own section; the external (cgo) linker merges it
/// into `.data.rel.ro`, and without symbols it is found by its header: the
/// Go 1.18+ magic, two zero bytes, PC quantum 1 and pointer size 8.
fn find_pclntab(file: &object::File<'_>) -> Option<((u64, u64), u64)> {
    for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
        if let Some(s) = file.section_by_name(name)
            && let Some(range) = s.file_range()
        {
            return Some((range, s.address()));
        }
    }
    if let Some(sym) = file.symbols().find(|s| s.name() == Ok("runtime.pclntab")) {
        let sect = file.section_by_index(sym.section_index()?).ok()?;
        let (off, size) = sect.file_range()?;
        let start = sym.address() - sect.address();
        return Some(((off + start, size - start), sym.address()));
    }
    const HEADERS: [[u8; 8]; 2] = [
        [0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8],
        [0xf0, 0xff, 0xff, 0xff, 0, 0, 1, 8],
    ];
    for name in [".data.rel.ro", ".rodata", ".noptrdata"] {
        let Some(s) = file.section_by_name(name) else {
            continue;
        };
        let (Ok(data), Some((off, size))) = (s.data(), s.file_range()) else {
            continue;
        };
        // The header is pointer-aligned; check each candidate by parsing it.
        for at in (0..data.len().saturating_sub(8)).step_by(8) {
            if HEADERS.iter().any(|h| data[at..at + 8] == *h) {
                let range = at..data.len();
                if pclntab::Pclntab::parse(data, range, 0).is_ok_and(|t| !t.is_empty()) {
                    return Some(((off + at as u64, size - at as u64), s.address() + at as u64));
                }
            }
        }
    }
    None
}

/// The build id of the file at `path` (cheap: maps it and reads one note).
pub fn read_build_id(path: &Path) -> std::io::Result<Option<String>> {
    let f = std::fs::File::open(path)?;
    // SAFETY: read-only private map of a regular file.
    let map = unsafe { Mmap::map(&f) }?;
    Ok(object::File::parse(&*map)
        .ok()
        .and_then(|file| build_id(&file)))
}

/// Offsets in runtime.moduledata (Go 1.20 through 1.26, checked by the
/// tests against every release built here).
const MODULEDATA_FUNCNAMETAB: u64 = 8;
const MODULEDATA_TEXT: u64 = 176;
const MODULEDATA_GOFUNC: u64 = 320;

/// moduledata.gofunc, the base funcdata offsets (inline trees) are relative
/// to. The moduledata is the one structure whose first word points at the
/// pclntab and whose funcnametab and text fields agree with it; in PIE its
/// pointers are dynamic relocations, so both the file bytes and the
/// relocations are searched.
fn moduledata_gofunc(
    file: &object::File<'_>,
    pclntab_vaddr: u64,
    funcnames_off: usize,
    text_start: u64,
) -> Option<u64> {
    let relocs: std::collections::HashMap<u64, u64> = file
        .dynamic_relocations()
        .map(|r| r.map(|(off, r)| (off, r.addend() as u64)).collect())
        .unwrap_or_default();
    let data_sections: Vec<_> = file
        .sections()
        .filter(|s| {
            s.file_range().is_some()
                && matches!(
                    s.kind(),
                    object::SectionKind::Data | object::SectionKind::ReadOnlyData
                )
        })
        .collect();
    let word = |vaddr: u64| -> Option<u64> {
        if let Some(&v) = relocs.get(&vaddr) {
            return Some(v);
        }
        let s = data_sections
            .iter()
            .find(|s| vaddr >= s.address() && vaddr + 8 <= s.address() + s.size())?;
        let d = s.data().ok()?;
        let at = (vaddr - s.address()) as usize;
        Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
    };
    let is_moduledata = |md: u64| {
        word(md + MODULEDATA_FUNCNAMETAB) == Some(pclntab_vaddr + funcnames_off as u64)
            && word(md + MODULEDATA_TEXT) == Some(text_start)
    };
    let mut candidates: Vec<u64> = relocs
        .iter()
        .filter(|&(_, &v)| v == pclntab_vaddr)
        .map(|(&off, _)| off)
        .collect();
    for s in data_sections
        .iter()
        .filter(|s| s.kind() == object::SectionKind::Data)
    {
        let Ok(d) = s.data() else { continue };
        let needle = pclntab_vaddr.to_le_bytes();
        candidates.extend(
            (0..d.len().saturating_sub(8))
                .step_by(8)
                .filter(|&i| d[i..i + 8] == needle)
                .map(|i| s.address() + i as u64),
        );
    }
    let md = candidates.into_iter().find(|&md| is_moduledata(md))?;
    word(md + MODULEDATA_GOFUNC)
}

/// The GNU build id in hex, else the Go build id from `.note.go.buildid`.
fn build_id(file: &object::File<'_>) -> Option<String> {
    if let Ok(Some(id)) = file.build_id() {
        return Some(id.iter().map(|b| format!("{b:02x}")).collect());
    }
    // An ELF note: namesz, descsz, type (4 bytes each), "Go\0\0", desc.
    let note = file.section_by_name(".note.go.buildid")?.data().ok()?;
    let descsz = u32::from_le_bytes(note.get(4..8)?.try_into().ok()?) as usize;
    let desc = note.get(16..16 + descsz)?;
    Some(String::from_utf8_lossy(desc).into_owned())
}

/// Identity of a binary on disk: a rebuilt file at the same path has a new
/// inode, so analysis is never reused for different contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BinaryId {
    pub dev: u64,
    pub ino: u64,
}

impl BinaryId {
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(BinaryId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// A loadable segment: where file bytes land in the address space.
#[derive(Clone, Copy, Debug)]
struct Segment {
    vaddr: u64,
    offset: u64,
    filesz: u64,
}

/// A resolved PC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

impl std::fmt::Debug for GoBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoBinary")
            .field("path", &self.path)
            .field("id", &self.id)
            .field("go", &self.build.version_string)
            .field("pie", &self.pie)
            .finish_non_exhaustive()
    }
}

/// File offsets of the emulated probe sites of one binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmulatedSites {
    /// The first branch after newproc1 stores the new goid (new g in RAX).
    pub create: u64,
    /// goexit1's prologue jbe (exiting g in R14).
    pub exit: u64,
}

/// Result of analysing one Go executable.
pub struct GoBinary {
    pub path: PathBuf,
    pub id: BinaryId,
    /// GNU build id (hex) if the linker wrote one, else the Go build id.
    pub build_id: Option<String>,
    pub build: BuildInfo,
    pub offsets: GOffsets,
    pub offsets_source: OffsetsSource,
    /// How to find its goroutines in a process's memory; else why not.
    pub walk: Result<Walk, &'static str>,
    /// File offsets of every RET in runtime.newproc1.
    pub newproc1_rets: Vec<u64>,
    /// File offset of runtime.goexit1's entry.
    pub goexit1: u64,
    /// Creation and exit sites whose instructions the kernel emulates (see
    /// `sites`), where this binary's code has the expected shape; else why not.
    pub emulated: Result<EmulatedSites, sites::Mismatch>,
    /// True for position-independent executables (ET_DYN).
    pub pie: bool,
    segments: Vec<Segment>,
    symbols: pclntab::Pclntab<Mmap>,
}

impl GoBinary {
    /// Analyses the executable at `path`.
    pub fn analyse(path: &Path) -> Result<Self, Error> {
        let p = || path.to_path_buf();
        let f = std::fs::File::open(path).map_err(|e| Error::Open(p(), e))?;
        let meta = f.metadata().map_err(|e| Error::Open(p(), e))?;
        if !meta.is_file() {
            return Err(Error::NotElf(p()));
        }
        let id = BinaryId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        // SAFETY: a read-only private map; running executables cannot be
        // written in place (ETXTBSY), replacement creates a new inode.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::Open(p(), e))?;
        let file = object::File::parse(&*map).map_err(|_| Error::NotElf(p()))?;
        if file.format() != object::BinaryFormat::Elf {
            return Err(Error::NotElf(p()));
        }
        if file.architecture() != object::Architecture::X86_64 {
            return Err(Error::NotAmd64(p()));
        }
        let build = match read_buildinfo(&file) {
            Ok(b) => b,
            Err(buildinfo::Error::PreGo118) => {
                return Err(Error::TooOld {
                    path: p(),
                    found: "a Go release before 1.18".into(),
                });
            }
            Err(e) => return Err(Error::NotGo(p(), e)),
        };
        if build.version < MIN_GO {
            return Err(Error::TooOld {
                path: p(),
                found: build.version_string.clone(),
            });
        }
        let pie = file.kind() == object::ObjectKind::Dynamic;
        let segments: Vec<Segment> = file
            .segments()
            .map(|s| {
                let (offset, filesz) = s.file_range();
                Segment {
                    vaddr: s.address(),
                    offset,
                    filesz,
                }
            })
            .collect();

        let (pcln, pcln_vaddr) =
            find_pclntab(&file).ok_or_else(|| Error::Pclntab(p(), "not found".into()))?;
        let text_start = text_start(&file, pcln_vaddr);
        let build_id = build_id(&file);
        let symbol_allgs = allgs::from_symbols(&file);
        let offsets = match dwarf::g_offsets(&file) {
            Ok(o) => Ok((o, OffsetsSource::Dwarf)),
            Err(dwarf::Error::NoDwarf) => match table::lookup(build.version) {
                Some(row) => Ok((
                    row.layout,
                    OffsetsSource::Table {
                        built_with: row.built_with,
                    },
                )),
                None => Err(Error::UnknownRelease {
                    path: p(),
                    found: build.version_string.clone(),
                    known: table::releases(),
                }),
            },
            Err(e) => Err(Error::Offsets(p(), e)),
        };
        drop(file);
        let range = pcln.0 as usize..(pcln.0 + pcln.1) as usize;
        let symbols = pclntab::Pclntab::parse(map, range, text_start)
            .map_err(|e| Error::Pclntab(p(), e.to_string()))?;
        let (layout, offsets_source) = offsets?;
        let file = object::File::parse(symbols.data().as_ref()).map_err(|_| Error::NotElf(p()))?;
        let gofunc = moduledata_gofunc(
            &file,
            pcln_vaddr,
            symbols.funcnames_offset(),
            symbols.text_start(),
        );
        drop(file);

        let mut bin = GoBinary {
            path: p(),
            id,
            build_id,
            build,
            offsets: layout.probes,
            offsets_source,
            walk: Err("not analysed"),
            newproc1_rets: Vec::new(),
            goexit1: 0,
            emulated: Err("not analysed"),
            pie,
            segments,
            symbols,
        };
        let missing = |symbol| Error::MissingRuntime { path: p(), symbol };
        let newproc1 = bin
            .symbols
            .find(NEWPROC1)
            .ok_or_else(|| missing(NEWPROC1))?;
        let goexit1 = bin.symbols.find(GOEXIT1).ok_or_else(|| missing(GOEXIT1))?;
        let code_off = bin.file_offset(newproc1.entry)?;
        let code = bin
            .file_bytes(code_off, newproc1.end - newproc1.entry)
            .ok_or(Error::Unmapped(p(), newproc1.entry))?;
        let rets = ret::ret_addresses(code, newproc1.entry);
        let create = sites::creation_site(code, newproc1.entry, bin.offsets.goid);
        if rets.is_empty() {
            return Err(Error::NoRet {
                path: p(),
                symbol: NEWPROC1,
            });
        }
        bin.newproc1_rets = rets
            .into_iter()
            .map(|a| bin.file_offset(a))
            .collect::<Result<_, _>>()?;
        bin.goexit1 = bin.file_offset(goexit1.entry)?;
        let exit_off = bin.file_offset(goexit1.entry)?;
        let exit = bin
            .file_bytes(exit_off, (goexit1.end - goexit1.entry).min(16))
            .ok_or("goexit1 is not in the file")
            .and_then(|c| sites::exit_site(c, goexit1.entry));
        bin.emulated = match (create, exit) {
            (Ok(c), Ok(e)) => Ok(EmulatedSites {
                create: bin.file_offset(c)?,
                exit: bin.file_offset(e)?,
            }),
            (Err(why), _) | (_, Err(why)) => Err(why),
        };
        bin.walk = match symbol_allgs {
            Some(a) => Ok(a),
            None => bin.allgs_from_code(),
        }
        .map(|allgs| Walk { allgs, layout });
        // Inline trees need the funcdata base; without it frames are the
        // physical functions only.
        if let Some(off) = gofunc.and_then(|g| bin.file_offset(g).ok()) {
            bin.symbols.set_gofunc(off as usize);
        }
        Ok(bin)
    }

    /// runtime.allglen and allgptr from runtime.allgadd's code.
    pub fn allgs_from_code(&self) -> Result<allgs::AllGs, &'static str> {
        let f = self
            .symbols
            .find(allgs::ALLGADD)
            .ok_or("no runtime.allgadd function")?;
        let code = self
            .file_offset(f.entry)
            .ok()
            .and_then(|off| self.file_bytes(off, f.end - f.entry))
            .ok_or("runtime.allgadd is not in the file")?;
        allgs::from_allgadd(code, f.entry)
    }

    /// Release and runtime.g layout from the binary's DWARF, for the
    /// offsets table generator. Needs no probe sites or symbols.
    pub fn dwarf_offsets(path: &Path) -> Result<(BuildInfo, GLayout), Error> {
        let p = || path.to_path_buf();
        let data = std::fs::read(path).map_err(|e| Error::Open(p(), e))?;
        let file = object::File::parse(&*data).map_err(|_| Error::NotElf(p()))?;
        let build = read_buildinfo(&file).map_err(|e| Error::NotGo(p(), e))?;
        let offsets = dwarf::g_offsets(&file).map_err(|e| Error::Offsets(p(), e))?;
        Ok((build, offsets))
    }

    /// File offset of link-time address `vaddr` (what a uprobe is placed by).
    pub fn file_offset(&self, vaddr: u64) -> Result<u64, Error> {
        self.segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr < s.vaddr + s.filesz)
            .map(|s| vaddr - s.vaddr + s.offset)
            .ok_or(Error::Unmapped(self.path.clone(), vaddr))
    }

    fn file_bytes(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let map: &[u8] = self.symbols.data();
        map.get(offset as usize..(offset + len) as usize)
    }

    /// Load bias of a process that mapped file offset `pgoff` at `start`:
    /// what to subtract from its runtime addresses to get link-time ones.
    pub fn load_bias(&self, start: u64, pgoff: u64) -> Option<u64> {
        let seg = self
            .segments
            .iter()
            .find(|s| pgoff >= s.offset && pgoff < s.offset + s.filesz.max(1))?;
        start
            .checked_sub(pgoff)?
            .checked_sub(seg.vaddr - seg.offset)
    }

    /// Resolves a link-time PC to its function and source position.
    pub fn symbolize(&self, pc: u64) -> Option<Frame> {
        let f = self.symbols.func_for_pc(pc)?;
        let function = self.symbols.name(&f)?.to_owned();
        let (file, line) = match self.symbols.line(&f, pc) {
            Some((file, line)) => (Some(file.to_owned()), Some(line)),
            None => (None, None),
        };
        Some(Frame {
            function,
            file,
            line,
        })
    }

    /// Every source-level frame of a link-time PC, innermost first: calls
    /// the compiler inlined at `pc`, then the function that holds it.
    pub fn symbolize_inline(&self, pc: u64) -> Vec<Frame> {
        let Some(f) = self.symbols.func_for_pc(pc) else {
            return Vec::new();
        };
        self.symbols
            .frames(&f, pc)
            .into_iter()
            .map(|s| Frame {
                function: s.function.to_owned(),
                file: s.file.map(str::to_owned),
                line: s.line,
            })
            .collect()
    }

    /// Whether inline trees were located (moduledata found).
    pub fn has_inline_info(&self) -> bool {
        self.symbols.has_inline_info()
    }

    /// The named function's entry address and code (for tests and the
    /// fuzzers' seeds).
    pub fn function_code(&self, name: &str) -> Option<(u64, &[u8])> {
        let f = self.symbols.find(name)?;
        let off = self.file_offset(f.entry).ok()?;
        Some((f.entry, self.file_bytes(off, f.end - f.entry)?))
    }

    /// Entry address of the named function (for tests and diagnostics).
    pub fn function_entry(&self, name: &str) -> Option<u64> {
        self.symbols.find(name).map(|f| f.entry)
    }
}
