"""The recipe language: exact error messages, overrides, shipped recipes, schema, no torch on import."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from ltrec.files.errors import UserError
from ltrec.recipe import dump_recipe, load_recipe, parse_override, recipe_schema

ROOT = Path(__file__).resolve().parents[1]
BASE = {"name": "t", "data": {"source": "events.csv"}, "backbone": {"kind": "sasrec"}}
KINDS = "gru4rec, sasrec, pop, caser, narm, bert4rec"


def write(tmp_path, body) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    return path


def patch(**sections):
    raw = json.loads(json.dumps(BASE))
    for key, value in sections.items():
        raw[key] = value if not isinstance(value, dict) or key not in raw else {**raw[key], **value}
    return raw


BAD = [
    (patch(backbone={"kind": "sasrec", "dimm": 64}), "backbone.dimm: unknown key (did you mean 'dim'?)"),
    (patch(trian={}), "trian: unknown key (did you mean 'train'?)"),
    (patch(backbone={"kind": "bert"}), f"backbone.kind: unknown kind; expected one of {KINDS}"),
    ({**BASE, "backbone": {"dim": 64}}, f"backbone.kind: required key is missing; expected one of {KINDS}"),
    (patch(backbone={"kind": "sasrec", "dim": 63, "heads": 2}), "backbone: dim (63) must be divisible by heads (2)"),
    (patch(backbone={"kind": "bert4rec", "dim": 63, "heads": 2}), "backbone: dim (63) must be divisible by heads (2)"),
    (patch(backbone={"kind": "bert4rec", "mask_prob": 0}), "backbone.mask_prob: Input should be greater than 0"),
    (patch(backbone={"kind": "caser", "window": 0}), "backbone.window: Input should be greater than or equal to 1"),
    (
        patch(backbone={"kind": "caser", "window": 8}, data={"source": "x.csv", "max_len": 5}),
        "backbone.window: 8 is longer than data.max_len (5), the most items the model ever sees; lower it",
    ),
    (patch(backbone={"kind": "narm", "heads": 2}), "backbone.heads: unknown key"),
    (
        patch(data={"source": "x.csv", "max_len": 5, "stride": 6}),
        "data: stride (6) is more than max_len (5); windows would skip events: use at most max_len (or null)",
    ),
    (patch(data={"source": "x.csv", "stride": 0}), "data.stride: Input should be greater than or equal to 1 (got 0)"),
    (patch(train={"epochs": 0}), "train.epochs: Input should be greater than or equal to 1 (got 0)"),
    (patch(train={"lr": "fast"}), "train.lr: Input should be a valid number (got 'fast')"),
    (patch(head={"fraction": 1.5}), "head.fraction: Input should be less than 1 (got 1.5)"),
    (patch(head={"fraction": 0.2, "count": 5}), "head: give exactly one of head.fraction and head.count"),
    (
        patch(transfer={"grad_align": {"k": 0}}),
        "transfer.grad_align.k: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        patch(transfer={"grad_align": {"beta": 1.5}}),
        "transfer.grad_align.beta: Input should be less than or equal to 1 (got 1.5)",
    ),
    (
        patch(transfer={"grad_align": {"users_per_step": 1}}),  # ignored by the default sampling: say so
        "transfer.grad_align: transfer.grad_align.users_per_step applies to sampling: permuted, uniform, events or "
        "balanced",
    ),
    (
        patch(transfer={"adversarial": {"state": "newest"}}),
        "transfer.adversarial.state: Input should be 'last' or 'matched'",
    ),
    (
        patch(data={"source": "x.csv", "columns": {"user": "u; DROP TABLE t"}}),
        "data.columns.user: 'u; DROP TABLE t' is not a plain column name",
    ),
    (patch(data={"source": "x.csv", "columns": {"item": 'i" OR 1=1 --'}}), "data.columns.item: "),
    (patch(data={"source": "x.csv", "max_len": -1}), "data.max_len: Input should be greater than or equal to 1"),
    ({"name": "t", "backbone": {"kind": "pop"}}, "data: required key is missing"),
    (patch(train={"monitor": {"metric": "auc"}}), "train.monitor.metric: String should match pattern"),
    (patch(name="bad name/"), "name: String should match pattern"),
]


@pytest.mark.parametrize("raw, message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_recipes_name_file_and_key(tmp_path, raw, message):
    path = write(tmp_path, raw)
    with pytest.raises(UserError) as err:
        load_recipe(path)
    assert f"{path}: {message}" in str(err.value)


def test_all_problems_reported_at_once(tmp_path):
    path = write(tmp_path, patch(backbone={"kind": "gru4rec", "dimm": 1}, train={"epochs": 0, "lr": -1}))
    lines = str(pytest.raises(UserError, load_recipe, path).value).splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{path}: ") for line in lines)


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: [unclosed\n", "line 2: invalid YAML"),
        ("!!python/object/apply:os.system ['echo hi']\n", "invalid YAML: could not determine a constructor"),
        ("- a\n- b\n", "a recipe must be a mapping of sections, got list"),
        ("", "the recipe is empty"),
    ],
)
def test_yaml_problems(tmp_path, text, message):
    path = write(tmp_path, text)
    assert message in str(pytest.raises(UserError, load_recipe, path).value)


def test_missing_file(tmp_path):
    assert "no such recipe file" in str(pytest.raises(UserError, load_recipe, tmp_path / "nope.yaml").value)


def test_overrides(tmp_path):
    path = write(tmp_path, BASE)
    r = load_recipe(path, ["train.epochs=3", "backbone={kind: gru4rec, dim: 8}", "head.count=4", "seed=7"])
    assert (r.train.epochs, r.backbone.kind, r.backbone.dim, r.head.count, r.head.fraction, r.seed) == (
        3,
        "gru4rec",
        8,
        4,
        None,
        7,
    )
    assert r.train.lr == 1.0e-3 and r.eval.mask_seen is True  # documented defaults
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    for bad in ("noequals", "a..b=1", "a.b-c=2", "=3"):
        with pytest.raises(UserError, match="expected KEY=VALUE"):
            parse_override(bad)


SHIPPED = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema=../schemas/recipe.schema.json")
    assert f"# ltrec train recipes/{path.name}" in text
    jsonschema.validate(yaml.safe_load(text), recipe_schema())
    assert recipe.name == path.stem


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_resolved_recipe_loads_again(path, tmp_path):
    """A run directory keeps its recipe with every key resolved; eval, export and resume load that file."""
    recipe = load_recipe(path)
    saved = tmp_path / "recipe.yaml"
    saved.write_text(dump_recipe(recipe))
    assert load_recipe(saved).model_dump() == recipe.model_dump()


def test_committed_schemas_are_fresh():
    from ltrec.sweep import plan_schema

    committed = json.loads((ROOT / "schemas" / "recipe.schema.json").read_text())
    assert committed == recipe_schema(), "run `ltrec schema` and commit schemas/recipe.schema.json"
    committed = json.loads((ROOT / "schemas" / "sweep.schema.json").read_text())
    assert committed == plan_schema(), "run `ltrec schema --sweep` and commit schemas/sweep.schema.json"


def test_the_reading_side_imports_without_torch():
    """validate, predict, compare and report answer without loading torch (seconds on a busy machine)."""
    code = (
        "import sys, ltrec.cli, ltrec.recipe, ltrec.deploy.predict, ltrec.evaluation.compare, "
        "ltrec.evaluation.report, ltrec.deploy.bundle, ltrec.evaluation.metrics, ltrec.files.runs, ltrec.files.safe, "
        "ltrec.data, ltrec.sweep; ltrec.cli.app; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("backbone.dim", "1000000000", "backbone.dim: Input should be less than or equal to 4096"),
        ("backbone.layers", "500", "backbone.layers: Input should be less than or equal to 64"),
        ("train.threads", "1000000", "train.threads: Input should be less than or equal to 1024"),
        ("train.negatives", "100000000", "train.negatives: Input should be less than or equal to 100000"),
        ("train.batch_size", "10000000000", "train.batch_size: Input should be less than or equal to 1000000"),
        ("split.seed", "-1", "split.seed: Input should be greater than or equal to 0"),
        ("eval.ks", "[5, 1000000]", "eval.ks.1: Input should be less than or equal to 100000"),
    ],
)
def test_values_that_cannot_run_are_refused_with_their_limit(tmp_path, key, value, message):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE))
    with pytest.raises(UserError, match=re.escape(message)):
        load_recipe(path, [f"{key}={value}"])


def test_switching_the_backbone_kind_drops_the_keys_it_does_not_have(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**BASE, "backbone": {"kind": "sasrec", "dim": 32, "heads": 4, "layers": 2}}))
    recipe = load_recipe(path, ["backbone.kind=gru4rec"])
    assert recipe.backbone.kind == "gru4rec" and recipe.backbone.dim == 32 and recipe.backbone.layers == 2
    assert recipe.notes == ["note: backbone.kind gru4rec: the recipe's heads does not apply to gru4rec and is left out"]
    with pytest.raises(UserError, match="backbone.heads: unknown key"):  # asked for explicitly: still an error
        load_recipe(path, ["backbone.kind=gru4rec", "backbone.heads=2"])
