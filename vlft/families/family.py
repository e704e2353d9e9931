"""What a model family is, as data: the facts every layer asks instead of testing the family's name.

A family is one `Family` in one module of this package (internvl.py, llava.py); `vlft.families` holds the
registry. This module imports nothing heavy (the CLI reads export targets at start-up): official classes are
named here and resolved from transformers only when asked for.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageTokens:
    """How one image is written in the ids: ``start_token`` + ``context_token``*n + ``end_token``, or
    ``context_token``*n when the family wraps nothing (LLaVA)."""

    context_token: str               # the slot image features replace ("<IMG_CONTEXT>", "<image>")
    start_token: str | None = None   # "<img>" (InternVL)
    end_token: str | None = None     # "</img>"
    #: Families that mark each tile of a "split" image (Idefics3 / SmolVLM): (tokenizer, rows, cols, tokens
    #: per tile) -> the image's whole run of ids, as their processor writes it; rows = cols = 0: one tile.
    split_run: Callable[[object, int, int, int], list[int]] | None = field(default=None, repr=False, compare=False)
    #: Tokens besides start/end that only an image run may hold (the tile markers of split_run).
    marker_tokens: tuple[str, ...] = ()

    def __post_init__(self):
        if (self.start_token is None) != (self.end_token is None):
            raise ValueError("ImageTokens needs both start_token and end_token (e.g. <img>, </img>) or neither")

    @property
    def wraps(self) -> bool:
        return self.start_token is not None


@dataclass(frozen=True)
class Family:
    """One model family: its official classes, the config fields that define its computation, its tokens,
    normalisation, default template and tiling, and the export targets it supports."""

    name: str                        # model.family in a config; also the -hf config.json model_type
    display_name: str                # "InternVL", "LLaVA" (messages)
    official_class_name: str         # transformers' class of the "-hf" layout
    config_class_name: str
    processor_class_name: str        # processor_config.json's processor_class
    hf_layout: str                   # the `vlft.model.layouts.Layout` value of its "-hf" directories
    image_token_field: str           # config field holding the image-context token id
    #: config.json fields whose values define what the model computes (verify compares them with the base).
    computation_fields: tuple[str, ...]
    image_tokens: ImageTokens
    #: Tokens the tokenizer names for transformers' processor (tokenizer_config.json attribute -> token).
    named_tokens: dict[str, str]
    #: Tokens a bare LLM's tokenizer gets added when composing from parts (all of the family's image tokens).
    new_tokens: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_select_layer: int        # vision hidden layer feeding the connector when nothing says otherwise
    #: InternVL reads layer -1 as the encoder's output (after any final norm); LLaVA always indexes the
    #: hidden-state list (before it): the two differ for towers with a post-norm (SigLIP).
    last_layer_is_output: bool
    pixel_shuffle: bool              # does the connector pixel-shuffle (else downsample_ratio is 1.0)
    default_downsample_ratio: float
    tiling_modes: tuple[str, ...]    # the data.tiling.mode values it trains with
    default_tiling: dict             # data.tiling for a directory that says nothing
    export_targets: tuple[str, ...]  # `vlft convert --to` values (vlft.export.targets)
    #: (LLM model_type, tokenizer) -> the template of a directory that names none.
    default_template: Callable[[str, object], str] = field(repr=False, default=None)
    #: preprocessor_config.json (dict) -> data.tiling, for a foreign "-hf" directory.
    tiling_from_preprocessor: Callable[[dict], dict] = field(repr=False, default=None)
    #: VLMInfo -> the family-specific keyword arguments of its official config class.
    config_fields: Callable[[object], dict] = field(repr=False, default=None)
    #: (VLMInfo, TilingSpec, common image-processor kwargs) -> (transformers image processor,
    #: processor_config.json dict, warnings): what its official processor needs to tile as training did.
    processor_files: Callable[[object, object, dict], tuple[object, dict, list[str]]] = field(repr=False,
                                                                                           default=None)
    #: (image processor, processor_config.json dict, PIL image) -> (its features, context tokens of the
    #: image), as the official processor computes them (what verify rebuilds the prompt with).
    processor_image_tokens: Callable[[object, dict, object], tuple[dict, int]] = field(repr=False, default=None)
    #: (image processor, processor_config.json dict, PIL image) -> (features, the text the processor puts in
    #: place of the image placeholder); None: start + context*count + end from processor_image_tokens.
    processor_image_text: Callable[[object, dict, object], tuple[dict, str]] | None = field(repr=False, default=None)
    #: Attribute names of the vision tower, connector and LLM inside the official class's ``.model``.
    official_parts: tuple[str, str, str] = ("vision_tower", "multi_modal_projector", "language_model")
    #: (official config) -> VLMInfo fields its config names otherwise (Idefics3's scale_factor ...); None: none.
    info_from_config: Callable[[object], dict] | None = field(repr=False, default=None)
    #: Its official class's connector module serves as vlft's as it is (else vlft's Connector, weights copied).
    keeps_official_connector: bool = False
    #: (stored prefix, vlft state-dict prefix) of its "-hf" weight files, where they are not LLaVA's names.
    stored_prefixes: tuple[tuple[str, str], ...] = ()
    #: Its official class takes pixels per sample ([batch, images, 3, S, S]), not as a flat tile list.
    pixels_per_sample: bool = False
    #: `--to gguf`: the export layout llama.cpp's convert_hf_to_gguf.py (--mmproj) reads for this family, or
    #: None when it reads none.
    gguf_layout: str | None = None
    #: (--to value, one line on why this family cannot be written in it: what the other tool lacks) pairs.
    export_refusals: tuple[tuple[str, str], ...] = ()

    def export_refusal(self, target: str) -> str | None:
        """Why ``--to target`` cannot write this family (what the target's tool lacks), or None."""
        return dict(self.export_refusals).get(target)

    @property
    def image_placeholder(self) -> str:
        """What the "-hf" chat template writes for an image: the token transformers' processor expands."""
        return self.image_tokens.context_token

    def processor_text(self, image_processor, processor: dict, image) -> tuple[dict, str]:
        """(features, text in place of the image placeholder) as transformers' processor computes them."""
        if self.processor_image_text is not None:
            return self.processor_image_text(image_processor, processor, image)
        features, count = self.processor_image_tokens(image_processor, processor, image)
        tokens = self.image_tokens
        return features, (tokens.start_token or "") + tokens.context_token * count + (tokens.end_token or "")

    def official_image_inputs(self, pixel_values):
        """vlft's [tiles, 3, S, S] pixels of one sample as its official class takes them."""
        return pixel_values[None] if self.pixels_per_sample else pixel_values

    def official_class(self):
        """transformers' class (resolved on demand: importing it costs seconds)."""
        import transformers

        return getattr(transformers, self.official_class_name)

    def config_class(self):
        import transformers

        return getattr(transformers, self.config_class_name)

    def official_class_available(self) -> bool:
        import transformers

        try:
            getattr(transformers, self.official_class_name)
            getattr(transformers, "AutoModelForImageTextToText")
        except (ImportError, AttributeError):
            return False
        return True
