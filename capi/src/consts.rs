//! Constants for C: flags, errnos, build-id frames.
//!
//! Prefixed `KSM_` so that a C file can include both `kstackmap.h` and the
//! kernel's `linux/bpf.h` (which has the `BPF_F_*` names as enumerators).
//! Literals, not paths, because cbindgen copies only literal values; the
//! assertions at the end tie each one to the Rust crate's.

use kstackmap::uapi;
use kstackmap::Error;

/// `ksm_get_stackid` flags: frames to skip (`BPF_F_SKIP_FIELD_MASK`).
pub const KSM_F_SKIP_FIELD_MASK: u64 = 0xff;
/// `ksm_get_stackid` flags: a user stack (`BPF_F_USER_STACK`); build-id
/// maps resolve only user frames.
pub const KSM_F_USER_STACK: u64 = 1 << 8;
/// `ksm_get_stackid` flags: compare hashes only (`BPF_F_FAST_STACK_CMP`).
pub const KSM_F_FAST_STACK_CMP: u64 = 1 << 9;
/// `ksm_get_stackid` flags: replace another stack in the bucket instead
/// of failing with `-EEXIST` (`BPF_F_REUSE_STACKID`).
pub const KSM_F_REUSE_STACKID: u64 = 1 << 10;

/// `ksm_map_attr.map_flags`: honour `numa_node` (`BPF_F_NUMA_NODE`).
pub const KSM_F_NUMA_NODE: u32 = 4;
/// `ksm_map_attr.map_flags`: `ksm_delete` gets `-EPERM` (`BPF_F_RDONLY`).
pub const KSM_F_RDONLY: u32 = 8;
/// `ksm_map_attr.map_flags`: `ksm_lookup` and `ksm_get_next_key` get
/// `-EPERM` (`BPF_F_WRONLY`).
pub const KSM_F_WRONLY: u32 = 16;
/// `ksm_map_attr.map_flags`: values are `struct ksm_stack_build_id`
/// frames (`BPF_F_STACK_BUILD_ID`); `value_size` a multiple of 32.
pub const KSM_F_STACK_BUILD_ID: u32 = 32;

/// Marker word in a perf callchain: kernel frames follow
/// (`PERF_CONTEXT_KERNEL`, `(uint64_t)-128`).
pub const KSM_PERF_CONTEXT_KERNEL: u64 = u64::MAX - 127;
/// Marker word in a perf callchain: user frames follow
/// (`PERF_CONTEXT_USER`, `(uint64_t)-512`).
pub const KSM_PERF_CONTEXT_USER: u64 = u64::MAX - 511;
/// The default `perf_event_max_stack`: pass it as `max_stack`.
pub const KSM_PERF_MAX_STACK_DEPTH: u32 = 127;
/// Bytes of a build id (`BUILD_ID_SIZE_MAX`).
pub const KSM_BUILD_ID_SIZE_MAX: usize = 20;

/// `ksm_stack_build_id.status`: no frame (`BPF_STACK_BUILD_ID_EMPTY`).
pub const KSM_STACK_BUILD_ID_EMPTY: i32 = 0;
/// `ksm_stack_build_id.status`: `build_id` and `offset_or_ip` (a file
/// offset) are valid (`BPF_STACK_BUILD_ID_VALID`).
pub const KSM_STACK_BUILD_ID_VALID: i32 = 1;
/// `ksm_stack_build_id.status`: only `offset_or_ip` (the ip) is valid
/// (`BPF_STACK_BUILD_ID_IP`).
pub const KSM_STACK_BUILD_ID_IP: i32 = 2;

/// `EPERM`, as returned negated: the map's `KSM_F_RDONLY` / `KSM_F_WRONLY`
/// forbids the call.
pub const KSM_EPERM: i32 = 1;
/// `ENOENT`, as returned negated: no stack under that id (or no next id).
pub const KSM_ENOENT: i32 = 2;
/// `E2BIG`, as returned negated: `max_entries` too large, or a delete of
/// an id past the buckets.
pub const KSM_E2BIG: i32 = 7;
/// `ENOMEM`, as returned negated: no free element, a full depot, or the
/// memory given to `ksm_*_init` is too small.
pub const KSM_ENOMEM: i32 = 12;
/// `EFAULT`, as returned negated: the chain is not longer than the skip.
pub const KSM_EFAULT: i32 = 14;
/// `EEXIST`, as returned negated: another stack holds the bucket.
pub const KSM_EEXIST: i32 = 17;
/// `EINVAL`, as returned negated: a bad attribute, flag, size or pointer.
pub const KSM_EINVAL: i32 = 22;

// The literals above are the crate's values.
const _: () = {
    assert!(KSM_F_SKIP_FIELD_MASK == uapi::BPF_F_SKIP_FIELD_MASK);
    assert!(KSM_F_USER_STACK == uapi::BPF_F_USER_STACK);
    assert!(KSM_F_FAST_STACK_CMP == uapi::BPF_F_FAST_STACK_CMP);
    assert!(KSM_F_REUSE_STACKID == uapi::BPF_F_REUSE_STACKID);
    assert!(KSM_F_NUMA_NODE == uapi::BPF_F_NUMA_NODE);
    assert!(KSM_F_RDONLY == uapi::BPF_F_RDONLY);
    assert!(KSM_F_WRONLY == uapi::BPF_F_WRONLY);
    assert!(KSM_F_STACK_BUILD_ID == uapi::BPF_F_STACK_BUILD_ID);
    assert!(KSM_PERF_CONTEXT_KERNEL == uapi::PERF_CONTEXT_KERNEL);
    assert!(KSM_PERF_CONTEXT_USER == uapi::PERF_CONTEXT_USER);
    assert!(KSM_PERF_MAX_STACK_DEPTH == uapi::PERF_MAX_STACK_DEPTH);
    assert!(KSM_BUILD_ID_SIZE_MAX == uapi::BUILD_ID_SIZE_MAX);
    assert!(KSM_STACK_BUILD_ID_EMPTY == uapi::BPF_STACK_BUILD_ID_EMPTY);
    assert!(KSM_STACK_BUILD_ID_VALID == uapi::BPF_STACK_BUILD_ID_VALID);
    assert!(KSM_STACK_BUILD_ID_IP == uapi::BPF_STACK_BUILD_ID_IP);
    assert!(KSM_EPERM == Error::Perm.errno());
    assert!(KSM_ENOENT == Error::NoEnt.errno());
    assert!(KSM_E2BIG == Error::TooBig.errno());
    assert!(KSM_ENOMEM == Error::NoMem.errno());
    assert!(KSM_EFAULT == Error::Fault.errno());
    assert!(KSM_EEXIST == Error::Exist.errno());
    assert!(KSM_EINVAL == Error::Inval.errno());
};
