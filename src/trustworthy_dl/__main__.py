"""``python -m trustworthy_dl ...`` (what torchrun launches): the same as the ``tdl`` command."""

from trustworthy_dl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
