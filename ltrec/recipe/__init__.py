"""The recipe language: pydantic models that are the YAML schema (`sections`, `backbones`, `transfer`), and
`load_recipe` (`load`). Defaults live here and nowhere else. Unknown keys are errors. This package must not
import torch, so that `ltrec validate` and `ltrec --help` stay fast.
"""

from .base import IDENTIFIER, Strict
from .backbones import (BACKBONE_KINDS, Backbone, BERT4RecConfig, CaserConfig, GRU4RecConfig, NARMConfig, PopConfig,
                        SASRecConfig)
from .transfer import ROBUST_KINDS, Adversarial, Balanced, Contrastive, CVaR, GradAlign, GroupDRO, Transfer, UserBranch
from .load import (apply_overrides, dump_recipe, load_recipe, parse_override, parse_yaml, read_yaml, recipe_schema,
                   validate_dict)
from .sections import (Adapt, Columns, Data, Eval, Head, Monitor, Output, PopBlend, Recipe, Split, Train,
                       TransitionBlend)

__all__ = ["BACKBONE_KINDS", "ROBUST_KINDS", "IDENTIFIER", "Adapt", "Adversarial", "Backbone", "Balanced",
           "BERT4RecConfig", "CaserConfig", "Columns", "Contrastive", "CVaR", "Data", "Eval", "GradAlign", "GroupDRO",
           "GRU4RecConfig", "Head", "Monitor", "NARMConfig", "Output", "PopBlend", "PopConfig", "Recipe",
           "SASRecConfig", "Split", "Strict", "Train", "Transfer", "TransitionBlend", "UserBranch", "apply_overrides",
           "dump_recipe", "load_recipe", "parse_override", "parse_yaml", "read_yaml", "recipe_schema", "validate_dict"]
