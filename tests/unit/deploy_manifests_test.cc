// The deploy/ files as a reader of them would: the Kubernetes manifests
// parse as YAML with the expected kinds, their Services, container ports and
// probes use the ports of the cluster file in the ConfigMap (loaded with
// psd's own loader), the Secrets and the shared checkpoint claim are mounted
// where that cluster file expects them; the systemd units restart on
// failure, have a state directory and a sandbox.
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/cluster_config.h"
#include "yaml-cpp/yaml.h"

namespace psd {
namespace {

const std::string kDeploy = PSD_DEPLOY_DIR;

int Port(const std::string& address) {
  int port = -1;
  EXPECT_TRUE(absl::SimpleAtoi(address.substr(address.rfind(':') + 1), &port)) << address;
  return port;
}

class KubernetesManifestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<YAML::Node> docs;
    ASSERT_NO_THROW(docs = YAML::LoadAllFromFile(kDeploy + "/kubernetes/psd.yaml"));
    for (const YAML::Node& doc : docs) {
      if (!doc || doc.IsNull()) continue;
      const std::string kind = doc["kind"].as<std::string>();
      const std::string name = doc["metadata"]["name"].as<std::string>();
      if (kind != "Namespace") {
        EXPECT_EQ(doc["metadata"]["namespace"].as<std::string>(), "psd") << kind << " " << name;
      }
      objects_[kind + "/" + name] = doc;
      kinds_.insert(kind);
    }
    ASSERT_EQ(objects_.count("ConfigMap/psd-cluster"), 1u);
    auto config = ParseClusterConfig(
        objects_["ConfigMap/psd-cluster"]["data"]["cluster.yaml"].as<std::string>(),
        "psd.yaml ConfigMap psd-cluster");
    ASSERT_TRUE(config.ok()) << config.status();
    cluster_ = *config;
  }

  YAML::Node Get(const std::string& key) {
    EXPECT_EQ(objects_.count(key), 1u) << key;
    return objects_[key];
  }

  // The one container of a Deployment's or StatefulSet's pod template.
  YAML::Node Container(const std::string& key) {
    const YAML::Node containers = Get(key)["spec"]["template"]["spec"]["containers"];
    EXPECT_EQ(containers.size(), 1u) << key;
    return containers[0];
  }

  // containerPort of the named port.
  static int ContainerPort(const YAML::Node& container, const std::string& port_name) {
    for (const YAML::Node& p : container["ports"]) {
      if (p["name"].as<std::string>() == port_name) return p["containerPort"].as<int>();
    }
    ADD_FAILURE() << "no container port " << port_name;
    return -1;
  }

  // Port of the Service's port `name`, which must target the same name.
  int ServicePort(const std::string& service, const std::string& name) {
    for (const YAML::Node& p : Get("Service/" + service)["spec"]["ports"]) {
      if (p["name"].as<std::string>() == name) {
        EXPECT_EQ(p["targetPort"].as<std::string>(), name) << service;
        return p["port"].as<int>();
      }
    }
    ADD_FAILURE() << service << " has no port " << name;
    return -1;
  }

  // Probes ask /healthz and /readyz over HTTPS on the metrics port.
  static void ExpectHealthProbes(const YAML::Node& container) {
    for (const auto& [probe, path] : {std::pair<const char*, const char*>{"livenessProbe", "/healthz"},
                                      {"readinessProbe", "/readyz"}}) {
      const YAML::Node get = container[probe]["httpGet"];
      ASSERT_TRUE(get) << probe;
      EXPECT_EQ(get["path"].as<std::string>(), path);
      EXPECT_EQ(get["port"].as<std::string>(), "metrics");
      EXPECT_EQ(get["scheme"].as<std::string>(), "HTTPS");  // TLS is on: metrics are HTTPS
    }
  }

  // mountPath -> the volume it comes from ("secret:NAME", "pvc:NAME",
  // "configMap:NAME").
  std::map<std::string, std::string> Mounts(const std::string& key) {
    const YAML::Node spec = Get(key)["spec"]["template"]["spec"];
    std::map<std::string, std::string> sources;
    for (const YAML::Node& v : spec["volumes"]) {
      const std::string name = v["name"].as<std::string>();
      if (v["secret"]) sources[name] = "secret:" + v["secret"]["secretName"].as<std::string>();
      if (v["persistentVolumeClaim"]) {
        sources[name] = "pvc:" + v["persistentVolumeClaim"]["claimName"].as<std::string>();
      }
      if (v["configMap"]) sources[name] = "configMap:" + v["configMap"]["name"].as<std::string>();
    }
    std::map<std::string, std::string> mounts;
    for (const YAML::Node& m : spec["containers"][0]["volumeMounts"]) {
      mounts[m["mountPath"].as<std::string>()] = sources[m["name"].as<std::string>()];
    }
    return mounts;
  }

  // The source of the mount that holds `path`.
  static std::string SourceOf(const std::map<std::string, std::string>& mounts,
                              const std::string& path) {
    std::string best, source;
    for (const auto& [mount, from] : mounts) {
      if ((path == mount || absl::StartsWith(path, mount + "/")) && mount.size() > best.size()) {
        best = mount;
        source = from;
      }
    }
    return source;
  }

  std::map<std::string, YAML::Node> objects_;
  std::set<std::string> kinds_;
  ClusterConfig cluster_;
};

TEST_F(KubernetesManifestTest, HasTheExpectedKinds) {
  for (const char* key :
       {"Namespace/psd", "ConfigMap/psd-cluster", "Service/psd-coordinator", "Service/psd-shard",
        "Deployment/psd-coordinator", "StatefulSet/psd-shard",
        "PersistentVolumeClaim/psd-checkpoints", "PersistentVolumeClaim/psd-coordinator-state"}) {
    EXPECT_EQ(objects_.count(key), 1u) << key;
  }
  EXPECT_EQ(Get("Deployment/psd-coordinator")["apiVersion"].as<std::string>(), "apps/v1");
  EXPECT_EQ(Get("StatefulSet/psd-shard")["apiVersion"].as<std::string>(), "apps/v1");
}

TEST_F(KubernetesManifestTest, ServicesAndContainersUseTheClusterFilesPorts) {
  const int coordinator_port = Port(cluster_.coordinator.listen);
  EXPECT_EQ(Port(cluster_.coordinator.advertise), coordinator_port);
  EXPECT_EQ(ServicePort("psd-coordinator", "grpc"), coordinator_port);
  EXPECT_EQ(ContainerPort(Container("Deployment/psd-coordinator"), "grpc"), coordinator_port);
  const int coordinator_http = Port(cluster_.coordinator.http_listen);
  EXPECT_EQ(ContainerPort(Container("Deployment/psd-coordinator"), "metrics"), coordinator_http);
  EXPECT_EQ(ServicePort("psd-coordinator", "metrics"), coordinator_http);
  EXPECT_TRUE(absl::StartsWith(cluster_.coordinator.advertise, "psd-coordinator.psd.svc"));

  // Every shard entry: one StatefulSet pod, on the headless Service's ports.
  const YAML::Node sts = Get("StatefulSet/psd-shard");
  EXPECT_EQ(sts["spec"]["replicas"].as<size_t>(), cluster_.shards.size());
  EXPECT_EQ(sts["spec"]["serviceName"].as<std::string>(), "psd-shard");
  EXPECT_EQ(Get("Service/psd-shard")["spec"]["clusterIP"].as<std::string>(), "None");
  const YAML::Node shard = Container("StatefulSet/psd-shard");
  for (const ShardConfig& s : cluster_.shards) {
    EXPECT_EQ(Port(s.listen), ContainerPort(shard, "grpc")) << s.id;
    EXPECT_EQ(Port(s.advertise), ServicePort("psd-shard", "grpc")) << s.id;
    EXPECT_EQ(Port(s.http_listen), ContainerPort(shard, "metrics")) << s.id;
    // Pod K of the StatefulSet, by its stable name.
    EXPECT_TRUE(absl::StartsWith(s.advertise, "psd-shard-" + std::to_string(s.id) +
                                                  ".psd-shard.psd.svc.cluster.local:"))
        << s.advertise;
  }
  // The id comes from the pod ordinal.
  EXPECT_THAT(shard["args"][0].as<std::string>(), ::testing::HasSubstr("--id \"${HOSTNAME##*-}\""));
  // Replicated, with a shard to spare for a new backup after a loss, and
  // shards spread over nodes (their host is the node).
  EXPECT_GE(cluster_.coordinator.replication, 2);
  EXPECT_GT(static_cast<int>(cluster_.shards.size()), cluster_.coordinator.replication);
  EXPECT_EQ(sts["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["topologyKey"]
                .as<std::string>(),
            "kubernetes.io/hostname");
  EXPECT_THAT(shard["args"][0].as<std::string>(), ::testing::HasSubstr("--host \"${NODE_NAME}\""));
}

TEST_F(KubernetesManifestTest, ProbesResourcesSecretsAndSharedCheckpoints) {
  ASSERT_FALSE(cluster_.security.tls_cert.empty());
  ASSERT_FALSE(cluster_.security.token_file.empty());
  ASSERT_FALSE(cluster_.checkpoint.dir.empty());
  for (const char* key : {"Deployment/psd-coordinator", "StatefulSet/psd-shard"}) {
    SCOPED_TRACE(key);
    const YAML::Node container = Container(key);
    ExpectHealthProbes(container);
    EXPECT_TRUE(container["resources"]["requests"]["memory"]);
    EXPECT_TRUE(container["resources"]["requests"]["cpu"]);
    // No plaintext escape hatch: TLS is configured.
    for (const YAML::Node& arg : container["args"]) {
      EXPECT_THAT(arg.as<std::string>(), ::testing::Not(::testing::HasSubstr("--insecure")));
    }
    const auto mounts = Mounts(key);
    EXPECT_EQ(SourceOf(mounts, cluster_.security.tls_ca), "secret:psd-tls");
    EXPECT_EQ(SourceOf(mounts, cluster_.security.tls_cert), "secret:psd-tls");
    EXPECT_EQ(SourceOf(mounts, cluster_.security.tls_key), "secret:psd-tls");
    EXPECT_EQ(SourceOf(mounts, cluster_.security.token_file), "secret:psd-tokens");
    EXPECT_EQ(SourceOf(mounts, cluster_.checkpoint.dir), "pvc:psd-checkpoints");
    EXPECT_EQ(SourceOf(mounts, "/etc/psd/cluster.yaml"), "configMap:psd-cluster");
  }
  EXPECT_EQ(SourceOf(Mounts("Deployment/psd-coordinator"), cluster_.coordinator.state_dir),
            "pvc:psd-coordinator-state");
  // Shards on several nodes write into the one checkpoint directory.
  EXPECT_EQ(Get("PersistentVolumeClaim/psd-checkpoints")["spec"]["accessModes"][0].as<std::string>(),
            "ReadWriteMany");
}

TEST(KubernetesSecretsExampleTest, DefinesTheSecretsTheManifestMounts) {
  std::set<std::string> keys;
  for (const YAML::Node& doc : YAML::LoadAllFromFile(kDeploy + "/kubernetes/secrets.example.yaml")) {
    ASSERT_EQ(doc["kind"].as<std::string>(), "Secret");
    for (const auto& kv : doc["stringData"]) {
      keys.insert(doc["metadata"]["name"].as<std::string>() + "/" + kv.first.as<std::string>());
    }
  }
  for (const char* key : {"psd-tls/ca.pem", "psd-tls/server.pem", "psd-tls/server.key",
                          "psd-tokens/tokens", "psd-tokens/admin.token"}) {
    EXPECT_EQ(keys.count(key), 1u) << key;
  }
}

// Key=value lines of a systemd unit's [Service] section (repeated keys
// keep the last).
std::map<std::string, std::string> ServiceSection(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << path;
  std::map<std::string, std::string> out;
  std::string line, section;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] == '[') {
      section = line;
      continue;
    }
    const size_t eq = line.find('=');
    if (section == "[Service]" && eq != std::string::npos) out[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return out;
}

TEST(SystemdUnitTest, RestartOnFailureStateDirectoryAndSandbox) {
  for (const char* unit : {"psd-coordinator.service", "psd-shard@.service"}) {
    SCOPED_TRACE(unit);
    const auto service = ServiceSection(kDeploy + "/systemd/" + unit);
    EXPECT_EQ(service.count("ExecStart"), 1u);
    EXPECT_THAT(service.at("ExecStart"), ::testing::HasSubstr("--config /etc/psd/cluster.yaml"));
    EXPECT_EQ(service.at("Restart"), "on-failure");
    EXPECT_EQ(service.count("StateDirectory"), 1u);
    EXPECT_EQ(service.at("ProtectSystem"), "strict");
    EXPECT_EQ(service.at("NoNewPrivileges"), "yes");
    EXPECT_EQ(service.at("KillSignal"), "SIGTERM");
    // The shared checkpoint directory stays writable under ProtectSystem.
    EXPECT_THAT(service.at("ReadWritePaths"), ::testing::HasSubstr("/var/lib/psd-checkpoints"));
  }
}

}  // namespace
}  // namespace psd
