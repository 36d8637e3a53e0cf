//! Build ids of real binaries and `ProcMaps` against the running process.
//!
//! - `elf_note::parse_build_id` against `readelf -n` and the `object`
//!   crate, on this test binary, the libc it runs on and `/bin/ls`;
//! - every truncation and many corruptions of a real ELF file: no panic,
//!   and only `None` or the true id;
//! - `ProcMaps::for_pid` on this process: a function of this binary and
//!   one of libc resolve to their files' build ids and to file offsets
//!   inside an executable `PT_LOAD` segment, at their symbols;
//! - a deleted executable still resolves through `/proc/PID/map_files`.
#![cfg(feature = "std")]

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kstackmap::{parse_build_id, BuildIdNote};
use kstackmap::{ProcMaps, VmaResolver};
use object::elf::{PF_X, PT_LOAD};
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Endianness, Object, ObjectSymbol};

/// Writes to the process's stderr directly, past libtest's capture, so
/// that a skipped check shows even when its test passes.
macro_rules! loud {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

extern "C" {
    // Only its address is taken (never called): a function inside libc.
    fn getpid() -> i32;
}

/// A function of this binary whose address the resolver must map back.
#[inline(never)]
fn resolve_me_kstackmap(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_mul(3)
}

fn exe() -> PathBuf {
    std::env::current_exe().expect("current_exe")
}

/// The libc this process runs on, from its maps.
fn libc_path() -> PathBuf {
    let maps = ProcMaps::parse_text(&fs::read_to_string("/proc/self/maps").unwrap()).unwrap();
    maps.iter()
        .filter_map(|m| m.file_path())
        .find(|p| {
            let name = Path::new(p).file_name().unwrap().to_string_lossy();
            name.starts_with("libc.so") || name.starts_with("libc-")
        })
        .map(PathBuf::from)
        .expect("libc in /proc/self/maps")
}

/// What `readelf -n` prints as the build id; `Err` if readelf cannot run.
fn readelf_build_id(path: &Path) -> Result<Option<String>, String> {
    let out = Command::new("readelf")
        .arg("-n")
        .arg(path)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| format!("cannot run readelf: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "readelf -n {} failed: {:?}",
            path.display(),
            out.status
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string)))
}

fn object_build_id(data: &[u8]) -> Option<Vec<u8>> {
    let file = object::File::parse(data).expect("object parses it");
    file.build_id()
        .expect("object reads notes")
        .map(<[u8]>::to_vec)
}

fn real_binaries() -> Vec<PathBuf> {
    vec![exe(), libc_path(), PathBuf::from("/bin/ls")]
}

#[test]
fn real_binaries_match_readelf_and_object() {
    let mut compared_with_readelf = 0;
    for path in real_binaries() {
        let data = fs::read(&path).unwrap();
        let ours = parse_build_id(&data);
        let id = ours.unwrap_or_else(|| panic!("{}: no build id found", path.display()));
        assert_eq!(
            object_build_id(&data).as_deref(),
            Some(id.as_bytes()),
            "{}: object disagrees",
            path.display()
        );
        match readelf_build_id(&path) {
            Ok(hex) => {
                assert_eq!(
                    hex,
                    Some(id.to_string()),
                    "{}: readelf disagrees",
                    path.display()
                );
                compared_with_readelf += 1;
            }
            Err(e) => loud!(
                "\n!!!!! SKIPPED the readelf comparison for {}: {e}\n!!!!! \
                 install binutils (apt-get install -y binutils) to run it\n",
                path.display()
            ),
        }
    }
    eprintln!("compared {compared_with_readelf} binaries with readelf -n");
}

/// Every truncation of the first 16 KiB, then a few thousand corruptions
/// of it: never a panic, and only `None` or the true id. Growing prefixes
/// only ever turn `None` into the id (more readable bytes can only help).
#[test]
fn truncated_and_corrupt_real_elf() {
    let data = fs::read("/bin/ls").unwrap();
    let full = parse_build_id(&data).expect("/bin/ls has a build id");
    let head = &data[..data.len().min(16 * 1024)];
    let mut found_at = None;
    for len in 0..=head.len() {
        match parse_build_id(&head[..len]) {
            None => assert!(found_at.is_none(), "lost the id at length {len}"),
            Some(id) => {
                assert_eq!(id, full, "length {len}");
                found_at.get_or_insert(len);
            }
        }
    }
    let found_at = found_at.expect("the notes lie in the first 16 KiB");
    eprintln!("/bin/ls: build id found from a {found_at}-byte prefix on");

    // Deterministic corruption: flip, zero or max out bytes in the part
    // the parser reads, including multi-byte fields.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut work = head[..found_at].to_vec();
    for _ in 0..5000 {
        work.copy_from_slice(&head[..found_at]);
        for _ in 0..(next() % 4 + 1) {
            let at = (next() % found_at as u64) as usize;
            let width = [1, 2, 4, 8][(next() % 4) as usize].min(found_at - at);
            let fill = match next() % 3 {
                0 => 0xff,
                1 => 0,
                _ => next() as u8,
            };
            work[at..at + width].fill(fill);
        }
        let _ = parse_build_id(&work);
    }
}

/// Hostile variations of a real 64-bit header.
#[test]
fn hostile_headers_on_a_real_elf() {
    let data = fs::read("/bin/ls").unwrap();
    let file = ElfFile64::<Endianness>::parse(&*data).unwrap();
    let phnum = file.elf_program_headers().len();
    let patch = |at: usize, bytes: &[u8]| {
        let mut v = data.clone();
        v[at..at + bytes.len()].copy_from_slice(bytes);
        v
    };
    // e_phoff far away or wrapping.
    for phoff in [u64::MAX, u64::MAX - 100, 1 << 63, data.len() as u64] {
        assert_eq!(parse_build_id(&patch(32, &phoff.to_le_bytes())), None);
    }
    // e_phnum huge: clamped to 256; the note headers still come first in
    // /bin/ls's table, so the id is found before running off the end.
    let huge = parse_build_id(&patch(56, &0xffffu16.to_le_bytes()));
    assert!(huge.is_some() && phnum < 256);
    // Every PT_NOTE made unreadable: p_offset past the end of the file.
    let mut v = data.clone();
    for i in 0..phnum {
        let at = 64 + i * 56;
        if u32::from_le_bytes(v[at..at + 4].try_into().unwrap()) == 4 {
            v[at + 8..at + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        }
    }
    assert_eq!(parse_build_id(&v), None);
    // Not an executable or shared object.
    assert_eq!(parse_build_id(&patch(16, &1u16.to_le_bytes())), None);
}

/// The file offset lies in an executable PT_LOAD segment of `data`, and
/// the address it maps to lies in the symbol `name_part` names.
fn check_offset(data: &[u8], off: u64, name_part: &str, dynamic: bool) {
    let file = ElfFile64::<Endianness>::parse(data).unwrap();
    let e = file.endian();
    let load = file
        .elf_program_headers()
        .iter()
        .find(|ph| {
            ph.p_type(e) == PT_LOAD
                && ph.p_flags(e).0 & PF_X.0 != 0
                && ph.p_offset(e) <= off
                && off < ph.p_offset(e) + ph.p_filesz(e)
        })
        .unwrap_or_else(|| panic!("offset {off:#x} is in no executable PT_LOAD"));
    let vaddr = load.p_vaddr(e) + (off - load.p_offset(e));
    let mut syms: Box<dyn Iterator<Item = _>> = if dynamic {
        Box::new(file.dynamic_symbols())
    } else {
        Box::new(file.symbols())
    };
    let sym = syms
        .find(|s| s.name().is_ok_and(|n| n.contains(name_part)) && s.size() > 0)
        .unwrap_or_else(|| panic!("no symbol {name_part}"));
    assert!(
        sym.address() <= vaddr && vaddr < sym.address() + sym.size(),
        "{name_part}: vaddr {vaddr:#x} not in [{:#x}, +{:#x})",
        sym.address(),
        sym.size()
    );
}

#[test]
fn for_pid_resolves_own_function_and_libc() {
    let maps = ProcMaps::for_pid(std::process::id()).unwrap();
    assert!(maps.can_access());
    let cases = [
        (
            resolve_me_kstackmap as *const () as usize as u64,
            exe(),
            "resolve_me_kstackmap",
            false,
        ),
        (
            getpid as *const () as usize as u64,
            libc_path(),
            "getpid",
            true,
        ),
    ];
    for (ip, path, sym, dynamic) in cases {
        let vma = maps.find_vma(ip).expect("a mapping");
        assert!(vma.start <= ip && ip < vma.end, "{sym}: not inside {vma:?}");
        let i = maps.find_vma_index(ip).unwrap();
        let m = &maps.mappings()[i];
        assert!(m.perms.exec, "{sym}: {m}");
        assert_eq!(
            fs::canonicalize(m.file_path().unwrap()).unwrap(),
            fs::canonicalize(&path).unwrap()
        );
        let data = fs::read(&path).unwrap();
        let want = parse_build_id(&data).expect("build id");
        assert_eq!(vma.build_id, Some(want.padded()), "{sym}: build id");
        assert_eq!(maps.build_id(i), Some(&want));
        let off = vma.file_offset.wrapping_add(ip).wrapping_sub(vma.start);
        check_offset(&data, off, sym, dynamic);
    }
    // Every mapping of one file carries the same id; pseudo-paths none.
    for (i, m) in maps.iter().enumerate() {
        if m.path.starts_with('[') || m.path.is_empty() {
            assert_eq!(maps.build_id(i), None, "{m}");
        }
        if m.file_path() == Some(exe().to_str().unwrap()) {
            assert!(maps.build_id(i).is_some(), "{m}");
        }
    }
    // The vdso is a special mapping: no vm_file, no build id (kernel).
    let vdso = maps.iter().position(|m| m.path == "[vdso]");
    if let Some(i) = vdso {
        let vma = maps.find_vma(maps.mappings()[i].start).unwrap();
        assert_eq!(vma.build_id, None);
    }
}

#[test]
fn real_maps_round_trip_and_parse_agrees_with_for_pid() {
    let text = fs::read_to_string("/proc/self/maps").unwrap();
    for line in text.lines() {
        let m: kstackmap::Mapping = line.parse().unwrap();
        assert_eq!(m.to_string(), line);
    }
    let by_path = ProcMaps::parse(&text).unwrap();
    let by_pid = ProcMaps::for_pid(std::process::id()).unwrap();
    let mut with_id = 0;
    for (i, m) in by_path.iter().enumerate() {
        let j = by_pid.iter().position(|n| n == m);
        if let (Some(j), false) = (j, m.is_deleted()) {
            assert_eq!(by_path.build_id(i), by_pid.build_id(j), "{m}");
            with_id += usize::from(by_path.build_id(i).is_some());
        }
    }
    assert!(with_id >= 2, "exe and libc at least");
}

#[test]
fn for_pid_errors_and_kernel_threads() {
    let err = ProcMaps::for_pid(u32::MAX).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("/proc/4294967295/maps"), "{err}");
    // kthreadd (pid 2) has no mm: no mappings, not an error.
    if let Ok(maps) = ProcMaps::for_pid(2) {
        if fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd") {
            assert!(maps.is_empty());
        }
    }
}

/// A running executable whose file was unlinked: the maps line says
/// `(deleted)`; `for_pid` still finds its build id through map_files (as
/// the kernel would, through vm_file), `parse` gives it none.
#[test]
fn deleted_executable_resolves_through_map_files() {
    // map_files needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE (root here
    // and in CI); without it a deleted file has no build id, by design.
    let own = ProcMaps::parse_text(&fs::read_to_string("/proc/self/maps").unwrap()).unwrap();
    let first = own.iter().find(|m| m.file_path().is_some()).unwrap();
    let link = format!("/proc/self/map_files/{:x}-{:x}", first.start, first.end);
    if let Err(e) = fs::File::open(&link) {
        loud!("\n!!!!! SKIPPED the deleted-executable test: cannot open {link}: {e}\n");
        return;
    }
    let src = Path::new("/bin/sleep");
    let want = parse_build_id(&fs::read(src).unwrap()).expect("sleep has a build id");
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("deleted-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("sleep copy");
    fs::copy(src, &copy).unwrap();
    let mut child = Command::new(&copy)
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let maps_path = format!("/proc/{}/maps", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&maps_path)
        .unwrap_or_default()
        .contains("sleep copy")
    {
        assert!(Instant::now() < deadline, "child never mapped its exe");
        std::thread::sleep(Duration::from_millis(10));
    }
    fs::remove_file(&copy).unwrap();

    let check = || -> Result<(), String> {
        let maps = ProcMaps::for_pid(child.id()).map_err(|e| e.to_string())?;
        let want_path = format!("{} (deleted)", copy.display());
        let ids: Vec<Option<&BuildIdNote>> = maps
            .iter()
            .enumerate()
            .filter(|(_, m)| m.path == want_path)
            .map(|(i, _)| maps.build_id(i))
            .collect();
        if ids.is_empty() {
            return Err(format!("no {want_path:?} line in\n{maps}"));
        }
        if !ids.iter().all(|id| *id == Some(&want)) {
            return Err(format!("deleted exe ids {ids:?}, want {want}"));
        }
        let text = fs::read_to_string(&maps_path).map_err(|e| e.to_string())?;
        let by_path = ProcMaps::parse(&text).map_err(|e| e.to_string())?;
        for (i, m) in by_path.iter().enumerate() {
            if m.is_deleted() && by_path.build_id(i).is_some() {
                return Err(format!("parse() read a deleted path: {m}"));
            }
        }
        Ok(())
    };
    let result = check();
    let _ = child.kill();
    let _ = child.wait();
    let _ = fs::remove_dir_all(&dir);
    result.unwrap();
}

/// Runs `cmd`; `Err` with what went wrong if it could not run or failed.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// Real linker output of both ELF classes and several build id styles
/// (`--build-id=sha1|md5|0xHEX`), built with binutils' `as` and `ld`
/// at test time, against `readelf -n`. Where the kernel finds no build id
/// we must find none either, whatever readelf shows: ids longer than 20
/// bytes, and ids whose length is not a multiple of 4 in a segment that
/// `ld` leaves unpadded (`p_filesz` = 12 + 4 + n), because the kernel
/// requires the 4-aligned end of the note to lie inside the segment.
/// (Checked on Linux 6.18 with `shared/reference/kernel-oracle.c` built
/// with `-Wl,--build-id=0x0102` and `.note.ABI-tag` removed, so that the
/// 18-byte note ends its segment: the kernel reports status IP; with the
/// ABI tag after it, padding keeps it inside and the kernel reports
/// `0102`, as `parse_build_id` does; readelf shows no id in either.)
#[test]
fn linker_made_binaries_of_both_classes() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ld-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let src = dir.join("a.s");
    fs::write(&src, ".globl _start\n_start:\n  nop\n").unwrap();
    let long21 = format!("0x{}", "ab".repeat(21));
    // (as flag, ld emulation, --build-id style, expected length or None)
    let cases: [(&str, &str, &str, Option<usize>); 8] = [
        ("--32", "elf_i386", "sha1", Some(20)),
        ("--32", "elf_i386", "md5", Some(16)),
        ("--x32", "elf32_x86_64", "0x01020304", Some(4)),
        ("--x32", "elf32_x86_64", "0x0102", None),
        ("--64", "elf_x86_64", "sha1", Some(20)),
        ("--64", "elf_x86_64", "0x0102030405060708", Some(8)),
        ("--64", "elf_x86_64", "0x5a", None),
        ("--64", "elf_x86_64", &long21, None),
    ];
    let mut checked = 0;
    for (i, (as_flag, emul, style, want_len)) in cases.iter().enumerate() {
        let obj = dir.join(format!("a{i}.o"));
        let exe = dir.join(format!("a{i}"));
        let built = run(Command::new("as")
            .arg(as_flag)
            .arg("-o")
            .arg(&obj)
            .arg(&src))
        .and_then(|()| {
            run(Command::new("ld")
                .args(["-m", emul, &format!("--build-id={style}"), "-o"])
                .arg(&exe)
                .arg(&obj))
        });
        if let Err(e) = built {
            loud!("\n!!!!! SKIPPED linker case {emul} {style}: {e}\n!!!!! install binutils to run it\n");
            continue;
        }
        let ours = parse_build_id(&fs::read(&exe).unwrap());
        assert_eq!(ours.map(|id| id.size()), *want_len, "{emul} {style}");
        // The relocatable object has the note too, but is not ET_EXEC/DYN.
        let relocatable = dir.join(format!("a{i}.r.o"));
        if run(Command::new("ld")
            .args(["-m", emul, "-r", &format!("--build-id={style}"), "-o"])
            .arg(&relocatable)
            .arg(&obj))
        .is_ok()
        {
            assert_eq!(parse_build_id(&fs::read(&relocatable).unwrap()), None);
        }
        match readelf_build_id(&exe) {
            Ok(hex) if want_len.is_some() => assert_eq!(hex, ours.map(|id| id.to_string())),
            Ok(hex) => eprintln!("{emul} {style}: readelf shows {hex:?}, the kernel nothing"),
            Err(e) => loud!("\n!!!!! SKIPPED the readelf comparison for {emul} {style}: {e}\n"),
        }
        checked += 1;
    }
    let _ = fs::remove_dir_all(&dir);
    eprintln!("checked {checked} linker-made binaries");
}

/// Every ELF executable and shared object in the system's binary and
/// library folders (files up to 16 MiB): `parse_build_id` (program
/// headers, kernel rules) agrees with `object` (section headers), except
/// where the build id section lies outside every `PT_NOTE` segment — as
/// in Go binaries, whose `PT_NOTE` covers only `.note.go.buildid`. The
/// kernel reads segments only, so it finds no id there, and nor do we.
#[test]
fn system_binaries_agree_with_object() {
    use object::ObjectSection;
    let (mut files, mut with_id, mut outside_pt_note) = (0, 0, 0);
    for dir in [
        "/usr/bin",
        "/usr/sbin",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/libexec",
    ] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let Ok(md) = fs::metadata(&path) else {
                continue;
            };
            if !md.is_file() || md.len() > 16 << 20 {
                continue;
            }
            let Ok(data) = fs::read(&path) else {
                continue;
            };
            let Ok(file) = ElfFile64::<Endianness>::parse(&*data) else {
                continue;
            };
            if !matches!(
                file.kind(),
                object::ObjectKind::Executable | object::ObjectKind::Dynamic
            ) {
                continue;
            }
            files += 1;
            let ours = parse_build_id(&data);
            let theirs = file.build_id().ok().flatten();
            with_id += usize::from(ours.is_some());
            if ours.as_ref().map(BuildIdNote::as_bytes) == theirs {
                continue;
            }
            // The only accepted difference: no PT_NOTE covers the section.
            assert!(ours.is_none(), "{}: {ours:?} vs {theirs:?}", path.display());
            let section = file
                .section_by_name(".note.gnu.build-id")
                .unwrap_or_else(|| panic!("{}: object's id has no section", path.display()));
            let (start, size) = section.file_range().unwrap();
            let e = file.endian();
            let covered = file.elf_program_headers().iter().any(|ph| {
                ph.p_type(e) == object::elf::PT_NOTE
                    && ph.p_offset(e) <= start
                    && start + size <= ph.p_offset(e) + ph.p_filesz(e)
            });
            assert!(
                !covered,
                "{}: id in a PT_NOTE but not found",
                path.display()
            );
            outside_pt_note += 1;
        }
    }
    eprintln!("{files} system ELF files: {with_id} with a build id, {outside_pt_note} with it outside PT_NOTE");
    assert!(files > 0 && with_id > 0);
}

/// A build-id map fed a chain of this process's own addresses (a function
/// of the test binary, one in libc, and an address in no file) stores
/// VALID frames with the build id and file offset `ProcMaps` gives for the
/// binary and libc, and status IP for the rest.
#[test]
fn build_id_map_resolves_own_frames() {
    use kstackmap::uapi::{BPF_F_STACK_BUILD_ID, BPF_F_USER_STACK};
    use kstackmap::{BuildIdStatus, MapAttr, StackBuildId, StackMap};

    let maps = ProcMaps::for_pid(std::process::id()).unwrap();
    let in_exe = resolve_me_kstackmap as *const () as usize as u64;
    let in_libc = getpid as *const () as usize as u64;
    let stack_var = 0u8;
    let on_stack = &stack_var as *const u8 as u64; // [stack]: no file, no id
    let chain = [in_exe, in_libc, in_exe + 1, on_stack];
    let attr = MapAttr {
        max_entries: 4,
        value_size: 32 * 8,
        map_flags: BPF_F_STACK_BUILD_ID,
        ..MapAttr::default()
    };
    let map = StackMap::new(&attr).unwrap();
    let id = map
        .get_stackid_resolved(0, &chain, BPF_F_USER_STACK, &maps)
        .unwrap();
    let mut out = [StackBuildId::default(); 8];
    let frames = map.lookup_build_ids(id, &mut out).unwrap();
    assert_eq!(frames.len(), 4);
    for (f, &ip) in frames.iter().zip(&chain).take(3) {
        let vma = maps.find_vma(ip).unwrap();
        assert_eq!(f.status(), Ok(BuildIdStatus::Valid), "{ip:#x}");
        assert_eq!(Some(f.build_id), vma.build_id);
        assert_eq!(f.offset(), Some(vma.file_offset + ip - vma.start));
    }
    assert_eq!(frames[3], StackBuildId::from_ip(on_stack));
    // Kernel stacks (no BPF_F_USER_STACK) are never resolved. The same
    // ips hash to the same id, whose bucket holds other frames: EEXIST,
    // as in the kernel; a fresh map stores them.
    assert_eq!(
        map.get_stackid_resolved(0, &chain, 0, &maps),
        Err(kstackmap::Error::Exist)
    );
    let map = StackMap::new(&attr).unwrap();
    let kid = map.get_stackid_resolved(0, &chain, 0, &maps).unwrap();
    let frames = map.lookup_build_ids(kid, &mut out).unwrap();
    assert!(frames
        .iter()
        .zip(&chain)
        .all(|(f, &ip)| *f == StackBuildId::from_ip(ip)));
}

/// A temp path unique to this process and `name`.
fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("kstackmap-{}-{name}", std::process::id()))
}

/// An ELF64 header and one PT_NOTE program header claiming `0xffff_0000`
/// bytes of notes at 8 KiB, in a 4 GiB file of holes: 358 million empty
/// 12-byte notes to walk, one read each for a reader that reads per note.
fn huge_sparse_elf(path: &Path) {
    let mut h = vec![0u8; 64 + 56];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // ELFCLASS64
    h[5] = if cfg!(target_endian = "big") { 2 } else { 1 };
    h[6] = 1;
    h[16..18].copy_from_slice(&3u16.to_ne_bytes()); // ET_DYN
    h[32..40].copy_from_slice(&64u64.to_ne_bytes()); // e_phoff
    h[52..54].copy_from_slice(&64u16.to_ne_bytes());
    h[54..56].copy_from_slice(&56u16.to_ne_bytes());
    h[56..58].copy_from_slice(&1u16.to_ne_bytes());
    let ph = &mut h[64..];
    ph[..4].copy_from_slice(&4u32.to_ne_bytes()); // PT_NOTE
    ph[8..16].copy_from_slice(&8192u64.to_ne_bytes());
    ph[32..40].copy_from_slice(&0xffff_0000u64.to_ne_bytes());
    fs::write(path, &h).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(1 << 32)
        .unwrap();
}

/// A mapped file with a 4 GiB note segment of empty notes: `ProcMaps`
/// gives it no build id after a bounded number of reads (the unit test
/// `huge_sparse_note_segment_reads_are_bounded` counts them: 16) instead
/// of walking every note. The old reader made one read per note here
/// (358 million) and was still at it after 3 minutes; a parse that has
/// not returned after 60 s fails the test (a hang detector, generous
/// enough for any machine: the bounded walk takes milliseconds).
#[test]
fn huge_sparse_note_segment_ends_the_search() {
    let path = temp_path("sparse.so");
    huge_sparse_elf(&path);
    let text = format!(
        "7f0000000000-7f0000001000 r-xp 00000000 00:00 0 {}\n",
        path.display()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    // Detached: if it hangs, it dies with the test process.
    std::thread::spawn(move || {
        let _ = tx.send(ProcMaps::parse(&text));
    });
    let maps = rx.recv_timeout(Duration::from_secs(60));
    let took = start.elapsed();
    fs::remove_file(&path).unwrap();
    let maps = maps
        .expect("ProcMaps::parse walked the sparse note segment for over 60 s")
        .unwrap();
    assert_eq!(maps.len(), 1);
    assert_eq!(maps.build_id(0), None);
    loud!("huge sparse note segment: no build id, in {took:?}");
}

/// A profiled process controls the paths in its maps: it can swap a
/// checked regular file for a FIFO before the resolver opens it. The
/// resolver must never block in that open (no writer ever comes). Here a
/// thread swaps a regular file and a FIFO back and forth
/// (`renameat2(RENAME_EXCHANGE)`) while another parses a maps line naming
/// the path, until both have run side by side for 50,000 swaps. With a
/// blocking open (the old code) this hangs; the main thread then finds the parser stuck (after a generous
/// wait: this detects a hang, it does not time anything), frees it by
/// opening the FIFO's write end, and fails.
#[test]
fn fifo_swapped_in_never_blocks() {
    use std::os::unix::ffi::OsStrExt;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use std::sync::{mpsc, Arc};

    let (file, fifo) = (temp_path("swap.so"), temp_path("swap.fifo"));
    fs::write(&file, b"\x7fELF not really").unwrap();
    let cpath = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let (cfile, cfifo) = (cpath(&file), cpath(&fifo));
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(cfifo.as_ptr(), 0o600) }, 0);
    let text = format!(
        "7f0000000000-7f0000001000 r-xp 00000000 00:00 0 {}\n",
        file.display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (stop, swaps, cfile, cfifo) =
            (stop.clone(), swaps.clone(), cfile.clone(), cfifo.clone());
        std::thread::spawn(move || {
            while !stop.load(SeqCst) {
                // SAFETY: two valid NUL-terminated paths.
                let r = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        cfile.as_ptr(),
                        libc::AT_FDCWD,
                        cfifo.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                assert_eq!(r, 0, "renameat2: {}", std::io::Error::last_os_error());
                swaps.fetch_add(1, SeqCst);
            }
        })
    };
    let (done_tx, done_rx) = mpsc::channel();
    let parser = {
        let swaps = swaps.clone();
        std::thread::spawn(move || {
            let mut parses = 0u64;
            // Until both sides have run a while side by side.
            while parses < 2_000 || swaps.load(SeqCst) < 50_000 {
                let maps = ProcMaps::parse(&text).unwrap();
                assert_eq!(maps.build_id(0), None);
                parses += 1;
            }
            let _ = done_tx.send(parses);
        })
    };
    let parses = done_rx.recv_timeout(Duration::from_secs(120));
    let finished = parses.is_ok();
    stop.store(true, SeqCst);
    swapper.join().unwrap();
    if !finished {
        // The parser waits in open() for a writer of the FIFO (at one of
        // the two names): be that writer, so the test can end.
        for p in [&cfile, &cfifo] {
            // SAFETY: a valid NUL-terminated path; the fd is closed below.
            let fd = unsafe { libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK) };
            if fd >= 0 {
                // SAFETY: `fd` was opened above.
                unsafe { libc::close(fd) };
            }
        }
    }
    parser.join().unwrap();
    fs::remove_file(&file).unwrap();
    fs::remove_file(&fifo).unwrap();
    assert!(
        finished,
        "ProcMaps blocked opening a FIFO swapped in for a checked file"
    );
    loud!(
        "fifo swap: {} parses, {} swaps, never blocked",
        parses.unwrap_or(0),
        swaps.load(SeqCst)
    );
}
