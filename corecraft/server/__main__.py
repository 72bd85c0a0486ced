"""``python -m corecraft.server [serve options]``: the same as ``corecraft serve`` (handy without the console
script, e.g. as an MCP client's stdio command)."""

import sys

from corecraft.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
