//! The `elf_note` check: any bytes as an ELF file into
//! `kstackmap::elf_note::parse_build_id` (and the note-buffer walk): no
//! panic, a well-formed result, and the same build id as a second parser,
//! the `object` crate, whenever `object` accepts the file.
//!
//! `object` reads the program headers and iterates the notes of each
//! `PT_NOTE` segment; [`object_build_id`] applies on top of it the rules
//! the kernel (and so `elf_note`) documents and `object` does not know:
//! only `ET_EXEC` / `ET_DYN`, at most 256 program headers, a note counts
//! only while more than 16 bytes of its segment remain and only if its
//! 4-aligned end lies inside the segment (else the segment is left),
//! `n_namesz == 4` with name `"GNU\0"`, and `1 ..= 20` descriptor bytes
//! (others are stepped over), zero-padded to 20.
//!
//! "`object` accepts" means: the header parses (magic, class, data, and
//! `EI_VERSION` = 1), `e_phoff != 0`, `e_phnum` is not `PN_XNUM`,
//! `e_phentsize` is the class's, the whole table is in the file, and every
//! considered `PT_NOTE` segment is in the file, has `p_align <= 4` (with 8
//! `object` steps by 8, the kernel always by 4) and iterates without
//! error. Outside that the two parsers read different things and only
//! the no-panic and well-formedness checks apply.

use kstackmap::{parse_build_id, parse_note_buf, BuildIdNote};

/// The kernel's cap on program headers read (`MAX_PHDR_CNT` in lib/buildid.c).
const MAX_PHDR_CNT: u16 = 256;
use object::elf::{FileHeader32, FileHeader64, NT_GNU_BUILD_ID, PT_NOTE};
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

/// The second parser's answer: `Ok(build id)` when `object` accepts the
/// file (see the module docs), `Err(why not)` otherwise.
pub fn object_build_id(data: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    match data.get(4) {
        Some(1) => walk::<FileHeader32<Endianness>>(data),
        Some(2) => walk::<FileHeader64<Endianness>>(data),
        _ => Err("class"),
    }
}

fn walk<Elf: FileHeader<Endian = Endianness>>(
    data: &[u8],
) -> Result<Option<Vec<u8>>, &'static str> {
    let header = Elf::parse(data).map_err(|_| "header")?;
    let e = header.endian().map_err(|_| "data")?;
    if header.e_phnum(e) == object::elf::PN_XNUM {
        return Err("PN_XNUM");
    }
    if header.e_phoff(e).into() == 0 {
        // object: "no program headers"; the kernel reads them at 0.
        return Err("e_phoff 0");
    }
    let phdrs = header.program_headers(e, data).map_err(|_| "phdrs")?;
    let e_type = header.e_type(e);
    let mut found = None;
    for ph in phdrs.iter().take(MAX_PHDR_CNT as usize) {
        if ph.p_type(e) != PT_NOTE {
            continue;
        }
        if ph.p_align(e).into() > 4 {
            return Err("p_align");
        }
        let filesz: u64 = ph.p_filesz(e).into();
        let mut notes = ph
            .notes(e, data)
            .map_err(|_| "segment")?
            .ok_or("not a note segment")?;
        // Offset of the current note in the segment; None once the kernel
        // has left the segment.
        let mut off = Some(0u64);
        while let Some(note) = notes.next().map_err(|_| "note")? {
            let Some(at) = off else { continue };
            if filesz - at <= 16 {
                off = None;
                continue;
            }
            let a4 = |x: u32| (u64::from(x) + 3) & !3;
            let end = at + 12 + a4(note.n_namesz(e)) + a4(note.n_descsz(e));
            if end > filesz {
                off = None;
                continue;
            }
            let desc = note.desc();
            if found.is_none()
                && note.n_type(e) == NT_GNU_BUILD_ID
                && note.name_bytes() == b"GNU\0"
                && (1..=20).contains(&desc.len())
            {
                found = Some(desc.to_vec());
            }
            off = Some(end);
        }
    }
    let exec_or_dyn = matches!(e_type, object::elf::ET_EXEC | object::elf::ET_DYN);
    Ok(found.filter(|_| exec_or_dyn))
}

/// The invariants of a returned build id.
fn check_note(what: &str, id: &BuildIdNote) {
    let n = id.size();
    assert!((1..=20).contains(&n), "{what}: size {n}");
    assert_eq!(id.as_bytes().len(), n, "{what}: as_bytes");
    let padded = id.padded();
    assert_eq!(&padded[..n], id.as_bytes(), "{what}: padded head");
    assert!(padded[n..].iter().all(|&b| b == 0), "{what}: padding");
    assert_eq!(BuildIdNote::new(id.as_bytes()).as_ref(), Some(id));
}

/// Runs the check on one input; panics on a disagreement.
pub fn run(data: &[u8]) {
    let ours = parse_build_id(data);
    if let Some(id) = &ours {
        check_note("parse_build_id", id);
    }
    if let Some(id) = parse_note_buf(data) {
        check_note("parse_note_buf", &id);
    }
    if let Ok(theirs) = object_build_id(data) {
        assert_eq!(
            ours.as_ref().map(|id| id.as_bytes()),
            theirs.as_deref(),
            "parse_build_id (left) != object (right)"
        );
    }
}
