// The int8 step (`int8_step.c`) as an XLA custom call, for JAX and TensorFlow
// on the CPU. Each has an XLA of its own, and this file is built for each
// against that XLA's FFI headers: JAX registers the handler it exports,
// TensorFlow through `keraslion_register_int8_step`.
//
// The weights, codes and scales are aliased to the results: with donated
// buffers (as `fit` and a jitted, donated `stateless_apply` give them) the
// step runs in place, in one pass; XLA copies an input first where it is
// still read afterwards. Blocks are shared among XLA's intra-op threads.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

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

ffi::Error Int8Step(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> gradient,
                    ffi::Buffer<ffi::S32> key, ffi::Buffer<ffi::F32> coefficients,
                    ffi::Buffer<ffi::F32> theta, ffi::Buffer<ffi::S8> codes,
                    ffi::Buffer<ffi::F32> scales, ffi::ResultBuffer<ffi::F32> new_theta,
                    ffi::ResultBuffer<ffi::S8> new_codes, ffi::ResultBuffer<ffi::F32> new_scales,
                    int64_t block, bool decayed, int64_t cpus) {
  CopyUnlessAliased(theta, new_theta);
  CopyUnlessAliased(codes, new_codes);
  CopyUnlessAliased(scales, new_scales);
  auto dimensions = theta.dimensions();
  int64_t width = dimensions[dimensions.size() - 1];
  int64_t units = static_cast<int64_t>(scales.element_count());
  int64_t elements = static_cast<int64_t>(theta.element_count());
  // learning rate, beta_1, 1 - beta_1, beta_2, 1 - beta_2, weight decay
  const float* k = coefficients.typed_data();
  float* p = new_theta->typed_data();
  int8_t* c = new_codes->typed_data();
  float* s = new_scales->typed_data();
  const float* g = gradient.typed_data();
  const uint32_t* keys = reinterpret_cast<const uint32_t*>(key.typed_data());
  // XLA's pool counts the machine's CPUs, not those this process may use.
  int64_t threads = std::max<int64_t>(
      1, std::min({pool.num_threads() + 1, cpus, units, elements / kPerThread}));
  InParallel(pool, threads, units, [=](int64_t begin, int64_t end) {
    keraslion_int8_step(p, g, c, s, width, block, keys, 0, nullptr, begin, end, k[0], k[1], k[2],
                        k[3], k[4], decayed, k[5]);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(KeraslionInt8Step, Int8Step,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // gradient
                                  .Arg<ffi::Buffer<ffi::S32>>()  // noise key
                                  .Arg<ffi::Buffer<ffi::F32>>()  // coefficients
                                  .Arg<ffi::Buffer<ffi::F32>>()  // weights
                                  .Arg<ffi::Buffer<ffi::S8>>()   // codes
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scales
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("block")
                                  .Attr<bool>("decayed")
                                  .Attr<int64_t>("cpus"));

// Registers the handler as `name` for `platform` with the XLA whose FFI API
// is `api` (TensorFlow's `xla::ffi::GetXlaFfiApi()`); whether it could be.
extern "C" int keraslion_register_int8_step(const XLA_FFI_Api* api, const char* name,
                                            const char* platform) {
  return ffi::Ffi::RegisterStaticHandler(api, name, platform, KeraslionInt8Step) == nullptr;
}
