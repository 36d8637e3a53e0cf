//! Unit tests of `StackMap`'s sequential semantics (Miri runs these too).

use crate::uapi::*;
use crate::{Config, Error, MapAttr, StackMap, StackMapIn, Vma, VmaResolver};
use core::mem::MaybeUninit;

fn attr(max_entries: u32, value_size: u32, map_flags: u32) -> MapAttr {
    MapAttr {
        max_entries,
        key_size: 4,
        value_size,
        map_flags,
        numa_node: 0,
    }
}

fn lookup_u64(m: &StackMap, id: u32) -> Result<[u64; 4], Error> {
    let mut v = [0xaau8; 32];
    m.lookup(id, &mut v)?;
    let mut out = [0u64; 4];
    for (o, c) in out.iter_mut().zip(v.chunks_exact(8)) {
        *o = u64::from_ne_bytes(c.try_into().unwrap());
    }
    Ok(out)
}

#[test]
fn same_stack_same_id_and_lookup_zeroes_tail() {
    let m = StackMap::new(&attr(8, 32, 0)).unwrap();
    let id = m.get_stackid(0, &[1, 2, 3], 0).unwrap();
    assert_eq!(id, crate::trace_hash(&[1, 2, 3]) & 7);
    assert_eq!(m.get_stackid(1, &[1, 2, 3], 0), Ok(id));
    assert_eq!(lookup_u64(&m, id), Ok([1, 2, 3, 0]));
    assert_eq!(m.lookup(m.n_buckets(), &mut [0; 32]), Err(Error::NoEnt));
    assert_eq!(m.lookup(id, &mut [0; 31]), Err(Error::Inval));
}

#[test]
fn collision_exist_and_reuse() {
    // One bucket: every stack collides.
    let m = StackMap::new(&attr(2, 32, 0)).unwrap();
    assert_eq!(m.n_buckets(), 2);
    let m = StackMap::new(&attr(1, 32, 0)).unwrap();
    assert_eq!(m.get_stackid(0, &[1], 0), Ok(0));
    assert_eq!(m.get_stackid(0, &[2], 0), Err(Error::Exist));
    // max_entries = 1: the only element is in the bucket, so REUSE finds
    // the freelist empty, exactly like the kernel (pop before xchg).
    assert_eq!(
        m.get_stackid(0, &[2], BPF_F_REUSE_STACKID),
        Err(Error::NoMem)
    );
    assert_eq!(lookup_u64(&m, 0), Ok([1, 0, 0, 0]));
}

#[test]
fn reuse_replaces_and_recycles() {
    let m = StackMap::with_config(
        &attr(2, 32, 0),
        Config {
            nr_cpus: 3,
            max_stack: 127,
        },
    );
    let mut m = m.unwrap();
    // Find two stacks in the same bucket.
    let a = [7u64];
    let ida = m.get_stackid(0, &a, 0).unwrap();
    let b = (8u64..)
        .map(|x| [x])
        .find(|s| crate::trace_hash(s) & 1 == ida)
        .unwrap();
    assert_eq!(m.get_stackid(1, &b, 0), Err(Error::Exist));
    for round in 0..10 {
        let s = if round % 2 == 0 { b } else { a };
        assert_eq!(m.get_stackid(round, &s, BPF_F_REUSE_STACKID), Ok(ida));
        assert_eq!(lookup_u64(&m, ida), Ok([s[0], 0, 0, 0]));
    }
    assert_eq!(m.audit(), Ok((1, 1)));
}

#[test]
fn full_map_is_nomem() {
    // Three elements, four buckets: once three are used, a stack for the
    // fourth bucket finds the freelist empty.
    let mut m = StackMap::new(&attr(3, 16, 0)).unwrap();
    let mut stored = 0;
    for x in 0u64.. {
        match m.get_stackid(0, &[x, x], 0) {
            Ok(_) => stored += 1,
            Err(Error::Exist) => {}
            Err(Error::NoMem) => break,
            Err(e) => panic!("{e:?}"),
        }
        assert!(x < 10_000);
    }
    assert_eq!(stored, 3);
    assert_eq!(m.audit(), Ok((3, 0)));
    // Delete everything through get_next_key, then the map is empty again.
    while let Ok(id) = m.get_next_key(None) {
        m.delete(id).unwrap();
    }
    assert_eq!(m.audit(), Ok((0, 3)));
}

#[test]
fn fast_cmp_is_hash_only() {
    let m = StackMap::new(&attr(1, 32, 0)).unwrap();
    m.get_stackid(0, &[1, 2], 0).unwrap();
    // One bucket: a different stack with the same hash can't be built
    // cheaply, but FAST_CMP on the same stack hits, and a different stack
    // (different hash) is EEXIST as usual.
    assert_eq!(m.get_stackid(0, &[1, 2], BPF_F_FAST_STACK_CMP), Ok(0));
    assert_eq!(
        m.get_stackid(0, &[3], BPF_F_FAST_STACK_CMP),
        Err(Error::Exist)
    );
}

#[test]
fn skip_truncation_and_flags() {
    let m = StackMap::new(&attr(64, 16, 0)).unwrap();
    assert_eq!(m.get_stackid(0, &[1, 2], 2), Err(Error::Fault));
    assert_eq!(m.get_stackid(0, &[], 0), Err(Error::Fault));
    assert_eq!(m.get_stackid(0, &[1], 1 << 12), Err(Error::Inval));
    assert_eq!(
        m.get_stackid(0, &[1], BPF_F_USER_BUILD_ID),
        Err(Error::Inval)
    );
    // value_size 16: two frames after the skip; the rest of the chain is
    // never looked at (the kernel's walk stops at value/8 + skip).
    let id = m.get_stackid(0, &[9, 1, 2, 3, 4], 1).unwrap();
    assert_eq!(m.get_stackid(0, &[9, 1, 2, 5, 6], 1), Ok(id));
    assert_eq!(id, crate::trace_hash(&[1, 2]) & 63);
    let mut v = [0u8; 16];
    m.lookup(id, &mut v).unwrap();
    assert_eq!(u64::from_ne_bytes(v[8..].try_into().unwrap()), 2);
}

#[test]
fn max_stack_bounds_the_walk() {
    let cfg = Config {
        nr_cpus: 1,
        max_stack: 3,
    };
    let m = StackMap::with_config(&attr(16, 24, 0), cfg).unwrap();
    // depth = min(3 + 2, 3) = 3 words; skip 2 leaves one frame.
    let id = m.get_stackid(0, &[1, 2, 3, 4, 5], 2).unwrap();
    assert_eq!(id, crate::trace_hash(&[3]) & 15);
    // skip >= max_stack: the walk is all skip.
    assert_eq!(m.get_stackid(0, &[1, 2, 3, 4, 5], 3), Err(Error::Fault));
}

#[test]
fn syscall_side_errors() {
    let m = StackMap::new(&attr(4, 8, 0)).unwrap();
    assert_eq!(m.delete(4), Err(Error::TooBig));
    assert_eq!(m.delete(0), Err(Error::NoEnt));
    assert_eq!(m.update(0, &[0; 8], 0), Err(Error::Inval));
    assert_eq!(m.get_next_key(None), Err(Error::NoEnt));
    assert_eq!(m.lookup_and_delete(9, &mut [0; 8]), Err(Error::NoEnt));
    let id = m.get_stackid(0, &[5], 0).unwrap();
    assert_eq!(m.get_next_key(None), Ok(id));
    assert_eq!(m.get_next_key(Some(id)), Err(Error::NoEnt));
    // Out of range or empty key: restart from 0.
    assert_eq!(m.get_next_key(Some(1000)), Ok(id));
    let mut v = [0xffu8; 8];
    assert_eq!(m.lookup_and_delete(id, &mut v), Ok(()));
    assert_eq!(v, 5u64.to_ne_bytes());
    assert_eq!(m.lookup(id, &mut v), Err(Error::NoEnt));
}

#[test]
fn rdonly_wronly() {
    let ro = StackMap::new(&attr(4, 8, BPF_F_RDONLY)).unwrap();
    let id = ro.get_stackid(0, &[5], 0).unwrap();
    assert_eq!(ro.lookup(id, &mut [0; 8]), Ok(()));
    assert_eq!(ro.delete(id), Err(Error::Perm));
    assert_eq!(ro.delete(99), Err(Error::Perm));
    assert_eq!(ro.update(id, &[0; 8], 0), Err(Error::Perm));
    assert_eq!(ro.lookup_and_delete(id, &mut [0; 8]), Err(Error::Perm));
    let wo = StackMap::new(&attr(4, 8, BPF_F_WRONLY)).unwrap();
    let id = wo.get_stackid(0, &[5], 0).unwrap();
    assert_eq!(wo.lookup(id, &mut [0; 8]), Err(Error::Perm));
    assert_eq!(wo.get_next_key(None), Err(Error::Perm));
    assert_eq!(wo.lookup_and_delete(id, &mut [0; 8]), Err(Error::Perm));
    assert_eq!(wo.update(id, &[0; 8], 0), Err(Error::Inval));
    assert_eq!(wo.delete(id), Ok(()));
}

struct OneLib;
impl VmaResolver for OneLib {
    fn find_vma(&self, ip: u64) -> Option<Vma> {
        match ip {
            0..0x2000 => Some(Vma {
                start: 0x1000,
                end: 0x2000,
                file_offset: 0x400,
                build_id: Some([7; 20]),
            }),
            0x2000..0x3000 => Some(Vma {
                start: 0x2000,
                end: 0x3000,
                file_offset: 0,
                build_id: None,
            }),
            _ => None,
        }
    }
}

#[test]
fn build_id_map() {
    let m = StackMap::new(&attr(2, 64, BPF_F_STACK_BUILD_ID)).unwrap();
    let chain = [0x1100, 0x500, 0x2500];
    let f = BPF_F_USER_STACK;
    // value 64 = two frames.
    let id = m.get_stackid_resolved(0, &chain, f, &OneLib).unwrap();
    let mut out = [StackBuildId::default(); 2];
    let frames = m.lookup_build_ids(id, &mut out).unwrap();
    assert_eq!(frames[0], StackBuildId::valid([7; 20], 0x500));
    // 0x500 is below the mapping: find_vma still gives it, the offset wraps.
    let wrapped = 0x400u64.wrapping_add(0x500).wrapping_sub(0x1000);
    assert_eq!(frames[1], StackBuildId::valid([7; 20], wrapped));
    // Kernel stacks (no USER flag), or no resolver: all IP.
    let kid = crate::trace_hash(&[0x1100]) & 1;
    match m.get_stackid_resolved(0, &[0x1100], 0, &OneLib) {
        Ok(got) => {
            assert_eq!(got, kid);
            let frames = m.lookup_build_ids(kid, &mut out).unwrap();
            assert_eq!(frames, &[StackBuildId::from_ip(0x1100)]);
            // Both elements are used now, and build-id maps pop one before
            // comparing: ENOMEM even for this known stack, as the kernel.
            assert_eq!(m.get_stackid(0, &[0x1100], f), Err(Error::NoMem));
            m.delete(id).unwrap();
            // No resolver: IP frames, equal to the stored ones: a hit.
            assert_eq!(m.get_stackid(0, &[0x1100], f), Ok(kid));
        }
        // Same bucket as the user stack: a different value there.
        Err(e) => assert_eq!((e, kid), (Error::Exist, id)),
    }
}

#[test]
fn build_id_pop_before_compare() {
    // Two entries, both used: even a known stack gets ENOMEM, as in the kernel.
    let m = StackMap::new(&attr(2, 32, BPF_F_STACK_BUILD_ID)).unwrap();
    let mut ids = [None, None];
    for x in 1u64.. {
        let id = m.get_stackid(0, &[x], 0);
        if let Ok(id) = id {
            ids[id as usize] = Some(x);
        }
        if ids.iter().all(Option::is_some) {
            break;
        }
    }
    let known = ids[0].unwrap();
    assert_eq!(m.get_stackid(0, &[known], 0), Err(Error::NoMem));
    // FAST_CMP returns before the pop.
    assert_eq!(m.get_stackid(0, &[known], BPF_F_FAST_STACK_CMP), Ok(0));
    m.delete(1).unwrap();
    assert_eq!(m.get_stackid(0, &[known], 0), Ok(0));
}

#[test]
fn pe_variants() {
    let m = StackMap::new(&attr(64, 64, 0)).unwrap();
    let chain = [PERF_CONTEXT_KERNEL, 0xa, 0xb, PERF_CONTEXT_USER, 0x1, 0x2];
    let kid = m.get_stackid_pe(0, &chain, 0).unwrap();
    assert_eq!(
        kid,
        crate::trace_hash(&[PERF_CONTEXT_KERNEL, 0xa, 0xb]) & 63
    );
    let uid = m.get_stackid_pe(0, &chain, BPF_F_USER_STACK).unwrap();
    assert_eq!(uid, crate::trace_hash(&[PERF_CONTEXT_USER, 1, 2]) & 63);
    let uid1 = m.get_stackid_pe(0, &chain, BPF_F_USER_STACK | 1).unwrap();
    assert_eq!(uid1, crate::trace_hash(&[1, 2]) & 63);
    assert_eq!(
        m.get_stackid_pe(0, &chain, BPF_F_USER_STACK | 253),
        Err(Error::Fault)
    );
    assert_eq!(
        m.get_stackid_pe(0, &chain, BPF_F_USER_STACK | 3),
        Err(Error::Fault)
    );
    assert_eq!(m.get_stackid_pe(0, &chain, 1 << 20), Err(Error::Inval));
}

/// A perf chain holds up to `max_stack` ips plus its context markers, so
/// it can be longer than `max_stack`. The kernel's `_pe` depth fix checks
/// EFAULT on the whole part and then takes `min(nr - skip, max_depth -
/// skip)` words in u32: a skip of `max_depth` stores the empty stack, a
/// larger one the words past `max_depth`. Read off Linux 6.18.44 by
/// `tests/kernel_diff_pe.rs` (ids 0xdeadbeef & mask, the hash of no
/// words); the map used to cut the part first and say EFAULT.
#[test]
fn pe_skip_at_max_stack() {
    let cfg = Config {
        nr_cpus: 1,
        max_stack: 4,
    };
    let m = StackMap::with_config(&attr(16, 32, 0), cfg).unwrap();
    let u = BPF_F_USER_STACK;
    // User-mode sample: the marker and max_stack ips, 5 words.
    let user = [PERF_CONTEXT_USER, 1, 2, 3, 4];
    assert_eq!(
        m.get_stackid_pe(0, &user, u | 3),
        Ok(crate::trace_hash(&[3]) & 15)
    );
    let empty = 0xdead_beef & 15;
    assert_eq!(crate::trace_hash(&[]), 0xdead_beef);
    assert_eq!(m.get_stackid_pe(0, &user, u | 4), Ok(empty));
    assert_eq!(lookup_u64(&m, empty), Ok([0; 4]));
    assert_eq!(m.get_stackid_pe(0, &user, u | 5), Err(Error::Fault));
    // Kernel and user parts: 2 markers + 4 ips. The user skip grows by 2.
    let both = [PERF_CONTEXT_KERNEL, 9, PERF_CONTEXT_USER, 1, 2, 3];
    let last = crate::trace_hash(&[3]) & 15;
    assert_eq!(m.get_stackid_pe(0, &both, u | 2), Ok(empty));
    assert_eq!(m.get_stackid_pe(0, &both, u | 3), Ok(last));
    assert_eq!(lookup_u64(&m, last), Ok([3, 0, 0, 0]));
    assert_eq!(m.get_stackid_pe(0, &both, u | 4), Err(Error::Fault));
    // Below max_depth nothing changes: the part cut to max_depth words.
    assert_eq!(
        m.get_stackid_pe(0, &both, u),
        Ok(crate::trace_hash(&[PERF_CONTEXT_USER, 1]) & 15)
    );
    // The kernel part alone (no PERF_CONTEXT_USER): the same rule.
    let kernel = [PERF_CONTEXT_KERNEL, 9, 8, 7, 6];
    assert_eq!(m.get_stackid_pe(0, &kernel, 4), Ok(empty));
    assert_eq!(m.get_stackid_pe(0, &kernel, 5), Err(Error::Fault));
}

#[test]
fn caller_memory() {
    let a = attr(16, 64, 0);
    let need = StackMapIn::storage_size(&a, Config::default()).unwrap();
    let mut mem = [MaybeUninit::<u8>::uninit(); 4096];
    assert!(need <= mem.len(), "{need}");
    assert_eq!(
        StackMapIn::new_in(&a, Config::default(), &mut mem[..need - 200]).err(),
        Some(Error::NoMem)
    );
    // Any alignment works: start one byte in.
    let m = StackMapIn::new_in(&a, Config::default(), &mut mem[1..need + 1]).unwrap();
    let id = m.get_stackid(0, &[1, 2, 3], 0).unwrap();
    assert_eq!(m.get_stackid(0, &[1, 2, 3], 0), Ok(id));
    assert!(m.mem_usage() >= 16 * (12 + 64));
}

#[test]
fn creation_errors() {
    assert_eq!(StackMap::new(&attr(0, 8, 0)).err(), Some(Error::Inval));
    assert_eq!(
        StackMap::new(&attr(u32::MAX, 8, 0)).err(),
        Some(Error::TooBig)
    );
    assert_eq!(
        StackMap::new(&attr(1, 8, BPF_F_NO_PREALLOC)).err(),
        Some(Error::Inval)
    );
    assert_eq!(
        StackMap::new(&attr(1, 40, BPF_F_STACK_BUILD_ID)).err(),
        Some(Error::Inval)
    );
}

#[test]
fn typed_lookups() {
    let m = StackMap::new(&attr(8, 32, 0)).unwrap();
    let id = m.get_stackid(0, &[1, 2, 3], 0).unwrap();
    let mut ips = [9u64; 4];
    assert_eq!(m.lookup_ips(id, &mut ips), Ok(&[1u64, 2, 3][..]));
    assert_eq!(ips[3], 0);
    assert_eq!(m.lookup_ips(id, &mut [0u64; 3]), Err(Error::Inval));
    let mut frames = [StackBuildId::default(); 1];
    assert_eq!(m.lookup_build_ids(id, &mut frames), Err(Error::Inval));

    let b = StackMap::new(&attr(8, 64, BPF_F_STACK_BUILD_ID)).unwrap();
    let id = b.get_stackid(0, &[0x10], 0).unwrap();
    let mut frames = [StackBuildId::default(); 2];
    let got = b.lookup_build_ids(id, &mut frames).unwrap();
    assert_eq!(got, &[StackBuildId::from_ip(0x10)]);
    assert_eq!(b.lookup_ips(id, &mut [0u64; 8]), Err(Error::Inval));
}

/// `delete` and `lookup_and_delete` give each slot back to the shard that
/// `populate` put it on, not all to shard 0 (issue 16, item 3): after a
/// full map is emptied from the syscall side, every CPU finds its own
/// share on its own stack without stealing.
#[test]
fn syscall_frees_spread_over_the_shards() {
    let cfg = Config {
        nr_cpus: 4,
        ..Config::default()
    };
    let m = StackMap::with_config(&attr(8, 8, 0), cfg).unwrap();
    // Fill it from CPU 0 (which steals from the others once its own is
    // empty): 8 one-frame stacks with 8 distinct ids.
    let mut ids = std::vec::Vec::new();
    for x in 1u64.. {
        let s = [x * 0x10];
        let id = crate::trace_hash(&s) & 7;
        if !ids.contains(&id) {
            assert_eq!(m.get_stackid(0, &s, 0), Ok(id));
            ids.push(id);
            if ids.len() == 8 {
                break;
            }
        }
    }
    let mut v = [0u8; 8];
    for (k, &id) in ids.iter().enumerate() {
        if k % 2 == 0 {
            m.delete(id).unwrap();
        } else {
            m.lookup_and_delete(id, &mut v).unwrap();
        }
    }
    let fl = m.freelist;
    for cpu in 0..4 {
        for _ in 0..2 {
            let slot = fl.pop(cpu).unwrap();
            assert_eq!(fl.home(slot), cpu, "CPU {cpu} got slot {slot}");
        }
    }
    assert_eq!(fl.pop(0), None);
}
