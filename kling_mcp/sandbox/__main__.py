"""``python -m kling_mcp.sandbox``: run the sandbox gateway on a loopback port."""

import argparse
import sys

from kling_mcp.sandbox.standalone import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kling_mcp.sandbox",
        description="A local stand-in for the Pixazo gateway (Kling Video 3 Turbo Pro) that renders placeholder MP4s.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
