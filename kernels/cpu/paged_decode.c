/* Paged decode attention for the CPU: one query token per sequence attends to its keys where they lie in the
 * paged cache (no gather into a contiguous copy), with an online softmax over one block at a time.
 *
 * Layouts:
 *   query           float [T, H, D], rows q_row_stride floats apart (a slice of a fused QKV output is fine);
 *                   sequence s reads row rows[s]
 *   out             float [T, H, D] contiguous; sequence s writes row rows[s], no other row is touched
 *   key/value cache float [num_blocks, block_size, KVH, D], or 8-bit codes of that shape (kind 1: int8,
 *                   kind 2: any 8-bit format, decoded through `lut`, 256 floats indexed by the code's byte)
 *   k/v scales      float [num_blocks, block_size, KVH] (8-bit caches only: value = decoded code * scale)
 *   block_tables    int64 [S, table_stride]; seq_lens, first_key, rows int64 [S]
 * Sequence s attends to keys first_key[s] .. seq_lens[s] - 1 (first_key > 0 under a sliding window; the
 * table entries of blocks wholly before it are never read).
 * The G = H / KVH query heads that share a KV head are computed together, so each key and value row is read
 * once per KV head; tasks (a sequence and a range of its KV heads) are spread over OpenMP threads.
 * Scores are q . k * scale, then softcap * tanh(score / softcap) when softcap > 0, as the torch path computes.
 * 8-bit rows are decoded once per block into a float scratch row, then read like a float cache.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define KV_AVX2 1
#endif

/* dot(a, b) over n floats. */
static inline float dot(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float s = 0.f;
#ifdef KV_AVX2
    __m256 x = _mm256_setzero_ps(), y = _mm256_setzero_ps();  /* two chains: FMA latency, not throughput */
    for (; i + 16 <= n; i += 16) {
        x = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), x);
        y = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), y);
    }
    for (; i + 8 <= n; i += 8) x = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), x);
    x = _mm256_add_ps(x, y);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    s = _mm_cvtss_f32(h);
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

#ifdef KV_AVX2
/* out[t] = dot(q, k + t * stride) for the 8 rows t = 0..7 (n = D, a multiple of 8): the eight sums are
 * reduced together (three rounds of pairwise adds), not each on its own. */
static inline void dot8(const float *q, const float *k, int64_t stride, int64_t n, float *out) {
    __m256 x0 = _mm256_setzero_ps(), x1 = x0, x2 = x0, x3 = x0, x4 = x0, x5 = x0, x6 = x0, x7 = x0;
    for (int64_t i = 0; i < n; i += 8) {
        const __m256 qi = _mm256_loadu_ps(q + i);
        x0 = _mm256_fmadd_ps(qi, _mm256_loadu_ps(k + i), x0);
        x1 = _mm256_fmadd_ps(qi, _mm256_loadu_ps(k + stride + i), x1);
        x2 = _mm256_fmadd_ps(qi, _mm256_loadu_ps(k + 2 * stride + i), x2);
        x3 = _mm256_fmadd_ps(qi, _mm256_loadu_ps(k + 3 * stride + i), x3);
        x4 = _mm256_fmadd_ps(qi, _mm256_loadu_ps(k + 4 * stride + i), x4);
        x5 = _mm256_fmadd_ps(qi, _mm256_loadu_ps(k + 5 * stride + i), x5);
        x6 = _mm256_fmadd_ps(qi, _mm256_loadu_ps(k + 6 * stride + i), x6);
        x7 = _mm256_fmadd_ps(qi, _mm256_loadu_ps(k + 7 * stride + i), x7);
    }
    const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(x0, x1), _mm256_hadd_ps(x2, x3));
    const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(x4, x5), _mm256_hadd_ps(x6, x7));
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31)));
}

/* e^x for x <= 0 (softmax weights after the max is subtracted): 2^n * p(r), x = n ln2 + r, |r| <= ln2 / 2,
 * p a degree-6 minimax polynomial (relative error ~1e-7, as expf); below -87 the result is 0. */
static inline __m256 exp_nonpositive(__m256 x) {
    const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  /* ln2 split in two for exactness */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}
#endif

/* max(init, x[0], ..., x[n - 1]). */
static inline float max_of(const float *x, int64_t n, float init) {
    int64_t i = 0;
    float mx = init;
#ifdef KV_AVX2
    __m256 v = _mm256_set1_ps(init);
    for (; i + 8 <= n; i += 8) v = _mm256_max_ps(v, _mm256_loadu_ps(x + i));
    float lanes[8];
    _mm256_storeu_ps(lanes, v);
    for (int k = 0; k < 8; k++) mx = lanes[k] > mx ? lanes[k] : mx;
#endif
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
}

/* x[i] = e^(x[i] - mx) for i in [0, n); returns their sum. */
static inline float exp_shifted(float *x, int64_t n, float mx) {
    int64_t i = 0;
    float sum = 0.f;
#ifdef KV_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(mx)));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    for (int k = 0; k < 8; k++) sum += lanes[k];
#endif
    for (; i < n; i++) { x[i] = expf(x[i] - mx); sum += x[i]; }
    return sum;
}

/* a[d] = a[d] * corr + sum over t in [t0, t1) of w[t] * rows[t * stride + d], for d in [0, D). */
static inline void accumulate(float *a, float corr, const float *w, const float *rows, int64_t stride, int64_t t0,
                              int64_t t1, int64_t D) {
    int64_t d = 0;
#ifdef KV_AVX2
    const __m256 c = _mm256_set1_ps(corr);
    for (; d + 32 <= D; d += 32) {  /* four independent chains per token */
        __m256 r0 = _mm256_mul_ps(_mm256_loadu_ps(a + d), c), r1 = _mm256_mul_ps(_mm256_loadu_ps(a + d + 8), c);
        __m256 r2 = _mm256_mul_ps(_mm256_loadu_ps(a + d + 16), c), r3 = _mm256_mul_ps(_mm256_loadu_ps(a + d + 24), c);
        for (int64_t t = t0; t < t1; t++) {
            const __m256 wt = _mm256_set1_ps(w[t]);
            const float *v = rows + t * stride + d;
            r0 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(v), r0);
            r1 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(v + 8), r1);
            r2 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(v + 16), r2);
            r3 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(v + 24), r3);
        }
        _mm256_storeu_ps(a + d, r0); _mm256_storeu_ps(a + d + 8, r1);
        _mm256_storeu_ps(a + d + 16, r2); _mm256_storeu_ps(a + d + 24, r3);
    }
    for (; d + 8 <= D; d += 8) {
        __m256 r = _mm256_mul_ps(_mm256_loadu_ps(a + d), c);
        for (int64_t t = t0; t < t1; t++)
            r = _mm256_fmadd_ps(_mm256_set1_ps(w[t]), _mm256_loadu_ps(rows + t * stride + d), r);
        _mm256_storeu_ps(a + d, r);
    }
#endif
    for (; d < D; d++) {
        float r = a[d] * corr;
        for (int64_t t = t0; t < t1; t++) r += w[t] * rows[t * stride + d];
        a[d] = r;
    }
}

/* The float rows of block blk, tokens [t0, t1), every KV head: [bs, KVH, D] from `scratch` (8-bit codes
 * decoded, times their scales, in one sequential pass), or the cache block itself when it holds floats. */
static const float *block_rows(const void *cache, const float *scales, int kind, const float *lut, int64_t blk,
                               int64_t t0, int64_t t1, int64_t KVH, int64_t D, int64_t bs, float *scratch) {
    if (kind == 0) return (const float *)cache + blk * bs * KVH * D;
    for (int64_t r = t0 * KVH; r < t1 * KVH; r++) {
        const int64_t row = blk * bs * KVH + r;
        const float sc = scales[row];
        float *dst = scratch + r * D;
        if (kind == 1) {
            const int8_t *src = (const int8_t *)cache + row * D;
            for (int64_t d = 0; d < D; d++) dst[d] = (float)src[d] * sc;
        } else {
            const uint8_t *src = (const uint8_t *)cache + row * D;
            for (int64_t d = 0; d < D; d++) dst[d] = lut[src[d]] * sc;
        }
    }
    return scratch;
}

/* Cache lines still to prefetch: two byte ranges, issued a few lines at a time between pieces of work (a
 * burst of prefetches would stall on the core's few outstanding misses instead of overlapping compute). */
typedef struct {
    const char *at[2];
    int64_t left[2];
} Prefetch;

static inline void prefetch_some(Prefetch *pf, int64_t lines) {
    for (int r = 0; r < 2 && lines > 0; r++)
        for (; pf->left[r] > 0 && lines > 0; lines--, pf->left[r] -= 64, pf->at[r] += 64)
            __builtin_prefetch(pf->at[r], 0, 3);
}

/* Sequence s, KV heads [h0, h1). Per block: scores token by token (the block read in address order), then
 * per query head the online-softmax update and the value rows summed in registers. While a block is worked
 * on, its value rows and the next block's key rows are prefetched. */
static void one_task(int64_t s, int64_t h0, int64_t h1, const float *query, int64_t q_row_stride, float *out,
                     const void *key_cache, const void *value_cache, const float *k_scales,
                     const float *v_scales, int kind, const float *lut, const int64_t *block_tables,
                     int64_t table_stride, const int64_t *seq_lens, const int64_t *first_key, const int64_t *rows,
                     int64_t num_heads, int64_t KVH, int64_t D, int64_t bs, float scale, float softcap) {
    const int64_t G = num_heads / KVH, NQ = (h1 - h0) * G, elem = kind ? 1 : 4, block_bytes = bs * KVH * D * elem;
    const int64_t len = seq_lens[s], start = first_key ? first_key[s] : 0;
    const float *q_in = query + rows[s] * q_row_stride + h0 * G * D;
    float *o = out + rows[s] * num_heads * D + h0 * G * D;
    float q[NQ * D], acc[NQ * D], m[NQ], l[NQ], p[NQ * bs];
    float kbuf[kind ? bs * KVH * D : 1], vbuf[kind ? bs * KVH * D : 1];
    for (int64_t i = 0; i < NQ * D; i++) { q[i] = q_in[i] * scale; acc[i] = 0.f; }
    for (int64_t j = 0; j < NQ; j++) { m[j] = -INFINITY; l[j] = 0.f; }
    const int64_t *table = block_tables + s * table_stride;
    for (int64_t b = start / bs; b * bs < len; b++) {
        const int64_t blk = table[b];
        const int64_t t0 = start > b * bs ? start - b * bs : 0;
        const int64_t t1 = len - b * bs < bs ? len - b * bs : bs;
        /* this block's value rows, then the next block's key rows, spread over the scores' work */
        const int64_t row_bytes = (t1 - t0) * KVH * D * elem, skip = t0 * KVH * D * elem;
        Prefetch pf = {{(const char *)value_cache + blk * block_bytes + skip, NULL}, {row_bytes, 0}};
        if ((b + 1) * bs < len) {
            pf.at[1] = (const char *)key_cache + table[b + 1] * block_bytes;
            pf.left[1] = ((len - (b + 1) * bs) < bs ? len - (b + 1) * bs : bs) * KVH * D * elem;
        }
        const int64_t per_step = ((pf.left[0] + pf.left[1]) / 64 + NQ * ((t1 - t0 + 7) / 8) - 1) /
                                 (NQ * ((t1 - t0 + 7) / 8));
        const float *kb = block_rows(key_cache, k_scales, kind, lut, blk, t0, t1, KVH, D, bs, kbuf);
        for (int64_t tg = t0; tg < t1; tg += 8) {  /* eight tokens at a time */
            const int64_t n = t1 - tg < 8 ? t1 - tg : 8;
            for (int64_t h = h0, j = 0; h < h1; h++)
                for (int64_t g = 0; g < G; g++, j++) {
                    prefetch_some(&pf, per_step);
                    const float *k = kb + (tg * KVH + h) * D;
                    float *pj = p + j * bs + tg;
#ifdef KV_AVX2
                    if (n == 8 && D % 8 == 0) dot8(q + j * D, k, KVH * D, D, pj);
                    else
#endif
                        for (int64_t t = 0; t < n; t++) pj[t] = dot(q + j * D, k + t * KVH * D, D);
                    if (softcap > 0.f)
                        for (int64_t t = 0; t < n; t++) pj[t] = softcap * tanhf(pj[t] / softcap);
                }
        }
        const float *vb = block_rows(value_cache, v_scales, kind, lut, blk, t0, t1, KVH, D, bs, vbuf);
        for (int64_t j = 0; j < NQ; j++) {
            float *pj = p + j * bs;
            const float mx = max_of(pj + t0, t1 - t0, m[j]);
            const float sum = exp_shifted(pj + t0, t1 - t0, mx);
            const float corr = expf(m[j] - mx); /* 0 on the first block: m = -inf */
            l[j] = l[j] * corr + sum;
            m[j] = mx;
            accumulate(acc + j * D, corr, pj, vb + (h0 + j / G) * D, KVH * D, t0, t1, D);
        }
    }
    for (int64_t j = 0; j < NQ; j++) {
        const float inv = l[j] > 0.f ? 1.f / l[j] : 0.f;
        for (int64_t i = 0; i < D; i++) o[j * D + i] = acc[j * D + i] * inv;
    }
}

/* heads_per_task: KV heads per task (all of them = one task per sequence, reading its blocks in order;
 * fewer spreads a few long sequences over more threads). */
void kvserve_paged_decode(const float *query, int64_t q_row_stride, float *out, const void *key_cache,
                          const void *value_cache, const float *k_scales, const float *v_scales, int kind,
                          const float *lut, const int64_t *block_tables, int64_t table_stride,
                          const int64_t *seq_lens, const int64_t *first_key, const int64_t *rows, int64_t num_seqs,
                          int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t block_size,
                          float scale, float softcap, int64_t heads_per_task, int num_threads) {
    const int64_t per_seq = (num_kv_heads + heads_per_task - 1) / heads_per_task, tasks = num_seqs * per_seq;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads) if (num_threads > 1 && tasks > 1)
    for (int64_t i = 0; i < tasks; i++) {
        const int64_t h0 = (i % per_seq) * heads_per_task;
        const int64_t h1 = h0 + heads_per_task < num_kv_heads ? h0 + heads_per_task : num_kv_heads;
        one_task(i / per_seq, h0, h1, query, q_row_stride, out, key_cache, value_cache, k_scales, v_scales, kind,
                 lut, block_tables, table_stride, seq_lens, first_key, rows, num_heads, num_kv_heads, head_dim,
                 block_size, scale, softcap);
    }
}
