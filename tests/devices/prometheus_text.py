"""A small strict parser of the Prometheus text exposition format (0.0.4), for the tests.

Strict where the format is: metric and label names, label value escapes, one TYPE per family
declared before its samples, samples of a family contiguous, no duplicate series, counters
named ``*_total`` and never negative, a final newline. Stricter than Prometheus where we can
afford to be: no blank lines, no timestamps (we never emit them).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}

Labels = frozenset[tuple[str, str]]


class ExpositionError(AssertionError):
    pass


@dataclass
class Family:
    name: str
    type: str = "untyped"
    help: str | None = None
    typed: bool = False
    samples: dict[Labels, float] = field(default_factory=dict)

    def value(self, **labels: str) -> float:
        return self.samples[frozenset(labels.items())]


def _labels(text: str, lineno: int) -> tuple[Labels, str]:
    """Parse ``{a="x",b="y"}`` at the start of ``text``; return the labels and the rest."""
    assert text.startswith("{")
    pos, labels = 1, []
    while True:
        if text[pos] == "}":
            pos += 1
            break
        match = LABEL_NAME.match(text, pos)
        if match is None:
            raise ExpositionError(f"line {lineno}: bad label name at {text[pos:]!r}")
        name, pos = match.group(), match.end()
        if text[pos : pos + 2] != '="':
            raise ExpositionError(f"line {lineno}: expected =\" after label {name}")
        pos += 2
        value = []
        while True:
            if pos >= len(text):
                raise ExpositionError(f"line {lineno}: unterminated label value")
            char = text[pos]
            if char == "\\":
                escaped = text[pos + 1 : pos + 2]
                if escaped not in ESCAPES:
                    raise ExpositionError(f"line {lineno}: bad escape \\{escaped}")
                value.append(ESCAPES[escaped])
                pos += 2
            elif char == '"':
                pos += 1
                break
            elif char == "\n":
                raise ExpositionError(f"line {lineno}: raw newline in label value")
            else:
                value.append(char)
                pos += 1
        if any(existing == name for existing, _ in labels):
            raise ExpositionError(f"line {lineno}: label {name} repeated")
        labels.append((name, "".join(value)))
        if text[pos] == ",":
            pos += 1
        elif text[pos] != "}":
            raise ExpositionError(f"line {lineno}: expected , or }} after label {name}")
    return frozenset(labels), text[pos:]


def _value(text: str, lineno: int) -> float:
    special = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
    if text in special:
        return special[text]
    if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?", text):
        raise ExpositionError(f"line {lineno}: bad sample value {text!r}")
    return float(text)


def parse(text: str) -> dict[str, Family]:
    if not text.endswith("\n"):
        raise ExpositionError("exposition must end with a newline")
    families: dict[str, Family] = {}
    current: str | None = None  # family whose samples are being read
    finished: set[str] = set()
    for lineno, line in enumerate(text[:-1].split("\n"), start=1):
        if not line:
            raise ExpositionError(f"line {lineno}: blank line")
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            keyword, rest = line[2:6], line[7:]
            name, _, arg = rest.partition(" ")
            if not METRIC_NAME.fullmatch(name):
                raise ExpositionError(f"line {lineno}: bad metric name {name!r}")
            family = families.setdefault(name, Family(name))
            if name in finished or family.samples:
                raise ExpositionError(f"line {lineno}: {keyword} for {name} after its samples")
            if keyword == "HELP":
                if family.help is not None:
                    raise ExpositionError(f"line {lineno}: second HELP for {name}")
                family.help = arg
            else:
                if arg not in TYPES:
                    raise ExpositionError(f"line {lineno}: unknown type {arg!r}")
                if family.typed:
                    raise ExpositionError(f"line {lineno}: second TYPE for {name}")
                family.type = arg
                family.typed = True
            if current is not None and current != name:
                finished.add(current)
            current = name
            continue
        if line.startswith("#"):
            continue
        match = METRIC_NAME.match(line)
        if match is None:
            raise ExpositionError(f"line {lineno}: bad sample line {line!r}")
        name, rest = match.group(), line[match.end() :]
        labels: Labels = frozenset()
        if rest.startswith("{"):
            labels, rest = _labels(rest, lineno)
        if not rest.startswith(" "):
            raise ExpositionError(f"line {lineno}: expected a space before the value")
        fields = rest[1:].split(" ")
        if len(fields) != 1:
            raise ExpositionError(f"line {lineno}: trailing fields (timestamps are not emitted) {fields!r}")
        value = _value(fields[0], lineno)
        if name in finished:
            raise ExpositionError(f"line {lineno}: samples of {name} are not contiguous")
        if current is not None and current != name:
            finished.add(current)
        current = name
        family = families.get(name)
        if family is None or not family.typed:
            raise ExpositionError(f"line {lineno}: sample of {name} before its TYPE")
        if labels in family.samples:
            raise ExpositionError(f"line {lineno}: duplicate series {name}{dict(labels)}")
        if family.type == "counter":
            if not name.endswith("_total"):
                raise ExpositionError(f"line {lineno}: counter {name} not named *_total")
            if value < 0:
                raise ExpositionError(f"line {lineno}: negative counter {name}")
        family.samples[labels] = value
    return families
