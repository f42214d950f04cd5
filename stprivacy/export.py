"""Export STPrivacy's deployment pass to ONNX, to anonymize video where it is captured.

The exported graph is the evaluation-mode forward at one fixed keep ratio (``STPrivacy.anonymize``):
tokenize, per PSB the transformer blocks, the keep scores and the per-frame top-k, token
compaction (gather), the kept-only anonymization block, and the scatter back to the full grid
with dropped tubelets black. It takes ``video: Tensor[B, 3, T, H, W]`` float32 in [0, 1] (any
``B``; T, H, W those of the checkpoint's config) and returns ``anonymized: Tensor[B, 3, T, H, W]``,
unclamped like :meth:`STPrivacy.anonymize`.

How it is traced:

* The model runs on the eager reference ops (:func:`stprivacy.model.reference_ops`): the custom
  ``torch.ops.stpriv.*`` kernels have no ONNX form. In evaluation the reference path uses only
  standard ops (Conv, MatMul/Softmax attention, LayerNorm, TopK, GatherElements,
  ScatterElements with ``reduction="add"``), so nothing of the model is left out.
* The TorchScript exporter (``torch.onnx.export(dynamo=False)``), opset 17, which needs the
  ``onnx`` package (``pip install stpriv[onnx]``); the torch.export-based one needs ``onnxscript``
  too, which the extra does not bring.
* One op has no ONNX form as PyTorch writes it: the *stable* sort (``torch.sort(stable=True)``)
  with which the reference's top-k breaks ties towards the lower index. It is exported as ONNX
  ``TopK`` over the whole axis, whose specification breaks ties the same way (equal values: the
  lower index first), so the exported top-k keeps the same tubelets, ties included.
* The keep ratio, the clip geometry and the number of tubelets kept after each PSB are constants
  of the graph (they fix the shapes); export once per keep ratio you deploy.

The file is written to a temporary name beside the output and renamed when complete, so a failed
export leaves nothing behind and an existing file untouched.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from .anonymize import load_anonymizer
from .errors import UsageError
from .model import STPrivacy, STPrivacyConfig, reference_ops

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "video", "anonymized"


class DeploymentPass(nn.Module):
    """``STPrivacy.anonymize`` at a fixed keep ratio, as a module with one tensor in and one out.

    Args:
        model: the anonymizer (put in evaluation mode here).
        keep_ratio: keep ratio per PSB, in (0, 1].
    """

    def __init__(self, model: STPrivacy, keep_ratio: float):
        super().__init__()
        self.model = model.eval()
        self.keep_ratio = keep_ratio

    def forward(self, video: Tensor) -> Tensor:
        """``Tensor[B, 3, T, H, W]`` in [0, 1] -> the anonymized ``Tensor[B, 3, T, H, W]``."""
        return self.model(video, self.keep_ratio).video


def export_anonymizer(checkpoint: str | Path | STPrivacy, output: str | Path, keep_ratio: float | None = None, *,
                      config: str | Path | STPrivacyConfig | None = None, overwrite: bool = False) -> Path:
    """Writes the deployment pass of an anonymizer as an ONNX file; returns its path.

    Args:
        checkpoint: a checkpoint file (read by :func:`stprivacy.anonymize.load_anonymizer`) or a
            model (left in evaluation mode).
        output: the ``.onnx`` file to write; its folder must exist.
        keep_ratio: keep ratio per PSB in (0, 1] (``cfg.alpha`` when None).
        config: the model config, for a checkpoint that is a bare state dict.
        overwrite: replace an existing ``output``.

    Raises:
        UsageError: keep ratio out of range, an output that is not ``.onnx``, exists (without
            ``overwrite``), or whose folder is missing or unwritable; the onnx package is missing.
        InputNotFoundError, CheckpointError, ConfigError: as :func:`load_anonymizer`.
    """
    if keep_ratio is not None and (isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float))
                                   or not 0.0 < keep_ratio <= 1.0):
        raise UsageError(f"keep ratio must be in (0, 1], got {keep_ratio!r}")
    output = Path(output)
    _check_output(output, overwrite)
    if isinstance(checkpoint, STPrivacy):
        model = checkpoint
    else:
        model = load_anonymizer(checkpoint, config, device="cpu")
    model.eval()
    _require_onnx()
    ratio = model.cfg.alpha if keep_ratio is None else float(keep_ratio)
    cfg = model.cfg
    # Batch 2, not 1: a trace at batch 1 may fold the batch size into the graph's shapes.
    example = torch.zeros(2, cfg.in_chans, cfg.frames, cfg.image_size, cfg.image_size,
                          device=next(model.parameters()).device)
    partial = output.with_name(f".{output.stem}.partial{output.suffix}")
    try:
        with _stable_sort_as_topk(), reference_ops(), torch.no_grad(), warnings.catch_warnings():
            # Expected: the legacy exporter's deprecation notice, and the tracer's notes that the
            # shape tests (how many tubelets are kept) become constants, which they are.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(DeploymentPass(model, ratio), (example,), str(partial), dynamo=False,
                              opset_version=OPSET, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        os.replace(partial, output)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return output


def _require_onnx() -> None:
    """The exporter writes the file through the ``onnx`` package: without it, say how to get it."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise UsageError("exporting to ONNX needs the onnx package: pip install stpriv[onnx]") from exc


def _check_output(output: Path, overwrite: bool) -> None:
    if output.suffix.lower() != ".onnx":
        raise UsageError(f"output {output} must end in .onnx")
    folder = output.parent
    if not folder.is_dir():
        raise UsageError(f"output folder {folder} does not exist (or is not a folder)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"output folder {folder} is not writable")
    if output.is_dir():
        raise UsageError(f"output {output} is a folder")
    if output.exists() and not overwrite:
        raise UsageError(f"output {output} exists; pass overwrite=True (--overwrite) to replace it")


def _sort_as_topk(g, self, *args):
    """ONNX form of ``aten::sort`` (plain: ``dim, descending``; stable: ``stable, dim, descending``):
    ``TopK`` over the whole axis, whose ties go to the lower index, as a stable sort's do."""
    # Imported here: the command line need not load the exporter to start.
    from torch.onnx import symbolic_helper

    dim, descending = args[-2:]
    dim = symbolic_helper._maybe_get_const(dim, "i")
    descending = symbolic_helper._maybe_get_const(descending, "b")
    axis_size = g.op("Gather", g.op("Shape", self), g.op("Constant", value_t=torch.tensor([dim])), axis_i=0)
    return g.op("TopK", self, axis_size, axis_i=dim, largest_i=int(bool(descending)), sorted_i=1, outputs=2)


@contextlib.contextmanager
def _stable_sort_as_topk() -> Iterator[None]:
    """Within this context the TorchScript exporter writes every sort as :func:`_sort_as_topk`;
    the registration is removed again, so other exports in the process are unaffected."""
    torch.onnx.register_custom_op_symbolic("aten::sort", _sort_as_topk, OPSET)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::sort", OPSET)
