"""``nnunet_cl`` console script: ``pretrain`` and ``env`` are defined here, every other subcommand by its
tool module's ``add_*_parser``."""

from __future__ import annotations

import argparse
import sys

from nnunet_cl.nnunet_context import add_dataset_arguments
from nnunet_cl.precision import PRECISIONS
from nnunet_cl.tools.options import parse_option


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse's errors as every other bad input of nnunet_cl: one line on stderr, exit 1 (not usage + 2).
    Sub-parsers inherit the class (``add_subparsers`` uses the parent's class)."""

    def error(self, message: str):
        from nnunet_cl.errors import NnunetClError
        raise NnunetClError(f"{self.prog}: {message} (see {self.prog} -h)")


def add_pretrain_parser(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="contrastive pre-training of the 2D nnU-Net of a dataset's plans")
    add_dataset_arguments(p)
    p.add_argument("-m", dest="method", required=True, help="pre-training method (e.g. pcl, simclr)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--iters-per-epoch", type=int, default=250)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="initial learning rate (default: the method's)")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--save-every", type=int, default=1, help="write checkpoint_latest.pth every N epochs")
    p.add_argument("-device", "--device", dest="device", choices=("cpu", "cuda"), default="cuda"
                   if _cuda_available() else "cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="autocast of the step: auto = float16 + gradient scaler on CUDA (as nnU-Net), float32 on CPU; "
                        "bfloat16 also on CPU")
    p.add_argument("--c", dest="continue_training", action="store_true", help="resume from checkpoint_latest.pth")
    p.add_argument("-o", "--option", dest="options", action="append", type=parse_option, default=[],
                   metavar="KEY=VALUE", help="method option, e.g. -o temperature=0.2 (repeatable)")
    p.add_argument("--fraction", type=float, default=None,
                   help="label-aware methods (semi_local): labelled fraction of the fold, as the _10pct/_25pct trainer")
    p.add_argument("--fold", default=None, help="label-aware methods: the nnU-Net fold whose labelled subset is used")
    p.set_defaults(func=run_pretrain)


def _cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def run_pretrain(args) -> None:
    from nnunet_cl.pretraining.engine import PretrainConfig, Pretrainer

    config = PretrainConfig(dataset=args.dataset, method=args.method, configuration=args.configuration,
                            plans=args.plans, epochs=args.epochs, iters_per_epoch=args.iters_per_epoch,
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                            save_every=args.save_every, continue_training=args.continue_training,
                            precision=args.precision,
                            options=dict(args.options, **_label_options(args)))
    from nnunet_cl import distributed
    final = Pretrainer(config).run()
    if distributed.is_main_process():
        print(f"pre-trained checkpoint: {final}")
    distributed.shutdown()


def _label_options(args) -> dict:
    """--fraction / --fold become the method options ``fraction`` / ``fold`` of label-aware methods."""
    given = {k: v for k, v in (("fraction", args.fraction), ("fold", args.fold)) if v is not None}
    if given:
        from nnunet_cl.errors import NnunetClError
        from nnunet_cl.pretraining.methods import get_method
        if not get_method(args.method).is_label_aware():
            raise NnunetClError(f"method {args.method!r} does not use labels: drop --fraction/--fold "
                                "(they belong to label-aware methods such as semi_local)")
    return given


def run_env(args) -> None:
    from nnunet_cl.ext_trainer import export_lines
    print(export_lines())


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="nnunet_cl", description="Contrastive pre-training for nnU-Net v2")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_pretrain_parser(subparsers)
    env = subparsers.add_parser("env", help='print the export line for nnUNet_extTrainer: eval "$(nnunet_cl env)"')
    env.set_defaults(func=run_env)
    from nnunet_cl.tools.superpixels import add_superpixels_parser  # SuperCL
    add_superpixels_parser(subparsers)
    from nnunet_cl.tools.show_superpixels import add_show_superpixels_parser  # SuperCL
    add_show_superpixels_parser(subparsers)
    from nnunet_cl.tools.trainer_list import add_trainers_parser  # the generated trainer classes
    add_trainers_parser(subparsers)
    from nnunet_cl.tools.benchmark import add_benchmark_parser  # quality benchmark
    add_benchmark_parser(subparsers)
    from nnunet_cl.tools.speed import add_speed_parser  # speed benchmark
    add_speed_parser(subparsers)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    from nnunet_cl.ext_trainer import enable_in_this_process
    enable_in_this_process()  # our own subprocesses (nnUNetv2_train ...) must find our trainers
    try:
        args.func(args)
    except KeyboardInterrupt:     # outside pre-training's own handler (which names the checkpoint)
        print("nnunet_cl: interrupted", file=sys.stderr)
        sys.exit(130)
