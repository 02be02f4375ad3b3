// What every client channel checks before dialing (common/psd/internal/
// grpc_credentials.h): a target gRPC would take without complaint but that
// names no reachable server, and TLS files that are not PEM, fail at once
// with INVALID_ARGUMENT naming the value, rather than every call later with
// gRPC's unrelated "empty address list" or a deadline.
#include "psd/internal/grpc_credentials.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace psd {
namespace internal {
namespace {

using ::testing::HasSubstr;

TEST(CheckDialTargetTest, HostPortAndGrpcUrisAreTaken) {
  for (const char* target :
       {"127.0.0.1:7070", "localhost:1", "ps-0.psd.svc:65535", "[::1]:7070", "dns:///ps:7070",
        "ipv4:127.0.0.1:7070", "unix:/run/psd.sock", "unix-abstract:psd", "xds://ps"}) {
    EXPECT_TRUE(CheckDialTarget(target, "shard").ok()) << target;
  }
}

TEST(CheckDialTargetTest, TargetsThatNameNoServerAreInvalidArgumentNamingThem) {
  const std::pair<const char*, const char*> cases[] = {
      {"", "coordinator address is empty"},
      {"127.0.0.1:99999", "'127.0.0.1:99999': the port must be a number in [1, 65535]"},
      {"127.0.0.1:0", "the port must be a number in [1, 65535]"},
      {"127.0.0.1:-1", "the port must be a number"},
      {"127.0.0.1:http", "the port must be a number"},
      {"127.0.0.1", "'127.0.0.1' is not HOST:PORT"},
      {":7070", "is not HOST:PORT"},
      {"::1:7070", "an IPv6 host goes in brackets"},
  };
  for (const auto& [target, message] : cases) {
    const absl::Status s = CheckDialTarget(target, "coordinator");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << target;
    EXPECT_THAT(s.message(), HasSubstr(message)) << target;
  }
}

class TlsFilesTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& name, const std::string& contents) {
    const std::string path = ::testing::TempDir() + "/" + name;
    std::ofstream(path) << contents;
    return path;
  }
};

TEST_F(TlsFilesTest, ACaFileWithoutACertificateIsInvalidArgumentNamingIt) {
  ChannelSecurity security;
  security.tls_ca = Write("not_a_ca.pem", "root:x:0:0:root:/root:/bin/bash\n");
  auto credentials = MakeChannelCredentials(security);
  ASSERT_FALSE(credentials.ok());
  EXPECT_EQ(credentials.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(credentials.status().message(),
              HasSubstr("--tls-ca " + security.tls_ca + ": not a PEM file with a CERTIFICATE"));
  // A key given as the CA: PEM, but no certificate.
  security.tls_ca = Write("key_as_ca.pem",
                          "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
  credentials = MakeChannelCredentials(security);
  ASSERT_FALSE(credentials.ok());
  EXPECT_THAT(credentials.status().message(), HasSubstr("not a PEM file with a CERTIFICATE"));
}

TEST_F(TlsFilesTest, AKeyFileWithoutAPrivateKeyIsInvalidArgumentNamingIt) {
  const std::string cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
  ChannelSecurity security;
  security.tls_ca = Write("ca.pem", cert);
  security.tls_cert = Write("cert.pem", cert);
  security.tls_key = Write("cert_as_key.pem", cert);
  auto credentials = MakeChannelCredentials(security);
  ASSERT_FALSE(credentials.ok());
  EXPECT_EQ(credentials.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(credentials.status().message(),
              HasSubstr("--tls-key " + security.tls_key + ": not a PEM file with a PRIVATE KEY"));
  security.tls_key = Write("rsa.key",
                           "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n");
  EXPECT_TRUE(MakeChannelCredentials(security).ok());
}

}  // namespace
}  // namespace internal
}  // namespace psd
