//! `profile.pb.gz`: the recording as a gzipped pprof `profile.proto`, for
//! `go tool pprof`, Pyroscope, Parca, speedscope and friends.
//!
//! - Sample types `samples/count` and `cpu/nanoseconds` (count × period);
//!   period `cpu/nanoseconds` = 1 s / `-F`; start time and duration.
//! - One sample per (process, thread, stack), leaf first: the kernel part
//!   then the user part, as one stack; labels `pid`, `tid` (numbers),
//!   `process`, `thread` (names).
//! - A location per distinct address: user code by file offset in a
//!   mapping per file (loaded "at 0": address = file offset, so any
//!   process's copy of a file is one mapping), with the file's GNU build
//!   id; kernel code at its address in `[kernel.kallsyms]` (build id from
//!   `/sys/kernel/notes`). Functions inlined at an address are extra lines
//!   of its location (callees first), as pprof expects.
//! - Function names are the ones in `stacks.folded` without the `_[k]`
//!   suffix, so `go tool pprof -top` lists what kstackprof's table lists.

pub mod proto;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use prost::Message;

use crate::symbolize::{Frame, Kind, Stack};
use proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};

/// What the profile says about the recording as a whole.
pub struct Meta {
    pub started: SystemTime,
    pub duration: Duration,
    pub freq: u64,
    pub comments: Vec<String>,
}

/// Interns strings into the string table.
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Strings {
        let mut s = Strings::default();
        s.get("");
        s
    }

    fn get(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// Reads a file's bytes for the build-id parser (positioned reads).
struct FileSource(std::fs::File);

impl kstackmap::ElfSource for FileSource {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> bool {
        self.0.read_exact_at(buf, offset).is_ok()
    }
}

fn file_build_id(path: &Path) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    kstackmap::parse_build_id_from(&mut FileSource(f)).map(|id| id.to_string())
}

fn kernel_build_id() -> Option<String> {
    let notes = std::fs::read("/sys/kernel/notes").ok()?;
    kstackmap::parse_note_buf(&notes).map(|id| id.to_string())
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum MapKey {
    File(Arc<Path>),
    Kernel,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct LocKey {
    map: Option<MapKey>,
    address: u64,
    /// Function ids, leaf first (a location is its address and its lines;
    /// stand-ins without an address are told apart by name).
    funcs: Vec<u64>,
}

struct Builder {
    strings: Strings,
    mappings: Vec<Mapping>,
    map_ids: HashMap<MapKey, u64>,
    functions: Vec<Function>,
    func_ids: HashMap<(i64, i64), u64>,
    locations: Vec<Location>,
    loc_ids: HashMap<LocKey, u64>,
}

impl Builder {
    fn mapping(&mut self, key: MapKey, address: u64) -> u64 {
        if let Some(&id) = self.map_ids.get(&key) {
            let m = &mut self.mappings[(id - 1) as usize];
            if key == MapKey::Kernel {
                m.memory_start = m.memory_start.min(address);
            }
            m.memory_limit = m.memory_limit.max(address.saturating_add(1));
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let (name, build_id, start) = match &key {
            MapKey::File(p) => (p.display().to_string(), file_build_id(p), 0),
            MapKey::Kernel => ("[kernel.kallsyms]".to_string(), kernel_build_id(), address),
        };
        let m = Mapping {
            id,
            memory_start: start,
            memory_limit: address.saturating_add(1),
            file_offset: 0,
            filename: self.strings.get(&name),
            build_id: build_id.map_or(0, |b| self.strings.get(&b)),
            has_functions: true,
            has_filenames: false,
            has_line_numbers: false,
            has_inline_frames: false,
        };
        self.mappings.push(m);
        self.map_ids.insert(key, id);
        id
    }

    fn function(&mut self, f: &Frame) -> u64 {
        let name = self.strings.get(&f.name);
        let file = f
            .source
            .as_ref()
            .map_or(0, |(file, _)| self.strings.get(file));
        let next = self.functions.len() as u64 + 1;
        let id = *self.func_ids.entry((name, file)).or_insert(next);
        if id == next {
            self.functions.push(Function {
                id,
                name,
                system_name: name,
                filename: file,
                start_line: 0,
            });
        }
        id
    }

    /// The location of one physical frame: `group` is the frame and the
    /// ones inlined into it, root first.
    fn location(&mut self, group: &[Frame]) -> u64 {
        let Some(outer) = group.first() else {
            return 0;
        };
        let (map, address) = match (outer.kind, &outer.file) {
            (Kind::Kernel, _) => (Some(MapKey::Kernel), outer.addr),
            (Kind::User, Some((path, off))) => (Some(MapKey::File(path.clone())), *off),
            _ => (None, outer.addr),
        };
        let mut lines = Vec::with_capacity(group.len());
        let mut funcs = Vec::with_capacity(group.len());
        for f in group.iter().rev() {
            let function_id = self.function(f);
            funcs.push(function_id);
            lines.push(Line {
                function_id,
                line: f.source.as_ref().map_or(0, |(_, l)| i64::from(*l)),
            });
        }
        let key = LocKey {
            map: map.clone(),
            address,
            funcs,
        };
        if let Some(&id) = self.loc_ids.get(&key) {
            return id;
        }
        let mapping_id = map.map_or(0, |m| self.mapping(m, address));
        if let Some(m) = self.mappings.get_mut((mapping_id as usize).wrapping_sub(1)) {
            let inline = group.len() > 1;
            let has_lines = group.iter().any(|f| f.source.is_some());
            m.has_inline_frames |= inline;
            m.has_line_numbers |= has_lines;
            m.has_filenames |= has_lines;
        }
        let id = self.locations.len() as u64 + 1;
        self.locations.push(Location {
            id,
            mapping_id,
            address,
            line: lines,
            is_folded: false,
        });
        self.loc_ids.insert(key, id);
        id
    }
}

/// The profile of `stacks`.
pub fn build(stacks: &[Stack], meta: &Meta) -> Profile {
    let mut b = Builder {
        strings: Strings::new(),
        mappings: Vec::new(),
        map_ids: HashMap::new(),
        functions: Vec::new(),
        func_ids: HashMap::new(),
        locations: Vec::new(),
        loc_ids: HashMap::new(),
    };
    let period = (1_000_000_000 / meta.freq.max(1)) as i64;
    let samples_t = ValueType {
        r#type: b.strings.get("samples"),
        unit: b.strings.get("count"),
    };
    let cpu_t = ValueType {
        r#type: b.strings.get("cpu"),
        unit: b.strings.get("nanoseconds"),
    };
    let (k_pid, k_tid, k_process, k_thread) = (
        b.strings.get("pid"),
        b.strings.get("tid"),
        b.strings.get("process"),
        b.strings.get("thread"),
    );
    let mut samples = Vec::with_capacity(stacks.len());
    for s in stacks {
        // Leaf first; each physical frame with the frames inlined into it
        // (they follow it, root first) is one location.
        let mut location_id = Vec::with_capacity(s.frames.len());
        let mut end = s.frames.len();
        while end > 0 {
            let mut start = end - 1;
            while start > 0 && s.frames[start].inlined {
                start -= 1;
            }
            location_id.push(b.location(&s.frames[start..end]));
            end = start;
        }
        let count = s.count as i64;
        let label = vec![
            Label {
                key: k_pid,
                num: i64::from(s.pid),
                ..Label::default()
            },
            Label {
                key: k_tid,
                num: i64::from(s.tid),
                ..Label::default()
            },
            Label {
                key: k_process,
                str: b.strings.get(&s.pcomm),
                ..Label::default()
            },
            Label {
                key: k_thread,
                str: b.strings.get(&s.comm),
                ..Label::default()
            },
        ];
        samples.push(Sample {
            location_id,
            value: vec![count, count.saturating_mul(period)],
            label,
        });
    }
    let comment = meta.comments.iter().map(|c| b.strings.get(c)).collect();
    let time_nanos = meta
        .started
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let default_sample_type = cpu_t.r#type;
    Profile {
        sample_type: vec![samples_t, cpu_t.clone()],
        sample: samples,
        mapping: b.mappings,
        location: b.locations,
        function: b.functions,
        string_table: b.strings.table,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos,
        duration_nanos: meta.duration.as_nanos() as i64,
        period_type: Some(cpu_t),
        period,
        comment,
        default_sample_type,
    }
}

/// Writes `profile.pb.gz` into `dir`.
///
/// # Errors
/// The file could not be written.
pub fn write(dir: &Path, stacks: &[Stack], meta: &Meta) -> Result<()> {
    let path = dir.join("profile.pb.gz");
    let bytes = build(stacks, meta).encode_to_vec();
    let file =
        std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    gz.write_all(&bytes)
        .and_then(|()| gz.finish().map(|_| ()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str, kind: Kind, addr: u64, inlined: bool) -> Frame {
        Frame {
            name: name.to_string(),
            kind,
            addr,
            file: (kind == Kind::User).then(|| (Arc::from(Path::new("/bin/true")), addr - 0x1000)),
            source: None,
            inlined,
        }
    }

    #[test]
    fn inlined_frames_share_a_location_and_samples_are_leaf_first() {
        let s = Stack {
            pid: 7,
            tid: 8,
            comm: "t".into(),
            pcomm: "p".into(),
            frames: vec![
                frame("main", Kind::User, 0x1100, false),
                frame("work", Kind::User, 0x1200, false),
                frame("inlined_helper", Kind::User, 0x1200, true),
                frame("vfs_read", Kind::Kernel, 0xffff_ffff_8100_0000, false),
            ],
            count: 3,
        };
        let meta = Meta {
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(5),
            duration: Duration::from_secs(2),
            freq: 1000,
            comments: vec!["hello".into()],
        };
        let p = build(std::slice::from_ref(&s), &meta);
        let str_of = |i: i64| p.string_table[i as usize].as_str();
        assert_eq!(p.string_table[0], "");
        assert_eq!(p.period, 1_000_000);
        assert_eq!(p.time_nanos, 5_000_000_000);
        assert_eq!(p.duration_nanos, 2_000_000_000);
        assert_eq!(p.sample.len(), 1);
        let sample = &p.sample[0];
        assert_eq!(sample.value, vec![3, 3_000_000]);
        assert_eq!(sample.location_id.len(), 3, "main, work+helper, vfs_read");
        let loc = |id: u64| &p.location[(id - 1) as usize];
        let fname = |l: &Line| str_of(p.function[(l.function_id - 1) as usize].name);
        let leaf = loc(sample.location_id[0]);
        assert_eq!(fname(&leaf.line[0]), "vfs_read");
        let mid = loc(sample.location_id[1]);
        let names: Vec<&str> = mid.line.iter().map(fname).collect();
        assert_eq!(names, ["inlined_helper", "work"], "callee first");
        assert_eq!(mid.address, 0x200, "file offset");
        let m = &p.mapping[(mid.mapping_id - 1) as usize];
        assert_eq!(str_of(m.filename), "/bin/true");
        assert!(m.has_inline_frames);
        let pid = sample
            .label
            .iter()
            .find(|l| str_of(l.key) == "pid")
            .unwrap();
        assert_eq!(pid.num, 7);
        let thread = sample
            .label
            .iter()
            .find(|l| str_of(l.key) == "thread")
            .unwrap();
        assert_eq!(str_of(thread.str), "t");
        // Round trip through the wire format.
        let back = Profile::decode(p.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, p);
    }
}
