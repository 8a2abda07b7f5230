"""``python -m treadle_core.cli``: the same as the ``treadle`` console script."""

from treadle_core.cli import main

if __name__ == "__main__":
    main()
