"""Guards of the library patches (harmony_mcore.patches): each fails when a patched target disappears,
changes its parameters, or its library's source no longer has what the patch relies on; and a patch
refuses a library version it was not written for."""

import importlib
import inspect
import pkgutil

import pytest

import harmony_mcore.patches as patches
from harmony_mcore.patches import PatchError, parameters, require, resolve

MODULES = [importlib.import_module(f"harmony_mcore.patches.{m.name}") for m in pkgutil.iter_modules(patches.__path__)]
TARGETS = [(m.__name__, path, params) for m in MODULES for path, params in m.TARGETS.items()]
SOURCES = [(m.__name__, module, text) for m in MODULES for module, text in getattr(m, "SOURCES", {}).items()]


def test_every_patch_module_declares_its_versions_and_targets():
    assert {m.__name__.rsplit(".", 1)[1] for m in MODULES} == {"torch", "megatron"}
    for m in MODULES:
        assert m.WRITTEN_FOR and m.TARGETS, m.__name__
        require(m.__name__, m.WRITTEN_FOR)  # the installed versions are the ones the patches were written for


@pytest.mark.parametrize("module, path, params", TARGETS, ids=[t[1] for t in TARGETS])
def test_target_exists_with_its_parameters(module, path, params):
    target = resolve(path)  # AttributeError / ImportError: the target is gone
    if params is not None:
        assert parameters(target) == params, f"{path} changed: check {module} against it"


@pytest.mark.parametrize("module, source, text", SOURCES, ids=[s[1] for s in SOURCES])
def test_library_source_still_does_what_the_patch_relies_on(module, source, text):
    assert text in inspect.getsource(importlib.import_module(source)), f"{source} changed: check {module}"


def test_guards_catch_a_changed_target_and_a_foreign_version():
    with pytest.raises(AttributeError):
        resolve("megatron.core.optimizer.distrib_optimizer.DistributedOptimizer.no_such_method")
    assert parameters(resolve("torch.cuda.synchronize")) != ("device", "stream")
    with pytest.raises(PatchError, match=r"written for torch<2\.0, and .* is installed"):
        require("a patch", {"torch": "<2.0"})


def test_moe_router_runs_without_transformer_engine():
    import torch
    from megatron.core.transformer.moe import moe_utils

    from harmony_mcore.patches.megatron import moe_router_without_te

    moe_router_without_te()
    inp, weight = torch.randn(3, 5, 8), torch.randn(4, 8)
    out = moe_utils.RouterGatingLinearFunction.apply(inp, weight, None, torch.float32)  # NameError unpatched
    assert torch.allclose(out, inp @ weight.T, atol=1e-6)
