"""How the builders of `app.client.calls` become methods of both clients, written once.

`ClientBase` lists the operations, each as an `Operation` (or a `Listing` for the iterators).
For the type checker, that attribute is a method of `Client` answering `T` and of `AsyncClient`
answering an awaitable of `T` (or an iterator and an async iterator). At run time each client
class replaces it with a real function of its own kind (`async def` for `AsyncClient`), so
`inspect`, `help()` and tracebacks see plain methods."""

from __future__ import annotations

import inspect
import types
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    Self,
    TypeVar,
    get_args,
    overload,
)

from app.client.calls import Call, Pages, Program

if TYPE_CHECKING:
    from app.client.async_client import AsyncClient
    from app.client.sync_client import Client

T = TypeVar("T")
P = ParamSpec("P")
F = TypeVar("F", bound=Callable[..., Any])

#: What makes a client's method of a builder (each client has its own kind).
Dresser = Callable[[Callable[..., Any]], Callable[..., Any]]


class Operation(Generic[P, T]):
    """An operation of one call or a program of several."""

    def __init__(self, build: Callable[P, Call[T] | Program[T]]) -> None:
        self.build = build

    @overload
    def __get__(
        self, client: AsyncClient, owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __get__(self, client: Client, owner: type[Any]) -> Callable[P, T]: ...
    @overload
    def __get__(
        self, client: None, owner: type[AsyncClient]
    ) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]: ...
    @overload
    def __get__(self, client: None, owner: type[Client]) -> Callable[Concatenate[Client, P], T]: ...
    @overload
    def __get__(self, client: None, owner: type[Any]) -> Self: ...
    def __get__(self, client: object, owner: type[Any]) -> Any:
        return _unbound(self, client)


class Listing(Generic[P, T]):
    """An operation that walks a list page after page."""

    def __init__(self, build: Callable[P, Pages[T]]) -> None:
        self.build = build

    @overload
    def __get__(self, client: AsyncClient, owner: type[Any]) -> Callable[P, AsyncIterator[T]]: ...
    @overload
    def __get__(self, client: Client, owner: type[Any]) -> Callable[P, Iterator[T]]: ...
    @overload
    def __get__(
        self, client: None, owner: type[AsyncClient]
    ) -> Callable[Concatenate[AsyncClient, P], AsyncIterator[T]]: ...
    @overload
    def __get__(
        self, client: None, owner: type[Client]
    ) -> Callable[Concatenate[Client, P], Iterator[T]]: ...
    @overload
    def __get__(self, client: None, owner: type[Any]) -> Self: ...
    def __get__(self, client: object, owner: type[Any]) -> Any:
        return _unbound(self, client)


def _unbound(declared: Operation[Any, Any] | Listing[Any, Any], client: object) -> Any:
    if client is None:
        return declared
    # Every subclass of ClientBase shadows this with its own method; only a stray one gets here.
    raise TypeError(f"{type(client).__name__} has no way to run {declared.build.__name__}")


def dress(cls: type[Any], *, method: Dresser, iterator: Dresser) -> None:
    """Give `cls` a method of its kind for each `Operation` and `Listing` it inherits."""
    for base in reversed(cls.__mro__):
        for name, declared in vars(base).items():
            if isinstance(declared, Operation):
                setattr(cls, name, method(declared.build))
            elif isinstance(declared, Listing):
                setattr(cls, name, iterator(declared.build))


def dressed(method: F, build: Callable[..., Any], *, iterator: type | None = None) -> F:
    """`method`, which runs what `build` describes, shown as `build` to `help()` and `inspect`:
    its name, docstring, and parameters after `self`; it returns what `build`'s call answers
    (as an `iterator` of it for `Pages`)."""
    signature = inspect.signature(build)
    # Call[X], Program[X] (a Generator whose return type comes last) and Pages[X] all end in X.
    returns: Any = get_args(inspect.get_annotations(build, eval_str=True)["return"])[-1]
    if iterator is not None:
        returns = types.GenericAlias(iterator, (returns,))
    self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self, *signature.parameters.values()], return_annotation=returns
    )
    method.__name__ = method.__qualname__ = build.__name__
    method.__doc__ = build.__doc__
    return method
