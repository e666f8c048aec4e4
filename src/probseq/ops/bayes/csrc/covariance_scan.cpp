// The covariance scan (probseq/ops/bayes/covariance_scan.py) as one CPU kernel per (batch·head): forward and
// hand-written backward, the same recursion and the same formulas, with every chunk's matrices in L1 cache.
//
// Why: in PyTorch the scan is ~12 (forward) and ~30 (backward) small batched calls per chunk, each a pass over
// [B·H, C, K] or [B·H, K, K] tensors, and LAPACK runs the C×C factorisations and solves one matrix at a time.
// Here one thread carries one (batch·head) through all chunks; the K-wide products are register-blocked
// (R rows of the left factor per loaded row of the right one, GCC vector types of 64 bytes), the C×C work runs on
// rows padded to CP = a multiple of the vector length.
//
// Built on first use by probseq/ops/bayes/native.py (-O3 -march=native -fopenmp, against the installed torch).
// Supported: float32/float64, K in {16, 32, 64, 128}, C <= 64. Results equal the PyTorch scan to float rounding
// (tests/ops/test_native_scan.py); the summation order differs, the algebra does not.
//
// Shapes (contiguous): k_hat, rhs_base, xs, pks [N, BH, C, K]; cum_sqrt, tail_sqrt [N, BH, C, 1];
// b_base, ratio_sqrt, factors (Fᵀ, upper) [N, BH, C, C]; retention_chunk, reset_chunk [N, BH, 1, 1];
// cov0, cov [BH, K, K]; starts [N, BH, K, K]; info [N, BH] (int32: 0, or 1 + the first non-positive pivot).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

namespace {

template <typename T> struct Vec { typedef T type __attribute__((vector_size(64))); };
template <typename T> using V = typename Vec<T>::type;
template <typename T> constexpr int L = 64 / sizeof(T);

template <typename T> inline V<T> load(const T* p) { V<T> v; __builtin_memcpy(&v, p, 64); return v; }
template <typename T> inline void store(T* p, V<T> v) { __builtin_memcpy(p, &v, 64); }
template <typename T> inline V<T> splat(T x) { V<T> v = {}; return v + x; }

// Σ of the lanes: the two halves added, then their halves (vextract + add, not a scalar loop)
template <typename T> inline T hsum(V<T> v) {
  typedef T H __attribute__((vector_size(32)));
  typedef T Q __attribute__((vector_size(16)));
  H lo, hi;
  __builtin_memcpy(&lo, &v, 32);
  __builtin_memcpy(&hi, reinterpret_cast<const char*>(&v) + 32, 32);
  const H h = lo + hi;
  Q a, b;
  __builtin_memcpy(&a, &h, 16);
  __builtin_memcpy(&b, reinterpret_cast<const char*>(&h) + 16, 16);
  const Q q = a + b;
  T s = 0;
  for (int i = 0; i < int(16 / sizeof(T)); ++i) s += q[i];
  return s;
}
template <typename T> inline T vdot(const T* __restrict a, const T* __restrict b, int64_t n) {  // n: a multiple of L
  V<T> acc0 = splat<T>(0), acc1 = splat<T>(0);
  int64_t i = 0;
  for (; i + 2 * L<T> <= n; i += 2 * L<T>) { acc0 += load(a + i) * load(b + i); acc1 += load(a + i + L<T>) * load(b + i + L<T>); }
  for (; i < n; i += L<T>) acc0 += load(a + i) * load(b + i);
  return hsum<T>(acc0 + acc1);
}

// rows of K (NV vectors) per register block of R rows
template <typename T, int K> constexpr int NV = K / L<T>;
template <typename T, int K> constexpr int RB = NV<T, K> >= 16 ? 1 : (16 / NV<T, K> > 8 ? 8 : 16 / NV<T, K>);

// out[C×K] = A[C×K] · M[K×K]
template <typename T, int K>
inline void rows_times_square(const T* __restrict A, const T* __restrict M, T* __restrict out, int C) {
  constexpr int nv = NV<T, K>, R = RB<T, K>;
  int t = 0;
  for (; t + R <= C; t += R) {
    V<T> acc[R][nv];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) acc[r][v] = splat<T>(0);
    for (int j = 0; j < K; ++j) {
      V<T> m[nv];
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) m[v] = load(M + j * K + v * L<T>);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const V<T> a = splat(A[(t + r) * K + j]);
#pragma GCC unroll 16
        for (int v = 0; v < nv; ++v) acc[r][v] += a * m[v];
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) store(out + (t + r) * K + v * L<T>, acc[r][v]);
  }
  for (; t < C; ++t) {
    V<T> acc[nv];
#pragma GCC unroll 16
    for (int v = 0; v < nv; ++v) acc[v] = splat<T>(0);
    for (int j = 0; j < K; ++j) {
      const V<T> a = splat(A[t * K + j]);
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) acc[v] += a * load(M + j * K + v * L<T>);
    }
#pragma GCC unroll 16
    for (int v = 0; v < nv; ++v) store(out + t * K + v * L<T>, acc[v]);
  }
}


// out[C×K] = (init or 0) + A[C×inner] (row stride lda) · M[inner×K]
template <typename T, int K>
inline void rows_times(const T* __restrict A, int lda, int inner, const T* __restrict M, const T* init, T* out, int C) {
  constexpr int nv = NV<T, K>, R = RB<T, K>;
  int t = 0;
  for (; t + R <= C; t += R) {
    V<T> acc[R][nv];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) acc[r][v] = init ? load(init + (t + r) * K + v * L<T>) : splat<T>(0);
    for (int j = 0; j < inner; ++j) {
      V<T> m[nv];
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) m[v] = load(M + j * K + v * L<T>);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const V<T> a = splat(A[(t + r) * lda + j]);
#pragma GCC unroll 16
        for (int v = 0; v < nv; ++v) acc[r][v] += a * m[v];
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) store(out + (t + r) * K + v * L<T>, acc[r][v]);
  }
  for (; t < C; ++t) {
    V<T> acc[nv];
#pragma GCC unroll 16
    for (int v = 0; v < nv; ++v) acc[v] = init ? load(init + t * K + v * L<T>) : splat<T>(0);
    for (int j = 0; j < inner; ++j) {
      const V<T> a = splat(A[t * lda + j]);
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) acc[v] += a * load(M + j * K + v * L<T>);
    }
#pragma GCC unroll 16
    for (int v = 0; v < nv; ++v) store(out + t * K + v * L<T>, acc[v]);
  }
}

// out[K×K] = beta·in + alpha·Xᵀ Y (+ diag on the diagonal); X, Y: C×K. out may alias in.
template <typename T, int K>
inline void square_plus_outer(const T* in, T beta, T alpha, T diag, const T* __restrict X, const T* __restrict Y, T* out, int C) {
  constexpr int nv = NV<T, K>, R = RB<T, K>;
  static_assert(K % R == 0);
  for (int a = 0; a < K; a += R) {
    V<T> acc[R][nv];
    const V<T> b = splat(beta);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) acc[r][v] = b * load(in + (a + r) * K + v * L<T>);
    for (int t = 0; t < C; ++t) {
      V<T> y[nv];
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) y[v] = load(Y + t * K + v * L<T>);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const V<T> x = splat(alpha * X[t * K + a + r]);
#pragma GCC unroll 16
        for (int v = 0; v < nv; ++v) acc[r][v] += x * y[v];
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) store(out + (a + r) * K + v * L<T>, acc[r][v]);
    for (int r = 0; r < R; ++r) out[(a + r) * K + a + r] += diag;
  }
}

// out[C×CP] = base[C×C] (padded) + A[C×K] · Bt[K×CP]   (CP = nc vectors)
template <typename T, int K, int NC>
inline void rows_times_wide(const T* __restrict base, const T* __restrict A, const T* __restrict Bt, T* __restrict out, int C) {
  constexpr int CP = NC * L<T>;
  for (int i = 0; i < C; ++i) {
    V<T> acc[NC];
    T tmp[CP] = {};
    if (base) for (int t = 0; t < C; ++t) tmp[t] = base[i * C + t];
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) acc[c] = load(tmp + c * L<T>);
    for (int j = 0; j < K; ++j) {
      const V<T> a = splat(A[i * K + j]);
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) acc[c] += a * load(Bt + j * CP + c * L<T>);
    }
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) store(out + i * CP + c * L<T>, acc[c]);
  }
}

// In place: A (C×CP rows, symmetric in its C×C part) → U = Fᵀ, upper (zero below). Returns 0 or 1 + first bad pivot.
template <typename T, int NC>
inline int cholesky_upper(T* A, int C) {
  constexpr int CP = NC * L<T>;
  int bad = 0;
  for (int t = 0; t < C; ++t) {
    T d = A[t * CP + t];
    if (!(d > 0)) { if (!bad) bad = t + 1; d = T(1); }
    const T u = std::sqrt(d), inv = T(1) / u;
    T* row = A + t * CP;
    for (int k = 0; k < t; ++k) row[k] = 0;
    row[t] = u;
    for (int k = t + 1; k < C; ++k) row[k] *= inv;
    for (int k = C; k < CP; ++k) row[k] = 0;
    for (int j = t + 1; j < C; ++j) {
      const V<T> s = splat(row[j]);
      T* rj = A + j * CP;
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) store(rj + c * L<T>, load(rj + c * L<T>) - s * load(row + c * L<T>));
    }
  }
  return bad;
}

template <typename T, int K, int NC>
void forward_head(int64_t h, int64_t N, int64_t BH, int C, const T* kh, const T* rb, const T* cs, const T* bb,
                  const T* gs, const T* ts, const T* gc, const T* rc, T* xo, T* fo, T* so, T* po, T* co, int32_t* io,
                  T* khT, T* U, T* xt) {
  constexpr int nv = NV<T, K>, CP = NC * L<T>;
  const int64_t CK = (int64_t)C * K, CC = (int64_t)C * C, KK = (int64_t)K * K;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t i_1 = n * BH + h, i_ck = i_1 * CK, i_cc = i_1 * CC, i_c = i_1 * C;
    const T* P = so + i_1 * KK;
    T* Pn = n + 1 < N ? so + ((n + 1) * BH + h) * KK : co + h * KK;
    const T* khn = kh + i_ck;
    T* pk = po + i_ck;
    rows_times_square<T, K>(khn, P, pk, C);
    for (int j = 0; j < K; ++j)
      for (int t = 0; t < CP; ++t) khT[j * CP + t] = t < C ? khn[t * K + j] : T(0);
    rows_times_wide<T, K, NC>(bb + i_cc, pk, khT, U, C);
    for (int i = 0; i < C; ++i)  // the lower triangle is the chunk matrix (as LAPACK reads it): mirror it
      for (int t = 0; t < i; ++t) U[t * CP + i] = U[i * CP + t];
    io[i_1] = cholesky_upper<T, NC>(U, C);
    T* fout = fo + i_cc;
    for (int i = 0; i < C; ++i)
      for (int t = 0; t < C; ++t) fout[i * C + t] = U[i * CP + t];
    // X = (g ∘ F)⁻¹ (Rb + c ∘ pk), F[t][j] = U[j][t]
    T* X = xo + i_ck;
    const T* g = gs + i_cc;
    for (int t = 0; t < C; ++t) {
      V<T> row[nv];
      const V<T> c = splat(cs[i_c + t]);
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) row[v] = load(rb + i_ck + t * K + v * L<T>) + c * load(pk + t * K + v * L<T>);
      for (int j = 0; j < t; ++j) {
        const V<T> l = splat(g[t * C + j] * U[j * CP + t]);
#pragma GCC unroll 16
        for (int v = 0; v < nv; ++v) row[v] -= l * load(X + j * K + v * L<T>);
      }
      const V<T> inv = splat(T(1) / (g[t * C + t] * U[t * CP + t]));
      const V<T> tau = splat(ts[i_c + t]);
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) {
        const V<T> x = row[v] * inv;
        store(X + t * K + v * L<T>, x);
        store(xt + t * K + v * L<T>, tau * x);
      }
    }
    square_plus_outer<T, K>(P, gc[i_1], T(-1), rc[i_1], xt, xt, Pn, C);
  }
}

template <typename T, int K, int NC>
void scan_forward_impl(int64_t N, int64_t BH, int C, const T* kh, const T* rb, const T* cs, const T* bb, const T* gs,
                       const T* ts, const T* gc, const T* rc, T* xo, T* fo, T* so, T* po, T* co, int32_t* io) {
  constexpr int CP = NC * L<T>;
  at::parallel_for(0, BH, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> khT(K * CP), U(CP * CP), xt(CP * K);
    for (int64_t h = begin; h < end; ++h)
      forward_head<T, K, NC>(h, N, BH, C, kh, rb, cs, bb, gs, ts, gc, rc, xo, fo, so, po, co, io, khT.data(), U.data(), xt.data());
  });
}

template <typename T, int K>
void dispatch_c(int nc, int64_t N, int64_t BH, int C, const T* kh, const T* rb, const T* cs, const T* bb, const T* gs,
                const T* ts, const T* gc, const T* rc, T* xo, T* fo, T* so, T* po, T* co, int32_t* io) {
  switch (nc) {
    case 1: return scan_forward_impl<T, K, 1>(N, BH, C, kh, rb, cs, bb, gs, ts, gc, rc, xo, fo, so, po, co, io);
    case 2: return scan_forward_impl<T, K, 2>(N, BH, C, kh, rb, cs, bb, gs, ts, gc, rc, xo, fo, so, po, co, io);
    case 4: return scan_forward_impl<T, K, 4>(N, BH, C, kh, rb, cs, bb, gs, ts, gc, rc, xo, fo, so, po, co, io);
    case 8: return scan_forward_impl<T, K, 8>(N, BH, C, kh, rb, cs, bb, gs, ts, gc, rc, xo, fo, so, po, co, io);
    default: TORCH_CHECK(false, "chunk too long");
  }
}

std::vector<at::Tensor> scan_forward(const at::Tensor& k_hat, const at::Tensor& rhs_base, const at::Tensor& cum_sqrt,
                                     const at::Tensor& b_base, const at::Tensor& ratio_sqrt, const at::Tensor& tail_sqrt,
                                     const at::Tensor& retention_chunk, const at::Tensor& reset_chunk,
                                     const at::Tensor& cov0) {
  const int64_t N = k_hat.size(0), BH = k_hat.size(1), C = k_hat.size(2), K = k_hat.size(3);
  auto xs = at::empty_like(k_hat), pks = at::empty_like(k_hat), factors = at::empty_like(b_base);
  auto starts = at::empty({N, BH, K, K}, k_hat.options());
  starts[0].copy_(cov0);
  auto cov = at::empty({BH, K, K}, k_hat.options());
  auto info = at::empty({N, BH}, k_hat.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(k_hat.scalar_type(), "scan_forward", [&] {
    using T = scalar_t;
    auto a = k_hat.contiguous(), b = rhs_base.contiguous(), c = cum_sqrt.contiguous(), d = b_base.contiguous(),
         e = ratio_sqrt.contiguous(), f = tail_sqrt.contiguous(), g = retention_chunk.contiguous(),
         h = reset_chunk.contiguous();
    int nc = 1;
    while (nc * L<T> < C) nc *= 2;
    auto args = std::make_tuple(nc, N, BH, (int)C, a.data_ptr<T>(), b.data_ptr<T>(), c.data_ptr<T>(), d.data_ptr<T>(),
                                e.data_ptr<T>(), f.data_ptr<T>(), g.data_ptr<T>(), h.data_ptr<T>(), xs.data_ptr<T>(),
                                factors.data_ptr<T>(), starts.data_ptr<T>(), pks.data_ptr<T>(), cov.data_ptr<T>(),
                                info.data_ptr<int32_t>());
    switch (K) {
      case 16: std::apply(dispatch_c<T, 16>, args); break;
      case 32: std::apply(dispatch_c<T, 32>, args); break;
      case 64: std::apply(dispatch_c<T, 64>, args); break;
      case 128: std::apply(dispatch_c<T, 128>, args); break;
      default: TORCH_CHECK(false, "unsupported key dim ", K);
    }
  });
  return {xs, factors, starts, cov, info, pks};
}



template <typename T, int K, int NC>
void backward_head(int64_t h, int64_t N, int64_t BH, int C, const T* kh, const T* cs, const T* gs, const T* ts,
                   const T* gc, const T* so, const T* fo, const T* xo, const T* po, const T* gx, const T* gp,
                   const T* gst, T* Pb, T* Pbt, bool symmetric, T* gkh, T* grhs, T* gcs, T* gb, T* ggs, T* gts, T* ggc, T* grc,
                   T* S, T* PT, T* xt, T* gxt, T* Rb, T* XT, T* W, T* W2, T* tmp) {
  constexpr int nv = NV<T, K>, CP = NC * L<T>;
  const int64_t CK = (int64_t)C * K, CC = (int64_t)C * C, KK = (int64_t)K * K;
  for (int64_t n = N - 1; n >= 0; --n) {
    const int64_t i_1 = n * BH + h, i_ck = i_1 * CK, i_cc = i_1 * CC, i_c = i_1 * C;
    const T* P = so + i_1 * KK;
    const T* U = fo + i_cc;  // Fᵀ, C×C
    const T* X = xo + i_ck;
    const T* pk = po + i_ck;
    const T* khn = kh + i_ck;
    const T* g = gs + i_cc;
    // 1. G_C, 1 − G_C
    T tr = 0;
    for (int a = 0; a < K; ++a) tr += Pb[a * K + a];
    grc[i_1] = tr;
    ggc[i_1] = vdot<T>(P, Pb, KK);
    // 2–4. X̃̄ = −X̃ (P̄' + P̄'ᵀ) (P̄'ᵀ is carried alongside P̄'); τ̄; X̄
    for (int64_t e = 0; e < KK; e += L<T>) store(S + e, -(load(Pb + e) + load(Pbt + e)));
    for (int t = 0; t < C; ++t) {
      const V<T> tau = splat(ts[i_c + t]);
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) store(xt + t * K + v * L<T>, tau * load(X + t * K + v * L<T>));
    }
    rows_times<T, K>(xt, K, K, S, nullptr, gxt, C);
    for (int t = 0; t < C; ++t) {
      gts[i_c + t] = vdot<T>(X + t * K, gxt + t * K, K);
      const V<T> tau = splat(ts[i_c + t]);
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) {
        V<T> y = tau * load(gxt + t * K + v * L<T>);
        if (gx) y += load(gx + i_ck + t * K + v * L<T>);
        store(gxt + t * K + v * L<T>, y);
      }
    }
    // 5. R̄ = (g ∘ F)⁻ᵀ X̄: back substitution, (g∘F)ᵀ[t][i] = g[i,t] U[t][i]
    for (int t = C - 1; t >= 0; --t) {
      V<T> row[nv];
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) row[v] = load(gxt + t * K + v * L<T>);
      for (int i = t + 1; i < C; ++i) {
        const V<T> l = splat(g[i * C + t] * U[t * C + i]);
#pragma GCC unroll 16
        for (int v = 0; v < nv; ++v) row[v] -= l * load(Rb + i * K + v * L<T>);
      }
      const V<T> inv = splat(T(1) / (g[t * C + t] * U[t * C + t]));
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) store(Rb + t * K + v * L<T>, row[v] * inv);
    }
    for (int64_t e = 0; e < CK; ++e) grhs[i_ck + e] = Rb[e];
    for (int t = 0; t < C; ++t) gcs[i_c + t] = vdot<T>(pk + t * K, Rb + t * K, K);
    // 6–7. (g∘F)̄ = −tril(R̄ Xᵀ); ḡ = F ∘ (g∘F)̄; F̄ = g ∘ (g∘F)̄ (+ pivots), into W (C×CP)
    for (int k = 0; k < K; ++k)
      for (int t = 0; t < CP; ++t) XT[k * CP + t] = t < C ? X[t * K + k] : T(0);
    rows_times_wide<T, K, NC>(nullptr, Rb, XT, W, C);
    for (int i = 0; i < C; ++i)
      for (int t = 0; t < CP; ++t) {
        if (t <= i) {
          const T d = -W[i * CP + t];
          ggs[i_cc + i * C + t] = U[t * C + i] * d;
          W[i * CP + t] = g[i * C + t] * d + (t == i && gp ? gp[i_c + i] : T(0));
        } else {
          if (t < C) ggs[i_cc + i * C + t] = 0;
          W[i * CP + t] = 0;
        }
      }
    // 9. phi = tril(Fᵀ F̄), (Fᵀ F̄)[a][:] = Σ_i U[a][i] F̄[i][:]; Φ = ½(phi + tril₋₁(phi)ᵀ) into W2
    for (int a = 0; a < C; ++a) {
      V<T> row[NC];
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) row[c] = splat<T>(0);
      for (int i = a; i < C; ++i) {
        const V<T> u = splat(U[a * C + i]);
#pragma GCC unroll 8
        for (int c = 0; c < NC; ++c) row[c] += u * load(W + i * CP + c * L<T>);
      }
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) store(tmp + a * CP + c * L<T>, row[c]);
    }
    for (int a = 0; a < C; ++a)
      for (int b = 0; b < CP; ++b)
        W2[a * CP + b] = b >= C ? T(0) : (b <= a ? T(0.5) * tmp[a * CP + b] : T(0.5) * tmp[b * CP + a]);
    // 10. B̄ = F⁻ᵀ Φ F⁻¹: M1 = F⁻ᵀ Φ (back substitution with U), then B̄ᵀ = F⁻ᵀ M1ᵀ
    for (int pass = 0; pass < 2; ++pass) {
      for (int t = C - 1; t >= 0; --t) {
        V<T> row[NC];
#pragma GCC unroll 8
        for (int c = 0; c < NC; ++c) row[c] = load(W2 + t * CP + c * L<T>);
        for (int i = t + 1; i < C; ++i) {
          const V<T> u = splat(U[t * C + i]);
#pragma GCC unroll 8
          for (int c = 0; c < NC; ++c) row[c] -= u * load(W2 + i * CP + c * L<T>);
        }
        const V<T> inv = splat(T(1) / U[t * C + t]);
#pragma GCC unroll 8
        for (int c = 0; c < NC; ++c) store(W2 + t * CP + c * L<T>, row[c] * inv);
      }
      for (int a = 0; a < C; ++a)  // transpose in place (C×C part)
        for (int b = 0; b < a; ++b) std::swap(W2[a * CP + b], W2[b * CP + a]);
    }
    // W2 is now B̄ (after the second transpose)
    for (int i = 0; i < C; ++i)
      for (int t = 0; t < C; ++t) gb[i_cc + i * C + t] = W2[i * CP + t];
    // 11. p̄k = c ∘ R̄ + B̄ K̂ (into xt)
    for (int t = 0; t < C; ++t) {
      const V<T> c = splat(cs[i_c + t]);
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) store(tmp + t * K + v * L<T>, c * load(Rb + t * K + v * L<T>));
    }
    rows_times<T, K>(W2, CP, C, khn, tmp, xt, C);
    // 12. K̂̄ = B̄ pk + p̄k Pᵀ
    const T* Pt = P;  // Pᵀ: P itself when the chunk-start covariance is symmetric (see symmetric_starts)
    if (!symmetric) {
      for (int a = 0; a < K; ++a)
        for (int b = 0; b < K; ++b) PT[a * K + b] = P[b * K + a];
      Pt = PT;
    }
    rows_times<T, K>(W2, CP, C, pk, nullptr, gxt, C);
    rows_times<T, K>(xt, K, K, Pt, gxt, gkh + i_ck, C);
    // 13. P̄ = G_C P̄' + K̂ᵀ p̄k (+ the gradient of P as an output), and its transpose
    square_plus_outer<T, K>(Pb, gc[i_1], T(1), T(0), khn, xt, Pb, C);
    square_plus_outer<T, K>(Pbt, gc[i_1], T(1), T(0), xt, khn, Pbt, C);
    if (gst) {
      const T* gn = gst + i_1 * KK;
      for (int a = 0; a < K; ++a)
        for (int b = 0; b < K; ++b) {
          Pb[a * K + b] += gn[a * K + b];
          Pbt[a * K + b] += gn[b * K + a];
        }
    }
  }
}

template <typename T, int K, int NC>
void scan_backward_impl(int64_t N, int64_t BH, int C, const T* kh, const T* cs, const T* gs, const T* ts, const T* gc,
                        const T* so, const T* fo, const T* xo, const T* po, const T* gx, const T* gp, const T* gst,
                        T* Pb, T* gkh, T* grhs, T* gcs, T* gb, T* ggs, T* gts, T* ggc, T* grc) {
  constexpr int CP = NC * L<T>;
  at::parallel_for(0, BH, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> S(K * K), PT(K * K), Pbt(K * K), xt(CP * K), gxt(CP * K), Rb(CP * K), XT(K * CP), W(CP * CP),
        W2(CP * CP), tmp(CP * (CP > K ? CP : K));
    for (int64_t h = begin; h < end; ++h) {
      T* Pb_h = Pb + h * K * K;
      for (int a = 0; a < K; ++a)
        for (int b = 0; b < K; ++b) Pbt[a * K + b] = Pb_h[b * K + a];
      // The forward kernel keeps P exactly symmetric (its update is, entry by entry) when the first P is.
      const T* P0 = so + h * K * K;
      bool symmetric = true;
      for (int a = 0; a < K && symmetric; ++a)
        for (int b = 0; b < a; ++b)
          if (P0[a * K + b] != P0[b * K + a]) { symmetric = false; break; }
      backward_head<T, K, NC>(h, N, BH, C, kh, cs, gs, ts, gc, so, fo, xo, po, gx, gp, gst, Pb_h, Pbt.data(), symmetric, gkh, grhs,
                              gcs, gb, ggs, gts, ggc, grc, S.data(), PT.data(), xt.data(), gxt.data(), Rb.data(),
                              XT.data(), W.data(), W2.data(), tmp.data());
    }
  });
}

template <typename T, int K>
void dispatch_bc(int nc, int64_t N, int64_t BH, int C, const T* kh, const T* cs, const T* gs, const T* ts, const T* gc,
                 const T* so, const T* fo, const T* xo, const T* po, const T* gx, const T* gp, const T* gst, T* Pb,
                 T* gkh, T* grhs, T* gcs, T* gb, T* ggs, T* gts, T* ggc, T* grc) {
#define PROBSEQ_B(NCV) scan_backward_impl<T, K, NCV>(N, BH, C, kh, cs, gs, ts, gc, so, fo, xo, po, gx, gp, gst, Pb, gkh, grhs, gcs, gb, ggs, gts, ggc, grc)
  switch (nc) {
    case 1: PROBSEQ_B(1); return;
    case 2: PROBSEQ_B(2); return;
    case 4: PROBSEQ_B(4); return;
    case 8: PROBSEQ_B(8); return;
    default: TORCH_CHECK(false, "chunk too long");
  }
#undef PROBSEQ_B
}

// Returns the gradients of (k_hat, rhs_base, cum_sqrt, b_base, ratio_sqrt, tail_sqrt, retention_chunk, reset_chunk, cov0).
std::vector<at::Tensor> scan_backward(const at::Tensor& k_hat, const at::Tensor& cum_sqrt, const at::Tensor& ratio_sqrt,
                                      const at::Tensor& tail_sqrt, const at::Tensor& retention_chunk,
                                      const at::Tensor& starts, const at::Tensor& factors, const at::Tensor& xs,
                                      const at::Tensor& pks, const std::optional<at::Tensor>& grad_x,
                                      const std::optional<at::Tensor>& grad_pivots,
                                      const std::optional<at::Tensor>& grad_starts,
                                      const std::optional<at::Tensor>& grad_cov) {
  const int64_t N = k_hat.size(0), BH = k_hat.size(1), C = k_hat.size(2), K = k_hat.size(3);
  auto Pb = grad_cov.has_value() ? grad_cov->contiguous().clone() : at::zeros({BH, K, K}, k_hat.options());
  auto gkh = at::empty_like(k_hat), grhs = at::empty_like(k_hat), gcs = at::empty_like(cum_sqrt),
       gb = at::empty_like(factors), ggs = at::empty_like(ratio_sqrt), gts = at::empty_like(tail_sqrt),
       ggc = at::empty_like(retention_chunk), grc = at::empty_like(retention_chunk);
  AT_DISPATCH_FLOATING_TYPES(k_hat.scalar_type(), "scan_backward", [&] {
    using T = scalar_t;
    auto c = [](const at::Tensor& t) { return t.contiguous(); };
    auto a_kh = c(k_hat), a_cs = c(cum_sqrt), a_gs = c(ratio_sqrt), a_ts = c(tail_sqrt), a_gc = c(retention_chunk),
         a_so = c(starts), a_fo = c(factors), a_xo = c(xs), a_po = c(pks);
    at::Tensor a_gx, a_gp, a_gst;
    if (grad_x) a_gx = c(*grad_x);
    if (grad_pivots) a_gp = c(*grad_pivots);
    if (grad_starts) a_gst = c(*grad_starts);
    int nc = 1;
    while (nc * L<T> < C) nc *= 2;
    auto args = std::make_tuple(nc, N, BH, (int)C, a_kh.data_ptr<T>(), a_cs.data_ptr<T>(), a_gs.data_ptr<T>(),
                                a_ts.data_ptr<T>(), a_gc.data_ptr<T>(), a_so.data_ptr<T>(), a_fo.data_ptr<T>(),
                                a_xo.data_ptr<T>(), a_po.data_ptr<T>(),
                                (const T*)(grad_x ? a_gx.data_ptr<T>() : nullptr),
                                (const T*)(grad_pivots ? a_gp.data_ptr<T>() : nullptr),
                                (const T*)(grad_starts ? a_gst.data_ptr<T>() : nullptr), Pb.data_ptr<T>(),
                                gkh.data_ptr<T>(), grhs.data_ptr<T>(), gcs.data_ptr<T>(), gb.data_ptr<T>(),
                                ggs.data_ptr<T>(), gts.data_ptr<T>(), ggc.data_ptr<T>(), grc.data_ptr<T>());
    switch (K) {
      case 16: std::apply(dispatch_bc<T, 16>, args); break;
      case 32: std::apply(dispatch_bc<T, 32>, args); break;
      case 64: std::apply(dispatch_bc<T, 64>, args); break;
      case 128: std::apply(dispatch_bc<T, 128>, args); break;
      default: TORCH_CHECK(false, "unsupported key dim ", K);
    }
  });
  return {gkh, grhs, gcs, gb, ggs, gts, ggc, grc, Pb};
}

}  // namespace

TORCH_LIBRARY(probseq_native, m) {
  m.def("covariance_scan_forward(Tensor k_hat, Tensor rhs_base, Tensor cum_sqrt, Tensor b_base, Tensor ratio_sqrt, Tensor tail_sqrt, Tensor retention_chunk, Tensor reset_chunk, Tensor cov0) -> Tensor[]");
  m.def("covariance_scan_backward(Tensor k_hat, Tensor cum_sqrt, Tensor ratio_sqrt, Tensor tail_sqrt, Tensor retention_chunk, Tensor starts, Tensor factors, Tensor xs, Tensor pks, Tensor? grad_x, Tensor? grad_pivots, Tensor? grad_starts, Tensor? grad_cov) -> Tensor[]");
}
TORCH_LIBRARY_IMPL(probseq_native, CPU, m) { m.impl("covariance_scan_forward", &scan_forward); m.impl("covariance_scan_backward", &scan_backward); }
