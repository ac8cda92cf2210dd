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
