"""The compiled VAE and text encoder (compiled_components.py) against the eager ones on the tiny model.

Default run: the text encoder with `aot_eager`, cut to one layer read three times (the transformer wants three
layers' worth of features) so tracing takes seconds, through warm-up; the VAE view's wiring. Slow: the VAE compiled
and run (dynamic-shape tracing of the VAE takes ~20 s on 2 cores), and inductor. The VAE is captured with dynamo's
`eager` backend: with `aot_eager`, torch 2.13's CPU trace of the VAE's attention block hands the group-norm kernel a
tensor it refuses as non-contiguous (eager, and inductor, which decomposes the group norm, are fine).
"""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from conftest import make_job, random_image


def engine_with(model, **fastpath):
    from kleinserve_engine.fastpath import FastPathOptions
    from kleinserve_engine.pipeline import Engine, EngineOptions

    return Engine(model, EngineOptions(fastpath=FastPathOptions.for_device("cpu", **fastpath), prompt_cache_mb=0, ref_cache_mb=0))


def image(engine, refs=((64, 64),), prompt="compile the vae", seeds=(11,), size=None):
    job = make_job([random_image(w, h, 8 + i) for i, (w, h) in enumerate(refs)], prompt=prompt, seeds=list(seeds), steps=2,
                   output_format="png", size=size)
    out = engine.run_batch([job])[0]
    assert not isinstance(out, Exception), out
    return np.stack(out.pixels)


def max_diff(a, b) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def shallow(model, layers=1):
    """The model with its text encoder cut to `layers` layers, the last read three times: tracing 27 takes a minute.
    The layers are copies: sharing them with the session's model let tracing the cut encoder change what the full
    one records as its hidden states, and every later test reading them (parity, LoRA parity, loading) drifted."""
    te = copy.copy(model.text_encoder)
    te._modules = dict(te._modules)
    te.layers = torch.nn.ModuleList([copy.deepcopy(layer) for layer in list(te.layers)[:layers]])
    te.config = copy.copy(te.config)
    te.config.num_hidden_layers = layers
    if getattr(te.config, "layer_types", None):
        te.config.layer_types = te.config.layer_types[:layers]
    return dataclasses.replace(model, text_encoder=te, text_layers=(layers,) * 3)


def test_compiled_text_encoder_equals_eager_and_warm_up_compiles_every_batch_size(model):
    from kleinserve_engine.fastpath import compiled_graphs
    from kleinserve_engine.warmup import parse_buckets, warm

    small = shallow(model)
    eager = engine_with(small)
    fast = engine_with(small, compile_text_encoder=True, compile_backend="aot_eager")
    assert fast.model.text_encoder is not small.text_encoder and fast.model.transformer is small.transformer
    before = compiled_graphs()
    warm(fast, parse_buckets("64x64:0"), steps=1)  # batch 1, then a batch of 2 (warm adds it) with 2 prompts
    assert compiled_graphs() > before, "warm-up compiled nothing"
    warmed = compiled_graphs()
    prompts = ["a red fox", "", "a blue heron in the reeds " * 60]  # incl. empty and cut at 512 tokens
    for n in (1, 3):
        with torch.inference_mode():  # as the pipeline calls it: the graphs guard on inference tensors
            a, _ = eager.prompt_embeddings(prompts[:n], cached=False)
            b, _ = fast.prompt_embeddings(prompts[:n], cached=False)
        assert all(torch.equal(a[p], b[p]) for p in prompts[:n])
    assert compiled_graphs() == warmed, "a batch size after warm-up compiled the text encoder again"
    assert max_diff(image(eager, refs=()), image(fast, refs=())) == 0


def test_compiled_vae_view_shares_the_loaded_channels_last_weights(model):
    """The VAE is converted to channels_last before its view is compiled, so the compiled graphs run on those
    weights; the loaded VAE itself is not compiled (nothing runs here: the slow test runs it)."""
    own = dataclasses.replace(model, vae=copy.deepcopy(model.vae))  # channels_last converts in place
    fast = engine_with(own, channels_last=True, compile_vae=True, compile_backend="eager")
    view = fast.model.vae
    assert view is not own.vae and fast.model.text_encoder is own.text_encoder
    assert all(type(getattr(own.vae, p)).__name__ != "OptimizedModule" for p in ("encoder", "decoder"))
    assert all(type(getattr(view, p)).__name__ == "OptimizedModule" for p in ("encoder", "decoder"))
    for part in ("encoder", "decoder"):
        weight = getattr(view, part)._orig_mod.conv_in.weight
        assert weight is getattr(own.vae, part).conv_in.weight
        assert weight.is_contiguous(memory_format=torch.channels_last)
    assert engine_with(own).model is own  # nothing asked: the loaded model, not a copy


@pytest.mark.slow
def test_compiled_vae_equals_eager_and_serves_new_sizes_and_batches_after_warm_up(model):
    from kleinserve_engine.fastpath import compiled_graphs
    from kleinserve_engine.warmup import parse_buckets, warm

    own = dataclasses.replace(model, vae=copy.deepcopy(model.vae))
    eager = engine_with(own, channels_last=True)
    fast = engine_with(own, channels_last=True, compile_vae=True, compile_backend="eager")
    # On the CPU each convolution picks oneDNN or not by its input's size and dynamo guards on that choice, so a
    # size across the threshold would recompile once; with oneDNN off every size takes one path, as on CUDA.
    with torch.backends.mkldnn.flags(enabled=False):
        before = compiled_graphs()
        warm(fast, parse_buckets("64x64:1"), steps=1)  # a batch of 1, then (added by warm) a batch of 2
        assert compiled_graphs() > before, "warm-up compiled nothing"
        warmed = compiled_graphs()
        # a new reference size and output size, a batch of 3; two references of new sizes and an explicit output size
        for refs, seeds, size in ((((96, 64),), (1, 2, 3), None), (((64, 112), (80, 64)), (4,), (48, 96))):
            assert max_diff(image(eager, refs, seeds=seeds, size=size), image(fast, refs, seeds=seeds, size=size)) == 0
        assert compiled_graphs() == warmed, "a size or batch the warm-up did not run compiled the VAE again"


@pytest.mark.slow
def test_compiled_vae_and_text_encoder_with_inductor(model):
    small = shallow(model, layers=3)
    eager = engine_with(small)
    fast = engine_with(small, compile_vae=True, compile_text_encoder=True, compile_backend="inductor")
    with torch.inference_mode():
        a, _ = eager.prompt_embeddings(["inductor"], cached=False)
        b, _ = fast.prompt_embeddings(["inductor"], cached=False)
    torch.testing.assert_close(b["inductor"], a["inductor"], rtol=1e-4, atol=1e-4)
    diff = max_diff(image(eager), image(fast))
    print(f"inductor-compiled VAE and text encoder vs eager: max abs pixel diff {diff}/255")
    assert diff <= 1
