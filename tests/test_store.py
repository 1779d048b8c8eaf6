"""siglip_cli.store: reading stored embeddings, the folder index, and cosine top-k, on real files."""

import json
import os
import tracemalloc

import numpy as np
import pytest

from siglip_cli import folder_index, store
from siglip_cli.errors import OutputError, UsageError
from siglip_cli.folder_index import open_collection
from siglip_cli.store import AGAIN, INDEX_DIR, INDEX_NAME, MANIFEST, top_k, vectors
from siglip_cli.writers import StackedWriter, write_embeddings

META = {"model": "acme/m", "revision": "abc", "pool": "map", "norm": "checkpoint", "image_size": 224}
PATCH_META = {**META, "pool": "none"}


def write_stacked(path, array, meta=META, sources=None):
    sources = sources or [f"/img/{i}.jpg" for i in range(len(array))]
    writer = StackedWriter(path, len(array), meta)
    for row, source in zip(array, sources):
        writer.add(row, source)
    writer.finish()
    return sources


def brute(query, arrays):
    """The reference ranking: float64 cosines, -inf for rows of norm 0 or not finite, ties by (file, row)."""
    q = np.asarray(query, np.float64) / np.linalg.norm(query)
    rows = []
    for ci, a in enumerate(arrays):
        a = a.astype(np.float64)
        with np.errstate(all="ignore"):
            norms = np.linalg.norm(a, axis=1)
            s = a @ q / norms
        s[~(np.isfinite(s) & (norms > 0))] = -np.inf
        rows += [(-v, ci, r) for r, v in enumerate(s)]
    return [(-m, ci, r) for m, ci, r in sorted(rows)]


def assert_ranking(hits, expected, collections):
    assert [(collections.index(h.collection), h.row) for h in hits] == [(c, r) for _, c, r in expected]
    np.testing.assert_allclose([h.score for h in hits], [s for s, _, _ in expected], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_stacked_files_read_back_in_chunks_and_rank_as_brute_force(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 24)).astype(dtype)
    a[7] = 0  # norm 0
    a[11, 3] = np.nan
    b = rng.standard_normal((50, 24)).astype(dtype)
    b[5] = a[20]  # a tie across files: the first file's row comes first
    src_a = write_stacked(tmp_path / f"a{suffix}", a)
    write_stacked(tmp_path / f"b{suffix}", b)
    ca, cb = open_collection(tmp_path / f"a{suffix}"), open_collection(tmp_path / f"b{suffix}")
    assert (ca.count, ca.row_shape, ca.sources(), ca.metadata) == (300, (24,), src_a, META)
    chunks = list(ca.chunks(rows=64))
    assert [s for s, _ in chunks] == [0, 64, 128, 192, 256]
    assert all(c.dtype == dtype for _, c in chunks)
    assert np.array_equal(np.concatenate([c for _, c in chunks]), a, equal_nan=True)

    q = rng.standard_normal(24)
    q = a[20].astype(np.float64) + 0.1 * q  # a[20] and b[5] rank near the top
    ref = brute(q, [a, b])
    paths = [ca.path, cb.path]
    assert_ranking(top_k(q, [ca, cb], 10, rows=64), ref[:10], paths)
    assert_ranking(top_k(q, [ca, cb], 1000, rows=7), ref, paths)  # k > count: every row, -inf last
    assert top_k(q, [ca, cb], None)[-2:][0].score == -np.inf
    above = [r for r in ref if r[0] >= 0.1]
    assert_ranking(top_k(q, [ca, cb], None, threshold=0.1, rows=33), above, paths)
    assert_ranking(top_k(q, [ca, cb], 3, threshold=0.1), above[:3], paths)
    hits = top_k(q, [ca, cb], 2)
    assert [(h.source, h.row) for h in hits] == [(src_a[20], 20), ("/img/5.jpg", 5)]
    assert hits[0].score == hits[1].score
    assert top_k(q, [ca, cb], 0) == []


def test_float16_widening_is_exact_for_every_finite_half():
    bits = np.arange(65536, dtype=np.uint16)
    halves = bits.view(np.float16).reshape(256, 256)
    out = np.empty((256, 256), np.uint32)
    got = store._widen(halves.view(np.uint32), out)
    want = halves.astype(np.float32)
    want = np.concatenate([want[:, 0::2], want[:, 1::2]], axis=1)
    finite = np.isfinite(want)
    assert np.array_equal(got[finite].view(np.uint32), want[finite].view(np.uint32))
    assert (np.abs(got[~finite]) >= 65536).all()


def test_non_finite_and_huge_float16_rows(tmp_path):
    a = np.full((5, 8), 0.5, np.float16)
    a[0, 1], a[1, 2], a[2] = np.inf, np.nan, 0
    a[3] = 60000.0  # finite, large: scores normally (its norm squared is over 2**32)
    a[4, 0] = -np.inf
    write_stacked(tmp_path / "h.npy", a)
    hits = top_k(np.ones(8), [open_collection(tmp_path / "h.npy")], None)
    assert [h.row for h in hits] == [3, 0, 1, 2, 4]
    assert hits[0].score == pytest.approx(1.0) and all(h.score == -np.inf for h in hits[1:])


def test_one_image_outputs_are_one_row(tmp_path):
    v = np.arange(6, dtype=np.float32)
    write_embeddings(tmp_path / "photo.jpg.npy", v, META)
    write_embeddings(tmp_path / "p.safetensors", v * 2, {**META, "source": "/photos/p.jpg"})
    c = open_collection(tmp_path / "photo.jpg.npy")
    assert (c.count, c.row_shape, c.sources(), c.metadata) == (1, (6,), ["photo.jpg"], {})
    s = open_collection(tmp_path / "p.safetensors")
    assert (s.count, s.sources(), s.metadata) == (1, ["/photos/p.jpg"], META)
    assert np.array_equal(next(s.chunks())[1], [v * 2])
    hits = top_k(v, [c, s], None)
    assert [h.source for h in hits] == ["photo.jpg", "/photos/p.jpg"]


def pool_mean_times(matrix, calls=None):
    def pooler(patches):
        assert patches.dtype == np.float32 and patches.ndim == 3
        if calls is not None:
            calls.append(len(patches))
        return patches.mean(axis=1) @ matrix
    return pooler


def test_stacked_patches_are_pooled_through_the_pooler(tmp_path):
    rng = np.random.default_rng(1)
    patches = rng.standard_normal((40, 9, 16)).astype(np.float16)
    matrix = rng.standard_normal((16, 16)).astype(np.float32)
    write_stacked(tmp_path / "p.safetensors", patches, PATCH_META)
    c = open_collection(tmp_path / "p.safetensors")
    assert c.row_shape == (9, 16)
    pooled = patches.astype(np.float32).mean(axis=1) @ matrix
    got = np.concatenate([v for _, v in vectors(c, pool_mean_times(matrix), rows=6)])
    np.testing.assert_allclose(got, pooled, rtol=1e-5, atol=1e-5)
    q = rng.standard_normal(16)
    assert_ranking(top_k(q, [c], 5, pooler=pool_mean_times(matrix), rows=7), brute(q, [pooled])[:5], [c.path])
    with pytest.raises(UsageError, match=r"p\.safetensors: patch embeddings \[N, D\] \(pool none\) must be pooled "
                                         r"by the model's attention head before search"):
        top_k(q, [c], 5)


def make_folder(tmp_path, n=12, suffix=".npy", dtype=np.float32, shape=(16,), meta=META, seed=0, manifest=True):
    """emb/ as `siglip embed photos/ -o emb/` writes it (some in a subfolder), with the images in photos/."""
    rng = np.random.default_rng(seed)
    emb, photos = tmp_path / "emb", tmp_path / "photos"
    arrays = {}
    for i in range(n):
        rel = f"{'sub/' if i % 3 == 0 else ''}img{i:02d}.jpg"
        arrays[rel] = rng.standard_normal(shape).astype(dtype)
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        if i != 1:  # img01.jpg is gone from the photos: its source stays relative
            (photos / rel).write_bytes(b"jpeg")
        (emb / rel).parent.mkdir(parents=True, exist_ok=True)
        write_embeddings(emb / (rel + suffix), arrays[rel], {**meta, "source": str(photos / rel)})
    if manifest:
        (emb / MANIFEST).write_text(json.dumps({"metadata": meta, "roots": [str(tmp_path / "nowhere"), str(photos)]}))
    return emb, photos, dict(sorted(arrays.items(), key=lambda kv: kv[0] + suffix))


def count_reads(monkeypatch):
    read = []
    real = folder_index._open_file

    def counting(p, single=False):
        read.append(p.name)
        return real(p, single)
    monkeypatch.setattr(folder_index, "_open_file", counting)
    return read


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_folder_sources_vectors_ranking_and_index_reuse(tmp_path, monkeypatch, suffix):
    emb, photos, arrays = make_folder(tmp_path, suffix=suffix, dtype=np.float16)
    read, notes = count_reads(monkeypatch), []
    c = open_collection(emb, note=notes.append)
    assert (c.count, c.row_shape, c.metadata, notes) == (12, (16,), META, [])
    expect = [str(photos / rel) for rel in arrays]
    if suffix == ".npy":  # found below the manifest's second root, or relative when the image is gone
        expect = [s if not s.endswith("img01.jpg") else "img01.jpg" for s in expect]
    assert c.sources() == expect
    assert np.array_equal(np.concatenate([x for _, x in c.chunks(5)]), np.stack(list(arrays.values())))
    assert next(c.chunks())[1].dtype == np.float16
    assert len(read) == 12 and (emb / INDEX_DIR / INDEX_NAME).is_file()
    q = np.random.default_rng(5).standard_normal(16)
    assert_ranking(top_k(q, [c], 4), brute(q, [np.stack(list(arrays.values()))])[:4], [emb])

    read.clear()
    again = open_collection(emb, note=notes.append)
    assert read == [] and again.sources() == expect and notes == []
    assert np.array_equal(np.concatenate([x for _, x in again.chunks()]), np.stack(list(arrays.values())))
    assert [h.row for h in top_k(q, [again], 4)] == [h.row for h in top_k(q, [c], 4)]


def test_folder_index_follows_changes(tmp_path, monkeypatch):
    emb, photos, arrays = make_folder(tmp_path)
    open_collection(emb)
    read = count_reads(monkeypatch)
    st = os.stat(emb / "img02.jpg.npy")
    os.utime(emb / "img02.jpg.npy", ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))  # touched
    write_embeddings(emb / "img04.jpg.npy", np.full(16, 7, np.float32), META)  # replaced (same size)
    arrays["img04.jpg"] = np.full(16, 7, np.float32)
    os.unlink(emb / "sub/img03.jpg.npy")  # deleted
    del arrays["sub/img03.jpg"]
    write_embeddings(emb / "new.jpg.npy", np.ones(16, np.float32), META)  # added
    arrays["new.jpg"] = np.ones(16, np.float32)
    arrays = dict(sorted(arrays.items(), key=lambda kv: kv[0] + ".npy"))
    c = open_collection(emb)
    assert sorted(read) == ["img02.jpg.npy", "img04.jpg.npy", "new.jpg.npy"]
    assert c.count == 12 and [s.rsplit("/", 1)[-1] for s in c.sources()] == [r.rsplit("/", 1)[-1] for r in arrays]
    assert np.array_equal(np.concatenate([x for _, x in c.chunks()]), np.stack(list(arrays.values())))
    read.clear()
    assert open_collection(emb).count == 12 and read == []


def test_folder_of_patches_pools_each_file_once_per_model(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    matrix = rng.standard_normal((16, 16)).astype(np.float32)
    emb, _, arrays = make_folder(tmp_path, shape=(9, 16), meta=PATCH_META)
    calls = []
    c = open_collection(emb, pooler=pool_mean_times(matrix, calls), identity={"model": "acme/m"})
    pooled = np.stack([a.mean(axis=0) @ matrix for a in arrays.values()])
    assert (c.count, c.row_shape, c.metadata["pool"], c.metadata["stored_pool"]) == (12, (16,), "map", "none")
    np.testing.assert_allclose(np.concatenate([x for _, x in c.chunks()]), pooled, rtol=1e-5, atol=1e-5)
    assert sum(calls) == 12 and len(calls) == 1  # one batch
    calls.clear()
    c2 = open_collection(emb, pooler=pool_mean_times(matrix, calls), identity={"model": "acme/m"})
    assert calls == [] and np.array_equal(next(c2.chunks())[1], next(c.chunks())[1])
    open_collection(emb, pooler=pool_mean_times(matrix, calls), identity={"model": "other"})
    assert sum(calls) == 12  # pooled by another model: rebuilt
    with pytest.raises(UsageError, match=r"emb: patch embeddings \[N, D\] \(pool none\) must be pooled"):
        open_collection(emb, identity={"model": "other"})


def test_bad_files_in_a_folder_are_skipped_and_noted(tmp_path, monkeypatch):
    emb, _, arrays = make_folder(tmp_path, n=4)
    good = (emb / "img02.jpg.npy").read_bytes()
    (emb / "img02.jpg.npy").write_bytes(good[:-5])  # truncated
    (emb / "junk.safetensors").write_bytes(b"\xff" * 40)
    (emb / ".hidden.npy").write_bytes(b"not read")
    (emb / INDEX_DIR).mkdir()
    (emb / "linked").symlink_to(tmp_path / "photos", target_is_directory=True)  # not followed
    notes = []
    c = open_collection(emb, note=notes.append)
    assert c.count == 3 and sorted(notes) == [
        f"skipped {emb / 'img02.jpg.npy'}: the file ends before its [16] array (an interrupted write or copy): "
        "" + AGAIN,
        f"skipped {emb / 'junk.safetensors'}: not a readable .safetensors embeddings file (no safetensors header): "
        "" + AGAIN]
    read, notes2 = count_reads(monkeypatch), []
    assert open_collection(emb, note=notes2.append).count == 3
    assert read == [] and sorted(notes2) == sorted(notes)  # still named, not read again


def test_a_folder_without_a_manifest(tmp_path, monkeypatch):
    emb, photos, arrays = make_folder(tmp_path, n=3, suffix=".safetensors", manifest=False)
    c = open_collection(emb)
    assert c.metadata == META and c.sources() == [str(photos / r) for r in arrays]  # from the files themselves
    assert not (emb / INDEX_DIR).exists()  # not a siglip output folder (no manifest): nothing is written there
    read = count_reads(monkeypatch)
    assert open_collection(emb).metadata == META and len(read) == 3  # so each search reads the files
    npy, _, _ = make_folder(tmp_path / "n", n=2, manifest=False)
    c = open_collection(npy)
    assert c.metadata == {} and c.sources() == ["img01.jpg", "sub/img00.jpg"]


def test_a_file_gone_bad_after_indexing_is_remembered(tmp_path, monkeypatch):
    emb, _, _ = make_folder(tmp_path, n=3)
    open_collection(emb)
    (emb / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    notes, read = [], count_reads(monkeypatch)
    assert open_collection(emb, note=notes.append).count == 3 and read == ["junk.npy"] and len(notes) == 1
    read.clear()
    assert open_collection(emb, note=notes.append).count == 3 and read == [] and notes[1] == notes[0]
    assert notes[0].startswith(f"skipped {emb / 'junk.npy'}: not a readable .npy embeddings file (")


def test_new_files_must_match_the_indexed_ones(tmp_path):
    emb, _, _ = make_folder(tmp_path, n=3)
    open_collection(emb)
    write_embeddings(emb / "a.jpg.npy", np.ones(8, np.float32), META)  # sorts before the indexed files
    with pytest.raises(UsageError) as e:
        open_collection(emb)
    assert str(e.value) == (f"{emb}: files from different runs: a.jpg.npy is [8] float32 but img01.jpg.npy is [16] "
                            "float32: embed the folder again with --overwrite (or into a new folder)")


def test_moved_roots_and_a_damaged_index(tmp_path, monkeypatch):
    emb, photos, arrays = make_folder(tmp_path, n=3)
    open_collection(emb)
    moved = tmp_path / "moved"
    photos.rename(moved)
    (emb / MANIFEST).write_text(json.dumps({"metadata": META, "roots": [str(moved)]}))
    read = count_reads(monkeypatch)
    c = open_collection(emb)
    assert read == [] and c.sources() == ["img01.jpg", str(moved / "img02.jpg"), str(moved / "sub/img00.jpg")]
    index = emb / INDEX_DIR / INDEX_NAME
    index.write_bytes(index.read_bytes()[:-10])
    notes = []
    assert open_collection(emb, note=notes.append).count == 3 and len(read) == 3
    assert notes == [f"rebuilding the search index {index}: it is unreadable (tensor 'entries' is not "
                     "F32, F16 or U8, or does not fit in the file (truncated?))"]
    assert open_collection(emb, note=notes.append).count == 3 and len(read) == 3 and len(notes) == 1


def test_patch_chunks_are_capped_in_bytes(tmp_path, monkeypatch):
    patches = np.random.default_rng(4).standard_normal((10, 5, 8)).astype(np.float32)
    write_stacked(tmp_path / "p.npy", patches, PATCH_META)
    monkeypatch.setattr(store, "CHUNK_BYTES", 3 * 5 * 8 * 4)
    c = open_collection(tmp_path / "p.npy")
    got = list(c.chunks(rows=100))
    assert [len(x) for _, x in got] == [3, 3, 3, 1]
    assert np.array_equal(np.concatenate([x for _, x in got]), patches)


def test_an_unwritable_folder_is_searched_without_an_index(tmp_path, monkeypatch):
    emb, _, arrays = make_folder(tmp_path, n=5)

    def refuse(path, data):
        raise OutputError(f"cannot write {str(path)!r}: Read-only file system", 30)
    monkeypatch.setattr(folder_index, "atomic_write_bytes", refuse)
    notes = []
    c = open_collection(emb, note=notes.append)
    assert notes == [f"could not write the search index {emb / INDEX_DIR / INDEX_NAME} (Read-only file system): "
                     "searching without it (each search reads again the files it does not cover)"]
    assert np.array_equal(np.concatenate([x for _, x in c.chunks()]), np.stack(list(arrays.values())))
    assert not (emb / INDEX_DIR / INDEX_NAME).exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_really(tmp_path):
    emb, _, arrays = make_folder(tmp_path, n=3)
    os.chmod(emb / "sub", 0o555)
    os.chmod(emb, 0o555)
    try:
        notes = []
        c = open_collection(emb, note=notes.append)
        assert len(notes) == 1 and "could not write the search index" in notes[0] and c.count == 3
    finally:
        os.chmod(emb, 0o755)
        os.chmod(emb / "sub", 0o755)


def test_the_index_is_a_plain_safetensors_file(tmp_path):
    from safetensors.numpy import load_file

    emb, photos, arrays = make_folder(tmp_path, n=3)
    open_collection(emb)
    tensors = load_file(emb / INDEX_DIR / INDEX_NAME)
    assert np.array_equal(tensors["vectors"], np.stack(list(arrays.values())))
    entries = json.loads(tensors["entries"].tobytes())
    assert [e[0] for e in entries] == [r + ".npy" for r in arrays] == ["img01.jpg.npy", "img02.jpg.npy",
                                                                        "sub/img00.jpg.npy"]
    assert [e[3] for e in entries] == ["img01.jpg", str(photos / "img02.jpg"), str(photos / "sub/img00.jpg")]


def test_errors_name_the_path_and_the_next_step(tmp_path):
    def fails(error, pattern, path, **kw):
        with pytest.raises(error) as e:
            open_collection(path, **kw)
        assert str(e.value) == pattern

    fails(UsageError, f"{tmp_path / 'no.npy'}: no such file or folder: give a file or folder written by `siglip "
          "embed`", tmp_path / "no.npy")
    (tmp_path / "x.pt").write_bytes(b"x")
    fails(UsageError, f"{tmp_path / 'x.pt'}: not an embeddings file: give a .npy or .safetensors file, or a folder "
          "written by `siglip embed -o DIR/`", tmp_path / "x.pt")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4), np.float32))
    fails(UsageError, f"{tmp_path / 'cube.npy'}: a [2, 3, 4] array is not image embeddings (or its sidecar "
          "cube.npy.json, with the source paths, is missing): " + AGAIN, tmp_path / "cube.npy")
    np.save(tmp_path / "ints.npy", np.zeros(3, np.int64))
    fails(UsageError, f"{tmp_path / 'ints.npy'}: a int64 array, not siglip embeddings (float32 or float16)",
          tmp_path / "ints.npy")
    write_stacked(tmp_path / "s.npy", np.ones((3, 4), np.float32))
    np.save(tmp_path / "s.npy", np.ones((2, 4), np.float32))  # a rewrite interrupted before its sidecar
    fails(OutputError, f"{tmp_path / 's.npy.json'} does not describe {tmp_path / 's.npy'} (shape [3, 4], array "
          "[2, 4]): a write was interrupted; " + AGAIN, tmp_path / "s.npy")
    write_stacked(tmp_path / "t.safetensors", np.ones((3, 4), np.float32))
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[:-30])
    fails(OutputError, f"{tmp_path / 't.safetensors'}: not a readable .safetensors embeddings file (tensor 'sources' "
          "is not F32, F16 or U8, or does not fit in the file (truncated?)): " + AGAIN,
          tmp_path / "t.safetensors")
    from safetensors.numpy import save_file
    save_file({"other": np.ones(3, np.float32)}, tmp_path / "o.safetensors")
    fails(OutputError, f"{tmp_path / 'o.safetensors'}: not a readable .safetensors embeddings file (missing "
          "'embeddings'): " + AGAIN, tmp_path / "o.safetensors")
    write_stacked(tmp_path / "m.safetensors", np.ones((3, 4), np.float32), {**META, "pool": "mean"})
    fails(UsageError, f"{tmp_path / 'm.safetensors'}: mean-pooled embeddings are not in SigLIP's image-text space: "
          "embed with --pool map (or none)", tmp_path / "m.safetensors")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    fails(UsageError, f"{tmp_path / 'empty'}: no embeddings found (.npy or .safetensors files): embed images into it "
          f"with `siglip embed IMAGES -o {tmp_path / 'empty'}/`", tmp_path / "empty")


def test_folder_errors(tmp_path):
    emb, _, _ = make_folder(tmp_path, n=3, manifest=False)
    write_embeddings(emb / "z.jpg.npy", np.ones(8, np.float32), META)
    with pytest.raises(UsageError) as e:
        open_collection(emb)
    assert str(e.value) == (f"{emb}: files from different runs: img01.jpg.npy is [16] float32 but z.jpg.npy is [8] "
                            "float32: embed the folder again with --overwrite (or into a new folder)")
    write_embeddings(emb / "z.jpg.npy", np.ones(16, np.float16), META)
    with pytest.raises(UsageError, match=r"img01\.jpg\.npy is \[16\] float32 but z\.jpg\.npy is \[16\] float16"):
        open_collection(emb)
    os.unlink(emb / "z.jpg.npy")
    write_embeddings(emb / "m.jpg.safetensors", np.ones(16, np.float32), {**META, "pool": "mean"})
    with pytest.raises(UsageError) as e:
        open_collection(emb)
    assert str(e.value) == f"{emb / 'm.jpg.safetensors'}: {store.MEAN_REFUSED}"
    os.unlink(emb / "m.jpg.safetensors")
    (emb / MANIFEST).write_text(json.dumps({"metadata": {**META, "pool": "mean"}, "roots": []}))
    with pytest.raises(UsageError, match=f"^{emb}: mean-pooled embeddings are not in SigLIP's image-text space"):
        open_collection(emb)


def test_search_errors(tmp_path):
    write_stacked(tmp_path / "a.npy", np.ones((3, 4), np.float32))
    c = open_collection(tmp_path / "a.npy")
    with pytest.raises(UsageError, match="^the query vector is zero or not finite: nothing can be ranked by it$"):
        top_k(np.zeros(4), [c], 1)
    with pytest.raises(UsageError, match=r"a\.npy: vectors of width 4, the query's is 5: search with the model that "
                                         r"embedded them$"):
        top_k(np.ones(5), [c], 1)
    write_stacked(tmp_path / "a.npy", np.ones((3, 4), np.float32))  # rewritten after opening
    with pytest.raises(OutputError, match=r"a\.npy changed since it was opened \(rewritten by another run\?\): "
                                          "search again$"):
        top_k(np.ones(4), [c], 1)


def test_memory_stays_flat_with_file_size(tmp_path):
    """~200 MB of float16 rows: reading and ranking them allocate a few chunks, never the file."""
    rows, d = 131072, 768
    path = tmp_path / "big.npy"
    writer = StackedWriter(path, rows, META)
    block = np.random.default_rng(3).standard_normal((4096, d)).astype(np.float16)
    for i in range(rows):
        writer.add(block[i % 4096], f"/img/{i}.jpg")
    writer.finish()
    size = path.stat().st_size
    assert size > 200e6
    c = open_collection(path)
    tracemalloc.start()
    try:
        total = sum(len(x) for _, x in c.chunks(rows=4096))
        hits = top_k(block[5].astype(np.float32), [c], 10, rows=4096)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == rows and hits[0].row % 4096 == 5
    assert peak < size / 10, f"peak {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"


def test_a_folder_holding_output_folders_is_refused_not_mixed(tmp_path):
    emb, _, _ = make_folder(tmp_path / "parent", n=2)
    with pytest.raises(UsageError) as e:
        open_collection(tmp_path / "parent")
    assert str(e.value) == (f"{tmp_path / 'parent'} is not a siglip output folder but holds one, {emb}: search the "
                            f"output folders themselves (e.g. siglip search QUERY {emb})")
    assert not (tmp_path / "parent" / INDEX_DIR).exists()
