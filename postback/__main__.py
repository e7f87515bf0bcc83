import sys

from postback.cli import entry

sys.exit(entry())
