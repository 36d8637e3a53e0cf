//! The benchmark's kernel port (`benches/kernel_port.rs`) must behave as
//! `StackMap` does on one thread, or the comparison measures different
//! work: same ids, same errnos, same lookup bytes, on random calls that hit,
//! collide, skip, fill the map and use every get_stackid flag.

#[path = "../benches/kernel_port.rs"]
mod kernel_port;
#[path = "../benches/workload.rs"]
#[allow(dead_code)]
mod workload;

use kernel_port::KernelPort;
use kstackmap::uapi::{BPF_F_FAST_STACK_CMP, BPF_F_REUSE_STACKID};
use kstackmap::{Config, MapAttr, StackMap};
use workload::Rng;

#[test]
fn port_matches_stackmap() {
    let (calls, pool_len) = if cfg!(miri) {
        (500, 40)
    } else {
        (100_000, 400)
    };
    for (max_entries, value_size, nr_cpus) in [(64, 8 * 16, 2), (300, 8 * 127, 3), (8, 64, 1)] {
        let attr = MapAttr {
            max_entries,
            key_size: 4,
            value_size,
            map_flags: 0,
            numa_node: 0,
        };
        let ours = StackMap::with_config(
            &attr,
            Config {
                nr_cpus,
                max_stack: 127,
            },
        )
        .unwrap();
        let port = KernelPort::new(max_entries, value_size, nr_cpus, 127);
        let mut rng = Rng::new(u64::from(max_entries));
        let pool = workload::mixed_depth_pool(&mut rng, pool_len, 1, 140);
        let (mut a, mut b) = (
            vec![0u8; value_size as usize],
            vec![0u8; value_size as usize],
        );
        for call in 0..calls {
            let s = &pool[rng.next_u64() as usize % pool.len()];
            let mut flags = rng.next_u64() % 3; // skip 0..2
            if rng.next_u64() % 2 == 0 {
                flags |= BPF_F_REUSE_STACKID;
            }
            if rng.next_u64() % 8 == 0 {
                flags |= BPF_F_FAST_STACK_CMP;
            }
            let cpu = rng.next_u64() as usize % 4;
            let want = ours.get_stackid(cpu, s, flags);
            let got = port.get_stackid(cpu, s, flags);
            assert_eq!(got, want, "call {call}: depth {} flags {flags:#x}", s.len());
            let id = rng.next_u64() as u32 % (max_entries.next_power_of_two() + 1);
            let want = ours.lookup(id, &mut a);
            let got = port.lookup(cpu, id, &mut b);
            assert_eq!(got, want, "call {call}: lookup {id}");
            assert_eq!(a, b, "call {call}: lookup {id} bytes");
            if rng.next_u64() % 16 == 0 {
                let want = ours.lookup_and_delete(id, &mut a);
                let got = port.lookup_and_delete(cpu, id, &mut b);
                assert_eq!(got, want, "call {call}: lookup_and_delete {id}");
                assert_eq!(a, b, "call {call}: lookup_and_delete {id} bytes");
            }
        }
    }
}
