"""Training: configuration and profiles, the three stages (global and local pre-training, fine-tuning),
evaluation, checkpoints and run folders; the public names of the stages are re-exported here.
"""
from glcl_core.train.config import (
    DataConfig, FinetuneConfig, GlobalConfig, LocalConfig, ModelConfig, RunConfig, SpeedConfig, make_config,
)
from glcl_core.train.evaluation import dice_per_class, evaluate, native_prediction, predict_volume
from glcl_core.train.finetuning import finetune, segmentation_loss
from glcl_core.train.pretrain import pretrain_global, pretrain_local
from glcl_core.train.stages import StageResult, build_model

__all__ = [
    "DataConfig", "FinetuneConfig", "GlobalConfig", "LocalConfig", "ModelConfig", "RunConfig", "SpeedConfig",
    "make_config",
    "StageResult", "build_model", "dice_per_class", "evaluate", "finetune", "native_prediction", "predict_volume",
    "pretrain_global", "pretrain_local", "segmentation_loss",
]
