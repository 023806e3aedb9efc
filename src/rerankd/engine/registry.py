"""The models one process serves, found by any of their names."""

from __future__ import annotations

from rerankd.engine.engine import Engine
from rerankd.errors import ModelNotFound


class ModelRegistry:
    """Engines by name: each answers to its full id, its short name, its preset name, and a local folder's path as
    given (never listed); the first also to `default`."""

    def __init__(self, engines: list[Engine]) -> None:
        if not engines:
            raise ValueError("a registry needs at least one model")
        self.engines = engines
        self._by_name: dict[str, Engine] = {}
        self._by_path: dict[str, Engine] = {}  # kept apart: a 404 lists the served names, never a path
        for engine in reversed(engines):  # earlier models win a shared alias
            for alias in engine.spec.aliases:
                self._by_name[alias] = engine
            for path in engine.spec.local_names:
                self._by_path[path] = engine
        self._by_name["default"] = engines[0]

    @property
    def default(self) -> Engine:
        return self.engines[0]

    def get(self, name: str | None) -> Engine:
        if not name:
            return self.default
        try:
            return self._by_name[name] if name in self._by_name else self._by_path[name]
        except KeyError:
            served = ", ".join(sorted(self._by_name))
            raise ModelNotFound(f"model: {name!r} is not served here; served names: {served}") from None

    def close(self) -> None:
        for engine in self.engines:
            engine.close()
