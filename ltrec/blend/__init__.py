"""Score blends added per history length: the popularity prior and the item-to-item transitions, their
fitted weights and settings, saved beside the run, and the one scoring function that evaluation and the
exported graph both call.

May import files and torch; evaluation (which fits the weights on validation) and deploy stand on it.
"""
