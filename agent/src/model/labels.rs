//! gmon's stack labels: stack_0..stack_4 are the five outermost frames of the
//! creation stack, stack_0 the outermost, "none" where the stack is shorter.

use crate::gobin::Frame;

pub const STACK_LABELS: [&str; 5] = ["stack_0", "stack_1", "stack_2", "stack_3", "stack_4"];

/// Label values for a stack given innermost frame first.
pub fn stack_labels(stack: &[Frame]) -> [&str; 5] {
    let mut out = ["none"; 5];
    for (slot, f) in out.iter_mut().zip(stack.iter().rev()) {
        *slot = &f.function;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(n: usize) -> Vec<Frame> {
        (0..n)
            .map(|i| Frame {
                function: format!("f{i}"),
                file: None,
                line: None,
            })
            .collect()
    }

    #[test]
    fn five_frames_fill_every_label_outermost_first() {
        assert_eq!(stack_labels(&stack(5)), ["f4", "f3", "f2", "f1", "f0"]);
    }

    #[test]
    fn three_frames_pad_with_none() {
        assert_eq!(stack_labels(&stack(3)), ["f2", "f1", "f0", "none", "none"]);
    }

    #[test]
    fn ten_frames_keep_the_five_outermost() {
        assert_eq!(stack_labels(&stack(10)), ["f9", "f8", "f7", "f6", "f5"]);
    }

    #[test]
    fn empty_stack_is_all_none() {
        assert_eq!(stack_labels(&[]), ["none"; 5]);
    }
}
