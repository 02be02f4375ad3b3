// Interop with TensorFlow-written checkpoints (tests/data/tf, see its
// README.md): read every fixture with its known values, and rebuild the
// uncompressed ones byte for byte.
#include <stdlib.h>

#include <fstream>
#include <sstream>
#include <string>

#include "checkpoint/bundle_reader.h"
#include "checkpoint/bundle_writer.h"
#include "checkpoint/file_system.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#ifndef PSD_TF_FIXTURES
#error "PSD_TF_FIXTURES must name tests/data/tf"
#endif

namespace psd::checkpoint {
namespace {

using ::testing::HasSubstr;

std::string Fixture(const std::string& name) {
  return std::string(PSD_TF_FIXTURES) + "/" + name + "/variables";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string MakeTempDir() {
  std::string tmpl = ::testing::TempDir() + "/psd_ckpt_fixture_XXXXXX";
  EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
  return tmpl;
}

float ReadFloat(const BundleReader& reader, const std::string& name) {
  auto t = reader.ReadTensor(name);
  EXPECT_TRUE(t.ok()) << name << ": " << t.status();
  if (!t.ok() || t->dtype() != DT_FLOAT || t->num_elements() != 1) return -12345.0f;
  return t->data<float>()[0];
}

std::unique_ptr<BundleReader> Open(const std::string& fixture) {
  auto reader = BundleReader::Open(Fixture(fixture));
  EXPECT_TRUE(reader.ok()) << fixture << ": " << reader.status();
  return reader.ok() ? *std::move(reader) : nullptr;
}

TEST(TfFixturesTest, HalfPlusTwoGpu) {
  auto r = Open("serving_saved_model_half_plus_two_gpu");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(ReadFloat(*r, "a"), 0.5f);
  EXPECT_EQ(ReadFloat(*r, "b"), 2.0f);
  EXPECT_EQ(ReadFloat(*r, "c"), 3.0f);
  EXPECT_EQ(r->GetTensorInfo("a")->shape, TensorShape{});
  EXPECT_EQ(r->entries().at("c").offset(), 8);
}

TEST(TfFixturesTest, HalfPlusThree) {
  auto r = Open("serving_saved_model_half_plus_three");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(ReadFloat(*r, "a"), 0.5f);
  EXPECT_EQ(ReadFloat(*r, "b"), 3.0f);
  EXPECT_EQ(ReadFloat(*r, "c"), 3.0f);
}

TEST(TfFixturesTest, Counter) {
  auto r = Open("serving_saved_model_counter");
  ASSERT_NE(r, nullptr);
  ASSERT_EQ(r->ListTensors().size(), 1u);
  EXPECT_EQ(ReadFloat(*r, "counter"), 0.0f);
}

TEST(TfFixturesTest, HalfPlusTwoCpuWithSnappyBlock) {
  auto r = Open("serving_saved_model_half_plus_two_cpu");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->ListTensors().size(), 5u);
  EXPECT_EQ(ReadFloat(*r, "a"), 0.5f);
  EXPECT_EQ(ReadFloat(*r, "a2"), 0.5f);
  EXPECT_EQ(ReadFloat(*r, "b"), 2.0f);
  EXPECT_EQ(ReadFloat(*r, "c"), 3.0f);
  EXPECT_EQ(ReadFloat(*r, "c2"), 3.0f);
}

TEST(TfFixturesTest, HalfPlusTwoMkl) {
  auto r = Open("serving_saved_model_half_plus_two_mkl");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->ListTensors().size(), 9u);
  EXPECT_EQ(ReadFloat(*r, "a"), 0.5f);
  EXPECT_EQ(ReadFloat(*r, "b"), 2.0f);
  EXPECT_EQ(ReadFloat(*r, "c"), 3.0f);
  EXPECT_EQ(ReadFloat(*r, "conv2d/bias"), 0.0f);
  EXPECT_FLOAT_EQ(ReadFloat(*r, "conv2d/kernel"), -0.52239597f);
  EXPECT_FLOAT_EQ(ReadFloat(*r, "conv2d_1/kernel"), -1.045112f);
  EXPECT_FLOAT_EQ(ReadFloat(*r, "conv2d_2/kernel"), 1.5779432f);
  EXPECT_EQ(r->GetTensorInfo("conv2d/kernel")->shape, (TensorShape{1, 1, 1, 1}));
}

TEST(TfFixturesTest, HalfPlusTwoTf2CpuWithSnappyBlockAndObjectGraph) {
  auto r = Open("serving_saved_model_half_plus_two_tf2_cpu");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(ReadFloat(*r, "a/.ATTRIBUTES/VARIABLE_VALUE"), 0.5f);
  EXPECT_EQ(ReadFloat(*r, "b/.ATTRIBUTES/VARIABLE_VALUE"), 2.0f);
  EXPECT_EQ(ReadFloat(*r, "c/.ATTRIBUTES/VARIABLE_VALUE"), 3.0f);
  auto graph = r->ReadTensor("_CHECKPOINTABLE_OBJECT_GRAPH");
  ASSERT_TRUE(graph.ok()) << graph.status();
  EXPECT_EQ(graph->dtype(), DT_STRING);
  EXPECT_EQ(graph->shape(), TensorShape{});
  EXPECT_EQ(r->entries().at("_CHECKPOINTABLE_OBJECT_GRAPH").size(), 619);
}

TEST(TfFixturesTest, TextRegressionStringTensor) {
  auto r = Open("serving_tf_text_regression");
  ASSERT_NE(r, nullptr);
  auto graph = r->ReadTensor("_CHECKPOINTABLE_OBJECT_GRAPH");
  ASSERT_TRUE(graph.ok()) << graph.status();
  ASSERT_EQ(graph->strings().size(), 1u);
  EXPECT_EQ(graph->strings()[0].substr(0, 13), std::string("\n\xd9\x01\n\r\x08\x01\x12\tvari", 13));
}

TEST(TfFixturesTest, RustRegressionModel) {
  auto r = Open("rust_regression_model");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(ReadFloat(*r, "b"), 0.0f);
  EXPECT_FLOAT_EQ(ReadFloat(*r, "w"), -0.8578622f);
  EXPECT_EQ(r->GetTensorInfo("w")->shape, TensorShape{1});
}

TEST(TfFixturesTest, RustRegressionSavedModel) {
  auto r = Open("rust_regression_savedmodel");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->ListTensors().size(), 7u);
  EXPECT_FLOAT_EQ(ReadFloat(*r, "w/.ATTRIBUTES/VARIABLE_VALUE"), 0.20429754f);
  EXPECT_EQ(ReadFloat(*r, "b/.ATTRIBUTES/VARIABLE_VALUE"), 0.0f);
  EXPECT_EQ(ReadFloat(*r, "optimizer/learning_rate/.ATTRIBUTES/VARIABLE_VALUE"), 0.5f);
  auto iter = r->ReadTensor("optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE");
  ASSERT_TRUE(iter.ok());
  EXPECT_EQ(iter->dtype(), DT_INT64);
  EXPECT_EQ(iter->data<int64_t>()[0], 0);
  EXPECT_EQ(r->entries().at("_CHECKPOINTABLE_OBJECT_GRAPH").offset(), 28);
  EXPECT_EQ(r->entries().at("_CHECKPOINTABLE_OBJECT_GRAPH").size(), 537);
}

TEST(TfFixturesTest, V1CheckpointIsRefused) {
  auto r =
      BundleReader::Open(std::string(PSD_TF_FIXTURES) + "/serving_bad_half_plus_two_v1/export");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("V1 checkpoint format is not supported"));
}

// The uncompressed fixtures with the order TensorFlow added their tensors in
// (data offsets order), which is key order except for the rust savedmodel.
struct Rebuild {
  const char* fixture;
  std::vector<std::string> add_order;
};

class RebuildTest : public ::testing::TestWithParam<Rebuild> {};

TEST_P(RebuildTest, IndexFromParsedEntriesIsByteIdentical) {
  const std::string prefix = Fixture(GetParam().fixture);
  auto r = BundleReader::Open(prefix);
  ASSERT_TRUE(r.ok()) << r.status();
  const std::string dir = MakeTempDir();
  ASSERT_TRUE(WriteBundleIndex(nullptr, dir + "/rebuilt", 1, (*r)->entries()).ok());
  EXPECT_EQ(ReadFile(dir + "/rebuilt.index"), ReadFile(prefix + ".index"));
}

TEST_P(RebuildTest, WritingSameTensorsInSameOrderIsByteIdentical) {
  const std::string prefix = Fixture(GetParam().fixture);
  auto r = BundleReader::Open(prefix);
  ASSERT_TRUE(r.ok()) << r.status();
  const std::string dir = MakeTempDir();
  auto writer = BundleWriter::Create(dir + "/ours");
  ASSERT_TRUE(writer.ok());
  ASSERT_EQ(GetParam().add_order.size(), (*r)->ListTensors().size());
  for (const std::string& name : GetParam().add_order) {
    auto t = (*r)->ReadTensor(name);
    ASSERT_TRUE(t.ok()) << name << t.status();
    ASSERT_TRUE((*writer)->Add(name, *t).ok()) << name;
  }
  ASSERT_TRUE((*writer)->Finish().ok());
  EXPECT_EQ(ReadFile(dir + "/ours.index"), ReadFile(prefix + ".index"));
  EXPECT_EQ(ReadFile(dir + "/ours.data-00000-of-00001"), ReadFile(prefix + ".data-00000-of-00001"));
}

INSTANTIATE_TEST_SUITE_P(
    Uncompressed, RebuildTest,
    ::testing::Values(Rebuild{"rust_regression_model", {"b", "w"}},
                      Rebuild{"rust_regression_savedmodel",
                              {"w/.ATTRIBUTES/VARIABLE_VALUE", "b/.ATTRIBUTES/VARIABLE_VALUE",
                               "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE",
                               "optimizer/decay/.ATTRIBUTES/VARIABLE_VALUE",
                               "optimizer/learning_rate/.ATTRIBUTES/VARIABLE_VALUE",
                               "optimizer/momentum/.ATTRIBUTES/VARIABLE_VALUE",
                               "_CHECKPOINTABLE_OBJECT_GRAPH"}},
                      Rebuild{"serving_saved_model_counter", {"counter"}},
                      Rebuild{"serving_saved_model_half_plus_three", {"a", "b", "c"}},
                      Rebuild{"serving_saved_model_half_plus_two_gpu", {"a", "b", "c"}},
                      Rebuild{"serving_saved_model_half_plus_two_mkl",
                              {"a", "b", "c", "conv2d/bias", "conv2d/kernel", "conv2d_1/bias",
                               "conv2d_1/kernel", "conv2d_2/bias", "conv2d_2/kernel"}},
                      Rebuild{"serving_tf_text_regression", {"_CHECKPOINTABLE_OBJECT_GRAPH"}}),
    [](const ::testing::TestParamInfo<Rebuild>& info) { return std::string(info.param.fixture); });

TEST(TfFixturesTest, SnappyFixturesHaveASnappyBlockAndRebuildUncompressed) {
  // (fixture, size of its data block at offset 0: its trailer's type byte follows)
  const std::vector<std::pair<std::string, size_t>> fixtures = {
      {"serving_saved_model_half_plus_two_cpu", 87},
      {"serving_saved_model_half_plus_two_tf2_cpu", 153}};
  for (const auto& [name, block_size] : fixtures) {
    const std::string index = ReadFile(Fixture(name) + ".index");
    ASSERT_GT(index.size(), block_size);
    EXPECT_EQ(index[block_size], 1) << name << ": expected a Snappy data block";
    auto r = BundleReader::Open(Fixture(name));
    ASSERT_TRUE(r.ok()) << r.status();
    // Ours is the same table uncompressed: different bytes, same contents.
    const std::string dir = MakeTempDir();
    ASSERT_TRUE(WriteBundleIndex(nullptr, dir + "/x", 1, (*r)->entries()).ok());
    EXPECT_NE(ReadFile(dir + "/x.index"), index);
    auto again = BundleReader::Open(dir + "/x");
    ASSERT_TRUE(again.ok());
    EXPECT_EQ((*again)->entries().size(), (*r)->entries().size());
    for (const auto& [key, entry] : (*r)->entries()) {
      EXPECT_EQ((*again)->entries().at(key).SerializeAsString(), entry.SerializeAsString());
    }
  }
}

}  // namespace
}  // namespace psd::checkpoint
