// CPU epilogue kernels for the fused linear + log-softmax losses (see rlsd_kernels/ops/CONTRACT.md).
//
// Both kernels take a float32 contiguous logits chunk z [n, V] (bias included, temperature not yet
// applied) and work row by row, rows spread over the ATen intra-op thread pool. With s = z * inv_tau:
//
//   row_stats: lse = logsumexp_v s_v, lp = s_y - lse, ent = lse - sum_v p_v s_v   (p = exp(s - lse))
//   dlogits_:  dz_v = inv_tau * (g_lp * (1[v = y] - p_v) - g_ent * p_v * (s_v - lse + ent)), in place.
//
// The exponential is a branch-free polynomial (range reduction + degree-5 minimax polynomial, max
// relative error ~4e-7 on its domain) written so that `#pragma omp simd` vectorises it.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>

namespace {

// exp(x) for x <= 0 (callers pass s - max(s) or s - lse; rounding may give a tiny positive x, fine).
// Inputs below -87 are clamped (result ~1e-38, negligible against a softmax sum that is >= 1).
// x = n ln2 + r with n = round(x / ln2), |r| <= ln2 / 2; exp(r) by a degree-5 minimax polynomial
// (relative error 1e-7); 2^n via the exponent bits. Max relative error vs exp: ~4e-7 (single-step
// reduction with ln2 rounded to float adds <= 126 * 1.9e-9 for the tiniest outputs).
#pragma omp declare simd notinbranch
static inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  // n = round(x / ln 2) via the 1.5 * 2^23 trick (round-to-nearest, vectorises).
  const float shifter = 12582912.0f;
  float n = x * 1.44269504088896341f + shifter;
  n -= shifter;
  const float r = x - n * 0.693147182464599609375f;
  float p = 8.317875676e-03f;
  p = p * r + 4.189794511e-02f;
  p = p * r + 1.666718125e-01f;
  p = p * r + 4.999915063e-01f;
  p = p * r + 9.999998808e-01f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 0]
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

struct RowStats {
  float lse;  // logsumexp of s = z * inv_tau
  float ent;  // entropy (only if requested)
};

// Max of s over one block (inv_tau > 0, so max s = inv_tau * max z).
static inline float block_max(const float* z, int64_t len, float inv_tau) {
  float zmax = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : zmax)
  for (int64_t v = 0; v < len; ++v) zmax = z[v] > zmax ? z[v] : zmax;
  return zmax * inv_tau;
}

// Blocked online softmax over one row: per L1-sized block, max then exp-sums relative to the running
// max m (rescaled when m grows), so the row is streamed from memory once. With d_v = s_v - m:
// sum = sum_v e^d_v, wsum = sum_v e^d_v d_v; moving m -> m' = m + delta gives
// sum' = e^-delta sum and wsum' = e^-delta (wsum - delta sum).
constexpr int64_t kBlock = 2048;  // floats: 8 KiB

static inline RowStats row_stats_one(const float* z, int64_t V, float inv_tau, bool want_entropy) {
  float m = -std::numeric_limits<float>::infinity();
  float sum = 0.0f;
  float wsum = 0.0f;
  for (int64_t v0 = 0; v0 < V; v0 += kBlock) {
    const float* blk = z + v0;
    const int64_t len = std::min(kBlock, V - v0);
    const float bmax = block_max(blk, len, inv_tau);
    if (bmax > m) {
      if (sum > 0.0f) {
        const float delta = bmax - m;
        const float scale = std::exp(-delta);
        wsum = scale * (wsum - delta * sum);
        sum *= scale;
      }
      m = bmax;
    }
    float bsum = 0.0f;
    float bwsum = 0.0f;
    if (want_entropy) {
#pragma omp simd reduction(+ : bsum, bwsum)
      for (int64_t v = 0; v < len; ++v) {
        const float d = blk[v] * inv_tau - m;
        const float e = fast_exp(d);
        bsum += e;
        bwsum += e * d;
      }
    } else {
#pragma omp simd reduction(+ : bsum)
      for (int64_t v = 0; v < len; ++v) bsum += fast_exp(blk[v] * inv_tau - m);
    }
    sum += bsum;
    wsum += bwsum;
  }
  const float log_sum = std::log(sum);
  // ent = lse - sum p s = (m + log S) - (m + wsum / S) = log S - wsum / S.
  return {m + log_sum, want_entropy ? log_sum - wsum / sum : 0.0f};
}

// dz = p * (a + b * (d + ent)) with d = s - lse, p = exp(d), a = -inv_tau g_lp, b = -inv_tau g_ent,
// plus inv_tau g_lp at the target.
static inline void dlogits_one(float* row, int64_t V, int64_t y, float lse, float g_lp, float g_ent,
                               float ent, float inv_tau, bool with_ent) {
  const float a = -inv_tau * g_lp;
  if (with_ent) {
    const float b = -inv_tau * g_ent;
    const float c = a + b * ent;  // a + b * (d + ent) = c + b * d
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) {
      const float d = row[v] * inv_tau - lse;
      row[v] = fast_exp(d) * (c + b * d);
    }
  } else {
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) {
      row[v] = a * fast_exp(row[v] * inv_tau - lse);
    }
  }
  row[y] -= a;
}

// Argument guards return a status code (kOk when the arguments are fine): no C++ exception and no
// string ever crosses into Python, whatever compiler and C++ runtime built this module. The Python
// wrapper (rlsd_kernels/ops/cpp.py) checks every argument first and words the errors; these guards
// only keep a direct call with bad arguments from touching memory out of bounds. Codes are listed
// in the same order in cpp.py's STATUS.
enum Status : int {
  kOk = 0, kBadZ, kBadTargets, kTargetOutOfRange, kBadInvTau, kBadLp, kBadLse, kBadEnt, kBadGLp, kBadGEnt,
  kEntRequired,
};

bool float_row_vector(const at::Tensor& x, int64_t n) {
  return x.dim() == 1 && x.size(0) == n && x.scalar_type() == at::kFloat && x.device().is_cpu() &&
         x.is_contiguous();
}

int check_chunk(const at::Tensor& z, const at::Tensor& targets) {
  if (z.dim() != 2 || z.scalar_type() != at::kFloat || !z.device().is_cpu() || !z.is_contiguous() ||
      z.size(1) <= 0)
    return kBadZ;
  if (targets.dim() != 1 || targets.size(0) != z.size(0) || targets.scalar_type() != at::kLong ||
      !targets.device().is_cpu() || !targets.is_contiguous())
    return kBadTargets;
  const int64_t n = z.size(0), V = z.size(1);
  const int64_t* y = targets.data_ptr<int64_t>();
  for (int64_t t = 0; t < n; ++t) {
    if (y[t] < 0 || y[t] >= V) return kTargetOutOfRange;
  }
  return kOk;
}

int check_inv_tau(double inv_tau) { return inv_tau > 0.0 && std::isfinite(inv_tau) ? kOk : kBadInvTau; }

bool present(const std::optional<at::Tensor>& x) { return x.has_value() && x->defined() && x->numel() > 0; }

}  // namespace

// Writes lp [n], lse [n] and, if want_entropy, ent [n] (float32, allocated by the caller).
// Returns kOk, or the status of the first bad argument (nothing is written then).
int row_stats(const at::Tensor& z, const at::Tensor& targets, double inv_tau, bool want_entropy, at::Tensor& lp,
              at::Tensor& lse, at::Tensor& ent) {
  int err = check_chunk(z, targets);
  if (err == kOk) err = check_inv_tau(inv_tau);
  if (err != kOk) return err;
  const int64_t n = z.size(0), V = z.size(1);
  if (!float_row_vector(lp, n)) return kBadLp;
  if (!float_row_vector(lse, n)) return kBadLse;
  if (want_entropy && !float_row_vector(ent, n)) return kBadEnt;

  const float* zp = z.data_ptr<float>();
  const int64_t* y = targets.data_ptr<int64_t>();
  float* lpp = lp.data_ptr<float>();
  float* lsep = lse.data_ptr<float>();
  float* entp = want_entropy ? ent.data_ptr<float>() : nullptr;
  const float it = static_cast<float>(inv_tau);

  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* row = zp + t * V;
      const RowStats st = row_stats_one(row, V, it, want_entropy);
      lsep[t] = st.lse;
      lpp[t] = row[y[t]] * it - st.lse;
      if (want_entropy) entp[t] = st.ent;
    }
  });
  return kOk;
}

// Overwrites z with dz. g_ent / ent: None or empty tensors skip the entropy term.
// Returns kOk, or the status of the first bad argument (z is untouched then).
int dlogits_(at::Tensor& z, const at::Tensor& targets, const at::Tensor& lse, const at::Tensor& g_lp,
             const std::optional<at::Tensor>& g_ent, const std::optional<at::Tensor>& ent, double inv_tau) {
  int err = check_chunk(z, targets);
  if (err == kOk) err = check_inv_tau(inv_tau);
  if (err != kOk) return err;
  const int64_t n = z.size(0), V = z.size(1);
  if (!float_row_vector(lse, n)) return kBadLse;
  if (!float_row_vector(g_lp, n)) return kBadGLp;
  const bool with_ent = n > 0 && present(g_ent);
  if (with_ent && !float_row_vector(*g_ent, n)) return kBadGEnt;
  if (with_ent && !present(ent)) return kEntRequired;
  if (with_ent && !float_row_vector(*ent, n)) return kBadEnt;

  float* zp = z.data_ptr<float>();
  const int64_t* y = targets.data_ptr<int64_t>();
  const float* lsep = lse.data_ptr<float>();
  const float* glpp = g_lp.data_ptr<float>();
  const float* gentp = with_ent ? g_ent->data_ptr<float>() : nullptr;
  const float* entp = with_ent ? ent->data_ptr<float>() : nullptr;
  const float it = static_cast<float>(inv_tau);

  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      dlogits_one(zp + t * V, V, y[t], lsep[t], glpp[t], with_ent ? gentp[t] : 0.0f,
                  with_ent ? entp[t] : 0.0f, it, with_ent);
    }
  });
  return kOk;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rlsd_kernels CPU epilogues: row statistics and dlogits of log-softmax (CONTRACT.md)";
  m.def("row_stats", &row_stats, py::arg("z"), py::arg("targets"), py::arg("inv_tau"), py::arg("want_entropy"),
        py::arg("lp"), py::arg("lse"), py::arg("ent"),
        "Writes (lp, lse, ent) per row of s = z * inv_tau; returns 0 or a status code (cpp.py STATUS).");
  m.def("dlogits_", &dlogits_, py::arg("z"), py::arg("targets"), py::arg("lse"), py::arg("g_lp"),
        py::arg("g_ent"), py::arg("ent"), py::arg("inv_tau"),
        "Overwrites z with dz = inv_tau * (g_lp (1[v=y] - p) - g_ent p (s - lse + ent)); returns 0 or a "
        "status code (cpp.py STATUS).");
}
