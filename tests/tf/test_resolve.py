"""Every way of naming a checkpoint, and the clear errors for paths that are none."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lstm_inspect.errors import CorruptModelError, NotAModelError, UnsafeModelError
from lstm_inspect.formats.tf.bundle import open_bundle, resolve


def prefix_of(tfzoo, case: str) -> Path:
    return tfzoo.path(tfzoo.case(case)["prefix"])


def names(path) -> set[str]:
    with open_bundle(path) as bundle:
        return set(bundle.entries)


def test_each_way_of_opening_a_v2_checkpoint(tfzoo):
    prefix = prefix_of(tfzoo, "tf1_cells")  # .../tf1_cells/model.ckpt-2
    expected = {v["name"] for v in tfzoo.case("tf1_cells")["variables"]}
    ways = {
        "prefix": prefix,
        "index": Path(f"{prefix}.index"),
        "data": Path(f"{prefix}.data-00000-of-00001"),
        "meta": Path(f"{prefix}.meta"),
        "checkpoint-state": prefix.parent,
    }
    for via, path in ways.items():
        resolved = resolve(path)
        assert (resolved.via, resolved.format, resolved.prefix) == (via, "v2", str(prefix)), via
        assert names(path) == expected, via
    assert resolve(prefix.parent / "checkpoint").via == "checkpoint-state"


def test_a_folder_opens_its_latest_checkpoint(tfzoo):
    truth = tfzoo.case("tf1_cells")
    resolved = resolve(tfzoo.path(truth["prefix"]).parent)
    assert resolved.prefix == str(tfzoo.path(truth["prefix"]))  # model.ckpt-2, not the older model.ckpt-1
    assert resolved.prefix != str(tfzoo.path(truth["older_prefix"]))
    assert resolved.state_file == str(tfzoo.path(truth["prefix"]).parent / "checkpoint")


def test_saved_model_folders(tfzoo):
    for case in ("tf_keras_savedmodel", "keras3_export"):
        folder = tfzoo.path(tfzoo.case(case)["dir"])
        for path in (folder, folder / "saved_model.pb"):
            resolved = resolve(path)
            assert resolved.via == "saved-model" and resolved.saved_model_dir == str(folder)
            assert resolved.prefix == str(folder / "variables" / "variables")
        assert names(folder) == {v["name"] for v in tfzoo.case(case)["variables"]}
        assert resolve(folder / "variables").via == "folder"  # one .index inside


def test_v1_file_and_its_folder(tfzoo):
    path = tfzoo.path(tfzoo.case("tf1_v1")["file"])
    assert resolve(path).format == "v1" and resolve(path).via == "v1-file"
    assert resolve(path.parent).format == "v1"  # via its `checkpoint` file
    assert names(path.parent) == names(path)


def test_tf2_folders(tfzoo):
    fit = prefix_of(tfzoo, "keras3_fit")  # Checkpoint.save() writes a `checkpoint` file
    assert resolve(fit.parent).via == "checkpoint-state" and resolve(fit.parent).prefix == str(fit)
    nofit = prefix_of(tfzoo, "keras3_nofit")  # write() does not: the single .index is taken
    assert resolve(nofit.parent).via == "folder" and resolve(nofit.parent).prefix == str(nofit)


def copy_checkpoint(prefix: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in prefix.parent.glob(prefix.name + ".*"):
        shutil.copy(path, folder / path.name)
    return folder / prefix.name


def test_checkpoint_state_paths(tfzoo, tmp_path):
    prefix = copy_checkpoint(prefix_of(tfzoo, "tf1_sharded"), tmp_path / "run")
    state = tmp_path / "run" / "checkpoint"
    state.write_text(f'model_checkpoint_path: "/home/someone/train/{prefix.name}"\n')  # trained elsewhere, moved
    assert resolve(tmp_path / "run").prefix == str(prefix)
    state.write_text('model_checkpoint_path: "../outside/model.ckpt"\n')
    with pytest.raises(UnsafeModelError, match="outside its folder"):
        resolve(tmp_path / "run")
    state.write_text('model_checkpoint_path: "/elsewhere/gone.ckpt"\n')
    with pytest.raises(NotAModelError, match="not in the folder"):
        resolve(tmp_path / "run")
    state.write_text('all_model_checkpoint_paths: "a"\nall_model_checkpoint_paths: "model.ckpt-missing"\n')
    with pytest.raises(NotAModelError, match="model.ckpt-missing"):
        resolve(tmp_path / "run")
    state.write_text("")
    with pytest.raises(NotAModelError, match="names no checkpoint"):
        resolve(tmp_path / "run")
    state.write_text("model_checkpoint_path: unquoted }{\n")
    with pytest.raises(CorruptModelError):
        resolve(tmp_path / "run")


def test_a_symlink_out_of_the_folder_is_refused(tfzoo, tmp_path):
    outside = copy_checkpoint(prefix_of(tfzoo, "tf1_sharded"), tmp_path / "outside")
    (tmp_path / "run").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "run" / "link")
    (tmp_path / "run" / "checkpoint").write_text(f'model_checkpoint_path: "link/{outside.name}"\n')
    with pytest.raises(UnsafeModelError):
        resolve(tmp_path / "run")


def test_paths_that_are_not_checkpoints(tfzoo, tmp_path):
    with pytest.raises(NotAModelError, match="no such file"):
        resolve(tmp_path / "nothing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NotAModelError, match="not a TensorFlow checkpoint"):
        resolve(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAModelError, match="without a `checkpoint` file"):
        resolve(tmp_path / "empty")
    prefix = prefix_of(tfzoo, "tf1_sharded")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(f"{prefix}.data-00000-of-00002", lonely / "x.data-00000-of-00002")
    with pytest.raises(NotAModelError, match="index"):
        resolve(lonely / "x.data-00000-of-00002")
    two = tmp_path / "two"
    copy_checkpoint(prefix, two)
    copy_checkpoint(prefix_of(tfzoo, "tf1_cells"), two)
    with pytest.raises(NotAModelError, match="2 .index files"):
        resolve(two)
    saved = tmp_path / "sm"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"\x08\x01")
    with pytest.raises(NotAModelError, match="variables"):
        resolve(saved)
    renamed = tmp_path / "renamed"
    shutil.copy(f"{prefix}.index", renamed)  # a V2 index without its .index suffix looks like a V1 file
    with pytest.raises(NotAModelError, match="PREFIX.index"):
        open_bundle(renamed)
    os.mkfifo(tmp_path / "fifo.index")
    with pytest.raises(NotAModelError, match="not a regular file"):
        open_bundle(tmp_path / "fifo.index")
