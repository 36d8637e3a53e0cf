//! The kernel-exact stack trace map (`BPF_MAP_TYPE_STACK_TRACE`) for C.
//!
//! `ksm_map_storage_size`, `ksm_map_init`, then from any context
//! `ksm_get_stackid` (the `bpf_get_stackid` helper) and from any thread the
//! syscall side: `ksm_lookup`, `ksm_delete`, `ksm_get_next_key`. Ids and
//! errnos are the kernel's for the same chains and attributes.

use core::ffi::{c_int, c_long, c_void};

use kstackmap::{Config, Error, MapAttr, StackMapIn, Vma, VmaResolver};

use crate::mem::{self, handle, slice, slice_mut};
use crate::{neg, ret, ret_size, KSM_BUILD_ID_SIZE_MAX};

/// A stack trace map, inside the memory given to `ksm_map_init`. Opaque:
/// C code only holds pointers to it.
pub struct ksm_map {
    map: StackMapIn<'static>,
}

/// The map's attributes: the fields of `union bpf_attr` that
/// `BPF_MAP_CREATE` reads for a stack trace map, checked as the kernel
/// checks them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ksm_map_attr {
    /// Number of stacks the map holds; ids are below the next power of two.
    pub max_entries: u32,
    /// Must be 4 (an id is a `uint32_t`).
    pub key_size: u32,
    /// Bytes of a stack: `8 * depth`, or `32 * depth` with
    /// `KSM_F_STACK_BUILD_ID`; depth at most `max_stack`.
    pub value_size: u32,
    /// `KSM_F_NUMA_NODE | KSM_F_RDONLY | KSM_F_WRONLY | KSM_F_STACK_BUILD_ID`.
    pub map_flags: u32,
    /// With `KSM_F_NUMA_NODE`: 0, or `UINT32_MAX` for any node.
    pub numa_node: u32,
}

impl From<&ksm_map_attr> for MapAttr {
    fn from(a: &ksm_map_attr) -> MapAttr {
        MapAttr {
            max_entries: a.max_entries,
            key_size: a.key_size,
            value_size: a.value_size,
            map_flags: a.map_flags,
            numa_node: a.numa_node,
        }
    }
}

/// One memory mapping, as a `ksm_find_vma_fn` reports it (the kernel's
/// `find_vma` and the file's build id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ksm_vma {
    /// First address of the mapping (`vm_start`).
    pub start: u64,
    /// One past its last address (`vm_end`).
    pub end: u64,
    /// File offset of `start` in bytes (`vm_pgoff << PAGE_SHIFT`).
    pub file_offset: u64,
    /// Non-zero when `build_id` holds the mapped file's build id; 0 for
    /// anonymous memory and files without one.
    pub has_build_id: u32,
    /// The build id, zero-padded.
    pub build_id: [u8; KSM_BUILD_ID_SIZE_MAX],
}

/// A frame of a build-id map's value (`struct bpf_stack_build_id`): what
/// `ksm_lookup` writes, `value_size / 32` of them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ksm_stack_build_id {
    /// `KSM_STACK_BUILD_ID_EMPTY`, `_VALID` or `_IP`.
    pub status: i32,
    /// The build id (status VALID), else zeroes.
    pub build_id: [u8; KSM_BUILD_ID_SIZE_MAX],
    /// The file offset (status VALID) or the ip (status IP).
    pub offset_or_ip: u64,
}

/// Finds the mapping for `ip` for a build-id map: fills `*vma` with the
/// first mapping whose end is above `ip` (the kernel's `find_vma`; it need
/// not contain `ip`) and returns 0, or returns non-zero when there is none
/// (or the address space can't be read now, like a failed
/// `mmap_read_trylock`). Called from inside `ksm_get_stackid_resolved`, in
/// the caller's context: it must be as context-safe as that call.
pub type ksm_find_vma_fn =
    Option<unsafe extern "C" fn(ctx: *mut c_void, ip: u64, vma: *mut ksm_vma) -> c_int>;

/// A C `find_vma` callback as a [`VmaResolver`].
struct CResolver {
    find_vma: unsafe extern "C" fn(*mut c_void, u64, *mut ksm_vma) -> c_int,
    ctx: *mut c_void,
}

impl VmaResolver for CResolver {
    fn find_vma(&self, ip: u64) -> Option<Vma> {
        let mut vma = ksm_vma::default();
        // SAFETY: the caller of `ksm_get_stackid_resolved` promised a
        // callback that may be called with its `ctx` and a valid,
        // writable `ksm_vma` (a local here) during that call.
        let found = unsafe { (self.find_vma)(self.ctx, ip, &mut vma) } == 0;
        found.then_some(Vma {
            start: vma.start,
            end: vma.end,
            file_offset: vma.file_offset,
            build_id: (vma.has_build_id != 0).then_some(vma.build_id),
        })
    }
}

/// `ksm_map_init`'s `Config`.
fn config(nr_cpus: u32, max_stack: u32) -> Config {
    Config {
        nr_cpus: nr_cpus as usize,
        max_stack,
    }
}

/// The attributes behind `attr`; `Inval` when NULL.
///
/// # Safety
///
/// `attr` is NULL or valid for reads of a `ksm_map_attr`.
unsafe fn read_attr(attr: *const ksm_map_attr) -> Result<MapAttr, Error> {
    if attr.is_null() {
        return Err(Error::Inval);
    }
    // SAFETY: non-null and readable (the caller's promise); unaligned
    // reads accept any address.
    Ok(MapAttr::from(&unsafe { attr.read_unaligned() }))
}

/// Bytes of memory `ksm_map_init` needs for a map with these attributes,
/// for `nr_cpus` CPUs (freelist shards; `cpu` arguments are taken modulo
/// it) and a `perf_event_max_stack` of `max_stack` (pass
/// `KSM_PERF_MAX_STACK_DEPTH` for the kernel's default).
///
/// Returns the size, or the kernel's `BPF_MAP_CREATE` errno for these
/// attributes: `-EINVAL` (bad flags or sizes, `nr_cpus` 0, NULL `attr`),
/// `-E2BIG` (`max_entries` above 2^31); `-ENOMEM` when the size does not
/// fit the address space.
///
/// # Safety
///
/// `attr` is NULL or points at a readable `struct ksm_map_attr`.
#[no_mangle]
pub unsafe extern "C" fn ksm_map_storage_size(
    attr: *const ksm_map_attr,
    nr_cpus: u32,
    max_stack: u32,
) -> c_long {
    // SAFETY: `attr` is NULL or readable (the caller's promise).
    let size = unsafe { read_attr(attr) }.and_then(|attr| {
        let inner = StackMapIn::storage_size(&attr, config(nr_cpus, max_stack))?;
        mem::storage_size::<ksm_map>(inner)
    });
    ret_size(size)
}

/// Builds a map in `mem[..len]` (any alignment) and stores its handle in
/// `*out` (written only on success). The handle points into `mem`.
///
/// Returns 0, or: the errno `ksm_map_storage_size` gives for these
/// arguments; `-ENOMEM` when `len` is below what it returns; `-EINVAL`
/// for a NULL `out`, `mem` or `attr`, or a `len` no object can have.
///
/// Runs in `O(max_entries)` (it writes every element); needs no allocator.
/// The map needs no teardown: it is gone when its memory is reused.
///
/// # Safety
///
/// `out` and `attr` are NULL or valid (writable, readable); `mem[..len]`
/// is NULL or valid for reads and writes for as long as the map is used,
/// and is accessed only through the map's handle meanwhile.
#[no_mangle]
pub unsafe extern "C" fn ksm_map_init(
    out: *mut *mut ksm_map,
    mem: *mut c_void,
    len: usize,
    attr: *const ksm_map_attr,
    nr_cpus: u32,
    max_stack: u32,
) -> c_long {
    if out.is_null() {
        return neg(Error::Inval);
    }
    // SAFETY: `attr` is NULL or readable (the caller's promise).
    let attr = match unsafe { read_attr(attr) } {
        Ok(attr) => attr,
        Err(e) => return neg(e),
    };
    let cfg = config(nr_cpus, max_stack);
    // Attribute errors come first, whatever the memory, as in the kernel.
    let inner = match StackMapIn::storage_size(&attr, cfg) {
        Ok(inner) => inner,
        Err(e) => return neg(e),
    };
    // SAFETY: `mem[..len]` is NULL or the caller's, for as long as the map
    // is used (the caller's promise).
    let (at, rest) = match unsafe { mem::place::<ksm_map>(mem, len, inner) } {
        Ok(split) => split,
        Err(e) => return neg(e),
    };
    let map = match StackMapIn::new_in(&attr, cfg, rest) {
        Ok(map) => map,
        Err(e) => return neg(e),
    };
    // SAFETY: `at` is aligned, inside the caller's block and not part of
    // `rest`; `out` is non-null (checked above) and writable (the caller's
    // promise); unaligned writes accept any address.
    unsafe {
        at.as_ptr().write(ksm_map { map });
        out.write_unaligned(at.as_ptr());
    }
    0
}

/// `bpf_get_stackid`: the id of the stack in `ips[..nr]` (the whole chain,
/// innermost frame first), storing it if new. `flags`: the number of
/// frames to skip (`KSM_F_SKIP_FIELD_MASK`), `KSM_F_USER_STACK`,
/// `KSM_F_FAST_STACK_CMP`, `KSM_F_REUSE_STACKID`. The map reads at most
/// `min(value_size / 8 + skip, max_stack)` frames. `cpu` picks the
/// freelist shard: pass the current CPU.
///
/// Returns the id (`>= 0`) or, as the kernel: `-EINVAL` (unknown flags),
/// `-EFAULT` (`nr` not above the skip), `-EEXIST` (another stack holds the
/// bucket and no `KSM_F_REUSE_STACKID`), `-ENOMEM` (every element in use);
/// `-EINVAL` for a NULL or misaligned `m`, or `ips` with `nr > 0`. On a
/// build-id map the frames are stored with status IP (see
/// `ksm_get_stackid_resolved`).
///
/// Never blocks, allocates or panics: callable from any context (NMI
/// included) on any number of CPUs at once. A hit (the same id for the
/// same stack) is only reported for an element that held exactly this
/// stack during the call.
///
/// # Safety
///
/// `m` is NULL or a handle from `ksm_map_init` whose memory is still the
/// map's; `ips` is NULL or valid for reads of `nr` `uint64_t`s, not
/// written during the call.
#[no_mangle]
pub unsafe extern "C" fn ksm_get_stackid(
    m: *const ksm_map,
    cpu: u32,
    ips: *const u64,
    nr: u32,
    flags: u64,
) -> c_long {
    // SAFETY: the caller's promises, passed on.
    ret(unsafe { chain_call(m, ips, nr, |m, c| m.get_stackid(cpu as usize, c, flags)) })
}

/// `bpf_get_stackid_pe`: `ksm_get_stackid` for a perf sample's callchain,
/// `ips[..nr]` with its `KSM_PERF_CONTEXT_*` marker words. The kernel
/// stack is the part before the first `KSM_PERF_CONTEXT_USER`; with
/// `KSM_F_USER_STACK` the skip grows by its length (`-EFAULT` past 255).
/// Returns and guarantees as `ksm_get_stackid`.
///
/// # Safety
///
/// As for `ksm_get_stackid`.
#[no_mangle]
pub unsafe extern "C" fn ksm_get_stackid_pe(
    m: *const ksm_map,
    cpu: u32,
    ips: *const u64,
    nr: u32,
    flags: u64,
) -> c_long {
    // SAFETY: the caller's promises, passed on.
    ret(unsafe { chain_call(m, ips, nr, |m, c| m.get_stackid_pe(cpu as usize, c, flags)) })
}

/// `ksm_get_stackid` for build-id maps: with `KSM_F_USER_STACK`, each ip
/// becomes (build id, file offset) through `find_vma(ctx, ip, &vma)`, as
/// the kernel's `stack_map_get_build_id_offset` (an ip in the mapping last
/// resolved reuses it without a call; no mapping or no build id gives
/// status IP). Kernel stacks and ips maps never call `find_vma`.
///
/// Returns as `ksm_get_stackid`, and `-EINVAL` for a NULL `find_vma`. As
/// context-safe as `find_vma` is.
///
/// # Safety
///
/// As for `ksm_get_stackid`; `find_vma` may be called with `ctx` during
/// the call.
#[no_mangle]
pub unsafe extern "C" fn ksm_get_stackid_resolved(
    m: *const ksm_map,
    cpu: u32,
    ips: *const u64,
    nr: u32,
    flags: u64,
    find_vma: ksm_find_vma_fn,
    ctx: *mut c_void,
) -> c_long {
    let Some(find_vma) = find_vma else {
        return neg(Error::Inval);
    };
    let r = CResolver { find_vma, ctx };
    // SAFETY: the caller's promises, passed on.
    ret(unsafe {
        chain_call(m, ips, nr, |m, c| {
            m.get_stackid_resolved(cpu as usize, c, flags, &r)
        })
    })
}

/// `ksm_get_stackid_pe` with a `find_vma` callback for build-id maps, as
/// `ksm_get_stackid_resolved`.
///
/// # Safety
///
/// As for `ksm_get_stackid_resolved`.
#[no_mangle]
pub unsafe extern "C" fn ksm_get_stackid_pe_resolved(
    m: *const ksm_map,
    cpu: u32,
    ips: *const u64,
    nr: u32,
    flags: u64,
    find_vma: ksm_find_vma_fn,
    ctx: *mut c_void,
) -> c_long {
    let Some(find_vma) = find_vma else {
        return neg(Error::Inval);
    };
    let r = CResolver { find_vma, ctx };
    // SAFETY: the caller's promises, passed on.
    ret(unsafe {
        chain_call(m, ips, nr, |m, c| {
            m.get_stackid_pe_resolved(cpu as usize, c, flags, &r)
        })
    })
}

/// Runs `f` on the map behind `m` and the chain `ips[..nr]`.
///
/// # Safety
///
/// As for `ksm_get_stackid`.
unsafe fn chain_call(
    m: *const ksm_map,
    ips: *const u64,
    nr: u32,
    f: impl FnOnce(&StackMapIn<'static>, &[u64]) -> Result<u32, Error>,
) -> Result<u32, Error> {
    // SAFETY: the caller's promises.
    let (m, chain) = unsafe { (handle(m)?, slice(ips, nr as usize)?) };
    f(&m.map, chain)
}

/// The map behind `m`; `Inval` when NULL or misaligned.
///
/// # Safety
///
/// As for `ksm_lookup`'s `m`.
unsafe fn map<'h>(m: *const ksm_map) -> Result<&'h StackMapIn<'static>, Error> {
    // SAFETY: the caller's promise.
    unsafe { handle(m) }.map(|m| &m.map)
}

/// `BPF_MAP_LOOKUP_ELEM`: copies stack `id` into `value[..len]` (its first
/// `value_size` bytes; the ips as `uint64_t`s, or `ksm_stack_build_id`
/// frames), zeroing what follows the stack's frames.
///
/// Returns 0 or: `-ENOENT` (empty bucket, or `id` past the buckets),
/// `-EINVAL` (`len` below `value_size`, NULL `m` or `value`), `-EPERM`
/// (`KSM_F_WRONLY` map). The read never hides a stack from a concurrent
/// `ksm_get_stackid` (the kernel's can); it retries only when a writer
/// changed the bucket meanwhile. Never blocks, allocates or panics.
///
/// # Safety
///
/// `m` as for `ksm_get_stackid`; `value` is NULL or valid for writes of
/// `len` bytes, accessed by no one else during the call.
#[no_mangle]
pub unsafe extern "C" fn ksm_lookup(
    m: *const ksm_map,
    id: u32,
    value: *mut c_void,
    len: usize,
) -> c_long {
    if value.is_null() {
        return neg(Error::Inval);
    }
    // SAFETY: the caller's promises.
    let r = unsafe { map(m) }.and_then(|m| {
        // SAFETY: the caller's promise for `value`.
        let value = unsafe { slice_mut(value.cast::<u8>(), len) }?;
        m.lookup(id, value)
    });
    ret(r.map(|()| 0u32))
}

/// `ksm_lookup` for ips maps into `uint64_t`s: copies stack `id` into
/// `out[..max]` (at least `value_size / 8` of them) and returns its number
/// of frames. Errors as `ksm_lookup`, and `-EINVAL` on a build-id map or
/// for a misaligned `out`.
///
/// # Safety
///
/// `m` as for `ksm_get_stackid`; `out` is NULL or valid for writes of
/// `max` `uint64_t`s, accessed by no one else during the call.
#[no_mangle]
pub unsafe extern "C" fn ksm_lookup_ips(
    m: *const ksm_map,
    id: u32,
    out: *mut u64,
    max: u32,
) -> c_long {
    if out.is_null() {
        return neg(Error::Inval);
    }
    // SAFETY: the caller's promises.
    let r = unsafe { map(m) }.and_then(|m| {
        // SAFETY: the caller's promise for `out`.
        let out = unsafe { slice_mut(out, max as usize) }?;
        m.lookup_ips(id, out).map(<[u64]>::len)
    });
    ret_size(r)
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (Linux 6.18+): `ksm_lookup`, then
/// removes the stack. `-EPERM` on `KSM_F_RDONLY` or `KSM_F_WRONLY` maps.
///
/// # Safety
///
/// As for `ksm_lookup`.
#[no_mangle]
pub unsafe extern "C" fn ksm_lookup_and_delete(
    m: *const ksm_map,
    id: u32,
    value: *mut c_void,
    len: usize,
) -> c_long {
    if value.is_null() {
        return neg(Error::Inval);
    }
    // SAFETY: the caller's promises.
    let r = unsafe { map(m) }.and_then(|m| {
        // SAFETY: the caller's promise for `value`.
        let value = unsafe { slice_mut(value.cast::<u8>(), len) }?;
        m.lookup_and_delete(id, value)
    });
    ret(r.map(|()| 0u32))
}

/// `BPF_MAP_DELETE_ELEM`: removes stack `id`, whose element goes back to
/// the freelist. Returns 0 or: `-E2BIG` (`id` past the buckets), `-ENOENT`
/// (empty bucket), `-EPERM` (`KSM_F_RDONLY` map), `-EINVAL` (NULL `m`).
///
/// # Safety
///
/// `m` as for `ksm_get_stackid`.
#[no_mangle]
pub unsafe extern "C" fn ksm_delete(m: *const ksm_map, id: u32) -> c_long {
    // SAFETY: the caller's promise.
    ret(unsafe { map(m) }.and_then(|m| m.delete(id)).map(|()| 0u32))
}

/// `BPF_MAP_GET_NEXT_KEY`: stores in `*next` the first occupied id after
/// `*key`; a NULL `key`, an id past the buckets or an empty one restarts
/// from 0, as in the kernel. Returns 0 or: `-ENOENT` (no such id),
/// `-EPERM` (`KSM_F_WRONLY` map), `-EINVAL` (NULL `m` or `next`).
///
/// # Safety
///
/// `m` as for `ksm_get_stackid`; `key` is NULL or readable, `next` NULL
/// or writable (any alignment).
#[no_mangle]
pub unsafe extern "C" fn ksm_get_next_key(
    m: *const ksm_map,
    key: *const u32,
    next: *mut u32,
) -> c_long {
    if next.is_null() {
        return neg(Error::Inval);
    }
    // SAFETY: `key` is NULL or readable (the caller's promise).
    let key = (!key.is_null()).then(|| unsafe { key.read_unaligned() });
    // SAFETY: the caller's promise.
    let r = unsafe { map(m) }.and_then(|m| m.get_next_key(key));
    match r {
        Ok(id) => {
            // SAFETY: non-null (checked above) and writable (the caller's
            // promise); unaligned writes accept any address.
            unsafe { next.write_unaligned(id) };
            0
        }
        Err(e) => neg(e),
    }
}

/// The map's number of buckets (`max_entries` rounded up to a power of
/// two): ids are below it. `-EINVAL` for a NULL `m`.
///
/// # Safety
///
/// `m` as for `ksm_get_stackid`.
#[no_mangle]
pub unsafe extern "C" fn ksm_map_n_buckets(m: *const ksm_map) -> c_long {
    // SAFETY: the caller's promise.
    ret_size(unsafe { map(m) }.map(|m| m.n_buckets() as usize))
}
