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

#[cfg(any(feature = "alloc", loom))]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod attr;
pub mod build_id;
pub mod callchain;
mod depot;
pub mod elf_note;
mod error;
pub mod freelist;
mod hash_stack;
pub mod jhash;
mod map;
#[cfg(all(test, feature = "std"))]
mod map_tests;
#[cfg(feature = "model")]
pub mod model;
#[cfg(feature = "std")]
pub mod proc_maps;
mod storage;
mod sync;
pub mod uapi;

pub use attr::{Config, MapAttr};
pub use build_id::{BuildId, Vma, VmaResolver};
pub use callchain::{get_stack, get_stack_max, get_stack_pe};
pub use depot::{
    DepotConfig, DepotStats, StackDepot, StackDepotIn, StackKind, MAX_ARENA_WORDS, MAX_CAPACITY,
    PROBE_MAX,
};
pub use elf_note::{parse_build_id, BuildIdNote};
pub use error::Error;
pub use jhash::{jhash2, trace_hash};
#[cfg(feature = "alloc")]
pub use map::AuditError;
pub use map::{StackMap, StackMapIn};
#[cfg(feature = "std")]
pub use proc_maps::ProcMaps;
pub use storage::StaticStorage;
pub use uapi::{BuildIdStatus, StackBuildId};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
