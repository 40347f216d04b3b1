/* Int8 weight-only linear layers, and a whole decode step of a Llama-shaped decoder built from them, on the CPU.
 *
 * kvserve_int8_linear: y[m, n] = scale[n] * sum_k x[m, k] * w[n, k] + bias[n]
 *   x float [M, K] (rows ldx floats apart), w int8 [N, K] contiguous, scale float [N], bias float [N] or NULL,
 *   y float [M, N] (rows ldy floats apart). The products and sums are float32: the result is the float32
 *   product with the dequantized weight (w * scale), in another summation order. Output rows are split into
 *   tiles of TILE weight rows; threads take contiguous runs of tiles (each streams its own part of w).
 *
 * kvserve_w8a8_linear: the same product with int8 activations (W8A8): each row of x is quantized to
 *   xq = round(127 x / r), r = max |x| (one scale per row), and y[m, n] = sum_k xq[m, k] w[n, k] (exact int32)
 *   * (1/127 * scale[n]) * r[m] + bias[n]. The weight codes must lie in [-63, 63] (7 bits): AVX2 multiplies
 *   unsigned activation bytes (xq + 128) by signed weight bytes and adds pairs in 16 bits, which 7-bit weights
 *   cannot overflow; wsum[n] = sum_k w[n, k] takes the +128 back out. engine/quantization/w8a8.py's scheme.
 *
 * kvserve_llama_decode: one token for each of M sequences through every layer, then the final norm:
 *   x = embed[ids]
 *   per layer: h = rms_norm(x); qkv = h Wqkv^T; RoPE on q and k (cos/sin rows at each token's position);
 *              k, v stored at the token's cache slot (slot < 0: not stored); o = paged attention of q over the
 *              sequence's cached keys (the function pointer `attention`: paged_decode.c's entry point);
 *              x += o Wo^T; h = rms_norm(x); a = silu(h Wg^T) * (h Wu^T); x += a Wd^T
 *   out = rms_norm(x)
 * Each layer's tensors are LAYER_FIELDS addresses in `layers` (in the enum's order); a NULL bias is none;
 * `w8a8` says which product the projections use (their wsum fields are read only then).
 * The caches are float [num_blocks, block_size, KVH, D], or int8 codes of that shape with float scales
 * [num_blocks, block_size, KVH] (KSCALES / VSCALES non-NULL): each stored head vector x becomes
 * scale = max(max |x|, 1e-12) / 127 and codes round(x / scale) (half to even), as kernels.reference.quantize_kv_ref.
 * Shapes: dims = {H, NH, KVH, D, I, block_size}.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define DS_AVX2 1
#endif

#define TILE 16 /* weight rows per task */
#ifndef MCHUNK
#define MCHUNK 64 /* batch rows per pass over the weights (larger batches: one pass per chunk) */
#endif
#ifndef PREFETCH
#define PREFETCH 2048
#endif

enum { LN1, WQKV, SQKV, BQKV, WO, SO, BO, LN2, WGU, SGU, BGU, WD, SD, BD, KCACHE, VCACHE, QKV_WSUM, O_WSUM, GU_WSUM,
       D_WSUM, KSCALES, VSCALES, LAYER_FIELDS };

/* how many addresses a layer has in `layers`: the binding checks it against its own list when it loads */
int64_t kvserve_decode_layer_fields(void) { return LAYER_FIELDS; }

#ifdef DS_AVX2
static inline float hsum(__m256 v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* 8 int8 weights as floats */
static inline __m256 load8(const int8_t *w) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)w)));
}
#endif

/* *out = dot(x, w) over K: one batch row (dot4: four rows sharing each weight load) */
static inline void dot1(const float *x, const int8_t *w, int64_t K, float *out) {
    int64_t k = 0;
    float s = 0.f;
#ifdef DS_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0; /* four chains: FMA latency */
    for (; k + 32 <= K; k += 32) {
        _mm_prefetch((const char *)(w + k + PREFETCH), _MM_HINT_T0);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), load8(w + k), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), load8(w + k + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 16), load8(w + k + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 24), load8(w + k + 24), a3);
    }
    for (; k + 8 <= K; k += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), load8(w + k), a0);
    s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#endif
    for (; k < K; k++) s += x[k] * (float)w[k];
    *out = s;
}

static inline void dot4(const float *x0, const float *x1, const float *x2, const float *x3, const int8_t *w,
                        int64_t K, float *out) {
    int64_t k = 0;
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#ifdef DS_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (; k + 16 <= K; k += 16) {
        const __m256 w0 = load8(w + k), w1 = load8(w + k + 8);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + k), w0, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + k), w0, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x2 + k), w0, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x3 + k), w0, a3);
        b0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + k + 8), w1, b0);
        b1 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + k + 8), w1, b1);
        b2 = _mm256_fmadd_ps(_mm256_loadu_ps(x2 + k + 8), w1, b2);
        b3 = _mm256_fmadd_ps(_mm256_loadu_ps(x3 + k + 8), w1, b3);
    }
    for (; k + 8 <= K; k += 8) {
        const __m256 w0 = load8(w + k);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + k), w0, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + k), w0, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x2 + k), w0, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x3 + k), w0, a3);
    }
    s0 = hsum(_mm256_add_ps(a0, b0));
    s1 = hsum(_mm256_add_ps(a1, b1));
    s2 = hsum(_mm256_add_ps(a2, b2));
    s3 = hsum(_mm256_add_ps(a3, b3));
#endif
    for (; k < K; k++) {
        const float wk = (float)w[k];
        s0 += x0[k] * wk;
        s1 += x1[k] * wk;
        s2 += x2[k] * wk;
        s3 += x3[k] * wk;
    }
    out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

/* sums[m] = dot(x row m, w) for every m < M */
static inline void dot_rows(const float *x, int64_t M, int64_t ldx, const int8_t *w, int64_t K, float *sums) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4)
        dot4(x + m * ldx, x + (m + 1) * ldx, x + (m + 2) * ldx, x + (m + 3) * ldx, w, K, sums + m);
    for (; m < M; m++) dot1(x + m * ldx, w, K, sums + m);
}

/* W8A8: dot products of activation bytes u (xq + 128) with 7-bit weight codes, exact in int32 */
static inline int32_t udot1(const uint8_t *u, const int8_t *w, int64_t K) {
    int64_t k = 0;
    int32_t s = 0;
#ifdef DS_AVX2
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a = _mm256_setzero_si256();
    for (; k + 32 <= K; k += 32) {
        _mm_prefetch((const char *)(w + k + PREFETCH), _MM_HINT_T0);
        const __m256i p = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(u + k)),
                                               _mm256_loadu_si256((const __m256i *)(w + k)));
        a = _mm256_add_epi32(a, _mm256_madd_epi16(p, ones));
    }
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
    s = _mm_cvtsi128_si32(h);
#endif
    for (; k < K; k++) s += (int32_t)u[k] * (int32_t)w[k];
    return s;
}

static inline void udot4(const uint8_t *u0, const uint8_t *u1, const uint8_t *u2, const uint8_t *u3,
                         const int8_t *w, int64_t K, int32_t *out) {
    int64_t k = 0;
    int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#ifdef DS_AVX2
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (; k + 32 <= K; k += 32) {
        const __m256i wk = _mm256_loadu_si256((const __m256i *)(w + k));
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(u0 + k)), wk), ones));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(u1 + k)), wk), ones));
        a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(u2 + k)), wk), ones));
        a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(u3 + k)), wk), ones));
    }
    /* the four rows' eight lanes reduced together */
    const __m256i h01 = _mm256_hadd_epi32(a0, a1), h23 = _mm256_hadd_epi32(a2, a3);
    const __m256i h = _mm256_hadd_epi32(h01, h23); /* per 128-bit half: s0 s1 s2 s3 */
    const __m128i t = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    s0 = _mm_extract_epi32(t, 0), s1 = _mm_extract_epi32(t, 1), s2 = _mm_extract_epi32(t, 2);
    s3 = _mm_extract_epi32(t, 3);
#endif
    for (; k < K; k++) {
        const int32_t wk = w[k];
        s0 += (int32_t)u0[k] * wk;
        s1 += (int32_t)u1[k] * wk;
        s2 += (int32_t)u2[k] * wk;
        s3 += (int32_t)u3[k] * wk;
    }
    out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

/* An activation batch as a product reads it: float rows, or (W8A8) bytes xq + 128 and each row's r / 127 */
typedef struct {
    const float *x;
    int64_t ldx;
    const uint8_t *u;
    const float *r;
} Acts;

/* sums[m] = dot(row m, w) for every m < M, in float; W8A8: the exact int32 sum of xq * w (u's +128 taken out
 * with wsum = sum_k w[k]) before the conversion */
static inline void act_dots(const Acts *a, int64_t M, const int8_t *w, int32_t wsum, int64_t K, float *sums) {
    if (!a->u) {
        dot_rows(a->x, M, a->ldx, w, K, sums);
        return;
    }
    int64_t m = 0;
    int32_t s[4];
    for (; m + 4 <= M; m += 4) {
        udot4(a->u + m * K, a->u + (m + 1) * K, a->u + (m + 2) * K, a->u + (m + 3) * K, w, K, s);
        for (int j = 0; j < 4; j++) sums[m + j] = (float)(s[j] - 128 * wsum);
    }
    for (; m < M; m++) sums[m] = (float)(udot1(a->u + m * K, w, K) - 128 * wsum);
}

/* xq + 128 and r / 127 of each row of x (W8A8's activation quantization) */
static void quantize_rows(const float *x, int64_t M, int64_t ldx, int64_t K, uint8_t *u, float *r) {
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * ldx;
        float mx = 0.f;
        for (int64_t k = 0; k < K; k++) mx = fmaxf(mx, fabsf(xm[k]));
        mx = fmaxf(mx, 1e-30f);
        const float inv = 127.f / mx;
        for (int64_t k = 0; k < K; k++) u[m * K + k] = (uint8_t)(int32_t)(nearbyintf(xm[k] * inv) + 128.f);
        r[m] = mx / 127.f;
    }
}

typedef struct {
    const int8_t *w;
    const float *scale, *bias;
    const int32_t *wsum; /* W8A8: sum_k w[n, k]; NULL: weight-only (float activations) */
    int64_t N, K;
} QLinear;

/* row m's value of output n from its dot product: the weight's scale, W8A8's row scale and +128 offset */
static inline float finish(const QLinear *l, const Acts *a, int64_t m, int64_t n, float dot) {
    return l->wsum ? dot * l->scale[n] * a->r[m] : dot * l->scale[n];
}

/* Weight rows [n0, n1) of y = x w^T * scale + bias (accumulate: y +=), for M <= MCHUNK batch rows. */
static void linear_rows(const QLinear *l, const Acts *a, int64_t M, float *y, int64_t ldy, int accumulate,
                        int64_t n0, int64_t n1) {
    float sums[MCHUNK];
    for (int64_t n = n0; n < n1; n++) {
        act_dots(a, M, l->w + n * l->K, l->wsum ? l->wsum[n] : 0, l->K, sums);
        const float b = l->bias ? l->bias[n] : 0.f;
        for (int64_t m = 0; m < M; m++) {
            float *dst = y + m * ldy + n;
            const float v = finish(l, a, m, n, sums[m]) + b;
            *dst = accumulate ? *dst + v : v;
        }
    }
}

/* The activations as l reads them; W8A8 quantizes into `scratch` (M * (K + 4) bytes). */
static Acts acts_for(const QLinear *l, const float *x, int64_t M, int64_t ldx, uint8_t *scratch) {
    Acts a = {x, ldx, NULL, NULL};
    if (l->wsum) {
        float *r = (float *)scratch;
        uint8_t *u = scratch + sizeof(float) * (size_t)M;
        quantize_rows(x, M, ldx, l->K, u, r);
        a.u = u, a.r = r;
    }
    return a;
}

/* M <= MCHUNK rows of y = x w^T ... (`linear` below) */
static int linear_chunk(const QLinear *l, const float *x, int64_t M, int64_t ldx, float *y, int64_t ldy,
                        int accumulate, int threads) {
    uint8_t *scratch = l->wsum ? malloc((size_t)(M * (l->K + 4))) : NULL;
    if (l->wsum && !scratch) return 1;
    const Acts a = acts_for(l, x, M, ldx, scratch);
    const int64_t tiles = (l->N + TILE - 1) / TILE;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && tiles > 1)
    for (int64_t t = 0; t < tiles; t++) {
        const int64_t n1 = (t + 1) * TILE < l->N ? (t + 1) * TILE : l->N;
        linear_rows(l, &a, M, y, ldy, accumulate, t * TILE, n1);
    }
    free(scratch);
    return 0;
}

/* y = x w^T ... for the whole batch, MCHUNK rows at a time: each task's weight rows stay in cache while every
 * row of the chunk passes over them, and a chunk's activations stay in L2 */
static int linear(const QLinear *l, const float *x, int64_t M, int64_t ldx, float *y, int64_t ldy, int accumulate,
                  int threads) {
    for (int64_t m0 = 0; m0 < M; m0 += MCHUNK) {
        const int64_t mc = M - m0 < MCHUNK ? M - m0 : MCHUNK;
        if (linear_chunk(l, x + m0 * ldx, mc, ldx, y + m0 * ldy, ldy, accumulate, threads)) return 1;
    }
    return 0;
}

void kvserve_int8_linear(const float *x, int64_t M, int64_t ldx, const int8_t *w, const float *scale,
                         const float *bias, int64_t N, int64_t K, float *y, int64_t ldy, int threads) {
    const QLinear l = {w, scale, bias, NULL, N, K};
    linear(&l, x, M, ldx, y, ldy, 0, threads); /* float activations: no scratch, nothing can fail */
}

int kvserve_w8a8_linear(const float *x, int64_t M, int64_t ldx, const int8_t *w, const float *scale,
                        const int32_t *wsum, const float *bias, int64_t N, int64_t K, float *y, int64_t ldy,
                        int threads) {
    const QLinear l = {w, scale, bias, wsum, N, K};
    return linear(&l, x, M, ldx, y, ldy, 0, threads);
}

/* a[m, i] = silu(h g_i) * (h u_i) for the gate rows [0, I) and up rows [I, 2I) of one fused weight, for
 * M <= MCHUNK rows; a task computes the same range of gate and up rows, so the activation needs no second pass. */
static int gate_up_chunk(const QLinear *l, const float *h, int64_t M, int64_t H, float *a, int threads) {
    const int64_t I = l->N / 2, tiles = (I + TILE - 1) / TILE;
    uint8_t *scratch = l->wsum ? malloc((size_t)(M * (H + 4))) : NULL;
    if (l->wsum && !scratch) return 1;
    const Acts acts = acts_for(l, h, M, H, scratch);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && tiles > 1)
    for (int64_t t = 0; t < tiles; t++) {
        float sums[2 * MCHUNK];
        const int64_t n1 = (t + 1) * TILE < I ? (t + 1) * TILE : I;
        for (int64_t n = t * TILE; n < n1; n++) {
            act_dots(&acts, M, l->w + n * H, l->wsum ? l->wsum[n] : 0, H, sums);
            act_dots(&acts, M, l->w + (I + n) * H, l->wsum ? l->wsum[I + n] : 0, H, sums + MCHUNK);
            const float bg = l->bias ? l->bias[n] : 0.f, bu = l->bias ? l->bias[I + n] : 0.f;
            for (int64_t m = 0; m < M; m++) {
                const float g = finish(l, &acts, m, n, sums[m]) + bg;
                const float u = finish(l, &acts, m, I + n, sums[MCHUNK + m]) + bu;
                a[m * I + n] = g / (1.f + expf(-g)) * u;
            }
        }
    }
    free(scratch);
    return 0;
}

/* the whole batch, MCHUNK rows at a time, as `linear` takes it */
static int gate_up_silu(const QLinear *l, const float *h, int64_t M, int64_t H, float *a, int threads) {
    const int64_t I = l->N / 2;
    for (int64_t m0 = 0; m0 < M; m0 += MCHUNK) {
        const int64_t mc = M - m0 < MCHUNK ? M - m0 : MCHUNK;
        if (gate_up_chunk(l, h + m0 * H, mc, H, a + m0 * I, threads)) return 1;
    }
    return 0;
}

/* y = x / sqrt(mean(x^2) + eps) * w, row by row */
static void rms_norm(const float *x, const float *w, int64_t M, int64_t H, float eps, float *y) {
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * H;
        float ss = 0.f;
        for (int64_t i = 0; i < H; i++) ss += xm[i] * xm[i];
        const float r = 1.f / sqrtf(ss / (float)H + eps);
        for (int64_t i = 0; i < H; i++) y[m * H + i] = xm[i] * r * w[i];
    }
}

/* one token's KVH head vectors into an int8 cache slot: codes and one scale per head */
static void store_int8(const float *x, int64_t KVH, int64_t D, int8_t *codes, float *scales) {
    for (int64_t h = 0; h < KVH; h++, x += D, codes += D) {
        float mx = 0.f;
        for (int64_t i = 0; i < D; i++) mx = fmaxf(mx, fabsf(x[i]));
        const float scale = fmaxf(mx, 1e-12f) / 127.f;
        for (int64_t i = 0; i < D; i++) {
            const float q = nearbyintf(x[i] / scale); /* a true division, as the reference divides */
            codes[i] = (int8_t)(q > 127.f ? 127.f : (q < -127.f ? -127.f : q));
        }
        scales[h] = scale;
    }
}

/* transformers' rotate-half RoPE on n heads of D values: (x1, x2) -> (x1 c - x2 s, x2 c + x1 s) */
static void rope(float *v, int64_t n, int64_t D, const float *c, const float *s) {
    const int64_t half = D / 2;
    for (int64_t h = 0; h < n; h++, v += D)
        for (int64_t i = 0; i < half; i++) {
            const float x1 = v[i], x2 = v[half + i];
            v[i] = x1 * c[i] - x2 * s[i];
            v[half + i] = x2 * c[i] + x1 * s[i];
        }
}

typedef void (*attention_fn)(const float *, int64_t, float *, const void *, const void *, const float *,
                             const float *, int, const float *, const int64_t *, int64_t, const int64_t *,
                             const int64_t *, const int64_t *, int64_t, int64_t, int64_t, int64_t, int64_t, float,
                             float, int64_t, int);

static QLinear qlinear(const int64_t *f, int wi, int si, int bi, int sumi, int w8a8, int64_t N, int64_t K) {
    const QLinear l = {(const int8_t *)(intptr_t)f[wi], (const float *)(intptr_t)f[si],
                       (const float *)(intptr_t)f[bi], w8a8 ? (const int32_t *)(intptr_t)f[sumi] : NULL, N, K};
    return l;
}

int kvserve_llama_decode(const int64_t *layers, int64_t num_layers, const float *embed, const float *final_norm,
                         const int64_t *dims, float eps, float attn_scale, const float *cos_tab,
                         const float *sin_tab, int64_t rope_stride, const int64_t *ids, const int64_t *positions,
                         const int64_t *slots, int64_t M, const int64_t *block_tables, int64_t table_stride,
                         const int64_t *seq_lens, const int64_t *rows, void *attention, int64_t heads_per_task,
                         int w8a8, int threads, float *out) {
    const int64_t H = dims[0], NH = dims[1], KVH = dims[2], D = dims[3], I = dims[4], BS = dims[5];
    const int64_t QKV = (NH + 2 * KVH) * D;
    float *x = malloc(sizeof(float) * (size_t)(M * (2 * H + QKV + NH * D + I)));
    if (!x) return 1;
    float *h = x + M * H, *qkv = h + M * H, *att = qkv + M * QKV, *act = att + M * NH * D;
    for (int64_t m = 0; m < M; m++) memcpy(x + m * H, embed + ids[m] * H, sizeof(float) * (size_t)H);
    for (int64_t li = 0; li < num_layers; li++) {
        const int64_t *f = layers + li * LAYER_FIELDS;
        const QLinear wqkv = qlinear(f, WQKV, SQKV, BQKV, QKV_WSUM, w8a8, QKV, H);
        const QLinear wo = qlinear(f, WO, SO, BO, O_WSUM, w8a8, H, NH * D);
        const QLinear wgu = qlinear(f, WGU, SGU, BGU, GU_WSUM, w8a8, 2 * I, H);
        const QLinear wd = qlinear(f, WD, SD, BD, D_WSUM, w8a8, H, I);
        int err = 0;
        void *kc = (void *)(intptr_t)f[KCACHE], *vc = (void *)(intptr_t)f[VCACHE];
        float *ks = (float *)(intptr_t)f[KSCALES], *vs = (float *)(intptr_t)f[VSCALES];
        rms_norm(x, (const float *)(intptr_t)f[LN1], M, H, eps, h);
        err |= linear(&wqkv, h, M, H, qkv, QKV, 0, threads);
        for (int64_t m = 0; m < M; m++) {
            float *row = qkv + m * QKV;
            const float *c = cos_tab + positions[m] * rope_stride, *s = sin_tab + positions[m] * rope_stride;
            rope(row, NH + KVH, D, c, s); /* q's heads, then k's: adjacent */
            if (slots[m] >= 0 && ks) {
                store_int8(row + NH * D, KVH, D, (int8_t *)kc + slots[m] * KVH * D, ks + slots[m] * KVH);
                store_int8(row + (NH + KVH) * D, KVH, D, (int8_t *)vc + slots[m] * KVH * D, vs + slots[m] * KVH);
            } else if (slots[m] >= 0) {
                memcpy((float *)kc + slots[m] * KVH * D, row + NH * D, sizeof(float) * (size_t)(KVH * D));
                memcpy((float *)vc + slots[m] * KVH * D, row + (NH + KVH) * D, sizeof(float) * (size_t)(KVH * D));
            }
        }
        ((attention_fn)attention)(qkv, QKV, att, kc, vc, ks, vs, ks ? 1 : 0, NULL, block_tables, table_stride,
                                  seq_lens, NULL, rows, M, NH, KVH, D, BS, attn_scale, 0.f, heads_per_task, threads);
        err |= linear(&wo, att, M, NH * D, x, H, 1, threads);
        rms_norm(x, (const float *)(intptr_t)f[LN2], M, H, eps, h);
        err |= gate_up_silu(&wgu, h, M, H, act, threads);
        err |= linear(&wd, act, M, I, x, H, 1, threads);
        if (err) {
            free(x);
            return 1;
        }
    }
    rms_norm(x, final_norm, M, H, eps, out);
    free(x);
    return 0;
}
