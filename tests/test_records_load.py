"""Data-file loading's image check: the fast path (root resolved once, lexical containment, a thread
pool over distinct paths) gives the report the per-record ``resolve_image_path`` + ``probe_image``
check gave, refuses the same escapes, and ``check_images="decode"`` catches what headers miss."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mminstruct.errors import ConfigError, ImageError, UnsafePathError
from mminstruct.data.images import ImageRoot, probe_image, resolve_image_path
from mminstruct.data.records import check_image_paths, check_images_mode, load_data_file
from tests.fixtures.images import draw_shape, save_jpeg
from tests.test_formats import ALL_FIXTURE_FILES


def _old_reasons(df) -> dict[int, str]:
    """The previous check, per record, one image after another (the reference)."""
    out: dict[int, str] = {}
    for rec in df.records:
        for rel in rec.images:
            try:
                full = resolve_image_path(df.image_root, rel, allow_outside=df.allow_outside)
            except UnsafePathError as e:
                out[rec.index] = f"unsafe path: {e}"
                break
            except ImageError as e:
                out[rec.index] = f"image missing: {e}"
                break
            if not full.exists():
                out[rec.index] = f"image missing: {rel!r} not found under {df.image_root}"
                break
            try:
                probe_image(full)
            except ImageError as e:
                out[rec.index] = f"image unreadable: {e}"
                break
    return out


@pytest.mark.parametrize("rel", [r for r in ALL_FIXTURE_FILES if "xtuner" not in r])
@pytest.mark.parametrize("image_folder", [None, "images"])
def test_real_fixtures_give_the_report_the_old_check_gave(shared_fixtures, rel, image_folder):
    path = shared_fixtures / rel
    unchecked = load_data_file(path, image_folder=image_folder, check_images=False)
    expected = _old_reasons(unchecked)
    new = load_data_file(path, image_folder=image_folder)
    got = {p.index: p.reason for p in new.report.problems}
    structural = {p.index: p.reason for p in unchecked.report.problems}
    assert got == {**structural, **expected}
    assert [r.index for r in new.records] == [r.index for r in unchecked.records
                                              if r.index not in expected]


def _write(folder: Path, images: list[object]) -> Path:
    recs = [{"id": k, "image": im, "conversations": [{"from": "human", "value": "<image>\nq"},
                                                    {"from": "gpt", "value": "a"}]}
            for k, im in enumerate(images)]
    p = folder / "data.json"
    p.write_text(json.dumps(recs))
    return p


@pytest.fixture()
def tree(tmp_path: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path / "root"
    save_jpeg(draw_shape("circle", 0), root / "sub" / "a.jpg")
    outside = tmp_path_factory.mktemp("outside")
    save_jpeg(draw_shape("square", 1), outside / "o.jpg")
    (root / "inner_link.jpg").symlink_to(root / "sub" / "a.jpg")  # stays inside: allowed
    (root / "dir_link").symlink_to(root / "sub")  # a folder link inside: allowed
    (root / "out_link.jpg").symlink_to(outside / "o.jpg")  # leaves the root: refused
    (root / "out_dir").symlink_to(outside)  # a folder link leaving the root: refused
    return {"root": root, "outside": outside}


def test_symlinks_and_escapes_are_judged_as_resolve_image_path_judges_them(tree):
    root = tree["root"]
    rels = ["sub/a.jpg", "./sub//a.jpg", "inner_link.jpg", "dir_link/a.jpg", "out_link.jpg",
            "out_dir/o.jpg", "sub/../sub/a.jpg", "../outside.jpg", "sub/../../x.jpg",
            str(tree["outside"] / "o.jpg"), "sub/missing.jpg", "nosuchdir/x.jpg"]
    df = load_data_file(_write(root, rels))
    reasons = {p.id: p.reason for p in df.report.problems}
    assert {r.id for r in df.records} == {0, 1, 2, 3, 6}
    for k in (4, 5, 7, 8):
        assert reasons[k].startswith("unsafe path") and "escapes" in reasons[k], reasons[k]
    assert reasons[9].startswith("unsafe path") and "absolute" in reasons[9]
    assert reasons[10].startswith("image missing") and reasons[11].startswith("image missing")
    where = ImageRoot(root)
    for rel in rels:  # the fast resolver agrees with the reference on every path
        try:
            want = resolve_image_path(root, rel)
        except UnsafePathError:
            with pytest.raises(UnsafePathError):
                where.resolve(rel)
            continue
        got, st = where.resolve(rel)
        assert got == want and (st is not None) == want.exists()
    allowed = load_data_file(_write(root, rels), allow_outside_paths=True)
    assert {r.id for r in allowed.records} == {0, 1, 2, 3, 4, 5, 6, 9}


def test_decode_catches_a_truncated_jpeg_the_header_probe_passes(tmp_path: Path):
    good = save_jpeg(draw_shape("circle", 3, size=(256, 256)), tmp_path / "good.jpg")
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    p = _write(tmp_path, ["good.jpg", "cut.jpg"])
    assert load_data_file(p).report.loaded == 2  # the header is intact
    for mode in ("header", True):
        assert load_data_file(p, check_images=mode).report.loaded == 2
    decoded = load_data_file(p, check_images="decode")
    assert [r.id for r in decoded.records] == [0]
    reason = decoded.report.problems[0].reason
    assert reason.startswith("image unreadable") and "cut.jpg" in reason and "truncated" in reason


@pytest.mark.parametrize("workers", [1, 3])
def test_images_that_passed_are_not_opened_again_unless_changed(tmp_path: Path, monkeypatch,
                                                                  workers: int):
    """A check cache: a second load (a server started again) decodes none of the images that
    passed; a changed image, another pixel limit or another check mode opens it again; a failure
    is never remembered; a damaged cache file counts as empty and is rewritten."""
    from mminstruct.data import records

    for name, shape in (("a", "circle"), ("b", "square"), ("c", "circle")):
        save_jpeg(draw_shape(shape, 1, size=(96, 96)), tmp_path / f"{name}.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    p = _write(tmp_path, ["a.jpg", "b.jpg", "c.jpg", "cut.jpg", "a.jpg"])
    cache = tmp_path / "cache"
    opened: list[str] = []
    for name in ("open_image", "probe_image"):
        real = getattr(records, name)
        monkeypatch.setattr(records, name, lambda q, _real=real, **k: opened.append(Path(q).name)
                            or _real(q, **k))

    def load(**kw):
        opened.clear()
        df = load_data_file(p, check_images=kw.pop("mode", "decode"), workers=workers,
                            check_cache=cache, **kw)
        return [r.id for r in df.records], sorted(opened)

    first = load()
    assert first == ([0, 1, 2, 4], ["a.jpg", "b.jpg", "c.jpg", "cut.jpg"])
    assert (cache / records.ImageChecks.FILE).stat().st_size == 3 * 16
    assert load() == ([0, 1, 2, 4], ["cut.jpg"])  # only the failure is opened (and reported)
    assert "truncated" in load_data_file(p, check_images="decode", check_cache=cache
                                         ).report.problems[0].reason
    st = (tmp_path / "b.jpg").stat()  # b rewritten (same bytes, a new time): opened again
    os.utime(tmp_path / "b.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert load() == ([0, 1, 2, 4], ["b.jpg", "cut.jpg"])
    assert load()[1] == ["cut.jpg"]
    assert load(max_pixels=10**7)[1] == ["a.jpg", "b.jpg", "c.jpg", "cut.jpg"]  # another limit
    assert load(mode="header")[1] == ["a.jpg", "b.jpg", "c.jpg", "cut.jpg"]  # another check
    assert load(mode="header")[1] == []  # (the cut one's header is intact: it passed)
    (cache / records.ImageChecks.FILE).write_bytes(b"damaged")
    assert load() == ([0, 1, 2, 4], ["a.jpg", "b.jpg", "c.jpg", "cut.jpg"])
    assert load()[1] == ["cut.jpg"]  # rewritten whole
    assert load_data_file(p, check_images="decode", workers=workers).report.loaded == 4


def test_check_images_off_and_bad_values(tmp_path: Path):
    p = _write(tmp_path, ["missing.jpg"])
    for off in (False, "off"):
        assert load_data_file(p, check_images=off).report.loaded == 1
    assert load_data_file(p).report.loaded == 0
    assert check_images_mode("Decode") == "decode"
    with pytest.raises(ConfigError, match="unknown check_images value 'full'.*header, decode, off"):
        load_data_file(p, check_images="full")


def test_repeated_paths_are_checked_once_with_progress(tmp_path: Path, monkeypatch):
    save_jpeg(draw_shape("circle", 0), tmp_path / "a.jpg")
    save_jpeg(draw_shape("square", 0), tmp_path / "b.jpg")
    calls: list[tuple[int, int]] = []
    opened: list[str] = []
    from mminstruct.data import records

    real = records.probe_image
    monkeypatch.setattr(records, "probe_image", lambda p, **k: opened.append(os.fspath(p)) or real(p, **k))
    df = load_data_file(_write(tmp_path, ["a.jpg", "b.jpg", "a.jpg"] * 50), progress=lambda d, t: calls.append((d, t)))
    assert df.report.loaded == 150 and sorted(opened) == sorted({str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")})
    assert calls[0] == (0, 2) and calls[-1] == (2, 2)


@pytest.mark.parametrize("workers", [1, 3])
def test_thread_pool_and_serial_give_the_same_answers(tmp_path: Path, workers: int):
    for k in range(40):
        save_jpeg(draw_shape("circle", k, size=(32, 32)), tmp_path / f"{k}.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    rels = [f"{k}.jpg" for k in range(40)] + ["bad.jpg", "gone.jpg", "../x.jpg"]
    got = check_image_paths(rels, tmp_path, workers=workers)
    assert [r for r, why in got.items() if why is None] == rels[:40]
    assert got["bad.jpg"].startswith("image unreadable") and got["gone.jpg"].startswith("image missing")
    assert got["../x.jpg"].startswith("unsafe path")


@pytest.mark.parametrize("turns,reason", [
    ([{"from": "human", "value": "<image>\nWhat is it?"}], "no answer: no gpt/assistant turn"),
    ([{"from": "human", "value": "Q1"}, {"from": "user", "value": "Q2"}],
     "no answer: no gpt/assistant turn"),
    ([{"from": "gpt", "value": "A cat."}], "no human turn"),
    ([{"from": "human", "value": "Q"}, {"from": "gpt", "value": "  "}], "empty answer in turn 2"),
])
def test_a_record_without_an_answer_is_refused_with_its_reason(turns, reason):
    from mminstruct.errors import DataFileError
    from mminstruct.data.records import Problem, parse_record, validate_record
    raw = {"id": "r7", "image": "a.jpg", "conversations": turns}
    got = validate_record(3, raw)
    assert isinstance(got, Problem) and got.reason == reason and got.id == "r7"
    with pytest.raises(DataFileError, match=f"record 3 \\(id 'r7'\\): {reason}"):
        parse_record(3, raw)
    ok = validate_record(3, {**raw, "conversations": [{"from": "human", "value": "Q"},
                                                      {"from": "gpt", "value": "A"}]})
    assert not isinstance(ok, Problem) and [t.role for t in ok.turns] == ["human", "gpt"]
