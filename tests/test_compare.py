"""`ltrec compare`: the table pairs users, averages seeds per user, and refuses mismatched runs."""

import numpy as np
import pytest

from ltrec.evaluation.compare import compare, format_comparison
from ltrec.files.errors import UserError
from ltrec.files.runs import MARKER, RUN_FORMAT


def write_users(run, users, slices, ndcg, protocol="full ranking"):
    """A run folder as `ltrec train` leaves it, as far as compare reads it."""
    run.mkdir(parents=True)
    (run / MARKER).write_text(f'{{"format": {RUN_FORMAT}}}')
    lines = ["user_id,slice,train_events,ndcg@10,hr@10"]
    lines += [f"{u},{s},3,{v},{float(v > 0)}" for u, s, v in zip(users, slices, ndcg)]
    (run / "users_test.csv").write_text("\n".join(lines) + "\n")
    (run / "users_test.json").write_text(f'{{"protocol": "{protocol}"}}\n')


def test_compare_pairs_users_and_averages_seeds(tmp_path):
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(400)]
    slices = ["head" if i < 100 else "tail" for i in range(400)]
    base = rng.random(400) * 0.2
    write_users(tmp_path / "a", users, slices, base)
    write_users(tmp_path / "b0", users[::-1], slices[::-1], (base + 0.05)[::-1])  # row order must not matter
    write_users(tmp_path / "b1", users, slices, base + 0.15)
    result = compare([str(tmp_path / "a"), f"{tmp_path / 'b0'},{tmp_path / 'b1'}"])
    rows = {(r["slice"], r["metric"]): r for r in result["rows"]}
    tail = rows[("tail", "ndcg@10")]
    assert tail["users"] == 300
    assert tail["values"][1] - tail["values"][0] == pytest.approx(0.1)  # seeds averaged per user: +0.05, +0.15
    assert tail["tests"][0]["p_value"] < 0.001
    assert "cold" not in {r["slice"] for r in result["rows"]}
    assert "| tail | ndcg@10 | 300 |" in format_comparison(result)


def test_compare_refuses_different_users(tmp_path):
    write_users(tmp_path / "a", ["u1", "u2"], ["head", "tail"], [0.1, 0.2])
    write_users(tmp_path / "b", ["u1", "u3"], ["head", "tail"], [0.1, 0.2])
    with pytest.raises(UserError, match="users or slices differ"):
        compare([str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(UserError, match="nope: no such run directory"):
        compare([str(tmp_path / "a"), str(tmp_path / "nope")])
    (tmp_path / "b" / "users_test.csv").unlink()
    with pytest.raises(UserError, match="missing; run `ltrec eval"):
        compare([str(tmp_path / "a"), str(tmp_path / "b")])


def test_small_p_values_keep_a_digit():
    # a bootstrap p of 0.0003 must not print as "p=0.000" (reads as zero); exactly 0 prints as "< 1/n_boot"
    row = {
        "slice": "all",
        "metric": "ndcg@10",
        "users": 5,
        "values": [0.1, 0.2],
        "tests": [{"rel_diff": 1.0, "p_value": 0.0003, "n_boot": 10000}],
    }
    result = {
        "runs": ["a", "b"],
        "rows": [row, {**row, "tests": [{**row["tests"][0], "p_value": 0.0}]}],
        "split": "test",
    }
    text = format_comparison(result)
    assert "(p=0.0003)" in text and "(p<0.0001)" in text and "p=0.000)" not in text


def test_compare_refuses_mixed_protocols(tmp_path):
    # `ltrec eval RUN --set eval.mask_seen=false` rewrites RUN's per-user file under another protocol; a
    # comparison must not silently pair it with runs evaluated the usual way
    for name, proto in (("a", "history masked"), ("b", "history not masked"), ("c", "history masked")):
        write_users(tmp_path / name, ["u1", "u2"], ["head", "tail"], [0.1, 0.2], proto)
    with pytest.raises(UserError, match="needs one protocol"):
        compare([str(tmp_path / "a"), f"{tmp_path / 'c'},{tmp_path / 'b'}"])
    result = compare([str(tmp_path / "a"), str(tmp_path / "c")])
    assert result["protocol"] == "history masked" and "history masked;" in format_comparison(result)
