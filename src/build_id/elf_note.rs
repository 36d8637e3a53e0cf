//! A `no_std`, allocation-free reader of the GNU build id note of an ELF
//! file, with the kernel's semantics (`lib/buildid.c`, Linux 6.12 and later).

use core::fmt;

use crate::build_id::BuildId;
use crate::uapi::BUILD_ID_SIZE_MAX;

/// `n_type` of the GNU build id note (`NT_GNU_BUILD_ID`).
pub(crate) const NT_GNU_BUILD_ID: u32 = 3;
/// `p_type` of a note segment (`PT_NOTE`).
pub(crate) const PT_NOTE: u32 = 4;
/// The most program headers the kernel looks at (`MAX_PHDR_CNT`); a larger
/// `e_phnum` is clamped to it.
pub(crate) const MAX_PHDR_CNT: u16 = 256;

const ELFMAG: [u8; 4] = *b"\x7fELF";
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ELFDATA2MSB: u8 = 2;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
/// `offsetofend(Elf32_Ehdr, e_type)`: what the kernel reads first.
const EHDR_PREFIX: usize = 18;
const EHDR32_SIZE: usize = 52;
const EHDR64_SIZE: usize = 64;
const PHDR32_SIZE: usize = 32;
const PHDR64_SIZE: usize = 56;
/// `sizeof(Elf32_Nhdr)`, the same for both classes.
const NHDR_SIZE: u32 = 12;
/// The note name, with its NUL, as the kernel compares it.
const GNU_NAME: [u8; 4] = *b"GNU\0";
/// `sizeof(Elf32_Nhdr) + sizeof("GNU")`: what the kernel reads per note.
const NOTE_PREFIX: usize = 16;

/// A build id as found in an ELF note: the zero-padded bytes the kernel
/// stores, and how many of them the note really had.
///
/// # Invariants
///
/// `1 <= size() <= 20`, and the bytes after `size()` are zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildIdNote {
    bytes: BuildId,
    len: u8,
}

impl BuildIdNote {
    /// A build id from its significant bytes; `None` unless
    /// `1 <= id.len() <= 20` (the only ones the kernel accepts).
    pub fn new(id: &[u8]) -> Option<Self> {
        if id.is_empty() || id.len() > BUILD_ID_SIZE_MAX {
            return None;
        }
        let mut bytes = [0u8; BUILD_ID_SIZE_MAX];
        bytes.get_mut(..id.len())?.copy_from_slice(id);
        // INVARIANT: 1 <= len <= 20 checked above; the tail stays zero.
        Some(Self {
            bytes,
            len: id.len() as u8,
        })
    }

    /// The build id zero-padded to 20 bytes, as the kernel stores it in
    /// `struct bpf_stack_build_id`.
    pub fn padded(&self) -> BuildId {
        self.bytes
    }

    /// The significant bytes (`size()` of them), as `readelf -n` prints them.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes
            .get(..usize::from(self.len))
            .unwrap_or(&self.bytes)
    }

    /// How many bytes the note's descriptor had (`n_descsz`), `1..=20`.
    pub fn size(&self) -> usize {
        usize::from(self.len)
    }
}

impl From<BuildIdNote> for BuildId {
    fn from(note: BuildIdNote) -> Self {
        note.padded()
    }
}

impl fmt::Display for BuildIdNote {
    /// Lower-case hex of the significant bytes, like `readelf -n`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BuildIdNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BuildIdNote({self})")
    }
}

/// Random access to the bytes of an ELF file, for
/// [`parse_build_id_from`]. A slice is one; `ProcMaps` (feature `std`)
/// reads files through its own.
pub trait ElfSource {
    /// Fills `buf` with the bytes at `offset..offset + buf.len()`; returns
    /// `false`, leaving `buf` in any state, if any of them is not there.
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> bool;
}

impl ElfSource for &[u8] {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> bool {
        let Ok(start) = usize::try_from(offset) else {
            return false;
        };
        let Some(end) = start.checked_add(buf.len()) else {
            return false;
        };
        match self.get(start..end) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

/// The build id of an ELF executable or shared object held in memory, as
/// the kernel's `build_id_parse` finds it (see below):
/// `PT_NOTE` segments only, the first `NT_GNU_BUILD_ID` note named `"GNU"`
/// with a 1 to 20 byte descriptor.
///
/// Total: any input gives `Some` or `None`, never a panic.
///
/// # Examples
///
/// ```
/// let exe = std::fs::read(std::env::current_exe()?)?;
/// if let Some(id) = kstackmap::parse_build_id(&exe) {
///     // `id` prints like `readelf -n`'s "Build ID:" line.
///     assert_eq!(id.to_string().len(), 2 * id.size());
///     let stored: kstackmap::BuildId = id.padded(); // zero-padded to 20
///     assert_eq!(&stored[..id.size()], id.as_bytes());
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # How it reads the file
///
/// ## What it does, step by step (the kernel's `__build_id_parse`)
///
/// 1. The first 18 bytes must hold `\x7fELF` and an `e_type` of `ET_EXEC`
///    or `ET_DYN`; `EI_CLASS` must be `ELFCLASS32` or `ELFCLASS64`.
/// 2. The whole ELF header must be readable. At most `MAX_PHDR_CNT` (256)
///    program headers are looked at (`e_phnum` is clamped, not rejected);
///    `e_phoff + e_phnum * e_phentsize` must not overflow. Section headers
///    are never looked at: the kernel has no `SHT_NOTE` fallback.
/// 3. Program headers are read in order; one that cannot be read ends the
///    parse with no build id, even if later ones would have had one.
/// 4. For each `PT_NOTE` header, the notes in `[p_offset, p_offset +
///    p_filesz)` are walked: `p_filesz` is truncated to 32 bits (the kernel
///    passes it as an `Elf32_Word`), and the segment's end must fit in 32
///    bits. Notes are stepped over with **4-byte alignment whatever
///    `p_align` says** (the kernel's `ALIGN(n, 4)`, in 32-bit arithmetic
///    that wraps for sizes within 3 of `u32::MAX`, reproduced here on
///    purpose). A note is read only while more than 16 bytes of the segment
///    remain; a note whose padded end lies past the segment's end ends the
///    walk of that segment.
/// 5. The first note with `n_type == NT_GNU_BUILD_ID`, `n_namesz == 4`,
///    name `"GNU\0"` and `1 <= n_descsz <= 20` wins: its descriptor is
///    copied and zero-padded to 20 bytes. Notes with a longer or empty
///    descriptor are skipped (the walk goes on), not rejected. A segment in
///    which nothing is found, or whose bytes cannot be read, is skipped and
///    the next program header is tried.
///
/// # Where this differs from the kernel, on purpose
///
/// - Byte order: the kernel reads every field in the host's byte order
///   (it never looks at `EI_DATA`), so on a little-endian host it finds no
///   build id in a big-endian file. Here `EI_DATA` is honoured (`ELFDATA2LSB`
///   / `ELFDATA2MSB`; any other value means the host's order, as the kernel
///   would read it). Files of the host's byte order, the only ones a process
///   can map and run, give exactly the kernel's answer.
/// - Reads: the kernel reads from the page cache and, in the non-faulting
///   path the BPF helpers use, fails when a page is not cached; it also sees
///   zeros past the end of the file inside the last cached page. Here a
///   read fails exactly when it reaches past the end of the bytes the
///   [`ElfSource`] has.
///
/// # Invariants
///
/// - Total and panic-free: every read goes through [`ElfSource`] with an
///   offset and length checked for overflow; there is no slice indexing
///   that can fail, no unchecked arithmetic (the one deliberate wrap,
///   `ALIGN`, uses `wrapping_add`), no recursion and no allocation.
/// - Work is bounded: at most `MAX_PHDR_CNT` (256) program headers, and every
///   note step advances at least 12 bytes through a segment of at most
///   4 GiB that must also be readable.
/// - A returned [`BuildIdNote`] has `1..=20` significant bytes and zero
///   padding after them.
pub fn parse_build_id(elf: &[u8]) -> Option<BuildIdNote> {
    let mut src = elf;
    parse_build_id_from(&mut src)
}

/// [`parse_build_id`] over any [`ElfSource`], so that a large file need
/// not be read whole: it reads the ELF header, at most `MAX_PHDR_CNT` (256)
/// program headers and the note segments, in pieces of at most 64 bytes.
pub fn parse_build_id_from<S: ElfSource + ?Sized>(src: &mut S) -> Option<BuildIdNote> {
    let mut prefix = [0u8; EHDR_PREFIX];
    if !src.read_exact_at(0, &mut prefix) {
        return None;
    }
    if field::<4>(&prefix, 0)? != ELFMAG {
        return None;
    }
    let order = ByteOrder::from_ei_data(*prefix.get(EI_DATA)?);
    let e_type = order.u16(field::<2>(&prefix, 16)?);
    if e_type != ET_EXEC && e_type != ET_DYN {
        return None;
    }
    let class = *prefix.get(EI_CLASS)?;
    let layout = match class {
        ELFCLASS32 => &LAYOUT32,
        ELFCLASS64 => &LAYOUT64,
        _ => return None,
    };

    let mut ehdr = [0u8; EHDR64_SIZE];
    let ehdr = ehdr.get_mut(..layout.ehdr_size)?;
    if !src.read_exact_at(0, ehdr) {
        return None;
    }
    let phoff = layout.read_word(order, ehdr, layout.e_phoff)?;
    let phnum = order
        .u16(field::<2>(ehdr, layout.e_phnum)?)
        .min(MAX_PHDR_CNT);
    // The kernel rejects a table whose end overflows (only possible for
    // 64-bit files); phdrs past the end of the file fail when read.
    let table = u64::from(phnum).checked_mul(layout.phdr_size as u64)?;
    phoff.checked_add(table)?;

    let mut phdr = [0u8; PHDR64_SIZE];
    let phdr = phdr.get_mut(..layout.phdr_size)?;
    for i in 0..u64::from(phnum) {
        // Cannot overflow: checked for i == phnum above.
        let at = phoff.checked_add(i.checked_mul(layout.phdr_size as u64)?)?;
        if !src.read_exact_at(at, phdr) {
            // The kernel returns the read error: no later header is tried.
            return None;
        }
        if order.u32(field::<4>(phdr, 0)?) != PT_NOTE {
            continue;
        }
        let p_offset = layout.read_word(order, phdr, layout.p_offset)?;
        // The kernel passes p_filesz as an Elf32_Word: 64-bit sizes are
        // truncated to their low 32 bits, on purpose.
        let p_filesz = layout.read_word(order, phdr, layout.p_filesz)? as u32;
        if let Some(id) = parse_notes(src, order, p_offset, p_filesz) {
            return Some(id);
        }
    }
    None
}

/// The build id in a buffer of notes (no ELF header around them), like the
/// kernel's `build_id_parse_buf` (used for the kernel's own notes, e.g.
/// `/sys/kernel/notes`). Fields are read in the host's byte order, as the
/// kernel does; the buffer is walked as one segment of at most 4 GiB.
pub fn parse_note_buf(notes: &[u8]) -> Option<BuildIdNote> {
    let size = u32::try_from(notes.len()).unwrap_or(u32::MAX);
    let mut src = notes;
    parse_notes(&mut src, ByteOrder::NATIVE, 0, size)
}

/// The kernel's `parse_build_id`: walks the notes of one segment.
fn parse_notes<S: ElfSource + ?Sized>(
    src: &mut S,
    order: ByteOrder,
    note_off: u64,
    note_size: u32,
) -> Option<BuildIdNote> {
    // check_add_overflow(note_off, note_size, &note_end) with a u32
    // note_end: the whole segment must end below 4 GiB. (An offset of
    // 2^63 or more is negative as a loff_t; its first read fails in the
    // kernel, which gives the same answer: nothing found.)
    let mut off = u32::try_from(note_off).ok()?;
    let note_end = off.checked_add(note_size)?;
    let mut hdr = [0u8; NOTE_PREFIX];
    // `off <= note_end` holds throughout: initially, and new_off is
    // checked against note_end before it is taken.
    while note_end.checked_sub(off)? > NOTE_PREFIX as u32 {
        if !src.read_exact_at(u64::from(off), &mut hdr) {
            return None;
        }
        let name_sz = order.u32(field::<4>(&hdr, 0)?);
        let desc_sz = order.u32(field::<4>(&hdr, 4)?);
        let n_type = order.u32(field::<4>(&hdr, 8)?);

        let new_off = off
            .checked_add(NHDR_SIZE)?
            .checked_add(kernel_align4(name_sz))?
            .checked_add(kernel_align4(desc_sz))?;
        if new_off > note_end {
            return None;
        }

        if n_type == NT_GNU_BUILD_ID
            && name_sz == GNU_NAME.len() as u32
            && field::<4>(&hdr, 12)? == GNU_NAME
            && desc_sz > 0
            && desc_sz as usize <= BUILD_ID_SIZE_MAX
        {
            // The name is 4 bytes, already aligned: the descriptor follows
            // the 16-byte prefix.
            let desc_off = u64::from(off).checked_add(NOTE_PREFIX as u64)?;
            let mut bytes = [0u8; BUILD_ID_SIZE_MAX];
            let desc = bytes.get_mut(..desc_sz as usize)?;
            if !src.read_exact_at(desc_off, desc) {
                return None;
            }
            return BuildIdNote::new(desc);
        }
        off = new_off;
    }
    None
}

/// The kernel's `ALIGN(x, 4)` on a `u32`: it wraps to 0 for `x` within 3
/// of `u32::MAX`, and the kernel then steps over such a note by its header
/// alone. Reproduced so that hostile notes give the kernel's answer.
fn kernel_align4(x: u32) -> u32 {
    x.wrapping_add(3) & !3
}

/// `N` bytes of `buf` at `at`, or `None` if they are not all there.
fn field<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    let end = at.checked_add(N)?;
    buf.get(at..end)?.try_into().ok()
}

/// The byte order fields are read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ByteOrder {
    Little,
    Big,
}

impl ByteOrder {
    const NATIVE: Self = if cfg!(target_endian = "big") {
        Self::Big
    } else {
        Self::Little
    };

    fn from_ei_data(ei_data: u8) -> Self {
        match ei_data {
            ELFDATA2LSB => Self::Little,
            ELFDATA2MSB => Self::Big,
            // The kernel ignores EI_DATA and reads the host's order.
            _ => Self::NATIVE,
        }
    }

    fn u16(self, b: [u8; 2]) -> u16 {
        match self {
            Self::Little => u16::from_le_bytes(b),
            Self::Big => u16::from_be_bytes(b),
        }
    }

    fn u32(self, b: [u8; 4]) -> u32 {
        match self {
            Self::Little => u32::from_le_bytes(b),
            Self::Big => u32::from_be_bytes(b),
        }
    }

    fn u64(self, b: [u8; 8]) -> u64 {
        match self {
            Self::Little => u64::from_le_bytes(b),
            Self::Big => u64::from_be_bytes(b),
        }
    }
}

/// Where the fields the parser needs sit, per ELF class.
struct Layout {
    /// `true`: address-sized fields are 8 bytes, else 4.
    wide: bool,
    ehdr_size: usize,
    phdr_size: usize,
    e_phoff: usize,
    e_phnum: usize,
    p_offset: usize,
    p_filesz: usize,
}

const LAYOUT32: Layout = Layout {
    wide: false,
    ehdr_size: EHDR32_SIZE,
    phdr_size: PHDR32_SIZE,
    e_phoff: 28,
    e_phnum: 44,
    p_offset: 4,
    p_filesz: 16,
};

const LAYOUT64: Layout = Layout {
    wide: true,
    ehdr_size: EHDR64_SIZE,
    phdr_size: PHDR64_SIZE,
    e_phoff: 32,
    e_phnum: 56,
    p_offset: 8,
    p_filesz: 32,
};

impl Layout {
    /// An address-sized field (`Elf32_Off`/`Elf32_Word` or `Elf64_Off`/
    /// `Elf64_Xword`), widened to `u64`.
    fn read_word(&self, order: ByteOrder, buf: &[u8], at: usize) -> Option<u64> {
        if self.wide {
            Some(order.u64(field::<8>(buf, at)?))
        } else {
            Some(u64::from(order.u32(field::<4>(buf, at)?)))
        }
    }
}

#[cfg(test)]
mod tests {
    //! Small synthetic ELF images (Miri-friendly); real binaries are
    //! checked in `tests/build_id.rs`.
    use super::*;

    extern crate alloc;
    use alloc::vec;
    use alloc::vec::Vec;

    /// One note: name bytes (unpadded), type, descriptor.
    struct Note<'a> {
        namesz: u32,
        name: &'a [u8],
        descsz: u32,
        n_type: u32,
        desc: &'a [u8],
    }

    fn gnu(desc: &[u8]) -> Note<'_> {
        Note {
            namesz: 4,
            name: b"GNU\0",
            descsz: desc.len() as u32,
            n_type: NT_GNU_BUILD_ID,
            desc,
        }
    }

    #[derive(Clone, Copy)]
    struct Opts {
        wide: bool,
        big: bool,
        e_type: u16,
        /// Pad notes to this alignment (4 or 8).
        align: usize,
    }

    const LE64: Opts = Opts {
        wide: true,
        big: false,
        e_type: ET_DYN,
        align: 4,
    };

    fn put(out: &mut [u8], at: usize, v: u64, n: usize, big: bool) {
        let b = v.to_le_bytes();
        for i in 0..n {
            out[at + i] = if big { b[n - 1 - i] } else { b[i] };
        }
    }

    fn pad(v: &mut Vec<u8>, align: usize) {
        while v.len() % align != 0 {
            v.push(0);
        }
    }

    fn note_bytes(notes: &[Note<'_>], o: Opts) -> Vec<u8> {
        let mut v = Vec::new();
        for n in notes {
            let mut h = vec![0u8; 12];
            put(&mut h, 0, n.namesz.into(), 4, o.big);
            put(&mut h, 4, n.descsz.into(), 4, o.big);
            put(&mut h, 8, n.n_type.into(), 4, o.big);
            v.extend_from_slice(&h);
            v.extend_from_slice(n.name);
            pad(&mut v, o.align);
            v.extend_from_slice(n.desc);
            pad(&mut v, o.align);
        }
        v
    }

    /// An ELF image: header, then `segs` program headers (type, data),
    /// then the segments' data.
    fn elf(o: Opts, segs: &[(u32, &[u8])]) -> Vec<u8> {
        let (eh, ph) = if o.wide { (64, 56) } else { (52, 32) };
        let mut v = vec![0u8; eh + ph * segs.len()];
        v[..4].copy_from_slice(&ELFMAG);
        v[EI_CLASS] = if o.wide { ELFCLASS64 } else { ELFCLASS32 };
        v[EI_DATA] = if o.big { ELFDATA2MSB } else { ELFDATA2LSB };
        v[6] = 1;
        put(&mut v, 16, o.e_type.into(), 2, o.big);
        let (phoff_at, phnum_at) = if o.wide { (32, 56) } else { (28, 44) };
        put(
            &mut v,
            phoff_at,
            eh as u64,
            if o.wide { 8 } else { 4 },
            o.big,
        );
        put(&mut v, phnum_at, segs.len() as u64, 2, o.big);
        for (i, (p_type, data)) in segs.iter().enumerate() {
            pad(&mut v, 8);
            let off = v.len();
            v.extend_from_slice(data);
            let at = eh + i * ph;
            put(&mut v, at, (*p_type).into(), 4, o.big);
            if o.wide {
                put(&mut v, at + 8, off as u64, 8, o.big);
                put(&mut v, at + 32, data.len() as u64, 8, o.big);
                put(&mut v, at + 48, o.align as u64, 8, o.big);
            } else {
                put(&mut v, at + 4, off as u64, 4, o.big);
                put(&mut v, at + 16, data.len() as u64, 4, o.big);
                put(&mut v, at + 28, o.align as u64, 4, o.big);
            }
        }
        v
    }

    const ID20: [u8; 20] = [
        0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
    ];

    fn simple(o: Opts, desc: &[u8]) -> Vec<u8> {
        elf(o, &[(PT_NOTE, &note_bytes(&[gnu(desc)], o))])
    }

    #[test]
    fn finds_id_in_all_classes_and_orders() {
        for wide in [false, true] {
            for big in [false, true] {
                for e_type in [ET_EXEC, ET_DYN] {
                    let o = Opts {
                        wide,
                        big,
                        e_type,
                        align: 4,
                    };
                    let id = parse_build_id(&simple(o, &ID20)).expect("build id");
                    assert_eq!(id.padded(), ID20);
                    assert_eq!(id.size(), 20);
                }
            }
        }
    }

    #[test]
    fn short_ids_are_zero_padded() {
        for len in 1..=20 {
            let id = parse_build_id(&simple(LE64, &ID20[..len])).expect("build id");
            assert_eq!(id.size(), len);
            assert_eq!(id.as_bytes(), &ID20[..len]);
            assert!(id.padded()[len..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn empty_or_long_descriptors_are_skipped_not_fatal() {
        let long = [7u8; 21];
        for bad in [&[][..], &long[..]] {
            assert_eq!(parse_build_id(&simple(LE64, bad)), None);
            // The walk goes on to the next note of the same segment.
            let notes = note_bytes(&[gnu(bad), gnu(&ID20[..8])], LE64);
            let id = parse_build_id(&elf(LE64, &[(PT_NOTE, &notes)])).unwrap();
            assert_eq!(id.as_bytes(), &ID20[..8]);
        }
    }

    #[test]
    fn name_and_type_must_match() {
        let wrong = [
            Note {
                namesz: 4,
                name: b"GNV\0",
                ..gnu(&ID20)
            },
            Note {
                namesz: 3,
                name: b"GNU",
                ..gnu(&ID20)
            },
            Note {
                namesz: 0,
                name: b"",
                ..gnu(&ID20)
            },
            Note {
                n_type: 1,
                ..gnu(&ID20)
            },
        ];
        for n in wrong {
            let notes = note_bytes(&[n], LE64);
            assert_eq!(parse_build_id(&elf(LE64, &[(PT_NOTE, &notes)])), None);
        }
    }

    #[test]
    fn only_exec_and_dyn_files() {
        for e_type in [0, 1, 4, 0xfe00] {
            let o = Opts { e_type, ..LE64 };
            assert_eq!(parse_build_id(&simple(o, &ID20)), None);
        }
        let mut v = simple(LE64, &ID20);
        v[EI_CLASS] = 3;
        assert_eq!(parse_build_id(&v), None);
        v[EI_CLASS] = ELFCLASS64;
        v[0] = 0x7e;
        assert_eq!(parse_build_id(&v), None);
    }

    #[test]
    fn non_note_segments_and_later_segments() {
        let good = note_bytes(&[gnu(&ID20)], LE64);
        let other = note_bytes(
            &[Note {
                n_type: 1,
                ..gnu(&ID20)
            }],
            LE64,
        );
        // Not a PT_NOTE: ignored even if it holds a build id note.
        assert_eq!(parse_build_id(&elf(LE64, &[(1, &good)])), None);
        // A first note segment without the id: the second is tried.
        let v = elf(LE64, &[(1, &good), (PT_NOTE, &other), (PT_NOTE, &good)]);
        assert_eq!(parse_build_id(&v).unwrap().padded(), ID20);
    }

    #[test]
    fn unreadable_phdr_ends_the_parse() {
        let other = note_bytes(
            &[Note {
                n_type: 1,
                ..gnu(&ID20)
            }],
            LE64,
        );
        let mut v = elf(LE64, &[(PT_NOTE, &other)]);
        // Claim a second program header: it would lie past the end.
        v[56] = 2;
        assert_eq!(parse_build_id(&v), None);
    }

    #[test]
    fn phnum_is_clamped_to_256() {
        let good = note_bytes(&[gnu(&ID20)], LE64);
        let mut segs: Vec<(u32, &[u8])> = vec![(1, &[]); 257];
        segs[255] = (PT_NOTE, &good);
        assert!(parse_build_id(&elf(LE64, &segs)).is_some());
        segs[255] = (1, &[]);
        segs[256] = (PT_NOTE, &good);
        assert_eq!(parse_build_id(&elf(LE64, &segs)), None);
    }

    #[test]
    fn hostile_offsets_and_sizes() {
        let base = simple(LE64, &ID20);
        let ph = 64;
        let patch = |at: usize, v: u64, n: usize| {
            let mut x = base.clone();
            put(&mut x, at, v, n, false);
            x
        };
        for phoff in [u64::MAX, u64::MAX - 55, 1 << 63, base.len() as u64] {
            assert_eq!(parse_build_id(&patch(32, phoff, 8)), None, "{phoff:#x}");
        }
        for p_offset in [u64::MAX, u64::from(u32::MAX) - 8, 1 << 32, 1 << 63] {
            assert_eq!(parse_build_id(&patch(ph + 8, p_offset, 8)), None);
        }
        // p_filesz is truncated to 32 bits, as in the kernel: 2^32 + real
        // size still finds the note; 2^32 alone is an empty segment.
        let size = u64::from_le_bytes(base[ph + 32..ph + 40].try_into().unwrap());
        assert!(parse_build_id(&patch(ph + 32, (1 << 32) + size, 8)).is_some());
        assert_eq!(parse_build_id(&patch(ph + 32, 1 << 32, 8)), None);
        // A segment longer than the file: the id is still read (all of it
        // is there); a note header past the end is not.
        assert!(parse_build_id(&patch(ph + 32, 4096, 8)).is_some());
        // descsz that overflows the walk, or runs past the segment.
        let note = base.len() - 36;
        for descsz in [u32::MAX - 3, u32::MAX - 16, 0x8000_0000, 24] {
            assert_eq!(parse_build_id(&patch(note + 4, descsz.into(), 4)), None);
        }
        // Huge phnum: clamped; the first header's note is found before the
        // unreadable headers past the end of the file are reached.
        assert!(parse_build_id(&patch(56, 0xffff, 2)).is_some());
        // Turn that first header into a non-note: now a header past the
        // end is read, and fails the whole parse.
        let mut x = patch(56, 0xffff, 2);
        put(&mut x, ph, 1, 4, false);
        assert_eq!(parse_build_id(&x), None);
    }

    #[test]
    fn kernel_align_wrap_steps_over_the_header_only() {
        // namesz = u32::MAX: ALIGN wraps to 0, so the kernel steps 12 bytes
        // (header) + ALIGN(descsz) and finds the next note right there.
        let mut notes = vec![0u8; 12];
        put(&mut notes, 0, u32::MAX.into(), 4, false);
        notes.extend(note_bytes(&[gnu(&ID20)], LE64));
        let v = elf(LE64, &[(PT_NOTE, &notes)]);
        assert_eq!(parse_build_id(&v).unwrap().padded(), ID20);
    }

    #[test]
    fn notes_are_stepped_with_4_byte_alignment_like_the_kernel() {
        // An 8-aligned segment whose first note's size is 4 mod 8: the
        // gABI puts the next note 4 bytes further than the kernel looks.
        let o8 = Opts { align: 8, ..LE64 };
        let first = Note {
            n_type: 5,
            ..gnu(&[1, 2, 3, 4])
        };
        let notes = note_bytes(&[first, gnu(&ID20)], o8);
        assert_eq!(parse_build_id(&elf(o8, &[(PT_NOTE, &notes)])), None);
        // With descriptors that keep 8-byte alignment both agree.
        let first = Note {
            n_type: 5,
            ..gnu(&[0; 8])
        };
        let notes = note_bytes(&[first, gnu(&ID20)], o8);
        assert!(parse_build_id(&elf(o8, &[(PT_NOTE, &notes)])).is_some());
    }

    #[test]
    fn misaligned_tables_and_notes_still_parse() {
        // The kernel copies fields out byte-wise (freader): neither the
        // program header table nor a note segment need be aligned.
        let base = simple(LE64, &ID20);
        let notes = note_bytes(&[gnu(&ID20)], LE64);
        let mut v = base.clone();
        v.push(0xaa); // odd offset for what follows
        let note_at = v.len();
        v.extend_from_slice(&notes);
        let ph_at = v.len();
        v.extend_from_slice(&base[64..120]); // the phdr, moved
        put(&mut v, 32, ph_at as u64, 8, false); // e_phoff, odd
        put(&mut v, ph_at + 8, note_at as u64, 8, false); // p_offset, odd
        assert_eq!(ph_at % 2, 1);
        assert_eq!(parse_build_id(&v).unwrap().padded(), ID20);
        // A note that starts mid-way through another is just garbage.
        put(&mut v, ph_at + 8, note_at as u64 + 2, 8, false);
        assert_eq!(parse_build_id(&v), None);
    }

    #[test]
    fn a_note_needs_more_than_16_bytes_of_segment() {
        let notes = note_bytes(&[gnu(&ID20[..1])], LE64);
        assert_eq!(notes.len(), 20);
        let v = elf(LE64, &[(PT_NOTE, &notes)]);
        assert!(parse_build_id(&v).is_some());
        // Shrink p_filesz to 16: the loop does not even read the header.
        let mut w = v.clone();
        put(&mut w, 64 + 32, 16, 8, false);
        assert_eq!(parse_build_id(&w), None);
    }

    #[test]
    fn every_truncation_is_none_or_the_id() {
        for o in [
            LE64,
            Opts {
                wide: false,
                big: true,
                ..LE64
            },
        ] {
            let v = simple(o, &ID20);
            for len in 0..v.len() {
                assert_eq!(parse_build_id(&v[..len]), None, "len {len}");
            }
            assert!(parse_build_id(&v).is_some());
        }
    }

    #[test]
    fn hostile_32bit_big_endian() {
        let o = Opts {
            wide: false,
            big: true,
            ..LE64
        };
        let base = simple(o, &ID20);
        // Read little-endian, this file is garbage.
        let mut le = base.clone();
        le[EI_DATA] = ELFDATA2LSB;
        assert_eq!(parse_build_id(&le), None);
        for (at, v) in [(28, u32::MAX), (52 + 4, u32::MAX), (52 + 16, u32::MAX - 60)] {
            let mut x = base.clone();
            put(&mut x, at, v.into(), 4, true);
            assert_eq!(parse_build_id(&x), None);
        }
    }

    #[test]
    fn note_buffers() {
        let notes = note_bytes(
            &[
                Note {
                    n_type: 1,
                    ..gnu(&ID20)
                },
                gnu(&ID20),
            ],
            LE64,
        );
        if cfg!(target_endian = "little") {
            assert_eq!(parse_note_buf(&notes).unwrap().padded(), ID20);
        }
        assert_eq!(parse_note_buf(&notes[..notes.len() - 1]), None);
        assert_eq!(parse_note_buf(&[]), None);
    }

    #[test]
    fn build_id_note_api() {
        assert_eq!(BuildIdNote::new(&[]), None);
        assert_eq!(BuildIdNote::new(&[0; 21]), None);
        let id = BuildIdNote::new(&[0xab, 0x01]).unwrap();
        assert_eq!(alloc::format!("{id}"), "ab01");
        assert_eq!(alloc::format!("{id:?}"), "BuildIdNote(ab01)");
        let padded: BuildId = id.into();
        assert_eq!(&padded[..3], &[0xab, 0x01, 0]);
    }
}
