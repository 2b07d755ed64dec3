"""The ensemble (`eval.ensemble`): the run's model plus fitted item-to-item members (popularity, transitions,
EASE) and other finished runs' models (`runs`), each standardised per user and weighted per history-length
bucket; the one scoring function that evaluation and the exported graph both call (`scores.combine`), the
coordinate ascent that fits the weights on validation (`fit`), and the fitted file saved beside the run
(`records`).

May import models, runtime, files and recipe; evaluation and deploy stand on it. This `__init__` imports
nothing, so predict and serve read `records` (numpy and pydantic only) without loading torch.
"""
