#include "observability/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"

namespace psd {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0);
}

void Histogram::Observe(double v) {
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  double old = sum_.load(std::memory_order_relaxed);
  while (!sum_.compare_exchange_weak(old, old + v, std::memory_order_relaxed)) {
  }
  count_.fetch_add(1, std::memory_order_relaxed);
}

void Histogram::Read(std::vector<uint64_t>* cumulative, double* sum, uint64_t* count) const {
  cumulative->assign(bounds_.size() + 1, 0);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    (*cumulative)[i] = running;
  }
  *sum = sum_.load(std::memory_order_relaxed);
  *count = running;
}

std::vector<double> LatencyBuckets() {
  return {50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
          50e-3, 100e-3, 250e-3, 500e-3, 1,    2.5,    5,    10};
}

Family<Counter>* MetricsRegistry::CounterFamily(const std::string& name, const std::string& help,
                                                std::vector<std::string> labels) {
  absl::MutexLock lock(&mu_);
  counters_.push_back(std::make_unique<Family<Counter>>(
      name, help, std::move(labels), [] { return std::make_unique<Counter>(); }));
  return counters_.back().get();
}

Family<Gauge>* MetricsRegistry::GaugeFamily(const std::string& name, const std::string& help,
                                            std::vector<std::string> labels) {
  absl::MutexLock lock(&mu_);
  gauges_.push_back(std::make_unique<Family<Gauge>>(name, help, std::move(labels),
                                                     [] { return std::make_unique<Gauge>(); }));
  return gauges_.back().get();
}

Family<Histogram>* MetricsRegistry::HistogramFamily(const std::string& name,
                                                    const std::string& help,
                                                    std::vector<std::string> labels,
                                                    std::vector<double> bounds) {
  absl::MutexLock lock(&mu_);
  histograms_.push_back(std::make_unique<Family<Histogram>>(
      name, help, std::move(labels),
      [bounds] { return std::make_unique<Histogram>(bounds); }));
  return histograms_.back().get();
}

void MetricsRegistry::CallbackGauge(const std::string& name, const std::string& help,
                                    std::function<double()> value) {
  absl::MutexLock lock(&mu_);
  callbacks_.push_back({name, help, "gauge", {}, [value = std::move(value)] {
                          return Samples{{{}, value()}};
                        }});
}

void MetricsRegistry::CallbackCounter(const std::string& name, const std::string& help,
                                      std::function<double()> value) {
  absl::MutexLock lock(&mu_);
  callbacks_.push_back({name, help, "counter", {}, [value = std::move(value)] {
                          return Samples{{{}, value()}};
                        }});
}

void MetricsRegistry::CallbackGaugeFamily(const std::string& name, const std::string& help,
                                          std::vector<std::string> labels,
                                          std::function<Samples()> collect) {
  absl::MutexLock lock(&mu_);
  callbacks_.push_back({name, help, "gauge", std::move(labels), std::move(collect)});
}

namespace {

std::string Number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  // Byte counts and timestamps need every digit (StrCat keeps six).
  if (v == std::trunc(v) && std::fabs(v) < 9007199254740992.0) {
    return absl::StrCat(static_cast<int64_t>(v));
  }
  // The shortest of 15 or 17 digits that reads back as the same double.
  std::string text = absl::StrFormat("%.15g", v);
  if (std::strtod(text.c_str(), nullptr) != v) text = absl::StrFormat("%.17g", v);
  return text;
}

std::string Escape(const std::string& v) {
  return absl::StrReplaceAll(v, {{"\\", "\\\\"}, {"\"", "\\\""}, {"\n", "\\n"}});
}

// `{a="x",b="y"}` (with `extra` appended, e.g. le="0.5"); "" without labels.
std::string Labels(const std::vector<std::string>& names, const std::vector<std::string>& values,
                   const std::string& extra = "") {
  std::string out;
  for (size_t i = 0; i < names.size() && i < values.size(); ++i) {
    absl::StrAppend(&out, out.empty() ? "" : ",", names[i], "=\"", Escape(values[i]), "\"");
  }
  if (!extra.empty()) absl::StrAppend(&out, out.empty() ? "" : ",", extra);
  return out.empty() ? "" : absl::StrCat("{", out, "}");
}

void Head(std::string* out, const std::string& name, const std::string& help,
          const char* type) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

}  // namespace

std::string MetricsRegistry::Render() const {
  absl::MutexLock lock(&mu_);
  std::string out;
  for (const auto& f : counters_) {
    Head(&out, f->name(), f->help(), "counter");
    f->ForEach([&](const std::vector<std::string>& values, const Counter& c) {
      absl::StrAppend(&out, f->name(), Labels(f->labels(), values), " ", Number(c.value()), "\n");
    });
  }
  for (const auto& f : gauges_) {
    Head(&out, f->name(), f->help(), "gauge");
    f->ForEach([&](const std::vector<std::string>& values, const Gauge& g) {
      absl::StrAppend(&out, f->name(), Labels(f->labels(), values), " ", Number(g.value()), "\n");
    });
  }
  for (const auto& c : callbacks_) {
    Head(&out, c.name, c.help, c.type);
    for (const auto& [values, value] : c.collect()) {
      absl::StrAppend(&out, c.name, Labels(c.labels, values), " ", Number(value), "\n");
    }
  }
  for (const auto& f : histograms_) {
    Head(&out, f->name(), f->help(), "histogram");
    f->ForEach([&](const std::vector<std::string>& values, const Histogram& h) {
      std::vector<uint64_t> cumulative;
      double sum;
      uint64_t count;
      h.Read(&cumulative, &sum, &count);
      for (size_t i = 0; i < cumulative.size(); ++i) {
        const std::string le = i < h.bounds().size() ? Number(h.bounds()[i]) : "+Inf";
        absl::StrAppend(&out, f->name(), "_bucket",
                        Labels(f->labels(), values, absl::StrCat("le=\"", le, "\"")), " ",
                        cumulative[i], "\n");
      }
      absl::StrAppend(&out, f->name(), "_sum", Labels(f->labels(), values), " ", Number(sum),
                      "\n", f->name(), "_count", Labels(f->labels(), values), " ", count, "\n");
    });
  }
  return out;
}

}  // namespace psd
