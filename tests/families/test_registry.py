"""The family registry: each family is found by its name, its "-hf" config, its layout and its processor, and
says what the rest of vlft asks of it."""
import pytest

from vlft.families import (FAMILIES, INTERNVL, LLAVA, ImageTokens, family_named, family_of_config,
                           family_of_layout, family_of_processor)
from vlft.model.layouts import Layout
from vlft.specs import FAMILIES as SPEC_FAMILIES


@pytest.mark.parametrize("family", list(FAMILIES.values()), ids=list(FAMILIES))
def test_a_family_is_found_by_its_name_config_layout_and_processor(family):
    assert family_named(family.name) is family
    assert family_of_config({"model_type": family.name}) is family
    assert family_of_layout(Layout(family.hf_layout)) is family
    assert family_of_processor(family.processor_class_name) is family


def test_the_config_validation_knows_every_family():
    assert set(SPEC_FAMILIES) == set(FAMILIES)


@pytest.mark.parametrize("family", list(FAMILIES.values()), ids=list(FAMILIES))
def test_a_family_names_classes_transformers_has(family):
    import transformers

    assert family.official_class().__name__ == family.official_class_name
    assert family.config_class()().model_type == family.name
    assert family.official_class_available()
    assert family.image_tokens.context_token in family.new_tokens
    assert set(family.named_tokens.values()) <= set(family.new_tokens)
    assert hasattr(transformers, family.processor_class_name)


def test_the_internvl_chat_layout_is_internvl_and_unknown_configs_are_no_family():
    assert family_of_layout(Layout.INTERNVL_CHAT) is INTERNVL
    assert family_of_config({"model_type": "qwen2_vl"}) is None
    with pytest.raises(KeyError, match="unknown model family 'qwen'"):
        family_named("qwen")


def test_internvl_wraps_its_image_run_and_llava_does_not():
    assert INTERNVL.image_tokens == ImageTokens("<IMG_CONTEXT>", "<img>", "</img>") and INTERNVL.image_tokens.wraps
    assert LLAVA.image_tokens == ImageTokens("<image>") and not LLAVA.image_tokens.wraps
    assert INTERNVL.export_targets == ("hf", "internvl-chat", "lora", "gguf") and LLAVA.export_targets == ("hf", "lora")
    assert LLAVA.export_refusal("gguf") and INTERNVL.export_refusal("gguf") is None


@pytest.mark.battery("model-dirs", was="traceback")
@pytest.mark.parametrize("model_type, name", [("qwen2_vl", "Qwen2-VL"), ("qwen2_5_vl", "Qwen2.5-VL")])
def test_a_qwen_vl_directory_is_one_line_saying_it_is_out_of_scope(tmp_path, model_type, name):
    import json

    from vlft.errors import CheckpointError
    from vlft.model.layouts import detect_layout

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(CheckpointError, match=f"a {name} model \\(model_type '{model_type}'\\), which is out of "
                                              "vlft's scope") as caught:
        detect_layout(tmp_path)
    assert "\n" not in str(caught.value)


#: Files where a family's name may be written as a string: the families themselves, the config validation,
#: and two strings that are no family branch: data-format names ("llava" rows) and transformers' InternVLConfig
#: model_type, which the InternVL-chat config mapping writes.
_NAME_ALLOWED = ("families/", "specs.py", "data/readers/llava.py")   # readers/llava.py: the LLaVA data format


def test_no_module_outside_the_families_branches_on_a_family_name():
    import io
    import tokenize
    from pathlib import Path

    import vlft

    root = Path(vlft.__file__).parent
    names = {f'"{family}"' for family in ("internvl", "llava")} | {f"'{family}'" for family in ("internvl", "llava")}
    found = []
    for path in sorted(root.rglob("*.py")):
        where = path.relative_to(root).as_posix()
        if where.startswith(_NAME_ALLOWED):
            continue
        for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if token.type == tokenize.STRING and token.string in names:
                found.append(f"vlft/{where}:{token.start[0]}: {token.string}")
    assert not found, "ask vlft.families instead: " + "; ".join(found)
