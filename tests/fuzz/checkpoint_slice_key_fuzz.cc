// Fuzzes the small decoders of checkpoint keys and slice specs: OrderedCode
// (ordered_code.h), slice keys (DecodeTensorNameSlice) and slice spec
// strings (TensorSlice::Parse), with round trips: what decodes encodes back
// to a key that decodes to the same value.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "checkpoint/ordered_code.h"
#include "checkpoint/tensor_slice.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "checkpoint_slice_key_fuzz: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace oc = psd::checkpoint::ordered_code;
  using psd::checkpoint::TensorSlice;
  const std::string bytes(reinterpret_cast<const char*>(data), size);

  // OrderedCode readers over the raw bytes, each value round-tripped.
  for (int which = 0; which < 3; ++which) {
    absl::string_view in = bytes;
    for (int n = 0; n < 64 && !in.empty(); ++n) {
      const absl::string_view before = in;
      std::string again;
      if (which == 0) {
        std::string s;
        if (!oc::ReadString(&in, &s)) break;
        oc::WriteString(&again, s);
        absl::string_view a = again;
        std::string s2;
        Check(oc::ReadString(&a, &s2) && s2 == s && a.empty(), "string round trip");
      } else if (which == 1) {
        uint64_t v;
        if (!oc::ReadNumIncreasing(&in, &v)) break;
        oc::WriteNumIncreasing(&again, v);
        absl::string_view a = again;
        uint64_t v2;
        Check(oc::ReadNumIncreasing(&a, &v2) && v2 == v && a.empty(), "number round trip");
      } else {
        int64_t v;
        if (!oc::ReadSignedNumIncreasing(&in, &v)) break;
        oc::WriteSignedNumIncreasing(&again, v);
        absl::string_view a = again;
        int64_t v2;
        Check(oc::ReadSignedNumIncreasing(&a, &v2) && v2 == v && a.empty(),
              "signed number round trip");
      }
      Check(in.size() < before.size(), "a read consumed nothing");
    }
  }

  // Slice keys.
  std::string name;
  TensorSlice slice;
  if (psd::checkpoint::DecodeTensorNameSlice(bytes, &name, &slice).ok()) {
    const std::string key = psd::checkpoint::EncodeTensorNameSlice(name, slice);
    std::string name2;
    TensorSlice slice2;
    Check(psd::checkpoint::DecodeTensorNameSlice(key, &name2, &slice2).ok(), "re-encoded key");
    Check(name2 == name && slice2 == slice, "slice key round trip");
    (void)slice.ToString();
  }

  // Slice specs, and their checks against a shape made of the same bytes.
  auto parsed = TensorSlice::Parse(bytes);
  if (parsed.ok()) {
    auto again = TensorSlice::Parse(parsed->ToString());
    Check(again.ok() && *again == *parsed, "slice spec round trip");
    psd::tf::TensorSliceProto proto;
    parsed->ToProto(&proto);
    auto from_proto = TensorSlice::FromProto(proto);
    Check(from_proto.ok() && *from_proto == *parsed, "slice proto round trip");
    std::vector<int64_t> dims;
    bool fits = true;
    for (int d = 0; d < parsed->rank(); ++d) {
      int64_t end = 3;
      if (!parsed->IsFullAt(d)) fits &= !__builtin_add_overflow(parsed->start(d), parsed->length(d), &end);
      dims.push_back(end);
    }
    auto shape = psd::TensorShape::Make(dims, "fuzz");
    if (fits && shape.ok() && parsed->CheckFits(*shape).ok()) {
      const TensorSlice resolved = parsed->Resolved(*shape);
      (void)resolved.SliceShape(*shape);
      (void)parsed->CoversAll(*shape);
      TensorSlice overlap;
      (void)TensorSlice::Intersect(resolved, resolved, &overlap);
    }
  }
  return 0;
}
