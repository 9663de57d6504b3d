"""A text corpus, offline: the King James Bible from Debian's packages, as bytes, split by contiguous blocks.

Chapter 09's language model reads English prose one byte at a time. The text is the King James Version of the
Bible (public domain, about 4 MB of plain English), which Debian ships as ``bible-kjv-text`` (the compressed
text) with ``bible-kjv`` (the ``bible`` program that prints it). ``setup()`` writes it once, one verse per line
without verse numbers, to ``kjv/kjv.txt`` under the data folder (``$DEEPLSP_DATA`` or ``data/`` in the repo):

1. if ``kjv/kjv.txt`` is there and intact (its sha256), use it;
2. else print it with an installed ``bible`` program (``/usr/bin/bible`` and ``/usr/lib/bible.data``);
3. else, as root with apt: ``apt-get install bible-kjv`` and go to 2;
4. else, with apt but not root: ``apt-get download bible-kjv bible-kjv-text`` into a temporary folder, unpack them
   there with ``dpkg -x`` (no root needed) and run the unpacked program;
5. else a :class:`TextNotFoundError` that lists these ways.

Splits: the text is cut into blocks of ``BLOCK_BYTES``; of every 20 consecutive blocks the 19th is validation and
the 20th test, the rest train (90 / 5 / 5 %). Contiguous blocks keep held-out text from being interleaved with
training text verse by verse, while every book contributes to every split.

``python -m deeplsp_helpers.text_data setup`` fetches it (``make setup`` runs this).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch

from ._validate import check_int
from .files import atomic_write

__all__ = ["TextNotFoundError", "TextSplits", "find_text", "load_text", "random_windows", "eval_windows", "encode",
           "decode", "setup"]

TEXT_SHA256 = "b55e956fcf5f187160b3d0dfa93bbac269d127902ad9fb6c8f05a5dab019f6d5"  # of kjv.txt (31,102 verses)
TEXT_BYTES = 4_137_849  # of kjv.txt
BLOCK_BYTES = 16_384
DEBIAN_PROGRAM, DEBIAN_DATA = Path("/usr/bin/bible"), Path("/usr/lib/bible.data")
PACKAGES = ("bible-kjv", "bible-kjv-text")
ALL_VERSES = "Gen1:1-Rev22:21"


class TextNotFoundError(FileNotFoundError):
    """The corpus is not on this machine and could not be made from Debian's packages."""


class TextSplits(NamedTuple):
    """The corpus as byte tensors (uint8, 1-D): train, validation, test."""
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def _data_dir() -> Path:
    """``$DEEPLSP_DATA``, else the repository's ``data/`` (as for FashionMNIST: ``./data`` when installed elsewhere)."""
    from .data import _repo_data_dir

    if os.environ.get("DEEPLSP_DATA"):
        return Path(os.environ["DEEPLSP_DATA"]).expanduser()
    return _repo_data_dir()


def _text_path(root: Path | None = None) -> Path:
    return (root or _data_dir()) / "kjv" / "kjv.txt"


def _intact(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size != TEXT_BYTES:
        return False
    return hashlib.sha256(path.read_bytes()).hexdigest() == TEXT_SHA256


def clean(raw: str) -> str:
    """The ``bible`` program's output as prose: one verse per line, without chapter headings or verse numbers."""
    verses = []
    for line in raw.splitlines():
        m = re.match(r"^\s+\d+ (.*\S)\s*$", line)
        if m:
            verses.append(m.group(1))
    if len(verses) < 30_000:  # the KJV has 31,102 verses
        raise ValueError(f"the bible program printed {len(verses)} verses, expected 31,102")
    return "\n".join(verses) + "\n"


def _print_with(program: Path, data_dir: Path) -> str | None:
    """The cleaned text from ``program`` reading ``data_dir/bible.data``; ``None`` if it cannot run."""
    try:
        out = subprocess.run([str(program), "-p", str(data_dir), "-l0", ALL_VERSES], capture_output=True, timeout=120,
                             check=True)
        return clean(out.stdout.decode("ascii"))
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError, ValueError):
        return None


def _from_downloaded_debs(folder: Path) -> str | None:
    """``apt-get download`` the two packages into ``folder``, unpack them with ``dpkg -x`` (no root), print."""
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    unpacked = folder / "root"
    program, data = unpacked / "usr/bin/bible", unpacked / "usr/lib/bible.data"
    if not (program.is_file() and data.is_file()):
        try:
            subprocess.run(["apt-get", "download", *PACKAGES], cwd=folder, capture_output=True, timeout=300, check=True)
            for deb in folder.glob("*.deb"):
                subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], capture_output=True, timeout=120, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
    return _print_with(program, data.parent) if program.is_file() and data.is_file() else None


def _missing_message(path: Path) -> str:
    where = (f"at {path} is damaged (its size or sha256 differs from the course's)" if path.exists()
             else f"is not at {path}")
    return (f"the text corpus (the King James Bible) {where} and could not be made. Ways to get it:\n"
            "  1. Debian/Ubuntu: sudo apt-get install bible-kjv   (then: python -m deeplsp_helpers.text_data setup)\n"
            "  2. without root, where apt-get works: python -m deeplsp_helpers.text_data setup  (it downloads the two\n"
            "     .deb files with apt-get download and unpacks them in a temporary folder)\n"
            f"  3. copy a kjv.txt made on another machine by step 1 or 2 to {path} (sha256 {TEXT_SHA256[:12]}…)")


def find_text(*, install: bool = False) -> Path:
    """The path of ``kjv.txt``, making it from Debian's packages if needed (see the module's docstring).

    Args:
        install: allow ``apt-get install`` (as root) and ``apt-get download`` (otherwise).
    Raises:
        TextNotFoundError: every way failed (the message lists them).
    """
    path = _text_path()
    if _intact(path):
        return path
    text = None
    if DEBIAN_PROGRAM.is_file() and DEBIAN_DATA.is_file():
        text = _print_with(DEBIAN_PROGRAM, DEBIAN_DATA.parent)
    if text is None and install and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing the Debian package bible-kjv ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], check=False, env=env, capture_output=True)
        if DEBIAN_PROGRAM.is_file() and DEBIAN_DATA.is_file():
            text = _print_with(DEBIAN_PROGRAM, DEBIAN_DATA.parent)
    if text is None and install:
        with tempfile.TemporaryDirectory() as tmp:
            text = _from_downloaded_debs(Path(tmp))
    if text is None:
        raise TextNotFoundError(_missing_message(path))
    data = text.encode("ascii")
    if len(data) != TEXT_BYTES or hashlib.sha256(data).hexdigest() != TEXT_SHA256:
        raise TextNotFoundError(f"the bible program printed a different text ({len(data):,} bytes, sha256 "
                                f"{hashlib.sha256(data).hexdigest()[:12]}…) than the course expects ({TEXT_BYTES:,} "
                                f"bytes, {TEXT_SHA256[:12]}…): another edition of bible-kjv-text?")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(data))
    return path


def load_text() -> TextSplits:
    """The corpus as bytes, split into train / validation / test by contiguous blocks (see the module's docstring)."""
    raw = torch.frombuffer(bytearray(find_text().read_bytes()), dtype=torch.uint8)
    blocks = raw.split(BLOCK_BYTES)
    parts = {"train": [], "val": [], "test": []}
    for i, b in enumerate(blocks):
        parts["val" if i % 20 == 18 else "test" if i % 20 == 19 else "train"].append(b)
    return TextSplits(*(torch.cat(parts[k]).clone() for k in ("train", "val", "test")))


def encode(text: str) -> torch.Tensor:
    """A string as its UTF-8 bytes: a uint8 tensor [len]."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not text:
        raise ValueError("text is empty: give at least one character")
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


def decode(tokens) -> str:
    """Byte values (a tensor or a list of ints in 0..255) as text; bytes that are not valid UTF-8 become '�'."""
    if isinstance(tokens, torch.Tensor):
        if tokens.ndim != 1 or tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be a 1-D integer tensor of byte values, got {tokens.dtype} of shape "
                            f"{tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) > 255):
            raise ValueError(f"tokens must be byte values in 0..255, got {int(tokens.min())}..{int(tokens.max())}")
        return bytes(tokens.to(torch.uint8).tolist()).decode("utf-8", errors="replace")
    if isinstance(tokens, (str, bytes)) or not hasattr(tokens, "__iter__"):
        raise TypeError(f"tokens must be a 1-D tensor or a list of byte values (ints in 0..255), got "
                        f"{type(tokens).__name__}")
    values = list(tokens)
    bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255), None)
    if bad is not None:
        raise (ValueError if isinstance(bad, int) and not isinstance(bad, bool) else TypeError)(
            f"tokens must be byte values, ints in 0..255, got {bad!r}")
    return bytes(values).decode("utf-8", errors="replace")


def _check_tokens(tokens, context: int) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 1:
        raise TypeError("tokens must be a 1-D tensor of byte values (e.g. load_text().val)")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be an integer tensor of byte values (e.g. load_text().val, uint8), got "
                        f"{tokens.dtype}")
    if len(tokens) < context + 1:
        raise ValueError(f"tokens holds {len(tokens)} bytes: a window of context {context} needs {context + 1}")
    return tokens


def random_windows(tokens: torch.Tensor, batch_size: int, context: int, generator: torch.Generator | None = None):
    """A training batch: ``batch_size`` windows at random offsets; inputs ``x`` and next-byte targets ``y``,
    both int64 [batch_size, context]."""
    check_int(batch_size, "batch_size", 1)
    check_int(context, "context", 1)
    tokens = _check_tokens(tokens, context)
    starts = torch.randint(0, len(tokens) - context, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(context + 1)
    win = tokens[idx].long()
    return win[:, :-1], win[:, 1:]


def eval_windows(tokens: torch.Tensor, context: int, max_windows: int | None = None):
    """Non-overlapping windows from the start of ``tokens``: ``(x, y)`` int64 [windows, context] each, the targets
    shifted by one byte; at most ``max_windows`` of them (all that fit by default)."""
    check_int(context, "context", 1)
    tokens = _check_tokens(tokens, context)
    n = (len(tokens) - 1) // context
    if max_windows is not None:
        n = min(n, check_int(max_windows, "max_windows", 1))
    x = tokens[:n * context].long().view(n, context)
    y = tokens[1:n * context + 1].long().view(n, context)
    return x, y


def setup() -> Path:
    """Make the corpus available (installing or downloading Debian's packages where it can)."""
    return find_text(install=True)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m deeplsp_helpers.text_data", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["setup", "where"], help="setup: make the corpus if needed; where: print it")
    args = parser.parse_args(argv)
    try:
        path = setup() if args.command == "setup" else find_text()
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"text corpus ready: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
