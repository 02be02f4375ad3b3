#!/usr/bin/python3
"""Click-through-rate training with an embedding table keyed by feature id.

The data set is made here from a known model: each example has three
categorical fields whose ids are drawn Zipf-distributed (a few ids are
common, most are rare) from a space of 10^9 ids per field, and its label is
drawn from the logistic model p = sigmoid(bias + w(id_1) + w(id_2) + w(id_3))
whose weight of each id is a fixed pseudo-random normal of that id. No
vocabulary is declared anywhere: the trainer keeps one weight per id it has
seen in a psd embedding table (dim 1, rows made on first use, keys by hash
over two parts), trains it and a dense bias with Adagrad on the shards, and
compares the held-out log-loss with the generating model's own (the best any
model can do): within 5% means the table learned the model.

    # against a running cluster
    train_ctr.py --coordinator 127.0.0.1:7070
    # or start a local coordinator and two shards first
    train_ctr.py --psd-binary build/server/psd
"""

import argparse
import sys
import time

import numpy as np

import psclient

FIELDS = 3
ID_SPACE = 10 ** 9
ZIPF_A = 1.5      # how skewed the ids are
WEIGHT_STDDEV = 0.7
BIAS = -1.0


def _mix(x):
    """SplitMix64's finalizer on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _inverse_normal(u):
    """The standard normal quantile of u in (0, 1) (Winitzki's erf inverse)."""
    x = 2 * u - 1
    a = 0.147
    ln = np.log1p(-x * x)
    t = 2 / (np.pi * a) + ln / 2
    return np.sqrt(2) * np.sign(x) * np.sqrt(np.sqrt(t * t - ln / a) - t)


def true_weights(keys):
    """The generating model's weight of each feature key (a pure function)."""
    bits = _mix(keys.astype(np.uint64) ^ np.uint64(0x5BD1E995)) >> np.uint64(11)
    u = (bits.astype(np.float64) + 0.5) / 2.0 ** 53
    return WEIGHT_STDDEV * _inverse_normal(u)


def make_examples(rng, n):
    """n examples: feature keys [n, FIELDS] (field k's ids offset by k * 10^9),
    labels [n], and the generating model's probabilities [n]."""
    ranks = rng.zipf(ZIPF_A, size=(n, FIELDS)).astype(np.uint64)
    fields = np.arange(FIELDS, dtype=np.uint64)
    ids = (_mix(ranks * np.uint64(FIELDS) + fields) % np.uint64(ID_SPACE)).astype(np.int64)
    keys = ids + np.arange(FIELDS, dtype=np.int64) * ID_SPACE
    p = 1.0 / (1.0 + np.exp(-(BIAS + true_weights(keys).sum(axis=1))))
    labels = (rng.random(n) < p).astype(np.float32)
    return keys, labels, p


def log_loss(labels, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def train(train_examples=200000, test_examples=20000, batch=1000, learning_rate=0.1, seed=1,
          scope="ctr", session=None):
    """Trains on fresh data; returns (model log-loss, generating model's
    log-loss, rows in the table) on held-out examples."""
    rng = np.random.default_rng(seed)
    keys, labels, _ = make_examples(rng, train_examples)
    test_keys, test_labels, test_p = make_examples(rng, test_examples)
    with psclient.variable_scope(scope, reuse=psclient.AUTO_REUSE):
        table = psclient.get_embedding_variable(
            "features", embedding_dim=1, initializer=psclient.zeros_initializer(),
            partitioner=psclient.fixed_size_partitioner(2), session=session)
        bias = psclient.get_variable("bias", shape=[], initializer=psclient.zeros_initializer(),
                                     initialize=True, session=session)
    opt = psclient.train.AdagradOptimizer(learning_rate, session=session)
    for start in range(0, train_examples, batch):
        k = keys[start:start + batch]
        y = labels[start:start + batch]
        flat = k.reshape(-1)
        w = table.gather(flat).reshape(k.shape)          # [batch, FIELDS]
        p = 1.0 / (1.0 + np.exp(-(bias.read() + w.sum(axis=1))))
        g = (p - y).astype(np.float32)                    # d(log-loss)/d(logit), per example
        # Each feature's gradient is its example's; repeated ids are summed
        # by the client before they are sent.
        rows = np.repeat(g, FIELDS).reshape(-1, 1)
        opt.apply_gradients([(psclient.IndexedSlices(rows, flat), table),
                             (np.float32(g.sum()), bias)])
    w = table.lookup_for_inference(test_keys.reshape(-1)).reshape(test_keys.shape)
    p = 1.0 / (1.0 + np.exp(-(bias.read() + w.sum(axis=1))))
    return log_loss(test_labels, p), log_loss(test_labels, test_p), table.size()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coordinator", help="HOST:PORT of a running coordinator")
    ap.add_argument("--psd-binary", help="start a local cluster with this psd binary")
    ap.add_argument("--examples", type=int, default=200000, help="training examples")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if bool(args.coordinator) == bool(args.psd_binary):
        ap.error("give --coordinator or --psd-binary")

    def run(address):
        with psclient.connect(address):
            start = time.monotonic()
            model, truth, rows = train(args.examples, seed=args.seed)
            took = time.monotonic() - start
        print("ctr: %d examples, %d feature rows in the table, %.1f s" % (args.examples, rows, took))
        print("ctr: held-out log-loss %.4f, generating model's %.4f (x%.3f)"
              % (model, truth, model / truth))
        return 0 if model <= 1.05 * truth else 1

    if args.coordinator:
        return run(args.coordinator)
    from psclient.local_cluster import LocalCluster
    with LocalCluster(args.psd_binary, num_shards=2) as cluster:
        return run(cluster.address)


if __name__ == "__main__":
    sys.exit(main())
