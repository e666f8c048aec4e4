// Steps 2–5 of the chunked Bayesian filter — the covariance path (probseq/ops/bayes/covariance_scan.py:
// retention_terms, scan_inputs, then covariance_scan) — as one CPU kernel per (batch·head): forward and hand-written
// backward, the same recursion and formulas, with every chunk's matrices in L1 cache.
//
// Why: in PyTorch the path is ~25 chunk-local ops over [N, B·H, C, C] tensors plus ~12 (forward) and ~30 (backward)
// small batched calls per chunk, and LAPACK runs the C×C factorisations and solves one matrix at a time. Here one
// thread carries one (batch·head) through all chunks; the K-wide products are register-blocked (R rows of the left
// factor per loaded row of the right one, GCC vector types of 64 bytes), the C×C work runs on rows padded to CP, a
// multiple of the vector length, and the in-chunk retention ratios are made from h = ½ log γ where they are used.
//
// Built on first use by probseq/ops/bayes/native.py (-O3 -march=native -fopenmp, against the installed torch).
// Supported: float32/float64, K in {16, 32, 64, 128}, C <= 64. Results equal the PyTorch path to float rounding
// (tests/ops/test_native_scan.py); the summation order differs, the algebra does not.
//
// Per token (contiguous, M chunks of C tokens in each row: [N/M, BH, M·C, ·], the mean path's layout when its chunks are
// M covariance chunks long): k, xs, pks [·, K]; noise r, half_log_retention h = ½ log γ and pivots diag F [·].
// Per chunk: factors (Fᵀ, upper) and grams (S = K Kᵀ) [N, BH, C, C]; starts [N, BH, K, K]; info [N, BH] (int32: 0, or
// 1 + the first non-positive pivot). cov0, cov [BH, K, K].

#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

namespace {

template <typename T> struct Vec { typedef T type __attribute__((vector_size(64))); };
template <typename T> using V = typename Vec<T>::type;
template <typename T> constexpr int L = 64 / sizeof(T);

template <typename T> inline V<T> load(const T* p) { V<T> v; __builtin_memcpy(&v, p, 64); return v; }
template <typename T> inline void store(T* p, V<T> v) { __builtin_memcpy(p, &v, 64); }
template <typename T> inline V<T> splat(T x) { V<T> v = {}; return v + x; }
// Asks for n elements from p into the cache (the next chunk's inputs, while this one computes).
template <typename T> inline void prefetch(const T* p, int64_t n) {
  const char* bytes = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < n * int64_t(sizeof(T)); b += 64) __builtin_prefetch(bytes + b);
}

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
  // four independent accumulators: one chain of dependent FMAs would wait on the FMA's latency at every vector
  V<T> acc[4] = {splat<T>(0), splat<T>(0), splat<T>(0), splat<T>(0)};
  int64_t i = 0;
  for (; i + 4 * L<T> <= n; i += 4 * L<T>)
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) acc[u] += load(a + i + u * L<T>) * load(b + i + u * L<T>);
  if (i + 2 * L<T> <= n) {  // the rest (at most three vectors), without indexing acc by a variable (a spill)
    acc[0] += load(a + i) * load(b + i);
    acc[1] += load(a + i + L<T>) * load(b + i + L<T>);
    i += 2 * L<T>;
  }
  if (i < n) acc[2] += load(a + i) * load(b + i);
  return hsum<T>((acc[0] + acc[1]) + (acc[2] + acc[3]));
}

// rows of W elements (NV vectors) per register block of R rows
template <typename T, int W> constexpr int NV = W / L<T>;
template <typename T, int W> constexpr int RB = NV<T, W> >= 16 ? 1 : (16 / NV<T, W> > 8 ? 8 : 16 / NV<T, W>);

// out[C×W] = (init or 0) + A[C×inner] (row stride lda) · M[inner×W]; W a multiple of the vector length
template <typename T, int W>
inline void rows_times(const T* __restrict A, int lda, int inner, const T* __restrict M, const T* init, T* out, int C) {
  constexpr int nv = NV<T, W>, R = RB<T, W>;
  int t = 0;
  for (; t + R <= C; t += R) {
    V<T> acc[R][nv];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) acc[r][v] = init ? load(init + (t + r) * W + v * L<T>) : splat<T>(0);
    for (int j = 0; j < inner; ++j) {
      V<T> m[nv];
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) m[v] = load(M + j * W + v * L<T>);
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
      for (int v = 0; v < nv; ++v) store(out + (t + r) * W + v * L<T>, acc[r][v]);
  }
  for (; t < C; ++t) {
    V<T> acc[nv];
#pragma GCC unroll 16
    for (int v = 0; v < nv; ++v) acc[v] = init ? load(init + t * W + v * L<T>) : splat<T>(0);
    for (int j = 0; j < inner; ++j) {
      const V<T> a = splat(A[t * lda + j]);
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) acc[v] += a * load(M + j * W + v * L<T>);
    }
#pragma GCC unroll 16
    for (int v = 0; v < nv; ++v) store(out + t * W + v * L<T>, acc[v]);
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
    const V<T> scale = splat(inv);
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) store(row + c * L<T>, load(row + c * L<T>) * scale);
    for (int k = 0; k < t; ++k) row[k] = 0;
    row[t] = u;
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

// The in-chunk retention terms from h_t = ½ log γ_t, with cs_t = Σ_{l≤t} h_l (summed in double): c_t = exp(cs_t) = √G_t,
// reset_t = 1 − G_t = −expm1(2 cs_t) (accurate when G_t ≈ 1) and g_it = sqrt(G_i/G_t) = Π_{l=t+1}^{i} exp(h_l) for i ≥ t
// (a running product in double: C exponentials a chunk, not C²; 0 above the diagonal). Returns G_C = exp(2 cs_{C−1}).
template <typename T>
inline T retention_terms(const T* h, int C, T* g, T* c, T* reset) {
  double factor[64], cs = 0;
  for (int t = 0; t < C; ++t) {
    cs += double(h[t]);
    factor[t] = std::exp(double(h[t]));
    c[t] = T(std::exp(cs));
    reset[t] = T(-std::expm1(2 * cs));
  }
  for (int t = 0; t < C; ++t) {
    for (int i = 0; i < t; ++i) g[i * C + t] = T(0);
    double ratio = 1;
    g[t * C + t] = T(1);
    for (int i = t + 1; i < C; ++i) g[i * C + t] = T(ratio *= factor[i]);
  }
  return T(std::exp(2 * cs));
}

// The gradient of h from those of c, 1 − G, G_C and g (ḡ: C×CP rows, only i > t read): with ∂c_t/∂cs_t = c_t,
// ∂(1 − G_t)/∂cs_t = −2 G_t, ∂G_C/∂cs_{C−1} = 2 G_C and ∂g_it/∂cs_i = −∂g_it/∂cs_t = g_it, then h̄_l = Σ_{t≥l} cs̄_t.
template <typename T, int CP>
inline void retention_backward(const T* g, const T* c, T gc, const T* dc, const T* dreset, T dgc, const T* dg, int C,
                               T* dh) {
  double dcs[64];
  for (int t = 0; t < C; ++t) dcs[t] = double(c[t]) * dc[t] - 2 * double(c[t]) * c[t] * dreset[t];
  dcs[C - 1] += 2 * double(gc) * dgc;
  for (int i = 1; i < C; ++i)
    for (int t = 0; t < i; ++t) {
      const double q = double(g[i * C + t]) * dg[i * CP + t];
      dcs[i] += q;
      dcs[t] -= q;
    }
  double total = 0;
  for (int l = C - 1; l >= 0; --l) dh[l] = T(total += dcs[l]);
}

// The inputs of one call, [N, BH, ...] contiguous (see the header), and where the results go.
template <typename T>
struct Path {
  int64_t N, BH;
  int C, M;  // the chunk length; chunks per row of the per-token tensors
  const T *k, *noise, *h;  // keys, r, h_t = ½ log γ_t
  T *xs, *pivots, *factors, *starts, *pks, *grams, *cov;  // outputs (starts[0] = cov0 on entry); grams: S = K Kᵀ
  int32_t* info;
  // Per-token tensors (k, xs, pks, noise, h, pivots and their gradients) are [N/M, BH, M·C, ·]: chunk n of head h
  // starts at this token; per-chunk ones (factors, grams, starts, info) are [N, BH, ·].
  int64_t token(int64_t n, int64_t h) const { return ((n / M) * BH + h) * (int64_t(M) * C) + (n % M) * C; }
};

// The chunk-local pieces of step 2 (docs/chunked-algorithm.md): K̂ = diag(c) K and S = K Kᵀ (C×CP rows), and for the
// forward also K̂ᵀ (K×CP, zero-padded) and the lower triangle of B_base = M ∘ S + diag(r), with M_it = g_it (1 − G_t)
// (i > t) and M_tt = 1 − G_t (the upper triangle is never read: the factorisation mirrors the lower one).
template <typename T, int K>
inline void scaled_keys(const T* k, const T* c, int C, T* kh) {  // K̂ = diag(c) K
  constexpr int nv = NV<T, K>;
  for (int t = 0; t < C; ++t) {
    const V<T> ct = splat(c[t]);
#pragma GCC unroll 16
    for (int v = 0; v < nv; ++v) store(kh + t * K + v * L<T>, ct * load(k + t * K + v * L<T>));
  }
}

template <typename T, int K, int NC>
inline void chunk_pieces(const T* k, const T* c, const T* reset, const T* g, const T* noise, int C, T* kh, T* khT,
                         T* kT, T* S, T* base) {
  constexpr int CP = NC * L<T>;
  scaled_keys<T, K>(k, c, C, kh);
  for (int t = 0; t < C; ++t)
    for (int j = 0; j < K; ++j) kT[j * CP + t] = k[t * K + j];
  for (int j = 0; j < K; ++j)
    for (int t = C; t < CP; ++t) kT[j * CP + t] = T(0);
  rows_times<T, CP>(k, K, K, kT, nullptr, S, C);  // S = K Kᵀ, C×CP
  T cp[CP] = {};
  for (int t = 0; t < C; ++t) cp[t] = c[t];
  for (int j = 0; j < K; ++j)
#pragma GCC unroll 8
    for (int q = 0; q < NC; ++q) store(khT + j * CP + q * L<T>, load(cp + q * L<T>) * load(kT + j * CP + q * L<T>));
  for (int i = 0; i < C; ++i) {
    T* row = base + i * CP;
    for (int t = 0; t < i; ++t) row[t] = g[i * C + t] * reset[t] * S[i * CP + t];
    row[i] = reset[i] * S[i * CP + i] + noise[i];
    for (int t = i + 1; t < CP; ++t) row[t] = T(0);
  }
}

// Whether a K×K matrix is exactly symmetric.
template <typename T, int K>
inline bool is_symmetric(const T* P) {
  for (int r = 0; r < K; ++r)
    for (int q = 0; q < r; ++q)
      if (P[r * K + q] != P[q * K + r]) return false;
  return true;
}

template <typename T, int K, int NC>
void forward_head(const Path<T>& a, int64_t h, T* kh, T* khT, T* kT, T* S, T* base, T* U, T* xt, T* g, T* c, T* reset) {
  constexpr int nv = NV<T, K>, CP = NC * L<T>;
  const int C = a.C;
  // A symmetric first covariance keeps every P exactly symmetric (mirrored below), so the backward may use P for Pᵀ.
  const bool symmetric = is_symmetric<T, K>(a.starts + h * (int64_t)K * K);
  const int64_t CK = (int64_t)C * K, CC = (int64_t)C * C, KK = (int64_t)K * K;
  for (int64_t n = 0; n < a.N; ++n) {
    const int64_t i_1 = n * a.BH + h, i_cc = i_1 * CC, i_c = a.token(n, h), i_ck = i_c * K;
    const T* P = a.starts + i_1 * KK;
    T* Pn = n + 1 < a.N ? a.starts + ((n + 1) * a.BH + h) * KK : a.cov + h * KK;
    const T* k = a.k + i_ck;
    const T gc = retention_terms<T>(a.h + i_c, C, g, c, reset);
    if (n + 1 < a.N) {  // the next chunk's inputs
      const int64_t n_1 = a.token(n + 1, h);
      prefetch(a.k + n_1 * K, CK);
      for (const T* base : {a.h, a.noise}) prefetch(base + n_1, C);
    }
    chunk_pieces<T, K, NC>(k, c, reset, g, a.noise + i_c, C, kh, khT, kT, S, base);
    T* gram = a.grams + i_cc;  // S for the backward
    for (int i = 0; i < C; ++i)
      for (int t = 0; t < C; ++t) gram[i * C + t] = S[i * CP + t];
    T* pk = a.pks + i_ck;
    rows_times<T, K>(kh, K, K, P, nullptr, pk, C);  // pk = K̂ P
    rows_times<T, CP>(pk, K, K, khT, base, U, C);  // B = B_base + pk K̂ᵀ (lower triangle)
    for (int i = 0; i < C; ++i)  // the lower triangle is the chunk matrix (as LAPACK reads it): mirror it
      for (int t = 0; t < i; ++t) U[t * CP + i] = U[i * CP + t];
    a.info[i_1] = cholesky_upper<T, NC>(U, C);
    for (int t = 0; t < C; ++t) a.pivots[i_c + t] = U[t * CP + t];
    T* fout = a.factors + i_cc;
    for (int i = 0; i < C; ++i)
      for (int t = 0; t < C; ++t) fout[i * C + t] = U[i * CP + t];
    // X = (g ∘ F)⁻¹ ((1 − G) ∘ K + c ∘ pk), F[t][j] = U[j][t]; X̃ = τ ∘ X with τ_t = g[C−1][t]
    // by columns: a finished row x_t is subtracted from every row below it (independent updates, not one chain)
    T* X = a.xs + i_ck;
    for (int t = 0; t < C; ++t) {
      const V<T> ct = splat(c[t]), rt = splat(reset[t]);
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v)
        store(X + t * K + v * L<T>, rt * load(k + t * K + v * L<T>) + ct * load(pk + t * K + v * L<T>));
    }
    for (int t = 0; t < C; ++t) {
      const V<T> inv = splat(T(1) / (g[t * C + t] * U[t * CP + t]));
      const V<T> tau = splat(g[(C - 1) * C + t]);
      V<T> x[nv];
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) {
        x[v] = load(X + t * K + v * L<T>) * inv;
        store(X + t * K + v * L<T>, x[v]);
        store(xt + t * K + v * L<T>, tau * x[v]);
      }
      for (int j = t + 1; j < C; ++j) {
        const V<T> l = splat(g[j * C + t] * U[t * CP + j]);
#pragma GCC unroll 16
        for (int v = 0; v < nv; ++v) store(X + j * K + v * L<T>, load(X + j * K + v * L<T>) - l * x[v]);
      }
    }
    // P' = (1 − G_C) I + G_C P − X̃ᵀ X̃
    square_plus_outer<T, K>(P, gc, T(-1), reset[C - 1], xt, xt, Pn, C);
    if (symmetric)  // the update is symmetric entry by entry; mirroring makes that exact whatever the compiler did
      for (int r = 0; r < K; ++r)
        for (int q = 0; q < r; ++q) Pn[q * K + r] = Pn[r * K + q];
  }
}


// Gradients of the outputs (each may be absent) and of the inputs.
template <typename T>
struct PathGrads {
  const T *x, *pivots, *starts;  // of xs, diag F, starts (nullptr: zero)
  T *k, *noise, *h;
};

// One thread's buffers for backward_head: K×K, C×K and C×CP matrices (rows padded to CP; W and tmp are C×max(CP, K)).
template <typename T, int K, int NC>
struct BackwardScratch {
  static constexpr int CP = NC * L<T>, WIDE = CP > K ? CP : K;
  alignas(64) T Pbt[K * K], SS[K * K], PT[K * K], g[CP * CP], c[CP], reset[CP];
  alignas(64) T kh[CP * K], xt[CP * K], gxt[CP * K], Rb[CP * K], XT[K * CP];
  alignas(64) T S[CP * CP], W[CP * WIDE], W2[CP * CP], tmp[CP * WIDE], Fp[CP * CP], gS[CP * CP], DG[CP * CP],
      BT[CP * CP], strict[CP * CP];
  explicit BackwardScratch(int C) {  // S zero (its padding is never written); the strictly lower mask of a C×C matrix
    for (int e = 0; e < CP * CP; ++e) S[e] = T(0);
    for (int i = 0; i < CP; ++i)
      for (int t = 0; t < CP; ++t) strict[i * CP + t] = i < C && t < i ? T(1) : T(0);
  }
};

template <typename T, int K, int NC>
void backward_head(const Path<T>& a, const PathGrads<T>& d, int64_t h, T* Pb, bool symmetric, BackwardScratch<T, K, NC>& m) {
  constexpr int nv = NV<T, K>, CP = NC * L<T>;
  const int C = a.C;
  T *Pbt = m.Pbt, *kh = m.kh, *S = m.S, *SS = m.SS, *PT = m.PT, *xt = m.xt, *gxt = m.gxt, *Rb = m.Rb,
    *XT = m.XT, *W = m.W, *W2 = m.W2, *tmp = m.tmp, *Fp = m.Fp, *gS = m.gS, *DG = m.DG, *BT = m.BT;
  const T* strict = m.strict;
  T *g = m.g, *c = m.c, *reset = m.reset;  // the chunk's retention terms (retention_terms)
  const int64_t CK = (int64_t)C * K, CC = (int64_t)C * C, KK = (int64_t)K * K;
  for (int64_t n = a.N - 1; n >= 0; --n) {
    const int64_t i_1 = n * a.BH + h, i_cc = i_1 * CC, i_c = a.token(n, h), i_ck = i_c * K;
    const T* P = a.starts + i_1 * KK;
    const T* U = a.factors + i_cc;  // Fᵀ, C×C
    const T* X = a.xs + i_ck;
    const T* pk = a.pks + i_ck;
    const T* k = a.k + i_ck;
    const T gc = retention_terms<T>(a.h + i_c, C, g, c, reset);
    const T* tau = g + (C - 1) * C;  // sqrt(G_C/G_t)
    T* dk = d.k + i_ck;
    T dc[CP], dreset[CP];
    if (n > 0) {  // the previous chunk's inputs, read next
      const int64_t p_1 = i_1 - a.BH, p_c = a.token(n - 1, h);
      for (const T* base : {a.k, (const T*)a.xs, (const T*)a.pks}) prefetch(base + p_c * K, CK);
      for (const T* base : {(const T*)a.factors, (const T*)a.grams}) prefetch(base + p_1 * CC, CC);
      for (const T* base : {a.h, a.noise}) prefetch(base + p_c, C);
      prefetch(a.starts + p_1 * KK, KK);
      if (d.x) prefetch(d.x + p_c * K, CK);
    }
    scaled_keys<T, K>(k, c, C, kh);
    for (int i = 0; i < C; ++i)  // S = K Kᵀ as the forward made it (padding: zero since the scratch was made)
      for (int t = 0; t < C; ++t) S[i * CP + t] = a.grams[i_cc + i * C + t];
    // 1. G_C and 1 − G_C (the latter is reset[C−1])
    T tr = 0;
    for (int q = 0; q < K; ++q) tr += Pb[q * K + q];
    const T dgc = vdot<T>(P, Pb, KK);
    // 2–4. X̃̄ = −X̃ (P̄' + P̄'ᵀ) (P̄'ᵀ is carried alongside P̄'); τ̄; X̄
    for (int64_t e = 0; e < KK; e += L<T>) store(SS + e, -(load(Pb + e) + load(Pbt + e)));
    for (int t = 0; t < C; ++t) {
      const V<T> tt = splat(tau[t]);
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) store(xt + t * K + v * L<T>, tt * load(X + t * K + v * L<T>));
    }
    rows_times<T, K>(xt, K, K, SS, nullptr, gxt, C);
    T dtau[CP] = {};
    for (int t = 0; t < C; ++t) {
      dtau[t] = vdot<T>(X + t * K, gxt + t * K, K);
      const V<T> tt = splat(tau[t]);
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) {
        V<T> y = tt * load(gxt + t * K + v * L<T>);
        if (d.x) y += load(d.x + i_ck + t * K + v * L<T>);
        store(gxt + t * K + v * L<T>, y);
      }
    }
    // 5. R̄ = (g ∘ F)⁻ᵀ X̄: back substitution, (g∘F)ᵀ[t][i] = g[i,t] U[t][i]
    // (by columns, as the forward's solve)
    for (int e = 0; e < C * K; e += L<T>) store(Rb + e, load(gxt + e));
    for (int t = C - 1; t >= 0; --t) {
      const V<T> inv = splat(T(1) / (g[t * C + t] * U[t * C + t]));
      V<T> r[nv];
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) store(Rb + t * K + v * L<T>, r[v] = load(Rb + t * K + v * L<T>) * inv);
      for (int i = 0; i < t; ++i) {
        const V<T> l = splat(g[t * C + i] * U[i * C + t]);
#pragma GCC unroll 16
        for (int v = 0; v < nv; ++v) store(Rb + i * K + v * L<T>, load(Rb + i * K + v * L<T>) - l * r[v]);
      }
    }
    // R = (1 − G) ∘ K + c ∘ pk: c̄ and (1 − G)̄ from R̄ (the rest of both below)
    for (int t = 0; t < C; ++t) {
      dc[t] = vdot<T>(pk + t * K, Rb + t * K, K);
      dreset[t] = vdot<T>(k + t * K, Rb + t * K, K);
    }
    dreset[C - 1] += tr;
    // 6–7. (g∘F)̄ = −tril(R̄ Xᵀ); ḡ = F ∘ (g∘F)̄ (+ τ̄ on the last row); F̄ = g ∘ (g∘F)̄ (+ pivots), into W
    for (int q = 0; q < K; ++q)
      for (int t = 0; t < CP; ++t) XT[q * CP + t] = t < C ? X[t * K + q] : T(0);
    rows_times<T, CP>(Rb, K, K, XT, nullptr, W, C);
    // padded rows (CP wide) of F (F_it = U_ti), of the strictly lower g, and of 1 − G; ḡ collects in DG
    T resetP[CP] = {};
    for (int t = 0; t < C; ++t) resetP[t] = reset[t];
    for (int i = 0; i < C; ++i)
      for (int t = 0; t < CP; ++t) {
        Fp[i * CP + t] = t <= i ? U[t * C + i] : T(0);
        gS[i * CP + t] = t < i ? g[i * C + t] : T(0);
      }
    for (int i = 0; i < C; ++i) {
      T* w = W + i * CP;
      const T e_ii = -w[i];
#pragma GCC unroll 8
      for (int q = 0; q < NC; ++q) {
        const V<T> e = -load(w + q * L<T>);
        V<T> dgv = load(Fp + i * CP + q * L<T>) * e;  // zero above the diagonal (F is lower)
        if (i == C - 1) dgv += load(dtau + q * L<T>);
        store(DG + i * CP + q * L<T>, dgv);
        store(w + q * L<T>, load(gS + i * CP + q * L<T>) * e);
      }
      w[i] = g[i * C + i] * e_ii + (d.pivots ? d.pivots[i_c + i] : T(0));
    }
    // 9. phi = tril(Fᵀ F̄), Fᵀ F̄ = U F̄ (U is zero below its diagonal); Φ = ½(phi + tril₋₁(phi)ᵀ) into W2
    rows_times<T, CP>(U, C, C, W, nullptr, tmp, C);
    for (int r = 0; r < C; ++r)
      for (int b = 0; b < CP; ++b)
        W2[r * CP + b] = b >= C ? T(0) : (b <= r ? T(0.5) * tmp[r * CP + b] : T(0.5) * tmp[b * CP + r]);
    // 10. B̄ = F⁻ᵀ Φ F⁻¹: M1 = F⁻ᵀ Φ = U⁻¹ Φ, then B̄ᵀ = U⁻¹ M1ᵀ; each a back substitution by columns (a finished
    // row is subtracted from every row above it: independent updates, not one chain per row)
    for (int pass = 0; pass < 2; ++pass) {
      for (int t = C - 1; t >= 0; --t) {
        const V<T> inv = splat(T(1) / U[t * C + t]);
        V<T> row[NC];
#pragma GCC unroll 8
        for (int q = 0; q < NC; ++q) store(W2 + t * CP + q * L<T>, row[q] = load(W2 + t * CP + q * L<T>) * inv);
        for (int i = 0; i < t; ++i) {
          const V<T> u = splat(U[i * C + t]);
#pragma GCC unroll 8
          for (int q = 0; q < NC; ++q) store(W2 + i * CP + q * L<T>, load(W2 + i * CP + q * L<T>) - u * row[q]);
        }
      }
      if (pass == 1)  // W2 is B̄ᵀ: keep it
        for (int e = 0; e < C * CP; e += L<T>) store(BT + e, load(W2 + e));
      for (int r = 0; r < C; ++r)  // transpose in place (C×C part)
        for (int b = 0; b < r; ++b) std::swap(W2[r * CP + b], W2[b * CP + r]);
    }
    // W2 is B̄. B_base = M ∘ S + diag(r): r̄ = diag B̄; S̄ = M ∘ B̄ (K̄ += (S̄ + S̄ᵀ) K); M̄ = S ∘ B̄ into g and 1 − G.
    // Below the diagonal M_it = M_ti = g_it (1 − G_t); on it M_tt = 1 − G_t.
    for (int t = 0; t < C; ++t) d.noise[i_c + t] = W2[t * CP + t];
    V<T> dres[NC];
#pragma GCC unroll 8
    for (int q = 0; q < NC; ++q) dres[q] = splat<T>(0);
    for (int i = 0; i < C; ++i) {
#pragma GCC unroll 8
      for (int q = 0; q < NC; ++q) {
        const int o = i * CP + q * L<T>;
        const V<T> bsum = load(W2 + o) + load(BT + o), sb = load(S + o) * bsum;  // B̄_it + B̄_ti; S ∘ it
        const V<T> gs = load(gS + o), rs = load(resetP + q * L<T>);
        store(DG + o, load(DG + o) + load(strict + o) * rs * sb);
        dres[q] += gs * sb;
        store(tmp + o, gs * rs * bsum);  // S̄_it + S̄_ti below the diagonal (mirrored below), zero elsewhere
      }
      const T b = W2[i * CP + i], s = S[i * CP + i];
      dreset[i] += s * b;
      tmp[i * CP + i] = 2 * reset[i] * b;
      DG[i * CP + i] += 2 * reset[i] * s * b;  // the diagonal of M is 2 g_tt (1 − G_t) − (1 − G_t) in the mask's terms
    }
    T dres_lanes[CP];
#pragma GCC unroll 8
    for (int q = 0; q < NC; ++q) store(dres_lanes + q * L<T>, dres[q]);
    for (int t = 0; t < C; ++t) dreset[t] += dres_lanes[t];
    for (int i = 0; i < C; ++i) {
      for (int t = 0; t < i; ++t) tmp[t * CP + i] = tmp[i * CP + t];
    }
    // 11. p̄k = c ∘ R̄ + B̄ K̂ (into xt)
    for (int t = 0; t < C; ++t) {
      const V<T> ct = splat(c[t]);
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v) store(W + t * K + v * L<T>, ct * load(Rb + t * K + v * L<T>));
    }
    rows_times<T, K>(W2, CP, C, kh, W, xt, C);
    // 12. K̂̄ = B̄ pk + p̄k Pᵀ (into gxt); then K̄ = c ∘ K̂̄ + (1 − G) ∘ R̄ + (S̄ + S̄ᵀ) K, c̄ += rowsum(K ∘ K̂̄)
    const T* Pt = P;  // Pᵀ: P itself when the first covariance is symmetric (the forward keeps it so, mirrored)
    if (!symmetric) {
      for (int r = 0; r < K; ++r)
        for (int b = 0; b < K; ++b) PT[r * K + b] = P[b * K + r];
      Pt = PT;
    }
    rows_times<T, K>(W2, CP, C, pk, nullptr, gxt, C);
    rows_times<T, K>(xt, K, K, Pt, gxt, gxt, C);
    for (int t = 0; t < C; ++t) {
      dc[t] += vdot<T>(k + t * K, gxt + t * K, K);
      const V<T> ct = splat(c[t]), rt = splat(reset[t]);
#pragma GCC unroll 16
      for (int v = 0; v < nv; ++v)
        store(W + t * K + v * L<T>, ct * load(gxt + t * K + v * L<T>) + rt * load(Rb + t * K + v * L<T>));
    }
    rows_times<T, K>(tmp, CP, C, k, W, dk, C);
    // 13. P̄ = G_C P̄' + K̂ᵀ p̄k (+ the gradient of P as an output), and its transpose
    retention_backward<T, CP>(g, c, gc, dc, dreset, dgc, DG, C, d.h + i_c);
    square_plus_outer<T, K>(Pb, gc, T(1), T(0), kh, xt, Pb, C);
    square_plus_outer<T, K>(Pbt, gc, T(1), T(0), xt, kh, Pbt, C);
    if (d.starts) {
      const T* gn = d.starts + i_1 * KK;
      for (int r = 0; r < K; ++r)
        for (int b = 0; b < K; ++b) {
          Pb[r * K + b] += gn[r * K + b];
          Pbt[r * K + b] += gn[b * K + r];
        }
    }
  }
}

template <typename T, int K, int NC>
void forward_all(const Path<T>& a) {
  constexpr int CP = NC * L<T>;
  at::parallel_for(0, a.BH, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> kh(CP * K), khT(K * CP), kT(K * CP), S(CP * CP), base(CP * CP), U(CP * CP), xt(CP * K), g(CP * CP),
        c(CP), reset(CP);
    for (int64_t h = begin; h < end; ++h)
      forward_head<T, K, NC>(a, h, kh.data(), khT.data(), kT.data(), S.data(), base.data(), U.data(), xt.data(), g.data(),
                             c.data(), reset.data());
  });
}

template <typename T, int K, int NC>
void backward_all(const Path<T>& a, const PathGrads<T>& d, T* Pb) {
  at::parallel_for(0, a.BH, 1, [&](int64_t begin, int64_t end) {
    auto scratch = std::make_unique<BackwardScratch<T, K, NC>>(a.C);  // ~1.1 MB at K = 128 in float64: the heap
    for (int64_t h = begin; h < end; ++h) {
      T* Pb_h = Pb + h * K * K;
      for (int r = 0; r < K; ++r)
        for (int b = 0; b < K; ++b) scratch->Pbt[r * K + b] = Pb_h[b * K + r];
      // The forward keeps every P exactly symmetric (mirrored) when the first P is.
      const bool symmetric = is_symmetric<T, K>(a.starts + h * K * K);
      backward_head<T, K, NC>(a, d, h, Pb_h, symmetric, *scratch);
    }
  });
}

// Calls f.template operator()<T, K, NC>() for the tensor's dtype, key dim and padded chunk width.
template <typename F>
void dispatch(const at::Tensor& k, int64_t C, F&& f) {
  const int64_t K = k.size(3);
  TORCH_CHECK(C >= 1 && C <= 64, "covariance path kernel: chunk length ", C, " outside 1..64");
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "covariance_path", [&] {
    using T = scalar_t;
    int nc = 1;
    while (nc * L<T> < C) nc *= 2;
    auto by_nc = [&]<int KK>() {
      switch (nc) {
        case 1: return f.template operator()<T, KK, 1>();
        case 2: return f.template operator()<T, KK, 2>();
        case 4: return f.template operator()<T, KK, 4>();
        case 8: return f.template operator()<T, KK, 8>();
        default: TORCH_CHECK(false, "chunk too long");
      }
    };
    switch (K) {
      case 16: by_nc.template operator()<16>(); break;
      case 32: by_nc.template operator()<32>(); break;
      case 64: by_nc.template operator()<64>(); break;
      case 128: by_nc.template operator()<128>(); break;
      default: TORCH_CHECK(false, "covariance path kernel: key dim ", K, " not in {16, 32, 64, 128}");
    }
  });
}

// Every input on the CPU, in k's dtype, with the shapes of the header (k: [N/M, BH, M·C, K]); returns M.
int64_t check_inputs(const at::Tensor& k, const at::Tensor& noise, const at::Tensor& h, const at::Tensor& cov,
                     int64_t chunk) {
  TORCH_CHECK(k.dim() == 4, "covariance path kernel: k must be [N, B·H, C, K], got ", k.sizes());
  const int64_t rows = k.size(0), BH = k.size(1), length = k.size(2), K = k.size(3);
  TORCH_CHECK(chunk >= 1 && length % chunk == 0, "covariance path kernel: chunk ", chunk, " does not divide ", length);
  const std::pair<const at::Tensor*, std::vector<int64_t>> expected[] = {
      {&noise, {rows, BH, length}}, {&h, {rows, BH, length}}, {&cov, {BH, K, K}}};
  const char* names[] = {"noise", "half_log_retention", "cov0"};
  for (int i = 0; i < 3; ++i) {
    const at::Tensor& t = *expected[i].first;
    TORCH_CHECK(t.sizes() == at::IntArrayRef(expected[i].second), "covariance path kernel: ", names[i], " must be ",
                at::IntArrayRef(expected[i].second), ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == k.scalar_type(), "covariance path kernel: ", names[i], " is ", t.scalar_type(),
                ", k is ", k.scalar_type());
    TORCH_CHECK(t.device().is_cpu(), "covariance path kernel: ", names[i], " is not on the CPU");
  }
  TORCH_CHECK(k.device().is_cpu(), "covariance path kernel: k is not on the CPU");
  return length / chunk;
}

// (xs, pivots diag F, factors Fᵀ, starts, final covariance, info, pks = K̂ P, grams S = K Kᵀ); the last two for the
// backward. xs, pivots and pks per token as k; factors, grams, starts and info per chunk ([N, BH, ·], N = M · rows).
std::vector<at::Tensor> path_forward(const at::Tensor& k_, const at::Tensor& noise_, const at::Tensor& h_,
                                     const at::Tensor& cov0, int64_t chunk) {
  const int64_t M = check_inputs(k_, noise_, h_, cov0, chunk);
  const auto k = k_.contiguous(), noise = noise_.contiguous(), h = h_.contiguous();
  const int64_t N = k.size(0) * M, BH = k.size(1), C = chunk, K = k.size(3);
  auto xs = at::empty_like(k), pks = at::empty_like(k), pivots = at::empty_like(noise),
       factors = at::empty({N, BH, C, C}, k.options()), grams = at::empty({N, BH, C, C}, k.options());
  auto starts = at::empty({N, BH, K, K}, k.options());
  starts[0].copy_(cov0);
  auto cov = at::empty({BH, K, K}, k.options());
  auto info = at::empty({N, BH}, k.options().dtype(at::kInt));
  dispatch(k, C, [&]<typename T, int KK, int NC>() {
    Path<T> a{N, BH, (int)C, (int)M, k.data_ptr<T>(), noise.data_ptr<T>(), h.data_ptr<T>(), xs.data_ptr<T>(),
              pivots.data_ptr<T>(), factors.data_ptr<T>(), starts.data_ptr<T>(), pks.data_ptr<T>(), grams.data_ptr<T>(),
              cov.data_ptr<T>(), info.data_ptr<int32_t>()};
    forward_all<T, KK, NC>(a);
  });
  return {xs, pivots, factors, starts, cov, info, pks, grams};
}

// The gradients of (k, noise, h, cov0).
std::vector<at::Tensor> path_backward(const at::Tensor& k_, const at::Tensor& noise_, const at::Tensor& h_,
                                      const at::Tensor& starts_, const at::Tensor& factors_, const at::Tensor& xs_,
                                      const at::Tensor& pks_, const at::Tensor& grams_, int64_t chunk,
                                      const std::optional<at::Tensor>& grad_x,
                                      const std::optional<at::Tensor>& grad_pivots,
                                      const std::optional<at::Tensor>& grad_starts,
                                      const std::optional<at::Tensor>& grad_cov) {
  TORCH_CHECK(starts_.dim() == 4, "covariance path kernel: starts must be [N, B·H, K, K]");
  const int64_t M = check_inputs(k_, noise_, h_, starts_[0], chunk);
  const int64_t N = k_.size(0) * M, BH = k_.size(1), C = chunk, K = k_.size(3);
  TORCH_CHECK(starts_.sizes() == at::IntArrayRef({N, BH, K, K}) && factors_.sizes() == at::IntArrayRef({N, BH, C, C}) &&
                  grams_.sizes() == factors_.sizes() && xs_.sizes() == k_.sizes() && pks_.sizes() == k_.sizes(),
              "covariance path kernel: the saved tensors do not match the inputs");
  const auto starts = starts_.contiguous(), factors = factors_.contiguous(), xs = xs_.contiguous(),
             pks = pks_.contiguous(), grams = grams_.contiguous();
  for (const auto* grad : {&grad_x, &grad_pivots, &grad_starts, &grad_cov})
    if (grad->has_value())
      TORCH_CHECK((*grad)->scalar_type() == k_.scalar_type() && (*grad)->device().is_cpu(),
                  "covariance path kernel: a gradient is not a CPU tensor of k's dtype");
  TORCH_CHECK(!grad_x || grad_x->sizes() == k_.sizes(), "covariance path kernel: grad_x has the wrong shape");
  TORCH_CHECK(!grad_pivots || grad_pivots->sizes() == noise_.sizes(),
              "covariance path kernel: grad_pivots has the wrong shape");
  TORCH_CHECK(!grad_starts || grad_starts->sizes() == starts_.sizes(), "covariance path kernel: grad_starts has the wrong shape");
  TORCH_CHECK(!grad_cov || grad_cov->sizes() == starts_[0].sizes(), "covariance path kernel: grad_cov has the wrong shape");
  const auto k = k_.contiguous(), noise = noise_.contiguous(), h = h_.contiguous();
  auto Pb = grad_cov.has_value() ? grad_cov->contiguous().clone() : at::zeros({BH, K, K}, k.options());
  auto dk = at::empty_like(k), dnoise = at::empty_like(noise), dh = at::empty_like(h);
  at::Tensor gx, gp, gst;
  if (grad_x) gx = grad_x->contiguous();
  if (grad_pivots) gp = grad_pivots->contiguous();
  if (grad_starts) gst = grad_starts->contiguous();
  dispatch(k, C, [&]<typename T, int KK, int NC>() {
    Path<T> a{N, BH, (int)C, (int)M, k.data_ptr<T>(), noise.data_ptr<T>(), h.data_ptr<T>(), xs.data_ptr<T>(), nullptr,
              factors.data_ptr<T>(), starts.data_ptr<T>(), pks.data_ptr<T>(), grams.data_ptr<T>(), nullptr, nullptr};
    PathGrads<T> d{grad_x ? gx.data_ptr<T>() : nullptr, grad_pivots ? gp.data_ptr<T>() : nullptr,
                   grad_starts ? gst.data_ptr<T>() : nullptr, dk.data_ptr<T>(), dnoise.data_ptr<T>(), dh.data_ptr<T>()};
    backward_all<T, KK, NC>(a, d, Pb.data_ptr<T>());
  });
  return {dk, dnoise, dh, Pb};
}

}  // namespace

TORCH_LIBRARY(probseq_native, m) {
  m.def("covariance_path_forward(Tensor k, Tensor noise, Tensor half_log_retention, Tensor cov0, int chunk) -> Tensor[]");
  m.def("covariance_path_backward(Tensor k, Tensor noise, Tensor half_log_retention, Tensor starts, Tensor factors, "
        "Tensor xs, Tensor pks, Tensor grams, int chunk, Tensor? grad_x, Tensor? grad_pivots, Tensor? grad_starts, "
        "Tensor? grad_cov) -> Tensor[]");
}
TORCH_LIBRARY_IMPL(probseq_native, CPU, m) {
  m.impl("covariance_path_forward", &path_forward);
  m.impl("covariance_path_backward", &path_backward);
}
