"""The recipe language: pydantic models that are the YAML schema (`sections`, `backbones`, `transfer`), and
`load_recipe` (`load`). Defaults live here and nowhere else. Unknown keys are errors. This package must not
import torch, so that `ltrec validate` and `ltrec --help` stay fast.
"""

from ltrec.recipe.backbones import (
    BACKBONE_KINDS,
    Backbone,
    BERT4RecConfig,
    CaserConfig,
    EASEConfig,
    GRU4RecConfig,
    NARMConfig,
    PopConfig,
    SASRecConfig,
    TransitionsConfig,
)
from ltrec.recipe.base import IDENTIFIER, Strict
from ltrec.recipe.components import (
    ROBUST_KINDS,
    Adversarial,
    Balanced,
    Contrastive,
    CVaR,
    GradAlign,
    GroupDRO,
    Transfer,
    UserBranch,
)
from ltrec.recipe.evaluation import Adapt, Ensemble, Eval
from ltrec.recipe.load import (
    apply_overrides,
    dump_recipe,
    load_recipe,
    parse_override,
    parse_yaml,
    read_yaml,
    recipe_schema,
    validate_dict,
)
from ltrec.recipe.sections import Columns, Data, Head, Monitor, Output, Recipe, Split, Train

__all__ = [
    "BACKBONE_KINDS",
    "ROBUST_KINDS",
    "IDENTIFIER",
    "Adapt",
    "Adversarial",
    "Backbone",
    "Balanced",
    "BERT4RecConfig",
    "CaserConfig",
    "Columns",
    "Contrastive",
    "CVaR",
    "Data",
    "Ensemble",
    "Eval",
    "GradAlign",
    "GroupDRO",
    "GRU4RecConfig",
    "Head",
    "Monitor",
    "NARMConfig",
    "Output",
    "PopConfig",
    "EASEConfig",
    "TransitionsConfig",
    "Recipe",
    "SASRecConfig",
    "Split",
    "Strict",
    "Train",
    "Transfer",
    "UserBranch",
    "apply_overrides",
    "dump_recipe",
    "load_recipe",
    "parse_override",
    "parse_yaml",
    "read_yaml",
    "recipe_schema",
    "validate_dict",
]
