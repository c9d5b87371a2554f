//! Copying short byte strings without a `memcpy` call: the SDK's output
//! batches (`Emitter`) and the host's `Batch::push` both append many keys
//! and values of a few bytes.

/// Copies `bytes` to `target`.
///
/// Short slices (most keys and values) are copied with a few unaligned word
/// loads and stores instead of `copy_nonoverlapping`: in a Wasm module built
/// with bulk memory, that becomes a `memory.copy`, which wasmtime runs as a
/// call out of the module into the runtime (natively, a `memcpy` call) — far
/// dearer than the copy itself for a word of a few bytes.
///
/// # Safety
///
/// `target` must be valid for `bytes.len()` bytes of writes and must not
/// overlap `bytes`.
#[inline(always)]
pub unsafe fn copy_short(bytes: &[u8], target: *mut u8) {
    let len = bytes.len();
    let source = bytes.as_ptr();
    // SAFETY: every read stays within `bytes` (the two overlapping loads of
    // each size start at 0 and at `len - size`, both in bounds because
    // `len >= size` in that branch) and every write within `target[..len]`,
    // which the caller guarantees. Unaligned accesses are used throughout.
    unsafe {
        if len > 16 {
            core::ptr::copy_nonoverlapping(source, target, len);
        } else if len >= 8 {
            let head = source.cast::<u64>().read_unaligned();
            let tail = source.add(len - 8).cast::<u64>().read_unaligned();
            target.cast::<u64>().write_unaligned(head);
            target.add(len - 8).cast::<u64>().write_unaligned(tail);
        } else if len >= 4 {
            let head = source.cast::<u32>().read_unaligned();
            let tail = source.add(len - 4).cast::<u32>().read_unaligned();
            target.cast::<u32>().write_unaligned(head);
            target.add(len - 4).cast::<u32>().write_unaligned(tail);
        } else if len > 0 {
            *target = *source;
            *target.add(len / 2) = *source.add(len / 2);
            *target.add(len - 1) = *source.add(len - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::copy_short;

    #[test]
    fn copies_every_length_exactly_and_nothing_more() {
        let source: [u8; 40] = core::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(1));
        for len in 0..=source.len() {
            let mut target = [0xaa_u8; 48];
            // SAFETY: `target` has room for 48 bytes, `len <= 40`, and it is a
            // local array, so it cannot overlap `source`.
            unsafe { copy_short(&source[..len], target.as_mut_ptr()) };
            assert_eq!(target[..len], source[..len], "length {len}");
            assert!(target[len..].iter().all(|&byte| byte == 0xaa), "length {len}");
        }
    }
}
