"""The public surface of ``bingfa``: what it exports, where it says things live, docs."""

from __future__ import annotations

import inspect

import pytest

import bingfa

PUBLIC = sorted(name for name in bingfa.__all__ if name != "__version__")


def test_all_matches_the_public_names():
    # dir(), not vars(): names are loaded on first use
    public = {name for name in dir(bingfa) if not name.startswith("_")}
    # submodules are private (underscored) and never public attributes
    assert public == set(bingfa.__all__) - {"__version__"}
    assert len(bingfa.__all__) == len(set(bingfa.__all__))
    assert "__version__" in bingfa.__all__


def test_every_name_in_all_exists():
    for name in bingfa.__all__:
        assert hasattr(bingfa, name), name


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        bingfa.nonexistent  # noqa: B018


def test_version_is_a_string():
    assert isinstance(bingfa.__version__, str)
    assert bingfa.__version__


@pytest.mark.parametrize("name", PUBLIC)
def test_public_objects_live_in_bingfa(name):
    obj = getattr(bingfa, name)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        assert obj.__module__ == "bingfa", f"{name}.__module__ is {obj.__module__!r}"


@pytest.mark.parametrize("name", PUBLIC)
def test_public_names_have_docstrings(name):
    obj = getattr(bingfa, name)
    doc = inspect.getdoc(obj)
    assert (doc or "").strip(), f"bingfa.{name} has no docstring"
    if inspect.isclass(obj):
        # not just inherited from a base class
        assert (vars(obj).get("__doc__") or "").strip(), f"bingfa.{name}"


def _public_methods(cls):
    for attr, value in vars(cls).items():
        if attr.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property):
            value = value.fget
        if callable(value):
            yield attr, value


@pytest.mark.parametrize(
    "name", [n for n in PUBLIC if inspect.isclass(getattr(bingfa, n))])
def test_public_methods_have_docstrings(name):
    cls = getattr(bingfa, name)
    missing = [attr for attr, fn in _public_methods(cls) if not (fn.__doc__ or "").strip()]
    assert not missing, f"bingfa.{name} methods without docstrings: {missing}"


def test_package_docstring():
    assert "bingfa" in (bingfa.__doc__ or "")


def test_star_import_gives_exactly_all():
    namespace: dict[str, object] = {}
    exec("from bingfa import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(bingfa.__all__)
