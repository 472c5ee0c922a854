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
#include <sstream>
#include <string>
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

// Argument checks return a message ("" when the arguments are fine) instead of throwing: no C++
// exception ever crosses into Python, whatever compiler and C++ runtime built this module.
template <typename... Parts>
std::string message(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

std::string check_chunk(const at::Tensor& z, const at::Tensor& targets) {
  if (z.dim() != 2) return message("z must be 2-D [n, V], got ", z.dim(), " dims");
  if (z.scalar_type() != at::kFloat) return message("z must be float32, got ", z.scalar_type());
  if (!z.device().is_cpu()) return "z must be a CPU tensor";
  if (!z.is_contiguous()) return "z must be contiguous";
  if (z.size(1) <= 0) return "z must have V > 0 columns";
  if (targets.dim() != 1 || targets.size(0) != z.size(0))
    return message("targets must have shape [", z.size(0), "], got ", targets.sizes());
  if (targets.scalar_type() != at::kLong) return message("targets must be int64, got ", targets.scalar_type());
  if (!targets.device().is_cpu() || !targets.is_contiguous()) return "targets must be a contiguous CPU tensor";
  const int64_t n = z.size(0), V = z.size(1);
  const int64_t* y = targets.data_ptr<int64_t>();
  for (int64_t t = 0; t < n; ++t) {
    if (y[t] < 0 || y[t] >= V) return message("targets[", t, "] = ", y[t], " is out of range [0, ", V, ")");
  }
  return "";
}

std::string check_row_vector(const at::Tensor& x, const char* name, int64_t n) {
  if (x.dim() != 1 || x.size(0) != n) return message(name, " must have shape [", n, "], got ", x.sizes());
  if (x.scalar_type() != at::kFloat) return message(name, " must be float32, got ", x.scalar_type());
  if (!x.device().is_cpu() || !x.is_contiguous()) return message(name, " must be a contiguous CPU tensor");
  return "";
}

std::string check_inv_tau(double inv_tau) {
  if (inv_tau > 0.0 && std::isfinite(inv_tau)) return "";
  return message("inv_tau must be finite and > 0, got ", inv_tau);
}

bool present(const std::optional<at::Tensor>& x) { return x.has_value() && x->defined() && x->numel() > 0; }

}  // namespace

// Writes lp [n], lse [n] and, if want_entropy, ent [n] (float32, allocated by the caller).
// Returns "" or what is wrong with the arguments (nothing is written then).
std::string row_stats(const at::Tensor& z, const at::Tensor& targets, double inv_tau, bool want_entropy,
                      at::Tensor& lp, at::Tensor& lse, at::Tensor& ent) {
  std::string err = check_chunk(z, targets);
  if (err.empty()) err = check_inv_tau(inv_tau);
  const int64_t n = err.empty() ? z.size(0) : 0, V = err.empty() ? z.size(1) : 0;
  if (err.empty()) err = check_row_vector(lp, "lp", n);
  if (err.empty()) err = check_row_vector(lse, "lse", n);
  if (err.empty() && want_entropy) err = check_row_vector(ent, "ent", n);
  if (!err.empty()) return err;

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
  return "";
}

// Overwrites z with dz. g_ent / ent: None or empty tensors skip the entropy term.
// Returns "" or what is wrong with the arguments (z is untouched then).
std::string dlogits_(at::Tensor& z, const at::Tensor& targets, const at::Tensor& lse, const at::Tensor& g_lp,
                     const std::optional<at::Tensor>& g_ent, const std::optional<at::Tensor>& ent, double inv_tau) {
  std::string err = check_chunk(z, targets);
  if (err.empty()) err = check_inv_tau(inv_tau);
  const int64_t n = err.empty() ? z.size(0) : 0, V = err.empty() ? z.size(1) : 0;
  if (err.empty()) err = check_row_vector(lse, "lse", n);
  if (err.empty()) err = check_row_vector(g_lp, "g_lp", n);
  const bool with_ent = n > 0 && present(g_ent);
  if (err.empty() && with_ent) {
    err = check_row_vector(*g_ent, "g_ent", n);
    if (err.empty()) err = present(ent) ? check_row_vector(*ent, "ent", n) : "ent is required when g_ent is given";
  }
  if (!err.empty()) return err;

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
  return "";
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rlsd_kernels CPU epilogues: row statistics and dlogits of log-softmax (CONTRACT.md)";
  m.def("row_stats", &row_stats, py::arg("z"), py::arg("targets"), py::arg("inv_tau"), py::arg("want_entropy"),
        py::arg("lp"), py::arg("lse"), py::arg("ent"),
        "Writes (lp, lse, ent) per row of s = z * inv_tau; returns '' or the argument error.");
  m.def("dlogits_", &dlogits_, py::arg("z"), py::arg("targets"), py::arg("lse"), py::arg("g_lp"),
        py::arg("g_ent"), py::arg("ent"), py::arg("inv_tau"),
        "Overwrites z with dz = inv_tau * (g_lp (1[v=y] - p) - g_ent p (s - lse + ent)); returns '' or the "
        "argument error.");
}
