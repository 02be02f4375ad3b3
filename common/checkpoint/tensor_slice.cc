#include "checkpoint/tensor_slice.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "checkpoint/ordered_code.h"

namespace psd::checkpoint {

TensorSlice TensorSlice::Full(int rank) {
  return TensorSlice(std::vector<int64_t>(rank, 0), std::vector<int64_t>(rank, kFullExtent));
}

absl::StatusOr<TensorSlice> TensorSlice::Make(std::vector<int64_t> starts,
                                              std::vector<int64_t> lengths) {
  if (starts.size() != lengths.size()) {
    return absl::InvalidArgumentError("slice needs as many starts as lengths");
  }
  for (size_t d = 0; d < starts.size(); ++d) {
    if (starts[d] < 0 || lengths[d] < kFullExtent) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad slice extent ", starts[d], ",", lengths[d], " in dimension ", d));
    }
    if (lengths[d] == kFullExtent && starts[d] != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("a full extent must start at 0 (dimension ", d, ")"));
    }
  }
  return TensorSlice(std::move(starts), std::move(lengths));
}

absl::StatusOr<TensorSlice> TensorSlice::Parse(absl::string_view spec) {
  std::vector<int64_t> starts, lengths;
  if (spec.empty()) return TensorSlice();
  for (absl::string_view part : absl::StrSplit(spec, ':')) {
    if (part == "-") {
      starts.push_back(0);
      lengths.push_back(kFullExtent);
      continue;
    }
    std::vector<absl::string_view> sl = absl::StrSplit(part, ',');
    int64_t s, l;
    if (sl.size() != 2 || !absl::SimpleAtoi(sl[0], &s) || !absl::SimpleAtoi(sl[1], &l) || l < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad slice spec \"", spec, "\": expected start,length or - per dimension"));
    }
    starts.push_back(s);
    lengths.push_back(l);
  }
  return Make(std::move(starts), std::move(lengths));
}

absl::StatusOr<TensorSlice> TensorSlice::FromProto(const tf::TensorSliceProto& proto) {
  std::vector<int64_t> starts, lengths;
  for (const auto& e : proto.extent()) {
    starts.push_back(e.start());
    lengths.push_back(e.has_length_case() == tf::TensorSliceProto::Extent::kLength ? e.length()
                                                                                   : kFullExtent);
  }
  return Make(std::move(starts), std::move(lengths));
}

void TensorSlice::ToProto(tf::TensorSliceProto* proto) const {
  proto->Clear();
  for (int d = 0; d < rank(); ++d) {
    auto* e = proto->add_extent();
    if (IsFullAt(d)) continue;
    if (starts_[d] != 0) e->set_start(starts_[d]);
    e->set_length(lengths_[d]);
  }
}

std::string TensorSlice::ToString() const {
  std::vector<std::string> parts;
  for (int d = 0; d < rank(); ++d) {
    parts.push_back(IsFullAt(d) ? "-" : absl::StrCat(starts_[d], ",", lengths_[d]));
  }
  return absl::StrJoin(parts, ":");
}

absl::Status TensorSlice::CheckFits(const TensorShape& full_shape) const {
  if (rank() != full_shape.rank()) {
    return absl::InvalidArgumentError(absl::StrCat("slice ", ToString(), " has rank ", rank(),
                                                   " but the tensor ", full_shape.ToString(),
                                                   " has rank ", full_shape.rank()));
  }
  for (int d = 0; d < rank(); ++d) {
    if (IsFullAt(d)) continue;
    if (starts_[d] > full_shape.dim(d) || lengths_[d] > full_shape.dim(d) - starts_[d]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "slice ", ToString(), " is outside the tensor's shape ", full_shape.ToString()));
    }
  }
  return absl::OkStatus();
}

TensorSlice TensorSlice::Resolved(const TensorShape& full_shape) const {
  TensorSlice r = *this;
  for (int d = 0; d < rank(); ++d) {
    if (IsFullAt(d)) r.lengths_[d] = full_shape.dim(d);
  }
  return r;
}

TensorShape TensorSlice::SliceShape(const TensorShape& full_shape) const {
  return TensorShape(Resolved(full_shape).lengths_);
}

bool TensorSlice::CoversAll(const TensorShape& full_shape) const {
  for (int d = 0; d < rank(); ++d) {
    if (!IsFullAt(d) && (starts_[d] != 0 || lengths_[d] != full_shape.dim(d))) return false;
  }
  return true;
}

bool TensorSlice::Intersect(const TensorSlice& a, const TensorSlice& b, TensorSlice* result) {
  std::vector<int64_t> starts(a.rank()), lengths(a.rank());
  for (int d = 0; d < a.rank(); ++d) {
    const int64_t lo = std::max(a.starts_[d], b.starts_[d]);
    const int64_t hi = std::min(a.starts_[d] + a.lengths_[d], b.starts_[d] + b.lengths_[d]);
    if (hi <= lo) return false;
    starts[d] = lo;
    lengths[d] = hi - lo;
  }
  *result = TensorSlice(std::move(starts), std::move(lengths));
  return true;
}

std::string EncodeTensorNameSlice(absl::string_view name, const TensorSlice& slice) {
  std::string key;
  ordered_code::WriteNumIncreasing(&key, 0);
  ordered_code::WriteString(&key, name);
  ordered_code::WriteNumIncreasing(&key, static_cast<uint64_t>(slice.rank()));
  for (int d = 0; d < slice.rank(); ++d) {
    // A full dimension is written as start 0, length -1.
    ordered_code::WriteSignedNumIncreasing(&key, slice.start(d));
    ordered_code::WriteSignedNumIncreasing(&key, slice.length(d));
  }
  return key;
}

absl::Status DecodeTensorNameSlice(absl::string_view key, std::string* name, TensorSlice* slice) {
  absl::string_view in = key;
  uint64_t zero, rank;
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a tensor slice key (", why, "): \"", absl::CEscape(key), "\""));
  };
  if (!ordered_code::ReadNumIncreasing(&in, &zero) || zero != 0) return bad("no 0 prefix");
  if (!ordered_code::ReadString(&in, name)) return bad("bad name");
  if (!ordered_code::ReadNumIncreasing(&in, &rank) || rank > 64) return bad("bad rank");
  std::vector<int64_t> starts, lengths;
  for (uint64_t d = 0; d < rank; ++d) {
    int64_t s, l;
    if (!ordered_code::ReadSignedNumIncreasing(&in, &s) ||
        !ordered_code::ReadSignedNumIncreasing(&in, &l)) {
      return bad("bad extent");
    }
    starts.push_back(s);
    lengths.push_back(l < 0 ? TensorSlice::kFullExtent : l);
  }
  if (!in.empty()) return bad("trailing bytes");
  auto made = TensorSlice::Make(std::move(starts), std::move(lengths));
  if (!made.ok()) return bad(made.status().message());
  *slice = *std::move(made);
  return absl::OkStatus();
}

void CopySliceRegion(const Tensor& src, const TensorSlice& src_slice, const TensorSlice& region,
                     const TensorSlice& dst_slice, Tensor* dst) {
  const int rank = region.rank();
  const bool is_string = src.dtype() == DT_STRING;
  const size_t elem = is_string ? 0 : DataTypeSize(src.dtype());
  // Row-major strides of the source and destination parts.
  std::vector<int64_t> src_stride(rank, 1), dst_stride(rank, 1);
  for (int d = rank - 2; d >= 0; --d) {
    src_stride[d] = src_stride[d + 1] * src_slice.length(d + 1);
    dst_stride[d] = dst_stride[d + 1] * dst_slice.length(d + 1);
  }
  const int64_t run = rank == 0 ? 1 : region.length(rank - 1);
  std::vector<int64_t> idx(rank, 0);  // position within the region, last dim fixed at 0
  while (true) {
    int64_t s = 0, t = 0;
    for (int d = 0; d < rank; ++d) {
      const int64_t g = region.start(d) + idx[d];  // global coordinate
      s += (g - src_slice.start(d)) * src_stride[d];
      t += (g - dst_slice.start(d)) * dst_stride[d];
    }
    if (is_string) {
      for (int64_t i = 0; i < run; ++i) (*dst->mutable_strings())[t + i] = src.strings()[s + i];
    } else {
      std::memcpy(dst->mutable_bytes()->data() + t * elem, src.bytes().data() + s * elem,
                  static_cast<size_t>(run) * elem);
    }
    // Advance the odometer over all dimensions but the last.
    int d = rank - 2;
    for (; d >= 0; --d) {
      if (++idx[d] < region.length(d)) break;
      idx[d] = 0;
    }
    if (d < 0) break;
  }
}

}  // namespace psd::checkpoint
