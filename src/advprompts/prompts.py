"""Learnable prompts: new placeholder tokens whose input embeddings are the only trained weights.

The learned rows live in a separate ``nn.Parameter`` of shape (n, d) and are spliced into the
text encoder's token embeddings at forward time by a pre-hook on ``text_model.embeddings``. The
text encoder itself stays frozen, so every other weight of every network is bit-identical after
training by construction, and the optimiser state holds only n x d numbers. Any text that contains
the placeholder tokens, encoded by the hooked text encoder, is differentiable w.r.t. them.

Files use the diffusers textual-inversion format: safetensors ``{"<prefix>": tensor (n, d)}``,
loadable by ``StableDiffusionPipeline.load_textual_inversion(file, token="<prefix>")``; diffusers
then expands ``"<prefix>"`` to its n tokens, so ``prompt.diffusers_text()`` gives the same image.
"""

from __future__ import annotations

import json
import logging
import re
import weakref
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from advprompts.errors import ConfigError, DataError
from advprompts.fsio import atomic_write_text

logger = logging.getLogger(__name__)

INITS = ("vocab-gaussian", "vocab-gaussian-cov", "random", "word:<initializer>")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _splice_hook(module, args, kwargs):
    """Forward pre-hook of CLIPTextEmbeddings: look up tokens, then overwrite placeholder rows."""
    names = ("input_ids", "position_ids", "inputs_embeds")
    kwargs = {**dict(zip(names, args)), **kwargs}
    input_ids = kwargs.get("input_ids")
    prompts = [p for p in module._advprompts_prompts.values()]
    if input_ids is None or kwargs.get("inputs_embeds") is not None or not prompts:
        return (), kwargs
    embeds = module.token_embedding(input_ids)
    for prompt in prompts:
        idx = input_ids - prompt.first_id
        hit = (idx >= 0) & (idx < prompt.num_tokens)
        if hit.any():
            rows = prompt.embeddings[idx.clamp(0, prompt.num_tokens - 1)].to(embeds.dtype)
            embeds = torch.where(hit[..., None], rows, embeds)
    kwargs["input_ids"] = None
    kwargs["inputs_embeds"] = embeds
    return (), kwargs


def _embeddings_module(text_encoder: torch.nn.Module) -> torch.nn.Module:
    # transformers 5 flattened CLIPTextModel (no .text_model); older versions nest it.
    module = getattr(text_encoder, "text_model", text_encoder).embeddings
    if not hasattr(module, "_advprompts_prompts"):
        module._advprompts_prompts = weakref.WeakValueDictionary()
        module.register_forward_pre_hook(_splice_hook, with_kwargs=True)
    return module


def check_init(init: str) -> None:
    """Raise ConfigError unless ``init`` is one of :data:`INITS` (``word:`` takes any word)."""
    if init in INITS[:3] or (init.startswith("word:") and len(init) > 5):
        return
    raise ConfigError(f"prompt init {init!r} is unknown; expected one of {', '.join(INITS)}")


class LearnablePrompt(torch.nn.Module):
    """n placeholder tokens ``<prefix-0> .. <prefix-{n-1}>`` with trainable input embeddings.

    Args:
        tokenizer: CLIP tokenizer; the tokens are added to it (new, or all added earlier by a
            prompt of the same prefix, which this one then replaces).
        text_encoder: CLIP text model; its embedding matrix is resized, never trained.
        num_tokens: n.
        prefix: token prefix; the prompt's name (and file key) is ``"<prefix>"``.
        init: ``vocab-gaussian`` (mean + per-dim std of the vocabulary rows),
            ``vocab-gaussian-cov`` (full covariance), ``random`` (rows of n random vocabulary
            tokens) or ``word:<initializer>`` (its token rows if it has n tokens, else their mean).
        seed: seed of the random inits.
        template: how the prompt is used, e.g. ``"a photo of a {class} {prompt}"``.
        class_name: the class this prompt is learned for, if any.
        embeddings: initial (n, d) values (overrides ``init``; used when loading).
    """

    def __init__(
        self,
        tokenizer,
        text_encoder: torch.nn.Module,
        num_tokens: int = 5,
        prefix: str = "ap",
        init: str = "vocab-gaussian",
        seed: int = 0,
        template: str = "{prompt}",
        class_name: str | None = None,
        embeddings: torch.Tensor | None = None,
    ):
        super().__init__()
        check_prompt_args(num_tokens, prefix, template)
        if embeddings is None:
            check_init(init)
        self.tokens = [f"<{prefix}-{i}>" for i in range(num_tokens)]
        vocab = tokenizer.get_vocab()
        taken = [t for t in self.tokens if t in vocab]
        # Tokens a previous prompt of this prefix added (e.g. a second run on the same components)
        # are reused; the new prompt replaces the old one in the splice hook.
        reuse = len(taken) == num_tokens and f"<{prefix}-{num_tokens}>" not in vocab \
            and all(vocab[t] >= tokenizer.vocab_size for t in taken)
        if taken and not reuse:
            raise ConfigError(f"placeholder token {taken[0]!r} already exists in the tokenizer; choose another prefix")
        # Plain attributes, not submodules: the prompt's state_dict is only its embeddings.
        object.__setattr__(self, "tokenizer", tokenizer)
        object.__setattr__(self, "text_encoder", text_encoder)
        self.base_vocab = tokenizer.vocab_size
        if not reuse:
            tokenizer.add_tokens(self.tokens)
        ids = tokenizer.convert_tokens_to_ids(self.tokens)
        if ids != list(range(ids[0], ids[0] + num_tokens)):
            raise ConfigError(f"placeholder tokens of prefix {prefix!r} did not get consecutive ids: {ids}")
        self.first_id = ids[0]
        self.token_ids = ids
        self.prefix, self.template, self.class_name, self.init, self.seed = prefix, template, class_name, init, seed
        if text_encoder.get_input_embeddings().weight.shape[0] < len(tokenizer):
            trainable = text_encoder.get_input_embeddings().weight.requires_grad
            text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            # resize creates a new nn.Embedding; keep a frozen encoder frozen.
            text_encoder.get_input_embeddings().weight.requires_grad_(trainable)
        if embeddings is None:
            embeddings = self._initial(init, seed)
        # On the text encoder's device: the splice hook indexes these rows with its input ids (a prompt
        # loaded from a file for generation on a GPU was left on the CPU).
        device = text_encoder.get_input_embeddings().weight.device
        self.embeddings = torch.nn.Parameter(embeddings.detach().to(device=device, dtype=torch.float32).clone())
        _embeddings_module(text_encoder)._advprompts_prompts[prefix] = self
        self.sync_rows()

    # ------------------------------------------------------------------ init
    def _vocab_rows(self) -> torch.Tensor:
        return self.text_encoder.get_input_embeddings().weight[: self.base_vocab].detach().float().cpu()

    def _initial(self, init: str, seed: int) -> torch.Tensor:
        vocab = self._vocab_rows()
        n, d = len(self.tokens), vocab.shape[1]
        gen = torch.Generator().manual_seed(seed)
        if init == "vocab-gaussian":
            return vocab.mean(0) + vocab.std(0) * torch.randn(n, d, generator=gen)
        if init == "vocab-gaussian-cov":
            centred = vocab - vocab.mean(0)
            cov = centred.T @ centred / (vocab.shape[0] - 1)
            chol = torch.linalg.cholesky(cov + 1e-6 * torch.eye(d))
            return vocab.mean(0) + torch.randn(n, d, generator=gen) @ chol.T
        if init == "random":
            return vocab[torch.randint(0, vocab.shape[0], (n,), generator=gen)].clone()
        word = init[len("word:"):]
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        if not ids or any(i >= self.base_vocab for i in ids):
            raise ConfigError(f"initializer word {word!r} has no vocabulary tokens; pick a plain word")
        rows = vocab[ids]
        return rows.clone() if len(ids) == n else rows.mean(0, keepdim=True).repeat(n, 1)

    # ------------------------------------------------------------------ use
    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def name(self) -> str:
        """The placeholder of the textual-inversion file (``"<prefix>"``)."""
        return f"<{self.prefix}>"

    def text(self, class_name: str | None = None, template: str | None = None) -> str:
        """The prompt text: ``template`` with ``{prompt}`` = the tokens and ``{class}`` = the class."""
        return _fill(template or self.template, " ".join(self.tokens), class_name or self.class_name)

    def diffusers_text(self, class_name: str | None = None, template: str | None = None) -> str:
        """The same prompt for a diffusers pipeline that loaded the file with ``token=self.name``."""
        return _fill(template or self.template, self.name, class_name or self.class_name)

    @torch.no_grad()
    def sync_rows(self) -> None:
        """Copy the learned rows into the (new) rows of the embedding matrix, e.g. before handing
        the text encoder to a diffusers pipeline; the original rows are never touched."""
        weight = self.text_encoder.get_input_embeddings().weight
        weight[self.first_id : self.first_id + self.num_tokens] = self.embeddings.to(weight)

    @torch.no_grad()
    def decode_nearest(self, k: int = 1, exclude_placeholders: bool = True) -> list[list[str]]:
        """The ``k`` vocabulary tokens nearest (cosine) to each learned row, for humans."""
        weight = self.text_encoder.get_input_embeddings().weight.detach().float().cpu()
        if exclude_placeholders:
            weight = weight[: self.base_vocab]
        sims = torch.nn.functional.normalize(self.embeddings.detach().float().cpu(), dim=-1) @ \
            torch.nn.functional.normalize(weight, dim=-1).T
        top = sims.topk(k, dim=-1).indices
        return [self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in top]

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, **extra) -> Path:
        """Write the textual-inversion safetensors ``{name: (n, d)}`` and a JSON sidecar."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({self.name: self.embeddings.detach().float().cpu().contiguous()}, str(tmp))
        tmp.replace(path)
        meta = {"name": self.name, "tokens": self.tokens, "template": self.template,
                "class_name": self.class_name, "init": self.init, "seed": self.seed, **extra}
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))  # a torn sidecar is refused on load
        return path

    @classmethod
    def load(cls, path: str | Path, tokenizer, text_encoder, prefix: str | None = None,
             template: str | None = None) -> "LearnablePrompt":
        """Load a textual-inversion safetensors file (ours or any single-key TI file).

        Args:
            path: the ``.safetensors`` file; a ``.json`` sidecar next to it supplies the template
                and class.
            tokenizer, text_encoder: where to add the tokens.
            prefix: token prefix to use (default: the file's placeholder without ``<>``).
            template: overrides the sidecar's template.

        Raises:
            DataError: missing or unreadable file or sidecar, a tensor of another model's width, NaN or Inf.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"prompt file {str(path)!r} does not exist; pass a .safetensors file written by optimize")
        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise DataError(f"prompt file {str(path)!r} is not a readable safetensors file ({exc})") from exc
        if len(state) != 1:
            raise DataError(f"prompt file {str(path)!r} holds {len(state)} tensors; expected one {{placeholder: (n, d)}}")
        key, value = next(iter(state.items()))
        if value.ndim == 1:
            value = value[None]
        width = text_encoder.get_input_embeddings().weight.shape[1]
        if value.ndim != 2 or value.shape[1] != width or not value.is_floating_point():
            raise DataError(f"prompt file {str(path)!r} holds a {value.dtype} tensor of shape {tuple(value.shape)}; "
                            f"this model's text encoder needs (n, {width}) floats: it was learned for another model")
        if not torch.isfinite(value).all():
            raise DataError(f"prompt file {str(path)!r} holds NaN or infinite values; use a file from a run that "
                            "did not diverge")
        meta_path = path.with_suffix(".json")
        try:
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"prompt sidecar {str(meta_path)!r} is not readable JSON ({exc}); restore or delete it") from exc
        prefix = prefix or key.strip("<>")
        return cls(tokenizer, text_encoder, num_tokens=value.shape[0], prefix=prefix,
                   template=template or meta.get("template", "{prompt}"), class_name=meta.get("class_name"),
                   init=meta.get("init", "loaded"), seed=meta.get("seed", 0), embeddings=value)


def _fill(template: str, prompt: str, class_name: str | None) -> str:
    return template.format(**{"prompt": prompt, "class": class_name or ""}).strip()


def check_prompt_args(num_tokens: int, prefix: str, template: str) -> None:
    """Validate the arguments of :class:`LearnablePrompt` (ConfigError naming the bad one)."""
    if not isinstance(num_tokens, int) or num_tokens < 1:
        raise ConfigError(f"num_tokens={num_tokens!r} is invalid; expected an integer >= 1")
    if not _PREFIX_RE.match(prefix):
        raise ConfigError(f"prompt prefix {prefix!r} is invalid; use letters, digits, '_', '-' or '.'")
    if "{prompt}" not in template:
        raise ConfigError(f"prompt template {template!r} lacks '{{prompt}}'; e.g. 'a photo of a {{class}} {{prompt}}'")
    try:
        _fill(template, "", "")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"prompt template {template!r} is invalid; only {{prompt}} and {{class}} are allowed") from exc
