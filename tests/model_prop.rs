//! Property tests: random operation sequences through `StackMap` and the
//! sequential reference model (`kstackmap::model`) must give identical
//! results and identical dumps, and the map must conserve its elements.
//!
//! Versioned ids: every `StackRef` the map hands out is kept beside the
//! model's for the same call; later `lookup_versioned`s of them must agree
//! (bytes or `Stale`), and two of the map's refs must be equal exactly when
//! the model's are (they name the same stored stack). `iter` must yield
//! the model's dump.

use kstackmap::model::Model;
use kstackmap::uapi::*;
use kstackmap::{Config, Error, MapAttr, StackMap, StackRef, Vma, VmaResolver};
use proptest::prelude::*;

/// A small address space: two files with build ids, one without, a hole.
struct Fake;
impl VmaResolver for Fake {
    fn find_vma(&self, ip: u64) -> Option<Vma> {
        let v = |start, end, file_offset, id: Option<u8>| Vma {
            start,
            end,
            file_offset,
            build_id: id.map(|b| [b; 20]),
        };
        match ip {
            0..0x2000 => Some(v(0x1000, 0x2000, 0x3000, Some(1))),
            0x2000..0x3000 => Some(v(0x2000, 0x3000, 0, Some(2))),
            0x3000..0x4000 => Some(v(0x3000, 0x4000, 0, None)),
            0x5000..0x6000 => Some(v(0x5000, 0x6000, 0x10, Some(3))),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    StackId {
        cpu: usize,
        stack: Vec<u64>,
        flags: u64,
        resolve: bool,
    },
    StackIdPe {
        cpu: usize,
        stack: Vec<u64>,
        flags: u64,
    },
    StackIdVersioned {
        cpu: usize,
        stack: Vec<u64>,
        flags: u64,
    },
    Lookup(u32),
    /// `lookup_versioned` of the n-th ref handed out so far (mod their count).
    LookupVersioned(usize),
    LookupAndDelete(u32),
    Delete(u32),
    NextKey(Option<u32>),
    Update(u32),
}

fn stack() -> impl Strategy<Value = Vec<u64>> {
    // A small pool (collisions, hits) plus arbitrary chains.
    let pool = (0u64..12).prop_map(|i| {
        (0..(i % 5 + 1))
            .map(|k| 0x1000 + 0x340 * i + k * 0x100)
            .collect()
    });
    let markers =
        prop::sample::select(vec![PERF_CONTEXT_KERNEL, PERF_CONTEXT_USER, 0x1800, 0x2800]);
    let any = prop::collection::vec(prop_oneof![3 => 0u64..0x7000, 1 => markers], 0..10);
    prop_oneof![3 => pool, 1 => any]
}

fn flags() -> impl Strategy<Value = u64> {
    let skip = prop_oneof![4 => Just(0u64), 2 => 0u64..4, 1 => 0u64..256];
    let bits = prop::sample::subsequence(
        vec![
            BPF_F_USER_STACK,
            BPF_F_FAST_STACK_CMP,
            BPF_F_REUSE_STACKID,
            1 << 12,
        ],
        0..=3,
    );
    (skip, bits).prop_map(|(s, b)| s | b.iter().fold(0, |a, f| a | f))
}

fn op() -> impl Strategy<Value = Op> {
    let id = prop_oneof![4 => 0u32..16, 1 => any::<u32>()];
    prop_oneof![
        6 => (0usize..8, stack(), flags(), any::<bool>())
            .prop_map(|(cpu, stack, flags, resolve)| Op::StackId { cpu, stack, flags, resolve }),
        2 => (0usize..8, stack(), flags()).prop_map(|(cpu, stack, flags)| Op::StackIdPe { cpu, stack, flags }),
        3 => (0usize..8, stack(), flags()).prop_map(|(cpu, stack, flags)| Op::StackIdVersioned { cpu, stack, flags }),
        2 => id.clone().prop_map(Op::Lookup),
        3 => any::<usize>().prop_map(Op::LookupVersioned),
        1 => id.clone().prop_map(Op::LookupAndDelete),
        1 => id.clone().prop_map(Op::Delete),
        1 => prop::option::of(id.clone()).prop_map(Op::NextKey),
        1 => id.prop_map(Op::Update),
    ]
}

fn attr() -> impl Strategy<Value = (MapAttr, Config)> {
    let max_entries = prop_oneof![8 => 1u32..12, 1 => Just(0u32), 1 => 12u32..70];
    let flags = prop_oneof![
        4 => Just(0u32),
        3 => Just(BPF_F_STACK_BUILD_ID),
        1 => Just(BPF_F_RDONLY),
        1 => Just(BPF_F_WRONLY),
        1 => any::<u32>().prop_map(|f| f & 0x3f),
    ];
    let frames = prop_oneof![8 => 1u32..6, 1 => 0u32..3];
    let frames_extra = prop_oneof![9 => Just(0u32), 1 => Just(4u32)];
    (
        max_entries,
        flags,
        frames,
        frames_extra,
        1usize..4,
        3u32..128,
    )
        .prop_map(
            |(max_entries, map_flags, frames, extra, nr_cpus, max_stack)| {
                let frame = if map_flags & BPF_F_STACK_BUILD_ID != 0 {
                    32
                } else {
                    8
                };
                let attr = MapAttr {
                    max_entries,
                    key_size: 4,
                    value_size: frames * frame + extra,
                    map_flags,
                    numa_node: 0,
                };
                (attr, Config { nr_cpus, max_stack })
            },
        )
}

fn dump(map: &StackMap) -> Result<Vec<(u32, Vec<u8>)>, Error> {
    let mut out = Vec::new();
    let mut key = None;
    loop {
        match map.get_next_key(key) {
            Ok(id) => {
                let mut v = vec![0u8; map.attr().value_size as usize];
                map.lookup(id, &mut v)?;
                out.push((id, v));
                key = Some(id);
            }
            Err(Error::NoEnt) => return Ok(out),
            Err(e) => return Err(e),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 512 }, ..ProptestConfig::default() })]

    #[test]
    fn map_equals_model((attr, cfg) in attr(), ops in prop::collection::vec(op(), 0..60)) {
        let map = StackMap::with_config(&attr, cfg);
        let model = Model::new(&attr, cfg);
        prop_assert_eq!(map.as_ref().err(), model.as_ref().err());
        let (Ok(mut map), Ok(mut model)) = (map, model) else { return Ok(()) };
        let vs = attr.value_size as usize;
        // (map's ref, model's ref) for every versioned call that succeeded.
        let mut refs: Vec<(StackRef, StackRef)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::StackId { cpu, stack, flags, resolve } => {
                    let (got, want) = if *resolve {
                        (map.get_stackid_resolved(*cpu, stack, *flags, &Fake),
                         model.get_stackid_resolved(stack, *flags, Some(&Fake)))
                    } else {
                        (map.get_stackid(*cpu, stack, *flags), model.get_stackid(stack, *flags))
                    };
                    prop_assert_eq!(got, want, "op {} {:?}", i, op);
                }
                Op::StackIdPe { cpu, stack, flags } => {
                    let got = map.get_stackid_pe_resolved(*cpu, stack, *flags, &Fake);
                    let want = model.get_stackid_pe(stack, *flags, Some(&Fake));
                    prop_assert_eq!(got, want, "op {} {:?}", i, op);
                }
                Op::StackIdVersioned { cpu, stack, flags } => {
                    let got = map.get_stackid_versioned(*cpu, stack, *flags);
                    let want = model.get_stackid_versioned(stack, *flags);
                    prop_assert_eq!(got.map(|r| r.id), want.map(|r| r.id), "op {} {:?}", i, op);
                    if let (Ok(g), Ok(w)) = (got, want) {
                        for (j, &(g2, w2)) in refs.iter().enumerate() {
                            prop_assert_eq!(g == g2, w == w2, "op {} {:?}: ref {} {:?}", i, op, j, g2);
                        }
                        refs.push((g, w));
                    }
                }
                Op::Lookup(id) => {
                    let mut v = vec![0xa5u8; vs];
                    let got = map.lookup(*id, &mut v).map(|()| v);
                    prop_assert_eq!(got, model.lookup(*id), "op {} {:?}", i, op);
                }
                Op::LookupVersioned(n) => {
                    if let Some(&(g, w)) = refs.get(n % refs.len().max(1)) {
                        let mut v = vec![0xa5u8; vs];
                        let got = map.lookup_versioned(g, &mut v).map(|()| v);
                        prop_assert_eq!(got, model.lookup_versioned(w), "op {} {:?}: {:?}", i, op, g);
                    }
                }
                Op::LookupAndDelete(id) => {
                    let mut v = vec![0xa5u8; vs];
                    let got = map.lookup_and_delete(*id, &mut v).map(|()| v);
                    prop_assert_eq!(got, model.lookup_and_delete(*id), "op {} {:?}", i, op);
                }
                Op::Delete(id) => prop_assert_eq!(map.delete(*id), model.delete(*id), "op {} {:?}", i, op),
                Op::NextKey(k) => prop_assert_eq!(map.get_next_key(*k), model.get_next_key(*k), "op {} {:?}", i, op),
                Op::Update(id) => prop_assert_eq!(map.update(*id, &vec![0; vs], 0), model.update(), "op {} {:?}", i, op),
            }
        }
        if attr.map_flags & BPF_F_WRONLY == 0 {
            prop_assert_eq!(dump(&map).unwrap(), model.dump());
        }
        for &(g, w) in &refs {
            let mut v = vec![0xa5u8; vs];
            let got = map.lookup_versioned(g, &mut v).map(|()| v);
            prop_assert_eq!(got, model.lookup_versioned(w), "at the end: {:?}", g);
        }
        match map.iter() {
            Ok(it) => {
                // Frames as value bytes, zero-padded: the model's dump.
                let got: Vec<(u32, Vec<u8>)> = it
                    .map(|(id, frames)| {
                        let mut v: Vec<u8> = frames.iter().flat_map(|ip| ip.to_ne_bytes()).collect();
                        v.resize(vs, 0);
                        (id, v)
                    })
                    .collect();
                prop_assert_eq!(got, model.dump());
            }
            Err(e) => {
                let want = if attr.map_flags & BPF_F_WRONLY != 0 { Error::Perm } else { Error::Inval };
                prop_assert_eq!(e, want);
                prop_assert!(e == Error::Perm || attr.map_flags & BPF_F_STACK_BUILD_ID != 0);
            }
        }
        let (used, free) = map.audit().expect("conservation");
        prop_assert_eq!(free as u32, model.free());
        prop_assert_eq!(used as u32 + model.free(), attr.max_entries);
    }
}
