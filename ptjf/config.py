"""Gin configuration the T5X way: run file + model file + `--gin.NAME=VALUE` overrides.

    ptjf train --gin_file=runs/ptjf.gin --gin_file=models/tiny.gin \
        --gin.MODEL_DIR=/tmp/run --gin.BATCH_SIZE=32

Gin files are looked up on ptjf's search path (`gin_search_paths`), so `runs/ptjf.gin` or
`models/tiny` work from any directory. Gin's own exceptions are turned into `ConfigError`s that
say where the bad setting came from (file:line or the `--gin.` flag) and the closest valid names,
because a typo in a 20-line override list is the commonest way a run fails to start.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import re
import tokenize
from collections.abc import Iterator, Sequence
from pathlib import Path

import gin
from gin import config as gin_internals
from gin import config_parser

from ptjf.errors import ConfigError

GIN_PATH_ENV = "PTJF_GIN_PATH"
_CHECKOUT_GIN_DIR = Path(__file__).resolve().parent.parent / "gin_configs"
_PACKAGE_GIN_DIR = Path(__file__).resolve().parent / "gin_configs"
# Characters that show the user meant gin syntax (a quoted string, a container, a reference or
# a macro): such values are never auto-quoted, so their errors reach the user unchanged.
_GIN_SYNTAX_STARTS = ("'", '"', "[", "(", "{", "@", "%")
_LOCATION_RE = re.compile(r'\n\s*In (?:file "(?P<file>[^"]*)",|bindings string) line (?P<line>\d+)')
# What gin raises for a bad config (TokenError: input ending inside a bracket or string).
_GIN_ERRORS = (SyntaxError, tokenize.TokenError, ValueError, ImportError, OSError)
# Search paths this module added to gin, so a later call can replace them (tests and
# `ptjf demo` parse several configurations in one process, possibly with another $PTJF_GIN_PATH).
_added_prefixes: list[str] = []


# --- finding gin files ---------------------------------------------------------------------


def gin_search_paths() -> list[str]:
    """Where gin files are looked up, in order.

    The checkout's `gin_configs/`, the installed package's copy (`ptjf/gin_configs`, when the
    wheel ships one), the working directory, then each entry of `$PTJF_GIN_PATH`
    (os.pathsep-separated). Directories that do not exist are left out.
    """
    candidates = [str(_CHECKOUT_GIN_DIR), str(_PACKAGE_GIN_DIR), os.getcwd()]
    candidates += [p for p in os.environ.get(GIN_PATH_ENV, "").split(os.pathsep) if p]
    paths: list[str] = []
    for c in candidates:
        p = os.path.abspath(os.path.expanduser(c))
        if os.path.isdir(p) and p not in paths:
            paths.append(p)
    return paths


def resolve_gin_file(name: str) -> str:
    """The absolute path of gin file `name` (e.g. `runs/ptjf.gin`, `models/tiny`).

    Absolute paths are returned as they are; other names are tried in each search path, as
    given and with `.gin` added. A leading `gin_configs/` (T5X users name files relative to the
    repository) is also tried without that prefix.
    """
    if os.path.isabs(name):
        if os.path.isfile(name):
            return name
        raise _missing_file_error(name, [])
    variants = [name] if name.endswith(".gin") else [name, name + ".gin"]
    prefix = "gin_configs" + os.sep
    variants += [v[len(prefix) :] for v in variants if v.startswith(prefix)]
    paths = gin_search_paths()
    for directory in paths:
        for v in variants:
            candidate = os.path.join(directory, v)
            if os.path.isfile(candidate):
                return candidate
    raise _missing_file_error(name, paths)


def _missing_file_error(name: str, paths: Sequence[str]) -> ConfigError:
    msg = f"Gin file {name!r} not found."
    if paths:
        msg += " Searched: " + ", ".join(paths) + "."
        known = sorted({f for d in paths for f in _gin_files_under(d)})
        target = name if name.endswith(".gin") else name + ".gin"
        close = difflib.get_close_matches(target, known, n=3, cutoff=0.6)
        if not close:  # a right file name in the wrong folder, e.g. `ptjf.gin` for `runs/ptjf.gin`
            base = os.path.basename(target)
            close = [f for f in known if os.path.basename(f) == base][:3]
        if close:
            msg += f" Closest: {', '.join(close)}."
    msg += (
        f" Pass a path relative to one of these directories, an absolute path, or add your "
        f"directory to ${GIN_PATH_ENV} (separated by {os.pathsep!r})."
    )
    return ConfigError(msg)


def _gin_files_under(directory: str, max_depth: int = 3, limit: int = 2000) -> Iterator[str]:
    """`.gin` files below `directory` as relative paths; bounded, since the cwd may be huge."""
    count = 0
    root_depth = directory.rstrip(os.sep).count(os.sep)
    for root, dirs, files in os.walk(directory):
        if root.count(os.sep) - root_depth >= max_depth:
            dirs[:] = []
        dirs[:] = [
            d for d in dirs if not d.startswith(".") and d not in ("node_modules", "__pycache__")
        ]
        for f in files:
            if f.endswith(".gin"):
                count += 1
                if count > limit:
                    return
                yield os.path.relpath(os.path.join(root, f), directory)


# --- command-line flags --------------------------------------------------------------------


def flags_to_gin(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Splits T5X-style flags into (gin_files, gin_bindings, other args).

    `--gin_file=X` / `--gin_file X` (repeatable) name gin files; `--gin.NAME=VALUE` /
    `--gin.NAME VALUE` become the binding `NAME = VALUE`. As a convenience, a VALUE that is not a
    gin value (a bare path or word such as `/tmp/run` or `bible_en_fr_tl`) is quoted, so
    `--gin.MODEL_DIR=/tmp/run` means `MODEL_DIR = '/tmp/run'`. Values that start like gin syntax
    (a quote, bracket, `@` or `%`) are passed through as they are.
    """
    files: list[str] = []
    bindings: list[str] = []
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--gin_file" or arg.startswith("--gin_file="):
            value, i = _flag_value(args, i, "--gin_file")
            files.append(value)
        elif arg.startswith("--gin."):
            key = arg[len("--gin.") :]
            if "=" in key:
                name, value = key.split("=", 1)
                i += 1
            else:
                name = key
                value, i = _flag_value(args, i, f"--gin.{name}")
            if not name:
                raise ConfigError(f"Flag {arg!r} names no gin parameter: write --gin.NAME=VALUE.")
            bindings.append(f"{name} = {_quote_if_bare(value)}")
        else:
            rest.append(arg)
            i += 1
    return files, bindings, rest


def _flag_value(args: Sequence[str], i: int, flag: str) -> tuple[str, int]:
    """The value of `--flag=V` or `--flag V` at args[i], and the index after it."""
    if "=" in args[i]:
        return args[i].split("=", 1)[1], i + 1
    if i + 1 >= len(args):
        raise ConfigError(f"Flag {flag} has no value: write {flag}=VALUE.")
    return args[i + 1], i + 2


def _quote_if_bare(value: str) -> str:
    stripped = value.strip()
    if stripped.startswith(_GIN_SYNTAX_STARTS) or _is_gin_value(stripped):
        return stripped
    return repr(value)


def _is_gin_value(value: str) -> bool:
    """Whether `value` parses as one complete gin value (unknown references allowed)."""
    if not value:
        return False
    try:
        # skip_unknown: configurables named by references may not be imported yet.
        parser = config_parser.ConfigParser(
            f"X = {value}", gin_internals.ParserDelegate(skip_unknown=True)
        )
        return len(list(parser)) == 1
    except SyntaxError:
        return False
    except ValueError:  # e.g. an ambiguous constant: gin syntax, for gin to report later
        return True


# --- parsing --------------------------------------------------------------------------------


def parse_gin(
    gin_files: Sequence[str], gin_bindings: Sequence[str], *, finalize: bool = True
) -> None:
    """Replaces gin's bindings with those of `gin_files`, then `gin_bindings` (later wins).

    Registered configurables stay (ptjf registers them at import); only bindings are cleared,
    so calling this twice in one process gives the second configuration alone. `finalize`
    locks the config and checks that every macro is bound and no `%gin.REQUIRED` is left.
    Gin's errors become `ConfigError`s naming the file:line or flag and the closest names.
    """
    gin.clear_config()
    _set_search_paths(gin_search_paths())
    for name in gin_files:
        path = resolve_gin_file(name)
        with _user_errors(file=path):
            gin.parse_config_file(path)
    for binding in gin_bindings:
        with _user_errors(source=_flag_for(binding)):
            gin.parse_config(binding)
    if finalize:
        with _user_errors():
            gin.finalize()


def _set_search_paths(paths: Sequence[str]) -> None:
    """Puts ptjf's search path in front of gin's own (which `include` statements use).

    In front, not after gin's initial '' (the working directory): an include such as
    'runs/base.gin' is then found in the first place tried, and gin's resource reader does not
    log a "Path not found" error for every include of every run.
    """
    prefixes = gin_internals._LOCATION_PREFIXES
    for p in _added_prefixes:
        if p in prefixes:
            prefixes.remove(p)
    _added_prefixes[:] = [p for p in paths if p not in prefixes]
    prefixes[:0] = _added_prefixes


@contextlib.contextmanager
def _user_errors(source: str | None = None, file: str | None = None) -> Iterator[None]:
    """Re-raises gin's errors as `ConfigError`s; a failing import inside ptjf stays as it is."""
    try:
        yield
    except _GIN_ERRORS as e:
        if isinstance(e, ImportError) and not isinstance(e, ModuleNotFoundError):
            raise  # a module that exists but fails to import: a bug to see with its traceback
        raise _translate(e, source=source, file=file) from e


def _flag_for(binding: str) -> str:
    name = binding.split("=", 1)[0].strip()
    return f"--gin.{name}" if name and "\n" not in name else "--gin binding"


def _translate(e: Exception, source: str | None, file: str | None = None) -> ConfigError:
    """A `ConfigError` for gin exception `e`.

    `source` is the flag when it came from one; `file` the top-level gin file being parsed.
    """
    text = str(e)
    message = text.split("\n", 1)[0].strip()
    where = source or _location(text)
    at = f" ({where})" if where else ""

    if isinstance(e, SyntaxError):
        lines = [ln.strip() for ln in (e.msg or "").splitlines() if ln.strip()]
        detail = lines[-1] if lines else "invalid syntax"
        shown = f"\n    {e.text.rstrip()}" if e.text else ""
        if source:
            return ConfigError(
                f"Gin syntax error in {source}: {detail}{shown}\n  Quote strings: --gin.NAME=\"'value'\"."
            )
        filename = os.path.abspath(e.filename) if e.filename else "<gin>"
        return ConfigError(f"{filename}:{e.lineno}: gin syntax error: {detail}{shown}")

    if isinstance(e, tokenize.TokenError):
        detail = "the input ends inside an unclosed bracket, parenthesis or string"
        if source:
            return ConfigError(f"Gin syntax error in {source}: {detail}.")
        if where:  # raised in an included file; gin only knows the include line
            return ConfigError(f"Gin syntax error in the file included at {where}: {detail}.")
        return ConfigError(f"{file or '<gin>'}: gin syntax error: {detail}.")

    m = re.match(
        r"Configurable '(?P<conf>[^']+)' doesn't have a parameter named '(?P<param>[^']+)'", message
    )
    if m:
        conf, param = m["conf"], m["param"]
        params = _parameters_of(conf)
        close = difflib.get_close_matches(param, params, n=3, cutoff=0.5)
        hint = (
            f"closest: {', '.join(close)}."
            if close
            else f"its parameters: {', '.join(params) or 'none'}."
        )
        return ConfigError(
            f"Unknown gin binding '{conf}.{param}'{at}: {conf} has no parameter '{param}'; {hint}"
        )

    m = re.match(r"No configurable matching (?:reference )?'@?(?P<name>[^'(]+)(?:\(\))?'", message)
    if m:
        name = m["name"]
        bare = name.rsplit("/", 1)[-1]
        close = difflib.get_close_matches(bare, _configurable_names(), n=3, cutoff=0.5)
        hint = f" Closest registered: {', '.join(close)}." if close else ""
        return ConfigError(
            f"Unknown gin configurable '{name}'{at}: nothing registered under that name.{hint} "
            "If it lives in another module, import that module in the gin file (`import ...`)."
        )

    m = re.match(r"No bindings specified for '(?P<macro>[^']+)/gin\.macro'", message)
    if m:
        macro = m["macro"]
        users = _bindings_using_macro(macro)
        used = f" (used by {', '.join(users)})" if users else ""
        return ConfigError(
            f"Gin macro %{macro} is referenced{used} but never bound. Bind it on the command "
            f"line with --gin.{macro}=VALUE or in a gin file with `{macro} = VALUE`."
        )

    m = re.match(r"(?P<key>\S+) set to `%gin.REQUIRED` but not subsequently overridden", message)
    if m:
        key = m["key"]
        mm = re.fullmatch(r"(?P<macro>.+)/(?:gin\.)?macro\.value", key)
        name = mm["macro"] if mm else key
        what = f"Gin macro {name}" if mm else f"Gin parameter {name}"
        return ConfigError(
            f"{what} is required (bound to %gin.REQUIRED) but no value was given. "
            f"Pass --gin.{name}=VALUE (or bind it in a gin file)."
        )

    if isinstance(e, ModuleNotFoundError):
        return ConfigError(
            f"Gin import failed{at}: {message}. Fix the module name in the `import` line or "
            "install the package that provides it."
        )
    if isinstance(e, OSError):
        m = re.match(r"Unable to open file: (?P<name>.+?)\. Searched config paths", message)
        if m:
            missing = _missing_file_error(m["name"], gin_search_paths())
            return ConfigError(f"{where}: include failed. {missing}" if where else str(missing))
    return ConfigError(f"Invalid gin configuration{at}: {message}")


def _location(text: str) -> str:
    """'file:line' from gin's appended location, plus the include chain it came through."""
    places = [
        f"{os.path.abspath(m['file'])}:{m['line']}" if m["file"] else f"bindings line {m['line']}"
        for m in _LOCATION_RE.finditer(text)
    ]
    if not places:
        return ""
    return places[0] + "".join(f", included from {p}" for p in places[1:])


def _configurable_names() -> list[str]:
    """Registered configurable names (short and fully qualified), gin's own builtins left out."""
    names: set[str] = set()
    for selector, configurable in gin_internals._REGISTRY.items():
        if configurable.module == "gin":
            continue
        names.add(selector)
        names.add(configurable.name)
    return sorted(names)


def _parameters_of(selector: str) -> list[str]:
    configurable = gin_internals._REGISTRY.get_match(selector)
    if configurable is None:
        return []
    try:
        signature = inspect.signature(configurable.wrapped)
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in signature.parameters.values() if p.kind in kinds and p.name != "self"]


def _bindings_using_macro(macro: str) -> list[str]:
    """Binding keys whose value references `%macro` (for 'used by' in the error)."""
    users = []
    wanted = f"{macro}/gin.macro"
    for (scope, selector), params in gin_internals._CONFIG.items():
        for param, value in params.items():
            refs = gin_internals.iterate_references({"v": value})
            if any(getattr(r, "scoped_selector", None) == wanted for r in refs):
                if selector == "gin.macro":  # a macro defined as another macro
                    users.append(scope)
                else:
                    short = gin_internals._REGISTRY.minimal_selector(selector)
                    users.append(f"{scope + '/' if scope else ''}{short}.{param}")
    return sorted(users)


# --- the operative config ------------------------------------------------------------------


def operative_config() -> str:
    """The bindings actually used so far (gin's operative config), as gin text."""
    return gin.operative_config_str()


def save_config(model_dir: str) -> str:
    """Writes the operative config to `MODEL_DIR/config.gin` (as T5X does) and returns its path.

    Call it after the configured objects were built, so the operative config is complete.
    """
    from ptjf import storage

    path = storage.join(model_dir, "config.gin")
    try:
        storage.write_text(path, operative_config())
    except OSError as e:
        raise ConfigError(
            f"Cannot write the gin config to {path}: {storage.describe_error(e, path)} Pass a "
            "writable directory or gs://BUCKET/path with --gin.MODEL_DIR=..."
        ) from e
    return path
