"""A warning for runs that cannot learn: every optimizer step ran at learning rate 0.

The learning rate starts at 0 and climbs during the warm-up. A run with very few steps can therefore spend all of
them inside the warm-up (seed 003's 3-row example: one step, warmed up over ceil(0.05 * 1) = 1 step, taken at
learning rate 0) and finish with the weights exactly as they started, saying nothing. The callback reads the rate
each step is about to use (just before optimizer.step) and `mm sft` reports at the end when none was above 0.
"""

from __future__ import annotations

from transformers import TrainerCallback


class LearningRateWatch(TrainerCallback):
    def __init__(self):
        self.steps = 0
        self.highest = 0.0

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None:
            self.steps += 1
            self.highest = max([self.highest] + [float(group["lr"]) for group in optimizer.param_groups])

    def warning(self, args) -> str | None:
        """The warning to print after training, or None when some step learned."""
        if not self.steps or self.highest > 0:
            return None
        # TrainingArguments.warmup_steps holds --warmup_steps (>= 1) or --warmup_ratio (a fraction)
        warmup = f"--warmup_{'steps' if args.warmup_steps >= 1 else 'ratio'} {args.warmup_steps:g}"
        return (f"warning: all {self.steps} optimizer step(s) ran at learning rate 0 (inside the warm-up, {warmup}), "
                "so the weights did not change; train for more steps (more rows, --num_train_epochs, --max_steps, "
                "a smaller --gradient_accumulation_steps) or set --warmup_ratio 0")
