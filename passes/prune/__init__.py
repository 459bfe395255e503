"""Pruning on ONNX graphs: unstructured magnitude, 2:4 semi-structured, structured channels.

All three work on the float initializers that feed Conv (input 1), Gemm (input 1, B) and
MatMul (a constant second input), and return a new model: the caller's model is never
modified.

- `MagnitudePrunePass` (``magnitude``) zeroes the smallest-magnitude weights, per layer or
  globally.
- `SemiStructured24Pass` (``semi_structured``) keeps 2 of every 4 consecutive weights along
  the GEMM reduction dimension (the layout of NVIDIA's sparse tensor cores); `check_24`
  verifies it.
- `channel_groups` (``dependency_groups``) finds the sets of output channels that must be
  pruned together, and `StructuredChannelPrunePass` / `prune_channels_by_index`
  (``channels``) remove them, shrinking every weight, bias, BatchNormalization parameter and
  per-channel constant that reads them.

``weights`` holds what they share: which weights may be rewritten, node labels, exclusions.
"""

from lepton_compile.passes.prune.channels import (
    StructuredChannelPrunePass,
    prune_channels_by_index,
)
from lepton_compile.passes.prune.dependency_groups import ChannelGroup, channel_groups
from lepton_compile.passes.prune.magnitude import MagnitudePrunePass
from lepton_compile.passes.prune.semi_structured import (
    SemiStructured24Pass,
    check_24,
    prune_24,
    reduction_axis,
)

__all__ = [
    "ChannelGroup",
    "MagnitudePrunePass",
    "SemiStructured24Pass",
    "StructuredChannelPrunePass",
    "channel_groups",
    "check_24",
    "prune_24",
    "prune_channels_by_index",
    "reduction_axis",
]
