"""How to train a classifier; saved as training_config.json beside every model it makes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class TrainConfig:
    base_model: str = ""  # checkpoint directory or hub id; "" = the packaged MiniLM BERT
    lora: bool = False  # train low-rank adapters (peft) instead of every encoder weight
    lora_rank: int = 16  # adapter rank r
    lora_alpha: int = 32  # adapter scaling numerator (scale = alpha / rank)
    lora_dropout: float = 0.1
    lora_targets: list[str] = field(default_factory=lambda: ["query", "key", "value", "dense"])
    pooling: str = "mean"  # "mean" (how the sentence encoder was trained) or "cls"
    probe_init: bool = True  # start the head from a linear probe on frozen embeddings (LP-FT)
    epochs: int = 4  # upper bound; early stopping may end sooner
    batch_size: int = 32
    lr: float = 8e-5  # peak learning rate of the encoder weights (full fine-tune)
    lora_lr: float = 5e-4  # peak learning rate of the LoRA adapters
    head_lr: float = 1e-3  # peak learning rate of the classification head
    weight_decay: float = 0.01  # AdamW, not applied to biases and LayerNorm weights
    warmup_ratio: float = 0.06  # share of steps with a linear warm-up, then linear decay
    dropout: float = 0.1  # in the encoder and before the classification head
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    # Reviewed out-of-scope messages in fine-tuning (outlier exposure): the weight of the loss
    # that pulls their predicted distribution towards uniform over the intents (0: not used),
    # and how many of them each step draws beside the batch.
    out_of_scope_weight: float = 0.0
    out_of_scope_batch: int = 16
    max_length: int = 64  # tokens; customer messages are short
    patience: int = 3  # epochs without a better validation macro-F1 before stopping
    val_fraction: float = 0.1  # validation split cut from the training data
    seed: int = 13
    device: str = ""  # "" = CUDA when present, else CPU
    quantize: bool = True  # try int8 and bf16 on CPU; each kept only if validation accuracy holds
    quantize_tolerance: float = 0.005  # largest accuracy drop either may cost (0.5 points)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
