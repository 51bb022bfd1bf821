//! Where a Go process lists its goroutines: runtime.allglen (how many) and
//! runtime.allgptr (the array of *g they are in). The runtime publishes
//! both with atomic stores in runtime.allgadd, pointer first, so a reader
//! that loads the length first and then the pointer sees at least that many
//! valid entries (runtime.forEachGRace reads them this way).
//!
//! With a symbol table the addresses are the symbols'. Stripped binaries
//! keep none, so they come from runtime.allgadd's code: its only two
//! atomic stores (XCHG) to static addresses are to allgptr, then allglen.
//! The walk checks the result against the process (allgs[0] is the main
//! goroutine, goid 1) before trusting it.

use iced_x86::{Code, Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use object::{Object, ObjectSymbol};
use std::collections::HashMap;

pub const ALLGADD: &str = "runtime.allgadd";

/// Link-time addresses of the two variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllGs {
    pub allglen: u64,
    pub allgptr: u64,
}

/// From the ELF symbol table, if the binary kept one.
pub fn from_symbols(file: &object::File<'_>) -> Option<AllGs> {
    let (mut len, mut ptr) = (None, None);
    for s in file.symbols() {
        match s.name() {
            Ok("runtime.allglen") => len = Some(s.address()),
            Ok("runtime.allgptr") => ptr = Some(s.address()),
            _ => continue,
        }
        if let (Some(allglen), Some(allgptr)) = (len, ptr) {
            return Some(AllGs { allglen, allgptr });
        }
    }
    None
}

/// From runtime.allgadd's code (`code` starts at `entry`): the targets of
/// its XCHG stores to static addresses, either RIP-relative or through a
/// register loaded by a RIP-relative LEA.
pub fn from_allgadd(code: &[u8], entry: u64) -> Result<AllGs, &'static str> {
    let mut lea: HashMap<Register, u64> = HashMap::new();
    let mut stores: Vec<u64> = Vec::new();
    for insn in Decoder::with_ip(64, code, entry, DecoderOptions::NONE) {
        if insn.is_invalid() {
            return Err("runtime.allgadd does not decode");
        }
        if insn.code() == Code::Lea_r64_m && insn.is_ip_rel_memory_operand() {
            lea.insert(insn.op0_register(), insn.ip_rel_memory_address());
            continue;
        }
        if insn.mnemonic() == Mnemonic::Xchg
            && insn.op0_kind() == OpKind::Memory
            && insn.memory_index() == Register::None
        {
            let target = if insn.is_ip_rel_memory_operand() {
                Some(insn.ip_rel_memory_address())
            } else if insn.memory_displacement64() == 0 {
                lea.get(&insn.memory_base()).copied()
            } else {
                None
            };
            match target {
                Some(t) if !stores.contains(&t) => stores.push(t),
                Some(_) => {}
                None => return Err("runtime.allgadd stores through an unknown address"),
            }
            continue;
        }
        // A register written by anything else no longer holds the LEA's address.
        if insn.op_count() > 0 && insn.op0_kind() == OpKind::Register {
            lea.remove(&insn.op0_register().full_register());
        }
    }
    match stores[..] {
        [allgptr, allglen] => Ok(AllGs { allglen, allgptr }),
        _ => Err("runtime.allgadd does not have exactly two atomic stores"),
    }
}
