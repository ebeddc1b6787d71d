"""DNSMOS windows of one long clip with their full-resolution convolutions shared.

The windows DNSMOS scores overlap (9.01 s long, 1 s apart), and nearly all of the model's work is in its
first convolutions, which run at the full 10 ms frame rate (``sig_bak_ovr.onnx``: a 160-sample-hop
spectrogram, then four 3x3 convolutions, ~97 % of the multiply-adds). Those layers see each frame the same
way in every window that holds it, except within a few frames of a window edge, where the zero padding
reaches in. So the model is cut in two at the end of those layers:

- the *trunk* (audio -> feature map) runs once over the span the windows cover, a few frames of context
  on each side of every piece, and once more over each window's first and last frames on their own, so
  the padding at a window's edge is what the whole model would have seen;
- the *head* (the pooled, low-resolution rest) runs per window on its slice of that feature map.

Each window's output is then what its own run of the whole model gives, up to float rounding (measured:
2.4e-7 at most in the raw outputs on real speech), at about a third of the work for a clip of 16 s or
more. The cut needs the ``onnx`` package to edit the graph; the published weights are used unchanged.
"""
from __future__ import annotations

import numpy as np

FRAME_HOP = 160  # samples between spectrogram frames (the model's framing: 320-sample frames, 160 apart)
# where the model is cut: after the last full-resolution convolution (before the first max pooling)
TRUNK_OUTPUT = "mos_estimator_logpow/conv2d_3/Relu:0"
# the published model fixes its input to one window: these initialisers are its cropping and framing
CROP_END = "input_1:01_cropping_end"
FRAMING_SHAPES = ("shape_tensor", "shape_tensor1")


class CannotShare(ValueError):
    """This DNSMOS model cannot be cut as the published one can (a different graph)."""


def _trunk_and_head(model_path: str):
    """(trunk, head, reach, window_frames): the model cut at TRUNK_OUTPUT, the trunk made to take audio of any
    length (1, (frames + 1) * 160); reach = frames at a window edge that its zero padding changes."""
    import onnx
    from onnx import numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(model_path))
    graph = model.graph
    names = {o for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}
    if TRUNK_OUTPUT not in names or CROP_END not in inits or not set(FRAMING_SHAPES) <= inits:
        raise CannotShare(f"{model_path} is not the published DNSMOS P.835 graph")
    audio_in = graph.input[0].name
    window_frames = graph.input[0].type.tensor_type.shape.dim[1].dim_value // FRAME_HOP - 1
    head = onnx.utils.Extractor(model).extract_model([TRUNK_OUTPUT], [o.name for o in graph.output])
    trunk = onnx.utils.Extractor(model).extract_model([audio_in], [TRUNK_OUTPUT])

    reach = 0
    for node in trunk.graph.node:
        if node.op_type in ("MaxPool", "AveragePool") or (node.op_type == "Conv" and _stride(node) != 1):
            raise CannotShare("the trunk changes the frame rate")
        if node.op_type == "Conv":
            kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), [1])
            if len(kernel) == 2:  # the 2-D convolutions over (frames, bins); the framing's 1-D ones see one frame
                reach += (kernel[0] - 1) // 2
    # any length: crop the last frame's hop off the end (not at sample 144000), frames of one clip
    for init in trunk.graph.initializer:
        if init.name == CROP_END:
            init.CopyFrom(numpy_helper.from_array(np.array([np.iinfo(np.int64).max, -FRAME_HOP]), CROP_END))
        elif init.name in FRAMING_SHAPES:
            init.CopyFrom(numpy_helper.from_array(np.array([1, -1, FRAME_HOP]), init.name))
    dims = trunk.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value = 1
    dims[1].dim_param = "samples"
    del trunk.graph.value_info[:]  # the shapes inferred for one window no longer hold
    out_dims = trunk.graph.output[0].type.tensor_type.shape.dim  # (1, channels, frames, bins)
    out_dims[0].dim_value = 1
    out_dims[2].dim_param = "frames"
    return trunk, head, reach, window_frames


def _stride(node) -> int:
    strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1])
    return max(strides)


class SharedWindowDNSMOS:
    """Raw DNSMOS outputs (SIG, BAK, OVRL before the polynomial fit) of windows that start at multiples of
    the frame hop in one clip, computed with the trunk shared (see the module docstring)."""

    def __init__(self, model_path: str, sess_options):
        import onnxruntime as ort

        trunk, head, self.reach, self.window_frames = _trunk_and_head(model_path)
        cpu = ["CPUExecutionProvider"]
        self.trunk = ort.InferenceSession(trunk.SerializeToString(), sess_options=sess_options, providers=cpu)
        self.head = ort.InferenceSession(head.SerializeToString(), sess_options=sess_options, providers=cpu)
        self.audio_name = self.trunk.get_inputs()[0].name
        self.feature_name = self.head.get_inputs()[0].name
        # trunk runs of one length (a window's frames + context) keep onnxruntime's arena at one shape
        self.piece = self.window_frames + 2 * self.reach

    def _features(self, audio: np.ndarray, first: int, count: int) -> np.ndarray:
        """Trunk output for frames first..first+count-1 of ``audio`` (frame f = samples f*160..f*160+319),
        computed on just those frames: the zero padding of the model applies at both ends."""
        span = audio[first * FRAME_HOP: (first + count + 1) * FRAME_HOP]
        return self.trunk.run(None, {self.audio_name: span[None]})[0]

    def can_share(self, starts: list[int]) -> bool:
        """Windows on the frame grid whose span takes fewer trunk pieces than there are windows (at a 1 s hop:
        3 or more; 2 windows take 2 pieces plus their edges, more than 2 runs of the whole model)."""
        if len(starts) < 2 or any(s % FRAME_HOP for s in starts):
            return False
        frames = max(starts) // FRAME_HOP + self.window_frames - min(starts) // FRAME_HOP
        return frames >= self.piece and -(-frames // (self.piece - 2 * self.reach)) < len(starts)

    def raw(self, audio: np.ndarray, starts: list[int]) -> np.ndarray:
        """(len(starts), 3) raw outputs for the windows starting at sample ``starts`` (multiples of 160)."""
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        first = [s // FRAME_HOP for s in starts]
        lo, hi = min(first), max(first) + self.window_frames
        frames = hi - lo
        r, keep = self.reach, self.piece - 2 * self.reach
        shared = None
        for a in range(lo, hi, keep):
            # a piece of fixed length whose middle (or the clip's own edge) covers frames a..a+keep-1
            start = min(max(a - r, lo), hi - self.piece)
            piece = self._features(audio, start, self.piece)
            if shared is None:
                shared = np.empty(piece.shape[:2] + (frames,) + piece.shape[3:], np.float32)
            b = min(a + keep, hi)
            shared[:, :, a - lo: b - lo] = piece[:, :, a - start: b - start]
        out = []
        for f in first:
            window = shared[:, :, f - lo: f - lo + self.window_frames].copy()
            # the window's own edges: the padding at its ends reaches `reach` frames in
            window[:, :, :r] = self._features(audio, f, 2 * r)[:, :, :r]
            window[:, :, -r:] = self._features(audio, f + self.window_frames - 2 * r, 2 * r)[:, :, -r:]
            out.append(self.head.run(None, {self.feature_name: window})[0])
        return np.concatenate(out)
