"""Fine-tune a multimodal model on your dataset with LoRA (default) or full fine-tuning.

`mm sft --model_type qwen2-vl-2b-instruct --dataset train.jsonl` (or `--model DIR`) writes
`output/<model_type>/v<N>-<YYYYMMDD-HHMMSS>/` with sft_args.json, logging.jsonl, images/*.png and
checkpoint-<step>/ directories that `mm infer|export|deploy --ckpt_dir` load without more flags.
Training runs on the transformers Trainer (DDP through `NPROC_PER_NODE=N mm sft ...`, DeepSpeed, FSDP)
and peft. The flags and their defaults follow ms-swift's `swift sft`; see docs/sft.md and docs/datasets.md.

The run reads top to bottom: check flags, (relaunch under torchrun), load the dataset, resolve the model and
its template, choose the output directory and build the training arguments (before loading: ZeRO-3 partitions
the weights as they load), load the model and pick what trains, train, save and report.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated

from swiftlite.errors import UserError
from swiftlite.options import flag, opt
from swiftlite.training.flags import DataFlags, SftFlags, TunerFlags

SFT_TYPES = ("lora", "full")
DTYPES = ("auto", "bf16", "fp16", "fp32", "bfloat16", "float16", "float32")


def sft(
    # ---- model ----
    model_type: Annotated[str | None, opt(
        "model_type", "Registered model type, e.g. qwen2-vl-2b-instruct (`mm list`).")] = None,
    model: Annotated[str | None, opt("model", "Hub id or local checkpoint directory (ms-swift: --model_id_or_path).",
                                     "--model_id_or_path", "--model-id-or-path")] = None,
    model_revision: Annotated[str | None, opt("model_revision", "Hub revision of the model to download.")] = None,
    use_hf: Annotated[bool | None, flag(
        "use_hf", "Download from the Hugging Face Hub instead of ModelScope (or USE_HF=1).")] = None,
    template_type: Annotated[str | None, opt(
        "template_type", "Override the model's chat template (`mm list templates`).", "--template")] = None,
    system: Annotated[str | None, opt(
        "system", "Default system prompt for rows without one (recorded for infer).")] = None,
    dtype: Annotated[str, opt("dtype", "auto (checkpoint dtype on GPU, fp32 on CPU) | bf16 | fp16 | fp32.", "--torch_dtype")] = "auto",
    max_pixels: Annotated[int | None, opt(
        "max_pixels", "Downscale images above this many pixels (or env MAX_PIXELS).")] = None,
    attn_impl: Annotated[str | None, opt(
        "attn_impl", "Attention kernel: sdpa (default) | eager | flash_attention_2 (needs flash-attn and CUDA).")] = None,
    pure_bf16: Annotated[bool, flag(
        "pure_bf16", "With --dtype bf16: train the bf16 weights themselves (no fp32 master copy, no autocast); "
        "default: fp32 trainable weights under bf16 autocast.")] = False,
    quant_bits: Annotated[int | None, opt(
        "quant_bits", "QLoRA: load the frozen base quantized to 4 (nf4) or 8 bits with bitsandbytes "
        "(--sft_type lora only); 0: not quantized (ms-swift 2.x's --quantization_bit default).",
        "--quantization_bit")] = None,
    # ---- data ----
    dataset: Annotated[list[str] | None, opt(
        "dataset", "Training data: .json/.jsonl/.csv files, dataset names (`mm list datasets`) or hub ids; "
        "`file#N` samples N rows.")] = None,
    val_dataset: Annotated[list[str] | None, opt(
        "val_dataset", "Validation data (same forms); default: a held-out split.")] = None,
    dataset_test_ratio: Annotated[float, opt(
        "dataset_test_ratio", "Share of --dataset held out for evaluation when no --val_dataset.",
        "--split_dataset_ratio")] = 0.01,
    max_length: Annotated[int, opt(
        "max_length", "Most tokens per row, counted after image-token expansion (<=0: no limit).")] = 2048,
    truncation_strategy: Annotated[str, opt(
        "truncation_strategy", "Rows over --max_length: delete (drop, counted) | truncation_left.")] = "delete",
    strict: Annotated[bool, flag(
        "strict", "Stop at the first bad row (file:row); false: skip bad rows and count them.")] = True,
    lazy_tokenize: Annotated[bool, flag(
        "lazy_tokenize", "Encode rows in the dataloader workers during training; false: all up front, cached.")] = True,
    dataloader_num_workers: Annotated[int, opt(
        "dataloader_num_workers", "Processes preparing batches beside training (0: in the training process).")] = 1,
    packing: Annotated[bool, flag(
        "packing", "Padding-free batches: the rows of a batch are joined into one sequence, attention kept within "
        "each row (positions restart per row, M-RoPE ones included); same loss, no compute spent on padding.")] = False,
    # ---- what trains ----
    sft_type: Annotated[str, opt(
        "sft_type", "lora (a peft adapter) | full (every weight except frozen parts).", "--train_type", "--tuner_type")] = "lora",
    lora_target_modules: Annotated[list[str] | None, opt(
        "lora_target_modules",
        "DEFAULT or all-linear (LLM linear layers) | ALL (every linear layer, vision too, not lm_head) | names, "
        "comma separated.", "--target_modules",
    )] = None,
    lora_rank: Annotated[int, opt("lora_rank", "LoRA rank r.")] = 8,
    lora_alpha: Annotated[int, opt("lora_alpha", "LoRA alpha (the update is scaled by alpha/r).")] = 32,
    lora_dropout: Annotated[float, opt(
        "lora_dropout", "Dropout on the LoRA input.", "--lora_dropout_p", "--lora-dropout-p")] = 0.05,
    freeze_vit: Annotated[bool, flag(
        "freeze_vit", "Keep the vision tower frozen (full); false with LoRA also adapts it.")] = True,
    freeze_aligner: Annotated[bool, flag(
        "freeze_aligner", "Keep the aligner (projector/merger) frozen; false trains it fully.")] = True,
    vit_lr: Annotated[float | None, opt(
        "vit_lr", "Learning rate of the vision tower's trainable weights (default: --learning_rate).")] = None,
    aligner_lr: Annotated[float | None, opt(
        "aligner_lr", "Learning rate of the aligner's trainable weights (default: --learning_rate).")] = None,
    # ---- optimisation ----
    num_train_epochs: Annotated[float, opt("num_train_epochs", "Passes over the training data.")] = 1.0,
    max_steps: Annotated[int, opt(
        "max_steps", "Stop after this many optimiser steps (overrides epochs; -1: off).")] = -1,
    batch_size: Annotated[int, opt(
        "batch_size", "Rows per device per forward pass.", "--per_device_train_batch_size", "--per-device-train-batch-size")] = 1,
    eval_batch_size: Annotated[int | None, opt(
        "eval_batch_size", "Rows per device per evaluation pass (default: --batch_size).",
        "--per_device_eval_batch_size")] = None,
    gradient_accumulation_steps: Annotated[int | None, opt(
        "gradient_accumulation_steps",
        "Forward passes per optimiser step (default: ceil(16 / batch_size / processes), as ms-swift).",
    )] = None,
    learning_rate: Annotated[float | None, opt(
        "learning_rate", "Peak learning rate (default 1e-4 for LoRA, 1e-5 for full).")] = None,
    weight_decay: Annotated[float, opt("weight_decay", "AdamW weight decay.")] = 0.1,
    warmup_ratio: Annotated[float, opt(
        "warmup_ratio", "Share of the steps spent warming the learning rate up.")] = 0.05,
    warmup_steps: Annotated[int, opt("warmup_steps", "Warm-up steps (overrides --warmup_ratio when > 0).")] = 0,
    lr_scheduler_type: Annotated[str, opt(
        "lr_scheduler_type",
        "cosine | linear | constant | constant_with_warmup | ... (transformers names).")] = "cosine",
    max_grad_norm: Annotated[float, opt("max_grad_norm", "Clip gradients to this norm.")] = 0.5,
    gradient_checkpointing: Annotated[bool, flag(
        "gradient_checkpointing", "Recompute activations in the backward pass to save memory.")] = True,
    seed: Annotated[int, opt("seed", "Seed for sampling, the held-out split, shuffling and initialisation.")] = 42,
    # ---- saving and logging ----
    output_dir: Annotated[str, opt(
        "output_dir", "Where runs go: <output_dir>/<model_type>/v<N>-<timestamp>/.")] = "output",
    add_output_dir_suffix: Annotated[bool, flag(
        "add_output_dir_suffix", "Add <model_type>/v<N>-<timestamp> to --output_dir.", "add_version")] = True,
    save_steps: Annotated[int | None, opt(
        "save_steps", "Save a checkpoint every N steps (default: --eval_steps), and at the end.")] = None,
    eval_steps: Annotated[int, opt(
        "eval_steps", "Evaluate on the validation rows every N steps, and at the end.")] = 50,
    logging_steps: Annotated[int, opt("logging_steps", "Log loss and learning rate every N steps.")] = 5,
    save_total_limit: Annotated[int, opt(
        "save_total_limit", "Keep at most N checkpoints (the best and the last are kept).")] = 2,
    save_only_model: Annotated[bool, flag(
        "save_only_model", "Save weights only, without optimizer state (cannot be resumed).")] = False,
    resume_from_checkpoint: Annotated[str | None, opt(
        "resume_from_checkpoint",
        "A checkpoint-<step> directory to continue from, or true|auto: the newest complete one of the newest run "
        "under --output_dir (or of --output_dir itself when it is a run directory, continued in place).")] = None,
    report_to: Annotated[list[str] | None, opt(
        "report_to", "Experiment trackers: none | tensorboard | wandb | all.")] = None,
    # ---- distributed ----
    deepspeed: Annotated[str | None, opt(
        "deepspeed", "default-zero2 | default-zero3 | a DeepSpeed JSON config file.")] = None,
    fsdp: Annotated[str | None, opt("fsdp", "FSDP options for the Trainer, e.g. 'full_shard auto_wrap'.")] = None,
    fsdp_config: Annotated[str | None, opt("fsdp_config", "FSDP JSON config file.")] = None,
) -> None:
    run_sft(SftFlags.from_dict(locals()))  # the flags, typed and grouped, from here down


def sft_main(**flags) -> dict:
    """Python API (ms-swift's `sft_main`): `sft_main(model="DIR", dataset=["train.jsonl"], max_steps=10)`.

    Flags may be given by their ms-swift 3.x/4.x names as well (`tuner_type="lora"`, `split_dataset_ratio=0.1`).

    Takes the flags of `mm sft` as keyword arguments (defaults as on the command line); returns the final
    summary (last_model_checkpoint, best_model_checkpoint, throughput, ...).
    """
    import inspect

    from swiftlite.options import python_keywords

    keywords = python_keywords(sft, flags)  # ms-swift 3.x/4.x names too: train_type=, per_device_train_batch_size=
    parameters = inspect.signature(sft).parameters
    unknown = sorted(set(keywords) - set(parameters))
    if unknown:
        raise UserError(f"sft_main: unknown flag(s) {', '.join(unknown)}")
    values = {name: parameter.default for name, parameter in parameters.items()}
    values.update(keywords)
    for name in ("dataset", "val_dataset", "lora_target_modules", "report_to"):
        if isinstance(values[name], str):
            values[name] = [values[name]]
    return run_sft(SftFlags.from_dict(values))


def run_sft(flags: SftFlags) -> dict:
    """Train with `flags` (those of `mm sft`); returns the final summary."""
    flags = check_flags(flags)
    # Idle OpenMP threads sleep instead of spinning. When the cores are shared (dataloader workers, other
    # jobs), spinning threads wait on each other and training on CPU slowed 10-50x in our measurements;
    # with sleeping threads it does not. Read by the OpenMP runtime when torch loads, so only set it here.
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from swiftlite.training.launch import relaunch_with_torchrun, wants_relaunch

    if wants_relaunch():
        import typer

        code = relaunch_with_torchrun(flags.as_dict())
        if code:
            raise typer.Exit(code)
        return {}
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the dataloader workers are forked
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")  # renamed-argument notices

    # ---- load the dataset (bad rows fail before any model is loaded) ----
    from swiftlite.data import load_train_val

    data = flags.data
    train_rows, val_rows, skipped = load_train_val(data.dataset, data.val_dataset, data.dataset_test_ratio,
                                                   flags.optim.seed, data.strict, use_hf=flags.model.use_hf)
    if not train_rows:
        raise UserError("--dataset: no usable training rows" + (f" ({skipped} bad rows skipped)" if skipped else ""))
    report(f"dataset: {len(train_rows)} training rows, {len(val_rows)} validation rows"
           + (f", {skipped} bad rows skipped (--strict false)" if skipped else ""))

    # ---- resolve the model, its tokenizer and template ----
    from swiftlite.models.loading import choose_dtype, load_tokenizer, resolve_model
    from swiftlite.templates import get_template

    resolved = resolve_model(flags.model.model_type, flags.model.model, flags.model.use_hf, flags.model.model_revision)
    tokenizer = load_tokenizer(resolved.model_dir, resolved.family)
    template_type = flags.model.template_type or resolved.template_type
    template = get_template(template_type, tokenizer, default_system=flags.model.system,
                            max_pixels=flags.model.max_pixels)
    torch_dtype = choose_dtype(flags.model.dtype, resolved.torch_dtype)
    from swiftlite.training.precision import plan_precision

    precision = plan_precision(str(torch_dtype).replace("torch.", ""), on_gpu=on_gpu(), pure_bf16=flags.model.pure_bf16,
                               deepspeed=bool(flags.distributed.deepspeed),
                               fsdp=bool(flags.distributed.fsdp or flags.distributed.fsdp_config))
    if flags.data.packing:
        from swiftlite.training.packing import check_packing

        check_packing(resolved.family)

    # ---- which checkpoint to continue from (true|auto: found now, before the model loads) ----
    from swiftlite.training.launch import AUTO_RESUME, find_resume_checkpoint

    continue_in_place = False
    if (flags.output.resume_from_checkpoint or "").lower() in AUTO_RESUME:
        checkpoint, continue_in_place = find_resume_checkpoint(flags.output.output_dir, resolved.model_type,
                                                               flags.output.add_output_dir_suffix, report)
        flags = flags.replace(resume_from_checkpoint=str(checkpoint))
        report(f"resuming from {checkpoint}")
        from swiftlite.training.resume_checks import check_resume_checkpoint

        check_resume_checkpoint(checkpoint, flags.tuner.sft_type, flags.tuner.lora_rank, report)

    # ---- the run directory and the training arguments: before the model loads ----
    # Built first so that DeepSpeed's config is live while loading (ZeRO-3 then partitions the weights across
    # the processes as they load, instead of every process holding the whole model), and FSDP's settings too.
    from swiftlite.training.launch import agree_on_output_dir, check_gpus_for_processes, versioned_output_dir

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    check_gpus_for_processes(int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    if continue_in_place:
        run_dir = Path(flags.output.resume_from_checkpoint).parent
    elif flags.output.add_output_dir_suffix:
        run_dir = agree_on_output_dir(lambda: versioned_output_dir(flags.output.output_dir, resolved.model_type))
    else:
        run_dir = Path(flags.output.output_dir).expanduser().resolve()
    training_args = build_training_args(flags, run_dir, precision, has_eval=bool(val_rows),
                                        world_size=world_size, trains_vision=trains_vision(flags.tuner))

    # ---- load the model and choose what trains ----
    share_cpu_cores(flags.data)
    from swiftlite.api import seed_everything

    # Before anything random: the LoRA initialisation happens here, before the Trainer seeds (again) for
    # dropout and shuffling; the dataset's sampling and held-out split use their own generators from --seed.
    seed_everything(flags.optim.seed)
    from swiftlite.training.lora import apply_lora, freeze_parts, parameter_summary, resolve_target_modules

    try:
        model = load_training_model(flags, resolved, precision, training_args)
        if flags.tuner.sft_type == "lora":
            targets = resolve_target_modules(model, resolved.family, flags.tuner.lora_target_modules or ["DEFAULT"],
                                             flags.tuner.freeze_vit, flags.tuner.freeze_aligner)
            model = apply_lora(model, resolved.family, targets, flags.tuner.lora_rank, flags.tuner.lora_alpha,
                               flags.tuner.lora_dropout, flags.tuner.freeze_aligner)
        else:
            freeze_parts(model, resolved.family, flags.tuner.freeze_vit, flags.tuner.freeze_aligner)
        from swiftlite.training.optim import parameter_groups, part_learning_rates

        part_rates = part_learning_rates(resolved.family, flags.tuner.vit_lr, flags.tuner.aligner_lr)
        parameter_groups(model, part_rates, flags.optim.learning_rate, 0.0, ())  # a frozen part's rate fails now
    except UserError:
        # A mistake found once the model is known (a LoRA target, a frozen part's learning rate): leave no
        # empty run directory behind.
        if int(os.environ.get("RANK", "0")) == 0 and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    if precision.upcast_trainable:
        from swiftlite.training.precision import upcast_trainable_parameters

        upcast_trainable_parameters(model)
    report(parameter_summary(model))
    report(f"precision: weights loaded in {precision.load_dtype}, "
           + (f"{precision.autocast} autocast" if precision.autocast else "no autocast")
           + (", trainable weights in fp32" if precision.upcast_trainable else ""))

    # ---- what reloading needs ----
    sft_args = recorded_args(flags, resolved, template_type, torch_dtype, run_dir, world_size)
    if flags.tuner.sft_type == "lora":
        sft_args["lora_target_module_count"] = len(targets)
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        from swiftlite.models.checkpoint_files import write_sft_args

        if continue_in_place:
            from swiftlite.training.trainer import trim_logs

            trim_logs(run_dir / "logging.jsonl", int(Path(flags.output.resume_from_checkpoint).name.split("-")[1]))
        write_sft_args(run_dir, sft_args)
        report(f"output: {run_dir}")

    # ---- datasets, trainer ----
    from swiftlite.training.dataset import Collator, EncodedDataset
    from swiftlite.training.trainer import JsonlLogger, SftTrainer, write_jsonl

    encode = dict(template=template, max_length=data.max_length, truncation_strategy=data.truncation_strategy,
                  strict=data.strict, lazy=data.lazy_tokenize)
    train_set = EncodedDataset(train_rows, **encode)
    val_set = EncodedDataset(val_rows, **encode) if val_rows else None
    if train_set.dropped:
        report(f"dropped {len(train_set.dropped)} training rows longer than --max_length {flags.data.max_length}")
    from swiftlite.training.lr_check import LearningRateWatch

    trainer_ref: list = []
    logging_file = run_dir / "logging.jsonl"
    learning_rates = LearningRateWatch()
    trainer = SftTrainer(
        model=model, args=training_args, train_dataset=train_set, eval_dataset=val_set,
        data_collator=Collator(template), callbacks=[JsonlLogger(logging_file, trainer_ref), learning_rates],
        sft_args=sft_args, base_model_dir=str(resolved.model_dir), full_checkpoint=flags.tuner.sft_type == "full",
        part_learning_rates=part_rates, packing=flags.data.packing, run_dir=run_dir,
    )
    trainer_ref.append(trainer)

    # ---- train ----
    started = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=flags.output.resume_from_checkpoint)
    except Exception as error:
        raise clean_worker_error(error)
    wall = time.time() - started

    # ---- report: last and best checkpoints, throughput, plots ----
    summary = final_summary(trainer, result, wall, run_dir, skipped, train_set)
    if trainer.is_world_process_zero():
        write_jsonl(logging_file, summary)
        from swiftlite.training.plots import plot_losses

        plot_losses(logging_file, run_dir / "images")
        report(f"last_model_checkpoint: {summary['last_model_checkpoint']}")
        report(f"best_model_checkpoint: {summary['best_model_checkpoint']}")
        report(f"{summary['train_samples_per_second']} samples/s, {summary['train_tokens_per_second']} tokens/s, "
               f"data preparation {100 * summary['data_time_share']:.1f}% of step time"
               + (f", {summary['dropped_rows']} rows dropped" if summary["dropped_rows"] else ""))
        if learning_rates.warning(training_args):
            report(learning_rates.warning(training_args))
    return summary


def report(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"mm sft: {message}", file=sys.stderr, flush=True)


# ---- flags --------------------------------------------------------------------------------------------
def check_flags(flags: SftFlags) -> SftFlags:
    """Mistakes in flags fail here, in one line, before anything heavy is imported. Returns the flags with the
    values decided here: --max_pixels from MAX_PIXELS, the default --learning_rate, --resume_from_checkpoint false."""
    from swiftlite.training.hyperparameters import check_hyperparameters

    check_hyperparameters(flags.as_dict())  # finite numbers in range: NaN runs fail here, not after training
    if flags.tuner.sft_type not in SFT_TYPES:
        raise UserError(f"--sft_type {flags.tuner.sft_type}: expected lora or full (also when spelled --train_type "
                        "or --tuner_type; ms-swift's other tuners are not available)")
    if not flags.data.dataset:
        raise UserError("--dataset: name at least one dataset file (.json, .jsonl, .csv) or hub dataset")
    if not flags.model.model_type and not flags.model.model:
        raise UserError("say which model to train: --model_type <type> or --model <hub id or directory>")
    if flags.model.dtype.lower() not in DTYPES:
        raise UserError(f"--dtype {flags.model.dtype}: expected auto, bf16, fp16 or fp32")
    if flags.data.truncation_strategy not in ("delete", "truncation_left"):
        raise UserError(f"--truncation_strategy {flags.data.truncation_strategy}: expected delete or truncation_left")
    if not 0 <= flags.data.dataset_test_ratio < 1:
        raise UserError(f"--dataset_test_ratio {flags.data.dataset_test_ratio}: expected a number in [0, 1)")
    for name, value in (("batch_size", flags.optim.batch_size), ("eval_steps", flags.output.eval_steps),
                        ("logging_steps", flags.output.logging_steps), ("lora_rank", flags.tuner.lora_rank)):
        if value < 1:
            raise UserError(f"--{name} {value}: must be at least 1")
    for name, value in (("eval_batch_size", flags.optim.eval_batch_size),
                        ("gradient_accumulation_steps", flags.optim.gradient_accumulation_steps),
                        ("save_steps", flags.output.save_steps)):
        if value is not None and value < 1:
            raise UserError(f"--{name} {value}: must be at least 1")
    if flags.optim.max_steps == 0 or flags.optim.num_train_epochs <= 0:
        raise UserError("--max_steps 0 / --num_train_epochs <= 0: nothing to train")
    if flags.optim.max_steps < -1:  # the Trainer reads any negative as "off" and trained whole epochs
        raise UserError(f"--max_steps {flags.optim.max_steps}: expected a positive number of steps, or -1 (off: "
                        "--num_train_epochs decides)")
    if flags.data.dataloader_num_workers < 0:
        raise UserError(f"--dataloader_num_workers {flags.data.dataloader_num_workers}: must be 0 or more")
    if not 0 <= flags.optim.warmup_ratio < 1:
        raise UserError(f"--warmup_ratio {flags.optim.warmup_ratio}: expected a number in [0, 1)")
    if flags.model.max_pixels is None and os.environ.get("MAX_PIXELS", "").isdigit():
        flags = flags.replace(max_pixels=int(os.environ["MAX_PIXELS"]))  # ms-swift reads Qwen2-VL's limit there
    if flags.optim.learning_rate is None:
        flags = flags.replace(learning_rate=1e-4 if flags.tuner.sft_type == "lora" else 1e-5)
    from swiftlite.training.launch import AUTO_RESUME

    checkpoint = flags.output.resume_from_checkpoint
    if checkpoint and checkpoint.lower() in ("false", "none"):
        flags, checkpoint = flags.replace(resume_from_checkpoint=None), None
    if checkpoint and checkpoint.lower() not in AUTO_RESUME and not (Path(checkpoint) / "trainer_state.json").is_file():
        raise UserError(f"--resume_from_checkpoint {checkpoint}: not a checkpoint-<step> directory with "
                        "trainer_state.json (was it saved with --save_only_model?)")
    if checkpoint and checkpoint.lower() not in AUTO_RESUME:
        from swiftlite.training.resume_checks import check_resume_checkpoint

        check_resume_checkpoint(Path(checkpoint), flags.tuner.sft_type, flags.tuner.lora_rank, report)
    from swiftlite.training.launch import deepspeed_config

    deepspeed_config(flags.distributed.deepspeed)  # a missing package or file is reported now, not after loading
    if flags.tuner.sft_type == "full" and flags.tuner.lora_target_modules:
        raise UserError("--lora_target_modules applies to --sft_type lora only")
    check_cuda_flags(flags)
    return flags


def check_cuda_flags(flags: SftFlags) -> None:
    """The flags of attention kernels, QLoRA, per-part learning rates and packing."""
    import importlib.util

    from swiftlite.models.loading import check_attn_impl

    check_attn_impl(flags.model.attn_impl)
    bits = flags.model.quant_bits
    if not bits:  # None, or 2.x's --quantization_bit 0
        return
    if bits not in (4, 8):
        raise UserError(f"--quant_bits {bits}: expected 4 or 8 (also when spelled --quantization_bit)")
    if flags.tuner.sft_type != "lora":
        raise UserError(f"--quant_bits {bits}: quantized weights cannot train; use it with --sft_type lora (QLoRA)")
    if flags.distributed.deepspeed or flags.distributed.fsdp or flags.distributed.fsdp_config:
        raise UserError(f"--quant_bits {bits}: not supported with --deepspeed or --fsdp here; use plain DDP "
                        "(NPROC_PER_NODE) or drop --quant_bits")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"--quant_bits {bits}: the bitsandbytes package is not installed (pip install bitsandbytes)")


def share_cpu_cores(data: DataFlags) -> None:
    """On CPU, leave one core to each dataloader worker: oversubscribed cores make torch's threads spin and
    wait on each other, which slows training by several times (OMP_NUM_THREADS, when set, wins)."""
    import torch

    if torch.cuda.is_available() or os.environ.get("OMP_NUM_THREADS"):
        return
    workers = data.dataloader_num_workers if data.lazy_tokenize else 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), cores - workers)))  # only ever lower it


def trains_vision(tuner: TunerFlags) -> bool:
    """Whether some batches may leave trainable weights unused (text-only rows skip the vision tower)."""
    if tuner.sft_type == "full":
        return not tuner.freeze_vit or not tuner.freeze_aligner
    targets = " ".join(tuner.lora_target_modules or []).upper()
    return "ALL" in targets or not tuner.freeze_vit or not tuner.freeze_aligner


def recorded_args(flags: SftFlags, resolved, template_type: str, torch_dtype, run_dir: Path, world_size: int) -> dict:
    """sft_args.json: every flag, plus what reloading needs (absolute paths, resolved names)."""
    recorded = flags.as_dict()
    recorded.update(
        model_type=resolved.model_type,
        model_id_or_path=str(resolved.model_dir),  # absolute: infer/export/deploy run from anywhere
        template_type=template_type,
        torch_dtype=str(torch_dtype).replace("torch.", ""),
        dataset=[absolute_spec(spec) for spec in flags.data.dataset],
        val_dataset=[absolute_spec(spec) for spec in flags.data.val_dataset or []] or None,
        lora_target_modules=flags.tuner.lora_target_modules or (["DEFAULT"] if flags.tuner.sft_type == "lora"
                                                                else None),
        output_dir=str(run_dir),
        world_size=world_size,
    )
    recorded.pop("model", None)  # recorded as model_id_or_path (ms-swift's key)
    return recorded


def absolute_spec(spec: str) -> str:
    from swiftlite.data import parse_spec

    path, sample = parse_spec(spec)
    if Path(path).expanduser().is_file():
        path = str(Path(path).expanduser().resolve())
    return path if sample is None else f"{path}#{sample}"


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def load_training_model(flags: SftFlags, resolved, precision, training_args):
    """Load the model the way the training run needs it (call after build_training_args).

    ZeRO-3 and FSDP place the weights themselves (partitioned while loading / sharded when wrapped); every
    other run loads straight onto its own device: `cuda:LOCAL_RANK` for each DDP process, the CPU without GPUs.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    from swiftlite.models.loading import check_attn_impl, load_model

    zero3 = is_deepspeed_zero3_enabled()
    placed_by_trainer = zero3 or bool(training_args.fsdp)
    bits = flags.model.quant_bits
    quantization = quantization_config(bits, precision.torch_dtype) if bits else None
    model = load_model(resolved.model_dir, resolved.family, precision.torch_dtype,
                       attn_impl=check_attn_impl(flags.model.attn_impl), quantization_config=quantization,
                       placed_by_trainer=placed_by_trainer)
    if zero3 and any(hasattr(parameter, "ds_id") for parameter in model.parameters()):  # zero.Init ran
        report(f"ZeRO-3: weights partitioned across {training_args.world_size} process(es) while loading")
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        # Norms and the output layer to fp32, input gradients on (for gradient checkpointing): peft's QLoRA recipe.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=flags.optim.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
        report(f"QLoRA: base weights quantized to {flags.model.quant_bits} bits (bitsandbytes)")
    return model


def quantization_config(bits: int, compute_dtype):
    """bitsandbytes settings for QLoRA (ms-swift's defaults: nf4 with double quantization, or int8)."""
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def build_training_args(flags: SftFlags, run_dir: Path, precision, has_eval: bool, world_size: int,
                        trains_vision: bool):
    import torch
    from transformers import TrainingArguments

    from swiftlite.models.checkpoint_files import STAGING_DIR
    from swiftlite.training.launch import deepspeed_config

    batch_size = flags.optim.batch_size
    accumulation = flags.optim.gradient_accumulation_steps or math.ceil(16 / batch_size / world_size)
    on_gpu = torch.cuda.is_available()
    workers = flags.data.dataloader_num_workers if flags.data.lazy_tokenize else 0  # cached rows need no workers
    save_steps = flags.output.save_steps or flags.output.eval_steps
    try:
        return TrainingArguments(
            output_dir=str(run_dir / STAGING_DIR),  # checkpoints are written whole there, then published to run_dir
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=flags.optim.eval_batch_size or batch_size,
            gradient_accumulation_steps=accumulation,
            learning_rate=flags.optim.learning_rate,
            weight_decay=flags.optim.weight_decay,
            warmup_steps=flags.optim.warmup_steps or flags.optim.warmup_ratio,
            lr_scheduler_type=flags.optim.lr_scheduler_type,
            max_grad_norm=flags.optim.max_grad_norm,
            num_train_epochs=flags.optim.num_train_epochs,
            max_steps=flags.optim.max_steps,
            seed=flags.optim.seed,
            bf16=precision.autocast == "bf16",
            fp16=precision.autocast == "fp16",
            use_cpu=not on_gpu,
            activation_checkpointing=flags.optim.gradient_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False} if flags.optim.gradient_checkpointing else None,
            logging_steps=flags.output.logging_steps,
            logging_first_step=True,
            save_strategy="steps",
            save_steps=save_steps,
            save_total_limit=flags.output.save_total_limit,
            save_only_model=flags.output.save_only_model,
            eval_strategy="steps" if has_eval else "no",
            eval_steps=flags.output.eval_steps if has_eval else None,
            metric_for_best_model="loss" if has_eval else None,
            greater_is_better=False if has_eval else None,
            prediction_loss_only=True,
            remove_unused_columns=False,
            label_names=["labels"],
            dataloader_num_workers=workers,
            dataloader_persistent_workers=workers > 0,
            report_to=flags.output.report_to or "none",
            deepspeed=deepspeed_config(flags.distributed.deepspeed),
            fsdp=flags.distributed.fsdp or "",
            fsdp_config=flags.distributed.fsdp_config,
            ddp_backend="gloo" if world_size > 1 and not on_gpu else None,
            ddp_find_unused_parameters=trains_vision if world_size > 1 else None,
        )
    except (ValueError, ImportError) as error:
        raise UserError(f"training arguments: {str(error).strip().splitlines()[0]}") from None


def clean_worker_error(error: Exception) -> Exception:
    """A user error raised in a dataloader worker arrives wrapped in a traceback text: keep its last line."""
    from swiftlite.errors import user_error_types

    if isinstance(error, user_error_types()) and "Original Traceback" in str(error):
        last = str(error).strip().splitlines()[-1]
        return UserError(last.split(": ", 1)[1] if ": " in last else last)
    return error


def final_summary(trainer, result, wall: float, run_dir: Path, skipped: int, train_set) -> dict:
    from transformers.trainer_utils import get_last_checkpoint

    state = trainer.state
    last = get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None
    stats = dict(trainer.data_stats)
    if trainer.args.world_size > 1:  # every process counted its own batches: sum them
        import torch

        counts = trainer.accelerator.reduce(torch.tensor([stats["samples"], stats["tokens"]],
                                                         device=trainer.args.device), reduction="sum")
        stats["samples"], stats["tokens"] = (int(value) for value in counts.tolist())
    dropped = dict(train_set.dropped, **trainer.dropped_rows)
    return {
        "last_model_checkpoint": str(Path(last).resolve()) if last else None,
        "best_model_checkpoint": state.best_model_checkpoint or (str(Path(last).resolve()) if last else None),
        "best_metric": state.best_metric,
        "global_step": state.global_step,
        "train_loss": round(result.training_loss, 8),
        "train_runtime": round(wall, 3),
        "train_samples": stats["samples"],
        "train_tokens": stats["tokens"],
        "train_samples_per_second": round(stats["samples"] / wall, 3) if wall else 0.0,
        "train_tokens_per_second": round(stats["tokens"] / wall, 1) if wall else 0.0,
        "data_time_share": round(trainer.data_time_share(), 4),
        "first_batch_wait_seconds": round(stats["first_wait_s"] or 0.0, 3),
        "data_prepare_seconds": round(stats["prepare_s"], 3),
        "dropped_rows": len(dropped),
        "skipped_rows": skipped,
    }
