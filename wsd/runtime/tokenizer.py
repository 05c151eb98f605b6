"""CLIP BPE tokenizer for Stable Diffusion text encoders (SD 1.x / 2.x).

Our own implementation; needs only ``numpy`` and ``regex`` at run time (no
transformers). It produces exactly the ids of ``transformers.CLIPTokenizer``
(transformers 5.x, tokenizers 0.23), the class diffusers' pipelines use:

1. split off added/special tokens found literally in the text: first tokens
   with ``normalized=False`` on the raw text, then, in each normalized piece,
   tokens with ``normalized=True`` (so ``<|STARTOFTEXT|>`` can match);
2. normalize each piece: NFC, runs of whitespace -> " ", lowercase (per
   character, as Rust does: no final-sigma rule);
3. split with CLIP's regex (letter runs, single digits, punctuation runs,
   contractions), dropping whitespace;
4. byte-level encode each piece and apply CLIP BPE (``</w>`` end-of-word).

Unlike OpenAI's original CLIP tokenizer, transformers does NOT run ftfy nor
``html.unescape`` (``&amp;`` stays 4 characters) - we follow transformers.

Usage::

    tok = CLIPTokenizer.default()                  # open_clip's BPE file
    tok = CLIPTokenizer.from_pretrained_dir("sd15/tokenizer")
    ids = tok("a photo of a cat")                  # int32 array, shape (77,)
    ids = tok.encode("a photo of a cat")           # [49406, 320, ..., 49407]
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import regex

__all__ = ["AddedToken", "CLIPTokenizer", "bytes_to_unicode", "open_clip_bpe_path"]

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
DEFAULT_MAX_LENGTH = 77
OPEN_CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = 49152 - 256 - 2  # CLIP uses merges[1 : 49152 - 256 - 2 + 1]
_INSTALL_HINT = "pip install --no-deps open_clip_torch"

# --- Unicode details that make us match tokenizers 0.23 exactly -------------
# The three tables below were found by comparing every code point against
# tokenizers 0.23.3 under Python 3.11 (Unicode 14); tests/unit/test_tokenizer.py
# (test_unicode_sweep_matches) re-checks them. A newer Python or tokenizers may
# need them updated.
# tokenizers' regexes (oniguruma) know Unicode 16.0, the `regex` package knows a
# newer version: these code points (assigned in Unicode 17.0) are letters /
# numbers for `regex` but unassigned (so "punctuation" for CLIP's split) for
# tokenizers. Subtracting them is a no-op with an older `regex`.
_NOT_IN_ONIG = (
    r"\u088F\u0C5C\u0CDC\uA7CE-\uA7CF\uA7D2\uA7D4\uA7F1"
    r"\U00010940-\U00010959\U00010EC5-\U00010EC7\U00011DB0-\U00011DDB\U00011DE0-\U00011DE9"
    r"\U00016EA0-\U00016EB8\U00016EBB-\U00016ED3\U00016FF2-\U00016FF6\U000187F8-\U000187FF"
    r"\U00018D09-\U00018D1E\U00018D80-\U00018DF2\U0001E6C0-\U0001E6DE\U0001E6E0-\U0001E6E2"
    r"\U0001E6E4-\U0001E6E5\U0001E6E7-\U0001E6ED\U0001E6F0-\U0001E6F4\U0001E6FE-\U0001E6FF"
    r"\U0002B73A-\U0002B73F\U0002CEA2-\U0002CEAD\U000323B0-\U00033479"
)
_LETTER = rf"[\p{{L}}--[{_NOT_IN_ONIG}]]"
_NUMBER = rf"[\p{{N}}--[{_NOT_IN_ONIG}]]"
_OTHER = rf"[[^\s\p{{L}}\p{{N}}][{_NOT_IN_ONIG}]]"
# CLIP's pre-tokenizer pattern (identical to transformers'), with the classes above.
_SPLIT_RE = regex.compile(
    rf"(?V1)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|{_LETTER}+|{_NUMBER}|{_OTHER}+"
)
# transformers' ByteLevel pre-tokenizer re-splits pieces with the GPT-2 regex; that only
# changes the two special-token alternatives above (punctuation / letters / punctuation).
_LITERAL_SPECIALS = {t: ["<|", t[2:-2], "|>"] for t in (BOS_TOKEN, EOS_TOKEN)}
_WHITESPACE_RE = regex.compile(r"\s+")  # same 25 code points as oniguruma's \s
# Rust's char::to_lowercase (Unicode 17) knows these mappings, Python 3.11's
# str.lower (Unicode 14) does not. str.translate with them is a no-op once
# Python's own tables catch up.
_EXTRA_LOWER = {
    0x1C89: 0x1C8A, 0xA7CB: 0x0264, 0xA7CC: 0xA7CD, 0xA7CE: 0xA7CF, 0xA7D2: 0xA7D3,
    0xA7D4: 0xA7D5, 0xA7DA: 0xA7DB, 0xA7DC: 0x019B,
    **{c: c + 0x20 for c in range(0x10D50, 0x10D66)},  # Garay
    **{c: c + 0x1B for c in range(0x16EA0, 0x16EB9)},  # Beria Erfe
}


# tokenizers' NFC tables are older than Python's: these combining marks have
# combining class 0 there (so they neither reorder nor let marks compose across
# them), and U+11930 does not compose with U+11935. NFC is applied to the text
# between them only, which reproduces tokenizers' output.
_NFC_BARRIERS = regex.compile(
    "(["
    "\u07FD\u0898-\u089F\u08CA-\u08D3\u09FE\u0C3C\u0D3B-\u0D3C\u0EBA\u1715\u1ABF-\u1ACE"
    "\u1DF6-\u1DFA\uA82C\U00010D24-\U00010D27\U00010EAB-\U00010EAC\U00010F46-\U00010F50"
    "\U00010F82-\U00010F85\U00011070\U0001133B\U0001145E\U00011839-\U0001183A\U00011930"
    "\U0001193D-\U0001193E\U00011943\U000119E0\U00011A34\U00011A47\U00011A99\U00011D42"
    "\U00011D44-\U00011D45\U00011D97\U00016FF0-\U00016FF1\U0001E130-\U0001E136\U0001E2AE"
    "\U0001E2EC-\U0001E2EF"
    "])"
)


def _nfc(text: str) -> str:
    if _NFC_BARRIERS.search(text) is None:
        return unicodedata.normalize("NFC", text)
    parts = _NFC_BARRIERS.split(text)  # odd indices are the barrier characters
    return "".join(p if i % 2 else unicodedata.normalize("NFC", p) for i, p in enumerate(parts))


def _normalize(text: str) -> str:
    """tokenizers' CLIP normalizer: NFC, whitespace runs -> " ", lowercase."""
    if text.isascii():
        return _WHITESPACE_RE.sub(" ", text).lower()
    text = _nfc(text)
    text = _WHITESPACE_RE.sub(" ", text)
    # Rust lowercases char by char: capital sigma always becomes "σ", never "ς".
    return text.replace("\u03a3", "\u03c3").lower().translate(_EXTRA_LOWER)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode character table (256 entries).

    Printable Latin-1 bytes map to themselves; the other bytes map, in order,
    to U+0100, U+0101, ... The dict order (printable bytes first, then the
    others) is the order of the first 256 vocabulary ids.
    """
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(others)})
    return table


def open_clip_bpe_path() -> Path:
    """Path of ``bpe_simple_vocab_16e6.txt.gz`` inside the installed open_clip_torch.

    The package is located without importing it (importing needs torchvision).
    """
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The CLIP vocabulary comes from the 'open_clip_torch' package, which is not "
            f"installed. Install it with: {_INSTALL_HINT}",
            name="open_clip",
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / OPEN_CLIP_BPE_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{OPEN_CLIP_BPE_FILE} not found in open_clip ({list(spec.submodule_search_locations)}); "
        f"reinstall it with: {_INSTALL_HINT}"
    )


@dataclass(frozen=True)
class AddedToken:
    """A token matched literally in the input text before BPE (e.g. ``<|endoftext|>``).

    ``normalized=True``: matched after normalization (hence case-insensitively);
    ``False``: matched on the raw text.
    """

    content: str
    id: int
    normalized: bool = False


class CLIPTokenizer:
    """CLIP byte-level BPE tokenizer, id-for-id equal to ``transformers.CLIPTokenizer``.

    Build it with :meth:`default` (official CLIP vocabulary, SD 1.5 settings),
    :meth:`from_pretrained_dir` (a diffusers ``tokenizer/`` folder) or
    :meth:`from_bpe_file`.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        bos_token: str = BOS_TOKEN,
        eos_token: str = EOS_TOKEN,
        pad_token: str = EOS_TOKEN,
        model_max_length: int = DEFAULT_MAX_LENGTH,
        added_tokens: Iterable[AddedToken] | None = None,
    ):
        """``vocab`` maps token -> id, ``merges`` are BPE merges by priority.

        ``added_tokens`` defaults to bos/eos/pad with ``normalized=False`` (what
        ``transformers.CLIPTokenizer(vocab_file, merges_file)`` does). Every
        token named here must be in ``vocab`` or in ``added_tokens``.
        """
        self._vocab = dict(vocab)
        self._merges = [tuple(m) for m in merges]
        self._ranks = {m: i for i, m in enumerate(self._merges)}
        if added_tokens is None:
            added_tokens = [
                AddedToken(t, self._vocab[t]) for t in dict.fromkeys((bos_token, eos_token, pad_token))
                if t in self._vocab
            ]
        self._added = {t.content: t for t in added_tokens}
        ids = {**self._vocab, **{t.content: t.id for t in self._added.values()}}
        for name, tok in (("bos_token", bos_token), ("eos_token", eos_token), ("pad_token", pad_token)):
            if tok not in ids:
                raise ValueError(f"{name} {tok!r} is not in the vocabulary")
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.bos_token_id, self.eos_token_id, self.pad_token_id = ids[bos_token], ids[eos_token], ids[pad_token]
        if model_max_length < 2:
            raise ValueError(f"model_max_length must be >= 2, got {model_max_length}")
        self.model_max_length = int(model_max_length)
        self._vocab_size = max(ids.values()) + 1
        self._byte_table = str.maketrans({chr(b): c for b, c in bytes_to_unicode().items()})
        self._raw_added_re = self._added_pattern(normalized=False)
        self._norm_added_re = self._added_pattern(normalized=True)
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def default(cls, model_max_length: int = DEFAULT_MAX_LENGTH,
                pad_token: str = EOS_TOKEN) -> "CLIPTokenizer":
        """Official CLIP vocabulary from open_clip_torch, configured like SD 1.5's tokenizer.

        Same ids as diffusers' SD 1.5 ``tokenizer/`` (pad = ``<|endoftext|>``); SD 2.x's
        folders pad with ``pad_token="!"`` (id 0), a plain vocabulary entry.
        Raises ModuleNotFoundError (telling to ``pip install --no-deps open_clip_torch``)
        when the package is missing.
        """
        return cls.from_bpe_file(open_clip_bpe_path(), model_max_length=model_max_length,
                                 pad_token=pad_token)

    @classmethod
    def from_bpe_file(cls, path: str | os.PathLike, model_max_length: int = DEFAULT_MAX_LENGTH,
                      pad_token: str = EOS_TOKEN) -> "CLIPTokenizer":
        """Load an OpenAI-format ``bpe_simple_vocab_16e6.txt[.gz]`` (header line + merges)."""
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merge_lines = lines[1 : _NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in merge_lines]
        if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{path}: not a CLIP BPE merges file (need {_NUM_MERGES} 'a b' lines after a header)")
        byte_chars = list(bytes_to_unicode().values())
        tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
        vocab = {t: i for i, t in enumerate(tokens)}
        # Settings of SD 1.5's tokenizer/ as loaded by transformers 5 (bos is normalized, eos is not).
        added = [AddedToken(BOS_TOKEN, vocab[BOS_TOKEN], True), AddedToken(EOS_TOKEN, vocab[EOS_TOKEN], False)]
        return cls(vocab, merges, pad_token=pad_token, model_max_length=model_max_length,
                   added_tokens=added)

    @classmethod
    def from_pretrained_dir(cls, path: str | os.PathLike) -> "CLIPTokenizer":
        """Load a HuggingFace/diffusers tokenizer folder.

        ``path`` is the ``tokenizer/`` folder or a model folder containing one.
        Reads ``vocab.json`` + ``merges.txt`` (or, if both are absent,
        ``tokenizer.json``), and optionally ``tokenizer_config.json`` /
        ``special_tokens_map.json`` for bos/eos/pad, model_max_length and the
        added tokens (e.g. SD 2.x pads with ``!`` = id 0, which transformers then
        also matches as a special token inside prompts; we do the same).
        """
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer directory not found: {folder}")
        if not (folder / "vocab.json").exists() and (folder / "tokenizer").is_dir():
            folder = folder / "tokenizer"
        config = _read_json(folder / "tokenizer_config.json", required=False)
        special_map = _read_json(folder / "special_tokens_map.json", required=False)
        decoder = config.get("added_tokens_decoder")
        source = folder / "merges.txt"
        if (folder / "vocab.json").exists() or source.exists() or not (folder / "tokenizer.json").exists():
            vocab = _read_vocab(folder / "vocab.json")
            merges = _read_merges(source)
        else:
            source = folder / "tokenizer.json"
            vocab, merges, json_added = _read_tokenizer_json(source)
            decoder = decoder or json_added
        _check_merges(merges, vocab, source)
        return cls._from_hf_config(vocab, merges, config, special_map, decoder, folder)

    @classmethod
    def _from_hf_config(cls, vocab, merges, config, special_map, decoder, folder) -> "CLIPTokenizer":
        # Mirrors how transformers 5 registers added tokens: entries of
        # added_tokens_decoder first, then bos, eos, unk, pad; a token already
        # registered (same content) is skipped; an identical AddedToken dict is
        # skipped; otherwise the later registration's flags win.
        cfg_file = folder / "tokenizer_config.json"
        specials = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
        for key in specials:
            for source in (config, special_map):  # special_tokens_map.json wins
                if source.get(key) is not None:
                    specials[key] = source[key]
        added: dict[str, AddedToken] = {}
        if decoder is not None:
            if not isinstance(decoder, dict):
                raise ValueError(f"{cfg_file}: 'added_tokens_decoder' must be an object")
            for idx, entry in sorted(decoder.items(), key=lambda kv: int(kv[0])):
                content, normalized = _token_spec(entry, cfg_file)
                added[content] = AddedToken(content, int(idx), normalized)
        from_decoder = set(added)
        seen_dicts: list[tuple] = []
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = specials[key]
            content, normalized = _token_spec(value, cfg_file)
            if content in from_decoder:
                continue
            if isinstance(value, dict):
                signature = (content, normalized, value.get("lstrip", False), value.get("rstrip", False))
                if signature in seen_dicts:
                    continue
                seen_dicts.append(signature)
            if content not in vocab and content not in added:
                raise ValueError(f"{cfg_file}: {key} {content!r} is not in the vocabulary")
            token_id = added[content].id if content in added else vocab[content]
            added[content] = AddedToken(content, token_id, normalized)
        max_len = config.get("model_max_length")
        if not isinstance(max_len, int) or not 2 <= max_len <= 1_000_000:
            max_len = DEFAULT_MAX_LENGTH  # absent or transformers' "very large" placeholder
        names = {key: _token_spec(specials[key], cfg_file)[0] for key in ("bos_token", "eos_token", "pad_token")}
        return cls(vocab, merges, model_max_length=max_len, added_tokens=added.values(), **names)

    # ----------------------------------------------------------------- encoding
    @property
    def vocab_size(self) -> int:
        """Number of token ids (49408 for CLIP): the text encoder's embedding rows."""
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with bos and eos, not truncated."""
        ids = [self.bos_token_id]
        for piece, token in self._split_added(text, self._raw_added_re):
            if token is not None:
                ids.append(token)
                continue
            for sub, token2 in self._split_added(_normalize(piece), self._norm_added_re):
                if token2 is not None:
                    ids.append(token2)
                else:
                    for word in _SPLIT_RE.findall(sub):
                        if word in _LITERAL_SPECIALS:
                            for part in _LITERAL_SPECIALS[word]:
                                ids.extend(self._bpe_ids(part))
                        else:
                            ids.extend(self._bpe_ids(word))
        ids.append(self.eos_token_id)
        return ids

    def __call__(self, text: str | Sequence[str], max_length: int | None = None) -> np.ndarray:
        """Fixed-length ids, as diffusers gets them with
        ``tokenizer(text, padding="max_length", max_length=77, truncation=True)``.

        Too long inputs keep bos, the first ``max_length - 2`` tokens and eos;
        short ones are padded with ``pad_token_id``. A str gives an int32 array of
        shape ``(max_length,)``, a list of str gives ``(len(text), max_length)``.
        """
        n = self.model_max_length if max_length is None else int(max_length)
        if n < 2:
            raise ValueError(f"max_length must be >= 2, got {n}")
        if not isinstance(text, str):
            return np.stack([self(t, n) for t in text]) if len(text) else np.zeros((0, n), np.int32)
        ids = self.encode(text)
        if len(ids) > n:
            ids = ids[: n - 1] + [self.eos_token_id]
        out = np.full(n, self.pad_token_id, dtype=np.int32)
        out[: len(ids)] = ids
        return out

    def _added_pattern(self, normalized: bool):
        contents = sorted((t.content for t in self._added.values() if t.normalized == normalized), key=len, reverse=True)
        # longest first within the alternation = leftmost-longest match, like tokenizers
        return regex.compile("|".join(regex.escape(c) for c in contents)) if contents else None

    def _split_added(self, text: str, pattern) -> Iterable[tuple[str, int | None]]:
        """Yield (piece, None) for plain text and (content, id) for added tokens."""
        if pattern is None:
            if text:
                yield text, None
            return
        pos = 0
        for m in pattern.finditer(text):
            if m.start() > pos:
                yield text[pos : m.start()], None
            yield m.group(), self._added[m.group()].id
            pos = m.end()
        if pos < len(text):
            yield text[pos:], None

    def _bpe_ids(self, word: str) -> list[int]:
        """BPE of one pre-token (cached)."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = list(word.encode("utf-8").decode("latin-1").translate(self._byte_table))
        symbols[-1] += "</w>"
        ranks = self._ranks
        while len(symbols) > 1:
            # lowest-rank adjacent pair; merge all its (non-overlapping, left to right) occurrences
            best = min(zip(symbols, symbols[1:]), key=lambda p: ranks.get(p, 1 << 30))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids = [self._vocab[s] for s in symbols]
        if len(self._cache) >= 100_000:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    # ------------------------------------------------------------------- export
    def save_pretrained_files(self, directory: str | os.PathLike) -> list[Path]:
        """Write ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and
        ``special_tokens_map.json`` (HuggingFace formats, readable by
        ``transformers.CLIPTokenizer.from_pretrained`` and :meth:`from_pretrained_dir`).
        Returns the written paths.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        names = {"bos_token": self.bos_token, "eos_token": self.eos_token,
                 "unk_token": EOS_TOKEN if EOS_TOKEN in self._vocab else self.eos_token,
                 "pad_token": self.pad_token}
        config = {
            "added_tokens_decoder": {
                str(t.id): {"content": t.content, "lstrip": False, "normalized": t.normalized,
                            "rstrip": False, "single_word": False, "special": True}
                for t in sorted(self._added.values(), key=lambda t: t.id)
            },
            **names,
            "clean_up_tokenization_spaces": False,
            "do_lower_case": True,
            "model_max_length": self.model_max_length,
            "tokenizer_class": "CLIPTokenizer",
        }
        files = {
            "vocab.json": json.dumps(self._vocab, ensure_ascii=False),
            "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self._merges),
            "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False),
            "special_tokens_map.json": json.dumps(names, indent=2, ensure_ascii=False),
        }
        paths = []
        for name, content in files.items():
            (out / name).write_text(content, encoding="utf-8")
            paths.append(out / name)
        return paths

    def to_tokenizers_json(self, padded: bool = True) -> str:
        """The equivalent HuggingFace ``tokenizer.json`` (for ``tokenizers.Tokenizer.from_str``
        or ``@mlc-ai/web-tokenizers``' ``Tokenizer.fromJSON``).

        Its ``encode(text).ids`` equal :meth:`encode` (``padded=False``) or
        ``__call__`` (``padded=True``: truncation + padding to ``model_max_length``).
        """
        added = [
            {"id": t.id, "content": t.content, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": t.normalized, "special": True}
            for t in sorted(self._added.values(), key=lambda t: t.id)
        ]
        clip_split = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
        doc = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
                {"type": "Lowercase"},
            ]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": clip_split}, "behavior": "Removed", "invert": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ]},
            "post_processor": {"type": "RobertaProcessing", "sep": [self.eos_token, self.eos_token_id],
                               "cls": [self.bos_token, self.bos_token_id], "trim_offsets": False,
                               "add_prefix_space": False},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": self.eos_token,
                      "continuing_subword_prefix": "", "end_of_word_suffix": "</w>", "fuse_unk": False,
                      "byte_fallback": False, "ignore_merges": False,
                      "vocab": self._vocab, "merges": [[a, b] for a, b in self._merges]},
        }
        if padded:
            doc["truncation"] = {"direction": "Right", "max_length": self.model_max_length,
                                 "strategy": "LongestFirst", "stride": 0}
            doc["padding"] = {"strategy": {"Fixed": self.model_max_length}, "direction": "Right",
                              "pad_to_multiple_of": None, "pad_id": self.pad_token_id, "pad_type_id": 0,
                              "pad_token": self.pad_token}
        return json.dumps(doc, ensure_ascii=False)


# --------------------------------------------------------------- file readers
def _read_json(path: Path, required: bool = True) -> dict:
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"missing tokenizer file: {path}")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed JSON in {path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"malformed {path}: expected a JSON object")
    return data


def _read_vocab(path: Path) -> dict[str, int]:
    vocab = _read_json(path)
    if not vocab or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vocab.values()):
        raise ValueError(f"malformed {path}: expected a non-empty object of token -> non-negative integer id")
    return vocab


def _read_merges(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"missing tokenizer file: {path}")
    merges = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if (lineno == 1 and line.startswith("#version")) or not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"malformed {path} line {lineno}: expected 'left right', got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _check_merges(merges, vocab, path: Path) -> None:
    for a, b in merges:
        if a not in vocab or b not in vocab or a + b not in vocab:
            raise ValueError(f"{path}: merge {a!r} {b!r} uses tokens missing from the vocabulary")


def _read_tokenizer_json(path: Path):
    data = _read_json(path)
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"{path}: expected a BPE model with a vocab")
    if model.get("end_of_word_suffix") != "</w>":
        raise ValueError(f"{path}: not a CLIP tokenizer (end_of_word_suffix must be '</w>')")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    if any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: malformed merges")
    added = {str(t["id"]): t for t in data.get("added_tokens", [])}
    return model["vocab"], merges, added or None


def _token_spec(value, path: Path) -> tuple[str, bool]:
    """(content, normalized) of a special-token entry: a str or an AddedToken dict."""
    if isinstance(value, str):
        return value, False
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        if value.get("single_word"):
            raise ValueError(f"{path}: single_word added tokens are not supported ({value['content']!r})")
        return value["content"], bool(value.get("normalized", False))
    raise ValueError(f"{path}: malformed token entry {value!r}")
