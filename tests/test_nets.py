import pytest
import torch

from dml_core.nets import build_net


@pytest.mark.parametrize("name", ["mlp", "convnet"])
@pytest.mark.parametrize(("shape", "dim"), [((1, 8, 8), 2), ((1, 28, 28), 128), ((1, 28, 28), 512)])
def test_shapes_and_normalisation(name: str, shape: tuple[int, int, int], dim: int) -> None:
    images = torch.randint(0, 256, (5, *shape), dtype=torch.uint8)
    emb = build_net(name, shape, dim, normalize=True, mean=100, std=50)(images)
    assert emb.shape == (5, dim)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(5))
    raw = build_net(name, shape, dim, normalize=False)(images)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(5))


def test_convnet_matches_the_classic_mnist_embedder() -> None:
    net = build_net("convnet", (1, 28, 28), 128)
    linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(9216, 128)]


def test_unknown_net_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'net' parameter must be one of"):
        build_net("resnet", (1, 8, 8), 4)  # type: ignore[arg-type]


def test_macs_per_sample_counts_linear_and_convolution_work() -> None:
    from dml_core.nets import macs_per_sample

    conv = build_net("convnet", (1, 28, 28), 128)
    # conv1 26*26*32*9, conv2 24*24*64*32*9, linear 9216*128
    assert macs_per_sample(conv, (1, 28, 28)) == 26 * 26 * 32 * 9 + 24 * 24 * 64 * 288 + 9216 * 128
    mlp = build_net("mlp", (1, 8, 8), 32)
    assert macs_per_sample(mlp, (1, 8, 8)) == 64 * 256 + 256 * 256 + 256 * 32
