"""docs/tensorflow-compat.md is what tf_compat_table.py finds in psclient now:
the table of TensorFlow's Variables API cannot drift from the code."""

import os

import tf_compat_table

DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "docs",
                   "tensorflow-compat.md")


def test_compat_table_is_current():
    with open(DOC) as f:
        committed = f.read()
    assert committed == tf_compat_table.table(), (
        "docs/tensorflow-compat.md is out of date; regenerate it with\n"
        "  PYTHONPATH=build/client/python /usr/bin/python3 "
        "client/python/tests/tf_compat_table.py > docs/tensorflow-compat.md")


def test_every_api_item_is_accounted_for():
    rows = [r for r in tf_compat_table.table().splitlines() if r.startswith("| `tf.")]
    with open(tf_compat_table.API_LIST) as f:
        items = [l for l in f if l.strip() and not l.startswith("#")]
    assert len(rows) == len(items)
    # What psclient does not provide says why.
    for row in rows:
        cells = [c.strip() for c in row.split("|")]
        if cells[2] == "not provided":
            assert cells[3], row


def test_refused_items_raise_unimplemented(session):
    import pytest
    import psclient
    saver = psclient.train.Saver(allow_empty=True)
    for name in tf_compat_table.REFUSED:
        method = getattr(saver, name.rsplit(".", 1)[1])
        with pytest.raises(psclient.errors.UnimplementedError):
            method([])
