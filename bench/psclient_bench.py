#!/usr/bin/python3
"""psclient_bench: the Python client's data path beside the C++ client's, in
one run, against one local shard this script starts (a coordinator and one
shard, psclient.local_cluster.LocalCluster).

Workloads, through psclient's ordinary API (Variable.assign_add, scatter_add,
gather): scalar assign_add from 1 and 8 Python threads; scatter_add and
gather of 4096 x 64 float32 rows (distinct indices, so the client's merge of
duplicate indices changes nothing and every row goes on the wire) with 1 and
4 calls in flight. Then psd_bench runs the same workloads through the C++
ShardClient against the same shard (--shard, --only small,sparse,
--index-dist distinct, --json), then the psclient workloads run again (half
the reps in each pass, pooled: a change of load on a shared machine weighs
on both clients), and the table gives psclient / C++ for each, against the
issue's target of 0.9x.

CPU: the shard's from /proc/PID/stat (utime + stime, 10 ms ticks), this
process's from getrusage(RUSAGE_SELF) (all threads), per op or row.

    PYTHONPATH=build/client/python /usr/bin/python3 bench/psclient_bench.py
    ... --quick    # seconds-long smoke run (ctest: psclient_bench_smoke)

Exit status: 0 when every workload ran (speed is reported, not judged), so
the smoke run catches rot, not a slow machine.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

import psclient
from psclient.local_cluster import LocalCluster

TARGET = 0.9  # psclient >= 0.9x the C++ client (issue 18, Targets)


def process_cpu_seconds(pid):
    """utime + stime of process `pid` (all threads, exited ones included)."""
    with open("/proc/%d/stat" % pid) as f:
        content = f.read()
    fields = content[content.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds of shard and client over the timed sections of one
    workload, and the units (ops, rows) done in them."""

    def __init__(self, shard_pid):
        self.shard_pid = shard_pid
        self.shard = self.client = self.units = 0.0

    def __enter__(self):
        self._shard0 = process_cpu_seconds(self.shard_pid)
        self._client0 = self_cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.shard += process_cpu_seconds(self.shard_pid) - self._shard0
        self.client += self_cpu_seconds() - self._client0

    def per_unit_us(self):
        if self.units <= 0:
            return 0.0, 0.0
        return self.shard / self.units * 1e6, self.client / self.units * 1e6


def run_threads(threads, seconds, op):
    """op() from `threads` threads for `seconds`; returns (ops/s, ops)."""
    stop = threading.Event()
    counts = [0] * threads
    failures = []

    def work(t):
        n = 0
        try:
            while not stop.is_set():
                op()
                n += 1
        except Exception as e:  # reported after the run, and fails it
            failures.append(e)
        counts[t] = n

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for th in pool:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in pool:
        th.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError("%d of %d threads failed: %r" % (len(failures), threads, failures[0]))
    return sum(counts) / elapsed, sum(counts)


def run_batches(threads, count, op):
    """op(b) for b in range(count) from `threads` threads (each takes the
    next b), so `threads` calls are in flight; returns seconds."""
    lock = threading.Lock()
    next_b = [0]
    failures = []

    def work():
        while True:
            with lock:
                b = next_b[0]
                next_b[0] += 1
            if b >= count:
                return
            try:
                op(b)
            except Exception as e:
                failures.append(e)
                return

    start = time.perf_counter()
    if threads == 1:
        work()
    else:
        pool = [threading.Thread(target=work) for _ in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError("%d batches failed: %r" % (len(failures), failures[0]))
    return elapsed


def median(values):
    s = sorted(values)
    return s[len(s) // 2]


class Table:
    """The psclient rows. The workloads run twice, before and after the C++
    client's run, so that a change of load on a shared machine during the
    run weighs on both clients alike; each row pools both passes' reps."""

    def __init__(self):
        self._order = []
        self._rows = {}

    def add(self, name, unit, rates, meter, per):
        if name not in self._rows:
            self._order.append(name)
            self._rows[name] = dict(unit=unit, rates=[], meters=[], per=per)
        self._rows[name]["rates"].extend(rates)
        self._rows[name]["meters"].append(meter)

    @property
    def rows(self):
        out = []
        for name in self._order:
            r = self._rows[name]
            shard = sum(m.shard for m in r["meters"])
            client = sum(m.client for m in r["meters"])
            units = sum(m.units for m in r["meters"])
            rates = r["rates"]
            out.append(dict(workload=name, unit=r["unit"], per=r["per"], median=median(rates),
                            min=min(rates), max=max(rates), reps=len(rates),
                            cpu_shard_us=shard / units * 1e6 if units else 0.0,
                            cpu_client_us=client / units * 1e6 if units else 0.0))
        return out

    def print(self):
        print("\n%-46s %10s %10s %10s %-7s %4s | %s" % (
            "workload (psclient, both passes)", "median", "min", "max", "unit", "reps",
            "cpu per op/row"))
        for r in self.rows:
            print("%-46s %10.3g %10.3g %10.3g %-7s %4d | cpu/%s shard %.3g + client %.3g = %.3g us"
                  % (r["workload"], r["median"], r["min"], r["max"], r["unit"], r["reps"],
                     r["per"], r["cpu_shard_us"], r["cpu_client_us"],
                     r["cpu_shard_us"] + r["cpu_client_us"]))
        sys.stdout.flush()


def python_workloads(args, small_reps, shard_pid, table, tag):
    one = np.ones((), np.int64)
    counter = psclient.get_variable("pybench/counter_%d" % tag,
                                    initializer=np.zeros((), np.int64), dtype=psclient.int64,
                                    initialize=True)
    for threads in (1, 8):
        counter.assign_add(one)  # warm-up
        rates = []
        meter = CpuMeter(shard_pid)
        for _ in range(small_reps):
            with meter:
                rate, ops = run_threads(threads, args.op_seconds, lambda: counter.assign_add(one))
            meter.units += ops
            rates.append(rate)
        table.add("assign_add scalar, %d threads" % threads, "ops/s", rates, meter, "op")

    rows, cols, n = args.table_rows, 64, args.batch
    t = psclient.get_variable("pybench/table_%d" % tag, shape=[rows, cols], dtype=psclient.float32,
                              initializer=psclient.zeros_initializer(), initialize=True)
    rng = np.random.default_rng(1000)
    # Distinct rows per batch, in no particular order (a trainer's ids).
    indices = [rng.permutation(rows)[:n].astype(np.int64) for _ in range(args.batches)]
    updates = np.ones((n, cols), np.float32)
    per_rep = args.batches * args.passes * n
    for inflight in (1, 4):
        scatter, gather = [], []
        scatter_cpu, gather_cpu = CpuMeter(shard_pid), CpuMeter(shard_pid)
        for r in range(-1, args.reps):  # round -1 warms up
            with scatter_cpu:
                seconds = run_batches(inflight, args.batches * args.passes,
                                      lambda b: t.scatter_add(indices[b % args.batches], updates))
            if r >= 0:
                scatter_cpu.units += per_rep
                scatter.append(per_rep / seconds)
            else:
                scatter_cpu.shard = scatter_cpu.client = 0.0
            with gather_cpu:
                seconds = run_batches(inflight, args.batches * args.passes,
                                      lambda b: t.gather(indices[b % args.batches]))
            if r >= 0:
                gather_cpu.units += per_rep
                gather.append(per_rep / seconds)
            else:
                gather_cpu.shard = gather_cpu.client = 0.0
        shape = "%dx%d" % (n, cols)  # psd_bench's names; the table is rows x cols
        table.add("scatter_add %s, %d in flight" % (shape, inflight), "rows/s", scatter,
                  scatter_cpu, "row")
        table.add("gather %s, %d in flight" % (shape, inflight), "rows/s", gather, gather_cpu,
                  "row")


def cpp_workloads(args, shard_address, shard_pid):
    """psd_bench's small and sparse workloads through the C++ client against
    the same shard; returns its JSON rows."""
    with tempfile.TemporaryDirectory(prefix="psclient_bench_") as tmp:
        json_path = os.path.join(tmp, "cpp.json")
        cmd = [args.psd_bench, "--shard", shard_address, "--shard-pid", str(shard_pid),
               "--only", "small,sparse", "--index-dist", "distinct",
               "--table-rows", str(args.table_rows), "--reps", str(args.reps),
               "--op-seconds", str(args.op_seconds), "--json", json_path]
        if args.quick:
            cmd.append("--quick")
        print("\n$ " + " ".join(cmd))
        sys.stdout.flush()
        subprocess.run(cmd, check=True, timeout=1800)
        with open(json_path) as f:
            return [r for r in json.load(f) if not r.get("target")]


def compare(python_rows, cpp_rows):
    """psclient / C++ for each workload both ran."""
    def find(prefix, suffix):
        for r in cpp_rows:
            w = r["workload"]
            if w.startswith(prefix) and w.endswith(suffix):
                return r
        return None

    pairs = [("assign_add scalar, 1 threads", find("assign_add scalar, 1 in flight", "flight")),
             ("assign_add scalar, 8 threads", find("assign_add scalar, 8 in flight", "flight"))]
    for r in python_rows:
        for op in ("scatter_add ", "gather "):
            if r["workload"].startswith(op):
                inflight = r["workload"].rsplit(", ", 1)[1]  # "N in flight"
                pairs.append((r["workload"], find(op, " distinct, " + inflight)))
    by_name = {r["workload"]: r for r in python_rows}
    print("\npsclient / C++ client (same shard, same run; target >= %.1fx)" % TARGET)
    print("%-46s %10s %10s %7s  %-4s  %s" % ("workload", "psclient", "C++", "ratio", "", "C++ row"))
    missing = 0
    for name, cpp in pairs:
        py = by_name[name]
        if cpp is None:
            print("%-46s %10.3g %10s  (no C++ row)" % (name, py["median"], "-"))
            missing += 1
            continue
        ratio = py["median"] / cpp["median"] if cpp["median"] > 0 else 0
        print("%-46s %10.3g %10.3g  x%.2f  %-4s  %s" % (name, py["median"], cpp["median"], ratio,
                                                      "pass" if ratio >= TARGET else "FAIL",
                                                      cpp["workload"]))
    return missing


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    build = os.path.join(os.path.dirname(here), "build")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--psd", default=os.path.join(build, "server", "psd"), help="the psd executable")
    p.add_argument("--psd-bench", default=os.path.join(build, "bench", "psd_bench"),
                   help="psd_bench, for the C++ client's figures in the same run")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run, tiny sizes")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no-cpp", action="store_true", help="skip the C++ client's run")
    args = p.parse_args()
    # The same sizes as psd_bench's (its --quick ones under --quick).
    args.op_seconds = 0.3 if args.quick else 2.0
    args.table_rows = 1 << 16 if args.quick else 1 << 20
    args.batch = 4096
    args.batches = 4 if args.quick else 16
    args.passes = 1 if args.quick else 4
    if args.quick:
        args.reps = min(args.reps, 2)
    # psd_bench runs its small ops reps/2 times (at least once): so do we.
    small_reps = max(1, args.reps // 2)

    with LocalCluster(args.psd, num_shards=1) as cluster:
        shard_address = "127.0.0.1:%d" % cluster.shard_ports[0]
        shard_pid = cluster.shards[0].pid
        print("psclient_bench: shard %s (pid %d), %s run, %d reps; cpu: shard /proc/PID/stat "
              "utime+stime (10 ms ticks), client getrusage(RUSAGE_SELF)"
              % (shard_address, shard_pid, "quick" if args.quick else "full", args.reps))
        table = Table()
        # psclient, then the C++ client, then psclient again (see Table);
        # each pass makes half the reps (at least one).
        passes = 1 if args.no_cpp else 2
        small_per_pass = max(1, small_reps // passes)
        full_reps = args.reps
        args.reps = max(1, full_reps // passes)
        with psclient.connect(cluster.address):
            python_workloads(args, small_per_pass, shard_pid, table, 0)
        args.reps = full_reps
        if args.no_cpp:
            table.print()
            return 0
        cpp_rows = cpp_workloads(args, shard_address, shard_pid)
        args.reps = max(1, full_reps - full_reps // passes)
        with psclient.connect(cluster.address):
            python_workloads(args, small_per_pass, shard_pid, table, 1)
        table.print()
        return 1 if compare(table.rows, cpp_rows) else 0


if __name__ == "__main__":
    sys.exit(main())
