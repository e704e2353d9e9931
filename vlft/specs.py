"""Typed specs that a Python-file config is validated into; every other layer reads only these."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from vlft.errors import ConfigError

FAMILIES = ("internvl", "llava")
TRAIN_MODES = ("frozen", "lora", "full")
DTYPES = ("float32", "bfloat16", "float16")


def _one_of(value, allowed, key):
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(repr, allowed))}")


@dataclass
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    #: Module-name suffixes to wrap (e.g. ["q_proj", "v_proj"]); None picks the architecture's defaults.
    target_modules: Optional[list[str]] = None
    use_dora: bool = False

    def __post_init__(self):
        if self.r <= 0:
            raise ConfigError(f"lora.r must be positive, got {self.r}")


@dataclass
class QuantSpec:
    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "float32"

    def __post_init__(self):
        _one_of(self.bits, (4, 8), "llm.quantization.bits")
        _one_of(self.quant_type, ("nf4", "fp4"), "llm.quantization.quant_type")
        _one_of(self.compute_dtype, DTYPES, "llm.quantization.compute_dtype")


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
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False

    def __post_init__(self):
        _one_of(self.family, FAMILIES, "model.family")
        _one_of(self.dtype, DTYPES, "model.dtype")
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
        if self.family == "llava" and self.connector.downsample_ratio != 1.0:
            raise ConfigError("model.family='llava' and model.connector.downsample_ratio="
                              f"{self.connector.downsample_ratio} contradict: LLaVA has no pixel shuffle, use 1.0")


@dataclass
class DatasetSpec:
    path: str = ""
    format: str = "auto"
    image_root: Optional[str] = None
    repeat: float = 1.0
    max_tiles: Optional[int] = None
    name: Optional[str] = None

    def __post_init__(self):
        if not self.path:
            raise ConfigError("data.datasets[].path is empty: give an annotation file or an InternVL meta json")
        _one_of(self.format, ("auto", "llava", "sharegpt", "internvl_meta"), "data.datasets[].format")


@dataclass
class TilingSettings:
    mode: str = "dynamic"
    #: Tile side in pixels; None takes the vision encoder's input size (a mismatch is an error).
    tile_size: Optional[int] = None
    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True
    grid_pinpoints: list[list[int]] = field(default_factory=list)

    def __post_init__(self):
        _one_of(self.mode, ("dynamic", "pad_square", "anyres", "resize"), "data.tiling.mode")
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

    def __post_init__(self):
        _one_of(self.on_bad_sample, ("skip", "error"), "data.on_bad_sample")
        if self.max_length <= 0:
            raise ConfigError(f"data.max_length must be positive, got {self.max_length}")
        if self.pack_length is not None and self.pack_length <= 0:
            raise ConfigError(f"data.pack_length must be positive, got {self.pack_length}")

    @property
    def packed_row_length(self) -> int:
        return self.pack_length or self.max_length


@dataclass
class ScheduleSpec:
    epochs: float = 1.0
    #: Stop after this many optimizer steps (overrides epochs when set).
    max_steps: Optional[int] = None
    micro_batch_size: int = 1
    gradient_accumulation: int = 1
    #: Optional check: micro_batch_size * gradient_accumulation * world_size must equal this.
    global_batch_size: Optional[int] = None
    lr: float = 2e-4
    connector_lr: Optional[float] = None
    vision_lr: Optional[float] = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42

    def __post_init__(self):
        for key in ("micro_batch_size", "gradient_accumulation"):
            if getattr(self, key) < 1:
                raise ConfigError(f"schedule.{key} must be >= 1, got {getattr(self, key)}")
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
    save_steps: int = 500
    save_total_limit: Optional[int] = 2
    logging_steps: int = 1
    #: Fixed prompts generated every `sample_every` steps so a user sees the model learn (XTuner's chat hook).
    sample_prompts: list[SamplePrompt] = field(default_factory=list)
    sample_every: int = 0
    sample_max_new_tokens: int = 16


@dataclass
class ExperimentSpec:
    model: ModelSpec
    data: DataSpec = field(default_factory=DataSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    engine: EngineSpec = field(default_factory=EngineSpec)

    def __post_init__(self):
        tiling = self.data.tiling
        if self.model.family == "llava" and tiling.mode == "dynamic":
            raise ConfigError("model.family='llava' and data.tiling.mode='dynamic' contradict: "
                              "LLaVA uses 'pad_square' (1.5) or 'anyres' (NeXT)")
        if self.model.family == "internvl" and tiling.mode in ("pad_square", "anyres"):
            raise ConfigError(f"model.family='internvl' and data.tiling.mode={tiling.mode!r} contradict: "
                              "InternVL uses 'dynamic' (or 'resize')")
