"""Builds docs/tensorflow-compat.md: for each item of TensorFlow's Variables
API (tests/data/tf_variables_api.txt), what psclient provides, found by
looking at psclient itself (the object exists; every documented argument is
a parameter of it), so the table cannot drift from the code.

    PYTHONPATH=build/client/python /usr/bin/python3 \\
        client/python/tests/tf_compat_table.py > docs/tensorflow-compat.md

test_compat_table.py fails when the committed table differs from what this
prints.
"""

import inspect
import os
import re
import sys

import psclient

HERE = os.path.dirname(os.path.abspath(__file__))
API_LIST = os.path.join(HERE, "data", "tf_variables_api.txt")

# What a status alone cannot say: arguments psclient refuses by name (they
# have no meaning in a networked parameter server), and items it does not
# provide, with the reason. Everything else in the table is found, not said.
NOTES = {
    "tf.Variable.__init__": "caching_device is refused by name (get_variable and "
                            "variable_scope take it)",
    "tf.Variable.ref": "no graph references: the variable is its handle",
    "tf.Variable.graph": "no graph",
    "tf.Variable.op": "no graph ops",
    "tf.IndexedSlices.op": "no graph ops",
    "tf.IndexedSlices.graph": "no graph",
    "tf.IndexedSlices.name": "values are numpy arrays, without tensor names",
    "tf.IndexedSlices.device": "values are numpy arrays in the trainer's memory",
    "tf.train.Saver.__init__": "restore_sequentially, builder and a V1 write_version are "
                               "refused by name; sharded is accepted (every save writes "
                               "one data file per shard); reshape restores an "
                               "unpartitioned variable only",
    "tf.VariableScope.__init__": "makes a scope not yet entered: variable_scope(it) enters "
                                 "it at its full name with its defaults; constraint is "
                                 "refused by name",
    "tf.Variable.initial_value": "the value stays on the shards; read() gives the value",
    "tf.Variable.initializer": "an object whose run() initializes the variable",
    "tf.Variable.device": "the shard (or each part's shard) holding the value",
    "tf.train.update_checkpoint_state": "writes the state file on the coordinator's side, "
                                        "under its checkpoint roots",
    "tf.train.export_meta_graph": "the variables' declarations and the Saver's definition "
                                  "as JSON (psclient.meta_graph); graph_def and "
                                  "meta_info_def are refused by name",
    "tf.train.import_meta_graph": "declares the variables (attaching to existing ones) and "
                                  "returns the Saver",
    "tf.train.Saver.save": "write_meta_graph writes PREFIX.meta where the checkpoint's "
                           "directory is on the trainer's machine too, else warns",
    "tf.VariableScope.set_partitioner": "set_partitioner(None) in a scope entered with a "
                                        "partitioner is refused",
    "tf.make_template": "unique_name_ and custom_getter_ (later TensorFlow) are supported too",
    "tf.train.Saver.set_last_checkpoints": "retention is the coordinator's, per checkpoint "
                                           "directory: each path joins its directory's list; "
                                           "existing checkpoints under its writable roots only",
    "tf.train.Saver.set_last_checkpoints_with_time": "as set_last_checkpoints",
}

# Items psclient provides only to refuse, with an UnimplementedError that
# says why (test_compat_table.py checks that they do). None at present.
REFUSED = {}

# tf names whose psclient name differs.
RENAMED = {
    "tf.Variable.__init__": "psclient.Variable",
    "tf.IndexedSlices.__init__": "psclient.IndexedSlices",
    "tf.VariableScope.__init__": "psclient.VariableScope",
    "tf.train.Saver.__init__": "psclient.train.Saver",
}

# Instance attributes set by a constructor (not visible on the class).
INSTANCES = {
    "tf.IndexedSlices": lambda: psclient.IndexedSlices([0.0], [0]),
}


_INSTANCE_ATTRIBUTE = object()  # an attribute its constructor sets


def parse(line):
    """("tf.get_variable", ["name", "shape", ...]) or (name, None) for a property."""
    m = re.match(r"^(tf\.[A-Za-z_.]+)(?:\((.*)\))?$", line)
    name, args = m.group(1), m.group(2)
    if args is None:
        return name, None
    params = []
    for part in filter(None, (a.strip() for a in args.split(","))):
        part = part.split("=")[0].strip()
        if part.startswith("**") or part.startswith("*"):
            continue
        params.append(part)
    return name, params


def resolve(tf_name):
    """The psclient object for a tf name, or None."""
    target = RENAMED.get(tf_name, "psclient" + tf_name[len("tf"):])
    parts = target.split(".")[1:]
    obj = psclient
    for i, part in enumerate(parts):
        if not hasattr(obj, part):
            owner = "tf." + ".".join(parts[:i])
            make = INSTANCES.get(owner)
            if make is not None and i == len(parts) - 1 and hasattr(make(), part):
                return _INSTANCE_ATTRIBUTE
            return None
        obj = getattr(obj, part)
    return obj


def parameters(obj):
    if inspect.isclass(obj):
        obj = obj.__init__
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None, False
    names = [p.name for p in signature.parameters.values()]
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    return names, takes_kwargs


def status(tf_name, params):
    obj = resolve(tf_name)
    if obj is None:
        return "not provided"
    if tf_name in REFUSED:
        return "refused"
    if params is None:
        return "yes"
    names, takes_kwargs = parameters(obj)
    if names is None:
        return "yes"
    missing = [p for p in params if p not in names and not (p == "kwargs" and takes_kwargs)]
    # Methods documented with the instance's own arguments only.
    missing = [p for p in missing if p != "self"]
    if missing:
        return "missing arguments: " + ", ".join(missing)
    return "yes"


def table():
    rows = ["# TensorFlow compatibility",
            "",
            "Generated by `client/python/tests/tf_compat_table.py` from the items of "
            "TensorFlow's Variables API documentation (`client/python/tests/data/"
            "tf_variables_api.txt`) by looking at psclient itself; `test_compat_table.py` "
            "fails when this file is out of date. \"yes\": psclient has it, and every "
            "documented argument is a parameter of it (an argument that cannot have a meaning "
            "here raises an error naming it when set, as the notes say).",
            "",
            "| TensorFlow | psclient | notes |",
            "| --- | --- | --- |"]
    counts = {}
    with open(API_LIST) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            tf_name, params = parse(line)
            st = status(tf_name, params)
            counts[st.split(":")[0]] = counts.get(st.split(":")[0], 0) + 1
            shown = tf_name if params is None else "%s(%s)" % (tf_name, ", ".join(params))
            rows.append("| `%s` | %s | %s |" % (shown, st,
                                                 REFUSED.get(tf_name) or NOTES.get(tf_name, "")))
    rows.append("")
    rows.append("Totals: " + ", ".join("%s %d" % kv for kv in sorted(counts.items())) + ".")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table())
