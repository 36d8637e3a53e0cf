//! Threads hammer a small map with every operation at once; afterwards
//! the map must be consistent (every stored stack lives under its own id)
//! and conserve its elements, checked both by `audit` and through the
//! public API: delete everything, then `max_entries` stacks with distinct
//! ids must all insert without ENOMEM (no element leaked).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use kstackmap::uapi::{BPF_F_FAST_STACK_CMP, BPF_F_REUSE_STACKID};
use kstackmap::{trace_hash, Config, Error, MapAttr, StackMap};

const MAX_ENTRIES: u32 = 24;
const FRAMES: usize = 6;

/// A pool stack: 1..=FRAMES non-zero frames.
fn pool_stack(i: u64) -> Vec<u64> {
    (0..i % FRAMES as u64 + 1)
        .map(|k| 0x4000_0000 + i * 0x1000 + k * 8 + 1)
        .collect()
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn value_ips(v: &[u8]) -> Vec<u64> {
    let ips = v
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()));
    ips.take_while(|&ip| ip != 0).collect()
}

#[test]
fn hammer_then_conserve() {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8)
        * 2;
    let ops_per_thread: u64 = if cfg!(debug_assertions) {
        100_000
    } else {
        1_000_000
    };
    let attr = MapAttr {
        max_entries: MAX_ENTRIES,
        value_size: 8 * FRAMES as u32,
        ..MapAttr::default()
    };
    let mut map = StackMap::with_config(
        &attr,
        Config {
            nr_cpus: 4,
            ..Config::default()
        },
    )
    .unwrap();
    let torn = AtomicU64::new(0);
    let wrong_id = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (map, torn, wrong_id) = (&map, &torn, &wrong_id);
            s.spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ ((t as u64 + 1) * 0x1234_5678);
                let mut v = [0u8; 8 * FRAMES];
                for _ in 0..ops_per_thread {
                    let r = xorshift(&mut rng);
                    let cpu = (r >> 60) as usize;
                    let stack = pool_stack((r >> 32) & 63);
                    let id = (r >> 8) as u32 % map.n_buckets();
                    match r % 8 {
                        0..=2 => {
                            let flags = [0, BPF_F_REUSE_STACKID, BPF_F_FAST_STACK_CMP]
                                [(r >> 20) as usize % 3];
                            match map.get_stackid(cpu, &stack, flags) {
                                Ok(got) if got != trace_hash(&stack) & (map.n_buckets() - 1) => {
                                    wrong_id.fetch_add(1, Relaxed);
                                }
                                Ok(_) | Err(Error::Exist) | Err(Error::NoMem) => {}
                                Err(e) => panic!("get_stackid: {e:?}"),
                            }
                        }
                        3..=5 => {
                            if map.lookup(id, &mut v).is_ok() {
                                // A whole stack, stored under its own id.
                                let ips = value_ips(&v);
                                let i = (ips[0] - 0x4000_0001) / 0x1000;
                                if ips != pool_stack(i)
                                    || trace_hash(&ips) & (map.n_buckets() - 1) != id
                                {
                                    torn.fetch_add(1, Relaxed);
                                }
                            }
                        }
                        6 => {
                            let _ = map.delete(id);
                        }
                        _ => {
                            let _ = map.lookup_and_delete(id, &mut v);
                        }
                    }
                }
            });
        }
    });
    assert_eq!(torn.load(Relaxed), 0, "torn or misplaced lookups");
    assert_eq!(
        wrong_id.load(Relaxed),
        0,
        "ids that don't match the stack's hash"
    );
    let (used, free) = map.audit().expect("conservation");
    assert_eq!(used + free, MAX_ENTRIES as usize);

    // Through the public API: empty the map...
    while let Ok(id) = map.get_next_key(None) {
        map.delete(id).unwrap();
    }
    // ...then max_entries stacks with distinct ids must all fit.
    let mut ids = std::collections::HashSet::new();
    let mut inserted = 0;
    for i in 0u64.. {
        let stack = [0x7000_0000 + i];
        if ids.insert(trace_hash(&stack) & (map.n_buckets() - 1)) {
            assert!(map.get_stackid(0, &stack, 0).is_ok(), "element leaked");
            inserted += 1;
            if inserted == MAX_ENTRIES {
                break;
            }
        }
    }
    assert_eq!(map.audit(), Ok((MAX_ENTRIES as usize, 0)));
}
