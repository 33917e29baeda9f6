"""Where text comes from: a local file, or Tiny Shakespeare downloaded and verified by its sha256."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from pygpt._fs import write_bytes_atomically

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DEFAULT_DATA_DIR = Path("data")


def read_text(path: str | os.PathLike) -> str:
    """The whole file as UTF-8 text; a clear error if it is missing, empty or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path} (run `pygpt prepare` or pass --data FILE)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:  # (its own message names neither the file nor what was expected)
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}: "
                         f"{err.reason}); pass a UTF-8 text file (convert it with e.g. iconv)") from None
    if not text:
        raise ValueError(f"text file is empty: {path}")
    return text


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download_tiny_shakespeare(dest_dir: str | os.PathLike = DEFAULT_DATA_DIR, url: str = TINY_SHAKESPEARE_URL,
                              timeout: float = 30.0) -> Path:
    """Download Tiny Shakespeare to ``dest_dir/tinyshakespeare.txt`` (atomically), verifying its sha256.

    Returns the path; a file already there with the right hash is kept without downloading.
    """
    dest_dir = Path(dest_dir)
    dest = dest_dir / "tinyshakespeare.txt"
    if dest.is_file() and sha256_of(dest) == TINY_SHAKESPEARE_SHA256:
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except (urllib.error.URLError, OSError) as err:
        raise ConnectionError(
            f"could not download Tiny Shakespeare from {url} ({err}); if you are offline, pass a local copy "
            "with `pygpt prepare --input FILE`") from err
    digest = hashlib.sha256(payload).hexdigest()
    if digest != TINY_SHAKESPEARE_SHA256:
        raise ValueError(f"downloaded file has sha256 {digest}, expected {TINY_SHAKESPEARE_SHA256}; not saved")
    write_bytes_atomically(dest, payload)
    return dest


def find_tiny_shakespeare() -> Path | None:
    """A local Tiny Shakespeare: $PYGPT_DATA, ./data/tinyshakespeare.txt, or the team's shared copy."""
    candidates = []
    if os.environ.get("PYGPT_DATA"):
        candidates.append(Path(os.environ["PYGPT_DATA"]))
    candidates.append(DEFAULT_DATA_DIR / "tinyshakespeare.txt")
    for parent in [Path.cwd(), *Path.cwd().parents][:3]:
        candidates.append(parent / "shared" / "data" / "tinyshakespeare.txt")
    return next((p for p in candidates if p.is_file()), None)
