"""Training-time samples: fixed prompts answered every engine.sample_every steps (XTuner's chat hook)."""
from __future__ import annotations

from pathlib import Path

import torch

from vlft.data.prompt import generation_prompt, stop_kwargs
from vlft.data.record import IMAGE_PLACEHOLDER, Turn
from vlft.data.tiling import load_image, tiles_for_image
from vlft.errors import ConfigError
from vlft.specs import ExperimentSpec


def generate_samples(model, pipeline, spec: ExperimentSpec, device) -> list[tuple[str, str]]:
    """Greedy answers to engine.sample_prompts, so a user watches the model learn (XTuner's chat hook)."""
    tokenizer = pipeline.tokenizer
    stops = stop_kwargs(tokenizer, pipeline.template)  # the rule chat, eval and the export share
    answers = []
    was_training = model.training
    model.eval()
    for sample in spec.engine.sample_prompts:
        text, pixels, tiles, sizes, extra = sample.prompt, None, [], None, {}
        if sample.image:
            image = load_image(sample.image)
            pixels = tiles_for_image(image, pipeline.tiling).to(device)
            tiles, sizes = [pixels.shape[0]], [image.size]
            # AnyRes families count and place image tokens by the image's size; the others ignore it
            extra = {"image_sizes": torch.tensor([[image.height, image.width]], device=device)}
            if IMAGE_PLACEHOLDER not in text:
                text = f"{IMAGE_PLACEHOLDER}\n{text}"
        ids = generation_prompt(pipeline, [Turn("user", text)], tiles, image_sizes=sizes)
        new = model.generate(torch.tensor([ids], device=device), pixel_values=pixels, do_sample=False,
                             max_new_tokens=spec.engine.sample_max_new_tokens, **stops, **extra,
                             pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        answers.append((sample.prompt, tokenizer.decode(new[0], skip_special_tokens=True).strip()))
    model.train(was_training)
    return answers


def check_sample_prompts(spec: ExperimentSpec) -> None:
    for i, sample in enumerate(spec.engine.sample_prompts):
        if sample.image and not Path(sample.image).is_file():
            raise ConfigError(f"engine.sample_prompts[{i}].image={sample.image}: no such file")
