"""SnapFusion models and pipeline: the efficient UNet, the compressed VAE decoder, the sampling pipeline."""

import logging

# torchao (installed with executorch) and diffusers' torchao hook log warnings when diffusers is imported (CUDA
# kernels this machine cannot load, deprecated pytree registrations): quieted here, before the first diffusers import
# of any entry point that imports this package first, so a command line's stderr stays its one error line.
for _name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    logging.getLogger(_name).setLevel(logging.ERROR)

from .pipeline_snapfusion import SnapFusionPipeline, SnapFusionPipelineOutput, format_timings  # noqa: E402
from .unet_efficient import BlockId, EfficientUNet2DConditionModel, EfficientUNet2DConditionOutput  # noqa: E402
from .vae_compressed import CompressedVAEDecoder, PixelShuffleVAEDecoder  # noqa: E402

__all__ = [
    "BlockId",
    "CompressedVAEDecoder",
    "EfficientUNet2DConditionModel",
    "EfficientUNet2DConditionOutput",
    "PixelShuffleVAEDecoder",
    "SnapFusionPipeline",
    "SnapFusionPipelineOutput",
    "format_timings",
]
