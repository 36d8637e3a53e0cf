//! Regression tests from the fuzz targets (`fuzz/`): every crash a target
//! found, minimized and spelled out, replayed through the same check the
//! target runs (the check modules are included from `fuzz/src/` by path).
//! The seeds in `fuzz/corpus/*/seed-*` are replayed too, so the checks
//! themselves run in the ordinary test suite.

#[path = "../fuzz/src/depot.rs"]
#[allow(dead_code)]
mod depot;
#[path = "../fuzz/src/elf_note.rs"]
mod elf_note;
#[path = "../fuzz/src/ops.rs"]
#[allow(dead_code)]
mod ops;
#[path = "../fuzz/src/proc_maps.rs"]
mod proc_maps;

use arbitrary::{Arbitrary, Unstructured};
use std::path::Path;

/// Every `seed-*` file of a target's corpus.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("seed-") {
            out.push((name, std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

/// Decodes bytes as libfuzzer-sys does for a `fuzz_target!(|x: T| ..)`.
fn decode<'a, T: Arbitrary<'a>>(bytes: &'a [u8]) -> Option<T> {
    T::arbitrary_take_rest(Unstructured::new(bytes)).ok()
}

#[test]
fn ops_seeds() {
    let seeds = seeds("ops");
    assert!(!seeds.is_empty());
    for (name, bytes) in seeds {
        eprintln!("ops/{name}");
        if let Some(input) = decode::<ops::Input>(&bytes) {
            ops::run(&input);
        }
    }
}

#[test]
fn depot_seeds() {
    let seeds = seeds("depot");
    assert!(!seeds.is_empty());
    for (name, bytes) in seeds {
        eprintln!("depot/{name}");
        if let Some(input) = decode::<depot::Input>(&bytes) {
            depot::run(&input);
        }
    }
    // All-zero selectors: a valid 1-stack depot, no operations.
    depot::run(&depot::Input::default());
}

#[test]
fn elf_note_seeds() {
    let seeds = seeds("elf_note");
    assert!(seeds.len() >= 5);
    for (name, bytes) in seeds {
        eprintln!("elf_note/{name}");
        elf_note::run(&bytes);
        // The differential part must not be vacuous: object accepts every
        // seed but the one with an 8-aligned note segment.
        let theirs = elf_note::object_build_id(&bytes);
        assert_eq!(
            theirs.is_ok(),
            name != "seed-two-segments",
            "{name}: {theirs:?}"
        );
    }
}

#[test]
fn proc_maps_seeds() {
    let seeds = seeds("proc_maps");
    assert!(!seeds.is_empty());
    for (name, bytes) in seeds {
        eprintln!("proc_maps/{name}");
        assert!(kstackmap::ProcMaps::parse_text(&String::from_utf8_lossy(&bytes)).is_ok());
        proc_maps::run(&bytes);
    }
}

#[test]
fn ops_default_input() {
    // All-zero selectors: a valid 8-entry map with no operations.
    ops::run(&ops::Input::default());
    // The same map in caller memory at every misalignment, and in none.
    for storage in (128..136).chain([255]) {
        let mut input = ops::Input::default();
        input.cfg.storage = storage;
        input.ops = vec![
            ops::Op::StackId {
                cpu: 1,
                chain: ops::ChainSel::Pool(4),
                flags: ops::FlagSel::default(),
            },
            ops::Op::Audit,
        ];
        ops::run(&input);
    }
}

/// ops, crash 1: `get_stackid` with `cpu = usize::MAX` on a 4-CPU map
/// overflowed `cpu + k` in the freelist's round-robin pop (the temporary
/// freelist in main; overflow checks panic, release builds wrapped).
#[test]
fn ops_cpu_usize_max() {
    use ops::*;
    let input = Input {
        attr: AttrSel {
            max_entries: 216,
            key_size: 12,
            value_size: 0,
            flags: 255,
            raw: 268444672,
            numa_node: 0,
        },
        cfg: CfgSel {
            cpus: 55,
            max_stack: 0,
            storage: 0,
        },
        space: SpaceSel::default(),
        ops: vec![Op::StackIdResolved {
            cpu: u64::MAX,
            chain: ChainSel::Words(vec![Ip::Near(0)]),
            flags: FlagSel::default(),
        }],
    };
    ops::run(&input);

    // The same, spelled out on the public API.
    let attr = kstackmap::MapAttr {
        max_entries: 4,
        value_size: 32,
        ..Default::default()
    };
    let cfg = kstackmap::Config {
        nr_cpus: 4,
        max_stack: 127,
    };
    let map = kstackmap::StackMap::with_config(&attr, cfg).unwrap();
    for cpu in [usize::MAX, usize::MAX - 1, usize::MAX - 3] {
        let id = map.get_stackid(cpu, &[cpu as u64], 0).unwrap();
        assert_eq!(map.delete(id), Ok(()));
    }
}

/// proc_maps, crash 1: a path ending in '\r' (a legal file name; the
/// kernel escapes only '\n') lost its '\r': `parse_text` split lines with
/// `str::lines`, which also strips a '\r' before the '\n', so the whole
/// text did not round-trip and the mapping named another file.
#[test]
fn proc_maps_path_ending_in_cr() {
    let text = "55d4c0a00000-55d4c0a02000 r--p 00000000 fe:01 1835043  /u\0\r\n";
    proc_maps::run(text.as_bytes());
    let maps = kstackmap::ProcMaps::parse_text("1000-2000 r-xp 0 00:00 0 /x\r\n").unwrap();
    assert_eq!(maps.mappings()[0].path, "/x\r");
    assert_eq!(maps.mappings()[0].file_path(), Some("/x\r"));
    let again = kstackmap::ProcMaps::parse_text(&maps.to_string()).unwrap();
    assert_eq!(again, maps);
}
