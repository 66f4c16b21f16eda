"""A section of the node config read through a command's own option parser.

The guard, balancer, decap and health-check sections of a node config are the options of
`fastpath xdp attach`, `fastpath lb attach`, `fastpath lb decap attach` and `fastpath lb
health`, written as YAML keys: `--syn-rate 200/s` is `syn_rate: 200/s`, a list is a
comma-separated value (`ports: [80, 443]`) or, for an option given once per value (`--from`),
the repeated option, and a switch `--no-X` is `X: false`. The section is turned back into the
command line, parsed by the command's parser and handed to the application's own function
that turns options into its config, so an option added to a command is accepted by the node
config without a line here, with the same checks and the same error messages.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from fastpath.errors import FastpathError

T = TypeVar("T")

# Options of the attach commands that are not settings: output, debugging, where the program
# goes (the node config says that per interface).
NOT_SETTINGS = frozenset({"help", "json", "dump_bpf", "netns", "mode", "peer_program", "iface", "once"})


class _Refusal(Exception):
    """argparse's complaint, raised instead of printing usage and exiting."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Refusal(message)


Register = Callable[[Any], None]   # a command module's register(subparsers)


def command_parser(register: Register, path: Sequence[str]) -> argparse.ArgumentParser:
    """The parser of `fastpath PATH...` (e.g. ("xdp", "attach")) as `register` builds it,
    raising instead of exiting on bad input."""
    top = _Parser(prog="fastpath", add_help=False)
    register(top.add_subparsers(dest="_command"))
    parser: argparse.ArgumentParser = top
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


@dataclass(frozen=True)
class Option:
    """One long option of a command as the node config spells it."""

    key: str          # the YAML key: `syn_rate` for --syn-rate, `cookies` for --no-cookies
    flag: str         # the option on the command line
    kind: str         # "value", "list" (given once per item), "switch" or "negated"
    help: str
    negated: str | None = None  # a value option that also has `--no-X`: `X: false` gives that


def settings(parser: argparse.ArgumentParser) -> dict[str, Option]:
    """Every option of `parser` that the node config accepts, by YAML key."""
    out: dict[str, Option] = {}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or action.dest in NOT_SETTINGS or action.help == argparse.SUPPRESS:
            continue
        flag = longs[0]
        name = flag[2:].replace("-", "_")
        if isinstance(action, argparse._StoreConstAction) and action.nargs == 0:
            # store_true / store_false: `--no-X` reads `X: false`, `--X` reads `X: true`.
            if name.startswith("no_"):
                key = name[3:]
                have = out.get(key)
                if have is not None and have.kind == "value":  # --cookies MODE and --no-cookies
                    out[key] = Option(key, have.flag, "value", have.help, negated=flag)
                else:
                    out[key] = Option(key, flag, "negated", action.help or "")
            else:
                out[name] = Option(name, flag, "switch", action.help or "")
        elif isinstance(action, argparse._AppendAction):
            out[name] = Option(name, flag, "list", action.help or "")
        else:
            have = out.get(name)
            negated = have.flag if have is not None and have.kind == "negated" else None
            out[name] = Option(name, flag, "value", action.help or "", negated=negated)
    return out


def _scalar(value: object, where: str) -> str:
    if isinstance(value, bool) or isinstance(value, dict) or value is None:
        raise FastpathError(f"{where}: {value!r} is not a value", fix="give a number or a string")
    return str(value)


def to_argv(parser: argparse.ArgumentParser, section: Mapping[str, Any], where: str,
            ignore: Sequence[str] = ()) -> list[str]:
    """The command line that `section` (a mapping of YAML keys) stands for; an unknown key or
    a value of the wrong shape is one error naming the key."""
    known = settings(parser)
    argv: list[str] = []
    for key, value in section.items():
        if key in ignore:
            continue
        opt = known.get(str(key))
        what = f"{where}.{key}"
        if opt is None:
            raise FastpathError(f"{what}: unknown key",
                                fix=f"use one of {', '.join(sorted([*known, *ignore]))}")
        if opt.negated is not None and isinstance(value, bool):
            if not value:   # `X: false` is --no-X; `X: true` is the option's default
                argv.append(opt.negated)
            continue
        if opt.kind in ("switch", "negated"):
            if not isinstance(value, bool):
                raise FastpathError(f"{what}: {value!r} is not true or false")
            if value == (opt.kind == "switch"):
                argv.append(opt.flag)
        elif opt.kind == "list":
            items = value if isinstance(value, list) else [value]
            for item in items:
                argv += [opt.flag, _scalar(item, what)]
        elif isinstance(value, list):
            argv.append(f"{opt.flag}={','.join(_scalar(v, what) for v in value)}")
        else:
            argv.append(f"{opt.flag}={_scalar(value, what)}")
    return argv


def _key_of(parser: argparse.ArgumentParser, message: str) -> str | None:
    """The YAML key argparse's message is about ("argument --syn-burst: ...")."""
    for opt in settings(parser).values():
        if re.search(rf"\bargument {re.escape(opt.flag)}\b(?!-)", message):
            return opt.key
    return None


def parse(parser: argparse.ArgumentParser, section: Mapping[str, Any], where: str,
          convert: Callable[[argparse.Namespace], T], positional: Sequence[str] = (),
          ignore: Sequence[str] = ()) -> T:
    """`section` parsed as the command's options and turned into the application's config by
    `convert` (the function the command itself uses). An error names the key it is about:
    when `convert` refuses, each key is tried alone to find the one it refuses."""
    argv = to_argv(parser, section, where, ignore)
    try:
        args = parser.parse_args([*positional, *argv])
    except _Refusal as exc:
        key = _key_of(parser, str(exc))
        text = str(exc).split(": ", 1)[1] if key and ": " in str(exc) else str(exc)
        raise FastpathError(f"{where}.{key}: {text}" if key else f"{where}: {text}") from None
    try:
        return convert(args)
    except FastpathError as exc:
        key = _culprit(parser, section, where, convert, positional, ignore, exc)
        message = exc.message
        for opt in settings(parser).values():  # say "syn_rate" where the command says "--syn-rate"
            message = re.sub(rf"{re.escape(opt.flag)}\b(?!-)", opt.key, message)
        raise FastpathError(f"{where}.{key}: {message}" if key else f"{where}: {message}",
                            fix=exc.fix) from None


def _culprit(parser: argparse.ArgumentParser, section: Mapping[str, Any], where: str,
             convert: Callable[[argparse.Namespace], Any], positional: Sequence[str],
             ignore: Sequence[str], error: FastpathError) -> str | None:
    """The one key whose value alone makes `convert` refuse as it did, and without which the
    rest passes (None: no single key, e.g. a burst without a rate, or a key that is missing)."""

    def refuses(part: Mapping[str, Any]) -> bool:
        try:
            convert(parser.parse_args([*positional, *to_argv(parser, part, where, ignore)]))
        except (FastpathError, _Refusal) as exc:
            return str(exc) == str(error)
        return False

    for key in section:
        if key not in ignore and refuses({key: section[key]}) and \
                not refuses({k: v for k, v in section.items() if k != key}):
            return str(key)
    return None
