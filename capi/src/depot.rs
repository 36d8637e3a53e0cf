//! The stack depot for C: every distinct stack kept under an id that never
//! changes, frames stored at their exact length and handed out in place.
//!
//! `ksm_depot_storage_size`, `ksm_depot_init`, then from any context
//! `ksm_depot_intern` (lock-free) and `ksm_depot_get` (wait-free).

use core::ffi::{c_long, c_void};

use kstackmap::{DepotConfig, Error, StackBuildId, StackDepotIn};

use crate::map::ksm_stack_build_id;
use crate::mem::{self, handle, slice};
use crate::{neg, ret, ret_size};

/// A stack depot, inside the memory given to `ksm_depot_init`. Opaque: C
/// code only holds pointers to it.
pub struct ksm_depot {
    depot: StackDepotIn<'static>,
}

/// How big a depot is and how it hashes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ksm_depot_config {
    /// The most distinct stacks; ids are below it. 1 to 2^24.
    pub capacity: u32,
    /// `uint64_t` words for the stacks: one header word per stack plus one
    /// per frame (four per `ksm_stack_build_id` frame). 2 to 2^31.
    pub arena_words: u64,
    /// Shards for the per-CPU counters (`cpu % nr_cpus`): at least 1.
    pub nr_cpus: u32,
    /// Keys the hash so that crafted stacks can't pile into one probe run:
    /// a random value when stacks come from an untrusted source.
    pub seed: u64,
}

/// The Rust config behind `cfg`; `Inval` when NULL or when `arena_words`
/// does not fit a `size_t`.
///
/// # Safety
///
/// `cfg` is NULL or valid for reads of a `ksm_depot_config`.
unsafe fn read_config(cfg: *const ksm_depot_config) -> Result<DepotConfig, Error> {
    if cfg.is_null() {
        return Err(Error::Inval);
    }
    // SAFETY: non-null and readable (the caller's promise); unaligned
    // reads accept any address.
    let c = unsafe { cfg.read_unaligned() };
    Ok(DepotConfig {
        capacity: c.capacity,
        arena_words: usize::try_from(c.arena_words).map_err(|_| Error::Inval)?,
        nr_cpus: c.nr_cpus as usize,
        seed: c.seed,
    })
}

/// Bytes of memory `ksm_depot_init` needs for `cfg`.
///
/// Returns the size, or `-EINVAL` for a bad config (capacity 0 or above
/// 2^24, fewer than 2 or more than 2^31 arena words, `nr_cpus` 0, NULL
/// `cfg`); `-ENOMEM` when the size does not fit the address space.
///
/// # Safety
///
/// `cfg` is NULL or points at a readable `struct ksm_depot_config`.
#[no_mangle]
pub unsafe extern "C" fn ksm_depot_storage_size(cfg: *const ksm_depot_config) -> c_long {
    // SAFETY: `cfg` is NULL or readable (the caller's promise).
    let size = unsafe { read_config(cfg) }.and_then(|cfg| {
        let inner = StackDepotIn::storage_size(&cfg)?;
        mem::storage_size::<ksm_depot>(inner)
    });
    ret_size(size)
}

/// Builds a depot in `mem[..len]` (any alignment) and stores its handle in
/// `*out` (written only on success). The handle points into `mem`.
///
/// Returns 0, or: the errno `ksm_depot_storage_size` gives for `cfg`;
/// `-ENOMEM` when `len` is below what it returns; `-EINVAL` for a NULL
/// `out`, `mem` or `cfg`, or a `len` no object can have. Writes the index
/// and directory (`O(capacity)`), not the arena. No teardown: the depot is
/// gone when its memory is reused.
///
/// # Safety
///
/// `out` and `cfg` are NULL or valid (writable, readable); `mem[..len]`
/// is NULL or valid for reads and writes for as long as the depot (or a
/// stack borrowed from it) is used, and is accessed only through the
/// depot's handle meanwhile.
#[no_mangle]
pub unsafe extern "C" fn ksm_depot_init(
    out: *mut *mut ksm_depot,
    mem: *mut c_void,
    len: usize,
    cfg: *const ksm_depot_config,
) -> c_long {
    if out.is_null() {
        return neg(Error::Inval);
    }
    // SAFETY: `cfg` is NULL or readable (the caller's promise).
    let cfg = match unsafe { read_config(cfg) } {
        Ok(cfg) => cfg,
        Err(e) => return neg(e),
    };
    // Config errors come first, whatever the memory.
    let inner = match StackDepotIn::storage_size(&cfg) {
        Ok(inner) => inner,
        Err(e) => return neg(e),
    };
    // SAFETY: `mem[..len]` is NULL or the caller's, for as long as the
    // depot is used (the caller's promise).
    let (at, rest) = match unsafe { mem::place::<ksm_depot>(mem, len, inner) } {
        Ok(split) => split,
        Err(e) => return neg(e),
    };
    let depot = match StackDepotIn::new_in(&cfg, rest) {
        Ok(depot) => depot,
        Err(e) => return neg(e),
    };
    // SAFETY: `at` is aligned, inside the caller's block and not part of
    // `rest`; `out` is non-null (checked above) and writable (the caller's
    // promise); unaligned writes accept any address.
    unsafe {
        at.as_ptr().write(ksm_depot { depot });
        out.write_unaligned(at.as_ptr());
    }
    0
}

/// The depot behind `d`; `Inval` when NULL or misaligned.
///
/// # Safety
///
/// As for `ksm_depot_intern`'s `d`.
unsafe fn depot<'h>(d: *const ksm_depot) -> Result<&'h StackDepotIn<'static>, Error> {
    // SAFETY: the caller's promise.
    unsafe { handle(d) }.map(|d| &d.depot)
}

/// The id of the stack `frames[..nr]` (instruction pointers, innermost
/// first), storing it if it is new. Same frames, same id; different
/// frames, different ids (a full compare, never a hash alone); an id never
/// changes or names another stack. `cpu` picks the counters' shard.
///
/// Returns the id (`>= 0`, below `capacity`) or: `-ENOMEM` when the stack
/// is new and the depot is full (ids, arena, or its probe run), nothing
/// changed; `-EINVAL` for `nr` 0, a NULL or misaligned `d` or `frames`.
///
/// Lock-free: never blocks, allocates or panics, never waits for another
/// CPU's half-written stack; callable from any context.
///
/// # Safety
///
/// `d` is NULL or a handle from `ksm_depot_init` whose memory is still the
/// depot's; `frames` is NULL or valid for reads of `nr` `uint64_t`s, not
/// written during the call.
#[no_mangle]
pub unsafe extern "C" fn ksm_depot_intern(
    d: *const ksm_depot,
    cpu: u32,
    frames: *const u64,
    nr: u32,
) -> c_long {
    // SAFETY: the caller's promises.
    let r = unsafe { depot(d) }.and_then(|d| {
        // SAFETY: the caller's promise for `frames`.
        let frames = unsafe { slice(frames, nr as usize) }?;
        d.intern(cpu as usize, frames)
    });
    ret(r)
}

/// `ksm_depot_intern` for build-id stacks: `frames[..nr]` as the map's
/// build-id values hold them. A build-id stack and an ips stack with the
/// same words are different stacks.
///
/// # Safety
///
/// As for `ksm_depot_intern`, with `nr` `struct ksm_stack_build_id`s.
#[no_mangle]
pub unsafe extern "C" fn ksm_depot_intern_build_ids(
    d: *const ksm_depot,
    cpu: u32,
    frames: *const ksm_stack_build_id,
    nr: u32,
) -> c_long {
    // SAFETY: the caller's promises.
    let r = unsafe { depot(d) }.and_then(|d| {
        // `ksm_stack_build_id` has `StackBuildId`'s layout (asserted below).
        // SAFETY: the caller's promise for `frames`.
        let frames = unsafe { slice(frames.cast::<StackBuildId>(), nr as usize) }?;
        d.intern_build_ids(cpu as usize, frames)
    });
    ret(r)
}

/// The stack under `id`, in place: stores in `*frames` a pointer to its
/// words inside the depot's memory and returns their number (the frames
/// of an ips stack; four words a frame for a build-id stack). The words
/// never change while the depot lives (until `ksm_depot_clear`).
///
/// Returns the number of words, or `-ENOENT` when `id` names no stack,
/// `-EINVAL` for a NULL `d` or `frames`. Wait-free.
///
/// # Safety
///
/// `d` as for `ksm_depot_intern`; `frames` is NULL or writable (any
/// alignment).
#[no_mangle]
pub unsafe extern "C" fn ksm_depot_get(
    d: *const ksm_depot,
    id: u32,
    frames: *mut *const u64,
) -> c_long {
    if frames.is_null() {
        return neg(Error::Inval);
    }
    // SAFETY: the caller's promise.
    let r = unsafe { depot(d) }.and_then(|d| d.get(id).ok_or(Error::NoEnt));
    match r {
        Ok(words) => {
            // SAFETY: non-null (checked above) and writable (the caller's
            // promise); unaligned writes accept any address.
            unsafe { frames.write_unaligned(words.as_ptr()) };
            ret_size(Ok(words.len()))
        }
        Err(e) => neg(e),
    }
}

/// `ksm_depot_get` for build-id stacks: `*frames` points at the stack's
/// `struct ksm_stack_build_id`s; returns their number. `-ENOENT` when `id`
/// names no stack or an ips stack.
///
/// # Safety
///
/// As for `ksm_depot_get`.
#[no_mangle]
pub unsafe extern "C" fn ksm_depot_get_build_ids(
    d: *const ksm_depot,
    id: u32,
    frames: *mut *const ksm_stack_build_id,
) -> c_long {
    if frames.is_null() {
        return neg(Error::Inval);
    }
    // SAFETY: the caller's promise.
    let r = unsafe { depot(d) }.and_then(|d| d.get_build_ids(id).ok_or(Error::NoEnt));
    match r {
        Ok(stack) => {
            // SAFETY: non-null (checked above) and writable (the caller's
            // promise); `ksm_stack_build_id` has `StackBuildId`'s layout.
            unsafe { frames.write_unaligned(stack.as_ptr().cast()) };
            ret_size(Ok(stack.len()))
        }
        Err(e) => neg(e),
    }
}

/// Number of stacks stored, or `-EINVAL` for a NULL `d`.
///
/// # Safety
///
/// `d` as for `ksm_depot_intern`.
#[no_mangle]
pub unsafe extern "C" fn ksm_depot_len(d: *const ksm_depot) -> c_long {
    // SAFETY: the caller's promise.
    ret_size(unsafe { depot(d) }.map(|d| d.len()))
}

/// Forgets every stack: ids start again from 0 and may name other stacks
/// afterwards. Returns 0, or `-EINVAL` for a NULL or misaligned `d`.
///
/// # Safety
///
/// `d` as for `ksm_depot_intern`, and nothing else uses the depot during
/// the call, nor any pointer `ksm_depot_get` returned before it, after it.
#[no_mangle]
pub unsafe extern "C" fn ksm_depot_clear(d: *mut ksm_depot) -> c_long {
    if !d.is_aligned() {
        return neg(Error::Inval);
    }
    // SAFETY: NULL (`as_mut` gives `None`) or an aligned, live depot that
    // nothing else reaches during the call (the caller's promise).
    match unsafe { d.as_mut() } {
        Some(d) => {
            d.depot.clear();
            0
        }
        None => neg(Error::Inval),
    }
}

// The C frame type is the Rust one, so the casts above are sound.
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<ksm_stack_build_id>() == size_of::<StackBuildId>());
    assert!(align_of::<ksm_stack_build_id>() == align_of::<StackBuildId>());
    assert!(offset_of!(ksm_stack_build_id, status) == offset_of!(StackBuildId, status));
    assert!(offset_of!(ksm_stack_build_id, build_id) == offset_of!(StackBuildId, build_id));
    assert!(offset_of!(ksm_stack_build_id, offset_or_ip) == offset_of!(StackBuildId, offset_or_ip));
};
