"""Typed specs that a Python-file config is validated into; every other layer reads only these."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from vlft.errors import ConfigError
from vlft.families import FAMILIES, family_named

TRAIN_MODES = ("frozen", "lora", "full")
DTYPES = ("float32", "bfloat16", "float16")
#: The short spellings the CLI's --dtype uses; a config may use either, specs hold the long names.
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _one_of(value, allowed, key):
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(repr, allowed))}")


def _dtype(value, key) -> str:
    """A dtype name in its long form ('bf16' -> 'bfloat16'); anything else is an error naming `key`."""
    value = DTYPE_ALIASES.get(value, value)
    _one_of(value, DTYPES, key)
    return value


def _require(ok: bool, key: str, value, rule: str) -> None:
    """One line naming the key, its value and the rule it breaks."""
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {value!r}")


def _optional_at_least(value, low, key: str) -> None:
    _require(value is None or value >= low, key, value, f"None or >= {low}")


@dataclass
class LoraSpec:
    #: Messages name keys from here; vlft.config puts the real place in front (model.llm.lora.r).
    ERROR_PREFIX: ClassVar[str] = "lora."

    r: int = 16
    #: The update is scaled by alpha / r; --cfg-options model.llm.lora.r=N alone keeps that ratio.
    alpha: int = 32
    dropout: float = 0.05
    #: Module-name suffixes to wrap (e.g. ["q_proj", "v_proj"]); None picks the architecture's defaults.
    target_modules: Optional[list[str]] = None
    use_dora: bool = False

    def __post_init__(self):
        if self.r <= 0:
            raise ConfigError(f"lora.r must be positive, got {self.r}")
        _require(self.alpha > 0, "lora.alpha", self.alpha, "positive")
        _require(0 <= self.dropout < 1, "lora.dropout", self.dropout, "in [0, 1)")


@dataclass
class QuantSpec:
    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "float32"

    def __post_init__(self):
        _one_of(self.bits, (4, 8), "llm.quantization.bits")
        _one_of(self.quant_type, ("nf4", "fp4"), "llm.quantization.quant_type")
        self.compute_dtype = _dtype(self.compute_dtype, "model.llm.quantization.compute_dtype")


@dataclass
class VisionSpec:
    #: A vision-encoder directory, when the model is composed from parts (stage 1).
    path: Optional[str] = None
    #: Hidden layer whose features feed the connector; None: the checkpoint's (or -1 InternVL, -2 LLaVA).
    select_layer: Optional[int] = None
    train: str = "frozen"
    lora: Optional[LoraSpec] = None

    def __post_init__(self):
        _one_of(self.train, TRAIN_MODES, "model.vision.train")
        if self.train == "lora" and self.lora is None:
            self.lora = LoraSpec(r=8, alpha=16)


@dataclass
class ConnectorSpec:
    #: Pixel-shuffle ratio (0.5 for InternVL: 4 patches -> 1 token); 1.0 means no shuffle (LLaVA).
    downsample_ratio: float = 0.5
    train: bool = True

    def __post_init__(self):
        _require(0 < self.downsample_ratio <= 1, "model.connector.downsample_ratio", self.downsample_ratio,
                 "in (0, 1]")


@dataclass
class LLMSpec:
    #: An LLM directory, when the model is composed from parts (stage 1).
    path: Optional[str] = None
    train: str = "lora"
    lora: Optional[LoraSpec] = None
    quantization: Optional[QuantSpec] = None

    def __post_init__(self):
        _one_of(self.train, TRAIN_MODES, "model.llm.train")
        if self.train == "lora" and self.lora is None:
            self.lora = LoraSpec()


@dataclass
class ModelSpec:
    family: str = "internvl"
    #: A whole VLM checkpoint: transformers-native InternVL/LLaVA, original InternVL-chat, or a vlft merge.
    path: Optional[str] = None
    vision: VisionSpec = field(default_factory=VisionSpec)
    connector: ConnectorSpec = field(default_factory=ConnectorSpec)
    llm: LLMSpec = field(default_factory=LLMSpec)
    #: "float32", "bfloat16", "float16" (or the CLI's fp32, bf16, fp16).
    dtype: str = "float32"
    #: "eager", "sdpa" or "flash_attention_2" (needs flash-attn: vlft.config checks it is importable).
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False

    def __post_init__(self):
        _one_of(self.family, tuple(FAMILIES), "model.family")
        self.dtype = _dtype(self.dtype, "model.dtype")
        _one_of(self.attn_implementation, ("eager", "sdpa", "flash_attention_2"), "model.attn_implementation")
        if self.path is None and (self.vision.path is None or self.llm.path is None):
            raise ConfigError("model.path is not set: give a whole VLM checkpoint in model.path, "
                              "or both model.vision.path and model.llm.path to compose from parts")
        if self.path is not None and (self.vision.path or self.llm.path):
            raise ConfigError("model.path and model.vision.path/model.llm.path contradict: "
                              "use a whole checkpoint or parts, not both")
        if self.llm.quantization is not None and self.llm.train == "full":
            raise ConfigError("model.llm.quantization and model.llm.train='full' contradict: "
                              "a quantized LLM can only be trained with LoRA (train='lora') or frozen")
        family = family_named(self.family)
        if not family.pixel_shuffle and self.connector.downsample_ratio != 1.0:
            raise ConfigError(f"model.family={self.family!r} and model.connector.downsample_ratio="
                              f"{self.connector.downsample_ratio} contradict: {family.name} has no pixel shuffle, "
                              "use 1.0")


@dataclass
class DatasetSpec:
    #: Messages name keys from here; vlft.config puts the real place in front (data.datasets[0].path).
    ERROR_PREFIX: ClassVar[str] = "data.datasets[]."

    path: str = ""
    format: str = "auto"
    image_root: Optional[str] = None
    repeat: float = 1.0
    max_tiles: Optional[int] = None
    name: Optional[str] = None

    def __post_init__(self):
        if not self.path:
            raise ConfigError("data.datasets[].path is empty: give an annotation file or an InternVL meta json")
        _one_of(self.format, ("auto", "llava", "sharegpt", "internvl_meta", "messages_pairs", "llamafactory_pairs",
                              "internvl_mpo"), "data.datasets[].format")
        _require(self.repeat > 0, "data.datasets[].repeat", self.repeat, "positive")
        _optional_at_least(self.max_tiles, 1, "data.datasets[].max_tiles")


@dataclass
class TilingSettings:
    mode: str = "dynamic"
    #: Tile side in pixels; None takes the vision encoder's input size (a mismatch is an error).
    tile_size: Optional[int] = None
    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True
    grid_pinpoints: list[list[int]] = field(default_factory=list)
    #: "split" only: the longest image side before splitting (None: 4 x tile size, the processors' default).
    longest_edge: Optional[int] = None

    def __post_init__(self):
        _one_of(self.mode, ("dynamic", "pad_square", "anyres", "resize", "split"), "data.tiling.mode")
        _optional_at_least(self.longest_edge, 1, "data.tiling.longest_edge")
        _optional_at_least(self.tile_size, 1, "data.tiling.tile_size")
        _require(self.max_tiles >= 1, "data.tiling.max_tiles", self.max_tiles, ">= 1")
        if not 1 <= self.min_tiles <= self.max_tiles:
            raise ConfigError(f"data.tiling.min_tiles={self.min_tiles} and data.tiling.max_tiles={self.max_tiles} "
                              "contradict: need 1 <= min_tiles <= max_tiles")


@dataclass
class DataSpec:
    datasets: list[DatasetSpec] = field(default_factory=list)
    template: str = "internvl2_5"
    system_prompt: Optional[str] = None
    max_length: int = 4096
    tiling: TilingSettings = field(default_factory=TilingSettings)
    packing: bool = False
    #: Tokens per packed row (None: max_length). Eager/sdpa attention costs the row length squared, so on
    #: CPUs shorter rows train faster; flash attention on a GPU attends per sample and does not care.
    pack_length: Optional[int] = None
    group_by_length: bool = True
    #: What to do with a sample that cannot be used (bad image, too long...): "skip" counts it, "error" stops.
    on_bad_sample: str = "skip"
    num_workers: int = 0
    #: Hold out this fraction of the training samples (0 <= f < 1) for a validation loss every engine.eval_steps.
    val_split: float = 0.0
    #: Separate validation sets (same shape as `datasets`); they take precedence over val_split.
    val_datasets: list[DatasetSpec] = field(default_factory=list)

    def __post_init__(self):
        _one_of(self.on_bad_sample, ("skip", "error"), "data.on_bad_sample")
        if self.max_length <= 0:
            raise ConfigError(f"data.max_length must be positive, got {self.max_length}")
        if self.pack_length is not None and self.pack_length <= 0:
            raise ConfigError(f"data.pack_length must be positive, got {self.pack_length}")
        _require(self.num_workers >= 0, "data.num_workers", self.num_workers, ">= 0")
        _require(0 <= self.val_split < 1, "data.val_split", self.val_split, "in [0, 1) (a fraction of the samples)")

    @property
    def packed_row_length(self) -> int:
        return self.pack_length or self.max_length


#: schedule.objective: supervised fine-tuning, or a preference objective over chosen/rejected pairs.
OBJECTIVES = ("sft", "dpo", "ipo", "mpo")


@dataclass
class ScheduleSpec:
    epochs: float = 1.0
    #: Stop after this many optimizer steps (overrides epochs when set; None: run `epochs`).
    max_steps: Optional[int] = None
    micro_batch_size: int = 1
    gradient_accumulation: int = 1
    #: Optional check: micro_batch_size * gradient_accumulation * world_size must equal this.
    global_batch_size: Optional[int] = None
    lr: float = 2e-4
    connector_lr: Optional[float] = None
    vision_lr: Optional[float] = None
    weight_decay: float = 0.0
    #: Fraction of the steps spent warming the lr up from 0 (0 <= warmup_ratio < 1).
    warmup_ratio: float = 0.03
    #: The cosine ends at lr * min_lr_ratio (0 <= min_lr_ratio <= 1).
    min_lr_ratio: float = 0.0
    #: Gradient-norm clipping; 0 turns clipping off.
    max_grad_norm: float = 1.0
    seed: int = 42
    #: What the steps optimise: "sft" (next-token loss on the answers), or a preference objective over
    #: chosen/rejected pairs: "dpo" (sigmoid DPO), "ipo", "mpo" (InternVL's MPO: DPO + BCO quality + SFT).
    objective: str = "sft"
    #: Preference objectives: the KL strength (DPO's beta; IPO's tau), the label smoothing of sigmoid DPO,
    #: and MPO's weights of its preference, quality (BCO) and generation (SFT) terms.
    beta: float = 0.1
    label_smoothing: float = 0.0
    preference_weight: float = 0.8
    quality_weight: float = 0.2
    generation_weight: float = 1.0
    #: Preference objectives: compute the reference log-probs of every pair in one pass before training
    #: (stored with the checkpoints) instead of at each step with the adapters switched off. Always on with
    #: --init-from or a trained connector / fully trained part: their start is not "the adapters off".
    precompute_reference: bool = False

    def __post_init__(self):
        for key in ("micro_batch_size", "gradient_accumulation"):
            if getattr(self, key) < 1:
                raise ConfigError(f"schedule.{key} must be >= 1, got {getattr(self, key)}")
        _require(self.epochs > 0, "schedule.epochs", self.epochs, "positive (or set schedule.max_steps)")
        _optional_at_least(self.max_steps, 1, "schedule.max_steps")
        _optional_at_least(self.global_batch_size, 1, "schedule.global_batch_size")
        _require(self.lr >= 0, "schedule.lr", self.lr, ">= 0 (0 changes no weight: an export fidelity check)")
        for key in ("connector_lr", "vision_lr"):
            value = getattr(self, key)
            _require(value is None or value >= 0, f"schedule.{key}", value, "None or >= 0")
        _require(self.weight_decay >= 0, "schedule.weight_decay", self.weight_decay, ">= 0")
        _require(0 <= self.warmup_ratio < 1, "schedule.warmup_ratio", self.warmup_ratio, "in [0, 1)")
        _require(0 <= self.min_lr_ratio <= 1, "schedule.min_lr_ratio", self.min_lr_ratio, "in [0, 1]")
        _require(self.max_grad_norm >= 0, "schedule.max_grad_norm", self.max_grad_norm, ">= 0 (0: no clipping)")
        _one_of(self.objective, OBJECTIVES, "schedule.objective")
        _require(self.beta > 0, "schedule.beta", self.beta, "positive")
        _require(0 <= self.label_smoothing < 0.5, "schedule.label_smoothing", self.label_smoothing, "in [0, 0.5)")
        for key in ("preference_weight", "quality_weight", "generation_weight"):
            _require(getattr(self, key) >= 0, f"schedule.{key}", getattr(self, key), ">= 0")
        if self.global_batch_size is not None and self.global_batch_size % (
                self.micro_batch_size * self.gradient_accumulation):
            raise ConfigError(
                f"schedule.global_batch_size={self.global_batch_size} is not divisible by schedule.micro_batch_size="
                f"{self.micro_batch_size} x schedule.gradient_accumulation={self.gradient_accumulation}")


@dataclass
class SamplePrompt:
    image: str = ""
    prompt: str = ""


@dataclass
class EngineSpec:
    #: "zero2", "zero3", a DeepSpeed JSON path, or None for plain torch on one process.
    deepspeed: Optional[str] = "zero2"
    work_dir: Optional[str] = None
    #: A checkpoint every this many optimizer steps; 0: only the final one.
    save_steps: int = 500
    #: Keep at most this many checkpoints (None: all).
    save_total_limit: Optional[int] = 2
    logging_steps: int = 1
    #: Fixed prompts generated every `sample_every` steps so a user sees the model learn (XTuner's chat hook).
    sample_prompts: list[SamplePrompt] = field(default_factory=list)
    sample_every: int = 0
    sample_max_new_tokens: int = 16
    #: Validation loss every this many optimizer steps (0: only at the end) when data.val_split/val_datasets is set.
    eval_steps: int = 0
    #: Experiment trackers fed with the logged scalars: "tensorboard", "wandb", "swanlab", "mlflow" (extras).
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])

    def __post_init__(self):
        _require(self.save_steps >= 0, "engine.save_steps", self.save_steps, ">= 0 (0: only the final checkpoint)")
        _optional_at_least(self.save_total_limit, 1, "engine.save_total_limit")
        _require(self.logging_steps >= 1, "engine.logging_steps", self.logging_steps, ">= 1")
        _require(self.sample_every >= 0, "engine.sample_every", self.sample_every, ">= 0 (0: never)")
        _require(self.sample_max_new_tokens >= 1, "engine.sample_max_new_tokens", self.sample_max_new_tokens, ">= 1")
        _require(self.eval_steps >= 0, "engine.eval_steps", self.eval_steps, ">= 0 (0: only at the end)")


@dataclass
class ExperimentSpec:
    model: ModelSpec
    data: DataSpec = field(default_factory=DataSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    engine: EngineSpec = field(default_factory=EngineSpec)

    def __post_init__(self):
        mode, modes = self.data.tiling.mode, family_named(self.model.family).tiling_modes
        if mode not in modes:
            raise ConfigError(f"model.family={self.model.family!r} and data.tiling.mode={mode!r} contradict: "
                              f"{self.model.family} tiles with {' or '.join(map(repr, modes))}")
        if self.schedule.objective != "sft" and self.data.packing:
            raise ConfigError(f"data.packing=True and schedule.objective={self.schedule.objective!r} contradict: "
                              "a preference pair trains as two padded rows (packing would mix rows across "
                              "pairs); set data.packing=False")
