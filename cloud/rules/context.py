"""What a rule is evaluated against besides the document: the message's topic, the client id
it came from, the arrival time, and the functions the engine provides."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

NO_FUNCTIONS: Mapping[str, Callable[..., Any]] = MappingProxyType({})


@dataclass(slots=True, kw_only=True)
class EvalContext:
    """Per message, built with keywords; treat it as read-only (not frozen: a frozen dataclass
    costs four times as much to build, and one is built for every message).

    ``topic``         the topic the message was published on (``topic()``, ``topic(n)``)
    ``timestamp_ms``  milliseconds since the epoch (``timestamp()``): when the engine received
                      the message, by the engine's clock
    ``clientid``      the publisher's MQTT client id (``clientid()``); ``None`` when the engine
                      cannot know it (MQTT 3.1.1 does not carry it): ``clientid()`` is undefined
    ``functions``     the engine's functions by name, the ones declared to ``compile_rule``;
                      called with the evaluated arguments, never with an undefined one
    """

    topic: str
    timestamp_ms: int
    clientid: str | None = None
    functions: Mapping[str, Callable[..., Any]] = field(default_factory=lambda: NO_FUNCTIONS)
    _levels: list[str] | None = field(default=None, init=False, repr=False, compare=False)

    def topic_levels(self) -> list[str]:
        """The topic split at '/', computed once per context (every ``topic(n)`` of every
        FOREACH item reads it). Do not modify the list."""
        levels = self._levels
        if levels is None:
            levels = self.topic.split("/")
            self._levels = levels
        return levels
