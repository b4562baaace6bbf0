"""Texts through a CLIP text encoder as diffusers' pipelines encode them, and pooled to one vector each.

Placeholder tokens of a :class:`~advprompts.prompts.LearnablePrompt` attached to the encoder make the
result differentiable w.r.t. their embeddings.
"""

from __future__ import annotations

import torch

from advprompts.errors import ConfigError


def encode_text(tokenizer, text_encoder, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode texts as diffusers' pipelines do (padded to ``model_max_length``, no attention mask).

    Returns:
        ``(last_hidden_state (B, L, D), input_ids (B, L))``; differentiable w.r.t. every
        :class:`~advprompts.prompts.LearnablePrompt` attached to ``text_encoder``.
    """
    ids = tokenizer(
        list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids.to(text_encoder.device)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = (ids != tokenizer.pad_token_id).long()
    return text_encoder(ids, attention_mask=mask)[0], ids


def pool_text(hidden: torch.Tensor, input_ids: torch.Tensor, eos_id: int, pooling: str = "eos") -> torch.Tensor:
    """Pool token states into one vector per text.

    ``eos``: the state at the first end-of-text token (the CLIP text embedding before projection;
    computed here because CLIP's own pooler picks the highest id, which is a placeholder once tokens
    are added). ``mean``: mean over the tokens up to and including that first end-of-text token.
    """
    first_eos = (input_ids == eos_id).int().argmax(dim=-1)
    if pooling == "eos":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first_eos]
    if pooling == "mean":
        keep = torch.arange(input_ids.shape[1], device=hidden.device)[None] <= first_eos[:, None]
        return (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
    raise ConfigError(f"text pooling {pooling!r} is unknown; expected 'eos' or 'mean'")
