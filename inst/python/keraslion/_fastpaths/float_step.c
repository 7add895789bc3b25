/* One Lion step of a float32 variable with a float32 or bfloat16 momentum,
 * in one pass: each weight, gradient and momentum is read once and written
 * once (PyTorch's operations, even on cache-sized blocks, make about ten
 * passes, and a bfloat16 momentum two more to widen and round it).
 *
 * The paper's three lines, in float32, one rounding per operation (compiled
 * without contraction into fused multiply-adds), as the plain path computes
 * them:
 *
 *     c  = beta_1 * m + (1 - beta_1) * g
 *     p' = p - (sign(c) + p * weight_decay) * lr      (weight decay where not excluded)
 *     m' = beta_2 * m + (1 - beta_2) * g
 *
 * A bfloat16 momentum is widened exactly and its new value rounded to the
 * nearest bfloat16, ties to even, as PyTorch rounds.
 */
#include "lion_step.h"

static inline float widened(uint16_t m) { return float_of((int32_t)((uint32_t)m << 16)); }

/* To the nearest bfloat16, ties to even (infinities stay infinite, a float32
 * beyond bfloat16's largest rounds to infinity); NaN stays a (quiet) NaN. */
static inline uint16_t rounded(float m) {
    uint32_t bits = (uint32_t)bits_of(m);
    uint32_t nearest = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    uint32_t quiet_nan = (bits >> 16) | 0x40u;
    return (uint16_t)((bits & 0x7FFFFFFFu) > (uint32_t)INFINITY_BITS ? quiet_nan : nearest);
}

/* Elements `begin` to `end` of one variable; `narrow` says whether its
 * momentum is bfloat16 (a constant where this is inlined: each loop is
 * vectorized for its own momentum dtype). */
static inline void step(float *restrict theta, const float *restrict gradient,
                        void *restrict momentum, int narrow, int64_t begin, int64_t end,
                        float learning_rate, float beta_1, float one_minus_beta_1, float beta_2,
                        float one_minus_beta_2, int decayed, float weight_decay) {
    float *wide_m = momentum;
    uint16_t *narrow_m = momentum;
    for (int64_t i = begin; i < end; i++) {
        float m = narrow ? widened(narrow_m[i]) : wide_m[i];
        float g = gradient[i];
        float c = m * beta_1;
        c = c + g * one_minus_beta_1;
        float update = sign_of(c);
        float decay = theta[i] * weight_decay;
        update = decayed ? update + decay : update;
        theta[i] = theta[i] - update * learning_rate;
        float fresh = m * beta_2;
        fresh = fresh + g * one_minus_beta_2;
        if (narrow) {
            narrow_m[i] = rounded(fresh);
        } else {
            wide_m[i] = fresh;
        }
    }
}

/* The steps of runs of elements of several whole variables, one after
 * another: run j steps elements `begins[j]` to `ends[j]` of variable
 * `variables[j]`, whose weights, gradient and momentum are at `thetas[v]`,
 * `gradients[v]` and `momentums[v]`, its momentum bfloat16 where
 * `narrow[v]`, decayed or not. */
void keraslion_float_steps(int64_t runs, const int64_t *variables, const int64_t *begins,
                           const int64_t *ends, float *const *thetas,
                           const float *const *gradients, void *const *momentums,
                           const int32_t *narrow, const int32_t *decayed, float learning_rate,
                           float beta_1, float one_minus_beta_1, float beta_2,
                           float one_minus_beta_2, float weight_decay) {
    for (int64_t j = 0; j < runs; j++) {
        int64_t v = variables[j];
        if (narrow[v]) {
            step(thetas[v], gradients[v], momentums[v], 1, begins[j], ends[j], learning_rate,
                 beta_1, one_minus_beta_1, beta_2, one_minus_beta_2, decayed[v], weight_decay);
        } else {
            step(thetas[v], gradients[v], momentums[v], 0, begins[j], ends[j], learning_rate,
                 beta_1, one_minus_beta_1, beta_2, one_minus_beta_2, decayed[v], weight_decay);
        }
    }
}
