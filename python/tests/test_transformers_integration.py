"""moba.integrations.transformers on the CPU.

transformers is not installed here (Debian has no package of it, and CI is
offline), so `transformers` is a stand-in registered in sys.modules for
each test: AttentionInterface and masking_utils.AttentionMaskInterface as
transformers 5.x defines them (GeneralInterface: a class-wide mapping that
register() updates, seen by every instance, such as the
ALL_ATTENTION_FUNCTIONS the models call). It is no model: the attention
function is called as a model's attention layer calls it, with query
[batch, heads, seq, head_dim], and its results are compared with
reference.py's float64 MoBA. A real model (a small Llama built from its
config, against SDPA) is test/device/torch_check.py hf, on the device,
where transformers is installed.
"""
import sys
import types
import warnings

import numpy as np
import pytest

from reference import moba_reference

torch = pytest.importorskip("torch")

import moba.integrations.transformers as moba_hf  # noqa: E402


def stand_in_transformers():
    """A module with transformers' registries (their semantics, not their
    code)."""

    class GeneralInterface:
        _global_mapping = {}

        def __init__(self):
            self._local_mapping = {}

        def __getitem__(self, key):
            if key in self._local_mapping:
                return self._local_mapping[key]
            return self._global_mapping[key]

        def __contains__(self, key):
            return key in self._local_mapping or key in self._global_mapping

        @classmethod
        def register(cls, key, value):
            cls._global_mapping.update({key: value})

    class AttentionInterface(GeneralInterface):
        _global_mapping = {"sdpa": object()}

    class AttentionMaskInterface(GeneralInterface):
        _global_mapping = {"sdpa": object()}

    module = types.ModuleType("transformers")
    module.AttentionInterface = AttentionInterface
    module.ALL_ATTENTION_FUNCTIONS = AttentionInterface()
    masking = types.ModuleType("transformers.masking_utils")
    masking.AttentionMaskInterface = AttentionMaskInterface
    masking.ALL_MASK_ATTENTION_FUNCTIONS = AttentionMaskInterface()
    module.masking_utils = masking
    return module, masking


@pytest.fixture
def transformers(monkeypatch):
    module, masking = stand_in_transformers()
    monkeypatch.setitem(sys.modules, "transformers", module)
    monkeypatch.setitem(sys.modules, "transformers.masking_utils", masking)
    return module


class Layer:
    """What the attention function reads of a model's attention module."""

    def __init__(self, is_causal=True, **settings):
        self.is_causal = is_causal
        self.__dict__.update(settings)


BLOCK, TOP_K = 8, 2


def inputs(seed, batch, seq, hq=4, hkv=2, d=16, kv_seq=None):
    g = torch.Generator().manual_seed(seed)
    kv_seq = seq if kv_seq is None else kv_seq
    return (torch.randn(batch, hq, seq, d, generator=g),
            torch.randn(batch, hkv, kv_seq, d, generator=g),
            torch.randn(batch, hkv, kv_seq, d, generator=g))


def as_varlen(x):
    """[b, h, s, d] -> [b * s, h, d] (numpy)."""
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b * s, h, d).numpy()


def reference(q, k, v, cu, causal=True, scale=None, top_k=TOP_K):
    out, _, near = moba_reference(q, k, v, np.asarray(cu), BLOCK, top_k,
                                  causal=causal, scale=scale)
    return out, near


def close(got, want, near=None):
    got = np.asarray(got, dtype=np.float64)
    keep = np.ones(got.shape[:2], bool) if near is None else ~near
    np.testing.assert_allclose(got[keep], want[keep], rtol=2e-4, atol=2e-5)


def test_register_adds_the_attention_and_its_mask_function(transformers):
    function = moba_hf.register(block_size=BLOCK, top_k=TOP_K)
    # Every instance sees the class-wide mapping, as the models' do.
    assert transformers.AttentionInterface()["moba"] is function
    assert transformers.ALL_ATTENTION_FUNCTIONS["moba"] is function
    masks = transformers.masking_utils.AttentionMaskInterface()
    assert masks["moba"] is moba_hf.padding_mask
    assert (function.block_size, function.top_k) == (BLOCK, TOP_K)
    other = moba_hf.register_moba_attention("moba-wide", block_size=16,
                                            top_k=4)
    assert transformers.ALL_ATTENTION_FUNCTIONS["moba-wide"] is other
    assert transformers.ALL_ATTENTION_FUNCTIONS["moba"] is function


def test_register_without_transformers_says_what_it_needs(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="needs Hugging Face transformers "
                       "4.48 or newer"):
        moba_hf.register(block_size=BLOCK, top_k=TOP_K)


@pytest.mark.parametrize("block_size, top_k, message", [
    (0, 2, "block_size must be at least 1, got 0"),
    (8, -1, "top_k must be at least 1, got -1"),
    (8.0, 2, "block_size must be an int"),
])
def test_bad_settings_are_refused_by_name(transformers, block_size, top_k,
                                          message):
    with pytest.raises((ValueError, TypeError), match=message):
        moba_hf.register(block_size=block_size, top_k=top_k)


@pytest.mark.parametrize("causal", [True, False])
def test_prefill_is_moba_with_grouped_query_heads(causal):
    attention = moba_hf.attention_function(BLOCK, TOP_K)
    q, k, v = inputs(1, batch=2, seq=37)
    with torch.no_grad():
        out, weights = attention(Layer(is_causal=causal), q, k, v, None,
                                 scaling=16 ** -0.5)
    assert weights is None
    assert out.shape == (2, 37, 4, 16)  # [batch, seq, heads, head_dim]
    want, near = reference(as_varlen(q), as_varlen(k), as_varlen(v),
                           [0, 37, 74], causal=causal)
    close(out.reshape(74, 4, 16), want, near)


def test_the_is_causal_keyword_overrides_the_module():
    attention = moba_hf.attention_function(BLOCK, TOP_K)
    q, k, v = inputs(2, batch=1, seq=24)
    out, _ = attention(Layer(is_causal=True), q, k, v, None,
                       is_causal=False)
    want, near = reference(as_varlen(q), as_varlen(k), as_varlen(v),
                           [0, 24], causal=False)
    close(out.reshape(24, 4, 16), want, near)


def test_a_scale_other_than_the_default_is_passed():
    attention = moba_hf.attention_function(BLOCK, TOP_K)
    q, k, v = inputs(3, batch=1, seq=30)
    with torch.no_grad():
        out, _ = attention(Layer(), q, k, v, None, scaling=0.05)
    want, near = reference(as_varlen(q), as_varlen(k), as_varlen(v),
                           [0, 30], scale=0.05)
    close(out.reshape(30, 4, 16), want, near)


def test_top_k_covering_every_block_is_dense_causal_attention():
    attention = moba_hf.attention_function(BLOCK, 64)
    q, k, v = inputs(4, batch=2, seq=40)
    out, _ = attention(Layer(), q, k, v, None)
    dense = moba_hf._dense(torch, q, k, v, None, None, True)
    close(out, dense.double().numpy())


def test_a_padding_mask_attends_each_rows_valid_tokens_alone():
    attention = moba_hf.attention_function(BLOCK, TOP_K)
    q, k, v = inputs(5, batch=3, seq=20)
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[0, :6] = 0    # left padding
    mask[1, 13:] = 0   # right padding
    out, _ = attention(Layer(), q, k, v, mask)
    out = out.numpy()
    for row, (first, last) in enumerate([(6, 20), (0, 13), (0, 20)]):
        take = lambda x: as_varlen(x[row:row + 1, :, first:last])
        want, near = reference(take(q), take(k), take(v),
                               [0, last - first])
        close(out[row, first:last], want, near)
        assert not out[row, :first].any() and not out[row, last:].any()


def test_packed_sequences_come_as_flash_attention_keywords():
    attention = moba_hf.attention_function(BLOCK, TOP_K)
    q, k, v = inputs(6, batch=1, seq=45)
    cu = torch.tensor([0, 17, 45], dtype=torch.int32)
    out, _ = attention(Layer(), q, k, v, None, cu_seq_lens_q=cu,
                       cu_seq_lens_k=cu.clone(), max_length_q=28)
    want, near = reference(as_varlen(q), as_varlen(k), as_varlen(v),
                           [0, 17, 45])
    close(out.reshape(45, 4, 16), want, near)
    with pytest.raises(ValueError, match="cu_seq_lens_k differs"):
        attention(Layer(), q, k, v, None, cu_seq_lens_q=cu,
                  cu_seq_lens_k=torch.tensor([0, 20, 45]))


def test_decode_against_a_cache_is_dense_with_one_warning(monkeypatch):
    monkeypatch.setattr(moba_hf, "_decode_warned", set())
    attention = moba_hf.attention_function(BLOCK, TOP_K, "moba-decode")
    q, k, v = inputs(7, batch=2, seq=3, kv_seq=30)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, :4] = False
    with pytest.warns(RuntimeWarning, match="run as dense attention"):
        out, _ = attention(Layer(), q, k, v, mask)
    # Row by row: query i (position 27 + i) over keys 0..27 + i, the
    # padded keys left out; the key/value heads shared by two query heads.
    q64, k64, v64 = (x.double() for x in (q, k, v))
    for b in range(2):
        for i in range(3):
            for h in range(4):
                keys = [j for j in range(28 + i) if mask[b, j]]
                s = (k64[b, h // 2, keys] @ q64[b, h, i]) * 16 ** -0.5
                want = torch.softmax(s, 0) @ v64[b, h // 2, keys]
                np.testing.assert_allclose(out[b, i, h].double(), want,
                                           rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention(Layer(), q, k, v, None)  # once per process and name


@pytest.mark.parametrize("call, message", [
    (dict(dropout=0.1), "has no attention dropout, got dropout=0.1"),
    (dict(sliding_window=4096), "sliding_window=4096, which MoBA does not"),
    (dict(module=Layer(softcap=30.0)), "softcap=30.0"),
    (dict(mask=torch.zeros(1, 1, 12, 12)), "takes a 2-D padding mask"),
])
def test_what_moba_does_not_have_is_refused_by_name(call, message):
    attention = moba_hf.attention_function(BLOCK, TOP_K)
    q, k, v = inputs(8, batch=1, seq=12)
    module = call.pop("module", Layer())
    mask = call.pop("mask", None)
    with pytest.raises(ValueError, match=message):
        attention(module, q, k, v, mask, **call)


def test_the_mask_function_passes_padding_only():
    assert moba_hf.padding_mask(attention_mask=None, kv_length=8) is None
    assert moba_hf.padding_mask(attention_mask=torch.ones(2, 8, dtype=bool),
                                kv_length=8) is None
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 2] = False
    got = moba_hf.padding_mask(batch_size=2, q_length=1, kv_length=8,
                               attention_mask=mask)
    assert torch.equal(got, mask[:, -8:])
    assert moba_hf.padding_mask(attention_mask=mask, kv_length=7) is None


def test_gradients_reach_query_key_and_value():
    attention = moba_hf.attention_function(BLOCK, 64)
    q, k, v = (x.requires_grad_() for x in inputs(9, batch=2, seq=16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :5] = 0
    out, _ = attention(Layer(), q, k, v, mask)
    out.sum().backward()
    # Against dense attention, which top_k covering every block is.
    q2, k2, v2 = (x.detach().clone().requires_grad_() for x in (q, k, v))
    dense = moba_hf._dense(torch, q2, k2, v2, None, None, True)
    # Row 0 has no padding: its gradients are dense attention's. Row 1's
    # exist, are finite, and its padded queries get none.
    dense[:1].sum().backward()
    for got, want in ((q.grad, q2.grad), (k.grad, k2.grad),
                      (v.grad, v2.grad)):
        np.testing.assert_allclose(got[:1], want[:1], rtol=1e-4, atol=1e-5)
        assert torch.isfinite(got).all()
    assert not q.grad[1, :, :5].any()
