"""The CLI's words: help that names values as one types them, messages that name options.

The engine's messages name Python parameters (``expires_in``, ``api_key=``), which is right
for the Python API and wrong in a shell, where the same thing is ``--expires-in``. The CLI
translates them here, on the way out, and leaves the engine's messages alone.

Typer labels each option in the help with its Python type (``<str>``, ``<list[str]>``, and
``<bool>`` for flags, which take no value at all). ``HelpGroup`` and ``HelpCommand`` show
the metavar an option declares (``JSON``, ``DURATION``, ``URL``) and nothing for a flag.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import typer.core

F = TypeVar("F", bound=Callable[..., Any])

_QUOTED = re.compile(r"""('[^']*'|"[^"]*")""")

_VALUE_NAMES = {"int": "N", "integer": "N", "integer range": "N", "float": "NUMBER"}
"""The metavar of an option that declares none, by its type's name (else ``TEXT``)."""


def value_named(param: Any) -> None:
    """Give ``param`` help that shows what to type, never a Python type (idempotent)."""
    if param.param_type_name == "argument":
        if isinstance(param, typer.core.TyperArgument):
            param.__class__ = _Argument  # shows its metavar alone: TASK_ID, not TASK_ID <str>
        if param.metavar is None:
            param.metavar = param.name.upper()
        return
    if param.metavar is not None:
        return
    if getattr(param, "is_flag", False):
        param.metavar = ""  # a flag takes no value
        return
    param.metavar = _VALUE_NAMES.get(_type_name(param), "TEXT")


def _type_name(param: Any) -> str:
    """``int``, ``float``, ``str``...: from click's type, or typer's own description of it."""
    kind = getattr(getattr(param, "type", None), "name", None)
    if isinstance(kind, str):
        return kind
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    return str(getattr(annotation, "__name__", ""))


class _Argument(typer.core.TyperArgument):
    def display_type_rich(self, ctx: Any) -> str | None:
        return None


class _ValuesNamed:
    """Help that names values (see ``value_named``), for a command or a group."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            value_named(param)
        return params


class HelpCommand(_ValuesNamed, typer.core.TyperCommand):
    """A command whose help names values."""


class OptionalValueCommand(HelpCommand):
    """A command whose options named in ``optional_values`` may be given without their value
    (``--watch`` alone is ``--watch 2``). Typer's parser has no such option, so a bare one
    gets its value put after it before the arguments are parsed."""

    optional_values: ClassVar[dict[str, str]] = {}

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        parsed: list[str] = super().parse_args(ctx, with_values(args, self.optional_values))
        return parsed


def optional_values(**values: str) -> type[OptionalValueCommand]:
    """A command class (``@app.command(cls=...)``) whose options ``--<name>`` (``_`` as
    ``-``) take ``values[name]`` when given alone: ``optional_values(watch="2")``."""
    options = {f"--{name.replace('_', '-')}": value for name, value in values.items()}
    return type("OptionalValues", (OptionalValueCommand,), {"optional_values": options})


def with_values(args: list[str], values: dict[str, str]) -> list[str]:
    """``args`` with the value of each option of ``values`` that stands alone (last, or
    before another option) put after it; nothing after ``--`` is looked at."""
    done: list[str] = []
    for index, arg in enumerate(args):
        if arg == "--":
            return done + args[index:]
        done.append(arg)
        following = args[index + 1] if index + 1 < len(args) else None
        if arg in values and (following is None or following.startswith("-")):
            done.append(values[arg])
    return done


class HelpGroup(_ValuesNamed, typer.core.TyperGroup):
    """A group (its own options: ``--version``, ``--help``...) whose help names values."""


class Typer(typer.Typer):
    """``typer.Typer`` whose groups and commands are ``HelpGroup`` and ``HelpCommand``."""

    def __init__(self, **options: Any) -> None:
        super().__init__(cls=HelpGroup, **options)

    def command(self, *args: Any, **options: Any) -> Callable[[F], F]:
        options.setdefault("cls", HelpCommand)
        return super().command(*args, **options)


def walk(command: Any) -> Iterator[tuple[str, Any]]:
    """Every command below ``command`` (a click group), with its path: ``runs list``."""
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield name, sub
        for path, deeper in walk(sub):
            yield f"{name} {path}", deeper


def option_names(command: Any) -> dict[str, str]:
    """Python parameter names (and their camelCase wire forms) -> the option that sets them.

    Taken from every option of every command: ``expires_in`` and ``expiresIn`` ->
    ``--expires-in``. A name given two options (``timeout``) keeps the first one found.
    """
    names: dict[str, str] = {}
    for _, sub in [("", command), *walk(command)]:
        for param in sub.params:
            if param.param_type_name != "option" or not param.name or not param.opts:
                continue
            long = next((o for o in param.opts if o.startswith("--")), param.opts[0])
            names.setdefault(param.name, long)
            names.setdefault(_camel(param.name), long)
    return names


def in_cli_words(message: str, options: dict[str, str]) -> str:
    """``message`` with the Python names in it replaced by the options that set them.

    A name of several words (``expires_in``, ``api_key=``) is replaced wherever it stands; a
    one-word name only where it opens a rule (``limit must be between 1 and 100``), since
    ``task`` or ``data`` in a sentence are mostly plain words. Quoted text (an id, a value
    the user gave) is never changed.
    """
    several = sorted((n for n in options if "_" in n or n != n.lower()), key=len, reverse=True)
    if several:
        pattern = re.compile(rf"(?<![\w-])({'|'.join(map(re.escape, several))})\b=?")
        parts = _QUOTED.split(message)
        for i in range(0, len(parts), 2):  # the odd parts are the quoted ones
            parts[i] = pattern.sub(lambda m: options[m[1]], parts[i])
        message = "".join(parts)
    first, _, rest = message.partition(" ")
    if first in options and rest.startswith("must "):
        return f"{options[first]} {rest}"
    return message


def _camel(name: str) -> str:
    """``expires_in`` -> ``expiresIn``: the wire form the models' aliases give a field (done
    here, not with pydantic's ``to_camel``, because importing pydantic would slow ``--help``)."""
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)
