//! Errors, one per Linux errno the stack trace map can return.

use core::fmt;

/// An error from a map operation; each variant is one Linux errno.
///
/// The variants are the errors the kernel's stack trace map returns, for the
/// same causes (see each variant). [`Error::errno`] gives the positive errno
/// value (`EINVAL` = 22), as `bpf(2)` reports it in `errno`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// `EPERM` (1): the map was created `BPF_F_RDONLY` / `BPF_F_WRONLY` and
    /// the syscall-side operation needs the right it lacks.
    Perm,
    /// `ENOENT` (2): no stack under that id (or no next id).
    NoEnt,
    /// `E2BIG` (7): `max_entries` too large, or a delete of an id out of range.
    TooBig,
    /// `ENOMEM` (12): the freelist is empty (every element is in use), or the
    /// memory given to a no-alloc constructor is too small.
    NoMem,
    /// `EFAULT` (14): the chain is not longer than the skip count.
    Fault,
    /// `EEXIST` (17): the bucket holds another stack and `BPF_F_REUSE_STACKID`
    /// was not given.
    Exist,
    /// `EINVAL` (22): a bad attribute, flag or size.
    Inval,
    /// `EOPNOTSUPP` (95): the operation is not supported.
    OpNotSupp,
    /// `ESTALE` (116): a [`StackRef`](crate::StackRef) no longer names what
    /// its bucket holds: the stack it named was replaced
    /// (`BPF_F_REUSE_STACKID`) or deleted, even if an equal stack was
    /// stored again since. Only the versioned calls return it; no kernel
    /// does.
    Stale,
}

impl Error {
    /// The positive Linux errno value of this error.
    pub const fn errno(&self) -> i32 {
        match self {
            Error::Perm => 1,
            Error::NoEnt => 2,
            Error::TooBig => 7,
            Error::NoMem => 12,
            Error::Fault => 14,
            Error::Exist => 17,
            Error::Inval => 22,
            Error::OpNotSupp => 95,
            Error::Stale => 116,
        }
    }

    /// The error whose [`errno`](Error::errno) is `errno` (positive), if any.
    pub const fn from_errno(errno: i32) -> Option<Error> {
        Some(match errno {
            1 => Error::Perm,
            2 => Error::NoEnt,
            7 => Error::TooBig,
            12 => Error::NoMem,
            14 => Error::Fault,
            17 => Error::Exist,
            22 => Error::Inval,
            95 => Error::OpNotSupp,
            116 => Error::Stale,
            _ => return None,
        })
    }

    /// The errno's symbolic name, as `errno(3)` spells it.
    pub const fn name(&self) -> &'static str {
        match self {
            Error::Perm => "EPERM",
            Error::NoEnt => "ENOENT",
            Error::TooBig => "E2BIG",
            Error::NoMem => "ENOMEM",
            Error::Fault => "EFAULT",
            Error::Exist => "EEXIST",
            Error::Inval => "EINVAL",
            Error::OpNotSupp => "EOPNOTSUPP",
            Error::Stale => "ESTALE",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Error::Perm => "operation not permitted by the map's access flags",
            Error::NoEnt => "no such stack id",
            Error::TooBig => "argument too big",
            Error::NoMem => "no free element left in the map",
            Error::Fault => "stack is not deeper than the skip count",
            Error::Exist => "bucket already holds another stack",
            Error::Inval => "invalid argument",
            Error::OpNotSupp => "operation not supported",
            Error::Stale => "stack reference is stale: its bucket holds another version",
        };
        write!(f, "{what} ({})", self.name())
    }
}

impl core::error::Error for Error {}

/// The errno as an [`std::io::Error`], so `?` works in functions returning
/// `io::Result`.
///
/// On Linux and Android the result is `io::Error::from_raw_os_error` of
/// [`Error::errno`]: `raw_os_error()` gives the errno back and `kind()` is
/// the standard library's for it (`NoEnt` is `NotFound`, `Exist` is
/// `AlreadyExists`, `Perm` is `PermissionDenied`, ...). Elsewhere the errno
/// numbers are Linux's, not the host's, so the error carries the same
/// `kind()` and this `Error` as its source instead.
///
/// ```
/// use std::io;
/// let e: io::Error = kstackmap::Error::NoEnt.into();
/// assert_eq!(e.kind(), io::ErrorKind::NotFound);
/// ```
#[cfg(feature = "std")]
#[cfg_attr(docsrs, doc(cfg(feature = "std")))]
impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            std::io::Error::from_raw_os_error(e.errno())
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            std::io::Error::new(e.io_kind().unwrap_or(std::io::ErrorKind::Other), e)
        }
    }
}

#[cfg(feature = "std")]
impl Error {
    /// The [`io::ErrorKind`](std::io::ErrorKind) `std` decodes this errno
    /// to on Linux; `None` where that is an unnamed (unstable) kind.
    #[cfg_attr(
        all(not(test), any(target_os = "linux", target_os = "android")),
        allow(dead_code)
    )]
    fn io_kind(&self) -> Option<std::io::ErrorKind> {
        use std::io::ErrorKind as K;
        Some(match self {
            Error::Perm => K::PermissionDenied,
            Error::NoEnt => K::NotFound,
            Error::TooBig => K::ArgumentListTooLong,
            Error::NoMem => K::OutOfMemory,
            Error::Fault | Error::OpNotSupp => return None,
            Error::Exist => K::AlreadyExists,
            Error::Inval => K::InvalidInput,
            Error::Stale => K::StaleNetworkFileHandle,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Error; 9] = [
        Error::Perm,
        Error::NoEnt,
        Error::TooBig,
        Error::NoMem,
        Error::Fault,
        Error::Exist,
        Error::Inval,
        Error::OpNotSupp,
        Error::Stale,
    ];

    #[test]
    fn errno_values_are_linux() {
        let want = [1, 2, 7, 12, 14, 17, 22, 95, 116];
        for (e, n) in ALL.iter().zip(want) {
            assert_eq!(e.errno(), n, "{e:?}");
            assert_eq!(Error::from_errno(n), Some(*e));
        }
        assert_eq!(Error::from_errno(0), None);
        assert_eq!(Error::from_errno(-22), None);
    }

    #[cfg(feature = "std")]
    #[test]
    fn display_names_the_errno() {
        extern crate std;
        use std::string::ToString;
        assert_eq!(
            Error::Exist.to_string(),
            "bucket already holds another stack (EEXIST)"
        );
        assert!(Error::Stale.to_string().ends_with("(ESTALE)"));
    }

    /// `kind()` is std's decoding of the errno on Linux, and the same kind
    /// the fallback picks; the errno survives the conversion.
    #[cfg(feature = "std")]
    #[test]
    fn into_io_error() {
        extern crate std;
        use std::io;
        for e in ALL {
            let io: io::Error = e.into();
            if let Some(kind) = e.io_kind() {
                assert_eq!(io.kind(), kind, "{e:?}");
            }
            #[cfg(any(target_os = "linux", target_os = "android"))]
            assert_eq!(io.raw_os_error(), Some(e.errno()), "{e:?}");
        }
        let io: io::Error = Error::Stale.into();
        assert_eq!(io.kind(), io::ErrorKind::StaleNetworkFileHandle);
    }
}
