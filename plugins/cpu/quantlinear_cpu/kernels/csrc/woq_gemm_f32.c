/*
 * Weight-only-quantized GEMM with fp32 activations, fp32 accumulation and fp32 output:
 *     y[m, n] = sum_g ( s[n,g] * sum_{k in g} x[m,k] * q[n,k]  -  zs[n,g] * sum_{k in g} x[m,k] )
 * which is x @ ((q - z) * s)^T with zs = z * s precomputed in fp32.
 *
 * Used by quantlinear_cpu.kernels.native (cpu.native_f32).  PyTorch's int4/int8 CPU ops are only
 * vectorized for bf16 activations; their fp32 path is scalar.  This file is compiled on first
 * use on the machine that runs it (-march=native) and loaded with ctypes: no Python C API, no
 * torch headers, so building takes about a second.
 *
 * Weight layout, blocked over 16 output channels ("lanes") so that one SIMD register holds 16
 * outputs and no horizontal reduction is ever needed, and over pairs of k so that one 16-byte
 * load feeds two k without any byte shuffle:
 *   nibble mode (bits <= 4): codes[nb][k/2][16]  byte j = lane j of k even (low nibble)
 *                                                        | lane j of k odd (high nibble) << 4
 *   byte mode   (bits <= 8): codes[nb][k][16]    one byte per lane
 *   scales[nb][g][16], zs[nb][g][16] fp32.
 * K and the group size are even (checked by the caller), so pairs never straddle a group.
 * Each k pair feeds two independent accumulators per row (no FMA latency chain), and up to 8
 * activation rows share every decoded weight vector.  Threads (OpenMP, sharing PyTorch's
 * libgomp) split the 16-lane output blocks.
 */
#include <stdint.h>
#include <string.h>
#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define LANES 16
#define MAXR 8

#if defined(__AVX512F__)
typedef __m512 vec;
static inline vec vzero(void) { return _mm512_setzero_ps(); }
static inline vec vfma(float a, vec b, vec c) { return _mm512_fmadd_ps(_mm512_set1_ps(a), b, c); }
static inline vec vu8(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)); }
/* the two k of one pair */
static inline void decode_pair(const uint8_t *p, int nibble, vec *w0, vec *w1) {
    if (nibble) {
        const __m128i m = _mm_set1_epi8(15);
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        *w0 = vu8(_mm_and_si128(v, m));
        *w1 = vu8(_mm_and_si128(_mm_srli_epi16(v, 4), m));
    } else {
        *w0 = vu8(_mm_loadu_si128((const __m128i *)p));
        *w1 = vu8(_mm_loadu_si128((const __m128i *)(p + LANES)));
    }
}
static inline vec vload(const float *p) { return _mm512_loadu_ps(p); }
static inline vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
static inline vec vgroup(vec out, vec s, vec acc, vec z, float xs) {  /* out + s*acc - z*xs */
    return _mm512_fnmadd_ps(z, _mm512_set1_ps(xs), _mm512_fmadd_ps(s, acc, out));
}
static inline void vstore(float *p, vec v) { _mm512_storeu_ps(p, v); }
#else
typedef struct { float v[LANES]; } vec;
static inline vec vzero(void) { vec r; memset(&r, 0, sizeof r); return r; }
static inline vec vfma(float a, vec b, vec c) { for (int j = 0; j < LANES; j++) c.v[j] += a * b.v[j]; return c; }
static inline void decode_pair(const uint8_t *p, int nibble, vec *w0, vec *w1) {
    for (int j = 0; j < LANES; j++) {
        if (nibble) { w0->v[j] = (float)(p[j] & 15); w1->v[j] = (float)(p[j] >> 4); }
        else { w0->v[j] = (float)p[j]; w1->v[j] = (float)p[j + LANES]; }
    }
}
static inline vec vload(const float *p) { vec r; memcpy(r.v, p, sizeof r.v); return r; }
static inline vec vadd(vec a, vec b) { for (int j = 0; j < LANES; j++) a.v[j] += b.v[j]; return a; }
static inline vec vgroup(vec out, vec s, vec acc, vec z, float xs) {
    for (int j = 0; j < LANES; j++) out.v[j] += s.v[j] * acc.v[j] - z.v[j] * xs;
    return out;
}
static inline void vstore(float *p, vec v) { memcpy(p, v.v, sizeof v.v); }
#endif

/* R rows of x (R <= MAXR) against one 16-lane block. */
static inline __attribute__((always_inline)) void block_rows(
    const int R, const float *x, int64_t ldx, const float *xsum, int G, const uint8_t *codes, int64_t K,
    int gs, int nibble, const float *scales, const float *zs, float *y, int64_t ldy) {
    const int64_t pair_bytes = nibble ? LANES : 2 * LANES;
    vec out[MAXR];
    for (int r = 0; r < R; r++) out[r] = vzero();
    for (int g = 0; g < G; g++) {
        const int64_t k0 = (int64_t)g * gs, k1 = k0 + gs < K ? k0 + gs : K;
        vec a0[MAXR], a1[MAXR];
        for (int r = 0; r < R; r++) { a0[r] = vzero(); a1[r] = vzero(); }
        const uint8_t *p = codes + (k0 / 2) * pair_bytes;
        for (int64_t k = k0; k < k1; k += 2, p += pair_bytes) {
            vec w0, w1;
            decode_pair(p, nibble, &w0, &w1);
            for (int r = 0; r < R; r++) {
                a0[r] = vfma(x[r * ldx + k], w0, a0[r]);
                a1[r] = vfma(x[r * ldx + k + 1], w1, a1[r]);
            }
        }
        const vec s = vload(scales + (int64_t)g * LANES), z = vload(zs + (int64_t)g * LANES);
        for (int r = 0; r < R; r++) out[r] = vgroup(out[r], s, vadd(a0[r], a1[r]), z, xsum[r * G + g]);
    }
    for (int r = 0; r < R; r++) vstore(y + r * ldy, out[r]);
}

#define ROWS(R) block_rows(R, x + m * K, K, xsum + m * G, G, c, K, gs, nibble, s, z, yb + m * N, N)

/* Returns 0 on success.  x: [M, K] fp32 contiguous; y: [M, N] fp32; N % 16 == 0; K, gs even. */
int woq_gemm_f32(const float *x, int64_t M, int64_t K, const uint8_t *codes, const float *scales,
                 const float *zs, float *y, int64_t N, int gs, int nibble, int nthreads,
                 float *xsum /* scratch [M, G] */) {
    if (N % LANES || gs <= 0 || gs % 2 || K % 2) return 1;
    const int G = (int)((K + gs - 1) / gs);
    const int64_t NB = N / LANES;
    const int64_t block_bytes = K * (nibble ? LANES / 2 : LANES);
    for (int64_t m = 0; m < M; m++)
        for (int g = 0; g < G; g++) {
            int64_t k0 = (int64_t)g * gs, k1 = k0 + gs < K ? k0 + gs : K;
            float t = 0.f;
            for (int64_t k = k0; k < k1; k++) t += x[m * K + k];
            xsum[m * G + g] = t;
        }
    if (nthreads < 1) nthreads = 1;
    if (nthreads > NB) nthreads = (int)NB;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t nb = 0; nb < NB; nb++) {
        const uint8_t *c = codes + nb * block_bytes;
        const float *s = scales + nb * (int64_t)G * LANES;
        const float *z = zs + nb * (int64_t)G * LANES;
        float *yb = y + nb * LANES;
        int64_t m = 0;
        for (; m + 8 <= M; m += 8) ROWS(8);
        switch (M - m) {
            case 7: ROWS(7); break;
            case 6: ROWS(6); break;
            case 5: ROWS(5); break;
            case 4: ROWS(4); break;
            case 3: ROWS(3); break;
            case 2: ROWS(2); break;
            case 1: ROWS(1); break;
            default: break;
        }
    }
    return 0;
}

int woq_abi_version(void) { return 2; }
