import os
import subprocess
import sys

import numpy as np

import psclient


def test_gradient_descent_dense_and_sparse(session, prefix):
    with psclient.variable_scope(prefix):
        w = psclient.get_variable("w", shape=[4, 2], initializer=psclient.ones_initializer(),
                                  partitioner=psclient.fixed_size_partitioner(2))
        step = psclient.get_variable("step", shape=[], dtype=psclient.int64,
                                     initializer=psclient.zeros_initializer(), trainable=False)
    psclient.variables_initializer([w, step])
    opt = psclient.train.GradientDescentOptimizer(0.5)
    opt.apply_gradients([(np.full([4, 2], 2, np.float32), w)], global_step=step)
    np.testing.assert_allclose(w.read(), np.zeros([4, 2]))
    opt.apply_gradients([(psclient.IndexedSlices(np.ones([2, 2], np.float32), [3, 3]), w)],
                        global_step=step)
    expected = np.zeros([4, 2], np.float32)
    expected[3] = -1.0  # duplicates summed: 0 - 0.5 * 2
    np.testing.assert_allclose(w.read(), expected)
    assert step.read() == 2


def test_adam_creates_tensorflow_named_slots(session, prefix):
    v = psclient.get_variable(prefix, shape=[3], initializer=psclient.zeros_initializer(),
                              initialize=True)
    opt = psclient.train.AdamOptimizer(0.1)
    opt.apply_gradients([(np.array([1.0, -1.0, 0.0], np.float32), v)])
    got = v.read()
    # Adam's first step moves each coordinate by about lr * sign(grad).
    np.testing.assert_allclose(got, [-0.1, 0.1, 0.0], atol=1e-3)
    assert opt.get_slot_names() == ["m", "v"]
    m = opt.get_slot(v, "m")
    assert m is not None and m.name == prefix + "/Adam:0"


def test_logreg_example_two_workers_loss_drops(cluster):
    examples = os.environ.get("PSCLIENT_EXAMPLES") or os.path.join(
        os.path.dirname(__file__), "..", "examples")
    out = subprocess.run([sys.executable, os.path.join(examples, "train_logreg.py"),
                          "--coordinator", cluster.address, "--steps", "200"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    line = [l for l in out.stdout.splitlines() if l.startswith("loss")][0]
    initial, final = float(line.split()[1]), float(line.split()[3].rstrip(","))
    assert final < 0.6 * initial, out.stdout
