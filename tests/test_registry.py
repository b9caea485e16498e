"""The method registry: built-ins resolve lazily, unknown names suggest, entry points add methods."""

from __future__ import annotations

import sys
import textwrap

import pytest

from harness.api import GenerativeMethod
from harness.registry import METHODS, Registry, UnknownNameError


def test_builtin_methods_resolve_to_generative_methods():
    for name in ("dcgan", "wgan", "wgan_gp", "cgan"):
        cls = METHODS.get(name)
        assert issubclass(cls, GenerativeMethod)
        assert cls.name == name
        assert cls.description
        cls.Config()  # defaults are complete


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownNameError, match=r"did you mean 'wgan_gp'"):
        METHODS.get("wgan-gp")
    with pytest.raises(UnknownNameError, match="registered: augment_shots, cgan, copy_shots, dcgan"):
        METHODS.get("zzzzzz")


def test_registration_is_lazy_and_checks_the_base_class():
    registry: Registry = Registry("method", base=GenerativeMethod)
    registry.register("broken", "no_such_module_xyz:Thing")
    assert "broken" in registry  # nothing imported yet
    with pytest.raises(ModuleNotFoundError):
        registry.get("broken")
    registry.register("not_a_method", "collections:OrderedDict")
    with pytest.raises(TypeError, match="not a subclass of GenerativeMethod"):
        registry.get("not_a_method")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("broken", "other:Thing")


def test_entry_point_plugin_is_found_without_forking(tmp_path, monkeypatch):
    """An installed distribution that declares `harness.methods` entry points is picked up."""
    (tmp_path / "my_plugin.py").write_text(textwrap.dedent('''
        from methods.dcgan import DCGAN

        class Copycat(DCGAN):
            name = "copycat"
            description = "a plugin method"
    '''))
    dist = tmp_path / "my_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[harness.methods]\ncopycat = my_plugin:Copycat\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry = Registry("method", "harness.methods", base=GenerativeMethod)
    assert "copycat" in registry.names()
    assert registry.get("copycat").description == "a plugin method"
    sys.modules.pop("my_plugin", None)
