//! # kstackmap
//!
//! A `#![no_std]`, allocation-free, lock-free stack trace map: a Rust
//! re-design of the Linux BPF stack trace map (`kernel/bpf/stackmap.c`).
//!
//! Callers hand the map a call chain (instruction addresses, innermost
//! first) and get back a small id; the same stack always gets the same id
//! (the kernel's, bit for bit), and a reader can fetch the stack for an id.
//! Every element is preallocated or lives in memory the caller hands over;
//! the hot path never allocates, blocks or panics.
//!
//! ```
//! use kstackmap::{uapi::BPF_F_REUSE_STACKID, StackMap};
//!
//! # fn main() -> Result<(), kstackmap::Error> {
//! // Room for 4096 stacks of up to 64 frames (an ips map, one CPU shard).
//! let map = StackMap::with_capacity(4096, 64)?;
//!
//! // From any thread or CPU, in any context: chain -> id.
//! let chain = [0xffff_8000_1000_0010, 0x4011d6, 0x401234];
//! let id = map.get_stackid(/* cpu */ 0, &chain, 0)?;
//! assert_eq!(map.get_stackid(1, &chain, 0)?, id); // same stack, same id
//!
//! // Later, from a reader: id -> frames.
//! let mut frames = [0u64; 64];
//! assert_eq!(map.lookup_ips(id, &mut frames)?, &chain[..]);
//! for (id, frames) in map.iter()? {
//!     println!("stack {id}: {:x?}", &frames[..]);
//! }
//!
//! // With BPF_F_REUSE_STACKID a bucket can change hands: a versioned id
//! // tells a stale id from a current one (no kernel has this).
//! let r = map.get_stackid_versioned(0, &chain, BPF_F_REUSE_STACKID)?;
//! let mut value = [0u8; 64 * 8];
//! map.lookup_versioned(r, &mut value)?; // Err(Error::Stale) once replaced
//! # Ok(()) }
//! ```
//!
//! # What is where
//!
//! - [`StackMap`] ([`StackMapIn`] over borrowed memory): the kernel-exact
//!   map. `get_stackid` and its `_resolved` (build ids) and `_pe` (perf
//!   callchains) variants; the syscall side (`lookup`, `delete`,
//!   `get_next_key`, ...) with the kernel's errnos ([`Error`]); versioned
//!   ids ([`StackRef`]).
//! - [`StackDepot`] ([`StackDepotIn`] over borrowed memory): a stack store
//!   that never drops or merges a stack (Linux's `lib/stackdepot.c` idea,
//!   lock-free): `intern` frames to an id that never changes, `get` them
//!   back zero-copy.
//! - [`get_stack`] and [`get_stack_pe`]: `bpf_get_stack`, no map involved.
//! - Build ids: the [`VmaResolver`] trait, an ELF note parser
//!   ([`parse_build_id`]), and `ProcMaps` (feature `std`) over
//!   `/proc/PID/maps`.
//! - [`uapi`]: the constants and `struct bpf_stack_build_id` of
//!   `include/uapi/linux/bpf.h`; [`jhash2`] and [`trace_hash`], the
//!   kernel's id hash.
//!
//! Without an allocator, put the map in memory you own:
//! [`StackMapIn::new_in`] over [`StackMapIn::storage_size`] bytes, or a
//! `static` [`StaticStorage`].
//!
//! # Features
//!
//! - `alloc`: owned maps (`StackMap::new`, `with_config`, `with_capacity`)
//!   and `StackMapIn::audit`.
//! - `std` (default; implies `alloc`): `ProcMaps`, and
//!   `From<Error> for std::io::Error`.
//! - `model` (implies `alloc`): `kstackmap::model`, the sequential
//!   reference model the tests and fuzz targets compare the map with.
//!
//! Without them the crate builds for bare targets such as
//! `x86_64-unknown-none` and `thumbv7em-none-eabihf`.
//!
//! # Guarantees
//!
//! Sequentially every call gives the kernel's result, errno for errno and
//! id for id. Concurrently the map does better than the kernel: a
//! `get_stackid` hit is reported only if the bucket held exactly that
//! stack at one moment of the call, and readers never empty a bucket (the
//! kernel's can make a concurrent insert vanish). All methods take `&self`
//! and may be called from any number of threads.
#![no_std]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

// The base: UAPI facts, errors, hashes, the loom switch, the freelist and
// the memory layout of caller-provided storage.
mod error;
#[cfg(loom)]
pub mod freelist;
#[cfg(not(loom))]
mod freelist;
mod hash;
mod storage;
mod sync;
pub mod uapi;

// The structures and what feeds them.
mod build_id;
mod callchain;
mod depot;
mod map;
#[cfg(feature = "model")]
#[cfg_attr(docsrs, doc(cfg(feature = "model")))]
pub mod model;

pub use build_id::{parse_build_id, parse_build_id_from, parse_note_buf, BuildIdNote, ElfSource};
pub use build_id::{BuildId, Vma, VmaResolver};
#[cfg(feature = "std")]
pub use build_id::{Mapping, Perms, ProcMaps};
pub use callchain::{get_stack, get_stack_max, get_stack_pe};
pub use depot::{
    DepotConfig, DepotStats, StackDepot, StackDepotIn, StackKind, MAX_ARENA_WORDS, MAX_CAPACITY,
    PROBE_MAX,
};
pub use error::Error;
pub use hash::{jhash2, trace_hash};
#[cfg(feature = "alloc")]
pub use map::AuditError;
pub use map::{Config, Frames, Iter, MapAttr, StackMap, StackMapIn, StackRef};
pub use storage::StaticStorage;
pub use sync::HEAD_INDEX_MAX;
pub use uapi::{BuildIdStatus, StackBuildId};

/// The `heapless` crate, re-exported on purpose: [`StackMap::iter`] yields
/// each stack as a [`heapless::Vec`] ([`Frames`]), and this path names the
/// very version the map uses.
pub use heapless;
/// The `zerocopy` crate, re-exported on purpose: [`StackBuildId`]
/// implements its `FromBytes`, `IntoBytes`, `KnownLayout` and `Immutable`,
/// so a map value can be viewed as `&[StackBuildId]` without a copy; this
/// path names the very version those impls are for.
pub use zerocopy;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
