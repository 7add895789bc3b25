/* What the C steps share (`int8_step.c`, `float_step.c`): float32 bits,
 * the sign of `c`, and the flush-to-zero mode. */
#ifndef KERASLION_LION_STEP_H
#define KERASLION_LION_STEP_H

#include <stdint.h>
#include <string.h>

#ifdef __cplusplus /* Included by int8_step_xla.cc. */
#define restrict __restrict
#endif

#define SIGN_BIT ((int32_t)0x80000000u)
#define INFINITY_BITS 0x7F800000
#define ONE_BITS 0x3F800000

/* Bits as int32: magnitudes of floats order as their bits, and SSE2 has
 * signed comparisons only. */
static inline int32_t bits_of(float x) { int32_t b; memcpy(&b, &x, 4); return b; }
static inline float float_of(int32_t b) { float x; memcpy(&x, &b, 4); return x; }

/* sign(c), with the results of `torch.sign_`'s clamp(c * 2**149, -1, 1):
 * every value but zero and NaN, subnormals and infinities included, is
 * +-1; -0 stays -0 and NaN stays NaN, its bits kept. Two ordered
 * comparisons pick out zero and NaN at once (where denormals are zero, a
 * subnormal c compares as zero and stays, as it reads as 0 in the products
 * after). The clamp's multiplies and selects took 10% of the step. */
static inline float sign_of(float c) {
    float one = float_of((bits_of(c) & SIGN_BIT) | ONE_BITS);
    return c > 0.0f || c < 0.0f ? one : c;
}

/* The calling thread's flush-to-zero mode (and whether denormal inputs
 * read as zero, `INPUTS_FLUSHED`): a thread of a pool keeps the mode it
 * started with, where `torch.set_flush_denormal` sets only its caller's. */
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define FLUSH_BITS 0x8040u /* MXCSR's FTZ and DAZ */
#define INPUTS_FLUSHED 0x0040u
static inline uint32_t flush_mode(void) { return _mm_getcsr() & FLUSH_BITS; }
static inline void set_flush_mode(uint32_t mode) {
    _mm_setcsr((_mm_getcsr() & ~FLUSH_BITS) | (mode & FLUSH_BITS));
}
#elif defined(__aarch64__)
#define FLUSH_BITS (1u << 24) /* FPCR's FZ, for inputs and results */
#define INPUTS_FLUSHED FLUSH_BITS
static inline uint32_t flush_mode(void) {
    uint64_t fpcr;
    __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
    return (uint32_t)fpcr & FLUSH_BITS;
}
static inline void set_flush_mode(uint32_t mode) {
    uint64_t fpcr;
    __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
    fpcr = (fpcr & ~(uint64_t)FLUSH_BITS) | (mode & FLUSH_BITS);
    __asm__ volatile("msr fpcr, %0" : : "r"(fpcr));
}
#else
#define INPUTS_FLUSHED 0u
static inline uint32_t flush_mode(void) { return 0; }
static inline void set_flush_mode(uint32_t mode) { (void)mode; }
#endif

#ifndef __cplusplus /* For the ctypes libraries (`native.all_of`). */
uint32_t keraslion_flush_mode(void) { return flush_mode(); }
void keraslion_set_flush_mode(uint32_t mode) { set_flush_mode(mode); }
#endif

#endif
