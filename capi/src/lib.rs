//! The C API of kstackmap: `libkstackmap.a` / `libkstackmap.so` and
//! `include/kstackmap.h` (generated from this crate by cbindgen).
//!
//! Every function follows the kernel helpers' convention: a non-negative
//! result (an id, a length, 0) or `-errno` (Linux values, also exported as
//! `KSM_E*`). Memory is always the caller's: `ksm_*_storage_size` says how
//! many bytes a structure needs, `ksm_*_init` builds it in a block of at
//! least that many bytes at any address, and writes a handle that points
//! into the block. There is nothing to free: the structure is done with
//! when the caller stops using its memory. Handles may be used from any
//! number of threads (CPUs, interrupt contexts) at once.
//!
//! A NULL pointer, a misaligned typed pointer or a length that does not
//! fit gives `-EINVAL`; no exported function can panic (no reachable
//! panic, checked by `capi/check.sh` on the linked library), allocate,
//! block, or call anything outside the library except the caller's own
//! `ksm_find_vma_fn`.
//!
//! # Build
//!
//! `cargo build -p kstackmap-capi --profile capi [--target T]` builds the
//! library as C code links it: `#![no_std]`, `panic = "abort"` (the
//! workspace's `capi` profile), nothing needed from outside. Other builds
//! of this crate (its tests, clippy, the workspace's dev and release
//! builds) use the workspace's unwinding profiles, and a `no_std` library
//! cannot unwind, so those builds link `std` for its unwinding runtime
//! only; no code here uses it.
#![no_std]
#![deny(
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks
)]
// The C names (`ksm_map_attr`, ...) are the contract: cbindgen copies them.
#![allow(non_camel_case_types)]

// An unwinding build needs std's panic runtime (see the crate docs).
#[cfg(any(test, panic = "unwind"))]
extern crate std;

mod consts;
mod mem;

// The two structures; the header lists them in this order.
mod map;

mod depot;

pub use consts::*;
pub use depot::*;
pub use map::*;

use core::ffi::c_long;
use kstackmap::Error;

/// `-errno` of `e`, as the C functions return it.
fn neg(e: Error) -> c_long {
    -c_long::from(e.errno())
}

/// An id (or 0) as a C return value, or `-errno`. Ids are below 2^31,
/// so they fit a `long` even where it has 32 bits.
fn ret(r: Result<u32, Error>) -> c_long {
    ret_size(r.map(|v| v as usize))
}

/// A size as a C return value; `-ENOMEM` when it does not fit a `long`.
fn ret_size(r: Result<usize, Error>) -> c_long {
    match r {
        Ok(n) => c_long::try_from(n).unwrap_or_else(|_| neg(Error::NoMem)),
        Err(e) => neg(e),
    }
}

/// Never reached from the exported functions: `capi/check.sh` links the
/// library with them as roots and fails if this handler (or anything that
/// leads to it) is in the result.
#[cfg(all(panic = "abort", not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    ksm_panic_halt()
}

/// The panic handler's body, out of line so that it has a symbol of its
/// own for the check to look for.
#[cfg(all(panic = "abort", not(test)))]
#[inline(never)]
fn ksm_panic_halt() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests;
