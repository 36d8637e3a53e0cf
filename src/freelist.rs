//! TEMPORARY STUB (not committed): replaced by the freelist branch.
#![allow(missing_docs)]
use crate::sync::{AtomicU32, HeadAtomic, HeadWord, Ordering, HEAD_INDEX_BITS};
use crossbeam_utils::CachePadded;
pub type Head = CachePadded<HeadAtomic>;
const EMPTY: HeadWord = ((1 as HeadWord) << HEAD_INDEX_BITS) - 1;
pub fn new_head() -> Head {
    CachePadded::new(HeadAtomic::new(EMPTY))
}
pub const MAX_ELEMS: u32 = crate::sync::HEAD_INDEX_MAX;
pub struct FreeList<'a> {
    heads: &'a [Head],
    links: &'a [AtomicU32],
}
impl<'a> FreeList<'a> {
    pub fn new(heads: &'a [Head], links: &'a [AtomicU32]) -> Self {
        FreeList { heads, links }
    }
    pub fn populate(&self) {
        let n = self.links.len();
        let c = self.heads.len();
        let (q, r) = (n / c, n % c);
        let mut i = 0;
        for cpu in 0..c {
            for _ in 0..q + usize::from(cpu < r) {
                self.push(cpu, i as u32);
                i += 1;
            }
        }
    }
    pub fn push(&self, cpu: usize, idx: u32) {
        // No panic path: `get`/`checked_rem` instead of `[]`/`%`. Neither
        // fails (nr_cpus >= 1, idx < max_entries), so nothing is dropped.
        let h = cpu
            .checked_rem(self.heads.len())
            .and_then(|c| self.heads.get(c));
        let (Some(h), Some(link)) = (h, self.links.get(idx as usize)) else {
            return;
        };
        let mut cur = h.load(Ordering::Acquire);
        loop {
            link.store((cur & EMPTY) as u32, Ordering::Relaxed);
            let tag = (cur >> HEAD_INDEX_BITS).wrapping_add(1);
            let new = (tag << HEAD_INDEX_BITS) | idx as HeadWord;
            match h.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(c) => cur = c,
            }
        }
    }
    fn pop_one(&self, cpu: usize) -> Option<u32> {
        let h = self.heads.get(cpu)?;
        let mut cur = h.load(Ordering::Acquire);
        loop {
            let idx = cur & EMPTY;
            if idx == EMPTY {
                return None;
            }
            let next = self.links.get(idx as usize)?.load(Ordering::Relaxed) as HeadWord;
            let tag = (cur >> HEAD_INDEX_BITS).wrapping_add(1);
            let new = (tag << HEAD_INDEX_BITS) | next;
            match h.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(idx as u32),
                Err(c) => cur = c,
            }
        }
    }
    pub fn pop(&self, cpu: usize) -> Option<u32> {
        let c = self.heads.len();
        (0..c).find_map(|k| self.pop_one((cpu + k) % c))
    }
    pub fn nr_cpus(&self) -> usize {
        self.heads.len()
    }
    pub fn capacity(&self) -> u32 {
        self.links.len() as u32
    }
}
