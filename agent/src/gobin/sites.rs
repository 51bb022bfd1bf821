//! Probe sites whose instruction the kernel emulates inside the uprobe trap
//! (call, jmp, jcc) instead of single-stepping it with a second trap: on
//! the project's machines a single-stepped hit costs 8-16 us, an emulated
//! one 0.2-0.4 us (see shared notes, probe-sites.md).
//!
//! Creation: the first branch after runtime.newproc1 stores the new goid,
//! in straight-line code, with the new g still in RAX and RBP still
//! newproc1's frame pointer. Go 1.23 stores the goid after
//! `casgstatus(newg, _Gdead, _Grunnable)`, so that call is too early there
//! (its goid would be stale); the site is the next `je`. Go 1.24 and 1.26
//! store it first and the site is the `call runtime.casgstatus`.
//!
//! Exit: runtime.goexit1's prologue `cmp 0x10(%r14),%rsp; jbe morestack`:
//! the `jbe` runs on every call and R14 still holds the exiting g.
//!
//! Each rule is checked on the decoded code of the binary at hand; a
//! binary whose code does not match gets `None` and keeps the old sites.

use iced_x86::{
    Code, ConditionCode, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory,
    OpAccess, OpKind, Register,
};
use std::collections::HashSet;

/// Why a rule did not match (logged with the fallback).
pub type Mismatch = &'static str;

/// The creation site in runtime.newproc1 (`code` starts at `entry`):
/// the address of the first branch after the store of the goid at
/// `goid_off` in the new g.
pub fn creation_site(code: &[u8], entry: u64, goid_off: u64) -> Result<u64, Mismatch> {
    let insns: Vec<Instruction> = Decoder::with_ip(64, code, entry, DecoderOptions::NONE)
        .into_iter()
        .collect();
    if insns.iter().any(|i| i.is_invalid()) {
        return Err("newproc1 does not decode");
    }
    let stores: Vec<usize> = insns
        .iter()
        .enumerate()
        .filter(|(_, i)| is_goid_store(i, goid_off))
        .map(|(n, _)| n)
        .collect();
    let [store] = stores[..] else {
        return Err("not exactly one store of the goid in newproc1");
    };
    // Jump targets: the site must be reached only through the store.
    let targets: HashSet<u64> = insns
        .iter()
        .filter(|i| i.is_jcc_short_or_near() || i.is_jmp_short_or_near())
        .map(|i| i.near_branch_target())
        .collect();
    // Registers known to hold the new g, starting with the store's base.
    let mut newg: HashSet<Register> = HashSet::from([insns[store].memory_base().full_register()]);
    let mut info = InstructionInfoFactory::new();
    for insn in &insns[store + 1..] {
        if targets.contains(&insn.ip()) {
            return Err("a jump lands between the goid store and the next branch");
        }
        match insn.flow_control() {
            FlowControl::Next => {}
            FlowControl::ConditionalBranch
            | FlowControl::UnconditionalBranch
            | FlowControl::Call
                if insn.op0_kind() != OpKind::Register && insn.op0_kind() != OpKind::Memory =>
            {
                return if newg.contains(&Register::RAX) {
                    Ok(insn.ip())
                } else {
                    Err("the new g is not in RAX at the first branch after the goid store")
                };
            }
            _ => {
                return Err(
                    "the first branch after the goid store is not a direct call, jmp or jcc",
                );
            }
        }
        let copy_from = (insn.code() == Code::Mov_r64_rm64 || insn.code() == Code::Mov_rm64_r64)
            && insn.op0_kind() == OpKind::Register
            && insn.op1_kind() == OpKind::Register;
        let copies_newg = copy_from && newg.contains(&insn.op1_register().full_register());
        for used in info.info(insn).used_registers() {
            let written = matches!(
                used.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            );
            if !written {
                continue;
            }
            let reg = used.register().full_register();
            if reg == Register::RBP || reg == Register::RSP {
                return Err("the frame changes between the goid store and the next branch");
            }
            newg.remove(&reg);
        }
        if copies_newg {
            newg.insert(insn.op0_register().full_register());
        }
    }
    Err("no branch after the goid store")
}

/// `mov %reg, goid_off(%base)`: an 8-byte store of a register at the goid's
/// offset from a base register, no index.
fn is_goid_store(i: &Instruction, goid_off: u64) -> bool {
    i.code() == Code::Mov_rm64_r64
        && i.op0_kind() == OpKind::Memory
        && i.memory_base() != Register::None
        && i.memory_base() != Register::RSP
        && i.memory_base() != Register::RBP
        && i.memory_base() != Register::RIP
        && i.memory_index() == Register::None
        && i.memory_displacement64() == goid_off
}

/// The exit site in runtime.goexit1 (`code` starts at `entry`): the `jbe`
/// of its stack-check prologue `cmp 0x10(%r14),%rsp; jbe`.
pub fn exit_site(code: &[u8], entry: u64) -> Result<u64, Mismatch> {
    let mut d = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let (cmp, jbe) = (d.decode(), d.decode());
    let prologue = cmp.code() == Code::Cmp_r64_rm64
        && cmp.op0_register() == Register::RSP
        && cmp.op1_kind() == OpKind::Memory
        && cmp.memory_base() == Register::R14
        && cmp.memory_index() == Register::None
        && cmp.memory_displacement64() == 0x10;
    if !prologue {
        return Err("goexit1 does not start with cmp 0x10(%r14),%rsp");
    }
    // The program tells a hit that morestack will repeat by the flags
    // `jbe` jumps on, so it must be exactly that jump.
    if !jbe.is_jcc_short_or_near() || jbe.condition_code() != ConditionCode::be {
        return Err("goexit1's stack check is not followed by jbe");
    }
    Ok(jbe.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Go 1.23.5's shape: casgstatus first, then the goid store with newg in
    // RAX, then `test; je`.
    //   mov %r8,0xa0(%rax); incq 0x178(%rdx); mov 0x28(%rsp),%rbx;
    //   test %rbx,%rbx; je +0x10
    const GO123: &[u8] = &[
        0x4c, 0x89, 0x80, 0xa0, 0x00, 0x00, 0x00, // mov %r8,0xa0(%rax)
        0x48, 0xff, 0x82, 0x78, 0x01, 0x00, 0x00, // incq 0x178(%rdx)
        0x48, 0x8b, 0x5c, 0x24, 0x28, // mov 0x28(%rsp),%rbx
        0x48, 0x85, 0xdb, // test %rbx,%rbx
        0x74, 0x10, // je
    ];

    #[test]
    fn first_branch_after_the_goid_store_with_newg_in_rax() {
        assert_eq!(creation_site(GO123, 0x1000, 0xa0), Ok(0x1000 + 22));
        // Another goid offset: no store, no site.
        assert!(creation_site(GO123, 0x1000, 0x98).is_err());
    }

    #[test]
    fn newg_copied_to_rax_before_a_call() {
        // Go 1.24's shape: mov %rdx,0xa0(%rsi); mov %rsi,%rax; mov $6,%ebx;
        // call rel32
        let code = [
            0x48, 0x89, 0x96, 0xa0, 0x00, 0x00, 0x00, // mov %rdx,0xa0(%rsi)
            0x48, 0x89, 0xf0, // mov %rsi,%rax
            0xbb, 0x06, 0x00, 0x00, 0x00, // mov $6,%ebx
            0xe8, 0x00, 0x00, 0x00, 0x00, // call
        ];
        assert_eq!(creation_site(&code, 0x2000, 0xa0), Ok(0x2000 + 15));
        // Without the copy the new g is not in RAX: refused.
        let mut no_copy = code;
        no_copy[7..10].copy_from_slice(&[0x48, 0x89, 0xd8]); // mov %rbx,%rax
        assert!(creation_site(&no_copy, 0x2000, 0xa0).is_err());
    }

    #[test]
    fn refuses_when_rax_is_overwritten_or_the_frame_moves() {
        let mut clobber = GO123.to_vec();
        clobber.splice(14..19, [0x48, 0x8b, 0x44, 0x24, 0x28]); // mov 0x28(%rsp),%rax
        assert!(creation_site(&clobber, 0x1000, 0xa0).is_err());
        let mut pop = GO123.to_vec();
        pop.insert(7, 0x5d); // pop %rbp
        assert!(creation_site(&pop, 0x1000, 0xa0).is_err());
    }

    #[test]
    fn refuses_a_jump_into_the_straight_line_code() {
        // jmp back to the incq (a join point after the store).
        let mut code = GO123.to_vec();
        code.extend_from_slice(&[0xeb, 0xed]); // jmp -0x13 -> 0x1007
        assert_eq!(code.len(), 26);
        assert!(creation_site(&code, 0x1000, 0xa0).is_err());
    }

    #[test]
    fn goexit1_prologue_jbe() {
        // cmp 0x10(%r14),%rsp; jbe +0x7b; push %rbp
        let code = [0x49, 0x3b, 0x66, 0x10, 0x76, 0x7b, 0x55];
        assert_eq!(exit_site(&code, 0x3000), Ok(0x3004));
        assert!(exit_site(&[0x55, 0x48, 0x89, 0xe5], 0x3000).is_err());
        // Another jump or another field: the program's check of the flags
        // would be wrong there.
        let jb = [0x49, 0x3b, 0x66, 0x10, 0x72, 0x7b, 0x55];
        assert!(exit_site(&jb, 0x3000).is_err());
        let guard1 = [0x49, 0x3b, 0x66, 0x18, 0x76, 0x7b, 0x55];
        assert!(exit_site(&guard1, 0x3000).is_err());
    }
}
