"""The transformers Trainer, with what `mm sft` adds: self-describing atomic checkpoints, logging.jsonl,
and measurements of data preparation. Only the Trainer's public extension points are used (its output_dir,
callbacks, train, get_*_dataloader, get_batch_samples, training_step, compute_loss, create_optimizer), so that a
new transformers release does not break it behind our back.

- Checkpoints: the Trainer's output_dir is `<run>/.staging`, where it writes `checkpoint-<step>` whole; once
  saved, CheckpointPublisher (on_save) adds sft_args.json (and, for full fine-tuning, the tokenizer and processor
  files of the base model) and renames it to `<run>/checkpoint-<step>` (swiftlite.models.checkpoint_files). A
  crash mid-save never leaves a half-written `checkpoint-<step>` that `--resume_from_checkpoint` or
  `mm infer --ckpt_dir` would pick up, and `mm infer|export|deploy --ckpt_dir` need nothing else.
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

from transformers import Trainer, TrainerCallback

from swiftlite.errors import UserError, disk_full
from swiftlite.models.checkpoint_files import describe_checkpoint, publish
from swiftlite.training.dataset import STATS_KEY

# What torch and the Trainer raise for a checkpoint that passed resume_checks but does not fit this run.
LOAD_ERRORS = (OSError, RuntimeError, ValueError, KeyError, EOFError, TypeError)


class SftTrainer(Trainer):
    """`run_dir`: where checkpoints are published (the Trainer's output_dir is then `<run_dir>/.staging`);
    None leaves them where the Trainer writes them."""

    def __init__(self, *args, sft_args: dict, base_model_dir: str, full_checkpoint: bool,
                 part_learning_rates: list | None = None, packing: bool = False, run_dir: str | Path | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.part_learning_rates = part_learning_rates or []  # [(flag, module prefixes, rate)]: --vit_lr, --aligner_lr
        self.packing = packing
        self.sft_args = sft_args
        self.base_model_dir = Path(base_model_dir)
        self.full_checkpoint = full_checkpoint
        self.run_dir = Path(run_dir) if run_dir is not None else Path(self.args.output_dir)
        # wait_s: the loop waiting for batches after the first; first_wait_s: the first one (worker start-up).
        self.data_stats = {"samples": 0, "tokens": 0, "prepare_s": 0.0, "wait_s": 0.0, "step_s": 0.0,
                           "first_wait_s": None}
        self.dropped_rows: dict[str, str] = {}
        self._last_batch_end: float | None = None
        self._loaders: list = []  # the torch DataLoaders handed out, whose workers stop when training ends
        self.publisher = CheckpointPublisher(self)
        self.add_callback(self.publisher)
        if run_dir is not None:
            keep_tensorboard_logs_in(self, self.run_dir)

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

    def train(self, resume_from_checkpoint=None, **kwargs):
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        except UserError:
            raise
        except Exception as error:
            full = self.publisher.disk_full(error) if self.publisher.saving else None
            if full is not None:
                raise full from None
            if resume_from_checkpoint is not None and not self.publisher.training_began and isinstance(
                    error, LOAD_ERRORS):  # loading the checkpoint: the Trainer does it before on_train_begin
                raise self._resume_failed(Path(resume_from_checkpoint), error) from None
            raise
        finally:
            self.stop_dataloader_workers()
            self.publisher.remove_empty_staging()

    def _resume_failed(self, checkpoint: Path, error: BaseException) -> Exception:
        """A damaged checkpoint to resume from is one line naming the file: the weights (before the optimizer
        exists: the Trainer loads them first) or optimizer.pt (resume_checks has read the other files whole)."""
        lines = str(error).strip().splitlines()
        mismatch = next((line.strip() for line in lines if "size mismatch" in line), None)
        if self.optimizer is not None and not mismatch:
            return UserError(f"{checkpoint / 'optimizer.pt'}: does not load into this run's optimizer "
                             f"({_first_line(error)}); damaged, or saved by another run")
        weights = "adapter_model.safetensors" if not self.full_checkpoint else "model.safetensors"
        where = checkpoint / weights if mismatch else f"--resume_from_checkpoint {checkpoint}"
        return UserError(f"{where}: the weights do not load into this run's model "
                         f"({mismatch[:300] if mismatch else _first_line(error)})")

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
                            f"the run diverged and was stopped; {saved_so_far(self.run_dir)}. Try a lower "
                            "--learning_rate or --max_grad_norm")
        return loss

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


class CheckpointPublisher(TrainerCallback):
    """Publishes each checkpoint the Trainer saved into `<run>/.staging`: described, then renamed into the run
    directory (swiftlite.models.checkpoint_files.publish), then the run's checkpoints rotated. Before a save it
    checks that the weights are finite and clears the leftover of a killed save of the same step."""

    def __init__(self, trainer: SftTrainer):
        self.trainer = trainer
        self.saving: str | None = None  # the checkpoint being written, until it is published
        self.training_began = False  # the Trainer has loaded what it resumes from (weights, optimizer, scheduler)

    @property
    def staging(self) -> Path:
        return Path(self.trainer.args.output_dir)

    def on_train_begin(self, args, state, control, **kwargs):
        self.training_began = True

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            self._before_save(args, state)

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save:
            self._before_save(args, state)

    def _before_save(self, args, state) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        check_weights_finite(self.trainer.model, state.global_step, self.trainer.run_dir)
        self.saving = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if args.should_save and (self.staging / self.saving).exists():  # a killed run's: never mix its files in
            shutil.rmtree(self.staging / self.saving)
        self.trainer.accelerator.wait_for_everyone()

    def on_save(self, args, state, control, **kwargs):
        from transformers.trainer_utils import rotate_checkpoints

        if self.trainer.run_dir == self.staging:  # no run_dir given: the Trainer's checkpoints stay where they are
            self.saving = None
        if self.saving is None:
            return
        staged, final = self.staging / self.saving, self.trainer.run_dir / self.saving
        self.trainer.accelerator.wait_for_everyone()  # every rank has written its part (rng state, shards)
        if args.should_save:
            if state.best_model_checkpoint and Path(state.best_model_checkpoint) == staged:
                state.best_model_checkpoint = str(final)
                state.save_to_json(str(staged / "trainer_state.json"))
            describe_checkpoint(staged, self.trainer.sft_args,
                                self.trainer.base_model_dir if self.trainer.full_checkpoint else None)
            publish(staged, final)  # saved twice at one step (resumed into the same directory): replaced
            shutil.rmtree(self.staging, ignore_errors=True)
            rotate_checkpoints(str(self.trainer.run_dir), args.save_total_limit, state.best_model_checkpoint,
                               use_mtime=False)
        self.saving = None
        self.trainer.accelerator.wait_for_everyone()

    def on_train_end(self, args, state, control, **kwargs):
        """With --save_total_limit 1 the Trainer keeps only the best checkpoint once training ends; it looks in
        its output_dir, so the same is done here in the run directory."""
        from transformers.trainer_utils import sort_checkpoints

        best = state.best_model_checkpoint
        if not args.should_save or best is None or args.save_total_limit != 1 or not Path(best).is_dir():
            return
        for checkpoint in sort_checkpoints(str(self.trainer.run_dir), best_model_checkpoint=best):
            if not os.path.samefile(checkpoint, best):
                shutil.rmtree(checkpoint, ignore_errors=True)

    def disk_full(self, error: BaseException) -> UserError | None:
        """A full disk while saving: the partial checkpoint is removed and the error is one line."""
        full = disk_full(error, self.trainer.run_dir, f"{self.saving} was not saved (its partial files are removed)")
        if full is not None and self.trainer.args.should_save:
            published_here = self.trainer.run_dir == self.staging
            shutil.rmtree(self.staging / self.saving if published_here else self.staging, ignore_errors=True)
        return full

    def remove_empty_staging(self) -> None:
        """The Trainer creates its output_dir up front; an empty one is no leftover (a killed save's is kept, and
        reported when resuming)."""
        if self.trainer.run_dir != self.staging and self.trainer.args.should_save and self.staging.is_dir() \
                and not any(self.staging.iterdir()):
            self.staging.rmdir()


def check_weights_finite(model, step: int, run_dir: Path) -> None:
    """Never save non-finite weights (the Trainer would)."""
    import torch

    for name, parameter in model.named_parameters():
        if parameter.requires_grad and not bool(torch.isfinite(parameter.detach()).all()):
            raise UserError(f"step {step}: the trained weight {name} holds NaN or inf: the run diverged and was "
                            f"stopped without saving it; {saved_so_far(run_dir)}. Try a lower --learning_rate or "
                            "--max_grad_norm")


def saved_so_far(run_dir: Path) -> str:
    from swiftlite.training.launch import complete_checkpoints

    saved = complete_checkpoints(run_dir) if run_dir.is_dir() else []
    return f"the last checkpoint saved is {saved[-1]}" if saved else "no checkpoint was saved"


def keep_tensorboard_logs_in(trainer: Trainer, run_dir: Path) -> None:
    """TensorBoard logs go to `<output_dir>/runs/<date_host>` unless TENSORBOARD_LOGGING_DIR says otherwise; the
    output_dir being the staging directory, point them at `<run>/runs/<date_host>`, where they always were."""
    from transformers.integrations.integration_utils import TensorBoardCallback, default_logdir

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(run_dir / default_logdir())


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
