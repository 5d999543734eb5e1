"""Run one command: parse, check, connect, and map failures to the documented statuses."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

from stabilizer.cli.common import EXIT_OK, EXIT_UNAVAILABLE, PROG, redacted
from stabilizer.cli.parser import build_parser, check_args, config_from
from stabilizer.cli.watch import watch
from stabilizer.errors import BackendRefused, BackendUnavailable

EXIT_INTERRUPTED = 130  # Ctrl-C during a one-shot command (watch exits 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from(args, os.environ)
        check_args(config, args)
    except ValueError as exc:  # ConfigError and InvalidClientIdError are ValueErrors
        parser.error(" ".join(str(exc).split()))
    try:
        return int(asyncio.run(args.command(config, args, sys.stdout)))
    except BackendRefused as exc:  # Redis answered: reachable, but of no use as it is
        assert config.redis_url is not None
        detail = " ".join(str(exc).split())
        hint = (f" (is a key of namespace {config.namespace!r} another application's?)"
                if "WRONGTYPE" in detail else "")  # a key of the wrong type
        print(f"{PROG}: Redis at {redacted(config.redis_url)} answered with an error{hint}: "
              f"{detail}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except BackendUnavailable as exc:
        reason = " ".join(str(exc.__cause__ or exc).split()) or (
            f"no answer in {config.op_timeout:g}s")
        assert config.redis_url is not None
        print(f"{PROG}: cannot reach Redis at {redacted(config.redis_url)}: {reason}",
              file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:  # asyncio.run cancelled the command: its clients are closed
        return EXIT_OK if args.command is watch else EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
