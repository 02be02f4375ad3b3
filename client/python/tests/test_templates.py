"""tf.make_template as the TensorFlow documentation describes it
(variables-api.txt, "tf.make_template"), re-expressed against psclient."""

import numpy as np
import pytest

import psclient


def my_op(x, scalar_name):
    var1 = psclient.get_variable(scalar_name, shape=[],
                                 initializer=psclient.constant_initializer(1))
    var1.initialize()
    return x * var1.read()


def test_name_cannot_be_none(session):
    with pytest.raises(ValueError, match="name cannot be None"):
        psclient.make_template(None, my_op, scalar_name="y")


def test_calls_share_the_variable_and_templates_are_unique(session, prefix):
    # The documentation's first example: z and w are scaled by the same y.
    with psclient.variable_scope(prefix):
        scale_by_y = psclient.make_template("scale_by_y", my_op, scalar_name="y")
        z = scale_by_y(2.0)
        w = scale_by_y(3.0)
        other = psclient.make_template("scale_by_y", my_op, scalar_name="y")
        other(1.0)
    assert (z, w) == (2.0, 3.0)
    assert [v.full_name for v in scale_by_y.global_variables] == [prefix + "/scale_by_y/y"]
    # Two templates are unique: the second has a scope (and variable) of its own.
    assert other.variable_scope_name == prefix + "/scale_by_y_1"
    assert [v.full_name for v in other.trainable_variables] == [prefix + "/scale_by_y_1/y"]


def test_reentering_the_definition_scope_reuses_its_variables(session, prefix):
    # The documentation's exception: a template redefined in the same
    # variable scope, re-entered with reuse=True, reuses the variables.
    with psclient.variable_scope(prefix) as vs:
        scale_by_y = psclient.make_template("scale_by_y", my_op, scalar_name="y")
        scale_by_y(1.0)
        y = scale_by_y.global_variables[0]
    y.assign(np.float32(5))
    with psclient.variable_scope(vs, reuse=True):
        scale_by_y2 = psclient.make_template("scale_by_y", my_op, scalar_name="y")
        assert scale_by_y2(2.0) == 10.0
    assert scale_by_y2.variable_scope_name == scale_by_y.variable_scope_name


def test_create_scope_now_captures_the_scope_at_construction(session, prefix):
    with psclient.variable_scope(prefix):
        t = psclient.make_template("early", my_op, create_scope_now_=True, scalar_name="y")
    # The scope exists before any call, named where the template was made.
    assert t.variable_scope_name == prefix + "/early"
    assert t.global_variables == []
    # The first call, from anywhere, creates in that scope (without reuse) ...
    assert t(2.0) == 2.0
    # ... and later calls reuse.
    assert t(3.0) == 3.0
    assert [v.full_name for v in t.global_variables] == [prefix + "/early/y"]


def test_a_trainable_variable_made_after_the_first_call_is_a_value_error(session, prefix):
    def makes_variables(trainable):
        psclient.get_variable("w", shape=[2], initializer=psclient.zeros_initializer())
        psclient.Variable(np.zeros(2, np.float32), name="v", trainable=trainable)

    with psclient.variable_scope(prefix):
        local = psclient.make_template("local", makes_variables, trainable=False)
        local()
        local()  # non-trainable Variables (locals) are allowed
        bad = psclient.make_template("bad", makes_variables, trainable=True)
        bad()
        with pytest.raises(ValueError, match="Trainable variable created"):
            bad()


def test_a_failed_first_call_leaves_the_template_uncreated(session, prefix):
    calls = []

    def flaky(x):
        calls.append(x)
        if len(calls) == 1:
            raise RuntimeError("first call fails")
        return my_op(x, "y")

    with psclient.variable_scope(prefix):
        t = psclient.make_template("flaky", flaky, create_scope_now_=True)
        with pytest.raises(RuntimeError):
            t(1.0)
        # Not a reusing call: the variable is created now.
        assert t(4.0) == 4.0
        assert t(5.0) == 5.0


def test_unique_name_and_custom_getter(session, prefix):
    seen = []

    def getter(getter, name, *args, **kwargs):
        seen.append(name)
        return getter(name, *args, **kwargs)

    with psclient.variable_scope(prefix):
        t = psclient.make_template("ignored", my_op, unique_name_="exact",
                                   custom_getter_=getter, scalar_name="y")
        t(1.0)
        t(1.0)
    assert t.variable_scope_name == prefix + "/exact"
    assert seen == [prefix + "/exact/y"] * 2
