"""CLIP's byte-level BPE tokenizer (openai/CLIP `simple_tokenizer.py`), for the
text tower of `sgc_jax.models.clip`.

The vocabulary is the user's `bpe_simple_vocab_16e6.txt.gz` (shipped with
openai/CLIP and open_clip; sgc_jax does not ship it): gzip'd UTF-8 text, a
header line, then one merge per line, two symbols separated by a space. CLIP
uses the first 49152 - 256 - 2 = 48894 merges. The token ids are, in order:
the 256 byte symbols, the same with the end-of-word mark "</w>", one token
per merge (its two symbols joined), then <|startoftext|> and <|endoftext|>:
49406 and 49407 for the released file, so the vocabulary size (49408) comes
from the file.

Encoding a text, as CLIP does:
  1. cleaning: `ftfy.fix_text` (mojibake, odd Unicode), HTML entities
     unescaped twice (captions scraped from the web are often escaped twice),
     runs of whitespace collapsed to one space, stripped, lowercased;
  2. splitting with CLIP's pattern: the special tokens, the English
     contractions 's 't 're 've 'm 'll 'd, runs of letters (\\p{L}), single
     digits (\\p{N}), runs of anything else but whitespace — which needs the
     `regex` module's Unicode classes;
  3. each piece's UTF-8 bytes as byte symbols (GPT-2's `bytes_to_unicode`: the
     printable Latin-1 bytes stand for themselves, the rest for code points
     from 256 on, so no symbol is whitespace or a control character), the last
     marked "</w>", then merged pairwise, always the adjacent pair whose merge
     came first in the file, until no pair has a merge.

`tokenize` frames each text with <|startoftext|> ... <|endoftext|> and pads
with zeros to the context length. A longer text is truncated to the context
length with <|endoftext|> kept as its last token, as open_clip's tokenizer
does (CLIP's own raises unless `truncate=True`, which does the same): the text
tower reads its embedding at that token.
"""

from __future__ import annotations

import functools
import gzip
import html
import re
import zlib
from typing import Callable, Sequence

import ftfy
import numpy as np
import regex

from sgc_jax.ops import kmeans

START_OF_TEXT, END_OF_TEXT = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
# The merges CLIP reads from its file: its vocabulary of 49152 tokens less the
# 256 byte symbols and the 2 special tokens (the "</w>" symbols come on top).
MAX_MERGES = 49152 - 256 - 2
CONTEXT_LENGTH = 77
_PATTERN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE)
_WHITESPACE = regex.compile(r"\s+")


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
  """byte -> the one-character symbol standing for it: the printable Latin-1
  bytes ("!".."~", "¡".."¬", "®".."ÿ") for themselves, the other 68 bytes for
  chr(256), chr(257), ... in byte order. The dict's order, printable bytes
  first, is the order of the vocabulary's first 256 ids."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable},
          **{b: chr(256 + n) for n, b in enumerate(others)}}


def clean(text: str) -> str:
  """CLIP's cleaning of a text before splitting (see the module docstring)."""
  text = html.unescape(html.unescape(ftfy.fix_text(text)))
  return _WHITESPACE.sub(" ", text).strip().lower()


def _read_merges(path: str) -> list[tuple[str, str]]:
  """The first MAX_MERGES merges of the vocabulary file, checked: a missing,
  non-gzip, non-UTF-8 or malformed file is a ValueError naming it."""
  try:
    with gzip.open(path, "rt", encoding="utf-8") as file:
      lines = file.read().split("\n")
  except FileNotFoundError:
    raise ValueError(f"{path}: no such CLIP vocabulary file (bpe_simple_vocab_16e6.txt.gz, "
                     "from openai/CLIP or open_clip)") from None
  except (gzip.BadGzipFile, EOFError, zlib.error) as error:
    raise ValueError(f"{path}: not a gzip'd CLIP vocabulary ({type(error).__name__}: "
                     f"{str(error)[:200]})") from None
  except OSError as error:
    raise ValueError(f"{path}: cannot read the CLIP vocabulary ({error.strerror})") from None
  except UnicodeDecodeError as error:
    raise ValueError(f"{path}: not UTF-8 text at byte {error.start} of the unzipped "
                     "vocabulary") from None
  if lines and lines[-1] == "":
    lines.pop()  # The file's final newline.
  if not lines:
    raise ValueError(f"{path}: an empty CLIP vocabulary (no header line)")
  merges = []
  for number, line in enumerate(lines[1:1 + MAX_MERGES], 2):
    pair = tuple(line.split())
    if len(pair) != 2:
      raise ValueError(f"{path}: line {number} is {line[:80]!r}, not a merge of two symbols")
    merges.append(pair)
  return merges


class Tokenizer:
  """CLIP's BPE over the vocabulary file at `vocab_path` (see the module docstring)."""

  def __init__(self, vocab_path: str):
    self.path = vocab_path
    merges = _read_merges(vocab_path)
    self.byte_symbols = bytes_to_unicode()
    symbols = list(self.byte_symbols.values())
    tokens = [*symbols, *(s + END_OF_WORD for s in symbols)]
    known = set(tokens)
    for number, (first, second) in enumerate(merges, 2):
      if first not in known or second not in known:
        unknown = first if first not in known else second
        raise ValueError(f"{vocab_path}: line {number} merges {unknown[:80]!r}, which no "
                         "earlier line makes")
      known.add(first + second)
      tokens.append(first + second)
    tokens += [START_OF_TEXT, END_OF_TEXT]
    # A token or merge listed twice takes its later id or rank, as in CLIP.
    self.encoder = {token: i for i, token in enumerate(tokens)}
    self.decoder = dict(enumerate(tokens))
    self.ranks = {pair: rank for rank, pair in enumerate(merges)}
    self.start_of_text = self.encoder[START_OF_TEXT]
    self.end_of_text = self.encoder[END_OF_TEXT]
    self.vocab_size = len(tokens)
    self._pieces: dict[str, tuple[str, ...]] = {}

  def bpe(self, piece: str) -> tuple[str, ...]:
    """The BPE symbols of one piece (already in byte symbols)."""
    if piece in (START_OF_TEXT, END_OF_TEXT):
      return (piece,)
    if piece in self._pieces:
      return self._pieces[piece]
    word = [*piece[:-1], piece[-1] + END_OF_WORD]
    while len(word) > 1:
      ranked = [(self.ranks[pair], pair) for pair in zip(word, word[1:]) if pair in self.ranks]
      if not ranked:
        break
      _, (first, second) = min(ranked)
      merged, i = [], 0
      while i < len(word):  # Every occurrence, left to right.
        if i + 1 < len(word) and (word[i], word[i + 1]) == (first, second):
          merged.append(first + second)
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = merged
    self._pieces[piece] = tuple(word)
    return self._pieces[piece]

  def encode(self, text: str) -> list[int]:
    """The token ids of `text`, without the start and end tokens."""
    ids = []
    for piece in _PATTERN.findall(clean(text)):
      symbols = "".join(self.byte_symbols[b] for b in piece.encode("utf-8"))
      ids.extend(self.encoder[symbol] for symbol in self.bpe(symbols))
    return ids

  def decode(self, ids) -> str:
    """The (cleaned) text of token ids, a space after each word; the special
    tokens as their text."""
    text = "".join(self.decoder[int(i)] for i in ids)
    byte_of = {symbol: b for b, symbol in self.byte_symbols.items()}
    # "<|startoftext|>" and "</w>" are spelled in symbols that stand for themselves.
    return bytes(byte_of[c] for c in text).decode("utf-8", errors="replace").replace(
        END_OF_WORD, " ")

  def tokenize(self, texts: str | list[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """np.int32 [N, context_length]: each text as <|startoftext|>, its ids,
    <|endoftext|>, zero-padded; truncated with <|endoftext|> last when longer."""
    if isinstance(texts, str):
      texts = [texts]
    if context_length < 2:
      raise ValueError(f"tokenize: context_length {context_length}; at least 2 for the "
                       "start and end tokens")
    out = np.zeros((len(texts), context_length), np.int32)
    for row, text in enumerate(texts):
      ids = [self.start_of_text, *self.encode(text)][:context_length - 1] + [self.end_of_text]
      out[row, :len(ids)] = ids
    return out


def normalize(vectors: np.ndarray) -> np.ndarray:
  """Unit rows, float32 (computed in float64)."""
  return kmeans.unit_rows(vectors).astype(np.float32)


def prompt_name(name: str) -> str:
  """A data set's class name as words: COCO panoptic's "wall-other-merged" ->
  "wall", "playingfield" stays, "traffic_light" -> "traffic light"."""
  name = re.sub(r"(-(merged|other|stuff))+$", "", name)
  return re.sub(r"[-_]+", " ", name).strip()


def ensemble(embed: Callable[[np.ndarray], np.ndarray], tokenizer, context_length: int,
             templates: Sequence[str], names: Sequence[str]) -> np.ndarray:
  """[C, E] unit vectors: per class, the normalised mean of its prompts' unit
  embeddings."""
  prompts = [t.format(prompt_name(n)) for n in names for t in templates]
  vectors = normalize(np.asarray(
      embed(tokenizer.tokenize(prompts, context_length)), np.float64))
  return normalize(vectors.reshape(len(names), len(templates), -1).mean(1))
