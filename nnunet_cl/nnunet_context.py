"""Everything nnunet-cl needs from an nnU-Net dataset: env vars, dataset name, plans, the network.

The network is built with nnU-Net's own ``nnUNetTrainer.build_network_architecture`` from the plans,
so pre-trained weights transfer to the fine-tuning trainer key by key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import dataclass

from nnunet_cl.errors import NnunetClError

NNUNET_ENV_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
PRETRAINED_CHECKPOINT = "checkpoint_final.pth"   # the file the Init trainers load
DEFAULT_PLANS = "nnUNetPlans"                    # nnU-Net's plans identifier when -p is not given
CONFIGURATION = "2d"                             # the one nnU-Net configuration nnunet-cl trains


def add_plans_argument(parser) -> None:
    """``-p``: the plans identifier, as nnU-Net's commands take it."""
    parser.add_argument("-p", "--plans", dest="plans", default=DEFAULT_PLANS,
                        help=f"plans identifier (default {DEFAULT_PLANS})")


def add_dataset_arguments(parser, dataset_help: str = "dataset id or name (as for nnUNetv2_train)",
                          configuration: bool = True) -> None:
    """``-d`` (required), ``-p`` and, with ``configuration``, ``-c``: what every command that opens a
    dataset's plans takes (the values go to :func:`load_dataset_context`)."""
    parser.add_argument("-d", "--dataset", dest="dataset", required=True, help=dataset_help)
    add_plans_argument(parser)
    if configuration:
        parser.add_argument("-c", "--configuration", dest="configuration", default=CONFIGURATION,
                            help=f"nnU-Net configuration (only {CONFIGURATION})")


def results_folder_name(name: str, plans_identifier: str, configuration: str = CONFIGURATION) -> str:
    """``<name>__<plans>__<configuration>``: nnU-Net's name of a trainer's results folder, which the
    pre-training folders follow too."""
    from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier
    return convert_trainer_plans_config_to_identifier(name, plans_identifier, configuration)


def pretraining_folder(results: str, dataset_name: str, method_folder_name: str, plans_identifier: str,
                       configuration: str = CONFIGURATION) -> str:
    """Where ``nnunet_cl pretrain`` writes and the Init trainers and the benchmark look:
    ``<results>/<Dataset>/nnunet_cl/<method folder>__<plans>__<configuration>``."""
    return os.path.join(results, dataset_name, "nnunet_cl",
                        results_folder_name(method_folder_name, plans_identifier, configuration))


def require_nnunet_env(names=NNUNET_ENV_VARS) -> dict:
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        raise NnunetClError(
            f"environment variable(s) {', '.join(missing)} not set; export them as for nnU-Net "
            "(see nnU-Net's documentation/setting_up_paths.md)")
    return {n: os.environ[n] for n in names}


def resolve_dataset_name(dataset: str) -> str:
    """``4``, ``004`` or ``Dataset004_Hippocampus`` -> ``Dataset004_Hippocampus`` (via nnU-Net)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        name = maybe_convert_to_dataset_name(dataset if not str(dataset).isdigit() else int(dataset))
    except (RuntimeError, ValueError, AssertionError):
        name = None
    known = known_dataset_names()
    if name is not None and name in known:
        return name
    close = difflib.get_close_matches(str(dataset), known, n=3, cutoff=0.5)
    raise NnunetClError(
        f"unknown dataset {dataset!r}: no such DatasetXXX_* folder in nnUNet_raw, nnUNet_preprocessed or "
        "nnUNet_results; " + (f"did you mean {' or '.join(close)}?" if close else
                              "convert it first (nnUNetv2_convert_MSD_dataset / nnUNetv2_plan_and_preprocess)"))


def known_dataset_names() -> list:
    """DatasetXXX_* folders in nnUNet_raw, nnUNet_preprocessed and nnUNet_results (as nnU-Net searches them)."""
    names = set()
    for variable in NNUNET_ENV_VARS:
        folder = os.environ.get(variable)
        if folder and os.path.isdir(folder):
            names.update(n for n in os.listdir(folder) if n.startswith("Dataset") and
                         os.path.isdir(os.path.join(folder, n)))
    return sorted(names)


def architecture_fingerprint(network) -> str:
    """Hash of the network class and every (key, shape) except the class-count-dependent seg layers."""
    items = sorted((k, tuple(v.shape)) for k, v in network.state_dict().items() if ".seg_layers." not in k)
    text = type(network).__name__ + json.dumps(items)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class DatasetContext:
    dataset_name: str
    preprocessed_folder: str
    plans_identifier: str
    configuration: str
    plans: dict
    dataset_json: dict
    plans_manager: object
    configuration_manager: object

    @property
    def data_folder(self) -> str:
        return os.path.join(self.preprocessed_folder, self.configuration_manager.data_identifier)

    @property
    def patch_size(self) -> tuple:
        return tuple(int(p) for p in self.configuration_manager.patch_size)

    @property
    def num_input_channels(self) -> int:
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        return determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)

    @property
    def num_output_channels(self) -> int:
        return self.plans_manager.get_label_manager(self.dataset_json).num_segmentation_heads

    def build_network(self, deep_supervision: bool = False):
        """Exactly the network ``nnUNetTrainer.initialize`` builds for these plans."""
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        cm = self.configuration_manager
        return nnUNetTrainer.build_network_architecture(
            self.plans_manager, cm, self.num_input_channels, self.num_output_channels,
            enable_deep_supervision=deep_supervision)

    def pretraining_output_folder(self, method_folder_name: str) -> str:
        results = require_nnunet_env(("nnUNet_results",))["nnUNet_results"]
        return pretraining_folder(results, self.dataset_name, method_folder_name, self.plans_identifier,
                                  self.configuration)


def load_dataset_context(dataset: str, plans_identifier: str = DEFAULT_PLANS,
                         configuration: str = CONFIGURATION) -> DatasetContext:
    require_nnunet_env()
    if configuration != CONFIGURATION:
        raise NnunetClError(f"configuration {configuration!r} is not supported: nnunet-cl pre-trains the 2D U-Net; "
                            f"use -c {CONFIGURATION}")
    dataset_name = resolve_dataset_name(dataset)
    preprocessed = os.path.join(os.environ["nnUNet_preprocessed"], dataset_name)
    plans_file = os.path.join(preprocessed, plans_identifier + ".json")
    if not os.path.isfile(plans_file):
        raise NnunetClError(
            f"{dataset_name} has no plans {plans_identifier!r} in nnUNet_preprocessed ({plans_file} missing); "
            f"run: nnUNetv2_plan_and_preprocess -d {dataset_name} -c {CONFIGURATION}")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    with open(plans_file) as f:
        plans = json.load(f)
    with open(os.path.join(preprocessed, "dataset.json")) as f:
        dataset_json = json.load(f)
    plans_manager = PlansManager(plans)
    if configuration not in plans_manager.available_configurations:
        raise NnunetClError(f"plans {plans_identifier!r} of {dataset_name} have no {CONFIGURATION!r} configuration; "
                            f"run: nnUNetv2_plan_and_preprocess -d {dataset_name} -c {CONFIGURATION}")
    cm = plans_manager.get_configuration(configuration)
    context = DatasetContext(dataset_name, preprocessed, plans_identifier, configuration, plans, dataset_json,
                             plans_manager, cm)
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class  # noqa: F401 (import check)
    if not os.path.isdir(context.data_folder) or not _has_cases(context.data_folder):
        raise NnunetClError(
            f"{dataset_name} is not preprocessed for {CONFIGURATION} ({context.data_folder} missing or empty); "
            f"run: nnUNetv2_plan_and_preprocess -d {dataset_name} -c {CONFIGURATION}")
    return context


def _has_cases(folder: str) -> bool:
    return any(f.endswith((".b2nd", ".npz", ".npy")) for f in os.listdir(folder))
