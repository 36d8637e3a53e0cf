//! The depot's concurrency protocol: intern (probe, reserve, write,
//! publish by one CAS) and get (one load of the directory).
//!
//! # Structures
//!
//! - **Index**: `n_slots` (a power of two, at least `2 * capacity`)
//!   `AtomicU32` words, probed linearly from `hash & (n_slots - 1)` for at
//!   most `probe_max = min(n_slots, PROBE_MAX)` slots. A word is 0 (empty)
//!   or `tag | (id + 1)`: the low `id_bits` bits hold `id + 1`, the bits
//!   above them the same bits of the hash's high half (the tag), so most
//!   slots holding other stacks are skipped without touching their record.
//! - **Directory**: `capacity` `AtomicU32` words, one per id: 0, or the
//!   record's arena offset shifted left by one, with bit 0 set once the
//!   stack is published ("get may hand it out").
//! - **Arena** (`arena`): immutable records, reserved by CAS.
//!
//! # Intern
//!
//! 1. Hash the words (keyed, with the kind); walk the probe run. At a slot
//!    whose tag matches, load the id's directory word and compare the whole
//!    record (header, then words): equal is a hit.
//! 2. At the first empty slot: reserve arena words, then an id (both by
//!    CAS loops that refuse to pass the end: `NoMem`, nothing taken); write
//!    the record; store the directory word (offset, not yet published).
//! 3. Publish: CAS the slot from 0 to `tag | (id + 1)` (Release). On
//!    success set the directory word's published bit and return the id.
//! 4. On a failed CAS, the value that won is examined exactly as in step 1:
//!    the same stack (a lost race: give back the id and words, count it,
//!    return the winner's id), or another stack (go on to the next slot
//!    with the record already written: it is only ever published once).
//! 5. Past `probe_max` slots, or on a failed reservation: give back what
//!    was reserved, `NoMem`.
//!
//! A thread that returns an id from the index (a hit, or the loser in step
//! 4) first makes sure the published bit is set (helping a winner that has
//! not set it yet), so any id `intern` returns is one `get` hands out.
//!
//! # Invariants
//!
//! 1. An index word, once non-zero, never changes until `clear`.
//! 2. A slot names id `k` only after `k`'s record is completely written
//!    and `k`'s directory word locates it: both happen before the
//!    publishing CAS (Release), and a prober reads the slot with Acquire.
//! 3. Each stack (kind and words) is in at most one slot. An intern moves
//!    past a slot only when that slot holds another stack, and slots never
//!    change (1); so if two interns of one stack published at different
//!    slots, the later slot's intern would have passed the earlier slot
//!    while it held this very stack. Two interns at the same slot: one CAS
//!    fails and its thread compares (step 4).
//! 4. A stack's slot is on its probe run before the first slot that was
//!    empty when the stack was published; so meeting an empty slot means
//!    the stack was not published before the load, and `NoMem` at that
//!    point is right for a full depot.
//! 5. A directory word's published bit is set only after its id was
//!    published in the index, and only records in the index are ever
//!    published: ids that were reserved and given back (or wasted) never
//!    get the bit, so `get` never shows their records.
//! 6. Published records are never written again (see `arena`), so `get`
//!    can lend `&[u64]` into the arena for as long as `&self` lives.
//!
//! # Progress
//!
//! `intern` is lock-free: it visits at most `probe_max` slots; each retry
//! of a reservation CAS and each failed publishing CAS means another
//! thread's operation succeeded. No thread ever waits for another to
//! finish a record: a record is reachable only once it is complete. `get`
//! is wait-free: one load and a bounds-checked slice.
//!
//! # At the probe bound
//!
//! A new stack whose probe run is full for `probe_max` slots is refused
//! with `NoMem` (counted in `DepotStats::probe_limit`), though ids and
//! words may be left. The index is at most half full, so for linear
//! probing a run of 256 occupied slots has probability about
//! `e^(-0.19 * 256)` (below 10^-21) per position with a random hash; the
//! keyed hash keeps a profiled process from making it likely.

use super::arena::{header, header_kind, CpuStats, KIND_BUILD_IDS, KIND_IPS};
use super::{StackDepotIn, StackKind};
use crate::sync::{AtomicU32, Ordering};
use crate::Error;

/// Bit 0 of a directory word: the stack is published.
const PUBLISHED: u32 = 1;

/// What an intern reserved and wrote, not yet published.
#[derive(Clone, Copy)]
struct Reserved {
    id: u32,
    off: u32,
    /// Words of the record, header included.
    len: u32,
}

impl<'a> StackDepotIn<'a> {
    /// The hash of a record's words with its kind.
    #[inline]
    fn hash_words(&self, kind: u64, words: &[u64]) -> u64 {
        #[cfg(any(test, loom))]
        if self.collide {
            return 0;
        }
        self.hasher.hash_with(words, kind)
    }

    /// The directory word of `id`.
    #[inline]
    fn dir_word(&self, id: u32) -> Option<&AtomicU32> {
        self.dir.get(id as usize)
    }

    /// Intern: see the module header.
    #[inline]
    pub(super) fn intern_words(&self, cpu: usize, kind: u64, words: &[u64]) -> Result<u32, Error> {
        if words.is_empty() {
            return Err(Error::Inval);
        }
        // A record longer than u32::MAX words can't fit an arena of at
        // most 2^31 words.
        let nr = u32::try_from(words.len()).map_err(|_| Error::NoMem)?;
        let hdr = header(kind, nr);
        let h = self.hash_words(kind, words);
        let id_mask = (1u32 << self.geo.id_bits) - 1;
        let tag = ((h >> 32) as u32) & !id_mask;
        let mask = self.geo.n_slots - 1;
        let mut pos = h as u32 & mask;
        let mut mine: Option<Reserved> = None;
        for _ in 0..self.geo.probe_max {
            let Some(slot) = self.index.get(pos as usize) else {
                break;
            };
            // Acquire: pairs with the publishing CAS (Release) of whoever
            // filled the slot: its record and directory word are visible.
            let mut seen = slot.load(Ordering::Acquire);
            if seen == 0 {
                let r = match mine {
                    Some(r) => r,
                    None => {
                        let r = self.reserve(cpu, hdr, words)?;
                        mine = Some(r);
                        r
                    }
                };
                // Success Release: pairs with the Acquire loads of probers
                // (above, and the failure load below), publishing the record
                // and directory word written in `reserve`. Failure Acquire:
                // the same, for the winner's record, which we compare next.
                // id < capacity <= 2^24: no overflow.
                let entry = tag | (r.id + 1);
                match slot.compare_exchange(0, entry, Ordering::Release, Ordering::Acquire) {
                    Ok(_) => {
                        self.set_published(r.id, r.off << 1);
                        if let Some(s) = self.cpu_stats(cpu) {
                            CpuStats::add(&s.published, 1);
                            CpuStats::add(&s.record_words, r.len as usize);
                        }
                        return Ok(r.id);
                    }
                    Err(winner) => seen = winner,
                }
            }
            if seen & !id_mask == tag {
                let id = (seen & id_mask).wrapping_sub(1);
                if let Some(dw) = self.same(id, hdr, words) {
                    if let Some(r) = mine {
                        self.give_back(cpu, r);
                        if let Some(s) = self.cpu_stats(cpu) {
                            CpuStats::add(&s.lost_races, 1);
                        }
                    }
                    self.help_publish(id, dw);
                    return Ok(id);
                }
            }
            pos = pos.wrapping_add(1) & mask;
        }
        if let Some(r) = mine {
            self.give_back(cpu, r);
        }
        if let Some(s) = self.cpu_stats(cpu) {
            CpuStats::add(&s.probe_limit, 1);
        }
        Err(Error::NoMem)
    }

    /// If `id`'s record holds exactly `hdr` and `words`: its directory word.
    ///
    /// Called only for an id read (with Acquire) from a non-empty index slot.
    #[inline]
    fn same(&self, id: u32, hdr: u64, words: &[u64]) -> Option<u32> {
        // Relaxed: the directory word was stored before the publishing CAS
        // that our Acquire load of the slot read from, so it is visible.
        let dw = self.dir_word(id)?.load(Ordering::Relaxed);
        // SAFETY: invariant 2: a slot names `id` only after its record was
        // written completely at `dw >> 1`, and that write happens before
        // our Acquire load of the slot; published records are never
        // written again (invariant 6).
        let (h, stored) = unsafe { self.arena.record((dw >> 1) as usize)? };
        (h == hdr && stored == words).then_some(dw)
    }

    /// Sets the published bit of `id`'s directory word `dw` (the winner
    /// after its CAS, or a prober that found the bit still clear).
    #[inline]
    fn set_published(&self, id: u32, dw: u32) {
        if let Some(w) = self.dir_word(id) {
            // Release: pairs with the Acquire load in `record`; the record
            // (written before the publishing CAS, which happens before this
            // store in either case) is visible to whoever sees the bit.
            let published = dw | PUBLISHED;
            w.store(published, Ordering::Release);
        }
    }

    /// Sets the published bit of `id` if `dw`, its directory word as a
    /// prober read it, lacks it: the winner may not have got there yet, and
    /// an id `intern` returns must be one `get` hands out.
    #[inline]
    fn help_publish(&self, id: u32, dw: u32) {
        if dw & PUBLISHED == 0 {
            self.set_published(id, dw);
        }
    }

    /// Reserves words and an id for a record of `hdr` and `words`, writes
    /// it, and stores its directory word (not yet published).
    #[inline]
    fn reserve(&self, cpu: usize, hdr: u64, words: &[u64]) -> Result<Reserved, Error> {
        let cap = self.geo.capacity;
        // Relaxed: a quick refusal when the ids are gone (the common case
        // of a full depot), so its interns take and give back no words.
        if self.cursors.ids.load(Ordering::Relaxed) >= cap {
            return Err(Error::NoMem);
        }
        let len = u32::try_from(words.len())
            .ok()
            .and_then(|n| n.checked_add(1))
            .ok_or(Error::NoMem)?;
        // arena_words <= 2^31: fits a u32.
        let limit = self.arena.len() as u32;
        let off = self.cursors.take_words(len, limit).ok_or(Error::NoMem)?;
        let Some(id) = self.cursors.take_id(cap) else {
            if !self.cursors.give_back_words(off, len) {
                if let Some(s) = self.cpu_stats(cpu) {
                    CpuStats::add(&s.wasted_words, len as usize);
                }
            }
            return Err(Error::NoMem);
        };
        // SAFETY: `[off, off + len)` was just reserved by us and is neither
        // published nor given back: no other thread touches it (arena
        // invariants).
        unsafe { self.arena.write(off as usize, hdr, words) };
        if let Some(w) = self.dir_word(id) {
            // Relaxed: published by the Release CAS on the index slot (and
            // ordered after any earlier user of this id by `take_id`).
            w.store(off << 1, Ordering::Relaxed);
        }
        Ok(Reserved { id, off, len })
    }

    /// Gives back an unpublished reservation: the id, then the words; what
    /// can't be given back is counted as wasted.
    #[inline]
    fn give_back(&self, cpu: usize, r: Reserved) {
        // The directory word keeps its unpublished value: `get` ignores it,
        // and the next taker of the id overwrites it.
        if !self.cursors.give_back_id(r.id) {
            if let Some(s) = self.cpu_stats(cpu) {
                CpuStats::add(&s.wasted_ids, 1);
            }
        }
        if !self.cursors.give_back_words(r.off, r.len) {
            if let Some(s) = self.cpu_stats(cpu) {
                CpuStats::add(&s.wasted_words, r.len as usize);
            }
        }
    }

    /// Get: the kind and words of the stack under `id`, if published.
    #[inline]
    pub(super) fn record(&self, id: u32) -> Option<(StackKind, &[u64])> {
        // Acquire: pairs with the Release store of the published bit in
        // `set_published`.
        let dw = self.dir_word(id)?.load(Ordering::Acquire);
        if dw & PUBLISHED == 0 {
            return None;
        }
        // SAFETY: the bit is set only after the record at `dw >> 1` was
        // written completely, and that write happens before the bit's
        // Release store (invariants 2 and 5), which our Acquire load read;
        // published records are never written while `&self` lives
        // (invariant 6; `clear` needs `&mut self`).
        let (h, words) = unsafe { self.arena.record((dw >> 1) as usize)? };
        let kind = match header_kind(h) {
            KIND_IPS => StackKind::Ips,
            KIND_BUILD_IDS => StackKind::BuildIds,
            _ => return None,
        };
        Some((kind, words))
    }
}
