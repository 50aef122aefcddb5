"""``python -m engine``: the ``waitpoint`` command, for an environment without its script."""

from .cli import main

if __name__ == "__main__":
    main()
