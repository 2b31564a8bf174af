"""typing's ``Generic`` and ``overload`` for perfkit's public classes, and the
type variables they are parameterized by, without importing typing at run
time: ``perfkit.parallel`` does without it (it adds ~8 ms, a fifth of that
module's import).

Type checkers read the real ones; at run time ``Generic`` only lets a class
be subscripted (``Parallel[...]`` in an annotation that is evaluated, as
``list[...]`` is), ``overload`` keeps the implementation that follows, and
the type variables are placeholders. Ruff takes this module's names for
typing's (``typing-modules`` in pyproject.toml).
"""

from types import GenericAlias

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Generic, Literal, overload

    from typing_extensions import ParamSpec, TypeVar

    P = ParamSpec("P")
    R = TypeVar("R")
    T = TypeVar("T")
    # What Parallel(return_as=...) was given, so that its call's result is a
    # list or a generator; a subclass or an unparameterized annotation means "list".
    ReturnAs = TypeVar(
        "ReturnAs",
        bound=Literal["list", "generator", "generator_unordered"],
        default=Literal["list"],
    )
else:

    def overload(function):
        return function

    class Generic:
        __slots__ = ()
        __class_getitem__ = classmethod(GenericAlias)

    P = R = T = ReturnAs = None

__all__ = ["Generic", "P", "R", "ReturnAs", "T", "overload"]
