#!/usr/bin/python3
"""Digits classifier trained by two asynchronous trainers on a psd cluster,
checkpointed, stopped, restarted from its latest checkpoint, and finished.

scikit-learn's bundled 8x8 digits (offline, 1797 images), 75/25 train/test
split. The model is a small MLP (64 -> 64 tanh -> 10 softmax) whose weights
are get_variable's under the scope "digits": the first layer is partitioned
in two along its input axis (fixed_size_partitioner), so it lives on both
shards. Gradients are computed in numpy; Adagrad applies them on the shards
(apply_gradients, one batched message per shard per step). The global step
is advanced with count_up_to, which also ends each phase for both trainers.
The chief saves a checkpoint each time the global step passes a multiple of
--checkpoint-every (the save is one consistent cut; the worker keeps
training meanwhile).

Phase 1: a fresh local cluster (a coordinator and 2 shards), the chief and a
worker train to --steps/2, a final checkpoint is saved, the cluster stops.
Phase 2: a new cluster (fresh processes and coordinator state; the
checkpoint directory is kept) declares the same variables and their
optimizer slots, restores the latest checkpoint, and both trainers continue
from the restored global step to --steps. Test accuracy is printed after
each phase.

    train_digits.py --psd-binary build/server/psd [--steps 600]
"""

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import psclient
from psclient.local_cluster import LocalCluster

HIDDEN, CLASSES = 64, 10


def load_data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def declare(initialize):
    """The model's variables; every process declares the same ones (the
    coordinator attaches the second declaration to the first)."""
    with psclient.variable_scope("digits", reuse=psclient.AUTO_REUSE):
        init = psclient.glorot_uniform_initializer(seed=1)
        w1 = psclient.get_variable("hidden/w", shape=[64, HIDDEN], initializer=init,
                                   partitioner=psclient.fixed_size_partitioner(2),
                                   initialize=initialize)
        b1 = psclient.get_variable("hidden/b", shape=[HIDDEN],
                                   initializer=psclient.zeros_initializer(), initialize=initialize)
        w2 = psclient.get_variable("softmax/w", shape=[HIDDEN, CLASSES], initializer=init,
                                   initialize=initialize)
        b2 = psclient.get_variable("softmax/b", shape=[CLASSES],
                                   initializer=psclient.zeros_initializer(), initialize=initialize)
        step = psclient.get_variable("global_step", shape=[], dtype=psclient.int64,
                                     initializer=psclient.zeros_initializer(), trainable=False,
                                     initialize=initialize)
    return [w1, b1, w2, b2], step


def forward(params, x):
    w1, b1, w2, b2 = params
    h = np.tanh(x @ w1 + b1)
    logits = h @ w2 + b2
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return h, p


def gradients(params, x, y):
    w1, b1, w2, b2 = params
    h, p = forward(params, x)
    n = x.shape[0]
    d = p
    d[np.arange(n), y] -= 1.0
    d /= n
    dh = (d @ w2.T) * (1.0 - h * h)
    return [x.T @ dh, dh.sum(axis=0), h.T @ d, d.sum(axis=0)]


def accuracy(params, x, y):
    return float(np.mean(np.argmax(forward(params, x)[1], axis=1) == y))


def optimizer(lr):
    return psclient.train.AdagradOptimizer(lr)


def saver():
    """Every variable (weights, global step, Adagrad's accumulators), the 3
    newest checkpoints kept: the retention state is the coordinator's, per
    checkpoint directory, so it carries over into phase 2."""
    return psclient.train.Saver(max_to_keep=3)


def trainer(address, task, limit, args, out):
    """One trainer process: task 0 is the chief (initializes in phase 1,
    saves every args.checkpoint_every steps)."""
    x, _, y, _ = load_data()
    x, y = x[task::2], y[task::2]
    rng = np.random.default_rng(1000 * task + limit)
    with psclient.connect(address):
        params, step = declare(initialize=False)
        if task == 0 and args.init:
            psclient.variables_initializer(params + [step])
        psclient.wait_for_initialized(params + [step], timeout=60)
        opt = optimizer(args.lr)
        chief_saver = saver() if task == 0 else None
        done, saves, t0 = 0, 0, time.time()
        every = args.checkpoint_every
        next_save = None
        while True:
            try:
                now = step.count_up_to(limit) + 1  # the shared step this update makes
            except psclient.errors.OutOfRangeError:
                break
            idx = rng.integers(0, x.shape[0], size=args.batch)
            grads = gradients([v.read() for v in params], x[idx], y[idx])
            opt.apply_gradients(list(zip(grads, params)))
            done += 1
            if chief_saver is None:
                continue
            if next_save is None:
                next_save = (now // every + 1) * every
            if now >= next_save:  # the other trainer may have made step next_save itself
                chief_saver.save(os.path.join(args.ckpt_dir, "model.ckpt"), global_step=now)
                saves += 1
                next_save = (now // every + 1) * every
    out.put((task, done, saves, time.time() - t0))


def run_trainers(address, limit, args):
    ctx = mp.get_context("spawn")  # no forked gRPC state
    out = ctx.Queue()
    procs = [ctx.Process(target=trainer, args=(address, t, limit, args, out)) for t in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=args.timeout) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError("trainer exit codes %s" % [p.exitcode for p in procs])
    return sorted(results)


def evaluate(tag):
    _, x_test, _, y_test = load_data()
    params, step = declare(initialize=False)
    acc = accuracy([v.read() for v in params], x_test, y_test)
    print("%s: global step %d, test accuracy %.4f" % (tag, int(step.read()), acc), flush=True)
    return int(step.read()), acc


def start_cluster(args, run_dir):
    return LocalCluster(args.psd_binary, num_shards=2, state_dir=run_dir,
                        coordinator_args=["--checkpoint-dir", args.ckpt_dir])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--psd-binary", required=True, help="the psd executable")
    ap.add_argument("--steps", type=int, default=600, help="global steps in all (both phases)")
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--ckpt-dir", help="checkpoint directory (default: a temporary one)")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="train_digits_")
    try:
        args.ckpt_dir = os.path.abspath(args.ckpt_dir or os.path.join(work, "ckpt"))
        os.makedirs(args.ckpt_dir, exist_ok=True)
        half = args.steps // 2
        t_start = time.time()

        # Phase 1.
        t0 = time.time()
        with start_cluster(args, os.path.join(work, "run1")) as cluster:
            t_up = time.time() - t0
            args.init = True
            results = run_trainers(cluster.address, half, args)
            with psclient.connect(cluster.address):
                step1, acc1 = evaluate("phase 1")
                path = saver().save(os.path.join(args.ckpt_dir, "model.ckpt"), global_step=step1)
                print("phase 1: trainers (task, steps, saves, seconds) %s; saved %s" %
                      (results, path), flush=True)
        t1 = time.time() - t0
        print("phase 1: cluster stopped (%.1fs, start-up %.1fs)" % (t1, t_up), flush=True)

        # Phase 2: fresh processes and coordinator state, same checkpoints.
        t0 = time.time()
        with start_cluster(args, os.path.join(work, "run2")) as cluster:
            with psclient.connect(cluster.address):
                params, step = declare(initialize=False)
                optimizer(args.lr).create_slots(params)  # Adagrad's accumulators
                latest = psclient.train.latest_checkpoint(args.ckpt_dir)
                t_r = time.time()
                saver().restore(latest)
                restored = int(step.read())
                print("phase 2: restored %s in %.2fs, global step %d" %
                      (latest, time.time() - t_r, restored), flush=True)
                if restored != step1:
                    raise RuntimeError("restored step %d, saved %d" % (restored, step1))
            args.init = False
            results = run_trainers(cluster.address, args.steps, args)
            with psclient.connect(cluster.address):
                step2, acc2 = evaluate("phase 2")
                last = saver().last_checkpoints
            print("phase 2: trainers (task, steps, saves, seconds) %s" % (results,), flush=True)
        t2 = time.time() - t0
        print("checkpoints kept: %s" % [os.path.basename(p) for p in last])
        print("digits: test accuracy %.4f after %d steps (phase 1 %.4f at step %d); "
              "phase 1 %.1fs, phase 2 %.1fs, total %.1fs"
              % (acc2, step2, acc1, step1, t1, t2, time.time() - t_start), flush=True)
        return 0 if acc2 >= 0.9 and step2 == args.steps else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
