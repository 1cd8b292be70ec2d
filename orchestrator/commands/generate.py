"""`progan generate`: images from a checkpoint's G_ema."""

from __future__ import annotations

import argparse

from orchestrator.output import add_output_option, print_json, print_mapping


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="write images from a checkpoint",
        description="Write PNG images from the G_ema of a checkpoint or generator snapshot "
                    "(G_ema-best.pt, G_ema-final.pt, or a training state.pt). Example: "
                    "progan generate runs/G_ema-final.pt out/ --count 16 --grid",
    )
    parser.add_argument("checkpoint", help="checkpoint file (local path)")
    parser.add_argument("out_dir", help="folder for the PNG files (created if missing)")
    parser.add_argument("--count", type=int, default=16, help="number of images (default: 16)")
    parser.add_argument("--seed", type=int, default=0, help="latent seed (default: 0)")
    parser.add_argument("--grid", action="store_true", help="also write all images as one grid.png")
    add_output_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import math
    from pathlib import Path

    import torch

    from gan.checkpoint import load_generator
    from gan.errors import UserError
    from gan.images import save_image_grid, to_uint8

    if args.count < 1:
        raise UserError(f"--count must be at least 1, got {args.count}")
    generator, lod, config = load_generator(args.checkpoint)
    latents = torch.randn(args.count, config.model.latent_size, generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        images = to_uint8(generator(latents, lod))
    factor = config.model.resolution // images.shape[-1]
    images = images.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
    out_dir = Path(args.out_dir)
    written = [str(save_image_grid(images[i:i + 1], out_dir / f"image-{i:05d}.png", columns=1))
               for i in range(args.count)]
    if args.grid:
        written.append(str(save_image_grid(images, out_dir / "grid.png", columns=math.ceil(math.sqrt(args.count)))))
    summary = {"checkpoint": args.checkpoint, "lod": lod, "resolution": config.model.resolution,
               "images": len(written)}
    if args.output == "json":
        print_json({**summary, "files": written})
    else:
        print_mapping(summary, title="generated")
    return 0
