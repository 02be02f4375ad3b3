#include "observability/http_server.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <exception>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/ssl.hpp"
#include "boost/asio/steady_timer.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "boost/beast/ssl.hpp"
#include "spdlog/spdlog.h"

namespace psd {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

namespace {

// After the response, how long a plain-HTTP connection is drained of what
// the client still sends (a pipelined request, the rest of a refused body)
// before it is closed: closing a socket with unread input sends a reset,
// which can destroy the response before the client has read it.
constexpr std::chrono::milliseconds kLingerTimeout{1000};
constexpr size_t kLingerMaxBytes = 1 << 20;

std::chrono::milliseconds Millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(std::max(0.001, seconds) * 1000));
}

}  // namespace

struct HttpServer::State {
  // Connection accounting, touched only on the server's thread (the
  // io_context runs on one). Declared before `io` so that sessions destroyed
  // with the io_context can still count themselves out.
  int open_connections = 0;
  int max_connections = kDefaultHttpMaxConnections;
  int64_t refused_in_burst = 0;          // closed at the cap since the last one served
  int64_t accept_failures_in_burst = 0;  // failed accepts since the last success
  std::unique_ptr<ssl::context> tls;     // null: plain HTTP
  const MetricsRegistry* metrics = nullptr;
  std::function<bool()> ready;
  std::function<std::string()> unhealthy_reason;
  HttpHandler handler;
  std::chrono::milliseconds read_timeout{5000};
  std::chrono::milliseconds write_timeout{10000};
  int port = 0;

  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  asio::steady_timer accept_retry{io};
};

namespace {

using Response = http::response<http::string_body>;

Response PlainResponse(http::status status, unsigned version, std::string body) {
  Response response;
  response.version(version == 10 ? 10 : 11);
  response.keep_alive(false);
  response.set(http::field::server, "psd");
  response.set(http::field::content_type, "text/plain; charset=utf-8");
  response.result(status);
  response.body() = std::move(body);
  response.prepare_payload();
  return response;
}

Response Route(const HttpServer::State& state, const http::request<http::string_body>& request) {
  const unsigned version = request.version();
  const beast::string_view target = request.target();
  if (request.method() != http::verb::get && request.method() != http::verb::head) {
    Response response =
        PlainResponse(http::status::method_not_allowed, version, "only GET and HEAD\n");
    response.set(http::field::allow, "GET, HEAD");
    return response;
  }
  if (target == "/metrics") {
    Response response = PlainResponse(http::status::ok, version,
                                      state.metrics != nullptr ? state.metrics->Render() : "");
    response.set(http::field::content_type, "text/plain; version=0.0.4");
    return response;
  }
  if (target == "/healthz") {
    const std::string reason = state.unhealthy_reason ? state.unhealthy_reason() : std::string();
    return reason.empty() ? PlainResponse(http::status::ok, version, "ok\n")
                          : PlainResponse(http::status::service_unavailable, version,
                                          "unhealthy: " + reason + "\n");
  }
  if (target == "/readyz") {
    const bool ready = state.ready ? state.ready() : true;
    return PlainResponse(ready ? http::status::ok : http::status::service_unavailable, version,
                         ready ? "ready\n" : "not ready\n");
  }
  if (state.handler) {
    HttpRequest handled;
    handled.method = request.method() == http::verb::head ? "HEAD" : "GET";
    handled.target = std::string(target);
    if (auto it = request.find(http::field::authorization); it != request.end()) {
      handled.authorization = std::string(it->value());
    }
    if (std::optional<HttpResponse> answer = state.handler(handled)) {
      Response response = PlainResponse(static_cast<http::status>(answer->status), version,
                                        std::move(answer->body));
      response.set(http::field::content_type, answer->content_type);
      for (const auto& [name, value] : answer->headers) response.set(name, value);
      return response;
    }
  }
  return PlainResponse(http::status::not_found, version,
                       "not found; try /metrics, /healthz or /readyz\n");
}

// GET's answer without its body (the Content-Length stays GET's).
Response Head(Response response) {
  const size_t length = response.body().size();
  response.body().clear();
  response.content_length(length);
  return response;
}

// Never throws: a handler that fails answers 500.
Response Respond(const HttpServer::State& state, const http::request<http::string_body>& request) {
  try {
    if (request.method() == http::verb::head) return Head(Route(state, request));
    return Route(state, request);
  } catch (const std::exception& e) {
    spdlog::error("http: {} failed: {}", std::string(request.target()), e.what());
  } catch (...) {
    spdlog::error("http: {} failed", std::string(request.target()));
  }
  return PlainResponse(http::status::internal_server_error, 11, "internal error\n");
}

// The answer to a request that could not be read, or nothing (false) when
// there is no one to answer: the peer closed or reset the connection, or
// sent nothing before the deadline.
bool ErrorResponse(const beast::error_code& ec, bool got_bytes, bool timed_out,
                   Response* response) {
  if (timed_out) {
    if (!got_bytes) return false;
    *response = PlainResponse(http::status::request_timeout, 11,
                              "request not complete before the read deadline\n");
    return true;
  }
  if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
    *response =
        PlainResponse(http::status::request_header_fields_too_large, 11,
                      absl::StrCat("request headers over ", kHttpMaxHeaderBytes, " bytes\n"));
    return true;
  }
  if (ec == http::error::body_limit) {
    *response = PlainResponse(http::status::payload_too_large, 11,
                              absl::StrCat("request body over ", kHttpMaxBodyBytes, " bytes\n"));
    return true;
  }
  if (ec == http::error::end_of_stream) return false;  // closed before a byte
  if (ec.category() == http::make_error_code(http::error::bad_target).category()) {
    *response = PlainResponse(http::status::bad_request, 11,
                              "not an HTTP/1.x request (" + ec.message() + ")\n");
    return true;
  }
  return false;  // a socket error: the connection is gone
}

// One connection: [TLS handshake,] one request, one response, close. Reading
// has a deadline from accept (a timer that cancels the read), writing and
// closing another (the stream's own expiry). Counts itself in the state's
// open connections for its lifetime. Runs on the server's thread only.
template <typename Stream>
class Session : public std::enable_shared_from_this<Session<Stream>> {
 public:
  static constexpr bool kTls = !std::is_same_v<Stream, beast::tcp_stream>;

  template <typename... Args>
  Session(HttpServer::State* state, Args&&... args)
      : state_(state), stream_(std::forward<Args>(args)...), read_deadline_(state->io) {
    ++state_->open_connections;
    parser_.header_limit(kHttpMaxHeaderBytes);
    parser_.body_limit(kHttpMaxBodyBytes);
  }
  ~Session() { --state_->open_connections; }

  void Run() {
    read_deadline_.expires_after(state_->read_timeout);
    read_deadline_.async_wait([self = this->shared_from_this()](beast::error_code ec) {
      if (ec == asio::error::operation_aborted || self->read_done_) return;
      self->timed_out_ = true;
      beast::get_lowest_layer(self->stream_).cancel();
    });
    if constexpr (kTls) {
      stream_.async_handshake(ssl::stream_base::server,
                              [self = this->shared_from_this()](beast::error_code ec) {
                                if (ec) {
                                  self->read_deadline_.cancel();
                                  return;
                                }
                                self->Read();
                              });
    } else {
      Read();
    }
  }

 private:
  void Read() {
    http::async_read(
        stream_, buffer_, parser_,
        [self = this->shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    read_done_ = true;
    read_deadline_.cancel();
    if (!ec) {
      response_ = Respond(*state_, parser_.get());
    } else {
      // After a timed-out or failed TLS read the session is not reliably
      // writable: close it.
      if (kTls && timed_out_) return;
      if (!ErrorResponse(ec, parser_.got_some() || buffer_.size() > 0, timed_out_, &response_)) {
        return;
      }
    }
    Write();
  }

  void Write() {
    beast::get_lowest_layer(stream_).expires_after(state_->write_timeout);
    http::async_write(stream_, response_,
                      [self = this->shared_from_this()](beast::error_code ec, size_t) {
                        if (!ec) self->Close();
                      });
  }

  void Close() {
    if constexpr (kTls) {
      // Bounded by the write deadline; the socket closes with the session.
      stream_.async_shutdown([self = this->shared_from_this()](beast::error_code) {});
    } else {
      beast::error_code ec;
      stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
      if (ec) return;
      beast::get_lowest_layer(stream_).expires_after(
          std::min<std::chrono::milliseconds>(kLingerTimeout, state_->write_timeout));
      Drain();
    }
  }

  // Reads and drops what the client still sends until it closes, the linger
  // deadline passes or kLingerMaxBytes were dropped.
  void Drain() {
    stream_.async_read_some(asio::buffer(drain_),
                            [self = this->shared_from_this()](beast::error_code ec, size_t n) {
                              self->drained_ += n;
                              if (!ec && self->drained_ < kLingerMaxBytes) self->Drain();
                            });
  }

  HttpServer::State* const state_;
  Stream stream_;
  asio::steady_timer read_deadline_;
  bool read_done_ = false;
  bool timed_out_ = false;
  beast::flat_buffer buffer_{kHttpMaxHeaderBytes + kHttpMaxBodyBytes};
  http::request_parser<http::string_body> parser_;
  Response response_;
  std::array<char, 4096> drain_;
  size_t drained_ = 0;
};

// Errors after which accepting again at once would fail again on the same
// pending connection: the process (or system) is out of descriptors or
// memory. Any other error is treated the same way: a short wait costs
// nothing, a spinning acceptor costs a core.
void AcceptLater(HttpServer::State* state, const beast::error_code& ec);

void Accept(HttpServer::State* state) {
  state->acceptor.async_accept([state](beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted) return;
    if (ec) {
      AcceptLater(state, ec);
      return;
    }
    if (state->accept_failures_in_burst > 0) {
      spdlog::info("http: port {} accepting again after {} failed accepts", state->port,
                   state->accept_failures_in_burst);
      state->accept_failures_in_burst = 0;
    }
    if (state->open_connections >= state->max_connections) {
      // Closed at once: the client sees the connection close, and no
      // descriptor is held for it.
      if (state->refused_in_burst++ == 0) {
        spdlog::warn(
            "http: port {} has {} connections open, the limit (--http-max-connections); closing "
            "new ones until some finish",
            state->port, state->open_connections);
      }
      beast::error_code ignored;
      socket.close(ignored);
    } else {
      if (state->refused_in_burst > 0) {
        spdlog::info("http: port {} serving again; {} connections were closed at the limit of {}",
                     state->port, state->refused_in_burst, state->max_connections);
        state->refused_in_burst = 0;
      }
      if (state->tls != nullptr) {
        std::make_shared<Session<beast::ssl_stream<beast::tcp_stream>>>(
            state, beast::tcp_stream(std::move(socket)), *state->tls)
            ->Run();
      } else {
        std::make_shared<Session<beast::tcp_stream>>(state, std::move(socket))->Run();
      }
    }
    Accept(state);
  });
}

void AcceptLater(HttpServer::State* state, const beast::error_code& ec) {
  if (state->accept_failures_in_burst++ == 0) {
    spdlog::warn("http: port {} cannot accept connections ({}); retrying every {} ms", state->port,
                 ec.message(), kAcceptRetryDelay.count());
  }
  state->accept_retry.expires_after(kAcceptRetryDelay);
  state->accept_retry.async_wait([state](beast::error_code wait_ec) {
    if (wait_ec == asio::error::operation_aborted) return;
    Accept(state);
  });
}

absl::StatusOr<std::unique_ptr<ssl::context>> TlsContext(const HttpServerOptions& options) {
  if (options.tls_key.empty()) {
    return absl::InvalidArgumentError("https: a certificate was given without its key");
  }
  auto context = std::make_unique<ssl::context>(ssl::context::tls_server);
  context->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                       ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                       ssl::context::no_tlsv1_1);
  boost::system::error_code ec;
  context->use_certificate_chain_file(options.tls_cert, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("https: cannot load certificate ", options.tls_cert, ": ", ec.message()));
  }
  context->use_private_key_file(options.tls_key, ssl::context::pem, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("https: cannot load key ", options.tls_key, ": ", ec.message()));
  }
  return context;
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& listen,
                                                              const MetricsRegistry* metrics,
                                                              std::function<bool()> ready) {
  HttpServerOptions options;
  options.listen = listen;
  return Start(options, metrics, std::move(ready));
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options,
                                                              const MetricsRegistry* metrics,
                                                              std::function<bool()> ready) {
  const std::string& listen = options.listen;
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("http listen address '", listen,
                                                   "' is not HOST:PORT"));
  }
  std::string host = listen.substr(0, colon);
  if (host == "localhost") host = "127.0.0.1";
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  boost::system::error_code ec;
  const asio::ip::address address = asio::ip::make_address(host, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("http listen address '", listen, "': '", host, "' is not an IP address"));
  }
  if (!options.tls() && !address.is_loopback()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "http listen address '", listen,
        "': without TLS, /metrics is served over plain HTTP and binds to loopback addresses "
        "only (give the server a certificate for HTTPS)"));
  }
  auto state = std::make_unique<State>();
  state->metrics = metrics;
  state->ready = std::move(ready);
  state->unhealthy_reason = options.unhealthy_reason;
  state->handler = options.handler;
  if (options.max_connections < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("http max connections must be >= 1, not ", options.max_connections));
  }
  state->max_connections = options.max_connections;
  state->read_timeout = Millis(options.read_timeout_seconds);
  state->write_timeout = Millis(options.write_timeout_seconds);
  if (options.tls()) {
    auto context = TlsContext(options);
    if (!context.ok()) return context.status();
    state->tls = *std::move(context);
  }
  tcp::endpoint endpoint(address, static_cast<unsigned short>(port));
  state->acceptor.open(endpoint.protocol(), ec);
  if (!ec) state->acceptor.bind(endpoint, ec);
  if (!ec) state->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat("cannot serve http on ", listen, ": ", ec.message()));
  }
  const int bound = state->acceptor.local_endpoint().port();
  state->port = bound;
  const bool tls = options.tls();
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(state), bound, tls));
}

HttpServer::HttpServer(std::unique_ptr<State> state, int port, bool tls)
    : state_(std::move(state)), port_(port), tls_(tls) {
  Accept(state_.get());
  thread_ = std::thread([this] {
    // An exception out of a handler (none is expected: each catches its
    // own) must not end the thread, which would std::terminate the process.
    for (;;) {
      try {
        state_->io.run();
        return;
      } catch (const std::exception& e) {
        spdlog::error("http: port {}: {}", port_, e.what());
      } catch (...) {
        spdlog::error("http: port {}: unknown exception", port_);
      }
    }
  });
}

HttpServer::~HttpServer() {
  State* state = state_.get();
  asio::post(state->io, [state] {
    boost::system::error_code ec;
    state->acceptor.close(ec);
  });
  state->io.stop();
  thread_.join();
  // Connections still open are dropped with the io_context (in State).
}

}  // namespace psd
