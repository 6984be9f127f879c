"""Parity with diffusers' Flux2KleinPipeline (imported here only, never by the engine)."""

import numpy as np
import pytest
import torch

from conftest import make_job, random_image

CASES = {
    "text-to-image": [],
    "1 ref": [(200, 120)],
    "2 refs": [(96, 176), (130, 130)],
    "4 refs": [(100, 70), (64, 300), (150, 96), (80, 80)],
}


@pytest.fixture(scope="module")
def reference_pipeline(tiny_dir):
    from diffusers import Flux2KleinPipeline

    return Flux2KleinPipeline.from_pretrained(str(tiny_dir)).to("cpu")


@pytest.mark.parametrize("case", list(CASES))
def test_matches_flux2_klein_pipeline(engine, reference_pipeline, case):
    images = [random_image(w, h, seed=i + 1) for i, (w, h) in enumerate(CASES[case])]
    job = make_job(images, prompt="turn it into an oil painting", seeds=[1234], size=None if images else (112, 80))
    ours = engine.run_batch([job])[0].pixels[0]
    # same preprocessed references: the engine's processed PIL images go to the reference pipeline as they are
    theirs = reference_pipeline(
        image=[r.image for r in job.refs] or None, prompt=job.prompt, height=job.height, width=job.width,
        num_inference_steps=4, guidance_scale=1.0, generator=torch.Generator("cpu").manual_seed(1234), output_type="np",
    ).images[0]
    theirs = (theirs * 255).round().astype(np.uint8)
    diff = int(np.abs(ours.astype(int) - theirs.astype(int)).max())
    print(f"parity {case} at {job.width}x{job.height}: max abs pixel diff {diff}/255")
    assert ours.shape == theirs.shape == (job.height, job.width, 3)
    assert diff <= 1


# The base checkpoint: true classifier-free guidance. (references, guidance_scale, negative prompt, steps)
BASE_CASES = {
    "text-to-image, guidance 3.5, negative prompt": ([], 3.5, "blurry, low quality", 3),
    "1 ref, guidance 4, default negative prompt": ([(200, 120)], 4.0, "", 2),
    "2 refs, guidance 1 (no guidance pass)": ([(96, 176), (130, 130)], 1.0, "", 2),
}


@pytest.fixture(scope="module")
def base_reference_pipeline(tiny_base_dir):
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline.from_pretrained(str(tiny_base_dir)).to("cpu")
    assert pipe.config.is_distilled is False
    return pipe


def reference_pixels(pipe, job, guidance, negative_prompt):
    # The pipeline has no negative_prompt argument (it always uses ""); a negative prompt enters as its embeddings.
    negative = pipe.encode_prompt(prompt=negative_prompt, device="cpu")[0] if negative_prompt else None
    out = pipe(
        image=[r.image for r in job.refs] or None, prompt=job.prompt, height=job.height, width=job.width,
        num_inference_steps=job.steps, guidance_scale=guidance, negative_prompt_embeds=negative,
        generator=torch.Generator("cpu").manual_seed(job.seeds[0]), output_type="np",
    ).images[0]
    return (out * 255).round().astype(np.uint8)


@pytest.mark.parametrize("case", list(BASE_CASES))
def test_base_checkpoint_matches_flux2_klein_pipeline(base_engine, base_reference_pipeline, case):
    sizes, guidance, negative, steps = BASE_CASES[case]
    images = [random_image(w, h, seed=i + 1) for i, (w, h) in enumerate(sizes)]
    job = make_job(images, prompt="turn it into an oil painting", seeds=[1234], size=None if images else (112, 80),
                   steps=steps, guidance=guidance, negative_prompt=negative)
    ours = base_engine.run_batch([job])[0].pixels[0]
    theirs = reference_pixels(base_reference_pipeline, job, guidance, negative)
    diff = int(np.abs(ours.astype(int) - theirs.astype(int)).max())
    print(f"base parity {case} at {job.width}x{job.height}: max abs pixel diff {diff}/255")
    assert ours.shape == theirs.shape == (job.height, job.width, 3)
    assert diff <= 1


def test_guidance_and_negative_prompt_change_the_base_output(base_engine):
    def pixels(**kw):
        return base_engine.run_batch([make_job([], seeds=[5], size=(64, 64), steps=2, **kw)])[0].pixels[0]

    plain, guided = pixels(guidance=1.0), pixels(guidance=4.0)
    negative = pixels(guidance=4.0, negative_prompt="a dog")
    assert plain.tobytes() != guided.tobytes() and guided.tobytes() != negative.tobytes()


def test_distilled_checkpoint_never_runs_a_guidance_pass(engine, reference_pipeline):
    # as in the pipeline, a distilled checkpoint ignores the scale (the protocol refuses it before it gets here)
    job = make_job([], seeds=[77], size=(64, 64), steps=2, guidance=3.0)
    ours = engine.run_batch([job])[0].pixels[0]
    theirs = reference_pixels(reference_pipeline, job, 3.0, "")
    assert int(np.abs(ours.astype(int) - theirs.astype(int)).max()) <= 1
