// Writes the seed corpora of the structured fuzz targets into
// <corpus>/<target>/: serialized store sessions (one per request type, all
// valid against the variables store_request_fuzz starts with), tensors,
// stream messages, slice keys, a move's pulls, and checkpoints (psd-written ones with every
// kind of entry, and the TensorFlow fixtures given as prefixes).
//
//   make_fuzz_seeds tests/fuzz/corpus $(ls tests/data/tf/*/*.index | sed "s/\.index$//")
//
// The output is committed; rerun it after changing fuzz_inputs.proto.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "checkpoint/bundle_reader.h"
#include "checkpoint/bundle_writer.h"
#include "checkpoint/file_system.h"
#include "checkpoint/table_builder.h"
#include "checkpoint/tensor_slice.h"
#include "coordinator/registry.h"
#include "fuzz_inputs.pb.h"
#include "memory_file_system.h"
#include "psd/embedding_keys.h"
#include "psd/wire.h"

namespace {

using psd::TensorProto;
using psd::fuzz::StoreOp;
using psd::fuzz::StoreSession;

std::string g_corpus;

void Write(const std::string& target, const std::string& name, const std::string& bytes) {
  const std::string dir = g_corpus + "/" + target;
  std::filesystem::create_directories(dir);
  std::ofstream out(dir + "/" + name, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::cerr << "cannot write " << dir << "/" << name << "\n";
    std::exit(1);
  }
}

void Check(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "make_fuzz_seeds: " << what << " failed\n";
    std::exit(1);
  }
}

template <typename T>
TensorProto Value(std::vector<int64_t> dims, const std::vector<T>& values) {
  TensorProto p;
  psd::TensorToProto(*psd::Tensor::FromVector<T>(psd::TensorShape(std::move(dims)), values), &p);
  return p;
}

TensorProto Strings(std::vector<int64_t> dims, std::vector<std::string> values) {
  TensorProto p;
  psd::TensorToProto(*psd::Tensor::FromStrings(psd::TensorShape(std::move(dims)), values), &p);
  return p;
}

void Session(const std::string& name, const std::vector<StoreOp>& ops) {
  StoreSession session;
  for (const auto& op : ops) *session.add_ops() = op;
  Write("store_request_fuzz", name, session.SerializeAsString());
}

void StoreSeeds() {
  std::vector<StoreOp> all;
  StoreOp op;

  auto* create = op.mutable_create();
  create->set_name("w");
  create->set_dtype(psd::DT_FLOAT);
  create->mutable_shape()->add_dims(8);
  create->mutable_shape()->add_dims(2);
  create->mutable_initializer()->mutable_random_uniform()->set_minval(-1);
  create->mutable_initializer()->mutable_random_uniform()->set_maxval(1);
  create->set_initialize(true);
  create->mutable_request_id()->set_client_id(5);
  create->mutable_request_id()->set_seq(1);
  Session("create_initializer", {op});
  all.push_back(op);

  op.Clear();
  create = op.mutable_create();
  create->set_name("w2/part_1");
  create->set_dtype(psd::DT_INT64);
  create->mutable_shape()->add_dims(3);
  *create->mutable_initial_value() = Value<int64_t>({3}, {7, 8, 9});
  create->set_initialize(true);
  create->mutable_slice()->add_full_shape(6);
  create->mutable_slice()->add_offset(3);
  Session("create_value_sliced", {op});
  all.push_back(op);

  op.Clear();
  op.mutable_delete_()->set_name("d");
  Session("delete", {op});

  op.Clear();
  op.set_list_prefix("v");
  Session("list", {op});
  all.push_back(op);

  op.Clear();
  op.mutable_initialize()->add_names("u");
  op.mutable_initialize()->set_force(true);
  Session("initialize", {op});
  all.push_back(op);

  op.Clear();
  {
    auto* init = op.mutable_initialize_from();
    init->mutable_request()->add_names("t");
    (*init->mutable_sources())["t"] = Value<float>({3}, {4, 5, 6});
    StoreOp make;
    make.mutable_create()->set_name("t");
    make.mutable_create()->set_dtype(psd::DT_FLOAT);
    make.mutable_create()->mutable_shape()->add_dims(3);
    make.mutable_create()->mutable_initializer()->mutable_from_variable()->set_source("u");
    make.mutable_create()->mutable_initializer()->mutable_from_variable()->set_scale(2);
    Session("initialize_from", {make, op});
  }

  op.Clear();
  op.mutable_report_uninitialized()->add_names("u");
  op.mutable_report_uninitialized()->add_names("v");
  Session("report_uninitialized", {op});
  all.push_back(op);

  op.Clear();
  op.mutable_read()->set_name("v");
  op.mutable_read()->set_shard_incarnation(77);
  Session("read", {op});
  all.push_back(op);

  op.Clear();
  op.mutable_gather()->set_name("v");
  *op.mutable_gather()->mutable_indices() = Value<int32_t>({2}, {3, 0});
  Session("gather", {op});
  all.push_back(op);

  op.Clear();
  op.mutable_gather()->set_name("wide");
  *op.mutable_gather()->mutable_indices() = Value<int32_t>({100}, std::vector<int32_t>(100, 3));
  Session("gather_wide", {op});
  {
    StoreOp batch;
    for (int i = 0; i < 3; ++i) *batch.mutable_batch()->add_ops()->mutable_gather() = op.gather();
    Session("batch_gather_wide", {batch});
  }

  op.Clear();
  op.mutable_assign()->set_name("v");
  op.mutable_assign()->set_op(psd::UPDATE_ADD);
  *op.mutable_assign()->mutable_value() = Value<float>({4, 3}, std::vector<float>(12, 1.f));
  op.mutable_assign()->set_return_value(true);
  op.mutable_assign()->mutable_request_id()->set_client_id(5);
  op.mutable_assign()->mutable_request_id()->set_seq(2);
  Session("assign_add", {op, op});
  all.push_back(op);

  op.Clear();
  op.mutable_assign()->set_name("s");
  *op.mutable_assign()->mutable_value() = Strings({3}, {"x", "", "yz"});
  op.mutable_assign()->set_validate_shape(false);
  Session("assign_strings", {op});
  all.push_back(op);

  op.Clear();
  op.mutable_scatter()->set_name("v");
  op.mutable_scatter()->set_op(psd::UPDATE_SUB);
  *op.mutable_scatter()->mutable_indices() = Value<int64_t>({2}, {1, 1});
  *op.mutable_scatter()->mutable_updates() = Value<float>({2, 3}, {1, 2, 3, 4, 5, 6});
  Session("scatter_sub", {op});
  all.push_back(op);

  op.Clear();
  op.mutable_count_up_to()->set_name("step");
  op.mutable_count_up_to()->set_limit(2);
  Session("count_up_to", {op, op, op});
  all.push_back(op);

  op.Clear();
  {
    auto* apply = op.mutable_apply_dense();
    apply->set_name("v");
    apply->add_slots("v/Adam");
    apply->add_slots("v/Adam_1");
    auto* adam = apply->mutable_optimizer()->mutable_adam();
    adam->set_learning_rate(0.01);
    adam->set_beta1(0.9);
    adam->set_beta2(0.999);
    adam->set_epsilon(1e-8);
    adam->set_beta1_power_variable("beta1_power");
    adam->set_beta2_power_variable("beta2_power");
    *apply->mutable_gradient() = Value<float>({4, 3}, std::vector<float>(12, 0.25f));
  }
  Session("apply_dense_adam", {op});
  all.push_back(op);

  op.Clear();
  {
    auto* apply = op.mutable_apply_sparse();
    apply->set_name("v");
    apply->add_slots("v/Adam");
    apply->mutable_optimizer()->mutable_momentum()->set_learning_rate(0.1);
    apply->mutable_optimizer()->mutable_momentum()->set_momentum(0.9);
    *apply->mutable_indices() = Value<int32_t>({2}, {2, 2});
    *apply->mutable_values() = Value<float>({2, 3}, {1, 1, 1, 2, 2, 2});
  }
  Session("apply_sparse_momentum", {op});
  all.push_back(op);

  op.Clear();
  {
    auto* apply = op.mutable_apply_dense();
    apply->set_name("d");
    apply->add_slots("v/Adam");
    apply->mutable_optimizer()->mutable_ftrl()->set_learning_rate(0.1);
    apply->mutable_optimizer()->mutable_ftrl()->set_learning_rate_power(-0.5);
    *apply->mutable_gradient() = Value<double>({2, 2}, {1, 2, 3, 4});
  }
  Session("apply_dense_ftrl_mismatch", {op});

  op.Clear();
  {
    auto* batch = op.mutable_batch();
    auto* b = batch->add_ops();
    b->mutable_read()->set_name("i");
    b = batch->add_ops();
    b->mutable_gather()->set_name("i");
    *b->mutable_gather()->mutable_indices() = Value<int64_t>({3}, {5, 0, 5});
    b = batch->add_ops();
    b->mutable_assign()->set_name("step");
    b->mutable_assign()->set_op(psd::UPDATE_ADD);
    *b->mutable_assign()->mutable_value() = Value<int64_t>({}, {3});
    b = batch->add_ops();
    b->mutable_scatter()->set_name("h");
    *b->mutable_scatter()->mutable_indices() = Value<int32_t>({1}, {4});
    TensorProto half;
    half.set_dtype(psd::DT_HALF);
    half.set_content(std::string("\x00\x3c", 2));  // 1.0, broadcast
    *b->mutable_scatter()->mutable_updates() = half;
    b = batch->add_ops();
    b->mutable_count_up_to()->set_name("step");
    b->mutable_count_up_to()->set_limit(100);
    b = batch->add_ops();
    b->mutable_apply_dense()->set_name("v");
    b->mutable_apply_dense()->mutable_optimizer()->mutable_gradient_descent()->set_learning_rate(1);
    *b->mutable_apply_dense()->mutable_gradient() = Value<float>({4, 3}, std::vector<float>(12, 2));
  }
  Session("batch", {op});
  all.push_back(op);

  op.Clear();
  op.mutable_read_stream()->mutable_request()->set_name("v");
  op.mutable_read_stream()->mutable_request()->set_chunk_bytes(16);
  op.mutable_read_stream()->set_max_chunks(10);
  Session("read_stream", {op});
  all.push_back(op);

  op.Clear();
  {
    auto* s = op.mutable_assign_stream();
    auto* h = s->mutable_header();
    h->set_name("v");
    h->set_dtype(psd::DT_FLOAT);
    h->mutable_shape()->add_dims(4);
    h->mutable_shape()->add_dims(3);
    h->set_total_bytes(48);
    h->set_validate_shape(true);
    s->add_chunks(std::string(20, '\x01'));
    s->add_chunks(std::string(28, '\x02'));
    s->set_commit(true);
  }
  Session("assign_stream", {op});
  all.push_back(op);

  op.Clear();
  {
    auto* s = op.mutable_assign_stream();
    auto* h = s->mutable_header();
    h->set_name("n");
    h->set_dtype(psd::DT_INT32);
    h->mutable_shape()->add_dims(2);
    h->set_total_bytes(8);
    h->mutable_create()->set_name("n");
    h->mutable_create()->set_dtype(psd::DT_INT32);
    h->mutable_create()->mutable_shape()->add_dims(2);
    s->add_chunks(std::string(8, '\x05'));
    s->set_commit(true);
  }
  Session("assign_stream_create", {op});
  all.push_back(op);

  op.Clear();
  {
    auto* s = op.mutable_assign_stream();
    auto* h = s->mutable_header();
    h->set_name("v");
    h->set_dtype(psd::DT_FLOAT);
    h->mutable_shape()->add_dims(4);
    h->mutable_shape()->add_dims(3);
    h->set_total_bytes(48);
    h->mutable_apply()->mutable_optimizer()->mutable_adagrad()->set_learning_rate(0.1);
    h->mutable_apply()->add_slots("v/Adam");
    s->add_chunks(std::string(48, '\x03'));
    s->set_commit(true);
  }
  Session("assign_stream_apply", {op});
  all.push_back(op);

  op.Clear();
  {
    auto* r = op.mutable_restore();
    r->set_restore_id(9);
    r->mutable_part()->set_name("v");
    r->mutable_part()->set_checkpoint_name("v");
    r->mutable_part()->set_dtype(psd::DT_FLOAT);
    r->mutable_part()->add_shape(4);
    r->mutable_part()->add_shape(3);
    *r->mutable_value() = Value<float>({4, 3}, std::vector<float>(12, 9));
    r->set_finish(true);
    r->set_commit(true);
  }
  Session("restore", {op});
  all.push_back(op);

  op.Clear();
  op.set_read_snapshot("s");
  Session("read_snapshot", {op});
  all.push_back(op);

  // Embedding tables (the starting store has "emb", part 0 of 2, with a
  // counter filter of 2, and its slot "emb/Adagrad").
  const std::vector<int64_t> table_keys = {0, 3, 5, 0};
  op.Clear();
  op.mutable_gather()->set_name("emb");
  *op.mutable_gather()->mutable_indices() = Value<int64_t>({4}, table_keys);
  Session("table_gather", {op, op});
  all.push_back(op);
  all.push_back(op);
  op.Clear();
  auto* table_scatter = op.mutable_scatter();
  table_scatter->set_name("emb");
  table_scatter->set_op(psd::UPDATE_ADD);
  *table_scatter->mutable_indices() = Value<int64_t>({4}, table_keys);
  *table_scatter->mutable_updates() = Value<float>({4, 4}, std::vector<float>(16, 0.5f));
  table_scatter->set_global_step(3);
  Session("table_scatter", {op});
  all.push_back(op);
  op.Clear();
  auto* table_apply = op.mutable_apply_sparse();
  table_apply->set_name("emb");
  table_apply->add_slots("emb/Adagrad");
  table_apply->mutable_optimizer()->mutable_adagrad()->set_learning_rate(0.1);
  *table_apply->mutable_indices() = Value<int64_t>({2}, {0, 3});
  *table_apply->mutable_values() = Value<float>({2, 4}, std::vector<float>(8, 1.f));
  Session("table_apply", {op});
  all.push_back(op);
  op.Clear();
  op.set_fence_id(11);
  Session("table_fence", {op});
  all.push_back(op);
  op.Clear();
  op.mutable_export_embedding()->mutable_request()->set_name("emb");
  op.mutable_export_embedding()->mutable_request()->add_slots("emb/Adagrad");
  op.mutable_export_embedding()->mutable_request()->set_max_rows(2);
  op.mutable_export_embedding()->set_max_messages(4);
  Session("table_export", {op});
  all.push_back(op);
  op.Clear();
  auto* imported = op.mutable_import_embedding();
  imported->set_name("emb");
  *imported->mutable_rows()->mutable_keys() = Value<int64_t>({2}, {0, 3});
  *imported->mutable_rows()->mutable_values() = Value<float>({2, 4}, std::vector<float>(8, 2.f));
  Session("table_import", {op});
  all.push_back(op);
  op.Clear();
  op.mutable_delete_embedding_keys()->set_name("emb");
  *op.mutable_delete_embedding_keys()->mutable_keys() = Value<int64_t>({1}, {3});
  Session("table_delete_keys", {op});
  all.push_back(op);
  op.Clear();
  op.mutable_evict_embedding()->set_name("emb");
  op.mutable_evict_embedding()->set_global_step(100);
  Session("table_evict", {op});
  all.push_back(op);
  op.Clear();
  auto* table_restore = op.mutable_table_restore();
  table_restore->set_restore_id(21);
  auto* part = table_restore->mutable_part();
  part->set_name("emb");
  part->set_dtype(psd::DT_FLOAT);
  part->add_shape(4);
  part->mutable_embedding()->set_embedding_dim(4);
  part->set_embedding_num_parts(2);
  part->mutable_initializer()->mutable_zeros();
  *table_restore->mutable_keys() = Value<int64_t>({3}, {0, 3, 5});
  *table_restore->mutable_values() = Value<float>({3, 4}, std::vector<float>(12, 1.f));
  *table_restore->mutable_freqs() = Value<int64_t>({3}, {1, 2, 3});
  *table_restore->mutable_versions() = Value<int64_t>({3}, {4, 5, 6});
  table_restore->set_finish(true);
  table_restore->set_commit(true);
  Session("table_restore", {op});
  all.push_back(op);

  Session("everything", all);

  // The source side of moves and follows: a backup follows "v" with its
  // Adam slots (in sync), another follows the table, and "d" moves; the
  // writes of every kind each group forwards run between their pulls.
  std::vector<StoreOp> moving;
  const auto pull = [&](uint64_t id, std::vector<std::string> names, bool follow, int member,
                        uint64_t applied) {
    StoreOp p;
    psd::PullMoveRequest* r = p.mutable_move_source()->mutable_pull();
    r->set_move_id(id);
    for (const auto& n : names) r->add_names(n);
    r->set_follow(follow);
    r->set_member(member);
    r->set_applied_seq(applied);
    moving.push_back(p);
  };
  const std::vector<std::string> v_group = {"v", "v/Adam", "v/Adam_1"};
  const std::vector<std::string> emb_group = {"emb", "emb/Adagrad"};
  for (int m = 0; m <= 3; ++m) pull(5, v_group, true, m, 0);
  for (int m = 0; m <= 2; ++m) pull(6, emb_group, true, m, 0);
  pull(7, {"d"}, false, 0, 0);
  op.Clear();
  op.mutable_move_source()->mutable_sync()->set_move_id(5);
  op.mutable_move_source()->mutable_sync()->set_in_sync(true);
  op.mutable_move_source()->mutable_sync()->set_incarnation(77);
  moving.push_back(op);
  // The seeds above whose ops write to the groups: a streamed apply to
  // "v", the table's update, import, delete and eviction.
  for (const StoreOp& write : all) {
    if (write.has_assign_stream() || write.has_import_embedding() ||
        write.has_delete_embedding_keys() || write.has_evict_embedding() ||
        (write.has_scatter() && write.scatter().name() == "emb")) {
      moving.push_back(write);
    }
  }
  op.Clear();
  psd::PullMoveRequest* log = op.mutable_move_source()->mutable_follow_log();
  log->set_move_id(5);
  log->set_follow(true);
  log->set_member(3);
  moving.push_back(op);
  op.Clear();
  psd::PullMoveRequest* ack = op.mutable_move_source()->mutable_follow_ack();
  ack->set_move_id(5);
  ack->set_follow(true);
  ack->set_member(3);
  ack->set_applied_seq(2);
  moving.push_back(op);
  pull(6, emb_group, true, 2, 0);
  op.Clear();
  op.mutable_move_source()->mutable_freeze()->set_move_id(7);
  op.mutable_move_source()->mutable_freeze()->set_incarnation(77);
  moving.push_back(op);
  for (uint64_t id : {5, 6, 7}) {
    op.Clear();
    op.mutable_move_source()->mutable_end()->set_move_id(id);
    op.mutable_move_source()->mutable_end()->set_committed(id == 7);
    op.mutable_move_source()->mutable_end()->set_new_shard(2);
    moving.push_back(op);
  }
  Session("moves_and_follows", moving);
}

void TensorSeeds() {
  Write("tensor_wire_fuzz", "float", Value<float>({2, 3}, {1, 2, 3, 4, 5, 6}).SerializeAsString());
  Write("tensor_wire_fuzz", "int32", Value<int32_t>({4}, {0, -1, 7, 1 << 30}).SerializeAsString());
  Write("tensor_wire_fuzz", "int64", Value<int64_t>({2, 1}, {3, -3}).SerializeAsString());
  Write("tensor_wire_fuzz", "double_scalar", Value<double>({}, {2.5}).SerializeAsString());
  Write("tensor_wire_fuzz", "bool", Value<bool>({3}, {true, false, true}).SerializeAsString());
  Write("tensor_wire_fuzz", "uint8", Value<uint8_t>({0, 5}, {}).SerializeAsString());
  Write("tensor_wire_fuzz", "strings",
        Strings({2, 2}, {"a", "", std::string(130, 'x'), "\xff"}).SerializeAsString());
  TensorProto half;
  half.set_dtype(psd::DT_HALF);
  half.mutable_shape()->add_dims(2);
  half.set_content(std::string("\x00\x3c\x00\xbc", 4));
  Write("tensor_wire_fuzz", "half", half.SerializeAsString());
  half.set_dtype(psd::DT_BFLOAT16);
  Write("tensor_wire_fuzz", "bfloat16", half.SerializeAsString());
}

void StreamSeeds() {
  psd::TensorChunk chunk;
  chunk.set_dtype(psd::DT_FLOAT);
  chunk.mutable_shape()->add_dims(4);
  chunk.set_version(3);
  chunk.set_total_bytes(16);
  chunk.set_offset(0);
  chunk.set_content(std::string(16, '\x07'));
  Write("stream_codec_fuzz", "first_chunk", std::string("\x03", 1) + chunk.SerializeAsString());
  psd::TensorChunk next;
  next.set_offset(16);
  next.set_content("abcdefgh");
  Write("stream_codec_fuzz", "next_chunk", std::string("\x05", 1) + next.SerializeAsString());
  psd::AssignStreamRequest header;
  header.mutable_header()->set_name("v");
  header.mutable_header()->set_dtype(psd::DT_FLOAT);
  header.mutable_header()->mutable_shape()->add_dims(2);
  header.mutable_header()->set_total_bytes(8);
  header.mutable_header()->mutable_request_id()->set_client_id(1);
  header.mutable_header()->set_shard_incarnation(77);
  header.set_content(std::string(8, '\x01'));
  Write("stream_codec_fuzz", "assign_header", std::string("\x84", 1) + header.SerializeAsString());
  psd::AssignStreamRequest data;
  data.set_content(std::string(40, '\x02'));
  // The content field twice: the last one counts.
  Write("stream_codec_fuzz", "assign_data_twice",
        std::string("\x87", 1) + data.SerializeAsString() + data.SerializeAsString());
}

void SliceKeySeeds() {
  using psd::checkpoint::TensorSlice;
  Write("checkpoint_slice_key_fuzz", "key_2d",
        psd::checkpoint::EncodeTensorNameSlice("emb/part", *TensorSlice::Parse("0,5:-")));
  Write("checkpoint_slice_key_fuzz", "key_big",
        psd::checkpoint::EncodeTensorNameSlice(std::string("a\0\xff", 3),
                                               *TensorSlice::Parse("1000000,3:7,1099511627776")));
  Write("checkpoint_slice_key_fuzz", "spec", "0,5:-:3,2");
  Write("checkpoint_slice_key_fuzz", "spec_full", "-");
}

// The checkpoint files under `prefix` in `fs` as checkpoint_index_fuzz reads
// them: flags, index length, index, data.
std::string IndexInput(psd::fuzz::MemoryFileSystem* fs, const std::string& prefix,
                       const std::string& index, int num_shards) {
  std::string out(1, '\x01');
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(index.size() >> (8 * i)));
  out += index;
  out += fs->File(psd::checkpoint::DataFilename(prefix, 0, num_shards));
  return out;
}

// A BundleInput of the checkpoint at `prefix`, reading every tensor, a slice
// and a chunked stream.
std::string BundleInputOf(const psd::checkpoint::BundleReader& reader, psd::fuzz::MemoryFileSystem* fs) {
  psd::fuzz::BundleInput input;
  *input.mutable_header() = reader.header();
  for (const auto& [key, entry] : reader.entries()) {
    auto* e = input.add_entries();
    e->set_key(key);
    *e->mutable_entry() = entry;
  }
  for (int k = 0; k < reader.header().num_shards(); ++k) {
    input.add_data_files(
        fs->File(psd::checkpoint::DataFilename(reader.prefix(), k, reader.header().num_shards())));
  }
  for (const auto& info : reader.ListTensors()) {
    input.add_reads()->set_name(info.name);
    if (info.shape.rank() > 0) {
      auto* r = input.add_reads();
      r->set_name(info.name);
      std::string spec = "0,1";
      for (int d = 1; d < info.shape.rank(); ++d) spec += ":-";
      r->set_slice(spec);
    }
    auto* chunked = input.add_reads();
    chunked->set_name(info.name);
    chunked->set_chunk_bytes(3);
  }
  return input.SerializeAsString();
}

void CheckpointSeeds(const std::vector<std::string>& fixtures) {
  using psd::checkpoint::TensorSlice;
  psd::fuzz::MemoryFileSystem fs;
  psd::checkpoint::BundleWriter::Options options;
  options.fs = &fs;
  auto writer = psd::checkpoint::BundleWriter::Create("ckpt", options);
  if (!writer.ok()) {
    std::cerr << writer.status() << "\n";
    std::exit(1);
  }
  auto add = [](absl::Status s) {
    if (!s.ok()) {
      std::cerr << s << "\n";
      std::exit(1);
    }
  };
  add((*writer)->Add("global_step", psd::Tensor::Scalar<int64_t>(100)));
  add((*writer)->Add("w", *psd::Tensor::FromVector<float>({2, 3}, {1, 2, 3, 4, 5, 6})));
  add((*writer)->Add("names", *psd::Tensor::FromStrings({3}, {"a", "", "ccc"})));
  add((*writer)->Add("empty", psd::Tensor(psd::DT_DOUBLE, psd::TensorShape({0, 4}))));
  add((*writer)->AddSlice("emb", {4, 2}, *TensorSlice::Parse("0,2:-"),
                          *psd::Tensor::FromVector<float>({2, 2}, {1, 2, 3, 4})));
  add((*writer)->AddSlice("emb", {4, 2}, *TensorSlice::Parse("2,2:-"),
                          *psd::Tensor::FromVector<float>({2, 2}, {5, 6, 7, 8})));
  add((*writer)->Finish());
  auto reader = psd::checkpoint::BundleReader::Open("ckpt", &fs);
  add(reader.status());
  Write("checkpoint_index_fuzz", "psd_written",
        IndexInput(&fs, "ckpt", fs.File("ckpt.index"), 1));
  Write("checkpoint_bundle_fuzz", "psd_written", BundleInputOf(**reader, &fs));

  // The same entries in a Snappy-compressed table with small blocks.
  {
    auto file = fs.NewWritableFile("snappy.index");
    psd::checkpoint::table::TableOptions table_options;
    table_options.compression = psd::checkpoint::table::kSnappyCompression;
    table_options.block_size = 64;
    psd::checkpoint::table::TableBuilder builder(table_options, file->get());
    add(builder.Add("", (*reader)->header().SerializeAsString()));
    for (const auto& [key, entry] : (*reader)->entries()) add(builder.Add(key, entry.SerializeAsString()));
    add(builder.Finish());
    Write("checkpoint_index_fuzz", "psd_written_snappy",
          IndexInput(&fs, "ckpt", fs.File("snappy.index"), 1));
  }

  for (const std::string& prefix : fixtures) {
    psd::fuzz::MemoryFileSystem copy;
    for (const std::string& path : {psd::checkpoint::IndexFilename(prefix),
                                    psd::checkpoint::DataFilename(prefix, 0, 1)}) {
      std::ifstream in(path, std::ios::binary);
      if (!in) continue;
      copy.File(path).assign(std::istreambuf_iterator<char>(in), {});
    }
    auto fixture = psd::checkpoint::BundleReader::Open(prefix, &copy);
    if (!fixture.ok()) {
      std::cerr << "skipping " << prefix << ": " << fixture.status() << "\n";
      continue;
    }
    std::string name = std::filesystem::path(prefix).parent_path().filename().string();
    Write("checkpoint_index_fuzz", "tf_" + name,
          IndexInput(&copy, prefix, copy.File(psd::checkpoint::IndexFilename(prefix)),
                     (*fixture)->header().num_shards()));
    Write("checkpoint_bundle_fuzz", "tf_" + name, BundleInputOf(**fixture, &copy));
  }
}


// move_pull_fuzz: a source's answers to a target's pulls, as a well-behaved
// source sends them for the harness's group (m/part_1 and its slot, float
// [4, 3]): the group, the snapshot in chunks, logged writes, the end with
// the window; and a few ways it can go wrong.
psd::PullMoveResponse Members() {
  psd::PullMoveResponse r;
  for (const char* name : {"m/part_1", "m/Momentum/part_1"}) {
    psd::MovedMember* m = r.add_members();
    m->set_name(name);
    m->set_dtype(psd::DT_FLOAT);
    m->mutable_shape()->add_dims(4);
    m->mutable_shape()->add_dims(3);
    m->set_initialized(true);
    m->set_version(3);
    m->set_total_bytes(48);
  }
  return r;
}

std::string FloatBytes(int n, float first) {
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) v[i] = first + static_cast<float>(i);
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

psd::MoveWrite AssignAdd(uint64_t seq, const std::string& name, uint64_t request_seq) {
  psd::MoveWrite w;
  w.set_seq(seq);
  w.set_caller(0xca11e4);
  psd::AssignRequest* a = w.mutable_op()->mutable_assign();
  a->set_name(name);
  a->set_op(psd::UPDATE_ADD);
  *a->mutable_value() = Value<float>({4, 3}, std::vector<float>(12, 1.f));
  a->mutable_request_id()->set_client_id(0xc1);
  a->mutable_request_id()->set_seq(request_seq);
  return w;
}

psd::MoveWrite ScatterAdd(uint64_t seq, const std::string& name, uint64_t request_seq) {
  psd::MoveWrite w;
  w.set_seq(seq);
  w.set_caller(0xca11e4);
  psd::ScatterRequest* s = w.mutable_op()->mutable_scatter();
  s->set_name(name);
  s->set_op(psd::UPDATE_ADD);
  *s->mutable_indices() = Value<int64_t>({2}, {0, 3});
  *s->mutable_updates() = Value<float>({2, 3}, std::vector<float>(6, 2.f));
  s->mutable_request_id()->set_client_id(0xc1);
  s->mutable_request_id()->set_seq(request_seq);
  return w;
}

// Logged write `seq`: a chunk of staged write `staged_id` at `offset`, with
// the stream's header when it is the first (`header` set).
psd::MoveWrite StagedChunkWrite(uint64_t seq, uint64_t staged_id, int64_t offset,
                                std::string content, const psd::AssignStreamHeader* header) {
  psd::MoveWrite w;
  w.set_seq(seq);
  psd::StagedChunk* c = w.mutable_chunk();
  c->set_staged_id(staged_id);
  c->set_offset(offset);
  c->set_content(std::move(content));
  if (header != nullptr) *c->mutable_header() = *header;
  return w;
}

// A table's part (part 1 of 2, dim 2, a counter filter admitting at 3) and
// its Adagrad slot, moved whole: the rows with their slot rows, a pending
// count, logged lookups and writes, the end; and two lies.
void TableMoveSeeds() {
  using psd::fuzz::MoveInSession;
  auto write = [](const std::string& name, const MoveInSession& session) {
    Write("move_pull_fuzz", name, session.SerializeAsString());
  };
  std::vector<int64_t> mine, theirs;  // keys of part 1, and of part 0
  for (int64_t k = 0; mine.size() < 3 || theirs.empty(); ++k) {
    (psd::PartOfKey(k, 2) == 1 ? mine : theirs).push_back(k);
  }
  MoveInSession whole;
  psd::CreateVariableRequest table;
  table.set_name("t/part_1");
  table.set_dtype(psd::DT_FLOAT);
  table.mutable_shape()->add_dims(2);
  table.mutable_initializer()->mutable_ones();
  table.mutable_embedding()->set_embedding_dim(2);
  table.mutable_embedding()->mutable_counter_filter()->set_filter_freq(3);
  table.set_embedding_part_index(1);
  table.set_embedding_num_parts(2);
  psd::CreateVariableRequest slot = table;
  slot.set_name("t/Adagrad/part_1");
  slot.mutable_initializer()->mutable_zeros();
  slot.mutable_embedding()->set_slot_of("t/part_1");
  *whole.add_parts() = table;
  *whole.add_parts() = slot;
  psd::PullMoveResponse first;
  psd::MovedMember* m = first.add_members();
  m->set_name("t/part_1");
  m->set_dtype(psd::DT_FLOAT);
  m->mutable_shape()->add_dims(2);
  m->set_initialized(true);
  m->set_version(5);
  m->set_total_bytes(4 + 1);  // ids [0, 4), one pending count
  psd::MovedTable* t = m->mutable_table();
  t->add_columns("t/Adagrad/part_1");
  t->set_ids(4);
  t->set_pending(1);
  t->set_dim(2);
  t->set_rows(2);
  m = first.add_members();
  m->set_name("t/Adagrad/part_1");
  m->set_dtype(psd::DT_FLOAT);
  m->mutable_shape()->add_dims(2);
  m->set_initialized(true);
  m->mutable_table()->set_slot_of("t/part_1");
  m->mutable_table()->set_dim(2);
  psd::MovedTableChunk* rows = first.mutable_table();
  rows->add_keys(mine[0]);
  rows->add_keys(mine[1]);
  rows->set_values(FloatBytes(4, 1));
  rows->add_slot_values(FloatBytes(4, 0.5f));
  for (int i = 0; i < 2; ++i) {
    rows->add_freqs(3 + i);
    rows->add_versions(7);
  }
  *whole.add_pulls() = first;
  psd::PullMoveResponse pending;
  pending.set_offset(4);
  pending.mutable_table()->add_pending_keys(mine[2]);
  pending.mutable_table()->add_pending_counts(2);
  *whole.add_pulls() = pending;
  psd::PullMoveResponse slot_chunk;  // a slot's (empty) chunk
  slot_chunk.set_member(1);
  *whole.add_pulls() = slot_chunk;
  psd::PullMoveResponse end;
  end.set_member(2);
  psd::MoveWrite* lookup = end.add_writes();  // admits mine[2]
  lookup->set_seq(1);
  lookup->mutable_op()->mutable_gather()->set_name("t/part_1");
  *lookup->mutable_op()->mutable_gather()->mutable_indices() = Value<int64_t>({1}, {mine[2]});
  psd::MoveWrite* add = end.add_writes();
  add->set_seq(2);
  add->set_caller(0xca11e4);
  psd::ScatterRequest* s = add->mutable_op()->mutable_scatter();
  s->set_name("t/part_1");
  s->set_op(psd::UPDATE_ADD);
  *s->mutable_indices() = Value<int64_t>({2}, {mine[0], mine[2]});
  *s->mutable_updates() = Value<float>({2, 2}, std::vector<float>(4, 2.f));
  s->mutable_request_id()->set_client_id(0xc1);
  s->mutable_request_id()->set_seq(1);
  // A table's writes by key: a delete, an import of a row with its slot,
  // and an eviction.
  psd::MoveWrite* del = end.add_writes();
  del->set_seq(3);
  psd::DeleteEmbeddingKeysRequest* d = del->mutable_table()->mutable_delete_keys();
  d->set_name("t/part_1");
  *d->mutable_keys() = Value<int64_t>({1}, {mine[1]});
  psd::MoveWrite* imp = end.add_writes();
  imp->set_seq(4);
  psd::ImportEmbeddingRequest* im = imp->mutable_table()->mutable_import_rows();
  im->set_name("t/part_1");
  im->add_slots("t/Adagrad/part_1");
  *im->mutable_rows()->mutable_keys() = Value<int64_t>({1}, {mine[1]});
  *im->mutable_rows()->mutable_values() = Value<float>({1, 2}, {4.f, 5.f});
  *im->mutable_rows()->add_slot_values() = Value<float>({1, 2}, {0.1f, 0.1f});
  psd::MoveWrite* evict = end.add_writes();
  evict->set_seq(5);
  evict->mutable_table()->mutable_evict()->set_name("t/part_1");
  evict->mutable_table()->mutable_evict()->set_global_step(100);
  end.set_end(true);
  end.set_final_seq(5);
  psd::RequestWindowState::Client* c = end.mutable_window()->add_clients();
  c->set_client_id(0xc1);
  c->set_owner(0xca11e4);
  c->set_max_seq(1);
  c->add_entries()->set_seq(1);
  *whole.add_pulls() = end;
  whole.set_commit(true);
  write("table_whole_move", whole);
  // A row of a key of the other part, and a slot that claims rows.
  MoveInSession other_part = whole;
  other_part.mutable_pulls(0)->mutable_table()->set_keys(1, theirs[0]);
  write("table_key_of_another_part", other_part);
  MoveInSession slot_rows = whole;
  *slot_rows.mutable_pulls(2)->mutable_table() = first.table();
  write("table_slot_with_rows", slot_rows);
}

void MoveSeeds() {
  using psd::fuzz::MoveInSession;
  auto write = [](const std::string& name, const MoveInSession& session) {
    Write("move_pull_fuzz", name, session.SerializeAsString());
  };
  // The whole move: the group and the first chunk, the rest in chunks,
  // writes logged during the copy, then the closed log with the window.
  MoveInSession whole;
  {
    psd::PullMoveResponse first = Members();
    first.set_content(FloatBytes(12, 0));
    *whole.add_pulls() = first;
    psd::PullMoveResponse slot;
    slot.set_member(1);
    slot.set_content(FloatBytes(5, 100));
    *whole.add_pulls() = slot;
    slot.set_offset(20);
    slot.set_content(FloatBytes(7, 105).substr(0, 28));
    *whole.add_pulls() = slot;
    psd::PullMoveResponse writes;
    writes.set_member(2);
    *writes.add_writes() = AssignAdd(1, "m/part_1", 10);
    *writes.add_writes() = ScatterAdd(2, "m/Momentum/part_1", 11);
    writes.set_final_seq(2);
    *whole.add_pulls() = writes;
    psd::PullMoveResponse end;
    end.set_member(2);
    *end.add_writes() = AssignAdd(3, "m/part_1", 12);
    end.set_end(true);
    end.set_final_seq(3);
    psd::RequestWindowState::Client* c = end.mutable_window()->add_clients();
    c->set_client_id(0xc1);
    c->set_owner(0xca11e4);
    c->set_max_seq(12);
    for (uint64_t seq : {10, 11, 12}) {
      psd::RequestWindowState::Entry* e = c->add_entries();
      e->set_seq(seq);
      e->set_version(4 + seq);
    }
    *whole.add_pulls() = end;
    whole.set_commit(true);
  }
  write("whole_move", whole);
  MoveInSession given_up = whole;
  given_up.set_commit(false);
  write("given_up", given_up);
  // A write logged out of order, and an answer for another chunk.
  MoveInSession gap = whole;
  gap.mutable_pulls(3)->mutable_writes(1)->set_seq(5);
  write("write_gap", gap);
  MoveInSession offset = whole;
  offset.mutable_pulls(2)->set_offset(24);
  write("wrong_offset", offset);
  // A group the input declares: strings, a scalar, an empty part.
  MoveInSession declared;
  {
    psd::CreateVariableRequest s;
    s.set_name("s/part_0");
    s.set_dtype(psd::DT_STRING);
    s.mutable_shape()->add_dims(2);
    *declared.add_parts() = s;
    psd::CreateVariableRequest i;
    i.set_name("step");
    i.set_dtype(psd::DT_INT64);
    *declared.add_parts() = i;
    psd::CreateVariableRequest e;
    e.set_name("e/part_2");
    e.set_dtype(psd::DT_FLOAT);
    e.mutable_shape()->add_dims(0);
    e.mutable_shape()->add_dims(4);
    *declared.add_parts() = e;
    const std::string strings = Strings({2}, {"a", "bc"}).content();
    psd::PullMoveResponse first;
    psd::MovedMember* m = first.add_members();
    m->set_name("s/part_0");
    m->set_dtype(psd::DT_STRING);
    m->mutable_shape()->add_dims(2);
    m->set_initialized(true);
    m->set_total_bytes(static_cast<int64_t>(strings.size()));
    m = first.add_members();
    m->set_name("step");
    m->set_dtype(psd::DT_INT64);
    m->set_initialized(true);
    m->set_total_bytes(8);
    m = first.add_members();
    m->set_name("e/part_2");
    m->set_dtype(psd::DT_FLOAT);
    m->mutable_shape()->add_dims(0);
    m->mutable_shape()->add_dims(4);
    m->set_initialized(true);
    first.set_content(strings);
    *declared.add_pulls() = first;
    psd::PullMoveResponse step;
    step.set_member(1);
    step.set_content(std::string("\x05\0\0\0\0\0\0\0", 8));
    *declared.add_pulls() = step;
    psd::PullMoveResponse empty;  // the empty part's one (empty) chunk
    empty.set_member(2);
    *declared.add_pulls() = empty;
    psd::PullMoveResponse end;
    end.set_member(3);
    psd::MoveWrite w;
    w.set_seq(1);
    psd::CountUpToRequest* c = w.mutable_op()->mutable_count_up_to();
    c->set_name("step");
    c->set_limit(100);
    *end.add_writes() = w;
    end.set_end(true);
    end.set_final_seq(1);
    *declared.add_pulls() = end;
    declared.set_commit(true);
  }
  write("declared_group", declared);
  // Streamed writes logged in chunks (StagedChunk): a momentum apply whose
  // gradient arrives in two chunks, then its commit naming the slot; an
  // assign of the strings part in chunks cut inside a string; and the
  // apply's commit naming a slot the move does not carry (the target's own
  // "v", which must stay untouched), or committing chunks of an assign.
  MoveInSession staged = whole;
  {
    psd::PullMoveResponse* writes = staged.mutable_pulls(3);
    writes->clear_writes();
    psd::ApplyDenseRequest apply;
    apply.add_slots("m/Momentum/part_1");
    apply.mutable_optimizer()->mutable_momentum()->set_learning_rate(0.5);
    apply.mutable_optimizer()->mutable_momentum()->set_momentum(0.9);
    const std::string gradient = FloatBytes(12, -3);
    psd::AssignStreamHeader h;
    h.set_name("m/part_1");
    h.set_op(psd::UPDATE_ASSIGN);
    h.set_dtype(psd::DT_FLOAT);
    h.mutable_shape()->add_dims(4);
    h.mutable_shape()->add_dims(3);
    h.set_total_bytes(48);
    *h.mutable_apply() = apply;
    *writes->add_writes() = StagedChunkWrite(1, 9, 0, gradient.substr(0, 24), &h);
    *writes->add_writes() = StagedChunkWrite(2, 9, 24, gradient.substr(24, 24), nullptr);
    psd::MoveWrite* commit = writes->add_writes();
    commit->set_seq(3);
    commit->set_caller(0xca11e4);
    commit->set_staged_id(9);
    psd::ApplyDenseRequest* committed = commit->mutable_op()->mutable_apply_dense();
    *committed = apply;
    committed->set_name("m/part_1");
    committed->mutable_request_id()->set_client_id(0xc1);
    committed->mutable_request_id()->set_seq(11);
    committed->mutable_gradient()->set_dtype(psd::DT_FLOAT);
    writes->set_final_seq(3);
    psd::PullMoveResponse* end = staged.mutable_pulls(4);
    end->mutable_writes(0)->set_seq(4);
    end->set_final_seq(4);
  }
  write("staged_apply", staged);
  MoveInSession stray_slot = staged;
  stray_slot.mutable_pulls(3)->mutable_writes(2)->mutable_op()->mutable_apply_dense()->set_slots(
      0, "v");
  write("staged_apply_to_another_variable", stray_slot);
  MoveInSession mismatched = staged;
  {
    psd::MoveWrite* commit = mismatched.mutable_pulls(3)->mutable_writes(2);
    psd::AssignRequest* assign = commit->mutable_op()->mutable_assign();
    assign->set_name("m/part_1");
    assign->mutable_request_id()->set_client_id(0xc1);
    assign->mutable_request_id()->set_seq(11);
  }
  write("staged_apply_committed_as_assign", mismatched);
  MoveInSession staged_strings = declared;
  {
    const std::string strings = Strings({2}, {"chunked", "strings"}).content();
    psd::PullMoveResponse* end = staged_strings.mutable_pulls(3);
    psd::CountUpToRequest count = end->writes(0).op().count_up_to();
    end->clear_writes();
    psd::AssignStreamHeader h;
    h.set_name("s/part_0");
    h.set_op(psd::UPDATE_ASSIGN);
    h.set_dtype(psd::DT_STRING);
    h.mutable_shape()->add_dims(2);
    h.set_total_bytes(static_cast<int64_t>(strings.size()));
    for (size_t offset = 0, i = 0; offset < strings.size(); offset += 5, ++i) {
      *end->add_writes() = StagedChunkWrite(i + 1, 4, static_cast<int64_t>(offset),
                                            strings.substr(offset, 5), offset == 0 ? &h : nullptr);
    }
    psd::MoveWrite* commit = end->add_writes();
    commit->set_seq(static_cast<uint64_t>(end->writes_size()));
    commit->set_staged_id(4);
    commit->mutable_op()->mutable_assign()->set_name("s/part_0");
    psd::MoveWrite* counted = end->add_writes();
    counted->set_seq(static_cast<uint64_t>(end->writes_size()));
    *counted->mutable_op()->mutable_count_up_to() = count;
    end->set_final_seq(counted->seq());
  }
  write("staged_strings", staged_strings);
  // A logged write naming a variable the move does not carry (here one the
  // target holds already): refused, the variable untouched.
  MoveInSession stray = whole;
  psd::MoveWrite* to_v = stray.mutable_pulls(3)->mutable_writes(0);
  to_v->mutable_op()->mutable_assign()->set_name("v");
  *to_v->mutable_op()->mutable_assign()->mutable_value() = Value<float>({3}, {1, 1, 1});
  write("write_to_another_variable", stray);
  TableMoveSeeds();
}


// registry_state_fuzz: a state directory a coordinator wrote (variables,
// a partitioned one and a table, sessions with scopes and names, a move
// under way, a drained shard; a snapshot and records after it), raw and as
// framed records.
void RegistrySeeds() {
  psd::fuzz::MemoryFileSystem fs;
  psd::RegistryOptions options;
  options.state_dir = "state";
  options.file_system = &fs;
  auto opened = psd::Registry::Open(options);
  Check(opened.ok(), "registry seed: open: " + opened.status().ToString());
  psd::Registry& registry = **opened;
  const std::vector<int32_t> live = {0, 1};
  auto session = registry.OpenSession("seed");
  Check(session.ok(), "registry seed: session");
  psd::VariableDeclaration w;
  w.set_name("layer/w");
  w.set_dtype(psd::DT_FLOAT);
  w.mutable_shape()->add_dims(8);
  w.mutable_shape()->add_dims(4);
  w.mutable_initializer()->mutable_zeros();
  w.mutable_partitioner()->mutable_fixed_size()->set_num_shards(2);
  Check(registry.GetVariable(*session, w, live, 1).ok(), "registry seed: w");
  Check(registry.Compact().ok(), "registry seed: compact");
  psd::VariableDeclaration slot = w;
  slot.set_name("layer/w/Momentum");
  slot.set_colocate_with("layer/w");
  slot.set_trainable(false);
  Check(registry.GetVariable(*session, slot, live, 2).ok(), "registry seed: slot");
  psd::VariableDeclaration emb;
  emb.set_name("emb");
  emb.mutable_embedding()->set_embedding_dim(4);
  Check(registry.GetVariable(*session, emb, live, 3).ok(), "registry seed: table");
  Check(registry.OpenScope(*session, "", "layer", "", false, true, 4).ok(), "registry seed: scope");
  Check(registry.UniqueName(*session, "Variable", true, 5).ok(), "registry seed: name");
  auto def = registry.Lookup("layer/w");
  Check(def.ok(), "registry seed: lookup");
  psd::PartMoveRecord move;
  move.set_move_id(77);
  move.add_parts(def->parts(0).name());
  move.add_parts("layer/w/Momentum/part_0");
  move.set_source_shard(def->parts(0).shard_id());
  move.set_target_shard(1 - def->parts(0).shard_id());
  Check(registry.BeginMove(move).ok(), "registry seed: move");
  Check(registry.SetDrained(1, true).ok(), "registry seed: drain");

  const std::string snap = fs.File("state/registry.snapshot");
  const std::string log = fs.File("state/registry.log");
  psd::fuzz::RegistryStateInput raw;
  raw.set_raw(true);
  raw.set_raw_snapshot(snap);
  raw.set_raw_log(log);
  Write("registry_state_fuzz", "raw_state", raw.SerializeAsString());

  // The same, as framed messages: magic (8 bytes), then frames of fixed32
  // length, fixed32 checksum, payload.
  const auto frames = [](const std::string& file) {
    std::vector<std::string> out;
    size_t at = 8;
    while (at + 8 <= file.size()) {
      uint32_t n = 0;
      for (int i = 0; i < 4; ++i) n |= static_cast<uint32_t>(static_cast<uint8_t>(file[at + i])) << (8 * i);
      if (at + 8 + n > file.size()) break;
      out.push_back(file.substr(at + 8, n));
      at += 8 + n;
    }
    return out;
  };
  psd::fuzz::RegistryStateInput framed;
  const std::vector<std::string> snap_frames = frames(snap);
  Check(snap_frames.size() == 1, "registry seed: one snapshot frame");
  framed.set_write_snapshot(true);
  Check(framed.mutable_snapshot()->ParseFromString(snap_frames[0]), "registry seed: snapshot");
  for (const std::string& f : frames(log)) {
    Check(framed.add_records()->ParseFromString(f), "registry seed: record");
  }
  Check(framed.records_size() >= 5, "registry seed: records after the snapshot");
  Write("registry_state_fuzz", "framed_state", framed.SerializeAsString());
  // A torn last record, as a crash mid-append leaves it.
  psd::fuzz::RegistryStateInput torn = framed;
  torn.set_log_tail(std::string("\x40\x00\x00\x00\x01\x02", 6));
  Write("registry_state_fuzz", "torn_tail", torn.SerializeAsString());
  // A declaration no coordinator writes: dimensions whose product
  // overflows, a part on a negative shard id.
  psd::fuzz::RegistryStateInput huge = framed;
  for (psd::RegistryRecord& r : *huge.mutable_records()) {
    if (!r.has_declared() || r.declared().created_size() == 0) continue;
    psd::VariableDef* def = r.mutable_declared()->mutable_created(0);
    def->mutable_shape()->set_dims(0, int64_t{1} << 40);
    def->mutable_shape()->set_dims(1, int64_t{1} << 40);
    for (psd::VariablePart& part : *def->mutable_parts()) {
      part.mutable_shape()->set_dims(0, int64_t{1} << 40);
      part.mutable_shape()->set_dims(1, int64_t{1} << 40);
      part.set_shard_id(-7);
    }
    break;
  }
  Write("registry_state_fuzz", "impossible_declaration", huge.SerializeAsString());
}

// registry_state_fuzz: a replicated cluster's state (docs/replication.md):
// a partitioned variable of replication 3 with a colocated slot, backups
// added to a group, one brought in sync, a failover to it, a backup of the
// new epoch added and one dropped; a snapshot in between. Raw and framed.
void RegistryReplicaSeeds() {
  psd::fuzz::MemoryFileSystem fs;
  psd::RegistryOptions options;
  options.state_dir = "state";
  options.file_system = &fs;
  options.replication = 2;
  auto opened = psd::Registry::Open(options);
  Check(opened.ok(), "replica seed: open: " + opened.status().ToString());
  psd::Registry& registry = **opened;
  const std::vector<int32_t> live = {0, 1, 2, 3};
  auto session = registry.OpenSession("seed");
  Check(session.ok(), "replica seed: session");
  psd::VariableDeclaration w;
  w.set_name("rep/w");
  w.set_dtype(psd::DT_FLOAT);
  w.mutable_shape()->add_dims(8);
  w.mutable_shape()->add_dims(4);
  w.mutable_initializer()->mutable_zeros();
  w.mutable_partitioner()->mutable_fixed_size()->set_num_shards(2);
  w.set_replication(3);
  Check(registry.GetVariable(*session, w, live, 1).ok(), "replica seed: w");
  psd::VariableDeclaration slot = w;
  slot.set_name("rep/w/Adam");
  slot.set_colocate_with("rep/w");
  slot.set_replication(0);
  Check(registry.GetVariable(*session, slot, live, 2).ok(), "replica seed: slot");
  const std::vector<psd::ReplicaGroup> groups = registry.ReplicaGroups();
  Check(groups.size() == 2 && groups[0].parts.size() == 2, "replica seed: groups");
  const std::vector<std::string> group = groups[0].parts;
  const int32_t primary = groups[0].primary;
  const auto backup = [](int32_t shard, uint64_t move_id) {
    psd::ReplicaRecord b;
    b.set_shard_id(shard);
    b.set_move_id(move_id);
    return b;
  };
  const int32_t b1 = (primary + 1) % 4;
  const int32_t b2 = (primary + 2) % 4;
  Check(registry.AddReplica(group, backup(b1, 101)).ok(), "replica seed: add");
  Check(registry.SetReplicaInSync(101, true).ok(), "replica seed: in sync");
  Check(registry.Compact().ok(), "replica seed: compact");
  Check(registry.AddReplica(group, backup(b2, 102)).ok(), "replica seed: add 2");
  Check(registry.FailOver(group, b1, 101, 1).ok(), "replica seed: failover");
  Check(registry.AddReplica(group, backup(primary, 103)).ok(), "replica seed: add 3");
  Check(registry.AddReplica(group, backup(b2, 104)).ok(), "replica seed: add 4");
  Check(registry.DropReplica(104).ok(), "replica seed: drop");
  Check(registry.AddReplica(groups[1].parts, backup((groups[1].primary + 1) % 4, 105)).ok(),
        "replica seed: add to the other group");

  const std::string snap = fs.File("state/registry.snapshot");
  const std::string log = fs.File("state/registry.log");
  psd::fuzz::RegistryStateInput raw;
  raw.set_raw(true);
  raw.set_raw_snapshot(snap);
  raw.set_raw_log(log);
  Write("registry_state_fuzz", "replicated_state", raw.SerializeAsString());
  psd::fuzz::RegistryStateInput framed;
  framed.set_write_snapshot(true);
  size_t at = 8;
  const auto next_frame = [&](const std::string& file, std::string* out) {
    if (at + 8 > file.size()) return false;
    uint32_t n = 0;
    for (int i = 0; i < 4; ++i) {
      n |= static_cast<uint32_t>(static_cast<uint8_t>(file[at + i])) << (8 * i);
    }
    if (at + 8 + n > file.size()) return false;
    *out = file.substr(at + 8, n);
    at += 8 + n;
    return true;
  };
  std::string frame;
  Check(next_frame(snap, &frame) && framed.mutable_snapshot()->ParseFromString(frame),
        "replica seed: snapshot");
  at = 8;
  while (next_frame(log, &frame)) {
    Check(framed.add_records()->ParseFromString(frame), "replica seed: record");
  }
  Check(framed.records_size() >= 5, "replica seed: records after the snapshot");
  Write("registry_state_fuzz", "replicated_framed", framed.SerializeAsString());
}

// registry_declare_fuzz: what a trainer's graph declares: variables under
// every partitioner, a colocated slot, strings, a supplied value, an
// embedding table with a slot table, scopes, names and a deletion.
void RegistryDeclareSeeds() {
  psd::fuzz::RegistryCalls calls;
  for (int32_t id : {0, 1, 2}) calls.add_live_shards(id);
  const auto dense = [](const std::string& name, std::vector<int64_t> dims, psd::DataType dtype) {
    psd::VariableDeclaration d;
    d.set_name(name);
    d.set_dtype(dtype);
    d.mutable_shape();
    for (int64_t x : dims) d.mutable_shape()->add_dims(x);
    d.mutable_initializer()->mutable_zeros();
    d.set_declared_at("model.py:1");
    return d;
  };
  uint64_t seq = 0;
  psd::fuzz::RegistryCall* call = calls.add_calls();
  call->set_request_seq(++seq);
  auto* batch = call->mutable_declare();
  psd::VariableDeclaration w = dense("w", {8, 4}, psd::DT_FLOAT);
  w.mutable_partitioner()->mutable_fixed_size()->set_num_shards(2);
  *batch->add_declarations() = w;
  psd::VariableDeclaration slot = w;
  slot.set_name("w/Momentum");
  slot.set_colocate_with("w");
  slot.set_trainable(false);
  *batch->add_declarations() = slot;
  psd::VariableDeclaration big = dense("big", {1024, 64}, psd::DT_DOUBLE);
  big.mutable_partitioner()->mutable_variable_axis_size()->set_max_shard_bytes(64 << 10);
  *batch->add_declarations() = big;
  psd::VariableDeclaration mm = dense("mm", {4096, 16}, psd::DT_FLOAT);
  mm.mutable_partitioner()->mutable_min_max()->set_max_partitions(4);
  mm.mutable_partitioner()->mutable_min_max()->set_min_slice_size(1 << 14);
  *batch->add_declarations() = mm;
  psd::VariableDeclaration ex = dense("ex", {4, 6}, psd::DT_INT64);
  ex.mutable_partitioner()->mutable_explicit_partitions()->add_partitions(1);
  ex.mutable_partitioner()->mutable_explicit_partitions()->add_partitions(3);
  *batch->add_declarations() = ex;
  *batch->add_declarations() = dense("names", {3}, psd::DT_STRING);

  call = calls.add_calls();
  call->set_request_seq(++seq);
  psd::VariableDeclaration emb;
  emb.set_name("emb");
  emb.mutable_embedding()->set_embedding_dim(8);
  emb.mutable_embedding()->mutable_counter_filter()->set_filter_freq(2);
  emb.mutable_partitioner()->mutable_fixed_size()->set_num_shards(2);
  *call->mutable_declare()->add_declarations() = emb;
  psd::VariableDeclaration emb_slot = emb;
  emb_slot.set_name("emb/Adagrad");
  emb_slot.mutable_embedding()->set_slot_of("emb");
  emb_slot.mutable_embedding()->clear_counter_filter();
  *call->mutable_declare()->add_declarations() = emb_slot;

  call = calls.add_calls();
  call->set_request_seq(++seq);
  call->mutable_scope()->set_name("layer");
  call->mutable_scope()->set_captured(true);
  call = calls.add_calls();
  call->set_request_seq(++seq);
  call->set_unique_name("layer/Variable");
  call = calls.add_calls();
  call->set_request_seq(++seq);
  psd::VariableDeclaration scoped = dense("layer/v", {2, 2}, psd::DT_FLOAT);
  scoped.set_reuse(psd::REUSE_AUTO);
  *call->mutable_declare()->add_declarations() = scoped;
  call = calls.add_calls();
  call->set_request_seq(++seq);
  call->mutable_scope()->set_parent_path("");
  call->mutable_scope()->set_close(true);
  call->mutable_scope()->set_token(1);
  call = calls.add_calls();
  call->set_request_seq(++seq);
  call->set_delete_variable("w");
  Write("registry_declare_fuzz", "graph", calls.SerializeAsString());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: make_fuzz_seeds CORPUS_DIR [TF_CHECKPOINT_PREFIX...]\n";
    return 2;
  }
  g_corpus = argv[1];
  StoreSeeds();
  TensorSeeds();
  StreamSeeds();
  SliceKeySeeds();
  MoveSeeds();
  RegistrySeeds();
  RegistryReplicaSeeds();
  RegistryDeclareSeeds();
  CheckpointSeeds(std::vector<std::string>(argv + 2, argv + argc));
  return 0;
}
