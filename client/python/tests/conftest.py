"""Fixtures: one real cluster (a `psd coordinator` and two `psd shard`
processes on loopback, ports from --port-file) per test run, killed at the
end even when tests fail; a fresh default session per test.

PSD_BINARY names the psd executable (ctest sets it). A missing binary fails
the run instead of skipping it, and PSCLIENT_MIN_TESTS (set by ctest) fails a
run that collected fewer tests, so CI can never pass on zero tests.
"""

import os
import re

import pytest

import psclient
from psclient.local_cluster import LocalCluster


def pytest_collection_modifyitems(session, config, items):
    minimum = int(os.environ.get("PSCLIENT_MIN_TESTS", "0"))
    if len(items) < minimum:
        raise pytest.UsageError("collected %d tests, expected at least %d" % (len(items), minimum))


@pytest.fixture(scope="session")
def psd_binary():
    path = os.environ.get("PSD_BINARY")
    if not path or not os.access(path, os.X_OK):
        pytest.fail("PSD_BINARY must name the psd executable (got %r)" % (path,))
    return path


@pytest.fixture(scope="session")
def cluster(psd_binary, tmp_path_factory):
    # Tests save under their tmp_path: pytest's base temp directory is a
    # checkpoint root (saves anywhere else are refused).
    roots = str(tmp_path_factory.getbasetemp())
    with LocalCluster(psd_binary, num_shards=2,
                      coordinator_args=["--checkpoint-roots", roots]) as c:
        yield c


@pytest.fixture
def session(cluster):
    s = psclient.connect(cluster.address)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def prefix(request):
    """A scope name unique to the test: variables outlive sessions."""
    return re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)
