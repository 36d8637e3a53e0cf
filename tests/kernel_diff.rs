//! Differential test against the running Linux kernel's stack trace map.
//!
//! - `creation_grid_matches`: ~3.7k `BPF_MAP_CREATE` attribute sets (edge
//!   and random sizes, every map flag bit alone and in pairs) against
//!   `StackMap::with_config`, errno for errno.
//! - `stack_replay`, `build_id_replay`: every case creates a real
//!   `BPF_MAP_TYPE_STACK_TRACE` map (ips, or `BPF_F_STACK_BUILD_ID`),
//!   attaches a probe (see `kernel/mod.rs`) and calls `getppid` from many
//!   distinct user call paths; the probe records the raw user chain
//!   (`bpf_get_stack`), what `bpf_get_stackid` returned for the flags under
//!   test, and a second `bpf_get_stack` with flags and size under test.
//!   Syscall-side operations (lookup, delete, lookup-and-delete, update,
//!   get-next-key) are interleaved. The recorded run is then replayed, in
//!   the same order, through `StackMap` (build ids through
//!   `ProcMaps::for_pid(self)`) and `get_stack_max`; every result (id or
//!   errno, value and buffer bytes) must be equal, and at the end both
//!   maps are dumped and must be byte-identical.
//!
//! The paths run through Rust functions, machine-code stubs in mappings
//! without a build id, and fake frames whose return addresses are odd ips
//! (in no mapping, below a mapping, kernel addresses): see
//! `kernel::call_path`. User stacks only: the kernel part differs between
//! the probe's call sites. Everything is sequential, so the kernel's
//! syscall-side swap-out quirk cannot show.
//!
//! Each case has a seed, printed on failure; `KDIFF_SEED=<seed> cargo test
//! --test kernel_diff` runs that case alone (the same calls, paths, flags
//! and syscall-side ops; the addresses, and so the ids of ips maps, change
//! with ASLR unless run under `setarch -R`). `KDIFF_CASES=<n>` runs more
//! cases. Without CAP_BPF (or BPF) the suite prints
//! `KERNEL DIFF SKIPPED: <why>` and passes.
#![cfg(target_os = "linux")]

mod kernel;

use kernel::ours::{self, errno, Ours};
use kernel::report::{
    current_cpu, env_seed, errno_name, first_value_diff, loud, nr_cpus, path_byte, seeds, show,
    show_value, skipped, where_differs, Shown,
};
use kernel::{Capture, CreateAttr, Dump, Errno, GetStack, Map, Probe, Rng, GS_BUF_MAX};
use kstackmap::uapi::*;
use std::collections::HashMap;
use std::sync::Mutex;

/// The kernel cases run one at a time: the build-id path gives up (all
/// frames IP) when another thread holds the mmap lock, and the probes are
/// per-thread anyway.
static SERIAL: Mutex<()> = Mutex::new(());

// --- what is compared ------------------------------------------------------

/// The map under test, through the same operations as the kernel's.
trait Subject {
    fn get_stackid(&self, cpu: usize, chain: &[u64], flags: u64) -> Result<u32, Errno>;
    fn lookup(&self, id: u32, value: &mut [u8]) -> Result<(), Errno>;
    fn lookup_and_delete(&self, id: u32, value: &mut [u8]) -> Result<(), Errno>;
    fn delete(&self, id: u32) -> Result<(), Errno>;
    fn update(&self, id: u32, value: &[u8], flags: u64) -> Result<(), Errno>;
    fn get_next_key(&self, key: Option<u32>) -> Result<u32, Errno>;
    /// `bpf_get_stack` on the same chain (not a map operation).
    fn get_stack(&self, chain: &[u64], flags: u64, buf: &mut [u8]) -> Result<usize, Errno>;
}

impl Subject for Ours<'_> {
    fn get_stackid(&self, cpu: usize, chain: &[u64], flags: u64) -> Result<u32, Errno> {
        errno(match self.resolver {
            Some(r) => self.map.get_stackid_resolved(cpu, chain, flags, r),
            None => self.map.get_stackid(cpu, chain, flags),
        })
    }
    fn lookup(&self, id: u32, value: &mut [u8]) -> Result<(), Errno> {
        errno(self.map.lookup(id, value))
    }
    fn lookup_and_delete(&self, id: u32, value: &mut [u8]) -> Result<(), Errno> {
        errno(self.map.lookup_and_delete(id, value))
    }
    fn delete(&self, id: u32) -> Result<(), Errno> {
        errno(self.map.delete(id))
    }
    fn update(&self, id: u32, value: &[u8], flags: u64) -> Result<(), Errno> {
        errno(self.map.update(id, value, flags))
    }
    fn get_next_key(&self, key: Option<u32>) -> Result<u32, Errno> {
        errno(self.map.get_next_key(key))
    }
    fn get_stack(&self, chain: &[u64], flags: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        errno(kstackmap::get_stack_max(
            chain,
            flags,
            buf,
            self.resolver,
            self.max_stack,
        ))
    }
}

/// One operation as the kernel did it.
#[derive(Clone, Debug)]
enum Op {
    Call {
        path: Vec<u8>,
        flags: u64,
        cpu: usize,
        chain: Vec<u64>,
        kernel: Result<u32, Errno>,
    },
    /// The probe's second `bpf_get_stack`, on the chain of the `Call`
    /// before it.
    GetStack {
        chain: Vec<u64>,
        gs: GetStack,
        kernel: Result<usize, Errno>,
        buf: Vec<u8>,
    },
    Lookup {
        id: u32,
        kernel: Result<Vec<u8>, Errno>,
    },
    LookupAndDelete {
        id: u32,
        kernel: Result<Vec<u8>, Errno>,
    },
    Delete {
        id: u32,
        kernel: Result<(), Errno>,
    },
    Update {
        id: u32,
        flags: u64,
        kernel: Result<(), Errno>,
    },
    NextKey {
        key: Option<u32>,
        kernel: Result<u32, Errno>,
    },
}

// --- cases -----------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Roomy map, default flags.
    Plain,
    /// 1..6 entries: fills up (ENOMEM), with and without REUSE.
    Fill,
    /// Few buckets, many stacks: EEXIST.
    Collide,
    /// BPF_F_REUSE_STACKID on every call.
    Reuse,
    /// BPF_F_FAST_STACK_CMP (with REUSE sometimes).
    FastCmp,
    /// skip 0..255, often near the chain's length (EFAULT at skip >= nr).
    Skip,
    /// value_size below the stacks' depth: truncation, with skips.
    Trunc,
    /// Syscall-side operations interleaved (40%), RDONLY / WRONLY maps.
    SysOps,
    /// Everything at random, invalid flags included.
    Mixed,
}

const KINDS: [Kind; 9] = [
    Kind::Plain,
    Kind::Fill,
    Kind::Collide,
    Kind::Reuse,
    Kind::FastCmp,
    Kind::Skip,
    Kind::Trunc,
    Kind::SysOps,
    Kind::Mixed,
];

#[derive(Clone, Debug)]
struct Case {
    seed: u64,
    kind: Kind,
    attr: CreateAttr,
    ops: usize,
    build_id: bool,
}

impl Case {
    fn new(seed: u64, build_id: bool) -> Case {
        let kind = KINDS[(seed % KINDS.len() as u64) as usize];
        let mut rng = Rng::new(seed ^ 0xC0FF_EE00);
        let elem = if build_id { 32 } else { 8 };
        let depth = |rng: &mut Rng, lo: u64, hi: u64| (elem * rng.range(lo, hi + 1)) as u32;
        let (max_entries, value_size) = match kind {
            Kind::Plain => (rng.range(16, 513) as u32, depth(&mut rng, 1, 127)),
            Kind::Fill => (rng.range(1, 7) as u32, depth(&mut rng, 1, 127)),
            Kind::Collide => (rng.range(2, 9) as u32, depth(&mut rng, 1, 127)),
            Kind::Reuse => (rng.range(2, 17) as u32, depth(&mut rng, 1, 127)),
            Kind::FastCmp => (rng.range(2, 33) as u32, depth(&mut rng, 1, 127)),
            Kind::Skip => (rng.range(8, 257) as u32, depth(&mut rng, 1, 127)),
            Kind::Trunc => (rng.range(4, 129) as u32, depth(&mut rng, 1, 8)),
            Kind::SysOps => (rng.range(4, 65) as u32, depth(&mut rng, 1, 127)),
            Kind::Mixed => (rng.range(1, 300) as u32, depth(&mut rng, 1, 127)),
        };
        let mut map_flags = if build_id { BPF_F_STACK_BUILD_ID } else { 0 };
        if matches!(kind, Kind::SysOps | Kind::Mixed) {
            map_flags |= *rng.pick(&[
                0,
                0,
                BPF_F_NUMA_NODE,
                BPF_F_RDONLY,
                BPF_F_WRONLY,
                BPF_F_RDONLY | BPF_F_NUMA_NODE,
            ]);
        }
        Case {
            seed,
            kind,
            attr: CreateAttr {
                map_type: kernel::MAP_TYPE_STACK_TRACE,
                key_size: 4,
                value_size,
                max_entries,
                map_flags,
                numa_node: 0,
            },
            ops: 150,
            build_id,
        }
    }

    fn n_buckets(&self) -> u32 {
        self.attr.max_entries.next_power_of_two()
    }
}

/// Paths revisited often: the 13 paths of depth 0..=2 through the three
/// Rust functions.
fn hot_path(rng: &mut Rng) -> Vec<u8> {
    let d = rng.range(0, 3) as usize;
    (0..d).map(|_| rng.range(0, 3) as u8).collect()
}

fn random_path(rng: &mut Rng) -> Vec<u8> {
    // Mostly 0..40 frames deep; now and then deeper than perf_event_max_stack.
    let d = if rng.chance(1, 15) {
        rng.range(40, 70)
    } else {
        rng.range(0, 40)
    } as usize;
    (0..d).map(|_| path_byte(rng)).collect()
}

fn call_flags(case: &Case, rng: &mut Rng, last_nr: usize) -> u64 {
    let mut f = BPF_F_USER_STACK;
    let skip_near = |rng: &mut Rng| {
        let lo = last_nr.saturating_sub(3) as u64;
        rng.range(lo, lo + 7).min(255)
    };
    match case.kind {
        Kind::Plain | Kind::Collide => {}
        Kind::Fill => {
            if rng.chance(1, 3) {
                f |= BPF_F_REUSE_STACKID;
            }
        }
        Kind::Reuse => f |= BPF_F_REUSE_STACKID,
        Kind::FastCmp => {
            f |= BPF_F_FAST_STACK_CMP;
            if rng.chance(1, 3) {
                f |= BPF_F_REUSE_STACKID;
            }
        }
        Kind::Skip => {
            f |= match rng.range(0, 4) {
                0 => 0,
                1 => rng.range(0, 256),
                2 => rng.range(0, 8),
                _ => skip_near(rng),
            };
            if rng.chance(1, 4) {
                f |= BPF_F_REUSE_STACKID;
            }
        }
        Kind::Trunc => {
            if rng.chance(1, 2) {
                f |= rng.range(0, 6);
            }
            if rng.chance(1, 3) {
                f |= BPF_F_REUSE_STACKID;
            }
        }
        Kind::SysOps | Kind::Mixed => {
            if rng.chance(1, 3) {
                f |= BPF_F_REUSE_STACKID;
            }
            if rng.chance(1, 6) {
                f |= BPF_F_FAST_STACK_CMP;
            }
            if rng.chance(1, 5) {
                f |= if rng.chance(1, 2) {
                    rng.range(0, 256)
                } else {
                    skip_near(rng)
                };
            }
        }
    }
    // Invalid flags: any bit above REUSE_STACKID (BPF_F_USER_BUILD_ID too).
    let invalid = match case.kind {
        Kind::Mixed => rng.chance(1, 10),
        _ => rng.chance(1, 40),
    };
    if invalid {
        f |= 1 << rng.range(11, 64);
    }
    f
}

/// The `bpf_get_stack` call under test: user stacks only (the kernel part
/// differs between the probe's call sites); build-id frames when the case
/// has a resolver for them; now and then invalid flags or sizes.
fn get_stack_call(case: &Case, rng: &mut Rng, last_nr: usize) -> GetStack {
    let mut flags = BPF_F_USER_STACK;
    if case.build_id && rng.chance(2, 3) {
        flags |= BPF_F_USER_BUILD_ID;
    }
    flags |= match rng.range(0, 6) {
        0 => rng.range(0, 256),
        1 => {
            let lo = last_nr.saturating_sub(2) as u64;
            rng.range(lo, lo + 5).min(255)
        }
        2 => rng.range(0, 8),
        _ => 0,
    };
    let elem = if flags & BPF_F_USER_BUILD_ID != 0 {
        32
    } else {
        8
    };
    let mut size = match rng.range(0, 8) {
        0 => 0,
        1 => elem * rng.range(1, 4) as usize,
        _ => elem * rng.range(1, (GS_BUF_MAX / elem) as u64 + 1) as usize,
    };
    match rng.range(0, 20) {
        // BPF_F_USER_BUILD_ID needs BPF_F_USER_STACK: EINVAL, no walk.
        0 => flags = (flags & !BPF_F_USER_STACK) | BPF_F_USER_BUILD_ID,
        1 => flags |= 1 << rng.range(12, 64),
        2 if size > 0 => size = rng.range(1, size as u64 + 1) as usize,
        _ => {}
    }
    GetStack { flags, size }
}

fn pick_id(case: &Case, rng: &mut Rng, seen: &[u32]) -> u32 {
    let nb = case.n_buckets();
    match rng.range(0, 10) {
        0..=4 if !seen.is_empty() => *rng.pick(seen),
        0..=6 => rng.range(0, u64::from(nb)) as u32,
        7 => nb + rng.range(0, 4) as u32,
        8 => *rng.pick(&[u32::MAX, 1 << 31, nb.wrapping_sub(1), 0]),
        _ => rng.next_u64() as u32,
    }
}

fn result_of(c: &Capture) -> Result<u32, Errno> {
    if c.stackid >= 0 {
        Ok(u32::try_from(c.stackid).expect("stack id fits in u32"))
    } else {
        Err(i32::try_from(-c.stackid).expect("errno fits in i32"))
    }
}

/// Runs `case` against the kernel; returns the ops with the kernel's
/// results and the final dump.
fn record(case: &Case, probe: &Probe) -> (Vec<Op>, Dump) {
    let mut rng = Rng::new(case.seed);
    let sys_ops = match case.kind {
        Kind::SysOps => 40,
        Kind::Mixed => 15,
        Kind::Fill | Kind::Collide => 5,
        _ => 2,
    };
    let hot = if case.kind == Kind::Collide { 2 } else { 5 };
    let vs = case.attr.value_size as usize;
    let map = &probe.stack;
    let mut ops = Vec::with_capacity(case.ops);
    let mut seen: Vec<u32> = Vec::new();
    let mut last_nr = 20;
    let mut chains: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
    let mut paths: HashMap<Vec<u64>, Vec<u8>> = HashMap::new();
    for _ in 0..case.ops {
        if rng.range(0, 100) < sys_ops {
            let op = match rng.range(0, 6) {
                0 | 1 => {
                    let id = pick_id(case, &mut rng, &seen);
                    let mut v = vec![0u8; vs];
                    Op::Lookup {
                        id,
                        kernel: map.lookup(id, &mut v).map(|()| v),
                    }
                }
                2 => {
                    let id = pick_id(case, &mut rng, &seen);
                    Op::Delete {
                        id,
                        kernel: map.delete(id),
                    }
                }
                3 => {
                    let id = pick_id(case, &mut rng, &seen);
                    let mut v = vec![0u8; vs];
                    Op::LookupAndDelete {
                        id,
                        kernel: map.lookup_and_delete(id, &mut v).map(|()| v),
                    }
                }
                4 => {
                    let id = pick_id(case, &mut rng, &seen);
                    let flags = *rng.pick(&[0, 1, 2, 4]);
                    let v = vec![0u8; vs];
                    Op::Update {
                        id,
                        flags,
                        kernel: map.update(id, &v, flags),
                    }
                }
                _ => {
                    let key = if rng.chance(1, 4) {
                        None
                    } else {
                        Some(pick_id(case, &mut rng, &seen))
                    };
                    Op::NextKey {
                        key,
                        kernel: map.get_next_key(key),
                    }
                }
            };
            ops.push(op);
            continue;
        }
        let path = if rng.chance(1, hot) {
            hot_path(&mut rng)
        } else {
            random_path(&mut rng)
        };
        let flags = call_flags(case, &mut rng, last_nr);
        let gs = get_stack_call(case, &mut rng, last_nr);
        let cap = probe.capture(&path, flags, gs);
        let cpu = current_cpu();
        assert!(
            cap.get_stack > 0,
            "seed {}: bpf_get_stack returned {}",
            case.seed,
            cap.get_stack
        );
        last_nr = cap.chain.len();
        // Same path, same chain; distinct paths, distinct chains (when the
        // chain is not cut at perf_event_max_stack).
        if let Some(prev) = chains.get(&path) {
            assert_eq!(
                prev, &cap.chain,
                "seed {}: path {path:?} gave two different chains",
                case.seed
            );
        }
        if cap.chain.len() < kernel::CHAIN_MAX {
            if let Some(prev) = paths.get(&cap.chain) {
                assert_eq!(
                    prev, &path,
                    "seed {}: two paths gave the same chain: no frame pointers? (.cargo/config.toml \
                     sets -C force-frame-pointers=yes; a RUSTFLAGS in the environment replaces it)",
                    case.seed
                );
            }
            paths.insert(cap.chain.clone(), path.clone());
        }
        chains.insert(path.clone(), cap.chain.clone());
        let kernel = result_of(&cap);
        if let Ok(id) = kernel {
            seen.push(id);
        }
        ops.push(Op::Call {
            path,
            flags,
            cpu,
            chain: cap.chain.clone(),
            kernel,
        });
        ops.push(Op::GetStack {
            chain: cap.chain,
            gs,
            kernel: if cap.gs_ret >= 0 {
                Ok(usize::try_from(cap.gs_ret).expect("get_stack returns a size"))
            } else {
                Err(i32::try_from(-cap.gs_ret).expect("errno fits in i32"))
            },
            buf: cap.gs_buf,
        });
    }
    (ops, map.dump())
}

fn dump_subject(s: &dyn Subject, vs: usize) -> Dump {
    kernel::dump_by(vs, |k| s.get_next_key(k), |id, v| s.lookup(id, v))
}

/// Replays `ops` through `s`; returns the number of results compared, or
/// a description of the first mismatch.
fn replay(case: &Case, ops: &[Op], kdump: &Dump, s: &dyn Subject) -> Result<usize, String> {
    let vs = case.attr.value_size as usize;
    let frame = if case.build_id { 32 } else { 8 };
    let mut compared = 0;
    for (i, op) in ops.iter().enumerate() {
        let (ok, ours, theirs) = match op {
            Op::Call {
                chain,
                flags,
                cpu,
                kernel,
                ..
            } => {
                let r = s.get_stackid(*cpu, chain, *flags);
                (r == *kernel, show(&r), show(kernel))
            }
            Op::GetStack {
                chain,
                gs,
                kernel,
                buf,
            } => {
                let mut v = vec![0xa5u8; gs.size];
                let r = s.get_stack(chain, gs.flags, &mut v);
                let frame = if gs.flags & BPF_F_USER_BUILD_ID != 0 {
                    32
                } else {
                    8
                };
                (
                    r == *kernel && v == *buf,
                    format!(
                        "{} buffer {}{}",
                        show(&r),
                        v.shown(),
                        where_differs(buf, &v, frame)
                    ),
                    format!("{} buffer {}", show(kernel), buf.shown()),
                )
            }
            Op::Lookup { id, kernel } => {
                let mut v = vec![0u8; vs];
                let r = s.lookup(*id, &mut v).map(|()| v);
                (r == *kernel, show_value(&r, kernel, frame), show(kernel))
            }
            Op::LookupAndDelete { id, kernel } => {
                let mut v = vec![0u8; vs];
                let r = s.lookup_and_delete(*id, &mut v).map(|()| v);
                (r == *kernel, show_value(&r, kernel, frame), show(kernel))
            }
            Op::Delete { id, kernel } => {
                let r = s.delete(*id);
                (r == *kernel, show(&r), show(kernel))
            }
            Op::Update { id, flags, kernel } => {
                let r = s.update(*id, &vec![0u8; vs], *flags);
                (r == *kernel, show(&r), show(kernel))
            }
            Op::NextKey { key, kernel } => {
                let r = s.get_next_key(*key);
                (r == *kernel, show(&r), show(kernel))
            }
        };
        compared += 1;
        if !ok {
            return Err(format!(
                "seed {} ({:?}, {:?}): op #{i} {}\n  kernel: {theirs}\n  ours:   {ours}",
                case.seed,
                case.kind,
                case.attr,
                describe(op),
            ));
        }
    }
    let odump = dump_subject(s, vs);
    if odump != *kdump {
        return Err(format!(
            "seed {} ({:?}, {:?}): final dumps differ\n  kernel: {} entries, ended {} ids {:?}\n  ours:   {} entries, ended {} ids {:?}{}",
            case.seed,
            case.kind,
            case.attr,
            kdump.0.len(),
            errno_name(kdump.1),
            kdump.0.iter().map(|e| e.0).collect::<Vec<_>>(),
            odump.0.len(),
            errno_name(odump.1),
            odump.0.iter().map(|e| e.0).collect::<Vec<_>>(),
            first_value_diff(kdump, &odump, frame),
        ));
    }
    Ok(compared + kdump.0.len() + 1)
}

fn describe(op: &Op) -> String {
    match op {
        Op::Call {
            path,
            flags,
            cpu,
            chain,
            ..
        } => format!(
            "get_stackid(cpu {cpu}, flags {flags:#x}, skip {}, {} ips {chain:x?}) via path {path:?}",
            flags & BPF_F_SKIP_FIELD_MASK,
            chain.len()
        ),
        Op::GetStack { chain, gs, .. } => format!(
            "get_stack(flags {:#x}, skip {}, size {}, {} ips {chain:x?})",
            gs.flags,
            gs.flags & BPF_F_SKIP_FIELD_MASK,
            gs.size,
            chain.len()
        ),
        Op::Lookup { id, .. } => format!("lookup({id})"),
        Op::LookupAndDelete { id, .. } => format!("lookup_and_delete({id})"),
        Op::Delete { id, .. } => format!("delete({id})"),
        Op::Update { id, flags, .. } => format!("update({id}, flags {flags})"),
        Op::NextKey { key, .. } => format!("get_next_key({key:?})"),
    }
}

#[derive(Default)]
struct Tally {
    cases: usize,
    compared: usize,
    calls: usize,
    /// Calls whose chain holds a fake frame's ip.
    fake: usize,
    outcomes: HashMap<String, usize>,
}

impl Tally {
    fn add(&mut self, ops: &[Op], compared: usize) {
        self.cases += 1;
        self.compared += compared;
        for op in ops {
            let outcome = |r: Result<(), Errno>| match r {
                Ok(()) => "ok".to_string(),
                Err(e) => errno_name(e),
            };
            let k = match op {
                Op::Call { kernel, chain, .. } => {
                    self.calls += 1;
                    if chain.iter().any(|ip| kernel::fake_ips().contains(ip)) {
                        self.fake += 1;
                    }
                    match kernel {
                        Ok(_) => "get_stackid:id".to_string(),
                        Err(e) => format!("get_stackid:{}", errno_name(*e)),
                    }
                }
                Op::GetStack { kernel, .. } => match kernel {
                    Ok(0) => "get_stack:0".to_string(),
                    Ok(_) => "get_stack:bytes".to_string(),
                    Err(e) => format!("get_stack:{}", errno_name(*e)),
                },
                Op::Lookup { kernel, .. } => {
                    format!(
                        "lookup:{}",
                        outcome(kernel.as_ref().map(drop).map_err(|e| *e))
                    )
                }
                Op::LookupAndDelete { kernel, .. } => format!(
                    "lookup_and_delete:{}",
                    outcome(kernel.as_ref().map(drop).map_err(|e| *e))
                ),
                Op::Delete { kernel, .. } => format!("delete:{}", outcome(*kernel)),
                Op::Update { kernel, .. } => format!("update:{}", outcome(*kernel)),
                Op::NextKey { kernel, .. } => {
                    format!("get_next_key:{}", outcome(kernel.map(drop)))
                }
            };
            *self.outcomes.entry(k).or_default() += 1;
        }
    }

    fn summary(&self, what: &str) -> String {
        let mut o: Vec<_> = self.outcomes.iter().collect();
        o.sort();
        format!(
            "kernel diff ({what}): {} seeded cases, {} results compared ({} get_stackid calls, {} through fake frames; kernel outcomes {o:?}), 0 mismatches",
            self.cases, self.compared, self.calls, self.fake
        )
    }
}

#[test]
fn stack_replay() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if skipped() {
        return;
    }
    let max_stack = kernel::sysctl_max_stack();
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for seed in seeds(1, 48) {
        let case = Case::new(seed, false);
        let ours = ours::create(&case.attr, nr_cpus(), max_stack).unwrap_or_else(|e| {
            panic!(
                "seed {seed}: StackMap refused {:?}: {}",
                case.attr,
                errno_name(e)
            )
        });
        let kmap = Map::create(case.attr).unwrap_or_else(|e| {
            panic!(
                "seed {seed}: kernel refused {:?}: {}",
                case.attr,
                errno_name(e)
            )
        });
        let probe = Probe::attach(kmap);
        let (ops, kdump) = record(&case, &probe);
        drop(probe);
        let ours = Ours {
            map: ours,
            resolver: None,
            max_stack,
        };
        match replay(&case, &ops, &kdump, &ours) {
            Ok(n) => tally.add(&ops, n),
            Err(m) => failures.push(format!(
                "{m}\n  replay: KDIFF_SEED={seed} setarch -R cargo test --test kernel_diff stack_replay"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the cases differ from the kernel:\n{}",
        failures.len(),
        failures.join("\n")
    );
    loud(&tally.summary("stack replay"));
}

// --- creation grid -----------------------------------------------------------

/// Bytes the kernel allocates for a stack map (buckets and elements).
fn kernel_cost(a: &CreateAttr) -> u64 {
    let nb = u64::from(a.max_entries).next_power_of_two();
    nb * 8 + u64::from(a.max_entries) * (16 + u64::from(a.value_size))
}

/// Whether the kernel would get as far as allocating the map (a rough
/// filter used only to keep the grid's memory small; not the thing tested).
fn might_allocate(a: &CreateAttr) -> bool {
    a.key_size == 4 && a.value_size >= 8 && a.value_size % 8 == 0 && a.max_entries <= 1 << 31
}

/// The grid: edge and random values of every attribute, every map flag bit
/// alone and in pairs. Deterministic for `seed`.
fn creation_grid(seed: u64) -> Vec<CreateAttr> {
    let mut rng = Rng::new(seed);
    let mut entries: Vec<u32> = vec![0, 1, 2, 3, 5, 7];
    for k in 2..=20 {
        entries.extend([(1u32 << k) - 1, 1 << k, (1 << k) + 1]);
    }
    // Above 2^20 only with sizes that cannot allocate much (see below);
    // above 2^31 the kernel answers E2BIG before allocating. 2^31 itself
    // would allocate 16 GiB of buckets in the kernel: skipped.
    for k in 21..31 {
        entries.push((1 << k) + 1);
    }
    entries.extend([(1u32 << 31) - 1, (1 << 31) + 1, u32::MAX - 1, u32::MAX]);
    let values: Vec<u32> = vec![
        0, 1, 4, 7, 8, 9, 12, 15, 16, 24, 31, 32, 33, 40, 63, 64, 96, 128, 1000, 1008, 1015, 1016,
        1017, 1020, 1024, 1032, 2048, 4032, 4064, 4065, 4072, 4088, 4096,
    ];
    let flag_sets: Vec<u32> = {
        let mut f = vec![0];
        for i in 0..32 {
            f.push(1 << i);
        }
        for i in 0..32 {
            for j in i + 1..32 {
                f.push((1 << i) | (1 << j));
            }
        }
        f
    };
    let valid_flags = [
        0,
        BPF_F_NUMA_NODE,
        BPF_F_RDONLY,
        BPF_F_WRONLY,
        BPF_F_STACK_BUILD_ID,
        BPF_F_STACK_BUILD_ID | BPF_F_RDONLY,
        BPF_F_STACK_BUILD_ID | BPF_F_NUMA_NODE,
    ];
    let pick_attr = |rng: &mut Rng, map_flags: u32| {
        let max_entries = match rng.range(0, 3) {
            0 => *rng.pick(&entries),
            1 => rng.range(1, 1 << 20) as u32,
            _ => rng.range(1, 600) as u32,
        };
        let key_size = if rng.chance(3, 4) {
            4
        } else {
            rng.range(0, 9) as u32
        };
        let value_size = match rng.range(0, 4) {
            0 => *rng.pick(&values),
            1 => rng.range(0, 4097) as u32,
            2 => 8 * rng.range(1, 130) as u32,
            _ => 32 * rng.range(1, 130) as u32,
        };
        let mut a = CreateAttr {
            map_type: kernel::MAP_TYPE_STACK_TRACE,
            key_size,
            value_size,
            max_entries,
            map_flags,
            numa_node: 0,
        };
        // Keep what either side may allocate under 8 MiB: a big map gets
        // a value size no stack map accepts (not a multiple of 8).
        if might_allocate(&a) && kernel_cost(&a) > 8 << 20 {
            a.value_size = 8 * rng.range(1, 500) as u32 + rng.range(1, 8) as u32;
        }
        a
    };
    let mut grid = Vec::new();
    for &f in &flag_sets {
        for _ in 0..3 {
            grid.push(pick_attr(&mut rng, f));
        }
    }
    for _ in 0..2000 {
        let f = *rng.pick(&valid_flags);
        grid.push(pick_attr(&mut rng, f));
    }
    // Every edge value of one attribute with the others valid.
    for &me in &entries {
        let mut a = pick_attr(&mut rng, 0);
        a.max_entries = me;
        a.key_size = 4;
        a.value_size = 8;
        if kernel_cost(&a) > 8 << 20 && me <= 1 << 31 {
            a.value_size = 9;
        }
        grid.push(a);
    }
    for &vs in &values {
        for &f in &[0, BPF_F_STACK_BUILD_ID] {
            let mut a = pick_attr(&mut rng, f);
            a.max_entries = rng.range(1, 100) as u32;
            a.key_size = 4;
            a.value_size = vs;
            grid.push(a);
        }
    }
    // numa_node is read only with BPF_F_NUMA_NODE; the kernel takes
    // NUMA_NO_NODE (-1) as "any node" and refuses nodes that are offline.
    // Found here (grid seed 401444, cases #3752/#3753): with
    // BPF_F_NUMA_NODE and numa_node = u32::MAX the kernel creates the map
    // (Ok) and StackMap::with_config said EINVAL (src/attr.rs only let
    // node 0 through); fixed with NUMA_NO_NODE in src/attr.rs.
    for &node in &[0, 1, 2, 63, 1024, 0x7fff_ffff, u32::MAX - 1, u32::MAX] {
        for &f in &[0, BPF_F_NUMA_NODE, BPF_F_NUMA_NODE | BPF_F_STACK_BUILD_ID] {
            let mut a = pick_attr(&mut rng, f);
            a.max_entries = rng.range(1, 100) as u32;
            a.key_size = 4;
            a.value_size = 32 * rng.range(1, 20) as u32;
            a.numa_node = node;
            grid.push(a);
        }
    }
    for ks in 0..=8 {
        let mut a = pick_attr(&mut rng, 0);
        a.max_entries = 4;
        a.key_size = ks;
        a.value_size = 8;
        grid.push(a);
    }
    grid
}

/// What DESIGN.md says the kernel answers (checked against the kernel
/// here too).
fn documented_create(a: &CreateAttr, max_stack: u32) -> Result<(), Errno> {
    // map_create: an offline node (this machine has node 0 only; -1 is
    // NUMA_NO_NODE, "any node") is EINVAL before the map's own checks.
    let numa_bad =
        a.map_flags & BPF_F_NUMA_NODE != 0 && a.numa_node != 0 && a.numa_node != u32::MAX;
    if numa_bad
        || a.map_flags & !STACK_CREATE_FLAG_MASK != 0
        || a.map_flags & (BPF_F_RDONLY | BPF_F_WRONLY) == BPF_F_RDONLY | BPF_F_WRONLY
        || a.max_entries == 0
        || a.key_size != 4
        || a.value_size < 8
        || a.value_size % 8 != 0
    {
        return Err(libc::EINVAL);
    }
    let elem = if a.map_flags & BPF_F_STACK_BUILD_ID != 0 {
        if a.value_size % 32 != 0 {
            return Err(libc::EINVAL);
        }
        32
    } else {
        8
    };
    if a.value_size / elem > max_stack {
        return Err(libc::EINVAL);
    }
    if a.max_entries > 1 << 31 {
        return Err(libc::E2BIG);
    }
    Ok(())
}

#[test]
fn creation_grid_matches() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if skipped() {
        return;
    }
    let max_stack = kernel::sysctl_max_stack();
    let seed = env_seed().unwrap_or(0x6_2024);
    let grid = creation_grid(seed);
    let mut tally: HashMap<String, usize> = HashMap::new();
    let mut failures = Vec::new();
    let mut map_struct = None;
    for (i, a) in grid.iter().enumerate() {
        assert!(a.max_entries != 1 << 31);
        let k = Map::create(*a).map(|m| m.fdinfo_memlock());
        let kr = k.as_ref().map(|_| ()).map_err(|e| *e);
        let doc = documented_create(a, max_stack);
        let ours = ours::create(a, nr_cpus(), max_stack).map(drop);
        *tally.entry(show(&kr)).or_default() += 1;
        if kr != ours {
            failures.push(format!(
                "grid seed {seed} case #{i} {a:?}: kernel {} ours {}",
                show(&kr),
                show(&ours)
            ));
        }
        if kr != doc {
            failures.push(format!(
                "grid seed {seed} case #{i} {a:?}: kernel {} documented {}",
                show(&kr),
                show(&doc)
            ));
        }
        // fdinfo's memlock is the kernel's map_mem_usage (6.4+): the map
        // struct (a constant) + n_buckets * 8 + max_entries * (16 + value_size).
        if let Ok(Some(memlock)) = k {
            let overhead = memlock.wrapping_sub(kernel_cost(a));
            match map_struct {
                None => map_struct = Some(overhead),
                Some(o) if o != overhead => failures.push(format!(
                    "grid seed {seed} case #{i} {a:?}: kernel memlock {memlock} = cost {} + {overhead}, other maps + {o}",
                    kernel_cost(a)
                )),
                Some(_) => {}
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} creation results differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let mut t: Vec<_> = tally.into_iter().collect();
    t.sort();
    let line = format!(
        "kernel diff (creation grid, seed {seed}): {} attribute sets compared {t:?}, 0 mismatches; fdinfo memlock = {} + n_buckets * 8 + max_entries * (16 + value_size)",
        grid.len(),
        map_struct.map_or("?".to_string(), |o| o.to_string())
    );
    loud(&line);
}

// --- build-id maps -------------------------------------------------------------

/// Counts the statuses of the `StackBuildId` frames in a dump: EMPTY,
/// VALID, IP, and VALID with a wrapped offset (an ip below its mapping).
fn build_id_statuses(d: &Dump) -> [usize; 4] {
    let mut n = [0; 4];
    for (_, v) in &d.0 {
        if let Ok(v) = v {
            for f in v.chunks_exact(32) {
                let status = i32::from_ne_bytes(f[..4].try_into().unwrap());
                let offset = u64::from_ne_bytes(f[24..].try_into().unwrap());
                if let Some(slot) = usize::try_from(status).ok().and_then(|s| n.get_mut(s)) {
                    *slot += 1;
                }
                if status == BPF_STACK_BUILD_ID_VALID && offset > 1 << 63 {
                    n[3] += 1;
                }
            }
        }
    }
    n
}

#[test]
fn build_id_replay() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if skipped() {
        return;
    }
    let max_stack = kernel::sysctl_max_stack();
    let mut tally = Tally::default();
    let mut statuses = [0; 4];
    let mut failures = Vec::new();
    for seed in seeds(1001, 16) {
        let case = Case::new(seed, true);
        assert!(case.build_id);
        let ours = ours::create(&case.attr, nr_cpus(), max_stack).unwrap_or_else(|e| {
            panic!(
                "seed {seed}: StackMap refused {:?}: {}",
                case.attr,
                errno_name(e)
            )
        });
        let kmap = Map::create(case.attr).unwrap_or_else(|e| {
            panic!(
                "seed {seed}: kernel refused {:?}: {}",
                case.attr,
                errno_name(e)
            )
        });
        let probe = Probe::attach(kmap);
        let (ops, kdump) = record(&case, &probe);
        drop(probe);
        let s = build_id_statuses(&kdump);
        for i in 0..4 {
            statuses[i] += s[i];
        }
        // The mappings the chains point into are the ones the kernel saw:
        // the test binary and libc stay mapped where they were.
        let procmaps =
            kstackmap::ProcMaps::for_pid(std::process::id()).expect("ProcMaps::for_pid(self)");
        let ours = Ours {
            map: ours,
            resolver: Some(&procmaps),
            max_stack,
        };
        match replay(&case, &ops, &kdump, &ours) {
            Ok(n) => tally.add(&ops, n),
            Err(m) => failures.push(format!(
                "{m}\n  replay: KDIFF_SEED={seed} cargo test --test kernel_diff build_id_replay"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the build-id cases differ from the kernel:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        statuses[1] > 0,
        "no VALID build-id frame: the test binary and libc should both carry build ids"
    );
    let line = format!(
        "{} (stored frames empty/valid/ip/valid-below-mapping: {statuses:?})",
        tally.summary("build-id maps")
    );
    loud(&line);
}
