//! A sequential reference model of the stack trace map (feature `model`).
//!
//! Plain Rust over `Vec`s, written from the kernel's `stackmap.c` with no
//! atomics, no freelist and no concurrency: the statement of what the map
//! must return, call for call, when calls do not overlap. Property tests
//! and the `ops` fuzz target drive the same operations through both and
//! require equal results and equal dumps.
//!
//! Versions ([`StackRef`]) are a counter: every stack stored gets the next
//! number, so a reference is current exactly while its bucket still holds
//! that store. The map's version numbers differ (slot and sequence number):
//! compare the two through what they answer, not their bits.
//!
//! It reuses only pieces checked against the kernel on their own: the
//! creation checks (`vectors/attr_grid.tsv`), `trace_hash`
//! (`vectors/jhash2.tsv`) and the build-id frame walk.

use alloc::vec;
use alloc::vec::Vec;

use crate::build_id::{resolve_frames, VmaResolver};
use crate::callchain::count_kernel_ips;
use crate::hash::trace_hash;
use crate::map::{Config, Geometry, MapAttr, StackRef};
use crate::uapi::{
    BPF_F_FAST_STACK_CMP, BPF_F_RDONLY, BPF_F_REUSE_STACKID, BPF_F_SKIP_FIELD_MASK,
    BPF_F_USER_STACK, BPF_F_WRONLY, STACKID_FLAG_MASK,
};
use crate::Error;

/// One stored stack: its hash, frame count and value bytes (`value_size`
/// long, zero past the frames).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Bucket {
    hash: u32,
    nr: u32,
    value: Vec<u8>,
}

/// The reference model: see the module docs.
#[derive(Clone, Debug)]
pub struct Model {
    geo: Geometry,
    buckets: Vec<Option<Bucket>>,
    /// Per bucket, the version of the stack stored there last.
    versions: Vec<u64>,
    /// The version the next stored stack gets.
    next_version: u64,
    /// Elements not in a bucket (the kernel's freelist, as a count).
    free: u32,
}

impl Model {
    /// A model map.
    ///
    /// # Errors
    ///
    /// The kernel's creation errors, as [`StackMap::with_config`](crate::StackMap::with_config)
    /// (without its memory limits).
    pub fn new(attr: &MapAttr, cfg: Config) -> Result<Model, Error> {
        let geo = Geometry::new(attr, &cfg)?;
        Ok(Model {
            geo,
            buckets: vec![None; geo.n_buckets as usize],
            versions: vec![0; geo.n_buckets as usize],
            next_version: 1,
            free: attr.max_entries,
        })
    }

    /// `bpf_get_stackid` on the whole chain.
    ///
    /// # Errors
    ///
    /// As [`StackMap::get_stackid`](crate::StackMap::get_stackid).
    pub fn get_stackid(&mut self, chain: &[u64], flags: u64) -> Result<u32, Error> {
        self.get_stackid_resolved(chain, flags, None::<&dyn VmaResolver>)
    }

    /// `bpf_get_stackid` on a build-id map with a resolver.
    ///
    /// # Errors
    ///
    /// As [`StackMap::get_stackid_resolved`](crate::StackMap::get_stackid_resolved).
    pub fn get_stackid_resolved<R: VmaResolver + ?Sized>(
        &mut self,
        chain: &[u64],
        flags: u64,
        resolver: Option<&R>,
    ) -> Result<u32, Error> {
        if flags & !STACKID_FLAG_MASK != 0 {
            return Err(Error::Inval);
        }
        self.stackid(chain, flags, resolver)
    }

    /// `bpf_get_stackid_pe` on a perf callchain.
    ///
    /// # Errors
    ///
    /// As [`StackMap::get_stackid_pe`](crate::StackMap::get_stackid_pe).
    pub fn get_stackid_pe<R: VmaResolver + ?Sized>(
        &mut self,
        chain: &[u64],
        flags: u64,
        resolver: Option<&R>,
    ) -> Result<u32, Error> {
        if flags & !STACKID_FLAG_MASK != 0 {
            return Err(Error::Inval);
        }
        let nr_kernel = count_kernel_ips(chain);
        let (part, flags) = if flags & BPF_F_USER_STACK == 0 {
            (&chain[..nr_kernel], flags)
        } else {
            let skip = (flags & BPF_F_SKIP_FIELD_MASK) + nr_kernel as u64;
            if skip > BPF_F_SKIP_FIELD_MASK {
                return Err(Error::Fault);
            }
            (chain, (flags & !BPF_F_SKIP_FIELD_MASK) | skip)
        };
        // __bpf_get_stackid(.., max_depth) as Linux 6.18.44 has it: EFAULT
        // on the whole part, then min(nr - skip, max_depth - skip) words,
        // the difference in u32 (it wraps when skip > max_depth).
        let skip = (flags & BPF_F_SKIP_FIELD_MASK) as u32;
        let nr = part.len() as u32;
        if nr <= skip {
            return Err(Error::Fault);
        }
        let max_depth = self
            .geo
            .value_frames
            .saturating_add(skip)
            .min(self.geo.max_stack);
        let n = (nr - skip).min(max_depth.wrapping_sub(skip));
        self.insert(&part[skip as usize..][..n as usize], flags, resolver)
    }

    /// `__bpf_get_stackid` after the walk (which cuts the chain).
    fn stackid<R: VmaResolver + ?Sized>(
        &mut self,
        trace: &[u64],
        flags: u64,
        resolver: Option<&R>,
    ) -> Result<u32, Error> {
        let skip = (flags & BPF_F_SKIP_FIELD_MASK) as usize;
        // The walk takes min(frames + skip, max_stack) words.
        let max_depth = (self.geo.value_frames as usize + skip).min(self.geo.max_stack as usize);
        let trace = &trace[..trace.len().min(max_depth)];
        if trace.len() <= skip {
            return Err(Error::Fault);
        }
        self.insert(&trace[skip..], flags, resolver)
    }

    /// `__bpf_get_stackid` from the hash on, `ips` being the stack.
    fn insert<R: VmaResolver + ?Sized>(
        &mut self,
        ips: &[u64],
        flags: u64,
        resolver: Option<&R>,
    ) -> Result<u32, Error> {
        let nr = ips.len();
        let hash = trace_hash(ips);
        let id = hash & (self.geo.n_buckets - 1);
        let value = self.value_of(ips, flags & BPF_F_USER_STACK != 0, resolver);
        let current = &self.buckets[id as usize];
        let hash_matches = current.as_ref().is_some_and(|b| b.hash == hash);
        if hash_matches && flags & BPF_F_FAST_STACK_CMP != 0 {
            return Ok(id);
        }
        // Build-id maps take an element before comparing (ENOMEM even on a
        // hit when none is free), then give it back.
        if self.geo.build_id() && self.free == 0 {
            return Err(Error::NoMem);
        }
        let new = Bucket {
            hash,
            nr: nr as u32,
            value,
        };
        if hash_matches && current.as_ref() == Some(&new) {
            return Ok(id);
        }
        if current.is_some() && flags & BPF_F_REUSE_STACKID == 0 {
            return Err(Error::Exist);
        }
        if self.free == 0 {
            return Err(Error::NoMem);
        }
        if self.buckets[id as usize].replace(new).is_none() {
            self.free -= 1;
        }
        self.versions[id as usize] = self.next_version;
        self.next_version += 1;
        Ok(id)
    }

    /// `get_stackid` with the version of what bucket `id` holds afterwards:
    /// the stack it hit, or the one it stored.
    ///
    /// # Errors
    ///
    /// As [`Model::get_stackid`].
    pub fn get_stackid_versioned(&mut self, chain: &[u64], flags: u64) -> Result<StackRef, Error> {
        let id = self.get_stackid(chain, flags)?;
        Ok(self.stack_ref(id))
    }

    fn stack_ref(&self, id: u32) -> StackRef {
        StackRef {
            id,
            version: self.versions[id as usize],
        }
    }

    /// `lookup_versioned`: the value of the stack `r` names.
    ///
    /// # Errors
    ///
    /// `Stale` if bucket `r.id` is empty or was stored to since `r` was
    /// taken; `NoEnt` for an id out of range; `Perm` on WRONLY maps.
    pub fn lookup_versioned(&self, r: StackRef) -> Result<Vec<u8>, Error> {
        self.may(true, false)?;
        let b = self.buckets.get(r.id as usize).ok_or(Error::NoEnt)?;
        match b {
            Some(b) if self.versions[r.id as usize] == r.version => Ok(b.value.clone()),
            _ => Err(Error::Stale),
        }
    }

    fn value_of<R: VmaResolver + ?Sized>(
        &self,
        ips: &[u64],
        user: bool,
        resolver: Option<&R>,
    ) -> Vec<u8> {
        let mut value = Vec::with_capacity(self.geo.attr.value_size as usize);
        if self.geo.build_id() {
            resolve_frames(ips, user, resolver, |_, f| {
                value.extend_from_slice(zerocopy::IntoBytes::as_bytes(f))
            });
        } else {
            ips.iter()
                .for_each(|ip| value.extend_from_slice(&ip.to_ne_bytes()));
        }
        value.resize(self.geo.attr.value_size as usize, 0);
        value
    }

    fn may(&self, read: bool, write: bool) -> Result<(), Error> {
        let f = self.geo.attr.map_flags;
        if read && f & BPF_F_WRONLY != 0 || write && f & BPF_F_RDONLY != 0 {
            return Err(Error::Perm);
        }
        Ok(())
    }

    /// `BPF_MAP_LOOKUP_ELEM`: the value of stack `id`.
    ///
    /// # Errors
    ///
    /// As [`StackMap::lookup`](crate::StackMap::lookup): `NoEnt`, `Perm`.
    pub fn lookup(&self, id: u32) -> Result<Vec<u8>, Error> {
        self.may(true, false)?;
        let b = self.buckets.get(id as usize).and_then(Option::as_ref);
        b.map(|b| b.value.clone()).ok_or(Error::NoEnt)
    }

    /// `BPF_MAP_LOOKUP_AND_DELETE_ELEM`.
    ///
    /// # Errors
    ///
    /// As [`StackMap::lookup_and_delete`](crate::StackMap::lookup_and_delete):
    /// `NoEnt`, `Perm`.
    pub fn lookup_and_delete(&mut self, id: u32) -> Result<Vec<u8>, Error> {
        self.may(true, true)?;
        let b = self.buckets.get_mut(id as usize).and_then(Option::take);
        let b = b.ok_or(Error::NoEnt)?;
        self.free += 1;
        Ok(b.value)
    }

    /// `BPF_MAP_DELETE_ELEM`.
    ///
    /// # Errors
    ///
    /// As [`StackMap::delete`](crate::StackMap::delete): `TooBig`, `NoEnt`,
    /// `Perm`.
    pub fn delete(&mut self, id: u32) -> Result<(), Error> {
        self.may(false, true)?;
        let slot = self.buckets.get_mut(id as usize).ok_or(Error::TooBig)?;
        slot.take().ok_or(Error::NoEnt)?;
        self.free += 1;
        Ok(())
    }

    /// `BPF_MAP_GET_NEXT_KEY`.
    ///
    /// # Errors
    ///
    /// As [`StackMap::get_next_key`](crate::StackMap::get_next_key): `NoEnt`,
    /// `Perm`.
    pub fn get_next_key(&self, key: Option<u32>) -> Result<u32, Error> {
        self.may(true, false)?;
        let occupied = |id: u32| matches!(self.buckets.get(id as usize), Some(Some(_)));
        let start = match key {
            Some(k) if occupied(k) => k + 1,
            _ => 0,
        };
        (start..self.geo.n_buckets)
            .find(|&id| occupied(id))
            .ok_or(Error::NoEnt)
    }

    /// `BPF_MAP_UPDATE_ELEM`: always refused.
    ///
    /// # Errors
    ///
    /// Always: `Perm` on RDONLY maps, else `Inval`.
    pub fn update(&mut self) -> Result<(), Error> {
        self.may(false, true)?;
        Err(Error::Inval)
    }

    /// Every stored `(id, value)`, in id order.
    pub fn dump(&self) -> Vec<(u32, Vec<u8>)> {
        let stored = self.buckets.iter().enumerate();
        stored
            .filter_map(|(id, b)| Some((id as u32, b.as_ref()?.value.clone())))
            .collect()
    }

    /// Elements not holding a stack.
    pub fn free(&self) -> u32 {
        self.free
    }
}
