//! A SysTick interrupt handler racing thread mode on one map.
//!
//! On one core the only concurrency is preemption: an exception handler
//! runs to completion in the middle of whatever thread mode was doing,
//! between any two instructions (qemu runs with `-icount`, so interrupts
//! land on exact instruction boundaries, not only between translation
//! blocks). That is the case the library's lock-freedom is for: the
//! handler must never wait for the thread it interrupted (it would wait
//! forever), and no slot may be lost, duplicated or misplaced.
//!
//! Thread mode and the handler both insert (with and without
//! `REUSE_STACKID`), look up and delete on the same map and the same
//! freelist shard (one CPU: deletes free a slot to the shard `populate`
//! put it on, which is then shard 0 too). SysTick is re-armed
//! after every interrupt with a random period, so interrupts sweep over
//! every instruction of the thread's operations. The handler counts where
//! it landed: inside which thread-mode operation, and at how many distinct
//! instructions (the interrupted PC, read from the exception frame).
//!
//! At the end: enough interrupts (a minimum per thread-mode operation),
//! no misplaced stack seen by anyone (every successful lookup returned a
//! stack the test inserted, in the bucket of its own hash), and
//! conservation by behaviour (delete everything, then exactly
//! `max_entries` stacks fit before ENOMEM).

use core::mem::MaybeUninit;
use core::ptr;
use core::sync::atomic::{compiler_fence, AtomicPtr, AtomicU32, AtomicU8, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_semihosting::hprintln;
use kstackmap::uapi::BPF_F_REUSE_STACKID;
use kstackmap::{trace_hash, Config, Error, MapAttr, StackMapIn};

use crate::stacks::{frames, number_of, Rng, MAX_FRAMES};
use crate::TestResult;

/// Entries of the raced map (32 buckets): small, so inserts collide,
/// REUSE recycles, and the freelist runs dry often.
const MAX_ENTRIES: u32 = 24;
/// Distinct stacks the two sides pick from.
const POOL: u32 = 96;
/// Interrupts to take before stopping.
const MIN_IRQS: u32 = 50_000;
/// Interrupts that must land inside each kind of thread-mode operation
/// (about half of what a run sees: the run is deterministic, but a change
/// to the code moves where interrupts land).
const MIN_PER_OP: [(u8, u32); 4] = [
    (INSERT, 5_000),
    (LOOKUP, 2_000),
    (DELETE, 300),
    (LOOKUP_AND_DELETE, 300),
];
/// Distinct interrupted instructions inside thread-mode map operations.
const MIN_DISTINCT_PCS: u32 = 300;
/// Thread-mode operations after which a run without enough interrupts
/// fails (SysTick not firing) instead of looping forever.
const MAX_THREAD_OPS: u32 = 5_000_000;
/// SysTick periods, in core clock ticks (25 MHz on mps2-an386; with
/// `-icount shift=0` one tick is 40 instructions): 1,200 to 12,000
/// instructions between interrupts, a few thread-mode operations each.
const PERIOD: (u32, u32) = (30, 300);

/// The map the handler works on; null outside the test's window.
static MAP: AtomicPtr<StackMapIn<'static>> = AtomicPtr::new(ptr::null_mut());

/// What thread mode is doing, for the handler's landing statistics.
static THREAD_OP: AtomicU8 = AtomicU8::new(NONE);
const NONE: u8 = 0;
const INSERT: u8 = 1;
const LOOKUP: u8 = 2;
const DELETE: u8 = 3;
const LOOKUP_AND_DELETE: u8 = 4;
const NEXT_KEY: u8 = 5;
const OP_NAMES: [&str; 6] = [
    "none",
    "get_stackid",
    "lookup",
    "delete",
    "lookup_and_delete",
    "get_next_key",
];

// Every access to THREAD_OP and the statistics below is Relaxed: on one
// core the handler runs to completion between two thread-mode
// instructions, so they need no ordering with each other, only to happen
// in program order around the map calls, which `in_op`'s compiler fences
// give.

/// Interrupts taken.
static IRQS: AtomicU32 = AtomicU32::new(0);
/// Interrupts taken while thread mode was in each operation (`OP_NAMES`).
static IN_OP: [AtomicU32; 6] = [const { AtomicU32::new(0) }; 6];
/// Distinct interrupted instructions inside thread-mode operations.
static DISTINCT_PCS: AtomicU32 = AtomicU32::new(0);
/// Interrupted PCs that fell outside [`PC_SEEN`]'s range.
static PC_OUT_OF_TEXT: AtomicU32 = AtomicU32::new(0);
/// The handler's results by kind (an `Ok` insert may have been a hit).
static H_INSERTED: AtomicU32 = AtomicU32::new(0);
static H_EXIST: AtomicU32 = AtomicU32::new(0);
static H_NOMEM: AtomicU32 = AtomicU32::new(0);
static H_LOOKED_UP: AtomicU32 = AtomicU32::new(0);
static H_DELETED: AtomicU32 = AtomicU32::new(0);
/// Completed pop-pop-push patterns ([`aba`]).
static H_ABA: AtomicU32 = AtomicU32::new(0);
/// Anything wrong the handler saw (it can't return an error).
static H_BAD: AtomicU32 = AtomicU32::new(0);
/// The handler's random state, kept between interrupts.
static H_RNG: AtomicU32 = AtomicU32::new(0x1234_5678);

/// One bit per halfword of `.text`: interrupted PCs seen inside a thread
/// operation. 8,192 words cover 512 KiB of code.
static PC_SEEN: [AtomicU32; 8192] = [const { AtomicU32::new(0) }; 8192];

extern "C" {
    /// Start of `.text` (cortex-m-rt's link.x).
    static __stext: u32;
}

// The SysTick vector: pass the exception frame's address to the handler.
// Thread mode runs on MSP (cortex-m-rt never switches to PSP), so on entry
// SP points at the frame the hardware stacked: r0-r3, r12, lr, pc, xpsr
// (then the FP registers, when lazily stacked). Defining the `SysTick`
// symbol overrides cortex-m-rt's `PROVIDE(SysTick = DefaultHandler)`.
core::arch::global_asm!(
    ".section .text.SysTick,\"ax\",%progbits",
    ".global SysTick",
    ".type SysTick,%function",
    ".thumb_func",
    "SysTick:",
    "    mov r0, sp",
    "    b {handler}",
    handler = sym systick,
);

/// The SysTick handler: statistics, a few map operations, re-arm.
///
/// # Safety
///
/// Called only from the `SysTick` vector above, with `frame` the address
/// of the exception frame the hardware stacked.
unsafe extern "C" fn systick(frame: *const u32) {
    IRQS.fetch_add(1, Ordering::Relaxed);
    let op = THREAD_OP.load(Ordering::Relaxed);
    if let Some(n) = IN_OP.get(op as usize) {
        n.fetch_add(1, Ordering::Relaxed);
    }
    if op != NONE {
        // SAFETY: `frame` is the stacked exception frame (caller's
        // promise); word 6 is the return address, the interrupted PC.
        let pc = unsafe { frame.add(6).read_volatile() } as usize;
        mark_pc(pc);
    }
    let mut rng = Rng::new(H_RNG.load(Ordering::Relaxed));
    let map = MAP.load(Ordering::Acquire);
    if !map.is_null() {
        // SAFETY: thread mode publishes the pointer while the map is alive
        // and nulls it before the map is dropped; on one core this handler
        // runs entirely between two thread-mode instructions, so the map
        // outlives this call.
        let map = unsafe { &*map };
        if handler_ops(map, &mut rng).is_err() {
            H_BAD.fetch_add(1, Ordering::Relaxed);
        }
    }
    let period = PERIOD.0 + rng.below(PERIOD.1 - PERIOD.0);
    H_RNG.store(rng.next(), Ordering::Relaxed);
    // SAFETY: the SysTick registers; thread mode writes them only to start
    // and stop the timer, never while this handler runs (one core).
    unsafe {
        let syst = &*SYST::PTR;
        syst.rvr.write(period);
        syst.cvr.write(0); // restart the count from the new period now
    }
}

/// Records an interrupted PC in [`PC_SEEN`]; counts new ones.
fn mark_pc(pc: usize) {
    // Only the address of the linker symbol is taken, never its value.
    let start = ptr::addr_of!(__stext) as usize;
    let half = pc.wrapping_sub(start) / 2;
    match PC_SEEN.get(half / 32) {
        Some(word) => {
            let bit = 1 << (half % 32);
            if word.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
                DISTINCT_PCS.fetch_add(1, Ordering::Relaxed);
            }
        }
        None => {
            PC_OUT_OF_TEXT.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether `ips`, read from bucket `id`, is a stack the test inserted and
/// sits in the bucket of its own hash.
fn well_placed(map: &StackMapIn<'_>, id: u32, ips: &[u64]) -> bool {
    number_of(ips).is_some() && trace_hash(ips) & (map.n_buckets() - 1) == id
}

/// The handler's share: 1 to 4 operations, each an insert (with or
/// without REUSE), a lookup, a delete, or the ABA pattern ([`aba`]).
/// Several per interrupt, so that one thread-mode operation can see the
/// freelist popped and pushed more than once under it. `Err` on anything
/// the map must never do.
fn handler_ops(map: &StackMapIn<'_>, rng: &mut Rng) -> Result<(), ()> {
    let mask = map.n_buckets() - 1;
    let mut last = None;
    for _ in 0..1 + rng.below(4) {
        match rng.below(10) {
            0..=3 => {
                let s = frames(rng.below(POOL));
                let flags = if rng.below(4) == 0 {
                    BPF_F_REUSE_STACKID
                } else {
                    0
                };
                match map.get_stackid(0, s.ips(), flags) {
                    Ok(id) if id == trace_hash(s.ips()) & mask => {
                        H_INSERTED.fetch_add(1, Ordering::Relaxed);
                        last = Some(id);
                    }
                    Ok(_) => return Err(()),
                    Err(Error::Exist) => {
                        H_EXIST.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Error::NoMem) => {
                        H_NOMEM.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => return Err(()),
                }
            }
            4..=5 => {
                // Half the time the stack just inserted, else any bucket.
                let id = match last {
                    Some(id) if rng.below(2) == 0 => id,
                    _ => rng.below(map.n_buckets()),
                };
                let mut out = [0u64; MAX_FRAMES];
                match map.lookup_ips(id, &mut out) {
                    Ok(ips) if well_placed(map, id, ips) => {
                        H_LOOKED_UP.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => return Err(()),
                    Err(Error::NoEnt) => {}
                    Err(_) => return Err(()),
                }
            }
            6..=7 => match map.delete(rng.below(map.n_buckets())) {
                Ok(()) => {
                    H_DELETED.fetch_add(1, Ordering::Relaxed);
                }
                Err(Error::NoEnt) => {}
                Err(_) => return Err(()),
            },
            _ => aba(map, rng)?,
        }
    }
    Ok(())
}

/// Pop A, pop B, push A: the freelist's ABA pattern, made of map calls.
/// Two stacks go into empty buckets (each insert pops the top slot), then
/// the first is deleted (its slot is pushed back on top). A thread-mode
/// pop interrupted between reading `{A, next = B}` and its CAS then finds
/// A on top again but B gone: only the head's tag tells it so.
fn aba(map: &StackMapIn<'_>, rng: &mut Rng) -> Result<(), ()> {
    let mut first = None;
    for _ in 0..2 {
        // A stack whose bucket is empty now (nothing preempts a handler,
        // so it is still empty when inserted).
        for _ in 0..8 {
            let s = frames(rng.below(POOL));
            let id = trace_hash(s.ips()) & (map.n_buckets() - 1);
            if map.lookup_ips(id, &mut [0u64; MAX_FRAMES]) != Err(Error::NoEnt) {
                continue;
            }
            match map.get_stackid(0, s.ips(), 0) {
                Ok(got) if got == id => {
                    H_INSERTED.fetch_add(1, Ordering::Relaxed);
                    first = first.or(Some(id));
                }
                Ok(_) => return Err(()),
                Err(Error::NoMem) => {
                    H_NOMEM.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => return Err(()),
            }
            break;
        }
    }
    if let Some(id) = first {
        map.delete(id).map_err(drop)?;
        H_DELETED.fetch_add(1, Ordering::Relaxed);
        H_ABA.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Stops SysTick and unpublishes the map when dropped, so every way out
/// of the test (a failed check included) leaves no handler using it.
struct Window<'s> {
    syst: &'s mut SYST,
}

impl Drop for Window<'_> {
    fn drop(&mut self) {
        self.syst.disable_interrupt();
        self.syst.disable_counter();
        // Release: orders every thread-mode access to the map before the
        // unpublish, for the Acquire load in `systick` (a compiler fence
        // on one core).
        MAP.store(ptr::null_mut(), Ordering::Release);
        cortex_m::peripheral::SCB::clear_pendst();
    }
}

/// Thread mode's operation `op` on the map, with `THREAD_OP` set around it
/// so the handler knows where it landed.
fn in_op<T>(op: u8, f: impl FnOnce() -> T) -> T {
    THREAD_OP.store(op, Ordering::Relaxed);
    // A signal fence: keep the operation after the mark for the handler.
    compiler_fence(Ordering::SeqCst);
    let r = f();
    compiler_fence(Ordering::SeqCst);
    THREAD_OP.store(NONE, Ordering::Relaxed);
    r
}

pub fn systick_races_thread_mode(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    let Some(mut core) = cortex_m::Peripherals::take() else {
        fail!("peripherals already taken");
    };
    let attr = MapAttr {
        max_entries: MAX_ENTRIES,
        value_size: 8 * MAX_FRAMES as u32,
        ..MapAttr::default()
    };
    let cfg = Config {
        nr_cpus: 1,
        ..Config::default()
    };
    let map = ok!(StackMapIn::new_in(&attr, cfg, mem));
    let mask = map.n_buckets() - 1;

    let syst = &mut core.SYST;
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(PERIOD.1);
    syst.clear_current();
    // Release: the map's initialisation happens-before the handler's
    // Acquire load of the pointer (a compiler fence on one core).
    MAP.store(
        ptr::from_ref(&map).cast_mut().cast::<StackMapIn<'static>>(),
        Ordering::Release,
    );
    let window = Window { syst };
    window.syst.enable_interrupt();
    window.syst.enable_counter();

    let mut rng = Rng::new(0xc0ff_ee11);
    let mut ops = 0u32;
    let mut out = [0u64; MAX_FRAMES];
    let (mut t_inserted, mut t_looked_up, mut t_deleted) = (0u32, 0u32, 0u32);
    while IRQS.load(Ordering::Relaxed) < MIN_IRQS {
        ops += 1;
        check!(
            ops < MAX_THREAD_OPS,
            "only {} interrupts in {} operations",
            IRQS.load(Ordering::Relaxed),
            ops
        );
        match rng.below(20) {
            0..=9 => {
                let s = frames(rng.below(POOL));
                let flags = if rng.below(4) == 0 {
                    BPF_F_REUSE_STACKID
                } else {
                    0
                };
                match in_op(INSERT, || map.get_stackid(0, s.ips(), flags)) {
                    Ok(id) => {
                        check_eq!(id, trace_hash(s.ips()) & mask);
                        t_inserted += 1;
                    }
                    Err(Error::Exist | Error::NoMem) => {}
                    Err(e) => fail!("get_stackid: {:?}", e),
                }
            }
            10..=14 => {
                let id = rng.below(map.n_buckets());
                match in_op(LOOKUP, || map.lookup_ips(id, &mut out)) {
                    Ok(ips) => {
                        check!(well_placed(&map, id, ips), "bucket {}: {:x?}", id, ips);
                        t_looked_up += 1;
                    }
                    Err(Error::NoEnt) => {}
                    Err(e) => fail!("lookup: {:?}", e),
                }
            }
            15..=17 => {
                let id = rng.below(map.n_buckets());
                match in_op(DELETE, || map.delete(id)) {
                    Ok(()) => t_deleted += 1,
                    Err(Error::NoEnt) => {}
                    Err(e) => fail!("delete: {:?}", e),
                }
            }
            18 => {
                let id = rng.below(map.n_buckets());
                let mut value = [0u8; 8 * MAX_FRAMES];
                match in_op(LOOKUP_AND_DELETE, || map.lookup_and_delete(id, &mut value)) {
                    Ok(()) => {
                        let mut ips = [0u64; MAX_FRAMES];
                        let mut nr = 0;
                        for (ip, b) in ips.iter_mut().zip(value.chunks_exact(8)) {
                            *ip = u64::from_le_bytes([
                                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
                            ]);
                            if *ip != 0 {
                                nr += 1;
                            }
                        }
                        check!(
                            well_placed(&map, id, &ips[..nr]),
                            "bucket {}: {:x?}",
                            id,
                            ips
                        );
                        t_deleted += 1;
                    }
                    Err(Error::NoEnt) => {}
                    Err(e) => fail!("lookup_and_delete: {:?}", e),
                }
            }
            _ => {
                let key = rng.below(map.n_buckets());
                match in_op(NEXT_KEY, || map.get_next_key(Some(key))) {
                    Ok(next) => check!(next < map.n_buckets()),
                    Err(Error::NoEnt) => {}
                    Err(e) => fail!("get_next_key: {:?}", e),
                }
            }
        }
        check_eq!(
            H_BAD.load(Ordering::Relaxed),
            0,
            "the handler saw a bad result"
        );
    }
    drop(window);

    let irqs = IRQS.load(Ordering::Relaxed);
    let in_op = |op: u8| IN_OP[op as usize].load(Ordering::Relaxed);
    hprintln!(
        "    {} interrupts over {} thread-mode operations; landed in: {}",
        irqs,
        ops,
        OpCounts(&in_op)
    );
    hprintln!(
        "    {} distinct interrupted instructions inside operations ({} outside .text)",
        DISTINCT_PCS.load(Ordering::Relaxed),
        PC_OUT_OF_TEXT.load(Ordering::Relaxed)
    );
    hprintln!(
        "    handler: {} inserted, {} EEXIST, {} ENOMEM, {} looked up, {} deleted, \
         {} pop-pop-push; thread: {} inserted, {} looked up, {} deleted",
        H_INSERTED.load(Ordering::Relaxed),
        H_EXIST.load(Ordering::Relaxed),
        H_NOMEM.load(Ordering::Relaxed),
        H_LOOKED_UP.load(Ordering::Relaxed),
        H_DELETED.load(Ordering::Relaxed),
        H_ABA.load(Ordering::Relaxed),
        t_inserted,
        t_looked_up,
        t_deleted
    );
    check_eq!(H_BAD.load(Ordering::Relaxed), 0);
    check!(irqs >= MIN_IRQS);
    if option_env!("KSTACKMAP_CORTEX_M_PCS").is_some() {
        dump_pcs();
    }
    for (op, min) in MIN_PER_OP {
        check!(
            in_op(op) >= min,
            "{} interrupts inside {}",
            in_op(op),
            OP_NAMES[op as usize]
        );
    }
    check!(DISTINCT_PCS.load(Ordering::Relaxed) >= MIN_DISTINCT_PCS);
    // Both sides did real work, not just fail.
    for (what, n) in [
        ("handler inserts", H_INSERTED.load(Ordering::Relaxed)),
        ("handler lookups", H_LOOKED_UP.load(Ordering::Relaxed)),
        ("handler deletes", H_DELETED.load(Ordering::Relaxed)),
        ("handler ENOMEMs", H_NOMEM.load(Ordering::Relaxed)),
        ("handler pop-pop-push", H_ABA.load(Ordering::Relaxed)),
        ("thread inserts", t_inserted),
        ("thread lookups", t_looked_up),
        ("thread deletes", t_deleted),
    ] {
        check!(n >= 100, "only {} {}", n, what);
    }

    // Quiet now. Every stack left is well placed ...
    let mut left = 0;
    for id in 0..map.n_buckets() {
        match map.lookup_ips(id, &mut out) {
            Ok(ips) => {
                check!(well_placed(&map, id, ips), "bucket {}: {:x?}", id, ips);
                left += 1;
            }
            Err(Error::NoEnt) => {}
            Err(e) => fail!("lookup: {:?}", e),
        }
    }
    check!(left <= MAX_ENTRIES);
    // ... and no slot was lost or duplicated: after deleting everything,
    // exactly max_entries new stacks fit, each in its own bucket.
    for id in 0..map.n_buckets() {
        match map.delete(id) {
            Ok(()) | Err(Error::NoEnt) => {}
            Err(e) => fail!("delete: {:?}", e),
        }
    }
    let mut stored = 0;
    let mut k = POOL;
    loop {
        check!(k < POOL + 100_000, "no ENOMEM");
        let s = frames(k);
        match map.get_stackid(0, s.ips(), 0) {
            Ok(_) => stored += 1,
            Err(Error::Exist) => {}
            Err(Error::NoMem) => break,
            Err(e) => fail!("refill: {:?}", e),
        }
        k += 1;
    }
    check_eq!(stored, MAX_ENTRIES, "conservation");
    for id in 0..map.n_buckets() {
        if let Ok(ips) = map.lookup_ips(id, &mut out) {
            check!(well_placed(&map, id, ips), "bucket {}: {:x?}", id, ips);
        }
    }
    Ok(())
}

/// Prints every interrupted PC inside a thread-mode operation, sixteen a
/// line after `pcs:`, for scripts/cortex-m-test to map to functions (built
/// in only with `KSTACKMAP_CORTEX_M_PCS` set at build time).
fn dump_pcs() {
    let start = ptr::addr_of!(__stext) as usize;
    let mut line = [0usize; 16];
    let mut n = 0;
    let flush = |line: &[usize]| {
        if !line.is_empty() {
            hprintln!("pcs: {:x?}", line);
        }
    };
    for (w, word) in PC_SEEN.iter().enumerate() {
        let mut bits = word.load(Ordering::Relaxed);
        while bits != 0 {
            let b = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if let Some(slot) = line.get_mut(n) {
                *slot = start + 2 * (32 * w + b);
                n += 1;
            }
            if n == line.len() {
                flush(&line);
                n = 0;
            }
        }
    }
    flush(line.get(..n).unwrap_or(&[]));
}

/// Prints the per-operation landing counts.
struct OpCounts<'f>(&'f dyn Fn(u8) -> u32);

impl core::fmt::Display for OpCounts<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (op, name) in OP_NAMES.iter().enumerate() {
            if op > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} {}", name, (self.0)(op as u8))?;
        }
        Ok(())
    }
}
