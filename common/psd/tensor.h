// Tensor: a dtype, a shape and host memory holding the elements, the one
// tensor type of the client and of the shard's wire edge.
//
// Fixed-size elements live in one contiguous little-endian buffer in
// row-major order, owned by the tensor or, for a call's argument, borrowed
// from its caller (Borrowing); DT_STRING elements are a vector of
// std::string. A Tensor is a value type (copyable, movable; a copy always
// owns its elements) and is thread-compatible.
#ifndef PSD_COMMON_TENSOR_H_
#define PSD_COMMON_TENSOR_H_

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "psd/dtype.h"

namespace psd {

class TensorShape {
 public:
  TensorShape() = default;  // a scalar
  TensorShape(std::initializer_list<int64_t> dims) : dims_(dims) {}
  explicit TensorShape(std::vector<int64_t> dims) : dims_(std::move(dims)) {}

  // INVALID_ARGUMENT for negative dimensions or an element count past 2^62
  // (counting the non-zero dimensions only, so that no partial product of
  // the dimensions overflows); `what` names the tensor in the message.
  static absl::StatusOr<TensorShape> Make(absl::Span<const int64_t> dims,
                                          absl::string_view what);

  int rank() const { return static_cast<int>(dims_.size()); }
  int64_t dim(int i) const { return dims_[i]; }
  const std::vector<int64_t>& dims() const { return dims_; }
  int64_t num_elements() const;
  // Elements per index along axis 0 (the product of dims[1:]); 1 for rank 0.
  int64_t row_elements() const;
  bool operator==(const TensorShape& other) const { return dims_ == other.dims_; }
  bool operator!=(const TensorShape& other) const { return dims_ != other.dims_; }
  // "[2,3]"; "[]" for a scalar.
  std::string ToString() const;

 private:
  std::vector<int64_t> dims_;
};

class Tensor {
 public:
  Tensor() = default;  // DT_INVALID scalar with no elements
  // Zero-filled ("" for strings).
  Tensor(DataType dtype, TensorShape shape);

  template <typename T>
  static Tensor Scalar(T value) {
    Tensor t(DataTypeOf<T>::value, TensorShape{});
    *t.data<T>() = value;
    return t;
  }
  // INVALID_ARGUMENT if values.size() differs from shape's element count.
  template <typename T>
  static absl::StatusOr<Tensor> FromVector(TensorShape shape, const std::vector<T>& values);
  static absl::StatusOr<Tensor> FromStrings(TensorShape shape, std::vector<std::string> values);
  static Tensor StringScalar(std::string value);
  // Adopts `bytes` (moved, not copied) as the elements of a fixed-size
  // dtype; INVALID_ARGUMENT unless its size is the shape's element count
  // times the dtype's size.
  static absl::StatusOr<Tensor> FromBytes(DataType dtype, TensorShape shape, std::string bytes);

  // A tensor whose elements are the caller's `bytes`, not copied: for an
  // argument handed to a call that returns before the caller's buffer goes
  // or changes (a numpy array passed to a synchronous op). The caller keeps
  // `bytes` alive and unchanged while this tensor, or one moved from it,
  // exists. A copy of it owns its bytes, and so does the tensor itself once
  // its elements are asked for to be written (mutable_bytes(), data() on a
  // non-const tensor): nothing is ever written through to the caller's
  // buffer. Same checks as FromBytes.
  static absl::StatusOr<Tensor> Borrowing(DataType dtype, TensorShape shape,
                                          absl::string_view bytes);

  // A tensor of a fixed-size `dtype` and `shape` whose element bytes are
  // NOT initialized (allocated, advised huge pages, not zero-filled): only
  // for a destination that the caller overwrites in full before anyone
  // reads it, e.g. a read's received bytes. A caller that fails before
  // writing every byte must not hand the tensor out (drop it, or zero what
  // it did not write). DT_STRING gets "" elements as the constructor.
  static Tensor ForOverwrite(DataType dtype, TensorShape shape);

  // Makes this a tensor of `dtype` and `shape` whose elements are about to be
  // overwritten, as the destination of a read: a fixed-size tensor that
  // already holds exactly that many bytes keeps its buffer (no allocation, no
  // zero fill, no page faults) and its old bytes; otherwise the elements are
  // zero ("" for strings) as a new tensor's.
  void ResetForOverwrite(DataType dtype, TensorShape shape);

  DataType dtype() const { return dtype_; }
  const TensorShape& shape() const { return shape_; }
  int64_t num_elements() const { return shape_.num_elements(); }

  // Element access for fixed-size dtypes; T must match dtype(). The
  // non-const form first makes a borrowing tensor own its bytes.
  template <typename T>
  T* data() {
    Own();
    return reinterpret_cast<T*>(bytes_.data());
  }
  template <typename T>
  const T* data() const { return reinterpret_cast<const T*>(bytes().data()); }
  template <typename T>
  std::vector<T> ToVector() const {
    return std::vector<T>(data<T>(), data<T>() + num_elements());
  }
  // The element bytes of a fixed-size tensor (empty for strings).
  absl::string_view bytes() const {
    return borrowed_ != nullptr ? absl::string_view(borrowed_, borrowed_size_)
                                : absl::string_view(bytes_);
  }
  // The owned element bytes (a borrowing tensor copies them first).
  std::string* mutable_bytes() {
    Own();
    return &bytes_;
  }
  // Whether the elements are a caller's buffer (Borrowing), not yet copied.
  bool borrows() const { return borrowed_ != nullptr; }
  const std::vector<std::string>& strings() const { return strings_; }
  std::vector<std::string>* mutable_strings() { return &strings_; }

  // Replaces the shape with one of the same element count.
  absl::Status Reshape(TensorShape shape);

  // Short human-readable form: "float32[2,3] {1, 2, 3, 4, 5, 6}".
  std::string DebugString(int max_elements = 8) const;
  // Same dtype, shape and elements (bitwise for floats).
  bool operator==(const Tensor& other) const;
  bool operator!=(const Tensor& other) const { return !(*this == other); }

  // Copies own their bytes (a copy of a borrowing tensor too); a move
  // takes the borrow along.
  Tensor(const Tensor& other);
  Tensor& operator=(const Tensor& other);
  Tensor(Tensor&& other) noexcept;
  Tensor& operator=(Tensor&& other) noexcept;
  ~Tensor() = default;

 private:
  void Own() {
    if (borrowed_ != nullptr) OwnBorrowed();
  }
  void OwnBorrowed();

  DataType dtype_ = DT_INVALID;
  TensorShape shape_;
  std::string bytes_;                 // fixed-size dtypes, unless borrowed_
  std::vector<std::string> strings_;  // DT_STRING
  // Borrowing: the caller's element bytes, in place of bytes_ (not owned).
  const char* borrowed_ = nullptr;
  size_t borrowed_size_ = 0;
};

template <typename T>
absl::StatusOr<Tensor> Tensor::FromVector(TensorShape shape, const std::vector<T>& values) {
  if (static_cast<int64_t>(values.size()) != shape.num_elements()) {
    return absl::InvalidArgumentError(
        "tensor of shape " + shape.ToString() + " needs " +
        std::to_string(shape.num_elements()) + " values, got " + std::to_string(values.size()));
  }
  Tensor t(DataTypeOf<T>::value, std::move(shape));
  for (size_t i = 0; i < values.size(); ++i) t.data<T>()[i] = values[i];
  return t;
}

}  // namespace psd

#endif  // PSD_COMMON_TENSOR_H_
