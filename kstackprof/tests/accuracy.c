/*
 * A workload with known shares, for tests/profile.rs (accuracy against the
 * design and against `perf record -g`, and pprof against kstackprof's own
 * table). Built with `gcc -O1 -fno-omit-frame-pointer`.
 *
 * Each round does 10 units of the same arithmetic:
 *   fn_a 4 units (self 40 %), fn_b 3 (30 %), fn_d 1 (10 %),
 *   fn_c 2 units (20 %), reached through two call paths:
 *   main -> path_one -> fn_c (1 unit, 10 %) and main -> path_two -> fn_c
 *   (1 unit, 10 %).
 * Total shares: main 100 %, fn_a 40, fn_b 30, fn_c 20, fn_d 10,
 * path_one 10, path_two 10.
 *
 * Shares are set by work, not time, so a busy machine changes only how
 * long it takes (cpu-clock samples are taken only while it runs). A round
 * takes about 0.1 ms of CPU, fine-grained so that what other processes
 * do to the CPU (caches, a shared core) falls evenly on the functions, and
 * its calls come in a new random order each time, so that the sampling
 * period cannot lock onto the rhythm of the rounds (each sample then hits
 * a function with the probability of its share). 40000 rounds give some
 * 20000 samples at 4999 Hz.
 *
 * Usage: accuracy [ROUNDS]   (default 40000)
 */
#include <stdint.h>
#include <stdlib.h>

#define UNIT 5000ULL

/* The unit of work: an xorshift chain, in each function's own body (no
 * call: the function itself is the leaf). volatile keeps the compiler from
 * folding or vectorizing it. */
#define SPIN(units, seed)                                   \
	do {                                                    \
		volatile uint64_t x_ = (seed);                      \
		for (uint64_t i_ = 0; i_ < (units) * UNIT; i_++) {  \
			uint64_t v_ = x_;                               \
			v_ ^= v_ << 13;                                 \
			v_ ^= v_ >> 7;                                  \
			v_ ^= v_ << 17;                                 \
			x_ = v_;                                        \
		}                                                   \
		sink += x_;                                         \
	} while (0)

static volatile uint64_t sink;

__attribute__((noinline)) void fn_a(uint64_t units) { SPIN(units, 0xff51afd7ed558ccdULL); }
__attribute__((noinline)) void fn_b(uint64_t units) { SPIN(units, 0xc4ceb9fe1a85ec53ULL); }
__attribute__((noinline)) void fn_c(uint64_t units) { SPIN(units, 0x94d049bb133111ebULL); }
__attribute__((noinline)) void fn_d(uint64_t units) { SPIN(units, 0xbf58476d1ce4e5b9ULL); }

/* Two call paths into fn_c; the increment after the call keeps them from
 * becoming tail calls (which would drop them from the stack). */
__attribute__((noinline)) void path_one(uint64_t units) { fn_c(units); sink++; }
__attribute__((noinline)) void path_two(uint64_t units) { fn_c(units); sink++; }

int main(int argc, char **argv)
{
	long rounds = argc > 1 ? atol(argv[1]) : 40000;
	struct {
		void (*fn)(uint64_t);
		uint64_t units;
	} calls[] = {{fn_a, 4}, {fn_b, 3}, {path_one, 1}, {path_two, 1}, {fn_d, 1}};
	const int n = sizeof calls / sizeof calls[0];
	uint64_t rng = 0x9e3779b97f4a7c15ULL;
	for (long r = 0; r < rounds; r++) {
		/* A new order every round (Fisher-Yates on an xorshift), so that
		 * the sampling period cannot lock onto the round's rhythm. */
		for (int i = n - 1; i > 0; i--) {
			rng ^= rng << 13;
			rng ^= rng >> 7;
			rng ^= rng << 17;
			int j = (int)(rng % (uint64_t)(i + 1));
			__typeof__(calls[0]) t = calls[i];
			calls[i] = calls[j];
			calls[j] = t;
		}
		for (int i = 0; i < n; i++)
			calls[i].fn(calls[i].units);
	}
	return 0;
}
