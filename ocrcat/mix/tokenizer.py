"""Tokenizers behind one small interface, and the renderings of SPEC 5.

- vision rows, layout "plain" (SPEC 5, the data plan's format):
  `<|bos|>` text-with-image-tokens `\\n` response `<|assistant_end|>`
- vision rows, layout "chat" (the nano-DeepSeek-OCR fork's, which its evaluation prompts with):
  `<|bos|><|user_start|>` image tokens + prompt `<|user_end|><|assistant_start|>` response `<|assistant_end|>`
- text rows: nanochat's chat format, `<|bos|><|user_start|>…<|user_end|><|assistant_start|>…<|assistant_end|>`

Every rendering also says which ids are the answer (assistant content and `<|assistant_end|>`, as
nanochat's SFT mask): what a loss of "assistant" trains on.

Three back ends: the built-in byte-level tokenizer (tests, demo), nanochat's tokenizer directory
(`tokenizer.pkl`, a pickled tiktoken Encoding) and a Hugging Face `tokenizer.json`. Special tokens are
always inserted by id, never by encoding their literal text (a document that happens to contain
"<|assistant_end|>" must not end the sample).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from ocrcat.vision import IMAGE_PLACEHOLDER

# nanochat's nine special tokens, in its order; the byte tokenizer adds `<|image|>` after them.
SPECIAL_TOKENS = [
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
]
IMAGE_TOKEN = "<|image|>"
# DeepSeek-OCR's prompt for plain transcription: the user turn of a row whose text is the transcript
# itself (DocBank, olmOCR: no response) in chat layout.
TRANSCRIBE_PROMPT = "Free OCR."
LAYOUTS = ("plain", "chat")


def vision_turns(text: str, response: str | None, prompt: str = TRANSCRIBE_PROMPT) -> tuple[str, str]:
    """A vision row as (user turn, assistant turn): the chat layout's and the Task chat format's split.

    A row with a response is (text, response). A transcription row (response NULL, text = the image
    placeholder(s) then the transcript) becomes (placeholders + "\\n" + prompt, transcript).
    """
    if response is not None:
        return text, response
    end = text.rfind(IMAGE_PLACEHOLDER)
    end = 0 if end < 0 else end + len(IMAGE_PLACEHOLDER)
    head, tail = text[:end], text[end:]
    return (head + "\n" + prompt if head else prompt), tail[1:] if tail.startswith("\n") else tail


def _answer_from(cut: int, n: int) -> list[bool]:
    """The answer mask of n ids whose answer starts at id `cut`."""
    return [False] * cut + [True] * (n - cut)


class Tokenizer:
    """Common part: back ends provide `encode(text)`, `specials` (name -> id) and `vocab_size`."""

    specials: dict[str, int]
    base_vocab_size: int

    def __init__(self, image_token_id: int | None = None):
        missing = [s for s in ("<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>",
                               "<|assistant_end|>") if s not in self.specials]
        if missing:
            raise ValueError(f"{self.name} tokenizer lacks nanochat special tokens {missing}; "
                             "train it with nanochat's special tokens or use another tokenizer")
        # A tokenizer without `<|image|>` gets the first id past its vocabulary: the model's
        # embedding table then needs vocab_size rows (which accounts for it).
        default = self.specials.get(IMAGE_TOKEN, self.base_vocab_size)
        if image_token_id is None:
            image_token_id = default
        self._check_image_token_id(image_token_id, default)
        self.image_token_id = image_token_id
        self.bos_id = self.specials["<|bos|>"]
        self.assistant_end_id = self.specials["<|assistant_end|>"]

    name = "tokenizer"

    def _check_image_token_id(self, image_token_id: int, default: int) -> None:
        """The image id must be one nothing else produces: the tokenizer's own `<|image|>`, or an id
        past its vocabulary. Any other id is a special token or what some text encodes to, and the
        image mask (and the targets masked before image tokens) would cover those ids too."""
        if image_token_id == self.specials.get(IMAGE_TOKEN):
            return
        hint = f"leave it unset ({default}) or use an id >= {self.base_vocab_size}"
        if isinstance(image_token_id, bool) or not isinstance(image_token_id, int) or image_token_id < 0:
            raise ValueError(f"image token id must be a non-negative integer, not {image_token_id!r}; {hint}")
        special = [t for t, i in self.specials.items() if i == image_token_id]
        if special:
            raise ValueError(f"image token id {image_token_id} collides with {special[0]}, a special token of the "
                             f"{self.name} tokenizer; {hint}")
        if image_token_id < self.base_vocab_size:
            raise ValueError(f"image token id {image_token_id} collides with a token of the {self.name} tokenizer's "
                             f"vocabulary (ids 0-{self.base_vocab_size - 1}), which text encodes to; {hint}")

    @property
    def vocab_size(self) -> int:
        """Rows the model's embedding needs (covers an image id placed past the vocabulary)."""
        return max(self.base_vocab_size, self.image_token_id + 1)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def _extend_with_images(self, ids: list[int], text: str, counts: list[int], positions: list[int],
                            tail: str = "") -> None:
        """Append `text` with each placeholder replaced by its image's run of image ids (start noted),
        then `tail`, which is text whatever it holds (encoded with text's last part, as one string)."""
        parts = text.split(IMAGE_PLACEHOLDER)
        if len(parts) - 1 != len(counts):
            raise ValueError(f"text has {len(parts) - 1} {IMAGE_PLACEHOLDER} placeholders but "
                             f"{len(counts)} images were given")
        parts[-1] += tail
        for i, part in enumerate(parts):
            if i:
                positions.append(len(ids))
                ids.extend([self.image_token_id] * counts[i - 1])
            if part:
                ids.extend(self.encode(part))

    def render_vision_pretraining(
        self, text: str, response: str | None, image_token_counts: list[int]
    ) -> tuple[list[int], list[int]]:
        """ids and the start index of each image's run of image-token ids (SPEC 5, plain layout)."""
        ids: list[int] = [self.bos_id]
        positions: list[int] = []
        # Only the text holds image placeholders: a response saying "<image>" is text (as in chat).
        self._extend_with_images(ids, text, image_token_counts, positions,
                                 tail="" if response is None else "\n" + response)
        ids.append(self.assistant_end_id)
        return ids, positions

    def render_vision(
        self, text: str, response: str | None, image_token_counts: list[int], *, layout: str = "plain",
        prompt: str = TRANSCRIBE_PROMPT,
    ) -> tuple[list[int], list[int], list[bool]]:
        """ids, image starts and the answer mask (True on the ids loss="assistant" trains on).

        Plain layout: the ids of `render_vision_pretraining`, whatever the loss; the answer is what
        follows the prompt (the response, or a transcription row's transcript). The prompt is encoded
        alone and the answer starts where its ids stop agreeing with the whole row's, so a BPE merge
        across the join counts as answer. Chat layout: `vision_turns`, each turn encoded by itself.
        """
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; use 'plain' or 'chat'")
        user, answer = vision_turns(text, response, prompt)
        if layout == "chat":
            s = self.specials
            ids, positions = [self.bos_id, s["<|user_start|>"]], []
            self._extend_with_images(ids, user, image_token_counts, positions)
            ids += [s["<|user_end|>"], s["<|assistant_start|>"]]
            cut = len(ids)
            ids += self.encode(answer) + [self.assistant_end_id]
            return ids, positions, _answer_from(cut, len(ids))
        ids, positions = self.render_vision_pretraining(text, response, image_token_counts)
        # The prompt as the plain layout writes it: the text and the joining newline, or a
        # transcription row's placeholders and the newline after them.
        head = text + "\n" if response is not None else text[:len(text) - len(answer)]
        prefix: list[int] = [self.bos_id]
        self._extend_with_images(prefix, head, image_token_counts, [])
        cut, limit = 0, min(len(prefix), len(ids) - 1)
        while cut < limit and prefix[cut] == ids[cut]:
            cut += 1
        return ids, positions, _answer_from(cut, len(ids))

    def render_conversation(self, messages: list[dict]) -> list[int]:
        """nanochat chat format; a system message is folded into the first user turn as nanochat does."""
        return self.render_conversation_masked(messages)[0]

    def render_conversation_masked(self, messages: list[dict]) -> tuple[list[int], list[bool]]:
        """ids and nanochat's SFT mask: True on assistant content and `<|assistant_end|>`."""
        msgs = list(messages)
        if msgs and msgs[0].get("role") == "system":
            if len(msgs) < 2 or msgs[1].get("role") != "user":
                raise ValueError("a system message must be followed by a user message")
            msgs = [{"role": "user", "content": msgs[0]["content"] + "\n\n" + msgs[1]["content"]}] + msgs[2:]
        # Trailing user turns have no answer to learn from; a conversation needs one assistant turn.
        while msgs and msgs[-1].get("role") != "assistant":
            msgs.pop()
        if not msgs:
            raise ValueError("conversation has no assistant message")
        s = self.specials
        ids, mask = [self.bos_id], [False]
        for i, m in enumerate(msgs):
            role, content = m.get("role"), m.get("content")
            if not isinstance(content, str):
                raise ValueError(f"message {i} content must be a string, got {type(content).__name__}")
            expected = "user" if i % 2 == 0 else "assistant"
            if role != expected:
                raise ValueError(f"message {i} has role {role!r}; expected {expected!r} (turns must alternate)")
            body = self.encode(content)
            ids += [s[f"<|{role}_start|>"]] + body + [s[f"<|{role}_end|>"]]
            answer = role == "assistant"
            mask += [False] + [answer] * (len(body) + 1)
        return ids, mask


class ByteTokenizer(Tokenizer):
    """256 byte ids, then nanochat's nine specials (256..264), then `<|image|>` (265)."""

    name = "byte"

    def __init__(self, image_token_id: int | None = None):
        self.specials = {t: 256 + i for i, t in enumerate(SPECIAL_TOKENS + [IMAGE_TOKEN])}
        self.base_vocab_size = 256 + len(self.specials)
        super().__init__(image_token_id)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        names = {v: k for k, v in self.specials.items()}
        out, buf = [], bytearray()
        for i in ids:
            if i < 256:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            out.append(IMAGE_TOKEN if i == self.image_token_id else names.get(i, f"<|{i}|>"))
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)


class TiktokenTokenizer(Tokenizer):
    """nanochat's tokenizer directory: `tokenizer.pkl` holds a pickled tiktoken Encoding."""

    name = "nanochat"

    def __init__(self, path: Path, image_token_id: int | None = None):
        try:
            import tiktoken  # noqa: F401  (unpickling the Encoding needs it)
        except ImportError:
            raise ImportError("a nanochat tokenizer.pkl needs tiktoken: pip install 'ocrcat[tiktoken]'") from None
        with open(path, "rb") as f:
            self.enc = pickle.load(f)
        self.specials = {t: self.enc.encode_single_token(t) for t in self.enc.special_tokens_set}
        self.base_vocab_size = self.enc.n_vocab
        super().__init__(image_token_id)

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode([i for i in ids if i != self.image_token_id])


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` whose added tokens include nanochat's specials."""

    name = "huggingface"

    def __init__(self, path: Path, image_token_id: int | None = None):
        try:
            from tokenizers import Tokenizer as HFTok
        except ImportError:
            raise ImportError("a tokenizer.json needs tokenizers: pip install 'ocrcat[tokenizers]'") from None
        self.tok = HFTok.from_file(str(path))
        self.specials = {t.content: i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}
        self.base_vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        # Literal "<|…|>" text in a document stays plain text; specials go in only by id.
        self.tok.encode_special_tokens = True
        super().__init__(image_token_id)

    def encode(self, text: str) -> list[int]:
        # add_special_tokens=False: no template bos/eos; specials are placed by the renderers.
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i != self.image_token_id], skip_special_tokens=False)


def load_tokenizer(spec: str | os.PathLike | None = None, *, image_token_id: int | None = None) -> Tokenizer:
    """`None`/"byte": built-in; a nanochat dir or `tokenizer.pkl`; a `tokenizer.json` or a dir holding one.

    >>> tok = load_tokenizer("~/.cache/nanochat/tokenizer")
    >>> ids, image_starts = tok.render_vision_pretraining("<image>\\nQuestion: …", "42", [903])
    """
    if spec is None or str(spec) == "byte":
        return ByteTokenizer(image_token_id)
    path = Path(spec).expanduser()
    if path.is_dir():
        for name, cls in (("tokenizer.pkl", TiktokenTokenizer), ("tokenizer.json", HFTokenizer)):
            if (path / name).is_file():
                return cls(path / name, image_token_id)
        raise FileNotFoundError(f"{path} holds neither tokenizer.pkl (nanochat) nor tokenizer.json (Hugging Face)")
    if path.suffix == ".pkl" and path.is_file():
        return TiktokenTokenizer(path, image_token_id)
    if path.suffix == ".json" and path.is_file():
        return HFTokenizer(path, image_token_id)
    raise FileNotFoundError(f"no tokenizer at {path}: pass 'byte', a nanochat tokenizer directory "
                            "(tokenizer.pkl) or a Hugging Face tokenizer.json")
