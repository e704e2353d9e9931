"""The composed VLM: vision tower -> connector -> image features scattered into the LLM's embeddings."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from vlft.data.anyres_grid import AnyResGrid
from vlft.errors import DataError
from vlft.families import family_named


class ModelInputError(DataError):
    """An input the model cannot compute on (image tokens that do not match the images, an id past the
    vocabulary, a shape the tower refuses), raised from inside forward/generate as one line."""


@dataclass(frozen=True)
class VLMInfo:
    """What the rest of vlft needs to know about a built model, independent of its file layout."""

    family: str               # a `vlft.families` name
    image_token_id: int       # the context token whose embeddings image features replace
    select_layer: int         # hidden layer of the vision tower that feeds the connector
    downsample_ratio: float   # pixel-shuffle ratio (1.0: none)
    tile_size: int            # vision input side in pixels
    patch_size: int
    #: transformers' vision_feature_select_strategy: "default" drops the first token (the CLS token of
    #: CLIP/InternViT; a patch for a CLS-less SigLIP, exactly as the official classes do), "full" keeps all.
    select_strategy: str = "default"
    prefix_tokens: int = 1    # tokens the tower puts before its patches (CLS: 1; SigLIP: 0)
    #: InternVL's pixel-shuffle order: "v2" (transformers'), or "v1" (InternVL-Chat-V1-5, original layout only).
    ps_version: str = "v2"
    #: AnyRes families (LLaVA-NeXT / OneVision): the config's image_grid_pinpoints, (height, width) each; ()
    #: for one fixed-size image per placeholder. Their image tokens depend on the image size (vlft.data.anyres_grid).
    grid_pinpoints: tuple = ()
    #: OneVision's "anyres_max_N" feature budget in tiles (None: LLaVA-NeXT, no budget).
    anyres_max_tiles: int | None = None
    #: The base's pixel normalisation (its preprocessor_config.json, else its tower's usual values; see
    #: vlft.model.normalisation); None: the family's (vlft.families.normalisation_of).
    image_mean: tuple | None = None
    image_std: tuple | None = None

    @property
    def anyres(self) -> AnyResGrid | None:
        if not self.grid_pinpoints:
            return None
        return AnyResGrid(tuple(tuple(p) for p in self.grid_pinpoints), self.tile_size, self.patch_size,
                          self.anyres_max_tiles)

    @property
    def tokens_per_tile(self) -> int:
        side = self.tile_size // self.patch_size
        if self.downsample_ratio != 1.0:  # pixel shuffle needs the square patch grid
            return int(side * self.downsample_ratio) ** 2
        return side * side + self.prefix_tokens - (self.select_strategy == "default")


class VisionLanguageModel(nn.Module):
    """One module for every family: `vision_tower`, `multi_modal_projector`, `language_model` (a CausalLM).

    The state-dict keys equal those transformers writes for InternVL/LLaVA "-hf" checkpoints, so the
    native layout needs no key map.
    """

    def __init__(self, vision_tower: nn.Module, multi_modal_projector: nn.Module, language_model: nn.Module,
                 info: VLMInfo):
        super().__init__()
        self.vision_tower = vision_tower
        self.multi_modal_projector = multi_modal_projector
        self.language_model = language_model
        self.info = info

    @property
    def device(self) -> torch.device:
        return next(self.multi_modal_projector.parameters()).device

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[tiles, 3, S, S] -> [tiles, tokens_per_tile, D_text]."""
        dtype = next(self.multi_modal_projector.parameters()).dtype
        # InternVL reads layer -1 as the encoder's output; LLaVA always indexes the hidden-state list.
        last = family_named(self.info.family).last_layer_is_output and self.info.select_layer == -1
        out = self.vision_tower(pixel_values=pixel_values.to(dtype), output_hidden_states=not last, return_dict=True)
        features = out.last_hidden_state if last else out.hidden_states[self.info.select_layer]
        if self.info.select_strategy == "default":
            features = features[:, 1:, :]  # [tiles, tokens, Dv]: the CLS token (the first token) dropped
        return self.multi_modal_projector(features)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
              image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the image-token slots replaced by image features, in order.

        image_sizes: [images, 2] (height, width) of each original image; AnyRes models need it (the grid and
        its unpadding follow the image size, as in transformers' LLaVA-NeXT)."""
        embeds = self.language_model.get_input_embeddings()(input_ids)  # [B, T, D]
        slots = input_ids == self.info.image_token_id
        n_slots = int(slots.sum())
        if pixel_values is None or pixel_values.numel() == 0:
            if n_slots:
                raise ModelInputError(f"{n_slots} image tokens in the input but no pixel values")
            return embeds
        features = self.encode_images(pixel_values)
        if self.info.anyres is not None:
            if image_sizes is None:
                raise ModelInputError("an AnyRes model needs image_sizes (height, width of each image) with its "
                                      "pixel values")
            features = self.info.anyres.pack(features, image_sizes.tolist(), self.multi_modal_projector.image_newline)
        features = features.reshape(-1, embeds.shape[-1])
        if features.shape[0] != n_slots:
            raise ModelInputError(
                f"image features ({features.shape[0]} tokens from {pixel_values.shape[0]} tiles of "
                f"{self.info.tokens_per_tile}) and image tokens in the text ({n_slots}) differ: the prompt was "
                "not built for this model's tiling (build it with the model's data pipeline)")
        return embeds.masked_scatter(slots.unsqueeze(-1), features.to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, image_sizes: torch.Tensor | None = None, **kwargs):
        with _one_line_errors():
            inputs_embeds = self.embed(input_ids, pixel_values, image_sizes)
            return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                       position_ids=position_ids, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_sizes: torch.Tensor | None = None,
                 **generate_kwargs) -> torch.Tensor:
        """Returns only the new tokens, [B, new]."""
        with _one_line_errors():
            inputs_embeds = self.embed(input_ids, pixel_values, image_sizes)
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            return self.language_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                                **generate_kwargs)


@contextmanager
def _one_line_errors():
    """ValueError / IndexError from inside the model (transformers' shape and id checks, an embedding index
    past the vocabulary) become ModelInputError, which train, chat and eval print as one line. Out of memory
    and other RuntimeErrors pass unchanged: they are not the input's fault."""
    try:
        yield
    except ModelInputError:
        raise
    except (ValueError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelInputError(f"the model cannot compute on this input ({type(exc).__name__}: {first})") from exc
