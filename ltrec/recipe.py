"""The recipe language: pydantic models that are the YAML schema, and `load_recipe`.

Defaults live here and nowhere else. Unknown keys are errors. This module must not import torch, so that
`ltrec validate` and `ltrec --help` stay fast.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from .errors import UserError

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Strict(BaseModel):
    # strict: `epochs: true` or `epochs: "3"` is an error, not 1 or 3; numbers must be finite
    model_config = ConfigDict(extra="forbid", validate_default=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers_from_strings(cls, value: Any) -> Any:
        """PyYAML reads `1e-3` (no dot) as a string: a number key takes it as the number it spells."""
        if isinstance(value, dict):
            numbers = {n for n, f in cls.model_fields.items() if f.annotation in (float, float | None)}
            value = {k: _as_number(v) if k in numbers else v for k, v in value.items()}
        return value


def _as_number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _column_name(name: str) -> str:
    if not IDENTIFIER.match(name):
        raise ValueError(
            f"{name!r} is not a plain column name (letters, digits, _; not starting with a digit); "
            "rename the column in the file or select it under another name with data.query"
        )
    return name


ColumnName = Annotated[str, AfterValidator(_column_name)]


class Columns(Strict):
    """Which source columns hold the user, the item and the time of each event."""

    user: ColumnName = "user_id"
    item: ColumnName = "item_id"
    time: ColumnName = "timestamp"


class Data(Strict):
    """Where the events come from. Relative paths are resolved against the current directory."""

    source: str = Field(description="CSV / Parquet / JSON file or glob of files")
    format: Literal["auto", "csv", "parquet", "json"] = "auto"
    query: str | None = Field(
        None, description="optional SQL over the table `source` (e.g. `SELECT * FROM source WHERE rating >= 4`)"
    )
    columns: Columns = Columns()
    min_user_events: int = Field(1, ge=1, description="drop users with fewer events (one pass, before items)")
    min_item_events: int = Field(1, ge=1, description="drop items with fewer events (one pass, on the raw counts)")
    max_len: int = Field(50, ge=1, le=4096, description="history length the model sees")
    stride: int | None = Field(
        None, ge=1, description="step between a user's training windows (null = max_len: windows do not "
        "overlap). Smaller: windows overlap, each target is still trained once, in the newest window that has it "
        "among its newest `stride` positions, so every target but those of a user's oldest window sees at least "
        "max_len − stride items before it (more windows per epoch; what long histories need)")

    @model_validator(mode="after")
    def _stride_fits(self) -> "Data":
        if self.stride is not None and self.stride > self.max_len:
            raise ValueError(f"stride ({self.stride}) is more than max_len ({self.max_len}); windows would "
                             "skip events: use at most max_len (or null)")
        return self


class Head(Strict):
    """Head users are the most active ones, by number of *training* events. Give `fraction` or `count`."""

    fraction: float | None = Field(0.2, gt=0, lt=1, description="share of users that are head (at most)")
    count: int | None = Field(None, ge=1, description="head = users with at least this many training events")

    @model_validator(mode="before")
    @classmethod
    def _one_of(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("count") is not None and "fraction" not in value:
            value = {**value, "fraction": None}
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> "Head":
        if (self.fraction is None) == (self.count is None):
            raise ValueError("give exactly one of head.fraction and head.count")
        return self


class Split(Strict):
    """Chronological leave-one-out: last event = test, second-to-last = validation, the rest trains."""

    short_users: Literal["train", "drop"] = Field(
        "train", description="users with < 3 events: use for training only, or drop them"
    )
    cold_users: float = Field(0.0, ge=0, lt=1, description="fraction of users held out of training entirely")
    cold_from: Literal["all", "tail"] = "all"
    seed: int | None = Field(
        None, description="seed of the cold hold-out; default: the recipe's seed. Fix it so runs at "
        "different seeds hold out the same users and can be compared user by user"
    )


class GRU4RecConfig(Strict):
    kind: Literal["gru4rec"]
    dim: int = Field(64, ge=1)
    layers: int = Field(1, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)


class SASRecConfig(Strict):
    kind: Literal["sasrec"]
    dim: int = Field(64, ge=1)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    input_norm: bool = Field(
        True, description="LayerNorm on item + position embedding before the first block, position "
        "embeddings initialised small (as RecBole's SASRec); without it rarely seen items barely register"
    )
    item_scale: bool = Field(
        True, description="multiply the item embedding by sqrt(dim) before adding the position embedding "
        "(Kang & McAuley's SASRec); with input_norm this makes positions weigh about 1/sqrt(dim) of the items")

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> "SASRecConfig":
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        return self


class PopConfig(Strict):
    kind: Literal["pop"]


class CaserConfig(Strict):
    """Caser: horizontal (heights 1..window) and vertical convolutions over the last `window` items."""

    kind: Literal["caser"]
    dim: int = Field(64, ge=1)
    window: int = Field(5, ge=1, le=64, description="how many of the newest items the convolutions see (L')")
    n_h: int = Field(16, ge=1, description="horizontal filters per height h = 1..window")
    n_v: int = Field(4, ge=1, description="vertical filters")
    dropout: float = Field(0.4, ge=0, lt=1)


class NARMConfig(Strict):
    """NARM: a GRU (global encoder) plus attention over its outputs (local encoder), bilinear decoder."""

    kind: Literal["narm"]
    dim: int = Field(64, ge=1)
    layers: int = Field(1, ge=1)
    dropout: float = Field(0.25, ge=0, lt=1)


class BERT4RecConfig(Strict):
    """BERT4Rec: a bidirectional transformer trained on masked items (cloze); train.loss applies at the
    masked positions."""

    kind: Literal["bert4rec"]
    dim: int = Field(64, ge=1)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    mask_prob: float = Field(0.2, gt=0, le=1, description="chance that each item of a training window is masked")
    last_only: float = Field(0.1, ge=0, le=1, description="share of windows in which only the newest item is "
                             "masked (what inference looks like)")

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> "BERT4RecConfig":
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        return self


Backbone = Annotated[Union[GRU4RecConfig, SASRecConfig, PopConfig, CaserConfig, NARMConfig, BERT4RecConfig],
                     Field(discriminator="kind")]


class GradAlign(Strict):
    """Reptile/MER-style gradient alignment: k inner steps on different users, then θ ← θ₀ + β(θ_k − θ₀)."""

    k: int = Field(5, ge=1, description="inner steps per outer step")
    inner_lr: float = Field(2.0e-3, gt=0, description="α, the inner step size (α·β is the effective step)")
    beta: float = Field(0.5, gt=0, le=1, description="β, the outer step")
    inner_optimizer: Literal["sgd", "adam"] = "adam"
    outer: Literal["interpolate", "adam"] = Field(
        "interpolate", description="θ₀ + β(θ_k − θ₀), or Adam on the pseudo-gradient θ₀ − θ_k"
    )
    users_per_step: int = Field(64, ge=1, description="with sampling permuted / uniform / events / balanced, the "
                                "users of one inner step; 1 is the paper's faithful mode")
    sampling: Literal["windows", "permuted", "uniform", "events", "balanced"] = Field(
        "windows", description="windows: every training window once per epoch, as plain training sees them, each "
        "outer iteration's k batches of train.batch_size windows split so that no user is in two; permuted: every "
        "user once per epoch, in random order, each inner step users_per_step of them with up to "
        "train.batch_size / users_per_step windows each; uniform / events / balanced: each inner step draws "
        "users_per_step users (uniformly, in proportion to their windows, head and tail equally), fresh users "
        "every outer iteration — on Amazon Music that left a third of the users out of each epoch and trained "
        "SASRec about 6% worse than windows (RESULTS.md)")
    align_embeddings: bool = Field(True, description="also apply the outer step to the item embeddings")
    chains: int = Field(1, ge=1, description="Reptile chains run side by side (torch.func.vmap), each on its "
                        "own users, outer step toward their mean; 1 = one chain")

    @model_validator(mode="after")
    def _users_per_step_needs_user_sampling(self) -> "GradAlign":
        # by value, not by "was it written": a run's recipe.yaml holds every key resolved, the default included
        if self.sampling == "windows" and self.users_per_step != GradAlign.model_fields["users_per_step"].default:
            raise ValueError(
                "transfer.grad_align.users_per_step applies to sampling: permuted, uniform, events or balanced "
                "(each inner step takes that many users); with sampling: windows (the default) an inner step is "
                "train.batch_size windows. For the paper's faithful mode write sampling: permuted, users_per_step: 1")
        return self


class Adversarial(Strict):
    """A head/tail discriminator on the user state, trained through gradient reversal of weight λ."""

    weight: float = Field(0.1, ge=0, description="λ, the gradient-reversal weight")
    hidden: int = Field(64, ge=0, description="hidden units of the MLP discriminator (0 = linear)")
    lr: float = Field(1.0e-3, gt=0)
    warmup_epochs: int = Field(0, ge=0)
    state: Literal["last", "matched"] = Field(
        "last", description="the user state D reads. last: each window's (the paper's); but head windows hold "
        "more items than tail windows (on Amazon Music the count alone tells them apart 99.6% of the time), so "
        "the encoder is pushed to hide how much it has seen. matched: a head window's state is encoded from only "
        "as many of its newest items as a random tail window holds, so only what the items say can tell them "
        "apart (one extra encoder pass over those short sequences per batch)")


class Transfer(Strict):
    grad_align: GradAlign | None = None
    adversarial: Adversarial | None = None


class Monitor(Strict):
    metric: str = Field("ndcg@10", pattern=r"^(hr|ndcg|mrr)@[1-9][0-9]*$")
    slice: Literal["all", "head", "tail"] = "all"


class Train(Strict):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1.0e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    sampling: Literal["windows", "users"] = Field(
        "windows", description="windows: every training window once per epoch, shuffled; users: each step "
        "draws users_per_step users uniformly (up to batch_size / users_per_step windows of each), so tail "
        "users get as many steps as head users")
    users_per_step: int = Field(64, ge=1, description="with sampling: users, the users of one step")
    length_buckets: bool = Field(
        False, description="with sampling: windows, batch windows of similar length (faster on long-tailed logs, "
        "but each step then holds only short-history or only long-history users, which trains far worse: "
        "RESULTS.md); off: every batch is a uniform random sample of the windows")
    loss: Literal["ce", "bce", "sampled"] = "ce"
    negatives: int = Field(1, ge=1, description="negatives per position for bce / per batch for sampled")
    patience: int = Field(5, ge=1, description="stop after this many epochs without improvement on monitor")
    monitor: Monitor = Monitor()
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when torch sees a GPU (under torchrun, the LOCAL_RANK's), else CPU")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: autocast of the training forward pass, CUDA only; evaluation stays fp32")
    threads: int = Field(0, ge=0, description="torch CPU threads per process; 0 = torch's default")


class Adapt(Strict):
    """Few-step adaptation of cold users: `steps` SGD steps on the user's own history before scoring."""

    steps: int = Field(3, ge=1, le=1000)
    lr: float = Field(1.0e-2, gt=0, description="SGD learning rate of the adaptation steps")
    params: Literal["encoder", "all"] = Field(
        "encoder", description="what each user adapts: the encoder (item table shared) or every parameter")


class Eval(Strict):
    ks: list[Annotated[int, Field(ge=1)]] = Field([5, 10, 20], min_length=1)
    mask_seen: bool = Field(True, description="exclude the user's history items from the ranking (as RecBole)")
    mode: Literal["full", "sampled"] = "full"
    negatives: int = Field(100, ge=1, description="negatives per user in sampled mode")
    batch_size: int = Field(1024, ge=1)
    adapt: Adapt | None = Field(None, description="also rank cold users after a few SGD steps on their own "
                                "history (slice cold-adapted); null = zero-shot only")


class Output(Strict):
    dir: str = Field("runs", description="runs are written to <dir>/<name>")


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    data: Data
    split: Split = Split()
    head: Head = Head()
    backbone: Backbone
    transfer: Transfer = Transfer()
    train: Train = Train()
    eval: Eval = Eval()
    output: Output = Output()
    _file: str | None = PrivateAttr(None)  # the file it was loaded from, to name it in later errors

    @model_validator(mode="after")
    def _chains_use_full_softmax(self) -> "Recipe":
        ga = self.transfer.grad_align
        if ga is not None and ga.chains > 1 and self.train.loss != "ce":
            raise ValueError(f"transfer.grad_align.chains: {ga.chains} chains train with train.loss ce only "
                             f"(got {self.train.loss}); set chains: 1 or loss: ce")
        # both use the next-item objective, which a bidirectional encoder would answer by looking ahead
        if ga is not None and ga.chains > 1 and self.backbone.kind == "bert4rec":
            raise ValueError("transfer.grad_align.chains: bert4rec trains with its cloze objective, which "
                             "chains do not implement; set chains: 1")
        if ga is not None and self.train.sampling == "users":
            raise ValueError("train.sampling: users applies to plain training; gradient alignment draws its own "
                             "users (transfer.grad_align.sampling, users_per_step); set train.sampling: windows")
        if self.eval.adapt is not None and self.backbone.kind == "bert4rec":
            raise ValueError("eval.adapt: adaptation takes next-item steps, which a bidirectional bert4rec "
                             "would answer by looking ahead; set eval.adapt: null for bert4rec")
        return self

    @model_validator(mode="after")
    def _monitor_is_evaluated(self) -> "Recipe":
        k = int(self.train.monitor.metric.split("@")[1])
        if k not in self.eval.ks:
            raise ValueError(f"train.monitor.metric: {self.train.monitor.metric} needs {k} in eval.ks "
                             f"(which is {self.eval.ks}); add it there or monitor another cut-off")
        return self

    @model_validator(mode="after")
    def _window_fits(self) -> "Recipe":
        if self.backbone.kind == "caser" and self.backbone.window > self.data.max_len:
            raise ValueError(f"backbone.window: {self.backbone.window} is longer than data.max_len "
                             f"({self.data.max_len}), the most items the model ever sees; lower it")
        return self


# ---------------------------------------------------------------------------------------------------------
# Loading: YAML → dict → overrides → Recipe, with every problem reported at once.


class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader (plain data only, no Python objects), except that a key given twice in one
    mapping is an error: PyYAML would silently keep the last one."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    """Plain data from YAML text; raises ValueError("line N: invalid YAML: problem") on any bad input."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: !!python/... tags are errors
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{where}invalid YAML: {what}") from None
    except RecursionError:
        raise ValueError("invalid YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a date like 2020-13-45 that PyYAML parses
        raise ValueError(f"invalid YAML: {str(exc)[:200]}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` → (["a", "b"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(IDENTIFIER.match(p) for p in parts):
        raise UserError(f"--set {text}: expected KEY=VALUE with a dotted key, e.g. --set train.epochs=5")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except ValueError as exc:
        raise UserError(f"--set {text}: the value is not valid YAML ({exc})") from None
    return parts, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return raw


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the recipe ({exc})") from None
    try:
        raw = parse_yaml(text)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    if raw is None:
        raise UserError(f"{path}: the recipe is empty (start from `ltrec init`)")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe must be a mapping of sections, got {type(raw).__name__}")
    return raw


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the key at `loc`, to suggest close spellings of an unknown key."""
    model: Any = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            if isinstance(part, str) and part in _BACKBONE_KINDS:
                model = _BACKBONE_KINDS[part]
                continue
            return None
        annotation = field.annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        models = [a for a in candidates if issubclass(a, BaseModel)]
        if not models:
            return None
        model = models[0]
    return model


def _message(err: dict) -> tuple[str, str]:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _BACKBONE_KINDS))
    # a key that is not a plain name (a line break, a quote) is quoted, so each problem stays one line
    dotted = ".".join(str(p) if isinstance(p, int) or IDENTIFIER.match(p) else repr(p) for p in loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(err["loc"])
        close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields) if model else [], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return dotted, f"unknown key{hint}"
    if kind == "missing":
        return dotted, "required key is missing"
    if kind == "union_tag_invalid":
        return dotted + ".kind", f"unknown kind; expected one of {', '.join(_BACKBONE_KINDS)}"
    if kind == "union_tag_not_found":
        return dotted + ".kind", f"required key is missing; expected one of {', '.join(_BACKBONE_KINDS)}"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc and re.match(r"^[a-z_.]+: ", msg):  # a check across sections names its own key
        return tuple(msg.split(": ", 1))
    value = err.get("input")
    if isinstance(value, (list, set, tuple)):  # never print a whole structure (YAML aliases can make it huge)
        msg += f" (got a {type(value).__name__})"
    elif not isinstance(value, dict) and "input" in err and repr(value)[:80] not in msg:
        text = repr(value)
        msg += f" (got {text if len(text) <= 80 else text[:77] + '...'})"
    return dotted, msg


_BACKBONE_KINDS = {"gru4rec": GRU4RecConfig, "sasrec": SASRecConfig, "pop": PopConfig, "caser": CaserConfig,
                   "narm": NARMConfig, "bert4rec": BERT4RecConfig}


def validate_dict(raw: dict, where: str) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{where}: {key}: {msg}" for key, msg in (_message(e) for e in exc.errors())]
        raise UserError("\n".join(lines)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raise UserError listing every problem found."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path), overrides or [])
    recipe = validate_dict(raw, path.name if path.parent == Path(".") else str(path))
    recipe._file = str(path)
    return recipe


def recipe_schema() -> dict:
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ltrec recipe"
    return schema


def schema_header(schema_path: str) -> str:
    return f"# yaml-language-server: $schema={schema_path}"


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe (every default filled in), as saved first in each run directory."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
