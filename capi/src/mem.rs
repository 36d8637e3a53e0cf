//! The caller's memory: a structure's handle and its arrays in one block.
//!
//! `ksm_*_init` gets a block at any address. Its start (aligned up) holds
//! the Rust struct the handle points at; the rest goes to the structure's
//! own `new_in`, which aligns it again for its arrays. So a structure
//! needs `size_of::<T>() + align_of::<T>() - 1` bytes more than its
//! `storage_size`, and that is what `ksm_*_storage_size` reports.

use core::ffi::c_void;
use core::mem::{align_of, size_of, MaybeUninit};
use core::ptr::NonNull;

use kstackmap::Error;

/// Bytes for a `T` at any address followed by `inner` bytes.
pub(crate) fn storage_size<T>(inner: usize) -> Result<usize, Error> {
    (size_of::<T>() + align_of::<T>() - 1)
        .checked_add(inner)
        .ok_or(Error::NoMem)
}

/// Splits the caller's block `mem[..len]` into an aligned, uninitialised
/// place for a `T` and the bytes after it, for a structure whose own
/// `storage_size` is `inner`.
///
/// `Inval` for a NULL `mem` or a `len` no object can have (past
/// `isize::MAX`, or running past the end of the address space); `NoMem`
/// when `len` is below [`storage_size`]`::<T>(inner)`, whatever the
/// address (so a size that works once works at every address).
///
/// # Safety
///
/// When `mem` is not NULL, `mem[..len]` is valid for reads and writes for
/// as long as anything uses what is built in it, and nothing else accesses
/// it meanwhile.
pub(crate) unsafe fn place<T>(
    mem: *mut c_void,
    len: usize,
    inner: usize,
) -> Result<(NonNull<T>, &'static mut [MaybeUninit<u8>]), Error> {
    let start = mem.cast::<u8>();
    if start.is_null() || len > isize::MAX as usize || (start as usize).checked_add(len).is_none() {
        return Err(Error::Inval);
    }
    if len < storage_size::<T>(inner)? {
        return Err(Error::NoMem);
    }
    let pad = start.align_offset(align_of::<T>());
    let used = pad.checked_add(size_of::<T>()).ok_or(Error::NoMem)?;
    let rest = len.checked_sub(used).ok_or(Error::NoMem)?;
    // SAFETY: `used + rest == len`, so both pointers stay inside the
    // caller's block (or one past its end for an empty `rest`).
    let (at, after) = unsafe { (start.add(pad).cast::<T>(), start.add(used)) };
    // SAFETY: `after[..rest]` is the end of the caller's block, valid for
    // reads and writes and not otherwise accessed for as long as it is
    // used (the caller's promise); `MaybeUninit` needs no initialisation
    // and has alignment 1; `rest <= len <= isize::MAX`.
    let rest = unsafe { core::slice::from_raw_parts_mut(after.cast::<MaybeUninit<u8>>(), rest) };
    // `at` is non-null: `start` is, and `pad + size_of::<T>() <= len`
    // keeps it inside the block, which does not wrap around the address
    // space (checked above).
    let at = NonNull::new(at).ok_or(Error::Inval)?;
    Ok((at, rest))
}

/// The handle `p` as a reference; `Inval` when NULL or misaligned.
///
/// # Safety
///
/// `p`, when non-null and aligned, points at a `T` that an init function
/// of this library wrote, and its memory is still the structure's.
pub(crate) unsafe fn handle<'h, T>(p: *const T) -> Result<&'h T, Error> {
    if !p.is_aligned() {
        return Err(Error::Inval);
    }
    // SAFETY: aligned (checked above), and either NULL (`as_ref` gives
    // `None`) or a live `T` (the caller's promise); `T`s of this library
    // are only ever shared (`&self` methods), so the reference aliases
    // nothing mutable.
    unsafe { p.as_ref() }.ok_or(Error::Inval)
}

/// `ptr[..len]` as a slice of `T`; an empty slice when `len` is 0,
/// whatever `ptr` is. `Inval` when a non-empty slice's `ptr` is NULL or
/// misaligned or it would span more than `isize::MAX` bytes.
///
/// # Safety
///
/// When `len > 0` and `ptr` is non-null and aligned, `ptr[..len]` is valid
/// for reads and not written by anyone during `'s`.
pub(crate) unsafe fn slice<'s, T>(ptr: *const T, len: usize) -> Result<&'s [T], Error> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() || !ptr.is_aligned() || len > isize::MAX as usize / size_of::<T>().max(1) {
        return Err(Error::Inval);
    }
    // SAFETY: non-null, aligned, at most isize::MAX bytes (checked above),
    // valid and unchanged for 's (the caller's promise).
    Ok(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// `ptr[..len]` as a mutable slice of `T`, as [`slice`].
///
/// # Safety
///
/// When `len > 0` and `ptr` is non-null and aligned, `ptr[..len]` is valid
/// for reads and writes and accessed by no one else during `'s`.
pub(crate) unsafe fn slice_mut<'s, T>(ptr: *mut T, len: usize) -> Result<&'s mut [T], Error> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() || !ptr.is_aligned() || len > isize::MAX as usize / size_of::<T>().max(1) {
        return Err(Error::Inval);
    }
    // SAFETY: non-null, aligned, at most isize::MAX bytes (checked above),
    // exclusively ours for 's (the caller's promise).
    Ok(unsafe { core::slice::from_raw_parts_mut(ptr, len) })
}
