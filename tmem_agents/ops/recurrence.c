/* The (h, c) recurrence of a memory sequence on the CPU: forward and backward loops over the steps.
 *
 * Built by tmem_agents/ops/cpu_kernel.py with -DREAL=float and -DREAL=double. The equations are those of
 * tmem_agents/ops/reference.py (factorized_conv, lstm_update, local_update), which the tests hold it to.
 * Per step k, for C channels of N envs on a D x H x W grid (S = D H W cells, NS = N S), with V[k] the
 * step's written volume:
 *
 *   h, c  *= keep[k]                                        (episode starts)
 *   mixed  = conv_w(conv_h(conv_d(concat(V[k], h))))        (3-tap depthwise convs with biases, zero padded)
 *   gates  = pointwise @ mixed + pointwise_bias (+ gate_inputs[k], per env)   (4C rows: i, f, o, g)
 *   c'     = sig(f) c + sig(i) tanh(g);   h' = sig(o) tanh(c')
 *   h, c   = h', c'   or, with masses m[k]:   h + m (h' - h),  c + m (c' - c)
 *
 * Layouts (contiguous): volumes (C, K, NS); h, c (C, NS); keep (K, N); masses (K, NS); gate_inputs (4C, K, N)
 * or NULL (each env's share of the gates from its write input, the same for all its cells); pointwise (4C, 2C);
 * taps (3, 2C, 3) and biases (3, 2C) for the axes D, H, W. Saved for the backward: read_from (C, K, NS),
 * mixed (2C, K, NS), cells and candidates (K, C, NS), activations (K, 5C, NS) as sig(i), sig(f), sig(o),
 * tanh(g), tanh(c'). With written (C, K, NS) given, the forward also keeps each step's new h there (the state
 * read after the step's write), and the backward takes its gradient from_written (K, C, NS). The backward
 * returns the gates' gradients (4C, K, NS) (the pointwise weights' gradient is one product outside), the
 * volumes' (C, K, NS), the masses' (K, NS), the taps' and biases' (accumulated), and the gradients of the
 * initial h and c (in place of the final ones).
 */
#include <stdint.h>
#include <string.h>

#ifndef REAL
#define REAL float
#endif
typedef REAL real;

/* glibc's vector math library (libmvec) has SIMD forms of exp: declaring them lets the compiler vectorize
 * the gate loops without -ffast-math (which, with gcc < 13, would also set flush-to-zero for the process) */
__attribute__((__simd__("notinbranch"))) float expf(float);
__attribute__((__simd__("notinbranch"))) double exp(double);
#define EXP(x) _Generic((x), float: expf, double: exp)(x)

static inline real sigmoid(real x) { return (real)1 / ((real)1 + EXP(-x)); }
static inline real tanh_exp(real x) { return (real)2 / ((real)1 + EXP((real)-2 * x)) - (real)1; }

typedef struct {
    long steps, channels, envs, depth, height, width;
} Shape;

/* one grid axis of a channel's (N, D, H, W) block of n cells: the stride between neighbours along it, and
 * has_prev / has_next, 1 where the neighbour lies inside the grid, else 0 (zero padding) */
typedef struct {
    long stride, cells;
    real *has_prev, *has_next;
} Axis;

/* the axes D, H, W of a channel block; their masks take 6 n reals of buffer */
static void axes_init(const Shape *s, real *buffer, Axis axes[3]) {
    const long n = s->envs * s->depth * s->height * s->width;
    const long lens[3] = {s->depth, s->height, s->width}, strides[3] = {s->height * s->width, s->width, 1};
    for (int a = 0; a < 3; a++) {
        axes[a] = (Axis){strides[a], n, buffer + 2 * a * n, buffer + (2 * a + 1) * n};
        for (long j = 0; j < n; j++) {
            const long i = (j / strides[a]) % lens[a];
            axes[a].has_prev[j] = i > 0;
            axes[a].has_next[j] = i < lens[a] - 1;
        }
    }
}

/* y[j] = t0 x[j - stride] + t1 x[j] + t2 x[j + stride] + b along one axis, zero padded */
static void conv_axis(const real *restrict x, real *restrict y, const real *t, real b, const Axis *a) {
    const long s = a->stride, n = a->cells;
    const real *restrict p = a->has_prev, *restrict q = a->has_next;
    const real t0 = t[0], t1 = t[1], t2 = t[2];
    for (long j = 0; j < s; j++) y[j] = b + t1 * x[j] + t2 * q[j] * x[j + s];
#pragma omp simd
    for (long j = s; j < n - s; j++) y[j] = b + t0 * p[j] * x[j - s] + t1 * x[j] + t2 * q[j] * x[j + s];
    for (long j = n - s; j < n; j++) y[j] = b + t0 * p[j] * x[j - s] + t1 * x[j];
}

/* the transpose of conv_axis's linear part: the taps reversed, no bias */
static void conv_axis_t(const real *x, real *y, const real *t, const Axis *a) {
    const real flipped[3] = {t[2], t[1], t[0]};
    conv_axis(x, y, flipped, (real)0, a);
}

/* adds the gradients of conv_axis's taps gt (3) and bias gb, given its input x and output gradient gy */
static void conv_axis_grads(const real *restrict x, const real *restrict gy, real *gt, real *gb, const Axis *a) {
    const long s = a->stride, n = a->cells;
    const real *restrict p = a->has_prev, *restrict q = a->has_next;
    real g0 = 0, g1 = 0, g2 = 0, g_bias = 0;
#pragma omp simd reduction(+ : g1, g_bias)
    for (long j = 0; j < n; j++) {
        g1 += gy[j] * x[j];
        g_bias += gy[j];
    }
#pragma omp simd reduction(+ : g0)
    for (long j = s; j < n; j++) g0 += gy[j] * p[j] * x[j - s];
#pragma omp simd reduction(+ : g2)
    for (long j = 0; j < n - s; j++) g2 += gy[j] * q[j] * x[j + s];
    gt[0] += g0;
    gt[1] += g1;
    gt[2] += g2;
    *gb += g_bias;
}

/* the depthwise convs of channel ch (of C2 in taps and biases) on its block x; mid_d and mid_h receive the
 * intermediate volumes */
static void depthwise(const Axis axes[3], const real *x, real *mid_d, real *mid_h, real *y, const real *taps,
                      const real *biases, long C2, long ch) {
    conv_axis(x, mid_d, taps + (0 * C2 + ch) * 3, biases[0 * C2 + ch], &axes[0]);
    conv_axis(mid_d, mid_h, taps + (1 * C2 + ch) * 3, biases[1 * C2 + ch], &axes[1]);
    conv_axis(mid_h, y, taps + (2 * C2 + ch) * 3, biases[2 * C2 + ch], &axes[2]);
}

/* the gates' activations and the LSTM update of channel ch at one step; local: the lerp by the masses m */
static inline __attribute__((always_inline)) void cell_update(const real *gates, real *act, real *restrict h,
                                                              real *restrict c, const real *restrict m,
                                                              real *restrict candidates, long C, long ch, long NS,
                                                              int local) {
    const real *restrict gi = gates + ch * NS, *restrict gf = gates + (C + ch) * NS,
                         *restrict go = gates + (2 * C + ch) * NS, *restrict gg = gates + (3 * C + ch) * NS;
    real *restrict ai = act + ch * NS, *restrict af = act + (C + ch) * NS, *restrict ao = act + (2 * C + ch) * NS,
                   *restrict ag = act + (3 * C + ch) * NS, *restrict atc = act + (4 * C + ch) * NS;
#pragma omp simd
    for (long j = 0; j < NS; j++) {
        const real i = sigmoid(gi[j]), f = sigmoid(gf[j]), o = sigmoid(go[j]), g = tanh_exp(gg[j]);
        const real c_next = f * c[j] + i * g, tanh_c = tanh_exp(c_next);
        ai[j] = i;
        af[j] = f;
        ao[j] = o;
        ag[j] = g;
        atc[j] = tanh_c;
        if (local) {
            candidates[j] = c_next;
            c[j] += m[j] * (c_next - c[j]);
            h[j] += m[j] * (o * tanh_c - h[j]);
        } else {
            c[j] = c_next;
            h[j] = o * tanh_c;
        }
    }
}

/* the backward of cell_update: the gates' gradients at one step; dh and dc become the gradients that reach the
 * previous state other than through the convs (dh: the kept share of the local update, else 0) */
static inline __attribute__((always_inline)) void cell_update_backward(
    const real *act, const real *restrict cell, const real *restrict h_prev, const real *restrict m,
    const real *restrict candidates, real *restrict dh, real *restrict dc, real *restrict grad_masses,
    real *grad_gates, long C, long K, long k, long ch, long NS, int local) {
    const real *restrict ai = act + ch * NS, *restrict af = act + (C + ch) * NS, *restrict ao = act + (2 * C + ch) * NS,
                         *restrict ag = act + (3 * C + ch) * NS, *restrict atc = act + (4 * C + ch) * NS;
    real *restrict di = grad_gates + (ch * K + k) * NS, *restrict df = grad_gates + ((C + ch) * K + k) * NS,
                   *restrict dout = grad_gates + ((2 * C + ch) * K + k) * NS,
                   *restrict dg = grad_gates + ((3 * C + ch) * K + k) * NS;
#pragma omp simd
    for (long j = 0; j < NS; j++) {
        const real i = ai[j], f = af[j], o = ao[j], g = ag[j], tanh_c = atc[j];
        real dhv = dh[j], dcv = dc[j], dh_kept = 0, dc_kept = 0;
        if (local) {
            /* h, c = lerp(state, update, m): the update sees m of the gradient, the state the rest */
            grad_masses[j] += dcv * (candidates[j] - cell[j]) + dhv * (o * tanh_c - h_prev[j]);
            dh_kept = dhv * (1 - m[j]);
            dc_kept = dcv * (1 - m[j]);
            dhv *= m[j];
            dcv *= m[j];
        }
        dcv += dhv * o * (1 - tanh_c * tanh_c);
        di[j] = dcv * g * i * (1 - i);
        df[j] = dcv * cell[j] * f * (1 - f);
        dout[j] = dhv * tanh_c * o * (1 - o);
        dg[j] = dcv * i * (1 - g * g);
        dc[j] = dcv * f + dc_kept;
        dh[j] = dh_kept;
    }
}

/* x, y (C, N, S) *= keep (N): the episode starts' zeroing of the state (and, backward, of its gradient) */
static void scale_envs(real *x, real *y, const real *keep, long C, long N, long S) {
    for (long ch = 0; ch < C; ch++)
        for (long n = 0; n < N; n++)
            for (long j = 0; j < S; j++) {
                x[(ch * N + n) * S + j] *= keep[n];
                y[(ch * N + n) * S + j] *= keep[n];
            }
}

/* the gradient gm of a channel's conv output, through its convs in reverse (W, H, D) to their input x: grad_x
 * (overwritten) and the taps' and biases' gradients (accumulated); work holds 4 NS reals */
static void depthwise_backward(const Axis axes[3], const real *x, const real *gm, real *grad_x, const real *taps,
                               const real *biases, real *grad_taps, real *grad_biases, long C2, long ch,
                               real *work) {
    const long NS = axes[0].cells;
    real *mid_d = work, *mid_h = work + NS, *u_w = work + 2 * NS, *u_h = work + 3 * NS;
    conv_axis(x, mid_d, taps + (0 * C2 + ch) * 3, biases[0 * C2 + ch], &axes[0]);
    conv_axis(mid_d, mid_h, taps + (1 * C2 + ch) * 3, biases[1 * C2 + ch], &axes[1]);
    conv_axis_grads(mid_h, gm, grad_taps + (2 * C2 + ch) * 3, grad_biases + 2 * C2 + ch, &axes[2]);
    conv_axis_t(gm, u_w, taps + (2 * C2 + ch) * 3, &axes[2]);
    conv_axis_grads(mid_d, u_w, grad_taps + (1 * C2 + ch) * 3, grad_biases + 1 * C2 + ch, &axes[1]);
    conv_axis_t(u_w, u_h, taps + (1 * C2 + ch) * 3, &axes[1]);
    conv_axis_grads(x, u_h, grad_taps + (0 * C2 + ch) * 3, grad_biases + 0 * C2 + ch, &axes[0]);
    conv_axis_t(u_h, grad_x, taps + (0 * C2 + ch) * 3, &axes[0]);
}

/* scratch: (4C + 8) NS reals */
void recurrence_forward(const Shape *s, const real *volumes, const real *keep, const uint8_t *resets,
                        const real *masses, const real *gate_inputs, const real *pointwise,
                        const real *pointwise_bias, const real *taps, const real *biases, real *h, real *c,
                        real *read_from, real *cells, real *mixed, real *activations, real *candidates, real *written,
                        real *scratch) {
    const long K = s->steps, C = s->channels, N = s->envs, S = s->depth * s->height * s->width, NS = N * S;
    real *gates = scratch, *mid_d = scratch + 4 * C * NS, *mid_h = mid_d + NS;
    Axis axes[3];
    axes_init(s, mid_h + NS, axes);
    for (long k = 0; k < K; k++) {
        if (resets[k]) scale_envs(h, c, keep + k * N, C, N, S);
        memcpy(cells + k * C * NS, c, sizeof(real) * C * NS);
        for (long ch = 0; ch < C; ch++) {
            memcpy(read_from + (ch * K + k) * NS, h + ch * NS, sizeof(real) * NS);
            depthwise(axes, volumes + (ch * K + k) * NS, mid_d, mid_h, mixed + (ch * K + k) * NS, taps, biases,
                      2 * C, ch);
            depthwise(axes, h + ch * NS, mid_d, mid_h, mixed + ((C + ch) * K + k) * NS, taps, biases, 2 * C, C + ch);
        }
        for (long o = 0; o < 4 * C; o++) {
            real *g = gates + o * NS;
            for (long j = 0; j < NS; j++) g[j] = pointwise_bias[o];
            if (gate_inputs)
                for (long n = 0; n < N; n++) {
                    const real in = gate_inputs[(o * K + k) * N + n];
                    for (long j = n * S; j < (n + 1) * S; j++) g[j] += in;
                }
            for (long ch = 0; ch < 2 * C; ch++) {
                const real p = pointwise[o * 2 * C + ch], *m = mixed + (ch * K + k) * NS;
                for (long j = 0; j < NS; j++) g[j] += p * m[j];
            }
        }
        real *act = activations + k * 5 * C * NS;
        for (long ch = 0; ch < C; ch++) {
            real *hc = h + ch * NS, *cc = c + ch * NS;
            if (masses)
                cell_update(gates, act, hc, cc, masses + k * NS, candidates + (k * C + ch) * NS, C, ch, NS, 1);
            else
                cell_update(gates, act, hc, cc, 0, 0, C, ch, NS, 0);
            if (written) memcpy(written + (ch * K + k) * NS, hc, sizeof(real) * NS);
        }
    }
}

/* scratch: 12 NS reals */
void recurrence_backward(const Shape *s, const real *volumes, const real *keep, const uint8_t *resets,
                         const real *masses, const real *pointwise, const real *taps, const real *biases,
                         const real *read_from, const real *cells, const real *activations, const real *candidates,
                         const real *from_reads, const real *from_written, real *dh, real *dc, real *grad_gates,
                         real *grad_volumes, real *grad_masses, real *grad_taps, real *grad_biases, real *scratch) {
    const long K = s->steps, C = s->channels, N = s->envs, S = s->depth * s->height * s->width, NS = N * S;
    real *gm = scratch, *out = scratch + NS, *work = scratch + 2 * NS;
    Axis axes[3];
    axes_init(s, scratch + 6 * NS, axes);
    for (long k = K - 1; k >= 0; k--) {
        const real *act = activations + k * 5 * C * NS;
        if (masses) memset(grad_masses + k * NS, 0, sizeof(real) * NS);
        if (from_written)
            for (long j = 0; j < C * NS; j++) dh[j] += from_written[k * C * NS + j];
        for (long ch = 0; ch < C; ch++) {
            const real *cell = cells + (k * C + ch) * NS, *h_prev = read_from + (ch * K + k) * NS;
            if (masses)
                cell_update_backward(act, cell, h_prev, masses + k * NS, candidates + (k * C + ch) * NS, dh + ch * NS,
                                     dc + ch * NS, grad_masses + k * NS, grad_gates, C, K, k, ch, NS, 1);
            else
                cell_update_backward(act, cell, h_prev, 0, 0, dh + ch * NS, dc + ch * NS, 0, grad_gates, C, K, k, ch,
                                     NS, 0);
        }
        /* the conv input's channels: the written volume's (to grad_volumes), then the state's (to dh) */
        for (long ch = 0; ch < 2 * C; ch++) {
            memset(gm, 0, sizeof(real) * NS);
            for (long o = 0; o < 4 * C; o++) {
                const real p = pointwise[o * 2 * C + ch], *dgo = grad_gates + (o * K + k) * NS;
                for (long j = 0; j < NS; j++) gm[j] += p * dgo[j];
            }
            if (ch < C) {
                depthwise_backward(axes, volumes + (ch * K + k) * NS, gm, grad_volumes + (ch * K + k) * NS, taps,
                                   biases, grad_taps, grad_biases, 2 * C, ch, work);
                continue;
            }
            depthwise_backward(axes, read_from + ((ch - C) * K + k) * NS, gm, out, taps, biases, grad_taps,
                               grad_biases, 2 * C, ch, work);
            real *dhc = dh + (ch - C) * NS;
            for (long j = 0; j < NS; j++) dhc[j] += out[j];
            if (from_reads) {
                const real *fr = from_reads + (k * C + ch - C) * NS;
                for (long j = 0; j < NS; j++) dhc[j] += fr[j];
            }
        }
        if (resets[k]) scale_envs(dh, dc, keep + k * N, C, N, S);
    }
}
