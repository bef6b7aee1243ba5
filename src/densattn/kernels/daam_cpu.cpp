// Fused CPU kernel of the DAAM product path (densattn.kernels.cpu compiles it on first use).
//
// x is viewed as (outer, H, c, inner), contiguous; heads are chunks of c items along the norm axis and `inner`
// is everything after it. Parameters P, C, R (and the optional floor F) are (H, Fp) arrays; column i of the
// inner axis uses parameter (i / pdiv) % Fp (Fp = inner, pdiv = 1: one per column; Fp = 1: one per head).
// daam_params_* forms P, C, R, F from the Gaussians' offsets and variances, daam_params_backward_* chains their
// gradients back, so a call needs no PyTorch op on the parameters. The weights `a` are written only when asked
// (a non-null pointer); otherwise they live in a per-block scratch. Each thread owns a
// contiguous run of (outer, head, column tile) blocks in memory order, so one (c x tile) block sits in cache while
// it is read several times; the backward sums per-thread parameter gradients at the end. The math is that of
// densattn/kernels/product.py (module docstring): forward and backward both recompute the per-chunk statistics
// from x, so nothing but x is kept between them.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

constexpr long kTile = 256;

inline float load(const float* p, long i) { return p[i]; }
inline double load(const double* p, long i) { return p[i]; }
inline float load(const uint16_t* p, long i) {  // bfloat16 -> float32: the high half of the float's bits
  uint32_t u = static_cast<uint32_t>(p[i]) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void store(float* p, long i, float v) { p[i] = v; }
inline void store(double* p, long i, double v) { p[i] = v; }
inline void store(uint16_t* p, long i, float v) {  // float32 -> bfloat16, round to nearest even
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    p[i] = static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  p[i] = static_cast<uint16_t>(u >> 16);
}

// exp for arguments <= high (0 unless given; at most 88), vectorisable: Cephes' expf (2^n times a degree-6 polynomial
// on [-ln2/2, ln2/2], ~1 ulp), exactly 0 below -87.3 where float32 underflows anyway. float64 uses std::exp.
inline float vexp(float x, float high = 0.0f) {
  x = std::min(std::max(x, -88.0f), high);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return x < -87.33f ? 0.0f : p * scale;
}
inline double vexp(double x, double = 0.0) { return std::exp(x); }

// scale s = max|x|, scaled mean m and r = 1/sigma of each column of a (c x w) block with row stride `inner`
template <typename S, typename A>
void block_stats(const S* x, long c, long inner, long w, A eps, A divisor, A* s, A* m, A* r) {
  const A var_floor = static_cast<A>(1e-30);
  for (long i = 0; i < w; ++i) s[i] = 0, m[i] = 0, r[i] = 0;
  for (long j = 0; j < c; ++j)
    for (long i = 0; i < w; ++i) s[i] = std::max(s[i], std::fabs(load(x, j * inner + i)));
  A inv[kTile];
  for (long i = 0; i < w; ++i) s[i] = s[i] > 0 ? s[i] : A(1), inv[i] = A(1) / s[i];
  for (long j = 0; j < c; ++j)
    for (long i = 0; i < w; ++i) m[i] += load(x, j * inner + i) * inv[i];
  for (long i = 0; i < w; ++i) m[i] /= static_cast<A>(c);
  for (long j = 0; j < c; ++j)
    for (long i = 0; i < w; ++i) {
      A e = load(x, j * inner + i) * inv[i] - m[i];
      r[i] += e * e;
    }
  const A inv_div = A(1) / divisor;
  for (long i = 0; i < w; ++i) {  // one division and one sqrt per column (chunks can be as short as 2 items)
    const A var_s = r[i] * inv_div;
    const A big = var_s + eps * inv[i] * inv[i], small = s[i] * s[i] * var_s + eps;
    const bool large = s[i] >= 1;
    const A root = std::sqrt(std::max(large ? big : small, var_floor));
    r[i] = (large ? inv[i] : A(1)) / root;
  }
}

// a (c x w) block of weights (row stride `as` in `a`): L into `a`, then a = exp(L) or exp(L - max(lse, F)); act = [lse >= F]
template <typename S, typename A>
void block_weights(const S* x, A* a, long c, long inner, long as, long w, const A* P, const A* C, const A* R, const A* F,
                   bool softmax, const A* s, const A* m, const A* r, A* top, bool* act) {
  const A logit_floor = static_cast<A>(-1e30);
  A beta[kTile], half_p[kTile], half_rr[kTile];  // u = x r + beta;  L = -(P/2) u^2 - R r^2 / 2
  for (long i = 0; i < w; ++i) {
    top[i] = -std::numeric_limits<A>::infinity();
    beta[i] = -(m[i] * s[i] + C[i]) * r[i];
    half_p[i] = A(-0.5) * P[i];
    half_rr[i] = A(-0.5) * R[i] * r[i] * r[i];
  }
  for (long j = 0; j < c; ++j)
    for (long i = 0; i < w; ++i) {
      const A u = load(x, j * inner + i) * r[i] + beta[i];
      const A l = std::max(half_p[i] * u * u + half_rr[i], logit_floor);
      a[j * as + i] = l;
      top[i] = std::max(top[i], l);
    }
  if (!softmax) {
    for (long j = 0; j < c; ++j)
      for (long i = 0; i < w; ++i) a[j * as + i] = vexp(a[j * as + i]);
    return;
  }
  A total[kTile];
  for (long i = 0; i < w; ++i) total[i] = 0;
  for (long j = 0; j < c; ++j)
    for (long i = 0; i < w; ++i) {
      A p = vexp(a[j * as + i] - top[i]);
      a[j * as + i] = p;
      total[i] += p;
    }
  if (F) {  // a = p / max(total, exp(F - top)); 1 <= total <= c, so exp(limit) capped at e^80 decides alike
    for (long i = 0; i < w; ++i) {
      const A limit = F[i] - top[i];
      const bool on = total[i] >= vexp(std::min(limit, A(80)), A(80));
      const A inv_total = A(1) / total[i], inv_floor = vexp(-limit);
      act[i] = on;
      total[i] = on ? inv_total : inv_floor;
    }
  } else {
    for (long i = 0; i < w; ++i) act[i] = true, total[i] = A(1) / total[i];
  }
  for (long j = 0; j < c; ++j)
    for (long i = 0; i < w; ++i) a[j * as + i] *= total[i];
}

// ---- float32 backward, 16 columns at a time (GCC/Clang vector extensions) -------------------------------------
// Each of the 16 lanes owns one column (one chunk of c items), so a column's statistics and partial sums stay in
// registers; the multi-pass loops above keep them in per-column arrays. Same formulas as the scalar code. Measured
// (one thread, (32, 24, 1024)): the backward 15-30% faster, the forward no faster (its cost is the exponentials),
// so only the backward uses it.
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
constexpr long kLanes = 16;

inline vf vbroadcast(float v) { return vf{} + v; }
inline vf vld(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline vf vld(const uint16_t* p) {
  vh h;
  std::memcpy(&h, p, sizeof h);
  return (vf)(__builtin_convertvector(h, vu) << 16);
}
inline void vst(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline void vst(uint16_t* p, vf v) {  // round to nearest even; NaN stays a quiet NaN
  vu u = (vu)v;
  const vu nan = (u & 0x7fffffffu) > 0x7f800000u;
  u = nan ? (u >> 16) | 0x40u : (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const vh h = __builtin_convertvector(u, vh);
  std::memcpy(p, &h, sizeof h);
}
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf vmin(vf a, vf b) { return a < b ? a : b; }
inline vf vabs(vf a) { return (vf)((vu)a & 0x7fffffffu); }

// vexp above, 16 lanes: floor(t + 1/2) = trunc(t + 1/2 + 128) - 128 for the clamped range (t >= -127)
inline vf vexp16(vf x, float high = 0.0f) {
  x = vmin(vmax(x, vbroadcast(-88.0f)), vbroadcast(high));
  const vi ni = __builtin_convertvector(x * 1.44269504088896341f + 128.5f, vi) - 128;
  const vf n = __builtin_convertvector(ni, vf);
  const vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
  vf p = vbroadcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vf scale = (vf)((ni + 127) << 23);
  return x < -87.33f ? vf{} : p * scale;
}

// statistics of 16 columns: s = max|x|, scaled mean m, r = 1/sigma (as block_stats)
template <typename S>
inline void lanes_stats(const S* x, long c, long inner, float eps, float inv_c, float inv_div, vf& s, vf& m, vf& r) {
  s = vf{};
  for (long j = 0; j < c; ++j) s = vmax(s, vabs(vld(x + j * inner)));
  s = s > 0.0f ? s : vbroadcast(1.0f);
  const vf inv = 1.0f / s;
  m = vf{};
  for (long j = 0; j < c; ++j) m += vld(x + j * inner) * inv;
  m *= inv_c;
  vf v = vf{};
  for (long j = 0; j < c; ++j) {
    const vf e = vld(x + j * inner) * inv - m;
    v += e * e;
  }
  const vf var_s = v * inv_div;
  const vi large = s >= 1.0f;
  const vf arg = vmax(large ? var_s + eps * inv * inv : s * s * var_s + eps, vbroadcast(1e-30f));
  vf root;
  for (long l = 0; l < kLanes; ++l) root[l] = std::sqrt(arg[l]);
  r = (large ? inv : vbroadcast(1.0f)) / root;
}

// weights of 16 columns into wa[j] (as block_weights); act = [lse >= F] (all true without a floor)
template <typename S, bool SOFTMAX>
inline void lanes_weights(const S* x, long c, long inner, vf s, vf m, vf r, vf P, vf C, vf R, const float* F, vf* wa,
                          vi& act) {
  const vf beta = -(m * s + C) * r, half_p = -0.5f * P, half_rr = -0.5f * R * r * r;
  act = vi{} - 1;
  if (!SOFTMAX) {
    for (long j = 0; j < c; ++j) {
      const vf u = vld(x + j * inner) * r + beta;
      wa[j] = vexp16(vmax(half_p * u * u + half_rr, vbroadcast(-1e30f)));
    }
    return;
  }
  vf top = vbroadcast(-std::numeric_limits<float>::infinity());
  for (long j = 0; j < c; ++j) {
    const vf u = vld(x + j * inner) * r + beta;
    wa[j] = vmax(half_p * u * u + half_rr, vbroadcast(-1e30f));
    top = vmax(top, wa[j]);
  }
  vf total = vf{};
  for (long j = 0; j < c; ++j) {
    wa[j] = vexp16(wa[j] - top);
    total += wa[j];
  }
  vf scale = 1.0f / total;
  if (F) {
    const vf limit = vld(F) - top;
    act = total >= vexp16(vmin(limit, vbroadcast(80.0f)), 80.0f);
    scale = act ? scale : vexp16(-limit);
  }
  for (long j = 0; j < c; ++j) wa[j] *= scale;
}

// backward of 16 columns (as the scalar backward); parameter gradients into lP, lC, lR, lF at [i, i + 16)
template <typename S, bool SOFTMAX>
void lanes_backward(const S* x, const S* gy, const float* ga, S* gx, long c, long inner, long w, const float* P,
                    const float* C, const float* R, const float* F, float eps, float inv_c, float inv_div, vf* wa,
                    vf* wg, float* lP, float* lC, float* lR, float* lF) {
  for (long i = 0; i + kLanes <= w; i += kLanes) {
    vf s, m, r;
    vi act;
    const S* xi = x + i;
    lanes_stats(xi, c, inner, eps, inv_c, inv_div, s, m, r);
    const vf Pv = vld(P + i), Cv = vld(C + i), Rv = vld(R + i);
    lanes_weights<S, SOFTMAX>(xi, c, inner, s, m, r, Pv, Cv, Rv, F ? F + i : nullptr, wa, act);
    vf total = vf{};
    for (long j = 0; j < c; ++j) {  // g_l = a (gy x + ga); S = sum(g_l)
      vf g = vf{};
      if (gy) g += vld(gy + j * inner + i) * vld(xi + j * inner);
      if (ga) g += vld(ga + j * inner + i);
      wg[j] = g * wa[j];
      total += wg[j];
    }
    vf f_grad = vf{};
    if (SOFTMAX) {
      f_grad = act ? vf{} : -total;
      const vf corr = act ? total : vf{};
      for (long j = 0; j < c; ++j) wg[j] -= wa[j] * corr;
    }
    const vf shift = m * s * r, beta = -shift - Cv * r;
    vf q = vf{}, sum_gl = vf{}, gp = vf{}, gc = vf{};
    for (long j = 0; j < c; ++j) {  // g_u = -P u g_l
      const vf gl = wg[j];
      const vf u = vld(xi + j * inner) * r + beta;
      const vf g_u = -Pv * u * gl;
      q += g_u * u;
      sum_gl += gl;
      gp += -0.5f * u * u * gl;
      gc -= r * g_u;
      wg[j] = g_u;
    }
    const vf rr = r * r;
    q -= Rv * rr * sum_gl;
    vf tsum = vf{};
    for (long j = 0; j < c; ++j) {  // t = r (g_u - q (r d) / div)
      const vf rd = vld(xi + j * inner) * r - shift;
      wg[j] = r * (wg[j] - q * rd * inv_div);
      tsum += wg[j];
    }
    tsum *= inv_c;
    for (long j = 0; j < c; ++j) {  // g_x = t - mean(t) + gy a
      vf g = wg[j] - tsum;
      if (gy) g += vld(gy + j * inner + i) * wa[j];
      vst(gx + j * inner + i, g);
    }
    vst(lP + i, gp), vst(lC + i, gc), vst(lR + i, -0.5f * rr * sum_gl), vst(lF + i, f_grad);
  }
}

// the (H, Fp) parameters of the columns [i0, i0 + w) of head h: pointers into them when they run one per column,
// else gathered into `buf` (4 x kTile)
template <typename A>
struct Columns {
  const A *P, *C, *R, *F;
  Columns(const A* P0, const A* C0, const A* R0, const A* F0, long h, long i0, long w, long Fp, long pdiv, long inner,
          A* buf) {
    if (Fp == inner && pdiv == 1) {
      const long p0 = h * Fp + i0;
      P = P0 + p0, C = C0 + p0, R = R0 + p0, F = F0 ? F0 + p0 : nullptr;
      return;
    }
    A *bp = buf, *bc = buf + kTile, *br = buf + 2 * kTile, *bf = buf + 3 * kTile;
    if (Fp == 1) {  // one value per head
      for (long i = 0; i < w; ++i) bp[i] = P0[h], bc[i] = C0[h], br[i] = R0[h];
      if (F0)
        for (long i = 0; i < w; ++i) bf[i] = F0[h];
    } else {  // parameter (i / pdiv) % Fp, walked without a division per column
      long q = (i0 / pdiv) % Fp, rem = i0 % pdiv;
      for (long i = 0; i < w; ++i) {
        const long k = h * Fp + q;
        bp[i] = P0[k], bc[i] = C0[k], br[i] = R0[k];
        if (F0) bf[i] = F0[k];
        if (++rem == pdiv) rem = 0, q = q + 1 == Fp ? 0 : q + 1;
      }
    }
    P = bp, C = bc, R = br, F = F0 ? bf : nullptr;
  }
};

template <typename S, typename A>
void forward(const S* x, S* y, A* a, const A* P, const A* C, const A* R, const A* F, long outer, long H, long c,
             long inner, long Fp, long pdiv, int softmax, double eps, double divisor, int threads) {
  const long tiles = (inner + kTile - 1) / kTile;
  // blocks (o, h, column tile) in memory order; each thread takes a contiguous run of them
#pragma omp parallel num_threads(threads)
  {
  std::vector<A> scratch(a ? 0 : c * kTile);
#pragma omp for schedule(static)
  for (long b = 0; b < outer * H * tiles; ++b) {
    const long oh = b / tiles, h = oh % H, i0 = (b % tiles) * kTile, w = std::min(kTile, inner - i0);
    const long base = oh * c * inner + i0;
    A s[kTile], m[kTile], r[kTile], top[kTile], buf[4 * kTile];
    bool act[kTile];
    const Columns<A> p(P, C, R, F, h, i0, w, Fp, pdiv, inner, buf);
    A* ab = a ? a + base : scratch.data();
    const long as = a ? inner : kTile;
    block_stats<S, A>(x + base, c, inner, w, static_cast<A>(eps), static_cast<A>(divisor), s, m, r);
    block_weights<S, A>(x + base, ab, c, inner, as, w, p.P, p.C, p.R, p.F, softmax != 0, s, m, r, top, act);
    for (long j = 0; j < c; ++j)
      for (long i = 0; i < w; ++i) {
        const long k = base + j * inner + i;
        store(y, k, static_cast<A>(load(x, k)) * ab[j * as + i]);
      }
  }
  }
}

// gx (like x) and the parameter gradients gP, gC, gR, gF ((H, Fp), zero on entry; gF may be null)
template <typename S, typename A>
void backward(const S* x, const S* gy, const A* ga, const A* P, const A* C, const A* R, const A* F, S* gx, A* gP,
              A* gC, A* gR, A* gF, long outer, long H, long c, long inner, long Fp, long pdiv, int softmax, double eps,
              double divisor, int threads) {
  const long tiles = (inner + kTile - 1) / kTile;
  const A div = static_cast<A>(divisor), inv_div = A(1) / div, inv_c = A(1) / static_cast<A>(c);
#pragma omp parallel num_threads(threads)
  {
  // per-thread parameter gradients, summed at the end; block scratch with row stride kTile
  std::vector<A> pP(H * Fp), pC(H * Fp), pR(H * Fp), pF(gF ? H * Fp : 0);
  std::vector<A> a(c * kTile), gu(c * kTile);
  std::vector<vf> lanes_a(c), lanes_g(c);  // the 16-column path's weights and gradients, one vector per item
  const float eps_f = static_cast<float>(eps), inv_c_f = 1.0f / c, inv_div_f = static_cast<float>(1.0 / divisor);
#pragma omp for schedule(static)
  for (long b = 0; b < outer * H * tiles; ++b) {
    const long oh = b / tiles, h = oh % H, i0 = (b % tiles) * kTile, w = std::min(kTile, inner - i0);
    const long base = oh * c * inner + i0;
    A s[kTile], m[kTile], r[kTile], top[kTile], sum_gl[kTile], q[kTile], tsum[kTile], buf[4 * kTile];
    A lP[kTile], lC[kTile], lR[kTile], lF[kTile];  // this block's parameter gradients
    bool act[kTile];
    const Columns<A> p(P, C, R, F, h, i0, w, Fp, pdiv, inner, buf);
    long v = 0;  // columns [0, v) of the block go 16 at a time, the rest through the scalar loops
    if constexpr (std::is_same<A, float>::value) {
      v = w / kLanes * kLanes;
      (softmax ? lanes_backward<S, true> : lanes_backward<S, false>)(
          x + base, gy ? gy + base : nullptr, ga ? ga + base : nullptr, gx + base, c, inner, v, p.P, p.C, p.R, p.F,
          eps_f, inv_c_f, inv_div_f, lanes_a.data(), lanes_g.data(), lP, lC, lR, lF);
    }
    const long bs = base + v, ws = w - v;
    const struct { const A *P, *C, *R, *F; } pv = {p.P + v, p.C + v, p.R + v, p.F ? p.F + v : nullptr};
    if (ws > 0) {
    const S* xb = x + bs;
    block_stats<S, A>(xb, c, inner, ws, static_cast<A>(eps), div, s, m, r);
    // weights of the block, recomputed into the scratch (row stride kTile)
    block_weights<S, A>(xb, a.data(), c, inner, kTile, ws, pv.P, pv.C, pv.R, pv.F, softmax != 0, s, m, r, top, act);
    // g_l = a * g_a with g_a = gy * x + ga; S = sum(g_l) (kept in gu as scratch)
    for (long i = 0; i < ws; ++i) tsum[i] = 0, lF[v + i] = 0;
    for (long j = 0; j < c; ++j)
      for (long i = 0; i < ws; ++i) {
        const long k = bs + j * inner + i;
        A g = 0;
        if (gy) g += static_cast<A>(load(gy, k)) * static_cast<A>(load(x, k));
        if (ga) g += ga[k];
        g *= a[j * kTile + i];
        gu[j * kTile + i] = g;
        tsum[i] += g;
      }
    if (softmax) {
      for (long i = 0; i < ws; ++i) {
        if (!act[i]) lF[v + i] = -tsum[i];
        tsum[i] = act[i] ? tsum[i] : A(0);
      }
      for (long j = 0; j < c; ++j)
        for (long i = 0; i < ws; ++i) gu[j * kTile + i] -= a[j * kTile + i] * tsum[i];
    }
    // g_u = -P u g_l; q = sum(g_u u) - R r^2 sum(g_l); parameter gradients
    A beta[kTile], shift[kTile];  // u = x r + beta;  r d = x r - shift
    for (long i = 0; i < ws; ++i) {
      q[i] = 0, sum_gl[i] = 0, lP[v + i] = 0, lC[v + i] = 0;
      shift[i] = m[i] * s[i] * r[i];
      beta[i] = -shift[i] - pv.C[i] * r[i];
    }
    for (long j = 0; j < c; ++j)
      for (long i = 0; i < ws; ++i) {
        const A gl = gu[j * kTile + i];
        const A u = static_cast<A>(load(xb, j * inner + i)) * r[i] + beta[i];
        const A g_u = -pv.P[i] * u * gl;
        q[i] += g_u * u;
        sum_gl[i] += gl;
        lP[v + i] += A(-0.5) * u * u * gl;
        lC[v + i] -= r[i] * g_u;
        gu[j * kTile + i] = g_u;
      }
    for (long i = 0; i < ws; ++i) {
      lR[v + i] = A(-0.5) * r[i] * r[i] * sum_gl[i];
      q[i] -= pv.R[i] * r[i] * r[i] * sum_gl[i];
      tsum[i] = 0;
    }
    // t = r (g_u - q (r d) / div);  g_x = t - mean(t) + gy a
    for (long j = 0; j < c; ++j)
      for (long i = 0; i < ws; ++i) {
        const A rd = static_cast<A>(load(xb, j * inner + i)) * r[i] - shift[i];
        const A t = r[i] * (gu[j * kTile + i] - q[i] * rd * inv_div);
        gu[j * kTile + i] = t;
        tsum[i] += t;
      }
    for (long i = 0; i < ws; ++i) tsum[i] *= inv_c;
    for (long j = 0; j < c; ++j)
      for (long i = 0; i < ws; ++i) {
        const long k = bs + j * inner + i;
        A g = gu[j * kTile + i] - tsum[i];
        if (gy) g += static_cast<A>(load(gy, k)) * a[j * kTile + i];
        store(gx, k, g);
      }
    }
    if (Fp == inner && pdiv == 1) {
      const long p0 = h * Fp + i0;
      for (long i = 0; i < w; ++i) pP[p0 + i] += lP[i], pC[p0 + i] += lC[i], pR[p0 + i] += lR[i];
      if (gF)
        for (long i = 0; i < w; ++i) pF[p0 + i] += lF[i];
    } else if (Fp == 1) {
      A sp = 0, sc = 0, sr = 0, sf = 0;
      for (long i = 0; i < w; ++i) sp += lP[i], sc += lC[i], sr += lR[i], sf += lF[i];
      pP[h] += sp, pC[h] += sc, pR[h] += sr;
      if (gF) pF[h] += sf;
    } else {
      long q = (i0 / pdiv) % Fp, rem = i0 % pdiv;
      for (long i = 0; i < w; ++i) {
        const long k = h * Fp + q;
        pP[k] += lP[i], pC[k] += lC[i], pR[k] += lR[i];
        if (gF) pF[k] += lF[i];
        if (++rem == pdiv) rem = 0, q = q + 1 == Fp ? 0 : q + 1;
      }
    }
  }
#pragma omp critical
  for (long k = 0; k < H * Fp; ++k) {
    gP[k] += pP[k], gC[k] += pC[k], gR[k] += pR[k];
    if (gF) gF[k] += pF[k];
  }
  }
}

// P, C, R (and F when log_eps is finite) of the product of G Gaussians with offsets d and variances v ((H, G, Fp)):
// sum_k (z - d_k)^2 / v_k = P (z - C)^2 + R;  F = log eps + sum_k log(2 pi v_k) / 2
template <typename A>
void params(const A* d, const A* v, long H, long G, long Fp, double log_eps, A* P, A* C, A* R, A* F) {
  const A half_log_2pi = static_cast<A>(0.91893853320467274178);
  for (long h = 0; h < H; ++h)
    for (long f = 0; f < Fp; ++f) {
      A prec = 0, num = 0, lg = 0;
      for (long k = 0; k < G; ++k) {
        const long i = (h * G + k) * Fp + f;
        prec += A(1) / v[i], num += d[i] / v[i];
        if (F) lg += half_log_2pi + A(0.5) * std::log(v[i]);
      }
      const A centre = num / prec;
      A resid = 0;
      for (long k = 0; k < G; ++k) {
        const long i = (h * G + k) * Fp + f;
        const A e = d[i] - centre;
        resid += e * e / v[i];
      }
      P[h * Fp + f] = prec, C[h * Fp + f] = centre, R[h * Fp + f] = resid;
      if (F) F[h * Fp + f] = static_cast<A>(log_eps) + lg;
    }
}

// the chain rule through params(): dP/dv_k = -1/v_k^2; dC/dd_k = 1/(v_k P), dC/dv_k = (C - d_k)/(v_k^2 P);
// dR/dd_k = 2 (d_k - C)/v_k, dR/dv_k = -(d_k - C)^2/v_k^2 (R's dependence through C vanishes: dR/dC = 0);
// dF/dv_k = 1/(2 v_k). gF may be null.
template <typename A>
void params_backward(const A* d, const A* v, const A* C, const A* P, const A* gP, const A* gC, const A* gR,
                     const A* gF, long H, long G, long Fp, A* gd, A* gv) {
  for (long h = 0; h < H; ++h)
    for (long f = 0; f < Fp; ++f) {
      const long j = h * Fp + f;
      for (long k = 0; k < G; ++k) {
        const long i = (h * G + k) * Fp + f;
        const A iv = A(1) / v[i], e = d[i] - C[j];
        gd[i] = gC[j] * iv / P[j] + gR[j] * A(2) * e * iv;
        gv[i] = -gP[j] * iv * iv - gC[j] * e * iv * iv / P[j] - gR[j] * e * e * iv * iv;
        if (gF) gv[i] += gF[j] * A(0.5) * iv;
      }
    }
}

}  // namespace

#define DAAM_EXPORT(NAME, S, A)                                                                                    \
  extern "C" void daam_forward_##NAME(const void* x, void* y, void* a, const void* P, const void* C, const void* R, \
                                      const void* F, long outer, long H, long c, long inner, long Fp, long pdiv,   \
                                      int softmax, double eps, double divisor, int threads) {                      \
    forward<S, A>(static_cast<const S*>(x), static_cast<S*>(y), static_cast<A*>(a), static_cast<const A*>(P),     \
                  static_cast<const A*>(C), static_cast<const A*>(R), static_cast<const A*>(F), outer, H, c, inner, \
                  Fp, pdiv, softmax, eps, divisor, threads);                                                       \
  }                                                                                                                \
  extern "C" void daam_backward_##NAME(const void* x, const void* gy, const void* ga, const void* P, const void* C, \
                                       const void* R, const void* F, void* gx, void* gP, void* gC, void* gR,       \
                                       void* gF, long outer, long H, long c, long inner, long Fp, long pdiv,       \
                                       int softmax, double eps, double divisor, int threads) {                     \
    backward<S, A>(static_cast<const S*>(x), static_cast<const S*>(gy), static_cast<const A*>(ga),                 \
                   static_cast<const A*>(P), static_cast<const A*>(C), static_cast<const A*>(R),                   \
                   static_cast<const A*>(F), static_cast<S*>(gx), static_cast<A*>(gP), static_cast<A*>(gC),        \
                   static_cast<A*>(gR), static_cast<A*>(gF), outer, H, c, inner, Fp, pdiv, softmax, eps, divisor,  \
                   threads);                                                                                       \
  }

#define DAAM_PARAMS_EXPORT(NAME, A)                                                                                \
  extern "C" void daam_params_##NAME(const void* d, const void* v, long H, long G, long Fp, double log_eps,       \
                                     int floor, void* P, void* C, void* R, void* F) {                              \
    params<A>(static_cast<const A*>(d), static_cast<const A*>(v), H, G, Fp, log_eps, static_cast<A*>(P),          \
              static_cast<A*>(C), static_cast<A*>(R), floor ? static_cast<A*>(F) : nullptr);                       \
  }                                                                                                                \
  extern "C" void daam_params_backward_##NAME(const void* d, const void* v, const void* C, const void* P,         \
                                              const void* gP, const void* gC, const void* gR, const void* gF,     \
                                              long H, long G, long Fp, void* gd, void* gv) {                      \
    params_backward<A>(static_cast<const A*>(d), static_cast<const A*>(v), static_cast<const A*>(C),              \
                       static_cast<const A*>(P), static_cast<const A*>(gP), static_cast<const A*>(gC),            \
                       static_cast<const A*>(gR), static_cast<const A*>(gF), H, G, Fp, static_cast<A*>(gd),       \
                       static_cast<A*>(gv));                                                                       \
  }

DAAM_EXPORT(f32, float, float)
DAAM_EXPORT(f64, double, double)
DAAM_EXPORT(bf16, uint16_t, float)
DAAM_PARAMS_EXPORT(f32, float)
DAAM_PARAMS_EXPORT(f64, double)
