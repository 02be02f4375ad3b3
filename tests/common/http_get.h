// HttpGet: one GET against a psd process's /metrics, /healthz or /readyz
// endpoint, over plain HTTP or over HTTPS verified against a CA file, plus a
// parser for the Prometheus text format, for the tests that scrape.
#ifndef PSD_TESTS_COMMON_HTTP_GET_H_
#define PSD_TESTS_COMMON_HTTP_GET_H_

#include <fstream>
#include <map>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/ssl.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "boost/beast/ssl.hpp"

namespace psd {
namespace testing_http {

struct HttpReply {
  int status = 0;
  std::string body;
};

// GET https://HOST:PORT/target when `ca_file` is set (the server's
// certificate must verify against it and name `host`), else plain HTTP;
// `authorization` (when set) is sent as the Authorization header.
inline absl::StatusOr<HttpReply> HttpGet(const std::string& host, int port,
                                         const std::string& target, const std::string& ca_file = "",
                                         const std::string& authorization = "") {
  namespace asio = boost::asio;
  namespace beast = boost::beast;
  namespace http = beast::http;
  namespace ssl = asio::ssl;
  asio::io_context io;
  beast::error_code ec;
  asio::ip::tcp::endpoint endpoint(asio::ip::make_address(host == "localhost" ? "127.0.0.1" : host, ec),
                                   static_cast<unsigned short>(port));
  if (ec) return absl::InvalidArgumentError(absl::StrCat("bad host ", host));
  http::request<http::string_body> request(http::verb::get, target, 11);
  request.set(http::field::host, host);
  if (!authorization.empty()) request.set(http::field::authorization, authorization);
  http::response<http::string_body> response;
  beast::flat_buffer buffer;
  const auto failed = [&](const char* step) {
    return absl::UnavailableError(absl::StrCat(step, " ", host, ":", port, target, ": ", ec.message()));
  };
  if (ca_file.empty()) {
    beast::tcp_stream stream(io);
    stream.expires_after(std::chrono::seconds(30));
    stream.connect(endpoint, ec);
    if (ec) return failed("connect");
    http::write(stream, request, ec);
    if (ec) return failed("write");
    http::read(stream, buffer, response, ec);
    if (ec) return failed("read");
  } else {
    ssl::context context(ssl::context::tls_client);
    context.load_verify_file(ca_file, ec);
    if (ec) return failed("load CA");
    context.set_verify_mode(ssl::verify_peer);
    beast::ssl_stream<beast::tcp_stream> stream(io, context);
    stream.set_verify_callback(ssl::host_name_verification(host));
    beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(30));
    beast::get_lowest_layer(stream).connect(endpoint, ec);
    if (ec) return failed("connect");
    stream.handshake(ssl::stream_base::client, ec);
    if (ec) return failed("tls handshake");
    http::write(stream, request, ec);
    if (ec) return failed("write");
    http::read(stream, buffer, response, ec);
    if (ec) return failed("read");
  }
  return HttpReply{static_cast<int>(response.result_int()), response.body()};
}

// Prometheus text format -> {"name{labels}" -> value}; comment lines are
// skipped. Fails on a line that is not "series value".
inline absl::StatusOr<std::map<std::string, double>> ParseMetrics(const std::string& text) {
  std::map<std::string, double> out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    double value;
    if (space == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("metrics line without a value: ", line));
    }
    const absl::string_view number = line.substr(space + 1);
    if (number == "+Inf") {
      value = HUGE_VAL;
    } else if (!absl::SimpleAtod(number, &value)) {
      return absl::InvalidArgumentError(absl::StrCat("metrics line with a bad value: ", line));
    }
    out[std::string(line.substr(0, space))] = value;
  }
  return out;
}

// The parsed /metrics of the process (plain HTTP on loopback) whose HTTP
// port is written in `port_file` (its --http-port-file).
inline absl::StatusOr<std::map<std::string, double>> ScrapeFromPortFile(
    const std::string& port_file) {
  std::ifstream in(port_file);
  int port = 0;
  if (!(in >> port) || port <= 0) {
    return absl::FailedPreconditionError(absl::StrCat("no HTTP port in ", port_file));
  }
  auto reply = HttpGet("127.0.0.1", port, "/metrics");
  if (!reply.ok()) return reply.status();
  return ParseMetrics(reply->body);
}

}  // namespace testing_http
}  // namespace psd

#endif  // PSD_TESTS_COMMON_HTTP_GET_H_
