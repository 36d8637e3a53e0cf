//! Perf callchain helpers: `bpf_get_stack` and the `_pe` variants' split of
//! a perf sample's chain into its kernel and user parts.
//!
//! A perf callchain (`PERF_SAMPLE_CALLCHAIN`) carries marker words:
//! `PERF_CONTEXT_KERNEL` before the kernel frames and `PERF_CONTEXT_USER`
//! before the user frames. The kernel's `_pe` helpers treat the chain up to
//! the first `PERF_CONTEXT_USER` as the kernel stack (the leading
//! `PERF_CONTEXT_KERNEL` marker included) and reach the user stack by
//! skipping that many words more; this module does exactly that.

use crate::build_id::{resolve_frames, VmaResolver};
use crate::uapi::{
    StackBuildId, BPF_F_SKIP_FIELD_MASK, BPF_F_USER_BUILD_ID, BPF_F_USER_STACK,
    GET_STACK_FLAG_MASK, PERF_CONTEXT_USER, PERF_MAX_STACK_DEPTH,
};
use crate::Error;

/// The kernel's `count_kernel_ip`: words before the first
/// `PERF_CONTEXT_USER` (the whole chain if there is none).
pub(crate) fn count_kernel_ips(callchain: &[u64]) -> usize {
    callchain
        .iter()
        .position(|&ip| ip == PERF_CONTEXT_USER)
        .unwrap_or(callchain.len())
}

/// `flags` with the skip grown by `nr_kernel`, for a `_pe` user stack;
/// `Fault` when the skip would pass 255.
pub(crate) fn pe_user_skip(flags: u64, nr_kernel: usize) -> Result<u64, Error> {
    let skip = (flags & BPF_F_SKIP_FIELD_MASK).saturating_add(nr_kernel as u64);
    if skip > BPF_F_SKIP_FIELD_MASK {
        return Err(Error::Fault);
    }
    Ok((flags & !BPF_F_SKIP_FIELD_MASK) | skip)
}

/// `bpf_get_stack` with the default `perf_event_max_stack` (127).
///
/// Copies the stack into `buf`: ips as native-endian `u64`s, or with
/// `BPF_F_USER_STACK | BPF_F_USER_BUILD_ID` as [`StackBuildId`]s resolved
/// through `resolver` (all status IP without one). `callchain` is the whole
/// chain; the first `min(buf.len() / frame + skip, max_stack)` frames are
/// taken, then `skip` dropped. Returns the bytes copied; the rest of `buf`
/// is zeroed.
///
/// ```
/// let mut buf = [0u8; 4 * 8];
/// let n = kstackmap::get_stack(&[0x10, 0x20, 0x30], 1, &mut buf, None)?; // skip 1
/// assert_eq!(n, 16);
/// assert_eq!(buf[..8], 0x20u64.to_ne_bytes());
/// # Ok::<(), kstackmap::Error>(())
/// ```
///
/// # Errors
///
/// On error the whole `buf` is zeroed, as in the kernel:
/// - `Inval`: unknown flags, `BPF_F_USER_BUILD_ID` without
///   `BPF_F_USER_STACK`, or a `buf` size that is not a multiple of the
///   frame size (8, or 32 for build ids).
/// - `Fault`: the chain is shorter than the skip.
pub fn get_stack(
    callchain: &[u64],
    flags: u64,
    buf: &mut [u8],
    resolver: Option<&dyn VmaResolver>,
) -> Result<usize, Error> {
    get_stack_max(callchain, flags, buf, resolver, PERF_MAX_STACK_DEPTH)
}

/// [`get_stack`] for a `perf_event_max_stack` of `max_stack`.
///
/// # Errors
///
/// As [`get_stack`]: `Inval`, `Fault`; `buf` is zeroed.
pub fn get_stack_max(
    callchain: &[u64],
    flags: u64,
    buf: &mut [u8],
    resolver: Option<&dyn VmaResolver>,
    max_stack: u32,
) -> Result<usize, Error> {
    let r = check_get_stack(flags, buf.len()).and_then(|frame| {
        let skip = (flags & BPF_F_SKIP_FIELD_MASK) as usize;
        let depth = (buf.len() / frame)
            .saturating_add(skip)
            .min(max_stack as usize);
        let trace = callchain.get(..depth).unwrap_or(callchain);
        copy_stack(trace, flags, buf, frame, resolver)
    });
    clear_on_error(r, buf)
}

/// `bpf_get_stack_pe`: [`get_stack`] on a perf sample's callchain (with
/// `PERF_CONTEXT_*` markers). The kernel part ends at the first
/// `PERF_CONTEXT_USER`; the user part skips that many words more (`Fault`
/// past 255). Each part is then cut to `min(frames + skip, 127)` words, as
/// the kernel's `_pe` depth fix does (checked against Linux 6.18.44 by
/// `tests/kernel_diff_pe.rs`). The kernel also leaves the sample's own
/// callchain cut to that depth after a user-stack call, so later helpers
/// of the same program, and perf's record, see the shorter chain.
///
/// # Errors
///
/// As [`get_stack`] (`Inval`, `Fault`), and `Fault` when the user part's
/// skip would pass 255; `buf` is zeroed.
pub fn get_stack_pe(
    callchain: &[u64],
    flags: u64,
    buf: &mut [u8],
    resolver: Option<&dyn VmaResolver>,
) -> Result<usize, Error> {
    if flags & !GET_STACK_FLAG_MASK != 0 {
        buf.fill(0);
        return Err(Error::Inval);
    }
    let nr_kernel = count_kernel_ips(callchain);
    if flags & BPF_F_USER_STACK == 0 {
        let kernel = callchain.get(..nr_kernel).unwrap_or(callchain);
        return get_stack(kernel, flags, buf, resolver);
    }
    match pe_user_skip(flags, nr_kernel) {
        Ok(flags) => get_stack(callchain, flags, buf, resolver),
        Err(e) => clear_on_error(Err(e), buf),
    }
}

/// The flag and size checks of `__bpf_get_stack`; returns the frame size.
fn check_get_stack(flags: u64, size: usize) -> Result<usize, Error> {
    if flags & !GET_STACK_FLAG_MASK != 0 {
        return Err(Error::Inval);
    }
    let user = flags & BPF_F_USER_STACK != 0;
    let build_id = flags & BPF_F_USER_BUILD_ID != 0;
    if build_id && !user {
        return Err(Error::Inval);
    }
    let frame = if build_id {
        size_of::<StackBuildId>()
    } else {
        8
    };
    if size % frame != 0 {
        return Err(Error::Inval);
    }
    Ok(frame)
}

/// The copy of `__bpf_get_stack` on a trace already cut to its depth.
fn copy_stack(
    trace: &[u64],
    flags: u64,
    buf: &mut [u8],
    frame: usize,
    resolver: Option<&dyn VmaResolver>,
) -> Result<usize, Error> {
    let skip = (flags & BPF_F_SKIP_FIELD_MASK) as usize;
    let ips = trace.get(skip..).ok_or(Error::Fault)?;
    let ips = ips.get(..buf.len() / frame).unwrap_or(ips);
    let copy_len = ips.len() * frame;
    let (head, tail) = buf.split_at_mut(copy_len);
    if frame == 8 {
        for (dst, ip) in head.chunks_exact_mut(8).zip(ips) {
            dst.copy_from_slice(&ip.to_ne_bytes());
        }
    } else {
        let mut frames = head.chunks_exact_mut(frame);
        resolve_frames(ips, true, resolver, |_, f| {
            if let Some(dst) = frames.next() {
                dst.copy_from_slice(zerocopy::IntoBytes::as_bytes(f));
            }
        });
    }
    tail.fill(0);
    Ok(copy_len)
}

fn clear_on_error(r: Result<usize, Error>, buf: &mut [u8]) -> Result<usize, Error> {
    if r.is_err() {
        buf.fill(0);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi::{BPF_F_FAST_STACK_CMP, PERF_CONTEXT_KERNEL};

    fn words(buf: &[u8]) -> [u64; 4] {
        let mut out = [0u64; 4];
        for (o, c) in out.iter_mut().zip(buf.chunks_exact(8)) {
            *o = u64::from_ne_bytes(c.try_into().unwrap());
        }
        out
    }

    #[test]
    fn copies_skips_and_zeroes() {
        let mut buf = [0xffu8; 32];
        assert_eq!(get_stack(&[1, 2, 3], 1, &mut buf, None), Ok(16));
        assert_eq!(words(&buf), [2, 3, 0, 0]);
        // nr == skip copies nothing (the kernel's check is `nr < skip`).
        assert_eq!(get_stack(&[1, 2, 3], 3, &mut buf, None), Ok(0));
        assert_eq!(buf, [0; 32]);
        // A chain longer than the buffer is cut to the buffer.
        assert_eq!(get_stack(&[1, 2, 3, 4, 5, 6], 0, &mut buf, None), Ok(32));
        assert_eq!(words(&buf), [1, 2, 3, 4]);
    }

    #[test]
    fn errors_clear_the_buffer() {
        let mut buf = [0xffu8; 32];
        assert_eq!(get_stack(&[1, 2], 3, &mut buf, None), Err(Error::Fault));
        assert_eq!(buf, [0; 32]);
        buf.fill(1);
        assert_eq!(
            get_stack(&[1], BPF_F_FAST_STACK_CMP, &mut buf, None),
            Err(Error::Inval)
        );
        assert_eq!(buf, [0; 32]);
        buf.fill(1);
        assert_eq!(
            get_stack(&[1], BPF_F_USER_BUILD_ID, &mut buf, None),
            Err(Error::Inval)
        );
        assert_eq!(get_stack(&[1], 0, &mut buf[..12], None), Err(Error::Inval));
        let f = BPF_F_USER_STACK | BPF_F_USER_BUILD_ID;
        assert_eq!(get_stack(&[1], f, &mut buf[..16], None), Err(Error::Inval));
    }

    #[test]
    fn max_stack_cuts_the_walk() {
        let mut buf = [0u8; 32];
        let chain = [1, 2, 3, 4];
        assert_eq!(get_stack_max(&chain, 1, &mut buf, None, 2), Ok(8));
        assert_eq!(words(&buf), [2, 0, 0, 0]);
    }

    #[test]
    fn build_id_frames_without_resolver_are_ips() {
        let mut buf = [0u8; 64];
        let f = BPF_F_USER_STACK | BPF_F_USER_BUILD_ID;
        assert_eq!(get_stack(&[0x10, 0x20, 0x30], f, &mut buf, None), Ok(64));
        let frames = <[StackBuildId]>::ref_from_bytes_ok(&buf);
        assert_eq!(frames[0], StackBuildId::from_ip(0x10));
        assert_eq!(frames[1], StackBuildId::from_ip(0x20));
    }

    trait Frames {
        fn ref_from_bytes_ok(b: &[u8]) -> [StackBuildId; 2];
    }
    impl Frames for [StackBuildId] {
        fn ref_from_bytes_ok(b: &[u8]) -> [StackBuildId; 2] {
            use zerocopy::FromBytes;
            [
                StackBuildId::read_from_bytes(&b[..32]).unwrap(),
                StackBuildId::read_from_bytes(&b[32..64]).unwrap(),
            ]
        }
    }

    #[test]
    fn pe_split() {
        let k = PERF_CONTEXT_KERNEL;
        let u = PERF_CONTEXT_USER;
        let chain = [k, 0xa, 0xb, u, 0x1, 0x2];
        assert_eq!(count_kernel_ips(&chain), 3);
        assert_eq!(count_kernel_ips(&[1, 2]), 2);
        let mut buf = [0u8; 32];
        assert_eq!(get_stack_pe(&chain, 0, &mut buf, None), Ok(24));
        assert_eq!(words(&buf), [k, 0xa, 0xb, 0]);
        // The user part starts at the PERF_CONTEXT_USER marker itself.
        assert_eq!(
            get_stack_pe(&chain, BPF_F_USER_STACK, &mut buf, None),
            Ok(24)
        );
        assert_eq!(words(&buf), [u, 1, 2, 0]);
        assert_eq!(
            get_stack_pe(&chain, BPF_F_USER_STACK | 1, &mut buf, None),
            Ok(16)
        );
        assert_eq!(
            get_stack_pe(&chain, BPF_F_USER_STACK | 253, &mut buf, None),
            Err(Error::Fault)
        );
        assert_eq!(buf, [0; 32]);
        assert_eq!(
            pe_user_skip(BPF_F_USER_STACK | 250, 5),
            Ok(BPF_F_USER_STACK | 255)
        );
        assert_eq!(pe_user_skip(250, 6), Err(Error::Fault));
    }
}
