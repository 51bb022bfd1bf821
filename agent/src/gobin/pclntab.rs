//! Reader for Go's `.gopclntab` (the runtime's own function table), Go 1.20+
//! layout. It names functions and maps PCs to file:line in every Go binary,
//! stripped or not. All reads are bounds-checked: a corrupt table gives an
//! error or `None`, never a panic.

use std::ops::Range;

/// Magic of the Go 1.20+ table (1.18/1.19 use 0xfffffff0; both share layout).
const MAGIC_GO120: u32 = 0xffff_fff1;
const MAGIC_GO118: u32 = 0xffff_fff0;
const MAGIC_GO116: u32 = 0xffff_fffa;
const MAGIC_GO12: u32 = 0xffff_fffb;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pclntab is truncated ({0} bytes)")]
    Truncated(usize),
    #[error("pclntab has an unsupported layout (magic {0:#x}, from a Go release before 1.18)")]
    OldLayout(u32),
    #[error("pclntab has an unknown magic {0:#x}")]
    BadMagic(u32),
    #[error("pclntab header is inconsistent: {0}")]
    BadHeader(&'static str),
}

/// A function found in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Func {
    /// Entry address (link-time virtual address).
    pub entry: u64,
    /// First address past the function.
    pub end: u64,
    /// Offset of its `_func` record in the table.
    record: usize,
}

/// A parsed view of a `.gopclntab` held in `T` (an owned buffer or a map).
pub struct Pclntab<T> {
    data: T,
    range: Range<usize>,
    quantum: u32,
    ptr_size: usize,
    nfunc: usize,
    text_start: u64,
    funcnames: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    functab: usize,
    /// Offset in `data` of moduledata.gofunc, the base of funcdata (and so
    /// of inline trees); unknown when the moduledata was not found.
    gofunc: Option<usize>,
}

/// PCDATA index of the inline tree index table, FUNCDATA index of the tree.
const PCDATA_INL_TREE_INDEX: u32 = 2;
const FUNCDATA_INL_TREE: u32 = 3;
/// Size of a runtime.inlinedCall record (Go 1.20+).
const INLINED_CALL_SIZE: usize = 16;
/// Deepest inlining followed (the compiler's own budget is far lower).
const MAX_INLINE_DEPTH: usize = 64;

/// One source-level frame of a PC: inlined calls come out as frames too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFrame<'a> {
    pub function: &'a str,
    pub file: Option<&'a str>,
    pub line: Option<u32>,
}

impl<T: AsRef<[u8]>> Pclntab<T> {
    /// Parses the table found at `range` inside `data`. `text_start` is used
    /// when the header's own field is zero (left to a dynamic relocation).
    pub fn parse(data: T, range: Range<usize>, text_start: u64) -> Result<Self, Error> {
        let b = data
            .as_ref()
            .get(range.clone())
            .ok_or(Error::Truncated(range.len()))?;
        if b.len() < 8 {
            return Err(Error::Truncated(b.len()));
        }
        let magic = u32::from_le_bytes(b[0..4].try_into().unwrap());
        match magic {
            MAGIC_GO120 | MAGIC_GO118 => {}
            MAGIC_GO116 | MAGIC_GO12 => return Err(Error::OldLayout(magic)),
            m => return Err(Error::BadMagic(m)),
        }
        let quantum = b[6] as u32;
        let ptr_size = b[7] as usize;
        if ptr_size != 8 || !matches!(quantum, 1 | 2 | 4) {
            return Err(Error::BadHeader("pointer size or pc quantum"));
        }
        let word = |i: usize| -> Result<u64, Error> {
            let o = 8 + i * ptr_size;
            b.get(o..o + 8)
                .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
                .ok_or(Error::Truncated(b.len()))
        };
        let off = |i: usize| -> Result<usize, Error> {
            let v = word(i)? as usize;
            if v > b.len() {
                return Err(Error::BadHeader("section offset past the end"));
            }
            Ok(v)
        };
        let nfunc = word(0)? as usize;
        let header_text = word(2)?;
        let (funcnames, cutab, filetab, pctab, functab) =
            (off(3)?, off(4)?, off(5)?, off(6)?, off(7)?);
        // The function table holds nfunc+1 (entryoff, funcoff) pairs.
        let need = nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .and_then(|n| n.checked_add(functab))
            .ok_or(Error::BadHeader("function count"))?;
        if need > b.len() {
            return Err(Error::BadHeader("function table past the end"));
        }
        Ok(Pclntab {
            quantum,
            ptr_size,
            nfunc,
            text_start: if header_text != 0 {
                header_text
            } else {
                text_start
            },
            funcnames,
            cutab,
            filetab,
            pctab,
            functab,
            gofunc: None,
            data,
            range,
        })
    }

    fn bytes(&self) -> &[u8] {
        // parse() checked this range.
        &self.data.as_ref()[self.range.clone()]
    }

    fn u32_at(&self, off: usize) -> Option<u32> {
        let s = self.bytes().get(off..off.checked_add(4)?)?;
        Some(u32::from_le_bytes(s.try_into().unwrap()))
    }

    /// Link-time address of the start of the text the table describes.
    pub fn text_start(&self) -> u64 {
        self.text_start
    }

    /// Number of functions in the table.
    pub fn len(&self) -> usize {
        self.nfunc
    }

    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    fn func_at(&self, i: usize) -> Option<Func> {
        // The header's text start is untrusted: checked, like every offset.
        let p = self.functab.checked_add(i.checked_mul(8)?)?;
        let entry = self.text_start.checked_add(self.u32_at(p)? as u64)?;
        let record = self
            .functab
            .checked_add(self.u32_at(p.checked_add(4)?)? as usize)?;
        let end = self
            .text_start
            .checked_add(self.u32_at(p.checked_add(8)?)? as u64)?;
        Some(Func { entry, end, record })
    }

    /// All functions, in address order.
    pub fn funcs(&self) -> impl Iterator<Item = Func> + '_ {
        (0..self.nfunc).filter_map(|i| self.func_at(i))
    }

    /// The function containing `pc` (a link-time address).
    pub fn func_for_pc(&self, pc: u64) -> Option<Func> {
        let rel = pc.checked_sub(self.text_start)?;
        let (mut lo, mut hi) = (0usize, self.nfunc);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let start = self.u32_at(self.functab + mid * 8)? as u64;
            if start <= rel {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let f = self.func_at(lo.checked_sub(1)?)?;
        (pc < f.end).then_some(f)
    }

    /// The function's name, e.g. `net/http.(*conn).serve`.
    pub fn name(&self, f: &Func) -> Option<&str> {
        let name_off = self.u32_at(f.record + 4)? as usize;
        let start = self.funcnames.checked_add(name_off)?;
        let rest = self.bytes().get(start..)?;
        let len = rest.iter().position(|&c| c == 0)?;
        std::str::from_utf8(&rest[..len]).ok()
    }

    /// The first function called `name`.
    pub fn find(&self, name: &str) -> Option<Func> {
        self.funcs().find(|f| self.name(f) == Some(name))
    }

    /// Source file and line of `pc` inside `f`.
    pub fn line(&self, f: &Func, pc: u64) -> Option<(&str, u32)> {
        let pcfile = self.u32_at(f.record + 20)?;
        let pcln = self.u32_at(f.record + 24)?;
        let cu_offset = self.u32_at(f.record + 32)?;
        let file_no = self.pcvalue(pcfile, f.entry, pc)?;
        let line = self.pcvalue(pcln, f.entry, pc)?;
        let file_no = u32::try_from(file_no).ok()?;
        let idx = cu_offset.checked_add(file_no)? as usize;
        let file_off = self.u32_at(self.cutab.checked_add(idx.checked_mul(4)?)?)?;
        if file_off == u32::MAX {
            return None;
        }
        let start = self.filetab.checked_add(file_off as usize)?;
        let rest = self.bytes().get(start..)?;
        let len = rest.iter().position(|&c| c == 0)?;
        let file = std::str::from_utf8(&rest[..len]).ok()?;
        Some((file, u32::try_from(line).ok()?))
    }

    /// Decodes a pc-value table (zig-zag value deltas, pc deltas in quanta)
    /// and returns the value in force at `target`.
    fn pcvalue(&self, table: u32, entry: u64, target: u64) -> Option<i32> {
        if table == 0 {
            return None;
        }
        let b = self.bytes();
        let mut p = self.pctab.checked_add(table as usize)?;
        let mut pc = entry;
        let mut val: i32 = -1;
        let mut first = true;
        loop {
            let (uvdelta, n) = varint(b.get(p..)?)?;
            if uvdelta == 0 && !first {
                return None;
            }
            first = false;
            p += n;
            let vdelta = if uvdelta & 1 != 0 {
                !((uvdelta >> 1) as i32)
            } else {
                (uvdelta >> 1) as i32
            };
            let (pcdelta, n) = varint(b.get(p..)?)?;
            p += n;
            pc = pc.checked_add(pcdelta as u64 * self.quantum as u64)?;
            val = val.wrapping_add(vdelta);
            if target < pc {
                return Some(val);
            }
        }
    }

    /// Offset of the function name table from the table's start (the
    /// moduledata's funcnametab points there).
    pub fn funcnames_offset(&self) -> usize {
        self.funcnames
    }

    /// Sets where moduledata.gofunc lies in `data`, enabling inline frames.
    pub fn set_gofunc(&mut self, offset_in_data: usize) {
        self.gofunc = Some(offset_in_data);
    }

    /// Whether inlined frames can be resolved.
    pub fn has_inline_info(&self) -> bool {
        self.gofunc.is_some()
    }

    fn name_at(&self, name_off: u32) -> Option<&str> {
        let start = self.funcnames.checked_add(name_off as usize)?;
        let rest = self.bytes().get(start..)?;
        let len = rest.iter().position(|&c| c == 0)?;
        std::str::from_utf8(&rest[..len]).ok()
    }

    /// The frames of `pc` inside `f`, innermost first: the inlined calls
    /// the compiler recorded at `pc`, then `f` itself at the call site.
    pub fn frames(&self, f: &Func, pc: u64) -> Vec<SourceFrame<'_>> {
        let mut out = Vec::new();
        let mut pc = pc;
        let tree = self.inline_tree(f);
        for _ in 0..MAX_INLINE_DEPTH {
            let (file, line) = match self.line(f, pc) {
                Some((file, line)) => (Some(file), Some(line)),
                None => (None, None),
            };
            let call = tree.and_then(|(table, tree)| {
                let ix = self.pcvalue(table, f.entry, pc)?;
                let at =
                    tree.checked_add(usize::try_from(ix).ok()?.checked_mul(INLINED_CALL_SIZE)?)?;
                let rec = self
                    .data
                    .as_ref()
                    .get(at..at.checked_add(INLINED_CALL_SIZE)?)?;
                let name_off = u32::from_le_bytes(rec[4..8].try_into().unwrap());
                let parent_pc = i32::from_le_bytes(rec[8..12].try_into().unwrap());
                Some((self.name_at(name_off)?, parent_pc))
            });
            match call {
                Some((function, parent_pc))
                    if parent_pc >= 0 && f.entry.checked_add(parent_pc as u64).is_some() =>
                {
                    out.push(SourceFrame {
                        function,
                        file,
                        line,
                    });
                    pc = f.entry + parent_pc as u64;
                }
                _ => {
                    if let Some(function) = self.name(f) {
                        out.push(SourceFrame {
                            function,
                            file,
                            line,
                        });
                    }
                    break;
                }
            }
        }
        out
    }

    /// (inline index pc-value table, offset of the tree in `data`) of `f`.
    fn inline_tree(&self, f: &Func) -> Option<(u32, usize)> {
        let gofunc = self.gofunc?;
        let npcdata = self.u32_at(f.record + 28)?;
        let nfuncdata = *self.bytes().get(f.record + 43)? as u32;
        if npcdata <= PCDATA_INL_TREE_INDEX || nfuncdata <= FUNCDATA_INL_TREE {
            return None;
        }
        let table = self.u32_at(f.record + 44 + 4 * PCDATA_INL_TREE_INDEX as usize)?;
        let fd = f.record + 44 + 4 * npcdata as usize + 4 * FUNCDATA_INL_TREE as usize;
        let tree_off = self.u32_at(fd)?;
        if table == 0 || tree_off == u32::MAX {
            return None;
        }
        Some((table, gofunc.checked_add(tree_off as usize)?))
    }

    /// The buffer the table lives in.
    pub fn data(&self) -> &T {
        &self.data
    }

    /// Pointer size of the target (always 8 here; kept for completeness).
    pub fn ptr_size(&self) -> usize {
        self.ptr_size
    }
}

fn varint(b: &[u8]) -> Option<(u32, usize)> {
    let mut v: u32 = 0;
    for (i, &c) in b.iter().enumerate().take(5) {
        v |= ((c & 0x7f) as u32) << (7 * i);
        if c & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_decodes_multibyte_and_rejects_overlong() {
        assert_eq!(varint(&[0x05]), Some((5, 1)));
        assert_eq!(varint(&[0x96, 0x01]), Some((150, 2)));
        assert_eq!(varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]), None);
        assert_eq!(varint(&[]), None);
    }

    #[test]
    fn rejects_short_and_foreign_tables() {
        assert!(matches!(
            Pclntab::parse(vec![0u8; 4], 0..4, 0),
            Err(Error::Truncated(4))
        ));
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(&MAGIC_GO12.to_le_bytes());
        assert!(matches!(
            Pclntab::parse(b.clone(), 0..64, 0),
            Err(Error::OldLayout(_))
        ));
        b[..4].copy_from_slice(&0x1234u32.to_le_bytes());
        assert!(matches!(
            Pclntab::parse(b, 0..64, 0),
            Err(Error::BadMagic(0x1234))
        ));
    }

    #[test]
    fn rejects_function_count_past_the_end() {
        let mut b = vec![0u8; 80];
        b[..4].copy_from_slice(&MAGIC_GO120.to_le_bytes());
        b[6] = 1;
        b[7] = 8;
        b[8..16].copy_from_slice(&1_000_000u64.to_le_bytes());
        assert!(matches!(
            Pclntab::parse(b, 0..80, 0),
            Err(Error::BadHeader(_))
        ));
    }
}
