"""YAML recipe -> validated, typed ``Recipe``.

Recipes may ``extends:`` another recipe (a path relative to the file, or a bundled name);
mappings merge key by key, lists and scalars replace. ``--set a.b=value`` overrides are
parsed as YAML scalars and typed by the schema. Unknown keys, wrong types and impossible
values are rejected before any work, with the key path and a "did you mean" suggestion.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from srsgd_train.errors import UserError

BUNDLED_DIR = Path(__file__).parent / "recipes"
DATASET_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelCfg(Section):
    name: str = Field(description="small_cnn | mlp | preresnet<depth> | resnet50/101/152/200")
    num_classes: Optional[int] = Field(None, ge=2, description="default: the dataset's")
    zero_init_residual: bool = False


class DataCfg(Section):
    name: Literal["digits", "cifar10", "cifar100", "imagenet", "synthetic"]
    root: Optional[str] = None
    batch_size: int = Field(128, ge=1, description="global batch, split across ranks")
    eval_batch_size: int = Field(256, ge=1)
    workers: int = Field(2, ge=0)
    pin_memory: bool = True
    augment: bool = True
    # synthetic data (benchmarks)
    image_size: int = Field(32, ge=8)
    channels: int = Field(3, ge=1)
    num_classes: int = Field(10, ge=2)
    train_samples: int = Field(2048, ge=1)
    val_samples: int = Field(512, ge=1)


class RestartCfg(Section):
    kind: Literal["constant", "stages", "linear", "exponential"] = "constant"
    period: Optional[int] = Field(None, ge=1, description="F for kind=constant")
    periods: Optional[list[int]] = Field(None, description="F per LR stage for kind=stages")
    first: Optional[int] = Field(None, ge=1, description="F_1 for linear/exponential")
    rate: Optional[float] = Field(None, gt=0, description="r for linear/exponential")
    decay_last_to: Optional[int] = Field(None, ge=1, description="ImageNet: F decays to this in the last stage")
    restart_at_stage_start: bool = True

    @model_validator(mode="after")
    def _complete(self) -> "RestartCfg":
        need = {"constant": ["period"], "stages": ["periods"], "linear": ["first", "rate"],
                "exponential": ["first", "rate"]}[self.kind]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"restart kind {self.kind!r} needs {', '.join(missing)}")
        if self.periods is not None and any(f < 1 for f in self.periods):
            raise ValueError(f"every restart period must be >= 1 (F < 1 is impossible), got {self.periods}")
        return self


class OptimizerCfg(Section):
    name: Literal["srsgd", "sgd", "nasgd", "arsgd"] = "srsgd"
    lr: float = Field(0.1, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    nesterov: bool = False
    counting: Literal["paper", "reference"] = "paper"
    impl: Literal["auto", "foreach", "single", "fused"] = "auto"
    flat: bool = False
    restart: RestartCfg = RestartCfg(kind="constant", period=40)


class ScheduleCfg(Section):
    epochs: int = Field(ge=1)
    milestones: list[int] = Field(default_factory=list, description="epochs where LR *= gamma")
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "ScheduleCfg":
        if any(m <= 0 or m >= self.epochs for m in self.milestones):
            raise ValueError(f"milestones {self.milestones} must lie strictly between 0 and epochs={self.epochs}")
        if self.milestones != sorted(set(self.milestones)):
            raise ValueError(f"milestones {self.milestones} must be strictly increasing")
        return self


class TrainCfg(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    grad_clip: Optional[float] = Field(None, gt=0)
    max_steps: Optional[int] = Field(None, ge=1, description="stop early (smoke tests, benchmarks)")


class RunCfg(Section):
    seed: int = 0
    dir: Optional[str] = Field(None, description="default: runs/<recipe name>")
    log_every: int = Field(20, ge=1)
    eval_every_epochs: int = Field(1, ge=1)
    tensorboard: bool = True


class CheckpointCfg(Section):
    every_steps: int = Field(0, ge=0, description="0: only at epoch ends")
    at_epoch_end: bool = True
    keep: int = Field(3, ge=1)


class DistributedCfg(Section):
    backend: Literal["local", "ddp", "deepspeed"] = "local"
    shard_optimizer: bool = True
    zero_stage: Literal[1, 2] = 1


class Recipe(Section):
    name: str
    description: str = ""
    notes: str = Field("", description="choices and their sources in the paper")
    model: ModelCfg
    data: DataCfg
    optimizer: OptimizerCfg = OptimizerCfg()
    schedule: ScheduleCfg
    train: TrainCfg = TrainCfg()
    run: RunCfg = RunCfg()
    checkpoint: CheckpointCfg = CheckpointCfg()
    distributed: DistributedCfg = DistributedCfg()

    @model_validator(mode="after")
    def _cross_checks(self) -> "Recipe":
        r = self.optimizer.restart
        stages = len(self.schedule.milestones) + 1
        if self.optimizer.name == "srsgd" and r.kind == "stages" and len(r.periods or []) != stages:
            raise ValueError(
                f"optimizer.restart.periods has {len(r.periods or [])} entries but the LR schedule "
                f"has {stages} stages (milestones {self.schedule.milestones})"
            )
        return self

    @property
    def num_classes(self) -> int:
        if self.model.num_classes:
            return self.model.num_classes
        return DATASET_CLASSES.get(self.data.name, self.data.num_classes)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


# --- loading --------------------------------------------------------------------------

def bundled_recipes() -> list[Path]:
    return sorted(p for p in BUNDLED_DIR.glob("*.yaml") if not p.name.startswith("_"))


def resolve_path(ref: str, relative_to: Path | None = None) -> Path:
    candidates = []
    if relative_to is not None:
        candidates.append(relative_to / ref)
    candidates += [Path(ref), BUNDLED_DIR / ref, BUNDLED_DIR / f"{ref}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    names = [p.stem for p in bundled_recipes()]
    hint = difflib.get_close_matches(Path(ref).stem, names, n=1)
    raise UserError(
        f"Recipe {ref!r} was not found (looked for a file at that path and among the bundled "
        f"recipes). {'Did you mean ' + repr(hint[0]) + '? ' if hint else ''}"
        "Run `srsgd-train recipes` to list the bundled ones."
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"Recipe {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"Recipe {path} must be a YAML mapping at the top level, got {type(data).__name__}.")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_raw(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in _seen:
        raise UserError(f"Recipe {path} extends itself through {' -> '.join(map(str, _seen))}.")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = load_raw(resolve_path(str(parent), path.parent), _seen + (path,))
    base.pop("name", None)
    return deep_merge(base, data)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UserError(f"--set expects KEY=VALUE (e.g. --set optimizer.lr=0.05), got {item!r}.")
    key, value = item.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return raw


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Recipe
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            break
        ann = field.annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if hasattr(a, "model_fields")), ann)
    return list(getattr(model, "model_fields", {}).keys())


def _explain(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            options = _fields_at(loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), options, n=1)
            extra = f" Did you mean '{'.'.join(map(str, loc[:-1] + (hint[0],)))}'?" if hint else ""
            lines.append(f"{path}: unknown key.{extra} Allowed here: {', '.join(options)}.")
        elif e["type"] == "missing":
            lines.append(f"{path}: required but missing.")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{path}: {msg} (got {e.get('input')!r}).")
    return f"Recipe {source} is invalid: " + " ".join(lines)


def load_recipe(ref: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, merge, override and validate a recipe. Raises ``UserError`` with a clear message."""
    path = resolve_path(str(ref))
    raw = load_raw(path)
    raw.setdefault("name", path.stem)
    raw = apply_overrides(raw, overrides or [])
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise UserError(_explain(e, str(path))) from None


def recipe_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise UserError(_explain(e, source)) from None
