"""The one filesystem layer every path of a run goes through: local disk or `gs://`.

Built on etils `epath`, the path type orbax already takes, so a `MODEL_DIR` names the same
files for ptjf's own writes and for orbax's checkpoints. For `gs://`, epath is told to use
fsspec's `gcsfs` rather than TensorFlow's GCS client (`EPATH_USE_TF=false`): gcsfs honours
`STORAGE_EMULATOR_HOST`, so the code a pod runs is the code the tests run against a local GCS
API, and it exposes GCS's generation preconditions, which `create_exclusive` needs. Orbax's
array data goes through TensorStore, pointed at the same endpoint by `configure_clients`.

What an object store does not have, and how ptjf lives without it:
- no append: a log is a series of objects, one per flush (see `ptjf.training.metrics_io`);
- no atomic rename of a directory: `move` copies then deletes, and readers decide what is
  complete by a marker written last (orbax's `commit_success.txt`, a sweep's DONE file);
- no hard links: `link_or_copy_tree` copies.
Single-object writes are atomic on GCS (an object appears whole or not at all); on local disk
`write_bytes` gets the same by writing a temporary file and renaming it.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from ptjf.errors import ConfigError

GCS = "gs://"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
PathLike = str | os.PathLike


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def configure_clients(environ: dict[str, str] | None = None) -> None:
    """Sets the storage clients' environment before any of them is imported or used.

    epath uses gcsfs for `gs://` (unless the user set `EPATH_USE_TF`). With
    `STORAGE_EMULATOR_HOST` set (a local GCS API), TensorStore is pointed at it too, with a
    test token instead of credentials, and gcsfs's bucket-layout probe (a gRPC call to
    Google's control plane, which an emulator does not serve) is turned off.
    """
    env = os.environ if environ is None else environ
    env.setdefault("EPATH_USE_TF", "false")
    host = env.get(EMULATOR_ENV)
    if host:
        host = host if "://" in host else f"http://{host}"
        env.setdefault("TENSORSTORE_GCS_HTTP_URL", host)
        env.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
        env.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    import fsspec

    # gcsfs's listings cache would hide another host's new objects (a vocabulary, a DONE
    # marker) for as long as it lives; ptjf lists rarely, so it reads listings fresh.
    conf = fsspec.config.conf.setdefault("gcs", {})
    conf.setdefault("use_listings_cache", False)
    if host:
        conf.setdefault("token", "anon")  # an emulator takes no credentials


configure_clients()

from etils import epath  # noqa: E402 - after the clients' environment is set


def is_remote(path: PathLike) -> bool:
    """True for an object-store path (`gs://`)."""
    return os.fspath(path).startswith(GCS)


def check_uri(path: PathLike) -> str:
    """`path` as a string, refusing what looks like a mistyped URI (`gs:/x`, `gcs://x`, `s3://`).

    A mistyped scheme would otherwise be taken as a local relative path and write a folder
    named `gs:` on one host, silently.
    """
    p = os.fspath(path)
    if p.startswith(GCS):
        if len(p) == len(GCS) or p[len(GCS)] == "/":
            raise ConfigError(f"{p!r} names no bucket; write gs://BUCKET/path.")
        return p
    head = p.split("/", 1)[0]
    if "://" in p or (head.endswith(":") and len(head) > 2):
        scheme = p.split(":", 1)[0]
        fix = "gs://" + p.split(":", 1)[1].lstrip("/")
        hint = (
            f"did you mean {fix!r}?"
            if scheme.lower() in {"gs", "gcs"}
            else "ptjf reads and writes local paths and gs://BUCKET/... only."
        )
        raise ConfigError(f"{p!r} is not a local path or a gs:// URI: {hint}")
    return p


def path(p: PathLike) -> epath.Path:
    """An epath for `p` (local or `gs://`), its scheme checked."""
    return epath.Path(check_uri(p))


def join(base: PathLike, *parts: str) -> str:
    """`base/parts...` as a string; `gs://` stays a URI (os.path.join would keep it too, but
    normpath would not, so ptjf joins through here)."""
    b = os.fspath(base)
    if is_remote(b):
        return "/".join([b.rstrip("/"), *(s.strip("/") for s in parts)])
    return os.path.join(b, *parts)


def dirname(p: PathLike) -> str:
    s = os.fspath(p).rstrip("/")
    if is_remote(s):
        head = s.rsplit("/", 1)[0]
        return head if len(head) > len(GCS) else s
    return os.path.dirname(s)


def basename(p: PathLike) -> str:
    return os.fspath(p).rstrip("/").rsplit("/", 1)[-1]


def absolute(p: PathLike) -> str:
    """A local path made absolute; a `gs://` URI unchanged."""
    s = check_uri(p)
    return s if is_remote(s) else os.path.abspath(s)


# --- reading ----------------------------------------------------------------------------------


def exists(p: PathLike) -> bool:
    return path(p).exists()


def isdir(p: PathLike) -> bool:
    return path(p).is_dir()


def isfile(p: PathLike) -> bool:
    q = path(p)
    return q.exists() and not q.is_dir()


def listdir(p: PathLike) -> list[str]:
    """The names in directory `p`, sorted; [] when it does not exist."""
    q = path(p)
    if not q.is_dir():
        return []
    return sorted(c.name for c in q.iterdir())


def walk_files(p: PathLike) -> Iterator[str]:
    """Every file under `p`, as paths relative to it (for copying a tree)."""
    s = check_uri(p).rstrip("/")
    if is_remote(s):
        prefix = _gcs_key(s) + "/"
        for key in sorted(_gcs().find(prefix)):
            yield key[len(prefix) :]
        return
    for directory, _, files in os.walk(s):
        rel = os.path.relpath(directory, s)
        for name in sorted(files):
            yield name if rel == "." else f"{rel}/{name}"


def read_bytes(p: PathLike) -> bytes:
    return path(p).read_bytes()


def read_text(p: PathLike) -> str:
    return path(p).read_text(encoding="utf-8")


def size(p: PathLike) -> int:
    return int(path(p).stat().length)


# --- writing ----------------------------------------------------------------------------------


def makedirs(p: PathLike) -> None:
    """Creates directory `p` and its parents; on GCS directories are implicit (nothing to do
    but check that the bucket is there, which `check_writable` does once per run)."""
    if not is_remote(p):
        os.makedirs(os.fspath(p), exist_ok=True)


def write_bytes(p: PathLike, data: bytes) -> None:
    """Writes `p` whole and atomically: readers see the old content or the new, never a part.

    Local: a temporary file beside it, fsync'd, renamed over it. GCS: one upload (an object is
    created whole or not at all).
    """
    s = check_uri(p)
    if is_remote(s):
        _gcs().pipe_file(_gcs_key(s), data)
        return
    directory = os.path.dirname(os.path.abspath(s))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(s) + ".", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp's 0600 would differ from a plain open()'s
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, s)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(p: PathLike, text: str) -> None:
    write_bytes(p, text.encode("utf-8"))


def create_exclusive(p: PathLike, data: bytes) -> bool:
    """Creates `p` with `data` only if nothing is there yet; True if this call created it.

    Two processes racing never both win, and the loser never sees a partial object. GCS: an
    upload with the precondition `ifGenerationMatch=0`. Local: the data is written to a
    temporary file, then hard-linked to `p` (a link fails if `p` exists, atomically).
    """
    s = check_uri(p)
    if is_remote(s):
        try:
            _gcs().pipe_file(_gcs_key(s), data, mode="create")
        except FileExistsError:
            return False
        return True
    directory = os.path.dirname(os.path.abspath(s))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(s) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, s)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def remove(p: PathLike) -> None:
    """Removes file `p` if it is there."""
    q = path(p)
    if q.exists():
        q.unlink()


def rmtree(p: PathLike) -> None:
    """Removes directory `p` and everything under it, if it is there."""
    s = check_uri(p)
    if is_remote(s):
        q = path(s)
        if q.exists():
            q.rmtree()
    elif os.path.lexists(s):
        shutil.rmtree(s)


def copy_tree(source: PathLike, destination: PathLike) -> int:
    """Copies every file under `source` to the same place under `destination`; returns the
    number of files. Works between any two of local disk and GCS."""
    count = 0
    for rel in walk_files(source):
        write_bytes(join(destination, rel), read_bytes(join(source, rel)))
        count += 1
    return count


def copy_files(pairs: Sequence[tuple[PathLike, PathLike]]) -> int:
    """Copies each (source, destination) file; returns how many. Between two `gs://` paths GCS
    copies the object itself (a server-side rewrite, several at a time): no byte passes through
    this host. Any other pair goes through `read_bytes`/`write_bytes`. Each object appears
    whole; the set of them does not appear at once."""
    on_gcs = [(check_uri(s), check_uri(d)) for s, d in pairs if is_remote(s) and is_remote(d)]
    if on_gcs:
        _gcs().copy([_gcs_key(s) for s, _ in on_gcs], [_gcs_key(d) for _, d in on_gcs])
    for s, d in pairs:
        if not (is_remote(s) and is_remote(d)):
            write_bytes(d, read_bytes(s))
    return len(pairs)


def move(source: PathLike, destination: PathLike) -> None:
    """Moves directory `source` to `destination`: a rename on local disk; on GCS a copy of
    every object followed by deleting the source (not atomic: a reader must not take the
    destination as complete from its presence alone)."""
    s, d = check_uri(source), check_uri(destination)
    if not is_remote(s) and not is_remote(d):
        os.makedirs(os.path.dirname(os.path.abspath(d)), exist_ok=True)
        os.replace(s, d)
        return
    copy_tree(s, d)
    rmtree(s)


def link_or_copy_tree(source: PathLike, destination: PathLike) -> tuple[int, bool]:
    """Hard-links every file under `source` into `destination` where the filesystem allows it
    (same local filesystem), else copies; returns (files, linked)."""
    s, d = check_uri(source), check_uri(destination)
    if not is_remote(s) and not is_remote(d):
        try:
            return link_tree(s, d), True
        except OSError:
            rmtree(d)
    return copy_tree(s, d), False


def link_tree(source: str, destination: str) -> int:
    """Hard-links every file under local `source` to the same place under `destination`
    (created); returns the number of files. Raises OSError where a link cannot be made."""
    count = 0
    for directory, _, files in os.walk(source):
        here = os.path.join(destination, os.path.relpath(directory, source))
        os.makedirs(here, exist_ok=True)
        for name in files:
            os.link(os.path.join(directory, name), os.path.join(here, name))
            count += 1
    return count


def local_copy(p: PathLike, cache_dir: PathLike) -> str:
    """A local file with `p`'s bytes: `p` itself when local, else a copy under `cache_dir`
    (for readers that only take local files, such as SentencePiece)."""
    s = check_uri(p)
    if not is_remote(s):
        return s
    target = os.path.join(os.fspath(cache_dir), s[len(GCS) :].replace("/", "__"))
    if not os.path.isfile(target):
        write_bytes(target, read_bytes(s))
    return target


# --- checks before a run ----------------------------------------------------------------------


def check_writable(p: PathLike, what: str, fix: str) -> str:
    """Checks that directory `p` can be written, before anything is: creates it (local), writes
    and deletes a probe object, and turns the storage error into one that names `what`, the
    path and `fix`. Returns `p` with its scheme checked."""
    s = check_uri(p)
    probe = join(s, f".ptjf-write-probe-{socket.gethostname()}-{os.getpid()}")
    try:
        makedirs(s)
        if is_remote(s):
            _gcs().pipe_file(_gcs_key(probe), b"")
            _gcs().rm_file(_gcs_key(probe))
        elif not os.access(s, os.W_OK):
            raise PermissionError(errno.EACCES, "Permission denied", s)
        else:
            write_bytes(probe, b"")
            os.unlink(probe)
    except ConfigError:
        raise
    except Exception as e:  # every client's error, turned into one message
        raise ConfigError(f"Cannot write {what} at {s}: {describe_error(e, s)} {fix}") from None
    return s


def describe_error(e: BaseException, p: str) -> str:
    """One sentence for a storage error, saying which kind it is (no bucket, no permission)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if is_remote(p):
        bucket = p[len(GCS) :].split("/", 1)[0]
        if isinstance(e, FileNotFoundError):
            return f"the bucket gs://{bucket} does not exist (or is not visible to this account)."
        if isinstance(e, PermissionError) or "Forbidden" in text or "403" in text:
            return (
                f"permission denied on gs://{bucket} ({text}); grant this account "
                "roles/storage.objectAdmin on the bucket."
            )
        return f"{type(e).__name__}: {text}."
    if isinstance(e, PermissionError):
        return "permission denied."
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror.lower()}."
    return f"{type(e).__name__}: {text}."


# --- GCS through gcsfs ------------------------------------------------------------------------


def _gcs_key(p: str) -> str:
    return p[len(GCS) :]


def _gcs() -> Any:
    """The gcsfs filesystem: the instance epath's fsspec backend uses (same arguments)."""
    import fsspec

    return fsspec.filesystem("gcs", finalize_on_close=True)
