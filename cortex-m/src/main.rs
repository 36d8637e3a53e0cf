//! kstackmap's tests on a Cortex-M4F (thumbv7em-none-eabihf), run on
//! qemu's `mps2-an386` board: the library as a no_std, no-allocator user
//! builds it (`--no-default-features`), over static memory, with 32-bit
//! atomics only (LDREX/STREX) and the 32-bit freelist head. One test races
//! a SysTick interrupt handler against thread mode on one map.
//!
//! Output goes to the host through semihosting: one line per test
//! (`test NAME ... ok` / `FAILED`, with the failed check's place and values
//! above it), then `N passed, N failed`. The exit code (semihosting
//! `SYS_EXIT`) is 0 only when every test passed; a panic anywhere prints
//! its message and exits with failure.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicUsize, Ordering};

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use kstackmap::StaticStorage;

#[macro_use]
mod check;
#[cfg(feature = "hooks")]
mod aba;
#[cfg(not(feature = "hooks"))]
mod depot;
#[cfg(not(feature = "hooks"))]
mod irq;
#[cfg(not(feature = "hooks"))]
mod seq;
#[cfg(not(feature = "hooks"))]
mod stacks;

/// A failed test; the check that failed has printed why.
#[derive(Debug)]
pub struct Fail;

/// What every test returns.
pub type TestResult = Result<(), Fail>;

/// A test: gets the whole arena, builds its maps in it.
type Test = fn(&mut [MaybeUninit<u8>]) -> TestResult;

/// Memory for the maps: each test borrows all of it in turn. 3 MiB holds
/// the largest map the 32-bit head allows (65,534 entries of one frame:
/// 1.5 MiB of elements, 256 KiB of buckets, 512 KiB of hit cache).
static ARENA: StaticStorage<{ 3 << 20 }> = StaticStorage::new();

/// Index into [`TESTS`] of the running test, for the panic message.
static CURRENT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// `(name, fn)` pairs from paths: the name is the function's.
macro_rules! tests {
    ($($module:ident::$name:ident),* $(,)?) => {
        &[$((stringify!($name), $module::$name as Test)),*]
    };
}

/// Every test, in the order they run (the interrupt test last). The
/// `hooks` build (kstackmap's `test-hooks`: a pop split around a test
/// hook) runs only the ABA test; the others run on the production pop.
#[cfg(feature = "hooks")]
const TESTS: &[(&str, Test)] = tests![aba::stalled_pop_2_16];

/// Every test, in the order they run (the interrupt test last).
#[cfg(not(feature = "hooks"))]
const TESTS: &[(&str, Test)] = tests![
    seq::jhash2_kernel_vectors,
    seq::trace_hash_is_jhash2_of_le_words,
    seq::ids_equal_the_kernels,
    seq::hit_exist_reuse,
    seq::fast_cmp_is_hash_only,
    seq::nomem_when_full,
    seq::skip_truncation_fault_inval,
    seq::lookup_bytes_and_zeroed_tail,
    seq::delete_get_next_key_update,
    seq::rdonly_wronly,
    seq::build_id_frames,
    seq::build_id_pop_before_compare,
    seq::get_stack_and_pe,
    seq::get_stackid_pe,
    seq::creation_errors_and_memory,
    seq::conservation_fill_delete_refill,
    seq::head16_capacity_limit,
    seq::head16_full_map,
    depot::depot_intern_get_full_clear,
    depot::depot_arena_full,
    depot::depot_build_ids,
    depot::depot_config_and_memory,
    irq::systick_races_thread_mode,
];

#[entry]
fn main() -> ! {
    let Some(arena) = ARENA.take() else {
        hprintln!("arena already taken");
        debug::exit(debug::EXIT_FAILURE);
        unreachable_exit()
    };
    hprintln!("running {} tests on {}", TESTS.len(), target());
    let (mut passed, mut failed) = (0u32, 0u32);
    for (i, (name, test)) in TESTS.iter().enumerate() {
        CURRENT.store(i, Ordering::Relaxed);
        let verdict = match test(arena) {
            Ok(()) => {
                passed += 1;
                "ok"
            }
            Err(Fail) => {
                failed += 1;
                "FAILED"
            }
        };
        hprintln!("test {} ... {}", name, verdict);
    }
    hprintln!("{} passed, {} failed", passed, failed);
    debug::exit(if failed == 0 {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    unreachable_exit()
}

/// What the run is on, for the first line.
fn target() -> &'static str {
    if cfg!(target_has_atomic = "64") {
        "a target with 64-bit atomics"
    } else {
        "thumbv7em (32-bit atomics only: 32-bit freelist head, LDREX/STREX pop)"
    }
}

/// `SYS_EXIT` does not return under qemu; if a debugger ignores it, stop.
fn unreachable_exit() -> ! {
    loop {
        cortex_m::asm::bkpt();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    cortex_m::interrupt::disable();
    let name = TESTS
        .get(CURRENT.load(Ordering::Relaxed))
        .map_or("(none)", |t| t.0);
    hprintln!("    panicked: {}", info);
    hprintln!("test {} ... FAILED", name);
    hprintln!("panic: the remaining tests did not run");
    debug::exit(debug::EXIT_FAILURE);
    unreachable_exit()
}

#[cortex_m_rt::exception]
unsafe fn HardFault(frame: &cortex_m_rt::ExceptionFrame) -> ! {
    hprintln!("    hard fault: {:?}", frame);
    hprintln!("hard fault: the remaining tests did not run");
    debug::exit(debug::EXIT_FAILURE);
    unreachable_exit()
}
