"""export/attention.py: the split-einsum attention processor computes what the original attention computes."""

import pytest
import torch

from export.attention import SplitEinsumAttnProcessor, attention_variant
from pipelines.tiny import tiny_efficient_unet, tiny_stock_unet, tiny_vae

L, D = 16, 32  # tiny text features: 16 tokens, 32-d


@pytest.mark.parametrize("module", ["efficient", "stock", "vae"])
def test_split_einsum_attention_matches_original(module):
    if module == "vae":  # the decoder's mid-block attention: group norm, residual, rescale
        net = tiny_vae(0)
        x = torch.randn(1, 4, 8, 8)

        def run():
            return net.decode(x).sample
    else:
        net = tiny_efficient_unet(0) if module == "efficient" else tiny_stock_unet(0)
        x = (torch.randn(2, 4, 8, 8), torch.tensor([999.0, 999.0]), torch.randn(2, L, D))

        def run():
            return net(*x).sample

    with torch.no_grad():
        reference = run()
        with attention_variant(net, "split_einsum"):
            procs = [m.processor for m in net.modules() if hasattr(m, "processor")]
            assert procs and all(isinstance(p, SplitEinsumAttnProcessor) for p in procs)
            swapped = run()
        restored = run()
    assert torch.allclose(swapped, reference, atol=1e-5, rtol=1e-4)
    assert torch.equal(restored, reference)
