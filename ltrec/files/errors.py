"""The one exception type for mistakes the user can fix (exit code 2 at the CLI)."""


class UserError(Exception):
    """Bad input: a recipe, a data file, a bundle, a flag. The message is shown as is, without a traceback.

    Messages follow `where: what is wrong (what was expected; how to fix)`, e.g.
    `recipe.yaml: backbone.dimm: unknown key (did you mean 'dim'?)`.
    """

    exit_code = 2
    echo = True  # False on the ranks of a distributed run whose error rank 0 already prints
