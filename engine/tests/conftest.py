import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PY = sys.executable

# One OpenMP thread per process: the suite runs several torch processes on a 2-core machine, and spinning
# OpenMP workers on oversubscribed cores slow everything down 5-10x. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny model, written once by the real CLI command."""
    out = tmp_path_factory.mktemp("tiny") / "model"
    subprocess.run([PY, "-m", "kleinserve_engine", "make-tiny-model", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    """The tiny model marked as a base checkpoint (is_distilled false): classifier-free guidance applies."""
    out = tmp_path_factory.mktemp("tiny-base") / "model"
    subprocess.run([PY, "-m", "kleinserve_engine", "make-tiny-model", "--base", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def tiny_checker_dir(tmp_path_factory) -> Path:
    """A random-weight image classifier (labels normal, nsfw), written by the real CLI command."""
    out = tmp_path_factory.mktemp("checker") / "model"
    subprocess.run([PY, "-m", "kleinserve_engine", "make-tiny-safety-checker", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def base_engine(tiny_base_dir):
    from kleinserve_engine.loading import load
    from kleinserve_engine.pipeline import Engine

    return Engine(load(str(tiny_base_dir), device="cpu"))


@pytest.fixture(scope="session")
def model(tiny_dir):
    from kleinserve_engine.loading import load

    return load(str(tiny_dir), device="cpu")


@pytest.fixture(scope="session")
def engine(model):
    from kleinserve_engine.pipeline import Engine

    return Engine(model)


def random_image(w: int, h: int, seed: int = 0) -> Image.Image:
    # smooth gradients plus noise: exercises the VAE more like a photo than pure noise would
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))


def make_job(refs=(), prompt="a red fox in snow", seeds=(7,), size=None, **kw):
    from kleinserve_engine.pipeline import Job
    from kleinserve_engine.preprocess import reference

    # through the real decode path, so cache keys are real content hashes
    processed = [reference({"format": "rgb8", "width": img.width, "height": img.height}, img.tobytes(), i)
                 for i, img in enumerate(refs)]
    w, h = size or (processed[0].size if processed else (128, 96))
    return Job(prompt=prompt, refs=processed, seeds=list(seeds), width=w, height=h, **kw)


class EngineProcess:
    """The engine as the control plane runs it: `python -m kleinserve_engine serve` in a subprocess."""

    def __init__(self, args, env=None, cwd=None, stdin=None):
        self.proc = subprocess.Popen([PY, "-m", "kleinserve_engine", "serve", *args], stdout=subprocess.PIPE, stdin=stdin,
                                     stderr=subprocess.PIPE, env={**os.environ, **(env or {})}, cwd=cwd)
        line = self.proc.stdout.readline()
        self.listening = json.loads(line)
        self.address = self.listening["address"]

    def wait_ready(self, timeout=120):
        from kleinserve_engine.client import EngineClient

        async def poll():
            c = await EngineClient.connect(self.address)
            try:
                deadline = time.time() + timeout
                while time.time() < deadline:
                    h, _, _ = await c.call({"op": "health"})
                    if h["status"] != "loading":
                        return h
                    await asyncio.sleep(0.1)
            finally:
                await c.close()
            raise TimeoutError("engine stayed in loading")

        return asyncio.run(poll())

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
