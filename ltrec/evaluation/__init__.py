"""Full-ranking evaluation by slice: the ranking engine (`engine`), ranks and sampled negatives (`ranks`),
per-user metrics and the paired test (`metrics`), fitting the ensemble on validation (`fit`), a run's evaluation
as `ltrec eval` runs it (`run`), and reading results back (`compare`, `report`).

May import files, recipe, data, models, runtime and ensemble. `metrics`, `compare` and `report` are numpy-only
and never import torch (a test holds them to it).
"""
