"""The one exception type for mistakes the user can fix (exit code 2 at the CLI)."""


class UserError(Exception):
    """Bad input: a recipe, a data file, a bundle, a flag. The message is shown as is, without a traceback.

    Messages follow `where: what is wrong (what was expected; how to fix)`, e.g.
    `recipe.yaml: backbone.dimm: unknown key (did you mean 'dim'?)`.
    """

    exit_code = 2
    echo = True  # False on the ranks of a distributed run whose error rank 0 already prints


def optional(module: str, extra: str):
    """An optional dependency, imported; a UserError naming the extra that installs it if it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{module} is not installed; pip install 'ltrec[{extra}]'") from None
