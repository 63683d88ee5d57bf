from __future__ import annotations

import json
import shutil

import numpy as np
import typer
from PIL import Image
from typer.testing import CliRunner

from facekit_dlib import plugin
from facekit_dlib.align import fallback_box, plan_jobs

from _dlib_testutil import DATA, needs_data, needs_dlib, needs_models


def _app() -> typer.Typer:
    app = typer.Typer()
    plugin.register_commands(app)

    @app.callback()
    def main():  # keeps `align` a named sub-command
        pass

    return app


def test_fallback_box_scales():
    assert fallback_box(250, 250) == (68, 78, 182, 192)
    assert fallback_box(500, 500) == (136, 156, 364, 384)


def test_plan_keeps_layout_and_disambiguates(tmp_path):
    (tmp_path / "src" / "Bob").mkdir(parents=True)
    for name in ("a.jpg", "a.png", "b.JPG", "notes.txt"):
        (tmp_path / "src" / "Bob" / name).write_bytes(b"x")
    (tmp_path / "src" / "stray.jpg").write_bytes(b"x")
    jobs, ignored = plan_jobs(tmp_path / "src", tmp_path / "out", ".jpg")
    assert sorted(j.dst.split("/")[-1] for j in jobs) == ["a_jpg.jpg", "a_png.jpg", "b.jpg"]
    assert ignored == ["stray.jpg"]


def test_missing_source_is_one_line_exit_2(tmp_path):
    r = CliRunner().invoke(_app(), ["align", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert r.exit_code == 2
    assert "source folder not found" in r.output
    assert "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_output_inside_source_is_refused(tmp_path):
    (tmp_path / "src" / "A").mkdir(parents=True)
    r = CliRunner().invoke(_app(), ["align", str(tmp_path / "src"), str(tmp_path / "src" / "out")])
    assert r.exit_code == 2 and "inside the source" in r.output


def test_output_holding_the_source_is_refused(tmp_path):
    (tmp_path / "src" / "A").mkdir(parents=True)
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "001.jpg").write_bytes(b"someone else's photo")
    r = CliRunner().invoke(_app(), ["align", str(tmp_path / "src"), str(tmp_path)])
    assert r.exit_code == 2 and "must not hold the source folder" in r.output and "Traceback" not in r.output
    assert (tmp_path / "A" / "001.jpg").read_bytes() == b"someone else's photo"


@needs_dlib
@needs_models
@needs_data
def test_align_writes_resumes_and_lists(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    people = sorted(p for p in (DATA / "lfw_tiny20").iterdir() if p.is_dir())[:2]
    for p in people:
        (src / p.name).mkdir(parents=True)
        for f in sorted(p.glob("*.jpg"))[:2]:
            shutil.copy(f, src / p.name / f.name)
    Image.fromarray(np.full((250, 250, 3), 128, np.uint8)).save(src / people[0].name / "grey.png")
    (src / people[1].name / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")

    app = _app()
    r = CliRunner().invoke(app, ["align", str(src), str(out), "--workers", "2"])
    assert r.exit_code == 0, r.output
    chips = sorted(out.glob("*/*.jpg"))
    assert len(chips) == 5  # 4 faces + the grey image through the fixed-box fallback
    assert all(Image.open(c).size == (150, 150) for c in chips)
    assert f"{people[0].name}/grey.png" in r.output
    assert f"{people[1].name}/broken.jpg" in r.output
    m = json.loads((out / "align.json").read_text())
    assert (m["images"], m["aligned"], m["fallback"], m["unreadable"]) == (6, 4, 1, 1)
    assert m["no_face_fallback"] == [f"{people[0].name}/grey.png"]
    assert list(m["unreadable_files"]) == [f"{people[1].name}/broken.jpg"]

    # resumable: everything already written is skipped
    stamp = {c: c.stat().st_mtime_ns for c in chips}
    r2 = CliRunner().invoke(app, ["align", str(src), str(out), "--workers", "1"])
    assert r2.exit_code == 0, r2.output
    m2 = json.loads((out / "align.json").read_text())
    assert m2["skipped_existing"] == 5 and m2["aligned"] == 0 and m2["unreadable"] == 1
    assert m2["no_face_fallback"] == [f"{people[0].name}/grey.png"]  # remembered
    assert all(c.stat().st_mtime_ns == t for c, t in stamp.items())

    # a removed chip is redone, the rest skipped
    chips[0].unlink()
    r3 = CliRunner().invoke(app, ["align", str(src), str(out), "--workers", "1"])
    m3 = json.loads((out / "align.json").read_text())
    assert r3.exit_code == 0 and m3["skipped_existing"] == 4 and m3["chips"] == 5

    # chips made with other settings are not silently mixed
    r4 = CliRunner().invoke(app, ["align", str(src), str(out), "--format", "png"])
    assert r4.exit_code == 2 and "--format jpg" in r4.output
