"""`vlft convert --verify` compares the exported config with the base's, field by field, for the fields that
define the family's computation, and names the first that differs."""
import json
import shutil

import pytest

from vlft.export.verify import VerifyError, check_computation_fields
from vlft.tiny.checkpoints import make_tiny_internvl_hf, make_tiny_llava_hf


@pytest.fixture(scope="module")
def llava_full(tmp_path_factory):
    return make_tiny_llava_hf(tmp_path_factory.mktemp("fields") / "llava", vision="siglip", select_strategy="full",
                              feature_layer=-1)


def _copy_with(base, out, **changes):
    shutil.copytree(base, out)
    config = json.loads((out / "config.json").read_text())
    config.update(changes)
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_an_export_with_the_bases_fields_passes_and_lists_them(llava_full, tmp_path):
    compared = check_computation_fields(_copy_with(llava_full, tmp_path / "out"), llava_full, "llava")
    assert set(compared) == {"vision_feature_select_strategy", "vision_feature_layer", "image_seq_length",
                             "image_token_index"}


@pytest.mark.battery("checkpoints", was="silent")
@pytest.mark.parametrize("field, value", [("vision_feature_select_strategy", "default"), ("image_seq_length", 15),
                                          ("vision_feature_layer", -2)])
def test_an_export_that_rewrites_a_computation_field_fails_naming_it(llava_full, tmp_path, field, value):
    out = _copy_with(llava_full, tmp_path / "out", **{field: value})
    with pytest.raises(VerifyError, match=f"config.json: {field}={value!r}, but the base .* has"):
        check_computation_fields(out, llava_full, "llava")


def test_a_layer_the_run_chose_is_expected_instead_of_the_bases(llava_full, tmp_path):
    out = _copy_with(llava_full, tmp_path / "out", vision_feature_layer=-2)
    assert "vision_feature_layer" in check_computation_fields(out, llava_full, "llava",
                                                              overrides={"vision_feature_layer": -2})


def test_internvl_compares_its_pixel_shuffle_ratio(tmp_path):
    base = make_tiny_internvl_hf(tmp_path / "base")
    out = _copy_with(base, tmp_path / "out", downsample_ratio=1.0)
    with pytest.raises(VerifyError, match="downsample_ratio=1.0"):
        check_computation_fields(out, base, "internvl")


def test_a_base_composed_from_parts_or_gone_is_not_compared(llava_full, tmp_path):
    assert check_computation_fields(llava_full, None, "llava") == []
    assert check_computation_fields(llava_full, tmp_path / "moved", "llava") == []
