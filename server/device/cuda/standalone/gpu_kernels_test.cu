// Tests of the CUDA kernel library (GpuContext) against host references,
// with a minimal runner: the GPU machine this runs on has no GoogleTest.
// Exit status 0 when every test passed, 1 on a failure, 2 when no CUDA
// device is present (the reason is printed).
//
// Exact ops (copies, integer and 16-bit arithmetic on small integers,
// assign, gather, fills, uniform initializers) are compared bit for bit;
// float sums with duplicate indices, normal initializers and optimizer steps
// within stated tolerances.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "device/cuda/gpu_context.h"
#include "device/initializer_math.h"
#include "psd/float16.h"

namespace psd {
namespace gpu {
namespace {

// ---------------------------------------------------------------------------
// The runner.

struct TestCase {
  const char* name;
  void (*fn)();
};
std::vector<TestCase>& Registry() {
  static std::vector<TestCase> tests;
  return tests;
}
struct Register {
  Register(const char* name, void (*fn)()) { Registry().push_back({name, fn}); }
};
int g_failures = 0;  // in the current test

#define GPU_TEST(name)                          \
  void name();                                  \
  const Register register_##name(#name, &name); \
  void name()

#define EXPECT(cond, ...)                                             \
  do {                                                                \
    if (!(cond)) {                                                    \
      ++g_failures;                                                   \
      std::printf("  %s:%d: failed: %s ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                       \
      std::printf("\n");                                              \
    }                                                                 \
  } while (0)

#define EXPECT_OK(expr)                                                                  \
  do {                                                                                   \
    const GpuStatus _s = (expr);                                                         \
    if (!_s.ok()) {                                                                      \
      ++g_failures;                                                                      \
      std::printf("  %s:%d: %s: %s\n", __FILE__, __LINE__, #expr, _s.message().c_str()); \
      return;                                                                            \
    }                                                                                    \
  } while (0)

GpuContext* g_gpu = nullptr;

// ---------------------------------------------------------------------------
// Helpers.

// Device memory freed on destruction.
class DevBuf {
 public:
  explicit DevBuf(size_t bytes) : bytes_(bytes) {
    const GpuStatus s = g_gpu->Allocate(bytes, &ptr_);
    if (!s.ok()) {
      ++g_failures;
      std::printf("  allocate %zu: %s\n", bytes, s.message().c_str());
    }
  }
  ~DevBuf() { g_gpu->Free(ptr_, bytes_); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  size_t bytes_;
  void* ptr_ = nullptr;
};

template <typename T>
std::unique_ptr<DevBuf> Upload(const std::vector<T>& v) {
  auto buf = std::make_unique<DevBuf>(v.size() * sizeof(T));
  const GpuStatus s = g_gpu->CopyIn(buf->get(), v.data(), buf->bytes());
  if (!s.ok()) {
    ++g_failures;
    std::printf("  upload: %s\n", s.message().c_str());
  }
  return buf;
}

template <typename T>
std::vector<T> Download(const DevBuf& buf) {
  std::vector<T> v(buf.bytes() / sizeof(T));
  const GpuStatus s = g_gpu->CopyOut(v.data(), buf.get(), buf.bytes());
  if (!s.ok()) {
    ++g_failures;
    std::printf("  download: %s\n", s.message().c_str());
  }
  return v;
}

template <typename T>
bool SameBytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

uint64_t g_rng = 88172645463325252ull;
uint64_t Next() {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return g_rng;
}
double Uniform(double lo, double hi) {
  return lo + (hi - lo) * static_cast<double>(Next() >> 11) * 0x1p-53;
}

template <typename T>
T FromF(float f) {
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
    return T(f);
  } else {
    return static_cast<T>(f);
  }
}
template <typename T>
float ToF(T v) {
  return static_cast<float>(v);
}

template <typename T>
T HostCombine(UpdateKind op, T a, T b) {
  if (op == UpdateKind::kAssign) return b;
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
    const float x = static_cast<float>(a), y = static_cast<float>(b);
    return T(op == UpdateKind::kAdd ? x + y : x - y);
  } else if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(op == UpdateKind::kAdd
                                             ? static_cast<U>(a) + static_cast<U>(b)
                                             : static_cast<U>(a) - static_cast<U>(b)));
  } else {
    return op == UpdateKind::kAdd ? a + b : a - b;
  }
}

template <typename T>
ElemType TypeOf() {
  if constexpr (std::is_same_v<T, float>) return ElemType::kFloat;
  if constexpr (std::is_same_v<T, double>) return ElemType::kDouble;
  if constexpr (std::is_same_v<T, half>) return ElemType::kHalf;
  if constexpr (std::is_same_v<T, bfloat16>) return ElemType::kBFloat16;
  if constexpr (std::is_same_v<T, int8_t>) return ElemType::kInt8;
  if constexpr (std::is_same_v<T, int16_t>) return ElemType::kInt16;
  if constexpr (std::is_same_v<T, int32_t>) return ElemType::kInt32;
  if constexpr (std::is_same_v<T, int64_t>) return ElemType::kInt64;
  if constexpr (std::is_same_v<T, uint8_t>) return ElemType::kUint8;
  return ElemType::kBool;
}

template <typename T>
uint64_t BitsOf(T v) {
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

const UpdateKind kOps[] = {UpdateKind::kAssign, UpdateKind::kAdd, UpdateKind::kSub};

// ---------------------------------------------------------------------------
// Tests.

GPU_TEST(CopiesRoundTripThroughStagingChunks) {
  const size_t n = 3 * GpuContext::kChunkBytes + 12345;
  std::vector<unsigned char> src(n + 1);
  for (auto& b : src) b = static_cast<unsigned char>(Next());
  DevBuf a(n), b(n);
  EXPECT_OK(g_gpu->CopyIn(a.get(), src.data() + 1, n));  // unaligned host source
  EXPECT_OK(g_gpu->CopyOnDevice(b.get(), a.get(), n));
  std::vector<unsigned char> back(n + 3);
  EXPECT_OK(g_gpu->CopyOut(back.data() + 3, b.get(), n));
  EXPECT(std::memcmp(back.data() + 3, src.data() + 1, n) == 0, "bytes differ");
}

template <typename T>
std::vector<T> As(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = FromF<T>(v[i]);
  return out;
}

template <typename T>
void DenseCase(const std::vector<T>& x, const std::vector<T>& y) {
  for (UpdateKind op : kOps) {
    auto buf = Upload(x);
    EXPECT_OK(g_gpu->Dense(TypeOf<T>(), op, buf->get(), y.data(), static_cast<int64_t>(x.size())));
    std::vector<T> want(x.size());
    for (size_t i = 0; i < x.size(); ++i) want[i] = HostCombine(op, x[i], y[i]);
    EXPECT(SameBytes(Download<T>(*buf), want), "%s op %d", ElemName(TypeOf<T>()),
           static_cast<int>(op));
    auto buf2 = Upload(x);
    EXPECT_OK(g_gpu->DenseScalar(TypeOf<T>(), op, buf2->get(), BitsOf(y[0]),
                                 static_cast<int64_t>(x.size())));
    for (size_t i = 0; i < x.size(); ++i) want[i] = HostCombine(op, x[i], y[0]);
    EXPECT(SameBytes(Download<T>(*buf2), want), "%s scalar op %d", ElemName(TypeOf<T>()),
           static_cast<int>(op));
  }
}

GPU_TEST(DenseUpdatesMatchHostArithmetic) {
  const size_t n = GpuContext::kChunkBytes / 4 * 2 + 7;  // crosses chunks
  std::vector<float> a(n), b(n);
  for (size_t i = 0; i < n; ++i) {
    a[i] = static_cast<float>(Uniform(-100, 100));
    b[i] = static_cast<float>(Uniform(-100, 100));
  }
  DenseCase(As<float>(a), As<float>(b));
  DenseCase(As<double>(a), As<double>(b));
  // 16-bit floats: ties and overflow exercise round-to-nearest-even.
  DenseCase(As<half>({2048, 2048, 2048, 65504, 1, 0.25f}),
            As<half>({1, 3, -0.5f, 65504, 1.0f / 4096, 3}));
  DenseCase(As<bfloat16>({256, 256, 1, 3e38f}), As<bfloat16>({1, 3, 1.0f / 256, 3e38f}));
  DenseCase(As<half>(a), As<half>(b));
  DenseCase(As<bfloat16>(a), As<bfloat16>(b));
  // Integers wrap.
  DenseCase<int8_t>({127, -128, 5}, {1, 1, -7});
  DenseCase<uint8_t>({0, 255, 7}, {1, 1, 9});
  DenseCase<int16_t>({32767, -32768}, {1, 1});
  DenseCase<int32_t>({INT32_MAX, INT32_MIN}, {1, 1});
  std::vector<int64_t> big = {INT64_MAX, INT64_MIN};
  auto buf = Upload(big);
  const int64_t one[2] = {1, 1};
  EXPECT_OK(g_gpu->Dense(ElemType::kInt64, UpdateKind::kAdd, buf->get(), one, 2));
  const std::vector<int64_t> wrapped = Download<int64_t>(*buf);
  EXPECT(wrapped[0] == INT64_MIN && wrapped[1] == INT64_MIN + 1, "int64 wrap");
}

GPU_TEST(BoolAssignStoresZeroOrOne) {
  auto buf = Upload(std::vector<uint8_t>{0, 0, 0, 0});
  const unsigned char src[4] = {0, 2, 255, 1};
  EXPECT_OK(g_gpu->Dense(ElemType::kBool, UpdateKind::kAssign, buf->get(), src, 4));
  EXPECT(SameBytes(Download<uint8_t>(*buf), std::vector<uint8_t>{0, 1, 1, 1}), "bool bytes");
}

GPU_TEST(DenseFromDeviceBuffer) {
  auto dst = Upload(std::vector<int32_t>{1, 2, 3});
  auto src = Upload(std::vector<int32_t>{10, 20, 30});
  EXPECT_OK(g_gpu->DenseFromDevice(ElemType::kInt32, UpdateKind::kSub, dst->get(), src->get(), 3));
  EXPECT(SameBytes(Download<int32_t>(*dst), std::vector<int32_t>{-9, -18, -27}), "sub");
}

// Scatter of `count` rows with duplicates against the host's in-order loop.
template <typename T>
void ScatterCase(int64_t rows, int64_t cols, size_t count, float lo, float hi, bool exact) {
  std::vector<T> table(rows * cols);
  const double table_lo = std::is_unsigned_v<T> ? 0 : -50;
  for (auto& v : table) v = FromF<T>(std::round(static_cast<float>(Uniform(table_lo, 50))));
  std::vector<int64_t> indices(count);
  for (auto& i : indices) i = static_cast<int64_t>(Next() % (rows / 3 + 1));  // many duplicates
  std::vector<T> updates(count * cols);
  for (auto& v : updates) v = FromF<T>(std::round(static_cast<float>(Uniform(lo, hi))));
  for (UpdateKind op : kOps) {
    for (bool scalar : {false, true}) {
      auto buf = Upload(table);
      EXPECT_OK(g_gpu->Scatter(TypeOf<T>(), op, buf->get(), cols, indices.data(), count,
                               updates.data(), scalar, BitsOf(updates[0])));
      std::vector<T> want = table;
      for (size_t k = 0; k < count; ++k) {
        for (int64_t c = 0; c < cols; ++c) {
          T& out = want[indices[k] * cols + c];
          out = HostCombine(op, out, scalar ? updates[0] : updates[k * cols + c]);
        }
      }
      const std::vector<T> got = Download<T>(*buf);
      if (exact || op == UpdateKind::kAssign) {
        EXPECT(SameBytes(got, want), "%s op %d scalar %d", ElemName(TypeOf<T>()),
               static_cast<int>(op), scalar);
      } else {
        size_t far = 0;
        for (size_t i = 0; i < got.size(); ++i) {
          const double g = ToF(got[i]), w = ToF(want[i]);
          if (!(std::fabs(g - w) <= 1e-5 * std::max(1.0, std::fabs(w)))) ++far;
        }
        EXPECT(far == 0, "%s op %d: %zu elements off", ElemName(TypeOf<T>()), static_cast<int>(op),
               far);
      }
    }
  }
}

GPU_TEST(ScatterMatchesTheHostsInOrderLoop) {
  // Small integer values: every sum is exact, so atomics in any order give
  // the host's bits (8- and 16-bit types go through compare-and-swap).
  ScatterCase<int32_t>(10000, 7, 100000, -3, 3, true);
  ScatterCase<int64_t>(1000, 5, 20000, -3, 3, true);
  ScatterCase<int16_t>(1000, 3, 20000, -3, 3, true);
  ScatterCase<int8_t>(1000, 3, 20000, -3, 3, true);  // wraps, still exact
  ScatterCase<uint8_t>(1000, 1, 20000, 0, 3, true);
  ScatterCase<half>(1000, 3, 3000, -2, 2, true);
  ScatterCase<bfloat16>(1000, 3, 3000, -2, 2, true);
  ScatterCase<double>(1000, 4, 20000, -3, 3, true);
  // Fractions in float32: order matters in the last bits.
  ScatterCase<float>(1000, 16, 50000, -1.5f, 1.5f, true);
  std::vector<float> table(1000 * 16, 0.1f);
  std::vector<int64_t> indices(40000);
  for (auto& i : indices) i = static_cast<int64_t>(Next() % 100);
  std::vector<float> updates(indices.size() * 16);
  for (auto& v : updates) v = static_cast<float>(Uniform(-1, 1));
  auto buf = Upload(table);
  EXPECT_OK(g_gpu->Scatter(ElemType::kFloat, UpdateKind::kAdd, buf->get(), 16, indices.data(),
                           indices.size(), updates.data(), false, 0));
  std::vector<double> want(table.begin(), table.end());
  for (size_t k = 0; k < indices.size(); ++k) {
    for (int c = 0; c < 16; ++c) want[indices[k] * 16 + c] += updates[k * 16 + c];
  }
  const std::vector<float> got = Download<float>(*buf);
  size_t far = 0;
  for (size_t i = 0; i < got.size(); ++i) far += std::fabs(got[i] - want[i]) > 1e-3;
  EXPECT(far == 0, "float scatter_add off in %zu elements (tolerance 1e-3 absolute)", far);
}

template <typename T>
void GatherCase(int64_t rows, int64_t cols, size_t count) {
  std::vector<T> table(rows * cols);
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<T>(Next());
  std::vector<int64_t> indices(count);
  for (auto& i : indices) i = static_cast<int64_t>(Next() % rows);
  auto buf = Upload(table);
  std::vector<T> out(count * cols + 1);
  EXPECT_OK(g_gpu->Gather(buf->get(), cols * sizeof(T), indices.data(), count, out.data() + 1));
  bool same = true;
  for (size_t k = 0; k < count; ++k) {
    same =
        same && std::memcmp(&out[1 + k * cols], &table[indices[k] * cols], cols * sizeof(T)) == 0;
  }
  EXPECT(same, "gather of %zu-byte rows", static_cast<size_t>(cols * sizeof(T)));
}

GPU_TEST(GatherCopiesRowsOfEveryWidth) {
  GatherCase<float>(100000, 128, 20000);  // 512-byte rows, several chunks
  GatherCase<float>(1000, 3, 5000);       // 12 bytes: 4-byte words
  GatherCase<uint16_t>(1000, 33, 5000);   // 66 bytes: 2-byte words
  GatherCase<uint8_t>(1000, 5, 5000);     // 5 bytes
  GatherCase<uint64_t>(1000, 1, 5000);    // 8 bytes
}

GPU_TEST(FillWritesThePattern) {
  for (size_t es : {1, 2, 4, 8}) {
    DevBuf buf(1001 * es);
    const uint64_t pattern = 0x0123456789abcdefull;
    EXPECT_OK(g_gpu->Fill(es, pattern, buf.get(), 1001));
    const std::vector<unsigned char> got = Download<unsigned char>(buf);
    bool same = true;
    for (size_t i = 0; i < 1001; ++i) same = same && std::memcmp(&got[i * es], &pattern, es) == 0;
    EXPECT(same, "fill of %zu-byte elements", es);
  }
}

// Host values of a random fill over a slice, with the same init_math calls
// as the CPU initializers.
template <typename T>
std::vector<T> HostRandom(const RandomFill& f, const std::vector<int64_t>& full,
                          const std::vector<int64_t>& slice, const std::vector<int64_t>& offset) {
  const int rank = static_cast<int>(full.size());
  std::vector<int64_t> stride(rank, 1);
  for (int d = rank - 2; d >= 0; --d) stride[d] = stride[d + 1] * full[d + 1];
  int64_t n = 1;
  for (int64_t d : slice) n *= d;
  std::vector<T> out(n);
  const PhiloxKey key = init_math::KeyOf(f.seed);
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
  for (int64_t i = 0; i < n; ++i) {
    int64_t rem = i, g = 0;
    for (int d = rank - 1; d >= 0; --d) {
      g += (offset[d] + rem % slice[d]) * stride[d];
      rem /= slice[d];
    }
    if constexpr (std::is_integral_v<T>) {
      out[i] = static_cast<T>(
          init_math::UniformInteger(init_math::Draw(key, g, 0), f.int_lo, f.int_span));
    } else {
      const C a = static_cast<C>(f.a), b = static_cast<C>(f.b);
      C v;
      if (f.kind == RandomFill::Kind::kNormal) {
        v = a + b * init_math::Normal<C>(init_math::Draw(key, g, 0));
      } else if (f.kind == RandomFill::Kind::kTruncatedNormal) {
        v = init_math::TruncatedNormal<C>(key, g, a, b);
      } else {
        v = init_math::ScaleUniform(a, b, init_math::Unit<C>(init_math::Draw(key, g, 0)));
      }
      if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
        out[i] = T(static_cast<float>(v));
      } else {
        out[i] = static_cast<T>(v);
      }
    }
  }
  return out;
}

template <typename T>
void RandomCase(RandomFill::Kind kind) {
  const std::vector<int64_t> full = {7, 33, 5}, slice = {3, 20, 5}, offset = {2, 4, 0};
  SliceGeometry geo;
  geo.rank = 3;
  int64_t stride = 1;
  for (int d = 2; d >= 0; --d) {
    geo.slice_dims[d] = slice[d];
    geo.offset[d] = offset[d];
    geo.full_stride[d] = stride;
    stride *= full[d];
  }
  RandomFill f;
  f.kind = kind;
  f.seed = 0x1234567890abcdefull;
  f.a = kind == RandomFill::Kind::kUniformReal ? -3 : 1;
  f.b = kind == RandomFill::Kind::kUniformReal ? 5 : 2;
  f.int_lo = -1000;
  f.int_span = 2001;
  const int64_t n = 3 * 20 * 5;
  DevBuf buf(n * sizeof(T));
  EXPECT_OK(g_gpu->FillRandom(TypeOf<T>(), f, geo, buf.get(), n));
  const std::vector<T> got = Download<T>(buf);
  const std::vector<T> want = HostRandom<T>(f, full, slice, offset);
  if (kind == RandomFill::Kind::kUniformReal || kind == RandomFill::Kind::kUniformInt) {
    EXPECT(SameBytes(got, want), "%s uniform", ElemName(TypeOf<T>()));
    return;
  }
  // log/cos/sqrt may differ in the last bit between CUDA and the host.
  const double tolerance = sizeof(T) >= 4 ? 1e-5 : 1e-2;
  size_t far = 0, differ = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    differ += std::memcmp(&got[i], &want[i], sizeof(T)) != 0;
    const double g = ToF(got[i]), w = ToF(want[i]);
    far += !(std::fabs(g - w) <= tolerance * std::max(1.0, std::fabs(w)));
  }
  EXPECT(far == 0, "%s normal: %zu off (%zu differ in some bit)", ElemName(TypeOf<T>()), far,
         differ);
  if (differ != 0) {
    std::printf("  note: %s normal: %zu of %zu values differ from the host in the last bits\n",
                ElemName(TypeOf<T>()), differ, got.size());
  }
}

GPU_TEST(RandomInitializersMatchTheHost) {
  for (auto kind : {RandomFill::Kind::kUniformReal, RandomFill::Kind::kNormal,
                    RandomFill::Kind::kTruncatedNormal}) {
    RandomCase<float>(kind);
    RandomCase<double>(kind);
    RandomCase<half>(kind);
    RandomCase<bfloat16>(kind);
  }
  RandomCase<int32_t>(RandomFill::Kind::kUniformInt);
  RandomCase<int64_t>(RandomFill::Kind::kUniformInt);
}

// Reference optimizer step in double, from TensorFlow's update rules.
void ReferenceStep(Optimizer kind, const OptimizerCoefficients<double>& h, double g, double* var,
                   double* s) {
  switch (kind) {
    case Optimizer::kGradientDescent:
      *var -= h.lr * g;
      break;
    case Optimizer::kMomentum:
      s[0] = s[0] * h.momentum + g;
      *var -= h.use_nesterov ? g * h.lr + s[0] * h.momentum * h.lr : s[0] * h.lr;
      break;
    case Optimizer::kAdagrad:
      s[0] += g * g;
      *var -= g * h.lr / std::sqrt(s[0]);
      break;
    case Optimizer::kAdam:
      s[0] += (g - s[0]) * h.one_minus_beta1;
      s[1] += (g * g - s[1]) * h.one_minus_beta2;
      *var -= s[0] * h.adam_alpha / (std::sqrt(s[1]) + h.epsilon);
      break;
    case Optimizer::kRMSProp:
      s[0] += (g * g - s[0]) * h.one_minus_decay;
      s[1] = s[1] * h.momentum + g * h.lr / std::sqrt(s[0] + h.epsilon);
      *var -= s[1];
      break;
    case Optimizer::kCenteredRMSProp:
      s[1] += (g * g - s[1]) * h.one_minus_decay;
      s[0] += (g - s[0]) * h.one_minus_decay;
      s[2] = s[2] * h.momentum + g * h.lr / std::sqrt(s[1] - s[0] * s[0] + h.epsilon);
      *var -= s[2];
      break;
    case Optimizer::kFtrl: {
      const double na = s[0] + g * g;
      const double p = -h.neg_lr_power;
      s[1] += g + h.two_l2_shrinkage * *var - (std::pow(na, -p) - std::pow(s[0], -p)) / h.lr * *var;
      const double l = s[1];
      *var = std::fabs(l) > h.l1
                 ? ((l > 0 ? h.l1 : -h.l1) - l) / (std::pow(na, -p) / h.lr + h.two_l2)
                 : 0.0;
      s[0] = na;
      break;
    }
  }
}

template <typename C>
OptimizerCoefficients<C> Coefficients(double lr_power) {
  OptimizerCoefficients<C> h;
  h.lr = C(0.1);
  h.momentum = C(0.9);
  h.one_minus_beta1 = C(1) - C(0.9);
  h.one_minus_beta2 = C(1) - C(0.999);
  h.epsilon = C(1e-7);
  h.adam_alpha = C(0.1) * std::sqrt(C(1) - C(0.999)) / (C(1) - C(0.9));
  h.one_minus_decay = C(1) - C(0.9);
  h.neg_lr_power = -C(lr_power);
  h.lr_power_is_half = C(lr_power) == C(-0.5);
  h.l1 = C(0.01);
  h.two_l2 = C(2) * C(0.02);
  h.two_l2_shrinkage = C(2) * C(0.01);
  return h;
}

template <typename T>
void OptimizerCase(Optimizer kind, bool nesterov, double lr_power, bool sparse) {
  const int64_t rows = 64, cols = 33, n = rows * cols;
  OptimizerStep step;
  step.kind = kind;
  step.f = Coefficients<float>(lr_power);
  step.d = Coefficients<double>(lr_power);
  step.f.use_nesterov = step.d.use_nesterov = nesterov;
  const int num_slots = OptimizerSlots(kind);
  std::vector<std::vector<double>> state(1 + num_slots, std::vector<double>(n));
  for (auto& v : state[0]) v = static_cast<T>(Uniform(-1, 1));
  for (int k = 1; k <= num_slots; ++k) {
    for (auto& v : state[k]) v = static_cast<T>(k == 1 ? 0.1 : Uniform(0, 0.5));
  }
  if (kind == Optimizer::kCenteredRMSProp) {
    for (auto& v : state[2]) v = 4.0;  // ms stays above mg^2
  }
  std::vector<int64_t> indices;
  for (int k = 0; k < 40; ++k) indices.push_back(k * 7 % rows);  // duplicates
  const size_t grad_n = sparse ? indices.size() * cols : n;
  std::vector<T> grad(grad_n);
  for (auto& g : grad) g = static_cast<T>(Uniform(-1, 1));

  std::vector<std::unique_ptr<DevBuf>> bufs;
  for (const auto& s : state) bufs.push_back(Upload(std::vector<T>(s.begin(), s.end())));
  void* slots[kMaxOptimizerSlots] = {};
  for (int k = 0; k < num_slots; ++k) slots[k] = bufs[1 + k]->get();
  if (sparse) {
    EXPECT_OK(g_gpu->OptimizerSparse(TypeOf<T>(), step, bufs[0]->get(), slots, cols, indices.data(),
                                     indices.size(), grad.data()));
    std::vector<double> sums(n, 0.0);
    std::vector<bool> touched(rows, false);
    for (size_t k = 0; k < indices.size(); ++k) {
      touched[indices[k]] = true;
      for (int64_t c = 0; c < cols; ++c) sums[indices[k] * cols + c] += grad[k * cols + c];
    }
    for (int64_t i = 0; i < n; ++i) {
      if (!touched[i / cols]) continue;
      double s[3] = {};
      for (int k = 0; k < num_slots; ++k) s[k] = state[1 + k][i];
      ReferenceStep(kind, step.d, sums[i], &state[0][i], s);
      for (int k = 0; k < num_slots; ++k) state[1 + k][i] = s[k];
    }
  } else {
    EXPECT_OK(g_gpu->OptimizerDense(TypeOf<T>(), step, bufs[0]->get(), slots, grad.data(), n));
    for (int64_t i = 0; i < n; ++i) {
      double s[3] = {};
      for (int k = 0; k < num_slots; ++k) s[k] = state[1 + k][i];
      ReferenceStep(kind, step.d, grad[i], &state[0][i], s);
      for (int k = 0; k < num_slots; ++k) state[1 + k][i] = s[k];
    }
  }
  const double tolerance = std::is_same_v<T, double> ? 1e-9 : 1e-4;
  for (size_t b = 0; b < bufs.size(); ++b) {
    const std::vector<T> got = Download<T>(*bufs[b]);
    size_t far = 0;
    for (int64_t i = 0; i < n; ++i) {
      far +=
          !(std::fabs(got[i] - state[b][i]) <= tolerance * std::max(1.0, std::fabs(state[b][i])));
    }
    EXPECT(far == 0, "optimizer %d%s %s %s buffer %zu: %zu elements off", static_cast<int>(kind),
           nesterov ? " nesterov" : "", ElemName(TypeOf<T>()), sparse ? "sparse" : "dense", b, far);
  }
}

GPU_TEST(OptimizersMatchTheReference) {
  for (int k = 0; k < 7; ++k) {
    for (bool sparse : {false, true}) {
      OptimizerCase<float>(static_cast<Optimizer>(k), false, -0.5, sparse);
      OptimizerCase<double>(static_cast<Optimizer>(k), false, -0.5, sparse);
    }
  }
  OptimizerCase<float>(Optimizer::kMomentum, true, -0.5, false);
  OptimizerCase<float>(Optimizer::kFtrl, false, -0.3, false);
  OptimizerCase<double>(Optimizer::kFtrl, false, -0.3, true);
}

GPU_TEST(OutOfMemoryIsReportedAndLeavesTheDeviceUsable) {
  void* p = nullptr;
  GpuStatus s = g_gpu->Allocate(g_gpu->total_memory() * 2, &p);
  EXPECT(s.code() == GpuStatus::Code::kOutOfMemory, "code %d: %s", static_cast<int>(s.code()),
         s.message().c_str());
  EXPECT(p == nullptr, "pointer set on failure");
  DevBuf after(1 << 20);
  EXPECT(after.get() != nullptr, "allocation after an out-of-memory failure");
}

}  // namespace
}  // namespace gpu
}  // namespace psd

int main() {
  using psd::gpu::GpuContext;
  int count = 0;
  const psd::gpu::GpuStatus s = GpuContext::DeviceCount(&count);
  if (!s.ok() || count == 0) {
    std::printf("no CUDA device: %s\n",
                s.ok() ? "cudaGetDeviceCount returned 0" : s.message().c_str());
    return 2;
  }
  std::unique_ptr<GpuContext> gpu;
  const psd::gpu::GpuStatus open = GpuContext::Open(0, &gpu);
  if (!open.ok()) {
    std::printf("cannot open gpu:0: %s\n", open.message().c_str());
    return 1;
  }
  psd::gpu::g_gpu = gpu.get();
  std::printf("gpu:0 is %s (%zu MiB)\n", gpu->device_name().c_str(), gpu->total_memory() >> 20);
  int failed = 0;
  for (const auto& test : psd::gpu::Registry()) {
    psd::gpu::g_failures = 0;
    std::printf("[ RUN  ] %s\n", test.name);
    test.fn();
    std::printf("[ %s ] %s\n", psd::gpu::g_failures == 0 ? " OK " : "FAIL", test.name);
    failed += psd::gpu::g_failures != 0;
  }
  std::printf("%zu tests, %d failed\n", psd::gpu::Registry().size(), failed);
  return failed == 0 ? 0 : 1;
}
