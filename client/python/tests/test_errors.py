import numpy as np
import pytest

import psclient
from psclient import errors

ALL = {
    errors.CANCELLED: errors.CancelledError,
    errors.UNKNOWN: errors.UnknownError,
    errors.INVALID_ARGUMENT: errors.InvalidArgumentError,
    errors.DEADLINE_EXCEEDED: errors.DeadlineExceededError,
    errors.NOT_FOUND: errors.NotFoundError,
    errors.ALREADY_EXISTS: errors.AlreadyExistsError,
    errors.PERMISSION_DENIED: errors.PermissionDeniedError,
    errors.RESOURCE_EXHAUSTED: errors.ResourceExhaustedError,
    errors.FAILED_PRECONDITION: errors.FailedPreconditionError,
    errors.ABORTED: errors.AbortedError,
    errors.OUT_OF_RANGE: errors.OutOfRangeError,
    errors.UNIMPLEMENTED: errors.UnimplementedError,
    errors.INTERNAL: errors.InternalError,
    errors.UNAVAILABLE: errors.UnavailableError,
    errors.DATA_LOSS: errors.DataLossError,
    errors.UNAUTHENTICATED: errors.UnauthenticatedError,
}


@pytest.mark.parametrize("code,cls", sorted(ALL.items()))
def test_every_status_code_maps_to_its_tensorflow_class(code, cls):
    e = errors._from_status(code, "msg %d" % code)
    assert type(e) is cls
    assert isinstance(e, errors.OpError)
    assert e.code == code and e.message == "msg %d" % code and str(e) == e.message
    assert not isinstance(e, ValueError)
    assert errors.exception_type_from_error_code(code) is cls


@pytest.mark.parametrize("code", [errors.ALREADY_EXISTS, errors.NOT_FOUND,
                                  errors.INVALID_ARGUMENT])
def test_naming_errors_are_also_value_errors(code):
    e = errors._from_status(code, "m", True)
    assert isinstance(e, ValueError) and isinstance(e, ALL[code]) and e.code == code


def test_extension_raises_through_the_translator():
    with pytest.raises(errors.InvalidArgumentError):
        psclient._psclient._round_trip(np.zeros(2, np.float32), 99)


def test_uninitialized_read_is_failed_precondition(session, prefix):
    v = psclient.get_variable(prefix + "_v", shape=[2])
    with pytest.raises(errors.FailedPreconditionError) as e:
        v.read_value()
    assert e.value.code == errors.FAILED_PRECONDITION and prefix in e.value.message


def test_count_up_to_at_limit_is_out_of_range(session, prefix):
    step = psclient.get_variable(prefix, shape=[], dtype=psclient.int64,
                                 initializer=psclient.zeros_initializer(), initialize=True)
    assert [step.count_up_to(3) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(errors.OutOfRangeError, match="Reached limit of 3"):
        step.count_up_to(3)
    assert step.read() == 3


def test_bad_index_is_invalid_argument_not_value_error(session, prefix):
    v = psclient.get_variable(prefix, shape=[6, 2], initializer=psclient.zeros_initializer(),
                              partitioner=psclient.fixed_size_partitioner(2), initialize=True)
    with pytest.raises(errors.InvalidArgumentError) as e:
        v.gather([0, 6])
    assert not isinstance(e.value, ValueError)
    assert "6" in e.value.message
    with pytest.raises(errors.InvalidArgumentError):
        v.scatter_add([7], np.ones([1, 2], np.float32))
    np.testing.assert_array_equal(v.read(), np.zeros([6, 2]))


def test_shape_mismatch_is_invalid_argument(session, prefix):
    v = psclient.get_variable(prefix, shape=[3], initializer=psclient.zeros_initializer(),
                              initialize=True)
    with pytest.raises(errors.InvalidArgumentError):
        v.assign(np.zeros([4], np.float32))
    with pytest.raises(TypeError):
        v.assign(np.array(["a", "b", "c"]))


def test_a_bad_shape_names_its_variable(session, prefix):
    with pytest.raises(errors.InvalidArgumentError,
                       match=r"shape of variable '%s_neg': dimension 1 is -1" % prefix):
        psclient.get_variable(prefix + "_neg", shape=[2, -1])
    with pytest.raises(errors.InvalidArgumentError,
                       match=r"shape of variable '%s_huge'.* has too many elements" % prefix):
        psclient.get_variable(prefix + "_huge", shape=[2**40, 2**40])


def test_addresses_and_tls_files_that_cannot_work_fail_at_once(tmp_path):
    for address, message in (("", "address is empty"),
                             ("127.0.0.1:99999", r"the port must be a number in \[1, 65535\]")):
        with pytest.raises(errors.InvalidArgumentError, match=message):
            psclient.Session(address, timeout=0.5, retry_budget=0)
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(errors.InvalidArgumentError, match="not a PEM file with a CERTIFICATE"):
        psclient.Session("127.0.0.1:1", timeout=0.5, retry_budget=0, tls_ca=str(not_pem))


def test_missing_variable_is_not_found(session, prefix):
    with pytest.raises(errors.NotFoundError):
        session.lookup_variable(prefix + "/nope")


def test_closed_session_fails_with_failed_precondition(cluster, prefix):
    s = psclient.connect(cluster.address)
    v = psclient.get_variable(prefix, shape=[1], initializer=psclient.ones_initializer(),
                              initialize=True)
    s.close()
    with pytest.raises(errors.FailedPreconditionError, match="closed"):
        v.read()
    assert s.closed and s not in psclient.session._default_stack


def test_unreachable_coordinator_is_unavailable_or_deadline():
    with pytest.raises((errors.UnavailableError, errors.DeadlineExceededError)):
        psclient.Session("127.0.0.1:1", timeout=0.5, retry_budget=0)
