//! A depot's geometry (checked from its [`DepotConfig`]) and the layout of
//! its one block of memory.
//!
//! ```text
//! +-----------+---------------+----------------+------------------+---------------------+
//! | cursors   | stats         | index          | directory        | arena               |
//! | 1 padded  | nr_cpus x     | n_slots x      | capacity x       | arena_words x u64   |
//! | line      | padded line   | AtomicU32      | AtomicU32        | (left uninitialised)|
//! +-----------+---------------+----------------+------------------+---------------------+
//! ```
//!
//! Everything but the arena is written in place when the depot is made;
//! the arena's words are only ever read after a record was written there.

use core::mem::{align_of, size_of};

use crossbeam_utils::CachePadded;

use super::arena::{CpuStats, Cursors};
use super::DepotConfig;
use crate::sync::AtomicU32;
use crate::Error;

/// The most stacks a depot can hold: index words keep `id + 1` in their
/// low bits and at least 7 bits of hash (the tag) above it.
pub const MAX_CAPACITY: u32 = 1 << 24;

/// The most arena words: the directory keeps a record's word offset
/// shifted left by one (the low bit says "published") in a `u32`.
pub const MAX_ARENA_WORDS: usize = 1 << 31;

/// The longest probe run an intern walks: past it, an intern of a new
/// stack fails with `NoMem` (see the `index` module).
pub const PROBE_MAX: u32 = 256;

/// The checked shape of a depot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub capacity: u32,
    /// Index slots: `(2 * capacity).next_power_of_two()`, so the index is
    /// at most half full.
    pub n_slots: u32,
    /// Bits of an index word that hold `id + 1`: enough for `capacity`.
    pub id_bits: u32,
    /// `min(n_slots, PROBE_MAX)`.
    pub probe_max: u32,
    pub arena_words: usize,
    pub nr_cpus: usize,
}

impl Geometry {
    /// Checks `cfg`: `Inval` for capacity 0 or above [`MAX_CAPACITY`], an
    /// arena too small for one record (a header and one frame: 2 words)
    /// or above [`MAX_ARENA_WORDS`], and `nr_cpus` 0.
    pub fn new(cfg: &DepotConfig) -> Result<Geometry, Error> {
        if cfg.capacity == 0 || cfg.capacity > MAX_CAPACITY {
            return Err(Error::Inval);
        }
        if cfg.arena_words < 2 || cfg.arena_words > MAX_ARENA_WORDS {
            return Err(Error::Inval);
        }
        if cfg.nr_cpus == 0 {
            return Err(Error::Inval);
        }
        // capacity <= 2^24: no overflow.
        let n_slots = (2 * cfg.capacity).next_power_of_two();
        Ok(Geometry {
            capacity: cfg.capacity,
            n_slots,
            id_bits: u32::BITS - cfg.capacity.leading_zeros(),
            probe_max: n_slots.min(PROBE_MAX),
            arena_words: cfg.arena_words,
            nr_cpus: cfg.nr_cpus,
        })
    }
}

/// Byte offsets of the parts of a depot's block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub stats: usize,
    pub index: usize,
    pub dir: usize,
    pub arena: usize,
    /// Bytes from the (aligned) start of the block to its end.
    pub size: usize,
}

impl Layout {
    /// The alignment the block's start needs.
    pub const ALIGN: usize = max(
        align_of::<CachePadded<Cursors>>(),
        max(align_of::<CachePadded<CpuStats>>(), align_of::<u64>()),
    );

    /// The layout for `g`; `NoMem` if it does not fit the address space.
    pub fn new(g: &Geometry) -> Result<Layout, Error> {
        let stats = size_of::<CachePadded<Cursors>>();
        let stats_len = g
            .nr_cpus
            .checked_mul(size_of::<CachePadded<CpuStats>>())
            .ok_or(Error::NoMem)?;
        let index = stats.checked_add(stats_len).ok_or(Error::NoMem)?;
        let word = size_of::<AtomicU32>();
        let dir = (g.n_slots as usize)
            .checked_mul(word)
            .and_then(|n| n.checked_add(index))
            .ok_or(Error::NoMem)?;
        let arena = (g.capacity as usize)
            .checked_mul(word)
            .and_then(|n| n.checked_add(dir))
            .and_then(|n| n.checked_next_multiple_of(align_of::<u64>()))
            .ok_or(Error::NoMem)?;
        let size = g
            .arena_words
            .checked_mul(size_of::<u64>())
            .and_then(|n| n.checked_add(arena))
            .ok_or(Error::NoMem)?;
        // Slack so that a block of `storage_size` bytes at any address fits.
        let slack = size.checked_add(Self::ALIGN).ok_or(Error::NoMem)?;
        if slack > isize::MAX as usize {
            return Err(Error::NoMem);
        }
        Ok(Layout {
            stats,
            index,
            dir,
            arena,
            size,
        })
    }

    /// Bytes a caller must provide: the block plus alignment slack.
    pub fn storage_size(&self) -> usize {
        self.size + Self::ALIGN - 1
    }
}

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// Writes `n` values made by `make` at `at`; returns the initialised slice.
///
/// # Safety
///
/// `at` is aligned for `T` and valid for writes of `n` `T`s, exclusively.
pub(crate) unsafe fn init_slice<T>(at: *mut u8, n: usize, make: impl Fn() -> T) -> *mut [T] {
    let at = at.cast::<T>();
    for i in 0..n {
        // SAFETY: `i < n`, inside the caller's block; aligned by contract.
        unsafe { at.add(i).write(make()) };
    }
    core::ptr::slice_from_raw_parts_mut(at, n)
}
