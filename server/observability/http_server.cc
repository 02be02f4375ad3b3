#include "observability/http_server.h"

#include <chrono>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/ssl.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "boost/beast/ssl.hpp"

namespace psd {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

struct HttpServer::State {
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  std::unique_ptr<ssl::context> tls;  // null: plain HTTP
  const MetricsRegistry* metrics = nullptr;
  std::function<bool()> ready;
  std::function<std::string()> unhealthy_reason;
  std::chrono::milliseconds timeout{10000};
};

namespace {

http::response<http::string_body> Respond(const HttpServer::State& state,
                                          const http::request<http::string_body>& request);

// One connection: [TLS handshake,] one request, one response, close. The
// whole exchange runs under one deadline on the lowest layer.
template <typename Stream>
class Session : public std::enable_shared_from_this<Session<Stream>> {
 public:
  static constexpr bool kTls = !std::is_same_v<Stream, beast::tcp_stream>;

  template <typename... Args>
  Session(const HttpServer::State* state, Args&&... args)
      : state_(state), stream_(std::forward<Args>(args)...) {}

  void Run() {
    beast::get_lowest_layer(stream_).expires_after(state_->timeout);
    if constexpr (kTls) {
      stream_.async_handshake(ssl::stream_base::server,
                              [self = this->shared_from_this()](beast::error_code ec) {
                                if (!ec) self->Read();
                              });
    } else {
      Read();
    }
  }

 private:
  void Read() {
    http::async_read(stream_, buffer_, request_,
                     [self = this->shared_from_this()](beast::error_code ec, size_t) {
                       if (!ec) self->Write();
                     });
  }

  void Write() {
    response_ = Respond(*state_, request_);
    http::async_write(stream_, response_,
                      [self = this->shared_from_this()](beast::error_code, size_t) {
                        self->Close();
                      });
  }

  void Close() {
    if constexpr (kTls) {
      // Bounded by the same deadline; the socket closes with the session.
      stream_.async_shutdown([self = this->shared_from_this()](beast::error_code) {});
    } else {
      beast::error_code ec;
      stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    }
  }

  const HttpServer::State* const state_;
  Stream stream_;
  beast::flat_buffer buffer_;
  http::request<http::string_body> request_;
  http::response<http::string_body> response_;
};

http::response<http::string_body> Respond(const HttpServer::State& state,
                                          const http::request<http::string_body>& request) {
  http::response<http::string_body> response;
  response.version(request.version());
  response.keep_alive(false);
  response.set(http::field::server, "psd");
  response.set(http::field::content_type, "text/plain; charset=utf-8");
  const beast::string_view target = request.target();
  if (request.method() != http::verb::get) {
    response.result(http::status::method_not_allowed);
    response.body() = "only GET\n";
  } else if (target == "/metrics") {
    response.result(http::status::ok);
    response.set(http::field::content_type, "text/plain; version=0.0.4");
    response.body() = state.metrics->Render();
  } else if (target == "/healthz") {
    const std::string reason = state.unhealthy_reason ? state.unhealthy_reason() : std::string();
    response.result(reason.empty() ? http::status::ok : http::status::service_unavailable);
    response.body() = reason.empty() ? "ok\n" : "unhealthy: " + reason + "\n";
  } else if (target == "/readyz") {
    const bool ready = state.ready ? state.ready() : true;
    response.result(ready ? http::status::ok : http::status::service_unavailable);
    response.body() = ready ? "ready\n" : "not ready\n";
  } else {
    response.result(http::status::not_found);
    response.body() = "not found; try /metrics, /healthz or /readyz\n";
  }
  response.prepare_payload();
  return response;
}

void Accept(HttpServer::State* state) {
  state->acceptor.async_accept([state](beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted) return;
    if (!ec) {
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
  state->timeout = std::chrono::milliseconds(
      static_cast<int64_t>(options.connection_timeout_seconds * 1000));
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
  const bool tls = options.tls();
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(state), bound, tls));
}

HttpServer::HttpServer(std::unique_ptr<State> state, int port, bool tls)
    : state_(std::move(state)), port_(port), tls_(tls) {
  Accept(state_.get());
  thread_ = std::thread([this] { state_->io.run(); });
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
