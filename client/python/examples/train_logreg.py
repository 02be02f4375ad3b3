#!/usr/bin/python3
"""Asynchronous data-parallel training against a psd cluster.

A softmax (multinomial logistic) regression on synthetic numpy data: the
weights live in psd, partitioned in two along the feature axis
(fixed_size_partitioner), the bias beside them, and a global step advanced
with count_up_to. N worker processes (default 2) each open their own
session, declare the same variables (the second attaches to the first's),
the chief initializes them and the others wait_for_initialized. Each step a
worker reads the parameters, computes the gradient of its minibatch in numpy
and sends w -= lr * grad as assign_sub (dense) and, for the rows its batch
touched, scatter_sub (sparse features). The loss on the whole data set
before and after is printed.

    # against a running cluster
    train_logreg.py --coordinator 127.0.0.1:7070
    # or start a local coordinator and two shards first
    train_logreg.py --psd-binary build/server/psd
"""

import argparse
import multiprocessing as mp
import sys
import time

import numpy as np

import psclient

FEATURES, CLASSES = 64, 4


def make_data(seed=0, n=4096):
    rng = np.random.default_rng(seed)
    true_w = rng.normal(size=(FEATURES, CLASSES)).astype(np.float32)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    # Sparse-ish inputs: most features are zero in each example.
    x *= rng.random(size=x.shape) < 0.25
    y = np.argmax(x @ true_w + 0.1 * rng.normal(size=(n, CLASSES)), axis=1)
    return x, y


def softmax_loss_and_grads(w, b, x, y):
    logits = x @ w + b
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    n = x.shape[0]
    loss = -np.log(p[np.arange(n), y] + 1e-12).mean()
    d = p
    d[np.arange(n), y] -= 1.0
    d /= n
    return float(loss), x.T @ d, d.sum(axis=0)


def declare():
    with psclient.variable_scope("logreg", reuse=psclient.AUTO_REUSE):
        w = psclient.get_variable("w", shape=[FEATURES, CLASSES],
                                  initializer=psclient.zeros_initializer(),
                                  partitioner=psclient.fixed_size_partitioner(2))
        b = psclient.get_variable("b", shape=[CLASSES], initializer=psclient.zeros_initializer())
        step = psclient.get_variable("global_step", shape=[], dtype=psclient.int64,
                                     initializer=psclient.zeros_initializer(), trainable=False)
    return w, b, step


def worker(address, task, num_workers, steps, lr, batch, out):
    x, y = make_data()
    x, y = x[task::num_workers], y[task::num_workers]
    rng = np.random.default_rng(100 + task)
    with psclient.connect(address):
        w, b, step = declare()
        if task == 0:
            psclient.variables_initializer([w, b, step])
        else:
            psclient.wait_for_initialized([w, b, step], timeout=60)
        done = 0
        while True:
            try:
                step.count_up_to(steps)  # the global step: all workers together
            except psclient.errors.OutOfRangeError:
                break
            idx = rng.integers(0, x.shape[0], size=batch)
            xb, yb = x[idx], y[idx]
            _, gw, gb = softmax_loss_and_grads(w.read_value(), b.read_value(), xb, yb)
            rows = np.flatnonzero(np.any(xb != 0, axis=0))  # features this batch touched
            w.scatter_sub(rows, lr * gw[rows])
            b.assign_sub(lr * gb)
            done += 1
    out.put((task, done))


def evaluate(address):
    x, y = make_data()
    with psclient.connect(address):
        w, b, step = declare()
        loss, _, _ = softmax_loss_and_grads(w.read_value(), b.read_value(), x, y)
        acc = float(np.mean(np.argmax(x @ w.read_value() + b.read_value(), axis=1) == y))
        return loss, acc, int(step.read_value())


def train(address, num_workers=2, steps=400, lr=0.5, batch=64):
    x, y = make_data()
    initial = softmax_loss_and_grads(np.zeros((FEATURES, CLASSES), np.float32),
                                     np.zeros(CLASSES, np.float32), x, y)[0]
    ctx = mp.get_context("spawn")  # no forked gRPC state
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(address, t, num_workers, steps, lr, batch, out))
             for t in range(num_workers)]
    t0 = time.time()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError("worker exit codes %s" % [p.exitcode for p in procs])
    per_worker = dict(out.get(timeout=10) for _ in procs)
    loss, acc, global_step = evaluate(address)
    print("workers %d, steps %s (global step %d), %.1fs" %
          (num_workers, per_worker, global_step, time.time() - t0))
    print("loss %.4f -> %.4f, train accuracy %.3f" % (initial, loss, acc))
    return initial, loss, acc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coordinator", help="HOST:PORT of a running cluster's coordinator")
    ap.add_argument("--psd-binary", help="start a local coordinator and 2 shards from this binary")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=0.5)
    args = ap.parse_args(argv)
    if bool(args.coordinator) == bool(args.psd_binary):
        ap.error("give exactly one of --coordinator and --psd-binary")
    if args.coordinator:
        initial, final, _ = train(args.coordinator, args.workers, args.steps, args.lr)
    else:
        from psclient.local_cluster import LocalCluster
        with LocalCluster(args.psd_binary, num_shards=2) as cluster:
            initial, final, _ = train(cluster.address, args.workers, args.steps, args.lr)
    return 0 if final < initial else 1


if __name__ == "__main__":
    sys.exit(main())
