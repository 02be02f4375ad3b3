#!/usr/bin/python3
"""psd_fault_proxy driven as shell and Python tests drive it: control lines on
stdin and on its control port, against a loopback echo server. Every wait is
bounded. Usage: fault_proxy_cli_test.py PATH/TO/psd_fault_proxy"""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time


def echo_server():
    """A loopback echo server in threads; returns its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def serve(conn):
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def accept():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def wait_port(path, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(path) as f:
                text = f.read().strip()
            if text:
                return int(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError("no port in " + path)


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.settimeout(10)
    return s


def recv_exactly(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def ended(s, timeout=10):
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main():
    binary = sys.argv[1]
    target = echo_server()
    tmp = tempfile.mkdtemp(prefix="psd_fault_proxy_cli_")
    port_file = os.path.join(tmp, "proxy.port")
    control_file = os.path.join(tmp, "control.port")
    proxy = subprocess.Popen(
        [binary, "--target", "127.0.0.1:%d" % target, "--port-file", port_file,
         "--control-port-file", control_file],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        port = wait_port(port_file)
        control_port = wait_port(control_file)

        def stdin_command(line):
            proxy.stdin.write(line + "\n")
            proxy.stdin.flush()
            return proxy.stdout.readline().strip()

        control = connect(control_port)
        control_in = control.makefile("r")

        def control_command(line):
            control.sendall((line + "\n").encode())
            return control_in.readline().strip()

        check(stdin_command("stats").startswith("ok accepted=0 "), "stats before any connection")

        c = connect(port)
        c.sendall(b"hello")
        check(recv_exactly(c, 5) == b"hello", "forwarded both ways")

        # A partition: nothing arrives, the connection stays; healed, it does.
        check(control_command("blackhole on") == "ok", "blackhole on")
        c.sendall(b"held")
        c.settimeout(0.5)
        try:
            got = c.recv(4)
        except socket.timeout:
            got = b""
        check(got == b"", "nothing forwarded during the blackhole")
        check(control_command("blackhole off") == "ok", "blackhole off")
        c.settimeout(10)
        check(recv_exactly(c, 4) == b"held", "held bytes delivered after the heal")

        # Delay one way.
        check(stdin_command("delay up 300ms") == "ok", "delay")
        start = time.time()
        c.sendall(b"slow")
        check(recv_exactly(c, 4) == b"slow", "delayed bytes arrive")
        check(time.time() - start >= 0.3, "the delay was applied")
        check(stdin_command("delay 0") == "ok", "delay off")

        # Refused connections end at once; cut ends the open one.
        check(control_command("refuse on") == "ok", "refuse on")
        try:
            r = connect(port)
            check(ended(r), "a refused connection ends")
            r.close()
        except ConnectionResetError:
            pass  # reset before connect() returned: ended as well
        check(control_command("refuse off") == "ok", "refuse off")
        check(control_command("cut") == "ok", "cut")
        check(ended(c), "cut ends the open connection")
        c.close()

        stats = stdin_command("stats")
        check("refused=1" in stats and "cuts=1" in stats and "open=0" in stats, stats)
        check(control_command("explode").startswith("error: "), "a bad line is an error")
        check(stdin_command("delay sideways").startswith("error: "), "a bad line is an error")

        check(stdin_command("quit") == "ok", "quit")
        check(proxy.wait(timeout=10) == 0, "quit ends the proxy")
        control.close()
    finally:
        if proxy.poll() is None:
            proxy.kill()
            proxy.wait()

    # Without a control port, the end of stdin ends the proxy (a parent that
    # dies takes it along).
    port_file2 = os.path.join(tmp, "proxy2.port")
    proxy = subprocess.Popen([binary, "--target", "127.0.0.1:%d" % target,
                              "--port-file", port_file2], stdin=subprocess.PIPE)
    try:
        wait_port(port_file2)
        proxy.stdin.close()
        check(proxy.wait(timeout=10) == 0, "the end of stdin ends the proxy")
    finally:
        if proxy.poll() is None:
            proxy.kill()
            proxy.wait()

    # Only loopback targets.
    refused = subprocess.run([binary, "--target", "10.1.2.3:80"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=30)
    check(refused.returncode == 1 and "not loopback" in refused.stderr, refused.stderr)
    print("fault_proxy_cli_test: OK")


if __name__ == "__main__":
    main()
