//! Constants and types of the Linux UAPI (`include/uapi/linux/bpf.h`,
//! `include/uapi/linux/perf_event.h`) that the stack trace map speaks.
//!
//! Values equal the kernel's; [`StackBuildId`] is byte-compatible with
//! `struct bpf_stack_build_id`, which `static_assertions` proves below.

use static_assertions::{assert_eq_align, assert_eq_size, const_assert_eq};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `flags` of `get_stackid` / `get_stack`: the low byte is the number of
/// frames to skip.
pub const BPF_F_SKIP_FIELD_MASK: u64 = 0xff;
/// `flags`: take the user-space part of the chain instead of the kernel part.
pub const BPF_F_USER_STACK: u64 = 1 << 8;
/// `flags` of `get_stackid`: report a hit on a hash match alone, without
/// comparing the frames.
pub const BPF_F_FAST_STACK_CMP: u64 = 1 << 9;
/// `flags` of `get_stackid`: on a collision, replace the bucket's stack
/// instead of failing with `EEXIST`.
pub const BPF_F_REUSE_STACKID: u64 = 1 << 10;
/// `flags` of `get_stack`: store user frames as [`StackBuildId`]s.
pub const BPF_F_USER_BUILD_ID: u64 = 1 << 11;

/// `map_flags`: do not preallocate (rejected by stack trace maps).
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// `map_flags`: `numa_node` is valid.
pub const BPF_F_NUMA_NODE: u32 = 4;
/// `map_flags`: the syscall side may only read.
pub const BPF_F_RDONLY: u32 = 8;
/// `map_flags`: the syscall side may only write.
pub const BPF_F_WRONLY: u32 = 16;
/// `map_flags`: the map stores [`StackBuildId`] frames, not ips.
pub const BPF_F_STACK_BUILD_ID: u32 = 32;

/// The `map_flags` a stack trace map accepts (the kernel's
/// `STACK_CREATE_FLAG_MASK`).
pub const STACK_CREATE_FLAG_MASK: u32 =
    BPF_F_NUMA_NODE | BPF_F_RDONLY | BPF_F_WRONLY | BPF_F_STACK_BUILD_ID;

/// The flags `get_stackid` accepts.
pub const STACKID_FLAG_MASK: u64 =
    BPF_F_SKIP_FIELD_MASK | BPF_F_USER_STACK | BPF_F_FAST_STACK_CMP | BPF_F_REUSE_STACKID;

/// The flags `get_stack` accepts.
pub const GET_STACK_FLAG_MASK: u64 = BPF_F_SKIP_FIELD_MASK | BPF_F_USER_STACK | BPF_F_USER_BUILD_ID;

/// Perf callchain marker: the kernel frames follow.
pub const PERF_CONTEXT_KERNEL: u64 = -128i64 as u64;
/// Perf callchain marker: the user frames follow.
pub const PERF_CONTEXT_USER: u64 = -512i64 as u64;

/// Longest build id the kernel stores (SHA-1: 20 bytes).
pub const BUILD_ID_SIZE_MAX: usize = 20;

/// The default `kernel.perf_event_max_stack` sysctl.
pub const PERF_MAX_STACK_DEPTH: u32 = 127;

/// `BPF_STACK_BUILD_ID_EMPTY`: the frame is unused (past the stack's end).
pub const BPF_STACK_BUILD_ID_EMPTY: i32 = 0;
/// `BPF_STACK_BUILD_ID_VALID`: `build_id` and the file offset are valid.
pub const BPF_STACK_BUILD_ID_VALID: i32 = 1;
/// `BPF_STACK_BUILD_ID_IP`: no build id could be had; the word holds the ip.
pub const BPF_STACK_BUILD_ID_IP: i32 = 2;

/// One frame of a build-id stack: `struct bpf_stack_build_id`.
///
/// 32 bytes, aligned to 8, with no padding, so a map value (or a
/// `get_stack` buffer) of `n * 32` bytes can be viewed as `&[StackBuildId]`
/// without a copy through the `zerocopy` traits (re-exported as
/// [`kstackmap::zerocopy`](crate::zerocopy)):
///
/// ```
/// use kstackmap::uapi::StackBuildId;
/// use kstackmap::zerocopy::{FromBytes, IntoBytes};
///
/// let value = [0u64; 8]; // 64 bytes, 8-aligned: two frames
/// let frames = <[StackBuildId]>::ref_from_bytes(value.as_bytes()).unwrap();
/// assert_eq!(frames.len(), 2);
/// ```
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct StackBuildId {
    /// One of `BPF_STACK_BUILD_ID_{EMPTY, VALID, IP}`; see [`StackBuildId::status`].
    pub status: i32,
    /// The build id, zero-padded to 20 bytes (all zero unless VALID).
    pub build_id: [u8; BUILD_ID_SIZE_MAX],
    /// The C union `{ u64 offset; u64 ip; }`: the file offset when VALID,
    /// the instruction address when IP.
    pub offset_or_ip: u64,
}

assert_eq_size!(StackBuildId, [u8; 32]);
assert_eq_align!(StackBuildId, u64);
const_assert_eq!(core::mem::offset_of!(StackBuildId, status), 0);
const_assert_eq!(core::mem::offset_of!(StackBuildId, build_id), 4);
const_assert_eq!(core::mem::offset_of!(StackBuildId, offset_or_ip), 24);

impl StackBuildId {
    /// A frame with a build id and the file offset of the ip in that file.
    pub const fn valid(build_id: [u8; BUILD_ID_SIZE_MAX], offset: u64) -> Self {
        StackBuildId {
            status: BPF_STACK_BUILD_ID_VALID,
            build_id,
            offset_or_ip: offset,
        }
    }

    /// A frame that could not be resolved: status IP, zero build id.
    pub const fn from_ip(ip: u64) -> Self {
        StackBuildId {
            status: BPF_STACK_BUILD_ID_IP,
            build_id: [0; BUILD_ID_SIZE_MAX],
            offset_or_ip: ip,
        }
    }

    /// The decoded status.
    ///
    /// # Errors
    ///
    /// The raw value, when it is none of the three statuses.
    pub fn status(&self) -> Result<BuildIdStatus, i32> {
        BuildIdStatus::try_from(self.status)
    }

    /// The file offset, when the status is VALID.
    pub fn offset(&self) -> Option<u64> {
        (self.status == BPF_STACK_BUILD_ID_VALID).then_some(self.offset_or_ip)
    }

    /// The instruction address, when the status is IP.
    pub fn ip(&self) -> Option<u64> {
        (self.status == BPF_STACK_BUILD_ID_IP).then_some(self.offset_or_ip)
    }
}

/// The `status` of a [`StackBuildId`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum BuildIdStatus {
    /// `BPF_STACK_BUILD_ID_EMPTY` (0).
    Empty = BPF_STACK_BUILD_ID_EMPTY,
    /// `BPF_STACK_BUILD_ID_VALID` (1).
    Valid = BPF_STACK_BUILD_ID_VALID,
    /// `BPF_STACK_BUILD_ID_IP` (2).
    Ip = BPF_STACK_BUILD_ID_IP,
}

impl TryFrom<i32> for BuildIdStatus {
    type Error = i32;

    /// Decodes a raw status; an unknown value comes back as the error.
    fn try_from(raw: i32) -> Result<Self, i32> {
        match raw {
            BPF_STACK_BUILD_ID_EMPTY => Ok(BuildIdStatus::Empty),
            BPF_STACK_BUILD_ID_VALID => Ok(BuildIdStatus::Valid),
            BPF_STACK_BUILD_ID_IP => Ok(BuildIdStatus::Ip),
            other => Err(other),
        }
    }
}

impl From<BuildIdStatus> for i32 {
    fn from(s: BuildIdStatus) -> i32 {
        s as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::{FromBytes, IntoBytes};

    #[test]
    fn build_id_bytes_are_the_c_layout() {
        let mut id = [0u8; 20];
        id[0] = 0xab;
        id[19] = 0xcd;
        let f = StackBuildId::valid(id, 0x1122_3344_5566_7788);
        let b = f.as_bytes();
        assert_eq!(&b[0..4], &1i32.to_ne_bytes());
        assert_eq!(b[4], 0xab);
        assert_eq!(b[23], 0xcd);
        assert_eq!(&b[24..32], &0x1122_3344_5566_7788u64.to_ne_bytes());
        let back = StackBuildId::read_from_bytes(b).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.offset(), Some(0x1122_3344_5566_7788));
        assert_eq!(back.ip(), None);
    }

    #[test]
    fn status_decodes() {
        assert_eq!(StackBuildId::from_ip(7).status(), Ok(BuildIdStatus::Ip));
        assert_eq!(StackBuildId::from_ip(7).ip(), Some(7));
        assert_eq!(StackBuildId::default().status(), Ok(BuildIdStatus::Empty));
        assert_eq!(BuildIdStatus::try_from(3), Err(3));
        assert_eq!(i32::from(BuildIdStatus::Valid), 1);
    }

    #[test]
    fn value_views_without_copy() {
        let words = [0u64; 12];
        let frames = <[StackBuildId]>::ref_from_bytes(words.as_bytes()).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames.as_ptr() as usize, words.as_ptr() as usize);
        // A length that is not a multiple of 32 is refused, not truncated.
        assert!(<[StackBuildId]>::ref_from_bytes(&words.as_bytes()[..40]).is_err());
    }

    #[test]
    fn marker_values() {
        assert_eq!(PERF_CONTEXT_KERNEL, 0xffff_ffff_ffff_ff80);
        assert_eq!(PERF_CONTEXT_USER, 0xffff_ffff_ffff_fe00);
        assert_eq!(STACK_CREATE_FLAG_MASK, 0x3c);
    }
}
