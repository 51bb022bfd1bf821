//! Binary analysed: everything gmon-agent needs to know about one Go
//! executable before it can probe it — release, runtime.g layout, probe
//! sites (as file offsets) and a symbolizer for its PCs.

pub mod buildinfo;
pub mod dwarf;
pub mod pclntab;
pub mod ret;

use agent_common::GOffsets;
use memmap2::Mmap;
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

pub use buildinfo::{BuildInfo, GoVersion};

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
    #[error("{0} is not an ELF executable; pass the path of a compiled Go program")]
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
    #[error(
        "{0}: cannot read runtime.g field offsets: {1}; build it without -w (stripped binaries are not supported yet)"
    )]
    Offsets(PathBuf, dwarf::Error),
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

/// Result of analysing one Go executable.
pub struct GoBinary {
    pub path: PathBuf,
    pub id: BinaryId,
    pub build: BuildInfo,
    pub offsets: GOffsets,
    /// File offsets of every RET in runtime.newproc1.
    pub newproc1_rets: Vec<u64>,
    /// File offset of runtime.goexit1's entry.
    pub goexit1: u64,
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
        let build = file
            .section_by_name(".go.buildinfo")
            .and_then(|s| s.data().ok())
            .ok_or(buildinfo::Error::Missing)
            .and_then(buildinfo::parse)
            .map_err(|e| Error::NotGo(p(), e))?;
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

        let pcln = [".gopclntab", ".data.rel.ro.gopclntab"]
            .iter()
            .find_map(|n| file.section_by_name(n))
            .and_then(|s| s.file_range())
            .ok_or_else(|| Error::Pclntab(p(), "section not found".into()))?;
        let text_start = file
            .symbols()
            .find(|s| s.name() == Ok("runtime.text"))
            .map(|s| s.address())
            .or_else(|| file.section_by_name(".text").map(|s| s.address()))
            .unwrap_or(0);
        let offsets = dwarf::g_offsets(&file).map_err(|e| Error::Offsets(p(), e));
        drop(file);
        let range = pcln.0 as usize..(pcln.0 + pcln.1) as usize;
        let symbols = pclntab::Pclntab::parse(map, range, text_start)
            .map_err(|e| Error::Pclntab(p(), e.to_string()))?;
        let offsets = offsets?;

        let mut bin = GoBinary {
            path: p(),
            id,
            build,
            offsets,
            newproc1_rets: Vec::new(),
            goexit1: 0,
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
        Ok(bin)
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

    /// Entry address of the named function (for tests and diagnostics).
    pub fn function_entry(&self, name: &str) -> Option<u64> {
        self.symbols.find(name).map(|f| f.entry)
    }
}
