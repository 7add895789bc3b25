// A timing model for bench/int8_packed.py, not a path of the product: the
// int8 step (`int8_step.c`) of variables whose codes and block scales lie
// in one int8 buffer each (a row-major variable's codes, then its scales'
// bytes), as one XLA custom call on one thread. Each variable's operands
// are its gradient, weights and buffer; its results, aliased to the last
// two, its new weights and buffer.

#include <cstdint>

#include "xla/ffi/api/ffi.h"

extern "C" {
#include "int8_step.c"
}

namespace ffi = xla::ffi;

namespace {

ffi::Error PackedSteps(ffi::Buffer<ffi::S32> keys, ffi::Buffer<ffi::F32> coefficients,
                       ffi::RemainingArgs state, ffi::RemainingRets results,
                       ffi::Span<const int64_t> blocks) {
  size_t count = blocks.size();
  if (keys.element_count() != count || state.size() != 3 * count ||
      results.size() != 2 * count) {
    return ffi::Error::InvalidArgument("int8_packed: operands and attributes disagree");
  }
  const float* k = coefficients.typed_data();
  const uint32_t* key = reinterpret_cast<const uint32_t*>(keys.typed_data());
  for (size_t v = 0; v < count; v++) {
    auto gradient = state.get<ffi::Buffer<ffi::F32>>(3 * v);
    auto theta = results.get<ffi::Buffer<ffi::F32>>(2 * v);
    auto packed = results.get<ffi::Buffer<ffi::S8>>(2 * v + 1);
    if (gradient.has_error()) return gradient.error();
    if (theta.has_error()) return theta.error();
    if (packed.has_error()) return packed.error();
    auto dimensions = gradient->dimensions();
    int64_t elements = gradient->element_count(), width = dimensions[dimensions.size() - 1];
    int8_t* codes = (*packed)->typed_data();
    int64_t units = elements / width * ((width + blocks[v] - 1) / blocks[v]);
    keraslion_int8_step((*theta)->typed_data(), gradient->typed_data(), codes,
                        reinterpret_cast<float*>(codes + elements), width, blocks[v], key + v, 0,
                        nullptr, 0, units, k[0], k[1], k[2], k[3], k[4], 1, k[5]);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Int8PackedSteps, PackedSteps,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()  // noise keys
                                  .Arg<ffi::Buffer<ffi::F32>>()  // coefficients
                                  .RemainingArgs()  // gradient, weights, buffer of each
                                  .RemainingRets()  // weights, buffer of each
                                  .Attr<ffi::Span<const int64_t>>("blocks"));
