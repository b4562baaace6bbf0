"""The embedded tokenizer: CLIP's real BPE vocabulary, as transformers CLIPTokenizer files.

Token ids then match Stable Diffusion 1.5's tokenizer, so learned prompts, templates and
nearest-word decoding behave as they do with the real model.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
from functools import lru_cache
from pathlib import Path

from advprompts.errors import ModelLoadError

MAX_LENGTH = 32  # captions are short; SD 1.5 uses 77 (ids of the first 32 tokens are identical)


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    # The reversible byte <-> unicode map of GPT-2/CLIP BPE.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe_file() -> Path | None:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    return path if path.exists() else None


def write_tokenizer_files(out: Path, bpe_gz: Path | None = None, fallback: Path | None = None) -> Path:
    """Write vocab.json, merges.txt and configs of the CLIP tokenizer into `out`.

    Built from open_clip's `bpe_simple_vocab_16e6.txt.gz` (as CLIP's SimpleTokenizer does), or
    copied from `fallback` (an existing tokenizer folder, e.g. the committed one).
    """
    out.mkdir(parents=True, exist_ok=True)
    bpe_gz = bpe_gz or _bpe_file()
    if bpe_gz is None:
        if fallback is None or not (fallback / "vocab.json").exists():
            raise ModelLoadError("CLIP BPE vocabulary not found: `pip install open_clip_torch` (it ships "
                                 "bpe_simple_vocab_16e6.txt.gz) or keep the committed zoo tokenizer")
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(fallback / name, out / name)
    else:
        lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
        vocab = list(_bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
        (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "errors": "replace", "add_prefix_space": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    specials = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    return out
