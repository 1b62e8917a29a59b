"""Per-device scratch buffers: handed out as they are while long enough, grown outside graph capture, never freed."""

import torch

from quantlinear_triton.device_buffers import GrowingBuffers

CPU = torch.device("cpu")


def doubling(capture: dict | None = None) -> GrowingBuffers:
    """Buffers doubling from 8; ``capture["on"]`` plays a graph capture in progress."""
    capture = capture if capture is not None else {"on": False}
    return GrowingBuffers(lambda n, device: torch.zeros(n, device=device), lambda need, old: max(need, 8, 2 * old),
                          lambda key, device: capture["on"])


def test_a_buffer_long_enough_is_handed_out_again():
    bufs = doubling()
    a = bufs.get("cpu", 5, CPU)
    assert a.shape == (8,)  # the minimum size
    assert bufs.get("cpu", 8, CPU) is a and bufs.retired == []


def test_a_longer_request_grows_the_buffer_and_keeps_the_old_one_alive():
    bufs = doubling()
    a = bufs.get("cpu", 5, CPU)
    b = bufs.get("cpu", 9, CPU)
    assert b.shape == (16,) and bufs.current["cpu"] is b  # max(need, 2 x old)
    assert bufs.retired == [a]  # a graph captured with ``a`` still uses it
    assert {t.data_ptr() for t in bufs.tensors()} == {a.data_ptr(), b.data_ptr()}


def test_no_buffer_grows_while_a_graph_is_captured():
    capture = {"on": False}
    bufs = doubling(capture)
    a = bufs.get("cpu", 4, CPU)
    capture["on"] = True
    assert bufs.get("cpu", 4, CPU) is a  # long enough: fine during capture
    assert bufs.get("cpu", 100, CPU) is None  # the caller makes a temporary
    assert bufs.current["cpu"] is a and bufs.retired == []


def test_each_key_has_its_own_buffer():
    bufs = doubling()
    assert bufs.get(0, 4, CPU) is not bufs.get(1, 4, CPU)
    assert len(bufs.tensors()) == 2
