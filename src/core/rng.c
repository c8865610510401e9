/* rng.c - xoshiro256** seeded through splitmix64: fast, reproducible across platforms, and
 * its whole state (four words) fits in a checkpoint. */
#include <math.h>

#include "tessera/core.h"

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void ts_rng_seed(ts_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t ts_rng_next(ts_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double ts_rng_uniform(ts_rng *r) { return (double)(ts_rng_next(r) >> 11) * 0x1.0p-53; }

/* Box-Muller without caching the second value, so the stream position is one number per call. */
double ts_rng_normal(ts_rng *r) {
    double u1 = ts_rng_uniform(r), u2 = ts_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
