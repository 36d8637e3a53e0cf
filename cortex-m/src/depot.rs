//! The stack depot on this instruction set: 32-bit atomics only (the
//! depot's index, directory and cursors are `AtomicU32` everywhere), the
//! hash's 64 x 64 -> 128-bit multiplies done in 32-bit pieces, over static
//! memory with no allocator.

use core::mem::MaybeUninit;

use kstackmap::{DepotConfig, Error, StackBuildId, StackDepotIn, StackKind, MAX_CAPACITY};

use crate::stacks::{frames, number_of};
use crate::TestResult;

fn cfg(capacity: u32, arena_words: usize) -> DepotConfig {
    DepotConfig {
        capacity,
        arena_words,
        nr_cpus: 2,
        seed: 0x5eed,
    }
}

/// With nothing in flight: arena words and ids conserved, `iter` agrees.
fn conserved(d: &StackDepotIn<'_>) -> TestResult {
    let s = d.stats();
    check_eq!(s.words_used, s.record_words + s.wasted_words);
    check_eq!(s.ids_used as usize, s.stacks + s.wasted_ids);
    let words: usize = d.iter().map(|(_, w)| w.len() + 1).sum();
    check_eq!(words, s.record_words);
    check_eq!(d.iter().count(), d.len());
    Ok(())
}

/// 3,000 generated stacks: ids in order, each reads back its own frames,
/// the same frames give the same id from either CPU; the 3,001st new
/// stack is `NoMem` and changes nothing; `clear` starts over.
pub fn depot_intern_get_full_clear(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    const N: u32 = 3_000;
    let mut d = ok!(StackDepotIn::new_in(&cfg(N, 20_000), &mut *mem));
    for k in 0..N {
        check_eq!(d.intern(k as usize, frames(k).ips()), Ok(k));
    }
    for k in (0..N).rev() {
        let s = frames(k);
        check_eq!(d.intern(1, s.ips()), Ok(k));
        check_eq!(d.get(k), Some(s.ips()));
    }
    for (id, w) in d.iter() {
        check_eq!(number_of(w), Some(id));
    }
    let before = d.stats();
    check_eq!(before.stacks, N as usize);
    check_eq!(d.intern(0, frames(N).ips()), Err(Error::NoMem));
    check_eq!(d.stats(), before, "a refusal changes nothing");
    check_eq!(d.intern(0, &[]), Err(Error::Inval));
    conserved(&d)?;
    d.clear();
    check_eq!(d.len(), 0);
    check_eq!(d.get(0), None);
    check_eq!(d.intern(0, frames(N).ips()), Ok(0));
    Ok(())
}

/// The arena runs out before the ids: `NoMem` for what does not fit, a
/// smaller record still fits, the stored ones are found.
pub fn depot_arena_full(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    let d = ok!(StackDepotIn::new_in(&cfg(1_000, 500), &mut *mem));
    let mut stored = 0u32;
    let mut k = 0;
    while d.stats().words_used + 1 + 8 <= 500 {
        check_eq!(d.intern(0, frames(k).ips()), Ok(stored));
        stored += 1;
        k += 1;
    }
    // frames(k) has 1 + k % 8 frames: find one that does not fit.
    let left = 500 - d.stats().words_used;
    let big = (k..k + 8).find(|&j| frames(j).ips().len() + 1 > left);
    let Some(big) = big else {
        fail!("no stack larger than {} words", left);
    };
    let before = d.stats();
    check_eq!(d.intern(0, frames(big).ips()), Err(Error::NoMem));
    check_eq!(d.stats(), before);
    for j in 0..stored {
        check_eq!(d.intern(1, frames(j).ips()), Ok(j));
    }
    conserved(&d)
}

/// Build-id frames go in and come out as `StackBuildId`s without a copy;
/// the same words as an ips stack are another stack.
pub fn depot_build_ids(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    let d = ok!(StackDepotIn::new_in(&cfg(16, 256), &mut *mem));
    let mut id = [0u8; 20];
    id[0] = 0xab;
    id[19] = 0xcd;
    let f = [
        StackBuildId::valid(id, 0x1234),
        StackBuildId::from_ip(0x0800_0100),
    ];
    let b = ok!(d.intern_build_ids(0, &f));
    check_eq!(d.intern_build_ids(1, &f), Ok(b));
    check_eq!(d.get_build_ids(b), Some(&f[..]));
    check_eq!(d.kind(b), Some(StackKind::BuildIds));
    let mut words = [0u64; 8];
    match d.get(b) {
        Some(w) if w.len() == 8 => words.copy_from_slice(w),
        other => fail!("get: {:?}", other),
    }
    let i = ok!(d.intern(0, &words));
    check!(i != b);
    check_eq!(d.kind(i), Some(StackKind::Ips));
    check_eq!(d.get_build_ids(i), None);
    conserved(&d)
}

/// Configuration errors; caller memory at every alignment; too little
/// memory is `NoMem`.
pub fn depot_config_and_memory(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    let size = |c: DepotConfig| StackDepotIn::storage_size(&c);
    check_eq!(size(cfg(0, 16)), Err(Error::Inval));
    check_eq!(size(cfg(MAX_CAPACITY + 1, 16)), Err(Error::Inval));
    check_eq!(size(cfg(4, 1)), Err(Error::Inval));
    check_eq!(
        size(DepotConfig {
            nr_cpus: 0,
            ..cfg(4, 16)
        }),
        Err(Error::Inval)
    );
    let c = cfg(64, 512);
    let need = ok!(size(c));
    check!(need < 8192, "{}", need);
    check_eq!(
        StackDepotIn::new_in(&c, &mut mem[..need / 2]).err(),
        Some(Error::NoMem)
    );
    for offset in 0..8 {
        let d = ok!(StackDepotIn::new_in(&c, &mut mem[offset..offset + need]));
        check_eq!(d.intern(0, &[1, 2, 3]), Ok(0));
        check_eq!(d.get(0), Some(&[1u64, 2, 3][..]));
        check!(d.mem_usage() >= 512 * 8);
    }
    Ok(())
}
