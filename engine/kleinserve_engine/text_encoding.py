"""Prompt -> Qwen3 hidden states (layers 9/18/27 concatenated), as FLUX.2 [klein] was trained to read them."""

from __future__ import annotations

from .uploads import upload

MAX_TOKENS = 512


def chat_text(tokenizer, prompt: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )


def tokenize(tokenizer, prompts: list[str], max_tokens: int = MAX_TOKENS):
    import torch

    # One call per prompt: padding every prompt to max_length on its own keeps each row independent of its
    # batch neighbours, so a prompt's embedding never depends on what it was batched with.
    encoded = [
        tokenizer(chat_text(tokenizer, p), return_tensors="pt", padding="max_length", truncation=True, max_length=max_tokens)
        for p in prompts
    ]
    ids = torch.cat([e["input_ids"] for e in encoded], dim=0)
    mask = torch.cat([e["attention_mask"] for e in encoded], dim=0)
    return ids, mask


def encode_prompts(text_encoder, tokenizer, prompts: list[str], layers: tuple[int, ...], device, dtype):
    """Returns (len(prompts), 512, len(layers) * hidden) embeddings; the DiT sees all 512 tokens, unmasked."""
    import torch

    ids, mask = tokenize(tokenizer, prompts)
    with torch.inference_mode():
        out = text_encoder(
            input_ids=upload(ids, device), attention_mask=upload(mask, device), output_hidden_states=True, use_cache=False
        )
        hidden = torch.cat([out.hidden_states[k] for k in layers], dim=-1)
    return hidden.to(dtype)
