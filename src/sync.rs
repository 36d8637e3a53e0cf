//! The one place that chooses between `core` atomics and loom's.
//!
//! Every atomic the crate's concurrent protocols touch is named through this
//! module, so that building with `RUSTFLAGS="--cfg loom"` swaps all of them
//! for loom's model-checked versions at once (crossbeam-utils and
//! sharded-slab do the same). Nothing else in the crate may name
//! `core::sync::atomic` directly.
//!
//! # Head words
//!
//! The freelist packs a slot index and an ABA tag into one atomic word.
//! Targets with 64-bit atomics use an [`AtomicU64`]; targets without (for
//! example `thumbv7em-none-eabihf`) fall back to an [`AtomicU32`], which
//! caps a map at [`HEAD_INDEX_MAX`] elements there. The index field is
//! sized by the list's capacity, at most half the word, and the rest is
//! tag (see `freelist.rs`). The choice is a type alias, as crossbeam-epoch
//! does with `cfg(target_has_atomic = "64")`.
//!
//! # Element words
//!
//! A map element (header and data, see `map/elem.rs`) is an array of
//! [`ElemAtomic`] words: [`AtomicU64`] where the target has 64-bit atomics
//! (an ip is one relaxed load or store, as in the kernel's layout), and
//! [`AtomicU32`] elsewhere (an ip is two).
//!
//! `RUSTFLAGS="--cfg kstackmap_head32"` forces both fallbacks (the narrow
//! head and 32-bit element words) on any target, so the code thumbv7em
//! runs is unit-tested and model-checked on a 64-bit host too (scripts/test
//! does so for the freelist and the map).

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering};

#[cfg(all(not(loom), target_has_atomic = "64"))]
#[cfg_attr(kstackmap_head32, allow(unused_imports))]
pub(crate) use core::sync::atomic::AtomicU64;
#[cfg(all(loom, target_has_atomic = "64"))]
#[cfg_attr(kstackmap_head32, allow(unused_imports))]
pub(crate) use loom::sync::atomic::AtomicU64;

/// The atomic word that holds a freelist head: `{tag, index}` packed.
#[cfg(all(target_has_atomic = "64", not(kstackmap_head32)))]
pub(crate) type HeadAtomic = AtomicU64;
/// The plain integer behind [`HeadAtomic`].
#[cfg(all(target_has_atomic = "64", not(kstackmap_head32)))]
pub(crate) type HeadWord = u64;
/// The most bits of a head word the index may take (half the word): the
/// tag always has at least as many.
#[cfg(all(target_has_atomic = "64", not(kstackmap_head32)))]
pub(crate) const HEAD_INDEX_BITS: u32 = 32;

/// The atomic word that holds a freelist head: `{tag, index}` packed.
#[cfg(any(not(target_has_atomic = "64"), kstackmap_head32))]
pub(crate) type HeadAtomic = AtomicU32;
/// The plain integer behind [`HeadAtomic`].
#[cfg(any(not(target_has_atomic = "64"), kstackmap_head32))]
pub(crate) type HeadWord = u32;
/// The most bits of a head word the index may take (half the word): the
/// tag always has at least as many.
#[cfg(any(not(target_has_atomic = "64"), kstackmap_head32))]
pub(crate) const HEAD_INDEX_BITS: u32 = 16;

/// The atomic word map elements are made of (header and data).
#[cfg(all(target_has_atomic = "64", not(kstackmap_head32)))]
pub(crate) type ElemAtomic = AtomicU64;
/// The plain integer behind [`ElemAtomic`].
#[cfg(all(target_has_atomic = "64", not(kstackmap_head32)))]
pub(crate) type ElemWord = u64;

/// The atomic word map elements are made of (header and data).
#[cfg(any(not(target_has_atomic = "64"), kstackmap_head32))]
pub(crate) type ElemAtomic = AtomicU32;
/// The plain integer behind [`ElemAtomic`].
#[cfg(any(not(target_has_atomic = "64"), kstackmap_head32))]
pub(crate) type ElemWord = u32;

/// The largest number of elements a freelist (and so a map) can hold on
/// this target: the index field must also encode "empty".
pub const HEAD_INDEX_MAX: u32 = ((1u64 << HEAD_INDEX_BITS) - 2) as u32;

/// Tell the CPU (or loom's scheduler) that this thread is spinning on a
/// value another thread will change.
#[inline]
#[allow(dead_code)] // for the map's retry loops; the freelist never spins
pub(crate) fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

/// Access tracking for plain (non-atomic) memory that threads share under
/// a publication protocol: the depot's arena.
///
/// The memory itself is always plain words reached through a raw pointer,
/// so that readers can be handed `&[u64]` into it. Under loom, each word
/// also gets one `Track`, a `loom::cell::UnsafeCell<()>`, and every access
/// to the word goes through [`Track::with`] / [`Track::with_mut`], so loom
/// reports any read or write that is not ordered after the last write (a
/// data race) as a causality violation, the way crossbeam-epoch wraps its
/// cells. Without loom, `Track` is never built and the calls are free.
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct Track(loom::cell::UnsafeCell<()>);

#[cfg(loom)]
impl Track {
    /// A fresh cell: no access yet.
    pub(crate) fn new() -> Self {
        Track(loom::cell::UnsafeCell::new(()))
    }

    /// Runs `f`, a read of the tracked memory, as an immutable access.
    pub(crate) fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        self.0.with(|_| f())
    }

    /// Runs `f`, a write of the tracked memory, as a mutable access.
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce() -> R) -> R {
        self.0.with_mut(|_| f())
    }
}
