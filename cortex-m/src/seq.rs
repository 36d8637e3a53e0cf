//! Sequential tests: the map's observable behaviour on this instruction
//! set, with kernel-derived expectations where there are some (jhash2
//! vectors, ids) and the kernel's errno rules otherwise (DESIGN.md,
//! "Kernel semantics to match").

use core::mem::MaybeUninit;

use kstackmap::uapi::{
    BPF_F_FAST_STACK_CMP, BPF_F_NO_PREALLOC, BPF_F_RDONLY, BPF_F_REUSE_STACKID,
    BPF_F_STACK_BUILD_ID, BPF_F_USER_BUILD_ID, BPF_F_USER_STACK, BPF_F_WRONLY, PERF_CONTEXT_KERNEL,
    PERF_CONTEXT_USER,
};
use kstackmap::{
    get_stack, get_stack_pe, jhash2, trace_hash, Config, Error, MapAttr, StackBuildId, StackMapIn,
    Vma, VmaResolver, HEAD_INDEX_MAX,
};

use crate::stacks::{frames, number_of, MAX_FRAMES};
use crate::TestResult;

/// The kernel's jhash2 vectors (include/linux/jhash.h run in the kernel),
/// built into the binary: `words<TAB>initval<TAB>jhash2`, hex.
const JHASH2_TSV: &str = include_str!("../../../shared/vectors/jhash2.tsv");

/// Most words in one vector of the file.
const MAX_WORDS: usize = 256;

/// One vector: words, initval, expected hash.
struct Vector {
    words: [u32; MAX_WORDS],
    len: usize,
    initval: u32,
    hash: u32,
}

impl Vector {
    fn words(&self) -> &[u32] {
        self.words.get(..self.len).unwrap_or(&self.words)
    }
}

/// The vectors of the file, `None` for a line that does not parse.
fn vectors() -> impl Iterator<Item = Option<Vector>> {
    JHASH2_TSV
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let mut cols = line.split('\t');
            let (w, i, h) = (cols.next()?, cols.next()?, cols.next()?);
            let hex = |s: &str| u32::from_str_radix(s.trim(), 16).ok();
            let mut v = Vector {
                words: [0; MAX_WORDS],
                len: 0,
                initval: hex(i)?,
                hash: hex(h)?,
            };
            for word in w.split_ascii_whitespace() {
                *v.words.get_mut(v.len)? = hex(word)?;
                v.len += 1;
            }
            Some(v)
        })
}

fn attr(max_entries: u32, value_size: u32, map_flags: u32) -> MapAttr {
    MapAttr {
        max_entries,
        value_size,
        map_flags,
        ..MapAttr::default()
    }
}

fn cfg(nr_cpus: usize) -> Config {
    Config {
        nr_cpus,
        ..Config::default()
    }
}

/// A map over the arena, or fail the test.
macro_rules! map_in {
    ($mem:expr, $attr:expr) => {
        map_in!($mem, $attr, Config::default())
    };
    ($mem:expr, $attr:expr, $cfg:expr) => {
        ok!(StackMapIn::new_in(&$attr, $cfg, &mut *$mem))
    };
}

/// The map's own id for `ips`: its hash under the map's bucket mask.
fn id_of(m: &StackMapIn<'_>, ips: &[u64]) -> u32 {
    trace_hash(ips) & (m.n_buckets() - 1)
}

/// Two different generated stacks that share a bucket of a map with
/// `n_buckets` buckets.
fn colliding_pair(n_buckets: u32) -> Option<(u32, u32)> {
    let mut first = [None; 64];
    for k in 0..10_000u32 {
        let b = (trace_hash(frames(k).ips()) & (n_buckets - 1)) as usize;
        match first.get_mut(b)? {
            Some(j) => return Some((*j, k)),
            slot @ None => *slot = Some(k),
        }
    }
    None
}

pub fn jhash2_kernel_vectors(_: &mut [MaybeUninit<u8>]) -> TestResult {
    let mut n = 0;
    for v in vectors() {
        let Some(v) = v else {
            fail!("a line of jhash2.tsv does not parse");
        };
        check_eq!(jhash2(v.words(), v.initval), v.hash, "vector {}", n);
        n += 1;
    }
    check!(n >= 132, "only {} vectors", n);
    Ok(())
}

pub fn trace_hash_is_jhash2_of_le_words(_: &mut [MaybeUninit<u8>]) -> TestResult {
    // The kernel hashes the u64 ips as u32 words in memory order: read them
    // back from the little-endian bytes of this machine's memory.
    for k in 0..500 {
        let s = frames(k);
        let mut words = [0u32; 2 * MAX_FRAMES];
        let mut n = 0;
        for ip in s.ips() {
            for c in ip.to_ne_bytes().chunks_exact(4) {
                if let Some(w) = words.get_mut(n) {
                    *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                n += 1;
            }
        }
        check_eq!(trace_hash(s.ips()), jhash2(&words[..n], 0), "stack {}", k);
    }
    Ok(())
}

pub fn ids_equal_the_kernels(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    // Every vector with initval 0 and an even number of words is a stack
    // (words = ips as little-endian u32 pairs) whose kernel id is its
    // jhash2 under the bucket mask. Each is deleted again after the check,
    // so even a one-entry map takes them all.
    for max_entries in [1000u32, 64, 1] {
        let m = map_in!(mem, attr(max_entries, 127 * 8, 0));
        let mask = m.n_buckets() - 1;
        check_eq!(m.n_buckets(), max_entries.next_power_of_two());
        let mut n = 0;
        for v in vectors().flatten() {
            if v.initval != 0 || v.len == 0 || v.len % 2 != 0 {
                continue;
            }
            let mut ips = [0u64; MAX_WORDS / 2];
            for (ip, w) in ips.iter_mut().zip(v.words().chunks_exact(2)) {
                *ip = u64::from(w[0]) | u64::from(w[1]) << 32;
            }
            let ips = &ips[..v.len / 2];
            check_eq!(trace_hash(ips), v.hash);
            let id = ok!(m.get_stackid(0, ips, 0));
            check_eq!(id, v.hash & mask, "{} frames", ips.len());
            let mut out = [0u64; 127];
            check_eq!(ok!(m.lookup_ips(id, &mut out)), ips);
            ok!(m.delete(id));
            n += 1;
        }
        check!(n >= 30, "only {} stack vectors", n);
    }
    Ok(())
}

pub fn hit_exist_reuse(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    let Some((a, b)) = colliding_pair(4) else {
        fail!("no colliding pair");
    };
    let (a, b) = (frames(a), frames(b));
    let m = map_in!(mem, attr(4, 64, 0));
    let id = ok!(m.get_stackid(0, a.ips(), 0));
    check_eq!(id, id_of(&m, a.ips()));
    check_eq!(m.get_stackid(1, a.ips(), 0), Ok(id), "same stack, same id");
    check_eq!(m.get_stackid(0, b.ips(), 0), Err(Error::Exist));
    check_eq!(m.get_stackid(0, b.ips(), BPF_F_REUSE_STACKID), Ok(id));
    let mut out = [0u64; 8];
    check_eq!(
        ok!(m.lookup_ips(id, &mut out)),
        b.ips(),
        "REUSE replaced it"
    );
    check_eq!(m.get_stackid(0, a.ips(), 0), Err(Error::Exist));
    // REUSE takes a free slot first (a full map is ENOMEM, as in the
    // kernel), then recycles the replaced one: a two-entry map replacing
    // stacks in one bucket never runs out.
    drop(m);
    let m = map_in!(mem, attr(2, 64, 0));
    let mut replaced = 0;
    for k in 0..200u32 {
        let s = frames(k);
        if id_of(&m, s.ips()) != 0 {
            continue;
        }
        check_eq!(m.get_stackid(0, s.ips(), BPF_F_REUSE_STACKID), Ok(0));
        check_eq!(ok!(m.lookup_ips(0, &mut out)), s.ips());
        replaced += 1;
    }
    check!(replaced >= 50, "{}", replaced);
    check_eq!(m.get_next_key(Some(0)), Err(Error::NoEnt));
    Ok(())
}

pub fn fast_cmp_is_hash_only(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    // Two one-frame stacks with the same full 32-bit hash (found offline
    // by a birthday search): FAST_STACK_CMP takes one for the other.
    let a = [0xffff_8000_000d_b6c0u64];
    let b = [0xffff_8000_0010_2510u64];
    check_eq!(trace_hash(&a), 0x28f5_298a);
    check_eq!(trace_hash(&b), 0x28f5_298a);
    let m = map_in!(mem, attr(8, 64, 0));
    let id = ok!(m.get_stackid(0, &a, 0));
    check_eq!(id, 0x28f5_298a & 7);
    check_eq!(m.get_stackid(0, &b, 0), Err(Error::Exist), "full compare");
    check_eq!(m.get_stackid(0, &b, BPF_F_FAST_STACK_CMP), Ok(id));
    let mut out = [0u64; 8];
    check_eq!(ok!(m.lookup_ips(id, &mut out)), &a[..], "a is still there");
    // A different hash in the same bucket is still EEXIST with FAST_CMP.
    let mut other = None;
    for k in 0..1000 {
        let s = frames(k);
        if id_of(&m, s.ips()) == id {
            other = Some(s);
            break;
        }
    }
    let Some(other) = other else {
        fail!("no stack for bucket {}", id);
    };
    check_eq!(
        m.get_stackid(0, other.ips(), BPF_F_FAST_STACK_CMP),
        Err(Error::Exist)
    );
    Ok(())
}

/// Inserts generated stacks from `*k` on (cpu `cpu(k)`), skipping EEXIST,
/// until the map says ENOMEM; returns how many went in.
fn fill(m: &StackMapIn<'_>, k: &mut u32, cpu: impl Fn(u32) -> usize) -> Result<u32, crate::Fail> {
    let mut stored = 0;
    let limit = k.saturating_add(1_000_000);
    let depth = m.attr().value_size as usize / 8;
    loop {
        if *k >= limit {
            fail!("no ENOMEM after {} inserts", stored);
        }
        let s = frames(*k);
        match m.get_stackid(cpu(*k), s.ips(), 0) {
            Ok(id) => {
                // The map keeps value_size / 8 frames and hashes those.
                let kept = s.ips().get(..depth).unwrap_or(s.ips());
                check_eq!(id, id_of(m, kept));
                stored += 1;
            }
            Err(Error::Exist) => {}
            Err(Error::NoMem) => return Ok(stored),
            Err(e) => fail!("stack {}: {:?}", k, e),
        }
        *k += 1;
    }
}

/// Every occupied bucket holds a generated stack of that bucket; returns
/// how many are occupied.
fn check_buckets(m: &StackMapIn<'_>) -> Result<u32, crate::Fail> {
    let mut out = [0u64; MAX_FRAMES];
    let mut occupied = 0;
    for id in 0..m.n_buckets() {
        match m.lookup_ips(id, &mut out) {
            Ok(ips) => {
                check!(number_of(ips).is_some(), "bucket {}: {:x?}", id, ips);
                check_eq!(id_of(m, ips), id, "misplaced stack");
                occupied += 1;
            }
            Err(Error::NoEnt) => {}
            Err(e) => fail!("lookup {}: {:?}", id, e),
        }
    }
    Ok(occupied)
}

pub fn nomem_when_full(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    let m = map_in!(mem, attr(5, 64, 0));
    let mut k = 0;
    check_eq!(fill(&m, &mut k, |_| 0)?, 5);
    check_eq!(check_buckets(&m)?, 5);
    // A stack already in the map still hits when the map is full.
    let id = ok!(m.get_next_key(None));
    let mut out = [0u64; MAX_FRAMES];
    let mut known = [0u64; MAX_FRAMES];
    let ips = ok!(m.lookup_ips(id, &mut out));
    let known = &mut known[..ips.len()];
    known.copy_from_slice(ips);
    check_eq!(m.get_stackid(0, known, 0), Ok(id));
    // REUSE over another stack needs a free slot first: ENOMEM.
    let mut other = None;
    for j in k + 1..k + 10_000 {
        let s = frames(j);
        if id_of(&m, s.ips()) == id {
            other = Some(s);
            break;
        }
    }
    let Some(other) = other else {
        fail!("no stack for bucket {}", id);
    };
    check_eq!(
        m.get_stackid(0, other.ips(), BPF_F_REUSE_STACKID),
        Err(Error::NoMem)
    );
    check_eq!(m.get_stackid(0, other.ips(), 0), Err(Error::Exist));
    ok!(m.delete(id));
    check_eq!(m.get_stackid(0, other.ips(), 0), Ok(id));
    Ok(())
}

pub fn skip_truncation_fault_inval(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    let chain = [1u64, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    let m = map_in!(mem, attr(64, 32, 0)); // 4 frames
    let mut out = [0u64; 4];
    // Truncated to value_size / 8 + skip frames, then skip dropped.
    let id = ok!(m.get_stackid(0, &chain, 2));
    check_eq!(id, id_of(&m, &chain[2..6]));
    check_eq!(ok!(m.lookup_ips(id, &mut out)), &chain[2..6]);
    let id = ok!(m.get_stackid(0, &chain, 0));
    check_eq!(ok!(m.lookup_ips(id, &mut out)), &chain[..4]);
    // nr <= skip: EFAULT.
    check_eq!(m.get_stackid(0, &chain[..3], 3), Err(Error::Fault));
    check_eq!(m.get_stackid(0, &chain[..3], 200), Err(Error::Fault));
    check_eq!(m.get_stackid(0, &[], 0), Err(Error::Fault));
    // Unknown flags, and USER_BUILD_ID (a get_stack flag): EINVAL.
    check_eq!(m.get_stackid(0, &chain, 1 << 20), Err(Error::Inval));
    check_eq!(
        m.get_stackid(0, &chain, BPF_F_USER_BUILD_ID),
        Err(Error::Inval)
    );
    // USER_STACK is accepted and does not change an ips map's id.
    check_eq!(
        m.get_stackid(0, &chain[..4], BPF_F_USER_STACK),
        Ok(id_of(&m, &chain[..4]))
    );
    drop(m);
    // max_stack cuts the walk: 3 frames of 3 allowed.
    let m = map_in!(
        mem,
        attr(64, 24, 0),
        Config {
            nr_cpus: 1,
            max_stack: 3
        }
    );
    let id = ok!(m.get_stackid(0, &chain, 1));
    check_eq!(
        id,
        id_of(&m, &chain[1..3]),
        "min(3 + 1, max_stack 3) frames"
    );
    Ok(())
}

pub fn lookup_bytes_and_zeroed_tail(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    let m = map_in!(mem, attr(16, 64, 0));
    let chain = [0x1122_3344_5566_7788u64, 0xffff_ffff_8100_0000, 3];
    let id = ok!(m.get_stackid(0, &chain, 0));
    let mut value = [0xaau8; 80];
    ok!(m.lookup(id, &mut value));
    for (i, ip) in chain.iter().enumerate() {
        check_eq!(value[i * 8..i * 8 + 8], ip.to_le_bytes(), "frame {}", i);
    }
    check!(value[24..64].iter().all(|&b| b == 0), "tail zeroed");
    check!(
        value[64..].iter().all(|&b| b == 0xaa),
        "past value_size untouched"
    );
    check_eq!(m.lookup(id, &mut [0; 56]), Err(Error::Inval));
    check_eq!(m.lookup(m.n_buckets(), &mut value), Err(Error::NoEnt));
    let empty = (id + 1) % m.n_buckets();
    check_eq!(m.lookup(empty, &mut value), Err(Error::NoEnt));
    let mut ips = [9u64; 8];
    check_eq!(ok!(m.lookup_ips(id, &mut ips)), &chain[..]);
    check_eq!(ips[3..], [0u64; 5]);
    check_eq!(m.lookup_ips(id, &mut [0u64; 7]), Err(Error::Inval));
    check_eq!(
        m.lookup_build_ids(id, &mut [StackBuildId::default(); 2]),
        Err(Error::Inval)
    );
    Ok(())
}

pub fn delete_get_next_key_update(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    let m = map_in!(mem, attr(16, 64, 0));
    check_eq!(m.get_next_key(None), Err(Error::NoEnt));
    let mut present = 0u32; // bit per id
    for k in 0..12 {
        if let Ok(id) = m.get_stackid(0, frames(k).ips(), 0) {
            present |= 1 << id;
        }
    }
    check!(present.count_ones() >= 6, "{:b}", present);
    let first = present.trailing_zeros();
    // Walk: every occupied id, in order.
    let mut seen = 0u32;
    let mut key = None;
    loop {
        match m.get_next_key(key) {
            Ok(id) => {
                check!(key.is_none_or(|k| id > k), "{:?} -> {}", key, id);
                seen |= 1 << id;
                key = Some(id);
            }
            Err(Error::NoEnt) => break,
            Err(e) => fail!("get_next_key: {:?}", e),
        }
    }
    check_eq!(seen, present);
    // An out-of-range key or an empty bucket restarts from 0.
    check_eq!(m.get_next_key(Some(1000)), Ok(first));
    let empty = (!present).trailing_zeros();
    check_eq!(m.get_next_key(Some(empty)), Ok(first));
    // delete: E2BIG out of range, ENOENT empty.
    check_eq!(m.delete(m.n_buckets()), Err(Error::TooBig));
    check_eq!(m.delete(empty), Err(Error::NoEnt));
    ok!(m.delete(first));
    check_eq!(m.delete(first), Err(Error::NoEnt));
    check_eq!(m.lookup(first, &mut [0; 64]), Err(Error::NoEnt));
    check!(m.get_next_key(None) != Ok(first));
    // lookup_and_delete: the bytes, then gone.
    let second = ok!(m.get_next_key(None));
    let mut want = [0u8; 64];
    ok!(m.lookup(second, &mut want));
    let mut got = [0u8; 64];
    ok!(m.lookup_and_delete(second, &mut got));
    check_eq!(got, want);
    check_eq!(m.lookup(second, &mut got), Err(Error::NoEnt));
    check_eq!(m.lookup_and_delete(second, &mut got), Err(Error::NoEnt));
    check_eq!(m.update(0, &[0; 64], 0), Err(Error::Inval));
    Ok(())
}

pub fn rdonly_wronly(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    {
        let ro = map_in!(mem, attr(4, 8, BPF_F_RDONLY));
        let id = ok!(ro.get_stackid(0, &[5], 0));
        check_eq!(ro.lookup(id, &mut [0; 8]), Ok(()));
        check_eq!(ro.delete(id), Err(Error::Perm));
        check_eq!(ro.update(id, &[0; 8], 0), Err(Error::Perm));
        check_eq!(ro.lookup_and_delete(id, &mut [0; 8]), Err(Error::Perm));
    }
    let wo = map_in!(mem, attr(4, 8, BPF_F_WRONLY));
    let id = ok!(wo.get_stackid(0, &[5], 0));
    check_eq!(wo.lookup(id, &mut [0; 8]), Err(Error::Perm));
    check_eq!(wo.get_next_key(None), Err(Error::Perm));
    check_eq!(wo.lookup_and_delete(id, &mut [0; 8]), Err(Error::Perm));
    check_eq!(wo.update(id, &[0; 8], 0), Err(Error::Inval));
    check_eq!(wo.delete(id), Ok(()));
    Ok(())
}

/// Two mappings: one with a build id, one anonymous above it.
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

pub fn build_id_frames(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    let m = map_in!(mem, attr(8, 4 * 32, BPF_F_STACK_BUILD_ID));
    let chain = [0x1100, 0x500, 0x2500, 0x9000];
    let id = ok!(m.get_stackid_resolved(0, &chain, BPF_F_USER_STACK, &OneLib));
    // The id hashes the ips, whatever the frames become.
    check_eq!(id, id_of(&m, &chain));
    let mut out = [StackBuildId::default(); 4];
    let f = ok!(m.lookup_build_ids(id, &mut out));
    check_eq!(f.len(), 4);
    check_eq!(f[0], StackBuildId::valid([7; 20], 0x500));
    // 0x500 is below the mapping: find_vma still gives it, offset wraps.
    let wrapped = 0x400u64.wrapping_add(0x500).wrapping_sub(0x1000);
    check_eq!(f[1], StackBuildId::valid([7; 20], wrapped));
    check_eq!(f[2], StackBuildId::from_ip(0x2500), "anonymous: IP");
    check_eq!(f[3], StackBuildId::from_ip(0x9000), "no mapping: IP");
    // Raw bytes: status (i32) at 0, build id at 4, offset at 24; 32 each.
    let mut value = [0u8; 128];
    ok!(m.lookup(id, &mut value));
    check_eq!(value[0..4], 1i32.to_ne_bytes(), "VALID");
    check_eq!(value[4..24], [7u8; 20]);
    check_eq!(value[24..32], 0x500u64.to_ne_bytes());
    check_eq!(value[64..68], 2i32.to_ne_bytes(), "IP");
    check_eq!(value[88..96], 0x2500u64.to_ne_bytes());
    // A kernel stack (no USER_STACK) is all IP frames, resolver or not.
    let kchain = [0xffff_ffff_8100_0000u64, 0x1100];
    let kid = ok!(m.get_stackid_resolved(0, &kchain, 0, &OneLib));
    let f = ok!(m.lookup_build_ids(kid, &mut out));
    check_eq!(
        f,
        &[
            StackBuildId::from_ip(kchain[0]),
            StackBuildId::from_ip(0x1100)
        ][..]
    );
    check_eq!(m.lookup_ips(kid, &mut [0u64; 16]), Err(Error::Inval));
    // value_size must be a multiple of 32 for build-id maps.
    check_eq!(
        StackMapIn::storage_size(&attr(8, 40, BPF_F_STACK_BUILD_ID), Config::default()),
        Err(Error::Inval)
    );
    Ok(())
}

pub fn build_id_pop_before_compare(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    // Two entries, both used: even a known stack gets ENOMEM, as in the
    // kernel (build-id maps take a slot before comparing).
    let m = map_in!(mem, attr(2, 32, BPF_F_STACK_BUILD_ID));
    let mut ids = [None, None];
    for x in 1u64..1000 {
        if let Ok(id) = m.get_stackid(0, &[x], 0) {
            if let Some(slot) = ids.get_mut(id as usize) {
                *slot = Some(x);
            }
        }
        if ids.iter().all(Option::is_some) {
            break;
        }
    }
    let (Some(known), Some(_)) = (ids[0], ids[1]) else {
        fail!("could not fill both buckets: {:?}", ids);
    };
    check_eq!(m.get_stackid(0, &[known], 0), Err(Error::NoMem));
    // FAST_CMP returns before the pop.
    check_eq!(m.get_stackid(0, &[known], BPF_F_FAST_STACK_CMP), Ok(0));
    ok!(m.delete(1));
    // The slot taken for the compare went back: the hit frees nothing.
    check_eq!(m.get_stackid(0, &[known], 0), Ok(0));
    check_eq!(m.get_stackid(0, &[known], 0), Ok(0));
    Ok(())
}

pub fn get_stack_and_pe(_: &mut [MaybeUninit<u8>]) -> TestResult {
    let chain = [1u64, 2, 3, 4, 5];
    let mut buf = [0xaau8; 48];
    // Skip 1, 4 frames copied of a 6-frame buffer, the rest zeroed.
    check_eq!(get_stack(&chain, 1, &mut buf, None), Ok(32));
    for (i, ip) in [2u64, 3, 4, 5].iter().enumerate() {
        check_eq!(buf[i * 8..i * 8 + 8], ip.to_le_bytes());
    }
    check_eq!(buf[32..], [0u8; 16]);
    // Buffer shorter than the chain: cut to it.
    let mut short = [0u8; 16];
    check_eq!(get_stack(&chain, 0, &mut short, None), Ok(16));
    check_eq!(short[8..], 2u64.to_le_bytes());
    // Skipping the whole chain copies nothing (get_stack's check is
    // `nr < skip`, not get_stackid's `nr <= skip`); errors zero the buffer.
    let mut buf = [0xaau8; 48];
    check_eq!(get_stack(&chain, 5, &mut buf, None), Ok(0));
    check_eq!(buf, [0u8; 48]);
    let mut buf = [0xaau8; 48];
    check_eq!(get_stack(&chain, 6, &mut buf, None), Err(Error::Fault));
    check_eq!(buf, [0u8; 48]);
    let mut buf = [0xaau8; 20];
    check_eq!(get_stack(&chain, 0, &mut buf, None), Err(Error::Inval));
    check_eq!(buf, [0u8; 20]);
    check_eq!(
        get_stack(&chain, BPF_F_USER_BUILD_ID, &mut [0u8; 64], None),
        Err(Error::Inval)
    );
    // Build-id frames through a resolver.
    let mut frames = [0u8; 64];
    let flags = BPF_F_USER_STACK | BPF_F_USER_BUILD_ID;
    check_eq!(
        get_stack(&[0x1010, 0x9000], flags, &mut frames, Some(&OneLib)),
        Ok(64)
    );
    check_eq!(frames[0..4], 1i32.to_ne_bytes());
    check_eq!(frames[24..32], 0x410u64.to_ne_bytes());
    check_eq!(frames[32..36], 2i32.to_ne_bytes());
    // _pe: the kernel part ends at PERF_CONTEXT_USER; the user part
    // starts after it.
    let pe = [PERF_CONTEXT_KERNEL, 0xa, 0xb, PERF_CONTEXT_USER, 0x1, 0x2];
    let mut out = [0u8; 32];
    check_eq!(get_stack_pe(&pe, 0, &mut out, None), Ok(24));
    check_eq!(out[8..16], 0xau64.to_le_bytes());
    check_eq!(get_stack_pe(&pe, BPF_F_USER_STACK, &mut out, None), Ok(24));
    check_eq!(out[0..8], PERF_CONTEXT_USER.to_le_bytes());
    check_eq!(out[8..16], 1u64.to_le_bytes());
    check_eq!(out[16..24], 2u64.to_le_bytes());
    check_eq!(out[24..], [0u8; 8]);
    Ok(())
}

pub fn get_stackid_pe(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    let m = map_in!(mem, attr(64, 64, 0));
    let chain = [PERF_CONTEXT_KERNEL, 0xa, 0xb, PERF_CONTEXT_USER, 0x1, 0x2];
    check_eq!(
        m.get_stackid_pe(0, &chain, 0),
        Ok(id_of(&m, &[PERF_CONTEXT_KERNEL, 0xa, 0xb]))
    );
    check_eq!(
        m.get_stackid_pe(0, &chain, BPF_F_USER_STACK),
        Ok(id_of(&m, &[PERF_CONTEXT_USER, 1, 2]))
    );
    check_eq!(
        m.get_stackid_pe(0, &chain, BPF_F_USER_STACK | 1),
        Ok(id_of(&m, &[1, 2]))
    );
    check_eq!(
        m.get_stackid_pe(0, &chain, BPF_F_USER_STACK | 253),
        Err(Error::Fault)
    );
    check_eq!(
        m.get_stackid_pe(0, &chain, BPF_F_USER_STACK | 3),
        Err(Error::Fault)
    );
    check_eq!(m.get_stackid_pe(0, &chain, 1 << 20), Err(Error::Inval));
    Ok(())
}

pub fn creation_errors_and_memory(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    let size = |a: MapAttr| StackMapIn::storage_size(&a, Config::default());
    check_eq!(size(attr(0, 8, 0)), Err(Error::Inval));
    check_eq!(size(attr(u32::MAX, 8, 0)), Err(Error::TooBig));
    check_eq!(size(attr(1, 8, BPF_F_NO_PREALLOC)), Err(Error::Inval));
    check_eq!(size(attr(1, 12, 0)), Err(Error::Inval));
    check_eq!(size(attr(1, 4, 0)), Err(Error::Inval));
    check_eq!(size(attr(1, 128 * 8, 0)), Err(Error::Inval), "> max_stack");
    check_eq!(
        size(attr(1, 8, BPF_F_RDONLY | BPF_F_WRONLY)),
        Err(Error::Inval)
    );
    let bad_key = MapAttr {
        key_size: 8,
        ..attr(1, 8, 0)
    };
    check_eq!(size(bad_key), Err(Error::Inval));
    // Caller memory: too small is ENOMEM; any alignment works.
    let a = attr(16, 64, 0);
    let need = ok!(size(a));
    check!(need < 4096, "{}", need);
    check_eq!(
        StackMapIn::new_in(&a, Config::default(), &mut mem[..need / 2]).err(),
        Some(Error::NoMem)
    );
    for offset in 0..8 {
        let m = map_in!(&mut mem[offset..offset + need], a);
        let id = ok!(m.get_stackid(0, &[1, 2, 3], 0));
        check_eq!(m.get_stackid(0, &[1, 2, 3], 0), Ok(id));
        check!(m.mem_usage() >= 16 * (12 + 64));
    }
    Ok(())
}

pub fn conservation_fill_delete_refill(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    // 40 entries over 3 freelist shards: fill to ENOMEM (exactly 40 fit),
    // delete everything, refill, again and again, popping from every CPU
    // (stealing) and freeing with delete and lookup_and_delete. A slot lost
    // makes a fill short; a slot in two places makes one long and a lookup
    // show another bucket's stack.
    let max_entries = 40;
    let m = map_in!(mem, attr(max_entries, 64, 0), cfg(3));
    let mut k = 0;
    for round in 0..12u32 {
        let stored = fill(&m, &mut k, |k| (k.wrapping_mul(7) ^ round) as usize)?;
        check_eq!(stored, max_entries, "round {}", round);
        check_eq!(check_buckets(&m)?, max_entries, "round {}", round);
        let mut freed = 0;
        while let Ok(id) = m.get_next_key(None) {
            if (id + round) % 2 == 0 {
                ok!(m.delete(id));
            } else {
                ok!(m.lookup_and_delete(id, &mut [0; 64]));
            }
            freed += 1;
            check!(freed <= max_entries, "more stacks than entries");
        }
        check_eq!(freed, max_entries);
        check_eq!(check_buckets(&m)?, 0);
    }
    Ok(())
}

pub fn head16_capacity_limit(_: &mut [MaybeUninit<u8>]) -> TestResult {
    // Without 64-bit atomics the freelist head is 32 bits: an index field
    // sized by max_entries (all ones = empty), at most 16 bits, and the
    // rest tag: at most 65,534 entries.
    check!(!cfg!(target_has_atomic = "64"));
    check_eq!(HEAD_INDEX_MAX, 65_534);
    let size = |n: u32| StackMapIn::storage_size(&attr(n, 8, 0), cfg(2));
    check!(size(65_534).is_ok(), "{:?}", size(65_534));
    for n in [65_535, 65_536, 1 << 20, 1 << 31] {
        check_eq!(size(n), Err(Error::TooBig), "{} entries", n);
        check_eq!(Error::TooBig.errno(), 7);
    }
    check_eq!(size((1 << 31) + 1), Err(Error::TooBig));
    Ok(())
}

pub fn head16_full_map(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    // The largest map this target allows, filled to the last entry: slot
    // indices up to 65,533 (next to the head's EMPTY value, 65,535) go
    // through the freelist and the buckets. Then everything is deleted and
    // the map filled again from the other CPU (every pop steals): exactly
    // as many fit. One-frame stacks (value_size 8).
    let max_entries = HEAD_INDEX_MAX;
    let a = attr(max_entries, 8, 0);
    check!(ok!(StackMapIn::storage_size(&a, cfg(2))) <= mem.len());
    let m = map_in!(mem, a, cfg(2));
    check_eq!(m.n_buckets(), 65_536);
    let mut k = 0;
    for round in 0..2 {
        // Round 0 alternates the CPUs; round 1 pops from CPU 1 only, after
        // delete freed every slot to its home shard: once CPU 1's half is
        // used up, each pop steals from shard 0.
        let stored = fill(&m, &mut k, |k| if round == 0 { k as usize % 2 } else { 1 })?;
        check_eq!(stored, max_entries, "round {}", round);
        // Two buckets are empty; everything else holds its own stack.
        let mut value = [0u8; 8];
        let mut occupied = 0;
        for id in 0..m.n_buckets() {
            match m.lookup(id, &mut value) {
                Ok(()) => {
                    let ip = u64::from_le_bytes(value);
                    check_eq!(id_of(&m, &[ip]), id, "misplaced stack");
                    check_eq!(frames(ip as u32).ips()[0], ip, "not a generated stack");
                    occupied += 1;
                }
                Err(Error::NoEnt) => {}
                Err(e) => fail!("lookup {}: {:?}", id, e),
            }
        }
        check_eq!(occupied, max_entries, "round {}", round);
        for id in 0..m.n_buckets() {
            match m.delete(id) {
                Ok(()) | Err(Error::NoEnt) => {}
                Err(e) => fail!("delete {}: {:?}", id, e),
            }
        }
        check_eq!(m.get_next_key(None), Err(Error::NoEnt));
    }
    Ok(())
}
