// The `checkpoint` state file and the TF1 Saver's retention algorithm
// (specs/tf-checkpoint-format.md §2, §4 items 44-49), with our own paths and
// explicit clocks, including the state's round trip through a restart.
#include "checkpoint/checkpoint_state.h"

#include <stdlib.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace psd::checkpoint {
namespace {

using Paths = std::vector<std::string>;

SaverRetention::Policy Keep(int n, double hours = 10000.0) {
  SaverRetention::Policy p;
  p.max_to_keep = n;
  p.keep_checkpoint_every_n_hours = hours;
  return p;
}

TEST(SaverRetentionTest, MaxToKeepTwoSequenceReordersResavedPath) {  // item 44
  SaverRetention r(Keep(2), 0);
  r.RecordCheckpoint("d/s1", 1);
  EXPECT_EQ(r.NextDeletion(), std::nullopt);
  r.RecordCheckpoint("d/s2", 2);
  EXPECT_EQ(r.NextDeletion(), std::nullopt);
  EXPECT_EQ(r.last_checkpoints(), (Paths{"d/s1", "d/s2"}));
  r.RecordCheckpoint("d/s3", 3);
  EXPECT_EQ(r.NextDeletion(), "d/s1");
  EXPECT_EQ(r.last_checkpoints(), (Paths{"d/s2", "d/s3"}));
  r.RecordCheckpoint("d/s2", 4);
  EXPECT_EQ(r.NextDeletion(), std::nullopt);
  EXPECT_EQ(r.last_checkpoints(), (Paths{"d/s3", "d/s2"}));
  r.RecordCheckpoint("d/s1", 5);
  EXPECT_EQ(r.NextDeletion(), "d/s3");
  EXPECT_EQ(r.last_checkpoints(), (Paths{"d/s2", "d/s1"}));
}

TEST(SaverRetentionTest, SetLastCheckpointsNeverDeletesThem) {  // item 45
  SaverRetention r(Keep(2), 0);
  r.SetLastCheckpoints({"d/s2", "d/s3"});
  r.RecordCheckpoint("d/s2", 10);
  EXPECT_EQ(r.NextDeletion(), std::nullopt);
  EXPECT_EQ(r.last_checkpoints(), (Paths{"d/s3", "d/s2"}));
  r.RecordCheckpoint("d/s1", 11);
  // s3 carries +inf: it leaves the list but its files are not deleted here.
  EXPECT_EQ(r.NextDeletion(), std::nullopt);
  EXPECT_EQ(r.last_checkpoints(), (Paths{"d/s2", "d/s1"}));
}

// set_last_checkpoints_with_time: the times given are judged as recorded
// ones; a checkpoint kept for good that is put back in the list is managed
// again (and deleted when it leaves it with a time before the mark).
TEST(SaverRetentionTest, SetLastCheckpointsWithTimeManagesThemAgain) {
  SaverRetention r(Keep(1, /*hours=*/1.0), 0);  // next mark at 3600 s
  r.RecordCheckpoint("d/s1", 4000);
  r.RecordCheckpoint("d/s2", 4001);
  EXPECT_EQ(r.NextDeletion(), std::nullopt);  // s1 is past the mark: kept for good
  EXPECT_EQ(r.kept_forever(), Paths{"d/s1"});
  r.SetLastCheckpointsWithTime({{"d/s1", 10.0}, {"d/s2", 11.0}});
  EXPECT_TRUE(r.kept_forever().empty());
  EXPECT_EQ(r.last_checkpoints(), (Paths{"d/s1", "d/s2"}));
  r.RecordCheckpoint("d/s3", 5000);
  EXPECT_EQ(r.NextDeletion(), "d/s1");
  EXPECT_EQ(r.last_checkpoints(), (Paths{"d/s2", "d/s3"}));
}

TEST(SaverRetentionTest, NoHistoryStartsFromEmpty) {  // item 46
  SaverRetention r(Keep(2), 0);
  r.RecordCheckpoint("d/s2", 1);
  EXPECT_EQ(r.last_checkpoints(), (Paths{"d/s2"}));
  r.RecordCheckpoint("d/s1", 2);
  EXPECT_EQ(r.last_checkpoints(), (Paths{"d/s2", "d/s1"}));
}

TEST(SaverRetentionTest, MaxToKeepZeroKeepsEverythingAndListsNothing) {  // item 47
  SaverRetention r(Keep(0), 0);
  r.RecordCheckpoint("d/s1", 1);
  r.RecordCheckpoint("d/s2", 2);
  EXPECT_EQ(r.NextDeletion(), std::nullopt);
  EXPECT_TRUE(r.last_checkpoints().empty());
  // The state file then lists only the latest (auto-append).
  tf::CheckpointState st = GenerateCheckpointState("/abs", "/abs/s2", r.last_checkpoints());
  EXPECT_EQ(st.all_model_checkpoint_paths_size(), 1);
  EXPECT_EQ(st.all_model_checkpoint_paths(0), "/abs/s2");
}

TEST(SaverRetentionTest, KeepEveryNHoursKeepsOneForever) {  // item 49
  const double hours = 0.7 / 3600;  // 0.7 s
  SaverRetention r(Keep(2, hours), /*now=*/0);
  r.RecordCheckpoint("d/s1", 1);
  EXPECT_EQ(r.NextDeletion(), std::nullopt);
  r.RecordCheckpoint("d/s2", 1);
  EXPECT_EQ(r.NextDeletion(), std::nullopt);
  r.RecordCheckpoint("d/s3", 1);
  EXPECT_EQ(r.NextDeletion(), std::nullopt);  // s1 kept: 1 > 0.7
  EXPECT_NEAR(r.next_checkpoint_time(), 1.4, 1e-9);
  r.RecordCheckpoint("d/s4", 1);
  EXPECT_EQ(r.NextDeletion(), "d/s2");  // 1 <= 1.4
  EXPECT_EQ(r.last_checkpoints(), (Paths{"d/s3", "d/s4"}));
  EXPECT_EQ(r.kept_forever(), (Paths{"d/s1"}));
}

TEST(SaverRetentionTest, StateSurvivesARestart) {  // item 44 split by a restart
  SaverRetention r(Keep(2), 0);
  r.RecordCheckpoint("d/s1", 1);
  r.RecordCheckpoint("d/s2", 2);
  r.RecordCheckpoint("d/s3", 3);
  const SaverRetentionState saved = r.ToState();  // s1 queued, not yet deleted
  SaverRetention back = SaverRetention::FromState(Keep(2), saved);
  EXPECT_EQ(back.NextDeletion(), "d/s1");
  back.RecordCheckpoint("d/s2", 4);
  EXPECT_EQ(back.NextDeletion(), std::nullopt);
  SaverRetention again = SaverRetention::FromState(Keep(2), back.ToState());
  again.RecordCheckpoint("d/s1", 5);
  EXPECT_EQ(again.NextDeletion(), "d/s3");
  EXPECT_EQ(again.last_checkpoints(), (Paths{"d/s2", "d/s1"}));
}

TEST(CheckpointStateTest, TextMatchesPythonTextFormat) {
  tf::CheckpointState st;
  st.set_model_checkpoint_path("model.ckpt-29001");
  st.add_all_model_checkpoint_paths("model.ckpt-25001");
  st.add_all_model_checkpoint_paths("model.ckpt-29001");
  EXPECT_EQ(CheckpointStateToText(st),
            "model_checkpoint_path: \"model.ckpt-29001\"\n"
            "all_model_checkpoint_paths: \"model.ckpt-25001\"\n"
            "all_model_checkpoint_paths: \"model.ckpt-29001\"\n");
  auto parsed = ParseCheckpointState(CheckpointStateToText(st), "x");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->all_model_checkpoint_paths_size(), 2);
}

TEST(CheckpointStateTest, RelativeSaveDirMakesPathsRelative) {  // item 54
  EXPECT_EQ(GenerateCheckpointState("train", "train/model-0", {}).model_checkpoint_path(),
            "model-0");
  tf::CheckpointState st = GenerateCheckpointState("/d", "/d/abs", {"model-2"});
  ASSERT_EQ(st.all_model_checkpoint_paths_size(), 2);
  EXPECT_EQ(st.all_model_checkpoint_paths(0), "model-2");
  EXPECT_EQ(st.all_model_checkpoint_paths(1), "/d/abs");
}

TEST(CheckpointStateTest, WriteThenGetJoinsRelativePathsAndLatestNeedsIndex) {
  char tmpl[] = "/tmp/psd_state_test_XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  FileSystem* fs = FileSystem::Default();
  EXPECT_EQ(GetCheckpointState(fs, dir, "").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(WriteCheckpointState(fs, dir, dir + "/m-1", {dir + "/m-1"}, "").ok());
  auto st = GetCheckpointState(fs, dir, "");
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->model_checkpoint_path(), dir + "/m-1");
  // No m-1.index: latest_checkpoint finds nothing.
  EXPECT_EQ(LatestCheckpoint(fs, dir, "").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(WriteFileAtomically(fs, dir + "/m-1.index", "x").ok());
  auto latest = LatestCheckpoint(fs, dir, "");
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(*latest, dir + "/m-1");
  // A collision with the state file itself is refused.
  EXPECT_FALSE(WriteCheckpointState(fs, dir, dir + "/checkpoint", {}, "").ok());
  std::system(absl::StrCat("rm -rf '", dir, "'").c_str());
}

}  // namespace
}  // namespace psd::checkpoint
