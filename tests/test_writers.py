import json
import os
from pathlib import Path

import numpy as np
import pytest

from siglip_cli.errors import OutputError, UsageError
from siglip_cli.writers import (StackedWriter, check_writable, output_format, read_embeddings,
                                write_embeddings)

META = {"model": "acme/m", "pool": "map", "image_size": 224, "image_mean": [0.5, 0.5, 0.5]}


def write_stacked(path, array, meta, sources):
    """Rows of `array` through the streaming writer, as `siglip embed` writes several images."""
    writer = StackedWriter(path, len(array), meta)
    for row, source in zip(array, sources):
        writer.add(row, source)
    return writer.finish()


def test_format_comes_from_the_suffix(tmp_path):
    assert output_format(tmp_path / "a.NPY") == ".npy"
    assert output_format(tmp_path / "a.safetensors") == ".safetensors"
    with pytest.raises(UsageError, match=r"must end in \.npy or \.safetensors"):
        output_format(tmp_path / "a.pt")


def test_safetensors_carries_metadata_and_sources(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(2, 6)
    out = tmp_path / "e.safetensors"
    assert write_stacked(out, a, META, ["x.jpg", "y.png"]) == [out]
    got, meta = read_embeddings(out)
    assert np.array_equal(got, a)
    assert meta == {**META, "sources": ["x.jpg", "y.png"]}


def test_npy_stacked_gets_a_sidecar_and_single_does_not(tmp_path):
    a = np.ones((3, 4), dtype=np.float32)
    written = write_stacked(tmp_path / "s.npy", a, META, ["1", "2", "3"])
    assert written == [tmp_path / "s.npy", tmp_path / "s.npy.json"]
    side = json.loads((tmp_path / "s.npy.json").read_text())
    assert side["sources"] == ["1", "2", "3"] and side["shape"] == [3, 4] and side["model"] == "acme/m"
    assert write_embeddings(tmp_path / "one.npy", a[0], META) == [tmp_path / "one.npy"]
    assert not (tmp_path / "one.npy.json").exists()
    assert np.array_equal(np.load(tmp_path / "one.npy"), a[0])


def test_a_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    out = tmp_path / "e.npy"
    write_embeddings(out, np.zeros(3, dtype=np.float32), META)

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OutputError, match=r"cannot write .*e\.npy.*: No space left on device"):
        write_embeddings(out, np.ones(3, dtype=np.float32), META)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy"]
    assert np.array_equal(np.load(out), np.zeros(3))


def test_unwritable_destinations_fail_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="cannot create output folder"):
        check_writable(tmp_path / "file" / "out.npy")
    with pytest.raises(UsageError, match="is a directory"):
        check_writable(tmp_path)
    check_writable(tmp_path / "new" / "deeper" / "out.npy")
    assert (tmp_path / "new" / "deeper").is_dir()


def test_a_single_array_replaces_a_stale_sidecar(tmp_path):
    out = tmp_path / "e.npy"
    write_stacked(out, np.ones((2, 3), dtype=np.float32), META, ["a", "b"])
    assert (tmp_path / "e.npy.json").exists()
    write_embeddings(out, np.zeros(3, dtype=np.float32), META)
    assert not (tmp_path / "e.npy.json").exists()
    array, meta = read_embeddings(out)
    assert array.shape == (3,) and meta == {}


def test_a_temp_file_that_cannot_be_created_is_one_error(tmp_path):
    with pytest.raises(OutputError, match=r"cannot write '/proc/x\.npy'"):
        write_embeddings(Path("/proc/x.npy"), np.zeros(3, dtype=np.float32), META)


def test_outputs_get_ordinary_permissions(tmp_path):
    """Not mkstemp's owner-only 0600: 0666 less the umask, like any file a program creates."""
    umask = os.umask(0)
    os.umask(umask)
    write_embeddings(tmp_path / "p.npy", np.zeros(2, dtype=np.float32), META)
    assert (tmp_path / "p.npy").stat().st_mode & 0o777 == 0o666 & ~umask != 0o600
