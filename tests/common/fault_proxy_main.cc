// psd_fault_proxy: the FaultProxy (fault_proxy.h) as a program, for shell
// and Python tests. It forwards 127.0.0.1:<listen port> to --target (which
// must be loopback) and takes control lines (FaultProxy::Command: `delay
// 50ms`, `blackhole on`, `cut`, `refuse on`, `drop-after up 4096`, `heal`,
// `stats`, and `quit`) on stdin and, with --control-port-file, on a loopback
// control port; each line gets one reply line, "ok ..." or "error: ...".
//
//   psd_fault_proxy --target 127.0.0.1:7000 --port-file /tmp/p.port
//       [--control-port-file /tmp/p.control]
//
// It runs until SIGTERM or SIGINT, `quit`, or the end of stdin when there is
// no control port (so a parent that holds its stdin and dies takes it along).
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/synchronization/notification.h"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/read_until.hpp"
#include "boost/asio/streambuf.hpp"
#include "boost/asio/write.hpp"
#include "fault_proxy.h"

namespace {

using psd::testing::FaultProxy;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// Written whole or not at all: readers never see half a number.
bool WritePortFile(const std::string& path, int port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << port << "\n";
    if (!out.flush()) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

// Notify may be called once only, and several threads may end the program.
void Finish(absl::Notification* done) {
  static std::once_flag once;
  std::call_once(once, [done] { done->Notify(); });
}

// One reply line for one control line; `quit` notifies `done`.
std::string Reply(FaultProxy* proxy, const std::string& line, absl::Notification* done) {
  if (line.find_first_not_of(" \t\r") == std::string::npos) return "";
  if (line.rfind("quit", 0) == 0) {
    Finish(done);
    return "ok\n";
  }
  auto reply = proxy->Command(line);
  if (!reply.ok()) return "error: " + std::string(reply.status().message()) + "\n";
  return "ok" + (*reply == "ok" ? std::string() : " " + *reply) + "\n";
}

void ServeControlConnection(FaultProxy* proxy, tcp::socket socket, absl::Notification* done) {
  boost::system::error_code ec;
  asio::streambuf buffer(64 << 10);  // a longer line ends the connection
  while (!done->HasBeenNotified()) {
    asio::read_until(socket, buffer, '\n', ec);
    if (ec) return;
    std::istream in(&buffer);
    std::string line;
    std::getline(in, line);
    const std::string reply = Reply(proxy, line, done);
    if (!reply.empty()) asio::write(socket, asio::buffer(reply), ec);
    if (ec) return;
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"A fault-injecting TCP proxy on loopback, for tests"};
  psd::testing::FaultProxyOptions options;
  std::string port_file;
  std::string control_port_file;
  app.add_option("--target", options.target, "HOST:PORT to forward to (loopback only)")
      ->required();
  app.add_option("--listen-port", options.listen_port, "Loopback port to listen on (0: any free)")
      ->check(CLI::Range(0, 65535));
  app.add_option("--port-file", port_file, "After binding, write the proxy's port here");
  app.add_option("--control-port-file", control_port_file,
                 "Also take control lines on a loopback port, written here");
  app.add_option("--max-buffered-bytes", options.max_buffered_bytes,
                 "Bytes a connection holds per direction")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-connections", options.max_connections, "Connections open at once")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  // Signals are taken by one thread (sigwait): block them everywhere first.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto proxy = FaultProxy::Start(options);
  if (!proxy.ok()) {
    std::cerr << "psd_fault_proxy: " << proxy.status().message() << std::endl;
    return 1;
  }
  absl::Notification done;

  asio::io_context control_io;
  tcp::acceptor control(control_io);
  if (!control_port_file.empty()) {
    boost::system::error_code ec;
    const tcp::endpoint at(asio::ip::address_v4::loopback(), 0);
    control.open(at.protocol(), ec);
    if (!ec) control.bind(at, ec);
    if (!ec) control.listen(16, ec);
    if (ec || !WritePortFile(control_port_file, control.local_endpoint(ec).port())) {
      std::cerr << "psd_fault_proxy: control port: " << ec.message() << std::endl;
      return 1;
    }
    std::thread([&] {
      for (;;) {
        boost::system::error_code accept_ec;
        tcp::socket socket = control.accept(accept_ec);
        if (accept_ec) return;
        std::thread(ServeControlConnection, proxy->get(), std::move(socket), &done).detach();
      }
    }).detach();
  }
  if (!port_file.empty() && !WritePortFile(port_file, (*proxy)->port())) {
    std::cerr << "psd_fault_proxy: cannot write " << port_file << std::endl;
    return 1;
  }
  std::cerr << "psd_fault_proxy: 127.0.0.1:" << (*proxy)->port() << " -> " << options.target
            << std::endl;

  std::thread([&] {
    std::string line;
    while (std::getline(std::cin, line)) {
      const std::string reply = Reply(proxy->get(), line, &done);
      if (!reply.empty()) {
        std::cout << reply;
        std::cout.flush();
      }
      if (done.HasBeenNotified()) return;
    }
    if (control_port_file.empty()) Finish(&done);
  }).detach();
  std::thread([&] {
    int signal = 0;
    sigwait(&signals, &signal);
    Finish(&done);
  }).detach();

  done.WaitForNotification();
  proxy->reset();  // closes every proxied connection
  std::cout.flush();
  // Threads blocked on stdin or the control port are not waited for.
  _exit(0);
}
