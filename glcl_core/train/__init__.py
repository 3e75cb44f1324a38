"""Training: configuration and profiles, the three stages, evaluation, checkpoints."""
from glcl_core.train.config import (
    DataConfig, FinetuneConfig, GlobalConfig, LocalConfig, ModelConfig, RunConfig, SpeedConfig, make_config,
)
from glcl_core.train.loops import (
    StageResult, build_model, evaluate, finetune, native_prediction, predict_volume, pretrain_global, pretrain_local,
    segmentation_loss,
)

__all__ = [
    "DataConfig", "FinetuneConfig", "GlobalConfig", "LocalConfig", "ModelConfig", "RunConfig", "SpeedConfig",
    "make_config",
    "StageResult", "build_model", "evaluate", "finetune", "native_prediction", "predict_volume", "pretrain_global",
    "pretrain_local", "segmentation_loss",
]
