import io
from pathlib import Path, PurePosixPath

import pytest

from siglip_cli.errors import UsageError
from siglip_cli.inputs import collect, parse_shard, safe_rel, shard


def touch(root: Path, *names: str) -> None:
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


@pytest.fixture
def tree(tmp_path):
    touch(tmp_path / "photos", "b.jpg", "a.png", "notes.txt", "2024/z.webp", "2024/c.JPG", ".hidden/h.jpg",
          ".dot.jpg", "2023/deep/d.tif")
    return tmp_path / "photos"


def rels(items):
    return [i.rel.as_posix() for i in items]


def test_folders_are_walked_sorted_recursively_skipping_non_images_and_hidden(tree):
    assert rels(collect([str(tree)])) == ["a.png", "b.jpg", "2023/deep/d.tif", "2024/c.JPG", "2024/z.webp"]
    assert rels(collect([str(tree)], hidden=True)) == [".dot.jpg", "a.png", "b.jpg", ".hidden/h.jpg",
                                                      "2023/deep/d.tif", "2024/c.JPG", "2024/z.webp"]
    assert rels(collect([str(tree)], exts=["jpg"])) == ["b.jpg", "2024/c.JPG"]
    assert rels(collect([str(tree)], globs=["2024/*"])) == ["2024/c.JPG", "2024/z.webp"]
    assert all(i.error is None for i in collect([str(tree)]))


def test_named_files_are_kept_whatever_their_suffix_and_missing_ones_are_errors(tree):
    items = collect([str(tree / "notes.txt"), str(tree / "missing.jpg"), str(tree / "b.jpg"), str(tree / "b.jpg")])
    assert [(i.rel.as_posix(), i.error) for i in items] == [("notes.txt", None), ("missing.jpg", "no such file"),
                                                            ("b.jpg", None)]


def test_unexpanded_globs_mirror_the_tree_below_the_wildcard(tree):
    items = collect([str(tree / "*" / "*.webp"), str(tree / "*.jpg")])
    assert rels(items) == ["2024/z.webp", "b.jpg"]
    assert collect([str(tree / "nothing*.jpg")])[0].error == "no file matches this pattern"


def test_files_from_maps_dotdot_and_absolute_paths_inside(tree, monkeypatch):
    listing = tree.parent / "list.txt"
    listing.write_text(f"# a comment\n{tree / 'b.jpg'}\n\nphotos/../photos/a.png\n{tree / '2024'}\nnope.jpg\n")
    monkeypatch.chdir(tree.parent)
    items = collect([], files_from=str(listing))
    got = [(i.rel.as_posix(), i.error) for i in items]
    assert got[0] == (safe_rel(tree / "b.jpg").as_posix(), None) and not got[0][0].startswith("/")
    assert got[1] == ("photos/__/photos/a.png", None)
    assert got[2][0].endswith("photos/2024/c.JPG") and got[3][0].endswith("photos/2024/z.webp")
    assert got[4] == ("nope.jpg", "no such file")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"photos/b.jpg\n")))  # as a real stdin
    assert rels(collect([], files_from="-")) == ["photos/b.jpg"]


@pytest.mark.parametrize("path, rel", [("/etc/passwd", "etc/passwd"), ("../../x.jpg", "__/__/x.jpg"),
                                       ("./a/./b.jpg", "a/b.jpg"), ("a/../../b.jpg", "a/__/__/b.jpg")])
def test_safe_rel_never_leaves_the_folder(path, rel):
    assert safe_rel(path) == PurePosixPath(rel)
    assert ".." not in safe_rel(path).parts and not safe_rel(path).is_absolute()


def test_shards_cover_every_input_exactly_once(tree):
    items = collect([str(tree)], hidden=True)
    parts = [shard(items, k, 3) for k in range(3)]
    assert sorted(i.path for p in parts for i in p) == sorted(i.path for i in items)
    assert sum(len(p) for p in parts) == len(items) == 7
    assert [len(p) for p in parts] == [3, 2, 2]
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "a/b", "1", "-1/2", "0/0"):
        with pytest.raises(UsageError, match="--shard"):
            parse_shard(bad)
