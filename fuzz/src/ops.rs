//! The `ops` check: a map and the sequential reference model, driven by the
//! same operations, must agree call for call.
//!
//! An [`Input`] picks map attributes (valid or not), a machine
//! configuration, a small fake address space for build-id maps, and a
//! sequence of operations. [`run`] checks that creation agrees between
//! `StackMap::with_config`, `Model::new` and [`expected_create`] (the
//! creation rules written out again here from DESIGN.md), then applies
//! every operation to both and compares results and value bytes; the free
//! functions `get_stack`, `get_stack_max` and `get_stack_pe` are compared
//! with [`ref_get_stack`], a transcription of the kernel's
//! `__bpf_get_stack`. At the end the full dumps must be equal and
//! `StackMap::audit` must find every element in exactly one place.
//!
//! Inputs are raw selector bytes mapped to values in plain functions (not
//! derived enums), so that short or all-zero inputs already give a valid
//! map, and most choices are the interesting ones: a few buckets (so
//! collisions, `EEXIST` and `ENOMEM` are common), stacks from a small pool
//! that share prefixes, and addresses that fall on mapping boundaries.

use std::fmt::Debug;
use std::vec::Vec;

use arbitrary::Arbitrary;
use kstackmap::model::Model;
use kstackmap::uapi::{
    BPF_F_FAST_STACK_CMP, BPF_F_NO_PREALLOC, BPF_F_NUMA_NODE, BPF_F_RDONLY, BPF_F_REUSE_STACKID,
    BPF_F_SKIP_FIELD_MASK, BPF_F_STACK_BUILD_ID, BPF_F_USER_BUILD_ID, BPF_F_USER_STACK,
    BPF_F_WRONLY, PERF_CONTEXT_KERNEL, PERF_CONTEXT_USER,
};
use std::mem::MaybeUninit;

use kstackmap::{Config, Error, MapAttr, StackBuildId, StackMap, StackMapIn, Vma, VmaResolver};

/// At most this many operations are run per input (keeps executions fast).
pub const MAX_OPS: usize = 512;
/// Chains longer than this are cut (the skip tops out at 255, depth at 127).
pub const MAX_CHAIN: usize = 400;
/// Maps whose elements would take more than this many bytes are only
/// checked for their creation result (`storage_size`), never allocated.
pub const MAX_MAP_BYTES: u64 = 8 << 20;

/// One fuzz input.
#[derive(Arbitrary, Debug, Clone, Default)]
pub struct Input {
    /// The map's attributes.
    pub attr: AttrSel,
    /// The machine.
    pub cfg: CfgSel,
    /// The fake address space for build-id maps and `get_stack`.
    pub space: SpaceSel,
    /// What to do.
    pub ops: Vec<Op>,
}

/// Selector bytes for a [`MapAttr`]; see [`AttrSel::attr`].
#[derive(Arbitrary, Debug, Clone, Copy, Default)]
pub struct AttrSel {
    /// `max_entries`: mostly 1..=64.
    pub max_entries: u8,
    /// `key_size`: mostly 4.
    pub key_size: u8,
    /// `value_size`: one of [`VALUE_SIZES`].
    pub value_size: u8,
    /// `map_flags`: build id in half the maps, other bits rarer.
    pub flags: u8,
    /// Raw bits used by some `flags` and `max_entries` choices.
    pub raw: u32,
    /// `numa_node`: mostly 0; sometimes 1..=15 or `u32::MAX`.
    pub numa_node: u8,
}

/// `value_size` choices: valid ips and build-id sizes first, then edges.
pub const VALUE_SIZES: [u32; 24] = [
    32,
    8,
    16,
    24,
    64,
    96,
    128,
    40,
    1016,
    1024,
    4064,
    4096,
    160,
    0,
    4,
    12,
    31,
    33,
    48,
    127 * 32,
    128 * 32,
    127 * 8 + 8,
    u32::MAX,
    u32::MAX - 7,
];

impl AttrSel {
    /// The attributes this selects.
    pub fn attr(&self) -> MapAttr {
        let s = self.max_entries;
        let max_entries = match s {
            0..=199 => (s as u32 + 7) % 64 + 1,
            200..=239 => (s as u32 - 200) % 8 + 1,
            240 => 0,
            241 => 65,
            242 => 100,
            243 => 1000,
            244 => 4096,
            245 => 1 << 16,
            246 => 1 << 20,
            247 => 1 << 31,
            248 => (1 << 31) + 1,
            249 => u32::MAX,
            250 => 128,
            _ => self.raw,
        };
        let key_size = match self.key_size {
            0..=239 => 4,
            240 => 0,
            241 => 8,
            242 => 3,
            243 => 5,
            244 => u32::MAX,
            k => k as u32,
        };
        let value_size = VALUE_SIZES[self.value_size as usize % VALUE_SIZES.len()];
        let f = self.flags;
        let mut map_flags = if f & 1 != 0 { BPF_F_STACK_BUILD_ID } else { 0 };
        map_flags |= match (f >> 1) & 0xf {
            1 => BPF_F_RDONLY,
            2 => BPF_F_WRONLY,
            3 => BPF_F_NUMA_NODE,
            4 => BPF_F_RDONLY | BPF_F_WRONLY,
            5 => BPF_F_NO_PREALLOC,
            6 => 1 << (self.raw % 32),
            7 => self.raw,
            _ => 0,
        };
        let numa_node = match self.numa_node {
            0..=239 => 0,
            255 => u32::MAX,
            n => n as u32 - 239,
        };
        MapAttr {
            max_entries,
            key_size,
            value_size,
            map_flags,
            numa_node,
        }
    }
}

/// Selector bytes for a [`Config`].
#[derive(Arbitrary, Debug, Clone, Copy, Default)]
pub struct CfgSel {
    /// `nr_cpus = 1 + cpus % 4`.
    pub cpus: u8,
    /// `max_stack`: 127 for half the values, else 1..=127.
    pub max_stack: u8,
    /// Where the map lives: `< 128` allocated (`with_config`); else in a
    /// caller's buffer (`new_in`) of `storage_size` bytes starting
    /// `storage % 8` bytes into a `Vec`, or of 0 bytes when
    /// `storage >= 248` (then `NoMem`, and the run stops).
    pub storage: u8,
}

impl CfgSel {
    /// The configuration this selects.
    pub fn cfg(&self) -> Config {
        let max_stack = match self.max_stack {
            0..=127 => 127,
            s => (s as u32 - 128) % 127 + 1,
        };
        Config {
            nr_cpus: 1 + self.cpus as usize % 4,
            max_stack,
        }
    }
}

/// Base address of the fake address space; pool stacks and
/// [`Ip::Near`] addresses fall in `BASE..BASE + 0x2000`.
pub const BASE: u64 = 0x1000;
/// Granule of mapping bounds and near addresses, so ips hit bounds exactly.
pub const GRAIN: u64 = 0x20;

/// Selector bytes for the fake address space.
#[derive(Arbitrary, Debug, Clone, Default)]
pub struct SpaceSel {
    /// `can_access` is false when `locked % 8 == 7` (a failed trylock).
    pub locked: u8,
    /// Mappings laid out one after another (at most 4 are used).
    pub vmas: Vec<VmaSel>,
}

/// Selector bytes for one mapping.
#[derive(Arbitrary, Debug, Clone, Copy, Default)]
pub struct VmaSel {
    /// Gap before it, in grains (`% 32`).
    pub gap: u8,
    /// Length in grains (`1 + len % 32`).
    pub len: u8,
    /// File offset in pages.
    pub pgoff: u8,
    /// 0: no build id (anonymous or none); else build id bytes from it.
    pub build_id: u8,
}

/// A deterministic address space: sorted, non-overlapping mappings.
#[derive(Clone, Debug, Default)]
pub struct FakeSpace {
    /// `false`: the kernel's failed `mmap_read_trylock`.
    pub can_access: bool,
    /// The mappings, ascending.
    pub vmas: Vec<Vma>,
}

impl SpaceSel {
    /// The address space this selects.
    pub fn space(&self) -> FakeSpace {
        let mut at = BASE;
        let mut vmas = Vec::new();
        for v in self.vmas.iter().take(4) {
            let start = at + (v.gap as u64 % 32) * GRAIN;
            let end = start + (1 + v.len as u64 % 32) * GRAIN;
            let build_id = (v.build_id != 0).then(|| {
                let mut id = [0u8; 20];
                // Short build ids are zero-padded, as the kernel stores them.
                let n = 1 + v.build_id as usize % 20;
                for (i, b) in id.iter_mut().take(n).enumerate() {
                    *b = v.build_id.wrapping_mul(31).wrapping_add(i as u8) | 1;
                }
                id
            });
            vmas.push(Vma {
                start,
                end,
                file_offset: (v.pgoff as u64) << 12,
                build_id,
            });
            at = end;
        }
        FakeSpace {
            can_access: self.locked % 8 != 7,
            vmas,
        }
    }
}

impl VmaResolver for FakeSpace {
    fn can_access(&self) -> bool {
        self.can_access
    }
    fn find_vma(&self, ip: u64) -> Option<Vma> {
        self.vmas.iter().find(|v| v.end > ip).copied()
    }
}

/// One word of an arbitrary chain.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Ip {
    /// `BASE + n * GRAIN / 2`: inside or on the edge of the fake mappings.
    Near(u8),
    /// `PERF_CONTEXT_KERNEL`.
    Kernel,
    /// `PERF_CONTEXT_USER`.
    User,
    /// Any address.
    Raw(u64),
}

impl Ip {
    fn word(self) -> u64 {
        match self {
            Ip::Near(n) => BASE + n as u64 * (GRAIN / 2),
            Ip::Kernel => PERF_CONTEXT_KERNEL,
            Ip::User => PERF_CONTEXT_USER,
            Ip::Raw(ip) => ip,
        }
    }
}

/// A chain: from the pool (most of the time) or arbitrary.
#[derive(Arbitrary, Debug, Clone)]
pub enum ChainSel {
    /// `pool_chain(n)`.
    Pool(u8),
    /// `pool_chain(n)` with a perf marker inserted at `at % (len + 1)`.
    PoolMarked {
        /// Which pool chain.
        n: u8,
        /// Where the marker goes.
        at: u8,
        /// `PERF_CONTEXT_USER` if true, else `PERF_CONTEXT_KERNEL`.
        user: bool,
    },
    /// Any words.
    Words(Vec<Ip>),
}

/// Number of chains in the pool.
pub const POOL: u8 = 16;

/// Pool chain `n % POOL`: short chains in the fake address space, several
/// sharing prefixes (equal once cut to a small value size), a long one,
/// and perf-shaped ones with markers.
pub fn pool_chain(n: u8) -> Vec<u64> {
    let a = |k: u64| BASE + k * GRAIN;
    let kernel = PERF_CONTEXT_KERNEL;
    let user = PERF_CONTEXT_USER;
    let ksym = 0xffff_ffff_8100_0000u64;
    match n % POOL {
        0 => vec![a(1)],
        1 => vec![a(1), a(2)],
        2 => vec![a(1), a(2), a(3)],
        3 => vec![a(1), a(2), a(4)],
        4 => vec![a(5), a(6), a(7), a(8)],
        5 => vec![a(5), a(6), a(7), a(9)],
        6 => vec![a(100), a(101)],
        7 => vec![a(0), a(255)],
        8 => (0..40).map(a).collect(),
        9 => (0..200).map(|k| a(k % 7)).collect(),
        10 => vec![kernel, ksym, ksym + 8, user, a(1), a(2)],
        11 => vec![kernel, ksym, user, a(5), a(6), a(7), a(8)],
        12 => vec![user, a(3), a(2)],
        13 => vec![kernel, ksym, ksym + 16],
        14 => vec![0, u64::MAX, 1 << 63],
        _ => vec![a(1), a(1), a(1), a(1)],
    }
}

impl ChainSel {
    /// The chain this selects.
    pub fn chain(&self) -> Vec<u64> {
        match self {
            ChainSel::Pool(n) => pool_chain(*n),
            ChainSel::PoolMarked { n, at, user } => {
                let mut c = pool_chain(*n);
                let at = *at as usize % (c.len() + 1);
                let m = if *user {
                    PERF_CONTEXT_USER
                } else {
                    PERF_CONTEXT_KERNEL
                };
                c.insert(at, m);
                c
            }
            ChainSel::Words(w) => w.iter().take(MAX_CHAIN).map(|ip| ip.word()).collect(),
        }
    }
}

/// Selector bytes for helper flags.
#[derive(Arbitrary, Debug, Clone, Copy, Default)]
pub struct FlagSel {
    /// Skip: mostly 0..=3, sometimes up to 15, sometimes anything.
    pub skip: u8,
    /// Bit 0 user stack, 1 fast compare, 2 reuse, 3 user build id;
    /// `>= 0xf0` adds `raw` (unknown bits, most likely).
    pub bits: u8,
    /// Extra bits.
    pub raw: u64,
}

impl FlagSel {
    /// The flags this selects.
    pub fn flags(&self) -> u64 {
        let skip = match self.skip {
            0..=127 => self.skip % 4,
            128..=191 => self.skip % 16,
            s => s,
        } as u64;
        let b = self.bits;
        let mut f = skip;
        for (bit, flag) in [
            (1, BPF_F_USER_STACK),
            (2, BPF_F_FAST_STACK_CMP),
            (4, BPF_F_REUSE_STACKID),
            (8, BPF_F_USER_BUILD_ID),
        ] {
            if b & bit != 0 {
                f |= flag;
            }
        }
        if b >= 0xf0 {
            f |= self.raw;
        }
        f
    }
}

/// Selector bytes for a key (stack id).
#[derive(Arbitrary, Debug, Clone, Copy, Default)]
pub struct KeySel {
    /// `< 128`: a recently returned id; `< 224`: `sel % (n_buckets + 1)`;
    /// else `raw`.
    pub sel: u8,
    /// Any key.
    pub raw: u32,
}

impl KeySel {
    fn key(&self, recent: &[u32], n_buckets: u32) -> u32 {
        match self.sel {
            s @ 0..=127 if !recent.is_empty() => recent[s as usize % recent.len()],
            s @ 0..=223 => s as u32 % n_buckets.saturating_add(1),
            _ => self.raw,
        }
    }
}

/// Selector for a value buffer's length, around `value_size`.
#[derive(Arbitrary, Debug, Clone, Copy, Default)]
pub struct BufSel(pub u8);

impl BufSel {
    fn len(self, value_size: u32) -> usize {
        let v = value_size as usize;
        match self.0 {
            0..=199 => v,
            200..=219 => v + 1 + self.0 as usize % 16,
            220..=229 => v.saturating_sub(1),
            230..=239 => v.saturating_sub(8),
            240..=247 => 0,
            s => v.saturating_sub(s as usize),
        }
    }
}

/// One operation.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// `get_stackid`.
    StackId {
        /// Any CPU number (the map takes it modulo `nr_cpus`).
        cpu: u64,
        /// The chain.
        chain: ChainSel,
        /// The flags.
        flags: FlagSel,
    },
    /// `get_stackid_resolved` with the fake address space.
    StackIdResolved {
        /// Any CPU number.
        cpu: u64,
        /// The chain.
        chain: ChainSel,
        /// The flags.
        flags: FlagSel,
    },
    /// `get_stackid_pe` (or `get_stackid_pe_resolved` when `resolved`).
    StackIdPe {
        /// Any CPU number.
        cpu: u64,
        /// The chain.
        chain: ChainSel,
        /// The flags.
        flags: FlagSel,
        /// Use the fake address space.
        resolved: bool,
    },
    /// `lookup`.
    Lookup {
        /// The key.
        key: KeySel,
        /// The buffer length.
        buf: BufSel,
    },
    /// `lookup_ips` or `lookup_build_ids` (whichever `build_ids` says,
    /// so the wrong one for the map half the time).
    LookupTyped {
        /// The key.
        key: KeySel,
        /// The buffer length in bytes, rounded down to whole frames.
        buf: BufSel,
        /// `lookup_build_ids` rather than `lookup_ips`.
        build_ids: bool,
    },
    /// `lookup_and_delete`.
    LookupAndDelete {
        /// The key.
        key: KeySel,
        /// The buffer length.
        buf: BufSel,
    },
    /// `delete`.
    Delete {
        /// The key.
        key: KeySel,
    },
    /// `get_next_key`.
    NextKey {
        /// The key, or none.
        key: Option<KeySel>,
    },
    /// `update`: always refused.
    Update {
        /// The key.
        key: KeySel,
        /// The value length.
        buf: BufSel,
        /// Any flags.
        flags: u64,
    },
    /// The free functions `get_stack` / `get_stack_max` / `get_stack_pe`.
    GetStack {
        /// The chain.
        chain: ChainSel,
        /// The flags.
        flags: FlagSel,
        /// Buffer length: see [`stack_buf_len`].
        len: u16,
        /// 0 `get_stack`, 1 `get_stack_max` (the map's `max_stack`),
        /// 2 `get_stack_pe`; bit 2: with the fake address space.
        how: u8,
    },
    /// `audit` in the middle of the run.
    Audit,
}

/// A `get_stack` buffer length: multiples of 8 or 32 mostly, sometimes odd.
pub fn stack_buf_len(len: u16) -> usize {
    let n = (len >> 2) as usize;
    match len & 3 {
        0 => (n % 20) * 8,
        1 => (n % 8) * 32,
        2 => n % 300,
        _ => [0, 8, 32, 127 * 8, 128 * 8, 127 * 32, 128 * 32][n % 7],
    }
}

/// The creation rules, written again from DESIGN.md ("Kernel semantics to
/// match"), independently of `attr.rs`.
pub fn expected_create(a: &MapAttr, cfg: &Config) -> Result<(), Error> {
    let f = a.map_flags;
    if f & BPF_F_RDONLY != 0 && f & BPF_F_WRONLY != 0 {
        return Err(Error::Inval);
    }
    // One NUMA node: only node 0 exists; -1 (NUMA_NO_NODE) is any node.
    if f & BPF_F_NUMA_NODE != 0 && a.numa_node != 0 && a.numa_node != u32::MAX {
        return Err(Error::Inval);
    }
    if cfg.nr_cpus == 0 {
        return Err(Error::Inval);
    }
    let known = BPF_F_NUMA_NODE | BPF_F_RDONLY | BPF_F_WRONLY | BPF_F_STACK_BUILD_ID;
    if f & !known != 0 {
        return Err(Error::Inval);
    }
    if a.max_entries == 0 || a.key_size != 4 || a.value_size < 8 || a.value_size % 8 != 0 {
        return Err(Error::Inval);
    }
    let elem = if f & BPF_F_STACK_BUILD_ID != 0 { 32 } else { 8 };
    if a.value_size % elem != 0 || a.value_size / elem > cfg.max_stack {
        return Err(Error::Inval);
    }
    if a.max_entries > 1 << 31 {
        return Err(Error::TooBig);
    }
    Ok(())
}

/// One `struct bpf_stack_build_id` as bytes (native endian).
fn frame_bytes(status: i32, build_id: [u8; 20], word: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&status.to_ne_bytes());
    b[4..24].copy_from_slice(&build_id);
    b[24..].copy_from_slice(&word.to_ne_bytes());
    b
}

/// `stack_map_get_build_id_offset` transcribed from the kernel (with the
/// inclusive `range_in_vma` reuse of the last resolved mapping).
pub fn ref_build_ids(ips: &[u64], user: bool, space: Option<&FakeSpace>) -> Vec<u8> {
    const VALID: i32 = 1;
    const IP: i32 = 2;
    let mut out = Vec::new();
    let space = match space {
        Some(s) if user && s.can_access => s,
        _ => {
            for &ip in ips {
                out.extend_from_slice(&frame_bytes(IP, [0; 20], ip));
            }
            return out;
        }
    };
    let mut prev: Option<Vma> = None;
    for &ip in ips {
        let vma = match prev {
            Some(p) if p.start <= ip && ip <= p.end => Some(p),
            _ => space.find_vma(ip).filter(|v| v.build_id.is_some()),
        };
        match vma {
            Some(v) => {
                let off = v.file_offset.wrapping_add(ip).wrapping_sub(v.start);
                out.extend_from_slice(&frame_bytes(VALID, v.build_id.unwrap_or_default(), off));
                prev = Some(v);
            }
            None => out.extend_from_slice(&frame_bytes(IP, [0; 20], ip)),
        }
    }
    out
}

/// `__bpf_get_stack` transcribed from the kernel, on a whole chain with a
/// `perf_event_max_stack` of `max_stack`: the result and the buffer.
pub fn ref_get_stack(
    chain: &[u64],
    flags: u64,
    size: usize,
    space: Option<&FakeSpace>,
    max_stack: u32,
) -> (Result<usize, Error>, Vec<u8>) {
    let zero = vec![0u8; size];
    if flags & !(BPF_F_SKIP_FIELD_MASK | BPF_F_USER_STACK | BPF_F_USER_BUILD_ID) != 0 {
        return (Err(Error::Inval), zero);
    }
    let user = flags & BPF_F_USER_STACK != 0;
    let user_build_id = flags & BPF_F_USER_BUILD_ID != 0;
    if !user && user_build_id {
        return (Err(Error::Inval), zero);
    }
    let elem = if user && user_build_id { 32 } else { 8 };
    if size % elem != 0 {
        return (Err(Error::Inval), zero);
    }
    let skip = (flags & BPF_F_SKIP_FIELD_MASK) as usize;
    let num_elem = size / elem;
    let max_depth = (num_elem + skip).min(max_stack as usize);
    // get_perf_callchain(..., max_depth): the walk stops at max_depth.
    let trace = &chain[..chain.len().min(max_depth)];
    if trace.len() < skip {
        return (Err(Error::Fault), zero);
    }
    let trace_nr = (trace.len() - skip).min(num_elem);
    let ips = &trace[skip..skip + trace_nr];
    let mut buf = if elem == 32 {
        ref_build_ids(ips, user, space)
    } else {
        ips.iter().flat_map(|ip| ip.to_ne_bytes()).collect()
    };
    let copy_len = buf.len();
    buf.resize(size, 0);
    (Ok(copy_len), buf)
}

/// `bpf_get_stack_pe` transcribed from the kernel (callchain-early path),
/// over [`ref_get_stack`] with the default `max_stack` of 127.
pub fn ref_get_stack_pe(
    chain: &[u64],
    flags: u64,
    size: usize,
    space: Option<&FakeSpace>,
) -> (Result<usize, Error>, Vec<u8>) {
    if flags & !(BPF_F_SKIP_FIELD_MASK | BPF_F_USER_STACK | BPF_F_USER_BUILD_ID) != 0 {
        return (Err(Error::Inval), vec![0; size]);
    }
    let nr_kernel = chain
        .iter()
        .position(|&ip| ip == PERF_CONTEXT_USER)
        .unwrap_or(chain.len());
    if flags & BPF_F_USER_STACK == 0 {
        return ref_get_stack(&chain[..nr_kernel], flags, size, space, 127);
    }
    let skip = (flags & BPF_F_SKIP_FIELD_MASK) + nr_kernel as u64;
    if skip > BPF_F_SKIP_FIELD_MASK {
        return (Err(Error::Fault), vec![0; size]);
    }
    let flags = (flags & !BPF_F_SKIP_FIELD_MASK) | skip;
    ref_get_stack(chain, flags, size, space, 127)
}

fn check_eq<T: PartialEq + Debug>(what: &str, step: usize, map: T, model: T) {
    assert_eq!(map, model, "op #{step} {what}: map (left) != model (right)");
}

/// Fill byte for buffers, so untouched bytes show.
const FILL: u8 = 0xa5;

/// Runs the check; panics on any disagreement.
pub fn run(input: &Input) {
    let attr = input.attr.attr();
    let cfg = input.cfg.cfg();
    let expected = expected_create(&attr, &cfg);
    let size = StackMap::storage_size(&attr, cfg);
    assert_eq!(
        size.map(|_| ()),
        expected,
        "storage_size({attr:?}, {cfg:?})"
    );
    if expected.is_err() {
        let map = StackMap::with_config(&attr, cfg).map(|_| ());
        let model = Model::new(&attr, cfg).map(|_| ());
        assert_eq!(map, expected, "StackMap::with_config({attr:?}, {cfg:?})");
        assert_eq!(model, expected, "Model::new({attr:?}, {cfg:?})");
        let mut mem = [MaybeUninit::uninit(); 64];
        let map = StackMapIn::new_in(&attr, cfg, &mut mem).map(|_| ());
        assert_eq!(map, expected, "StackMapIn::new_in({attr:?}, {cfg:?})");
        return;
    }
    let elem_bytes = attr.value_size as u64 + 16;
    if attr.max_entries as u64 * elem_bytes > MAX_MAP_BYTES {
        return;
    }
    let need = size.expect("valid attributes");
    let mut mem: Vec<MaybeUninit<u8>>;
    let mut map: StackMapIn<'_> = match input.cfg.storage {
        0..=127 => StackMap::with_config(&attr, cfg).expect("valid attributes"),
        248.. => {
            let got = StackMapIn::new_in(&attr, cfg, &mut []).map(|_| ());
            assert_eq!(got, Err(Error::NoMem), "new_in with no memory");
            return;
        }
        s => {
            let off = s as usize % 8;
            mem = vec![MaybeUninit::uninit(); need + off];
            StackMapIn::new_in(&attr, cfg, &mut mem[off..]).expect("storage_size bytes")
        }
    };
    let mut model = Model::new(&attr, cfg).expect("valid attributes");
    let n_buckets = map.n_buckets();
    assert_eq!(n_buckets, attr.max_entries.next_power_of_two());
    let space = input.space.space();
    let vs = attr.value_size as usize;
    let mut recent: Vec<u32> = Vec::new();

    for (step, op) in input.ops.iter().take(MAX_OPS).enumerate() {
        match op {
            Op::StackId { cpu, chain, flags } => {
                let (c, f) = (chain.chain(), flags.flags());
                let got = map.get_stackid(*cpu as usize, &c, f);
                check_eq("get_stackid", step, got, model.get_stackid(&c, f));
                recent.extend(got.ok());
            }
            Op::StackIdResolved { cpu, chain, flags } => {
                let (c, f) = (chain.chain(), flags.flags());
                let got = map.get_stackid_resolved(*cpu as usize, &c, f, &space);
                let want = model.get_stackid_resolved(&c, f, Some(&space));
                check_eq("get_stackid_resolved", step, got, want);
                recent.extend(got.ok());
            }
            Op::StackIdPe {
                cpu,
                chain,
                flags,
                resolved,
            } => {
                let (c, f) = (chain.chain(), flags.flags());
                let cpu = *cpu as usize;
                let (got, want) = if *resolved {
                    let got = map.get_stackid_pe_resolved(cpu, &c, f, &space);
                    (got, model.get_stackid_pe(&c, f, Some(&space)))
                } else {
                    let got = map.get_stackid_pe(cpu, &c, f);
                    (got, model.get_stackid_pe(&c, f, None::<&FakeSpace>))
                };
                check_eq("get_stackid_pe", step, got, want);
                recent.extend(got.ok());
            }
            Op::Lookup { key, buf } => {
                let id = key.key(&recent, n_buckets);
                let mut b = vec![FILL; buf.len(attr.value_size)];
                let got = map.lookup(id, &mut b);
                // The model has no buffer. The map refuses a short one
                // after the permission and id range checks, before it looks
                // at the bucket.
                let want = match model.lookup(id) {
                    Err(Error::Perm) => Err(Error::Perm),
                    _ if id < n_buckets && b.len() < vs => Err(Error::Inval),
                    w => w,
                };
                check_lookup("lookup", step, id, got, want, &b, vs);
            }
            Op::LookupTyped {
                key,
                buf,
                build_ids,
            } => {
                let id = key.key(&recent, n_buckets);
                let frame = if *build_ids { 32 } else { 8 };
                let n = buf.len(attr.value_size) / frame;
                let mut bytes = vec![FILL; n * frame];
                let got = if *build_ids {
                    let fill = zerocopy::FromBytes::read_from_bytes(&[FILL; 32][..]);
                    let mut out: Vec<StackBuildId> = vec![fill.expect("32 bytes"); n];
                    let got = map.lookup_build_ids(id, &mut out).map(|f| f.len());
                    for (b, f) in bytes.chunks_exact_mut(32).zip(&out) {
                        b.copy_from_slice(zerocopy::IntoBytes::as_bytes(f));
                    }
                    got
                } else {
                    let mut out = vec![u64::from_ne_bytes([FILL; 8]); n];
                    let got = map.lookup_ips(id, &mut out).map(|f| f.len());
                    for (b, f) in bytes.chunks_exact_mut(8).zip(&out) {
                        b.copy_from_slice(&f.to_ne_bytes());
                    }
                    got
                };
                let is_build_id = attr.map_flags & BPF_F_STACK_BUILD_ID != 0;
                // Like lookup with a byte buffer, after the map-kind check.
                let want = match model.lookup(id) {
                    _ if *build_ids != is_build_id => Err(Error::Inval),
                    Err(Error::Perm) => Err(Error::Perm),
                    _ if id < n_buckets && bytes.len() < vs => Err(Error::Inval),
                    w => w,
                };
                let what = if *build_ids {
                    "lookup_build_ids"
                } else {
                    "lookup_ips"
                };
                if let (Ok(nr), Ok(v)) = (&got, &want) {
                    // The frames returned are the stack; zeros follow.
                    assert!(
                        v[nr * frame..].iter().all(|&b| b == 0),
                        "op #{step} {what}({id}): {nr} frames, but more in {v:x?}"
                    );
                }
                check_lookup(what, step, id, got.map(drop), want, &bytes, vs);
            }
            Op::LookupAndDelete { key, buf } => {
                let id = key.key(&recent, n_buckets);
                let mut b = vec![FILL; buf.len(attr.value_size)];
                let got = map.lookup_and_delete(id, &mut b);
                // As for lookup; a refused short buffer deletes nothing.
                let want = if id < n_buckets && b.len() < vs {
                    if attr.map_flags & (BPF_F_RDONLY | BPF_F_WRONLY) != 0 {
                        Err(Error::Perm)
                    } else {
                        Err(Error::Inval)
                    }
                } else {
                    model.lookup_and_delete(id)
                };
                check_lookup("lookup_and_delete", step, id, got, want, &b, vs);
            }
            Op::Delete { key } => {
                let id = key.key(&recent, n_buckets);
                check_eq("delete", step, map.delete(id), model.delete(id));
            }
            Op::NextKey { key } => {
                let k = key.map(|k| k.key(&recent, n_buckets));
                let got = map.get_next_key(k);
                check_eq("get_next_key", step, got, model.get_next_key(k));
            }
            Op::Update { key, buf, flags } => {
                let id = key.key(&recent, n_buckets);
                let b = vec![FILL; buf.len(attr.value_size)];
                check_eq("update", step, map.update(id, &b, *flags), model.update());
            }
            Op::GetStack {
                chain,
                flags,
                len,
                how,
            } => {
                let (c, f) = (chain.chain(), flags.flags());
                let n = stack_buf_len(*len);
                let sp = (how & 4 != 0).then_some(&space);
                let res = sp.map(|s| s as &dyn VmaResolver);
                let mut b = vec![FILL; n];
                let (got, want) = match how % 3 {
                    0 => (
                        kstackmap::get_stack(&c, f, &mut b, res),
                        ref_get_stack(&c, f, n, sp, 127),
                    ),
                    1 => (
                        kstackmap::get_stack_max(&c, f, &mut b, res, cfg.max_stack),
                        ref_get_stack(&c, f, n, sp, cfg.max_stack),
                    ),
                    _ => (
                        kstackmap::get_stack_pe(&c, f, &mut b, res),
                        ref_get_stack_pe(&c, f, n, sp),
                    ),
                };
                let what = ["get_stack", "get_stack_max", "get_stack_pe"][*how as usize % 3];
                assert_eq!(
                    (got, &b),
                    (want.0, &want.1),
                    "op #{step} {what}(chain {c:x?}, flags {f:#x}, {n} bytes): \
                     crate (left) != kernel transcription (right)"
                );
            }
            Op::Audit => check_audit(&mut map, &model, step),
        }
    }

    check_audit(&mut map, &model, usize::MAX);
    if attr.map_flags & BPF_F_WRONLY == 0 {
        assert_eq!(dump(&map), model.dump(), "final dump: map (left) != model");
    }
}

fn check_lookup(
    what: &str,
    step: usize,
    id: u32,
    got: Result<(), Error>,
    want: Result<Vec<u8>, Error>,
    buf: &[u8],
    vs: usize,
) {
    match want {
        Ok(v) => {
            check_eq(what, step, got, Ok(()));
            assert_eq!(
                &buf[..vs],
                &v[..],
                "op #{step} {what}({id}): value bytes: map (left) != model"
            );
            assert!(
                buf[vs..].iter().all(|&b| b == FILL),
                "op #{step} {what}({id}): wrote past value_size"
            );
        }
        Err(e) => {
            check_eq(what, step, got, Err(e));
            assert!(
                buf.iter().all(|&b| b == FILL),
                "op #{step} {what}({id}): wrote into the buffer on {e:?}"
            );
        }
    }
}

fn check_audit(map: &mut StackMapIn<'_>, model: &Model, step: usize) {
    let stored = model.dump().len();
    let max = map.attr().max_entries as usize;
    let audit = map.audit();
    assert_eq!(
        audit,
        Ok((stored, max - stored)),
        "op #{step} audit: (in buckets, free) vs model (model free: {})",
        model.free()
    );
}

/// Every `(id, value)` of the map through `get_next_key` and `lookup`.
pub fn dump(map: &StackMapIn<'_>) -> Vec<(u32, Vec<u8>)> {
    let mut out: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut key = None;
    while let Ok(id) = map.get_next_key(key) {
        if let Some(&(last, _)) = out.last() {
            assert!(id > last, "get_next_key({last}) went back to {id}");
        }
        let mut v = vec![FILL; map.attr().value_size as usize];
        assert_eq!(map.lookup(id, &mut v), Ok(()), "lookup of listed id {id}");
        out.push((id, v));
        key = Some(id);
    }
    out
}
