"""Meta graphs: tf.train.export_meta_graph and import_meta_graph.

psd has no graph; what a TensorFlow meta graph carried that a trainer needs
in a fresh process is the variables' declarations (names, dtypes, shapes,
partitioning, initializers, trainability, collections) and the Saver's
definition. export_meta_graph writes them as a JSON document (format
"psd.MetaGraph", version 1) on the trainer's machine; import_meta_graph
declares them in a session (attaching to variables that exist, creating
the others) and returns the Saver, so that ``saver.restore(path)`` brings
the values back, as in TensorFlow::

    saver = psclient.train.import_meta_graph("/models/m.ckpt-100.meta")
    saver.restore("/models/m.ckpt-100")
"""

import base64
import binascii
import json
import os

from . import _psclient
from . import dtypes as _dtypes
from . import errors
from . import partitioned_variables
from .session import _session_of
from .variables import GraphKeys, Variable

FORMAT = "psd.MetaGraph"
VERSION = 1


def _refuse(name, value):
    if value is not None:
        raise errors.UnimplementedError(
            None, None, "export_meta_graph(%s=...): psd has no graph; a meta graph holds the "
            "variables' declarations and the Saver's definition" % name)


def export_meta_graph(filename=None, meta_info_def=None, graph_def=None, saver_def=None,
                      collection_list=None, as_text=False, export_scope=None, clear_devices=False,
                      session=None, **unused):
    """The session's variables (those under `export_scope`, named relative
    to it) and `saver_def` as a meta graph (a dict), also written to
    `filename` (JSON, always text) when given. `collection_list` limits the
    collections recorded per variable."""
    _refuse("meta_info_def", meta_info_def)
    _refuse("graph_def", graph_def)
    sess = _session_of(session)
    keep = None if collection_list is None else set(collection_list)
    variables = []
    for v in (Variable._wrap(sess, h) for h in sess._s.list_variables("")):
        name = v.full_name
        if export_scope:
            if not name.startswith(export_scope + "/"):
                continue
            name = name[len(export_scope) + 1:]
        collections = [c for c in v.collections if keep is None or c in keep]
        entry = {
            "name": name,
            "dtype": v.dtype.name,
            "shape": list(v.shape),
            "trainable": v.trainable,
            "collections": collections,
            "partitions": list(v.partitions) if v.partitioned else None,
            "partition_axis": v._v.partition_axis if v.partitioned else None,
            "initializer": base64.b64encode(v._v.initializer.serialize()).decode("ascii"),
        }
        # Only tables have it, so dense entries read as before.
        spec = _psclient.embedding_spec_bytes(v._v, "")
        if spec is not None:
            slot_of = _psclient.embedding_spec_fields(spec)[3]
            if export_scope and slot_of and not slot_of.startswith(export_scope + "/"):
                continue  # a slot whose table is not exported
            spec = _psclient.embedding_spec_bytes(v._v, export_scope + "/" if export_scope else "")
            entry["embedding"] = base64.b64encode(spec).decode("ascii")
        variables.append(entry)
    meta = {"format": FORMAT, "version": VERSION, "variables": variables, "saver_def": None}
    if saver_def is not None:
        meta["saver_def"] = {
            "variables": saver_def.variables, "name_map": saver_def.name_map,
            "max_to_keep": saver_def.max_to_keep if isinstance(saver_def.max_to_keep, int)
                           else None,
            "keep_checkpoint_every_n_hours": (
                saver_def.keep_checkpoint_every_n_hours
                if isinstance(saver_def.keep_checkpoint_every_n_hours, (int, float)) else None),
            "name": saver_def.name, "sharded": saver_def.sharded,
            "reshape": saver_def.reshape}
    if filename:
        path = os.fsdecode(filename)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return meta


def _load(meta_graph_or_file):
    if isinstance(meta_graph_or_file, dict):
        meta = meta_graph_or_file
    else:
        path = os.fsdecode(meta_graph_or_file)
        try:
            with open(path) as f:
                meta = json.load(f)
        except (OSError, ValueError) as e:
            raise IOError("cannot read meta graph %s: %s" % (path, e)) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError("not a psd meta graph (format %r)" % (
            meta.get("format") if isinstance(meta, dict) else type(meta).__name__,))
    if meta.get("version") != VERSION:
        raise ValueError("psd meta graph version %r; this psclient reads version %d"
                         % (meta.get("version"), VERSION))
    return meta


def _partitioner(entry):
    parts = entry.get("partitions")
    if not parts:
        return None
    axis = int(entry.get("partition_axis") or 0)
    # Equal splits along one axis: TensorFlow's fixed_size rule gives the
    # same part shapes for the same count.
    return partitioned_variables.fixed_size_partitioner(int(parts[axis]), axis)


def _declaration(index, entry):
    """One variable entry of a meta graph, checked: ValueError naming it."""
    try:
        name = entry["name"]
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty string")
        shape = [int(d) for d in entry["shape"]]
        dtype = _dtypes.as_dtype(entry["dtype"])
        spec = _psclient.initializer_from_bytes(
            base64.b64decode(entry["initializer"], validate=True))
        collections = entry.get("collections") or [GraphKeys.GLOBAL_VARIABLES]
        if not all(isinstance(c, str) for c in collections):
            raise ValueError("collections must be strings")
        embedding = None
        if entry.get("embedding") is not None:
            embedding = _psclient.embedding_spec_fields(
                base64.b64decode(entry["embedding"], validate=True))
        return (name, shape, dtype, spec, _partitioner(entry), bool(entry["trainable"]),
                list(collections), embedding)
    except (KeyError, TypeError, ValueError, binascii.Error) as e:
        raise ValueError("meta graph variable entry %d (%r) is malformed: %s"
                         % (index, entry.get("name") if isinstance(entry, dict) else entry,
                            e)) from None


def import_meta_graph(meta_graph_or_file, clear_devices=False, import_scope=None, session=None,
                      **unused):
    """Declares the meta graph's variables in `session` (under
    `import_scope` when given), attaching to those that exist, and returns
    the Saver its saver_def describes (or a Saver of the imported
    variables; None when there are none). Must be called outside any
    variable_scope: names are imported as they were exported."""
    sess = _session_of(session)
    if sess._scopes:
        raise ValueError("import_meta_graph: call it outside any variable_scope (names are "
                         "imported as exported, under import_scope when given)")
    meta = _load(meta_graph_or_file)
    prefix = import_scope + "/" if import_scope else ""
    # Every entry is checked before any is declared: a malformed file is a
    # ValueError naming the entry, and declares nothing.
    declarations = [_declaration(i, entry) for i, entry in enumerate(meta.get("variables") or [])]
    imported = []
    for name, shape, dtype, spec, partitioner, trainable, collections, embedding in declarations:
        if embedding is not None:
            from .embedding import EmbeddingVariable  # imports this module
            dim, key_dtype, fields, slot_of = embedding
            table = _psclient.get_embedding_variable(
                sess._s, prefix + name, dim, key_dtype, dtype.as_datatype_enum, spec, partitioner,
                _psclient.REUSE_AUTO, trainable, collections, fields,
                prefix + slot_of if slot_of else "", "import_meta_graph")
            imported.append(EmbeddingVariable._wrap(sess, table))
            continue
        handle = sess._s.get_variable(
            prefix + name, shape, dtype.as_datatype_enum, spec, None, 0, partitioner,
            _psclient.REUSE_AUTO, trainable, collections, False, "import_meta_graph", None, None)
        imported.append(Variable._wrap(sess, handle))
    from . import train  # imports this module
    saver = meta.get("saver_def")
    if saver is not None:
        saver_def = train.SaverDef(
            [prefix + n for n in saver["variables"]],
            {k: prefix + v for k, v in (saver.get("name_map") or {}).items()},
            train._COORDINATOR_POLICY if saver.get("max_to_keep") is None
            else saver["max_to_keep"],
            train._COORDINATOR_POLICY if saver.get("keep_checkpoint_every_n_hours") is None
            else saver["keep_checkpoint_every_n_hours"],
            saver.get("name"), bool(saver.get("sharded")), bool(saver.get("reshape")))
        return train.Saver(saver_def=saver_def, session=sess)
    if not imported:
        return None
    return train.Saver(imported, session=sess)
