"""Hugging Face causal LMs from LOCAL folders (never downloads). Optional extra: `pip install sbif_dsl[hf]`."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import UsageError


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only: never reach for a hub
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        raise UsageError(
            "model.kind hf_causal_lm needs the optional 'transformers' package; hint: pip install 'sbif_dsl[hf]'"
        ) from None
    return transformers


class HFCausalLMWrapper(nn.Module):
    """tokens [B, T] -> logits [B, T, vocab]: the same interface as the built-in Transformer."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, tokens: Tensor) -> Tensor:
        return self.hf(input_ids=tokens, use_cache=False).logits

    @torch.no_grad()
    def attention_patterns(self, tokens: Tensor) -> Tensor:
        """(layers, B, heads, T, T) attention probabilities, for the induction score."""
        out = self.hf(input_ids=tokens, output_attentions=True, use_cache=False)
        return torch.stack(out.attentions)

    @property
    def vocab_size(self) -> int:
        return int(self.hf.config.vocab_size)


def hf_module(path: Path) -> HFCausalLMWrapper:
    """Architecture from config.json in `path` (weights come from the checkpoints); eager attention so
    that functional_call/vmap and attention patterns work."""
    tf = _transformers()
    if not (Path(path) / "config.json").exists():
        raise UsageError(f"model.path {path}: no config.json (a local Hugging Face model folder is needed)")
    config = tf.AutoConfig.from_pretrained(str(path), local_files_only=True)
    config._attn_implementation = "eager"
    return HFCausalLMWrapper(tf.AutoModelForCausalLM.from_config(config))


def hf_state(folder: Path) -> dict[str, Tensor]:
    """Weights of a local revision folder, keyed like HFCausalLMWrapper's state_dict."""
    tf = _transformers()
    model = tf.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, torch_dtype=torch.float32)
    return {f"hf.{k}": v for k, v in model.state_dict().items()}
