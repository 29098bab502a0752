// The attention kernels (kernels/attention/*.cu) run on the CPU emulator (emu_cuda.h) against
// fp64 references written here from the definitions: forward (O, LSE), backward (dQ, dK, dV) and
// the latent decode attention with forced split counts. Built and run by tests/ops/emu/run.sh;
// not part of the CMake build (no GPU needed, no LibTorch). Exit status 0 when all cases pass.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "moetron/kernels/attention.h"

using namespace moetron::kernels;

namespace {

int failures = 0;
std::mt19937 rng(1234);

float round_to(AttnDType d, float x) {
  if (d == AttnDType::kBFloat16) return __bfloat162float(__float2bfloat16_rn(x));
  if (d == AttnDType::kFloat16) return __half2float(__float2half_rn(x));
  return x;
}

// A device-like buffer of `dtype` elements with an fp32 shadow of the stored (rounded) values.
struct Buf {
  AttnDType dtype;
  std::vector<float> f;
  std::vector<__nv_bfloat16> bf;
  std::vector<__half> h;
  Buf(AttnDType d, size_t n) : dtype(d), f(n, 0.0f) {
    if (d == AttnDType::kBFloat16) bf.resize(n);
    if (d == AttnDType::kFloat16) h.resize(n);
  }
  void set(size_t i, float x) {
    f[i] = round_to(dtype, x);
    if (dtype == AttnDType::kBFloat16) bf[i] = __float2bfloat16_rn(x);
    if (dtype == AttnDType::kFloat16) h[i] = __float2half_rn(x);
  }
  void randomize(float scale) {
    std::normal_distribution<float> n(0.0f, scale);
    for (size_t i = 0; i < f.size(); ++i) set(i, n(rng));
  }
  void* data() {
    if (dtype == AttnDType::kBFloat16) return bf.data();
    if (dtype == AttnDType::kFloat16) return h.data();
    return f.data();
  }
  float get(size_t i) const {  // read back what a kernel wrote
    if (dtype == AttnDType::kBFloat16) return __bfloat162float(bf[i]);
    if (dtype == AttnDType::kFloat16) return __half2float(h[i]);
    return f[i];
  }
};

void check_close(const std::string& what, double got, double want, double tol) {
  const double err = std::fabs(got - want);
  if (!(err <= tol * (1.0 + std::fabs(want)))) {
    if (failures < 30) {
      std::printf("FAIL %s: got %.8g want %.8g (err %.3g)\n", what.c_str(), got, want, err);
    }
    ++failures;
  }
}

// ---- training attention -------------------------------------------------------------------

struct AttnCase {
  int64_t B, H, T;
  int K, V;
  bool segments;
  bool strided_v;  // v stored [B, T, H, V] (the model's transposed view)
  AttnDType dtype;
  int tile_rows = 0, tile_cols = 0;  // forced tile shape (0: the launcher's choice)
};

void run_attention(const AttnCase& c) {
  const int64_t B = c.B, H = c.H, T = c.T;
  const int K = c.K, V = c.V;
  const std::string name = "attn B" + std::to_string(B) + " H" + std::to_string(H) + " T" +
                           std::to_string(T) + " K" + std::to_string(K) + " V" + std::to_string(V) +
                           (c.segments ? " seg" : "") + (c.strided_v ? " stridedV" : "") +
                           " dtype" + std::to_string(static_cast<int>(c.dtype)) + " tiles" +
                           std::to_string(c.tile_rows) + "x" + std::to_string(c.tile_cols);
  const double tol = c.dtype == AttnDType::kFloat32 ? 2e-5 : 3e-2;
  Buf q(c.dtype, B * H * T * K), k(c.dtype, B * H * T * K), v(c.dtype, B * H * T * V);
  Buf dout(c.dtype, B * H * T * V);
  q.randomize(1.0f);
  k.randomize(1.0f);
  v.randomize(1.0f);
  dout.randomize(1.0f);
  std::vector<int64_t> seg(B * T, 0);
  if (c.segments) {
    for (int64_t b = 0; b < B; ++b) {
      int64_t id = 0;
      for (int64_t t = 0; t < T; ++t) {
        if (t > 0 && rng() % 7 == 0) ++id;
        seg[b * T + t] = id;
      }
    }
  }
  // Strides.
  AttnStrides qs{H * T * K, T * K, K}, ks = qs;
  AttnStrides vs =
      c.strided_v ? AttnStrides{T * H * V, V, H * V} : AttnStrides{H * T * V, T * V, V};
  auto at = [](const AttnStrides& s, int64_t b, int64_t h, int64_t t) {
    return b * s.batch + h * s.head + t * s.token;
  };
  const float scale = 1.0f / std::sqrt(static_cast<float>(K));

  // Reference in fp64 from the stored values.
  std::vector<double> o_ref(B * H * T * V), lse_ref(B * H * T), dq_ref(B * H * T * K, 0.0),
      dk_ref(B * H * T * K, 0.0), dv_ref(B * H * T * V, 0.0);
  std::vector<double> p(T);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      // dO in the contiguous layout
      for (int64_t i = 0; i < T; ++i) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < T; ++j) {
          const bool ok = j <= i && (!c.segments || seg[b * T + j] == seg[b * T + i]);
          double s = -INFINITY;
          if (ok) {
            s = 0;
            for (int d = 0; d < K; ++d) {
              s += double(q.f[at(qs, b, h, i) + d]) * k.f[at(ks, b, h, j) + d];
            }
            s *= scale;
          }
          p[j] = s;
          mx = std::max(mx, s);
        }
        double sum = 0;
        for (int64_t j = 0; j < T; ++j) sum += p[j] == -INFINITY ? 0.0 : std::exp(p[j] - mx);
        const double lse = mx + std::log(sum);
        lse_ref[(b * H + h) * T + i] = lse;
        for (int64_t j = 0; j < T; ++j) p[j] = p[j] == -INFINITY ? 0.0 : std::exp(p[j] - lse);
        const int64_t row = (b * H + h) * T + i;
        double Di = 0;
        for (int e = 0; e < V; ++e) {
          double o = 0;
          for (int64_t j = 0; j < T; ++j) o += p[j] * v.f[at(vs, b, h, j) + e];
          o_ref[row * V + e] = o;
          Di += o * dout.f[row * V + e];
        }
        for (int64_t j = 0; j < T; ++j) {
          if (p[j] == 0.0) continue;
          double dp = 0;
          for (int e = 0; e < V; ++e) dp += dout.f[row * V + e] * v.f[at(vs, b, h, j) + e];
          const double ds = p[j] * (dp - Di);
          const int64_t jrow = (b * H + h) * T + j;
          for (int e = 0; e < V; ++e) dv_ref[jrow * V + e] += p[j] * dout.f[row * V + e];
          for (int d = 0; d < K; ++d) {
            dq_ref[row * K + d] += scale * ds * k.f[at(ks, b, h, j) + d];
            dk_ref[jrow * K + d] += scale * ds * q.f[at(qs, b, h, i) + d];
          }
        }
      }
    }
  }

  // Kernel forward.
  Buf out(c.dtype, B * H * T * V);
  std::vector<float> lse(B * H * T, 0.0f);
  MlaAttentionParams prm;
  prm.dtype = c.dtype;
  prm.batch = B;
  prm.heads = H;
  prm.tokens = T;
  prm.head_dim_qk = K;
  prm.head_dim_v = V;
  prm.scale = scale;
  prm.q = q.data();
  prm.q_strides = qs;
  prm.k = k.data();
  prm.k_strides = ks;
  prm.v = v.data();
  prm.v_strides = vs;
  if (c.segments) {
    prm.segment_ids = seg.data();
    prm.seg_batch = T;
    prm.seg_token = 1;
  }
  prm.out = out.data();
  prm.lse = lse.data();
  prm.tile_rows = c.tile_rows;
  prm.tile_cols = c.tile_cols;
  if (launch_mla_attention_forward(prm, nullptr) != 0) {
    std::printf("FAIL %s: forward launch error\n", name.c_str());
    ++failures;
    return;
  }
  // O is compared to the reference computed from the stored inputs; the kernel rounds P to
  // the input dtype before P·V, hence the bf16 tolerance.
  for (size_t i = 0; i < o_ref.size(); ++i) check_close(name + " O", out.get(i), o_ref[i], tol);
  for (size_t i = 0; i < lse_ref.size(); ++i) {
    check_close(name + " lse", lse[i], lse_ref[i], c.dtype == AttnDType::kFloat32 ? 1e-5 : 2e-2);
  }

  // Kernel backward (uses the kernel's own O and LSE, as training does).
  Buf dq(c.dtype, B * H * T * K), dk(c.dtype, B * H * T * K), dv(c.dtype, B * H * T * V);
  std::vector<float> ws(mla_attention_backward_workspace_bytes(B, H, T) / sizeof(float) + 1);
  MlaAttentionBackwardParams bp;
  bp.fwd = prm;
  bp.grad_out = dout.data();
  bp.grad_out_strides = AttnStrides{H * T * V, T * V, V};
  bp.grad_q = dq.data();
  bp.grad_k = dk.data();
  bp.grad_v = dv.data();
  bp.workspace = ws.data();
  bp.workspace_bytes = ws.size() * sizeof(float);
  if (launch_mla_attention_backward(bp, nullptr) != 0) {
    std::printf("FAIL %s: backward launch error\n", name.c_str());
    ++failures;
    return;
  }
  const double gtol = c.dtype == AttnDType::kFloat32 ? 5e-5 : 6e-2;
  for (size_t i = 0; i < dq_ref.size(); ++i) check_close(name + " dQ", dq.get(i), dq_ref[i], gtol);
  for (size_t i = 0; i < dk_ref.size(); ++i) check_close(name + " dK", dk.get(i), dk_ref[i], gtol);
  for (size_t i = 0; i < dv_ref.size(); ++i) check_close(name + " dV", dv.get(i), dv_ref[i], gtol);
}

// ---- decode ---------------------------------------------------------------------------------

struct DecodeCase {
  int64_t B, T, H, S;
  int C, P;
  int splits;
  AttnDType dtype;
  int tile_rows = 0, tile_cols = 0;
};

void run_decode(const DecodeCase& c) {
  const int64_t B = c.B, T = c.T, H = c.H, S = c.S;
  const int C = c.C, P = c.P;
  const std::string name = "decode B" + std::to_string(B) + " T" + std::to_string(T) + " H" +
                           std::to_string(H) + " S" + std::to_string(S) + " C" + std::to_string(C) +
                           " P" + std::to_string(P) + " splits" + std::to_string(c.splits) +
                           " dtype" + std::to_string(static_cast<int>(c.dtype));
  const double tol = c.dtype == AttnDType::kFloat32 ? 2e-5 : 3e-2;
  // The cache is wider than S (capacity), as in the engine: rows of stride cap.
  const int64_t cap = S + 3;
  Buf ql(c.dtype, B * T * H * C), qp(c.dtype, B * T * H * P), ckv(c.dtype, B * cap * C),
      kpe(c.dtype, B * cap * P);
  ql.randomize(0.5f);
  qp.randomize(0.5f);
  ckv.randomize(1.0f);
  kpe.randomize(1.0f);
  // Left padding of a random length per sequence, causal over the last T slots, self always.
  std::vector<unsigned char> allowed(B * T * S, 0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t pad = S > T ? static_cast<int64_t>(rng() % (S - T + 1)) : 0;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t slot = S - T + t;
      for (int64_t s = 0; s < S; ++s) {
        allowed[(b * T + t) * S + s] = (s >= pad && s <= slot) || s == slot;
      }
    }
  }
  const float scale = 0.125f;
  std::vector<double> z_ref(B * T * H * C, 0.0);
  std::vector<double> p(S);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < H; ++h) {
        const int64_t row = (b * T + t) * H + h;
        double mx = -INFINITY;
        for (int64_t s = 0; s < S; ++s) {
          double sc = -INFINITY;
          if (allowed[(b * T + t) * S + s]) {
            sc = 0;
            for (int e = 0; e < C; ++e)
              sc += double(ql.f[row * C + e]) * ckv.f[(b * cap + s) * C + e];
            for (int e = 0; e < P; ++e)
              sc += double(qp.f[row * P + e]) * kpe.f[(b * cap + s) * P + e];
            sc *= scale;
          }
          p[s] = sc;
          mx = std::max(mx, sc);
        }
        double sum = 0;
        for (int64_t s = 0; s < S; ++s) sum += p[s] == -INFINITY ? 0 : std::exp(p[s] - mx);
        for (int64_t s = 0; s < S; ++s) {
          if (p[s] == -INFINITY) continue;
          const double w = std::exp(p[s] - mx) / sum;
          for (int e = 0; e < C; ++e) z_ref[row * C + e] += w * ckv.f[(b * cap + s) * C + e];
        }
      }
    }
  }
  Buf z(c.dtype, B * T * H * C);
  LatentDecodeParams prm;
  prm.dtype = c.dtype;
  prm.batch = B;
  prm.q_len = T;
  prm.heads = H;
  prm.slots = S;
  prm.kv_rank = C;
  prm.rope_dim = P;
  prm.scale = scale;
  prm.q_lat = ql.data();
  prm.q_lat_b = T * H * C, prm.q_lat_t = H * C, prm.q_lat_h = C;
  prm.q_pe = qp.data();
  prm.q_pe_b = T * H * P, prm.q_pe_t = H * P, prm.q_pe_h = P;
  prm.c_kv = ckv.data();
  prm.c_kv_b = cap * C, prm.c_kv_s = C;
  prm.k_pe = kpe.data();
  prm.k_pe_b = cap * P, prm.k_pe_s = P;
  prm.allowed = reinterpret_cast<const bool*>(allowed.data());
  prm.allowed_b = T * S, prm.allowed_t = S, prm.allowed_s = 1;
  prm.out = z.data();
  prm.num_splits = c.splits;
  prm.tile_rows = c.tile_rows;
  prm.tile_cols = c.tile_cols;
  std::vector<float> ws(latent_decode_workspace_bytes(prm) / sizeof(float) + 1);
  prm.workspace = ws.data();
  prm.workspace_bytes = ws.size() * sizeof(float);
  if (launch_latent_decode_attention(prm, nullptr) != 0) {
    std::printf("FAIL %s: launch error\n", name.c_str());
    ++failures;
    return;
  }
  for (size_t i = 0; i < z_ref.size(); ++i) check_close(name + " z", z.get(i), z_ref[i], tol);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "quick";
  const auto f32 = AttnDType::kFloat32, bf16 = AttnDType::kBFloat16, f16 = AttnDType::kFloat16;
  std::vector<AttnCase> attn = {
      {1, 1, 1, 24, 16, false, false, f32},    {1, 2, 17, 24, 16, false, false, f32},
      {2, 1, 70, 12, 8, true, false, f32},     {1, 2, 33, 24, 16, true, true, bf16},
      {1, 1, 130, 64, 128, false, true, bf16}, {2, 1, 65, 16, 24, true, false, f16},
      {1, 2, 40, 12, 20, true, true, bf16},  // widths that rule out 16-byte loads
  };
  // Every tile shape, with queries / keys tiles of different sizes around the diagonal.
  for (const auto& [r, c] : std::vector<std::pair<int, int>>{
           {16, 16}, {16, 64}, {64, 16}, {32, 64}, {64, 32}, {64, 64}}) {
    attn.push_back({1, 1, 100, 24, 16, true, false, f32, r, c});
    attn.push_back({1, 1, 90, 16, 24, false, true, bf16, r, c});
  }
  if (!quick) {
    attn.push_back({1, 1, 100, 192, 128, true, true, bf16});
    attn.push_back({1, 1, 40, 256, 256, false, false, f32});
    attn.push_back({1, 1, 40, 256, 256, true, false, bf16});
  }
  for (const auto& c : attn) {
    const int before = failures;
    run_attention(c);
    std::printf("%s attn B%lld H%lld T%lld K%d V%d seg%d dtype%d tiles %dx%d\n",
                failures == before ? "ok  " : "FAIL", (long long)c.B, (long long)c.H,
                (long long)c.T, c.K, c.V, c.segments, static_cast<int>(c.dtype), c.tile_rows,
                c.tile_cols);
  }
  std::vector<DecodeCase> dec = {
      {2, 1, 4, 37, 16, 4, 0, f32},     {2, 1, 4, 37, 16, 4, 3, f32},
      {3, 1, 16, 100, 32, 16, 1, bf16}, {3, 1, 16, 100, 32, 16, 4, bf16},
      {2, 3, 5, 20, 24, 8, 2, f16},     {1, 1, 3, 0, 16, 4, 0, f32},
      {2, 1, 6, 50, 20, 6, 3, bf16},  // widths that rule out 16-byte loads
  };
  for (const auto& [r, c] : std::vector<std::pair<int, int>>{{16, 16}, {64, 64}, {32, 16}}) {
    dec.push_back({2, 2, 20, 90, 24, 8, 2, f32, r, c});
    dec.push_back({2, 1, 20, 90, 16, 4, 1, bf16, r, c});
  }
  if (!quick) {
    dec.push_back({2, 1, 40, 150, 512, 64, 0, bf16});
    dec.push_back({1, 2, 8, 70, 512, 128, 2, f32});
  }
  for (const auto& c : dec) {
    const int before = failures;
    run_decode(c);
    std::printf("%s decode B%lld T%lld H%lld S%lld C%d P%d splits%d dtype%d tiles %dx%d\n",
                failures == before ? "ok  " : "FAIL", (long long)c.B, (long long)c.T,
                (long long)c.H, (long long)c.S, c.C, c.P, c.splits, static_cast<int>(c.dtype),
                c.tile_rows, c.tile_cols);
  }
  std::printf("%s: %d failures, %zu launches\n", failures ? "FAILED" : "PASSED", failures,
              emu::launches());
  return failures ? 1 : 0;
}
