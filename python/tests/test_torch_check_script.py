"""test/device/torch_check.py, the device's CUDA-graph and transformers
checks, checked here where there is no GPU: it compiles, and its
graph_case, run on CPU tensors with a stand-in for capture and replay,
passes a replay that recomputes and fails one that does not."""
import importlib.util
import os
import py_compile

import pytest

torch = pytest.importorskip("torch")

import moba  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "test", "device", "torch_check.py")


@pytest.fixture(scope="module")
def torch_check(tmp_path_factory):
    py_compile.compile(SCRIPT, doraise=True, cfile=str(
        tmp_path_factory.mktemp("pyc") / "torch_check.pyc"))
    spec = importlib.util.spec_from_file_location("torch_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Replay:
    """A captured graph's stand-in: replay() recomputes into the static
    results (what a CUDA graph does), or, `frozen`, leaves them."""

    def __init__(self, function, static, frozen):
        self.function, self.static, self.frozen = function, static, frozen

    def replay(self):
        if self.frozen:
            return
        for target, source in zip(self.static, self.function()):
            target.copy_(source)


def run_case(torch_check, monkeypatch, frozen):
    monkeypatch.setattr(torch_check, "no_sync", lambda f: f())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)

    def capture(function):
        static = function()
        return Replay(function, static, frozen), static

    monkeypatch.setattr(torch_check, "capture", capture)
    cu = torch.tensor([0, 20, 45], dtype=torch.int32)

    def make_inputs(seed):
        g = torch.Generator().manual_seed(seed)
        return tuple(torch.randn(45, h, 16, generator=g) for h in (4, 2, 2))

    q, k, v = make_inputs(0)
    checks = torch_check.Checks()
    torch_check.graph_case(checks, "cpu", lambda: moba.moba_attn_varlen(
        q, k, v, cu, 25, 8, 2, return_lse=True), (q, k, v), make_inputs)
    return checks.failures


def test_a_replay_that_recomputes_passes(torch_check, monkeypatch):
    assert run_case(torch_check, monkeypatch, frozen=False) == []


def test_a_replay_that_ignores_new_inputs_fails(torch_check, monkeypatch):
    assert run_case(torch_check, monkeypatch, frozen=True) == [
        "cpu: replay on new inputs gives their eager bits"]


def test_same_bits_tells_signed_zeros_apart_and_matches_nans(torch_check):
    a = torch.tensor([0.0, float("nan")])
    assert torch_check.same_bits(a, a.clone())
    assert not torch_check.same_bits(a, torch.tensor([-0.0, float("nan")]))
    assert not torch_check.same_bits(a, a.double())


def test_raises_wants_the_kind_and_the_words(torch_check):
    checks = torch_check.Checks()

    def bad():
        raise ValueError("cu_seqlens is not known")

    assert checks.raises("right", bad, ValueError, "not known")
    assert not checks.raises("words", bad, ValueError, "other words")
    assert not checks.raises("kind", bad, KeyError, "not known")
    assert not checks.raises("nothing", lambda: None, ValueError, "")
    assert checks.failures == ["words", "kind", "nothing"]
