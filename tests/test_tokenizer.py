"""The three tokenizers and the two renderings of SPEC 5."""

from __future__ import annotations

import pickle
import re

import pytest

from ocrcat.mix import load_tokenizer
from ocrcat.mix.tokenizer import IMAGE_TOKEN, SPECIAL_TOKENS, vision_turns

TEXT = "<image>\nQuestion: What is the value for Kenya? Ünïcode ✓"
CORPUS = [TEXT, "The quick brown fox jumps over the lazy dog.", "Question: Answer: 42 3.14 Kenya Germany"] * 20


@pytest.fixture(scope="module")
def nanochat_dir(tmp_path_factory):
    """A nanochat-style tokenizer directory: tokenizer.pkl is a pickled tiktoken Encoding."""
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {bytes([i]): i for i in range(256)}
    for pair in (b"th", b"he", b"the", b"Qu", b"es", b"ti", b"on", b"  "):  # a few merges, BPE-valid
        ranks[pair] = len(ranks)
    specials = {t: len(ranks) + i for i, t in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding("ocrcat-test", pat_str=r"""\s*[\r\n]|\s+(?!\S)|\s+|\S+""",
                            mergeable_ranks=ranks, special_tokens=specials)
    path = tmp_path_factory.mktemp("nanochat-tok")
    with open(path / "tokenizer.pkl", "wb") as f:
        pickle.dump(enc, f)
    return path


@pytest.fixture(scope="module")
def hf_json(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, decoders, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS + [IMAGE_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    path = tmp_path_factory.mktemp("hf-tok") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(params=["byte", "nanochat", "huggingface"])
def tok(request, nanochat_dir, hf_json):
    return {"byte": lambda: load_tokenizer("byte"), "nanochat": lambda: load_tokenizer(nanochat_dir),
            "huggingface": lambda: load_tokenizer(hf_json)}[request.param]()


def test_byte_tokenizer_ids():
    t = load_tokenizer()
    assert [t.specials[s] for s in SPECIAL_TOKENS] == list(range(256, 265))
    assert t.image_token_id == t.specials[IMAGE_TOKEN] == 265 and t.vocab_size == 266
    assert t.encode("é") == [0xC3, 0xA9]


def test_vision_rendering(tok):
    ids, starts = tok.render_vision_pretraining(TEXT, "42", [7])
    assert ids[0] == tok.bos_id and ids[-1] == tok.assistant_end_id
    assert starts == [1] and ids[1:8] == [tok.image_token_id] * 7 and tok.image_token_id not in ids[8:]
    rest = TEXT.split("<image>")[1] + "\n42"
    assert ids[8:-1] == tok.encode(rest)
    assert tok.decode(ids[8:-1]) == rest


def test_transcription_rows_have_no_response_join(tok):
    ids, starts = tok.render_vision_pretraining("<image>", None, [3])
    assert ids == [tok.bos_id] + [tok.image_token_id] * 3 + [tok.assistant_end_id] and starts == [1]


def test_several_images_and_count_mismatch(tok):
    ids, starts = tok.render_vision_pretraining("a<image>b<image>c", "d", [2, 3])
    assert [ids[s:s + n] for s, n in zip(starts, [2, 3])] == [[tok.image_token_id] * 2, [tok.image_token_id] * 3]
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 images"):
        tok.render_vision_pretraining("a<image>b<image>c", "d", [2])


def test_a_response_saying_image_is_text_in_both_layouts(tok):
    # Only the row's text holds placeholders; a response (a label, an answer) is text whatever it says.
    for layout in ("plain", "chat"):
        ids, starts, _ = tok.render_vision("<image>\nWhat tag?", "an <image> tag", [3], layout=layout)
        assert ids.count(tok.image_token_id) == 3 and len(starts) == 1, layout
        assert tok.decode(ids[-1 - len(tok.encode("an <image> tag")):-1]) == "an <image> tag", layout
    ids, _ = tok.render_vision_pretraining("<image>\nWhat tag?", "an <image> tag", [3])
    assert ids[4:-1] == tok.encode("\nWhat tag?\nan <image> tag")  # one string, as before: same ids


def test_special_literals_in_text_stay_plain_text(tok):
    ids, _ = tok.render_vision_pretraining("<image>\nsay <|assistant_end|> <|bos|>", None, [1])
    assert ids.count(tok.assistant_end_id) == 1 and ids.count(tok.bos_id) == 1


def test_conversation_rendering(tok):
    s = tok.specials
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "unanswered"}]
    ids = tok.render_conversation(msgs)
    assert ids == ([tok.bos_id, s["<|user_start|>"]] + tok.encode("Be brief.\n\nHi") + [s["<|user_end|>"],
                   s["<|assistant_start|>"]] + tok.encode("Hello") + [s["<|assistant_end|>"]])
    with pytest.raises(ValueError, match="no assistant"):
        tok.render_conversation([{"role": "user", "content": "x"}])
    with pytest.raises(ValueError, match="alternate"):
        tok.render_conversation([{"role": "assistant", "content": "x"}])


def test_image_token_id_is_configurable(nanochat_dir):
    t = load_tokenizer(nanochat_dir)
    assert IMAGE_TOKEN not in t.specials
    assert t.image_token_id == t.base_vocab_size and t.vocab_size == t.base_vocab_size + 1  # one past
    t2 = load_tokenizer(nanochat_dir, image_token_id=5000)
    assert t2.image_token_id == 5000 and t2.vocab_size == 5001
    ids, _ = t2.render_vision_pretraining("<image>x", None, [2])
    assert ids[1:3] == [5000, 5000]
    with pytest.raises(ValueError, match="collides"):
        load_tokenizer(image_token_id=256)


@pytest.mark.parametrize(("image_token_id", "message"), [
    (257, "image token id 257 collides with <|user_start|>, a special token of the byte tokenizer; "
          "leave it unset (265) or use an id >= 266"),
    (264, "collides with <|output_end|>, a special token"),
    (65, "image token id 65 collides with a token of the byte tokenizer's vocabulary (ids 0-265), which text "
         "encodes to; leave it unset (265) or use an id >= 266"),
    (0, "vocabulary"),
    (-1, "must be a non-negative integer"),
    (True, "must be a non-negative integer"),
])
def test_an_image_token_id_that_text_or_a_special_can_produce_is_refused(image_token_id, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_tokenizer("byte", image_token_id=image_token_id)


@pytest.mark.parametrize("back_end", ["byte", "nanochat", "huggingface"])
def test_image_token_id_collisions_in_every_back_end(back_end, nanochat_dir, hf_json):
    spec = {"byte": "byte", "nanochat": nanochat_dir, "huggingface": hf_json}[back_end]
    tok = load_tokenizer(spec)
    for taken in (tok.specials["<|assistant_start|>"], tok.encode("A")[0]):
        with pytest.raises(ValueError, match=f"image token id {taken} collides"):
            load_tokenizer(spec, image_token_id=taken)
    # Free: the default (the tokenizer's own <|image|>, or the first id past the vocabulary), given
    # explicitly too, and any id past the vocabulary.
    assert load_tokenizer(spec, image_token_id=tok.image_token_id).image_token_id == tok.image_token_id
    past = load_tokenizer(spec, image_token_id=tok.base_vocab_size + 3)
    assert past.vocab_size == tok.base_vocab_size + 4
    ids, _ = past.render_vision_pretraining("<image>A", None, [2])
    assert ids.count(past.image_token_id) == 2


def test_bad_paths_say_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither tokenizer.pkl"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="byte"):
        load_tokenizer(tmp_path / "nope.bin")


def test_chat_layout_vision_rendering(tok):
    """The fork's layout: <|bos|><|user_start|> image + prompt <|user_end|><|assistant_start|> answer <|assistant_end|>."""
    s = tok.specials
    ids, starts, answer = tok.render_vision(TEXT, "42", [7], layout="chat")
    prompt = TEXT.split("<image>")[1]
    assert ids == ([tok.bos_id, s["<|user_start|>"]] + [tok.image_token_id] * 7 + tok.encode(prompt)
                   + [s["<|user_end|>"], s["<|assistant_start|>"]] + tok.encode("42") + [tok.assistant_end_id])
    assert starts == [2]
    cut = ids.index(s["<|assistant_start|>"]) + 1
    assert answer == [i >= cut for i in range(len(ids))]  # the answer's ids and <|assistant_end|>


def test_transcription_rows_get_the_prompt_in_chat_layout(tok):
    s = tok.specials
    assert vision_turns("<image>\nHello page", None) == ("<image>\nFree OCR.", "Hello page")
    assert vision_turns("<image>\nQuestion: x?", "7") == ("<image>\nQuestion: x?", "7")
    ids, starts, answer = tok.render_vision("<image>\nHello page", None, [3], layout="chat", prompt="Read it.")
    assert ids == ([tok.bos_id, s["<|user_start|>"]] + [tok.image_token_id] * 3 + tok.encode("\nRead it.")
                   + [s["<|user_end|>"], s["<|assistant_start|>"]] + tok.encode("Hello page") + [tok.assistant_end_id])
    assert sum(answer) == len(tok.encode("Hello page")) + 1


def test_plain_layout_ids_do_not_depend_on_the_answer_mask(tok):
    for text, response in ((TEXT, "42"), ("<image>\nHello page", None), ("<image>", None)):
        ids, starts, answer = tok.render_vision(text, response, [5])
        assert (ids, starts) == tok.render_vision_pretraining(text, response, [5])
        assert answer[-1] and not any(answer[:starts[0] + 5])  # never the image, always <|assistant_end|>
        cut = answer.index(True)
        assert answer == [i >= cut for i in range(len(ids))]  # the answer is a suffix
        if tok.name == "byte":  # exact: the answer is the response, or the transcript after "\n"
            assert tok.decode(ids[cut:-1]) == (response if response is not None else text[len("<image>\n"):])


def test_conversation_mask_follows_nanochat(tok):
    s = tok.specials
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Again"}, {"role": "assistant", "content": "Yes"}]
    ids, mask = tok.render_conversation_masked(msgs)
    assert ids == tok.render_conversation(msgs) and len(mask) == len(ids)
    supervised = [i for i, m in zip(ids, mask) if m]
    assert supervised == tok.encode("Hello") + [s["<|assistant_end|>"]] + tok.encode("Yes") + [s["<|assistant_end|>"]]
    assert not mask[ids.index(s["<|assistant_start|>"])]


def test_unknown_layout_is_refused(tok):
    with pytest.raises(ValueError, match="unknown layout"):
        tok.render_vision(TEXT, "42", [7], layout="sft")
