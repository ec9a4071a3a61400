"""Turn a workload into concrete requests, deterministically (pure).

Request ``i`` of a run with seed ``K`` depends only on ``(K, i)`` and the workload, never on
timing or on what other requests did, so a run, or any single request of it, can be replayed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.load.images import cap_size, data_url, make_image
from harness.load.tokenizer import WORDS, PromptTokenizer, WordTokenizer
from harness.load.workload import Fixed, Workload, read_prompt_file

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


@dataclass(frozen=True)
class ImagePlan:
    """One image of a request: the size asked for, the size sent (after the pixel cap), and
    the encoded size in bytes of what was sent."""

    width: int
    height: int
    sent_width: int
    sent_height: int
    format: str
    bytes: int = 0


@dataclass
class PlannedRequest:
    """One request, ready to send: ``path`` and the JSON ``body``."""

    index: int
    path: str
    body: dict[str, Any]
    prompt_tokens: int
    max_tokens: int
    images: list[ImagePlan] = field(default_factory=list)

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


class PromptSynth:
    """Synthetic prompts of an exact token count under a given tokenizer.

    With the real tokenizer it slices a seeded corpus of common words at token boundaries,
    decodes, and re-checks the count (a decode/encode round trip can merge tokens at the edges);
    with the approximation it joins N words.
    """

    def __init__(self, tokenizer: PromptTokenizer, seed: int, max_tokens: int) -> None:
        self.tokenizer = tokenizer
        self._seed = seed
        self._max = max(16, max_tokens)
        self._corpus: list[int] | None = None

    def _ids(self) -> list[int]:
        if self._corpus is None:
            rng = random.Random(f"corpus:{self._seed}")
            words = rng.choices(WORDS, k=2 * self._max + 256)
            self._corpus = self.tokenizer.encode(" ".join(words))
            while len(self._corpus) < 2 * self._max:  # a tokenizer that merges words
                self._corpus = self._corpus + self._corpus
        return self._corpus

    def make(self, n: int, rng: random.Random) -> tuple[str, int]:
        """A prompt of ``n`` tokens and its actual count."""
        if n <= 0:
            return "", 0
        if isinstance(self.tokenizer, WordTokenizer):
            return " ".join(rng.choices(WORDS, k=n)), n
        ids = self._ids()
        if n > len(ids) // 2:
            self._max = n
            self._corpus = None
            ids = self._ids()
        start = rng.randrange(0, len(ids) - n)
        text = self.tokenizer.decode(ids[start : start + n])
        count = len(self.tokenizer.encode(text))
        for _ in range(4):
            if count == n:
                break
            if count > n:
                text = self.tokenizer.decode(self.tokenizer.encode(text)[:n])
            else:
                text = text + " " + rng.choice(WORDS)
            count = len(self.tokenizer.encode(text))
        return text, count


@dataclass(frozen=True)
class Overrides:
    """Command-line overrides of the workload."""

    prompt_tokens: int | None = None
    max_tokens: int | None = None
    max_image_pixels: int | None = None
    max_images_per_request: int | None = None
    ignore_eos: bool | None = None
    api: str | None = None


class RequestFactory:
    """``build(i)`` -> the ``i``-th :class:`PlannedRequest` of a run."""

    def __init__(
        self,
        workload: Workload,
        *,
        model: str,
        seed: int,
        tokenizer: PromptTokenizer,
        overrides: Overrides | None = None,
        workload_dir: Path | None = None,
        file_prompts: list[str] | None = None,
    ) -> None:
        self.workload = workload
        self.model = model
        self.seed = seed
        self.overrides = overrides or Overrides()
        o = self.overrides
        self.api = o.api or workload.api
        self.prompt_len = (
            Fixed(value=o.prompt_tokens) if o.prompt_tokens is not None else workload.prompt.tokens
        )
        self.max_len = (
            Fixed(value=o.max_tokens) if o.max_tokens is not None else workload.max_tokens
        )
        self.ignore_eos = o.ignore_eos if o.ignore_eos is not None else workload.ignore_eos
        caps = [c for c in (o.max_image_pixels, workload.max_image_pixels) if c is not None]
        self.max_image_pixels = min(caps) if caps else None
        # The server refuses a request with more images than its limit (vLLM
        # --limit-mm-per-prompt): send at most that many, as the pixel cap scales them down.
        self.max_images_per_request = o.max_images_per_request
        # --prompt-tokens forces synthetic prompts of that length, whatever the source.
        self.synthetic = workload.prompt.source == "synthetic" or o.prompt_tokens is not None
        self.file_prompts: list[str] = []
        if not self.synthetic:
            self.file_prompts = (
                file_prompts
                if file_prompts is not None
                else read_prompt_file(workload.prompt, workload_dir or Path.cwd())
            )
        self.synth = PromptSynth(tokenizer, seed, self.prompt_len.upper)
        self.tokenizer = tokenizer

    @property
    def has_images(self) -> bool:
        return self.workload.images is not None and self.api == "chat"

    def build(self, index: int) -> PlannedRequest:
        """The request number ``index`` (0-based); pure and deterministic."""
        rng = random.Random(f"{self.seed}:{index}")
        if self.synthetic:
            text, n_prompt = self.synth.make(self.prompt_len.sample(rng), rng)
        else:
            if self.workload.prompt.order == "sequential":
                text = self.file_prompts[index % len(self.file_prompts)]
            else:
                text = rng.choice(self.file_prompts)
            n_prompt = len(self.tokenizer.encode(text))
        max_tokens = max(1, self.max_len.sample(rng))
        images = self._images(index, rng) if self.has_images else []
        body: dict[str, Any] = {"model": self.model}
        if self.api == "chat":
            messages: list[dict[str, Any]] = []
            if self.workload.prompt.system:
                messages.append({"role": "system", "content": self.workload.prompt.system})
            if images:
                parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
                parts.extend({"type": "image_url", "image_url": {"url": url}} for url, _ in images)
                messages.append({"role": "user", "content": parts})
            else:
                messages.append({"role": "user", "content": text})
            body["messages"] = messages
            path = CHAT_PATH
        else:
            body["prompt"] = text
            path = COMPLETIONS_PATH
        body["max_tokens"] = max_tokens
        if self.workload.temperature is not None:
            body["temperature"] = self.workload.temperature
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.workload.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(self.workload.extra_body)
        return PlannedRequest(
            index=index,
            path=path,
            body=body,
            prompt_tokens=n_prompt,
            max_tokens=max_tokens,
            images=[plan for _, plan in images],
        )

    def _images(self, index: int, rng: random.Random) -> list[tuple[str, ImagePlan]]:
        spec = self.workload.images
        assert spec is not None
        if rng.random() >= spec.probability:
            return []
        count = spec.count.sample(rng)
        weights = [s.weight for s in spec.sizes]
        out: list[tuple[str, ImagePlan]] = []
        for slot in range(count):
            # Draws continue past the image limit so that a capped run sends the same first
            # images as an uncapped one with the same seed.
            size = rng.choices(spec.sizes, weights=weights)[0]
            fmt = size.format or spec.format
            if fmt == "mixed":
                fmt = rng.choice(["jpeg", "png"])
            if self.max_images_per_request is not None and slot >= self.max_images_per_request:
                continue
            w, h = cap_size(size.width, size.height, self.max_image_pixels)
            data = make_image(w, h, fmt, (self.seed, index, slot), spec.quality)
            plan = ImagePlan(size.width, size.height, w, h, fmt, len(data))
            out.append((data_url(data, fmt), plan))
        return out
