/* inductor_embed's CPU kernels (plain C, no torch headers): the EmbeddingBag and lookup
   backward, max-mode bags both ways, one_hot_linear's fp32 forward and backward.
   lowering/_cpu_native.py compiles this file on first use (its text is part of the cache
   key), loads it with ctypes, and describes every struct below field for field; a struct
   changed here must change there too (ie_struct_sizes checks the sizes at load). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE2__)
#include <immintrin.h>
#endif

typedef struct {
  int64_t rows, dim;        /* out [rows, dim] fp32, contiguous */
  float* out;
  const float* grad;        /* row b of grad at grad + b * grad_stride, dim contiguous floats */
  int64_t grad_stride, num_bags, nnz;
  const void* idx;          /* int64 (idx64) or int32: position p = b * bag_len + l of bag b at */
  int64_t idx64;            /*   idx[b * idx_stride0 + l * idx_stride1]; with offsets at idx[p * idx_stride1] */
  int64_t idx_stride0, idx_stride1;
  const int64_t* order;     /* [nnz] positions in ATen's sort order, or NULL: a stable sort */
  int64_t bag_len;          /* > 0: bags of bag_len positions; 0: by offsets */
  const void* offsets;      /* [num_bags] bag starts, int64 (offsets64) or int32 */
  int64_t offsets64;
  const float* weights;     /* [nnz] each position's factor, or NULL */
  int64_t mean;             /* also divide by the bag's size (its positions other than padding) */
  int64_t padding_idx;      /* a row whose positions add nothing, or -1 */
  int64_t accumulate;       /* 0: write every row; 1: add each sum to its row, leave the rest */
  int64_t streaming;        /* write with non-temporal stores */
  int64_t scatter;          /* (no order, no accumulate) add each position's term into its row
                               in position order, no sort (scatter_rows) */
  int64_t aten_sort;        /* (no order given) follow ATen's sort of the indices, made here by
                               std::sort's algorithm (aten_order) */
  int64_t half;             /* (a scattered lookup table) grad and out are bfloat16 (1) or float16
                               (2), else fp32 (0): each row summed in fp32 from +0.0 in position
                               order, then rounded to nearest even once (scatter_rows) */
} ie_table;

/* One thread's buffers: per row of its slice the start of its entries, and the entries
   (position, bag) grouped by row in ATen's order. */
typedef struct { int32_t* start; int32_t* pos; int32_t* bag; float* bag_scale; float* acc; float* grad;
                 uint64_t* keys; } ie_scratch;

/* bfloat16 <-> fp32: the upper half of the float's bits; rounding to nearest even, as
   c10::BFloat16's (a NaN: 0x7fc0; torch's vectorised casts may give a NaN other bits, so a
   NaN is kept as a NaN, not bit for bit). */
static inline float bf16_float(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static inline uint16_t float_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return f != f ? (uint16_t)0x7fc0 : (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
#define AS_FLOAT(x) (x)
/* float16 <-> fp32 as x86's F16C instructions convert (ATen's vectorised casts use them):
   round to nearest even, overflow to infinity, subnormals kept; a NaN keeps its sign and top
   payload bits and becomes quiet. Without F16C, the same in integer arithmetic. */
#if defined(__F16C__)
static inline float fp16_float(uint16_t h) { return _cvtsh_ss(h); }
static inline uint16_t float_fp16(float f) { return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
#else
static inline float fp16_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  uint32_t u;
  if (e == 0x1f) {
    u = sign | 0x7f800000u | (m ? 0x400000u | (m << 13) : 0u);
  } else if (e) {
    u = sign | ((e + 112u) << 23) | (m << 13);
  } else {  /* zero or subnormal: m * 2^-24, exact in fp32 */
    const float f = (float)m * 0x1p-24f;
    memcpy(&u, &f, 4);
    u |= sign;
  }
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static inline uint16_t float_fp16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  /* NaN */
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  /* rounds to 65536 or more: inf */
  if (a < 0x38800000u) {  /* below 2^-14: a subnormal (or zero) of the half, m * 2^-24 */
    if (a < 0x33000000u) return sign;  /* at most 2^-25: rounds to zero (a tie, to even 0) */
    const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;  /* a = m * 2^(e - 150) */
    const uint32_t shift = 126u - e;  /* half's units of 2^-24: m >> (126 - e), 14..24 */
    const uint32_t q = m >> shift, rest = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
    return (uint16_t)(sign | (q + (rest > halfway || (rest == halfway && (q & 1u)))));
  }
  /* normal: rebias the exponent and round the 13 dropped bits to nearest even (a carry into
     the exponent is the right result, up to infinity) */
  const uint32_t r = a - 0x38000000u;
  return (uint16_t)(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
}
#endif

static inline int64_t load(const void* a, int64_t is64, int64_t i) {
  return is64 ? ((const int64_t*)a)[i] : ((const int32_t*)a)[i];
}

/* The end of bag b's positions: the next bag's start (nnz after the last bag). */
static inline int64_t bag_end(const ie_table* t, int64_t b) {
  if (b + 1 >= t->num_bags) return t->nnz;
  const int64_t e = t->bag_len > 0 ? (b + 1) * t->bag_len : load(t->offsets, t->offsets64, b + 1);
  return e < t->nnz ? e : t->nnz;
}

static inline int64_t idx_of(const ie_table* t, int64_t b, int64_t p) {
  if (t->bag_len > 0) return load(t->idx, t->idx64, b * t->idx_stride0 + (p - b * t->bag_len) * t->idx_stride1);
  return load(t->idx, t->idx64, p * t->idx_stride1);
}

/* The bag of position p: the number of bag ends <= p (the ends are offsets[1:], then nnz). */
static inline int64_t bag_of(const ie_table* t, int64_t p) {
  if (t->bag_len > 0) return p / t->bag_len;
  int64_t a = 0, b = t->num_bags - 1;
  while (a < b) {
    int64_t m = a + (b - a) / 2;
    if (load(t->offsets, t->offsets64, m + 1) <= p) a = m + 1; else b = m;
  }
  return a;
}

/* Every position p once, in order, with its bag b: the first bag whose end is past p (bag
   0 takes the positions before the first start, the last bag those past its start). */
#define FOR_EACH_POSITION(t, b, p)                          \
  for (int64_t b = 0, p = 0; b < (t)->num_bags; b++)        \
    for (const int64_t end_ = bag_end(t, b); p < end_; p++)

/* dst[0:n] = src[0:n] (src NULL: zeros), streaming: by the widest non-temporal stores. */
#if defined(__AVX512F__)
#define VEC 16
#define STREAM(d, s) _mm512_stream_ps((d), (s) ? _mm512_loadu_ps(s) : _mm512_setzero_ps())
#elif defined(__AVX__)
#define VEC 8
#define STREAM(d, s) _mm256_stream_ps((d), (s) ? _mm256_loadu_ps(s) : _mm256_setzero_ps())
#elif defined(__SSE2__)
#define VEC 4
#define STREAM(d, s) _mm_stream_ps((d), (s) ? _mm_loadu_ps(s) : _mm_setzero_ps())
#endif
static void put(float* dst, const float* src, int64_t n, int64_t streaming) {
  int64_t i = 0;
#ifdef VEC
  if (streaming) {
    for (; i < n && ((uintptr_t)(dst + i) & (VEC * 4 - 1)); i++) dst[i] = src ? src[i] : 0.0f;
    if (src) {
      for (; i + VEC <= n; i += VEC) STREAM(dst + i, src + i);
    } else {
      for (; i + VEC <= n; i += VEC) STREAM(dst + i, (const float*)0);
    }
  }
#endif
  if (src) memcpy(dst + i, src + i, (size_t)(n - i) * sizeof(float));
  else memset(dst + i, 0, (size_t)(n - i) * sizeof(float));
}

/* 16 floats, loaded from any address (GCC / Clang vector extension: one AVX-512 register, two
   AVX ones, four SSE / NEON ones). Arrays of them stay in registers where float arrays
   were kept in memory, with a flag per element saying whether it was set. */
typedef float ie_v16 __attribute__((vector_size(64), aligned(4), may_alias));

/* a * b + c, each element one fused multiply-add (fmaf's rounding), in the widest FMA
   registers there are: GCC left an element-wise __builtin_fmaf over an ie_v16 scalar (one
   vfmadd231ss an element: a weighted bag's forward ~9x a plain one's). */
static inline ie_v16 fma16(float a, ie_v16 b, ie_v16 c) {
  ie_v16 r;
#if defined(__AVX512F__)
  __m512 x, y;
  memcpy(&x, &b, 64);
  memcpy(&y, &c, 64);
  x = _mm512_fmadd_ps(_mm512_set1_ps(a), x, y);
  memcpy(&r, &x, 64);
#elif defined(__FMA__)
  __m256 x[2], y[2];
  memcpy(x, &b, 64);
  memcpy(y, &c, 64);
  const __m256 k = _mm256_set1_ps(a);
  x[0] = _mm256_fmadd_ps(k, x[0], y[0]);
  x[1] = _mm256_fmadd_ps(k, x[1], y[1]);
  memcpy(&r, x, 64);
#else
  for (int e = 0; e < 16; e++) r[e] = __builtin_fmaf(a, b[e], c[e]);
#endif
  return r;
}

/* Columns [c0, c0 + 16 V) of a row's sum over entries [first, last) of s into acc, in V
   registers: each entry's grad row block loaded once and added (or fused-multiply-added
   with its factor), in entry order. */
#define ROW_COLUMNS(V)                                                                           \
  static void row_columns_##V(const ie_table* t, const ie_scratch* s, const float* grad,         \
                              int64_t first, int64_t last, int64_t c0, float* acc) {             \
    const int64_t d = t->dim;                                                                    \
    ie_v16 a[V];                                                                                 \
    for (int v = 0; v < V; v++) a[v] = (ie_v16){0};                                              \
    if (t->weights || t->mean) {                                                                 \
      for (int64_t j = first; j < last; j++) {                                                   \
        const ie_v16* g = (const ie_v16*)(grad + (int64_t)s->bag[j] * d + c0);                   \
        const float w = t->mean ? s->bag_scale[s->bag[j]] : t->weights[s->pos[j]];               \
        for (int v = 0; v < V; v++) a[v] = fma16(w, g[v], a[v]);                                 \
      }                                                                                          \
    } else {                                                                                     \
      for (int64_t j = first; j < last; j++) {                                                   \
        const ie_v16* g = (const ie_v16*)(grad + (int64_t)s->bag[j] * d + c0);                   \
        for (int v = 0; v < V; v++) a[v] += g[v];                                                \
      }                                                                                          \
    }                                                                                            \
    for (int v = 0; v < V; v++) ((ie_v16*)(acc + c0))[v] = a[v];                                 \
  }
ROW_COLUMNS(4)
ROW_COLUMNS(2)
ROW_COLUMNS(1)

/* Row r of out from entries [first, last) of s (grad rows at grad): its sum starts from +0.0
   and adds the entries' terms in order (blocks of 64, 32 and 16 columns in registers, the
   rest one column at a time). The row was zeroed already unless it accumulates. */
static void write_row(const ie_table* t, const ie_scratch* s, const float* grad, int64_t r, int64_t first,
                      int64_t last) {
  const int64_t d = t->dim;
  float* acc = s->acc;
  if (first == last || r == t->padding_idx) return;
  int64_t c0 = 0;
  for (; c0 + 64 <= d; c0 += 64) row_columns_4(t, s, grad, first, last, c0, acc);
  if (c0 + 32 <= d) { row_columns_2(t, s, grad, first, last, c0, acc); c0 += 32; }
  if (c0 + 16 <= d) { row_columns_1(t, s, grad, first, last, c0, acc); c0 += 16; }
  for (int64_t c = c0; c < d; c++) acc[c] = 0.0f;
  for (int64_t j = first; j < last && c0 < d; j++) {
    const float* g = grad + (int64_t)s->bag[j] * d;
    if (t->weights || t->mean) {
      /* ATen's axpy: a fused multiply-add (as BLAS's and FBGEMM's) */
      const float w = t->mean ? s->bag_scale[s->bag[j]] : t->weights[s->pos[j]];
      for (int64_t c = c0; c < d; c++) acc[c] = __builtin_fmaf(w, g[c], acc[c]);
    } else {
      for (int64_t c = c0; c < d; c++) acc[c] += g[c];
    }
  }
  float* o = t->out + r * d;
  if (t->accumulate) {
    for (int64_t c = 0; c < d; c++) o[c] += acc[c];
  } else {
    put(o, acc, d, t->streaming);
  }
}

/* Rows [lo, hi) of out from the entries in s (row r's are [start[r - lo], start[r - lo + 1])).
   Writing: the whole slice zeroed in one stream, then each present row's sum over it (12% of
   the rows in a 26 x 100,000 x 64 step): measured faster than writing each gap of zeros. */
static void write_rows(const ie_table* t, int64_t lo, int64_t hi, const ie_scratch* s, const float* grad) {
  if (!t->accumulate) put(t->out + lo * t->dim, NULL, (hi - lo) * t->dim, t->streaming);
  for (int64_t r = lo; r < hi; r++)  /* the test here: a call for each of 100,000 empty rows showed */
    if (s->start[r - lo] != s->start[r - lo + 1]) write_row(t, s, grad, r, s->start[r - lo], s->start[r - lo + 1]);
}

static int by_key(const void* a, const void* b) {
  const uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

/* Few positions for many rows (nnz * SPARSE_RATIO < rows: a lone table's lookups of a small
   batch): the positions of rows [lo, hi) sorted by (row, position), so that no pass runs over
   every row but the zero fill. The same entries in the same order as the counting sort. */
#define SPARSE_RATIO 8
/* scatter_rows prefetches the output row this many positions ahead */
#define PREFETCH_ROWS 16
static int sparse_path(const ie_table* t) {  /* (a key holds the row in its upper 32 bits) */
  return !t->order && t->nnz * SPARSE_RATIO < t->rows && t->rows < ((int64_t)1 << 31);
}

static void sparse_rows(const ie_table* t, int64_t lo, int64_t hi, const ie_scratch* s, const float* grad) {
  int64_t n = 0;
  FOR_EACH_POSITION(t, b, p) {
    const int64_t row = idx_of(t, b, p);
    if (row >= lo && row < hi) s->keys[n++] = ((uint64_t)row << 32) | (uint64_t)p;
  }
  qsort(s->keys, (size_t)n, sizeof(uint64_t), by_key);
  for (int64_t j = 0; j < n; j++) {
    s->pos[j] = (int32_t)(s->keys[j] & 0xffffffffu);
    s->bag[j] = (int32_t)bag_of(t, s->pos[j]);
  }
  if (!t->accumulate) put(t->out + lo * t->dim, NULL, (hi - lo) * t->dim, t->streaming);
  for (int64_t first = 0, last; first < n; first = last) {
    const uint64_t row = s->keys[first] >> 32;
    for (last = first + 1; last < n && s->keys[last] >> 32 == row; last++) {}
    write_row(t, s, grad, (int64_t)row, first, last);
  }
}

/* o[0:d] += g[0:d], d a constant for the widths of narrow tables (unrolled, no loop). */
#define ADD_D(D) case D: for (int c = 0; c < D; c++) o[c] += g[c]; return;
static inline void add_row(float* o, const float* g, int64_t d) {
  switch (d) {
    ADD_D(1) ADD_D(2) ADD_D(3) ADD_D(4) ADD_D(5) ADD_D(6) ADD_D(7) ADD_D(8) ADD_D(16) ADD_D(32) ADD_D(64)
    default: for (int64_t c = 0; c < d; c++) o[c] += g[c];
  }
}

static int is_lookup(const ie_table* t) { return t->bag_len == 1 && !t->weights && !t->mean; }

/* Positions [p0, p1) of a lookup table added into their rows, those of rows [lo, hi) only,
   row r at out + (r - lo) * d (scatter_lookups' and scatter_rows' inner loop), one loop per
   index type, grad type (G, read as a float by CVT) and, for the narrow widths, per width:
   the index's type and the row's width known to the compiler (a branch on either per
   position cost as much as a narrow row's add). */
#define SCATTER_LOOP(T, G, CVT, W)                                                              \
  do {                                                                                          \
    const T* ix = (const T*)t->idx;                                                             \
    const G* grad = (const G*)t->grad;                                                          \
    for (int64_t p = p0; p < p1; p++) {                                                         \
      if (p + PREFETCH_ROWS < p1) {                                                             \
        const uint64_t ahead = (uint64_t)(ix[(p + PREFETCH_ROWS) * st] - lo);                   \
        if (ahead < span) __builtin_prefetch(out + ahead * (W), 1, 3);                          \
      }                                                                                         \
      const int64_t r = ix[p * st];                                                             \
      if ((uint64_t)(r - lo) >= span || r == pad) continue;                                     \
      float* o = out + (r - lo) * (W);                                                          \
      const G* g = grad + p * gs;                                                               \
      for (int64_t c = 0; c < (W); c++) o[c] += CVT(g[c]);                                      \
    }                                                                                           \
  } while (0)
#define SCATTER_WIDTHS(T, G, CVT)                                                               \
  switch (d) {                                                                                  \
    case 1: SCATTER_LOOP(T, G, CVT, 1); break;                                                  \
    case 2: SCATTER_LOOP(T, G, CVT, 2); break;                                                  \
    case 4: SCATTER_LOOP(T, G, CVT, 4); break;                                                  \
    case 8: SCATTER_LOOP(T, G, CVT, 8); break;                                                  \
    case 16: SCATTER_LOOP(T, G, CVT, 16); break;                                                \
    case 32: SCATTER_LOOP(T, G, CVT, 32); break;                                                \
    case 64: SCATTER_LOOP(T, G, CVT, 64); break;                                                \
    default: SCATTER_LOOP(T, G, CVT, d);                                                        \
  }
static void scatter_block(const ie_table* t, float* out, int64_t p0, int64_t p1, int64_t lo, int64_t hi) {
  const int64_t d = t->dim, pad = t->padding_idx, st = t->idx_stride0, gs = t->grad_stride;
  const uint64_t span = (uint64_t)(hi - lo);
  if (t->half == 1) {
    if (t->idx64) {
      SCATTER_WIDTHS(int64_t, uint16_t, bf16_float)
    } else {
      SCATTER_WIDTHS(int32_t, uint16_t, bf16_float)
    }
  } else if (t->half == 2) {
    if (t->idx64) {
      SCATTER_WIDTHS(int64_t, uint16_t, fp16_float)
    } else {
      SCATTER_WIDTHS(int32_t, uint16_t, fp16_float)
    }
  } else if (t->idx64) {
    SCATTER_WIDTHS(int64_t, float, AS_FLOAT)
  } else {
    SCATTER_WIDTHS(int32_t, float, AS_FLOAT)
  }
}

/* Rows [lo, hi) of out with no sort (t->scatter): the slice zeroed, then each position's
   term (grad's row of its bag, read in place, times its factor) added into its row, in
   position order. A row's sum thus starts from +0.0 and adds its terms in position order:
   the counting sort's additions, bit for bit, with no per-row pass, no packed copy of grad and
   grad's rows read in order: faster at every size measured (_cpu_native._scatters).
   A bfloat16 table (a lookup's) is summed into an fp32 buffer of the slice's rows, then
   rounded into out: torch.compile's sums (its decomposition adds in fp32) and the fp32
   path's order. Nonzero: no memory for that buffer. */
static int scatter_rows(const ie_table* t, int64_t lo, int64_t hi, const ie_scratch* s) {
  const int64_t d = t->dim, pad = t->padding_idx, span = hi - lo;
  float* out = t->out;
  if (t->half) {
    float* acc = (float*)calloc((size_t)(span * d > 0 ? span * d : 1), sizeof(float));
    if (!acc) return 1;
    scatter_block(t, acc, 0, t->num_bags, lo, hi);
    uint16_t* o = (uint16_t*)(void*)t->out + lo * d;
    if (t->half == 1) for (int64_t i = 0; i < span * d; i++) o[i] = float_bf16(acc[i]);
    else for (int64_t i = 0; i < span * d; i++) o[i] = float_fp16(acc[i]);
    free(acc);
    return 0;
  }
  put(out + lo * d, NULL, span * d, t->streaming);
  if (is_lookup(t)) {  /* position p is bag p */
    scatter_block(t, out + lo * d, 0, t->num_bags, lo, hi);
    return 0;
  }
  FOR_EACH_POSITION(t, b, p) {
    const int64_t r = idx_of(t, b, p);
    if ((uint64_t)(r - lo) >= (uint64_t)span || r == pad) continue;
    const float* g = t->grad + b * t->grad_stride;
    float* o = out + r * d;
    if (t->weights || t->mean) {  /* as write_row: a fused multiply-add */
      const float w = t->mean ? s->bag_scale[b] : t->weights[p];
      for (int64_t c = 0; c < d; c++) o[c] = __builtin_fmaf(w, g[c], o[c]);
    } else {
      add_row(o, g, d);
    }
  }
  return 0;
}

/* Rows [lo, hi) of t's gradient; nonzero: no memory (scatter_rows). */
static int table_rows(const ie_table* t, int64_t lo, int64_t hi, const ie_scratch* s) {
  int32_t* start = s->start;  /* hi - lo + 1 entries (num_bags for the bag sizes first) */
  if (t->mean) {  /* ATen: 1.0 / bag_size in double, rounded to float once */
    for (int64_t b = 0; b < t->num_bags; b++) start[b] = 0;
    FOR_EACH_POSITION(t, b, p) if (idx_of(t, b, p) != t->padding_idx) start[b]++;
    for (int64_t b = 0; b < t->num_bags; b++) s->bag_scale[b] = (float)(1.0 / (double)(start[b] > 0 ? start[b] : 1));
  }
  if (t->scatter) return scatter_rows(t, lo, hi, s);
  /* grad's rows of this table, packed: in place they lie a whole grad row apart (26 x 64
     floats: a page each), and reading them scattered missed the TLB. Rows already back to
     back are read in place (a lone table's gradient: the copy was 1/3 of its time). */
  const float* grad = t->grad;
  if (t->grad_stride != t->dim) {
    for (int64_t b = 0; b < t->num_bags; b++) memcpy(s->grad + b * t->dim, t->grad + b * t->grad_stride, t->dim * 4);
    grad = s->grad;
  }
  if (sparse_path(t)) {
    sparse_rows(t, lo, hi, s, grad);
    return 0;
  }
  for (int64_t r = 0; r <= hi - lo; r++) start[r] = 0;
  if (t->order) {  /* ATen's order: the slice's entries are one run of it */
    int64_t a = 0, e = t->nnz;
    while (a < e) {
      int64_t m = a + (e - a) / 2, p = t->order[m];
      if (idx_of(t, bag_of(t, p), p) < lo) a = m + 1; else e = m;
    }
    int64_t n = 0;
    for (int64_t j = a; j < t->nnz; j++, n++) {
      const int64_t p = t->order[j], b = bag_of(t, p), row = idx_of(t, b, p);
      if (row >= hi) break;
      start[row - lo + 1]++;
      s->pos[n] = (int32_t)p;
      s->bag[n] = (int32_t)b;
    }
    for (int64_t r = 0; r < hi - lo; r++) start[r + 1] += start[r];
  } else {  /* a stable counting sort of the positions whose rows are in [lo, hi) */
    FOR_EACH_POSITION(t, b, p) {
      const int64_t row = idx_of(t, b, p);
      if (row >= lo && row < hi) start[row - lo + 1]++;
    }
    for (int64_t r = 0; r < hi - lo; r++) start[r + 1] += start[r];
    FOR_EACH_POSITION(t, b, p) {
      const int64_t row = idx_of(t, b, p);
      if (row >= lo && row < hi) {
        const int32_t k = start[row - lo]++;
        s->pos[k] = (int32_t)p;
        s->bag[k] = (int32_t)b;
      }
    }
    for (int64_t r = hi - lo; r > 0; r--) start[r] = start[r - 1];  /* back to each row's start */
    start[0] = 0;
  }
  write_rows(t, lo, hi, s, grad);
  return 0;
}

/* This thread's rows [*lo, *hi) of t: the rows cut into contiguous slices of about equal work
   (a row to zero costs 1, a position to add 2: Zipf indices put most positions in the first
   rows, so equal row counts left one thread most of the work). Every thread computes the
   same cuts, at the edges of up to 1,024 blocks of rows. */
static void slice_of(const ie_table* t, int64_t part, int64_t parts, int64_t* lo, int64_t* hi) {
  if (parts == 1 || t->rows == 0) { *lo = 0; *hi = t->rows; return; }
  int shift = 0;
  while (((t->rows + ((int64_t)1 << shift) - 1) >> shift) > 1024) shift++;
  const int64_t blocks = (t->rows + ((int64_t)1 << shift) - 1) >> shift;
  int64_t cost[1024];
  for (int64_t i = 0; i < blocks; i++) cost[i] = (int64_t)1 << shift;
  cost[blocks - 1] = t->rows - ((blocks - 1) << shift);
  FOR_EACH_POSITION(t, b, p) cost[idx_of(t, b, p) >> shift] += 2;  /* indices checked already */
  int64_t total = 0;
  for (int64_t i = 0; i < blocks; i++) total += cost[i];
  int64_t cut[2] = {blocks, blocks}, sum = 0;
  const int64_t want[2] = {total * part / parts, total * (part + 1) / parts};
  for (int64_t i = 0; i <= blocks; i++) {  /* the first block edge with at least want[k] before it */
    for (int k = 0; k < 2; k++) if (cut[k] == blocks && sum >= want[k]) cut[k] = i;
    if (i < blocks) sum += cost[i];
  }
  if (part == 0) cut[0] = 0;
  if (part == parts - 1) cut[1] = blocks;
  *lo = cut[0] << shift < t->rows ? cut[0] << shift : t->rows;
  *hi = cut[1] << shift < t->rows ? cut[1] << shift : t->rows;
}

/* A body runs one part of a parallel call; it sets *failed when it cannot (no memory). */
typedef void (*ie_body)(const void* ctx, int64_t part, int64_t parts, int64_t* failed);
typedef struct { ie_body body; const void* ctx; int64_t part, parts, failed; } ie_task;

static void* run_task(void* arg) {
  ie_task* t = (ie_task*)arg;
  t->body(t->ctx, t->part, t->parts, &t->failed);
  return NULL;
}

/* body(ctx, part, parts) for every part, on `threads` threads; nonzero if one failed. */
static int64_t parallel(ie_body body, const void* ctx, int64_t threads) {
  if (threads < 1) threads = 1;
  if (threads > 64) threads = 64;
  int64_t failed = 0;
  if (threads == 1) {  /* no OpenMP call at all: also what a forked child must do */
    body(ctx, 0, 1, &failed);
    return failed;
  }
#ifdef _OPENMP
  /* torch's own OpenMP pool (the process has libgomp.so.1 loaded already: the same library),
     whose workers may still be spinning after the last ATen op: they take the parts, rather
     than new threads competing with them for the cores. */
  #pragma omp parallel num_threads(threads) reduction(|:failed)
  {
    int64_t f = 0;
    body(ctx, omp_get_thread_num(), omp_get_num_threads(), &f);
    failed |= f;
  }
#else
  ie_task tasks[64];
  pthread_t ids[64];
  int started[64] = {0};
  for (int64_t i = 0; i < threads; i++) { ie_task t = {body, ctx, i, threads, 0}; tasks[i] = t; }
  for (int64_t i = 1; i < threads; i++) started[i] = pthread_create(&ids[i], NULL, run_task, &tasks[i]) == 0;
  for (int64_t i = 1; i < threads; i++) if (!started[i]) run_task(&tasks[i]);
  run_task(&tasks[0]);
  for (int64_t i = 0; i < threads; i++) {
    if (i > 0 && started[i]) pthread_join(ids[i], NULL);
    failed |= tasks[i].failed;
  }
#endif
  return failed;
}

typedef struct { const ie_table* tables; int64_t n; } ie_bags;

/* Lookup tables (one position a bag, no factor) of one part, blocks of BLOCK positions at
   a time across them all: a block's rows of grad are read from the cache by every table
   (table by table, each pass over grad read it from memory again). A row's terms are still
   added in position order. */
#define BLOCK 256
static void scatter_lookups(const ie_table* const* ts, int64_t n) {
  int64_t most = 0;
  for (int64_t k = 0; k < n; k++) {
    put(ts[k]->out, NULL, ts[k]->rows * ts[k]->dim, ts[k]->streaming);
    if (ts[k]->num_bags > most) most = ts[k]->num_bags;
  }
  for (int64_t p0 = 0; p0 < most; p0 += BLOCK) {
    for (int64_t k = 0; k < n; k++) {
      const ie_table* t = ts[k];
      const int64_t p1 = p0 + BLOCK < t->num_bags ? p0 + BLOCK : t->num_bags;
      if (p0 < p1) scatter_block(t, t->out, p0, p1, 0, t->rows);
    }
  }
}


/* Whether this part takes a whole table of this cost: each table to the part with the least
   work so far (load_of: per part), the same assignment in every part. */
static int takes(int64_t* load_of, int64_t part, int64_t parts, int64_t cost) {
  int64_t least = 0;
  for (int64_t q = 1; q < parts; q++) if (load_of[q] < load_of[least]) least = q;
  load_of[least] += cost;
  return least == part;
}

/* Whole tables: scattered ones, and those in an order the kernel made (aten_sort). */
static int whole_table(const ie_table* t) { return t->scatter || t->aten_sort; }

/* This part's share of the whole tables (takes: by rows zeroed and positions added, by
   columns). A table in an order is made by one part in one pass over its order (no slice of
   it to look up, no packed copy of grad in every part). A bfloat16 table is made alone, so
   that a part holds one table's fp32 sums at a time. Nonzero: no memory. */
static int whole_part(const ie_bags* job, int64_t part, int64_t parts, ie_scratch* s) {
  int64_t load_of[64] = {0}, mine = 0;
  int failed = 0;
  const ie_table** lookups = (const ie_table**)s->keys;  /* n pointers fit: keys has >= n entries */
  for (int64_t k = 0; k < job->n; k++) {
    const ie_table* t = job->tables + k;
    if (!whole_table(t)) continue;
    if (!takes(load_of, part, parts, (t->rows + 2 * t->nnz) * t->dim + t->nnz)) continue;
    if (t->scatter && is_lookup(t) && !t->half) {
      lookups[mine++] = t;
    } else {
      failed |= table_rows(t, 0, t->rows, s);
    }
  }
  scatter_lookups(lookups, mine);
  return failed;
}

static void bag_part(const void* ctx, int64_t part, int64_t parts, int64_t* failed) {
  const ie_bags* job = (const ie_bags*)ctx;
  int64_t dim = 1, starts = 1, nnz = 1, bags = 1, grad = 1, keys = 1;
  for (int64_t k = 0; k < job->n; k++) {
    const ie_table* t = job->tables + k;
    if (sparse_path(t) && t->nnz > keys) keys = t->nnz;
    if (job->n > keys) keys = job->n;  /* whole_part's list of tables */
    const int64_t rows = t->rows + 1;  /* the most a slice can take */
    if (t->dim > dim) dim = t->dim;
    if (rows > starts) starts = rows;
    if (t->num_bags > starts) starts = t->num_bags;
    if (t->num_bags > bags) bags = t->num_bags;
    if (t->nnz > nnz) nnz = t->nnz;
    if (t->num_bags * t->dim > grad) grad = t->num_bags * t->dim;
  }
  ie_scratch s = {(int32_t*)malloc((size_t)starts * 4), (int32_t*)malloc((size_t)nnz * 4),
                  (int32_t*)malloc((size_t)nnz * 4), (float*)malloc((size_t)bags * 4),
                  (float*)malloc((size_t)dim * 4), (float*)malloc((size_t)grad * 4),
                  (uint64_t*)malloc((size_t)keys * 8)};
  if (s.start && s.pos && s.bag && s.bag_scale && s.acc && s.grad && s.keys) {
    /* Whole tables (whole_table), when there are at least as many as parts, go whole to one
       part each (whole_part); the rest are cut into row slices. */
    int64_t wholes = 0;
    for (int64_t k = 0; k < job->n; k++) wholes += whole_table(job->tables + k);
    const int whole = wholes >= parts;
    int failed_here = whole ? whole_part(job, part, parts, &s) : 0;
    for (int64_t k = 0; k < job->n; k++) {
      const ie_table* t = job->tables + k;
      if (whole && whole_table(t)) continue;
      int64_t lo, hi;
      slice_of(t, part, parts, &lo, &hi);
      failed_here |= table_rows(t, lo, hi, &s);
    }
    if (failed_here) *failed = 1;
  } else {
    *failed = 1;
  }
  free(s.start); free(s.pos); free(s.bag); free(s.bag_scale); free(s.acc); free(s.grad); free(s.keys);
#ifdef VEC
  _mm_sfence();  /* the non-temporal stores are visible before the join */
#endif
}

/* ---- ATen's order of a table's positions: libstdc++'s std::sort, step for step ----

   Below the length of its radix sort (stable_sort_from), ATen's CPU sort() is std::sort of
   (key, position) pairs compared by key alone: an introsort whose order of equal keys
   follows from its steps, and ATen's bag backward adds each row's terms in that order.
   These are GCC's (libstdc++ 4.9 to 14) steps, on one uint64 a pair (key << 32 | position,
   compared by the upper half): median-of-three pivot moved to the front, Hoare's unguarded
   partition, recursion on the right part, 16-element runs left to one final insertion sort.
   Past its depth limit std::sort turns to a heap sort, not replicated here: aten_order
   returns 1 and the caller takes ATen's own sort (a probe at load checks the rest,
   _cpu_native.aten_sort_matches). Run in the kernel's threads, a table each, where ATen's
   took ~0.4 ms a 10,240-position table on one. */
static int64_t sort_depth_scale = 2;  /* std::sort's: 2 * floor(log2(n)); 0 in tests: bail */
static inline int lt_key(uint64_t x, uint64_t y) { return (x >> 32) < (y >> 32); }
static inline void swap_kp(uint64_t* a, uint64_t* b) { const uint64_t t = *a; *a = *b; *b = t; }

static void unguarded_linear_insert(uint64_t* last) {
  const uint64_t val = *last;
  uint64_t* next = last - 1;
  while (lt_key(val, *next)) { *last = *next; last = next; --next; }
  *last = val;
}

static void insertion_sort(uint64_t* first, uint64_t* last) {
  if (first == last) return;
  for (uint64_t* i = first + 1; i != last; ++i) {
    if (lt_key(*i, *first)) {
      const uint64_t val = *i;
      memmove(first + 1, first, (size_t)(i - first) * sizeof(uint64_t));
      *first = val;
    } else {
      unguarded_linear_insert(i);
    }
  }
}

static void move_median_to_first(uint64_t* result, uint64_t* a, uint64_t* b, uint64_t* c) {
  if (lt_key(*a, *b)) {
    if (lt_key(*b, *c)) swap_kp(result, b);
    else if (lt_key(*a, *c)) swap_kp(result, c);
    else swap_kp(result, a);
  } else if (lt_key(*a, *c)) {
    swap_kp(result, a);
  } else if (lt_key(*b, *c)) {
    swap_kp(result, c);
  } else {
    swap_kp(result, b);
  }
}

static uint64_t* unguarded_partition(uint64_t* first, uint64_t* last, const uint64_t* pivot) {
  for (;;) {
    while (lt_key(*first, *pivot)) ++first;
    --last;
    while (lt_key(*pivot, *last)) --last;
    if (!(first < last)) return first;
    swap_kp(first, last);
    ++first;
  }
}

static int introsort_loop(uint64_t* first, uint64_t* last, int64_t depth) {
  while (last - first > 16) {
    if (depth == 0) return 1;  /* std::sort's heap sort from here */
    --depth;
    uint64_t* mid = first + (last - first) / 2;
    move_median_to_first(first, first + 1, mid, last - 1);
    uint64_t* cut = unguarded_partition(first + 1, last, first);
    if (introsort_loop(cut, last, depth)) return 1;
    last = cut;
  }
  return 0;
}

/* a[0:n] sorted as std::sort sorts it; 1 where it would have turned to its heap sort. */
static int aten_order(uint64_t* a, int64_t n) {
  if (n <= 1) return 0;
  int64_t lg = 0;
  while (((int64_t)1 << (lg + 1)) <= n) lg++;
  if (introsort_loop(a, a + n, lg * sort_depth_scale)) return 1;
  if (n > 16) {
    insertion_sort(a, a + 16);
    for (uint64_t* i = a + 16; i != a + n; ++i) unguarded_linear_insert(i);
  } else {
    insertion_sort(a, a + n);
  }
  return 0;
}

/* The key of position p (the index there). */
static inline int64_t key_of(const ie_table* t, int64_t p) {
  return t->bag_len > 0 ? idx_of(t, p / t->bag_len, p) : load(t->idx, t->idx64, p * t->idx_stride1);
}

typedef struct { ie_table* tables; int64_t n; int64_t* bailed; } ie_sorts;

/* The aten_sort tables' orders, each table whole to one part (takes: by positions). */
static void sort_part(const void* ctx, int64_t part, int64_t parts, int64_t* failed) {
  const ie_sorts* job = (const ie_sorts*)ctx;
  int64_t load_of[64] = {0};
  uint64_t* a = NULL;
  int64_t size = 0;
  for (int64_t k = 0; k < job->n; k++) {
    ie_table* t = job->tables + k;
    if (!t->aten_sort) continue;
    if (!takes(load_of, part, parts, t->nnz + 1)) continue;
    if (t->nnz > size) {
      free(a);
      size = t->nnz;
      a = (uint64_t*)malloc((size_t)size * sizeof(uint64_t));
      if (!a) { *failed = 1; return; }
    }
    for (int64_t p = 0; p < t->nnz; p++) a[p] = ((uint64_t)key_of(t, p) << 32) | (uint64_t)p;
    if (aten_order(a, t->nnz)) {
      job->bailed[k] = 1;
      continue;
    }
    int64_t* order = (int64_t*)t->order;
    for (int64_t p = 0; p < t->nnz; p++) order[p] = (int64_t)(a[p] & 0xffffffffu);
  }
  free(a);
}

static int all_below(const void* x, int64_t is64, int64_t n, int64_t s, int64_t rows);

/* Whether every index of t's positions lies in [0, rows): a vectorised pass per run of
   indices (a loop over FOR_EACH_POSITION took ~3 ns a position, 0.5 ms of a 10-table lookup
   backward at B=16,384, on one thread). */
static int table_in_range(const ie_table* t) {
  if (t->bag_len == 1) return all_below(t->idx, t->idx64, t->nnz, t->idx_stride0, t->rows);
  if (t->bag_len == 0) return all_below(t->idx, t->idx64, t->nnz, t->idx_stride1, t->rows);
  const int64_t es = t->idx64 ? 8 : 4;
  for (int64_t b = 0; b * t->bag_len < t->nnz; b++) {
    const int64_t len = t->nnz - b * t->bag_len < t->bag_len ? t->nnz - b * t->bag_len : t->bag_len;
    if (!all_below((const char*)t->idx + b * t->idx_stride0 * es, t->idx64, len, t->idx_stride1, t->rows)) return 0;
  }
  return 1;
}

/* 0: done; k + 1: table k has an index outside [0, rows) (nothing written); -1: no memory;
   -2 - k: table k's aten_sort turned to std::sort's heap sort (nothing written: the caller
   gives its order). */
int64_t ie_bag_grad(const ie_table* tables, int64_t n, int64_t threads) {
  int64_t sorts = 0;
  for (int64_t k = 0; k < n; k++) {
    const ie_table* t = tables + k;
    if (!table_in_range(t)) return k + 1;
    sorts += t->aten_sort && !t->order && t->nnz > 1;
  }
  if (!sorts) {
    ie_bags job = {tables, n};
    return parallel(bag_part, &job, threads) ? -1 : 0;
  }
  /* the sorted tables' orders first (a copy of the structs names them), then the rows;
     zeroed, so that a copy never made (no memory) has no order to free */
  ie_table* own = (ie_table*)calloc((size_t)n, sizeof(ie_table));
  int64_t* bailed = (int64_t*)calloc((size_t)n, sizeof(int64_t));
  int64_t status = own && bailed ? 0 : -1;
  for (int64_t k = 0; k < n && !status; k++) {
    own[k] = tables[k];
    own[k].aten_sort = tables[k].aten_sort && !tables[k].order && tables[k].nnz > 1;
    if (own[k].aten_sort && !(own[k].order = (int64_t*)malloc((size_t)own[k].nnz * sizeof(int64_t)))) status = -1;
  }
  if (!status) {
    ie_sorts sort_job = {own, n, bailed};
    status = parallel(sort_part, &sort_job, threads) ? -1 : 0;
    for (int64_t k = 0; k < n && !status; k++) if (bailed[k]) status = -2 - k;
  }
  if (!status) {
    ie_bags job = {own, n};
    status = parallel(bag_part, &job, threads) ? -1 : 0;
  }
  for (int64_t k = 0; own && k < n; k++) if (own[k].aten_sort) free((void*)own[k].order);
  free(own);
  free(bailed);
  return status;
}

/* ATen's sort order of idx[0:n] (int64 or int32, contiguous) into order[0:n]: 0, or 1 where
   std::sort would have turned to its heap sort (order unset), -1: no memory (the load's probe
   and the tests compare it with torch's sort). scale: the depth limit's factor (2: std::sort's;
   tests pass 0 to make the kernel bail), kept for later calls; < 0 leaves it. */
int64_t ie_aten_order(const void* idx, int64_t idx64, int64_t n, int64_t* order, int64_t scale) {
  if (scale >= 0) sort_depth_scale = scale;
  uint64_t* a = (uint64_t*)malloc((size_t)(n > 0 ? n : 1) * sizeof(uint64_t));
  if (!a) return -1;
  for (int64_t p = 0; p < n; p++) a[p] = ((uint64_t)load(idx, idx64, p) << 32) | (uint64_t)p;
  const int bail = aten_order(a, n);
  if (!bail) for (int64_t p = 0; p < n; p++) order[p] = (int64_t)(a[p] & 0xffffffffu);
  free(a);
  return bail;
}

/* ---- sparse=True bags' backward: each position's gradient row (its COO values) ---- */

/* Table t's values: out [rows, dim] (rows: every position, those past nnz in no bag), row p
   of a position in bag b = grad[b] (row b at grad + b * grad_stride), times 1 / the bag's
   size (mean, the float reciprocal as ATen's) or times weights[p]; zeros for the positions in
   no bag. Each part writes a range of every table's bags (streamed where t.streaming). */
static void rows_part(const void* ctx, int64_t part, int64_t parts, int64_t* failed) {
  (void)failed;
  const ie_bags* job = (const ie_bags*)ctx;
  for (int64_t k = 0; k < job->n; k++) {
    const ie_table* t = job->tables + k;
    const int64_t dim = t->dim, b0 = t->num_bags * part / parts, b1 = t->num_bags * (part + 1) / parts;
    const int scaled = t->mean || t->weights != NULL;
    float* row = NULL;  /* a scaled row to stream */
    if (scaled && t->streaming && !(row = (float*)malloc((size_t)(dim > 0 ? dim : 1) * sizeof(float)))) {
      *failed = 1;
      return;
    }
    for (int64_t b = b0; b < b1; b++) {
      const float* g = t->grad + b * t->grad_stride;
      const int64_t start = t->bag_len > 0 ? b * t->bag_len : load(t->offsets, t->offsets64, b), end = bag_end(t, b);
      const float inv = 1.0f / (float)(end - start > 0 ? end - start : 1);
      for (int64_t p = start; p < end; p++) {
        float* restrict dst = t->out + p * dim;
        const float f = t->mean ? inv : t->weights ? t->weights[p] : 1.0f;
        if (t->streaming) {
          if (scaled) for (int64_t d = 0; d < dim; d++) row[d] = g[d] * f;
          put(dst, scaled ? row : g, dim, 1);
        } else if (scaled) {  /* in the loop, not put's memcpy: a call per row cost more than the row */
          for (int64_t d = 0; d < dim; d++) dst[d] = g[d] * f;
        } else {
          for (int64_t d = 0; d < dim; d++) dst[d] = g[d];
        }
      }
    }
    free(row);
    if (part == parts - 1 && t->rows > t->nnz)  /* include_last_offset's positions in no bag */
      put(t->out + t->nnz * dim, NULL, (t->rows - t->nnz) * dim, t->streaming);
  }
#ifdef VEC
  _mm_sfence();
#endif
}

/* Every table's values (see rows_part; offsets checked by the forward); 0, or -1: no memory. */
int64_t ie_bag_rows(const ie_table* tables, int64_t n, int64_t threads) {
  ie_bags job = {tables, n};
  return parallel(rows_part, &job, threads) ? -1 : 0;
}

/* ---- one_hot_linear: a Linear on one-hot fields as a gather of the weight's columns ---- */

typedef struct {
  const void* idx;          /* [rows, bag] contiguous, int64 (idx64) or int32 */
  int64_t idx64, bag, num_classes, offset;  /* field k's index i names weight column offset + i */
} ie_field;

typedef struct {
  const ie_field* fields;
  int64_t n_fields, rows, dim;
  const float* weight;      /* [dim, V]: column v of row c at weight[c * w_row + v * w_col] */
  int64_t w_row, w_col;
  const float* bias;        /* [dim] or NULL */
  float* out;               /* forward: [rows, dim] */
  const float* grad;        /* backward: [rows, dim], row r at grad + r * grad_stride */
  int64_t grad_stride;
  float* flat;              /* backward: [dim * V (+ dim)]: the weight's gradient, [V, dim] (v_major)
                               or [dim, V] row-major, then the bias's */
  int64_t num_columns, v_major, has_bias;
} ie_one_hot;

/* 0, or k + 1 where field k has an index outside [0, num_classes). */
static int64_t one_hot_check(const ie_one_hot* a) {
  for (int64_t k = 0; k < a->n_fields; k++) {
    const ie_field* f = a->fields + k;
    for (int64_t q = 0; q < a->rows * f->bag; q++) {
      const int64_t i = load(f->idx, f->idx64, q);
      if (i < 0 || i >= f->num_classes) return k + 1;
    }
  }
  return 0;
}

/* Rows of this part: out[r] = sum over fields of (sum over the field's bag of the column),
   plus the bias; in fp32, each field's sum made first (as the ATen reference adds them).
   Every element of every row is written: a field with an empty bag (a multi-hot field of
   no positions) sums to +0.0, as the reference's empty sum does. */
static void one_hot_fwd_part(const void* ctx, int64_t part, int64_t parts, int64_t* failed) {
  const ie_one_hot* a = (const ie_one_hot*)ctx;
  const int64_t d = a->dim;
  float* field_sum = (float*)malloc((size_t)(d > 0 ? d : 1) * 4);  /* malloc(0) may be NULL */
  if (!field_sum) { *failed = 1; return; }
  for (int64_t r = a->rows * part / parts; r < a->rows * (part + 1) / parts; r++) {
    float* o = a->out + r * d;
    for (int64_t k = 0; k < a->n_fields; k++) {
      const ie_field* f = a->fields + k;
      float* acc = k == 0 ? o : field_sum;
      if (f->bag == 0) for (int64_t c = 0; c < d; c++) acc[c] = 0.0f;
      for (int64_t j = 0; j < f->bag; j++) {
        const float* w = a->weight + (f->offset + load(f->idx, f->idx64, r * f->bag + j)) * a->w_col;
        if (j == 0) {
          if (a->w_row == 1) memcpy(acc, w, (size_t)d * 4);
          else for (int64_t c = 0; c < d; c++) acc[c] = w[c * a->w_row];
        } else if (a->w_row == 1) {
          for (int64_t c = 0; c < d; c++) acc[c] += w[c];
        } else {
          for (int64_t c = 0; c < d; c++) acc[c] += w[c * a->w_row];
        }
      }
      if (k > 0) for (int64_t c = 0; c < d; c++) o[c] += field_sum[c];
    }
    if (a->bias) for (int64_t c = 0; c < d; c++) o[c] += a->bias[c];
  }
  free(field_sum);
}

/* Columns [lo, hi) of the weight's gradient (each part its own, so no two threads add to
   one element): zeroed, then every position's grad row added to its column, in position
   order; and the bias's elements [dim * part / parts, ...): grad's column sums. */
static void one_hot_bwd_part(const void* ctx, int64_t part, int64_t parts, int64_t* failed) {
  const ie_one_hot* a = (const ie_one_hot*)ctx;
  const int64_t d = a->dim, v = a->num_columns;
  const int64_t lo = v * part / parts, hi = v * (part + 1) / parts;
  (void)failed;
  if (a->v_major) {
    memset(a->flat + lo * d, 0, (size_t)((hi - lo) * d) * 4);
  } else {
    for (int64_t c = 0; c < d; c++) memset(a->flat + c * v + lo, 0, (size_t)(hi - lo) * 4);
  }
  for (int64_t r = 0; r < a->rows; r++) {
    const float* g = a->grad + r * a->grad_stride;
    for (int64_t k = 0; k < a->n_fields; k++) {
      const ie_field* f = a->fields + k;
      for (int64_t j = 0; j < f->bag; j++) {
        const int64_t col = f->offset + load(f->idx, f->idx64, r * f->bag + j);
        if (col < lo || col >= hi) continue;
        if (a->v_major) {
          float* dst = a->flat + col * d;
          for (int64_t c = 0; c < d; c++) dst[c] += g[c];
        } else {
          for (int64_t c = 0; c < d; c++) a->flat[c * v + col] += g[c];
        }
      }
    }
  }
  if (a->has_bias) {
    float* bias = a->flat + d * v;
    const int64_t c0 = d * part / parts, c1 = d * (part + 1) / parts;
    for (int64_t c = c0; c < c1; c++) bias[c] = 0.0f;
    for (int64_t r = 0; r < a->rows; r++)
      for (int64_t c = c0; c < c1; c++) bias[c] += a->grad[r * a->grad_stride + c];
  }
}

/* ---- the bag ops' input checks: every table's in one call ---- */

typedef struct {
  int64_t rows;             /* every index in a bag lies in [0, rows) */
  const void* idx;          /* int64 (idx64) or int32: [n_idx] (bag_len 0) or [n_idx, bag_len], */
  int64_t idx64, n_idx, bag_len, idx_stride0, idx_stride1;  /* element (i, l) at i * s0 + l * s1 */
  const void* offsets;      /* [n_offsets] bag starts, int64 (offsets64) or int32, or NULL */
  int64_t offsets64, n_offsets;
  int64_t last_is_end;      /* include_last_offset: positions from the last offset on are in no bag */
} ie_bag_check;

/* Whether x[0], x[s], ..., x[(n - 1) s] all lie in [0, rows): one unsigned compare each (a
   negative index wraps past rows), OR-ed without a branch so that the loop vectorises. */
static int all_below(const void* x, int64_t is64, int64_t n, int64_t s, int64_t rows) {
  uint64_t bad = 0;
  const uint64_t r = (uint64_t)rows;
  if (is64) {
    const int64_t* a = (const int64_t*)x;
    if (s == 1) for (int64_t i = 0; i < n; i++) bad |= (uint64_t)a[i] >= r;
    else for (int64_t i = 0; i < n; i++) bad |= (uint64_t)a[i * s] >= r;
  } else {
    const int32_t* a = (const int32_t*)x;
    if (s == 1) for (int64_t i = 0; i < n; i++) bad |= (uint64_t)(int64_t)a[i] >= r;
    else for (int64_t i = 0; i < n; i++) bad |= (uint64_t)(int64_t)a[i * s] >= r;
  }
  return !bad;
}

/* The number of positions in a bag of a table with offsets ([n_offsets]: from 0, never
   decreasing, at most n_idx; with last_is_end the last ends the last bag), or -1 where the
   offsets are not so. */
static int64_t bag_positions(int64_t n_idx, const void* offsets, int64_t offsets64, int64_t n_offsets,
                             int64_t last_is_end) {
  if (!offsets || n_offsets == 0) return n_idx;
  int64_t prev = load(offsets, offsets64, 0);
  if (prev != 0) return -1;
  for (int64_t j = 1; j < n_offsets; j++) {
    const int64_t o = load(offsets, offsets64, j);
    if (o < prev) return -1;
    prev = o;
  }
  if (prev > n_idx) return -1;
  return last_is_end ? prev : n_idx;
}

/* Whether one table's bag inputs are bad: offsets ([n_offsets], or NULL: fixed bags of bag_len)
   not starting at 0, decreasing or ending past the index count, or an index in a bag outside
   [0, rows). Indices: [n_idx] (bag_len 0), element i at i * s0, or [n_idx, bag_len], element
   (i, l) at i * s0 + l * s1. */
static int bad_bags(int64_t rows, const void* idx, int64_t idx64, int64_t n_idx, int64_t bag_len, int64_t s0,
                    int64_t s1, const void* offsets, int64_t offsets64, int64_t n_offsets, int64_t last_is_end) {
  const int64_t es = idx64 ? 8 : 4;
  if (bag_len > 0) {  /* fixed bags: [n_idx, bag_len], no offsets */
    for (int64_t i = 0; i < n_idx; i++)
      if (!all_below((const char*)idx + i * s0 * es, idx64, bag_len, s1, rows)) return 1;
    return 0;
  }
  const int64_t end = bag_positions(n_idx, offsets, offsets64, n_offsets, last_is_end);
  return end < 0 || !all_below(idx, idx64, end, s0, rows);
}

/* 0: every table's offsets start at 0, never decrease and end at most at its index count,
   and every index in a bag lies in [0, rows); k + 1: table k's do not (the caller's own
   checks of that table then raise the error that says how). */
int64_t ie_check_bags(const ie_bag_check* tables, int64_t n) {
  for (int64_t k = 0; k < n; k++) {
    const ie_bag_check* t = tables + k;
    if (bad_bags(t->rows, t->idx, t->idx64, t->n_idx, t->bag_len, t->idx_stride0, t->idx_stride1, t->offsets,
                 t->offsets64, t->n_offsets, t->last_is_end))
      return k + 1;
  }
  return 0;
}

/* ---- the bag forward (sum, mean, max: every table in one call) and max mode's backward ---- */

/* t's bags (t.rows = V, t.dim = D, t.idx / bag_len / offsets / nnz as in ie_table, t.weights
   the per-sample weights, t.mean, t.padding_idx; t.out, t.grad and the other backward-only
   fields unused) with the table's rows and the results:
   forward, arg NULL (sum / mean): out[b * out_stride + d] = the sum over bag b's positions
             p (padding_idx's skipped) of weight[row_p * w_stride + d], each times t.weights[p]
             if given, starting from +0.0, in position order; mean divides it by the number of
             those positions (at least 1). ATen's arithmetic: a weighted term is added by a
             fused multiply-add where `fma` (FBGEMM's kernel: weights without a padding row),
             else multiplied then added (ATen's axpy);
   forward, arg given (max): out[...] = max over bag b's positions (padding_idx skipped, the
             first taken, then each later one only if greater: ATen's comparison, so a NaN
             stays where it came first) of weight[row * w_stride + d], its row in
             arg[b * arg_stride + d]; an empty bag gets 0 and -1;
   backward (max): grad_w[arg * dim + d] += grad[b * out_stride + d] over the bags in order
             (grad_w [V, D] contiguous, zeroed or to add to; arg -1 adds nothing).
   n_offsets, last_is_end: the forward's checks (as ie_bag_check's); with last_is_end the
   offsets have num_bags + 1 entries and the last ends the last bag. */
typedef struct {
  ie_table t;
  const float* weight;
  int64_t w_stride;
  float* out;               /* forward: pooled [B, D]; backward: the pooled gradient (read) */
  int64_t out_stride;
  int64_t* arg;             /* max mode's rows, or NULL (sum / mean) */
  int64_t arg_stride;
  float* grad_w;            /* backward: [V, D] */
  int64_t fma, n_offsets, last_is_end;
} ie_pool;

typedef struct { const ie_pool* tables; int64_t n; int64_t* bad; } ie_pools;  /* bad[k]: table k has an index out of range */

/* Rows this many positions ahead are prefetched (FBGEMM's distance): the rows of a big
   table are random reads that no hardware prefetcher predicts. */
#define PREFETCH 16

/* Sum and mean bags run a chunk of bags at a time: their indices first copied into a
   contiguous int64 run (as ATen's reshape of a [B, L] column slice gives its kernel), so that
   the summing loop reads one index a position, whatever the input's strides and dtype, and
   its prefetch looks PREFETCH positions ahead across bags; then each block of columns is
   summed over the run. */
#define CHUNK 4096

/* Columns [c0, c0 + W) of one bag, its positions ix[s:e] (weights ws[s:e] or NULL), into
   o[c0:c0 + W], in W accumulators the compiler keeps in registers (a constant count: adding
   into the output row in memory made each position wait for the last one's store). The
   block of the row PREFETCH positions ahead (up to n) is prefetched, a line at a time by a
   loop of constant count (a loop over the row's width spilled its registers). */
#define SUM_LOOP(V, ADD)                                                                        \
  for (int64_t p = s; p < e; p++) {                                                             \
    if (p + PREFETCH < n) {                                                                     \
      const float* ahead = weight + ix[p + PREFETCH] * stride + c0;                             \
      for (int j = 0; j < V; j++) __builtin_prefetch(ahead + 16 * j, 0, 3);                     \
    }                                                                                           \
    const int64_t r = ix[p];                                                                    \
    if (r == pad) continue;                                                                     \
    count++;                                                                                    \
    const ie_v16* w = (const ie_v16*)(weight + r * stride + c0);                                \
    ADD;                                                                                        \
  }
#define SUM_COLUMNS(V)                                                                          \
  static void sum_columns_##V(const ie_pool* m, const int64_t* ix, const float* ws, int64_t s,  \
                              int64_t e, int64_t n, int64_t c0, float* o) {                     \
    const float* weight = m->weight;                                                            \
    const int64_t stride = m->w_stride, pad = m->t.padding_idx;                                 \
    ie_v16 acc[V];                                                                              \
    for (int j = 0; j < V; j++) acc[j] = (ie_v16){0};                                           \
    int64_t count = 0;                                                                          \
    if (!ws) {                                                                                  \
      SUM_LOOP(V, for (int j = 0; j < V; j++) acc[j] += w[j])                                   \
    } else if (m->fma) {                                                                        \
      SUM_LOOP(V, for (int j = 0; j < V; j++) acc[j] = fma16(ws[p], w[j], acc[j]))              \
    } else {                                                                                    \
      SUM_LOOP(V, for (int j = 0; j < V; j++) acc[j] += ws[p] * w[j])                           \
    }                                                                                           \
    ie_v16* out = (ie_v16*)(o + c0);                                                            \
    if (m->t.mean) {                                                                            \
      const float k = (float)(count > 0 ? count : 1);                                           \
      for (int j = 0; j < V; j++) out[j] = acc[j] / k;                                          \
    } else {                                                                                    \
      for (int j = 0; j < V; j++) out[j] = acc[j];                                              \
    }                                                                                           \
  }
SUM_COLUMNS(8)
SUM_COLUMNS(4)
SUM_COLUMNS(2)
SUM_COLUMNS(1)

/* The last dim % 16 columns, one at a time (the same additions, in the same order). */
static void sum_columns_tail(const ie_pool* m, const int64_t* ix, const float* ws, int64_t s, int64_t e,
                             int64_t c0, float* o) {
  const int64_t dim = m->t.dim;
  for (int64_t c = c0; c < dim; c++) {
    float acc = 0.0f;
    int64_t count = 0;
    for (int64_t p = s; p < e; p++) {
      const int64_t r = ix[p];
      if (r == m->t.padding_idx) continue;
      count++;
      const float w = m->weight[r * m->w_stride + c];
      acc = !ws ? acc + w : m->fma ? __builtin_fmaf(ws[p], w, acc) : acc + ws[p] * w;
    }
    o[c] = m->t.mean ? acc / (float)(count > 0 ? count : 1) : acc;
  }
}

/* One bag's sum (or mean) of every column: blocks of 128 columns (8 AVX-512 registers: two
   passes of 64 columns took 1.03-1.2x the time at 128 to 256 columns, paired, one thread),
   then one of 64, 32 and 16 where they fit, then the rest one column at a time. */
static void sum_bag(const ie_pool* m, const int64_t* ix, const float* ws, int64_t s, int64_t e, int64_t n,
                    float* o) {
  const int64_t dim = m->t.dim;
  int64_t c = 0;
  for (; c + 128 <= dim; c += 128) sum_columns_8(m, ix, ws, s, e, n, c, o);
  if (c + 64 <= dim) { sum_columns_4(m, ix, ws, s, e, n, c, o); c += 64; }
  if (c + 32 <= dim) { sum_columns_2(m, ix, ws, s, e, n, c, o); c += 32; }
  if (c + 16 <= dim) { sum_columns_1(m, ix, ws, s, e, n, c, o); c += 16; }
  if (c < dim) sum_columns_tail(m, ix, ws, s, e, c, o);
}

static inline int64_t bag_start(const ie_table* t, int64_t b) {
  return t->bag_len > 0 ? b * t->bag_len : load(t->offsets, t->offsets64, b);
}

/* Bags [b0, b1) of a sum / mean table, a chunk of at most CHUNK positions at a time (a bag
   longer than that is a chunk of its own, its indices copied in turn). ix: CHUNK + 1 int64s. */
static void sum_bags(const ie_pool* m, int64_t b0, int64_t b1, int64_t* ix, int64_t* big, int64_t* bad) {
  const ie_table* t = &m->t;
  const uint64_t rows = (uint64_t)t->rows;
  int64_t b = b0;
  while (b < b1) {
    const int64_t first = bag_start(t, b);
    int64_t c = b, end = bag_end(t, b);
    while (c + 1 < b1 && bag_end(t, c + 1) - first <= CHUNK) end = bag_end(t, ++c);
    const int64_t n = end - first;
    int64_t* run = n <= CHUNK ? ix : big;  /* (big: a bag of more than CHUNK positions) */
    if (run == NULL) return;
    /* every index checked as it is copied, before any row is read (one unsigned compare: a
       negative index wraps past rows) */
    uint64_t out_of_range = 0;
    if (t->bag_len > 0) {  /* the chunk's bags are whole: bag_len positions each */
      for (int64_t bb = b, q = 0; bb <= c; bb++)
        for (int64_t l = 0; l < t->bag_len; l++, q++) {
          run[q] = load(t->idx, t->idx64, bb * t->idx_stride0 + l * t->idx_stride1);
          out_of_range |= (uint64_t)run[q] >= rows;
        }
    } else {  /* bags lie back to back (offsets checked: from 0, never decreasing) */
      for (int64_t p = first; p < end; p++) {
        run[p - first] = load(t->idx, t->idx64, p * t->idx_stride1);
        out_of_range |= (uint64_t)run[p - first] >= rows;
      }
    }
    if (out_of_range) {  /* the op raises; this part stops */
      __atomic_store_n(bad, 1, __ATOMIC_RELAXED);
      return;
    }
    const float* ws = t->weights ? t->weights + first : NULL;
    for (; b <= c; b++)
      sum_bag(m, run, ws, bag_start(t, b) - first, bag_end(t, b) - first, n, m->out + b * m->out_stride);
  }
}

static void max_bag(const ie_pool* m, int64_t b) {
  const ie_table* t = &m->t;
  const int64_t dim = t->dim;
  float* o = m->out + b * m->out_stride;
  int64_t* a = m->arg + b * m->arg_stride;
  int64_t first = 1;
  const int64_t start = t->bag_len > 0 ? b * t->bag_len : load(t->offsets, t->offsets64, b);
  for (int64_t p = start, end = bag_end(t, b); p < end; p++) {
    const int64_t r = idx_of(t, b, p);
    if (r == t->padding_idx) continue;
    const float* w = m->weight + r * m->w_stride;
    if (first) {
      for (int64_t d = 0; d < dim; d++) { o[d] = w[d]; a[d] = r; }
      first = 0;
    } else {
      for (int64_t d = 0; d < dim; d++) {
        const int gt = w[d] > o[d];
        o[d] = gt ? w[d] : o[d];
        a[d] = gt ? r : a[d];
      }
    }
  }
  if (first) for (int64_t d = 0; d < dim; d++) { o[d] = 0.0f; a[d] = -1; }
}

/* Each part takes a range of every table's bags. */
static void fwd_part(const void* ctx, int64_t part, int64_t parts, int64_t* failed) {
  const ie_pools* job = (const ie_pools*)ctx;
  int64_t* ix = (int64_t*)malloc((CHUNK + 1) * sizeof(int64_t));
  if (!ix) { *failed = 1; return; }
  for (int64_t k = 0; k < job->n; k++) {
    const ie_pool* m = job->tables + k;
    const ie_table* t = &m->t;
    const int64_t b0 = t->num_bags * part / parts, b1 = t->num_bags * (part + 1) / parts;
    if (m->arg) {
      for (int64_t b = b0; b < b1; b++) max_bag(m, b);
      continue;
    }
    int64_t longest = 0;  /* a bag longer than CHUNK needs a run of its own */
    for (int64_t b = b0; b < b1; b++) {
      const int64_t len = bag_end(t, b) - bag_start(t, b);
      if (len > longest) longest = len;
    }
    int64_t* big = longest > CHUNK ? (int64_t*)malloc((size_t)longest * sizeof(int64_t)) : NULL;
    if (longest > CHUNK && !big) { *failed = 1; break; }
    sum_bags(m, b0, b1, ix, big, job->bad + k);
    free(big);
  }
  free(ix);
}

/* Each part owns a range of columns of every table: no two parts add to one element, and
   each element's additions come bag by bag, as ATen's. */
static void max_bwd_part(const void* ctx, int64_t part, int64_t parts, int64_t* failed) {
  (void)failed;
  const ie_pools* job = (const ie_pools*)ctx;
  for (int64_t k = 0; k < job->n; k++) {
    const ie_pool* m = job->tables + k;
    const int64_t dim = m->t.dim, d0 = dim * part / parts, d1 = dim * (part + 1) / parts;
    for (int64_t b = 0; b < m->t.num_bags; b++) {
      const float* g = m->out + b * m->out_stride;
      const int64_t* a = m->arg + b * m->arg_stride;
      for (int64_t d = d0; d < d1; d++)
        if (a[d] >= 0) m->grad_w[a[d] * dim + d] += g[d];
    }
  }
}

/* 0: done; k + 1: table k's inputs are bad (ie_check_bags' checks: offsets and max tables'
   indices before anything is written, sum tables' indices as each chunk is copied, so the
   outputs hold no result then); -1: no memory. */
int64_t ie_bag_forward(const ie_pool* tables, int64_t n, int64_t threads) {
  ie_pool* own = (ie_pool*)malloc((size_t)(n > 0 ? n : 1) * sizeof(ie_pool));
  int64_t* bad = (int64_t*)calloc((size_t)(n > 0 ? n : 1), sizeof(int64_t));
  int64_t status = 0;
  for (int64_t k = 0; own && bad && k < n && !status; k++) {
    const ie_table* t = &tables[k].t;
    own[k] = tables[k];
    if (t->bag_len == 0) {  /* the offsets first: they say which positions are read */
      const int64_t end = bag_positions(t->nnz, t->offsets, t->offsets64, tables[k].n_offsets,
                                        tables[k].last_is_end);
      if (end < 0) status = k + 1;
      own[k].t.nnz = end;  /* the positions in a bag */
    }
    /* a max table's indices now (the sum's are checked as they are copied) */
    const int64_t n_idx = t->bag_len > 0 ? t->num_bags : own[k].t.nnz;
    const int64_t s0 = t->bag_len > 0 ? t->idx_stride0 : t->idx_stride1;  /* ie_table's 1-D stride is its second */
    if (!status && tables[k].arg && bad_bags(t->rows, t->idx, t->idx64, n_idx, t->bag_len, s0, t->idx_stride1,
                                             NULL, 0, 0, 0))
      status = k + 1;
  }
  if (!own || !bad) {
    status = -1;
  } else if (!status) {
    ie_pools job = {own, n, bad};
    status = parallel(fwd_part, &job, threads) ? -1 : 0;
    for (int64_t k = 0; k < n && !status; k++)
      if (bad[k]) status = k + 1;
  }
  free(own);
  free(bad);
  return status;
}

/* Max mode's backward of every table (see ie_pool); 0. */
int64_t ie_bag_max_backward(const ie_pool* tables, int64_t n, int64_t threads) {
  ie_pools job = {tables, n, NULL};
  return parallel(max_bwd_part, &job, threads) ? -1 : 0;
}

/* sizeof of ie_table (0), ie_field (1), ie_one_hot (2), ie_pool (3), ie_bag_check (4), -1 past
   them: the loader checks them against its own declarations (ctypes' _Table, _Field,
   _OneHot, _Max, _BagCheck). */
int64_t ie_struct_sizes(int64_t which) {
  switch (which) {
    case 0: return (int64_t)sizeof(ie_table);
    case 1: return (int64_t)sizeof(ie_field);
    case 2: return (int64_t)sizeof(ie_one_hot);
    case 3: return (int64_t)sizeof(ie_pool);
    case 4: return (int64_t)sizeof(ie_bag_check);
    default: return -1;
  }
}

/* 0: done; k + 1: field k has an index out of range (nothing written); -1: no memory. */
int64_t ie_one_hot_linear(const ie_one_hot* a, int64_t backward, int64_t threads) {
  const int64_t bad = one_hot_check(a);
  if (bad) return bad;
  return parallel(backward ? one_hot_bwd_part : one_hot_fwd_part, a, threads) ? -1 : 0;
}
