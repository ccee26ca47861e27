import torch

from tmem_agents.readout import ridge_r2, variance_share


def _features(noise: float, rows: int = 4000) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(rows, 6)``: a linear map of a 2-D target plus independent noise of std ``noise`` per feature."""
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(rows, 2, generator=generator)
    mixing = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, -1.0, 0.0, 0.0]])
    return target @ mixing + noise * torch.randn(rows, 6, generator=generator), target


def test_variance_share_is_the_explained_part_of_the_features_variance():
    features, target = _features(noise=0.0)
    assert abs(variance_share(features, target) - 1.0) < 1e-9
    features, target = _features(noise=1.0)
    # the target moves the features by variance 1 + 4 + 1 + 1 = 7, the noise by 6
    assert abs(variance_share(features, target) - 7 / 13) < 0.02
    assert abs(variance_share(features + 5.0, target) - variance_share(features, target)) < 1e-9


def test_a_quantity_can_be_readable_yet_move_little_of_the_features():
    features, target = _features(noise=0.0)
    loud = torch.cat(
        [features * 0.05, 3.0 * torch.randn(len(features), 10, generator=torch.Generator().manual_seed(1))], 1
    )
    assert ridge_r2(loud, target) > 0.99
    assert variance_share(loud, target) < 0.01
