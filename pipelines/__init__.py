"""SnapFusion models and pipeline: the efficient UNet, the compressed VAE decoder, the sampling pipeline."""

from .pipeline_snapfusion import SnapFusionPipeline, SnapFusionPipelineOutput, format_timings
from .unet_efficient import BlockId, EfficientUNet2DConditionModel, EfficientUNet2DConditionOutput
from .vae_compressed import CompressedVAEDecoder, PixelShuffleVAEDecoder

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
