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
 * takes about a millisecond of CPU and 2500 rounds give some 2500 samples
 * at 999 Hz, spread evenly over the calls of every round.
 *
 * Usage: accuracy [ROUNDS]   (default 2500)
 */
#include <stdint.h>
#include <stdlib.h>

#define UNIT 50000ULL

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
	long rounds = argc > 1 ? atol(argv[1]) : 2500;
	for (long r = 0; r < rounds; r++) {
		fn_a(4);
		fn_b(3);
		path_one(1);
		path_two(1);
		fn_d(1);
	}
	return 0;
}
