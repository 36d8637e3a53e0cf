//! After recording: every stack id is looked up once, marker words are
//! stripped, and the addresses are symbolized with blazesym:
//! - kernel frames from kallsyms;
//! - user frames from the ELF file each address was mapped from, by file
//!   offset (so processes that have exited still resolve), with debug
//!   symbols when there are some (DWARF in the file, or a separate debug
//!   file found by `.gnu_debuglink` or build id under `/usr/lib/debug`, as
//!   Debian's `-dbg`/`-dbgsym` packages install them), and the functions
//!   inlined at the address as frames of their own;
//! - addresses in anonymous memory (JIT code) from the process's perf map
//!   file, `/tmp/perf-PID.map`, when the runtime wrote one;
//! - `[vdso]` frames from a copy of our own vDSO (the same image in every
//!   64-bit process).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use blazesym::MaybeDefault;

use kstackmap::BuildId;

use crate::maps::{is_anon, Located};
use crate::perfmap::PerfMap;
use crate::record::{Key, Part, Profile};
use crate::vdso::VdsoFile;

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A user-space function.
    User,
    /// A kernel function.
    Kernel,
    /// A stand-in: a stack part the store could not keep.
    Missed,
}

/// One frame of a symbolized stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// The function, or a stand-in (`[libfoo.so]` when the file has no
    /// symbol there, `[unknown]` when no file is mapped there).
    pub name: String,
    pub kind: Kind,
    /// The sampled address (0 for stand-ins).
    pub addr: u64,
    /// The file the address was mapped from, and its offset in it.
    pub file: Option<(Arc<Path>, u64)>,
    /// Source file and line, when debug info has them.
    pub source: Option<(Arc<str>, u32)>,
    /// This function was inlined into the next frame toward the root (the
    /// two share `addr`).
    pub inlined: bool,
}

impl Frame {
    fn named(name: impl Into<String>, kind: Kind) -> Frame {
        Frame {
            name: name.into(),
            kind,
            addr: 0,
            file: None,
            source: None,
            inlined: false,
        }
    }
}

/// One sample group: who, its frames root first (user, then kernel), and
/// how many samples had it.
#[derive(Clone, Debug)]
pub struct Stack {
    pub pid: u32,
    pub tid: u32,
    /// Thread and process names.
    pub comm: Arc<str>,
    pub pcomm: Arc<str>,
    pub frames: Vec<Frame>,
    pub count: u64,
}

/// How the distinct stored user frames of a build-id map came out.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildIdStats {
    /// Status VALID: a build id and a file offset.
    pub valid: u64,
    /// Status IP: no file with a build id behind the address.
    pub ip_only: u64,
}

/// A user frame, located in a file (or not).
#[derive(Clone, Debug)]
enum UFrame {
    At(u64, Located),
    /// A build id none of the files seen has.
    UnknownBuildId(BuildId),
    Nowhere(u64),
}

/// A stored user stack as frames, innermost first, markers removed, and
/// whether it was cut.
///
/// A return address points into code. A frame (other than the innermost)
/// whose address is in none of the process's executable mappings is not
/// one: the kernel's frame-pointer walk left the stack there (code built
/// without frame pointers keeps other data in `rbp`), and every frame
/// beyond it is as arbitrary (0, small numbers, heap pointers). The stack
/// is cut before it instead of showing a run of `[unknown]` frames. JIT
/// code is in anonymous executable mappings, which count as code.
fn user_frames(
    profile: &Profile,
    key: &Key,
    id: u32,
    stats: &mut BuildIdStats,
) -> Option<(Vec<UFrame>, bool)> {
    let mut frames = user_frames_all(profile, key, id, stats)?;
    let known = !profile.maps.mappings(key.pid, key.gen).is_empty();
    let cut = known
        && frames
            .iter()
            .skip(1)
            .position(|f| matches!(f, UFrame::Nowhere(_)))
            .map(|i| frames.truncate(i + 1))
            .is_some();
    Some((frames, cut))
}

/// A stored user stack as frames, innermost first, markers removed. Ips
/// maps are located through the process's mapping snapshot; build-id maps
/// carry `(build id, file offset)` and only need the file with that id.
fn user_frames_all(
    profile: &Profile,
    key: &Key,
    id: u32,
    stats: &mut BuildIdStats,
) -> Option<Vec<UFrame>> {
    let locate = |d: usize, ip: u64| {
        profile
            .maps
            .locate(key.pid, key.gen, lookup_addr(d, ip))
            .map_or(UFrame::Nowhere(ip), |l| UFrame::At(ip, l))
    };
    if !profile.store.build_id() {
        let ips = profile.store.ips(true, id)?;
        return Some(
            ips.iter()
                .enumerate()
                .map(|(d, &ip)| locate(d, ip))
                .collect(),
        );
    }
    let frames = profile.store.build_ids(id)?;
    Some(
        frames
            .iter()
            .enumerate()
            .map(|(d, f)| match (f.offset(), f.ip()) {
                (Some(off), _) => {
                    stats.valid += 1;
                    match profile.build_ids.path_of(&f.build_id) {
                        Some(path) => UFrame::At(
                            0,
                            Located {
                                path,
                                file_offset: lookup_addr(d, off),
                            },
                        ),
                        None => UFrame::UnknownBuildId(f.build_id),
                    }
                }
                (None, Some(ip)) => {
                    stats.ip_only += 1;
                    locate(d, ip)
                }
                (None, None) => UFrame::Nowhere(0),
            })
            .collect(),
    )
}

/// Return addresses point after the call; look up `ip - 1` for every frame
/// but the innermost, so a call at a function's very end stays in it.
fn lookup_addr(depth: usize, ip: u64) -> u64 {
    if depth == 0 {
        ip
    } else {
        ip.saturating_sub(1)
    }
}

fn clean(name: &str) -> String {
    name.replace(';', ":")
}

/// A symbolized address: the function and the ones inlined into it at
/// that address (outermost first), each with its source line.
type Names = Vec<(String, Option<(Arc<str>, u32)>)>;

fn names_of(s: &Symbolized<'_>) -> Option<Names> {
    let Symbolized::Sym(sym) = s else {
        return None;
    };
    let line = |ci: Option<&blazesym::symbolize::CodeInfo<'_>>| {
        ci.and_then(|ci| {
            let file = ci.to_path();
            Some((Arc::from(file.to_string_lossy().as_ref()), ci.line?))
        })
    };
    // The line of a function is where the next inlined call is (or the
    // address itself, for the innermost).
    let mut out: Names = Vec::with_capacity(1 + sym.inlined.len());
    out.push((clean(&sym.name), None));
    for f in sym.inlined.iter() {
        let here = line(f.code_info.as_ref());
        if let Some(last) = out.last_mut() {
            last.1 = here;
        }
        out.push((clean(&f.name), None));
    }
    if let Some(last) = out.last_mut() {
        last.1 = line(sym.code_info.as_deref());
    }
    Some(out)
}

fn file_label(path: &Path) -> String {
    format!(
        "[{}]",
        path.file_name().map_or_else(
            || path.display().to_string(),
            |f| f.to_string_lossy().into_owned()
        )
    )
}

/// Symbolization results, and what came out of it.
pub struct Resolved {
    pub stacks: Vec<Stack>,
    pub build_id: BuildIdStats,
    /// User stacks one or two frames deep, by the file of their innermost
    /// frame (samples), and all samples with a user stack: the signature
    /// of code built without frame pointers.
    pub shallow: HashMap<Arc<Path>, u64>,
    pub shallow_samples: u64,
    pub user_samples: u64,
    /// Samples whose user stack was cut where the frame-pointer walk left
    /// the code (see [`user_frames`]).
    pub cut_samples: u64,
}

/// Symbolizes everything in `profile`.
pub fn resolve(profile: &Profile) -> Resolved {
    let mut stats = BuildIdStats::default();
    let symbolizer = Symbolizer::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .build();

    let mut kstacks: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut ustacks: HashMap<(u32, u32, u32), (Vec<UFrame>, bool)> = HashMap::new();
    for key in profile.counts.keys() {
        if let Part::Id(id) = key.kernel {
            if let std::collections::hash_map::Entry::Vacant(e) = kstacks.entry(id) {
                if let Some(s) = profile.store.ips(false, id) {
                    e.insert(s);
                }
            }
        }
        if let Part::Id(id) = key.user {
            let k = (key.pid, key.gen, id);
            if let std::collections::hash_map::Entry::Vacant(e) = ustacks.entry(k) {
                if let Some(s) = user_frames(profile, key, id, &mut stats) {
                    e.insert(s);
                }
            }
        }
    }

    // Kernel: one batch over every distinct address.
    let mut kaddrs: Vec<u64> = kstacks
        .values()
        .flat_map(|s| s.iter().enumerate().map(|(d, &ip)| lookup_addr(d, ip)))
        .collect();
    kaddrs.sort_unstable();
    kaddrs.dedup();
    let kernel = Kernel {
        vmlinux: MaybeDefault::None,
        debug_syms: false,
        ..Kernel::default()
    };
    let knames: HashMap<u64, String> = if kaddrs.is_empty() {
        // Nothing to look up: do not read kallsyms at all.
        HashMap::new()
    } else {
        symbolizer
            .symbolize(&Source::Kernel(kernel), Input::AbsAddr(&kaddrs))
            .map(|syms| {
                kaddrs
                    .iter()
                    .zip(syms.iter())
                    .filter_map(|(&a, s)| {
                        let Symbolized::Sym(sym) = s else { return None };
                        Some((a, clean(&sym.name)))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };

    // User: per file, one batch over the distinct file offsets.
    let mut by_file: BTreeMap<Arc<Path>, Vec<u64>> = BTreeMap::new();
    for (s, _) in ustacks.values() {
        for f in s {
            if let UFrame::At(_, loc) = f {
                by_file
                    .entry(loc.path.clone())
                    .or_default()
                    .push(loc.file_offset);
            }
        }
    }
    let mut unames: HashMap<(Arc<Path>, u64), Names> = HashMap::new();
    let vdso = by_file
        .keys()
        .any(|p| p.as_os_str() == "[vdso]")
        .then(VdsoFile::create)
        .flatten();
    for (path, mut offs) in by_file {
        offs.sort_unstable();
        offs.dedup();
        let file = match &vdso {
            Some(v) if path.as_os_str() == "[vdso]" => v.path().to_path_buf(),
            _ if !path.is_absolute() => continue,
            _ => path.to_path_buf(),
        };
        // debug_syms: DWARF when present, else the ELF symbol tables; when
        // the debug info cannot be read, the symbol tables alone.
        let elf = Elf::new(file.clone());
        let mut plain = Elf::new(file);
        plain.debug_syms = false;
        let syms = symbolizer
            .symbolize(&Source::Elf(elf), Input::FileOffset(&offs))
            .or_else(|_| symbolizer.symbolize(&Source::Elf(plain), Input::FileOffset(&offs)));
        if let Ok(syms) = syms {
            for (&o, s) in offs.iter().zip(syms.iter()) {
                if let Some(n) = names_of(s) {
                    unames.insert((path.clone(), o), n);
                }
            }
        }
    }

    let mut perf_maps: HashMap<u32, Option<PerfMap>> = HashMap::new();
    let mut user_frame = |pid: u32, depth: usize, f: &UFrame, out: &mut Vec<Frame>| {
        let jit = |ip: u64, perf_maps: &mut HashMap<u32, Option<PerfMap>>| {
            perf_maps
                .entry(pid)
                .or_insert_with(|| PerfMap::for_pid(pid))
                .as_ref()
                .and_then(|m| m.lookup(lookup_addr(depth, ip)))
                .map(str::to_string)
        };
        match f {
            UFrame::At(ip, loc) => {
                let file = Some((loc.path.clone(), loc.file_offset));
                let plain = |name: String| Frame {
                    name,
                    kind: Kind::User,
                    addr: *ip,
                    file: file.clone(),
                    source: None,
                    inlined: false,
                };
                match unames.get(&(loc.path.clone(), loc.file_offset)) {
                    Some(names) => {
                        // Root first: the function, then what was inlined
                        // into it at this address; all but the first are
                        // inlined into their predecessor.
                        for (i, (n, src)) in names.iter().enumerate() {
                            let mut fr = plain(n.clone());
                            fr.source = src.clone();
                            fr.inlined = i > 0;
                            out.push(fr);
                        }
                    }
                    None if is_anon(&loc.path) => out.push(plain(
                        jit(*ip, &mut perf_maps).unwrap_or_else(|| "[anon]".into()),
                    )),
                    None if loc.path.to_str().is_some_and(|p| p.starts_with('[')) => {
                        out.push(plain(loc.path.display().to_string()))
                    }
                    // No symbol: name the file, as perf names the DSO.
                    None => out.push(plain(file_label(&loc.path))),
                }
            }
            UFrame::UnknownBuildId(id) => {
                let hex: String = id.iter().take(8).map(|b| format!("{b:02x}")).collect();
                out.push(Frame::named(format!("[build-id {hex}]"), Kind::User));
            }
            UFrame::Nowhere(ip) => {
                let mut fr = Frame::named(
                    jit(*ip, &mut perf_maps).unwrap_or_else(|| "[unknown]".into()),
                    Kind::User,
                );
                fr.addr = *ip;
                out.push(fr);
            }
        }
    };

    let mut shallow: HashMap<Arc<Path>, u64> = HashMap::new();
    let mut shallow_samples = 0;
    let mut cut_samples = 0;
    let mut user_samples = 0;
    let mut out = Vec::with_capacity(profile.counts.len());
    for (key, &count) in &profile.counts {
        let mut frames = Vec::new();
        match key.user {
            Part::Id(id) => {
                if let Some((s, cut)) = ustacks.get(&(key.pid, key.gen, id)) {
                    user_samples += count;
                    if *cut {
                        cut_samples += count;
                    }
                    if s.len() <= 2 {
                        shallow_samples += count;
                        if let Some(UFrame::At(_, loc)) = s.first() {
                            *shallow.entry(loc.path.clone()).or_default() += count;
                        }
                    }
                    for (d, f) in s.iter().enumerate().rev() {
                        user_frame(key.pid, d, f, &mut frames);
                    }
                }
            }
            Part::Missed => frames.push(Frame::named("[Missed User Stack]", Kind::Missed)),
            Part::Absent => {}
        }
        match key.kernel {
            Part::Id(id) => {
                if let Some(s) = kstacks.get(&id) {
                    frames.extend(s.iter().enumerate().rev().map(|(d, &ip)| {
                        let name = knames
                            .get(&lookup_addr(d, ip))
                            .map_or("[unknown]", |n| n.as_str());
                        Frame {
                            addr: ip,
                            ..Frame::named(name, Kind::Kernel)
                        }
                    }));
                }
            }
            Part::Missed => frames.push(Frame::named("[Missed Kernel Stack]", Kind::Missed)),
            Part::Absent => {}
        }
        out.push(Stack {
            pid: key.pid,
            tid: key.tid,
            comm: key.comm.clone(),
            pcomm: key.pcomm.clone(),
            frames,
            count,
        });
    }
    Resolved {
        stacks: out,
        build_id: stats,
        shallow,
        shallow_samples,
        user_samples,
        cut_samples,
    }
}

/// The name of a frame as the folded stacks and the table show it:
/// kernel functions end in `_[k]`, as in Brendan Gregg's flame graphs.
pub fn display_name(f: &Frame) -> Cow<'_, str> {
    match f.kind {
        Kind::Kernel => Cow::Owned(format!("{}_[k]", f.name)),
        Kind::Missed if f.name.contains("Kernel") => Cow::Owned(format!("{}_[k]", f.name)),
        _ => Cow::Borrowed(&f.name),
    }
}
