//! loom models of kstackmap's concurrent protocols.
//!
//! Every model lives in `tests/` and is compiled only with `--cfg loom`:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p loom-tests --release
//! ```
//!
//! Without `--cfg loom` this crate is empty, so a plain `cargo test
//! --workspace` does not run (or build) the models.
#![no_std]

#[cfg(loom)]
extern crate std;

/// Runs `f` under loom (preemption bound `LOOM_MAX_PREEMPTIONS`, else 2)
/// and prints how many interleavings it explored: the models' shared
/// runner (`tests/freelist.rs` has its own, which also swaps the threads'
/// start order).
#[cfg(loom)]
pub fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    // std's atomic, not loom's: it counts executions across the model.
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    let start = std::time::Instant::now();
    b.check(move || {
        counter.fetch_add(1, Relaxed);
        f();
    });
    let n = runs.load(Relaxed);
    std::println!(
        "loom model {name}: {n} interleavings in {:.1?}",
        start.elapsed()
    );
}

/// Runs `a` and `b` on two spawned threads over one shared structure (a
/// map or a depot) and returns both results.
///
/// Both sides are spawned (rather than one on the model's main thread):
/// loom explores far fewer schedules when the main thread's accesses are
/// all loads that precede a spawned thread's stores.
#[cfg(loom)]
pub fn race<T, A, B>(
    shared: &loom::sync::Arc<T>,
    a: impl FnOnce(&T) -> A + Send + 'static,
    b: impl FnOnce(&T) -> B + Send + 'static,
) -> (A, B)
where
    T: Send + Sync + 'static,
    A: Send + 'static,
    B: Send + 'static,
{
    let (ta, tb) = (shared.clone(), shared.clone());
    let ta = loom::thread::spawn(move || a(&ta));
    let tb = loom::thread::spawn(move || b(&tb));
    (ta.join().unwrap(), tb.join().unwrap())
}
