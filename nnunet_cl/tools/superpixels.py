"""``nnunet_cl superpixels``: build SuperCL's SLIC superpixel cache of a dataset ahead of pre-training."""

from __future__ import annotations

from typing import Optional

from nnunet_cl.nnunet_context import DEFAULT_PLANS, add_dataset_arguments, load_dataset_context
from nnunet_cl.pretraining.methods import get_method
from nnunet_cl.pretraining.slices import PreprocessedSlices
from nnunet_cl.pretraining.superpixels import SuperpixelCache
from nnunet_cl.tools.options import parse_option
from nnunet_cl.validation import positive_int


def supercl_superpixels(dataset: str, plans: str = DEFAULT_PLANS, options: Optional[dict] = None,
                        num_processes: int = 2, progress: bool = True):
    """Build (if missing) and open the superpixel cache SuperCL uses for a dataset with these method
    options (``n_segments``, ``compactness``, ``slic_iterations``, ``feature_stage``): the same
    derivation as ``nnunet_cl pretrain -m supercl``. Returns ``(context, slices, params, cache)``."""
    positive_int(num_processes, "-np")
    method = get_method("supercl")
    options = method.resolve_options(options or {})
    context = load_dataset_context(dataset, plans)
    strides = context.build_network().encoder.strides
    _, _, params = method.geometry(context.patch_size, strides, options)
    slices = PreprocessedSlices(context.data_folder, context.patch_size)
    cache = SuperpixelCache.ensure(slices, params, num_processes=num_processes, progress=progress)
    return context, slices, params, cache


def add_superpixels_parser(subparsers) -> None:
    p = subparsers.add_parser("superpixels", help="compute SuperCL's SLIC superpixel cache of a dataset "
                                                  "(nnunet_cl pretrain -m supercl does it when missing)")
    add_superpixel_arguments(p, option_flags=("-o", "--option"))
    p.set_defaults(func=run_superpixels)


def add_superpixel_arguments(p, option_flags=("--option",)) -> None:
    add_dataset_arguments(p, configuration=False)
    p.add_argument(*option_flags, dest="options", action="append", type=parse_option, default=[],
                   metavar="KEY=VALUE", help="SuperCL option deciding the superpixels: n_segments, compactness, "
                                             "slic_iterations, feature_stage (as for pretrain -m supercl)")
    p.add_argument("-np", dest="num_processes", type=int, default=2, help="processes for SLIC (default 2)")


def run_superpixels(args) -> None:
    context, slices, params, cache = supercl_superpixels(args.dataset, args.plans, dict(args.options),
                                                         args.num_processes)
    print(f"superpixels of {len(slices.case_ids)} cases ({slices.num_slices} slices), {params.n_segments} per "
          f"{'x'.join(map(str, params.patch_size))} patch, compactness {params.compactness}, "
          f"{params.max_num_iter} iterations: {cache.folder}")
