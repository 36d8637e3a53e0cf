//! The audit's ABA regression (issue 16; `tests/aba.rs` on the host) on
//! the Cortex-M4, through the map.
//!
//! One insert's freelist pop is stalled between its exclusive load of the
//! head (and of the top's link) and its store-exclusive, as an interrupt
//! handler on the same core would stall it, while the hook runs the
//! history that fooled the old fixed 16-bit tag: insert X1 (pops A),
//! insert X2 (pops B), delete X1 (pushes A back, now with another link),
//! then `2^16 - 2` times insert X1 / delete X1: `2^16` pops of the one
//! shard. On this target the pop is LDREX / STREX: the handler's own
//! exclusive accesses leave the monitor open, so the stalled STREX fails
//! and the pop starts again. Nothing can fool it, whatever the tag width.
//! (Checked to fail: with that STREX made a plain store, the stalled pop
//! succeeds and a bucket ends up holding another bucket's stack.)
//!
//! Built only with the `hooks` feature (kstackmap's `test-hooks`, whose
//! pop is split around the hook call); `scripts/cortex-m-test` runs that
//! build with this test alone, and every other test on the production
//! pop.

use core::mem::MaybeUninit;

use kstackmap::uapi::BPF_F_REUSE_STACKID;
use kstackmap::{trace_hash, Config, Error, MapAttr, StackMapIn};

use crate::TestResult;

/// Pops of the shard while one pop is stalled.
const POPS: u32 = 1 << 16;

/// What the hook needs: the map and the two stacks of the history.
struct Handler<'a> {
    map: &'a StackMapIn<'a>,
    x1: [u64; 2],
    x2: [u64; 2],
}

/// The "interrupt handler": [`POPS`] pops of shard 0 while a pop of it is
/// stalled. A hook can't return a test result: a failed step panics,
/// which fails the run (see `main.rs`).
fn handler(arg: *const ()) {
    // SAFETY: `arg` points to the `Handler` on `stalled_pop_2_16`'s stack,
    // alive across the insert whose pop fires this hook (the hook fires
    // once, inside that call).
    let h = unsafe { &*arg.cast::<Handler<'_>>() };
    let id1 = h.map.get_stackid(0, &h.x1, 0).expect("pops A");
    h.map.get_stackid(0, &h.x2, 0).expect("pops B");
    h.map.delete(id1).expect("pushes A back");
    for _ in 2..POPS {
        assert_eq!(h.map.get_stackid(0, &h.x1, 0), Ok(id1), "pops A");
        h.map.delete(id1).expect("pushes A");
    }
}

/// Four two-frame stacks in distinct buckets of `m`.
fn four_stacks(m: &StackMapIn<'_>) -> [([u64; 2], u32); 4] {
    let mut out = [([0u64; 2], 0u32); 4];
    let mut n = 0;
    let mut x = 1u64;
    while n < out.len() {
        let s = [0x4000_0000 + x * 16, 0x5000_0000 + x];
        let id = trace_hash(&s) & (m.n_buckets() - 1);
        if out[..n].iter().all(|&(_, other)| other != id) {
            out[n] = (s, id);
            n += 1;
        }
        x += 1;
    }
    out
}

/// One insert's pop stalled across 2^16 pops of its shard; then every
/// stored stack, every bucket and the free count are checked.
pub fn stalled_pop_2_16(mem: &mut [MaybeUninit<u8>]) -> TestResult {
    let attr = MapAttr {
        max_entries: 8,
        value_size: 16,
        ..MapAttr::default()
    };
    let cfg = Config {
        nr_cpus: 1,
        ..Config::default()
    };
    let m = ok!(StackMapIn::new_in(&attr, cfg, &mut *mem));
    cortex_m_semihosting::hprintln!(
        "    {} pops in the window; tag bits {} (LL/SC pop: the tag is not what protects it)",
        POPS,
        m.freelist_tag_bits()
    );
    // 8 entries need 4 index bits; the other 28 of the head are tag.
    check!(
        m.freelist_tag_bits() >= 28,
        "tag bits {}",
        m.freelist_tag_bits()
    );
    let [(s0, id0), (x1, _), (x2, id2), (x3, id3)] = four_stacks(&m);
    let h = Handler { map: &m, x1, x2 };
    m.arm_pop_hook(0, handler, core::ptr::from_ref(&h).cast());
    // The stalled insert: its pop fires the handler.
    check_eq!(m.get_stackid(0, &s0, 0), Ok(id0));
    // Had the stalled pop been fooled, the freelist's top would now be B,
    // which X2's bucket holds: this insert would overwrite X2.
    check_eq!(m.get_stackid(0, &x3, 0), Ok(id3));
    let mut v = [0u64; 2];
    for (stack, id) in [(s0, id0), (x2, id2), (x3, id3)] {
        let got = ok!(m.lookup_ips(id, &mut v));
        check_eq!(got, &stack[..], "bucket {}", id);
    }
    // Conservation: 3 stacks stored, so exactly 5 more fit (a slot lost
    // in the window makes it 4; a slot in two places lets a sixth in).
    let mut fit = 0;
    let mut x = 1000u64;
    while fit < 5 && x < 100_000 {
        let s = [0x6000_0000 + x * 16, 0x7000_0000 + x];
        x += 1;
        match m.get_stackid(0, &s, 0) {
            Ok(_) => fit += 1,
            Err(Error::Exist) => {}
            Err(e) => fail!("insert {:x?}: {:?}", s, e),
        }
    }
    check_eq!(fit, 5, "stacks that fit after the stalled pop");
    // Every element is in use now: replacing a stack needs a free one.
    check_eq!(
        m.get_stackid(0, &[0x8000_0000, 1], BPF_F_REUSE_STACKID),
        Err(Error::NoMem)
    );
    Ok(())
}
