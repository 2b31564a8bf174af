"""``python -m perfkit``: the ``perfkit`` command."""

if __name__ == "__main__":
    from perfkit.cli import main

    main()
