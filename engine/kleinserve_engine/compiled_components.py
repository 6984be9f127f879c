"""torch.compile of the VAE and the text encoder, as views: the loaded modules stay eager and share their weights.

VAE: its encoder and decoder, each compiled whole with dynamic shapes, since references come in any size and aspect
and the decoder sees every output size and batch. Dynamo still specialises a size of 1, so the batch-1 decode has
its own graph and a batch of two compiles the one every larger batch shares (warm-up runs both).

Text encoder: the whole cut Qwen3 stack. Its input is always 512 padded tokens, so only the batch varies: a batch
of one runs a static graph, and any larger batch one graph whose batch is marked dynamic (the sequence stays static
in both). The mark is explicit: left to dynamo's automatic dynamic shapes, whether the attention mask's batch became
symbolic at the second batch size depended on what had been traced before, and a third size could recompile.
Compiling its layers one
by one, as the transformer's blocks are, would be cheaper to build, but transformers records the hidden states
the pipeline reads with forward hooks that read a ContextVar, which dynamo cannot trace: every layer would break
its graph in two places. Whole, the hooks run inside one graph (transformers switches them to a plain global while
dynamo traces).
"""

from __future__ import annotations

import copy

# modules of the VAE compiled in the view; quant_conv and post_quant_conv are 1x1 convs, not worth a graph
VAE_PARTS = ("encoder", "decoder")


def no_duck_shapes() -> None:
    """Duck shaping gives dims that are equal at trace time one symbol: a square image's height and width, or a
    sequence length that equals the hidden width, would be specialised together and recompile at the next aspect."""
    import torch.fx.experimental._config as shape_config

    if hasattr(shape_config, "use_duck_shape"):
        shape_config.use_duck_shape = False


def compiled_vae(vae, backend: str):
    """A shallow copy of the VAE whose encoder and decoder are compiled (dynamic shapes); the VAE itself stays eager.

    Call it after any in-place layout change (channels_last): the view shares the converted weights, and a later
    change would only make the compiled graphs guard-fail and recompile.
    """
    import torch

    no_duck_shapes()
    view = copy.copy(vae)
    view._modules = dict(vae._modules)
    for name in VAE_PARTS:
        # CUDA graphs (reduce-overhead) are for the denoiser's many small kernels; the VAE runs once per request
        view._modules[name] = torch.compile(vae._modules[name], backend=backend, dynamic=True)
    return view


def compiled_text_encoder(text_encoder, backend: str):
    """The text encoder compiled whole: batch 1 static, larger batches one graph (see the module docstring)."""
    import torch

    class CompiledTextEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.compiled = torch.compile(text_encoder, backend=backend)

        def forward(self, input_ids, attention_mask, **kwargs):
            if input_ids.shape[0] > 1:
                torch._dynamo.mark_dynamic(input_ids, 0)
                torch._dynamo.mark_dynamic(attention_mask, 0)
            return self.compiled(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    return CompiledTextEncoder()
