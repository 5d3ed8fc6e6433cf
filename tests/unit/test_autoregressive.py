"""model.decoder=autoregressive: each column's params see only z and the columns before it, rows are drawn
column by column, a relation between columns that z does not carry is kept, checkpoints round-trip."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from vae_core.config import ModelConfig, VaeflowConfig
from vae_core.data.codecs.table import TabularCodec
from vae_core.data.layout import Block
from vae_core.data.tabular import TabularTransformer
from vae_core.errors import ConfigError
from vae_core.models.families import DataShape, build_model
from vae_core.training.checkpoints import load_checkpoint, save_checkpoint
from vae_core.training.inference import generate
from vae_core.training.loop import KLSchedule, fit

# Four columns: a continuous one (value + bin blocks), a categorical one, a continuous one with a null
# flag (three blocks), a categorical one: the decoder orders by column, not by block.
LAYOUT = [
    Block("continuous", 0, 1, 0),
    Block("categorical", 1, 3, 0),
    Block("categorical", 4, 4, 1),
    Block("continuous", 8, 1, 2),
    Block("categorical", 9, 2, 2),
    Block("categorical", 11, 2, 2),
    Block("categorical", 13, 2, 3),
]
COLUMNS = [(0, 4), (4, 8), (8, 13), (13, 15)]  # each column's slots


def _model(**kw) -> torch.nn.Module:
    cfg = ModelConfig(hidden=[32, 16], latent_dim=4, decoder="autoregressive", **kw)
    return build_model(cfg, DataShape(15, None, LAYOUT, "tabular"))


def test_a_columns_params_depend_on_the_columns_before_it_only():
    torch.manual_seed(0)
    model = _model()
    z, x = torch.randn(6, 4), torch.randn(6, 15)
    params = model.decode(z, x)
    for c, (start, stop) in enumerate(COLUMNS):
        later = x.clone()
        later[:, start:] = torch.randn(6, 15 - start)  # this column and every one after it changed
        again = model.decode(z, later)
        assert torch.equal(again[:, start:stop], params[:, start:stop]), f"column {c}"
        if c + 1 < len(COLUMNS):  # and a later column does see it
            assert not torch.allclose(again[:, stop:], params[:, stop:])
        if c > 0:  # while the column itself sees the ones before it
            earlier = x.clone()
            earlier[:, :start] = torch.randn(6, start)
            assert not torch.allclose(model.decode(z, earlier)[:, start:stop], params[:, start:stop])


def test_drawn_rows_are_one_hot_per_block_reproducible_and_scored_by_their_own_params():
    torch.manual_seed(0)
    model = _model().eval()
    z = torch.randn(200, 4)
    with torch.no_grad():
        x = model.draw(z, True, torch.Generator().manual_seed(3))
        assert torch.equal(x, model.draw(z, True, torch.Generator().manual_seed(3)))
        for b in LAYOUT:
            if b.kind == "categorical":
                block = x[:, b.start : b.stop]
                assert torch.equal(block.sum(1), torch.ones(200)) and set(block.unique().tolist()) == {0, 1}
        # The mean path: every column at its mode given the modes before it, and decode(z) without x
        # gives the params that row was decoded from.
        mean = model.draw(z, False)
        modes = model.decode(z)
        assert torch.equal(modes, model.decode(z, _argmax_rows(mean)))
        assert torch.equal(mean, model.likelihood.mean(modes))


def _argmax_rows(mean: torch.Tensor) -> torch.Tensor:
    x = mean.clone()
    for b in LAYOUT:
        if b.kind == "categorical":
            x[:, b.start : b.stop] = torch.nn.functional.one_hot(
                mean[:, b.start : b.stop].argmax(1), b.width
            ).float()
    return x


def _xor_table(n: int) -> pa.Table:
    """c = a XOR b, a and b fair coins: no column is predictable from any one other column, so a model
    whose decoder treats the columns as independent given z must carry all three bits in z."""
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    names = np.array(["no", "yes"])
    return pa.table({"a": names[a], "b": names[b], "c": names[a ^ b]})


@pytest.mark.parametrize("decoder", ["factorized", "autoregressive"])
def test_a_relation_z_does_not_carry_is_kept_by_the_autoregressive_decoder_only(decoder):
    table = _xor_table(2000)
    codec = TabularCodec(TabularTransformer.fit([table], [], ["a", "b", "c"], table.schema))
    x = torch.as_tensor(codec.encode(table, "train"))
    cfg = ModelConfig(hidden=[32], latent_dim=2, decoder=decoder)
    torch.manual_seed(0)
    model = build_model(cfg, DataShape.of(codec))
    batches = [x[i : i + 100] for i in range(0, len(x), 100)]
    # A heavy KL weight keeps z nearly empty: what is kept between columns, the decoder keeps.
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    fit(model, batches, epochs=30, optimizer=optimizer, schedule=KLSchedule(4.0))
    rows = codec.decode(generate(model, 2000, seed=1, sample_likelihood=True).numpy())
    a, b, c = (np.array(rows[k].to_pylist()) for k in "abc")
    kept = np.mean((a != b) == (c == "yes"))
    if decoder == "autoregressive":
        assert kept > 0.97
    else:
        assert kept < 0.8  # the factorised decoder with an empty z: c independent of a and b


def test_the_autoregressive_decoder_round_trips_through_a_checkpoint(tmp_path):
    table = _xor_table(64)
    codec = TabularCodec(TabularTransformer.fit([table], [], ["a", "b", "c"], table.schema))
    cfg = VaeflowConfig(model=ModelConfig(hidden=[8], latent_dim=2, decoder="autoregressive"))
    model = build_model(cfg.model, DataShape.of(codec))
    save_checkpoint(str(tmp_path), model, cfg, codec)
    ck = load_checkpoint(str(tmp_path))
    assert ck.model.is_autoregressive and ck.config.model.decoder == "autoregressive"
    x = generate(model, 50, seed=2, sample_likelihood=True)
    assert torch.equal(x, generate(ck.model, 50, seed=2, sample_likelihood=True))


@pytest.mark.parametrize(
    "overrides,shape",
    [
        ({"likelihood": "bernoulli"}, DataShape(15, None, LAYOUT, "tabular")),
        ({"backbone": "conv"}, DataShape(15, None, LAYOUT, "tabular")),
        ({}, DataShape(16)),
    ],
)
def test_the_autoregressive_decoder_needs_a_table(overrides, shape):
    with pytest.raises(ConfigError, match=r"model\.decoder 'autoregressive'"):
        build_model(ModelConfig(decoder="autoregressive", **overrides), shape)
