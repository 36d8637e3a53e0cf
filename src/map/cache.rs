//! The hit cache: a verified shortcut past `jhash2` for stacks the map
//! already holds.
//!
//! A hit used to cost mostly `trace_hash` (the kernel's `jhash2`: about 21
//! serial `mix` rounds at depth 32). The cache keys the frames the kernel
//! would hash (after skip and truncation) with a cheap hash whose
//! multiplies run in parallel (the depot's `StackHasher`, fixed seed), and
//! remembers which slot last held them. A probe then *verifies* the guess
//! with the map's own optimistic read: it returns an id only if that
//! bucket held exactly these frames during the call. Nothing the cache
//! holds is trusted.
//!
//! # Entries
//!
//! `2 * n_buckets` entries (8 bytes per bucket) on ips maps, each one
//! `AtomicU32`, indexed by the low bits of the pre-hash `h`:
//!
//! ```text
//!  31              S   S-1           0      S = log2(n_buckets) (slots are < n_buckets)
//! +-----------------+---------------+
//! |   check bits    |     slot      |      check = high half of h, bits S..32
//! +-----------------+---------------+      index = h & (2 * n_buckets - 1)
//! ```
//!
//! One 32-bit word on every target: an entry is never torn, and thumbv7em
//! (no 64-bit atomics) runs the same code. Check bits only save useless
//! verifications (32 - S of them: 18 at 16,384 buckets); correctness never
//! depends on them. Build-id maps have no entries (see below).
//!
//! # Protocol
//!
//! `probe` (every ips-map `get_stackid`, before `jhash2`; writes nothing):
//! 1. Load the entry (Relaxed). Check bits differ: miss.
//! 2. Read the named slot under its sequence number (`seq` even and the
//!    same before and after, with the fences of `observe`; no retry):
//!    its `(hash, nr)`, bucket `id = hash & (n_buckets - 1)` (loaded before
//!    the frames, so the two cache misses overlap) and every frame. A slot
//!    that changed meanwhile, or holds other frames: miss.
//! 3. One complete version of the slot held exactly these frames. If
//!    bucket `id` named this slot while it did: **hit**, return `id`.
//! 4. Otherwise the slot is off its bucket (a stack that was replaced or
//!    deleted and comes back while its old element is intact on the
//!    freelist, which ages free elements for that: `freelist.rs`): its
//!    `hash` is the frames' `jhash2` (E1), and the slow path starts from it
//!    instead of computing `jhash2`.
//!
//! The slow path is `__bpf_get_stackid` (stackid.rs). When it returns
//! `Ok(id)` (a hit or a store) it **refreshes** the entry to name the slot
//! now in bucket `id` (a Relaxed store, skipped if the entry already says
//! so). `Exist` and `NoMem` leave it alone.
//!
//! # Invariants
//!
//! - E1: every complete version of an element of an ips map (a `seq`-
//!   validated read) has `hash == trace_hash(data[..nr])`. Writers store
//!   hash, `nr` and frames in one write section; the hash comes from
//!   `trace_hash` or from step 4, itself E1-validated.
//! - E2 (protocol.rs): a slot in bucket `id` holds a trace whose
//!   `hash & (n_buckets - 1)` is `id`.
//! - Entries are hints: any value of any entry at any time (stale, racing
//!   refreshes, naming a slot that was recycled into another bucket, moved,
//!   or is being rewritten, or a value written by no one) gives at worst a
//!   miss, and a miss returns exactly what the slow path returns.
//!
//! Why a hit is the kernel's answer: step 3 saw bucket `id` hold a slot
//! while that slot held exactly these frames (the bucket load sits inside
//! the validated read; if it read a later publish of the slot, that
//! publish's write section happens-before the second `seq` load, which
//! then differs), so by E2 their `jhash2` selects bucket `id`: the kernel
//! would compute `id`, find the same stack and return `id`, whatever the
//! flags (REUSE only acts on a mismatch; FAST_CMP compares the hash, equal
//! by E1). Why step 4's hash is exact: E1 on a validated version. Build-id maps skip the cache:
//! the kernel pops an element before comparing their stacks (a full map
//! gives `ENOMEM` even for a known stack), and their elements hold build-id
//! frames, not the hashed ips (E1 does not hold).
//!
//! # Progress and cost
//!
//! A probe is wait-free: one bounded read (a slot that changes under it
//! is a miss, not a retry) in front of the slow path. It allocates
//! nothing, and a hit stores nothing shared.

use super::StackMapIn;
use crate::hash::stack::StackHasher;
use crate::sync::{fence, AtomicU32, Ordering};

/// The pre-hash. The seed is fixed: a crafted set of stacks that share an
/// entry only makes each other miss, which costs what the map cost with no
/// cache; and a constant seed lets the secrets fold into the code.
const PRE_HASH: StackHasher = StackHasher::new(0x6b73_7461_636b_6d61);

/// The hit cache's entries (none on build-id maps).
///
/// # Invariants
///
/// `entries.len()` is 0 or a power of two; `slot_mask = n_buckets - 1`.
#[derive(Clone, Copy)]
pub(super) struct Cache<'a> {
    entries: &'a [AtomicU32],
    slot_mask: u32,
}

/// Where a probe looked, and what it saw there (for the refresh).
pub(super) struct Key {
    index: usize,
    check: u32,
    seen: u32,
}

/// What a probe found.
pub(super) enum Probe {
    /// Bucket `id` held exactly these frames: the answer.
    Hit(u32),
    /// Not found in its bucket, but this is the frames' `jhash2`.
    Hash(u32),
    /// Nothing usable.
    Miss,
}

impl<'a> Cache<'a> {
    /// A cache over `entries` for a map of `n_buckets` buckets.
    pub(super) fn new(entries: &'a [AtomicU32], n_buckets: u32) -> Self {
        // INVARIANT: truncated to a power of two (storage.rs makes 0 or
        // 2 * n_buckets entries, so this never shrinks it).
        let n = match entries.len() {
            0 => 0,
            n => 1 << n.ilog2(),
        };
        Cache {
            entries: entries.get(..n).unwrap_or_default(),
            slot_mask: n_buckets.wrapping_sub(1),
        }
    }

    /// The entries (for `mem_usage`).
    pub(super) fn entries(&self) -> &'a [AtomicU32] {
        self.entries
    }

    /// The key of `ips` and the entry it selects; `None` without a cache.
    #[inline]
    fn key(&self, ips: &[u64]) -> Option<Key> {
        let last = self.entries.len().checked_sub(1)?;
        let h = PRE_HASH.hash(ips);
        let index = h as usize & last;
        let check = (h >> 32) as u32 & !self.slot_mask;
        // Relaxed: a hint; what it names is validated before use.
        let seen = self.entries.get(index)?.load(Ordering::Relaxed);
        Some(Key { index, check, seen })
    }

    /// Points `key`'s entry at `slot`, unless it already does.
    #[inline]
    fn refresh(&self, key: &Key, slot: u32) {
        let new = key.check | (slot & self.slot_mask);
        if new != key.seen {
            if let Some(e) = self.entries.get(key.index) {
                // Relaxed: a hint; readers validate the slot it names, so
                // nothing needs ordering against this store.
                e.store(new, Ordering::Relaxed);
            }
        }
    }
}

impl<'a> StackMapIn<'a> {
    /// Steps 1-4 of the protocol for `ips` (already skipped and cut).
    #[inline]
    pub(super) fn probe(&self, ips: &[u64]) -> (Option<Key>, Probe) {
        let Some(key) = self.cache.key(ips) else {
            return (None, Probe::Miss);
        };
        let found = self.probe_entry(&key, ips);
        (Some(key), found)
    }

    #[inline]
    fn probe_entry(&self, key: &Key, ips: &[u64]) -> Probe {
        let slot_mask = self.cache.slot_mask;
        if key.seen & !slot_mask != key.check {
            return Probe::Miss;
        }
        let slot = key.seen & slot_mask;
        let Some(e) = self.elem(slot) else {
            return Probe::Miss;
        };
        // Acquire: pairs with `end_write`'s Release store (or a link
        // store's Release, see elem.rs): the version's words are visible.
        let s1 = e.seq(Ordering::Acquire);
        let (hash, nr) = e.hash_nr();
        if nr != ips.len() as u32 {
            return Probe::Miss;
        }
        let id = hash & (self.geo.n_buckets - 1);
        // Loaded before the frames are compared, so that the two misses
        // overlap. Relaxed: the fence below makes it acquire: if it reads a
        // publish of this slot that came after a rewrite, that rewrite's
        // `end_write` happens-before the `seq` load below, which then
        // differs from `s1`.
        let bucket = match self.bucket(id) {
            Some(b) => b.load(Ordering::Relaxed),
            None => 0,
        };
        let same = e.eq_ips(ips);
        // Acquire fence: pairs with `begin_write`'s Release fence; if a load
        // above saw a later write section's store, the load below sees its
        // odd (or later) sequence number.
        fence(Ordering::Acquire);
        // Relaxed: ordered after the fence above.
        let s2 = e.seq(Ordering::Relaxed);
        // One complete version of the slot held exactly these frames.
        let valid = same && s1 & 1 == 0 && s2 == s1;
        if !valid {
            Probe::Miss
        } else if bucket == slot + 1 {
            // ... and it was in bucket `id` while it did: a hit.
            Probe::Hit(id)
        } else {
            // ... but not in its bucket: its hash is the frames' (E1).
            Probe::Hash(hash)
        }
    }

    /// The slow path found the stack in (or put it into) `slot`: refresh.
    #[inline]
    pub(super) fn refresh(&self, key: Option<Key>, slot: u32) {
        if let Some(key) = key {
            self.cache.refresh(&key, slot);
        }
    }

    /// Test hook: make the entry of `ips` name `slot`, check bits and all,
    /// as a stale, forged or torn entry would. Entries are hints, so this
    /// can't change any result (the loom models check exactly that).
    #[cfg(any(loom, test))]
    #[doc(hidden)]
    pub fn cache_forge(&self, ips: &[u64], slot: u32) {
        if let Some(key) = self.cache.key(ips) {
            let key = Key {
                seen: !key.seen,
                ..key
            };
            self.cache.refresh(&key, slot);
        }
    }
}
