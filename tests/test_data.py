"""DuckDB data layer: hand-computed tensors, tie-breaks, slices, errors, and the real logs."""

from pathlib import Path

import duckdb
import numpy as np
import pytest

from ltrec.data import COLD, EVAL, TRAIN_ONLY, load
from ltrec.files.errors import UserError
from ltrec.recipe import Data, Head, Split

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

# 12 events. Items in ascending original id: 10→1, 20→2, 30→3, 40→4, 50→5.
# user a: t=1 item 10, t=2 item 20, t=2 item 30 (tie: file order keeps 20 before 30), t=3 item 40, t=5 item 50
# user b: 30, 10, 20 (times 1, 2, 3)      user c: 50, 40 (too short for leave-one-out: train only)
# user d: 20, 20, 10 (a repeat)
TWELVE = """user_id,item_id,timestamp
a,10,1
b,30,1
a,20,2
a,30,2
c,50,1
b,10,2
d,20,1
a,40,3
d,20,2
c,40,2
b,20,3
d,10,3
"""


def csv_file(tmp_path, text=TWELVE, name="events.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load_csv(tmp_path, text=TWELVE, head=None, split=None, **data):
    return load(Data(source=csv_file(tmp_path, text), **data), split or Split(), head or Head(count=2))


def test_twelve_rows_by_hand(tmp_path):
    s = load_csv(tmp_path, TWELVE.replace("a,40,3", "a,40,3\na,50,5"))
    assert list(s.vocab) == ["10", "20", "30", "40", "50"] and s.n_items == 5
    assert list(s.users) == ["a", "b", "c", "d"]
    assert list(s.offsets) == [0, 5, 8, 10, 13]
    assert list(s.items) == [1, 2, 3, 4, 5, 3, 1, 2, 5, 4, 2, 2, 1]
    assert list(s.role) == [EVAL, EVAL, TRAIN_ONLY, EVAL]
    assert list(s.train_lengths) == [3, 1, 2, 1]
    assert list(s.head) == [True, False, True, False]  # head.count=2: at least 2 training events
    inputs, targets, owner = s.train_windows(max_len=2)
    # a trains on [1, 2, 3]: one window [1, 2 | 2, 3]; c trains on [5, 4]: window [0, 5 | 0, 4]
    assert owner.tolist() == [0, 2]
    assert inputs.tolist() == [[1, 2], [0, 5]] and targets.tolist() == [[2, 3], [0, 4]]
    assert inputs.dtype == targets.dtype == np.int32  # half of int64's memory; training widens each batch
    users, hist, tgt = s.eval_inputs("valid", max_len=3)
    assert users.tolist() == [0, 1, 3] and tgt.tolist() == [4, 1, 2]
    assert hist.tolist() == [[1, 2, 3], [0, 0, 3], [0, 0, 2]]
    users, hist, tgt = s.eval_inputs("test", max_len=3)
    assert tgt.tolist() == [5, 2, 1] and hist.tolist() == [[2, 3, 4], [0, 3, 1], [0, 2, 2]]
    assert s.item_counts().tolist() == [1, 2, 2, 1, 1]  # training parts only: a 1,2,3; b 3; c 5,4; d 2


def test_long_user_windows_cover_every_target_once(tmp_path):
    rows = "".join(f"u,{i},{i}\n" for i in range(1, 13)) + "v,1,1\nv,2,2\nv,3,3\n"
    s = load_csv(tmp_path, "user_id,item_id,timestamp\n" + rows)
    inputs, targets, owner = s.train_windows(max_len=4)
    # u trains on items 1..10 (11, 12 are valid/test): targets 2..10, each once, in windows of 4 from the end
    assert sorted(targets[targets > 0].tolist()) == list(range(2, 11))
    assert inputs.tolist()[:3] == [[6, 7, 8, 9], [2, 3, 4, 5], [0, 0, 0, 1]]


def test_overlapping_windows_train_each_target_once_with_longer_context(tmp_path):
    # u trains on items 1..8 (9, 10 are valid/test); max_len 4, stride 2, worked by hand:
    # newest window ends at item 8: inputs 4 5 6 7, its newest 2 positions predict 7, 8
    # next one ends 2 earlier:      inputs 2 3 4 5, predicts 5, 6
    # the oldest (reaches item 1):  inputs 0 1 2 3, keeps all of its targets 2, 3, 4
    rows = "".join(f"u,{i},{i}\n" for i in range(1, 11))
    s = load_csv(tmp_path, "user_id,item_id,timestamp\n" + rows)
    inputs, targets, owner = s.train_windows(max_len=4, stride=2)
    assert inputs.tolist() == [[4, 5, 6, 7], [2, 3, 4, 5], [0, 1, 2, 3]]
    assert targets.tolist() == [[0, 0, 7, 8], [0, 0, 5, 6], [0, 2, 3, 4]]
    assert owner.tolist() == [0, 0, 0]
    same = s.train_windows(max_len=4, stride=4)  # stride max_len is the default cut
    assert all(np.array_equal(a, b) for a, b in zip(same, s.train_windows(max_len=4)))


@pytest.mark.parametrize("stride", [1, 3, 7, 8])
def test_every_stride_trains_each_target_once_and_windows_stay_grouped(tiny_csv, stride):
    s = load(Data(source=str(tiny_csv), max_len=8, stride=stride), Split(), Head())
    inputs, targets, owner = s.train_windows(8, stride)
    want = sorted(
        int(t) for u in range(len(s.users)) for t in s.items[s.offsets[u] + 1 : s.offsets[u] + s.train_lengths[u]]
    )
    assert sorted(targets[targets > 0].tolist()) == want
    assert (np.diff(owner) >= 0).all()  # UserSampler needs each user's windows together
    context = np.cumsum(inputs > 0, axis=1)  # items seen up to and including each position
    last_of_user = np.r_[owner[1:] != owner[:-1], True]  # the oldest window of each user comes last
    keep = (targets > 0) & ~last_of_user[:, None]
    assert (context[keep] >= 8 - stride + 1).all()


def test_seen_items_cover_the_whole_history(tmp_path):
    rows = "".join(f"u,{i},{i}\n" for i in range(1, 13))
    s = load_csv(tmp_path, "user_id,item_id,timestamp\n" + rows)
    for split, last in (("test", 11), ("valid", 10)):  # not just the last max_len
        row, item = s.seen(np.array([0]), split)
        assert row.tolist() == [0] * last and item.tolist() == list(range(1, last + 1))


def test_seen_items_are_distinct_pairs_whose_memory_follows_the_histories(tmp_path):
    # one user with a long history repeating items, one short: pairs, no (users × longest history) matrix
    rows = "".join(f"long,{i % 7 + 1},{i}\n" for i in range(5000)) + "short,1,1\nshort,2,2\nshort,3,3\n"
    s = load_csv(tmp_path, "user_id,item_id,timestamp\n" + rows)
    row, item = s.seen(np.arange(2), "test")
    assert len(row) == 7 + 2  # distinct items only
    who = {u: i for i, u in enumerate(s.users)}
    assert sorted(item[row == who["short"]].tolist()) == [1, 2]


def test_drop_short_users_and_min_counts(tmp_path):
    s = load_csv(tmp_path, split=Split(short_users="drop"))
    assert list(s.users) == ["a", "b", "d"] and s.report["short_dropped"] == 1
    s = load_csv(tmp_path, min_item_events=3)  # only 10, 20 have ≥ 3 events (counted on the raw data)
    assert list(s.vocab) == ["10", "20"] and s.report["dropped_items"] == 3


def test_head_fraction_threshold(tmp_path):
    # training lengths a 2, b 1, c 2, d 1: at most 25% may be head → nobody ties past the cut → threshold 3
    s = load_csv(tmp_path, head=Head(fraction=0.25))
    assert s.head_threshold == 3 and not s.head.any()
    s = load_csv(tmp_path, head=Head(fraction=0.5))
    assert s.head_threshold == 2 and s.head.tolist() == [True, False, True, False]


def test_cold_users_never_train(tmp_path):
    rows = "".join(f"u{u},{(u * 7 + j) % 30},{j}\n" for u in range(40) for j in range(3 + u % 5))
    s = load_csv(tmp_path, "user_id,item_id,timestamp\n" + rows, split=Split(cold_users=0.25))
    cold = np.flatnonzero(s.role == COLD)
    assert len(cold) == round(0.25 * 40)
    _, _, owner = s.train_windows(max_len=5)
    assert not set(owner.tolist()) & set(cold.tolist())
    assert (s.train_lengths[cold] == 0).all()
    users, hist, tgt = s.eval_inputs("test", 5, cold=True)
    assert set(users.tolist()) == set(cold.tolist())


def test_split_seed_fixes_the_cold_users_across_run_seeds(tmp_path):
    rows = "".join(f"u{u},{(u * 7 + j) % 30},{j}\n" for u in range(40) for j in range(3 + u % 5))
    text = "user_id,item_id,timestamp\n" + rows

    def cold(seed, split_seed):
        src = Data(source=csv_file(tmp_path, text))
        return set(np.flatnonzero(load(src, Split(cold_users=0.25, seed=split_seed), Head(count=2), seed).role == COLD))

    assert cold(0, None) != cold(1, None)  # default: the run's seed picks them
    assert cold(0, 7) == cold(1, 7) == cold(5, 7)


def test_query_parquet_and_json(tmp_path):
    path = csv_file(tmp_path)
    con = duckdb.connect()
    con.execute("COPY (SELECT * FROM read_csv(?)) TO '" + str(tmp_path / "e.parquet") + "' (FORMAT parquet)", [path])
    con.execute("COPY (SELECT * FROM read_csv(?)) TO '" + str(tmp_path / "e.json") + "' (FORMAT json)", [path])
    ref = load(Data(source=path), Split(), Head(count=2))
    for name in ("e.parquet", "e.json"):
        s = load(Data(source=str(tmp_path / name)), Split(), Head(count=2))
        assert s.items.tolist() == ref.items.tolist() and s.offsets.tolist() == ref.offsets.tolist()
    s = load(Data(source=path, query="SELECT * FROM source WHERE user_id <> 'b'"), Split(), Head(count=2))
    assert list(s.users) == ["a", "c", "d"]


BAD_DATA = [
    (
        "user_id,item,timestamp\na,1,1\n",
        {},
        "data.columns.item: {f}: no column 'item_id' (columns: user_id, item, "
        "timestamp); set data.columns.item to the right name",
    ),
    (
        "user_id,item_id,timestamp\na,1,x\na,2,y\n",
        {},
        "data.columns.time: {f}: column 'timestamp' holds non-numeric values such as 'x'",
    ),
    ("user_id,item_id,timestamp\n", {}, "data.source: {f}: no events"),
    ("user_id,item_id,timestamp\na,1,1\nb,2,2\n", {}, "data: no user has the 3 events leave-one-out needs"),
    (
        "user_id,item_id,timestamp\na,1,1\n",
        {"query": "SELEC * FROM source"},
        "data.query: the query failed: Parser Error",
    ),
    (
        "user_id,item_id,timestamp\na,1,1\n",
        {"query": "SELECT * FROM read_csv('/etc/passwd')"},
        "data.query: the query failed: Permission Error",
    ),
    ("user_id,item_id,timestamp\na,1,1\n", {"min_user_events": 5}, "data: no events left after min_user_events=5"),
]


@pytest.mark.parametrize(
    "text, data, message", BAD_DATA, ids=[m.split(":")[0] + str(i) for i, (_, _, m) in enumerate(BAD_DATA)]
)
def test_bad_data(tmp_path, text, data, message):
    path = csv_file(tmp_path, text)
    with pytest.raises(UserError) as err:
        load(Data(source=path, **data), Split(), Head())
    assert message.format(f=path) in str(err.value)


def test_missing_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load(Data(source=str(tmp_path / "nope.csv")), Split(), Head())
    with pytest.raises(UserError, match="no file matches"):
        load(Data(source=str(tmp_path / "*.parquet")), Split(), Head())


def test_empty_ids_dropped_and_counted(tmp_path):
    s = load_csv(tmp_path, TWELVE + ",10,4\na,,5\n")
    assert s.report["null_rows"] == 2 and len(s.items) == 12


@pytest.mark.parametrize(
    "name, users, items, events",
    [
        ("amazon-music", 20165, 20356, 132595),
        ("amazon-beauty", 22363, 12101, 198502),
        ("movielens-1m", 6040, 3706, 1000209),
        ("movielens-100k", 943, 1682, 100000),
    ],
)
def test_real_logs_match_their_readme(name, users, items, events):
    path = SHARED / name / "interactions.csv"
    if not path.exists():
        pytest.skip(f"{path} absent")
    s = load(Data(source=str(path)), Split(), Head())
    assert (len(s.users), s.n_items, len(s.items)) == (users, items, events)
    if name == "amazon-music":  # its README: 5,371 users have fewer than 3 interactions
        assert (s.role == TRAIN_ONLY).sum() == 5371


def test_a_file_name_with_glob_characters_is_that_file(tmp_path):
    """`events[1].csv` that exists is read as itself, not as the glob matching `events1.csv`; a pattern that
    names no file is a glob, and the number of files it matched is reported."""
    (tmp_path / "events1.csv").write_text("user_id,item_id,timestamp\nx,1,1\nx,2,2\nx,3,3\n")
    literal = tmp_path / "events[1].csv"
    literal.write_text(TWELVE)
    s = load(Data(source=str(literal)), Split(), Head(count=2))
    assert list(s.users) == ["a", "b", "c", "d"] and "files" not in s.describe()
    (tmp_path / "events2.csv").write_text("user_id,item_id,timestamp\ny,1,1\ny,2,2\ny,3,3\n")
    s = load(Data(source=str(tmp_path / "events?.csv")), Split(), Head(count=1))
    assert list(s.users) == ["x", "y"] and s.describe().startswith("2 files, 6 events")


def test_ids_are_text_even_when_they_look_like_numbers_for_thousands_of_rows(tmp_path):
    """DuckDB types a CSV column from a sample: ids numeric for 30,000 rows, then `u-17`, `00123`, `B000ABC`
    and `NA` must still load, leading zeros kept, in CSV and in Parquet alike."""
    rows = [f"{u},{i},{t}" for t, (u, i) in enumerate([(u, u % 50 + 1) for u in range(10000) for _ in range(3)])]
    rows += [
        "u-17,00123,40000",
        "u-17,B000ABC,40001",
        "u-17,NA,40002",
        "007,00123,40003",
        "007,0123,40004",
        "007,123,40005",
    ]
    csv = tmp_path / "ids.csv"
    csv.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    parquet = tmp_path / "ids.parquet"
    import duckdb

    duckdb.execute(f"COPY (SELECT * FROM read_csv('{csv}', all_varchar=true)) TO '{parquet}' (FORMAT parquet)")
    for path in (csv, parquet):
        s = load(Data(source=str(path)), Split(), Head())
        assert {"u-17", "007"} <= set(s.users)
        assert {"00123", "0123", "123", "B000ABC", "NA"} <= set(s.vocab)  # three ids, not one number
