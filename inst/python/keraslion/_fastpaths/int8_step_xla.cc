// The int8 step (`int8_step.c`) of a set of variables as one XLA custom call,
// for JAX and TensorFlow on the CPU. Each has an XLA of its own, and this
// file is built for each against that XLA's FFI headers: JAX registers the
// handler it exports, TensorFlow through `keraslion_register_int8_steps`.
//
// The weights and int8 state are aliased to the results: with donated
// buffers (as `fit` and a jitted, donated `stateless_apply` give them) the
// step runs in place, in one pass; XLA copies an input first where it is
// still read afterwards. All variables' blocks are shared among XLA's
// intra-op threads.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

extern "C" {
#include "int8_step.c"
}

namespace ffi = xla::ffi;

namespace {

// Elements per thread at least, as `native.PER_THREAD`.
constexpr int64_t kPerThread = 1 << 16;

template <typename In, typename Out>
void CopyUnlessAliased(const In& input, Out& output) {
  if (output->untyped_data() != input.untyped_data()) {
    std::memcpy(output->untyped_data(), input.untyped_data(), input.size_bytes());
  }
}

// Runs `run(begin, end)` over `units` in chunks, on the calling thread and
// on up to `threads - 1` tasks of XLA's pool. The caller takes chunks too and
// waits only for chunks that tasks have begun: XLA may run several custom
// calls at once on its pool, and a caller waiting for tasks still queued
// behind them would wait for good.
template <typename Run>
void InParallel(ffi::ThreadPool& pool, int64_t threads, int64_t units, Run run) {
  struct Shared {
    std::atomic<int64_t> next{0};
    int64_t finished = 0;
    std::mutex mutex;
    std::condition_variable done;
  };
  if (threads == 1) {  // A small variable, or one CPU: nothing to share.
    run(0, units);
    return;
  }
  int64_t chunks = std::min(units, threads * 4);
  auto shared = std::make_shared<Shared>();
  // A task that begins after the last chunk was taken returns at once; it
  // holds `shared`, and reaches `run` (and the buffers) only for a chunk.
  auto work = [shared, chunks, units, run] {
    for (int64_t chunk; (chunk = shared->next.fetch_add(1)) < chunks;) {
      run(units * chunk / chunks, units * (chunk + 1) / chunks);
      std::lock_guard<std::mutex> lock(shared->mutex);
      if (++shared->finished == chunks) shared->done.notify_all();
    }
  };
  for (int64_t t = 1; t < threads; t++) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(shared->mutex);
  shared->done.wait(lock, [&] { return shared->finished == chunks; });
}

// One variable's buffers, and where its blocks begin among all variables'.
struct Variable {
  float* theta;
  const float* gradient;
  int8_t* state;
  int64_t width, block, first_unit;
  bool decayed;
};

// The step of every variable: `state` holds each one's gradient, weights and
// int8 state (`int8.pack`), `results` each one's new weights and state (each
// aliased to its operand), `blocks` and `decayed` each one's block and
// whether it takes weight decay, `keys` each one's noise key. One call for
// all of them: a custom call per variable took XLA longer to run than the
// step of a small variable.
ffi::Error Int8Steps(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> keys,
                     ffi::Buffer<ffi::F32> coefficients, ffi::RemainingArgs state,
                     ffi::RemainingRets results, ffi::Span<const int64_t> blocks,
                     ffi::Span<const int64_t> decayed, int64_t cpus) {
  size_t count = blocks.size();
  if (decayed.size() != count || keys.element_count() != count || state.size() != 3 * count ||
      results.size() != 2 * count) {
    return ffi::Error::InvalidArgument("keraslion_int8_steps: operands and attributes disagree");
  }
  std::vector<Variable> variables(count);
  int64_t units = 0, elements = 0;
  for (size_t v = 0; v < count; v++) {
    auto gradient = state.get<ffi::Buffer<ffi::F32>>(3 * v);
    auto theta = state.get<ffi::Buffer<ffi::F32>>(3 * v + 1);
    auto packed = state.get<ffi::Buffer<ffi::S8>>(3 * v + 2);
    auto new_theta = results.get<ffi::Buffer<ffi::F32>>(2 * v);
    auto new_packed = results.get<ffi::Buffer<ffi::S8>>(2 * v + 1);
    if (gradient.has_error()) return gradient.error();
    if (theta.has_error()) return theta.error();
    if (packed.has_error()) return packed.error();
    if (new_theta.has_error()) return new_theta.error();
    if (new_packed.has_error()) return new_packed.error();
    CopyUnlessAliased(*theta, *new_theta);
    CopyUnlessAliased(*packed, *new_packed);
    auto dimensions = theta->dimensions();
    int64_t width = dimensions[dimensions.size() - 1];
    int64_t element_count = static_cast<int64_t>(theta->element_count());
    variables[v] = {(*new_theta)->typed_data(), gradient->typed_data(),
                    (*new_packed)->typed_data(), width, blocks[v], units, decayed[v] != 0};
    // One exponent byte per block: the bytes past the codes count the blocks.
    units += static_cast<int64_t>(packed->element_count()) - element_count;
    elements += element_count;
  }
  // learning rate, beta_1, 1 - beta_1, beta_2, 1 - beta_2, weight decay
  const float* k = coefficients.typed_data();
  const uint32_t* key = reinterpret_cast<const uint32_t*>(keys.typed_data());
  const Variable* all = variables.data();
  // XLA's pool counts the machine's CPUs, not those this process may use.
  int64_t threads = std::max<int64_t>(
      1, std::min({pool.num_threads() + 1, cpus, units, elements / kPerThread}));
  InParallel(pool, threads, units, [=](int64_t begin, int64_t end) {
    // The variable of block `begin`, then each one after it up to `end`.
    size_t v = std::upper_bound(all, all + count, begin,
                                [](int64_t unit, const Variable& x) { return unit < x.first_unit; }) -
               all - 1;
    for (; begin < end; v++) {
      const Variable& x = all[v];
      int64_t last = v + 1 < count ? std::min(end, all[v + 1].first_unit) : end;
      keraslion_int8_step(x.theta, x.gradient, x.state, x.width, x.block, key + v, 0,
                          nullptr, begin - x.first_unit, last - x.first_unit, k[0], k[1], k[2],
                          k[3], k[4], x.decayed, k[5]);
      begin = last;
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(KeraslionInt8Steps, Int8Steps,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()  // noise keys
                                  .Arg<ffi::Buffer<ffi::F32>>()  // coefficients
                                  .RemainingArgs()  // gradient, weights, int8 state of each
                                  .RemainingRets()  // weights, int8 state of each
                                  .Attr<ffi::Span<const int64_t>>("blocks")
                                  .Attr<ffi::Span<const int64_t>>("decayed")
                                  .Attr<int64_t>("cpus"));

// Registers the handler as `name` for `platform` with the XLA whose FFI API
// is `api` (TensorFlow's `xla::ffi::GetXlaFfiApi()`); whether it could be.
extern "C" int keraslion_register_int8_steps(const XLA_FFI_Api* api, const char* name,
                                            const char* platform) {
  return ffi::Ffi::RegisterStaticHandler(api, name, platform, KeraslionInt8Steps) == nullptr;
}
