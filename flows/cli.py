"""The `vaeflow` entry point: a user's mistake is one line and exit 2, anything else a bug (exit 1)."""

from __future__ import annotations

import argparse
import sys
import traceback

from flows.parser import build_parser
from vae_core.errors import UserError, find_error


def user_error(error: BaseException) -> str | None:
    """The one line to print when `error` is the user's mistake: the message of the UserError found
    along its causes and inside Ray's wrappers (a bad config, option, file, column, URI, missing
    credentials, a lost commit race). None for anything else, a builtin ValueError from inside numpy
    or torch included: that is a bug, and it keeps its traceback."""
    found = find_error(error, UserError)
    return None if found is None else " ".join(str(found).split())


def main(argv: list[str] | None = None) -> int:
    """`vaeflow ARGV`: the exit code of the command the arguments name (see run_command)."""
    return run_command(build_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command `args.func`: its code (0), or 2 with one line on stderr for a user error
    (--debug adds the traceback), 130 with one line for Ctrl-C; any other exception propagates (Python
    prints it and exits 1)."""
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            traceback.print_exc()
        # Outputs are committed whole or not at all: an interrupted job left none of its rows visible.
        print(f"vaeflow {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_error(e)
        if message is None:
            raise
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"vaeflow {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
