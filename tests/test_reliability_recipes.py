"""Bad recipes, through the real CLI: `ltrec validate` and `ltrec train` both exit 2 with one line that names
the file and the key (or the YAML line), and never print a traceback.

The catalogue complements tests/test_recipe.py (which checks the loader's exact messages for its own cases):
none of its cases is repeated here. docs/reliability.md lists what is rejected and how.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from ltrec.cli import app

runner = CliRunner()
EVENTS = "user_id,item_id,timestamp\n" + "".join(f"u{u},{i},{u + i}\n" for u in range(4) for i in range(1, 6))
BASE = {
    "name": "t",
    "data": {"source": "events.csv"},
    "backbone": {"kind": "gru4rec", "dim": 8},
    "train": {"epochs": 1},
}


def patch(*drop: str, **sections) -> str:
    """BASE with sections merged in (a non-dict value replaces the section), minus the `drop`ped ones."""
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in sections.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    for key in drop:
        raw.pop(key)
    return yaml.safe_dump(raw, sort_keys=False)


def text(body: str) -> str:
    return "name: t\ndata: {source: events.csv}\nbackbone: {kind: gru4rec, dim: 8}\n" + body


def aliases(levels: int) -> str:
    """A 'billion laughs' YAML: 10**levels list items through aliases, in a key that expects a string."""
    lists = ["&l0 [x, x, x, x, x, x, x, x, x, x]"]
    lists += [f"&l{n} [" + ", ".join([f"*l{n - 1}"] * 10) + "]" for n in range(1, levels + 1)]
    return f"name: t\ndata: {{source: events.csv, query: [{', '.join(lists)}]}}\nbackbone: {{kind: pop}}\n"


# (id, recipe text, what follows "recipe.yaml: " on the one output line)
CASES = [
    # wrong types
    ("epochs-word", patch(train={"epochs": "many"}), "train.epochs: Input should be a valid integer (got 'many')"),
    ("epochs-bool", patch(train={"epochs": True}), "train.epochs: Input should be a valid integer (got True)"),
    ("epochs-quoted", patch(train={"epochs": "3"}), "train.epochs: Input should be a valid integer (got '3')"),
    ("batch-fraction", patch(train={"batch_size": 2.5}), "train.batch_size: Input should be a valid integer (got 2.5)"),
    ("ks-scalar", patch(eval={"ks": 10}), "eval.ks: Input should be a valid list (got 10)"),
    ("ks-word", patch(eval={"ks": [5, "ten"]}), "eval.ks.1: Input should be a valid integer (got 'ten')"),
    (
        "backbone-string",
        patch(backbone="sasrec"),
        "backbone: Input should be a valid dictionary or object to extract fields from (got 'sasrec')",
    ),
    ("mask-seen-int", patch(eval={"mask_seen": 1}), "eval.mask_seen: Input should be a valid boolean (got 1)"),
    (
        "source-list",
        patch(data={"source": ["a.csv", "b.csv"]}),
        "data.source: Input should be a valid string (got a list)",
    ),
    (
        "name-date",
        text("").replace("name: t", "name: 2020-01-01"),
        "name: Input should be a valid string (got datetime.date(2020, 1, 1))",
    ),
    ("train-list", patch(train=[1, 2]), "train: Input should be a valid dictionary or instance of Train (got a list)"),
    ("data-null", patch(data=None), "data: Input should be a valid dictionary or instance of Data (got None)"),
    ("loss-unknown", patch(train={"loss": "mse"}), "train.loss: Input should be 'ce', 'bce' or 'sampled' (got 'mse')"),
    (
        "format-unknown",
        patch(data={"format": "xlsx"}),
        "data.format: Input should be 'auto', 'csv', 'parquet' or 'json' (got 'xlsx')",
    ),
    # unknown keys
    ("top-level-epochs", patch(epochs=5), "epochs: unknown key"),
    ("colums", patch(data={"colums": {"user": "u"}}), "data.colums: unknown key (did you mean 'columns'?)"),
    (
        "betta",
        patch(transfer={"grad_align": {"betta": 0.5}}),
        "transfer.grad_align.betta: unknown key (did you mean 'beta'?)",
    ),
    ("heads-on-gru", patch(backbone={"heads": 2}), "backbone.heads: unknown key"),
    ("eval-k", patch(eval={"k": 10}), "eval.k: unknown key (did you mean 'ks'?)"),
    # missing sections and keys
    ("no-backbone", patch("backbone"), "backbone: required key is missing"),
    (
        "no-source",
        patch(data={"max_len": 10, "source": None}).replace("  source: null\n", ""),
        "data.source: required key is missing",
    ),
    ("no-name", patch("name"), "name: required key is missing"),
    # negative or zero sizes
    ("dim-negative", patch(backbone={"dim": -8}), "backbone.dim: Input should be greater than or equal to 1 (got -8)"),
    (
        "batch-zero",
        patch(train={"batch_size": 0}),
        "train.batch_size: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        "max-len-huge",
        patch(data={"max_len": 5000}),
        "data.max_len: Input should be less than or equal to 4096 (got 5000)",
    ),
    ("layers-negative", patch(backbone={"layers": -1}), "backbone.layers: Input should be greater than or equal to 1"),
    ("ks-negative", patch(eval={"ks": [10, -5]}), "eval.ks.1: Input should be greater than or equal to 1 (got -5)"),
    ("ks-empty", patch(eval={"ks": []}), "eval.ks: List should have at least 1 item after validation, not 0"),
    (
        "hidden-negative",
        patch(transfer={"adversarial": {"hidden": -1}}),
        "transfer.adversarial.hidden: Input should be greater than or equal to 0 (got -1)",
    ),
    ("negatives-zero", patch(eval={"negatives": 0}), "eval.negatives: Input should be greater than or equal to 1"),
    (
        "min-events-zero",
        patch(data={"min_user_events": 0}),
        "data.min_user_events: Input should be greater than or equal to 1 (got 0)",
    ),
    # a model that cannot be built
    (
        "heads-do-not-divide",
        patch(backbone={"kind": "sasrec", "dim": 50, "heads": 4}),
        "backbone: dim (50) must be divisible by heads (4)",
    ),
    ("dropout-one", patch(backbone={"dropout": 1.0}), "backbone.dropout: Input should be less than 1 (got 1.0)"),
    # head fraction outside (0, 1)
    ("fraction-zero", patch(head={"fraction": 0}), "head.fraction: Input should be greater than 0"),
    ("fraction-one", patch(head={"fraction": 1.0}), "head.fraction: Input should be less than 1 (got 1.0)"),
    ("fraction-negative", patch(head={"fraction": -0.2}), "head.fraction: Input should be greater than 0 (got -0.2)"),
    # k < 1, beta outside (0, 1]
    (
        "k-negative",
        patch(transfer={"grad_align": {"k": -3}}),
        "transfer.grad_align.k: Input should be greater than or equal to 1 (got -3)",
    ),
    (
        "beta-zero",
        patch(transfer={"grad_align": {"beta": 0.0}}),
        "transfer.grad_align.beta: Input should be greater than 0 (got 0.0)",
    ),
    (
        "beta-above-one",
        patch(transfer={"grad_align": {"beta": 1.01}}),
        "transfer.grad_align.beta: Input should be less than or equal to 1 (got 1.01)",
    ),
    (
        "beta-nan",
        text("transfer: {grad_align: {beta: .nan}}\n"),
        "transfer.grad_align.beta: Input should be a finite number (got nan)",
    ),
    # other numbers
    ("lr-inf", text("train: {lr: .inf}\n"), "train.lr: Input should be a finite number (got inf)"),
    ("lr-zero", patch(train={"lr": 0}), "train.lr: Input should be greater than 0"),
    ("seed-negative", patch(seed=-1), "seed: Input should be greater than or equal to 0 (got -1)"),
    ("seed-huge", patch(seed=2**70), "seed: Input should be less than or equal to 4294967295"),
    (
        "monitor-not-evaluated",
        patch(train={"monitor": {"metric": "ndcg@50"}}),
        "train.monitor.metric: ndcg@50 needs 50 in eval.ks (which is [5, 10, 20])",
    ),
    ("cold-all", patch(split={"cold_users": 1.0}), "split.cold_users: Input should be less than 1 (got 1.0)"),
    (
        "chains-bert4rec",
        patch(backbone={"kind": "bert4rec", "dim": 8}, transfer={"grad_align": {"chains": 2}}),
        "transfer.grad_align.chains: bert4rec trains with its cloze objective",
    ),
    (
        "adapt-bert4rec",
        patch(backbone={"kind": "bert4rec", "dim": 8}, eval={"adapt": {"steps": 1}}),
        "eval.adapt: adaptation takes next-item steps",
    ),
    (
        "users-sampling-with-ga",
        patch(train={"sampling": "users"}, transfer={"grad_align": {}}),
        "train.sampling: users applies to plain training",
    ),
    ("users-sampling-typo", patch(train={"sampling": "user"}), "train.sampling: Input should be 'windows' or 'users'"),
    ("adapt-zero-steps", patch(eval={"adapt": {"steps": 0}}), "eval.adapt.steps: Input should be greater than"),
    ("name-path", patch(name="../elsewhere"), "name: String should match pattern"),
    # the data source
    # (train makes the source absolute; validate shows it as written)
    ("source-missing", patch(data={"source": "nope.csv"}), ("data.source: ", "nope.csv: no such file")),
    (
        "glob-matches-nothing",
        patch(data={"source": "logs/*.parquet"}),
        ("data.source: no file matches '", "logs/*.parquet'"),
    ),
    ("source-directory", patch(data={"source": "."}), ("data.source: ", ": no such file")),
    (
        "column-not-identifier",
        patch(data={"columns": {"user": "user id"}}),
        "data.columns.user: 'user id' is not a plain column name",
    ),
    ("sql-syntax", patch(data={"query": "SELEC * FROM source"}), "data.query: the query failed: Parser Error"),
    (
        "sql-unknown-column",
        patch(data={"query": "SELECT * FROM source WHERE rating > 3"}),
        "data.query: the query failed: Binder Error",
    ),
    (
        "sql-reads-a-file",
        patch(data={"query": "SELECT * FROM read_csv('events.csv')"}),
        "data.query: the query failed: Permission Error",
    ),
    (
        "sql-writes-a-file",
        patch(data={"query": "COPY source TO 'stolen.csv'"}),
        "data.query: the query failed: Permission Error",
    ),
    # YAML itself
    ("yaml-unclosed", text("train: {epochs: [1\n"), "line 5: invalid YAML: expected ',' or ']'"),
    ("yaml-tab", "name: t\n\tdata: 1\n", "line 2: invalid YAML: found character '\\t' that cannot start any token"),
    (
        "yaml-python-object",
        text("eval: !!python/object:collections.OrderedDict {}\n"),
        "line 4: invalid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object:collections.OrderedDict'",
    ),
    (
        "yaml-python-name",
        text("seed: !!python/name:os.system\n"),
        "line 4: invalid YAML: could not determine a constructor for the tag",
    ),
    (
        "yaml-duplicate-key",
        text("train: {epochs: 1}\ntrain: {epochs: 9}\n"),
        "line 5: invalid YAML: duplicate key 'train'",
    ),
    ("yaml-bad-date", text("seed: 2020-13-45\n"), "invalid YAML: month must be in 1..12"),
    ("yaml-too-deep", "name: " + "[" * 500 + "]" * 500 + "\n", "invalid YAML: nested too deeply"),
    ("yaml-alias-bomb", aliases(8), "data.query: Input should be a valid string (got a list)"),
    ("yaml-not-a-mapping", "just a sentence\n", "a recipe must be a mapping of sections, got str"),
]


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "events.csv").write_text(EVENTS)
    return tmp_path


def one_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # handled, not raised
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_the_catalogue_is_big_enough():
    assert len(CASES) >= 30
    assert len({case[0] for case in CASES}) == len(CASES)


# `train` reads a recipe with the same load_recipe as `validate`; it is run on the cases that reach the data
# (where it differs: it makes the source absolute and loads the events) and on one case of each other kind
TRAIN = {
    "epochs-word",
    "ks-scalar",
    "top-level-epochs",
    "no-backbone",
    "dim-negative",
    "heads-do-not-divide",
    "fraction-zero",
    "beta-nan",
    "monitor-not-evaluated",
    "yaml-unclosed",
    "yaml-python-object",
    "yaml-duplicate-key",
    "yaml-bad-date",
}
RUNS = [(c[0], "validate") for c in CASES] + [
    (c[0], "train") for c in CASES if c[0] in TRAIN or c[0].startswith(("source-", "glob-", "column-", "sql-"))
]


@pytest.mark.parametrize("case, command", RUNS, ids=[f"{case}-{command}" for case, command in RUNS])
def test_bad_recipe(project, case, command):
    body, message = {c[0]: c[1:] for c in CASES}[case]
    (project / "recipe.yaml").write_text(body)
    line = one_line(runner.invoke(app, [command, "recipe.yaml"]))
    parts = message if isinstance(message, tuple) else (message,)
    assert line.startswith("recipe.yaml: " + parts[0]) and all(p in line for p in parts), line
    assert len(line) < 400, line
    assert not (project / "stolen.csv").exists()


def test_not_utf8(project):
    (project / "recipe.yaml").write_bytes(b"name: caf\xe9\n")
    line = one_line(runner.invoke(app, ["validate", "recipe.yaml"]))
    assert line.startswith("recipe.yaml: cannot read the recipe file ('utf-8' codec can't decode byte 0xe9")


def test_every_problem_of_a_file_one_line_each(project):
    (project / "recipe.yaml").write_text(patch(backbone={"dim": -1}, train={"epochs": 0}, eval={"k": 3}))
    r = runner.invoke(app, ["validate", "recipe.yaml"])
    assert r.exit_code == 2
    assert sorted(line.split(": ")[1] for line in r.output.strip().splitlines()) == [
        "backbone.dim",
        "eval.k",
        "train.epochs",
    ]


def test_real_process_prints_no_traceback(project):
    """The installed entry point, not CliRunner: stderr holds the one line, stdout nothing."""
    (project / "recipe.yaml").write_text(dict(c[:2] for c in CASES)["sql-syntax"])
    r = subprocess.run([sys.executable, "-m", "ltrec", "validate", "recipe.yaml"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert (
        r.stderr.startswith("recipe.yaml: data.query: the query failed: Parser Error") and "Traceback" not in r.stderr
    )
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_huge_file_is_refused_before_it_is_parsed(project):
    """A 5 MB recipe (one long YAML flow list) once took minutes and died of MemoryError in the parser: every
    parsed file is refused past its limit before a byte of it is parsed."""
    (project / "recipe.yaml").write_text("name: x\ndata: {source: [" + "1, " * 1_700_000 + "1]}\n")
    line = one_line(runner.invoke(app, ["validate", "recipe.yaml"]))
    assert (
        line
        == "recipe.yaml: the recipe file is larger than 1 MB, the most ltrec reads for one; is this the right file?"
    )
    (project / "plan.yaml").write_text("recipe: recipe.yaml\narms: [" + "{name: a}, " * 200_000 + "]\n")
    line = one_line(runner.invoke(app, ["sweep", "plan.yaml"]))
    assert line.startswith("plan.yaml: the sweep plan file is larger than 1 MB"), line
    from ltrec.files.errors import UserError
    from ltrec.files.safe import LIMITS, MB, read_bytes

    for what in ("run file", "bundle.json", "fitted file"):
        limit = next(v for k, v in LIMITS.items() if k in what)
        big = project / "big.json"
        with open(big, "wb") as f:
            f.truncate(limit + 1)  # sparse: costs no disk
        with pytest.raises(UserError, match=rf"the {what} is larger than {limit // MB} MB"):
            read_bytes(big, what)
