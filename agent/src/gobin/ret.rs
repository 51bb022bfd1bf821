//! Finds the RET instructions of a function by disassembly, so that a plain
//! uprobe on each one sees the return value without a return probe.

use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic};

/// Addresses of every RET in `code`, which starts at address `entry`.
/// Decoding is linear: Go emits no data inside function bodies on amd64.
pub fn ret_addresses(code: &[u8], entry: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut rets = Vec::new();
    for insn in &mut decoder {
        if insn.flow_control() == FlowControl::Return && insn.mnemonic() == Mnemonic::Ret {
            rets.push(insn.ip());
        }
    }
    rets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rets_and_skips_lookalike_bytes() {
        // mov eax, 0xc3 (contains a 0xc3 byte); ret; nop; ret 8
        let code = [0xb8, 0xc3, 0, 0, 0, 0xc3, 0x90, 0xc2, 0x08, 0x00];
        assert_eq!(ret_addresses(&code, 0x1000), vec![0x1005, 0x1007]);
    }
}
