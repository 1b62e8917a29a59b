"""The QuantLinear contract every kernel implements.

A kernel is a subclass that declares what it supports as class data and writes two methods:
``prepare(weights)`` (turn canonical integer weights into its native layout, once, after
loading) and ``compute(x)`` (the matmul on a 2-D activation).  Everything else lives here,
once: capability checks with standard reasons, checkpoint-tensor handling so a state dict
loads unchanged, act-order permutation, bias, shape/dtype validation and ``repr``.

Lifecycle of a layer::

    layer = Kernel(spec)            # checkpoint-format buffers (placeholders on "meta")
    layer.load_state_dict(sd)       # or layer.load_checkpoint(tensors): validated, assigned
    layer.post_load()               # repack into the kernel layout; checkpoint copy released
    y = layer(x)                    # x @ W^T + b
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from .errors import CheckpointError, NoKernelError, QuantLinearError
from .formats import IntWeights, get_format
from .spec import LayerSpec
from .verdict import Verdict

_ALL_INT_FORMATS = frozenset({"gptq", "gptq_v2", "awq"})


def _fmt_set(values) -> str:
    return ", ".join(sorted(str(v).replace("torch.", "") for v in values))


class QuantLinear(nn.Module):
    """Abstract base of all kernels. ``.name`` is the kernel's namespaced name."""

    # ---- capabilities: class data, checked by :meth:`can_implement` -------------------
    #: namespaced kernel name, "<plugin>.<kernel>", e.g. "cpu.int4pack"
    name: ClassVar[str] = ""
    #: higher wins in ``auto``; ties are broken by name
    priority: ClassVar[int] = 0
    #: device families ("cuda", "rocm", "xpu", "npu", "cpu") the kernel runs on
    device_families: ClassVar[frozenset[str]] = frozenset()
    #: Scheme.data_type values
    data_types: ClassVar[frozenset[str]] = frozenset({"int"})
    #: weight bit widths
    bits: ClassVar[frozenset[int]] = frozenset()
    #: Scheme.group_size values (-1 per channel, 0 per tensor); None = any
    group_sizes: ClassVar[frozenset[int] | None] = None
    #: symmetric / asymmetric support
    sym: ClassVar[frozenset[bool]] = frozenset({True, False})
    #: canonical packing formats the kernel can load (see quantlinear.formats)
    formats: ClassVar[frozenset[str]] = _ALL_INT_FORMATS
    #: activation dtypes
    dtypes: ClassVar[frozenset[torch.dtype]] = frozenset({torch.float16, torch.bfloat16, torch.float32})
    #: in_features / out_features must be multiples of these
    in_features_multiple: ClassVar[int] = 1
    out_features_multiple: ClassVar[int] = 1
    #: the kernel needs in_features to be a whole number of groups
    needs_whole_groups: ClassVar[bool] = False
    #: the kernel consumes a non-trivial g_idx itself; otherwise the base class permutes
    #: input channels so groups become contiguous
    handles_g_idx: ClassVar[bool] = False
    #: the kernel adds the bias inside ``compute``
    fuses_bias: ClassVar[bool] = False
    #: schemes that quantize activations need a kernel that says so
    quantizes_activations: ClassVar[bool] = False
    #: the kernel may read its weight tensors before the previous kernel of the stream has finished (programmatic
    #: dependent launch with loads ahead of the grid-dependency wait): every write of those tensors (``prepare``, a
    #: state-dict copy into a prepared layer) is then waited for before the layer runs (:meth:`weights_written`)
    reads_weights_early: ClassVar[bool] = False
    #: set True on intermediate base classes that are not kernels themselves
    abstract: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("abstract", False):
            return
        cls.abstract = False
        problems = []
        if not cls.name or "." not in cls.name:
            problems.append(f"name must be namespaced '<plugin>.<kernel>', got {cls.name!r}")
        if not cls.device_families:
            problems.append("device_families is empty")
        if cls.data_types == frozenset({"int"}) and not cls.bits:
            problems.append("bits is empty")
        if not cls.dtypes or not all(isinstance(d, torch.dtype) for d in cls.dtypes):
            problems.append("dtypes must be a non-empty set of torch dtypes")
        if not isinstance(cls.priority, int):
            problems.append(f"priority must be an int, got {cls.priority!r}")
        for attr in ("device_families", "data_types", "bits", "sym", "formats", "dtypes"):
            if not isinstance(getattr(cls, attr), (frozenset, set)):
                problems.append(f"{attr} must be a set")
        if problems:
            raise TypeError(f"kernel class {cls.__qualname__}: " + "; ".join(problems))

    @property
    def plugin(self) -> str:
        return type(self).name.split(".", 1)[0]

    # ---- selection -----------------------------------------------------------------------
    @classmethod
    def can_implement(cls, spec: LayerSpec) -> Verdict:
        """Yes, or a reason naming the first unmet requirement."""
        from .devices import device_family

        s = spec.scheme
        fam = device_family(spec.device)
        if fam not in cls.device_families:
            return Verdict.no(f"runs on {_fmt_set(cls.device_families)}, not {fam}")
        if s.data_type not in cls.data_types:
            return Verdict.no(f"data_type={s.data_type} not supported (supports {_fmt_set(cls.data_types)})")
        if s.bits not in cls.bits:
            return Verdict.no(f"bits={s.bits} not supported (supports {_fmt_set(cls.bits)})")
        if cls.group_sizes is not None and s.group_size not in cls.group_sizes:
            return Verdict.no(f"group_size={s.group_size} not supported (supports {_fmt_set(cls.group_sizes)})")
        if s.sym not in cls.sym:
            return Verdict.no(f"{'symmetric' if s.sym else 'asymmetric'} quantization not supported")
        if not s.weight_only and not cls.quantizes_activations:
            return Verdict.no(f"scheme quantizes activations (act_bits={s.act_bits}); kernel is weight-only")
        if spec.format not in cls.formats:
            return Verdict.no(f"packing format {spec.format} not supported (supports {_fmt_set(cls.formats)})")
        if spec.dtype not in cls.dtypes:
            return Verdict.no(f"dtype {str(spec.dtype).replace('torch.', '')} not supported (supports {_fmt_set(cls.dtypes)})")
        if spec.in_features % cls.in_features_multiple:
            return Verdict.no(f"in_features={spec.in_features} is not a multiple of {cls.in_features_multiple}")
        if spec.out_features % cls.out_features_multiple:
            return Verdict.no(f"out_features={spec.out_features} is not a multiple of {cls.out_features_multiple}")
        if cls.needs_whole_groups and spec.in_features % spec.group_size:
            return Verdict.no(f"group_size={spec.group_size} does not divide in_features={spec.in_features}")
        return cls.check(spec)

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        """Kernel-specific requirements beyond the declared data (ops present, capability...)."""
        return Verdict.yes()

    # ---- construction and loading ----------------------------------------------------------
    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        if type(self).abstract:
            raise TypeError(f"{type(self).__qualname__} is abstract")
        verdict = type(self).can_implement(spec)
        if not verdict:
            raise NoKernelError(f"layer {spec.name!r}: kernel {self.name} cannot implement {spec.describe()}: {verdict.reason}")
        self.spec = spec
        self.in_features = spec.in_features
        self.out_features = spec.out_features
        self._format = get_format(spec.format)
        reason = self._format.check_shape(spec)
        if reason:
            raise CheckpointError(f"layer {spec.name!r}: {reason}")
        self._checkpoint_names: list[str] = []
        for tname, ts in self._format.tensor_specs(spec).items():
            if ts.optional:
                continue
            self.register_buffer(tname, torch.empty(ts.shape, dtype=ts.dtype or torch.float16, device="meta"))
            self._checkpoint_names.append(tname)
        if spec.act_order:
            self.register_buffer("g_idx", torch.empty(spec.in_features, dtype=torch.int32, device="meta"))
            self._checkpoint_names.append("g_idx")
        if not spec.bias:
            self.bias = None
        self.register_buffer("input_perm", None)
        self._prepared = False

    @classmethod
    def from_weights(cls, spec: LayerSpec, weights: IntWeights, bias: torch.Tensor | None = None) -> "QuantLinear":
        """Build a ready layer from canonical weights (packed through ``spec.format``, then loaded).

        Goes through the same checkpoint path as a real load, so tests and benchmarks exercise it.
        """
        layer = cls(spec)
        tensors = get_format(spec.format).pack(weights, spec)
        if spec.bias:
            if bias is None:
                raise QuantLinearError(f"layer {spec.name!r}: spec has bias=True but no bias was given")
            tensors["bias"] = bias
        layer.load_checkpoint(tensors)
        layer.post_load()
        return layer

    def load_checkpoint(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Validate this layer's checkpoint tensors and take them (moved to the layer's device)."""
        if self._prepared:
            raise QuantLinearError(f"layer {self.spec.name!r} is already prepared; load tensors before post_load()")
        self._format.validate(tensors, self.spec)
        if "g_idx" in tensors and "g_idx" not in self._checkpoint_names:
            from .formats.gptq import g_idx_is_trivial

            if not g_idx_is_trivial(tensors["g_idx"], self.in_features, self.spec.group_size):
                raise CheckpointError(
                    f"layer {self.spec.name!r}: tensor {self.spec.name}.g_idx is not trivial (act-order) "
                    "but the layer was built with act_order=False"
                )
            tensors = {k: v for k, v in tensors.items() if k != "g_idx"}
        for tname, t in tensors.items():
            self._buffers[tname] = t.to(self.spec.device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        if self._prepared:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
            self.weights_written()
            return
        names = list(self._format.tensor_specs(self.spec))
        mine = {n: state_dict[prefix + n] for n in names if prefix + n in state_dict}
        try:
            self.load_checkpoint(mine)
        except QuantLinearError as e:
            error_msgs.append(str(e))

    def post_load(self) -> None:
        """Repack the checkpoint tensors into the kernel's layout, once; drop the checkpoint copy."""
        if self._prepared:
            return
        tensors = {n: self._buffers[n] for n in self._checkpoint_names}
        if self.spec.bias:
            tensors["bias"] = self._buffers["bias"]
        missing = [n for n, t in tensors.items() if t is None or t.is_meta]
        if missing:
            raise CheckpointError(f"layer {self.spec.name!r}: tensors {missing} were never loaded")
        weights = self._format.unpack(tensors, self.spec)
        _check_symmetric_zeros(weights, self.spec)
        bias = tensors.get("bias")
        for n in self._checkpoint_names:
            del self._buffers[n]
        del tensors
        if bias is not None:
            self._buffers["bias"] = bias.to(self.spec.dtype)
        perm = None
        if weights.g_idx is not None and not self.handles_g_idx:
            weights, perm = _make_groups_contiguous(weights, self.spec)
        self.input_perm = perm
        with torch.no_grad():
            self.prepare(weights)
        self.weights_written()
        self._compute_dtype = self.spec.dtype
        self._permutes = self._buffers.get("input_perm") is not None
        self._adds_bias = self._buffers.get("bias") is not None and not self.fuses_bias
        self._prepared = True

    def weights_written(self) -> None:
        """Called after the layer's tensors were written (``prepare``, a state-dict copy into a prepared layer).

        Why: a kernel that reads its weights before waiting on the previous kernel (:attr:`reads_weights_early`) would
        race the kernel that wrote them if that one came just before it in the stream.  For such kernels the device
        is synchronized here, once per write (load time, never on the forward path); the others do nothing.
        """
        if not self.reads_weights_early:
            return
        for device in self._tensor_devices():
            torch.accelerator.synchronize(device)

    def _tensor_devices(self) -> set[torch.device]:
        """The devices other than the CPU (and meta) that hold this layer's tensors."""
        return {t.device for t in self._buffers.values() if t is not None and t.device.type not in ("cpu", "meta")}

    @property
    def prepared(self) -> bool:
        return self._prepared

    # ---- kernel-specific ------------------------------------------------------------------------
    def prepare(self, weights: IntWeights) -> None:
        """Store ``weights`` in the kernel's native layout (register buffers). Called once."""
        raise NotImplementedError

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` is 2-D ``[M, K]`` in ``spec.dtype``, contiguous; return ``[M, N]``."""
        raise NotImplementedError

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Eager overhead matters at decode time (one call per layer per token): the common case
        # (2-D, contiguous, compute dtype, no act-order) touches only plain attributes.
        if not self._prepared:
            raise QuantLinearError(f"layer {self.spec.name!r} ({self.name}) was not prepared: call post_load() after loading")
        if x.shape[-1] != self.in_features:
            raise QuantLinearError(
                f"layer {self.spec.name!r}: input has {x.shape[-1]} features (shape {tuple(x.shape)}), expected {self.in_features}"
            )
        if x.dim() == 2 and x.dtype == self._compute_dtype and not self._permutes and x.is_contiguous():
            y = self.compute(x)
            return y + self._buffers["bias"] if self._adds_bias else y
        out_dtype = x.dtype
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != self._compute_dtype:
            x2 = x2.to(self._compute_dtype)
        if self._permutes:
            x2 = x2.index_select(1, self._buffers["input_perm"])
        x2 = x2.contiguous()
        y = self.compute(x2)
        if self._adds_bias:
            y = y + self._buffers["bias"]
        return y.reshape(*x.shape[:-1], self.out_features).to(out_dtype)

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"kernel={self.name}, scheme={s.scheme.id}, format={s.format}, in_features={s.in_features}, "
            f"out_features={s.out_features}, bias={s.bias}, dtype={str(s.dtype).replace('torch.', '')}"
            + ("" if self._prepared else ", not prepared")
        )


def _check_symmetric_zeros(weights: IntWeights, spec: LayerSpec) -> None:
    """A layer the config calls symmetric must store the midpoint zero 2**(b-1) everywhere.

    Kernels may rely on it (sym kernels elsewhere ignore qzeros), so a config that says sym for an
    asymmetric checkpoint would silently give wrong outputs; refuse it instead.
    """
    if not spec.scheme.sym or not isinstance(weights, IntWeights):
        return
    mid = 1 << (spec.scheme.bits - 1)
    bad = weights.zeros != mid
    if bool(bad.any()):
        n, g = (int(i) for i in bad.nonzero()[0])
        raise CheckpointError(
            f"layer {spec.name!r}: the config says sym=True but tensor {spec.name}.qzeros holds zero point "
            f"{int(weights.zeros[n, g])} (output channel {n}, group {g}), not {mid}; the checkpoint is asymmetric"
        )


def _make_groups_contiguous(weights: IntWeights, spec: LayerSpec) -> tuple[IntWeights, torch.Tensor]:
    """Reorder input channels by group (act-order) so group g covers k in [g*gs, (g+1)*gs)."""
    g_idx = weights.g_idx
    perm = torch.argsort(g_idx.to(torch.int64), stable=True)
    sorted_g = g_idx.index_select(0, perm)
    trivial = torch.arange(spec.in_features, device=g_idx.device, dtype=sorted_g.dtype) // spec.group_size
    if not torch.equal(sorted_g, trivial):
        raise CheckpointError(
            f"layer {spec.name!r}: tensor {spec.name}.g_idx assigns unequal numbers of input channels to groups; "
            f"this kernel needs groups of exactly {spec.group_size}"
        )
    q = weights.qweight.index_select(1, perm)
    return IntWeights(q, weights.zeros, weights.scales, None), perm.to(torch.int64)
