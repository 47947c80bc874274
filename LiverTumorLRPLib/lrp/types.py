"""The layer types the LRP engines recognise, grouped by how relevance passes them."""
from __future__ import annotations

from torch import nn

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# rule-bearing layers: each is replaced by a RuleLayer
LINEAR_TYPES = CONV_TYPES + TRANSPOSED_TYPES + (nn.Linear,)
# folded into the linear layer they follow (canonisation)
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
INSTANCE_NORM_TYPES = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
# a final activation: dropped, the logits are explained
HEAD_TYPES = (nn.Softmax, nn.Sigmoid, nn.LogSoftmax)
# the plain gradient is the right LRP rule for these (gradient x input passes relevance through, or is LRP-0)
GRADIENT_TYPES = (
    nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.Upsample, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
    nn.ReplicationPad3d, nn.ZeroPad2d,
)

__all__ = ["CONV_TYPES", "TRANSPOSED_TYPES", "LINEAR_TYPES", "BATCHNORM_TYPES", "INSTANCE_NORM_TYPES", "HEAD_TYPES",
           "GRADIENT_TYPES"]
