"""Import aiogram with its pydantic models built on first use, not all of them at import.

aiogram declares its Bot API types `defer_build=True`, then `aiogram.types` rebuilds every
one of them (about 450) at import so their forward references resolve. Each model gets its
own compiled validator holding the validators of everything it can contain, so the whole
API costs about 100 MB of resident memory and seconds of start-up, while the notifier calls
four methods. Here aiogram's rebuild loop only records the namespace it passes; every
aiogram model keeps that namespace and pydantic builds it, with the same schema, the first
time it is used. `prepare` builds what the sender calls at start, so nothing is built while
messages go out.

aiogram and pydantic are pinned (pyproject.toml); tests/unit/test_aiogram_deferred.py checks
that models stay unbuilt until used and validate as an eager import does.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from aiogram.methods import TelegramMethod

_AIOGRAM = "aiogram"


def import_aiogram() -> None:
    """Import aiogram with its models' build deferred (nothing to do once aiogram is imported)."""
    if _AIOGRAM in sys.modules:
        return
    original = BaseModel.__dict__["model_rebuild"]
    namespaces: list[dict[str, Any]] = []

    def record_namespace(
        cls: type[BaseModel],
        *,
        force: bool = False,
        raise_errors: bool = True,
        _parent_namespace_depth: int = 2,
        _types_namespace: dict[str, Any] | None = None,
    ) -> bool | None:
        if _types_namespace is not None and not force and cls.__module__.startswith(f"{_AIOGRAM}."):
            if not namespaces:
                namespaces.append(_types_namespace)
            return None
        depth = _parent_namespace_depth + 1 if _parent_namespace_depth > 0 else 0
        return original.__func__(
            cls,
            force=force,
            raise_errors=raise_errors,
            _parent_namespace_depth=depth,
            _types_namespace=_types_namespace,
        )

    BaseModel.model_rebuild = classmethod(record_namespace)  # type: ignore[method-assign,assignment]
    try:
        import aiogram  # noqa: F401
    finally:
        BaseModel.model_rebuild = original  # type: ignore[method-assign]
    if namespaces:
        for model in _aiogram_models():
            if model.__dict__.get("__pydantic_parent_namespace__") is None:
                # pydantic resolves a model's forward references in this namespace when it
                # builds the model, and in it when it builds a generic (Response[Message]).
                model.__pydantic_parent_namespace__ = namespaces[0]


def _aiogram_models() -> Iterator[type[BaseModel]]:
    seen: set[type[BaseModel]] = set()
    pending = [BaseModel]
    while pending:
        for sub in pending.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                pending.append(sub)
                if sub.__module__.startswith(f"{_AIOGRAM}."):
                    yield sub


def prepare(*methods: type[TelegramMethod[Any]]) -> tuple[type[BaseModel], ...]:
    """Build these Bot API methods' models and their responses' now; return them (keep them)."""
    from aiogram.methods import Response

    response: Any = Response  # parametrised at run time, as aiogram's session does
    built: list[type[BaseModel]] = []
    for method in methods:
        method.model_rebuild()
        built += [method, response[method.__returning__]]
    return tuple(built)


import_aiogram()
