//! A throwaway model of the kernel map (non-build-id only), used to check
//! the harness before `StackMap` lands.

use super::Errno;
use kstackmap::uapi::*;

pub struct Model {
    vs: usize,
    max_stack: usize,
    buckets: Vec<Option<(u32, Vec<u64>)>>,
    free: usize,
    pub rdonly: bool,
    pub wronly: bool,
}

impl Model {
    pub fn new(max_entries: u32, value_size: u32, max_stack: u32) -> Model {
        Model {
            vs: value_size as usize,
            max_stack: max_stack as usize,
            buckets: vec![None; max_entries.next_power_of_two() as usize],
            free: max_entries as usize,
            rdonly: false,
            wronly: false,
        }
    }

    pub fn get_stackid(&mut self, chain: &[u64], flags: u64) -> Result<u32, Errno> {
        if flags & !STACKID_FLAG_MASK != 0 {
            return Err(22);
        }
        let skip = (flags & BPF_F_SKIP_FIELD_MASK) as usize;
        let depth = (self.vs / 8 + skip).min(self.max_stack);
        let trace = &chain[..chain.len().min(depth)];
        if trace.len() <= skip {
            return Err(14);
        }
        let ips = &trace[skip..];
        let hash = kstackmap::trace_hash(ips);
        let id = hash & (self.buckets.len() as u32 - 1);
        let b = &self.buckets[id as usize];
        let hm = matches!(b, Some((h, _)) if *h == hash);
        if hm && flags & BPF_F_FAST_STACK_CMP != 0 {
            return Ok(id);
        }
        if hm && b.as_ref().unwrap().1 == ips {
            return Ok(id);
        }
        if b.is_some() && flags & BPF_F_REUSE_STACKID == 0 {
            return Err(17);
        }
        if self.free == 0 {
            return Err(12);
        }
        self.free -= 1;
        if self.buckets[id as usize]
            .replace((hash, ips.to_vec()))
            .is_some()
        {
            self.free += 1;
        }
        Ok(id)
    }

    pub fn lookup(&self, id: u32, v: &mut [u8]) -> Result<(), Errno> {
        if self.wronly {
            return Err(1);
        }
        let (_, ips) = self
            .buckets
            .get(id as usize)
            .and_then(|b| b.as_ref())
            .ok_or(2)?;
        v.fill(0);
        for (i, ip) in ips.iter().enumerate() {
            v[8 * i..8 * i + 8].copy_from_slice(&ip.to_ne_bytes());
        }
        Ok(())
    }

    pub fn delete(&mut self, id: u32) -> Result<(), Errno> {
        if self.rdonly {
            return Err(1);
        }
        let b = self.buckets.get_mut(id as usize).ok_or(7)?;
        b.take().ok_or(2)?;
        self.free += 1;
        Ok(())
    }

    pub fn get_next_key(&self, key: Option<u32>) -> Result<u32, Errno> {
        if self.wronly {
            return Err(1);
        }
        let mut id = match key {
            Some(k) if (k as usize) < self.buckets.len() && self.buckets[k as usize].is_some() => {
                k as usize + 1
            }
            _ => 0,
        };
        while id < self.buckets.len() && self.buckets[id].is_none() {
            id += 1;
        }
        if id >= self.buckets.len() {
            Err(2)
        } else {
            Ok(id as u32)
        }
    }
}
