//! The syscall side of the map: `BPF_MAP_LOOKUP_ELEM`, `DELETE_ELEM`,
//! `LOOKUP_AND_DELETE_ELEM`, `GET_NEXT_KEY`, `UPDATE_ELEM`, with the
//! map-fd permission check (`BPF_F_RDONLY` / `BPF_F_WRONLY`) the kernel does
//! before the map's own code. Readers follow `observe` in `protocol.rs`.

use super::elem::Elem;
use super::protocol::Seen;
use super::StackMapIn;
use crate::sync::Ordering;
use crate::uapi::{StackBuildId, BPF_F_RDONLY, BPF_F_WRONLY};
use crate::Error;

impl StackMapIn<'_> {
    /// Checks the map-fd permission the kernel checks before the map's code.
    pub(super) fn may(&self, read: bool, write: bool) -> Result<(), Error> {
        let f = self.geo.attr.map_flags;
        if (read && f & BPF_F_WRONLY != 0) || (write && f & BPF_F_RDONLY != 0) {
            return Err(Error::Perm);
        }
        Ok(())
    }

    /// Copies slot `e`'s frames into `value`, zeroes the tail, and returns
    /// the number of frames.
    pub(super) fn copy_out(&self, e: Elem<'_>, value: &mut [u8]) -> usize {
        let (_, nr) = e.hash_nr();
        let nr = (nr as usize).min(self.geo.value_frames as usize);
        let len = nr * self.geo.frame_size as usize;
        let (head, tail) = value.split_at_mut(len.min(value.len()));
        // len is a multiple of 8 (frame sizes are), so no remainder.
        e.copy_out(head);
        tail.fill(0);
        nr
    }

    pub(super) fn value_buf<'v>(&self, value: &'v mut [u8]) -> Result<&'v mut [u8], Error> {
        value
            .get_mut(..self.geo.attr.value_size as usize)
            .ok_or(Error::Inval)
    }

    /// `BPF_MAP_LOOKUP_ELEM`: copies stack `id` into `value` (its first
    /// `value_size` bytes), zeroing the part past the stack's frames. Ips
    /// maps hold native-endian `u64`s, build-id maps
    /// [`StackBuildId`]s; [`lookup_ips`](StackMapIn::lookup_ips) and
    /// [`lookup_build_ids`](StackMapIn::lookup_build_ids) give them typed.
    ///
    /// The read is optimistic: it never takes the stack out of its bucket
    /// (the kernel's copy does, and can make a concurrent insert vanish),
    /// and retries only if a writer changed the bucket meanwhile.
    ///
    /// ```
    /// # fn main() -> Result<(), kstackmap::Error> {
    /// let map = kstackmap::StackMap::with_capacity(64, 4)?;
    /// let id = map.get_stackid(0, &[0x10, 0x20], 0)?;
    /// let mut value = [0xffu8; 4 * 8];
    /// map.lookup(id, &mut value)?;
    /// assert_eq!(value[..8], 0x10u64.to_ne_bytes());
    /// assert_eq!(value[8..16], 0x20u64.to_ne_bytes());
    /// assert_eq!(value[16..], [0; 16]); // zeroed past the stack
    /// assert_eq!(map.lookup(id ^ 1, &mut value), Err(kstackmap::Error::NoEnt));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// - `NoEnt`: the bucket is empty, or `id >= n_buckets`.
    /// - `Inval`: `value` is shorter than `value_size`.
    /// - `Perm`: the map is `BPF_F_WRONLY`.
    pub fn lookup(&self, id: u32, value: &mut [u8]) -> Result<(), Error> {
        self.lookup_frames(id, value).map(drop)
    }

    /// [`lookup`](StackMapIn::lookup) that returns the number of frames.
    fn lookup_frames(&self, id: u32, value: &mut [u8]) -> Result<usize, Error> {
        self.may(true, false)?;
        let bucket = self.bucket(id).ok_or(Error::NoEnt)?;
        let value = self.value_buf(value)?;
        match self.observe(bucket, |e| self.copy_out(e, value)) {
            Seen::Empty => Err(Error::NoEnt),
            Seen::Slot(_, nr) => Ok(nr),
        }
    }

    /// [`lookup`](StackMapIn::lookup) into a typed buffer of an ips map,
    /// with no intermediate copy: the value lands in `out` (at least
    /// `value_size / 8` long) and the stack's frames are returned as a
    /// slice of it.
    ///
    /// # Errors
    ///
    /// As [`lookup`](StackMapIn::lookup) (`NoEnt`, `Perm`), and `Inval` on
    /// a build-id map or when `out` is shorter than `value_size / 8`.
    pub fn lookup_ips<'v>(&self, id: u32, out: &'v mut [u64]) -> Result<&'v [u64], Error> {
        if self.geo.build_id() {
            return Err(Error::Inval);
        }
        let nr = self.lookup_frames(id, zerocopy::IntoBytes::as_mut_bytes(&mut *out))?;
        Ok(out.get(..nr).unwrap_or(&[]))
    }

    /// [`lookup`](StackMapIn::lookup) into typed [`StackBuildId`] frames of
    /// a build-id map, with no intermediate copy; returns the stack's
    /// frames.
    ///
    /// # Errors
    ///
    /// As [`lookup`](StackMapIn::lookup) (`NoEnt`, `Perm`), and `Inval` on
    /// an ips map or when `out` is shorter than `value_size / 32`.
    pub fn lookup_build_ids<'v>(
        &self,
        id: u32,
        out: &'v mut [StackBuildId],
    ) -> Result<&'v [StackBuildId], Error> {
        if !self.geo.build_id() {
            return Err(Error::Inval);
        }
        let nr = self.lookup_frames(id, zerocopy::IntoBytes::as_mut_bytes(&mut *out))?;
        Ok(out.get(..nr).unwrap_or(&[]))
    }

    /// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (Linux 6.18+): copies stack `id`
    /// out, as [`lookup`](StackMapIn::lookup), and removes it.
    ///
    /// # Errors
    ///
    /// - `NoEnt`: the bucket is empty, or `id >= n_buckets`.
    /// - `Inval`: `value` is shorter than `value_size`.
    /// - `Perm`: the map is RDONLY or WRONLY (it needs both rights).
    pub fn lookup_and_delete(&self, id: u32, value: &mut [u8]) -> Result<(), Error> {
        self.may(true, true)?;
        let bucket = self.bucket(id).ok_or(Error::NoEnt)?;
        let value = self.value_buf(value)?;
        // AcqRel: Acquire sees the slot's words (pairs with its publish);
        // Release orders this removal before our push of the slot.
        let old = bucket.swap(0, Ordering::AcqRel);
        let slot = old.checked_sub(1).ok_or(Error::NoEnt)?;
        // The slot is ours now: no writer can touch it until we push it.
        if let Some(e) = self.elem(slot) {
            self.copy_out(e, value);
        }
        self.free_removed(slot);
        Ok(())
    }

    /// `BPF_MAP_DELETE_ELEM`: removes stack `id`.
    ///
    /// # Errors
    ///
    /// - `TooBig`: `id >= n_buckets` (the kernel's errno here).
    /// - `NoEnt`: the bucket is empty.
    /// - `Perm`: the map is `BPF_F_RDONLY`.
    pub fn delete(&self, id: u32) -> Result<(), Error> {
        self.may(false, true)?;
        let bucket = self.bucket(id).ok_or(Error::TooBig)?;
        // AcqRel: as in `lookup_and_delete`.
        let old = bucket.swap(0, Ordering::AcqRel);
        let slot = old.checked_sub(1).ok_or(Error::NoEnt)?;
        self.free_removed(slot);
        Ok(())
    }

    /// Gives a slot taken out of its bucket by the syscall side back to the
    /// freelist. The syscall side has no CPU of its own (the kernel pushes
    /// to the current CPU's list), so the slot goes to the shard `populate`
    /// put it on: frees spread over the shards as the slots were at the
    /// start, instead of piling onto one head (all steal traffic and all
    /// tag pressure on shard 0), and need no shared counter to do so.
    fn free_removed(&self, slot: u32) {
        self.freelist.push(self.freelist.home(slot), slot);
    }

    /// `BPF_MAP_GET_NEXT_KEY`: the first occupied id after `key`. No key,
    /// an id out of range, or an id whose bucket is empty restarts from 0,
    /// as in the kernel.
    ///
    /// # Errors
    ///
    /// - `NoEnt`: no occupied id follows.
    /// - `Perm`: the map is `BPF_F_WRONLY`.
    pub fn get_next_key(&self, key: Option<u32>) -> Result<u32, Error> {
        self.may(true, false)?;
        // Relaxed (all loads here): only emptiness is read, nothing behind
        // the slot index, and a racing change may be seen either way.
        let occupied = |id: u32| {
            self.bucket(id)
                .is_some_and(|b| b.load(Ordering::Relaxed) != 0)
        };
        let start = match key {
            Some(k) if occupied(k) => k + 1,
            _ => 0,
        };
        (start..self.geo.n_buckets)
            .find(|&id| occupied(id))
            .ok_or(Error::NoEnt)
    }

    /// `BPF_MAP_UPDATE_ELEM`: stack maps can't be written from the syscall
    /// side.
    ///
    /// # Errors
    ///
    /// Always: `Perm` on RDONLY maps (the kernel checks that first), else
    /// `Inval`.
    pub fn update(&self, id: u32, value: &[u8], flags: u64) -> Result<(), Error> {
        self.may(false, true)?;
        let _ = (id, value, flags);
        Err(Error::Inval)
    }
}
