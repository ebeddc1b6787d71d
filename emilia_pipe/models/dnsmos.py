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

Each window's output is then what its own run of the whole model gives, up to float rounding, at a
fraction of the work for a long clip (both measured: docs/performance.md). The cut needs the ``onnx``
package to edit the graph; the published weights are used unchanged.
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
    """(trunk, edge_trunk, head, reach, window_frames): the model cut at TRUNK_OUTPUT; the trunk takes one
    window's audio, the edge trunk the audio of 2 * reach frames, reach being the frames at a window edge
    that its zero padding changes. Both keep fixed shapes, like the whole model's."""
    import onnx

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
    return trunk, _with_frames(trunk, 2 * reach), head, reach, window_frames


def _with_frames(trunk, frames: int):
    """A copy of the trunk for audio of ``frames`` frames: its cropping and framing constants and shapes."""
    import onnx
    from onnx import numpy_helper

    short = onnx.ModelProto()
    short.CopyFrom(trunk)
    for init in short.graph.initializer:
        if init.name == CROP_END:
            init.CopyFrom(numpy_helper.from_array(np.array([np.iinfo(np.int64).max, frames * FRAME_HOP]), CROP_END))
        elif init.name in FRAMING_SHAPES:
            init.CopyFrom(numpy_helper.from_array(np.array([-1, frames, FRAME_HOP]), init.name))
    short.graph.input[0].type.tensor_type.shape.dim[1].dim_value = (frames + 1) * FRAME_HOP
    del short.graph.value_info[:]  # inferred for one window's frames
    short.graph.output[0].type.tensor_type.shape.dim[2].dim_value = frames
    return onnx.shape_inference.infer_shapes(short)


def _stride(node) -> int:
    strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1])
    return max(strides)


class SharedWindowDNSMOS:
    """Raw DNSMOS outputs (SIG, BAK, OVRL before the polynomial fit) of a clip's windows, from the model cut
    in two (see the module docstring). Windows that overlap enough share the trunk; any other window runs
    the trunk over its own frames, which is exactly the whole model's computation. So on CPU every window
    goes through these two sessions and the whole model's session stays unused (one arena, not two)."""

    def __init__(self, model_path: str, threads: int = 0):
        import onnxruntime as ort

        trunk, edge_trunk, head, self.reach, self.window_frames = _trunk_and_head(model_path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        # three sessions each holding their planned memory pattern held 120 MiB more than the whole model's
        # one; without the patterns, 57 MiB more (measured, one clip after another)
        opts.enable_mem_pattern = False
        cpu = ["CPUExecutionProvider"]
        self.trunk = ort.InferenceSession(trunk.SerializeToString(), sess_options=opts, providers=cpu)
        self.edge_trunk = ort.InferenceSession(edge_trunk.SerializeToString(), sess_options=opts, providers=cpu)
        self.head = ort.InferenceSession(head.SerializeToString(), sess_options=opts, providers=cpu)
        self.audio_name = self.trunk.get_inputs()[0].name
        self.feature_name = self.head.get_inputs()[0].name
        # frames a shared trunk piece contributes: a window's length less the context it needs at both ends
        self.keep = self.window_frames - 2 * self.reach

    def _features(self, audio: np.ndarray, start: int, frames: int) -> np.ndarray:
        """Trunk output for ``frames`` frames (a window's or an edge's) from sample ``start`` (frame k =
        samples start + 160k .. +319), computed on just those frames: the model's zero padding at both ends."""
        span = audio[start: start + (frames + 1) * FRAME_HOP]
        session = self.trunk if frames == self.window_frames else self.edge_trunk
        return session.run(None, {self.audio_name: span[None]})[0]

    def can_share(self, starts: list[int]) -> bool:
        """Windows on one frame grid whose span takes fewer trunk pieces than there are windows (at a 1 s hop:
        3 or more; 2 windows take 2 pieces plus their edges, more than their own 2 runs)."""
        if len(starts) < 2 or any((s - starts[0]) % FRAME_HOP for s in starts):
            return False
        frames = (max(starts) - min(starts)) // FRAME_HOP + self.window_frames
        return -(-frames // self.keep) < len(starts)

    def raw(self, audio: np.ndarray, starts: list[int]) -> np.ndarray:
        """(len(starts), 3) raw outputs for the windows that start at the samples ``starts``."""
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if not self.can_share(starts):
            return np.concatenate([self.head.run(None, {self.feature_name: self._features(audio, s, self.window_frames)})[0]
                                   for s in starts])
        origin = min(starts)
        first = [(s - origin) // FRAME_HOP for s in starts]
        frames = max(first) + self.window_frames
        r, n = self.reach, self.window_frames
        shared = None
        for a in range(0, frames, self.keep):
            # a window-long piece whose middle (or the span's own edge) covers frames a..a+keep-1
            lo = min(max(a - r, 0), frames - n)
            piece = self._features(audio, origin + lo * FRAME_HOP, n)
            if shared is None:
                shared = np.empty(piece.shape[:2] + (frames,) + piece.shape[3:], np.float32)
            b = min(a + self.keep, frames)
            shared[:, :, a:b] = piece[:, :, a - lo: b - lo]
        out = []
        for f in first:
            window = shared[:, :, f: f + n].copy()
            # the window's own edges: the zero padding at its ends reaches `reach` frames in
            window[:, :, :r] = self._features(audio, origin + f * FRAME_HOP, 2 * r)[:, :, :r]
            window[:, :, -r:] = self._features(audio, origin + (f + n - 2 * r) * FRAME_HOP, 2 * r)[:, :, -r:]
            out.append(self.head.run(None, {self.feature_name: window})[0])
        return np.concatenate(out)
