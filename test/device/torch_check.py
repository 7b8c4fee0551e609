"""moba for PyTorch users on a CUDA machine: CUDA graphs and Hugging Face
transformers (issue 22); CI has no GPU and never runs this
(python/tests/test_torch_check_script.py compiles it and runs what needs
no GPU).

  torch_check.py graphs   CUDA-graph capture and replay of a forward:
                          Kernel.__call__, the batched layout,
                          moba.moba_attn_varlen, torch.ops.moba.
                          attention_varlen (torch >= 2.4) and MobaAttention
                          under no_grad. Each is warmed up, captured with
                          torch.cuda.graph, replayed, and must give the
                          eager call's bits, then the eager bits of new
                          inputs copied into the captured ones. The eager
                          steady state runs under
                          torch.cuda.set_sync_debug_mode("error") (no torch
                          synchronization: the offsets' host copy is kept),
                          and a capture that succeeds proves the call made
                          no synchronizing CUDA call either. Then the
                          errors a capture must give instead of a broken
                          graph: offsets never seen, a kernel never run on
                          the device, a KVCache call. Last, a paged decode
                          step of the functional forms (append, the lengths
                          advanced on the device, decode) captured once
                          and replayed step after step against the same
                          steps run eagerly on a copy of the cache.
  torch_check.py hf       moba.integrations.transformers on a small Llama
                          built from its config (2 layers, hidden 256, 4
                          heads, 2 KV heads; random weights, no download):
                          with top_k covering every block the logits equal
                          SDPA's (f32 and bf16, unpadded and left-padded
                          batches), greedy generate() gives SDPA's tokens
                          (decode runs dense, with one warning); with a
                          sparse configuration on 1024 tokens the first
                          layer's attention equals the float64 MoBA
                          reference (gpu_check.reference) and a training
                          step's forward and backward give finite
                          gradients.

Exit status 1 when a check fails.
"""
import argparse
import os
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODES = ("graphs", "hf")


class Checks:
    """Named checks that print as they go and collect their failures."""

    def __init__(self):
        self.failures = []

    def expect(self, name, condition, detail=""):
        print(f"{'ok  ' if condition else 'FAIL'} {name} {detail}",
              flush=True)
        if not condition:
            self.failures.append(name)
        return condition

    def runs(self, name, call):
        """Runs `call`; an exception fails `name`. Returns its result or
        None."""
        try:
            return call()
        except Exception as e:  # reported, never hidden
            self.expect(name, False, f"raised {type(e).__name__}: {e}")
            return None

    def raises(self, name, call, kind, text):
        """`call` must raise `kind` with `text` in its message."""
        try:
            call()
        except kind as e:
            return self.expect(name, text in str(e),
                               f"({type(e).__name__}: {str(e)[:160]})")
        except Exception as e:
            return self.expect(name, False, f"raised {type(e).__name__}: "
                               f"{str(e)[:160]}")
        return self.expect(name, False, "(nothing raised)")


def same_bits(a, b):
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same_bits(x, y)
                                        for x, y in zip(a, b))
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def clone(result):
    if isinstance(result, (tuple, list)):
        return type(result)(clone(x) for x in result)
    return result.clone()


def capture(function):
    """(graph, its static result): `function` warmed up on a side stream
    (torch.cuda.graph's recipe), then captured."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            function()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = function()
    return graph, result


def no_sync(function):
    """Runs `function` with torch's synchronization check raising."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return function()
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def graph_case(checks, name, function, inputs, make_inputs):
    """Checks one captured forward: replay == eager bits, on the captured
    inputs and on new ones copied into them."""
    eager = checks.runs(f"{name}: eager", lambda: clone(function()))
    if eager is None:
        return
    checks.runs(f"{name}: eager steady state without synchronization",
                lambda: no_sync(function))
    captured = checks.runs(f"{name}: captured", lambda: capture(function))
    if captured is None:
        return
    graph, static = captured
    for i in range(3):
        graph.replay()
    torch.cuda.synchronize()
    checks.expect(f"{name}: replay gives the eager bits",
                  same_bits(static, eager))
    fresh = make_inputs(1)
    for target, source in zip(inputs, fresh):
        target.copy_(source)
    want = clone(function())
    graph.replay()
    torch.cuda.synchronize()
    checks.expect(f"{name}: replay on new inputs gives their eager bits",
                  same_bits(static, want))


def graphs_checks():
    import moba
    from moba import device_offsets
    checks = Checks()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, "
          f"moba {moba.version()}", flush=True)
    hq, hkv, d, block, top_k = 8, 2, 128, 128, 3
    seqlens = [300, 1, 700, 0, 1024]
    cu = torch.tensor(np.concatenate([[0], np.cumsum(seqlens)]),
                      dtype=torch.int32, device="cuda")
    tokens = int(sum(seqlens))

    def make_inputs(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        return tuple(torch.randn(tokens, h, d, generator=g, device="cuda",
                                 dtype=torch.bfloat16)
                     for h in (hq, hkv, hkv))

    q, k, v = make_inputs(0)
    kernel = moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                          block_size=block, top_k=top_k, dtype="bf16")
    max_seqlen = max(seqlens)
    graph_case(checks, "Kernel", lambda: kernel(q, k, v, cu,
                                                max_seqlen=max_seqlen,
                                                return_lse=True),
               (q, k, v), make_inputs)
    # int64 offsets: converted on the device each call, inside the graph.
    cu64 = cu.long()
    graph_case(checks, "Kernel, int64 cu_seqlens",
               lambda: kernel(q, k, v, cu64), (q, k, v), make_inputs)
    graph_case(checks, "moba_attn_varlen",
               lambda: moba.moba_attn_varlen(q, k, v, cu, max_seqlen, block,
                                             top_k, return_lse=True),
               (q, k, v), make_inputs)
    if hasattr(torch.ops.moba, "attention_varlen"):
        graph_case(checks, "torch.ops.moba.attention_varlen",
                   lambda: torch.ops.moba.attention_varlen(
                       q, k, v, cu, max_seqlen, block, top_k, True, None),
                   (q, k, v), make_inputs)
    else:
        print(f"     (no torch ops: {moba.torch_ops.UNAVAILABLE_REASON})")

    def autograd_function():
        with torch.no_grad():
            return moba.MobaAttention.apply(q, k, v, cu, max_seqlen, block,
                                            top_k)
    graph_case(checks, "MobaAttention (no_grad)", autograd_function,
               (q, k, v), make_inputs)

    batched = moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                           block_size=block, top_k=top_k, dtype="bf16",
                           layout="batched")

    def make_batched(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        return tuple(torch.randn(2, 512, h, d, generator=g, device="cuda",
                                 dtype=torch.bfloat16)
                     for h in (hq, hkv, hkv))
    bq, bk, bv = make_batched(2)
    graph_case(checks, "batched layout", lambda: batched(bq, bk, bv),
               (bq, bk, bv), make_batched)

    # What a capture must refuse, saying why, rather than break.
    def capture_raises(name, function, kind, text):
        def attempt():
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                function()
        checks.raises(name, attempt, kind, text)
        torch.cuda.synchronize()

    fresh_cu = cu.clone()
    capture_raises("a capture of offsets no call has seen raises",
                   lambda: kernel(q, k, v, fresh_cu),
                   device_offsets.OffsetsNotKnownError,
                   "Call moba once before the capture")
    cold = moba.compile(head_dim=d, num_heads=hq, num_kv_heads=hkv,
                        block_size=block, top_k=top_k + 1, dtype="bf16")
    capture_raises("a capture of a kernel never run on the device raises",
                   lambda: cold(q, k, v, cu), RuntimeError,
                   "Call it once before the capture")
    checks.runs("the kernels run after the refused captures",
                lambda: (kernel(q, k, v, fresh_cu), cold(q, k, v, cu),
                         torch.cuda.synchronize()))
    cache = moba.KVCache(16, 16, hkv, d, "bf16", batch=1, num_heads=hq,
                         block_size=block, top_k=top_k, device="cuda")
    capture_raises("a capture of KVCache.append raises",
                   lambda: cache.append(k[:1], v[:1]), RuntimeError,
                   "Capture the functional forms instead")

    paged_graph_checks(checks, moba)
    return checks.failures


def paged_graph_checks(checks, moba):
    """A decode step of the functional forms, captured once and replayed
    step after step, against the same steps run eagerly on a copy."""
    hq, hkv, d, page, block, top_k = 8, 2, 128, 16, 64, 2
    batch, steps, prompt = 3, 6, [100, 37, 64]
    pages_each = -(-(max(prompt) + steps) // page)
    table = np.arange(batch * pages_each, dtype=np.int32).reshape(
        batch, pages_each)
    cache = moba.KVCache(batch * pages_each, page, hkv, d, "bf16",
                         batch=batch, num_heads=hq, block_size=block,
                         top_k=top_k, block_table=table, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(3)
    rand = lambda *shape: torch.randn(*shape, generator=g, device="cuda",
                                      dtype=torch.bfloat16)
    cu = torch.tensor(np.concatenate([[0], np.cumsum(prompt)]),
                      dtype=torch.int32)
    n = int(cu[-1])
    checks.runs("paged: prefill",
                lambda: cache.prefill(rand(n, hq, d), rand(n, hkv, d),
                                      rand(n, hkv, d), cu))
    state = dict(k_cache=cache.k_cache, v_cache=cache.v_cache,
                 block_key_sums=cache.block_key_sums,
                 block_table=torch.from_numpy(table).cuda(),
                 cache_lens=torch.from_numpy(cache.lengths.copy()).cuda())
    copy = {name: x.clone() for name, x in state.items()}
    one = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
    inputs = [tuple(rand(batch, h, d) for h in (hkv, hkv, hq))
              for _ in range(steps + 1)]
    static_k, static_v, static_q = (x.clone() for x in inputs[0])

    def step(s, k1, v1, q1):
        lens = moba.paged_kv_append(k1, v1, one, s["k_cache"], s["v_cache"],
                                    s["block_key_sums"], s["block_table"],
                                    s["cache_lens"], block_size=block)
        s["cache_lens"].copy_(lens)
        return moba.paged_decode(q1, one, s["k_cache"], s["v_cache"],
                                 s["block_key_sums"], s["block_table"],
                                 s["cache_lens"], block_size=block,
                                 top_k=top_k, return_lse=True)

    # Eager on the copy: the reference, and the warm-up (it loads both
    # kernels' modules, which the capture may not).
    eager = checks.runs("paged: eager steps on a copy of the cache",
                        lambda: [clone(step(copy, *inputs[i]))
                                 for i in range(steps)])
    if eager is None:
        return
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            static = step(state, static_k, static_v, static_q)
    except Exception as e:
        checks.expect("paged: a decode step is captured", False,
                      f"raised {type(e).__name__}: {e}")
        return
    checks.expect("paged: a decode step is captured", True)
    same = []
    for i in range(steps):
        for target, source in zip((static_k, static_v, static_q),
                                  inputs[i]):
            target.copy_(source)
        graph.replay()
        torch.cuda.synchronize()
        same.append(same_bits(static, eager[i]))
    checks.expect("paged: each replayed step gives the eager step's bits",
                  all(same), f"({same})")
    checks.expect("paged: the replays advanced the lengths on the device",
                  torch.equal(state["cache_lens"], copy["cache_lens"]),
                  f"({state['cache_lens'].tolist()})")


def tiny_llama(transformers, dtype, attention):
    config = transformers.LlamaConfig(
        vocab_size=512, hidden_size=256, intermediate_size=512,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, attention_dropout=0.0)
    torch.manual_seed(0)  # the same weights for every attention
    model = transformers.LlamaForCausalLM(config)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(attention)
    else:  # transformers < 4.56
        model.config._attn_implementation = attention
    return model.to(device="cuda", dtype=dtype).eval()


def hf_checks():
    import moba
    import moba.integrations.transformers as moba_hf
    checks = Checks()
    try:
        import transformers
    except ImportError as e:
        checks.expect("transformers is installed", False, f"({e})")
        return checks.failures
    print(f"torch {torch.__version__}, transformers "
          f"{transformers.__version__}, moba {moba.version()}", flush=True)
    # Every block selected: MoBA is dense causal attention.
    moba_hf.register("moba-dense", block_size=64, top_k=64)
    g = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(0, 512, (2, 300), generator=g, device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :37] = 0  # left padding
    for dtype, tolerance in ((torch.float32, 2e-4), (torch.bfloat16, 3e-2)):
        models = {name: checks.runs(f"hf {dtype}: build with {name}",
                                    lambda: tiny_llama(transformers, dtype,
                                                       name))
                  for name in ("sdpa", "moba-dense")}
        if None in models.values():
            continue
        for label, attention_mask in (("unpadded", None),
                                      ("left-padded", mask)):
            with torch.no_grad():
                logits = {name: model(ids, attention_mask=attention_mask)
                          .logits.float()
                          for name, model in models.items()}
            valid = (torch.ones_like(ids) if attention_mask is None
                     else attention_mask).bool()
            want, got = logits["sdpa"][valid], logits["moba-dense"][valid]
            error = ((got - want).norm() / want.norm()).item()
            checks.expect(f"hf {dtype} {label}: logits equal SDPA's",
                          error <= tolerance,
                          f"(relative error {error:.2e}, tolerance "
                          f"{tolerance:.0e})")
        if dtype == torch.float32:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                tokens = {name: model.generate(
                    ids[:1], max_new_tokens=8, do_sample=False,
                    attention_mask=torch.ones_like(ids[:1]))
                    for name, model in models.items()}
            checks.expect("hf generate: greedy tokens equal SDPA's",
                          torch.equal(tokens["sdpa"], tokens["moba-dense"]),
                          f"({tokens['moba-dense'][0, -8:].tolist()} vs "
                          f"{tokens['sdpa'][0, -8:].tolist()})")
            said = [str(w.message) for w in caught
                    if "run as dense attention" in str(w.message)]
            checks.expect("hf generate: decode warns once that it is dense",
                          len(said) == 1, f"({len(said)} warnings)")
        del models

    sparse_checks(checks, moba_hf, transformers)
    return checks.failures


def sparse_checks(checks, moba_hf, transformers):
    """A sparse configuration on 1024 tokens: layer 0's attention against
    the float64 reference, and a training step."""
    from gpu_check import _relative, reference
    block, top_k = 64, 3
    function = moba_hf.attention_function(block, top_k, "moba-sparse")
    seen = {}

    def spy(module, query, key, value, attention_mask, **kwargs):
        out, weights = function(module, query, key, value, attention_mask,
                                **kwargs)
        if getattr(module, "layer_idx", 0) == 0 and not seen:
            seen.update(query=query.detach(), key=key.detach(),
                        value=value.detach(), out=out.detach(),
                        scaling=kwargs.get("scaling"))
        return out, weights

    transformers.AttentionInterface.register("moba-sparse", spy)
    from transformers.masking_utils import AttentionMaskInterface
    AttentionMaskInterface.register("moba-sparse", moba_hf.padding_mask)
    model = checks.runs("hf sparse: build",
                        lambda: tiny_llama(transformers, torch.bfloat16,
                                           "moba-sparse"))
    if model is None:
        return
    model.train()
    g = torch.Generator(device="cuda").manual_seed(2)
    ids = torch.randint(0, 512, (2, 1024), generator=g, device="cuda")
    loss = checks.runs("hf sparse: forward",
                       lambda: model(ids, labels=ids).loss)
    if loss is None:
        return
    checks.expect("hf sparse: the loss is finite", bool(torch.isfinite(loss)),
                  f"({loss.item():.4f})")
    checks.runs("hf sparse: backward", loss.backward)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    checks.expect("hf sparse: every parameter has a finite gradient",
                  all(x is not None and bool(torch.isfinite(x).all())
                      for x in grads))
    q_proj = model.model.layers[0].self_attn.q_proj.weight.grad
    checks.expect("hf sparse: the attention's projections get a gradient",
                  q_proj is not None and bool(q_proj.abs().sum() > 0))
    # Layer 0's attention against the float64 reference.
    b, h, s, d = seen["query"].shape
    flat = lambda x: x.transpose(1, 2).reshape(b * s, x.shape[1], d)
    cu = torch.arange(b + 1, dtype=torch.int32) * s
    ref_out, _, near, _ = reference(flat(seen["query"]), flat(seen["key"]),
                                    flat(seen["value"]), cu, block, top_k,
                                    True, scale=seen["scaling"])
    got = seen["out"].reshape(b * s, h, d).double().cpu().numpy()
    keep = ~near.cpu().numpy()
    error = _relative(got, ref_out.cpu().numpy(), keep)
    checks.expect("hf sparse: layer 0's attention equals the float64 MoBA "
                  "reference", error <= 1e-2,
                  f"(relative error {error:.2e} on {int(keep.sum())} rows, "
                  f"{int((~keep).sum())} near-tied skipped)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=MODES)
    a = p.parse_args()
    if not torch.cuda.is_available():
        print(f"{a.mode}: needs a CUDA GPU (torch {torch.__version__} sees "
              "none)")
        sys.exit(1)
    start = time.time()
    failures = graphs_checks() if a.mode == "graphs" else hf_checks()
    print(f"{a.mode}: {'all passed' if not failures else failures} in "
          f"{time.time() - start:.0f} s")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
