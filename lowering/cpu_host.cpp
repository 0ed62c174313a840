// The host side of the lookups' CPU backward in C++: inductor_embed::multi_embedding_backward_cpu_fast.
//
// lowering/_cpu_host.py compiles this file on first use (against the running torch's headers)
// and loads it with torch.ops.load_library; it registers this op's CPU kernel, which overrides
// the op's Python one (a fallback: the same work through multi_embedding_backward_cpu).
//
// Why: at a small batch the lookups' backward is host work. The Python op took ~86 us a call at
// 26 tables (the dispatcher's trip into Python, a tensor call or two per table to build the
// native kernel's structs, an allocation per table); this kernel builds the same ie_table structs
// from the IValues and calls the same native kernel (cpu_kernels.c's ie_bag_grad, whose address
// ie_host_bind binds). What it does not do itself it hands to the Python op, arguments as they
// came: unchecked calls, zeroed columns, scale_grad_by_freq, a table of 1 MiB or more (its buffer
// comes from the reused-gradient cache, lowering/_grad_cache.py), an odd dtype or shape, and any
// nonzero status of the kernel (an index out of range: nothing was written, and the Python op
// raises eager's error).

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

// cpu_kernels.c's ie_table, field for field (every field 8 bytes; _host_bind checks the size).
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

using BagGrad = int64_t (*)(const IeTable*, int64_t, int64_t);

std::atomic<BagGrad> bag_grad{nullptr};
// _cpu_native's STREAMING_BYTES, THREADED_BYTES and _grad_cache.MIN_BYTES, as bound.
int64_t streaming_bytes = 0, threaded_bytes = 0, cache_min_bytes = 0;
std::atomic<bool> forked{false};  // a forked child runs on one thread (see _cpu_native._threads)

}  // namespace

// Binds the native kernel (ie_bag_grad's address) and _cpu_native's constants; called by
// _cpu_host._load through ctypes (no op: nothing in the registry depends on the build). 0, or
// -1 where ie_table's size is not this file's (then nothing is bound).
extern "C" int64_t ie_host_bind(int64_t address, int64_t table_size, int64_t streaming, int64_t threaded,
                                int64_t cache_min) {
  if (table_size != (int64_t)sizeof(IeTable)) return -1;
  streaming_bytes = streaming;
  threaded_bytes = threaded;
  cache_min_bytes = cache_min;
  static bool once = [] { return pthread_atfork(nullptr, nullptr, [] { forked = true; }) == 0; }();
  (void)once;
  bag_grad = reinterpret_cast<BagGrad>(address);
  return 0;
}

namespace {

// The ints of an int[] / SymInt[] argument; false where one is symbolic.
bool ints(const c10::IValue& v, std::vector<int64_t>& out) {
  for (const c10::IValue& x : v.toListRef()) {
    if (!x.isInt()) return false;
    out.push_back(x.toInt());
  }
  return true;
}

// The fast path; false (the stack untouched) where the Python op must run instead.
bool fast(torch::jit::Stack* stack) {
  constexpr int kArgs = 9;
  const BagGrad kernel = bag_grad.load();
  if (kernel == nullptr || stack->size() < kArgs) return false;
  c10::IValue* a = &(*stack)[stack->size() - kArgs];
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
    if (rows[k] * dims[k] * elem >= cache_min_bytes || cols[k] < 0 || dims[k] < 0 || cols[k] + dims[k] > c)
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
  const int64_t threads = work >= threaded_bytes && !forked.load() ? at::get_num_threads() : 1;
  if (kernel(tables.data(), (int64_t)t, threads) != 0) return false;  // the Python op raises
  torch::jit::drop(*stack, kArgs);
  torch::jit::push(*stack, c10::List<at::Tensor>(outs));
  return true;
}

void kernel(const c10::OperatorHandle&, c10::DispatchKeySet, torch::jit::Stack* stack) {
  if (fast(stack)) return;
  static const c10::OperatorHandle python =
      c10::Dispatcher::singleton().findSchemaOrThrow("inductor_embed::multi_embedding_backward_cpu", "");
  python.callBoxed(stack);
}

}  // namespace

TORCH_LIBRARY_IMPL(inductor_embed, CPU, m) {
  m.impl("multi_embedding_backward_cpu_fast", torch::CppFunction::makeFromBoxedFunction<&kernel>());
}
