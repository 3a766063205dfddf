"""The package's names load lazily, each from the module that defines it."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import protocol


@pytest.mark.parametrize("name", protocol.__all__)
def test_every_public_name_is_the_object_its_module_defines(name: str) -> None:
    module = protocol._WHERE[name]
    assert getattr(protocol, name) is getattr(importlib.import_module(module), name)


def test_the_lazy_table_lists_exactly_the_public_names() -> None:
    assert sorted(protocol._WHERE) == sorted(protocol.__all__)


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="'no_such_name'"):
        protocol.no_such_name  # noqa: B018


def test_importing_a_topic_parser_does_not_load_the_signature_library() -> None:
    code = "import sys\nfrom protocol import parse_broker_url, ProtocolError\nprint('cryptography' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"
