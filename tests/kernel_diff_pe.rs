//! Differential test of the `_pe` helpers against the running kernel.
//!
//! A `BPF_PROG_TYPE_PERF_EVENT` program (see `kernel/perf.rs`) is attached
//! with `PERF_EVENT_IOC_SET_BPF` to a sampling event on this thread that
//! records `PERF_SAMPLE_CALLCHAIN` (kernel and user parts, with their
//! `PERF_CONTEXT_*` markers). For such a program the kernel's
//! `bpf_get_stackid` / `bpf_get_stack` are `bpf_get_stackid_pe` /
//! `bpf_get_stack_pe`, which work on the sample's own callchain: the one the
//! event's ring then carries in its `PERF_RECORD_SAMPLE`. Each sample runs
//! a seeded plan of up to six calls (stack id on one of four maps: ips,
//! ips with few entries, ips with short values, build ids; or a
//! `bpf_get_stack` into a buffer) with random skips, `BPF_F_USER_STACK`,
//! `BPF_F_REUSE_STACKID`, `BPF_F_FAST_STACK_CMP`, `BPF_F_USER_BUILD_ID`,
//! sizes and now and then invalid flags. The test then replays every ring
//! sample's chain, in order, through `StackMap::get_stackid_pe`
//! (`_resolved` with `ProcMaps` of this process for the build-id map) and
//! `kstackmap::get_stack_pe`: every id, errno and buffer byte must be
//! equal, and at the end every map's dump must be byte-identical.
//!
//! The events: cpu-clock and task-clock (hrtimer interrupt), page faults
//! (taken in user mode, and in kernel mode by `read` into fresh pages),
//! and hardware cycles where the machine has a PMU (NMI; a VM without one
//! refuses them: loud skip). The workload runs the distinct call paths of
//! `kernel::call_path_to` (Rust frames, stubs without build id, fake
//! frames) down to a leaf that spins, makes syscalls and faults pages, so
//! chains have kernel parts, user parts up to `sample_max_stack` (varied,
//! down to 1) and, sometimes, only one of them (`exclude_callchain_*`, or
//! both: an empty chain). Every 7th case is `deep`: chains at the cap
//! (`max_stack` ips, so 128 or 129 words with the markers) and skips
//! around `max_stack`.
//!
//! Three kernel behaviours outside the map, read off Linux 6.18.44, shape
//! the plans and the reading of the ring (see `sample_ops`):
//! - `bpf_get_stack_pe` with `BPF_F_USER_STACK` cuts the sample's callchain
//!   to its own depth, `min(frames + skip + nr_kernel, max_stack)`, and
//!   leaves it cut (it restores `nr` after a kernel-stack call only):
//!   later calls of the same program, and the ring, see the shorter
//!   chain. perf sized the record before the program ran, so the
//!   record keeps its size and carries the shorter chain
//!   (`Sample::prepared_nr`). `bpf_get_stackid_pe` leaves the chain as it
//!   was, but its EFAULT check reads the whole chain. So each sample runs
//!   its cutting `get_stack` calls shallowest first and its user-stack
//!   stack ids after them: every call then sees exactly the chain the ring
//!   shows. `probe_cut` checks that this kernel cuts; a kernel without the
//!   fix writes past short stack map values and is not driven here.
//! - Only the first build-id resolution of a program run resolves; later
//!   ones give plain ips (status IP) in every event tried here, page
//!   faults included (the lookup hands `mmap_read_unlock` to an irq_work
//!   when interrupts are off, and falls back while that work is pending).
//!   Plans resolve at most once per sample.
//! - With `skip + nr_kernel` of `max_stack` or more on a chain longer than
//!   `max_stack` words, `bpf_get_stackid_pe` stores the empty stack or the
//!   words past `max_stack` (this one is the map's business; see
//!   `StackMap::get_stackid_pe`).
//!
//! Each case has a seed; `KDIFF_SEED=<seed> cargo test --test
//! kernel_diff_pe` runs that case alone (same event, maps and plan; which
//! instants are sampled, and so the chains, differ from run to run).
//! `KDIFF_CASES=<n>` runs more cases. Without CAP_BPF / perf events the
//! test prints `KERNEL DIFF SKIPPED: <why>` and passes.
#![cfg(target_os = "linux")]

mod kernel;

use kernel::ours;
use kernel::perf::{Event, EventSpec, Op, PlanMaps, Sample, SlotResult, Source, BUF_MAX, OPS};
use kernel::report::{errno_name, loud, nr_cpus, path_byte, seeds, show, skipped, where_differs};
use kernel::{CreateAttr, Dump, Errno, Map, Rng, MAP_TYPE_STACK_TRACE};
use kstackmap::uapi::*;
use kstackmap::{ProcMaps, StackMap};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Samples per case (slots of the plan).
const SLOTS: usize = 256;
/// Ring data pages: `SLOTS` records of at most 48 + 129 * 8 bytes fit.
const DATA_PAGES: usize = 512;
/// Wall-clock bound on one case's workload (it normally stops at `SLOTS`
/// samples long before); not a test assertion.
const CASE_DEADLINE: Duration = Duration::from_secs(3);
/// The maps of every case, in the order `Op::StackId` names them: ips
/// (8 to 512 entries), ips with 1 to 8 entries (full, EEXIST), ips with
/// 1 to 8 frames a value (truncation), and build ids.
const MAP_BUILD_ID: usize = 3;
const NR_MAPS: usize = 4;

// --- the workload ------------------------------------------------------------

/// What the leaf of every call path uses: `/dev/zero` and a region of
/// anonymous pages that it empties and faults in again.
struct Work {
    zero: std::fs::File,
    region: usize,
    page: usize,
}

/// Pages the leaf writes (faults taken in user mode).
const USER_PAGES: usize = 4;
/// Pages `read` from /dev/zero fills (faults taken in kernel mode).
const KERNEL_PAGES: usize = 12;

fn work() -> &'static Work {
    static WORK: OnceLock<Work> = OnceLock::new();
    WORK.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = page * (USER_PAGES + KERNEL_PAGES);
        // SAFETY: a fresh private anonymous mapping, never unmapped (the
        // process's lifetime), touched only by the leaf.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "mmap the workload's region");
        Work {
            zero: std::fs::File::open("/dev/zero").expect("open /dev/zero"),
            region: p as usize,
            page,
        }
    })
}

/// The end of every call path: user time, syscalls, and page faults in
/// user and kernel mode. No allocation and no mapping change (a sample
/// taken while this thread held the mmap lock for writing would make the
/// kernel's build-id lookup give up).
#[inline(never)]
fn leaf() {
    let w = work();
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..3000u64 {
        x = (x.rotate_left(5) ^ i).wrapping_mul(0x2545_f491_4f6c_dd1d);
    }
    std::hint::black_box(x);
    let len = w.page * (USER_PAGES + KERNEL_PAGES);
    // SAFETY: `region` is the private anonymous mapping of `len` bytes made
    // in `work()`; dropping its pages only makes the next touch fault.
    unsafe { libc::madvise(w.region as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    for p in 0..USER_PAGES {
        // SAFETY: inside the writable region.
        unsafe { std::ptr::write_volatile((w.region + p * w.page) as *mut u8, p as u8) };
    }
    // SAFETY: reads into the writable region's last KERNEL_PAGES pages.
    unsafe {
        libc::read(
            w.zero.as_raw_fd(),
            (w.region + USER_PAGES * w.page) as *mut libc::c_void,
            KERNEL_PAGES * w.page,
        )
    };
    for _ in 0..4 {
        // SAFETY: getppid has no preconditions.
        std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }
}

/// A call path: mostly shallow, now and then deeper than any
/// `sample_max_stack` (the user part is then cut at the cap); always that
/// deep in `deep` cases.
fn pe_path(rng: &mut Rng, deep: bool) -> Vec<u8> {
    let d = match rng.range(0, 10) {
        _ if deep => rng.range(118, 126),
        0..=2 => rng.range(0, 3),
        3..=7 => rng.range(0, 40),
        _ => rng.range(40, 125),
    };
    (0..d).map(|_| path_byte(rng)).collect()
}

// --- cases -------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Case {
    seed: u64,
    /// Chains at `max_stack` ips (with their markers, longer than
    /// `max_stack` words) and skips around `max_stack`.
    deep: bool,
    spec: EventSpec,
    maps: Vec<CreateAttr>,
    plan: Vec<Vec<Op>>,
}

/// The event of case `seed % 7`; the last one is a `deep` case.
const SOURCES: [Source; 7] = [
    Source::CpuClock,
    Source::PageFaults,
    Source::TaskClock,
    Source::CpuClock,
    Source::PageFaults,
    Source::Cycles,
    Source::CpuClock,
];

fn stack_map(max_entries: u64, value_size: u64, map_flags: u32) -> CreateAttr {
    CreateAttr {
        map_type: MAP_TYPE_STACK_TRACE,
        key_size: 4,
        value_size: value_size as u32,
        max_entries: max_entries as u32,
        map_flags,
        numa_node: 0,
    }
}

/// Frames of a value: often the most, else any.
fn value_frames(rng: &mut Rng, max_stack: u64) -> u64 {
    if rng.chance(1, 3) {
        max_stack
    } else {
        rng.range(1, max_stack + 1)
    }
}

fn skip(rng: &mut Rng, deep: bool) -> u64 {
    if deep && rng.chance(2, 3) {
        // The skips where a chain longer than max_stack words matters.
        return rng.range(110, 132);
    }
    match rng.range(0, 20) {
        0..=6 => 0,
        7..=11 => rng.range(1, 4),
        12..=15 => rng.range(0, 32),
        16..=17 => rng.range(0, 256),
        18 => rng.range(100, 140),
        _ => rng.range(230, 256),
    }
}

fn random_op(rng: &mut Rng, deep: bool) -> Op {
    let mut f = skip(rng, deep);
    if rng.chance(7, 10) {
        let map = rng.range(0, NR_MAPS as u64) as usize;
        if rng.chance(11, 20) {
            f |= BPF_F_USER_STACK;
        }
        if rng.chance(1, 3) {
            f |= BPF_F_REUSE_STACKID;
        }
        if rng.chance(1, 6) {
            f |= BPF_F_FAST_STACK_CMP;
        }
        // Invalid: any bit above REUSE_STACKID (BPF_F_USER_BUILD_ID too).
        if rng.chance(1, 40) {
            f |= 1 << rng.range(11, 64);
        }
        return Op::StackId { map, flags: f };
    }
    // Deep cases cut the chain (a user-stack get_stack) less often: the
    // stack ids after the cut would not see the chain past max_stack.
    if rng.chance(if deep { 4 } else { 11 }, 20) {
        f |= BPF_F_USER_STACK;
        if rng.chance(2, 5) {
            f |= BPF_F_USER_BUILD_ID;
        }
    } else if rng.chance(1, 30) {
        // BUILD_ID without USER_STACK: EINVAL.
        f |= BPF_F_USER_BUILD_ID;
    }
    if rng.chance(1, 40) {
        f |= 1 << rng.range(12, 64);
    }
    let elem = gs_elem(f) as u64;
    let mut size = match rng.range(0, 10) {
        0 => 0,
        1..=3 => elem * rng.range(1, 5),
        _ => elem * rng.range(1, BUF_MAX as u64 / elem + 1),
    } as usize;
    if rng.chance(1, 20) {
        size = rng.range(1, BUF_MAX as u64 + 1) as usize;
    }
    Op::GetStack { flags: f, size }
}

/// `bpf_get_stack`'s frame size for `flags`.
fn gs_elem(flags: u64) -> usize {
    if flags & BPF_F_USER_STACK != 0 && flags & BPF_F_USER_BUILD_ID != 0 {
        32
    } else {
        8
    }
}

/// Whether `op` makes the kernel resolve user frames to build ids.
fn resolves(op: &Op) -> bool {
    match *op {
        Op::StackId { map, flags } => map == MAP_BUILD_ID && flags & BPF_F_USER_STACK != 0,
        Op::GetStack { flags, .. } => gs_elem(flags) == 32,
    }
}

/// `frames + skip` of a user-stack `bpf_get_stack` that gets as far as
/// cutting the sample's chain (flags and size valid); None for any other
/// call. The cut depth is `min(this + nr_kernel, max_stack)`: ordered as
/// this is.
fn cut_key(op: &Op) -> Option<u64> {
    match *op {
        Op::GetStack { flags, size } => {
            let elem = gs_elem(flags);
            (flags & BPF_F_USER_STACK != 0 && flags & !GET_STACK_FLAG_MASK == 0 && size % elem == 0)
                .then(|| (size / elem) as u64 + (flags & BPF_F_SKIP_FIELD_MASK))
        }
        Op::StackId { .. } => None,
    }
}

/// Whether `op` is a user-stack `bpf_get_stackid` with valid flags: it
/// reads the whole chain (its length decides `EFAULT`) but leaves it as it
/// was.
fn user_stackid(op: &Op) -> bool {
    matches!(*op, Op::StackId { flags, .. }
        if flags & BPF_F_USER_STACK != 0 && flags & !STACKID_FLAG_MASK == 0)
}

/// One sample's calls, ordered and limited as the module docs say.
fn sample_ops(rng: &mut Rng, deep: bool) -> Vec<Op> {
    let n = rng.range(1, OPS as u64 + 1) as usize;
    let mut ops: Vec<Op> = (0..n).map(|_| random_op(rng, deep)).collect();
    // At most one build-id resolution per program run: the others ask for
    // the kernel stack (stack id) or plain ips (get_stack).
    let mut seen = false;
    for op in &mut ops {
        if resolves(op) {
            if seen {
                match op {
                    Op::StackId { flags, .. } => *flags &= !BPF_F_USER_STACK,
                    Op::GetStack { flags, .. } => *flags &= !BPF_F_USER_BUILD_ID,
                }
            }
            seen = true;
        }
    }
    // The user-stack calls, in the places they drew: first those that cut
    // the chain, shallowest first, then the stack ids. Kernel-stack calls
    // and calls refused before the cut read only what every cut keeps.
    let at: Vec<usize> = (0..ops.len())
        .filter(|&i| cut_key(&ops[i]).is_some() || user_stackid(&ops[i]))
        .collect();
    let mut cutting: Vec<Op> = ops
        .iter()
        .copied()
        .filter(|o| cut_key(o).is_some())
        .collect();
    cutting.sort_by_key(cut_key);
    let stackids = ops.iter().copied().filter(user_stackid);
    let ordered: Vec<Op> = cutting.into_iter().chain(stackids).collect();
    for (&i, op) in at.iter().zip(ordered) {
        ops[i] = op;
    }
    ops
}

impl Case {
    fn new(seed: u64, max_stack: u32) -> Case {
        let mut rng = Rng::new(seed ^ 0x5045_5045_0000);
        let source = SOURCES[(seed % SOURCES.len() as u64) as usize];
        let deep = seed % SOURCES.len() as u64 == SOURCES.len() as u64 - 1;
        let ms = u64::from(max_stack);
        let period = match source {
            Source::CpuClock | Source::TaskClock => rng.range(50_000, 150_000),
            Source::PageFaults => rng.range(1, 3),
            Source::Cycles => rng.range(200_000, 2_000_000),
        };
        let sample_max_stack = match rng.range(0, 20) {
            _ if deep => ms,
            0..=11 => ms,
            12..=16 => rng.range(1, ms + 1),
            _ => rng.range(1, 9).min(ms),
        } as u16;
        let spec = EventSpec {
            source,
            period,
            sample_max_stack,
            exclude_callchain_kernel: !deep && rng.chance(1, 8),
            exclude_callchain_user: !deep && rng.chance(1, 8),
            exclude_kernel: !deep && rng.chance(1, 8),
        };
        let flags = |rng: &mut Rng| match rng.range(0, 20) {
            0 => BPF_F_RDONLY,
            1 => BPF_F_NUMA_NODE,
            _ => 0,
        };
        let maps = vec![
            stack_map(
                rng.range(8, 513),
                8 * value_frames(&mut rng, ms),
                flags(&mut rng),
            ),
            stack_map(
                rng.range(1, 9),
                8 * value_frames(&mut rng, ms),
                flags(&mut rng),
            ),
            stack_map(rng.range(4, 129), 8 * rng.range(1, 9), flags(&mut rng)),
            stack_map(
                rng.range(1, 257),
                32 * value_frames(&mut rng, ms),
                flags(&mut rng) | BPF_F_STACK_BUILD_ID,
            ),
        ];
        assert_eq!(maps.len(), NR_MAPS);
        assert_eq!(
            maps[MAP_BUILD_ID].map_flags & BPF_F_STACK_BUILD_ID,
            BPF_F_STACK_BUILD_ID
        );
        let plan = (0..SLOTS).map(|_| sample_ops(&mut rng, deep)).collect();
        Case {
            seed,
            deep,
            spec,
            maps,
            plan,
        }
    }
}

// --- recording ---------------------------------------------------------------

/// What the kernel did in one case.
struct Recorded {
    samples: Vec<Sample>,
    slots: Vec<SlotResult>,
    dumps: Vec<Dump>,
    throttled: u64,
}

/// Why a case did not run.
enum NotRun {
    /// perf_event_open refused this event here (no PMU, ...): loud skip.
    Refused(String),
}

fn record(case: &Case) -> Result<Recorded, NotRun> {
    let kmaps: Vec<Map> = case
        .maps
        .iter()
        .map(|a| {
            Map::create(*a).unwrap_or_else(|e| {
                panic!(
                    "seed {}: kernel refused {a:?}: {}",
                    case.seed,
                    errno_name(e)
                )
            })
        })
        .collect();
    let plan = PlanMaps::create(&case.plan);
    let prog =
        kernel::perf::load_plan_program(&plan, &kmaps.iter().collect::<Vec<_>>()).map_err(|e| {
            NotRun::Refused(format!(
                "BPF_PROG_LOAD of a perf_event program: {}",
                std::io::Error::from_raw_os_error(e)
            ))
        })?;
    let event = match Event::open(&case.spec, DATA_PAGES) {
        Ok(e) => e,
        Err(e @ (libc::ENOENT | libc::EOPNOTSUPP | libc::EACCES | libc::EPERM | libc::ENODEV)) => {
            return Err(NotRun::Refused(format!(
                "perf_event_open {:?}: {}",
                case.spec,
                std::io::Error::from_raw_os_error(e)
            )))
        }
        Err(e) => panic!(
            "seed {}: perf_event_open {:?}: {}",
            case.seed,
            case.spec,
            std::io::Error::from_raw_os_error(e)
        ),
    };
    event.set_bpf(&prog).unwrap_or_else(|e| {
        panic!(
            "seed {}: PERF_EVENT_IOC_SET_BPF: {}",
            case.seed,
            std::io::Error::from_raw_os_error(e)
        )
    });
    let mut rng = Rng::new(case.seed ^ 0x7061_7468);
    let start = Instant::now();
    event.enable();
    while (plan.count() as usize) < SLOTS && start.elapsed() < CASE_DEADLINE {
        let path = pe_path(&mut rng, case.deep);
        kernel::call_path_to(&path, leaf);
    }
    event.disable();
    let ring = event.drain();
    assert_eq!(
        ring.lost, 0,
        "seed {}: the ring lost {} samples (make DATA_PAGES bigger)",
        case.seed, ring.lost
    );
    let ran = (plan.count() as usize).min(SLOTS);
    assert_eq!(
        ring.samples.len(),
        ran,
        "seed {}: the program ran for {ran} samples with a slot, the ring holds {}",
        case.seed,
        ring.samples.len()
    );
    let slots = (0..ran)
        .map(|i| plan.result(i as u32, &case.plan[i]))
        .collect();
    let dumps = kmaps.iter().map(Map::dump).collect();
    Ok(Recorded {
        samples: ring.samples,
        slots,
        dumps,
        throttled: ring.throttled,
    })
}

// --- replay ------------------------------------------------------------------

fn kernel_ret(ret: i64) -> Result<i64, Errno> {
    if ret >= 0 {
        Ok(ret)
    } else {
        Err(i32::try_from(-ret).expect("errno fits in i32"))
    }
}

/// Counts for the summary line.
#[derive(Default)]
struct Tally {
    cases: usize,
    deep_cases: usize,
    skipped: Vec<String>,
    samples: usize,
    with_kernel: usize,
    with_user: usize,
    longest: usize,
    compared: usize,
    outcomes: BTreeMap<String, usize>,
    valid_frames: usize,
    throttled: u64,
    /// User-stack ids on a chain longer than `max_stack` words with a skip
    /// of `max_stack` or more (the empty stack, or the words past it).
    past_max_stack: usize,
}

/// Words before the first `PERF_CONTEXT_USER` (the kernel's
/// `count_kernel_ip`): the kernel part with its marker.
fn nr_kernel_words(chain: &[u64]) -> usize {
    chain
        .iter()
        .position(|&w| w == PERF_CONTEXT_USER)
        .unwrap_or(chain.len())
}

fn describe_sample(i: usize, s: &Sample) -> String {
    let nr_kernel = nr_kernel_words(&s.chain);
    format!(
        "sample #{i} (cpu {}, ip {:#x}, {} words, {} before PERF_CONTEXT_USER): {:x?}",
        s.cpu,
        s.ip,
        s.chain.len(),
        nr_kernel,
        s.chain
    )
}

/// Counts `StackBuildId` frames with status VALID in `bytes`.
fn valid_frames(bytes: &[u8]) -> usize {
    bytes
        .chunks_exact(32)
        .filter(|f| i32::from_ne_bytes(f[..4].try_into().unwrap()) == BPF_STACK_BUILD_ID_VALID)
        .count()
}

fn replay(
    case: &Case,
    rec: &Recorded,
    ours: &[StackMap],
    resolver: &ProcMaps,
    tally: &mut Tally,
) -> Result<(), String> {
    let fail = |what: String| {
        Err(format!(
            "seed {} ({:?}, maps {:?}): {what}\n  replay: KDIFF_SEED={} cargo test --test kernel_diff_pe",
            case.seed, case.spec, case.maps, case.seed
        ))
    };
    for (i, (sample, slot)) in rec.samples.iter().zip(&rec.slots).enumerate() {
        assert_eq!(
            sample.ip, slot.ip,
            "seed {}: ring sample #{i} is not slot #{i}",
            case.seed
        );
        let chain = &sample.chain;
        tally.samples += 1;
        tally.longest = tally.longest.max(chain.len());
        let nr_kernel = nr_kernel_words(chain);
        if nr_kernel > 0 {
            tally.with_kernel += 1;
        }
        if nr_kernel < chain.len() {
            tally.with_user += 1;
        }
        let cpu = sample.cpu as usize;
        for (s, (op, (kret, kbuf))) in case.plan[i].iter().zip(&slot.rets).enumerate() {
            assert_ne!(
                *kret,
                kernel::perf::NOT_RUN,
                "seed {}: op not run",
                case.seed
            );
            let kernel = kernel_ret(*kret);
            tally.compared += 1;
            match *op {
                Op::StackId { map, flags } => {
                    let skip = (flags & BPF_F_SKIP_FIELD_MASK) as usize + nr_kernel;
                    if user_stackid(op)
                        && skip >= PERF_MAX_STACK_DEPTH as usize
                        && skip < chain.len()
                    {
                        tally.past_max_stack += 1;
                    }
                    let m = &ours[map];
                    let r = if map == MAP_BUILD_ID {
                        m.get_stackid_pe_resolved(cpu, chain, flags, resolver)
                    } else {
                        m.get_stackid_pe(cpu, chain, flags)
                    }
                    .map(i64::from)
                    .map_err(|e| e.errno());
                    let key = match kernel {
                        Ok(_) => "get_stackid:id".to_string(),
                        Err(e) => format!("get_stackid:{}", errno_name(e)),
                    };
                    *tally.outcomes.entry(key).or_default() += 1;
                    if r != kernel {
                        return fail(format!(
                            "{}\n  op {s}: get_stackid(map {map}, flags {flags:#x}, skip {})\n  kernel: {}\n  ours:   {}",
                            describe_sample(i, sample),
                            flags & BPF_F_SKIP_FIELD_MASK,
                            show(&kernel.map(|v| v as usize)),
                            show(&r.map(|v| v as usize)),
                        ));
                    }
                }
                Op::GetStack { flags, size } => {
                    let mut buf = vec![0xa5u8; size];
                    let r = kstackmap::get_stack_pe(chain, flags, &mut buf, Some(resolver))
                        .map(|n| n as i64)
                        .map_err(|e| e.errno());
                    let elem = gs_elem(flags);
                    if elem == 32 {
                        tally.valid_frames += valid_frames(kbuf);
                    }
                    let key = match kernel {
                        Ok(0) => "get_stack:0".to_string(),
                        Ok(_) => "get_stack:bytes".to_string(),
                        Err(e) => format!("get_stack:{}", errno_name(e)),
                    };
                    *tally.outcomes.entry(key).or_default() += 1;
                    if r != kernel || buf != *kbuf {
                        return fail(format!(
                            "{}\n  op {s}: get_stack(flags {flags:#x}, skip {}, size {size})\n  kernel: {}\n  ours:   {}{}",
                            describe_sample(i, sample),
                            flags & BPF_F_SKIP_FIELD_MASK,
                            show(&kernel.map(|v| v as usize)),
                            show(&r.map(|v| v as usize)),
                            where_differs(kbuf, &buf, elem),
                        ));
                    }
                }
            }
        }
    }
    for (m, (kdump, map)) in rec.dumps.iter().zip(ours).enumerate() {
        let vs = case.maps[m].value_size as usize;
        let odump = kernel::dump_by(
            vs,
            |k| map.get_next_key(k).map_err(|e| e.errno()),
            |id, v| map.lookup(id, v).map_err(|e| e.errno()),
        );
        tally.compared += 1;
        if m == MAP_BUILD_ID {
            tally.valid_frames += kdump
                .0
                .iter()
                .filter_map(|(_, v)| v.as_ref().ok())
                .map(|v| valid_frames(v))
                .sum::<usize>();
        }
        if odump != *kdump {
            let first = kdump
                .0
                .iter()
                .zip(&odump.0)
                .find(|(k, o)| k != o)
                .map(|(k, o)| {
                    format!(
                        "\n  first difference: kernel id {} {}\n  ours id {} {}",
                        k.0,
                        show(&k.1),
                        o.0,
                        show(&o.1)
                    )
                })
                .unwrap_or_default();
            return fail(format!(
                "map {m}: final dumps differ: kernel {} entries (ended {}), ours {} (ended {}){first}",
                kdump.0.len(),
                errno_name(kdump.1),
                odump.0.len(),
                errno_name(odump.1),
            ));
        }
    }
    Ok(())
}

// --- the kernel's chain cut ----------------------------------------------------

/// Whether a user-stack `_pe` call leaves the sample's callchain cut to
/// its depth (Linux 6.19's fix, and 6.18.y's backport): a 1-frame
/// `bpf_get_stack(BPF_F_USER_STACK)` followed by a 128-frame one must then
/// give back the `PERF_CONTEXT_USER` marker only. Also a replayed case of
/// its own. `None`: no sample with a user part came (can't tell).
fn probe_cut(max_stack: u32) -> Result<Option<bool>, NotRun> {
    let first = Op::GetStack {
        flags: BPF_F_USER_STACK,
        size: 8,
    };
    let second = Op::GetStack {
        flags: BPF_F_USER_STACK,
        size: BUF_MAX,
    };
    let case = Case {
        seed: 0,
        deep: false,
        spec: EventSpec {
            source: Source::PageFaults,
            period: 1,
            sample_max_stack: max_stack as u16,
            exclude_callchain_kernel: false,
            exclude_callchain_user: false,
            exclude_kernel: false,
        },
        maps: Case::new(0, max_stack).maps,
        plan: vec![vec![first, second]; SLOTS],
    };
    let rec = record(&case)?;
    let mut with_user = 0;
    for (s, slot) in rec.samples.iter().zip(&rec.slots) {
        if nr_kernel_words(&s.chain) == s.chain.len() {
            continue;
        }
        // A user part: at least the marker and the sampled user ip before
        // the calls; the second call sees them unless the first cut them.
        if slot.rets[1].0 > 8 {
            return Ok(Some(false));
        }
        with_user += 1;
    }
    Ok((with_user > 0).then_some(true))
}

#[test]
fn pe_replay() {
    if skipped() {
        return;
    }
    let max_stack = kernel::sysctl_max_stack();
    if max_stack != PERF_MAX_STACK_DEPTH {
        loud(&format!(
            "KERNEL DIFF SKIPPED (_pe): kernel.perf_event_max_stack is {max_stack}; get_stack_pe models {PERF_MAX_STACK_DEPTH}"
        ));
        return;
    }
    match probe_cut(max_stack) {
        Err(NotRun::Refused(why)) => {
            loud(&format!("KERNEL DIFF SKIPPED (_pe): {why}"));
            return;
        }
        Ok(Some(true)) => {}
        Ok(cut) => {
            loud(&format!(
                "KERNEL DIFF SKIPPED (_pe): this kernel does not cut a sample's callchain to a user-stack _pe call's depth (probe: {cut:?}): it lacks the _pe depth fix the library models, and writes past short stack map values"
            ));
            return;
        }
    }
    let t0 = Instant::now();
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for seed in seeds(1, 14) {
        let case = Case::new(seed, max_stack);
        let rec = match record(&case) {
            Ok(r) => r,
            Err(NotRun::Refused(why)) => {
                loud(&format!("KERNEL DIFF SKIPPED (_pe case {seed}): {why}"));
                tally.skipped.push(format!("{seed}:{:?}", case.spec.source));
                continue;
            }
        };
        let resolver = ProcMaps::for_pid(std::process::id()).expect("ProcMaps::for_pid(self)");
        let ours: Vec<StackMap> = case
            .maps
            .iter()
            .map(|a| {
                ours::create(a, nr_cpus(), max_stack).unwrap_or_else(|e| {
                    panic!("seed {seed}: StackMap refused {a:?}: {}", errno_name(e))
                })
            })
            .collect();
        tally.cases += 1;
        tally.deep_cases += usize::from(case.deep);
        tally.throttled += rec.throttled;
        if let Err(m) = replay(&case, &rec, &ours, &resolver, &mut tally) {
            failures.push(m);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the _pe cases differ from the kernel:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // What a run must have covered: about 900 results a case; with the
    // default cases, kernel and user parts, resolved build ids, and (in
    // the deep cases) skips at and past max_stack on longer chains.
    assert!(
        tally.cases > 0 && tally.compared >= 400 * tally.cases,
        "too little compared: {} results in {} cases",
        tally.compared,
        tally.cases
    );
    if tally.cases >= 6 {
        assert!(
            tally.with_kernel >= 50 && tally.with_user >= 50 && tally.valid_frames > 0,
            "{} samples with a kernel part, {} with a user part, {} VALID build-id frames",
            tally.with_kernel,
            tally.with_user,
            tally.valid_frames
        );
    }
    if tally.deep_cases > 0 {
        assert!(
            tally.past_max_stack > 0,
            "no user stack id skipped max_stack or more of a longer chain"
        );
    }
    loud(&format!(
        "kernel diff (_pe): {} seeded cases ({} skipped: {:?}), {} samples ({} with a kernel part, {} with a user part, longest {} words; {} throttle records), {} results compared ({} VALID build-id frames, {} user stack ids skipping max_stack or more of a longer chain; kernel outcomes {:?}), 0 mismatches, {:.1} s",
        tally.cases,
        tally.skipped.len(),
        tally.skipped,
        tally.samples,
        tally.with_kernel,
        tally.with_user,
        tally.longest,
        tally.throttled,
        tally.compared,
        tally.valid_frames,
        tally.past_max_stack,
        tally.outcomes,
        t0.elapsed().as_secs_f64()
    ));
}
