//! kstackmap used the way a kernel module would use it.
//!
//! A `#![no_std]` static library with no allocator: one stack trace map in
//! a `static` ([`StaticStorage`] handed to [`StackMapIn::new_in`]), set up
//! once by [`kstackmap_init`] and then used from C through `extern "C"`
//! entry points that follow the BPF helpers' conventions (an id or a
//! negative errno).
//!
//! The map's struct goes into a one-shot [`StaticCell`] and is published
//! through a [`OnceRef`], so every entry point finds it with one Acquire
//! load. (Not `spin::Once`: its initialising calls keep a reachable
//! `panic!("Once panicked")`, the check for a poisoned `Once`, even with
//! `panic = "abort"` where nothing can poison it.)
//!
//! The point of the example is what it does *not* contain: `check.sh`
//! links the library with only these entry points as roots and fails if
//! any code reachable from them can panic or allocate. The panic handler
//! below must therefore be dead code in the linked object.
//!
//! Build (what `check.sh` does; it also runs the tests below on the host):
//!
//! ```text
//! cargo build --release --target x86_64-unknown-none
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks
)]

use heapless::Vec;
use kstackmap::uapi::PERF_MAX_STACK_DEPTH;
use kstackmap::{Config, Error, MapAttr, StackMapIn, StaticStorage};
use once_cell::race::OnceRef;
use static_cell::StaticCell;

/// Freelist shards: `cpu` arguments are taken modulo this.
const NR_CPUS: usize = 8;

/// Bytes of the map's static block (in `.bss`): 1024 stacks of 127 frames
/// (the default `MapAttr`, about 1 MiB) fit.
const STORAGE_BYTES: usize = 2 << 20;

/// Frames of a callchain snapshot: the default `perf_event_max_stack`,
/// which is also the map's `max_stack`, so the map never takes more.
const MAX_FRAMES: usize = PERF_MAX_STACK_DEPTH as usize;

/// `EBUSY`: [`kstackmap_init`] already ran.
const EBUSY: i32 = 16;
/// `ENODEV`: an entry point was called before [`kstackmap_init`].
const ENODEV: i32 = 19;
/// `EFAULT`: a null or misaligned pointer.
const EFAULT: i32 = 14;

/// The memory the map lives in; handed out once.
static MEM: StaticStorage<STORAGE_BYTES> = StaticStorage::new();

/// Where [`kstackmap_init`] puts the map's struct; written once.
static CELL: StaticCell<StackMapIn<'static>> = StaticCell::new();

/// The map, once [`kstackmap_init`] has succeeded.
static MAP: OnceRef<'static, StackMapIn<'static>> = OnceRef::new();

/// The map's `Config`: [`NR_CPUS`] shards, `max_stack` [`MAX_FRAMES`].
const fn config() -> Config {
    Config {
        nr_cpus: NR_CPUS,
        max_stack: MAX_FRAMES as u32,
    }
}

/// The map, or `ENODEV` before [`kstackmap_init`].
fn map() -> Result<&'static StackMapIn<'static>, i32> {
    MAP.get().ok_or(ENODEV)
}

/// `-errno` of `e`.
fn neg(e: Error) -> i32 {
    -e.errno()
}

/// Creates the map in the static block: `max_entries` stacks of
/// `value_size` bytes, `map_flags` as for `BPF_MAP_CREATE`
/// (`BPF_F_STACK_BUILD_ID` and the others).
///
/// Returns 0, or a negative errno: the kernel's `BPF_MAP_CREATE` errors
/// for bad attributes (`-EINVAL`, `-E2BIG`), `-ENOMEM` when the map does
/// not fit the static block, `-EBUSY` when the map already exists. A call
/// that fails with a bad attribute leaves the module as it was, so a later
/// call may succeed. Runs in process context, once, like a module's init.
#[no_mangle]
pub extern "C" fn kstackmap_init(max_entries: u32, value_size: u32, map_flags: u32) -> i32 {
    if MAP.get().is_some() {
        return -EBUSY;
    }
    let attr = MapAttr {
        max_entries,
        value_size,
        map_flags,
        ..MapAttr::default()
    };
    // Check before taking the block: a bad attribute must not use it up.
    match StackMapIn::storage_size(&attr, config()) {
        Ok(size) if size <= STORAGE_BYTES => {}
        Ok(_) => return neg(Error::NoMem),
        Err(e) => return neg(e),
    }
    // Whoever takes the block is the one caller that goes on: a racing
    // init gets EBUSY here, so `CELL` and `MAP` are set at most once.
    let Some(mem) = MEM.take() else {
        return -EBUSY;
    };
    // Cannot fail: the attributes passed `storage_size` and fit the block.
    let map = match StackMapIn::new_in(&attr, config(), mem) {
        Ok(map) => map,
        Err(e) => return neg(e),
    };
    let Some(map) = CELL.try_init(map) else {
        return -EBUSY;
    };
    // Release (inside `set`): pairs with the Acquire load in `MAP.get()`,
    // so a caller that finds the map sees it fully built.
    match MAP.set(map) {
        Ok(()) => 0,
        Err(()) => -EBUSY,
    }
}

/// `bpf_get_stackid`: the id of the stack in `ips[..nr]` (innermost frame
/// first), storing it if it is new; `flags` are the helper's
/// (`BPF_F_SKIP_FIELD_MASK`, `BPF_F_USER_STACK`, `BPF_F_FAST_STACK_CMP`,
/// `BPF_F_REUSE_STACKID`). `cpu` is the calling CPU.
///
/// Returns the id (`>= 0`) or a negative errno, as the helper does
/// (`-EEXIST`, `-ENOMEM`, `-EFAULT`, `-EINVAL`); `-ENODEV` before
/// [`kstackmap_init`], `-EFAULT` for a null or misaligned `ips` with
/// `nr > 0`.
///
/// At most the first 127 frames are read (the map's `max_stack`): they are
/// copied to a buffer on the stack first (1 KiB), so the map hashes,
/// compares and stores one snapshot even if the caller's buffer is reused
/// meanwhile.
/// Never blocks, allocates or panics: callable from any context.
///
/// # Safety
///
/// When `nr > 0` and `ips` is not null, `ips` must be valid for reads of
/// `nr` `u64`s for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn kstackmap_get_stackid(
    cpu: u32,
    ips: *const u64,
    nr: u32,
    flags: u64,
) -> i64 {
    let map = match map() {
        Ok(map) => map,
        Err(errno) => return -i64::from(errno),
    };
    let n = (nr as usize).min(MAX_FRAMES);
    let chain: &[u64] = if n == 0 {
        &[]
    } else if ips.is_null() || !ips.is_aligned() {
        return -i64::from(EFAULT);
    } else {
        // SAFETY: `ips` is non-null and aligned (checked above) and valid
        // for reads of `nr >= n` `u64`s (the caller's promise); the slice
        // lives only until the copy below, within this call.
        unsafe { core::slice::from_raw_parts(ips, n) }
    };
    let mut snap: Vec<u64, MAX_FRAMES> = Vec::new();
    if snap.extend_from_slice(chain).is_err() {
        // Not reached: `chain.len() <= MAX_FRAMES`, the capacity.
        return -i64::from(EFAULT);
    }
    match map.get_stackid(cpu as usize, &snap, flags) {
        Ok(id) => i64::from(id),
        Err(e) => -i64::from(e.errno()),
    }
}

/// `BPF_MAP_LOOKUP_ELEM`: copies stack `id` into `value[..size]`, zeroing
/// the part past the stack's frames.
///
/// Returns 0 or a negative errno: `-ENOENT` for an empty or out-of-range
/// id, `-EINVAL` when `size` is below the map's `value_size`, `-EPERM` on
/// a `BPF_F_WRONLY` map, `-EFAULT` for a null `value`, `-ENODEV` before
/// [`kstackmap_init`]. Never blocks, allocates or panics.
///
/// # Safety
///
/// `value` must be null or valid for writes of `size` bytes for the
/// duration of the call, and not accessed by anyone else meanwhile.
#[no_mangle]
pub unsafe extern "C" fn kstackmap_lookup(id: u32, value: *mut u8, size: u32) -> i32 {
    let map = match map() {
        Ok(map) => map,
        Err(errno) => return -errno,
    };
    if value.is_null() {
        return -EFAULT;
    }
    // SAFETY: `value` is non-null (checked above), any alignment suits
    // `u8`, and the caller promises `size` writable bytes that only this
    // call touches until it returns.
    let value = unsafe { core::slice::from_raw_parts_mut(value, size as usize) };
    match map.lookup(id, value) {
        Ok(()) => 0,
        Err(e) => neg(e),
    }
}

/// `BPF_MAP_DELETE_ELEM`: removes stack `id`.
///
/// Returns 0 or a negative errno: `-E2BIG` for an id past the buckets,
/// `-ENOENT` for an empty one, `-EPERM` on a `BPF_F_RDONLY` map, `-ENODEV`
/// before [`kstackmap_init`]. Never blocks, allocates or panics.
#[no_mangle]
pub extern "C" fn kstackmap_delete(id: u32) -> i32 {
    match map() {
        Ok(map) => map.delete(id).map_or_else(neg, |()| 0),
        Err(errno) => -errno,
    }
}

/// Never reached from the entry points above: `check.sh` links them and
/// fails if this handler (or anything that leads to it) is in the result.
#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    panic_halt()
}

/// The panic handler's body, kept out of line so that the handler has a
/// symbol of its own (`kstackmap_kmod::panic_halt`) for `check.sh` to
/// look for. A real module would `BUG()` here.
#[cfg(not(test))]
#[inline(never)]
fn panic_halt() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::ptr::{null, null_mut};

    const ENOENT: i64 = 2;
    const E2BIG: i64 = 7;
    const ENOMEM: i64 = 12;
    const EINVAL: i64 = 22;

    fn stackid(cpu: u32, chain: &[u64], flags: u64) -> i64 {
        // SAFETY: `chain` is valid for reads of `chain.len()` u64s.
        unsafe { kstackmap_get_stackid(cpu, chain.as_ptr(), chain.len() as u32, flags) }
    }

    fn lookup(id: i64, value: &mut [u8]) -> i64 {
        // SAFETY: `value` is valid for writes of `value.len()` bytes.
        let r = unsafe { kstackmap_lookup(id as u32, value.as_mut_ptr(), value.len() as u32) };
        i64::from(r)
    }

    /// The whole life of the module in one test: its state is global, as a
    /// module's is, so the steps must run in this order.
    #[test]
    fn module_lifecycle() {
        let chain = [0x1000u64, 0x2000, 0x3000];
        // Before init.
        assert_eq!(stackid(0, &chain, 0), -i64::from(ENODEV));
        assert_eq!(i64::from(kstackmap_delete(0)), -i64::from(ENODEV));
        // Bad attributes and a map too big for the block leave it unused.
        assert_eq!(i64::from(kstackmap_init(0, 32, 0)), -EINVAL);
        assert_eq!(i64::from(kstackmap_init(64, 12, 0)), -EINVAL);
        assert_eq!(i64::from(kstackmap_init(1 << 20, 8 * 127, 0)), -ENOMEM);
        // 64 stacks of up to 4 frames.
        assert_eq!(kstackmap_init(64, 4 * 8, 0), 0);
        assert_eq!(i64::from(kstackmap_init(64, 4 * 8, 0)), -i64::from(EBUSY));

        let id = stackid(3, &chain, 0);
        assert!((0..64).contains(&id), "{id}");
        assert_eq!(stackid(5, &chain, 0), id, "same stack, same id");
        // Only the first value_size / 8 frames count, as in the kernel.
        let long: std::vec::Vec<u64> = (1..=200).map(|i| i * 0x10).collect();
        assert_eq!(stackid(0, &long, 0), stackid(0, &long[..4], 0));
        // Errors come back as negative errnos.
        assert_eq!(stackid(0, &chain, 3), -i64::from(EFAULT), "nr <= skip");
        assert_eq!(stackid(0, &chain, 1 << 20), -EINVAL, "unknown flag");
        // SAFETY: a null `ips` is allowed (and refused).
        let null_ips = unsafe { kstackmap_get_stackid(0, null(), 3, 0) };
        assert_eq!(null_ips, -i64::from(EFAULT));

        let mut value = [0xffu8; 32];
        assert_eq!(lookup(id, &mut value), 0);
        let mut want = [0u8; 32];
        for (w, ip) in want.chunks_mut(8).zip(chain) {
            w.copy_from_slice(&ip.to_ne_bytes());
        }
        assert_eq!(value, want, "frames, then a zeroed tail");
        assert_eq!(lookup(id, &mut value[..16]), -EINVAL, "short buffer");
        // SAFETY: a null pointer is allowed (and refused).
        assert_eq!(unsafe { kstackmap_lookup(0, null_mut(), 32) }, -EFAULT);

        assert_eq!(kstackmap_delete(id as u32), 0);
        assert_eq!(i64::from(kstackmap_delete(id as u32)), -ENOENT);
        assert_eq!(lookup(id, &mut value), -ENOENT);
        assert_eq!(i64::from(kstackmap_delete(64)), -E2BIG);
    }
}
