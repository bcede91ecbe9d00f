"""DeepLabV3 on MobileNetV2 (output stride 8) on ADE20K at 6% of the DReLUs (paper §5;
``paper_reference.md`` §3-5, §7).

Paper settings:

* starting point: mmseg's DeepLabV3-MobileNetV2 (34.08 mIoU), with ReLU in place of ReLU6;
  used as is (``pretrain=False``: no pre-finetune);
* distortions on 48 training images (512x512 center crops, a fixed shuffle), candidate lists by
  map size (the 1x1 image-pool layer gets ``[1,1]``, identity, zero);
* finetune 40k iterations, batch 16, poly lr 5e-4 -> 1e-4, 1,000 warm-up iterations (preset
  ``ade20k_mobilenetv2_finetune``);
* 6% of 85,262,848 DReLUs = 5,115,770; secure inference with 32 compared bits (no dropped bits,
  12 fractional bits).

jaxmpc cannot import mmseg DeepLabV3 checkpoints yet (``import_torch_state_dict`` covers ResNets
and MobileNetV2 classifiers), so ``--init-weights`` must be a jaxmpc run folder holding a trained
``DeepLabV3MobileNetV2``.
"""

from experiments.common import Experiment, smoke_overrides


def get_config() -> Experiment:
    return Experiment(
        name="ade20k_mobilenetv2",
        title="DeepLabV3-MobileNetV2 (d8), ADE20K, 6% DReLU budget",
        pipeline=dict(
            train_config="ade20k_mobilenetv2_finetune",
            finetune_config="ade20k_mobilenetv2_finetune",
            pretrain=False,
            init_weights=None,
            budgets=(0.06,),
            profile_samples=48,
            profile_shuffle=True,
            candidates="paper",
            baselines=False,
            distill=False,
            infer_images=100,
            infer_batch_size=1,
            compare_bits=32,
            lsb_drop_bits=0,
            frac_bits=12,
        ),
        weights="a jaxmpc run folder with a trained DeepLabV3MobileNetV2 (importing mmseg checkpoints of "
        "DeepLabV3 is not implemented in jaxmpc.train yet)",
        needs_weights=True,
        # the smoke run trains its tiny model for two steps (pretrain=True, no init weights)
        smoke=smoke_overrides("_DeepLabV3MobileNetV2Tiny", {}, pretrain=True),
        smoke_data=dict(input_shape=(64, 64, 3), num_classes=150, task="segmentation", train=8, test=2),
        paper={
            "all-ReLU mIoU": "34.08",
            "mIoU after finetuning at 3/6/9/12/15/18%": "33.23 / 34.73 / 35.53 / 35.77 / 36.01 / 36.31",
            "DReLUs all-ReLU / 6%": "85,262,848 / 5,115,770",
            "communication all-ReLU / 6% reduced-bit (32 bits) / 6% exact": "64.0 / 7.54 / 8.86 GB",
            "time all-ReLU / 6% (3 CPU processes)": "381 / 39.9 s per image",
        },
        compute="4 GPUs: ~1 day finetuning (40k iterations), ~1-2 GPU-days profiling (48 images x 17,344 "
        "channels x ~97 sizes at 512x512); secure inference tens of s/image",
    )
