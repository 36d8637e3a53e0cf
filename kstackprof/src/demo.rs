//! The built-in workload: three hot functions with designed shares of CPU
//! time (50 / 30 / 20 %).
//!
//! The shares are set by work, not by wall-clock time: each round calls the
//! functions with 5, 3 and 2 units of the same arithmetic, so time stolen
//! by other processes cannot skew them (cpu-clock samples only while the
//! worker runs). Each function has its own seed so that the compiler cannot
//! fold them into one symbol.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Iterations per unit of work (about a quarter of a millisecond).
const UNIT: u64 = 200_000;

/// The hot functions and their designed shares, as symbolized.
pub const DESIGNED: [(&str, f64); 3] = [
    ("kstackprof::demo::work_50pct", 50.0),
    ("kstackprof::demo::work_30pct", 30.0),
    ("kstackprof::demo::work_20pct", 20.0),
];

/// The unit of work: an xorshift chain. Written with plain operators and a
/// `while` loop so that even an unoptimized (test) build makes no calls
/// here: a frame-pointer walk sampled in a callee's prologue would skip the
/// hot function and blur its share.
#[inline(always)]
fn spin(units: u64, seed: u64) -> u64 {
    let n = black_box(units * UNIT);
    let mut x = black_box(seed);
    let mut i = 0u64;
    while i < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        i += 1;
    }
    x
}

/// Designed share: 50 %.
#[inline(never)]
pub fn work_50pct(units: u64) -> u64 {
    spin(units, 0xff51_afd7_ed55_8ccd)
}

/// Designed share: 30 %.
#[inline(never)]
pub fn work_30pct(units: u64) -> u64 {
    spin(units, 0xc4ce_b9fe_1a85_ec53)
}

/// Designed share: 20 %.
#[inline(never)]
pub fn work_20pct(units: u64) -> u64 {
    spin(units, 0x94d0_49bb_1331_11eb)
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs rounds of 5 + 3 + 2 units until the worker has had `seconds` of
/// CPU time (so a busy machine gives as many samples, only later), or
/// five times that in wall-clock time.
#[inline(never)]
pub fn worker(seconds: f64) {
    let budget = Duration::from_secs_f64(seconds);
    let start = thread_cpu_time();
    let give_up = Instant::now() + budget * 5;
    let mut acc = 0u64;
    while thread_cpu_time() - start < budget && Instant::now() < give_up {
        acc ^= work_50pct(black_box(5));
        acc ^= work_30pct(black_box(3));
        acc ^= work_20pct(black_box(2));
    }
    black_box(acc);
}
