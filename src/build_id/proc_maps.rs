//! [`ProcMaps`]: a [`VmaResolver`] over a process's `/proc/PID/maps`, with
//! the build id of every mapped ELF file (feature `std`).

use core::fmt;
use core::str::FromStr;
use std::collections::HashMap;
use std::format;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::string::{String, ToString};
use std::vec::Vec;

use super::elf_note::{parse_build_id_from, BuildIdNote, ElfSource};
use crate::build_id::{Vma, VmaResolver};

/// The column the kernel pads the path to (`25 + sizeof(void *) * 6 - 1`
/// on a 64-bit kernel), after which it writes one space.
const PATH_COLUMN: usize = 72;

/// The suffix the kernel appends to the path of an unlinked file.
const DELETED_SUFFIX: &str = " (deleted)";

/// How much of a file is read at once: ELF headers, program headers and
/// note segments sit at its start in every toolchain's output.
const HEAD_SIZE: u64 = 8 * 1024;

/// Reads past the head go through a window of this many bytes (a page),
/// so a walk over many small notes costs one read per page, not per note.
const WINDOW: usize = 4096;

/// The most bytes read from one file past its head. A note segment may
/// claim up to 4 GiB (of a huge, possibly sparse file) of 12-byte empty
/// notes; the walk stops with no build id once this is spent, after at
/// most `MAX_EXTRA_READ / WINDOW` reads. Real build-id notes sit in the
/// first pages.
const MAX_EXTRA_READ: u64 = 64 * 1024;

/// The permission column of a maps line: `r`, `w`, `x`, and `s` (shared)
/// or `p` (private).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(docsrs, doc(cfg(feature = "std")))]
pub struct Perms {
    /// `r`: readable.
    pub read: bool,
    /// `w`: writable.
    pub write: bool,
    /// `x`: executable.
    pub exec: bool,
    /// `s` (may be shared) rather than `p` (private).
    pub shared: bool,
}

impl FromStr for Perms {
    type Err = io::Error;

    /// Exactly four characters, `[r-][w-][x-][sp]`.
    fn from_str(s: &str) -> io::Result<Self> {
        let flag = |c: Option<char>, yes: char, no: char| match c {
            Some(c) if c == yes => Ok(true),
            Some(c) if c == no => Ok(false),
            _ => Err(invalid(format!("bad permissions {s:?}"))),
        };
        let mut chars = s.chars();
        let perms = Self {
            read: flag(chars.next(), 'r', '-')?,
            write: flag(chars.next(), 'w', '-')?,
            exec: flag(chars.next(), 'x', '-')?,
            shared: flag(chars.next(), 's', 'p')?,
        };
        if chars.next().is_some() {
            return Err(invalid(format!("bad permissions {s:?}")));
        }
        Ok(perms)
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |on: bool, yes: char, no: char| if on { yes } else { no };
        write!(
            f,
            "{}{}{}{}",
            c(self.read, 'r', '-'),
            c(self.write, 'w', '-'),
            c(self.exec, 'x', '-'),
            c(self.shared, 's', 'p'),
        )
    }
}

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(docsrs, doc(cfg(feature = "std")))]
pub struct Mapping {
    /// First address (`vm_start`).
    pub start: u64,
    /// One past the last address (`vm_end`).
    pub end: u64,
    /// Permissions.
    pub perms: Perms,
    /// File offset of `start` in bytes (`vm_pgoff << PAGE_SHIFT`; 0 for
    /// anonymous mappings).
    pub offset: u64,
    /// Major number of the file's device.
    pub dev_major: u32,
    /// Minor number of the file's device.
    pub dev_minor: u32,
    /// The file's inode number (0 for anonymous mappings).
    pub inode: u64,
    /// The path column as the kernel printed it: a file path (maybe with a
    /// ` (deleted)` suffix; a newline in it shows as `\012`), a pseudo-path
    /// such as `[heap]`, `[stack]`, `[vdso]` or `[anon:NAME]`, something
    /// like `anon_inode:[perf_event]`, or empty for anonymous memory.
    pub path: String,
}

impl Mapping {
    /// Parses one line (without its newline).
    ///
    /// # Errors
    ///
    /// `InvalidData` when a field is missing or malformed; the message
    /// names it.
    pub fn parse_line(line: &str) -> io::Result<Self> {
        let mut rest = line;
        let mut field = |what: &str| -> io::Result<&str> {
            let s = rest.trim_start_matches(' ');
            let end = s.find(' ').unwrap_or(s.len());
            let (tok, tail) = s.split_at(end);
            rest = tail;
            if tok.is_empty() {
                return Err(invalid(format!("missing {what}")));
            }
            Ok(tok)
        };
        let range = field("address range")?;
        let perms = field("permissions")?;
        let offset = field("offset")?;
        let dev = field("device")?;
        let inode = field("inode")?;

        let (start, end) = range
            .split_once('-')
            .ok_or_else(|| invalid(format!("bad address range {range:?}")))?;
        let (major, minor) = dev
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad device {dev:?}")))?;
        let mapping = Self {
            start: hex_u64(start, "start address")?,
            end: hex_u64(end, "end address")?,
            perms: perms.parse()?,
            offset: hex_u64(offset, "offset")?,
            dev_major: u32::try_from(hex_u64(major, "device major")?)
                .map_err(|_| invalid(format!("bad device {dev:?}")))?,
            dev_minor: u32::try_from(hex_u64(minor, "device minor")?)
                .map_err(|_| invalid(format!("bad device {dev:?}")))?,
            inode: dec_u64(inode)?,
            path: rest.trim_start_matches(' ').to_string(),
        };
        if mapping.start >= mapping.end {
            return Err(invalid(format!("empty or reversed range {range:?}")));
        }
        Ok(mapping)
    }

    /// The file this mapping maps, as a path without the ` (deleted)`
    /// suffix; `None` unless the path column starts with `/`.
    pub fn file_path(&self) -> Option<&str> {
        if !self.path.starts_with('/') {
            return None;
        }
        Some(self.path.strip_suffix(DELETED_SUFFIX).unwrap_or(&self.path))
    }

    /// Whether the kernel marked the mapped file as unlinked (` (deleted)`).
    pub fn is_deleted(&self) -> bool {
        self.path.starts_with('/') && self.path.ends_with(DELETED_SUFFIX)
    }

    /// Whether `start <= ip < end`.
    pub fn contains(&self, ip: u64) -> bool {
        self.start <= ip && ip < self.end
    }
}

impl FromStr for Mapping {
    type Err = io::Error;

    fn from_str(line: &str) -> io::Result<Self> {
        Self::parse_line(line)
    }
}

impl fmt::Display for Mapping {
    /// The line as the kernel prints it (no newline). For a mapping that
    /// [`Mapping::parse_line`] returned, parsing the output gives it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = format!(
            "{:08x}-{:08x} {} {:08x} {:02x}:{:02x} {} ",
            self.start,
            self.end,
            self.perms,
            self.offset,
            self.dev_major,
            self.dev_minor,
            self.inode
        );
        f.write_str(&prefix)?;
        if !self.path.is_empty() {
            let pad = PATH_COLUMN.saturating_sub(prefix.len());
            write!(f, "{:pad$} {}", "", self.path)?;
        }
        Ok(())
    }
}

/// The mappings of one process, with the build ids of their files: a
/// [`VmaResolver`] for build-id stack maps.
///
/// # Examples
///
/// ```
/// use kstackmap::{ProcMaps, VmaResolver};
///
/// fn here() {}
/// let maps = ProcMaps::for_pid(std::process::id())?;
/// let ip = here as *const () as u64;
/// let vma = maps.find_vma(ip).expect("this code is mapped");
/// assert!(vma.start <= ip && ip < vma.end);
/// // The frame as a build-id map stores it: (build id, file offset).
/// let offset = vma.file_offset.wrapping_add(ip).wrapping_sub(vma.start);
/// # let _ = (vma.build_id, offset);
/// for m in &maps {
///     println!("{m}"); // the kernel's line again
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Details
///
/// # What the kernel does, and what this does
///
/// The kernel's stack map asks `find_vma` for the first mapping whose end
/// is above an ip, then `build_id_parse` on that mapping's `vm_file`,
/// always from the start of the *file* (not of the mapped part), so every
/// mapping of one file has the file's build id. A mapping without a
/// `vm_file` (anonymous memory, `[heap]`, `[stack]`, and the special
/// mappings `[vdso]`, `[vvar]`, `[vsyscall]`) has none, and neither has a
/// file that is not an ELF executable or shared object with a build id
/// note. Here:
///
/// - Only lines whose path starts with `/` are files ([`Mapping::file_path`]);
///   `[...]` pseudo-paths, `anon_inode:...` and empty paths get no build id.
/// - Only regular files are read (a FIFO or device node could block or have
///   side effects), through [`parse_build_id_from`]: the ELF header, the
///   program headers and the note segments, not the whole file. The path
///   is checked before opening (no open of a device node), opened with
///   `O_NONBLOCK | O_CLOEXEC` (a profiled process that swaps the path for
///   a FIFO in between can't make the open wait for a writer), and the
///   opened descriptor is checked again with `fstat`.
/// - Reads are bounded: the first 8 KiB of a file, then at most 64 KiB
///   more in page-sized reads. A note segment that claims gigabytes (a
///   huge sparse file of empty notes) ends the search with no build id
///   instead of a walk of hundreds of millions of reads.
/// - Each file is opened at most once per [`ProcMaps`]: results are cached
///   per (device, inode, path) as the maps line gives them.
/// - A file that is gone, unreadable, not ELF or without a build id gives
///   that mapping no build id (per-frame IP fallback in the map); it is
///   never an error for the whole map.
///
/// [`ProcMaps::for_pid`] opens each file through
/// `/proc/PID/map_files/START-END` (the very file the process mapped, even
/// if it was deleted or replaced; needs `CAP_SYS_ADMIN` or
/// `CAP_CHECKPOINT_RESTORE`), then `/proc/PID/root/PATH` and `PATH` (only
/// for files not marked ` (deleted)`, and only if the inode still matches
/// the maps line). [`ProcMaps::parse`] has no process to ask and uses
/// `PATH` alone, with the same checks.
///
/// # Line format
///
/// `start-end perms offset major:minor inode [path]`, as
/// `fs/proc/task_mmu.c` prints it: hex addresses and offset, hex device
/// numbers, decimal inode, and the path padded to column 73 (a 64-bit
/// kernel's width). The path is everything after the inode but the spaces
/// before it: it may contain spaces and end in ` (deleted)`. Displaying a
/// parsed [`Mapping`] gives the kernel's line back (same fields, and for
/// kernel-printed input the same text), so parsing is checked by a
/// round trip.
///
/// # Invariants
///
/// - Mappings are sorted by `end` (then `start`); `start < end` for each.
///   The kernel's mappings never overlap, so that is also the order by
///   `start`. Overlapping lines (possible in a racy multi-`read` of the
///   maps file) are kept; `find_vma` still returns the mapping with the
///   lowest end above the ip, its definition.
/// - `build_ids` has one entry per mapping, in the same order.
/// - Parsing is total: any text gives `Ok` or an `InvalidData` error,
///   never a panic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(docsrs, doc(cfg(feature = "std")))]
pub struct ProcMaps {
    maps: Vec<Mapping>,
    build_ids: Vec<Option<BuildIdNote>>,
}

impl ProcMaps {
    /// Parses maps text (every non-empty line) and reads the build id of
    /// each mapped file by its path (see [`ProcMaps`]).
    /// Unreadable files are not errors: their mappings have no build id.
    ///
    /// # Errors
    ///
    /// `InvalidData` for malformed text; the message gives the line.
    pub fn parse(maps_text: &str) -> io::Result<Self> {
        let mut maps = Self::parse_text(maps_text)?;
        maps.resolve(|m| open_by_path(m, ""));
        Ok(maps)
    }

    /// Parses maps text without touching any file: every build id is
    /// `None`. Pure and total, for fuzzing and for text from elsewhere.
    ///
    /// # Errors
    ///
    /// `InvalidData` for malformed text; the message gives the line.
    pub fn parse_text(maps_text: &str) -> io::Result<Self> {
        let mut maps = Vec::new();
        // Lines end in '\n' only: `str::lines` would also eat a '\r'
        // before it, which belongs to a path ending in '\r' (the kernel
        // escapes only '\n' in paths).
        for (n, line) in maps_text.split('\n').enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let m = Mapping::parse_line(line).map_err(|e| {
                invalid(format!("maps line {}: {e}: {line:?}", n.saturating_add(1)))
            })?;
            maps.push(m);
        }
        maps.sort_by_key(|m| (m.end, m.start));
        let build_ids = std::vec![None; maps.len()];
        Ok(Self { maps, build_ids })
    }

    /// Reads `/proc/PID/maps` and the build ids of the mapped files (see
    /// [`ProcMaps`]).
    ///
    /// # Errors
    ///
    /// `NotFound` if there is no such process, `PermissionDenied` if this
    /// process may not read its maps (ptrace access mode read), other
    /// kinds as `read` gives them; every message names the file.
    pub fn for_pid(pid: u32) -> io::Result<Self> {
        let path = format!("/proc/{pid}/maps");
        let text = fs::read_to_string(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
        let mut maps = Self::parse_text(&text)?;
        let root = format!("/proc/{pid}/root");
        maps.resolve(|m| {
            let link = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
            open_regular(&link)
                .or_else(|| open_by_path(m, &root))
                .or_else(|| open_by_path(m, ""))
        });
        Ok(maps)
    }

    /// Fills `build_ids`, opening each distinct file at most once.
    fn resolve(&mut self, mut open: impl FnMut(&Mapping) -> Option<File>) {
        let mut cache: HashMap<(u32, u32, u64, &str), Option<BuildIdNote>> = HashMap::new();
        for (m, id) in self.maps.iter().zip(self.build_ids.iter_mut()) {
            let Some(path) = m.file_path() else {
                continue;
            };
            let key = (m.dev_major, m.dev_minor, m.inode, path);
            *id = *cache
                .entry(key)
                .or_insert_with(|| open(m).and_then(|f| read_build_id(&f)));
        }
    }

    /// The mappings, sorted (see [`ProcMaps`]).
    pub fn mappings(&self) -> &[Mapping] {
        &self.maps
    }

    /// An iterator over the mappings, in order.
    pub fn iter(&self) -> core::slice::Iter<'_, Mapping> {
        self.maps.iter()
    }

    /// How many mappings there are.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// Whether there are no mappings (e.g. a kernel thread).
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// The build id of the file behind mapping `index`, if it has one.
    pub fn build_id(&self, index: usize) -> Option<&BuildIdNote> {
        self.build_ids.get(index)?.as_ref()
    }

    /// The index of the first mapping whose end is above `ip` (the
    /// kernel's `find_vma`), found by binary search; it need not contain
    /// `ip`.
    pub fn find_vma_index(&self, ip: u64) -> Option<usize> {
        let i = self.maps.partition_point(|m| m.end <= ip);
        (i < self.maps.len()).then_some(i)
    }
}

impl<'a> IntoIterator for &'a ProcMaps {
    type Item = &'a Mapping;
    type IntoIter = core::slice::Iter<'a, Mapping>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl fmt::Display for ProcMaps {
    /// The maps text, one kernel-formatted line per mapping.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.maps {
            writeln!(f, "{m}")?;
        }
        Ok(())
    }
}

impl VmaResolver for ProcMaps {
    fn find_vma(&self, ip: u64) -> Option<Vma> {
        let i = self.find_vma_index(ip)?;
        let m = self.maps.get(i)?;
        Some(Vma {
            start: m.start,
            end: m.end,
            file_offset: m.offset,
            build_id: self.build_id(i).map(BuildIdNote::padded),
        })
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Hex digits only (no sign, no `0x`), at most 64 bits.
fn hex_u64(s: &str, what: &str) -> io::Result<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(format!("bad {what} {s:?}")));
    }
    u64::from_str_radix(s, 16).map_err(|_| invalid(format!("bad {what} {s:?}")))
}

/// Decimal digits only, at most 64 bits.
fn dec_u64(s: &str) -> io::Result<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(format!("bad inode {s:?}")));
    }
    s.parse().map_err(|_| invalid(format!("bad inode {s:?}")))
}

/// Opens `path` if it is (or links to) a regular file.
fn open_regular(path: &str) -> Option<File> {
    // Check before opening: opening a device node can have side effects.
    if !fs::metadata(path).ok()?.is_file() {
        return None;
    }
    open_checked(path)
}

/// Opens `path` for reading without blocking and keeps it only if the
/// opened descriptor is a regular file.
fn open_checked(path: &str) -> Option<File> {
    // The path may have changed since any check (a profiled process controls it):
    // O_NONBLOCK makes an open of a FIFO return at once instead of waiting
    // for a writer, possibly forever; O_CLOEXEC keeps the descriptor out
    // of any child (std sets it anyway; said here so it stays set).
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    // fstat of what was opened: only a regular file is read.
    file.metadata().ok()?.is_file().then_some(file)
}

/// Opens the mapping's file by its path under `root` ("" for `/`), unless
/// it was deleted or the path now names another inode.
fn open_by_path(m: &Mapping, root: &str) -> Option<File> {
    if m.is_deleted() {
        return None;
    }
    let file = open_regular(&format!("{root}{}", m.file_path()?))?;
    let ino = file.metadata().ok()?.ino();
    (m.inode == 0 || ino == m.inode).then_some(file)
}

/// The build id of an open file, reading its first [`HEAD_SIZE`] bytes
/// once and at most [`MAX_EXTRA_READ`] more on demand.
fn read_build_id(file: &File) -> Option<BuildIdNote> {
    read_build_id_counted(file).0
}

/// [`read_build_id`], and how many reads past the head it made.
fn read_build_id_counted(file: &File) -> (Option<BuildIdNote>, u32) {
    let mut head = Vec::new();
    if file.take(HEAD_SIZE).read_to_end(&mut head).is_err() {
        return (None, 0);
    }
    let mut src = FileSource {
        file,
        head,
        window: Vec::new(),
        window_at: 0,
        budget: MAX_EXTRA_READ,
        reads: 0,
    };
    let id = parse_build_id_from(&mut src);
    (id, src.reads)
}

/// An [`ElfSource`] over a file: its head from memory, the rest through a
/// page-sized window read on demand, within a byte budget.
///
/// # Invariants
///
/// `window` holds the file's bytes at `window_at..window_at + len` (empty
/// before the first read past the head); `budget + WINDOW * reads`
/// is [`MAX_EXTRA_READ`] (budget never below 0).
struct FileSource<'a> {
    file: &'a File,
    head: Vec<u8>,
    window: Vec<u8>,
    window_at: u64,
    budget: u64,
    reads: u32,
}

impl FileSource<'_> {
    /// Copies `buf.len()` bytes at `offset` from the window, if it has
    /// them.
    fn copy_from_window(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Some(start) = offset
            .checked_sub(self.window_at)
            .and_then(|d| usize::try_from(d).ok())
        else {
            return false;
        };
        match self.window.get(start..).and_then(|w| w.get(..buf.len())) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }
}

impl ElfSource for FileSource<'_> {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> bool {
        let mut head = self.head.as_slice();
        if head.read_exact_at(offset, buf) {
            return true;
        }
        // A short head is the whole file: nothing lies beyond it.
        if (self.head.len() as u64) < HEAD_SIZE || buf.len() > WINDOW {
            return false;
        }
        if self.copy_from_window(offset, buf) {
            return true;
        }
        // A fresh window at `offset` (so it holds the whole request),
        // paid from the budget; a short read at the end of the file is
        // fine (the copy below then fails if it falls short).
        if self.budget < WINDOW as u64 {
            return false;
        }
        self.budget -= WINDOW as u64;
        self.reads += 1;
        self.window.resize(WINDOW, 0);
        let mut filled = 0;
        while let Some(rest) = self.window.get_mut(filled..).filter(|r| !r.is_empty()) {
            match self
                .file
                .read_at(rest, offset.saturating_add(filled as u64))
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.window.truncate(filled);
        self.window_at = offset;
        self.copy_from_window(offset, buf)
    }
}

#[cfg(test)]
mod tests {
    //! Pure parsing (Miri-friendly); file and process access is checked in
    //! `tests/proc_maps.rs`.
    use super::*;

    const KERNEL_LINES: &str = "\
5614398fb000-56143991c000 rw-p 00000000 00:00 0                          [heap]
564029b29000-564029b2b000 r--p 00000000 fe:00 247282                     /usr/bin/head
564029b2b000-564029b31000 r-xp 00002000 fe:00 247282                     /usr/bin/head
7f4b73a75000-7f4b73b39000 rw-p 00000000 00:00 0 
7f4b73d8f000-7f4b73d91000 r-xp 00000000 00:00 0                          [vdso]
7f4b73d91000-7f4b73d92000 r--s 00001000 103:02 9123 /tmp/a b  c (deleted)
7fffa0416000-7fffa0437000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn parses_kernel_lines() {
        let maps = ProcMaps::parse_text(KERNEL_LINES).unwrap();
        assert_eq!(maps.len(), 8);
        let m = &maps.mappings()[1];
        assert_eq!(
            (m.start, m.end, m.offset),
            (0x5640_29b2_9000, 0x5640_29b2_b000, 0)
        );
        assert_eq!((m.dev_major, m.dev_minor, m.inode), (0xfe, 0, 247_282));
        assert_eq!(m.file_path(), Some("/usr/bin/head"));
        assert!(maps.mappings()[2].perms.exec);
        let heap = &maps.mappings()[0];
        assert_eq!((heap.path.as_str(), heap.file_path()), ("[heap]", None));
        assert_eq!(maps.mappings()[3].path, "");
        let del = &maps.mappings()[5];
        assert_eq!(del.path, "/tmp/a b  c (deleted)");
        assert_eq!(del.file_path(), Some("/tmp/a b  c"));
        assert!(del.is_deleted() && del.perms.shared);
        assert_eq!((del.dev_major, del.dev_minor), (0x103, 2));
        assert!(maps.iter().all(|m| m.start < m.end));
    }

    #[test]
    fn display_gives_the_kernel_line_back() {
        for line in KERNEL_LINES.lines() {
            let m: Mapping = line.parse().unwrap();
            let shown = m.to_string();
            assert_eq!(Mapping::parse_line(&shown).unwrap(), m);
            // Kernel-padded lines come back byte for byte.
            if !line.contains("/tmp/a") {
                assert_eq!(shown, line);
            }
        }
        let maps = ProcMaps::parse_text(KERNEL_LINES).unwrap();
        assert_eq!(ProcMaps::parse_text(&maps.to_string()).unwrap(), maps);
    }

    #[test]
    fn sorted_and_find_vma() {
        let text = "3000-4000 r-xp 0 00:00 0\n1000-2000 r-xp 00001000 08:01 5 /x\n";
        let maps = ProcMaps::parse_text(text).unwrap();
        assert_eq!(maps.mappings()[0].start, 0x1000);
        assert_eq!(maps.find_vma_index(0), Some(0));
        assert_eq!(maps.find_vma_index(0x1fff), Some(0));
        // The end is exclusive for find_vma: the next mapping, which does
        // not contain the ip.
        assert_eq!(maps.find_vma_index(0x2000), Some(1));
        assert_eq!(maps.find_vma_index(0x3fff), Some(1));
        assert_eq!(maps.find_vma_index(0x4000), None);
        let vma = maps.find_vma(0x1800).unwrap();
        assert_eq!(
            (vma.start, vma.end, vma.file_offset, vma.build_id),
            (0x1000, 0x2000, 0x1000, None)
        );
        assert!(maps.can_access());
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "1000-2000 r-xp 0 00:00",
            "1000-2000 r-xp 0 00:00 x",
            "1000 r-xp 0 00:00 0",
            "2000-1000 r-xp 0 00:00 0",
            "1000-1000 r-xp 0 00:00 0",
            "+1000-2000 r-xp 0 00:00 0",
            "1000-2000 r-xpp 0 00:00 0",
            "1000-2000 rwxq 0 00:00 0",
            "1000-2000 r-x 0 00:00 0",
            "1000-2000 r-xp 0 0000 0",
            "1000-2000 r-xp 0 100000000:00 0",
            "1000-2000 r-xp 0x0 00:00 0",
            "1000-20000000000000000 r-xp 0 00:00 0",
            "1000-2000 r-xp 0 00:00 -1",
            "1000-2000 r-xp 0 00:00 18446744073709551616",
            "1000-2000\tr-xp 0 00:00 0",
            "é",
        ] {
            assert!(ProcMaps::parse_text(bad).is_err(), "{bad:?}");
        }
        let err = ProcMaps::parse_text("\n\nzz").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    /// Lines glued from valid and invalid tokens: whatever parses must
    /// come back from its Display unchanged (what the fuzz target checks).
    #[test]
    fn generated_lines_round_trip() {
        // (valid tokens, invalid tokens) per column; mostly valid ones.
        let cols: [(&[&str], &[&str]); 6] = [
            (
                &[
                    "1000-2000",
                    "0-1",
                    "00001000-0002000",
                    "ffffffffffff0000-ffffffffffffffff",
                ],
                &["2-1", "x-1", "-"],
            ),
            (&["r-xp", "---s", "rwxp"], &["rwx", "r-xpp", "R-xp"]),
            (
                &["0", "00000000", "ffffffffffffffff", "1234abcd"],
                &["fffffffffffffffff", "+1", ""],
            ),
            (
                &["00:00", "fe:01", "103:2a", "ffffffff:0"],
                &["0", ":", "fffffffff:0"],
            ),
            (
                &["0", "123", "18446744073709551615"],
                &["-1", "1.5", "18446744073709551616"],
            ),
            (
                &[
                    "",
                    "/usr/lib/libc.so.6",
                    "[heap]",
                    "/a b (deleted)",
                    "\t/x ",
                    "é",
                ],
                &[],
            ),
        ];
        let seps = [" ", " ", "  ", "\t"];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut pick = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut parsed, rounds) = (0, if cfg!(miri) { 100 } else { 3000 });
        for _ in 0..rounds {
            let sep = seps[pick(seps.len())];
            let mut tokens = std::vec::Vec::new();
            for (good, bad) in cols {
                let list = if bad.is_empty() || pick(16) != 0 {
                    good
                } else {
                    bad
                };
                tokens.push(list[pick(list.len())]);
            }
            let line = tokens.join(sep);
            if let Ok(m) = Mapping::parse_line(&line) {
                parsed += 1;
                let shown = m.to_string();
                assert_eq!(
                    Mapping::parse_line(&shown).unwrap(),
                    m,
                    "{line:?} -> {shown:?}"
                );
            } else {
                assert!(ProcMaps::parse_text(&line).is_err());
            }
        }
        std::eprintln!("{parsed} of {rounds} generated lines parsed");
        assert!(parsed > 0);
    }

    #[test]
    fn blank_lines_and_odd_paths() {
        let maps =
            ProcMaps::parse_text("\n  \n1000-2000 ---s 0 00:00 0    anon_inode:[perf_event]  \n")
                .unwrap();
        assert_eq!(maps.len(), 1);
        let m = &maps.mappings()[0];
        assert_eq!(m.path, "anon_inode:[perf_event]  ");
        assert_eq!(m.file_path(), None);
        assert!(!m.is_deleted());
        assert_eq!(Mapping::parse_line(&m.to_string()).unwrap(), *m);
        // A long prefix: no padding, one space, path.
        let long = "ffffffffffffffff-fffffffffffffffe r--p ffffffffffffffff fff:fffff 18446744073709551615 /p";
        assert!(Mapping::parse_line(long).is_err()); // reversed
        let long = "fffffffffffffff0-ffffffffffffffff r--p ffffffffffffffff fff:fffff 18446744073709551615 /p";
        let m = Mapping::parse_line(long).unwrap();
        assert_eq!(m.to_string(), long.replace(" /p", "  /p"));
        assert_eq!(Mapping::parse_line(&m.to_string()).unwrap(), m);
    }
}

#[cfg(test)]
mod file_tests {
    //! Reading files (not under Miri: it has no `pread`).
    use super::*;
    use std::io::Write;

    /// An ELF64 header and one PT_NOTE program header claiming
    /// `0xffff_0000` bytes of notes at `HEAD_SIZE`, in a 4 GiB file that
    /// is all holes past the header: 358 million empty 12-byte notes.
    pub(super) fn huge_sparse_elf(path: &std::path::Path) {
        let mut h = std::vec![0u8; 64 + 56];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2; // ELFCLASS64
        h[5] = if cfg!(target_endian = "big") { 2 } else { 1 };
        h[6] = 1; // EV_CURRENT
        h[16..18].copy_from_slice(&3u16.to_ne_bytes()); // ET_DYN
        h[32..40].copy_from_slice(&64u64.to_ne_bytes()); // e_phoff
        h[52..54].copy_from_slice(&64u16.to_ne_bytes()); // e_ehsize
        h[54..56].copy_from_slice(&56u16.to_ne_bytes()); // e_phentsize
        h[56..58].copy_from_slice(&1u16.to_ne_bytes()); // e_phnum
        let ph = &mut h[64..];
        ph[..4].copy_from_slice(&4u32.to_ne_bytes()); // PT_NOTE
        ph[8..16].copy_from_slice(&HEAD_SIZE.to_ne_bytes()); // p_offset
        ph[32..40].copy_from_slice(&0xffff_0000u64.to_ne_bytes()); // p_filesz
        let mut f = File::create(path).unwrap();
        f.write_all(&h).unwrap();
        f.set_len(1 << 32).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn huge_sparse_note_segment_reads_are_bounded() {
        let path = std::env::temp_dir().join(format!("kstackmap-sparse-{}", std::process::id()));
        huge_sparse_elf(&path);
        let file = File::open(&path).unwrap();
        let (id, reads) = read_build_id_counted(&file);
        drop(file);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(id, None);
        // The walk ran until the budget was spent, and no further.
        assert_eq!(u64::from(reads), MAX_EXTRA_READ / WINDOW as u64);
    }

    /// A FIFO that replaced the checked path before the open: the open
    /// returns at once (O_NONBLOCK) and `fstat` refuses it. A blocking
    /// open would wait here forever (no writer ever comes).
    #[test]
    #[cfg_attr(miri, ignore)]
    fn a_fifo_is_opened_without_blocking_and_refused() {
        let fifo = std::env::temp_dir().join(format!("kstackmap-fifo-{}", std::process::id()));
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let opened = open_checked(fifo.to_str().unwrap());
        let checked = open_regular(fifo.to_str().unwrap());
        std::fs::remove_file(&fifo).unwrap();
        assert!(opened.is_none() && checked.is_none());
        let dir = std::env::temp_dir();
        assert!(open_checked(dir.to_str().unwrap()).is_none());
        let exe = std::env::current_exe().unwrap();
        assert!(open_regular(exe.to_str().unwrap()).is_some());
    }
}
