"""Dataset preparation of ``nnunet_cl benchmark``: from an MSD task folder, an nnU-Net dataset id or
nothing (a generated dataset) to preprocessed 2d data, and the benchmark's own ``nnUNet_results``.

``nnUNetv2_convert_MSD_dataset`` (MSD folder given and not converted yet) and
``nnUNetv2_plan_and_preprocess -c 2d`` (no 2d data yet) write into ``$nnUNet_raw`` / ``$nnUNet_preprocessed``,
or ``OUTPUT/nnUNet_raw`` / ``OUTPUT/nnUNet_preprocessed`` when those variables are unset.
"""

from __future__ import annotations

import glob
import json
import os
import re

from nnunet_cl.errors import NnunetClError
from nnunet_cl.nnunet_context import CONFIGURATION, DEFAULT_PLANS
from nnunet_cl.splits import check_fold_exists
from nnunet_cl.tools.benchmark_children import ChildProcesses
from nnunet_cl.tools.benchmark_plan import Budget

NNUNET_PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed")
# Without -d: a generated dataset (nnunet_cl.synthetic), large enough for 10 % of a fold to be 3 cases.
GENERATED_DATASET_ID, GENERATED_DATASET_NAME = 990, "Dataset990_Synth"
GENERATED_CASES, GENERATED_SHAPE = 40, (24, 64, 64)


class BenchmarkDataset:
    """``resolve()`` (names and paths, nothing created) -> ``check_inputs()`` (folds, test folder, plans: still
    nothing created) -> ``prepare()``. After ``resolve()``: ``dataset_id``, ``dataset_name``, ``output`` (absolute);
    after ``check_inputs()``: ``test_cases`` (or None); after ``prepare()`` the nnU-Net variables of this process
    point at the data and at ``OUTPUT/nnUNet_results``."""

    def __init__(self, args, budget: Budget, children: ChildProcesses):
        self.args = args
        self.budget = budget
        self.children = children
        self.test_cases = None

    def output_folder(self) -> str:
        return os.path.abspath(self.args.output or os.path.join(os.getcwd(), "nnunet_cl_benchmark",
                                                                f"{self.dataset_name}_{self.budget.name}"))

    def resolve_paths(self) -> None:
        """OUTPUT, and nnUNet_raw / nnUNet_preprocessed from the environment, else below OUTPUT (nothing is
        created yet)."""
        self.output = self.output_folder()
        if os.path.exists(self.output) and not os.path.isdir(self.output):
            raise NnunetClError(f"--output {self.output} is a file, not a folder; choose another --output")
        self.children.output = self.output
        self.default_data_paths(self.output)

    def setup_environment(self) -> None:
        """OUTPUT/nnUNet_results for every run, and the data folders."""
        # This process resolves names through nnU-Net, which reads the variables lazily: set them here too.
        os.environ["nnUNet_results"] = os.path.join(self.output, "nnUNet_results")
        for variable in NNUNET_PATH_VARIABLES + ("nnUNet_results",):
            os.makedirs(os.environ[variable], exist_ok=True)

    @staticmethod
    def default_data_paths(output: str) -> None:
        for variable in NNUNET_PATH_VARIABLES:
            if not os.environ.get(variable):
                os.environ[variable] = os.path.join(os.path.abspath(output), variable)

    def resolve_dataset_id(self, spec: str) -> str:
        if not all(os.environ.get(v) for v in NNUNET_PATH_VARIABLES):
            if self.args.output is None:
                raise NnunetClError(f"dataset {spec!r} is an nnU-Net id, but nnUNet_raw / nnUNet_preprocessed are not "
                                    "set; export them (as for nnU-Net) or give the MSD task folder instead")
            self.default_data_paths(self.args.output)
        from nnunet_cl.nnunet_context import resolve_dataset_name
        return resolve_dataset_name(spec)

    def resolve(self) -> None:
        spec = self.args.dataset
        if spec is None:
            self.dataset_id, self.dataset_name = GENERATED_DATASET_ID, GENERATED_DATASET_NAME
        elif os.path.isdir(spec):
            self.dataset_id, self.dataset_name = msd_dataset_name(spec)
        else:
            self.dataset_name = self.resolve_dataset_id(spec)
            self.dataset_id = int(self.dataset_name[7:10])
        self.resolve_paths()

    def check_inputs(self) -> None:
        """Folds against the split, the test folder and the plans: before OUTPUT exists."""
        preprocessed = os.environ["nnUNet_preprocessed"]
        for fold in self.budget.folds:
            check_fold_exists(os.path.join(preprocessed, self.dataset_name), fold)
        if self.args.test_images is not None:
            self.test_cases = check_test_folder(self.args.test_images, self.args.test_labels,
                                                self.file_ending(self.args.dataset))
        if self.args.plans != DEFAULT_PLANS and not os.path.isfile(
                os.path.join(preprocessed, self.dataset_name, self.args.plans + ".json")):
            raise NnunetClError(f"{self.dataset_name} has no plans {self.args.plans!r}; create them first (e.g. "
                                f"nnUNetv2_plan_and_preprocess -d {self.dataset_id} -c 2d -pl <planner>) or drop -p")

    def prepare(self) -> None:
        spec = self.args.dataset
        self.setup_environment()
        raw = os.path.join(os.environ["nnUNet_raw"], self.dataset_name)
        if spec is None and not os.path.isfile(os.path.join(raw, "dataset.json")):
            self.generate(raw)
        if spec is not None and os.path.isdir(spec) and not os.path.isfile(os.path.join(raw, "dataset.json")):
            if os.path.isdir(raw):
                import shutil
                print(f"removing the incomplete conversion {raw} (it has no dataset.json)", flush=True)
                shutil.rmtree(raw)
            self.children.execute(["nnUNetv2_convert_MSD_dataset", "-i", os.path.abspath(spec), "-np",
                                   self.args.processes], "convert", "convert the MSD task", training=False)
        state = preprocessing_state(os.environ["nnUNet_raw"], os.environ["nnUNet_preprocessed"], self.dataset_name,
                                    self.args.plans)
        if state == "plan":
            self.children.execute(["nnUNetv2_plan_and_preprocess", "-d", self.dataset_id, "-c", CONFIGURATION, "-np",
                                   self.args.processes], "preprocess", f"plan and preprocess ({CONFIGURATION})",
                                  training=False)
        elif state == "preprocess":
            self.children.execute(["nnUNetv2_preprocess", "-d", self.dataset_id, "-c", CONFIGURATION, "-plans_name",
                                   self.args.plans, "-np", self.args.processes], "preprocess", f"preprocess ({CONFIGURATION})",
                                  training=False)

    def generate(self, raw: str) -> None:
        from nnunet_cl.synthetic import make_synthetic_dataset

        if os.path.isdir(raw):          # dataset.json is written last: a folder without it is incomplete
            import shutil
            shutil.rmtree(raw)
        print(f"no dataset given (-d): generating {GENERATED_DATASET_NAME} ({GENERATED_CASES} cases of "
              f"{'x'.join(map(str, GENERATED_SHAPE))} voxels) in {raw}", flush=True)
        make_synthetic_dataset(os.environ["nnUNet_raw"], dataset_id=GENERATED_DATASET_ID,
                               name=GENERATED_DATASET_NAME.split("_", 1)[1], num_cases=GENERATED_CASES,
                               shape=GENERATED_SHAPE)

    def file_ending(self, spec) -> str:
        if spec is None or os.path.isdir(spec):
            return ".nii.gz"                    # what nnUNetv2_convert_MSD_dataset and the generator write
        for variable in ("nnUNet_raw", "nnUNet_preprocessed"):
            path = os.path.join(os.environ[variable], self.dataset_name, "dataset.json")
            if os.path.isfile(path):
                with open(path) as f:
                    return json.load(f)["file_ending"]
        raise NnunetClError(f"{self.dataset_name} has no dataset.json in nnUNet_raw or nnUNet_preprocessed; "
                            "convert the dataset first (or give its MSD task folder)")

    def dataset_json(self) -> dict:
        with open(os.path.join(os.environ["nnUNet_preprocessed"], self.dataset_name, "dataset.json")) as f:
            return json.load(f)


def msd_dataset_name(folder: str) -> tuple:
    """``.../Task04_Hippocampus`` -> (4, "Dataset004_Hippocampus"), as nnUNetv2_convert_MSD_dataset names it."""
    name = os.path.basename(os.path.normpath(folder))
    match = re.fullmatch(r"Task(\d+)_(.+)", name)
    if match is None or not os.path.isfile(os.path.join(folder, "dataset.json")):
        raise NnunetClError(f"{folder} is not an MSD task folder (TaskXX_Name with dataset.json, imagesTr, labelsTr); "
                            "give such a folder or an nnU-Net dataset id")
    return int(match.group(1)), f"Dataset{int(match.group(1)):03d}_{match.group(2)}"


def preprocessing_state(raw: str, preprocessed: str, dataset_name: str, plans: str) -> str:
    """``plan`` (no plans yet), ``preprocess`` (2d data missing or incomplete) or ``ready``."""
    folder = os.path.join(preprocessed, dataset_name)
    plans_file = os.path.join(folder, plans + ".json")
    if not os.path.isfile(plans_file):
        return "plan"
    with open(plans_file) as f:
        data_identifier = json.load(f)["configurations"][CONFIGURATION]["data_identifier"]
    data = os.path.join(folder, data_identifier)
    n_done = len(glob.glob(os.path.join(data, "*.pkl")))
    raw_json = os.path.join(raw, dataset_name, "dataset.json")
    expected = None
    if os.path.isfile(raw_json):
        with open(raw_json) as f:
            expected = json.load(f).get("numTraining")
    gt = len(os.listdir(os.path.join(folder, "gt_segmentations"))) if os.path.isdir(
        os.path.join(folder, "gt_segmentations")) else 0
    if n_done == 0 or (expected is not None and (n_done < expected or gt < expected)):
        return "preprocess"
    return "ready"


def check_test_folder(images: str, labels: str, ending: str) -> list:
    """Case ids of the test folder; every image (CASE_0000<ending>) needs its label (CASE<ending>)."""
    for flag, folder in (("--test-images", images), ("--test-labels", labels)):
        if not os.path.isdir(folder):
            raise NnunetClError(f"{flag} {folder} is not a folder; give the folder of the test cases")
    cases = sorted({os.path.basename(p)[: -len("_0000" + ending)]
                    for p in glob.glob(os.path.join(images, "*_0000" + ending))})
    if not cases:
        raise NnunetClError(f"{images} holds no images named CASE_0000{ending}; use nnU-Net's naming")
    missing = [c for c in cases if not os.path.isfile(os.path.join(labels, c + ending))]
    if missing:
        raise NnunetClError(f"{len(missing)} test images have no label in {labels} (e.g. {missing[0]}{ending}); "
                            "give every image its label")
    label_cases = {os.path.basename(p)[: -len(ending)] for p in glob.glob(os.path.join(labels, "*" + ending))}
    orphans = sorted(label_cases - set(cases))
    if orphans:
        raise NnunetClError(f"{len(orphans)} labels in {labels} have no test image in {images} (e.g. {orphans[0]}"
                            f"{ending} without {orphans[0]}_0000{ending}); give both folders the same cases")
    return cases
