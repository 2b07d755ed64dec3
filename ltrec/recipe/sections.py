"""The recipe's sections: data, split, head, train, eval, output, and the `Recipe` that holds them all."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from ltrec.recipe.backbones import FITTED_KINDS, Backbone
from ltrec.recipe.base import ColumnName, Count, Seed, Strict
from ltrec.recipe.components import Transfer
from ltrec.recipe.evaluation import Eval


class Columns(Strict):
    """Which source columns hold the user, the item and the time of each event."""

    user: ColumnName = Field("user_id", description="the column of user ids (read as text)")
    item: ColumnName = Field("item_id", description="the column of item ids (read as text)")
    time: ColumnName = Field("timestamp", description="the column of event times: unix seconds, or dates")


class Data(Strict):
    """Where the events come from. Relative paths are resolved against the current directory."""

    source: str = Field(description="CSV / Parquet / JSON file or glob of files")
    format: Literal["auto", "csv", "parquet", "json"] = Field("auto", description="auto: from the file extension")
    query: str | None = Field(
        None, description="optional SQL over the table `source` (e.g. `SELECT * FROM source WHERE rating >= 4`)"
    )
    columns: Columns = Field(Columns(), description="which source columns are the user, the item and the time")
    min_user_events: int = Field(1, ge=1, description="drop users with fewer events (one pass, before items)")
    min_item_events: int = Field(1, ge=1, description="drop items with fewer events (one pass, on the raw counts)")
    max_len: int = Field(50, ge=1, le=4096, description="history length the model sees")
    stride: int | None = Field(
        None,
        ge=1,
        description="step between a user's training windows (null = max_len: windows do not "
        "overlap). Smaller: windows overlap and each target is still trained once, with at least max_len − "
        "stride items before it (more windows per epoch)",
    )

    @model_validator(mode="after")
    def _stride_fits(self) -> Data:
        if self.stride is not None and self.stride > self.max_len:
            raise ValueError(
                f"stride ({self.stride}) is more than max_len ({self.max_len}); windows would "
                "skip events: use at most max_len (or null)"
            )
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
    def _exactly_one(self) -> Head:
        if (self.fraction is None) == (self.count is None):
            raise ValueError("give exactly one of head.fraction and head.count")
        return self


class Split(Strict):
    """Chronological leave-one-out: last event = test, second-to-last = validation, the rest trains."""

    short_users: Literal["train", "drop"] = Field(
        "train", description="users with < 3 events: use for training only, or drop them"
    )
    cold_users: float = Field(0.0, ge=0, lt=1, description="fraction of users held out of training entirely")
    cold_from: Literal["all", "tail"] = Field(
        "all", description="hold cold users out of all users, or of the tail only"
    )
    seed: Seed | None = Field(
        None,
        description="seed of the cold hold-out; default: the recipe's seed. Fix it so runs at "
        "different seeds hold out the same users and can be compared user by user",
    )


class Monitor(Strict):
    metric: str = Field(
        "ndcg@10",
        pattern=r"^(hr|ndcg|mrr)@[1-9][0-9]*$",
        description="validation metric that picks the best epoch and stops training",
    )
    slice: Literal["all", "head", "tail"] = Field("all", description="the users it is measured on")


class Train(Strict):
    epochs: int = Field(30, ge=1, le=100_000, description="at most this many epochs (early stopping may end sooner)")
    batch_size: Count = Field(256, description="training windows per step")
    lr: float = Field(1.0e-3, gt=0, description="Adam's learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam's weight decay")
    lr_decay: Literal["none", "linear"] = Field(
        "none",
        description="linear: the learning rate falls by lr / epochs after each epoch, from lr in the first to "
        "lr / epochs in the last (epochs sets the horizon); plain training only",
    )
    sampling: Literal["windows", "users"] = Field(
        "windows",
        description="windows: every training window once per epoch, shuffled; users: each step "
        "draws users_per_step users uniformly (up to batch_size / users_per_step windows of each), so tail "
        "users get as many steps as head users",
    )
    users_per_step: Count = Field(64, description="with sampling: users, the users of one step")
    loss: Literal["ce", "bce", "sampled"] = Field(
        "ce",
        description="ce: full softmax; bce: binary CE with "
        "`negatives` random negatives per target; sampled: softmax over "
        "the target and `negatives` shared negatives",
    )
    negatives: int = Field(1, ge=1, le=100_000, description="negatives per position for bce / per batch for sampled")
    patience: int = Field(5, ge=1, le=100_000, description="stop after this many epochs without improvement on monitor")
    monitor: Monitor = Field(Monitor(), description="what early stopping watches")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when torch sees a GPU (under torchrun, the LOCAL_RANK's), else CPU"
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: autocast of the training forward pass, CUDA only; evaluation stays fp32"
    )
    threads: int = Field(0, ge=0, le=1024, description="torch CPU threads per process; 0 = torch's default")


class Output(Strict):
    dir: str = Field("runs", description="runs are written to <dir>/<name>")


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: Seed = 0
    data: Data
    split: Split = Split()
    head: Head = Head()
    backbone: Backbone
    transfer: Transfer = Transfer()
    train: Train = Train()
    eval: Eval = Eval()
    output: Output = Output()
    _file: str | None = PrivateAttr(None)
    _notes: list[str] = PrivateAttr(default_factory=list)

    def loaded_from(self, path: str, notes: list[str]) -> Recipe:
        self._file, self._notes = path, list(notes)
        return self

    @property
    def file(self) -> str | None:
        """The file it was loaded from, to name it in later errors (None when built in code)."""
        return self._file

    @property
    def notes(self) -> list[str]:
        """What loading changed (e.g. keys a `--set backbone.kind` left out), for the caller to show."""
        return self._notes

    @model_validator(mode="after")
    def _chains_use_full_softmax(self) -> Recipe:
        ga = self.transfer.grad_align
        if ga is not None and ga.chains > 1 and self.train.loss != "ce":
            raise ValueError(
                f"transfer.grad_align.chains: {ga.chains} chains train with train.loss ce only "
                f"(got {self.train.loss}); set chains: 1 or loss: ce"
            )
        # both use the next-item objective, which a bidirectional encoder would answer by looking ahead
        if ga is not None and ga.chains > 1 and self.backbone.kind == "bert4rec":
            raise ValueError(
                "transfer.grad_align.chains: bert4rec trains with its cloze objective, which "
                "chains do not implement; set chains: 1"
            )
        t = self.transfer
        if ga is not None and ga.chains > 1 and any(c is not None for c in (t.robust, t.user_branch, t.contrastive)):
            raise ValueError(
                "transfer.grad_align.chains: chains train with the plain objective; set chains: 1 to "
                "use transfer.robust, transfer.user_branch or transfer.contrastive"
            )
        if self.backbone.kind in FITTED_KINDS:
            # fitted in closed form: no training loop for a transfer component to change
            for key in ("grad_align", "adversarial", "robust", "user_branch", "contrastive"):
                if getattr(t, key) is not None:
                    raise ValueError(
                        f"transfer.{key}: backbone.kind {self.backbone.kind} is fitted in closed form, without "
                        f"the training loop this component changes; pick a neural backbone or set {key}: null"
                    )
        if t.contrastive is not None and self.backbone.kind == "bert4rec":
            raise ValueError(
                "transfer.contrastive pairs the states that predict the same next item; bert4rec's "
                "cloze states see their own targets; set contrastive: null for bert4rec"
            )
        if ga is not None and self.train.lr_decay != "none":
            raise ValueError(
                "train.lr_decay: applies to plain training; gradient alignment keeps its own inner and outer "
                "rates (transfer.grad_align); set lr_decay: none"
            )
        if ga is not None and self.train.sampling == "users":
            raise ValueError(
                "train.sampling: users applies to plain training; gradient alignment draws its own "
                "users (transfer.grad_align.sampling, users_per_step); set train.sampling: windows"
            )
        if self.eval.adapt is not None and self.backbone.kind == "bert4rec":
            raise ValueError(
                "eval.adapt: adaptation takes next-item steps, which a bidirectional bert4rec "
                "would answer by looking ahead; set eval.adapt: null for bert4rec"
            )
        return self

    @model_validator(mode="after")
    def _monitor_is_evaluated(self) -> Recipe:
        k = int(self.train.monitor.metric.split("@")[1])
        if k not in self.eval.ks:
            raise ValueError(
                f"train.monitor.metric: {self.train.monitor.metric} needs {k} in eval.ks "
                f"(which is {self.eval.ks}); add it there or monitor another cut-off"
            )
        return self

    @model_validator(mode="after")
    def _window_fits(self) -> Recipe:
        if self.backbone.kind == "caser" and self.backbone.window > self.data.max_len:
            raise ValueError(
                f"backbone.window: {self.backbone.window} is longer than data.max_len "
                f"({self.data.max_len}), the most items the model ever sees; lower it"
            )
        return self
