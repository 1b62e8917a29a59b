"""quantlinear Huawei Ascend NPU plugin: weight-only int4/int8 matmuls through
``torch_npu.npu_weight_quant_batchmatmul``.  Registered through the entry point
``quantlinear.plugins: npu``.

Importing this package imports neither ``torch_npu`` nor anything from CANN.

Verification status: written against the torch_npu / op-plugin sources and docs named in
``README.md`` and tested only against a faithful fake of that API (``tests/fake_torch_npu.py``);
nothing here has run on an Ascend device yet.
"""

__version__ = "0.1.0"
