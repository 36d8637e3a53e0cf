//! `bpf_get_stackid` and its variants: cut the chain as the kernel's walk
//! does, hash it, compare with the bucket, and store it if new. The
//! concurrency protocol it follows (observe, write, publish) is in
//! `protocol.rs`.

use super::cache::Probe;
use super::elem::{Elem, WORD};
use super::protocol::{decide, Cmp, Seen};
use super::versioned::{seq_of, split, version, StackRef};
use super::StackMapIn;
use crate::build_id::{resolve_frames, VmaResolver};
use crate::callchain::{count_kernel_ips, pe_user_skip};
use crate::hash::trace_hash;
use crate::uapi::{
    StackBuildId, BPF_F_FAST_STACK_CMP, BPF_F_REUSE_STACKID, BPF_F_SKIP_FIELD_MASK,
    BPF_F_USER_STACK, STACKID_FLAG_MASK,
};
use crate::Error;

impl StackMapIn<'_> {
    /// `bpf_get_stackid`: the id of `callchain`'s stack, storing it if new.
    ///
    /// `callchain` is the whole chain, innermost frame first, as
    /// `get_perf_callchain` returns it; the map takes the first
    /// `min(value_size / 8 + skip, max_stack)` frames (like the kernel's
    /// walk), skips `flags & BPF_F_SKIP_FIELD_MASK`, and hashes the rest.
    /// On a build-id map the frames become [`StackBuildId`]s with status IP
    /// (use [`get_stackid_resolved`](StackMapIn::get_stackid_resolved) to
    /// resolve user frames).
    ///
    /// ```
    /// use kstackmap::{uapi::BPF_F_USER_STACK, StackMap};
    ///
    /// # fn main() -> Result<(), kstackmap::Error> {
    /// let map = StackMap::with_capacity(1024, 32)?;
    /// let chain = [0x4011d6, 0x401234, 0x7f00_1234_5678]; // innermost first
    /// let id = map.get_stackid(0, &chain, BPF_F_USER_STACK)?;
    /// // The same stack from another CPU: the same id, the kernel's id.
    /// assert_eq!(map.get_stackid(1, &chain, BPF_F_USER_STACK)?, id);
    /// assert_eq!(id, kstackmap::trace_hash(&chain) & (map.n_buckets() - 1));
    /// // Skip the innermost frame (the low 8 bits of flags): another stack.
    /// let outer = map.get_stackid(0, &chain, 1)?;
    /// assert_eq!(outer, kstackmap::trace_hash(&chain[1..]) & (map.n_buckets() - 1));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As the kernel's:
    /// - `Inval`: flags other than the skip, `BPF_F_USER_STACK`,
    ///   `BPF_F_FAST_STACK_CMP` and `BPF_F_REUSE_STACKID`.
    /// - `Fault`: the chain is not longer than the skip.
    /// - `Exist`: another stack holds the bucket and `BPF_F_REUSE_STACKID`
    ///   is not set.
    /// - `NoMem`: every element is in use (on build-id maps even for a
    ///   known stack: they take an element before comparing, as the kernel
    ///   does).
    ///
    /// # Guarantee (stronger than the kernel's)
    ///
    /// `Ok(id)` from a full compare means that, at one moment during this
    /// call, bucket `id` held an element containing exactly this stack: the
    /// compare is re-checked against the element's sequence number and the
    /// bucket, so an element being recycled under the compare can't produce
    /// a false hit (the kernel's `memcmp` can). With `BPF_F_FAST_STACK_CMP`
    /// only the hash is compared, as in the kernel. Never allocates, blocks
    /// or panics.
    ///
    /// On ips maps a hit usually skips `jhash2`: a cache in the map's memory
    /// names the slot and bucket that last held the stack, and the id is
    /// returned only under the same guarantee (every frame compared, the
    /// slot's sequence number and the bucket checked); anything else takes
    /// the kernel's path. Results are the kernel's either way.
    pub fn get_stackid(&self, cpu: usize, callchain: &[u64], flags: u64) -> Result<u32, Error> {
        self.stackid(cpu, callchain, flags, None::<&dyn VmaResolver>)
            .map(|r| r.id)
    }

    /// [`get_stackid`](StackMapIn::get_stackid) for build-id maps, turning
    /// user frames (`BPF_F_USER_STACK`) into `(build id, file offset)`
    /// through `resolver`, as the kernel's `stack_map_get_build_id_offset`.
    /// On an ips map the resolver is not used.
    ///
    /// # Errors
    ///
    /// As [`get_stackid`](StackMapIn::get_stackid): `Inval`, `Fault`,
    /// `Exist`, `NoMem`.
    pub fn get_stackid_resolved<R: VmaResolver + ?Sized>(
        &self,
        cpu: usize,
        callchain: &[u64],
        flags: u64,
        resolver: &R,
    ) -> Result<u32, Error> {
        self.stackid(cpu, callchain, flags, Some(resolver))
            .map(|r| r.id)
    }

    /// `bpf_get_stackid_pe`: `callchain` is a perf sample's callchain, with
    /// `PERF_CONTEXT_*` marker words as perf delivers them. The kernel
    /// stack is the chain up to the first `PERF_CONTEXT_USER`; with
    /// `BPF_F_USER_STACK` the skip grows by that length (`Fault` past 255).
    /// As the kernel's depth fix (read off Linux 6.18.44; older kernels
    /// could copy past the value here): `Fault` when the part is not longer
    /// than the skip, else the stack is the part's next `min(len - skip,
    /// depth - skip)` words, `depth = min(value_size / elem + skip,
    /// max_stack)` and the difference taken modulo 2^32. So on a perf
    /// chain longer than `max_stack` (its markers come on top of
    /// `max_stack` ips), a skip of `max_stack` gives the empty stack and a
    /// larger one the words past it.
    ///
    /// # Errors
    ///
    /// As [`get_stackid`](StackMapIn::get_stackid) (`Inval`, `Fault`,
    /// `Exist`, `NoMem`), and `Fault` when the user part's skip would pass
    /// 255.
    pub fn get_stackid_pe(&self, cpu: usize, callchain: &[u64], flags: u64) -> Result<u32, Error> {
        self.stackid_pe(cpu, callchain, flags, None::<&dyn VmaResolver>)
            .map(|r| r.id)
    }

    /// [`get_stackid_pe`](StackMapIn::get_stackid_pe) with a resolver for
    /// build-id maps.
    ///
    /// # Errors
    ///
    /// As [`get_stackid_pe`](StackMapIn::get_stackid_pe).
    pub fn get_stackid_pe_resolved<R: VmaResolver + ?Sized>(
        &self,
        cpu: usize,
        callchain: &[u64],
        flags: u64,
        resolver: &R,
    ) -> Result<u32, Error> {
        self.stackid_pe(cpu, callchain, flags, Some(resolver))
            .map(|r| r.id)
    }

    /// The checks and walk of `bpf_get_stackid`; returns the id with the
    /// version of the element that held the stack (`versioned.rs`).
    pub(super) fn stackid<R: VmaResolver + ?Sized>(
        &self,
        cpu: usize,
        callchain: &[u64],
        flags: u64,
        resolver: Option<&R>,
    ) -> Result<StackRef, Error> {
        if flags & !STACKID_FLAG_MASK != 0 {
            return Err(Error::Inval);
        }
        self.stackid_walk(cpu, callchain, flags, resolver)
    }

    /// Cuts the chain to the kernel walk's depth, `min(value_frames + skip,
    /// max_stack)`, then runs `__bpf_get_stackid`. Flags are checked.
    fn stackid_walk<R: VmaResolver + ?Sized>(
        &self,
        cpu: usize,
        callchain: &[u64],
        flags: u64,
        resolver: Option<&R>,
    ) -> Result<StackRef, Error> {
        let skip = (flags & BPF_F_SKIP_FIELD_MASK) as u32;
        let depth = self.geo.max_depth(skip) as usize;
        let trace = callchain.get(..depth).unwrap_or(callchain);
        self.stackid_trace(cpu, trace, flags, resolver)
    }

    fn stackid_pe<R: VmaResolver + ?Sized>(
        &self,
        cpu: usize,
        callchain: &[u64],
        flags: u64,
        resolver: Option<&R>,
    ) -> Result<StackRef, Error> {
        if flags & !STACKID_FLAG_MASK != 0 {
            return Err(Error::Inval);
        }
        let nr_kernel = count_kernel_ips(callchain);
        let (part, flags) = if flags & BPF_F_USER_STACK == 0 {
            (callchain.get(..nr_kernel).unwrap_or(callchain), flags)
        } else {
            (callchain, pe_user_skip(flags, nr_kernel)?)
        };
        // The kernel's `__bpf_get_stackid(map, trace, flags, max_depth)`:
        // `trace_nr = min(nr - skip, max_depth - skip)` in u32, after the
        // EFAULT check on the whole part. At most `value_frames` words.
        let skip = (flags & BPF_F_SKIP_FIELD_MASK) as u32;
        let nr = u32::try_from(part.len()).unwrap_or(u32::MAX);
        if nr <= skip {
            return Err(Error::Fault);
        }
        let n = (nr - skip).min(self.geo.max_depth(skip).wrapping_sub(skip));
        let ips = part
            .get(skip as usize..)
            .and_then(|rest| rest.get(..n as usize))
            .unwrap_or(&[]);
        self.stackid_ips(cpu, ips, flags, resolver)
    }

    /// `__bpf_get_stackid` on a trace already cut to the walk's depth.
    fn stackid_trace<R: VmaResolver + ?Sized>(
        &self,
        cpu: usize,
        trace: &[u64],
        flags: u64,
        resolver: Option<&R>,
    ) -> Result<StackRef, Error> {
        let skip = (flags & BPF_F_SKIP_FIELD_MASK) as usize;
        if trace.len() <= skip {
            return Err(Error::Fault);
        }
        // At most `value_frames`: the trace was cut to `value_frames + skip`.
        let ips = trace.get(skip..).unwrap_or(&[]);
        self.stackid_ips(cpu, ips, flags, resolver)
    }

    /// `__bpf_get_stackid` from the hash on: `ips` (at most `value_frames`,
    /// possibly none) is the stack.
    fn stackid_ips<R: VmaResolver + ?Sized>(
        &self,
        cpu: usize,
        ips: &[u64],
        flags: u64,
        resolver: Option<&R>,
    ) -> Result<StackRef, Error> {
        if self.geo.build_id() {
            return self.stackid_build_id(cpu, ips, flags, resolver);
        }
        // The hit cache (cache.rs): a verified id, or at least the hash.
        let (key, hash) = match self.probe(ips) {
            (_, Probe::Hit(found)) => return Ok(found),
            (key, Probe::Hash(hash)) => (key, hash),
            (key, Probe::Miss) => (key, trace_hash(ips)),
        };
        let (found, slot) = self.stackid_hashed(cpu, ips, hash, flags)?;
        self.refresh(key, slot, found.id);
        Ok(found)
    }

    /// `__bpf_get_stackid` for an ips map, from the trace's hash: the id and
    /// version, and the slot that holds the stack in its bucket.
    fn stackid_hashed(
        &self,
        cpu: usize,
        ips: &[u64],
        hash: u32,
        flags: u64,
    ) -> Result<(StackRef, u32), Error> {
        let id = hash & (self.geo.n_buckets - 1);
        let bucket = self.bucket(id).ok_or(Error::Fault)?;
        let nr = ips.len() as u32;
        let fast = flags & BPF_F_FAST_STACK_CMP != 0;
        let reuse = flags & BPF_F_REUSE_STACKID != 0;
        loop {
            let seen = self.observe(bucket, |e| {
                let (h, n) = e.hash_nr();
                let cmp = if h != hash {
                    Cmp::Other
                } else if fast || (n == nr && e.eq_ips(ips)) {
                    Cmp::Same
                } else {
                    Cmp::Other
                };
                (cmp, seq_of(&e))
            });
            let (seen, theirs) = split(seen);
            let expect = match decide(seen, reuse) {
                Ok(expect) => expect,
                Err(hit_or_exist) => {
                    return hit_or_exist.map(|b| {
                        let found = StackRef {
                            id,
                            version: theirs,
                        };
                        (found, b.wrapping_sub(1))
                    })
                }
            };
            let (slot, new) = self.take_slot(cpu)?;
            self.write(new, hash, nr, |e| e.store_ips(ips));
            // Read before publishing: afterwards another thread may
            // replace and rewrite the slot.
            let version = version(slot, seq_of(&new));
            if self.publish(cpu, bucket, expect, slot, reuse) {
                return Ok((StackRef { id, version }, slot));
            }
            // Someone else changed the bucket first: give the slot back
            // and decide again on what is there now.
            self.freelist.push(cpu, slot);
        }
    }

    /// `__bpf_get_stackid` for a build-id map: the kernel pops an element
    /// before comparing (a full map gives ENOMEM even for a known stack),
    /// and so do we.
    fn stackid_build_id<R: VmaResolver + ?Sized>(
        &self,
        cpu: usize,
        ips: &[u64],
        flags: u64,
        resolver: Option<&R>,
    ) -> Result<StackRef, Error> {
        let hash = trace_hash(ips);
        let id = hash & (self.geo.n_buckets - 1);
        let bucket = self.bucket(id).ok_or(Error::Fault)?;
        let nr = ips.len() as u32;
        let reuse = flags & BPF_F_REUSE_STACKID != 0;
        if flags & BPF_F_FAST_STACK_CMP != 0 {
            let seen = self.observe(bucket, |e| (e.hash_nr().0 == hash, seq_of(&e)));
            if let Seen::Slot(b, (true, seq)) = seen {
                let version = version(b.wrapping_sub(1), seq);
                return Ok(StackRef { id, version });
            }
        }
        let (slot, new) = self.take_slot(cpu)?;
        let user = flags & BPF_F_USER_STACK != 0;
        self.write(new, hash, nr, |e| write_build_ids(e, ips, user, resolver));
        let ours = StackRef {
            id,
            version: version(slot, seq_of(&new)),
        };
        let frame_words = nr as usize * (size_of::<StackBuildId>() / WORD);
        loop {
            let seen = self.observe(bucket, |e| {
                let same = e.hash_nr() == (hash, nr) && e.eq_data(&new, frame_words);
                (if same { Cmp::Same } else { Cmp::Other }, seq_of(&e))
            });
            let (seen, theirs) = split(seen);
            let expect = match decide(seen, reuse) {
                Ok(expect) => expect,
                Err(hit_or_exist) => {
                    self.freelist.push(cpu, slot);
                    return hit_or_exist.map(|_| StackRef {
                        id,
                        version: theirs,
                    });
                }
            };
            if self.publish(cpu, bucket, expect, slot, reuse) {
                return Ok(ours);
            }
        }
    }
}

/// Stores `ips` as build-id frames into a slot's data words.
fn write_build_ids<R: VmaResolver + ?Sized>(
    e: Elem<'_>,
    ips: &[u64],
    user: bool,
    resolver: Option<&R>,
) {
    let words = size_of::<StackBuildId>() / WORD;
    resolve_frames(ips, user, resolver, |i, frame| {
        e.store_bytes(i * words, zerocopy::IntoBytes::as_bytes(frame));
    });
}
