"""Every kind of damage to a store, met by every command that opens one: a one-line error naming the
store and the file (verify: the problem listed and exit status 1), never a traceback, never a
wrong answer with exit status 0. The matrix below is the one the closing note of issue 14 gives."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from w2s_pipe.cli import cli


def edit_json(path, change):
    with open(path) as f:
        doc = json.load(f)
    change(doc)
    with open(path, "w") as f:
        json.dump(doc, f)


def edit_chunk(store, change, array="logits", shard=0, classes=10, capacity=256):
    path = os.path.join(store, array, "c", str(shard), "0")
    values = np.frombuffer(open(path, "rb").read(), dtype="<f2").reshape(capacity, classes).copy()
    change(values)
    open(path, "wb").write(values.tobytes())


def garbage(path):
    open(path, "wb").write(b"\x00garbage{")


def set_index_label_to_pred(store):
    path = os.path.join(store, "index.parquet")
    table = pq.read_table(path)
    table = table.set_column(table.column_names.index("label"), "label", table.column("pred"))
    pq.write_table(table, path)


def set_layout(doc, **changes):
    doc["attributes"]["layout"].update(changes)


# kind -> (damage, the file the error must name)
DAMAGE = {
    "root zarr.json garbage": (lambda s: garbage(f"{s}/zarr.json"), "zarr.json"),
    "root zarr.json empty": (lambda s: open(f"{s}/zarr.json", "w").close(), "zarr.json"),
    "array zarr.json garbage": (lambda s: garbage(f"{s}/logits/zarr.json"), "logits/zarr.json"),
    "array zarr.json missing": (lambda s: os.remove(f"{s}/logits/zarr.json"), "logits/zarr.json"),
    "array big-endian": (lambda s: edit_json(f"{s}/logits/zarr.json", lambda d: d["codecs"][0]["configuration"].update(
        endian="big")), "logits/zarr.json"),
    "chunk shape changed": (lambda s: edit_json(f"{s}/logits/zarr.json", lambda d: d["chunk_grid"]["configuration"].update(
        chunk_shape=[128, 10])), "logits/zarr.json"),
    "capacity changed": (lambda s: edit_json(f"{s}/zarr.json", lambda d: set_layout(d, capacity=128, rows=512)),
                         "zarr.json"),
    "chunk deleted": (lambda s: os.remove(f"{s}/logits/c/0/0"), "done/000000.json"),
    "chunk truncated": (lambda s: open(f"{s}/logits/c/0/0", "r+b").truncate(100), "logits/c/0/0"),
    "two classes swapped": (lambda s: edit_chunk(s, lambda v: v.__setitem__((slice(None), [0, 1]), v[:, [1, 0]])),
                            "done/000000.json"),
    "a NaN logit": (lambda s: edit_chunk(s, lambda v: v.__setitem__((5, 3), np.nan)), "done/000000.json"),
    "marker garbage": (lambda s: garbage(f"{s}/done/000001.json"), "done/000001.json"),
    "marker count changed": (lambda s: edit_json(f"{s}/done/000001.json", lambda d: d.update(count=d["count"] - 1)),
                             "done/000001.json"),
    "parts garbage": (lambda s: garbage(f"{s}/parts/000002.parquet"), "parts/000002.parquet"),
    "index garbage": (lambda s: garbage(f"{s}/index.parquet"), "index.parquet"),
    "index labels wrong": (set_index_label_to_pred, "index.parquet"),
}


@pytest.fixture(scope="session")
def pristine(tmp_path_factory, digits_dir, weak_ckpt):
    from w2s_pipe.stages.label import LabelConfig, run_label

    store = str(tmp_path_factory.mktemp("pristine") / "store")
    run_label(LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data=str(digits_dir / "digits-transfer-*.tar"),
                          labels=store, workers=0, precision="fp32", progress=False))
    return store


def invoke(args):
    result = CliRunner().invoke(cli, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args[0], result.exception)
    return result


def commands(store, weak_ckpt, data):
    return {
        "label": ["label", "--weak-checkpoint", str(weak_ckpt), "--data", data, "--labels", store, "--workers", "0",
                  "--precision", "fp32", "--quiet"],
        "train": ["train", "--strong", "test_resnet", "--labels", store, "--loss", "kd", "--img-size", "32", "--epochs",
                  "1", "--steps-per-epoch", "1", "--batch-size", "16", "--workers", "0", "--precision", "fp32",
                  "--device", "cpu", "--no-eval", "--quiet"],
        "inspect": ["inspect", store, "--no-plots"],
        "verify": ["verify", store],
    }


# What `report` reads of a store: its metadata, markers, parts and index, not the arrays' chunks (it
# reports the index's statistics); damage there lists the store as unreadable, naming the file.
REPORT_SEES = {kind for kind in DAMAGE} - {"chunk deleted", "chunk truncated", "two classes swapped", "a NaN logit"}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_every_command_names_the_damage(kind, pristine, digits_data, weak_ckpt, tmp_path):
    store = str(tmp_path / "ws" / "stores" / "store")  # in the workspace, where `report` looks
    shutil.copytree(pristine, store)
    damage, file = DAMAGE[kind]
    damage(store)
    result = invoke(["report", "--no-plots"])
    assert result.exit_code == 0, result.output  # what can be reported is; what cannot is listed with why
    listed = [line for line in result.output.splitlines() if line.startswith("- store store: could not be read")]
    assert bool(listed) == (kind in REPORT_SEES) and (not listed or file in listed[0]), result.output
    for name, args in commands(store, weak_ckpt, str(digits_data / 'digits-transfer-*.tar')).items():
        result = invoke(args)
        lines = result.output.strip().splitlines()
        assert result.exit_code != 0, (name, result.output)
        if name == "verify":
            assert "no problems found" not in result.output and file in result.output, result.output
        else:
            assert lines[-1].startswith("Error: store ") and store in lines[-1] and file in lines[-1], (name, lines[-1])
            assert len([line for line in lines if line.startswith("Error")]) == 1


def test_the_pristine_store_passes_every_command_and_a_rerun_writes_nothing(pristine, digits_data, weak_ckpt, tmp_path):
    store = str(tmp_path / "store")
    shutil.copytree(pristine, store)
    before = {p: os.stat(os.path.join(d, p)).st_mtime_ns for d, _, files in os.walk(store) for p in files}
    for name, args in commands(store, weak_ckpt, str(digits_data / 'digits-transfer-*.tar')).items():
        result = invoke(args)
        assert result.exit_code == 0, (name, result.output)
    after = {p: os.stat(os.path.join(d, p)).st_mtime_ns for d, _, files in os.walk(store) for p in files}
    assert after == before  # a re-run of label on a complete store writes nothing


def test_a_creation_cut_short_is_rebuilt_and_attributes_are_written_at_once(pristine, digits_data, weak_ckpt, tmp_path,
                                                                           monkeypatch):
    """A store's attributes go to zarr.json in one write, so a kill leaves none or all of them; a
    group a kill left with some of them (as an earlier version could) and nothing labelled is
    rebuilt by the next `label`, to the store an uninterrupted run writes."""
    import zarr.storage._local as local

    from w2s_pipe.storage import open_store
    from w2s_pipe.storage.schema import DONE_DIR, INDEX_FILE, PARTS_DIR, REQUIRED_ATTRS

    data = str(digits_data / "digits-transfer-*.tar")
    store = str(tmp_path / "fresh")
    written, put = [], local._put
    monkeypatch.setattr(local, "_put", lambda path, value, **kw: (
        written.append(json.loads(value.to_bytes())) if str(path) == os.path.join(store, "zarr.json") else None,
        put(path, value, **kw))[1])
    assert invoke(commands(store, weak_ckpt, data)["label"]).exit_code == 0
    states = [set(doc.get("attributes", {})) for doc in written]
    assert states and set(REQUIRED_ATTRS) <= states[-1] and all(not s or s == states[-1] for s in states), states
    monkeypatch.setattr(local, "_put", put)

    cut = str(tmp_path / "cut")
    shutil.copytree(pristine, cut)
    edit_json(f"{cut}/zarr.json", lambda doc: doc.update(attributes={k: doc["attributes"][k] for k in
                                                                     ("format", "schema_version", "weak")}))
    for name in (DONE_DIR, PARTS_DIR):
        shutil.rmtree(os.path.join(cut, name))
    os.remove(os.path.join(cut, INDEX_FILE))
    result = invoke(commands(cut, weak_ckpt, data)["label"])
    assert result.exit_code == 0, result.output
    rebuilt, whole = open_store(cut).index(), open_store(pristine).index()
    assert rebuilt.select(["shard", "key", "row", "label"]).equals(whole.select(["shard", "key", "row", "label"]))
    # the same weak model on the same device: the same labels (confidences within a GPU's kernel choice)
    assert (rebuilt["pred"].to_numpy() == whole["pred"].to_numpy()).mean() > 0.99
    np.testing.assert_allclose(rebuilt["confidence"].to_numpy(), whole["confidence"].to_numpy(), atol=1e-3)
    # With the done/ directory there, the same missing attribute is damage, named, not rebuilt.
    damaged = str(tmp_path / "damaged")
    shutil.copytree(pristine, damaged)
    edit_json(f"{damaged}/zarr.json", lambda doc: doc["attributes"].pop("num_classes"))
    result = invoke(commands(damaged, weak_ckpt, data)["label"])
    assert result.exit_code != 0 and "attribute 'num_classes' is missing (zarr.json)" in result.output
