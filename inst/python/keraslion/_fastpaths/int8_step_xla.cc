// The int8 step (`int8_step.c`) as an XLA custom call, for JAX on the CPU.
//
// The weights, codes and scales are aliased to the results: with donated
// buffers (as `fit` and a jitted, donated `stateless_apply` give them) the
// step runs in place, in one pass; XLA copies an input first where it is
// still read afterwards. Blocks are shared among XLA's intra-op threads.

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstring>
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
  auto run = [=](int64_t begin, int64_t end) {
    keraslion_int8_step(p, g, c, s, width, block, keys, 0, nullptr, begin, end, k[0], k[1], k[2],
                        k[3], k[4], decayed, k[5], 0x1p127f, 0x1p22f);
  };
  // XLA's pool counts the machine's CPUs, not those this process may use.
  int64_t threads = std::max<int64_t>(
      1, std::min({pool.num_threads() + 1, cpus, units, elements / kPerThread}));
  std::mutex mutex;
  std::condition_variable done;
  int64_t left = threads - 1;
  for (int64_t t = 1; t < threads; t++) {
    pool.Schedule([&, t] {
      run(units * t / threads, units * (t + 1) / threads);
      std::lock_guard<std::mutex> lock(mutex);
      if (--left == 0) done.notify_one();
    });
  }
  run(0, units / threads);
  std::unique_lock<std::mutex> lock(mutex);
  done.wait(lock, [&] { return left == 0; });
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
