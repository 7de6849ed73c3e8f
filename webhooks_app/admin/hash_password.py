"""Print an Argon2id hash for ADMIN_PASSWORD_HASH: ``make hash-password``.

Asks twice on a terminal; reads one line from standard input otherwise (for scripts).
"""

from __future__ import annotations

import getpass
import sys

from argon2 import PasswordHasher

MIN_LENGTH = 12


def main() -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("Admin password: ")
        if getpass.getpass("Again: ") != password:
            print("The passwords differ.", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < MIN_LENGTH:
        print(f"Use at least {MIN_LENGTH} characters.", file=sys.stderr)
        return 1
    # argon2-cffi's defaults are RFC 9106's second recommended (low-memory) Argon2id profile.
    print(PasswordHasher().hash(password))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
