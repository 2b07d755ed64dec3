"""`ltrec init`: a commented starter recipe and the JSON Schema beside it."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .recipe import recipe_schema
from .runs import atomic_write

TEMPLATE = """\
# yaml-language-server: $schema=recipe.schema.json
# Train:    ltrec train {recipe}
# Evaluate: ltrec eval runs/{name} --slice tail
# Every key with its default and meaning: recipe.schema.json beside this file (or `ltrec schema`).
name: {name}
seed: 0
data:
  source: {source}   # a file or glob: CSV, Parquet or JSON
  columns: {{user: user_id, item: item_id, time: timestamp}}
  # query: SELECT * FROM source WHERE rating >= 4   # optional SQL over the table `source`
  max_len: 50          # the model sees each user's last 50 events
split:
  short_users: train   # users with < 3 events: train only (or `drop`)
  cold_users: 0.0      # fraction of users held out of training entirely: the `cold` slice
head:
  fraction: 0.2        # the most active 20% of users, by training events, are "head"
backbone:
  kind: sasrec         # sasrec | gru4rec | caser | narm | bert4rec | pop
  dim: 64
  layers: 2
  heads: 2
  dropout: 0.2
transfer:              # the paper's components; null turns one off
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
"""


def write_starter(directory: Path, source: str, name: str, force: bool, epochs: int = 20) -> Path:
    recipe = directory / "recipe.yaml"
    schema = directory / "recipe.schema.json"
    existing = [str(p) for p in (recipe, schema) if p.exists()]
    if existing and not force:
        raise UserError(f"{', '.join(existing)}: already exists; pass --force to overwrite")
    directory.mkdir(parents=True, exist_ok=True)
    text = TEMPLATE.format(recipe=recipe, name=name, source=json.dumps(source), epochs=epochs)
    atomic_write(schema, json.dumps(recipe_schema(), indent=2) + "\n")
    atomic_write(recipe, text)
    return recipe
