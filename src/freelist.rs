//! A lock-free per-CPU freelist of element indices: the kernel's
//! `percpu_freelist.c` without its spinlocks.
//!
//! # Algorithm
//!
//! Each CPU owns one Treiber stack. A stack is a single atomic *head word*
//! (one per CPU, each on its own cache line) holding `{tag, index}` of the
//! top element; each element has a next-link (`links[i]` = the index below
//! `i`, or `EMPTY`). Where the links live is the [`Links`] trait's business:
//! a side array of [`AtomicU32`] (the tests, `OwnedFreeList`), or a word
//! inside each map element (the map: no side array, as in the kernel, where
//! `fnode` is the element's first field). No pointers are stored anywhere,
//! so the list can sit in caller-provided memory, be shared between address
//! spaces, and never allocates.
//!
//! - `push(cpu, i)`: read the head of `cpu % nr_cpus`, write
//!   `links[i] = head.index`, CAS the head from `{tag, index}` to
//!   `{tag, i}`; retry on failure.
//! - `pop(cpu)`: for the CPU's own stack, then the others round-robin
//!   starting at `cpu + 1` (the kernel's `for_each_cpu_wrap`): read the
//!   head `{tag, i}`; if `i` is `EMPTY` move on to the next CPU, else read
//!   `next = links[i]` and CAS the head to `{tag + 1, next}`; on success `i`
//!   is the caller's, on failure retry with the value the CAS saw. On
//!   ARMv7-M, ARMv7E-M and ARMv8-M Mainline the read of the head is a
//!   load-exclusive and the CAS a store-exclusive (see [ABA](#aba-the-exact-bound)).
//! - `populate()`: spreads `0..n` over the CPUs exactly like the kernel's
//!   `pcpu_freelist_populate`: `n / nr_cpus` each, the first
//!   `n % nr_cpus` CPUs one more, CPU 0 getting the lowest indices, each
//!   range pushed in increasing order (so the highest index of the range is
//!   on top and is popped first, as in the kernel). [`FreeList::home`] is
//!   the CPU a given index was put on.
//!
//! The kernel falls back to an extra, locked list when an NMI cannot take a
//! CPU's lock; a lock-free stack never needs one, so there is none.
//!
//! # Invariants
//!
//! - Conservation: every index in `0..capacity` is in exactly one place at
//!   any time: on exactly one CPU's stack (reachable from its head through
//!   `links`), or in the hands of exactly one caller (returned by `pop`, or
//!   never pushed since `new`/`populate`, and not pushed back yet), within
//!   the ABA bound below.
//! - No index is returned by two pops without a push of it between them.
//! - A stack's links form a chain that ends in `EMPTY`: an element's link is
//!   written only by the thread that holds it (in `push`, before the CAS that
//!   publishes it), never while it is on a stack.
//! - The tag of a head only moves forward (mod 2^T, T the tag bits), by one
//!   on each successful pop; see the ABA walk-through on
//!   `FreeList::pop_one` in the source.
//!
//! They hold as long as callers keep their side of the contract: push only
//! indices they hold (got from `pop`, or never handed to the list). Pushing
//! an index twice is a caller bug that no cheap check can see; it breaks
//! conservation (an index may then be popped twice) but is still defined
//! behaviour: every access is atomic, nothing panics in release builds, and
//! each `pop` still finishes in a bounded number of steps when uncontended.
//!
//! # Progress
//!
//! Lock-free, not wait-free. `push` and `pop` retry only when their CAS on a
//! head fails, and (with the strong `compare_exchange` used here) a CAS fails
//! only because another thread's CAS on the same head succeeded in between:
//! every failure is someone else's progress. A thread preempted (or
//! interrupted, or killed) at any point never blocks the others: there is no
//! lock to hold, and no intermediate state another thread must wait out. A
//! single thread can starve under unbounded contention on one head. On LL/SC
//! targets (thumbv7em) the strong CAS is itself a short loop that retries a
//! lost reservation, and so is the exclusive pop: a reservation is lost
//! only when an exception was taken on this core (whose handler may have
//! made progress) or another observer wrote the head. `pop` from an
//! interrupt handler that preempted a `push` or `pop` on the same CPU is
//! fine (the NMI case the kernel needs trylock for).
//!
//! `pop` returns `None` only after it saw every CPU's stack empty, each at
//! some moment during the call (not all at the same moment, as in the
//! kernel): an index pushed to an already-visited CPU while `pop` looks at
//! the others is missed.
//!
//! # Head word
//!
//! A head is one atomic word of `W` bits: an [`AtomicU64`](core::sync::atomic::AtomicU64)
//! (W = 64) where the target has 64-bit atomics, an [`AtomicU32`] (W = 32)
//! elsewhere (thumbv7em-none-eabihf and other 32-bit-CAS targets) or with
//! `RUSTFLAGS="--cfg kstackmap_head32"` (so the narrow head's tests and loom
//! models also run on 64-bit hosts). The index field takes the low
//! `I = max(1, bit length of capacity)` bits, the fewest that hold every
//! index `0..capacity` and the all-ones `EMPTY`; **every other bit is tag**:
//! `T = W - I`. A list holds at most [`MAX_ELEMS`] elements (2^32 - 2 with
//! W = 64, 65,534 with W = 32; larger lists are refused with
//! [`Error::TooBig`](crate::Error::TooBig) from `OwnedFreeList::new`
//! (feature `alloc`)), so `I <= W / 2` and `T >= W / 2`.
//!
//! | capacity | I | T (W = 64) | T (W = 32) |
//! |---|---|---|---|
//! | 24 | 5 | 59 | 27 |
//! | 16,384 | 15 | 49 | 17 |
//! | 65,534 | 16 | 48 | 16 |
//! | 2^32 - 2 | 32 | 32 | (refused) |
//!
//! # ABA: the exact bound
//!
//! A pop reads the head `{t, A}` and A's link `B`, then swaps in
//! `{t + 1, B}`. Between the read and the swap (its *window*) other
//! operations on the same shard may pop A and B and push A back on top of
//! something else; the swap must then fail, or B (which someone holds)
//! goes back on the list and one slot ends up in two places.
//!
//! - **CAS targets** (every target with 64-bit atomics, W = 64; and the
//!   32-bit head wherever there is no exclusive pop below, e.g. hosts with
//!   `--cfg kstackmap_head32`, W = 32). The swap is a CAS of the whole
//!   word, so a stale one succeeds only if the word is bit for bit what the
//!   pop read. Only successful pops change the tag (+1 mod 2^T), and pushes
//!   alone can't bring A back on top (that needs a pop of A), so **a pop
//!   can be fooled only if at least 2^T successful pops of the same shard
//!   run inside its window** (the shortest such history is pop A, pop B,
//!   push A, then 2^T - 2 times pop A, push A: 2^T pops and 2^T - 1
//!   pushes). Fewer pops never fool it, whatever else happens; with
//!   exactly 2^T it can. So: W = 64: 2^T >= 2^32 pops (2^59 for a
//!   24-entry map); W = 32 without LL/SC (`--cfg kstackmap_head32` hosts):
//!   2^T >= 2^16 pops (65,536 for a 65,534-entry map, 2^27 for 24
//!   entries). The bound is the tag width, and nothing else: the unit test
//!   `aba_bound_is_exact` runs the shortest history with 2^T - 1 pops
//!   (holds) and 2^T pops (fooled), for both word widths.
//! - **ARMv7-M, ARMv7E-M, ARMv8-M Mainline** (thumbv7m, thumbv7em,
//!   thumbv8m.main; W = 32): **no number of operations can fool a pop.**
//!   The pop is LDREX of the head, the load of the link, STREX of the head,
//!   in one `asm!` block with no store in between. On one core, other
//!   operations can run inside that window only from an exception handler,
//!   and exception entry and exception return clear the local exclusive
//!   monitor (ARMv7-M ARM, "Context switch support"), so the STREX fails
//!   and the pop starts over from a fresh LDREX. Another core (or DMA
//!   master) writing the head clears the reservation through the global
//!   monitor, on memory that the system marks Shareable and monitors (the
//!   precondition for any atomic read-modify-write there). A pop
//!   interrupted before its LDREX has read nothing yet. The tag is kept
//!   (pushes and the packing are the same as elsewhere) but not relied on.
//!
//! Before this layout the 32-bit head had a fixed 16-bit tag: 65,536 pops
//! in one window (an interrupt storm on the same CPU) fooled any pop, and
//! `tests/aba.rs` reproduces that (conservation broken, a lookup returning
//! a stack of another bucket) on the old code.
//!
//! # Memory ordering for users
//!
//! A `pop` that returns `i` happens-after the `push` that put `i` on the
//! stack it was taken from (Release CAS in push, Acquire in pop), so
//! everything the pusher wrote before pushing (the element's contents) is
//! visible to the popper. Indices placed by [`FreeList::populate`] are
//! visible to every thread the list is shared with afterwards (sharing it
//! needs its own happens-before edge: spawning a thread, a Release store of
//! the map pointer, ...).
//!
//! # Test hook
//!
//! With the `test-hooks` feature (and in this crate's unit tests) a pop can
//! be stopped inside its window: [`FreeList::arm_pop_hook`] makes the next
//! pop of one shard call a function after it read the head and the link
//! and before it swaps (on LL/SC targets the hook build splits the
//! exclusive pop into three parts around the call, which is only fit for
//! emulation: see `pop_one`). Without the feature there is no hook and no
//! cost.
//!
//! The module is crate-private; with `--cfg loom` it is public so that the
//! models in `loom-tests/` can drive it directly. Some helpers exist only
//! for them and the unit tests.
#![cfg_attr(not(any(loom, test)), allow(dead_code))]

#[cfg(feature = "alloc")]
use alloc::{boxed::Box, vec::Vec};
use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU32, HeadAtomic, HeadWord, Ordering, HEAD_INDEX_BITS, HEAD_INDEX_MAX};

/// One per-CPU stack head: `{tag, index}` packed in one atomic word, on a
/// cache line of its own. Make them with [`new_head`].
///
/// Bit layout of the word (`W` = 64 where the target has 64-bit atomics,
/// 32 elsewhere; `I` = the list's index bits, see [`Packing`]):
///
/// ```text
///  W-1          I   I-1           0
/// +----------------+---------------+
/// |       tag      |     index     |
/// +----------------+---------------+
/// ```
///
/// `index` is the top element, or all ones (`EMPTY`) for an empty stack;
/// `tag` counts successful pops (mod 2^(W-I)) to defeat ABA.
pub type Head = CachePadded<HeadAtomic>;

/// The largest number of elements a list can hold on this target:
/// 2^32 - 2 with 64-bit atomics, 65,534 without. The index field is then
/// at most half the head word, so the tag is at least the other half.
pub const MAX_ELEMS: u32 = HEAD_INDEX_MAX;

/// The link value that ends a chain ("no element below"). A head whose
/// index field is all ones is empty; `EMPTY` packs to exactly that.
const EMPTY: u32 = u32::MAX;

static_assertions::const_assert!(2 * HEAD_INDEX_BITS == HeadWord::BITS);
static_assertions::const_assert!(MAX_ELEMS < u32::MAX);
static_assertions::const_assert!(HEAD_INDEX_BITS <= u32::BITS);
static_assertions::assert_impl_all!(FreeList<'static>: Send, Sync, Copy);
#[cfg(feature = "alloc")]
static_assertions::assert_impl_all!(OwnedFreeList: Send, Sync);

/// How a list splits its head words into `{tag, index}`: the index field
/// is the low `index_bits` bits, sized by the list's capacity, and the tag
/// is every bit above it.
///
/// # Invariants
///
/// `1 <= index_bits < HeadWord::BITS` and `mask` is `2^index_bits - 1`,
/// at least the list's capacity (so every index is below the all-ones
/// `mask`). Lists made by [`FreeList::new`] have `index_bits <=
/// HEAD_INDEX_BITS`, so their tag has at least `HeadWord::BITS / 2` bits;
/// only `FreeList::with_index_bits` (tests) goes wider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packing {
    index_bits: u32,
    mask: HeadWord,
}

impl Packing {
    /// The packing for a list of `capacity` elements: the fewest index
    /// bits that hold `0..capacity` and the all-ones `EMPTY` (at least 1).
    pub const fn for_capacity(capacity: u32) -> Self {
        let bits = u32::BITS - capacity.leading_zeros();
        Self::with_index_bits(if bits == 0 { 1 } else { bits })
    }

    /// A packing with `index_bits` bits of index, clamped to
    /// `1..HeadWord::BITS` (wider than `HEAD_INDEX_BITS` only for tests
    /// that narrow the tag on purpose).
    const fn with_index_bits(index_bits: u32) -> Self {
        let index_bits = if index_bits == 0 {
            1
        } else if index_bits >= HeadWord::BITS {
            HeadWord::BITS - 1
        } else {
            index_bits
        };
        // INVARIANT: 1 <= index_bits < HeadWord::BITS.
        Packing {
            index_bits,
            mask: ((1 as HeadWord) << index_bits) - 1,
        }
    }

    /// Bits of the tag: `W - index_bits`.
    pub const fn tag_bits(self) -> u32 {
        HeadWord::BITS - self.index_bits
    }

    /// The index field of a head word (all ones, `mask`, when empty).
    #[inline]
    #[allow(clippy::unnecessary_cast)] // a no-op only where HeadWord is u32
    fn index_of(self, word: HeadWord) -> u32 {
        // `mask` <= u32::MAX: index_bits <= 32.
        (word & self.mask) as u32
    }

    /// Whether an index field value means "empty stack" (all ones).
    #[inline]
    #[allow(clippy::unnecessary_cast)] // a no-op only where HeadWord is u32
    fn is_empty(self, index: u32) -> bool {
        index == self.mask as u32
    }

    /// `word` with its index field replaced by `index` (all ones for
    /// `EMPTY`), the tag kept.
    #[inline]
    fn with_index(self, word: HeadWord, index: u32) -> HeadWord {
        (word & !self.mask) | (HeadWord::from(index) & self.mask)
    }

    /// `word` with its tag bumped by one (wrapping mod 2^tag_bits: the
    /// carry leaves the word) and its index field replaced by `index`.
    #[inline]
    fn bumped(self, word: HeadWord, index: u32) -> HeadWord {
        // (word | mask) + 1 = (tag + 1) << index_bits, wrapping.
        (word | self.mask).wrapping_add(1) | (HeadWord::from(index) & self.mask)
    }

    /// The tag of a head word, in the low bits of the result.
    #[cfg(test)]
    fn tag_of(self, word: HeadWord) -> HeadWord {
        word >> self.index_bits
    }
}

/// An empty head, for building the `heads` slice of a [`FreeList`] in
/// memory the caller owns: all ones, which is an empty stack (index field
/// all ones) for every [`Packing`].
pub fn new_head() -> Head {
    CachePadded::new(HeadAtomic::new(HeadWord::MAX))
}

/// A next-link for the `links` slice of a [`FreeList`]. Its value does not
/// matter until [`FreeList::populate`] or [`FreeList::push`] writes it.
pub fn new_link() -> AtomicU32 {
    AtomicU32::new(EMPTY)
}

/// Where a [`FreeList`] keeps the next-link of each element.
///
/// The link of `i` is written only by the thread that holds `i` (in
/// `push`, before the Release CAS that puts `i` on a stack, and by
/// `populate` before the list is shared), and read by poppers, possibly
/// after `i` has left the stack again (a stale read, which the tag makes
/// harmless). An implementation must make `store` visible to a thread that
/// acquires the head CAS that follows it (a Relaxed store suffices), and
/// must not disturb anything a concurrent reader of the element relies on.
#[allow(clippy::len_without_is_empty)] // a count of links, not a container
pub trait Links: Copy {
    /// The number of elements (indices `0..len()`).
    fn len(&self) -> usize;
    /// The link of element `i` (at least Relaxed); `None` if `i >= len()`.
    fn load(&self, i: u32) -> Option<u32>;
    /// Sets the link of element `i`, which the caller holds. Ignored if
    /// `i >= len()`.
    fn store(&self, i: u32, next: u32);
    /// For the exclusive pop's `asm!`: link `i < len()` is the `AtomicU32`
    /// at byte address `base + i * stride`, accessed only atomically.
    #[cfg(all(kstackmap_llsc, not(loom), not(miri)))]
    fn raw(&self) -> (*const u32, u32);
}

/// A side array: `links[i]` is element `i`'s link.
impl Links for &[AtomicU32] {
    #[inline]
    fn len(&self) -> usize {
        <[AtomicU32]>::len(self)
    }
    #[inline]
    fn load(&self, i: u32) -> Option<u32> {
        // Relaxed: ordered by the Acquire head load / CAS in `pop_one`
        // (pairs with the pusher's Release CAS), as `Links` requires.
        usize::try_from(i)
            .ok()
            .and_then(|i| self.get(i))
            .map(|l| l.load(Ordering::Relaxed))
    }
    #[inline]
    fn store(&self, i: u32, next: u32) {
        if let Some(l) = usize::try_from(i).ok().and_then(|i| self.get(i)) {
            // Relaxed: published by the Release CAS in `push`, which pairs
            // with the Acquire head load / CAS in `pop_one`.
            l.store(next, Ordering::Relaxed);
        }
    }
    #[cfg(all(kstackmap_llsc, not(loom), not(miri)))]
    fn raw(&self) -> (*const u32, u32) {
        (self.as_ptr().cast::<u32>(), size_of::<AtomicU32>() as u32)
    }
}

/// A per-CPU lock-free freelist of the indices `0..capacity()`, over
/// memory the caller provides: one [`Head`] per CPU and one next-link per
/// element, wherever `L` keeps them ([`Links`]; by default a side array of
/// [`AtomicU32`]). See the [module docs](self) for the algorithm.
///
/// A `FreeList` is a view: any number of them may be made over the same
/// memory (they then share one state), and it is `Copy`.
///
/// # Invariants
///
/// - `n <= links.len()` and `n <= MAX_ELEMS`, so every valid index is
///   below `EMPTY` and has a link, and `pk` is the packing for `n` (or a
///   test's wider index field), so every index is below `pk.mask`.
/// - Every head's index field is all ones or an index below `n`, and so
///   is every link reachable from a head (as long as every view over the
///   same heads uses the same links and packing, which `OwnedFreeList` and
///   the map ensure).
#[derive(Clone, Copy, Debug)]
pub struct FreeList<'a, L: Links = &'a [AtomicU32]> {
    /// One stack head per CPU.
    heads: &'a [Head],
    /// Link of `i`: the index below `i` on its stack, or `EMPTY`.
    /// Meaningful only while `i` is on a stack.
    links: L,
    /// The number of elements: indices are `0..n`.
    n: u32,
    /// How head words are split into tag and index.
    pk: Packing,
}

impl<'a, L: Links + 'a> FreeList<'a, L> {
    /// A list over `heads` (one per CPU, `heads.len() >= 1`) and `links`
    /// (one per element, `links.len() = n <= MAX_ELEMS`).
    ///
    /// The state is whatever `heads` hold: heads fresh from [`new_head`]
    /// make an empty list (every index is then in the caller's hands; call
    /// [`populate`](Self::populate) to put them all on the list). Making a
    /// view does not touch the memory, so it is fine to make one per call.
    ///
    /// Contract violations do not panic in release builds: with no heads
    /// every `pop` returns `None` and every `push` is ignored; links past
    /// `MAX_ELEMS` are not used.
    pub fn new(heads: &'a [Head], links: L) -> Self {
        debug_assert!(!heads.is_empty(), "a freelist needs at least one CPU");
        debug_assert!(links.len() <= MAX_ELEMS as usize, "too many elements");
        // INVARIANT: capped at MAX_ELEMS, so every index is below EMPTY.
        let n = u32::try_from(links.len())
            .unwrap_or(MAX_ELEMS)
            .min(MAX_ELEMS);
        let pk = Packing::for_capacity(n);
        FreeList {
            heads,
            links,
            n,
            pk,
        }
    }

    /// [`new`](Self::new) with an index field of `index_bits` bits
    /// (at least what the capacity needs, less than the word), so a
    /// test can make the tag as narrow as `W - HEAD_INDEX_BITS` and reach
    /// its wrap. Every view over the same heads must use the same value.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn with_index_bits(heads: &'a [Head], links: L, index_bits: u32) -> Self {
        let mut list = Self::new(heads, links);
        let need = list.pk.index_bits;
        list.pk = Packing::with_index_bits(index_bits.max(need));
        list
    }

    /// How this list packs its head words.
    #[inline]
    pub fn packing(&self) -> Packing {
        self.pk
    }

    /// The number of per-CPU stacks.
    #[inline]
    pub fn nr_cpus(&self) -> usize {
        self.heads.len()
    }

    /// The number of elements: indices are `0..capacity()`.
    #[inline]
    pub fn capacity(&self) -> u32 {
        self.n
    }

    /// The CPU whose stack [`populate`](Self::populate) put `idx` on: the
    /// natural place to give `idx` back when the caller has no CPU of its
    /// own (a syscall-side delete), so that frees spread over the stacks
    /// the way populate spread them. `0` for an out-of-range index.
    pub fn home(&self, idx: u32) -> usize {
        let nr_cpus = self.heads.len();
        let n = self.n as usize;
        let Ok(i) = usize::try_from(idx) else {
            return 0;
        };
        // The first `extra` CPUs hold `per + 1` indices each, the rest
        // `per`. Checked arithmetic throughout: no panic path (this runs
        // on delete) and no overflow, though none can happen here.
        let (Some(per), Some(extra)) = (n.checked_div(nr_cpus), n.checked_rem(nr_cpus)) else {
            return 0;
        };
        let Some(big) = per.checked_add(1).and_then(|p| extra.checked_mul(p)) else {
            return 0;
        };
        if i >= n {
            0
        } else if i < big {
            i.checked_div(per.wrapping_add(1)).unwrap_or(0)
        } else {
            // `big <= i < n` implies `per >= 1`.
            let rest = (i - big).checked_div(per).unwrap_or(0);
            extra.saturating_add(rest)
        }
    }

    /// Put every index `0..capacity()` on the list, spread over the CPUs as
    /// the kernel's `pcpu_freelist_populate` does: `n / nr_cpus` per CPU,
    /// one more on each of the first `n % nr_cpus` CPUs, consecutive ranges
    /// in CPU order, each range's highest index on top.
    ///
    /// This resets the list: whatever it held before is forgotten (tags are
    /// kept). Not to be run concurrently with anything else on the same
    /// memory; call it before the list is shared.
    pub fn populate(&self) {
        let nr_cpus = self.heads.len();
        let n = self.n as usize;
        let Some(per_cpu) = n.checked_div(nr_cpus) else {
            return;
        };
        let extra = n % nr_cpus;
        let mut start = 0usize;
        for (cpu, head) in self.heads.iter().enumerate() {
            let count = per_cpu + usize::from(cpu < extra);
            let end = start + count; // <= n: the counts sum to n
            let mut top = EMPTY;
            for i in start..end {
                // `i < n <= MAX_ELEMS`, so it fits; EMPTY is unreachable.
                let i = u32::try_from(i).unwrap_or(EMPTY);
                // Not concurrent with anything; publishing the list (spawn,
                // Release store of a pointer) orders it for readers.
                self.links.store(i, top);
                top = i;
            }
            // Relaxed: not concurrent with anything (see the link store).
            let old = head.load(Ordering::Relaxed);
            // Relaxed: as above; the list is not shared yet.
            head.store(self.pk.with_index(old, top), Ordering::Relaxed);
            start = end;
        }
    }

    /// Give `idx` back to the list, on the stack of CPU `cpu % nr_cpus()`.
    ///
    /// `idx` must be held by the caller (returned by [`pop`](Self::pop), or
    /// never handed to the list); everything written before the push is
    /// visible to the thread that pops `idx` next. An out-of-range `idx` is
    /// a caller bug: it trips a `debug_assert` and is otherwise ignored.
    #[inline]
    pub fn push(&self, cpu: usize, idx: u32) {
        let head = cpu
            .checked_rem(self.heads.len())
            .and_then(|c| self.heads.get(c));
        let (true, Some(head)) = (idx < self.n, head) else {
            debug_assert!(false, "push of index {idx} out of range or no CPUs");
            return;
        };
        // Relaxed: only a guess at the expected value; the CAS below checks it.
        let mut cur = head.load(Ordering::Relaxed);
        loop {
            // Published by the Release CAS below, which pairs with the
            // Acquire head load/CAS in `pop_one` that reads this link.
            self.links.store(idx, self.pk.index_of(cur));
            // The tag is kept: a push's CAS is safe even after ABA (the top
            // is `index_of(cur)` right now, which is what the link says), and
            // keeping it makes the tag wrap only after 2^T pops, not pushes.
            let new = self.pk.with_index(cur, idx);
            // Release: pairs with the Acquire load/CAS of this head in
            // `pop_one`, so the link store above and the caller's writes to
            // the element happen-before the pop that returns `idx`.
            // Relaxed on failure: the value is only the next expected value.
            match head.compare_exchange(cur, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Take an index off the list: from CPU `cpu % nr_cpus()` first, then
    /// stealing from the others round-robin starting at the next CPU, as the
    /// kernel's `pcpu_freelist_pop`.
    ///
    /// Returns `None` only if every CPU's stack was seen empty (each at some
    /// moment during the call). The caller then holds the index until it
    /// pushes it back; the pop happens-after the push that freed it.
    #[inline]
    pub fn pop(&self, cpu: usize) -> Option<u32> {
        let nr_cpus = self.heads.len();
        let start = cpu.checked_rem(nr_cpus)?;
        // The caller's own CPU first: the common case, without the
        // iterator below.
        if let Some(i) = self.pop_one(self.heads.get(start)?) {
            return Some(i);
        }
        // Then CPUs `start + 1..nr_cpus` and `0..start`: the rest of
        // for_each_cpu_wrap(start).
        let (before, from) = self.heads.split_at_checked(start)?;
        from.get(1..)?
            .iter()
            .chain(before)
            .find_map(|head| self.pop_one(head))
    }

    /// Makes the next pop of CPU `cpu % nr_cpus()`'s stack (by any view
    /// over the same heads, on any thread) call `hook(arg)` inside its
    /// window: after it read the head and the top's link, before it swaps
    /// the head. The hook fires once and disarms itself before it runs,
    /// so it may push and pop on the same stack; arming again replaces an
    /// unfired hook (there is one hook slot per process).
    ///
    /// Test-only (feature `test-hooks`): it lets a test run any number of
    /// operations on a stack while one pop is stalled there, as an
    /// interrupt handler would.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn arm_pop_hook(&self, cpu: usize, hook: fn(*const ()), arg: *const ()) {
        if let Some(head) = cpu
            .checked_rem(self.heads.len())
            .and_then(|c| self.heads.get(c))
        {
            hook::arm(head, hook, arg);
        }
    }

    /// Pop from one CPU's stack; `None` if it was seen empty.
    ///
    /// Why the tag: without it, a pop that read `{A, next = B}` could
    /// succeed after others popped A and B and pushed A back, putting B
    /// (now in someone's hands) back on the stack. Stacks are written top
    /// first, `[tag, index]` for the head and `->` for links:
    ///
    /// ```text
    /// | T1                     | T2        | stack, no tag      | stack, tagged            |
    /// |------------------------|-----------|--------------------|--------------------------|
    /// |                        |           | A -> B -> C        | [0,A] A -> B -> C        |
    /// | load head: A, next = B |           | A -> B -> C        | [0,A] A -> B -> C        |
    /// |                        | pop() = A | B -> C             | [1,B] B -> C             |
    /// |                        | pop() = B | C                  | [2,C] C                  |
    /// |                        | push(A)   | A -> C             | [2,A] A -> C             |
    /// | CAS(head, A => B)      |           | ok: B -> C, T1: A  | fails: [2,A] != [0,A]    |
    /// | (retry if it failed)   |           |                    | next = C, CAS => [3,C]   |
    /// | result                 | holds B   | B held AND listed  | T1: A, T2: B, list: C    |
    /// ```
    ///
    /// Untagged, the CAS compares only `A == A` and succeeds: B, which T2
    /// holds, is on the stack again, so the next pop hands it out a second
    /// time (loom finds this at once when the bump is removed: conservation
    /// sees `[0, 1, 1, 2]`). Tagged, T2's two pops moved the tag from 0 to
    /// 2, so T1's CAS fails and T1 retries with the current head. The loom
    /// model `pop_vs_pop_aba` is this table. If T2 does 2^T pops in all
    /// (T the tag bits), the tag is back at 0 and the CAS succeeds: the
    /// bound in the module docs. On LL/SC targets `pop_one_llsc` replaces
    /// this CAS loop, and no number of T2's operations fools it.
    #[inline]
    fn pop_one(&self, head: &Head) -> Option<u32> {
        #[cfg(all(kstackmap_llsc, not(loom), not(miri)))]
        {
            self.pop_one_llsc(head)
        }
        #[cfg(not(all(kstackmap_llsc, not(loom), not(miri))))]
        {
            self.pop_one_cas(head)
        }
    }

    /// `pop_one` with a compare-and-swap (every target but the LL/SC ones).
    #[cfg_attr(all(kstackmap_llsc, not(loom), not(miri)), allow(dead_code))]
    #[inline]
    fn pop_one_cas(&self, head: &Head) -> Option<u32> {
        // Acquire: pairs with the Release CAS of the push that put this index
        // on top (every later CAS on the head is an RMW, so continues that
        // release sequence), making its link store visible to the load below.
        let mut cur = head.load(Ordering::Acquire);
        loop {
            let idx = self.pk.index_of(cur);
            if self.pk.is_empty(idx) {
                return None;
            }
            let next = match self.links.load(idx) {
                // Ordered by the Acquire that read `cur`; if the link has
                // changed since, `idx` was popped (tag bumped) and the CAS
                // fails unless 2^T pops ran meanwhile (the ABA bound).
                Some(next) if idx < self.n => next,
                // Unreachable by the invariants (only views with other links
                // over the same heads could get here): treat as empty.
                _ => {
                    debug_assert!(false, "head index {idx} out of range");
                    return None;
                }
            };
            #[cfg(any(test, feature = "test-hooks"))]
            hook::fire(head);
            let new = self.pk.bumped(cur, next);
            // Acquire: pairs with the Release CAS of the push that freed
            // `idx`: the caller sees everything written before that push.
            // Acquire on failure: the value becomes `cur`, whose link is read
            // next; pairs with the push's Release CAS as the first load does.
            match head.compare_exchange(cur, new, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return Some(idx),
                Err(actual) => cur = actual,
            }
        }
    }

    /// `pop_one` with load-exclusive / store-exclusive (ARMv7-M, ARMv7E-M,
    /// ARMv8-M Mainline): LDREX the head, load the top's link, STREX the
    /// bumped head, in one `asm!` block with no store between the two
    /// exclusives (on Cortex-M the local monitor tracks no address, so an
    /// ordinary store might clear it: IMPLEMENTATION DEFINED). An exception
    /// taken inside the block clears the monitor on entry and return, so
    /// the STREX fails and the loop starts over with a fresh LDREX: the
    /// head did not change between the LDREX and a successful STREX, so
    /// the link read was the top's current link. No ABA, whatever runs in
    /// the handler.
    #[cfg(all(kstackmap_llsc, not(loom), not(miri)))]
    #[inline]
    fn pop_one_llsc(&self, head: &Head) -> Option<u32> {
        let n = self.capacity();
        // `mask` fits in u32 (index bits <= 16 here) and is >= n.
        let mask = self.pk.index_of(HeadWord::MAX);
        #[cfg(feature = "test-hooks")]
        {
            self.pop_one_llsc_split(head, n, mask)
        }
        #[cfg(not(feature = "test-hooks"))]
        {
            let idx: u32;
            // Link `i` is the u32 at `base + i * stride` (`Links::raw`: a
            // side array, or a word of each map element's header).
            let (base, stride) = self.links.raw();
            // SAFETY: `head.as_ptr()` is a valid, aligned u32 for the life of
            // `head`, and every other access to it is atomic. The link load
            // reads `base + idx * stride` only for `idx < n <= links.len()`
            // (checked by the `cmp`/`bhs` before it), which is link `idx`,
            // an AtomicU32 (same layout as u32) read only atomically
            // elsewhere (`Links::raw`'s contract); a 32-bit aligned LDR is
            // single-copy atomic. No store other than the STREX; `nostack`.
            // The block reads and writes memory, so the compiler orders it
            // with the surrounding accesses (no `nomem`/`readonly`).
            unsafe {
                core::arch::asm!(
                    "2:",
                    "ldrex {cur}, [{head}]",
                    "and {idx}, {cur}, {mask}",
                    // idx >= n: empty (all ones >= n) or out of range.
                    "cmp {idx}, {n}",
                    "bhs 3f",
                    "mla {next}, {idx}, {stride}, {base}",
                    "ldr {next}, [{next}]",
                    "and {next}, {next}, {mask}",
                    // (cur | mask) + 1 = (tag + 1) << I, wrapping.
                    "orr {cur}, {cur}, {mask}",
                    "adds {cur}, {cur}, #1",
                    "orr {cur}, {cur}, {next}",
                    "strex {next}, {cur}, [{head}]",
                    "cmp {next}, #0",
                    "bne 2b",
                    // Acquire: pairs with the Release CAS of the push that
                    // freed `idx` (as the CAS loop's Acquire does).
                    "dmb ish",
                    "b 4f",
                    "3:",
                    "clrex",
                    "4:",
                    head = in(reg) head.as_ptr(),
                    base = in(reg) base,
                    stride = in(reg) stride,
                    mask = in(reg) mask,
                    n = in(reg) n,
                    cur = out(reg) _,
                    idx = out(reg) idx,
                    next = out(reg) _,
                    options(nostack),
                );
            }
            if idx < n {
                Some(idx)
            } else {
                debug_assert!(idx == mask, "head index {idx} out of range");
                None
            }
        }
    }

    /// The exclusive pop split around the test hook (feature `test-hooks`
    /// on LL/SC targets): LDREX and STREX in two `asm!` blocks with Rust
    /// between them. The compiler may spill to the stack in between, and
    /// an ordinary store may clear a Cortex-M monitor (IMPLEMENTATION
    /// DEFINED), so this may retry forever on silicon: it is for emulators
    /// (qemu clears the monitor only on CLREX, STREX and exceptions).
    #[cfg(all(kstackmap_llsc, not(loom), not(miri), feature = "test-hooks"))]
    fn pop_one_llsc_split(&self, head: &Head, n: u32, mask: u32) -> Option<u32> {
        loop {
            let cur: u32;
            // SAFETY: a load-exclusive of a valid, aligned u32 that is only
            // accessed atomically.
            unsafe {
                core::arch::asm!("ldrex {cur}, [{head}]", head = in(reg) head.as_ptr(),
                    cur = out(reg) cur, options(nostack));
            }
            let idx = cur & mask;
            let Some(next) = self.links.load(idx).filter(|_| idx < n) else {
                // SAFETY: CLREX only resets the local monitor.
                unsafe { core::arch::asm!("clrex", options(nostack, nomem)) };
                return None;
            };
            // (The link load is ordered after the LDREX by the address
            // dependency, and the STREX below fails if the head changed.)
            hook::fire(head);
            let bumped = self.pk.bumped(cur, next);
            let failed: u32;
            // SAFETY: a store-exclusive to the same valid, aligned u32; it
            // stores only if the monitor is still exclusive (no exception,
            // no other exclusive, no other observer's store since the LDREX).
            unsafe {
                core::arch::asm!("strex {failed}, {new}, [{head}]", head = in(reg) head.as_ptr(),
                    new = in(reg) bumped, failed = out(reg) failed, options(nostack));
            }
            if failed == 0 {
                // SAFETY: a barrier only. Acquire, as in `pop_one_llsc`.
                unsafe { core::arch::asm!("dmb ish", options(nostack)) };
                return Some(idx);
            }
        }
    }

    /// Pop every index the list holds, from all CPUs (CPU 0 first, then
    /// stealing round-robin), until `pop` returns `None`. For tests and
    /// debugging: checking conservation, or emptying a list on teardown.
    ///
    /// Safe to run concurrently with other users, but then it is not a
    /// snapshot (it takes what it finds). On a list corrupted by a double
    /// push (a caller bug) the chain may be cyclic and the iterator endless;
    /// bound it with `take(capacity)` when that matters.
    pub fn drain_all(&self) -> impl Iterator<Item = u32> + 'a {
        let list = *self;
        core::iter::from_fn(move || list.pop(0))
    }
}

/// The test hook's one slot (see [`FreeList::arm_pop_hook`]): which head
/// it is armed for, and what to call. `core` atomics, not `sync`'s: it is
/// test machinery, not part of a modelled protocol.
#[cfg(any(test, feature = "test-hooks"))]
mod hook {
    use core::sync::atomic::{AtomicPtr, Ordering};

    use super::Head;

    /// The armed head; null when disarmed. Only compared, never read
    /// through.
    static HEAD: AtomicPtr<Head> = AtomicPtr::new(core::ptr::null_mut());
    /// The hook, a `fn(*const ())` as a pointer.
    static FUNC: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
    /// Its argument, passed through untouched.
    static ARG: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

    pub(super) fn arm(head: &Head, f: fn(*const ()), arg: *const ()) {
        // Disarm first, so a pop never sees the new head with the old hook.
        HEAD.store(core::ptr::null_mut(), Ordering::SeqCst);
        FUNC.store(f as *mut (), Ordering::SeqCst);
        ARG.store(arg.cast_mut(), Ordering::SeqCst);
        HEAD.store(core::ptr::from_ref(head).cast_mut(), Ordering::SeqCst);
    }

    /// Calls the hook if it is armed for `head`, disarming it first.
    #[inline]
    pub(super) fn fire(head: &Head) {
        let me = core::ptr::from_ref(head).cast_mut();
        // Relaxed: a cheap filter; the swap below decides.
        if HEAD.load(Ordering::Relaxed) != me
            || HEAD
                .compare_exchange(
                    me,
                    core::ptr::null_mut(),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let f = FUNC.load(Ordering::SeqCst);
        if f.is_null() {
            return;
        }
        // SAFETY: FUNC only ever holds null or a `fn(*const ())` stored by
        // `arm` (SeqCst before HEAD, which we just took), and fn pointers
        // and data pointers have the same size on every supported target.
        let f = unsafe { core::mem::transmute::<*mut (), fn(*const ())>(f) };
        f(ARG.load(Ordering::SeqCst).cast_const());
    }
}

/// A [`FreeList`] with its memory on the heap (`alloc` feature).
///
/// # Invariants
///
/// `heads.len() >= 1` and `links.len() <= MAX_ELEMS`; every view made by
/// [`list`](Self::list) uses these same heads and links.
#[cfg(feature = "alloc")]
#[derive(Debug)]
pub struct OwnedFreeList {
    /// One per CPU.
    heads: Box<[Head]>,
    /// One per element.
    links: Box<[AtomicU32]>,
}

#[cfg(feature = "alloc")]
impl OwnedFreeList {
    /// An empty list of `n` elements over `nr_cpus` CPUs: every index is in
    /// the caller's hands until pushed (or until [`FreeList::populate`]).
    ///
    /// Errors: [`Inval`](crate::Error::Inval) for `nr_cpus == 0`,
    /// [`TooBig`](crate::Error::TooBig) for `n > MAX_ELEMS`,
    /// [`NoMem`](crate::Error::NoMem) if the allocation fails (fallible:
    /// it never aborts). Allocates; may run wherever the global allocator may.
    pub fn new(nr_cpus: usize, n: u32) -> Result<Self, crate::Error> {
        if nr_cpus == 0 {
            return Err(crate::Error::Inval);
        }
        if n > MAX_ELEMS {
            return Err(crate::Error::TooBig);
        }
        let n = usize::try_from(n).map_err(|_| crate::Error::NoMem)?;
        let mut heads = Vec::new();
        heads
            .try_reserve_exact(nr_cpus)
            .map_err(|_| crate::Error::NoMem)?;
        heads.extend((0..nr_cpus).map(|_| new_head()));
        let mut links = Vec::new();
        links
            .try_reserve_exact(n)
            .map_err(|_| crate::Error::NoMem)?;
        links.extend((0..n).map(|_| new_link()));
        // INVARIANT: nr_cpus >= 1 and n <= MAX_ELEMS were checked above.
        Ok(OwnedFreeList {
            heads: heads.into_boxed_slice(),
            links: links.into_boxed_slice(),
        })
    }

    /// [`new`](Self::new), then [`populate`](FreeList::populate): every
    /// index on the list, spread as the kernel does.
    pub fn new_populated(nr_cpus: usize, n: u32) -> Result<Self, crate::Error> {
        let list = Self::new(nr_cpus, n)?;
        list.list().populate();
        Ok(list)
    }

    /// A view to push and pop through (cheap: two slice references).
    #[inline]
    pub fn list(&self) -> FreeList<'_> {
        FreeList::new(&self.heads, &self.links[..])
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    extern crate std;

    use std::{sync::Arc, thread, vec, vec::Vec};

    use super::*;
    use crate::Error;

    /// Pop everything and check it is exactly `0..n`, each index once.
    fn assert_conserved(list: FreeList<'_>, mut held: Vec<u32>) {
        let n = list.capacity();
        held.extend(list.drain_all().take(n as usize + 1));
        held.sort_unstable();
        assert_eq!(held, (0..n).collect::<Vec<_>>(), "conservation broken");
    }

    /// The kernel's pcpu_freelist_populate, as a list of per-CPU stacks
    /// (bottom first): CPU `c` gets the next `n / nr + (c < n % nr)` indices,
    /// pushed in increasing order.
    fn kernel_populate(nr_cpus: usize, n: u32) -> Vec<Vec<u32>> {
        let (per, extra) = (n as usize / nr_cpus, n as usize % nr_cpus);
        let mut next = 0u32;
        (0..nr_cpus)
            .map(|c| {
                let j = per + usize::from(c < extra);
                let stack: Vec<u32> = (next..next + j as u32).collect();
                next += j as u32;
                stack
            })
            .collect()
    }

    /// Pop each CPU's own stack alone (no stealing) by reading the heads.
    fn stacks(list: FreeList<'_>) -> Vec<Vec<u32>> {
        list.heads
            .iter()
            .map(|head| {
                let mut s = Vec::new();
                while let Some(i) = list.pop_one(head) {
                    s.push(i);
                }
                s.reverse(); // bottom first
                s
            })
            .collect()
    }

    #[test]
    fn constructor_errors() {
        assert_eq!(OwnedFreeList::new(0, 4).unwrap_err(), Error::Inval);
        assert_eq!(
            OwnedFreeList::new(1, MAX_ELEMS + 1).unwrap_err(),
            Error::TooBig
        );
        // The heads alone would overflow the address space: NoMem, no abort.
        assert_eq!(
            OwnedFreeList::new(usize::MAX / 2, 1).unwrap_err(),
            Error::NoMem
        );
        let l = OwnedFreeList::new(3, 7).unwrap();
        assert_eq!((l.list().nr_cpus(), l.list().capacity()), (3, 7));
    }

    #[test]
    fn max_elems_matches_head_width() {
        match HEAD_INDEX_BITS {
            32 => assert_eq!(MAX_ELEMS, u32::MAX - 1),
            16 => {
                assert_eq!(MAX_ELEMS, 65534);
                assert_eq!(OwnedFreeList::new(1, 65535).unwrap_err(), Error::TooBig);
                let l = OwnedFreeList::new_populated(2, 65534).unwrap();
                assert_eq!(l.list().pop(1), Some(65533));
            }
            bits => panic!("unexpected index width {bits}"),
        }
    }

    /// The index field is sized by the capacity and every other bit is
    /// tag: the table in the module docs.
    #[test]
    fn packing_sizes_the_index_by_capacity() {
        let w = HeadWord::BITS;
        for (cap, index_bits) in [
            (0, 1),
            (1, 1),
            (2, 2),
            (3, 2),
            (4, 3),
            (24, 5),
            (16_384, 15),
            (65_534, 16),
        ] {
            let pk = Packing::for_capacity(cap);
            assert_eq!((pk.index_bits, pk.tag_bits()), (index_bits, w - index_bits));
            // Every index and EMPTY are distinct in the field.
            assert!(HeadWord::from(cap) <= pk.mask, "{cap}");
            assert!(pk.is_empty(pk.index_of(pk.with_index(0, EMPTY))));
        }
        if w == 64 {
            let pk = Packing::for_capacity(MAX_ELEMS);
            assert_eq!((pk.index_bits, pk.tag_bits()), (32, 32));
        }
        let pk = Packing::for_capacity(24);
        let word = pk.with_index(5 << 5, 7);
        assert_eq!((pk.tag_of(word), pk.index_of(word)), (5, 7));
        assert_eq!(pk.index_of(pk.with_index(word, EMPTY)), 31);
        assert_eq!(pk.tag_of(pk.with_index(word, EMPTY)), 5, "tag kept");
        let bumped = pk.bumped(word, 3);
        assert_eq!((pk.tag_of(bumped), pk.index_of(bumped)), (6, 3));
        // The tag wraps: bumping the largest tag gives tag 0, index intact.
        let top = pk.with_index(HeadWord::MAX, 7);
        assert_eq!(pk.tag_of(top), HeadWord::MAX >> 5);
        assert_eq!(pk.bumped(top, 2), 2);
        // A fresh head is empty for every packing.
        let fresh = new_head().load(core::sync::atomic::Ordering::SeqCst);
        for bits in 1..w {
            let pk = Packing::with_index_bits(bits);
            assert!(pk.is_empty(pk.index_of(fresh)), "{bits}");
        }
    }

    #[test]
    fn tag_wraps_without_harm() {
        use core::sync::atomic::Ordering::SeqCst;
        let l = OwnedFreeList::new_populated(1, 3).unwrap();
        let list = l.list();
        let (pk, head) = (list.pk, &list.heads[0]);
        // Move the tag to its largest value; the next pop wraps it to 0.
        head.store(
            pk.with_index(HeadWord::MAX, pk.index_of(head.load(SeqCst))),
            SeqCst,
        );
        assert_eq!(list.pop(0), Some(2));
        assert_eq!(pk.tag_of(head.load(SeqCst)), 0);
        list.push(0, 2);
        assert_eq!(pk.tag_of(head.load(SeqCst)), 0, "push keeps the tag");
        // A full wrap for real, with the tag narrowed to 16 bits (12 under
        // Miri): 2^T pops bring the head back to where it started.
        let tag_bits = if cfg!(miri) { 8 } else { 16 };
        let list = FreeList::with_index_bits(&l.heads, &l.links[..], HeadWord::BITS - tag_bits);
        assert_eq!(list.packing().tag_bits(), tag_bits);
        list.populate(); // re-packs the heads for the narrow tag
        let before = head.load(SeqCst);
        for _ in 0..1u32 << tag_bits {
            let i = list.pop(0).unwrap();
            list.push(0, i);
        }
        assert_eq!(head.load(SeqCst), before);
        assert_conserved(list, vec![]);
    }

    /// What the ABA hook runs while a pop of `list` (top `A`, next `B`)
    /// is stalled in its window: the shortest history that can fool it,
    /// with `pops` successful pops (>= 2): pop A, pop B, push A, then
    /// `pops - 2` times pop A, push A. B stays held (in `held`).
    struct AbaRun<'a> {
        list: FreeList<'a>,
        pops: u64,
        held: std::sync::atomic::AtomicU32,
    }

    fn aba_hook(arg: *const ()) {
        // SAFETY: `arg` points to an `AbaRun` that `run_aba` keeps alive
        // (on its stack) across the pop that fires this hook.
        let run = unsafe { &*arg.cast::<AbaRun<'_>>() };
        let a = run.list.pop(0).unwrap();
        let b = run.list.pop(0).unwrap();
        run.list.push(0, a);
        for _ in 2..run.pops {
            let x = run.list.pop(0).unwrap();
            assert_eq!(x, a);
            run.list.push(0, x);
        }
        run.held.store(b, std::sync::atomic::Ordering::SeqCst);
    }

    /// One process-wide hook slot: tests that arm it take turns.
    static HOOK_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Pops from a 1-CPU list of `n` while the hook runs `pops` pops inside
    /// that pop's window; returns what is held and what is left listed.
    fn run_aba(list: FreeList<'_>, pops: u64) -> (Vec<u32>, Vec<u32>) {
        let _turn = HOOK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let run = AbaRun {
            list,
            pops,
            held: std::sync::atomic::AtomicU32::new(EMPTY),
        };
        list.arm_pop_hook(0, aba_hook, core::ptr::from_ref(&run).cast());
        let outer = list.pop(0).unwrap();
        let held = vec![outer, run.held.load(std::sync::atomic::Ordering::SeqCst)];
        let left = list
            .drain_all()
            .take(list.capacity() as usize + 1)
            .collect();
        (held, left)
    }

    fn is_conserved(n: u32, held: &[u32], left: &[u32]) -> bool {
        let mut all: Vec<u32> = held.iter().chain(left).copied().collect();
        all.sort_unstable();
        all == (0..n).collect::<Vec<_>>()
    }

    /// The bound in the module docs is exact on CAS targets: a pop stalled
    /// across 2^T - 1 pops of its stack (T the tag bits) is never fooled,
    /// across 2^T it is (one index ends up both held and listed). The tag
    /// is narrowed to 16 bits (8 under Miri) so the wrap is in reach on
    /// both head widths: pop and push are the same code for every split,
    /// only the shift differs, so this checks what a 59-bit tag does at
    /// 2^59. (On LL/SC targets nothing fools it; see `tests/aba.rs`.)
    #[test]
    #[cfg(not(all(kstackmap_llsc, not(loom), not(miri))))]
    fn aba_bound_is_exact() {
        let tag_bits = if cfg!(miri) { 8 } else { 16 };
        let l = OwnedFreeList::new_populated(1, 4).unwrap();
        let list = FreeList::with_index_bits(&l.heads, &l.links[..], HeadWord::BITS - tag_bits);
        assert_eq!(list.packing().tag_bits(), tag_bits);
        list.populate(); // re-packs the heads for the narrow tag
        let wrap = 1u64 << tag_bits;

        let (held, left) = run_aba(list, wrap - 1);
        assert_eq!(held, [3, 2], "the stale CAS failed and the pop retried");
        assert!(is_conserved(4, &held, &left), "{held:?} {left:?}");

        list.populate();
        let (held, left) = run_aba(list, wrap);
        assert_eq!(held, [3, 2]);
        assert_eq!(left, [2, 1, 0], "fooled: 2 is held and listed");
        assert!(!is_conserved(4, &held, &left));
    }

    /// The regression of the audit (issue 16): 65,536 pops in one pop's
    /// window fooled the old fixed 16-bit tag of the 32-bit head. With the
    /// index field sized by the capacity, a small list's tag is far wider
    /// (27 bits for 4 elements on a 32-bit head, 61 on a 64-bit one), so
    /// the same history leaves the list intact on both widths.
    #[test]
    fn aba_of_the_old_16_bit_tag_is_gone() {
        let pops = if cfg!(miri) { 1 << 8 } else { 1 << 16 };
        let l = OwnedFreeList::new_populated(1, 4).unwrap();
        let list = l.list();
        let (held, left) = run_aba(list, pops);
        assert!(is_conserved(4, &held, &left), "{held:?} {left:?}");
        assert_eq!(left, [1, 0]);
    }

    #[test]
    fn home_is_where_populate_put_it() {
        for (nr_cpus, n) in [(1, 5), (3, 7), (4, 2), (4, 8), (5, 0), (3, 10)] {
            let l = OwnedFreeList::new_populated(nr_cpus, n).unwrap();
            let list = l.list();
            for (cpu, stack) in stacks(list).into_iter().enumerate() {
                for i in stack {
                    assert_eq!(list.home(i), cpu, "{nr_cpus} cpus, {n}: index {i}");
                }
            }
            assert_eq!(list.home(n), 0, "out of range");
            assert_eq!(list.home(u32::MAX), 0);
        }
    }

    #[test]
    fn empty_list() {
        let l = OwnedFreeList::new(4, 8).unwrap();
        let list = l.list();
        for cpu in 0..9 {
            assert_eq!(list.pop(cpu), None);
        }
        // Everything is in the creator's hands; hand one over and get it back.
        list.push(2, 5);
        assert_eq!(list.pop(0), Some(5));
        assert_eq!(list.pop(0), None);
        let zero = OwnedFreeList::new_populated(2, 0).unwrap();
        assert_eq!(zero.list().pop(1), None);
        assert_eq!(zero.list().drain_all().count(), 0);
    }

    #[test]
    fn lifo_per_cpu() {
        let l = OwnedFreeList::new(2, 8).unwrap();
        let list = l.list();
        for i in [3, 1, 4, 0] {
            list.push(1, i);
        }
        list.push(3, 7); // CPU 3 % 2 = 1
        assert_eq!(list.pop(1), Some(7));
        assert_eq!(list.pop(1), Some(0));
        list.push(1, 0);
        assert_eq!(list.pop(5), Some(0));
        assert_eq!(list.pop(1), Some(4));
        assert_eq!(list.pop(1), Some(1));
        assert_eq!(list.pop(1), Some(3));
        assert_eq!(list.pop(1), None);
    }

    #[test]
    fn steal_round_robin() {
        // One element on each CPU; a pop from CPU c takes c's, then c+1's...
        let l = OwnedFreeList::new(4, 4).unwrap();
        let list = l.list();
        for c in 0..4 {
            list.push(c, c as u32);
        }
        assert_eq!(list.pop(2), Some(2));
        assert_eq!(list.pop(2), Some(3));
        assert_eq!(list.pop(2), Some(0));
        assert_eq!(list.pop(2), Some(1));
        assert_eq!(list.pop(2), None);
        // Stealing starts at cpu + 1 and wraps, skipping empty CPUs.
        list.push(0, 0);
        list.push(1, 1);
        assert_eq!(list.pop(7), Some(0)); // 7 % 4 = 3: empty, wraps to 0
        assert_eq!(list.pop(3), Some(1));
    }

    #[test]
    fn populate_like_the_kernel() {
        let cases: &[(usize, u32)] = if cfg!(miri) {
            &[(1, 3), (3, 7), (4, 2), (2, 0)]
        } else {
            &[
                (1, 1),
                (1, 10),
                (2, 7),
                (3, 7),
                (3, 9),
                (4, 2),
                (7, 100),
                (8, 1000),
                (5, 0),
            ]
        };
        for &(nr_cpus, n) in cases {
            let l = OwnedFreeList::new_populated(nr_cpus, n).unwrap();
            assert_eq!(
                stacks(l.list()),
                kernel_populate(nr_cpus, n),
                "{nr_cpus} cpus, {n}"
            );
            // populate resets: run it again on the (now empty) list.
            l.list().populate();
            assert_conserved(l.list(), vec![]);
        }
        // The first pop on a CPU gets the top of its range, as in the kernel.
        let l = OwnedFreeList::new_populated(3, 7).unwrap();
        assert_eq!(l.list().pop(0), Some(2));
        assert_eq!(l.list().pop(1), Some(4));
        assert_eq!(l.list().pop(2), Some(6));
    }

    #[test]
    fn borrowed_memory() {
        let heads = [new_head(), new_head()];
        let links: [AtomicU32; 5] = core::array::from_fn(|_| new_link());
        let list = FreeList::new(&heads, &links[..]);
        list.populate();
        assert_eq!(list.pop(1), Some(4));
        // A second view over the same memory shares the state.
        let again = FreeList::new(&heads, &links[..]);
        assert_eq!(again.pop(1), Some(3));
        assert_conserved(list, vec![4, 3]);
    }

    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "out of range"))]
    fn push_out_of_range_is_ignored() {
        let l = OwnedFreeList::new_populated(2, 3).unwrap();
        l.list().push(0, 3);
        l.list().push(0, EMPTY);
        assert_conserved(l.list(), vec![]);
    }

    /// Tiny xorshift: no rand dependency, deterministic per seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// `threads` threads do `total_pairs` pop/push pairs between them on
    /// random CPUs, each holding up to a few indices at a time; a shared
    /// "held" bit per index catches any index popped twice without a push
    /// in between. At the end every index must be on the list exactly once.
    fn stress(threads: usize, total_pairs: usize, nr_cpus: usize, n: u32) {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let owned = Arc::new(OwnedFreeList::new_populated(nr_cpus, n).unwrap());
        let held: Arc<Vec<AtomicBool>> = Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
        let per_thread = total_pairs / threads;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (owned, held) = (owned.clone(), held.clone());
                thread::spawn(move || {
                    let list = owned.list();
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) * 0x1234_5678_9abc));
                    let mut hand: Vec<u32> = Vec::new();
                    let mut misses = 0usize;
                    for _ in 0..per_thread {
                        match list.pop(rng.below(2 * nr_cpus)) {
                            Some(i) => {
                                assert!(!held[i as usize].swap(true, SeqCst), "{i} popped twice");
                                hand.push(i);
                            }
                            None => misses += 1,
                        }
                        // Push one back (a random one), keeping 0..=3 in hand.
                        if !hand.is_empty() && (hand.len() > 3 || rng.next() & 1 == 0) {
                            let i = hand.swap_remove(rng.below(hand.len()));
                            held[i as usize].store(false, SeqCst);
                            list.push(rng.below(2 * nr_cpus), i);
                        }
                    }
                    for i in hand.drain(..) {
                        held[i as usize].store(false, SeqCst);
                        list.push(rng.below(nr_cpus), i);
                    }
                    misses
                })
            })
            .collect();
        let misses: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_conserved(owned.list(), vec![]);
        // Empty pops are legal (everything may be in other hands) but rare.
        assert!(misses <= total_pairs, "{misses}");
    }

    /// 2..=8 threads, 1,000,000 pop/push pairs in total per run (under Miri:
    /// 2..=3 threads, 300 pairs).
    #[test]
    fn stress_conservation() {
        let (threads, pairs) = if cfg!(miri) {
            (2..=3, 300)
        } else {
            (2..=8, 1_000_000)
        };
        for t in threads {
            // Few elements over few CPUs: lots of contention and stealing.
            stress(t, pairs, 3, 2 * t as u32 + 1);
        }
    }
}
