"""Every command that opens a dataset's plans takes -d / -p / -c the same way, with one default."""

import argparse

import pytest

from nnunet_cl.nnunet_context import DEFAULT_PLANS, add_dataset_arguments, add_plans_argument
from nnunet_cl.tools.cli import build_parser


def test_dataset_arguments_parse_as_nnunet_spells_them():
    parser = argparse.ArgumentParser()
    add_dataset_arguments(parser)
    args = parser.parse_args(["-d", "4"])
    assert (args.dataset, args.plans, args.configuration) == ("4", DEFAULT_PLANS, "2d")
    args = parser.parse_args(["--dataset", "Dataset004_Hippocampus", "--plans", "nnUNetResEncUNetMPlans"])
    assert (args.dataset, args.plans) == ("Dataset004_Hippocampus", "nnUNetResEncUNetMPlans")
    with pytest.raises(SystemExit):
        parser.parse_args([])   # -d is required


def test_without_configuration_there_is_no_c_option():
    parser = argparse.ArgumentParser()
    add_dataset_arguments(parser, configuration=False)
    assert not hasattr(parser.parse_args(["-d", "4"]), "configuration")
    with pytest.raises(SystemExit):
        parser.parse_args(["-d", "4", "-c", "2d"])


def _subcommand_parsers():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices


@pytest.mark.parametrize("command", ["pretrain", "superpixels", "show-superpixels", "speed", "benchmark"])
def test_every_subcommand_has_the_one_plans_option(command):
    reference = argparse.ArgumentParser()
    add_plans_argument(reference)
    expected = next(a for a in reference._actions if a.dest == "plans")
    plans = [a for a in _subcommand_parsers()[command]._actions if a.dest == "plans"]
    assert len(plans) == 1
    assert (plans[0].option_strings, plans[0].default, plans[0].help) == \
        (expected.option_strings, expected.default, expected.help)


def test_run_folders_are_where_nnunet_writes_and_reads_them(tmp_path, monkeypatch):
    """The benchmark's fold folder and the learning curve's are nnU-Net's own output folder of that trainer,
    plans and configuration (``get_output_folder``), and -c defaults to the one configuration we train."""
    import importlib.util
    import os

    import nnunetv2.utilities.file_path_utilities as file_paths

    from nnunet_cl.nnunet_context import CONFIGURATION
    from nnunet_cl.tools.benchmark_plan import FinetuneRun

    results = str(tmp_path / "nnUNet_results")
    monkeypatch.setattr(file_paths, "nnUNet_results", results)
    expected = file_paths.get_output_folder("Dataset004_Hippocampus", "nnUNetTrainerPCLInit_10pct", "MyPlans",
                                            "2d", 1)
    run = FinetuneRun("pcl", "nnUNetTrainerPCLInit_10pct", 0.1, 1)
    assert run.fold_folder(results, "Dataset004_Hippocampus", "MyPlans") == expected

    path = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "learning_curve.py")
    spec = importlib.util.spec_from_file_location("learning_curve_script", path)
    learning_curve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(learning_curve)
    expected = file_paths.get_output_folder("Dataset004_Hippocampus", "nnUNetTrainerScratch_10pct", DEFAULT_PLANS,
                                            "2d", 0)
    folder = learning_curve.fold_folder(str(tmp_path), 700, "Dataset004_Hippocampus", "nnUNetTrainerScratch_10pct", 0)
    assert folder == expected.replace(results, str(tmp_path / "steps_700" / "nnUNet_results"))

    assert CONFIGURATION == "2d"
    parser = argparse.ArgumentParser()
    add_dataset_arguments(parser)
    assert parser.parse_args(["-d", "4"]).configuration == CONFIGURATION
