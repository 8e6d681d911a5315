// Softmax attention for XLA:CPU, forward and backward, as two XLA FFI handlers.
//
// attend_jax/models/cpu_attention.py compiles this file once per machine (with the system's C++
// compiler, for its CPU) and calls it from the ViT's attention on a CPU. It works as PyTorch's
// flash attention for CPUs does: each (batch, head) pair is one task, the pairs shared out over
// XLA's intra-op threads; a task takes its queries BLOCK_Q at a time, so that a block's scores
// stay in the core's cache, and no (N, N) array ever goes to memory. The backward computes the
// probabilities again from each row's log-sum-exp, which the forward returns.
//
// Inputs are (B, N, H, D) float32 in XLA's row-major layout, read in place (no transposes);
// D is a multiple of 16 up to 128 (the Python side checks). The products are written with GCC's
// vector extensions, sixteen floats wide, for the compiler to map onto the CPU's registers.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
typedef int32_t i16 __attribute__((vector_size(64)));

constexpr int BLOCK_Q = 64;  // Queries per block: 64 x 1,040 scores (266 kB) stay in L2.

inline v16 load(const float* p) { return *reinterpret_cast<const v16u*>(p); }
inline void store(float* p, v16 x) { *reinterpret_cast<v16u*>(p) = x; }
inline v16 splat(float x) { return v16{} + x; }

// exp(x) for the shifted scores (x <= 0), Cephes' polynomial (about 1 ulp); x below -87,
// -inf included, gives 0.
inline v16 vexp(v16 x) {
  const i16 underflow = x < -87.0f;
  x = underflow ? splat(-87.0f) : x;
  const v16 t = x * 1.44269504088896341f;
  const v16 n = __builtin_convertvector(
      __builtin_convertvector(t + (t >= 0 ? 0.5f : -0.5f), i16), v16);
  v16 r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  v16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const i16 bits = (__builtin_convertvector(n, i16) + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return underflow ? v16{} : p * scale;
}

inline float hmax(v16 x) {
  float m = x[0];
  for (int i = 1; i < 16; ++i) m = std::max(m, x[i]);
  return m;
}

inline float hsum(v16 x) {
  float s = 0.f;
  for (int i = 0; i < 16; ++i) s += x[i];
  return s;
}

// c[R, 16 W] = a[R, d] . b[d, 16 W]: an outer-product micro-kernel.
template <int R, int W>
inline void micro_ab(const float* a, int lda, const float* b, int ldb, float* c, int ldc,
                     int d) {
  v16 acc[R][W] = {};
  for (int k = 0; k < d; ++k) {
    v16 bv[W];
    for (int w = 0; w < W; ++w) bv[w] = load(b + k * ldb + 16 * w);
    for (int r = 0; r < R; ++r) {
      const v16 av = splat(a[r * lda + k]);
      for (int w = 0; w < W; ++w) acc[r][w] += av * bv[w];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int w = 0; w < W; ++w) store(c + r * ldc + 16 * w, acc[r][w]);
}

// s[rows, np] = a[rows, D] . bt[D, np]; rows a multiple of 8, np of 16.
template <int DV>
void scores(const float* a, const float* bt, float* s, int rows, int np) {
  constexpr int D = 16 * DV;
  for (int r = 0; r < rows; r += 8) {
    int j = 0;
    for (; j + 32 <= np; j += 32) micro_ab<8, 2>(a + r * D, D, bt + j, np, s + r * np + j, np, D);
    if (j < np) micro_ab<8, 1>(a + r * D, D, bt + j, np, s + r * np + j, np, D);
  }
}

// o[rows, D] = p[rows, :n] . v[n, D] (v's rows ldv apart); rows a multiple of 4.
template <int DV>
void apply(const float* p, int ldp, const float* v, int ldv, float* o, int rows, int n) {
  constexpr int D = 16 * DV;
  constexpr int R = DV <= 4 ? 4 : 2;
  for (int r = 0; r < rows; r += R) {
    v16 acc[R][DV] = {};
    for (int j = 0; j < n; ++j) {
      v16 vv[DV];
      for (int w = 0; w < DV; ++w) vv[w] = load(v + j * ldv + 16 * w);
      for (int i = 0; i < R; ++i) {
        const v16 pv = splat(p[(r + i) * ldp + j]);
        for (int w = 0; w < DV; ++w) acc[i][w] += pv * vv[w];
      }
    }
    for (int i = 0; i < R; ++i)
      for (int w = 0; w < DV; ++w) store(o + (r + i) * D + 16 * w, acc[i][w]);
  }
}

// acc[np, D] += p[rows, np]^T . g[rows, D]; np a multiple of 4.
template <int DV>
void accumulate_t(const float* p, int np, const float* g, float* acc_out, int rows) {
  constexpr int D = 16 * DV;
  constexpr int J = DV <= 4 ? 4 : 2;
  for (int j = 0; j < np; j += J) {
    v16 acc[J][DV];
    for (int i = 0; i < J; ++i)
      for (int w = 0; w < DV; ++w) acc[i][w] = load(acc_out + (j + i) * D + 16 * w);
    for (int r = 0; r < rows; ++r) {
      v16 gv[DV];
      for (int w = 0; w < DV; ++w) gv[w] = load(g + r * D + 16 * w);
      for (int i = 0; i < J; ++i) {
        const v16 pv = splat(p[r * np + j + i]);
        for (int w = 0; w < DV; ++w) acc[i][w] += pv * gv[w];
      }
    }
    for (int i = 0; i < J; ++i)
      for (int w = 0; w < DV; ++w) store(acc_out + (j + i) * D + 16 * w, acc[i][w]);
  }
}

// xt[D, np] = x[n, D]^T (x's rows ld apart), the columns past n zero.
// Row by row: x's rows are apart in memory (a pair's head of a (B, N, H, D) array), the d
// rows of xt being written stay in L1.
void transpose(const float* x, int ld, int n, int d, int np, float* xt) {
  for (int j = 0; j < n; ++j)
    for (int k = 0; k < d; ++k) xt[k * np + j] = x[j * ld + k];
  for (int k = 0; k < d; ++k) std::fill(xt + k * np + n, xt + (k + 1) * np, 0.f);
}

// out[rows_padded, D] = scale * x's rows [q0, q0 + rows), zero below.
void gather_rows(const float* x, int ld, int q0, int rows, int rows_padded, int d, float scale,
                 float* out) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < d; ++c) out[r * d + c] = x[(q0 + r) * ld + c] * scale;
  std::fill(out + rows * d, out + rows_padded * d, 0.f);
}

// One thread's buffers, kept from task to task.
struct Scratch {
  std::vector<float> kt, vt, kc, vc, s, dp, qb, gb, ob, dk, dv;

  // Sizes every buffer for n tokens (np padded) of width d; a no-op once they fit.
  void fit(int n, int d, int np) {
    for (auto* t : {&kt, &vt, &dk, &dv}) t->resize(np * d);
    for (auto* t : {&kc, &vc}) t->resize(n * d);
    for (auto* t : {&s, &dp}) t->resize(BLOCK_Q * np);
    for (auto* t : {&qb, &gb, &ob}) t->resize(BLOCK_Q * d);
  }
};
thread_local Scratch scratch;

// A pair's operands: row r of q is q[r * ld, r * ld + D).
struct Pair {
  const float *q, *k, *v, *o, *g;
  float *out, *lse, *dq, *dk, *dv;
};

template <int DV>
void forward_pair(const Pair& x, int n, int ld, float scale) {
  constexpr int D = 16 * DV;
  const int np = (n + 15) / 16 * 16;
  Scratch& sc = scratch;
  sc.fit(n, D, np);
  transpose(x.k, ld, n, D, np, sc.kt.data());
  gather_rows(x.v, ld, 0, n, n, D, 1.f, sc.vc.data());  // Rows read once per query block.
  float* s = sc.s.data();
  for (int q0 = 0; q0 < n; q0 += BLOCK_Q) {
    const int rows = std::min(BLOCK_Q, n - q0), padded = (rows + 7) / 8 * 8;
    gather_rows(x.q, ld, q0, rows, padded, D, scale, sc.qb.data());
    scores<DV>(sc.qb.data(), sc.kt.data(), s, padded, np);
    float inverse[BLOCK_Q];
    for (int r = 0; r < padded; ++r) {
      float* row = s + r * np;
      std::fill(row + n, row + np, -INFINITY);
      v16 m = splat(-INFINITY);
      for (int j = 0; j < np; j += 16) m = m > load(row + j) ? m : load(row + j);
      const float top = hmax(m);
      v16 sum = {};
      for (int j = 0; j < np; j += 16) {
        const v16 e = vexp(load(row + j) - top);
        store(row + j, e);
        sum += e;
      }
      const float total = hsum(sum);
      inverse[r] = 1.f / total;
      if (r < rows) x.lse[q0 + r] = top + std::log(total);
    }
    apply<DV>(s, np, sc.vc.data(), D, sc.ob.data(), padded, n);
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < D; ++c) x.out[(q0 + r) * ld + c] = sc.ob[r * D + c] * inverse[r];
  }
}

template <int DV>
void backward_pair(const Pair& x, int n, int ld, float scale) {
  constexpr int D = 16 * DV;
  const int np = (n + 15) / 16 * 16;
  Scratch& sc = scratch;
  sc.fit(n, D, np);
  std::fill(sc.dk.begin(), sc.dk.end(), 0.f);
  std::fill(sc.dv.begin(), sc.dv.end(), 0.f);
  transpose(x.k, ld, n, D, np, sc.kt.data());
  transpose(x.v, ld, n, D, np, sc.vt.data());
  gather_rows(x.k, ld, 0, n, n, D, 1.f, sc.kc.data());
  float* p = sc.s.data();
  float* ds = sc.dp.data();
  for (int q0 = 0; q0 < n; q0 += BLOCK_Q) {
    const int rows = std::min(BLOCK_Q, n - q0), padded = (rows + 7) / 8 * 8;
    gather_rows(x.q, ld, q0, rows, padded, D, scale, sc.qb.data());
    gather_rows(x.g, ld, q0, rows, padded, D, 1.f, sc.gb.data());
    scores<DV>(sc.qb.data(), sc.kt.data(), p, padded, np);
    scores<DV>(sc.gb.data(), sc.vt.data(), ds, padded, np);  // dp = g . v^T
    for (int r = 0; r < padded; ++r) {
      float* prow = p + r * np;
      float* dsrow = ds + r * np;
      if (r >= rows) {
        std::fill(prow, prow + np, 0.f);
        std::fill(dsrow, dsrow + np, 0.f);
        continue;
      }
      const float* g = x.g + (q0 + r) * ld;
      const float* o = x.o + (q0 + r) * ld;
      float delta = 0.f;
      for (int c = 0; c < D; ++c) delta += g[c] * o[c];
      const float lse = x.lse[q0 + r];
      std::fill(prow + n, prow + np, -INFINITY);
      for (int j = 0; j < np; j += 16) {
        const v16 pj = vexp(load(prow + j) - lse);
        store(prow + j, pj);
        store(dsrow + j, pj * (load(dsrow + j) - delta));  // ds = p * (dp - delta)
      }
    }
    apply<DV>(ds, np, sc.kc.data(), D, sc.ob.data(), padded, n);  // dq = ds . k
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < D; ++c) x.dq[(q0 + r) * ld + c] = sc.ob[r * D + c] * scale;
    accumulate_t<DV>(p, np, sc.gb.data(), sc.dv.data(), padded);   // dv += p^T . g
    accumulate_t<DV>(ds, np, sc.qb.data(), sc.dk.data(), padded);  // dk += ds^T . (scale q)
  }
  for (int j = 0; j < n; ++j) {
    std::memcpy(x.dk + j * ld, sc.dk.data() + j * D, sizeof(float) * D);
    std::memcpy(x.dv + j * ld, sc.dv.data() + j * D, sizeof(float) * D);
  }
}

// Runs fn(i) for i in [0, tasks) on the calling thread and on XLA's intra-op pool. The caller
// waits only for tasks another thread has already taken, never for a queued one, so a pool
// busy with other work cannot stall it: the caller then runs every task itself.
template <typename F>
void parallel_for(ffi::ThreadPool& pool, int64_t tasks, F fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  auto work = [state, tasks, fn]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < tasks;) {
      fn(i);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), tasks) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work]() { work(); });
  work();
  while (state->done.load(std::memory_order_acquire) < tasks) std::this_thread::yield();
}

template <int DV, bool BACKWARD>
void run(ffi::ThreadPool& pool, Pair base, int64_t batch, int n, int64_t heads, float scale) {
  const int ld = static_cast<int>(heads) * 16 * DV;
  parallel_for(pool, batch * heads, [=](int64_t i) {
    const int64_t b = i / heads, h = i % heads;
    const int64_t offset = b * n * ld + h * 16 * DV, row = i * n;
    Pair x = base;
    for (const float** t : {&x.q, &x.k, &x.v, &x.o, &x.g})
      if (*t) *t += offset;
    for (float** t : {&x.out, &x.dq, &x.dk, &x.dv})
      if (*t) *t += offset;
    x.lse += row;
    if (BACKWARD)
      backward_pair<DV>(x, n, ld, scale);
    else
      forward_pair<DV>(x, n, ld, scale);
  });
}

template <bool BACKWARD, typename Dims>
ffi::Error dispatch(ffi::ThreadPool& pool, const Pair& x, Dims dims,
                    float scale) {
  if (dims.size() != 4) return ffi::Error::InvalidArgument("expected (B, N, H, D) operands");
  const int64_t batch = dims[0], n = dims[1], heads = dims[2], d = dims[3];
  switch (d) {
    case 16: run<1, BACKWARD>(pool, x, batch, n, heads, scale); break;
    case 32: run<2, BACKWARD>(pool, x, batch, n, heads, scale); break;
    case 48: run<3, BACKWARD>(pool, x, batch, n, heads, scale); break;
    case 64: run<4, BACKWARD>(pool, x, batch, n, heads, scale); break;
    case 80: run<5, BACKWARD>(pool, x, batch, n, heads, scale); break;
    case 96: run<6, BACKWARD>(pool, x, batch, n, heads, scale); break;
    case 112: run<7, BACKWARD>(pool, x, batch, n, heads, scale); break;
    case 128: run<8, BACKWARD>(pool, x, batch, n, heads, scale); break;
    default: return ffi::Error::InvalidArgument("head_dim must be a multiple of 16 up to 128");
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;
using OutF32 = ffi::ResultBuffer<ffi::F32>;

ffi::Error Forward(ffi::ThreadPool pool, F32 q, F32 k, F32 v, OutF32 out, OutF32 lse,
                   float scale) {
  Pair x{q.typed_data(), k.typed_data(), v.typed_data(), nullptr, nullptr,
         out->typed_data(), lse->typed_data(), nullptr, nullptr, nullptr};
  return dispatch<false>(pool, x, q.dimensions(), scale);
}

ffi::Error Backward(ffi::ThreadPool pool, F32 q, F32 k, F32 v, F32 out, F32 lse, F32 g,
                    OutF32 dq, OutF32 dk, OutF32 dv, float scale) {
  Pair x{q.typed_data(), k.typed_data(), v.typed_data(), out.typed_data(), g.typed_data(),
         nullptr, const_cast<float*>(lse.typed_data()), dq->typed_data(), dk->typed_data(),
         dv->typed_data()};
  return dispatch<true>(pool, x, q.dimensions(), scale);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AttendJaxAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // q (B, N, H, D)
                                  .Arg<F32>()  // k
                                  .Arg<F32>()  // v
                                  .Ret<F32>()  // out (B, N, H, D)
                                  .Ret<F32>()  // lse (B, H, N)
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AttendJaxAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // q
                                  .Arg<F32>()  // k
                                  .Arg<F32>()  // v
                                  .Arg<F32>()  // out
                                  .Arg<F32>()  // lse
                                  .Arg<F32>()  // g, the output's cotangent
                                  .Ret<F32>()  // dq
                                  .Ret<F32>()  // dk
                                  .Ret<F32>()  // dv
                                  .Attr<float>("scale"));
