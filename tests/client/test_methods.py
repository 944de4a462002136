"""`Client` and `AsyncClient` offer the same operations: the same names, parameters, defaults,
answers and docstrings; the asyncio one's are coroutines and async iterators where the blocking
one's are plain functions and iterators."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any, get_args, get_origin

from app.client import AsyncClient, Client

#: The only public names that differ, by the protocols of closing.
RENAMED = {"close": "aclose"}


def public(cls: type[Any]) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def parameters(function: Any) -> list[tuple[str, Any, Any, Any]]:
    return [
        # The transport is the one parameter of different type: each client takes its own kind.
        (p.name, p.kind, p.default, None if p.name == "transport" else p.annotation)
        for p in inspect.signature(function).parameters.values()
    ]


def test_both_clients_have_the_same_public_methods() -> None:
    assert {RENAMED.get(name, name) for name in public(Client)} == public(AsyncClient)
    # Enough of them that an empty pair of classes could not pass.
    assert {"search", "iter_docs", "upsert_docs_batched", "run", "close"} <= public(Client)


def test_same_parameters_same_answers_each_in_its_own_kind() -> None:
    for name in [*sorted(public(Client)), "__init__"]:
        blocking = getattr(Client, name)
        awaiting = getattr(AsyncClient, RENAMED.get(name, name))
        assert parameters(blocking) == parameters(awaiting), name
        assert inspect.getdoc(blocking) == inspect.getdoc(awaiting), name
        if isinstance(inspect.getattr_static(Client, name), staticmethod):
            # Offline helpers (mint_token) send nothing: the same function on both clients.
            assert awaiting is blocking, name
            continue
        assert not inspect.iscoroutinefunction(blocking), name

        answers = inspect.signature(blocking).return_annotation
        answers_async = inspect.signature(awaiting).return_annotation
        if get_origin(answers) is Iterator:
            # An async iterator is returned at once (not awaited), as an async generator would.
            assert get_origin(answers_async) is AsyncIterator, name
            assert get_args(answers) == get_args(answers_async), name
            assert not inspect.iscoroutinefunction(awaiting), name
        else:
            assert answers == answers_async, name
            assert name == "__init__" or inspect.iscoroutinefunction(awaiting), name


def test_the_operations_read_as_plain_methods() -> None:
    # What help() and an editor show: the operation's own name, parameters, answer and words.
    search = inspect.signature(Client.search)
    assert list(search.parameters)[:2] == ["self", "query"]
    assert search.parameters["min_score"].default is None
    assert search.return_annotation.__name__ == "SearchResults"
    assert Client.search.__name__ == "search" and Client.upsert_docs_batched.__doc__
    with Client("http://127.0.0.1:9", "key") as api:
        assert list(inspect.signature(api.search).parameters)[:1] == ["query"]
