//! loom models of the per-CPU lock-free freelist (`kstackmap::freelist`).
//!
//! Every model ends by checking conservation: the indices left on the list
//! plus those in the threads' hands are exactly `0..n`, each once. Run:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
//!     cargo test -p loom-tests --release --test freelist -- --nocapture
//! ```
//!
//! Add `--cfg kstackmap_head32` to `RUSTFLAGS` (and use another target dir)
//! to check the 16-bit-index head that targets without 64-bit atomics use.
#![cfg(loom)]

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use kstackmap::freelist::{FreeList, OwnedFreeList};
use loom::sync::Arc;
use loom::thread;
use std::sync::Arc as StdArc;

/// Run the model `f` under loom's explorer (bounds from the `LOOM_*`
/// environment variables) twice, and print for each run the model's name,
/// how many executions loom explored, and how long it took.
///
/// Why twice: loom 0.7's DPOR forgets a load by thread A once thread B
/// loads the same atomic, so when B then CASes it, the race with A's load
/// is not seen and the interleaving "B's CAS before A's load" is never
/// tried (tokio-rs/loom#392, #166). Every freelist operation starts with a
/// load of the head, so a single run only explores schedules in which the
/// thread that runs first keeps its head loads first. The second run calls
/// `first()` as [`yield_now`](thread::yield_now) right after spawning, so
/// the spawned threads run first and the roles swap. Each model calls
/// `first()` once, right after spawning its threads.
fn model<F>(name: &str, f: F)
where
    F: Fn(&dyn Fn()) + Sync + Send + 'static,
{
    // std's atomic, not loom's: it counts executions across the whole run.
    static ITERATIONS: AtomicUsize = AtomicUsize::new(0);
    let f = StdArc::new(f);
    for spawned_first in [false, true] {
        ITERATIONS.store(0, Relaxed);
        let start = Instant::now();
        let g = f.clone();
        loom::model::Builder::new().check(move || {
            ITERATIONS.fetch_add(1, Relaxed);
            if spawned_first {
                g(&thread::yield_now);
            } else {
                g(&|| {});
            }
        });
        let order = if spawned_first {
            "spawned first"
        } else {
            "main first"
        };
        println!(
            "loom model {name} ({order}): {} iterations in {:.2?}",
            ITERATIONS.load(Relaxed),
            start.elapsed()
        );
    }
}

/// Everything on the list plus everything in hands is `0..n`, once each.
fn assert_conserved(list: FreeList<'_>, held: impl IntoIterator<Item = u32>) {
    let n = list.capacity();
    let mut all: Vec<u32> = held.into_iter().collect();
    all.extend(list.drain_all().take(n as usize + 1));
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>(), "conservation broken");
}

/// (a) Push/pop races on one CPU: two threads each pop an element and push
/// it back while the other does the same; two pops never get one index.
#[test]
fn push_pop_one_cpu() {
    model("push_pop_one_cpu", |first| {
        let owned = Arc::new(OwnedFreeList::new_populated(1, 2).unwrap());
        let o = owned.clone();
        let t1 = thread::spawn(move || {
            let list = o.list();
            // None if the main thread already holds both.
            if let Some(a) = list.pop(0) {
                list.push(0, a);
            }
        });
        first();
        let list = owned.list();
        let b = list.pop(0).expect("2 elements, at most 1 elsewhere");
        let c = list.pop(0); // may race with t1's pop and push
        t1.join().unwrap();
        assert_ne!(Some(b), c, "one index popped twice");
        assert_conserved(list, [b].into_iter().chain(c));
    });
}

/// (b) Pop-vs-pop ABA: T1 is in the middle of a pop (has read the head `A`
/// and its link `B`) while T2 pops A, pops B and pushes A back. T1's CAS
/// must fail (the tag moved on), or B would be handed out twice and the
/// element below it lost.
#[test]
fn pop_vs_pop_aba() {
    model("pop_vs_pop_aba", |first| {
        // Populated: stack top first is 2 -> 1 -> 0.
        let owned = Arc::new(OwnedFreeList::new_populated(1, 3).unwrap());
        let o = owned.clone();
        let t1 = thread::spawn(move || o.list().pop(0));
        first();
        let list = owned.list();
        let a = list.pop(0).expect("3 elements, at most 1 elsewhere");
        let b = list.pop(0).expect("3 elements, at most 1 elsewhere");
        list.push(0, a);
        let x = t1.join().unwrap().expect("3 elements, at most 2 elsewhere");
        assert_ne!(x, b, "ABA: an index held by T2 was popped by T1");
        assert_conserved(list, [b, x]);
    });
}

/// (c) Steal while the owner pushes: CPU 1's thread empties its own stack
/// and steals from CPU 0 while CPU 0's owner pops and pushes there.
#[test]
fn steal_while_owner_pushes() {
    model("steal_while_owner_pushes", |first| {
        // Populated over 2 CPUs: CPU 0 holds {0}, CPU 1 holds {1}.
        let owned = Arc::new(OwnedFreeList::new_populated(2, 2).unwrap());
        let o = owned.clone();
        let owner = thread::spawn(move || {
            let list = o.list();
            let a = list.pop(0); // its own 0, or 1 stolen, or None
            if let Some(a) = a {
                list.push(0, a);
            }
        });
        first();
        let list = owned.list();
        let own = list.pop(1); // Some(1), unless the owner stole it first
        let stolen = list.pop(1); // steals from CPU 0, racing the owner
        owner.join().unwrap();
        assert!(
            own.is_some() || stolen.is_some(),
            "2 elements, owner holds <= 1"
        );
        assert_ne!(own, stolen, "one index popped twice");
        assert_conserved(list, own.into_iter().chain(stolen));
    });
}

/// (d) The empty list: a pop on an empty list returns `None` and leaves it
/// intact; a pop racing a push (to another CPU, so the pop must steal)
/// returns either `None` or the pushed index, never anything else.
#[test]
fn empty_list() {
    model("empty_list", |first| {
        // Not populated: index 0 starts in this thread's hands.
        let owned = Arc::new(OwnedFreeList::new(2, 1).unwrap());
        let list = owned.list();
        assert_eq!(list.pop(0), None);
        let o = owned.clone();
        let pusher = thread::spawn(move || o.list().push(1, 0));
        first();
        let got = list.pop(0);
        pusher.join().unwrap();
        assert!(got.is_none() || got == Some(0), "popped {got:?}");
        assert_conserved(list, got);
    });
}

/// (e) Hand-off publishes the element: a thread that pops an index sees
/// everything the previous holder wrote to that element before pushing it
/// (the map relies on this). The elements are loom cells, so loom reports
/// any access that is not ordered by happens-before as a data race.
#[test]
fn handoff_publishes_data() {
    use loom::cell::UnsafeCell;

    struct Shared {
        list: OwnedFreeList,
        data: [UnsafeCell<u32>; 2],
    }
    // SAFETY: an element's cell is only touched by the thread holding its
    // index (that is the property under test; loom checks it).
    unsafe impl Sync for Shared {}

    model("handoff_publishes_data", |first| {
        let shared = Arc::new(Shared {
            list: OwnedFreeList::new_populated(2, 2).unwrap(),
            data: [UnsafeCell::new(0), UnsafeCell::new(0)],
        });
        let worker = |cpu: usize, stamp: u32, s: Arc<Shared>| {
            move || {
                let list = s.list.list();
                let i = list.pop(cpu)?;
                // SAFETY: we hold `i`; loom checks the claim.
                let seen = s.data[i as usize].with_mut(|p| unsafe {
                    let seen = *p;
                    *p = stamp;
                    seen
                });
                list.push(cpu, i);
                Some((i, seen))
            }
        };
        let t1 = thread::spawn(worker(0, 1, shared.clone()));
        let t2 = thread::spawn(worker(0, 2, shared.clone()));
        first();
        let (r1, r2) = (t1.join().unwrap(), t2.join().unwrap());
        // 2 elements and 2 threads that each hold at most one: both got one.
        let ((i1, seen1), (i2, seen2)) = (r1.unwrap(), r2.unwrap());
        if i1 == i2 {
            // One ran after the other: exactly one saw the other's stamp.
            assert!(seen1 == 2 || seen2 == 1, "a stamp was lost");
        }
        assert_conserved(shared.list.list(), []);
    });
}

/// (f) Three threads pop and push back on two CPUs with two elements, so
/// at times one of them finds both stacks empty; pops never share an index.
#[test]
fn three_threads_two_cpus() {
    model("three_threads_two_cpus", |first| {
        let owned = Arc::new(OwnedFreeList::new_populated(2, 2).unwrap());
        let spawn = |cpu: usize| {
            let o = owned.clone();
            thread::spawn(move || {
                let list = o.list();
                let got = list.pop(cpu);
                if let Some(i) = got {
                    list.push(cpu + 1, i);
                }
                got
            })
        };
        let (t1, t2) = (spawn(0), spawn(1));
        first();
        let list = owned.list();
        let mine = list.pop(1);
        // Each thread pushed back what it popped: only `mine` is held.
        t1.join().unwrap();
        t2.join().unwrap();
        assert_conserved(list, mine);
    });
}

/// (g) Longer histories on one CPU: two threads each pop and push back
/// twice while the main thread holds one of the three elements, so tags
/// move several times during another thread's pop.
#[test]
fn two_rounds_one_cpu() {
    model("two_rounds_one_cpu", |first| {
        let owned = Arc::new(OwnedFreeList::new_populated(1, 3).unwrap());
        let spawn = || {
            let o = owned.clone();
            thread::spawn(move || {
                let list = o.list();
                for _ in 0..2 {
                    let i = list.pop(0).expect("3 elements, at most 2 elsewhere");
                    list.push(0, i);
                }
            })
        };
        let (t1, t2) = (spawn(), spawn());
        first();
        let list = owned.list();
        let mine = list.pop(0).expect("3 elements, at most 2 elsewhere");
        t1.join().unwrap();
        t2.join().unwrap();
        assert_conserved(list, [mine]);
    });
}
