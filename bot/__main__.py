"""``blnk-backup-bot``: the Slack front end. It arrives with the Slack issue; until then it says
so plainly instead of pretending to run."""

from __future__ import annotations

import sys


def main() -> int:
    sys.stderr.write(
        "blnk-backup-bot: the Slack bot is not built yet; use the blnk-backup CLI meanwhile.\n"
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
