"""`mm infer` interactive sessions, typed into a real pseudo-terminal (pexpect) against the tiny checkpoints.

One scripted session per family covers single-line and multi-line turns, `<img>` tags, an `<image>` prompt,
a bad path (reported, chat goes on, turn dropped), `clear` and `exit`; the result file it saves is checked
against the transcript. Further sessions check Ctrl-C and Ctrl-D, and (in process, with a scripted reader)
the single-round behaviour and `reset-system`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import sys

import pexpect
import pytest

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SEPARATOR = "-" * 50


def spawn_chat(model_dir, result_dir, *flags):
    # One OpenMP thread: the tiny models gain nothing from more, and on a busy machine spinning threads stall.
    env = dict(os.environ, TERM="dumb", TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
               OMP_NUM_THREADS="1")
    argv = ["-m", "swiftlite", "infer", "--model", str(model_dir), "--result_dir", str(result_dir), *flags]
    child = pexpect.spawn(sys.executable, argv, env=env, encoding="utf-8", timeout=90, dimensions=(50, 400))
    child.logfile_read = io.StringIO()
    return child


def wait_until_reading_the_terminal(pid: int, timeout: float = 30) -> None:
    """Wait until the chat's main thread sleeps in readline's select() on the terminal. readline prints the
    prompt just before it calls select(); a SIGINT landing between the two sets Python's flag but interrupts
    no call, so the chat waits for the next key (CPython's readline, seen here 2 runs in 17 under load). A user
    who presses Ctrl-C again gets out; a test sends one, so it sends it when the chat is really waiting."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/task/{pid}/wchan") as handle:  # the kernel function the thread sleeps in
                sleeping_in = handle.read()
        except OSError:  # not Linux: fall back to a pause
            sleeping_in = "0"
        if sleeping_in == "0":  # hidden by the kernel
            time.sleep(0.5)
            return
        if "poll" in sleeping_in or "select" in sleeping_in:  # poll_schedule_timeout, do_select
            return
        time.sleep(0.02)
    raise AssertionError(f"the chat never waited for input within {timeout} s")


def transcript(child) -> str:
    return ANSI.sub("", child.logfile_read.getvalue()).replace("\r\n", "\n")


def results(result_dir) -> list[dict]:
    files = sorted((result_dir / "infer_result").glob("*.jsonl"))
    assert len(files) == 1, files
    return [json.loads(line) for line in files[0].read_text().splitlines()]


def turn(child, text: str, prompt: str = "<<< ") -> None:
    """Send a line and wait for the answer's separator and the next prompt."""
    child.sendline(text)
    child.expect_exact(SEPARATOR)
    child.expect_exact(prompt)


def test_scripted_session(tiny_family, shape_images, tmp_path):
    family, model_dir = tiny_family
    red, blue = shape_images["red"], shape_images["blue"]
    child = spawn_chat(model_dir, tmp_path, "--max_new_tokens", "6")
    child.expect_exact("Input `clear` to clear the history.")
    child.expect_exact("<<< ")

    turn(child, "hello")
    child.sendline("multi-line")
    child.expect_exact("End multi-line input with `#`.")
    child.expect_exact("Input `single-line` to switch to single-line input mode.")
    child.expect_exact("<<<[M] ")
    child.sendline("what is in")
    child.sendline("this picture#")
    child.expect_exact(SEPARATOR)
    child.expect_exact("<<<[M] ")
    child.sendline("single-line")  # a command needs no closing '#'
    child.expect_exact("<<< ")
    child.sendline("")  # an empty line is ignored: straight back to the prompt, no answer
    child.expect_exact("<<< ")
    turn(child, f"Picture 1:<img>{red}</img> what colour")
    child.sendline("<img>/no/such/dir/missing.png</img> and now")
    child.expect_exact("[ERROR:swiftlite] image file not found: /no/such/dir/missing.png")
    child.expect_exact("<<< ")
    child.sendline("<image> and this one")
    child.expect_exact("Input an image path or URL <<< ")
    turn(child, str(blue))
    child.sendline("clear")
    child.expect_exact("<<< ")
    turn(child, "after clear")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    text = transcript(child)
    assert child.exitstatus == 0, text
    assert "Traceback" not in text

    rows = results(tmp_path)
    assert [r["query"] for r in rows] == [
        "hello", "what is in\nthis picture", "Picture 1:<image> what colour", "<image> and this one", "after clear",
    ]
    # The failed turn never reached the history; the <image> prompt's answer is bound after the tag's image.
    assert [pair[0] for pair in rows[3]["history"]] == ["hello", "what is in\nthis picture", "Picture 1:<image> what colour"]
    assert rows[2]["images"] == [str(red)]
    assert rows[3]["images"] == [str(red), str(blue)]
    assert rows[4]["history"] == [] and rows[4]["images"] == []  # `clear` emptied history and media
    assert all(r["label"] is None for r in rows)
    # What was streamed to the terminal is what was saved: each answer sits between its input and a separator.
    for row in rows:
        assert f"{row['response']}\n{SEPARATOR}" in text
    assert f"saved 5 result(s) to {tmp_path / 'infer_result'}" in text


@pytest.mark.parametrize("key", ["ctrl-c", "ctrl-d"])
def test_ctrl_c_and_ctrl_d_at_the_prompt_leave(llava_dir, tmp_path, key):
    # Pressed at once, while the model is still loading in the background: the session must still end cleanly.
    child = spawn_chat(llava_dir, tmp_path)
    child.expect_exact("<<< ")
    wait_until_reading_the_terminal(child.pid)
    child.sendintr() if key == "ctrl-c" else child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, transcript(child)
    assert "Traceback" not in transcript(child) and "Error" not in transcript(child)
    assert not (tmp_path / "infer_result").exists()  # nothing was said, nothing saved


# ---- in process: single-round templates and reset-system --------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loaded_qwen(qwen2_vl_dir):
    from swiftlite.models.checkpoint import load_for_inference

    return load_for_inference(model_id_or_path=str(qwen2_vl_dir))


class ScriptedInput:
    def __init__(self, lines):
        self.lines = list(lines)
        self.prompts = []

    def __call__(self, prompt):
        self.prompts.append(prompt)
        if not self.lines:
            raise EOFError
        return self.lines.pop(0)


def run_session(loaded, meta, lines, make_params=None, out=None, **settings):
    from swiftlite.chat import ChatSession
    from swiftlite.infer import ResultWriter
    from swiftlite.infer_api import sampling_params

    writer = ResultWriter(settings.pop("result_dir"))
    reader, out = ScriptedInput(lines), out or io.StringIO()
    info = io.StringIO() if isinstance(out, InterruptOnFirstAnswer) else out
    make_params = make_params or (lambda: sampling_params(loaded.model, None, None, max_new_tokens=3))
    session = ChatSession(lambda: loaded, meta, make_params, writer=writer, read_line=reader, out=out, info=info,
                          **settings)
    session.run()
    output = out.getvalue() + (info.getvalue() if info is not out else "")
    return output, reader.prompts, read_rows(writer)


def read_rows(writer) -> list[dict]:
    return [json.loads(line) for line in writer.path.read_text().splitlines()] if writer.path else []


def test_single_round_template_drops_history(loaded_qwen, tmp_path):
    meta = dataclasses.replace(loaded_qwen.template.meta, supports_multi_turn=False)
    output, _, rows = run_session(loaded_qwen, meta, ["first question", "second question"], result_dir=tmp_path)
    assert output.count("only supports single-round dialogues") == 1
    assert "Input `clear`" not in output
    assert [r["history"] for r in rows] == [[], []]


def test_reset_system_asks_and_clears(loaded_qwen, tmp_path):
    lines = ["first", "reset-system", "You are a pirate.", "second", "reset-system", "", "third"]
    output, prompts, rows = run_session(loaded_qwen, loaded_qwen.template.meta, lines, result_dir=tmp_path,
                                        stream=False)
    assert prompts.count("<<<[S] ") == 2
    assert [r["system"] for r in rows] == [None, "You are a pirate.", None]
    assert [r["history"] for r in rows] == [[], [], []]
    assert "The system prompt is back to the default." in output


class InterruptOnFirstAnswer(io.StringIO):
    """A terminal whose user presses Ctrl-C (SIGINT to the main thread) as soon as an answer starts."""

    def __init__(self):
        super().__init__()
        self.armed = True

    def write(self, text):
        if self.armed and text:
            self.armed = False
            import _thread

            _thread.interrupt_main()
        return super().write(text)


def test_ctrl_c_while_answering_stops_only_that_answer(loaded_qwen, tmp_path):
    from swiftlite.infer_api import sampling_params

    budgets = iter([100000, 3])  # the first answer would run for minutes unless Ctrl-C stops it
    out = InterruptOnFirstAnswer()
    output, _, rows = run_session(
        loaded_qwen, loaded_qwen.template.meta, ["tell me everything", "and briefly?"],
        make_params=lambda: sampling_params(loaded_qwen.model, None, None, max_new_tokens=next(budgets)),
        out=out, result_dir=tmp_path,
    )
    assert "Answer interrupted: this turn is not kept." in output
    assert [r["query"] for r in rows] == ["and briefly?"]
    assert rows[0]["history"] == []  # the interrupted turn is not part of the conversation
