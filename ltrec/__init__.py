"""ltrec: transferable sequential recommenders for long-tailed users (Yin et al., KDD 2020).

The Python API (docs/api.md) is loaded on first use, so `import ltrec` imports neither torch nor onnxruntime:
`ltrec.train(...)`, `ltrec.Run.open(...)`, `ltrec.compare(...)`, `ltrec.Bundle.open(...)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ltrec.files.version import __version__

_WHERE = {
    "load_recipe": "ltrec.api",
    "train": "ltrec.api",
    "compare": "ltrec.api",
    "sweep": "ltrec.api",
    "Run": "ltrec.api",
    "Evaluation": "ltrec.api",
    "Comparison": "ltrec.api",
    "SweepResult": "ltrec.api",
    "Recipe": "ltrec.recipe",
    "UserError": "ltrec.files.errors",
    "Bundle": "ltrec.deploy.recommend",
    "Recommendations": "ltrec.deploy.recommend",
}
__all__ = [
    "Bundle",
    "Comparison",
    "Evaluation",
    "Recipe",
    "Recommendations",
    "Run",
    "SweepResult",
    "UserError",
    "__version__",
    "compare",
    "load_recipe",
    "sweep",
    "train",
]

if TYPE_CHECKING:
    from ltrec.api import Comparison, Evaluation, Run, SweepResult, compare, load_recipe, sweep, train
    from ltrec.deploy.recommend import Bundle, Recommendations
    from ltrec.files.errors import UserError
    from ltrec.recipe import Recipe


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ltrec' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
