// Crash-safe publication of a sharded checkpoint, including over an existing
// checkpoint at the same prefix (`saver.save(sess, "model.ckpt")` in a loop).
// TensorFlow's file names are fixed by the prefix (PREFIX.index,
// PREFIX.data-K-of-N), so a re-save must replace files of a published
// checkpoint; this file makes that replacement all-or-nothing:
//
//   1. Staging. Every file of the new checkpoint is written under a staging
//      prefix unique to the save, STAGING = PREFIX.psd-staging-<16 hex>:
//      the shards' STAGING.data-K-of-N, then the coordinator's
//      STAGING.psd-meta and STAGING.index, each fsynced. Nothing of PREFIX
//      is touched. A failure here deletes the staging files; a kill leaves
//      them as orphans, which RecoverCheckpointDir deletes (nothing ever
//      refers to a staging file without a journal).
//   2. Commit. The publish journal PREFIX.psd-publish (temp file, fsync,
//      rename, directory fsync) lists the renames STAGING.* -> PREFIX.*
//      (data files first, .psd-meta, .index last) and the old data files of
//      PREFIX that the new checkpoint does not replace (a different N). Its
//      appearance is the commit point: from then on the new checkpoint
//      wins, whatever happens.
//   3. Apply. The renames in order, the deletions, a directory fsync, then
//      the journal is deleted (and the directory fsynced again).
//
// Recovery (RecoverCheckpointDir: at coordinator start, and before a save or
// restore uses a directory) rolls every complete journal forward (a rename
// whose source is gone was done before the crash) and then deletes staging
// files no journal refers to, so a kill at any point leaves either the old
// checkpoint or the new one at PREFIX, never a mix, and no orphans once
// recovered. The published files keep TensorFlow's format and names exactly;
// the journal and staging names are psd's own and never match TensorFlow's
// patterns (.index, .data-?????-of-?????).
//
// Free functions; thread-safe as far as the FileSystem is, but the caller
// must not run two publications or a publication and a recovery in one
// directory at once (the coordinator serializes them).
#ifndef PSD_COMMON_CHECKPOINT_PUBLISH_H_
#define PSD_COMMON_CHECKPOINT_PUBLISH_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "checkpoint/file_system.h"

namespace psd::checkpoint {

// "PREFIX.psd-staging-<save_id as 16 hex digits>".
std::string StagingPrefix(absl::string_view prefix, uint64_t save_id);
// True for a base name that psd's staging naming identifies: it holds
// ".psd-staging-" + 16 hex digits followed by '.' or its end (staged files,
// and the temp files of staged files).
bool IsStagingFileName(absl::string_view name);
// "PREFIX.psd-publish".
std::string JournalFilename(absl::string_view prefix);
bool IsJournalFileName(absl::string_view name);

// What a journal lists; every name is a base name in `dir`.
struct PublishPlan {
  std::string dir;
  std::vector<std::pair<std::string, std::string>> renames;  // in order
  std::vector<std::string> deletes;
};
std::string EncodeJournal(const PublishPlan& plan);
// DATA_LOSS for anything but a complete journal of this version.
absl::StatusOr<PublishPlan> ParseJournal(absl::string_view text, const std::string& dir);

// The plan that publishes the staged checkpoint at `staging` (num_shards
// data files, .psd-meta, .index) as `prefix`: data files, meta, index last;
// then the deletion of PREFIX's data files of another shard count.
absl::StatusOr<PublishPlan> MakePublishPlan(FileSystem* fs, const std::string& prefix,
                                            const std::string& staging, int num_shards);

// Steps 2 and 3 above. `*committed` says whether the journal was written
// (then the new checkpoint is published, now or by the next recovery, even
// if this returns an error); if not, nothing of PREFIX was touched and the
// caller removes the staging files.
absl::Status PublishStaged(FileSystem* fs, const std::string& prefix, const std::string& staging,
                           int num_shards, bool* committed);

// Removes every file of one staged save (names starting with STAGING's base
// name and a '.'). Returns how many.
int DeleteStagedFiles(FileSystem* fs, const std::string& staging);

struct RecoveryStats {
  int journals_applied = 0;
  int journals_failed = 0;  // left in place (logged): their sources are gone
  int staging_deleted = 0;
  std::vector<std::string> errors;  // for the log
};
// Rolls the complete journals of `dir` forward, then deletes staging files
// (and temp files of journals) that no remaining journal refers to. Files of
// published checkpoints are never deleted, except old data files a journal
// lists.
RecoveryStats RecoverCheckpointDir(FileSystem* fs, const std::string& dir);

}  // namespace psd::checkpoint

#endif  // PSD_COMMON_CHECKPOINT_PUBLISH_H_
