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
