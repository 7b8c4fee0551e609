"""What the programs of api_fuzz.py call: building valid arguments and bad
ones, calling moba, and judging what it did.

The judgement, in short: moba either refuses (TypeError, ValueError,
CompileError, RuntimeError, with a message that names the argument) or
returns the right answer without touching its inputs; a value it must
refuse (see the *_problems functions, the rules of docs/python.md and
include/moba-c/Moba.h) it refuses. Anything else raises Finding.
"""
import ctypes
import operator
import re
import traceback

import numpy as np

import moba
from moba import _capi
from reference import moba_reference

__all__ = ["np", "moba", "expect_compile", "check_call", "valid_args",
           "fresh", "readonly", "misaligned", "immutable_bytes",
           "overlapping", "longest", "poke", "expect_call",
           "expect_nonfinite", "expect_wrapper", "capi_compile_and_check",
           "capi_run_check",
           "Finding", "Refused"]

ALLOWED = (TypeError, ValueError, RuntimeError)  # CompileError is a RuntimeError
TOLERANCE = {"f32": (5e-5, 5e-4), "f16": (3e-3, 3e-3), "bf16": (2e-2, 2e-2)}
INT64_MAX = 2**63 - 1


class Finding(Exception):
    """Something moba must not do. `status` names the kind."""

    def __init__(self, status, detail):
        super().__init__(detail)
        self.status = status


class Refused(Exception):
    """moba refused as it should: the case is done."""


def run_source(source):
    """Runs a case's program; {"status", "detail"}."""
    try:
        exec(compile(source, "<case>", "exec"),
             {**globals(), "__name__": "case"})
    except Refused as e:
        return {"status": "refused", "detail": str(e)}
    except Finding as e:
        return {"status": e.status, "detail": str(e)}
    except Exception:
        return {"status": "fuzzer-error", "detail": traceback.format_exc()}
    return {"status": "ok"}


def _names(message, names):
    """Whether `message` names one of `names` (one-letter names as words,
    longer ones anywhere, with - or _)."""
    words = set(re.findall(r"[A-Za-z_]\w*", message))
    flat = message.lower().replace("-", "_")
    return any(n in words if len(n) == 1 else n.lower().replace("-", "_")
               in flat for n in names)


def _judge_exception(e, names, what):
    """A refusal moba may make: an allowed type with a message that names
    one of `names`. Raises Refused, or Finding when it is neither."""
    if not isinstance(e, ALLOWED):
        raise Finding("wrong-exception", f"{what} raised "
                      f"{type(e).__name__}: {e}\n"
                      + "".join(traceback.format_exception(e)[-6:]))
    message = str(e)
    if not message.strip():
        raise Finding("vague-error", f"{what} raised {type(e).__name__} "
                      "with no message")
    if names and not _names(message, names):
        raise Finding("vague-error", f"{what} raised {type(e).__name__}: "
                      f"{message!r}, naming none of {sorted(names)}")
    raise Refused(f"{type(e).__name__}: {message}")


# --- What must be refused ----------------------------------------------------

def _is_int(value):
    """An int as Python's index protocol has it (ints, numpy integers and
    their 0-d arrays), bools excepted: what `operator.index` takes."""
    if isinstance(value, (bool, np.bool_)):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _is_bool(value):
    return isinstance(value, (bool, np.bool_)) or (_is_int(value) and
                                                   value in (0, 1))


DTYPE_NAMES = {"f32", "float32", "float", "f16", "float16", "half", "bf16",
               "bfloat16"}
CHOICES = {
    "layout": {"varlen", "batched"},
    "target": {"cpu", "auto"},
    "stage": {"fused", "tiled", "decomposed"},
    "gpu_attention": {"mma", "simt"},
    "mma_instruction": {None, "mma.sync", "wgmma"},
    "mma_key_value_loads": {None, "cp.async", "tma", "tma-multicast"},
    "mma_merge": {None, "fused", "separate"},
    "mma_schedule": {None, "auto", "in-order", "overlapped"},
}


def compile_problems(kwargs):
    """Why moba.compile must refuse `kwargs`: a list of reasons, [] when it
    must not."""
    out = []
    for name in ("head_dim", "num_heads", "num_kv_heads", "block_size",
                 "top_k"):
        v = kwargs[name]
        if not _is_int(v):
            out.append(f"{name} is not an int")
        elif not 1 <= v <= INT64_MAX:
            out.append(f"{name}={v} is out of range")
        elif name in ("head_dim", "top_k") and v > 1024:
            out.append(f"{name}={v} is past the documented 1024")
    for name in ("tile_q", "tile_k", "mma_warps", "mma_key_chunk",
                 "mma_stages"):
        v = kwargs.get(name)
        if v is None:
            continue
        if not _is_int(v):
            out.append(f"{name} is not an int")
        elif not 1 <= v <= INT64_MAX:
            out.append(f"{name}={v} is out of range")
    if not out and kwargs["num_heads"] % kwargs["num_kv_heads"]:
        out.append("num_heads is not a multiple of num_kv_heads")
    if not _is_bool(kwargs.get("causal", True)):
        out.append(f"causal={kwargs['causal']!r} is not a bool")
    scale = kwargs.get("scale")
    if scale is not None:
        if isinstance(scale, (bool, np.bool_)) or not isinstance(
                scale, (int, float, np.integer, np.floating)):
            out.append("scale is not a number")
        else:
            with np.errstate(all="ignore"):
                s32 = np.float32(scale)
            if not (np.isfinite(scale) and scale > 0 and np.isfinite(s32)
                    and s32 > 0):
                out.append(f"scale={scale!r} is not a positive finite f32")
    dtype = kwargs["dtype"]
    if isinstance(dtype, np.dtype):
        dtype = str(dtype)
    if not isinstance(dtype, str) or dtype.replace("torch.", "") \
            not in DTYPE_NAMES:
        out.append(f"dtype={kwargs['dtype']!r}")
    for name, allowed in CHOICES.items():
        v = kwargs.get(name, "varlen" if name == "layout" else
                       "auto" if name == "target" else
                       "fused" if name == "stage" else
                       "mma" if name == "gpu_attention" else None)
        if not isinstance(v, (str, type(None))) or v not in allowed:
            out.append(f"{name}={v!r}")
    return out


# --- Inputs and the reference ------------------------------------------------

def _np_dtype(config):
    return {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}[
        config["dtype"]]


def _to_kernel(x, config):
    if config["dtype"] == "bf16":
        return moba.to_bf16(x)
    return x.astype(_np_dtype(config))


def _to_float(x, config):
    if config["dtype"] == "bf16" or x.dtype == np.uint16:
        return moba.from_bf16(x).astype(np.float64)
    return np.asarray(x, dtype=np.float64)


def valid_args(kernel, seqlens, seed):
    """Valid arguments of a call to `kernel`: q, k, v, cu_seqlens (None for
    the batched layout) and the keyword arguments at their defaults."""
    c = kernel.config
    rng = np.random.default_rng(seed)
    tokens = sum(seqlens)
    hq, hkv, d = c["num_heads"], c["num_kv_heads"], c["head_dim"]
    if c["layout"] == "batched":
        seqlens = [seqlens[0]] * len(seqlens)
        tokens = sum(seqlens)
        lead = (len(seqlens), seqlens[0])
        cu = None
    else:
        lead = (tokens,)
        cu = np.concatenate([[0], np.cumsum(seqlens)]).astype(np.int32)
    q = _to_kernel(rng.standard_normal(lead + (hq, d)), c)
    k = _to_kernel(rng.standard_normal(lead + (hkv, d)), c)
    v = _to_kernel(rng.standard_normal(lead + (hkv, d)), c)
    return dict(q=q, k=k, v=v, cu_seqlens=cu, max_seqlen=None,
                return_lse=False, out=None, lse=None,
                _shapes=dict(q=q.shape, k=k.shape, v=v.shape),
                _seqlens=list(seqlens))


def fresh(kernel, args, name):
    """A valid new `out` or `lse` array for these arguments."""
    shape = args["_shapes"]["q"]
    if name == "out":
        return np.zeros(shape, _np_dtype(kernel.config))
    return np.zeros(shape[:-1], np.float32)


def readonly(x):
    x = np.array(x)
    x.flags.writeable = False
    return x


def misaligned(x):
    """`x` copied to an address one byte off its alignment."""
    x = np.ascontiguousarray(x)
    raw = np.zeros(x.nbytes + 1, np.uint8)
    view = raw[1:].view(x.dtype).reshape(x.shape)
    view[...] = x
    return view


def immutable_bytes(x):
    return np.frombuffer(bytes(np.ascontiguousarray(x).tobytes()),
                         dtype=x.dtype).reshape(x.shape)


def overlapping(base, like):
    """An array shaped and typed like `like` over `base`'s memory (or
    `like` itself when `base` is too small or of another item size)."""
    if base.dtype.itemsize != like.dtype.itemsize or base.nbytes < like.nbytes:
        return like
    return base.reshape(-1).view(like.dtype)[:like.size].reshape(like.shape)


def longest(args):
    return max(args["_seqlens"])


def poke(x, value, count, seed):
    """Writes `value` at `count` random places of `x`; returns them."""
    rng = np.random.default_rng(seed)
    places = [tuple(int(rng.integers(0, n)) for n in x.shape)
              for _ in range(count)]
    with np.errstate(all="ignore"):
        if x.dtype == np.uint16:
            bits = moba.to_bf16(np.array([value], np.float32))[0]
        else:
            bits = np.array([value]).astype(x.dtype)[0]
    for p in places:
        x[p] = bits
    return places


def _flat(x, c):
    """[tokens, heads, ...] view of a varlen or batched array."""
    if c["layout"] == "batched":
        return x.reshape((-1,) + x.shape[2:])
    return x


def _semantic_cu(args, c, tokens):
    if c["layout"] == "batched":
        s = args["_shapes"]["q"][1]
        return list(range(0, tokens + 1, s)) if s else [0, 0]
    return [int(x) for x in np.asarray(args["cu_seqlens"]).tolist()]


def _reference(c, q, k, v, cu, block_size=None, top_k=None, causal=None,
               scale=None):
    return moba_reference(
        _to_float(q, c), _to_float(k, c), _to_float(v, c), cu,
        c["block_size"] if block_size is None else block_size,
        c["top_k"] if top_k is None else top_k,
        c["causal"] if causal is None else causal,
        c["scale"] if scale is None else scale)


def _compare(c, out, lse, ref_out, ref_lse, near_tie, what):
    atol, rtol = TOLERANCE[c["dtype"]]
    got = _to_float(out, c)
    rows = ~near_tie
    bad = ~np.isclose(got[rows], ref_out[rows], atol=atol, rtol=rtol)
    if bad.any():
        worst = np.nanmax(np.abs(got[rows] - ref_out[rows]))
        raise Finding("wrong-answer", f"{what}: {int(bad.sum())} output "
                      f"elements differ from the reference (worst "
                      f"{worst:.3g})")
    if lse is not None:
        bad = ~np.isclose(lse[rows], ref_lse[rows], atol=3e-4, rtol=3e-5)
        if bad.any():
            raise Finding("wrong-answer", f"{what}: {int(bad.sum())} lse "
                          "values differ from the reference")


# --- Python API --------------------------------------------------------------

def expect_compile(mutated, **kwargs):
    """moba.compile(**kwargs) refused, or a Kernel for valid arguments."""
    problems = compile_problems(kwargs)
    try:
        kernel = moba.compile(**kwargs)
    except Exception as e:  # noqa: BLE001 -- judged here
        names = set(mutated) | {n.replace("_", "-") for n in mutated}
        if "num_heads" in mutated or "num_kv_heads" in mutated:
            names |= {"num_heads", "num_kv_heads"}
        _judge_exception(e, names, "moba.compile")
    if problems:
        raise Finding("accepted-invalid", "moba.compile accepted "
                      + "; ".join(problems))
    kernel._fuzz_semantics = kwargs
    return kernel


def check_call(kernel, seqlens, seed):
    """Runs a kernel moba.compile accepted on valid inputs; its result must
    be the reference's for the arguments as the caller gave them."""
    c = kernel.config
    sem = getattr(kernel, "_fuzz_semantics", c)
    if c["head_dim"] * c["num_heads"] * sum(seqlens) > 2_000_000:
        return
    args = valid_args(kernel, seqlens, seed)
    seqlens = args["_seqlens"]
    try:
        out, lse = kernel(args["q"], args["k"], args["v"],
                          args["cu_seqlens"], return_lse=True)
    except Exception as e:  # noqa: BLE001
        _judge_exception(e, set(), "a call of the kernel")
    tokens = sum(seqlens)
    cu = _semantic_cu(args, c, tokens)
    ref_out, ref_lse, near_tie = _reference(
        c, _flat(args["q"], c), _flat(args["k"], c), _flat(args["v"], c), cu,
        block_size=int(sem["block_size"]), top_k=int(sem["top_k"]),
        causal=bool(sem.get("causal", True)), scale=sem.get("scale"))
    _compare(c, _flat(out, c), _flat(lse, c), ref_out, ref_lse, near_tie,
             "a kernel compiled with " + ", ".join(
                 f"{k}={v!r}" for k, v in sem.items()))


def _array_problems(kernel, args, name):
    c = kernel.config
    x = args[name]
    if not isinstance(x, np.ndarray):
        return [f"{name} is a {type(x).__name__}"]
    out = []
    if x.dtype != np.dtype(_np_dtype(c)):
        out.append(f"{name} has dtype {x.dtype}")
    if x.shape != args["_shapes"][name]:
        out.append(f"{name} has shape {x.shape}")
    if not x.flags["C_CONTIGUOUS"]:
        out.append(f"{name} is not contiguous")
    return out


def _cu_problems(kernel, args):
    c = kernel.config
    cu = args["cu_seqlens"]
    if c["layout"] == "batched":
        return [] if cu is None else ["cu_seqlens given to a batched kernel"]
    if isinstance(cu, (list, tuple)):  # may be taken or refused
        cu = np.array(cu)
    if not isinstance(cu, np.ndarray):
        return [f"cu_seqlens is a {type(cu).__name__}"]
    if cu.ndim != 1 or not np.issubdtype(cu.dtype, np.integer):
        return [f"cu_seqlens has dtype {cu.dtype} shape {cu.shape}"]
    values = [int(x) for x in cu.tolist()]
    tokens = args["_shapes"]["q"][0]
    if len(values) < 2 or values[0] != 0 or values[-1] != tokens or any(
            b < a for a, b in zip(values, values[1:])):
        return [f"cu_seqlens={values} for {tokens} tokens"]
    return []


def _result_problems(kernel, args, name):
    x = args[name]
    if x is None:
        return []
    if not isinstance(x, np.ndarray):
        return [f"{name} is a {type(x).__name__}"]
    want = fresh(kernel, args, name)
    out = []
    if x.dtype != want.dtype or x.shape != want.shape:
        out.append(f"{name} is {x.dtype} {x.shape}")
    if not x.flags["C_CONTIGUOUS"]:
        out.append(f"{name} is not contiguous")
    if not x.flags["WRITEABLE"]:
        out.append(f"{name} is read-only")
    for other in ("q", "k", "v"):
        if isinstance(args[other], np.ndarray) and np.shares_memory(
                x, args[other]):
            out.append(f"{name} overlaps {other}")
    return out


def call_problems(kernel, args):
    out = []
    for name in ("q", "k", "v"):
        out += _array_problems(kernel, args, name)
    out += _cu_problems(kernel, args)
    m = args["max_seqlen"]
    if m is not None and (not _is_int(m) or m < max(args["_seqlens"])):
        out.append(f"max_seqlen={m!r}")
    if not _is_bool(args["return_lse"]):
        out.append(f"return_lse={args['return_lse']!r}")
    out += _result_problems(kernel, args, "out")
    out += _result_problems(kernel, args, "lse")
    if isinstance(args["out"], np.ndarray) and isinstance(
            args["lse"], np.ndarray) and np.shares_memory(args["out"],
                                                          args["lse"]):
        out.append("out overlaps lse")
    return out


RELATED = {"q": {"q", "k", "v", "cu_seqlens"}, "k": {"q", "k", "v", "cu_seqlens"},
           "v": {"q", "k", "v", "cu_seqlens"}, "cu_seqlens": {"cu_seqlens"},
           "max_seqlen": {"max_seqlen"}, "return_lse": {"return_lse"},
           "out": {"out"}, "lse": {"lse"}}


def _snapshot(args):
    return {n: np.array(args[n], copy=True) for n in ("q", "k", "v")
            if isinstance(args[n], np.ndarray)}


def _call(kernel, args):
    return kernel(args["q"], args["k"], args["v"], args["cu_seqlens"],
                  max_seqlen=args["max_seqlen"],
                  return_lse=args["return_lse"], out=args["out"],
                  lse=args["lse"])


def expect_call(kernel, args, target):
    """A call with args[target] replaced: refused, or right."""
    problems = call_problems(kernel, args)
    before = _snapshot(args)
    try:
        result = _call(kernel, args)
    except Exception as e:  # noqa: BLE001
        _judge_exception(e, RELATED[target], f"a call with {target} replaced")
    if problems:
        raise Finding("accepted-invalid", "the kernel accepted "
                      + "; ".join(problems))
    _check_result(kernel, args, result, before)


def _check_result(kernel, args, result, before):
    c = kernel.config
    if args["return_lse"]:
        if not (isinstance(result, tuple) and len(result) == 2):
            raise Finding("wrong-answer", "return_lse=True but the result "
                          f"is a {type(result).__name__}")
        out, lse = result
    else:
        out, lse = result, None
        if isinstance(result, tuple):
            raise Finding("wrong-answer", "return_lse is false but the "
                          "result is a tuple")
    if args["out"] is not None and out is not args["out"]:
        raise Finding("wrong-answer", "the result is not the given out")
    if args["lse"] is not None and lse is not None and lse is not args["lse"]:
        raise Finding("wrong-answer", "the lse returned is not the given lse")
    for name, copy in before.items():
        if not np.array_equal(np.asarray(args[name]), copy, equal_nan=True):
            raise Finding("input-modified", f"the call wrote into {name}")
    if out.shape != args["_shapes"]["q"]:
        raise Finding("wrong-answer", f"out has shape {out.shape}")
    tokens = int(np.prod(args["_shapes"]["q"][:-2]))
    cu = _semantic_cu(args, c, tokens)
    ref_out, ref_lse, near_tie = _reference(
        c, _flat(np.asarray(args["q"]), c), _flat(np.asarray(args["k"]), c),
        _flat(np.asarray(args["v"]), c), cu)
    _compare(c, _flat(out, c), None if lse is None else _flat(lse, c),
             ref_out, ref_lse, near_tie, "the call")


def expect_nonfinite(kernel, args, which, places, value):
    """NaN in an attended element of q, k or v makes the rows that attend
    it NaN (docs/semantics.md); other non-finite values only must not
    crash; small finite ones (denormals) give the reference's answer."""
    c = kernel.config
    before = _snapshot(args)
    args["return_lse"] = True
    try:
        out, lse = _call(kernel, args)
    except Exception as e:  # noqa: BLE001
        _judge_exception(e, set(), "a call with non-finite inputs")
    for name, copy in before.items():
        if not np.array_equal(np.asarray(args[name]), copy, equal_nan=True):
            raise Finding("input-modified", f"the call wrote into {name}")
    got = _to_float(_flat(out, c), c)
    lse = _flat(lse, c)
    tokens = got.shape[0]
    cu = _semantic_cu(args, c, tokens)
    group = c["num_heads"] // c["num_kv_heads"]
    if isinstance(value, float) and np.isnan(value):
        # A NaN in q or k makes the row's scores, so its whole output and
        # its lse, NaN; one in v[s, :, d] only column d of the rows that
        # attend s (as torch's SDPA and flash-attn do).
        batched = c["layout"] == "batched"
        seq = args["_shapes"]["q"][1] if batched else None
        must = set()  # (token, head, column or None for the whole row)
        for p in places:
            t = p[0] * seq + p[1] if batched else p[0]
            h = p[2] if batched else p[1]
            column = p[-1] if which == "v" else None
            if which == "q":
                must.add((t, h, None))
            elif c["causal"]:
                start = max(s for s in cu[:-1] if s <= t) if tokens else 0
                end = min(e for e in cu[1:] if e > t)
                block_end = min(end, start + ((t - start) // c["block_size"]
                                              + 1) * c["block_size"])
                for u in range(t, block_end):
                    for hh in range(h * group, (h + 1) * group):
                        must.add((u, hh, column))
        for t, h, column in sorted(must, key=str):
            if column is None:
                lost = not np.isnan(got[t, h]).all() or not np.isnan(lse[t, h])
                shown = f"out {got[t, h][:4]}..., lse {lse[t, h]}"
            else:
                lost = not np.isnan(got[t, h, column])
                shown = f"out[..., {column}] {got[t, h, column]}"
            if lost:
                raise Finding("nan-lost", f"NaN in {which} at {places}: row "
                              f"(token {t}, head {h}) attends it but {shown}")
        return
    if np.isfinite(value) and abs(value) < 1e4:
        ref_out, ref_lse, near_tie = _reference(
            c, _flat(args["q"], c), _flat(args["k"], c), _flat(args["v"], c),
            cu)
        _compare(c, out=_flat(out, c), lse=lse, ref_out=ref_out,
                 ref_lse=ref_lse, near_tie=near_tie,
                 what=f"{value} in {which}")


def expect_wrapper(batched, name, value, dtype, heads, seqlens, seed):
    """moba_attn_varlen or moba_attn_batched with `name` set to `value`
    (the others valid): refused naming it, or the reference's answer."""
    hq, hkv = heads
    rng = np.random.default_rng(seed)
    config = dict(dtype=dtype)
    if batched:
        seqlens = [seqlens[0]] * len(seqlens)
        lead = (len(seqlens), seqlens[0])
    else:
        lead = (sum(seqlens),)
    q, k, v = (_to_kernel(rng.standard_normal(lead + (h, 8)), config)
               for h in (hq, hkv, hkv))
    cu = np.concatenate([[0], np.cumsum(seqlens)]).astype(np.int32)
    args = dict(moba_chunk_size=8, moba_topk=2, max_seqlen=max(seqlens))
    args[name] = value
    problems = compile_problems(dict(
        head_dim=8, num_heads=hq, num_kv_heads=hkv, dtype=dtype,
        block_size=args["moba_chunk_size"], top_k=args["moba_topk"]))
    m = args["max_seqlen"]
    if not batched and m is not None and (not _is_int(m) or
                                          m < max(seqlens)):
        problems.append(f"max_seqlen={m!r}")
    names = {name, {"moba_chunk_size": "block_size", "moba_topk": "top_k",
                    "max_seqlen": "max_seqlen"}[name]}
    try:
        if batched:
            out = moba.moba_attn_batched(q, k, v, args["moba_chunk_size"],
                                         args["moba_topk"])
        else:
            out = moba.moba_attn_varlen(q, k, v, cu, args["max_seqlen"],
                                        args["moba_chunk_size"],
                                        args["moba_topk"])
    except Exception as e:  # noqa: BLE001
        _judge_exception(e, names, f"moba_attn with {name}={value!r}")
    if problems:
        raise Finding("accepted-invalid", "moba_attn accepted "
                      + "; ".join(problems))
    c = dict(dtype=dtype, block_size=int(args["moba_chunk_size"]),
             top_k=int(args["moba_topk"]), causal=True, scale=None,
             layout="batched" if batched else "varlen")
    ref_out, _, near_tie = _reference(c, _flat(q, c), _flat(k, c),
                                      _flat(v, c), [int(x) for x in cu])
    _compare(c, _flat(out, c), None, ref_out, None, near_tie,
             f"moba_attn with {name}={value!r}")


# --- C API -------------------------------------------------------------------

_lib = _capi._lib
_lib.mobaKernelTarget.restype = ctypes.c_int
_lib.mobaKernelTarget.argtypes = [ctypes.c_void_p]
DTYPE_CODES = {"f32": 0, "f16": 1, "bf16": 2}
STAGE_CODES = {"fused": 0, "tiled": 1, "decomposed": 2}


def _c_config(base):
    cfg = _capi.MobaConfig()
    _lib.mobaConfigInit(ctypes.byref(cfg))
    for name in ("head_dim", "num_heads", "num_kv_heads", "block_size",
                 "top_k"):
        setattr(cfg, name, base[name])
    cfg.causal = 1 if base.get("causal", True) else 0
    cfg.dtype = DTYPE_CODES[base["dtype"]]
    cfg.stage = STAGE_CODES[base.get("stage", "fused")]
    cfg.tile_q = base.get("tile_q") or 0
    cfg.tile_k = base.get("tile_k") or 0
    cache = moba.cache_dir()
    cfg.cache_dir = cache.encode() if cache else None
    return cfg


def c_config_problems(cfg):
    out = []
    for name in ("head_dim", "num_heads", "num_kv_heads", "block_size",
                 "top_k"):
        if getattr(cfg, name) < 1:
            out.append(f"{name}={getattr(cfg, name)}")
    for name in ("head_dim", "top_k"):
        if getattr(cfg, name) > 1024:
            out.append(f"{name}={getattr(cfg, name)} past 1024")
    if not out and cfg.num_heads % cfg.num_kv_heads:
        out.append("num_heads % num_kv_heads")
    if not (cfg.scale == 0 or (np.isfinite(cfg.scale) and cfg.scale > 0)):
        out.append(f"scale={cfg.scale}")
    for name, n in (("dtype", 3), ("target", 3), ("stage", 3)):
        if not 0 <= getattr(cfg, name) < n:
            out.append(f"{name}={getattr(cfg, name)}")
    for name in ("tile_q", "tile_k"):
        if getattr(cfg, name) < 0:
            out.append(f"{name}={getattr(cfg, name)}")
    if cfg.target in (1, 2):
        if cfg.stage != 0:
            out.append("GPU target with a CPU stage")
        for name, n in (("gpu_attention", 2), ("mma_instruction", 3),
                        ("mma_key_value_loads", 4), ("mma_merge", 3),
                        ("mma_schedule", 3)):
            if not 0 <= getattr(cfg, name) < n:
                out.append(f"{name}={getattr(cfg, name)}")
        for name in ("mma_warps", "mma_key_chunk", "mma_stages"):
            if getattr(cfg, name) < 0:
                out.append(f"{name}={getattr(cfg, name)}")
    return out


def _take_error(address):
    if not address:
        return ""
    return _capi._take_error(address)


def _c_inputs(cfg, seqlens, seed):
    rng = np.random.default_rng(seed)
    tokens = sum(seqlens)
    dtype = {0: np.float32, 1: np.float16, 2: np.uint16}[cfg.dtype]

    def make(heads):
        x = rng.standard_normal((tokens, heads, cfg.head_dim))
        return moba.to_bf16(x) if cfg.dtype == 2 else x.astype(dtype)
    q, k, v = make(cfg.num_heads), make(cfg.num_kv_heads), \
        make(cfg.num_kv_heads)
    cu = np.concatenate([[0], np.cumsum(seqlens)]).astype(np.int32)
    out = np.zeros_like(q)
    lse = np.zeros((tokens, cfg.num_heads), np.float32)
    return dict(q=q, k=k, v=v, cu=cu, out=out, lse=lse)


def _ptr(x):
    return None if x is None else x.ctypes.data


def _c_reference(cfg, b):
    c = dict(dtype={0: "f32", 1: "f16", 2: "bf16"}[cfg.dtype],
             block_size=cfg.block_size, top_k=cfg.top_k,
             causal=cfg.causal != 0,
             scale=None if cfg.scale == 0 else float(cfg.scale))
    return c, _reference(c, b["q"], b["k"], b["v"],
                         [int(x) for x in b["cu"]])


def capi_compile_and_check(base, fields, seqlens, gpu=False):
    """mobaCompile of `base` with `fields` set raw: a message, or a kernel
    that computes what the fields say."""
    cfg = _c_config(base)
    for name, value in fields.items():
        setattr(cfg, name, value)
    problems = c_config_problems(cfg)
    from_cache = ctypes.c_int32(0)
    error = ctypes.c_void_p()
    handle = _lib.mobaCompile(ctypes.byref(cfg), ctypes.byref(from_cache),
                              ctypes.byref(error))
    if not handle:
        message = _take_error(error.value)
        names = set(fields) | {n.replace("_", "-") for n in fields} | {
            "cache", "dump", "directory", "num_heads", "num_kv_heads"}
        if not message.strip():
            raise Finding("vague-error", "mobaCompile failed with no message")
        if not _names(message, names) and not any(
                str(getattr(cfg, f)) in message for f in fields):
            raise Finding("vague-error", f"mobaCompile: {message!r} names "
                          f"none of {sorted(fields)}")
        raise Refused(message)
    try:
        if problems:
            raise Finding("accepted-invalid", "mobaCompile accepted "
                          + "; ".join(problems))
        if _lib.mobaKernelTarget(handle) != cfg.target:
            raise Finding("wrong-answer", "mobaKernelTarget is "
                          f"{_lib.mobaKernelTarget(handle)}, not {cfg.target}")
        if cfg.head_dim * cfg.num_heads * sum(seqlens) > 2_000_000:
            return
        b = _c_inputs(cfg, seqlens, 0)
        error = ctypes.c_void_p()
        status = _lib.mobaRun(handle, _ptr(b["q"]), _ptr(b["k"]),
                              _ptr(b["v"]), _ptr(b["cu"]), len(seqlens),
                              sum(seqlens), _ptr(b["out"]), _ptr(b["lse"]),
                              ctypes.byref(error))
        message = _take_error(error.value)
        if cfg.target != 0:
            if status == 0 or not message:
                raise Finding("accepted-invalid", "mobaRun ran a GPU kernel "
                              "on host buffers")
            return
        if status != 0:
            raise Finding("wrong-answer", f"mobaRun failed on valid buffers: "
                          f"{message}")
        if cfg.scale > 1e4:
            return  # scores past f32's range: only the float64 reference holds them
        c, (ref_out, ref_lse, near_tie) = _c_reference(cfg, b)
        _compare(c, b["out"], b["lse"], ref_out, ref_lse, near_tie,
                 "a kernel compiled with " + ", ".join(
                     f"{k}={v!r}" for k, v in fields.items()))
    finally:
        _lib.mobaDestroy(handle)


def capi_run_check(base, seqlens, what, arg):
    """mobaRun (or another entry point) with one raw argument replaced."""
    cfg = _c_config(base)
    error = ctypes.c_void_p()
    handle = _lib.mobaCompile(ctypes.byref(cfg), None, ctypes.byref(error))
    if not handle:
        raise Finding("wrong-answer", "mobaCompile refused a valid config: "
                      + _take_error(error.value))
    try:
        if what == "entry":
            return _entry_point(handle, cfg, seqlens, arg)
        b = _c_inputs(cfg, seqlens, 1)
        n, tokens = len(seqlens), sum(seqlens)
        pointers = dict(kernel=handle, q=_ptr(b["q"]), k=_ptr(b["k"]),
                        v=_ptr(b["v"]), cu=_ptr(b["cu"]), out=_ptr(b["out"]),
                        lse=_ptr(b["lse"]))
        error = ctypes.c_void_p()
        error_arg = ctypes.byref(error)
        valid = True
        if what == "null":
            if arg == "error":
                error_arg = None
            else:
                pointers[arg] = None
                valid = False
        elif what == "num_sequences":
            n = n if arg == "all" else arg
            valid = n == len(seqlens) or (n == 1 and len(seqlens) == 1)
        elif what == "tokens":
            tokens = {"all-1": tokens - 1, "all+1": tokens + 1}.get(arg, arg)
            valid = tokens == sum(seqlens)
        else:  # cu: the buffer keeps its length; tokens stay the real count
            cu = b["cu"]
            if arg == "reversed":
                cu[:] = cu[::-1].copy()
            elif arg == "zeros":
                cu[:] = 0
            elif arg == "last+1":
                cu[-1] += 1
            elif arg == "first=last":
                cu[0] = cu[-1]
            else:
                cu[:len(arg)] = np.array(arg[:len(cu)], np.int64).astype(
                    np.int32)
            values = cu.tolist()
            valid = values[0] == 0 and values[-1] == tokens and all(
                y >= x for x, y in zip(values, values[1:]))
        status = _lib.mobaRun(pointers["kernel"], pointers["q"],
                              pointers["k"], pointers["v"], pointers["cu"], n,
                              tokens, pointers["out"], pointers["lse"],
                              error_arg)
        message = _take_error(error.value)
        if not valid:
            if status == 0:
                raise Finding("accepted-invalid", f"mobaRun accepted {what}="
                              f"{arg!r}")
            if error_arg is not None and not message.strip():
                raise Finding("vague-error", f"mobaRun refused {what}={arg!r} "
                              "with no message")
            raise Refused(message)
        if status != 0:
            if what == "cu" and message:
                raise Refused(message)  # cu valid but maybe with empty rows
            raise Finding("wrong-answer", f"mobaRun failed with {what}="
                          f"{arg!r}: {message}")
        c, (ref_out, ref_lse, near_tie) = _c_reference(cfg, b)
        _compare(c, b["out"], b["lse"], ref_out, ref_lse, near_tie,
                 f"mobaRun with {what}={arg!r}")
    finally:
        _lib.mobaDestroy(handle)


def _entry_point(handle, cfg, seqlens, arg):
    error = ctypes.c_void_p()
    if arg == "run_device":
        b = _c_inputs(cfg, seqlens, 2)
        status = _lib.mobaRunDevice(handle, _ptr(b["q"]), _ptr(b["k"]),
                                    _ptr(b["v"]), _ptr(b["cu"]), len(seqlens),
                                    sum(seqlens), _ptr(b["out"]),
                                    _ptr(b["lse"]), None, _ptr(b["cu"]),
                                    ctypes.byref(error))
        message = _take_error(error.value)
        if status == 0 or not message:
            raise Finding("accepted-invalid", "mobaRunDevice ran a CPU kernel")
        raise Refused(message)
    if arg == "run_grad_device":
        b = _c_inputs(cfg, seqlens, 2)
        grads = _c_inputs(cfg, seqlens, 3)
        status = _lib.mobaRunGradDevice(
            handle, _ptr(b["q"]), _ptr(b["k"]), _ptr(b["v"]), _ptr(b["cu"]),
            len(seqlens), sum(seqlens), _ptr(b["out"]), _ptr(b["lse"]),
            _ptr(grads["out"]), _ptr(grads["lse"]), _ptr(grads["q"]),
            _ptr(grads["k"]), _ptr(grads["v"]), None, _ptr(b["cu"]),
            ctypes.byref(error))
        message = _take_error(error.value)
        if status == 0 or not message:
            raise Finding("accepted-invalid",
                          "mobaRunGradDevice ran a CPU kernel")
        raise Refused(message)
    if arg == "destroy_null":
        _lib.mobaDestroy(None)
    elif arg == "free_null":
        _lib.mobaFreeString(None)
    elif arg == "config_init_null":
        _lib.mobaConfigInit(None)
    elif arg == "compile_null":
        if _lib.mobaCompile(None, None, ctypes.byref(error)):
            raise Finding("accepted-invalid", "mobaCompile(NULL) gave a kernel")
        if not _take_error(error.value):
            raise Finding("vague-error", "mobaCompile(NULL) set no message")
    elif arg == "compile_no_outputs":
        bad = _c_config(dict(head_dim=0, num_heads=1, num_kv_heads=1,
                             block_size=1, top_k=1, dtype="f32"))
        if _lib.mobaCompile(ctypes.byref(bad), None, None):
            raise Finding("accepted-invalid", "mobaCompile took head_dim=0")
    elif arg == "target_null":
        _lib.mobaKernelTarget(None)
    elif arg == "capability":
        capability = _lib.mobaGpuComputeCapability(ctypes.byref(error))
        message = _take_error(error.value)
        if capability == 0 and not message:
            raise Finding("vague-error", "no GPU and no message")
