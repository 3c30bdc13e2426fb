"""The interactive session of `mm infer`: read a turn, attach its media, stream the answer, keep the history.

The session reads like ms-swift's (seed 003):

    <<< multi-line
    [INFO:swiftlite] End multi-line input with `#`.
    [INFO:swiftlite] Input `single-line` to switch to single-line input mode.
    <<<[M] Picture 1:<img>animal.png</img>
    How many sheep are there?#
    There are four sheep.
    --------------------------------------------------

Images come inline as ``<img>path|URL|base64</img>``, or as an ``<image>`` placeholder for which the session
asks for a path (audio likewise). Media are loaded when the turn is typed, so a bad path is reported at once
and that turn is dropped while the chat goes on; loaded images are kept for the later turns that re-send them.
Ctrl-C while an answer streams stops that answer; at the prompt it (like Ctrl-D, `exit` or `quit`) leaves.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Callable

from swiftlite.media import MediaError
from swiftlite.prompt_parts import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, extract_media_tags
from swiftlite.video import VIDEO_PLACEHOLDER, extract_video_tags

PROMPT = "<<< "
MULTI_LINE_PROMPT = "<<<[M] "
SYSTEM_PROMPT = "<<<[S] "
IMAGE_PROMPT = "Input an image path or URL <<< "
AUDIO_PROMPT = "Input an audio path or URL <<< "
VIDEO_PROMPT = "Input a video path or URL <<< "
SEPARATOR = "-" * 50
COMMANDS = ("exit", "quit", "multi-line", "single-line", "clear", "reset-system")


@dataclass
class Turn:
    query: str  # as typed, with <image>/<audio> placeholders in place of tags and prompts
    response: str
    images: list = field(default_factory=list)  # sources (for the result file)
    audios: list = field(default_factory=list)
    videos: list = field(default_factory=list)


@dataclass
class ChatState:
    system: str | None  # None: the template's default system prompt
    turns: list[Turn] = field(default_factory=list)
    loaded_images: list = field(default_factory=list)  # PIL images of every turn, in order
    audio_sources: list = field(default_factory=list)
    video_sources: list = field(default_factory=list)

    def clear(self) -> None:
        self.turns.clear()
        self.loaded_images.clear()
        self.audio_sources.clear()
        self.video_sources.clear()


class ChatSession:
    """One interactive conversation. `get_loaded()` returns the LoadedModel (it may still be loading)."""

    def __init__(self, get_loaded: Callable[[], object], template_meta, make_params: Callable[[], object],
                 stream: bool = True, system: str | None = None, writer=None,
                 read_line: Callable[[str], str] = input, out=None, info=None):
        self.get_loaded = get_loaded
        self.meta = template_meta
        self.make_params = make_params
        self.stream = stream
        self.state = ChatState(system)
        self.writer = writer
        self.read_line = read_line
        self.out = out or sys.stdout
        self.info_stream = info or sys.stderr
        self.multi_line = False

    # ---- printing ----------------------------------------------------------------------------------
    def info(self, message: str) -> None:
        self.out.flush()
        print(f"[INFO:swiftlite] {message}", file=self.info_stream, flush=True)

    def error(self, message: str) -> None:
        self.out.flush()
        print(f"[ERROR:swiftlite] {message}", file=self.info_stream, flush=True)

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def announce(self) -> None:
        self.info("Input `exit` or `quit` to exit the conversation (or press Ctrl-D).")
        self.info("Input `multi-line` to switch to multi-line input mode.")
        self.info("Input `reset-system` to reset the system and clear the history.")
        if self.meta.supports_multi_turn:
            self.info("Input `clear` to clear the history.")
        else:
            self.info(f"The template {self.meta.name!r} only supports single-round dialogues: "
                      "the history is dropped after each turn.")
        media = []
        if self.meta.image_token:
            media.append("images as <img>path or URL</img> (or type <image> to be asked for a path)")
        if self.meta.audio_token:
            media.append("audio as <audio>path or URL</audio> (or type <audio> to be asked)")
        if media:
            self.info("Send " + " and ".join(media) + ".")
        self.info("Ctrl-C stops an answer; at the prompt it exits.")

    # ---- reading -----------------------------------------------------------------------------------
    def read_query(self) -> str:
        if not self.multi_line:
            return self.read_line(PROMPT)
        lines = []
        prompt = MULTI_LINE_PROMPT
        while True:
            line = self.read_line(prompt)
            prompt = ""
            if not lines and line.strip().lower() in COMMANDS:
                return line  # a command needs no closing `#`
            if line.rstrip().endswith("#"):
                lines.append(line.rstrip()[:-1])
                return "\n".join(lines)
            lines.append(line)

    def ask_media(self, text: str) -> str:
        """Ask for a source for each typed <image>/<audio>/<video> placeholder; return the text with tags instead."""
        placeholders = {"img": IMAGE_PLACEHOLDER, "audio": AUDIO_PLACEHOLDER, "video": VIDEO_PLACEHOLDER}
        prompts = {"img": IMAGE_PROMPT, "audio": AUDIO_PROMPT, "video": VIDEO_PROMPT}
        result, position = [], 0
        while True:
            found = [(text.find(placeholder, position), tag) for tag, placeholder in placeholders.items()]
            found = [(i, tag) for i, tag in found if i >= 0]
            if not found:
                return "".join(result) + text[position:]
            index, tag = min(found)
            typed_tag = re.match(rf"<{tag}>[^<>]*</{tag}>", text[index:]) if tag != "img" else None
            if typed_tag:  # `<video>SRC</video>` typed in full: its opening is not a placeholder to ask about
                result.append(text[position:index] + typed_tag.group(0))
                position = index + typed_tag.end()
                continue
            source = self.read_line(prompts[tag]).strip()
            if not source:
                raise MediaError(f"no {'image' if tag == 'img' else tag} given for the placeholder")
            result.append(f"{text[position:index]}<{tag}>{source}</{tag}>")
            position = index + len(placeholders[tag])

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        self.announce()
        while True:
            try:
                query = self.read_query()
            except (EOFError, KeyboardInterrupt):
                self.write("\n")
                return
            command = query.strip().lower()
            if not command:
                continue
            if command in ("exit", "quit"):
                return
            if command == "multi-line":
                self.multi_line = True
                self.info("End multi-line input with `#`.")
                self.info("Input `single-line` to switch to single-line input mode.")
                continue
            if command == "single-line":
                self.multi_line = False
                continue
            if command == "clear":
                self.state.clear()
                continue
            if command == "reset-system":
                try:
                    system = self.read_line(SYSTEM_PROMPT)
                except (EOFError, KeyboardInterrupt):
                    self.write("\n")
                    return
                self.state.system = system.strip() or None
                self.state.clear()
                if self.state.system is None:
                    self.info("The system prompt is back to the default.")
                continue
            try:
                self.chat_turn(query)
            except (EOFError, KeyboardInterrupt):  # at a media prompt
                self.write("\n")
                return

    def chat_turn(self, typed: str) -> None:
        from swiftlite.media import load_audio, load_image
        from swiftlite.templates.base import TemplateError

        try:
            text, video_sources = extract_video_tags(self.ask_media(typed))
            text, image_sources, audio_sources = extract_media_tags(text)
            # Loaded now, so a bad path is reported before anything is sent; PIL images are reused later.
            images = [load_image(source) for source in image_sources]
            for source in audio_sources:
                load_audio(source)
        except MediaError as error:
            self.error(f"{error} (this turn was not sent; the chat goes on)")
            return
        loaded = self.get_loaded()
        template = loaded.template
        if not self.meta.supports_multi_turn:
            self.state.clear()
        conversation = self.conversation(text, images, audio_sources, video_sources)
        try:
            row = template.encode(conversation, add_generation_prompt=True)
        except (MediaError, TemplateError) as error:
            self.error(f"{error} (this turn was not sent; the chat goes on)")
            return
        response = self.answer(loaded, row)
        if response is None:
            return
        turn = Turn(text, response, image_sources, audio_sources, video_sources)
        if self.writer is not None:
            self.writer.write(self.result_record(turn, template))
        self.state.turns.append(turn)
        self.state.loaded_images += images
        self.state.audio_sources += audio_sources
        self.state.video_sources += video_sources

    def conversation(self, text: str, images: list, audios: list, videos: list | None = None):
        from swiftlite.conversation import Conversation

        messages = [{"role": "system", "content": self.state.system}] if self.state.system else []
        for turn in self.state.turns:
            messages += [{"role": "user", "content": turn.query}, {"role": "assistant", "content": turn.response}]
        messages.append({"role": "user", "content": text})
        return Conversation(messages, self.state.loaded_images + images, self.state.audio_sources + audios,
                            videos=self.state.video_sources + list(videos or []))

    def answer(self, loaded, row: dict) -> str | None:
        """Print the answer (streamed or whole) and the separator; None when Ctrl-C stopped it."""
        from swiftlite.infer_api import StreamingGeneration, quiet_generation_flag_warning

        quiet_generation_flag_warning()
        params = self.make_params()
        # The engine behind the chat: vLLM's (--infer_backend vllm: its model streams a row itself), else
        # transformers' generate in a thread. Both yield text deltas and stop at cancel().
        stream_row = getattr(loaded.model, "stream_row", None)
        if stream_row is not None:
            generation = stream_row(loaded.template, row, params)
        else:
            generation = StreamingGeneration(loaded.model, loaded.template, row, params)
        response = ""
        try:
            for delta in generation:
                response += delta
                if self.stream:
                    self.write(delta)
        except KeyboardInterrupt:
            generation.cancel()
            self.write("\n")
            self.info("Answer interrupted: this turn is not kept.")
            return None
        if not self.stream:
            response = generation.result.text
            self.write(response)
        self.write(f"\n{SEPARATOR}\n")
        return response

    def result_record(self, turn: Turn, template) -> dict:
        history = [[t.query, t.response] for t in self.state.turns]
        images = [source for t in self.state.turns for source in t.images] + list(turn.images)
        record = {
            "system": self.state.system if self.state.system is not None else template.default_system,
            "query": turn.query, "response": turn.response, "label": None, "history": history, "images": images,
        }
        audios = [source for t in self.state.turns for source in t.audios] + list(turn.audios)
        if audios:
            record["audios"] = audios
        videos = [source for t in self.state.turns for source in t.videos] + list(turn.videos)
        if videos:
            record["videos"] = videos
        return record
