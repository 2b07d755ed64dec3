"""`ltrec init`: a commented starter recipe and the JSON Schema beside it, for the example data or the user's
own events file, whose user / item / time columns are read from its header."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ltrec.files.errors import UserError
from ltrec.files.safe import atomic_write
from ltrec.recipe import IDENTIFIER, recipe_schema

TEMPLATE = """\
# yaml-language-server: $schema=recipe.schema.json
# Train:    ltrec train {recipe}
# Evaluate: ltrec eval runs/{name} --slice tail
# Every key with its default and meaning: recipe.schema.json beside this file (or `ltrec schema`).
name: {name}
seed: 0
data:
  source: {source}   # a file or glob: CSV, Parquet or JSON
  columns: {{user: {user}, item: {item}, time: {time}}}
  # query: SELECT * FROM source WHERE rating >= 4   # optional SQL over the table `source`
  max_len: 50          # the model sees each user's last 50 events
split:
  short_users: train   # users with < 3 events: train only (or `drop`)
  cold_users: 0.0      # fraction of users held out of training entirely: the `cold` slice
head:
  fraction: 0.2        # the most active 20% of users, by training events, are "head"
backbone:              # another kind: --set backbone.kind=gru4rec (its own defaults apply)
  kind: sasrec         # sasrec | gru4rec | caser | narm | bert4rec | ease | transitions | pop
  dim: 64
  layers: 2
  heads: 2
  dropout: 0.2
transfer:              # tail components; null turns one off (docs/recipes.md)
  grad_align: null     # e.g. {{k: 5, beta: 0.5}}
  adversarial: null    # e.g. {{weight: 0.1}}
train:
  epochs: {epochs}
  batch_size: 256
  lr: 1.0e-3
  patience: 5          # early stopping on validation ndcg@10, all users
  device: auto
eval:
  ks: [5, 10, 20]
  mask_seen: true      # the user's own history items are not ranked
  # ensemble: {{}}     # add popularity and where other users went next, per history length (docs/method.md)
"""

SWEEP = """\
# yaml-language-server: $schema=sweep.schema.json
# Does a tail method help on this data?  ltrec sweep {plan} --jobs 2
# Every arm trains at every seed; where an arm has a grid, each combination trains at the first seed and the
# one best on the validation split runs at every seed. The table compares each arm with the baseline per slice.
recipe: recipe.yaml
set: [train.epochs={epochs}]
seeds: [0, 1, 2]
baseline: plain
arms:
  - name: plain                 # the control, its learning rate chosen on validation
    grid: {{train.lr: [1.0e-3, 2.0e-3]}}
  # every method at the control's chosen learning rate (at_baseline), so a gain is not a better lr
  - name: cvar                  # weigh the batch's worst-served users more
    at_baseline: true
    set: ["transfer.robust={{kind: cvar, alpha: 0.5, mix: 0.5}}"]
  - name: group-dro             # weigh the worse history-length groups more
    at_baseline: true
    set: ["transfer.robust={{kind: group_dro, step: 0.01}}"]
  - name: ensemble              # add popularity and transitions to the scores, per history length, fitted on valid
    at_baseline: true
    set: ["eval.ensemble={{}}"]
  - name: balanced              # weigh every user alike, as the test metrics do
    at_baseline: true
    set: ["transfer.robust={{kind: balanced, power: 1.0}}"]
  - name: user-branch           # map short histories' states toward long ones'
    at_baseline: true
    set: ["transfer.user_branch={{weight: 0.1}}"]
  - name: contrastive           # pull together states that lead to the same item
    at_baseline: true
    set: ["transfer.contrastive={{weight: 0.1}}"]
  - name: ga-at                 # the paper's two components
    at_baseline: true
    set: ["transfer.grad_align={{k: 5, beta: 0.5}}", "transfer.adversarial={{weight: 0.1}}"]
"""

# common column names, compared lower-case without punctuation (customer_id, CustomerID → customerid)
NAMES = {
    "user": {
        "user",
        "userid",
        "uid",
        "users",
        "customer",
        "customerid",
        "visitor",
        "visitorid",
        "member",
        "memberid",
        "client",
        "clientid",
        "account",
        "accountid",
        "reviewer",
        "reviewerid",
        "person",
    },
    "item": {
        "item",
        "itemid",
        "iid",
        "items",
        "product",
        "productid",
        "movie",
        "movieid",
        "track",
        "trackid",
        "song",
        "songid",
        "article",
        "articleid",
        "sku",
        "asin",
        "business",
        "businessid",
        "video",
        "videoid",
        "book",
        "bookid",
        "artist",
        "artistid",
        "poi",
        "content",
        "contentid",
    },
    "time": {
        "time",
        "timestamp",
        "ts",
        "date",
        "datetime",
        "eventtime",
        "createdat",
        "unixtime",
        "when",
        "eventtimestamp",
        "timestampunix",
        "t",
        "epoch",
    },
}


def guess_columns(names: list[str], given: dict[str, str | None], where: str) -> dict[str, str]:
    """The user / item / time columns among a file's header `names`: `given` ones first, then by name.
    Every role that cannot be decided is named in one error, with the header and the flag that settles it."""
    out, problems = {}, []
    for role in ("user", "item", "time"):
        if given.get(role):
            if given[role] not in names:
                problems.append(f"--{role}-col {given[role]}: no such column")
            out[role] = given[role]
            continue
        found = [n for n in names if re.sub(r"[^a-z0-9]", "", n.lower()) in NAMES[role]]
        if len(found) == 1:
            out[role] = found[0]
        else:
            why = "several fit: " + ", ".join(found) if found else "none of the usual names"
            problems.append(f"cannot tell the {role} column ({why}); pass --{role}-col NAME")
    bad = [n for n in out.values() if not IDENTIFIER.match(n)]
    if bad:
        problems.append(f"column {bad[0]!r} is not a plain name (letters, digits, _); rename it in the file")
    if problems:
        raise UserError("\n".join(f"{where}: {p} (columns: {', '.join(names)})" for p in problems))
    return out


def write_sweep(directory: Path, force: bool, epochs: int = 20) -> Path:
    """DIRECTORY/sweep.yaml (+ its schema): plain training against the tail methods, on the recipe beside it."""
    from ltrec.sweep import plan_schema

    plan = directory / "sweep.yaml"
    if plan.exists() and not force:
        raise UserError(f"{plan}: already exists; pass --force to overwrite")
    atomic_write(directory / "sweep.schema.json", json.dumps(plan_schema(), indent=2) + "\n")
    atomic_write(plan, SWEEP.format(plan=plan, epochs=epochs))
    return plan


def init_project(
    directory: Path, data: str | None, source: str, force: bool, columns: dict[str, str | None] | None = None
) -> tuple[Path, Path]:
    """Write DIRECTORY/recipe.yaml (+ its schema) for `data` or the MovieLens-100K example; returns
    (recipe path, data path)."""
    from ltrec.data.example import fetch_movielens_100k

    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory}: is a file, not a folder; give a folder for the recipe")
    if any(p.exists() and not p.is_dir() for p in directory.parents):
        raise UserError(f"{directory}: a part of this path is a file, not a folder; give a folder for the recipe")
    if (directory / "recipe.yaml").exists() and not force:
        raise UserError(f"{directory / 'recipe.yaml'}: already exists; pass --force to overwrite")
    if data is None:
        try:
            path, name = fetch_movielens_100k(source), "ml100k-sasrec"
        except UserError as exc:
            raise UserError(f"{exc}\nTo use your own events instead: ltrec init --data my.csv") from None
        cols = {"user": "user_id", "item": "item_id", "time": "timestamp"}
    else:
        path, name = Path(data), "my-sasrec"
        if not path.is_file():
            raise UserError(f"--data: {data}: no such file")
        from ltrec.data.read import read_header

        cols = guess_columns(read_header(path, "--data"), columns or {}, f"--data {data}")
    return write_starter(directory, str(path.resolve()), name, force, cols), path


def write_starter(
    directory: Path, source: str, name: str, force: bool, columns: dict[str, str], epochs: int = 20
) -> Path:
    recipe = directory / "recipe.yaml"
    schema = directory / "recipe.schema.json"
    existing = [str(p) for p in (recipe, schema) if p.exists()]
    if existing and not force:
        raise UserError(f"{', '.join(existing)}: already exists; pass --force to overwrite")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{directory}: cannot create the folder ({exc.strerror})") from None
    text = TEMPLATE.format(recipe=recipe, name=name, source=json.dumps(source), epochs=epochs, **columns)
    atomic_write(schema, json.dumps(recipe_schema(), indent=2) + "\n")
    atomic_write(recipe, text)
    return recipe
