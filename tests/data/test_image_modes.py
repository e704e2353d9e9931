"""Images as users have them: 16-bit PNGs, EXIF-rotated photos, CMYK, palette and alpha, without silent damage."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlft.config import load_config
from vlft.data.dataset import build_dataset
from vlft.data.preflight import format_report
from vlft.data.tiling import TilingSpec, load_image, num_tiles, read_image_header, tiles_for_image
from vlft.engine.check_data import check_spec_data
from vlft.model.facts import model_facts


def _grey16(path, levels):
    Image.fromarray(np.array([levels], dtype=np.uint16)).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"  # what Pillow makes of a 16-bit grey PNG
    return path


@pytest.mark.battery("images", was="silent")
def test_a_16_bit_png_loads_as_the_right_grey_levels_not_white(tmp_path):
    path = _grey16(tmp_path / "g16.png", [0, 257 * 10, 32768, 65535, 257 * 200])
    pixels = np.asarray(load_image(path))
    assert pixels.shape == (1, 5, 3)
    assert pixels[0, :, 0].tolist() == [0, 10, 128, 255, 200] and (pixels == pixels[..., :1]).all()


def _exif_rotated(path, orientation=6, size=(120, 60)):
    """A landscape JPEG whose EXIF says: show me rotated (6: turn 90 degrees clockwise)."""
    image = Image.new("RGB", size, (250, 0, 0))
    image.paste((0, 0, 250), (0, 0, size[0] // 4, size[1]))  # a blue band on the left edge
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, quality=95)
    return path


@pytest.mark.battery("images", was="silent")
def test_an_exif_rotated_photo_is_trained_upright_with_tiles_counted_from_the_upright_size(tmp_path):
    path = _exif_rotated(tmp_path / "phone.jpg")
    header = read_image_header(path)
    assert (header.width, header.height, header.orientation, header.rotated) == (60, 120, 6, True)
    image = load_image(path)
    assert image.size == (60, 120)
    top = np.asarray(image)[:10].mean(axis=(0, 1))
    assert top[2] > 200 and top[0] < 60  # the left band is on top now, as a viewer shows it
    spec = TilingSpec(tile_size=28, max_tiles=6)
    tiles = tiles_for_image(image, spec)
    assert len(tiles) == num_tiles(header.width, header.height, spec)
    with Image.open(path) as raw:
        assert torch.equal(tiles, tiles_for_image(raw.convert("RGB").transpose(Image.Transpose.ROTATE_270), spec))


def test_alpha_and_transparent_palettes_are_composited_on_white_as_the_exported_processor_does(tmp_path):
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 255, 0, 255))
    rgba.save(tmp_path / "a.png")
    pixels = np.asarray(load_image(tmp_path / "a.png"))
    assert pixels[0, 0].tolist() == [0, 255, 0] and pixels[1, 1].tolist() == [255, 255, 255]

    palette = Image.new("P", (3, 1))
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(load_image(tmp_path / "p.png"))[0].tolist() == [[255, 255, 255], [10, 20, 30], [255, 255, 255]]

    from transformers.image_transforms import convert_to_rgb
    for name in ("a.png", "p.png"):
        with Image.open(tmp_path / name) as original:
            assert np.array_equal(np.asarray(load_image(tmp_path / name)), convert_to_rgb(original, return_numpy=True))


def test_cmyk_and_opaque_palette_images_convert_as_pillow_does(tmp_path):
    cmyk = Image.new("CMYK", (5, 3), (10, 200, 30, 40))
    cmyk.save(tmp_path / "c.jpg", quality=100)
    with Image.open(tmp_path / "c.jpg") as original:
        assert original.mode == "CMYK"
        assert np.array_equal(np.asarray(load_image(tmp_path / "c.jpg")), np.asarray(original.convert("RGB")))
    Image.new("RGB", (5, 3), (30, 60, 90)).convert("P").save(tmp_path / "p.gif")
    with Image.open(tmp_path / "p.gif") as original:
        assert np.array_equal(np.asarray(load_image(tmp_path / "p.gif")), np.asarray(original.convert("RGB")))


def _config(tmp_path, model, rows):
    (tmp_path / "d.json").write_text(json.dumps(rows))
    cfg = tmp_path / "c.py"
    cfg.write_text(f"model = dict(family='internvl', path={str(model)!r})\n"
                   f"data = dict(datasets=[dict(path={str(tmp_path / 'd.json')!r})], template='internvl2_5', "
                   "tiling=dict(mode='dynamic', max_tiles=4), max_length=256)\n"
                   "schedule = dict(micro_batch_size=2, seed=0)\n")
    return str(cfg)


def _row(sample_id, image):
    return {"id": sample_id, "image": image,
            "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "grey"}]}


@pytest.mark.battery("images", was="silent")
def test_a_16_bit_png_trains_as_the_same_pixels_as_its_8_bit_twin(tmp_path, tiny_dir):
    levels = np.linspace(0, 65535, 120 * 60).reshape(60, 120).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "g16.png")
    Image.fromarray(((levels.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8), "L").save(tmp_path / "g8.png")
    spec = load_config(_config(tmp_path, tiny_dir["internvl_hf"], [_row("sixteen", "g16.png"), _row("eight", "g8.png")]))
    info, tokenizer = model_facts(spec.model)
    dataset = build_dataset(spec, tokenizer, info)
    sixteen, eight = dataset[0]["pixel_values"], dataset[1]["pixel_values"]
    assert sixteen.shape[0] > 1 and torch.equal(sixteen, eight)
    assert sixteen.std() > 0.5  # a ramp, not a white sheet


@pytest.mark.battery("images", was="silent")
def test_check_data_says_how_many_images_carry_a_rotation(tmp_path, tiny_dir):
    _exif_rotated(tmp_path / "phone.jpg")
    _exif_rotated(tmp_path / "plain.jpg", orientation=1)
    cfg = _config(tmp_path, tiny_dir["internvl_hf"], [_row("a", "phone.jpg"), _row("b", "plain.jpg"),
                                                      _row("c", "phone.jpg")])
    report = check_spec_data(load_config(cfg), config=cfg)
    assert report.images_rotated == 1 and report.exit_code == 0
    assert "  1 image carry an EXIF rotation: trained upright" in format_report(report)
    spec = load_config(cfg)
    info, tokenizer = model_facts(spec.model)
    dataset = build_dataset(spec, tokenizer, info)
    spec_tiles = dataset.pipeline.tiling
    assert dataset.tiles[0] == num_tiles(60, 120, spec_tiles) and dataset[0]["pixel_values"].shape[0] == dataset.tiles[0]
