"""Every psclient.train optimizer against a numpy transcription of
TensorFlow's update rule (training_ops), dense and sparse, on a partitioned
variable: two steps, slots created with TensorFlow's names and initial
values, and the sparse step touching only the rows it names (duplicates
summed first, as TensorFlow's sparse apply after unsorted_segment_sum)."""

import numpy as np
import pytest

import psclient


def momentum(lr, mu):
    def step(var, slots, g):
        (acc,) = slots
        acc[:] = acc * mu + g
        var -= acc * lr
    return step


def adagrad(lr):
    def step(var, slots, g):
        (acc,) = slots
        acc += g * g
        var -= lr * g / np.sqrt(acc)
    return step


def rmsprop(lr, decay, mu, eps):
    def step(var, slots, g):
        ms, mom = slots
        ms += (g * g - ms) * (1 - decay)
        mom[:] = mom * mu + lr * g / np.sqrt(ms + eps)
        var -= mom
    return step


def ftrl(lr, l1, l2):
    def step(var, slots, g):
        acc, lin = slots
        new_acc = acc + g * g
        lin += g - (np.sqrt(new_acc) - np.sqrt(acc)) / lr * var
        quad = np.sqrt(new_acc) / lr + 2 * l2
        var[:] = np.where(np.abs(lin) > l1, (np.sign(lin) * l1 - lin) / quad, 0.0)
        acc[:] = new_acc
    return step


# (factory, reference step, slot names with TensorFlow's initial values)
CASES = {
    "Momentum": (lambda: psclient.train.MomentumOptimizer(0.1, 0.9), momentum(0.1, 0.9),
                 [("momentum", 0.0)]),
    "Adagrad": (lambda: psclient.train.AdagradOptimizer(0.5, initial_accumulator_value=0.1),
                adagrad(0.5), [("accumulator", 0.1)]),
    "RMSProp": (lambda: psclient.train.RMSPropOptimizer(0.01, decay=0.9, momentum=0.5,
                                                        epsilon=1e-10),
                rmsprop(0.01, 0.9, 0.5, 1e-10), [("rms", 1.0), ("momentum", 0.0)]),
    "Ftrl": (lambda: psclient.train.FtrlOptimizer(0.2, l1_regularization_strength=0.01,
                                                  l2_regularization_strength=0.1),
             ftrl(0.2, 0.01, 0.1), [("accum", 0.1), ("linear", 0.0)]),
    "GradientDescent": (lambda: psclient.train.GradientDescentOptimizer(0.3),
                        lambda var, slots, g: var.__isub__(0.3 * g), []),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_optimizer_matches_tensorflow_rule(session, prefix, kind):
    make, reference, slot_specs = CASES[kind]
    rng = np.random.default_rng(len(kind))
    init = rng.normal(size=(6, 3)).astype(np.float32)
    v = psclient.get_variable(prefix, initializer=init, initialize=True,
                              partitioner=psclient.fixed_size_partitioner(2))
    opt = make()
    assert opt.get_name() == kind
    opt.create_slots([v])
    assert opt.get_slot_names() == [name for name, _ in slot_specs]
    want_var = init.astype(np.float64)
    want_slots = []
    for name, initial in slot_specs:
        slot = opt.get_slot(v, name)
        assert slot is not None and slot.shape == v.shape
        np.testing.assert_array_equal(slot.read(), np.full([6, 3], initial, np.float32))
        want_slots.append(np.full([6, 3], initial, np.float64))

    dense = rng.normal(size=(6, 3)).astype(np.float32)
    opt.apply_gradients([(dense, v)])
    reference(want_var, want_slots, dense.astype(np.float64))
    np.testing.assert_allclose(v.read(), want_var, rtol=2e-5, atol=2e-6)

    # Sparse: rows 4 and 1, row 4 twice; the other rows keep var and slots.
    rows = rng.normal(size=(3, 3)).astype(np.float32)
    opt.apply_gradients([(psclient.IndexedSlices(rows, [4, 1, 4]), v)])
    summed = np.zeros([6, 3])
    np.add.at(summed, [4, 1, 4], rows.astype(np.float64))
    touched = [1, 4]
    sub_var = want_var[touched].copy()
    sub_slots = [s[touched].copy() for s in want_slots]
    reference(sub_var, sub_slots, summed[touched])
    want_var[touched] = sub_var
    for s, sub in zip(want_slots, sub_slots):
        s[touched] = sub
    np.testing.assert_allclose(v.read(), want_var, rtol=2e-5, atol=2e-6)
    for (name, _), want in zip(slot_specs, want_slots):
        np.testing.assert_allclose(opt.get_slot(v, name).read(), want, rtol=2e-5, atol=2e-6)


def test_optimizer_rejects_mismatched_gradient(session, prefix):
    v = psclient.get_variable(prefix, shape=[4], initializer=psclient.zeros_initializer(),
                              initialize=True)
    opt = psclient.train.MomentumOptimizer(0.1, 0.9)
    with pytest.raises(psclient.errors.InvalidArgumentError):
        opt.apply_gradients([(np.ones([5], np.float32), v)])
    with pytest.raises(psclient.errors.InvalidArgumentError):
        opt.apply_gradients([(psclient.IndexedSlices(np.ones([1], np.float32), [4]), v)])
    with pytest.raises(ValueError, match="No gradients"):
        opt.apply_gradients([(None, v)])
    with pytest.raises(NotImplementedError, match="autodiff"):
        opt.minimize(None)
    np.testing.assert_array_equal(v.read(), np.zeros(4))
