"""MQTT 3.1.1 topic filters (section 4.7): validation and matching, as a broker does them.

* Levels are separated by ``/``; an empty level is a level (``a//b``, ``/a``).
* ``+`` matches exactly one level (possibly empty) and must fill its level alone.
* ``#`` matches the remaining levels, including none (``a/#`` matches ``a``); it must fill
  the last level alone.
* A filter whose first level is a wildcard does not match a topic starting with ``$``
  (``#`` does not match ``$SYS/...``).
* A filter is 1 to 65,535 bytes of UTF-8 without U+0000. ``$share/...`` is a shared
  subscription, which is how the engine subscribes, not what a rule matches: refused.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from cloud.rules._errors import RuleSchemaError

MAX_BYTES = 65535


def validate_topic_filter(topic_filter: str) -> None:
    """Raise :class:`RuleSchemaError` (no rule or position attached) if ``topic_filter`` is
    not a valid MQTT topic filter."""
    shown = repr(topic_filter) if len(topic_filter) <= 80 else repr(topic_filter[:77] + "...")
    if not topic_filter:
        raise RuleSchemaError("the topic filter is empty")
    if "\0" in topic_filter:
        raise RuleSchemaError(f"topic filter {shown} contains a NUL character")
    try:
        size = len(topic_filter.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise RuleSchemaError(f"topic filter {shown} is not valid UTF-8") from exc
    if size > MAX_BYTES:
        raise RuleSchemaError(f"topic filter is {size} bytes; MQTT allows at most {MAX_BYTES}")
    levels = topic_filter.split("/")
    if levels[0] == "$share":
        raise RuleSchemaError(
            f"topic filter {shown} is a shared subscription; a rule names the topic messages "
            "are published on (the engine decides how it subscribes)"
        )
    for number, level in enumerate(levels, start=1):
        if "#" in level and (level != "#" or number != len(levels)):
            raise RuleSchemaError(
                f"topic filter {shown}: '#' must be a whole level and the last one "
                f"(level {number} is {level!r})"
            )
        if "+" in level and level != "+":
            raise RuleSchemaError(
                f"topic filter {shown}: '+' must be a whole level (level {number} is {level!r})"
            )


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` under MQTT rules. A topic containing a
    wildcard character never matches (topic names cannot contain them)."""
    return compile_topic_filter(topic_filter)(topic)


@functools.lru_cache(maxsize=1024)
def compile_topic_filter(topic_filter: str) -> Callable[[str], bool]:
    """A matcher for one (valid) filter: string equality when it has no wildcard, otherwise
    one precompiled regular expression (a wildcard level never matches a '+' or '#' in the
    topic, and no level of a valid filter contains one, so a topic holding either never
    matches)."""
    validate_topic_filter(topic_filter)
    levels = topic_filter.split("/")
    if "+" not in levels and "#" not in levels:

        def exact(topic: str) -> bool:
            return topic == topic_filter

        return exact
    multi = levels[-1] == "#"
    fixed = levels[:-1] if multi else levels
    body = "/".join(_ONE_LEVEL if level == "+" else re.escape(level) for level in fixed)
    if multi:
        body = f"{body}(?:/{_REST})?" if fixed else _REST
    guard = r"(?!\$)" if levels[0] in ("+", "#") else ""
    pattern = re.compile(rf"(?=.){guard}{body}", re.DOTALL)

    def match(topic: str) -> bool:
        return pattern.fullmatch(topic) is not None

    return match


_ONE_LEVEL = "[^/+#]*"
_REST = "[^+#]*"
