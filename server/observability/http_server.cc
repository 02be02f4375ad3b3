#include "observability/http_server.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/ip/tcp.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"

namespace psd {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

struct HttpServer::State {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  const MetricsRegistry* metrics = nullptr;
  std::function<bool()> ready;
  std::atomic<bool> stopping{false};
};

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& listen,
                                                              const MetricsRegistry* metrics,
                                                              std::function<bool()> ready) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("http listen address '", listen,
                                                   "' is not HOST:PORT"));
  }
  std::string host = listen.substr(0, colon);
  if (host == "localhost") host = "127.0.0.1";
  boost::system::error_code ec;
  const asio::ip::address address = asio::ip::make_address(host, ec);
  if (ec || !address.is_loopback()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "http listen address '", listen,
        "': /metrics is served over plain HTTP and binds to loopback addresses only"));
  }
  auto state = std::make_unique<State>();
  state->metrics = metrics;
  state->ready = std::move(ready);
  tcp::endpoint endpoint(address, static_cast<unsigned short>(port));
  state->acceptor.open(endpoint.protocol(), ec);
  if (!ec) state->acceptor.bind(endpoint, ec);
  if (!ec) state->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat("cannot serve http on ", listen, ": ", ec.message()));
  }
  const int bound = state->acceptor.local_endpoint().port();
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(state), bound));
}

HttpServer::HttpServer(std::unique_ptr<State> state, int port)
    : state_(std::move(state)), port_(port), thread_([this] { Serve(); }) {}

HttpServer::~HttpServer() {
  state_->stopping.store(true);
  boost::system::error_code ec;
  // Closing the acceptor from another thread is not safe with blocking
  // Asio; waking the accept with a connection of our own is.
  tcp::socket wake(state_->io);
  wake.connect(tcp::endpoint(state_->acceptor.local_endpoint().address(), port_), ec);
  thread_.join();
}

void HttpServer::Serve() {
  for (;;) {
    boost::system::error_code ec;
    tcp::socket socket(state_->io);
    state_->acceptor.accept(socket, ec);
    if (state_->stopping.load()) return;
    if (ec) continue;
    boost::beast::flat_buffer buffer;
    http::request<http::string_body> request;
    http::read(socket, buffer, request, ec);
    if (ec) continue;
    http::response<http::string_body> response;
    response.version(request.version());
    response.keep_alive(false);
    response.set(http::field::server, "psd");
    const std::string target(request.target());
    if (request.method() != http::verb::get) {
      response.result(http::status::method_not_allowed);
      response.body() = "only GET\n";
    } else if (target == "/metrics") {
      response.result(http::status::ok);
      response.set(http::field::content_type, "text/plain; version=0.0.4");
      response.body() = state_->metrics->Render();
    } else if (target == "/healthz") {
      response.result(http::status::ok);
      response.body() = "ok\n";
    } else if (target == "/readyz") {
      const bool ready = state_->ready ? state_->ready() : true;
      response.result(ready ? http::status::ok : http::status::service_unavailable);
      response.body() = ready ? "ready\n" : "not ready\n";
    } else {
      response.result(http::status::not_found);
      response.body() = "not found; try /metrics, /healthz or /readyz\n";
    }
    response.prepare_payload();
    http::write(socket, response, ec);
    socket.shutdown(tcp::socket::shutdown_both, ec);
  }
}

}  // namespace psd
