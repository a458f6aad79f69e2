"""Patch embeddings: the calibration reservoir's compact copies re-embed exactly."""

import numpy as np
import pytest
import torch

from skpadim._engine.embedding import PatchEmbedding

# Layer shapes of a toy backbone; 8 / 3 is not an integer ratio (nearest-index path).
SHAPES = [(4, 8, 8), (6, 4, 4), (5, 3, 3)]


@pytest.mark.parametrize(
    "index",
    [
        np.arange(15),  # every channel
        np.array([0, 3, 5, 9, 14]),  # some channels of every layer
        np.array([4, 6, 7, 12]),  # none of the first (finest) layer: grid still 8 x 8
    ],
)
def test_kept_channels_reembed_to_the_same_columns(index):
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(3, c, h, w, generator=g) for c, h, w in SHAPES]
    emb = PatchEmbedding(SHAPES, index, "cpu")
    full = emb(feats).clone()
    assert full.shape == (64, len(index), 3)
    items = [emb.kept_channels(feats, j) for j in range(3)]
    # Coarser layers are stored at their own resolution: smaller than the embedding.
    assert sum(t.numel() for t in items[0]) < full[..., 0].numel()
    again = emb.embed_kept([items[2], items[0]])
    assert torch.equal(again, full[..., [2, 0]])
    feats[0].add_(1.0)  # the items are copies, not views of the batch
    assert torch.equal(emb.embed_kept(items[:1]), full[..., :1])
