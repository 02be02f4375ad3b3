#include "psd/tensor.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "psd/huge_pages.h"
#include "psd/status.h"
#include "psd/uninitialized.h"

namespace psd {

namespace {
// Keeps every element count representable with room to spare; byte sizes
// (up to 8 bytes an element) are checked for overflow where they are
// computed (the store's ByteSize, the checkpoint reader).
constexpr int64_t kMaxElements = int64_t{1} << 62;
}  // namespace

absl::StatusOr<TensorShape> TensorShape::Make(absl::Span<const int64_t> dims,
                                              absl::string_view what) {
  // The product of the non-zero dimensions is bounded, not only the element
  // count: a zero dimension makes the count 0, but row_elements() and every
  // partial product (e.g. of [5, 2^40, 2^40, 0]) must still fit in int64.
  int64_t product = 1;
  bool overflow = false;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": dimension ", i, " is ", dims[i],
                                                     ", must be >= 0"));
    }
    if (dims[i] == 0 || overflow) continue;
    if (product > kMaxElements / dims[i]) {
      overflow = true;
    } else {
      product *= dims[i];
    }
  }
  TensorShape shape(std::vector<int64_t>(dims.begin(), dims.end()));
  if (overflow) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": shape ", shape.ToString(), " has too many elements"));
  }
  return shape;
}

int64_t TensorShape::num_elements() const {
  int64_t n = 1;
  for (int64_t d : dims_) n *= d;
  return n;
}

int64_t TensorShape::row_elements() const {
  int64_t n = 1;
  for (size_t i = 1; i < dims_.size(); ++i) n *= dims_[i];
  return n;
}

std::string TensorShape::ToString() const { return absl::StrCat("[", absl::StrJoin(dims_, ","), "]"); }

Tensor::Tensor(DataType dtype, TensorShape shape) : dtype_(dtype), shape_(std::move(shape)) {
  if (dtype_ == DT_STRING) {
    strings_.resize(shape_.num_elements());
  } else {
    const size_t n = shape_.num_elements() * DataTypeSize(dtype_);
    // Reserved (untouched) first, so a big tensor's pages can be huge ones.
    bytes_.reserve(n);
    AdviseHugePages(bytes_.data(), n);
    bytes_.assign(n, '\0');
  }
}

Tensor Tensor::ForOverwrite(DataType dtype, TensorShape shape) {
  if (dtype == DT_STRING) return Tensor(dtype, std::move(shape));
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  const size_t n = t.shape_.num_elements() * DataTypeSize(dtype);
  t.bytes_.reserve(n);
  AdviseHugePages(t.bytes_.data(), n);
  // Fresh pages are zeroed by the kernel when first touched either way;
  // touching them before the copy is cheaper than during it, and cheaper
  // still without a user-space fill (huge_pages.h). Where the kernel cannot
  // prefault, a big buffer is zero-filled, as a new tensor is.
  ResizeUninitialized(&t.bytes_, n);  // the caller writes every byte
  if (!PrefaultForWrite(t.bytes_.data(), n) && n >= kHugePageAdviceBytes) {
    std::memset(t.bytes_.data(), 0, n);
  }
  return t;
}

absl::StatusOr<Tensor> Tensor::FromStrings(TensorShape shape, std::vector<std::string> values) {
  if (static_cast<int64_t>(values.size()) != shape.num_elements()) {
    return absl::InvalidArgumentError(absl::StrCat("string tensor of shape ", shape.ToString(),
                                                   " needs ", shape.num_elements(),
                                                   " values, got ", values.size()));
  }
  Tensor t;
  t.dtype_ = DT_STRING;
  t.shape_ = std::move(shape);
  t.strings_ = std::move(values);
  return t;
}

Tensor Tensor::StringScalar(std::string value) {
  Tensor t(DT_STRING, TensorShape{});
  t.strings_[0] = std::move(value);
  return t;
}

namespace {
// OK when `size` bytes are the elements of a fixed-size `dtype` and `shape`.
absl::Status CheckElementBytes(DataType dtype, const TensorShape& shape, size_t size) {
  const size_t element_size = DataTypeSize(dtype);
  if (dtype == DT_STRING || element_size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor bytes need a fixed-size dtype, got ", DataTypeName(dtype)));
  }
  const size_t want = static_cast<size_t>(shape.num_elements()) * element_size;
  if (size != want) {
    return absl::InvalidArgumentError(absl::StrCat(DataTypeName(dtype), shape.ToString(), " needs ",
                                                   want, " bytes, got ", size));
  }
  return absl::OkStatus();
}
}  // namespace

absl::StatusOr<Tensor> Tensor::FromBytes(DataType dtype, TensorShape shape, std::string bytes) {
  PSD_RETURN_IF_ERROR(CheckElementBytes(dtype, shape, bytes.size()));
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.bytes_ = std::move(bytes);
  return t;
}

absl::StatusOr<Tensor> Tensor::Borrowing(DataType dtype, TensorShape shape,
                                         absl::string_view bytes) {
  PSD_RETURN_IF_ERROR(CheckElementBytes(dtype, shape, bytes.size()));
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  if (!bytes.empty()) {
    t.borrowed_ = bytes.data();
    t.borrowed_size_ = bytes.size();
  }
  return t;
}

Tensor::Tensor(const Tensor& other)
    : dtype_(other.dtype_),
      shape_(other.shape_),
      bytes_(other.bytes()),
      strings_(other.strings_) {}

Tensor& Tensor::operator=(const Tensor& other) {
  if (this != &other) {
    dtype_ = other.dtype_;
    shape_ = other.shape_;
    bytes_.assign(other.bytes().data(), other.bytes().size());
    strings_ = other.strings_;
    borrowed_ = nullptr;
    borrowed_size_ = 0;
  }
  return *this;
}

Tensor::Tensor(Tensor&& other) noexcept
    : dtype_(other.dtype_),
      shape_(std::move(other.shape_)),
      bytes_(std::move(other.bytes_)),
      strings_(std::move(other.strings_)),
      borrowed_(std::exchange(other.borrowed_, nullptr)),
      borrowed_size_(std::exchange(other.borrowed_size_, 0)) {}

Tensor& Tensor::operator=(Tensor&& other) noexcept {
  if (this != &other) {
    dtype_ = other.dtype_;
    shape_ = std::move(other.shape_);
    bytes_ = std::move(other.bytes_);
    strings_ = std::move(other.strings_);
    borrowed_ = std::exchange(other.borrowed_, nullptr);
    borrowed_size_ = std::exchange(other.borrowed_size_, 0);
  }
  return *this;
}

void Tensor::OwnBorrowed() {
  bytes_.assign(borrowed_, borrowed_size_);
  borrowed_ = nullptr;
  borrowed_size_ = 0;
}

void Tensor::ResetForOverwrite(DataType dtype, TensorShape shape) {
  if (dtype != DT_STRING && dtype_ == dtype && borrowed_ == nullptr &&
      bytes_.size() == static_cast<size_t>(shape.num_elements()) * DataTypeSize(dtype)) {
    shape_ = std::move(shape);
    return;
  }
  *this = Tensor(dtype, std::move(shape));
}

absl::Status Tensor::Reshape(TensorShape shape) {
  if (shape.num_elements() != shape_.num_elements()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot reshape ", shape_.ToString(), " to ",
                                                   shape.ToString()));
  }
  shape_ = std::move(shape);
  return absl::OkStatus();
}

namespace {
// One element from its bytes. A bool is read as its byte: the bytes come
// from outside (requests, checkpoint files) and a byte other than 0 or 1 is
// not a valid bool object (loading it as one is undefined behavior).
template <typename T>
std::string ElementString(const char* p) {
  if constexpr (std::is_same_v<T, bool>) {
    return *p != 0 ? "true" : "false";
  } else {
    T v;
    std::memcpy(&v, p, sizeof(T));
    if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>) {
      return absl::StrCat(static_cast<float>(v));
    } else if constexpr (std::is_same_v<T, int8_t> || std::is_same_v<T, uint8_t>) {
      return absl::StrCat(static_cast<int>(v));
    } else {
      return absl::StrCat(v);
    }
  }
}
}  // namespace

std::string Tensor::DebugString(int max_elements) const {
  std::string out = absl::StrCat(DataTypeName(dtype_), shape_.ToString(), " {");
  const int64_t n = num_elements();
  const int64_t shown = std::min<int64_t>(n, max_elements);
  for (int64_t i = 0; i < shown; ++i) {
    if (i > 0) out += ", ";
    if (dtype_ == DT_STRING) {
      absl::StrAppend(&out, "\"", strings_[i], "\"");
    } else {
      DispatchFixedSize(
          dtype_,
          [&](auto t) {
            using T = decltype(t);
            out += ElementString<T>(bytes().data() + i * sizeof(T));
          },
          [] {});
    }
  }
  if (shown < n) out += ", ...";
  return out + "}";
}

bool Tensor::operator==(const Tensor& other) const {
  return dtype_ == other.dtype_ && shape_ == other.shape_ && bytes() == other.bytes() &&
         strings_ == other.strings_;
}

}  // namespace psd
