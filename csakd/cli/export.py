"""`csakd export`: write a trained network as an ONNX file or a torch.export program (.pt2), checked against
the eager model before it is written, with a model card beside it (`csakd.export`)."""
from __future__ import annotations

from pathlib import Path

FORMATS = ("onnx", "pt2")


def export_checkpoint(checkpoint, out, format: str, network: str | None = None, opset: int | None = None,
                      backend: str = "reference", scene_attention: bool = False):
    """Loads the network of `checkpoint` (a .safetensors model file, a checkpoint folder or a run folder;
    `network` picks student or teacher in a folder, default student) and exports it to `out`."""
    from .. import export as export_module
    from ..io import load_model
    from ..train.checkpoint import resolve_model_file

    if format not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {format!r}")
    out = Path(out)
    suffix = export_module.FORMATS[format]
    if out.suffix.lower() != suffix:  # checked before the (slow) load: a typo fails at once
        raise ValueError(f"out: expected a file ending in {suffix} for --format {format}, got {str(out)!r}")
    if opset is not None and format != "onnx":
        raise ValueError(f"opset: applies to --format onnx only, got --opset {opset} with --format {format}")
    if network is not None and Path(checkpoint).is_file():
        raise ValueError(f"network: applies to a run or checkpoint folder holding both networks, got the "
                         f"single-network file {str(checkpoint)!r}")
    model_file = resolve_model_file(checkpoint, network or "student")
    model = load_model(model_file, backend="reference")
    return export_module.export(model, out, format, opset=opset, backend=backend, source=str(model_file),
                                scene_attention=scene_attention)


def run(args) -> int:
    result = export_checkpoint(args.checkpoint, args.out, args.format, args.network, args.opset, args.backend,
                               args.scene_attention)
    card = result.card
    what = f"ONNX opset {result.opset}" if result.format == "onnx" else "torch.export program"
    graph = f"backend {result.backend}: {card['custom_ops']}" if card.get("custom_ops") else "reference path"
    print(f"exported {card['preset']} (csa {card['csa']}, {card['bands']} bands, {card['msi_bands']} MSI bands, "
          f"scale {card['scale']}) to {result.path} in {result.seconds:.1f} s: {what}, {graph}")
    for check in result.checks:
        h, w = check.lr_size
        print(f"  check batch {check.batch}, LR {h}x{w}: max abs error {check.max_abs:.2e}, relative L2 error "
              f"{check.rel_l2:.2e} (bound {result.bound:g})")
    print(f"model card: {result.card_path}")
    return 0


def register(subparsers) -> None:
    from ..export import DEFAULT_OPSET, MAX_REL_L2
    from ..ops.backend import BACKENDS

    parser = subparsers.add_parser(
        "export", help="export a trained network to ONNX or a torch.export program (.pt2)",
        description="Export a trained network as an ONNX file (run with onnxruntime and other ONNX runtimes) or "
                    "a torch.export program (.pt2: torch.export.load, or AOTInductor). Batch size and the LR-HSI's "
                    "height and width are dynamic; the HR-MSI and the output are scale times the LR-HSI. By "
                    "default the exported graph is the network's reference path (standard operators only). "
                    "Before the file is written it is run on sample inputs and compared with the PyTorch model; a "
                    f"relative L2 error above {MAX_REL_L2:g} refuses the export. A model card <out>.card.json "
                    "(configuration, inputs, normalisation, the check's figures, versions) is written beside the "
                    "file.")
    parser.add_argument("--checkpoint", required=True,
                        help="a .safetensors model file, a checkpoint folder (last/best) or a run folder")
    parser.add_argument("--network", choices=("student", "teacher"), default=None,
                        help="which network of a run/checkpoint folder to export (default student); not for a "
                             "single-network .safetensors file")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="onnx (standard ONNX operators) or pt2 (torch.export.save of an ExportedProgram)")
    parser.add_argument("--out", required=True,
                        help="output file, ending in .onnx or .pt2 as --format; missing folders are created")
    parser.add_argument("--opset", type=int, default=None,
                        help=f"ONNX opset (--format onnx only; default {DEFAULT_OPSET})")
    parser.add_argument("--backend", default="reference", choices=BACKENDS,
                        help="implementation traced into the graph (default reference). ONNX takes reference only; "
                             "a .pt2 may keep the custom ops of a fast backend (cuda: the C++ CLRB op), which its "
                             "user must load (see the model card's requires_imports)")
    parser.add_argument("--scene-attention", action="store_true",
                        help="CSA mode 'attention' only: the graph takes a third input, 'attention' (1, heads, d, d), "
                             "applied instead of the input's own, for fusing a large scene in tiles with the scene's "
                             "attention (as csakd fuse does; see the model card)")
    parser.set_defaults(func=run)


__all__ = ["export_checkpoint", "register", "run"]
