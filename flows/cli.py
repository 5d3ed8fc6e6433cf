"""The `vaeflow` entry point: a user's mistake is one line and exit 2, anything else a bug (exit 1)."""

from __future__ import annotations

import argparse
import errno
import sys
import traceback

from flows.parser import build_parser
from vae_core.errors import UserError, find_error

# Where an output cannot be written for a reason of its file system, not of vaeflow's code.
FULL_OR_READ_ONLY = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}


def user_error(error: BaseException, where: str | None = None) -> str | None:
    """The one line to print when `error` is the user's mistake: the message of the UserError found
    along its causes and inside Ray's wrappers (a bad config, option, file, column, URI, missing
    credentials, a lost commit race), or a disk that is full or read-only (named by the OSError's file,
    else by `where`, the command's output). None for anything else, a builtin ValueError from inside
    numpy or torch included: that is a bug, and it keeps its traceback."""
    found = find_error(error, UserError)
    if found is not None:
        return " ".join(str(found).split())
    disk = find_error(error, OSError)
    if disk is not None and disk.errno in FULL_OR_READ_ONLY:
        path = disk.filename or where or "the output"
        return (
            f"{path}: {FULL_OR_READ_ONLY[disk.errno]}; nothing was published: free space, or give an "
            "output on a writable file system"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    """`vaeflow ARGV`: the exit code of the command the arguments name (see run_command)."""
    return run_command(build_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command `args.func`: its code (0), or 2 with one line on stderr for a user error
    (--debug adds the traceback), 130 with one line for Ctrl-C; any other exception propagates (Python
    prints it and exits 1)."""
    had_cluster = _ray_connected()  # e.g. a caller's own, in this process: it stays
    try:
        code = args.func(args)
        if not had_cluster:  # now rather than in Ray's exit hook, which first sleeps half a second
            _stop_own_cluster()
        return code
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            traceback.print_exc()
        # Outputs are committed whole or not at all: an interrupted job left none of its rows visible.
        print(f"vaeflow {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not had_cluster:
            _stop_own_cluster()
        message = user_error(e, getattr(args, "output", None))
        if message is None:
            raise
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"vaeflow {args.command}: error: {message}", file=sys.stderr)
        return 2


def _ray_connected() -> bool:
    ray = sys.modules.get("ray")  # imported only by commands that use Ray
    return ray is not None and ray.is_initialized()


def _stop_own_cluster() -> None:
    """A command leaves no local Ray cluster of its own running (a cluster it joined stays)."""
    cluster = sys.modules.get("vae_core.distributed.cluster")  # imported only by commands that use Ray
    if cluster is not None:
        cluster.stop_own_cluster()


if __name__ == "__main__":
    sys.exit(main())
