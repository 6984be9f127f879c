"""Every published LoRA layout converts to the same weight change; everything else is refused with a reason."""

import json

import pytest
import torch
from safetensors.torch import save_file

from kleinserve_engine.errors import InvalidRequest
from kleinserve_engine.lora.adapter import AdapterLimits, linear_shapes, parse, read
from kleinserve_engine.lora.formats import FormatError, Resolver, canonical
from kleinserve_engine.lora.spec import InvalidLora, parse_loras
from lora_factory import LAYOUTS, expected_deltas, random_lora, state_dict


@pytest.fixture(scope="module")
def shapes(model):
    return linear_shapes(model.transformer)


@pytest.fixture(scope="module")
def resolver(shapes):
    return Resolver(shapes)


def deltas(converted):
    return {name: d.scale * d.up @ d.down for name, d in converted.items()}


def assert_same_change(got, want):
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("alpha", [None, 2.0])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_gives_the_same_weight_change(model, resolver, layout, alpha):
    lora = random_lora(model.transformer, rank=4, alpha=alpha, seed=3)
    sd, meta = state_dict(lora, layout)
    converted = canonical(sd, meta, resolver)
    assert_same_change(deltas(converted), expected_deltas(lora))
    if layout in ("bfl", "kohya", "ai-toolkit-bfl"):
        # the fused qkv became three projections sharing one down matrix
        q, k = converted["transformer_blocks.0.attn.to_q"], converted["transformer_blocks.0.attn.to_k"]
        assert q.down.data_ptr() == k.down.data_ptr() and q.up.shape == (32, 4)


def test_kohya_with_diffusers_module_names(model, resolver):
    lora = random_lora(model.transformer, rank=2, alpha=1.0, seed=4, modules={"single_blocks.1.linear1", "img_in"})
    sd = {}
    for bfl, target in (("single_blocks.1.linear1", "single_transformer_blocks.1.attn.to_qkv_mlp_proj"), ("img_in", "x_embedder")):
        down, up = lora["weights"][bfl]
        stem = "lora_transformer_" + target.replace(".", "_")
        sd.update({f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up, f"{stem}.alpha": torch.tensor(1.0)})
    assert_same_change(deltas(canonical(sd, None, resolver)), expected_deltas(lora))


def test_peft_prefix_adapter_name_and_metadata_patterns(resolver):
    g = torch.Generator().manual_seed(5)
    down, up = torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g)
    sd = {"base_model.model.transformer_blocks.1.attn.to_v.lora_A.default.weight": down,
          "base_model.model.transformer_blocks.1.attn.to_v.lora_B.default.weight": up,
          "base_model.model.proj_out.lora_A.default.weight": torch.randn(4, 32, generator=g),
          "base_model.model.proj_out.lora_B.default.weight": torch.randn(128, 4, generator=g)}
    # PEFT config saved without the transformer. prefix (transformer.save_lora_adapter does that)
    meta = {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 8, "alpha_pattern": {"proj_out": 2}})}
    got = canonical(sd, meta, resolver)
    assert got["transformer_blocks.1.attn.to_v"].scale == 2.0 and got["proj_out"].scale == 0.5
    rs = canonical(sd, {"lora_adapter_metadata": json.dumps({"transformer.lora_alpha": 8, "transformer.use_rslora": True})}, resolver)
    assert rs["proj_out"].scale == 4.0  # alpha / sqrt(r)


def test_bfl_final_modulation_swaps_shift_and_scale(resolver):
    down, up = torch.randn(2, 32), torch.randn(64, 2)
    got = canonical({"final_layer.adaLN_modulation.1.lora_A.weight": down, "final_layer.adaLN_modulation.1.lora_B.weight": up},
                    None, resolver)["norm_out.linear"]
    # BFL emits (shift, scale); diffusers' norm_out (scale, shift), as the base-weight conversion swaps them
    assert torch.equal(got.up[:32], up[32:]) and torch.equal(got.up[32:], up[:32])


@pytest.mark.parametrize("keys,reason", [
    ({"transformer.proj_out.lora_A.weight": (2, 32), "transformer.proj_out.lora_B.weight": (128, 2),
      "transformer.proj_out.lora_magnitude_vector": (128,)}, "unsupported"),
    ({"lycoris_proj_out.lokr_w1": (2, 2)}, "unsupported"),
    ({"text_encoder.layers.0.q.lora_A.weight": (2, 32), "text_encoder.layers.0.q.lora_B.weight": (32, 2)}, "unsupported"),
    ({"double_blocks.0.img_attn.qkv.weight": (96, 32)}, "not_a_lora"),
    ({"transformer.proj_out.lora_A.weight": (2, 32)}, "not_a_lora"),
    ({"transformer.proj_out.lora_A.weight": (2, 32), "transformer.proj_out.lora_B.weight": (128, 3)}, "not_a_lora"),
    ({"transformer.transformer_blocks.9.attn.to_q.lora_A.weight": (2, 32),
      "transformer.transformer_blocks.9.attn.to_q.lora_B.weight": (32, 2)}, "no_matching_module"),
    ({"transformer.proj_out.lora_A.weight": (2, 32), "transformer.proj_out.lora_B.weight": (128, 2),
      "transformer.single_transformer_blocks.5.attn.to_out.lora_A.weight": (2, 128),
      "transformer.single_transformer_blocks.5.attn.to_out.lora_B.weight": (32, 2)}, "no_matching_module"),
    ({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (2, 32),
      "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": (32, 2),
      "double_blocks.0.img_attn.qkv.lora_A.weight": (2, 32), "double_blocks.0.img_attn.qkv.lora_B.weight": (96, 2)}, "not_a_lora"),
], ids=["dora", "lokr", "text-encoder", "full-weights", "no-pair", "rank-disagrees", "missing-block", "partly-other-model",
        "module-twice"])
def test_refused_state_dicts(resolver, keys, reason):
    sd = {k: torch.zeros(shape) for k, shape in keys.items()}
    with pytest.raises(FormatError) as err:
        canonical(sd, None, resolver)
    assert err.value.reason == reason, err.value.message
    if reason == "no_matching_module" and len(keys) > 2:
        assert "1 of 2 modules" in err.value.message


def _parse_file(path, shapes, resolver, limits=AdapterLimits()):
    data, sha = read(str(path), 2, limits)
    return parse(data, 2, shapes, resolver, limits, torch.float32, sha)


def test_file_level_refusals(tmp_path, model, shapes, resolver):
    pickled = tmp_path / "lora.pt"
    torch.save({"transformer.proj_out.lora_A.weight": torch.zeros(2, 32)}, pickled)
    with pytest.raises(InvalidLora) as err:
        _parse_file(pickled, shapes, resolver)
    assert (err.value.reason, err.value.field) == ("not_a_lora", "loras[2].path")

    wide = tmp_path / "wide.safetensors"  # an adapter for a model with hidden size 64
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 64),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(64, 2)}, str(wide))
    with pytest.raises(InvalidLora) as err:
        _parse_file(wide, shapes, resolver)
    assert err.value.reason == "shape_mismatch" and "32 -> 32" in err.value.message

    high = tmp_path / "high.safetensors"
    sd, meta = state_dict(random_lora(model.transformer, rank=8, seed=1, modules={"img_in"}), "diffusers")
    save_file(sd, str(high), metadata=meta)
    with pytest.raises(InvalidLora) as err:
        _parse_file(high, shapes, resolver, AdapterLimits(max_rank=4))
    assert err.value.reason == "rank_too_large"
    with pytest.raises(InvalidLora) as err:
        _parse_file(high, shapes, resolver, AdapterLimits(max_bytes=100))
    assert err.value.reason == "too_large"
    with pytest.raises(InvalidLora) as err:
        _parse_file(tmp_path / "absent.safetensors", shapes, resolver)
    assert err.value.reason == "unreadable"
    with pytest.raises(InvalidLora) as err:
        _parse_file(tmp_path, shapes, resolver)  # a directory
    assert err.value.reason == "unreadable"


def test_stored_in_the_model_dtype_with_shared_downs(tmp_path, model, shapes, resolver):
    path = tmp_path / "bf16.safetensors"
    sd, _ = state_dict(random_lora(model.transformer, rank=4, seed=2), "bfl")
    save_file(sd, str(path))
    data, sha = read(str(path), 0, AdapterLimits())
    a = parse(data, 0, shapes, resolver, AdapterLimits(), torch.bfloat16, sha)
    assert all(d.down.dtype == torch.bfloat16 and d.up.dtype == torch.bfloat16 for d in a.modules.values())
    assert a.modules["transformer_blocks.1.attn.to_q"].down is a.modules["transformer_blocks.1.attn.to_v"].down
    per_tensor = sum(t.numel() * 2 for t in {id(t): t for d in a.modules.values() for t in (d.down, d.up)}.values())
    assert a.nbytes == per_tensor and a.rank == 4 and len(a.sha256) == 64


@pytest.mark.parametrize("value,field", [
    ("x", "loras"), ([{"path": "a"}] * 4, "loras"), (["a"], "loras[0]"), ([{"path": ""}], "loras[0].path"),
    ([{"path": 3}], "loras[0].path"), ([{"path": "a", "scale": "1"}], "loras[0].scale"),
    ([{"path": "a", "scale": 4.5}], "loras[0].scale"), ([{"path": "a", "scale": True}], "loras[0].scale"),
    ([{"path": "a"}, {"path": "b", "sha256": "ABC"}], "loras[1].sha256"),
])
def test_wire_form_refusals(value, field):
    with pytest.raises(InvalidRequest) as err:
        parse_loras(value)
    assert err.value.field == field


def test_wire_form_defaults():
    assert parse_loras(None) == []
    (spec,) = parse_loras([{"path": "/x.safetensors", "sha256": "a" * 64}])
    assert spec.scale == 1.0 and spec.sha256 == "a" * 64
