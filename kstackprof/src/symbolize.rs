//! After recording: every stack id is looked up once (`StackMap::lookup`),
//! marker words are stripped, and the addresses are symbolized with
//! blazesym — kernel frames from kallsyms, user frames from the ELF file
//! each address was mapped from (by file offset, so processes that have
//! exited still resolve).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use blazesym::MaybeDefault;

use kstackmap::{BuildId, StackBuildId};

use crate::maps::Located;
use crate::record::{Part, Profile, STACK_WORDS};
use crate::stackmap::StackMap;

/// Perf callchain context markers are the top 4095 values
/// (`PERF_CONTEXT_MAX` = -4095): `PERF_CONTEXT_KERNEL`, `_USER`, ...
pub fn is_marker(w: u64) -> bool {
    w >= (-4095i64) as u64
}

/// One sample group, root first: `comm`, user frames, kernel frames
/// (suffixed `_[k]`), and how many samples had it.
#[derive(Clone, Debug)]
pub struct Stack {
    pub frames: Vec<String>,
    pub count: u64,
}

/// Reads a stored stack: the non-zero words, markers removed, innermost first.
fn read_stack(map: &StackMap, id: u32) -> Option<Vec<u64>> {
    let mut buf = vec![0u64; STACK_WORDS as usize];
    let ips = map.lookup_ips(id, &mut buf).ok()?;
    Some(ips.iter().copied().filter(|&w| !is_marker(w)).collect())
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
enum UFrame {
    At(Located),
    /// A build id none of the files seen has.
    UnknownBuildId(BuildId),
    Nowhere,
}

/// A stored user stack as frames, innermost first, markers removed. Ips
/// maps are located through the process's mapping snapshot; build-id maps
/// carry `(build id, file offset)` and only need the file with that id.
fn user_frames(
    profile: &Profile,
    pid: u32,
    id: u32,
    stats: &mut BuildIdStats,
) -> Option<Vec<UFrame>> {
    let locate = |d: usize, ip: u64| {
        profile
            .maps
            .locate(pid, lookup_addr(d, ip))
            .map_or(UFrame::Nowhere, UFrame::At)
    };
    if !profile.build_id {
        let ips = read_stack(&profile.user_map, id)?;
        return Some(
            ips.iter()
                .enumerate()
                .map(|(d, &ip)| locate(d, ip))
                .collect(),
        );
    }
    let mut buf = vec![StackBuildId::default(); STACK_WORDS as usize];
    let frames = profile.user_map.lookup_build_ids(id, &mut buf).ok()?;
    let frames = frames.iter().filter(|f| !f.ip().is_some_and(is_marker));
    Some(
        frames
            .enumerate()
            .map(|(d, f)| match (f.offset(), f.ip()) {
                (Some(off), _) => {
                    stats.valid += 1;
                    match profile.build_ids.path_of(&f.build_id) {
                        Some(path) => UFrame::At(Located {
                            path,
                            file_offset: lookup_addr(d, off),
                        }),
                        None => UFrame::UnknownBuildId(f.build_id),
                    }
                }
                (None, Some(ip)) => {
                    stats.ip_only += 1;
                    locate(d, ip)
                }
                (None, None) => UFrame::Nowhere,
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

fn name_of(s: &Symbolized<'_>) -> Option<String> {
    match s {
        Symbolized::Sym(sym) => Some(clean(&sym.name)),
        Symbolized::Unknown(_) => None,
    }
}

/// Symbolizes everything in `profile`.
pub fn resolve(profile: &Profile) -> (Vec<Stack>, BuildIdStats) {
    let mut stats = BuildIdStats::default();
    let symbolizer = Symbolizer::builder()
        .enable_code_info(false)
        .enable_inlined_fns(false)
        .build();

    let mut kstacks: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut ustacks: HashMap<(u32, u32), Vec<UFrame>> = HashMap::new();
    for key in profile.counts.keys() {
        if let Part::Id(id) = key.kernel {
            if let std::collections::hash_map::Entry::Vacant(e) = kstacks.entry(id) {
                if let Some(s) = read_stack(&profile.kernel_map, id) {
                    e.insert(s);
                }
            }
        }
        if let Part::Id(id) = key.user {
            if let std::collections::hash_map::Entry::Vacant(e) = ustacks.entry((key.pid, id)) {
                if let Some(s) = user_frames(profile, key.pid, id, &mut stats) {
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
    let knames: HashMap<u64, String> = symbolizer
        .symbolize(&Source::Kernel(kernel), Input::AbsAddr(&kaddrs))
        .map(|syms| {
            kaddrs
                .iter()
                .zip(syms.iter())
                .filter_map(|(&a, s)| Some((a, name_of(s)?)))
                .collect()
        })
        .unwrap_or_default();

    // User: per file, one batch over the distinct file offsets.
    let mut by_file: BTreeMap<Arc<Path>, Vec<u64>> = BTreeMap::new();
    for s in ustacks.values() {
        for f in s {
            if let UFrame::At(loc) = f {
                by_file
                    .entry(loc.path.clone())
                    .or_default()
                    .push(loc.file_offset);
            }
        }
    }
    let mut unames: HashMap<(Arc<Path>, u64), String> = HashMap::new();
    for (path, mut offs) in by_file {
        offs.sort_unstable();
        offs.dedup();
        if path.starts_with("[") || !path.is_absolute() {
            continue;
        }
        let mut elf = Elf::new(path.to_path_buf());
        elf.debug_syms = false;
        if let Ok(syms) = symbolizer.symbolize(&Source::Elf(elf), Input::FileOffset(&offs)) {
            for (&o, s) in offs.iter().zip(syms.iter()) {
                if let Some(n) = name_of(s) {
                    unames.insert((path.clone(), o), n);
                }
            }
        }
    }
    let user_frame = |f: &UFrame| -> String {
        match f {
            UFrame::At(loc) => match unames.get(&(loc.path.clone(), loc.file_offset)) {
                Some(n) => n.clone(),
                None if loc.path.to_str().is_some_and(|p| p.starts_with('[')) => {
                    loc.path.display().to_string()
                }
                // No symbol: name the file, as perf names the DSO.
                None => format!(
                    "[{}]",
                    loc.path.file_name().map_or_else(
                        || loc.path.display().to_string(),
                        |f| f.to_string_lossy().into_owned()
                    )
                ),
            },
            UFrame::UnknownBuildId(id) => {
                let hex: String = id.iter().take(8).map(|b| format!("{b:02x}")).collect();
                format!("[build-id {hex}]")
            }
            UFrame::Nowhere => "[unknown]".to_string(),
        }
    };

    let mut out = Vec::with_capacity(profile.counts.len());
    for (key, &count) in &profile.counts {
        let mut frames = vec![clean(&key.comm)];
        match key.user {
            Part::Id(id) => {
                if let Some(s) = ustacks.get(&(key.pid, id)) {
                    frames.extend(s.iter().rev().map(user_frame));
                }
            }
            Part::Missed => frames.push("[Missed User Stack]".into()),
            Part::Absent => {}
        }
        match key.kernel {
            Part::Id(id) => {
                if let Some(s) = kstacks.get(&id) {
                    frames.extend(s.iter().enumerate().rev().map(|(d, &ip)| {
                        let name = knames
                            .get(&lookup_addr(d, ip))
                            .map_or("[unknown]", |n| n.as_str());
                        format!("{name}_[k]")
                    }));
                }
            }
            Part::Missed => frames.push("[Missed Kernel Stack]_[k]".into()),
            Part::Absent => {}
        }
        out.push(Stack { frames, count });
    }
    (out, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kstackmap::uapi::{PERF_CONTEXT_KERNEL, PERF_CONTEXT_USER};

    #[test]
    fn markers() {
        assert!(is_marker(PERF_CONTEXT_KERNEL));
        assert!(is_marker(PERF_CONTEXT_USER));
        assert!(!is_marker(0xffff_ffff_8100_0000));
        assert!(!is_marker(0x7fff_0000_0000));
    }
}
