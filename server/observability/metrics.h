// Metrics: counters, gauges and histograms with labels, rendered in the
// Prometheus text exposition format for /metrics.
//
// A family (name, help, label names) holds one series per label-value
// tuple. Get the series once and keep the pointer: updates on it are single
// atomic operations, so the hot path takes no lock. Gauges may instead be
// computed at scrape time by a callback (memory use, variable counts).
//
//   Counter* calls = registry.CounterFamily("psd_rpc_total", "RPCs", {"method", "code"})
//                        ->Get({"Read", "OK"});
//   calls->Increment();
//
// Thread-safety: thread-safe. Families and series are never removed, so
// pointers stay valid for the registry's lifetime.
#ifndef PSD_SERVER_OBSERVABILITY_METRICS_H_
#define PSD_SERVER_OBSERVABILITY_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace psd {

class Counter {
 public:
  void Increment(double v = 1) {
    double old = value_.load(std::memory_order_relaxed);
    while (!value_.compare_exchange_weak(old, old + v, std::memory_order_relaxed)) {
    }
  }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double v) {
    double old = value_.load(std::memory_order_relaxed);
    while (!value_.compare_exchange_weak(old, old + v, std::memory_order_relaxed)) {
    }
  }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Cumulative buckets with fixed upper bounds (plus +Inf), sum and count.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double v);
  // Snapshot for rendering: cumulative counts per bound, then +Inf.
  void Read(std::vector<uint64_t>* cumulative, double* sum, uint64_t* count) const;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1
  std::atomic<double> sum_{0};
  std::atomic<uint64_t> count_{0};
};

// Latency buckets in seconds, 50 us to 10 s.
std::vector<double> LatencyBuckets();

template <typename Series>
class Family {
 public:
  Family(std::string name, std::string help, std::vector<std::string> labels,
         std::function<std::unique_ptr<Series>()> make)
      : name_(std::move(name)), help_(std::move(help)), labels_(std::move(labels)),
        make_(std::move(make)) {}

  // The series for these label values (one per label name), created on
  // first use.
  Series* Get(const std::vector<std::string>& values) {
    absl::MutexLock lock(&mu_);
    auto& slot = series_[values];
    if (slot == nullptr) slot = make_();
    return slot.get();
  }

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& labels() const { return labels_; }
  template <typename Fn>
  void ForEach(Fn fn) const {
    absl::MutexLock lock(&mu_);
    for (const auto& [values, series] : series_) fn(values, *series);
  }

 private:
  const std::string name_, help_;
  const std::vector<std::string> labels_;
  const std::function<std::unique_ptr<Series>()> make_;
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<Series>> series_ ABSL_GUARDED_BY(mu_);
};

class MetricsRegistry {
 public:
  Family<Counter>* CounterFamily(const std::string& name, const std::string& help,
                                 std::vector<std::string> labels = {});
  Family<Gauge>* GaugeFamily(const std::string& name, const std::string& help,
                             std::vector<std::string> labels = {});
  Family<Histogram>* HistogramFamily(const std::string& name, const std::string& help,
                                     std::vector<std::string> labels, std::vector<double> bounds);
  // A gauge without labels whose value is computed at each scrape.
  void CallbackGauge(const std::string& name, const std::string& help,
                     std::function<double()> value);
  // The same for a value that only grows (rendered as a counter).
  void CallbackCounter(const std::string& name, const std::string& help,
                       std::function<double()> value);
  // A gauge family whose series are computed at each scrape: `collect`
  // returns one (label values, value) pair per series, e.g. one per shard.
  using Samples = std::vector<std::pair<std::vector<std::string>, double>>;
  void CallbackGaugeFamily(const std::string& name, const std::string& help,
                           std::vector<std::string> labels, std::function<Samples()> collect);

  // The Prometheus text format (version 0.0.4) of every metric.
  std::string Render() const;

 private:
  struct CallbackMetric {
    std::string name, help;
    const char* type;  // "gauge" or "counter"
    std::vector<std::string> labels;
    std::function<Samples()> collect;
  };
  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Family<Counter>>> counters_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Family<Gauge>>> gauges_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Family<Histogram>>> histograms_ ABSL_GUARDED_BY(mu_);
  std::vector<CallbackMetric> callbacks_ ABSL_GUARDED_BY(mu_);
};

}  // namespace psd

#endif  // PSD_SERVER_OBSERVABILITY_METRICS_H_
