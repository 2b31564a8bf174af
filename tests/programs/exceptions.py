"""Exceptions: raised and caught across frames, in C functions, re-raised,
in finally blocks, suppressed by a context manager."""


class AppError(Exception):
    pass


def validate(x):
    if x < 0:
        raise AppError(x)
    return x


def parse(text):
    try:
        return int(text)
    except ValueError:
        return None


def safe_validate(values):
    ok = 0
    for v in values:
        try:
            validate(v)
            ok += 1
        except AppError:
            pass
    return ok


def deep(n):
    if n == 0:
        raise LookupError("bottom")
    return deep(n - 1)


def reraise():
    try:
        deep(5)
    except LookupError as e:
        raise RuntimeError("wrapped") from e


def with_finally():
    try:
        return parse("12")
    finally:
        parse("x")


class Suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


def suppressed():
    with Suppress():
        validate(-1)


def main():
    safe_validate([1, -1, 2, -2, 3])
    parse("10")
    parse("ten")
    try:
        reraise()
    except RuntimeError:
        pass
    with_finally()
    suppressed()
    try:
        [].pop()
    except IndexError:
        pass
    try:
        "abc".index("z")
    except ValueError:
        pass
