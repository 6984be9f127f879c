"""Fused QKV projections (fused_qkv.py, --fuse-qkv) against the separate ones on the tiny model (fp32, CPU).

One matmul of the concatenated weights computes each output element from the same products as the separate
matmul, summed in a possibly different order: equal within float rounding, not bit-equal.
"""

import numpy as np
import pytest
import torch

from conftest import make_job, random_image
from kleinserve_engine.lora.spec import LoraSpec
from lora_factory import random_lora, write

QKV = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")


def engine_with(model, **fastpath):
    from kleinserve_engine.fastpath import FastPathOptions
    from kleinserve_engine.pipeline import Engine, EngineOptions

    return Engine(model, EngineOptions(fastpath=FastPathOptions.for_device("cpu", **fastpath), prompt_cache_mb=0, ref_cache_mb=0))


def pixels(engine, loras=(), seeds=(5,)):
    job = make_job([random_image(80, 64, 3)], prompt="fused projections", seeds=list(seeds), steps=2, output_format="png")
    job.loras = engine.adapters.resolve([LoraSpec(str(p), None, s) for p, s in loras])
    out = engine.run_batch([job])[0]
    assert not isinstance(out, Exception), out
    return np.stack(out.pixels).astype(int)


def denoiser_inputs(model, batch=2, h=4, w=6, seed=0):
    from kleinserve_engine import latents as L

    g = torch.Generator().manual_seed(seed)
    cfg = model.transformer.config
    hidden = torch.randn(batch, 2 * h * w, cfg.in_channels, generator=g)
    text = torch.randn(batch, 512, cfg.joint_attention_dim, generator=g)
    ids = torch.cat([L.output_ids(h, w), L.reference_ids([(h, w)])])
    return hidden, text, torch.full((batch,), 0.7), ids, L.text_ids(512)


def assert_close_fp32(fused, separate):
    err = float((fused - separate).abs().max() / separate.abs().max())
    print(f"fused vs separate projections: max abs difference {err:.2e} of the output's range")
    assert err < 1e-5


def test_the_loaded_transformer_keeps_its_separate_projections_and_shares_their_weights(model):
    from kleinserve_engine.fused_qkv import fused_modules, fused_parts

    names = {n for n, _ in model.transformer.named_modules()}
    eng = engine_with(model, fuse_qkv=True)
    view = eng.model.transformer
    assert view is not model.transformer and eng.denoiser.transformer is view
    assert {n for n, _ in model.transformer.named_modules()} == names  # nothing added to the loaded model
    for block, fused_block in zip(model.transformer.transformer_blocks, view.transformer_blocks):
        attn, fused = block.attn, fused_block.attn
        assert not attn.fused_projections and "to_qkv" not in attn._modules and fused.fused_projections
        # one copy of the weights: each projection's rows are a view into the fused weight, in q, k, v order
        for name, parts in (("to_qkv", QKV[:3]), ("to_added_qkv", QKV[3:])):
            w = getattr(fused, name).weight
            for i, part in enumerate(parts):
                sep = getattr(attn, part).weight
                assert sep.untyped_storage().data_ptr() == w.untyped_storage().data_ptr()
                assert torch.equal(sep, w[i * sep.shape[0] : (i + 1) * sep.shape[0]])
    assert view.single_transformer_blocks is model.transformer.single_transformer_blocks  # already fused with the MLP
    inner = model.transformer.transformer_blocks[1].attn.to_q.out_features
    assert fused_parts(view)["transformer_blocks.1.attn.to_k"] == ("transformer_blocks.1.attn.to_qkv", inner)
    assert fused_modules(view) == {f"transformer_blocks.{i}.attn.{n}" for i in range(2) for n in ("to_qkv", "to_added_qkv")}
    assert fused_parts(model.transformer) == {}


def test_fused_output_equals_separate_within_float_rounding(model):
    eager, fused = engine_with(model), engine_with(model, fuse_qkv=True)
    args = denoiser_inputs(model)
    calls = []
    hook = fused.model.transformer.transformer_blocks[0].attn.to_qkv.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.inference_mode():
            assert_close_fp32(fused.denoiser(*args), eager.denoiser(*args))
    finally:
        hook.remove()
    assert calls, "the fused Linear never ran"
    diff = int(np.abs(pixels(eager) - pixels(fused)).max())
    print(f"fused vs separate projections: max abs pixel difference {diff}/255")
    assert diff <= 1


@pytest.mark.parametrize("layout", ["diffusers", "bfl"])
def test_lora_on_separate_projections_applies_to_the_fused_output(model, tmp_path, layout):
    """diffusers files carry to_q/to_k/to_v with a down each; BFL's fused qkv shares one down between the three."""
    lora = random_lora(model.transformer, rank=4, alpha=2.0, seed=31, magnitude=1.0)
    path = write(lora, layout, tmp_path / f"{layout}.safetensors")
    eager, fused = engine_with(model), engine_with(model, fuse_qkv=True)
    assert eager.adapters.shapes == fused.adapters.shapes  # the names an adapter may use do not change
    for eng in (eager, fused):
        adapter = eng.adapters.resolve([LoraSpec(str(path), None, 0.8)])
        assert any(n.endswith(p) for n in adapter[0][0].modules for p in QKV)
    args = denoiser_inputs(model, batch=3)
    outs = []
    for eng in (eager, fused):
        rows = [eng.adapters.resolve([LoraSpec(str(path), None, 0.8)]), [], eng.adapters.resolve([LoraSpec(str(path), None, 0.8)])]
        with torch.inference_mode(), eng.lora.active(rows):
            outs.append(eng.denoiser(*args))
        with torch.inference_mode(), eng.lora.active([rows[0]] * 3):  # every row alike: the shared-matrix path
            outs.append(eng.denoiser(*args))
    assert_close_fp32(outs[2], outs[0])
    assert_close_fp32(outs[3], outs[1])
    with torch.inference_mode():
        base = eager.denoiser(*args)
    assert float((outs[0][0] - base[0]).abs().max()) > 1e-2, "the adapter changed nothing: the test would prove nothing"
    assert torch.equal(outs[2][1], fused.denoiser(*args)[1])  # the row without an adapter: exact zeros added
    with_lora = pixels(fused, [(path, 0.8)])
    assert int(np.abs(pixels(eager, [(path, 0.8)]) - with_lora).max()) <= 1
    assert int(np.abs(pixels(fused) - with_lora).max()) > 8


def test_fp8_quantizes_the_fused_linears_and_not_the_projections_they_replace(model):
    from kleinserve_engine.fastpath import fp8_filter, fp8_target

    view = engine_with(model, fuse_qkv=True).model.transformer
    keep = fp8_filter(view)
    chosen = {fqn for fqn, m in view.named_modules() if keep(m, fqn)}
    assert {"transformer_blocks.0.attn.to_qkv", "transformer_blocks.1.attn.to_added_qkv"} <= chosen
    assert not any(fqn.rsplit(".", 1)[-1] in QKV and fqn.startswith("transformer_blocks.") for fqn in chosen)
    unfused = {fqn for fqn, m in model.transformer.named_modules() if fp8_target(m, fqn)}
    assert chosen == (unfused - {f for f in unfused if f.rsplit(".", 1)[-1] in QKV and f.startswith("transformer_blocks.")}) | {
        f"transformer_blocks.{i}.attn.{n}" for i in range(2) for n in ("to_qkv", "to_added_qkv")}


@pytest.mark.slow
def test_compiled_fused_engine_with_loras_equals_eager_fused(tiny_dir, tmp_path):
    """Compiled, the LoRA hooks sit on the fused Linears before the first call (lora/rows.py)."""
    from kleinserve_engine.loading import load

    model = load(str(tiny_dir), device="cpu")  # its own copy: the compiled engine's hooks stay on its modules
    path = write(random_lora(model.transformer, rank=4, seed=32), "bfl", tmp_path / "a.safetensors")
    eager = engine_with(model, fuse_qkv=True)
    fast = engine_with(model, fuse_qkv=True, compile=True, compile_backend="aot_eager")
    assert int(np.abs(pixels(eager) - pixels(fast)).max()) == 0
    with_lora = pixels(fast, [(path, 0.9)])
    assert int(np.abs(pixels(eager, [(path, 0.9)]) - with_lora).max()) <= 1  # ranks padded to 16 when compiled
    assert int(np.abs(pixels(fast) - with_lora).max()) > 8
