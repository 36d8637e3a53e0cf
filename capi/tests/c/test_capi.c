/*
 * The C API from C: kstackmap.h and libkstackmap, as a C kernel uses them.
 *
 *   gcc -std=c11 -Wall -Wextra -Werror -pthread -I capi/include \
 *       capi/tests/c/test_capi.c target/capi/libkstackmap.a -o test_capi
 *   ./test_capi ../shared/vectors/jhash2.tsv
 *
 * Ids are checked against the kernel's: id = jhash2(ips as u32 words,
 * 2 * nr, 0) & (n_buckets - 1), with a C copy of include/linux/jhash.h
 * that is first checked against every vector in jhash2.tsv (values from
 * the kernel's header). Then: every vector chain as a stack in a map in
 * a static array; two threads of inserts, lookups and deletes on a map in
 * a malloc'd block at an odd address; a depot in a static array and two
 * threads interning into one at an odd address; and the errno convention
 * on bad input. Prints "N passed, N failed";
 * exits non-zero on any failure.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kstackmap.h"

static atomic_int passed, failed;

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (cond) {                                                            \
            atomic_fetch_add(&passed, 1);                                      \
        } else {                                                               \
            atomic_fetch_add(&failed, 1);                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);    \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
        }                                                                      \
    } while (0)

#define CHECK_EQ(got, want)                                                    \
    CHECK((long)(got) == (long)(want), "got %ld, want %ld", (long)(got),       \
          (long)(want))

/* include/linux/jhash.h */
static uint32_t rol32(uint32_t w, unsigned s) { return (w << s) | (w >> (32 - s)); }

#define JHASH_INITVAL 0xdeadbeefu
#define jhash_mix(a, b, c)                                                     \
    {                                                                          \
        a -= c; a ^= rol32(c, 4);  c += b;                                     \
        b -= a; b ^= rol32(a, 6);  a += c;                                     \
        c -= b; c ^= rol32(b, 8);  b += a;                                     \
        a -= c; a ^= rol32(c, 16); c += b;                                     \
        b -= a; b ^= rol32(a, 19); a += c;                                     \
        c -= b; c ^= rol32(b, 4);  b += a;                                     \
    }
#define jhash_final(a, b, c)                                                   \
    {                                                                          \
        c ^= b; c -= rol32(b, 14);                                             \
        a ^= c; a -= rol32(c, 11);                                             \
        b ^= a; b -= rol32(a, 25);                                             \
        c ^= b; c -= rol32(b, 16);                                             \
        a ^= c; a -= rol32(c, 4);                                              \
        b ^= a; b -= rol32(a, 14);                                             \
        c ^= b; c -= rol32(b, 24);                                             \
    }

static uint32_t jhash2(const uint32_t *k, uint32_t length, uint32_t initval)
{
    uint32_t a, b, c;
    a = b = c = JHASH_INITVAL + (length << 2) + initval;
    while (length > 3) {
        a += k[0];
        b += k[1];
        c += k[2];
        jhash_mix(a, b, c);
        length -= 3;
        k += 3;
    }
    switch (length) {
    case 3:
        c += k[2];
        /* fallthrough */
    case 2:
        b += k[1];
        /* fallthrough */
    case 1:
        a += k[0];
        jhash_final(a, b, c);
        break;
    default:
        break;
    }
    return c;
}

/* The kernel's stack id of ips[0..nr) in a map of n_buckets buckets. */
static uint32_t kernel_id(const uint64_t *ips, uint32_t nr, long n_buckets)
{
    uint32_t words[2 * 127];
    for (uint32_t i = 0; i < nr; i++) {
        words[2 * i] = (uint32_t)ips[i]; /* little-endian: low word first */
        words[2 * i + 1] = (uint32_t)(ips[i] >> 32);
    }
    return jhash2(words, 2 * nr, 0) & (uint32_t)(n_buckets - 1);
}

/* ---- the vectors ---------------------------------------------------- */

struct vector {
    uint32_t words[256];
    uint32_t n, initval, hash;
};

static struct vector vectors[256];
static int n_vectors;

static void read_vectors(const char *path)
{
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "cannot open %s", path);
    if (!f)
        return;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0 && n_vectors < 256) {
        if (line[0] == '#')
            continue;
        struct vector *v = &vectors[n_vectors];
        char *p = line;
        v->n = 0;
        while (*p != '\t' && *p && v->n < 256) {
            char *end;
            v->words[v->n++] = (uint32_t)strtoul(p, &end, 16);
            p = end;
            while (*p == ' ')
                p++;
        }
        if (*p != '\t')
            continue;
        char *end;
        v->initval = (uint32_t)strtoul(p + 1, &end, 16);
        v->hash = (uint32_t)strtoul(end + 1, NULL, 16);
        n_vectors++;
    }
    free(line);
    fclose(f);
}

static void test_jhash2_is_the_kernels(void)
{
    int ok = 0;
    for (int i = 0; i < n_vectors; i++) {
        struct vector *v = &vectors[i];
        uint32_t h = jhash2(v->words, v->n, v->initval);
        CHECK(h == v->hash, "vector %d: jhash2 %08x, kernel %08x", i, h, v->hash);
        ok += h == v->hash;
    }
    CHECK(n_vectors >= 100, "only %d vectors read", n_vectors);
    printf("jhash2: %d/%d kernel vectors\n", ok, n_vectors);
}

/* ---- a map in a static array: every vector chain ---------------------- */

static _Alignas(16) unsigned char static_mem[4 << 20];

static void test_vector_chains_get_kernel_ids(void)
{
    struct ksm_map_attr attr = {
        .max_entries = 1000, /* 1024 buckets */
        .key_size = 4,
        .value_size = 127 * 8,
    };
    long size = ksm_map_storage_size(&attr, 4, KSM_PERF_MAX_STACK_DEPTH);
    CHECK(size > 0 && (size_t)size <= sizeof static_mem, "storage size %ld", size);
    struct ksm_map *m = NULL;
    CHECK_EQ(ksm_map_init(&m, static_mem, sizeof static_mem, &attr, 4,
                          KSM_PERF_MAX_STACK_DEPTH), 0);
    CHECK_EQ(ksm_map_n_buckets(m), 1024);
    int chains = 0;
    for (int i = 0; i < n_vectors; i++) {
        struct vector *v = &vectors[i];
        if (v->initval != 0 || v->n == 0 || v->n % 2 || v->n > 254)
            continue;
        uint32_t nr = v->n / 2;
        uint64_t ips[127];
        for (uint32_t j = 0; j < nr; j++)
            ips[j] = v->words[2 * j] | (uint64_t)v->words[2 * j + 1] << 32;
        long want = v->hash & 1023;
        /* REUSE: vectors that share a bucket replace each other. */
        long id = ksm_get_stackid(m, (uint32_t)i, ips, nr, KSM_F_REUSE_STACKID);
        CHECK(id == want, "vector %d (%u frames): id %ld, kernel %ld", i, nr, id, want);
        CHECK_EQ(ksm_get_stackid(m, 0, ips, nr, 0), want);
        uint64_t back[127];
        long n = ksm_lookup_ips(m, (uint32_t)want, back, 127);
        CHECK(n == nr && memcmp(back, ips, nr * 8) == 0, "vector %d: read back %ld", i, n);
        /* The value bytes: the frames, then zeroes. */
        unsigned char value[127 * 8];
        memset(value, 0xff, sizeof value);
        CHECK_EQ(ksm_lookup(m, (uint32_t)want, value, sizeof value), 0);
        int tail_zero = 1;
        for (size_t j = nr * 8; j < sizeof value; j++)
            tail_zero &= value[j] == 0;
        CHECK(memcmp(value, ips, nr * 8) == 0 && tail_zero, "vector %d: value bytes", i);
        chains++;
    }
    CHECK(chains >= 30, "only %d vector chains", chains);
    printf("map in a static array: %d vector chains, ids = kernel jhash2 ids\n", chains);
}

/* ---- two threads on a map at an odd address ------------------------- */

#define THREAD_OPS 20000
#define SHARED_CHAINS 48

struct worker {
    const struct ksm_map *m;
    uint32_t cpu;
    long n_buckets;
    long got[SHARED_CHAINS]; /* phase 2: the id each shared chain got */
    int inserted, exist, nomem;
};

/* Both threads start together, so that their calls overlap. */
static atomic_int gate;

static void wait_gate(void)
{
    atomic_fetch_add(&gate, 1);
    while (atomic_load(&gate) < 2)
        ;
}

static void chain_of(uint64_t *ips, uint32_t nr, uint64_t seed)
{
    for (uint32_t j = 0; j < nr; j++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        ips[j] = seed >> 12;
    }
}

static void *own_chains(void *arg)
{
    struct worker *w = arg;
    wait_gate();
    for (int i = 0; i < THREAD_OPS; i++) {
        uint64_t ips[6];
        uint32_t nr = 1 + (uint32_t)(i % 6);
        chain_of(ips, nr, (uint64_t)w->cpu << 32 | (uint64_t)i);
        long id = ksm_get_stackid(w->m, w->cpu, ips, nr, 0);
        if (id < 0) {
            /* The other thread's stack holds the bucket, or every element
             * is in someone's hands. */
            CHECK(id == -EEXIST || id == -ENOMEM, "thread %u: %ld", w->cpu, id);
            w->exist += id == -EEXIST;
            w->nomem += id == -ENOMEM;
            continue;
        }
        w->inserted++;
        CHECK(id == kernel_id(ips, nr, w->n_buckets), "thread %u: id %ld", w->cpu, id);
        /* Nobody else deletes or replaces our stack: it is there until we
         * delete it, and a second call is a hit. */
        uint64_t back[8];
        long n = ksm_lookup_ips(w->m, (uint32_t)id, back, 8);
        CHECK(n == nr && memcmp(back, ips, nr * 8) == 0, "thread %u: read back %ld", w->cpu, n);
        CHECK_EQ(ksm_get_stackid(w->m, w->cpu, ips, nr, 0), id);
        CHECK_EQ(ksm_delete(w->m, (uint32_t)id), 0);
    }
    return NULL;
}

static void *shared_chains(void *arg)
{
    struct worker *w = arg;
    wait_gate();
    for (int round = 0; round < 50; round++) {
        for (int k = 0; k < SHARED_CHAINS; k++) {
            int i = w->cpu % 2 ? SHARED_CHAINS - 1 - k : k;
            uint64_t ips[4];
            chain_of(ips, 4, 0xabc000 + (uint64_t)i);
            long id = ksm_get_stackid(w->m, w->cpu, ips, 4, 0);
            if (id >= 0) {
                CHECK(id == kernel_id(ips, 4, w->n_buckets), "shared %d: id %ld", i, id);
                CHECK(w->got[i] < 0 || w->got[i] == id, "shared %d: %ld then %ld", i,
                      w->got[i], id);
                w->got[i] = id;
            } else {
                CHECK(id == -EEXIST, "shared %d: %ld", i, id);
            }
        }
    }
    return NULL;
}

static void test_two_threads_at_an_odd_address(void)
{
    struct ksm_map_attr attr = {
        .max_entries = 64, .key_size = 4, .value_size = 8 * 8,
    };
    long size = ksm_map_storage_size(&attr, 2, KSM_PERF_MAX_STACK_DEPTH);
    CHECK(size > 0, "storage size %ld", size);
    unsigned char *block = malloc((size_t)size + 1);
    CHECK(block != NULL, "malloc");
    if (!block)
        return;
    unsigned char *odd = block + 1; /* malloc's alignment + 1: odd */
    struct ksm_map *m = NULL;
    CHECK_EQ(ksm_map_init(&m, odd, (size_t)size, &attr, 2, KSM_PERF_MAX_STACK_DEPTH), 0);
    CHECK((unsigned char *)m >= odd && (unsigned char *)m < odd + size, "handle inside the block");

    /* Phase 1: each thread its own chains: insert, look up, delete. */
    struct worker w[2];
    pthread_t t[2];
    atomic_store(&gate, 0);
    for (int i = 0; i < 2; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].m = m;
        w[i].cpu = (uint32_t)i;
        w[i].n_buckets = 64;
        pthread_create(&t[i], NULL, own_chains, &w[i]);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    uint32_t next;
    CHECK_EQ(ksm_get_next_key(m, NULL, &next), -ENOENT); /* all deleted */
    printf("2 threads, own chains: %d + %d inserted, %d + %d EEXIST, %d + %d ENOMEM\n",
           w[0].inserted, w[1].inserted, w[0].exist, w[1].exist, w[0].nomem, w[1].nomem);
    CHECK(w[0].inserted > THREAD_OPS / 4 && w[1].inserted > THREAD_OPS / 4, "few inserts");

    /* Phase 2: both threads the same chains, in opposite orders; no
     * deletes, so a stack once stored is never lost or replaced. */
    atomic_store(&gate, 0);
    for (int i = 0; i < 2; i++) {
        for (int k = 0; k < SHARED_CHAINS; k++)
            w[i].got[k] = -1;
        pthread_create(&t[i], NULL, shared_chains, &w[i]);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    int stored = 0;
    for (int k = 0; k < SHARED_CHAINS; k++) {
        long id = w[0].got[k] >= 0 ? w[0].got[k] : w[1].got[k];
        if (id < 0)
            continue;
        stored++;
        CHECK(w[1].got[k] < 0 || w[1].got[k] == id, "shared %d: ids %ld, %ld", k,
              w[0].got[k], w[1].got[k]);
        uint64_t ips[4], back[8];
        chain_of(ips, 4, 0xabc000 + (uint64_t)k);
        long n = ksm_lookup_ips(m, (uint32_t)id, back, 8);
        CHECK(n == 4 && memcmp(back, ips, sizeof ips) == 0, "shared %d: lost", k);
    }
    /* Every occupied bucket holds one of the chains. */
    int occupied = 0;
    uint32_t key;
    const uint32_t *prev = NULL;
    while (ksm_get_next_key(m, prev, &next) == 0) {
        occupied++;
        key = next;
        prev = &key;
    }
    CHECK_EQ(occupied, stored);
    printf("2 threads, shared chains: %d of %d stored, none lost\n", stored, SHARED_CHAINS);
    free(block);
}

/* ---- the depot: a static array, then two threads at an odd address --- */

static _Alignas(8) unsigned char depot_static[1 << 20];

static void test_depot_in_a_static_array(void)
{
    struct ksm_depot_config cfg = { .capacity = 512, .arena_words = 8192, .nr_cpus = 2, .seed = 7 };
    long size = ksm_depot_storage_size(&cfg);
    CHECK(size > 0 && (size_t)size <= sizeof depot_static, "depot size %ld", size);
    struct ksm_depot *d = NULL;
    CHECK_EQ(ksm_depot_init(&d, depot_static, sizeof depot_static, &cfg), 0);
    long ids[256];
    const struct vector *chain[256];
    int n = 0;
    for (int i = 0; i < n_vectors && n < 256; i++) {
        struct vector *v = &vectors[i];
        if (v->n == 0 || v->n % 2 || v->n > 254)
            continue;
        uint32_t nr = v->n / 2;
        uint64_t ips[127];
        for (uint32_t j = 0; j < nr; j++)
            ips[j] = v->words[2 * j] | (uint64_t)v->words[2 * j + 1] << 32;
        long id = ksm_depot_intern(d, 0, ips, nr);
        CHECK(id >= 0 && id < 512, "vector %d: %ld", i, id);
        CHECK_EQ(ksm_depot_intern(d, 1, ips, nr), id); /* same frames, same id */
        for (int k = 0; k < n; k++) /* different chains, different ids */
            CHECK((ids[k] == id) == (chain[k]->n == v->n &&
                                     memcmp(chain[k]->words, v->words, v->n * 4) == 0),
                  "vector %d: id %ld", i, id);
        const uint64_t *frames = NULL;
        CHECK_EQ(ksm_depot_get(d, (uint32_t)id, &frames), nr);
        CHECK(frames != NULL && memcmp(frames, ips, nr * 8) == 0, "vector %d: frames", i);
        /* In place: the words live in the caller's block. */
        CHECK((const unsigned char *)frames >= depot_static &&
              (const unsigned char *)frames < depot_static + sizeof depot_static,
              "frames outside the block");
        chain[n] = v;
        ids[n++] = id;
    }
    int distinct = 0;
    for (int k = 0; k < n; k++) {
        int first = 1;
        for (int j = 0; j < k; j++)
            first &= ids[j] != ids[k];
        distinct += first;
    }
    CHECK_EQ(ksm_depot_len(d), distinct);
    printf("depot in a static array: %d vector chains, %d stacks, frames in place\n", n, distinct);
}

#define DEPOT_STACKS 2000

struct depot_worker {
    const struct ksm_depot *d;
    uint32_t cpu;
    long ids[DEPOT_STACKS];
};

static void *depot_interns(void *arg)
{
    struct depot_worker *w = arg;
    wait_gate();
    for (int round = 0; round < 3; round++) {
        for (int k = 0; k < DEPOT_STACKS; k++) {
            int i = w->cpu % 2 ? DEPOT_STACKS - 1 - k : k;
            uint64_t ips[12];
            uint32_t nr = 1 + (uint32_t)(i % 12);
            chain_of(ips, nr, 0xde9000 + (uint64_t)i);
            long id = ksm_depot_intern(w->d, w->cpu, ips, nr);
            CHECK(id >= 0, "depot stack %d: %ld", i, id);
            CHECK(round == 0 || id == w->ids[i], "depot stack %d: %ld then %ld", i, w->ids[i], id);
            w->ids[i] = id;
            const uint64_t *frames;
            CHECK(ksm_depot_get(w->d, (uint32_t)id, &frames) == nr &&
                  memcmp(frames, ips, nr * 8) == 0, "depot stack %d: frames", i);
        }
    }
    return NULL;
}

static void test_depot_two_threads_at_an_odd_address(void)
{
    /* Room for every stack, with slack for what racing interns waste. */
    struct ksm_depot_config cfg = {
        .capacity = DEPOT_STACKS + 64, .arena_words = DEPOT_STACKS * 8 + 1024, .nr_cpus = 2,
        .seed = 99,
    };
    long size = ksm_depot_storage_size(&cfg);
    CHECK(size > 0, "depot size %ld", size);
    unsigned char *block = malloc((size_t)size + 1);
    CHECK(block != NULL, "malloc");
    if (!block)
        return;
    struct ksm_depot *d = NULL;
    CHECK_EQ(ksm_depot_init(&d, block + 1, (size_t)size, &cfg), 0);
    static struct depot_worker w[2];
    pthread_t t[2];
    atomic_store(&gate, 0);
    for (int i = 0; i < 2; i++) {
        w[i].d = d;
        w[i].cpu = (uint32_t)i;
        pthread_create(&t[i], NULL, depot_interns, &w[i]);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    /* Both threads got the same id for each stack, and no id twice. */
    static unsigned char seen[DEPOT_STACKS + 64];
    int same = 0, unique = 1;
    for (int i = 0; i < DEPOT_STACKS; i++) {
        same += w[0].ids[i] == w[1].ids[i];
        long id = w[0].ids[i];
        if (id >= 0 && id < DEPOT_STACKS + 64) {
            unique &= !seen[id];
            seen[id] = 1;
        }
    }
    CHECK_EQ(same, DEPOT_STACKS);
    CHECK(unique, "an id names two stacks");
    CHECK_EQ(ksm_depot_len(d), DEPOT_STACKS);
    /* Fill it: new stacks are refused, the stored ones still found. */
    long r = 0;
    int more = 0;
    for (uint64_t i = 1; i <= 4096 && r >= 0; i++) {
        uint64_t fresh[] = { i, 0xf00d };
        r = ksm_depot_intern(d, 0, fresh, 2);
        more += r >= 0;
    }
    CHECK_EQ(r, -ENOMEM);
    for (int i = 0; i < DEPOT_STACKS; i += 97) {
        uint64_t ips[12];
        uint32_t nr = 1 + (uint32_t)(i % 12);
        chain_of(ips, nr, 0xde9000 + (uint64_t)i);
        CHECK_EQ(ksm_depot_intern(d, 0, ips, nr), w[0].ids[i]);
    }
    printf("depot, 2 threads: %d stacks, the same ids in both threads; full after %d more\n",
           DEPOT_STACKS, more);
    free(block);
}

static void test_depot_errnos(void)
{
    struct ksm_depot_config cfg = { .capacity = 4, .arena_words = 16, .nr_cpus = 1, .seed = 0 };
    static _Alignas(8) unsigned char mem[1 << 14];
    struct ksm_depot *d = NULL;
    long size = ksm_depot_storage_size(&cfg);
    CHECK(size > 0 && (size_t)size < sizeof mem, "size %ld", size);
    CHECK_EQ(ksm_depot_storage_size(NULL), -EINVAL);
    struct ksm_depot_config bad[] = {
        { 0, 16, 1, 0 }, { (1u << 24) + 1, 16, 1, 0 }, { 4, 1, 1, 0 },
        { 4, (1ull << 31) + 1, 1, 0 }, { 4, 16, 0, 0 },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(ksm_depot_storage_size(&bad[i]) == -EINVAL, "bad config %zu", i);
        CHECK(ksm_depot_init(&d, mem, sizeof mem, &bad[i]) == -EINVAL, "bad config %zu", i);
    }
    CHECK_EQ(ksm_depot_init(NULL, mem, sizeof mem, &cfg), -EINVAL);
    CHECK_EQ(ksm_depot_init(&d, NULL, sizeof mem, &cfg), -EINVAL);
    CHECK_EQ(ksm_depot_init(&d, mem, sizeof mem, NULL), -EINVAL);
    CHECK_EQ(ksm_depot_init(&d, mem + 3, (size_t)size - 1, &cfg), -ENOMEM);
    CHECK(d == NULL, "*out written by a failed init");
    CHECK_EQ(ksm_depot_init(&d, mem + 3, (size_t)size, &cfg), 0);
    uint64_t a[] = { 1, 2, 3 };
    const uint64_t *frames;
    CHECK_EQ(ksm_depot_intern(NULL, 0, a, 3), -EINVAL);
    CHECK_EQ(ksm_depot_intern(d, 0, NULL, 3), -EINVAL);
    CHECK_EQ(ksm_depot_intern(d, 0, a, 0), -EINVAL); /* an empty stack */
    CHECK_EQ(ksm_depot_intern(d, 0, a, 3), 0);
    CHECK_EQ(ksm_depot_get(d, 1, &frames), -ENOENT);
    CHECK_EQ(ksm_depot_get(d, 0, NULL), -EINVAL);
    CHECK_EQ(ksm_depot_get(NULL, 0, &frames), -EINVAL);
    CHECK_EQ(ksm_depot_clear(d), 0);
    CHECK_EQ(ksm_depot_len(d), 0);
    CHECK_EQ(ksm_depot_get(d, 0, &frames), -ENOENT);
}

/* ---- the errno convention ------------------------------------------- */

static void test_errnos(void)
{
    struct ksm_map_attr attr = { .max_entries = 1, .key_size = 4, .value_size = 32 };
    static _Alignas(8) unsigned char mem[1 << 16];
    struct ksm_map *m = NULL;
    long size = ksm_map_storage_size(&attr, 1, 127);
    CHECK(size > 0 && (size_t)size < sizeof mem - 1, "size %ld", size);

    /* NULL pointers and lengths that don't fit: -EINVAL; short: -ENOMEM. */
    CHECK_EQ(ksm_map_storage_size(NULL, 1, 127), -EINVAL);
    CHECK_EQ(ksm_map_init(NULL, mem, sizeof mem, &attr, 1, 127), -EINVAL);
    CHECK_EQ(ksm_map_init(&m, NULL, sizeof mem, &attr, 1, 127), -EINVAL);
    CHECK_EQ(ksm_map_init(&m, mem, sizeof mem, NULL, 1, 127), -EINVAL);
    CHECK_EQ(ksm_map_init(&m, mem, SIZE_MAX, &attr, 1, 127), -EINVAL);
    CHECK_EQ(ksm_map_init(&m, mem, (size_t)size - 1, &attr, 1, 127), -ENOMEM);
    CHECK_EQ(ksm_map_init(&m, mem + 1, (size_t)size - 1, &attr, 1, 127), -ENOMEM);
    CHECK_EQ(ksm_map_init(&m, mem, 0, &attr, 1, 127), -ENOMEM);
    CHECK_EQ(ksm_map_init(&m, mem, sizeof mem, &attr, 0, 127), -EINVAL);
    CHECK(m == NULL, "*out written by a failed init");

    /* Bad attributes: the kernel's BPF_MAP_CREATE errnos. */
    struct { struct ksm_map_attr a; uint32_t max_stack; long err; } bad[] = {
        { { 1, 8, 32, 0, 0 }, 127, -EINVAL },            /* key_size != 4 */
        { { 1, 4, 12, 0, 0 }, 127, -EINVAL },            /* value_size % 8 */
        { { 1, 4, 4, 0, 0 }, 127, -EINVAL },             /* value_size < 8 */
        { { 0, 4, 32, 0, 0 }, 127, -EINVAL },            /* max_entries 0 */
        { { 1, 4, 128 * 8, 0, 0 }, 127, -EINVAL },       /* deeper than max_stack */
        { { 1, 4, 32, 0, 0 }, 3, -EINVAL },              /* ... with max_stack 3 */
        { { 1, 4, 32, KSM_F_RDONLY | KSM_F_WRONLY, 0 }, 127, -EINVAL },
        { { 1, 4, 32, 1 /* BPF_F_NO_PREALLOC */, 0 }, 127, -EINVAL },
        { { 1, 4, 48, KSM_F_STACK_BUILD_ID, 0 }, 127, -EINVAL }, /* 48 % 32 */
        { { 1, 4, 32, KSM_F_NUMA_NODE, 5 }, 127, -EINVAL },      /* no node 5 */
        { { (1u << 31) + 1, 4, 32, 0, 0 }, 127, -E2BIG },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(ksm_map_storage_size(&bad[i].a, 1, bad[i].max_stack) == bad[i].err,
              "bad attr %zu: %ld", i, ksm_map_storage_size(&bad[i].a, 1, bad[i].max_stack));
        CHECK(ksm_map_init(&m, mem, sizeof mem, &bad[i].a, 1, bad[i].max_stack) == bad[i].err,
              "bad attr %zu", i);
    }

    /* One element, one bucket, at an odd address. */
    CHECK_EQ(ksm_map_init(&m, mem + 1, (size_t)size, &attr, 1, 127), 0);
    uint64_t a[] = { 0x1000, 0x2000, 0x3000 }, b[] = { 0x4000, 0x5000 };
    CHECK_EQ(ksm_get_stackid(NULL, 0, a, 3, 0), -EINVAL);
    CHECK_EQ(ksm_get_stackid(m, 0, NULL, 3, 0), -EINVAL);
    CHECK_EQ(ksm_get_stackid(m, 0, a, 0, 0), -EFAULT);   /* nr <= skip */
    CHECK_EQ(ksm_get_stackid(m, 0, a, 3, 3), -EFAULT);   /* skip 3 of 3 */
    CHECK_EQ(ksm_get_stackid(m, 0, a, 3, 1u << 20), -EINVAL); /* unknown flag */
    CHECK_EQ(ksm_get_stackid(m, 0, a, 3, 0), 0);
    CHECK_EQ(ksm_get_stackid(m, 0, b, 2, 0), -EEXIST);   /* bucket taken */
    CHECK_EQ(ksm_get_stackid(m, 0, b, 2, KSM_F_REUSE_STACKID), -ENOMEM); /* no element */
    CHECK_EQ(ksm_get_stackid(m, 0, b, 2, KSM_F_FAST_STACK_CMP), -EEXIST);
    CHECK_EQ(ksm_get_stackid(m, 0, a, 3, 1), -EEXIST);   /* skip 1: another stack */
    unsigned char value[32];
    CHECK_EQ(ksm_lookup(m, 0, value, sizeof value), 0);
    CHECK_EQ(ksm_lookup(m, 0, value, 31), -EINVAL);      /* short value */
    CHECK_EQ(ksm_lookup(m, 0, NULL, 32), -EINVAL);
    CHECK_EQ(ksm_lookup(NULL, 0, value, 32), -EINVAL);
    CHECK_EQ(ksm_lookup(m, 1, value, 32), -ENOENT);      /* past the buckets */
    CHECK_EQ(ksm_delete(m, 1), -E2BIG);
    CHECK_EQ(ksm_delete(NULL, 0), -EINVAL);
    uint32_t next = 7, key = 0;
    CHECK_EQ(ksm_get_next_key(m, NULL, NULL), -EINVAL);
    CHECK_EQ(ksm_get_next_key(m, NULL, &next), 0);
    CHECK_EQ(next, 0);
    CHECK_EQ(ksm_get_next_key(m, &key, &next), -ENOENT);
    CHECK_EQ(ksm_delete(m, 0), 0);
    CHECK_EQ(ksm_delete(m, 0), -ENOENT);
    CHECK_EQ(ksm_lookup(m, 0, value, 32), -ENOENT);
    CHECK_EQ(ksm_get_stackid(m, 0, b, 2, 0), 0);         /* the element is free again */

    /* RDONLY / WRONLY restrict the syscall side only. */
    struct ksm_map_attr ro = attr, wo = attr;
    ro.map_flags = KSM_F_RDONLY;
    wo.map_flags = KSM_F_WRONLY;
    CHECK_EQ(ksm_map_init(&m, mem, sizeof mem, &ro, 1, 127), 0);
    CHECK_EQ(ksm_get_stackid(m, 0, a, 3, 0), 0);
    CHECK_EQ(ksm_delete(m, 0), -EPERM);
    CHECK_EQ(ksm_lookup(m, 0, value, 32), 0);
    CHECK_EQ(ksm_map_init(&m, mem, sizeof mem, &wo, 1, 127), 0);
    CHECK_EQ(ksm_get_stackid(m, 0, a, 3, 0), 0);
    CHECK_EQ(ksm_lookup(m, 0, value, 32), -EPERM);
    CHECK_EQ(ksm_get_next_key(m, NULL, &next), -EPERM);
    CHECK_EQ(ksm_delete(m, 0), 0);

    /* The header's errnos are the platform's. */
    CHECK(KSM_EINVAL == EINVAL && KSM_ENOMEM == ENOMEM && KSM_EEXIST == EEXIST &&
          KSM_EFAULT == EFAULT && KSM_ENOENT == ENOENT && KSM_E2BIG == E2BIG &&
          KSM_EPERM == EPERM, "KSM_E* differ from errno.h");
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s .../vectors/jhash2.tsv\n", argv[0]);
        return 2;
    }
    read_vectors(argv[1]);
    test_jhash2_is_the_kernels();
    test_vector_chains_get_kernel_ids();
    test_two_threads_at_an_odd_address();
    test_errnos();
    test_depot_in_a_static_array();
    test_depot_two_threads_at_an_odd_address();
    test_depot_errnos();
    int p = atomic_load(&passed), f = atomic_load(&failed);
    printf("%d passed, %d failed\n", p, f);
    return f ? 1 : 0;
}
