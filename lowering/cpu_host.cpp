// The host side of five CPU ops in C++: inductor_embed::multi_embedding_backward_cpu_fast (the
// lookups' backward), multi_embedding_bag_cpu_fast and multi_embedding_bag_backward_cpu_fast (the
// bags' forward and backward), one_hot_linear_cpu_fast and one_hot_linear_backward_cpu_fast.
//
// lowering/_cpu_host.py compiles this file on first use (against the running torch's headers)
// and loads it with ctypes: the dlopen registers each op's CPU kernel, which overrides the op's
// Python one (the fallback: the same work through the Python op without _fast).
//
// Why: at a small batch these ops are host work. The Python ops took 84-214 us a call at 26
// tables (the dispatcher's trip into Python, a tensor call or two per struct field of every
// table, an allocation per table); these kernels build the same structs from the IValues and
// call the same native kernels (cpu_kernels.c's ie_bag_grad, ie_bag_forward and
// ie_one_hot_linear, whose addresses ie_host_bind binds, with the Python side's probes of
// ATen's sort). What a kernel does not take it hands to the Python op, arguments as they came
// (each kernel's head lists what), and so does any nonzero status of a native kernel (an index
// or offset out of range: no result was written, and the Python op raises eager's error).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <vector>

namespace {

// cpu_kernels.c's ie_table, field for field (every field 8 bytes; ie_host_bind checks the size).
struct IeTable {
  int64_t rows, dim;
  void* out;
  const void* grad;
  int64_t grad_stride, num_bags, nnz;
  const void* idx;
  int64_t idx64, idx_stride0, idx_stride1;
  const void* order;
  int64_t bag_len;
  const void* offsets;
  int64_t offsets64;
  const void* weights;
  int64_t mean, padding_idx, accumulate, streaming, scatter, aten_sort, half;
};

// cpu_kernels.c's ie_pool (a table's pooled forward), field for field.
struct IePool {
  IeTable t;
  const void* weight;
  int64_t w_stride;
  void* out;
  int64_t out_stride;
  void* arg;
  int64_t arg_stride;
  void* grad_w;
  int64_t fma, n_offsets, last_is_end;
};

// cpu_kernels.c's ie_field and ie_one_hot (one_hot_linear's fields and call), field for field.
struct IeField {
  const void* idx;
  int64_t idx64, bag, num_classes, offset;
};
struct IeOneHot {
  const IeField* fields;
  int64_t n_fields, rows, dim;
  const float* weight;
  int64_t w_row, w_col;
  const float* bias;
  float* out;
  const float* grad;
  int64_t grad_stride;
  float* flat;
  int64_t num_columns, v_major, has_bias;
};

using BagGrad = int64_t (*)(const IeTable*, int64_t, int64_t);
using BagForward = int64_t (*)(const IePool*, int64_t, int64_t);
using OneHot = int64_t (*)(const IeOneHot*, int64_t, int64_t);

std::atomic<BagGrad> bag_grad{nullptr};
std::atomic<BagForward> bag_forward{nullptr};
std::atomic<OneHot> one_hot{nullptr};
// _cpu_native's STREAMING_BYTES, THREADED_BYTES and _grad_cache.MIN_BYTES, as bound.
int64_t streaming_bytes = 0, threaded_bytes = 0, cache_min_bytes = 0;
// A forked child runs the kernels on the calling thread (see _cpu_native._threads): set by the
// fork handler this library installs when it is loaded, or at bind where the process loading it
// is itself a fork (_cpu_native's own handler saw it).
std::atomic<bool> forked{false};
[[maybe_unused]] const bool fork_handler = pthread_atfork(nullptr, nullptr, [] { forked = true; }) == 0;
// Per index type (int32, int64): _cpu_native.stable_sort_from (-1: None) and aten_sort_matches,
// probed by the Python side before binding.
int64_t stable_from[2] = {-1, -1}, replica[2] = {0, 0};

}  // namespace

// Binds the native kernels (ie_bag_grad's, ie_bag_forward's, ie_one_hot_linear's addresses), _cpu_native's
// constants, the probes of ATen's sort (stable_from, replica: -1 / 0 where not probed) and
// whether this process is a fork; called by _cpu_host._load through ctypes (no op: nothing in
// the registry depends on the build). 0, or -1 where a struct's size is not this file's (then
// nothing is bound: the kernels, registered when the library was loaded, hand every call to
// the Python ops).
extern "C" int64_t ie_host_bind(int64_t address, int64_t table_size, int64_t forward, int64_t pool_size,
                                int64_t streaming, int64_t threaded, int64_t cache_min, int64_t stable32,
                                int64_t stable64, int64_t replica32, int64_t replica64, int64_t is_fork,
                                int64_t one_hot_address, int64_t field_size, int64_t one_hot_size) {
  if (table_size != (int64_t)sizeof(IeTable) || pool_size != (int64_t)sizeof(IePool) ||
      field_size != (int64_t)sizeof(IeField) || one_hot_size != (int64_t)sizeof(IeOneHot))
    return -1;
  stable_from[0] = stable32;
  stable_from[1] = stable64;
  replica[0] = replica32;
  replica[1] = replica64;
  streaming_bytes = streaming;
  threaded_bytes = threaded;
  cache_min_bytes = cache_min;
  if (is_fork) forked = true;
  bag_grad = reinterpret_cast<BagGrad>(address);
  bag_forward = reinterpret_cast<BagForward>(forward);
  one_hot = reinterpret_cast<OneHot>(one_hot_address);
  return 0;
}

namespace {

// Whether a [rows, dim] gradient of elem-byte elements is one this file allocates: sizes in
// range (no overflow below) and under cache_min_bytes (bigger ones come from the Python side's
// reused-gradient cache).
bool small_table(int64_t rows, int64_t dim, int64_t elem) {
  return rows >= 0 && dim >= 0 && rows < (int64_t(1) << 40) && dim < (int64_t(1) << 20) &&
         rows * dim * elem < cache_min_bytes;
}

// Threads for a call moving about `work` bytes: _cpu_native._threads' rule (torch's count past
// THREADED_BYTES, else one; one in a forked child).
int64_t threads_for(int64_t work) {
  return work >= threaded_bytes && !forked.load() ? at::get_num_threads() : 1;
}

// The op's n arguments on the stack (the last n), or nullptr where there are fewer.
c10::IValue* args(torch::jit::Stack* stack, size_t n) {
  return stack->size() < n ? nullptr : &(*stack)[stack->size() - n];
}

// The ints of an int[] / SymInt[] argument; false where one is symbolic.
bool ints(const c10::IValue& v, std::vector<int64_t>& out) {
  for (const c10::IValue& x : v.toListRef()) {
    if (!x.isInt()) return false;
    out.push_back(x.toInt());
  }
  return true;
}

// multi_embedding_backward_cpu's common case; false (the stack untouched) where the Python op
// must run instead: unchecked calls, zeroed columns, scale_grad_by_freq, a table of 2 MiB or more
// (its buffer comes from the reused-gradient cache, lowering/_grad_cache.py), an empty batch, an
// odd dtype or shape.
bool lookups_backward(torch::jit::Stack* stack) {
  constexpr int kArgs = 9;
  const BagGrad kernel = bag_grad.load();
  c10::IValue* a = args(stack, kArgs);
  if (kernel == nullptr || a == nullptr) return false;
  // (grad, indices, num_rows, dims, padding_idx, scale_grad_by_freq, columns, zeroed, checked)
  if (!a[0].isTensor() || !a[8].toBool() || !a[7].toListRef().empty()) return false;
  at::Tensor grad = a[0].toTensor();
  const c10::ScalarType dtype = grad.scalar_type();
  const int64_t half = dtype == at::kBFloat16 ? 1 : dtype == at::kHalf ? 2 : 0;
  if (!grad.device().is_cpu() || (half == 0 && dtype != at::kFloat) || grad.dim() < 1) return false;
  for (const c10::IValue& s : a[5].toListRef())
    if (s.toBool()) return false;
  std::vector<int64_t> rows, dims, pads, cols;
  if (!ints(a[2], rows) || !ints(a[3], dims) || !ints(a[4], pads) || !ints(a[6], cols)) return false;
  const c10::List<at::Tensor> indices = a[1].toTensorList();
  const size_t t = indices.size();
  const int64_t c = grad.size(-1), elem = (int64_t)grad.element_size();
  if (c <= 0 || rows.size() != t || dims.size() != t || pads.size() != t || cols.size() != t) return false;
  const int64_t n = grad.numel() / c;
  if (n <= 0 || n >= (int64_t(1) << 31)) return false;
  for (size_t k = 0; k < t; k++)
    if (!small_table(rows[k], dims[k], elem) || cols[k] < 0 || cols[k] + dims[k] > c)
      return false;
  grad = grad.reshape({n, c});
  if (grad.stride(1) != 1 && c > 1) grad = grad.contiguous();
  std::vector<at::Tensor> flat(t), outs(t);
  std::vector<IeTable> tables(t);
  int64_t written = 0, work = 0;
  const char* g0 = static_cast<const char*>(grad.data_ptr());
  for (size_t k = 0; k < t; k++) {
    at::Tensor i = indices.get(k);
    if (i.dim() != 1) i = i.reshape({-1});
    const c10::ScalarType it = i.scalar_type();
    if ((it != at::kLong && it != at::kInt) || i.numel() != n || !i.device().is_cpu()) return false;
    flat[k] = i;
    outs[k] = at::empty({rows[k], dims[k]}, grad.options());
    IeTable& e = tables[k];
    e = IeTable{};
    e.rows = rows[k];
    e.dim = dims[k];
    e.out = outs[k].data_ptr();
    e.grad = g0 + elem * cols[k];
    e.grad_stride = grad.stride(0);
    e.num_bags = e.nnz = n;
    e.idx = i.data_ptr();
    e.idx64 = it == at::kLong;
    e.idx_stride0 = n > 1 ? i.stride(0) : 1;
    e.bag_len = 1;
    e.padding_idx = pads[k];
    e.scatter = 1;  // (_cpu_native._scatters: position order, no sort)
    e.half = half;
    written += rows[k] * dims[k] * elem;
    work += n * dims[k] * elem;
  }
  if (written >= streaming_bytes)
    for (IeTable& e : tables) e.streaming = 1;
  work += written;
  const int64_t threads = threads_for(work);
  if (kernel(tables.data(), (int64_t)t, threads) != 0) return false;  // the Python op raises
  torch::jit::drop(*stack, kArgs);
  torch::jit::push(*stack, c10::List<at::Tensor>(outs));
  return true;
}

// multi_embedding_bag_cpu's common case (every table fp32 rows of unit column stride, no
// per-sample weights, contiguous offsets); false (the stack untouched) where the Python op must
// run instead, which also raises the errors of bad indices or offsets (the kernel writes no
// result then).
bool bags_forward(torch::jit::Stack* stack) {
  constexpr int kArgs = 8;
  const BagForward kernel = bag_forward.load();
  c10::IValue* a = args(stack, kArgs);
  if (kernel == nullptr || a == nullptr) return false;
  // (weights, indices, offsets, per_sample_weights, modes, padding_idx, include_last_offset, checked)
  if (!a[7].toBool() || !a[3].toListRef().empty()) return false;
  const c10::List<at::Tensor> weights = a[0].toTensorList(), indices = a[1].toTensorList();
  const c10::List<std::optional<at::Tensor>> offsets = a[2].toOptionalTensorList();
  std::vector<int64_t> modes, pads;
  if (!ints(a[4], modes) || !ints(a[5], pads)) return false;
  std::vector<bool> last;
  for (const c10::IValue& x : a[6].toListRef()) last.push_back(x.toBool());
  const size_t t = weights.size();
  if (t == 0 || indices.size() != t || offsets.size() != t || modes.size() != t || pads.size() != t ||
      last.size() != t)
    return false;
  std::vector<at::Tensor> w(t), ix(t), off(t);
  int64_t b = -1, cols = 0, max_cols = 0, work = 0;
  for (size_t k = 0; k < t; k++) {
    w[k] = weights.get(k);
    ix[k] = indices.get(k);
    const std::optional<at::Tensor> o = offsets.get(k);
    if (o.has_value()) off[k] = *o;
    const at::Tensor &wk = w[k], &ik = ix[k];
    if (wk.scalar_type() != at::kFloat || !wk.device().is_cpu() || wk.dim() != 2 || wk.stride(1) != 1) return false;
    const c10::ScalarType it = ik.scalar_type();
    if ((it != at::kLong && it != at::kInt) || !ik.device().is_cpu() || modes[k] < 0 || modes[k] > 2) return false;
    int64_t bags;
    if (off[k].defined()) {
      if (ik.dim() != 1 || off[k].dim() != 1 || !off[k].is_contiguous() || !off[k].device().is_cpu()) return false;
      const c10::ScalarType ot = off[k].scalar_type();
      if (ot != at::kLong && ot != at::kInt) return false;
      bags = off[k].size(0) - (last[k] ? 1 : 0);
    } else {
      if (ik.dim() != 2 || ik.size(1) == 0) return false;  // ([B, 0]: ATen raises; the Python op does)
      bags = ik.size(0);
    }
    if (bags < 0 || (b >= 0 && bags != b)) return false;
    b = bags;
    cols += wk.size(1);
    max_cols += modes[k] == 2 ? wk.size(1) : 0;
    work += ik.numel() * wk.size(1) * 4;
  }
  at::Tensor out = at::empty({b, cols}, w[0].options());
  at::Tensor arg = at::empty({b, max_cols}, w[0].options().dtype(at::kLong));
  std::vector<IePool> pools(t);
  char* o0 = static_cast<char*>(out.data_ptr());
  char* a0 = static_cast<char*>(arg.data_ptr());
  int64_t col = 0, am = 0;
  for (size_t k = 0; k < t; k++) {
    const at::Tensor &wk = w[k], &ik = ix[k];
    const bool two_d = !off[k].defined();
    IePool& p = pools[k];
    p = IePool{};
    p.t.rows = wk.size(0);
    p.t.dim = wk.size(1);
    p.t.num_bags = b;
    p.t.nnz = ik.numel();
    p.t.idx = ik.data_ptr();
    p.t.idx64 = ik.scalar_type() == at::kLong;
    p.t.idx_stride0 = two_d ? ik.stride(0) : 0;
    p.t.idx_stride1 = ik.stride(-1);
    p.t.bag_len = two_d ? ik.size(1) : 0;
    p.t.offsets = two_d ? nullptr : off[k].data_ptr();
    p.t.offsets64 = !two_d && off[k].scalar_type() == at::kLong;
    p.t.mean = modes[k] == 1;
    p.t.padding_idx = pads[k];
    p.weight = wk.data_ptr();
    p.w_stride = wk.stride(0);
    p.out = o0 + 4 * col;
    p.out_stride = out.stride(0);
    if (modes[k] == 2) {
      p.arg = a0 + 8 * am;
      p.arg_stride = arg.stride(0);
      am += wk.size(1);
    }
    p.n_offsets = two_d ? 0 : off[k].size(0);
    p.last_is_end = !two_d && last[k];
    col += wk.size(1);
  }
  const int64_t threads = threads_for(work);
  if (kernel(pools.data(), (int64_t)t, threads) != 0) return false;  // the Python op raises
  torch::jit::drop(*stack, kArgs);
  torch::jit::push(*stack, std::move(out), std::move(arg));
  return true;
}

// multi_embedding_bag_backward_cpu's common case (bag_backward_cpu.bag_grads_cpu's native
// path): dense fp32 sum / mean tables of under 2 MiB, no per-sample weights, no
// include_last_offset, grad of unit column stride, contiguous offsets, a batch and positions;
// the order of ATen's sort made by the native kernel (a stable sort's from stable_from on, else
// its std::sort replica where the probe says it is this build's). Everything else, and a
// nonzero status (an index out of range; the replica turned to a heap sort), goes to the Python
// op, arguments as they came.
bool bags_backward(torch::jit::Stack* stack) {
  constexpr int kArgs = 14;
  const BagGrad kernel = bag_grad.load();
  c10::IValue* a = args(stack, kArgs);
  if (kernel == nullptr || a == nullptr) return false;
  // (grad, arg_max, indices, offsets, per_sample_weights, num_rows, dims, modes, padding_idx,
  //  include_last_offset, sparse, coalesce, as_values, checked)
  if (!a[0].isTensor() || a[12].toBool() || !a[13].toBool()) return false;
  const at::Tensor grad = a[0].toTensor();
  if (grad.scalar_type() != at::kFloat || !grad.device().is_cpu() || grad.dim() != 2 ||
      (grad.stride(1) != 1 && grad.size(1) > 1))
    return false;
  for (const c10::IValue& x : a[4].toListRef())
    if (!x.isNone()) return false;
  for (size_t j : {9, 10})
    for (const c10::IValue& x : a[j].toListRef())
      if (x.toBool()) return false;
  std::vector<int64_t> rows, dims, modes, pads;
  if (!ints(a[5], rows) || !ints(a[6], dims) || !ints(a[7], modes) || !ints(a[8], pads)) return false;
  const c10::List<at::Tensor> indices = a[2].toTensorList();
  const c10::List<std::optional<at::Tensor>> offsets = a[3].toOptionalTensorList();
  const size_t t = indices.size();
  if (rows.size() != t || dims.size() != t || modes.size() != t || pads.size() != t || offsets.size() != t)
    return false;
  const int64_t b = grad.size(0);
  if (b <= 0 || b >= (int64_t(1) << 31)) return false;
  std::vector<at::Tensor> keep(2 * t), outs(t);
  std::vector<IeTable> tables(t);
  int64_t col = 0, written = 0, work = 0;
  const char* g0 = static_cast<const char*>(grad.data_ptr());
  for (size_t k = 0; k < t; k++) {
    const at::Tensor i = indices.get(k);
    const std::optional<at::Tensor> o = offsets.get(k);
    const int64_t nnz = i.numel(), d = dims[k];
    const c10::ScalarType it = i.scalar_type();
    const int64_t is64 = it == at::kLong;
    if ((modes[k] != 0 && modes[k] != 1) || (it != at::kLong && it != at::kInt) || !i.device().is_cpu() ||
        nnz == 0 || nnz >= (int64_t(1) << 31) || !small_table(rows[k], d, 4) || col + d > grad.size(1))
      return false;
    IeTable& e = tables[k];
    e = IeTable{};
    if (o.has_value()) {
      const at::Tensor& off = *o;
      if (i.dim() != 1 || off.dim() != 1 || !off.is_contiguous() || off.size(0) != b ||
          (off.scalar_type() != at::kLong && off.scalar_type() != at::kInt))
        return false;
      e.offsets = off.data_ptr();
      e.offsets64 = off.scalar_type() == at::kLong;
      e.idx_stride1 = i.stride(0);
      keep[t + k] = off;
    } else {
      if (i.dim() != 2 || i.size(0) != b) return false;
      e.idx_stride0 = i.stride(0);
      e.idx_stride1 = i.stride(1);
      e.bag_len = i.size(1);
    }
    // ATen's order: a stable sort's from stable_from on (position order: scattered), else
    // std::sort's (the kernel's replica, where it matches this build's)
    const bool stable = stable_from[is64] >= 0 && nnz >= stable_from[is64];
    if (!stable && (!replica[is64] || rows[k] >= (int64_t(1) << 31))) return false;
    keep[k] = i;
    outs[k] = at::empty({rows[k], d}, grad.options());
    e.rows = rows[k];
    e.dim = d;
    e.out = outs[k].data_ptr();
    e.grad = g0 + 4 * col;
    e.grad_stride = grad.stride(0);
    e.num_bags = b;
    e.nnz = nnz;
    e.idx = i.data_ptr();
    e.idx64 = is64;
    e.mean = modes[k] == 1;
    e.padding_idx = pads[k];
    e.scatter = stable;
    e.aten_sort = !stable;
    col += d;
    written += rows[k] * d * 4;
    work += nnz * d * 4;
  }
  if (written >= streaming_bytes)
    for (IeTable& e : tables) e.streaming = 1;
  work += written;
  const int64_t threads = threads_for(work);
  if (kernel(tables.data(), (int64_t)t, threads) != 0) return false;  // the Python op raises / sorts
  torch::jit::drop(*stack, kArgs);
  torch::jit::push(*stack, c10::List<at::Tensor>(outs));
  return true;
}

// One-hot fields' structure as _checks._fields checks it (else the Python op raises its error):
// int32 / int64 CPU indices [*lead, bag_k], the counts equal, each field's columns
// [offset, offset + n) inside [0, columns) with n >= 1. Their [rows, bag] contiguous forms (kept
// alive in `keep`) and the kernel's fields, or false.
bool one_hot_fields(const c10::IValue& iv, const c10::IValue& nv, const c10::IValue& ov, at::IntArrayRef lead,
                    int64_t columns, std::vector<at::Tensor>& keep, std::vector<IeField>& fields) {
  std::vector<int64_t> classes, offsets;
  if (!ints(nv, classes) || !ints(ov, offsets)) return false;
  const c10::List<at::Tensor> indices = iv.toTensorList();
  const size_t f = indices.size();
  if (f == 0 || classes.size() != f || offsets.size() != f) return false;
  const int64_t rows = c10::multiply_integers(lead);
  for (size_t k = 0; k < f; k++) {
    at::Tensor i = indices.get(k);
    const c10::ScalarType it = i.scalar_type();
    if ((it != at::kLong && it != at::kInt) || !i.device().is_cpu() || i.dim() != (int64_t)lead.size() + 1 ||
        i.sizes().slice(0, lead.size()) != lead || classes[k] < 1 || offsets[k] < 0 ||
        offsets[k] > columns - classes[k])
      return false;
    i = i.reshape({rows, i.size(-1)}).contiguous();
    keep.push_back(i);
    fields.push_back(IeField{i.data_ptr(), it == at::kLong, i.size(1), classes[k], offsets[k]});
  }
  return true;
}

// A one-hot call's bytes moved (_cpu_native._one_hot_call's measure): rows x D floats, once for
// the output or grad and once per position of every field's bag.
int64_t one_hot_work(const std::vector<IeField>& fields, int64_t rows, int64_t d) {
  int64_t bags = 1;
  for (const IeField& x : fields) bags += x.bag;
  return rows * d * 4 * bags;
}

// one_hot_linear_cpu's common case: an fp32 CPU weight [D, V] (any strides), an fp32 bias [D]
// or none, the fields' structure sound (one_hot_fields); else, and on a nonzero status (an index
// outside its field's classes: nothing computed), the Python op, which raises its error.
bool one_hot_forward(torch::jit::Stack* stack) {
  constexpr int kArgs = 5;
  const OneHot kernel = one_hot.load();
  c10::IValue* a = args(stack, kArgs);
  if (kernel == nullptr || a == nullptr || !a[3].isTensor()) return false;
  // (indices, num_classes, offsets, weight, bias)
  const at::Tensor weight = a[3].toTensor();
  if (weight.scalar_type() != at::kFloat || !weight.device().is_cpu() || weight.dim() != 2) return false;
  at::Tensor bias;
  if (!a[4].isNone()) {
    bias = a[4].toTensor();
    if (bias.scalar_type() != at::kFloat || !bias.device().is_cpu() || bias.dim() != 1 ||
        bias.size(0) != weight.size(0))
      return false;
    bias = bias.contiguous();
  }
  const c10::List<at::Tensor> indices = a[0].toTensorList();
  if (indices.size() == 0 || indices.get(0).dim() < 1) return false;
  const at::Tensor first = indices.get(0);
  const std::vector<int64_t> lead(first.sizes().begin(), first.sizes().end() - 1);
  std::vector<at::Tensor> keep;
  std::vector<IeField> fields;
  if (!one_hot_fields(a[0], a[1], a[2], lead, weight.size(1), keep, fields)) return false;
  const int64_t rows = c10::multiply_integers(lead), d = weight.size(0);
  std::vector<int64_t> shape(lead);
  shape.push_back(d);
  at::Tensor out = at::empty(shape, weight.options());
  IeOneHot call{};
  call.fields = fields.data();
  call.n_fields = (int64_t)fields.size();
  call.rows = rows;
  call.dim = d;
  call.weight = weight.data_ptr<float>();
  call.w_row = weight.stride(0);
  call.w_col = weight.stride(1);
  call.bias = bias.defined() ? bias.data_ptr<float>() : nullptr;
  call.out = out.data_ptr<float>();
  const int64_t threads = threads_for(one_hot_work(fields, rows, d));
  if (kernel(&call, 0, threads) != 0) return false;
  torch::jit::drop(*stack, kArgs);
  torch::jit::push(*stack, std::move(out));
  return true;
}

// one_hot_linear_backward_cpu's common case: an fp32 CPU grad [*L, D], dtype fp32, the fields'
// structure sound; else, and on a nonzero status, the Python op.
bool one_hot_backward(torch::jit::Stack* stack) {
  constexpr int kArgs = 8;
  const OneHot kernel = one_hot.load();
  c10::IValue* a = args(stack, kArgs);
  if (kernel == nullptr || a == nullptr || !a[0].isTensor() || !a[4].isInt()) return false;
  // (grad, indices, num_classes, offsets, num_columns, has_bias, v_major, dtype)
  at::Tensor grad = a[0].toTensor();
  const int64_t columns = a[4].toInt();
  const bool has_bias = a[5].toBool(), v_major = a[6].toBool();
  if (grad.scalar_type() != at::kFloat || !grad.device().is_cpu() || grad.dim() < 1 || columns < 0 ||
      a[7].toScalarType() != at::kFloat)
    return false;
  const std::vector<int64_t> lead(grad.sizes().begin(), grad.sizes().end() - 1);
  std::vector<at::Tensor> keep;
  std::vector<IeField> fields;
  if (!one_hot_fields(a[1], a[2], a[3], lead, columns, keep, fields)) return false;
  const int64_t rows = c10::multiply_integers(lead), d = grad.size(-1);
  grad = grad.reshape({rows, d});
  if (grad.stride(1) != 1) grad = grad.contiguous();
  at::Tensor flat = at::empty({d * columns + (has_bias ? d : 0)}, grad.options());
  IeOneHot call{};
  call.fields = fields.data();
  call.n_fields = (int64_t)fields.size();
  call.rows = rows;
  call.dim = d;
  call.grad = grad.data_ptr<float>();
  call.grad_stride = grad.stride(0);
  call.flat = flat.data_ptr<float>();
  call.num_columns = columns;
  call.v_major = v_major;
  call.has_bias = has_bias;
  const int64_t threads = threads_for(one_hot_work(fields, rows, d));
  if (kernel(&call, 1, threads) != 0) return false;
  torch::jit::drop(*stack, kArgs);
  torch::jit::push(*stack, std::move(flat));
  return true;
}

// A boxed CPU kernel: `fast` where it takes the call, else the Python op `python`, which gets
// the arguments as they came.
template <bool (*fast)(torch::jit::Stack*), const char* python>
void kernel(const c10::OperatorHandle&, c10::DispatchKeySet, torch::jit::Stack* stack) {
  if (fast(stack)) return;
  static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow(python, "");
  op.callBoxed(stack);
}

constexpr char kLookupsBackward[] = "inductor_embed::multi_embedding_backward_cpu";
constexpr char kBagsForward[] = "inductor_embed::multi_embedding_bag_cpu";
constexpr char kBagsBackward[] = "inductor_embed::multi_embedding_bag_backward_cpu";
constexpr char kOneHotForward[] = "inductor_embed::one_hot_linear_cpu";
constexpr char kOneHotBackward[] = "inductor_embed::one_hot_linear_backward_cpu";

}  // namespace

TORCH_LIBRARY_IMPL(inductor_embed, CPU, m) {
  m.impl("multi_embedding_backward_cpu_fast",
         torch::CppFunction::makeFromBoxedFunction<&kernel<&lookups_backward, kLookupsBackward>>());
  m.impl("multi_embedding_bag_cpu_fast",
         torch::CppFunction::makeFromBoxedFunction<&kernel<&bags_forward, kBagsForward>>());
  m.impl("multi_embedding_bag_backward_cpu_fast",
         torch::CppFunction::makeFromBoxedFunction<&kernel<&bags_backward, kBagsBackward>>());
  m.impl("one_hot_linear_cpu_fast",
         torch::CppFunction::makeFromBoxedFunction<&kernel<&one_hot_forward, kOneHotForward>>());
  m.impl("one_hot_linear_backward_cpu_fast",
         torch::CppFunction::makeFromBoxedFunction<&kernel<&one_hot_backward, kOneHotBackward>>());
}
