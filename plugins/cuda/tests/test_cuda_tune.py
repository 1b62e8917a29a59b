"""Launch-configuration table: buckets, defaults, candidates and the on-disk cache (no timing)."""

import json
import re
import warnings

import pytest
import torch

from quantlinear_cuda import tune
from quantlinear_cuda.device import DeviceProps

H100 = DeviceProps("NVIDIA H100 80GB HBM3", (9, 0), sm_count=132)
P = tune.Problem(bits=4, slab=32, group_size=128, has_zeros=False, dtype="float16", N=4096, K=14336)


def test_buckets():
    assert [tune.bucket(m) for m in (1, 2, 3, 5, 16, 17, 4096, 10000)] == [1, 2, 4, 8, 16, 32, 4096, 4096]


@pytest.mark.parametrize("M", [1, 2, 3, 8, 16, 33, 64, 100, 256, 4096, 8192])
def test_default_and_candidates_are_valid(M):
    cfgs = [tune.default_config(P, M, H100)] + tune.candidates(P, M, H100)
    assert tune.default_config(P, M, H100) == tune.default_config(P, M, H100)  # deterministic
    for c in cfgs:
        assert c["kernel"] in ("gemv", "gemv16", "dot", "dot16", "dqmm", "tc", "mmv", "wg")
        if c["kernel"] == "mmv":  # the tensor-core decode kernel: 16-row groups, M <= 16, K split over programs
            assert tune.bucket(M) <= 16 and c["R"] in (1, 2, 4) and c["warps"] in (4, 8)
            sp = c.get("split_k", 1)
            assert sp >= 1 and sp & (sp - 1) == 0 and P.k_tiles // sp >= 2
            continue
        if c["kernel"] == "dqmm":
            assert tune.bucket(M) >= 64
            continue
        if c["kernel"] == "wg":  # the Hopper prefill kernel: 128 weight rows, 64..256 tokens, one or two planes a step
            assert tune.bucket(M) >= 64 and c["BM"] in (64, 128, 256) and c["planes"] in (1, 2) and c["warps"] == 8
            assert c.get("maxnreg", 0) in (0, 128) and (c.get("maxnreg", 0) == 0 or c["BM"] == 64)
            assert tune.config_reason(P, c) is None
            assert 1 <= c["split_k"] <= min(8, P.k_tiles // 2)
            continue
        assert c["split_k"] >= 1 and c["split_k"] & (c["split_k"] - 1) == 0 and c["split_k"] <= 64
        if c["kernel"] == "tc":  # the large-M tensor-core kernel: whole k-steps of planes, tiles of >= 64 tokens
            assert tune.bucket(M) >= 64 and c["BM"] >= 64 and c["BN"] >= 64 and c["BK"] in (64, 128, 256)
        elif c["kernel"] in ("dot", "dot16"):
            assert c["BM"] >= 16 and c["BN"] >= 16
        elif c["kernel"] == "gemv16":  # one row per program, M = 1 only
            assert c.get("BM", 1) == 1 and tune.bucket(M) == 1
        else:
            assert c["BM"] >= tune.bucket(M) and c["BM"] <= 8
    kinds = {c["kernel"] for c in tune.candidates(P, M, H100)}
    # the GEMV/GEMM threshold is measured: small buckets offer both kernels to the tuner
    if 2 <= tune.bucket(M) <= 8:
        assert kinds == {"gemv", "dot", "dot16", "mmv"}
        assert tune.default_config(P, M, H100)["kernel"] == "mmv"
    if tune.bucket(M) == 16:  # mmv up to 16 rows
        assert kinds == {"dot", "dot16", "mmv"} and tune.default_config(P, M, H100)["kernel"] == "mmv"
    if tune.bucket(M) == 32:
        assert kinds == {"dot", "dot16"}
    if M >= 33:
        assert kinds == {"dot", "dot16", "dqmm", "tc", "wg"}  # dot16: 4-bit fp16 with groups of >= 4 slabs, as P
    if 33 <= M <= 1024:  # measured: wg beats dot / dot16, tc and dequantize-then-cuBLAS from M = 64 to 1024 (H100)
        assert tune.default_config(P, M, H100)["kernel"] == "wg"
    if M >= 2048:  # ... and loses to dequantize-then-cuBLAS from M = 4096
        assert tune.default_config(P, M, H100)["kernel"] == "dqmm"
    if M == 1:
        assert "mmv" in kinds  # offered to the tuner; the paired GEMV stays the default
        assert tune.default_config(P, M, H100)["kernel"] == "gemv16"
        assert tune.default_config(tune.Problem(8, 32, 128, False, "float16", 4096, 4096), 1, H100)["kernel"] == "gemv16"
        assert tune.default_config(tune.Problem(3, 32, 128, False, "float16", 4096, 4096), 1, H100)["kernel"] == "gemv"
        assert tune.default_config(tune.Problem(4, 32, 128, False, "bfloat16", 4096, 4096), 1, H100)["kernel"] == "gemv16"
        assert tune.default_config(tune.Problem(8, 32, 128, False, "bfloat16", 4096, 4096), 1, H100)["kernel"] == "gemv"


def test_bf16_paired_gemv_candidates():
    """bf16: the paired GEMV (2/4-bit) at M = 1 with both decodes (``pair: False``: the fp32 one); never dot16."""
    pb = tune.Problem(4, 32, 128, False, "bfloat16", 14336, 4096)
    assert tune.gemv16_fits(pb) and not tune.dot16_fits(pb) and not tune.gemv16_fits(tune.Problem(8, 32, 128, False, "bfloat16", 4096, 4096))
    c1 = tune.candidates(pb, 1, H100)
    assert {c["kernel"] for c in c1} == {"gemv16", "gemv", "dot", "mmv"}
    assert any(c.get("pair") is False for c in c1) and any(c["kernel"] == "gemv16" and "pair" not in c for c in c1)
    for M in (2, 16, 64, 256):
        assert not any(c["kernel"] in ("gemv16", "dot16") for c in tune.candidates(pb, M, H100))
    # the wide space (offline graph tuning) holds the default one and more split-K values per tile shape
    wide = tune.candidates(pb, 1, H100, wide=True)
    assert len(wide) > len(c1) and all(c in wide for c in c1 if c["kernel"] == "gemv16")
    assert len({c["split_k"] for c in wide if c["kernel"] == "gemv16" and c["BN"] == 64}) >= 4
    assert tune.candidates(pb, 16, H100, wide=True) == tune.candidates(pb, 16, H100)


def test_problem_key():
    assert P.key(16) == "w4|s32|g128|sym|float16|N4096|K14336|M16"
    per_channel = tune.Problem(8, 32, 4096, True, "bfloat16", 4096, 4096)
    assert per_channel.key(1) == "w8|s32|gch|asym|bfloat16|N4096|K4096|M1"


def test_env_switches(monkeypatch, tmp_path):
    monkeypatch.setenv(tune.ENV_TUNE, "0")
    assert not tune.tuning_enabled()
    monkeypatch.setenv(tune.ENV_TUNE, "1")
    assert tune.tuning_enabled()
    monkeypatch.setenv(tune.ENV_CACHE, "off")
    assert tune.cache_path("sm90") is None
    monkeypatch.setenv(tune.ENV_CACHE, str(tmp_path / "t.json"))
    assert tune.cache_path("sm90") == tmp_path / "t.json"
    monkeypatch.delenv(tune.ENV_CACHE)
    assert tune.cache_path("sm90").name == "cuda-tune-sm90.json"


def test_cache_roundtrip_and_precedence(monkeypatch, tmp_path):
    cache = tmp_path / "cuda-tune-sm90.json"
    shipped = tmp_path / "shipped-sm90.json"
    monkeypatch.setenv(tune.ENV_CACHE, str(cache))
    monkeypatch.setattr(tune, "shipped_path", lambda arch: shipped)
    monkeypatch.setattr(tune._device, "device_props", lambda d: H100)
    monkeypatch.setenv(tune.ENV_TUNE, "0")
    t = tune.Tuner()
    dev = torch.device("cuda", 0)
    # nothing anywhere: the heuristic
    assert t.get(dev, P, 16) == tune.default_config(P, 16, H100)
    # a shipped table entry wins over the heuristic
    mine = {"kernel": "dot", "BM": 16, "BN": 128, "split_k": 2, "warps": 4, "stages": 4, "swap": True, "scale_w": False, "group_m": 8}
    shipped.write_text(json.dumps({"version": tune.CACHE_VERSION, "configs": {P.key(16): {"config": mine}}}))
    t = tune.Tuner()
    assert t.get(dev, P, 9) == mine and t.lookup(H100, P, 16)[1] == "shipped"
    # the user cache wins over the shipped table, and a written cache reads back
    user_cfg = dict(mine, BN=64)
    t._table("sm90")[0][P.key(16)] = user_cfg
    t._write(H100)
    data = json.loads(cache.read_text())
    assert data["version"] == tune.CACHE_VERSION and data["arch"] == "sm90"
    t2 = tune.Tuner()
    assert t2.get(dev, P, 16) == user_cfg and t2.lookup(H100, P, 16)[1] == "cache"
    # a corrupt cache is ignored, not fatal
    cache.write_text("{not json")
    assert tune.Tuner().get(dev, P, 16) == mine


def test_bad_stored_configurations_are_skipped_with_a_warning(monkeypatch, tmp_path):
    """A hand-edited or corrupt cache entry (unknown kernel, a row-group count mmv cannot compile, a split of 0, a string
    where a number belongs, an entry that is no configuration) is skipped -- the shipped table or the heuristic
    answers -- with one warning naming the key; the good entries of the same file still count."""
    cache = tmp_path / "cuda-tune-sm90.json"
    monkeypatch.setenv(tune.ENV_CACHE, str(cache))
    monkeypatch.setattr(tune, "shipped_path", lambda arch: tmp_path / "none.json")
    monkeypatch.setattr(tune._device, "device_props", lambda d: H100)
    monkeypatch.setenv(tune.ENV_TUNE, "0")
    good = {"kernel": "mmv", "R": 2, "warps": 4, "pf": True, "split_k": 4}
    bad = {1: {"kernel": "gemv17", "BN": 64}, 2: dict(good, R=3), 4: dict(good, split_k=0), 8: dict(good, warps="4"),
           32: [1, 2]}
    configs = {P.key(b): {"config": c} for b, c in bad.items()}
    configs[P.key(16)] = {"config": good}
    cache.write_text(json.dumps({"version": tune.CACHE_VERSION, "configs": configs}))
    t = tune.Tuner()
    dev = torch.device("cuda", 0)
    for b in bad:
        with pytest.warns(RuntimeWarning, match=re.escape(f"configuration for {P.key(b)}:")):
            assert t.get(dev, P, b) == tune.default_config(P, b, H100)
    assert t.get(dev, P, 16) == good
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t.lookup(H100, P, 1)  # warned once per entry


def test_every_shipped_and_offered_configuration_passes_the_check():
    """The check must not reject what the tuner itself writes or ships: every entry of the shipped tables and every
    default and candidate of the int and float spaces over the benchmark shapes, M buckets and devices."""
    from pathlib import Path

    from quantlinear_cuda import fp_ops
    from quantlinear_triton import fp_tune
    from quantlinear_triton.fp_packing import E0M4, E2M1, E4M3, E4M3_NV, S_E4M3, S_E8M0, S_NONE

    tuned = Path(tune.__file__).parent / "tuned"
    for path in sorted(tuned.glob("*.json")):
        space = fp_ops.SPACE if path.name.startswith("fp-") else tune
        for key, entry in json.loads(path.read_text())["configs"].items():
            assert space.config_reason(None, entry["config"]) is None, (path.name, key, entry["config"])
    sm80 = DeviceProps("NVIDIA A100-SXM4-80GB", (8, 0), sm_count=108)
    for props in (H100, sm80):
        for K, N in ((4096, 4096), (4096, 14336), (28672, 8192)):
            for M in (1, 2, 4, 16, 64, 256, 4096):
                for bits, gs, dt in ((4, 128, "float16"), (8, 128, "bfloat16"), (2, 64, "float16"), (3, -1, "float16")):
                    p = tune.Problem(bits, 32, K if gs == -1 else gs, False, dt, N, K)
                    for c in [tune.default_config(p, M, props)] + tune.candidates(p, M, props):
                        assert tune.config_reason(p, c) is None, (p, M, c)
                for elem, sc, slab in ((E2M1, S_E8M0, 32), (E2M1, S_E4M3, 16), (E0M4, S_E8M0, 32), (E4M3_NV, S_NONE, 32),
                                       (E4M3, S_E8M0, 32)):
                    for dt in ("float16", "bfloat16"):
                        p = fp_tune.FPProblem(elem, sc, slab, 4 if elem in (E2M1, E0M4) else 8, dt, N, K)
                        for c in [fp_ops.SPACE.default_config(p, M, props)] + fp_ops.SPACE.candidates(p, M, props):
                            assert fp_ops.SPACE.config_reason(p, c) is None, (p, M, c)


def test_simulated_device_uses_defaults(monkeypatch, tmp_path):
    from quantlinear_cuda.device import INTERPRETER_PROPS

    monkeypatch.setattr(tune._device, "device_props", lambda d: INTERPRETER_PROPS)
    monkeypatch.setenv(tune.ENV_TUNE, "1")
    called = []
    cfg = tune.Tuner().get(torch.device("cpu"), P, 3, run=lambda c: called.append(c))
    assert cfg == tune.default_config(P, 3, INTERPRETER_PROPS) and called == []


def test_dqmm_can_be_forbidden(monkeypatch):
    monkeypatch.setenv(tune.ENV_DQMM, "0")
    assert all(c["kernel"] != "dqmm" for c in tune.candidates(P, 4096, H100))
    # without dequantize-then-cuBLAS, the Hopper prefill kernel (wg: 1.08-1.19x cuBLAS at M = 4096 on an H100), else tc
    assert tune.default_config(P, 4096, H100, allow_dqmm=False)["kernel"] == "wg"
    assert tune.default_config(P, 4096, DeviceProps("A100", (8, 0), sm_count=108), allow_dqmm=False)["kernel"] == "tc"
    p6 = tune.Problem(6, 32, 128, False, "float16", 4096, 4096)  # 6-bit codes: no tc (5 planes a word), the register dot
    assert tune.default_config(p6, 4096, H100, allow_dqmm=False)["kernel"] == "dot"
    monkeypatch.setenv(tune.ENV_DQMM, "1")
    assert tune.default_config(P, 4096, H100)["kernel"] == "dqmm"
    assert any(c["kernel"] == "dqmm" for c in tune.candidates(P, 4096, H100))


def test_gtune_stage_smoke(monkeypatch, tmp_path):
    """benchmarks/int_perf.py's graph tuning end to end on CPU through the interpreter (tiny shape, a stand-in timer,
    three candidates per key), its compile worker, and the merge into a copy of the shipped table."""
    import random
    import sys
    from pathlib import Path

    from cuda_testutil import GPU

    if GPU:
        pytest.skip("on a GPU the stage is the benchmark itself")
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        import int_perf
    finally:
        sys.path.pop(0)
    from quantlinear_cuda import device as dev

    monkeypatch.setattr(int_perf, "DEV", "cpu")
    monkeypatch.setattr(int_perf, "GT_SHAPES", ((512, 64),))
    monkeypatch.setattr(int_perf, "GT_KINDS", ((4, "bfloat16"), (8, "float16")))
    rnd = random.Random(0)
    monkeypatch.setattr(int_perf, "_copies", lambda p: 2)
    monkeypatch.setattr(int_perf, "_GT_TIMER", lambda fns, target_ms, settle_ms=0.0: [f() for f in fns] and rnd.uniform(5, 15))
    monkeypatch.setattr(dev, "device_props", lambda d: H100)
    full = tune.candidates
    monkeypatch.setattr(tune, "candidates", lambda p, M, props, wide=False: full(p, M, props, wide)[:3])
    lines = int_perf.stage_gtune(tmp_path, "M1$", 1e9, 0, [])
    res = json.loads((tmp_path / "gtune.json").read_text())
    assert len(lines) == 2 and set(res["configs"]) == {"w4|s32|g128|sym|bfloat16|N64|K512|M1", "w8|s32|g128|sym|float16|N64|K512|M1"}
    for v in res["configs"].values():
        assert v["best_us"] == min(t for _, t in v["measured"]) and v["err"] < 1e-4 and v["config"]["kernel"] == "gemv16"
    (tmp_path / "w.json").write_text(json.dumps([[k, v["config"]] for k, v in res["configs"].items()]))
    assert int_perf.gtune_worker(str(tmp_path / "w.json")) == 0
    # resumed keys are not measured again
    assert int_perf.stage_gtune(tmp_path / "again", "M1$", 1e9, 0, [str(tmp_path / "gtune.json")]) == []
    # with a settle (each candidate at its steady clock under the power limit) every timing gets it, and the table says so
    seen = []
    monkeypatch.setattr(int_perf, "_GT_TIMER", lambda fns, target_ms, settle_ms=0.0: seen.append(settle_ms) or 7.0)
    (tmp_path / "settled").mkdir()
    int_perf.stage_gtune(tmp_path / "settled", "M1$", 1e9, 0, [], settle_ms=100.0)
    assert seen and set(seen) == {100.0}
    assert "after 100 ms of untimed replays" in json.loads((tmp_path / "settled" / "gtune.json").read_text())["timing"]
    table = tmp_path / "sm90.json"
    table.write_text(tune.shipped_path("sm90").read_text())
    int_perf.merge_gtune([str(tmp_path / "gtune.json")], table)
    merged = json.loads(table.read_text())
    key = "w4|s32|g128|sym|bfloat16|N64|K512|M1"
    assert merged["configs"][key]["config"] == res["configs"][key]["config"] and "Graph-timed entries" in merged["note"]
    assert len(merged["configs"]) == len(json.loads(tune.shipped_path("sm90").read_text())["configs"]) + 2
    # a merge of other M values (--gtune-ms) adds its own note beside the M = 1 / 16 one; merging them again replaces it
    big = dict(res, configs={"w4|s32|g128|sym|float16|N64|K512|M256": dict(best_us=1.0, config={"kernel": "wg", "BM": 256},
                                                                            measured=[["kernel=wg", 1.0]])})
    (tmp_path / "big.json").write_text(json.dumps(big))
    for _ in range(2):
        int_perf.merge_gtune([str(tmp_path / "big.json")], table)
        note = json.loads(table.read_text())["note"]
        assert note.count("Graph-timed entries (M = 256):") == 1 and note.count("Graph-timed entries:") >= 1


def test_mmv_is_offered_only_where_it_runs():
    """The tensor-core decode kernel: 4-bit (fp16 / bf16) or 8-bit (fp16) codes with 128-multiple groups on a real
    sm_80+ GPU (not the interpreter)."""
    from quantlinear_cuda.device import INTERPRETER_PROPS

    def offered(p, props, M=4):
        return any(c["kernel"] == "mmv" for c in tune.candidates(p, M, props))

    A100 = DeviceProps("NVIDIA A100", (8, 0), sm_count=108)
    T4 = DeviceProps("Tesla T4", (7, 5), sm_count=40)
    assert offered(P, H100) and offered(P, A100)
    assert not offered(P, T4) and not offered(P, INTERPRETER_PROPS)
    assert tune.default_config(P, 4, T4)["kernel"] == "dot16"
    # the default: 4 warps of 16 rows per program, K split to about 2 programs per SM
    for M in (2, 8, 16):
        assert tune.default_config(P, M, H100) == {"kernel": "mmv", "R": 1, "warps": 4, "pf": True, "split_k": 8}  # 64 x 8
    assert tune.default_config(tune.Problem(4, 32, 128, False, "float16", 28672, 8192), 4, H100)["split_k"] == 1
    assert offered(tune.Problem(4, 32, 128, False, "bfloat16", 4096, 4096), H100)  # the bf16 MMA
    assert tune.default_config(tune.Problem(4, 32, 128, False, "bfloat16", 4096, 4096), 8, H100)["kernel"] == "mmv"
    for other in (tune.Problem(4, 32, 64, False, "float16", 4096, 4096),   # groups of 64: the pair's halves differ
                  tune.Problem(4, 32, 384, False, "float16", 4096, 4608),  # 3 x 128: not a shift
                  tune.Problem(4, 32, 128, False, "float32", 4096, 4096),
                  tune.Problem(8, 32, 128, False, "bfloat16", 4096, 4096),  # 8-bit: fp16 only
                  tune.Problem(8, 32, 128, False, "float16", 4096, 1152),   # 8-bit: an odd number of slabs
                  tune.Problem(2, 32, 128, False, "float16", 4096, 4096),
                  tune.Problem(4, 16, 128, False, "float16", 4096, 4096)):
        assert not offered(other, H100), other
    w8 = tune.Problem(8, 32, 128, False, "float16", 4096, 14336)
    assert offered(w8, H100) and tune.default_config(w8, 4, H100)["kernel"] == "mmv"
    assert tune.default_config(w8, 4, H100)["split_k"] <= tune.mmv_steps(w8) // 2 == 28  # 256-channel steps
    assert offered(tune.Problem(4, 32, 4096, True, "float16", 1024, 4096), H100)  # one group per row
    assert offered(tune.Problem(4, 32, 512, True, "float16", 1024, 4096), H100)
    assert not offered(P, H100, M=17)


def test_the_decode_tuner_offers_ks_with_hoisted_activations_at_one_or_two_rows():
    """``mmv`` with the warps splitting K, a step's activation loads first and a register budget (it won 4096 x 4096
    at M = 1 / 2): offered for 4-bit codes at M <= 2 only, where ``ks`` itself runs."""
    def xh(p, M):
        return [c for c in tune.mmv_candidates(p, M, 132) if c.get("xh") and not c.get("early")]

    got = xh(P, 1)
    assert [(c["maxnreg"], c["pf"]) for c in got] == [(128, True), (96, False), (128, False)]  # (the first: ks's own)
    assert all(c["ks"] and c["warps"] == 8 and c["split_k"] == 1 for c in got)
    assert all(tune._tune.config_reason(c) is None for c in got)
    assert xh(P, 2) == got[1:] and not xh(P, 16)
    assert not xh(tune.Problem(8, 32, 128, False, "float16", 4096, 4096), 1)  # 8-bit steps: no ks


def test_the_decode_tuner_offers_evict_first_at_two_token_tiles_and_ks_prefetch_at_one_row():
    """M = 9..16 (activations staged in shared memory): every row-split candidate again with evict_first weight loads,
    and the 4-warp default without the prefetch; M = 1: 8 warps splitting K with the next step's words a step ahead."""
    m16 = tune.mmv_candidates(P, 16, 132)
    plain = [c for c in m16 if not c.get("ef")]
    assert plain and all(not c.get("ks") for c in m16)
    assert [dict(c, ef=True) for c in plain] == [c for c in m16 if c.get("ef")]
    assert any(not c["pf"] and c["warps"] == 4 and c["R"] == 1 for c in plain)
    assert not any(c.get("ef") for c in tune.mmv_candidates(P, 8, 132))  # one token tile: always evict_first
    m1 = tune.mmv_candidates(P, 1, 132)
    assert {"kernel": "mmv", "R": 1, "warps": 8, "pf": True, "split_k": 1, "ks": True} in m1
    assert all(tune._tune.config_reason(c) is None for c in m16 + m1)


@pytest.mark.parametrize("M", [1, 16])
def test_the_fastest_decode_configurations_are_measured_again_starting_on_their_weights_early(M):
    """``early`` 1 (the first step's words loaded before the grid-dependency wait) and 2 (prefetched into L2) won or
    lost by configuration on an H100, always as twins of the fastest plain ones: the tuner's second round measures
    both twins of the three fastest mmv configurations of the first, not of every candidate."""
    first = tune.mmv_candidates(P, M, 132)
    assert not any(c.get("early") for c in first)
    ranked = [{"kernel": "gemv16", "BM": 1, "BN": 64, "split_k": 4, "warps": 4, "stages": 3}] + first[::-1]
    got = tune.refine(ranked)
    assert got[:6] == [dict(c, early=e) for c in first[::-1][:3] for e in (1, 2)]
    assert all(tune._tune.config_reason(c) is None for c in got)
    assert tune._tune.config_reason(dict(first[0], early=3)) == "early=3 is outside [0, 2]"



def test_the_fastest_split_configurations_are_measured_again_as_clusters_where_the_device_takes_them():
    """The second round also measures the ``cl`` twins (a split over programs as one thread-block cluster) of the three
    fastest configurations that split K over programs, and the fastest's at splits 2, 3, 4 and 8 -- where the device
    runs clusters only (never on this CPU-only machine)."""
    first = tune.mmv_candidates(P, 16, 132)
    ranked = first[::-1]
    assert not any(c.get("cl") for c in tune.refine(ranked))  # no CUDA device here: no cluster twins
    got = tune._tune.mmv_refine(ranked, clusters=True)
    cl = [c for c in got if c.get("cl") and not c.get("maxnreg")]
    split = [c for c in ranked if c["split_k"] > 1]
    assert cl[:3] == [dict(c, cl=True) for c in split[:3]]
    assert {c["split_k"] for c in cl if {**c, "split_k": 0} == {**ranked[0], "split_k": 0, "cl": True}} >= {2, 3, 4, 8}
    assert len(cl) == len({json.dumps(c, sort_keys=True) for c in cl}) and not any(c.get("early") for c in cl)
    assert all(tune._tune.config_reason(c) is None for c in got)

@pytest.mark.parametrize("M", [2, 16])
def test_the_fastest_row_splits_are_measured_again_under_a_register_budget(M):
    """With the next step's words a step ahead (``pf``) at two token tiles the compile keeps to 96 registers and
    spills; given ``maxnreg`` 128 it does not, and the prefetch won (H100: 14336 x 4096 M = 16 20.0 -> 17.2 us).  The
    second round measures the budget twins -- with and without ``pf`` -- of the two fastest row splits of the first,
    the fastest's with ``early`` 2 besides, and (on a device with clusters) the cluster twins of those that split K."""
    first = [c for c in tune.mmv_candidates(P, M, 132) if not c.get("ks")]
    ranked = [{"kernel": "gemv16", "BM": 1, "BN": 64, "split_k": 4, "warps": 4, "stages": 3}] + first[::-1]
    a, b = first[::-1][:2]
    got = tune.refine(ranked)
    budget = [c for c in got if c.get("maxnreg") == 128]
    assert budget == tune._tune.unique([dict(a, maxnreg=128), dict(a, pf=True, maxnreg=128), dict(b, maxnreg=128),
                                        dict(b, pf=True, maxnreg=128), dict(a, pf=True, maxnreg=128, early=2)])
    clustered = tune._tune.mmv_refine(ranked, clusters=True)
    assert dict(a, pf=True, maxnreg=128, cl=True) in clustered or a.get("split_k", 1) == 1
    assert all(tune._tune.config_reason(c) is None for c in got + clustered)


@pytest.mark.parametrize("cap,M,kernel", [((9, 0), 256, "wg"), ((9, 0), 128, "wg"), ((9, 0), 64, "wg"), ((9, 0), 32, "dot16"),
                                          ((8, 0), 256, "tc"), ((8, 9), 512, "tc"), ((10, 0), 256, "tc"),
                                          ((12, 0), 256, "tc")])
def test_the_prefill_kernel_is_hoppers_alone(cap, M, kernel):
    """wgmma exists on sm_90 only: Ampere, Ada and Blackwell keep the tc kernel at large M."""
    props = DeviceProps("gpu", cap, sm_count=132)
    assert tune.default_config(P, M, props)["kernel"] == kernel
    assert ("wg" in {c["kernel"] for c in tune.candidates(P, M, props)}) == (cap == (9, 0) and M > 32)


@pytest.mark.parametrize("bits,group,dtype,K", [(8, 128, "float16", 4096), (4, 32, "float16", 4096),
                                                (4, 64, "bfloat16", 4096), (4, 128, "float32", 4096),
                                                (4, 128, "float16", 4100), (4, 384, "float16", 4608)])
def test_layers_wg_does_not_take_keep_the_other_kernels(bits, group, dtype, K):
    """8-bit codes, groups that are not 128 x 2^k, fp32 activations, K not a multiple of 8: no wg."""
    p = tune.Problem(bits=bits, slab=32, group_size=group, has_zeros=False, dtype=dtype, N=4096, K=K)
    assert not tune.wg_fits(p, H100)
    assert tune.default_config(p, 256, H100)["kernel"] != "wg"
    assert "wg" not in {c["kernel"] for c in tune.candidates(p, 256, H100)}


def test_a_stored_wg_configuration_outside_its_tiles_is_refused():
    """A hand-edited table entry the generic checks pass (BM = 512 is a power of two) but wg cannot launch is a reason
    to skip the entry, not an error in the middle of a forward."""
    assert tune.config_reason(P, {"kernel": "wg", "BM": 512}) == "kernels_wg: no configuration BM=512 planes=1 warps=8"
    assert "planes" in tune.config_reason(P, {"kernel": "wg", "BM": 256, "planes": 3})
    assert tune.config_reason(P, tune.wg_config(P, 256, 132)) is None


def test_wg_splits_k_where_its_tiles_do_not_cover_the_gpu():
    wide = tune.Problem(bits=4, slab=32, group_size=128, has_zeros=False, dtype="float16", N=14336, K=4096)
    assert tune.wg_config(wide, 256, 132) == {"kernel": "wg", "BM": 256, "warps": 8, "stages": 4, "planes": 1, "group_m": 8,
                                              "split_k": 1}  # 112 tiles
    assert tune.wg_config(P, 256, 132)["split_k"] == 4  # N = 4096: 32 tiles
    assert tune.wg_config(P, 128, 132) == {"kernel": "wg", "BM": 128, "warps": 8, "stages": 4, "planes": 2, "group_m": 8,
                                           "split_k": 4}
    short = tune.Problem(bits=4, slab=32, group_size=128, has_zeros=False, dtype="float16", N=1024, K=512)
    assert tune.wg_config(short, 256, 132)["split_k"] == 1  # two k tiles: nothing to split
    assert tune.wg_config(P, 64, 132)["BM"] == 64 and tune.wg_config(P, 64, 132)["planes"] == 2
