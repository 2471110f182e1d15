"""Options declared once: a config dataclass's fields carry their flag, help, choices and range, and
everything else is derived from them — the argparse flags, the YAML keys, the type and range checks,
the defaults shown in ``--help``.

Why our own small generator rather than jsonargparse or tyro: our commands mix several dataclasses
(training, Ray, search) into one flag namespace and one YAML file, with a few flags renamed for
people (``-o``, ``--base``) and the "flags win over YAML" rule (argparse defaults must stay None so a
YAML value is not overwritten by a default). That is ~150 lines here; both libraries would need
adapters for each of those points and bring their own help layout and error formats, while our
errors must stay one line naming the flag and the fix (exit 2).

Declare::

    @dataclass
    class Opts:
        batch_size: int = option(4, help="items per process", low=1, group="length and batches")

and use :func:`add_flags`, :func:`flag_values`, :func:`split_mapping` and :func:`check`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from gsv_ray.errors import ConfigError, shown_value

_KEY = "gsv_option"


@dataclass(frozen=True)
class Opt:
    """How one dataclass field meets the user."""

    help: str
    flags: tuple[str, ...] = ()  # default: ("--field-name",)
    choices: tuple[Any, ...] | None = None
    low: float | None = None  # range check; open (exclusive) ends when low_open / high_open
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    metavar: str | tuple[str, ...] | None = None
    group: str | None = None  # the --help section
    nargs: str | int | None = None
    const: Any = None  # with nargs="?": the value of the bare flag
    show_default: bool = True  # "(default X)" appended to the help
    yaml: bool = True  # also a YAML key (False: command-line only)

    def flag_names(self, name: str) -> tuple[str, ...]:
        return self.flags or ("--" + name.replace("_", "-"),)


def option(default: Any = MISSING, *, help: str, default_factory: Any = MISSING, **how: Any) -> Any:
    """A dataclass field that is also a user option (see :class:`Opt` for ``how``)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_KEY: Opt(help=help, **how)})


def same_as(cls: type, name: str, **changes: Any) -> Any:
    """The field ``name`` of ``cls`` declared again in another dataclass (same default, help, checks;
    ``changes`` adjust the :class:`Opt`, e.g. a help worded for this command)."""
    f = _field(cls, name)
    return dataclasses.field(
        default=f.default,
        default_factory=f.default_factory,
        metadata={_KEY: dataclasses.replace(f.metadata[_KEY], **changes)},
    )


def options(cls: Any) -> list[tuple[dataclasses.Field, Opt]]:
    """The fields of ``cls`` that are options, in declaration order."""
    return [(f, f.metadata[_KEY]) for f in dataclasses.fields(cls) if _KEY in f.metadata]


def flag(cls: Any, name: str) -> str:
    """How the user writes option ``name`` (for error messages): its first flag."""
    f = _field(cls, name)
    opt = f.metadata.get(_KEY)
    return opt.flag_names(name)[0] if opt else name.replace("_", "-")


def _field(cls: Any, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


class _Type(NamedTuple):
    """A field's annotation, read from its text (``from __future__ import annotations``):
    ``tuple[float, float] | None`` -> container ``tuple``, element ``float``, 2 items, optional."""

    container: str | None  # None, "tuple" or "list"
    element: str  # int, float, str or bool
    items: int | None  # a tuple's length
    optional: bool


def _type_of(f: dataclasses.Field) -> _Type:
    parts = [p.strip() for p in str(f.type).split("|")]
    base = next(p for p in parts if p != "None")
    if "[" not in base:
        return _Type(None, base, None, "None" in parts)
    container, args = base.split("[", 1)
    elements = [a.strip(" ]") for a in args.split(",")]
    return _Type(container, elements[0], len(elements) if container == "tuple" else None, "None" in parts)


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_flags(
    parser: argparse.ArgumentParser,
    cls: Any,
    *,
    without: Iterable[str] = (),
    only: Iterable[str] | None = None,
    groups: dict[str, Any] | None = None,
    help: Mapping[str, str] | None = None,
    positional: Iterable[str] = (),
    required: Iterable[str] = (),
) -> None:
    """Add a flag for every option of ``cls`` (``only`` these / ``without`` those). Flags default to
    None (absent), so values from YAML or the dataclass apply unless the flag is given; ``--help``
    shows the dataclass default. ``groups`` collects the argument groups by title (shared across
    calls); ``help`` rewords an option for this command; ``positional`` options are arguments
    without a flag, ``required`` ones must be given (commands without a YAML file)."""
    skip, keep = set(without), (set(only) if only is not None else None)
    positional, required = set(positional), set(required)
    groups = {} if groups is None else groups
    for f, opt in options(cls):
        if f.name in skip or (keep is not None and f.name not in keep):
            continue
        target = parser
        if opt.group:
            if opt.group not in groups:
                groups[opt.group] = parser.add_argument_group(opt.group)
            target = groups[opt.group]
        kw = _argument(f, opt, (help or {}).get(f.name, opt.help))
        if f.name in positional:
            kw.pop("default", None)
            target.add_argument(f.name, **kw)
        else:
            if f.name in required:
                kw["required"] = True
            target.add_argument(*opt.flag_names(f.name), dest=f.name, **kw)


def _argument(f: dataclasses.Field, opt: Opt, text: str) -> dict[str, Any]:
    """``add_argument``'s keywords for the option of field ``f`` (its ``option(...)`` metadata ``opt``),
    helped by ``text`` plus the dataclass default where the option shows it; default None (absent)."""
    default = default_of(f)
    if (
        opt.show_default
        and default is not None
        and default is not MISSING
        and default is not False
        and "default" not in text
    ):
        text += f" (default {_shown(default)})"
    kind = _type_of(f)
    element = kind.element
    kw: dict[str, Any] = {"help": text.replace("%", "%%")}
    if element == "bool":  # on by default: --NAME / --no-NAME (argparse's own), else a switch
        kw.update(action=argparse.BooleanOptionalAction if default is True else "store_true", default=None)
        if default is True:
            kw["help"] = text.replace("%", "%%").replace("(default True)", "(default on)")
        return kw
    kw.update(type={"int": int, "float": float, "str": str}[element], default=None)
    if opt.choices is not None:
        kw["choices"] = list(opt.choices)
    if kind.container == "tuple":
        kw["nargs"] = kind.items
    elif kind.container == "list":
        kw["nargs"] = "+"
    if opt.nargs is not None:
        kw["nargs"] = opt.nargs
    if opt.const is not None:
        kw["const"] = opt.const
    if opt.metavar is not None:
        kw["metavar"] = opt.metavar
    elif opt.choices is None:
        kw["metavar"] = {"int": "N", "float": "X", "str": "TEXT"}[element]
    return kw


def flag_values(args: argparse.Namespace, cls: Any, *, without: Iterable[str] = ()) -> dict[str, Any]:
    """The options of ``cls`` given on the command line (absent flags left out)."""
    skip = set(without)
    values = {}
    for f, _ in options(cls):
        value = getattr(args, f.name, None)
        if f.name not in skip and value is not None:
            values[f.name] = tuple(value) if _type_of(f).container == "tuple" else value
    return values


def split_mapping(mapping: Mapping[str, Any], *classes: Any, path: str | Path = "<config>") -> list[dict[str, Any]]:
    """A YAML mapping (keys = field names, dashes allowed) split by which of ``classes`` declares each
    key (the first that does; a ``(class, names)`` pair leaves ``names`` out of that class); an
    unknown or command-line-only key is a one-line error naming the file."""
    pairs = [c if isinstance(c, tuple) else (c, ()) for c in classes]
    classes = tuple(c for c, _ in pairs)
    owners: list[dict[str, dataclasses.Field]] = [
        {f.name: f for f, opt in options(c) if opt.yaml and f.name not in skip} for c, skip in pairs
    ]
    out: list[dict[str, Any]] = [{} for _ in classes]
    for k, v in mapping.items():
        key = str(k).replace("-", "_")
        for fields, values in zip(owners, out):
            if key in fields:  # YAML has lists only: a tuple option's list becomes its tuple
                values[key] = tuple(v) if isinstance(v, list) and _type_of(fields[key]).container == "tuple" else v
                break
        else:
            known = sorted(set().union(*(set(o) for o in owners)))
            raise ConfigError(
                f"unknown option {shown_value(k)}", path=Path(path), fix=f"use one of: {', '.join(known)}"
            )
    return out


_KINDS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
_WANT = {"int": "a whole number", "float": "a number", "str": "a string", "bool": "true or false"}


def check(obj: Any) -> None:
    """Every option of ``obj`` holds its declared type (YAML can say ``max_steps: three``,
    ``lr_scale: true``, ``batch_size: 2.5`` or ``.inf``; a bool is not a number; floats are finite),
    one of its choices and lies in its range. The error is one line naming the flag."""
    for f, opt in options(obj):
        value = getattr(obj, f.name)
        kind = _type_of(f)
        if value is None and kind.optional:
            continue
        name = flag(type(obj), f.name)
        items = [value]
        if kind.container is not None:
            if not isinstance(value, (tuple, list)):
                raise ConfigError(f"{name} must be a list of {_WANT[kind.element]}s, got {shown_value(value)}")
            items = list(value)
        for item in items:
            _check_one(name, f.name, kind.element, opt, item)


def _check_one(name: str, key: str, base: str, opt: Opt, value: Any) -> None:
    ok = isinstance(value, _KINDS[base]) and (base == "bool" or not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{name} must be {_WANT[base]}, got {shown_value(value)}", fix=f"set {key} to {_WANT[base]}")
    if base == "float" and not math.isfinite(value):
        raise ConfigError(
            f"{name} must be a finite number, got {shown_value(value)}", fix=f"set {key} to a finite value"
        )
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, opt.choices))}, got {shown_value(value)}")
    too_low = opt.low is not None and (value <= opt.low if opt.low_open else value < opt.low)
    too_high = opt.high is not None and (value >= opt.high if opt.high_open else value > opt.high)
    if too_low or too_high:
        raise ConfigError(f"{name} must be {_range(opt)}, got {shown_value(value)}")


def _range(opt: Opt) -> str:
    if opt.high is None:
        return f"{'>' if opt.low_open else '>='} {opt.low:g}"
    if opt.low is None:
        return f"{'<' if opt.high_open else '<='} {opt.high:g}"
    return f"in {'(' if opt.low_open else '['}{opt.low:g}, {opt.high:g}{')' if opt.high_open else ']'}"
