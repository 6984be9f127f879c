"""Classifier-free guidance on the tiny base checkpoint: mixed batches, cancels, request rules, checkpoint facts."""

import json
import shutil

import numpy as np
import pytest

from conftest import make_job, random_image
from kleinserve_engine.errors import Canceled, InvalidRequest
from kleinserve_engine.pipeline import JobResult


def max_diff(a, b) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_guided_and_unguided_requests_share_a_batch_and_match_alone(base_engine):
    ref = [random_image(80, 64, 3)]
    specs = [dict(prompt="a cat", seeds=[1], guidance=4.0),
             dict(prompt="a cat", seeds=[1], guidance=1.0),
             dict(prompt="a dog", seeds=[2, 3], guidance=2.5, negative_prompt="blurry"),
             dict(prompt="a dog", seeds=[4], guidance=4.0, negative_prompt="blurry")]
    jobs = [make_job(ref, steps=2, output_format="png", **s) for s in specs]
    assert len({j.batch_key() for j in jobs}) == 1  # guidance is not part of the batch key
    calls = []
    real = base_engine.denoiser
    base_engine.denoiser = lambda hidden, *a: calls.append(hidden.shape[0]) or real(hidden, *a)
    try:
        batched = base_engine.run_batch(jobs)
    finally:
        base_engine.denoiser = real
    # one transformer call per step: 5 conditional rows + 4 unconditional rows (every guided image)
    assert calls == [9, 9]
    assert all(isinstance(r, JobResult) and r.batch_size == 5 for r in batched)
    worst = 0
    for spec, got in zip(specs, batched):
        alone = base_engine.run_batch([make_job(ref, steps=2, output_format="png", **spec)])[0]
        for g, a in zip(got.pixels, alone.pixels):
            worst = max(worst, max_diff(g, a))
    print(f"guided batch vs alone: max abs pixel diff {worst}/255")
    assert worst <= 1
    assert batched[0].pixels[0].tobytes() != batched[1].pixels[0].tobytes()  # same prompt and seed, guided or not


def test_cancel_inside_a_guided_batch_leaves_the_others_unchanged(base_engine):
    keep_guided = make_job([], prompt="keep", seeds=[1], size=(64, 64), steps=3, guidance=3.0, negative_prompt="x")
    drop = make_job([], prompt="drop", seeds=[2], size=(64, 64), steps=3, guidance=4.0)
    keep_plain = make_job([], prompt="plain", seeds=[3], size=(64, 64), steps=3, guidance=1.0)

    def cancel_after_first_step(info):
        drop.canceled = True

    drop.on_progress = cancel_after_first_step
    res = base_engine.run_batch([keep_guided, drop, keep_plain])
    assert isinstance(res[1], Canceled)
    for job, got in ((keep_guided, res[0]), (keep_plain, res[2])):
        alone = base_engine.run_batch([make_job([], prompt=job.prompt, seeds=job.seeds, size=(64, 64), steps=3,
                                                guidance=job.guidance, negative_prompt=job.negative_prompt)])[0]
        assert max_diff(got.pixels[0], alone.pixels[0]) <= 1


def test_checkpoint_facts_come_from_its_files(tiny_dir, tiny_base_dir, tmp_path):
    from kleinserve_engine.model_family import CheckpointMismatch, read_facts

    distilled, base = read_facts(tiny_dir, "tiny"), read_facts(tiny_base_dir, "tiny-base")
    assert (distilled.is_distilled, distilled.default_steps, distilled.default_guidance) == (True, 4, 1.0)
    assert not distilled.supports_guidance and not distilled.supports_negative_prompt
    assert (base.is_distilled, base.default_steps, base.max_steps, base.default_guidance) == (False, 50, 100, 4.0)
    assert base.supports_guidance and base.supports_negative_prompt
    assert base.as_dict()["text_encoder"] == {"id": "tiny-base/text_encoder", "architecture": "Qwen3ForCausalLM",
                                              "hidden_size": 32, "num_hidden_layers": 28, "layers": [9, 18, 27]}

    # a larger text encoder (as the 9B checkpoints name) is read from its config, not assumed
    nine = tmp_path / "nine"
    shutil.copytree(tiny_base_dir, nine)
    te = json.loads((nine / "text_encoder" / "config.json").read_text())
    (nine / "text_encoder" / "config.json").write_text(json.dumps({**te, "hidden_size": 4096, "num_hidden_layers": 36}))
    tr = json.loads((nine / "transformer" / "config.json").read_text())
    (nine / "transformer" / "config.json").write_text(json.dumps({**tr, "joint_attention_dim": 3 * 4096}))
    facts = read_facts(nine, "nine")
    assert (facts.text_encoder.hidden_size, facts.text_encoder.num_hidden_layers) == (4096, 36)
    # a transformer that cannot read this text encoder is refused at load, not at the first request
    (nine / "transformer" / "config.json").write_text(json.dumps({**tr, "joint_attention_dim": 7680}))
    with pytest.raises(CheckpointMismatch, match="joint_attention_dim 7680"):
        read_facts(nine, "nine")


def test_request_rules_for_guidance(tiny_dir, tiny_base_dir):
    from kleinserve_engine.guidance import request_guidance
    from kleinserve_engine.model_family import read_facts

    distilled, base = read_facts(tiny_dir, "klein-4b"), read_facts(tiny_base_dir, "klein-base-4b")
    assert request_guidance({}, distilled, "") == 1.0
    assert request_guidance({"guidance_scale": 1}, distilled, "") == 1.0
    assert request_guidance({}, base, "") == 4.0
    assert request_guidance({"guidance_scale": 7.5}, base, "ugly") == 7.5
    assert request_guidance({"guidance": 2}, base, "") == 2.0  # the older name

    def refused(h, facts, negative=""):
        with pytest.raises(InvalidRequest) as info:
            request_guidance(h, facts, negative)
        return info.value

    err = refused({"guidance_scale": 4}, distilled)
    assert err.field == "guidance_scale" and "klein-4b is a distilled checkpoint" in err.message
    assert refused({}, distilled, "blurry").field == "negative_prompt"
    assert refused({"guidance_scale": 0.5}, base).field == "guidance_scale"
    assert refused({"guidance_scale": 21}, base).field == "guidance_scale"
    assert refused({"guidance_scale": "4"}, base).field == "guidance_scale"
    assert refused({"guidance_scale": 1}, base, "blurry").field == "negative_prompt"
    assert refused({"guidance_scale": 2, "guidance": 3}, base).field == "guidance"
