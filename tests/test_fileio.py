"""ltrec.files.safe and every verb that writes: a device, a FIFO or a link at the output path is written through,
never replaced; `-` is standard output; an output that is one of the inputs is refused."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest
from test_export import ok, train_run, write_events
from typer.testing import CliRunner

from ltrec.cli import app
from ltrec.files.errors import UserError
from ltrec.files.safe import atomic_write, open_output, refuse_inputs

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("io")
    events = write_events(folder / "events.csv", users=60)
    run = train_run(folder, events, "gru4rec", epochs=1)
    ok(["export", run, "--out", folder / "bundle"])
    return {"run": run, "bundle": folder / "bundle", "events": events}


def fifo(path: Path) -> tuple[Path, list]:
    """A FIFO at `path` and a reader thread that collects what is written to it."""
    os.mkfifo(path)
    got: list[bytes] = []

    def read():
        with open(path, "rb") as f:
            got.append(f.read())

    threading.Thread(target=read, daemon=True).start()
    return path, got


def null_device(path: Path) -> Path | None:
    """A character device like /dev/null made inside the temp folder (needs root), else None."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError):
        return None
    return path


def test_atomic_write_keeps_links_and_writes_through_devices(tmp_path):
    target = tmp_path / "real.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    atomic_write(link, "new")
    assert link.is_symlink() and target.read_text() == "new"  # the link stays, its target is replaced
    path, got = fifo(tmp_path / "pipe")
    atomic_write(path, b"through the pipe")
    assert stat.S_ISFIFO(os.stat(path).st_mode)
    for _ in range(100):
        if got:
            break
        threading.Event().wait(0.02)
    assert got == [b"through the pipe"]
    device = null_device(tmp_path / "null")
    if device is not None:
        atomic_write(device, "gone")
        assert stat.S_ISCHR(os.stat(device).st_mode)
    with pytest.raises(UserError, match="is a directory"):
        atomic_write(tmp_path, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["real.txt", "link.txt", "pipe"] + (["null"] if device else [])
    )


def test_a_failed_block_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with open_output(tmp_path / "out.csv") as f:
            f.write("half")
            raise RuntimeError("crash in the middle")
    assert list(tmp_path.iterdir()) == []


def test_refuse_inputs_compares_resolved_paths(tmp_path):
    (tmp_path / "bundle").mkdir()
    events = tmp_path / "events.csv"
    events.write_text("x")
    (tmp_path / "alias.csv").symlink_to(events)
    for out in (events, tmp_path / "alias.csv", tmp_path / "bundle" / "model.onnx", tmp_path / "." / "events.csv"):
        with pytest.raises(UserError, match="writing there would destroy the input"):
            refuse_inputs(out, {"the --input file": events, "the bundle": tmp_path / "bundle"}, "--output")
    refuse_inputs(tmp_path / "p.csv", {"the --input file": events}, "--output")
    refuse_inputs("-", {"the --input file": events}, "--output")


def test_predict_never_overwrites_its_inputs(bundle, tmp_path):
    before = {p: p.read_bytes() for p in (bundle["events"], bundle["bundle"] / "model.onnx")}
    for out, what in (
        (bundle["events"], "the --input file"),
        (bundle["bundle"] / "model.onnx", "the bundle"),
        (bundle["bundle"] / "preds.csv", "the bundle"),
    ):
        r = runner.invoke(
            app, ["predict", str(bundle["bundle"]), "--input", str(bundle["events"]), "--output", str(out)]
        )
        assert r.exit_code == 2 and f"is {what}" in r.output and "Traceback" not in r.output, r.output
    assert all(p.read_bytes() == data for p, data in before.items())


@pytest.mark.parametrize("verb", ["predict", "report", "schema"])
def test_outputs_to_a_fifo_a_device_and_a_link(bundle, tmp_path, verb, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = {
        "predict": ["predict", bundle["bundle"], "--input", bundle["events"], "--output"],
        "report": ["report", bundle["run"], "--out"],
        "schema": ["schema", "--out"],
    }[verb]
    path, got = fifo(tmp_path / "pipe")
    ok([*args, path])
    for _ in range(200):
        if got:
            break
        threading.Event().wait(0.02)
    assert stat.S_ISFIFO(os.stat(path).st_mode) and got and len(got[0]) > 100
    device = null_device(tmp_path / "null")
    if device is not None:
        ok([*args, device])
        assert stat.S_ISCHR(os.stat(device).st_mode)
    target = tmp_path / "target.out"
    target.write_text("old")
    (tmp_path / "link.out").symlink_to(target)
    ok([*args, tmp_path / "link.out"])
    assert (tmp_path / "link.out").is_symlink() and len(target.read_text()) > 100


@pytest.mark.parametrize(
    "verb, start", [("predict", "user_id,rank,item_id,score,source"), ("report", "<!DOCTYPE html>"), ("schema", "{")]
)
def test_dash_is_standard_output(bundle, tmp_path, verb, start, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = {
        "predict": ["predict", bundle["bundle"], "--input", bundle["events"], "--output", "-"],
        "report": ["report", bundle["run"], "--out", "-"],
        "schema": ["schema", "--out", "-"],
    }[verb]
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0 and r.stdout.startswith(start), r.output
    assert list(tmp_path.iterdir()) == []  # no file named "-"
    if verb == "schema":
        json.loads(r.stdout)


def test_export_into_a_linked_folder_keeps_the_link(bundle, tmp_path):
    real = tmp_path / "real"
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    real.mkdir()
    ok(["export", bundle["run"], "--out", tmp_path / "link"])
    assert (tmp_path / "link").is_symlink() and (real / "model.onnx").is_file()
    r = runner.invoke(app, ["export", str(bundle["run"]), "--out", str(bundle["run"])])
    assert r.exit_code == 2 and "is not a bundle folder" in r.output  # never replaces the run itself


def test_report_refuses_to_write_over_a_run_file(bundle, tmp_path):
    target = bundle["run"] / "metrics.json"
    before = target.read_bytes()
    r = runner.invoke(app, ["report", str(bundle["run"]), "--out", str(target)])
    assert r.exit_code == 2 and "is inside the run" in r.output
    assert target.read_bytes() == before


def test_init_on_a_file_or_below_one_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    events = write_events(tmp_path / "events.csv", users=10)
    for where in ("events.csv", "events.csv/proj"):
        r = runner.invoke(app, ["init", where, "--data", str(events)])
        assert r.exit_code == 2 and "is a file" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert events.read_text().startswith("user_id,item_id,timestamp")
