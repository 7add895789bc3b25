/* One Lion step of a float32 variable with an int8 momentum, in one pass.
 *
 * The same arithmetic as `torch_int8`'s piecewise step (and so as
 * `int8.decode`, `lion_update` and `int8.encode`), in the same order and
 * in float32, one rounding per operation: compiled without contraction
 * into fused multiply-adds and without fast-math, its weights and int8
 * state are those of the plain path bit for bit. Each block's new momenta
 * wait in a buffer on the stack until the block's largest gives its scale.
 *
 * A piece is rows of `width` elements, cut into blocks of `block` (the last
 * one of a row may be shorter): weights and gradient as float32, and the
 * state as `int8.pack` lays it out, each block's codes followed by its
 * scale's exponent byte (a row of `width` elements takes `width` bytes and
 * one per block). The noise of an element is the hash
 * of its row's key (`keys[row * key_stride]`: its variable's) and its flat
 * index in its variable (`first[row]` plus its column; without `first`,
 * the piece is a whole variable: `row * width` plus its column).
 */
#include "lion_step.h"

#define MAX_BLOCK 256
#define WIDE_SCALE_BITS (142u << 23) /* 2**15: times 2**112, still finite */
#define LEAST_ALL_NORMAL_SCALE_BITS (15 << 23) /* 2**-112 */
#define NOISE_BITS 20
#define GOLDEN 0x9E3779B9u
#define EXPONENT_OFFSET 896
#define ONE_CODE 120
#define NAN_CODE 127
#define NAN_BITS 0x7FC00000
#define FLOAT32_MAX_BITS 0x7F7FFFFF
#define MANTISSA_BITS 0x7FFFFF
#define LARGEST_SCALE_BITS (253 << 23)
#define RECIPROCAL_BITS (254 << 23)
#define SMALLEST_NORMAL 0x1p-14f
#define SMALLEST_NORMAL_BITS 0x38800000

/* Wellons' lowbias32, as `int8._mix`. */
static inline uint32_t mix(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

/* `int8.noise_key`: the hash of the step and a variable's index, which
 * seeds the variable's noise (wrapping, as its int32 arithmetic). */
static inline uint32_t noise_key(uint32_t step, int32_t index) {
    return mix(step * GOLDEN + (uint32_t)index);
}

/* Each function below is written without branches, so that the compiler
 * vectorizes the loops over a block (branches on the momenta's random
 * signs, mispredicted, and scalar code made the step 7x slower). */

/* `int8.decode` of one code, before its scale. */
static inline float decode(int8_t code) {
    int32_t signed_code = code, k = signed_code < 0 ? -signed_code : signed_code;
    float small = (float)k * 0x1p-17f; /* exact, as int8.decode's bit trick */
    int32_t bits = k < 8 ? bits_of(small) : (k + EXPONENT_OFFSET) << 20;
    bits = k == NAN_CODE ? NAN_BITS : bits;
    return float_of(bits | (signed_code & SIGN_BIT));
}

/* `decode(code) * scale` (the same rounding), with `wide` = scale * 2**112
 * (exact: a scale of at most 2**15): a code's magnitude shifted into a
 * float32's exponent and mantissa bits is its value times 2**-112, the
 * codes below 8 as subnormals, so one product decodes and scales. Where
 * denormal inputs read as zero, `decode` serves (7 operations more). */
static inline float decode_scaled(int8_t code, float wide) {
    int32_t signed_code = code, k = signed_code < 0 ? -signed_code : signed_code;
    int32_t bits = k == NAN_CODE ? NAN_BITS : k << 20;
    return float_of(bits | (signed_code & SIGN_BIT)) * wide;
}

/* `int8.encode` of one momentum whose block's scale has reciprocal `inverse`.
 * (Infinities need no cap here: r is then at least 1, whose code they get.)
 * Where the block is known `nan_free`, or `all_normal` (each r at least
 * 2**-14, where the normal code's bits are the larger), those checks go. */
static inline int8_t encode(float m, float inverse, uint32_t noise, int nan_free,
                            int all_normal) {
    int32_t bits = bits_of(m), magnitude = bits & 0x7FFFFFFF;
    float r = float_of(magnitude) * inverse;
    int32_t normal = bits_of(r) - (EXPONENT_OFFSET << NOISE_BITS);
    int32_t subnormal = bits_of(r + SMALLEST_NORMAL) - SMALLEST_NORMAL_BITS;
    int32_t unrounded = (all_normal || normal > subnormal ? normal : subnormal) + (int32_t)noise;
    int32_t k = unrounded >> NOISE_BITS;
    k = k > ONE_CODE ? ONE_CODE : k;
    int32_t negative = bits >> 31; /* -1 or 0: k negated as two's complement */
    k = (k ^ negative) - negative;
    return (int8_t)(!nan_free && magnitude > INFINITY_BITS ? NAN_CODE : k);
}

/* The new weights of a block's `count` elements, and their new momenta
 * into `m`; returns the bits of the largest |m| (NaN's above infinity's),
 * and sets `smallest` to the smallest's. `factor`: the block's scale, or,
 * where `scaled`, the scale times 2**112, for `decode_scaled` (`scaled` is
 * a constant where this is inlined: each loop is vectorized for its own
 * decoding). */
static inline int32_t new_momenta(float *restrict p, const float *restrict g,
                                  const int8_t *restrict code, float *restrict m, int64_t count,
                                  int scaled, float factor, float learning_rate, float beta_1,
                                  float one_minus_beta_1, float beta_2, float one_minus_beta_2,
                                  int decayed, float weight_decay, int32_t *smallest) {
    int32_t largest = 0, least = 0x7FFFFFFF;
    for (int64_t i = 0; i < count; i++) {
        float old = scaled ? decode_scaled(code[i], factor) : decode(code[i]) * factor;
        float c = old * beta_1;
        c = c + g[i] * one_minus_beta_1;
        float update = sign_of(c);
        float decay = p[i] * weight_decay;
        update = decayed ? update + decay : update;
        p[i] = p[i] - update * learning_rate;
        float fresh = old * beta_2;
        fresh = fresh + g[i] * one_minus_beta_2;
        m[i] = fresh;
        int32_t magnitude = bits_of(fresh) & 0x7FFFFFFF;
        largest = magnitude > largest ? magnitude : largest;
        least = magnitude < least ? magnitude : least;
    }
    *smallest = least;
    return largest;
}

/* A block's new codes, from its momenta `m` (its elements' flat indices
 * from `index` hashed with `key`); `nan_free` and `all_normal` as `encode`'s
 * (constants where this is inlined: a loop for each). */
static inline void new_codes(int8_t *restrict code, const float *restrict m, int64_t count,
                             float inverse, uint32_t index, uint32_t key, int nan_free,
                             int all_normal) {
    /* A 32-bit count, as the index (a 64-bit one took 10% of the step). */
    for (uint32_t i = 0; i < (uint32_t)count; i++) {
        uint32_t noise = mix((index + i) ^ key) >> (32 - NOISE_BITS);
        code[i] = encode(m[i], inverse, noise, nan_free, all_normal);
    }
}

/* The step of blocks `begin` to `end` (counted along rows, `blocks` per row). */
void keraslion_int8_step(float *restrict theta, const float *restrict gradient,
                         int8_t *restrict state, int64_t width, int64_t block,
                         const uint32_t *keys, int64_t key_stride,
                         const uint32_t *first, int64_t begin, int64_t end, float learning_rate,
                         float beta_1, float one_minus_beta_1, float beta_2,
                         float one_minus_beta_2, int decayed, float weight_decay) {
    float m[MAX_BLOCK];
    int subnormals_read = !(flush_mode() & INPUTS_FLUSHED);
    int64_t blocks = (width + block - 1) / block;
    for (int64_t unit = begin; unit < end; unit++) {
        int64_t row = unit / blocks, start = unit % blocks * block;
        int64_t count = width - start < block ? width - start : block;
        float *p = theta + row * width + start;
        const float *g = gradient + row * width + start;
        int8_t *code = state + row * (width + blocks) + unit % blocks * (block + 1);
        /* The exponent byte: a power-of-two scale's bits, shifted. */
        int8_t *exponent = code + count;
        float scale = float_of((int32_t)(uint8_t)*exponent << 23);
        int scaled = subnormals_read && (uint32_t)bits_of(scale) <= WIDE_SCALE_BITS;
        int32_t smallest, largest =
            scaled ? new_momenta(p, g, code, m, count, 1, scale * 0x1p112f, learning_rate,
                                 beta_1, one_minus_beta_1, beta_2, one_minus_beta_2, decayed,
                                 weight_decay, &smallest)
                   : new_momenta(p, g, code, m, count, 0, scale, learning_rate, beta_1,
                                 one_minus_beta_1, beta_2, one_minus_beta_2, decayed,
                                 weight_decay, &smallest);
        int nan_free = largest <= INFINITY_BITS;
        /* Capped once: the largest of capped magnitudes is the capped largest. */
        largest = largest > FLOAT32_MAX_BITS ? FLOAT32_MAX_BITS : largest;
        /* `int8.power_of_two_scales`. */
        int32_t scale_bits = (largest + MANTISSA_BITS) & INFINITY_BITS;
        scale_bits = scale_bits > LARGEST_SCALE_BITS ? LARGEST_SCALE_BITS : scale_bits;
        *exponent = (int8_t)(uint8_t)(scale_bits >> 23);
        float inverse = float_of(RECIPROCAL_BITS - scale_bits);
        uint32_t index = (first ? first[row] : (uint32_t)(row * width)) + (uint32_t)start;
        uint32_t key = keys[row * key_stride];
        /* Each |m| at least 2**-14 of a scale of at least 2**-112 (so no |m|
         * is subnormal, to be read as 0 where denormals are zero). */
        int all_normal = nan_free && scale_bits >= LEAST_ALL_NORMAL_SCALE_BITS &&
                         smallest >= scale_bits - (14 << 23);
        if (all_normal) { /* Most blocks: without the two checks, the step takes 5% less. */
            new_codes(code, m, count, inverse, index, key, 1, 1);
        } else if (nan_free) {
            new_codes(code, m, count, inverse, index, key, 1, 0);
        } else {
            new_codes(code, m, count, inverse, index, key, 0, 0);
        }
    }
}

/* The steps of runs of blocks of several whole variables, one after another:
 * run j steps blocks `begins[j]` to `ends[j]` of variable `variables[j]`,
 * whose weights, gradient and int8 state are at `thetas[v]` and so on,
 * with its own row length, block and index in the optimizer (`indices[v]`,
 * which with `step` seeds its noise), decayed or not. (The keys are hashed
 * here: Keras's operations making them as a tensor took 0.2 ms a step.) */
void keraslion_int8_steps(int64_t runs, const int64_t *variables, const int64_t *begins,
                          const int64_t *ends, float *const *thetas,
                          const float *const *gradients, int8_t *const *states,
                          const int64_t *widths, const int64_t *blocks,
                          uint32_t step, const int32_t *indices, const int32_t *decayed,
                          float learning_rate, float beta_1, float one_minus_beta_1,
                          float beta_2, float one_minus_beta_2, float weight_decay) {
    for (int64_t j = 0; j < runs; j++) {
        int64_t v = variables[j];
        uint32_t key = noise_key(step, indices[v]);
        keraslion_int8_step(thetas[v], gradients[v], states[v], widths[v], blocks[v],
                            &key, 0, NULL, begins[j], ends[j], learning_rate, beta_1,
                            one_minus_beta_1, beta_2, one_minus_beta_2, decayed[v],
                            weight_decay);
    }
}
