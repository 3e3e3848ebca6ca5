"""The step after training: the student as one deployable graph (ONNX or TorchScript).

:class:`DeployableSegmenter` puts around the trained network what ``maskmatch-pl predict`` does
around it: the ImageNet normalisation of :func:`~maskmatch_pl.data.transforms.to_tensor`, the
padding of :meth:`SegmentationNetwork.padded_size <maskmatch_pl.network.SegmentationNetwork.padded_size>`
(computed from the input's shape inside the graph, so any batch size, height and width work),
the crop back to the input's size, and the float32 softmax (and its argmax). The exported model
reads what an image file decodes to, ``B x 3 x H x W`` uint8 RGB, and gives the labels that
``predict`` writes for the ``original`` protocol at scale 1 without flip; test-time
augmentation (``eval_scales``, ``eval_flip``, ``sliding_window``) is predict-time only.

Python: ``export_onnx("last.ckpt", "model.onnx")``; command line: ``maskmatch-pl export
--ckpt_path last.ckpt --output model.onnx``.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .compat import group_flat_knobs, is_flat
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .network import SegmentationNetwork, build_smp_model

OutputKind = Literal["labels", "probabilities"]
ExportWeights = Literal["student", "teacher"]  # which weights a checkpoint is exported with
EXPORT_EXTRA = 'pip install "maskmatch-pl[export]"'
INPUT_SPEC = "image: uint8 RGB, B x 3 x H x W (any B, H, W), 0-255 as decoded from the file, not normalised"
OUTPUT_SPECS = {
    "labels": "labels: int64 class indices, B x H x W",
    "probabilities": "probabilities: float32 softmax over the classes, B x C x H x W",
}
EXAMPLE_SIZE = (1, 3, 64, 64)  # the traced input; any other size runs the same graph
CHECK_SIZES = ((2, 3, 37, 53), (1, 3, 5, 7), (1, 3, 100, 20), (1, 3, 96, 96))  # an export must get these right too
LABEL_AXES = {0: "batch", 1: "height", 2: "width"}  # of B x H x W
TIE = 1e-4  # a label may differ from PyTorch's only where two classes' probabilities are this close


def padded_size(height: Any, width: Any, multiple: int, stride: int) -> tuple[Any, Any]:
    """:meth:`SegmentationNetwork.padded_size` in integer arithmetic alone, without a branch on
    the size, so that a traced graph computes it from each input's shape instead of freezing the
    traced one: multiples of ``multiple``, and, when the encoder's deepest map (input /
    ``stride``) would be 1 x 1, the width of two such cells."""
    padded_h = (height + multiple - 1) // multiple * multiple
    padded_w = (width + multiple - 1) // multiple * multiple
    if stride > 1:
        # 1 if the deepest map is 1 x 1, else 0, as max(0, 1 - a - b) = (x + |x|) // 2: onnxruntime's optimiser
        # (1.32) takes the integer division 1 // n of a size for the real 1 / n
        one_minus = 1 - (padded_h - 1) // stride - (padded_w - 1) // stride
        single_cell = (one_minus + abs(one_minus)) // 2
        two_cells = (stride + multiple) // multiple * multiple  # the least multiple above stride
        padded_w = padded_w + single_cell * (two_cells - padded_w)
    return padded_h, padded_w


class DeployableSegmenter(nn.Module):
    """Images as decoded from a file to the labels (or probabilities) of ``maskmatch-pl predict``.

    ``B x 3 x H x W`` RGB (uint8; in PyTorch float 0-255 too) -> normalised with the ImageNet mean/std ->
    padded on the bottom/right with zeros as the :class:`SegmentationNetwork` pads -> network ->
    logits cropped to ``H x W`` -> float32 softmax ``B x C x H x W`` (``output="probabilities"``)
    or its argmax, int64 ``B x H x W`` (``output="labels"``).

    Args:
        network: the student (``MaskMatchModule.network``), or any ``nn.Module`` mapping normalised
            ``B x 3 x H x W`` images to logits (wrapped in a :class:`SegmentationNetwork` first).
        output: ``"labels"`` or ``"probabilities"``.
    """

    def __init__(self, network: nn.Module, output: OutputKind = "labels") -> None:
        super().__init__()
        if output not in OUTPUT_SPECS:
            raise ValueError(f"output must be 'labels' or 'probabilities', got {output!r}")
        if not isinstance(network, SegmentationNetwork):
            network = SegmentationNetwork(network)
        self.net = copy.deepcopy(network.net).cpu().float().eval().to(memory_format=torch.contiguous_format)
        self.pad_multiple, self.feature_stride, self.output = network.pad_multiple, network.feature_stride, output
        self.register_buffer("mean", torch.from_numpy(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.from_numpy(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probabilities = self.probabilities(images)
        return probabilities if self.output == "probabilities" else probabilities.argmax(dim=1)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """The float32 softmax ``B x C x H x W`` of ``B x 3 x H x W`` RGB images (0-255)."""
        height, width = images.shape[-2], images.shape[-1]
        normalised = (images.float() / 255.0 - self.mean) / self.std  # as to_tensor, in float32
        if self.pad_multiple > 1 or self.feature_stride > 1:
            padded_h, padded_w = padded_size(height, width, self.pad_multiple, self.feature_stride)
            normalised = nn.functional.pad(normalised, (0, padded_w - width, 0, padded_h - height))
        logits = self.net(normalised)
        if isinstance(logits, (tuple, list)):  # smp models with an auxiliary classification head
            logits = logits[0]
        return logits[..., :height, :width].float().softmax(dim=1)


def load_student(
    checkpoint: str | os.PathLike, weights: ExportWeights = "student"
) -> tuple[SegmentationNetwork, list[str] | None]:
    """The student network of a ``MaskMatchModule`` checkpoint (or, with ``weights="teacher"``, its EMA
    teacher's weights in the same network) and its class names.

    The network is built from the checkpoint's own hyperparameters (``network`` and ``num_classes``;
    the flat knobs of older checkpoints are converted) as the module builds it, and only the
    chosen weights are loaded (strictly): nothing is downloaded, and the method's other
    knobs and state (thresholds) play no part.

    Raises:
        FileNotFoundError: no file at ``checkpoint``.
        RuntimeError: the checkpoint's student is not the network its hyperparameters build
            (a network passed as ``model``: export that module, see :func:`export_onnx`).
        ValueError: ``weights="teacher"`` for a checkpoint without an EMA teacher.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path {path}: no such checkpoint file")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    hp = saved.get("hyper_parameters", {})
    hp = group_flat_knobs({k: v for k, v in hp.items() if not k.startswith("_")}) if is_flat(hp) else hp
    try:
        spec = hp.get("network") or {}
        net = build_smp_model(
            spec["arch"], spec["encoder_name"], None, hp["num_classes"], **(spec.get("model_kwargs") or {})
        )
        network = SegmentationNetwork(net, spec.get("pad_multiple"))
        state = saved["state_dict"]
        prefix = "method.network." if any(k.startswith("method.network.") for k in state) else "network."  # older
        if weights == "teacher":
            prefix = prefix.replace("network.", "teacher.ema.")
            if not any(k.startswith(prefix) for k in state):
                raise ValueError(
                    f"{path}: --weights teacher needs an EMA teacher (pseudo_labels.teacher: ema); this checkpoint's "
                    f"teacher shares the student's weights: export --weights student"
                )
        network.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
    except (KeyError, RuntimeError) as error:
        raise RuntimeError(
            f"{path}: cannot rebuild its student from the checkpoint's hyperparameters ({error!r}); for a network "
            f"passed as `model`, build MaskMatchModule(model=...), load the checkpoint's state_dict into it and "
            f"pass the module to export_onnx / export_torchscript"
        ) from error
    return network, hp.get("class_names")


def _student(
    source: str | os.PathLike | nn.Module, weights: ExportWeights = "student"
) -> tuple[nn.Module, list[str] | None]:
    """The network and class names of a checkpoint path, a ``MaskMatchModule`` or a network."""
    if weights not in ("student", "teacher"):
        raise ValueError(f"weights must be 'student' or 'teacher', got {weights!r}")
    if isinstance(source, (str, os.PathLike)):
        return load_student(source, weights)
    network = getattr(source, "network", source)  # a MaskMatchModule's student, or the network itself
    if weights == "teacher":
        network = getattr(getattr(source, "teacher", None), "ema", None)
        if network is None:
            raise ValueError("weights='teacher' needs a module with an EMA teacher (pseudo_labels.teacher: ema)")
    names = getattr(source, "class_names", None)
    return network, list(names) if names is not None else None


def _require(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"exporting needs the {name} package: {EXPORT_EXTRA}") from error


def _check_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} exists: choose another output path, or overwrite it (--overwrite true, overwrite=True)"
        )


def _same_prediction(reference: torch.Tensor, exported: torch.Tensor, output: OutputKind) -> bool:
    """Whether ``exported`` (labels or probabilities) is what the PyTorch ``reference``
    probabilities give, up to float rounding: a label may only differ at a near-tie."""
    if output == "probabilities":
        return exported.shape == reference.shape and torch.allclose(exported, reference, atol=TIE)
    if exported.shape != reference.shape[:1] + reference.shape[2:]:
        return False
    chosen = reference.gather(1, exported.long().unsqueeze(1)).squeeze(1)
    return bool((chosen >= reference.amax(dim=1) - TIE).all())


def _verify(deployable: DeployableSegmenter, run: Callable[[torch.Tensor], torch.Tensor], path: Path) -> None:
    """Runs the exported model at sizes other than the traced one and compares it with PyTorch's."""
    generator = torch.Generator().manual_seed(0)
    for size in CHECK_SIZES:
        images = torch.randint(0, 256, size, dtype=torch.uint8, generator=generator)
        with torch.no_grad():
            expected = deployable.probabilities(images)
        if not _same_prediction(expected, run(images), deployable.output):
            raise RuntimeError(
                f"the model exported to {path} predicts {size[3]}x{size[2]} images differently from PyTorch (a graph "
                f"frozen to the traced size, or an exporter or runtime fault; torch {torch.__version__}): nothing "
                f"was written"
            )


def _metadata(
    deployable: DeployableSegmenter, class_names: Sequence[str] | None, weights: ExportWeights
) -> dict[str, str]:
    return {
        "maskmatch_pl.weights": weights,
        "maskmatch_pl.input": INPUT_SPEC,
        "maskmatch_pl.output": OUTPUT_SPECS[deployable.output],
        "maskmatch_pl.class_names": json.dumps(list(class_names) if class_names is not None else None),
        "maskmatch_pl.not_exported": "test-time augmentation (eval_scales, eval_flip, sliding_window): predict only",
    }


def _write(path: Path, overwrite: bool, save: Callable[[Path], None]) -> Path:
    """``save`` into a temporary file beside ``path``, then moved into place (never half a file)."""
    _check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save(Path(temporary))
        _check_output(path, overwrite)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def export_onnx(
    source: str | os.PathLike | nn.Module,
    path: str | os.PathLike,
    output: OutputKind = "labels",
    opset: int = 17,
    overwrite: bool = False,
    weights: ExportWeights = "student",
) -> Path:
    """Writes the student as an ONNX model: input ``image`` (uint8 RGB ``B x 3 x H x W``, any
    size), output ``labels`` (int64 ``B x H x W``) or ``probabilities`` (float32 ``B x C x H x W``);
    see :class:`DeployableSegmenter`. The metadata (``maskmatch_pl.*``) repeats this and holds the
    class names.

    Exported with torch's TorchScript-based ONNX exporter (``dynamo=False``: a second, no
    onnxscript), with dynamic batch, height and width axes, then run with onnxruntime at sizes
    other than the traced one and compared with PyTorch before it is moved to ``path``.

    Args:
        source: a ``MaskMatchModule`` checkpoint path, a ``MaskMatchModule``, or its ``network``.
        path: the ``.onnx`` file to write.
        output: ``"labels"`` or ``"probabilities"``.
        opset: the ONNX opset version.
        overwrite: replace an existing file at ``path``.
        weights: ``"student"`` or ``"teacher"`` (the EMA teacher's weights; recorded as ``maskmatch_pl.weights``).

    Returns:
        ``path``.

    Raises:
        FileNotFoundError: ``source`` names no file.
        FileExistsError: ``path`` exists and not ``overwrite``.
        ValueError: ``weights="teacher"`` without an EMA teacher.
        ImportError: onnx or onnxruntime are missing (``pip install "maskmatch-pl[export]"``).
    """
    onnx, ort = _require("onnx"), _require("onnxruntime")
    path = Path(path)
    _check_output(path, overwrite)
    network, class_names = _student(source, weights)
    deployable = DeployableSegmenter(network, output).eval()

    def save(target: Path) -> None:
        spatial = {0: "batch", 2: "height", 3: "width"}  # of B x 3|C x H x W
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer warnings; verified below
            torch.onnx.export(
                deployable,
                (torch.zeros(EXAMPLE_SIZE, dtype=torch.uint8),),
                str(target),
                dynamo=False,
                opset_version=opset,
                input_names=["image"],
                output_names=[output],
                dynamic_axes={"image": spatial, output: spatial if output == "probabilities" else LABEL_AXES},
            )
        model = onnx.load(str(target))
        for key, value in _metadata(deployable, class_names, weights).items():
            model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model)
        onnx.save(model, str(target))
        session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        _verify(deployable, lambda images: torch.from_numpy(session.run(None, {"image": images.numpy()})[0]), path)

    return _write(path, overwrite, save)


def export_torchscript(
    source: str | os.PathLike | nn.Module,
    path: str | os.PathLike,
    output: OutputKind = "labels",
    overwrite: bool = False,
    weights: ExportWeights = "student",
) -> Path:
    """Writes the student as a traced TorchScript module (``torch.jit.load(path)``) with the
    input and output of :func:`export_onnx`; the metadata is in the extra file
    ``maskmatch_pl.json``. Checked at sizes other than the traced one before it is moved to
    ``path``. Arguments, return value and errors as :func:`export_onnx` (no extra packages needed)."""
    path = Path(path)
    _check_output(path, overwrite)
    network, class_names = _student(source, weights)
    deployable = DeployableSegmenter(network, output).eval()

    def save(target: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice and tracer warnings; verified below
            traced = torch.jit.trace(deployable, (torch.zeros(EXAMPLE_SIZE, dtype=torch.uint8),))
            metadata = json.dumps(_metadata(deployable, class_names, weights))
            torch.jit.save(traced, str(target), _extra_files={"maskmatch_pl.json": metadata})
            loaded = torch.jit.load(str(target))
        _verify(deployable, lambda images: loaded(images), path)

    return _write(path, overwrite, save)


def export_main(args: Sequence[str] | None = None) -> Path:
    """``maskmatch-pl export``: the arguments after ``export`` (default: ``sys.argv[2:]``)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="maskmatch-pl export",
        description="Write a trained student as ONNX or TorchScript, with its input normalisation and stride "
        f"padding inside. Input {INPUT_SPEC}. Output {OUTPUT_SPECS['labels']} (or {OUTPUT_SPECS['probabilities']}). "
        "Test-time augmentation (eval_scales, eval_flip, sliding_window) is not exported.",
    )
    parser.add_argument("--ckpt_path", type=str, required=True, help="a checkpoint of `maskmatch-pl fit`")
    parser.add_argument("--output", type=str, required=True, help="the file to write (e.g. model.onnx)")
    parser.add_argument("--format", type=Literal["onnx", "torchscript"], default="onnx", help="onnx or torchscript")
    parser.add_argument(
        "--output_kind", type=Literal["labels", "probabilities"], default="labels", help="labels or probabilities"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument("--weights", type=ExportWeights, default="student", help="student, or the EMA teacher's")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace an existing output file")
    config = parser.parse_args(list(sys.argv[2:] if args is None else args))
    if config.format == "onnx":
        path = export_onnx(
            config.ckpt_path, config.output, config.output_kind, config.opset, config.overwrite, config.weights
        )
    else:
        path = export_torchscript(config.ckpt_path, config.output, config.output_kind, config.overwrite, config.weights)
    output = OUTPUT_SPECS[config.output_kind]
    print(f"wrote {path} ({config.format}; the {config.weights}'s weights; input {INPUT_SPEC}; output {output})")
    return path
