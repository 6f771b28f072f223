"""One-line errors for the command-line tools: `error: ...` on stderr, exit status 2."""
import argparse
import sys


def fail(message) -> None:
    message = str(message)
    print(f"error: {message.splitlines()[0] if message else message}", file=sys.stderr, flush=True)
    sys.exit(2)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of usage + message."""

    def error(self, message):
        fail(message)
