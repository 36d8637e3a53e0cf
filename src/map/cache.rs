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
//! 8 bytes per bucket on ips maps, as [`ElemAtomic`] words: `n_buckets`
//! 64-bit entries where the target has 64-bit atomics, `2 * n_buckets`
//! 32-bit ones elsewhere, in sets of two (one cache line holds 4 or 8
//! sets), the set chosen by the low bits of the pre-hash `h`. An entry
//! names a slot *and* its bucket, so that the probe's two loads (the
//! slot's words, the bucket) go out at once instead of one after the
//! other:
//!
//! ```text
//!  W-1            2S   2S-1        S   S-1        0     W = 64 (or 32), S = log2(n_buckets)
//! +----------------+----------------+-------------+
//! |   check bits   |   bucket id    |    slot     |     check = the same bits of h
//! +----------------+----------------+-------------+     (of h >> 32 for W = 32)
//! ```
//!
//! Slots and ids are below `n_buckets`, so `S` bits hold each. `2S <= W`:
//! `S <= 31` with 64-bit words, and 32-bit words come with the 32-bit
//! freelist head, which caps maps at 65,534 elements (`S <= 16`). An entry
//! is one word: never torn. Check bits only save useless verifications
//! (`W - 2S` of them: 36 at 16,384 buckets); correctness never depends on
//! them, nor on anything else in an entry. Build-id maps (and maps of one
//! bucket, too small for a set) have no entries (see below).
//!
//! Two ways per set, because one would thrash: 4,096 resident stacks in
//! 16,384 direct-mapped entries share an entry with another stack about
//! 22% of the time, and such pairs evict each other on every other call.
//! The refresh overwrites, in this order, the way that already names this
//! stack (same check bits), a way whose bucket no longer holds its slot
//! (one Relaxed bucket load each: the slow path can afford them), or the
//! way a bit of `h` picks.
//!
//! # Protocol
//!
//! `probe` (every ips-map `get_stackid`, before `jhash2`; writes nothing):
//! 1. Load the set's two entries (Relaxed). Neither has the check bits:
//!    miss.
//! 2. Read the named slot under its sequence number (`seq` even and the
//!    same before and after, with the fences of `observe`; no retry):
//!    the named bucket (loaded first, so that its cache miss overlaps the
//!    slot's), the slot's `(hash, nr)` and every frame. A slot that
//!    changed meanwhile, or holds other frames: miss.
//! 3. One complete version of the slot held exactly these frames. If the
//!    named bucket `id` held this slot while it did: **hit**, return `id`
//!    (by E2 below, `id` is then the frames' bucket whatever the entry
//!    said).
//! 4. Otherwise the slot is off that bucket (a stack that was replaced or
//!    deleted and comes back while its old element is still intact on the
//!    freelist, or an entry with a wrong id): its `hash` is the frames'
//!    `jhash2` (E1), and the slow path starts from it instead of computing
//!    `jhash2`. This costs nothing the validated read did not already do.
//!    (Free elements are reused LIFO, so it is rare; a freelist that aged
//!    its elements to make it common made REUSE churn cheaper in
//!    instructions but slower in time: every store then wrote a cold
//!    element. See docs/benchmarks.md.)
//!
//! The slow path is `__bpf_get_stackid` (stackid.rs). When it returns
//! `Ok(id)` (a hit or a store) it **refreshes** a way of the set to name
//! bucket `id` and the slot now in it (a Relaxed store, skipped if a way
//! already says so). `Exist` and `NoMem` leave the set alone.
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
//! by E1). Why step 4's hash is exact: E1 on a validated version.
//!
//! Build-id maps skip the cache: the kernel pops an element before
//! comparing their stacks (a full map gives `ENOMEM` even for a known
//! stack), and their elements hold build-id frames, not the hashed ips
//! (E1 does not hold).
//!
//! # Progress and cost
//!
//! A probe is wait-free: one bounded read (a slot that changes under it
//! is a miss, not a retry) in front of the slow path. It allocates
//! nothing, and a hit stores nothing shared.

use super::versioned::{version, StackRef};
use super::StackMapIn;
use crate::hash::stack::StackHasher;
use crate::sync::{fence, ElemAtomic, ElemWord, Ordering};

/// The pre-hash. The seed is fixed: a crafted set of stacks that share an
/// entry only makes each other miss, which costs what the map cost with no
/// cache; and a constant seed lets the secrets fold into the code.
const PRE_HASH: StackHasher = StackHasher::new(0x6b73_7461_636b_6d61);

/// Bits in an entry.
const W: u32 = ElemWord::BITS;

/// The hit cache's entries (none on build-id maps).
///
/// # Invariants
///
/// `entries.len()` is 0 or a power of two, at least 2 (sets of two
/// ways); `s = log2(n_buckets)` with `2 * s <= W`; `field = 2^s - 1`;
/// `check_mask` is every bit from `2 * s` up.
#[derive(Clone, Copy)]
pub(super) struct Cache<'a> {
    entries: &'a [ElemAtomic],
    s: u32,
    field: ElemWord,
    check_mask: ElemWord,
}

/// Where a probe looked, and what it saw there (for the refresh).
pub(super) struct Key {
    /// Index of the set's first way in `entries`.
    set: usize,
    check: ElemWord,
    /// The set's two entries as the probe loaded them.
    seen: [ElemWord; 2],
    /// The way to overwrite when no other rule picks one.
    way: usize,
}

/// What a probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Probe {
    /// Bucket `id` held exactly these frames: the answer, with the
    /// version of the element that held them (`versioned.rs`).
    Hit(StackRef),
    /// Not found in its bucket, but this is the frames' `jhash2`.
    Hash(u32),
    /// Nothing usable.
    Miss,
}

impl<'a> Cache<'a> {
    /// A cache over `entries` for a map of `n_buckets` buckets (a power of
    /// two).
    pub(super) fn new(entries: &'a [ElemAtomic], n_buckets: u32) -> Self {
        let s = n_buckets.trailing_zeros();
        // INVARIANT: 2s <= W: with 64-bit words s <= 31; 32-bit words come
        // with MAX_ELEMS = 65,534 (s <= 16). Anything else gets no cache.
        let entries = if 2 * s > W {
            &[]
        } else {
            // Truncated to a power of two, and none if below a set
            // (storage.rs makes 0 or 8 bytes per bucket: a power of two,
            // below 2 only for one 64-bit entry).
            let n = match entries.len() {
                0 | 1 => 0,
                n => 1 << n.ilog2(),
            };
            entries.get(..n).unwrap_or_default()
        };
        Cache {
            entries,
            s,
            field: ((1 as ElemWord) << s).wrapping_sub(1),
            check_mask: ElemWord::MAX.checked_shl(2 * s).unwrap_or(0),
        }
    }

    /// The entries (for `mem_usage`).
    pub(super) fn entries(&self) -> &'a [ElemAtomic] {
        self.entries
    }

    /// The key of `ips` and the set it selects; `None` without a cache.
    #[inline]
    fn key(&self, ips: &[u64]) -> Option<Key> {
        let sets = self.entries.len() / 2;
        let last = sets.checked_sub(1)?;
        let h = PRE_HASH.hash(ips);
        let set = (h as usize & last) * 2;
        // The high W bits of h: for W = 32 the set bits are not in them.
        let check = (h >> (64 - W)) as ElemWord & self.check_mask;
        let (ways, _) = self.entries.get(set..)?.split_first_chunk::<2>()?;
        // Relaxed: hints; what they name is validated before use.
        let seen = ways.each_ref().map(|w| w.load(Ordering::Relaxed));
        Some(Key {
            set,
            check,
            seen,
            way: (h >> 63) as usize,
        })
    }

    /// The entry of the set that has `key`'s check bits, if one has.
    #[inline]
    fn find(&self, key: &Key) -> Option<ElemWord> {
        let [a, b] = key.seen;
        if a & self.check_mask == key.check {
            Some(a)
        } else if b & self.check_mask == key.check {
            Some(b)
        } else {
            None
        }
    }

    /// The entry naming `slot` in bucket `id` for `key`'s stack.
    #[inline]
    fn entry(&self, key: &Key, slot: u32, id: u32) -> ElemWord {
        key.check
            | (ElemWord::from(id) & self.field) << self.s
            | (ElemWord::from(slot) & self.field)
    }

    /// The slot and bucket an entry names.
    #[inline]
    // `ElemWord` is u32 where the target has no 64-bit atomics.
    #[allow(clippy::unnecessary_cast)]
    fn fields(&self, entry: ElemWord) -> (u32, u32) {
        // Both fields are at most 31 bits: S <= 31 (see `new`).
        let slot = (entry & self.field) as u32;
        let id = ((entry >> self.s) & self.field) as u32;
        (slot, id)
    }

    /// Stores `new` into way `way` of `key`'s set.
    #[inline]
    fn store(&self, key: &Key, way: usize, new: ElemWord) {
        if let Some(e) = self.entries.get(key.set + (way & 1)) {
            // Relaxed: a hint; readers validate the slot it names, so
            // nothing needs ordering against this store.
            e.store(new, Ordering::Relaxed);
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
        let Some(entry) = self.cache.find(key) else {
            return Probe::Miss;
        };
        let (slot, id) = self.cache.fields(entry);
        let (Some(e), Some(bucket)) = (self.elem(slot), self.bucket(id)) else {
            return Probe::Miss;
        };
        // Acquire: pairs with `end_write`'s Release store (or a link
        // store's Release, see elem.rs): the version's words are visible.
        let s1 = e.seq(Ordering::Acquire);
        // Relaxed: the fence below makes it acquire: if it reads a publish
        // of this slot that came after a rewrite, that rewrite's
        // `end_write` happens-before the `seq` load below, which then
        // differs from `s1`.
        let in_bucket = bucket.load(Ordering::Relaxed);
        let (hash, nr) = e.hash_nr();
        if nr != ips.len() as u32 {
            return Probe::Miss;
        }
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
        } else if in_bucket == slot + 1 {
            // ... and it was in bucket `id` while it did: a hit (E2), of
            // that version of the slot.
            Probe::Hit(StackRef {
                id,
                version: version(slot, s1),
            })
        } else {
            // ... but not in that bucket: its hash is the frames' (E1).
            Probe::Hash(hash)
        }
    }

    /// The slow path found the stack in (or put it into) `slot` of bucket
    /// `id`: point a way of the set at it, unless one already does.
    #[inline]
    pub(super) fn refresh(&self, key: Option<Key>, slot: u32, id: u32) {
        let Some(key) = key else {
            return;
        };
        let new = self.cache.entry(&key, slot, id);
        if key.seen.contains(&new) {
            return;
        }
        let mask = self.cache.check_mask;
        let [a, b] = key.seen;
        let way = if a & mask == key.check {
            0
        } else if b & mask == key.check {
            1
        } else if self.stale(a) {
            0
        } else if self.stale(b) {
            1
        } else {
            key.way
        };
        self.cache.store(&key, way, new);
    }

    /// Does the entry name a slot that its bucket no longer holds? (A hint
    /// for the choice of a way: nothing else depends on it.)
    fn stale(&self, entry: ElemWord) -> bool {
        let (slot, id) = self.cache.fields(entry);
        // Relaxed: a hint.
        self.bucket(id)
            .is_none_or(|b| b.load(Ordering::Relaxed) != slot.wrapping_add(1))
    }

    /// The set `ips` maps to (tests).
    #[cfg(test)]
    pub(super) fn cache_set(&self, ips: &[u64]) -> Option<usize> {
        self.cache.key(ips).map(|k| k.set)
    }

    /// Test hook: make the entry of `ips` name `slot` and bucket `id`,
    /// check bits and all, as a stale, forged or torn entry would. Entries
    /// are hints, so this can't change any result (the loom models and
    /// unit tests check exactly that).
    #[cfg(any(loom, test))]
    #[doc(hidden)]
    pub fn cache_forge(&self, ips: &[u64], slot: u32, id: u32) {
        if let Some(key) = self.cache.key(ips) {
            let new = self.cache.entry(&key, slot, id);
            // Both ways: whichever the probe reads first, it is this one.
            self.cache.store(&key, 0, new);
            self.cache.store(&key, 1, new);
        }
    }
}
