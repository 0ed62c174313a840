"""The CPU's native kernels: the EmbeddingBag backward (every table's dense gradient in one
call, below) and one_hot_linear's fp32 forward and backward (``one_hot_linear``: a column
gather, a scatter-add with each thread owning a range of columns; opaque ops in the graph,
so Inductor builds no C++ for that pattern).

Why: the ATen-op backward (``_segment_bag_grad``) zero-fills each ``[V, D]`` gradient,
makes every distinct row's sum (FBGEMM's pooling kernel) and scatters the sums with
``index_put_``: separate passes over memory no cache holds (26 x 100,000 x 64 fp32 is
666 MB), and ``zero_()`` reads each line before writing it. This kernel zeroes each
thread's slice of rows in one stream of non-temporal stores (for gradients of 8 MiB or
more; half the time of ``zero_()`` on the 2-core machine), then writes each present row's
sum, made in a small buffer. A 26 x 100,000 x 64 bag step (paired, in one process): 2.0-
2.5x ``torch.compile`` with it, 1.44x with the ATen ops.

Same additions as ATen, same order: a row's sum starts from +0.0 and adds ``w_p *
grad[bag_p]`` (a fused multiply-add, as FBGEMM and BLAS's axpy; a plain add with no
weight) over the row's positions in the order of ATen's own ``sort`` of the indices. That
sort is FBGEMM's stable radix sort from 32,768 indices (``stable_sort_from`` checks this
build's), where the kernel sorts by its own stable counting sort; below, the caller passes
``indices.sort()``'s order. So it is bit-equal to eager's EmbeddingBag backward.

How it is built: plain C (no torch headers), compiled on first use with the system's C
compiler (``$CC``, else ``cc`` / ``gcc`` / ``clang``; Inductor needs one on the CPU
anyway) in ~0.3 s, into a per-user cache directory keyed by the source, the flags, the
compiler and the CPU, and loaded with ctypes (which releases the GIL during the call).
Threads: torch's own OpenMP pool (``-fopenmp`` links ``libgomp.so.1``, the library torch
has loaded), each thread a slice of every table's rows of about equal work; its own
threads where the compiler has no OpenMP. Without a compiler, or with
``config.cpu_native_kernels = False``, ``lib()`` is None and callers take the ATen ops; a
failed build is logged once.
"""


from __future__ import annotations

import ctypes
import getpass
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from inductor_embed import config

log = logging.getLogger("inductor_embed")

_SOURCE = r"""
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
} ie_table;

/* One thread's buffers: per row of its slice the start of its entries, and the entries
   (position, bag) grouped by row in ATen's order. */
typedef struct { int32_t* start; int32_t* pos; int32_t* bag; float* bag_scale; float* acc; float* grad;
                 uint64_t* keys; } ie_scratch;

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

/* Row r of out from entries [first, last) of s (grad rows at grad): its sum starts from +0.0
   and adds the entries' terms in order. The row was zeroed already unless it accumulates. */
static void write_row(const ie_table* t, const ie_scratch* s, const float* grad, int64_t r, int64_t first,
                      int64_t last) {
  const int64_t d = t->dim;
  float* acc = s->acc;
  if (first == last || r == t->padding_idx) return;
  for (int64_t c = 0; c < d; c++) acc[c] = 0.0f;
  for (int64_t j = first; j < last; j++) {
    const float* g = grad + (int64_t)s->bag[j] * d;
    if (t->weights || t->mean) {
      /* ATen's axpy: a fused multiply-add (as BLAS's and FBGEMM's) */
      const float w = t->mean ? s->bag_scale[s->bag[j]] : t->weights[s->pos[j]];
      for (int64_t c = 0; c < d; c++) acc[c] = __builtin_fmaf(w, g[c], acc[c]);
    } else {
      for (int64_t c = 0; c < d; c++) acc[c] += g[c];
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

static void table_rows(const ie_table* t, int64_t lo, int64_t hi, const ie_scratch* s) {
  int32_t* start = s->start;  /* hi - lo + 1 entries (num_bags for the bag sizes first) */
  if (t->mean) {  /* ATen: 1.0 / bag_size in double, rounded to float once */
    for (int64_t b = 0; b < t->num_bags; b++) start[b] = 0;
    FOR_EACH_POSITION(t, b, p) if (idx_of(t, b, p) != t->padding_idx) start[b]++;
    for (int64_t b = 0; b < t->num_bags; b++) s->bag_scale[b] = (float)(1.0 / (double)(start[b] > 0 ? start[b] : 1));
  }
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
    return;
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

static void bag_part(const void* ctx, int64_t part, int64_t parts, int64_t* failed) {
  const ie_bags* job = (const ie_bags*)ctx;
  int64_t dim = 1, starts = 1, nnz = 1, bags = 1, grad = 1, keys = 1;
  for (int64_t k = 0; k < job->n; k++) {
    const ie_table* t = job->tables + k;
    if (sparse_path(t) && t->nnz > keys) keys = t->nnz;
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
    for (int64_t k = 0; k < job->n; k++) {
      const ie_table* t = job->tables + k;
      int64_t lo, hi;
      slice_of(t, part, parts, &lo, &hi);
      table_rows(t, lo, hi, &s);
    }
  } else {
    *failed = 1;
  }
  free(s.start); free(s.pos); free(s.bag); free(s.bag_scale); free(s.acc); free(s.grad); free(s.keys);
#ifdef VEC
  _mm_sfence();  /* the non-temporal stores are visible before the join */
#endif
}

/* 0: done; k + 1: table k has an index outside [0, rows) (nothing written); -1: no memory. */
int64_t ie_bag_grad(const ie_table* tables, int64_t n, int64_t threads) {
  for (int64_t k = 0; k < n; k++) {
    const ie_table* t = tables + k;
    FOR_EACH_POSITION(t, b, p) {
      const int64_t row = idx_of(t, b, p);
      if (row < 0 || row >= t->rows) return k + 1;
    }
  }
  ie_bags job = {tables, n};
  return parallel(bag_part, &job, threads) ? -1 : 0;
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

/* ---- max-mode EmbeddingBag: forward (max and its row per element) and backward ---- */

/* t's bags (t.rows = V, t.dim = D, t.idx / bag_len / offsets as in ie_table; t.out, t.grad and
   the backward-only fields unused) with the table's rows and the results:
   forward:  out[b * out_stride + d] = max over bag b's positions (padding_idx skipped, the
             first taken, then each later one only if greater: ATen's comparison, so a NaN
             stays where it came first) of weight[row * w_stride + d], its row in
             arg[b * arg_stride + d]; an empty bag gets 0 and -1;
   backward: grad_w[arg * dim + d] += grad[b * out_stride + d] over the bags in order
             (grad_w [V, D] contiguous, zeroed or to add to; arg -1 adds nothing). */
typedef struct {
  ie_table t;
  const float* weight;
  int64_t w_stride;
  float* out;               /* forward: pooled [B, D]; backward: the pooled gradient (read) */
  int64_t out_stride;
  int64_t* arg;
  int64_t arg_stride;
  float* grad_w;            /* backward: [V, D] */
} ie_max;

typedef struct { const ie_max* tables; int64_t n; } ie_maxes;

static void max_fwd_part(const void* ctx, int64_t part, int64_t parts, int64_t* failed) {
  (void)failed;
  const ie_maxes* job = (const ie_maxes*)ctx;
  for (int64_t k = 0; k < job->n; k++) {
    const ie_max* m = job->tables + k;
    const ie_table* t = &m->t;
    const int64_t b0 = t->num_bags * part / parts, b1 = t->num_bags * (part + 1) / parts, dim = t->dim;
    for (int64_t b = b0; b < b1; b++) {
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
  }
}

/* Each part owns a range of columns of every table: no two parts add to one element, and
   each element's additions come bag by bag, as ATen's. */
static void max_bwd_part(const void* ctx, int64_t part, int64_t parts, int64_t* failed) {
  (void)failed;
  const ie_maxes* job = (const ie_maxes*)ctx;
  for (int64_t k = 0; k < job->n; k++) {
    const ie_max* m = job->tables + k;
    const int64_t dim = m->t.dim, d0 = dim * part / parts, d1 = dim * (part + 1) / parts;
    for (int64_t b = 0; b < m->t.num_bags; b++) {
      const float* g = m->out + b * m->out_stride;
      const int64_t* a = m->arg + b * m->arg_stride;
      for (int64_t d = d0; d < d1; d++)
        if (a[d] >= 0) m->grad_w[a[d] * dim + d] += g[d];
    }
  }
}

/* 0: done; k + 1: table k has an index outside [0, rows) (forward: nothing written). */
int64_t ie_bag_max(const ie_max* tables, int64_t n, int64_t backward, int64_t threads) {
  if (!backward) {
    for (int64_t k = 0; k < n; k++) {
      const ie_table* t = &tables[k].t;
      FOR_EACH_POSITION(t, b, p) {
        const int64_t row = idx_of(t, b, p);
        if (row < 0 || row >= t->rows) return k + 1;
      }
    }
  }
  ie_maxes job = {tables, n};
  return parallel(backward ? max_bwd_part : max_fwd_part, &job, threads) ? -1 : 0;
}

/* sizeof of ie_table (0), ie_field (1), ie_one_hot (2), ie_max (3), -1 past them: the loader
   checks them against its own declarations (ctypes' _Table, _Field, _OneHot, _Max). */
int64_t ie_struct_sizes(int64_t which) {
  switch (which) {
    case 0: return (int64_t)sizeof(ie_table);
    case 1: return (int64_t)sizeof(ie_field);
    case 2: return (int64_t)sizeof(ie_one_hot);
    case 3: return (int64_t)sizeof(ie_max);
    default: return -1;
  }
}

/* 0: done; k + 1: field k has an index out of range (nothing written); -1: no memory. */
int64_t ie_one_hot_linear(const ie_one_hot* a, int64_t backward, int64_t threads) {
  const int64_t bad = one_hot_check(a);
  if (bad) return bad;
  return parallel(backward ? one_hot_bwd_part : one_hot_fwd_part, a, threads) ? -1 : 0;
}
"""

# No -ffast-math: the sums must round as ATen's do. -ffp-contract=off keeps the plain adds
# plain; the scaled path asks for its fused multiply-add by name (fmaf). -fopenmp links
# libgomp.so.1, which resolves to the copy torch has loaded already (one thread pool).
_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fPIC", "-shared", "-pthread", "-fopenmp"]
# Gradients at least this large are written with non-temporal stores: a quarter of the
# 2-core machine's 32 MiB L3, where a written line would be evicted before it is read.
# Smaller ones stay in the cache for the optimizer (cpu-quick's 2.5 MB gradients ran 1.2x
# slower streamed).
STREAMING_BYTES = 8 << 20
# A call writing less than this runs on the calling thread only: cpu-quick's tied pair
# (B=512, 2.5 MB) took 2x longer on two threads (their own, then; see ie_bag_grad). A lone
# 100,000 x 32 table's gradient (12.8 MB) took 0.75-0.85x the time on two threads.
THREADED_BYTES = 4 << 20
_POINTERS = {"out", "grad", "idx", "order", "offsets", "weights", "weight", "bias", "flat"}


class _Table(ctypes.Structure):  # ie_table
    _fields_ = [(name, ctypes.c_void_p if name in _POINTERS else ctypes.c_int64) for name in (
        "rows", "dim", "out", "grad", "grad_stride", "num_bags", "nnz", "idx", "idx64", "idx_stride0",
        "idx_stride1", "order", "bag_len",
        "offsets", "offsets64", "weights", "mean", "padding_idx", "accumulate", "streaming")]


class _Field(ctypes.Structure):  # ie_field
    _fields_ = [("idx", ctypes.c_void_p), ("idx64", ctypes.c_int64), ("bag", ctypes.c_int64),
                ("num_classes", ctypes.c_int64), ("offset", ctypes.c_int64)]


class _OneHot(ctypes.Structure):  # ie_one_hot
    _fields_ = [("fields", ctypes.POINTER(_Field))] + [
        (name, ctypes.c_void_p if name in _POINTERS else ctypes.c_int64) for name in (
            "n_fields", "rows", "dim", "weight", "w_row", "w_col", "bias", "out", "grad", "grad_stride", "flat",
            "num_columns", "v_major", "has_bias")]


class _Max(ctypes.Structure):  # ie_max
    _fields_ = [("t", _Table), ("weight", ctypes.c_void_p), ("w_stride", ctypes.c_int64),
                ("out", ctypes.c_void_p), ("out_stride", ctypes.c_int64), ("arg", ctypes.c_void_p),
                ("arg_stride", ctypes.c_int64), ("grad_w", ctypes.c_void_p)]


# The structs whose sizes ie_struct_sizes(k) returns, in its order: a library that disagrees
# is not this source's build.
_STRUCTS = (_Table, _Field, _OneHot, _Max)


_lock = threading.Lock()
# "lib": the loaded library (None after a failed build); "private": its directory;
# "forked": this process is a fork (of one whose OpenMP pool torch may have started).
_state: dict[str, object] = {}
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _state.__setitem__("forked", True))


def _cache_dir() -> str:
    """``$INDUCTOR_EMBED_CACHE_DIR``, else ``<tmp>/inductor_embed_<user>`` (as Inductor's
    ``torchinductor_<user>``)."""
    path = os.environ.get("INDUCTOR_EMBED_CACHE_DIR")
    if not path:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no user name for this uid (some containers)
            user = str(os.getuid()) if hasattr(os, "getuid") else "user"
        path = os.path.join(tempfile.gettempdir(), f"inductor_embed_{user}")
    return path


def _private_dir() -> str:
    """``_cache_dir()``, created if missing; a fresh private directory instead where it is
    not ours alone (another user could otherwise plant a library we would load)."""
    path = _cache_dir()
    if "private" in _state:
        return _state["private"]  # type: ignore[return-value]
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
        if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
            path = tempfile.mkdtemp(prefix="inductor_embed_")
    except OSError:
        path = tempfile.mkdtemp(prefix="inductor_embed_")
    _state["private"] = path
    return path


def _compilers() -> list[str]:
    names = [os.environ.get("CC", ""), "cc", "gcc", "clang"]
    return [p for p in dict.fromkeys(shutil.which(n) for n in names if n) if p]


def _cpu_key() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(dict.fromkeys(lines))
    except OSError:
        return platform.processor() + platform.machine()


def _bind(path: str, errors: list[str]) -> ctypes.CDLL | None:
    """Load ``path`` and declare its entry points; None (the reason in ``errors``) where it is
    not this source's build: it does not load, lacks a symbol, or its structs' sizes are not
    ctypes' (a foreign or stale file under the cache's name)."""
    try:
        library = ctypes.CDLL(path)
        sizes = library.ie_struct_sizes
        library.ie_bag_grad.restype = ctypes.c_int64
        library.ie_bag_grad.argtypes = [ctypes.POINTER(_Table), ctypes.c_int64, ctypes.c_int64]
        library.ie_one_hot_linear.restype = ctypes.c_int64
        library.ie_one_hot_linear.argtypes = [ctypes.POINTER(_OneHot), ctypes.c_int64, ctypes.c_int64]
        library.ie_bag_max.restype = ctypes.c_int64
        library.ie_bag_max.argtypes = [ctypes.POINTER(_Max), ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    except (OSError, AttributeError) as e:  # AttributeError: an undefined symbol
        errors.append(f"loading {path}: {e}")
        return None
    sizes.restype, sizes.argtypes = ctypes.c_int64, [ctypes.c_int64]
    want = [ctypes.sizeof(s) for s in _STRUCTS]
    got = [sizes(k) for k in range(len(want))]
    if got != want:
        errors.append(f"loading {path}: struct sizes {got}, ctypes' {want}")
        return None
    return library


def _compile(cc: str, flags: list[str], directory: str, errors: list[str]) -> str | None:
    """Compile the source into a new file of ``directory``; its path, or None (the compiler's
    error in ``errors``)."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    src = tmp[:-3] + ".c"
    try:
        with open(src, "w") as f:
            f.write(_SOURCE)
        subprocess.run([cc, *flags, src, "-o", tmp, "-lm"], check=True, capture_output=True, text=True,
                       timeout=120)
        return tmp
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        errors.append(f"{cc} {' '.join(flags)}: {detail.strip()[:300]}")
        if os.path.exists(tmp):
            os.remove(tmp)
        return None
    finally:
        if os.path.exists(src):
            os.remove(src)


def _build() -> ctypes.CDLL | None:
    """Find in the cache (or compile) and load the kernel; None, logged, where it cannot. A
    cached file that is not this source's build is rebuilt and replaced. A new build is
    loaded from its own temporary name before it takes the cache's (dlopen would hand back
    an already-loaded library of the same name)."""
    if sys.platform == "win32":
        log.info("inductor_embed: no native CPU backward kernel on Windows; using ATen ops")
        return None
    errors: list[str] = []
    for cc in _compilers():
        # Without OpenMP (a compiler lacking it) the kernel starts its own threads; without
        # -march=native (a compiler that cannot tell) it is built for the baseline ISA.
        for flags in (_FLAGS, [f for f in _FLAGS if f != "-fopenmp"],
                      [f for f in _FLAGS if f not in ("-fopenmp", "-march=native")]):
            key = hashlib.sha256("\0".join([_SOURCE, cc, *flags, _cpu_key()]).encode()).hexdigest()[:20]
            directory = _private_dir()
            path = os.path.join(directory, f"bag_grad_{key}.so")
            if os.path.exists(path):
                library = _bind(path, errors)
                if library is not None:
                    return library
                log.info("inductor_embed: %s is not this version's native kernel library; rebuilding it", path)
            try:
                tmp = _compile(cc, flags, directory, errors)
            except OSError as e:  # no temporary file in the directory
                errors.append(f"{cc} {' '.join(flags)}: {e}")
                continue
            if tmp is None:
                continue
            library = _bind(tmp, errors)
            try:
                if library is not None:
                    os.replace(tmp, path)  # atomic: another process may be building it too
                    return library
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
    log.warning("inductor_embed: could not build the native CPU kernels (%s); the CPU "
                "EmbeddingBag backward uses ATen ops (slower), one_hot_linear Inductor's loops (a "
                "slower first compile). Set CC to a C compiler, or "
                "config.cpu_native_kernels = False to silence this.",
                "; ".join(errors) if errors else "no C compiler found: $CC, cc, gcc, clang")
    return None


def lib() -> ctypes.CDLL | None:
    """The loaded kernel, built on first use; None where it is switched off
    (``config.cpu_native_kernels``) or cannot be built."""
    if not config.cpu_native_kernels:
        return None
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                _state["lib"] = _build()
    return _state["lib"]  # type: ignore[return-value]


@dataclass
class BagTable:
    """One table's EmbeddingBag weight gradient (sum / mean mode), ATen's additions in ATen's
    order: for each row r, ``out[r]`` = the sum, over the positions p with ``indices[p] == r``
    (none for the padding row) in the order of ATen's sort of ``indices``, of
    ``w_p * grad[bag_p]`` (``w_p``: the per-sample weight, 1 / bag size in mean mode, else
    1). Written into every row of ``out``, or with ``accumulate`` added to the rows present.

    Shapes: ``out [V, D]`` fp32 contiguous; ``grad [B, D]`` fp32 with unit column stride;
    ``indices`` int32/int64, any strides: ``[B, L]`` fixed bags (2-D input; position
    ``b * L + l``), or ``[nnz]`` with ``offsets [B]`` int32/int64 bag starts (every position
    in a bag: include_last_offset's extra ones cut off); ``weights [nnz]`` fp32 or None.
    ``order [nnz]`` int64: ATen's ``indices.reshape(-1).sort()`` permutation; None where
    that sort is stable (``stable_sort_from``), and the kernel sorts by a stable counting
    sort itself.
    """

    out: Tensor
    grad: Tensor
    indices: Tensor
    offsets: Tensor | None
    weights: Tensor | None
    mean: bool
    padding_idx: int
    accumulate: bool
    order: Tensor | None


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def bag_grad(tables: Sequence[BagTable]) -> None:
    """Run ``tables`` (all at once, across ``torch.get_num_threads()`` threads: each writes a
    slice of every table's rows). Requires ``lib()``. Raises IndexError for an index
    outside ``[0, V)``, as eager does."""
    library = lib()
    assert library is not None, "bag_grad needs the native kernel (check lib() first)"
    array = (_Table * len(tables))()
    work = 0
    for k, t in enumerate(tables):
        assert t.out.dtype == t.grad.dtype == torch.float32 and t.out.is_contiguous() and t.grad.stride(-1) == 1
        assert t.indices.dtype in (torch.int32, torch.int64) and t.indices.dim() == (1 if t.offsets is not None else 2)
        assert t.offsets is None or (t.offsets.dtype in (torch.int32, torch.int64) and t.offsets.is_contiguous())
        assert t.weights is None or (t.weights.dtype == torch.float32 and t.weights.is_contiguous())
        assert t.order is None or (t.order.dtype == torch.int64 and t.order.is_contiguous())
        assert t.indices.numel() < 1 << 31 and t.grad.shape[0] < 1 << 31
        rows, dim = t.out.shape
        bag_len = 0 if t.offsets is not None else t.indices.shape[1]
        stride0, stride1 = (0, t.indices.stride(0)) if t.offsets is not None else t.indices.stride()
        array[k] = _Table(rows, dim, t.out.data_ptr(), t.grad.data_ptr(), t.grad.stride(0), t.grad.shape[0],
                          t.indices.numel(), t.indices.data_ptr(), t.indices.dtype == torch.int64, stride0, stride1,
                          _ptr(t.order), bag_len, _ptr(t.offsets), t.offsets is not None and t.offsets.dtype == torch.int64,
                          _ptr(t.weights), t.mean, t.padding_idx, t.accumulate, t.out.nbytes >= STREAMING_BYTES)
        work += (0 if t.accumulate else t.out.nbytes) + t.indices.numel() * dim * 4
    status = library.ie_bag_grad(array, len(tables), _threads(work))
    if status > 0:
        raise IndexError(f"index out of range in self: an index outside [0, {tables[status - 1].out.shape[0]})")
    if status < 0:
        raise MemoryError("inductor_embed's CPU bag backward could not allocate its scratch memory")


@dataclass
class MaxTable:
    """One max-mode lookup's forward (``ie_bag_max``): ``out [B, D]`` and ``arg [B, D]`` (int64;
    column slices of the op's outputs, unit column stride) get each bag's element-wise max
    of ``weight``'s rows (``[V, D]`` fp32, unit column stride) and the row it came from, as
    ATen's max mode: the padding row skipped, an empty bag 0 and -1. ``indices``: ``[B, L]``,
    or ``[nnz]`` with ``offsets [B]`` (every position in a bag)."""

    weight: Tensor
    indices: Tensor
    offsets: Tensor | None
    padding_idx: int
    out: Tensor
    arg: Tensor


def _max_struct(rows: int, dim: int, indices: Tensor | None, offsets: Tensor | None, padding_idx: int,
                weight: Tensor | None, out: Tensor, arg: Tensor, grad_w: Tensor | None) -> _Max:
    assert out.dtype == torch.float32 and arg.dtype == torch.int64 and arg.shape == out.shape
    assert out.stride(1) == 1 and arg.stride(1) == 1
    bag_len = stride0 = stride1 = nnz = 0
    if indices is not None:
        assert indices.dtype in (torch.int32, torch.int64) and indices.dim() == (1 if offsets is not None else 2)
        assert offsets is None or (offsets.dtype in (torch.int32, torch.int64) and offsets.is_contiguous())
        bag_len = 0 if offsets is not None else indices.shape[1]
        stride0, stride1 = (0, indices.stride(0)) if offsets is not None else indices.stride()
        nnz = indices.numel()
    bags = _Table(rows, dim, None, None, 0, out.shape[0], nnz, _ptr(indices),
                  indices is not None and indices.dtype == torch.int64, stride0, stride1, None, bag_len, _ptr(offsets),
                  offsets is not None and offsets.dtype == torch.int64, None, 0, padding_idx, 0, 0)
    return _Max(bags, _ptr(weight), 0 if weight is None else weight.stride(0), out.data_ptr(), out.stride(0),
                arg.data_ptr(), arg.stride(0), _ptr(grad_w))


def bag_max(tables: Sequence[MaxTable]) -> None:
    """Run the forward of max-mode ``tables`` (see MaxTable) in one call. Requires ``lib()``.
    Raises IndexError for an index outside ``[0, V)``, as eager does."""
    library = lib()
    assert library is not None, "bag_max needs the native kernel (check lib() first)"
    array = (_Max * len(tables))()
    for k, t in enumerate(tables):
        assert t.weight.dtype == torch.float32 and t.weight.stride(1) == 1
        array[k] = _max_struct(*t.weight.shape, t.indices, t.offsets, t.padding_idx, t.weight, t.out, t.arg, None)
    work = sum(t.indices.numel() * t.weight.shape[1] * 4 for t in tables)
    status = library.ie_bag_max(array, len(tables), 0, _threads(work))
    if status > 0:
        raise IndexError(f"index out of range in self: an index outside [0, {tables[status - 1].weight.shape[0]})")


def bag_max_backward(grad: Tensor, arg: Tensor, out: Tensor) -> None:
    """Add a max-mode lookup's pooled gradient ``grad [B, D]`` (fp32, unit column stride) into
    ``out [V, D]`` (fp32, contiguous) at the rows ``arg [B, D]`` (int64, -1: none) names, bag
    by bag (ATen's order). Requires ``lib()``."""
    library = lib()
    assert library is not None, "bag_max_backward needs the native kernel (check lib() first)"
    assert out.dtype == torch.float32 and out.is_contiguous() and out.shape[1] == grad.shape[1]
    call = _max_struct(out.shape[0], out.shape[1], None, None, -1, None, grad, arg, out)
    library.ie_bag_max(ctypes.byref(call), 1, 1, _threads(grad.numel() * 12))


def _threads(work: int) -> int:
    """Threads for a call moving about ``work`` bytes: torch's count past THREADED_BYTES, else
    one; one in a forked child, where libgomp's pool is the parent's and may hang the first
    parallel region (ATen runs serially there too)."""
    return torch.get_num_threads() if work >= THREADED_BYTES and not _state.get("forked") else 1


def _one_hot_call(indices: Sequence[Tensor], num_classes: Sequence[int], offsets: Sequence[int], dim: int,
                  backward: bool, **args: object) -> int | None:
    """Run ``ie_one_hot_linear``; the field with an index out of range (nothing written), or None."""
    library = lib()
    assert library is not None, "one-hot kernels need the native library (check lib() first)"
    rows = math.prod(indices[0].shape[:-1])
    flat = [i.reshape(rows, i.shape[-1]).contiguous() for i in indices]
    fields = (_Field * len(flat))(*[_Field(i.data_ptr(), i.dtype == torch.int64, i.shape[1], n, off)
                                    for i, n, off in zip(flat, num_classes, offsets)])
    call = _OneHot(fields, len(flat), rows, dim, **args)
    work = rows * dim * 4 * (1 + sum(i.shape[1] for i in flat))
    status = library.ie_one_hot_linear(ctypes.byref(call), backward, _threads(work))
    if status < 0:
        raise MemoryError("inductor_embed's CPU one-hot kernel could not allocate its scratch memory")
    return status - 1 if status > 0 else None


def one_hot_linear(indices: Sequence[Tensor], num_classes: Sequence[int], offsets: Sequence[int], weight: Tensor,
                   bias: Tensor | None) -> tuple[Tensor, int | None]:
    """``one_hot_linear_ref`` for fp32: ``(out [*L, D], bad)``, ``bad`` the first field with an
    index outside ``[0, num_classes)`` (then nothing is computed), else None.

    Shapes: F index tensors ``[*L, bag_k]`` int32/int64 (field k's index i names column
    ``offsets[k] + i``); ``weight [D, V]`` fp32, any strides; ``bias [D]`` fp32 or None.
    Each row is the fp32 sum of its fields' sums of columns, plus the bias.
    """
    assert weight.dtype == torch.float32 and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous()))
    d = weight.shape[0]
    out = torch.empty((*indices[0].shape[:-1], d), dtype=torch.float32)
    bad = _one_hot_call(indices, num_classes, offsets, d, False, weight=weight.data_ptr(), w_row=weight.stride(0),
                        w_col=weight.stride(1), bias=_ptr(bias), out=out.data_ptr())
    return out, bad


def one_hot_linear_backward(grad: Tensor, indices: Sequence[Tensor], num_classes: Sequence[int],
                            offsets: Sequence[int], num_columns: int, has_bias: bool,
                            v_major: bool) -> tuple[Tensor, int | None]:
    """``one_hot_linear_backward_ref`` for fp32: ``(flat, bad)`` as ``one_hot_linear``.

    ``grad [*L, D]`` fp32; ``flat [D * V (+ D)]``: the weight's gradient, laid out as a
    row-major ``[V, D]`` (``v_major``) or ``[D, V]``, then the bias's (grad's column sums).
    Each column's sum adds the positions in order, from +0.0 (deterministic).
    """
    d = grad.shape[-1]
    g = grad.reshape(math.prod(grad.shape[:-1]), d)
    if g.stride(-1) != 1:
        g = g.contiguous()
    flat = torch.empty(d * num_columns + (d if has_bias else 0), dtype=torch.float32)
    bad = _one_hot_call(indices, num_classes, offsets, d, True, grad=g.data_ptr(), grad_stride=g.stride(0),
                        flat=flat.data_ptr(), num_columns=num_columns, v_major=v_major, has_bias=has_bias)
    return flat, bad


_stable: dict[torch.dtype, int | None] = {}


def stable_sort_from(dtype: torch.dtype) -> int | None:
    """The length from which ATen's ``sort()`` of a 1-D ``dtype`` tensor is stable (FBGEMM's
    parallel radix sort, used from ``at::internal::GRAIN_SIZE`` = 32,768 elements where the
    build has it; shorter ones take ``std::sort``), or None where this build's is not.
    Probed once per dtype: equal keys must come out in position order at that length and
    at 4x it."""
    if dtype not in _stable:
        start = 32768
        ok = True
        for n in (start, 4 * start):
            keys = (torch.arange(n, dtype=torch.int64) * 2654435761 % 7).to(dtype)
            order = keys.sort().indices
            ranked = keys[order]
            same = ranked[1:] == ranked[:-1]  # neighbours with one key: positions must ascend
            ok = ok and bool((order[1:] > order[:-1])[same].all())
        _stable[dtype] = start if ok else None
    return _stable[dtype]
