"""A low-overhead launch path for the shared Triton kernels (eager decode calls are host-bound).

``kernel[grid](*args, **constexprs)`` spends most of its time in ``JITFunction.run``: binding
the arguments, computing every argument's specialization (dtype, 16-byte alignment, ``== 1``,
divisibility by 16, integer width), hashing the key and looking it up.  On a slow host that is
25-45 us per call, more than a decode GEMV takes on the GPU.

:func:`launch` does that work once per *specialization class* and then calls the compiled
kernel's launcher (``CompiledKernel.run``, the call ``JITFunction.run`` itself ends with)
directly.  The class key holds exactly what Triton specializes on for CUDA: every tensor's
dtype and whether its address is 16-byte aligned, every integer's value class (``== 1``,
multiple of 16, outside int32) -- plus the caller's static key (kernel, constexprs, compile
options) and the current device.  A miss launches through ``kernel[grid]`` as usual and keeps
the ``CompiledKernel`` it returns.  So a hit launches the very kernel ``kernel[grid]`` would
have picked, on the current stream: CUDA-graph capturable like the normal path.  The first
direct launch of a process is checked bit for bit against ``kernel[grid]`` (outside graph
capture); a mismatch or an error turns the fast path off for the process.

A layer can go one step further (:class:`Replay`): its first call at a given M runs inside :class:`recording`, and
when every launch of that call was a verified direct launch of a kernel marked :func:`replayable` whose tensor
arguments are each the activations (or their TMA descriptor), the output, a tensor that lives as long as the layer
(its buffers, the persistent split-K workspace and counters) or a temporary an earlier launch of the call wrote,
later calls at that M relaunch them with only ``x``, ``y`` and fresh temporaries swapped in: no configuration
lookup, no argument building, no specialization key.  Each relaunch still checks what could have changed since (the
fast path switched off, a launch hook installed, another current device, the new tensors' 16-byte alignment) and
declines otherwise, and the caller takes the normal path.

A launch may ask for *thread-block clusters* (``cluster`` > 1: that many consecutive programs along x share one
cluster, sm_90+; :func:`launch_cluster`).  ``kernel[grid]`` cannot launch a kernel compiled for one program a cluster
in clusters, so such launches always go straight to the compiled kernel's launcher with Triton's cluster size in its
metadata (the launcher then multiplies the x grid by it and sets the cluster dimension), with more dynamic shared
memory than the kernel itself asked for (the cluster's exchange buffer, at the offset passed in the kernel's last int
argument).  Their records replay like any other verified direct launch.

The normal path is used whenever the fast one cannot be trusted: under ``TRITON_INTERPRET``,
for non-CUDA tensors (ROCm specializes on more, e.g. pointer ranges), when a launch hook is
registered (profilers; an empty ``HookChain`` is no hook), when Triton's internals differ from what this module expects (checked
once, see :func:`_supported`), or when ``QUANTLINEAR_TRITON_FAST_LAUNCH=0``.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import torch

from .runtime import env_on, interpreting

_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1
#: (static key, device, specialization class) -> CompiledKernel
_compiled: dict[tuple, Any] = {}
_state: dict[str, Any] = {}
#: kernel name -> [direct launches, normal launches] (see :func:`stats`); a cached entry holds its kernel's list
_stats: dict[str, list] = {}
#: kernel id -> the CompiledKernel its last normal launch returned (:func:`compiled`)
_last_ck: dict[int, Any] = {}
#: the kernels a :class:`Replay` may relaunch (one launch computes the whole output; :func:`replayable`)
_replayable: set[int] = set()
#: per thread, inside :class:`recording`: ``rec``, one entry per launch, ``(fn, grid, args, n_tensors, cached entry,
#: out)`` for a verified direct launch, None for any other
_local = threading.local()


def _counts(fn) -> list:
    name = getattr(fn, "__name__", None) or getattr(getattr(fn, "fn", None), "__name__", None) or str(fn)
    c = _stats.get(name)
    if c is None:
        c = _stats[name] = [0, 0]
    return c


def stats(reset: bool = False) -> dict[str, tuple[int, int]]:
    """Launches per kernel since the process started (or the last reset): ``{name: (direct, normal)}``.

    ``direct`` went through the cached launcher, ``normal`` through ``kernel[grid]`` (first
    launches of a specialization, the one-time check, graph captures before the check, and every
    launch while the fast path is off).  Two counter increments per launch, no other cost.
    """
    out = {k: (v[0], v[1]) for k, v in sorted(_stats.items())}
    if reset:
        for v in _stats.values():
            v[0] = v[1] = 0
    return out


def stats_line() -> str:
    """:func:`status` and :func:`stats` on one line (for logs)."""
    return status() + " | " + ", ".join(f"{k}: {d} direct/{n} normal" for k, (d, n) in stats().items())


def _supported() -> bool:
    """Whether this Triton exposes what the fast path calls (answered once per process)."""
    ok = _state.get("ok")
    if ok is not None:
        return ok
    ok = False
    try:
        if not interpreting() and env_on("QUANTLINEAR_TRITON_FAST_LAUNCH", "1") and getattr(torch.version, "hip", None) is None:
            from triton import knobs  # Triton >= 3.4: the launch hooks live in knobs.runtime
            from triton.compiler.compiler import CompiledKernel

            # (``CompiledKernel.run`` is a property in some versions, an instance attribute set on first use in others)
            ok = hasattr(CompiledKernel, "launch_metadata") and hasattr(knobs, "runtime")
            _state["knobs"] = knobs.runtime
            raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
            _state["stream"] = raw if raw is not None else (lambda d: torch.cuda.current_stream(d).cuda_stream)
            cur = getattr(torch._C, "_cuda_getDevice", None)  # torch.cuda.current_device() without its Python wrapper
            _state["device"] = cur if cur is not None else torch.cuda.current_device
    except Exception as e:
        ok = False
        _state["why"] = f"{type(e).__name__}: {e}"
    if not ok:
        _state.setdefault("why", "interpreter, ROCm, an older Triton or QUANTLINEAR_TRITON_FAST_LAUNCH=0")
    _state["ok"] = ok
    return ok


def enabled() -> bool:
    return _supported()


def status() -> str:
    """Whether the fast path is on, how many launchers it holds, and the last reason it was not taken."""
    off = f"; clusters off: {_state['clusters_why']}" if "clusters_why" in _state else ""
    return (f"fast launch {'on' if _supported() else 'off'}, {len(_compiled)} cached launchers; last miss reason: "
            f"{_state.get('why', '-')}{off}")


def clear() -> None:
    _compiled.clear()
    _clustered.clear()


def _no_hooks(kr) -> bool:
    """No launch hook is registered (a hook is None, or an empty ``HookChain`` in Triton >= 3.5)."""
    for h in (kr.launch_enter_hook, kr.launch_exit_hook):
        if h is not None and (getattr(h, "calls", True) or not hasattr(h, "calls")):
            return False
    return True


def _capturing() -> bool:
    try:
        return torch.cuda.is_current_stream_capturing()
    except Exception:
        return True


def launch(fn, grid: tuple, tensors: Sequence[torch.Tensor], ints: Sequence[int], floats: Sequence[float],
           consts: dict, static_key: tuple, options: dict, out: torch.Tensor | None = None, cluster: int = 1,
           cluster_shared: int = 0) -> None:
    """``fn[grid](*tensors, *ints, *floats, **consts, **options)``, through the cached launcher when possible.

    ``fn``'s parameters must be, in order: the tensors, the ints, the floats, then the constexprs
    (``consts``, any order).  ``static_key`` must identify ``consts`` and ``options`` (the caller's
    cache key of its launch configuration); ``grid`` has one to three entries (missing ones are 1).  ``out`` is the tensor
    the kernel writes (deterministically): the first direct launch of the process is checked
    against the normal path on it, bit for bit, and a mismatch turns the fast path off.  ``cluster`` > 1: see
    :func:`launch_cluster` (the caller checked :func:`clusters_ok`).
    """
    if cluster > 1:
        rec = launch_cluster(fn, grid, tensors, ints, floats, consts, static_key, options, out, cluster, cluster_shared)
    else:
        rec = _launch(fn, grid, tensors, ints, floats, consts, static_key, options, out)
    lst = getattr(_local, "rec", None)
    if lst is not None:
        lst.append(rec)


def _launch(fn, grid, tensors, ints, floats, consts, static_key, options, out):
    """:func:`launch`; returns ``(fn, grid, args, n_tensors, entry, out)`` where it was a verified direct launch, else None."""
    x0 = tensors[0]
    if x0.is_cuda and _supported():
        kr = _state["knobs"]
        if _no_hooks(kr):
            dev = x0.get_device()
            # the specialization class: tensors by dtype and 16-byte alignment, ints by == 1 (1), outside int32 (3),
            # multiple of 16 (2) or neither (0) -- inlined, this runs on every launch
            key = (static_key, dev, tuple([(t.dtype, (t.data_ptr() & 15) == 0) for t in tensors]),
                   tuple([1 if v == 1 else 3 if (v < _I32_MIN or v > _I32_MAX) else 2 if v % 16 == 0 else 0 for v in ints]))
            hit = _compiled.get(key)
            if hit is not None and dev == _state.get("device", torch.cuda.current_device)():
                verified = _state.get("verified", False)
                if verified or (out is not None and not _capturing()):
                    run, function, packed, counts, cvals = hit
                    args = (*tensors, *ints, *floats, *cvals)
                    n = len(grid)
                    g3 = (grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1)
                    try:
                        run(g3[0], g3[1], g3[2], _state["stream"](dev), function, packed, None, None, None, *args)
                    except Exception as e:  # an internal API this module does not know: normal launches from now on
                        _state["ok"] = False
                        _state["why"] = f"direct launch failed: {type(e).__name__}: {e}"
                        _compiled.clear()
                    else:
                        counts[0] += 1
                        if verified:
                            return (fn, g3, args, len(tensors), hit, out)
                        fast = out.clone()
                        counts[1] += 1
                        fn[grid](*tensors, *ints, *floats, **consts, **options)
                        same = torch.equal(torch.nan_to_num(fast), torch.nan_to_num(out))
                        _state["verified"] = same
                        if not same:
                            _state["ok"] = False
                            _state["why"] = "direct launch disagreed with kernel[grid]: disabled"
                            _compiled.clear()
                        return
                else:
                    hit[3][1] += 1
                    _last_ck[id(fn)] = fn[grid](*tensors, *ints, *floats, **consts, **options)
                    return
            counts = _counts(fn)
            counts[1] += 1
            ck = _last_ck[id(fn)] = fn[grid](*tensors, *ints, *floats, **consts, **options)
            try:
                entry = (ck.run, ck.function, ck.packed_metadata, counts, None)  # (reading ck.run loads the module where it is lazy)
            except Exception as e:
                _state["why"] = f"no launcher on {type(ck).__name__}: {type(e).__name__}: {e}"
                return
            if entry[1] is None or not callable(entry[0]):
                _state["why"] = "compiled kernel has no function handle"
            elif not _check_order(fn, tensors, ints, floats, consts):
                _state["why"] = f"{getattr(fn, '__name__', fn)}: parameters are not runtime args then constexprs"
            elif len(_compiled) < 8192:
                _compiled[key] = (*entry[:4], _const_values(fn, consts, static_key))  # the constexprs' values in parameter order
            return
        _state["why"] = "a launch hook is installed"
    elif interpreting():
        _check_cacheable(fn, tensors, ints, floats, consts)
    _counts(fn)[1] += 1
    _last_ck[id(fn)] = fn[grid](*tensors, *ints, *floats, **consts, **options)


#: (cluster, exchange bytes, static key, device, specialization class) -> (run, function, packed, counts, constexprs,
#: exchange offset)
_clustered: dict[tuple, tuple] = {}
#: CUDA device index -> whether it is sm_90+ (:func:`clusters_on`)
_sm90: dict[int, bool] = {}
_CUDA_FUNC_MAX_DYNAMIC_SHARED = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
_CUDA_FUNC_NON_PORTABLE_CLUSTER = 14  # CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED


def _set_attribute(function, attr: int, value: int, what: str) -> None:
    import ctypes

    err = ctypes.CDLL("libcuda.so.1").cuFuncSetAttribute(ctypes.c_void_p(function), attr, ctypes.c_int(value))
    if err:
        raise RuntimeError(f"cluster launch: {what} refused (CUDA error {err})")


def clusters_ok(x: torch.Tensor) -> bool:
    """Whether :func:`launch_cluster` can launch on ``x``'s device: compiled CUDA (not the interpreter, not ROCm) on
    sm_90+, a Triton whose compiled kernels expose their launcher (checked once; the launch metadata's layout,
    ``(num_warps, num_ctas, shared)`` as in Triton 3.4-3.6, on each first launch), and
    ``QUANTLINEAR_TRITON_CLUSTERS`` not 0."""
    return x.is_cuda and clusters_on(x.get_device())


def clusters_on(index: int) -> bool:
    """:func:`clusters_ok` for CUDA device ``index`` (its capability looked up once: this runs in every plan that asks
    for a cluster)."""
    if interpreting() or getattr(torch.version, "hip", None) is not None:
        return False
    ok = _state.get("clusters")
    if ok is None:
        ok = _state["clusters"] = bool(env_on("QUANTLINEAR_TRITON_CLUSTERS", "1") and _launcher_api())
    if not ok:
        return False
    sm90 = _sm90.get(index)
    if sm90 is None:
        sm90 = _sm90[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return sm90


def disable_clusters(why: str) -> None:
    """No more cluster launches in this process (:func:`clusters_ok` says no from now on; :func:`status` tells why):
    what a caller does when one failed, before taking the path without clusters."""
    _state["clusters"] = False
    _state["clusters_why"] = why


def _launcher_api() -> bool:
    try:
        from triton.compiler.compiler import CompiledKernel

        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        _state.setdefault("stream", raw if raw is not None else (lambda d: torch.cuda.current_stream(d).cuda_stream))
        return hasattr(CompiledKernel, "launch_metadata")
    except Exception:
        return False


def launch_cluster(fn, grid: tuple, tensors, ints, floats, consts: dict, static_key: tuple, options: dict, out,
                   cluster: int, cluster_shared: int) -> tuple:
    """``fn`` with ``cluster`` consecutive programs along x to a thread-block cluster (``grid[0]`` clusters), and
    ``cluster_shared`` more bytes of dynamic shared memory than it asks for, at the 16-byte aligned offset the launch
    writes into its last int argument (``ints[-1]``: pass 0).  Returns the launch's record (see :class:`recording`).

    Compiled once per specialization class (``fn.warmup``), then launched through the compiled kernel's launcher with
    ``num_ctas`` = ``cluster`` in its metadata: Triton's launcher multiplies the x grid by it and sets the cluster
    dimension (and the cluster scheduling policy), as for a kernel compiled for clusters.  Launch hooks do not see
    these launches."""
    dev = tensors[0].get_device()
    key = (cluster, cluster_shared, static_key, dev, tuple([(t.dtype, (t.data_ptr() & 15) == 0) for t in tensors]),
           tuple([1 if v == 1 else 3 if (v < _I32_MIN or v > _I32_MAX) else 2 if v % 16 == 0 else 0 for v in ints]))
    hit = _clustered.get(key)
    if hit is None:
        g = (grid[0] * cluster, *grid[1:])
        ck = fn.warmup(*tensors, *ints, *floats, grid=g, **consts, **options)
        run = ck.run  # (loads the module where that is lazy)
        meta = tuple(ck.packed_metadata)
        if len(meta) != 3 or meta[1] != 1:
            raise RuntimeError(f"cluster launch: unexpected launch metadata {meta} (Triton internals changed)")
        off = -(-ck.metadata.shared // 16) * 16
        total = off + cluster_shared
        if total > 48 * 1024:  # (past the default limit the function must opt in, as Triton does for its own)
            _set_attribute(ck.function, _CUDA_FUNC_MAX_DYNAMIC_SHARED, total, f"{total} bytes of shared memory")
        if cluster > 8:  # (Triton's launcher opts in for 16 only)
            _set_attribute(ck.function, _CUDA_FUNC_NON_PORTABLE_CLUSTER, 1, f"a cluster of {cluster}")
        hit = _clustered[key] = (run, ck.function, (meta[0], cluster, total), _counts(fn),
                                 _const_values(fn, consts, static_key), off)
    run, function, packed, counts, cvals, off = hit
    args = (*tensors, *ints[:-1], off, *floats, *cvals)
    n = len(grid)
    g3 = (grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1)
    run(g3[0], g3[1], g3[2], _state["stream"](dev), function, packed, None, None, None, *args)
    counts[0] += 1
    return (fn, g3, args, len(tensors), hit[:5], out)


def compiled(fn):
    """The CompiledKernel of ``fn``'s last normal (``kernel[grid]``) launch, or None: what benchmarks read the machine
    code and metadata of (a direct launch reuses the kernel of an earlier normal one)."""
    return _last_ck.get(id(fn))


class LaunchArgumentsError(RuntimeError):
    """A launch the direct launcher could never cache on a GPU (raised under the interpreter, i.e. in CI)."""


def _check_cacheable(fn, tensors, ints, floats, consts) -> None:
    """Under the interpreter (CI, no GPU), every launch is checked by the rule the GPU path applies before caching a
    launcher (:func:`_param_problems`), on the Python signature the interpreter runs.  A kernel that gains a constexpr
    its launch does not pass then fails CPU tests instead of silently costing 25-45 us of host time per GPU call
    (checked once per kernel and set of constexpr names)."""
    n = len(tensors) + len(ints) + len(floats)
    key = (id(fn), n, frozenset(consts))
    if key in _order_ok:
        return
    import inspect

    target = getattr(fn, "fn", fn)  # the interpreter's InterpretedFunction wraps the Python function
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # not a Python function (a test's stand-in): nothing to check
        return
    params = [(p.name, "constexpr" in str(p.annotation), p.default is not inspect.Parameter.empty)
              for p in sig.parameters.values()]
    out_of_place, missing, unknown = _param_problems(params, n, consts)
    if out_of_place or missing or unknown:
        raise LaunchArgumentsError(
            f"{getattr(target, '__name__', target)}: a launch with {len(tensors)} tensors, {len(ints)} ints, {len(floats)} "
            f"floats and constexprs {sorted(consts)} could never take the direct launcher on a GPU: parameters out of "
            f"place {out_of_place}, constexprs neither given nor defaulted {missing}, unknown constexprs {unknown}")
    _order_ok[key] = True


def _param_problems(params: list[tuple[str, bool, bool]], n: int, consts: dict) -> tuple[list, list, list]:
    """What keeps a launch of ``n`` runtime arguments and constexprs ``consts`` from the direct launcher, for a kernel
    whose parameters are ``params`` = (name, is constexpr, has a default) in order: parameters out of place (a runtime
    one after the first ``n`` or a constexpr among them), constexprs neither given nor defaulted, unknown constexprs."""
    out_of_place = [name for i, (name, const, _) in enumerate(params) if const != (i >= n)]
    missing = [name for name, const, default in params[n:] if const and name not in consts and not default]
    unknown = sorted(set(consts) - {name for name, _, _ in params[n:]})
    return out_of_place, missing, unknown


_const_cache: dict[tuple, tuple] = {}
_order_ok: dict[tuple, bool] = {}


def _check_order(fn, tensors, ints, floats, consts) -> bool:
    """``fn``'s parameters are the runtime arguments, then constexprs: every one in ``consts`` or left at its default
    (:func:`_param_problems`; checked once per kernel and set of constexpr names: a kernel that gained a defaulted
    constexpr its callers do not pass would otherwise never take the direct path)."""
    k = (id(fn), len(tensors) + len(ints) + len(floats), frozenset(consts))
    ok = _order_ok.get(k)
    if ok is None:
        params = getattr(fn, "params", None)
        ok = params is not None and not any(_param_problems(
            [(p.name, p.is_constexpr, getattr(p, "has_default", False)) for p in params], k[1], consts))
        _order_ok[k] = ok
    return ok


def _const_values(fn, consts: dict, static_key: tuple) -> tuple:
    """The constexprs' values in parameter order, defaults filled in (cached per kernel and static key)."""
    k = (id(fn), static_key)
    v = _const_cache.get(k)
    if v is None:
        v = tuple(consts[p.name] if p.name in consts else p.default for p in fn.params if p.is_constexpr)
        if len(_const_cache) > 8192:
            _const_cache.clear()
        _const_cache[k] = v
    return v


# ---- replaying one layer's launch -----------------------------------------------------------------
def replayable(fn):
    """Mark kernel ``fn`` as one whose single launch computes the whole output (a :class:`Replay` may relaunch it)."""
    _replayable.add(id(fn))
    return fn


class recording:
    """``with recording() as rec:`` -- ``rec`` lists the launches this thread makes inside the block (:func:`launch`'s
    records)."""

    def __enter__(self) -> list:
        _local.rec = []
        return _local.rec

    def __exit__(self, *exc) -> None:
        _local.rec = None


class Replay:
    """The verified direct launches of one layer call at one M, with every argument resolved but the activations, the
    output and the call's own temporaries (a launch's output that a later launch reads: the quantized activations of
    the float schemes).

    ``replay(x, y)`` relaunches them in order on the current stream with ``x`` (and the TMA descriptor it rebuilds on
    ``x`` where a kernel takes one), ``y`` and fresh temporaries (shaped like the recorded ones) in their places; it
    returns False, launching nothing, where the fast path was switched off, a launch hook is installed, the current
    device changed, or ``x`` / ``y`` differ in 16-byte alignment from the recorded call (the specialization the
    kernels were compiled for).  The caller guarantees the rest: the same layer (same constant tensors), the same
    M, dtype and device.
    """

    __slots__ = ("steps", "temps", "x_aligned", "y_aligned", "dev", "desc")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        st = _state
        if not st.get("ok") or not _no_hooks(st["knobs"]) or st["device"]() != self.dev:
            return False
        if ((x.data_ptr() & 15) == 0) is not self.x_aligned or ((y.data_ptr() & 15) == 0) is not self.y_aligned:
            return False
        vals = [torch.empty(shape, dtype=dtype, device=device) for shape, dtype, device in self.temps]  # codes >= 0
        vals.append(y)  # -3
        vals.append(None if self.desc is None else _rebased(self.desc, x))  # -2
        vals.append(x)  # -1
        stream = st["stream"](self.dev)
        try:
            for run, function, packed, counts, g, args, fills in self.steps:
                a = list(args)
                for i, c in fills:
                    a[i] = vals[c]
                run(g[0], g[1], g[2], stream, function, packed, None, None, None, *a)
                counts[0] += 1
        except Exception as e:  # as a failed direct launch: normal launches from now on (the caller runs the call again)
            st["ok"] = False
            st["why"] = f"replay failed: {type(e).__name__}: {e}"
            _compiled.clear()
            return False
        return True


_X, _D, _Y = -1, -2, -3


def _rebased(desc, base):
    """TMA descriptor ``desc`` on ``base`` (same shape, strides, block and layout), without re-validating it."""
    d = object.__new__(type(desc))
    d.__dict__.update(desc.__dict__)
    d.base = base
    return d


def _contiguous(t) -> bool:
    f = getattr(t, "is_contiguous", None)
    return f() if f is not None else True


def replay_of(records: list, x: torch.Tensor, y: torch.Tensor, constants: Sequence[torch.Tensor | None]) -> Replay | None:
    """The :class:`Replay` of a call that made ``records`` (:class:`recording`), read ``x`` and returned ``y``, or None
    (why: :func:`replay_refusal`).

    Every launch must have been a verified direct launch of a :func:`replayable` kernel; the last one writes ``y``, an
    earlier one a temporary that is neither ``x``, ``y`` nor a constant (16-byte aligned and contiguous, as fresh
    allocations are); and each tensor argument is ``x``, a TMA descriptor of ``x``, ``y``, one of ``constants``
    (tensors that stay as they are for the layer's life) or a view of one, or the output of this or an earlier launch
    of the call.
    """
    def no(why: str) -> None:
        _state["replay_why"] = why
        return None

    if not records or any(r is None for r in records):
        return no("not every launch was a verified direct one")
    for r in records:
        if id(r[0]) not in _replayable:
            return no(f"{getattr(r[0], '__name__', r[0])} is not marked replayable")
    if records[-1][5] is not y:
        return no("the last launch does not write the call's output")
    keep = {id(t) for t in constants if t is not None}
    keep |= {id(t._base) for t in constants if getattr(t, "_base", None) is not None}  # (views: their root)
    temps: list = []
    desc, steps, seen_x = None, [], False
    for fn, grid, args, n_tensors, (run, function, packed, counts, _), out in records:
        if out is not y:
            if (out is x or id(out) in keep or any(t is out for t in temps) or not hasattr(out, "shape") or out.data_ptr() & 15
                    or not _contiguous(out)):
                return no(f"{getattr(fn, '__name__', fn)} writes neither the output nor a fresh temporary")
            temps.append(out)
        fills = []
        for i, t in enumerate(args[:n_tensors]):
            if t is x:
                fills.append((i, _X))
                seen_x = True
            elif t is y:
                fills.append((i, _Y))
            elif getattr(t, "base", None) is x and hasattr(t, "block_shape") and hasattr(t, "__dict__"):
                if desc is not None and (type(t) is not type(desc) or t.__dict__ != desc.__dict__):
                    return no("two different TMA descriptors of x")
                fills.append((i, _D))
                desc, seen_x = t, True
            elif any(t is u for u in temps):
                fills.append((i, next(j for j, u in enumerate(temps) if u is t)))
            elif id(t) not in keep and id(getattr(t, "_base", None)) not in keep:  # (a view of a constant is one too)
                return no(f"{getattr(fn, '__name__', fn)}: tensor argument {i} is neither x, the output, a temporary "
                          f"nor one of the layer's tensors")
        template = list(args)
        for i, _ in fills:
            template[i] = None  # (filled each call: the plan keeps no activations, output or temporary alive)
        steps.append((run, function, packed, counts, grid, tuple(template), tuple(fills)))
    if not seen_x:
        return no("no launch reads x")
    r = Replay()
    # (the descriptor template holds no reference to this call's activations, nor do the argument templates)
    r.steps, r.desc = tuple(steps), None if desc is None else _rebased(desc, None)
    r.temps = tuple((tuple(t.shape), t.dtype, t.device) for t in temps)
    r.x_aligned, r.y_aligned = (x.data_ptr() & 15) == 0, (y.data_ptr() & 15) == 0
    r.dev = x.get_device()
    return r


def replay_refusal() -> str:
    """Why the last :func:`replay_of` that returned None did (for tests and diagnostics)."""
    return _state.get("replay_why", "-")
