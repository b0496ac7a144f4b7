"""One option spec for ``assay`` and ``python -m apps.jobs``: an ``assay`` command's signature.

A Typer command declares its options once, as ``Annotated[type, typer.Option(...)]`` parameters. The Ray job
entrypoints (:mod:`apps.jobs`, argparse) derive their parser from that same signature (:func:`add_options`) and read the values back under the parameter names
(:func:`option_values`), so a job step accepts every option its ``assay`` command has, with the same flags, types,
defaults and environment variables, and hands the same values to the same function.
"""

from __future__ import annotations

import argparse
import inspect
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from typer.models import ArgumentInfo, OptionInfo


@dataclass(frozen=True)
class Param:
    """One parameter of a command: its name, flags (none for an argument), type, default and how it repeats."""

    name: str
    flags: tuple[str, ...]
    negative: tuple[str, ...]
    type: type
    default: Any
    multiple: bool
    required: bool
    envvar: str | None
    help: str


def params(fn: Callable[..., Any]) -> list[Param]:
    """The options and arguments of the Typer command function ``fn``, in signature order."""
    hints = typing.get_type_hints(fn, include_extras=True)
    out = []
    for name, p in inspect.signature(fn).parameters.items():
        base, info = _split(hints[name])
        decls = [d for d in (info.default, *(info.param_decls or ())) if isinstance(d, str) and d.startswith("-")]
        pos = [d for part in decls for d in part.split("/")[:1]]
        neg = [part.split("/", 1)[1] for part in decls if "/" in part]
        kind, multiple = _unwrap(base)
        required = p.default is inspect.Parameter.empty or p.default is ...
        envvar = info.envvar if isinstance(info.envvar, str) else None
        out.append(Param(name, tuple(pos) if isinstance(info, OptionInfo) else (), tuple(neg), kind,
                         None if required else p.default, multiple, required, envvar, info.help or ""))
    return out


def add_options(parser: argparse.ArgumentParser, fn: Callable[..., Any]) -> None:
    """Add every option and argument of the Typer command ``fn`` to ``parser`` (dest = the parameter name)."""
    for p in params(fn):
        default = os.environ.get(p.envvar, p.default) if p.envvar else p.default
        if not p.flags:  # an argument
            parser.add_argument(p.name, nargs=None if p.required else "?", default=default, type=p.type,
                                help=p.help)
        elif p.type is bool:
            parser.add_argument(*p.flags, dest=p.name, action="store_true", default=default, help=p.help)
            if p.negative:
                parser.add_argument(*p.negative, dest=p.name, action="store_false")
        else:
            parser.add_argument(*p.flags, dest=p.name, type=p.type, default=default, required=p.required,
                                action="append" if p.multiple else "store", help=p.help)


def option_values(ns: argparse.Namespace, fn: Callable[..., Any], drop: Sequence[str] = ()) -> dict[str, Any]:
    """The values parsed for ``fn``'s parameters, by parameter name (those in ``drop`` left out)."""
    return {p.name: getattr(ns, p.name) for p in params(fn) if p.name not in drop}


def defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """``fn``'s parameters with their defaults (an environment variable's value where one is set and declared)."""
    return {p.name: os.environ.get(p.envvar, p.default) if p.envvar else p.default for p in params(fn)}


def _split(hint: Any) -> tuple[Any, OptionInfo | ArgumentInfo]:
    if typing.get_origin(hint) is typing.Annotated:
        base, *meta = typing.get_args(hint)
        for m in meta:
            if isinstance(m, (OptionInfo, ArgumentInfo)):
                return base, m
    raise TypeError(f"{hint!r}: not an Annotated Typer option or argument")


def _unwrap(hint: Any) -> tuple[type, bool]:
    """(element type, repeats) of ``T``, ``Optional[T]``, ``list[T]`` or ``Optional[list[T]]``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and args:
        hint = args[0]
    if typing.get_origin(hint) in (list, tuple, Sequence):
        return typing.get_args(hint)[0], True
    return hint, False


__all__ = ["Param", "add_options", "defaults", "option_values", "params"]
