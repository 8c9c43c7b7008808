"""divnet.torch: MLPs and a transformer FFN compressed from calibration batches through
forward hooks, against the numpy functions on the same activations."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed: the divnet.torch tests need it"
)
from torch import nn

import divnet
import divnet.torch as dt


def make_mlp(seed: int = 0, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(20, 32, bias=bias),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(32, 24, bias=bias),
        nn.GELU(),
        nn.Linear(24, 5, bias=bias),
    )


def numpy_state_dict(model: nn.Module) -> dict[str, np.ndarray]:
    return {name: t.detach().numpy().copy() for name, t in model.state_dict().items()}


@pytest.fixture
def calibration() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(300, 20)


@pytest.mark.parametrize("method", ["greedy", "kdpp"])
def test_mlp_is_divnet_compress(calibration, method):
    """Hooks on the torch model record what divnet.compress computes itself."""
    model = make_mlp()
    model[4] = nn.ReLU()  # divnet.compress applies one activation everywhere
    sd, report = dt.compress_mlp(model, calibration, k=[12, 9], method=method, seed=2)
    names = {"0": "fc1", "3": "fc2", "5": "fc3"}
    renamed = {
        f"{names[n.split('.')[0]]}.{n.split('.')[1]}": v for n, v in numpy_state_dict(model).items()
    }
    small, expected = divnet.compress(
        renamed, calibration.numpy(), k=[12, 9], method=method, seed=2, layers=["fc1", "fc2", "fc3"]
    )
    assert [l["kept"] for l in report["layers"]] == [l["kept"] for l in expected["layers"]]
    for torch_name, name in [
        ("0.weight", "fc1.weight"),
        ("3.weight", "fc2.weight"),
        ("3.bias", "fc2.bias"),
        ("5.weight", "fc3.weight"),
        ("5.bias", "fc3.bias"),
    ]:
        np.testing.assert_allclose(sd[torch_name].numpy(), small[name], rtol=1e-3, atol=1e-4)
    assert report["params_before"] == expected["params_before"]
    assert report["params_after"] == expected["params_after"]
    assert report["samples"] == 300 and [l["name"] for l in report["layers"]] == ["0", "3"]


def test_batches_are_streamed_one_at_a_time(calibration, monkeypatch):
    model = make_mlp()
    seen: list[int] = []
    as_chunk = dt._as_chunk

    def recording(x):
        chunk = as_chunk(x)
        seen.append(chunk.shape[0])
        return chunk

    monkeypatch.setattr(dt, "_as_chunk", recording)
    batches = [calibration[i : i + 50] for i in range(0, 300, 50)]
    sd_list, report = dt.compress_mlp(model, batches, k=10, method="greedy")
    assert seen == [50] * 12  # six batches per hidden layer, never the whole set
    assert report["samples"] == 300
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(calibration, torch.zeros(300)), batch_size=64
    )
    sd_loader, _ = dt.compress_mlp(model, loader, k=10, method="greedy")
    sd_tensor, _ = dt.compress_mlp(model, calibration, k=10, method="greedy", chunk_rows=100)
    for name in sd_list:
        torch.testing.assert_close(sd_loader[name], sd_list[name], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(sd_tensor[name], sd_list[name], rtol=1e-4, atol=1e-5)


def test_model_is_left_alone_and_compressed_loads(calibration):
    model = make_mlp()
    before = copy.deepcopy(model.state_dict())
    sd, report = dt.compress_mlp(model, calibration, keep_ratio=0.5, layers=["3"])
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])
    assert sd["3.weight"].shape == (12, 32) and sd["5.weight"].shape == (5, 12)
    assert sd["0.weight"].shape == (32, 20)
    small = dt.load_compressed(make_mlp(seed=9), sd)
    small.eval()
    for name, value in small.state_dict().items():
        assert torch.equal(value, sd[name])
    with torch.no_grad():
        assert small(calibration).shape == (300, 5)
    assert report["layers"][0]["index"] == 1


def test_bias_created_or_not(calibration):
    model = make_mlp(bias=False)
    sd, report = dt.compress_mlp(model, calibration, k=10)
    # Created to hold the fused constants, then sliced with the layer (3) or kept (5).
    assert sd["3.bias"].shape == (10,) and sd["5.bias"].shape == (5,)
    assert any("3.bias: created" in note for note in report["layers"][0]["notes"])
    sd, _ = dt.compress_mlp(model, calibration, k=10, fusion="fuse-no-bias")
    assert "3.bias" not in sd and "5.bias" not in sd


class SwiGLU(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d, hidden, bias=False)
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, d: int = 16, hidden: int = 40) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.ffn = SwiGLU(d, hidden)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(x + self.ffn(self.norm(x)))


def test_transformer_ffn(calibration):
    torch.manual_seed(3)
    model = Block()
    batches = [torch.randn(4, 25, 16) for _ in range(3)]  # (batch, sequence, features)
    layer = dt.Layer(prev=["ffn.gate", "ffn.up"], next="ffn.down")
    sd, report = dt.compress(model, [layer], batches, k=24, fusion="fuse-no-bias", seed=4)
    # The same activations by hand: every token is a sample.
    with torch.no_grad():
        x = model.norm(torch.cat(batches).reshape(-1, 16))
        a = (nn.functional.silu(model.ffn.gate(x)) * model.ffn.up(x)).numpy()
    weights = {f"ffn.{n}": w for n, w in numpy_state_dict(model.ffn).items()}
    small, expected = divnet.compress_layer(
        a,
        weights,
        next="ffn.down",
        prev=["ffn.gate", "ffn.up"],
        k=24,
        fusion="fuse-no-bias",
        seed=4,
    )
    assert report["layers"][0]["kept"] == expected["kept"]
    assert report["samples"] == 300 and report["layers"][0]["name"] == "ffn.gate,ffn.up"
    for name in ("ffn.gate.weight", "ffn.up.weight", "ffn.down.weight"):
        np.testing.assert_allclose(sd[name].numpy(), small[name], rtol=1e-3, atol=1e-4)
    assert "ffn.down.bias" not in sd and sd["ffn.down.weight"].shape == (16, 24)
    compressed = dt.load_compressed(Block(), sd)
    with torch.no_grad():
        full = model(torch.cat(batches))
        approx = compressed(torch.cat(batches))
    assert (approx - full).norm() / full.norm() < 0.5


def test_calibration_errors(calibration):
    model = make_mlp()
    with pytest.raises(divnet.InvalidInputError, match="iterator can be run only once"):
        dt.compress_mlp(model, iter([calibration]), k=10)
    with pytest.raises(divnet.InvalidInputError, match="is not a hidden Linear layer"):
        dt.compress_mlp(model, calibration, k=10, layers=["5"])
    with pytest.raises(divnet.InvalidInputError, match="2 k values given for 1 layers"):
        dt.compress_mlp(model, calibration, k=[10, 8], layers=["0"])
    with pytest.raises(divnet.InvalidInputError, match="BatchNorm1d"):
        dt.compress_mlp(
            nn.Sequential(nn.Linear(20, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)), calibration, k=4
        )
    unused = dt.Layer(prev="ffn.gate", next="head")
    with pytest.raises(
        divnet.FormatError, match=r"ffn.gate.weight has shape \[40, 16\], expected 16 rows"
    ):
        dt.compress(Block(), [unused], [torch.randn(5, 16)], k=4)
    with pytest.raises(divnet.InvalidInputError, match="cannot keep 99 of 32 neurons"):
        dt.compress_mlp(model, calibration, k=99)
