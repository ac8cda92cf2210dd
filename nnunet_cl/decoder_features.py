"""The full-resolution feature map of nnU-Net's decoder: the output of its last stage, i.e. the input of
the segmentation layer (the "last decoder layer" of Hu et al. and Chaitanya et al.).

A forward hook on ``network.decoder.stages[-1]`` records it during an ordinary ``network(x)`` call,
so the segmentation output and the features come from one pass and nnU-Net's own forward (deep
supervision, any decoder variant with ``stages``) stays untouched. The hook is registered once;
it only keeps the tensor while a ``with tap:`` block is open, so validation and inference passes do
not hold activations.
"""

from __future__ import annotations

from torch import nn

from nnunet_cl.errors import NnunetClError


def last_decoder_stage(network: nn.Module) -> nn.Module:
    decoder = getattr(network, "decoder", None)
    stages = getattr(decoder, "stages", None)
    if stages is None or len(stages) == 0:
        raise NnunetClError(f"{type(network).__name__} has no decoder.stages; the label-aware methods need nnU-Net's "
                            "U-Net (PlainConvUNet / ResidualEncoderUNet) from the plans")
    return stages[-1]


def decoder_output_channels(network: nn.Module) -> int:
    """Channels of the last decoder stage = channels of the first encoder stage (its skip)."""
    return int(network.encoder.output_channels[0])


class DecoderFeatureTap:
    """``with tap: out = network(x)`` then ``tap.features`` is the last decoder stage's output."""

    def __init__(self, network: nn.Module):
        self._active = False
        self.features = None
        self._handle = last_decoder_stage(network).register_forward_hook(self._record)

    def _record(self, module, inputs, output):
        if self._active:
            self.features = output

    def __enter__(self):
        self._active, self.features = True, None
        return self

    def __exit__(self, *exc):
        self._active = False
        return False

    def pop(self):
        """The recorded features (and forget them)."""
        features, self.features = self.features, None
        if features is None:
            raise RuntimeError("no decoder features were recorded: call the network inside 'with tap:'")
        return features

    def remove(self) -> None:
        self._handle.remove()
