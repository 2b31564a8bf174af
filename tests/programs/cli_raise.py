"""Ends with an uncaught exception."""


def inner():
    raise ValueError("boom from cli_raise")


def outer():
    inner()


if __name__ == "__main__":
    outer()
