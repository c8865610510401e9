/* cpu_features.c - run-time detection of the host CPU's instruction sets (cpu.h), and the build
 * facts the build system passes in. Kernels dispatch on ts_cpu_features_get(); `tessera info`
 * prints ts_cpu_features_format(). Only the architecture's own query is compiled: cpuid/xgetbv
 * on x86-64, getauxval hwcaps on aarch64; elsewhere every feature reads false. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "tessera/core.h"
#include "tessera/cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TS_CPU_X86 1
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#define TS_CPU_ARM64 1
#include <sys/auxv.h>
#endif

/* ---------------------------------------------------------------- model name */

/* Copies the value of the first "key : value" line of /proc/cpuinfo whose key is `key`. */
static bool cpuinfo_value(const char *key, char *out, size_t size) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return false;
    char line[512];
    bool found = false;
    size_t klen = strlen(key);
    while (!found && fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) != 0) continue;
        const char *p = line + klen;
        while (*p == ' ' || *p == '\t') p++;
        if (*p != ':') continue; /* a longer key that merely starts with `key` */
        p++;
        while (*p == ' ' || *p == '\t') p++;
        snprintf(out, size, "%s", p);
        out[strcspn(out, "\n")] = '\0';
        found = out[0] != '\0';
    }
    fclose(f);
    return found;
}

#if TS_CPU_X86
/* cpuid leaves 0x80000002..4 hold the 48-byte brand string, padded with spaces. */
static bool x86_brand_string(char *out, size_t size) {
    unsigned int max_ext, b, c, d;
    __cpuid(0x80000000u, max_ext, b, c, d);
    if (max_ext < 0x80000004u) return false;
    unsigned int regs[12];
    for (unsigned int i = 0; i < 3; i++)
        __cpuid(0x80000002u + i, regs[4 * i], regs[4 * i + 1], regs[4 * i + 2], regs[4 * i + 3]);
    char brand[49];
    memcpy(brand, regs, 48);
    brand[48] = '\0';
    const char *start = brand;
    while (*start == ' ') start++;
    size_t len = strlen(start);
    while (len > 0 && start[len - 1] == ' ') len--;
    if (len == 0) return false;
    snprintf(out, size, "%.*s", (int)len, start);
    return true;
}
#endif

static void detect_model_name(char *out, size_t size) {
#if TS_CPU_X86
    if (x86_brand_string(out, size)) return;
#endif
    if (cpuinfo_value("model name", out, size) || cpuinfo_value("Model", out, size) ||
        cpuinfo_value("Hardware", out, size) || cpuinfo_value("cpu model", out, size))
        return;
    /* aarch64 Linux often names only the implementer and part numbers. */
    char impl[32], part[32];
    if (cpuinfo_value("CPU implementer", impl, sizeof impl) && cpuinfo_value("CPU part", part, sizeof part)) {
        snprintf(out, size, "implementer %s part %s", impl, part);
        return;
    }
    snprintf(out, size, "unknown");
}

/* ---------------------------------------------------------------- x86-64 */

#if TS_CPU_X86
/* XCR0: which register states the OS saves on context switch. Executed only when cpuid says
 * OSXSAVE, otherwise the instruction faults. Encoded as bytes so no -mxsave flag is needed. */
static unsigned long long read_xcr0(void) {
    unsigned int lo, hi;
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static bool bit(unsigned int reg, int n) { return (reg >> n) & 1u; }

static void detect_x86(ts_cpu_features *f) {
    unsigned int max_leaf, a, b, c, d;
    if (!__get_cpuid(0, &max_leaf, &b, &c, &d)) return;
    __cpuid(1, a, b, c, d);
    unsigned int ecx1 = c;
    bool osxsave = bit(ecx1, 27);
    unsigned long long xcr0 = osxsave ? read_xcr0() : 0;
    bool os_ymm = (xcr0 & 0x6) == 0x6;      /* SSE + AVX state */
    bool os_zmm = (xcr0 & 0xE6) == 0xE6;    /* + opmask, ZMM_Hi256, Hi16_ZMM */
    bool os_amx = (xcr0 & 0x60000) == 0x60000; /* XTILECFG + XTILEDATA */

    f->sse4_2 = bit(ecx1, 20);
    f->avx = bit(ecx1, 28) && os_ymm;
    f->fma = bit(ecx1, 12) && os_ymm;
    f->f16c = bit(ecx1, 29) && os_ymm;
    if (max_leaf < 7) return;

    __cpuid_count(7, 0, a, b, c, d);
    unsigned int max_sub7 = a, ebx7 = b, ecx7 = c, edx7 = d;
    f->avx2 = bit(ebx7, 5) && os_ymm;
    f->avx512f = bit(ebx7, 16) && os_zmm;
    f->avx512dq = bit(ebx7, 17) && os_zmm;
    f->avx512bw = bit(ebx7, 30) && os_zmm;
    f->avx512vl = bit(ebx7, 31) && os_zmm;
    f->avx512_vnni = bit(ecx7, 11) && os_zmm;
    f->amx_bf16 = bit(edx7, 22) && os_amx;
    f->amx_tile = bit(edx7, 24) && os_amx;
    f->amx_int8 = bit(edx7, 25) && os_amx;
    if (max_sub7 >= 1) {
        __cpuid_count(7, 1, a, b, c, d);
        f->avx512_bf16 = bit(a, 5) && os_zmm;
    }
}
#endif

/* ---------------------------------------------------------------- aarch64 */

#if TS_CPU_ARM64
/* Bit numbers from the kernel's uapi asm/hwcap.h, spelled out so older headers still build. */
#define TS_HWCAP_ASIMD (1ul << 1)
#define TS_HWCAP_ASIMDDP (1ul << 20)
#define TS_HWCAP_SVE (1ul << 22)
#define TS_HWCAP2_I8MM (1ul << 13)
#define TS_HWCAP2_BF16 (1ul << 14)

static void detect_arm64(ts_cpu_features *f) {
    unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    f->asimd = (hw & TS_HWCAP_ASIMD) != 0;
    f->asimddp = (hw & TS_HWCAP_ASIMDDP) != 0;
    f->sve = (hw & TS_HWCAP_SVE) != 0;
    f->i8mm = (hw2 & TS_HWCAP2_I8MM) != 0;
    f->bf16 = (hw2 & TS_HWCAP2_BF16) != 0;
}
#endif

/* ---------------------------------------------------------------- public */

void ts_cpu_features_detect(ts_cpu_features *out) {
    memset(out, 0, sizeof *out);
#if TS_CPU_X86
    snprintf(out->arch, sizeof out->arch, "x86_64");
    detect_x86(out);
#elif TS_CPU_ARM64
    snprintf(out->arch, sizeof out->arch, "aarch64");
    detect_arm64(out);
#else
    snprintf(out->arch, sizeof out->arch, "unknown");
#endif
    detect_model_name(out->model_name, sizeof out->model_name);
    out->logical_cores = ts_cpu_count();
}

static ts_cpu_features cached_features;
static pthread_once_t cached_once = PTHREAD_ONCE_INIT;
static void detect_cached(void) { ts_cpu_features_detect(&cached_features); }

const ts_cpu_features *ts_cpu_features_get(void) {
    pthread_once(&cached_once, detect_cached);
    return &cached_features;
}

const char *ts_cpu_features_format(const ts_cpu_features *f, char *buf, size_t size) {
    if (!buf || size == 0) return buf;
    const struct { bool on; const char *name; } names[] = {
        {f->sse4_2, "sse4.2"},         {f->avx, "avx"},           {f->avx2, "avx2"},
        {f->fma, "fma"},               {f->f16c, "f16c"},         {f->avx512f, "avx512f"},
        {f->avx512bw, "avx512bw"},     {f->avx512vl, "avx512vl"}, {f->avx512dq, "avx512dq"},
        {f->avx512_vnni, "avx512_vnni"}, {f->avx512_bf16, "avx512_bf16"}, {f->amx_tile, "amx_tile"},
        {f->amx_int8, "amx_int8"},     {f->amx_bf16, "amx_bf16"}, {f->asimd, "asimd"},
        {f->asimddp, "asimddp"},       {f->sve, "sve"},           {f->bf16, "bf16"},
        {f->i8mm, "i8mm"},
    };
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (!names[i].on) continue;
        int n = snprintf(buf + used, size - used, "%s%s", used ? " " : "", names[i].name);
        if (n < 0 || (size_t)n >= size - used) { /* does not fit: keep only whole names */
            buf[used] = '\0';
            break;
        }
        used += (size_t)n;
    }
    if (used == 0) snprintf(buf, size, "none");
    return buf;
}

/* ---------------------------------------------------------------- build facts */

#ifndef TS_COMPILER
#define TS_COMPILER "unknown compiler"
#endif
#ifndef TS_BUILD_TYPE
#define TS_BUILD_TYPE "unknown"
#endif
#ifndef TS_BUILD_SANITIZE
#define TS_BUILD_SANITIZE 0
#endif

ts_build_info ts_build_info_get(void) {
    ts_build_info b = {
        .version = TS_VERSION_STRING,
        .compiler = TS_COMPILER,
        .build_type = TS_BUILD_TYPE,
        .sanitizers = TS_BUILD_SANITIZE != 0,
    };
    return b;
}
