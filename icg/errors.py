"""The one family of errors that are the user's to fix: a bad config value, file, row or checkpoint.

``icg``'s entry points print such an error as one line (the config key, file or row, the bad value and what to do)
and exit non-zero; a traceback is kept for bugs, or shown on request (``--debug`` / ``ICG_DEBUG=1``). Library code
raises a subclass of :class:`UserError` (often also a builtin such as ``ValueError`` so callers can keep catching
that) whenever the message alone tells the user what to change.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

DEBUG_FLAG = "--debug"
DEBUG_ENV = "ICG_DEBUG"


class UserError(Exception):
    """An error caused by the user's input or settings; its message names what to change."""


class RunFolderError(UserError, FileExistsError):
    """A training run would write into a folder that already holds another run's checkpoints."""


class ConfigError(UserError, ValueError):
    """A config value (or command-line option) is out of range or inconsistent; the message names key and value."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder named by a config key or option does not exist; the message says which and what it holds."""


class OutputFolderError(UserError, FileExistsError):
    """An output folder is not empty, or holds something the command will not replace; the message names it."""


class ClassPathError(UserError, ValueError):
    """A checkpoint, export or config names a class outside the allow-list (``icg.ckpt.resolve_class``).

    Files are data: a path outside the allowed packages is refused before it is imported, and nothing is built. The
    message names the file, the key and the class.
    """


class ExportError(UserError, FileNotFoundError):
    """An export folder is missing, incomplete, tampered with or not an icg export; the message names the file."""


class DiskFullError(UserError, OSError):
    """A write ran out of disk space or quota; the message names the path, the space needed and the space free."""


class ArgumentsError(UserError):
    """The command line or a config file does not parse (unknown key, wrong type); the message is the parser's gist.

    Deliberately not an ``argparse.ArgumentError`` (nor a ``TypeError``/``KeyError``): jsonargparse catches those
    while parsing, and this one must reach ``icg.cli.main`` untouched.
    """


class ShortParserErrors:
    """Mixin for a jsonargparse ``ArgumentParser``: its errors reach ``main`` as one :class:`ArgumentsError`.

    Only the top-level parser (and its subcommand parsers) shorten; the parsers jsonargparse builds for nested
    classes keep raising its own errors, which it catches while trying each type of a union. With ``--debug`` /
    ``ICG_DEBUG=1`` the parser prints usage and its complete message as usual.
    """

    def error(self, message: str, ex: Exception | None = None):
        if debug_requested([]) or not self.exit_on_error:
            super().error(message, ex)
        raise ArgumentsError(shorten_parser_error(message)) from ex


def debug_requested(words: list[str]) -> bool:
    """Whether the user asked for tracebacks (``--debug`` among the words, or ``ICG_DEBUG`` set to a true value)."""
    return DEBUG_FLAG in words or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def find_user_error(err: BaseException) -> UserError | None:
    """``err`` itself if it is a :class:`UserError`, else the first one it was raised ``from`` (explicit causes only).

    jsonargparse wraps an exception raised while it instantiates a class (``raise ValueError(...) from ex``); the
    user's error is the cause, and its message is the one to print.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__
    return None


# jsonargparse's nested messages: lines that restate the union's alternatives or the whole given value
_PARSER_NOISE = re.compile(
    r"^(Subtypes: |Given value type: |Given value: |Errors:$|Does not validate against any of the Union subtypes$"
    r"|Expected a <class 'NoneType'>$|tip: )"
)
_PARSER_KEY = re.compile(r'^Parser key "([^"]+)"(?: element (\d+))?:\s*(.*)$', re.M)
_CLASS_PATH = re.compile(r"^Problem with given class_path '([^']+)':\s*(.*)$", re.M)
_UNKNOWN_OPTION = re.compile(r"^Option '([^']+)' is not accepted$")
_IMPORT_FAILURE = re.compile(r"No module named|has no attribute|cannot import|Import of")
_REQUIRED = re.compile(r"^the following arguments are required: (.*)$")


def shorten_parser_error(message: str, max_reasons: int = 3) -> str:  # noqa: C901  # one branch per jsonargparse message shape
    """The gist of a jsonargparse error: the deepest reason(s), each with the full config key it belongs to.

    A typo deep in a nested ``class_path``/``init_args`` config makes jsonargparse print every alternative of every
    union on the way down (~70 lines, the useful one near the end). This keeps the most deeply nested reasons and
    names them by their dotted key, e.g. ``model.init_args.model.init_args.hiden_dim: no such option (of
    icg.models.preference.PreferenceModel)``.

    Args:
        message: the parser's message.
        max_reasons: at most this many reasons are kept.
    """
    if required := _REQUIRED.match(message.strip()):
        keys = [re.sub(r"^(fit|validate|test|predict)\.", "", k.strip()) for k in required.group(1).split(",")]
        return f"{', '.join(keys)}: required, and not given on the command line or in a --config file"
    if not _PARSER_KEY.search(message) and not _CLASS_PATH.search(message):  # a flat message: keep it, on one line
        return " ".join(line.strip() for line in message.splitlines() if line.strip()) or "invalid arguments"
    lines = []
    for raw in message.splitlines():
        text = raw.strip()
        depth = len(raw) - len(raw.lstrip())
        if text.startswith("- "):
            text, depth = text[2:].strip(), depth + 2
        if text:
            lines.append((depth, text))
    reasons: list[tuple[int, str]] = []
    for index, (depth, text) in enumerate(lines):
        if _PARSER_NOISE.match(text):
            continue
        key_match, class_match = _PARSER_KEY.match(text), _CLASS_PATH.match(text)
        rest = key_match.group(3) if key_match else class_match.group(2) if class_match else text
        if not rest or _PARSER_NOISE.match(rest):
            continue  # a header: its reason is on the indented lines below
        owner = ""
        chain, level = [], depth
        for outer_depth, outer in reversed(lines[: index + 1]):
            if outer_depth > level or (outer_depth == level and outer is not text):
                continue
            level = outer_depth
            if match := _PARSER_KEY.match(outer):
                chain.insert(0, match.group(1))
            elif match := _CLASS_PATH.match(outer):
                chain.insert(0, "init_args")
                owner = owner or match.group(1)
        key = ".".join(chain)
        if option := _UNKNOWN_OPTION.match(rest):
            key, rest = f"{key}.{option.group(1)}" if key else option.group(1), "no such option"
        elif owner and _IMPORT_FAILURE.search(rest) and key.endswith("init_args"):
            key, rest, owner = (
                key.removesuffix(".init_args").removesuffix("init_args"),
                f"cannot import {owner}: {rest}",
                "",
            )
        where = f"{key}: " if key else ""
        reasons.append((depth, f"{where}{_plain_types(rest)}" + (f" (of {owner})" if owner else "")))
    if not reasons:
        return message.strip().splitlines()[0] if message.strip() else "invalid arguments"
    deepest = max(depth for depth, _ in reasons)
    chosen = list(dict.fromkeys(text for depth, text in reasons if depth == deepest))
    return "; ".join(chosen[:max_reasons])


def _plain_types(text: str) -> str:
    """``Expected a <class 'int'>`` -> ``expected int`` in parser messages."""
    text = re.sub(r"Expected an? <class '([\w.]+)'>", r"expected \1", text)
    return re.sub(r"<class '([\w.]+)'>", r"\1", text)


# ENOSPC / EDQUOT as OSError, and as the text of errors that carry them without an errno: safetensors'
# ``SafetensorError`` ("IoError(Os { code: 28, kind: StorageFull, ...})") and pyarrow's "[errno 28] ..."
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
_DISK_FULL_TEXT = re.compile(
    r"No space left on device|Disk quota exceeded|StorageFull|FilesystemQuotaExceeded"
    rf"|(?:errno|code:) ?(?:{errno.ENOSPC}|{getattr(errno, 'EDQUOT', errno.ENOSPC)})\b",
    re.I,
)


def disk_full_cause(err: BaseException) -> BaseException | None:
    """``err`` or the first error it was raised from (or during) that says the disk or quota is full; else None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS:
            return err
        if not isinstance(err, UserError) and _DISK_FULL_TEXT.search(str(err)):
            return err
        err = err.__cause__ or err.__context__
    return None


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"  # pragma: no cover


def _free_space(path: Path) -> int | None:
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


@contextmanager
def disk_full_is_a_user_error(out: str | Path, needed: Callable[[], int | None] | None = None) -> Iterator[None]:
    """Turn a full disk or quota met inside the block into one :class:`DiskFullError` line (exit status 2).

    The line names the file being written (or ``out``), what the write needed (``needed()``, an estimate in bytes of
    what the command still had to write) and what is free there. The writers it wraps leave nothing half-written (they
    write beside the target and rename), so the message can say so.

    Args:
        out: the output folder or file of the command.
        needed: returns the bytes the command still had to write when it failed (None: unknown).
    """
    try:
        yield
    except Exception as err:
        cause = disk_full_cause(err)
        if cause is None or isinstance(err, DiskFullError):
            raise
        filename = getattr(cause, "filename", None)
        path = Path(filename) if isinstance(filename, str | os.PathLike) else Path(out)
        quota = isinstance(cause, OSError) and cause.errno == getattr(errno, "EDQUOT", None)
        reason = "disk quota exceeded" if quota or "quota" in str(cause).lower() else "no space left on device"
        try:
            estimate = needed() if needed is not None else None
        except Exception:  # an estimate must not hide the real error
            estimate = None
        free = _free_space(path)
        wants = f"it needed about {_size(estimate)} more" if estimate else "it needed more"
        has = f", {_size(free)} is free there" if free is not None else ""
        raise DiskFullError(
            f"{path}: {reason} ({wants}{has}); free some space or choose another output folder and run again "
            "(nothing half-written was left)"
        ) from err


def require_path(path: str | Path | None, key: str, expected: str, kind: str = "any") -> Path:
    """Return ``path`` as a Path or raise FileNotFoundError naming the config ``key`` and what belongs there.

    Args:
        path: the configured path.
        key: the config key that named it (quoted in the error).
        expected: what should be there, e.g. "a CLIP save_pretrained folder (config.json, model.safetensors, ...)".
        kind: "file", "dir" or "any".
    """
    if path is None or str(path) == "":
        raise MissingFileError(f"{key}: no path given; expected {expected}")
    p = Path(path).expanduser()
    ok = p.is_file() if kind == "file" else p.is_dir() if kind == "dir" else p.exists()
    if not ok:
        what = {"file": "is not a file", "dir": "is not a folder"}.get(kind, "does not exist")
        if not p.exists():
            what = "does not exist"
        raise MissingFileError(f"{key}: {p} {what}; expected {expected}")
    return p
