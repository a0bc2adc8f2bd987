"""The int8 pre-check (issue 26): a size the packed kernel cannot take never reaches it. A stand-in kernel that
raises on such sizes (as the real one may, "returns garbage or crashes") makes the `% 16` rule observable."""

from __future__ import annotations

import pytest
import torch

from backend.kernels import int8_linear


def test_sizes_off_a_multiple_of_16_never_reach_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch._weight_int8pack_mm
    reached: list[int] = []

    def kernel(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        reached.append(int(x.shape[-1]))
        if x.shape[-1] % 16:
            raise RuntimeError(f"int8pack_mm: {x.shape[-1]} input features")
        return real(x, q, scales)

    monkeypatch.setattr(torch, "_weight_int8pack_mm", kernel)
    for k in (8, 24, 40, 12, 1, 17):
        assert int8_linear.supported(k) is False
    assert reached == []  # refused before any product
    assert int8_linear.supported(32) is True and reached == [32]
    model = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.Linear(32, 24))
    assert int8_linear.install(model) == 1  # the 24-input layer keeps float32, without a crash
    with torch.inference_mode():
        model(torch.randn(2, 24))
