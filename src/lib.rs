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
//! Features: `alloc` (owned maps), `std` (implies `alloc`; the
//! `/proc/PID/maps` build-id resolver). Without them the crate builds for
//! bare targets such as `x86_64-unknown-none` and `thumbv7em-none-eabihf`.
#![no_std]
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
pub use map::{Config, MapAttr, StackMap, StackMapIn};
pub use storage::StaticStorage;
pub use sync::HEAD_INDEX_MAX;
pub use uapi::{BuildIdStatus, StackBuildId};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
