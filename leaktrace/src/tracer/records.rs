//! Decoding the heap ring buffer's records.
use leaktrace_common::{GrowthEvent, HeapEvent};

/// A heap syscall from the ring buffer and, in growth mode for heap-growing calls, the user
/// registers and stack copied at the syscall (borrowed from the ring buffer: unwind in place).
pub struct HeapRecord<'a> {
    pub event: HeapEvent,
    pub stack: Option<StackCopy<'a>>,
}

#[derive(Clone, Copy, Debug)]
pub struct StackCopy<'a> {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The stack from `sp` upwards.
    pub bytes: &'a [u8],
}

impl<'a> HeapRecord<'a> {
    /// Decode one ring-buffer record: a `HeapEvent`, or a `GrowthEvent` (told apart by length).
    pub fn parse(record: &'a [u8]) -> Option<Self> {
        use std::mem::{offset_of, size_of};
        if record.len() < size_of::<HeapEvent>() {
            return None;
        }
        // SAFETY: the record starts with a HeapEvent (#[repr(C)], plain integers);
        // read_unaligned copes with the ring buffer's 8-byte alignment.
        let event = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<HeapEvent>()) };
        if record.len() < size_of::<GrowthEvent>() {
            return Some(Self { event, stack: None });
        }
        let word = |offset: usize| -> u64 {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&record[offset..offset + 8]);
            u64::from_ne_bytes(bytes)
        };
        let len = word(offset_of!(GrowthEvent, stack_len)) as u32 as usize;
        let start = offset_of!(GrowthEvent, stack);
        let bytes = &record[start..start + len.min(leaktrace_common::STACK_COPY_BYTES)];
        Some(Self {
            event,
            stack: Some(StackCopy {
                ip: word(offset_of!(GrowthEvent, ip)),
                sp: word(offset_of!(GrowthEvent, sp)),
                bp: word(offset_of!(GrowthEvent, bp)),
                bytes,
            }),
        })
    }
}
