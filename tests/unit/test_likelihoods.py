"""Likelihoods: nll values against torch.distributions, tabular layout handling."""

import math
import re

import pyarrow as pa
import pytest
import torch
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Normal

from vae_core.data.layout import layout_from_widths
from vae_core.errors import ConfigError, InternalError
from vae_core.models.likelihoods import Bernoulli, Gaussian, MixedTabular


def test_bernoulli_nll_matches_torch_distribution():
    logits, x = torch.randn(4, 6), torch.bernoulli(torch.full((4, 6), 0.5))
    expected = -TorchBernoulli(logits=logits).log_prob(x).sum(-1)
    assert torch.allclose(Bernoulli().nll(logits, x), expected, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.5, None])
def test_gaussian_nll_matches_torch_distribution(sigma):
    lik = Gaussian(6, sigma)
    mean, x = torch.randn(4, 6), torch.randn(4, 6)
    std = sigma if sigma is not None else 1.0
    expected = -Normal(mean, std).log_prob(x).sum(-1)
    assert torch.allclose(lik.nll(mean, x), expected, atol=1e-5)
    assert (sigma is None) == any(p is lik.log_sigma for p in lik.parameters())


def test_mixed_tabular_nll_is_gaussian_plus_cross_entropy():
    layout = layout_from_widths([("continuous", 1), ("categorical", 3), ("continuous", 1)])
    lik = MixedTabular(layout)
    params = torch.randn(2, 5)
    x = torch.tensor([[0.3, 0.0, 1.0, 0.0, -1.2], [1.0, 1.0, 0.0, 0.0, 0.1]])
    sigma = math.exp(lik.log_sigma[0].item())
    cont = -Normal(params[:, [0, 4]], sigma).log_prob(x[:, [0, 4]]).sum(-1)
    ce = torch.nn.functional.cross_entropy(params[:, 1:4], x[:, 1:4].argmax(-1), reduction="none")
    assert torch.allclose(lik.nll(params, x), cont + ce, atol=1e-5)


def test_mixed_tabular_nll_over_blocks_of_different_widths_with_one_unobserved():
    """Several categorical blocks (widths 2, 5, 3) scored in one segmented pass: each is the cross-entropy
    of its own slots, an all-zero block (nothing observed) adds nothing, and the gradients are those of
    the per-block sum."""
    layout = layout_from_widths(
        [("categorical", 2), ("continuous", 1), ("categorical", 5), ("categorical", 3)]
    )
    lik = MixedTabular(layout)
    params = torch.randn(3, 11, requires_grad=True)
    x = torch.zeros(3, 11)
    x[:, 2] = torch.tensor([0.5, -0.1, 2.0])
    for row, (a, b, c) in enumerate([(0, 3, 8), (1, 7, 10), (1, None, 9)]):  # row 2: block 2 unobserved
        x[row, [i for i in (a, b, c) if i is not None]] = 1.0
    sigma = math.exp(lik.log_sigma[0].item())
    expected = -Normal(params[:, 2], sigma).log_prob(x[:, 2])
    for start, stop in ((0, 2), (3, 8), (8, 11)):
        block = x[:, start:stop]
        ce = torch.nn.functional.cross_entropy(params[:, start:stop], block.argmax(-1), reduction="none")
        expected = expected + ce * block.sum(-1)  # an all-zero block: 0
    got = lik.nll(params, x)
    torch.testing.assert_close(got, expected)
    (grad,) = torch.autograd.grad(got.sum(), params)
    (expected_grad,) = torch.autograd.grad(expected.sum(), params)
    torch.testing.assert_close(grad, expected_grad)
    # Continuous columns only: no categorical pass at all.
    only = MixedTabular(layout_from_widths([("continuous", 2)]))
    assert only.nll(torch.zeros(1, 2), torch.zeros(1, 2)).shape == (1,)


def test_mixed_tabular_sample_is_one_hot_per_block():
    layout = layout_from_widths([("categorical", 4), ("continuous", 1)])
    s = MixedTabular(layout).sample(torch.randn(50, 5), torch.Generator().manual_seed(0))
    assert torch.equal(s[:, :4].sum(-1), torch.ones(50))
    assert set(s[:, :4].unique().tolist()) <= {0.0, 1.0}


def test_bad_layout_is_refused():
    with pytest.raises(InternalError, match="bad layout"):
        layout_from_widths([("ordinal", 2)])
    with pytest.raises(InternalError, match="non-empty"):
        MixedTabular([])


def _data(root, vector: str | None, **data) -> dict:
    return {"uri": str(root), "vector_column": vector, **({"vector_dim": 3} if vector else {}), **data}


def _pq_dataset(root, columns: dict) -> None:
    import pyarrow.parquet as pq

    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        pq.write_table(pa.table(columns), root / split / "part-0.parquet")


TABLE = {"id": list(range(40)), "age": [20.0 + i for i in range(40)], "city": ["a", "b"] * 20}


@pytest.mark.parametrize(
    ("columns", "vector", "scale", "expected"),
    [
        (TABLE, None, 1.0, "tabular"),  # a table -> the mixed tabular likelihood
        ({"id": list(range(8)), "x": [[0, 255, 3]] * 8}, "x", 255.0, "bernoulli"),  # pixels / 255 in [0, 1]
        ({"id": list(range(8)), "x": [[-2.5, 0.5, 9.0]] * 8}, "x", 1.0, "gaussian"),  # other floats
    ],
)
def test_the_default_likelihood_follows_the_data(tmp_path, columns, vector, scale, expected):
    from vae_core.config import VaeflowConfig
    from vae_core.distributed.trainer import prepare_data
    from vae_core.models.families import DataShape, build_model

    _pq_dataset(tmp_path, columns)
    cfg = VaeflowConfig.model_validate({"data": _data(tmp_path, vector, scale=scale)})
    assert cfg.model.likelihood == "auto"
    lines: list[str] = []
    *_, codec = prepare_data(cfg, lines.append)
    assert f"{expected} likelihood" in lines[-1]
    kind = {"tabular": MixedTabular, "bernoulli": Bernoulli, "gaussian": Gaussian}[expected]
    assert isinstance(build_model(cfg.model, DataShape.of(codec)).likelihood, kind)


@pytest.mark.parametrize(
    ("columns", "vector", "likelihood", "named"),
    [
        (TABLE, None, "bernoulli", "table columns"),
        (TABLE, None, "gaussian", "table columns"),
        ({"id": list(range(8)), "x": [[-2.5, 0.5, 9.0]] * 8}, "x", "bernoulli", "features outside [0, 1]"),
        ({"id": list(range(8)), "x": [[0.0, 0.5, 1.0]] * 8}, "x", "tabular", "features in [0, 1]"),
    ],
)
def test_an_explicit_likelihood_that_does_not_fit_the_data_is_refused(
    tmp_path, columns, vector, likelihood, named
):
    from vae_core.config import VaeflowConfig
    from vae_core.distributed.trainer import prepare_data

    _pq_dataset(tmp_path, columns)
    cfg = VaeflowConfig.model_validate({"data": _data(tmp_path, vector), "model": {"likelihood": likelihood}})
    with pytest.raises(
        ConfigError, match=rf"model.likelihood '{likelihood}' does not fit this data, {re.escape(named)}"
    ):
        prepare_data(cfg, lambda m: None)


def test_gaussian_may_be_chosen_for_features_in_the_unit_interval(tmp_path):
    from vae_core.config import VaeflowConfig
    from vae_core.distributed.trainer import prepare_data

    _pq_dataset(tmp_path, {"id": list(range(8)), "x": [[0.0, 0.5, 1.0]] * 8})
    cfg = VaeflowConfig.model_validate({"data": _data(tmp_path, "x"), "model": {"likelihood": "gaussian"}})
    lines: list[str] = []
    prepare_data(cfg, lines.append)
    assert "gaussian likelihood" in lines[-1]
