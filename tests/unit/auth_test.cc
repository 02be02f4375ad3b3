// Token files, role lookup from the proto options, the one authorization
// function, and the bind policy (server/runtime/auth.h, common/psd/tokens.h).
#include "runtime/auth.h"

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "psd/tokens.h"

namespace psd {
namespace {

TEST(TokenFileTest, ParsesRolesCommentsAndBlankLines) {
  auto entries = ParseTokenFile("# comment\n\ntrainer  t1\nadmin a1 # trailing\n\tnode n1\n", "f");
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 3u);
  EXPECT_EQ((*entries)[0].role, ROLE_TRAINER);
  EXPECT_EQ((*entries)[0].token, "t1");
  EXPECT_EQ((*entries)[1].role, ROLE_ADMIN);
  EXPECT_EQ((*entries)[2].role, ROLE_NODE);
  EXPECT_EQ((*entries)[2].token, "n1");
}

TEST(TokenFileTest, UnknownRoleNamesFileAndLineNotToken) {
  auto entries = ParseTokenFile("trainer t1\nroot secret-token-1\n", "tokens.txt");
  ASSERT_FALSE(entries.ok());
  EXPECT_TRUE(absl::StrContains(entries.status().message(), "tokens.txt:2"));
  EXPECT_FALSE(absl::StrContains(entries.status().message(), "secret-token-1"));
}

TEST(TokenFileTest, MalformedLineNamesFileAndLineNotToken) {
  auto entries = ParseTokenFile("secret-token-2\n", "tokens.txt");
  ASSERT_FALSE(entries.ok());
  EXPECT_TRUE(absl::StrContains(entries.status().message(), "tokens.txt:1"));
  EXPECT_FALSE(absl::StrContains(entries.status().message(), "secret-token-2"));
  EXPECT_FALSE(ParseTokenFile("admin a b\n", "f").ok());
  EXPECT_FALSE(ParseTokenFile("# only a comment\n", "f").ok());
}

TEST(TokenFileTest, ClientTokenFromBareOrRoleFile) {
  EXPECT_EQ(*ParseClientToken("# mine\n  tok \n", "f", ""), "tok");
  EXPECT_EQ(*ParseClientToken("trainer t1\nnode n1\n", "f", ""), "t1");
  EXPECT_EQ(*ParseClientToken("trainer t1\nnode n1\n", "f", "node"), "n1");
  EXPECT_FALSE(ParseClientToken("trainer t1\n", "f", "node").ok());
  EXPECT_FALSE(ParseClientToken("\n", "f", "").ok());
}

TEST(RoleTest, EveryRpcHasTheRoleOfItsProtoOption) {
  EXPECT_EQ(RequiredRole("/psd.Shard/Read"), ROLE_TRAINER);
  EXPECT_EQ(RequiredRole("/psd.Shard/DeleteVariable"), ROLE_ADMIN);
  EXPECT_EQ(RequiredRole("/psd.Shard/Fence"), ROLE_NODE);
  EXPECT_EQ(RequiredRole("/psd.Coordinator/RegisterShard"), ROLE_NODE);
  EXPECT_EQ(RequiredRole("/psd.Coordinator/Restore"), ROLE_ADMIN);
  EXPECT_EQ(RequiredRole("/psd.Coordinator/NoSuchMethod"), ROLE_UNSPECIFIED);
  EXPECT_EQ(RequiredRole("garbage"), ROLE_UNSPECIFIED);
  // Every method of the psd services carries a role (fail closed otherwise).
  for (const char* service : {"psd.Shard", "psd.Coordinator"}) {
    const auto* descriptor =
        google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(service);
    ASSERT_NE(descriptor, nullptr) << service;
    for (int i = 0; i < descriptor->method_count(); ++i) {
      const auto* method = descriptor->method(i);
      EXPECT_NE(RequiredRole("/" + std::string(service) + "/" + method->name()), ROLE_UNSPECIFIED)
          << method->full_name();
    }
  }
}

TEST(RoleTest, AdminMayCallTrainerRpcsNodeIsSeparate) {
  EXPECT_TRUE(RoleGrants(ROLE_ADMIN, ROLE_TRAINER));
  EXPECT_TRUE(RoleGrants(ROLE_ADMIN, ROLE_ADMIN));
  EXPECT_FALSE(RoleGrants(ROLE_ADMIN, ROLE_NODE));
  EXPECT_FALSE(RoleGrants(ROLE_TRAINER, ROLE_ADMIN));
  EXPECT_FALSE(RoleGrants(ROLE_NODE, ROLE_TRAINER));
  EXPECT_FALSE(RoleGrants(ROLE_TRAINER, ROLE_UNSPECIFIED));
}

TEST(RoleTest, AlsoRoleLetsTheCoordinatorCallShardsForClients) {
  EXPECT_TRUE(MayCall(ROLE_NODE, "/psd.Shard/CreateVariable"));
  EXPECT_TRUE(MayCall(ROLE_NODE, "/psd.Shard/DeleteVariable"));
  EXPECT_TRUE(MayCall(ROLE_NODE, "/psd.Shard/Read"));
  EXPECT_FALSE(MayCall(ROLE_NODE, "/psd.Shard/Gather"));
  // psctl status's refresh and the console's part states.
  EXPECT_TRUE(MayCall(ROLE_NODE, "/psd.Shard/GetShardInfo"));
  EXPECT_TRUE(MayCall(ROLE_NODE, "/psd.Shard/ListVariables"));
  EXPECT_FALSE(MayCall(ROLE_NODE, "/psd.Coordinator/DeleteVariable"));
  EXPECT_FALSE(MayCall(ROLE_TRAINER, "/psd.Shard/DeleteVariable"));
  EXPECT_TRUE(MayCall(ROLE_ADMIN, "/psd.Shard/Read"));
  EXPECT_FALSE(MayCall(ROLE_UNSPECIFIED, "/psd.Shard/Read"));
  EXPECT_FALSE(MayCall(ROLE_ADMIN, "/psd.Shard/NoSuchMethod"));
}

TEST(TokenAuthorizerTest, NamesTheTokenByAKeyThatIsNotTheToken) {
  TokenAuthorizer authorizer({{ROLE_TRAINER, "t1"}, {ROLE_TRAINER, "t2"}, {ROLE_ADMIN, "a"}});
  auto key_of = [&](const std::string& token) {
    uint64_t key = 0;
    EXPECT_TRUE(authorizer.Authorize("/psd.Shard/Assign", "Bearer " + token, nullptr, &key).ok());
    return key;
  };
  const uint64_t t1 = key_of("t1");
  EXPECT_NE(t1, 0u);  // 0 is the anonymous caller of a server without tokens
  EXPECT_EQ(key_of("t1"), t1);
  EXPECT_NE(key_of("t2"), t1);  // same role, another caller
  EXPECT_NE(key_of("a"), t1);
  // A public method names no caller.
  uint64_t key = 99;
  EXPECT_TRUE(authorizer.Authorize("/grpc.health.v1.Health/Check", "", nullptr, &key).ok());
  EXPECT_EQ(key, 0u);
  // A refused call names none either.
  key = 99;
  EXPECT_FALSE(authorizer.Authorize("/psd.Shard/Assign", "Bearer nope", nullptr, &key).ok());
  EXPECT_EQ(key, 0u);
}

TEST(TokenAuthorizerTest, ChecksTokenThenRole) {
  TokenAuthorizer authorizer({{ROLE_TRAINER, "t"}, {ROLE_ADMIN, "a"}, {ROLE_NODE, "n"}});
  EXPECT_TRUE(authorizer.Authorize("/psd.Shard/Read", "Bearer t").ok());
  EXPECT_TRUE(authorizer.Authorize("/psd.Shard/Read", "Bearer a").ok());
  EXPECT_TRUE(absl::IsUnauthenticated(authorizer.Authorize("/psd.Shard/Read", "")));
  EXPECT_TRUE(absl::IsUnauthenticated(authorizer.Authorize("/psd.Shard/Read", "Bearer x")));
  EXPECT_TRUE(absl::IsUnauthenticated(authorizer.Authorize("/psd.Shard/Read", "t")));
  absl::Status denied = authorizer.Authorize("/psd.Shard/Gather", "Bearer n");
  EXPECT_TRUE(absl::IsPermissionDenied(denied));
  EXPECT_TRUE(absl::StrContains(denied.message(), "/psd.Shard/Gather")) << denied;
  EXPECT_TRUE(absl::StrContains(denied.message(), "trainer")) << denied;
  // The role of the token is handed back for handlers to see.
  Role held = ROLE_UNSPECIFIED;
  EXPECT_TRUE(authorizer.Authorize("/psd.Shard/InitializeVariables", "Bearer n", &held).ok());
  EXPECT_EQ(held, ROLE_NODE);
  EXPECT_TRUE(authorizer.Authorize("/psd.Shard/InitializeVariables", "Bearer t", &held).ok());
  EXPECT_EQ(held, ROLE_TRAINER);
  EXPECT_FALSE(authorizer.Authorize("/psd.Shard/Gather", "Bearer n", &held).ok());
  EXPECT_EQ(held, ROLE_UNSPECIFIED);
  // Unknown methods are denied even to admin (fail closed).
  EXPECT_TRUE(absl::IsPermissionDenied(authorizer.Authorize("/psd.Shard/New", "Bearer a")));
  // Health checking and reflection need no token.
  EXPECT_TRUE(authorizer.Authorize("/grpc.health.v1.Health/Check", "").ok());
  EXPECT_TRUE(
      authorizer.Authorize("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "")
          .ok());
}

// What is not an rpc (the coordinator's console) asks for a token's role:
// the same match, UNAUTHENTICATED without a known bearer token.
TEST(TokenAuthorizerTest, RoleOfAToken) {
  TokenAuthorizer authorizer({{ROLE_TRAINER, "t"}, {ROLE_ADMIN, "a"}, {ROLE_NODE, "n"}});
  EXPECT_EQ(*authorizer.RoleOf("Bearer a"), ROLE_ADMIN);
  EXPECT_EQ(*authorizer.RoleOf("Bearer t"), ROLE_TRAINER);
  EXPECT_EQ(*authorizer.RoleOf("Bearer n"), ROLE_NODE);
  EXPECT_TRUE(absl::IsUnauthenticated(authorizer.RoleOf("").status()));
  EXPECT_TRUE(absl::IsUnauthenticated(authorizer.RoleOf("a").status()));
  EXPECT_TRUE(absl::IsUnauthenticated(authorizer.RoleOf("Bearer x").status()));
  EXPECT_TRUE(absl::IsUnauthenticated(authorizer.RoleOf("Bearer ").status()));
  // The console needs admin: only the admin token's role grants it.
  EXPECT_TRUE(RoleGrants(*authorizer.RoleOf("Bearer a"), ROLE_ADMIN));
  EXPECT_FALSE(RoleGrants(*authorizer.RoleOf("Bearer t"), ROLE_ADMIN));
  EXPECT_FALSE(RoleGrants(*authorizer.RoleOf("Bearer n"), ROLE_ADMIN));
}

TEST(BindPolicyTest, LoopbackAddresses) {
  EXPECT_TRUE(IsLoopbackListen("127.0.0.1:7070"));
  EXPECT_TRUE(IsLoopbackListen("localhost:0"));
  EXPECT_TRUE(IsLoopbackListen("[::1]:7070"));
  EXPECT_FALSE(IsLoopbackListen("0.0.0.0:7070"));
  EXPECT_FALSE(IsLoopbackListen("[::]:7070"));
  EXPECT_FALSE(IsLoopbackListen("10.0.0.5:7070"));
  EXPECT_FALSE(IsLoopbackListen(":7070"));
}

TEST(BindPolicyTest, NonLoopbackWithoutTlsNeedsInsecure) {
  ServerSecurity security;
  EXPECT_TRUE(MakeServerCredentials(security, "127.0.0.1:0", "test").ok());
  EXPECT_TRUE(
      absl::IsFailedPrecondition(MakeServerCredentials(security, "0.0.0.0:0", "test").status()));
  security.insecure = true;
  EXPECT_TRUE(MakeServerCredentials(security, "0.0.0.0:0", "test").ok());
  security.token_file = "/nonexistent";
  EXPECT_FALSE(MakeServerCredentials(security, "127.0.0.1:0", "test").ok());
}

}  // namespace
}  // namespace psd
