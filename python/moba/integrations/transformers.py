"""MoBA as a Hugging Face transformers attention implementation.

    import moba.integrations.transformers as moba_hf
    moba_hf.register(block_size=512, top_k=3)              # name "moba"
    model = AutoModelForCausalLM.from_pretrained(path,
                                                 attn_implementation="moba")
    # or, on a model already loaded:
    model.set_attn_implementation("moba")

register() adds the attention function to transformers' AttentionInterface
(transformers >= 4.48, whose models call
ALL_ATTENTION_FUNCTIONS[config._attn_implementation]) and a mask function
to its AttentionMaskInterface under the same name. The mask function is
needed: transformers gives an implementation it has no mask function for
no mask at all (masking_utils._preprocess_mask_arguments), which would
silently drop padding. Ours passes the 2-D padding mask through (None when
nothing is padded), as flash-attention's does, since MoBA runs on
unpadded sequences rather than on a dense [q, kv] mask.

What the attention function does, per call (query [batch, heads, q_len,
head_dim], key and value [batch, kv_heads, kv_len, head_dim]; it returns
the output [batch, q_len, heads, head_dim] and no weights, as
transformers' sdpa_attention_forward does):

  prefill (q_len == kv_len): moba.moba_attn_varlen on the batch flattened
    to sequences. Grouped-query attention (fewer key/value heads) runs as
    it is (no repeat). Causal or not per module.is_causal (or the is_causal
    keyword); the scale is the module's `scaling`. No padding: one sequence
    a row, whose offsets moba makes on the device and knows on the host (no
    read back: such a forward can be captured into a CUDA graph once one
    call of its shape has run). A 2-D padding mask: the valid tokens of
    each row are one sequence (left or right padding), gathered, attended,
    and scattered back, the padded positions zero; finding them reads the
    mask on the host, so such a forward cannot be captured. Packed rows
    come as transformers' flash-attention keywords cu_seq_lens_q and
    cu_seq_lens_k (equal; batch 1), e.g. from
    DataCollatorWithFlattening(return_flash_attn_kwargs=True); rows packed
    by position_ids alone are not detected and attend as one sequence.
  decode and chunked prefill against a cache (q_len < kv_len): dense
    attention (torch's scaled_dot_product_attention, the queries at the
    end of the keys, with the padding mask), with a warning once per
    process. This is what MoBA's own reference (register_moba) does: its
    gate is defined for a whole sequence's prefill, and moba's paged
    decode (moba.KVCache) keeps a cache of its own, which transformers'
    Cache classes are not.

Refused with ValueError naming the argument: dropout > 0 (moba has no
attention dropout: set config.attention_dropout = 0), a sliding window or
logit softcapping (MoBA has neither), and masks other than 2-D (a custom
4-D mask cannot be expressed as sequences).
"""
import warnings

import numpy as np

from .. import _capi, device_offsets

DEFAULT_NAME = "moba"

_decode_warned = set()
# (batch, seq, device) -> the int32 device offsets of `batch` rows of `seq`
# tokens, kept: their host copy is known (device_offsets.remember).
_uniform = {}


def _positive(name, value):
    value = _capi.int64(name, value)
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def _scale(scaling, head_dim):
    """The softmax scale to pass to moba: None (moba's default, float32
    1/sqrt(head_dim)) when `scaling` rounds to it, so that the usual
    configuration shares one compiled kernel and runs where only the
    default scale does (MobaAttention on torch < 2.4)."""
    if scaling is None:
        return None
    scaling = float(scaling)
    if np.float32(scaling) == np.float32(1.0 / np.sqrt(head_dim)):
        return None
    return scaling


def _uniform_offsets(torch, batch, seq, device):
    """cu_seqlens of `batch` sequences of `seq` tokens on `device`, made
    there (no copy from the host) once per shape and kept."""
    key = (batch, seq, str(device))
    cu = _uniform.get(key)
    if cu is not None:
        return cu
    if device.type == "cuda" and device_offsets.stream_is_capturing(device):
        raise RuntimeError(
            f"the first moba attention call of batch {batch} and "
            f"{seq} tokens on {device} is being captured into a CUDA graph: "
            "it makes the sequence offsets, which must run before the "
            "capture. Run the model once with this shape before capturing "
            "(the warm-up torch.cuda.graph needs anyway)")
    cu = torch.arange(batch + 1, dtype=torch.int32, device=device) * seq
    device_offsets.remember(cu, np.arange(batch + 1, dtype=np.int64) * seq)
    _uniform[key] = cu
    return cu


def _dense(torch, query, key, value, mask, scaling, causal):
    """Attention of query [b, h, q, d] over key, value [b, hkv, kv, d]
    (q <= kv: the queries are the last q positions), with the 2-D padding
    `mask` [b, kv] (None: none). Returns [b, q, h, d]."""
    batch, heads, q_len, head_dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    if kv_heads != heads:
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    allowed = None
    if causal:
        rows = torch.arange(q_len, device=query.device)[:, None] + (
            kv_len - q_len)
        allowed = torch.arange(kv_len, device=query.device)[None, :] <= rows
        allowed = allowed[None, None]
    if mask is not None:
        padding = mask[:, None, None, -kv_len:].bool()
        allowed = padding if allowed is None else allowed & padding
    if allowed is not None:
        # A padded query row that may attend nothing attends everything:
        # its output is ignored, and NaN must not leak from it.
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    scale = scaling if scaling is not None else head_dim ** -0.5
    sdpa = getattr(torch.nn.functional, "scaled_dot_product_attention", None)
    if sdpa is not None:
        out = sdpa(query, key, value, attn_mask=allowed, scale=scale)
    else:  # torch < 2.0
        scores = torch.matmul(query.float(), key.float().transpose(-1, -2))
        scores = scores * scale
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        out = torch.matmul(scores.softmax(dim=-1),
                           value.float()).to(query.dtype)
    return out.transpose(1, 2).contiguous()


def _warn_decode_once(name):
    if name in _decode_warned:
        return
    _decode_warned.add(name)
    warnings.warn(
        f"attention {name!r}: queries against a cache (decode, or a prefill "
        "after cached tokens) run as dense attention, as MoBA's reference "
        "does: MoBA's gate covers a whole sequence's prefill. moba.KVCache "
        "is moba's paged decode.", RuntimeWarning, stacklevel=3)


def attention_function(block_size, top_k, name=DEFAULT_NAME):
    """The transformers attention function of MoBA with blocks of
    `block_size` tokens and `top_k` blocks a query (the module docstring
    says what it does)."""
    block_size = _positive("block_size", block_size)
    top_k = _positive("top_k", top_k)

    def moba_attention(module, query, key, value, attention_mask,
                       scaling=None, dropout=0.0, **kwargs):
        import torch
        import moba
        if dropout:
            raise ValueError(
                f"attention {name!r} has no attention dropout, got dropout="
                f"{dropout}: set the model's config.attention_dropout = 0 "
                "(or evaluate with model.eval())")
        for keyword in ("sliding_window", "softcap"):
            setting = kwargs.get(keyword)
            if setting is None:
                setting = getattr(module, keyword, None)
            if setting is not None:
                raise ValueError(
                    f"attention {name!r}: the model asks for {keyword}="
                    f"{setting}, which MoBA does not have")
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(
                f"attention {name!r} takes a 2-D padding mask [batch, "
                f"kv_len], got one of shape {tuple(attention_mask.shape)}: "
                "a custom 4-D mask cannot be expressed as sequences")
        if query.dim() != 4 or key.dim() != 4 or value.shape != key.shape:
            raise ValueError(
                f"attention {name!r}: query must be [batch, heads, seq, "
                f"head_dim] and key, value alike, got {tuple(query.shape)}, "
                f"{tuple(key.shape)}, {tuple(value.shape)}")
        causal = kwargs.get("is_causal")
        if causal is None:
            causal = getattr(module, "is_causal", True)
        causal = bool(causal)
        batch, heads, q_len, head_dim = query.shape
        kv_heads, kv_len = key.shape[1], key.shape[2]
        if q_len != kv_len:
            _warn_decode_once(name)
            return _dense(torch, query, key, value, attention_mask, scaling,
                          causal), None
        scale = _scale(scaling, head_dim)
        q = query.transpose(1, 2).reshape(batch * q_len, heads, head_dim)
        k = key.transpose(1, 2).reshape(batch * q_len, kv_heads, head_dim)
        v = value.transpose(1, 2).reshape(batch * q_len, kv_heads, head_dim)

        def attend(q, k, v, cu, max_seqlen):
            return moba.moba_attn_varlen(
                q.contiguous(), k.contiguous(), v.contiguous(), cu,
                max_seqlen, block_size, top_k, causal=causal,
                softmax_scale=scale)

        packed = kwargs.get("cu_seq_lens_q")
        if packed is not None:
            other = kwargs.get("cu_seq_lens_k")
            if batch != 1 or attention_mask is not None:
                raise ValueError(
                    f"attention {name!r}: cu_seq_lens_q (packed sequences) "
                    f"needs batch 1 and no padding mask, got batch {batch}"
                    + (" and a mask" if attention_mask is not None else ""))
            if other is not None and other is not packed and not \
                    torch.equal(other.to(packed.device), packed):
                raise ValueError(
                    f"attention {name!r}: cu_seq_lens_k differs from "
                    "cu_seq_lens_q; MoBA attends each packed sequence to "
                    "itself")
            cu = packed.to(device=q.device, dtype=torch.int32)
            out = attend(q, k, v, cu, kwargs.get("max_length_q"))
            return out.view(batch, q_len, heads, head_dim), None
        if attention_mask is None:
            cu = _uniform_offsets(torch, batch, q_len, q.device)
            out = attend(q, k, v, cu, q_len)
            return out.view(batch, q_len, heads, head_dim), None
        # Padding: each row's valid tokens are one sequence.
        if q.device.type == "cuda" and \
                device_offsets.stream_is_capturing(q.device):
            raise RuntimeError(
                f"attention {name!r} with a padding mask is being captured "
                "into a CUDA graph: finding the padded tokens reads the mask "
                "on the host, which capture does not allow. Capture "
                "unpadded batches (attention_mask=None)")
        valid = attention_mask[:, -kv_len:].to(q.device).bool()
        lengths = valid.sum(dim=-1).cpu().numpy().astype(np.int64)
        host_cu = np.concatenate([[0], np.cumsum(lengths)])
        index = valid.reshape(-1).nonzero().reshape(-1)
        cu = torch.from_numpy(host_cu.astype(np.int32)).to(q.device)
        device_offsets.remember(cu, host_cu)
        got = attend(q.index_select(0, index), k.index_select(0, index),
                     v.index_select(0, index), cu,
                     int(lengths.max()) if lengths.size else 0)
        out = q.new_zeros(q.shape).index_copy(0, index, got)
        return out.view(batch, q_len, heads, head_dim), None

    moba_attention.block_size, moba_attention.top_k = block_size, top_k
    return moba_attention


def padding_mask(batch_size=None, q_length=None, kv_length=None,
                 q_offset=0, kv_offset=0, mask_function=None,
                 attention_mask=None, **kwargs):
    """transformers' mask function for MoBA (AttentionMaskInterface): the
    2-D padding mask, the last kv_length columns, or None when no token is
    padded (telling that reads the mask on the host, which is skipped
    during CUDA-graph capture: the attention function then refuses the
    padded path itself)."""
    if attention_mask is None:
        return None
    attention_mask = attention_mask[:, -kv_length:] if kv_length else \
        attention_mask
    if attention_mask.device.type == "cuda" and \
            device_offsets.stream_is_capturing(attention_mask.device):
        return attention_mask
    if bool(attention_mask.all()):
        return None
    return attention_mask


def register(name=DEFAULT_NAME, *, block_size, top_k):
    """Registers MoBA (blocks of `block_size` tokens, `top_k` blocks a
    query) with transformers as attention implementation `name`: its
    attention function in AttentionInterface and its mask function in
    AttentionMaskInterface. Returns the attention function. Registering a
    name again replaces it (for models loaded afterwards and for
    set_attn_implementation). Raises ImportError without transformers
    (4.48 or newer)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    function = attention_function(block_size, top_k, name)
    try:
        import transformers
        interface = transformers.AttentionInterface
    except (ImportError, AttributeError) as e:
        raise ImportError(
            "moba.integrations.transformers.register needs Hugging Face "
            "transformers 4.48 or newer (its AttentionInterface): "
            f"{e}") from None
    try:
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError as e:
        raise ImportError(
            "moba.integrations.transformers.register needs transformers' "
            "masking_utils.AttentionMaskInterface (transformers 4.53 or "
            f"newer), without which padding masks would be dropped: {e}"
        ) from None
    interface.register(name, function)
    AttentionMaskInterface.register(name, padding_mask)
    return function


register_moba_attention = register
