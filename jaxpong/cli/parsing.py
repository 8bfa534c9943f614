"""The command line's parser: its error messages (the nearest choice or option for a typo, exit status 2)
and help, shared by every command, and the config flags of `train` and `bench`."""

from __future__ import annotations

import argparse
import difflib
import re

from jaxpong.base import config as config_lib
from jaxpong.training.stop import EXIT_USAGE


class Parser(argparse.ArgumentParser):
    commands: dict[str, Parser]  # the top-level parser's: command name -> subparser (set in build_parser)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # a typo such as --num-env must not silently mean --num-envs
        super().__init__(*args, **kwargs)

    def error(self, message):
        # argparse's "invalid choice" (a misspelt command or choice value): add the nearest choice.
        bad = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if bad:
            choices = [c.strip(" '") for c in bad.group(2).split(",")]
            message += did_you_mean(bad.group(1), choices)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def unknown_options(self, extra: list[str]):
        """Options this command does not have: name them, with the nearest option for the first."""
        options = [o for a in self._actions for o in a.option_strings if a.help != argparse.SUPPRESS]
        first = next((x for x in extra if x.startswith("-")), None)
        hint = did_you_mean(first.split("=", 1)[0], options) if first else ""
        if not hint and first:
            hint = f"; see {self.prog} --help"
        self.error(f"unrecognized arguments: {' '.join(extra)}{hint}")


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" once: not where the help already says its default, nor for an unset value."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.required:
            return text
        return super()._get_help_string(action)


def config_parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
    p.add_argument("--config", metavar="FILE", help="YAML config (defaults < this file < flags)")
    group = p.add_argument_group("config fields (each also settable in the YAML file under its section)")
    config_lib.add_config_flags(group)
    return p


def overrides(args) -> dict:
    return config_lib.flags_to_overrides(args)
