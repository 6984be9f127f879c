"""A random-weight FLUX.2 [klein] in the real diffusers layout, small enough for CPU tests.

Every component keeps the real architecture and only shrinks its widths, so the engine exercises the same
code (text layers 9/18/27, 2x2 patchify, BatchNorm statistics, RoPE on 4 axes) as with the real weights.
"""

from __future__ import annotations

import json
from pathlib import Path

SEED = 20260124
TEXT_HIDDEN = 32
TEXT_LAYERS = 28  # deepest layer the pipeline reads is 27
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# Mirrors Qwen3's template where it matters to the pipeline: a user turn, the generation prompt, and an
# empty think block when enable_thinking is false.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

SCHEDULER_CONFIG = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "shift_terminal": None,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}


def _byte_vocab() -> dict[str, int]:
    # GPT-2's printable stand-ins for the 256 byte values: the alphabet of every byte-level BPE.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {chars[b]: b for b in range(256)}


def build_tokenizer():
    from transformers import Qwen2Tokenizer

    vocab = _byte_vocab()
    for i, tok in enumerate(SPECIAL_TOKENS):
        vocab[tok] = 256 + i
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=131072,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_text_encoder(vocab_size: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    return Qwen3ForCausalLM(config).eval()


def build_transformer():
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=128,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * TEXT_HIDDEN,
        timestep_guidance_channels=256,
        mlp_ratio=3.0,
        axes_dims_rope=(4, 4, 4, 4),
        rope_theta=2000,
        guidance_embeds=False,
    ).eval()


def build_vae():
    import torch
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=32)
    # Identity statistics would hide a missing or inverted normalisation; give them real spread.
    channels = vae.bn.running_mean.shape[0]
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.randn(channels, generator=g) * 0.5)
        vae.bn.running_var.copy_(torch.rand(channels, generator=g) * 2.0 + 0.25)
    return vae.eval()


def make_tiny_model(out_dir: str | Path, distilled: bool = True) -> Path:
    """Writes the tiny model to out_dir (created if missing) and returns the path. distilled=False marks it as a
    base checkpoint (is_distilled false: classifier-free guidance), with the same random weights."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer))
    transformer = build_transformer()
    vae = build_vae()
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)

    tokenizer.save_pretrained(out / "tokenizer")
    text_encoder.save_pretrained(out / "text_encoder")
    transformer.save_pretrained(out / "transformer")
    vae.save_pretrained(out / "vae")
    scheduler.save_pretrained(out / "scheduler")
    import diffusers

    index = {
        "_class_name": "Flux2KleinPipeline",
        "_diffusers_version": diffusers.__version__,
        "is_distilled": distilled,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3ForCausalLM"],
        "tokenizer": ["transformers", "Qwen2TokenizerFast"],
        "transformer": ["diffusers", "Flux2Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLFlux2"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def ensure_tiny_model(target: str | Path, distilled: bool = True) -> Path:
    """Builds the tiny model once; engines starting together race safely through an atomic rename."""
    import os
    import shutil
    import tempfile

    target = Path(target)
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    make_tiny_model(staging, distilled=distilled)
    try:
        os.rename(staging, target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target
