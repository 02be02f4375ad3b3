"""LocalCluster: a coordinator and N shards as child processes on loopback,
for tests and examples. Ports are chosen by the servers (port 0) and read
from their --port-file; everything is killed on close(), also after errors.

    with LocalCluster("/path/to/psd", num_shards=2) as cluster:
        with psclient.connect(cluster.address):
            ...

A TLS cluster passes the servers' flags in coordinator_args/shard_args and
the connect() keywords its own admin session needs (it lists the shards) in
client_options, e.g. dict(tls_ca="ca.pem", token_file="admin.token").
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time


class LocalCluster:
    def __init__(self, psd_binary, num_shards=2, state_dir=None, log_level="warn",
                 start_timeout=60.0, shard_args=(), coordinator_args=(), client_options=None):
        if not psd_binary or not os.access(psd_binary, os.X_OK):
            raise FileNotFoundError("psd binary not found or not executable: %r" % (psd_binary,))
        self._binary = psd_binary
        self._log_level = log_level
        self._timeout = start_timeout
        self._shard_args = list(shard_args)
        self._coordinator_args = list(coordinator_args)
        self.client_options = dict(client_options or {})
        self._own_dir = state_dir is None
        self.dir = state_dir or tempfile.mkdtemp(prefix="psclient_cluster_")
        os.makedirs(self.dir, exist_ok=True)
        self.coordinator = None
        self.shards = [None] * num_shards
        self.coordinator_port = None
        self.shard_ports = [None] * num_shards
        try:
            self.start_coordinator()
            for k in range(num_shards):
                self.start_shard(k)
            self.wait_for_shards()
        except BaseException:
            self.close()
            raise

    @property
    def address(self):
        return "127.0.0.1:%d" % self.coordinator_port

    def _start(self, args, port_file, log_name):
        if os.path.exists(port_file):
            os.remove(port_file)
        log = open(os.path.join(self.dir, log_name), "ab")
        proc = subprocess.Popen([self._binary, "--log-level", self._log_level] + args,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + self._timeout
        last = None
        while True:
            try:
                with open(port_file) as f:
                    content = f.read()
            except FileNotFoundError:
                content = ""
            # A port counts once two reads agree on a whole number.
            if content and content == last and content.strip().isdigit():
                return proc, int(content.strip())
            last = content
            if proc.poll() is not None:
                raise RuntimeError("%s exited with %s before writing its port; log: %s"
                                   % (args[0], proc.returncode, self.log(log_name)))
            if time.monotonic() > deadline:
                self._stop(proc, kill=True)
                raise TimeoutError("%s wrote no port in %.0fs" % (args[0], self._timeout))
            time.sleep(0.02)

    def log(self, name):
        try:
            with open(os.path.join(self.dir, name), errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def start_coordinator(self, port=0):
        port_file = os.path.join(self.dir, "coordinator.port")
        self.coordinator, self.coordinator_port = self._start(
            ["coordinator", "--listen", "127.0.0.1:%d" % port, "--state-dir",
             os.path.join(self.dir, "state"), "--port-file", port_file]
            + self._coordinator_args, port_file, "coordinator.log")

    def start_shard(self, k, port=0):
        port_file = os.path.join(self.dir, "shard-%d.port" % k)
        self.shards[k], self.shard_ports[k] = self._start(
            ["shard", "--id", str(k), "--listen", "127.0.0.1:%d" % port, "--port-file", port_file,
             "--coordinator", self.address] + self._shard_args, port_file, "shard-%d.log" % k)

    def wait_for_shards(self):
        from .session import Session  # a private session: not made the default
        session = Session(self.address, client="LocalCluster", **self.client_options)
        try:
            deadline = time.monotonic() + self._timeout
            while True:
                shards = session.list_shards()
                if sum(1 for s in shards if s["live"]) >= len(self.shards):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError("shards not all live: %r" % (shards,))
                time.sleep(0.05)
        finally:
            session.close()

    @staticmethod
    def _stop(proc, kill=False, timeout=15.0):
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill_shard(self, k):
        self._stop(self.shards[k], kill=True)
        self.shards[k] = None

    def close(self):
        for k, proc in enumerate(self.shards):
            self._stop(proc)
            self.shards[k] = None
        self._stop(self.coordinator)
        self.coordinator = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
