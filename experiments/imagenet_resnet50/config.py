"""ResNet50 (AvgPool stem) on ImageNet at 6% of the DReLUs (paper §5; ``paper_reference.md`` §0-5, §7).

Paper settings:

* starting point: a published ResNet50 (the paper: mmcls ``resnet50_8xb32_in1k``, 76.55%; pass
  ``--mmcls`` for its key names, or a torchvision state dict without it), with the stem MaxPool
  replaced by AvgPool(3, s2, p1) and finetuned 15 epochs at lr 1e-4 (the ``train`` step here);
* distortions on 512 training images (a fixed shuffle), candidate lists by map size;
* finetune 25 epochs, lr 5e-3, x0.25 at epochs 12/18/22 (preset ``imagenet_resnet50_finetune``);
* 6% of 9,608,704 DReLUs = 576,522; secure inference with 16 compared bits (5 low bits dropped,
  16 fractional bits).
"""

from experiments.common import Experiment, smoke_overrides


def get_config() -> Experiment:
    return Experiment(
        name="imagenet_resnet50",
        title="ResNet50 (AvgPool stem), ImageNet, 6% DReLU budget",
        pipeline=dict(
            train_config="imagenet_resnet50_finetune",
            finetune_config="imagenet_resnet50_finetune",
            # the AvgPool pre-finetune of the published weights: 15 epochs at lr 1e-4
            train_overrides={"num_epochs": 15, "learning_rate": 1e-4, "schedule": "constant",
                             "step_boundaries": []},
            budgets=(0.06,),
            profile_samples=512,
            profile_shuffle=True,
            candidates="paper",
            baselines=False,
            distill=False,
            infer_images=500,
            infer_batch_size=8,
            compare_bits=16,
            lsb_drop_bits=5,
            frac_bits=16,
        ),
        weights="a published ResNet50 state dict: mmcls resnet50_8xb32_in1k (--mmcls) or torchvision "
        "resnet50 (IMAGENET1K_V1) as .pth (needs torch) or .npz of torch-layout arrays",
        needs_weights=True,
        # exact DReLU for the untrained smoke model (see cifar100_resnet18/config.py)
        smoke=smoke_overrides("ResNet50", {"stage_sizes": [1, 1, 1, 1], "num_filters": 4}, compare_bits=64,
                              lsb_drop_bits=0),
        smoke_data=dict(input_shape=(64, 64, 3), num_classes=1000, train=8, test=4),
        smoke_init=True,
        paper={
            "all-ReLU top-1": "76.55%",
            "top-1 after finetuning at 3/6/9/12/15/18%": "65.59 / 70.36 / 72.23 / 73.30 / 74.03 / 74.40",
            "DReLUs all-ReLU / 6%": "9,608,704 / 576,522",
            "communication all-ReLU / 6% reduced-bit (16 bits) / 6% exact": "6.356 / 0.925 / 1.091 GB",
            "time all-ReLU / 6% (3 CPU processes)": "31.9 / 6.17 s per image",
        },
        compute="4-8 GPUs: ~1-2 days for the 15+25 finetuning epochs, ~1 GPU-day profiling (512 images x "
        "22,720 channels x ~95 sizes); secure inference several s/image",
    )
