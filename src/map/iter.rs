//! Every stored stack, by id, with no allocation: [`StackMapIn::iter`].
//!
//! Each item is one optimistic read of one bucket (`observe` in
//! `protocol.rs`): the frames are those of one complete stack that sat in
//! the bucket during the read. The walk is not a snapshot of the whole map:
//! a stack inserted or removed while it runs may or may not be seen.

use core::iter::FusedIterator;

use super::protocol::Seen;
use super::StackMapIn;
use crate::uapi::PERF_MAX_STACK_DEPTH;
use crate::Error;

/// One stack's frames as [`StackMapIn::iter`] yields them: instruction
/// addresses, innermost first, in a fixed-capacity buffer of
/// [`PERF_MAX_STACK_DEPTH`] (127) frames that lives on the stack.
///
/// It is a [`heapless::Vec`](crate::heapless::Vec) (re-exported as
/// [`kstackmap::heapless`](crate::heapless), so no version mismatch):
/// it derefs to `&[u64]`.
pub type Frames = heapless::Vec<u64, { PERF_MAX_STACK_DEPTH as usize }>;

/// Iterator over `(id, frames)` of every stored stack, in id order: see
/// [`StackMapIn::iter`].
#[derive(Debug)]
pub struct Iter<'m, 'a> {
    map: &'m StackMapIn<'a>,
    /// The next bucket to look at.
    next: u32,
}

impl<'a> StackMapIn<'a> {
    /// Every stored stack as `(id, frames)`, in id order, with no
    /// allocation: the frames are copied into a [`Frames`] buffer.
    ///
    /// For ips maps whose values hold at most 127 frames (every map with
    /// the default `max_stack`). Each item is a consistent read of one
    /// bucket (the frames of one complete stack that sat there); stacks
    /// inserted or removed during the walk may or may not be seen. It is
    /// [`get_next_key`](StackMapIn::get_next_key) plus
    /// [`lookup_ips`](StackMapIn::lookup_ips), without the restart from 0
    /// when a key's bucket is emptied under it.
    ///
    /// ```
    /// # fn main() -> Result<(), kstackmap::Error> {
    /// let map = kstackmap::StackMap::with_capacity(64, 8)?;
    /// let a = map.get_stackid(0, &[0x10, 0x20], 0)?;
    /// let b = map.get_stackid(0, &[0x30], 0)?;
    /// let mut seen = 0;
    /// for (id, frames) in map.iter()? {
    ///     let want: &[u64] = if id == a { &[0x10, 0x20] } else { &[0x30] };
    ///     assert!(id == a || id == b);
    ///     assert_eq!(&frames[..], want);
    ///     seen += 1;
    /// }
    /// assert_eq!(seen, 2);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// - `Inval`: a build-id map (use `get_next_key` and
    ///   [`lookup_build_ids`](StackMapIn::lookup_build_ids)), or values of
    ///   more than 127 frames (a raised [`Config::max_stack`](crate::Config)).
    /// - `Perm`: the map is `BPF_F_WRONLY`.
    pub fn iter(&self) -> Result<Iter<'_, 'a>, Error> {
        self.may(true, false)?;
        if self.geo.build_id() || self.geo.value_frames > PERF_MAX_STACK_DEPTH {
            return Err(Error::Inval);
        }
        Ok(Iter { map: self, next: 0 })
    }
}

impl Iterator for Iter<'_, '_> {
    type Item = (u32, Frames);

    fn next(&mut self) -> Option<(u32, Frames)> {
        let map = self.map;
        while let Some(bucket) = map.bucket(self.next) {
            let id = self.next;
            self.next += 1;
            let mut frames = Frames::new();
            let seen = map.observe(bucket, |e| {
                frames.clear();
                let (_, nr) = e.hash_nr();
                let nr = (nr as usize).min(map.geo.value_frames as usize);
                // Read under the sequence number (`observe`).
                for ip in e.ips(nr) {
                    // Never full: `iter` checked value_frames <= capacity.
                    let _ = frames.push(ip);
                }
            });
            if let Seen::Slot(..) = seen {
                return Some((id, frames));
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.map.n_buckets().saturating_sub(self.next);
        (0, Some(left as usize))
    }
}

impl FusedIterator for Iter<'_, '_> {}

#[cfg(all(test, feature = "std"))]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use crate::uapi::{BPF_F_STACK_BUILD_ID, BPF_F_WRONLY};
    use crate::{Config, Error, MapAttr, StackMap};

    #[test]
    fn iter_yields_every_stack_in_id_order() {
        let m = StackMap::with_capacity(64, 4).unwrap();
        let stacks: [&[u64]; 4] = [&[1], &[2, 3], &[4, 5, 6, 7], &[u64::MAX, 0]];
        let mut want: Vec<(u32, Vec<u64>)> = stacks
            .iter()
            .map(|s| (m.get_stackid(0, s, 0).unwrap(), s.to_vec()))
            .collect();
        // A deeper chain is cut to 4 frames, as stored.
        let id = m.get_stackid(0, &[9, 8, 7, 6, 5], 0).unwrap();
        want.push((id, std::vec![9, 8, 7, 6]));
        want.sort();
        let got: Vec<(u32, Vec<u64>)> = m.iter().unwrap().map(|(i, f)| (i, f.to_vec())).collect();
        assert_eq!(got, want);
        m.delete(want[0].0).unwrap();
        assert_eq!(m.iter().unwrap().count(), 4);
        let mut it = m.iter().unwrap();
        it.by_ref().for_each(drop);
        assert_eq!(it.next(), None, "fused");
    }

    #[test]
    fn iter_refuses_what_it_cannot_hold() {
        // Small maps: Miri runs these tests too.
        let bid = MapAttr {
            max_entries: 4,
            value_size: 64,
            map_flags: BPF_F_STACK_BUILD_ID,
            ..MapAttr::default()
        };
        assert_eq!(
            StackMap::new(&bid).unwrap().iter().err(),
            Some(Error::Inval)
        );
        let deep = MapAttr {
            max_entries: 4,
            value_size: 128 * 8,
            ..MapAttr::default()
        };
        let cfg = Config {
            nr_cpus: 1,
            max_stack: 128,
        };
        let deep = StackMap::with_config(&deep, cfg).unwrap();
        assert_eq!(deep.iter().err(), Some(Error::Inval));
        let wo = MapAttr {
            max_entries: 4,
            map_flags: BPF_F_WRONLY,
            ..MapAttr::default()
        };
        assert_eq!(StackMap::new(&wo).unwrap().iter().err(), Some(Error::Perm));
        // The largest value that fits: 127 frames.
        let full = StackMap::with_capacity(4, 127).unwrap();
        let chain: Vec<u64> = (1..=127).collect();
        let id = full.get_stackid(0, &chain, 0).unwrap();
        let (got_id, frames) = full.iter().unwrap().next().unwrap();
        assert_eq!((got_id, &frames[..]), (id, &chain[..]));
    }

    #[test]
    fn with_capacity_picks_an_ips_map() {
        let m = StackMap::with_capacity(100, 16).unwrap();
        let want = MapAttr {
            max_entries: 100,
            key_size: 4,
            value_size: 128,
            map_flags: 0,
            numa_node: 0,
        };
        assert_eq!(*m.attr(), want);
        assert_eq!(m.n_buckets(), 128);
        assert_eq!(StackMap::with_capacity(0, 16).err(), Some(Error::Inval));
        assert_eq!(StackMap::with_capacity(1, 0).err(), Some(Error::Inval));
        assert_eq!(StackMap::with_capacity(1, 128).err(), Some(Error::Inval));
        assert_eq!(
            StackMap::with_capacity(1, u32::MAX).err(),
            Some(Error::Inval)
        );
    }
}
