# %% [markdown]
# # ltrec from a notebook
# From a DataFrame to tail metrics to a bundle's recommendations, with the Python API (docs/api.md).
# Run it as a script (`python examples/notebook.py`) or cell by cell in an editor that reads `# %%`.
# `LTREC_EXAMPLE_EPOCHS` shortens training and `LTREC_EXAMPLE_DATA` names a local copy of the events (the test
# that runs this file sets both).

# %%
import os

import pandas as pd

import ltrec
from ltrec.data.example import fetch_movielens_100k

# MovieLens-100K, the data `ltrec init` uses (fetched once into a user cache)
events = pd.read_csv(os.environ.get("LTREC_EXAMPLE_DATA") or fetch_movielens_100k())
events = events[events["rating"] >= 4]  # any DataFrame: here, only the items a user liked
print(f"{len(events):,} events, {events['user_id'].nunique():,} users")

# %% [markdown]
# Train a recipe given as a dict (a YAML file works too), with the DataFrame as its data.

# %%
recipe = {
    "name": "notebook-sasrec",
    "data": {"max_len": 50},
    "backbone": {"kind": "sasrec", "dim": 32, "layers": 1, "heads": 1},
    "train": {"epochs": int(os.environ.get("LTREC_EXAMPLE_EPOCHS", "10")), "patience": 3},
    "eval": {"ensemble": {"members": [{"kind": "pop"}, {"kind": "transitions"}]}},
}
run = ltrec.train(recipe, data=events, overwrite=True)
print(run.path, run.metrics["best_epoch"])

# %% [markdown]
# Test metrics by slice: the tail is the 80% of users with the fewest training events.

# %%
evaluation = run.evaluate(slices=["all", "head", "tail"])
print(evaluation.protocol)
print(evaluation.to_pandas()[["users", "ndcg@10", "hr@10"]])

# %% [markdown]
# Export to ONNX and ask the bundle for recommendations (onnxruntime only, no torch).

# %%
bundle = run.export()
recommendations = bundle.recommend({"new-user": ["50", "181", "100"], "unknown-items": ["no-such-item"]}, k=5)
print(recommendations.to_pandas())
