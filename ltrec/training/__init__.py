"""Training a recipe: the loop with validation and early stopping (`loop`), the end of training (`finish`),
user and window sampling (`sampling`) and the tail components (`transfer`); one code path for one process
and for torchrun.

May import everything below it: files, recipe, data, models, runtime, ensemble and evaluation.
"""
