//! The `proc_maps` check: any text into the `/proc/PID/maps` parser.
//!
//! - Parsing never panics; it fails exactly when some non-blank line
//!   (lines end in `\n` only) fails `Mapping::parse_line`.
//! - Every line it accepts round-trips: parse, Display, parse gives the
//!   same mapping; and so does the whole text (`ProcMaps` Display).
//! - The result is sorted by `(end, start)`, `start < end` everywhere, and
//!   `find_vma` is the first mapping whose end is above the ip.
//!
//! `ProcMaps::parse_text` is the parser; `ProcMaps::parse` is the same
//! plus reading the build id of each file the text names, which would
//! make the fuzzer open arbitrary paths on the machine. It is called only
//! when no mapping names a file (path not starting with `/`), and must
//! then give the same result.

use kstackmap::Mapping;
use kstackmap::{ProcMaps, VmaResolver};

/// Runs the check on one input; panics on a disagreement.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text: &str = &text;
    let mut lines_ok = true;
    let mut accepted = Vec::new();
    for line in text.split('\n') {
        if line.trim().is_empty() {
            continue;
        }
        match Mapping::parse_line(line) {
            Ok(m) => {
                assert!(m.start < m.end, "{line:?}: accepted {m:?}");
                let shown = m.to_string();
                let again = Mapping::parse_line(&shown)
                    .unwrap_or_else(|e| panic!("{line:?} -> {shown:?}: {e}"));
                assert_eq!(again, m, "{line:?} -> {shown:?}: round trip");
                assert_eq!(again.to_string(), shown, "{line:?}: Display is stable");
                accepted.push(m);
            }
            Err(_) => lines_ok = false,
        }
    }
    let maps = ProcMaps::parse_text(text);
    assert_eq!(maps.is_ok(), lines_ok, "parse_text vs its lines: {maps:?}");
    let Ok(maps) = maps else { return };

    accepted.sort_by_key(|m| (m.end, m.start));
    assert_eq!(maps.mappings(), &accepted[..], "parse_text vs its lines");
    let shown = maps.to_string();
    let again = ProcMaps::parse_text(&shown).expect("Display parses");
    assert_eq!(again, maps, "whole text round trip: {shown:?}");

    // find_vma: the lowest end above the ip, at and around every bound.
    for m in maps.mappings() {
        for ip in [
            m.start,
            m.end,
            m.start.wrapping_sub(1),
            m.end.wrapping_sub(1),
        ] {
            let want = maps.mappings().iter().position(|v| v.end > ip);
            assert_eq!(maps.find_vma_index(ip), want, "find_vma_index({ip:#x})");
            let vma = maps.find_vma(ip);
            assert_eq!(
                vma.map(|v| (v.start, v.end)),
                want.map(|i| {
                    let w = &maps.mappings()[i];
                    (w.start, w.end)
                })
            );
            assert!(vma.is_none_or(|v| v.build_id.is_none()), "no files read");
        }
    }

    if maps.iter().all(|m| m.file_path().is_none()) {
        let parsed = ProcMaps::parse(text).expect("parse_text accepted it");
        assert_eq!(parsed, maps, "parse vs parse_text with no files");
    }
}
