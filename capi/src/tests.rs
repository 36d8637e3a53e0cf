//! The C functions against the Rust API they wrap: same chains, same
//! operations, same ids and errnos; and the C conventions (NULL, lengths,
//! alignment, caller memory).

use core::ffi::{c_int, c_long, c_void};
use core::mem::MaybeUninit;
use core::ptr::{null, null_mut};
use std::vec;
use std::vec::Vec;

use kstackmap::uapi::StackBuildId;
use kstackmap::{Config, Error, MapAttr, StackMapIn, Vma, VmaResolver};

use crate::*;

const EINVAL: c_long = -(KSM_EINVAL as c_long);
const ENOMEM: c_long = -(KSM_ENOMEM as c_long);

/// xorshift64*: deterministic chains and operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A block of `len` bytes whose usable part starts at an odd address.
struct OddBlock {
    buf: Vec<u8>,
}

impl OddBlock {
    fn new(len: usize) -> OddBlock {
        OddBlock {
            buf: vec![0xa5; len + 1],
        }
    }
    fn ptr(&mut self) -> *mut c_void {
        let p = self.buf.as_mut_ptr();
        // Odd: the handle and the arrays must be aligned by the library.
        let p = if (p as usize) % 2 == 0 {
            p.wrapping_add(1)
        } else {
            p
        };
        p.cast()
    }
    fn len(&self) -> usize {
        self.buf.len() - 1
    }
}

fn c_attr(a: &MapAttr) -> ksm_map_attr {
    ksm_map_attr {
        max_entries: a.max_entries,
        key_size: a.key_size,
        value_size: a.value_size,
        map_flags: a.map_flags,
        numa_node: a.numa_node,
    }
}

/// A C map in an odd block, and the Rust map for the same attributes.
struct Pair {
    c: *mut ksm_map,
    _c_mem: OddBlock,
    rust: StackMapIn<'static>,
    value_size: usize,
}

impl Pair {
    fn new(attr: &MapAttr, nr_cpus: u32) -> Pair {
        let cfg = Config {
            nr_cpus: nr_cpus as usize,
            max_stack: 127,
        };
        let a = c_attr(attr);
        // SAFETY: `a` is a valid attr.
        let size = unsafe { ksm_map_storage_size(&a, nr_cpus, 127) };
        assert!(size > 0, "{size}");
        let mut mem = OddBlock::new(size as usize);
        let mut c = null_mut();
        // SAFETY: `mem` is ours for the pair's life; `c` and `a` are valid.
        let r = unsafe { ksm_map_init(&mut c, mem.ptr(), mem.len(), &a, nr_cpus, 127) };
        assert_eq!(r, 0);
        assert!(!c.is_null());
        let rust_mem = Box::leak(vec![MaybeUninit::uninit(); size as usize].into_boxed_slice());
        let rust = StackMapIn::new_in(attr, cfg, rust_mem).unwrap();
        Pair {
            c,
            _c_mem: mem,
            rust,
            value_size: attr.value_size as usize,
        }
    }

    fn stackid(&self, cpu: u32, chain: &[u64], flags: u64) -> c_long {
        // SAFETY: `self.c` is live; `chain` is readable.
        unsafe { ksm_get_stackid(self.c, cpu, chain.as_ptr(), chain.len() as u32, flags) }
    }

    fn lookup(&self, id: u32) -> (c_long, Vec<u8>) {
        let mut v = vec![0xeeu8; self.value_size];
        // SAFETY: `self.c` is live; `v` is writable.
        let r = unsafe { ksm_lookup(self.c, id, v.as_mut_ptr().cast(), v.len()) };
        (r, v)
    }
}

use std::boxed::Box;

/// What the Rust API returned, as the C functions return it.
fn want(r: Result<u32, Error>) -> c_long {
    ret(r)
}

#[test]
fn same_ids_and_errnos_as_the_rust_api() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (max_entries, depth, map_flags) in [(64, 8, 0), (5, 4, 0), (1000, 127, 0), (16, 4, 8)] {
        let attr = MapAttr {
            max_entries,
            value_size: depth * 8,
            map_flags,
            ..MapAttr::default()
        };
        let p = Pair::new(&attr, 4);
        // A pool of chains, some longer than the depth, some sharing a prefix.
        let pool: Vec<Vec<u64>> = (0..3 * max_entries as usize)
            .map(|_| {
                let n = 1 + rng.below(u64::from(depth) + 3) as usize;
                (0..n).map(|_| rng.below(1 << 20) * 16).collect()
            })
            .collect();
        for _ in 0..4000 {
            let chain = &pool[rng.below(pool.len() as u64) as usize];
            let cpu = rng.below(8) as u32;
            match rng.below(10) {
                0..=5 => {
                    let flags = match rng.below(6) {
                        0 => KSM_F_REUSE_STACKID,
                        1 => KSM_F_FAST_STACK_CMP,
                        2 => rng.below(3),
                        3 => 1 << 20,
                        _ => 0,
                    };
                    let r = p.rust.get_stackid(cpu as usize, chain, flags);
                    assert_eq!(
                        p.stackid(cpu, chain, flags),
                        want(r),
                        "{chain:x?} {flags:#x}"
                    );
                }
                6 | 7 => {
                    let id = rng.below(u64::from(p.rust.n_buckets()) + 2) as u32;
                    let (r, v) = p.lookup(id);
                    let mut w = vec![0xeeu8; p.value_size];
                    let rw = p.rust.lookup(id, &mut w);
                    assert_eq!(r, want(rw.map(|()| 0)));
                    assert_eq!(v, w);
                }
                8 => {
                    let id = rng.below(u64::from(p.rust.n_buckets()) + 2) as u32;
                    // SAFETY: `p.c` is live.
                    let r = unsafe { ksm_delete(p.c, id) };
                    assert_eq!(r, want(p.rust.delete(id).map(|()| 0)));
                }
                _ => {
                    let key = rng.below(u64::from(p.rust.n_buckets()) + 2) as u32;
                    let mut next = u32::MAX;
                    let key_ptr = if rng.below(4) == 0 { null() } else { &key };
                    // SAFETY: `p.c` is live; `key_ptr` NULL or readable.
                    let r = unsafe { ksm_get_next_key(p.c, key_ptr, &mut next) };
                    let rw = p.rust.get_next_key((!key_ptr.is_null()).then_some(key));
                    assert_eq!(r, want(rw.map(|_| 0)));
                    if let Ok(n) = rw {
                        assert_eq!(next, n);
                    }
                }
            }
        }
    }
}

#[test]
fn ids_are_jhash2_of_the_chain() {
    let attr = MapAttr {
        max_entries: 1000,
        value_size: 127 * 8,
        ..MapAttr::default()
    };
    let p = Pair::new(&attr, 1);
    // SAFETY: `p.c` is live.
    assert_eq!(unsafe { ksm_map_n_buckets(p.c) }, 1024);
    let chain: Vec<u64> = (1..=40).map(|i| 0xffff_ffff_8100_0000 + i * 0x37).collect();
    let words: Vec<u32> = chain
        .iter()
        .flat_map(|ip| [*ip as u32, (*ip >> 32) as u32])
        .collect();
    let id = p.stackid(0, &chain, 0);
    assert_eq!(id, c_long::from(kstackmap::jhash2(&words, 0) & 1023));
    let mut out = [0u64; 127];
    // SAFETY: `p.c` is live; `out` is writable.
    let n = unsafe { ksm_lookup_ips(p.c, id as u32, out.as_mut_ptr(), 127) };
    assert_eq!(n, 40);
    assert_eq!(&out[..40], &chain[..]);
    assert!(out[40..].iter().all(|&w| w == 0));
    // SAFETY: as above, with too small a buffer.
    let short = unsafe { ksm_lookup_ips(p.c, id as u32, out.as_mut_ptr(), 126) };
    assert_eq!(short, EINVAL);
}

#[test]
fn pe_chains_match_the_rust_api() {
    let attr = MapAttr {
        max_entries: 256,
        value_size: 16 * 8,
        ..MapAttr::default()
    };
    let p = Pair::new(&attr, 2);
    let mut rng = Rng(7);
    for _ in 0..500 {
        let mut chain = vec![KSM_PERF_CONTEXT_KERNEL];
        chain.extend((0..rng.below(6)).map(|_| 0xffff_8000_0000_0000 | rng.below(1 << 30)));
        if rng.below(3) > 0 {
            chain.push(KSM_PERF_CONTEXT_USER);
            chain.extend((0..rng.below(20)).map(|_| rng.below(1 << 30)));
        }
        let flags = [
            0,
            KSM_F_USER_STACK,
            KSM_F_USER_STACK | 1,
            KSM_F_REUSE_STACKID,
            2,
        ][rng.below(5) as usize];
        let r = p.rust.get_stackid_pe(0, &chain, flags);
        // SAFETY: `p.c` is live; `chain` is readable.
        let c = unsafe { ksm_get_stackid_pe(p.c, 0, chain.as_ptr(), chain.len() as u32, flags) };
        assert_eq!(c, want(r), "{chain:x?} {flags:#x}");
    }
}

/// Two mappings: [0x1000, 0x3000) with build id 0x11.., [0x8000, 0x9000)
/// anonymous.
struct Maps;

impl VmaResolver for Maps {
    fn find_vma(&self, ip: u64) -> Option<Vma> {
        [
            Vma {
                start: 0x1000,
                end: 0x3000,
                file_offset: 0x400,
                build_id: Some([0x11; 20]),
            },
            Vma {
                start: 0x8000,
                end: 0x9000,
                file_offset: 0,
                build_id: None,
            },
        ]
        .into_iter()
        .find(|v| v.end > ip)
    }
}

/// `Maps` as a `ksm_find_vma_fn`; counts its calls in `*ctx`.
unsafe extern "C" fn find_vma(ctx: *mut c_void, ip: u64, vma: *mut ksm_vma) -> c_int {
    // SAFETY: `ctx` is the test's counter, `vma` the library's local.
    unsafe { *ctx.cast::<u32>() += 1 };
    let Some(v) = Maps.find_vma(ip) else {
        return -1;
    };
    let out = ksm_vma {
        start: v.start,
        end: v.end,
        file_offset: v.file_offset,
        has_build_id: u32::from(v.build_id.is_some()),
        build_id: v.build_id.unwrap_or_default(),
    };
    // SAFETY: `vma` is writable.
    unsafe { vma.write(out) };
    0
}

#[test]
fn build_id_maps_resolve_through_the_callback() {
    let attr = MapAttr {
        max_entries: 64,
        value_size: 4 * 32,
        map_flags: KSM_F_STACK_BUILD_ID,
        ..MapAttr::default()
    };
    let p = Pair::new(&attr, 1);
    let chain = [0x1010u64, 0x2ff0, 0x8004, 0xa000];
    let mut calls = 0u32;
    let ctx = (&mut calls as *mut u32).cast();
    // SAFETY: `p.c` is live, `chain` readable, `find_vma` callable with `ctx`.
    let id = unsafe {
        ksm_get_stackid_resolved(
            p.c,
            0,
            chain.as_ptr(),
            4,
            KSM_F_USER_STACK,
            Some(find_vma),
            ctx,
        )
    };
    let r = p
        .rust
        .get_stackid_resolved(0, &chain, KSM_F_USER_STACK, &Maps);
    assert_eq!(id, want(r));
    // 0x2ff0 reuses the first mapping without a call.
    assert_eq!(calls, 3);
    let mut frames = [ksm_stack_build_id::default(); 4];
    // SAFETY: `frames` is 128 writable bytes.
    let got = unsafe { ksm_lookup(p.c, id as u32, frames.as_mut_ptr().cast(), 128) };
    assert_eq!(got, 0);
    let mut want_frames = [StackBuildId::from_ip(0); 4];
    p.rust
        .lookup_build_ids(id as u32, &mut want_frames)
        .unwrap();
    for (f, w) in frames.iter().zip(&want_frames) {
        assert_eq!(
            (f.status, f.build_id, f.offset_or_ip),
            (w.status, w.build_id, w.offset_or_ip)
        );
    }
    assert_eq!(frames[0].status, KSM_STACK_BUILD_ID_VALID);
    assert_eq!(frames[0].offset_or_ip, 0x410);
    assert_eq!(frames[2].status, KSM_STACK_BUILD_ID_IP);
    // A NULL callback is refused; a kernel stack never calls it.
    // SAFETY: as above.
    let r = unsafe { ksm_get_stackid_resolved(p.c, 0, chain.as_ptr(), 4, 0, None, ctx) };
    assert_eq!(r, EINVAL);
    // SAFETY: as above.
    let r =
        unsafe { ksm_get_stackid_pe_resolved(p.c, 0, chain.as_ptr(), 4, 0, Some(find_vma), ctx) };
    assert_eq!(r, want(p.rust.get_stackid_pe(0, &chain, 0)));
    assert_eq!(calls, 3);
}

#[test]
fn c_structs_have_the_kernel_layout() {
    use core::mem::{align_of, offset_of, size_of};
    assert_eq!(size_of::<ksm_map_attr>(), 20);
    assert_eq!(size_of::<ksm_stack_build_id>(), size_of::<StackBuildId>());
    assert_eq!(align_of::<ksm_stack_build_id>(), align_of::<StackBuildId>());
    assert_eq!(offset_of!(ksm_stack_build_id, offset_or_ip), 24);
    assert_eq!(size_of::<ksm_vma>(), 48);
}

#[test]
fn bad_input_gives_errnos_not_crashes() {
    let attr = c_attr(&MapAttr {
        max_entries: 8,
        value_size: 32,
        ..MapAttr::default()
    });
    // SAFETY: every pointer below is NULL, or valid for what it is passed
    // for (a deliberately misaligned one is never dereferenced).
    unsafe {
        assert_eq!(ksm_map_storage_size(null(), 1, 127), EINVAL);
        let size = ksm_map_storage_size(&attr, 1, 127);
        assert!(size > 0);
        let size = size as usize;
        let mut mem = OddBlock::new(size);
        let mut m = null_mut();
        assert_eq!(
            ksm_map_init(null_mut(), mem.ptr(), size, &attr, 1, 127),
            EINVAL
        );
        assert_eq!(
            ksm_map_init(&mut m, null_mut(), size, &attr, 1, 127),
            EINVAL
        );
        assert_eq!(
            ksm_map_init(&mut m, mem.ptr(), size, null(), 1, 127),
            EINVAL
        );
        assert_eq!(
            ksm_map_init(&mut m, mem.ptr(), usize::MAX, &attr, 1, 127),
            EINVAL
        );
        assert_eq!(
            ksm_map_init(&mut m, mem.ptr(), size - 1, &attr, 1, 127),
            ENOMEM
        );
        assert_eq!(ksm_map_init(&mut m, mem.ptr(), 3, &attr, 1, 127), ENOMEM);
        assert_eq!(ksm_map_init(&mut m, mem.ptr(), size, &attr, 0, 127), EINVAL);
        assert!(m.is_null(), "*out written on failure");
        // Bad attributes: the kernel's errnos, before the memory is looked at.
        for (bad, errno) in [
            (
                ksm_map_attr {
                    key_size: 8,
                    ..attr
                },
                KSM_EINVAL,
            ),
            (
                ksm_map_attr {
                    value_size: 12,
                    ..attr
                },
                KSM_EINVAL,
            ),
            (
                ksm_map_attr {
                    max_entries: 0,
                    ..attr
                },
                KSM_EINVAL,
            ),
            (
                ksm_map_attr {
                    map_flags: 8 | 16,
                    ..attr
                },
                KSM_EINVAL,
            ),
            (
                ksm_map_attr {
                    max_entries: (1 << 31) + 1,
                    ..attr
                },
                KSM_E2BIG,
            ),
        ] {
            let e = -c_long::from(errno);
            assert_eq!(ksm_map_storage_size(&bad, 1, 127), e, "{bad:?}");
            assert_eq!(
                ksm_map_init(&mut m, null_mut(), 0, &bad, 1, 127),
                e,
                "{bad:?}"
            );
        }
        // Every length from too short to enough, at an odd address.
        for len in (0..=size).step_by(7).chain([size]) {
            let r = ksm_map_init(&mut m, mem.ptr(), len, &attr, 1, 127);
            assert_eq!(r, if len < size { ENOMEM } else { 0 }, "{len}");
        }
        assert!(!m.is_null());
        let chain = [1u64, 2, 3];
        assert_eq!(ksm_get_stackid(null(), 0, chain.as_ptr(), 3, 0), EINVAL);
        assert_eq!(ksm_get_stackid(m, 0, null(), 3, 0), EINVAL);
        let odd = chain.as_ptr().cast::<u8>().wrapping_add(1).cast::<u64>();
        assert_eq!(ksm_get_stackid(m, 0, odd, 2, 0), EINVAL);
        assert_eq!(
            ksm_get_stackid(m, 0, null(), 0, 0),
            -c_long::from(KSM_EFAULT)
        );
        let id = ksm_get_stackid(m, 0, chain.as_ptr(), 3, 0);
        assert!(id >= 0);
        let mut v = [0u8; 32];
        assert_eq!(ksm_lookup(null(), 0, v.as_mut_ptr().cast(), 32), EINVAL);
        assert_eq!(ksm_lookup(m, id as u32, null_mut(), 32), EINVAL);
        assert_eq!(ksm_lookup(m, id as u32, v.as_mut_ptr().cast(), 31), EINVAL);
        assert_eq!(ksm_lookup(m, id as u32, v.as_mut_ptr().cast(), 0), EINVAL);
        assert_eq!(ksm_lookup(m, id as u32, v.as_mut_ptr().cast(), 32), 0);
        let odd_out = v.as_mut_ptr().wrapping_add(1).cast::<u64>();
        assert_eq!(ksm_lookup_ips(m, id as u32, odd_out, 3), EINVAL);
        let mut next = 0u32;
        assert_eq!(ksm_get_next_key(m, null(), null_mut()), EINVAL);
        assert_eq!(ksm_get_next_key(null(), null(), &mut next), EINVAL);
        assert_eq!(ksm_get_next_key(m, null(), &mut next), 0);
        assert_eq!(next, id as u32);
        assert_eq!(ksm_delete(null(), 0), EINVAL);
        assert_eq!(ksm_map_n_buckets(null()), EINVAL);
        let odd_map = m.cast::<u8>().wrapping_add(1).cast::<ksm_map>();
        assert_eq!(ksm_delete(odd_map, 0), EINVAL);
        assert_eq!(
            ksm_lookup_and_delete(m, id as u32, v.as_mut_ptr().cast(), 32),
            0
        );
        assert_eq!(ksm_delete(m, id as u32), -c_long::from(KSM_ENOENT));
    }
}

#[test]
fn threads_share_one_handle() {
    let attr = MapAttr {
        max_entries: 512,
        value_size: 8 * 8,
        ..MapAttr::default()
    };
    let p = Pair::new(&attr, 2);
    let handle = p.c as usize;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                let m = handle as *const ksm_map;
                let mut rng = Rng(t + 1);
                for i in 0..2000u64 {
                    let chain = [t << 40 | i, rng.next(), rng.next()];
                    // SAFETY: the map outlives the threads (joined below).
                    let id = unsafe { ksm_get_stackid(m, t as u32, chain.as_ptr(), 3, 0) };
                    if id < 0 {
                        assert!(id == -c_long::from(KSM_EEXIST) || id == ENOMEM, "{id}");
                        continue;
                    }
                    // Nobody else deletes this id while our stack is in it.
                    let mut out = [0u64; 8];
                    // SAFETY: as above; `out` is writable.
                    let n = unsafe { ksm_lookup_ips(m, id as u32, out.as_mut_ptr(), 8) };
                    assert_eq!(n, 3);
                    assert_eq!(&out[..3], &chain);
                    // SAFETY: as above.
                    assert_eq!(unsafe { ksm_delete(m, id as u32) }, 0);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut next = 0;
    // SAFETY: `p.c` is live.
    let r = unsafe { ksm_get_next_key(p.c, null(), &mut next) };
    assert_eq!(r, -c_long::from(KSM_ENOENT), "every stack was deleted");
}

/// A C depot in an odd block.
fn c_depot(cfg: &ksm_depot_config) -> (*mut ksm_depot, OddBlock) {
    // SAFETY: `cfg` is valid.
    let size = unsafe { ksm_depot_storage_size(cfg) };
    assert!(size > 0, "{size}");
    let mut mem = OddBlock::new(size as usize);
    let mut d = null_mut();
    // SAFETY: `mem` outlives every use of `d` in the tests.
    let r = unsafe { ksm_depot_init(&mut d, mem.ptr(), mem.len(), cfg) };
    assert_eq!(r, 0);
    (d, mem)
}

fn rust_cfg(c: &ksm_depot_config) -> kstackmap::DepotConfig {
    kstackmap::DepotConfig {
        capacity: c.capacity,
        arena_words: c.arena_words as usize,
        nr_cpus: c.nr_cpus as usize,
        seed: c.seed,
    }
}

#[test]
fn depot_same_ids_and_errnos_as_the_rust_api() {
    let cfg = ksm_depot_config {
        capacity: 200,
        arena_words: 1500,
        nr_cpus: 2,
        seed: 42,
    };
    let (d, _mem) = c_depot(&cfg);
    let rcfg = rust_cfg(&cfg);
    let size = kstackmap::StackDepotIn::storage_size(&rcfg).unwrap();
    let rust_mem = Box::leak(vec![MaybeUninit::uninit(); size].into_boxed_slice());
    let rust = kstackmap::StackDepotIn::new_in(&rcfg, rust_mem).unwrap();
    let mut rng = Rng(3);
    let pool: Vec<Vec<u64>> = (0..400)
        .map(|_| (0..rng.below(12)).map(|_| rng.below(64) * 8).collect())
        .collect();
    let (mut hits, mut full) = (0, 0);
    for _ in 0..3000 {
        let frames = &pool[rng.below(pool.len() as u64) as usize];
        // SAFETY: `d` is live; `frames` readable.
        let id = unsafe { ksm_depot_intern(d, 1, frames.as_ptr(), frames.len() as u32) };
        let r = rust.intern(1, frames);
        assert_eq!(id, want(r), "{frames:x?}");
        full += usize::from(r == Err(Error::NoMem));
        if let Ok(i) = r {
            hits += 1;
            let mut p = null();
            // SAFETY: `d` is live; `p` writable.
            let n = unsafe { ksm_depot_get(d, i, &mut p) };
            assert_eq!(n, frames.len() as c_long);
            // SAFETY: the depot keeps the words for its life.
            let got = unsafe { core::slice::from_raw_parts(p, n as usize) };
            assert_eq!(got, &frames[..]);
            assert_eq!(rust.get(i), Some(&frames[..]));
        }
    }
    assert!(hits > 1000 && full > 0, "{hits} {full}");
    // SAFETY: `d` is live.
    assert_eq!(unsafe { ksm_depot_len(d) }, rust.len() as c_long);
}

#[test]
fn depot_build_id_stacks() {
    let cfg = ksm_depot_config {
        capacity: 16,
        arena_words: 256,
        nr_cpus: 1,
        seed: 1,
    };
    let (d, _mem) = c_depot(&cfg);
    let frames = [
        ksm_stack_build_id {
            status: KSM_STACK_BUILD_ID_VALID,
            build_id: [7; 20],
            offset_or_ip: 0x1234,
        },
        ksm_stack_build_id {
            status: KSM_STACK_BUILD_ID_IP,
            build_id: [0; 20],
            offset_or_ip: 0xffff_8000_0000_1000,
        },
    ];
    // SAFETY: `d` is live; every pointer below is valid or NULL.
    unsafe {
        let id = ksm_depot_intern_build_ids(d, 0, frames.as_ptr(), 2);
        assert!(id >= 0);
        assert_eq!(ksm_depot_intern_build_ids(d, 0, frames.as_ptr(), 2), id);
        let mut p = null();
        assert_eq!(ksm_depot_get_build_ids(d, id as u32, &mut p), 2);
        assert_eq!(core::slice::from_raw_parts(p, 2), &frames);
        let mut w = null();
        assert_eq!(ksm_depot_get(d, id as u32, &mut w), 8, "four words a frame");
        // The same words as an ips stack are another stack.
        let ips = core::slice::from_raw_parts(w, 8).to_vec();
        let other = ksm_depot_intern(d, 0, ips.as_ptr(), 8);
        assert!(other >= 0 && other != id);
        assert_eq!(
            ksm_depot_get_build_ids(d, other as u32, &mut p),
            -(KSM_ENOENT as c_long)
        );
    }
}

#[test]
fn depot_bad_input_gives_errnos() {
    let cfg = ksm_depot_config {
        capacity: 4,
        arena_words: 16,
        nr_cpus: 1,
        seed: 0,
    };
    let enoent = -(KSM_ENOENT as c_long);
    // SAFETY: every pointer below is NULL, or valid for what it is passed
    // for (a deliberately misaligned one is never dereferenced).
    unsafe {
        let size = ksm_depot_storage_size(&cfg);
        assert!(size > 0);
        let size = size as usize;
        assert_eq!(ksm_depot_storage_size(null()), EINVAL);
        for bad in [
            ksm_depot_config { capacity: 0, ..cfg },
            ksm_depot_config {
                capacity: (1 << 24) + 1,
                ..cfg
            },
            ksm_depot_config {
                arena_words: 1,
                ..cfg
            },
            ksm_depot_config {
                arena_words: (1 << 31) + 1,
                ..cfg
            },
            ksm_depot_config { nr_cpus: 0, ..cfg },
        ] {
            assert_eq!(ksm_depot_storage_size(&bad), EINVAL, "{bad:?}");
        }
        let mut mem = OddBlock::new(size);
        let mut d = null_mut();
        assert_eq!(ksm_depot_init(null_mut(), mem.ptr(), size, &cfg), EINVAL);
        assert_eq!(ksm_depot_init(&mut d, null_mut(), size, &cfg), EINVAL);
        assert_eq!(ksm_depot_init(&mut d, mem.ptr(), size, null()), EINVAL);
        assert_eq!(ksm_depot_init(&mut d, mem.ptr(), size - 1, &cfg), ENOMEM);
        assert!(d.is_null());
        assert_eq!(ksm_depot_init(&mut d, mem.ptr(), size, &cfg), 0);
        let f = [1u64, 2, 3];
        assert_eq!(ksm_depot_intern(null(), 0, f.as_ptr(), 3), EINVAL);
        assert_eq!(ksm_depot_intern(d, 0, null(), 3), EINVAL);
        assert_eq!(ksm_depot_intern(d, 0, f.as_ptr(), 0), EINVAL, "empty stack");
        let odd = f.as_ptr().cast::<u8>().wrapping_add(1).cast::<u64>();
        assert_eq!(ksm_depot_intern(d, 0, odd, 2), EINVAL);
        // 16 words: 4 records of 1 header + 3 frames, then full.
        for i in 0..4 {
            let g = [i, 2, 3];
            assert_eq!(ksm_depot_intern(d, 0, g.as_ptr(), 3), i as c_long);
        }
        assert_eq!(ksm_depot_intern(d, 0, [9u64].as_ptr(), 1), ENOMEM);
        assert_eq!(
            ksm_depot_intern(d, 0, [0u64, 2, 3].as_ptr(), 3),
            0,
            "still found"
        );
        let mut p = null();
        assert_eq!(ksm_depot_get(d, 4, &mut p), enoent);
        assert_eq!(ksm_depot_get(d, 0, null_mut()), EINVAL);
        assert_eq!(ksm_depot_get(null(), 0, &mut p), EINVAL);
        assert_eq!(ksm_depot_len(null()), EINVAL);
        assert_eq!(ksm_depot_len(d), 4);
        assert_eq!(ksm_depot_clear(null_mut()), EINVAL);
        assert_eq!(ksm_depot_clear(d), 0);
        assert_eq!(ksm_depot_len(d), 0);
        assert_eq!(ksm_depot_get(d, 0, &mut p), enoent);
        assert_eq!(ksm_depot_intern(d, 0, [9u64].as_ptr(), 1), 0);
    }
}

#[test]
fn depot_threads_agree_on_ids() {
    let cfg = ksm_depot_config {
        capacity: 1024,
        arena_words: 1 << 14,
        nr_cpus: 4,
        seed: 5,
    };
    let (d, _mem) = c_depot(&cfg);
    let handle = d as usize;
    let stacks: Vec<Vec<u64>> = (0..300u64)
        .map(|i| (0..1 + i % 9).map(|j| i << 8 | j).collect())
        .collect();
    let stacks = std::sync::Arc::new(stacks);
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let stacks = stacks.clone();
            std::thread::spawn(move || {
                let d = handle as *const ksm_depot;
                let order: Vec<usize> = if t % 2 == 0 {
                    (0..stacks.len()).collect()
                } else {
                    (0..stacks.len()).rev().collect()
                };
                order
                    .into_iter()
                    .map(|i| {
                        let s = &stacks[i];
                        // SAFETY: the depot outlives the threads (joined below).
                        let id = unsafe { ksm_depot_intern(d, t, s.as_ptr(), s.len() as u32) };
                        (i, id)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ids = vec![-1 as c_long; stacks.len()];
    for t in threads {
        for (i, id) in t.join().unwrap() {
            assert!(id >= 0, "{id}");
            assert!(ids[i] < 0 || ids[i] == id, "stack {i}: {} and {id}", ids[i]);
            ids[i] = id;
        }
    }
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        stacks.len(),
        "different stacks, different ids"
    );
    for (i, &id) in ids.iter().enumerate() {
        let mut p = null();
        // SAFETY: `d` is live.
        let n = unsafe { ksm_depot_get(d, id as u32, &mut p) };
        // SAFETY: the depot keeps the words for its life.
        let got = unsafe { core::slice::from_raw_parts(p, n as usize) };
        assert_eq!(got, &stacks[i][..]);
    }
}
