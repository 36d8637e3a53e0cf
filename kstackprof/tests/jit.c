/*
 * A stand-in for a JIT, for tests/profile.rs: copies a small counting loop
 * into anonymous executable memory, names it in /tmp/perf-PID.map (the
 * perf map convention JIT runtimes use), and spends its time there.
 *
 * Usage: jit [ITERATIONS]  (default 2e9; about a second per 1e9)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	uint64_t n = argc > 1 ? strtoull(argv[1], 0, 10) : 2000000000ULL;
	/* mov rcx, imm64; 1: dec rcx; jnz 1b; ret */
	unsigned char code[] = {0x48, 0xb9, 0, 0, 0, 0, 0, 0, 0, 0,
				0x48, 0xff, 0xc9, 0x75, 0xfb, 0xc3};
	memcpy(code + 2, &n, 8);
	unsigned char *mem = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return 2;
	memcpy(mem, code, sizeof code);
	char path[64];
	snprintf(path, sizeof path, "/tmp/perf-%d.map", getpid());
	FILE *f = fopen(path, "w");
	if (!f)
		return 3;
	fprintf(f, "%lx %zx jitted_counting_loop\n", (unsigned long)mem, sizeof code);
	fclose(f);
	((void (*)(void))mem)();
	return 0;
}
