"""The run configuration. Each field's description is its documentation (the README's
configuration reference is generated from them by ``python -m tunesmith.config.reference``);
defaults here are the only defaults."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = Field("smollm2-135m-instruct", description=(
        "Embedded model name (see `tunesmith models list`), a local Hugging Face checkpoint "
        "directory, a tunesmith run directory, or (online) a hub id."))
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype the weights are loaded in. Trainable weights stay "
        "float32; mixed precision is `train.precision`.")
    chat_template: str | None = Field(None, description=(
        "Override the tokenizer's chat template: a Jinja string, a path to a .jinja file, "
        "or a built-in name (`chatml`, `alpaca`)."))
    chat_template_kwargs: dict[str, bool | int | float | str] = Field(
        default_factory=dict, description=(
            "Switches the chat template reads, e.g. `{enable_thinking: false}` for Qwen3-style "
            "templates. Written into the saved template as defaults, so evaluation, serving, "
            "merging and export render what training did. A key the template never reads is "
            "an error. See docs/tools-and-reasoning.md."))
    trust_remote_code: bool = Field(False, description="Allow model code from the checkpoint "
                                    "to run. Off by default for safety.")
    allow_pickle: bool = Field(False, description=(
        "Load pickle weights (`*.bin`, `*.pt`, `*.pth`) when a model directory has no "
        "safetensors, with `torch.load(weights_only=True)` and a warning. Off: refused."))
    attn_implementation: Literal["sdpa", "eager"] = Field("sdpa", description=(
        "Attention kernel."))


class UnfreezeConfig(_Section):
    every_steps: int | None = Field(None, ge=1, description=(
        "Gradual unfreezing (ULMFiT): unfreeze one more layer group every N optimizer steps."))
    per_epoch: bool = Field(False, description="Unfreeze one more layer group at each epoch start.")
    group_size: int = Field(1, ge=1, description="Transformer layers per unfreezing group.")


class MethodConfig(_Section):
    type: Literal["full", "lora", "qlora", "freeze"] = Field("lora", description=(
        "`full`: all weights train. `lora`: low-rank adapters (peft) on `target_modules`. "
        "`qlora`: LoRA on a base loaded in 4-bit NF4 (bitsandbytes; needs a CUDA GPU — on "
        "CPU use `lora`, with `model.dtype: bfloat16` to halve the base's memory). "
        "`freeze`: full weights but with `freeze_layers` / `freeze_patterns` frozen."))
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names LoRA wraps, or `all-linear`.")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA scaling (alpha / sqrt(r)).")
    freeze_layers: int = Field(0, ge=0, description=(
        "`freeze`: freeze the embeddings and the first N transformer layers."))
    freeze_patterns: list[str] = Field(default_factory=list, description=(
        "`freeze`: regular expressions; parameters whose name matches are frozen."))
    unfreeze: UnfreezeConfig | None = Field(None, description=(
        "Gradual unfreezing for `full`/`freeze`: start with the top layer group (plus head "
        "and final norm) trainable and unfreeze downward."))


class MixtureDataset(_Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description=(
        "Task name; per-task metrics are logged as `loss/<name>`, `val_loss/<name>`, ..."))
    train: str = Field(..., description="This task's training data (same sources as "
                       "`data.train`).")
    validation: str | None = Field(None, description="This task's validation data.")
    format: Literal["auto", "alpaca", "messages", "prompt_completion", "text"] = Field(
        "auto", description="Record format of this dataset (ignored when `prompt` is set).")
    prompt: str | None = Field(None, description=(
        "Turn any record into an instruction: a Python format string over the record's fields "
        "(e.g. `Sentiment of: {text}`) that becomes the user message. Needs `completion`."))
    completion: str | None = Field(None, description=(
        "Format string of the assistant reply (e.g. `{label_text}`); `{label_text}` is "
        "`label_names[record.label]`."))
    label_names: list[str] | None = Field(None, description=(
        "Words for integer labels, exposed to `prompt`/`completion` as `{label_text}`."))
    instruction: str | None = Field(None, description=(
        "Text put before the first user message of every example of this task."))
    system_prompt: str | None = Field(None, description=(
        "System message for this task (overrides `data.system_prompt`)."))
    chat_template: str | None = Field(None, description=(
        "Chat template for this task (name, file or Jinja string; default: the model's)."))
    weight: float | None = Field(None, gt=0, description=(
        "Sampling weight; unset means the number of training examples (examples-"
        "proportional mixing)."))
    max_examples: int | None = Field(None, ge=1, description="Use only the first N rows.")


class MixtureConfig(_Section):
    datasets: list[MixtureDataset] = Field(..., min_length=1, description=(
        "The tasks of the mixture, each with its own data, format, instruction and weight."))
    sampling: Literal["proportional", "temperature"] = Field("proportional", description=(
        "How a batch's task is drawn: `proportional` (probability ∝ weight) or `temperature` "
        "(probability ∝ weight^(1/temperature), which flattens the mixture toward small "
        "tasks). Every batch holds examples of one task."))
    temperature: float = Field(2.0, ge=1, description="Temperature of `temperature` sampling.")


class DataConfig(_Section):
    train: str | None = Field(None, description=(
        "Training data: .jsonl/.json/.csv/.parquet file, a directory, or a hub dataset name."))
    validation: str | None = Field(None, description="Validation data (same formats).")
    val_split: float = Field(0.0, ge=0, lt=1, description=(
        "Fraction of `train` held out for validation when `validation` is not given."))
    format: Literal["auto", "alpaca", "messages", "prompt_completion", "text"] = Field(
        "auto", description="Record format; `auto` detects it from the fields.")
    max_length: int = Field(1024, ge=8, description="Maximum tokens per example.")
    truncation: Literal["truncate", "drop"] = Field("truncate", description=(
        "What to do with longer examples: cut at `max_length` or drop them (counted either way)."))
    train_on_inputs: bool = Field(False, description=(
        "Also compute the loss on prompt/system/user tokens (default: assistant tokens only)."))
    system_prompt: str | None = Field(None, description=(
        "System message added to examples that have none (chat formats)."))
    reasoning: Literal["keep", "mask", "drop"] = Field("keep", description=(
        "Reasoning of assistant turns (`reasoning_content` or a leading <think> block): `keep` "
        "trains on it, `mask` keeps it in the context without loss, `drop` removes it. Empty "
        "think blocks are never trained. See docs/tools-and-reasoning.md."))
    max_examples: int | None = Field(None, ge=1, description="Use only the first N training rows.")
    cache: bool = Field(True, description="Cache tokenized data keyed by content, tokenizer and "
                        "template hashes.")
    mixture: MixtureConfig | None = Field(None, description=(
        "Multitask mixture (task `sft`): several datasets with their own format, instruction "
        "and weight, used instead of `train`/`validation`."))

    @property
    def has_validation(self) -> bool:
        """Whether a run of this config is evaluated: a validation file, a held-out split or a
        mixture task with validation data."""
        return bool(self.validation or self.val_split or (
            self.mixture is not None and any(d.validation for d in self.mixture.datasets)))


# Base learning rates by task and method, in one place: the LoRA SFT rate is `train.lr`'s
# default, and the fine-tuning jobs API's "auto" multiplies the rate for its task and method.
BASE_LR = {"sft": {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5, "freeze": 2e-5},
           "dpo": {"lora": 5e-5, "qlora": 5e-5, "full": 1e-6, "freeze": 1e-6}}
SFT_METRICS = ("val_loss", "val_perplexity", "val_token_accuracy")
CLASSIFICATION_METRICS = ("val_loss", "val_accuracy", "val_macro_f1", "val_micro_f1",
                          "val_weighted_f1", "val_macro_precision", "val_macro_recall")
DPO_METRICS = ("val_loss", "val_reward_accuracy", "val_reward_margin")
KTO_METRICS = ("val_loss", "val_reward_margin")
GRPO_METRICS = ("val_loss", "val_reward")  # grpo's val_loss is -val_reward (greedy samples)
DISTILL_METRICS = ("val_loss", "val_distill_loss", "val_token_accuracy", "val_accuracy",
                   "val_macro_f1")
TOKEN_CLASSIFICATION_METRICS = ("val_loss", "val_entity_f1", "val_entity_precision",
                                "val_entity_recall", "val_entity_macro_f1",
                                "val_token_accuracy")
QA_METRICS = ("val_loss", "val_exact_match", "val_f1")


class EarlyStoppingConfig(_Section):
    patience: int | None = Field(None, ge=1, description=(
        "Stop after this many evaluations without improvement; unset disables early stopping."))
    metric: Literal["val_loss", "val_perplexity", "val_token_accuracy", "val_accuracy",
                    "val_macro_f1", "val_micro_f1", "val_weighted_f1", "val_macro_precision",
                    "val_macro_recall", "val_reward_accuracy", "val_reward_margin",
                    "val_distill_loss", "val_entity_f1", "val_entity_precision",
                    "val_entity_recall", "val_entity_macro_f1", "val_exact_match",
                    "val_f1", "val_reward"] = Field(
        "val_loss", description=(
            "Metric watched for early stopping and `best/`. `sft`: val_loss, val_perplexity, "
            "val_token_accuracy. `classification`: val_loss, val_accuracy, val_macro_f1, "
            "val_micro_f1, val_weighted_f1, val_macro_precision, val_macro_recall. `dpo`: "
            "val_loss, val_reward_accuracy, val_reward_margin. `distill`: val_loss, "
            "val_distill_loss, and val_token_accuracy (causal LM) or val_accuracy, "
            "val_macro_f1 (classifier). `token_classification`: val_loss, val_entity_f1, "
            "val_entity_precision, val_entity_recall, val_entity_macro_f1, "
            "val_token_accuracy. `extractive_qa`: val_loss, val_exact_match, val_f1. `kto`: "
            "val_loss, val_reward_margin; `orpo`, `simpo`: as `dpo`; `grpo`: val_reward, val_loss (its negative). "
            "Losses and perplexity improve downward, the others upward."))
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as improvement.")


class TrainConfig(_Section):
    epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, ge=1, description=(
        "Total optimizer steps; when set it replaces `epochs` (data repeats as needed)."))
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(BASE_LR["sft"]["lora"], gt=0, description="Peak learning rate.")
    scheduler: Literal["constant", "linear", "cosine"] = Field(
        "cosine", description="Learning-rate schedule after warmup.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not on norms/biases).")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    layer_lr_decay: float | None = Field(None, gt=0, le=1, description=(
        "Layer-wise learning-rate decay: the top transformer layer trains at lr x d, the "
        "one below at lr x d^2, ..., the embeddings at lr x d^(layers+1); the head and final "
        "norm at lr. Keeps the general lower layers closer to the pretrained weights on small "
        "datasets (0.8-0.95 is usual). Unset: one lr for all."))
    max_grad_norm: float | None = Field(1.0, description="Gradient clipping; null disables.")
    dropout: float | None = Field(None, ge=0, lt=1, description=(
        "Override the model's dropout probabilities (attention/hidden)."))
    eval_every: int | None = Field(None, ge=1, description=(
        "Evaluate every N optimizer steps (and always at the end)."))
    eval_batch_size: int | None = Field(None, ge=1, description="Defaults to `batch_size`.")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    save_every: int | None = Field(None, ge=1, description=(
        "Write a resumable checkpoint every N optimizer steps (defaults to `eval_every`)."))
    keep_last: int = Field(2, ge=1, description="Checkpoints kept under `checkpoints/`.")
    checkpoint_on_signal: bool = Field(True, description=(
        "On SIGTERM or Ctrl-C, finish the current step and write a resumable checkpoint "
        "before exiting (status `interrupted`; resume with `--resume`)."))
    general_eval: bool = Field(False, description=(
        "After training, score the base model and final/ on the packaged general-ability "
        "suite (HellaSwag, MMLU, PIQA samples; log-likelihood, as lm-eval) and record the "
        "before/after with a paired-bootstrap 95% CI in manifest.json and "
        "eval/general/report.html, to catch forgetting. Causal LMs only; adds minutes."))
    log_every: int = Field(1, ge=1, description="Log metrics every N optimizer steps.")
    seed: int = Field(42, description="Seed for data order, initialisation and dropout.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description=(
        "`auto`: bf16 autocast where the hardware runs it fast (CUDA with bf16, CPUs with "
        "AVX512-BF16/AMX), else fp32."))
    group_by_length: bool | None = Field(None, description=(
        "Batch examples of similar length (shuffled batches) to cut padding. Default: on, "
        "except for `token_classification`, where batches of sentences of one length cost "
        "about 1 entity-F1 point on CoNLL-2003 (docs/ner-qa.md)."))
    packing: bool = Field(False, description=(
        "`task: sft`: padding-free batches. Each micro-batch is one row of its examples back "
        "to back (no padding between them), with position ids restarting per example; each "
        "example attends only to itself (one attention call per example under SDPA, a "
        "block-diagonal mask under eager attention, variable-length kernels under flash "
        "attention), so losses and gradients equal the padded batch's. "
        "`train.max_batch_tokens` then bounds a micro-batch's real tokens. Pays with random "
        "batches (`group_by_length: false`: 1.5x on the SmolLM2 LoRA benchmark); about even "
        "with length-grouped ones."))
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    compile: bool | Literal["auto"] = Field("auto", description=(
        "torch.compile each transformer block but the first, in place (dynamic shapes). "
        "`auto`: on for SFT runs of at least 300 steps on a CPU with a C++ compiler, where "
        "a compiled LoRA step of SmolLM2 ran about 1.3x faster after 25 s of compiling and "
        "a few 6-13 s recompiles (a failing compile falls back to eager); off elsewhere. "
        "`true`: always (any task, any device); `false`: never."))
    max_batch_tokens: Annotated[int, Field(ge=8)] | Literal["auto"] | None = Field("auto", description=(
        "Most padded tokens one forward pass holds: a batch longer than this runs as several "
        "forward/backward passes accumulated into the same step (exact: the loss is still "
        "averaged over the whole batch), so peak activation memory is bounded by this, not "
        "by batch_size x max_length. `auto`: 1024 on a CPU (as fast as larger passes there, "
        "at a third less memory than 2048), 8192 on a GPU. `null`: never split."))
    frozen_in_compute_dtype: bool = Field(True, description=(
        "LoRA under bf16/fp16 autocast: keep the frozen base's Linear weights in that dtype "
        "(identical products, no per-step casts, half the base's memory). final/ is still "
        "merged into a float32 base. `false`: keep them float32."))
    fused_norm: bool = Field(True, description=(
        "Run Llama-style RMSNorms as one autograd node that hands q/k/v (and LoRA A, gate, "
        "up) the autocast dtype directly: one cast and one saved copy instead of one per "
        "reader, identical forward values. Their gradients are summed in the compute dtype "
        "under autocast. `false`: the stock modules."))
    fused_projections: bool = Field(False, description=(
        "Off by default: measured on the 2-core CPU it did not pay (LoRA, 3 alternating "
        "rounds: 465 tokens/s on vs 481 off, peak RSS +250 MiB; bench/README.md). "
        "`true`, frozen base (LoRA, frozen layers): compute q/k/v, and gate/up, as one matrix "
        "product with their weights stored side by side (the modules' weights become views "
        "of that block: saved weights, adapters and state dicts are unchanged), and the "
        "input's gradient as one product too. Same arithmetic, fewer and larger products; "
        "anything unusual (weights that train, LoRA dropout, DoRA) takes the stock path. "
        "Not with `compile`. `false`: one product per projection."))
    batched_lora_a: bool = Field(True, description=(
        "With `fused_projections: true`: the LoRA A matrices of q/k/v (of gate/up) join the "
        "frozen base's product, and their weight gradients are one product too; each "
        "projection's LoRA B and scaling are applied as before. `false`: one A product per "
        "projection."))
    loss_chunk_size: int = Field(256, ge=64, description=(
        "Positions per chunk in the fused LM-head + cross-entropy: each chunk holds a "
        "float32 chunk x vocabulary block of logits at the end of the forward pass, the "
        "step's memory peak (256 rather than 1024: full fine-tuning of SmolLM2-135M peaks "
        "about 260 MiB lower at the same speed)."))
    fp32_attention_below: int = Field(192, ge=0, description=(
        "bf16 training on a CPU: sequences shorter than this attend in float32 while "
        "gradients are computed (PyTorch's bf16 CPU attention backward is 2-3.5x slower "
        "than its float32 one there; more precise, not less). Generation, evaluation and "
        "longer sequences attend in bf16. 0: always bf16 (transformers' SDPA)."))


class ClassificationConfig(_Section):
    text_field: str = Field("text", description="Field holding the text to classify.")
    text_pair_field: str | None = Field(None, description=(
        "Optional second text field (sentence pairs, e.g. premise/hypothesis); encoded as a "
        "pair with the tokenizer's separator."))
    label_field: str = Field("label", description=(
        "Field holding the label: a class name or an integer id (single-label), or a list of "
        "them (multi-label)."))
    labels: list[str] | None = Field(None, description=(
        "Class names in id order. Integer labels in the data index this list; string labels "
        "must be in it. Unset: taken from the training data (integers in numeric order, "
        "strings sorted). Saved as the model's id2label/label2id."))
    multi_label: bool = Field(False, description=(
        "Each example may carry any number of labels (sigmoid per class, binary "
        "cross-entropy); otherwise exactly one (softmax, cross-entropy)."))
    label_separator: str | None = Field(None, description=(
        "Multi-label: split a string label on this separator (e.g. `|` for CSV files); "
        "JSON lists need no separator."))
    threshold: float = Field(0.5, gt=0, lt=1, description=(
        "Multi-label: a class is predicted when its probability is at least this."))
    label_smoothing: float = Field(0.0, ge=0, lt=1, description=(
        "Label smoothing of the training targets (0 disables)."))
    class_weights: Literal["none", "balanced"] | list[float] = Field("none", description=(
        "Loss weight per class: `none`, `balanced` (n_samples / (n_classes * count), as "
        "scikit-learn) or a list with one positive weight per class. Multi-label: weights "
        "scale the positive term (`balanced`: negatives / positives per class)."))
    balanced_sampling: bool = Field(False, description=(
        "Draw training examples with probability inversely proportional to their class "
        "frequency (with replacement; each epoch has as many examples as the data)."))
    max_length: int = Field(128, ge=8, description=(
        "Maximum tokens per text (longer texts are cut, or dropped with "
        "`data.truncation: drop`; counted either way). Classification uses this, not "
        "`data.max_length`."))


class DPOConfig(_Section):
    loss: Literal["sigmoid", "ipo"] = Field("sigmoid", description=(
        "`sigmoid`: DPO (Rafailov et al.), -log σ(β·Δ); `ipo`: IPO (Azar et al.), "
        "(Δ/len - 1/(2β))² on per-token averaged log-ratios (as TRL)."))
    beta: float = Field(0.1, gt=0, description=(
        "β: strength of the pull toward the reference model (higher = closer)."))
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description=(
        "`sigmoid`: assumed probability that a preference label is flipped (conservative "
        "DPO): -(1-ε)·log σ(β·Δ) - ε·log σ(-β·Δ)."))
    prompt_field: str = Field("prompt", description=(
        "Field holding the prompt: a string, or a list of chat messages (e.g. "
        "`prompt_messages`). OpenAI's format (`input`/`preferred_output`/"
        "`non_preferred_output`) is recognised without settings."))
    chosen_field: str = Field("chosen", description="Field holding the preferred response.")
    rejected_field: str = Field("rejected", description="Field holding the rejected response.")
    reference: Literal["auto", "adapter", "precompute"] = Field("auto", description=(
        "Reference log-probabilities: `adapter` (LoRA only: the base model with the adapter "
        "disabled, no second copy), `precompute` (computed once before training and cached "
        "on disk, keyed by data and model). `auto`: adapter for LoRA, else precompute."))


class KTOConfig(_Section):
    beta: float = Field(0.1, gt=0, description=(
        "β: strength of the pull toward the reference model (higher = closer)."))
    desirable_weight: float = Field(1.0, gt=0, description=(
        "Weight of the loss of desirable rows (thumbs up). With unequal counts, keep "
        "desirable_weight·n_desirable / (undesirable_weight·n_undesirable) in [1, 4/3]."))
    undesirable_weight: float = Field(1.0, gt=0, description=(
        "Weight of the loss of undesirable rows (thumbs down)."))
    prompt_field: str = Field("prompt", description=(
        "Field holding the prompt: a string or a list of chat messages."))
    completion_field: str = Field("completion", description=(
        "Field holding the rated response: a string, an assistant message or a list of them."))
    label_field: str = Field("label", description=(
        "Field holding the rating: true/false, 1/0, or \"desirable\"/\"undesirable\"."))
    reference: Literal["auto", "adapter", "precompute"] = Field("auto", description=(
        "Reference log-probabilities, as `dpo.reference`: `adapter` (LoRA: adapter "
        "disabled), `precompute` (once before training, cached on disk), `auto`."))


class ORPOConfig(_Section):
    beta: float = Field(0.1, gt=0, description=(
        "λ: weight of the odds-ratio term added to the NLL of the chosen response "
        "(TRL's ORPOConfig.beta)."))


class SimPOConfig(_Section):
    beta: float = Field(2.0, gt=0, description=(
        "β: scale of the length-normalised reward (mean log-probability per token)."))
    gamma: float = Field(1.0, ge=0, description=(
        "γ: target reward margin; the loss is -log σ(β·Δ̄ - γ) (TRL's CPOConfig.simpo_gamma)."))
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description=(
        "Assumed probability that a preference label is flipped."))
    sft_weight: float = Field(0.0, ge=0, description=(
        "Weight of an added NLL of the chosen response (TRL's CPOConfig.cpo_alpha)."))


class GraderConfig(_Section):
    type: Literal["exact", "regex", "json_valid", "json_schema", "json_fields", "numeric",
                  "python", "openai"] = Field(..., description=(
        "`exact`: the completion equals the row's `field` (stripped); `regex`: `pattern` is "
        "found in the completion (with `field`: the first group equals it); `json_valid`: "
        "the completion holds a JSON object; `json_schema`: it conforms to `schema`; "
        "`json_fields`: share of the keys of the row's `field` (an object) matched; "
        "`numeric`: the last number in the completion is within `tolerance` of `field`; "
        "`python`: `function` (`module:name`, called as f(completion, row) -> float); "
        "`openai`: an OpenAI grader object in `openai` (string_check, text_similarity, "
        "python with `source`, multi)."))
    name: str | None = Field(None, description="Name in the logs (default: the type).")
    weight: float = Field(1.0, description="Weight in the total reward (a weighted sum).")
    field: str | None = Field(None, description="The prompt row's field holding the reference.")
    pattern: str | None = Field(None, description="`regex`: a Python regular expression.")
    json_schema: dict[str, Any] | None = Field(None, description=(
        "`json_schema`: the JSON Schema the completion's object must conform to."))
    tolerance: float = Field(0.0, ge=0, description="`numeric`: largest accepted |got - want|.")
    ignore_case: bool = Field(False, description="`exact`, `regex`: compare case-blind.")
    function: str | None = Field(None, description=(
        "`python`: `package.module:function`, imported at start; returns a number."))
    openai: dict[str, Any] | None = Field(None, description=(
        "`openai`: an OpenAI reinforcement fine-tuning grader object, e.g. {type: "
        "string_check, input: '{{sample.output_text}}', reference: '{{item.answer}}', "
        "operation: eq} (see docs/preference-rl.md)."))


class GRPOConfig(_Section):
    prompt_field: str = Field("prompt", description=(
        "Field of each prompts-file row holding the prompt: a string or chat messages "
        "(rows with `messages` use them, without a final assistant turn). The whole row is "
        "passed to the graders (reference answers live in its other fields)."))
    num_generations: int = Field(8, ge=1, description=(
        "G: completions sampled per prompt; advantages are normalised within each group, "
        "so G must be at least 2. `train.batch_size` counts prompts."))
    max_new_tokens: int = Field(128, ge=1, description="Longest completion sampled.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of the rollouts.")
    beta: float = Field(0.04, ge=0, description=(
        "KL coefficient toward the reference (k3 estimator, per token); 0 skips the "
        "reference pass. LoRA: the adapter disabled; full: a frozen copy of the start model."))
    epsilon: float = Field(0.2, gt=0, lt=1, description="Clip range: ratio in [1-ε, 1+ε_high].")
    epsilon_high: float | None = Field(None, gt=0, description=(
        "Upper clip ε_high (DAPO's clip-higher); unset: `epsilon`."))
    loss: Literal["grpo", "dapo"] = Field("grpo", description=(
        "`grpo`: each completion's token mean, averaged over completions; `dapo`: token-level "
        "normalisation (sum over every completion token of the step / their count)."))
    scale_rewards: bool = Field(True, description=(
        "Divide advantages by the group's reward std (off: Dr. GRPO's unscaled advantages)."))
    iterations: int = Field(1, ge=1, description=(
        "μ: optimizer steps on each batch of rollouts (its old log-probs are kept, so the "
        "clipped ratio departs from 1 after the first)."))
    graders: list[GraderConfig] = Field(default_factory=list, description=(
        "Reward: the weighted sum of these graders (see `grpo.graders[].type`)."))
    max_grader_failures: int = Field(20, ge=0, description=(
        "Stop the run after this many grader errors (each counts as reward 0; tracebacks "
        "go to `grader_errors.log` in the run directory)."))


class DistillConfig(_Section):
    teacher: str | None = Field(None, description=(
        "Teacher: an embedded model, checkpoint directory or tunesmith run directory. Its "
        "vocabulary (causal LM) or labels (classifier) must match the student's."))
    head: Literal["causal_lm", "classification"] = Field("causal_lm", description=(
        "`causal_lm`: token-level distillation on the logits of labelled positions; "
        "`classification`: soft labels from a teacher classifier (data and labels as "
        "`task: classification`, under `classification:`)."))
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = Field("forward_kl", description=(
        "`forward_kl`: KL(teacher‖student) (mean-seeking); `reverse_kl`: KL(student‖teacher) "
        "(mode-seeking); `jsd`: generalised Jensen-Shannon with `jsd_beta`."))
    jsd_beta: float = Field(0.5, gt=0, lt=1, description=(
        "`jsd`: mixture weight β in M = β·teacher + (1-β)·student; "
        "loss = β·KL(teacher‖M) + (1-β)·KL(student‖M)."))
    temperature: float = Field(2.0, gt=0, description=(
        "Softmax temperature for teacher and student; the distillation loss is scaled by T²."))
    alpha: float = Field(0.5, ge=0, le=1, description=(
        "Weight of the distillation loss; the usual loss (cross-entropy on the labels) gets "
        "1 - alpha."))
    teacher_outputs: Literal["on_the_fly", "cache"] = Field("on_the_fly", description=(
        "`on_the_fly`: run the teacher every step; `cache`: run it once over the training "
        "data and keep its logits on disk (keyed by data and teacher), then free it."))
    student_layers: list[int] | Literal["every_other"] | None = Field(None, description=(
        "Make the student smaller by keeping only these transformer layers of `model.name` "
        "(0-based indices, or `every_other`), initialised from its weights."))


class TokenClassificationConfig(_Section):
    tokens_field: str = Field("tokens", description=(
        "Field holding the sentence as a list of words."))
    tags_field: str = Field("ner_tags", description=(
        "Field holding one tag per word: names (`B-PER`) or integer ids into `labels`."))
    labels: list[str] | None = Field(None, description=(
        "Tag names in id order (a hub dataset's `ner_tags` feature names); needed when the "
        "tags are integer ids, and tag names must then be in it. Unset: the entity types "
        "come from the training data."))
    scheme: Literal["auto", "iob2", "iob1", "iobes"] = Field("auto", description=(
        "Tag scheme of the data, converted to IOB2 (what the model learns and predicts). "
        "`auto`: IOBES when E-/S- tags occur, IOB1 when entities open with I- and B- only "
        "separates neighbours, else IOB2."))
    invalid_tags: Literal["repair", "error"] = Field("repair", description=(
        "An `I-X` (IOBES: also `E-X`) that does not continue an `X` entity: `repair` reads "
        "it as `B-X` (counted, with a warning naming the first), `error` stops with its "
        "file:line."))
    subword_labels: Literal["first", "all"] = Field("first", description=(
        "Which sub-tokens of a word carry its tag in training: `first` (the others are "
        "masked from the loss) or `all` (the continuations of a `B-X` word get `I-X`). "
        "Prediction and metrics read each word's first sub-token."))
    class_weights: Literal["none", "balanced"] | list[float] = Field("none", description=(
        "Loss weight per tag: `none`, `balanced` (n / (n_tags * count) over the labelled "
        "training sub-tokens, as scikit-learn) or one positive weight per tag in label "
        "order (`O` first, then `B-`/`I-` per type)."))
    packing: bool = Field(True, description=(
        "Train on batches whose sentences are packed side by side into shared rows, each "
        "attending only to itself (positions restart, a block-diagonal mask): the same loss "
        "and gradients as padded batches on fewer tokens (CoNLL-2003 with MiniLM: 1.1 "
        "padded tokens per real one instead of 2.6, 77-80 sentences/s instead of 57-70). "
        "Applies to BERT-family encoders and Llama/Qwen/Mistral decoders under SDPA or eager "
        "attention; other models train on padded batches."))
    max_length: int = Field(256, ge=8, description=(
        "Maximum tokens per sentence; longer ones are cut (their later words count as "
        "predicted `O`) or dropped with `data.truncation: drop`, counted either way."))


class ExtractiveQAConfig(_Section):
    context_field: str = Field("context", description="Field holding the passage.")
    question_field: str = Field("question", description="Field holding the question.")
    answers_field: str = Field("answers", description=(
        "Field holding the answers: `{text: [...], answer_start: [...]}` (the hub's SQuAD) "
        "or a list of `{text, answer_start}`; empty for an unanswerable question. SQuAD's "
        "own JSON file (`data` > `paragraphs` > `qas`) is read as well."))
    id_field: str = Field("id", description="Field holding the question id (optional).")
    max_length: int = Field(384, ge=32, description=(
        "Tokens per window (question, context part and special tokens)."))
    doc_stride: int = Field(128, ge=0, description=(
        "Tokens shared by consecutive windows of a context longer than one window, so an "
        "answer cut by one window's edge lies whole in the next."))
    max_answer_length: int = Field(30, ge=1, description=(
        "Longest answer considered, in tokens."))
    n_best: int = Field(20, ge=1, description=(
        "Start and end candidates per window in the best-span search."))
    allow_no_answer: bool | None = Field(None, description=(
        "SQuAD v2-style: a question may have no answer (predicted when the no-answer score "
        "beats the best span by more than `null_threshold`). Unset: on when any training "
        "or validation question has no answer."))
    null_threshold: float | None = Field(None, description=(
        "No answer when (no-answer score - best span score) exceeds this. Unset: chosen on "
        "the validation set (the SQuAD v2 script's best-F1 threshold), else 0."))


TRACKERS = ("tensorboard", "mlflow")


class MLflowConfig(_Section):
    tracking_uri: str | None = Field(None, description=(
        "Where MLflow records the run: a tracking server URL (`http://127.0.0.1:5000`) or a "
        "database URI (`sqlite:///runs/mlflow.db`). Empty: `$MLFLOW_TRACKING_URI`, else "
        "`sqlite:///<output.dir>/mlflow.db`."))
    experiment: str = Field("tunesmith", description="MLflow experiment the run belongs to.")
    run_name: str | None = Field(None, description="MLflow run name (empty: the run's `name`).")
    tags: dict[str, str] = Field(default_factory=dict, description=(
        "Extra MLflow run tags (`tunesmith.task`, `tunesmith.method` and "
        "`tunesmith.run_dir` are always set)."))
    log_model: bool = Field(True, description=(
        "Upload `final/` as the run's artifacts at the end (a merged LoRA model is the size "
        "of its base; `false` uploads only the manifest and metrics)."))


class OutputConfig(_Section):
    dir: str = Field("runs", description="Parent directory of run directories.")
    trackers: list[Literal[TRACKERS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["tensorboard"], description=(
            "Where metrics go besides `metrics.jsonl` (always written): `tensorboard` (`tb/`), "
            "`mlflow` (see `output.mlflow`; `pip install 'tunesmith[tracking]'`). "
            "`output.tensorboard: false|true` is read as removing or adding `tensorboard`."))
    mlflow: MLflowConfig = Field(default_factory=MLflowConfig,
                                 description="Settings for the `mlflow` tracker.")

    @model_validator(mode="before")
    @classmethod
    def _tensorboard_alias(cls, data: Any) -> Any:
        """``output.tensorboard`` (the key before ``trackers``) stays valid: every existing
        config and job spec uses it, and it maps onto ``trackers`` without ambiguity."""
        if not isinstance(data, dict) or "tensorboard" not in data:
            return data
        data = dict(data)
        on = data.pop("tensorboard")
        if not isinstance(on, bool):
            raise ValueError(f"output.tensorboard must be true or false, got {on!r}")
        trackers = [t for t in data.get("trackers", ["tensorboard"]) if t != "tensorboard"]
        data["trackers"] = ["tensorboard", *trackers] if on else trackers
        return data


class RunConfig(_Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description=(
        "Run name; outputs go to `<output.dir>/<name>/`."))
    task: Literal["sft", "classification", "dpo", "distill", "kto", "orpo", "simpo",
                  "token_classification", "extractive_qa", "grpo"] = Field(
        "sft", description=(
            "What to train: `sft` (causal LM on chat/instruction data), `classification` "
            "(a sequence-classification head on an encoder or decoder model), `dpo` "
            "(preference tuning on chosen/rejected pairs), `distill` (a student learns from "
            "a teacher), `kto` (single thumbs up/down ratings), `orpo` or `simpo` "
            "(chosen/rejected pairs without a reference model), `grpo` (online RL from "
            "graded samples). "
            "`token_classification` (a tag per word: NER) and `extractive_qa` (answer "
            "spans in a context, SQuAD-style) put a token or span head on an "
            "encoder or decoder."))
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    classification: ClassificationConfig = Field(default_factory=ClassificationConfig,
                                                 description="Settings for `task: classification`.")
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="Settings for `task: dpo`.")
    distill: DistillConfig = Field(default_factory=DistillConfig,
                                   description="Settings for `task: distill`.")
    token_classification: TokenClassificationConfig = Field(
        default_factory=TokenClassificationConfig,
        description="Settings for `task: token_classification`.")
    extractive_qa: ExtractiveQAConfig = Field(default_factory=ExtractiveQAConfig,
                                              description="Settings for `task: extractive_qa`.")
    kto: KTOConfig = Field(default_factory=KTOConfig, description="Settings for `task: kto`.")
    orpo: ORPOConfig = Field(default_factory=ORPOConfig,
                             description="Settings for `task: orpo` (pairs read as `dpo:`).")
    simpo: SimPOConfig = Field(default_factory=SimPOConfig,
                               description="Settings for `task: simpo` (pairs read as `dpo:`).")
    grpo: GRPOConfig = Field(default_factory=GRPOConfig, description="Settings for `task: grpo`.")
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _check_combinations(self) -> RunConfig:
        problems = []
        if self.method.unfreeze is not None and self.method.type in ("lora", "qlora"):
            problems.append("method.unfreeze works with method.type full or freeze, not "
                            f"{self.method.type}")
        if self.method.type == "qlora" and self.task in ("classification",
                                                         "token_classification",
                                                         "extractive_qa"):
            problems.append("method.type qlora is for causal LMs (task sft, dpo, distill), "
                            f"not {self.task}; use lora")
        if self.method.unfreeze is not None and not (
                self.method.unfreeze.every_steps or self.method.unfreeze.per_epoch):
            problems.append("method.unfreeze needs every_steps: N or per_epoch: true")
        if self.train.early_stopping.patience and not self.data.has_validation:
            problems.append("train.early_stopping.patience needs data.validation or "
                            "data.val_split")
        metric = self.train.early_stopping.metric
        allowed = {"token_classification": TOKEN_CLASSIFICATION_METRICS,
                   "extractive_qa": QA_METRICS,
                   "classification": CLASSIFICATION_METRICS, "dpo": DPO_METRICS,
                   "distill": DISTILL_METRICS, "kto": KTO_METRICS, "orpo": DPO_METRICS,
                   "simpo": DPO_METRICS, "grpo": GRPO_METRICS}.get(self.task, SFT_METRICS)
        if metric not in allowed:
            problems.append(f"train.early_stopping.metric {metric} is not computed by task "
                            f"{self.task}; use one of {', '.join(allowed)}")
        if self.task == "classification":
            weights = self.classification.class_weights
            if isinstance(weights, list) and (not weights or min(weights) <= 0):
                problems.append("classification.class_weights must hold one positive weight "
                                "per class")
        problems += self._check_new_tasks()
        if self.train.group_by_length is None:
            self.train.group_by_length = self.task != "token_classification"
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _check_new_tasks(self) -> list[str]:
        """Combinations of `dpo`, `distill` and `data.mixture` settings."""
        problems = []
        if self.task == "grpo":
            if self.grpo.num_generations < 2:
                problems.append("grpo.num_generations must be at least 2: advantages compare "
                                "each completion with the others sampled for its prompt")
            if not self.grpo.graders:
                problems.append("task grpo needs grpo.graders (at least one reward)")
        if self.task == "distill" and not self.distill.teacher:
            problems.append("task distill needs distill.teacher (a model name or run directory)")
        for section in ("dpo", "kto"):
            if getattr(self, section).reference == "adapter" and self.method.type != "lora":
                problems.append(f"{section}.reference adapter needs method.type lora (with full "
                                f"or freeze fine-tuning use {section}.reference precompute)")
        if self.train.packing and self.task != "sft":
            problems.append(f"train.packing works with task sft, not {self.task} (token "
                            "classification has token_classification.packing)")
        if self.data.mixture is not None:
            if self.task != "sft":
                problems.append(f"data.mixture works with task sft, not {self.task}")
            if self.data.train or self.data.validation:
                problems.append("data.mixture replaces data.train/data.validation: give each "
                                "dataset its own train/validation")
            names = [d.name for d in self.data.mixture.datasets]
            if len(set(names)) != len(names):
                problems.append("data.mixture.datasets need distinct names")
            for d in self.data.mixture.datasets:
                if (d.prompt is None) != (d.completion is None):
                    problems.append(f"data.mixture dataset {d.name}: prompt and completion go "
                                    "together")
        return problems
