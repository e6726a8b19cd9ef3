"""TrainConfig: how a model is trained. torch-free, so that the CLI can build its parser without torch."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from medge.edge.config import check_ranges, check_types, from_dict
from medge.edge.inputs.index import FORMATS, UNCERTAIN
from medge.train.metrics import HIGHER_IS_BETTER

SCHEDULES = ("cosine", "none")
TASKS = ("auto", "single", "multilabel")
LABEL_FORMATS = FORMATS  # the index layouts edge.inputs.index reads: nih, chexpert, generic
MAX_POS_WEIGHT = 50.0  # pos_weight's per-finding negatives/positives is clipped to this (a finding with 3 positives
#                        in 10,000 images would otherwise weigh each of them 3,000 times)
ARCHS = ("resnet18", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "densenet121")


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained; saved in every checkpoint."""

    data: str = ""  # data folder (ImageFolder layout, see train.data); or, instead, labels:
    labels: str = ""  # an index CSV (edge.inputs.index) naming the images and their findings; "" = class folders
    images: str = ""  # the folder the index's paths are relative to; "" = the index's own folder
    labels_format: str = "generic"  # the index's layout: nih, chexpert or generic
    uncertain: str = "ignore"  # uncertain labels (-1): ignore (masked out of loss and metrics), zeros or ones
    task: str = "auto"  # auto, single (softmax over classes) or multilabel (one sigmoid per finding); auto =
    #                     multilabel for an index of more than one finding, else single
    pos_weight: bool = False  # multilabel: weigh each finding's positives by its negatives/positives on the training
    #                           split (clipped to MAX_POS_WEIGHT); recorded in config.json and summary.json
    out: str = "runs/train"  # run folder: checkpoints, metrics.jsonl, config.json
    arch: str = "resnet18"  # one of train.models.ARCHS
    pretrained: bool = False  # start from torchvision's ImageNet weights
    epochs: int = 10
    batch_size: int = 16  # per process
    lr: float = 1e-3  # Adam
    weight_decay: float = 5e-4  # Adam's L2 penalty
    schedule: str = "cosine"  # "cosine" (per step, to 0 at the end of the last epoch) or "none" (constant)
    warmup_epochs: float = 1.0  # linear warm-up from ~0 to lr over this many epochs (per step; at most a quarter
    #                             of the run); 0 = off
    zero_init_residual: bool = False  # resnets from scratch: each residual branch starts at 0 (identity blocks)
    bn_recalibration: int = 256  # training images (no augmentation) that re-estimate batch-norm statistics
    #                              before each validation ("precise BN"); 0 = off
    class_weights: bool = False  # weight cross-entropy by inverse class frequency
    hflip: float = 0.5  # probability of a horizontal flip; 0 turns it off (it swaps left/right anatomy)
    rotate_deg: float = 0.0  # random rotation in [-deg, +deg]; 0 = off (the default recipe: see the README)
    val_fraction: float = 0.2  # used only when the data has no val/ folder (an index: unless it names splits)
    test_fraction: float = 0.1  # index data only: the share of patients held out for the test split; 0 = none
    best_metric: str = "auc"  # keep the checkpoint that is best by this: auc, accuracy, balanced_accuracy, loss;
    #                           multilabel: auc (= mean_auc, the mean of the per-finding AUCs) or loss
    seed: int = 0
    device: str = "auto"  # auto (cuda when available), cpu, cuda
    amp: str = "auto"  # CUDA only: auto (bf16 if supported, else fp16), bf16, fp16, off
    workers: int = 2  # threads that decode and preprocess images
    cache_dir: str = ""  # preprocessed-image cache; "" = ~/.cache/medge/preprocess

    def __post_init__(self):
        check_types(self)
        check_ranges("TrainConfig", [
            (self.arch in ARCHS, f"arch must be one of {ARCHS}"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2 (batch norm needs 2 samples)"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (self.bn_recalibration >= 0, "bn_recalibration must be >= 0"),
            (0 <= self.hflip <= 1, "hflip must be a probability in [0, 1]"),
            (0 <= self.rotate_deg <= 180, "rotate_deg must be in [0, 180]"),
            (0 < self.val_fraction < 1, "val_fraction must be in (0, 1)"),
            (0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1,
             "test_fraction must be in [0, 1), with val_fraction + test_fraction < 1"),
            (not (self.data and self.labels), "give data (class folders) or labels (an index), not both"),
            (self.labels_format in LABEL_FORMATS, f"labels_format must be one of {LABEL_FORMATS}"),
            (self.uncertain in UNCERTAIN, f"uncertain must be one of {UNCERTAIN}"),
            (self.task in TASKS, f"task must be one of {TASKS}"),
            (self.best_metric in HIGHER_IS_BETTER, f"best_metric must be one of {list(HIGHER_IS_BETTER)}"),
            (self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
            (self.amp in ("auto", "bf16", "fp16", "off"), "amp must be auto, bf16, fp16 or off"),
            (self.workers >= 1, "workers must be >= 1"),
        ])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from a dict (a checkpoint or config.json); unknown keys and bad values raise ConfigError."""
        return from_dict(cls, d)
