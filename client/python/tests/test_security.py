"""psclient against a TLS cluster with bearer tokens (certificates and
tokens from scripts/make-test-certs.sh): the token's role decides what a
session may do, a missing or unknown token is UnauthenticatedError, a role
that may not call an rpc is PermissionDeniedError, and misconfigured client
options fail before anything is sent."""

import os
import subprocess

import numpy as np
import pytest

import psclient
from psclient import errors
from psclient.local_cluster import LocalCluster


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    script = os.environ.get("PSD_MAKE_TEST_CERTS") or os.path.join(
        os.path.dirname(__file__), "..", "..", "..", "scripts", "make-test-certs.sh")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["bash", script, str(d)], check=True, capture_output=True)
    return d


@pytest.fixture(scope="module")
def tls_cluster(psd_binary, certs, tmp_path_factory):
    server = ["--tls-ca", str(certs / "ca.pem"), "--tls-cert", str(certs / "server.pem"),
              "--tls-key", str(certs / "server.key"), "--token-file", str(certs / "tokens")]
    ckpt = tmp_path_factory.mktemp("tls_ckpt")
    with LocalCluster(psd_binary, num_shards=2, shard_args=server,
                      coordinator_args=server + ["--checkpoint-dir", str(ckpt)],
                      client_options=dict(tls_ca=str(certs / "ca.pem"),
                                          token_file=str(certs / "admin.token"))) as c:
        c.checkpoint_dir = ckpt
        yield c


def _connect(cluster, certs, role, **kwargs):
    token = None if role is None else certs / (role + ".token")
    return psclient.connect(cluster.address, tls_ca=certs / "ca.pem", token_file=token,
                            retry_budget=0, **kwargs)


def test_trainer_token_runs_data_ops_optimizers_and_saves(tls_cluster, certs, prefix):
    with _connect(tls_cluster, certs, "trainer") as s:
        assert s.security.tls_ca == str(certs / "ca.pem")
        with psclient.variable_scope(prefix):
            w = psclient.get_variable("w", shape=[4, 2], initializer=psclient.ones_initializer(),
                                      partitioner=psclient.fixed_size_partitioner(2))
            step = psclient.get_variable("step", shape=[], dtype=psclient.int64,
                                         initializer=psclient.zeros_initializer(),
                                         trainable=False)
        psclient.variables_initializer([w, step])
        w.scatter_add([1, 3], np.ones([2, 2], np.float32))
        psclient.train.AdagradOptimizer(0.5).apply_gradients([(np.ones([4, 2], np.float32), w)],
                                                            global_step=step)
        assert step.count_up_to(10) == 1
        got = w.read()
        assert got.shape == (4, 2) and got[1, 0] < 2.0  # moved by the optimizer
        saver = psclient.train.Saver([w, step])
        path = saver.save(str(tls_cluster.checkpoint_dir / prefix), global_step=2)
        assert path.endswith(prefix + "-2")
        assert psclient.train.latest_checkpoint(str(tls_cluster.checkpoint_dir)) == path
        # Restore and delete are admin rpcs.
        with pytest.raises(errors.PermissionDeniedError, match="admin") as e:
            saver.restore(path)
        assert e.value.code == errors.PERMISSION_DENIED
        with pytest.raises(errors.PermissionDeniedError):
            s.delete_variable(step.full_name)
        assert step.read() == 2


def test_admin_token_restores_what_a_trainer_saved(tls_cluster, certs, prefix):
    with _connect(tls_cluster, certs, "trainer"):
        v = psclient.get_variable(prefix, shape=[3], initializer=psclient.zeros_initializer(),
                                  initialize=True)
        v.assign([1.0, 2.0, 3.0])
        path = psclient.train.Saver([v]).save(str(tls_cluster.checkpoint_dir / prefix))
        v.assign_add([5.0, 5.0, 5.0])
    with _connect(tls_cluster, certs, "admin") as admin:
        v = admin.lookup_variable(prefix)
        psclient.train.Saver([v]).restore(path)
        np.testing.assert_array_equal(v.read(), [1.0, 2.0, 3.0])
        admin.delete_variable(prefix)
        with pytest.raises(errors.NotFoundError):
            admin.lookup_variable(prefix)


def test_missing_token_is_unauthenticated(tls_cluster, certs):
    with pytest.raises(errors.UnauthenticatedError, match="bearer token") as e:
        _connect(tls_cluster, certs, None)
    assert e.value.code == errors.UNAUTHENTICATED
    assert not isinstance(e.value, ValueError)


def test_unknown_token_is_unauthenticated(tls_cluster, certs, tmp_path):
    forged = tmp_path / "forged.token"
    forged.write_text("0" * 64 + "\n")
    with pytest.raises(errors.UnauthenticatedError, match="unknown bearer token"):
        psclient.connect(tls_cluster.address, tls_ca=str(certs / "ca.pem"),
                         token_file=str(forged), retry_budget=0)


def test_node_token_may_not_open_a_trainer_session(tls_cluster, certs):
    with pytest.raises(errors.PermissionDeniedError, match="trainer"):
        _connect(tls_cluster, certs, "node")


def test_plaintext_client_cannot_reach_a_tls_cluster(tls_cluster):
    with pytest.raises((errors.UnavailableError, errors.DeadlineExceededError)):
        psclient.Session(tls_cluster.address, timeout=2, retry_budget=0)


def test_token_without_tls_is_refused_before_sending(tls_cluster, certs):
    with pytest.raises(errors.InvalidArgumentError, match="needs TLS"):
        psclient.Session(tls_cluster.address, token_file=str(certs / "trainer.token"))
    with pytest.raises(errors.InvalidArgumentError, match="tls-ca"):
        psclient.Session(tls_cluster.address, tls_cert=str(certs / "client.pem"),
                         tls_key=str(certs / "client.key"))
    with pytest.raises(TypeError, match="token_file"):
        psclient.Session(tls_cluster.address, tls_ca=str(certs / "ca.pem"), token_file=42)


def test_unreadable_ca_file_names_it(tls_cluster, tmp_path):
    missing = tmp_path / "nope.pem"
    with pytest.raises(errors.NotFoundError, match="nope.pem"):
        psclient.Session(tls_cluster.address, tls_ca=missing)
