"""The transformers Trainer, with what `mm sft` adds: self-describing atomic checkpoints, logging.jsonl,
and measurements of data preparation.

- Checkpoints are written into `<output_dir>/.staging/checkpoint-<step>` and renamed into place once complete,
  so a crash mid-save never leaves a half-written `checkpoint-<step>` that `--resume_from_checkpoint` or
  `mm infer --ckpt_dir` would pick up. Each gets a copy of sft_args.json (and, for full fine-tuning, the
  tokenizer and processor files of the base model), so `mm infer|export|deploy --ckpt_dir` need nothing else.
- Every log (train and eval) becomes a JSON line in logging.jsonl with progress and timing (ms-swift's keys).
- Batches carry bookkeeping from the collator (samples, tokens, seconds spent preparing them, dropped rows);
  it is popped before the forward pass and summed, and the time the training loop waits for the next batch
  is measured, so the share of step time spent on data is known.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from swiftlite.errors import UserError, disk_full
from swiftlite.training.dataset import STATS_KEY
from swiftlite.training.launch import STAGING_DIR


def _import_trainer_without_datasets():
    """transformers.trainer imports the `datasets` package (and pandas) whenever it is installed, only to
    recognise `datasets.Dataset` objects, which `mm sft` never passes it. That costs over a second of start-up
    on every run, so the Trainer is imported with `datasets` reported absent (unless it is already loaded,
    e.g. for a hub dataset); the rest of transformers sees the real answer once the import is done."""
    import sys

    import transformers.utils as utils
    import transformers.utils.import_utils as import_utils

    original = import_utils.is_datasets_available
    if "datasets" not in sys.modules and "transformers.trainer" not in sys.modules:
        utils.is_datasets_available = import_utils.is_datasets_available = lambda: False
    try:
        from transformers.trainer import Trainer
        from transformers.trainer_callback import TrainerCallback
    finally:
        utils.is_datasets_available = import_utils.is_datasets_available = original
    return Trainer, TrainerCallback


Trainer, TrainerCallback = _import_trainer_without_datasets()



class SftTrainer(Trainer):
    def __init__(self, *args, sft_args: dict, base_model_dir: str, full_checkpoint: bool,
                 part_learning_rates: list | None = None, packing: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.part_learning_rates = part_learning_rates or []  # [(flag, module prefixes, rate)]: --vit_lr, --aligner_lr
        self.packing = packing
        self.sft_args = sft_args
        self.base_model_dir = Path(base_model_dir)
        self.full_checkpoint = full_checkpoint
        # wait_s: the loop waiting for batches after the first; first_wait_s: the first one (worker start-up).
        self.data_stats = {"samples": 0, "tokens": 0, "prepare_s": 0.0, "wait_s": 0.0, "step_s": 0.0,
                           "first_wait_s": None}
        self.dropped_rows: dict[str, str] = {}
        self._staging = False
        self._last_batch_end: float | None = None
        self._loaders: list = []  # the torch DataLoaders handed out, whose workers stop when training ends

    def get_train_dataloader(self):
        """The Trainer's loader (shuffled from --seed and the epoch), whose workers' seeds come from a generator of
        its own, seeded from --seed.

        A DataLoader otherwise draws its workers' base seed from torch's global generator each time it starts
        iterating, and how often it starts depends on the workers (persistent ones start once, none restart every
        epoch) and on resuming (a second loader skips the trained batches). Dropout draws from that same global
        generator, so the losses would depend on --dataloader_num_workers and on whether the run was resumed.
        """
        import torch

        dataloader = super().get_train_dataloader()
        base = getattr(dataloader, "base_dataloader", dataloader)  # accelerate wraps the torch DataLoader
        base.generator = torch.Generator().manual_seed(self.args.seed)
        self._loaders.append(base)
        return dataloader

    def get_eval_dataloader(self, eval_dataset=None):
        """The Trainer's evaluation loader, whose iterator draws its base seed from a generator of its own.

        Starting to iterate a DataLoader draws a seed from torch's global generator, the one dropout draws from.
        With persistent workers the evaluation iterator starts once, at the first evaluation: step 10 of a run
        evaluating every 10 steps, but step 30 of the same run resumed from checkpoint-20, so the resumed run's
        dropout differed from step 31 on. A fresh generator per evaluation leaves the global one alone.
        """
        import torch

        dataloader = super().get_eval_dataloader(eval_dataset)
        base = getattr(dataloader, "base_dataloader", dataloader)
        base.generator = torch.Generator().manual_seed(self.args.seed)
        self._loaders.append(base)
        return dataloader

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            self.stop_dataloader_workers()

    def stop_dataloader_workers(self) -> None:
        """Tell the (persistent) dataloader workers to exit and wait for them, on every way out of training.

        Otherwise, after Ctrl-C, SIGTERM or an error, the workers live on until the interpreter's exit kills them
        mid-transfer (multiprocessing terminates daemon processes), and the main process's fd-sharing thread
        prints a ConnectionResetError or EOFError traceback; killed by a signal, they were left as orphans.
        """
        for loader in self._loaders:
            iterator = getattr(loader, "_iterator", None)  # where a DataLoader keeps persistent workers
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            loader._iterator = None
        self._loaders.clear()

    # ---- measuring data preparation ---------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        started = time.perf_counter()
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        waited = time.perf_counter() - started
        if self._last_batch_end is None:
            self.data_stats["first_wait_s"] = waited
        else:
            self.data_stats["wait_s"] += waited
            self.data_stats["step_s"] += started - self._last_batch_end
        self._last_batch_end = time.perf_counter()
        for batch in batches:
            stats = batch.pop(STATS_KEY, None)
            if stats:
                for key in ("samples", "tokens", "prepare_s"):
                    self.data_stats[key] += stats[key]
                self.dropped_rows.update(dict(stats["dropped"]))
        return batches, num_items

    # ---- a run that diverges stops, and never saves non-finite weights ---------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        """The Trainer leaves NaN/inf losses out of its logged average (logging_nan_inf_filter), so a diverged run
        logged normal-looking losses and saved NaN weights. Stop at the first non-finite loss instead (the Trainer
        already reads the loss's finiteness every step for that filter, so this adds no device sync)."""
        import torch

        loss = super().training_step(model, inputs, num_items_in_batch)
        if not bool(torch.isfinite(loss.detach()).all()):
            raise UserError(f"step {self.state.global_step + 1}: the training loss is {float(loss.detach().float())}: "
                            f"the run diverged and was stopped; {self._saved_so_far()}. Try a lower "
                            "--learning_rate or --max_grad_norm")
        return loss

    def _check_weights_finite(self) -> None:
        import torch

        for name, parameter in self.model.named_parameters():
            if parameter.requires_grad and not bool(torch.isfinite(parameter.detach()).all()):
                raise UserError(f"step {self.state.global_step}: the trained weight {name} holds NaN or inf: the run "
                                f"diverged and was stopped without saving it; {self._saved_so_far()}. Try a lower "
                                "--learning_rate or --max_grad_norm")

    def _saved_so_far(self) -> str:
        from swiftlite.training.launch import complete_checkpoints

        saved = complete_checkpoints(Path(self.args.output_dir)) if Path(self.args.output_dir).is_dir() else []
        return f"the last checkpoint saved is {saved[-1]}" if saved else "no checkpoint was saved"

    # ---- a damaged checkpoint to resume from is one line naming the file -------------------------------
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        try:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        except (OSError, RuntimeError, ValueError, KeyError, EOFError) as error:
            lines = str(error).strip().splitlines()
            mismatch = next((line.strip() for line in lines if "size mismatch" in line), None)
            weights = "adapter_model.safetensors" if not self.full_checkpoint else "model.safetensors"
            where = (Path(resume_from_checkpoint) / weights if mismatch
                     else f"--resume_from_checkpoint {resume_from_checkpoint}")
            raise UserError(f"{where}: the weights do not load into this run's model "
                            f"({mismatch[:300] if mismatch else _first_line(error)})") from None

    def _load_optimizer_and_scheduler(self, checkpoint):
        if checkpoint is not None:
            from swiftlite.training.resume_checks import check_torch_file

            check_torch_file(Path(checkpoint) / "scheduler.pt")  # tiny: read first, so a failure below is the optimizer's
        try:
            return super()._load_optimizer_and_scheduler(checkpoint)
        except (OSError, RuntimeError, ValueError, KeyError, EOFError, TypeError) as error:
            raise UserError(f"{Path(checkpoint) / 'optimizer.pt'}: does not load into this run's optimizer "
                            f"({_first_line(error)}); damaged, or saved by another run") from None

    def _load_rng_state(self, checkpoint):
        if checkpoint is not None:
            from swiftlite.training.resume_checks import check_rng_state

            check_rng_state(Path(checkpoint), self.args.world_size, self.args.process_index)
        return super()._load_rng_state(checkpoint)

    def compute_loss(self, model, inputs, *args, **kwargs):
        inputs.pop(STATS_KEY, None)  # evaluation batches come here with their bookkeeping still attached
        if self.packing:
            from swiftlite.training.packing import pack_batch

            inputs = pack_batch(self.accelerator.unwrap_model(model), inputs)
        return super().compute_loss(model, inputs, *args, **kwargs)

    # ---- per-part learning rates ------------------------------------------------------------------
    def create_optimizer(self, model=None):
        if not self.part_learning_rates or self.optimizer is not None:
            return super().create_optimizer(model)
        from swiftlite.training.optim import parameter_groups

        opt_model = self.model if model is None else model
        groups = parameter_groups(opt_model, self.part_learning_rates, self.args.learning_rate,
                                  self.args.weight_decay, self.get_decay_parameter_names(opt_model))
        optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("params", None)
        self.optimizer = optimizer_class(groups, **optimizer_kwargs)
        return self.optimizer

    def data_time_share(self) -> float:
        """Share of the training loop's time spent waiting for batches (0 when preparation fully overlaps),
        after the first batch (whose wait includes starting the workers: reported on its own)."""
        total = self.data_stats["wait_s"] + self.data_stats["step_s"]
        return self.data_stats["wait_s"] / total if total > 0 else 0.0

    # ---- atomic, self-describing checkpoints ------------------------------------------------------
    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if self._staging else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        self._check_weights_finite()
        run_dir = Path(self._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, final = run_dir / STAGING_DIR / name, run_dir / name
        if self.args.should_save and staged.exists():  # left by a run killed mid-save: never mix its files in
            shutil.rmtree(staged)
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)  # every rank writes its part (rng state, shards) here
            if self.args.should_save:
                if self.state.best_model_checkpoint and Path(self.state.best_model_checkpoint) == staged:
                    self.state.best_model_checkpoint = str(final)
                    self.state.save_to_json(str(staged / "trainer_state.json"))
                self._describe_checkpoint(staged)
        except Exception as error:
            full = disk_full(error, run_dir, f"{name} was not saved (its partial files are removed)")
            if full is None:
                raise
            shutil.rmtree(run_dir / STAGING_DIR, ignore_errors=True)
            raise full from None
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if final.exists():  # saved twice at one step (e.g. resumed into the same directory)
                shutil.rmtree(final)
            os.replace(staged, final)
            shutil.rmtree(run_dir / STAGING_DIR, ignore_errors=True)
            rotate_checkpoints(str(run_dir), self.args.save_total_limit, self.state.best_model_checkpoint,
                               use_mtime=False)
        self.accelerator.wait_for_everyone()

    def _describe_checkpoint(self, checkpoint_dir: Path) -> None:
        (checkpoint_dir / "sft_args.json").write_text(json.dumps(self.sft_args, indent=2, ensure_ascii=False) + "\n")
        if self.full_checkpoint:
            from swiftlite.models.checkpoint_files import processor_files

            for source in processor_files(self.base_model_dir):
                if not (checkpoint_dir / source.name).exists():
                    shutil.copy2(source, checkpoint_dir / source.name)


class JsonlLogger(TrainerCallback):
    """Appends each log to logging.jsonl with progress and timing, as ms-swift's logging.jsonl does."""

    def __init__(self, path: Path, trainer_ref: list):
        self.path = Path(path)
        self.trainer_ref = trainer_ref  # [trainer], set once the trainer exists
        self.started = time.time()
        self.first_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.time()
        self.first_step = state.global_step  # > 0 when resuming: the ETA counts only steps run here

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {key: _rounded(value) for key, value in logs.items()}
        elapsed = time.time() - self.started
        done = state.global_step - (self.first_step or 0)
        remaining = elapsed / done * (state.max_steps - state.global_step) if done > 0 else 0.0
        record.update({
            "global_step/max_steps": f"{state.global_step}/{state.max_steps}",
            "percentage": f"{100 * state.global_step / max(state.max_steps, 1):.2f}%",
            "elapsed_time": _duration(elapsed),
            "remaining_time": _duration(remaining),
        })
        if self.trainer_ref and "loss" in logs:
            trainer = self.trainer_ref[0]
            record["data_time_share"] = round(trainer.data_time_share(), 4)
            if trainer.dropped_rows:
                record["dropped_rows"] = len(trainer.dropped_rows)
        write_jsonl(self.path, record)


def trim_logs(path: Path, step: int) -> None:
    """Continuing a run in its own directory from checkpoint-<step>: drop what the interrupted run logged after
    that step (and its summary), so that logging.jsonl reads as one run."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        progress = json.loads(line).get("global_step/max_steps") if line.strip() else None
        if isinstance(progress, str) and int(progress.split("/")[0]) <= step:
            kept.append(line + "\n")
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(kept), encoding="utf-8")
    os.replace(temporary, path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300]}" if text else type(error).__name__


def write_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _rounded(value):
    return round(value, 8) if isinstance(value, float) else value


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h {minutes}m {seconds}s" if hours else f"{minutes}m {seconds}s" if minutes else f"{seconds}s"
