//! TEMPORARY stand-in for `kstackmap::StackMap` until it lands on main:
//! the same signatures and the kernel's observable behaviour (ids from
//! `trace_hash`, EEXIST on a taken bucket, ENOMEM when full, the `_pe`
//! marker handling), behind a mutex. Removed once main has the real map.
#![allow(dead_code, missing_docs)]

use std::sync::Mutex;

use kstackmap::uapi::{
    BPF_F_FAST_STACK_CMP, BPF_F_REUSE_STACKID, BPF_F_SKIP_FIELD_MASK, BPF_F_USER_STACK,
    PERF_CONTEXT_USER,
};
use kstackmap::Error;

/// `union bpf_attr` fields of a map create.
#[derive(Clone, Copy, Debug, Default)]
pub struct MapAttr {
    pub max_entries: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub map_flags: u32,
    pub numa_node: u32,
}

/// Per-map settings the kernel takes from elsewhere.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub nr_cpus: usize,
    pub max_stack: u32,
}

struct Inner {
    buckets: Vec<Option<(u32, Vec<u64>)>>,
    used: usize,
}

/// The stand-in map.
pub struct StackMap {
    attr: MapAttr,
    inner: Mutex<Inner>,
}

impl StackMap {
    pub fn with_config(attr: &MapAttr, _cfg: Config) -> Result<StackMap, Error> {
        if attr.max_entries == 0 || attr.key_size != 4 || attr.value_size < 8 {
            return Err(Error::Inval);
        }
        let n = attr.max_entries.next_power_of_two() as usize;
        Ok(StackMap {
            attr: *attr,
            inner: Mutex::new(Inner {
                buckets: vec![None; n],
                used: 0,
            }),
        })
    }

    fn stackid(&self, chain: &[u64], flags: u64) -> Result<u32, Error> {
        let skip = (flags & BPF_F_SKIP_FIELD_MASK) as usize;
        if chain.len() <= skip {
            return Err(Error::Fault);
        }
        let max = (self.attr.value_size / 8) as usize;
        let ips = &chain[skip..chain.len().min(skip + max)];
        let hash = kstackmap::trace_hash(ips);
        let mut g = self.inner.lock().map_err(|_| Error::Inval)?;
        let id = (hash as usize) & (g.buckets.len() - 1);
        match &g.buckets[id] {
            Some((h, v)) if *h == hash && (flags & BPF_F_FAST_STACK_CMP != 0 || v == ips) => {
                return Ok(id as u32)
            }
            Some(_) if flags & BPF_F_REUSE_STACKID == 0 => return Err(Error::Exist),
            Some(_) => g.used -= 1,
            None => {}
        }
        if g.used == self.attr.max_entries as usize {
            return Err(Error::NoMem);
        }
        g.used += 1;
        g.buckets[id] = Some((hash, ips.to_vec()));
        Ok(id as u32)
    }

    pub fn get_stackid_pe(&self, _cpu: usize, chain: &[u64], flags: u64) -> Result<u32, Error> {
        let nr_kernel = chain
            .iter()
            .position(|&w| w == PERF_CONTEXT_USER)
            .unwrap_or(chain.len());
        if flags & BPF_F_USER_STACK == 0 {
            self.stackid(&chain[..nr_kernel], flags)
        } else {
            let skip = (flags & BPF_F_SKIP_FIELD_MASK) + nr_kernel as u64;
            if skip > BPF_F_SKIP_FIELD_MASK {
                return Err(Error::Fault);
            }
            self.stackid(chain, (flags & !BPF_F_SKIP_FIELD_MASK) | skip)
        }
    }

    pub fn lookup(&self, id: u32, value: &mut [u8]) -> Result<(), Error> {
        let g = self.inner.lock().map_err(|_| Error::Inval)?;
        let (_, ips) = g
            .buckets
            .get(id as usize)
            .and_then(|b| b.as_ref())
            .ok_or(Error::NoEnt)?;
        value.fill(0);
        for (dst, ip) in value.chunks_exact_mut(8).zip(ips) {
            dst.copy_from_slice(&ip.to_ne_bytes());
        }
        Ok(())
    }
}
