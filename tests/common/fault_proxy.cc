#include "fault_proxy.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <future>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/steady_timer.hpp"
#include "boost/asio/write.hpp"

namespace psd {
namespace testing {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

// Largest read: a delay or a cut applies to whole chunks of at most this.
constexpr size_t kChunkBytes = 64 << 10;

int Index(FaultProxy::Direction d) { return d == FaultProxy::Direction::kUp ? 0 : 1; }

// An abortive close: the peer gets a reset, not an orderly end.
void Reset(tcp::socket& socket) {
  boost::system::error_code ignored;
  if (socket.is_open()) {
    socket.set_option(asio::socket_base::linger(true, 0), ignored);
    socket.close(ignored);
  }
}

absl::StatusOr<tcp::endpoint> ResolveLoopback(const std::string& target) {
  const size_t colon = target.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("fault proxy target \"", target, "\" is not HOST:PORT"));
  }
  std::string host = target.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  int port = 0;
  if (!absl::SimpleAtoi(target.substr(colon + 1), &port) || port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("fault proxy target \"", target, "\" has no valid port"));
  }
  asio::io_context io;
  tcp::resolver resolver(io);
  boost::system::error_code ec;
  const auto results = resolver.resolve(host, std::to_string(port), ec);
  if (ec || results.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("fault proxy target \"", target, "\": cannot resolve: ", ec.message()));
  }
  for (const auto& entry : results) {
    // Tests only: a proxy must never carry traffic off this machine.
    if (!entry.endpoint().address().is_loopback()) {
      return absl::InvalidArgumentError(
          absl::StrCat("fault proxy target \"", target, "\" is not loopback (",
                       entry.endpoint().address().to_string(), "): refused"));
    }
  }
  return results.begin()->endpoint();
}

}  // namespace

// The io thread's side: the acceptor and every connection.
class FaultProxy::Impl {
 public:
  class Connection;

  Impl(FaultProxy* owner, const FaultProxyOptions& options, tcp::endpoint target)
      : owner(owner), options(options), target(std::move(target)), acceptor(io),
        work(asio::make_work_guard(io)) {}

  void Accept();
  // Runs `fn` on the io thread and waits for it.
  void RunOnIo(std::function<void()> fn) {
    std::promise<void> done;
    asio::post(io, [&] {
      fn();
      done.set_value();
    });
    done.get_future().wait();
  }
  std::vector<std::shared_ptr<Connection>> Snapshot() const {
    return {connections.begin(), connections.end()};
  }

  // Declared first: destroyed last, after every socket.
  asio::io_context io;
  FaultProxy* const owner;
  const FaultProxyOptions options;
  const tcp::endpoint target;
  tcp::acceptor acceptor;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  // Io thread only.
  std::set<std::shared_ptr<Connection>> connections;
  bool stopping = false;
  std::unique_ptr<asio::steady_timer> accept_retry;
};

// One proxied connection: the accepted socket, the one to the target, and a
// pipe per direction. Io thread only.
class FaultProxy::Impl::Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Impl* impl, tcp::socket client)
      : impl_(impl),
        sockets_{std::move(client), tcp::socket(impl->io)},
        timers_{asio::steady_timer(impl->io), asio::steady_timer(impl->io)} {}

  void Start() {
    auto self = shared_from_this();
    sockets_[1].async_connect(impl_->target, [self](const boost::system::error_code& ec) {
      if (self->closed_) return;
      if (ec) {
        self->impl_->owner->refused_.fetch_add(1);
        self->Close(/*reset=*/true);
        return;
      }
      self->impl_->owner->accepted_.fetch_add(1);
      boost::system::error_code ignored;
      for (auto& s : self->sockets_) s.set_option(tcp::no_delay(true), ignored);
      self->connected_ = true;
      self->Read(0);
      self->Read(1);
    });
  }

  // A fault: reset both sides.
  void Cut() {
    if (closed_) return;
    impl_->owner->cuts_.fetch_add(1);
    Close(/*reset=*/true);
  }

  // Settings changed: move whatever may move now.
  void Wake() {
    for (int d = 0; d < 2; ++d) {
      Read(d);
      Pump(d);
    }
  }

  void Close(bool reset) {
    if (closed_) return;
    closed_ = true;
    for (auto& s : sockets_) {
      if (reset) {
        Reset(s);
      } else {
        boost::system::error_code ignored;
        s.close(ignored);
      }
    }
    for (auto& t : timers_) t.cancel();
    impl_->owner->open_.fetch_sub(1);
    impl_->connections.erase(shared_from_this());
  }

 private:
  struct Chunk {
    std::vector<char> bytes;
    size_t offset = 0;
    Clock::time_point release;
  };
  struct Pipe {
    std::deque<Chunk> queue;
    int64_t queued = 0;
    bool reading = false;
    bool writing = false;
    bool waiting = false;  // on the timer, for the head's release
    bool eof = false;      // the sender finished
    bool shut = false;     // the finish was passed on
    int64_t drop_generation = -1;
    int64_t drop_left = 0;  // 0: no limit
  };

  // Direction d reads sockets_[d] and writes sockets_[1 - d].
  void Read(int d) {
    Pipe& p = pipes_[d];
    if (closed_ || !connected_ || p.reading || p.eof || p.queued >= impl_->options.max_buffered_bytes) {
      return;
    }
    p.reading = true;
    // Never more than the cap: a held direction holds at most that much.
    auto buffer = std::make_shared<std::vector<char>>(std::min<int64_t>(
        kChunkBytes, impl_->options.max_buffered_bytes - p.queued));
    auto self = shared_from_this();
    sockets_[d].async_read_some(
        asio::buffer(*buffer), [self, d, buffer](const boost::system::error_code& ec, size_t n) {
          Pipe& p = self->pipes_[d];
          p.reading = false;
          if (self->closed_) return;
          if (ec == asio::error::eof) {
            p.eof = true;
            self->Pump(d);
            return;
          }
          if (ec) {
            // The sender went away abruptly: so does its peer.
            self->Close(/*reset=*/true);
            return;
          }
          buffer->resize(n);
          absl::Duration delay;
          {
            absl::MutexLock lock(&self->impl_->owner->mu_);
            delay = self->impl_->owner->settings_.delay[d];
          }
          Chunk chunk;
          chunk.bytes = std::move(*buffer);
          chunk.release = Clock::now() + absl::ToChronoNanoseconds(delay);
          p.queued += static_cast<int64_t>(n);
          p.queue.push_back(std::move(chunk));
          self->Pump(d);
          self->Read(d);
        });
  }

  // Forwards the head of direction d's queue when its time has come and no
  // fault holds it.
  void Pump(int d) {
    Pipe& p = pipes_[d];
    if (closed_ || !connected_ || p.writing || p.waiting) return;
    FaultProxy* owner = impl_->owner;
    if (p.queue.empty()) {
      if (p.eof && !p.shut) {
        bool blackhole;
        {
          absl::MutexLock lock(&owner->mu_);
          blackhole = owner->settings_.blackhole[d];
        }
        if (blackhole) return;  // the finish is held like the bytes
        p.shut = true;
        boost::system::error_code ignored;
        sockets_[1 - d].shutdown(tcp::socket::shutdown_send, ignored);
        if (pipes_[1 - d].shut) Close(/*reset=*/false);
      }
      return;
    }
    Chunk& head = p.queue.front();
    const Clock::time_point now = Clock::now();
    if (head.release > now) {
      p.waiting = true;
      timers_[d].expires_at(head.release);
      auto self = shared_from_this();
      timers_[d].async_wait([self, d](const boost::system::error_code&) {
        self->pipes_[d].waiting = false;
        self->Pump(d);
      });
      return;
    }
    size_t take = head.bytes.size() - head.offset;
    bool cut_after = false;
    {
      absl::MutexLock lock(&owner->mu_);
      Settings& s = owner->settings_;
      if (s.blackhole[d]) return;
      if (p.drop_generation != s.drop_generation[d]) {
        p.drop_generation = s.drop_generation[d];
        p.drop_left = s.drop_after[d];
      }
      if (p.drop_left > 0) {
        take = std::min<size_t>(take, static_cast<size_t>(p.drop_left));
        p.drop_left -= static_cast<int64_t>(take);
        if (p.drop_left == 0) cut_after = true;
      }
      if (s.cut_after[d] > 0) {
        take = std::min<size_t>(take, static_cast<size_t>(s.cut_after[d]));
        s.cut_after[d] -= static_cast<int64_t>(take);
        if (s.cut_after[d] == 0) cut_after = true;
      }
    }
    p.writing = true;
    auto self = shared_from_this();
    asio::async_write(
        sockets_[1 - d], asio::buffer(head.bytes.data() + head.offset, take),
        [self, d, take, cut_after](const boost::system::error_code& ec, size_t) {
          Pipe& p = self->pipes_[d];
          p.writing = false;
          if (self->closed_) return;
          if (ec) {
            self->Close(/*reset=*/true);
            return;
          }
          self->impl_->owner->bytes_[d].fetch_add(static_cast<int64_t>(take));
          Chunk& head = p.queue.front();
          head.offset += take;
          p.queued -= static_cast<int64_t>(take);
          if (head.offset == head.bytes.size()) p.queue.pop_front();
          if (cut_after) {
            self->Cut();
            return;
          }
          self->Read(d);
          self->Pump(d);
        });
  }

  Impl* const impl_;
  tcp::socket sockets_[2];  // [0]: the accepted one; [1]: to the target
  asio::steady_timer timers_[2];
  Pipe pipes_[2];
  bool connected_ = false;
  bool closed_ = false;
};

void FaultProxy::Impl::Accept() {
  acceptor.async_accept([this](const boost::system::error_code& ec, tcp::socket socket) {
    if (stopping || ec == asio::error::operation_aborted) return;
    if (ec) {
      // Out of descriptors, say: try again shortly rather than spin.
      accept_retry = std::make_unique<asio::steady_timer>(io, std::chrono::milliseconds(10));
      accept_retry->async_wait([this](const boost::system::error_code& wait_ec) {
        if (!wait_ec && !stopping) Accept();
      });
      return;
    }
    bool refuse;
    {
      absl::MutexLock lock(&owner->mu_);
      refuse = owner->settings_.refuse;
    }
    if (refuse || connections.size() >= static_cast<size_t>(options.max_connections)) {
      owner->refused_.fetch_add(1);
      Reset(socket);
    } else {
      auto connection = std::make_shared<Connection>(this, std::move(socket));
      connections.insert(connection);
      owner->open_.fetch_add(1);
      connection->Start();
    }
    Accept();
  });
}

absl::StatusOr<std::unique_ptr<FaultProxy>> FaultProxy::Start(int target_port) {
  FaultProxyOptions options;
  options.target = absl::StrCat("127.0.0.1:", target_port);
  return Start(options);
}

absl::StatusOr<std::unique_ptr<FaultProxy>> FaultProxy::Start(const FaultProxyOptions& options) {
  if (options.max_buffered_bytes <= 0 || options.max_connections <= 0) {
    return absl::InvalidArgumentError(
        "fault proxy: max_buffered_bytes and max_connections must be positive");
  }
  if (options.listen_port < 0 || options.listen_port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("fault proxy: listen port ", options.listen_port, " is out of range"));
  }
  auto target = ResolveLoopback(options.target);
  if (!target.ok()) return target.status();
  std::unique_ptr<FaultProxy> proxy(new FaultProxy());
  proxy->impl_ = std::make_unique<Impl>(proxy.get(), options, *target);
  Impl& impl = *proxy->impl_;
  boost::system::error_code ec;
  const tcp::endpoint listen(asio::ip::address_v4::loopback(),
                             static_cast<uint16_t>(options.listen_port));
  impl.acceptor.open(listen.protocol(), ec);
  if (!ec) impl.acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl.acceptor.bind(listen, ec);
  if (!ec) impl.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("fault proxy: cannot listen on 127.0.0.1:", options.listen_port, ": ",
                     ec.message()));
  }
  proxy->port_ = impl.acceptor.local_endpoint(ec).port();
  impl.Accept();
  proxy->thread_ = std::thread([io = &impl.io] { io->run(); });
  return proxy;
}

FaultProxy::~FaultProxy() {
  if (impl_ == nullptr) return;
  impl_->RunOnIo([impl = impl_.get()] {
    impl->stopping = true;
    boost::system::error_code ignored;
    impl->acceptor.close(ignored);
    if (impl->accept_retry) impl->accept_retry->cancel();
    for (auto& c : impl->Snapshot()) c->Close(/*reset=*/true);
    impl->work.reset();
  });
  // Every operation was cancelled: run() returns once their handlers ran.
  thread_.join();
}

std::string FaultProxy::address() const { return absl::StrCat("127.0.0.1:", port_); }

void FaultProxy::Wake() {
  asio::post(impl_->io, [impl = impl_.get()] {
    for (auto& c : impl->Snapshot()) c->Wake();
  });
}

void FaultProxy::SetDelay(absl::Duration delay) {
  SetDelay(Direction::kUp, delay);
  SetDelay(Direction::kDown, delay);
}

void FaultProxy::SetDelay(Direction direction, absl::Duration delay) {
  absl::MutexLock lock(&mu_);
  settings_.delay[Index(direction)] = std::max(delay, absl::ZeroDuration());
}

void FaultProxy::SetBlackhole(bool on) {
  SetBlackhole(Direction::kUp, on);
  SetBlackhole(Direction::kDown, on);
}

void FaultProxy::SetBlackhole(Direction direction, bool on) {
  {
    absl::MutexLock lock(&mu_);
    settings_.blackhole[Index(direction)] = on;
  }
  Wake();
}

void FaultProxy::SetDropAfterBytes(Direction direction, int64_t bytes) {
  {
    absl::MutexLock lock(&mu_);
    settings_.drop_after[Index(direction)] = std::max<int64_t>(bytes, 0);
    ++settings_.drop_generation[Index(direction)];
  }
  Wake();
}

void FaultProxy::CutAfterBytes(Direction direction, int64_t bytes) {
  {
    absl::MutexLock lock(&mu_);
    settings_.cut_after[Index(direction)] = std::max<int64_t>(bytes, 0);
  }
  Wake();
}

void FaultProxy::SetRefuse(bool on) {
  absl::MutexLock lock(&mu_);
  settings_.refuse = on;
}

void FaultProxy::CutAll() {
  impl_->RunOnIo([impl = impl_.get()] {
    for (auto& c : impl->Snapshot()) c->Cut();
  });
}

void FaultProxy::Heal() {
  {
    absl::MutexLock lock(&mu_);
    const int64_t generations[2] = {settings_.drop_generation[0] + 1,
                                    settings_.drop_generation[1] + 1};
    settings_ = Settings();
    settings_.drop_generation[0] = generations[0];
    settings_.drop_generation[1] = generations[1];
  }
  impl_->RunOnIo([impl = impl_.get()] {
    for (auto& c : impl->Snapshot()) c->Wake();
  });
}

FaultProxyStats FaultProxy::stats() const {
  FaultProxyStats s;
  s.accepted = accepted_.load();
  s.refused = refused_.load();
  s.open = open_.load();
  s.cuts = cuts_.load();
  s.bytes_up = bytes_[0].load();
  s.bytes_down = bytes_[1].load();
  return s;
}

absl::StatusOr<std::string> FaultProxy::Command(absl::string_view line) {
  std::vector<std::string> words =
      absl::StrSplit(line, absl::ByAnyChar(" \t\r\n"), absl::SkipEmpty());
  if (words.empty()) return absl::InvalidArgumentError("empty command");
  for (auto& w : words) absl::AsciiStrToLower(&w);
  const std::string& verb = words[0];
  // The optional direction after the verb.
  std::optional<Direction> direction;
  size_t arg = 1;
  if (words.size() > 2 && (words[1] == "up" || words[1] == "down")) {
    direction = words[1] == "up" ? Direction::kUp : Direction::kDown;
    arg = 2;
  }
  auto want_args = [&](size_t n) -> absl::Status {
    if (words.size() != arg + n) {
      return absl::InvalidArgumentError(absl::StrCat("\"", line, "\": ", verb, " takes ", n,
                                                     " argument", n == 1 ? "" : "s"));
    }
    return absl::OkStatus();
  };
  auto on_off = [&](bool* on) -> absl::Status {
    if (auto s = want_args(1); !s.ok()) return s;
    if (words[arg] != "on" && words[arg] != "off") {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", line, "\": expected on or off, not \"", words[arg], "\""));
    }
    *on = words[arg] == "on";
    return absl::OkStatus();
  };
  auto bytes = [&](int64_t* n) -> absl::Status {
    if (auto s = want_args(1); !s.ok()) return s;
    if (!absl::SimpleAtoi(words[arg], n) || *n < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", line, "\": \"", words[arg], "\" is not a byte count"));
    }
    return absl::OkStatus();
  };
  auto each = [&](auto&& fn) {
    if (direction) {
      fn(*direction);
    } else {
      fn(Direction::kUp);
      fn(Direction::kDown);
    }
  };
  if (verb == "delay") {
    if (auto s = want_args(1); !s.ok()) return s;
    absl::Duration d;
    if (words[arg] == "0") {
      d = absl::ZeroDuration();
    } else if (!absl::ParseDuration(words[arg], &d) || d < absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", line, "\": \"", words[arg], "\" is not a duration (e.g. 50ms)"));
    }
    each([&](Direction dir) { SetDelay(dir, d); });
  } else if (verb == "blackhole") {
    bool on;
    if (auto s = on_off(&on); !s.ok()) return s;
    each([&](Direction dir) { SetBlackhole(dir, on); });
  } else if (verb == "drop-after") {
    int64_t n;
    if (auto s = bytes(&n); !s.ok()) return s;
    each([&](Direction dir) { SetDropAfterBytes(dir, n); });
  } else if (verb == "cut-after") {
    int64_t n;
    if (auto s = bytes(&n); !s.ok()) return s;
    each([&](Direction dir) { CutAfterBytes(dir, n); });
  } else if (verb == "refuse") {
    if (direction) return absl::InvalidArgumentError("refuse takes no direction");
    bool on;
    if (auto s = on_off(&on); !s.ok()) return s;
    SetRefuse(on);
  } else if (verb == "cut" || verb == "heal" || verb == "stats") {
    if (auto s = want_args(0); !s.ok()) return s;
    if (verb == "cut") CutAll();
    if (verb == "heal") Heal();
    if (verb == "stats") {
      const FaultProxyStats s = stats();
      return absl::StrCat("accepted=", s.accepted, " refused=", s.refused, " open=", s.open,
                          " cuts=", s.cuts, " bytes_up=", s.bytes_up, " bytes_down=", s.bytes_down);
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown command \"", verb,
        "\" (delay, blackhole, drop-after, cut-after, refuse, cut, heal, stats)"));
  }
  return std::string("ok");
}

}  // namespace testing
}  // namespace psd
